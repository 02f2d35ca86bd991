import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { EnvelopeCryptoPool, EnvelopeError, generateNodeKeys, open, seal } from '../src/envelope/index.ts';

const pool = new EnvelopeCryptoPool(2);
after(() => pool.close());

const a = generateNodeKeys('node-a');
const b = generateNodeKeys('node-b');
const c = generateNodeKeys('node-c');
const plaintext = new TextEncoder().encode('{"resourceType":"Patient","name":[{"family":"Pooled"}]}');
const input = { kind: 'updates', messageId: 'm-1', resources: ['Patient/p1'], plaintext };

test('pool seal/open round-trips and interoperates with the synchronous functions', async () => {
  const env = await pool.seal(input, a.secretKeys, b.publicKeys);
  const viaSync = open(env, b.secretKeys, new Map([['node-a', a.publicKeys]]));
  assert.deepEqual(Buffer.from(viaSync.plaintext), Buffer.from(plaintext));
  const syncEnv = seal(input, a.secretKeys, b.publicKeys);
  const viaPool = await pool.open(syncEnv, b.secretKeys, new Map([['node-a', a.publicKeys]]));
  assert.deepEqual(Buffer.from(viaPool.plaintext), Buffer.from(plaintext));
  assert.equal(viaPool.header.sender, 'node-a');
});

test('pool keeps EnvelopeError codes: unknown peer, wrong recipient, tampering', async () => {
  const env = await pool.seal(input, a.secretKeys, b.publicKeys);
  await assert.rejects(pool.open(env, b.secretKeys, new Map()), (e: unknown) => e instanceof EnvelopeError && e.code === 'ERR_UNKNOWN_PEER');
  await assert.rejects(pool.open(env, c.secretKeys, new Map([['node-a', a.publicKeys]])), (e: unknown) => e instanceof EnvelopeError && e.code === 'ERR_NOT_FOR_THIS_NODE');
  const parsed = JSON.parse(env) as Record<string, string>;
  const ct = parsed.ct!;
  parsed.ct = (ct[0] === 'A' ? 'B' : 'A') + ct.slice(1);
  await assert.rejects(pool.open(JSON.stringify(parsed), b.secretKeys, new Map([['node-a', a.publicKeys]])), (e: unknown) => e instanceof EnvelopeError && e.code === 'ERR_SIGNATURE_INVALID');
});

test('concurrent calls are all answered', async () => {
  const envs = await Promise.all(Array.from({ length: 6 }, (_, i) => pool.seal({ ...input, messageId: `m-${i}` }, a.secretKeys, b.publicKeys)));
  const opened = await Promise.all(envs.map((e) => pool.open(e, b.secretKeys, new Map([['node-a', a.publicKeys]]))));
  assert.deepEqual(opened.map((o) => o.header.messageId), ['m-0', 'm-1', 'm-2', 'm-3', 'm-4', 'm-5']);
});

test('an idle pool does not keep the process alive (bug: the worker port stayed ref\'d)', async () => {
  const { spawnSync } = await import('node:child_process');
  const { fileURLToPath } = await import('node:url');
  const index = fileURLToPath(new URL('../src/envelope/index.ts', import.meta.url));
  const script = `
    const { EnvelopeCryptoPool, generateNodeKeys } = await import(${JSON.stringify(index)});
    new EnvelopeCryptoPool(1); // created, never used (a node without peers)
    const used = new EnvelopeCryptoPool(1);
    const a = generateNodeKeys('node-a'), b = generateNodeKeys('node-b');
    await used.seal({ kind: 'updates', messageId: 'm', resources: [], plaintext: new Uint8Array([1]) }, a.secretKeys, b.publicKeys);
    console.log('sealed');`;
  const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-pool-'));
  const file = join(dir, 'seal.mjs');
  writeFileSync(file, script);
  const r = spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 20_000 });
  rmSync(dir, { recursive: true, force: true });
  assert.equal(r.stdout.trim(), 'sealed');
  assert.equal(r.signal, null, 'the process exited by itself instead of being killed by the timeout');
  assert.equal(r.status, 0);
});

test('works when the process was started with --input-type=module -e (bug: workers inherited the flag, died at once and were respawned in a hot loop)', async () => {
  const { spawnSync } = await import('node:child_process');
  const { fileURLToPath } = await import('node:url');
  const index = fileURLToPath(new URL('../src/envelope/index.ts', import.meta.url));
  const script = `
    const { EnvelopeCryptoPool, generateNodeKeys } = await import(${JSON.stringify(index)});
    const pool = new EnvelopeCryptoPool(1);
    const a = generateNodeKeys('node-a'), b = generateNodeKeys('node-b');
    await pool.seal({ kind: 'updates', messageId: 'm', resources: [], plaintext: new Uint8Array([1]) }, a.secretKeys, b.publicKeys);
    console.log('sealed');
    await pool.close();`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.signal, null, `not killed by the timeout; stderr: ${r.stderr.slice(0, 500)}`);
  assert.equal(r.stdout.trim(), 'sealed');
  assert.equal(r.status, 0);
});

test('a worker that cannot start is not respawned forever: calls reject with a clear error', async () => {
  const pool = new EnvelopeCryptoPool(1, { workerUrl: new URL('data:text/javascript,throw new Error("boom at start")') });
  const a = generateNodeKeys('node-a');
  const b = generateNodeKeys('node-b');
  await assert.rejects(
    async () => {
      // Early failures are retried a few times with backoff (100 … 800 ms), then the pool gives up.
      // Polled until a generous deadline rather than a fixed 50 tries × 50 ms, which a loaded
      // machine's slow worker spawns can outlast.
      const deadline = Date.now() + 60_000;
      for (let i = 0; Date.now() < deadline; i++) {
        await pool.seal({ kind: 'updates', messageId: `m${i}`, resources: [], plaintext: new Uint8Array([1]) }, a.secretKeys, b.publicKeys).catch((e: Error) => {
          if (/cannot start/.test(e.message)) throw e;
        });
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    /cannot start/,
  );
  await pool.close();
});

/** Nice value of every thread of this process, by thread id (Linux /proc, proc(5): field 19 of stat). */
async function threadNices(): Promise<Map<string, number>> {
  const { readdirSync, readFileSync } = await import('node:fs');
  const out = new Map<string, number>();
  for (const tid of readdirSync('/proc/self/task')) {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    out.set(tid, Number(fields[16]));
  }
  return out;
}

test('worker threads run at a lower priority than the event loop (Linux), the main thread keeps its own', { skip: process.platform !== 'linux' && 'Linux only' }, async () => {
  const { DEFAULT_WORKER_NICE } = await import('../src/envelope/pool.ts');
  const before = await threadNices();
  const mainNice = before.get(String(process.pid));
  const reniced = new EnvelopeCryptoPool(2);
  try {
    // A call on each worker, so both have loaded the worker module.
    await Promise.all([reniced.seal(input, a.secretKeys, b.publicKeys), reniced.seal({ ...input, messageId: 'm-2' }, a.secretKeys, b.publicKeys)]);
    const during = await threadNices();
    const added = [...during].filter(([tid]) => !before.has(tid));
    assert.equal(added.filter(([, n]) => n === (mainNice ?? 0) + DEFAULT_WORKER_NICE).length, 2, `new threads and their nice values: ${JSON.stringify(added)}`);
    assert.equal(during.get(String(process.pid)), mainNice, 'the event loop thread is not reniced');
  } finally {
    await reniced.close();
  }
  const beforePlain = await threadNices();
  const plain = new EnvelopeCryptoPool(1, { workerNice: 0 });
  try {
    await plain.seal(input, a.secretKeys, b.publicKeys);
    const added = [...(await threadNices())].filter(([tid]) => !beforePlain.has(tid));
    assert.ok(added.length >= 1);
    assert.ok(added.every(([, n]) => n === mainNice), `workerNice 0 leaves threads at the process priority: ${JSON.stringify(added)}`);
  } finally {
    await plain.close();
  }
});

test('workerNice outside 0..19 is refused with a RangeError and starts no worker', () => {
  for (const bad of [-1, 20, 1.5, Number.NaN]) {
    assert.throws(() => new EnvelopeCryptoPool(1, { workerNice: bad }), RangeError);
  }
});
