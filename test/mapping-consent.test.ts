/**
 * Consent-based sharing (src/mapping/consent.ts, docs/mappings.md "Consent"): the decision table
 * of R4 Consent provisions (https://hl7.org/fhir/R4/consent.html); a patient's whole compartment
 * withheld on Synthea resources; and end to end with three real nodes over Redis: a denied
 * patient's Observation never reaches peer B's raw Redis queue nor B's store while peer C gets it,
 * an inactive Consent lets B catch up by anti-entropy, and a Consent arriving from a peer after
 * sharing stops further updates.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { peekHeader } from '../src/envelope/index.ts';
import { CONSENT_SCOPE_SYSTEM, ConsentEvaluationError, ConsentGate, consentDecision, DEFAULT_CONSENT_POLICY, formatPreview, loadMapping, loadMappingOrThrow, patientsOf, previewMapping, RESOURCE_TYPES_SYSTEM } from '../src/mapping/index.ts';
import type { ConsentPolicy } from '../src/mapping/index.ts';
import { inboxQueueName } from '../src/tide/index.ts';
import { readSynthea, SYNTHEA_SKIP } from './fixtures/synthea.ts';
import { startMappedNodes } from './fixtures/mapped-nodes.ts';
import type { MappedNodes } from './fixtures/mapped-nodes.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const NOW = Date.parse('2026-11-29T12:00:00Z');
const B = 'Organization/hospital-b';
const C = 'Organization/hospital-c';
const OBS = { resourceType: 'Observation', id: 'o1', status: 'final', subject: { reference: 'Patient/p1' } };
const IMM = { resourceType: 'Immunization', id: 'i1', status: 'completed', patient: { reference: 'Patient/p1' } };
const policy = (over: Partial<ConsentPolicy> = {}): ConsentPolicy => ({ ...DEFAULT_CONSENT_POLICY, ...over });

/** An R4 Consent of scope patient-privacy for `patient` with the given root provision. */
function consent(id: string, provision: unknown, over: Record<string, unknown> = {}, patient = 'Patient/p1'): Record<string, any> {
  return {
    resourceType: 'Consent',
    id,
    status: 'active',
    scope: { coding: [{ system: CONSENT_SCOPE_SYSTEM, code: 'patient-privacy' }] },
    category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }],
    patient: { reference: patient },
    dateTime: '2026-11-01T10:00:00Z',
    policyRule: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'OPTOUT' }] },
    ...(provision === undefined ? {} : { provision }),
    ...over,
  };
}
const actor = (ref: string) => ({ role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] }, reference: { reference: ref } });
const klass = (type: string) => ({ system: RESOURCE_TYPES_SYSTEM, code: type });

describe('consentDecision: the decision table', () => {
  test('deny all: every peer is denied, with the Consent and provision named', () => {
    const d = consentDecision([B], OBS, [consent('c1', { type: 'deny' })], policy(), NOW);
    assert.deepEqual(d, { allowed: false, consent: 'Consent/c1', provision: '/provision', reason: 'denied by Consent/c1 /provision' });
    assert.equal(consentDecision([], OBS, [consent('c1', { type: 'deny' })], policy(), NOW).allowed, false, 'a peer without consentActors matches a provision without actor');
  });

  test('deny one actor: only that peer; a peer without consentActors is not that actor', () => {
    const cs = [consent('c1', { type: 'deny', actor: [actor(B)] })];
    assert.equal(consentDecision([B], OBS, cs, policy(), NOW).allowed, false);
    const c = consentDecision([C], OBS, cs, policy(), NOW);
    assert.deepEqual(c, { allowed: true, reason: 'no applicable Consent: noConsent permit' });
    assert.equal(consentDecision([], OBS, cs, policy(), NOW).allowed, true);
    // an absolute actor reference names the same organization
    const abs = [consent('c2', { type: 'deny', actor: [actor('https://b.example.org/fhir/Organization/hospital-b')] })];
    assert.equal(consentDecision([B], OBS, abs, policy(), NOW).allowed, false);
    // the usual shape: permit, except B
    const nested = [consent('c3', { type: 'permit', provision: [{ type: 'deny', actor: [actor(B)] }] })];
    assert.deepEqual(consentDecision([B], OBS, nested, policy(), NOW), { allowed: false, consent: 'Consent/c3', provision: '/provision/provision/0', reason: 'denied by Consent/c3 /provision/provision/0' });
    assert.equal(consentDecision([C], OBS, nested, policy(), NOW).provision, '/provision');
  });

  test('permit exception for a class: deny all but Immunizations; the deepest match wins', () => {
    const cs = [consent('c1', { type: 'deny', provision: [{ type: 'permit', class: [klass('Immunization')] }] })];
    assert.equal(consentDecision([B], OBS, cs, policy(), NOW).allowed, false);
    const imm = consentDecision([B], IMM, cs, policy(), NOW);
    assert.equal(imm.allowed, true);
    assert.equal(imm.provision, '/provision/provision/0');
    // deny all; permit B; but not B's Observations
    const deep = [consent('c2', { type: 'deny', provision: [{ type: 'permit', actor: [actor(B)], provision: [{ type: 'deny', class: [klass('Observation')] }] }] })];
    assert.equal(consentDecision([B], IMM, deep, policy(), NOW).allowed, true);
    assert.equal(consentDecision([B], OBS, deep, policy(), NOW).provision, '/provision/provision/0/provision/0');
    assert.equal(consentDecision([C], IMM, deep, policy(), NOW).allowed, false);
    // sibling exceptions that both match: deny wins
    const siblings = [consent('c3', { type: 'permit', provision: [{ type: 'permit', actor: [actor(B)] }, { type: 'deny', class: [klass('Observation')] }] })];
    assert.equal(consentDecision([B], OBS, siblings, policy(), NOW).allowed, false);
  });

  test('expired or future period: the provision does not apply; a date-only end covers its whole day', () => {
    assert.equal(consentDecision([B], OBS, [consent('c1', { type: 'deny', period: { end: '2025-12-31' } })], policy(), NOW).allowed, true);
    assert.equal(consentDecision([B], OBS, [consent('c1', { type: 'deny', period: { start: '2027-01-01' } })], policy(), NOW).allowed, true);
    assert.equal(consentDecision([B], OBS, [consent('c1', { type: 'deny', period: { start: '2026-01-01', end: '2026-11-29' } })], policy(), NOW).allowed, false, 'the end day is included');
    assert.equal(consentDecision([B], OBS, [consent('c1', { type: 'deny', period: { end: '2026-11-29T11:59:59Z' } })], policy(), NOW).allowed, true);
    // an exception that expired no longer overrides
    const cs = [consent('c2', { type: 'deny', provision: [{ type: 'permit', actor: [actor(B)], period: { end: '2026-06' } }] })];
    assert.equal(consentDecision([B], OBS, cs, policy(), NOW).allowed, false);
    assert.equal(consentDecision([B], OBS, cs, policy(), Date.parse('2026-06-30T23:00:00Z')).allowed, true, 'a year-month end covers the whole month');
  });

  test('inactive, rejected, draft or proposed Consents do not count', () => {
    for (const status of ['inactive', 'rejected', 'draft', 'proposed', 'entered-in-error']) {
      assert.equal(consentDecision([B], OBS, [consent('c1', { type: 'deny' }, { status })], policy(), NOW).allowed, true, status);
    }
  });

  test('another scope is ignored unless listed in consent.scopes', () => {
    const research = [consent('c1', { type: 'deny' }, { scope: { coding: [{ system: CONSENT_SCOPE_SYSTEM, code: 'research' }] } })];
    assert.equal(consentDecision([B], OBS, research, policy(), NOW).allowed, true);
    assert.equal(consentDecision([B], OBS, research, policy({ scopes: ['patient-privacy', 'research'] }), NOW).allowed, false);
    const otherSystem = [consent('c2', { type: 'deny' }, { scope: { coding: [{ system: 'http://example.org/scopes', code: 'patient-privacy' }] } })];
    assert.equal(consentDecision([B], OBS, otherSystem, policy(), NOW).allowed, true, 'the code must be of the consentscope system');
  });

  test('two Consents: deny wins whatever the order', () => {
    const permit = consent('permit', { type: 'permit', actor: [actor(B)] });
    const deny = consent('deny', { type: 'deny', class: [klass('Observation')] });
    for (const cs of [[permit, deny], [deny, permit]]) {
      const d = consentDecision([B], OBS, cs, policy(), NOW);
      assert.equal(d.allowed, false);
      assert.equal(d.consent, 'Consent/deny');
    }
    assert.equal(consentDecision([B], IMM, [permit, deny], policy(), NOW).consent, 'Consent/permit');
  });

  test('noConsent deny (opt-in): only what a Consent permits is shared', () => {
    const optIn = policy({ noConsent: 'deny' });
    const cs = [consent('c1', { type: 'permit', actor: [actor(B)] })];
    assert.equal(consentDecision([B], OBS, cs, optIn, NOW).allowed, true);
    assert.deepEqual(consentDecision([C], OBS, cs, optIn, NOW), { allowed: false, reason: 'no applicable Consent: noConsent deny' });
    assert.equal(consentDecision([B], OBS, [], optIn, NOW).allowed, false, 'a patient without a Consent');
    assert.equal(consentDecision([B], OBS, [consent('c2', { type: 'permit' }, { status: 'inactive' })], optIn, NOW).allowed, false);
  });

  test('honour false turns it off; securityLabel, data and action conditions; unjudgeable conditions are read restrictively', () => {
    assert.equal(consentDecision([B], OBS, [consent('c1', { type: 'deny' })], policy({ honour: false }), NOW).allowed, true);
    const psy = { ...OBS, meta: { security: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'PSY' }] } };
    const byLabel = [consent('c1', { type: 'permit', provision: [{ type: 'deny', securityLabel: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'PSY' }] }] })];
    assert.equal(consentDecision([B], psy, byLabel, policy(), NOW).allowed, false);
    assert.equal(consentDecision([B], OBS, byLabel, policy(), NOW).allowed, true);
    const byData = [consent('c2', { type: 'permit', provision: [{ type: 'deny', data: [{ meaning: 'instance', reference: { reference: 'Observation/o1' } }] }] })];
    assert.equal(consentDecision([B], OBS, byData, policy(), NOW).allowed, false);
    assert.equal(consentDecision([B], { ...OBS, id: 'o2' }, byData, policy(), NOW).allowed, true);
    const collectOnly = [consent('c3', { type: 'deny', action: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentaction', code: 'collect' }] }] })];
    assert.equal(consentDecision([B], OBS, collectOnly, policy(), NOW).allowed, true, 'a provision about collection is not about sharing');
    const disclose = [consent('c4', { type: 'deny', action: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentaction', code: 'disclose' }] }] })];
    assert.equal(consentDecision([B], OBS, disclose, policy(), NOW).allowed, false);
    const textOnly = [consent('c4b', { type: 'deny', action: [{ text: 'share with other hospitals' }] })];
    assert.equal(consentDecision([B], OBS, textOnly, policy(), NOW).allowed, false, 'an action the gateway cannot read: a deny applies');
    assert.equal(consentDecision([B], OBS, [consent('c4c', { type: 'permit', action: [{ text: 'share' }] })], policy({ noConsent: 'deny' }), NOW).allowed, false, 'and a permit does not');
    // purpose cannot be known when sharing: a deny with it applies, a permit with it does not
    const purpose = [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'HMARKT' }];
    assert.equal(consentDecision([B], OBS, [consent('c5', { type: 'deny', purpose })], policy(), NOW).allowed, false);
    assert.equal(consentDecision([B], OBS, [consent('c6', { type: 'permit', purpose })], policy({ noConsent: 'deny' }), NOW).allowed, false);
    // an actor given by identifier only cannot be matched to a peer: restrictive too
    const byIdentifier = [consent('c7', { type: 'deny', actor: [{ reference: { identifier: { system: 'urn:oid:2.16.840.1.113883.4.6', value: '1234567893' } } }] })];
    assert.equal(consentDecision([C], OBS, byIdentifier, policy(), NOW).allowed, false);
  });

  test('a Consent that cannot be evaluated throws (the gate then withholds from every peer)', () => {
    assert.throws(() => consentDecision([B], OBS, [consent('c1', { type: 'deny', period: { end: 'not a date' } })], policy(), NOW), (err: unknown) => err instanceof ConsentEvaluationError && /Consent\/c1/.test((err as Error).message));
    let deep: Record<string, unknown> = { type: 'deny' };
    for (let i = 0; i < 40; i++) deep = { type: 'permit', provision: [deep] };
    assert.throws(() => consentDecision([B], OBS, [consent('c2', deep)], policy(), NOW), ConsentEvaluationError);
  });
});

/** The replica side a ConsentGate reads: current versions by key. */
function memoryReplica(resources: Array<Record<string, any>>) {
  const versions = new Map<string, { deleted: boolean; body: string | null }>();
  for (const r of resources) versions.set(`${r.resourceType}/${r.id}`, { deleted: false, body: JSON.stringify(r) });
  return { versions, keys: () => versions.keys(), current: (k: string) => versions.get(k) };
}
const consentActors = { consent: DEFAULT_CONSENT_POLICY, consentActors: (p: string) => [`Organization/${p}`] };

describe('ConsentGate: index, labels, fail closed', () => {
  test('labels follow Consent versions; a deleted Consent no longer counts; errors withhold from every peer without PHI in the log', () => {
    const c1 = consent('c1', { type: 'permit', provision: [{ type: 'deny', actor: [actor(B)] }] });
    const replica = memoryReplica([c1, OBS]);
    const changed: string[][] = [];
    const warnings: Array<{ obj: object; msg: string }> = [];
    const gate = new ConsentGate({ peers: ['hospital-b', 'hospital-c'], mapping: () => consentActors, replica, onChange: (p) => changed.push([...p]), logger: { warn: (obj, msg) => warnings.push({ obj, msg }) }, now: () => NOW });
    const body = JSON.stringify(OBS);
    assert.deepEqual(gate.labels('Observation/o1', body), [{ system: 'urn:tidegate:route', code: 'withhold:hospital-b' }]);
    assert.deepEqual(gate.labels('Consent/c1', JSON.stringify(c1)), [], 'Consents replicate to every peer');
    assert.deepEqual(gate.explain('hospital-b', OBS).consent, 'Consent/c1');
    // a merge Provenance of the Observation tells of it: it follows the patient's Consents
    const provenance = { resourceType: 'Provenance', id: 'merge-1', target: [{ reference: 'Observation/o1/_history/2.ab' }], recorded: '2026-11-29T12:00:00Z', agent: [{ who: { reference: 'Device/hospital-a' } }] };
    assert.deepEqual(gate.labels('Provenance/merge-1', JSON.stringify(provenance)).map((l) => l.code), ['withhold:hospital-b']);
    assert.deepEqual(gate.labels('Provenance/merge-2', JSON.stringify({ ...provenance, target: [{ reference: 'Observation/elsewhere' }] })), []);
    // the Consent becomes inactive
    gate.onVersion('Consent/c1', { deleted: false, body: JSON.stringify({ ...c1, status: 'inactive' }) });
    assert.deepEqual(changed, [['Patient/p1']]);
    assert.deepEqual(gate.labels('Observation/o1', body), []);
    // moved to another patient, then deleted
    gate.onVersion('Consent/c1', { deleted: false, body: JSON.stringify({ ...c1, patient: { reference: 'Patient/p2' } }) });
    assert.deepEqual(changed[1], ['Patient/p1', 'Patient/p2']);
    gate.onVersion('Consent/c1', { deleted: true, body: null });
    assert.deepEqual(gate.consentsOf('Patient/p2'), []);
    gate.onVersion('Observation/o1', { deleted: false, body });
    assert.equal(changed.length, 3, 'other resource types do not touch the index');
    // a Consent that cannot be evaluated: withheld from both peers, warning names the key only
    gate.onVersion('Consent/bad', { deleted: false, body: JSON.stringify(consent('bad', { type: 'deny', period: { start: 'yesterday' } })) });
    assert.deepEqual(gate.labels('Observation/o1', body).map((l) => l.code), ['withhold:hospital-b', 'withhold:hospital-c']);
    assert.equal(warnings.length, 1);
    assert.deepEqual(warnings[0]!.obj, { key: 'Observation/o1', err: 'Consent/bad: Period has a date that is not a FHIR dateTime' });
    // a Consent naming its patient by identifier only cannot be indexed: said once, by id
    gate.onVersion('Consent/by-id', { deleted: false, body: JSON.stringify(consent('by-id', { type: 'deny' }, { patient: { identifier: { system: 'urn:oid:1.2.3', value: '42' } } })) });
    assert.deepEqual(warnings[1], { obj: { consent: 'Consent/by-id' }, msg: 'consent: active Consent without a literal Patient reference in "patient" is not honoured' });
  });

  test('patients of a resource: compartment references in any literal form; Consents and Organizations have none', () => {
    assert.deepEqual(patientsOf({ resourceType: 'Observation', subject: { reference: 'https://a.example.org/fhir/Patient/p1/_history/3' }, performer: [{ reference: 'Patient/p2' }, { reference: 'Practitioner/x' }] }), ['Patient/p1', 'Patient/p2']);
    assert.deepEqual(patientsOf({ resourceType: 'Observation', subject: { reference: 'Patient?identifier=urn:oid:1|42' } }), [], 'a conditional reference names no literal patient');
    assert.deepEqual(patientsOf({ resourceType: 'Device', patient: { reference: 'Patient/p3' } }), ['Patient/p3'], 'outside the R4 compartment, but the patient\u2019s data');
    assert.deepEqual(patientsOf({ resourceType: 'Patient', id: 'p4' }), ['Patient/p4']);
    assert.deepEqual(patientsOf(consent('c1', { type: 'deny' })), []);
    assert.deepEqual(patientsOf({ resourceType: 'Organization', id: 'o' }), []);
  });

  test('without a mapping file: defaults apply, and a peer without consentActors meets only actor-less provisions', () => {
    const replica = memoryReplica([consent('c1', { type: 'deny', actor: [actor(B)] }), consent('c2', { type: 'deny', class: [klass('Immunization')] })]);
    const gate = new ConsentGate({ peers: ['hospital-b'], mapping: () => undefined, replica, now: () => NOW });
    assert.deepEqual(gate.labels('Observation/o1', JSON.stringify(OBS)), []);
    assert.deepEqual(gate.labels('Immunization/i1', JSON.stringify(IMM)), [{ system: 'urn:tidegate:route', code: 'withhold:hospital-b' }]);
  });

  test('mapping file: consent member and consentActors reach the gate; consentActors with honour false is a warning', () => {
    const dir = mkdtempSync(join(tmpdir(), 'consent-map-'));
    try {
      const file = join(dir, 'm.json');
      writeFileSync(file, JSON.stringify({ routes: { 'hospital-b': { consentActors: [B] } }, consent: { noConsent: 'deny' } }));
      const m = loadMappingOrThrow(file, { peers: ['hospital-b'] });
      assert.deepEqual(m.consentActors('hospital-b'), [B]);
      assert.deepEqual(m.consentActors('hospital-c'), []);
      assert.deepEqual(m.consent, { honour: true, scopes: ['patient-privacy'], noConsent: 'deny' });
      writeFileSync(file, JSON.stringify({ routes: { 'hospital-b': { consentActors: [B] } }, consent: { honour: false } }));
      const { issues } = loadMapping(file, { peers: ['hospital-b'] });
      assert.equal(issues.length, 1);
      assert.equal(issues[0]!.severity, 'warning');
      assert.equal(issues[0]!.pointer, '/routes/hospital-b/consentActors');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('map preview with --consent', () => {
  test('the Consents given decide like the node: withheld with the deciding provision, or received', () => {
    const dir = mkdtempSync(join(tmpdir(), 'consent-preview-'));
    try {
      const denyAll = join(dir, 'deny.json');
      writeFileSync(denyAll, JSON.stringify({ resourceType: 'Bundle', type: 'collection', entry: [{ resource: consent('c-example', { type: 'permit', provision: [{ type: 'deny', class: [klass('Observation')] }] }, {}, 'Patient/example') }] }));
      const other = join(dir, 'other.json');
      writeFileSync(other, JSON.stringify(consent('c-other', { type: 'deny' }, {}, 'Patient/someone-else')));
      const opts = { config: join(ROOT, 'config/examples/node-a.json'), peer: 'hospital-b', file: join(ROOT, 'config/examples/lab-observation.json') };
      const withheld = previewMapping({ ...opts, consent: [denyAll] });
      assert.equal(withheld.output, undefined);
      assert.deepEqual(withheld.consent, { allowed: false, consent: 'Consent/c-example', provision: '/provision/provision/0', reason: 'denied by Consent/c-example /provision/provision/0' });
      assert.match(formatPreview(withheld), /# WITHHELD from hospital-b: denied by Consent\/c-example \/provision\/provision\/0\n$/);
      const received = previewMapping({ ...opts, consent: [other] });
      assert.ok(received.output);
      assert.equal(received.consent?.allowed, true);
      assert.equal(formatPreview(received).split('\n').at(-2), formatPreview(previewMapping(opts)).split('\n').at(-2), 'no deciding Consent: the same verdict line as without --consent');
      assert.throws(() => previewMapping({ ...opts, consent: [opts.file] }), /is neither a Consent nor a Bundle of Consents/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('Consent on Synthea resources: a patient\u2019s whole compartment', { skip: SYNTHEA_SKIP }, () => {
  test('a Consent denying Organization/hospital-b withholds every resource of that patient from B only', () => {
    const types = ['Patient', 'Encounter', 'Condition', 'Procedure', 'Immunization', 'MedicationRequest', 'AllergyIntolerance', 'DocumentReference', 'Device', 'Organization', 'Practitioner'];
    const resources = types.flatMap((t) => readSynthea(t));
    const patient = readSynthea('Patient')[0]!;
    const pkey = `Patient/${patient.id}`;
    const c = consent('synthea-c1', { type: 'permit', provision: [{ type: 'deny', actor: [actor(B)] }] }, {}, pkey);
    const gate = new ConsentGate({ peers: ['hospital-b', 'hospital-c'], mapping: () => consentActors, replica: memoryReplica([c]), now: () => NOW });
    const counts = { denied: 0, shared: 0, notPatientData: 0 };
    const t0 = performance.now();
    for (const r of resources) {
      const key = `${r.resourceType}/${r.id}`;
      const patients = patientsOf(r);
      const labels = gate.labels(key, JSON.stringify(r)).map((l) => l.code);
      if (patients.includes(pkey)) {
        assert.deepEqual(labels, ['withhold:hospital-b'], key);
        counts.denied++;
      } else {
        assert.deepEqual(labels, [], key);
        if (patients.length === 0) counts.notPatientData++;
        else counts.shared++;
      }
    }
    const ms = performance.now() - t0;
    assert.ok(counts.denied > 50, `the patient has a compartment (${counts.denied})`);
    assert.ok(counts.shared > 1000, 'other patients\u2019 resources are shared');
    assert.equal(counts.notPatientData, resources.filter((r) => r.resourceType === 'Organization' || r.resourceType === 'Practitioner').length, 'Organizations and Practitioners are no patient\u2019s; Devices naming a Patient are');
    console.log(`# ${resources.length} Synthea resources judged for 2 peers in ${ms.toFixed(0)} ms: ${JSON.stringify(counts)}`);
  });
});

// ------------------------------------------------------------------ end to end

const FHIR = { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' };

async function put(base: string, resource: Record<string, any>): Promise<void> {
  const res = await fetch(`${base}/${resource.resourceType}/${resource.id}`, { method: 'PUT', headers: FHIR, body: JSON.stringify(resource) });
  assert.ok(res.ok, `PUT ${resource.resourceType}: ${res.status} ${await res.text()}`);
}

/** Three patients: Synthea ones when the sample is there, else minimal ones. */
function threePatients(): Array<Record<string, any>> {
  if (!SYNTHEA_SKIP) return readSynthea('Patient').slice(0, 3);
  return [1, 2, 3].map((i) => ({ resourceType: 'Patient', id: `consent-e2e-p${i}`, gender: 'unknown' }));
}

const glucose = (id: string, patient: string, value: number) => ({
  resourceType: 'Observation',
  id,
  status: 'final',
  code: { coding: [{ system: 'http://loinc.org', code: '2345-7' }] },
  subject: { reference: patient },
  valueQuantity: { value, unit: 'mg/dL', system: 'http://unitsofmeasure.org', code: 'mg/dL' },
});

describe('Consent end to end: three nodes over Redis', () => {
  const names = ['hospital-a', 'hospital-b', 'hospital-c'] as const;
  let fx: MappedNodes;
  let prefix = '';

  /** Anti-entropy on every running node, until all are quiet twice in a row. */
  const settle = (rounds = 1): Promise<void> => fx.settle({ antiEntropyRounds: rounds });

  before(async () => {
    fx = await startMappedNodes({
      prefix: 'consent',
      names,
      hospitals: false,
      start: [],
      // every node maps each peer to the Organization that stands for it in Consents
      mappings: Object.fromEntries(names.map((name) => [name, { routes: Object.fromEntries(names.filter((n) => n !== name).map((o) => [o, { consentActors: [`Organization/${o}`] }])) }])),
    });
    ({ prefix } = fx);
  });

  after(() => fx?.stop());

  test('denied to B: never in B\u2019s queue or store, C gets it; inactive lets B catch up; a later Consent from C stops updates', async () => {
    const a = fx.node('hospital-a');
    const b = fx.node('hospital-b');
    const c = fx.node('hospital-c');
    for (const n of ['hospital-a', 'hospital-c']) await fx.start(n);
    const [p1, p2, p3] = threePatients() as [Record<string, any>, Record<string, any>, Record<string, any>];
    const [k1, k2, k3] = [p1, p2, p3].map((p) => `Patient/${p.id}`) as [string, string, string];
    const noB = consent('no-b', { type: 'permit', provision: [{ type: 'deny', actor: [actor(B)] }] }, {}, k1);

    // 1. at A: the Consent of patient 1 first, then both patients' records; B is down, its inbox fills up
    await put(a.baseUrl, noB);
    await put(a.baseUrl, p1);
    await put(a.baseUrl, glucose('obs-p1', k1, 101));
    await put(a.baseUrl, p2);
    await put(a.baseUrl, glucose('obs-p2', k2, 102));
    await put(a.baseUrl, p3);
    await put(a.baseUrl, glucose('obs-p3', k3, 103));
    await settle();
    assert.ok(c.replica.current('Observation/obs-p1'), 'C (not denied) has patient 1\u2019s Observation');
    assert.ok(c.replica.current('Consent/no-b'), 'the Consent replicates');
    // B's inbox as it sits in Redis: the resources each envelope lists in its header, and the raw bytes
    const inboxB = new Queue(inboxQueueName('hospital-b'), { connection: { url: REDIS_URL }, prefix, skipMetasUpdate: true });
    const r = new Redis(REDIS_URL);
    let listed: Set<string>;
    let raw = '';
    try {
      const jobs = await inboxB.getJobs(['waiting', 'prioritized', 'delayed']);
      listed = new Set(jobs.flatMap((j) => (peekHeader((j.data as { env: string }).env) as { resources?: string[] }).resources ?? []));
      for (const k of await r.keys(`${prefix}:${inboxQueueName('hospital-b')}:*`)) {
        const t = await r.type(k);
        if (t === 'hash') raw += JSON.stringify(await r.hgetall(k));
        else if (t === 'string') raw += await r.get(k);
        else if (t === 'list') raw += (await r.lrange(k, 0, -1)).join();
        else if (t === 'zset') raw += (await r.zrange(k, 0, -1)).join();
      }
    } finally {
      await inboxB.close();
      await r.quit();
    }
    assert.ok(listed.has('Observation/obs-p2') && listed.has(k2) && listed.has('Observation/obs-p3'), 'B\u2019s queue holds the other patients\u2019 records');
    assert.ok(listed.has('Consent/no-b'), 'and the Consent');
    assert.ok(!listed.has('Observation/obs-p1') && !listed.has(k1), 'patient 1\u2019s records never reached B\u2019s queue');
    assert.ok(raw.length > 0 && !raw.includes('obs-p1') && !raw.includes(p1.id), 'no trace of them in the raw bytes either');

    // 2. B starts; anti-entropy from A and C (both honour the Consent) repairs everything else
    await fx.start('hospital-b');
    await settle(2);
    assert.ok(b.replica.current('Observation/obs-p2'), 'another patient\u2019s resources reach B');
    assert.ok(b.replica.current('Consent/no-b'));
    assert.equal(b.replica.current('Observation/obs-p1'), undefined, 'not in B\u2019s store');
    assert.equal(b.replica.current(k1), undefined);
    assert.ok(a.tide.stats().updatesWithheld > 0);

    // 3. the patient withdraws the Consent (inactive): B gets patient 1 after an anti-entropy round
    await put(a.baseUrl, { ...noB, status: 'inactive' });
    await settle(2);
    assert.ok(b.replica.current('Observation/obs-p1'), 'B catches up');
    assert.ok(b.replica.current(k1));

    // 4. patient 3 (already shared with B) now refuses B; the Consent is written at C and reaches A
    await put(c.baseUrl, consent('no-b-3', { type: 'deny', actor: [actor(B)] }, {}, k3));
    await settle();
    assert.ok(a.replica.current('Consent/no-b-3'), 'A has the Consent from C');
    await put(a.baseUrl, glucose('obs-p3', k3, 333));
    await settle(2);
    assert.match(c.replica.current('Observation/obs-p3')!.body!, /"value":333/, 'C gets the update');
    assert.match(b.replica.current('Observation/obs-p3')!.body!, /"value":103/, 'B keeps what it had before the Consent; the update never reaches it');
  });
});
