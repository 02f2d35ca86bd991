/**
 * Public types of Tide, tidegate's gossip engine.
 *
 * Tide moves Yjs updates between hospital nodes. It never looks inside an update: a
 * {@link ResourceUpdate} is an opaque Yjs v1 update (https://docs.yjs.dev/api/document-updates)
 * tagged with the FHIR resource key it belongs to.
 */
import type { RedisTls } from '../transport/tls.ts';
import type { EnvelopeCryptoPool, NodePublicKeys, NodeSecretKeys } from '../envelope/index.ts';
import type { SecurityLabel } from './peer-authz.ts';
import type { PeerPolicyStatus } from './policy.ts';
export type { PeerPolicyStatus } from './policy.ts';

/** One Yjs update for one FHIR resource. */
export interface ResourceUpdate {
  /** Resource key `'Type/id'`, e.g. `'Patient/p-1'` (FHIR type name, `/`, FHIR id `[A-Za-z0-9.-]{1,64}`). */
  key: string;
  /** Yjs update in the v1 encoding (`Y.encodeStateAsUpdate`, the `'update'` event), non-empty bytes. */
  update: Uint8Array;
}

/**
 * The node's resource store as Tide sees it. Implemented by the store (tests ship a small one);
 * Tide never implements it.
 *
 * Sources: Yjs state vectors and diffs, https://docs.yjs.dev/api/document-updates
 * (`Y.encodeStateVector`, `Y.encodeStateAsUpdate(doc, remoteStateVector)`).
 */
export interface Replica {
  /** This node's id; must equal the `nodeId` of the Tide's secret keys. */
  readonly nodeId: string;
  /**
   * Apply updates received from `fromNode` (a configured peer). Must be idempotent (Yjs updates
   * are). May throw: the inbox job is then retried with exponential backoff and, after the last
   * attempt, stays in the BullMQ failed set with the error message as its reason.
   */
  applyRemote(updates: ResourceUpdate[], fromNode: string): Promise<void>;
  /** Every resource key held (any order). */
  keys(): Iterable<string>;
  /** `Y.encodeStateVector(doc)` bytes of `key`, or `undefined` if the key is not held. */
  stateVector(key: string): Uint8Array | undefined;
  /**
   * The update the remote side lacks: `Y.encodeStateAsUpdate(doc, remoteStateVector)`
   * (`remoteStateVector` is `undefined` when the remote does not hold the key at all), or
   * `undefined` when there is nothing to send. Note that a state vector does not describe
   * deletions, so a diff carrying only a delete set is "something" if the store wants deletions
   * to be repaired by anti-entropy.
   */
  diffFor(key: string, remoteStateVector: Uint8Array | undefined): Uint8Array | undefined;
  /**
   * The `meta.security` codings of the resource's **current** version (for a deleted resource:
   * of its last live version), `[]` when it has none or is not held. Needed only when a peer has
   * `withheldLabels`. May throw: the resource is then withheld (fail closed).
   */
  securityLabels?(key: string): readonly SecurityLabel[];
}

/** A peer node: where its inbox lives and its public keys. */
export interface PeerConfig {
  /** Peer node id, `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`; equals `publicKeys.nodeId`. */
  nodeId: string;
  /** Redis URL of the peer's Redis (`redis://host:port/db`), where its inbox queue lives. */
  redisUrl: string;
  /** TLS of a `rediss://` `redisUrl`: the pinned CA and optional client certificate (src/transport/tls.ts); absent: the system's roots. */
  redisTls?: RedisTls | undefined;
  /** The peer's public keys (envelopes to it are encrypted to its KEM key; its signatures are checked). */
  publicKeys: NodePublicKeys;
  /**
   * FHIR resource types the peer subscribes to (e.g. `['Patient', 'Observation']`); omitted = all.
   * Direct fanout, relay and anti-entropy repairs send it only these types, and anti-entropy with
   * it compares only these types (intersected with what it sends back, see docs/tide.md).
   */
  resourceTypes?: readonly string[];
  /**
   * Peer authorization, inbound: the FHIR resource types this peer **may send** this node (e.g.
   * `['Patient', 'Observation']`); omitted = all. An `updates` message holding any other type is
   * refused whole (`ERR_PEER_NOT_ALLOWED`): quarantined, audited, never applied. Anti-entropy with
   * the peer covers only types allowed both ways. (`resourceTypes` above is what it **may receive**.)
   */
  maySend?: readonly string[];
  /**
   * Peer authorization, outbound: `meta.security` labels the peer must never receive, as FHIR token
   * values `system|code` or a bare `code` (any system), e.g.
   * `['http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R', 'PSY', 'HIV', 'ETH']`.
   * A resource whose current version carries one is not sent to it (fanout, relay, anti-entropy).
   * Needs {@link Replica.securityLabels}. See src/tide/peer-authz.ts.
   */
  withheldLabels?: readonly string[];
  /**
   * Redaction (docs/mappings.md "Redaction"): for the resource types it projects, this peer gets a
   * read-only **projection document** per resource from this source instead of the shared document.
   * Fanout ({@link Tide.publish}) and relay never send it shared updates of those types;
   * {@link Tide.publishTo} sends it projection updates; anti-entropy with it compares and repairs
   * those types from this source. Withheld labels of a projected key are those of the shared
   * resource. Updates of projected types it sends this node are dropped (one-way feed).
   */
  projection?: ProjectionSource;
}

/**
 * The projection documents of one peer (src/mapping/projection.ts), as Tide sees them: the same
 * questions as {@link Replica} asks, about a separate store written only by this node.
 */
export interface ProjectionSource {
  /** The resource types the peer gets projections of, empty when none (may change when the mapping is reloaded; called per key: keep it cheap). */
  types(): ReadonlySet<string>;
  /** Every key with a projection document (any order). */
  keys(): Iterable<string>;
  /** `Y.encodeStateVector` bytes of the projection document of `key`, or undefined when there is none. */
  stateVector(key: string): Uint8Array | undefined;
  /** The projection update a holder of `remoteStateVector` lacks, or undefined (see {@link Replica.diffFor}). */
  diffFor(key: string, remoteStateVector: Uint8Array | undefined): Uint8Array | undefined;
}

/** One refused inbox message, as reported to {@link TideOptions.onRejection} (no plaintext, no resource keys). */
export interface TideRejectionEvent {
  /** This node's id. */
  node: string;
  /** Reason code: an `EnvelopeError` code, `ERR_MESSAGE_ID_MISMATCH`, `ERR_PEER_NOT_ALLOWED`, `ERR_PEER_QUARANTINED`, `ERR_APPLY_FAILED`, … */
  reason: string;
  /** Sender node id: verified when `senderVerified`, else as claimed by the unverified header; undefined if unreadable. */
  sender: string | undefined;
  /** True when the sender's ML-DSA-65 signature verified (the message is the sender's own act). */
  senderVerified: boolean;
  /** Envelope kind or job name. */
  kind: string | undefined;
  /** The BullMQ job id. */
  messageId: string | undefined;
  /** When the message entered the inbox (BullMQ `job.timestamp`), ms since the Unix epoch. */
  receivedAt: number;
  /** When it was quarantined, ms since the Unix epoch. */
  quarantinedAt: number;
}

/** A peer held in quarantine by this node (breach response): its messages are refused, nothing is sent to it. */
export interface PeerQuarantine {
  /** Since when, ms since the Unix epoch. */
  since: number;
  /** Why (a signal or reason code; no PHI). */
  reason: string;
}

/** Minimal pino-compatible logger: `logger.info({ ...fields }, 'message')`. */
export interface TideLogger {
  info(obj: Record<string, unknown>, msg?: string): void;
  warn(obj: Record<string, unknown>, msg?: string): void;
  error(obj: Record<string, unknown>, msg?: string): void;
}

/** Options of {@link Tide}'s constructor. Durations are in milliseconds, sizes in bytes. */
export interface TideOptions {
  /** This node's secret keys; `self.nodeId` names the node and its inbox. */
  self: NodeSecretKeys;
  /** Redis URL of this node's own Redis (its inbox and control queues live there). */
  redisUrl: string;
  /** BullMQ key prefix on every Redis touched (must not contain `:`). Default `'tidegate'`. */
  prefix?: string;
  /** Every other node. Must not contain this node; node ids must be unique. */
  peers: PeerConfig[];
  /** The node's store. */
  replica: Replica;
  /** Logger (pino works). Default: warnings and errors as JSON lines on stderr, info dropped. */
  logger?: TideLogger;
  /** Send a peer's batch once it holds this many updates. Default 200. */
  batchMaxUpdates?: number;
  /** ...or once its keys + updates reach this many bytes. Default 1 MiB (1_048_576). */
  batchMaxBytes?: number;
  /** ...or this long after its first update was queued (ms). Default 20. */
  batchDelayMs?: number;
  /** Anti-entropy period (ms) of the BullMQ job scheduler; 0 turns the scheduler off. Default 30000. */
  antiEntropyIntervalMs?: number;
  /** Max (key, state vector) entries per anti-entropy digest message. Default 5000. */
  digestMaxKeys?: number;
  /**
   * This node's policy digest per peer (peer id → 64 hex characters, SHA-256 over the rules
   * deciding what the peer receives: src/mapping/policy-digest.ts `policyDigestSource`), read at
   * each anti-entropy round and status call. Advertised to peers in `ae-policy` messages and
   * compared with theirs (docs/tide.md "Policy agreement"). Absent: nothing advertised.
   */
  policyDigests?: () => ReadonlyMap<string, string>;
  /**
   * Fail-closed policy agreement (docs/tide.md "Policy agreement"): per peer R, the resource types
   * R's rules redact or withhold here (`'*'` = all; src/mapping/policy-digest.ts
   * `sensitiveTypesSource`). A resource of such a type is not sent (fanout, relay, anti-entropy)
   * to another peer that has not advertised its digests yet or advertised another digest for R.
   * Absent: warn only.
   */
  policyEnforcement?: () => ReadonlyMap<string, '*' | ReadonlySet<string>>;
  /**
   * Anti-entropy stops descending the digest tree at a node where this node holds at most this
   * many keys, and exchanges their (key, state vector) entries instead. Default 16.
   */
  digestLeafKeys?: number;
  /** BullMQ `attempts` of every sent job (and tries of each `queue.add`). Default 5. */
  attempts?: number;
  /** Base delay (ms) of the exponential backoff (BullMQ `backoff.delay`). Default 1000. */
  backoffMs?: number;
  /**
   * Jitter of every backoff, fraction in [0, 1]: retry n waits uniformly in
   * `[c · (1 − jitter), c)` with `c = backoffMs · 2^(n−1)` (BullMQ `backoff.jitter`). Default 0.5.
   */
  backoffJitter?: number;
  /** Uniform random source in [0, 1) for the jitter of send retries. Default `Math.random`. */
  random?: () => number;
  /** Worker threads for seal/open. Default: the process-wide shared pool. */
  cryptoPool?: EnvelopeCryptoPool;
  /** Inbox worker lock duration (ms); crypto is CPU-bound so it is generous. Default 60000. */
  lockDurationMs?: number;
  /** Max wait (ms) for one `queue.add` try on a peer's Redis before it counts as failed. Default 5000. */
  sendTimeoutMs?: number;
  /** After a message to a peer is given up, further sends to it are dropped for this long (ms). Default 30000. */
  peerDownMs?: number;
  /**
   * Bound (ms) of the whole of `stop()`: closing workers, sending pending batches, closing
   * connections. Past it, connections are dropped (BullMQ `close()` can hang while Redis is
   * unreachable) and unsent batches are left to anti-entropy. Default 10000.
   */
  stopTimeoutMs?: number;
  /** Most quarantined messages kept in the node's Redis list `<prefix>:quarantine-<nodeId>` (LTRIM). Default 1000. */
  quarantineMaxEntries?: number;
  /** Envelopes longer than this (bytes) are quarantined without the envelope (`envelopeDropped: true`). Default 2 MiB. */
  quarantineMaxEnvelopeBytes?: number;
  /** AuditEvents kept in memory (see {@link Tide.auditLog}). Default 500. */
  auditMaxEvents?: number;
  /** Failed inbox jobs kept (BullMQ `removeOnFail.count`; age 7 days). Default 1000. */
  failedJobsBudget?: number;
  /** Completed inbox jobs kept (BullMQ `removeOnComplete.count`; age 1 h, for jobId dedupe). Default 1000. */
  completedJobsKept?: number;
  /** Approximate max length of every queue's BullMQ events stream (`streams.events.maxLen`). Default 1000. */
  eventsMaxLen?: number;
  /**
   * Relay rule switch: forward updates received from one peer to other peers whose last digest
   * shows they lack them and that are lagging (see docs/tide.md). Default true.
   */
  relay?: boolean;
  /**
   * A peer whose digest shows it lacks content this node has held for longer than this (ms) is
   * "lagging" (not reached directly by the writer): new updates are relayed to it. Default 5000.
   */
  relayGraceMs?: number;
  /**
   * Called once per quarantined inbox message, right after it is written to the quarantine
   * (breach detection, src/security). Must not throw (a throw is logged and ignored); must be quick.
   */
  onRejection?: (event: TideRejectionEvent) => void;
}

/** Per-peer view (for `GET /admin/peers` and metrics). Times are ms since the Unix epoch. */
export interface PeerStatus {
  nodeId: string;
  /**
   * `up`: its Redis connection is ready and no send was given up recently; `connecting`: its
   * Redis is not connected; `down`: a send was given up within `peerDownMs` (sends are dropped);
   * `stopped`: this Tide is not running.
   */
  status: 'up' | 'connecting' | 'down' | 'stopped';
  /** Last successful add to its inbox, or last valid message received from it. */
  lastContactAt: number | undefined;
  lastSentAt: number | undefined;
  lastReceivedAt: number | undefined;
  /** Updates waiting in its outbox (not yet sealed). */
  backlogUpdates: number;
  /** Envelopes waiting in its send chain (sealing or being added). */
  backlogMessages: number;
  /** Age (ms) of the oldest update or envelope for it not yet added to its inbox; 0 when nothing waits. */
  oldestUnsentMs: number;
  /** Last observed delivery lag (ms) of a message from it: processed time − sealed `createdAt` (sender's clock). */
  deliveryLagMs: number | undefined;
  /** Last send or connection error (text, no payload). */
  lastError: { at: number; message: string } | undefined;
  /** Messages quarantined whose (verified or claimed) sender is this peer. */
  quarantined: number;
  messagesSent: number;
  messagesReceived: number;
  sendFailures: number;
  /** Updates relayed to this peer. */
  updatesRelayed: number;
  /** When its last digest was processed. */
  lastDigestAt: number | undefined;
  /** Its last digests showed it lacking content this node held for longer than `relayGraceMs`. */
  lagging: boolean;
  /** Resource types it subscribes to = may receive (sorted), or `undefined` for all. */
  resourceTypes: string[] | undefined;
  /** Resource types it may send this node (sorted), or `undefined` for all. */
  maySend: string[] | undefined;
  /** Security labels withheld from it (`system|code` or `code`), `[]` when none. */
  withheldLabels: string[];
  /** Resource types it gets as redacted projections (sorted; docs/mappings.md "Redaction"), `[]` when none. */
  projectedTypes: string[];
  /** Set while the peer is quarantined (breach response): messages refused, nothing sent. */
  quarantine: PeerQuarantine | undefined;
  /** Whether the other nodes serving this peer apply the same rules to it (./policy.ts, docs/tide.md "Policy agreement"). */
  policy: PeerPolicyStatus;
}

/** Result of {@link Tide.health}. */
export interface TideHealth {
  /** True when state is running, the own Redis answered PING within the timeout, the workers run and the own queues are set up. */
  ready: boolean;
  state: 'new' | 'starting' | 'running' | 'stopping' | 'stopped';
  /** Own Redis answered PING. */
  redis: boolean;
  /** PING round trip, ms (undefined when it failed). */
  redisLatencyMs: number | undefined;
  /** Inbox worker (and control worker when scheduled) running and not paused. */
  workers: boolean;
  /**
   * The own queues are set up in Redis: the inbox and control queues' meta hashes exist and, when
   * anti-entropy is scheduled, its job scheduler. False after the own Redis lost its data (FLUSHALL,
   * a restart without persistence) until the node has set them up again (it does so on the check).
   */
  queues: boolean;
}

/** Counters since construction. Bytes are UTF-16 code units of the envelope strings (= bytes: they are ASCII). */
export interface TideStats {
  /** Envelopes successfully added to a peer's inbox. */
  messagesSent: number;
  /** Inbox envelopes processed successfully (retries of one job count once). */
  messagesReceived: number;
  /** Sum of the lengths of the sent envelope strings. */
  bytesSent: number;
  /** Sum of the lengths of the successfully processed inbox envelope strings. */
  bytesReceived: number;
  /** Resource updates inside sent `updates` envelopes (after per-key merging). */
  updatesSent: number;
  /** Resource updates inside processed `updates` envelopes. */
  updatesReceived: number;
  /** Inbox jobs rejected as unrecoverable, by code (`ERR_SIGNATURE_INVALID`, `ERR_PLAINTEXT_MALFORMED`, ...). */
  rejected: Record<string, number>;
  /** Failed `replica.applyRemote` calls (each attempt counts). */
  applyFailures: number;
  /**
   * Messages not delivered to a peer's inbox: given up after `attempts` failed `queue.add` tries,
   * dropped while the peer is marked down or its backlog is full, or left when `stop()` timed
   * out. Anti-entropy repairs them later.
   */
  sendFailures: number;
  /** Completed `runAntiEntropy()` calls (manual or scheduled). */
  antiEntropyRuns: number;
  /**
   * Times the own queues and the anti-entropy job scheduler were found missing in the own Redis
   * (it lost its data) and set up again by the periodic check or a readiness check.
   */
  aeSchedulerRestored: number;
  /** Anti-entropy rounds run by the node itself because no scheduled round ran for 3 intervals. */
  aeFallbackRuns: number;
  /** Anti-entropy digests (`ae-digest` and `ae-reply`) received and processed. */
  digestsReceived: number;
  /** Messages written to the quarantine, by reason code (rejections and `ERR_APPLY_FAILED`). */
  quarantined: Record<string, number>;
  /** Resource updates (per-peer diffs) queued for relay to a peer that lacks them. */
  updatesRelayed: number;
  /** Anti-entropy envelopes (`ae-tree`, `ae-digest`, `ae-reply`) added to peers' inboxes. */
  aeMessagesSent: number;
  /** Sum of the lengths of those envelopes (bytes). */
  aeBytesSent: number;
  /** Tree node summaries put into `ae-tree` messages. */
  aeTreeNodesSent: number;
  /** (key, state vector) entries put into `ae-digest` / `ae-reply` messages. */
  aeDigestEntriesSent: number;
  /** Resource diffs queued to peers as anti-entropy repairs (they travel in `updates` messages). */
  aeUpdatesQueued: number;
  /** Resource updates not sent to a peer because the resource carries a label withheld from it. */
  updatesWithheld: number;
  /** Resource updates not sent to a peer because it is quarantined. */
  updatesToQuarantinedPeers: number;
  /** Projection updates queued to projection peers ({@link Tide.publishTo}). */
  projectionUpdatesQueued: number;
  /** Updates of a projected resource type received from its projection peer and dropped (one-way feed). */
  projectedUpdatesDropped: number;
}

/** Envelope `kind` values Tide sends and accepts. */
export type TideMessageKind = 'updates' | 'ae-tree' | 'ae-digest' | 'ae-reply' | 'ae-policy';

/** Re-exported so callers can type `TideOptions.self` without importing the envelope module. */
export type { NodePublicKeys, NodeSecretKeys };
