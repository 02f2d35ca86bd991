/**
 * Redaction and resources nested in others (docs/mappings.md "Redaction", "Nested resources"):
 * - inside a projected resource, the rules reach nested copies of a named type: a Patient
 *   contained in a Patient-rule resource, a Bundle's Patient entries when a rule names Bundle
 *   (https://hl7.org/fhir/R4/references.html#contained, https://hl7.org/fhir/R4/bundle.html),
 *   recursively and with a depth bound (redactResource);
 * - only the types the rules name are projected (projectedTypesFor: the live feed, Tide's
 *   anti-entropy and `map preview` use the one set);
 * - a resource of another type that nests a named type (an Observation with a contained Patient)
 *   is WITHHELD from the peer (Mapping.explainRoute, fail closed), with a reason `map preview` shows.
 * End to end with three tidegate nodes, three Medplum hospitals over HTTP and real Redis: the
 * research peer's raw inbox (opened with its keys), its store and its hospital never get an
 * Observation with a contained Patient, the full peer gets it whole; a plain Observation reaches
 * research as a shared document (two-way); a Patient reaches it redacted; removing the contained
 * Patient releases the Observation to research without the earlier version's phone.
 */
import { settleNodes } from './fixtures/mapped-nodes.ts';
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import pino from 'pino';
import { Queue } from 'bullmq';
import { validateFhirResource } from '../src/fhir/validate.ts';
import { generateNodeKeys, open as openEnvelope } from '../src/envelope/index.ts';
import type { NodePublicKeys } from '../src/envelope/index.ts';
import { HospitalClient, startMedplumHospital } from '../src/hospital/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';
import { formatPreview, loadMappingOrThrow, previewResource, ProjectionFeeds } from '../src/mapping/index.ts';
import type { Mapping } from '../src/mapping/index.ts';
import { compileRedactRule, DATA_ABSENT_REASON_URL, findNestedResource, MAX_NESTED_RESOURCE_DEPTH, projectedTypesFor, REDACTED_TOKEN, redactResource } from '../src/mapping/redact.ts';
import type { CompiledRedactRule } from '../src/mapping/redact.ts';
import type { RedactRule } from '../src/mapping/schema.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { Replica } from '../src/merge/replica.ts';
import { TidegateNode } from '../src/node/node.ts';
import { MemoryStore } from '../src/store/store.ts';
import { decodeUpdates } from '../src/tide/codec.ts';
import { inboxQueueName } from '../src/tide/index.ts';
import { outboundLabelsOf, ROUTE_LABEL_SYSTEM } from '../src/tide/peer-authz.ts';
import { clearRedisPrefix } from './fixtures/redis.ts';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const FHIR = { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' };
const MASKED = { extension: [{ url: DATA_ABSENT_REASON_URL, valueCode: 'masked' }] };

function compile(rules: Array<Omit<RedactRule, 'action'> & { action?: RedactRule['action'] }>): CompiledRedactRule[] {
  return rules.map((r, i) => compileRedactRule({ ...r, action: r.action ?? 'remove' }, `routes.research.redact[${i}]`));
}

const RULES = compile([{ path: 'Patient.telecom' }, { path: 'Patient.address', action: 'mask' }]);

/** A Patient with a phone and an address line whose values are unique to `tag` (searched for in bytes). */
function patient(id: string, tag: string): any {
  return {
    resourceType: 'Patient',
    id,
    name: [{ family: `Fam${tag}`, given: ['Ada'] }],
    telecom: [{ system: 'phone', value: `555-${tag}`, use: 'home' }],
    address: [{ line: [`${tag} Kiehn Loaf`], city: 'Olathe' }],
    gender: 'female',
  };
}

/** An Observation about a contained Patient (`subject` → `#p`, R4 dom-3). */
function observationWithContained(id: string, tag: string): any {
  const { id: _drop, ...p } = patient('p', tag);
  return {
    resourceType: 'Observation',
    id,
    text: { status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml">glucose of Ada, phone 555-${tag}</div>` },
    contained: [{ ...p, id: 'p' }],
    status: 'final',
    code: { text: 'glucose' },
    subject: { reference: '#p' },
    valueQuantity: { value: 5.4, unit: 'mmol/L' },
  };
}

/** A stored collection Bundle: a Patient entry, an Observation entry that contains a Patient. */
function collectionBundle(id: string, tagPatient: string, tagNested: string): any {
  return {
    resourceType: 'Bundle',
    id,
    type: 'collection',
    entry: [
      { fullUrl: `urn:uuid:${randomUUIDish(1)}`, resource: patient(`bp-${id}`, tagPatient) },
      { fullUrl: `urn:uuid:${randomUUIDish(2)}`, resource: observationWithContained(`bo-${id}`, tagNested) },
    ],
  };
}

function randomUUIDish(n: number): string {
  return `00000000-0000-4000-8000-00000000000${n}`;
}

/** The JSON text of a value (for searching redacted values). */
function text(v: unknown): string {
  return JSON.stringify(v);
}

/** Yjs documents' text content, for searching values (update bytes hold strings as UTF-8). */
function bytesText(b: Uint8Array): string {
  return Buffer.from(b).toString('utf8');
}

describe('redactResource reaches nested resources', () => {
  test('a contained Patient: telecom removed, address masked, the container narrative gone, label on the container only; input untouched; R4-valid', () => {
    const obs = observationWithContained('o1', '0101');
    const before = structuredClone(obs);
    const { resource, redacted } = redactResource(obs, RULES);
    assert.deepEqual(obs, before, 'input untouched');
    const out = resource as any;
    assert.equal(out.contained[0].telecom, undefined);
    assert.deepEqual(out.contained[0].address, [MASKED]);
    assert.deepEqual(out.contained[0].name, obs.contained[0].name, 'the rest kept');
    assert.equal(out.text, undefined, 'the narrative repeated the phone');
    assert.ok(!text(out).includes('555-0101') && !text(out).includes('0101 Kiehn'));
    assert.ok(out.meta.security.some((c: any) => `${c.system}|${c.code}` === REDACTED_TOKEN));
    assert.equal(out.contained[0].meta, undefined, 'no security label on a contained resource (R4 dom-5)');
    assert.deepEqual(redacted, ['Observation.contained.ofType(Patient).telecom', 'Observation.contained.ofType(Patient).address', 'Observation.text']);
    assert.deepEqual(validateFhirResource(out).map((i) => i.details?.text ?? i.diagnostics), []);
  });

  test('a Bundle: its Patient entry and a Patient contained in another entry, the entries\u2019 narratives gone; R4-valid', () => {
    const b = collectionBundle('b1', '0201', '0202');
    b.entry.push({ fullUrl: 'urn:uuid:00000000-0000-4000-8000-000000000003', resource: { resourceType: 'Condition', id: 'c', text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">Ada, 555-0201</div>' }, subject: { reference: 'urn:uuid:00000000-0000-4000-8000-000000000001' }, code: { text: 'x' } } });
    const { resource, redacted } = redactResource(b, RULES);
    const out = resource as any;
    for (const v of ['555-0201', '555-0202', '0201 Kiehn', '0202 Kiehn']) assert.ok(!text(out).includes(v), `${v} gone`);
    assert.equal(out.entry[0].resource.name[0].family, 'Fam0201');
    assert.deepEqual(out.entry[1].resource.contained[0].address, [MASKED]);
    assert.equal(out.entry[2].resource.text, undefined, 'a sibling\u2019s narrative may repeat the Patient (fail closed)');
    assert.deepEqual(redacted, [
      'Bundle.entry.resource.ofType(Patient).telecom',
      'Bundle.entry.resource.ofType(Patient).address',
      'Bundle.entry.resource.ofType(Observation).contained.ofType(Patient).telecom',
      'Bundle.entry.resource.ofType(Observation).contained.ofType(Patient).address',
      'Bundle.entry.resource.ofType(Observation).text',
      'Bundle.entry.resource.ofType(Condition).text',
    ]);
    assert.deepEqual(validateFhirResource(out).map((i) => i.details?.text ?? i.diagnostics), []);
  });

  test('a where is evaluated on the nested resource itself', () => {
    const rules = compile([{ path: 'Patient.telecom', where: "gender = 'male'" }]);
    const b = collectionBundle('b2', '0301', '0302');
    b.entry[0].resource.gender = 'male';
    const out = redactResource(b, rules).resource as any;
    assert.equal(out.entry[0].resource.telecom, undefined, 'the male entry Patient');
    assert.equal(out.entry[1].resource.contained[0].telecom[0].value, '555-0302', 'the female contained Patient keeps it');
  });

  test('Parameters.parameter.resource and a Bundle contained in a Bundle entry are reached', () => {
    const params: any = { resourceType: 'Parameters', parameter: [{ name: 'p', part: [{ name: 'q', resource: patient('pp', '0401') }] }] };
    assert.ok(!text(redactResource(params, RULES).resource).includes('555-0401'));
    const inner = collectionBundle('inner', '0402', '0403');
    const doc: any = { resourceType: 'Bundle', id: 'outer', type: 'collection', entry: [{ fullUrl: 'urn:uuid:00000000-0000-4000-8000-000000000009', resource: { ...observationWithContained('o9', '0404'), contained: [{ ...inner, id: 'inner' }], subject: { reference: '#inner' } } }] };
    const out = redactResource(doc, RULES);
    for (const v of ['555-0402', '555-0403']) assert.ok(!text(out.resource).includes(v), `${v} gone`);
    assert.ok(out.redacted.includes('Bundle.entry.resource.ofType(Observation).contained.ofType(Bundle).entry.resource.ofType(Observation).contained.ofType(Patient).telecom'));
  });

  test(`resources nested deeper than ${MAX_NESTED_RESOURCE_DEPTH} levels are removed (fail closed)`, () => {
    let deepest: any = patient('deep', '0501');
    for (let i = 0; i < MAX_NESTED_RESOURCE_DEPTH + 2; i++) deepest = { resourceType: 'Bundle', id: `n${i}`, type: 'collection', entry: [{ resource: deepest }] };
    const { resource, redacted } = redactResource(deepest, RULES);
    assert.ok(!text(resource).includes('555-0501') && !text(resource).includes('Fam0501'), 'the too-deep Patient is gone, name and all');
    assert.equal(redacted.length, 1);
    assert.equal(redacted[0], `Bundle${'.entry.resource.ofType(Bundle)'.repeat(MAX_NESTED_RESOURCE_DEPTH + 1)}`, 'the first resource too deep, by its path');
  });

  test('nothing to redact in the tree: the same object, no label (a contained Patient without telecom or address)', () => {
    const obs = observationWithContained('o2', '0601');
    delete obs.contained[0].telecom;
    delete obs.contained[0].address;
    const r = redactResource(obs, RULES);
    assert.equal(r.resource, obs);
    assert.deepEqual(r.redacted, []);
  });
});

/** A mapping file in `dir` with the given routes, loaded for `peers`. */
function mappingWith(dir: string, routes: object, peers: string[] = ['research', 'full']): Mapping {
  const file = join(dir, `m-${randomBytes(3).toString('hex')}.mapping.json`);
  writeFileSync(file, JSON.stringify({ routes }));
  return loadMappingOrThrow(file, { peers });
}

const RESEARCH_ROUTE = { redact: [{ path: 'Patient.telecom' }, { path: 'Patient.address', action: 'mask' }] };
const WITHHELD_REASON = "holds a nested Patient that research's redaction rules name: withheld (only Patient resources themselves go to research, as projections)";

describe('projected types are the named types; a resource nesting one is withheld', () => {
  test('projectedTypesFor: exactly the types the rules name, one set per rule list; none without rules', () => {
    assert.deepEqual([...projectedTypesFor(RULES)], ['Patient']);
    assert.deepEqual([...projectedTypesFor(compile([{ path: 'Patient.telecom' }, { path: 'Bundle.signature' }, { path: 'Patient.address' }]))].sort(), ['Bundle', 'Patient']);
    assert.equal(projectedTypesFor(RULES), projectedTypesFor(RULES), 'one set per rule list');
    assert.equal(projectedTypesFor(undefined).size, 0);
    assert.equal(projectedTypesFor([]).size, 0);
  });

  test('findNestedResource: contained, Bundle entry, Parameters part, any object with a resourceType; not the root; the bounds', () => {
    const P = new Set(['Patient']);
    assert.deepEqual(findNestedResource(observationWithContained('o', '1001'), P), { kind: 'found', type: 'Patient', path: 'Observation.contained.ofType(Patient)' });
    assert.deepEqual(findNestedResource(collectionBundle('b', '1002', '1003'), P), { kind: 'found', type: 'Patient', path: 'Bundle.entry.resource.ofType(Patient)' });
    const bundleNested = collectionBundle('b', '1004', '1005');
    bundleNested.entry.shift();
    assert.deepEqual(findNestedResource(bundleNested, P), { kind: 'found', type: 'Patient', path: 'Bundle.entry.resource.ofType(Observation).contained.ofType(Patient)' });
    assert.deepEqual(findNestedResource({ resourceType: 'Parameters', parameter: [{ name: 'p', part: [{ name: 'q', resource: patient('pp', '1006') }] }] }, P)?.path, 'Parameters.parameter.part.resource.ofType(Patient)');
    // an object claiming to be a resource where R4 allows none is treated as one (fail closed)
    assert.deepEqual(findNestedResource({ resourceType: 'Observation', _status: { extension: [{ url: 'x', valueString: 'y', hidden: { resourceType: 'Patient' } }] } }, P)?.path, 'Observation.status.extension.hidden.ofType(Patient)');
    assert.equal(findNestedResource(patient('root', '1007'), P), undefined, 'the root is not compared');
    assert.equal(findNestedResource({ resourceType: 'Observation', status: 'final', contained: [{ resourceType: 'Practitioner', id: 'x' }] }, P), undefined);
    assert.equal(findNestedResource(null, P), undefined);
    assert.equal(findNestedResource([patient('a', '1')], P), undefined);
    // too many levels of resources: too-deep even when nothing named lies below
    let deep: any = { resourceType: 'Basic', id: 'leaf', code: { text: 'x' } };
    for (let i = 0; i < MAX_NESTED_RESOURCE_DEPTH + 1; i++) deep = { resourceType: 'Bundle', type: 'collection', entry: [{ resource: deep }] };
    const hit = findNestedResource(deep, P);
    assert.equal(hit?.kind, 'too-deep');
    assert.equal(hit?.path, `Bundle${'.entry.resource.ofType(Bundle)'.repeat(MAX_NESTED_RESOURCE_DEPTH)}.entry.resource.ofType(Basic)`);
    let shallower: any = { resourceType: 'Basic', id: 'leaf', code: { text: 'x' } };
    for (let i = 0; i < MAX_NESTED_RESOURCE_DEPTH; i++) shallower = { resourceType: 'Bundle', type: 'collection', entry: [{ resource: shallower }] };
    assert.equal(findNestedResource(shallower, P), undefined, `${MAX_NESTED_RESOURCE_DEPTH} levels are walked`);
    // too many JSON levels below one resource
    let json: any = { leaf: true };
    for (let i = 0; i < 200; i++) json = { x: json };
    assert.deepEqual(findNestedResource({ resourceType: 'Basic', extension: [json] }, P), { kind: 'too-deep', type: 'Basic', path: `Basic.extension${'.x'.repeat(127)}` });
    assert.equal(findNestedResource({ resourceType: 'Basic', extension: [json] }, new Set<string>())?.kind, 'too-deep', 'bounds checked without types');
  });

  test('explainRoute / routeAllows: a non-projected resource nesting a named type is withheld with the reason; the rest as before', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tidegate-redact-withhold-'));
    try {
      const m = mappingWith(dir, { research: RESEARCH_ROUTE });
      const obs = observationWithContained('e1', '1101');
      const d = m.explainRoute('research', obs);
      assert.equal(d.allowed, false);
      assert.equal(d.reason, `${WITHHELD_REASON}, at Observation.contained.ofType(Patient)`);
      assert.ok(!d.reason.includes('555-1101') && !d.reason.includes('Fam1101'), 'no values in the reason');
      assert.equal(m.routeAllows('research', obs), false);
      assert.equal(m.routeAllows('full', obs), true, 'the full peer gets it');
      assert.equal(m.explainRoute('research', collectionBundle('e2', '1102', '1103')).allowed, false, 'a Bundle with a Patient entry');
      // a plain Observation, a Patient (projection: its nested resources are redacted there), a Patient containing a Patient
      const plain = { resourceType: 'Observation', id: 'e3', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/e4' } };
      assert.deepEqual(m.explainRoute('research', plain), { allowed: true, reason: 'no send rules for research and no withhold rule matched' });
      assert.equal(m.routeAllows('research', patient('e4', '1104')), true);
      assert.equal(m.routeAllows('research', { ...patient('e5', '1105'), contained: [{ ...patient('c', '1106'), id: 'c' }] }), true);
      // too deep: withheld though nothing named was found
      let deep: any = { resourceType: 'Basic', code: { text: 'x' } };
      for (let i = 0; i <= MAX_NESTED_RESOURCE_DEPTH; i++) deep = { resourceType: 'Bundle', type: 'collection', entry: [{ resource: deep }] };
      const dd = m.explainRoute('research', deep);
      assert.equal(dd.allowed, false);
      assert.match(dd.reason, /^nests deeper than redaction checks \(8 levels of resources, 128 JSON levels in one; at Bundle(\.entry\.resource\.ofType\(Bundle\))+\.entry\.resource\.ofType\(Basic\)\) and research has redaction rules: withheld, fail closed$/);
      assert.equal(m.routeAllows('full', deep), true, 'a peer without redaction rules is not walked');
      // the route's own rules decide first
      const w = mappingWith(dir, { research: { ...RESEARCH_ROUTE, withhold: [{ resourceType: 'Observation' }] } });
      assert.deepEqual(w.explainRoute('research', obs), { allowed: false, reason: 'withheld by routes.research.withhold[0]' });
      // a rule naming Observation: the Observation is a projection (its contained Patient redacted there), not withheld
      const both = mappingWith(dir, { research: { redact: [...RESEARCH_ROUTE.redact, { path: 'Observation.note' }] } });
      assert.equal(both.routeAllows('research', obs), true);
      // the decision reaches Tide as a withheld label (src/tide/peer-authz.ts)
      const labels = outboundLabelsOf(JSON.stringify(obs), m);
      assert.deepEqual(labels.filter((l) => l.system === ROUTE_LABEL_SYSTEM), [{ system: ROUTE_LABEL_SYSTEM, code: 'withhold:research' }]);
      assert.deepEqual(outboundLabelsOf(JSON.stringify(plain), m).filter((l) => l.system === ROUTE_LABEL_SYSTEM), []);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('map preview: the Observation with a contained Patient withheld from research with the reason, whole for the full peer; a Patient redacted; a rule naming Bundle redacts its entries', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tidegate-redact-withhold-'));
    try {
      const m = mappingWith(dir, { research: RESEARCH_ROUTE });
      const obs = observationWithContained('pv', '1201');
      const p = previewResource(m, obs, 'research');
      assert.equal(p.output, undefined);
      assert.equal(p.route?.allowed, false);
      assert.deepEqual(p.redacted, []);
      const shown = formatPreview(p);
      assert.ok(shown.includes(`# WITHHELD from research: ${WITHHELD_REASON}, at Observation.contained.ofType(Patient)\n`), shown);
      assert.match(shown, /^-.*"value": "555-1201"/m, 'the diff removes everything');
      assert.doesNotMatch(shown, /^\+(?!\+\+ to research$)/m, 'nothing added');
      const full = previewResource(m, obs, 'full');
      assert.deepEqual(full.redacted, []);
      assert.ok(text(full.output).includes('555-1201'));
      const pat = previewResource(m, patient('pvp', '1202'), 'research');
      assert.deepEqual(pat.redacted, ['Patient.telecom', 'Patient.address', ]);
      assert.ok(!text(pat.output).includes('555-1202'));
      // a plain Observation: not a projection (no label), unchanged
      const plain = previewResource(m, { resourceType: 'Observation', id: 'pl', status: 'final', code: { text: 'x' } }, 'research');
      assert.equal((plain.output as any).meta, undefined);
      assert.match(formatPreview(plain), /# research receives it \(no send rules for research and no withhold rule matched\), unchanged\n$/);
      // a rule naming Bundle: the Bundle is a projection, its Patient entry and the Patient contained in an entry redacted
      const mb = mappingWith(dir, { research: { redact: [...RESEARCH_ROUTE.redact, { path: 'Bundle.signature' }] } });
      const b = previewResource(mb, collectionBundle('pvb', '1203', '1204'), 'research');
      assert.ok(b.redacted.includes('Bundle.entry.resource.ofType(Patient).telecom'));
      assert.ok(b.redacted.includes('Bundle.entry.resource.ofType(Observation).contained.ofType(Patient).telecom'));
      assert.ok(!text(b.output).includes('555-1203') && !text(b.output).includes('555-1204'));
      assert.ok((b.output as any).meta.security.some((s: any) => `${s.system}|${s.code}` === REDACTED_TOKEN));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('projection feeds without gossip: only the named types projected (a Bundle when named, redacted inside); the feed\u2019s types and Tide\u2019s source agree', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tidegate-redact-withhold-'));
    try {
      const mapping = mappingWith(dir, { research: { redact: [{ path: 'Patient.telecom' }, { path: 'Bundle.signature' }] } }, ['research']);
      const shared = new Replica({ nodeId: 'hospital-a', store: new MemoryStore(), policy: loadMergePolicy() });
      const peer = new Replica({ nodeId: 'research', store: new MemoryStore(), policy: loadMergePolicy() });
      const sent: string[] = [];
      const feeds = new ProjectionFeeds({
        nodeId: 'hospital-a',
        mapping: () => mapping,
        shared,
        policy: loadMergePolicy(),
        publishTo: (peerId, updates) => {
          for (const u of updates) {
            sent.push(`${peerId} ${u.key}`);
            assert.ok(!bytesText(u.update).includes('555-08'), `${u.key}: a telecom value sent`);
            peer.applyRemote(u.key, u.update);
          }
        },
        mayReceive: () => true,
      });
      shared.write('Observation/f-o', observationWithContained('f-o', '0801'));
      shared.write('Bundle/f-b', collectionBundle('f-b', '0802', '0803'));
      shared.write('Patient/f-p', patient('f-p', '0804'));
      await feeds.backfill();
      assert.deepEqual(sent.sort(), ['research Bundle/f-b', 'research Patient/f-p'], 'the named types only (the Observation is withheld by routing, not projected)');
      assert.deepEqual([...feeds.typesFor('research')].sort(), ['Bundle', 'Patient']);
      assert.equal(feeds.source('research').types(), feeds.typesFor('research'));
      const b = JSON.parse(peer.current('Bundle/f-b')!.body!);
      assert.equal(b.entry[0].resource.telecom, undefined);
      assert.equal(b.entry[1].resource.contained[0].telecom, undefined);
      assert.equal(b.entry[1].resource.contained[0].name[0].family, 'Fam0803');
      await feeds.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

async function hospitalGet(h: MedplumHospital, path: string): Promise<any> {
  const res = await fetch(`${h.url}/${path}`, { headers: FHIR });
  return res.status === 200 ? res.json() : undefined;
}

async function nodePut(n: TidegateNode, resource: any): Promise<void> {
  const res = await fetch(`${n.baseUrl}/${resource.resourceType}/${resource.id}`, { method: 'PUT', headers: FHIR, body: JSON.stringify(resource) });
  assert.ok(res.ok, `PUT ${resource.resourceType} at the node: ${res.status} ${await res.text()}`);
}

describe('withheld nested resources end to end: three nodes, three Medplum hospitals, real Redis', () => {
  const prefix = `redact-withhold-${randomBytes(4).toString('hex')}`;
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-redact-withhold-e2e-'));
  // A: the sender (its route redacts Patients for "research"); R: the research node; C: a full peer
  const names = ['hospital-a', 'research', 'hospital-c'] as const;
  const keys = names.map((n) => generateNodeKeys(n));
  const hospitals: MedplumHospital[] = [];
  const nodes: TidegateNode[] = [];
  let started: boolean[] = [];

  const settle = (which: TidegateNode[] = nodes.filter((_n, i) => started[i])): Promise<void> => settleNodes(which);
  const antiEntropy = async (): Promise<void> => {
    for (const [i, n] of nodes.entries()) if (started[i]) await n.tide.runAntiEntropy();
    await settle();
  };
  /** research's raw inbox, opened with its keys: every plaintext, and the updates per key. */
  const readInbox = async (): Promise<{ plaintexts: string[]; updates: Map<string, Uint8Array[]> }> => {
    const inbox = new Queue(inboxQueueName('research'), { connection: { url: REDIS_URL }, prefix, skipMetasUpdate: true });
    const senders = new Map<string, NodePublicKeys>(names.filter((n) => n !== 'research').map((n) => [n, keys[names.indexOf(n)]!.publicKeys]));
    const plaintexts: string[] = [];
    const updates = new Map<string, Uint8Array[]>();
    try {
      for (const j of await inbox.getJobs(['waiting', 'prioritized', 'delayed'])) {
        const opened = openEnvelope((j.data as { env: string }).env, keys[1]!.secretKeys, senders);
        plaintexts.push(bytesText(opened.plaintext));
        if (opened.header.kind !== 'updates') continue;
        for (const u of decodeUpdates(opened.plaintext)) updates.set(u.key, [...(updates.get(u.key) ?? []), u.update]);
      }
    } finally {
      await inbox.close();
    }
    return { plaintexts, updates };
  };

  before(async () => {
    const mappings: Record<string, object> = {
      'hospital-a': { routes: { research: RESEARCH_ROUTE } },
      // C holds the shared resources too: it must not give research the unredacted ones
      'hospital-c': { routes: { research: { withhold: [{}] } } },
    };
    for (const [i, name] of names.entries()) {
      const hospital = await startMedplumHospital({ name: `${name}-fhir` });
      hospitals.push(hospital);
      const peers = names.filter((n) => n !== name);
      let mapping;
      if (mappings[name]) {
        const file = join(dir, `${name}.mapping.json`);
        writeFileSync(file, JSON.stringify(mappings[name]));
        mapping = loadMappingOrThrow(file, { peers });
      }
      nodes.push(
        new TidegateNode({
          secretKeys: keys[i]!.secretKeys,
          peers: peers.map((p) => ({ nodeId: p, redisUrl: REDIS_URL, publicKeys: keys[names.indexOf(p)]!.publicKeys })),
          redisUrl: REDIS_URL,
          queuePrefix: prefix,
          hospital: new HospitalClient({ baseUrl: hospital.url, ...(mapping ? { mapping } : {}) }),
          ...(mapping ? { mapping } : {}),
          logger: pino({ level: 'silent' }),
          antiEntropyIntervalMs: 0,
          batchDelayMs: 5,
          hospitalPollIntervalMs: 3_600_000, // polled by hand
        }),
      );
    }
    started = names.map(() => false);
    // research starts later: its inbox is read raw first
    for (const i of [0, 2]) {
      await nodes[i]!.start();
      started[i] = true;
    }
  });

  after(async () => {
    for (const [i, n] of [...nodes.entries()].reverse()) if (started[i]) await n.stop();
    for (const h of hospitals) await h.close();
    await clearRedisPrefix(REDIS_URL, prefix);
    rmSync(dir, { recursive: true, force: true });
  });

  const secrets = ['555-0901', '0901 Kiehn', 'Fam0901', '555-0902', '555-0903', 'Fam0903', '555-0905', '0905 Kiehn'];
  const v1Secrets = ['555-0901', '0901 Kiehn', 'Fam0901'];
  const plain = { resourceType: 'Observation', id: 'rd-plain', status: 'final', code: { text: 'glucose' }, subject: { reference: 'Patient/rd-pat' }, valueQuantity: { value: 5.1, unit: 'mmol/L' } };
  /** research's store: every document's full Yjs state as text. */
  const rawR = (): string => [...nodes[1]!.replica.keys()].map((k) => bytesText(nodes[1]!.replica.diffFor(k, undefined) ?? new Uint8Array())).join('\n');

  test('research down: its raw inbox holds the Patient as a projection and the plain Observation as the shared document, never the Observation with a contained Patient nor the Bundle; the full peer has them whole', async () => {
    const [nA, , nC] = nodes as [TidegateNode, TidegateNode, TidegateNode];
    const [, , hC] = hospitals as [MedplumHospital, MedplumHospital, MedplumHospital];
    await nodePut(nA, observationWithContained('rd-obs', '0901'));
    await nodePut(nA, collectionBundle('rd-bundle', '0902', '0903'));
    await nodePut(nA, patient('rd-pat', '0905'));
    await nodePut(nA, plain);
    await settle();

    const inbox = await readInbox();
    assert.deepEqual([...inbox.updates.keys()].sort(), ['Observation/rd-plain', 'Patient/rd-pat'], 'the Observation with a contained Patient and the Bundle were withheld');
    for (const t of inbox.plaintexts) for (const v of secrets) assert.ok(!t.includes(v), `${v} in research's queue`);
    for (const u of inbox.updates.get('Patient/rd-pat')!) assert.ok(bytesText(u).includes('hospital-a~redacted~research~'), 'the Patient comes from the projection writer');
    for (const u of inbox.updates.get('Observation/rd-plain')!) {
      assert.ok(!bytesText(u).includes('~redacted~'), 'the plain Observation is the shared document');
      assert.ok(bytesText(u).includes('hospital-a'), 'written in hospital-a\u2019s log of the shared document');
    }
    assert.deepEqual(nA.tide.peers().find((p) => p.nodeId === 'research')!.projectedTypes, ['Patient'], 'only the named type is projected');
    assert.ok(nA.tide.stats().updatesWithheld > 0, 'Tide held updates back');

    assert.equal(JSON.parse(nC.replica.current('Observation/rd-obs')!.body!).contained[0].telecom[0].value, '555-0901');
    assert.equal((await hospitalGet(hC, 'Observation/rd-obs')).contained[0].telecom[0].value, '555-0901');
    assert.equal((await hospitalGet(hC, 'Bundle/rd-bundle')).entry[0].resource.telecom[0].value, '555-0902');
  });

  test('research runs, anti-entropy included: no withheld resource in its store or hospital; the Patient redacted; the plain Observation shared two-way', async () => {
    const [nA, nR, nC] = nodes as [TidegateNode, TidegateNode, TidegateNode];
    const [hA, hR, hC] = hospitals as [MedplumHospital, MedplumHospital, MedplumHospital];
    await nR.start();
    started[1] = true;
    await settle();
    await antiEntropy();
    await antiEntropy();
    assert.equal(nR.replica.current('Observation/rd-obs'), undefined);
    assert.equal(nR.replica.current('Bundle/rd-bundle'), undefined);
    assert.equal(await hospitalGet(hR, 'Observation/rd-obs'), undefined);
    assert.equal(await hospitalGet(hR, 'Bundle/rd-bundle'), undefined);
    for (const v of secrets) assert.ok(!rawR().includes(v), `no ${v} in research's store`);
    const patR = await hospitalGet(hR, 'Patient/rd-pat');
    assert.equal(patR.telecom, undefined);
    assert.deepEqual(patR.address, [MASKED]);
    assert.equal(patR.name[0].family, 'Fam0905');

    assert.equal(JSON.parse(nR.replica.current('Observation/rd-plain')!.body!).valueQuantity.value, 5.1);
    await nodePut(nR, { ...plain, valueQuantity: { value: 6.2, unit: 'mmol/L' }, note: [{ text: 'checked at research' }] });
    await settle();
    for (const [n, h] of [[nA, hA], [nC, hC]] as const) {
      assert.equal(JSON.parse(n.replica.current('Observation/rd-plain')!.body!).note?.[0]?.text, 'checked at research', `${n.nodeId} took research's edit`);
      assert.equal((await hospitalGet(h, 'Observation/rd-plain'))?.valueQuantity?.value, 6.2);
    }
  });

  test('removing the contained Patient does not release the Observation to research: its document history still holds the phone', async () => {
    const [nA, nR, nF] = nodes as [TidegateNode, TidegateNode, TidegateNode];
    const [, hR] = hospitals as [MedplumHospital, MedplumHospital, MedplumHospital];
    const v2 = { ...observationWithContained('rd-obs', '0901'), subject: { reference: 'Patient/rd-pat' }, status: 'amended' } as any;
    delete v2.contained;
    delete v2.text;
    await nodePut(nA, v2);
    await settle();
    await antiEntropy();
    await antiEntropy();
    // the shared document carries version 1's entries (src/merge/doc.ts log layout): it stays withheld
    assert.equal(nR.replica.current('Observation/rd-obs'), undefined, 'still withheld from research');
    assert.equal(await hospitalGet(hR, 'Observation/rd-obs'), undefined);
    for (const v of v1Secrets) assert.ok(!rawR().includes(v), `${v} never in research's store`);
    assert.equal(JSON.parse(nF.replica.current('Observation/rd-obs')!.body!).status, 'amended', 'the full peer gets version 2');
    assert.equal(nR.replica.current('Bundle/rd-bundle'), undefined, 'the Bundle with a Patient entry stays withheld');
  });
});
