/**
 * Hospital resync (src/hospital/resync.ts, `POST /admin/hospital/resync`): a hospital FHIR server
 * that lost its data (an in-memory server restarted) gets the node's current version of every
 * resource again through the outbox; deleted resources stay absent, crypto-shredded ones are never
 * sent. Real node (sealed SQLite store, real Redis) and a real Medplum stand-in hospital over HTTP.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import pino from 'pino';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import { StoreIdMap } from '../src/store/id-map.ts';
import { createKeyStore, keyStoreToSecretKeys } from '../src/envelope/keys.ts';
import { TidegateNode } from '../src/node/node.ts';
import { HospitalClient, startMedplumHospital } from '../src/hospital/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';
import { clearRedisPrefix } from './fixtures/redis.ts';

const run = promisify(execFile);
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const FHIR = { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' };

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Ids of `type` the hospital's search returns. */
async function searchIds(h: MedplumHospital, type: string): Promise<string[]> {
  // a keep-alive socket to the server before its restart fails once: retry on a new one
  const res = await fetch(`${h.url}/${type}?_count=1000`, { headers: FHIR }).catch(() => fetch(`${h.url}/${type}?_count=1000`, { headers: FHIR }));
  assert.equal(res.status, 200);
  const bundle = (await res.json()) as { entry?: Array<{ resource: { id: string } }> };
  return (bundle.entry ?? []).map((e) => e.resource.id).sort();
}

describe('hospital resync after the hospital lost its data', () => {
  let root: string;
  let store: SqliteStore;
  let hospital: MedplumHospital;
  let node: TidegateNode;
  const prefix = `resync-${randomUUID().slice(0, 8)}`;

  before(async () => {
    root = mkdtempSync(join(tmpdir(), 'tidegate-resync-'));
    store = new SqliteStore(join(root, 'node.sqlite'), { secretKeys: keyStoreToSecretKeys(createKeyStore('rs-a')), compaction: 'manual' });
    hospital = await startMedplumHospital({ name: 'rs-a-fhir' });
    node = new TidegateNode({
      secretKeys: keyStoreToSecretKeys(createKeyStore('rs-a')),
      peers: [],
      redisUrl: REDIS_URL,
      queuePrefix: prefix,
      hospital: new HospitalClient({ baseUrl: hospital.url, idMap: new StoreIdMap(store) }),
      store,
      logger: pino({ level: 'silent' }),
      antiEntropyIntervalMs: 0,
      batchDelayMs: 5,
      hospitalPollIntervalMs: 0,
    });
    await node.start();
  });
  after(async () => {
    await node?.stop();
    await hospital?.close();
    store?.close?.();
    await clearRedisPrefix(REDIS_URL, prefix);
    rmSync(root, { recursive: true, force: true });
  });

  const put = async (res: Record<string, unknown>): Promise<number> =>
    (await fetch(`${node.baseUrl}/${String(res.resourceType)}/${String(res.id)}`, { method: 'PUT', headers: FHIR, body: JSON.stringify(res) })).status;
  const settled = async (): Promise<void> => {
    await waitFor('outbox idle', async () => (await node.quiet()) && node.hospitalSync.backlog === 0);
  };
  const resync = (query = ''): Promise<Response> => fetch(`${node.baseUrl.replace(/\/fhir$/, '')}/admin/hospital/resync${query}`, { method: 'POST' });
  const resyncStatus = async (): Promise<{ state: string; total: number; queued: number; deleted: number; shredded: number }> =>
    (await (await fetch(`${node.baseUrl.replace(/\/fhir$/, '')}/admin/hospital/resync`)).json()) as never;

  it('resends every live resource (by type, then all), keeps deleted ones deleted and never sends shredded ones', async () => {
    for (const id of ['p1', 'p2', 'p3']) assert.equal(await put({ resourceType: 'Patient', id, name: [{ family: 'Resyncer' }] }), 201);
    assert.equal(await put({ resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'hb' }, subject: { reference: 'Patient/p1' } }), 201);
    assert.equal(await put({ resourceType: 'Patient', id: 'pat-s', name: [{ family: 'Shredme' }] }), 201);
    assert.equal(await put({ resourceType: 'Observation', id: 'obs-s', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/pat-s' } }), 201);
    assert.equal(await put({ resourceType: 'Patient', id: 'p-del', name: [{ family: 'Gone' }] }), 201);
    assert.equal((await fetch(`${node.baseUrl}/Patient/p-del`, { method: 'DELETE' })).status, 204);
    await settled();
    const hospitalIds = async (type: string): Promise<string[]> => {
      const client = new HospitalClient({ baseUrl: hospital.url, idMap: new StoreIdMap(store) });
      const out: string[] = [];
      for (const id of ['p1', 'p2', 'p3', 'p4', 'pat-s', 'p-del', 'o1', 'obs-s']) {
        if ((await client.read(type, id).catch(() => undefined)) !== undefined) out.push(id);
      }
      return out.sort();
    };
    assert.deepEqual(await hospitalIds('Patient'), ['p1', 'p2', 'p3', 'pat-s']);
    assert.equal((await searchIds(hospital, 'Patient')).length, 4);
    await node.shred('Patient/pat-s', 'test');
    await settled();

    // the hospital restarts empty (in-memory server), same port
    const port = hospital.port;
    await hospital.close();
    hospital = await startMedplumHospital({ name: 'rs-a-fhir', port });
    assert.deepEqual(await searchIds(hospital, 'Patient'), []);
    // new writes still reach it, but nothing written before comes back by itself
    assert.equal(await put({ resourceType: 'Patient', id: 'p4', name: [{ family: 'Resyncer' }] }), 201);
    await settled();
    assert.deepEqual(await hospitalIds('Patient'), ['p4']);

    // bad input: 400 OperationOutcome, nothing started
    const bad = await resync('?type=not-a-type');
    assert.equal(bad.status, 400);
    assert.equal(((await bad.json()) as { resourceType: string }).resourceType, 'OperationOutcome');
    assert.equal((await resyncStatus()).state, 'idle');
    for (const q of ['?type=Patinet', '?type=Patient,Bogus', '?type=']) {
      const unknown = await resync(q);
      assert.equal(unknown.status, 400, `${q}: an unknown or empty type is refused, not a silent resync of nothing (or of everything)`);
      assert.match(((await unknown.json()) as { issue: Array<{ diagnostics: string }> }).issue[0]!.diagnostics, /resource type/);
    }
    assert.equal((await resyncStatus()).state, 'idle');

    // only Observations
    const obs = await resync('?type=Observation');
    assert.equal(obs.status, 202);
    const started = (await obs.json()) as { total: number; shredded: number; types: string[] };
    assert.deepEqual(started.types, ['Observation']);
    assert.equal(started.total, 1, 'o1 (obs-s is shredded)');
    await waitFor('resync done', async () => (await resyncStatus()).state === 'done');
    await settled();
    assert.deepEqual(await hospitalIds('Observation'), ['o1']);
    assert.deepEqual(await hospitalIds('Patient'), ['p4'], 'other types untouched');

    // everything
    const all = await resync();
    assert.equal(all.status, 202);
    await waitFor('resync done', async () => (await resyncStatus()).state === 'done');
    await settled();
    const st = await resyncStatus();
    assert.equal(st.deleted, 1, 'p-del sent as a deletion');
    assert.equal(st.queued, 5, 'p1 p2 p3 p4 o1');
    assert.deepEqual(await hospitalIds('Patient'), ['p1', 'p2', 'p3', 'p4']);
    assert.deepEqual(await hospitalIds('Observation'), ['o1']);
    assert.deepEqual(await searchIds(hospital, 'Observation').then((x) => x.length), 1);
    const patients = await searchIds(hospital, 'Patient');
    assert.equal(patients.length, 4, 'search finds every live Patient, not the deleted or shredded one');
    // the shredded Patient's content never reached the restarted hospital
    const journal = JSON.stringify(hospital.repo.changes({ resourceType: 'Patient' }));
    assert.ok(!journal.includes('Shredme'), 'shredded content not resent');
    assert.ok(!journal.includes('Gone'), 'deleted resource not resent as live');
  });

  it('tidegate hospital resync (the CLI) starts a run on the running node and waits for it', async () => {
    const port = hospital.port;
    await hospital.close();
    hospital = await startMedplumHospital({ name: 'rs-a-fhir', port });
    const origin = node.baseUrl.replace(/\/fhir$/, '');
    const { stdout } = await run(process.execPath, ['src/cli/main.ts', 'hospital', 'resync', '--config', 'unused.json', '--node-url', origin, '--type', 'Patient', '--wait'], { cwd: process.cwd(), timeout: 60_000 });
    const final = JSON.parse(stdout.trim().split('\n').at(-1)!) as { state: string; queued: number; types: string[] };
    assert.equal(final.state, 'done');
    assert.deepEqual(final.types, ['Patient']);
    assert.equal(final.queued, 4);
    await settled();
    assert.deepEqual(await searchIds(hospital, 'Patient').then((x) => x.length), 4);
    assert.deepEqual(await searchIds(hospital, 'Observation'), []);
    // a bad type: the CLI fails with the node's OperationOutcome, exit code 1
    await assert.rejects(run(process.execPath, ['src/cli/main.ts', 'hospital', 'resync', '--config', 'unused.json', '--node-url', origin, '--type', 'bad type'], { cwd: process.cwd(), timeout: 60_000 }), (err: { code?: number; stderr?: string }) => err.code !== 0 && /400/.test(err.stderr ?? ''));
  });
});
