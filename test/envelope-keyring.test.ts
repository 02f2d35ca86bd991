/**
 * Peers learn new public keys through a reload, without a restart (issue #4 "Keys"; docs/envelope.md §15):
 * - `PeerKeyring` unit behaviour: in-place update of the live key objects, all-or-nothing reload;
 * - the real `tidegate serve` process (spawned, real Redis db 14, a Medplum hospital over HTTP):
 *   an envelope signed with a peer's newly rotated key is refused (ERR_UNKNOWN_PEER) before the
 *   reload and accepted after `POST /admin/reload`, and again after a second rotation and SIGHUP.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import {
  createKeyStore,
  EnvelopeError,
  keyStoreToPublicKeys,
  keyStoreToSecretKeys,
  KeyFileError,
  open,
  PeerKeyring,
  retireKey,
  rotateKeyStore,
  seal,
  writeKeyStoreFiles,
} from '../src/envelope/index.ts';
import type { KeyStore, NodePublicKeys } from '../src/envelope/index.ts';
import { startMedplumHospital } from '../src/hospital/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { Replica } from '../src/merge/replica.ts';
import { MemoryStore } from '../src/store/store.ts';
import { encodeUpdates, inboxQueueName } from '../src/tide/index.ts';
import { freePort } from './fixtures/tide/harness.ts';
import { deleteKeysMatching } from '../src/tide/redis-keys.ts';

const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);
const REDIS_URL = 'redis://127.0.0.1:6379/14';

/** The A store after "rotate, then retire the current signing key": A now signs with a new ML-DSA key. */
function rotateSigning(store: KeyStore): KeyStore {
  const oldSig = store.keys.find((k) => k.use === 'sig' && k.status === 'current')!.kid;
  return retireKey(rotateKeyStore(store), oldSig);
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
    return 'ok';
  } catch (e) {
    return e instanceof EnvelopeError ? e.code : `${(e as Error).name}`;
  }
}

describe('PeerKeyring', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tidegate-keyring-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('a rotated peer signing key is refused before reload and accepted after; the live object is updated in place', async () => {
    let a = createKeyStore('kr-a');
    const b = createKeyStore('kr-b');
    await writeKeyStoreFiles(dir, a);
    const ring = await PeerKeyring.load([{ nodeId: 'kr-a', publicKeyFile: join(dir, 'kr-a.public.json') }]);
    const live = ring.get('kr-a')!;
    const peers = new Map([['kr-a', live]]); // what Tide holds: the same object
    const msg = { kind: 'updates', messageId: randomUUID(), resources: ['Patient/p'], plaintext: utf8('x') };
    assert.equal(open(seal(msg, keyStoreToSecretKeys(a), keyStoreToPublicKeys(b)), keyStoreToSecretKeys(b), peers).header.sender, 'kr-a');

    a = rotateSigning(a);
    await writeKeyStoreFiles(dir, a, { overwrite: true });
    const env = seal({ ...msg, messageId: randomUUID() }, keyStoreToSecretKeys(a), keyStoreToPublicKeys(b));
    assert.equal(codeOf(() => open(env, keyStoreToSecretKeys(b), peers)), 'ERR_UNKNOWN_PEER', 'refused before reload');

    const result = await ring.reload();
    assert.equal(ring.get('kr-a'), live, 'same object');
    assert.equal(result.changed.length, 1);
    assert.equal(result.changed[0]!.nodeId, 'kr-a');
    assert.equal(result.changed[0]!.sigKeyIds.to[0], keyStoreToPublicKeys(a).sigKeyId);
    assert.equal(result.changed[0]!.kemKeyId.to, keyStoreToPublicKeys(a).kemKeyId);
    assert.equal(open(env, keyStoreToSecretKeys(b), peers).header.senderKid, keyStoreToPublicKeys(a).sigKeyId, 'accepted after reload');
    // sealing to the peer now uses its new X-Wing key (through the same object)
    const toA = seal(msg, keyStoreToSecretKeys(b), live);
    assert.deepEqual(open(toA, keyStoreToSecretKeys(a), new Map([['kr-b', keyStoreToPublicKeys(b)]])).plaintext, utf8('x'));
    assert.deepEqual(await ring.reload(), { changed: [], unchanged: ['kr-a'] });
  });

  it('reload is all or nothing: a bad or foreign file changes nothing and throws', async () => {
    const a = createKeyStore('kr-c');
    const d = createKeyStore('kr-d');
    await writeKeyStoreFiles(dir, a);
    await writeKeyStoreFiles(dir, d);
    const ring = await PeerKeyring.load([
      { nodeId: 'kr-c', publicKeyFile: join(dir, 'kr-c.public.json') },
      { nodeId: 'kr-d', publicKeyFile: join(dir, 'kr-d.public.json') },
    ]);
    const before: NodePublicKeys = { ...ring.get('kr-c')! };
    await writeKeyStoreFiles(dir, rotateSigning(a), { overwrite: true }); // valid change for kr-c ...
    await writeFile(join(dir, 'kr-d.public.json'), '{"format":"tidegate-node-public/2"'); // ... but kr-d is broken
    await assert.rejects(ring.reload(), KeyFileError);
    assert.equal(ring.get('kr-c')!.sigKeyId, before.sigKeyId, 'kr-c not updated either');
    assert.equal(ring.get('kr-c')!.kemKeyId, before.kemKeyId);
    await writeKeyStoreFiles(dir, createKeyStore('kr-x'), { overwrite: true });
    await writeFile(join(dir, 'kr-d.public.json'), await import('node:fs/promises').then((fs) => fs.readFile(join(dir, 'kr-x.public.json'), 'utf8')));
    await assert.rejects(ring.reload(), /is for node kr-x, not kr-d/);
    assert.equal(ring.get('kr-c')!.sigKeyId, before.sigKeyId);
  });

  it('load refuses a duplicate peer and a file of another node', async () => {
    await writeKeyStoreFiles(dir, createKeyStore('kr-e'));
    const f = join(dir, 'kr-e.public.json');
    await assert.rejects(PeerKeyring.load([{ nodeId: 'kr-e', publicKeyFile: f }, { nodeId: 'kr-e', publicKeyFile: f }]), KeyFileError);
    await assert.rejects(PeerKeyring.load([{ nodeId: 'kr-f', publicKeyFile: f }]), KeyFileError);
  });
});

describe('tidegate serve: peer key reload without restart (POST /admin/reload, SIGHUP)', { timeout: 300_000 }, () => {
  let dir: string;
  let hospital: MedplumHospital;
  let child: ChildProcess;
  let inbox: Queue;
  let base: string;
  let logs = '';
  const prefix = `kr-${randomBytes(4).toString('hex')}`;
  let a: KeyStore;
  const b = createKeyStore('srv-b');
  const donor = new Replica({ nodeId: 'srv-a', store: new MemoryStore(), policy: loadMergePolicy() });

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tidegate-serve-reload-'));
    a = createKeyStore('srv-a');
    await writeKeyStoreFiles(dir, a);
    await writeKeyStoreFiles(dir, b);
    hospital = await startMedplumHospital({ name: 'srv-b-fhir' });
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    const cfg = {
      nodeId: 'srv-b',
      listen: { host: '127.0.0.1', port },
      hospitalFhirUrl: hospital.url,
      redisUrl: REDIS_URL,
      queuePrefix: prefix,
      secretKeyFile: join(dir, 'srv-b.secret.json'),
      storeFile: ':memory:',
      peers: [{ nodeId: 'srv-a', redisUrl: REDIS_URL, publicKeyFile: join(dir, 'srv-a.public.json') }],
      antiEntropyIntervalMs: 0,
      hospitalPollIntervalMs: 0,
      logLevel: 'info',
    };
    const cfgPath = join(dir, 'srv-b.json');
    await writeFile(cfgPath, JSON.stringify(cfg));
    child = spawn(process.execPath, ['src/cli/main.ts', 'serve', '--config', cfgPath, '--insecure-dev'], { cwd: new URL('..', import.meta.url), stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.on('data', (d: Buffer) => (logs += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (logs += d.toString()));
    await waitFor('node listening', async () => logs.includes('tidegate node listening'), 120_000);
    inbox = new Queue(inboxQueueName('srv-b'), { connection: { url: REDIS_URL }, prefix });
  });

  after(async () => {
    if (child && child.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
    await inbox?.close();
    await hospital?.close();
    const r = new Redis(REDIS_URL);
    try {
      await deleteKeysMatching(r, `${prefix}:*`);
    } finally {
      r.disconnect();
    }
    await rm(dir, { recursive: true, force: true });
  });

  /** Seals one real `updates` message from A (current keys) to B and adds it to B's inbox; returns its final job state. */
  async function deliver(id: string): Promise<{ state: string; reason: string | undefined }> {
    const key = `Patient/${id}`;
    const w = donor.write(key, { resourceType: 'Patient', id, name: [{ family: 'Reload' }] });
    assert.ok(w.update);
    const messageId = randomUUID();
    const env = seal({ kind: 'updates', messageId, resources: [key], plaintext: encodeUpdates([{ key, update: w.update }]) }, keyStoreToSecretKeys(a), keyStoreToPublicKeys(b));
    await inbox.add('updates', { env }, { jobId: messageId });
    let state = '';
    await waitFor(`job ${messageId} done`, async () => {
      state = await inbox.getJobState(messageId);
      return state === 'completed' || state === 'failed';
    }, 60_000);
    return { state, reason: (await inbox.getJob(messageId))?.failedReason };
  }

  it('baseline: a message signed with the configured key is applied', async () => {
    assert.deepEqual(await deliver('rl-0'), { state: 'completed', reason: undefined });
  });

  it('after the peer rotates: refused (ERR_UNKNOWN_PEER) until POST /admin/reload, accepted after', async () => {
    a = rotateSigning(a);
    await writeKeyStoreFiles(dir, a, { overwrite: true });
    assert.deepEqual(await deliver('rl-1'), { state: 'failed', reason: 'ERR_UNKNOWN_PEER' });
    const res = await fetch(`${base}/admin/reload`, { method: 'POST' });
    assert.equal(res.status, 200);
    const body = (await res.json()) as { node: string; reloaded: { keys: { changed: { nodeId: string; sigKeyIds: { to: string[] } }[] } } };
    assert.equal(body.node, 'srv-b');
    assert.equal(body.reloaded.keys.changed[0]?.nodeId, 'srv-a');
    assert.equal(body.reloaded.keys.changed[0]?.sigKeyIds.to[0], keyStoreToPublicKeys(a).sigKeyId);
    assert.deepEqual(await deliver('rl-2'), { state: 'completed', reason: undefined });
  });

  it('an invalid public key file: 422 OperationOutcome, the keys in use are kept', async () => {
    await writeFile(join(dir, 'srv-a.public.json'), 'not json');
    const res = await fetch(`${base}/admin/reload`, { method: 'POST' });
    assert.equal(res.status, 422);
    const oo = (await res.json()) as { resourceType: string; issue: { code: string; diagnostics: string }[] };
    assert.equal(oo.resourceType, 'OperationOutcome');
    assert.match(oo.issue[0]!.diagnostics, /not valid JSON/);
    assert.deepEqual(await deliver('rl-3'), { state: 'completed', reason: undefined });
    await writeKeyStoreFiles(dir, a, { overwrite: true });
  });

  it('SIGHUP reloads too: a second rotation is accepted after the signal', async () => {
    a = rotateSigning(a);
    await writeKeyStoreFiles(dir, a, { overwrite: true });
    assert.deepEqual(await deliver('rl-4'), { state: 'failed', reason: 'ERR_UNKNOWN_PEER' });
    const before = (logs.match(/peer public keys reloaded/g) ?? []).length;
    child.kill('SIGHUP');
    await waitFor('reload logged', async () => (logs.match(/peer public keys reloaded/g) ?? []).length > before, 30_000);
    assert.equal(child.exitCode, null, 'still running');
    assert.deepEqual(await deliver('rl-5'), { state: 'completed', reason: undefined });
    for (const k of b.keys) assert.ok(!logs.includes(Buffer.from(k.priv!).toString('base64url')), 'no secret key bytes of the node in its logs');
  });
});

async function waitFor(what: string, cond: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
