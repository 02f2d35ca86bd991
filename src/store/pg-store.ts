/**
 * A durable {@link ResourceStore} in PostgreSQL (https://www.postgresql.org/docs/15/), through the
 * `pg` client (https://node-postgres.com/).
 *
 * The merge engine is synchronous (two merges of one resource never interleave), every PostgreSQL
 * client is asynchronous. The store bridges them like this (docs/storage.md, "PostgreSQL"):
 *
 * - **Cache of everything.** {@link PgStore.open} loads every record into memory, in its stored
 *   form: current document and version documents in the Yjs V2 encoding (keyframes and deltas,
 *   src/store/codec.ts), bodies plain or compacted. `get` is served from memory; bodies and version
 *   documents are decoded on access. Memory ≈ the size of the tables.
 * - **Write-behind with a barrier.** `set` updates the cache at once (so the next merge sees it) and
 *   queues the change. Queued changes are written by one transaction per batch (group commit: every
 *   `set` of one event-loop turn, or made while the previous batch was committing). {@link
 *   PgStore.durable} resolves once every `set` made before the call is committed (`COMMIT` with
 *   `synchronous_commit=on`: the server has flushed its WAL). The node sends nothing that depends on a
 *   write — HTTP response, gossip, hospital write, queue acknowledgement — before that.
 * - **No cache ahead of the database.** When a batch fails (connection lost, server down, timeout,
 *   any SQL error), the cache of every key of that batch and of the batch queued behind it returns to
 *   its last committed state, their barriers reject with {@link StoreUnavailableError}, and the store
 *   refuses writes until it has reconnected and re-read those keys from the database (a `COMMIT`
 *   whose answer was lost may have committed: the re-read settles it). Reads keep being served.
 * - **One writer per schema.** The store caches, so two processes on one schema would diverge.
 *   Opening increments a writer epoch in `tidegate_meta`; every batch checks it (`FOR SHARE`) and an
 *   older store whose epoch was taken over refuses to write (fenced).
 *
 * Tables (in a schema of their own, schema version {@link PG_SCHEMA_VERSION}): `tidegate_meta`
 * (schema version, writer epoch), `resource` (per key), `version` (per version). Bodies are written
 * plain and compacted in the background (raw DEFLATE against a reference body, src/store/codec.ts),
 * as in the SQLite store; history reads back byte-identical.
 */
import pg from 'pg';
import type { ResourceRecord, ResourceStore, VersionRecord } from './store.ts';
import {
  BodyCodec,
  StateKind,
  compressBody,
  decodeBody,
  decodeUpdateList,
  deltaOf,
  encodeUpdateList,
  mergeStates,
  plainBody,
  stateVectorOfV2,
  svCovers,
  toV1,
  toV2,
} from './codec.ts';

/** The schema version this build reads and writes (row `schema` of `tidegate_meta`). */
export const PG_SCHEMA_VERSION = 1;

/**
 * Raised when the store cannot make a write durable: PostgreSQL unreachable or failing, the store
 * fenced by a newer writer, or closed. The FHIR edge answers 503 with an OperationOutcome.
 * The message names the cause, never resource content.
 */
export class StoreUnavailableError extends Error {
  readonly code = 'ERR_STORE_UNAVAILABLE';
  override readonly name = 'StoreUnavailableError';
  /** `connection`: a batch failed, the store is recovering; `fenced`: another store took the schema over; `closed`; `read-only`. */
  readonly reason: 'connection' | 'fenced' | 'closed' | 'read-only';
  constructor(reason: 'connection' | 'fenced' | 'closed' | 'read-only', message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.reason = reason;
  }
}

/**
 * Raised by {@link PgStore.open} when the schema holds rows this build cannot read: another store
 * schema version, or versions that are not contiguous. Nothing is changed.
 */
export class StoreFormatError extends Error {
  readonly code = 'ERR_STORE_FORMAT';
  override readonly name = 'StoreFormatError';
}

/** Options of {@link PgStore.open}. */
export interface PgStoreOptions {
  /** `postgres://user:password@host:port/db` (libpq environment variables such as PGPASSWORD apply). */
  url: string;
  /** Schema holding the tables; created when absent. Default `tidegate`. */
  schema?: string;
  /** Connections in the pool. Default 3 (one batch commits at a time; the rest serve recovery and maintenance). */
  poolSize?: number;
  /** Connect timeout, ms. Default 5000. */
  connectTimeoutMs?: number;
  /** Client-side timeout of one statement, ms (a hung server fails the batch instead of blocking writes). Default 15000. */
  queryTimeoutMs?: number;
  /** `background` (default): compaction on timers between requests; `manual`: only {@link PgStore.compact}. */
  compaction?: 'background' | 'manual';
  /** A resource is compacted once it has this many versions with plain bodies (besides the newest). Default 16. */
  compactAfter?: number;
  /** Longest background compaction slice, ms (the event loop is blocked meanwhile). Default 8. */
  compactSliceMs?: number;
  /** Delay before a background compaction slice, ms. Default 50. */
  compactDelayMs?: number;
  /** A new state keyframe when deltas since the last one exceed this × its size. Default 2. */
  keyframeRatio?: number;
  /** Recovery retry delays after a failed batch, ms: first and cap (doubling). Default 100 and 5000. */
  retryMs?: number;
  retryMaxMs?: number;
  /**
   * Open for reading only (inspection, verification of a backup): no schema is created, the writer
   * epoch is not taken (the writing node is not fenced), every `set` throws. Default false.
   */
  readOnly?: boolean;
  /** Called with a failed batch's or recovery's error (no resource content). */
  onError?: (err: Error) => void;
}

/** Result of a compaction run. */
export interface PgCompactionResult {
  resources: number;
  bodies: number;
  bytesBefore: number;
  bytesAfter: number;
}

/** One version in its stored form (what the `version` row holds, before sealing). Never mutated. */
interface StoredVersion {
  versionId: string;
  lastUpdated: string;
  deleted: boolean;
  /** Body bytes per `bodyCodec`; null for a deletion. */
  body: Uint8Array | null;
  bodyCodec: number;
  /** Seq of the reference body for {@link BodyCodec.deflateWithRef}. */
  bodyRef: number | null;
  /** Keyframe or delta (V2); empty for {@link StateKind.current}. */
  state: Uint8Array;
  stateKind: number;
  /** In memory only: the version named by `bodyRef` (its body is the DEFLATE dictionary). */
  ref?: StoredVersion;
}

/** A record in its stored form. Never mutated: a `set` builds a new one (rollback keeps the old). */
interface Entry {
  key: string;
  stateV2: Uint8Array;
  pendingBlob: Uint8Array | null;
  versions: readonly StoredVersion[];
  /** State vector of the newest version's document, or null without versions. */
  vsv: Uint8Array | null;
  kfBytes: number;
  deltaBytes: number;
  /** Versions below this have compacted bodies. */
  compacted: number;
  /** Lazily built views. */
  views?: VersionRecord[];
  /** The newest version's body once decoded (or as written): every read of the resource serves it. */
  newestBody?: string | null;
  pendingV1?: Uint8Array[];
  record?: ResourceRecord;
}

/** A group of changes written in one transaction. */
interface Batch {
  /** Key → the entry before this batch's first change (undefined: the key was new). */
  before: Map<string, Entry | undefined>;
  /** Keys whose history was replaced (not appended): their stored versions are deleted first. */
  rewrites: Set<string>;
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: Error) => void;
}

const EMPTY = new Uint8Array(0);
const utf8d = new TextDecoder('utf-8', { fatal: true });
/** Most version bodies one background step rewrites. */
const SLICE_ROWS = 32;
/** Rows per page when loading the `version` table. */
const LOAD_PAGE = 5000;
/** Budget of decoded V1 documents kept in memory, bytes. */
const V1_CACHE_BYTES = 64 * 1024 * 1024;

/**
 * Takes a connection from the pool with an `error` listener for as long as it is checked out: a
 * connection lost mid-query errors its query *and* emits `error` on the client, which would end the
 * process without a listener (the pool only listens on idle clients).
 * @returns The client and its release (`destroy` for a connection that failed).
 */
async function acquire(pool: pg.Pool, onError: ((err: Error) => void) | undefined): Promise<{ client: pg.PoolClient; release: (destroy?: boolean) => void }> {
  const client = await pool.connect();
  const listener = (err: Error) => onError?.(err);
  client.on('error', listener);
  return {
    client,
    release: (destroy = false) => {
      client.removeListener('error', listener);
      client.release(destroy ? true : undefined);
    },
  };
}

function quoteIdent(name: string): string {
  if (!/^[A-Za-z_][A-Za-z0-9_]{0,62}$/.test(name)) throw new TypeError(`Invalid PostgreSQL schema name ${JSON.stringify(name)} (letters, digits, _; at most 63)`);
  return `"${name}"`;
}

function toBuffer(b: Uint8Array): Buffer {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

function fromBuffer(b: unknown): Uint8Array | null {
  if (b === null || b === undefined) return null;
  if (!(b instanceof Uint8Array)) throw new Error('Stored column is not bytea');
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

/**
 * The one place where stored forms become column bytes (writes) and back (reads). Sealing at rest
 * (src/store, the envelope issue) goes here: every byte string the store writes passes through
 * `out`, every one it reads through `in`. `column` names the column (`resource.state`,
 * `resource.pending`, `resource.vsv`, `version.body`, `version.state`), `key`/`seq` the row (AAD).
 */
const columnBytes = {
  out(bytes: Uint8Array, _column: string, _key: string, _seq?: number): Buffer {
    return toBuffer(bytes);
  },
  in(bytes: unknown, column: string, key: string, _seq?: number): Uint8Array | null {
    try {
      return fromBuffer(bytes);
    } catch (err) {
      throw new StoreFormatError(`Stored ${column} of a resource is unreadable (${(err as Error).message})`, { cause: err });
    }
  },
};

/**
 * The durable PostgreSQL {@link ResourceStore} (see module doc). Open with {@link PgStore.open};
 * `get`/`set`/`keys`/`size` have the MemoryStore's contract (records hold V1 documents), plus
 * {@link PgStore.durable} and {@link PgStore.unsettled}.
 */
export class PgStore implements ResourceStore {
  /** The schema holding the tables. */
  readonly schema: string;
  /** This store's writer epoch (see module doc, "One writer per schema"). */
  readonly epoch: number;
  private readonly pool: pg.Pool;
  private readonly q: string;
  private readonly entries: Map<string, Entry>;
  private readonly v1 = new Map<string, { v2: Uint8Array; v1: Uint8Array }>();
  private v1Bytes = 0;
  private readonly opts: PgStoreOptions;
  private readonly keyframeRatio: number;
  private readonly compactAfter: number;
  private readonly background: boolean;
  private readonly dirty = new Set<string>();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private open: Batch | undefined;
  private inflight: Batch | undefined;
  private flushScheduled = false;
  /** Set while writes are refused: a failed batch (recovering), fenced, or closed. */
  private down: StoreUnavailableError | undefined;
  /** Keys whose stored state is uncertain after a failed batch; re-read before writes resume. */
  private readonly suspect = new Set<string>();
  private recovering: Promise<void> | undefined;
  private closed = false;
  private lastRef: { version: StoredVersion; text: string } | undefined;

  private constructor(pool: pg.Pool, schema: string, epoch: number, entries: Map<string, Entry>, opts: PgStoreOptions) {
    this.pool = pool;
    this.schema = schema;
    this.q = quoteIdent(schema);
    this.epoch = epoch;
    this.entries = entries;
    this.opts = opts;
    this.keyframeRatio = opts.keyframeRatio ?? 2;
    this.compactAfter = Math.max(1, opts.compactAfter ?? 16);
    this.background = !opts.readOnly && (opts.compaction ?? 'background') === 'background';
    if (opts.readOnly) this.down = new StoreUnavailableError('read-only', 'This resource store was opened read-only');
    if (this.background) {
      for (const e of entries.values()) if (e.versions.length - 1 - e.compacted >= this.compactAfter) this.dirty.add(e.key);
      this.schedule();
    }
  }

  /**
   * Connects, creates the schema and tables when absent (idempotent, under an advisory lock so
   * concurrent openers do not race), takes the writer epoch, and loads every record.
   * @param opts - see {@link PgStoreOptions}.
   * @returns The opened store.
   * @throws StoreUnavailableError (`connection`) when PostgreSQL is unreachable or refuses the
   *   connection; Error when the schema was written by another schema version or the stored rows
   *   are inconsistent (versions not contiguous).
   */
  static async open(opts: PgStoreOptions): Promise<PgStore> {
    const schema = opts.schema ?? 'tidegate';
    const q = quoteIdent(schema);
    const pool = new pg.Pool({
      connectionString: opts.url,
      max: opts.poolSize ?? 3,
      connectionTimeoutMillis: opts.connectTimeoutMs ?? 5000,
      query_timeout: opts.queryTimeoutMs ?? 15000,
      idleTimeoutMillis: 30000,
      keepAlive: true,
    });
    // An idle connection that dies emits 'error' on the pool; unhandled it would end the process.
    pool.on('error', (err) => opts.onError?.(err));
    let client: pg.PoolClient;
    let release: (destroy?: boolean) => void;
    try {
      ({ client, release } = await acquire(pool, opts.onError));
    } catch (err) {
      await pool.end().catch(() => {});
      throw new StoreUnavailableError('connection', `Cannot connect to PostgreSQL for the resource store: ${(err as Error).message}`, { cause: err });
    }
    let epoch: number;
    try {
      await client.query('BEGIN');
      if (opts.readOnly) {
        const meta = await client.query(`SELECT name, value FROM ${q}.tidegate_meta WHERE name IN ('schema', 'writer_epoch')`);
        const m = new Map(meta.rows.map((r) => [String(r.name), String(r.value)]));
        if (Number(m.get('schema')) !== PG_SCHEMA_VERSION) throw new StoreFormatError(`PostgreSQL schema ${schema} has store schema version ${String(m.get('schema'))}; this build reads ${PG_SCHEMA_VERSION}`);
        epoch = Number(m.get('writer_epoch') ?? 0);
        await client.query('COMMIT');
      } else {
        await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`tidegate-schema:${schema}`]);
        await client.query(`CREATE SCHEMA IF NOT EXISTS ${q}`);
        await client.query(`CREATE TABLE IF NOT EXISTS ${q}.tidegate_meta (name text PRIMARY KEY, value text NOT NULL)`);
        await client.query(
          `CREATE TABLE IF NOT EXISTS ${q}.resource (rid bigint GENERATED BY DEFAULT AS IDENTITY UNIQUE, key text PRIMARY KEY, state bytea NOT NULL, pending bytea, ` +
            'nversions integer NOT NULL, vsv bytea, kf_bytes integer NOT NULL, delta_bytes integer NOT NULL, compacted integer NOT NULL)',
        );
        await client.query(
          `CREATE TABLE IF NOT EXISTS ${q}.version (key text NOT NULL, seq integer NOT NULL, version_id text NOT NULL, last_updated text NOT NULL, ` +
            'deleted boolean NOT NULL, body bytea, body_codec smallint NOT NULL, body_ref integer, state bytea NOT NULL, state_kind smallint NOT NULL, PRIMARY KEY (key, seq))',
        );
        const sv = await client.query(`SELECT value FROM ${q}.tidegate_meta WHERE name = 'schema'`);
        if (sv.rows.length === 0) await client.query(`INSERT INTO ${q}.tidegate_meta (name, value) VALUES ('schema', $1)`, [String(PG_SCHEMA_VERSION)]);
        else if (Number(sv.rows[0].value) !== PG_SCHEMA_VERSION) {
          throw new StoreFormatError(`PostgreSQL schema ${schema} has store schema version ${String(sv.rows[0].value)}; this build reads ${PG_SCHEMA_VERSION}`);
        }
        const ep = await client.query(
          `INSERT INTO ${q}.tidegate_meta (name, value) VALUES ('writer_epoch', '1') ON CONFLICT (name) DO UPDATE SET value = (${q}.tidegate_meta.value::bigint + 1)::text RETURNING value`,
        );
        epoch = Number(ep.rows[0].value);
        await client.query('COMMIT');
      }
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      release(true);
      await pool.end().catch(() => {});
      if (err instanceof StoreFormatError) throw err;
      throw new StoreUnavailableError('connection', `Cannot prepare PostgreSQL schema ${schema}: ${(err as Error).message}`, { cause: err });
    }
    let entries: Map<string, Entry>;
    try {
      entries = await loadEntries(client, q, undefined);
    } catch (err) {
      release(true);
      await pool.end().catch(() => {});
      throw err instanceof StoreFormatError ? err : new StoreUnavailableError('connection', `Cannot load the resource store from PostgreSQL: ${(err as Error).message}`, { cause: err });
    }
    release();
    return new PgStore(pool, schema, epoch, entries, opts);
  }

  /**
   * The record of `key` (from memory): current document (V1), versions oldest first, held-back
   * updates. Version bodies and documents are decoded on access.
   * @param key - `Type/id`.
   * @returns The record, or undefined when the key was never stored.
   * @throws Error when stored bytes are corrupt (on access of the field).
   */
  get(key: string): ResourceRecord | undefined {
    const e = this.entries.get(key);
    return e ? this.recordOf(e) : undefined;
  }

  /**
   * Stores a record: the cache at once, the database with the next batch ({@link durable} says
   * when). Versions that extend the stored list (same version ids in order) are appended; any other
   * list replaces the stored history.
   * @param key - `Type/id`.
   * @param record - document (V1), versions (each `state` V1), optional held-back updates (V1).
   * @throws StoreUnavailableError while the store refuses writes (recovering from a failed batch,
   *   fenced, closed); Error when a document is not a valid Yjs V1 update. Nothing changes then.
   */
  set(key: string, record: ResourceRecord): void {
    if (this.closed) throw new StoreUnavailableError('closed', 'The resource store is closed');
    if (this.down) throw this.down;
    const e = this.entries.get(key);
    const oldViews = e ? this.viewsOf(e) : [];
    const next = record.versions;
    let from = next.length;
    let rewrite = false;
    if (next !== oldViews) {
      const prefix = next.length >= oldViews.length && oldViews.every((v, i) => next[i] === v || next[i]?.versionId === v.versionId);
      if (prefix) from = oldViews.length;
      else {
        rewrite = true;
        from = 0;
      }
    }
    const recordState = record.state;
    const cachedV1 = this.v1.get(key);
    const stateV2 = e && cachedV1 && cachedV1.v2 === e.stateV2 && cachedV1.v1 === recordState ? e.stateV2 : toV2(recordState);
    const stateChanged = !e || (stateV2 !== e.stateV2 && Buffer.compare(stateV2, e.stateV2) !== 0);
    const pendingV1 = record.pending && record.pending.length > 0 ? record.pending : undefined;
    const pendingBlob = pendingV1 ? (e && e.pendingV1 === pendingV1 ? e.pendingBlob : encodeUpdateList(pendingV1)) : null;
    let vsv = rewrite ? null : (e?.vsv ?? null);
    let kfBytes = rewrite ? 0 : (e?.kfBytes ?? 0);
    let deltaBytes = rewrite ? 0 : (e?.deltaBytes ?? 0);
    const versions: StoredVersion[] = rewrite ? [] : [...(e?.versions ?? [])];
    // The newest version shares the current document (kind `current`): write it out before the
    // current document moves on.
    const lastOld = versions[versions.length - 1];
    if (lastOld && lastOld.stateKind === StateKind.current && e && (from < next.length || stateChanged)) {
      versions[versions.length - 1] = { ...lastOld, state: e.stateV2, stateKind: StateKind.keyframe };
    }
    let lastBody: string | null | undefined;
    let lastV1: Uint8Array | undefined;
    for (let seq = from; seq < next.length; seq++) {
      const src = next[seq]!;
      const stateV1 = src.state;
      const full = stateV1 === recordState ? stateV2 : toV2(stateV1);
      const sv = stateVectorOfV2(full);
      let state = full;
      let kind: number = StateKind.keyframe;
      if (vsv && svCovers(sv, vsv)) {
        const delta = deltaOf(full, vsv);
        if (delta.length < full.length && deltaBytes + delta.length <= this.keyframeRatio * kfBytes) {
          state = delta;
          kind = StateKind.delta;
        }
      }
      if (kind === StateKind.keyframe) {
        kfBytes = full.length;
        deltaBytes = 0;
      } else deltaBytes += state.length;
      vsv = sv;
      const body = src.body;
      versions.push({
        versionId: src.versionId,
        lastUpdated: src.lastUpdated,
        deleted: src.deleted,
        body: body === null ? null : plainBody(body),
        bodyCodec: body === null ? BodyCodec.none : BodyCodec.plain,
        bodyRef: null,
        state,
        stateKind: kind,
      });
      lastBody = body;
      lastV1 = stateV1;
    }
    const last = versions[versions.length - 1];
    if (from < next.length && last && last.stateKind === StateKind.keyframe && lastV1 === recordState) {
      versions[versions.length - 1] = { ...last, state: EMPTY, stateKind: StateKind.current };
    }
    const entry: Entry = {
      key,
      stateV2,
      pendingBlob,
      versions,
      vsv,
      kfBytes,
      deltaBytes,
      compacted: rewrite ? 0 : Math.min(e?.compacted ?? 0, versions.length),
    };
    if (pendingV1) entry.pendingV1 = pendingV1;
    if (lastBody !== undefined) entry.newestBody = lastBody;
    else if (e && e.newestBody !== undefined && versions.length === e.versions.length) entry.newestBody = e.newestBody;
    // Views hold their StoredVersion, not the entry: the unchanged ones are reused.
    const views = rewrite ? [] : oldViews.slice(0, Math.min(from, versions.length - 1));
    for (let seq = views.length; seq < versions.length; seq++) views.push(this.view(key, seq, versions[seq]!));
    entry.views = views;
    this.change(key, e, entry, rewrite);
    this.rememberV1(key, stateV2, recordState);
    if (this.background && versions.length - 1 - entry.compacted >= this.compactAfter) {
      this.dirty.add(key);
      this.schedule();
    }
  }

  /**
   * The durability barrier: resolves once every `set` made before this call is committed in
   * PostgreSQL (`COMMIT` with `synchronous_commit=on`).
   * @throws (rejects) StoreUnavailableError when one of them could not be committed; the cache of
   *   the keys concerned is then back at their last committed state.
   */
  durable(): Promise<void> {
    const b = this.open ?? this.inflight;
    return b ? b.promise : Promise.resolve();
  }

  /**
   * True while `key` has a change that is not committed yet. Anti-entropy does not send such a
   * key's document (it could still be rolled back); the next round does.
   * @param key - `Type/id`.
   */
  unsettled(key: string): boolean {
    return (this.open?.before.has(key) ?? false) || (this.inflight?.before.has(key) ?? false);
  }

  /**
   * The stored bytes of a resource's current document (Yjs V2), as in memory and in the database
   * (before sealing).
   * @param key - `Type/id`.
   * @returns V2 update bytes, or undefined when the key was never stored.
   */
  storedState(key: string): Uint8Array | undefined {
    return this.entries.get(key)?.stateV2;
  }

  /** Every stored key, in insertion order (a snapshot). */
  keys(): IterableIterator<string> {
    return [...this.entries.keys()].values();
  }

  /** Number of stored keys. */
  get size(): number {
    return this.entries.size;
  }

  /** Why writes are refused now, or undefined when they are accepted. */
  get unavailable(): StoreUnavailableError | undefined {
    return this.down;
  }

  /**
   * Compacts version bodies now (every resource with plain bodies besides the newest, or only
   * `key`) and waits until the change is committed. History reads back byte-identical.
   * @param key - only this resource.
   * @returns What was rewritten.
   * @throws StoreUnavailableError when the store refuses writes or the commit fails.
   */
  async compact(key?: string): Promise<PgCompactionResult> {
    const out: PgCompactionResult = { resources: 0, bodies: 0, bytesBefore: 0, bytesAfter: 0 };
    if (this.down) throw this.down;
    const keys = key !== undefined ? [key] : [...this.entries.keys()];
    for (const k of keys) while (this.compactKey(k, out, Infinity));
    await this.durable();
    return out;
  }

  /**
   * Waits for queued writes (their failure is reported through their barriers, not here), stops
   * compaction and closes the pool. Later writes throw. Closing twice is a no-op.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.durable().catch(() => {});
    this.down = new StoreUnavailableError('closed', 'The resource store is closed');
    await this.pool.end().catch(() => {});
  }

  // ---- batches ----

  /** Installs a new entry and queues its change. */
  private change(key: string, before: Entry | undefined, after: Entry, rewrite = false): void {
    if (!this.open) {
      let resolve!: () => void;
      let reject!: (err: Error) => void;
      const promise = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      // A barrier nobody awaits must not become an unhandled rejection.
      promise.catch(() => {});
      this.open = { before: new Map(), rewrites: new Set(), promise, resolve, reject };
    }
    if (!this.open.before.has(key)) this.open.before.set(key, before);
    if (rewrite) this.open.rewrites.add(key);
    this.entries.set(key, after);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled || this.inflight) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      void this.flush();
    });
  }

  /** Commits the open batch (one transaction), then the next one. */
  private async flush(): Promise<void> {
    if (this.inflight || !this.open) return;
    const batch = this.open;
    this.open = undefined;
    this.inflight = batch;
    // What the transaction writes: each key's entry as of now (later sets go to the next batch).
    const after = new Map<string, Entry>();
    for (const key of batch.before.keys()) after.set(key, this.entries.get(key)!);
    try {
      await this.commitBatch(batch, after);
    } catch (err) {
      this.fail(batch, err);
      return;
    }
    this.inflight = undefined;
    batch.resolve();
    if (this.open) this.scheduleFlush();
  }

  /** Rolls the cache back to what is committed and refuses writes until recovered. */
  private fail(batch: Batch, err: unknown): void {
    const fenced = err instanceof StoreUnavailableError && err.reason === 'fenced';
    const error =
      err instanceof StoreUnavailableError
        ? err
        : new StoreUnavailableError('connection', `PostgreSQL did not commit a batch of the resource store: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    const queued = this.open;
    this.open = undefined;
    this.inflight = undefined;
    // Newest first, so each key ends at the state before its oldest uncommitted change.
    for (const b of [queued, batch]) {
      if (!b) continue;
      for (const [key, prev] of b.before) {
        if (prev) this.entries.set(key, prev);
        else this.entries.delete(key);
        this.v1Drop(key);
        this.dirty.delete(key);
      }
    }
    for (const key of batch.before.keys()) this.suspect.add(key);
    this.down = error;
    this.opts.onError?.(error);
    batch.reject(error);
    queued?.reject(error);
    if (!fenced && !this.closed) this.recover();
  }

  /** Reconnects and re-reads the suspect keys (with backoff) until it succeeds, then accepts writes again. */
  private recover(): void {
    if (this.recovering) return;
    let delay = this.opts.retryMs ?? 100;
    const max = this.opts.retryMaxMs ?? 5000;
    const attempt = async (): Promise<void> => {
      for (;;) {
        if (this.closed) return;
        try {
          const { client, release } = await acquire(this.pool, this.opts.onError);
          let failed = true;
          try {
            const ep = await client.query(`SELECT value FROM ${this.q}.tidegate_meta WHERE name = 'writer_epoch'`);
            if (Number(ep.rows[0]?.value) !== this.epoch) {
              this.down = new StoreUnavailableError('fenced', `Another store took over PostgreSQL schema ${this.schema}; this one no longer writes`);
              return;
            }
            const keys = [...this.suspect];
            const fresh = await loadEntries(client, this.q, keys);
            for (const key of keys) {
              const e = fresh.get(key);
              if (e) this.entries.set(key, e);
              else this.entries.delete(key);
              this.v1Drop(key);
              this.suspect.delete(key);
            }
            failed = false;
          } finally {
            release(failed);
          }
          this.down = undefined;
          return;
        } catch (err) {
          this.opts.onError?.(err as Error);
          await new Promise((r) => setTimeout(r, delay).unref?.());
          delay = Math.min(max, delay * 2);
        }
      }
    };
    this.recovering = attempt().finally(() => {
      this.recovering = undefined;
    });
  }

  /** Writes one batch in one transaction. */
  private async commitBatch(batch: Batch, after: Map<string, Entry>): Promise<void> {
    const q = this.q;
    const rewrites: string[] = [];
    const v = { key: [] as string[], seq: [] as number[], vid: [] as string[], lu: [] as string[], del: [] as boolean[], body: [] as Array<Buffer | null>, codec: [] as number[], ref: [] as Array<number | null>, state: [] as Buffer[], kind: [] as number[] };
    const r = { key: [] as string[], state: [] as Buffer[], pending: [] as Array<Buffer | null>, n: [] as number[], vsv: [] as Array<Buffer | null>, kf: [] as number[], delta: [] as number[], compacted: [] as number[] };
    for (const [key, e] of after) {
      const prev = batch.before.get(key);
      const rewrite = batch.rewrites.has(key);
      if (rewrite) rewrites.push(key);
      const old = rewrite ? [] : (prev?.versions ?? []);
      for (let seq = 0; seq < e.versions.length; seq++) {
        const sv = e.versions[seq]!;
        if (old[seq] === sv) continue;
        const row = versionColumns(key, seq, sv);
        v.key.push(key);
        v.seq.push(seq);
        v.vid.push(sv.versionId);
        v.lu.push(sv.lastUpdated);
        v.del.push(sv.deleted);
        v.body.push(row.body);
        v.codec.push(sv.bodyCodec);
        v.ref.push(sv.bodyRef);
        v.state.push(row.state);
        v.kind.push(sv.stateKind);
      }
      const res = resourceColumns(e);
      r.key.push(key);
      r.state.push(res.state);
      r.pending.push(res.pending);
      r.n.push(e.versions.length);
      r.vsv.push(res.vsv);
      r.kf.push(e.kfBytes);
      r.delta.push(e.deltaBytes);
      r.compacted.push(e.compacted);
    }
    let client: pg.PoolClient;
    let release: (destroy?: boolean) => void;
    try {
      ({ client, release } = await acquire(this.pool, this.opts.onError));
    } catch (err) {
      throw new StoreUnavailableError('connection', `Cannot connect to PostgreSQL for the resource store: ${(err as Error).message}`, { cause: err });
    }
    let ok = false;
    try {
      await client.query('BEGIN');
      await client.query('SET LOCAL synchronous_commit TO on');
      const ep = await client.query(`SELECT value FROM ${q}.tidegate_meta WHERE name = 'writer_epoch' FOR SHARE`);
      if (Number(ep.rows[0]?.value) !== this.epoch) {
        throw new StoreUnavailableError('fenced', `Another store took over PostgreSQL schema ${this.schema} (writer epoch ${String(ep.rows[0]?.value)}, this one ${this.epoch}); this one no longer writes`);
      }
      if (rewrites.length > 0) await client.query(`DELETE FROM ${q}.version WHERE key = ANY($1::text[])`, [rewrites]);
      if (v.key.length > 0) {
        await client.query(
          `INSERT INTO ${q}.version (key, seq, version_id, last_updated, deleted, body, body_codec, body_ref, state, state_kind) ` +
            'SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::bool[], $6::bytea[], $7::smallint[], $8::int[], $9::bytea[], $10::smallint[]) ' +
            'ON CONFLICT (key, seq) DO UPDATE SET version_id = EXCLUDED.version_id, last_updated = EXCLUDED.last_updated, deleted = EXCLUDED.deleted, body = EXCLUDED.body, ' +
            'body_codec = EXCLUDED.body_codec, body_ref = EXCLUDED.body_ref, state = EXCLUDED.state, state_kind = EXCLUDED.state_kind',
          [v.key, v.seq, v.vid, v.lu, v.del, v.body, v.codec, v.ref, v.state, v.kind],
        );
      }
      await client.query(
        `INSERT INTO ${q}.resource (key, state, pending, nversions, vsv, kf_bytes, delta_bytes, compacted) ` +
          'SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::int[], $5::bytea[], $6::int[], $7::int[], $8::int[]) ' +
          'ON CONFLICT (key) DO UPDATE SET state = EXCLUDED.state, pending = EXCLUDED.pending, nversions = EXCLUDED.nversions, vsv = EXCLUDED.vsv, ' +
          'kf_bytes = EXCLUDED.kf_bytes, delta_bytes = EXCLUDED.delta_bytes, compacted = EXCLUDED.compacted',
        [r.key, r.state, r.pending, r.n, r.vsv, r.kf, r.delta, r.compacted],
      );
      await client.query('COMMIT');
      ok = true;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      // A connection that failed mid-transaction is not reused.
      release(!ok);
    }
  }

  // ---- views ----

  private recordOf(e: Entry): ResourceRecord {
    if (e.record) return e.record;
    const store = this;
    const record: ResourceRecord = {
      get state(): Uint8Array {
        return store.stateV1(e);
      },
      get versions(): VersionRecord[] {
        return store.viewsOf(e);
      },
      get pending(): Uint8Array[] | undefined {
        if (!e.pendingBlob) return undefined;
        if (e.pendingV1 === undefined) e.pendingV1 = decodeUpdateList(e.pendingBlob);
        return e.pendingV1;
      },
    };
    e.record = record;
    return record;
  }

  private viewsOf(e: Entry): VersionRecord[] {
    if (!e.views) e.views = e.versions.map((sv, seq) => this.view(e.key, seq, sv));
    return e.views;
  }

  /**
   * A version whose body and document are decoded on access. It holds its StoredVersion, not the
   * entry, so views kept across writes do not pin old entries.
   */
  private view(key: string, seq: number, sv: StoredVersion): VersionRecord {
    const store = this;
    return {
      versionId: sv.versionId,
      lastUpdated: sv.lastUpdated,
      deleted: sv.deleted,
      get body(): string | null {
        return store.bodyOfView(key, seq, sv);
      },
      get state(): Uint8Array {
        return store.stateOfView(key, seq, sv);
      },
    };
  }

  private bodyOfView(key: string, seq: number, sv: StoredVersion): string | null {
    const live = this.entries.get(key);
    const newest = live !== undefined && seq === live.versions.length - 1 && live.versions[seq]!.versionId === sv.versionId;
    if (newest && live.newestBody !== undefined) return live.newestBody;
    const text = this.decodeStoredBody(sv);
    if (newest) live.newestBody = text;
    return text;
  }

  private decodeStoredBody(v: StoredVersion): string | null {
    if (v.bodyCodec === BodyCodec.none) return null;
    if (v.body === null) throw new Error('A stored version body is missing');
    if (v.bodyCodec === BodyCodec.plain) return utf8d.decode(v.body);
    let ref: string | undefined;
    if (v.bodyCodec === BodyCodec.deflateWithRef) {
      const r = v.ref;
      if (!r) throw new Error('A stored version body needs its reference body, which is missing');
      // Consecutive versions share a reference (history reads them in a row): decode it once.
      if (this.lastRef?.version === r) ref = this.lastRef.text;
      else {
        ref = this.decodeStoredBody(r) ?? undefined;
        if (ref !== undefined) this.lastRef = { version: r, text: ref };
      }
    }
    return decodeBody(v.body, v.bodyCodec, ref);
  }

  private stateOfView(key: string, seq: number, sv: StoredVersion): Uint8Array {
    if (sv.stateKind === StateKind.keyframe) return toV1(sv.state);
    const live = this.entries.get(key);
    if (!live || live.versions[seq]?.versionId !== sv.versionId) throw new Error('The history of this resource changed since this version was read');
    return this.versionState(live, seq);
  }

  private versionState(e: Entry, seq: number): Uint8Array {
    let start = seq;
    while (start >= 0 && e.versions[start]?.stateKind === StateKind.delta) start--;
    const first = e.versions[start];
    if (!first) throw new Error(`Document of version ${seq} of a resource cannot be rebuilt`);
    if (first.stateKind === StateKind.current) return this.stateV1(e);
    const parts: Uint8Array[] = [];
    for (let i = start; i <= seq; i++) parts.push(e.versions[i]!.state);
    return toV1(mergeStates(parts));
  }

  private stateV1(e: Entry): Uint8Array {
    const hit = this.v1.get(e.key);
    if (hit && hit.v2 === e.stateV2) return hit.v1;
    const v1 = toV1(e.stateV2);
    if (this.entries.get(e.key) === e) this.rememberV1(e.key, e.stateV2, v1);
    return v1;
  }

  private rememberV1(key: string, v2: Uint8Array, v1: Uint8Array): void {
    this.v1Drop(key);
    this.v1.set(key, { v2, v1 });
    this.v1Bytes += v1.length;
    for (const [k, old] of this.v1) {
      if (this.v1Bytes <= V1_CACHE_BYTES || k === key) break;
      this.v1.delete(k);
      this.v1Bytes -= old.v1.length;
    }
  }

  private v1Drop(key: string): void {
    const old = this.v1.get(key);
    if (!old) return;
    this.v1.delete(key);
    this.v1Bytes -= old.v1.length;
  }

  // ---- compaction ----

  private schedule(): void {
    if (this.timer || this.closed || this.dirty.size === 0) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.compactSlice();
    }, this.opts.compactDelayMs ?? 50);
    this.timer.unref?.();
  }

  private compactSlice(): void {
    if (this.closed) return;
    if (this.down) {
      // Retried once writes are accepted again.
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.compactSlice();
      }, this.opts.compactDelayMs ?? 50);
      this.timer.unref?.();
      return;
    }
    const t0 = performance.now();
    const out: PgCompactionResult = { resources: 0, bodies: 0, bytesBefore: 0, bytesAfter: 0 };
    for (const key of this.dirty) {
      this.dirty.delete(key);
      try {
        if (this.compactKey(key, out, SLICE_ROWS)) this.dirty.add(key);
      } catch {
        // A corrupt body stays as it is; reading it reports the error to the client that asks.
      }
      if (performance.now() - t0 >= (this.opts.compactSliceMs ?? 8)) break;
    }
    this.schedule();
  }

  /**
   * Compresses the plain bodies of versions `compacted .. n-2` of one resource (at most `maxRows`)
   * into a new entry, queued like a write. Bodies decode to the same text.
   * @returns True when plain bodies remain (besides the newest).
   */
  private compactKey(key: string, out: PgCompactionResult, maxRows: number): boolean {
    const e = this.entries.get(key);
    if (!e) return false;
    const start = e.compacted;
    const upto = Math.min(e.versions.length - 1, start + maxRows);
    if (start >= upto) return false;
    let ref: { seq: number; text: string } | undefined;
    for (let i = start - 1; i >= 0; i--) {
      if (e.versions[i]!.bodyCodec === BodyCodec.deflate) {
        ref = { seq: i, text: this.decodeStoredBody(e.versions[i]!)! };
        break;
      }
    }
    const versions = [...e.versions];
    let bodies = 0;
    for (let seq = start; seq < upto; seq++) {
      const v = versions[seq]!;
      if (v.bodyCodec !== BodyCodec.plain || v.body === null) continue;
      const text = utf8d.decode(v.body);
      let next: StoredVersion | undefined;
      if (ref) {
        const c = compressBody(text, ref.text);
        if (c.length * 8 < v.body.length) next = { ...v, body: c, bodyCodec: BodyCodec.deflateWithRef, bodyRef: ref.seq, ref: versions[ref.seq]! };
      }
      if (!next) {
        next = { ...v, body: compressBody(text), bodyCodec: BodyCodec.deflate, bodyRef: null };
        delete next.ref;
        ref = { seq, text };
      }
      out.bytesBefore += v.body.length;
      out.bytesAfter += next.body!.length;
      versions[seq] = next;
      bodies++;
    }
    const entry: Entry = { ...e, versions, compacted: upto };
    // Views are rebuilt over the compacted versions (old views keep decoding the same text).
    delete entry.record;
    delete entry.views;
    this.change(key, e, entry);
    out.resources++;
    out.bodies += bodies;
    return upto < versions.length - 1;
  }
}

/** Column bytes of a version row (through {@link columnBytes}). */
function versionColumns(key: string, seq: number, v: StoredVersion): { body: Buffer | null; state: Buffer } {
  return {
    body: v.body === null ? null : columnBytes.out(v.body, 'version.body', key, seq),
    state: columnBytes.out(v.state, 'version.state', key, seq),
  };
}

/** Column bytes of a resource row (through {@link columnBytes}). */
function resourceColumns(e: Entry): { state: Buffer; pending: Buffer | null; vsv: Buffer | null } {
  return {
    state: columnBytes.out(e.stateV2, 'resource.state', e.key),
    pending: e.pendingBlob === null ? null : columnBytes.out(e.pendingBlob, 'resource.pending', e.key),
    vsv: e.vsv === null ? null : columnBytes.out(e.vsv, 'resource.vsv', e.key),
  };
}

/**
 * Reads resource and version rows into entries: all of them (`keys` undefined) or those keys.
 * @throws Error when rows are inconsistent (versions not contiguous, count mismatch) or unreadable;
 *   pg errors as thrown by the client.
 */
async function loadEntries(client: pg.PoolClient, q: string, keys: string[] | undefined): Promise<Map<string, Entry>> {
  const entries = new Map<string, Entry>();
  const byKey = keys !== undefined;
  const res = await client.query(
    `SELECT key, state, pending, nversions, vsv, kf_bytes, delta_bytes, compacted FROM ${q}.resource${byKey ? ' WHERE key = ANY($1::text[])' : ''} ORDER BY rid`,
    byKey ? [keys] : [],
  );
  const counts = new Map<string, number>();
  const versions = new Map<string, StoredVersion[]>();
  for (const row of res.rows) {
    const key = String(row.key);
    counts.set(key, Number(row.nversions));
    versions.set(key, []);
    entries.set(key, {
      key,
      stateV2: columnBytes.in(row.state, 'resource.state', key) ?? EMPTY,
      pendingBlob: columnBytes.in(row.pending, 'resource.pending', key),
      versions: [],
      vsv: columnBytes.in(row.vsv, 'resource.vsv', key),
      kfBytes: Number(row.kf_bytes),
      deltaBytes: Number(row.delta_bytes),
      compacted: Number(row.compacted),
    });
  }
  let after: [string, number] = ['', -1];
  for (;;) {
    const page = await client.query(
      `SELECT key, seq, version_id, last_updated, deleted, body, body_codec, body_ref, state, state_kind FROM ${q}.version ` +
        `WHERE (key, seq) > ($1, $2)${byKey ? ' AND key = ANY($4::text[])' : ''} ORDER BY key, seq LIMIT $3`,
      byKey ? [after[0], after[1], LOAD_PAGE, keys] : [after[0], after[1], LOAD_PAGE],
    );
    for (const row of page.rows) {
      const key = String(row.key);
      const seq = Number(row.seq);
      const list = versions.get(key);
      if (!list) throw new StoreFormatError('Stored versions are inconsistent: a version row has no resource row');
      if (seq !== list.length) throw new StoreFormatError(`Stored versions of a resource are not contiguous (missing ${list.length})`);
      list.push({
        versionId: String(row.version_id),
        lastUpdated: String(row.last_updated),
        deleted: row.deleted === true,
        body: columnBytes.in(row.body, 'version.body', key, seq),
        bodyCodec: Number(row.body_codec),
        bodyRef: row.body_ref === null ? null : Number(row.body_ref),
        state: columnBytes.in(row.state, 'version.state', key, seq) ?? EMPTY,
        stateKind: Number(row.state_kind),
      });
      after = [key, seq];
    }
    if (page.rows.length < LOAD_PAGE) break;
  }
  for (const [key, e] of entries) {
    const list = versions.get(key)!;
    if (list.length !== counts.get(key)) throw new StoreFormatError(`Stored versions of a resource are inconsistent (${list.length} rows, ${String(counts.get(key))} expected)`);
    for (const v of list) if (v.bodyRef !== null) v.ref = list[v.bodyRef];
    e.versions = list;
  }
  return entries;
}
