/**
 * Audit of the CapabilityStatement (https://hl7.org/fhir/R4/capabilitystatement.html): everything
 * it advertises — interactions (system and type level), operations, search parameters, the
 * conditional/versioning flags, formats — is listed in {@link COVERAGE} with the test that covers
 * it, and is exercised here once more against a node with a Medplum hospital over HTTP. The audit
 * fails when the statement advertises something the table does not list (add a test first), when
 * the table lists something no longer advertised, or when a named test no longer exists. Things
 * the statement does not advertise answer 501 with an OperationOutcome.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import request from 'supertest';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';

type Probe = (h: Harness) => Promise<void>;

const put = (h: Harness, body: { resourceType: string; id: string } & Record<string, unknown>) =>
  request(h.app).put(`/fhir/${body.resourceType}/${body.id}`).set('Content-Type', FHIR).send(JSON.stringify(body));

/** Each advertised capability → the test file and test name covering it, and a probe run here. */
const COVERAGE: Record<string, { file: string; name: string; probe: Probe }> = {
  'system:batch': {
    file: 'fhir-bundle.test.ts', name: 'entries are independent: each gets its own status, location, etag or outcome',
    probe: async (h) => {
      const res = await request(h.app).post('/fhir').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Bundle', type: 'batch', entry: [{ request: { method: 'GET', url: 'Patient/cap-1' } }] })).expect(200);
      assert.equal(res.body.type, 'batch-response');
      assert.equal(res.body.entry[0].resource.id, 'cap-1');
    },
  },
  'system:transaction': {
    file: 'fhir-bundle.test.ts', name: 'urn:uuid fullUrls get server ids; references are rewritten everywhere, also in contained resources and narrative',
    probe: async (h) => {
      const res = await request(h.app).post('/fhir').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry: [
        { fullUrl: 'urn:uuid:0e5b1f4e-0000-4000-8000-000000000001', resource: { resourceType: 'Patient' }, request: { method: 'POST', url: 'Patient' } },
        { resource: { resourceType: 'Encounter', status: 'planned', class: { code: 'AMB' }, subject: { reference: 'urn:uuid:0e5b1f4e-0000-4000-8000-000000000001' } }, request: { method: 'POST', url: 'Encounter' } },
      ] })).expect(200);
      assert.equal(res.body.type, 'transaction-response');
      const enc = h.replica.current(res.body.entry[1].response.location.split('/_history/')[0])!;
      assert.equal(JSON.parse(enc.body!).subject.reference, res.body.entry[0].response.location.split('/_history/')[0]);
    },
  },
  'system:search-system': {
    file: 'fhir-search.test.ts', name: 'system-level search with _type pages through both types',
    probe: async (h) => {
      await h.sync!.idle();
      const res = await request(h.app).get('/fhir?_type=Patient&_id=cap-1').expect(200);
      assert.deepEqual(res.body.entry.map((e: any) => e.resource.id), ['cap-1']);
    },
  },
  'type:read': { file: 'fhir-api.test.ts', name: 'PUT creates with the client id, then updates; ETag, Location, meta are set', probe: async (h) => void (await request(h.app).get('/fhir/Patient/cap-1').expect(200)) },
  'type:vread': {
    file: 'fhir-api.test.ts', name: 'DELETE then read is 410, vread of older version still works',
    probe: async (h) => void (await request(h.app).get(`/fhir/Patient/cap-1/_history/${h.replica.current('Patient/cap-1')!.versionId}`).expect(200)),
  },
  'type:update': { file: 'fhir-api.test.ts', name: 'PUT creates with the client id, then updates; ETag, Location, meta are set', probe: async (h) => void (await put(h, { resourceType: 'Patient', id: 'cap-1', gender: 'male' }).expect(200)) },
  'type:patch': {
    file: 'fhir-write.test.ts', name: 'JSON Patch changes one element; an untouched 1.50 survives, a patched 4.20 keeps its form',
    probe: async (h) => {
      const res = await request(h.app).patch('/fhir/Patient/cap-1').set('Content-Type', 'application/json-patch+json').send('[{"op":"replace","path":"/gender","value":"other"}]').expect(200);
      assert.equal(res.body.gender, 'other');
    },
  },
  'type:delete': { file: 'fhir-api.test.ts', name: 'DELETE then read is 410, vread of older version still works', probe: async (h) => {
    await put(h, { resourceType: 'Patient', id: 'cap-del' }).expect(201);
    await request(h.app).delete('/fhir/Patient/cap-del').expect(204);
    await request(h.app).get('/fhir/Patient/cap-del').expect(410);
  } },
  'type:history-instance': { file: 'fhir-api.test.ts', name: 'DELETE then read is 410, vread of older version still works', probe: async (h) => {
    const res = await request(h.app).get('/fhir/Patient/cap-1/_history').expect(200);
    assert.equal(res.body.type, 'history');
    assert.ok(res.body.entry.length >= 2);
  } },
  'type:create': { file: 'fhir-api.test.ts', name: 'POST creates with a server-assigned id', probe: async (h) => void (await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).send('{"resourceType":"Patient"}').expect(201)) },
  'type:search-type': { file: 'fhir-search.test.ts', name: 'GET [type]?… pages through the node with node ids, node fullUrls and node links', probe: async (h) => {
    await h.sync!.idle();
    const res = await request(h.app).get('/fhir/Patient?_id=cap-1').expect(200);
    assert.equal(res.body.type, 'searchset');
    assert.deepEqual(res.body.entry.map((e: any) => e.resource.id), ['cap-1']);
  } },
  'operation:validate': { file: 'fhir-validate.test.ts', name: '$validate of a valid resource (raw body) is 200 with an information issue', probe: async (h) => {
    const res = await request(h.app).post('/fhir/Patient/$validate').set('Content-Type', FHIR).send('{"resourceType":"Patient"}').expect(200);
    assert.equal(res.body.resourceType, 'OperationOutcome');
  } },
  'flag:versioning=versioned-update': { file: 'fhir-write.test.ts', name: 'If-Match merges by default; with Prefer: handling=strict a stale version is 412', probe: async (h) => {
    await request(h.app).put('/fhir/Patient/cap-1').set('Content-Type', FHIR).set('If-Match', 'W/"1.00000000"').set('Prefer', 'handling=strict').send('{"resourceType":"Patient","id":"cap-1"}').expect(412);
  } },
  'flag:readHistory=true': { file: 'fhir-api.test.ts', name: 'DELETE then read is 410, vread of older version still works', probe: async (h) => {
    const hist = await request(h.app).get('/fhir/Patient/cap-1/_history').expect(200);
    const oldest = hist.body.entry.at(-1).response.etag.replace(/^W\/"|"$/g, '');
    await request(h.app).get(`/fhir/Patient/cap-1/_history/${oldest}`).expect(200);
  } },
  'flag:updateCreate=true': { file: 'fhir-api.test.ts', name: 'PUT creates with the client id, then updates; ETag, Location, meta are set', probe: async (h) => void (await put(h, { resourceType: 'Patient', id: 'cap-uc' }).expect(201)) },
  'flag:conditionalCreate=true': { file: 'fhir-write.test.ts', name: 'If-None-Exist: creates when nothing matches, returns the match without writing otherwise', probe: async (h) => {
    await put(h, { resourceType: 'Patient', id: 'cap-cc', identifier: [{ system: 'urn:cap', value: 'cc' }] }).expect(201);
    const res = await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).set('If-None-Exist', 'identifier=urn:cap|cc').send('{"resourceType":"Patient"}').expect(200);
    assert.equal(res.body.id, 'cap-cc');
  } },
  'flag:conditionalRead=full-support': { file: 'fhir-edge-fixes-2.test.ts', name: 'If-Modified-Since on read: 304 when not modified since, 200 when modified; If-None-Match wins', probe: async (h) => {
    await request(h.app).get('/fhir/Patient/cap-1').set('If-None-Match', `W/"${h.replica.current('Patient/cap-1')!.versionId}"`).expect(304);
    const later = new Date(Date.now() + 3_600_000).toUTCString();
    await request(h.app).get('/fhir/Patient/cap-1').set('If-Modified-Since', later).expect(304);
    await request(h.app).get('/fhir/Patient/cap-1').set('If-Modified-Since', new Date(0).toUTCString()).expect(200);
  } },
  'flag:conditionalUpdate=true': { file: 'fhir-write.test.ts', name: 'conditional update: creates, then updates the one match; 412 on several; 400 on id mismatch', probe: async (h) => {
    const res = await request(h.app).put('/fhir/Patient?identifier=urn:cap|cc').set('Content-Type', FHIR).send('{"resourceType":"Patient","gender":"female","identifier":[{"system":"urn:cap","value":"cc"}]}').expect(200);
    assert.equal(res.body.id, 'cap-cc');
  } },
  'flag:conditionalDelete=single': { file: 'fhir-write.test.ts', name: 'conditional delete: one match deleted, none is 204, several 412', probe: async (h) => {
    await request(h.app).delete('/fhir/Patient?identifier=urn:cap|cc').expect(204);
    assert.equal(h.replica.current('Patient/cap-cc')!.deleted, true);
  } },
  'format:application/fhir+json': { file: 'fhir-api.test.ts', name: 'GET /metadata is a CapabilityStatement listing only implemented interactions', probe: async (h) => {
    const res = await request(h.app).get('/fhir/Patient/cap-1').expect(200);
    assert.match(res.headers['content-type'] ?? '', /^application\/fhir\+json/);
  } },
  'format:json': { file: 'fhir-capability.test.ts', name: 'every advertised capability has a covering test and works here', probe: async (h) => void (await request(h.app).put('/fhir/Patient/cap-json').set('Content-Type', 'application/json').send('{"resourceType":"Patient","id":"cap-json"}').expect(201)) },
  'patchFormat:application/json-patch+json': { file: 'fhir-write.test.ts', name: 'JSON Patch changes one element; an untouched 1.50 survives, a patched 4.20 keeps its form', probe: async (h) => {
    await request(h.app).patch('/fhir/Patient/cap-1').set('Content-Type', 'application/json-patch+json').send('[{"op":"test","path":"/gender","value":"nonsense"}]').expect(422);
  } },
  'patchFormat:application/fhir+json': { file: 'fhir-write.test.ts', name: 'FHIRPath Patch (Parameters) replaces an element; 1.50 survives', probe: async (h) => {
    const params = { resourceType: 'Parameters', parameter: [{ name: 'operation', part: [{ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Patient.gender' }, { name: 'value', valueCode: 'female' }] }] };
    const res = await request(h.app).patch('/fhir/Patient/cap-1').set('Content-Type', FHIR).send(JSON.stringify(params)).expect(200);
    assert.equal(res.body.gender, 'female');
  } },
  'supportedProfile': { file: 'fhir-validate.test.ts', name: 'a write claiming US Core that does not conform is 422 with expressions and changes nothing', probe: async (h) => {
    await request(h.app).put('/fhir/Patient/cap-prof').set('Content-Type', FHIR)
      .send(JSON.stringify({ resourceType: 'Patient', id: 'cap-prof', meta: { profile: ['http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient'] } })).expect(422);
  } },
};

/** Every capability the statement advertises, as `kind:value` strings (see {@link COVERAGE}). */
function advertised(cs: any): { items: Set<string>; perTypeDiffers: string[] } {
  const items = new Set<string>();
  const rest = cs.rest[0];
  for (const i of rest.interaction ?? []) items.add(`system:${i.code}`);
  for (const o of rest.operation ?? []) items.add(`operation:${o.name}`);
  for (const p of rest.searchParam ?? []) items.add(`searchParam:${p.name}`);
  for (const f of cs.format ?? []) items.add(`format:${f}`);
  for (const f of cs.patchFormat ?? []) items.add(`patchFormat:${f}`);
  const shape = (r: any) => JSON.stringify([
    (r.interaction ?? []).map((i: any) => i.code).sort(), (r.operation ?? []).map((o: any) => o.name).sort(), (r.searchParam ?? []).map((p: any) => p.name).sort(),
    r.versioning, r.readHistory, r.updateCreate, r.conditionalCreate, r.conditionalRead, r.conditionalUpdate, r.conditionalDelete, r.searchInclude, r.searchRevInclude,
  ]);
  const first = rest.resource[0];
  const perTypeDiffers = rest.resource.filter((r: any) => shape(r) !== shape(first)).map((r: any) => r.type);
  for (const r of rest.resource) {
    for (const i of r.interaction ?? []) items.add(`type:${i.code}`);
    for (const o of r.operation ?? []) items.add(`operation:${o.name}`);
    for (const p of r.searchParam ?? []) items.add(`searchParam:${r.type}.${p.name}`);
    for (const f of ['versioning', 'readHistory', 'updateCreate', 'conditionalCreate', 'conditionalRead', 'conditionalUpdate', 'conditionalDelete', 'conditionalPatch']) {
      if (r[f] !== undefined && r[f] !== false && r[f] !== 'not-supported') items.add(`flag:${f}=${r[f]}`);
    }
    for (const f of ['searchInclude', 'searchRevInclude', 'referencePolicy']) if (r[f]?.length) items.add(`${f}:${r.type}`);
    if (r.supportedProfile?.length) items.add('supportedProfile');
  }
  return { items, perTypeDiffers };
}

describe('CapabilityStatement audit', () => {
  let h: Harness;
  before(async () => {
    h = await makeHarness({ hospital: true });
    await put(h, { resourceType: 'Patient', id: 'cap-1', gender: 'female' }).expect(201);
  });
  after(async () => {
    await h?.close();
  });

  test('every advertised capability has a covering test and works here', async () => {
    const cs = (await request(h.app).get('/fhir/metadata').expect(200)).body;
    const { items, perTypeDiffers } = advertised(cs);
    assert.deepEqual(perTypeDiffers, [], 'every resource type advertises the same interactions (the probes use Patient)');
    assert.deepEqual([...items].sort(), Object.keys(COVERAGE).sort(), 'advertised = covered: add a test for a new capability, or stop advertising it');
    for (const [item, c] of Object.entries(COVERAGE)) {
      const text = readFileSync(new URL(`./${c.file}`, import.meta.url), 'utf8');
      assert.ok(text.includes(`'${c.name}'`), `${item}: test "${c.name}" exists in test/${c.file}`);
    }
    for (const [item, c] of Object.entries(COVERAGE)) {
      try {
        await c.probe(h);
      } catch (err) {
        assert.fail(`${item}: ${(err as Error).message}`);
      }
    }
  });

  test('without a hospital client, search is neither advertised nor answered (501)', async () => {
    const bare = await makeHarness();
    try {
      const cs = (await request(bare.app).get('/fhir/metadata').expect(200)).body;
      const { items } = advertised(cs);
      assert.equal(items.has('system:search-system'), false);
      assert.equal(items.has('type:search-type'), false);
      for (const path of ['/fhir/Patient?gender=male', '/fhir?_type=Patient']) {
        const res = await request(bare.app).get(path).expect(501);
        assert.equal(res.body.resourceType, 'OperationOutcome');
      }
    } finally {
      await bare.close();
    }
  });

  test('what is not advertised answers 501 with an OperationOutcome and changes nothing', async () => {
    const cs = (await request(h.app).get('/fhir/metadata').expect(200)).body;
    const { items } = advertised(cs);
    const before = h.updates.length;
    const cases: Array<[string, string, () => request.Test]> = [
      ['type:history-type', 'GET /Patient/_history', () => request(h.app).get('/fhir/Patient/_history')],
      ['system:history-system', 'GET /_history', () => request(h.app).get('/fhir/_history')],
      ['flag:conditionalPatch=true', 'PATCH /Patient?criteria', () => request(h.app).patch('/fhir/Patient?identifier=a|b').set('Content-Type', 'application/json-patch+json').send('[]')],
      ['operation:everything', 'GET /Patient/1/$everything', () => request(h.app).get('/fhir/Patient/cap-1/$everything')],
      ['operation:meta', 'POST /Patient/$meta', () => request(h.app).post('/fhir/Patient/$meta').set('Content-Type', FHIR).send('{}')],
      ['operation:export', 'GET /$export', () => request(h.app).get('/fhir/$export')],
    ];
    for (const [item, what, make] of cases) {
      assert.equal(items.has(item), false, `${item} is not advertised`);
      const res = await make();
      assert.equal(res.status, 501, `${what}: ${res.text}`);
      assert.equal(res.body.resourceType, 'OperationOutcome', what);
      assert.equal(res.body.issue[0].code, 'not-supported', what);
    }
    assert.equal(h.updates.length, before);
  });
});
