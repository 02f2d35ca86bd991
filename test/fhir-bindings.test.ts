/**
 * Required bindings of `code` elements (src/fhir/bindings.ts;
 * https://hl7.org/fhir/R4/terminologies.html#required): checked on every write (422) and by
 * `$validate`, at any depth (backbone elements, contained resources, Bundle entries), with no new
 * errors on the Synthea sample and a per-write cost well under 1 ms.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import request from 'supertest';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';
import { expandValueSet, requiredBindingIssues, warmRequiredBindings } from '../src/fhir/bindings.ts';
import { isBlocking, ProfileRegistry, validateWithProfiles } from '../src/fhir/profiles.ts';
import { validateFhirResource } from '../src/fhir/validate.ts';
import { parseFhirJson, toPlainJson } from '../src/fhir/json.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { SYNTHEA_DIR, SYNTHEA_SKIP } from './fixtures/synthea.ts';

const registry = new ProfileRegistry({ dir: '/nonexistent-tidegate-profiles' });
const obj = (v: unknown) => parseFhirJson(JSON.stringify(v)) as FhirJsonObject;
/** The code-invalid issues of validateWithProfiles, as [expression, text] pairs. */
const codeIssues = (v: unknown) =>
  validateWithProfiles(obj(v), registry)
    .filter((i) => i.code === 'code-invalid')
    .map((i) => [i.expression?.[0], i.details?.text]);

describe('required bindings: expansion', () => {
  test('an enumerated R4 ValueSet expands to exactly its codes; a version suffix is ignored', () => {
    assert.deepEqual([...expandValueSet('http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1')!].sort(), ['female', 'male', 'other', 'unknown']);
    const obs = expandValueSet('http://hl7.org/fhir/ValueSet/observation-status')!;
    for (const c of ['registered', 'preliminary', 'final', 'amended', 'corrected', 'cancelled', 'entered-in-error', 'unknown']) assert.ok(obs.has(c), c);
    assert.equal(obs.has('bogus'), false);
  });

  test('ValueSets that cannot be expanded locally (external CodeSystem, unknown URL) are undefined and their elements are not checked', () => {
    assert.equal(expandValueSet('http://hl7.org/fhir/ValueSet/mimetypes'), undefined);
    assert.equal(expandValueSet('http://example.org/ValueSet/nope'), undefined);
    // Attachment.contentType is bound (required) to mimetypes: skipped, not refused.
    assert.deepEqual(codeIssues({ resourceType: 'DocumentReference', status: 'current', content: [{ attachment: { contentType: 'x-unknown/whatever' } }] }), []);
  });

  test('warming reports checked and unexpandable required code bindings; mimetypes is skipped, administrative-gender is checked', () => {
    const r = warmRequiredBindings(['Patient', 'Observation', 'Encounter', 'Bundle', 'DocumentReference', 'Claim', 'ExplanationOfBenefit']);
    assert.ok(r.checked > 30, `checked ${r.checked}`);
    assert.ok(r.skipped.includes('http://hl7.org/fhir/ValueSet/mimetypes'), JSON.stringify(r.skipped));
    assert.ok(!r.skipped.includes('http://hl7.org/fhir/ValueSet/administrative-gender'));
  });
});

describe('required bindings: validation', () => {
  test('Patient.gender banana is an error at Patient.gender; female passes', () => {
    assert.deepEqual(codeIssues({ resourceType: 'Patient', id: 'x', gender: 'banana' }), [
      ['Patient.gender', 'Value "banana" is not in the required ValueSet http://hl7.org/fhir/ValueSet/administrative-gender'],
    ]);
    assert.deepEqual(validateWithProfiles(obj({ resourceType: 'Patient', id: 'x', gender: 'female' }), registry).filter(isBlocking), []);
    // validateFhirResource applies the same rule when asked (off by default for the mapping checks).
    assert.deepEqual(validateFhirResource(obj({ resourceType: 'Patient', gender: 'banana' }), { requiredBindings: true }).map((i) => i.expression), [['Patient.gender']]);
    assert.deepEqual(validateFhirResource(obj({ resourceType: 'Patient', gender: 'unknown' }), { requiredBindings: true }), []);
    assert.deepEqual(validateFhirResource(obj({ resourceType: 'Patient', gender: 'banana' })), []);
  });

  test('Observation.status bogus and Encounter.status bogus are errors; valid statuses pass', () => {
    assert.deepEqual(codeIssues({ resourceType: 'Observation', status: 'bogus', code: { text: 'x' } }).map((i) => i[0]), ['Observation.status']);
    assert.deepEqual(codeIssues({ resourceType: 'Observation', status: 'final', code: { text: 'x' } }), []);
    assert.deepEqual(codeIssues({ resourceType: 'Encounter', status: 'done', class: { code: 'AMB' } }).map((i) => i[0]), ['Encounter.status']);
    assert.deepEqual(validateWithProfiles(obj({ resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' } }), registry).filter(isBlocking), []);
  });

  test('codes are case-sensitive and only strings are judged (wrong JSON types stay Medplum structure errors)', () => {
    assert.deepEqual(codeIssues({ resourceType: 'Patient', gender: 'Female' }).map((i) => i[0]), ['Patient.gender']);
    const issues = validateWithProfiles(obj({ resourceType: 'Patient', gender: 7 }), registry).filter(isBlocking);
    assert.ok(issues.length > 0 && issues.every((i) => i.code !== 'code-invalid'), JSON.stringify(issues));
  });

  test('backbone elements, data types, choice types and arrays are reached, with indexed FHIRPath', () => {
    assert.deepEqual(
      codeIssues({
        resourceType: 'Patient',
        contact: [{ name: { family: 'A' } }, { name: { family: 'B' }, gender: 'banana' }],
        telecom: [{ system: 'pigeon', value: '1' }],
        name: [{ use: 'nickname-ish', family: 'C' }],
      }).map((i) => i[0]).sort(),
      ['Patient.contact[1].gender', 'Patient.name[0].use', 'Patient.telecom[0].system'],
    );
    assert.deepEqual(
      codeIssues({ resourceType: 'Observation', status: 'final', code: { text: 'x' }, valueQuantity: { value: 1, comparator: '~' } }).map((i) => i[0]),
      ['Observation.valueQuantity.comparator'],
    );
  });

  test('codes inside contained resources are checked', () => {
    assert.deepEqual(
      codeIssues({ resourceType: 'Patient', contained: [{ resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'x' } }, { resourceType: 'Observation', id: 'o2', status: 'bogus', code: { text: 'x' } }] }).map((i) => i[0]),
      ['Patient.contained[1].status'],
    );
  });

  test('codes inside Bundle entries are checked, and Bundle.type itself', () => {
    const bundle = {
      resourceType: 'Bundle',
      type: 'collection',
      entry: [{ resource: { resourceType: 'Patient', gender: 'male' } }, { resource: { resourceType: 'Encounter', status: 'bogus', class: { code: 'AMB' } } }],
    };
    assert.deepEqual(codeIssues(bundle).map((i) => i[0]), ['Bundle.entry[1].resource.status']);
    assert.deepEqual(codeIssues({ ...bundle, type: 'heap', entry: [] }).map((i) => i[0]), ['Bundle.type']);
  });
});

describe('required bindings over HTTP', () => {
  let h: Harness;
  before(async () => {
    h = await makeHarness();
  });
  after(async () => {
    await h?.close();
  });

  test('PUT Patient with gender banana is 422 with a FHIRPath expression and writes nothing; a valid gender is 201', async () => {
    const res = await request(h.app).put('/fhir/Patient/x').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', id: 'x', gender: 'banana' })).expect(422);
    assert.equal(res.body.resourceType, 'OperationOutcome');
    const issue = res.body.issue.find((i: any) => i.code === 'code-invalid');
    assert.ok(issue, JSON.stringify(res.body));
    assert.deepEqual(issue.expression, ['Patient.gender']);
    assert.equal(h.replica.current('Patient/x'), undefined);
    assert.equal(h.updates.length, 0);
    await request(h.app).get('/fhir/Patient/x').expect(404);
    await request(h.app).put('/fhir/Patient/x').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', id: 'x', gender: 'other' })).expect(201);
  });

  test('POST Observation with status bogus is 422; an update to a bad status keeps the stored version', async () => {
    const bad = await request(h.app).post('/fhir/Observation').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Observation', status: 'bogus', code: { text: 'x' } })).expect(422);
    assert.ok(bad.body.issue.some((i: any) => i.code === 'code-invalid' && i.expression?.includes('Observation.status')), JSON.stringify(bad.body));
    await request(h.app).put('/fhir/Encounter/e1').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Encounter', id: 'e1', status: 'planned', class: { code: 'AMB' } })).expect(201);
    const before = h.replica.current('Encounter/e1')!.versionId;
    const upd = await request(h.app).put('/fhir/Encounter/e1').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Encounter', id: 'e1', status: 'sort-of-done', class: { code: 'AMB' } })).expect(422);
    assert.ok(upd.body.issue.some((i: any) => i.expression?.includes('Encounter.status')), JSON.stringify(upd.body));
    assert.equal(h.replica.current('Encounter/e1')!.versionId, before);
    const read = await request(h.app).get('/fhir/Encounter/e1').expect(200);
    assert.equal(read.body.status, 'planned');
  });

  test('$validate reports the binding error (200, error issue) and accepts a valid code', async () => {
    const res = await request(h.app).post('/fhir/Patient/$validate').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', gender: 'banana' })).expect(200);
    const errors = res.body.issue.filter((i: any) => i.severity === 'error');
    assert.deepEqual(errors.map((i: any) => [i.code, i.expression]), [['code-invalid', ['Patient.gender']]]);
    const ok = await request(h.app).post('/fhir/Patient/$validate').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', gender: 'female' })).expect(200);
    assert.deepEqual(ok.body.issue.filter((i: any) => i.severity === 'error'), []);
  });

  test('a transaction entry with a bad code fails the whole transaction at Bundle.entry[n].resource.status', async () => {
    const keys = [...h.replica.keys()].sort();
    const updates = h.updates.length;
    const txn = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        { resource: { resourceType: 'Patient', gender: 'female' }, request: { method: 'POST', url: 'Patient' } },
        { resource: { resourceType: 'Observation', status: 'bogus', code: { text: 'x' } }, request: { method: 'POST', url: 'Observation' } },
      ],
    };
    const res = await request(h.app).post('/fhir').set('Content-Type', FHIR).send(JSON.stringify(txn)).expect(422);
    assert.ok(res.body.issue.some((i: any) => i.expression?.includes('Bundle.entry[1].resource.status')), JSON.stringify(res.body));
    assert.deepEqual([...h.replica.keys()].sort(), keys);
    assert.equal(h.updates.length, updates);
  });
});

/** Every resource of the Synthea sample, as lossless FHIR JSON, with its file name. */
function syntheaResources(): Array<{ file: string; resource: FhirJsonObject }> {
  const out: Array<{ file: string; resource: FhirJsonObject }> = [];
  for (const file of readdirSync(SYNTHEA_DIR).filter((f) => f.endsWith('.ndjson') && f !== 'log.ndjson').sort()) {
    for (const line of readFileSync(`${SYNTHEA_DIR}${file}`, 'utf8').split('\n')) {
      if (line.trim()) out.push({ file, resource: parseFhirJson(line) as FhirJsonObject });
    }
  }
  return out;
}

describe('required bindings on the Synthea sample', () => {
  test('every resource still validates (base R4, bindings and claimed known profiles): no blocking issue', { skip: SYNTHEA_SKIP }, () => {
    const all = syntheaResources();
    assert.ok(all.length > 1000, `${all.length} resources`);
    const failures: string[] = [];
    for (const { file, resource } of all) {
      const blocking = validateWithProfiles(resource, registry).filter(isBlocking);
      if (blocking.length > 0) failures.push(`${file} ${String(resource.id)}: ${JSON.stringify(blocking.slice(0, 2))}`);
    }
    assert.deepEqual(failures.slice(0, 5), [], `${failures.length} of ${all.length} resources have blocking issues`);
  });

  test('per-write cost of the binding check on a Synthea Patient and Encounter is well under 1 ms', { skip: SYNTHEA_SKIP }, () => {
    for (const type of ['Patient', 'Encounter']) {
      const line = readFileSync(`${SYNTHEA_DIR}${type}.000.ndjson`, 'utf8').split('\n')[0]!;
      const plain = toPlainJson(parseFhirJson(line));
      assert.deepEqual(requiredBindingIssues(plain), []);
      for (let i = 0; i < 500; i++) requiredBindingIssues(plain);
      const n = 5000;
      const t0 = performance.now();
      for (let i = 0; i < n; i++) requiredBindingIssues(plain);
      const perWriteMs = (performance.now() - t0) / n;
      console.log(`# required-binding check, Synthea ${type}: ${(perWriteMs * 1000).toFixed(1)} µs per write`);
      assert.ok(perWriteMs < 0.25, `${type}: ${perWriteMs} ms per write`);
    }
  });
});
