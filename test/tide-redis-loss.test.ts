/**
 * Tide after its own Redis lost its data while the node keeps running (FLUSHALL, or a restart
 * without persistence that the node did not see as a reconnect): the anti-entropy job scheduler
 * and the queues' meta hashes are gone. Each node must notice, re-register its scheduler (counted
 * in `aeSchedulerRestored`, logged once), keep replicating new writes, repair by anti-entropy a
 * write made during the gap, and say not-ready (`health()`) until its queues are set up again.
 * Real Redis: a throw-away redis-server (no persistence), so FLUSHALL touches no other test.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { Cluster, PATIENT_NAME, freePort, killRedisServer, startRedisServer, waitFor } from './fixtures/tide/harness.ts';
import { controlQueueName, inboxQueueName } from '../src/tide/index.ts';
import { tideMetricsRegistry } from '../src/ops/metrics.ts';

const HAVE_REDIS_SERVER = spawnSync('redis-server', ['--version']).status === 0;
const skip = HAVE_REDIS_SERVER ? false : 'redis-server not installed';

/** Runs FLUSHALL on the throw-away server at `port`. */
async function flushAll(port: number): Promise<void> {
  const r = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 1 });
  try {
    assert.equal(await r.flushall(), 'OK');
  } finally {
    r.disconnect();
  }
}

test('after FLUSHALL of its Redis, scheduled anti-entropy resumes and repairs a write made during the gap', { skip, timeout: 120_000 }, async () => {
  const port = await freePort();
  const server = await startRedisServer(port);
  const cl = new Cluster(['fl-a', 'fl-b'], [1, 2], {
    antiEntropyIntervalMs: 1000,
    attempts: 2,
    backoffMs: 20,
    sendTimeoutMs: 2000,
    peerDownMs: 200,
    stopTimeoutMs: 3000,
  });
  cl.ownUrls.set('fl-a', `redis://127.0.0.1:${port}/1`);
  cl.ownUrls.set('fl-b', `redis://127.0.0.1:${port}/2`);
  const control = new Queue(controlQueueName('fl-a'), { connection: { url: cl.urlOf('fl-a') }, prefix: cl.prefix, skipMetasUpdate: true });
  try {
    await cl.startAll();
    const A = cl.node('fl-a');
    const B = cl.node('fl-b');
    await waitFor('first scheduled rounds', () => A.tide.stats().antiEntropyRuns > 0 && B.tide.stats().antiEntropyRuns > 0, 15_000);
    A.tide.publish([A.replica.set('Patient/before', { name: PATIENT_NAME })]);
    await waitFor('B has the first write', () => B.replica.json('Patient/before') !== undefined, 15_000);
    assert.ok((await control.getJobScheduler('anti-entropy')) !== undefined, 'scheduler registered at start');

    await flushAll(port);
    assert.equal(await control.getJobScheduler('anti-entropy'), undefined, 'FLUSHALL removed the scheduler');
    // written during the gap and never published: only anti-entropy can carry them
    A.replica.set('Patient/gap-a', { name: 'gap on A' });
    B.replica.set('Patient/gap-b', { name: 'gap on B' });
    const runsA = A.tide.stats().antiEntropyRuns;
    const runsB = B.tide.stats().antiEntropyRuns;

    await waitFor('scheduled rounds on A resume', () => A.tide.stats().antiEntropyRuns >= runsA + 2, 20_000);
    await waitFor('scheduled rounds on B resume', () => B.tide.stats().antiEntropyRuns >= runsB + 2, 20_000);
    await waitFor('gap writes repaired by anti-entropy', () => B.replica.json('Patient/gap-a') !== undefined && A.replica.json('Patient/gap-b') !== undefined, 20_000);
    assert.deepEqual(B.replica.json('Patient/gap-a'), { name: 'gap on A' });
    assert.deepEqual(A.replica.json('Patient/gap-b'), { name: 'gap on B' });
    assert.equal((await control.getJobScheduler('anti-entropy'))?.every, 1000, 'scheduler re-registered in Redis');

    // fanout after the flush still works both ways (inbox queues and workers survived)
    A.tide.publish([A.replica.set('Patient/after-a', { name: 'after A' })]);
    B.tide.publish([B.replica.set('Patient/after-b', { name: 'after B' })]);
    await waitFor('writes after the flush replicate', () => B.replica.json('Patient/after-a') !== undefined && A.replica.json('Patient/after-b') !== undefined, 15_000);

    const metrics = await tideMetricsRegistry(A.tide, 'fl-a').metrics();
    assert.match(metrics, /^tidegate_tide_anti_entropy_scheduler_restored_total\{node="fl-a"\} [1-9]\d*$/m);
    for (const n of [A, B]) {
      assert.ok(n.tide.stats().aeSchedulerRestored >= 1, `${n.name} counted the restoration`);
      assert.equal((await n.tide.health()).ready, true, `${n.name} ready again`);
    }
    // logged once per node for this loss, not once per check
    const lost = cl.logs.filter((l) => l.level === 'warn' && (l.msg ?? '').includes('anti-entropy scheduler lost'));
    assert.equal(lost.length, 2, JSON.stringify(lost.map((l) => l.obj)));
    assert.equal(JSON.stringify(B.replica.snapshot()), JSON.stringify(A.replica.snapshot()));
  } finally {
    await control.close();
    await cl.cleanup();
    await killRedisServer(server);
  }
});

test('health() says not-ready while the own queues are not set up, and the check restores them', { skip, timeout: 60_000 }, async () => {
  const port = await freePort();
  const server = await startRedisServer(port);
  // rounds every 10 minutes: the periodic check does not run during this test, health() must notice
  const cl = new Cluster(['hl-a', 'hl-b'], [1, 2], { antiEntropyIntervalMs: 600_000, stopTimeoutMs: 3000 });
  cl.ownUrls.set('hl-a', `redis://127.0.0.1:${port}/1`);
  cl.ownUrls.set('hl-b', `redis://127.0.0.1:${port}/2`);
  const url = `redis://127.0.0.1:${port}/1`;
  const control = new Queue(controlQueueName('hl-a'), { connection: { url }, prefix: cl.prefix, skipMetasUpdate: true });
  const inbox = new Queue(inboxQueueName('hl-a'), { connection: { url }, prefix: cl.prefix, skipMetasUpdate: true });
  try {
    await cl.startAll();
    const A = cl.node('hl-a');
    const before = await A.tide.health();
    assert.equal(before.ready, true);
    assert.equal(before.queues, true);

    await flushAll(port);
    const after = await A.tide.health();
    assert.equal(after.redis, true, 'Redis itself answers');
    assert.equal(after.queues, false, 'scheduler and queue meta are gone');
    assert.equal(after.ready, false);

    await waitFor('ready again', async () => (await A.tide.health()).ready, 15_000);
    assert.equal((await control.getJobScheduler('anti-entropy'))?.every, 600_000);
    assert.notEqual(await inbox.getVersion(), null, 'inbox queue meta written again');
    assert.ok(A.tide.stats().aeSchedulerRestored >= 1);
  } finally {
    await control.close();
    await inbox.close();
    await cl.cleanup();
    await killRedisServer(server);
  }
});

test('when scheduled rounds stop running (control queue paused), the node runs rounds itself', { skip, timeout: 60_000 }, async () => {
  const port = await freePort();
  const server = await startRedisServer(port);
  const cl = new Cluster(['dr-a', 'dr-b'], [1, 2], { antiEntropyIntervalMs: 500, stopTimeoutMs: 3000 });
  cl.ownUrls.set('dr-a', `redis://127.0.0.1:${port}/1`);
  cl.ownUrls.set('dr-b', `redis://127.0.0.1:${port}/2`);
  const control = new Queue(controlQueueName('dr-a'), { connection: { url: cl.urlOf('dr-a') }, prefix: cl.prefix, skipMetasUpdate: true });
  try {
    await cl.start('dr-a');
    await cl.start('dr-b', { antiEntropyIntervalMs: 0 }); // only A schedules rounds
    const A = cl.node('dr-a');
    const B = cl.node('dr-b');
    await waitFor('first round', () => A.tide.stats().antiEntropyRuns > 0, 15_000);
    // BullMQ no longer hands out the scheduled jobs (as with a lost next job or a stuck worker)
    await control.pause();
    A.replica.set('Patient/stalled', { name: 'while paused' });
    await waitFor('a fallback round ran', () => A.tide.stats().aeFallbackRuns > 0, 20_000);
    await waitFor('repaired by it', () => B.replica.json('Patient/stalled') !== undefined, 20_000);
    assert.equal(cl.logs.filter((l) => (l.msg ?? '').includes('running one locally')).length, 1, 'logged once');
    await control.resume();
    const fallbacks = A.tide.stats().aeFallbackRuns;
    const runs = A.tide.stats().antiEntropyRuns;
    await waitFor('scheduled rounds resumed', () => A.tide.stats().antiEntropyRuns >= runs + 6, 20_000);
    // 6 rounds at 500 ms: the schedule ran them (a fallback needs 1.5 s without any; one may start at the resume)
    assert.ok(A.tide.stats().aeFallbackRuns - fallbacks <= 1, 'rounds come from the schedule again');
    assert.equal((await A.tide.health()).ready, true);
  } finally {
    await control.close();
    await cl.cleanup();
    await killRedisServer(server);
  }
});
