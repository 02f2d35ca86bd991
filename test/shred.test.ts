/**
 * Crypto-shredding (docs/storage.md "Crypto-shredding"): the Patient compartment, key destruction in
 * the key vault (raw bytes), backups of the data file, tombstones across restarts, refusal of
 * peers' updates, queued messages dropped (hospital outbox, Tide inbox), the AuditEvent, the CLI,
 * and the admin HTTP route (404/410 with OperationOutcome afterwards).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, copyFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { DatabaseSync } from 'node:sqlite';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import pino from 'pino';
import { parseFhirJson } from '../src/fhir/json.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { Replica } from '../src/merge/replica.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { ResourceShreddedError, SqliteStore } from '../src/store/sqlite-store.ts';
import { StoreIdMap } from '../src/store/id-map.ts';
import { KeyVaultError } from '../src/store/vault.ts';
import { inPatientCompartment } from '../src/store/compartment.ts';
import { ShredError, envelopeResources, patientCompartmentKeys, shredPatient } from '../src/store/shred.ts';
import { runShred } from '../src/cli/shred.ts';
import { createKeyStore, keyStoreToPublicJson, keyStoreToSecretKeys, publicKeysFromJson, writeKeyStoreFiles } from '../src/envelope/keys.ts';
import type { NodeSecretKeys } from '../src/envelope/keys.ts';
import { TidegateNode } from '../src/node/node.ts';
import { HospitalClient, HospitalOutbox, startMedplumHospital } from '../src/hospital/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';
import { deleteKeysMatching } from '../src/tide/redis-keys.ts';

const POLICY = loadMergePolicy();
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const FAMILY = 'Shreddington';
const OTHER_FAMILY = 'Keepalotte';

let root: string;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'tidegate-shred-test-'));
});
after(() => {
  rmSync(root, { recursive: true, force: true });
});
let n = 0;
function dbPath(): string {
  return join(root, `s${n++}.sqlite`);
}
function obj(v: unknown): FhirJsonObject {
  return parseFhirJson(JSON.stringify(v)) as FhirJsonObject;
}

/** Patient P (to shred) with its compartment, Patient Q with its own, and a shared Practitioner. */
function populate(replica: Replica): { p: string[]; q: string[]; shared: string[] } {
  const w = (r: Record<string, unknown>): string => {
    const key = `${String(r.resourceType)}/${String(r.id)}`;
    replica.write(key, obj(r));
    return key;
  };
  const shared = [w({ resourceType: 'Practitioner', id: 'dr-1', name: [{ family: 'Doktorova' }] })];
  const p = [
    w({ resourceType: 'Patient', id: 'pat-p', name: [{ family: FAMILY, given: ['Olwenna'] }], birthDate: '1950-02-03' }),
    w({ resourceType: 'Observation', id: 'obs-p1', status: 'final', code: { text: 'glucose' }, subject: { reference: 'Patient/pat-p' }, valueString: `${FAMILY}-obs` }),
    w({ resourceType: 'Condition', id: 'cond-p1', subject: { reference: 'Patient/pat-p' }, code: { text: `${FAMILY}-diabetes` } }),
    w({ resourceType: 'Encounter', id: 'enc-p1', status: 'finished', class: { code: 'AMB' }, subject: { reference: 'Patient/pat-p' }, participant: [{ individual: { reference: 'Practitioner/dr-1' } }] }),
    w({ resourceType: 'AllergyIntolerance', id: 'alg-p1', patient: { reference: 'Patient/pat-p' }, code: { text: 'penicillin' } }),
  ];
  // A resource that referred to P only in an older version is in the compartment too (its history holds P's data).
  replica.write('Observation/obs-moved', obj({ resourceType: 'Observation', id: 'obs-moved', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/pat-p' } }));
  replica.write('Observation/obs-moved', obj({ resourceType: 'Observation', id: 'obs-moved', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/pat-q' } }));
  p.push('Observation/obs-moved');
  const q = [
    w({ resourceType: 'Patient', id: 'pat-q', name: [{ family: OTHER_FAMILY }] }),
    w({ resourceType: 'Observation', id: 'obs-q1', status: 'final', code: { text: 'hb' }, subject: { reference: 'Patient/pat-q' }, performer: [{ reference: 'Practitioner/dr-1' }] }),
  ];
  return { p, q, shared };
}

function vaultSlot(file: string, store: SqliteStore, key: string): number {
  const db = new DatabaseSync(file, { readOnly: true });
  const row = db.prepare('SELECT slot FROM resource_key WHERE key = ?').get(Buffer.from(store.resourceTagHex(key), 'hex')) as { slot: number } | undefined;
  db.close();
  assert.ok(row, `slot of ${key}`);
  return row.slot;
}

function vaultBytes(file: string): Buffer {
  return Buffer.concat([`${file}.keys`, `${file}.keys-wal`].filter(existsSync).map((f) => readFileSync(f)));
}

describe('Patient compartment (R4 CompartmentDefinition)', () => {
  it('links resources through the compartment parameters, not through any reference', () => {
    assert.ok(inPatientCompartment({ resourceType: 'Observation', id: 'o', subject: { reference: 'Patient/p' } } as never, 'Patient/p'));
    assert.ok(inPatientCompartment({ resourceType: 'AllergyIntolerance', id: 'a', patient: { reference: 'http://x/fhir/Patient/p' } } as never, 'Patient/p'));
    assert.ok(inPatientCompartment({ resourceType: 'Patient', id: 'p' }, 'Patient/p'));
    assert.ok(!inPatientCompartment({ resourceType: 'Observation', id: 'o', subject: { reference: 'Patient/pp' } } as never, 'Patient/p'));
    // Practitioner is not in the Patient compartment even when it names the patient somewhere.
    assert.ok(!inPatientCompartment({ resourceType: 'Practitioner', id: 'd', text: { div: 'Patient/p' } } as never, 'Patient/p'));
    // Organization has no compartment parameter.
    assert.ok(!inPatientCompartment({ resourceType: 'Organization', id: 'x', partOf: { reference: 'Patient/p' } } as never, 'Patient/p'));
  });
});

describe('SqliteStore.shred / shredPatient', () => {
  it('destroys the compartment’s content keys (gone from the vault files), keeps others, and a backup of the data file no longer decrypts them', async () => {
    const file = dbPath();
    const keys = keyStoreToSecretKeys(createKeyStore('node-s'));
    const store = new SqliteStore(file, { secretKeys: keys, compaction: 'manual' });
    const replica = new Replica({ nodeId: 'node-s', store, policy: POLICY });
    const { p, q, shared } = populate(replica);
    new StoreIdMap(store).set('Observation/obs-p1', 'Observation/h-991');
    assert.deepEqual((await patientCompartmentKeys(store, 'Patient/pat-p')).keys.sort(), [...p].sort());
    const slots = p.map((k) => vaultSlot(file, store, k));
    const wrapped = slots.map((s) => store.keyVault!.wrappedKey(s)!);
    for (const w of wrapped) assert.ok(vaultBytes(file).includes(Buffer.from(w)), 'wrapped key is in the vault files before');
    // A backup of the data file taken before the shred (SQLite online backup).
    const backup = join(root, 'backup.sqlite');
    const db = new DatabaseSync(file);
    db.exec(`VACUUM INTO '${backup}'`);
    db.close();

    const report = await shredPatient('Patient/pat-p', { store, nodeId: 'node-s', requestor: 'test' });
    assert.deepEqual(report.shredded.sort(), [...p].sort());
    assert.equal(report.keysDestroyed, p.length);
    for (const w of wrapped) assert.ok(!vaultBytes(file).includes(Buffer.from(w)), 'wrapped key bytes are gone from the vault and its WAL');
    for (const s of slots) assert.throws(() => store.keyVault!.contentKey(s), (e: unknown) => e instanceof KeyVaultError && e.code === 'ERR_CONTENT_KEY_DESTROYED');
    for (const k of p) {
      assert.equal(store.get(k), undefined);
      assert.ok(store.isShredded(k));
    }
    for (const k of [...q, ...shared]) assert.ok(store.get(k)!.versions.at(-1)!.body, `${k} kept`);
    assert.equal(new StoreIdMap(store).toHospital('Observation/obs-p1'), undefined, 'id map pairing erased');
    assert.equal(new StoreIdMap(store).toNode('Observation/h-991'), undefined);
    assert.deepEqual([...store.keys()].sort(), [...q, ...shared].sort());
    // A write, local or merged, is refused: 410 at the FHIR edge.
    assert.throws(() => replica.write('Patient/pat-p', obj({ resourceType: 'Patient', id: 'pat-p' })), (e: unknown) => e instanceof ResourceShreddedError && e.status === 410);
    assert.throws(() => new StoreIdMap(store).set('Observation/obs-p1', 'Observation/h-1'), ResourceShreddedError);
    // The AuditEvent names the patient by tag only.
    const events = store.auditEvents() as Array<{ subtype: Array<{ code: string }>; entity: Array<{ what: { identifier: { value: string } } }> }>;
    assert.equal(events.length, 1);
    assert.equal(events[0]!.subtype[0]!.code, 'crypto-shred');
    assert.equal(events[0]!.entity[0]!.what.identifier.value, store.resourceTagHex('Patient/pat-p'));
    assert.ok(!JSON.stringify(events).includes('pat-p'), 'no resource id in the AuditEvent');
    store.close();

    // Restart: still shredded; the backup (with today's vault) reads Q but not P.
    const again = new SqliteStore(file, { secretKeys: keys, compaction: 'manual' });
    assert.ok(again.isShredded('Patient/pat-p'));
    assert.equal(again.get('Observation/obs-p1'), undefined);
    assert.equal([...again.keys()].length, q.length + shared.length);
    again.close();
    const restored = join(root, 'restored.sqlite');
    copyFileSync(backup, restored);
    copyFileSync(`${file}.keys`, `${restored}.keys`);
    const fromBackup = new SqliteStore(restored, { secretKeys: keys, compaction: 'manual' });
    for (const k of q) assert.ok(fromBackup.get(k)!.versions.at(-1)!.body, `${k} restores from the backup`);
    for (const k of p) {
      assert.throws(
        () => fromBackup.get(k)!.versions.at(-1)!.body,
        (e: unknown) => e instanceof KeyVaultError && e.code === 'ERR_CONTENT_KEY_DESTROYED',
        `${k} does not decrypt from the backup`,
      );
    }
    fromBackup.close();
  });

  it('a compartment resource written while the shred is scanning is shredded too', async () => {
    const store = new SqliteStore(dbPath(), { secretKeys: keyStoreToSecretKeys(createKeyStore('node-s')), compaction: 'manual' });
    const replica = new Replica({ nodeId: 'node-s', store, policy: POLICY });
    populate(replica);
    const pending = shredPatient('Patient/pat-p', { store, nodeId: 'node-s' });
    // The scan has run synchronously up to its first await: this write lands after it.
    replica.write('Observation/late-p', obj({ resourceType: 'Observation', id: 'late-p', status: 'final', code: { text: 'late' }, subject: { reference: 'Patient/pat-p' } }));
    replica.write('Observation/late-q', obj({ resourceType: 'Observation', id: 'late-q', status: 'final', code: { text: 'late' }, subject: { reference: 'Patient/pat-q' } }));
    const report = await pending;
    assert.ok(report.shredded.includes('Observation/late-p'));
    assert.ok(!report.shredded.includes('Observation/late-q'));
    assert.equal(store.get('Observation/late-p'), undefined);
    assert.ok(store.get('Observation/late-q'));
    store.close();
  });

  it('a shred interrupted after its data transaction destroys the keys at the next open', () => {
    const file = dbPath();
    const keys = keyStoreToSecretKeys(createKeyStore('node-s'));
    const store = new SqliteStore(file, { secretKeys: keys, compaction: 'manual' });
    populate(new Replica({ nodeId: 'node-s', store, policy: POLICY }));
    const slot = vaultSlot(file, store, 'Patient/pat-p');
    const w = store.keyVault!.wrappedKey(slot)!;
    store.close();
    // As if the process died between the two steps: the data file says "destroy slot", the vault still holds it.
    const db = new DatabaseSync(file);
    db.prepare('INSERT INTO shred_pending (slot) VALUES (?)').run(slot);
    db.close();
    assert.ok(vaultBytes(file).includes(Buffer.from(w)));
    const again = new SqliteStore(file, { secretKeys: keys, compaction: 'manual' });
    assert.throws(() => again.keyVault!.contentKey(slot), (e: unknown) => (e as KeyVaultError).code === 'ERR_CONTENT_KEY_DESTROYED');
    again.close();
    assert.ok(!vaultBytes(file).includes(Buffer.from(w)));
  });

  it('refuses a bad key and an unsealed store, changing nothing', async () => {
    const store = new SqliteStore(dbPath(), { secretKeys: keyStoreToSecretKeys(createKeyStore('node-s')), compaction: 'manual' });
    populate(new Replica({ nodeId: 'node-s', store, policy: POLICY }));
    for (const bad of ['Observation/obs-p1', 'Patient/../x', 'Patient/', 'pat-p']) {
      await assert.rejects(shredPatient(bad, { store, nodeId: 'node-s' }), (e: unknown) => e instanceof ShredError && e.code === 'ERR_SHRED_INVALID_KEY');
    }
    assert.equal(store.shreddedCount, 0);
    store.close();
    const plain = new SqliteStore(dbPath(), { compaction: 'manual' });
    await assert.rejects(shredPatient('Patient/pat-p', { store: plain, nodeId: 'x' }), (e: unknown) => (e as ShredError).code === 'ERR_SHRED_UNSUPPORTED_STORE');
    plain.close();
  });
});

describe('tidegate shred (CLI, node stopped)', () => {
  it('shreds through the config, drops the outbox jobs of the compartment in Redis, and refuses while the store is open', async () => {
    const dir = mkdtempSync(join(root, 'cli-'));
    const prefix = `tg-shredcli-${randomBytes(4).toString('hex')}`;
    const ks = createKeyStore('node-c');
    await writeKeyStoreFiles(dir, ks);
    const secretKeys = keyStoreToSecretKeys(ks);
    const cfgFile = join(dir, 'node.json');
    writeFileSync(cfgFile, JSON.stringify({ nodeId: 'node-c', hospitalFhirUrl: 'http://127.0.0.1:1/fhir', secretKeyFile: 'node-c.secret.json', storeFile: 'data/node-c.sqlite', queuePrefix: prefix, redisUrl: REDIS_URL }));
    const storeFile = join(dir, 'data/node-c.sqlite');
    const store = new SqliteStore(storeFile, { secretKeys, compaction: 'manual' });
    const replica = new Replica({ nodeId: 'node-c', store, policy: POLICY });
    const { p, q } = populate(replica);
    // Queued hospital writes of P and Q (the hospital is down: nothing consumes them).
    const outbox = new HospitalOutbox({ upsert: async () => undefined, remove: async () => undefined }, { nodeId: 'node-c', redisUrl: REDIS_URL, prefix, secret: secretKeys.kemSecretKey });
    const queue = new Queue(`outbox-node-c`, { connection: { url: REDIS_URL }, prefix });
    const r = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
    try {
      await queue.pause();
      await outbox.start();
      for (const k of [...p, ...q]) outbox.enqueue(k, store.get(k)!.versions.at(-1)!);
      const until = Date.now() + 20_000;
      while ((await queue.getWaitingCount()) < p.length + q.length && Date.now() < until) await new Promise((res) => setTimeout(res, 50));
      assert.equal(await queue.getWaitingCount(), p.length + q.length, 'every version is queued');
      await outbox.stop();
      await assert.rejects(runShred('Patient/pat-p', { config: cfgFile, env: {} }), (e: unknown) => e instanceof KeyVaultError && e.code === 'ERR_VAULT_IN_USE');
      store.close();
      const report = (await runShred('Patient/pat-p', { config: cfgFile, env: {} })) as Awaited<ReturnType<typeof shredPatient>>;
      assert.deepEqual(report.shredded.sort(), [...p].sort());
      assert.equal(report.dropped.outboxJobs, p.length, 'one queued job per compartment resource dropped');
      const left = (await queue.getJobs(['wait', 'delayed'])).length;
      assert.equal(left, q.length, "Q's jobs stay queued");
      const again = new SqliteStore(storeFile, { secretKeys, compaction: 'manual' });
      assert.ok(again.isShredded('Observation/cond-p1') === false && again.isShredded('Condition/cond-p1'));
      again.close();
    } finally {
      await queue.obliterate({ force: true }).catch(() => {});
      await queue.close();
      await deleteKeysMatching(r, `${prefix}:*`);
      r.disconnect();
    }
  });
});

describe('shred on a running node (admin route, two nodes, Redis)', () => {
  it('404/410 with OperationOutcome afterwards, peers’ later updates refused, inbox jobs naming the patient removed, AuditEvent in /admin/audit', async () => {
    const prefix = `tg-shred-${randomBytes(4).toString('hex')}`;
    const ids = ['sA', 'sB'];
    const secret = ids.map((id) => createKeyStore(id));
    const pub = secret.map((s) => publicKeysFromJson(keyStoreToPublicJson(s)));
    const stores: SqliteStore[] = [];
    const files: string[] = [];
    const hospitals: MedplumHospital[] = [];
    const nodes: TidegateNode[] = [];
    const r = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
    const sk: NodeSecretKeys[] = secret.map((s) => keyStoreToSecretKeys(s));
    try {
      for (const [i, id] of ids.entries()) {
        const file = dbPath();
        files.push(file);
        const store = new SqliteStore(file, { secretKeys: sk[i]! });
        stores.push(store);
        const h = await startMedplumHospital({ name: `${id}-fhir` });
        hospitals.push(h);
        const node = new TidegateNode({
          secretKeys: sk[i]!,
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
      const [a, b] = nodes as [TidegateNode, TidegateNode];
      const put = (node: TidegateNode, res: Record<string, unknown>): Promise<Response> =>
        fetch(`${node.baseUrl}/${String(res.resourceType)}/${String(res.id)}`, { method: 'PUT', headers: { 'Content-Type': 'application/fhir+json' }, body: JSON.stringify(res) });
      const settle = async (pred: () => boolean): Promise<void> => {
        const deadline = Date.now() + 60_000;
        while (Date.now() < deadline) {
          const quiet = (await Promise.all(nodes.map((nd) => nd.quiet()))).every(Boolean);
          if (quiet && pred()) return;
          await new Promise((res) => setTimeout(res, 100));
        }
        assert.fail('network did not settle');
      };
      assert.equal((await put(a, { resourceType: 'Patient', id: 'pat-p', name: [{ family: FAMILY }] })).status, 201);
      assert.equal((await put(a, { resourceType: 'Observation', id: 'obs-p1', status: 'final', code: { text: 'glucose' }, subject: { reference: 'Patient/pat-p' } })).status, 201);
      assert.equal((await put(a, { resourceType: 'Patient', id: 'pat-q', name: [{ family: OTHER_FAMILY }] })).status, 201);
      await settle(() => b.replica.current('Observation/obs-p1') !== undefined && b.replica.current('Patient/pat-q') !== undefined);
      // B's inbox holds completed jobs whose envelope headers name the patient.
      const inboxB = new Queue(`inbox-sB`, { connection: { url: REDIS_URL }, prefix });
      const naming = async (): Promise<number> => (await inboxB.getJobs(['completed', 'failed', 'wait', 'delayed'])).filter((j) => envelopeResources(j?.data?.env)?.includes('Patient/pat-p')).length;
      assert.ok((await naming()) > 0, 'inbox jobs naming the patient exist before');

      const res = await fetch(`${b.baseUrl.replace(/\/fhir$/, '')}/admin/shred/Patient/pat-p`, { method: 'POST' });
      assert.equal(res.status, 200);
      const report = (await res.json()) as { resourcesShredded: number; keysDestroyed: number; dropped: { inboxJobs: number }; auditEvent: { id: string } };
      assert.equal(report.resourcesShredded, 2);
      assert.equal(report.keysDestroyed, 2);
      assert.ok(report.dropped.inboxJobs > 0);
      assert.equal(await naming(), 0, 'no inbox job names the patient any more');
      await inboxB.close();
      const bad = await fetch(`${b.baseUrl.replace(/\/fhir$/, '')}/admin/shred/Patient/${'x'.repeat(65)}`, { method: 'POST' });
      assert.equal(bad.status, 400);
      assert.equal(((await bad.json()) as { resourceType: string }).resourceType, 'OperationOutcome');

      // Reads: 404 OperationOutcome; writes: 410 OperationOutcome; Q untouched.
      const read = await fetch(`${b.baseUrl}/Patient/pat-p`);
      assert.equal(read.status, 404);
      assert.equal(((await read.json()) as { resourceType: string }).resourceType, 'OperationOutcome');
      const write = await put(b, { resourceType: 'Patient', id: 'pat-p', name: [{ family: 'Again' }] });
      assert.equal(write.status, 410);
      const oo = (await write.json()) as { resourceType: string; issue: Array<{ code: string }> };
      assert.equal(oo.resourceType, 'OperationOutcome');
      assert.equal(oo.issue[0]!.code, 'deleted');
      assert.equal((await fetch(`${b.baseUrl}/Patient/pat-q`)).status, 200);
      // New data about the erased patient is refused too (410), directly and inside a transaction;
      // data about another patient is not.
      const about = await put(b, { resourceType: 'Observation', id: 'obs-after', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/pat-p' }, note: [{ text: 'new PHI' }] });
      assert.equal(about.status, 410);
      assert.equal(((await about.json()) as { issue: Array<{ code: string }> }).issue[0]!.code, 'deleted');
      const tx = await fetch(b.baseUrl, { method: 'POST', headers: { 'Content-Type': 'application/fhir+json' }, body: JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry: [{ resource: { resourceType: 'Condition', subject: { reference: 'Patient/pat-p' }, code: { text: 'y' } }, request: { method: 'POST', url: 'Condition' } }] }) });
      assert.equal(tx.status, 410);
      assert.equal((await fetch(`${b.baseUrl}/Observation/obs-after`)).status, 404, 'nothing written');
      const absolute = await put(b, { resourceType: 'Observation', id: 'obs-abs', status: 'final', code: { text: 'x' }, subject: { reference: `${b.baseUrl}/Patient/pat-p` } });
      assert.equal(absolute.status, 410, 'an absolute reference to the erased Patient (the node’s own base URL) is refused too');
      assert.equal((await put(b, { resourceType: 'Observation', id: 'obs-q', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/pat-q' } })).status, 201);

      // A later update of the patient at A reaches B and is refused, not resurrected.
      assert.equal((await put(a, { resourceType: 'Patient', id: 'pat-p', name: [{ family: FAMILY }], gender: 'female' })).status, 200);
      await settle(() => b.shreddedUpdatesRefused > 0);
      assert.equal((await fetch(`${b.baseUrl}/Patient/pat-p`)).status, 404);
      assert.equal((await fetch(`${a.baseUrl}/Patient/pat-p`)).status, 200, 'A was not shredded (shred is per node)');

      // The AuditEvent is in /admin/audit.
      const audit = (await (await fetch(`${b.baseUrl.replace(/\/fhir$/, '')}/admin/audit`)).json()) as { entry: Array<{ resource: { id: string } }> };
      assert.ok(audit.entry.some((e) => e.resource.id === report.auditEvent.id));
    } finally {
      for (const nd of nodes) await nd.stop();
      for (const h of hospitals) await h.close();
      for (const s of stores) s.close();
      await deleteKeysMatching(r, `${prefix}:*`);
      r.disconnect();
    }
    // B's files after stop: the patient's family name is nowhere (it never was in clear), and a restart keeps it shredded.
    const reopened = new SqliteStore(files[1]!, { secretKeys: sk[1]! });
    assert.ok(reopened.isShredded('Patient/pat-p'));
    assert.equal(reopened.get('Patient/pat-p'), undefined);
    reopened.close();
  });
});


describe('shred drops outgoing Tide batches still waiting in memory', () => {
  it('updates of the shredded compartment batched for a peer (batch delay not over) are never sent; others are', { timeout: 120_000 }, async () => {
    const prefix = `tg-shred-out-${randomBytes(4).toString('hex')}`;
    const ka = createKeyStore('oA');
    const kb = createKeyStore('oB');
    const sk = keyStoreToSecretKeys(ka);
    const store = new SqliteStore(dbPath(), { secretKeys: sk });
    const hospital = await startMedplumHospital({ name: 'oA-fhir' });
    const r = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
    // Peer oB is never started: whatever oA sends stays in oB's inbox on Redis, to be inspected.
    const node = new TidegateNode({
      secretKeys: sk,
      peers: [{ nodeId: 'oB', redisUrl: REDIS_URL, publicKeys: publicKeysFromJson(keyStoreToPublicJson(kb)) }],
      redisUrl: REDIS_URL,
      queuePrefix: prefix,
      hospital: new HospitalClient({ baseUrl: hospital.url }),
      store,
      logger: pino({ level: 'silent' }),
      antiEntropyIntervalMs: 0,
      batchDelayMs: 60_000,
      hospitalPollIntervalMs: 0,
    });
    const inboxB = new Queue('inbox-oB', { connection: { url: REDIS_URL }, prefix });
    try {
      await node.start();
      const put = (res: Record<string, unknown>): Promise<Response> =>
        fetch(`${node.baseUrl}/${String(res.resourceType)}/${String(res.id)}`, { method: 'PUT', headers: { 'Content-Type': 'application/fhir+json' }, body: JSON.stringify(res) });
      assert.equal((await put({ resourceType: 'Patient', id: 'pat-p', name: [{ family: FAMILY }] })).status, 201);
      assert.equal((await put({ resourceType: 'Observation', id: 'obs-p1', status: 'final', code: { text: 'glucose' }, subject: { reference: 'Patient/pat-p' } })).status, 201);
      assert.equal((await put({ resourceType: 'Patient', id: 'pat-q', name: [{ family: OTHER_FAMILY }] })).status, 201);
      assert.equal(node.tide.stats().messagesSent, 0, 'the batch is still waiting (60 s batch delay)');
      const report = await node.shred('Patient/pat-p', 'test');
      assert.equal(report.shredded.length, 2);
      assert.equal(report.dropped.outgoingUpdates, 2, 'the two shredded resources were dropped from the waiting batch');
      await node.tide.flush();
      const jobs = (await inboxB.getJobs(['wait', 'delayed', 'prioritized', 'completed', 'failed'])).filter((j) => j !== undefined);
      const named = jobs.flatMap((j) => envelopeResources(j.data?.env) ?? ['?unrecognized']);
      assert.ok(named.includes('Patient/pat-q'), `the other patient's update was sent (${named.join(', ')})`);
      assert.ok(!named.includes('Patient/pat-p') && !named.includes('Observation/obs-p1'), `no envelope names the shredded compartment (${named.join(', ')})`);
      // A batch already taken for sending but not sealed yet: the dropped key is left out at sealing.
      assert.equal((await put({ resourceType: 'Patient', id: 'pat-r', name: [{ family: FAMILY }] })).status, 201);
      assert.equal((await put({ resourceType: 'Patient', id: 'pat-u', name: [{ family: OTHER_FAMILY }] })).status, 201);
      const sending = node.tide.flush();
      assert.equal(node.tide.drop(new Set(['Patient/pat-r'])), 0, 'no longer in the waiting batch');
      await sending;
      const named2 = (await inboxB.getJobs(['wait', 'delayed', 'prioritized', 'completed', 'failed'])).filter((j) => j !== undefined).flatMap((j) => envelopeResources(j.data?.env) ?? []);
      assert.ok(named2.includes('Patient/pat-u'), 'the rest of that batch was sent');
      assert.ok(!named2.includes('Patient/pat-r'), 'the dropped key was left out when the batch was sealed');
      // A later write of the shredded key is refused at the node, so nothing about it is published again.
      assert.equal((await put({ resourceType: 'Patient', id: 'pat-p', name: [{ family: FAMILY }] })).status, 410);
      assert.equal(node.tide.drop(new Set(['Patient/pat-p'])), 0, 'nothing of it is waiting any more');
    } finally {
      await inboxB.close();
      await node.stop();
      await hospital.close();
      store.close();
      await deleteKeysMatching(r, `${prefix}:*`);
      r.disconnect();
    }
  });
});
