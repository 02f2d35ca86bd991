/**
 * Per-peer redaction (docs/mappings.md "Redaction"): `redactResource` on Synthea Patients and
 * fixtures (remove, mask of complex, primitive and repeating primitive elements, choice paths,
 * `where` with fail closed, nothing to redact), configuration errors at their file:line:column,
 * `map preview`, and end to end with three tidegate nodes, three Medplum hospital servers over HTTP
 * and real Redis: the research peer gets a read-only projection that never holds telecom (its raw
 * Redis inbox opened with its keys, its store, its hospital), a full peer gets everything, edits
 * reach the projection, the research node's edits never reach the shared document, it never
 * forwards the projection, and anti-entropy repairs a lost projection update.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { canonicalStringify, parseFhirJson } from '../src/fhir/json.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { validateFhirResource } from '../src/fhir/validate.ts';
import { generateNodeKeys, open as openEnvelope } from '../src/envelope/index.ts';
import type { NodePublicKeys } from '../src/envelope/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';
import { compileRedactRule, DATA_ABSENT_REASON_URL, openProjectionSqlite, ProjectionFeeds, formatPreview, loadMapping, loadMappingOrThrow, previewResource, REDACTED_SYSTEM, REDACTED_TOKEN, redactResource } from '../src/mapping/index.ts';
import type { CompiledRedactRule, RedactRule } from '../src/mapping/index.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { Replica } from '../src/merge/replica.ts';
import type { TidegateNode } from '../src/node/node.ts';
import { MemoryStore } from '../src/store/store.ts';
import { decodeUpdates } from '../src/tide/codec.ts';
import { REDACTED_LABEL_RULE } from '../src/tide/peer-authz.ts';
import { inboxQueueName } from '../src/tide/index.ts';
import { readSynthea, SYNTHEA_SKIP } from './fixtures/synthea.ts';
import { startMappedNodes } from './fixtures/mapped-nodes.ts';
import type { MappedNodes } from './fixtures/mapped-nodes.ts';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const FHIR = { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' };
const MASKED = { extension: [{ url: DATA_ABSENT_REASON_URL, valueCode: 'masked' }] };

function compile(rules: Array<Omit<RedactRule, 'action'> & { action?: RedactRule['action'] }>): CompiledRedactRule[] {
  return rules.map((r, i) => compileRedactRule({ ...r, action: r.action ?? 'remove' }, `routes.research.redact[${i}]`));
}

/** Writes `resource` into a fresh merge replica and returns the rendered body without server meta. */
function roundTrip(resource: FhirJsonObject): unknown {
  const replica = new Replica({ nodeId: 'rt', store: new MemoryStore(), policy: loadMergePolicy() });
  const w = replica.write(`${String(resource.resourceType)}/${String(resource.id)}`, resource);
  const body = JSON.parse(w.version.body!);
  delete body.meta.versionId;
  delete body.meta.lastUpdated;
  return JSON.parse(canonicalStringify(body));
}

describe('redactResource on Synthea Patients', { skip: SYNTHEA_SKIP }, () => {
  test('telecom removed, address masked, REDACTED label; input untouched; survives the merge round trip and R4 validation', () => {
    const rules = compile([{ path: 'Patient.telecom' }, { path: 'Patient.address', action: 'mask' }]);
    const all = readSynthea('Patient');
    assert.ok(all.length >= 5);
    for (const p of all) {
      const before = JSON.stringify(p);
      const { resource, redacted } = redactResource(p, rules);
      assert.equal(JSON.stringify(p), before, 'input not mutated');
      assert.deepEqual(redacted, ['Patient.telecom', 'Patient.address', 'Patient.text']);
      assert.equal(resource.telecom, undefined);
      assert.equal(resource.text, undefined, 'the narrative may repeat a redacted value: removed');
      assert.equal(resource.address.length, p.address.length, 'one masked occurrence per address');
      for (const a of resource.address) assert.deepEqual(a, MASKED);
      const text = JSON.stringify(resource);
      for (const t of p.telecom) assert.ok(!text.includes(t.value), 'no telecom value left');
      for (const a of p.address) for (const line of a.line ?? []) assert.ok(!text.includes(line), 'no address line left');
      assert.deepEqual(resource.meta.security, [{ system: REDACTED_SYSTEM, code: 'REDACTED', display: 'redacted' }]);
      assert.deepEqual(resource.meta.profile, p.meta.profile, 'the rest of meta kept');
      assert.deepEqual(resource.name, p.name);
      assert.deepEqual(resource.identifier, p.identifier);
      assert.deepEqual(validateFhirResource(resource), [], 'valid R4');
      assert.deepEqual(roundTrip(resource), JSON.parse(canonicalStringify(resource)), 'flatten/unflatten keeps it');
    }
  });
});

describe('redactResource on fixtures', () => {
  const patient: any = {
    resourceType: 'Patient',
    id: 'fx-1',
    meta: { security: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality', code: 'N' }], tag: [{ system: 'urn:example', code: 'research' }] },
    text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">Call 555-0100</div>' },
    name: [{ family: 'Quixotefeather', given: ['Zebulon', 'Q'] }],
    telecom: [{ system: 'phone', value: '555-0100' }],
    birthDate: '1970-01-01',
    _birthDate: { extension: [{ url: 'http://hl7.org/fhir/StructureDefinition/patient-birthTime', valueDateTime: '1970-01-01T08:15:00Z' }] },
    deceasedDateTime: '2020-05-01',
    contact: [{ name: { family: 'Kin' }, telecom: [{ system: 'phone', value: '555-0199' }] }],
  };

  test('remove a primitive removes its _element companion (it may hold data too)', () => {
    const { resource } = redactResource(patient, compile([{ path: 'Patient.birthDate' }]));
    assert.equal(resource.birthDate, undefined);
    assert.equal((resource as Record<string, unknown>)._birthDate, undefined);
    assert.deepEqual(validateFhirResource(resource), []);
  });

  test('mask a primitive: its value dropped, its companion is the data-absent-reason extension', () => {
    const { resource, redacted } = redactResource(patient, compile([{ path: 'Patient.birthDate', action: 'mask' }]));
    assert.deepEqual(redacted, ['Patient.birthDate', 'Patient.text']);
    assert.equal(resource.birthDate, undefined);
    assert.deepEqual((resource as Record<string, unknown>)._birthDate, MASKED);
    assert.deepEqual(validateFhirResource(resource), []);
    assert.deepEqual(roundTrip(resource), JSON.parse(canonicalStringify(resource)));
  });

  test('mask a repeating primitive: aligned null values and masked companions', () => {
    const { resource } = redactResource(patient, compile([{ path: 'Patient.name.given', action: 'mask' }]));
    assert.deepEqual(resource.name, [{ family: 'Quixotefeather', given: [null, null], _given: [MASKED, MASKED] }]);
    assert.ok(!JSON.stringify(resource).includes('Zebulon'));
    assert.deepEqual(validateFhirResource(resource), []);
    assert.deepEqual(roundTrip(resource), JSON.parse(canonicalStringify(resource)));
  });

  test('mask a complex element and a nested one; the label is added once, other labels kept', () => {
    const { resource, redacted } = redactResource(patient, compile([{ path: 'Patient.telecom', action: 'mask' }, { path: 'Patient.contact.telecom' }]));
    assert.deepEqual(redacted, ['Patient.telecom', 'Patient.contact.telecom', 'Patient.text']);
    assert.deepEqual(resource.telecom, [MASKED]);
    assert.deepEqual(resource.contact, [{ name: { family: 'Kin' } }]);
    assert.ok(!JSON.stringify(resource).includes('555-01'));
    assert.equal(resource.meta.security.length, 2);
    const again = redactResource(resource, compile([{ path: 'Patient.telecom', action: 'mask' }]));
    assert.equal(again.resource.meta.security.filter((c: any) => c.code === 'REDACTED').length, 1, 'idempotent label');
    assert.deepEqual(validateFhirResource(resource), []);
  });

  test('an element left empty by a removal is removed too (no empty elements, FHIR ele-1)', () => {
    const p = { ...patient, contact: [{ telecom: [{ system: 'phone', value: '555-0199' }] }, { name: { family: 'Kin' }, telecom: [{ system: 'phone', value: '555-0198' }] }] };
    const { resource } = redactResource(p, compile([{ path: 'Patient.contact.telecom' }]));
    assert.deepEqual(resource.contact, [{ name: { family: 'Kin' } }]);
    const only = redactResource({ ...p, contact: [p.contact[0]] }, compile([{ path: 'Patient.contact.telecom' }])).resource;
    assert.equal(only.contact, undefined);
    assert.deepEqual(validateFhirResource(only), []);
  });

  test('choice [x] paths match the typed variants, primitive and complex', () => {
    const masked = redactResource(patient, compile([{ path: 'Patient.deceased[x]', action: 'mask' }])).resource as Record<string, unknown>;
    assert.equal(masked.deceasedDateTime, undefined);
    assert.deepEqual(masked._deceasedDateTime, MASKED);
    assert.deepEqual(validateFhirResource(masked as FhirJsonObject), []);
    const obs: any = { resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'x' }, valueQuantity: { value: 5.4, unit: 'mmol/L' } };
    const q = redactResource(obs, compile([{ path: 'Observation.value[x]', action: 'mask' }])).resource;
    assert.deepEqual(q.valueQuantity, MASKED);
    assert.deepEqual(validateFhirResource(q), []);
    const s = redactResource({ ...obs, valueQuantity: undefined, valueString: 'positive' }, compile([{ path: 'Observation.value[x]' }])).resource as Record<string, unknown>;
    assert.equal(s.valueString, undefined);
    assert.equal(redactResource(obs, compile([{ path: 'Observation.value[x]' }])).resource.valueQuantity, undefined);
  });

  test('where limits a rule; a condition that fails to evaluate redacts (fail closed)', () => {
    const rules = compile([{ path: 'Patient.telecom', where: "meta.tag.where(code = 'research').exists()" }]);
    assert.equal(redactResource(patient, rules).resource.telecom, undefined);
    const untagged = { ...patient, meta: {} };
    const kept = redactResource(untagged, rules);
    assert.deepEqual(kept.redacted, []);
    assert.equal(kept.resource, untagged, 'nothing redacted: the input itself, no label');
    const errors: string[] = [];
    // two given names: the condition gives two items, not one Boolean
    const failing = compile([{ path: 'Patient.telecom', where: 'name.given' }]);
    const r = redactResource(patient, failing, (rule, err) => errors.push(`${rule.at}: ${err.message}`));
    assert.equal(r.resource.telecom, undefined);
    assert.match(errors[0]!, /routes\.research\.redact\[0\]: condition gave 2 items/);
  });

  test('nothing to redact: same object, no label; rules of other types are skipped', () => {
    const obs: any = { resourceType: 'Observation', id: 'o2', status: 'final', code: { text: 'x' } };
    const r = redactResource(obs, compile([{ path: 'Patient.telecom' }, { path: 'Observation.value[x]' }]));
    assert.equal(r.resource, obs);
    assert.deepEqual(r.redacted, []);
  });
});

describe('redaction configuration', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-redact-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('bad paths and conditions are errors at file:line:column with a hint', () => {
    const file = join(dir, 'bad.mapping.json');
    writeFileSync(
      file,
      `{
  "routes": {
    "research": {
      "redact": [
        { "path": "Patient.phone" },
        { "path": "Observation.value", "action": "mask" },
        { "path": "Patient.birthDate.year" },
        { "path": "Patient.telecom", "where": "telecom.where(" }
      ]
    }
  }
}
`,
    );
    const { mapping, issues } = loadMapping(file, { peers: ['research'] });
    assert.equal(mapping, undefined);
    const shown = issues.map((i) => `${i.line}:${i.column} ${i.pointer} ${i.message}`);
    assert.deepEqual(shown, [
      '5:19 /routes/research/redact/0/path Patient has no element "phone"',
      '6:19 /routes/research/redact/1/path Observation.value is a choice element: write Observation.value[x]',
      '7:19 /routes/research/redact/2/path Patient.birthDate is a primitive (date): a path cannot go below it',
      `8:47 /routes/research/redact/3/where ${issues[3]!.message}`,
    ]);
    assert.match(issues[3]!.message, /FHIRPath does not parse/);
    assert.match(issues[0]!.hint, /R4 element path/);
  });

  test('a valid file: redactionFor, redactedTypes, and map preview shows the redaction', () => {
    const file = join(dir, 'good.mapping.json');
    writeFileSync(file, JSON.stringify({ routes: { research: { redact: [{ path: 'Patient.telecom' }, { path: 'Patient.address', action: 'mask' }] } } }));
    const mapping = loadMappingOrThrow(file, { peers: ['research', 'full'] });
    assert.equal(mapping.redactionFor('full'), undefined);
    assert.equal(mapping.redactionFor('research')!.length, 2);
    assert.deepEqual([...mapping.redactedTypes('research')], ['Patient']);
    const p: any = { resourceType: 'Patient', id: 'pv', telecom: [{ system: 'phone', value: '555-0100' }], address: [{ city: 'Olathe' }], gender: 'female' };
    const preview = previewResource(mapping, p, 'research');
    assert.deepEqual(preview.redacted, ['Patient.telecom', 'Patient.address']);
    const text = formatPreview(preview);
    assert.match(text, /^-.*"telecom"/m);
    assert.match(text, /^-.*"city": "Olathe"/m);
    assert.match(text, /^# redacted Patient\.telecom \(projection for research\)$/m);
    assert.match(text, /^# redacted Patient\.address \(projection for research\)$/m);
    assert.doesNotMatch(formatPreview(previewResource(mapping, p, 'full')), /# redacted/);
  });
});

describe('projection feeds without gossip: epochs and deletes', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-projection-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('a lost projection store starts a new writer: the peer converges on the new projection, nothing corrupt', async () => {
    const file = join(dir, 'm.mapping.json');
    writeFileSync(file, JSON.stringify({ routes: { research: { redact: [{ path: 'Patient.telecom' }] } } }));
    const mapping = loadMappingOrThrow(file, { peers: ['research'] });
    const shared = new Replica({ nodeId: 'hospital-a', store: new MemoryStore(), policy: loadMergePolicy() });
    const peer = new Replica({ nodeId: 'research', store: new MemoryStore(), policy: loadMergePolicy() });
    const sent: string[] = [];
    const feeds = (): ProjectionFeeds =>
      new ProjectionFeeds({
        nodeId: 'hospital-a',
        mapping: () => mapping,
        shared,
        policy: loadMergePolicy(),
        publishTo: (peerId, updates) => {
          for (const u of updates) {
            sent.push(`${peerId} ${u.key}`);
            peer.applyRemote(u.key, u.update);
          }
        },
        mayReceive: () => true,
      });
    const key = 'Patient/ep-1';
    shared.write(key, { resourceType: 'Patient', id: 'ep-1', gender: 'female', telecom: [{ system: 'phone', value: '555-0100' }], maritalStatus: { text: 'Married' } });
    shared.write('Observation/ep-o', { resourceType: 'Observation', id: 'ep-o', status: 'final', code: { text: 'x' } });
    const first = feeds();
    await first.backfill();
    assert.deepEqual(sent, [`research ${key}`], 'only projected types, once');
    assert.equal(JSON.parse(peer.current(key)!.body!).gender, 'female');
    // the projection store is lost: a new feed (new epoch) projects the next version
    shared.write(key, { resourceType: 'Patient', id: 'ep-1', gender: 'male', telecom: [{ system: 'phone', value: '555-0100' }], maritalStatus: { text: 'Widowed' } });
    const second = feeds();
    second.onVersion(key);
    await second.idle();
    const atPeer = JSON.parse(peer.current(key)!.body!);
    assert.equal(atPeer.gender, 'male', 'the new lineage wins element by element');
    assert.equal(atPeer.maritalStatus.text, 'Widowed');
    assert.equal(atPeer.telecom, undefined);
    const logs = [...new Set(bytesText(peer.diffFor(key, undefined)!).match(/hospital-a~redacted~research~[0-9a-f]+/g))];
    assert.equal(logs.length, 2, 'two writers, two epochs: no Yjs clock reused');
    // a delete of the shared resource deletes the projection
    shared.write(key, null);
    second.onVersion(key);
    await second.idle();
    assert.equal(peer.current(key)!.deleted, true);
    await second.stop();
    second.onVersion(key);
    assert.deepEqual(second.stats().failures, 0);
  });

  test('crypto-shredding reaches a sealed SQLite projection store', async () => {
    const file = join(dir, 's.mapping.json');
    writeFileSync(file, JSON.stringify({ routes: { research: { redact: [{ path: 'Patient.telecom' }] } } }));
    const mapping = loadMappingOrThrow(file, { peers: ['research'] });
    const shared = new Replica({ nodeId: 'hospital-a', store: new MemoryStore(), policy: loadMergePolicy() });
    const opened = openProjectionSqlite(join(dir, 'shred.sqlite'), 'research', { secretKeys: generateNodeKeys('hospital-a').secretKeys });
    try {
      const feeds = new ProjectionFeeds({ nodeId: 'hospital-a', mapping: () => mapping, shared, policy: loadMergePolicy(), openStore: () => opened, publishTo: () => {}, mayReceive: () => true });
      shared.write('Patient/sh-1', { resourceType: 'Patient', id: 'sh-1', telecom: [{ system: 'phone', value: '555-0100' }], gender: 'female' });
      await feeds.backfill();
      assert.ok(opened.store.get('Patient/sh-1'), 'projected');
      assert.deepEqual(feeds.shred(['Patient/sh-1', 'Patient/never']), { shredded: 1, unshreddable: 0 });
      assert.equal(opened.store.get('Patient/sh-1'), undefined);
    } finally {
      opened.close();
    }
  });

  test('a restart with the persisted projection store sends nothing again', async () => {
    const file = join(dir, 'r.mapping.json');
    writeFileSync(file, JSON.stringify({ routes: { research: { redact: [{ path: 'Patient.telecom' }] } } }));
    const mapping = loadMappingOrThrow(file, { peers: ['research'] });
    const shared = new Replica({ nodeId: 'hospital-a', store: new MemoryStore(), policy: loadMergePolicy() });
    for (let i = 0; i < 5; i++) shared.write(`Patient/rs-${i}`, { resourceType: 'Patient', id: `rs-${i}`, telecom: [{ system: 'phone', value: `555-010${i}` }] });
    const storeFile = join(dir, 'restart.sqlite');
    const run = async (): Promise<{ sent: number; epoch: string }> => {
      const opened = openProjectionSqlite(storeFile, 'research');
      let sent = 0;
      try {
        const feeds = new ProjectionFeeds({ nodeId: 'hospital-a', mapping: () => mapping, shared, policy: loadMergePolicy(), openStore: () => opened, publishTo: (_p, u) => (sent += u.length), mayReceive: () => true });
        await feeds.backfill();
        await feeds.stop();
      } finally {
        opened.close();
      }
      return { sent, epoch: opened.epoch };
    };
    const first = await run();
    assert.equal(first.sent, 5);
    const second = await run();
    assert.deepEqual(second, { sent: 0, epoch: first.epoch }, 'same writer, nothing changed, nothing sent');
  });

  test('the SQLite projection store keeps its epoch across reopen; a lost file gets a new one', () => {
    const storeFile = join(dir, 'node.sqlite');
    const a = openProjectionSqlite(storeFile, 'research');
    a.close();
    const b = openProjectionSqlite(storeFile, 'research');
    assert.equal(b.epoch, a.epoch);
    assert.equal(b.path, `${storeFile}.projection-research.${a.epoch}.sqlite`);
    b.close();
    rmSync(b.path);
    const c = openProjectionSqlite(storeFile, 'research');
    assert.notEqual(c.epoch, a.epoch);
    c.close();
  });
});

async function hospitalGet(h: MedplumHospital, path: string): Promise<any> {
  const res = await fetch(`${h.url}/${path}`, { headers: FHIR });
  return res.status === 200 ? res.json() : undefined;
}

async function nodePut(n: TidegateNode, resource: any): Promise<void> {
  const res = await fetch(`${n.baseUrl}/${resource.resourceType}/${resource.id}`, { method: 'PUT', headers: FHIR, body: JSON.stringify(resource) });
  assert.ok(res.ok, `PUT at the node: ${res.status} ${await res.text()}`);
}

/** Yjs documents' text content, for searching values (update bytes hold strings as UTF-8). */
function bytesText(b: Uint8Array): string {
  return Buffer.from(b).toString('utf8');
}

describe('redaction end to end: three nodes, three Medplum hospitals, real Redis', { skip: SYNTHEA_SKIP }, () => {
  // A: the sender (its route redacts for "research"); R: the research node; C: a full peer
  const names = ['hospital-a', 'research', 'hospital-c'] as const;
  const keys = names.map((n) => generateNodeKeys(n));
  let fx: MappedNodes;
  let prefix = '';
  let hospitals: MedplumHospital[] = [];
  let nodes: TidegateNode[] = [];
  const running = (): TidegateNode[] => nodes.filter((n) => fx.started().includes(n));

  const settle = (which: TidegateNode[] = running()): Promise<void> => fx.settle({ which });
  const antiEntropy = async (): Promise<void> => {
    for (const n of running()) await n.tide.runAntiEntropy();
    await settle();
  };

  before(async () => {
    fx = await startMappedNodes({
      prefix: 'redact',
      names,
      keys: Object.fromEntries(names.map((n, i) => [n, keys[i]!])),
      mappings: {
        'hospital-a': { routes: { research: { redact: [{ path: 'Patient.telecom' }, { path: 'Patient.address', action: 'mask' }] } } },
        // C holds the shared resource too: it must not give research the unredacted one
        'hospital-c': { routes: { research: { withhold: [{ resourceType: 'Patient' }] } } },
      },
      // research starts later: its inbox is read raw first
      start: ['hospital-a', 'hospital-c'],
    });
    ({ prefix, hospitals, nodes } = fx);
  });

  after(() => fx?.stop());

  test('research gets a read-only projection without telecom; the full peer gets everything; edits flow one way', async () => {
    const [nA, nR, nC] = nodes as [TidegateNode, TidegateNode, TidegateNode];
    const [, hR, hC] = hospitals as [MedplumHospital, MedplumHospital, MedplumHospital];
    const [patient, other] = readSynthea('Patient') as [Record<string, any>, Record<string, any>];
    const key = `Patient/${patient.id}`;
    const phones: string[] = [...patient.telecom, ...other.telecom].map((t: any) => t.value);
    const lines: string[] = [...patient.address, ...other.address].flatMap((a: any) => a.line ?? []);
    await nodePut(nA, patient);
    await nodePut(nA, other);
    await nodePut(nA, { resourceType: 'Observation', id: 'redact-obs', status: 'final', code: { text: 'glucose' }, subject: { reference: key } });
    await settle();

    // 1. research's raw Redis inbox, opened with research's keys: projections only, no telecom bytes
    const inbox = new Queue(inboxQueueName('research'), { connection: { url: REDIS_URL }, prefix, skipMetasUpdate: true });
    const senders = new Map<string, NodePublicKeys>(names.filter((n) => n !== 'research').map((n) => [n, keys[names.indexOf(n)]!.publicKeys]));
    const received = new Map<string, Uint8Array[]>();
    try {
      const jobs = await inbox.getJobs(['waiting', 'prioritized', 'delayed']);
      assert.ok(jobs.length > 0, 'A sent research something');
      for (const j of jobs) {
        const env = (j.data as { env: string }).env;
        assert.ok(!env.includes(phones[0]!), 'sealed');
        const opened = openEnvelope(env, keys[1]!.secretKeys, senders);
        if (opened.header.kind !== 'updates') continue;
        for (const u of decodeUpdates(opened.plaintext)) received.set(u.key, [...(received.get(u.key) ?? []), u.update]);
      }
    } finally {
      await inbox.close();
    }
    assert.ok(received.has(key) && received.has('Observation/redact-obs'), 'the Patient (projected) and the Observation (shared) were sent');
    for (const [k, updates] of received) {
      for (const u of updates) {
        const text = bytesText(u);
        for (const v of [...phones, ...lines]) assert.ok(!text.includes(v), `${k}: a telecom or address value in research's queue`);
        if (k.startsWith('Patient/')) {
          assert.ok(!text.includes('"telecom'), `${k}: a telecom element in research's queue`);
          assert.ok(text.includes('hospital-a~redacted~research~'), 'written by the projection writer');
          assert.ok(!text.includes('n:hospital-a"') && !text.includes('\u000cn:hospital-a'), 'never the shared document');
        }
      }
    }

    // 2. research runs: its store and its hospital hold the projection
    await fx.start('research');
    await settle();
    await antiEntropy();
    const atR = JSON.parse(nR.replica.current(key)!.body!);
    assert.equal(atR.telecom, undefined);
    assert.equal(atR.address.length, patient.address.length);
    for (const a of atR.address) assert.deepEqual(a, MASKED);
    assert.ok(atR.meta.security.some((c: any) => `${c.system}|${c.code}` === REDACTED_TOKEN));
    assert.deepEqual(atR.name, patient.name);
    const inR = await hospitalGet(hR, key);
    assert.ok(inR, 'the projection reached research\u2019s hospital');
    assert.equal(inR.telecom, undefined);
    assert.deepEqual(inR.address[0].extension, MASKED.extension);
    const rawR = JSON.stringify([...nR.replica.keys()].map((k) => bytesText(nR.replica.diffFor(k, undefined) ?? new Uint8Array())));
    for (const v of phones) assert.ok(!rawR.includes(v), 'no telecom value in research\u2019s store');
    assert.ok(nR.replica.current('Observation/redact-obs'), 'unprojected types arrive as the shared document');
    assert.equal(nR.replica.current('Observation/redact-obs')!.body, nA.replica.current('Observation/redact-obs')!.body);

    // 3. the full peer has everything; the shared document's bytes are identical on A and C
    const atC = JSON.parse(nC.replica.current(key)!.body!);
    assert.deepEqual(atC.telecom, patient.telecom);
    assert.deepEqual((await hospitalGet(hC, key)).telecom, patient.telecom);
    const sameShared = (): void => {
      for (const k of [key, `Patient/${other.id}`, 'Observation/redact-obs']) {
        assert.ok(Buffer.from(nA.replica.diffFor(k, undefined)!).equals(Buffer.from(nC.replica.diffFor(k, undefined)!)), `${k}: A and C hold the same bytes`);
      }
    };
    sameShared();

    // 4. an edit at A reaches the projection (still redacted)
    await nodePut(nA, { ...patient, maritalStatus: { text: 'Widowed' }, telecom: [...patient.telecom, { system: 'email', value: 'zq@example.org' }] });
    await settle();
    const r2 = JSON.parse(nR.replica.current(key)!.body!);
    assert.equal(r2.maritalStatus.text, 'Widowed');
    assert.equal(r2.telecom, undefined);
    assert.ok(!bytesText(nR.replica.diffFor(key, undefined)!).includes('zq@example.org'));
    assert.equal(JSON.parse(nC.replica.current(key)!.body!).telecom.length, patient.telecom.length + 1);

    // 5. research edits its projection: the edit stays at research (never forwarded, never in the shared document)
    const mine = JSON.parse(nR.replica.current(key)!.body!);
    await nodePut(nR, { ...mine, gender: mine.gender === 'male' ? 'female' : 'male', meta: { ...mine.meta, versionId: undefined } });
    await settle();
    await antiEntropy();
    assert.notEqual(JSON.parse(nR.replica.current(key)!.body!).gender, patient.gender, 'research sees its own edit');
    assert.equal(JSON.parse(nA.replica.current(key)!.body!).gender, patient.gender, 'A\u2019s shared document is untouched');
    assert.equal(JSON.parse(nC.replica.current(key)!.body!).gender, patient.gender, 'C never got it');
    for (const n of [nA, nC]) {
      const doc = bytesText(n.replica.diffFor(key, undefined)!);
      assert.ok(!doc.includes('n:research') && !doc.includes('~redacted~'), 'no research or projection lineage in a shared document');
    }
    sameShared();
    assert.ok(nR.tide.stats().updatesWithheld > 0, 'research withheld the REDACTED resource from its peers');
    assert.ok(nR.tide.peers().every((p) => p.withheldLabels.includes(REDACTED_LABEL_RULE)));
    assert.deepEqual(nA.tide.peers().map((p) => `${p.nodeId}:${p.projectedTypes.join(',')}`), ['research:Patient', 'hospital-c:']);

    // 6. a lost projection update is repaired by anti-entropy
    await nA.tide.quarantinePeer('research', 'test: drop what is sent');
    await nodePut(nA, { ...patient, maritalStatus: { text: 'Divorced' } });
    await settle();
    assert.ok(nA.tide.stats().updatesToQuarantinedPeers > 0, 'the projection update was dropped');
    assert.equal(JSON.parse(nR.replica.current(key)!.body!).maritalStatus.text, 'Widowed');
    await nA.tide.releasePeer('research');
    await antiEntropy();
    await antiEntropy();
    const repaired = JSON.parse(nR.replica.current(key)!.body!);
    assert.equal(repaired.maritalStatus.text, 'Divorced', 'anti-entropy repaired the projection');
    assert.equal(repaired.telecom, undefined);
    assert.ok(nA.projections.stats().written >= 4);
    // the projected Patients are in research's store as projections; the shared bytes still agree
    sameShared();
    const parsed = parseFhirJson(nR.replica.current(`Patient/${other.id}`)!.body!) as FhirJsonObject;
    assert.equal(parsed.telecom, undefined);

    // 7. converged: an anti-entropy round re-sends no projection (research keeps them in its trees)
    const queued = nA.tide.stats().aeUpdatesQueued;
    await antiEntropy();
    assert.equal(nA.tide.stats().aeUpdatesQueued, queued, 'nothing repaired when nothing was lost');

    // 8. one-way: A drops every update of a projected type sent by research itself (not quarantined).
    // research's own new Patient is not a projection: it reaches A through C, as a shared document.
    const dropped = nA.tide.stats().projectedUpdatesDropped;
    await nodePut(nR, { resourceType: 'Patient', id: 'research-own', gender: 'other' });
    await settle();
    assert.ok(nA.tide.stats().projectedUpdatesDropped > dropped, 'A dropped research’s direct update');
    assert.deepEqual(Object.keys(nA.tide.stats().quarantined), [], 'dropped, not quarantined');
    // (research's hospital echo may add a version at research later: A gets it through C too)
    const own = (n: TidegateNode): string | null | undefined => n.replica.current('Patient/research-own')?.body;
    for (let round = 0; round < 6 && own(nA) !== own(nC); round++) await antiEntropy();
    assert.ok(nC.replica.current('Patient/research-own'), 'C takes research’s own resources');
    assert.equal(nA.replica.current('Patient/research-own')?.body, nC.replica.current('Patient/research-own')!.body, 'and A gets them from C');
  });
});
