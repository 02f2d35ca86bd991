/**
 * One running process per node id: a lease in the node's own Redis.
 *
 * Two processes started with the same `nodeId` (a copied configuration, another port and store,
 * the same Redis) would split the node's inbox between them and write under the same Yjs client
 * id (src/merge/doc.ts `clientIdFor`), so two different states would get the same versionId and
 * edits would be lost silently. The lease prevents that:
 *
 * - **acquire** at start: `SET <prefix>:node-lease:<nodeId> <holder> NX PX <ttl>`
 *   (https://redis.io/docs/latest/commands/set/) with a random instance token; the holder record
 *   (host, pid, start time) is what a refused process reports.
 * - **renew** every `renewMs` (default 5000 ms) with a script that extends the key only while it
 *   still holds this instance's value; the lease lives `ttlMs` = 3 × `renewMs` (default 15000 ms),
 *   so a process killed with SIGKILL leaves a lease that expires within `ttlMs`.
 * - **release** at stop: the key is deleted only when it is still this instance's.
 *
 * A second process refuses at once while the holder renews (its lease has more than
 * `ttlMs − 1.5 × renewMs` left); a lease that looks abandoned (not renewed on time), or whose
 * holder ran on this host under a pid that no longer exists, is waited for until it expires, so a
 * restart after a crash waits at most `ttlMs`.
 *
 * **Losing the lease while running.** When the renewal finds the key **gone** (Redis flushed or
 * restarted without persistence), no other instance holds it: the lease is taken again at once
 * (a warning is logged). When it finds **another instance's** lease (this process was paused
 * longer than `ttlMs`, or Redis was unreachable that long and another process started meanwhile),
 * both processes may already have written under the same version ids: the lease reports itself
 * lost once (`onLost`, an error is logged) and is not taken back. The node then stops consuming its
 * inbox and `/readyz` answers 503; an operator stops one of the two and restarts this one.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import type { RedisOptions } from 'ioredis';

/** Stable codes of {@link InstanceLeaseError}. */
export type InstanceLeaseErrorCode =
  /** Another live process holds the node id's lease. */
  | 'ERR_NODE_ID_IN_USE'
  /** The own Redis could not be reached to take the lease. */
  | 'ERR_LEASE_UNAVAILABLE';

/** Error of {@link InstanceLease}; the message names the node id and the holder (no secrets). */
export class InstanceLeaseError extends Error {
  override readonly name = 'InstanceLeaseError';
  /** Stable machine-readable code. */
  readonly code: InstanceLeaseErrorCode;
  /** The holder of the lease, for `ERR_NODE_ID_IN_USE`. */
  readonly holder: LeaseHolder | undefined;
  /**
   * @param code - stable code.
   * @param message - human text.
   * @param holder - who holds the lease.
   * @param cause - underlying error.
   */
  constructor(code: InstanceLeaseErrorCode, message: string, holder?: LeaseHolder, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.code = code;
    this.holder = holder;
  }
}

/** What the lease records about the process holding it (JSON in Redis). */
export interface LeaseHolder {
  nodeId: string;
  host: string;
  pid: number;
  /** ISO 8601 time the process took the lease. */
  startedAt: string;
}

/** Minimal logger (pino-compatible). */
export interface LeaseLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** Options of {@link InstanceLease}. Durations in ms. */
export interface InstanceLeaseOptions {
  /** The node's own Redis (the one its inbox is on). */
  redisUrl: string;
  /** ioredis options for that connection (e.g. TLS). */
  redisOptions?: RedisOptions;
  /** Key prefix (the node's `queuePrefix`); the key is `<prefix>:node-lease:<nodeId>`. */
  prefix: string;
  nodeId: string;
  /** Renewal period, ms. Default 5000; the lease lives 3 × this. */
  renewMs?: number;
  /** Called once when another instance is found holding the lease while this one runs. */
  onLost?: (holder: LeaseHolder | undefined) => void;
  log?: LeaseLogger;
  /** Instance token; default 16 random bytes (tests only). */
  token?: string;
}

/** Renews when the key holds our value (1); re-takes it when absent (2); else returns the other value. */
const RENEW = `
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if v == false then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return v`;
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`;

function parseHolder(v: unknown): LeaseHolder | undefined {
  if (typeof v !== 'string') return undefined;
  try {
    const o = JSON.parse(v) as Partial<LeaseHolder>;
    if (typeof o.nodeId === 'string' && typeof o.host === 'string' && typeof o.pid === 'number' && typeof o.startedAt === 'string') {
      return { nodeId: o.nodeId, host: o.host, pid: o.pid, startedAt: o.startedAt };
    }
  } catch {
    // not ours
  }
  return undefined;
}

/** Whether a process with this pid runs on this host (signal 0: EPERM means it exists). */
function pidAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function describe(h: LeaseHolder | undefined): string {
  return h ? `host ${h.host}, pid ${h.pid}, started ${h.startedAt}` : 'an unknown holder';
}

/** See module doc. */
export class InstanceLease {
  /** Redis key of the lease. */
  readonly key: string;
  /** Renewal period and lifetime, ms. */
  readonly renewMs: number;
  readonly ttlMs: number;
  readonly #opts: InstanceLeaseOptions;
  readonly #value: string;
  #redis: Redis | undefined;
  #timer: NodeJS.Timeout | undefined;
  #state: 'new' | 'held' | 'lost' | 'released' = 'new';
  #renewing: Promise<void> | undefined;

  /**
   * Prepares the lease (no connection until {@link acquire}).
   * @param opts - see {@link InstanceLeaseOptions}.
   * @throws RangeError when `renewMs` is not a positive integer.
   */
  constructor(opts: InstanceLeaseOptions) {
    const renewMs = opts.renewMs ?? 5000;
    if (!Number.isInteger(renewMs) || renewMs <= 0) throw new RangeError(`renewMs must be a positive integer of ms, got ${renewMs}`);
    this.#opts = opts;
    this.renewMs = renewMs;
    this.ttlMs = 3 * renewMs;
    this.key = `${opts.prefix}:node-lease:${opts.nodeId}`;
    const holder: LeaseHolder & { token: string } = {
      nodeId: opts.nodeId,
      host: hostname(),
      pid: process.pid,
      startedAt: new Date().toISOString(),
      token: opts.token ?? randomBytes(16).toString('base64url'),
    };
    this.#value = JSON.stringify(holder);
  }

  /** `new` → `held` (acquired) → `released` (stopped), or `lost` (another instance took it). */
  get state(): 'new' | 'held' | 'lost' | 'released' {
    return this.#state;
  }

  /**
   * Takes the lease and starts renewing it. Waits (at most `ttlMs`) for a lease that looks
   * abandoned to expire; refuses at once a lease its holder renews.
   * @throws InstanceLeaseError `ERR_NODE_ID_IN_USE` (message: node id, holder host/pid/start time,
   *   when it expires if that process is gone) or `ERR_LEASE_UNAVAILABLE` (Redis unreachable);
   *   Error when called twice.
   */
  async acquire(): Promise<void> {
    if (this.#state !== 'new') throw new Error(`Instance lease of ${this.#opts.nodeId}: acquire() called when ${this.#state}`);
    const redis = new Redis(this.#opts.redisUrl, { maxRetriesPerRequest: 1, retryStrategy: (n: number) => Math.min(250 * n, 2000), ...this.#opts.redisOptions });
    redis.on('error', () => {}); // renewal results carry the errors
    this.#redis = redis;
    const deadline = Date.now() + this.ttlMs + this.renewMs;
    try {
      for (;;) {
        const ok = await redis.set(this.key, this.#value, 'PX', this.ttlMs, 'NX');
        if (ok === 'OK') break;
        const [[, raw], [, pttl]] = (await redis.multi().get(this.key).pttl(this.key).exec()) as [[unknown, unknown], [unknown, unknown]];
        const holder = parseHolder(raw);
        const left = typeof pttl === 'number' ? pttl : -2;
        if (left === -2) continue; // expired between SET and GET
        const stale = left >= 0 && left <= this.ttlMs - 1.5 * this.renewMs;
        // a holder on this host whose process is gone (killed): wait its lease out, do not refuse
        const dead = holder !== undefined && holder.host === hostname() && !pidAlive(holder.pid);
        if ((!stale && !dead) || Date.now() + left > deadline) {
          throw new InstanceLeaseError(
            'ERR_NODE_ID_IN_USE',
            `Node id ${this.#opts.nodeId} is already running (${describe(holder)}; lease ${this.key} on its Redis). ` +
              `Two processes with one node id split its inbox and give different states the same versionId. ` +
              `Stop that process, or give this one its own nodeId and key file. If that process is gone (killed), its lease expires within ${Math.max(0, left)} ms: start again then.`,
            holder,
          );
        }
        this.#opts.log?.warn({ node: this.#opts.nodeId, holder: describe(holder), waitMs: left }, 'instance lease: a lease not renewed on time is held; waiting for it to expire');
        await new Promise((r) => setTimeout(r, Math.min(left + 10, this.renewMs)));
      }
    } catch (err) {
      redis.disconnect();
      this.#redis = undefined;
      this.#state = 'released';
      if (err instanceof InstanceLeaseError) throw err;
      throw new InstanceLeaseError('ERR_LEASE_UNAVAILABLE', `Cannot take the instance lease of node ${this.#opts.nodeId} on its Redis: ${(err as Error).message}`, undefined, err);
    }
    this.#state = 'held';
    this.#schedule();
  }

  /**
   * Renews once now (what the timer does every `renewMs`); for tests and for `/readyz`-style checks.
   * Never throws: a Redis error is logged and retried at the next period.
   */
  renewNow(): Promise<void> {
    this.#renewing ??= this.#renew().finally(() => {
      this.#renewing = undefined;
    });
    return this.#renewing;
  }

  /**
   * Stops renewing and deletes the lease when it is still this instance's. Idempotent; never throws.
   */
  async release(): Promise<void> {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    const redis = this.#redis;
    this.#redis = undefined;
    const wasHeld = this.#state === 'held';
    if (this.#state !== 'lost') this.#state = 'released';
    if (!redis) return;
    await this.#renewing?.catch(() => {});
    try {
      if (wasHeld) await redis.eval(RELEASE, 1, this.key, this.#value);
    } catch (err) {
      this.#opts.log?.warn({ node: this.#opts.nodeId, err: (err as Error).message }, 'instance lease: release failed; it expires by itself');
    } finally {
      redis.disconnect();
    }
  }

  #schedule(): void {
    this.#timer = setTimeout(() => {
      void this.renewNow().then(() => {
        if (this.#state === 'held') this.#schedule();
      });
    }, this.renewMs);
    this.#timer.unref();
  }

  async #renew(): Promise<void> {
    const redis = this.#redis;
    if (!redis || this.#state !== 'held') return;
    let r: unknown;
    try {
      r = await redis.eval(RENEW, 1, this.key, this.#value, String(this.ttlMs));
    } catch (err) {
      this.#opts.log?.warn({ node: this.#opts.nodeId, err: (err as Error).message }, 'instance lease: renewal failed (Redis); retrying');
      return;
    }
    if (this.#state !== 'held') return;
    if (r === 1) return;
    if (r === 2) {
      this.#opts.log?.warn({ node: this.#opts.nodeId }, 'instance lease: the lease was gone from Redis (flushed or restarted); taken again');
      return;
    }
    this.#state = 'lost';
    const holder = parseHolder(r);
    this.#opts.log?.error(
      { node: this.#opts.nodeId, holder: describe(holder) },
      'instance lease lost: another process runs with this node id; this one stops consuming its inbox and reports not ready. Stop one of them.',
    );
    this.#opts.onLost?.(holder);
  }
}
