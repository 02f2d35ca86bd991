/**
 * Bench section `http`: the FHIR REST overhead of a tidegate node, measured with autocannon
 * (https://github.com/mcollina/autocannon) side by side against the same Medplum stand-in hospital
 * server (issue 6), and the latency that sealing and ML-DSA-65 signing for gossip adds to an HTTP
 * write, with the main thread's event-loop delay during that load (issue 4).
 *
 * Layout, as in a deployment where the hospital's FHIR server is a separate system: each Medplum
 * stand-in hospital server (src/hospital/medplum-server.ts) runs in a child process of its own
 * (src/hospital/medplum-main.ts, {@link startHospitalProcess}); the tidegate node and the bare
 * reference proxy run on the bench process's main thread; autocannon runs on a worker thread so
 * that load generation is on neither event loop. `direct` is autocannon → hospital process;
 * `tidegate` is autocannon → node (main thread) → hospital process.
 *
 * Set-up:
 * - node `bench-http` with 0 peers in front of a Medplum stand-in server,
 *   loaded through the node's FHIR API (PUT, 8 concurrent) with the Synthea sample in import order
 *   (time-boxed), or a generated fixture when the sample is absent; the run waits until the node's
 *   hospital outbox has written everything, so both sides see the same data;
 * - nodes `bench-sign-0` (0 peers) and `bench-sign-N` (N peers) built the same way, each with its own
 *   Medplum server, loaded with the same Patients. The peers are configured (keys, queue on the same
 *   Redis) but no peer node consumes its inbox, so the figure is the sender's cost only: every write
 *   is batched, sealed and ML-DSA-65-signed once per peer on Tide's crypto worker pool and added to
 *   the peer's BullMQ inbox.
 *
 * Measurements alternate A/B in short rounds (direct, tidegate; then tidegate, direct; …) and each
 * figure is the median over rounds, because the machine is shared and noisy.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { availableParallelism, loadavg } from 'node:os';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { generateNodeKeys } from '../envelope/index.ts';
import { DEFAULT_WORKER_NICE } from '../envelope/pool.ts';
import { canonicalStringify, isJsonObject } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import { HospitalClient } from '../hospital/index.ts';
import { importPlan } from '../import/index.ts';
import { TidegateNode } from '../node/node.ts';
import type { BenchContext, BenchSection, BenchSectionResult } from './section.ts';
import { fmtMs, percentile, ratio, round } from './stats.ts';
import { deleteKeysMatching } from '../tide/redis-keys.ts';

/** The throughput target of issue 6: reads and searches through tidegate at ≥ 70 % of direct. */
export const HTTP_RATIO_TARGET = 0.7;
/** Issue 4: PQ work never blocks the event loop for more than this, ms. */
export const EVENT_LOOP_TARGET_MS = 10;
/** Tide batch delay of the bench nodes, ms (as figure 3 of the core bench). */
const BATCH_DELAY_MS = 2;
/** Sampling resolution of `monitorEventLoopDelay`, ms. */
const EVENT_LOOP_RESOLUTION_MS = 2;
/** Concurrent PUTs while loading the data. */
const LOAD_CONCURRENCY = 8;
/** Search types tried in this order for the compartment search; the first one loaded is used. */
const COMPARTMENT_TYPES = ['Observation', 'Encounter', 'Condition', 'Procedure'];
const FHIR_JSON = 'application/fhir+json';
/** Replaced in write bodies by a new number per request, so every write changes the resource. */
const UNIQUE_PLACEHOLDER = '{{tidegate-bench-seq}}';

/** Sizes of one run of the section; {@link httpSection} derives them from the context. */
export interface HttpBenchOptions {
  /** autocannon connections of the throughput runs. Default 10. */
  connections: number;
  /** Length of one autocannon run, s (fractions allowed). */
  durationS: number;
  /** A/B rounds per comparison. */
  rounds: number;
  /** Length of the discarded warm-up run per target, s. */
  warmupS: number;
  /** Peers of the signing node. Default 2. */
  peers: number;
  /** Offered write rate of the signing comparison, requests/s (both nodes get the same). */
  signingRate?: number;
  /** Load at most this many resources (in import order); all when absent. */
  maxResources?: number;
  /** Loading stops this many ms after it started (what is loaded so far is used). */
  loadBudgetMs: number;
}

/** Event-loop delay of the main thread during one run, ms (`perf_hooks.monitorEventLoopDelay`). */
export interface EventLoopFigures {
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  meanMs: number;
  /**
   * Event-loop turns that came more than {@link EVENT_LOOP_TARGET_MS} late (a {@link StallWatch}),
   * and how many of them the main thread spent at least that long on its own CPU: the others waited
   * for a core (other threads or processes ran), they were not blocked by the node's own work.
   * Absent where `process.threadCpuUsage` is missing (Node < 23.9).
   */
  stalls?: number;
  stallsOwnCpu?: number;
  /** Most main-thread CPU time spent inside any one late turn, ms. */
  maxStallCpuMs?: number;
}

/**
 * Watches the main thread's event loop with a 1 ms interval timer and, for each turn that came more
 * than `thresholdMs` late, measures the CPU time this thread used meanwhile
 * (`process.threadCpuUsage`, user + system). A late turn with little CPU of its own is the thread
 * waiting to be scheduled (other threads or processes held the cores, or GC helper threads were
 * waited for), not work of the node holding the loop.
 */
class StallWatch {
  readonly #threshold: number;
  readonly #timer: NodeJS.Timeout | undefined;
  #last = performance.now();
  #lastCpu = 0;
  stalls = 0;
  ownCpu = 0;
  maxCpuMs = 0;
  readonly available: boolean;

  constructor(thresholdMs: number) {
    this.#threshold = thresholdMs;
    const cpu = (process as { threadCpuUsage?: () => NodeJS.CpuUsage }).threadCpuUsage?.bind(process);
    this.available = cpu !== undefined;
    if (!cpu) return;
    const us = (): number => {
      const c = cpu();
      return c.user + c.system;
    };
    this.#lastCpu = us();
    this.#timer = setInterval(() => {
      const now = performance.now();
      const c = us();
      if (now - this.#last > this.#threshold + 1) {
        const cpuMs = (c - this.#lastCpu) / 1000;
        this.stalls++;
        if (cpuMs >= this.#threshold) this.ownCpu++;
        if (cpuMs > this.maxCpuMs) this.maxCpuMs = cpuMs;
      }
      this.#last = now;
      this.#lastCpu = c;
    }, 1);
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
  }
}

/** One autocannon run against one target. Latencies in ms (exact per-request times, not autocannon's integer histogram). */
export interface LoadRunFigures {
  /** 2xx responses per second of the run. */
  requestsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  meanMs: number;
  /** 2xx responses. */
  ok: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  seconds: number;
  eventLoop: EventLoopFigures;
  /**
   * Time the bench process's main thread (where the tidegate node runs; autocannon is on a worker)
   * was busy per 2xx response, µs (`performance.eventLoopUtilization`: active time ÷ responses).
   * For `tidegate` runs it is the node's own cost per request (CPU and system calls, not its waits
   * for the hospital or the client; a preemption mid-callback counts); for `direct` runs the main
   * thread does nearly nothing.
   */
  mainThreadUsPerOk: number;
}

/** Medians over the rounds of one target (throughput, p50, p99; event-loop max is the worst round). */
export interface TargetFigures {
  rounds: number;
  requestsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  ok: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  /** stalls / stallsOwnCpu: summed over rounds; maxStallCpuMs: the worst round (see {@link EventLoopFigures}). */
  eventLoop: { p99Ms: number; maxMs: number; stalls?: number; stallsOwnCpu?: number; maxStallCpuMs?: number };
  /** Median over rounds of {@link LoadRunFigures.mainThreadUsPerOk}, µs. */
  mainThreadUsPerOk: number;
  perRound: LoadRunFigures[];
}

/** One request kind, tidegate vs direct. */
export interface ComparisonFigures {
  id: string;
  /** e.g. `GET Patient/[id]`. */
  request: string;
  /** Distinct requests cycled through (one per Patient). */
  distinct: number;
  tidegate: TargetFigures;
  direct: TargetFigures;
  /** Median over rounds of tidegate req/s ÷ direct req/s of the same round. */
  throughputRatio: number | null;
  /** The per-round ratios. */
  roundRatios: Array<number | null>;
  /** Tidegate p50 ÷ direct p50 (medians). */
  p50Ratio: number | null;
  /** Milliseconds the node's hospital outbox took to catch up after the tidegate runs (writes only), median. */
  drainMs?: number;
  /** Reads and searches: a do-nothing reverse proxy (node:http + fetch) in front of the same server, the floor of any Node proxy in front of it. */
  bareProxy?: TargetFigures;
  /** Median over rounds of bare-proxy req/s ÷ direct req/s. */
  bareProxyRatio?: number | null;
}

/** The signing comparison (issue 4). */
export interface SigningFigures {
  peers: number;
  /** Offered rate of both, writes/s. */
  rate: number;
  connections: number;
  noPeers: TargetFigures;
  withPeers: TargetFigures;
  /** withPeers − noPeers, ms (medians). */
  p50AddedMs: number;
  p99AddedMs: number;
  /** Sealed envelopes sent by the node with peers per round (median) and updates per envelope. */
  envelopesPerRound: number;
  updatesPerEnvelope: number | null;
  /** Gossip backlog drain after a round (sealing what the batcher still held), ms, median. */
  drainMs: number;
}

/** Everything the section measured; `figures` of its {@link BenchSectionResult}. */
export interface HttpBenchFigures {
  data: { source: string; loaded: number; rejected: number; truncated: boolean; patients: number; loadSeconds: number; byType: Record<string, number> };
  options: Omit<HttpBenchOptions, 'loadBudgetMs'>;
  comparisons: ComparisonFigures[];
  /** True when reads and both searches meet {@link HTTP_RATIO_TARGET}. */
  targetMet: boolean;
  signing: SigningFigures | null;
  /** True when no write run (0 peers or with peers) saw the event loop blocked for more than {@link EVENT_LOOP_TARGET_MS}. */
  eventLoopTargetMet: boolean | null;
  loadAvg1m: { start: number; end: number };
  /** `os.availableParallelism()` of the machine. */
  cpus: number;
}

/** A request as autocannon takes it. */
interface AcRequest {
  method: 'GET' | 'PUT';
  path: string;
  headers: Record<string, string>;
  body?: string;
}

/** A request kind to compare. */
interface Kind {
  id: string;
  request: string;
  /** Paths relative to a FHIR base (no leading `/`), with method and body. */
  requests: Array<{ method: 'GET' | 'PUT'; rel: string; body?: string }>;
  write: boolean;
}

/** One bench node with its own hospital server (a child process); see {@link startBenchNode}. */
interface BenchNode {
  name: string;
  node: TidegateNode;
  gateway: string;
  fhirServer: string;
  hospital: HospitalProcess;
  /** BullMQ prefix of the node's queues on Redis (deleted by {@link stopBenchNode}). */
  prefix: string;
  redisUrl: string;
}

/** A stand-in hospital FHIR server running in a child process; see {@link startHospitalProcess}. */
export interface HospitalProcess {
  /** FHIR base URL, e.g. `http://127.0.0.1:41234/fhir`. */
  url: string;
  /** Process id of the child. */
  pid: number;
  /** Ends the child (closes its stdin, then SIGKILL after 10 s) and waits for it to exit. Idempotent. */
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Load generator: autocannon on a worker thread, reporting every response time.

/**
 * Worker-thread source (CommonJS, run with `eval`): requires autocannon from the repository, runs
 * one job per message and posts back every 2xx response time (ms, float) plus counters.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createRequire } = require('node:module');
const autocannon = createRequire(workerData.resolveFrom)('autocannon');
let seq = 0;
parentPort.on('message', (job) => {
  if (job.placeholder) {
    // A new value per request, fixed width (autocannon's own [<id>] replacement miscounts Content-Length).
    for (const r of job.opts.requests) {
      if (typeof r.body === 'string' && r.body.includes(job.placeholder)) {
        const template = r.body;
        r.setupRequest = (req) => ({ ...req, body: template.replace(job.placeholder, String(seq++).padStart(12, '0')) });
      }
    }
  }
  const latencies = [];
  let ok = 0;
  let non2xx = 0;
  const t0 = performance.now();
  const instance = autocannon(job.opts, (err, result) => {
    const seconds = (performance.now() - t0) / 1000;
    if (err) { parentPort.postMessage({ id: job.id, error: String(err && err.message || err) }); return; }
    const lat = Float64Array.from(latencies);
    parentPort.postMessage({ id: job.id, latencies: lat, ok, non2xx, errors: result.errors, timeouts: result.timeouts, seconds: result.duration || seconds }, [lat.buffer]);
  });
  instance.on('response', (_client, status, _bytes, responseTime) => {
    if (status >= 200 && status < 300) { ok++; latencies.push(responseTime); } else non2xx++;
  });
});
`;

interface LoadResult {
  latencies: Float64Array;
  ok: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  seconds: number;
}

/** A worker thread running autocannon jobs one at a time. */
class LoadGenerator {
  readonly #worker: Worker;
  readonly #waiting = new Map<number, { resolve: (r: LoadResult) => void; reject: (e: Error) => void }>();
  #next = 0;

  constructor() {
    this.#worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { resolveFrom: new URL('../../package.json', import.meta.url).pathname } });
    this.#worker.on('message', (m: { id: number; error?: string } & LoadResult) => {
      const w = this.#waiting.get(m.id);
      this.#waiting.delete(m.id);
      if (m.error !== undefined) w?.reject(new Error(`autocannon: ${m.error}`));
      else w?.resolve(m);
    });
    this.#worker.on('error', (err) => {
      for (const w of this.#waiting.values()) w.reject(err);
      this.#waiting.clear();
    });
  }

  /**
   * Runs autocannon once.
   * @param url - target origin + base, e.g. `http://127.0.0.1:4000/fhir`.
   * @param requests - cycled through by every connection.
   * @param o - connections, duration (s), optional overall rate (req/s); `unique`: replace
   *   {@link UNIQUE_PLACEHOLDER} in bodies by a new 12-digit number for every request.
   */
  run(url: string, requests: AcRequest[], o: { connections: number; durationS: number; overallRate?: number; unique?: boolean }): Promise<LoadResult> {
    const id = this.#next++;
    const opts = {
      url,
      connections: o.connections,
      duration: o.durationS,
      pipelining: 1,
      timeout: 30,
      requests,
      ...(o.overallRate !== undefined ? { overallRate: o.overallRate } : {}),
    };
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, { resolve, reject });
      this.#worker.postMessage({ id, opts, ...(o.unique ? { placeholder: UNIQUE_PLACEHOLDER } : {}) });
    });
  }

  async close(): Promise<void> {
    await this.#worker.terminate();
  }
}

/**
 * Runs one load against `base` and watches the main thread's event loop meanwhile.
 * @throws Error when autocannon fails to start.
 */
async function measure(gen: LoadGenerator, base: string, kind: Kind, o: { connections: number; durationS: number; overallRate?: number }): Promise<LoadRunFigures> {
  const basePath = new URL(base).pathname.replace(/\/+$/, '');
  const requests: AcRequest[] = kind.requests.map((r) => ({
    method: r.method,
    path: `${basePath}/${r.rel}`,
    headers: r.body === undefined ? { accept: FHIR_JSON } : ({ accept: FHIR_JSON, 'content-type': FHIR_JSON } as Record<string, string>),
    ...(r.body !== undefined ? { body: r.body } : {}),
  }));
  const h = monitorEventLoopDelay({ resolution: EVENT_LOOP_RESOLUTION_MS });
  h.enable();
  const watch = new StallWatch(EVENT_LOOP_TARGET_MS);
  const elu0 = performance.eventLoopUtilization();
  let res: LoadResult;
  try {
    res = await gen.run(base, requests, { ...o, unique: kind.write });
  } finally {
    h.disable();
    watch.stop();
  }
  const elu = performance.eventLoopUtilization(elu0);
  const sorted = [...res.latencies].sort((a, b) => a - b);
  const ms = (ns: number): number => round(ns / 1e6, 2);
  return {
    requestsPerSecond: round(res.ok / res.seconds, 1),
    p50Ms: sorted.length > 0 ? round(percentile(sorted, 50), 3) : 0,
    p99Ms: sorted.length > 0 ? round(percentile(sorted, 99), 3) : 0,
    meanMs: sorted.length > 0 ? round(sorted.reduce((a, b) => a + b, 0) / sorted.length, 3) : 0,
    ok: res.ok,
    non2xx: res.non2xx,
    errors: res.errors,
    timeouts: res.timeouts,
    seconds: round(res.seconds, 2),
    eventLoop: {
      p50Ms: ms(h.percentile(50)),
      p99Ms: ms(h.percentile(99)),
      maxMs: ms(h.max),
      meanMs: ms(h.mean),
      ...(watch.available ? { stalls: watch.stalls, stallsOwnCpu: watch.ownCpu, maxStallCpuMs: round(watch.maxCpuMs, 2) } : {}),
    },
    mainThreadUsPerOk: res.ok > 0 ? round((elu.active * 1000) / res.ok, 1) : 0,
  };
}

function median(xs: readonly number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length / 2;
  return s.length % 2 === 1 ? s[Math.floor(m)]! : (s[m - 1]! + s[m]!) / 2;
}

function summarizeRuns(runs: LoadRunFigures[]): TargetFigures {
  return {
    rounds: runs.length,
    requestsPerSecond: round(median(runs.map((r) => r.requestsPerSecond)), 1),
    p50Ms: round(median(runs.map((r) => r.p50Ms)), 3),
    p99Ms: round(median(runs.map((r) => r.p99Ms)), 3),
    ok: runs.reduce((a, r) => a + r.ok, 0),
    non2xx: runs.reduce((a, r) => a + r.non2xx, 0),
    errors: runs.reduce((a, r) => a + r.errors, 0),
    timeouts: runs.reduce((a, r) => a + r.timeouts, 0),
    eventLoop: {
      p99Ms: round(median(runs.map((r) => r.eventLoop.p99Ms)), 2),
      maxMs: Math.max(0, ...runs.map((r) => r.eventLoop.maxMs)),
      ...(runs.length > 0 && runs.every((r) => r.eventLoop.stalls !== undefined)
        ? {
            stalls: runs.reduce((a, r) => a + r.eventLoop.stalls!, 0),
            stallsOwnCpu: runs.reduce((a, r) => a + r.eventLoop.stallsOwnCpu!, 0),
            maxStallCpuMs: Math.max(0, ...runs.map((r) => r.eventLoop.maxStallCpuMs!)),
          }
        : {}),
    },
    mainThreadUsPerOk: round(median(runs.map((r) => r.mainThreadUsPerOk)), 1),
    perRound: runs,
  };
}

// ---------------------------------------------------------------------------------------------
// Nodes and data.

/** The child-process entry of the stand-in hospital. */
const HOSPITAL_MAIN = fileURLToPath(new URL('../hospital/medplum-main.ts', import.meta.url));

/**
 * Starts a Medplum stand-in hospital server (src/hospital/medplum-server.ts) in a child process,
 * through src/hospital/medplum-main.ts, and waits for the URL it prints. The hospital then has an
 * event loop (and a core, when one is free) of its own, as a hospital's FHIR server in a
 * deployment does; it exits when this process does (its stdin closes).
 * @param name - the server's display name.
 * @param timeoutMs - how long to wait for it to listen (it indexes the FHIR definitions first, ~1–3 s).
 * @returns The running child.
 * @throws Error when the child exits or prints nothing usable within `timeoutMs` (its stderr tail is in the message).
 */
export function startHospitalProcess(name: string, timeoutMs = 60_000): Promise<HospitalProcess> {
  const child = spawn(process.execPath, ['--disable-warning=ExperimentalWarning', HOSPITAL_MAIN, JSON.stringify({ name })], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d: string) => {
    stderr = (stderr + d).slice(-2000);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.stdin.end();
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      }
    })();
    return closing;
  };
  return new Promise<HospitalProcess>((resolve, reject) => {
    let out = '';
    const fail = (why: string): void => {
      clearTimeout(timer);
      void close();
      reject(new Error(`http bench: hospital ${name} ${why}${stderr ? `: ${stderr.trim()}` : ''}`));
    };
    const timer = setTimeout(() => fail(`did not start within ${timeoutMs} ms`), timeoutMs);
    child.once('error', (err) => fail(`could not be spawned (${err.message})`));
    const early = (code: number | null, signal: NodeJS.Signals | null): void => fail(`exited (${signal ?? code}) before listening`);
    child.once('exit', early);
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      child.off('exit', early);
      let url: unknown;
      try {
        url = (JSON.parse(out.slice(0, nl)) as { url?: unknown }).url;
      } catch {
        url = undefined;
      }
      if (typeof url !== 'string') {
        fail('printed no URL');
        return;
      }
      resolve({ url, pid: child.pid!, close });
    });
  });
}

/**
 * Starts a tidegate node with its own Medplum stand-in server (a child process, see
 * {@link startHospitalProcess}) and `peers` configured peers that no node consumes for (their
 * inbox queues live on `redisUrl` under a fresh prefix).
 * @throws when Redis is unreachable, a port cannot be bound or the hospital does not start (what started is stopped).
 */
async function startBenchNode(name: string, peers: number, redisUrl: string, log: Logger): Promise<BenchNode> {
  const prefix = `tidegate-bench-http-${randomBytes(4).toString('hex')}`;
  const self = generateNodeKeys(name);
  const peerKeys = Array.from({ length: peers }, (_, i) => generateNodeKeys(`${name}-peer-${i + 1}`));
  const hospital = await startHospitalProcess(`${name}-fhir`);
  const client = new HospitalClient({ baseUrl: hospital.url });
  const node = new TidegateNode({
    secretKeys: self.secretKeys,
    peers: peerKeys.map((k) => ({ nodeId: k.publicKeys.nodeId, redisUrl, publicKeys: k.publicKeys })),
    redisUrl,
    queuePrefix: prefix,
    hospital: client,
    logger: log.child({ node: name }),
    antiEntropyIntervalMs: 0,
    batchDelayMs: BATCH_DELAY_MS,
    hospitalPollIntervalMs: 0,
  });
  const bench: BenchNode = { name, node, gateway: '', fhirServer: hospital.url, hospital, prefix, redisUrl };
  try {
    bench.gateway = await node.start();
  } catch (err) {
    await stopBenchNode(bench).catch(() => {});
    throw err;
  }
  return bench;
}

/** Stops the node and its hospital process, and deletes the node's keys (its prefix) from Redis. */
async function stopBenchNode(n: BenchNode): Promise<void> {
  try {
    await n.node.stop();
  } finally {
    await n.hospital.close();
  }
  const r = new Redis(n.redisUrl, { maxRetriesPerRequest: 1 });
  try {
    await deleteKeysMatching(r, `${n.prefix}:*`);
  } finally {
    r.disconnect();
  }
}

/**
 * A small generated data set for when the Synthea sample is absent: `patients` Patients with
 * `encountersEach` finished ambulatory Encounters each (valid R4, https://hl7.org/fhir/R4/encounter.html).
 */
export function generatedFixture(patients: number, encountersEach: number): FhirJsonObject[] {
  const out: FhirJsonObject[] = [];
  const families = ['Harbour', 'Tideland', 'Marsh', 'Quay', 'Estuary', 'Shingle', 'Breakwater', 'Sound', 'Strand', 'Fathom'];
  for (let i = 0; i < patients; i++) {
    out.push({
      resourceType: 'Patient',
      id: `bench-http-p${i}`,
      name: [{ use: 'official', family: `${families[i % families.length]!}${i}`, given: ['Tide', 'Bench'] }],
      gender: i % 2 === 0 ? 'female' : 'male',
      birthDate: new Date(Date.UTC(1940 + i, i % 12, 1 + (i % 28))).toISOString().slice(0, 10),
      address: [{ line: [`${i + 1} Harbour Road`], city: 'Portsmouth', postalCode: 'PO1 2AB', country: 'GB' }],
      telecom: [{ system: 'phone', value: `555-01${String(i).padStart(2, '0')}`, use: 'home' }],
    } as unknown as FhirJsonObject);
  }
  for (let i = 0; i < patients; i++) {
    for (let j = 0; j < encountersEach; j++) {
      const start = new Date(Date.UTC(2020, 0, 1) + (i * encountersEach + j) * 86_400_000);
      out.push({
        resourceType: 'Encounter',
        id: `bench-http-e${i}-${j}`,
        status: 'finished',
        class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB', display: 'ambulatory' },
        type: [{ coding: [{ system: 'http://snomed.info/sct', code: '185349003', display: 'Encounter for check up' }] }],
        subject: { reference: `Patient/bench-http-p${i}` },
        period: { start: start.toISOString(), end: new Date(start.getTime() + 1_800_000).toISOString() },
      } as unknown as FhirJsonObject);
    }
  }
  return out;
}

/**
 * PUTs resources at `gateway` in order, `LOAD_CONCURRENCY` at a time, until done or `deadline`.
 * @returns Accepted resources, rejected count, and whether the deadline cut the load short.
 */
async function loadThrough(gateway: string, resources: readonly FhirJsonObject[], deadline: number): Promise<{ accepted: FhirJsonObject[]; rejected: number; truncated: boolean }> {
  const accepted: Array<FhirJsonObject | undefined> = new Array(resources.length);
  let rejected = 0;
  let next = 0;
  let truncated = false;
  await Promise.all(
    Array.from({ length: Math.min(LOAD_CONCURRENCY, resources.length) }, async () => {
      while (next < resources.length) {
        if (performance.now() > deadline) {
          truncated = true;
          return;
        }
        const i = next++;
        const r = resources[i]!;
        const res = await fetch(`${gateway}/${String(r.resourceType)}/${String(r.id)}`, { method: 'PUT', headers: { 'content-type': FHIR_JSON }, body: canonicalStringify(r) });
        await res.arrayBuffer();
        if (res.ok) accepted[i] = r;
        else rejected++;
      }
    }),
  );
  return { accepted: accepted.filter((r): r is FhirJsonObject => r !== undefined), rejected, truncated };
}

/**
 * A do-nothing reverse proxy: a `node:http` server that forwards each GET to `target`'s origin with
 * `fetch` and passes status, Content-Type and body text through unchanged. It measures what any
 * Node proxy on this thread pays (one HTTP server, one HTTP client) before doing anything.
 * @param target - FHIR base of the server, e.g. `http://127.0.0.1:4000/fhir`.
 * @returns Its FHIR base (same path) and `close()`.
 */
async function startBareProxy(target: string): Promise<{ url: string; close(): Promise<void> }> {
  const t = new URL(target);
  const server = createServer((req, res) => {
    fetch(`${t.origin}${req.url ?? '/'}`, { headers: { accept: FHIR_JSON } }).then(
      async (r) => {
        const body = await r.text();
        res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? FHIR_JSON });
        res.end(body);
      },
      () => {
        res.writeHead(502);
        res.end();
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}${t.pathname.replace(/\/+$/, '')}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Waits until the node is quiet (gossip batches sealed and sent, hospital outbox written). */
async function settle(n: BenchNode, timeoutMs = 120_000): Promise<number> {
  const t0 = performance.now();
  while (!(await n.node.quiet())) {
    if (performance.now() - t0 > timeoutMs) throw new Error(`http bench: ${n.name} did not become quiet within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return performance.now() - t0;
}

/** Waits until `base` answers `GET metadata` (requests still queued from a run are done). */
async function responsive(base: string): Promise<void> {
  const res = await fetch(`${base}/metadata`, { headers: { accept: FHIR_JSON } });
  await res.arrayBuffer();
}

/** The body of a write: the Patient without `meta`, its first address line carrying {@link UNIQUE_PLACEHOLDER} (a new value per request). */
function writeBody(p: FhirJsonObject): string {
  const body = JSON.parse(canonicalStringify(p)) as Record<string, unknown>;
  delete body['meta'];
  const addresses = Array.isArray(body['address']) ? (body['address'] as Array<Record<string, unknown>>) : [];
  const first = addresses[0];
  if (first) first['line'] = [`${Array.isArray(first['line']) ? String(first['line'][0] ?? '') : ''} ${UNIQUE_PLACEHOLDER}`.trim()];
  else body['address'] = [{ line: [UNIQUE_PLACEHOLDER] }];
  return JSON.stringify(body);
}

function subjectOf(r: FhirJsonObject): string | undefined {
  const s = r['subject'];
  return isJsonObject(s) && typeof s['reference'] === 'string' && s['reference'].startsWith('Patient/') ? s['reference'] : undefined;
}

function familyOf(p: FhirJsonObject): string | undefined {
  const names = p['name'];
  if (!Array.isArray(names)) return undefined;
  for (const n of names) if (isJsonObject(n) && typeof n['family'] === 'string' && /^[A-Za-z0-9' -]+$/.test(n['family'])) return n['family'];
  return undefined;
}

/** The request kinds to compare, from what was loaded. */
function kindsFor(loaded: readonly FhirJsonObject[], patients: readonly FhirJsonObject[]): Kind[] {
  const kinds: Kind[] = [];
  kinds.push({ id: 'read', request: 'GET Patient/[id]', requests: patients.map((p) => ({ method: 'GET', rel: `Patient/${String(p.id)}` })), write: false });
  const withSubject = new Map<string, Set<string>>();
  for (const r of loaded) {
    const s = subjectOf(r);
    if (s === undefined) continue;
    const type = String(r.resourceType);
    if (!withSubject.has(type)) withSubject.set(type, new Set());
    withSubject.get(type)!.add(s);
  }
  const type = COMPARTMENT_TYPES.find((t) => withSubject.has(t));
  if (type !== undefined) {
    const subjects = [...withSubject.get(type)!].sort();
    kinds.push({
      id: 'search-compartment',
      request: `GET ${type}?subject=Patient/[id]&_count=20`,
      requests: subjects.map((s) => ({ method: 'GET', rel: `${type}?subject=${encodeURIComponent(s)}&_count=20` })),
      write: false,
    });
  }
  const families = [...new Set(patients.map(familyOf).filter((f): f is string => f !== undefined))].sort();
  if (families.length > 0) {
    kinds.push({ id: 'search-name', request: 'GET Patient?name=[family]', requests: families.map((f) => ({ method: 'GET', rel: `Patient?name=${encodeURIComponent(f)}` })), write: false });
  }
  kinds.push({ id: 'write', request: 'PUT Patient/[id] (update, a new address line each time)', requests: patients.map((p) => ({ method: 'PUT', rel: `Patient/${String(p.id)}`, body: writeBody(p) })), write: true });
  return kinds;
}

/**
 * Checks, before measuring, that every request kind answers 200 on both sides with the same
 * number of matches, so the throughput figures are about equal work.
 * @throws Error naming the kind and side when they do not.
 */
async function probe(kind: Kind, tidegate: string, direct: string): Promise<void> {
  if (kind.write) return;
  const r = kind.requests[0]!;
  const counts: number[] = [];
  for (const base of [direct, tidegate]) {
    const res = await fetch(`${base}/${r.rel}`, { headers: { accept: FHIR_JSON } });
    const body = (await res.json()) as { resourceType?: string; entry?: unknown[] };
    if (res.status !== 200) throw new Error(`http bench: ${kind.id} answered ${res.status} at ${base === direct ? 'the hospital server' : 'tidegate'}`);
    counts.push(body.resourceType === 'Bundle' ? (body.entry?.length ?? 0) : 1);
  }
  if (counts[0] !== counts[1] || counts[0] === 0) throw new Error(`http bench: ${kind.id} found ${counts[1]} entries through tidegate and ${counts[0]} directly`);
}

// ---------------------------------------------------------------------------------------------
// The section.

/** Derives the sizes of a run from the context's budget. */
export function optionsFor(ctx: Pick<BenchContext, 'budgetMs' | 'quick'>): HttpBenchOptions {
  if (ctx.quick) {
    return { connections: 4, durationS: 0.5, rounds: 1, warmupS: 0.25, peers: 1, signingRate: 20, maxResources: 60, loadBudgetMs: Math.min(30_000, ctx.budgetMs * 0.3) };
  }
  // Runs: 4 kinds × 2 targets × rounds + signing 2 × rounds + warm-ups; about 60 % of the budget
  // after loading (≤ 35 % of it) goes to load, the rest to set-up, drains and stopping.
  const rounds = 3;
  const runs = 4 * 2 * rounds + 2 * rounds;
  const measureMs = ctx.budgetMs * 0.4;
  const durationS = Math.min(5, Math.max(1, Math.floor(measureMs / runs / 100) / 10));
  return { connections: 10, durationS, rounds, warmupS: 1, peers: 2, loadBudgetMs: ctx.budgetMs * 0.3 };
}

/**
 * Runs the HTTP bench: loads the data, measures every request kind through tidegate and directly
 * in alternating rounds, then the signing comparison, and stops everything it started.
 * @param ctx - data directory, Redis URL, budget, quick mode, logger.
 * @param opts - sizes (default {@link optionsFor}).
 * @returns The figures; see {@link HttpBenchFigures}.
 * @throws Error when Redis is unreachable, the data loads nothing, or a request kind answers
 *   differently through tidegate and directly (see `probe`).
 */
export async function runHttpBench(ctx: BenchContext, opts: HttpBenchOptions = optionsFor(ctx)): Promise<HttpBenchFigures> {
  const info = (s: string): void => void process.stderr.write(`  http: ${s}\n`);
  const load0 = loadavg()[0] ?? 0;
  let source: string;
  let resources: FhirJsonObject[];
  if (ctx.dataPresent) {
    source = ctx.dataDir;
    resources = (await importPlan(ctx.dataDir)).resources;
  } else {
    source = 'generated fixture (Synthea sample absent)';
    resources = generatedFixture(ctx.quick ? 3 : 20, ctx.quick ? 5 : 40);
  }
  if (opts.maxResources !== undefined && resources.length > opts.maxResources) {
    // Keep every Patient and fill up with the rest in import order (searches need their compartments).
    const patients = resources.filter((r) => r.resourceType === 'Patient').slice(0, opts.maxResources);
    const ids = new Set(patients.map((p) => `Patient/${String(p.id)}`));
    const rest = resources.filter((r) => r.resourceType !== 'Patient' && (subjectOf(r) === undefined || ids.has(subjectOf(r)!)));
    const kept = new Set([...patients, ...rest.filter((r) => subjectOf(r) !== undefined).slice(0, Math.max(0, opts.maxResources - patients.length))]);
    resources = resources.filter((r) => kept.has(r));
  }
  const gen = new LoadGenerator();
  const started: BenchNode[] = [];
  let proxy: { url: string; close(): Promise<void> } | undefined;
  try {
    const main = await startBenchNode('bench-http', 0, ctx.redisUrl, ctx.log);
    started.push(main);
    info(`loading ${resources.length} resources through ${main.name}…`);
    const t0 = performance.now();
    // the load budget starts when loading starts (not when the section started: reading the sample
    // and starting the nodes would eat it)
    const loaded = await loadThrough(main.gateway, resources, performance.now() + opts.loadBudgetMs);
    await settle(main);
    const loadSeconds = round((performance.now() - t0) / 1000, 1);
    const patients = loaded.accepted.filter((r) => r.resourceType === 'Patient' && typeof r.id === 'string').slice(0, 50);
    if (patients.length === 0) throw new Error('http bench: no Patient was loaded');
    const byType: Record<string, number> = {};
    for (const r of loaded.accepted) byType[String(r.resourceType)] = (byType[String(r.resourceType)] ?? 0) + 1;
    info(`${loaded.accepted.length} loaded (${loaded.rejected} rejected${loaded.truncated ? ', time box reached' : ''}) in ${loadSeconds} s`);

    const kinds = kindsFor(loaded.accepted, patients);
    for (const k of kinds) await probe(k, main.gateway, main.fhirServer);
    proxy = await startBareProxy(main.fhirServer);
    const bare = proxy.url;
    type Side = 'direct' | 'tidegate' | 'proxy';
    const baseOf = (side: Side): string => (side === 'tidegate' ? main.gateway : side === 'proxy' ? bare : main.fhirServer);
    const sidesOf = (k: Kind): Side[] => (k.write ? ['direct', 'tidegate'] : ['direct', 'proxy', 'tidegate']);
    const load = { connections: opts.connections, durationS: opts.durationS };
    for (const k of kinds) {
      for (const side of sidesOf(k)) {
        await measure(gen, baseOf(side), k, { ...load, durationS: opts.warmupS });
        if (k.write) await settle(main);
        await responsive(baseOf(side));
      }
    }
    const comparisons: ComparisonFigures[] = [];
    const runs = new Map<string, Record<Side, LoadRunFigures[]> & { drains: number[] }>(kinds.map((k) => [k.id, { tidegate: [], direct: [], proxy: [], drains: [] }]));
    for (let i = 0; i < opts.rounds; i++) {
      for (const k of kinds) {
        const order = i % 2 === 0 ? sidesOf(k) : sidesOf(k).reverse();
        for (const side of order) {
          const r = await measure(gen, baseOf(side), k, load);
          runs.get(k.id)![side].push(r);
          if (k.write && side === 'tidegate') runs.get(k.id)!.drains.push(await settle(main));
          await responsive(baseOf(side));
        }
        const last = runs.get(k.id)!;
        const px = last.proxy.at(-1);
        info(`round ${i + 1}/${opts.rounds} ${k.id}: direct ${last.direct.at(-1)!.requestsPerSecond}/s, ${px ? `bare proxy ${px.requestsPerSecond}/s, ` : ''}tidegate ${last.tidegate.at(-1)!.requestsPerSecond}/s`);
      }
    }
    for (const k of kinds) {
      const r = runs.get(k.id)!;
      const tidegate = summarizeRuns(r.tidegate);
      const direct = summarizeRuns(r.direct);
      const roundRatios = r.tidegate.map((t, i) => ratio(t.requestsPerSecond, r.direct[i]!.requestsPerSecond));
      const proxyRatios = r.proxy.map((t, i) => ratio(t.requestsPerSecond, r.direct[i]!.requestsPerSecond));
      comparisons.push({
        id: k.id,
        request: k.request,
        distinct: k.requests.length,
        tidegate,
        direct,
        throughputRatio: roundRatios.some((x) => x === null) ? null : round(median(roundRatios as number[]), 2),
        roundRatios,
        p50Ratio: ratio(tidegate.p50Ms, direct.p50Ms),
        ...(k.write ? { drainMs: round(median(r.drains), 1) } : {}),
        ...(r.proxy.length > 0
          ? { bareProxy: summarizeRuns(r.proxy), bareProxyRatio: proxyRatios.some((x) => x === null) ? null : round(median(proxyRatios as number[]), 2) }
          : {}),
      });
    }
    const gated = comparisons.filter((c) => c.id !== 'write');
    const targetMet = gated.length === 3 && gated.every((c) => c.throughputRatio !== null && c.throughputRatio >= HTTP_RATIO_TARGET);
    await proxy.close();
    proxy = undefined;
    await stopBenchNode(main);
    started.splice(started.indexOf(main), 1);

    // Signing: the same node configuration with 0 peers and with `peers` peers, same Patients, same offered rate.
    info(`signing: nodes with 0 and ${opts.peers} peers…`);
    const noPeers = await startBenchNode('bench-sign-0', 0, ctx.redisUrl, ctx.log);
    started.push(noPeers);
    const withPeers = await startBenchNode(`bench-sign-${opts.peers}`, opts.peers, ctx.redisUrl, ctx.log);
    started.push(withPeers);
    for (const n of [noPeers, withPeers]) {
      const l = await loadThrough(n.gateway, patients, Number.POSITIVE_INFINITY);
      if (l.accepted.length !== patients.length) throw new Error(`http bench: ${n.name} refused ${l.rejected} Patients`);
      await settle(n);
    }
    const writeKind = kinds.find((k) => k.write)!;
    const tideWrite = comparisons.find((c) => c.id === 'write')!.tidegate.requestsPerSecond;
    const rate = opts.signingRate ?? Math.max(10, Math.min(50, Math.floor(tideWrite / 2)));
    const signingLoad = { connections: Math.min(4, opts.connections), durationS: opts.durationS, overallRate: rate };
    for (const n of [noPeers, withPeers]) {
      await measure(gen, n.gateway, writeKind, { ...signingLoad, durationS: opts.warmupS });
      await settle(n);
    }
    const sRuns = { no: [] as LoadRunFigures[], with: [] as LoadRunFigures[], envelopes: [] as number[], updates: [] as number[], drains: [] as number[] };
    for (let i = 0; i < opts.rounds; i++) {
      const order = i % 2 === 0 ? [noPeers, withPeers] : [withPeers, noPeers];
      for (const n of order) {
        const before = n.node.stats().tide;
        const r = await measure(gen, n.gateway, writeKind, signingLoad);
        const drain = await settle(n);
        const after = n.node.stats().tide;
        if (n === noPeers) sRuns.no.push(r);
        else {
          sRuns.with.push(r);
          sRuns.envelopes.push(after.messagesSent - before.messagesSent);
          sRuns.updates.push(after.updatesSent - before.updatesSent);
          sRuns.drains.push(drain);
        }
      }
      info(`signing round ${i + 1}/${opts.rounds}: p50 ${sRuns.no.at(-1)!.p50Ms} ms (0 peers) vs ${sRuns.with.at(-1)!.p50Ms} ms (${opts.peers} peers)`);
    }
    const noFig = summarizeRuns(sRuns.no);
    const withFig = summarizeRuns(sRuns.with);
    const envelopes = median(sRuns.envelopes);
    const signing: SigningFigures = {
      peers: opts.peers,
      rate,
      connections: signingLoad.connections,
      noPeers: noFig,
      withPeers: withFig,
      p50AddedMs: round(withFig.p50Ms - noFig.p50Ms, 3),
      p99AddedMs: round(withFig.p99Ms - noFig.p99Ms, 3),
      envelopesPerRound: envelopes,
      updatesPerEnvelope: envelopes === 0 ? null : round(median(sRuns.updates) / envelopes, 1),
      drainMs: round(median(sRuns.drains), 1),
    };
    const { loadBudgetMs: _budget, ...shownOptions } = opts;
    return {
      data: { source, loaded: loaded.accepted.length, rejected: loaded.rejected, truncated: loaded.truncated, patients: patients.length, loadSeconds, byType },
      options: { ...shownOptions, signingRate: rate },
      comparisons,
      targetMet,
      signing,
      eventLoopTargetMet: Math.max(noFig.eventLoop.maxMs, withFig.eventLoop.maxMs) <= EVENT_LOOP_TARGET_MS,
      loadAvg1m: { start: load0, end: loadavg()[0] ?? 0 },
      cpus: availableParallelism(),
    };
  } finally {
    await proxy?.close();
    await gen.close();
    for (const n of started.reverse()) await stopBenchNode(n).catch(() => {});
  }
}

const LABELS: Record<string, string> = { read: 'read', 'search-compartment': 'search (compartment)', 'search-name': 'search (name)', write: 'write' };

function pct(x: number | null): string {
  return x === null ? 'n/a' : `${Math.round(x * 100)} %`;
}

/**
 * Renders the figures as the section's Markdown body and terminal lines.
 * @param f - what {@link runHttpBench} returned.
 */
export function renderHttp(f: HttpBenchFigures): { markdown: string; text: string } {
  const md: string[] = [];
  const text: string[] = [];
  const cpus = f.cpus;
  const truncated = f.data.truncated ? ' (time box reached: a prefix of the import order)' : '';
  md.push(
    `Data: ${f.data.loaded} resources from \`${f.data.source}\`${truncated}, loaded through the node's FHIR API in ${f.data.loadSeconds} s (${Object.entries(f.data.byType).map(([t, n]) => `${t} ${n}`).join(', ')}). ` +
      `autocannon on its own worker thread, ${f.options.connections} connections, ${f.options.durationS} s per run, ${f.options.rounds} rounds alternating direct/tidegate (order swapped every round) after a discarded ${f.options.warmupS} s warm-up of each; figures are medians over rounds, latencies exact per request. ` +
      `Layout as in a deployment, where the hospital FHIR server is a separate system: the Medplum stand-in hospital server runs in a child process of its own (\`src/hospital/medplum-main.ts\`), the tidegate node (0 peers) and the bare proxy on the bench process's main thread, autocannon on a worker thread. \`direct\` is autocannon → hospital process; \`tidegate\` is autocannon → node → the same hospital process. The machine has ${cpus} core${cpus === 1 ? '' : 's'}, shared by the three.`,
    '',
    '| request | direct req/s | tidegate req/s | tidegate / direct | direct p50 / p99 | tidegate p50 / p99 | node busy / request | bare proxy / direct |',
    '|---|---:|---:|---:|---:|---:|---:|---:|',
  );
  for (const c of f.comparisons) {
    md.push(
      `| ${LABELS[c.id] ?? c.id}: \`${c.request}\` (${c.distinct} distinct) | ${c.direct.requestsPerSecond} | ${c.tidegate.requestsPerSecond} | **${pct(c.throughputRatio)}** (rounds ${c.roundRatios.map(pct).join(', ')}) | ${fmtMs(c.direct.p50Ms)} / ${fmtMs(c.direct.p99Ms)} | ${fmtMs(c.tidegate.p50Ms)} / ${fmtMs(c.tidegate.p99Ms)} | ${c.tidegate.mainThreadUsPerOk} µs | ${c.bareProxy ? `${pct(c.bareProxyRatio ?? null)} (${c.bareProxy.requestsPerSecond}/s)` : '—'} |`,
    );
    text.push(`http ${(LABELS[c.id] ?? c.id).padEnd(22)} direct ${String(c.direct.requestsPerSecond).padStart(8)}/s  tidegate ${String(c.tidegate.requestsPerSecond).padStart(8)}/s  ratio ${pct(c.throughputRatio).padStart(6)}  p50 ${fmtMs(c.direct.p50Ms)} → ${fmtMs(c.tidegate.p50Ms)}`);
  }
  const failures = f.comparisons.filter((c) => c.tidegate.non2xx + c.direct.non2xx + c.tidegate.errors + c.direct.errors + c.tidegate.timeouts + c.direct.timeouts > 0);
  md.push('');
  for (const c of failures) {
    md.push(`- ${c.id}: non-2xx ${c.direct.non2xx} direct / ${c.tidegate.non2xx} tidegate, errors ${c.direct.errors} / ${c.tidegate.errors}, timeouts ${c.direct.timeouts} / ${c.tidegate.timeouts} (not counted in req/s).`);
  }
  const w = f.comparisons.find((c) => c.id === 'write');
  md.push(
    `**Target** (issue 6): reads and searches through tidegate at ≥ ${HTTP_RATIO_TARGET * 100} % of the direct throughput — **${f.targetMet ? 'met' : 'not met'}**.`,
    '',
    '`node busy / request` is the time the main thread, where the node runs, was busy per answered request during the tidegate runs (median over rounds; `performance.eventLoopUtilization`): the node\'s own cost in CPU and system calls, not counting the time it waited for the hospital or the client (time the machine took the core away mid-request still counts, so compare it between rounds of one run). ' +
      '`bare proxy` is a do-nothing reverse proxy (a `node:http` server forwarding each GET with `fetch`, body passed through) in front of the same server, measured in the same rounds: what any Node proxy in front of the hospital pays for one more HTTP server and one HTTP client before doing any work. Where the stand-in answers in well under a millisecond, that alone is most of the gap to the target. ' +
      'Reads are answered from the node\'s own replica (the merged current version), without a round trip to the hospital server. Searches are forwarded to the hospital server and its searchset is rewritten into the node\'s view (ids, references, paging links, and each entry the node holds replaced by its current version). ' +
      `The compartment search uses \`subject=Patient/[id]\` rather than \`patient=\`: the stand-in's \`MemoryRepository\` evaluates \`patient\`'s FHIRPath \`…subject.where(resolve() is Patient)\` on every resource of the type, about 0.8 ms each (≈ 0.9 s per search over 1215 Encounters), which would measure the stand-in and not tidegate; a real Medplum server answers both from the same index.` +
      (w ? ` Writes through tidegate are accepted once merged; the node's hospital outbox then writes the merged version to the same Medplum server (it needed a median ${fmtMs(w.drainMs ?? 0)} after each run to catch up, not timed).` : ''),
  );
  const s = f.signing;
  if (s) {
    md.push(
      '',
      `**Latency signing adds to an HTTP write** (issue 4): the same node configuration with 0 peers and with ${s.peers} peer${s.peers === 1 ? '' : 's'} (each its own node and Medplum server, loaded with the same ${f.data.patients} Patients). ` +
        `With peers every write is batched (${BATCH_DELAY_MS} ms), sealed and ML-DSA-65-signed once per peer on Tide's crypto worker pool and added to the peer's inbox queue on Redis; no peer node consumes it, so only the sender's work is measured. ` +
        `Both take the same offered load, ${s.rate} writes/s over ${s.connections} connections (below saturation, so latency is service time, not queueing), ${f.options.rounds} alternating rounds of ${f.options.durationS} s. ` +
        `Event-loop delay of the main thread from \`perf_hooks.monitorEventLoopDelay\` (resolution ${EVENT_LOOP_RESOLUTION_MS} ms) during the load; the main thread also runs the Redis clients (each Medplum stand-in is its own process).`,
      '',
      '| node | writes/s | p50 | p99 | event-loop delay p99 (median) | event-loop delay max (worst round) |',
      '|---|---:|---:|---:|---:|---:|',
      `| 0 peers | ${s.noPeers.requestsPerSecond} | ${fmtMs(s.noPeers.p50Ms)} | ${fmtMs(s.noPeers.p99Ms)} | ${fmtMs(s.noPeers.eventLoop.p99Ms)} | ${fmtMs(s.noPeers.eventLoop.maxMs)} |`,
      `| ${s.peers} peer${s.peers === 1 ? '' : 's'} (sealed + signed) | ${s.withPeers.requestsPerSecond} | ${fmtMs(s.withPeers.p50Ms)} | ${fmtMs(s.withPeers.p99Ms)} | ${fmtMs(s.withPeers.eventLoop.p99Ms)} | ${fmtMs(s.withPeers.eventLoop.maxMs)} |`,
      '',
      `Signing adds **${signed(s.p50AddedMs)}** at p50 and **${signed(s.p99AddedMs)}** at p99 to a write; ${s.envelopesPerRound} envelopes per round (${s.updatesPerEnvelope ?? 'n/a'} updates each), and the batcher needed a median ${fmtMs(s.drainMs)} after a round to send what it still held. ` +
        `Event loop blocked for more than ${EVENT_LOOP_TARGET_MS} ms during the write load: **${f.eventLoopTargetMet ? 'never (target met)' : 'yes (target not met)'}**.`,
    );
    const late = (t: TargetFigures): string =>
      t.eventLoop.stalls === undefined ? 'n/a' : `${t.eventLoop.stalls} late turns, ${t.eventLoop.stallsOwnCpu} with ≥ ${EVENT_LOOP_TARGET_MS} ms of own CPU, at most ${fmtMs(t.eventLoop.maxStallCpuMs ?? 0)} of own CPU in one`;
    if (s.noPeers.eventLoop.stalls !== undefined) {
      md.push(
        '',
        `Own work or waiting for a core: for each event-loop turn more than ${EVENT_LOOP_TARGET_MS} ms late (a 1 ms timer), the CPU time the main thread itself used meanwhile (\`process.threadCpuUsage\`); a late turn with less CPU than that waited to be scheduled (crypto worker, load generator, hospital processes, GC helper threads or other processes held the cores). ` +
          `0 peers: ${late(s.noPeers)}; ${s.peers} peer${s.peers === 1 ? '' : 's'}: ${late(s.withPeers)}. Tide's crypto worker threads run at nice ${DEFAULT_WORKER_NICE} (src/envelope/pool.ts), so on a busy core the event loop gets most of the CPU.`,
      );
      text.push(`http late turns  0 peers: ${late(s.noPeers)}; ${s.peers} peers: ${late(s.withPeers)}`);
    }
    text.push(
      `http write latency  0 peers p50 ${fmtMs(s.noPeers.p50Ms)} p99 ${fmtMs(s.noPeers.p99Ms)}  ${s.peers} peers p50 ${fmtMs(s.withPeers.p50Ms)} p99 ${fmtMs(s.withPeers.p99Ms)}  (signing adds ${signed(s.p50AddedMs)} / ${signed(s.p99AddedMs)})`,
      `http event-loop delay max ${fmtMs(Math.max(s.noPeers.eventLoop.maxMs, s.withPeers.eventLoop.maxMs))} (target ≤ ${EVENT_LOOP_TARGET_MS} ms: ${f.eventLoopTargetMet ? 'met' : 'not met'})`,
    );
  }
  md.push('', `1-minute load average ${f.loadAvg1m.start.toFixed(2)} at the start of the section, ${f.loadAvg1m.end.toFixed(2)} at the end.`);
  text.push(`http target reads/searches ≥ ${HTTP_RATIO_TARGET * 100} %: ${f.targetMet ? 'met' : 'not met'}`);
  return { markdown: md.join('\n'), text: text.join('\n') };
}

function signed(ms: number): string {
  return `${ms < 0 ? '−' : '+'}${fmtMs(Math.abs(ms))}`;
}

/**
 * The `http` bench section (issue 6 throughput/latency tidegate vs direct; issue 4 signing latency
 * and event-loop delay). See the module doc for the method.
 */
export const httpSection: BenchSection = {
  id: 'http',
  weight: 0.35,
  async run(ctx: BenchContext): Promise<BenchSectionResult> {
    const figures = await runHttpBench(ctx);
    const { markdown, text } = renderHttp(figures);
    const skipped: Record<string, string> = {};
    const sides: Array<[string, TargetFigures]> = figures.comparisons.flatMap((c): Array<[string, TargetFigures]> => [[`${c.id} (tidegate)`, c.tidegate], [`${c.id} (direct)`, c.direct]]);
    if (figures.signing) sides.push(['write, 0 peers', figures.signing.noPeers], [`write, ${figures.signing.peers} peers`, figures.signing.withPeers]);
    for (const [name, t] of sides) {
      if (t.ok === 0) skipped[`http ${name}`] = `no 2xx answer (non-2xx ${t.non2xx}, errors ${t.errors}, timeouts ${t.timeouts})`;
    }
    return {
      id: 'http',
      title: 'FHIR REST overhead: tidegate vs direct Medplum (autocannon), and the latency signing adds to a write',
      markdown,
      text,
      figures: figures as unknown as Record<string, unknown>,
      skipped,
    };
  },
};
