/**
 * Replay protection for tidegate-env/1: a bounded, per-sender memory of accepted message ids.
 *
 * The envelope itself is stateless (docs/envelope.md §8): a recorded envelope opens again. The
 * receiver therefore keeps, per authenticated sender, the `messageId`s it accepted, and refuses
 * - the same `(sender, messageId)` again → `ERR_REPLAY`;
 * - a `createdAt` it can no longer vouch for → `ERR_STALE`: older than `now − ttlMs` (its id may
 *   have been forgotten), at or below the sender's *floor* (the newest `createdAt` evicted because
 *   the per-sender bound was reached), or later than `now + maxFutureSkewMs`.
 * Both rules together are sound with bounded memory: an id is forgotten only when every envelope
 * carrying it is refused by the window or the floor.
 *
 * Feed it ONLY headers returned by a successful `open()` (signature verified): the sender and
 * messageId are then authenticated, so the number of senders is bounded by the configured peers and
 * an attacker cannot fill the cache. Memory: about 100 bytes × `maxEntriesPerSender` × peers.
 *
 * Version ratchet: once a sender's tidegate-env/2 envelope was recorded, its tidegate-env/1
 * envelopes are refused (`ERR_UNSUPPORTED_ALGORITHM`), so a sender that moved to v2 cannot be
 * held to v1 by replaying its old envelopes (docs/envelope.md §13).
 *
 * In memory only: after a restart, envelopes younger than `ttlMs` are accepted once more. In
 * tidegate that is harmless (applying a Yjs update twice is a no-op), but it is a limit to know.
 */
import { EnvelopeError } from './errors.ts';

/** Options of {@link ReplayGuard}. Durations in milliseconds. */
export interface ReplayGuardOptions {
  /** How long an accepted id is remembered, and the oldest `createdAt` accepted (now − ttlMs). Default 24 h (86 400 000). */
  ttlMs?: number;
  /** How far `createdAt` may be ahead of the local clock. Default 5 min (300 000). */
  maxFutureSkewMs?: number;
  /** Ids remembered per sender; when full, the oldest is evicted and raises the sender's floor. Default 200 000. */
  maxEntriesPerSender?: number;
  /** Clock, ms since the Unix epoch. Default `Date.now`. */
  now?: () => number;
}

/** The header fields the guard reads (an `EnvelopeHeader` from `open()` fits). */
export interface ReplayKey {
  /** Authenticated sender node id. */
  sender: string;
  /** Sender-unique message id. */
  messageId: string;
  /** Sender's creation time, integer ms since the Unix epoch. */
  createdAt: number;
  /**
   * Envelope format version (`tidegate-env/1` or `/2`), when known. Once a tidegate-env/2 envelope
   * of a sender was recorded, its tidegate-env/1 envelopes are refused (no downgrade, docs/envelope.md §13).
   */
  v?: string;
}

interface SenderState {
  /** messageId → createdAt, in insertion order (≈ createdAt order for one sender). */
  ids: Map<string, number>;
  /** Highest createdAt among evicted ids; envelopes with createdAt ≤ floor are refused. */
  floor: number;
  /** True once a tidegate-env/2 envelope of this sender was recorded: its v1 envelopes are refused. */
  v2: boolean;
}

function positive(name: string, v: number): number {
  if (!Number.isSafeInteger(v) || v <= 0) throw new RangeError(`ReplayGuard: ${name} must be a positive integer`);
  return v;
}

/**
 * Bounded per-sender replay cache (see the module documentation for the rule).
 *
 * Typical use in an inbox processor: `guard.check(header)` right after `open()`, apply the
 * payload, then `guard.record(header)` — recording only after success lets a failed, retried
 * job through again. {@link checkAndRecord} does both at once.
 */
export class ReplayGuard {
  readonly #ttlMs: number;
  readonly #maxFutureSkewMs: number;
  readonly #maxEntries: number;
  readonly #now: () => number;
  readonly #senders = new Map<string, SenderState>();

  /**
   * @param options - ttlMs (default 86 400 000 ms), maxFutureSkewMs (default 300 000 ms),
   *   maxEntriesPerSender (default 200 000), now (default `Date.now`).
   * @throws `RangeError` when a bound is not a positive safe integer.
   */
  constructor(options: ReplayGuardOptions = {}) {
    this.#ttlMs = positive('ttlMs', options.ttlMs ?? 86_400_000);
    this.#maxFutureSkewMs = positive('maxFutureSkewMs', options.maxFutureSkewMs ?? 300_000);
    this.#maxEntries = positive('maxEntriesPerSender', options.maxEntriesPerSender ?? 200_000);
    this.#now = options.now ?? Date.now;
  }

  /**
   * Throws if the envelope must be refused; changes nothing.
   *
   * @param key - `sender`, `messageId`, `createdAt` (ms since epoch) of a verified header.
   * @throws {@link EnvelopeError} `ERR_REPLAY` if the id was recorded; `ERR_UNSUPPORTED_ALGORITHM` for a
   *   tidegate-env/1 envelope from a sender already seen sealing tidegate-env/2 (downgrade);
   *   `ERR_STALE` if createdAt is older than now − ttlMs, ≤ the sender's floor, or newer than now + maxFutureSkewMs;
   *   `TypeError` for a key without string sender/messageId and integer createdAt.
   */
  check(key: ReplayKey): void {
    checkKey(key);
    const now = this.#now();
    const state = this.#senders.get(key.sender);
    if (state?.ids.has(key.messageId)) {
      throw new EnvelopeError('ERR_REPLAY', `Replayed message ${key.messageId} from "${key.sender}"`);
    }
    if (state?.v2 === true && key.v === 'tidegate-env/1') {
      throw new EnvelopeError('ERR_UNSUPPORTED_ALGORITHM', `Downgrade refused: "${key.sender}" already seals tidegate-env/2, message ${key.messageId} is tidegate-env/1`);
    }
    if (key.createdAt < now - this.#ttlMs) {
      throw new EnvelopeError('ERR_STALE', `Message ${key.messageId} from "${key.sender}" is older than the replay window`);
    }
    if (key.createdAt > now + this.#maxFutureSkewMs) {
      throw new EnvelopeError('ERR_STALE', `Message ${key.messageId} from "${key.sender}" is dated in the future`);
    }
    if (state !== undefined && key.createdAt <= state.floor) {
      throw new EnvelopeError('ERR_STALE', `Message ${key.messageId} from "${key.sender}" is older than the replay cache still covers`);
    }
  }

  /**
   * Remembers `(sender, messageId)` until `createdAt + ttlMs`. Evicts expired ids of that sender,
   * then, while over `maxEntriesPerSender`, the oldest-inserted id (raising the sender's floor to
   * its createdAt). Does not check; call {@link check} first.
   *
   * @param key - `sender`, `messageId`, `createdAt` (ms since epoch) of a verified header.
   * @throws `TypeError` for an invalid key.
   */
  record(key: ReplayKey): void {
    checkKey(key);
    let state = this.#senders.get(key.sender);
    if (state === undefined) {
      state = { ids: new Map(), floor: -1, v2: false };
      this.#senders.set(key.sender, state);
    }
    if (key.v === 'tidegate-env/2') state.v2 = true;
    state.ids.delete(key.messageId); // re-insert at the end
    state.ids.set(key.messageId, key.createdAt);
    const horizon = this.#now() - this.#ttlMs;
    for (const [id, createdAt] of state.ids) {
      if (createdAt >= horizon) break; // ids are roughly in createdAt order; stragglers go by size
      state.ids.delete(id);
    }
    while (state.ids.size > this.#maxEntries) {
      const first = state.ids.entries().next().value;
      if (first === undefined) break;
      state.ids.delete(first[0]);
      if (first[1] > state.floor) state.floor = first[1];
    }
  }

  /**
   * {@link check}, then {@link record}.
   * @param key - `sender`, `messageId`, `createdAt` (ms since epoch) of a verified header.
   * @throws As {@link check}.
   */
  checkAndRecord(key: ReplayKey): void {
    this.check(key);
    this.record(key);
  }

  /**
   * Number of ids remembered for `sender` (for metrics and tests).
   * @param sender - Node id.
   * @returns Count, 0 for an unknown sender.
   */
  size(sender: string): number {
    return this.#senders.get(sender)?.ids.size ?? 0;
  }

  /**
   * Forgets everything about `sender` except its floor, e.g. when a peer is removed.
   * Keeping the floor keeps the guard sound if the peer comes back.
   * @param sender - Node id.
   */
  forget(sender: string): void {
    const state = this.#senders.get(sender);
    if (state === undefined) return;
    let floor = state.floor;
    for (const createdAt of state.ids.values()) if (createdAt > floor) floor = createdAt;
    this.#senders.set(sender, { ids: new Map(), floor, v2: state.v2 });
  }
}

function checkKey(key: ReplayKey): void {
  if (
    typeof key !== 'object' ||
    key === null ||
    typeof key.sender !== 'string' ||
    typeof key.messageId !== 'string' ||
    !Number.isSafeInteger(key.createdAt)
  ) {
    throw new TypeError('ReplayGuard: key must have string sender and messageId and an integer createdAt (ms)');
  }
}
