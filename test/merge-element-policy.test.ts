/**
 * Per-element merge policies (issue 8, docs/merge.md "Per-element merge policies"): the `elements`
 * object of the merge-policy file sets, per FHIR element path, `first-writer-wins`, `never-merge`,
 * `last-writer-wins` (default) or an item identity key. Cases run on three replicas with fake wall
 * clocks and both delivery orders; a fast-check property mixes all modes with random concurrent
 * edits; invalid policy files are refused naming the file and the key (also by `config check`).
 *
 * Synthea cases use ../shared/data/synthea-10 (TIDEGATE_SYNTHEA_DIR) and skip when it is absent.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as Y from 'yjs';
import fc from 'fast-check';
import { canonicalStringify, isJsonObject } from '../src/fhir/json.ts';
import type { FhirJson, FhirJsonObject } from '../src/fhir/json.ts';
import { CONFLICT_TAG, DELETED, loadDoc, readPaths } from '../src/merge/doc.ts';
import type { Entry } from '../src/merge/doc.ts';
import { flatten, leafMode, unflatten } from '../src/merge/flatten.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import type { MergePolicy } from '../src/merge/policy.ts';
import { runConfigCheck } from '../src/mapping/check.ts';
import { assertConverged, copy, deliver, fhir, liveBody, makeNode, POLICY, summarize, T0, withoutServerMeta, write } from './fixtures/merge/harness.ts';
import type { TestNode } from './fixtures/merge/harness.ts';
import { SYNTHEA_DIR } from './fixtures/synthea.ts';

const DATA_DIR = process.env.TIDEGATE_SYNTHEA_DIR ?? SYNTHEA_DIR;
const DEFAULT_FILE = fileURLToPath(new URL('../profiles/merge-policy.json', import.meta.url));

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'tidegate-element-policy-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

/** Writes the default policy file plus `elements` to a temp file; returns its path. */
function policyFile(name: string, elements: unknown): string {
  const base = JSON.parse(readFileSync(DEFAULT_FILE, 'utf8')) as Record<string, unknown>;
  const path = join(dir, name);
  writeFileSync(path, JSON.stringify({ ...base, elements }, null, 2));
  return path;
}

/** The default policy with `elements`, loaded (and validated) through loadMergePolicy. */
function policyWith(name: string, elements: Record<string, unknown>): MergePolicy {
  return loadMergePolicy(policyFile(name, elements));
}

/** Nodes with `policy`; the first creates `base` and it is delivered to the others. */
function setupWith(policy: MergePolicy, ids: string[], key: string, base: FhirJsonObject | string): TestNode[] {
  const nodes = ids.map((id) => makeNode(id, T0, policy));
  const res = write(nodes[0]!, key, base);
  assert.ok(res.update);
  for (const n of nodes.slice(1)) deliver(n, key, res.update);
  return nodes;
}

/** The stored Yjs state of `key` re-encoded with `Y.encodeStateAsUpdate` (bytes). */
function stateBytes(node: TestNode, key: string): Uint8Array {
  return Y.encodeStateAsUpdate(loadDoc(node.store.get(key)!.state, node.id));
}

/** assertConverged, plus identical Yjs state bytes on every node. */
function assertSameEverywhere(key: string, nodes: readonly TestNode[]): FhirJsonObject | null {
  const body = assertConverged(key, nodes);
  const first = stateBytes(nodes[0]!, key);
  for (const n of nodes.slice(1)) assert.equal(Buffer.compare(stateBytes(n, key), first), 0, `${n.id} holds different Yjs bytes than ${nodes[0]!.id}`);
  return body;
}

function hasConflictTag(body: FhirJsonObject): boolean {
  const meta = body.meta;
  return isJsonObject(meta) && Array.isArray(meta.tag) && meta.tag.some((t) => isJsonObject(t) && t.system === CONFLICT_TAG.system && t.code === CONFLICT_TAG.code);
}

/** Edits the current body of `node` with `edit` and writes it (author `who`). */
function edit(node: TestNode, key: string, who: string, change: (b: FhirJsonObject) => void, opts: { baseVersionId?: string } = {}): Uint8Array {
  const b = opts.baseVersionId ? fhir(node.replica.version(key, opts.baseVersionId)!.body!) : liveBody(node, key);
  if (isJsonObject(b.meta)) delete b.meta;
  change(b);
  const res = write(node, key, b, { author: who, ...opts });
  assert.ok(res.update, `${node.id}'s edit changed nothing`);
  return res.update;
}

const PATIENT = '{"resourceType":"Patient","id":"p1","gender":"female","birthDate":"1970-01-01","name":[{"id":"n1","family":"Tide"}]}';

describe('first-writer-wins', () => {
  const KEY = 'Patient/p1';

  it('concurrent edits: the earliest value wins on every replica in both delivery orders; the later one is a conflict record', () => {
    const policy = policyWith('fww.json', { 'Patient.birthDate': 'first-writer-wins' });
    const [a, b, c] = setupWith(policy, ['a', 'b', 'c'], KEY, PATIENT) as [TestNode, TestNode, TestNode];
    b.wall = T0 + 100;
    c.wall = T0 + 200;
    const ub = edit(b, KEY, 'Practitioner/b', (p) => (p.birthDate = '1971-02-02'));
    const uc = edit(c, KEY, 'Practitioner/c', (p) => (p.birthDate = '1972-03-03'));
    deliver(a, KEY, ub, uc); // a: b then c
    deliver(b, KEY, uc);
    deliver(c, KEY, ub); // c: its own, then b's
    const body = assertSameEverywhere(KEY, [a, b, c])!;
    assert.equal(body.birthDate, '1971-02-02', 'the first concurrent writer keeps its value');
    assert.ok(hasConflictTag(body));
    assert.deepEqual(summarize(a.replica.conflicts(KEY)), [{ path: 'birthDate', kind: 'value', winner: 'b(Practitioner/b)="1971-02-02"', loser: 'c(Practitioner/c)="1972-03-03"' }]);

    // The same edits without the policy: the last writer wins (the difference the policy makes).
    const [a2, b2, c2] = setupWith(POLICY, ['a', 'b', 'c'], KEY, PATIENT) as [TestNode, TestNode, TestNode];
    b2.wall = T0 + 100;
    c2.wall = T0 + 200;
    const ub2 = edit(b2, KEY, 'Practitioner/b', (p) => (p.birthDate = '1971-02-02'));
    const uc2 = edit(c2, KEY, 'Practitioner/c', (p) => (p.birthDate = '1972-03-03'));
    deliver(a2, KEY, uc2, ub2);
    deliver(b2, KEY, uc2);
    deliver(c2, KEY, ub2);
    assert.equal(assertSameEverywhere(KEY, [a2, b2, c2])!.birthDate, '1972-03-03');

    // A sequential edit (the writer saw both values) replaces the value and resolves the record.
    c.wall = T0 + 300;
    const seq = edit(c, KEY, 'Practitioner/c', (p) => (p.birthDate = '1973-04-04'));
    deliver(a, KEY, seq);
    deliver(b, KEY, seq);
    const after = assertSameEverywhere(KEY, [a, b, c])!;
    assert.equal(after.birthDate, '1973-04-04');
    assert.equal(hasConflictTag(after), false);
    assert.deepEqual(a.replica.conflicts(KEY), []);
  });

  it('a sequential edit from another node replaces the value (no record), other elements stay last-writer-wins', () => {
    const policy = policyWith('fww2.json', { 'Patient.birthDate': 'first-writer-wins' });
    const [a, b, c] = setupWith(policy, ['a', 'b', 'c'], KEY, PATIENT) as [TestNode, TestNode, TestNode];
    a.wall = T0 + 100;
    const u1 = edit(a, KEY, 'Practitioner/a', (p) => (p.birthDate = '1980-05-05'));
    deliver(b, KEY, u1);
    b.wall = T0 + 200;
    const u2 = edit(b, KEY, 'Practitioner/b', (p) => (p.birthDate = '1981-06-06'));
    // gender stays last-writer-wins: concurrent edits at a (earlier) and c (later).
    a.wall = T0 + 300;
    const u3 = edit(a, KEY, 'Practitioner/a', (p) => (p.gender = 'male'));
    c.wall = T0 + 400;
    const u4 = edit(c, KEY, 'Practitioner/c', (p) => (p.gender = 'other'));
    deliver(c, KEY, u2, u1, u3); // out of order: u2 is held back until u1 arrives
    deliver(a, KEY, u4, u2);
    deliver(b, KEY, u4, u3);
    const body = assertSameEverywhere(KEY, [a, b, c])!;
    assert.equal(body.birthDate, '1981-06-06');
    assert.equal(body.gender, 'other');
    assert.deepEqual(summarize(a.replica.conflicts(KEY)).map((r) => r.path), ['gender']);
  });

  it('a stale client at the same node: the value it never saw was first and stays; its own is a record', () => {
    const policy = policyWith('fww3.json', { 'Patient.birthDate': 'first-writer-wins' });
    const [a, b] = setupWith(policy, ['a', 'b'], KEY, PATIENT) as [TestNode, TestNode];
    const v0 = a.replica.current(KEY)!.versionId;
    a.wall = T0 + 100;
    const u1 = edit(a, KEY, 'Practitioner/1', (p) => (p.birthDate = '1990-01-01'));
    a.wall = T0 + 200;
    const u2 = edit(a, KEY, 'Practitioner/2', (p) => (p.birthDate = '1991-01-01'), { baseVersionId: v0 });
    deliver(b, KEY, u1, u2);
    const body = assertSameEverywhere(KEY, [a, b])!;
    assert.equal(body.birthDate, '1990-01-01');
    assert.deepEqual(summarize(a.replica.conflicts(KEY)), [{ path: 'birthDate', kind: 'value', winner: 'a(Practitioner/1)="1990-01-01"', loser: 'a(Practitioner/2)="1991-01-01"' }]);
  });

  it('an identifier assigned once: {key: [system], mode: first-writer-wins} keeps the first MRN, the second is a record', () => {
    const policy = policyWith('mrn.json', { 'Patient.identifier': { key: ['system'], mode: 'first-writer-wins' } });
    const [a, b, c] = setupWith(policy, ['a', 'b', 'c'], KEY, PATIENT) as [TestNode, TestNode, TestNode];
    b.wall = T0 + 100;
    c.wall = T0 + 200;
    const ub = edit(b, KEY, 'Practitioner/b', (p) => (p.identifier = [fhir('{"system":"urn:mrn","value":"B-1"}')]));
    const uc = edit(c, KEY, 'Practitioner/c', (p) => (p.identifier = [fhir('{"system":"urn:mrn","value":"C-1"}')]));
    deliver(a, KEY, uc, ub);
    deliver(b, KEY, uc);
    deliver(c, KEY, ub);
    const body = assertSameEverywhere(KEY, [a, b, c])!;
    assert.equal(canonicalStringify(body.identifier!), '[{"system":"urn:mrn","value":"B-1"}]');
    const records = summarize(a.replica.conflicts(KEY));
    assert.ok(records.some((r) => r.path === 'identifier[k%3Aurn%3Amrn]/value' && r.loser === 'c(Practitioner/c)="C-1"'), JSON.stringify(records));
    // Default keys (system + value): the two MRNs would be two identifiers.
    const [a2, b2] = setupWith(POLICY, ['a', 'b'], KEY, PATIENT) as [TestNode, TestNode];
    const x = edit(a2, KEY, 'x', (p) => (p.identifier = [fhir('{"system":"urn:mrn","value":"B-1"}')]));
    const y = edit(b2, KEY, 'y', (p) => (p.identifier = [fhir('{"system":"urn:mrn","value":"C-1"}')]));
    deliver(a2, KEY, y);
    deliver(b2, KEY, x);
    assert.equal((assertSameEverywhere(KEY, [a2, b2])!.identifier as FhirJson[]).length, 2);
  });

  it('Synthea Patient: birthDate under first-writer-wins', (t) => {
    const file = join(DATA_DIR, 'Patient.000.ndjson');
    if (!existsSync(file)) {
      t.skip(`synthea-10 data absent (${file})`);
      return;
    }
    const patient = fhir(readFileSync(file, 'utf8').split('\n')[0]!);
    const key = `Patient/${String(patient.id)}`;
    const policy = policyWith('synthea-fww.json', { 'Patient.birthDate': 'first-writer-wins', 'Patient.address': 'never-merge' });
    const [a, b, c] = setupWith(policy, ['a', 'b', 'c'], key, patient) as [TestNode, TestNode, TestNode];
    assert.equal(withoutServerMeta(liveBody(a, key)), withoutServerMeta(patient), 'the Synthea Patient renders as written');
    c.wall = T0 + 50;
    b.wall = T0 + 90;
    const uc = edit(c, key, 'Practitioner/c', (p) => (p.birthDate = '1901-01-01'));
    const ub = edit(b, key, 'Practitioner/b', (p) => (p.birthDate = '1902-02-02'));
    deliver(a, key, ub, uc);
    deliver(b, key, uc);
    deliver(c, key, ub);
    const body = assertSameEverywhere(key, [a, b, c])!;
    assert.equal(body.birthDate, '1901-01-01');
    assert.deepEqual(summarize(a.replica.conflicts(key)).map((r) => `${r.path} ${r.loser}`), ['birthDate b(Practitioner/b)="1902-02-02"']);
  });
});

/** A MedicationRequest whose dosage has an id (so without never-merge it merges field by field). */
const MEDREQ =
  '{"resourceType":"MedicationRequest","id":"m1","status":"active","intent":"order","subject":{"reference":"Patient/p1"},' +
  '"medicationCodeableConcept":{"text":"lisinopril 10 MG Oral Tablet"},' +
  '"dosageInstruction":[{"id":"d1","sequence":1,"timing":{"repeat":{"frequency":1,"period":1.0,"periodUnit":"d"}},"doseAndRate":[{"doseQuantity":{"value":1.0,"unit":"tablet"}}]}]}';

/** One clinician changes the dose, another the timing, concurrently; both orders delivered. */
function doseVsTiming(policy: MergePolicy, base: FhirJsonObject | string, key: string): TestNode[] {
  const [a, b, c] = setupWith(policy, ['a', 'b', 'c'], key, base) as [TestNode, TestNode, TestNode];
  b.wall = T0 + 100;
  c.wall = T0 + 200;
  const ub = edit(b, key, 'Practitioner/dose', (m) => {
    const d = (m.dosageInstruction as FhirJsonObject[])[0]!;
    d.doseAndRate = [fhir('{"doseQuantity":{"value":2.0,"unit":"tablet"}}')];
  });
  const uc = edit(c, key, 'Practitioner/timing', (m) => {
    const d = (m.dosageInstruction as FhirJsonObject[])[0]!;
    d.timing = fhir('{"repeat":{"frequency":2,"period":1.0,"periodUnit":"d"}}');
  });
  deliver(a, key, ub, uc);
  deliver(b, key, uc);
  deliver(c, key, ub);
  return [a, b, c];
}

describe('never-merge', () => {
  const KEY = 'MedicationRequest/m1';

  it('concurrent edits of dose and timing of one dosageInstruction: one whole value wins, the other is a record, the resource is flagged', () => {
    const policy = policyWith('nm.json', { 'MedicationRequest.dosageInstruction': 'never-merge' });
    const nodes = doseVsTiming(policy, MEDREQ, KEY);
    const body = assertSameEverywhere(KEY, nodes)!;
    const dosage = (body.dosageInstruction as FhirJsonObject[])[0]!;
    // c (timing, later stamp) wins whole: its dose is the original one, not b's.
    assert.equal(canonicalStringify(dosage), '{"id":"d1","doseAndRate":[{"doseQuantity":{"unit":"tablet","value":1.0}}],"sequence":1,"timing":{"repeat":{"frequency":2,"period":1.0,"periodUnit":"d"}}}');
    assert.ok(hasConflictTag(body), 'always flag: the resource carries the conflict tag');
    const records = nodes[0]!.replica.conflicts(KEY);
    assert.deepEqual(records.map((r) => [r.path, r.kind, r.winner.a, r.loser.a]), [['dosageInstruction', 'value', 'Practitioner/timing', 'Practitioner/dose']]);
    const loser = fhir(`{"v":${records[0]!.loser.v!}}`).v as FhirJsonObject[];
    assert.equal(canonicalStringify(loser[0]!.doseAndRate!), '[{"doseQuantity":{"unit":"tablet","value":2.0}}]', 'the losing whole value is kept in the record');
    assert.equal(leafMode(policy, 'MedicationRequest', 'dosageInstruction'), 'never-merge');

    // $resolve-conflict: take the loser's whole value; the record and the tag are gone everywhere.
    const [a, b, c] = nodes as [TestNode, TestNode, TestNode];
    a.wall = T0 + 300;
    const res = a.replica.resolveConflict(KEY, 'dosageInstruction', { value: records[0]!.loser.v!, author: 'Practitioner/pharmacist' });
    assert.ok(res.update);
    deliver(b, KEY, res.update);
    deliver(c, KEY, res.update);
    const resolved = assertSameEverywhere(KEY, [a, b, c])!;
    assert.equal(canonicalStringify(resolved.dosageInstruction!), canonicalStringify(loser));
    assert.equal(hasConflictTag(resolved), false);
    assert.deepEqual(a.replica.conflicts(KEY), []);
  });

  it('without the policy the same edits combine into a dosage neither clinician wrote', () => {
    const nodes = doseVsTiming(POLICY, MEDREQ, KEY);
    const body = assertSameEverywhere(KEY, nodes)!;
    const dosage = (body.dosageInstruction as FhirJsonObject[])[0]!;
    assert.equal(canonicalStringify(dosage), '{"id":"d1","doseAndRate":[{"doseQuantity":{"unit":"tablet","value":2.0}}],"sequence":1,"timing":{"repeat":{"frequency":2,"period":1.0,"periodUnit":"d"}}}');
    assert.equal(hasConflictTag(body), false, 'and nobody is told');
  });

  it('a path-qualified key (dosageInstruction by sequence) merges items without id field by field', () => {
    const policy = policyWith('key.json', { 'MedicationRequest.dosageInstruction': { key: ['sequence'] } });
    const noId = MEDREQ.replace('"id":"d1",', '');
    const nodes = doseVsTiming(policy, noId, KEY);
    const body = assertSameEverywhere(KEY, nodes)!;
    assert.equal((body.dosageInstruction as FhirJson[]).length, 1);
    const leaves = [...flatten(fhir(noId), policy).keys()];
    assert.ok(leaves.includes('dosageInstruction[k%3A1]/sequence'), leaves.join(' '));
  });

  it('a choice element: Observation.value[x] never-merge keeps valueQuantity whole', () => {
    const policy = policyWith('obs.json', { 'Observation.value[x]': 'never-merge' });
    const key = 'Observation/o1';
    const base = '{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"weight"},"valueQuantity":{"value":61.50,"unit":"kg"}}';
    assert.deepEqual([...flatten(fhir(base), policy).keys()], ['resourceType', 'id', 'status', 'code/text', 'valueQuantity']);
    const [a, b] = setupWith(policy, ['a', 'b'], key, base) as [TestNode, TestNode];
    a.wall = T0 + 100;
    b.wall = T0 + 200;
    const ua = edit(a, key, 'x', (o) => ((o.valueQuantity as FhirJsonObject).value = fhir('{"v":62.00}').v!));
    const ub = edit(b, key, 'y', (o) => ((o.valueQuantity as FhirJsonObject).unit = 'kilogram'));
    deliver(a, key, ub);
    deliver(b, key, ua);
    const body = assertSameEverywhere(key, [a, b])!;
    assert.equal(canonicalStringify(body.valueQuantity!), '{"unit":"kilogram","value":61.50}');
    assert.deepEqual(summarize(a.replica.conflicts(key)).map((r) => r.path), ['valueQuantity']);
  });

  it('Synthea MedicationRequest (dosage without id): never-merge gives one dosage, the default two copies', (t) => {
    const file = join(DATA_DIR, 'MedicationRequest.000.ndjson');
    if (!existsSync(file)) {
      t.skip(`synthea-10 data absent (${file})`);
      return;
    }
    const line = readFileSync(file, 'utf8').split('\n').find((l) => l.includes('"doseAndRate"') && l.includes('"timing"'));
    assert.ok(line, 'a Synthea MedicationRequest with dose and timing');
    const mr = fhir(line);
    const key = `MedicationRequest/${String(mr.id)}`;
    const policy = policyWith('synthea-nm.json', { 'MedicationRequest.dosageInstruction': 'never-merge' });
    const whole = assertSameEverywhere(key, doseVsTiming(policy, mr, key))!;
    assert.equal((whole.dosageInstruction as FhirJson[]).length, 1);
    assert.ok(hasConflictTag(whole));
    const dflt = assertSameEverywhere(key, doseVsTiming(POLICY, mr, key))!;
    assert.equal((dflt.dosageInstruction as FhirJson[]).length, 2, 'content-hash keyed: both edited copies (docs/merge.md "Known limitations")');
  });

  it('every Synthea resource renders as written under a policy with never-merge and key entries', (t) => {
    if (!existsSync(DATA_DIR)) {
      t.skip(`synthea-10 data absent (${DATA_DIR})`);
      return;
    }
    const policy = policyWith('synthea-all.json', {
      'Patient.name': 'never-merge',
      'Patient.address': 'never-merge',
      'Patient.birthDate': 'first-writer-wins',
      'Encounter.type': 'never-merge',
      'Encounter.participant': { key: ['type'] },
      'MedicationRequest.dosageInstruction': 'never-merge',
      'Condition.code': 'never-merge',
      'Procedure.performed[x]': 'never-merge',
      'Immunization.occurrence[x]': 'first-writer-wins',
    });
    let n = 0;
    for (const type of ['Patient', 'Encounter', 'MedicationRequest', 'Condition', 'Procedure', 'Immunization']) {
      const file = join(DATA_DIR, `${type}.000.ndjson`);
      if (!existsSync(file)) continue;
      for (const line of readFileSync(file, 'utf8').split('\n').slice(0, 40)) {
        if (!line.trim()) continue;
        const r = fhir(line);
        assert.equal(withoutServerMeta(unflatten(flatten(copy(r), policy)).resource), withoutServerMeta(r), `${type}/${String(r.id)}`);
        n++;
      }
    }
    assert.ok(n > 50, `round-tripped ${n} resources`);
  });

  it('empty values inside a never-merge element are not stored', () => {
    const policy = policyWith('nm-empty.json', { 'Patient.contact': 'never-merge' });
    const leaves = flatten(fhir('{"resourceType":"Patient","id":"p","contact":[{"name":{"text":""},"gender":"male","telecom":[]},{}]}'), policy);
    assert.equal(leaves.get('contact'), '[{"gender":"male"}]');
  });
});

describe('merge policy file: elements', () => {
  const errorOf = (name: string, elements: unknown): string => {
    const path = policyFile(name, elements);
    assert.throws(() => loadMergePolicy(path), (err: Error) => err.message.includes(path));
    try {
      loadMergePolicy(path);
    } catch (err) {
      return (err as Error).message;
    }
    return '';
  };

  it('refuses unknown modes, malformed paths and unknown elements, naming the file and the key', () => {
    assert.match(errorOf('bad-mode.json', { 'Patient.birthDate': 'first-write-wins' }), /elements\["Patient\.birthDate"\]: unknown merge mode "first-write-wins": expected one of "last-writer-wins", "first-writer-wins", "never-merge"/);
    assert.match(errorOf('bad-path.json', { 'Patient.name[0].family': 'never-merge' }), /elements\["Patient\.name\[0\]\.family"\]: not a FHIR element path/);
    assert.match(errorOf('bad-path2.json', { birthDate: 'never-merge' }), /elements\["birthDate"\]: not a FHIR element path/);
    assert.match(errorOf('typo.json', { 'Patient.birthdate': 'first-writer-wins' }), /elements\["Patient\.birthdate"\]: unknown FHIR R4 element Patient\.birthdate \(did you mean Patient\.birthDate\?\)/);
    assert.match(errorOf('variant.json', { 'Observation.valueQuantity': 'never-merge' }), /did you mean Observation\.value\[x\]\?/);
    assert.match(errorOf('type.json', { 'Pateint.gender': 'never-merge' }), /unknown FHIR R4 resource type Pateint \(did you mean Patient\?\)/);
    assert.match(errorOf('deep.json', { 'Patient.contact.name.familly': 'never-merge' }), /unknown FHIR R4 element Patient\.contact\.name\.familly \(did you mean Patient\.contact\.name\.family\?\)/);
  });

  it('refuses keys on non-repeating elements, unknown key fields, key with never-merge, and entries that cannot apply', () => {
    assert.match(errorOf('k1.json', { 'Patient.gender': { key: ['system'] } }), /Patient\.gender is not a repeating element/);
    assert.match(errorOf('k2.json', { 'Patient.identifier': { key: ['sytem'] } }), /key field "sytem" is not a child element of Patient\.identifier/);
    assert.match(errorOf('k3.json', { 'Patient.identifier': { key: ['system'], mode: 'never-merge' } }), /a never-merge element is one value/);
    assert.match(errorOf('k4.json', { 'Patient.identifier': { key: [] } }), /"key" must be a non-empty list/);
    assert.match(errorOf('k5.json', { 'Patient.identifier': { keys: ['system'] } }), /unknown field "keys"/);
    assert.match(errorOf('id.json', { 'Patient.id': 'first-writer-wins' }), /resource id is written once/);
    assert.match(errorOf('meta.json', { 'Patient.meta': 'never-merge' }), /server-managed/);
    assert.match(errorOf('inside.json', { 'Patient.contact': 'never-merge', 'Patient.contact.gender': 'first-writer-wins' }), /lies inside never-merge element Patient\.contact/);
    assert.match(errorOf('choice-child.json', { 'Observation.value[x].unit': 'never-merge' }), /is a choice element/);
  });

  it('accepts nested, choice, contentReference and data-type paths; the default file has no element rules', () => {
    const p = policyWith('ok.json', {
      'Patient.contact.name.family': 'first-writer-wins',
      'Questionnaire.item.item.text': 'never-merge',
      'Observation.component.value[x]': 'never-merge',
      'Patient.birthDate': 'last-writer-wins',
    });
    assert.equal(Object.keys(p.elements!).length, 4);
    assert.equal(leafMode(p, 'Patient', 'contact[id%3Ac1]/name/family'), 'first-writer-wins');
    assert.equal(leafMode(p, 'Patient', 'contact[id%3Ac1]/name/given@p'), 'last-writer-wins');
    assert.equal(leafMode(p, 'Observation', 'component[h%3Ax]/valueString'), 'never-merge');
    assert.equal(leafMode(p, 'Observation', 'valueString'), 'last-writer-wins');
    assert.equal(leafMode(p, 'Patient', DELETED), 'last-writer-wins');
    assert.equal(loadMergePolicy().elements, undefined);
  });

  it('`tidegate config check` reports an invalid elements entry of the node\'s merge-policy file', () => {
    const bad = policyFile('check-bad.json', { 'Patient.birthDate': 'sometimes' });
    const cfg = join(dir, 'node.json');
    writeFileSync(cfg, JSON.stringify({
      nodeId: 'hospital-a',
      listen: { host: '127.0.0.1', port: 0 },
      hospitalFhirUrl: 'http://127.0.0.1:1/fhir',
      redisUrl: 'redis://127.0.0.1:1',
      secretKeyFile: 'keys/absent.secret.json',
      peers: [],
      storeFile: ':memory:',
      mergePolicyFile: bad,
    }));
    const report = runConfigCheck(cfg);
    assert.equal(report.ok, false);
    const issue = report.issues.find((i) => i.message.includes('elements["Patient.birthDate"]'));
    assert.ok(issue, JSON.stringify(report.issues));
    assert.match(issue.message, /unknown merge mode "sometimes"/);
    assert.ok(issue.file.endsWith('check-bad.json'));
    assert.match(issue.hint, /Per-element merge policies/);
  });
});

// ---- property: random concurrent edits under all three modes ----

const PKEY = 'Patient/p';
const SKELETON = '{"resourceType":"Patient","id":"p","gender":"unknown"}';
const SEED = Number(process.env.FC_SEED ?? 20_261_129);
const RUNS = Number(process.env.FC_RUNS ?? 200);

type Op = { kind: 'edit'; node: number; edit: number; arg: number; stale: number; dt: number } | { kind: 'deliver'; from: number; to: number; idx: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('edit' as const), node: fc.nat(2), edit: fc.nat(7), arg: fc.nat(5), stale: fc.nat(2), dt: fc.nat(3) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('deliver' as const), from: fc.nat(2), to: fc.nat(2), idx: fc.nat(20) }) },
);

/** A client edit; null deletes the resource. */
function applyEdit(p: FhirJsonObject, e: number, arg: number): FhirJsonObject | null {
  const marital = (): FhirJsonObject => {
    if (!isJsonObject(p.maritalStatus)) p.maritalStatus = fhir('{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-MaritalStatus","code":"S"}],"text":"single"}');
    return p.maritalStatus as FhirJsonObject;
  };
  switch (e) {
    case 0: // last-writer-wins (default)
      p.gender = ['male', 'female', 'other', 'unknown'][arg % 4]!;
      break;
    case 1: // first-writer-wins
      p.birthDate = `19${70 + arg}-0${(arg % 9) + 1}-1${arg}`;
      break;
    case 2:
      delete p.birthDate;
      break;
    case 3: // never-merge: one sub-field
      marital().text = `text ${arg}`;
      break;
    case 4: // never-merge: another sub-field
      marital().coding = [fhir(`{"system":"http://terminology.hl7.org/CodeSystem/v3-MaritalStatus","code":"${['M', 'S', 'D', 'W'][arg % 4]!}"}`)];
      break;
    case 5: // keyed by system + use, value first-writer-wins
      p.telecom = [fhir(`{"system":"phone","use":"${arg % 2 ? 'home' : 'work'}","value":"555-01${arg}"}`)];
      break;
    case 6:
      if (arg % 2) delete p.maritalStatus;
      else delete p.telecom;
      break;
    case 7:
      return arg === 0 ? null : p;
    default:
      throw new Error(`no edit ${e}`);
  }
  return p;
}

function run(policy: MergePolicy, ops: Op[], finalOrder: number[]): { conflicts: number } {
  const nodes = ['a', 'b', 'c'].map((id) => makeNode(id, T0, policy));
  const written: Array<{ path: string; entry: Entry }> = [];
  for (const op of ops) {
    if (op.kind === 'deliver') {
      const from = nodes[op.from]!;
      if (from === nodes[op.to] || from.produced.length === 0) continue;
      nodes[op.to]!.replica.applyRemote(PKEY, from.produced[op.idx % from.produced.length]!);
      continue;
    }
    const node = nodes[op.node]!;
    node.wall += op.dt;
    const history = node.replica.history(PKEY);
    const base = history[Math.min(op.stale, Math.max(0, history.length - 1))];
    const start = base?.body ? fhir(base.body) : fhir(SKELETON);
    delete start.meta;
    const res = node.replica.write(PKEY, applyEdit(copy(start), op.edit, op.arg), base && op.stale > 0 ? { baseVersionId: base.versionId } : {});
    if (!res.update) continue;
    node.produced.push(res.update);
    const paths = readPaths(loadDoc(node.store.get(PKEY)!.state, node.id));
    let newest = '';
    for (const ps of paths.values()) for (const e of ps.entries) if (e.n === node.id && e.t > newest) newest = e.t;
    for (const [path, ps] of paths) for (const e of ps.entries) if (e.n === node.id && e.t === newest) written.push({ path, entry: e });
  }
  const all = nodes.flatMap((n) => n.produced.map((u) => ({ from: n, u })));
  if (all.length === 0) return { conflicts: 0 };
  const order = all.map((_, i) => i).sort((x, y) => finalOrder[x % finalOrder.length]! - finalOrder[y % finalOrder.length]! || x - y);
  for (const i of order) for (const to of nodes) if (to !== all[i]!.from) to.replica.applyRemote(PKEY, all[i]!.u);

  const body = assertSameEverywhere(PKEY, nodes);
  const node = nodes[0]!;
  const paths = readPaths(loadDoc(node.store.get(PKEY)!.state, node.id), policy);
  const lww = readPaths(loadDoc(node.store.get(PKEY)!.state, node.id));
  const conflicts = node.replica.conflicts(PKEY);
  const saw = (w: Entry | undefined, e: Entry): boolean => w !== undefined && (w.s?.[e.n] ?? '') >= e.t;
  const deleted = paths.get(DELETED)?.winner.v === 'true';
  // Nothing lost silently: every written value is rendered, knowingly overwritten, or in a record.
  for (const { path, entry } of written) {
    const ps = paths.get(path);
    assert.ok(ps, `entry at ${path} vanished`);
    if (ps.winner.v === entry.v) continue;
    if (written.some((w) => w.path === path && saw(w.entry, entry))) continue;
    if (conflicts.some((c) => c.path === path && c.loser.n === entry.n && c.loser.t >= entry.t && c.loser.v === entry.v)) continue;
    if (deleted && written.some((w) => w.path === DELETED && w.entry.v === 'true' && saw(w.entry, entry))) continue;
    assert.fail(`lost silently: ${path} = ${entry.v ?? '(removed)'} by ${entry.n}@${entry.t}`);
  }
  // first-writer-wins: at each such path the winner is the earliest entry no other entry has seen.
  for (const [path, ps] of lww) {
    if (leafMode(policy, 'Patient', path) !== 'first-writer-wins') continue;
    const cands = ps.entries.flatMap((e) => [e, ...(e.x ?? [])]);
    const frontier = cands.filter((e) => !cands.some((w) => w !== e && saw(w, e)));
    const earliest = frontier.reduce((m, e) => (e.t < m.t || (e.t === m.t && e.n < m.n) ? e : m));
    assert.equal(paths.get(path)!.winner.v, earliest.v, `first-writer-wins at ${path}`);
  }
  // never-merge: the rendered maritalStatus is a value some client wrote whole, never a combination.
  if (body && body.maritalStatus !== undefined) {
    const text = canonicalStringify(body.maritalStatus);
    assert.ok(written.some((w) => w.path === 'maritalStatus' && w.entry.v === text), `maritalStatus ${text} was never written whole`);
    assert.ok(![...paths.keys()].some((p) => p.startsWith('maritalStatus/')), 'no leaf below a never-merge element');
  }
  return { conflicts: conflicts.length };
}

describe('merge property: per-element policies', () => {
  it(`random concurrent edits under first-writer-wins, never-merge and a key converge and lose nothing (seed ${SEED}, ${RUNS} runs)`, (t) => {
    const policy = policyWith('property.json', {
      'Patient.birthDate': 'first-writer-wins',
      'Patient.maritalStatus': 'never-merge',
      'Patient.telecom': { key: ['system', 'use'], mode: 'first-writer-wins' },
    });
    const t0 = performance.now();
    let withConflicts = 0;
    fc.assert(
      fc.property(fc.array(opArb, { minLength: 4, maxLength: 30 }), fc.array(fc.nat(1000), { minLength: 1, maxLength: 32 }), (ops, finalOrder) => {
        if (run(policy, ops, finalOrder).conflicts > 0) withConflicts++;
      }),
      { seed: SEED, numRuns: RUNS },
    );
    const ms = performance.now() - t0;
    t.diagnostic(`${(ms / 1000).toFixed(1)} s, ${withConflicts} runs ended with conflict records`);
    assert.ok(withConflicts > 0, 'the generator reaches conflicts');
  });
});
