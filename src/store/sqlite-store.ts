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
 */
import { DatabaseSync } from 'node:sqlite';
import type { StatementSync } from 'node:sqlite';
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
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

const SCHEMA_VERSION = 1;
/** Most version bodies one background step rewrites (~0.2 ms each), so a step stays short. */
const SLICE_ROWS = 32;
/** Free pages returned to the file system after a background step (4 KiB each). */
const VACUUM_PAGES = 1024;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS tidegate_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resource (
  rid INTEGER PRIMARY KEY,
  key TEXT NOT NULL UNIQUE,
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
  version_id TEXT NOT NULL,
  last_updated TEXT NOT NULL,
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

interface ResourceRow {
  rid: number;
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
  /** The last reference body decoded (compacted bodies are stored against one). */
  private lastRef: { rid: number; seq: number; text: string } | undefined;
  private readonly st: Record<
    | 'selResource'
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
   *   by a newer schema, or WAL mode cannot be enabled on it.
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
      this.db.exec('BEGIN IMMEDIATE');
      try {
        this.db.exec(SCHEMA);
        const row = this.db.prepare("SELECT value FROM tidegate_meta WHERE name = 'schema'").get() as { value?: unknown } | undefined;
        if (!row) this.db.prepare("INSERT INTO tidegate_meta (name, value) VALUES ('schema', ?)").run(String(SCHEMA_VERSION));
        else if (Number(row.value) !== SCHEMA_VERSION) throw new Error(`schema version ${String(row.value)} is not supported (this build reads ${SCHEMA_VERSION})`);
        this.db.exec('COMMIT');
      } catch (err) {
        this.db.exec('ROLLBACK');
        throw err;
      }
    } catch (err) {
      this.db.close();
      throw new Error(`Cannot open store ${this.path}: ${(err as Error).message}`, { cause: err });
    }
    const p = (sql: string) => this.db.prepare(sql);
    this.st = {
      selResource: p(
        'SELECT rid, state, pending, nversions, vsv, kf_bytes, delta_bytes, compacted, ' +
          '(SELECT state_kind FROM version v WHERE v.rid = resource.rid AND v.seq = resource.nversions - 1) AS newest_kind FROM resource WHERE key = ?',
      ),
      selCurrentState: p('SELECT state FROM resource WHERE rid = ?'),
      updMaterialize: p('UPDATE version SET state = ?, state_kind = 0 WHERE rid = ? AND seq = ? AND state_kind = 2'),
      insResource: p('INSERT INTO resource (key, state, pending) VALUES (?, ?, ?)'),
      updResource: p('UPDATE resource SET state = ?, pending = ?, nversions = ?, vsv = ?, kf_bytes = ?, delta_bytes = ?, compacted = MIN(compacted, ?) WHERE rid = ?'),
      selVersionMeta: p('SELECT seq, version_id, last_updated, deleted FROM version WHERE rid = ? ORDER BY seq'),
      insVersion: p('INSERT INTO version (rid, seq, version_id, last_updated, deleted, body, body_codec, body_ref, state, state_kind) VALUES (?, ?, ?, ?, ?, NULL, ?, NULL, ?, ?)'),
      insFresh: p('INSERT INTO fresh_body (rid, seq, body) VALUES (?, ?, ?)'),
      delVersions: p('DELETE FROM version WHERE rid = ?'),
      delFreshAll: p('DELETE FROM fresh_body WHERE rid = ?'),
      delFresh: p('DELETE FROM fresh_body WHERE rid = ? AND seq >= ? AND seq < ?'),
      selBody: p('SELECT v.body AS body, v.body_codec AS body_codec, v.body_ref AS body_ref, f.body AS fresh FROM version v LEFT JOIN fresh_body f ON f.rid = v.rid AND f.seq = v.seq WHERE v.rid = ? AND v.seq = ?'),
      selStateChain: p(
        'SELECT seq, state, state_kind FROM version WHERE rid = $rid AND seq <= $seq AND seq >= ' +
          '(SELECT MAX(seq) FROM version WHERE rid = $rid AND seq <= $seq AND state_kind <> 1) ORDER BY seq',
      ),
      selKeys: p('SELECT key FROM resource ORDER BY rid'),
      selCompact: p('SELECT key, nversions, compacted FROM resource WHERE rid = ?'),
      selCompactRef: p('SELECT seq, body FROM version WHERE rid = ? AND seq < ? AND body_codec = 2 ORDER BY seq DESC LIMIT 1'),
      selCompactRows: p('SELECT v.seq AS seq, v.body_codec AS body_codec, f.body AS fresh FROM version v LEFT JOIN fresh_body f ON f.rid = v.rid AND f.seq = v.seq WHERE v.rid = ? AND v.seq >= ? AND v.seq < ? ORDER BY v.seq'),
      updBody: p('UPDATE version SET body = ?, body_codec = ?, body_ref = ? WHERE rid = ? AND seq = ?'),
      updCompacted: p('UPDATE resource SET compacted = ? WHERE rid = ?'),
      selDirty: p('SELECT rid FROM resource WHERE nversions - 1 - compacted >= ?'),
      vacuum: p(`PRAGMA incremental_vacuum(${VACUUM_PAGES})`),
    };
    this.count = num((this.db.prepare('SELECT COUNT(*) AS n FROM resource').get() as { n?: unknown }).n);
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
    let vsv = rewrite ? null : (e?.vsv ?? null);
    let kfBytes = rewrite ? 0 : (e?.kfBytes ?? 0);
    let deltaBytes = rewrite ? 0 : (e?.deltaBytes ?? 0);
    const rows: NewVersionRow[] = [];
    for (let seq = from; seq < next.length; seq++) {
      const src = next[seq]!;
      const v = { versionId: src.versionId, lastUpdated: src.lastUpdated, deleted: src.deleted, body: src.body };
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
    const db = this.db;
    let rid = e?.rid;
    db.exec('BEGIN IMMEDIATE');
    try {
      if (rid === undefined) rid = num(this.st.insResource.run(key, stateV2, pendingBlob).lastInsertRowid);
      if (rewrite) {
        this.st.delVersions.run(rid);
        this.st.delFreshAll.run(rid);
        if (this.lastRef?.rid === rid) this.lastRef = undefined;
      }
      if (materialize) this.st.updMaterialize.run(e.stateV2, rid, e.nversions - 1);
      for (const r of rows) {
        const codec = r.v.body === null ? BodyCodec.none : BodyCodec.plain;
        this.st.insVersion.run(rid, r.seq, r.v.versionId, r.v.lastUpdated, r.v.deleted ? 1 : 0, codec, r.state, r.kind);
        if (r.v.body !== null) this.st.insFresh.run(rid, r.seq, plainBody(r.v.body));
      }
      this.st.updResource.run(stateV2, pendingBlob, next.length, vsv, kfBytes, deltaBytes, rewrite ? 0 : next.length, rid);
      db.exec('COMMIT');
    } catch (err) {
      if (db.isTransaction) db.exec('ROLLBACK');
      throw err;
    }
    if (!e) this.count++;
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
        versions.push(this.handle(rid, r.seq, r.v, cache));
        newest = cache;
      }
      const last = rows[rows.length - 1];
      if (last && newest) {
        newest.body = last.v.body;
        newest.state = last.stateV1;
        newest.keep = true;
      }
    }
    const entry: Entry = e ?? this.newEntry(key, rid, stateV2, pendingBlob);
    entry.stateV2 = stateV2;
    entry.stateV1 = recordState;
    entry.pendingBlob = pendingBlob;
    if (pendingV1) entry.pendingV1 = pendingV1;
    else delete entry.pendingV1;
    entry.versions = versions;
    if (newest) entry.newest = newest;
    entry.nversions = next.length;
    entry.vsv = vsv;
    entry.kfBytes = kfBytes;
    entry.deltaBytes = deltaBytes;
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
    return this.st.selKeys.all().map((r) => String(r.key)).values();
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
    const args: Record<string, string> = one ? { key } : {};
    const r = this.db.prepare(`SELECT COUNT(*) AS n, TOTAL(length(state)) AS s, TOTAL(length(pending)) AS p FROM resource${one ? ' WHERE key = $key' : ''}`).get(args) ?? {};
    const ridIs = one ? ' WHERE rid = (SELECT rid FROM resource WHERE key = $key)' : '';
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
  }

  // ---- internals ----

  private newEntry(key: string, rid: number, stateV2: Uint8Array, pendingBlob: Uint8Array | null): Entry {
    const store = this;
    const e = {
      key,
      rid,
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
    const row = this.st.selResource.get(key) as unknown as ResourceRow | undefined;
    if (!row) return undefined;
    const e = this.newEntry(key, num(row.rid), blob(row.state) ?? new Uint8Array(0), blob(row.pending));
    e.nversions = num(row.nversions);
    e.vsv = blob(row.vsv);
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
      out.push(this.handle(e.rid, seq, { versionId: String(r.version_id), lastUpdated: String(r.last_updated), deleted: num(r.deleted) !== 0 }, newest));
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
  private handle(rid: number, seq: number, meta: { versionId: string; lastUpdated: string; deleted: boolean }, cache: VersionCache): VersionRecord {
    const store = this;
    return {
      versionId: meta.versionId,
      lastUpdated: meta.lastUpdated,
      deleted: meta.deleted,
      get body(): string | null {
        if (cache.body !== undefined) return cache.body;
        const body = store.readBody(rid, seq);
        if (cache.keep) cache.body = body;
        return body;
      },
      get state(): Uint8Array {
        return cache.state ?? store.readState(rid, seq);
      },
    };
  }

  private readBody(rid: number, seq: number): string | null {
    if (this.closed) throw new Error('Store is closed');
    const row = this.st.selBody.get(rid, seq);
    if (!row) throw new Error(`Store ${this.path}: version ${seq} of resource ${rid} is missing`);
    const codec = num(row.body_codec);
    if (codec === BodyCodec.none) return null;
    const bytes = codec === BodyCodec.plain ? blob(row.fresh) : blob(row.body);
    if (bytes === null) throw new Error(`Store ${this.path}: body of version ${seq} of resource ${rid} is missing`);
    let ref: string | undefined;
    if (codec === BodyCodec.deflateWithRef) {
      // Consecutive versions share a reference (history reads them in a row): decode it once.
      const refSeq = num(row.body_ref);
      if (this.lastRef?.rid === rid && this.lastRef.seq === refSeq) ref = this.lastRef.text;
      else {
        ref = this.readBody(rid, refSeq) ?? undefined;
        if (ref !== undefined) this.lastRef = { rid, seq: refSeq, text: ref };
      }
    }
    return decodeBody(bytes, codec, ref);
  }

  private readState(rid: number, seq: number): Uint8Array {
    if (this.closed) throw new Error('Store is closed');
    const rows = this.st.selStateChain.all({ rid, seq });
    const first = rows[0];
    if (!first || num(first.state_kind) === StateKind.delta || num(rows[rows.length - 1]!.seq) !== seq) {
      throw new Error(`Store ${this.path}: document of version ${seq} of resource ${rid} cannot be rebuilt`);
    }
    if (num(first.state_kind) === StateKind.current) {
      const cur = this.st.selCurrentState.get(rid);
      return toV1(blob(cur?.state) ?? new Uint8Array(0));
    }
    return toV1(mergeStates(rows.map((r) => blob(r.state) ?? new Uint8Array(0))));
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
    const refRow = this.st.selCompactRef.get(rid, start);
    let ref: { seq: number; text: string } | undefined = refRow ? { seq: num(refRow.seq), text: decodeBody(blob(refRow.body)!, BodyCodec.deflate) } : undefined;
    const rows = this.st.selCompactRows.all(rid, start, upto);
    const updates: Array<{ seq: number; bytes: Uint8Array; codec: number; ref: number | null }> = [];
    for (const r of rows) {
      const bytes = blob(r.fresh);
      if (bytes === null || num(r.body_codec) !== BodyCodec.plain) continue;
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
      out.bytesBefore += bytes.length;
      out.bytesAfter += next.bytes.length;
      updates.push({ seq: num(r.seq), ...next });
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
    const cached = this.cache.get(String(res.key));
    if (cached) cached.compacted = upto;
    out.resources++;
    out.bodies += updates.length;
    return upto < num(res.nversions) - 1;
  }
}
