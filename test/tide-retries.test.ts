/**
 * Tide retries and shutdown: exponential backoff with jitter (send retries and BullMQ job
 * retries), and a bounded stop() while the own Redis hangs (accepts bytes, never answers), the
 * case where BullMQ's close() never resolves. Real Redis (dbs 11-12 of TIDE_TEST_REDIS_URL).
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, Socket } from 'node:net';
import type { AddressInfo, Server } from 'node:net';
import { backoffDelay } from '../src/tide/index.ts';
import { Cluster, REDIS_HOST, REDIS_PORT, keysOf, waitFor } from './fixtures/tide/harness.ts';

/** A TCP proxy to the test Redis that can be stalled: bytes are then swallowed, sockets stay open. */
class StallProxy {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  stalled = false;
  port = 0;

  constructor() {
    this.#server = createServer((client) => {
      const upstream = new Socket();
      upstream.connect(REDIS_PORT, REDIS_HOST);
      this.#sockets.add(client).add(upstream);
      const drop = (): void => {
        client.destroy();
        upstream.destroy();
      };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
      client.on('data', (b) => {
        if (!this.stalled) upstream.write(b);
      });
      upstream.on('data', (b) => {
        if (!this.stalled) client.write(b);
      });
    });
  }

  async start(): Promise<void> {
    this.#server.listen(0, '127.0.0.1');
    await once(this.#server, 'listening');
    this.port = (this.#server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }
}

describe('tide retries and shutdown', { timeout: 120_000 }, () => {
  test('backoffDelay: exponential ceiling, jitter takes off up to the given fraction', () => {
    assert.deepEqual([1, 2, 3, 4].map((n) => backoffDelay(n, 100, 0)), [100, 200, 400, 800]);
    assert.deepEqual([1, 2, 3].map((n) => backoffDelay(n, 100, 0.5, () => 0)), [50, 100, 200]);
    assert.deepEqual([1, 2, 3].map((n) => backoffDelay(n, 100, 0.5, () => 0.999_999)), [99, 199, 399]);
    // with Math.random the delays spread over [c/2, c)
    const samples = Array.from({ length: 200 }, () => backoffDelay(3, 1000, 0.5));
    assert.ok(samples.every((d) => d >= 2000 && d < 4000));
    assert.ok(new Set(samples).size > 50, 'jittered delays differ');
    assert.throws(() => backoffDelay(0, 100, 0.5), RangeError);
    assert.throws(() => backoffDelay(1, 100, 1.5), RangeError);
  });

  test('send retries wait the jittered backoff; sent jobs carry BullMQ exponential backoff with jitter', async () => {
    const slow = new Cluster(['j-a', 'j-b'], [11, 12], { attempts: 3, backoffMs: 200, backoffJitter: 0.5, sendTimeoutMs: 300, peerDownMs: 0 });
    slow.routes.set('j-a>j-b', 'redis://127.0.0.1:1/0'); // nothing listens: every add try fails at once
    /** Starts j-a with a jitter source `r`, sends one batch, returns the waits between its add tries. */
    const waits = async (r: number): Promise<{ gaps: number[]; draws: number }> => {
      const at: number[] = [];
      let draws = 0;
      const logger = {
        info() {},
        warn(_o: Record<string, unknown>, msg?: string) {
          if (msg === 'tide: send failed, retrying') at.push(performance.now());
        },
        error(_o: Record<string, unknown>, msg?: string) {
          if (msg?.startsWith('tide: giving up')) at.push(performance.now());
        },
      };
      const A = await slow.start('j-a', { logger, random: () => (draws++, r) });
      A.tide.publish([A.replica.set(`Patient/j${r}`, { a: '1' })]);
      await A.tide.flush();
      assert.equal(A.tide.stats().sendFailures, 1, 'given up after 3 tries');
      await slow.stop('j-a');
      return { gaps: at.slice(1).map((t, i) => t - (at[i] as number)), draws };
    };
    try {
      const low = await waits(0);
      const high = await waits(0.999);
      // 3 tries, 2 waits, each drawing the jitter once: ceilings 200 and 400 ms, jitter 0.5
      assert.equal(low.draws, 2);
      assert.equal(high.draws, 2);
      assert.equal(low.gaps.length, 2);
      assert.ok(low.gaps[0]! >= 99 && low.gaps[1]! >= 199, `random 0: waits ${low.gaps.join(', ')} ms (≥ 100, 200)`);
      assert.ok(high.gaps[0]! >= 198 && high.gaps[1]! >= 398, `random ≈ 1: waits ${high.gaps.join(', ')} ms (≥ 199, 399)`);
    } finally {
      await slow.cleanup();
    }

    const ok = new Cluster(['k-a', 'k-b'], [11, 12], { backoffMs: 40, backoffJitter: 0.25 });
    try {
      await ok.startAll();
      const A = ok.node('k-a');
      // B is stopped so the job stays in its inbox for inspection
      await ok.stop('k-b');
      A.tide.publish([A.replica.set('Patient/k1', { a: '1' })]);
      await A.tide.flush();
      const [job] = await ok.inbox('k-b').getJobs(['wait']);
      assert.deepEqual(job?.opts.backoff, { type: 'exponential', delay: 40, jitter: 0.25 });
    } finally {
      await ok.cleanup();
    }
  });

  test('stop() is bounded while the own Redis hangs (accepts, never answers)', async () => {
    const proxy = new StallProxy();
    await proxy.start();
    const cl = new Cluster(['h-a', 'h-b'], [11, 12], { stopTimeoutMs: 1500, sendTimeoutMs: 300, attempts: 2 });
    try {
      const ownUrl = `redis://127.0.0.1:${proxy.port}/11`;
      const A = await cl.start('h-a', {
        redisUrl: ownUrl,
        antiEntropyIntervalMs: 60_000,
        peers: [{ nodeId: 'h-b', redisUrl: cl.urlOf('h-b'), publicKeys: keysOf('h-b').publicKeys }],
      });
      const B = await cl.start('h-b', {
        peers: [{ nodeId: 'h-a', redisUrl: ownUrl, publicKeys: keysOf('h-a').publicKeys }],
      });
      A.tide.publish([A.replica.set('Patient/h-1', { name: 'before' })]);
      await waitFor('B has h-1', () => B.replica.json('Patient/h-1') !== undefined);
      proxy.stalled = true;
      assert.equal((await A.tide.health(300)).ready, false, 'PING times out');
      A.tide.publish([A.replica.set('Patient/h-2', { name: 'during the hang' })]);
      const t0 = Date.now();
      await cl.stop('h-a');
      const took = Date.now() - t0;
      assert.ok(took < 1500 + 1500, `stop() took ${took} ms`);
      assert.equal((await A.tide.health()).state, 'stopped');
      // the peer's Redis was fine: what was pending for it was still sent
      await waitFor('B has h-2', () => B.replica.json('Patient/h-2') !== undefined);
    } finally {
      proxy.stalled = false;
      await cl.cleanup();
      await proxy.close();
    }
  });
});
