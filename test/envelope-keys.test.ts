/**
 * Key stores (tidegate-node-secret/2, AKP JWK Set public files), rotation and retirement, and the
 * `tidegate keys generate|rotate|retire|list` commands run as child processes in a temp dir.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import {
  createKeyStore,
  EnvelopeError,
  generateNodeKeys,
  KeyFileError,
  keyIdOf,
  keyStoreToPublicKeys,
  keyStoreToSecretKeys,
  listKeys,
  open,
  readKeyStore,
  readPublicKeys,
  readSecretKeys,
  retireKey,
  rotateKeyStore,
  seal,
  writeKeyFiles,
  writeKeyStoreFiles,
} from '../src/envelope/index.ts';
import type { KeyStore, NodePublicKeys, NodeSecretKeys } from '../src/envelope/index.ts';

const run = promisify(execFile);
const MAIN = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
const PT = new TextEncoder().encode('rotation test payload');
const seed = (n: number): Uint8Array => new Uint8Array(32).fill(n);

function send(from: NodeSecretKeys, to: NodePublicKeys, id: string): string {
  return seal({ kind: 'updates', messageId: id, resources: [], plaintext: PT }, from, to);
}
function code(fn: () => unknown): string {
  try {
    fn();
    return 'ok';
  } catch (e) {
    return e instanceof EnvelopeError ? e.code : String(e);
  }
}
const byStatus = (s: KeyStore, use: 'enc' | 'sig', status: string): string[] => s.keys.filter((k) => k.use === use && k.status === status).map((k) => k.kid);

describe('key store: rotation and retirement', () => {
  const peer = generateNodeKeys('hospital-p', seed(9));
  const s0 = createKeyStore('hospital-a', { seeds: { kem: seed(1), sig: seed(2) }, now: new Date('2025-01-01T00:00:00.000Z') });

  it('a new store has one current X-Wing and one current ML-DSA-65 AKP key, kids = hash of the public key', () => {
    assert.deepEqual(listKeys(s0).map((k) => [k.alg, k.use, k.status, k.created]), [
      ['X-Wing', 'enc', 'current', '2025-01-01T00:00:00.000Z'],
      ['ML-DSA-65', 'sig', 'current', '2025-01-01T00:00:00.000Z'],
    ]);
    for (const k of s0.keys) {
      assert.equal(k.kty, 'AKP');
      assert.equal(k.kid, keyIdOf(k.pub));
      assert.equal(k.priv?.length, 32, 'priv is the 32-byte seed');
    }
  });

  it('rotate: old X-Wing key still decrypts (previous), the new one is current; the new ML-DSA key is next', () => {
    const s1 = rotateKeyStore(s0);
    assert.deepEqual(byStatus(s1, 'enc', 'previous'), byStatus(s0, 'enc', 'current'));
    assert.equal(byStatus(s1, 'enc', 'current').length, 1);
    assert.notDeepEqual(byStatus(s1, 'enc', 'current'), byStatus(s0, 'enc', 'current'));
    assert.deepEqual(byStatus(s1, 'sig', 'current'), byStatus(s0, 'sig', 'current'), 'keeps signing with the old key');
    assert.equal(byStatus(s1, 'sig', 'next').length, 1);
    assert.equal(s0.keys.length, 2, 'input store unchanged');

    const sk1 = keyStoreToSecretKeys(s1);
    const peers = new Map([['hospital-p', peer.publicKeys]]);
    const toOld = send(peer.secretKeys, keyStoreToPublicKeys(s0), 'to-old');
    const toNew = send(peer.secretKeys, keyStoreToPublicKeys(s1), 'to-new');
    assert.deepEqual(open(toOld, sk1, peers).plaintext, PT, 'in-flight envelope to the previous key opens');
    assert.deepEqual(open(toNew, sk1, peers).plaintext, PT);
    assert.equal(code(() => open(toNew, keyStoreToSecretKeys(s0), peers)), 'ERR_NOT_FOR_THIS_NODE');
    assert.throws(() => rotateKeyStore(s1), KeyFileError, 'a second rotation waits for the pending signing key');
  });

  it('peers accept the current and the next signing key; after retiring the current one, the next one signs', () => {
    const s1 = rotateKeyStore(s0);
    const selfPeer = generateNodeKeys('hospital-p', seed(9));
    const peersOfP = new Map([['hospital-a', keyStoreToPublicKeys(s1)]]);
    assert.equal(keyStoreToPublicKeys(s1).additionalSigKeys?.length, 1);
    const [oldSig] = byStatus(s1, 'sig', 'current');
    const s2 = retireKey(s1, oldSig!);
    assert.deepEqual(byStatus(s2, 'sig', 'current'), byStatus(s1, 'sig', 'next'));
    assert.deepEqual(byStatus(s2, 'sig', 'retired'), [oldSig]);
    assert.equal(s2.keys.find((k) => k.kid === oldSig)?.priv, undefined, 'secret dropped');
    const before = send(keyStoreToSecretKeys(s1), selfPeer.publicKeys, 'old-sig');
    const afterRetire = send(keyStoreToSecretKeys(s2), selfPeer.publicKeys, 'new-sig');
    assert.deepEqual(open(before, selfPeer.secretKeys, peersOfP).plaintext, PT);
    assert.deepEqual(open(afterRetire, selfPeer.secretKeys, peersOfP).plaintext, PT, 'peer knew the next key in advance');
    // a peer still configured with the pre-rotation file does not know the new signing key
    assert.equal(code(() => open(afterRetire, selfPeer.secretKeys, new Map([['hospital-a', keyStoreToPublicKeys(s0)]]))), 'ERR_UNKNOWN_PEER');
  });

  it('retire: a previous X-Wing key stops decrypting; current keys and unknown/retired kids are refused', () => {
    const s1 = rotateKeyStore(s0);
    const [prev] = byStatus(s1, 'enc', 'previous');
    const toOld = send(peer.secretKeys, keyStoreToPublicKeys(s0), 'to-old');
    const s2 = retireKey(s1, prev!);
    assert.equal(code(() => open(toOld, keyStoreToSecretKeys(s2), new Map([['hospital-p', peer.publicKeys]]))), 'ERR_NOT_FOR_THIS_NODE');
    assert.throws(() => retireKey(s2, prev!), KeyFileError, 'already retired');
    assert.throws(() => retireKey(s2, byStatus(s2, 'enc', 'current')[0]!), KeyFileError, 'current enc key');
    assert.throws(() => retireKey(s0, byStatus(s0, 'sig', 'current')[0]!), KeyFileError, 'only signing key');
    assert.throws(() => retireKey(s2, 'A'.repeat(22)), KeyFileError, 'unknown kid');
  });

  describe('files', () => {
    let dir = '';
    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'tidegate-keystore-'));
    });
    after(() => rm(dir, { recursive: true, force: true }));

    it('writes secret 0600 / public 0644 and reads back the same store, secret keys and public keys', async () => {
      const s1 = rotateKeyStore(s0);
      const { secretPath, publicPath } = await writeKeyStoreFiles(dir, s1);
      assert.equal((await stat(secretPath)).mode & 0o777, 0o600);
      assert.equal((await stat(publicPath)).mode & 0o777, 0o644);
      assert.deepEqual(await readKeyStore(secretPath), s1);
      assert.deepEqual(await readSecretKeys(secretPath), keyStoreToSecretKeys(s1));
      assert.deepEqual(await readPublicKeys(publicPath), keyStoreToPublicKeys(s1));
      const pub = JSON.parse(await readFile(publicPath, 'utf8')) as { format: string; keys: Record<string, unknown>[] };
      assert.equal(pub.format, 'tidegate-node-public/2');
      assert.deepEqual(pub.keys.map((k) => [k['kty'], k['alg'], k['use'], k['status']]), [
        ['AKP', 'ML-DSA-65', 'sig', 'current'],
        ['AKP', 'X-Wing', 'enc', 'current'],
        ['AKP', 'ML-DSA-65', 'sig', 'next'],
      ]);
      assert.ok(pub.keys.every((k) => !('priv' in k)), 'no secrets in the public file');
      await assert.rejects(writeKeyStoreFiles(dir, s1), (e: NodeJS.ErrnoException) => e.code === 'EEXIST');
    });

    it('rejects corrupted version-2 secret files', async () => {
      const path = join(dir, 'hospital-a.secret.json');
      const good = JSON.parse(await readFile(path, 'utf8')) as { keys: Record<string, unknown>[] };
      const variants: unknown[] = [
        { ...good, keys: good.keys.map((k, i) => (i === 0 ? { ...k, kid: good.keys[1]!['kid'] } : k)) },
        { ...good, keys: good.keys.map((k, i) => (i === 1 ? { ...k, priv: good.keys[3]!['priv'] } : k)) },
        { ...good, keys: good.keys.map((k, i) => (i === 0 ? { ...k, status: 'current' } : k)) },
        { ...good, keys: good.keys.map((k, i) => (i === 0 ? { ...k, kty: 'OKP' } : k)) },
        { ...good, keys: good.keys.map((k, i) => (i === 0 ? { ...k, extra: 1 } : k)) },
        { ...good, keys: [] },
        { ...good, extra: true },
      ];
      for (const v of variants) {
        await writeFile(path, JSON.stringify(v));
        await assert.rejects(readSecretKeys(path), KeyFileError);
        await assert.rejects(readKeyStore(path), KeyFileError);
      }
    });

    it('still reads version-1 single-key files, and rotates them into version 2', async () => {
      const v1 = generateNodeKeys('hospital-old', seed(5));
      const { secretPath } = await writeKeyFiles(dir, v1);
      assert.deepEqual(await readSecretKeys(secretPath), v1.secretKeys);
      const store = await readKeyStore(secretPath);
      assert.deepEqual(listKeys(store).map((k) => [k.kid, k.status, k.created]), [
        [v1.secretKeys.kemKeyId, 'current', null],
        [v1.secretKeys.sigKeyId, 'current', null],
      ]);
      const rotated = rotateKeyStore(store);
      await writeKeyStoreFiles(dir, rotated, { overwrite: true });
      const sk = await readSecretKeys(secretPath);
      assert.equal(sk.sigKeyId, v1.secretKeys.sigKeyId);
      assert.deepEqual(sk.sigSecretKey, v1.secretKeys.sigSecretKey, 'migrated ML-DSA key keeps its expanded form');
      assert.deepEqual(sk.additionalKemKeys?.map((k) => k.kid), [v1.secretKeys.kemKeyId]);
    });
  });
});

describe('CLI: tidegate keys …', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tidegate-keys-cli-'));
  });
  after(() => rm(dir, { recursive: true, force: true }));
  const cli = (...args: string[]) => run(process.execPath, [MAIN, 'keys', ...args], { cwd: dir });
  const cliFails = async (args: string[], pattern: RegExp): Promise<void> => {
    await assert.rejects(cli(...args), (e: { code?: number; stderr?: string }) => {
      assert.notEqual(e.code, 0);
      assert.match(e.stderr ?? '', pattern);
      return true;
    });
  };

  it('generate writes keys/<node>.secret.json (0600) and .public.json, prints paths and kids, no secrets', async () => {
    const { stdout } = await cli('generate', '--node', 'hospital-x');
    const out = JSON.parse(stdout) as { secretPath: string; publicPath: string; keys: { kid: string; status: string }[] };
    assert.equal(out.secretPath, join('keys', 'hospital-x.secret.json'));
    assert.equal((await stat(join(dir, out.secretPath))).mode & 0o777, 0o600);
    const secret = await readFile(join(dir, out.secretPath), 'utf8');
    const privs = (JSON.parse(secret) as { keys: { priv: string }[] }).keys.map((k) => k.priv);
    assert.equal(privs.length, 2);
    for (const p of privs) assert.ok(!stdout.includes(p), 'stdout has no secret');
    const pub = await readPublicKeys(join(dir, out.publicPath));
    assert.deepEqual(out.keys.map((k) => k.kid).sort(), [pub.kemKeyId, pub.sigKeyId].sort());
    await cliFails(['generate', '--node', 'hospital-x'], /EEXIST/);
    await cliFails(['generate', '--node', '../evil'], /nodeId/);
  });

  it('list shows kid, algorithm, use, status and creation date (table and --json)', async () => {
    const { stdout } = await cli('list', '--node', 'hospital-x', '--dir', 'keys');
    const lines = stdout.trim().split('\n');
    assert.match(lines[0]!, /^KID\s+ALG\s+USE\s+STATUS\s+CREATED\s+RETIRED$/);
    assert.equal(lines.length, 3);
    assert.match(lines[1]!, /^[A-Za-z0-9_-]{22}\s+X-Wing\s+enc\s+current\s+\d{4}-\d\d-\d\dT/);
    assert.match(lines[2]!, /^[A-Za-z0-9_-]{22}\s+ML-DSA-65\s+sig\s+current\s+/);
    const rows = JSON.parse((await cli('list', '--node', 'hospital-x', '--dir', 'keys', '--json')).stdout) as unknown[];
    assert.equal(rows.length, 2);
    await cliFails(['list', '--node', 'nobody', '--dir', 'keys'], /ENOENT/);
  });

  it('rotate then retire: old X-Wing key decrypts until retired; retiring the current signing key promotes the next', async () => {
    const secretPath = join(dir, 'keys', 'hospital-x.secret.json');
    const peer = generateNodeKeys('hospital-p', seed(9));
    const before = await readKeyStore(secretPath);
    const inFlight = send(peer.secretKeys, keyStoreToPublicKeys(before), 'in-flight');

    const rotated = JSON.parse((await cli('rotate', '--node', 'hospital-x', '--dir', 'keys')).stdout) as { keys: { kid: string; status: string; use: string }[] };
    assert.deepEqual(rotated.keys.map((k) => `${k.use}:${k.status}`), ['enc:previous', 'sig:current', 'enc:current', 'sig:next']);
    assert.equal((await stat(secretPath)).mode & 0o777, 0o600, 'still 0600 after the rewrite');
    const peers = new Map([['hospital-p', peer.publicKeys]]);
    assert.deepEqual(open(inFlight, await readSecretKeys(secretPath), peers).plaintext, PT, 'old key still decrypts');
    await cliFails(['rotate', '--node', 'hospital-x', '--dir', 'keys'], /pending/);

    const prevKem = rotated.keys.find((k) => k.use === 'enc' && k.status === 'previous')!.kid;
    const curSig = rotated.keys.find((k) => k.use === 'sig' && k.status === 'current')!.kid;
    const nextSig = rotated.keys.find((k) => k.use === 'sig' && k.status === 'next')!.kid;
    await cli('retire', prevKem, '--node', 'hospital-x', '--dir', 'keys');
    const afterKem = await readSecretKeys(secretPath);
    assert.equal(code(() => open(inFlight, afterKem, peers)), 'ERR_NOT_FOR_THIS_NODE', 'retired key no longer decrypts');
    const listed = JSON.parse((await cli('retire', curSig, '--node', 'hospital-x', '--dir', 'keys')).stdout) as { keys: { kid: string; status: string; retired: string | null }[] };
    assert.equal(listed.keys.find((k) => k.kid === nextSig)?.status, 'current');
    assert.equal(listed.keys.find((k) => k.kid === curSig)?.status, 'retired');
    assert.match(listed.keys.find((k) => k.kid === curSig)?.retired ?? '', /^\d{4}-/);
    const stored = JSON.parse(await readFile(secretPath, 'utf8')) as { keys: { kid: string; priv?: string }[] };
    assert.equal(stored.keys.filter((k) => k.kid === prevKem || k.kid === curSig).filter((k) => k.priv !== undefined).length, 0, 'retired secrets destroyed');
    assert.equal((await readSecretKeys(secretPath)).sigKeyId, nextSig);
    await cliFails(['retire', curSig, '--node', 'hospital-x', '--dir', 'keys'], /already retired/);
    await cliFails(['retire', (await readSecretKeys(secretPath)).kemKeyId, '--node', 'hospital-x', '--dir', 'keys'], /rotate/);
  });

  it('retire takes a key id that begins with "-" (1 in 64 base64url ids do) as the key id, not as an option', async () => {
    let n = 0;
    let keys = generateNodeKeys('hospital-dash', seed(n));
    while (!keys.secretKeys.kemKeyId.startsWith('-')) keys = generateNodeKeys('hospital-dash', seed(++n));
    await writeKeyFiles(join(dir, 'keys'), keys);
    await cli('rotate', '--node', 'hospital-dash', '--dir', 'keys');
    const kid = keys.secretKeys.kemKeyId;
    const out = JSON.parse((await cli('retire', kid, '--node', 'hospital-dash', '--dir', 'keys')).stdout) as { keys: { kid: string; status: string }[] };
    assert.equal(out.keys.find((k) => k.kid === kid)?.status, 'retired');
    await cliFails(['retire', kid, '--node', 'hospital-dash', '--dir', 'keys'], /already retired/);
    await cliFails(['retire', '--node', 'hospital-dash', '--dir', 'keys', '-x'], /unknown option '-x'/);
  });

  it('rotate works on a version-1 file written by the previous generate', async () => {
    const v1 = generateNodeKeys('hospital-v1', seed(6));
    await writeKeyFiles(join(dir, 'keys'), v1);
    await cli('rotate', '--node', 'hospital-v1', '--dir', 'keys');
    const { stdout } = await cli('list', '--node', 'hospital-v1', '--dir', 'keys');
    assert.match(stdout, new RegExp(`${v1.secretKeys.kemKeyId}\\s+X-Wing\\s+enc\\s+previous\\s+unknown`));
    const sk = await readSecretKeys(join(dir, 'keys', 'hospital-v1.secret.json'));
    assert.deepEqual(sk.additionalKemKeys?.map((k) => k.kid), [v1.secretKeys.kemKeyId]);
  });
});
