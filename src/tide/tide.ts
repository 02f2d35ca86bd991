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
import { redisTlsOptions } from '../transport/tls.ts';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Queue, UnrecoverableError, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import type { Job } from 'bullmq';
import * as Y from 'yjs';
import { EnvelopeError, ReplayGuard, peekHeader, sharedCryptoPool } from '../envelope/index.ts';
import type { EnvelopeCryptoPool } from '../envelope/index.ts';
import type { NodePublicKeys, NodeSecretKeys, OpenResult } from '../envelope/index.ts';
import {
  MAX_TREE_ITEMS,
  decodeDigest,
  decodePolicy,
  decodeTree,
  decodeUpdates,
  encodeDigest,
  encodePolicy,
  encodeTree,
  encodeUpdates,
  intersectTypes,
  isResourceKey,
  stateVectorAhead,
  TidePlaintextError,
  typeAllowed,
} from './codec.ts';
import type { Digest, DigestEntry, PolicyDigestEntry, TreeMessage, TypeFilter } from './codec.ts';
import { DigestTree, PathSet, ROOT_PATH, TREE_MAX_DEPTH, childrenOf, keyHashOf, makeLeaf, pathsOverlap, pathId, sameNode } from './tree.ts';
import type { TreeLeaf, TreeNode, TreePath } from './tree.ts';
import { AuditLog, quarantineAuditEvent } from './audit.ts';
import { PolicyAgreement } from './policy.ts';
import type { QuarantineRecord } from './audit.ts';
import { labelsWithheld, parseLabelRule, REDACTED_LABEL_RULE, ruleText } from './peer-authz.ts';
import type { LabelRule, SecurityLabel } from './peer-authz.ts';
import type {
  PeerConfig,
  ProjectionSource,
  PeerQuarantine,
  TideRejectionEvent,
  PeerStatus,
  TideHealth,
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
/** Completed inbox jobs are kept this long (s), so a re-`add` of the same jobId is a no-op. */
const KEEP_COMPLETED_AGE_S = 3600;
/** Failed inbox jobs (rejected or out of attempts) are kept this long (s) for inspection. */
const KEEP_FAILED_AGE_S = 7 * 24 * 3600;
/** At most this many envelopes wait in one peer's send chain; more are dropped (anti-entropy repairs). */
const MAX_QUEUED_SENDS_PER_PEER = 1000;
/** Repeated warnings of one kind are logged at most once per this many ms. */
const LOG_RATE_LIMIT_MS = 30_000;
/**
 * A refused update (src/merge/skew.ts: clock skew, forged entry) is resent by anti-entropy every
 * round: the same refusal (sender, code, resource) within this many ms is dropped without a new
 * quarantine record, alert or AuditEvent (counted in `stats.rejected`).
 */
const REFUSAL_REPEAT_MS = 10 * 60_000;

/** The refusal an error thrown by `replica.applyRemote` carries (`refused: true`, `code`, `key`), if any. */
function refusalOf(err: unknown): { code: string; key: string; skewMs?: number } | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const { refused, code, key, skewMs } = err as { refused?: unknown; code?: unknown; key?: unknown; skewMs?: unknown };
  if (refused !== true || typeof code !== 'string' || !/^ERR_[A-Z_]+$/.test(code) || typeof key !== 'string') return undefined;
  return { code, key, ...(typeof skewMs === 'number' ? { skewMs } : {}) };
}
/** Job scheduler id / job name of the periodic anti-entropy job on the control queue. */
const AE_SCHEDULER_ID = 'anti-entropy';
/** FHIR resource type names (as in resource keys). */
const RESOURCE_TYPE_RE = /^[A-Z][A-Za-z]{0,63}$/;
/** A resource's cached `meta.security` labels are re-read after this long even if its state vector did not move (a label removal is a Yjs delete, invisible in state vectors). */
const LABEL_CACHE_MS = 30_000;
/** Most entries of the label cache; cleared when full. */
const LABEL_CACHE_MAX = 200_000;

/**
 * Delay (ms) before retry number `attempt` (1-based) of an exponential backoff with jitter, the
 * same formula as BullMQ's built-in `exponential` strategy with `jitter`
 * (https://docs.bullmq.io/guide/retrying-failing-jobs): the ceiling `baseMs · 2^(attempt−1)`,
 * of which a random fraction up to `jitter` is taken off, i.e. uniform in
 * `[ceiling · (1 − jitter), ceiling)`. Jitter spreads the retries of many nodes that failed
 * together (one Redis restart) so they do not retry in lockstep.
 * @param attempt - 1 for the first retry.
 * @param baseMs - Base delay, ms (≥ 0).
 * @param jitter - Fraction in [0, 1]; 0 = no jitter.
 * @param random - Uniform source in [0, 1). Default `Math.random`.
 * @returns A whole number of ms.
 * @throws RangeError for attempt < 1 or jitter outside [0, 1].
 */
export function backoffDelay(attempt: number, baseMs: number, jitter: number, random: () => number = Math.random): number {
  if (!Number.isSafeInteger(attempt) || attempt < 1) throw new RangeError('backoffDelay: attempt must be an integer ≥ 1');
  if (!(jitter >= 0 && jitter <= 1)) throw new RangeError('backoffDelay: jitter must be in [0, 1]');
  const ceiling = baseMs * 2 ** (attempt - 1);
  return Math.floor(ceiling * (1 - jitter) + random() * ceiling * jitter);
}

/** Job data of every inbox job: the serialized envelope. */
interface InboxJobData {
  env: string;
}

interface Outbox {
  items: ResourceUpdate[];
  bytes: number;
  timer: NodeJS.Timeout | undefined;
}

/** What this node knows of a peer's state, from its digests and from what it sent us. */
interface PeerKnowledge {
  /** Key → the peer's state vector as last known (digest, or merged with what it sent / we relayed). */
  sv: Map<string, Uint8Array>;
  /** When an anti-entropy message (tree or digest) of the peer was last processed. */
  digestAt: number | undefined;
  /** Tree paths whose last comparison showed the peer lacking content held > relayGraceMs (by {@link pathId}). */
  laggingPaths: Map<string, TreePath>;
  /**
   * Resource types anti-entropy with this peer covers, as last agreed: the intersection of what we
   * send it and what it sends us (learned from its messages); `null` until it sent one.
   */
  types: TypeFilter | null;
}

interface PeerLink {
  config: PeerConfig;
  /** Resource types this peer subscribes to = may receive (sorted, distinct), `undefined` = all. */
  sendTypes: TypeFilter;
  /** Resource types this peer may send us (sorted, distinct), `undefined` = all. */
  maySend: TypeFilter;
  /** Types anti-entropy with this peer starts from: may receive ∩ may send. */
  aeTypes: TypeFilter;
  /** `meta.security` labels withheld from this peer (empty = none). */
  withheld: LabelRule[];
  /**
   * The withheld rules that also hide a resource from the digest trees exchanged with this peer:
   * all but the built-in {@link REDACTED_LABEL_RULE}. A projection received here stays in the
   * trees, so its sender sees this node's state of it and does not resend it every round; it is
   * still never sent (docs/mappings.md "Redaction").
   */
  treeWithheld: LabelRule[];
  /** Set while the peer is quarantined (breach response). */
  quarantine: PeerQuarantine | undefined;
  knowledge: PeerKnowledge;
  /** Enqueue times (ms) of the envelopes in the send chain, oldest first (chain is FIFO). */
  sendTimes: number[];
  /** When the current outbox got its first update (ms), undefined when empty. */
  outboxSince: number | undefined;
  lastSentAt: number | undefined;
  lastReceivedAt: number | undefined;
  lastError: { at: number; message: string } | undefined;
  deliveryLagMs: number | undefined;
  counters: { sent: number; received: number; sendFailures: number; relayed: number; quarantined: number };
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
  /**
   * Refuses a signed message id seen before (ERR_REPLAY) or older than the replay window
   * (ERR_STALE, 7 days: a node back from a longer outage is repaired by anti-entropy instead).
   */
  readonly #replay = new ReplayGuard({ ttlMs: 7 * 24 * 3600 * 1000 });
  readonly #redisUrl: string;
  readonly #prefix: string;
  readonly #replica: Replica;
  readonly #log: TideLogger;
  /** Policy agreement with the peers (./policy.ts, docs/tide.md "Policy agreement"). */
  readonly #policy: PolicyAgreement;
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
  readonly #quarantineMax: number;
  readonly #quarantineMaxEnvBytes: number;
  readonly #keepCompleted: { age: number; count: number };
  readonly #keepFailed: { age: number; count: number };
  readonly #eventsMaxLen: number;
  readonly #relay: boolean;
  readonly #relayGraceMs: number;
  readonly #backoffJitter: number;
  readonly #random: () => number;
  readonly #digestLeafKeys: number;
  /** Key → its 32-bit tree key hash (SHA-256 prefix); cleared when it grows past 2^21 entries. */
  readonly #keyHashes = new Map<string, number>();
  readonly #audit: AuditLog;
  readonly #onRejection: ((event: TideRejectionEvent) => void) | undefined;
  /** Key → its `meta.security` labels as last read, with the state vector they were read at (null = unreadable: withhold). */
  readonly #labels = new Map<string, { sv: Uint8Array | undefined; at: number; labels: readonly SecurityLabel[] | null }>();
  /** Key → when this node last learned new content for it (ms); bounded by the keys held. */
  readonly #changedAt = new Map<string, number>();
  /** Plain ioredis client on the own Redis: quarantine list and readiness PING. */
  #localClient: Redis | undefined;
  readonly #lastWarn = new Map<string, number>();
  /** When each refusal (`sender|code|key`) was last quarantined, ms (see REFUSAL_REPEAT_MS). */
  readonly #refusedAt = new Map<string, number>();
  /** Set when stop() ran out of time: remaining sends are dropped. */
  #abandon = false;
  #starting: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  readonly #peerConfigs: PeerConfig[];
  readonly #peerKeys: ReadonlyMap<string, NodePublicKeys>;
  readonly #links = new Map<string, PeerLink>();
  /** Sends (seal + add) started and not finished, across all peers. */
  #inflight = 0;
  /** Keys given to {@link Tide.drop} (crypto-shredded): batches not sealed yet leave them out. */
  readonly #dropped = new Set<string>();
  #state: 'new' | 'starting' | 'running' | 'stopping' | 'stopped' = 'new';
  #inboxWorker: Worker<InboxJobData> | undefined;
  #inboxQueue: Queue<InboxJobData> | undefined;
  #controlWorker: Worker | undefined;
  #controlQueue: Queue | undefined;
  /** Periodic check that the own queues and the anti-entropy scheduler are still in Redis. */
  #watchdog: NodeJS.Timeout | undefined;
  /** The check in progress (one at a time). */
  #checking: Promise<boolean> | undefined;
  /** The fallback anti-entropy round in progress (one at a time). */
  #fallback: Promise<void> | undefined;
  /** When the last anti-entropy round completed (or the node started), ms since the epoch. */
  #lastAeRunAt = 0;
  /** True from a detected loss of the own queues until they are set up again (logged once per loss). */
  #queuesLost = false;
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
    aeSchedulerRestored: 0,
    aeFallbackRuns: 0,
    digestsReceived: 0,
    quarantined: {},
    updatesRelayed: 0,
    aeMessagesSent: 0,
    aeBytesSent: 0,
    aeTreeNodesSent: 0,
    aeDigestEntriesSent: 0,
    aeUpdatesQueued: 0,
    updatesWithheld: 0,
    updatesToQuarantinedPeers: 0,
    projectionUpdatesQueued: 0,
    projectedUpdatesDropped: 0,
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
    this.#policy = new PolicyAgreement(opts.policyDigests, opts.policyEnforcement);
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
    this.#quarantineMax = positiveInt('quarantineMaxEntries', opts.quarantineMaxEntries ?? 1000);
    this.#quarantineMaxEnvBytes = nonNegativeInt('quarantineMaxEnvelopeBytes', opts.quarantineMaxEnvelopeBytes ?? 2 * 1_048_576);
    this.#keepCompleted = { age: KEEP_COMPLETED_AGE_S, count: positiveInt('completedJobsKept', opts.completedJobsKept ?? 1000) };
    this.#keepFailed = { age: KEEP_FAILED_AGE_S, count: positiveInt('failedJobsBudget', opts.failedJobsBudget ?? 1000) };
    this.#eventsMaxLen = positiveInt('eventsMaxLen', opts.eventsMaxLen ?? 1000);
    this.#relay = opts.relay ?? true;
    this.#relayGraceMs = nonNegativeInt('relayGraceMs', opts.relayGraceMs ?? 5000);
    this.#backoffJitter = opts.backoffJitter ?? 0.5;
    if (!(this.#backoffJitter >= 0 && this.#backoffJitter <= 1)) throw new RangeError('Tide: backoffJitter must be in [0, 1]');
    this.#random = opts.random ?? Math.random;
    this.#digestLeafKeys = positiveInt('digestLeafKeys', opts.digestLeafKeys ?? 16);
    this.#audit = new AuditLog(positiveInt('auditMaxEvents', opts.auditMaxEvents ?? 500));
    this.#onRejection = opts.onRejection;

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
      if (peer.resourceTypes !== undefined) {
        if (!Array.isArray(peer.resourceTypes) || peer.resourceTypes.length === 0) {
          throw new TypeError(`Tide: peer ${peer.nodeId} resourceTypes must be a non-empty array (omit it for all types)`);
        }
        for (const t of peer.resourceTypes) {
          if (typeof t !== 'string' || !RESOURCE_TYPE_RE.test(t)) throw new TypeError(`Tide: peer ${peer.nodeId} has an invalid resource type ${JSON.stringify(t)}`);
        }
      }
      if (peer.maySend !== undefined) {
        if (!Array.isArray(peer.maySend)) throw new TypeError(`Tide: peer ${peer.nodeId} maySend must be an array (omit it for all types)`);
        for (const t of peer.maySend) {
          if (typeof t !== 'string' || !RESOURCE_TYPE_RE.test(t)) throw new TypeError(`Tide: peer ${peer.nodeId} maySend has an invalid resource type ${JSON.stringify(t)}`);
        }
      }
      if (peer.withheldLabels !== undefined) {
        if (!Array.isArray(peer.withheldLabels)) throw new TypeError(`Tide: peer ${peer.nodeId} withheldLabels must be an array`);
        for (const l of peer.withheldLabels) {
          try {
            parseLabelRule(l);
          } catch (err) {
            throw new TypeError(`Tide: peer ${peer.nodeId}: ${(err as Error).message}`);
          }
        }
        if (peer.withheldLabels.length > 0 && typeof this.#replica.securityLabels !== 'function') {
          throw new TypeError(`Tide: peer ${peer.nodeId} has withheldLabels but the replica has no securityLabels(key)`);
        }
      }
      keys.set(peer.nodeId, peer.publicKeys);
    }
    this.#peerConfigs = [...opts.peers];
    this.#peerKeys = keys;
    for (const config of this.#peerConfigs) {
      const sendTypes: TypeFilter = config.resourceTypes === undefined ? undefined : [...new Set<string>(config.resourceTypes)].sort();
      const maySend: TypeFilter = config.maySend === undefined ? undefined : [...new Set<string>(config.maySend)].sort();
      this.#links.set(config.nodeId, {
        config,
        sendTypes,
        maySend,
        aeTypes: intersectTypes(sendTypes, maySend),
        withheld: (config.withheldLabels ?? []).map((l) => parseLabelRule(l)),
        treeWithheld: (config.withheldLabels ?? []).filter((l) => l !== REDACTED_LABEL_RULE).map((l) => parseLabelRule(l)),
        quarantine: undefined,
        knowledge: { sv: new Map(), digestAt: undefined, laggingPaths: new Map(), types: null },
        sendTimes: [],
        outboxSince: undefined,
        lastSentAt: undefined,
        lastReceivedAt: undefined,
        lastError: undefined,
        deliveryLagMs: undefined,
        counters: { sent: 0, received: 0, sendFailures: 0, relayed: 0, quarantined: 0 },
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
   * `antiEntropyIntervalMs` ms (first run right away); with 0 the scheduler is removed. While
   * running, a check every `antiEntropyIntervalMs` sets the own queues and the scheduler up again
   * when the own Redis lost them (FLUSHALL, a restart without persistence), and runs a round
   * itself when none completed for 3 intervals (docs/tide.md "Failures").
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
      // BullMQ trims each queue's events stream to ~maxLen (XADD MAXLEN ~) on every event
      const streams = { events: { maxLen: this.#eventsMaxLen } };
      const local = new Redis(this.#redisUrl, {
        maxRetriesPerRequest: 1,
        retryStrategy: (times: number) => Math.min(250 * times, 5000),
        disconnectTimeout: 500,
      });
      local.on('error', (err: unknown) =>
        this.#warnRateLimited('rerr:local', { err: errText(err) }, 'tide: own Redis error'),
      );
      this.#localClient = local;
      for (const config of this.#peerConfigs) {
        // Our own ioredis client, so that a send can see synchronously whether the peer's Redis
        // is connected and fail fast instead of parking envelopes in ioredis' offline queue.
        const client = new Redis(config.redisUrl, {
          ...redisTlsOptions(config.redisUrl, config.redisTls),
          maxRetriesPerRequest: 1,
          retryStrategy: (times: number) => Math.min(250 * times, 5000),
          // ioredis waits disconnectTimeout (default 2 s) for a socket that never connected to close
          disconnectTimeout: 500,
        });
        client.on('error', (err: unknown) => {
          const link = this.#links.get(config.nodeId);
          if (link) link.lastError = { at: Date.now(), message: errText(err) };
          this.#warnRateLimited(`rerr:${config.nodeId}`, { peer: config.nodeId, err: errText(err) }, 'tide: peer Redis error');
        });
        const queue = new Queue<InboxJobData>(inboxQueueName(config.nodeId), { connection: client, prefix, streams });
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
      const inboxQueue = new Queue<InboxJobData>(inboxName, { connection: { url: this.#redisUrl }, prefix, streams });
      this.#inboxQueue = inboxQueue;
      inboxQueue.on('error', (err) =>
        this.#warnRateLimited('qerr:inbox', { err: errText(err) }, 'tide: inbox queue error'),
      );
      const inboxWorker = new Worker<InboxJobData>(inboxName, (job) => this.#processInbox(job), {
        connection: { url: this.#redisUrl },
        prefix,
        concurrency: 1,
        lockDuration: this.#lockDurationMs,
        removeOnComplete: this.#keepCompleted,
        removeOnFail: this.#keepFailed,
      });
      this.#inboxWorker = inboxWorker;
      inboxWorker.on('error', (err) =>
        this.#warnRateLimited('werr:inbox', { err: errText(err) }, 'tide: inbox worker error'),
      );
      inboxWorker.on('failed', (job, err) => this.#onInboxFailed(job, err));

      const controlName = controlQueueName(this.nodeId);
      const controlQueue = new Queue(controlName, { connection: { url: this.#redisUrl }, prefix, streams });
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
      await this.#loadPeerQuarantines(local);
      if (this.#aeIntervalMs > 0) {
        await this.#upsertScheduler(controlQueue);
        // A Redis that restarted without its data has lost the scheduler: put it back on every
        // reconnect of the own Redis (upsert is idempotent). Registered after the first 'ready'.
        local.on('ready', () => {
          if (this.#state !== 'running') return;
          this.#upsertScheduler(controlQueue).catch((err: unknown) =>
            this.#warnRateLimited('sched', { err: errText(err) }, 'tide: re-creating the anti-entropy scheduler failed'),
          );
        });
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
    this.#lastAeRunAt = Date.now();
    if (this.#aeIntervalMs > 0) {
      // A Redis that lost its data without a reconnect (FLUSHALL, a failover to an empty replica)
      // loses the scheduler silently: check every interval, and run a round here when none ran.
      this.#watchdog = setInterval(() => void this.#checkQueues(), Math.max(250, this.#aeIntervalMs));
      this.#watchdog.unref();
    }
    // Updates published between construction and start() are sent now.
    for (const peerId of this.#links.keys()) this.#scheduleOrSend(peerId);
    this.#log.info({ node: this.nodeId, peers: this.#links.size }, 'tide: started');
  }

  /**
   * Checks that the own queues are set up in Redis: the inbox and control queues' meta hashes
   * (BullMQ `Queue.getVersion()` is null without them) and, when scheduled, the anti-entropy job
   * scheduler (`getJobScheduler`). What is missing is set up again: the meta hashes by opening a
   * fresh Queue handle (BullMQ writes them on init), the scheduler by `upsertJobScheduler`; each
   * restoration is counted (`aeSchedulerRestored`) and logged once per loss. When no round
   * completed for 3 × `antiEntropyIntervalMs` (the scheduled job lost, or its worker stuck), one is
   * run here (`aeFallbackRuns`). One check at a time; never throws.
   * @returns true when the queues were set up at the time of the check.
   */
  #checkQueues(): Promise<boolean> {
    this.#checking ??= this.#checkQueuesNow().finally(() => {
      this.#checking = undefined;
    });
    return this.#checking;
  }

  async #checkQueuesNow(): Promise<boolean> {
    const inbox = this.#inboxQueue;
    const control = this.#controlQueue;
    if (this.#state !== 'running' || !inbox || !control) return false;
    const bound = Math.max(1000, Math.min(this.#aeIntervalMs || 5000, 5000));
    let ok: boolean;
    try {
      const [inboxMeta, controlMeta, scheduler] = await withTimeout(
        Promise.all([
          inbox.getVersion(),
          control.getVersion(),
          this.#aeIntervalMs > 0 ? control.getJobScheduler(AE_SCHEDULER_ID) : Promise.resolve(true),
        ]),
        bound,
        'queue check timed out',
      );
      ok = inboxMeta !== null && controlMeta !== null && scheduler !== undefined;
    } catch (err) {
      this.#warnRateLimited('qcheck', { err: errText(err) }, 'tide: checking the own queues failed');
      return false;
    }
    if (!ok) {
      if (!this.#queuesLost) {
        this.#queuesLost = true;
        this.#log.warn({ node: this.nodeId }, 'tide: own queues and anti-entropy scheduler lost (Redis lost its data?); setting them up again');
      }
      try {
        await withTimeout(this.#restoreQueues(), bound * 2, 'restoring the queues timed out');
        this.#stats.aeSchedulerRestored++;
        this.#queuesLost = false;
        this.#log.info({ node: this.nodeId }, 'tide: own queues and anti-entropy scheduler set up again');
      } catch (err) {
        this.#warnRateLimited('qrestore', { err: errText(err) }, 'tide: setting up the own queues failed');
      }
    }
    if (this.#aeIntervalMs > 0 && this.#fallback === undefined && Date.now() - this.#lastAeRunAt > 3 * this.#aeIntervalMs) {
      // not awaited: a round must not hold up the check (health() waits for it)
      this.#fallback = this.#fallbackRound(control, ok).finally(() => {
        this.#fallback = undefined;
      });
    }
    return ok;
  }

  /** A round run by the node itself when no scheduled one ran for 3 intervals (see {@link #checkQueues}). */
  async #fallbackRound(control: Queue, schedulerPresent: boolean): Promise<void> {
    if (this.#state !== 'running') return;
    this.#stats.aeFallbackRuns++;
    this.#warnRateLimited('aefallback', { node: this.nodeId }, 'tide: no scheduled anti-entropy round ran for 3 intervals; running one locally');
    try {
      if (schedulerPresent) await this.#upsertScheduler(control); // puts back a lost next job of an existing scheduler
      if (this.#state === 'running') await this.runAntiEntropy();
    } catch (err) {
      this.#warnRateLimited('aefallback-err', { err: errText(err) }, 'tide: local anti-entropy round failed');
    }
  }

  /** Writes the inbox and control queues' meta hashes again and re-registers the scheduler. */
  async #restoreQueues(): Promise<void> {
    const streams = { events: { maxLen: this.#eventsMaxLen } };
    for (const name of [inboxQueueName(this.nodeId), controlQueueName(this.nodeId)]) {
      const q = new Queue(name, { connection: { url: this.#redisUrl }, prefix: this.#prefix, streams });
      q.on('error', () => {});
      try {
        await q.getVersion(); // resolves after the meta hash is written
      } finally {
        await q.close().catch(() => {});
      }
    }
    if (this.#aeIntervalMs > 0 && this.#controlQueue) await this.#upsertScheduler(this.#controlQueue);
  }

  /** `upsertJobScheduler` of the anti-entropy job (https://docs.bullmq.io/guide/job-schedulers). */
  async #upsertScheduler(controlQueue: Queue): Promise<void> {
    await controlQueue.upsertJobScheduler(
      AE_SCHEDULER_ID,
      { every: this.#aeIntervalMs },
      { name: AE_SCHEDULER_ID, data: {}, opts: { removeOnComplete: true, removeOnFail: { count: 100 } } },
    );
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
    const deadline = Date.now() + this.#stopTimeoutMs;
    const left = (): number => Math.max(0, deadline - Date.now());
    // 1. stop taking work: workers finish the job in progress. Bounded: BullMQ's close() can hang
    //    while Redis is unreachable; then the workers are force-closed and the active job's lock
    //    expires, so BullMQ's stalled-job check hands it back to the next worker.
    const workers = [this.#controlWorker, this.#inboxWorker].filter((w): w is Worker => w !== undefined);
    const closedWorkers = Promise.allSettled(workers.map((w) => w.close())).then(() => true);
    if (!(await Promise.race([closedWorkers, sleep(left() / 2, false, { ref: false })]))) {
      this.#log.warn({ node: this.nodeId }, 'tide: workers did not close in time; forcing');
      // close(true) returns the pending close() when one runs, so drop the sockets directly
      await Promise.allSettled(workers.map((w) => hardDisconnect(w)));
    }
    // 2. send what is pending, for what is left of the budget
    const drained = this.#drainOutgoing().then(() => true);
    if (!(await Promise.race([drained, sleep(left(), false, { ref: false })]))) {
      this.#abandon = true; // unsent batches are dropped; anti-entropy repairs them
      this.#log.warn({ node: this.nodeId, pending: this.#inflight }, 'tide: stop timed out sending, dropping the rest');
    }
    // 3. close every connection (each close bounded; a hung one is disconnected)
    await this.#closeAll(Math.max(250, left()));
    // in-flight adds fail once their connections are closed; wait briefly for the chains to settle
    await Promise.race([drained.catch(() => false), sleep(Math.min(500, Math.max(50, left())), false, { ref: false })]);
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
   * re-published (every node sends to every peer; Tide itself relays to lagging peers under the
   * relay rule, and anti-entropy covers the rest).
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
    const now = Date.now();
    for (const u of updates) this.#changedAt.set(u.key, now);
    for (const peerId of this.#links.keys()) this.#enqueue(peerId, updates, 'shared');
  }

  /**
   * Queues projection updates (docs/mappings.md "Redaction") for one projection peer only, batched
   * like {@link Tide.publish}. Only keys of types the peer's `projection` projects are kept, and
   * only when the shared resource's labels are not withheld from the peer.
   * @param peerId - a configured peer with a `projection`.
   * @param updates - Yjs updates of the peer's projection documents (`key` `'Type/id'`, non-empty bytes).
   * @throws TypeError for an unknown peer, a peer without projection, an invalid key or update (nothing queued); Error when stopping/stopped.
   */
  publishTo(peerId: string, updates: ResourceUpdate[]): void {
    if (this.#state === 'stopping' || this.#state === 'stopped') {
      throw new Error(`Tide ${this.nodeId}: publishTo() after stop()`);
    }
    const link = this.#links.get(peerId);
    if (!link) throw new TypeError(`Tide: ${JSON.stringify(peerId)} is not a configured peer`);
    const projection = link.config.projection;
    if (!projection) throw new TypeError(`Tide: peer ${peerId} has no projection`);
    for (const u of updates) {
      if (!isResourceKey(u.key)) throw new TypeError(`Tide.publishTo: invalid resource key ${JSON.stringify(u.key)}`);
      if (!(u.update instanceof Uint8Array) || u.update.length === 0) {
        throw new TypeError(`Tide.publishTo: update of ${u.key} must be non-empty Uint8Array`);
      }
    }
    const types = projection.types();
    const kept = updates.filter((u) => types.has(typeOfKey(u.key)));
    if (kept.length === 0) return;
    this.#stats.projectionUpdatesQueued += kept.length;
    this.#enqueue(peerId, kept, 'sourced');
  }

  /**
   * True when the link's peer gets `key` as a projection (its `projection` projects the key's type).
   */
  #projected(link: PeerLink, key: string): boolean {
    const p = link.config.projection;
    return p !== undefined && p.types().has(typeOfKey(key));
  }

  /**
   * What anti-entropy with the link's peer compares and repairs from: the shared replica, or for a
   * projection peer the shared replica for the other types and the projection source for the projected ones.
   */
  #viewOf(link: PeerLink): Pick<Replica, 'keys' | 'stateVector' | 'diffFor'> {
    const projection: ProjectionSource | undefined = link.config.projection;
    if (projection === undefined || projection.types().size === 0) return this.#replica;
    const shared = this.#replica;
    const projected = (key: string): boolean => projection.types().has(typeOfKey(key));
    // A projection store that cannot be read (e.g. its key vault under a retired key) fails closed:
    // nothing of the projected types is compared or sent, the other types go on, and the peer's
    // `lastError` says why (rate-limited warning).
    const failed = (err: unknown): undefined => {
      link.lastError = { at: Date.now(), message: `projection store: ${errText(err)}` };
      this.#warnRateLimited(`proj:${link.config.nodeId}`, { peer: link.config.nodeId, err: errText(err) }, 'tide: projection store unavailable; projected types not compared or sent to this peer');
      return undefined;
    };
    const guard = <T>(f: () => T): T | undefined => {
      try {
        return f();
      } catch (err) {
        return failed(err);
      }
    };
    return {
      *keys() {
        for (const k of shared.keys()) if (!projected(k)) yield k;
        try {
          for (const k of projection.keys()) if (projected(k)) yield k;
        } catch (err) {
          failed(err);
        }
      },
      stateVector: (key) => (projected(key) ? guard(() => projection.stateVector(key)) : shared.stateVector(key)),
      diffFor: (key, sv) => (projected(key) ? guard(() => projection.diffFor(key, sv)) : shared.diffFor(key, sv)),
    };
  }

  /**
   * Drops the outgoing updates of `keys` that wait in memory (crypto-shredding, src/store/shred.ts):
   * those in every peer's batch still within its batch delay, and those of batches taken for sending
   * but not sealed yet (they are left out when sealed; a batch left empty is not sent). Envelopes
   * already sealed to a peer are not recalled. This process keeps the keys and leaves them out of
   * every later batch too (a shredded key is tombstoned; nothing should publish it again).
   * @param keys - `Type/id` keys.
   * @returns Updates removed from the waiting batches (not counting those left out at sealing).
   */
  drop(keys: ReadonlySet<string>): number {
    let n = 0;
    for (const k of keys) this.#dropped.add(k);
    for (const link of this.#links.values()) {
      const box = link.outbox;
      const kept = box.items.filter((u) => !keys.has(u.key));
      if (kept.length === box.items.length) continue;
      n += box.items.length - kept.length;
      box.items = kept;
      box.bytes = kept.reduce((b, u) => b + u.key.length + u.update.length, 0);
      if (kept.length === 0) {
        link.outboxSince = undefined;
        if (box.timer !== undefined) clearTimeout(box.timer);
        box.timer = undefined;
      }
    }
    return n;
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
   * One anti-entropy round: sends each peer one sealed `ae-tree` message holding the root of this
   * node's digest tree (count and SHA-256 over the per-resource (key, state vector) leaf hashes,
   * see ./tree.ts) over the resource types agreed with that peer. Where the peer's tree differs,
   * the two nodes descend alternately, exchanging only the child summaries of differing nodes,
   * down to buckets of at most `digestLeafKeys` keys, whose (key, state vector) entries they then
   * exchange as `ae-digest` / `ae-reply`, and finally send each other only the missing Yjs updates.
   * Converged nodes exchange one message per peer per round. Resolves once the roots are
   * enqueued. Also run by the job scheduler.
   * @throws Error when the Tide is not running.
   */
  async runAntiEntropy(): Promise<void> {
    if (this.#state !== 'running') throw new Error(`Tide ${this.nodeId}: runAntiEntropy() when ${this.#state}`);
    const roots = new Map<string, TreeNode>();
    const sends: Promise<void>[] = [];
    const enforcing = this.#policy.enforcing; // fail-closed policy agreement: each peer's tree is its own
    for (const [peerId, link] of this.#links) {
      if (link.quarantine) continue; // nothing is exchanged with a quarantined peer
      const types = link.knowledge.types ?? link.aeTypes;
      // peers with withheld labels get a tree without the resources withheld from them
      // a projection peer's tree is its own (projected types come from its projection source)
      const fid = `${types === undefined ? '*' : types.join(',')}#${link.treeWithheld.map(ruleText).join(',')}${link.config.projection && link.config.projection.types().size > 0 ? `#projection:${peerId}` : ''}${enforcing ? `#policy:${peerId}` : ''}`;
      let root = roots.get(fid);
      if (!root) {
        root = this.#tree(types, undefined, this.#excluder(link), this.#viewOf(link)).node(ROOT_PATH);
        roots.set(fid, root);
      }
      sends.push(this.#sendTree(peerId, types, [root]));
      // policy digests (./policy.ts): to capable peers every round, to the others once per start
      const policy = this.#policy.outgoing(peerId);
      if (policy !== undefined) sends.push(this.#send(peerId, 'ae-policy', [], encodePolicy(policy), 0));
    }
    await Promise.all(sends);
    this.#stats.antiEntropyRuns++;
    this.#lastAeRunAt = Date.now();
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
    return { ...this.#stats, rejected: { ...this.#stats.rejected }, quarantined: { ...this.#stats.quarantined } };
  }

  /**
   * Per-peer status, in configuration order (see {@link PeerStatus}; times in ms since the epoch,
   * durations in ms). Synchronous and cheap: reads in-memory counters only (no Redis call).
   */
  peers(): PeerStatus[] {
    const now = Date.now();
    const out: PeerStatus[] = [];
    for (const [nodeId, l] of this.#links) {
      let status: PeerStatus['status'];
      if (this.#state !== 'running') status = 'stopped';
      else if (now < l.downUntil) status = 'down';
      else if (l.client?.status !== 'ready') status = 'connecting';
      else status = 'up';
      const oldest = Math.min(l.outboxSince ?? Infinity, l.sendTimes[0] ?? Infinity);
      const contact = Math.max(l.lastSentAt ?? -Infinity, l.lastReceivedAt ?? -Infinity);
      out.push({
        nodeId,
        status,
        lastContactAt: Number.isFinite(contact) ? contact : undefined,
        lastSentAt: l.lastSentAt,
        lastReceivedAt: l.lastReceivedAt,
        backlogUpdates: l.outbox.items.length,
        backlogMessages: l.queued,
        oldestUnsentMs: Number.isFinite(oldest) ? Math.max(0, now - oldest) : 0,
        deliveryLagMs: l.deliveryLagMs,
        lastError: l.lastError ? { ...l.lastError } : undefined,
        quarantined: l.counters.quarantined,
        messagesSent: l.counters.sent,
        messagesReceived: l.counters.received,
        sendFailures: l.counters.sendFailures,
        updatesRelayed: l.counters.relayed,
        lastDigestAt: l.knowledge.digestAt,
        lagging: isLagging(l),
        resourceTypes: l.sendTypes === undefined ? undefined : [...l.sendTypes],
        maySend: l.maySend === undefined ? undefined : [...l.maySend],
        withheldLabels: l.withheld.map(ruleText),
        projectedTypes: [...(l.config.projection?.types() ?? [])].sort(),
        quarantine: l.quarantine ? { ...l.quarantine } : undefined,
        policy: this.#policy.status(nodeId),
      });
    }
    return out;
  }

  /**
   * Readiness: PINGs the own Redis (bounded by `timeoutMs`), checks that the inbox worker
   * (and the control worker, when scheduled) is running and not paused (BullMQ
   * `Worker.isRunning()` / `isPaused()`), and that the own queues are set up in Redis (queue meta
   * hashes and the anti-entropy job scheduler; `queues`, bounded by `timeoutMs`). Missing queues
   * are set up again by the same check, so a later call can be ready. Never throws.
   * @param timeoutMs - PING bound, ms. Default 1000.
   */
  async health(timeoutMs = 1000): Promise<TideHealth> {
    const state = this.#state;
    let redis = false;
    let redisLatencyMs: number | undefined;
    const client = this.#localClient;
    if (client && client.status === 'ready') {
      const t0 = performance.now();
      try {
        redis = (await withTimeout(client.ping(), timeoutMs, 'ping timed out')) === 'PONG';
        redisLatencyMs = performance.now() - t0;
      } catch {
        redis = false;
      }
    }
    const running = (w: Worker | undefined): boolean => w !== undefined && w.isRunning() && !w.isPaused();
    const workers = running(this.#inboxWorker) && (this.#aeIntervalMs === 0 || running(this.#controlWorker));
    // a Redis that lost its data answers PING but holds none of the queues: not ready (and the
    // check sets them up again, so a later call can say ready)
    let queues = false;
    if (redis && state === 'running') {
      const check = this.#checkQueues();
      queues = await withTimeout(check, timeoutMs, 'queue check timed out').catch(() => false);
    }
    return { ready: state === 'running' && redis && workers && queues, state, redis, redisLatencyMs, workers, queues };
  }

  /** The bounded in-memory log of quarantine AuditEvents (FHIR R4), newest first. */
  get auditLog(): AuditLog {
    return this.#audit;
  }

  /** Redis key of this node's quarantine list (on its own Redis): `<prefix>:quarantine-<nodeId>`. */
  get quarantineKey(): string {
    return `${this.#prefix}:quarantine-${this.nodeId}`;
  }

  /**
   * The newest quarantine entries from Redis (LRANGE), newest first. Each is a
   * {@link QuarantineRecord} plus `envelopeDropped` and, when `withEnvelope`, the sealed envelope
   * `env` (never plaintext).
   * @param limit - At most this many (default 100).
   * @param withEnvelope - Include the sealed envelope string. Default false.
   * @throws Error when not started or Redis fails.
   */
  async quarantined(limit = 100, withEnvelope = false): Promise<(QuarantineRecord & { envelopeDropped: boolean; env?: string })[]> {
    const client = this.#localClient;
    if (!client) throw new Error(`Tide ${this.nodeId}: quarantined() before start()`);
    const raw = await client.lrange(this.quarantineKey, 0, Math.max(0, limit - 1));
    return raw.map((line) => {
      const e = JSON.parse(line) as QuarantineRecord & { envelopeDropped: boolean; env?: string };
      if (!withEnvelope) delete e.env;
      return e;
    });
  }

  // ---------------------------------------------------------------- peer authorization

  /** Redis hash (own Redis) of quarantined peers: field = peer id, value = JSON {@link PeerQuarantine}. */
  get peerQuarantineKey(): string {
    return `${this.#prefix}:peer-quarantine-${this.nodeId}`;
  }

  /**
   * Quarantines a configured peer (breach response, docs/security.md "Breach detection"): from now
   * on its inbox messages are refused (`ERR_PEER_QUARANTINED`, quarantined and audited, never
   * applied), nothing more is sent to it (outbox dropped, no relay, no anti-entropy) until
   * {@link Tide.releasePeer}. Takes effect at once in memory; kept in the own Redis hash
   * {@link Tide.peerQuarantineKey} so that a restart does not release it. Idempotent (the first
   * `since`/`reason` stay).
   * @param peerId - A configured peer id.
   * @param reason - Why (signal or reason code; no PHI), at most 200 characters kept.
   * @returns True when the peer was not quarantined before.
   * @throws TypeError for an unknown peer; Error from Redis when persisting fails (the in-memory quarantine stays).
   */
  async quarantinePeer(peerId: string, reason: string): Promise<boolean> {
    const link = this.#links.get(peerId);
    if (!link) throw new TypeError(`Tide: ${JSON.stringify(peerId)} is not a configured peer`);
    if (link.quarantine) return false;
    link.quarantine = { since: Date.now(), reason: String(reason).slice(0, 200) };
    // drop what waits for it
    if (link.outbox.timer !== undefined) clearTimeout(link.outbox.timer);
    link.outbox.timer = undefined;
    this.#stats.updatesToQuarantinedPeers += link.outbox.items.length;
    link.outbox = { items: [], bytes: 0, timer: undefined };
    link.outboxSince = undefined;
    this.#log.error({ node: this.nodeId, peer: peerId, reason: link.quarantine.reason, alert: 'peer-quarantined' }, 'tide: peer quarantined');
    const client = this.#localClient;
    if (client && client.status === 'ready') {
      await withTimeout(client.hset(this.peerQuarantineKey, peerId, JSON.stringify(link.quarantine)), this.#sendTimeoutMs, 'peer quarantine write timed out');
    }
    return true;
  }

  /**
   * Releases a quarantined peer: its messages are accepted again and sends resume (what it missed is
   * repaired by anti-entropy; messages refused while quarantined stay in the message quarantine).
   * @param peerId - A configured peer id.
   * @returns True when it was quarantined.
   * @throws TypeError for an unknown peer; Error from Redis when the persisted entry cannot be removed (then it stays quarantined).
   */
  async releasePeer(peerId: string): Promise<boolean> {
    const link = this.#links.get(peerId);
    if (!link) throw new TypeError(`Tide: ${JSON.stringify(peerId)} is not a configured peer`);
    const client = this.#localClient;
    if (client) await withTimeout(client.hdel(this.peerQuarantineKey, peerId), this.#sendTimeoutMs, 'peer quarantine delete timed out');
    const was = link.quarantine !== undefined;
    link.quarantine = undefined;
    if (was) this.#log.warn({ node: this.nodeId, peer: peerId }, 'tide: peer released from quarantine');
    return was;
  }

  /** The peer's quarantine, or undefined when it is not quarantined (or not configured). */
  peerQuarantine(peerId: string): PeerQuarantine | undefined {
    const q = this.#links.get(peerId)?.quarantine;
    return q ? { ...q } : undefined;
  }

  /** Loads persisted peer quarantines (entries of peers no longer configured are ignored); writes those set before start. */
  async #loadPeerQuarantines(client: Redis): Promise<void> {
    const saved = await client.hgetall(this.peerQuarantineKey);
    for (const [peerId, text] of Object.entries(saved)) {
      const link = this.#links.get(peerId);
      if (!link || link.quarantine) continue;
      try {
        const q = JSON.parse(text) as PeerQuarantine;
        link.quarantine = { since: Number(q.since) || Date.now(), reason: String(q.reason ?? 'unknown').slice(0, 200) };
      } catch {
        link.quarantine = { since: Date.now(), reason: 'unreadable quarantine entry' };
      }
    }
    for (const [peerId, link] of this.#links) {
      if (link.quarantine && saved[peerId] === undefined) await client.hset(this.peerQuarantineKey, peerId, JSON.stringify(link.quarantine));
    }
  }

  /**
   * The resource's `meta.security` labels (replica.securityLabels), cached while its state vector is
   * unchanged and for at most {@link LABEL_CACHE_MS}; null when they cannot be read.
   */
  #labelsOf(key: string): readonly SecurityLabel[] | null {
    const now = Date.now();
    const sv = this.#replica.stateVector(key);
    const hit = this.#labels.get(key);
    if (hit && now - hit.at < LABEL_CACHE_MS && (hit.sv === sv || (hit.sv !== undefined && sv !== undefined && Buffer.compare(hit.sv, sv) === 0))) return hit.labels;
    let labels: readonly SecurityLabel[] | null;
    try {
      labels = this.#replica.securityLabels?.(key) ?? [];
    } catch (err) {
      this.#warnRateLimited('labels', { err: errText(err) }, 'tide: reading security labels failed; resource withheld');
      return null;
    }
    if (this.#labels.size >= LABEL_CACHE_MAX) this.#labels.clear();
    this.#labels.set(key, { sv, at: now, labels });
    return labels;
  }

  /**
   * Forgets the cached security labels (see `replica.securityLabels`) of `keys`, or of every key
   * when absent, so the next send or anti-entropy round reads them again. Call it when the labels
   * of a resource change without its document changing: a mapping reload (new routes) or a Consent
   * written for the patient of a compartment. Synchronous; throws nothing.
   * @param keys - resource keys (`Type/id`); absent = all.
   */
  invalidateLabels(keys?: Iterable<string>): void {
    if (keys === undefined) this.#labels.clear();
    else for (const k of keys) this.#labels.delete(k);
  }

  /**
   * May `peerId` receive `key` now: it is configured, subscribes to the key's type, and the shared
   * resource carries no label withheld from it (route, Consent, `withheldLabels`; fail closed when
   * they cannot be read). The projection feeds (src/mapping/projection.ts) ask it before writing a
   * projection. Quarantine is not considered (it pauses sending, not what a peer may get).
   * @param peerId - a peer node id.
   * @param key - `Type/id`.
   */
  mayReceive(peerId: string, key: string): boolean {
    const link = this.#links.get(peerId);
    return link !== undefined && typeAllowed(key, link.sendTypes) && !this.#withheldFrom(link, key);
  }

  /** True when `key` must not be sent to the link's peer: its labels match a withheld rule, or cannot be read (fail closed). */
  #withheldFrom(link: PeerLink, key: string, rules: readonly LabelRule[] = link.withheld): boolean {
    // fail-closed policy agreement (./policy.ts): kept from a peer that may apply other rules to a third
    if (this.#policy.enforcing && this.#policy.blocks(link.config.nodeId, typeOfKey(key))) return true;
    if (rules.length === 0) return false;
    const labels = this.#labelsOf(key);
    return labels === null || labelsWithheld(labels, rules);
  }

  /** Tree exclusion for a peer with withheld labels (undefined when it has none): its `treeWithheld` rules. */
  #excluder(link: PeerLink): ((key: string) => boolean) | undefined {
    return link.treeWithheld.length === 0 && !this.#policy.enforcing ? undefined : (key) => this.#withheldFrom(link, key, link.treeWithheld);
  }

  // ---------------------------------------------------------------- sending

  /**
   * Queues updates for one peer, keeping only what it may receive: the resource types it
   * subscribes to, and no resource carrying a label withheld from it. Nothing for a quarantined peer.
   */
  #enqueue(peerId: string, updates: readonly ResourceUpdate[], origin: 'shared' | 'sourced'): void {
    const link = this.#links.get(peerId);
    if (!link) return;
    if (link.quarantine) {
      this.#stats.updatesToQuarantinedPeers += updates.length;
      return;
    }
    const box = link.outbox;
    for (const u of updates) {
      if (!typeAllowed(u.key, link.sendTypes)) continue;
      // a projection peer never gets shared updates of a projected type (only its projection)
      if (origin === 'shared' && this.#projected(link, u.key)) continue;
      if (this.#withheldFrom(link, u.key)) {
        this.#stats.updatesWithheld++;
        continue;
      }
      if (box.items.length === 0) link.outboxSince = Date.now();
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
    let items = box.items;
    box.items = [];
    box.bytes = 0;
    link.outboxSince = undefined;
    if (link.quarantine) {
      this.#stats.updatesToQuarantinedPeers += items.length;
      return;
    }
    if (link.withheld.length > 0) {
      // judged again at send time: a label added since the update was queued withholds it too
      const before = items.length;
      items = items.filter((u) => !this.#withheldFrom(link, u.key));
      this.#stats.updatesWithheld += before - items.length;
      if (items.length === 0) return;
    }
    // Normally one batch; more only if updates piled up before start() or past the limits.
    let batch: ResourceUpdate[] = [];
    let bytes = 0;
    const flushBatch = (): void => {
      if (batch.length === 0) return;
      const merged = mergeByKey(batch);
      const resources = [...new Set(merged.map((u) => u.key))];
      void this.#send(peerId, 'updates', resources, () => encodeUpdates(merged), merged.length, merged);
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
    sentUpdates?: readonly ResourceUpdate[],
  ): Promise<void> {
    const link = this.#links.get(peerId);
    if (!link) return Promise.resolve();
    if (link.queued >= MAX_QUEUED_SENDS_PER_PEER) {
      this.#stats.sendFailures++;
      link.counters.sendFailures++;
      this.#warnRateLimited(`backlog:${peerId}`, { peer: peerId, kind }, 'tide: peer backlog full, message dropped');
      return Promise.resolve();
    }
    link.queued++;
    link.sendTimes.push(Date.now());
    this.#inflight++;
    const run = async (): Promise<void> => {
      if (Date.now() < link.downUntil || this.#abandon) {
        this.#stats.sendFailures++;
        link.counters.sendFailures++;
        this.#warnRateLimited(`down:${peerId}`, { peer: peerId, kind }, 'tide: peer down, message dropped');
        return;
      }
      // yield first, so that publish() and the inbox job never pay for sealing
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (sentUpdates && this.#dropped.size > 0 && sentUpdates.some((u) => this.#dropped.has(u.key))) {
        // Crypto-shredded while this batch waited in the chain (drop()): leave those keys out.
        const kept = sentUpdates.filter((u) => !this.#dropped.has(u.key));
        if (kept.length === 0) return;
        sentUpdates = kept;
        resources = resources.filter((k) => !this.#dropped.has(k));
        plaintext = () => encodeUpdates(kept);
        updateCount = kept.length;
      }
      if (sentUpdates && kind === 'updates' && (link.withheld.length > 0 || this.#policy.enforcing)) {
        // Judged again at seal time: a label (or route, or Consent decision, or mapping reload)
        // that changed while this batch waited in the peer's chain withholds it too.
        const kept = sentUpdates.filter((u) => !this.#withheldFrom(link, u.key));
        if (kept.length < sentUpdates.length) {
          this.#stats.updatesWithheld += sentUpdates.length - kept.length;
          if (kept.length === 0) return;
          sentUpdates = kept;
          const keys = new Set(kept.map((u) => u.key));
          resources = resources.filter((k) => keys.has(k));
          plaintext = () => encodeUpdates(kept);
          updateCount = kept.length;
        }
      }
      const messageId = randomUUID();
      let env: string;
      try {
        const pt = typeof plaintext === 'function' ? plaintext() : plaintext;
        env = await this.#crypto.seal({ kind, messageId, resources, plaintext: pt }, this.#self, link.config.publicKeys);
      } catch (err) {
        this.#stats.sendFailures++;
        link.counters.sendFailures++;
        link.lastError = { at: Date.now(), message: `seal failed: ${errText(err)}` };
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
            backoff: { type: 'exponential', delay: this.#backoffMs, jitter: this.#backoffJitter },
            removeOnComplete: this.#keepCompleted,
            removeOnFail: this.#keepFailed,
          });
          await withTimeout(added, this.#sendTimeoutMs, 'queue.add timed out');
          link.downUntil = 0;
          link.lastSentAt = Date.now();
          link.counters.sent++;
          if (sentUpdates) for (const u of sentUpdates) this.#learn(link, u.key, u.update);
          this.#stats.messagesSent++;
          this.#stats.bytesSent += env.length;
          this.#stats.updatesSent += updateCount;
          if (kind !== 'updates') {
            this.#stats.aeMessagesSent++;
            this.#stats.aeBytesSent += env.length;
          }
          return;
        } catch (err) {
          link.lastError = { at: Date.now(), message: errText(err) };
          if (attempt >= this.#attempts || this.#abandon) {
            this.#stats.sendFailures++;
            link.counters.sendFailures++;
            link.downUntil = Date.now() + this.#peerDownMs;
            this.#log.error(
              { peer: peerId, kind, messageId, attempt, err: errText(err) },
              'tide: giving up sending; peer marked down, anti-entropy will repair',
            );
            return;
          }
          this.#log.warn({ peer: peerId, kind, messageId, attempt, err: errText(err) }, 'tide: send failed, retrying');
          await sleep(backoffDelay(attempt, this.#backoffMs, this.#backoffJitter, this.#random));
        }
      }
    };
    const p = link.chain.then(run).finally(() => {
      link.sendTimes.shift();
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

  /** Closes every queue, worker and connection; each close() bounded by `closeMs`, then disconnected. */
  async #closeAll(closeMs = 2000): Promise<void> {
    if (this.#watchdog !== undefined) clearInterval(this.#watchdog);
    this.#watchdog = undefined;
    for (const l of this.#links.values()) {
      if (l.outbox.timer !== undefined) clearTimeout(l.outbox.timer);
      l.outbox.timer = undefined;
    }
    const closing: Promise<unknown>[] = [];
    /** close(), or disconnect() when close() does not finish within closeMs (Redis unreachable). */
    const bounded = (c: Queue | Worker): Promise<unknown> =>
      withTimeout(c.close(), closeMs, 'close timed out').catch(() => hardDisconnect(c));
    if (this.#controlWorker) closing.push(bounded(this.#controlWorker));
    if (this.#inboxWorker) closing.push(bounded(this.#inboxWorker));
    if (this.#controlQueue) closing.push(bounded(this.#controlQueue));
    if (this.#inboxQueue) closing.push(bounded(this.#inboxQueue));
    if (this.#localClient) closing.push(closeClient(this.#localClient));
    for (const l of this.#links.values()) {
      // the peer client is ours (BullMQ does not close connections it was given)
      const { client, queue } = l;
      closing.push(
        (async () => {
          try {
            if (queue) await withTimeout(queue.close(), closeMs, 'close timed out');
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
   * job id that is not the signed messageId, an unknown kind, undecodable plaintext, a refusal
   * thrown by `replica.applyRemote` (an error with `refused: true`, its `code` and `key`, e.g.
   * src/merge/skew.ts `RefusedUpdateError`). Retried: any other error thrown by `replica.applyRemote`.
   */
  async #processInbox(job: Job<InboxJobData>): Promise<void> {
    try {
      await this.#handleInbox(job);
    } catch (err) {
      if (!(err instanceof Rejection)) throw err;
      // never applied, never retried: recorded in the quarantine, then to the failed set
      await this.#quarantine(job, err.code, err.sender, err.verified, err.kind);
      throw new UnrecoverableError(err.code);
    }
  }

  async #handleInbox(job: Job<InboxJobData>): Promise<void> {
    const env: unknown = job.data?.env;
    if (typeof env !== 'string') this.#reject(job, 'ERR_ENVELOPE_MALFORMED');
    let opened: OpenResult;
    try {
      opened = await this.#crypto.open(env, this.#self, this.#peerKeys);
    } catch (err) {
      // the header is unverified here: it only names the claimed sender in the quarantine record
      let claimed: { sender?: string; kind?: string } = {};
      try {
        claimed = peekHeader(env);
      } catch {
        // unreadable header
      }
      const code = err instanceof EnvelopeError ? err.code : 'ERR_ENVELOPE_MALFORMED';
      // ERR_DECRYPT_FAILED is raised after the signature verified (docs/envelope.md): the sender is authentic
      this.#reject(job, code, claimed.sender, code === 'ERR_DECRYPT_FAILED', claimed.kind);
    }
    const { header, plaintext } = opened;
    const sender = header.sender;
    if (header.recipient !== this.nodeId) this.#reject(job, 'ERR_NOT_FOR_THIS_NODE', sender, true, header.kind);
    if (header.messageId !== job.id) this.#reject(job, 'ERR_MESSAGE_ID_MISMATCH', sender, true, header.kind);
    try {
      this.#replay.check(header);
    } catch (err) {
      this.#reject(job, err instanceof EnvelopeError ? err.code : 'ERR_REPLAY', sender, true, header.kind);
    }
    const link = this.#links.get(sender);
    // peer authorization: a quarantined peer is refused; a peer may send only its allowed types
    if (link?.quarantine) this.#reject(job, 'ERR_PEER_QUARANTINED', sender, true, header.kind);
    const resources: unknown = (header as { resources?: unknown }).resources;
    if (link && Array.isArray(resources) && resources.some((r) => typeof r !== 'string' || !typeAllowed(r, link.maySend))) {
      this.#reject(job, 'ERR_PEER_NOT_ALLOWED', sender, true, header.kind);
    }

    switch (header.kind) {
      case 'updates': {
        let updates = this.#decode(job, sender, header.kind, () => decodeUpdates(plaintext));
        if (link && updates.some((u) => !typeAllowed(u.key, link.maySend))) this.#reject(job, 'ERR_PEER_NOT_ALLOWED', sender, true, header.kind);
        if (link?.config.projection && updates.some((u) => this.#projected(link, u.key))) {
          // One-way feed (docs/mappings.md "Redaction"): nothing of a type projected for this peer
          // enters the shared documents from it. Dropped, not refused whole: the rest of the message
          // (and its own resources of other types) is legitimate, and a refusal would quarantine it.
          const kept = updates.filter((u) => !this.#projected(link, u.key));
          this.#stats.projectedUpdatesDropped += updates.length - kept.length;
          this.#warnRateLimited(`projdrop:${sender}`, { peer: sender, dropped: updates.length - kept.length }, 'tide: updates of projected types from a projection peer dropped (one-way feed)');
          updates = kept;
        }
        // a Yjs update that does not even parse is poison: refuse before the store sees it
        const svs: Uint8Array[] = [];
        for (const u of updates) {
          try {
            svs.push(heldUpTo(u.update));
          } catch {
            this.#reject(job, 'ERR_UPDATE_MALFORMED', sender, true, header.kind);
          }
        }
        const before = new Map<string, Uint8Array | undefined>();
        for (const u of updates) if (!before.has(u.key)) before.set(u.key, this.#replica.stateVector(u.key));
        try {
          if (updates.length > 0) await this.#replica.applyRemote(updates, sender);
        } catch (err) {
          const refusal = refusalOf(err);
          if (refusal) {
            // Refused whole, never retried (docs/merge.md "Clock skew and forged entries"); no PHI logged.
            this.#warnRateLimited(`refused:${sender}:${refusal.code}`, { node: this.nodeId, peer: sender, key: refusal.key, code: refusal.code, skewMs: refusal.skewMs }, 'tide: remote update refused');
            const id = `${sender}|${refusal.code}|${refusal.key}`;
            const last = this.#refusedAt.get(id);
            if (last !== undefined && Date.now() - last < REFUSAL_REPEAT_MS) {
              this.#stats.rejected[refusal.code] = (this.#stats.rejected[refusal.code] ?? 0) + 1;
              throw new UnrecoverableError(refusal.code);
            }
            if (this.#refusedAt.size >= 10_000) this.#refusedAt.clear();
            this.#refusedAt.set(id, Date.now());
            this.#reject(job, refusal.code, sender, true, header.kind);
          }
          this.#stats.applyFailures++;
          const attempts = job.opts.attempts ?? 1;
          if (job.attemptsMade + 1 >= attempts) {
            // last attempt: poison for this store (or a long outage); anti-entropy repairs the latter
            await this.#quarantine(job, 'ERR_APPLY_FAILED', sender, true, header.kind).catch(() => {});
          }
          throw new Error(`applyRemote failed: ${errText(err)}`);
        }
        const now = Date.now();
        if (link) updates.forEach((u, i) => this.#learnSv(link, u.key, svs[i] as Uint8Array));
        // what was new to this node (its state vector moved): candidates for relay. Updates held
        // pending (missing dependencies) do not move it and are not relayed.
        const fresh: string[] = [];
        for (const [key, sv] of before) {
          const after = this.#replica.stateVector(key);
          if (after !== undefined && (sv === undefined || stateVectorAhead(after, sv))) fresh.push(key);
        }
        for (const key of fresh) this.#changedAt.set(key, now);
        this.#relayFresh(sender, fresh);
        this.#stats.updatesReceived += updates.length;
        break;
      }
      case 'ae-tree': {
        const tree = this.#decode(job, sender, header.kind, () => decodeTree(plaintext));
        this.#answerTree(sender, tree);
        this.#stats.digestsReceived++;
        break;
      }
      case 'ae-digest':
      case 'ae-reply': {
        const digest = this.#decode(job, sender, header.kind, () => decodeDigest(plaintext));
        this.#answerDigest(sender, digest, header.kind === 'ae-digest');
        this.#stats.digestsReceived++;
        break;
      }
      case 'ae-policy': {
        const entries = this.#decode(job, sender, header.kind, () => decodePolicy(plaintext));
        if (link) this.#receivePolicy(sender, entries);
        break;
      }
      default:
        this.#reject(job, 'ERR_UNKNOWN_KIND', sender, true, header.kind);
    }
    // Recorded only once applied, so a retried job is not mistaken for a replay.
    this.#replay.record(header);
    this.#stats.messagesReceived++;
    this.#stats.bytesReceived += env.length;
    if (link) {
      const now = Date.now();
      link.lastReceivedAt = now;
      link.counters.received++;
      link.deliveryLagMs = Math.max(0, now - header.createdAt);
    }
  }

  #decode<T>(job: Job, sender: string, kind: string, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      this.#reject(job, err instanceof TidePlaintextError ? err.code : 'ERR_PLAINTEXT_MALFORMED', sender, true, kind);
    }
  }

  /** Counts, logs (ids and code only, never plaintext) and throws a {@link Rejection}. */
  #reject(job: Job, code: string, sender?: string, verified = false, kind?: string): never {
    this.#stats.rejected[code] = (this.#stats.rejected[code] ?? 0) + 1;
    this.#log.warn({ node: this.nodeId, jobId: job.id, jobName: job.name, sender, code }, 'tide: envelope rejected');
    throw new Rejection(code, sender, verified, kind);
  }

  /**
   * Writes a quarantine entry (record + sealed envelope, never plaintext) to the Redis list
   * `<prefix>:quarantine-<nodeId>` (LPUSH + LTRIM to `quarantineMaxEntries`, one MULTI), then
   * raises the alert: counter, AuditEvent in the in-memory audit log, one JSON log line.
   * @throws Error from Redis: the job then fails normally and is retried (bounded by its attempts).
   */
  async #quarantine(job: Job<InboxJobData>, reason: string, sender: string | undefined, verified: boolean, kind: string | undefined): Promise<void> {
    const env: unknown = job.data?.env;
    const envelope = typeof env === 'string' ? env : undefined;
    const rec: QuarantineRecord = {
      reason,
      messageId: job.id,
      sender,
      senderVerified: verified,
      kind: kind ?? job.name,
      receivedAt: job.timestamp,
      quarantinedAt: Date.now(),
      attempts: job.attemptsMade + 1,
      envelopeBytes: envelope?.length ?? 0,
    };
    const keep = envelope !== undefined && envelope.length <= this.#quarantineMaxEnvBytes;
    const entry = JSON.stringify({ ...rec, envelopeDropped: envelope !== undefined && !keep, ...(keep ? { env: envelope } : {}) });
    const client = this.#localClient;
    if (!client) throw new Error('quarantine: not started');
    const key = this.quarantineKey;
    const res = await withTimeout(
      client.multi().lpush(key, entry).ltrim(key, 0, this.#quarantineMax - 1).exec(),
      this.#sendTimeoutMs,
      'quarantine write timed out',
    );
    for (const [err] of res ?? []) if (err) throw err;
    this.#stats.quarantined[reason] = (this.#stats.quarantined[reason] ?? 0) + 1;
    const link = sender !== undefined ? this.#links.get(sender) : undefined;
    if (link) link.counters.quarantined++;
    const event = quarantineAuditEvent(rec, this.nodeId);
    this.#audit.add(event);
    if (this.#onRejection) {
      try {
        this.#onRejection({
          node: this.nodeId,
          reason,
          sender,
          senderVerified: verified,
          kind: rec.kind,
          messageId: rec.messageId,
          receivedAt: rec.receivedAt,
          quarantinedAt: rec.quarantinedAt,
        });
      } catch (err) {
        this.#warnRateLimited('onRejection', { err: errText(err) }, 'tide: onRejection hook threw');
      }
    }
    // one JSON line; no plaintext, no envelope, no resource keys
    this.#log.error({ node: this.nodeId, alert: 'tide-quarantine', reason, messageId: rec.messageId, sender, auditEvent: event }, 'tide: message quarantined');
  }

  #onInboxFailed(job: Job<InboxJobData> | undefined, err: Error): void {
    if (!job || err instanceof UnrecoverableError || err.name === 'UnrecoverableError') return;
    const attempts = job.opts.attempts ?? 1;
    const fields = { node: this.nodeId, jobId: job.id, attemptsMade: job.attemptsMade, attempts, err: errText(err) };
    if (job.attemptsMade >= attempts) this.#log.error(fields, 'tide: inbox job failed for good');
    else this.#log.warn(fields, 'tide: inbox job failed, will retry');
  }

  // ---------------------------------------------------------------- knowledge and relay

  /** Merges the state vector of `update` into what `link`'s peer is known to hold for `key`. */
  #learn(link: PeerLink, key: string, update: Uint8Array): void {
    try {
      this.#learnSv(link, key, heldUpTo(update));
    } catch {
      // not decodable: learn nothing
    }
  }

  #learnSv(link: PeerLink, key: string, sv: Uint8Array): void {
    const known = link.knowledge.sv.get(key);
    link.knowledge.sv.set(key, known === undefined ? sv : mergeStateVectors(known, sv));
  }

  /**
   * The relay rule. For every key whose content was new to this node (received from `sender`),
   * and every other peer P that (1) is lagging — its last digest showed it lacking content this
   * node had held for more than `relayGraceMs`, i.e. writers do not reach it directly — and (2)
   * per its last known state vector (digest, plus what it sent us or we sent it) lacks some of
   * this node's state of the key: queue `diffFor(key, P's sv)` to P and advance P's known state
   * vector to ours, so each piece of content is relayed at most once per peer. Never to `sender`,
   * never on a peer whose state is unknown (no digest yet): anti-entropy covers those.
   */
  #relayFresh(sender: string, fresh: readonly string[]): void {
    if (!this.#relay || fresh.length === 0) return;
    for (const [peerId, link] of this.#links) {
      if (peerId === sender || link.knowledge.digestAt === undefined || !isLagging(link)) continue;
      const out: ResourceUpdate[] = [];
      if (link.quarantine) continue;
      for (const key of fresh) {
        if (!typeAllowed(key, link.sendTypes)) continue; // not subscribed
        if (this.#projected(link, key)) continue; // it gets a projection, never the shared document
        if (this.#withheldFrom(link, key)) continue; // carries a label withheld from it
        const mine = this.#replica.stateVector(key);
        if (mine === undefined) continue;
        const theirs = link.knowledge.sv.get(key);
        if (theirs !== undefined && !stateVectorAhead(mine, theirs)) continue;
        let diff: Uint8Array | undefined;
        try {
          diff = this.#replica.diffFor(key, theirs);
        } catch (err) {
          this.#log.warn({ peer: peerId, err: errText(err) }, 'tide: diffFor failed');
        }
        if (diff === undefined || diff.length === 0) continue;
        out.push({ key, update: diff });
        this.#learnSv(link, key, mine);
      }
      if (out.length === 0) continue;
      this.#stats.updatesRelayed += out.length;
      link.counters.relayed += out.length;
      this.#enqueue(peerId, out, 'shared');
    }
  }

  // ---------------------------------------------------------------- anti-entropy

  /**
   * Records a peer's advertised policy digests (./policy.ts) and warns, rate-limited per sender and
   * set of peers, when they differ from this node's: node ids and digest prefixes only, no PHI.
   */
  #receivePolicy(sender: string, entries: readonly PolicyDigestEntry[]): void {
    const differ = this.#policy.receive(sender, entries, Date.now());
    if (differ.length === 0) return;
    const mine = this.#policy.mine();
    this.#warnRateLimited(
      `policy:${sender}:${differ.join(',')}`,
      { node: this.nodeId, peer: sender, disagreesOn: differ, mine: differ.map((p) => mine.get(p)?.slice(0, 12)), theirs: differ.map((p) => this.#policy.advertisedPrefix(sender, p)) },
      'tide: peer applies other rules to a third peer (policy digests differ); see GET /admin/peers',
    );
  }

  /** The tree key hash of `key` (cached). */
  #keyHash(key: string): number {
    let h = this.#keyHashes.get(key);
    if (h === undefined) {
      if (this.#keyHashes.size >= 2 ** 21) this.#keyHashes.clear();
      h = keyHashOf(key);
      this.#keyHashes.set(key, h);
    }
    return h;
  }

  /**
   * The digest tree of the held keys of `types`; with `paths`, only the keys below them (so a
   * question about a few deep nodes costs the state vectors of their keys only).
   */
  #tree(types: TypeFilter, paths?: readonly TreePath[], exclude?: (key: string) => boolean, view: Pick<Replica, 'keys' | 'stateVector'> = this.#replica): DigestTree {
    const below = paths === undefined || paths.some((p) => p.depth === 0) ? undefined : new PathSet(paths);
    const leaves: TreeLeaf[] = [];
    const seen = new Set<string>();
    for (const key of view.keys()) {
      if (seen.has(key) || !isResourceKey(key) || !typeAllowed(key, types)) continue;
      seen.add(key);
      const h = this.#keyHash(key);
      if (below !== undefined && !below.has(h)) continue;
      if (exclude?.(key)) continue;
      const sv = view.stateVector(key);
      if (sv === undefined) continue;
      try {
        leaves.push(makeLeaf(key, h, sv));
      } catch (err) {
        this.#warnRateLimited('badsv', { err: errText(err) }, 'tide: replica returned an undecodable state vector');
      }
    }
    return new DigestTree(leaves);
  }

  /** Sends `nodes` to the peer as `ae-tree` messages of at most {@link MAX_TREE_ITEMS} nodes. */
  #sendTree(peerId: string, types: TypeFilter, nodes: readonly TreeNode[]): Promise<void> {
    const sends: Promise<void>[] = [];
    for (let i = 0; i < nodes.length; i += MAX_TREE_ITEMS) {
      const chunk = nodes.slice(i, i + MAX_TREE_ITEMS);
      this.#stats.aeTreeNodesSent += chunk.length;
      sends.push(this.#send(peerId, 'ae-tree', [], encodeTree({ types, nodes: chunk }), 0));
    }
    return Promise.all(sends).then(() => undefined);
  }

  /**
   * Sends this node's (key, state vector) entries below `paths` as `kind` digests, grouped so that
   * a message holds at most `digestMaxKeys` entries (a single path with more is sent whole) and
   * {@link MAX_TREE_ITEMS} paths.
   */
  #sendDigests(peerId: string, kind: 'ae-digest' | 'ae-reply', types: TypeFilter, paths: readonly TreePath[], tree: DigestTree): void {
    let batch: TreePath[] = [];
    let entries: DigestEntry[] = [];
    const flush = (): void => {
      if (batch.length === 0) return;
      entries.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
      const digest: Digest = { types, paths: batch, entries };
      this.#stats.aeDigestEntriesSent += entries.length;
      void this.#send(peerId, kind, [], encodeDigest(digest), 0);
      batch = [];
      entries = [];
    };
    for (const p of paths) {
      const under = tree.leavesUnder(p).map((l) => ({ key: l.key, stateVector: l.stateVector }));
      if (batch.length > 0 && (entries.length + under.length > this.#digestMaxKeys || batch.length >= MAX_TREE_ITEMS)) flush();
      batch.push(p);
      entries.push(...under);
    }
    flush();
  }

  /**
   * Answers an `ae-tree` message of `peerId`: compares each of its nodes with this node's node at
   * the same path, over the agreed types (theirs ∩ what we send them). Equal: nothing to do (and
   * the peer is not lagging there). Different:
   * - the peer holds nothing there → queue every held resource below as `updates`;
   * - this node holds at most `digestLeafKeys` keys there, or it is a depth-8 bucket → send an
   *   `ae-digest` with this node's entries below (the peer answers with what we lack, and
   *   replies with its own entries if we lack something it has);
   * - else → send back an `ae-tree` with this node's 16 children of that node (the peer then
   *   compares them: the descent alternates between the two nodes).
   */
  #answerTree(peerId: string, msg: TreeMessage): void {
    const link = this.#links.get(peerId);
    if (!link) return;
    const types = intersectTypes(msg.types, link.aeTypes);
    const k = link.knowledge;
    k.types = types;
    k.digestAt = Date.now();
    const tree = this.#tree(types, msg.nodes, this.#excluder(link), this.#viewOf(link));
    const descend: TreeNode[] = [];
    const digestPaths: TreePath[] = [];
    const pushPaths: TreePath[] = [];
    for (const theirs of msg.nodes) {
      const mine = tree.node(theirs);
      if (sameNode(mine, theirs)) {
        this.#setLagging(link, theirs, false);
      } else if (mine.count === 0) {
        digestPaths.push(theirs); // empty digest: "I lack all of it"
      } else if (theirs.count === 0) {
        pushPaths.push(theirs);
      } else if (mine.count <= this.#digestLeafKeys || theirs.depth >= TREE_MAX_DEPTH) {
        digestPaths.push(theirs);
      } else {
        for (const c of childrenOf(theirs)) descend.push(tree.node(c));
      }
    }
    for (const p of pushPaths) {
      const lagging = this.#pushDiffs(link, tree.leavesUnder(p), new Map());
      this.#setLagging(link, p, lagging);
    }
    if (descend.length > 0) void this.#sendTree(peerId, types, descend);
    if (digestPaths.length > 0) this.#sendDigests(peerId, 'ae-digest', types, digestPaths, tree);
  }

  /**
   * Answers a digest of `peerId` for its paths: queues the diff of every held key below them
   * that the peer lacks (`diffFor(key, theirSv)`, `undefined` sv if the peer lacks the key), and,
   * when `mayReply` and the digest shows state this node lacks, sends an `ae-reply` digest of
   * the same paths.
   */
  #answerDigest(peerId: string, digest: Digest, mayReply: boolean): void {
    const link = this.#links.get(peerId);
    if (!link) return;
    const types = intersectTypes(digest.types, link.aeTypes);
    const k = link.knowledge;
    k.types = types;
    k.digestAt = Date.now();
    const exclude = this.#excluder(link);
    const theirs = new Map<string, Uint8Array>();
    for (const e of digest.entries) if (typeAllowed(e.key, types) && !exclude?.(e.key)) theirs.set(e.key, e.stateVector);
    const tree = this.#tree(types, digest.paths, exclude, this.#viewOf(link));
    // the digest is the peer's state of these paths: replace what was known of it
    for (const l of tree.leaves) if (!theirs.has(l.key)) k.sv.delete(l.key);
    for (const [key, sv] of theirs) k.sv.set(key, sv);
    const lagging = this.#pushDiffs(link, tree.leaves, theirs);
    for (const p of digest.paths) this.#setLagging(link, p, lagging);
    if (!mayReply) return;
    let lacking = false;
    const mine = new Map(tree.leaves.map((l) => [l.key, l.stateVector]));
    for (const [key, sv] of theirs) {
      if (this.#projected(link, key)) continue; // one-way feed: nothing of a projected type is asked for
      const m = mine.get(key);
      if (m === undefined || stateVectorAhead(sv, m)) {
        lacking = true;
        break;
      }
    }
    if (lacking) this.#sendDigests(peerId, 'ae-reply', types, digest.paths, tree);
  }

  /**
   * Queues to the peer `diffFor(key, theirs.get(key))` for every leaf whose diff is non-empty,
   * and records that the peer will then hold our state of those keys.
   * @returns True when some of it is content this node has held for longer than `relayGraceMs`
   *   (the peer is not reached directly by its writers: "lagging", a relay target).
   */
  #pushDiffs(link: PeerLink, leaves: readonly TreeLeaf[], theirs: ReadonlyMap<string, Uint8Array>): boolean {
    const now = Date.now();
    let lagging = false;
    const diffs: ResourceUpdate[] = [];
    const view = this.#viewOf(link);
    for (const l of leaves) {
      try {
        const diff = view.diffFor(l.key, theirs.get(l.key));
        if (diff === undefined || diff.length === 0) continue;
        diffs.push({ key: l.key, update: diff });
        this.#learnSv(link, l.key, l.stateVector);
        const since = this.#changedAt.get(l.key);
        if (since === undefined || now - since > this.#relayGraceMs) lagging = true;
      } catch (err) {
        this.#log.warn({ peer: link.config.nodeId, err: errText(err) }, 'tide: diffFor failed');
      }
    }
    if (diffs.length > 0) {
      this.#stats.aeUpdatesQueued += diffs.length;
      this.#enqueue(link.config.nodeId, diffs, 'sourced');
    }
    return lagging;
  }

  /** Records whether the last comparison of `path` showed the peer lagging (replacing overlapping paths). */
  #setLagging(link: PeerLink, path: TreePath, lagging: boolean): void {
    const m = link.knowledge.laggingPaths;
    for (const [id, p] of m) if (pathsOverlap(p, path)) m.delete(id);
    if (lagging) m.set(pathId(path), { depth: path.depth, index: path.index });
  }
}

/** An inbox message refused for good: quarantined, then failed as unrecoverable. */
class Rejection extends Error {
  readonly code: string;
  readonly sender: string | undefined;
  readonly verified: boolean;
  readonly kind: string | undefined;
  constructor(code: string, sender: string | undefined, verified: boolean, kind: string | undefined) {
    super(code);
    this.code = code;
    this.sender = sender;
    this.verified = verified;
    this.kind = kind;
  }
}

/** True when some path of the peer's last comparisons showed it lagging (see the relay rule). */
function isLagging(link: PeerLink): boolean {
  return link.knowledge.laggingPaths.size > 0;
}

/**
 * The state vector a holder of `update` has at least: per client, the end clock of the update's
 * structs (`Y.parseUpdateMeta(update).to`). Whoever sent an update (its writer, or a diff from its
 * own state) holds everything of that client before that clock too. (`Y.encodeStateVectorFromUpdate`
 * is not usable here: it only counts structs contiguous from clock 0.)
 * @throws Error when `update` is not a Yjs v1 update.
 */
function heldUpTo(update: Uint8Array): Uint8Array {
  return Y.encodeStateVector(Y.parseUpdateMeta(update).to);
}

/** The resource type of a key `Type/id`. */
function typeOfKey(key: string): string {
  const i = key.indexOf('/');
  return i < 0 ? key : key.slice(0, i);
}

/** Per-client maximum of two Yjs state vectors (`Y.encodeStateVector` bytes). */
function mergeStateVectors(a: Uint8Array, b: Uint8Array): Uint8Array {
  const m = Y.decodeStateVector(a);
  for (const [client, clock] of Y.decodeStateVector(b)) if (clock > (m.get(client) ?? 0)) m.set(client, clock);
  return Y.encodeStateVector(m);
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

/**
 * Drops the sockets of a BullMQ Queue/Worker at once: its main and (for a Worker) blocking ioredis
 * clients, reached through `getBackend().client` / `.blockingClient` (BullMQ's documented
 * Redis-specific escape hatch). Used when `close()` hangs because Redis is unreachable; a
 * disconnected ioredis client also stops reconnecting, so no timer keeps the process alive.
 */
async function hardDisconnect(c: Queue | Worker): Promise<void> {
  const backend = c.getBackend() as unknown as { client?: Promise<unknown>; blockingClient?: Promise<unknown> };
  const clients = await Promise.allSettled(
    [backend.client, backend.blockingClient].map((p) => (p ? withTimeout(p, 200, 'client not available') : Promise.resolve(undefined))),
  );
  for (const r of clients) {
    const client = r.status === 'fulfilled' ? (r.value as { disconnect?: () => void } | undefined) : undefined;
    try {
      client?.disconnect?.();
    } catch {
      // already closed
    }
  }
  if (c instanceof Worker) {
    // BullMQ 6.7 internals: with Redis gone, Worker.close() never completes, and its lock-renewal
    // and stalled-check timers would keep re-arming and the process alive. Stop them.
    const internals = c as unknown as { lockManager?: { close?: () => unknown }; stalledCheckStopper?: () => void };
    try {
      void Promise.resolve(internals.lockManager?.close?.()).catch(() => {});
      internals.stalledCheckStopper?.();
    } catch {
      // best effort
    }
  }
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
