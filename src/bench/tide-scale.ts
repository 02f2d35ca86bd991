/**
 * Bench section `tide`: how Tide, tidegate's gossip engine, scales (issue 5).
 *
 * Set-up, all in this process: N Tide nodes, each with the real merge engine (src/merge/replica.ts
 * over an in-memory store, no hospital server), all on one Redis with one key prefix per run (each
 * node's inbox is its own queue). When `redis-server` is installed the section starts a throw-away
 * one on a free loopback port (no persistence, `maxmemory-policy noeviction`) so that other users
 * of the shared Redis neither disturb the memory figure nor see the keys; otherwise it uses
 * `ctx.redisUrl` under its own prefix. Anti-entropy is off except where measured.
 *
 * Figures:
 * - **convergence**: a write at one node (round-robin writer; a new birthDate on one Patient) until
 *   every other node's replica holds it (its state vector covers the writer's; timed from just
 *   before `tide.publish` to the `applyRemote` that completes it on the last node), p50/p99, for
 *   3, 5, 10 and 20 nodes; writes are sequential (the next starts once the last converged);
 * - **fanout cost**: envelopes and envelope bytes added to inboxes per write (= N − 1 envelopes);
 * - **catch-up**: a peer stopped while another node made 10,000 updates (10,000 Observations, one
 *   write each), then started: (a) from its inbox backlog, (b) with its inbox lost, by anti-entropy
 *   alone (one round started by the peer);
 * - **Redis memory**: `INFO memory` `used_memory` growth while those 10,000 updates wait in the
 *   stopped peer's inbox (batched by Tide, `batchMaxUpdates` 200).
 *
 * All N nodes share this process's 2 cores and one crypto worker pool, so every seal and open of
 * every node competes for the same CPU: the convergence figure for N nodes is an upper bound of a
 * deployment where each hospital has its own machine.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { loadavg } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { LosslessNumber } from 'lossless-json';
import { generateNodeKeys } from '../envelope/index.ts';
import type { NodePublicKeys, NodeSecretKeys } from '../envelope/index.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import { Replica } from '../merge/replica.ts';
import { loadMergePolicy } from '../merge/policy.ts';
import { MemoryStore } from '../store/store.ts';
import { Tide, inboxQueueName, stateVectorAhead } from '../tide/index.ts';
import type { ResourceUpdate, TideLogger, TideOptions, TideStats } from '../tide/index.ts';
import type { BenchContext, BenchSection, BenchSectionResult } from './section.ts';
import { fmtBytes, fmtMs, summarize } from './stats.ts';
import type { Summary } from './stats.ts';
import { deleteKeysMatching } from '../tide/redis-keys.ts';

/** Issue 5 target: a write at one hospital reaches all of 5 hospitals with p99 under this (ms). */
export const TIDE_P99_TARGET_MS = 1000;
/** Issue 5 target: a peer down for 10,000 updates catches up in under this (ms). */
export const TIDE_CATCHUP_TARGET_MS = 30_000;

/** Figures of one mesh size. */
export interface TideConvergenceFigures {
  nodes: number;
  /** Write → held by every other node, ms. */
  converge: Summary;
  /** Envelopes added to inboxes per write. */
  messagesPerWrite: number;
  /** Envelope bytes added to inboxes per write. */
  bytesPerWrite: number;
  /** Bytes of the Yjs update of one write (before sealing). */
  updateBytes: number;
  timeouts: number;
}

/** Figures of the catch-up runs. */
export interface TideCatchupFigures {
  updates: number;
  /** Stopped peer started → holds all updates, from its inbox backlog, ms. */
  fromInboxMs: number | undefined;
  /** Inbox envelopes waiting when it started. */
  inboxEnvelopes: number;
  /** Their total size (envelope string bytes). */
  inboxBytes: number;
  /** Same, with the inbox lost: one anti-entropy round started by the peer, ms. */
  byAntiEntropyMs: number | undefined;
  /** Anti-entropy messages (tree, digest, reply) both nodes sent during that round. */
  antiEntropyMessages: number;
  /** Redis `used_memory` growth with the updates in the stopped peer's inbox, bytes. */
  redisMemoryBytes: number | undefined;
  /** Whether the Redis was a dedicated throw-away server (else shared: the memory figure is noisy). */
  dedicatedRedis: boolean;
}

const silent: TideLogger = { info() {}, warn() {}, error() {} };

/** Deterministic-enough Patient body for write `i`. */
function patient(id: string, i: number): FhirJsonObject {
  return {
    resourceType: 'Patient',
    id,
    active: true,
    name: [{ family: 'Benchmark', given: ['Tide'] }],
    gender: 'unknown',
    birthDate: new Date(Date.UTC(1930, 0, 1) + i * 86_400_000).toISOString().slice(0, 10),
  };
}

function observation(id: string, i: number): FhirJsonObject {
  return {
    resourceType: 'Observation',
    id,
    status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '2339-0', display: 'Glucose' }] },
    valueQuantity: { value: new LosslessNumber(String(4 + (i % 50) / 10)), unit: 'mmol/L', system: 'http://unitsofmeasure.org', code: 'mmol/L' },
  };
}

/** One bench node: the merge engine and its Tide; `watch` is told of every applied remote key. */
class BenchNode {
  readonly name: string;
  readonly replica: Replica;
  readonly keys: { secretKeys: NodeSecretKeys; publicKeys: NodePublicKeys };
  tide: Tide | undefined;
  watch: ((key: string) => void) | undefined;

  constructor(name: string, keys: { secretKeys: NodeSecretKeys; publicKeys: NodePublicKeys }) {
    this.name = name;
    this.keys = keys;
    this.replica = new Replica({ nodeId: name, store: new MemoryStore(), policy: loadMergePolicy() });
  }

  start(peers: BenchNode[], redisUrl: string, prefix: string, extra: Partial<TideOptions> = {}): Promise<void> {
    const replica = this.replica;
    this.tide = new Tide({
      self: this.keys.secretKeys,
      redisUrl,
      prefix,
      peers: peers.filter((p) => p !== this).map((p) => ({ nodeId: p.name, redisUrl, publicKeys: p.keys.publicKeys })),
      logger: silent,
      antiEntropyIntervalMs: 0,
      batchDelayMs: 5,
      ...extra,
      replica: {
        nodeId: this.name,
        applyRemote: async (updates: ResourceUpdate[]) => {
          for (const u of updates) replica.applyRemote(u.key, u.update);
          if (this.watch) for (const u of updates) this.watch(u.key);
        },
        keys: () => replica.keys(),
        stateVector: (key) => replica.stateVector(key),
        diffFor: (key, sv) => replica.diffFor(key, sv),
      },
    });
    return this.tide.start();
  }

  /** True when this node holds at least `sv` of `key`. */
  holds(key: string, sv: Uint8Array): boolean {
    const mine = this.replica.stateVector(key);
    return mine !== undefined && !stateVectorAhead(sv, mine);
  }
}

function sumStats(nodes: BenchNode[], f: (s: TideStats) => number): number {
  return nodes.reduce((a, n) => a + (n.tide ? f(n.tide.stats()) : 0), 0);
}

async function freePort(): Promise<number> {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address() as AddressInfo;
  srv.close();
  await once(srv, 'close');
  return port;
}

/** Starts a throw-away redis-server (no persistence, noeviction); undefined when it cannot. */
async function startOwnRedis(): Promise<{ url: string; child: ChildProcess } | undefined> {
  const port = await freePort();
  let child: ChildProcess;
  try {
    child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--maxmemory-policy', 'noeviction'], { stdio: 'ignore' });
  } catch {
    return undefined;
  }
  const failed = new Promise<boolean>((resolve) => {
    child.once('error', () => resolve(true));
    child.once('exit', () => resolve(true));
  });
  const url = `redis://127.0.0.1:${port}/0`;
  for (let i = 0; i < 50; i++) {
    if (await Promise.race([failed, sleep(100, false)])) return undefined;
    const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    r.on('error', () => {});
    try {
      await r.connect();
      if ((await r.ping()) === 'PONG') return { url, child };
    } catch {
      // not up yet
    } finally {
      r.disconnect();
    }
  }
  child.kill('SIGKILL');
  return undefined;
}

async function usedMemory(r: Redis): Promise<number> {
  const info = await r.info('memory');
  const m = /^used_memory:(\d+)/m.exec(info);
  return m ? Number(m[1]) : NaN;
}

async function deletePrefix(r: Redis, prefix: string): Promise<void> {
  await deleteKeysMatching(r, `${prefix}:*`);
}

async function stopAll(nodes: BenchNode[]): Promise<void> {
  await Promise.allSettled(nodes.map((n) => n.tide?.stop()));
}

/**
 * Convergence of sequential writes in a mesh of `n` nodes.
 * @param samples - measured writes (after 2 warm-up writes).
 * @param deadline - stop sampling at this time (performance.now() ms).
 */
async function convergence(n: number, samples: number, redisUrl: string, deadline: number): Promise<TideConvergenceFigures> {
  const prefix = `tidebench-${randomBytes(4).toString('hex')}`;
  const nodes = Array.from({ length: n }, (_, i) => new BenchNode(`tb${n}-${i + 1}`, generateNodeKeys(`tb${n}-${i + 1}`)));
  const r = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
  try {
    for (const node of nodes) await node.start(nodes, redisUrl, prefix);
    const key = 'Patient/tide-bench';
    const times: number[] = [];
    let timeouts = 0;
    let updateBytes = 0;
    let msgs0 = 0;
    let bytes0 = 0;
    let measured = 0;
    for (let i = 0; i < samples + 2; i++) {
      if (i === 2) {
        msgs0 = sumStats(nodes, (s) => s.messagesSent);
        bytes0 = sumStats(nodes, (s) => s.bytesSent);
      }
      if (i >= 2 && performance.now() > deadline) break;
      const writer = nodes[i % n] as BenchNode;
      const w = writer.replica.write(key, patient('tide-bench', i));
      if (!w.update) throw new Error('tide bench: a write produced no update');
      const sv = writer.replica.stateVector(key) as Uint8Array;
      updateBytes = w.update.length;
      const others = nodes.filter((x) => x !== writer);
      let waiting = new Set(others.filter((x) => !x.holds(key, sv)));
      let t0 = 0;
      const done = new Promise<number>((resolve) => {
        for (const o of others) {
          o.watch = (k) => {
            if (k !== key || !waiting.has(o) || !o.holds(key, sv)) return;
            waiting.delete(o);
            if (waiting.size === 0) resolve(performance.now() - t0);
          };
        }
      });
      t0 = performance.now();
      writer.tide?.publish([{ key, update: w.update }]);
      const took = await Promise.race([done, sleep(15_000, undefined)]);
      for (const o of others) o.watch = undefined;
      waiting = new Set();
      if (i < 2) continue;
      measured++;
      if (took === undefined) timeouts++;
      else times.push(took);
      // let the inbox jobs complete before the next write
      await sleep(20);
    }
    if (times.length === 0) throw new Error(`tide bench: no write converged on ${n} nodes`);
    const msgs = sumStats(nodes, (s) => s.messagesSent) - msgs0;
    const bytes = sumStats(nodes, (s) => s.bytesSent) - bytes0;
    return {
      nodes: n,
      converge: summarize(times),
      messagesPerWrite: Math.round((msgs / measured) * 100) / 100,
      bytesPerWrite: Math.round(bytes / measured),
      updateBytes,
      timeouts,
    };
  } finally {
    await stopAll(nodes);
    await deletePrefix(r, prefix).catch(() => {});
    r.disconnect();
  }
}

/** Waits until `node` holds every key of `from` at least at `from`'s state; resolves to ms, or undefined on timeout. */
async function waitHolds(node: BenchNode, from: BenchNode, keys: readonly string[], timeoutMs: number): Promise<number | undefined> {
  const t0 = performance.now();
  const svs = keys.map((k) => from.replica.stateVector(k) as Uint8Array);
  let i = 0;
  while (performance.now() - t0 < timeoutMs) {
    while (i < keys.length && node.holds(keys[i] as string, svs[i] as Uint8Array)) i++;
    if (i === keys.length) return performance.now() - t0;
    await sleep(20);
  }
  return undefined;
}

/** Catch-up of a peer that was down for `updates` updates, and Redis memory of those updates in flight. */
async function catchup(updates: number, redisUrl: string, dedicated: boolean): Promise<TideCatchupFigures> {
  const prefix = `tidebench-${randomBytes(4).toString('hex')}`;
  const a = new BenchNode('tc-a', generateNodeKeys('tc-a'));
  const b = new BenchNode('tc-b', generateNodeKeys('tc-b'));
  const nodes = [a, b];
  const r = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
  const keys = Array.from({ length: updates }, (_, i) => `Observation/tc-${i}`);
  try {
    await a.start(nodes, redisUrl, prefix);
    await b.start(nodes, redisUrl, prefix);
    await b.tide?.stop();
    // (a) from the inbox backlog; memory measured while the updates wait there
    const mem0 = await usedMemory(r);
    const sent0 = a.tide?.stats().bytesSent ?? 0;
    const batch: ResourceUpdate[] = [];
    for (const [i, key] of keys.entries()) {
      const w = a.replica.write(key, observation(key.slice('Observation/'.length), i));
      if (w.update) batch.push({ key, update: w.update });
      if (batch.length >= 500) a.tide?.publish(batch.splice(0));
      if (i % 500 === 0) await sleep(0);
    }
    a.tide?.publish(batch.splice(0));
    await a.tide?.flush();
    const mem1 = await usedMemory(r);
    const inboxBytes = (a.tide?.stats().bytesSent ?? 0) - sent0;
    const inboxKey = `${prefix}:${inboxQueueName('tc-b')}:wait`;
    const inboxEnvelopes = await r.llen(inboxKey);
    await b.start(nodes, redisUrl, prefix);
    const fromInboxMs = await waitHolds(b, a, keys, 120_000);

    // (b) the inbox lost: anti-entropy alone
    await b.tide?.stop();
    for (const [i, key] of keys.entries()) {
      const w = a.replica.write(key, observation(key.slice('Observation/'.length), i + 1));
      if (w.update) batch.push({ key, update: w.update });
      if (batch.length >= 500) a.tide?.publish(batch.splice(0));
      if (i % 500 === 0) await sleep(0);
    }
    a.tide?.publish(batch.splice(0));
    await a.tide?.flush();
    await deletePrefix(r, `${prefix}:${inboxQueueName('tc-b')}`);
    await b.start(nodes, redisUrl, prefix);
    const ae0 = sumStats(nodes, (s) => s.aeMessagesSent);
    const t0 = performance.now();
    await b.tide?.runAntiEntropy();
    const held = await waitHolds(b, a, keys, 120_000);
    const byAntiEntropyMs = held === undefined ? undefined : performance.now() - t0;
    return {
      updates,
      fromInboxMs,
      inboxEnvelopes,
      inboxBytes,
      byAntiEntropyMs,
      antiEntropyMessages: sumStats(nodes, (s) => s.aeMessagesSent) - ae0,
      redisMemoryBytes: Number.isFinite(mem1 - mem0) ? mem1 - mem0 : undefined,
      dedicatedRedis: dedicated,
    };
  } finally {
    await stopAll(nodes);
    await deletePrefix(r, prefix).catch(() => {});
    r.disconnect();
  }
}

const met = (ok: boolean): string => (ok ? '**met**' : '**not met**');

/** Runs the section; see the module doc. */
async function run(ctx: BenchContext): Promise<BenchSectionResult> {
  const start = performance.now();
  const end = start + ctx.budgetMs;
  const skipped: Record<string, string> = {};
  const own = await startOwnRedis();
  const redisUrl = own?.url ?? ctx.redisUrl;
  if (!own) ctx.log.warn('tide bench: no throw-away redis-server; using the shared Redis (memory figure noisy)');
  const sizes = ctx.quick ? [3, 5] : [3, 5, 10, 20];
  const samplesFor = (n: number): number => (ctx.quick ? 5 : n <= 5 ? 60 : n <= 10 ? 30 : 15);
  const conv: TideConvergenceFigures[] = [];
  const updates = ctx.quick ? 1000 : 10_000;
  let cu: TideCatchupFigures | undefined;
  const load0 = loadavg()[0] ?? 0;
  try {
    // the catch-up run first: its size is fixed by the issue, the convergence samples then fill the rest
    try {
      cu = await catchup(updates, redisUrl, own !== undefined);
    } catch (err) {
      skipped.catchup = `failed: ${(err as Error).message}`;
    }
    for (const [i, n] of sizes.entries()) {
      // share what is left between the sizes still to run, bigger meshes get more
      const left = end - performance.now();
      const weights = sizes.slice(i).reduce((a, m) => a + m, 0);
      const slot = (left * n) / weights;
      if (left < 15_000) {
        skipped[`converge-${n}`] = 'out of budget';
        continue;
      }
      try {
        conv.push(await convergence(n, samplesFor(n), redisUrl, performance.now() + slot));
      } catch (err) {
        skipped[`converge-${n}`] = `failed: ${(err as Error).message}`;
      }
    }
  } finally {
    if (own) {
      own.child.kill('SIGKILL');
      await once(own.child, 'exit').catch(() => {});
    }
  }
  const load1 = loadavg()[0] ?? 0;

  const five = conv.find((c) => c.nodes === 5);
  const p99ok = five !== undefined && five.converge.p99 < TIDE_P99_TARGET_MS;
  const catchOk = cu?.fromInboxMs !== undefined && cu.fromInboxMs < TIDE_CATCHUP_TARGET_MS && cu.updates >= 10_000;
  const aeOk = cu?.byAntiEntropyMs !== undefined && cu.byAntiEntropyMs < TIDE_CATCHUP_TARGET_MS && cu.updates >= 10_000;
  const lines: string[] = [];
  lines.push(
    `All nodes in one process on this machine (load average ${load0.toFixed(1)} → ${load1.toFixed(1)}), sharing its cores and one ` +
      `crypto worker pool; ${own ? 'a dedicated throw-away redis-server' : 'the shared Redis'} (one key prefix per run). ` +
      'Each node runs the real merge engine over an in-memory store, no hospital server. Writes are sequential, round-robin over the nodes; ' +
      'a write has converged when every other node holds its state (Yjs state vector), timed from `publish` to the last `applyRemote`.',
    '',
    '| nodes | writes | p50 | p99 | max | envelopes / write | bytes / write | update bytes | timeouts |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  );
  for (const c of conv) {
    lines.push(
      `| ${c.nodes} | ${c.converge.n} | ${fmtMs(c.converge.p50)} | ${fmtMs(c.converge.p99)} | ${fmtMs(c.converge.max)} | ${c.messagesPerWrite} | ${fmtBytes(c.bytesPerWrite)} | ${c.updateBytes} B | ${c.timeouts} |`,
    );
  }
  lines.push(
    '',
    'Fanout cost: a write is sealed once per peer (N − 1 envelopes, each carrying its own X-Wing encapsulation and ML-DSA-65 signature), ' +
      'so the cost per write grows linearly with the mesh and, in one process, so does the CPU every write competes for.',
    '',
  );
  if (cu) {
    lines.push(
      `Catch-up of a peer stopped while another node made ${cu.updates.toLocaleString('en-US')} updates (${cu.updates.toLocaleString('en-US')} Observations, one write each):`,
      '',
      '| how | time | detail |',
      '| --- | ---: | --- |',
      `| from its inbox backlog | ${cu.fromInboxMs === undefined ? 'timed out' : fmtMs(cu.fromInboxMs)} | ${cu.inboxEnvelopes} envelopes waiting (batches of ≤ 200 updates) |`,
      `| inbox lost, anti-entropy alone (one round) | ${cu.byAntiEntropyMs === undefined ? 'timed out' : fmtMs(cu.byAntiEntropyMs)} | ${cu.antiEntropyMessages} anti-entropy messages (tree levels, digests) |`,
      '',
      `Redis memory while those updates wait in the stopped peer's inbox: ${cu.redisMemoryBytes === undefined ? 'n/a' : `${fmtBytes(cu.redisMemoryBytes)} (${Math.round(cu.redisMemoryBytes / cu.updates)} B per update)`} ` +
        `for ${fmtBytes(cu.inboxBytes)} of sealed envelopes (${Math.round(cu.inboxBytes / cu.updates)} B per update) ` +
        `(\`INFO memory\` used_memory growth${cu.dedicatedRedis ? ', dedicated server' : ', shared server: noisy'}).`,
      '',
    );
  }
  lines.push(
    'Targets (issue 5, 2-core development machine):',
    '',
    `- a write at one hospital reaches all of 5 hospitals with p99 < ${TIDE_P99_TARGET_MS} ms: ${five ? `${fmtMs(five.converge.p99)}, ${met(p99ok)}` : 'not measured'};`,
    cu !== undefined && cu.updates < 10_000
      ? `- a peer down for 10,000 updates catches up in < 30 s: not measured (quick run with ${cu.updates} updates).`
      : `- a peer down for 10,000 updates catches up in < 30 s: from its inbox ${cu?.fromInboxMs !== undefined ? fmtMs(cu.fromInboxMs) : 'n/a'}, ${met(catchOk)}; ` +
        `by anti-entropy alone ${cu?.byAntiEntropyMs !== undefined ? fmtMs(cu.byAntiEntropyMs) : 'n/a'}, ${met(aeOk)}.`,
  );
  const text = [
    ...conv.map((c) => `tide ${String(c.nodes).padStart(2)} nodes: converge p50 ${fmtMs(c.converge.p50)} p99 ${fmtMs(c.converge.p99)}; ${c.messagesPerWrite} envelopes, ${fmtBytes(c.bytesPerWrite)} per write`),
    cu ? `tide catch-up ${cu.updates}: inbox ${cu.fromInboxMs === undefined ? 'timeout' : fmtMs(cu.fromInboxMs)}, anti-entropy ${cu.byAntiEntropyMs === undefined ? 'timeout' : fmtMs(cu.byAntiEntropyMs)}; Redis ${cu.redisMemoryBytes === undefined ? 'n/a' : fmtBytes(cu.redisMemoryBytes)}` : 'tide catch-up: skipped',
  ].join('\n');
  return {
    id: 'tide',
    title: 'Tide gossip at scale: convergence for 3–20 nodes, fanout cost, catch-up, Redis memory',
    markdown: lines.join('\n'),
    text,
    figures: { convergence: conv, catchup: cu, targets: { p99At5NodesMet: p99ok, catchupFromInboxMet: catchOk, catchupByAntiEntropyMet: aeOk }, loadAverage: [load0, load1] },
    skipped,
  };
}

/** The `tide` bench section (issue 5); see the module doc. */
export const tideSection: BenchSection = { id: 'tide', weight: 0.35, run };
