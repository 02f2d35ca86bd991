/**
 * FHIR edge cases found by a new-user trial: search after a crypto-shred, conditional create with
 * bad criteria, unknown search parameters (https://hl7.org/fhir/R4/search.html#errors), non-`$`
 * operation paths, log levels of refusals, and non-JSON `Accept`/`_format`
 * (https://hl7.org/fhir/R4/http.html#mime-type). A real Medplum hospital over HTTP, no mocks.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import request from 'supertest';
import pino from 'pino';
import { fhirApp } from '../src/fhir/express.ts';
import { FhirService } from '../src/fhir/service.ts';
import { Replica } from '../src/merge/replica.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import { shredPatient } from '../src/store/shred.ts';
import { createKeyStore, keyStoreToSecretKeys } from '../src/envelope/keys.ts';
import { HospitalClient, startMedplumHospital } from '../src/hospital/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';
import { HospitalSync } from '../src/hospital/sync.ts';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';

const put = (app: Harness['app'], r: Record<string, unknown>) =>
  request(app).put(`/fhir/${String(r.resourceType)}/${String(r.id)}`).set('Content-Type', FHIR).send(JSON.stringify(r));

describe('search leaves out crypto-shredded resources (sealed SqliteStore, Medplum hospital)', () => {
  let root: string;
  let hospital: MedplumHospital;
  let sync: HospitalSync;
  let store: SqliteStore;
  let app: Harness['app'];
  const shredKeys = ['Patient/shp', 'Observation/shp-o1', 'Observation/shp-o2'];

  before(async () => {
    root = mkdtempSync(join(tmpdir(), 'tidegate-edge-'));
    hospital = await startMedplumHospital({ allowUpdateCreate: true });
    const client = new HospitalClient({ baseUrl: hospital.url, timeoutMs: 5000 });
    sync = new HospitalSync(client, { backoffMs: 20, maxAttempts: 2 });
    store = new SqliteStore(join(root, 'node.sqlite'), { secretKeys: keyStoreToSecretKeys(createKeyStore('node-e')), compaction: 'manual' });
    const replica = new Replica({ nodeId: 'node-e', store, policy: loadMergePolicy(), onVersion: (key, v) => sync.enqueue(key, v) });
    const service = new FhirService(replica, () => {}, { hospital: client, isShredded: (key) => store.isShredded(key) });
    app = fhirApp(service, pino({ level: 'silent' }));
    await put(app, { resourceType: 'Patient', id: 'shp', name: [{ family: 'Shredfam' }] }).expect(201);
    await put(app, { resourceType: 'Patient', id: 'keep', name: [{ family: 'Shredfam' }] }).expect(201);
    for (const [id, subject] of [['shp-o1', 'shp'], ['shp-o2', 'shp'], ['keep-o1', 'keep']]) {
      await put(app, { resourceType: 'Observation', id, status: 'final', code: { text: 'edge-code' }, subject: { reference: `Patient/${subject}` } }).expect(201);
    }
    await sync.idle();
    const report = await shredPatient('Patient/shp', { store, nodeId: 'node-e', requestor: 'test' });
    assert.deepEqual(report.shredded.sort(), [...shredKeys].sort());
  });
  after(async () => {
    await sync?.stop();
    await hospital?.close();
    store?.close();
    rmSync(root, { recursive: true, force: true });
  });

  const keysOf = (bundle: any): string[] => (bundle.entry ?? []).map((e: any) => `${e.resource.resourceType}/${e.resource.id}`).sort();

  it('the hospital still holds the shredded patient (the node must filter) and read is 404', async () => {
    const direct = await fetch(`${hospital.url}/Patient?family=Shredfam`).then((r) => r.json()) as any;
    assert.equal(direct.entry.length, 2);
    await request(app).get('/fhir/Patient/shp').expect(404);
  });

  it('type-level search leaves out shredded matches and lowers total', async () => {
    const res = await request(app).get('/fhir/Patient?family=Shredfam&_total=accurate').expect(200);
    assert.deepEqual(keysOf(res.body), ['Patient/keep']);
    assert.equal(res.body.total, 1);
    const obs = await request(app).get('/fhir/Observation?status=final&_total=accurate').expect(200);
    assert.deepEqual(keysOf(obs.body), ['Observation/keep-o1']);
    assert.equal(obs.body.total, 1);
  });

  it('_revinclude and _include entries of shredded resources are left out', async () => {
    const rev = await request(app).get('/fhir/Patient?family=Shredfam&_revinclude=Observation:subject').expect(200);
    assert.deepEqual(keysOf(rev.body), ['Observation/keep-o1', 'Patient/keep']);
    const inc = await request(app).get('/fhir/Observation?status=final&_include=Observation:subject').expect(200);
    assert.deepEqual(keysOf(inc.body), ['Observation/keep-o1', 'Patient/keep']);
    assert.ok(!inc.text.includes('shp'), 'no trace of the shredded ids');
  });

  it('system-level search leaves them out too', async () => {
    const res = await request(app).get('/fhir?_type=Patient,Observation&_total=accurate').expect(200);
    assert.deepEqual(keysOf(res.body), ['Observation/keep-o1', 'Patient/keep']);
    assert.equal(res.body.total, 2);
  });
});

describe('conditional create, unknown search parameters, paths, media types (Medplum hospital)', () => {
  let h: Harness;
  const lines: any[] = [];
  let logged: Harness['app'];
  before(async () => {
    h = await makeHarness({ hospital: true });
    await put(h.app, { resourceType: 'Patient', id: 'e1', name: [{ family: 'Edgefam' }], gender: 'male' }).expect(201);
    await h.sync!.idle();
    const sink = new Writable({ write(chunk, _enc, cb) { lines.push(JSON.parse(String(chunk))); cb(); } });
    logged = fhirApp(h.service, pino({ level: 'info' }, sink));
  });
  after(async () => {
    await h?.close();
  });

  const patientCount = () => [...h.replica.resourceKeys()].filter((k) => k.startsWith('Patient/')).length;

  for (const [label, value] of [['an unknown modifier', 'name:foo=Zed'], ['an empty header', ''], ['an :exact the matcher would get wrong', 'name:exact=Zed']] as const) {
    it(`If-None-Exist with ${label} is 400 and writes nothing`, async () => {
      const before = patientCount();
      const res = await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).set('If-None-Exist', value)
        .send(JSON.stringify({ resourceType: 'Patient', name: [{ family: 'Zed' }] })).expect(400);
      assert.equal(res.body.resourceType, 'OperationOutcome');
      assert.equal(patientCount(), before);
      assert.equal(h.updates.filter((u) => u.key.startsWith('Patient/') && u.key !== 'Patient/e1').length, 0);
    });
  }

  it('If-None-Exist with a supported modifier still works (:contains, match → 200)', async () => {
    const res = await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).set('If-None-Exist', 'name:contains=dgef')
      .send(JSON.stringify({ resourceType: 'Patient', name: [{ family: 'Edgefam' }] })).expect(200);
    assert.equal(res.body.id, 'e1');
  });

  it('an unknown search parameter is ignored and left out of the self link (lenient)', async () => {
    const res = await request(h.app).get('/fhir/Patient?gendr=female&family=Edgefam').expect(200);
    assert.deepEqual(res.body.entry.map((e: any) => e.resource.id), ['e1'], 'gendr=female was not applied');
    const self = res.body.link.find((l: any) => l.relation === 'self').url as string;
    assert.ok(!self.includes('gendr'), self);
    assert.ok(self.includes('family=Edgefam'), self);
    const sys = await request(h.app).get('/fhir?_type=Patient&gendr=female&family=Edgefam').expect(200);
    const sysSelf = sys.body.link.find((l: any) => l.relation === 'self').url as string;
    assert.ok(!sysSelf.includes('gendr') && sysSelf.includes('_type=Patient'), sysSelf);
    assert.equal(sys.body.entry.length, 1);
  });

  it('with Prefer: handling=strict an unknown parameter is 400; known ones, modifiers and chains pass', async () => {
    const res = await request(h.app).get('/fhir/Patient?gendr=male').set('Prefer', 'handling=strict').expect(400);
    assert.equal(res.body.resourceType, 'OperationOutcome');
    assert.match(res.body.issue[0].diagnostics, /gendr/);
    await request(h.app).post('/fhir/Patient/_search').set('Prefer', 'handling=strict').type('form').send('gendr=male').expect(400);
    await request(h.app).get('/fhir?_type=Patient,Observation&gender=male').set('Prefer', 'handling=strict').expect(400);
    await request(h.app).get('/fhir/Patient?gender=male&name:contains=Edge&_count=5&_id=e1').set('Prefer', 'handling=strict').expect(200);
    await request(h.app).get('/fhir/Observation?subject:Patient.name=Edgefam').set('Prefer', 'handling=strict').expect(200);
  });

  it('GET [type]/[id]/foo (no $) is 404; GET [type]/[id]/$foo stays 501', async () => {
    const res = await request(h.app).get('/fhir/Patient/e1/foo').expect(404);
    assert.equal(res.body.issue[0].code, 'not-found');
    await request(h.app).get('/fhir/Patient/e1/$foo').expect(501);
  });

  it('refusals (4xx, 501) are logged at info, not error', async () => {
    lines.length = 0;
    await request(logged).get('/fhir/Patient/e1/$foo').expect(501);
    await request(logged).get('/fhir/Patient/nope').expect(404);
    const refused = lines.filter((l) => l.msg === 'FHIR request refused' || l.msg === 'FHIR request failed');
    assert.equal(refused.length, 2);
    for (const l of refused) assert.equal(l.level, 30, JSON.stringify(l));
  });

  for (const [label, set] of [
    ['Accept: application/fhir+xml', (r: request.Test) => r.set('Accept', 'application/fhir+xml')],
    ['_format=xml', null],
    ['_format=application/fhir+xml', null],
  ] as const) {
    it(`${label} is 406 with a JSON OperationOutcome`, async () => {
      const url = label.startsWith('_format') ? `/fhir/Patient/e1?${label}` : '/fhir/Patient/e1';
      const req = request(h.app).get(url);
      const res = await (set ? set(req) : req).expect(406);
      assert.match(res.headers['content-type']!, /^application\/fhir\+json/);
      assert.equal(res.body.resourceType, 'OperationOutcome');
      assert.equal(res.body.issue[0].code, 'not-supported');
    });
  }

  it('JSON forms stay accepted', async () => {
    for (const accept of ['*/*', 'application/json', 'application/fhir+json', 'application/json+fhir', 'text/html,application/xhtml+xml,*/*;q=0.8']) {
      await request(h.app).get('/fhir/Patient/e1').set('Accept', accept).expect(200);
    }
    for (const f of ['json', 'application/json', 'application/fhir%2Bjson', 'application/fhir+json', 'application/json+fhir']) {
      await request(h.app).get(`/fhir/Patient/e1?_format=${f}`).set('Accept', 'application/fhir+xml').expect(200);
    }
    await request(h.app).get('/fhir/Patient?_format=json&family=Edgefam').expect(200);
  });
});
