/**
 * Tide: tidegate's gossip engine.
 *
 * Local writes arrive as Yjs updates through {@link Tide.publish}; Tide batches them per peer,
 * seals one tidegate-env/1 envelope per batch and per peer, and adds it as a BullMQ job to the
 * peer's inbox queue on the peer's Redis. Each node consumes its own inbox with one worker,
 * opens every envelope and hands the updates to its {@link Replica}. Anti-entropy (state-vector
 * digests) repairs whatever was lost. See docs/tide.md.
 *
 * BullMQ sources: job ids https://docs.bullmq.io/guide/jobs/job-ids, retries
 * https://docs.bullmq.io/guide/retrying-failing-jobs, job schedulers
 * https://docs.bullmq.io/guide/job-schedulers. Yjs: https://docs.yjs.dev/api/document-updates.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Queue, UnrecoverableError, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import type { Job } from 'bullmq';
import * as Y from 'yjs';
import { EnvelopeError, sharedCryptoPool } from '../envelope/index.ts';
import type { EnvelopeCryptoPool } from '../envelope/index.ts';
import type { NodePublicKeys, NodeSecretKeys, OpenResult } from '../envelope/index.ts';
import {
  chunkDigest,
  decodeDigest,
  decodeUpdates,
  encodeDigest,
  encodeUpdates,
  inRange,
  isResourceKey,
  stateVectorAhead,
  TidePlaintextError,
} from './codec.ts';
import type { Digest, DigestEntry } from './codec.ts';
import type {
  PeerConfig,
  Replica,
  ResourceUpdate,
  TideLogger,
  TideMessageKind,
  TideOptions,
  TideStats,
} from './types.ts';

/** Node ids Tide accepts (same rule as the envelope): BullMQ queue names must not contain `:`. */
const NODE_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** The envelope header lists at most this many resources. */
const MAX_HEADER_RESOURCES = 10_000;
/** Completed inbox jobs are kept this long (s) / this many, so a re-`add` of the same jobId is a no-op. */
const KEEP_COMPLETED = { age: 3600, count: 1000 } as const;
/** Failed inbox jobs (rejected or out of attempts) are kept for inspection: 7 days, at most 10 000. */
const KEEP_FAILED = { age: 7 * 24 * 3600, count: 10_000 } as const;
/** At most this many envelopes wait in one peer's send chain; more are dropped (anti-entropy repairs). */
const MAX_QUEUED_SENDS_PER_PEER = 1000;
/** Repeated warnings of one kind are logged at most once per this many ms. */
const LOG_RATE_LIMIT_MS = 30_000;
/** Job scheduler id / job name of the periodic anti-entropy job on the control queue. */
const AE_SCHEDULER_ID = 'anti-entropy';

/** Job data of every inbox job: the serialized envelope. */
interface InboxJobData {
  env: string;
}

interface Outbox {
  items: ResourceUpdate[];
  bytes: number;
  timer: NodeJS.Timeout | undefined;
}

interface PeerLink {
  config: PeerConfig;
  /** ioredis connection to the peer's Redis (shared with `queue`, closed by Tide); set by start(). */
  client: Redis | undefined;
  /** Queue `inbox-<peerId>` on the peer's Redis; set by start(). */
  queue: Queue<InboxJobData> | undefined;
  outbox: Outbox;
  /** Sends chained and not finished. */
  queued: number;
  /** Until this time (ms since epoch) the peer is considered down and sends to it are dropped. */
  downUntil: number;
  /** Tail of this peer's send chain: envelopes are sealed and added one at a time, in order. */
  chain: Promise<void>;
}

const defaultLogger: TideLogger = {
  info() {},
  warn(obj, msg) {
    console.error(JSON.stringify({ level: 'warn', ...obj, msg }));
  },
  error(obj, msg) {
    console.error(JSON.stringify({ level: 'error', ...obj, msg }));
  },
};

/**
 * Name of a node's inbox queue (`inbox-<nodeId>`); with the prefix, its Redis keys are
 * `<prefix>:inbox-<nodeId>:*`.
 * @param nodeId - A node id (`[A-Za-z0-9][A-Za-z0-9._-]{0,63}`).
 */
export function inboxQueueName(nodeId: string): string {
  return `inbox-${nodeId}`;
}

/**
 * Name of a node's local control queue (`control-<nodeId>`) that carries the anti-entropy job
 * scheduler.
 * @param nodeId - A node id.
 */
export function controlQueueName(nodeId: string): string {
  return `control-${nodeId}`;
}

/**
 * The gossip engine of one tidegate node. Lifecycle: `new Tide(opts)` → `await start()` →
 * `publish()` / `runAntiEntropy()` … → `await stop()`. A stopped Tide cannot be restarted:
 * construct a new one.
 *
 * Delivery is at-least-once (BullMQ jobs with retries); Yjs updates are idempotent and
 * commutative, so duplicates and reordering are harmless, and anything lost (a peer's Redis
 * down past all retries, jobs deleted) is repaired by anti-entropy.
 */
export class Tide {
  readonly #self: NodeSecretKeys;
  /** Seal/open run on worker threads (CPU-bound PQ crypto must not block the event loop). */
  readonly #crypto: EnvelopeCryptoPool;
  readonly #redisUrl: string;
  readonly #prefix: string;
  readonly #replica: Replica;
  readonly #log: TideLogger;
  readonly #batchMaxUpdates: number;
  readonly #batchMaxBytes: number;
  readonly #batchDelayMs: number;
  readonly #aeIntervalMs: number;
  readonly #digestMaxKeys: number;
  readonly #attempts: number;
  readonly #backoffMs: number;
  readonly #lockDurationMs: number;
  readonly #sendTimeoutMs: number;
  readonly #peerDownMs: number;
  readonly #stopTimeoutMs: number;
  readonly #lastWarn = new Map<string, number>();
  /** Set when stop() ran out of time: remaining sends are dropped. */
  #abandon = false;
  #starting: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  readonly #peerConfigs: PeerConfig[];
  readonly #peerKeys: ReadonlyMap<string, NodePublicKeys>;
  readonly #links = new Map<string, PeerLink>();
  /** Sends (seal + add) started and not finished, across all peers. */
  #inflight = 0;
  #state: 'new' | 'starting' | 'running' | 'stopping' | 'stopped' = 'new';
  #inboxWorker: Worker<InboxJobData> | undefined;
  #inboxQueue: Queue<InboxJobData> | undefined;
  #controlWorker: Worker | undefined;
  #controlQueue: Queue | undefined;
  readonly #stats: TideStats = {
    messagesSent: 0,
    messagesReceived: 0,
    bytesSent: 0,
    bytesReceived: 0,
    updatesSent: 0,
    updatesReceived: 0,
    rejected: {},
    applyFailures: 0,
    sendFailures: 0,
    antiEntropyRuns: 0,
    digestsReceived: 0,
  };

  /**
   * Validates the options; opens no connection (see {@link Tide.start}).
   * @param opts - See {@link TideOptions}; durations in ms, sizes in bytes.
   * @throws TypeError / RangeError for an invalid node id, prefix, peer list (self listed,
   *   duplicates, `nodeId` ≠ `publicKeys.nodeId`), replica of another node, or bad numbers.
   */
  constructor(opts: TideOptions) {
    this.#self = opts.self;
    this.#crypto = opts.cryptoPool ?? sharedCryptoPool();
    this.#redisUrl = opts.redisUrl;
    this.#prefix = opts.prefix ?? 'tidegate';
    this.#replica = opts.replica;
    this.#log = opts.logger ?? defaultLogger;
    this.#batchMaxUpdates = positiveInt('batchMaxUpdates', opts.batchMaxUpdates ?? 200, MAX_HEADER_RESOURCES);
    this.#batchMaxBytes = positiveInt('batchMaxBytes', opts.batchMaxBytes ?? 1_048_576);
    this.#batchDelayMs = nonNegativeInt('batchDelayMs', opts.batchDelayMs ?? 20);
    this.#aeIntervalMs = nonNegativeInt('antiEntropyIntervalMs', opts.antiEntropyIntervalMs ?? 30_000);
    this.#digestMaxKeys = positiveInt('digestMaxKeys', opts.digestMaxKeys ?? 5000);
    this.#attempts = positiveInt('attempts', opts.attempts ?? 5);
    this.#backoffMs = nonNegativeInt('backoffMs', opts.backoffMs ?? 1000);
    this.#lockDurationMs = positiveInt('lockDurationMs', opts.lockDurationMs ?? 60_000);
    this.#sendTimeoutMs = positiveInt('sendTimeoutMs', opts.sendTimeoutMs ?? 5000);
    this.#peerDownMs = nonNegativeInt('peerDownMs', opts.peerDownMs ?? 30_000);
    this.#stopTimeoutMs = positiveInt('stopTimeoutMs', opts.stopTimeoutMs ?? 10_000);

    const selfId = this.#self.nodeId;
    if (!NODE_ID_RE.test(selfId)) throw new TypeError(`Tide: invalid node id ${JSON.stringify(selfId)}`);
    if (this.#replica.nodeId !== selfId) {
      throw new TypeError(`Tide: replica.nodeId ${JSON.stringify(this.#replica.nodeId)} is not ${selfId}`);
    }
    if (this.#prefix.length === 0 || this.#prefix.includes(':')) {
      throw new TypeError('Tide: prefix must be non-empty and must not contain ":"');
    }
    const keys = new Map<string, NodePublicKeys>();
    for (const peer of opts.peers) {
      if (!NODE_ID_RE.test(peer.nodeId)) throw new TypeError(`Tide: invalid peer id ${JSON.stringify(peer.nodeId)}`);
      if (peer.nodeId === selfId) throw new TypeError('Tide: a node cannot be its own peer');
      if (keys.has(peer.nodeId)) throw new TypeError(`Tide: duplicate peer ${peer.nodeId}`);
      if (peer.publicKeys.nodeId !== peer.nodeId) {
        throw new TypeError(`Tide: peer ${peer.nodeId} has the public keys of ${peer.publicKeys.nodeId}`);
      }
      keys.set(peer.nodeId, peer.publicKeys);
    }
    this.#peerConfigs = [...opts.peers];
    this.#peerKeys = keys;
    for (const config of this.#peerConfigs) {
      this.#links.set(config.nodeId, {
        config,
        client: undefined,
        queue: undefined,
        outbox: { items: [], bytes: 0, timer: undefined },
        queued: 0,
        downUntil: 0,
        chain: Promise.resolve(),
      });
    }
  }

  /** This node's id. */
  get nodeId(): string {
    return this.#self.nodeId;
  }

  /**
   * Connects: one BullMQ Queue per peer (on the peer's Redis, queue `inbox-<peer>`), this node's
   * inbox Queue and Worker (concurrency 1, lock `lockDurationMs`) on its own Redis, and — when
   * `antiEntropyIntervalMs` > 0 — a control queue whose job scheduler (`upsertJobScheduler`,
   * https://docs.bullmq.io/guide/job-schedulers) runs {@link Tide.runAntiEntropy} every
   * `antiEntropyIntervalMs` ms (first run right away); with 0 the scheduler is removed.
   * Resolves once the own Redis connections are ready (peers' Redis may still be connecting).
   * @throws Error when called twice, or when the own Redis cannot be reached.
   */
  start(): Promise<void> {
    if (this.#state !== 'new') return Promise.reject(new Error(`Tide ${this.nodeId}: start() called when ${this.#state}`));
    this.#state = 'starting';
    this.#starting = this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    try {
      const prefix = this.#prefix;
      for (const config of this.#peerConfigs) {
        // Our own ioredis client, so that a send can see synchronously whether the peer's Redis
        // is connected and fail fast instead of parking envelopes in ioredis' offline queue.
        const client = new Redis(config.redisUrl, {
          maxRetriesPerRequest: 1,
          retryStrategy: (times: number) => Math.min(250 * times, 5000),
          // ioredis waits disconnectTimeout (default 2 s) for a socket that never connected to close
          disconnectTimeout: 500,
        });
        client.on('error', (err: unknown) =>
          this.#warnRateLimited(`rerr:${config.nodeId}`, { peer: config.nodeId, err: errText(err) }, 'tide: peer Redis error'),
        );
        const queue = new Queue<InboxJobData>(inboxQueueName(config.nodeId), { connection: client, prefix });
        queue.on('error', (err) =>
          this.#warnRateLimited(`qerr:${config.nodeId}`, { peer: config.nodeId, err: errText(err) }, 'tide: peer queue error'),
        );
        const link = this.#links.get(config.nodeId);
        if (link) {
          link.client = client;
          link.queue = queue;
        }
      }

      const inboxName = inboxQueueName(this.nodeId);
      const inboxQueue = new Queue<InboxJobData>(inboxName, { connection: { url: this.#redisUrl }, prefix });
      this.#inboxQueue = inboxQueue;
      inboxQueue.on('error', (err) =>
        this.#warnRateLimited('qerr:inbox', { err: errText(err) }, 'tide: inbox queue error'),
      );
      const inboxWorker = new Worker<InboxJobData>(inboxName, (job) => this.#processInbox(job), {
        connection: { url: this.#redisUrl },
        prefix,
        concurrency: 1,
        lockDuration: this.#lockDurationMs,
        removeOnComplete: KEEP_COMPLETED,
        removeOnFail: KEEP_FAILED,
      });
      this.#inboxWorker = inboxWorker;
      inboxWorker.on('error', (err) =>
        this.#warnRateLimited('werr:inbox', { err: errText(err) }, 'tide: inbox worker error'),
      );
      inboxWorker.on('failed', (job, err) => this.#onInboxFailed(job, err));

      const controlName = controlQueueName(this.nodeId);
      const controlQueue = new Queue(controlName, { connection: { url: this.#redisUrl }, prefix });
      this.#controlQueue = controlQueue;
      controlQueue.on('error', (err) =>
        this.#warnRateLimited('qerr:control', { err: errText(err) }, 'tide: control queue error'),
      );
      if (this.#aeIntervalMs > 0) {
        const scheduled = async (): Promise<void> => {
          await this.#starting; // a job left from an earlier run may arrive while starting
          if (this.#state === 'running') await this.runAntiEntropy();
        };
        this.#controlWorker = new Worker(controlName, scheduled, {
          connection: { url: this.#redisUrl },
          prefix,
          concurrency: 1,
          lockDuration: this.#lockDurationMs,
        });
        this.#controlWorker.on('error', (err) =>
          this.#warnRateLimited('werr:control', { err: errText(err) }, 'tide: control worker error'),
        );
        this.#controlWorker.on('failed', (_job, err) =>
          this.#log.warn({ err: errText(err) }, 'tide: scheduled anti-entropy failed'),
        );
      }

      await Promise.all([
        inboxQueue.waitUntilReady(),
        inboxWorker.waitUntilReady(),
        controlQueue.waitUntilReady(),
        this.#controlWorker?.waitUntilReady(),
      ]);
      if (this.#aeIntervalMs > 0) {
        await controlQueue.upsertJobScheduler(
          AE_SCHEDULER_ID,
          { every: this.#aeIntervalMs },
          { name: AE_SCHEDULER_ID, data: {}, opts: { removeOnComplete: true, removeOnFail: { count: 100 } } },
        );
      } else {
        await controlQueue.removeJobScheduler(AE_SCHEDULER_ID);
      }
    } catch (err) {
      this.#state = 'stopping';
      await this.#closeAll();
      this.#state = 'stopped';
      throw err;
    }
    this.#state = 'running';
    // Updates published between construction and start() are sent now.
    for (const peerId of this.#links.keys()) this.#scheduleOrSend(peerId);
    this.#log.info({ node: this.nodeId, peers: this.#links.size }, 'tide: started');
  }

  /**
   * Stops: closes the inbox and control workers (waiting for the job in progress), sends every
   * pending batch (waiting until enqueued or given up), then closes every queue. All ioredis
   * connections Tide opened are closed afterwards. Idempotent. The job scheduler stays in
   * Redis, so the node resumes its schedule on the next start.
   */
  stop(): Promise<void> {
    if (this.#stopping) return this.#stopping;
    this.#stopping = this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    if (this.#state === 'new') {
      this.#state = 'stopped';
      return;
    }
    if (this.#state === 'starting') await this.#starting?.catch(() => {});
    if (this.#state === 'stopped') return; // start() failed and cleaned up
    this.#state = 'stopping';
    await Promise.allSettled([this.#controlWorker?.close(), this.#inboxWorker?.close()]);
    const drained = this.#drainOutgoing().then(() => true);
    if (!(await Promise.race([drained, sleep(this.#stopTimeoutMs, false, { ref: false })]))) {
      this.#abandon = true; // unsent batches are dropped; anti-entropy repairs them
      this.#log.warn({ node: this.nodeId, pending: this.#inflight }, 'tide: stop timed out sending, dropping the rest');
    }
    await this.#closeAll();
    // in-flight adds fail once their connections are closed; wait for the chains to settle
    await Promise.race([drained.catch(() => false), sleep(this.#stopTimeoutMs, false, { ref: false })]);
    this.#state = 'stopped';
    this.#log.info({ node: this.nodeId }, 'tide: stopped');
  }

  /**
   * Queues local updates for every peer. Per peer they are batched: a batch is sealed into ONE
   * envelope once it has `batchMaxUpdates` updates or `batchMaxBytes` bytes, or `batchDelayMs`
   * ms after its first update. Several updates of one key in a batch are merged
   * (`Y.mergeUpdates`). Sending happens asynchronously; see {@link Tide.flush}.
   *
   * Publish only updates made locally: updates received through `applyRemote` must not be
   * re-published (every node sends to every peer; anti-entropy covers the rest).
   * @param updates - Updates; `key` must be `'Type/id'`, `update` non-empty Yjs v1 bytes.
   * @throws TypeError for an invalid key or update (nothing is queued then); Error when stopping/stopped.
   */
  publish(updates: ResourceUpdate[]): void {
    if (this.#state === 'stopping' || this.#state === 'stopped') {
      throw new Error(`Tide ${this.nodeId}: publish() after stop()`);
    }
    for (const u of updates) {
      if (!isResourceKey(u.key)) throw new TypeError(`Tide.publish: invalid resource key ${JSON.stringify(u.key)}`);
      if (!(u.update instanceof Uint8Array) || u.update.length === 0) {
        throw new TypeError(`Tide.publish: update of ${u.key} must be non-empty Uint8Array`);
      }
    }
    if (updates.length === 0) return;
    for (const peerId of this.#links.keys()) this.#enqueue(peerId, updates);
  }

  /**
   * Sends every pending batch now and resolves once all sends started so far (batches and
   * digests) have been added to the peers' inboxes, or given up after `attempts` tries.
   * Does not wait for peers to process them (see {@link Tide.pending} on the peer).
   */
  async flush(): Promise<void> {
    for (const peerId of this.#links.keys()) this.#sendNow(peerId);
    await Promise.all([...this.#links.values()].map((l) => l.chain));
  }

  /**
   * One anti-entropy round: sends each peer a sealed `ae-digest` message listing
   * (key, `Y.encodeStateVector`) for every key held (several range digests of at most
   * `digestMaxKeys` keys for big stores). The peer answers with `updates` for what this node
   * lacks and, if this node's digest shows state the peer lacks, with an `ae-reply` digest to
   * which this node answers with `updates` (a reply is never answered by a digest).
   * Resolves once the digests are enqueued. Also run by the job scheduler.
   * @throws Error when the Tide is not running.
   */
  async runAntiEntropy(): Promise<void> {
    if (this.#state !== 'running') throw new Error(`Tide ${this.nodeId}: runAntiEntropy() when ${this.#state}`);
    const digests = chunkDigest(this.#localEntries(''), '', undefined, this.#digestMaxKeys);
    const plaintexts = digests.map(encodeDigest);
    const sends: Promise<void>[] = [];
    for (const peerId of this.#links.keys()) {
      for (const pt of plaintexts) sends.push(this.#send(peerId, 'ae-digest', [], pt, 0));
    }
    await Promise.all(sends);
    this.#stats.antiEntropyRuns++;
  }

  /**
   * Work not yet done by this node: waiting + active + delayed + prioritized jobs of its inbox,
   * plus unsent batches (peers whose outbox is non-empty) and sends in flight. 0 on every node
   * means the mesh is quiescent (poll it twice: a job may be between states).
   * @throws Error from Redis when the inbox queue cannot be queried; Error when not started.
   */
  async pending(): Promise<number> {
    if (!this.#inboxQueue) throw new Error(`Tide ${this.nodeId}: pending() before start()`);
    let n = this.#inflight;
    for (const l of this.#links.values()) if (l.outbox.items.length > 0) n++;
    if (this.#state === 'stopped') return n;
    const counts = await this.#inboxQueue.getJobCounts('wait', 'active', 'delayed', 'prioritized');
    for (const v of Object.values(counts)) n += v;
    return n;
  }

  /** A snapshot copy of the counters (see {@link TideStats}). */
  stats(): TideStats {
    return { ...this.#stats, rejected: { ...this.#stats.rejected } };
  }

  // ---------------------------------------------------------------- sending

  #enqueue(peerId: string, updates: readonly ResourceUpdate[]): void {
    const link = this.#links.get(peerId);
    if (!link) return;
    const box = link.outbox;
    for (const u of updates) {
      box.items.push(u);
      box.bytes += u.key.length + u.update.length;
      if (box.items.length >= this.#batchMaxUpdates || box.bytes >= this.#batchMaxBytes) this.#sendNow(peerId);
    }
    this.#scheduleOrSend(peerId);
  }

  #scheduleOrSend(peerId: string): void {
    const link = this.#links.get(peerId);
    if (!link || link.outbox.items.length === 0 || link.outbox.timer !== undefined) return;
    if (this.#state !== 'running') return; // start() / stop() send what is left
    link.outbox.timer = setTimeout(() => this.#sendNow(peerId), this.#batchDelayMs);
  }

  /** Takes the peer's outbox and chains its send. */
  #sendNow(peerId: string): void {
    const link = this.#links.get(peerId);
    if (!link) return;
    const box = link.outbox;
    if (box.timer !== undefined) {
      clearTimeout(box.timer);
      box.timer = undefined;
    }
    if (box.items.length === 0) return;
    if (this.#state === 'new' || this.#state === 'starting') return; // kept until start() succeeds
    const items = box.items;
    box.items = [];
    box.bytes = 0;
    // Normally one batch; more only if updates piled up before start() or past the limits.
    let batch: ResourceUpdate[] = [];
    let bytes = 0;
    const flushBatch = (): void => {
      if (batch.length === 0) return;
      const merged = mergeByKey(batch);
      const resources = [...new Set(merged.map((u) => u.key))];
      void this.#send(peerId, 'updates', resources, () => encodeUpdates(merged), merged.length);
      batch = [];
      bytes = 0;
    };
    for (const u of items) {
      const size = u.key.length + u.update.length;
      if (batch.length >= this.#batchMaxUpdates || (batch.length > 0 && bytes + size > this.#batchMaxBytes)) flushBatch();
      batch.push(u);
      bytes += size;
    }
    flushBatch();
  }

  /**
   * Chains one send on the peer's chain: seal (CPU-bound, tens of ms with the pure-JS
   * post-quantum code) then `queue.add` with jobId = messageId. Each `add` try is bounded by
   * `sendTimeoutMs`; failed tries are repeated up to `attempts` times with exponential backoff,
   * always with the same jobId, so a try whose reply was lost (or that completes late) never
   * duplicates the job (https://docs.bullmq.io/guide/jobs/job-ids). After the last try the peer
   * is considered down for `peerDownMs`: sends to it are dropped at once (anti-entropy repairs
   * them), so a dead peer neither blocks the others nor piles up memory. Never rejects.
   */
  #send(
    peerId: string,
    kind: TideMessageKind,
    resources: string[],
    plaintext: Uint8Array | (() => Uint8Array),
    updateCount: number,
  ): Promise<void> {
    const link = this.#links.get(peerId);
    if (!link) return Promise.resolve();
    if (link.queued >= MAX_QUEUED_SENDS_PER_PEER) {
      this.#stats.sendFailures++;
      this.#warnRateLimited(`backlog:${peerId}`, { peer: peerId, kind }, 'tide: peer backlog full, message dropped');
      return Promise.resolve();
    }
    link.queued++;
    this.#inflight++;
    const run = async (): Promise<void> => {
      if (Date.now() < link.downUntil || this.#abandon) {
        this.#stats.sendFailures++;
        this.#warnRateLimited(`down:${peerId}`, { peer: peerId, kind }, 'tide: peer down, message dropped');
        return;
      }
      // yield first, so that publish() and the inbox job never pay for sealing
      await new Promise<void>((resolve) => setImmediate(resolve));
      const messageId = randomUUID();
      let env: string;
      try {
        const pt = typeof plaintext === 'function' ? plaintext() : plaintext;
        env = await this.#crypto.seal({ kind, messageId, resources, plaintext: pt }, this.#self, link.config.publicKeys);
      } catch (err) {
        this.#stats.sendFailures++;
        this.#log.error({ peer: peerId, kind, err: errText(err) }, 'tide: seal failed');
        return;
      }
      for (let attempt = 1; ; attempt++) {
        try {
          const { client, queue } = link;
          if (!client || !queue) throw new Error('peer queue not open');
          if (client.status !== 'ready') throw new Error(`peer Redis not connected (${client.status})`);
          const added = queue.add(kind, { env }, {
            jobId: messageId,
            attempts: this.#attempts,
            backoff: { type: 'exponential', delay: this.#backoffMs },
            removeOnComplete: KEEP_COMPLETED,
            removeOnFail: KEEP_FAILED,
          });
          await withTimeout(added, this.#sendTimeoutMs, 'queue.add timed out');
          link.downUntil = 0;
          this.#stats.messagesSent++;
          this.#stats.bytesSent += env.length;
          this.#stats.updatesSent += updateCount;
          return;
        } catch (err) {
          if (attempt >= this.#attempts || this.#abandon) {
            this.#stats.sendFailures++;
            link.downUntil = Date.now() + this.#peerDownMs;
            this.#log.error(
              { peer: peerId, kind, messageId, attempt, err: errText(err) },
              'tide: giving up sending; peer marked down, anti-entropy will repair',
            );
            return;
          }
          this.#log.warn({ peer: peerId, kind, messageId, attempt, err: errText(err) }, 'tide: send failed, retrying');
          await sleep(this.#backoffMs * 2 ** (attempt - 1));
        }
      }
    };
    const p = link.chain.then(run).finally(() => {
      link.queued--;
      this.#inflight--;
    });
    link.chain = p;
    return p;
  }

  /** Sends every outbox and waits for all chains, until nothing new was started. */
  async #drainOutgoing(): Promise<void> {
    for (;;) {
      for (const peerId of this.#links.keys()) this.#sendNow(peerId);
      await Promise.all([...this.#links.values()].map((l) => l.chain));
      const more = [...this.#links.values()].some((l) => l.outbox.items.length > 0);
      if (!more && this.#inflight === 0) return;
    }
  }

  #warnRateLimited(topic: string, fields: Record<string, unknown>, msg: string): void {
    const now = Date.now();
    const last = this.#lastWarn.get(topic);
    if (last !== undefined && now - last < LOG_RATE_LIMIT_MS) return;
    this.#lastWarn.set(topic, now);
    this.#log.warn(fields, msg);
  }

  async #closeAll(): Promise<void> {
    for (const l of this.#links.values()) {
      if (l.outbox.timer !== undefined) clearTimeout(l.outbox.timer);
      l.outbox.timer = undefined;
    }
    const closing: Promise<unknown>[] = [];
    if (this.#controlWorker) closing.push(this.#controlWorker.close());
    if (this.#inboxWorker) closing.push(this.#inboxWorker.close());
    if (this.#controlQueue) closing.push(this.#controlQueue.close());
    if (this.#inboxQueue) closing.push(this.#inboxQueue.close());
    for (const l of this.#links.values()) {
      // the peer client is ours (BullMQ does not close connections it was given)
      const { client, queue } = l;
      closing.push(
        (async () => {
          try {
            await queue?.close();
          } finally {
            if (client) await closeClient(client);
          }
        })(),
      );
    }
    const results = await Promise.allSettled(closing);
    for (const r of results) {
      if (r.status === 'rejected') this.#log.warn({ err: errText(r.reason) }, 'tide: close failed');
    }
  }

  // ---------------------------------------------------------------- receiving

  /**
   * The inbox processor. Unrecoverable (never retried, job goes to the failed set with the code
   * as its reason, https://docs.bullmq.io/guide/retrying-failing-jobs): any EnvelopeError, a
   * job id that is not the signed messageId, an unknown kind, undecodable plaintext. Retried:
   * an error thrown by `replica.applyRemote`.
   */
  async #processInbox(job: Job<InboxJobData>): Promise<void> {
    const env: unknown = job.data?.env;
    if (typeof env !== 'string') this.#reject(job, 'ERR_ENVELOPE_MALFORMED');
    let opened: OpenResult;
    try {
      opened = await this.#crypto.open(env, this.#self, this.#peerKeys);
    } catch (err) {
      this.#reject(job, err instanceof EnvelopeError ? err.code : 'ERR_ENVELOPE_MALFORMED');
    }
    const { header, plaintext } = opened;
    const sender = header.sender;
    if (header.recipient !== this.nodeId) this.#reject(job, 'ERR_NOT_FOR_THIS_NODE', sender);
    if (header.messageId !== job.id) this.#reject(job, 'ERR_MESSAGE_ID_MISMATCH', sender);

    switch (header.kind) {
      case 'updates': {
        const updates = this.#decode(job, sender, () => decodeUpdates(plaintext));
        try {
          await this.#replica.applyRemote(updates, sender);
        } catch (err) {
          this.#stats.applyFailures++;
          throw new Error(`applyRemote failed: ${errText(err)}`);
        }
        this.#stats.updatesReceived += updates.length;
        break;
      }
      case 'ae-digest':
      case 'ae-reply': {
        const digest = this.#decode(job, sender, () => decodeDigest(plaintext));
        this.#answerDigest(sender, digest, header.kind === 'ae-digest');
        this.#stats.digestsReceived++;
        break;
      }
      default:
        this.#reject(job, 'ERR_UNKNOWN_KIND', sender);
    }
    this.#stats.messagesReceived++;
    this.#stats.bytesReceived += env.length;
  }

  #decode<T>(job: Job, sender: string, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      this.#reject(job, err instanceof TidePlaintextError ? err.code : 'ERR_PLAINTEXT_MALFORMED', sender);
    }
  }

  /** Counts, logs (ids and code only, never plaintext) and throws an UnrecoverableError(code). */
  #reject(job: Job, code: string, sender?: string): never {
    this.#stats.rejected[code] = (this.#stats.rejected[code] ?? 0) + 1;
    this.#log.warn({ node: this.nodeId, jobId: job.id, jobName: job.name, sender, code }, 'tide: envelope rejected');
    throw new UnrecoverableError(code);
  }

  #onInboxFailed(job: Job<InboxJobData> | undefined, err: Error): void {
    if (!job || err instanceof UnrecoverableError || err.name === 'UnrecoverableError') return;
    const attempts = job.opts.attempts ?? 1;
    const fields = { node: this.nodeId, jobId: job.id, attemptsMade: job.attemptsMade, attempts, err: errText(err) };
    if (job.attemptsMade >= attempts) this.#log.error(fields, 'tide: inbox job failed for good');
    else this.#log.warn(fields, 'tide: inbox job failed, will retry');
  }

  /**
   * Answers a digest of `peerId` for its range: queues the diff of every held key in the range
   * that the peer lacks (`diffFor(key, theirSv)`, `undefined` sv if the peer lacks the key), and,
   * when `mayReply` and the digest shows state this node lacks, sends an `ae-reply` digest of
   * the same range.
   */
  #answerDigest(peerId: string, digest: Digest, mayReply: boolean): void {
    const theirs = new Map<string, Uint8Array>();
    for (const e of digest.entries) theirs.set(e.key, e.stateVector);
    const diffs: ResourceUpdate[] = [];
    for (const key of this.#replica.keys()) {
      if (!inRange(key, digest.from, digest.to) || !isResourceKey(key)) continue;
      try {
        const diff = this.#replica.diffFor(key, theirs.get(key));
        if (diff !== undefined && diff.length > 0) diffs.push({ key, update: diff });
      } catch (err) {
        this.#log.warn({ peer: peerId, err: errText(err) }, 'tide: diffFor failed');
      }
    }
    if (diffs.length > 0) this.#enqueue(peerId, diffs);
    if (!mayReply) return;
    let lacking = false;
    for (const [key, sv] of theirs) {
      const mine = this.#replica.stateVector(key);
      if (mine === undefined || stateVectorAhead(sv, mine)) {
        lacking = true;
        break;
      }
    }
    if (!lacking) return;
    const entries = this.#localEntries(digest.from, digest.to);
    for (const d of chunkDigest(entries, digest.from, digest.to, this.#digestMaxKeys)) {
      void this.#send(peerId, 'ae-reply', [], encodeDigest(d), 0);
    }
  }

  /** Sorted (key, state vector) entries of the held keys in `[from, to)`. */
  #localEntries(from: string, to?: string): DigestEntry[] {
    const out: DigestEntry[] = [];
    for (const key of this.#replica.keys()) {
      if (!inRange(key, from, to) || !isResourceKey(key)) continue;
      const stateVector = this.#replica.stateVector(key);
      if (stateVector !== undefined) out.push({ key, stateVector });
    }
    out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    // keys() should be unique; drop duplicates defensively (the digest must be strictly ascending)
    return out.filter((e, i) => i === 0 || out[i - 1]?.key !== e.key);
  }
}

/** Merges several updates of one key into one (`Y.mergeUpdates`), keeping first-seen key order. */
function mergeByKey(items: readonly ResourceUpdate[]): ResourceUpdate[] {
  const byKey = new Map<string, Uint8Array[]>();
  for (const u of items) {
    const list = byKey.get(u.key);
    if (list) list.push(u.update);
    else byKey.set(u.key, [u.update]);
  }
  if (byKey.size === items.length) return [...items];
  const out: ResourceUpdate[] = [];
  for (const [key, list] of byKey) {
    if (list.length === 1) {
      out.push({ key, update: list[0] as Uint8Array });
      continue;
    }
    try {
      out.push({ key, update: Y.mergeUpdates(list) });
    } catch {
      for (const update of list) out.push({ key, update });
    }
  }
  return out;
}

/** QUIT when connected (bounded by 1 s), else just drop the socket. */
async function closeClient(client: Redis): Promise<void> {
  if (client.status === 'end') return;
  if (client.status !== 'ready') {
    client.disconnect();
    return;
  }
  try {
    await withTimeout(client.quit(), 1000, 'quit timed out');
  } catch {
    client.disconnect();
  }
}

/** Resolves/rejects like `p`, or rejects after `ms` ms (`p` keeps running; its rejection is swallowed). */
function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  p.catch(() => {});
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

function errText(err: unknown): string {
  if (err instanceof Error) return `${err.name}: ${err.message}`.slice(0, 500);
  return String(err).slice(0, 500);
}

function positiveInt(name: string, v: number, max = Number.MAX_SAFE_INTEGER): number {
  if (!Number.isSafeInteger(v) || v < 1 || v > max) throw new RangeError(`Tide: ${name} must be an integer in [1, ${max}]`);
  return v;
}

function nonNegativeInt(name: string, v: number): number {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`Tide: ${name} must be a non-negative integer`);
  return v;
}
