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
 * (schema version, sealed flag, writer epoch), `resource` (per key), `version` (per version),
 * `shredded` (tombstones), `shred_pending`, `audit_event`. Bodies are written plain and compacted in
 * the background (raw DEFLATE against a reference body, src/store/codec.ts), as in the SQLite store;
 * history reads back byte-identical.
 *
 * **Sealed at rest** (option `secretKeys`, always set by `tidegate serve`): the same design as the
 * SQLite store (src/store/seal.ts, `tidegate-store/1`). Every byte string a row holds about a
 * resource — its key, current document, held-back updates, state vector, each version's metadata
 * (versionId, lastUpdated), document and body — is sealed with the resource's own content key
 * (AES-256-GCM, AAD = record kind, version seq and key), rows are filed under the HMAC tag of the key
 * (`resourceTag`) instead of `Type/id`, and the content keys live in a **local key vault file**
 * (src/store/vault.ts, option `keyVaultFile`), not in the database: a database backup holds no key,
 * so {@link PgStore.shred} (crypto-shredding) reaches every backup of the database. Without
 * `secretKeys` the same schema holds plaintext (tests and benchmarks only); a schema remembers which
 * it is and refuses to be opened the other way.
 */
import pg from 'pg';
import type { ResourceRecord, ResourceStore, VersionRecord } from './store.ts';
import type { NodeSecretKeys } from '../envelope/keys.ts';
import { RecordKind, decodeVersionMeta, encodeVersionMeta, openRecord, resourceTag, sealRecord } from './seal.ts';
import type { RecordKindId } from './seal.ts';
import { discardNewVault, incompleteVaultMessage, KeyVault, KeyVaultError, lostVaultAdvice, vaultFileExists } from './vault.ts';
import type { RewrapResult } from './vault.ts';
import { ResourceShreddedError } from './sqlite-store.ts';
import type { StoreShredResult } from './sqlite-store.ts';
import {
  BodyCodec,
  StateKind,
  compressBody,
  decodeBody,
  decodeUpdateList,
  encodeUpdateList,
  mergeStates,
  plainBody,
  toV1,
  toV2,
  nextHistoryState,
} from './codec.ts';
import type { HistoryChain } from './codec.ts';

/**
 * The schema version this build reads and writes (row `schema` of `tidegate_meta`). Version 1 (before
 * sealing: keys, version ids and times in clear) is refused.
 */
export const PG_SCHEMA_VERSION = 2;

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
  /**
   * The node's secret keys: the store is then **sealed** (see module doc), its content keys in the
   * key vault file `keyVaultFile`. Without them the store keeps plaintext (tests and benchmarks only).
   */
  secretKeys?: NodeSecretKeys;
  /**
   * Key vault file of a sealed store (a local SQLite file, src/store/vault.ts), required with
   * `secretKeys`. Keep it off the database server and out of database backups: that is what makes
   * crypto-shredding reach those backups (docs/storage.md "PostgreSQL: sealed at rest").
   */
  keyVaultFile?: string;
  /** Content keys created per vault write (see {@link KeyVault}). Default 256. */
  vaultPoolSize?: number;
  /** Re-wrap the vault at open when it is not under the current X-Wing key. Default true (false when `readOnly`). */
  autoRewrap?: boolean;
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
  /** Key vault slot of the resource's content key (0 in an unsealed store). */
  slot: number;
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
/** Tagged (HMAC under the vault's index key) into `tidegate_meta.vault_check`; not a `Type/id`, so no resource has this tag. */
const VAULT_CHECK = 'tidegate-store/1 vault-check';
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

/** What each sealed column holds (the record kind bound in its AAD, src/store/seal.ts). */
const COLUMN_KIND = {
  'resource.state': RecordKind.state,
  'resource.pending': RecordKind.pending,
  'resource.vsv': RecordKind.stateVector,
  'version.meta': RecordKind.versionMeta,
  'version.state': RecordKind.versionState,
  /** Plain (uncompacted) body. */
  'version.body': RecordKind.freshBody,
  /** Compacted body (raw DEFLATE). */
  'version.body.compacted': RecordKind.compactBody,
} as const satisfies Record<string, RecordKindId>;
/** A sealed column of {@link COLUMN_KIND}. */
type Column = keyof typeof COLUMN_KIND;

/** Hex of a row key. */
function hexOf(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

/**
 * The one place where stored forms become column bytes (writes) and back (reads): every byte
 * string the store writes about a resource passes through `out`, every one it reads through `in`.
 * With a key vault they are sealed records (`sealRecord` / `openRecord` under the slot's content key;
 * the AAD binds the column's record kind, `seq` — 0 for resource columns — and the key); without one
 * the bytes are stored as they are. `tag` is the row id of a key, `name`/`openName` the sealed key.
 */
interface ColumnCodec {
  /** The row id of `key`: HMAC-SHA256 tag (sealed) or the key's UTF-8 (unsealed). */
  tag(key: string): Buffer;
  /** Column bytes of a field. @throws KeyVaultError when the slot's key was destroyed. */
  out(bytes: Uint8Array, column: Column, key: string, slot: number, seq?: number): Buffer;
  /** Field bytes of a column, or null for SQL NULL. @throws StoreFormatError (not bytea), SealedRecordError, KeyVaultError. */
  in(bytes: unknown, column: Column, key: string, slot: number, seq?: number): Uint8Array | null;
  /** The `name` column of a key (the key sealed and bound to its tag, which the reader knows). */
  name(tag: Uint8Array, slot: number, key: string): Buffer;
  /** The key of a row from its `key` (tag) and `name` columns. @throws StoreFormatError when the name does not match the tag. */
  openName(tag: Uint8Array, slot: number, name: Uint8Array): string;
}

/** The codec of a store: sealing under `vault`'s keys, or plain bytes without a vault. */
function columnCodec(vault: KeyVault | undefined): ColumnCodec {
  const utf8e = new TextEncoder();
  const read = (bytes: unknown, what: string): Uint8Array | null => {
    try {
      return fromBuffer(bytes);
    } catch (err) {
      throw new StoreFormatError(`Stored ${what} of a resource is unreadable (${(err as Error).message})`, { cause: err });
    }
  };
  if (!vault) {
    return {
      tag: (key) => Buffer.from(key, 'utf8'),
      out: (bytes) => toBuffer(bytes),
      in: (bytes, column) => read(bytes, column),
      name: (_tag, _slot, key) => Buffer.from(key, 'utf8'),
      openName: (tag, _slot, name) => {
        const key = utf8d.decode(name);
        if (Buffer.compare(Buffer.from(key, 'utf8'), tag) !== 0) throw new StoreFormatError('A resource name does not match its row');
        return key;
      },
    };
  }
  return {
    tag: (key) => toBuffer(resourceTag(vault.indexKey, key)),
    out: (bytes, column, key, slot, seq = 0) => toBuffer(sealRecord(vault.contentKey(slot), COLUMN_KIND[column], key, seq, bytes)),
    in: (bytes, column, key, slot, seq = 0) => {
      const raw = read(bytes, column);
      return raw === null ? null : openRecord(vault.contentKey(slot), COLUMN_KIND[column], key, seq, raw);
    },
    name: (tag, slot, key) => toBuffer(sealRecord(vault.contentKey(slot), RecordKind.key, hexOf(tag), 0, utf8e.encode(key))),
    openName: (tag, slot, name) => {
      const key = utf8d.decode(openRecord(vault.contentKey(slot), RecordKind.key, hexOf(tag), 0, name));
      if (Buffer.compare(resourceTag(vault.indexKey, key), tag) !== 0) throw new StoreFormatError('A resource name does not match its tag');
      return key;
    },
  };
}

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
  /** Key vault of a sealed store; undefined when unsealed. */
  private readonly vault: KeyVault | undefined;
  private readonly codec: ColumnCodec;
  /** Hex tags of shredded keys (tombstones). */
  private readonly tombstones: Set<string>;
  /** Sets collecting the keys written while they are registered ({@link watchWrites}). */
  private readonly watchers = new Set<Set<string>>();
  /** Resource rows skipped at open because they cannot be decrypted (see {@link unreadableAtOpen}). */
  readonly unreadableAtOpen: number;

  private constructor(pool: pg.Pool, schema: string, epoch: number, loaded: Loaded, opts: PgStoreOptions, vault: KeyVault | undefined, codec: ColumnCodec, tombstones: Set<string>) {
    this.pool = pool;
    this.schema = schema;
    this.q = quoteIdent(schema);
    this.epoch = epoch;
    this.entries = loaded.entries;
    this.unreadableAtOpen = loaded.unreadable;
    this.vault = vault;
    this.codec = codec;
    this.tombstones = tombstones;
    this.opts = opts;
    this.keyframeRatio = opts.keyframeRatio ?? 2;
    this.compactAfter = Math.max(1, opts.compactAfter ?? 16);
    this.background = !opts.readOnly && (opts.compaction ?? 'background') === 'background';
    if (opts.readOnly) this.down = new StoreUnavailableError('read-only', 'This resource store was opened read-only');
    if (this.background) {
      for (const e of this.entries.values()) if (e.versions.length - 1 - e.compacted >= this.compactAfter) this.dirty.add(e.key);
      this.schedule();
    }
  }

  /**
   * Connects, creates the schema and tables when absent (idempotent, under an advisory lock so
   * concurrent openers do not race), takes the writer epoch, and loads every record.
   * @param opts - see {@link PgStoreOptions}.
   * @returns The opened store.
   * A sealed store opens its key vault first: a vault held by a running node (`ERR_VAULT_IN_USE`)
   * stops the open before the writer epoch is taken, so `tidegate shred` cannot fence a running node
   * that shares the vault file. Resource rows whose content key was destroyed (a restored backup
   * taken before a shred) are skipped and counted ({@link unreadableAtOpen}).
   * @throws StoreUnavailableError (`connection`) when PostgreSQL is unreachable or refuses the
   *   connection; StoreFormatError when the schema was written by another schema version (1:
   *   unsealed), is sealed and no keys were given (or the reverse), or the stored rows are
   *   inconsistent (versions not contiguous); KeyVaultError when the vault is in use, damaged, or
   *   wrapped under a key the key file lacks; TypeError for `secretKeys` without `keyVaultFile`.
   */
  static async open(opts: PgStoreOptions): Promise<PgStore> {
    const schema = opts.schema ?? 'tidegate';
    const q = quoteIdent(schema);
    let vault: KeyVault | undefined;
    let vaultExisted = true;
    if (opts.secretKeys !== undefined) {
      if (opts.keyVaultFile === undefined || opts.keyVaultFile === '') throw new TypeError('PgStore: a sealed store (secretKeys) needs keyVaultFile');
      vaultExisted = vaultFileExists(opts.keyVaultFile);
      vault = new KeyVault(opts.keyVaultFile, {
        secretKeys: opts.secretKeys,
        ...(opts.vaultPoolSize !== undefined ? { poolSize: opts.vaultPoolSize } : {}),
        autoRewrap: opts.autoRewrap ?? !opts.readOnly,
      });
    }
    try {
      return await PgStore.openWith(opts, schema, q, vault);
    } catch (err) {
      vault?.close();
      // A vault created just now in place of a missing one: delete it again and say it was missing.
      if (!vaultExisted && err instanceof StoreFormatError && /not the key vault/.test(err.message)) {
        discardNewVault(opts.keyVaultFile!);
        throw new StoreFormatError(`${err.message}: the file did not exist, and a new empty vault reads none of the schema's sealed records. ${lostVaultAdvice(opts.keyVaultFile!, `PostgreSQL schema ${schema}`)}`, { cause: err });
      }
      throw err;
    }
  }

  private static async openWith(opts: PgStoreOptions, schema: string, q: string, vault: KeyVault | undefined): Promise<PgStore> {
    const sealed = vault !== undefined ? '1' : '0';
    const codec = columnCodec(vault);
    // Identifies the vault (its index key, stable across rotations) without revealing anything of it.
    const vaultCheck = vault !== undefined ? hexOf(codec.tag(VAULT_CHECK)) : undefined;
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
      const checkMeta = (m: Map<string, string>): void => {
        const version = m.get('schema');
        if (Number(version) !== PG_SCHEMA_VERSION) {
          throw new StoreFormatError(
            `PostgreSQL schema ${schema} has store schema version ${String(version)}; this build reads ${PG_SCHEMA_VERSION}` +
              (version === '1' ? ' (version 1 is unsealed: start on an empty schema and let anti-entropy restore it from the peers)' : ''),
          );
        }
        if (m.get('sealed') !== sealed) {
          throw new StoreFormatError(m.get('sealed') === '1' ? `PostgreSQL schema ${schema} is sealed: open it with the node secret keys and its keyVaultFile` : `PostgreSQL schema ${schema} holds plaintext and cannot be opened as a sealed store`);
        }
        // A vault that is not this schema's (wrong keyVaultFile, a new empty vault) would make every
        // row unreadable: refuse it instead of starting empty.
        if (vaultCheck !== undefined && m.get('vault_check') !== vaultCheck) {
          throw new StoreFormatError(`Key vault ${String(opts.keyVaultFile)} is not the key vault of PostgreSQL schema ${schema} (check keyVaultFile)`);
        }
      };
      const readMeta = async (): Promise<Map<string, string>> =>
        new Map((await client.query(`SELECT name, value FROM ${q}.tidegate_meta WHERE name IN ('schema', 'sealed', 'vault_check', 'writer_epoch')`)).rows.map((r) => [String(r.name), String(r.value)]));
      if (opts.readOnly) {
        const m = await readMeta();
        checkMeta(m);
        epoch = Number(m.get('writer_epoch') ?? 0);
        await client.query('COMMIT');
      } else {
        await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`tidegate-schema:${schema}`]);
        await client.query(`CREATE SCHEMA IF NOT EXISTS ${q}`);
        await client.query(`CREATE TABLE IF NOT EXISTS ${q}.tidegate_meta (name text PRIMARY KEY, value text NOT NULL)`);
        // The version is checked before any other table is created: an older layout is left as it is.
        const existing = await readMeta();
        if (existing.has('schema')) checkMeta(existing);
        else {
          await client.query(`INSERT INTO ${q}.tidegate_meta (name, value) VALUES ('schema', $1), ('sealed', $2)`, [String(PG_SCHEMA_VERSION), sealed]);
          if (vaultCheck !== undefined) await client.query(`INSERT INTO ${q}.tidegate_meta (name, value) VALUES ('vault_check', $1)`, [vaultCheck]);
        }
        // `key` = HMAC-SHA256 tag of `Type/id` (sealed) or its UTF-8 (unsealed); `name` = the key, sealed;
        // `slot` = its content key in the key vault; every other bytea column about a resource is sealed.
        await client.query(
          `CREATE TABLE IF NOT EXISTS ${q}.resource (rid bigint GENERATED BY DEFAULT AS IDENTITY UNIQUE, key bytea PRIMARY KEY, slot bigint NOT NULL, name bytea NOT NULL, ` +
            'state bytea NOT NULL, pending bytea, nversions integer NOT NULL, vsv bytea, kf_bytes integer NOT NULL, delta_bytes integer NOT NULL, compacted integer NOT NULL)',
        );
        await client.query(
          `CREATE TABLE IF NOT EXISTS ${q}.version (key bytea NOT NULL, seq integer NOT NULL, meta bytea NOT NULL, ` +
            'deleted boolean NOT NULL, body bytea, body_codec smallint NOT NULL, body_ref integer, state bytea NOT NULL, state_kind smallint NOT NULL, PRIMARY KEY (key, seq))',
        );
        await client.query(`CREATE TABLE IF NOT EXISTS ${q}.shredded (tag bytea PRIMARY KEY, at text NOT NULL)`);
        await client.query(`CREATE TABLE IF NOT EXISTS ${q}.shred_pending (slot bigint PRIMARY KEY)`);
        await client.query(`CREATE TABLE IF NOT EXISTS ${q}.audit_event (id text PRIMARY KEY, recorded text NOT NULL, event text NOT NULL)`);
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
    let loaded: Loaded;
    const tombstones = new Set<string>();
    try {
      for (const r of (await client.query(`SELECT tag FROM ${q}.shredded`)).rows) tombstones.add(hexOf(fromBuffer(r.tag) ?? EMPTY));
      if (vault) {
        // A vault backup older than the schema would make the newer rows read as shredded: refuse it.
        const above = Number((await client.query(`SELECT count(*) AS n FROM ${q}.resource WHERE slot > $1`, [vault.highWater])).rows[0].n);
        if (above > 0) throw new KeyVaultError('ERR_VAULT_INCOMPLETE', incompleteVaultMessage(String(opts.keyVaultFile), `PostgreSQL schema ${schema}`, above, vault.highWater));
      }
      loaded = await loadEntries(client, q, codec, undefined, tombstones);
      if (vault) {
        vault.setUsed(loaded.slots);
        // A shred interrupted between its database transaction and the vault: finish destroying the keys.
        const pendingSlots = (await client.query(`SELECT slot FROM ${q}.shred_pending`)).rows.map((r) => Number(r.slot));
        if (pendingSlots.length > 0 && !opts.readOnly) {
          vault.destroy(pendingSlots);
          await client.query(`DELETE FROM ${q}.shred_pending WHERE slot = ANY($1::bigint[])`, [pendingSlots]);
        }
      }
    } catch (err) {
      release(true);
      await pool.end().catch(() => {});
      throw err instanceof StoreFormatError || err instanceof KeyVaultError ? err : new StoreUnavailableError('connection', `Cannot load the resource store from PostgreSQL: ${(err as Error).message}`, { cause: err });
    }
    release();
    return new PgStore(pool, schema, epoch, loaded, opts, vault, codec, tombstones);
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
   *   fenced, closed); ResourceShreddedError (410) for a crypto-shredded key; Error when a document
   *   is not a valid Yjs V1 update, or a new resource gets no content key (vault I/O error). Nothing
   *   changes then.
   */
  set(key: string, record: ResourceRecord): void {
    if (this.closed) throw new StoreUnavailableError('closed', 'The resource store is closed');
    if (this.down) throw this.down;
    if (this.isShredded(key)) throw new ResourceShreddedError();
    for (const w of this.watchers) w.add(key);
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
    const chain: HistoryChain = rewrite || !e ? { vsv: null, kfBytes: 0, deltaBytes: 0 } : { vsv: e.vsv, kfBytes: e.kfBytes, deltaBytes: e.deltaBytes };
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
      const { state, kind } = nextHistoryState(chain, stateV1 === recordState ? stateV2 : toV2(stateV1), this.keyframeRatio);
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
    // A new resource takes a content key slot (no vault write but once per pool); until its batch is
    // committed a crash returns the slot to the pool.
    const slot = e?.slot ?? (this.vault ? this.vault.allocate() : 0);
    const entry: Entry = {
      key,
      slot,
      stateV2,
      pendingBlob,
      versions,
      vsv: chain.vsv,
      kfBytes: chain.kfBytes,
      deltaBytes: chain.deltaBytes,
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
    this.vault?.close();
  }

  // ---- sealing, crypto-shredding, audit ----

  /** True when the store is sealed (opened with the node's secret keys and a key vault). */
  get sealed(): boolean {
    return this.vault !== undefined;
  }

  /** The key vault of a sealed store (undefined when unsealed). */
  get keyVault(): KeyVault | undefined {
    return this.vault;
  }

  /**
   * The row id of a key as hex: HMAC-SHA256 tag in a sealed store (names a patient in an AuditEvent
   * without its id), the UTF-8 of the key in an unsealed one.
   * @param key - `Type/id`.
   */
  resourceTagHex(key: string): string {
    return hexOf(this.codec.tag(key));
  }

  /**
   * True when `key` was crypto-shredded on this node (its tombstone is kept): reads answer as for a
   * resource never held, writes throw {@link ResourceShreddedError}, peers' updates are refused.
   * @param key - `Type/id`.
   */
  isShredded(key: string): boolean {
    return this.tombstones.size > 0 && this.tombstones.has(this.resourceTagHex(key));
  }

  /** Number of tombstones (keys shredded on this node). */
  get shreddedCount(): number {
    return this.tombstones.size;
  }

  /**
   * Collects the keys written (`set`) from now until `stop()`: the shred's compartment search, which
   * yields to the event loop, re-checks what was written meanwhile.
   * @returns The live set of keys and a function that stops collecting.
   */
  watchWrites(): { keys: ReadonlySet<string>; stop: () => void } {
    const keys = new Set<string>();
    this.watchers.add(keys);
    return { keys, stop: () => this.watchers.delete(keys) };
  }

  /**
   * Re-wraps every content key under the node's current X-Wing key (after `tidegate keys rotate`;
   * also done at open). Only the local key vault changes; no row in PostgreSQL is touched.
   * @returns Generations before and after, and the number of keys re-wrapped.
   * @throws Error when the store is unsealed or its vault closed; SealedRecordError for a damaged wrapped key.
   */
  rewrap(): RewrapResult {
    if (!this.vault) throw new Error('Store is not sealed: nothing to re-wrap');
    return this.vault.rewrap();
  }

  /**
   * Crypto-shreds resources on this node. At once (synchronously) the keys are tombstoned, so no
   * later write or peer update can queue a change for them; then, once the changes queued before
   * are committed, one transaction deletes their `resource` and `version` rows and records the
   * tombstones and the content key slots to destroy (`shred_pending`); then the slots' content keys
   * are destroyed in the local key vault, so no copy of the database (backups, replicas, WAL
   * archives) decrypts them. A crash after the transaction is finished at the next open.
   * Idempotent; keys not held are tombstoned all the same (a peer's later update must not create them).
   * @param keys - `Type/id` keys.
   * @param at - time of the shred (recorded with the tombstones).
   * @returns Which keys were held, and how many content keys were destroyed.
   * @throws StoreUnavailableError when the store is closed, read-only, fenced, or PostgreSQL fails
   *   (nothing is shredded then: the tombstones are taken back; retry).
   */
  async shred(keys: readonly string[], at: Date = new Date()): Promise<StoreShredResult> {
    if (this.closed) throw new StoreUnavailableError('closed', 'The resource store is closed');
    if (this.down && this.down.reason !== 'connection') throw this.down;
    const list = [...new Set(keys)];
    const tags = list.map((k) => this.codec.tag(k));
    const added: string[] = [];
    for (const t of tags) {
      const h = hexOf(t);
      if (!this.tombstones.has(h)) {
        this.tombstones.add(h);
        added.push(h);
      }
    }
    for (const k of list) this.dirty.delete(k);
    const held = new Map<string, number>();
    try {
      // Changes queued before the tombstones are committed (or rolled back) first: none can follow.
      await this.durable().catch(() => {});
      const { client, release } = await acquire(this.pool, this.opts.onError).catch((err: unknown) => {
        throw new StoreUnavailableError('connection', `Cannot connect to PostgreSQL for the resource store: ${(err as Error).message}`, { cause: err });
      });
      let ok = false;
      try {
        await client.query('BEGIN');
        await client.query('SET LOCAL synchronous_commit TO on');
        const ep = await client.query(`SELECT value FROM ${this.q}.tidegate_meta WHERE name = 'writer_epoch' FOR SHARE`);
        if (Number(ep.rows[0]?.value) !== this.epoch) throw new StoreUnavailableError('fenced', `Another store took over PostgreSQL schema ${this.schema}; this one no longer writes`);
        await client.query(`DELETE FROM ${this.q}.version WHERE key = ANY($1::bytea[])`, [tags]);
        const gone = await client.query(`DELETE FROM ${this.q}.resource WHERE key = ANY($1::bytea[]) RETURNING key, slot`, [tags]);
        for (const r of gone.rows) held.set(hexOf(fromBuffer(r.key) ?? EMPTY), Number(r.slot));
        await client.query(`INSERT INTO ${this.q}.shredded (tag, at) SELECT unnest($1::bytea[]), $2 ON CONFLICT (tag) DO NOTHING`, [tags, at.toISOString()]);
        if (this.vault && held.size > 0) {
          await client.query(`INSERT INTO ${this.q}.shred_pending (slot) SELECT unnest($1::bigint[]) ON CONFLICT (slot) DO NOTHING`, [[...held.values()]]);
        }
        await client.query('COMMIT');
        ok = true;
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {});
        throw err;
      } finally {
        release(!ok);
      }
    } catch (err) {
      for (const h of added) this.tombstones.delete(h);
      if (err instanceof StoreUnavailableError) throw err;
      throw new StoreUnavailableError('connection', `PostgreSQL did not commit the shred: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
    const result: StoreShredResult = { shredded: [], tombstoned: [], keysDestroyed: 0 };
    for (const [i, key] of list.entries()) {
      (held.has(hexOf(tags[i]!)) ? result.shredded : result.tombstoned).push(key);
      this.entries.delete(key);
      this.v1Drop(key);
      this.dirty.delete(key);
    }
    this.lastRef = undefined;
    if (this.vault && held.size > 0) {
      const slots = [...held.values()].filter((x) => x > 0);
      result.keysDestroyed = this.vault.destroy(slots);
      try {
        await this.pool.query(`DELETE FROM ${this.q}.shred_pending WHERE slot = ANY($1::bigint[])`, [slots]);
      } catch (err) {
        // The keys are destroyed; the next open finds the rows and destroys nothing more.
        this.opts.onError?.(err as Error);
      }
    }
    return result;
  }

  /**
   * Appends a FHIR AuditEvent (JSON without PHI, e.g. a shred record) to the `audit_event` table; it
   * is kept in plaintext so the record outlives what it describes.
   * @param event - an AuditEvent with `id` and `recorded`.
   * @throws Error on a PostgreSQL error or a duplicate id.
   */
  async appendAuditEvent(event: { id: string; recorded: string }): Promise<void> {
    await this.pool.query(`INSERT INTO ${this.q}.audit_event (id, recorded, event) VALUES ($1, $2, $3)`, [event.id, event.recorded, JSON.stringify(event)]);
  }

  /**
   * The stored AuditEvents, newest first.
   * @param limit - at most this many. Default 100.
   */
  async auditEvents(limit = 100): Promise<unknown[]> {
    const res = await this.pool.query(`SELECT event FROM ${this.q}.audit_event ORDER BY recorded DESC, id DESC LIMIT $1`, [limit]);
    return res.rows.map((r) => JSON.parse(String(r.event)) as unknown);
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
            const fresh = (await loadEntries(client, this.q, this.codec, keys, this.tombstones)).entries;
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
    const codec = this.codec;
    const rewrites: Buffer[] = [];
    const v = { key: [] as Buffer[], seq: [] as number[], meta: [] as Buffer[], del: [] as boolean[], body: [] as Array<Buffer | null>, codec: [] as number[], ref: [] as Array<number | null>, state: [] as Buffer[], kind: [] as number[] };
    const r = { key: [] as Buffer[], slot: [] as number[], name: [] as Buffer[], state: [] as Buffer[], pending: [] as Array<Buffer | null>, n: [] as number[], vsv: [] as Array<Buffer | null>, kf: [] as number[], delta: [] as number[], compacted: [] as number[] };
    // Sealing happens here, off the request path (the set() that queued the change has returned).
    for (const [key, e] of after) {
      const tag = codec.tag(key);
      const prev = batch.before.get(key);
      const rewrite = batch.rewrites.has(key);
      if (rewrite) rewrites.push(tag);
      const old = rewrite ? [] : (prev?.versions ?? []);
      for (let seq = 0; seq < e.versions.length; seq++) {
        const sv = e.versions[seq]!;
        if (old[seq] === sv) continue;
        const row = versionColumns(codec, key, e.slot, seq, sv);
        v.key.push(tag);
        v.seq.push(seq);
        v.meta.push(row.meta);
        v.del.push(sv.deleted);
        v.body.push(row.body);
        v.codec.push(sv.bodyCodec);
        v.ref.push(sv.bodyRef);
        v.state.push(row.state);
        v.kind.push(sv.stateKind);
      }
      const res = resourceColumns(codec, e);
      r.key.push(tag);
      r.slot.push(e.slot);
      r.name.push(codec.name(tag, e.slot, key));
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
      if (rewrites.length > 0) await client.query(`DELETE FROM ${q}.version WHERE key = ANY($1::bytea[])`, [rewrites]);
      if (v.key.length > 0) {
        await client.query(
          `INSERT INTO ${q}.version (key, seq, meta, deleted, body, body_codec, body_ref, state, state_kind) ` +
            'SELECT * FROM unnest($1::bytea[], $2::int[], $3::bytea[], $4::bool[], $5::bytea[], $6::smallint[], $7::int[], $8::bytea[], $9::smallint[]) ' +
            'ON CONFLICT (key, seq) DO UPDATE SET meta = EXCLUDED.meta, deleted = EXCLUDED.deleted, body = EXCLUDED.body, ' +
            'body_codec = EXCLUDED.body_codec, body_ref = EXCLUDED.body_ref, state = EXCLUDED.state, state_kind = EXCLUDED.state_kind',
          [v.key, v.seq, v.meta, v.del, v.body, v.codec, v.ref, v.state, v.kind],
        );
      }
      await client.query(
        `INSERT INTO ${q}.resource (key, slot, name, state, pending, nversions, vsv, kf_bytes, delta_bytes, compacted) ` +
          'SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bytea[], $4::bytea[], $5::bytea[], $6::int[], $7::bytea[], $8::int[], $9::int[], $10::int[]) ' +
          'ON CONFLICT (key) DO UPDATE SET state = EXCLUDED.state, pending = EXCLUDED.pending, nversions = EXCLUDED.nversions, vsv = EXCLUDED.vsv, ' +
          'kf_bytes = EXCLUDED.kf_bytes, delta_bytes = EXCLUDED.delta_bytes, compacted = EXCLUDED.compacted',
        [r.key, r.slot, r.name, r.state, r.pending, r.n, r.vsv, r.kf, r.delta, r.compacted],
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
    if (!e || this.isShredded(key)) return false;
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

/** Column bytes of a version row (through the store's {@link ColumnCodec}). */
function versionColumns(codec: ColumnCodec, key: string, slot: number, seq: number, v: StoredVersion): { meta: Buffer; body: Buffer | null; state: Buffer } {
  return {
    meta: codec.out(encodeVersionMeta(v.versionId, v.lastUpdated), 'version.meta', key, slot, seq),
    body: v.body === null ? null : codec.out(v.body, v.bodyCodec === BodyCodec.plain ? 'version.body' : 'version.body.compacted', key, slot, seq),
    state: codec.out(v.state, 'version.state', key, slot, seq),
  };
}

/** Column bytes of a resource row (through the store's {@link ColumnCodec}). */
function resourceColumns(codec: ColumnCodec, e: Entry): { state: Buffer; pending: Buffer | null; vsv: Buffer | null } {
  return {
    state: codec.out(e.stateV2, 'resource.state', e.key, e.slot),
    pending: e.pendingBlob === null ? null : codec.out(e.pendingBlob, 'resource.pending', e.key, e.slot),
    vsv: e.vsv === null ? null : codec.out(e.vsv, 'resource.vsv', e.key, e.slot),
  };
}

/** What {@link loadEntries} read. */
interface Loaded {
  entries: Map<string, Entry>;
  /** Content key slots of the rows read (the vault frees every other slot). */
  slots: number[];
  /** Resource rows skipped: their content key was destroyed (crypto-shredded) or their name cannot be opened. */
  unreadable: number;
}

/** True for errors that mean "this resource's content key is gone". */
function keyDestroyed(err: unknown): boolean {
  return err instanceof KeyVaultError && err.code === 'ERR_CONTENT_KEY_DESTROYED';
}

/**
 * Reads resource and version rows into entries: all of them (`keys` undefined) or those keys.
 * Rows filed under a tombstone, and rows whose content key was destroyed (a database backup restored
 * after a shred), are skipped and counted as unreadable.
 * @throws StoreFormatError when rows are inconsistent (versions not contiguous, count mismatch, a
 *   name that does not match its tag) or unreadable; SealedRecordError for a damaged sealed field;
 *   pg errors as thrown by the client.
 */
async function loadEntries(client: pg.PoolClient, q: string, codec: ColumnCodec, keys: string[] | undefined, tombstones: ReadonlySet<string>): Promise<Loaded> {
  const entries = new Map<string, Entry>();
  const byKey = keys !== undefined;
  const tags = byKey ? keys.map((k) => codec.tag(k)) : [];
  const res = await client.query(
    `SELECT key, slot, name, state, pending, nversions, vsv, kf_bytes, delta_bytes, compacted FROM ${q}.resource${byKey ? ' WHERE key = ANY($1::bytea[])' : ''} ORDER BY rid`,
    byKey ? [tags] : [],
  );
  const counts = new Map<string, number>();
  const versions = new Map<string, StoredVersion[]>();
  /** Tag hex → the entry of that row. */
  const byTag = new Map<string, Entry>();
  const skipped = new Set<string>();
  const slots: number[] = [];
  for (const row of res.rows) {
    const tag = fromBuffer(row.key) ?? EMPTY;
    const hex = hexOf(tag);
    const slot = Number(row.slot);
    if (tombstones.has(hex)) {
      skipped.add(hex);
      continue;
    }
    let key: string;
    try {
      key = codec.openName(tag, slot, fromBuffer(row.name) ?? EMPTY);
    } catch (err) {
      if (!keyDestroyed(err)) throw err;
      skipped.add(hex);
      continue;
    }
    slots.push(slot);
    counts.set(hex, Number(row.nversions));
    versions.set(hex, []);
    const e: Entry = {
      key,
      slot,
      stateV2: codec.in(row.state, 'resource.state', key, slot) ?? EMPTY,
      pendingBlob: codec.in(row.pending, 'resource.pending', key, slot),
      versions: [],
      vsv: codec.in(row.vsv, 'resource.vsv', key, slot),
      kfBytes: Number(row.kf_bytes),
      deltaBytes: Number(row.delta_bytes),
      compacted: Number(row.compacted),
    };
    entries.set(key, e);
    byTag.set(hex, e);
  }
  let after: [Buffer, number] = [Buffer.alloc(0), -1];
  for (;;) {
    const page = await client.query(
      `SELECT key, seq, meta, deleted, body, body_codec, body_ref, state, state_kind FROM ${q}.version ` +
        `WHERE (key, seq) > ($1::bytea, $2::int)${byKey ? ' AND key = ANY($4::bytea[])' : ''} ORDER BY key, seq LIMIT $3`,
      byKey ? [after[0], after[1], LOAD_PAGE, tags] : [after[0], after[1], LOAD_PAGE],
    );
    for (const row of page.rows) {
      const tag = fromBuffer(row.key) ?? EMPTY;
      const hex = hexOf(tag);
      const seq = Number(row.seq);
      after = [toBuffer(tag), seq];
      if (skipped.has(hex)) continue;
      const e = byTag.get(hex);
      const list = versions.get(hex);
      if (!e || !list) throw new StoreFormatError('Stored versions are inconsistent: a version row has no resource row');
      if (seq !== list.length) throw new StoreFormatError(`Stored versions of a resource are not contiguous (missing ${list.length})`);
      const codecNo = Number(row.body_codec);
      const meta = decodeVersionMeta(codec.in(row.meta, 'version.meta', e.key, e.slot, seq) ?? EMPTY);
      list.push({
        versionId: meta.versionId,
        lastUpdated: meta.lastUpdated,
        deleted: row.deleted === true,
        body: codec.in(row.body, codecNo === BodyCodec.plain ? 'version.body' : 'version.body.compacted', e.key, e.slot, seq),
        bodyCodec: codecNo,
        bodyRef: row.body_ref === null ? null : Number(row.body_ref),
        state: codec.in(row.state, 'version.state', e.key, e.slot, seq) ?? EMPTY,
        stateKind: Number(row.state_kind),
      });
    }
    if (page.rows.length < LOAD_PAGE) break;
  }
  for (const [hex, e] of byTag) {
    const list = versions.get(hex)!;
    if (list.length !== counts.get(hex)) throw new StoreFormatError(`Stored versions of a resource are inconsistent (${list.length} rows, ${String(counts.get(hex))} expected)`);
    for (const v of list) if (v.bodyRef !== null) v.ref = list[v.bodyRef];
    e.versions = list;
  }
  return { entries, slots, unreadable: skipped.size - [...skipped].filter((h) => tombstones.has(h)).length };
}
