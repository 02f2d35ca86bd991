import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';

const JSON_PATCH = 'application/json-patch+json';
const OBS = '{"resourceType":"Observation","id":"po1","status":"preliminary","code":{"text":"Hb"},"valueQuantity":{"value":1.50,"unit":"g/dL"},"component":[{"code":{"text":"a"},"valueQuantity":{"value":2.50}},{"code":{"text":"b"},"valueQuantity":{"value":3.10}}]}';

const put = (h: Harness, path: string, body: object | string) =>
  request(h.app).put(`/fhir/${path}`).set('Content-Type', FHIR).send(typeof body === 'string' ? body : JSON.stringify(body));

describe('PATCH', () => {
  let h: Harness;
  before(async () => {
    h = await makeHarness();
    await put(h, 'Observation/po1', OBS).expect(201);
  });
  after(async () => {
    await h?.close();
  });

  test('JSON Patch changes one element; an untouched 1.50 survives, a patched 4.20 keeps its form', async () => {
    const before = h.updates.length;
    const res = await request(h.app).patch('/fhir/Observation/po1').set('Content-Type', JSON_PATCH)
      .send('[{"op":"replace","path":"/status","value":"final"},{"op":"replace","path":"/component/1/valueQuantity/value","value":4.20}]').expect(200);
    assert.equal(res.body.status, 'final');
    assert.match(res.text, /"valueQuantity":\{"unit":"g\/dL","value":1\.50\}/);
    assert.match(res.text, /"value":2\.50[,}]/);
    assert.match(res.text, /"value":4\.20[,}]/);
    assert.equal(h.updates.length, before + 1);
    const read = await request(h.app).get('/fhir/Observation/po1').expect(200);
    assert.equal(read.text, res.text);
  });

  test('JSON Patch inserting at the front of an array keeps the decimals of the shifted items', async () => {
    const res = await request(h.app).patch('/fhir/Observation/po1').set('Content-Type', JSON_PATCH)
      .send('[{"op":"add","path":"/component/0","value":{"code":{"text":"z"},"valueQuantity":{"value":0.10}}}]').expect(200);
    assert.deepEqual(res.body.component.map((c: any) => c.code.text), ['z', 'a', 'b']);
    assert.match(res.text, /"value":0\.10[,}].*"value":2\.50[,}].*"value":4\.20[,}]/);
  });

  test('FHIRPath Patch (Parameters) replaces an element; 1.50 survives', async () => {
    const params = { resourceType: 'Parameters', parameter: [{ name: 'operation', part: [{ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Observation.status' }, { name: 'value', valueCode: 'amended' }] }] };
    const res = await request(h.app).patch('/fhir/Observation/po1').set('Content-Type', FHIR).send(JSON.stringify(params)).expect(200);
    assert.equal(res.body.status, 'amended');
    assert.match(res.text, /"value":1\.50[,}]/);
  });

  test('a PATCH from a stale version merges with a concurrent edit', async () => {
    await put(h, 'Patient/pp1', { resourceType: 'Patient', id: 'pp1', gender: 'female', birthDate: '1980-01-01' }).expect(201);
    const v1 = h.replica.current('Patient/pp1')!.versionId;
    await put(h, 'Patient/pp1', { resourceType: 'Patient', id: 'pp1', gender: 'female', birthDate: '1981-01-01' }).expect(200);
    const res = await request(h.app).patch('/fhir/Patient/pp1').set('Content-Type', JSON_PATCH).set('If-Match', `W/"${v1}"`)
      .send('[{"op":"replace","path":"/gender","value":"other"}]').expect(200);
    assert.equal(res.body.gender, 'other');
    assert.equal(res.body.birthDate, '1981-01-01', 'the concurrent edit is not reverted');
  });

  test('PATCH errors are OperationOutcomes and change nothing', async () => {
    const before = h.updates.length;
    const text = (await request(h.app).get('/fhir/Observation/po1')).text;
    const cases: Array<[string, () => request.Test, number]> = [
      ['malformed', () => request(h.app).patch('/fhir/Observation/po1').set('Content-Type', JSON_PATCH).send('[{'), 400],
      ['not an array', () => request(h.app).patch('/fhir/Observation/po1').set('Content-Type', JSON_PATCH).send('{"op":"add"}'), 400],
      ['empty', () => request(h.app).patch('/fhir/Observation/po1').set('Content-Type', JSON_PATCH).send('[]'), 400],
      ['failed test op', () => request(h.app).patch('/fhir/Observation/po1').set('Content-Type', JSON_PATCH).send('[{"op":"test","path":"/status","value":"final"},{"op":"replace","path":"/status","value":"final"}]'), 422],
      ['missing path', () => request(h.app).patch('/fhir/Observation/po1').set('Content-Type', JSON_PATCH).send('[{"op":"remove","path":"/nothing/here"}]'), 422],
      ['changes id', () => request(h.app).patch('/fhir/Observation/po1').set('Content-Type', JSON_PATCH).send('[{"op":"replace","path":"/id","value":"other"}]'), 400],
      ['invalid result', () => request(h.app).patch('/fhir/Observation/po1').set('Content-Type', JSON_PATCH).send('[{"op":"replace","path":"/status","value":42}]'), 422],
      ['FHIRPath not Parameters', () => request(h.app).patch('/fhir/Observation/po1').set('Content-Type', FHIR).send('{"resourceType":"Patient"}'), 400],
      ['FHIRPath bad path', () => request(h.app).patch('/fhir/Observation/po1').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Parameters', parameter: [{ name: 'operation', part: [{ name: 'type', valueCode: 'delete' }, { name: 'path', valueString: 'Observation.(' }] }] })), 422],
      ['media type', () => request(h.app).patch('/fhir/Observation/po1').set('Content-Type', 'text/plain').send('x'), 415],
      ['unknown resource', () => request(h.app).patch('/fhir/Observation/nope').set('Content-Type', JSON_PATCH).send('[{"op":"remove","path":"/status"}]'), 404],
      ['unknown If-Match', () => request(h.app).patch('/fhir/Observation/po1').set('Content-Type', JSON_PATCH).set('If-Match', 'W/"999999"').send('[{"op":"remove","path":"/status"}]'), 412],
    ];
    for (const [name, make, status] of cases) {
      const res = await make();
      assert.equal(res.status, status, name);
      assert.equal(res.body.resourceType, 'OperationOutcome', name);
      assert.ok(!JSON.stringify(res.body).includes('g/dL'), `${name}: no resource content in the outcome`);
    }
    assert.equal(h.updates.length, before);
    assert.equal((await request(h.app).get('/fhir/Observation/po1')).text, text);
  });
});

describe('conditional interactions, If-None-Match, If-Match strict, Prefer', () => {
  let h: Harness;
  const mrn = (v: string) => ({ resourceType: 'Patient', identifier: [{ system: 'http://example.org/mrn', value: v }], gender: 'female' });
  before(async () => {
    h = await makeHarness();
  });
  after(async () => {
    await h?.close();
  });

  test('If-None-Exist: creates when nothing matches, returns the match without writing otherwise', async () => {
    const first = await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).set('If-None-Exist', 'identifier=http://example.org/mrn|100').send(JSON.stringify(mrn('100'))).expect(201);
    const before = h.updates.length;
    const again = await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).set('If-None-Exist', 'identifier=http://example.org/mrn|100').send(JSON.stringify(mrn('100'))).expect(200);
    assert.equal(again.body.id, first.body.id);
    assert.equal(h.updates.length, before);
  });

  test('If-None-Exist with several matches is 412; unsupported criteria are 400', async () => {
    await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).send(JSON.stringify(mrn('200'))).expect(201);
    await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).send(JSON.stringify(mrn('200'))).expect(201);
    const before = h.updates.length;
    await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).set('If-None-Exist', 'identifier=http://example.org/mrn|200').send(JSON.stringify(mrn('200'))).expect(412);
    await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).set('If-None-Exist', 'nonsense=1').send(JSON.stringify(mrn('201'))).expect(400);
    await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).set('If-None-Exist', 'organization.name=x').send(JSON.stringify(mrn('201'))).expect(400);
    assert.equal(h.updates.length, before);
  });

  test('conditional update: creates, then updates the one match; 412 on several; 400 on id mismatch', async () => {
    const created = await request(h.app).put('/fhir/Patient?identifier=http://example.org/mrn|300').set('Content-Type', FHIR).send(JSON.stringify(mrn('300'))).expect(201);
    const id = created.body.id;
    const updated = await request(h.app).put('/fhir/Patient?identifier=http://example.org/mrn|300').set('Content-Type', FHIR).send(JSON.stringify({ ...mrn('300'), birthDate: '1999-09-09' })).expect(200);
    assert.equal(updated.body.id, id);
    assert.equal(updated.body.birthDate, '1999-09-09');
    await request(h.app).put('/fhir/Patient?identifier=http://example.org/mrn|300').set('Content-Type', FHIR).send(JSON.stringify({ ...mrn('300'), id: 'other' })).expect(400);
    await request(h.app).put('/fhir/Patient?identifier=http://example.org/mrn|200').set('Content-Type', FHIR).send(JSON.stringify(mrn('200'))).expect(412);
    await request(h.app).put('/fhir/Patient').set('Content-Type', FHIR).send(JSON.stringify(mrn('300'))).expect(400);
  });

  test('conditional delete: one match deleted, none is 204, several 412', async () => {
    const c = await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).send(JSON.stringify(mrn('400'))).expect(201);
    await request(h.app).delete('/fhir/Patient?identifier=http://example.org/mrn|400').expect(204);
    await request(h.app).get(`/fhir/Patient/${c.body.id}`).expect(410);
    await request(h.app).delete('/fhir/Patient?identifier=http://example.org/mrn|400').expect(204);
    await request(h.app).delete('/fhir/Patient?identifier=http://example.org/mrn|200').expect(412);
  });

  test('If-None-Match: * on PUT creates once, then 412', async () => {
    await put(h, 'Patient/inm1', { resourceType: 'Patient', id: 'inm1' }).set('If-None-Match', '*').expect(201);
    const r = await put(h, 'Patient/inm1', { resourceType: 'Patient', id: 'inm1', gender: 'male' }).set('If-None-Match', '*').expect(412);
    assert.equal(r.body.resourceType, 'OperationOutcome');
    await put(h, 'Patient/inm1', { resourceType: 'Patient', id: 'inm1' }).set('If-None-Match', 'W/"1"').expect(400);
  });

  test('If-None-Match on read answers 304 for the current version', async () => {
    const cur = await request(h.app).get('/fhir/Patient/inm1').expect(200);
    await request(h.app).get('/fhir/Patient/inm1').set('If-None-Match', cur.headers.etag!).expect(304);
    await request(h.app).get('/fhir/Patient/inm1').set('If-None-Match', 'W/"0"').expect(200);
  });

  test('If-Match merges by default; with Prefer: handling=strict a stale version is 412', async () => {
    const v1 = await put(h, 'Patient/im1', { resourceType: 'Patient', id: 'im1', gender: 'female' }).expect(201);
    const etag1 = v1.headers.etag!;
    await put(h, 'Patient/im1', { resourceType: 'Patient', id: 'im1', gender: 'female', birthDate: '1970-01-01' }).expect(200);
    const before = h.updates.length;
    const strict = await put(h, 'Patient/im1', { resourceType: 'Patient', id: 'im1', gender: 'male' }).set('If-Match', etag1).set('Prefer', 'handling=strict').expect(412);
    assert.equal(strict.body.resourceType, 'OperationOutcome');
    await request(h.app).delete('/fhir/Patient/im1').set('If-Match', etag1).set('Prefer', 'handling=strict').expect(412);
    await request(h.app).patch('/fhir/Patient/im1').set('Content-Type', JSON_PATCH).set('If-Match', etag1).set('Prefer', 'handling=strict').send('[{"op":"remove","path":"/gender"}]').expect(412);
    assert.equal(h.updates.length, before);
    const merged = await put(h, 'Patient/im1', { resourceType: 'Patient', id: 'im1', gender: 'male' }).set('If-Match', etag1).expect(200);
    assert.equal(merged.body.gender, 'male');
    assert.equal(merged.body.birthDate, '1970-01-01');
    const current = merged.headers.etag!;
    await put(h, 'Patient/im1', { resourceType: 'Patient', id: 'im1', gender: 'other', birthDate: '1970-01-01' }).set('If-Match', current).set('Prefer', 'handling=strict').expect(200);
  });

  test('Prefer: return=minimal, OperationOutcome, representation', async () => {
    const min = await put(h, 'Patient/pr1', { resourceType: 'Patient', id: 'pr1' }).set('Prefer', 'return=minimal').expect(201);
    assert.equal(min.text, '');
    assert.ok(min.headers.etag);
    assert.ok(min.headers.location);
    const oo = await put(h, 'Patient/pr1', { resourceType: 'Patient', id: 'pr1', gender: 'male' }).set('Prefer', 'return=OperationOutcome').expect(200);
    assert.equal(oo.body.resourceType, 'OperationOutcome');
    assert.equal(oo.body.issue[0].severity, 'information');
    const rep = await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).set('Prefer', 'return=representation').send('{"resourceType":"Patient"}').expect(201);
    assert.equal(rep.body.resourceType, 'Patient');
    await put(h, 'Patient/pr1', { resourceType: 'Patient', id: 'pr1' }).set('Prefer', 'return=everything').expect(400);
  });
});
