/**
 * "Restart with history intact" (issue 3): writes through the FHIR API (fhirApp + FhirService +
 * Replica + SqliteStore on a real file), a crash, a reopen, and every acknowledged version read back.
 *
 * 1. In-process: the objects are dropped without closing the store, a second store opens the file.
 * 2. A real crash: the node runs in a child process that is killed with SIGKILL while writes are in
 *    flight; every write whose response had arrived must be in the reopened file.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import request from 'supertest';
import pino from 'pino';
import { fhirApp } from '../src/fhir/express.ts';
import { FhirService } from '../src/fhir/service.ts';
import { Replica } from '../src/merge/replica.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';

const FHIR = 'application/fhir+json';
const POLICY = loadMergePolicy();

let root: string;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'tidegate-store-durability-'));
});
after(() => {
  rmSync(root, { recursive: true, force: true });
});

function node(file: string) {
  const store = new SqliteStore(file);
  const replica = new Replica({ nodeId: 'node-a', store, policy: POLICY });
  const service = new FhirService(replica, () => {});
  return { store, replica, app: fhirApp(service, pino({ level: 'silent' })) };
}

/** What the API acknowledged: the version id from the ETag and the exact response bytes (null for a delete). */
interface Ack {
  key: string;
  versionId: string;
  text: string | null;
}

function etagVersion(etag: string | undefined): string {
  const m = /^W\/"([^"]+)"$/.exec(etag ?? '');
  assert.ok(m, `ETag ${etag}`);
  return m[1]!;
}

describe('restart with history intact', () => {
  it('every acknowledged version, history and vread survive a crash (objects dropped, file reopened)', async () => {
    const file = join(root, 'node-a.sqlite');
    let a: ReturnType<typeof node> | undefined = node(file);
    const acks: Ack[] = [];
    const put = async (type: string, id: string, body: object, headers: Record<string, string> = {}) => {
      const res = await request(a!.app).put(`/fhir/${type}/${id}`).set('Content-Type', FHIR).set(headers).send(JSON.stringify(body));
      assert.ok(res.status === 200 || res.status === 201, `PUT ${type}/${id}: ${res.status} ${res.text}`);
      acks.push({ key: `${type}/${id}`, versionId: etagVersion(res.headers.etag), text: res.text });
      return res;
    };
    const patient = { resourceType: 'Patient', id: 'p1', name: [{ family: 'Tester', given: ['Ada'] }], gender: 'female' };
    const first = await put('Patient', 'p1', patient);
    for (let i = 0; i < 8; i++) await put('Patient', 'p1', { ...patient, birthDate: `1980-01-0${i + 1}`, active: i % 2 === 0 });
    // A stale client (If-Match: the first version) changes gender: merged, the birthDate stays.
    await put('Patient', 'p1', { ...patient, gender: 'other' }, { 'If-Match': first.headers.etag! });
    const obs = '{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"Hb"},"valueQuantity":{"value":1.50,"unit":"g/dL"}}';
    const o = await request(a.app).put('/fhir/Observation/o1').set('Content-Type', FHIR).send(obs).expect(201);
    acks.push({ key: 'Observation/o1', versionId: etagVersion(o.headers.etag), text: o.text });
    const created = await request(a.app).post('/fhir/Patient').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', gender: 'male' })).expect(201);
    acks.push({ key: `Patient/${created.body.id}`, versionId: etagVersion(created.headers.etag), text: created.text });
    await put('Patient', 'p2', { resourceType: 'Patient', id: 'p2', gender: 'male' });
    const del = await request(a.app).delete('/fhir/Patient/p2').expect(204);
    acks.push({ key: 'Patient/p2', versionId: etagVersion(del.headers.etag), text: null });
    const historyBefore = (await request(a.app).get('/fhir/Patient/p1/_history').expect(200)).text;
    const conflictsBefore = (await request(a.app).get('/fhir/Patient/p1/$conflicts').expect(200)).text;

    // Crash: nothing is closed or flushed; the objects are simply dropped.
    a = undefined;
    const b = node(file);

    for (const ack of acks) {
      const [type, id] = ack.key.split('/') as [string, string];
      const res = await request(b.app).get(`/fhir/${type}/${id}/_history/${ack.versionId}`);
      if (ack.text === null) assert.equal(res.status, 410, `${ack.key} version ${ack.versionId} is the deletion`);
      else {
        assert.equal(res.status, 200, `vread ${ack.key}/_history/${ack.versionId}`);
        assert.equal(res.text, ack.text, `vread ${ack.key}/_history/${ack.versionId} is byte-identical`);
      }
    }
    const p1 = acks.filter((x) => x.key === 'Patient/p1');
    const read = await request(b.app).get('/fhir/Patient/p1').expect(200);
    assert.equal(read.text, p1[p1.length - 1]!.text, 'read returns the last acknowledged version');
    const hist = await request(b.app).get('/fhir/Patient/p1/_history').expect(200);
    const sansHost = (t: string) => t.replace(/http:\/\/127\.0\.0\.1:\d+/g, 'BASE');
    assert.equal(sansHost(hist.text), sansHost(historyBefore), 'the history Bundle is unchanged (but for the test server port)');
    assert.deepEqual(
      hist.body.entry.map((e: { response: { etag: string } }) => etagVersion(e.response.etag)),
      p1.map((x) => x.versionId).reverse(),
      'history lists every acknowledged version, newest first',
    );
    assert.equal((await request(b.app).get('/fhir/Patient/p1/$conflicts').expect(200)).text, conflictsBefore);
    assert.match((await request(b.app).get('/fhir/Observation/o1').expect(200)).text, /"value":1\.50[,}]/);
    await request(b.app).get('/fhir/Patient/p2').expect(410);

    // The restarted node keeps working: a write against an old version merges (its document is
    // rebuilt from the stored keyframe and deltas).
    const stale = await request(b.app)
      .put('/fhir/Patient/p1')
      .set('Content-Type', FHIR)
      .set('If-Match', `W/"${p1[2]!.versionId}"`)
      .send(JSON.stringify({ ...patient, name: [{ family: 'Tester', given: ['Ada', 'Mae'] }], birthDate: '1980-01-02', active: true }))
      .expect(200);
    assert.deepEqual(stale.body.name[0].given, ['Ada', 'Mae']);
    assert.equal(stale.body.birthDate, '1980-01-08', 'the later birthDate written after that version is kept');
    assert.equal(stale.body.gender, 'other');
    b.store.close();
  });

  it('a node killed with SIGKILL mid-stream loses no acknowledged write', async () => {
    const file = join(root, 'killed.sqlite');
    const src = (p: string) => new URL(`../src/${p}`, import.meta.url).href;
    const child = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `
        import pino from 'pino';
        import { SqliteStore } from ${JSON.stringify(src('store/sqlite-store.ts'))};
        import { Replica } from ${JSON.stringify(src('merge/replica.ts'))};
        import { loadMergePolicy } from ${JSON.stringify(src('merge/policy.ts'))};
        import { FhirService } from ${JSON.stringify(src('fhir/service.ts'))};
        import { fhirApp } from ${JSON.stringify(src('fhir/express.ts'))};
        const store = new SqliteStore(process.env.TIDEGATE_TEST_STORE);
        const replica = new Replica({ nodeId: 'node-a', store, policy: loadMergePolicy() });
        const app = fhirApp(new FhirService(replica, () => {}), pino({ level: 'silent' }));
        const server = app.listen(0, '127.0.0.1', () => process.stdout.write(JSON.stringify({ port: server.address().port }) + '\\n'));
        `,
      ],
      { cwd: new URL('..', import.meta.url), env: { ...process.env, TIDEGATE_TEST_STORE: file }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
    try {
      const port = await new Promise<number>((resolve, reject) => {
        const rl = createInterface({ input: child.stdout });
        rl.once('line', (line) => resolve((JSON.parse(line) as { port: number }).port));
        child.once('exit', () => reject(new Error(`child exited before listening: ${stderr}`)));
      });
      const base = `http://127.0.0.1:${port}/fhir`;
      const acks: Ack[] = [];
      const KILL_AFTER = 40;
      let killed = false;
      // 4 writers, each editing its own Patient as fast as answers come back; the kill lands mid-stream.
      const writer = async (w: number) => {
        for (let i = 0; !killed; i++) {
          const body = { resourceType: 'Patient', id: `k${w}`, gender: i % 2 ? 'male' : 'female', birthDate: `19${String(10 + (i % 90)).padStart(2, '0')}-01-01` };
          let res: Response;
          let text: string;
          try {
            res = await fetch(`${base}/Patient/k${w}`, { method: 'PUT', headers: { 'Content-Type': FHIR }, body: JSON.stringify(body) });
            text = await res.text();
          } catch {
            return; // the server is gone
          }
          assert.ok(res.status === 200 || res.status === 201, `PUT: ${res.status} ${text}`);
          acks.push({ key: `Patient/k${w}`, versionId: etagVersion(res.headers.get('etag') ?? undefined), text });
          if (acks.length >= KILL_AFTER && !killed) {
            killed = true;
            child.kill('SIGKILL');
          }
        }
      };
      await Promise.all([0, 1, 2, 3].map(writer));
      assert.equal(await exited, 'SIGKILL');
      assert.ok(acks.length >= KILL_AFTER);

      const b = node(file);
      for (const ack of acks) {
        const v = b.replica.version(ack.key, ack.versionId);
        assert.ok(v, `acknowledged ${ack.key} version ${ack.versionId} survived`);
        assert.equal(v.body, ack.text, `${ack.key} version ${ack.versionId} is byte-identical`);
      }
      // Acknowledged versions are in history order, and nothing after them is half-written.
      for (const key of new Set(acks.map((x) => x.key))) {
        const ids = b.replica.history(key).map((v) => v.versionId).reverse();
        const acked = acks.filter((x) => x.key === key).map((x) => x.versionId);
        assert.deepEqual(ids.slice(0, acked.length), acked, `${key}: history starts with the acknowledged versions`);
        assert.ok(ids.length <= acked.length + 1, `${key}: at most the one in-flight write beyond the acknowledged ones`);
        const res = await request(b.app).get(`/fhir/${key}`).expect(200);
        assert.equal(etagVersion(res.headers.etag), ids[ids.length - 1]);
      }
      b.store.close();
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    }
  });
});
