/**
 * Runs envelope sealing and opening on worker threads.
 *
 * ML-DSA-65 signing and X-Wing encapsulation cost tens of milliseconds of CPU per envelope in pure
 * JavaScript; on the main thread that stalls every HTTP request and can cost BullMQ workers their
 * locks (BullMQ issues 2857, 3078). The pool moves that work to `size` worker threads and keeps
 * the same errors: an {@link EnvelopeError} in the worker is an {@link EnvelopeError} here, with the
 * same `code`.
 */
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { EnvelopeError } from './errors.ts';
import type { EnvelopeErrorCode } from './errors.ts';
import type { NodePublicKeys, NodeSecretKeys } from './keys.ts';
import type { OpenOptions, OpenResult, SealInput } from './envelope.ts';

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

interface Slot {
  worker: Worker;
  busy: number;
  /** `performance.now()` at spawn, ms. */
  spawnedAt: number;
}

/** Options of {@link EnvelopeCryptoPool}. */
export interface EnvelopeCryptoPoolOptions {
  /** Worker module (default `./worker.ts`); for tests. */
  workerUrl?: URL;
  /**
   * Nice value of each worker thread (Linux only: `setpriority(2)` on the thread itself), 0..19;
   * default {@link DEFAULT_WORKER_NICE}. 0 leaves the threads at the process's priority.
   */
  workerNice?: number;
}

/**
 * Default nice value of the crypto worker threads. On a host with fewer free cores than runnable
 * threads, a worker thread at the event loop's own priority takes whole scheduler slices from it
 * while it signs (ML-DSA-65: tens of ms of CPU per envelope), and the event loop then stalls
 * without doing any work of its own. At nice 5 the Linux scheduler (CFS/EEVDF weights 1024 vs 335)
 * gives the event loop about three quarters of a contended core; an idle core still runs the
 * workers at full speed. Lowering a thread's priority needs no privilege.
 */
export const DEFAULT_WORKER_NICE = 5;

/**
 * Bootstrap of a pool worker (CommonJS, run with `eval`): lowers this thread's priority, then loads
 * the worker module. On Linux `setpriority(PRIO_PROCESS, 0, …)` applies to the calling thread only
 * (man 2 setpriority, NOTES; pthreads(7)); elsewhere it would renice the whole process, so it is
 * skipped. A module that fails to load is rethrown as an uncaught error: the pool sees 'error'.
 */
const WORKER_BOOT = `
const { workerData } = require('node:worker_threads');
if (workerData.nice > 0 && process.platform === 'linux') {
  try { require('node:os').setPriority(0, workerData.nice); } catch {}
}
import(workerData.url).catch((err) => { setImmediate(() => { throw err; }); });
`;

/** A worker that dies within this many ms of its spawn counts as failing to start. */
const EARLY_EXIT_MS = 2_000;
/** Consecutive early failures after which the pool stops respawning and rejects every call. */
const MAX_EARLY_FAILURES = 5;

/**
 * Flags of this process that must not reach worker threads: a worker is started from a module URL,
 * and `--input-type` / `--eval` / `--print` (e.g. `node --input-type=module -e …`) make it exit at once
 * with ERR_INPUT_TYPE_NOT_ALLOWED.
 */
function workerExecArgv(argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a.startsWith('--input-type')) {
      if (a === '--input-type') i++;
      continue;
    }
    if (a === '-e' || a === '--eval' || a === '-p' || a === '--print') {
      i++;
      continue;
    }
    if (a.startsWith('--eval=') || a.startsWith('--print=')) continue;
    out.push(a);
  }
  return out;
}

/** See module doc. */
export class EnvelopeCryptoPool {
  private readonly slots: Slot[] = [];
  private readonly pending = new Map<number, Pending & { slot: Slot }>();
  private nextId = 1;
  private closed = false;
  private readonly workerUrl: URL;
  private readonly workerNice: number;
  private earlyFailures = 0;
  /** Set once workers failed to start {@link MAX_EARLY_FAILURES} times in a row; every call rejects with it. */
  private broken: Error | undefined;

  /**
   * @param size - worker threads; default: available cores minus one, at least 1, at most 4.
   * @param opts - see {@link EnvelopeCryptoPoolOptions}.
   * @throws RangeError when `opts.workerNice` is not an integer 0..19.
   */
  constructor(size = Math.max(1, Math.min(4, availableParallelism() - 1)), opts: EnvelopeCryptoPoolOptions = {}) {
    this.workerUrl = opts.workerUrl ?? new URL('./worker.ts', import.meta.url);
    const nice = opts.workerNice ?? DEFAULT_WORKER_NICE;
    if (!Number.isInteger(nice) || nice < 0 || nice > 19) throw new RangeError(`EnvelopeCryptoPool: workerNice must be an integer 0..19, got ${nice}`);
    this.workerNice = nice;
    for (let i = 0; i < size; i++) this.slots.push(this.spawn());
  }

  private spawn(): Slot {
    // Inherit this process's flags unless some must go (passing them all explicitly would fail on
    // flags workers refuse, which the test runner's children carry).
    const execArgv = workerExecArgv(process.execArgv);
    const worker = new Worker(WORKER_BOOT, {
      eval: true,
      workerData: { url: this.workerUrl.href, nice: this.workerNice },
      ...(execArgv.length === process.execArgv.length ? {} : { execArgv }),
    });
    const slot: Slot = { worker, busy: 0, spawnedAt: performance.now() };
    worker.on('message', (msg: { id: number; ok: boolean; value?: unknown; error?: { name: string; code?: string; message: string } }) => {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      p.slot.busy--;
      if (this.pending.size === 0) for (const s of this.slots) s.worker.unref();
      if (msg.ok) p.resolve(msg.value);
      else if (msg.error?.name === 'EnvelopeError') p.reject(new EnvelopeError(msg.error.code as EnvelopeErrorCode, msg.error.message));
      else {
        const e = new Error(msg.error?.message ?? 'envelope worker error') as Error & { code?: string };
        if (msg.error?.name) e.name = msg.error.name;
        if (msg.error?.code) e.code = msg.error.code;
        p.reject(e);
      }
    });
    worker.on('error', (err) => this.failSlot(slot, err));
    worker.on('exit', (code) => {
      if (!this.closed) this.failSlot(slot, new Error(`envelope worker exited with code ${code}`));
    });
    // After the listeners: adding a 'message' listener refs the worker's port again.
    worker.unref();
    return slot;
  }

  /**
   * Rejects a dead worker's calls and replaces it. A worker that died within {@link EARLY_EXIT_MS}
   * of its spawn is respawned after an exponential delay (100 ms doubling, at most 5 s); after
   * {@link MAX_EARLY_FAILURES} such failures in a row the pool is broken and every call rejects.
   */
  private failSlot(slot: Slot, err: Error): void {
    if ((slot as Slot & { failed?: boolean }).failed) return; // 'error' is followed by 'exit'
    (slot as Slot & { failed?: boolean }).failed = true;
    for (const [id, p] of this.pending) {
      if (p.slot === slot) {
        this.pending.delete(id);
        p.reject(err);
      }
    }
    const i = this.slots.indexOf(slot);
    if (i < 0 || this.closed) return;
    const early = performance.now() - slot.spawnedAt < EARLY_EXIT_MS;
    this.earlyFailures = early ? this.earlyFailures + 1 : 0;
    if (this.earlyFailures >= MAX_EARLY_FAILURES) {
      this.broken = new Error(`EnvelopeCryptoPool: worker threads cannot start (${this.earlyFailures} failed in a row): ${err.message}`);
      return;
    }
    if (!early) {
      this.slots[i] = this.spawn();
      return;
    }
    const delay = Math.min(5_000, 100 * 2 ** (this.earlyFailures - 1));
    setTimeout(() => {
      if (!this.closed && this.slots[i] === slot) this.slots[i] = this.spawn();
    }, delay).unref();
  }

  private call<T>(op: 'seal' | 'open', args: unknown[]): Promise<T> {
    if (this.closed) return Promise.reject(new Error('EnvelopeCryptoPool is closed'));
    if (this.broken) return Promise.reject(this.broken);
    const live = this.slots.filter((sl) => !(sl as Slot & { failed?: boolean }).failed);
    if (live.length === 0) return Promise.reject(new Error('EnvelopeCryptoPool: no worker thread available (restarting after a failure); retry later'));
    const slot = live.reduce((a, b) => (b.busy < a.busy ? b : a));
    const id = this.nextId++;
    slot.busy++;
    slot.worker.ref();
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, slot });
      slot.worker.postMessage({ id, op, args });
    });
  }

  /**
   * {@link seal} on a worker thread (tidegate-env/2). Same inputs, output and errors (TypeError for bad input).
   * @param recipient - One recipient's public keys, or an array of 1..64.
   * @returns The serialized envelope (compact JSON, ASCII).
   */
  seal(input: SealInput, sender: NodeSecretKeys, recipient: NodePublicKeys | readonly NodePublicKeys[]): Promise<string> {
    return this.call<string>('seal', [input, sender, recipient]);
  }

  /**
   * {@link open} on a worker thread (tidegate-env/1 or /2). Same inputs and output; rejects with
   * {@link EnvelopeError} carrying the same `code` as the synchronous call. `peers` is copied at the
   * call, so keys reloaded by a `PeerKeyring` apply from the next call on.
   */
  open(serialized: string, self: NodeSecretKeys, peers: ReadonlyMap<string, NodePublicKeys>, options?: OpenOptions): Promise<OpenResult> {
    return this.call<OpenResult>('open', options === undefined ? [serialized, self, [...peers]] : [serialized, self, [...peers], options]);
  }

  /** Terminates the workers; pending calls reject. */
  async close(): Promise<void> {
    this.closed = true;
    for (const [, p] of this.pending) p.reject(new Error('EnvelopeCryptoPool closed'));
    this.pending.clear();
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}

let shared: EnvelopeCryptoPool | undefined;

/** The process-wide pool, created on first use. Its threads never keep the process alive when idle. */
export function sharedCryptoPool(): EnvelopeCryptoPool {
  shared ??= new EnvelopeCryptoPool();
  return shared;
}
