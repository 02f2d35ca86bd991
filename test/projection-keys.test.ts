/**
 * Projection stores (docs/mappings.md "Projection stores") and the node's key operations:
 *
 * - offline `tidegate shred` shreds the patient's compartment in every projection store of the
 *   store file (all peers, all epochs), not only in the node's store;
 * - `tidegate keys rewrap` re-wraps every projection key vault too;
 * - `tidegate keys retire --config` refuses an X-Wing key a vault (node's or projection's) is still
 *   wrapped under;
 * - a projection store that cannot be opened shows in `GET /admin/peers` (`lastError` of that peer),
 *   anti-entropy with the peer keeps running, and the log line is rate-limited.
 *
 * Real key files, sealed SQLite stores, Redis and a Medplum hospital over HTTP; no mocks.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pino from 'pino';
import { Replica } from '../src/merge/replica.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import { KeyVault, KeyVaultError } from '../src/store/vault.ts';
import { runRewrap, runShred } from '../src/cli/shred.ts';
import type { OfflineShredReport } from '../src/cli/shred.ts';
import { createKeyStore, keyStoreToSecretKeys, retireKey, rotateKeyStore, writeKeyStoreFiles } from '../src/envelope/keys.ts';
import type { KeyStore } from '../src/envelope/keys.ts';
import { generateNodeKeys } from '../src/envelope/index.ts';
import { loadMappingOrThrow, openProjectionSqlite, ProjectionFeeds } from '../src/mapping/index.ts';
import type { TidegateNode } from '../src/node/node.ts';
import { Queue } from 'bullmq';
import { open as openEnvelope } from '../src/envelope/index.ts';
import { decodeUpdates } from '../src/tide/codec.ts';
import { inboxQueueName } from '../src/tide/index.ts';
import { startMappedNodes } from './fixtures/mapped-nodes.ts';
import type { MappedNodes } from './fixtures/mapped-nodes.ts';

const POLICY = loadMergePolicy();
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const MAIN = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
const run = promisify(execFile);
const FAMILY = 'Projectionsky';
const BIRTH = '1961-07-14';

let root = '';
before(() => {
  root = mkdtempSync(join(tmpdir(), 'tidegate-projection-keys-'));
});
after(() => rmSync(root, { recursive: true, force: true }));

/** A stopped node in a fresh folder: key files, config, store with Patient/s1 (+ an Observation) and a research projection. */
async function stoppedNode(name: string): Promise<{ dir: string; cfgFile: string; storeFile: string; ks: KeyStore; projection: string }> {
  const dir = mkdtempSync(join(root, `${name}-`));
  const ks = createKeyStore(name);
  await writeKeyStoreFiles(dir, ks);
  const secretKeys = keyStoreToSecretKeys(ks);
  const cfgFile = join(dir, 'node.json');
  writeFileSync(join(dir, 'mapping.json'), JSON.stringify({ routes: { research: { redact: [{ path: 'Patient.telecom' }, { path: 'Observation.note' }] } } }));
  writeFileSync(cfgFile, JSON.stringify({ nodeId: name, hospitalFhirUrl: 'http://127.0.0.1:1/fhir', secretKeyFile: `${name}.secret.json`, storeFile: 'data/node.sqlite', queuePrefix: `tg-pk-${randomBytes(4).toString('hex')}`, redisUrl: REDIS_URL }));
  const storeFile = join(dir, 'data/node.sqlite');
  const store = new SqliteStore(storeFile, { secretKeys, compaction: 'manual' });
  const shared = new Replica({ nodeId: name, store, policy: POLICY });
  shared.write('Patient/s1', { resourceType: 'Patient', id: 's1', name: [{ family: FAMILY }], birthDate: BIRTH, telecom: [{ system: 'phone', value: '555-0199' }] });
  shared.write('Observation/o1', { resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'weight' }, subject: { reference: 'Patient/s1' }, note: [{ text: 'private' }] });
  shared.write('Patient/s2', { resourceType: 'Patient', id: 's2', name: [{ family: 'Keepsake' }] });
  const mapping = loadMappingOrThrow(join(dir, 'mapping.json'), { peers: ['research'] });
  const opened = openProjectionSqlite(storeFile, 'research', { secretKeys });
  try {
    const feeds = new ProjectionFeeds({ nodeId: name, mapping: () => mapping, shared, policy: POLICY, openStore: () => opened, publishTo: () => {}, mayReceive: () => true });
    await feeds.backfill();
    await feeds.stop();
    assert.ok(opened.store.get('Patient/s1'), 'projected');
    assert.ok(opened.store.get('Observation/o1'), 'projected');
  } finally {
    opened.close();
    store.close();
  }
  return { dir, cfgFile, storeFile, ks, projection: opened.path };
}

/** The X-Wing key id a vault file is wrapped under (opened with the key store's keys). */
function vaultKid(file: string, ks: KeyStore): string {
  const v = new KeyVault(file, { secretKeys: keyStoreToSecretKeys(ks), autoRewrap: false });
  try {
    return v.generation.kid;
  } finally {
    v.close();
  }
}

describe('offline shred reaches the projection stores', () => {
  it('shreds the compartment in every projection store of the store file (all epochs), reports counts per file', async () => {
    const { cfgFile, storeFile, ks, projection } = await stoppedNode('node-ps');
    const secretKeys = keyStoreToSecretKeys(ks);
    // a second epoch of the same peer (a copy restored by hand), and a backup of the data file
    const epoch2 = projection.replace(/\.[0-9a-f]+\.sqlite$/, '.abc123.sqlite');
    copyFileSync(projection, epoch2);
    copyFileSync(`${projection}.keys`, `${epoch2}.keys`);
    const backup = join(storeFile, '..', 'projection-backup.sqlite');
    copyFileSync(projection, backup);

    const report = (await runShred('Patient/s1', { config: cfgFile, redis: false, env: {} })) as OfflineShredReport;
    assert.deepEqual(report.shredded.sort(), ['Observation/o1', 'Patient/s1']);
    assert.equal(report.projections.length, 2, 'both projection files');
    for (const p of report.projections) {
      assert.equal(p.peer, 'research');
      assert.equal(p.shredded, 2);
      assert.equal(p.keysDestroyed, 2);
      assert.deepEqual(Object.keys(p).sort(), ['epoch', 'file', 'keysDestroyed', 'peer', 'shredded']);
      assert.doesNotMatch(JSON.stringify(p), /s1|o1|Projectionsky/, 'counts only');
    }
    for (const file of [projection, epoch2]) {
      const again = new SqliteStore(file, { secretKeys, compaction: 'manual' });
      try {
        assert.ok(again.isShredded('Patient/s1') && again.isShredded('Observation/o1'), `${file}: tombstoned`);
        assert.equal(again.get('Patient/s1'), undefined);
        assert.ok(again.get('Patient/s2'), 'another patient stays');
      } finally {
        again.close();
      }
    }
    // the backup of the data file does not decrypt with the vault left after the shred
    const restored = join(storeFile, '..', 'restored.sqlite');
    copyFileSync(backup, restored);
    copyFileSync(`${projection}.keys`, `${restored}.keys`);
    const fromBackup = new SqliteStore(restored, { secretKeys, compaction: 'manual' });
    try {
      assert.ok(fromBackup.get('Patient/s2')!.versions.at(-1)!.body);
      assert.throws(() => fromBackup.get('Patient/s1')!.versions.at(-1)!.body, (e: unknown) => e instanceof KeyVaultError && e.code === 'ERR_CONTENT_KEY_DESTROYED');
    } finally {
      fromBackup.close();
    }
  });

  it('a projection store that cannot be opened stops the shred before anything changes', async () => {
    const { cfgFile, storeFile, projection, ks: nodeKeys } = await stoppedNode('node-pu');
    // the projection vault is replaced by one of another node: it does not open with this node's keys
    const other = join(storeFile, '..', 'other.sqlite');
    new SqliteStore(other, { secretKeys: generateNodeKeys('x').secretKeys, compaction: 'manual' }).close();
    copyFileSync(`${other}.keys`, `${projection}.keys`);
    await assert.rejects(runShred('Patient/s1', { config: cfgFile, redis: false, env: {} }), /projection store .*projection-research.* cannot be opened/);
    const main = new SqliteStore(storeFile, { secretKeys: keyStoreToSecretKeys(nodeKeys), compaction: 'manual' });
    try {
      assert.equal(main.isShredded('Patient/s1'), false, 'nothing changed');
      assert.ok(main.get('Patient/s1'));
    } finally {
      main.close();
    }
  });
});

describe('key rotation with a projection peer', () => {
  it('`keys rewrap` re-wraps every projection vault; after `keys retire` the projection still opens', async () => {
    const { cfgFile, storeFile, ks, projection } = await stoppedNode('node-pr');
    const oldKid = ks.keys.find((k) => k.use === 'enc')!.kid;
    const rotated = rotateKeyStore(ks);
    await writeKeyStoreFiles(join(cfgFile, '..'), rotated, { overwrite: true });
    const r = await runRewrap({ config: cfgFile, env: {} });
    assert.equal(r.from.kid, oldKid);
    assert.notEqual(r.to.kid, oldKid);
    assert.equal(r.projections.length, 1);
    assert.equal(r.projections[0]!.peer, 'research');
    assert.equal(r.projections[0]!.from.kid, oldKid);
    assert.equal(r.projections[0]!.to.kid, r.to.kid);
    assert.ok(r.projections[0]!.keys >= 3, 'content keys + index key');
    // a second run: nothing left to do anywhere
    const r2 = await runRewrap({ config: cfgFile, env: {} });
    assert.equal(r2.keys, 0);
    assert.deepEqual(r2.projections.map((p) => p.keys), [0]);
    const retired = retireKey(rotated, oldKid);
    const reopened = new SqliteStore(projection, { secretKeys: keyStoreToSecretKeys(retired), compaction: 'manual' });
    try {
      assert.match(reopened.get('Patient/s1')!.versions.at(-1)!.body!, new RegExp(FAMILY));
    } finally {
      reopened.close();
    }
    assert.equal(vaultKid(`${storeFile}.keys`, retired), r.to.kid);
  });

  it('`keys rewrap` also re-wraps projection vaults when the node store was re-wrapped already', async () => {
    const { cfgFile, storeFile, ks, projection } = await stoppedNode('node-pa');
    const rotated = rotateKeyStore(ks);
    await writeKeyStoreFiles(join(cfgFile, '..'), rotated, { overwrite: true });
    // the node's store re-wrapped (a restart re-wraps at open) but the projection store never opened
    new SqliteStore(storeFile, { secretKeys: keyStoreToSecretKeys(rotated), compaction: 'manual' }).close();
    const r = await runRewrap({ config: cfgFile, env: {} });
    assert.equal(r.keys, 0);
    assert.equal(r.projections.length, 1);
    assert.ok(r.projections[0]!.keys >= 3);
    assert.equal(vaultKid(`${projection}.keys`, rotated), rotated.keys.find((k) => k.use === 'enc' && k.status === 'current')!.kid);
  });

  it('`keys retire --config` refuses an X-Wing key a vault is still wrapped under, naming the file; after `keys rewrap` it retires', async () => {
    const { dir, cfgFile, storeFile, ks, projection } = await stoppedNode('node-pt');
    const oldKid = ks.keys.find((k) => k.use === 'enc')!.kid;
    const rotated = rotateKeyStore(ks);
    await writeKeyStoreFiles(dir, rotated, { overwrite: true });
    new SqliteStore(storeFile, { secretKeys: keyStoreToSecretKeys(rotated), compaction: 'manual' }).close(); // node's store only
    const cli = (...args: string[]) => run(process.execPath, [MAIN, 'keys', ...args], { cwd: dir });
    await assert.rejects(cli('retire', oldKid, '--node', 'node-pt', '--dir', '.', '--config', 'node.json'), (e: { code?: number; stderr?: string }) => {
      assert.notEqual(e.code, 0);
      assert.match(e.stderr ?? '', /still wrapped under/);
      assert.match(e.stderr ?? '', /projection-research\.[0-9a-f]+\.sqlite\.keys/);
      assert.match(e.stderr ?? '', /keys rewrap/);
      return true;
    });
    assert.equal(vaultKid(`${projection}.keys`, rotated), oldKid, 'nothing changed');
    const listed = JSON.parse((await cli('list', '--node', 'node-pt', '--dir', '.', '--json')).stdout) as { kid: string; status: string }[];
    assert.equal(listed.find((k) => k.kid === oldKid)!.status, 'previous', 'not retired');
    await runRewrap({ config: cfgFile, env: {} });
    const out = JSON.parse((await cli('retire', oldKid, '--node', 'node-pt', '--dir', '.', '--config', 'node.json')).stdout) as { keys: { kid: string; status: string }[] };
    assert.equal(out.keys.find((k) => k.kid === oldKid)!.status, 'retired');
  });
});

describe('a projection store that cannot be opened is visible', () => {
  let fx: MappedNodes | undefined;
  let node: TidegateNode;
  let url = '';
  let prefix = '';
  const lines: string[] = [];
  let dir = '';
  const keysA = generateNodeKeys('pk-a');
  const keysR = generateNodeKeys('pk-research');

  before(async () => {
    dir = mkdtempSync(join(root, 'node-'));
    // a projection store sealed under another node's key: this node's keys do not open its vault
    const storeFile = join(dir, 'a.sqlite');
    openProjectionSqlite(storeFile, 'pk-research', { secretKeys: keysR.secretKeys }).close();
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
        cb();
      },
    });
    fx = await startMappedNodes({
      prefix: 'tg-pkn',
      names: ['pk-a'],
      remotePeers: ['pk-research'],
      keys: { 'pk-a': keysA, 'pk-research': keysR },
      mappings: { 'pk-a': { routes: { 'pk-research': { redact: [{ path: 'Patient.telecom' }] } } } },
      node: () => ({
        logger: pino({ level: 'info' }, sink),
        projectionStore: (peerId) => openProjectionSqlite(storeFile, peerId, { secretKeys: keysA.secretKeys }),
      }),
    });
    [node] = fx.nodes as [TidegateNode];
    [url] = fx.urls as [string];
    prefix = fx.prefix;
  });

  after(() => fx?.stop());

  it('GET /admin/peers shows lastError for the peer, anti-entropy keeps running, the warning is rate-limited', async () => {
    for (let i = 0; i < 30; i++) {
      const res = await fetch(`${url}/fhir/Patient/pk-${i}`, { method: 'PUT', headers: { 'Content-Type': 'application/fhir+json' }, body: JSON.stringify({ resourceType: 'Patient', id: `pk-${i}`, telecom: [{ system: 'phone', value: '555-0100' }] }) });
      assert.ok(res.status === 200 || res.status === 201, `PUT ${res.status}`);
    }
    const obs = await fetch(`${url}/fhir/Observation/pk-obs`, { method: 'PUT', headers: { 'Content-Type': 'application/fhir+json' }, body: JSON.stringify({ resourceType: 'Observation', id: 'pk-obs', status: 'final', code: { text: 'weight' }, subject: { reference: 'Patient/pk-0' } }) });
    assert.ok(obs.ok);
    await node.projections.idle();
    await node.tide.runAntiEntropy(); // does not throw: the peer's projected types are left out
    await node.tide.runAntiEntropy();
    await node.tide.flush();
    await new Promise((r) => setTimeout(r, 500));
    // fail closed: research got the Observation (shared type) and nothing of the projected type
    const inbox = new Queue(inboxQueueName('pk-research'), { connection: { url: REDIS_URL }, prefix, skipMetasUpdate: true });
    const received = new Set<string>();
    try {
      for (const j of await inbox.getJobs(['waiting', 'prioritized', 'delayed'])) {
        const opened = openEnvelope((j.data as { env: string }).env, keysR.secretKeys, new Map([['pk-a', keysA.publicKeys]]));
        if (opened.header.kind !== 'updates') continue;
        for (const u of decodeUpdates(opened.plaintext)) received.add(u.key);
      }
    } finally {
      await inbox.close();
    }
    assert.ok(received.has('Observation/pk-obs'), 'other types still sent');
    assert.ok(![...received].some((k) => k.startsWith('Patient/')), 'no Patient (projected type) sent while its projection store is unavailable');
    const peers = (await (await fetch(`${url}/admin/peers`)).json()) as { peers: { nodeId: string; lastError?: { at: string; message: string } }[] };
    const p = peers.peers.find((x) => x.nodeId === 'pk-research')!;
    assert.ok(p.lastError, 'lastError set');
    assert.match(p.lastError.message, /projection store/);
    assert.match(p.lastError.message, /ERR_VAULT_KEY_UNAVAILABLE|does not hold|not readable/);
    const warnings = lines.filter((l) => /projection/.test(l) && /"level":40/.test(l));
    assert.ok(warnings.length >= 1, 'logged');
    assert.ok(warnings.length <= 4, `rate-limited: ${warnings.length} warning lines for 30 resources and 2 anti-entropy rounds`);
    for (const l of warnings) assert.doesNotMatch(l, /555-0100|pk-\d/, 'no PHI, no resource ids');
    assert.ok(!readdirSync(dir).some((n) => n.endsWith('.sqlite') && n.includes('projection') && !existsSync(join(dir, `${n}.keys`))), 'no new projection store created');
  });
});

describe('a projection store that stops taking writes is visible', () => {
  let fx: MappedNodes | undefined;
  let node: TidegateNode;
  let url = '';
  let projectionPath = '';

  before(async () => {
    const dir = mkdtempSync(join(root, 'wnode-'));
    fx = await startMappedNodes({
      prefix: 'tg-pkw',
      names: ['pkw-a'],
      remotePeers: ['pkw-research'],
      mappings: { 'pkw-a': { routes: { 'pkw-research': { redact: [{ path: 'Patient.telecom' }] } } } },
      node: (_name, { keys }) => ({
        projectionStore: (peerId) => {
          const p = openProjectionSqlite(join(dir, 'a.sqlite'), peerId, { secretKeys: keys['pkw-a']!.secretKeys, busyTimeoutMs: 50 });
          projectionPath = p.path;
          return p;
        },
      }),
    });
    [node] = fx.nodes as [TidegateNode];
    [url] = fx.urls as [string];
  });

  after(() => fx?.stop());

  const put = async (telecom: string): Promise<void> => {
    const res = await fetch(`${url}/fhir/Patient/pkw-1`, { method: 'PUT', headers: { 'Content-Type': 'application/fhir+json' }, body: JSON.stringify({ resourceType: 'Patient', id: 'pkw-1', gender: telecom.endsWith('1') ? 'female' : 'male', telecom: [{ system: 'phone', value: telecom }] }) });
    assert.ok(res.ok, `PUT ${res.status}`);
    await node.projections.idle();
  };
  const lastError = async (): Promise<{ at: string; message: string } | undefined> => {
    const peers = (await (await fetch(`${url}/admin/peers`)).json()) as { peers: { nodeId: string; lastError?: { at: string; message: string } }[] };
    return peers.peers.find((x) => x.nodeId === 'pkw-research')!.lastError;
  };

  it('a failed projection write shows as the peer lastError at the next anti-entropy round', async () => {
    await put('555-0101');
    assert.ok(node.projections.replicaFor('pkw-research').current('Patient/pkw-1'), 'projected');
    await node.tide.runAntiEntropy();
    assert.equal(await lastError(), undefined, 'healthy');
    // another connection holds the projection data file's write lock: writes fail, reads go on
    const { DatabaseSync } = await import('node:sqlite');
    const lock = new DatabaseSync(projectionPath);
    lock.exec('BEGIN IMMEDIATE');
    try {
      await put('555-0102');
      await node.tide.runAntiEntropy();
      const e = await lastError();
      assert.ok(e, 'lastError set');
      assert.match(e.message, /projection store: .*last write failed/);
      assert.doesNotMatch(e.message, /555-01/);
    } finally {
      lock.exec('ROLLBACK');
      lock.close();
    }
    const failures = node.projections.stats().failures;
    assert.ok(failures >= 1);
  });
});
