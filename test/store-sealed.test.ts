/**
 * The sealed store (docs/storage.md "Encryption at rest"): src/store/seal.ts, src/store/vault.ts,
 * SqliteStore with the node's keys, the sealed hospital id map, rotation and re-wrapping, damaged
 * bytes, and the raw bytes of the SQLite files and of Redis after a two-node run.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { DatabaseSync } from 'node:sqlite';
import { Redis } from 'ioredis';
import pino from 'pino';
import { parseFhirJson } from '../src/fhir/json.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { Replica } from '../src/merge/replica.ts';
import { HybridLogicalClock } from '../src/merge/hlc.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { MemoryStore } from '../src/store/store.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import { StoreIdMap } from '../src/store/id-map.ts';
import { RecordKind, SealedRecordError, openRecord, sealRecord, unwrapKey, wrapKey, STORE_FORMAT } from '../src/store/seal.ts';
import { KeyVaultError } from '../src/store/vault.ts';
import { createKeyStore, keyStoreToSecretKeys, keyStoreToPublicJson, retireKey, rotateKeyStore, writeKeyStoreFiles } from '../src/envelope/keys.ts';
import type { NodeSecretKeys } from '../src/envelope/keys.ts';
import { runRewrap } from '../src/cli/shred.ts';
import { TidegateNode } from '../src/node/node.ts';
import { HospitalClient, startMedplumHospital } from '../src/hospital/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';
import { publicKeysFromJson } from '../src/envelope/keys.ts';
import { deleteKeysMatching } from '../src/tide/redis-keys.ts';
import { SYNTHEA_DIR } from './fixtures/synthea.ts';

const POLICY = loadMergePolicy();
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

/** Distinctive strings of the fixture patient: none may appear in a sealed file. */
const FAMILY = 'Quaxelbrandt';
const GIVEN = 'Ysoldemarie';
const PHONE = '555-0199-7731';
const CITY = 'Vrellinghausen';
const PID = 'sealtest-pat-7f3a';
const HOSPITAL_REF = 'Patient/hosp-assigned-9931';

let root: string;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'tidegate-sealed-test-'));
});
after(() => {
  rmSync(root, { recursive: true, force: true });
});
let n = 0;
function dbPath(): string {
  return join(root, `s${n++}.sqlite`);
}

function keysOf(nodeId = 'node-a'): NodeSecretKeys {
  return keyStoreToSecretKeys(createKeyStore(nodeId));
}

function obj(v: unknown): FhirJsonObject {
  return parseFhirJson(JSON.stringify(v)) as FhirJsonObject;
}

function patient(extra: Record<string, unknown> = {}): FhirJsonObject {
  return obj({
    resourceType: 'Patient',
    id: PID,
    name: [{ family: FAMILY, given: [GIVEN] }],
    telecom: [{ system: 'phone', value: PHONE }],
    address: [{ city: CITY, line: ['12 Ostwall'] }],
    birthDate: '1961-04-17',
    ...extra,
  });
}

/** Every file of a store: data file, its WAL, the key vault and its WAL (those that exist). */
function rawFiles(file: string): Buffer {
  const parts: Buffer[] = [];
  for (const f of [file, `${file}-wal`, `${file}.keys`, `${file}.keys-wal`]) if (existsSync(f)) parts.push(readFileSync(f));
  return Buffer.concat(parts);
}

/** The needles, also in UTF-16LE (SQLite TEXT could be UTF-16) and base64 forms. */
function findLeaks(hay: Buffer, needles: string[]): string[] {
  const found: string[] = [];
  for (const s of needles) {
    for (const form of [Buffer.from(s, 'utf8'), Buffer.from(s, 'utf16le')]) if (hay.includes(form)) found.push(s);
  }
  return found;
}

/** A write sequence that touches every kind of stored field: versions, delete, re-create, conflicts, held-back updates. */
function workload(store: SqliteStore | MemoryStore): { dut: Replica; other: Replica } {
  let wall = 1_700_000_000_000;
  const clock = () => (wall += 1000);
  const dut = new Replica({ nodeId: 'a', store, policy: POLICY, clock: new HybridLogicalClock(clock) });
  const other = new Replica({ nodeId: 'b', store: new MemoryStore(), policy: POLICY, clock: new HybridLogicalClock(clock) });
  const key = `Patient/${PID}`;
  const first = dut.write(key, patient());
  other.applyRemote(key, first.update!);
  for (let i = 0; i < 20; i++) dut.write(key, patient({ birthDate: `19${60 + i}-04-17` }));
  // A concurrent edit of the same field at b: a conflict record (inside the document).
  const base = dut.current(key)!;
  const ua = dut.write(key, patient({ gender: 'female' }), { baseVersionId: base.versionId }).update!;
  const ub = other.write(key, patient({ gender: 'other', maritalStatus: { text: `${FAMILY}-married` } })).update!;
  dut.applyRemote(key, ub);
  other.applyRemote(key, ua);
  // A held-back update: b's second edit arrives before its first.
  const b1 = other.write(key, patient({ gender: 'other', deceasedBoolean: false })).update!;
  const b2 = other.write(key, patient({ gender: 'other', deceasedBoolean: true, photo: [{ title: `${GIVEN}-photo` }] })).update!;
  dut.applyRemote(key, b2);
  // An Observation referring to the patient, deleted and re-created.
  const okey = 'Observation/sealtest-obs-1';
  const o = obj({ resourceType: 'Observation', id: 'sealtest-obs-1', status: 'final', code: { text: `${FAMILY} glucose` }, subject: { reference: key }, valueString: `${CITY}-value` });
  dut.write(okey, o);
  dut.write(okey, null);
  dut.write(okey, o);
  void b1;
  return { dut, other };
}

describe('tidegate-store/1 records', () => {
  const ck = new Uint8Array(32).fill(7);
  it('seals with a fresh nonce, opens back, and binds kind, key and seq (AAD)', () => {
    const pt = new TextEncoder().encode(`{"family":"${FAMILY}"}`);
    const a = sealRecord(ck, RecordKind.state, 'Patient/x', 0, pt);
    const b = sealRecord(ck, RecordKind.state, 'Patient/x', 0, pt);
    assert.equal(a.length, pt.length + STORE_FORMAT.overhead);
    assert.notDeepEqual(a, b, 'two seals of the same plaintext differ (random 96-bit nonce)');
    assert.deepEqual(openRecord(ck, RecordKind.state, 'Patient/x', 0, a), pt);
    for (const [kind, key, seq] of [
      [RecordKind.pending, 'Patient/x', 0],
      [RecordKind.state, 'Patient/y', 0],
      [RecordKind.state, 'Patient/x', 1],
    ] as const) {
      assert.throws(() => openRecord(ck, kind, key, seq, a), (e: unknown) => e instanceof SealedRecordError && e.code === 'ERR_SEALED_AUTH_FAILED');
    }
    assert.throws(() => openRecord(new Uint8Array(32).fill(8), RecordKind.state, 'Patient/x', 0, a), (e: unknown) => (e as SealedRecordError).code === 'ERR_SEALED_AUTH_FAILED');
  });

  it('refuses damaged, truncated and unknown-version bytes with a clear, PHI-free error', () => {
    const sealed = sealRecord(ck, RecordKind.freshBody, 'Patient/x', 3, new TextEncoder().encode(FAMILY));
    for (let i = 0; i < sealed.length; i += 5) {
      const bad = Uint8Array.from(sealed);
      bad[i]! ^= 0x40;
      assert.throws(
        () => openRecord(ck, RecordKind.freshBody, 'Patient/x', 3, bad),
        (e: unknown) => e instanceof SealedRecordError && (i === 0 ? e.code === 'ERR_SEALED_UNSUPPORTED' : e.code === 'ERR_SEALED_AUTH_FAILED') && !e.message.includes(FAMILY) && !e.message.includes('Patient/x'),
        `byte ${i}`,
      );
    }
    assert.throws(() => openRecord(ck, RecordKind.freshBody, 'Patient/x', 3, sealed.subarray(0, 28)), (e: unknown) => (e as SealedRecordError).code === 'ERR_SEALED_MALFORMED');
    const kek = new Uint8Array(32).fill(1);
    const w = wrapKey(kek, 1, 5, ck);
    assert.deepEqual(unwrapKey(kek, 1, 5, w), ck);
    assert.throws(() => unwrapKey(kek, 1, 6, w), (e: unknown) => (e as SealedRecordError).code === 'ERR_SEALED_AUTH_FAILED', 'slot is bound');
    assert.throws(() => unwrapKey(kek, 2, 5, w), (e: unknown) => (e as SealedRecordError).code === 'ERR_SEALED_AUTH_FAILED', 'generation is bound');
  });
});

describe('SqliteStore sealed: raw files', () => {
  it('holds no plaintext resource content in the data file, its WAL, or the key vault (positive control: unsealed does)', () => {
    const needles = [FAMILY, GIVEN, PHONE, CITY, PID, `Patient/${PID}`, 'sealtest-obs-1', HOSPITAL_REF, 'hosp-assigned-9931', '"resourceType"', '1961-04-17'];
    // Control: the same workload unsealed shows the strings, so the scan can find them.
    const plainFile = dbPath();
    const plain = new SqliteStore(plainFile, { compaction: 'manual' });
    workload(plain);
    new StoreIdMap(plain).set(`Patient/${PID}`, HOSPITAL_REF);
    const plainLeaks = findLeaks(rawFiles(plainFile), needles);
    plain.close();
    assert.ok(plainLeaks.includes(FAMILY) && plainLeaks.includes(`Patient/${PID}`) && plainLeaks.includes(HOSPITAL_REF), `control finds plaintext: ${plainLeaks.join(', ')}`);

    const file = dbPath();
    const keys = keysOf();
    const store = new SqliteStore(file, { secretKeys: keys, compaction: 'manual' });
    const { dut } = workload(store);
    new StoreIdMap(store).set(`Patient/${PID}`, HOSPITAL_REF);
    assert.ok((store.get(`Patient/${PID}`)!.pending ?? []).length > 0, 'a held-back update is stored');
    assert.ok(dut.conflicts(`Patient/${PID}`).length > 0, 'a conflict record is stored');
    // Before and after compaction, open and closed (WAL checkpointed).
    assert.deepEqual(findLeaks(rawFiles(file), needles), [], 'open, uncompacted');
    store.compact();
    assert.deepEqual(findLeaks(rawFiles(file), needles), [], 'open, compacted');
    const history = dut.history(`Patient/${PID}`).map((v) => v.body);
    store.close();
    assert.deepEqual(findLeaks(rawFiles(file), needles), [], 'closed');
    // The raw rows: no key column in clear, every blob starts with the format byte.
    const db = new DatabaseSync(file, { readOnly: true });
    const keysCol = db.prepare('SELECT key FROM resource').all().map((r) => r.key);
    assert.ok(keysCol.every((k) => k instanceof Uint8Array && k.length === 32), 'rows are filed under 32-byte HMAC tags');
    for (const r of db.prepare('SELECT state FROM resource').all()) assert.equal((r.state as Uint8Array)[0], STORE_FORMAT.version);
    db.close();
    // Everything reads back after a restart.
    const again = new SqliteStore(file, { secretKeys: keys, compaction: 'manual' });
    assert.deepEqual([...again.keys()].sort(), ['Observation/sealtest-obs-1', `Patient/${PID}`]);
    assert.deepEqual([...again.get(`Patient/${PID}`)!.versions].reverse().map((v) => v.body), history);
    assert.equal(new StoreIdMap(again).toHospital(`Patient/${PID}`), HOSPITAL_REF);
    assert.equal(new StoreIdMap(again).toNode(HOSPITAL_REF), `Patient/${PID}`);
    assert.equal(new StoreIdMap(again).toNode('Patient/unknown'), undefined);
    again.close();
  });

  it('Synthea sample: no family name, given name, city or id of the imported resources in the raw files', (t) => {
    if (!existsSync(SYNTHEA_DIR)) {
      t.skip('Synthea sample ../shared/data/synthea-10 is absent');
      return;
    }
    const file = dbPath();
    const store = new SqliteStore(file, { secretKeys: keysOf(), compaction: 'manual' });
    const replica = new Replica({ nodeId: 'a', store, policy: POLICY });
    const needles = new Set<string>();
    let written = 0;
    for (const name of readdirSync(SYNTHEA_DIR).filter((f) => f.endsWith('.ndjson') && !f.startsWith('log'))) {
      const lines = readFileSync(join(SYNTHEA_DIR, name), 'utf8').split('\n').filter(Boolean).slice(0, 60);
      for (const line of lines) {
        const r = parseFhirJson(line) as FhirJsonObject & { id: string; resourceType: string; name?: Array<{ family?: string; given?: string[] }>; address?: Array<{ city?: string; line?: string[] }> };
        replica.write(`${r.resourceType}/${r.id}`, r);
        written++;
        if (r.resourceType === 'Patient') {
          needles.add(r.id);
          for (const nm of r.name ?? []) {
            if (nm.family && nm.family.length >= 5) needles.add(nm.family);
            for (const g of nm.given ?? []) if (g.length >= 5) needles.add(g);
          }
          for (const a of r.address ?? []) {
            if (a.city && a.city.length >= 5) needles.add(a.city);
            for (const l of a.line ?? []) if (l.length >= 8) needles.add(l);
          }
        }
      }
    }
    assert.ok(written > 200 && needles.size > 20, `${written} resources, ${needles.size} needles`);
    store.compact();
    const leaks = findLeaks(rawFiles(file), [...needles]);
    store.close();
    assert.deepEqual(leaks, []);
  });

  it('a damaged row is a clear error for that resource only; other resources still read', () => {
    const file = dbPath();
    const keys = keysOf();
    const store = new SqliteStore(file, { secretKeys: keys, compaction: 'manual' });
    workload(store);
    store.close();
    // Flip one byte of the Patient's current document (its row is the first).
    const db = new DatabaseSync(file);
    const row = db.prepare('SELECT rid, state FROM resource ORDER BY rid LIMIT 1').get() as { rid: number; state: Uint8Array };
    const bad = Uint8Array.from(row.state);
    bad[40]! ^= 1;
    db.prepare('UPDATE resource SET state = ? WHERE rid = ?').run(bad, row.rid);
    db.close();
    const again = new SqliteStore(file, { secretKeys: keys, compaction: 'manual' });
    assert.throws(
      () => again.get(`Patient/${PID}`),
      (e: unknown) => e instanceof SealedRecordError && e.code === 'ERR_SEALED_AUTH_FAILED' && /state/.test(e.message) && !e.message.includes(PID),
    );
    assert.equal(again.get('Observation/sealtest-obs-1')!.versions.length, 3, 'the other resource is intact');
    again.close();
  });

  it('refuses the wrong keys, a plaintext file with keys, a sealed file without keys, and a second opener', () => {
    const file = dbPath();
    const keys = keysOf();
    const store = new SqliteStore(file, { secretKeys: keys, compaction: 'manual' });
    workload(store);
    assert.throws(() => new SqliteStore(file, { secretKeys: keys }), (e: unknown) => e instanceof KeyVaultError && e.code === 'ERR_VAULT_IN_USE', 'a running node holds the vault');
    store.close();
    assert.throws(() => new SqliteStore(file, { secretKeys: keysOf('node-a') }), (e: unknown) => e instanceof KeyVaultError && e.code === 'ERR_VAULT_KEY_UNAVAILABLE', "another key file's X-Wing key");
    assert.throws(() => new SqliteStore(file), /sealed: open it with the node secret keys/);
    const plain = dbPath();
    new SqliteStore(plain).close();
    assert.throws(() => new SqliteStore(plain, { secretKeys: keys }), /plaintext and cannot be opened as a sealed store/);
    // A damaged wrapped content key: clear error on the resource that uses it.
    const v = new DatabaseSync(`${file}.keys`);
    for (const r of v.prepare('SELECT slot, wrapped FROM content_key').all()) {
      const w = Uint8Array.from(r.wrapped as Uint8Array);
      w[20]! ^= 1;
      v.prepare('UPDATE content_key SET wrapped = ? WHERE slot = ?').run(w, r.slot as number);
    }
    v.close();
    const again = new SqliteStore(file, { secretKeys: keys, compaction: 'manual' });
    assert.throws(() => again.get(`Patient/${PID}`), (e: unknown) => e instanceof SealedRecordError && e.code === 'ERR_SEALED_AUTH_FAILED' && /wrapped key/.test(e.message));
    again.close();
  });
});

describe('SqliteStore sealed: rotation', () => {
  it('after keys rotate, a restart re-wraps every content key (payload bytes unchanged) and reads everything; retire then works', () => {
    const file = dbPath();
    const ks = createKeyStore('node-a');
    const store = new SqliteStore(file, { secretKeys: keyStoreToSecretKeys(ks), compaction: 'manual' });
    workload(store);
    const bodies = store.get(`Patient/${PID}`)!.versions.map((v) => v.body);
    const before = store.keyVault!.generation;
    store.close();
    const rawRows = (): string => {
      const db = new DatabaseSync(file, { readOnly: true });
      const s = JSON.stringify([db.prepare('SELECT state, pending FROM resource ORDER BY rid').all(), db.prepare('SELECT * FROM version ORDER BY rid, seq').all()], (_k, v: unknown) => (v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v));
      db.close();
      return s;
    };
    const payloadBefore = rawRows();
    const wrappedBefore = readFileSync(`${file}.keys`);

    const rotated = rotateKeyStore(ks);
    const oldKid = ks.keys.find((k) => k.use === 'enc')!.kid;
    const again = new SqliteStore(file, { secretKeys: keyStoreToSecretKeys(rotated), compaction: 'manual' });
    const after = again.keyVault!.generation;
    assert.equal(before.kid, oldKid);
    assert.equal(after.kid, keyStoreToSecretKeys(rotated).kemKeyId, 're-wrapped under the new X-Wing key');
    assert.equal(after.gen, before.gen + 1);
    assert.deepEqual(again.get(`Patient/${PID}`)!.versions.map((v) => v.body), bodies);
    again.close();
    assert.equal(rawRows(), payloadBefore, 'payloads were not re-encrypted');
    assert.notDeepEqual(readFileSync(`${file}.keys`), wrappedBefore, 'the wrapped keys changed');

    const retired = retireKey(rotated, oldKid);
    const third = new SqliteStore(file, { secretKeys: keyStoreToSecretKeys(retired), compaction: 'manual' });
    assert.deepEqual(third.get(`Patient/${PID}`)!.versions.map((v) => v.body), bodies, 'reads after the old key is retired');
    third.close();
  });

  it('retiring the old key before re-wrapping leaves a clear error, not a crash', () => {
    const file = dbPath();
    const ks = createKeyStore('node-a');
    const store = new SqliteStore(file, { secretKeys: keyStoreToSecretKeys(ks), compaction: 'manual' });
    workload(store);
    store.close();
    const rotated = rotateKeyStore(ks);
    const retired = retireKey(rotated, ks.keys.find((k) => k.use === 'enc')!.kid);
    assert.throws(
      () => new SqliteStore(file, { secretKeys: keyStoreToSecretKeys(retired) }),
      (e: unknown) => e instanceof KeyVaultError && e.code === 'ERR_VAULT_KEY_UNAVAILABLE' && /retired before the store was re-wrapped/.test(e.message),
    );
  });

  it('`tidegate keys rewrap --config` re-wraps offline; a second run has nothing to do', async () => {
    const dir = mkdtempSync(join(root, 'cli-'));
    const ks = createKeyStore('node-r');
    await writeKeyStoreFiles(dir, ks);
    const cfgFile = join(dir, 'node.json');
    writeFileSync(cfgFile, JSON.stringify({ nodeId: 'node-r', hospitalFhirUrl: 'http://127.0.0.1:1/fhir', secretKeyFile: 'node-r.secret.json', storeFile: 'data/node-r.sqlite' }));
    const store = new SqliteStore(join(dir, 'data/node-r.sqlite'), { secretKeys: keyStoreToSecretKeys(ks), compaction: 'manual' });
    workload(store);
    store.close();
    await writeKeyStoreFiles(dir, rotateKeyStore(ks), { overwrite: true });
    const r1 = await runRewrap({ config: cfgFile, env: {} });
    assert.equal(r1.from.kid, ks.keys[0]!.kid);
    assert.notEqual(r1.to.kid, r1.from.kid);
    assert.ok(r1.keys >= 3, `${r1.keys} keys re-wrapped`);
    const r2 = await runRewrap({ config: cfgFile, env: {} });
    assert.equal(r2.keys, 0);
    assert.deepEqual(r2.to, r1.to);
  });
});

/** Every Redis key under `prefix`, with its value read by type (and DUMP), as one text. */
async function redisDump(r: Redis, prefix: string): Promise<{ keys: number; text: string; dump: Buffer }> {
  let cursor = '0';
  const parts: string[] = [];
  const dumps: Buffer[] = [];
  let count = 0;
  do {
    const [next, keys] = await r.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    for (const k of keys) {
      count++;
      parts.push(k);
      const type = await r.type(k);
      if (type === 'string') parts.push((await r.get(k)) ?? '');
      else if (type === 'hash') parts.push(JSON.stringify(await r.hgetall(k)));
      else if (type === 'list') parts.push(JSON.stringify(await r.lrange(k, 0, -1)));
      else if (type === 'zset') parts.push(JSON.stringify(await r.zrange(k, 0, -1)));
      else if (type === 'set') parts.push(JSON.stringify(await r.smembers(k)));
      else if (type === 'stream') parts.push(JSON.stringify(await r.xrange(k, '-', '+')));
      const d = await r.dumpBuffer(k);
      if (d) dumps.push(d);
    }
  } while (cursor !== '0');
  return { keys: count, text: parts.join('\n'), dump: Buffer.concat(dumps) };
}

/** The text plus every base64/base64url run in it, decoded (envelope headers and job payloads are base64url). */
function withDecoded(text: string): Buffer {
  const out: Buffer[] = [Buffer.from(text)];
  for (const m of text.matchAll(/[A-Za-z0-9+/_-]{16,}/g)) out.push(Buffer.from(m[0], m[0].includes('-') || m[0].includes('_') ? 'base64url' : 'base64'));
  return Buffer.concat(out);
}

describe('raw Redis after a two-node run with sealed stores', () => {
  it('holds no plaintext resource content (SCAN + GET/HGETALL/LRANGE/ZRANGE/XRANGE + DUMP, base64 decoded too)', async () => {
    const prefix = `tg-sealed-${randomBytes(4).toString('hex')}`;
    const ids = ['hA', 'hB'];
    const stores: SqliteStore[] = [];
    const hospitals: MedplumHospital[] = [];
    const nodes: TidegateNode[] = [];
    const secret = ids.map((id) => createKeyStore(id));
    const pub = secret.map((s) => publicKeysFromJson(keyStoreToPublicJson(s)));
    const r = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
    try {
      for (const [i, id] of ids.entries()) {
        const store = new SqliteStore(dbPath(), { secretKeys: keyStoreToSecretKeys(secret[i]!) });
        stores.push(store);
        const h = await startMedplumHospital({ name: `${id}-fhir` });
        hospitals.push(h);
        const node = new TidegateNode({
          secretKeys: keyStoreToSecretKeys(secret[i]!),
          peers: ids.filter((o) => o !== id).map((o) => ({ nodeId: o, redisUrl: REDIS_URL, publicKeys: pub[ids.indexOf(o)]! })),
          redisUrl: REDIS_URL,
          queuePrefix: prefix,
          hospital: new HospitalClient({ baseUrl: h.url, idMap: new StoreIdMap(store) }),
          store,
          logger: pino({ level: 'silent' }),
          antiEntropyIntervalMs: 0,
          batchDelayMs: 5,
          hospitalPollIntervalMs: 0,
        });
        nodes.push(node);
        await node.start();
      }
      const res = await fetch(`${nodes[0]!.baseUrl}/Patient/${PID}`, { method: 'PUT', headers: { 'Content-Type': 'application/fhir+json' }, body: JSON.stringify(patient()) });
      assert.equal(res.status, 201);
      const deadline = Date.now() + 60_000;
      while (Date.now() < deadline) {
        const quiet = (await Promise.all(nodes.map((nd) => nd.quiet()))).every(Boolean);
        if (quiet && nodes[1]!.replica.current(`Patient/${PID}`)) break;
        await new Promise((res2) => setTimeout(res2, 100));
      }
      assert.ok(nodes[1]!.replica.current(`Patient/${PID}`), 'the patient reached node B');
      const got = await fetch(`${nodes[1]!.baseUrl}/Patient/${PID}`);
      assert.equal(((await got.json()) as { name: Array<{ family: string }> }).name[0]!.family, FAMILY);
      const { keys, text, dump } = await redisDump(r, prefix);
      assert.ok(keys > 3, `${keys} Redis keys under the prefix`);
      const hay = Buffer.concat([withDecoded(text), dump]);
      assert.deepEqual(findLeaks(hay, [FAMILY, GIVEN, PHONE, CITY, '1961-04-17']), [], 'no resource content in Redis');
      // Control: the scan does decode what is there — the envelope headers' routing metadata (resource
      // keys, signed but not encrypted: docs/envelope.md) is found.
      assert.deepEqual(findLeaks(hay, [`Patient/${PID}`]), [`Patient/${PID}`], 'the decoder sees envelope headers');
    } finally {
      for (const nd of nodes) await nd.stop();
      for (const h of hospitals) await h.close();
      for (const s of stores) s.close();
      await deleteKeysMatching(r, `${prefix}:*`);
      r.disconnect();
    }
  });
});

