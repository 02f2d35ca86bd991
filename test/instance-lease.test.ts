/**
 * One process per node id (src/node/instance-lease.ts): a second process with the same nodeId
 * refuses to start, naming the holder; a lease left by a killed process expires within 3 × the
 * renewal period; losing the lease to another instance while running stops the inbox and makes
 * /readyz answer 503; a lease gone from Redis (flushed) is taken again. Real Redis, real
 * TidegateNodes, a real child process killed with SIGKILL.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import pino from 'pino';
import { TidegateNode } from '../src/node/node.ts';
import { InstanceLease, InstanceLeaseError } from '../src/node/instance-lease.ts';
import { HospitalClient, startMedplumHospital } from '../src/hospital/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';
import { createKeyStore, keyStoreToSecretKeys } from '../src/envelope/keys.ts';
import type { NodeSecretKeys } from '../src/envelope/keys.ts';
import { clearRedisPrefix } from './fixtures/redis.ts';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const PREFIX = `lease-test-${randomUUID().slice(0, 8)}`;

let redis: Redis;
let hospital: MedplumHospital;
before(async () => {
  redis = new Redis(REDIS_URL);
  hospital = await startMedplumHospital({ name: 'lease-fhir' });
});
after(async () => {
  await clearRedisPrefix(REDIS_URL, PREFIX);
  redis.disconnect();
  await hospital.close();
});

function nodeOf(keys: NodeSecretKeys, renewMs = 5000): TidegateNode {
  return new TidegateNode({
    secretKeys: keys,
    peers: [],
    redisUrl: REDIS_URL,
    queuePrefix: PREFIX,
    hospital: new HospitalClient({ baseUrl: hospital.url }),
    logger: pino({ level: 'silent' }),
    antiEntropyIntervalMs: 0,
    hospitalPollIntervalMs: 0,
    instanceLeaseRenewMs: renewMs,
  });
}

async function readyz(node: TidegateNode): Promise<number> {
  const res = await fetch(new URL('/readyz', node.baseUrl));
  await res.arrayBuffer();
  return res.status;
}

async function until(what: string, ms: number, f: () => Promise<boolean> | boolean): Promise<void> {
  const end = Date.now() + ms;
  while (!(await f())) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

describe('instance lease of a node id', () => {
  it('a second TidegateNode with the same nodeId refuses to start, naming the holder; it starts once the first stopped', async () => {
    const keys = keyStoreToSecretKeys(createKeyStore('lease-a'));
    const first = nodeOf(keys);
    await first.start();
    const second = nodeOf(keys);
    try {
      await assert.rejects(second.start(), (err: unknown) => {
        assert.ok(err instanceof InstanceLeaseError, String(err));
        assert.equal(err.code, 'ERR_NODE_ID_IN_USE');
        assert.match(err.message, /Node id lease-a is already running/);
        assert.match(err.message, new RegExp(`host ${hostname()}, pid ${process.pid}, started \\d{4}-`));
        assert.equal(err.holder?.pid, process.pid);
        return true;
      });
      assert.equal(await readyz(first), 200, 'the running node is unaffected');
      assert.equal(first.lease.state, 'held');
    } finally {
      await second.stop();
      await first.stop();
    }
    assert.equal(await redis.exists(first.lease.key), 0, 'stop released the lease');
    const third = nodeOf(keys);
    await third.start();
    assert.equal(await readyz(third), 200);
    await third.stop();
  });

  it('losing the lease to another instance while running stops the inbox, makes /readyz 503 and refuses FHIR writes (503), reads still served', async () => {
    const keys = keyStoreToSecretKeys(createKeyStore('lease-b'));
    const node = nodeOf(keys, 100);
    await node.start();
    const put = (id: string): Promise<Response> => fetch(`${node.baseUrl}/Patient/${id}`, { method: 'PUT', headers: { 'Content-Type': 'application/fhir+json' }, body: JSON.stringify({ resourceType: 'Patient', id, gender: 'female' }) });
    try {
      assert.equal(await readyz(node), 200);
      assert.equal((await put('lease-w1')).status, 201);
      // Another process took the lease (as after a pause of this one longer than its lifetime).
      await redis.set(node.lease.key, JSON.stringify({ nodeId: 'lease-b', host: 'elsewhere', pid: 4242, startedAt: new Date().toISOString(), token: 'other' }), 'PX', 60_000);
      await until('the lease to be lost', 5000, () => node.lease.state === 'lost');
      await until('/readyz 503', 5000, async () => (await readyz(node)) === 503);
      const refused = await put('lease-w2');
      assert.equal(refused.status, 503);
      assert.equal(((await refused.json()) as { resourceType: string }).resourceType, 'OperationOutcome');
      assert.equal((await fetch(`${node.baseUrl}/Patient/lease-w2`)).status, 404, 'nothing written');
      const tx = await fetch(node.baseUrl, { method: 'POST', headers: { 'Content-Type': 'application/fhir+json' }, body: JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry: [{ resource: { resourceType: 'Patient', gender: 'male' }, request: { method: 'POST', url: 'Patient' } }] }) });
      assert.equal(tx.status, 503);
      assert.equal((await fetch(`${node.baseUrl}/Patient/lease-w1`, { method: 'DELETE' })).status, 503);
      assert.equal((await fetch(`${node.baseUrl}/Patient/lease-w1`)).status, 200, 'reads are still served');
      // It does not take the other's lease back.
      await sleep(300);
      assert.match(String(await redis.get(node.lease.key)), /elsewhere/);
    } finally {
      await node.stop();
    }
    assert.match(String(await redis.get(node.lease.key)), /elsewhere/, 'stop does not delete another instance’s lease');
    await redis.del(node.lease.key);
  });

  it('a lease gone from Redis (flushed) is taken again and the node stays ready', async () => {
    const keys = keyStoreToSecretKeys(createKeyStore('lease-c'));
    const node = nodeOf(keys, 100);
    await node.start();
    try {
      const mine = await redis.get(node.lease.key);
      assert.ok(mine);
      await redis.del(node.lease.key);
      await until('the lease to be taken again', 5000, async () => (await redis.get(node.lease.key)) === mine);
      assert.equal(node.lease.state, 'held');
      assert.equal(await readyz(node), 200);
    } finally {
      await node.stop();
    }
  });

  it('a lease left by a process killed with SIGKILL on this host is waited out (its pid is gone), not refused: free within 3 × the renewal period', async () => {
    const renewMs = 300;
    const src = new URL('../src/node/instance-lease.ts', import.meta.url).href;
    const code = `import { InstanceLease } from ${JSON.stringify(src)};
const l = new InstanceLease({ redisUrl: ${JSON.stringify(REDIS_URL)}, prefix: ${JSON.stringify(PREFIX)}, nodeId: 'lease-d', renewMs: ${renewMs} });
await l.acquire(); process.stdout.write('held\\n'); setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    await until('the child to hold the lease', 20_000, () => child.stdout.read()?.toString().includes('held') ?? false);
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
    const killedAt = Date.now();
    const acquired = new InstanceLease({ redisUrl: REDIS_URL, prefix: PREFIX, nodeId: 'lease-d', renewMs });
    await acquired.acquire(); // waits for the dead holder's lease to expire instead of refusing
    // Bounded by the lease's lifetime (3 × renewMs), with a wide margin for a loaded machine.
    assert.ok(Date.now() - killedAt < 3 * renewMs + 5000, `free after ${Date.now() - killedAt} ms`);
    assert.equal(acquired.state, 'held');
    await acquired.release();
    assert.equal(await redis.exists(acquired.key), 0);
  });
});
