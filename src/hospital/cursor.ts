/**
 * Durable position of the hospital `_history` poller (src/hospital/poller.ts): the `_since`
 * instant it has read up to (https://hl7.org/fhir/R4/http.html#history) and which versions at or
 * near that instant it has already handled. Stored behind {@link HospitalCursorStore}: in memory
 * (tests), in a JSON file, or in Redis (the node's own Redis, the default of a node).
 *
 * A cursor holds no resource content and no resource ids: versions are remembered as truncated
 * SHA-256 hashes.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Redis } from 'ioredis';

/** The poller's position. JSON-serializable. */
export interface HospitalCursor {
  /** Format marker. */
  v: 1;
  /** FHIR instant (ISO 8601 UTC, ms): newest `lastUpdated` handled; the next poll asks `_since` this minus the overlap. */
  since: string;
  /** Hashes ({@link HospitalPoller} `versionTag`) of versions handled within the overlap window before `since`, each with its time (ms since epoch). */
  seen: Array<[tag: string, ms: number]>;
}

/** Where the poller keeps its {@link HospitalCursor}. */
export interface HospitalCursorStore {
  /**
   * Reads the cursor.
   * @returns The saved cursor, or `undefined` when none was saved yet.
   * @throws Error when the storage cannot be read or holds something that is not a cursor.
   */
  load(): Promise<HospitalCursor | undefined>;
  /**
   * Saves the cursor (replacing the previous one atomically).
   * @param cursor - the cursor.
   * @throws Error when the storage cannot be written.
   */
  save(cursor: HospitalCursor): Promise<void>;
  /** Releases connections or handles; idempotent. */
  close(): Promise<void>;
}

/**
 * Checks that a parsed value is a {@link HospitalCursor}.
 * @param value - parsed JSON.
 * @returns The value, typed.
 * @throws TypeError when it is not a cursor (wrong `v`, `since` not an instant, `seen` malformed).
 */
export function assertCursor(value: unknown): HospitalCursor {
  const c = value as Partial<HospitalCursor> | null;
  if (
    typeof c !== 'object' ||
    c === null ||
    c.v !== 1 ||
    typeof c.since !== 'string' ||
    Number.isNaN(Date.parse(c.since)) ||
    !Array.isArray(c.seen) ||
    !c.seen.every((s) => Array.isArray(s) && s.length === 2 && typeof s[0] === 'string' && typeof s[1] === 'number')
  ) {
    throw new TypeError('Not a hospital poller cursor');
  }
  return c as HospitalCursor;
}

/** A {@link HospitalCursorStore} in process memory (lost on restart). */
export class MemoryCursorStore implements HospitalCursorStore {
  #cursor: HospitalCursor | undefined;

  /** @inheritDoc */
  async load(): Promise<HospitalCursor | undefined> {
    return this.#cursor === undefined ? undefined : structuredClone(this.#cursor);
  }

  /** @inheritDoc */
  async save(cursor: HospitalCursor): Promise<void> {
    this.#cursor = structuredClone(cursor);
  }

  /** @inheritDoc */
  async close(): Promise<void> {}
}

/**
 * A {@link HospitalCursorStore} in a JSON file, written atomically (temporary file in the same
 * folder, then `rename`), mode 0600. The folder is created when missing.
 */
export class FileCursorStore implements HospitalCursorStore {
  /** Path of the JSON file. */
  readonly path: string;

  /** @param path - file path, e.g. `/var/lib/tidegate/hospital-cursor.json`. */
  constructor(path: string) {
    this.path = path;
  }

  /**
   * @inheritDoc
   * @throws Error when the file exists but cannot be read or is not a cursor (the message names the path only).
   */
  async load(): Promise<HospitalCursor | undefined> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    try {
      return assertCursor(JSON.parse(text));
    } catch {
      throw new Error(`Hospital cursor file ${this.path} is not a cursor`);
    }
  }

  /** @inheritDoc */
  async save(cursor: HospitalCursor): Promise<void> {
    await mkdir(dirname(this.path), { recursive: true });
    const tmp = `${this.path}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify(cursor), { mode: 0o600 });
    await rename(tmp, this.path);
  }

  /** @inheritDoc */
  async close(): Promise<void> {}
}

/** Options of {@link RedisCursorStore}. */
export interface RedisCursorStoreOptions {
  /** Redis URL (`redis://…`); the store opens its own connection on first use. */
  redisUrl: string;
  /** Redis key of the cursor (a string value holding JSON), e.g. `tidegate:hospital-cursor:hospital-a`. */
  key: string;
}

/** A {@link HospitalCursorStore} in one Redis string key (SET is atomic). */
export class RedisCursorStore implements HospitalCursorStore {
  /** Redis key of the cursor. */
  readonly key: string;
  readonly #redisUrl: string;
  #client: Redis | undefined;

  /** @param opts - Redis URL and key; no connection is opened until the first load/save. */
  constructor(opts: RedisCursorStoreOptions) {
    this.#redisUrl = opts.redisUrl;
    this.key = opts.key;
  }

  #redis(): Redis {
    if (this.#client === undefined) {
      this.#client = new Redis(this.#redisUrl, { maxRetriesPerRequest: 1, retryStrategy: (n: number) => Math.min(250 * n, 5000), disconnectTimeout: 500 });
      this.#client.on('error', () => {}); // failures surface as rejected commands
    }
    return this.#client;
  }

  /**
   * @inheritDoc
   * @throws Error when Redis is unreachable, or the key holds something that is not a cursor.
   */
  async load(): Promise<HospitalCursor | undefined> {
    const text = await this.#redis().get(this.key);
    if (text === null) return undefined;
    try {
      return assertCursor(JSON.parse(text));
    } catch {
      throw new Error('Hospital cursor in Redis is not a cursor');
    }
  }

  /** @inheritDoc */
  async save(cursor: HospitalCursor): Promise<void> {
    await this.#redis().set(this.key, JSON.stringify(cursor));
  }

  /** @inheritDoc */
  async close(): Promise<void> {
    const c = this.#client;
    this.#client = undefined;
    if (c === undefined) return;
    try {
      await Promise.race([c.quit(), new Promise((r) => setTimeout(r, 1000).unref())]);
    } catch {
      /* already closed */
    }
    c.disconnect();
  }
}
