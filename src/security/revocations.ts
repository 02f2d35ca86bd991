/**
 * Token revocation by `jti` (RFC 7519 §4.1.7), the breach response for a token that misbehaves:
 * once revoked, the token verifier refuses it (401 `invalid_token`, reason `revoked`) until an
 * administrator clears it (`DELETE /admin/revocations/:jti`).
 *
 * Plug it into the auth module with `createAuth(cfg, { isRevoked: list.isRevoked })`
 * (src/auth/setup.ts): the check is synchronous and in memory. With `redis`, the list is kept in a
 * Redis hash as well, so that a restart does not let a revoked token back in; call
 * {@link RevocationList.load} before serving.
 */
import { Redis } from 'ioredis';

/** One revoked token. Times in ms since the Unix epoch. */
export interface Revocation {
  jti: string;
  /** When it was revoked. */
  since: number;
  /** Why (a signal id or `manual`; no PHI). */
  reason: string;
  /** The token's `exp` when known: the entry may be pruned an hour after it (the token is dead anyway). */
  expiresAtMs: number | undefined;
}

/** Options of {@link RevocationList}. */
export interface RevocationListOptions {
  /** Persist in this Redis (URL) under `key`. Absent: memory only. */
  redisUrl?: string;
  /** Redis hash key, e.g. `tidegate:revoked-jti-node-a`. Required with `redisUrl`. */
  key?: string;
  /** Most entries kept (expired ones are pruned first, then the oldest). Default 100,000. */
  maxEntries?: number;
  /** Clock, ms since the epoch. Default `Date.now`. */
  now?: () => number;
}

/** A `jti` is a JWT string claim; tidegate accepts 1-256 visible ASCII characters. */
const JTI_RE = /^[\x21-\x7e]{1,256}$/;
/** Kept this long past the token's `exp` (clock skew of verifiers). */
const KEEP_AFTER_EXP_MS = 3_600_000;

/** In-memory revocation list with optional write-through to Redis. See module doc. */
export class RevocationList {
  readonly #entries = new Map<string, Revocation>();
  readonly #max: number;
  readonly #now: () => number;
  readonly #key: string | undefined;
  #redis: Redis | undefined;

  /**
   * @param opts - see {@link RevocationListOptions}.
   * @throws TypeError when `redisUrl` is given without `key`, or `maxEntries` is not a positive integer.
   */
  constructor(opts: RevocationListOptions = {}) {
    this.#max = opts.maxEntries ?? 100_000;
    if (!Number.isSafeInteger(this.#max) || this.#max < 1) throw new TypeError('RevocationList: maxEntries must be a positive integer');
    this.#now = opts.now ?? Date.now;
    if (opts.redisUrl !== undefined) {
      if (!opts.key) throw new TypeError('RevocationList: key is required with redisUrl');
      this.#key = opts.key;
      this.#redis = new Redis(opts.redisUrl, { maxRetriesPerRequest: 1, lazyConnect: true });
      this.#redis.on('error', () => {}); // surfaced by the awaited calls
    }
  }

  /**
   * The hook for `createAuth({ isRevoked })` / `TokenVerifier({ isRevoked })`: true when the
   * token's `jti` is revoked. A token without `jti` cannot be revoked (and is not).
   */
  readonly isRevoked = (jti: string | undefined): boolean => jti !== undefined && this.#entries.has(jti);

  /** True when `jti` is revoked. */
  has(jti: string): boolean {
    return this.#entries.has(jti);
  }

  /** Number of revoked tokens. */
  get size(): number {
    return this.#entries.size;
  }

  /** The revoked tokens, newest first. */
  list(): Revocation[] {
    return [...this.#entries.values()].sort((a, b) => b.since - a.since);
  }

  /**
   * Reads the persisted list (no-op without Redis). Call once before serving.
   * @throws Error when Redis cannot be reached.
   */
  async load(): Promise<void> {
    if (!this.#redis || !this.#key) return;
    if (this.#redis.status === 'wait') await this.#redis.connect();
    const all = await this.#redis.hgetall(this.#key);
    for (const [jti, text] of Object.entries(all)) {
      try {
        const r = JSON.parse(text) as Partial<Revocation>;
        this.#entries.set(jti, { jti, since: Number(r.since) || this.#now(), reason: String(r.reason ?? 'unknown'), expiresAtMs: typeof r.expiresAtMs === 'number' ? r.expiresAtMs : undefined });
      } catch {
        this.#entries.set(jti, { jti, since: this.#now(), reason: 'unreadable entry', expiresAtMs: undefined });
      }
    }
  }

  /**
   * Revokes a token. Effective at once (in memory); the returned promise settles when it is
   * persisted. Revoking a revoked `jti` keeps the first entry.
   * @param jti - The token's `jti`.
   * @param reason - Signal id or `manual` (at most 200 characters kept).
   * @param expiresAtMs - The token's `exp` (ms), when known.
   * @returns True when it was not revoked before.
   * @throws TypeError for a `jti` that is not 1-256 visible ASCII characters (synchronously, nothing changed).
   */
  revoke(jti: string, reason: string, expiresAtMs?: number): Promise<boolean> {
    if (typeof jti !== 'string' || !JTI_RE.test(jti)) throw new TypeError('RevocationList: jti must be 1-256 visible ASCII characters');
    if (this.#entries.has(jti)) return Promise.resolve(false);
    this.#prune();
    const entry: Revocation = { jti, since: this.#now(), reason: String(reason).slice(0, 200), expiresAtMs };
    this.#entries.set(jti, entry);
    return this.#persist((r, key) => r.hset(key, jti, JSON.stringify(entry))).then(() => true);
  }

  /**
   * Clears a revocation (the token is accepted again if otherwise valid). The in-memory entry is
   * removed only once Redis confirmed the delete, so a failed delete leaves the token revoked.
   * @returns True when it was revoked.
   * @throws Error from Redis.
   */
  async release(jti: string): Promise<boolean> {
    if (!this.#entries.has(jti)) return false;
    await this.#persist((r, key) => r.hdel(key, jti));
    return this.#entries.delete(jti);
  }

  /** Closes the Redis connection (memory entries stay usable). */
  async close(): Promise<void> {
    const r = this.#redis;
    this.#redis = undefined;
    if (r && r.status !== 'end' && r.status !== 'wait') await r.quit().catch(() => r.disconnect());
    else r?.disconnect();
  }

  async #persist(fn: (r: Redis, key: string) => Promise<unknown>): Promise<void> {
    const r = this.#redis;
    if (!r || !this.#key) return;
    if (r.status === 'wait') await r.connect();
    await fn(r, this.#key);
  }

  /** Drops entries an hour past their token's `exp`, then the oldest, to stay below `maxEntries`. */
  #prune(): void {
    if (this.#entries.size < this.#max) return;
    const now = this.#now();
    const dead: string[] = [];
    for (const e of this.#entries.values()) if (e.expiresAtMs !== undefined && e.expiresAtMs + KEEP_AFTER_EXP_MS < now) dead.push(e.jti);
    for (const jti of dead) this.#entries.delete(jti);
    while (this.#entries.size >= this.#max) {
      const oldest = this.#entries.keys().next().value as string;
      this.#entries.delete(oldest);
    }
    if (dead.length > 0) void this.#persist((r, key) => r.hdel(key, ...dead)).catch(() => {});
  }
}
