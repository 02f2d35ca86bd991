/**
 * PgStore (src/store/pg-store.ts) against the real PostgreSQL at 127.0.0.1:5432, database `test`
 * (override with TIDEGATE_TEST_PG_URL). Every store gets a schema of its own under a prefix unique to
 * this run; all of them are dropped at the end. Skips (with the reason) when PostgreSQL is not
 * reachable. The reference for every comparison is the same write sequence on a MemoryStore replica.
 *
 * Connection failures are made with a TCP proxy between the store and PostgreSQL that can refuse
 * connections, or cut a connection just before or just after a `COMMIT` (the server committed,
 * the answer is lost).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import pg from 'pg';
import pino from 'pino';
import request from 'supertest';
import * as Y from 'yjs';
import { parseFhirJson, canonicalStringify } from '../src/fhir/json.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { FhirService } from '../src/fhir/service.ts';
import { fhirApp } from '../src/fhir/express.ts';
import { Replica } from '../src/merge/replica.ts';
import { HybridLogicalClock } from '../src/merge/hlc.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { MemoryStore } from '../src/store/store.ts';
import type { ResourceStore } from '../src/store/store.ts';
import { PgStore, StoreUnavailableError } from '../src/store/pg-store.ts';
import type { PgStoreOptions } from '../src/store/pg-store.ts';
import { BodyCodec } from '../src/store/codec.ts';
import { TidegateNode } from '../src/node/node.ts';
import { generateNodeKeys } from '../src/envelope/index.ts';
import { createKeyStore, keyStoreToSecretKeys, retireKey, rotateKeyStore, writeKeyStoreFiles } from '../src/envelope/keys.ts';
import type { KeyStore } from '../src/envelope/keys.ts';
import { ResourceShreddedError } from '../src/store/sqlite-store.ts';
import { KeyVault, KeyVaultError } from '../src/store/vault.ts';
import { shredPatient } from '../src/store/shred.ts';
import { runRewrap, runShred } from '../src/cli/shred.ts';
import { HospitalClient, startMedplumHospital } from '../src/hospital/index.ts';
import { SYNTHEA_DIR } from './fixtures/synthea.ts';

const PG_URL = process.env.TIDEGATE_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379/0';
const POLICY = loadMergePolicy();
const PATIENT = readFileSync(new URL('./fixtures/merge/patient-base.json', import.meta.url), 'utf8');
const KEY = 'Patient/pat-merge-1';
const PREFIX = `tg_test_${process.pid}_${Date.now().toString(36)}`;

async function pgReachable(): Promise<string | undefined> {
  const c = new pg.Client({ connectionString: PG_URL, connectionTimeoutMillis: 3000 });
  try {
    await c.connect();
    await c.query('SELECT 1');
    return undefined;
  } catch (err) {
    return `PostgreSQL not reachable at ${PG_URL} (${(err as Error).message}); start it (database "test", user postgres) to run these tests`;
  } finally {
    await c.end().catch(() => {});
  }
}
const SKIP = await pgReachable();
if (SKIP) console.log(`# store-pg: skipped: ${SKIP}`);

let admin: pg.Pool;
let n = 0;
const opened: PgStore[] = [];
/** A fresh schema name of this run. */
function schema(): string {
  return `${PREFIX}_${n++}`;
}
async function openStore(s: string, opts: Partial<PgStoreOptions> = {}): Promise<PgStore> {
  const store = await PgStore.open({ url: PG_URL, schema: s, compaction: 'manual', ...opts });
  opened.push(store);
  return store;
}

function obj(text: string): FhirJsonObject {
  return parseFhirJson(text) as FhirJsonObject;
}
function edit(body: FhirJsonObject, change: (b: FhirJsonObject) => void): FhirJsonObject {
  const copy = obj(canonicalStringify(body));
  change(copy);
  return copy;
}

/** A replica of node `nodeId` over `store` and a reference replica over a MemoryStore, sharing a clock. */
function pair(store: ResourceStore, nodeId = 'a') {
  let wall = 1_700_000_000_000;
  const clock = () => wall;
  const refStore = new MemoryStore();
  const ref = new Replica({ nodeId, store: refStore, policy: POLICY, clock: new HybridLogicalClock(clock) });
  const dut = new Replica({ nodeId, store, policy: POLICY, clock: new HybridLogicalClock(clock) });
  return {
    ref,
    refStore,
    dut,
    write(key: string, body: FhirJsonObject | null, baseVersionId?: string) {
      wall += 1000;
      const o = baseVersionId ? { baseVersionId } : {};
      const a = ref.write(key, body, o);
      const b = dut.write(key, body, o);
      assert.equal(b.version.versionId, a.version.versionId);
      return b;
    },
  };
}

/** Asserts that `store` holds exactly what the reference replica holds for `keys`: versions, bodies, documents. */
function assertSame(ref: Replica, store: ResourceStore, keys: Iterable<string>, states = true): void {
  const r = new Replica({ nodeId: ref.nodeId, store, policy: POLICY });
  for (const key of keys) {
    const want = ref.history(key);
    const got = r.history(key);
    assert.deepEqual(got.map((v) => v.versionId), want.map((v) => v.versionId), `${key}: version ids`);
    for (let i = 0; i < want.length; i++) {
      assert.equal(got[i]!.body, want[i]!.body, `${key}: body of ${want[i]!.versionId}`);
      assert.equal(got[i]!.lastUpdated, want[i]!.lastUpdated);
      assert.equal(got[i]!.deleted, want[i]!.deleted);
      if (states) assert.ok(Buffer.compare(Y.encodeStateVectorFromUpdate(got[i]!.state), Y.encodeStateVectorFromUpdate(want[i]!.state)) === 0, `${key}: document of ${want[i]!.versionId}`);
    }
  }
}

/** Rows of a schema's tables, read directly (not through a store). */
async function rows(s: string, sql: string, params: unknown[] = []): Promise<Array<Record<string, unknown>>> {
  return (await admin.query(sql.replaceAll('$S', `"${s}"`), params)).rows;
}

// ---- a TCP proxy in front of PostgreSQL that fails on demand ----

type ProxyMode = 'pass' | 'cut-before-commit' | 'cut-after-commit';
interface Proxy {
  port: number;
  url: string;
  mode: ProxyMode;
  /** Connections cut by a `cut-*` mode so far. */
  cuts: number;
  down(): Promise<void>;
  up(): Promise<void>;
  close(): Promise<void>;
}

async function startProxy(): Promise<Proxy> {
  const sockets = new Set<net.Socket>();
  let server: net.Server | undefined;
  const proxy: Proxy = {
    port: 0,
    url: '',
    mode: 'pass',
    cuts: 0,
    async down() {
      for (const s of sockets) s.destroy();
      sockets.clear();
      await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
      server = undefined;
    },
    async up() {
      server = net.createServer((client) => {
        const upstream = net.connect(5432, '127.0.0.1');
        sockets.add(client);
        sockets.add(upstream);
        const kill = () => {
          client.destroy();
          upstream.destroy();
        };
        client.on('error', kill);
        upstream.on('error', kill);
        client.on('close', kill);
        upstream.on('close', kill);
        let buf = Buffer.alloc(0);
        let typed = false;
        let dropReplies = false;
        upstream.on('data', (d) => {
          if (dropReplies) {
            // The server has answered COMMIT: lose the answer and the connection.
            proxy.cuts++;
            kill();
            return;
          }
          client.write(d);
        });
        client.on('data', (d) => {
          buf = Buffer.concat([buf, d]);
          for (;;) {
            if (!typed) {
              if (buf.length < 8) return;
              const len = buf.readInt32BE(0);
              if (buf.length < len) return;
              const code = buf.readInt32BE(4);
              upstream.write(buf.subarray(0, len));
              buf = buf.subarray(len);
              if (code !== 80877103) typed = true; // not an SSLRequest: the startup message
              continue;
            }
            if (buf.length < 5) return;
            const len = buf.readInt32BE(1) + 1;
            if (buf.length < len) return;
            const msg = buf.subarray(0, len);
            buf = buf.subarray(len);
            const isCommit = msg[0] === 0x51 && msg.subarray(5).toString('utf8').startsWith('COMMIT');
            if (isCommit && proxy.mode === 'cut-before-commit') {
              proxy.mode = 'pass';
              proxy.cuts++;
              kill();
              return;
            }
            upstream.write(msg);
            if (isCommit && proxy.mode === 'cut-after-commit') {
              proxy.mode = 'pass';
              dropReplies = true;
            }
          }
        });
      });
      await new Promise<void>((r) => server!.listen(proxy.port, '127.0.0.1', () => r()));
      proxy.port = (server.address() as net.AddressInfo).port;
      proxy.url = `postgres://postgres@127.0.0.1:${proxy.port}/test`;
    },
    async close() {
      await proxy.down();
    },
  };
  await proxy.up();
  return proxy;
}

async function until(cond: () => boolean | Promise<boolean>, what: string, ms = 60000): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('PgStore (PostgreSQL)', { skip: SKIP }, () => {
  before(() => {
    admin = new pg.Pool({ connectionString: PG_URL, max: 2 });
  });
  after(async () => {
    for (const s of opened) await s.close().catch(() => {});
    const left = await admin.query('SELECT nspname FROM pg_namespace WHERE nspname LIKE $1', [`${PREFIX}%`]);
    for (const r of left.rows) await admin.query(`DROP SCHEMA "${String(r.nspname)}" CASCADE`);
    const after = await admin.query('SELECT count(*)::int AS n FROM pg_namespace WHERE nspname LIKE $1', [`${PREFIX}%`]);
    await admin.end();
    assert.equal(after.rows[0].n, 0, 'test schemas dropped');
  });

  it('creates its schema idempotently, with a schema version, and refuses another schema version', async () => {
    const s = schema();
    const a = await openStore(s);
    await a.close();
    const b = await openStore(s);
    const meta = await rows(s, 'SELECT name, value FROM $S.tidegate_meta ORDER BY name');
    assert.deepEqual(meta, [{ name: 'schema', value: '2' }, { name: 'sealed', value: '0' }, { name: 'writer_epoch', value: '2' }]);
    assert.equal(b.epoch, 2);
    await b.close();
    await admin.query(`UPDATE "${s}".tidegate_meta SET value = '99' WHERE name = 'schema'`);
    await assert.rejects(openStore(s), (err: Error) => (err as { code?: string }).code === 'ERR_STORE_FORMAT' && /version 99/.test(err.message));
    // A schema of the unsealed layout (version 1) is refused with the way out, and left as it was.
    await admin.query(`UPDATE "${s}".tidegate_meta SET value = '1' WHERE name = 'schema'`);
    await assert.rejects(openStore(s), (err: Error) => (err as { code?: string }).code === 'ERR_STORE_FORMAT' && /version 1\b/.test(err.message) && /anti-entropy/.test(err.message));
    assert.equal((await rows(s, "SELECT value FROM $S.tidegate_meta WHERE name = 'schema'"))[0]!.value, '1');
    // Two openers at once: both succeed (advisory lock around CREATE … IF NOT EXISTS).
    const s2 = schema();
    const [x, y] = await Promise.all([openStore(s2), openStore(s2)]);
    assert.notEqual(x.epoch, y.epoch);
    await x.close();
    await y.close();
  });

  it('round-trips every Synthea resource (V2 documents, bodies byte-identical) across a reopen', { timeout: 600000 }, async (t) => {
    if (!existsSync(SYNTHEA_DIR)) {
      t.skip(`Synthea sample not found at ${SYNTHEA_DIR} (../shared/data/synthea-10 relative to the repository root)`);
      return;
    }
    const s = schema();
    const store = await openStore(s);
    const p = pair(store);
    const keys: string[] = [];
    const edited: string[] = [];
    for (const file of readdirSync(SYNTHEA_DIR).filter((f) => f.endsWith('.ndjson') && f !== 'log.ndjson').sort()) {
      for (const line of readFileSync(SYNTHEA_DIR + file, 'utf8').split('\n')) {
        if (line.trim() === '') continue;
        const body = obj(line);
        const key = `${String(body.resourceType)}/${String(body.id)}`;
        p.write(key, body);
        keys.push(key);
        if (body.resourceType === 'Patient') {
          p.write(key, edit(body, (b) => (b.active = false)));
          edited.push(key);
        }
        if (keys.length % 250 === 0) await store.durable();
      }
    }
    await store.durable();
    assert.ok(keys.length > 7000, `Synthea sample has ${keys.length} resources`);
    assert.ok(edited.length >= 10);
    // The stored documents are V2 updates (the V2→V1 conversion succeeds and gives the reference state).
    // (An unsealed store: the key column holds the UTF-8 of the key; a sealed one its HMAC tag.)
    const sample = await rows(s, "SELECT convert_from(key, 'UTF8') AS key, state FROM $S.resource WHERE key = ANY(SELECT convert_to(k, 'UTF8') FROM unnest($1::text[]) AS k)", [[keys[0], edited[0], keys[keys.length - 1]]]);
    assert.equal(sample.length, 3);
    for (const r of sample) {
      const v1 = Y.convertUpdateFormatV2ToV1(new Uint8Array(r.state as Buffer));
      assert.deepEqual(Y.encodeStateVectorFromUpdate(v1), Y.encodeStateVectorFromUpdate(p.ref.history(String(r.key))[0]!.state));
    }
    const counts = await rows(s, 'SELECT (SELECT count(*)::int FROM $S.resource) AS r, (SELECT count(*)::int FROM $S.version) AS v');
    assert.deepEqual(counts[0], { r: keys.length, v: keys.length + edited.length });
    await store.close();
    const again = await openStore(s);
    assert.equal(again.size, keys.length);
    assert.deepEqual([...again.keys()], keys);
    assertSame(p.ref, again, keys, false);
    assertSame(p.ref, again, edited, true);
  });

  it('keeps history across a restart: vread, _history, and a write against an old version', async () => {
    const s = schema();
    const store = await openStore(s);
    const p = pair(store);
    let body = obj(PATIENT);
    const ids: string[] = [p.write(KEY, body).version.versionId];
    for (let i = 0; i < 12; i++) {
      body = edit(body, (b) => (b.birthDate = `19${50 + i}-01-02`));
      ids.push(p.write(KEY, body).version.versionId);
    }
    p.write(KEY, null); // a deletion is a version too
    ids.push(p.ref.current(KEY)!.versionId);
    await store.durable();
    await store.close();

    const reopened = await openStore(s);
    assertSame(p.ref, reopened, [KEY]);
    // The restarted node continues: a stale write against version 3 merges the same way as on the reference.
    const dut = new Replica({ nodeId: 'a', store: reopened, policy: POLICY, clock: new HybridLogicalClock(() => 1_700_000_000_000 + 100_000) });
    const ref2 = new Replica({ nodeId: 'a', store: p.refStore, policy: POLICY, clock: new HybridLogicalClock(() => 1_700_000_000_000 + 100_000) });
    const stale = edit(obj(PATIENT), (b) => (b.gender = 'other'));
    const a = ref2.write(KEY, stale, { baseVersionId: ids[3]! });
    const b = dut.write(KEY, stale, { baseVersionId: ids[3]! });
    assert.equal(b.version.versionId, a.version.versionId);
    assert.equal(b.version.body, a.version.body);
    await reopened.durable();
    await reopened.close();
    const third = await openStore(s);
    assertSame(ref2, third, [KEY]);
  });

  it('acknowledges a write only once it is in PostgreSQL (barrier), and a new pool sees every acknowledged write', { timeout: 120000 }, async () => {
    const s = schema();
    const store = await openStore(s);
    // set() is write-behind: while its transaction cannot commit (another session holds the
    // writer-epoch row), the barrier stays pending and the row is not there; then both follow.
    const lock = await admin.connect();
    await lock.query('BEGIN');
    await lock.query(`SELECT value FROM "${s}".tidegate_meta WHERE name = 'writer_epoch' FOR UPDATE`);
    const p = pair(store);
    p.write('Patient/barrier-0', edit(obj(PATIENT), (b) => (b.id = 'barrier-0')));
    let settled = false;
    const barrier = store.durable().then(() => {
      settled = true;
    });
    assert.equal(store.unsettled('Patient/barrier-0'), true);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(settled, false, 'the barrier waits for the COMMIT');
    assert.equal((await rows(s, 'SELECT key FROM $S.resource')).length, 0, 'not committed yet');
    await lock.query('COMMIT');
    lock.release();
    await barrier;
    assert.equal(store.unsettled('Patient/barrier-0'), false);
    assert.equal((await rows(s, 'SELECT key FROM $S.resource')).length, 1);

    // Through the HTTP edge: every 201/200 is answered after its rows are committed.
    const replica = new Replica({ nodeId: 'a', store, policy: POLICY });
    const app = fhirApp(new FhirService(replica, () => {}, { durable: () => store.durable() }), pino({ level: 'silent' }));
    const acked = new Map<string, string>();
    await Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        const id = `barrier-${1 + (i % 10)}`;
        const res = await request(app).put(`/fhir/Patient/${id}`).set('content-type', 'application/fhir+json').send(canonicalStringify(edit(obj(PATIENT), (b) => {
          b.id = id;
          b.birthDate = `19${10 + i}-03-04`;
        })));
        assert.ok(res.status === 200 || res.status === 201, `status ${res.status}`);
        const vid = /W\/"([^"]+)"/.exec(String(res.headers.etag))![1]!;
        // Committed at the time of the answer: the version row is there.
        const found = await rows(s, "SELECT seq FROM $S.version WHERE key = convert_to($1, 'UTF8') AND split_part(convert_from(meta, 'UTF8'), E'\\n', 1) = $2", [`Patient/${id}`, vid]);
        assert.equal(found.length, 1, `acknowledged version ${vid} of ${id} is in PostgreSQL`);
        acked.set(`Patient/${id}/${vid}`, res.text);
      }),
    );
    // "Crash": the first store is abandoned without close; a new pool opens the schema.
    const fresh = await openStore(s);
    const r = new Replica({ nodeId: 'a', store: fresh, policy: POLICY });
    for (const [k, text] of acked) {
      const [type, id, vid] = k.split('/') as [string, string, string];
      assert.equal(r.version(`${type}/${id}`, vid)?.body, text, `${k} reads back byte-identical`);
    }
    assertSame(replica, fresh, [...replica.keys()]);
    // The abandoned store is fenced: its next write is refused, nothing reaches the schema.
    replica.write('Patient/barrier-late', edit(obj(PATIENT), (b) => (b.id = 'barrier-late')));
    await assert.rejects(store.durable(), (err: Error) => err instanceof StoreUnavailableError && err.reason === 'fenced');
    assert.equal(store.get('Patient/barrier-late'), undefined, 'the refused write is rolled back');
    assert.equal((await rows(s, "SELECT key FROM $S.resource WHERE key = convert_to('Patient/barrier-late', 'UTF8')")).length, 0);
    assert.throws(() => replica.write('Patient/barrier-late', edit(obj(PATIENT), (b) => (b.id = 'barrier-late'))), StoreUnavailableError);
  });

  it('runs concurrent nodes on separate schemas that converge by exchanging updates', { timeout: 120000 }, async () => {
    const [sa, sb] = [schema(), schema()];
    const [A, B] = await Promise.all([openStore(sa), openStore(sb)]);
    const a = new Replica({ nodeId: 'a', store: A, policy: POLICY });
    const b = new Replica({ nodeId: 'b', store: B, policy: POLICY });
    const keys = Array.from({ length: 8 }, (_, i) => `Patient/conc-${i}`);
    for (let round = 0; round < 5; round++) {
      const updates: Array<{ to: Replica; key: string; update: Uint8Array }> = [];
      for (const [i, key] of keys.entries()) {
        const id = key.slice(8);
        const base = a.current(key)?.body ?? canonicalStringify(edit(obj(PATIENT), (x) => (x.id = id)));
        const ua = a.write(key, edit(obj(base), (x) => (x.birthDate = `19${40 + round}-0${1 + (i % 9)}-01`))).update;
        const ub = b.write(key, edit(obj(b.current(key)?.body ?? base), (x) => (x.gender = round % 2 ? 'male' : 'female'))).update;
        if (ua) updates.push({ to: b, key, update: ua });
        if (ub) updates.push({ to: a, key, update: ub });
      }
      for (const u of updates) u.to.applyRemote(u.key, u.update);
      await Promise.all([A.durable(), B.durable()]);
    }
    for (const key of keys) assert.equal(a.current(key)!.body, b.current(key)!.body, `${key} converged`);
    await Promise.all([A.close(), B.close()]);
    const [A2, B2] = await Promise.all([openStore(sa), openStore(sb)]);
    assertSame(a, A2, keys);
    assertSame(b, B2, keys);
    for (const key of keys) assert.equal(new Replica({ nodeId: 'a', store: A2, policy: POLICY }).current(key)!.body, new Replica({ nodeId: 'b', store: B2, policy: POLICY }).current(key)!.body);
    const [ca, cb] = [await rows(sa, 'SELECT count(*)::int AS n FROM $S.version'), await rows(sb, 'SELECT count(*)::int AS n FROM $S.version')];
    assert.equal(ca[0]!.n, keys.reduce((s, k) => s + a.history(k).length, 0));
    assert.equal(cb[0]!.n, keys.reduce((s, k) => s + b.history(k).length, 0));
  });

  describe('connection failures', () => {
    let proxy: Proxy;
    before(async () => {
      proxy = await startProxy();
    });
    after(async () => {
      await proxy.close();
    });

    /** A store through the proxy, an HTTP edge over it, and a write helper. */
    async function setup() {
      const s = schema();
      const errors: Error[] = [];
      const store = await openStore(s, { url: proxy.url, retryMs: 50, retryMaxMs: 200, connectTimeoutMs: 2000, onError: (e) => errors.push(e) });
      const replica = new Replica({ nodeId: 'a', store, policy: POLICY });
      const app = fhirApp(new FhirService(replica, () => {}, { durable: () => store.durable() }), pino({ level: 'silent' }));
      const put = (id: string, birthDate: string) =>
        request(app).put(`/fhir/Patient/${id}`).set('content-type', 'application/fhir+json').send(canonicalStringify(edit(obj(PATIENT), (b) => {
          b.id = id;
          b.birthDate = birthDate;
        })));
      return { s, store, replica, put, errors };
    }

    /** The cache equals what a fresh store (direct connection) reads from the schema. */
    async function assertNoDivergence(s: string, replica: Replica): Promise<void> {
      const direct = await PgStore.open({ url: PG_URL, schema: s, readOnly: true });
      assert.throws(() => direct.set('Patient/x', { state: new Uint8Array(0), versions: [] }), (err: Error) => err instanceof StoreUnavailableError && err.reason === 'read-only');
      try {
        assert.deepEqual([...direct.keys()].sort(), [...replica.keys()].sort());
        assertSame(replica, direct, [...replica.keys()]);
      } finally {
        await direct.close();
      }
    }

    it('PostgreSQL down: 503 OperationOutcome, nothing changes, writes resume after it is back', { timeout: 120000 }, async () => {
      const { s, store, replica, put, errors } = await setup();
      assert.equal((await put('down-1', '1970-01-01')).status, 201);
      const before = replica.current('Patient/down-1')!;
      await proxy.down();
      const res = await put('down-1', '1980-01-01');
      assert.equal(res.status, 503);
      assert.equal(res.body.resourceType, 'OperationOutcome');
      assert.equal(res.body.issue[0].code, 'transient');
      assert.doesNotMatch(res.text, /1980/, 'no resource content in the outcome');
      assert.equal(replica.current('Patient/down-1')!.versionId, before.versionId, 'cache rolled back to the committed version');
      assert.ok(store.unavailable instanceof StoreUnavailableError);
      assert.ok(errors.length >= 1);
      // While it is down, reads are served (from committed state) and writes are refused at once.
      assert.equal((await put('down-2', '1990-01-01')).status, 503);
      assert.equal(replica.current('Patient/down-2'), undefined);
      assert.equal(replica.history('Patient/down-1').length, 1);
      await proxy.up();
      await until(() => store.unavailable === undefined, 'recovery');
      const ok = await put('down-1', '1980-01-01');
      assert.equal(ok.status, 200);
      assert.equal(replica.history('Patient/down-1').length, 2);
      await assertNoDivergence(s, replica);
    });

    it('connection cut before COMMIT reaches the server: 503, rolled back in memory and in PostgreSQL', { timeout: 120000 }, async () => {
      const { s, store, replica, put } = await setup();
      assert.equal((await put('cut-1', '1970-01-01')).status, 201);
      const cuts = proxy.cuts;
      proxy.mode = 'cut-before-commit';
      const res = await put('cut-1', '1981-01-01');
      assert.equal(res.status, 503);
      assert.equal(proxy.cuts, cuts + 1);
      assert.equal(replica.history('Patient/cut-1').length, 1);
      await until(() => store.unavailable === undefined, 'recovery');
      assert.equal(replica.history('Patient/cut-1').length, 1, 'not committed, not in memory');
      assert.equal((await rows(s, "SELECT count(*)::int AS n FROM $S.version WHERE key = convert_to('Patient/cut-1', 'UTF8')"))[0]!.n, 1);
      await assertNoDivergence(s, replica);
      assert.equal((await put('cut-1', '1981-01-01')).status, 200);
      await assertNoDivergence(s, replica);
    });

    it('answer to COMMIT lost (the server committed): 503, then the store re-reads the key and holds what PostgreSQL holds', { timeout: 120000 }, async () => {
      const { s, store, replica, put } = await setup();
      assert.equal((await put('lost-1', '1970-01-01')).status, 201);
      const cuts = proxy.cuts;
      proxy.mode = 'cut-after-commit';
      const res = await put('lost-1', '1982-01-01');
      assert.equal(res.status, 503, 'not acknowledged: the client does not know');
      assert.equal(proxy.cuts, cuts + 1);
      assert.equal((await rows(s, "SELECT count(*)::int AS n FROM $S.version WHERE key = convert_to('Patient/lost-1', 'UTF8')"))[0]!.n, 2, 'the server did commit');
      await until(() => store.unavailable === undefined, 'recovery');
      assert.equal(replica.history('Patient/lost-1').length, 2, 'the committed version was re-read');
      assert.match(replica.current('Patient/lost-1')!.body!, /1982-01-01/);
      await assertNoDivergence(s, replica);
      // And the node goes on from there.
      assert.equal((await put('lost-1', '1983-01-01')).status, 200);
      await assertNoDivergence(s, replica);
    });
  });

  it('compacts bodies (manual and in the background) with history intact', { timeout: 120000 }, async () => {
    const s = schema();
    const store = await openStore(s, { compactAfter: 4 });
    const p = pair(store);
    let body = obj(PATIENT);
    for (let i = 0; i < 30; i++) {
      body = edit(body, (b) => (b.birthDate = `19${30 + i}-05-06`));
      p.write(KEY, body);
    }
    await store.durable();
    const plainBefore = await rows(s, 'SELECT count(*)::int AS n, sum(length(body))::int AS b FROM $S.version WHERE body_codec = $1', [BodyCodec.plain]);
    assert.equal(plainBefore[0]!.n, 30);
    const res = await store.compact();
    assert.equal(res.bodies, 29);
    assert.ok(res.bytesAfter * 5 < res.bytesBefore, `compressed ${res.bytesBefore} → ${res.bytesAfter} bytes`);
    const codecs = await rows(s, 'SELECT seq, body_codec FROM $S.version ORDER BY seq');
    assert.deepEqual(codecs.map((r) => r.body_codec).slice(0, 29).filter((c) => c === BodyCodec.plain), []);
    assert.equal(codecs[29]!.body_codec, BodyCodec.plain, 'the newest body stays plain');
    assert.ok(codecs.some((r) => r.body_codec === BodyCodec.deflateWithRef));
    assertSame(p.ref, store, [KEY]);
    await store.close();
    assertSame(p.ref, await openStore(s), [KEY]);

    // Background: the timer compacts without being asked.
    const s2 = schema();
    const bg = await openStore(s2, { compaction: 'background', compactAfter: 4, compactDelayMs: 10 });
    const q = pair(bg);
    body = obj(PATIENT);
    for (let i = 0; i < 20; i++) {
      body = edit(body, (b) => (b.birthDate = `19${30 + i}-05-06`));
      q.write(KEY, body);
      if (i % 5 === 4) await bg.durable();
    }
    await until(async () => (await rows(s2, 'SELECT count(*)::int AS n FROM $S.version WHERE body_codec = $1', [BodyCodec.plain]))[0]!.n === 1, 'background compaction');
    assertSame(q.ref, bg, [KEY]);
    await bg.close();
    assertSame(q.ref, await openStore(s2), [KEY]);
  });

  it('end to end: a node on the PostgreSQL store serves a write and keeps it and its _history across a restart', { timeout: 180000 }, async () => {
    const s = schema();
    const hospital = await startMedplumHospital({ name: 'pg-e2e-fhir' });
    const keys = generateNodeKeys('pg-e2e');
    const prefix = `tgpg${process.pid}${Date.now().toString(36)}`;
    const start = async () => {
      const store = await openStore(s);
      const node = new TidegateNode({
        secretKeys: keys.secretKeys,
        peers: [],
        redisUrl: REDIS_URL,
        queuePrefix: prefix,
        hospital: new HospitalClient({ baseUrl: hospital.url }),
        store,
        logger: pino({ level: 'silent' }),
        antiEntropyIntervalMs: 0,
        hospitalPollIntervalMs: 0,
      });
      const url = await node.start();
      return { store, node, url };
    };
    try {
      const first = await start();
      const body = edit(obj(PATIENT), (b) => (b.id = 'pg-e2e-1'));
      const base = first.url.slice(0, -'/fhir'.length);
      const r1 = await request(base).put('/fhir/Patient/pg-e2e-1').set('content-type', 'application/fhir+json').send(canonicalStringify(body));
      assert.equal(r1.status, 201);
      const r2 = await request(base).put('/fhir/Patient/pg-e2e-1').set('content-type', 'application/fhir+json').send(canonicalStringify(edit(body, (b) => (b.gender = 'other'))));
      assert.equal(r2.status, 200);
      const hist1 = await request(base).get('/fhir/Patient/pg-e2e-1/_history');
      assert.equal(hist1.body.entry.length, 2);
      await first.node.quiet();
      await first.node.stop();
      await first.store.close();

      const second = await start();
      const base2 = second.url.slice(0, -'/fhir'.length);
      const read = await request(base2).get('/fhir/Patient/pg-e2e-1');
      assert.equal(read.status, 200);
      assert.equal(read.text, r2.text);
      const hist2 = await request(base2).get('/fhir/Patient/pg-e2e-1/_history');
      assert.deepEqual(hist2.body.entry.map((e: { resource: unknown }) => e.resource), hist1.body.entry.map((e: { resource: unknown }) => e.resource));
      const v1 = /W\/"([^"]+)"/.exec(String(r1.headers.etag))![1]!;
      const vread = await request(base2).get(`/fhir/Patient/pg-e2e-1/_history/${v1}`);
      assert.equal(vread.text, r1.text, 'vread of the first version after the restart is byte-identical');
      await second.node.stop();
      await second.store.close();
    } finally {
      await hospital.close();
    }
  });

  describe('sealed at rest (node keys, key vault file)', () => {
    const FAMILY = 'Quillfeatherstonehaugh';
    const OTHER_FAMILY = 'Brightwaterlow';
    let dir: string;
    before(() => {
      dir = mkdtempSync(join(tmpdir(), 'tidegate-pg-sealed-'));
    });
    after(() => {
      rmSync(dir, { recursive: true, force: true });
    });
    let v = 0;
    const vaultFile = (): string => join(dir, `v${v++}.keys`);

    /** Patient P (to shred) with its compartment, Patient Q, several versions, some compacted. */
    function populate(p: ReturnType<typeof pair>): { pKeys: string[]; qKeys: string[] } {
      let patient = obj(JSON.stringify({ resourceType: 'Patient', id: 'pat-s', name: [{ family: FAMILY, given: ['Ottoline'] }], birthDate: '1950-02-03' }));
      p.write('Patient/pat-s', patient);
      for (let i = 0; i < 6; i++) {
        patient = edit(patient, (b) => (b.birthDate = `19${51 + i}-02-03`));
        p.write('Patient/pat-s', patient);
      }
      p.write('Observation/obs-s1', obj(JSON.stringify({ resourceType: 'Observation', id: 'obs-s1', status: 'final', code: { text: 'glucose' }, subject: { reference: 'Patient/pat-s' }, valueString: `${FAMILY}-reading` })));
      p.write('Patient/pat-t', obj(JSON.stringify({ resourceType: 'Patient', id: 'pat-t', name: [{ family: OTHER_FAMILY }] })));
      return { pKeys: ['Patient/pat-s', 'Observation/obs-s1'], qKeys: ['Patient/pat-t'] };
    }

    /** Every byte of every column of every table of schema `s` (SELECT *), as one Buffer. */
    async function rawBytes(s: string): Promise<Buffer> {
      const tables = await admin.query('SELECT table_name FROM information_schema.tables WHERE table_schema = $1', [s]);
      const parts: Buffer[] = [];
      for (const t of tables.rows) {
        for (const row of (await admin.query(`SELECT * FROM "${s}"."${String(t.table_name)}"`)).rows) {
          for (const value of Object.values(row as Record<string, unknown>)) {
            if (value === null || value === undefined) continue;
            parts.push(Buffer.isBuffer(value) ? value : Buffer.from(String(value), 'utf8'));
          }
        }
      }
      return Buffer.concat(parts);
    }

    it('raw table bytes hold no plaintext (key, ids, names, bodies, documents); an unsealed store does (control)', { timeout: 120000 }, async () => {
      const sk = keyStoreToSecretKeys(createKeyStore('pg-seal-a'));
      const s = schema();
      const sealed = await openStore(s, { secretKeys: sk, keyVaultFile: vaultFile() });
      assert.equal(sealed.sealed, true);
      const p = pair(sealed);
      populate(p);
      await sealed.compact();
      await sealed.durable();
      const raw = await rawBytes(s);
      assert.ok(raw.length > 2000, `read ${raw.length} bytes`);
      for (const needle of [FAMILY, OTHER_FAMILY, 'Ottoline', 'Patient/pat-s', 'pat-s', 'obs-s1', 'Observation', '1956-02-03', p.ref.current('Patient/pat-s')!.versionId]) {
        assert.equal(raw.indexOf(Buffer.from(needle, 'utf8')), -1, `"${needle}" in the raw tables of the sealed store`);
      }
      const meta = await rows(s, "SELECT value FROM $S.tidegate_meta WHERE name = 'sealed'");
      assert.equal(meta[0]!.value, '1');
      assertSame(p.ref, sealed, ['Patient/pat-s', 'Observation/obs-s1', 'Patient/pat-t']);
      // The same writes unsealed: the test above can fail.
      const s2 = schema();
      const plain = await openStore(s2);
      const q = pair(plain);
      populate(q);
      await plain.durable();
      const rawPlain = await rawBytes(s2);
      assert.notEqual(rawPlain.indexOf(Buffer.from(FAMILY, 'utf8')), -1, 'control: the unsealed store holds the family name');
      assert.notEqual(rawPlain.indexOf(Buffer.from('Patient/pat-s', 'utf8')), -1, 'control: the unsealed store holds the key');
      // A sealed schema is not opened without keys, nor an unsealed one with keys.
      await sealed.close();
      await assert.rejects(openStore(s), (err: Error) => (err as { code?: string }).code === 'ERR_STORE_FORMAT' && /sealed/.test(err.message));
      // Nor with another (e.g. a new, empty) key vault: every row would be unreadable, so the open is refused.
      await assert.rejects(openStore(s, { secretKeys: sk, keyVaultFile: vaultFile() }), (err: Error) => (err as { code?: string }).code === 'ERR_STORE_FORMAT' && /not the key vault/.test(err.message));
      await plain.close();
      await assert.rejects(openStore(s2, { secretKeys: sk, keyVaultFile: vaultFile() }), (err: Error) => (err as { code?: string }).code === 'ERR_STORE_FORMAT' && /plaintext/.test(err.message));
    });

    it('restarts after a key rotation (re-wrap at open, payloads untouched), and after the old key is retired', { timeout: 120000 }, async () => {
      const ks = createKeyStore('pg-seal-b');
      const sk = keyStoreToSecretKeys(ks);
      const vf = vaultFile();
      const s = schema();
      const store = await openStore(s, { secretKeys: sk, keyVaultFile: vf });
      const p = pair(store);
      const { pKeys, qKeys } = populate(p);
      await store.durable();
      const stateBefore = await rows(s, 'SELECT key, state FROM $S.resource ORDER BY key');
      await store.close();

      const ks2 = rotateKeyStore(ks);
      const sk2 = keyStoreToSecretKeys(ks2);
      const second = await openStore(s, { secretKeys: sk2, keyVaultFile: vf });
      assert.equal(second.keyVault!.generation.kid, sk2.kemKeyId, 're-wrapped under the new key at open');
      assertSame(p.ref, second, [...pKeys, ...qKeys]);
      assert.deepEqual(await rows(s, 'SELECT key, state FROM $S.resource ORDER BY key'), stateBefore, 'payloads not re-encrypted');
      // Writes go on after the rotation.
      const dut = new Replica({ nodeId: 'a', store: second, policy: POLICY, clock: new HybridLogicalClock(() => 1_800_000_000_000) });
      dut.write('Patient/pat-t', obj(JSON.stringify({ resourceType: 'Patient', id: 'pat-t', name: [{ family: OTHER_FAMILY }], gender: 'other' })));
      await second.durable();
      await second.close();

      const retired = keyStoreToSecretKeys(retireKey(ks2, sk.kemKeyId));
      const third = await openStore(s, { secretKeys: retired, keyVaultFile: vf });
      assertSame(p.ref, third, pKeys);
      assert.match(new Replica({ nodeId: 'a', store: third, policy: POLICY }).current('Patient/pat-t')!.body!, /"gender":"other"/);
      await third.close();
      // The old key alone no longer opens the vault (it was re-wrapped, then the old key retired).
      await assert.rejects(openStore(s, { secretKeys: sk, keyVaultFile: vf }), (err: Error) => err instanceof KeyVaultError && err.code === 'ERR_VAULT_KEY_UNAVAILABLE');
    });

    it('shred: rows and content keys gone, tombstones survive a restart, a restored database backup cannot decrypt the shredded resources', { timeout: 120000 }, async () => {
      const sk = keyStoreToSecretKeys(createKeyStore('pg-seal-c'));
      const vf = vaultFile();
      const s = schema();
      const store = await openStore(s, { secretKeys: sk, keyVaultFile: vf });
      const p = pair(store);
      const { pKeys, qKeys } = populate(p);
      await store.durable();
      // A "backup" of the database taken before the shred: a copy of every table.
      const backup = schema();
      await admin.query(`CREATE SCHEMA "${backup}"`);
      for (const t of (await admin.query('SELECT table_name FROM information_schema.tables WHERE table_schema = $1', [s])).rows) {
        await admin.query(`CREATE TABLE "${backup}"."${String(t.table_name)}" (LIKE "${s}"."${String(t.table_name)}" INCLUDING ALL)`);
        await admin.query(`INSERT INTO "${backup}"."${String(t.table_name)}" OVERRIDING SYSTEM VALUE SELECT * FROM "${s}"."${String(t.table_name)}"`);
      }
      const slotOf = new Map((await rows(s, 'SELECT key, slot FROM $S.resource')).map((r) => [Buffer.from(r.key as Buffer).toString('hex'), Number(r.slot)]));
      const pSlots = pKeys.map((k) => slotOf.get(store.resourceTagHex(k))!);
      assert.ok(pSlots.every((x) => Number.isInteger(x) && x > 0));

      const report = await shredPatient('Patient/pat-s', { store, nodeId: 'pg-seal-c', requestor: 'test' });
      assert.deepEqual([...report.shredded].sort(), [...pKeys].sort());
      assert.equal(report.keysDestroyed, 2);
      for (const k of pKeys) {
        assert.equal(store.get(k), undefined);
        assert.ok(store.isShredded(k));
      }
      assert.throws(() => p.dut.write('Patient/pat-s', obj(JSON.stringify({ resourceType: 'Patient', id: 'pat-s' }))), ResourceShreddedError);
      assertSame(p.ref, store, qKeys);
      const left = await rows(s, 'SELECT key FROM $S.resource');
      assert.equal(left.length, qKeys.length);
      assert.equal((await rows(s, 'SELECT count(*)::int AS n FROM $S.version WHERE NOT (key = ANY($1::bytea[]))', [left.map((r) => r.key)]))[0]!.n, 0, 'no version row of a shredded resource');
      assert.equal((await rows(s, 'SELECT count(*)::int AS n FROM $S.shred_pending'))[0]!.n, 0);
      const audit = await store.auditEvents();
      assert.equal((audit[0] as { id: string }).id, report.auditEvent.id);
      assert.doesNotMatch(JSON.stringify(audit), /pat-s|Quillfeather/);
      for (const slot of pSlots) assert.throws(() => store.keyVault!.contentKey(slot), (err: Error) => err instanceof KeyVaultError && err.code === 'ERR_CONTENT_KEY_DESTROYED');
      await store.close();

      // Restart: still shredded, the others intact.
      const again = await openStore(s, { secretKeys: sk, keyVaultFile: vf });
      assert.ok(again.isShredded('Patient/pat-s'));
      assert.equal(again.get('Observation/obs-s1'), undefined);
      assert.deepEqual([...again.keys()], qKeys);
      await again.close();

      // The backup restored next to the vault: the shredded resources cannot be decrypted, the rest can.
      const restored = await openStore(backup, { secretKeys: sk, keyVaultFile: vf });
      assert.deepEqual([...restored.keys()], qKeys);
      assert.equal(restored.unreadableAtOpen, pKeys.length);
      assertSame(p.ref, restored, qKeys);
      await restored.close();
      const vault = new KeyVault(vf, { secretKeys: sk });
      try {
        for (const slot of pSlots) assert.equal(vault.wrappedKey(slot), undefined, 'the wrapped content key is gone from the vault');
      } finally {
        vault.close();
      }
    });

    it('tidegate shred and keys rewrap on a PostgreSQL node (config keyVaultFile)', { timeout: 120000 }, async () => {
      const ks: KeyStore = createKeyStore('pg-cli');
      const keyDir = join(dir, 'keys-cli');
      mkdirSync(keyDir, { recursive: true });
      await writeKeyStoreFiles(keyDir, ks);
      const s = schema();
      const cfgFile = join(dir, 'pg-cli.json');
      writeFileSync(cfgFile, JSON.stringify({ nodeId: 'pg-cli', hospitalFhirUrl: 'http://127.0.0.1:1/fhir', secretKeyFile: 'keys-cli/pg-cli.secret.json', storeUrl: PG_URL, storeSchema: s, keyVaultFile: 'pg-cli.keys' }));
      const store = await openStore(s, { secretKeys: keyStoreToSecretKeys(ks), keyVaultFile: join(dir, 'pg-cli.keys') });
      const p = pair(store);
      const { pKeys, qKeys } = populate(p);
      await store.durable();
      // While the node holds its vault, the CLI refuses (and does not fence the node).
      await assert.rejects(runShred('Patient/pat-s', { config: cfgFile, redis: false }), (err: Error) => (err as { code?: string }).code === 'ERR_VAULT_IN_USE');
      const epoch = Number((await rows(s, "SELECT value FROM $S.tidegate_meta WHERE name = 'writer_epoch'"))[0]!.value);
      assert.equal(epoch, store.epoch, 'the running store was not fenced');
      await store.close();
      const report = (await runShred('Patient/pat-s', { config: cfgFile, redis: false })) as { shredded: string[]; keysDestroyed: number };
      assert.deepEqual([...report.shredded].sort(), [...pKeys].sort());
      assert.equal(report.keysDestroyed, 2);
      // Rotate, re-wrap offline, retire the old key: the store opens with the new key alone.
      const ks2 = rotateKeyStore(ks);
      await writeKeyStoreFiles(keyDir, ks2, { overwrite: true });
      const rewrap = await runRewrap({ config: cfgFile });
      assert.equal(rewrap.to.kid, keyStoreToSecretKeys(ks2).kemKeyId);
      assert.ok(rewrap.keys >= 2);
      const retired = retireKey(ks2, keyStoreToSecretKeys(ks).kemKeyId);
      const reopened = await openStore(s, { secretKeys: keyStoreToSecretKeys(retired), keyVaultFile: join(dir, 'pg-cli.keys') });
      assert.deepEqual([...reopened.keys()], qKeys);
      assert.ok(reopened.isShredded('Patient/pat-s'));
      assertSame(p.ref, reopened, qKeys);
      await reopened.close();
    });

    it('POST /admin/shred on a node with a sealed PostgreSQL store: 200, then 404 / 410 OperationOutcomes', { timeout: 180000 }, async () => {
      const s = schema();
      const hospital = await startMedplumHospital({ name: 'pg-shred-fhir' });
      const keys = keyStoreToSecretKeys(createKeyStore('pg-shred'));
      const prefix = `tgpgs${process.pid}${Date.now().toString(36)}`;
      const store = await openStore(s, { secretKeys: keys, keyVaultFile: vaultFile() });
      const node = new TidegateNode({
        secretKeys: keys,
        peers: [],
        redisUrl: REDIS_URL,
        queuePrefix: prefix,
        hospital: new HospitalClient({ baseUrl: hospital.url }),
        store,
        logger: pino({ level: 'silent' }),
        antiEntropyIntervalMs: 0,
        hospitalPollIntervalMs: 0,
      });
      try {
        const base = (await node.start()).slice(0, -'/fhir'.length);
        const put = (res: Record<string, unknown>) => request(base).put(`/fhir/${String(res.resourceType)}/${String(res.id)}`).set('content-type', 'application/fhir+json').send(JSON.stringify(res));
        assert.equal((await put({ resourceType: 'Patient', id: 'pat-h', name: [{ family: FAMILY }] })).status, 201);
        assert.equal((await put({ resourceType: 'Observation', id: 'obs-h', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/pat-h' } })).status, 201);
        assert.equal((await put({ resourceType: 'Patient', id: 'pat-i', name: [{ family: OTHER_FAMILY }] })).status, 201);
        const res = await request(base).post('/admin/shred/Patient/pat-h');
        assert.equal(res.status, 200);
        assert.equal(res.body.resourcesShredded, 2);
        assert.equal(res.body.keysDestroyed, 2);
        const read = await request(base).get('/fhir/Patient/pat-h');
        assert.equal(read.status, 404);
        assert.equal(read.body.resourceType, 'OperationOutcome');
        const write = await put({ resourceType: 'Patient', id: 'pat-h', name: [{ family: 'Again' }] });
        assert.equal(write.status, 410);
        assert.equal(write.body.issue[0].code, 'deleted');
        assert.equal((await request(base).get('/fhir/Patient/pat-i')).status, 200);
        const raw = await rawBytes(s);
        assert.equal(raw.indexOf(Buffer.from(OTHER_FAMILY, 'utf8')), -1);
        await node.quiet();
      } finally {
        await node.stop();
        await hospital.close();
        const r = new (await import('ioredis')).Redis(REDIS_URL);
        const left = await r.keys(`${prefix}:*`);
        if (left.length > 0) await r.del(...left);
        r.disconnect();
      }
    });
  });
});
