/**
 * Tide across separate node processes (test/fixtures/tide/node-process.ts): three nodes, two with
 * their inboxes on the test Redis (dbs 11, 12), one on a second `redis-server` this test starts on
 * another loopback port. All three write while the test kills that redis-server (SIGKILL, no
 * persistence: inbox, jobs and job scheduler are lost) and restarts it empty on the same port.
 * After the restart every node must hold every write, identically, by the ordinary machinery only
 * (reconnect, scheduled anti-entropy), within a bound. Skipped without `redis-server`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fork, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { REDIS_BASE, freePort, killRedisServer, startRedisServer } from './fixtures/tide/harness.ts';
import type { NodeProcessConfig } from './fixtures/tide/node-process.ts';
import { deleteKeysMatching } from '../src/tide/redis-keys.ts';

const HAVE_REDIS_SERVER = spawnSync('redis-server', ['--version']).status === 0;
const ENTRY = fileURLToPath(new URL('./fixtures/tide/node-process.ts', import.meta.url));
const CONVERGE_BOUND_MS = 45_000;

/** A forked node process with request/response over IPC. */
class NodeProc {
  readonly name: string;
  readonly child: ChildProcess;
  #next = 1;
  readonly #waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  readonly ready: Promise<void>;

  constructor(cfg: NodeProcessConfig) {
    this.name = cfg.name;
    this.child = fork(ENTRY, [JSON.stringify(cfg)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.ready = new Promise((resolve, reject) => {
      const onMsg = (m: unknown): void => {
        if ((m as { op?: string }).op === 'ready') {
          this.child.off('message', onMsg);
          resolve();
        }
      };
      this.child.on('message', onMsg);
      this.child.once('exit', (code) => reject(new Error(`${cfg.name} exited (${code}) before ready`)));
    });
    this.ready.catch(() => {});
    this.child.on('message', (m: unknown) => {
      const r = m as { id?: number; ok?: boolean; value?: unknown; error?: string };
      if (r.id === undefined) return;
      const w = this.#waiting.get(r.id);
      this.#waiting.delete(r.id);
      if (r.ok) w?.resolve(r.value);
      else w?.reject(new Error(`${this.name}: ${r.error}`));
    });
    this.child.once('exit', () => {
      for (const w of this.#waiting.values()) w.reject(new Error(`${this.name} exited`));
      this.#waiting.clear();
    });
  }

  request<T>(op: 'write' | 'snapshot' | 'stats' | 'stop', extra: Record<string, unknown> = {}, timeoutMs = 15_000): Promise<T> {
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(id);
        reject(new Error(`${this.name}: ${op} timed out`));
      }, timeoutMs);
      this.#waiting.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.child.send({ id, op, ...extra });
    });
  }

  /** Asks the node to stop; SIGKILL when it does not exit within `ms`. */
  async stop(ms = 10_000): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = once(this.child, 'exit');
    this.request('stop', {}, ms).catch(() => {});
    const t = setTimeout(() => this.child.kill('SIGKILL'), ms);
    await exited;
    clearTimeout(t);
  }
}

test(
  'separate node processes converge after their Redis is killed and restarted mid-traffic',
  { skip: HAVE_REDIS_SERVER ? false : 'redis-server not installed', timeout: 110_000 },
  async (t) => {
    const port = await freePort();
    let server = await startRedisServer(port);
    const names = ['mp-a', 'mp-b', 'mp-c'];
    const prefix = `tidemp-${randomUUID().slice(0, 8)}`;
    const redisUrls: Record<string, string> = {
      'mp-a': `${REDIS_BASE}/11`,
      'mp-b': `${REDIS_BASE}/12`,
      'mp-c': `redis://127.0.0.1:${port}/0`,
    };
    const seeds = Object.fromEntries(names.map((n) => [n, randomBytes(32).toString('hex')]));
    const procs = names.map((name) => new NodeProc({ name, prefix, seeds, redisUrls, antiEntropyIntervalMs: 1000 }));
    try {
      await Promise.all(procs.map((p) => p.ready));
      /** What every node must end up holding: key → fields. */
      const expected: Record<string, Record<string, string>> = {};
      let writes = 0;
      const write = async (p: NodeProc, key: string, fields: Record<string, string>): Promise<void> => {
        await p.request('write', { key, fields });
        expected[key] = { ...expected[key], ...fields };
        writes++;
      };
      const burst = async (round: number): Promise<void> => {
        for (const p of procs) {
          await write(p, `Patient/${p.name}-${round}`, { name: `written by ${p.name} in round ${round}` });
          // every node writes its own field of a few shared resources: concurrent edits to merge
          await write(p, `Observation/shared-${round % 3}`, { [p.name.replace('-', '')]: String(round) });
        }
      };

      for (let r = 0; r < 5; r++) {
        await burst(r);
        await sleep(150);
      }
      await killRedisServer(server); // mp-c's inbox, jobs and scheduler go with it
      for (let r = 5; r < 12; r++) {
        await burst(r);
        await sleep(150);
      }
      server = await startRedisServer(port); // empty
      for (let r = 12; r < 17; r++) {
        await burst(r);
        await sleep(150);
      }

      const t0 = Date.now();
      let snaps: Record<string, unknown>[] = [];
      for (;;) {
        snaps = await Promise.all(procs.map((p) => p.request<Record<string, unknown>>('snapshot')));
        if (snaps.every((s) => isDeepStrictEqual(s, expected))) break;
        if (Date.now() - t0 > CONVERGE_BOUND_MS) break;
        await sleep(250);
      }
      const took = Date.now() - t0;
      const stats = await Promise.all(procs.map((p) => p.request<{ sendFailures: number; antiEntropyRuns: number; aeUpdatesQueued: number }>('stats')));
      t.diagnostic(
        `${writes} writes; converged ${took} ms after the last write; ` +
          stats.map((s, i) => `${names[i]}: sendFailures ${s.sendFailures}, ae runs ${s.antiEntropyRuns}, ae repairs ${s.aeUpdatesQueued}`).join('; '),
      );
      for (const [i, s] of snaps.entries()) assert.deepEqual(s, expected, `${names[i]} holds every write`);
      assert.ok(took <= CONVERGE_BOUND_MS);
      assert.equal(Object.keys(expected).length, 3 * 17 + 3);
      assert.ok(stats[0]!.sendFailures + stats[1]!.sendFailures > 0, 'the outage was seen by the writers');
    } finally {
      await Promise.all(procs.map((p) => p.stop()));
      await killRedisServer(server);
      const r = new Redis(REDIS_BASE);
      try {
        for (const db of [11, 12]) {
          await r.select(db);
          await deleteKeysMatching(r, `${prefix}:*`);
        }
      } finally {
        r.disconnect();
      }
    }
  },
);
