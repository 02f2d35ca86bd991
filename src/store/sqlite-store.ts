/**
 * A durable {@link ResourceStore} in one SQLite file, through `node:sqlite`'s synchronous
 * `DatabaseSync` (https://nodejs.org/api/sqlite.html; no flag needed on Node ≥ 22.13/24).
 *
 * Durability: every {@link SqliteStore.set} is one transaction; with `journal_mode=WAL` and
 * `synchronous=FULL` (the default) SQLite fsyncs the write-ahead log before COMMIT returns
 * (https://sqlite.org/pragma.html#pragma_synchronous, https://sqlite.org/wal.html). The merge
 * engine and the FHIR API are synchronous from request to `set`, so when a FHIR response is sent
 * the write it acknowledges is on disk. `synchronous=NORMAL` survives a crash of the process but
 * may lose the last transactions on power loss; it is an option, not the default.
 *
 * Layout (docs/storage.md):
 * - `resource`: per key the current Yjs document (V2 encoding), the held-back remote updates (V2),
 *   and bookkeeping for the version history;
 * - `version`: per version its id, time, deletion flag, compacted body, and its document as a
 *   keyframe (whole V2 state) or a delta against the previous version (see src/store/codec.ts). A
 *   keyframe is written when the deltas since the last keyframe would exceed `keyframeRatio` × its
 *   size, so history costs about one small Yjs update per version and rebuilding any version reads
 *   at most (1 + keyframeRatio) keyframes' worth of bytes. A newest keyframe equal to the current
 *   document is not stored twice (kind `current`) until the current document changes;
 * - `fresh_body`: bodies as written (plain UTF-8). The background compactor
 *   ({@link SqliteStore.compact}) moves every body but the newest into its `version` row as raw
 *   DEFLATE against a reference body of the same resource, and deletes the plain copy: whole pages
 *   are freed, and `auto_vacuum=INCREMENTAL` gives them back to the file system.
 *
 * The store keeps recently used records decoded in memory (LRU bounded by `cacheBytes`), so it
 * assumes it is the only writer of its file: one node process per file.
 *
 * **Sealed at rest** (option `secretKeys`, always set by `tidegate serve`): every field about a
 * resource — its key, current document (with the conflict records it holds), held-back updates,
 * state vector, each version's metadata, document and body, and its hospital id map pairing — is
 * sealed with the resource's own content key (src/store/seal.ts, `tidegate-store/1`), rows are filed
 * under an HMAC tag of the key instead of the key, and the content keys live in a separate key
 * vault file (src/store/vault.ts, `<file>.keys`) wrapped under the node's X-Wing key.
 * {@link SqliteStore.shred} destroys content keys (crypto-shredding) and keeps a tombstone.
 * Without `secretKeys` the same schema holds plaintext (tests and benchmarks only).
 */
import { DatabaseSync } from 'node:sqlite';
import type { StatementSync } from 'node:sqlite';
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { ResourceRecord, ResourceStore, VersionRecord } from './store.ts';
import type { NodeSecretKeys } from '../envelope/keys.ts';
import { FhirError, outcome } from '../fhir/outcomes.ts';
import { RecordKind, STORE_FORMAT, decodeVersionMeta, encodeVersionMeta, openRecord, recordAad, resourceTag, sealRecord } from './seal.ts';
import type { RecordKindId } from './seal.ts';
import { KeyVault, openBoundVault, vaultPathOf } from './vault.ts';
import type { RewrapResult } from './vault.ts';
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

/** Options of {@link SqliteStore}. */
export interface SqliteStoreOptions {
  /**
   * SQLite `synchronous` in WAL mode. `FULL` (default): COMMIT fsyncs the WAL, so an acknowledged
   * write survives power loss. `NORMAL`: survives a process crash; the last commits before an OS
   * crash or power cut may be lost.
   */
  synchronous?: 'FULL' | 'NORMAL';
  /** Memory budget of the decoded-record cache, bytes (approximate). Default 256 MiB. */
  cacheBytes?: number;
  /** `background` (default): compaction runs on timers between requests; `manual`: only {@link SqliteStore.compact}. */
  compaction?: 'background' | 'manual';
  /** A resource is compacted once it has this many versions with uncompacted bodies (besides the newest). Default 16. */
  compactAfter?: number;
  /** Longest background compaction slice, ms (the event loop is blocked meanwhile). Default 8. */
  compactSliceMs?: number;
  /** Delay before a background compaction slice, ms. Default 50. */
  compactDelayMs?: number;
  /** A new state keyframe when deltas since the last one exceed this × its size. Default 2. */
  keyframeRatio?: number;
  /** How long a write waits for a lock held by another connection, ms. Default 2000. */
  busyTimeoutMs?: number;
  /**
   * The node's secret keys: the store is then **sealed** (see module doc), with its key vault at
   * `vaultFile`. Without them the store keeps plaintext (tests and benchmarks only); a file remembers
   * which it is and refuses to be opened the other way.
   */
  secretKeys?: NodeSecretKeys;
  /** Key vault file of a sealed store; default `<path>.keys`. */
  vaultFile?: string;
  /** Content keys created per vault write (see {@link KeyVault}). Default 256. */
  vaultPoolSize?: number;
  /** Re-wrap the vault at open when it is not under the current X-Wing key. Default true. */
  autoRewrap?: boolean;
}

/**
 * Raised by {@link SqliteStore.set} for a resource that was crypto-shredded on this node: its key is
 * tombstoned, so neither a local write nor a peer's update brings it back. The FHIR edge answers
 * 410 Gone with an OperationOutcome (code `deleted`). The message names no resource.
 */
export class ResourceShreddedError extends FhirError {
  /** Stable machine-readable code. */
  readonly code = 'ERR_RESOURCE_SHREDDED';
  /** Builds the 410 Gone error with its OperationOutcome (issue code `deleted`, no resource named). */
  constructor() {
    super(410, outcome('error', 'deleted', 'This resource was erased on this node (crypto-shredded); it cannot be written again'));
  }
}

/** Result of {@link SqliteStore.shred}. */
export interface StoreShredResult {
  /** Keys whose rows and content keys were destroyed (held before). */
  shredded: string[];
  /** Keys only tombstoned (not held, or already shredded). */
  tombstoned: string[];
  /** Content keys destroyed in the vault. */
  keysDestroyed: number;
}

/** Storage figures of a store or of one resource, bytes unless stated. */
export interface StoreSizes {
  /** Resources (rows of `resource`). */
  resources: number;
  /** Versions (rows of `version`). */
  versions: number;
  /** Current documents, V2. */
  stateBytes: number;
  /** Held-back remote updates. */
  pendingBytes: number;
  /** Version documents: keyframes + deltas (a newest version sharing the current document counts 0). */
  historyStateBytes: number;
  /** Keyframe count among the versions (including newest versions that share the current document, stored once). */
  keyframes: number;
  /** Version bodies still plain (not yet compacted). */
  plainBodyBytes: number;
  /** Version bodies after compaction (raw DEFLATE). */
  compressedBodyBytes: number;
  /** Database file size (page_count × page_size; WAL not included). Whole-store figures only, else 0. */
  fileBytes: number;
}

/** Result of a compaction run. */
export interface CompactionResult {
  /** Resources compacted. */
  resources: number;
  /** Version bodies rewritten. */
  bodies: number;
  /** Body bytes before and after. */
  bytesBefore: number;
  bytesAfter: number;
}

const SCHEMA_VERSION = 2;
/** Most version bodies one background step rewrites (~0.2 ms each), so a step stays short. */
const SLICE_ROWS = 32;
/** Free pages returned to the file system after a background step (4 KiB each). */
const VACUUM_PAGES = 1024;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS tidegate_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resource_key (
  key PRIMARY KEY,
  slot INTEGER NOT NULL,
  name BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS resource (
  rid INTEGER PRIMARY KEY,
  key NOT NULL UNIQUE,
  state BLOB NOT NULL,
  pending BLOB,
  nversions INTEGER NOT NULL DEFAULT 0,
  vsv BLOB,
  kf_bytes INTEGER NOT NULL DEFAULT 0,
  delta_bytes INTEGER NOT NULL DEFAULT 0,
  compacted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS version (
  rid INTEGER NOT NULL REFERENCES resource(rid),
  seq INTEGER NOT NULL,
  meta BLOB NOT NULL,
  deleted INTEGER NOT NULL,
  body BLOB,
  body_codec INTEGER NOT NULL,
  body_ref INTEGER,
  state BLOB NOT NULL,
  state_kind INTEGER NOT NULL,
  PRIMARY KEY (rid, seq)
);
CREATE TABLE IF NOT EXISTS fresh_body (
  rid INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  body BLOB NOT NULL,
  PRIMARY KEY (rid, seq)
);
CREATE TABLE IF NOT EXISTS id_map (
  node_tag PRIMARY KEY,
  hospital_tag NOT NULL UNIQUE,
  pair BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS shredded (tag PRIMARY KEY, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shred_pending (slot INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS audit_event (id TEXT PRIMARY KEY, recorded TEXT NOT NULL, event TEXT NOT NULL);
`;

/** Per-version cache of the newest version's decoded body and state (dropped when a newer one comes). */
interface VersionCache {
  body?: string | null;
  state?: Uint8Array;
  /** Keep the body once read (the newest version: every read of the resource serves it). */
  keep?: boolean;
}

/** A decoded record in the LRU cache. Fields ending in V1 are decoded lazily. */
interface Entry {
  key: string;
  rid: number;
  /** Key vault slot of the resource's content key (0 in an unsealed store). */
  slot: number;
  stateV2: Uint8Array;
  stateV1?: Uint8Array;
  pendingBlob: Uint8Array | null;
  pendingV1?: Uint8Array[];
  versions?: VersionRecord[];
  newest?: VersionCache;
  nversions: number;
  /** State vector of the newest version's document, or null without versions. */
  vsv: Uint8Array | null;
  kfBytes: number;
  deltaBytes: number;
  /** True when the newest version row shares the current document ({@link StateKind.current}). */
  newestShared: boolean;
  /** Versions below this have compacted bodies. */
  compacted: number;
  /** What get() hands out: getters over this entry. */
  record: ResourceRecord;
  bytes: number;
}

/** What reading a resource's version fields needs. */
interface ResourceRef {
  key: string;
  slot: number;
  rid: number;
}

interface ResourceRow {
  rid: number;
  slot: number;
  state: Uint8Array;
  pending: Uint8Array | null;
  nversions: number;
  vsv: Uint8Array | null;
  kf_bytes: number;
  delta_bytes: number;
  compacted: number;
  newest_kind: number | null;
}

/** A version row about to be inserted. */
interface NewVersionRow {
  seq: number;
  v: { versionId: string; lastUpdated: string; deleted: boolean; body: string | null };
  state: Uint8Array;
  kind: number;
  stateV1: Uint8Array;
}

function num(v: unknown): number {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  return 0;
}

/** Value of a `key` column: the HMAC tag (sealed store) or the key text (unsealed store). */
type RowKey = Uint8Array | string;

/** Hex of a row key (strings as their UTF-8). */
function hexOf(k: RowKey): string {
  return typeof k === 'string' ? Buffer.from(k, 'utf8').toString('hex') : Buffer.from(k.buffer, k.byteOffset, k.byteLength).toString('hex');
}

function blob(v: unknown): Uint8Array | null {
  return v instanceof Uint8Array ? v : null;
}

/**
 * The durable {@link ResourceStore} (see module doc). `get`/`set` have the MemoryStore's contract:
 * records hold V1 documents; the file holds V2. Records handed out are live views: their `state`,
 * `versions` and `pending` are decoded on first access, each version's `body` and `state` are read
 * from the file when accessed. Not safe for two instances (or processes) on one file.
 */
export class SqliteStore implements ResourceStore {
  /** Absolute path of the database file (or `:memory:`). */
  readonly path: string;
  private readonly db: DatabaseSync;
  private readonly cache = new Map<string, Entry>();
  private cachedBytes = 0;
  private readonly cacheBytes: number;
  private readonly compactAfter: number;
  private readonly compactSliceMs: number;
  private readonly compactDelayMs: number;
  private readonly keyframeRatio: number;
  private readonly background: boolean;
  private readonly dirty = new Set<number>();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private count: number;
  private closed = false;
  /** Key vault of a sealed store; undefined when unsealed. */
  private readonly vault: KeyVault | undefined;
  /** Hex tags of shredded keys (tombstones). */
  private readonly tombstones = new Set<string>();
  /** Keys in insertion order, decoded once (sealed names cost one AES-GCM open each). */
  private keyList: string[] | undefined;
  /** Sets collecting the keys written while they are registered ({@link watchWrites}). */
  private readonly watchers = new Set<Set<string>>();
  /** The last reference body decoded (compacted bodies are stored against one). */
  private lastRef: { rid: number; seq: number; text: string } | undefined;
  private readonly st: Record<
    | 'selResource'
    | 'selResourceKey'
    | 'insResourceKey'
    | 'insResource'
    | 'updResource'
    | 'selVersionMeta'
    | 'insVersion'
    | 'insFresh'
    | 'delVersions'
    | 'delFreshAll'
    | 'delFresh'
    | 'selBody'
    | 'selStateChain'
    | 'selCurrentState'
    | 'updMaterialize'
    | 'selKeys'
    | 'selCompact'
    | 'selCompactRef'
    | 'selCompactRows'
    | 'updBody'
    | 'updCompacted'
    | 'selDirty'
    | 'vacuum',
    StatementSync
  >;

  /**
   * Opens (creating when absent) a store file.
   * @param path - database file; parent folders are created. `:memory:` gives a throwaway database.
   * @param opts - see {@link SqliteStoreOptions}.
   * @throws Error when the file cannot be opened or created, is not a SQLite database, was written
   *   by a newer schema, or WAL mode cannot be enabled on it; KeyVaultError when a sealed store's vault
   *   is missing, another store's, older than the data file, or in use (src/store/vault.ts openBoundVault).
   */
  constructor(path: string, opts: SqliteStoreOptions = {}) {
    this.path = path === ':memory:' ? path : resolve(path);
    if (this.path !== ':memory:') mkdirSync(dirname(this.path), { recursive: true });
    this.cacheBytes = opts.cacheBytes ?? 256 * 1024 * 1024;
    this.compactAfter = Math.max(1, opts.compactAfter ?? 16);
    this.compactSliceMs = opts.compactSliceMs ?? 8;
    this.compactDelayMs = opts.compactDelayMs ?? 50;
    this.keyframeRatio = opts.keyframeRatio ?? 2;
    this.background = (opts.compaction ?? 'background') === 'background';
    try {
      this.db = new DatabaseSync(this.path, { timeout: opts.busyTimeoutMs ?? 2000 });
    } catch (err) {
      throw new Error(`Cannot open store ${this.path}: ${(err as Error).message}`, { cause: err });
    }
    try {
      // Takes effect only on a new, empty file (before WAL mode writes its header): pages freed by
      // compaction can then be returned to the file system (https://sqlite.org/pragma.html#pragma_auto_vacuum).
      this.db.exec('PRAGMA auto_vacuum=INCREMENTAL');
      const mode = String((this.db.prepare('PRAGMA journal_mode=WAL').get() as { journal_mode?: unknown } | undefined)?.journal_mode);
      if (this.path !== ':memory:' && mode !== 'wal') throw new Error(`cannot enable WAL mode (journal_mode is ${mode})`);
      this.db.exec(`PRAGMA synchronous=${opts.synchronous === 'NORMAL' ? 'NORMAL' : 'FULL'}`);
      // Zero what a delete frees when that costs no extra I/O (shredded rows are ciphertext anyway).
      this.db.exec('PRAGMA secure_delete=FAST');
      this.db.exec('BEGIN IMMEDIATE');
      try {
        const sealed = opts.secretKeys !== undefined ? '1' : '0';
        const old = this.db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'tidegate_meta'").get();
        const oldSchema = old ? (this.db.prepare("SELECT value FROM tidegate_meta WHERE name = 'schema'").get() as { value?: unknown } | undefined) : undefined;
        if (oldSchema && Number(oldSchema.value) !== SCHEMA_VERSION) {
          throw new Error(`schema version ${String(oldSchema.value)} is not supported (this build reads ${SCHEMA_VERSION}; version 1 files are unsealed: start from an empty store and let anti-entropy restore it from peers)`);
        }
        this.db.exec(SCHEMA);
        const row = this.db.prepare("SELECT value FROM tidegate_meta WHERE name = 'schema'").get() as { value?: unknown } | undefined;
        if (!row) {
          this.db.prepare("INSERT INTO tidegate_meta (name, value) VALUES ('schema', ?)").run(String(SCHEMA_VERSION));
          this.db.prepare("INSERT INTO tidegate_meta (name, value) VALUES ('sealed', ?)").run(sealed);
        }
        const stored = this.db.prepare("SELECT value FROM tidegate_meta WHERE name = 'sealed'").get() as { value?: unknown } | undefined;
        if (stored?.value !== sealed) {
          throw new Error(stored?.value === '1' ? 'the file is sealed: open it with the node secret keys' : 'the file holds plaintext and cannot be opened as a sealed store');
        }
        this.db.exec('COMMIT');
      } catch (err) {
        this.db.exec('ROLLBACK');
        throw err;
      }
    } catch (err) {
      this.db.close();
      throw new Error(`Cannot open store ${this.path}: ${(err as Error).message}`, { cause: err });
    }
    if (opts.secretKeys !== undefined) {
      try {
        // A missing, foreign or outdated vault refuses the open (src/store/vault.ts openBoundVault).
        const db = this.db;
        const recorded = db.prepare("SELECT value FROM tidegate_meta WHERE name = 'vault_check'").get() as { value?: unknown } | undefined;
        this.vault = openBoundVault(
          opts.vaultFile ?? vaultPathOf(this.path),
          {
            secretKeys: opts.secretKeys,
            ...(opts.vaultPoolSize !== undefined ? { poolSize: opts.vaultPoolSize } : {}),
            ...(opts.autoRewrap !== undefined ? { autoRewrap: opts.autoRewrap } : {}),
          },
          {
            store: this.path,
            recorded: recorded === undefined ? undefined : String(recorded.value),
            holdsSealed: db.prepare('SELECT 1 FROM resource_key UNION ALL SELECT 1 FROM shredded LIMIT 1').get() !== undefined,
            usedSlots: () => db.prepare('SELECT slot FROM resource_key').all().map((r) => num(r.slot)),
            record: (check) => void db.prepare("INSERT OR REPLACE INTO tidegate_meta (name, value) VALUES ('vault_check', ?)").run(check),
          },
        );
      } catch (err) {
        this.db.close();
        throw err;
      }
    }
    const p = (sql: string) => this.db.prepare(sql);
    this.st = {
      selResource: p(
        'SELECT r.rid AS rid, k.slot AS slot, r.state AS state, r.pending AS pending, r.nversions AS nversions, r.vsv AS vsv, r.kf_bytes AS kf_bytes, ' +
          'r.delta_bytes AS delta_bytes, r.compacted AS compacted, ' +
          '(SELECT state_kind FROM version v WHERE v.rid = r.rid AND v.seq = r.nversions - 1) AS newest_kind FROM resource r JOIN resource_key k ON k.key = r.key WHERE r.key = ?',
      ),
      selResourceKey: p('SELECT slot FROM resource_key WHERE key = ?'),
      insResourceKey: p('INSERT INTO resource_key (key, slot, name) VALUES (?, ?, ?)'),
      selCurrentState: p('SELECT state FROM resource WHERE rid = ?'),
      updMaterialize: p('UPDATE version SET state = ?, state_kind = 0 WHERE rid = ? AND seq = ? AND state_kind = 2'),
      insResource: p('INSERT INTO resource (key, state, pending) VALUES (?, ?, ?)'),
      updResource: p('UPDATE resource SET state = ?, pending = ?, nversions = ?, vsv = ?, kf_bytes = ?, delta_bytes = ?, compacted = MIN(compacted, ?) WHERE rid = ?'),
      selVersionMeta: p('SELECT seq, meta, deleted FROM version WHERE rid = ? ORDER BY seq'),
      insVersion: p('INSERT INTO version (rid, seq, meta, deleted, body, body_codec, body_ref, state, state_kind) VALUES (?, ?, ?, ?, NULL, ?, NULL, ?, ?)'),
      insFresh: p('INSERT INTO fresh_body (rid, seq, body) VALUES (?, ?, ?)'),
      delVersions: p('DELETE FROM version WHERE rid = ?'),
      delFreshAll: p('DELETE FROM fresh_body WHERE rid = ?'),
      delFresh: p('DELETE FROM fresh_body WHERE rid = ? AND seq >= ? AND seq < ?'),
      selBody: p('SELECT v.body AS body, v.body_codec AS body_codec, v.body_ref AS body_ref, f.body AS fresh FROM version v LEFT JOIN fresh_body f ON f.rid = v.rid AND f.seq = v.seq WHERE v.rid = ? AND v.seq = ?'),
      selStateChain: p(
        'SELECT seq, state, state_kind FROM version WHERE rid = $rid AND seq <= $seq AND seq >= ' +
          '(SELECT MAX(seq) FROM version WHERE rid = $rid AND seq <= $seq AND state_kind <> 1) ORDER BY seq',
      ),
      selKeys: p('SELECT k.key AS tag, k.slot AS slot, k.name AS name FROM resource r JOIN resource_key k ON k.key = r.key ORDER BY r.rid'),
      selCompact: p('SELECT r.nversions AS nversions, r.compacted AS compacted, k.key AS tag, k.slot AS slot, k.name AS name FROM resource r JOIN resource_key k ON k.key = r.key WHERE r.rid = ?'),
      selCompactRef: p('SELECT seq, body FROM version WHERE rid = ? AND seq < ? AND body_codec = 2 ORDER BY seq DESC LIMIT 1'),
      selCompactRows: p('SELECT v.seq AS seq, v.body_codec AS body_codec, f.body AS fresh FROM version v LEFT JOIN fresh_body f ON f.rid = v.rid AND f.seq = v.seq WHERE v.rid = ? AND v.seq >= ? AND v.seq < ? ORDER BY v.seq'),
      updBody: p('UPDATE version SET body = ?, body_codec = ?, body_ref = ? WHERE rid = ? AND seq = ?'),
      updCompacted: p('UPDATE resource SET compacted = ? WHERE rid = ?'),
      selDirty: p('SELECT rid FROM resource WHERE nversions - 1 - compacted >= ?'),
      vacuum: p(`PRAGMA incremental_vacuum(${VACUUM_PAGES})`),
    };
    this.count = num((this.db.prepare('SELECT COUNT(*) AS n FROM resource').get() as { n?: unknown }).n);
    for (const r of this.db.prepare('SELECT tag FROM shredded').all()) this.tombstones.add(hexOf(r.tag as RowKey));
    if (this.vault) {
      // A shred interrupted between its data transaction and the vault: finish destroying the keys.
      const pendingSlots = this.db.prepare('SELECT slot FROM shred_pending').all().map((r) => num(r.slot));
      if (pendingSlots.length > 0) {
        this.vault.destroy(pendingSlots);
        this.db.exec('DELETE FROM shred_pending');
      }
    }
    if (this.background) {
      for (const r of this.st.selDirty.all(this.compactAfter)) this.dirty.add(num(r.rid));
      this.schedule();
    }
  }

  /**
   * The record of `key`: current document (V1, as the Replica reads it), versions oldest first, and
   * held-back updates. Fields are decoded on first access and cached; versions' `body` and `state`
   * are read from the file when accessed (the newest version's are kept in memory).
   * @param key - `Type/id`.
   * @returns The record, or undefined when the key was never stored.
   * @throws Error when the stored bytes are corrupt (on access of the corrupt field), or the store is closed.
   */
  get(key: string): ResourceRecord | undefined {
    return this.entry(key)?.record;
  }

  /**
   * Stores a record durably. Versions are append-only in the merge engine: versions that extend the
   * stored list (same version ids in the same order) are appended; any other list replaces the
   * stored history. Returns only after COMMIT (fsync of the WAL with `synchronous=FULL`).
   * @param key - `Type/id`.
   * @param record - document (V1), versions (each `state` V1), optional held-back updates (V1).
   * @throws Error when a document is not a valid Yjs V1 update, or on an SQLite error (disk full,
   *   I/O error, closed store); nothing of the record is stored then.
   */
  set(key: string, record: ResourceRecord): void {
    if (this.closed) throw new Error('Store is closed');
    if (this.isShredded(key)) throw new ResourceShreddedError();
    for (const w of this.watchers) w.add(key);
    const e = this.entry(key);
    const oldVersions = e ? (e.versions ?? this.loadVersions(e)) : [];
    const next = record.versions;
    let from = next.length;
    let rewrite = false;
    if (next !== oldVersions) {
      const prefix = next.length >= oldVersions.length && oldVersions.every((v, i) => next[i] === v || next[i]?.versionId === v.versionId);
      if (prefix) from = oldVersions.length;
      else {
        rewrite = true;
        from = 0;
      }
    }
    // Everything that can fail on bad input is computed before the transaction.
    const recordState = record.state;
    const stateV2 = e && e.stateV1 === recordState ? e.stateV2 : toV2(recordState);
    const stateChanged = !e || (stateV2 !== e.stateV2 && Buffer.compare(stateV2, e.stateV2) !== 0);
    const pendingV1 = record.pending && record.pending.length > 0 ? record.pending : undefined;
    const pendingBlob = pendingV1 ? (e && e.pendingV1 === pendingV1 ? e.pendingBlob : encodeUpdateList(pendingV1)) : null;
    const chain: HistoryChain = rewrite || !e ? { vsv: null, kfBytes: 0, deltaBytes: 0 } : { vsv: e.vsv, kfBytes: e.kfBytes, deltaBytes: e.deltaBytes };
    const rows: NewVersionRow[] = [];
    for (let seq = from; seq < next.length; seq++) {
      const src = next[seq]!;
      const v = { versionId: src.versionId, lastUpdated: src.lastUpdated, deleted: src.deleted, body: src.body };
      const stateV1 = src.state;
      const { state, kind } = nextHistoryState(chain, stateV1 === recordState ? stateV2 : toV2(stateV1), this.keyframeRatio);
      rows.push({ seq, v, state, kind, stateV1 });
    }
    // A newest keyframe equal to the current document is not stored twice (most resources are
    // written once); it is written into its row when the current document moves on.
    const last = rows[rows.length - 1];
    if (last && last.kind === StateKind.keyframe && last.stateV1 === recordState) {
      last.kind = StateKind.current;
      last.state = new Uint8Array(0);
    }
    const materialize = e !== undefined && e.newestShared && !rewrite && (rows.length > 0 || stateChanged);
    // Seal everything before the transaction too (a new resource takes a content key slot first).
    let slot = e?.slot;
    let keyRow: { tag: RowKey; slot: number; name: Uint8Array } | undefined;
    const tag = this.tagOf(key);
    if (slot === undefined) {
      const existing = this.st.selResourceKey.get(tag);
      if (existing) slot = num(existing.slot);
      else {
        slot = this.vault ? this.vault.allocate() : 0;
        keyRow = { tag, slot, name: this.sealName(tag, slot, key) };
      }
    }
    const sealedState = this.seal(slot, RecordKind.state, key, 0, stateV2);
    const sealedPending = pendingBlob === null ? null : this.seal(slot, RecordKind.pending, key, 0, pendingBlob);
    const sealedVsv = chain.vsv === null ? null : this.seal(slot, RecordKind.stateVector, key, 0, chain.vsv);
    const sealedMaterial = materialize ? this.seal(slot, RecordKind.versionState, key, e.nversions - 1, e.stateV2) : undefined;
    const sealedRows = rows.map((r) => ({
      meta: this.seal(slot, RecordKind.versionMeta, key, r.seq, encodeVersionMeta(r.v.versionId, r.v.lastUpdated)),
      state: r.kind === StateKind.current ? r.state : this.seal(slot, RecordKind.versionState, key, r.seq, r.state),
      body: r.v.body === null ? null : this.seal(slot, RecordKind.freshBody, key, r.seq, plainBody(r.v.body)),
    }));
    const db = this.db;
    let rid = e?.rid;
    db.exec('BEGIN IMMEDIATE');
    try {
      if (keyRow) this.st.insResourceKey.run(keyRow.tag, keyRow.slot, keyRow.name);
      if (rid === undefined) rid = num(this.st.insResource.run(tag, sealedState, sealedPending).lastInsertRowid);
      if (rewrite) {
        this.st.delVersions.run(rid);
        this.st.delFreshAll.run(rid);
        if (this.lastRef?.rid === rid) this.lastRef = undefined;
      }
      if (sealedMaterial) this.st.updMaterialize.run(sealedMaterial, rid, e!.nversions - 1);
      for (const [i, r] of rows.entries()) {
        const codec = r.v.body === null ? BodyCodec.none : BodyCodec.plain;
        const sr = sealedRows[i]!;
        this.st.insVersion.run(rid, r.seq, sr.meta, r.v.deleted ? 1 : 0, codec, sr.state, r.kind);
        if (sr.body !== null) this.st.insFresh.run(rid, r.seq, sr.body);
      }
      this.st.updResource.run(sealedState, sealedPending, next.length, sealedVsv, chain.kfBytes, chain.deltaBytes, rewrite ? 0 : next.length, rid);
      db.exec('COMMIT');
    } catch (err) {
      if (db.isTransaction) db.exec('ROLLBACK');
      throw err;
    }
    if (!e) {
      this.count++;
      this.keyList?.push(key);
    }
    // The cache now mirrors the file. New versions become lazy handles; only the newest keeps its
    // decoded body and state in memory.
    let versions: VersionRecord[];
    let newest = e?.newest;
    if (rows.length === 0 && !rewrite) versions = oldVersions;
    else {
      if (newest) {
        delete newest.body;
        delete newest.state;
        delete newest.keep;
      }
      versions = rewrite ? [] : oldVersions.slice();
      for (const r of rows) {
        const cache: VersionCache = {};
        versions.push(this.handle({ key, slot, rid }, r.seq, r.v, cache));
        newest = cache;
      }
      const last = rows[rows.length - 1];
      if (last && newest) {
        newest.body = last.v.body;
        newest.state = last.stateV1;
        newest.keep = true;
      }
    }
    const entry: Entry = e ?? this.newEntry(key, rid, slot, stateV2, pendingBlob);
    entry.stateV2 = stateV2;
    entry.stateV1 = recordState;
    entry.pendingBlob = pendingBlob;
    if (pendingV1) entry.pendingV1 = pendingV1;
    else delete entry.pendingV1;
    entry.versions = versions;
    if (newest) entry.newest = newest;
    entry.nversions = next.length;
    entry.vsv = chain.vsv;
    entry.kfBytes = chain.kfBytes;
    entry.deltaBytes = chain.deltaBytes;
    if (last) entry.newestShared = last.kind === StateKind.current;
    else if (materialize || rewrite) entry.newestShared = false;
    if (rewrite) entry.compacted = 0;
    this.touch(entry);
    if (this.background && next.length - 1 - entry.compacted >= this.compactAfter) {
      this.dirty.add(rid);
      this.schedule();
    }
  }

  /**
   * The stored bytes of a resource's current document, exactly as on disk (Yjs V2 encoding).
   * @param key - `Type/id`.
   * @returns V2 update bytes, or undefined when the key was never stored.
   */
  storedState(key: string): Uint8Array | undefined {
    return this.entry(key)?.stateV2;
  }

  /**
   * Every stored key, in insertion order. A snapshot: keys stored while iterating are not included.
   * @throws Error when the store is closed.
   */
  keys(): IterableIterator<string> {
    if (this.closed) throw new Error('Store is closed');
    this.keyList ??= this.st.selKeys.all().map((r) => this.openName(r.tag as RowKey, num(r.slot), r.name as Uint8Array));
    return this.keyList.slice().values();
  }

  /** Number of stored keys. */
  get size(): number {
    return this.count;
  }

  /**
   * Compacts version bodies now: for each resource (or only `key`), every body but the newest is
   * rewritten as raw DEFLATE, against a reference body of the same resource when that is much
   * smaller (< 1/8 of the plain text); otherwise the body itself becomes the next reference. One
   * transaction per resource, so a crash mid-way leaves every resource either compacted or not.
   * History is unchanged: `body` reads back byte-identical. Then every free page is returned to
   * the file system (`PRAGMA incremental_vacuum`).
   * @param key - only this resource; all resources with uncompacted bodies when absent.
   * @returns What was rewritten.
   * @throws Error on an SQLite error or a corrupt stored body.
   */
  compact(key?: string): CompactionResult {
    const out: CompactionResult = { resources: 0, bodies: 0, bytesBefore: 0, bytesAfter: 0 };
    let rids: number[];
    if (key !== undefined) {
      const e = this.entry(key);
      rids = e ? [e.rid] : [];
    } else rids = this.st.selDirty.all(1).map((r) => num(r.rid));
    for (const rid of rids) this.compactResource(rid, out);
    this.db.prepare('PRAGMA incremental_vacuum').all();
    return out;
  }

  /**
   * Storage figures of the whole store, or of one resource.
   * @param key - a resource key; the whole store when absent.
   * @returns Sizes in bytes ({@link StoreSizes}); all zero for an unknown key.
   */
  sizes(key?: string): StoreSizes {
    const one = key !== undefined;
    const args: Record<string, RowKey> = one ? { tag: this.tagOf(key) } : {};
    const r = this.db.prepare(`SELECT COUNT(*) AS n, TOTAL(length(state)) AS s, TOTAL(length(pending)) AS p FROM resource${one ? ' WHERE key = $tag' : ''}`).get(args) ?? {};
    const ridIs = one ? ' WHERE rid = (SELECT rid FROM resource WHERE key = $tag)' : '';
    const v = this.db.prepare(`SELECT COUNT(*) AS n, TOTAL(length(state)) AS s, TOTAL(state_kind <> 1) AS k, TOTAL(length(body)) AS bc FROM version${ridIs}`).get(args) ?? {};
    const f = this.db.prepare(`SELECT TOTAL(length(body)) AS bp FROM fresh_body${ridIs}`).get(args) ?? {};
    let fileBytes = 0;
    if (!one) {
      const pc = num((this.db.prepare('PRAGMA page_count').get() as { page_count?: unknown }).page_count);
      const ps = num((this.db.prepare('PRAGMA page_size').get() as { page_size?: unknown }).page_size);
      fileBytes = pc * ps;
    }
    return {
      resources: num(r.n),
      versions: num(v.n),
      stateBytes: num(r.s),
      pendingBytes: num(r.p),
      historyStateBytes: num(v.s),
      keyframes: num(v.k),
      plainBodyBytes: num(f.bp),
      compressedBodyBytes: num(v.bc),
      fileBytes,
    };
  }

  /**
   * Stops background compaction and closes the file (SQLite checkpoints the WAL into the database).
   * Further calls throw. Closing twice is a no-op.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.cache.clear();
    this.db.close();
    this.vault?.close();
  }

  /**
   * The row id of a key as hex: HMAC-SHA256 tag in a sealed store (names a patient in an AuditEvent
   * without its id), the UTF-8 of the key in an unsealed one.
   * @param key - `Type/id`.
   */
  resourceTagHex(key: string): string {
    return hexOf(this.tagOf(key));
  }

  /** True when the store is sealed (opened with the node's secret keys). */
  get sealed(): boolean {
    return this.vault !== undefined;
  }

  /** The key vault of a sealed store (undefined when unsealed). */
  get keyVault(): KeyVault | undefined {
    return this.vault;
  }

  /**
   * True when `key` was crypto-shredded on this node (its tombstone is kept): reads answer as for a
   * resource never held, writes throw {@link ResourceShreddedError}, peers' updates are refused.
   * @param key - `Type/id`.
   */
  isShredded(key: string): boolean {
    return this.tombstones.size > 0 && this.tombstones.has(hexOf(this.tagOf(key)));
  }

  /**
   * Re-wraps every content key under the node's current X-Wing key (after `tidegate keys rotate`;
   * also done automatically when a store opens under a rotated key file). Payloads are untouched.
   * @returns Generations before and after, and the number of keys re-wrapped.
   * @throws Error when the store is unsealed or closed; SealedRecordError for a damaged wrapped key.
   */
  rewrap(): RewrapResult {
    if (!this.vault) throw new Error('Store is not sealed: nothing to re-wrap');
    return this.vault.rewrap();
  }

  /**
   * Crypto-shreds resources on this node: in one transaction their rows (documents, history,
   * pending updates, id map pairings) are deleted and a tombstone (the resource tag) is recorded;
   * then their content keys are destroyed in the key vault and both write-ahead logs truncated.
   * A crash in between is finished at the next open (table `shred_pending`). Afterwards no copy of
   * the data file decrypts them. Idempotent; keys not held are tombstoned all the same (a peer's
   * later update must not create them).
   * @param keys - `Type/id` keys.
   * @param at - time of the shred (recorded with the tombstones).
   * @returns Which keys were held, and how many content keys were destroyed.
   * @throws Error on an SQLite error (nothing is shredded then) or a closed store.
   */
  shred(keys: readonly string[], at: Date = new Date()): StoreShredResult {
    if (this.closed) throw new Error('Store is closed');
    const db = this.db;
    const result: StoreShredResult = { shredded: [], tombstoned: [], keysDestroyed: 0 };
    const slots: number[] = [];
    const tags: RowKey[] = [];
    db.exec('BEGIN IMMEDIATE');
    try {
      const selKey = db.prepare('SELECT slot FROM resource_key WHERE key = ?');
      const selRid = db.prepare('SELECT rid FROM resource WHERE key = ?');
      const insTomb = db.prepare('INSERT OR IGNORE INTO shredded (tag, at) VALUES (?, ?)');
      const insPending = db.prepare('INSERT OR IGNORE INTO shred_pending (slot) VALUES (?)');
      for (const key of new Set(keys)) {
        const tag = this.tagOf(key);
        tags.push(tag);
        const k = selKey.get(tag);
        const r = selRid.get(tag);
        if (r) {
          const rid = num(r.rid);
          this.st.delVersions.run(rid);
          this.st.delFreshAll.run(rid);
          db.prepare('DELETE FROM resource WHERE rid = ?').run(rid);
          this.dirty.delete(rid);
          if (this.lastRef?.rid === rid) this.lastRef = undefined;
        }
        db.prepare('DELETE FROM id_map WHERE node_tag = ?').run(tag);
        if (k) {
          db.prepare('DELETE FROM resource_key WHERE key = ?').run(tag);
          if (this.vault) {
            slots.push(num(k.slot));
            insPending.run(num(k.slot));
          }
        }
        insTomb.run(tag, at.toISOString());
        (r ? result.shredded : result.tombstoned).push(key);
      }
      db.exec('COMMIT');
    } catch (err) {
      if (db.isTransaction) db.exec('ROLLBACK');
      throw err;
    }
    for (const tag of tags) this.tombstones.add(hexOf(tag));
    for (const key of result.shredded) {
      const e = this.cache.get(key);
      if (e) {
        this.cache.delete(key);
        this.cachedBytes -= e.bytes;
      }
      this.count--;
    }
    if (this.keyList) {
      const gone = new Set(result.shredded);
      this.keyList = this.keyList.filter((k) => !gone.has(k));
    }
    if (this.vault && slots.length > 0) {
      result.keysDestroyed = this.vault.destroy(slots);
      db.exec('DELETE FROM shred_pending');
    }
    db.prepare('PRAGMA wal_checkpoint(TRUNCATE)').all();
    return result;
  }

  /**
   * Collects the keys written (`set`) from now until `stop()`: a long scan that yields to the event
   * loop (the shred's compartment search) re-checks what was written meanwhile.
   * @returns The live set of keys and a function that stops collecting.
   */
  watchWrites(): { keys: ReadonlySet<string>; stop: () => void } {
    const keys = new Set<string>();
    this.watchers.add(keys);
    return { keys, stop: () => this.watchers.delete(keys) };
  }

  /**
   * Number of tombstones (keys shredded on this node).
   */
  get shreddedCount(): number {
    return this.tombstones.size;
  }

  /**
   * Appends a FHIR AuditEvent (JSON without PHI, e.g. a shred record) to the store's audit table;
   * it is kept in plaintext so the record outlives what it describes.
   * @param event - an AuditEvent with `id` and `recorded`.
   * @throws Error on an SQLite error or a duplicate id.
   */
  appendAuditEvent(event: { id: string; recorded: string }): void {
    this.db.prepare('INSERT INTO audit_event (id, recorded, event) VALUES (?, ?, ?)').run(event.id, event.recorded, JSON.stringify(event));
  }

  /**
   * The stored AuditEvents, newest first.
   * @param limit - at most this many. Default 100.
   */
  auditEvents(limit = 100): unknown[] {
    return this.db
      .prepare('SELECT event FROM audit_event ORDER BY recorded DESC, id DESC LIMIT ?')
      .all(limit)
      .map((r) => JSON.parse(String(r.event)) as unknown);
  }

  // ---- hospital id map (sealed under the node resource's content key; src/store/id-map.ts) ----

  /**
   * The hospital reference paired with node reference `nodeRef`.
   * @returns `Type/id` at the hospital, or undefined when unmapped.
   * @throws SealedRecordError / KeyVaultError when the stored pairing cannot be opened.
   */
  idMapToHospital(nodeRef: string): string | undefined {
    if (this.closed) throw new Error('Store is closed');
    const tag = this.tagOf(nodeRef);
    const row = this.db.prepare('SELECT m.pair AS pair, k.slot AS slot FROM id_map m JOIN resource_key k ON k.key = m.node_tag WHERE m.node_tag = ?').get(tag);
    if (!row) return undefined;
    return this.openPair(num(row.slot), nodeRef, row.pair as Uint8Array)[1];
  }

  /**
   * The node reference paired with hospital reference `hospitalRef`.
   * @returns `Type/id` on the node, or undefined when unmapped.
   */
  idMapToNode(hospitalRef: string): string | undefined {
    if (this.closed) throw new Error('Store is closed');
    const row = this.db
      .prepare('SELECT m.pair AS pair, k.slot AS slot, k.key AS tag, k.name AS name FROM id_map m JOIN resource_key k ON k.key = m.node_tag WHERE m.hospital_tag = ?')
      .get(this.tagOf(`hospital:${hospitalRef}`));
    if (!row) return undefined;
    const slot = num(row.slot);
    const nodeRef = this.openName(row.tag as RowKey, slot, row.name as Uint8Array);
    const [n, h] = this.openPair(slot, nodeRef, row.pair as Uint8Array);
    return h === hospitalRef ? n : undefined;
  }

  /**
   * Pairs node `nodeRef` with hospital `hospitalRef` (replacing any pairing of either side), in one
   * transaction. A node reference gets its content key slot here if it has none yet.
   * @throws ResourceShreddedError for a shredded `nodeRef`; Error on SQLite errors.
   */
  idMapSet(nodeRef: string, hospitalRef: string): void {
    if (this.closed) throw new Error('Store is closed');
    if (this.isShredded(nodeRef)) throw new ResourceShreddedError();
    const tag = this.tagOf(nodeRef);
    const htag = this.tagOf(`hospital:${hospitalRef}`);
    const existing = this.st.selResourceKey.get(tag);
    const slot = existing ? num(existing.slot) : this.vault ? this.vault.allocate() : 0;
    const name = existing ? undefined : this.sealName(tag, slot, nodeRef);
    const pair = this.seal(slot, RecordKind.idMap, nodeRef, 0, new TextEncoder().encode(JSON.stringify([nodeRef, hospitalRef])));
    const db = this.db;
    db.exec('BEGIN IMMEDIATE');
    try {
      if (name) this.st.insResourceKey.run(tag, slot, name);
      db.prepare('DELETE FROM id_map WHERE node_tag = ? OR hospital_tag = ?').run(tag, htag);
      db.prepare('INSERT INTO id_map (node_tag, hospital_tag, pair) VALUES (?, ?, ?)').run(tag, htag, pair);
      db.exec('COMMIT');
    } catch (err) {
      if (db.isTransaction) db.exec('ROLLBACK');
      throw err;
    }
  }

  /** Forgets the pairing of `nodeRef`, if any. */
  idMapDelete(nodeRef: string): void {
    if (this.closed) throw new Error('Store is closed');
    this.db.prepare('DELETE FROM id_map WHERE node_tag = ?').run(this.tagOf(nodeRef));
  }

  // ---- internals ----

  /** Row id of a key (column `key`): its HMAC tag (sealed store) or the key text itself (unsealed). */
  private tagOf(key: string): RowKey {
    return this.vault ? resourceTag(this.vault.indexKey, key) : key;
  }

  private seal(slot: number, kind: RecordKindId, key: string, seq: number, bytes: Uint8Array): Uint8Array {
    return this.vault ? sealRecord(this.vault.contentKey(slot), kind, key, seq, bytes) : bytes;
  }

  private open(slot: number, kind: RecordKindId, key: string, seq: number, bytes: Uint8Array): Uint8Array {
    return this.vault ? openRecord(this.vault.contentKey(slot), kind, key, seq, bytes) : bytes;
  }

  /** The sealed name record of a key: bound to its tag (hex) instead of the key, which the reader does not know yet. */
  private sealName(tag: RowKey, slot: number, key: string): Uint8Array {
    const bytes = new TextEncoder().encode(key);
    return this.vault ? sealRecord(this.vault.contentKey(slot), RecordKind.key, hexOf(tag), 0, bytes) : bytes;
  }

  private openName(tag: RowKey, slot: number, name: Uint8Array): string {
    if (!this.vault) return new TextDecoder().decode(name);
    if (typeof tag === 'string') throw new Error(`Store ${this.path}: a resource row of a sealed store is filed under a plain key`);
    const key = new TextDecoder().decode(openRecord(this.vault.contentKey(slot), RecordKind.key, hexOf(tag), 0, name));
    if (Buffer.compare(resourceTag(this.vault.indexKey, key), tag) !== 0) throw new Error(`Store ${this.path}: a resource name does not match its tag`);
    return key;
  }

  private openPair(slot: number, nodeRef: string, pair: Uint8Array): [string, string] {
    const v = JSON.parse(new TextDecoder().decode(this.open(slot, RecordKind.idMap, nodeRef, 0, pair))) as unknown;
    if (!Array.isArray(v) || v.length !== 2 || typeof v[0] !== 'string' || typeof v[1] !== 'string' || v[0] !== nodeRef) {
      throw new Error(`Store ${this.path}: an id map pairing is malformed`);
    }
    return [v[0], v[1]];
  }

  private newEntry(key: string, rid: number, slot: number, stateV2: Uint8Array, pendingBlob: Uint8Array | null): Entry {
    const store = this;
    const e = {
      key,
      rid,
      slot,
      stateV2,
      pendingBlob,
      nversions: 0,
      vsv: null,
      kfBytes: 0,
      deltaBytes: 0,
      newestShared: false,
      compacted: 0,
      bytes: 0,
    } as unknown as Entry;
    e.record = {
      get state(): Uint8Array {
        if (e.stateV1 === undefined) {
          e.stateV1 = toV1(e.stateV2);
          store.touch(e);
        }
        return e.stateV1;
      },
      get versions(): VersionRecord[] {
        return e.versions ?? store.loadVersions(e);
      },
      get pending(): Uint8Array[] | undefined {
        if (!e.pendingBlob) return undefined;
        if (e.pendingV1 === undefined) e.pendingV1 = decodeUpdateList(e.pendingBlob);
        return e.pendingV1;
      },
    };
    return e;
  }

  /** The cached entry of `key`, loading it (without decoding) from the file on a miss. */
  private entry(key: string): Entry | undefined {
    if (this.closed) throw new Error('Store is closed');
    const hit = this.cache.get(key);
    if (hit) {
      this.cache.delete(key);
      this.cache.set(key, hit);
      return hit;
    }
    if (this.isShredded(key)) return undefined;
    const row = this.st.selResource.get(this.tagOf(key)) as unknown as ResourceRow | undefined;
    if (!row) return undefined;
    const slot = num(row.slot);
    const state = this.open(slot, RecordKind.state, key, 0, blob(row.state) ?? new Uint8Array(0));
    const pendingRaw = blob(row.pending);
    const vsvRaw = blob(row.vsv);
    const e = this.newEntry(key, num(row.rid), slot, state, pendingRaw === null ? null : this.open(slot, RecordKind.pending, key, 0, pendingRaw));
    e.nversions = num(row.nversions);
    e.vsv = vsvRaw === null ? null : this.open(slot, RecordKind.stateVector, key, 0, vsvRaw);
    e.kfBytes = num(row.kf_bytes);
    e.deltaBytes = num(row.delta_bytes);
    e.newestShared = row.newest_kind !== null && num(row.newest_kind) === StateKind.current;
    e.compacted = num(row.compacted);
    this.touch(e);
    return e;
  }

  /** Loads the version list of an entry (metadata only; bodies and states are lazy). */
  private loadVersions(e: Entry): VersionRecord[] {
    const rows = this.st.selVersionMeta.all(e.rid);
    const out: VersionRecord[] = [];
    let newest: VersionCache | undefined;
    for (const r of rows) {
      const seq = num(r.seq);
      if (seq !== out.length) throw new Error(`Store ${this.path}: versions of ${e.key} are not contiguous (missing ${out.length})`);
      newest = {};
      const meta = decodeVersionMeta(this.open(e.slot, RecordKind.versionMeta, e.key, seq, blob(r.meta) ?? new Uint8Array(0)));
      out.push(this.handle(e, seq, { ...meta, deleted: num(r.deleted) !== 0 }, newest));
    }
    e.versions = out;
    if (newest) {
      newest.keep = true;
      e.newest = newest;
    }
    this.touch(e);
    return out;
  }

  /** A version whose body and state are read from the file on access (or from `cache`). */
  private handle(res: ResourceRef, seq: number, meta: { versionId: string; lastUpdated: string; deleted: boolean }, cache: VersionCache): VersionRecord {
    const store = this;
    const ref: ResourceRef = { key: res.key, slot: res.slot, rid: res.rid };
    return {
      versionId: meta.versionId,
      lastUpdated: meta.lastUpdated,
      deleted: meta.deleted,
      get body(): string | null {
        if (cache.body !== undefined) return cache.body;
        const body = store.readBody(ref, seq);
        if (cache.keep) cache.body = body;
        return body;
      },
      get state(): Uint8Array {
        return cache.state ?? store.readState(ref, seq);
      },
    };
  }

  private readBody(res: ResourceRef, seq: number): string | null {
    if (this.closed) throw new Error('Store is closed');
    const rid = res.rid;
    const row = this.st.selBody.get(rid, seq);
    if (!row) throw new Error(`Store ${this.path}: version ${seq} of resource ${rid} is missing`);
    const codec = num(row.body_codec);
    if (codec === BodyCodec.none) return null;
    const stored = codec === BodyCodec.plain ? blob(row.fresh) : blob(row.body);
    if (stored === null) throw new Error(`Store ${this.path}: body of version ${seq} of resource ${rid} is missing`);
    const bytes = this.open(res.slot, codec === BodyCodec.plain ? RecordKind.freshBody : RecordKind.compactBody, res.key, seq, stored);
    let ref: string | undefined;
    if (codec === BodyCodec.deflateWithRef) {
      // Consecutive versions share a reference (history reads them in a row): decode it once.
      const refSeq = num(row.body_ref);
      if (this.lastRef?.rid === rid && this.lastRef.seq === refSeq) ref = this.lastRef.text;
      else {
        ref = this.readBody(res, refSeq) ?? undefined;
        if (ref !== undefined) this.lastRef = { rid, seq: refSeq, text: ref };
      }
    }
    return decodeBody(bytes, codec, ref);
  }

  private readState(res: ResourceRef, seq: number): Uint8Array {
    if (this.closed) throw new Error('Store is closed');
    const rid = res.rid;
    const rows = this.st.selStateChain.all({ rid, seq });
    const first = rows[0];
    if (!first || num(first.state_kind) === StateKind.delta || num(rows[rows.length - 1]!.seq) !== seq) {
      throw new Error(`Store ${this.path}: document of version ${seq} of resource ${rid} cannot be rebuilt`);
    }
    if (num(first.state_kind) === StateKind.current) {
      const cur = this.st.selCurrentState.get(rid);
      return toV1(this.open(res.slot, RecordKind.state, res.key, 0, blob(cur?.state) ?? new Uint8Array(0)));
    }
    return toV1(mergeStates(rows.map((r) => this.open(res.slot, RecordKind.versionState, res.key, num(r.seq), blob(r.state) ?? new Uint8Array(0)))));
  }

  /** Recomputes an entry's memory estimate, marks it most recent, and evicts beyond the budget. */
  private touch(e: Entry): void {
    const before = this.cache.has(e.key) ? e.bytes : 0;
    let bytes = 256 + e.key.length * 2 + e.stateV2.length + (e.stateV1?.length ?? 0) + (e.pendingBlob?.length ?? 0);
    for (const p of e.pendingV1 ?? []) bytes += p.length;
    bytes += (e.versions?.length ?? 0) * 160;
    if (e.newest?.body) bytes += e.newest.body.length * 2;
    if (e.newest?.state && e.newest.state !== e.stateV1) bytes += e.newest.state.length;
    e.bytes = bytes;
    this.cachedBytes += bytes - before;
    this.cache.delete(e.key);
    this.cache.set(e.key, e);
    for (const [k, old] of this.cache) {
      if (this.cachedBytes <= this.cacheBytes || old === e) break;
      this.cache.delete(k);
      this.cachedBytes -= old.bytes;
    }
  }

  private schedule(): void {
    if (this.timer || this.closed || this.dirty.size === 0) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.compactSlice();
    }, this.compactDelayMs);
    this.timer.unref?.();
  }

  /** One background slice: compacts dirty resources until the slice budget is spent. */
  private compactSlice(): void {
    if (this.closed) return;
    const t0 = performance.now();
    const out: CompactionResult = { resources: 0, bodies: 0, bytesBefore: 0, bytesAfter: 0 };
    for (const rid of this.dirty) {
      this.dirty.delete(rid);
      try {
        if (this.compactResource(rid, out, SLICE_ROWS)) this.dirty.add(rid);
      } catch {
        // A corrupt body stays as it is; reading it reports the error to the client that asks.
      }
      if (performance.now() - t0 >= this.compactSliceMs) break;
    }
    if (out.bodies > 0) {
      try {
        this.st.vacuum.all();
      } catch {
        // Returning free pages to the file system is best effort.
      }
    }
    this.schedule();
  }

  /**
   * Compacts the bodies of versions `compacted .. nversions-2` of one resource (at most `maxRows`).
   * @returns True when uncompacted versions remain (besides the newest).
   */
  private compactResource(rid: number, out: CompactionResult, maxRows = Infinity): boolean {
    const res = this.st.selCompact.get(rid);
    if (!res) return false;
    const start = num(res.compacted);
    const upto = Math.min(num(res.nversions) - 1, start + maxRows);
    if (start >= upto) return false;
    const slot = num(res.slot);
    const key = this.openName(res.tag as RowKey, slot, res.name as Uint8Array);
    const refRow = this.st.selCompactRef.get(rid, start);
    let ref: { seq: number; text: string } | undefined = refRow
      ? { seq: num(refRow.seq), text: decodeBody(this.open(slot, RecordKind.compactBody, key, num(refRow.seq), blob(refRow.body)!), BodyCodec.deflate) }
      : undefined;
    const rows = this.st.selCompactRows.all(rid, start, upto);
    const updates: Array<{ seq: number; bytes: Uint8Array; codec: number; ref: number | null }> = [];
    for (const r of rows) {
      const stored = blob(r.fresh);
      if (stored === null || num(r.body_codec) !== BodyCodec.plain) continue;
      const bytes = this.open(slot, RecordKind.freshBody, key, num(r.seq), stored);
      const text = decodeBody(bytes, BodyCodec.plain);
      let next: { bytes: Uint8Array; codec: number; ref: number | null } | undefined;
      if (ref) {
        const c = compressBody(text, ref.text);
        if (c.length * 8 < bytes.length) next = { bytes: c, codec: BodyCodec.deflateWithRef, ref: ref.seq };
      }
      if (!next) {
        next = { bytes: compressBody(text), codec: BodyCodec.deflate, ref: null };
        ref = { seq: num(r.seq), text };
      }
      out.bytesBefore += stored.length;
      const sealedBytes = this.seal(slot, RecordKind.compactBody, key, num(r.seq), next.bytes);
      out.bytesAfter += sealedBytes.length;
      updates.push({ seq: num(r.seq), ...next, bytes: sealedBytes });
    }
    this.db.exec('BEGIN IMMEDIATE');
    try {
      for (const u of updates) this.st.updBody.run(u.bytes, u.codec, u.ref, rid, u.seq);
      this.st.delFresh.run(rid, start, upto);
      this.st.updCompacted.run(upto, rid);
      this.db.exec('COMMIT');
    } catch (err) {
      if (this.db.isTransaction) this.db.exec('ROLLBACK');
      throw err;
    }
    const cached = this.cache.get(key);
    if (cached) cached.compacted = upto;
    out.resources++;
    out.bodies += updates.length;
    return upto < num(res.nversions) - 1;
  }
}

// ---- sealed records on native AES-GCM ----
//
