/**
 * Adversarial review of `_summary`/`_elements` (src/fhir/subset.ts, src/fhir/search.ts):
 * - a request (a batch Bundle's GET entry may carry a URL of megabytes) with very many `_elements`
 *   parameters is parsed in time linear in their number, and gives the same subset as one
 *   `_elements` listing the names once;
 * - resources whose `resourceType` is no R4 type (a hospital's answer is not validated; prototype
 *   names included) are subsetted without a crash and without growing the per-type index;
 * - `_summary=count` does not disclose crypto-shredded resources the hospital still holds: its
 *   `total` is the one the same search without it reports (shredded matches left out), over a real
 *   Medplum hospital (made to honour `_summary=count`: no entries) and a sealed SqliteStore.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { isMainThread, parentPort } from 'node:worker_threads';
import { runInWorker } from './fixtures/in-worker.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import request from 'supertest';
import pino from 'pino';
import { parseSubset, subsetResource, subsetTypeCacheSize } from '../src/fhir/subset.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
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
import type { HospitalSearcher } from '../src/fhir/search.ts';
import { FHIR } from './fhir-harness.ts';

/**
 * The real client, but the hospital honours `_summary=count` as R4 says and HAPI FHIR does (the
 * Medplum stand-in still returns the matches): the answer keeps `total` and the links, no entries.
 */
function honouringCount(c: HospitalClient): HospitalSearcher {
  return {
    baseUrl: c.baseUrl,
    idMap: c.idMap,
    search: async (type, params, options) => {
      const bundle = await c.search(type, params, options);
      const summary = params._summary;
      if (summary === 'count' || (Array.isArray(summary) && summary.includes('count'))) delete bundle.entry;
      return bundle;
    },
  };
}

/** Parses 100 000 `_elements` parameters (run in a worker thread: see {@link inWorker}). */
function manyElements(): { kind: string | undefined; names: string[]; cleaned: Array<[string, string]> } {
  parseSubset(['Patient'], [['_elements', 'id']], false, 'read'); // loads the definitions
  const pairs: Array<[string, string]> = [];
  for (let i = 0; i < 100_000; i++) pairs.push(['_elements', i % 2 === 0 ? 'id' : 'gender,birthDate']);
  pairs.push(['_count', '5']);
  const { subset, pairs: cleaned } = parseSubset(['Patient'], pairs, false, 'read');
  return { kind: subset?.kind, names: subset?.kind === 'elements' ? [...subset.names] : [], cleaned };
}

const inWorker = (ms: number): Promise<ReturnType<typeof manyElements>> => runInWorker(new URL(import.meta.url), ms, 'subset');

if (!isMainThread) parentPort!.postMessage(manyElements());

if (isMainThread) describe('parseSubset on very many _elements parameters', () => {
  // 100 000 repeats: a quadratic accumulation copies ~5·10⁹ names (about a minute); linear is a few
  // seconds with the worker loading the definitions. The bound cuts a hang, it is not a speed assertion.
  test('100 000 × `_elements=id` (and names repeated across parameters) give one list of distinct names', async () => {
    const r = await inWorker(20_000);
    assert.equal(r.kind, 'elements');
    assert.deepEqual(r.names, ['id', 'gender', 'birthDate']);
    assert.deepEqual(r.cleaned, [['_elements', 'id,gender,birthDate'], ['_count', '5']]);
  });
});

if (isMainThread) describe('subsetResource on resources of unknown types', () => {
  test('10 000 distinct unknown resourceType values (and prototype names): subsetted, tagged, not remembered', () => {
    const patient = subsetResource({ resourceType: 'Patient', id: 'p', gender: 'female', name: [{ family: 'X' }] }, { kind: 'summary', mode: 'true' });
    assert.equal(patient.gender, 'female');
    const before = subsetTypeCacheSize();
    assert.ok(before >= 1);
    const names = ['constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf', ...Array.from({ length: 10_000 }, (_, i) => `Forged${i}${'x'.repeat(100)}`)];
    for (const resourceType of names) {
      const r = JSON.parse(`{"resourceType":${JSON.stringify(resourceType)},"id":"f","gender":"male","meta":{"tag":[]}}`) as FhirJsonObject;
      for (const subset of [{ kind: 'summary', mode: 'true' }, { kind: 'summary', mode: 'text' }, { kind: 'elements', names: new Set(['gender']) }] as const) {
        const out = subsetResource(r, subset);
        assert.equal(out.resourceType, resourceType);
        assert.equal(out.id, 'f');
        assert.deepEqual((out.meta as FhirJsonObject).tag, [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'SUBSETTED' }]);
      }
    }
    assert.equal(subsetTypeCacheSize(), before, 'unknown types are not remembered');
  });
});

if (isMainThread) describe('_summary=count after a crypto-shred (sealed SqliteStore, Medplum hospital)', () => {
  let root: string;
  let hospital: MedplumHospital;
  let sync: HospitalSync;
  let store: SqliteStore;
  let app: ReturnType<typeof fhirApp>;

  before(async () => {
    root = mkdtempSync(join(tmpdir(), 'tidegate-adv-count-'));
    hospital = await startMedplumHospital({ allowUpdateCreate: true });
    const client = new HospitalClient({ baseUrl: hospital.url, timeoutMs: 5000 });
    sync = new HospitalSync(client, { backoffMs: 20, maxAttempts: 2 });
    store = new SqliteStore(join(root, 'node.sqlite'), { secretKeys: keyStoreToSecretKeys(createKeyStore('node-adv')), compaction: 'manual' });
    const replica = new Replica({ nodeId: 'node-adv', store, policy: loadMergePolicy(), onVersion: (key, v) => sync.enqueue(key, v) });
    const service = new FhirService(replica, () => {}, { hospital: honouringCount(client), isShredded: (key) => store.isShredded(key) });
    app = fhirApp(service, pino({ level: 'silent' }));
    const put = (r: Record<string, unknown>) => request(app).put(`/fhir/${String(r.resourceType)}/${String(r.id)}`).set('Content-Type', FHIR).send(JSON.stringify(r));
    await put({ resourceType: 'Patient', id: 'cnt-gone', name: [{ family: 'Countfam' }] }).expect(201);
    await put({ resourceType: 'Patient', id: 'cnt-keep', name: [{ family: 'Countfam' }] }).expect(201);
    for (const [id, subject] of [['cnt-o1', 'cnt-gone'], ['cnt-o2', 'cnt-gone'], ['cnt-o3', 'cnt-keep']]) {
      await put({ resourceType: 'Observation', id, status: 'final', code: { text: 'count-code' }, subject: { reference: `Patient/${subject}` } }).expect(201);
    }
    await sync.idle();
    const report = await shredPatient('Patient/cnt-gone', { store, nodeId: 'node-adv', requestor: 'test' });
    assert.equal(report.shredded.length, 3);
  });
  after(async () => {
    await sync?.stop();
    await hospital?.close();
    store?.close();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  test('the hospital still counts the shredded patient (the node must not)', async () => {
    const direct = await honouringCount(new HospitalClient({ baseUrl: hospital.url, timeoutMs: 5000 })).search('Patient', { family: 'Countfam', _summary: 'count', _total: 'accurate' });
    assert.equal(String(direct.total), '2');
    assert.equal(direct.entry, undefined);
  });

  test('type-level: the count equals the total of the search without _summary; self link keeps _summary=count', async () => {
    const full = await request(app).get('/fhir/Patient?family=Countfam&_total=accurate').expect(200);
    assert.equal(full.body.total, 1);
    const count = await request(app).get('/fhir/Patient?family=Countfam&_summary=count').expect(200);
    assert.equal(count.body.total, 1);
    assert.equal(count.body.entry, undefined);
    assert.deepEqual(count.body.link.map((l: { relation: string }) => l.relation), ['self']);
    const self = new URL(count.body.link[0].url);
    assert.equal(self.searchParams.get('_summary'), 'count');
    assert.equal(self.searchParams.get('family'), 'Countfam');
    assert.equal(self.searchParams.get('_elements'), null);
    assert.ok(!count.text.includes('cnt-gone'), 'no trace of the shredded id');
    const obs = await request(app).get('/fhir/Observation?code:text=count-code&_summary=count').expect(200);
    assert.equal(obs.body.total, 1);
  });

  test('system-level: the shredded matches are not counted either', async () => {
    const count = await request(app).get('/fhir?_type=Patient,Observation&_summary=count&_lastUpdated=gt2000-01-01').expect(200);
    const full = await request(app).get('/fhir?_type=Patient,Observation&_total=accurate&_lastUpdated=gt2000-01-01').expect(200);
    assert.equal(count.body.total, full.body.total);
    assert.equal(count.body.total, 2);
    assert.equal(count.body.entry, undefined);
  });
});
