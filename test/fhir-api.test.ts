import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import pino from 'pino';
import { fhirApp } from '../src/fhir/express.ts';
import { FhirService } from '../src/fhir/service.ts';
import { Replica } from '../src/merge/replica.ts';
import { MemoryStore } from '../src/store/store.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';

const FHIR = 'application/fhir+json';

function makeApp() {
  const updates: Array<{ key: string; update: Uint8Array }> = [];
  const replica = new Replica({ nodeId: 'node-a', store: new MemoryStore(), policy: loadMergePolicy() });
  const service = new FhirService(replica, (key, update) => updates.push({ key, update }));
  return { app: fhirApp(service, pino({ level: 'silent' })), updates, replica };
}

const patient = (extra: object = {}) => ({
  resourceType: 'Patient',
  id: 'p1',
  name: [{ family: 'Tester', given: ['Ada'] }],
  gender: 'female',
  ...extra,
});

describe('FHIR REST API', () => {
  let ctx: ReturnType<typeof makeApp>;
  before(() => {
    ctx = makeApp();
  });

  test('GET /metadata is a CapabilityStatement listing only implemented interactions', async () => {
    const res = await request(ctx.app).get('/fhir/metadata').expect(200);
    assert.match(res.headers['content-type'] ?? '', /application\/fhir\+json/);
    assert.equal(res.body.resourceType, 'CapabilityStatement');
    assert.equal(res.body.fhirVersion, '4.0.1');
    const patientCaps = res.body.rest[0].resource.find((r: { type: string }) => r.type === 'Patient');
    const codes = patientCaps.interaction.map((i: { code: string }) => i.code).sort();
    assert.deepEqual(codes, ['create', 'delete', 'history-instance', 'patch', 'read', 'update', 'vread']);
    assert.equal(patientCaps.interaction.some((i: { code: string }) => i.code === 'search-type'), false, 'no search without a hospital client');
    assert.equal(patientCaps.conditionalDelete, 'single');
    assert.deepEqual(res.body.rest[0].interaction.map((i: { code: string }) => i.code), ['batch', 'transaction'], 'no search-system without a hospital client');
  });

  test('PUT creates with the client id, then updates; ETag, Location, meta are set', async () => {
    const created = await request(ctx.app).put('/fhir/Patient/p1').set('Content-Type', FHIR).send(JSON.stringify(patient())).expect(201);
    assert.equal(created.body.id, 'p1');
    assert.ok(created.body.meta.versionId);
    assert.ok(created.body.meta.lastUpdated);
    assert.equal(created.headers.etag, `W/"${created.body.meta.versionId}"`);
    assert.equal(created.headers.location, `${new URL(created.request.url).origin}/fhir/Patient/p1/_history/${created.body.meta.versionId}`, 'absolute: [base]/[type]/[id]/_history/[vid]');
    const updated = await request(ctx.app).put('/fhir/Patient/p1').set('Content-Type', FHIR).send(JSON.stringify(patient({ birthDate: '1980-02-03' }))).expect(200);
    assert.equal(updated.body.birthDate, '1980-02-03');
    assert.notEqual(updated.body.meta.versionId, created.body.meta.versionId);
    assert.equal(ctx.updates.length, 2);
    const read = await request(ctx.app).get('/fhir/Patient/p1').expect(200);
    assert.equal(read.text, updated.text, 'read returns the same canonical bytes');
    const old = await request(ctx.app).get(`/fhir/Patient/p1/_history/${created.body.meta.versionId}`).expect(200);
    assert.equal(old.body.birthDate, undefined);
    const hist = await request(ctx.app).get('/fhir/Patient/p1/_history').expect(200);
    assert.equal(hist.body.type, 'history');
    assert.equal(hist.body.entry.length, 2);
    assert.equal(hist.body.entry[0].resource.birthDate, '1980-02-03', 'newest first');
  });

  test('POST creates with a server-assigned id', async () => {
    const res = await request(ctx.app).post('/fhir/Patient').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', id: 'ignored', gender: 'male' })).expect(201);
    assert.notEqual(res.body.id, 'ignored');
    assert.match(res.headers.location ?? '', new RegExp(`^http://[^/]+/fhir/Patient/${res.body.id}/_history/`));
  });

  test('decimals keep their lexical form', async () => {
    const obs = '{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"Hb"},"valueQuantity":{"value":1.50,"unit":"g/dL"}}';
    const res = await request(ctx.app).put('/fhir/Observation/o1').set('Content-Type', FHIR).send(obs).expect(201);
    assert.match(res.text, /"value":1\.50[,}]/);
  });

  test('a stale client does not revert fields it did not touch', async () => {
    const v1 = await request(ctx.app).put('/fhir/Patient/stale').set('Content-Type', FHIR).send(JSON.stringify(patient({ id: 'stale' }))).expect(201);
    const base = v1.body;
    await request(ctx.app).put('/fhir/Patient/stale').set('Content-Type', FHIR).send(JSON.stringify({ ...base, birthDate: '1970-01-01' })).expect(200);
    // The stale client still holds v1 (meta.versionId names it) and changes gender only.
    const res = await request(ctx.app).put('/fhir/Patient/stale').set('Content-Type', FHIR).send(JSON.stringify({ ...base, gender: 'other' })).expect(200);
    assert.equal(res.body.gender, 'other');
    assert.equal(res.body.birthDate, '1970-01-01');
  });

  test('DELETE then read is 410, vread of older version still works', async () => {
    const c = await request(ctx.app).put('/fhir/Patient/gone1').set('Content-Type', FHIR).send(JSON.stringify(patient({ id: 'gone1' }))).expect(201);
    await request(ctx.app).delete('/fhir/Patient/gone1').expect(204);
    const r = await request(ctx.app).get('/fhir/Patient/gone1').expect(410);
    assert.equal(r.body.resourceType, 'OperationOutcome');
    await request(ctx.app).get(`/fhir/Patient/gone1/_history/${c.body.meta.versionId}`).expect(200);
  });

  test('errors are OperationOutcomes with the right status and change nothing', async () => {
    const before = ctx.updates.length;
    const cases: Array<[string, () => request.Test, number]> = [
      ['malformed JSON', () => request(ctx.app).put('/fhir/Patient/p1').set('Content-Type', FHIR).send('{"resourceType":'), 400],
      ['not an object', () => request(ctx.app).put('/fhir/Patient/p1').set('Content-Type', FHIR).send('[1]'), 400],
      ['id mismatch', () => request(ctx.app).put('/fhir/Patient/p1').set('Content-Type', FHIR).send(JSON.stringify(patient({ id: 'other' }))), 400],
      ['type mismatch', () => request(ctx.app).put('/fhir/Patient/p1').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Observation', id: 'p1' })), 400],
      ['bad id', () => request(ctx.app).get('/fhir/Patient/bad_id!'), 400],
      ['unknown type', () => request(ctx.app).get('/fhir/Nonsense/1'), 404],
      ['unknown resource', () => request(ctx.app).get('/fhir/Patient/nope'), 404],
      ['unknown version', () => request(ctx.app).get('/fhir/Patient/p1/_history/99999'), 404],
      ['invalid R4', () => request(ctx.app).put('/fhir/Patient/p1').set('Content-Type', FHIR).send(JSON.stringify(patient({ gender: 42 }))), 422],
      ['unknown element', () => request(ctx.app).put('/fhir/Patient/p1').set('Content-Type', FHIR).send(JSON.stringify(patient({ colour: 'blue' }))), 422],
      ['wrong media type', () => request(ctx.app).put('/fhir/Patient/p1').set('Content-Type', 'text/plain').send('x'), 415],
      ['unknown If-Match version', () => request(ctx.app).put('/fhir/Patient/p1').set('Content-Type', FHIR).set('If-Match', 'W/"424242"').send(JSON.stringify(patient())), 412],
      ['search', () => request(ctx.app).get('/fhir/Patient?name=x'), 501],
      ['Bundle of the wrong type', () => request(ctx.app).post('/fhir').set('Content-Type', FHIR).send('{"resourceType":"Bundle","type":"collection"}'), 400],
      ['empty PATCH', () => request(ctx.app).patch('/fhir/Patient/p1').set('Content-Type', 'application/json-patch+json').send('[]'), 400],
      ['conditional PATCH', () => request(ctx.app).patch('/fhir/Patient?name=x').set('Content-Type', 'application/json-patch+json').send('[]'), 501],
      ['other operation', () => request(ctx.app).post('/fhir/Patient/$everything').set('Content-Type', FHIR).send('{}'), 501],
      ['method', () => request(ctx.app).options('/fhir/Patient/p1'), 405],
    ];
    for (const [name, make, status] of cases) {
      const res = await make();
      assert.equal(res.status, status, name);
      assert.equal(res.body.resourceType, 'OperationOutcome', name);
      assert.ok(res.body.issue.length > 0, name);
    }
    assert.equal(ctx.updates.length, before, 'no update was produced by bad input');
    const p = await request(ctx.app).get('/fhir/Patient/p1').expect(200);
    assert.equal(p.body.gender, 'female');
  });

  test('422 issues carry FHIRPath expressions', async () => {
    const res = await request(ctx.app).put('/fhir/Patient/p1').set('Content-Type', FHIR).send(JSON.stringify(patient({ gender: 42 }))).expect(422);
    assert.ok(res.body.issue.some((i: { expression?: string[] }) => i.expression?.some((e) => e.includes('gender'))));
  });

  test('$conflicts lists nothing for an unconflicted resource', async () => {
    const res = await request(ctx.app).get('/fhir/Patient/p1/$conflicts').expect(200);
    assert.equal(res.body.resourceType, 'Parameters');
    assert.equal('parameter' in res.body, false, 'no empty parameter array (FHIR forbids empty arrays)');
  });
});

describe('ids that are URL dot-segments', () => {
  // Bug found by a fresh-user test: `PUT Patient/..` was accepted; its hospital write went to the
  // wrong URL, the hospital client then took the server for one that assigns its own ids, and every
  // later resource landed under a server-assigned id (duplicates at the hospitals).
  test('`.` and `..` are refused with 400 and nothing is written', async () => {
    const ctx = makeApp();
    for (const id of ['.', '..', '...']) {
      const body = JSON.stringify({ resourceType: 'Patient', id, gender: 'male' });
      const res = await request(ctx.app).put(`/fhir/Patient/${encodeURIComponent(id)}`).set('Content-Type', FHIR).send(body);
      assert.equal(res.status, 400, `PUT Patient/${id}`);
      assert.equal(res.body.resourceType, 'OperationOutcome');
    }
    assert.equal(ctx.updates.length, 0);
  });
});

describe('errors of the HTTP layer are 4xx OperationOutcomes (bugs found by a fresh-user test)', () => {
  test('bad Content-Encoding, bad percent-encoding, oversized body, paths outside /fhir', async () => {
    const { app, updates } = makeApp();
    const cases: Array<[string, () => request.Test, number]> = [
      ['gzip header, plain body', () => request(app).put('/fhir/Patient/p1').set('Content-Type', FHIR).set('Content-Encoding', 'gzip').send('{"resourceType":"Patient","id":"p1"}'), 400],
      ['br header, plain body', () => request(app).put('/fhir/Patient/p1').set('Content-Type', FHIR).set('Content-Encoding', 'br').send('{"resourceType":"Patient","id":"p1"}'), 400],
      ['bad percent-encoding', () => request(app).get('/fhir/Patient/%ZZ'), 400],
      ['oversized body', () => request(app).put('/fhir/Patient/p1').set('Content-Type', FHIR).send(`{"resourceType":"Patient","id":"p1","x":"${'a'.repeat(17 * 1024 * 1024)}"}`), 413],
    ];
    for (const [name, make, status] of cases) {
      const res = await make();
      assert.equal(res.status, status, name);
      assert.equal(res.body.resourceType, 'OperationOutcome', name);
    }
    const outside = await request(app).get('/nothing-here').expect(404);
    assert.match(outside.headers['content-type'] ?? '', /application\/fhir\+json/);
    assert.equal(JSON.parse(outside.text).resourceType, 'OperationOutcome');
    assert.equal(updates.length, 0);
  });
});

describe('element names that are JavaScript built-ins (bug found by a fresh-user test)', () => {
  test('isPrototypeOf, toString, hasOwnProperty … are unknown elements: 422, nothing written', async () => {
    const { app, updates } = makeApp();
    for (const body of [
      // `constructor` itself is refused earlier, with 400 (test/hostile-input.test.ts)
      { resourceType: 'Patient', id: 'js1', isPrototypeOf: 'x' },
      { resourceType: 'Patient', id: 'js2', toString: 'x' },
      { resourceType: 'Patient', id: 'js3', name: [{ hasOwnProperty: 'x' }] },
      { resourceType: 'Patient', id: 'js4', valueOf: 'x' },
    ]) {
      const res = await request(app).put(`/fhir/Patient/${body.id}`).set('Content-Type', FHIR).send(JSON.stringify(body));
      assert.equal(res.status, 422, JSON.stringify(Object.keys(body)));
      assert.ok(res.body.issue.some((i: { expression?: string[] }) => i.expression?.length), 'the issue names the element');
    }
    assert.equal(updates.length, 0);
  });
});
