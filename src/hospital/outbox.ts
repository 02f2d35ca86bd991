/**
 * Durable outbox of a node's writes to its hospital FHIR server: a BullMQ queue
 * `outbox-<nodeId>` on the node's own Redis (https://docs.bullmq.io/).
 *
 * Every new version of a resource (`Replica` `onVersion`) becomes one job. Jobs survive a restart
 * of the node or of Redis (with Redis persistence): what was enqueued is written once the hospital
 * answers, or superseded by a newer version of the same resource. The public surface is that of
 * the in-memory {@link HospitalSync} (`enqueue`, `idle`, `backlog`, `failures`, `writes`, `stop`),
 * plus `start()`.
 *
 * **Per-resource order, latest wins.** A resource's versions carry growing version ids (the sum
 * of the Yjs state-vector clocks, see docs/merge.md), so a job never writes a version older than
 * one already written: the last written version id of each resource is kept in Redis (hash
 * `<prefix>:outbox-<nodeId>:tidegate-written`, one field per resource) and checked, under a
 * per-resource lock, before each write. A job whose resource already has a newer job queued is
 * skipped (`superseded`), so a burst or an outage costs one write per resource, not one per version.
 *
 * **Retries.** A write the hospital could not take (`ERR_HOSPITAL_UNREACHABLE`: connection
 * refused, timeout, 408/429/502/503/504) is retried by BullMQ with exponential backoff and equal
 * jitter (delay = d/2 + random·d/2 with d = min(`maxBackoffMs`, `backoffMs`·2^(attempt−1))),
 * without a limit by default, so the outbox resumes when the hospital returns. A refusal
 * (`ERR_HOSPITAL_REJECTED`, e.g. 400/422 validation) fails the same way every time: it is not
 * retried and is listed in {@link HospitalOutbox.failures} until a later version of that resource
 * is written.
 *
 * **No PHI in Redis.** Job payloads (resource key, version id and body) are encrypted with
 * AES-256-GCM under a key derived (HKDF-SHA-256) from the node's secret key material, bound to the
 * queue name; the written-versions hash is keyed by an HMAC-SHA-256 tag of the resource key. Error
 * texts stored by BullMQ carry error codes and HTTP statuses only.
 *
 * **Key rotation.** The keys derive from the node's *current* X-Wing secret, which `tidegate keys
 * rotate` replaces. The key file's `previous` secrets are given as `previousSecrets`: a job is
 * opened with whichever key sealed it, and {@link HospitalOutbox.start} re-encrypts every queued
 * job still under a previous key under the current one before the worker runs, so once a node has
 * restarted with the rotated key file, `tidegate keys retire` of the old key loses no queued write.
 * Written-version entries filed under a previous tag key are read (and moved to the current tag) on
 * first use, so a stale version is still refused after a rotation.
 *
 * **References to resources not written yet.** A hospital that assigns its own ids can only take
 * a reference to a resource it already holds (the id map must know the target). Unless the writer
 * says the hospital takes client ids (`assignsOwnIds === false`), a job whose resource refers to
 * a resource whose first version is queued but not yet written is put back (BullMQ delayed, not
 * counted as an attempt) up to 8 times, so targets are created first; reference cycles are
 * written after that.
 *
 * **Echoes.** With a {@link SyncLedger}, each write is recorded before it is sent and when it
 * succeeded, so the hospital `_history` poller recognizes it; and a version the ledger says the
 * hospital already holds is not written again (`inSync`).
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { DelayedError, Queue, UnrecoverableError, Worker } from 'bullmq';
import type { Job } from 'bullmq';
import { Redis } from 'ioredis';
import { parseFhirJson } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import type { VersionRecord } from '../store/store.ts';
import { contentHash, SyncLedger } from './ledger.ts';
import type { HospitalWriter } from './sync.ts';

/**
 * BullMQ queue name of a node's outbox (https://docs.bullmq.io/guide/queues); queue names must
 * not contain `:`, node ids cannot.
 * @param nodeId - the node's id.
 * @returns `outbox-<nodeId>`; Redis keys are `<prefix>:outbox-<nodeId>:…`.
 */
export function outboxQueueName(nodeId: string): string {
  return `outbox-${nodeId}`;
}

/** Minimal logger (pino-compatible). Never given resource content. */
export interface OutboxLogger {
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** Options of {@link HospitalOutbox}. Durations in ms. */
export interface HospitalOutboxOptions {
  /** The node's id (`[A-Za-z0-9][A-Za-z0-9._-]{0,63}`); names the queue `outbox-<nodeId>`. */
  nodeId: string;
  /** The node's own Redis, `redis://…` or `rediss://…`. */
  redisUrl: string;
  /** BullMQ key prefix (no `:`; may hold one Redis Cluster `{hash tag}`). Default `tidegate`. */
  prefix?: string;
  /**
   * Secret key material (≥ 32 bytes) from which the payload encryption key and the resource tag
   * key are derived: the node's current `NodeSecretKeys.kemSecretKey`. After a rotation, pass the
   * old one in `previousSecrets` (see module doc, "Key rotation"); a job sealed under a key given
   * in neither cannot be read and fails without retry.
   */
  secret: Uint8Array;
  /**
   * Earlier secrets whose keys may have encrypted jobs still in Redis: the key file's `previous`
   * X-Wing secrets (`NodeSecretKeys.additionalKemKeys`) after `tidegate keys rotate`. Jobs under
   * them are opened, and re-encrypted under `secret` at {@link HospitalOutbox.start}. Default none.
   */
  previousSecrets?: readonly Uint8Array[];
  /** Shared with the hospital poller; default a private one. */
  ledger?: SyncLedger;
  /** Concurrent hospital writes (different resources). Default 4. */
  concurrency?: number;
  /** Base retry delay, ms. Default 200. */
  backoffMs?: number;
  /** Largest retry delay, ms. Default 30000. */
  maxBackoffMs?: number;
  /** Tries per job; `0` (default) = retry until it succeeds or is refused. */
  maxAttempts?: number;
  /** Called once per job that failed for good (refused, or out of attempts). Must not log resource content. */
  onFailure?: (key: string, err: unknown) => void;
  /** Logger for Redis trouble; default none. */
  logger?: OutboxLogger;
  /** How long `stop()` keeps trying to hand pending versions to Redis, ms. Default 5000. */
  stopTimeoutMs?: number;
}

/** Counters of {@link HospitalOutbox.stats}. */
export interface HospitalOutboxStats {
  /** Versions written to the hospital. */
  written: number;
  /** Jobs skipped because a newer version of the resource was queued. */
  superseded: number;
  /** Jobs skipped because the same or a newer version was already written. */
  stale: number;
  /** Jobs skipped because the hospital already held that version (an edit made there). */
  inSync: number;
  /** Failed write attempts (each retry counts). */
  attemptsFailed: number;
  /** Versions queued by {@link HospitalOutbox.resend} (a resync), each written even when the hospital is thought to hold it. */
  resent: number;
}

interface OutboxItem {
  /** `Type/id`. */
  k: string;
  /** Node versionId. */
  v: string;
  /** Deletion. */
  d: boolean;
  /** Canonical JSON body, or null for a deletion. */
  b: string | null;
  /** Resend (resync): written even when this version is recorded as written or held by the hospital. */
  f?: true;
}

interface OutboxJobData {
  /** base64url of iv (12) | tag (16) | AES-256-GCM ciphertext of the JSON {@link OutboxItem}. */
  c: string;
  /** Times the job was put back to wait for a referenced resource's first write. */
  n?: number;
}

const JOB_NAME = 'write';
const BACKOFF_TYPE = 'tidegate-equal-jitter';
const UNLIMITED_ATTEMPTS = 2 ** 31 - 1;
const ADD_BATCH = 500;
/** How often a job waits for referenced resources before it is written anyway (reference cycles). */
const MAX_DEFERRALS = 8;
/** Relative literal reference `Type/id[/_history/v]` (https://hl7.org/fhir/R4/references.html#literal). */
const RELATIVE_REF = /^([A-Z][A-Za-z]{1,63}\/[A-Za-z0-9\-.]{1,64})(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/;

/** Every `Type/id` named by a relative `reference` anywhere in `value` (also in contained resources and Bundles). */
function referenceTargets(value: unknown, out: Set<string>): Set<string> {
  if (Array.isArray(value)) for (const v of value) referenceTargets(v, out);
  else if (typeof value === 'object' && value !== null) {
    for (const [k, v] of Object.entries(value)) {
      if (k === 'reference' && typeof v === 'string') {
        const m = RELATIVE_REF.exec(v);
        if (m !== null) out.add(m[1]!);
      } else referenceTargets(v, out);
    }
  }
  return out;
}

/** The sum part of a node versionId (`<sum>.<hash>`), or NaN. */
function clockSum(versionId: string): number {
  const dot = versionId.indexOf('.');
  const head = dot < 0 ? versionId : versionId.slice(0, dot);
  return /^\d+$/.test(head) ? Number(head) : Number.NaN;
}

/** Error code and HTTP status of a failure, never its content. */
function describe(err: unknown): string {
  const e = err as { code?: unknown; status?: unknown; name?: unknown };
  const code = typeof e?.code === 'string' ? e.code : typeof e?.name === 'string' ? e.name : 'Error';
  return typeof e?.status === 'number' ? `${code} (HTTP ${e.status})` : code;
}

function isRefusal(err: unknown): boolean {
  return (err as { code?: unknown })?.code === 'ERR_HOSPITAL_REJECTED';
}

/** `versionId` and `lastUpdated` of what `HospitalClient.upsert` resolved to, when present. */
function hospitalVersionOf(result: unknown): { versionId: string | undefined; lastUpdated: string | undefined } {
  const r = typeof result === 'object' && result !== null ? (result as { versionId?: unknown; lastUpdated?: unknown }) : {};
  return {
    versionId: typeof r.versionId === 'string' ? r.versionId : undefined,
    lastUpdated: typeof r.lastUpdated === 'string' ? r.lastUpdated : undefined,
  };
}

/**
 * The payload and tag keys of one secret: HKDF-SHA-256 (RFC 5869) with salt `tidegate-outbox/1`
 * and info `enc:<nodeId>` / `tag:<nodeId>`, 32 bytes each.
 */
function outboxKeys(secret: Uint8Array, nodeId: string): { enc: Buffer; tag: Buffer } {
  return {
    enc: Buffer.from(hkdfSync('sha256', secret, 'tidegate-outbox/1', `enc:${nodeId}`, 32)),
    tag: Buffer.from(hkdfSync('sha256', secret, 'tidegate-outbox/1', `tag:${nodeId}`, 32)),
  };
}

/** See module doc. */
export class HospitalOutbox {
  /** BullMQ queue name. */
  readonly queueName: string;
  /** Shared record of what the hospital holds (see {@link SyncLedger}). */
  readonly ledger: SyncLedger;
  readonly #writer: HospitalWriter;
  readonly #redisUrl: string;
  readonly #prefix: string;
  readonly #encKey: Buffer;
  readonly #tagKey: Buffer;
  /** Payload and tag keys of `previousSecrets`, in the order given. */
  readonly #oldKeys: ReadonlyArray<{ enc: Buffer; tag: Buffer }>;
  readonly #concurrency: number;
  readonly #backoffMs: number;
  readonly #maxBackoffMs: number;
  readonly #attempts: number;
  readonly #onFailure: ((key: string, err: unknown) => void) | undefined;
  readonly #log: OutboxLogger | undefined;
  readonly #stopTimeoutMs: number;

  #state: 'new' | 'running' | 'stopping' | 'stopped' = 'new';
  #client: Redis | undefined;
  #queue: Queue<OutboxJobData> | undefined;
  #worker: Worker<OutboxJobData> | undefined;
  /** Versions not yet handed to Redis, latest per key, in first-enqueue order. */
  readonly #pending = new Map<string, VersionRecord>();
  #flushTimer: NodeJS.Timeout | undefined;
  #flushing: Promise<void> | undefined;
  #addFailures = 0;
  /** Job ids in Redis not yet completed or failed for good. */
  readonly #outstanding = new Set<string>();
  /** Settled job ids whose add had not resolved yet. */
  readonly #settledEarly = new Set<string>();
  /** Job ids whose failure is final. */
  readonly #finalFailures = new Set<string>();
  /** Latest version id per key known to be durably queued. */
  readonly #latestQueued = new Map<string, string>();
  /** Last written version id per key (cache of the Redis hash). */
  readonly #writtenCache = new Map<string, string>();
  readonly #locks = new Map<string, Promise<void>>();
  readonly #failed = new Map<string, string>();
  /** Keys dropped by {@link drop} (crypto-shredded): never written again by this process. */
  readonly #dropped = new Set<string>();
  /** Keys in {@link #pending} queued by {@link resend}: their jobs carry the resend flag. */
  readonly #forced = new Set<string>();
  readonly #stats: HospitalOutboxStats = { written: 0, superseded: 0, stale: 0, inSync: 0, attemptsFailed: 0, resent: 0 };
  #waiters: Array<() => void> = [];

  /**
   * Validates the options; opens no connection (see {@link start}). Versions enqueued before
   * `start()` are kept in memory and queued once it runs.
   * @param writer - the hospital client (src/hospital/client.ts `HospitalClient`); `upsert` may
   *   resolve to `{ versionId }`, the hospital's version id of the stored resource.
   * @param opts - see {@link HospitalOutboxOptions}.
   * @throws TypeError for an invalid node id, prefix, secret (or previous secret) shorter than 32
   *   bytes, or out-of-range number.
   */
  constructor(writer: HospitalWriter, opts: HospitalOutboxOptions) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(opts.nodeId)) throw new TypeError('HospitalOutbox: invalid nodeId');
    const prefix = opts.prefix ?? 'tidegate';
    // As the node config's queuePrefix: optionally one Redis Cluster {hash tag} (docs/tide.md).
    if (!/^(?:[A-Za-z0-9_-]*\{[A-Za-z0-9_-]+\}[A-Za-z0-9_-]*|[A-Za-z0-9_-]+)$/.test(prefix)) throw new TypeError('HospitalOutbox: prefix must be [A-Za-z0-9_-]+, optionally with one {hash tag}');
    if (!(opts.secret instanceof Uint8Array) || opts.secret.length < 32) throw new TypeError('HospitalOutbox: secret must be at least 32 bytes');
    for (const old of opts.previousSecrets ?? []) {
      if (!(old instanceof Uint8Array) || old.length < 32) throw new TypeError('HospitalOutbox: previousSecrets must be at least 32 bytes each');
    }
    const positive = (v: number | undefined, dflt: number, name: string, min = 1): number => {
      const n = v ?? dflt;
      if (!Number.isInteger(n) || n < min) throw new TypeError(`HospitalOutbox: ${name} must be an integer >= ${min}`);
      return n;
    };
    this.#writer = writer;
    this.queueName = outboxQueueName(opts.nodeId);
    this.#redisUrl = opts.redisUrl;
    this.#prefix = prefix;
    ({ enc: this.#encKey, tag: this.#tagKey } = outboxKeys(opts.secret, opts.nodeId));
    this.#oldKeys = (opts.previousSecrets ?? []).map((s) => outboxKeys(s, opts.nodeId)).filter((k) => !k.enc.equals(this.#encKey));
    this.#concurrency = positive(opts.concurrency, 4, 'concurrency');
    this.#backoffMs = positive(opts.backoffMs, 200, 'backoffMs');
    this.#maxBackoffMs = positive(opts.maxBackoffMs, 30_000, 'maxBackoffMs');
    const attempts = positive(opts.maxAttempts, 0, 'maxAttempts', 0);
    this.#attempts = attempts === 0 ? UNLIMITED_ATTEMPTS : attempts;
    this.#onFailure = opts.onFailure;
    this.#log = opts.logger;
    this.#stopTimeoutMs = positive(opts.stopTimeoutMs, 5000, 'stopTimeoutMs');
    this.ledger = opts.ledger ?? new SyncLedger();
  }

  /**
   * Connects to Redis, counts the jobs an earlier run left (they are part of {@link backlog}),
   * starts the worker and queues what was enqueued so far.
   * @throws Error when called twice, or when Redis cannot be reached.
   */
  async start(): Promise<void> {
    if (this.#state !== 'new') throw new Error(`HospitalOutbox: start() called when ${this.#state}`);
    this.#state = 'running';
    const client = new Redis(this.#redisUrl, { maxRetriesPerRequest: 1, retryStrategy: (n: number) => Math.min(250 * n, 5000), disconnectTimeout: 500 });
    client.on('error', (err: unknown) => this.#log?.warn({ err: describe(err) }, 'hospital outbox: Redis error'));
    this.#client = client;
    const queue = new Queue<OutboxJobData>(this.queueName, { connection: client, prefix: this.#prefix });
    queue.on('error', (err: unknown) => this.#log?.warn({ err: describe(err) }, 'hospital outbox: queue error'));
    this.#queue = queue;
    try {
      for (const id of await queue.getRanges(['wait', 'active', 'delayed', 'prioritized'], 0, -1)) this.#outstanding.add(id);
      if (this.#oldKeys.length > 0) await this.#reencrypt(queue);
    } catch (err) {
      await this.#closeConnections();
      this.#state = 'stopped';
      throw err;
    }
    const maxBackoff = this.#maxBackoffMs;
    const base = this.#backoffMs;
    const worker = new Worker<OutboxJobData>(this.queueName, (job, token) => this.#process(job, token), {
      connection: { url: this.#redisUrl },
      prefix: this.#prefix,
      concurrency: this.#concurrency,
      autorun: false,
      settings: {
        backoffStrategy: (attemptsMade: number) => {
          const d = Math.min(maxBackoff, base * 2 ** Math.min(30, Math.max(0, attemptsMade - 1)));
          return Math.round(d / 2 + Math.random() * (d / 2));
        },
      },
    });
    worker.on('error', (err: unknown) => this.#log?.warn({ err: describe(err) }, 'hospital outbox: worker error'));
    worker.on('completed', (job) => this.#settle(job.id));
    worker.on('failed', (job, err) => {
      if (job === undefined) return;
      this.#stats.attemptsFailed++;
      if (this.#finalFailures.delete(job.id ?? '') || err instanceof UnrecoverableError) this.#settle(job.id);
    });
    this.#worker = worker;
    void worker.run().catch((err: unknown) => this.#log?.error({ err: describe(err) }, 'hospital outbox: worker stopped'));
    this.#scheduleFlush(0);
  }

  /**
   * Queues version `version` of `key` for writing to the hospital. Synchronous; the version is in
   * Redis a few ms later (batched with others). Only the latest version of a key that is not in
   * Redis yet is kept. Ignored after {@link stop}.
   * @param key - `Type/id`.
   * @param version - the version (body canonical JSON, or a deletion).
   */
  enqueue(key: string, version: VersionRecord): void {
    if (this.#state === 'stopping' || this.#state === 'stopped') return;
    if (this.#dropped.has(key)) return;
    this.#pending.set(key, version);
    this.#scheduleFlush(0);
  }

  /**
   * Queues `versions` to be written to the hospital again, even where this outbox recorded them as
   * written or the ledger says the hospital holds them: for a hospital that lost data (an operator
   * resync, src/hospital/resync.ts). The writes are idempotent (update-as-create PUT, or DELETE of
   * a deleted resource, https://hl7.org/fhir/R4/http.html#update); a version older than one already
   * written is still skipped, and crypto-shredded keys ({@link drop}) are never queued. Resolves
   * once the versions are handed to Redis (so a caller queueing in batches holds one batch in
   * memory), or at once when Redis cannot take them now (they stay pending and are retried).
   * @param versions - `[key, version]` pairs, `key` = `Type/id`; the caller's batch (e.g. 500).
   * @returns How many were queued (shredded keys and calls after {@link stop} are left out).
   * @throws Error when called before {@link start}.
   */
  async resend(versions: ReadonlyArray<readonly [string, VersionRecord]>): Promise<number> {
    if (this.#state === 'new') throw new Error('HospitalOutbox: resend() before start()');
    if (this.#state !== 'running') return 0;
    let n = 0;
    for (const [key, version] of versions) {
      if (this.#dropped.has(key)) continue;
      this.#pending.set(key, version);
      this.#forced.add(key);
      n++;
    }
    this.#stats.resent += n;
    if (this.#flushTimer !== undefined) {
      clearTimeout(this.#flushTimer);
      this.#flushTimer = undefined;
    }
    await this.#flush();
    return n;
  }

  /**
   * Resolves when nothing is pending, queued or being written: every enqueued version has been
   * written, skipped as superseded, or has failed for good. While the hospital is down this waits
   * until it returns. Resolves at once after {@link stop}.
   */
  idle(): Promise<void> {
    if (this.backlog === 0 || this.#state === 'stopped') return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Versions waiting to be handed to Redis plus jobs in Redis not finished yet (including an earlier run's). */
  get backlog(): number {
    return this.#pending.size + this.#outstanding.size;
  }

  /** Resources whose last job failed for good: key → error code and HTTP status (no PHI). */
  failures(): ReadonlyMap<string, string> {
    return this.#failed;
  }

  /** Versions written to the hospital by this process. */
  get writes(): number {
    return this.#stats.written;
  }

  /** Counters (this process). */
  stats(): HospitalOutboxStats {
    return { ...this.#stats };
  }

  /**
   * Stops: hands pending versions to Redis (for up to `stopTimeoutMs`), lets writes in progress
   * finish, closes the worker, queue and connections. Queued jobs stay in Redis for the next
   * start. Idempotent.
   */
  async stop(): Promise<void> {
    if (this.#state === 'stopped' || this.#state === 'stopping') return;
    const started = this.#state === 'running';
    this.#state = 'stopping';
    if (this.#flushTimer !== undefined) clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    if (started) {
      const deadline = Date.now() + this.#stopTimeoutMs;
      while (this.#pending.size > 0 && Date.now() < deadline) {
        await this.#flush();
        if (this.#pending.size > 0) await new Promise((r) => setTimeout(r, 100));
      }
      if (this.#pending.size > 0) this.#log?.error({ versions: this.#pending.size }, 'hospital outbox: Redis unreachable at stop, versions not queued');
    }
    await this.#closeConnections();
    this.#state = 'stopped';
    this.#notify(true);
  }

  /**
   * Drops every queued write of `keys` (crypto-shredding, src/store/shred.ts): versions not yet in
   * Redis, and jobs in Redis that are waiting, delayed, prioritized or failed (each job is
   * decrypted to learn its key); their written-version entries are deleted too. A job being written
   * at this moment finishes, but this process writes nothing more for these keys. Works before
   * `start()` (connects for the call) and while running.
   * @param keys - `Type/id` keys.
   * @returns Jobs and pending versions dropped.
   * @throws Error when Redis is unreachable.
   */
  async drop(keys: ReadonlySet<string>): Promise<number> {
    let n = 0;
    for (const k of keys) {
      this.#dropped.add(k);
      if (this.#pending.delete(k)) n++;
      this.#forced.delete(k);
      this.#latestQueued.delete(k);
      this.#writtenCache.delete(k);
      this.#failed.delete(k);
    }
    let client = this.#client;
    let queue = this.#queue;
    const temporary = queue === undefined || client === undefined;
    if (temporary) {
      client = new Redis(this.#redisUrl, { maxRetriesPerRequest: 1, lazyConnect: true });
      client.on('error', () => {});
      await client.connect();
      queue = new Queue<OutboxJobData>(this.queueName, { connection: client, prefix: this.#prefix });
    }
    try {
      for (const job of await queue!.getJobs(['wait', 'delayed', 'prioritized', 'waiting-children', 'failed'])) {
        if (!job) continue;
        let item: OutboxItem;
        try {
          item = this.#decrypt(job.data);
        } catch {
          continue;
        }
        if (!keys.has(item.k)) continue;
        try {
          await job.remove();
          n++;
          this.#settle(job.id);
        } catch {
          // Taken by the worker meanwhile: #write skips dropped keys.
        }
      }
      if (keys.size > 0) await client!.hdel(this.#writtenKey, ...[...keys].flatMap((k) => [this.#tag(k), ...this.#oldTags(k)]));
    } finally {
      if (temporary) {
        await queue!.close().catch(() => {});
        client!.disconnect();
      }
    }
    this.#notify();
    return n;
  }

  // ---- queueing ----

  #scheduleFlush(delayMs: number): void {
    if (this.#state !== 'running' || this.#flushTimer !== undefined || this.#flushing !== undefined) return;
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = undefined;
      void this.#flush();
    }, delayMs);
  }

  #flush(): Promise<void> {
    this.#flushing ??= this.#flushNow().finally(() => {
      this.#flushing = undefined;
      if (this.#pending.size > 0) {
        const delay = this.#addFailures === 0 ? 0 : Math.min(this.#maxBackoffMs, this.#backoffMs * 2 ** Math.min(10, this.#addFailures));
        this.#scheduleFlush(delay);
      }
      this.#notify();
    });
    return this.#flushing;
  }

  async #flushNow(): Promise<void> {
    const queue = this.#queue;
    while (queue !== undefined && this.#pending.size > 0) {
      const batch = [...this.#pending].slice(0, ADD_BATCH);
      const jobs = batch.map(([key, version]) => ({
        name: JOB_NAME,
        data: this.#encrypt({ k: key, v: version.versionId, d: version.deleted || version.body === null, b: version.body, ...(this.#forced.has(key) ? { f: true as const } : {}) }),
        opts: {
          attempts: this.#attempts,
          backoff: { type: BACKOFF_TYPE },
          removeOnComplete: true,
          removeOnFail: { count: 1000 },
        },
      }));
      let added: Job<OutboxJobData>[];
      try {
        added = await queue.addBulk(jobs);
      } catch (err) {
        this.#addFailures++;
        this.#log?.warn({ err: describe(err), versions: this.#pending.size }, 'hospital outbox: cannot queue in Redis, will retry');
        return;
      }
      this.#addFailures = 0;
      for (const [i, [key, version]] of batch.entries()) {
        // A newer version enqueued meanwhile stays pending; this one is in Redis now.
        if (this.#pending.get(key) === version) {
          this.#pending.delete(key);
          this.#forced.delete(key);
        }
        const prev = this.#latestQueued.get(key);
        if (prev === undefined || !(clockSum(prev) >= clockSum(version.versionId))) this.#latestQueued.set(key, version.versionId);
        const id = added[i]?.id;
        if (id === undefined) continue;
        if (!this.#settledEarly.delete(id)) this.#outstanding.add(id);
      }
    }
  }

  #settle(id: string | undefined): void {
    if (id === undefined) return;
    if (!this.#outstanding.delete(id)) this.#settledEarly.add(id);
    this.#notify();
  }

  #notify(force = false): void {
    if (!force && this.backlog > 0) return;
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  // ---- processing ----

  async #process(job: Job<OutboxJobData>, token: string | undefined): Promise<string> {
    let item: OutboxItem;
    try {
      item = this.#decrypt(job.data);
    } catch {
      this.#finalFailures.add(job.id ?? '');
      throw new UnrecoverableError('outbox job cannot be decrypted (other key or tampered)');
    }
    try {
      return await this.#serialized(item.k, () => this.#write(item, job, token));
    } catch (err) {
      if (err instanceof DelayedError) throw err;
      if (err instanceof UnrecoverableError || job.attemptsMade + 1 >= this.#attempts) {
        this.#finalFailures.add(job.id ?? '');
        if (!(err instanceof UnrecoverableError)) {
          this.#failed.set(item.k, describe(err));
          this.#onFailure?.(item.k, err);
        }
      }
      throw err;
    }
  }

  async #write(item: OutboxItem, job: Job<OutboxJobData>, token: string | undefined): Promise<string> {
    const key = item.k;
    if (this.#dropped.has(key)) return 'dropped';
    const sum = clockSum(item.v);
    const latest = this.#latestQueued.get(key);
    if (latest !== undefined && clockSum(latest) > sum) {
      this.#stats.superseded++;
      return 'superseded';
    }
    const written = await this.#writtenVersion(key);
    // a resend (resync) writes the version again even when it is recorded as written
    if (written !== undefined && ((written === item.v && item.f !== true) || clockSum(written) > sum)) {
      this.#stats.stale++;
      return 'stale';
    }
    if (item.f !== true && this.ledger.holds(key) === item.v) {
      await this.#setWritten(key, item.v);
      this.#stats.inSync++;
      return 'in-sync';
    }
    const slash = key.indexOf('/');
    const body = item.b === null ? null : (parseFhirJson(item.b) as FhirJsonObject);
    if (body !== null && !item.d && (await this.#mustWaitForTargets(key, body, job))) {
      // A hospital that assigns its own ids can only take a reference to a resource it already
      // holds: let the referenced resource's first write go first.
      const n = (job.data.n ?? 0) + 1;
      await job.updateData({ ...job.data, n });
      await job.moveToDelayed(Date.now() + Math.min(2000, this.#backoffMs * 2 ** (n - 1)), token);
      throw new DelayedError();
    }
    this.ledger.beginWrite(key, item.v, contentHash(item.d ? null : body));
    let result: unknown;
    try {
      if (item.d || body === null) result = await this.#writer.remove(key.slice(0, slash), key.slice(slash + 1));
      else result = await this.#writer.upsert(body);
    } catch (err) {
      if (isRefusal(err)) {
        this.#failed.set(key, describe(err));
        this.#onFailure?.(key, err);
        throw new UnrecoverableError(describe(err));
      }
      if (job.attemptsMade === 0) this.#log?.warn({ err: describe(err) }, 'hospital outbox: hospital unavailable, will retry');
      throw new Error(describe(err));
    }
    const stored = hospitalVersionOf(result);
    this.ledger.wrote(key, item.v, stored.versionId, stored.lastUpdated);
    await this.#setWritten(key, item.v);
    this.#failed.delete(key);
    this.#stats.written++;
    return 'written';
  }

  /**
   * True when the hospital may assign its own ids and `body` refers to a resource whose first
   * version is queued here but not written yet (bounded by {@link MAX_DEFERRALS}).
   */
  async #mustWaitForTargets(key: string, body: FhirJsonObject, job: Job<OutboxJobData>): Promise<boolean> {
    if ((this.#writer as { assignsOwnIds?: unknown }).assignsOwnIds === false) return false;
    if ((job.data.n ?? 0) >= MAX_DEFERRALS) return false;
    for (const target of referenceTargets(body, new Set())) {
      if (target === key || !(this.#pending.has(target) || this.#latestQueued.has(target))) continue;
      if ((await this.#writtenVersion(target)) === undefined) return true;
    }
    return false;
  }

  #serialized<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#locks.get(key) ?? Promise.resolve();
    const run = previous.then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.#locks.set(key, tail);
    void tail.then(() => {
      if (this.#locks.get(key) === tail) this.#locks.delete(key);
    });
    return run;
  }

  get #writtenKey(): string {
    return `${this.#prefix}:${this.queueName}:tidegate-written`;
  }

  #tag(key: string, tagKey: Buffer = this.#tagKey): string {
    return createHmac('sha256', tagKey).update(key).digest('base64url').slice(0, 22);
  }

  /** Tags of `key` under the previous tag keys. */
  #oldTags(key: string): string[] {
    return this.#oldKeys.map((k) => this.#tag(key, k.tag));
  }

  async #writtenVersion(key: string): Promise<string | undefined> {
    const cached = this.#writtenCache.get(key);
    if (cached !== undefined) return cached;
    const client = this.#client!;
    let stored = await client.hget(this.#writtenKey, this.#tag(key));
    if (stored === null && this.#oldKeys.length > 0) {
      // Filed under a previous tag key before a rotation: take the newest and move it to the current tag.
      const old = (await client.hmget(this.#writtenKey, ...this.#oldTags(key))).filter((v): v is string => v !== null);
      for (const v of old) if (stored === null || clockSum(v) > clockSum(stored)) stored = v;
      if (stored !== null) await this.#setWritten(key, stored);
    }
    if (stored !== null) this.#writtenCache.set(key, stored);
    return stored ?? undefined;
  }

  async #setWritten(key: string, versionId: string): Promise<void> {
    this.#writtenCache.set(key, versionId);
    const client = this.#client!;
    await client.hset(this.#writtenKey, this.#tag(key), versionId);
    if (this.#oldKeys.length > 0) await client.hdel(this.#writtenKey, ...this.#oldTags(key));
  }

  /**
   * Re-encrypts, under the current key, every queued job (waiting, delayed, prioritized, failed)
   * sealed under a previous key. Runs at start, before this process's worker takes jobs.
   */
  async #reencrypt(queue: Queue<OutboxJobData>): Promise<void> {
    let moved = 0;
    for (const job of await queue.getJobs(['wait', 'delayed', 'prioritized', 'waiting-children', 'failed'])) {
      if (!job) continue;
      let opened: { item: OutboxItem; current: boolean };
      try {
        opened = this.#open(job.data);
      } catch {
        continue; // unreadable under every key: the worker fails it without retry
      }
      if (opened.current) continue;
      try {
        await job.updateData({ ...job.data, ...this.#encrypt(opened.item) });
        moved++;
      } catch {
        // Removed meanwhile; nothing to re-encrypt.
      }
    }
    if (moved > 0) this.#log?.warn({ jobs: moved }, 'hospital outbox: queued jobs re-encrypted under the current key (after a key rotation)');
  }

  #encrypt(item: OutboxItem): OutboxJobData {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.#encKey, iv);
    cipher.setAAD(Buffer.from(this.queueName));
    const ct = Buffer.concat([cipher.update(JSON.stringify(item), 'utf8'), cipher.final()]);
    return { c: Buffer.concat([iv, cipher.getAuthTag(), ct]).toString('base64url') };
  }

  #decrypt(data: OutboxJobData): OutboxItem {
    return this.#open(data).item;
  }

  /** Opens a job under the current key, else under each previous key. */
  #open(data: OutboxJobData): { item: OutboxItem; current: boolean } {
    const raw = Buffer.from(typeof data?.c === 'string' ? data.c : '', 'base64url');
    if (raw.length < 28) throw new TypeError('malformed outbox job');
    const keys = [this.#encKey, ...this.#oldKeys.map((k) => k.enc)];
    for (const [i, key] of keys.entries()) {
      let text: string;
      try {
        const decipher = createDecipheriv('aes-256-gcm', key, raw.subarray(0, 12));
        decipher.setAAD(Buffer.from(this.queueName));
        decipher.setAuthTag(raw.subarray(12, 28));
        text = Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString('utf8');
      } catch {
        continue;
      }
      const item = JSON.parse(text) as OutboxItem;
      if (typeof item.k !== 'string' || typeof item.v !== 'string' || typeof item.d !== 'boolean') throw new TypeError('malformed outbox item');
      return { item, current: i === 0 };
    }
    throw new TypeError('outbox job sealed under none of the keys');
  }

  async #closeConnections(): Promise<void> {
    const bounded = async (p: Promise<unknown>, ms: number): Promise<void> => {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([p.catch(() => {}), new Promise((r) => (timer = setTimeout(r, ms)))]);
      clearTimeout(timer);
    };
    const worker = this.#worker;
    const queue = this.#queue;
    const client = this.#client;
    this.#worker = undefined;
    this.#queue = undefined;
    this.#client = undefined;
    if (worker) {
      await bounded(worker.close(), 15_000);
      await bounded(worker.disconnect(), 1000);
    }
    if (queue) await bounded(queue.close(), 2000);
    if (client) {
      await bounded(client.quit(), 1000);
      client.disconnect();
    }
  }
}
