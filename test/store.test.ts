/**
 * SqliteStore (src/store/sqlite-store.ts) against real files under os.tmpdir(): round trips, V2
 * bytes on disk, version history as keyframes + deltas, compaction, held-back updates, errors.
 * The reference for every comparison is the same write sequence on a MemoryStore replica.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import * as Y from 'yjs';
import { parseFhirJson, canonicalStringify } from '../src/fhir/json.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { Replica } from '../src/merge/replica.ts';
import { HybridLogicalClock } from '../src/merge/hlc.ts';
import { loadDoc, render, versionIdOf } from '../src/merge/doc.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { MemoryStore } from '../src/store/store.ts';
import type { ResourceStore, VersionRecord } from '../src/store/store.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import type { SqliteStoreOptions } from '../src/store/sqlite-store.ts';
import { BodyCodec, compressBody, decodeBody, decodeUpdateList, encodeUpdateList, toV1, toV2 } from '../src/store/codec.ts';
import { openStore } from '../src/store/open.ts';
import { loadNodeConfig } from '../src/config/config.ts';

const POLICY = loadMergePolicy();
const PATIENT = readFileSync(new URL('./fixtures/merge/patient-base.json', import.meta.url), 'utf8');
const KEY = 'Patient/pat-merge-1';

let root: string;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'tidegate-store-test-'));
});
after(() => {
  rmSync(root, { recursive: true, force: true });
});
let n = 0;
/** A fresh database path under the suite's temporary folder. */
function dbPath(): string {
  return join(root, `s${n++}.sqlite`);
}

function obj(text: string): FhirJsonObject {
  return parseFhirJson(text) as FhirJsonObject;
}
function edit(body: FhirJsonObject, change: (b: FhirJsonObject) => void): FhirJsonObject {
  const copy = obj(canonicalStringify(body));
  change(copy);
  return copy;
}

/** Two replicas of node `a` in lockstep: one over a MemoryStore (the reference), one over `store`. */
function pair(store: ResourceStore) {
  let wall = 1_700_000_000_000;
  const clock = () => wall;
  const ref = new Replica({ nodeId: 'a', store: new MemoryStore(), policy: POLICY, clock: new HybridLogicalClock(clock) });
  const dut = new Replica({ nodeId: 'a', store, policy: POLICY, clock: new HybridLogicalClock(clock) });
  return {
    ref,
    dut,
    tick(ms = 10) {
      wall += ms;
    },
  };
}

/** Asserts both replicas hold the same versions (ids, times, bodies, documents) for `key`. */
function assertSameHistory(ref: Replica, dut: Replica, key: string, what: string): void {
  const a = ref.history(key);
  const b = dut.history(key);
  assert.deepEqual(b.map((v) => v.versionId), a.map((v) => v.versionId), `${what}: version ids`);
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    assert.equal(y.lastUpdated, x.lastUpdated, `${what}: lastUpdated of ${x.versionId}`);
    assert.equal(y.deleted, x.deleted, `${what}: deleted of ${x.versionId}`);
    assert.equal(y.body, x.body, `${what}: body of ${x.versionId}`);
    const dx = loadDoc(x.state, 'a');
    const dy = loadDoc(y.state, 'a');
    assert.equal(versionIdOf(dy), versionIdOf(dx), `${what}: document of ${x.versionId}`);
    assert.deepEqual(render(dy), render(dx), `${what}: rendered document of ${x.versionId}`);
  }
}

/** Remote updates from node `b`, made on its own replica. */
function remoteUpdates(): { create: Uint8Array; edit: Uint8Array; edit2: Uint8Array } {
  const b = new Replica({ nodeId: 'b', store: new MemoryStore(), policy: POLICY, clock: new HybridLogicalClock(() => 1_700_000_100_000) });
  const p = obj(PATIENT.replace('pat-merge-1', 'remote-1'));
  const create = b.write('Patient/remote-1', p).update!;
  const edit1 = b.write('Patient/remote-1', edit(p, (x) => (x.gender = 'male'))).update!;
  const edit2 = b.write('Patient/remote-1', edit(p, (x) => ((x.gender = 'male'), (x.birthDate = '1979-01-01')))).update!;
  return { create, edit: edit1, edit2 };
}

/** The write sequence every lockstep test runs: creates, edits, a stale write, delete, re-create, remote updates. */
function runSequence(p: ReturnType<typeof pair>): { staleBase: string } {
  const { ref, dut, tick } = p;
  const both = (f: (r: Replica) => unknown) => {
    const x = f(ref);
    const y = f(dut);
    return [x, y] as const;
  };
  let body = obj(PATIENT);
  both((r) => r.write(KEY, body, { author: 'Practitioner/1' }));
  const staleBase = ref.current(KEY)!.versionId;
  for (let i = 0; i < 12; i++) {
    tick();
    body = edit(body, (b) => {
      if (i % 3 === 0) b.birthDate = `1980-02-${String(10 + i)}`;
      else if (i % 3 === 1) b.gender = i % 2 ? 'male' : 'female';
      else (b.maritalStatus as FhirJsonObject).text = `status ${i}`;
    });
    both((r) => r.write(KEY, body));
  }
  tick();
  // A client holding the first version changes `active`: merged, not reverted.
  both((r) => r.write(KEY, edit(obj(PATIENT), (b) => (b.active = false)), { baseVersionId: staleBase, author: 'Practitioner/2' }));
  tick();
  both((r) => r.write(KEY, null));
  tick();
  both((r) => r.write(KEY, edit(body, (b) => (b.gender = 'other'))));
  const u = remoteUpdates();
  // Out of order: the edit arrives before its create, is held back, then both apply.
  both((r) => r.applyRemote('Patient/remote-1', u.edit));
  both((r) => r.applyRemote('Patient/remote-1', u.create));
  both((r) => r.applyRemote('Patient/remote-1', u.edit2));
  return { staleBase };
}

describe('SqliteStore: lockstep with MemoryStore', () => {
  for (const [name, opts] of [
    ['default options', {}],
    ['a cache of 1 byte (every access reads the file)', { cacheBytes: 1 }],
    ['a keyframe per version', { keyframeRatio: 0 }],
  ] as Array<[string, SqliteStoreOptions]>) {
    it(`keeps every version identical, before and after compaction and reopen, with ${name}`, () => {
      const file = dbPath();
      const store = new SqliteStore(file, { compaction: 'manual', ...opts });
      const p = pair(store);
      const { staleBase } = runSequence(p);
      assertSameHistory(p.ref, p.dut, KEY, 'live');
      assertSameHistory(p.ref, p.dut, 'Patient/remote-1', 'live remote');
      assert.deepEqual([...store.keys()], [KEY, 'Patient/remote-1']);
      assert.equal(store.size, 2);
      const c = store.compact();
      assert.ok(c.bodies >= 10, `compacted ${c.bodies} bodies`);
      assertSameHistory(p.ref, p.dut, KEY, 'compacted');
      store.close();

      const reopened = new SqliteStore(file, { compaction: 'manual', ...opts });
      const dut2 = new Replica({ nodeId: 'a', store: reopened, policy: POLICY, clock: new HybridLogicalClock(() => 1_700_000_500_000) });
      assertSameHistory(p.ref, dut2, KEY, 'reopened');
      assertSameHistory(p.ref, dut2, 'Patient/remote-1', 'reopened remote');
      assert.equal(reopened.size, 2);
      // A stale write after the restart needs an old version's document, rebuilt from keyframe + deltas.
      const refAgain = p.ref.write(KEY, edit(obj(PATIENT), (b) => (b.birthDate = '1999-09-09')), { baseVersionId: staleBase });
      const dutAgain = dut2.write(KEY, edit(obj(PATIENT), (b) => (b.birthDate = '1999-09-09')), { baseVersionId: staleBase });
      assert.equal(dutAgain.version.body?.replace(/"versionId":"[^"]+"|"lastUpdated":"[^"]+"/g, ''), refAgain.version.body?.replace(/"versionId":"[^"]+"|"lastUpdated":"[^"]+"/g, ''));
      const merged = obj(dutAgain.version.body!);
      assert.equal(merged.birthDate, '1999-09-09');
      assert.equal(merged.gender, 'other', 'the stale client did not revert gender');
      reopened.close();
    });
  }
});

describe('SqliteStore: bytes on disk', () => {
  it('stores the current document in the Yjs V2 encoding, smaller than V1', () => {
    const file = dbPath();
    const store = new SqliteStore(file, { compaction: 'manual' });
    const p = pair(store);
    runSequence(p);
    const v1 = store.get(KEY)!.state;
    const v2 = store.storedState(KEY)!;
    assert.ok(v2.length < v1.length, `V2 ${v2.length} B < V1 ${v1.length} B`);
    const d = new Y.Doc({ gc: true });
    Y.applyUpdateV2(d, v2);
    assert.equal(versionIdOf(d), p.ref.current(KEY)!.versionId, 'the V2 bytes decode to the current version');
    assert.equal(canonicalStringify(render(d).resource!), canonicalStringify(render(loadDoc(p.ref.current(KEY)!.state, 'a')).resource!));
    store.close();
    // The raw row, read without the store.
    const db = new DatabaseSync(file, { readOnly: true });
    const row = db.prepare('SELECT state FROM resource WHERE key = ?').get(KEY) as { state: Uint8Array };
    assert.deepEqual(Buffer.from(row.state), Buffer.from(v2));
    const kinds = db.prepare('SELECT state_kind AS k, COUNT(*) AS n FROM version GROUP BY state_kind ORDER BY k').all() as Array<{ k: number; n: number }>;
    db.close();
    assert.equal(kinds[0]?.k, 0);
    assert.equal(kinds[1]?.k, 1, 'deltas are stored');
    assert.ok(kinds[1]!.n > kinds[0]!.n, `more deltas (${kinds[1]!.n}) than keyframes (${kinds[0]!.n})`);
  });

  it('stores a resource written once with one copy of its document; the copy moves into history on the next write', () => {
    const file = dbPath();
    const store = new SqliteStore(file, { compaction: 'manual' });
    const r = new Replica({ nodeId: 'a', store, policy: POLICY });
    const v1 = r.write(KEY, obj(PATIENT)).version;
    const once = store.sizes(KEY);
    assert.equal(once.historyStateBytes, 0, 'the only version shares the current document');
    assert.equal(once.keyframes, 1);
    const firstDoc = store.storedState(KEY)!;
    r.write(KEY, edit(obj(PATIENT), (b) => (b.gender = 'male')));
    const twice = store.sizes(KEY);
    assert.ok(twice.historyStateBytes >= firstDoc.length, `history ${twice.historyStateBytes} B holds the first document (${firstDoc.length} B)`);
    store.close();
    const again = new SqliteStore(file, { compaction: 'manual' });
    const old = again.get(KEY)!.versions[0]!;
    assert.equal(versionIdOf(loadDoc(old.state, 'a')), v1.versionId);
    assert.equal(old.body, v1.body);
    again.close();
  });

  it('keeps history as deltas: far below a whole document per version', () => {
    const store = new SqliteStore(dbPath(), { compaction: 'manual' });
    const p = pair(store);
    let body = obj(PATIENT);
    p.dut.write(KEY, body);
    for (let i = 0; i < 60; i++) {
      p.tick();
      body = edit(body, (b) => (b.birthDate = `19${50 + (i % 40)}-01-0${1 + (i % 9)}`));
      p.dut.write(KEY, body);
    }
    store.compact();
    const s = store.sizes(KEY);
    const whole = store.storedState(KEY)!.length;
    assert.equal(s.versions, 61);
    // Merge documents hold ~2 Yjs structs per live entry whatever their history (src/merge/doc.ts),
    // so the whole document is small (~2.6 KB here) and a delta is ~1/8 of it: with keyframeRatio 2
    // a keyframe comes every ~20 versions.
    assert.ok(s.keyframes <= 3, `${s.keyframes} keyframes`);
    assert.ok(s.historyStateBytes < (s.versions * whole) / 6, `history ${s.historyStateBytes} B vs ${s.versions} × ${whole} B`);
    assert.ok(s.compressedBodyBytes + s.plainBodyBytes < s.versions * 200 + 2 * 1500, `bodies ${s.compressedBodyBytes + s.plainBodyBytes} B`);
    store.close();
  });
});

describe('SqliteStore: compaction', () => {
  it('compacts in the background, keeps every body byte-identical, frees the plain copies', async () => {
    const store = new SqliteStore(dbPath(), { compactAfter: 4, compactDelayMs: 1 });
    const p = pair(store);
    let body = obj(PATIENT);
    p.dut.write(KEY, body);
    for (let i = 0; i < 40; i++) {
      p.tick();
      body = edit(body, (b) => (b.gender = i % 2 ? 'male' : 'female'));
      p.dut.write(KEY, body);
      p.ref.write(KEY, body);
    }
    const bodies = p.dut.history(KEY).map((v) => v.body);
    const newest = Buffer.byteLength(p.dut.current(KEY)!.body!);
    const deadline = Date.now() + 10_000;
    while (store.sizes(KEY).plainBodyBytes > newest && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    const s = store.sizes(KEY);
    assert.equal(s.plainBodyBytes, newest, 'only the newest body stays plain');
    assert.ok(s.compressedBodyBytes < bodies.length * newest * 0.1, `compressed ${s.compressedBodyBytes} B`);
    assert.deepEqual(p.dut.history(KEY).map((v) => v.body), bodies);
    store.close();
  });

  it('compact(key) leaves other resources alone and is idempotent', () => {
    const store = new SqliteStore(dbPath(), { compaction: 'manual' });
    const p = pair(store);
    runSequence(p);
    const first = store.compact(KEY);
    assert.equal(first.resources, 1);
    assert.ok(first.bytesAfter < first.bytesBefore / 5, `${first.bytesBefore} → ${first.bytesAfter}`);
    assert.equal(store.compact(KEY).bodies, 0, 'nothing left to compact');
    assert.ok(store.sizes('Patient/remote-1').plainBodyBytes > 0, 'the other resource is untouched');
    assertSameHistory(p.ref, p.dut, KEY, 'after compact(key)');
    store.close();
  });
});

describe('SqliteStore: records', () => {
  it('replaces the history when the versions are not an extension of the stored ones', () => {
    const file = dbPath();
    const store = new SqliteStore(file, { compaction: 'manual' });
    const p = pair(store);
    runSequence(p);
    const rec = store.get(KEY)!;
    const keep: VersionRecord[] = [rec.versions[0]!, rec.versions[rec.versions.length - 1]!].map((v) => ({
      versionId: v.versionId,
      lastUpdated: v.lastUpdated,
      deleted: v.deleted,
      body: v.body,
      state: v.state,
    }));
    store.set(KEY, { state: rec.state, versions: keep });
    store.close();
    const again = new SqliteStore(file, { compaction: 'manual' });
    const got = again.get(KEY)!;
    assert.deepEqual(got.versions.map((v) => [v.versionId, v.body]), keep.map((v) => [v.versionId, v.body]));
    assert.equal(versionIdOf(loadDoc(got.versions[1]!.state, 'a')), keep[1]!.versionId);
    again.close();
  });

  it('keeps held-back remote updates across a restart (V2 on disk) and applies them when their dependency comes', () => {
    const file = dbPath();
    const u = remoteUpdates();
    const store = new SqliteStore(file, { compaction: 'manual' });
    const r = new Replica({ nodeId: 'a', store, policy: POLICY });
    assert.equal(r.applyRemote('Patient/remote-1', u.edit), undefined, 'held back');
    const held = store.get('Patient/remote-1')!.pending!;
    assert.equal(held.length, 1);
    // Dropped without close: a crash.
    const store2 = new SqliteStore(file, { compaction: 'manual' });
    const pending = store2.get('Patient/remote-1')!.pending!;
    assert.equal(pending.length, 1);
    assert.deepEqual(Y.parseUpdateMeta(pending[0]!), Y.parseUpdateMeta(held[0]!));
    const r2 = new Replica({ nodeId: 'a', store: store2, policy: POLICY });
    const v = r2.applyRemote('Patient/remote-1', u.create);
    assert.ok(v, 'a version once the create arrived');
    assert.equal(obj(r2.current('Patient/remote-1')!.body!).gender, 'male', 'the held edit was applied too');
    assert.equal(store2.get('Patient/remote-1')!.pending, undefined);
    store2.close();
    store.close();
  });

  it('a failed set changes nothing', () => {
    const file = dbPath();
    const store = new SqliteStore(file, { compaction: 'manual' });
    const r = new Replica({ nodeId: 'a', store, policy: POLICY });
    r.write(KEY, obj(PATIENT));
    const before = store.get(KEY)!;
    const ids = before.versions.map((v) => v.versionId);
    const bad = new Uint8Array([0xff, 0xff, 0xff, 0x01]);
    assert.throws(() => store.set(KEY, { state: bad, versions: [...before.versions, { versionId: 'x', lastUpdated: '', deleted: false, body: '{}', state: bad }] }));
    assert.deepEqual(store.get(KEY)!.versions.map((v) => v.versionId), ids);
    store.close();
    const again = new SqliteStore(file, { compaction: 'manual' });
    assert.deepEqual(again.get(KEY)!.versions.map((v) => v.versionId), ids);
    assert.equal(again.size, 1);
    again.close();
  });
});

describe('SqliteStore: errors', () => {
  it('refuses a file that is not a SQLite database', () => {
    const file = dbPath();
    writeFileSync(file, 'this is not a database, it is a text file long enough to have a header '.repeat(20));
    assert.throws(() => new SqliteStore(file), /Cannot open store .*s\d+\.sqlite/);
  });

  it('refuses a newer schema', () => {
    const file = dbPath();
    new SqliteStore(file).close();
    const db = new DatabaseSync(file);
    db.exec("UPDATE tidegate_meta SET value = '99' WHERE name = 'schema'");
    db.close();
    assert.throws(() => new SqliteStore(file), /schema version 99 is not supported/);
  });

  it('throws after close', () => {
    const store = new SqliteStore(dbPath());
    store.close();
    store.close();
    assert.throws(() => store.get(KEY), /closed/);
    assert.throws(() => store.set(KEY, { state: new Uint8Array(0), versions: [] }), /closed/);
  });
});

describe('store codec', () => {
  it('V1 → V2 → V1 keeps the document', () => {
    const r = new Replica({ nodeId: 'a', store: new MemoryStore(), policy: POLICY });
    r.write(KEY, obj(PATIENT));
    const v1 = r.current(KEY)!.state;
    const back = toV1(toV2(v1));
    assert.equal(versionIdOf(loadDoc(back, 'a')), versionIdOf(loadDoc(v1, 'a')));
    assert.equal(toV2(new Uint8Array(0)).length, 0);
  });

  it('update lists keep unconvertible bytes verbatim', () => {
    const r = new Replica({ nodeId: 'a', store: new MemoryStore(), policy: POLICY });
    const good = r.write(KEY, obj(PATIENT)).update!;
    const junk = new Uint8Array([1, 2, 3]);
    const back = decodeUpdateList(encodeUpdateList([good, junk]));
    assert.equal(back.length, 2);
    assert.deepEqual(Y.parseUpdateMeta(back[0]!), Y.parseUpdateMeta(good));
    assert.deepEqual(back[1], junk);
  });

  it('bodies compressed against a reference decode byte-identical, and need the reference', () => {
    const a = canonicalStringify(obj(PATIENT));
    const b = a.replace('1980-02-29', '1981-03-01');
    const c = compressBody(b, a);
    assert.ok(c.length < 64, `${c.length} B`);
    assert.equal(decodeBody(c, BodyCodec.deflateWithRef, a), b);
    assert.throws(() => decodeBody(c, BodyCodec.deflateWithRef), /reference/);
    assert.equal(decodeBody(compressBody(a), BodyCodec.deflate), a);
  });
});

describe('configuration: storeFile', () => {
  it('defaults to data/<nodeId>.sqlite next to the config file, resolves relative paths, keeps :memory:', () => {
    const dir = mkdtempSync(join(root, 'cfg-'));
    const base = { nodeId: 'node-x', hospitalFhirUrl: 'http://127.0.0.1:9/fhir', secretKeyFile: 'k.json' };
    writeFileSync(join(dir, 'a.json'), JSON.stringify(base));
    assert.equal(loadNodeConfig(join(dir, 'a.json'), {}).storeFile, join(dir, 'data', 'node-x.sqlite'));
    writeFileSync(join(dir, 'b.json'), JSON.stringify({ ...base, storeFile: '../state/x.db' }));
    assert.equal(loadNodeConfig(join(dir, 'b.json'), {}).storeFile, join(root, 'state', 'x.db'));
    writeFileSync(join(dir, 'c.json'), JSON.stringify({ ...base, storeFile: ':memory:' }));
    assert.equal(loadNodeConfig(join(dir, 'c.json'), {}).storeFile, ':memory:');
    writeFileSync(join(dir, 'd.json'), JSON.stringify({ ...base, storeFile: '' }));
    assert.throws(() => loadNodeConfig(join(dir, 'd.json'), {}), /storeFile/);
  });

  it('openStore: a file (folders created) survives reopening; :memory: gives a MemoryStore', () => {
    const file = join(root, 'nested', 'deeper', 'node.sqlite');
    const a = openStore(file, { compaction: 'manual' });
    assert.equal(a.kind, 'sqlite');
    assert.equal(a.location, file);
    new Replica({ nodeId: 'a', store: a.store, policy: POLICY }).write(KEY, obj(PATIENT));
    a.close();
    a.close();
    const b = openStore(file);
    assert.equal(b.store.size, 1);
    assert.deepEqual([...b.store.keys()], [KEY]);
    b.close();
    const m = openStore(':memory:');
    assert.equal(m.kind, 'memory');
    assert.ok(m.store instanceof MemoryStore);
    m.close();
  });
});
