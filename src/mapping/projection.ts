/**
 * Projection documents of redacted peers (docs/mappings.md "Redaction").
 *
 * Gossip carries Yjs updates of ONE shared document per resource (docs/merge.md): a peer cannot be
 * sent a redacted version of it. A peer whose route has `redact` rules is therefore a **projection
 * peer** for the resource types its rules name: it receives, per resource, a separate read-only
 * document — the projection — written only by this node, holding `redactResource(current version)`.
 *
 * Each projection peer has its own projection store and its own merge {@link Replica} over it, whose
 * writer id is `<node>~redacted~<peer>~<epoch>` (so its Yjs client id is its own, never the node's).
 * Whenever the shared resource gets a new version the node calls {@link ProjectionFeeds.onVersion};
 * the key is re-projected for every projection peer whose route and withheld labels allow it (a
 * deleted resource is deleted in the projection), and when that changed the projection document,
 * its update goes to that peer only (Tide `publishTo`). Tide's anti-entropy with the peer compares
 * and repairs projected types from the projection store ({@link ProjectionFeeds.source}).
 *
 * **Epoch.** A projection store that is lost (file deleted, memory store restarted) cannot be
 * rebuilt under the same writer id: the new document would reuse Yjs clocks the peer already holds
 * with other content, and the peer would silently ignore it. Each projection store therefore has an
 * epoch (random, kept in its file name): a new store starts a new writer. The peer then holds two
 * lineages of the resource; the new one's writes carry later stamps and win element by element.
 * Limit: an element the old lineage holds that the new one never writes (removed from the resource
 * while the store was lost) stays visible at the peer.
 *
 * **Unchanged renders are not written.** Each feed remembers, per key, a SHA-256 digest of the
 * canonical JSON of the last render it wrote (server-managed `meta.versionId`/`meta.lastUpdated`
 * left out, as the merge engine leaves them out: src/merge/flatten.ts), or that it deleted the key.
 * A new version whose redacted render has the same digest (e.g. only a removed telecom changed) is
 * skipped: no merge write, nothing published. Only this feed writes its projection document (updates
 * of projected types from the peer are dropped by Tide), so the digest describes what the document
 * holds. The memory is per feed (a new store, a new epoch, a restart: empty, every key written once
 * more, which the merge engine turns into no update when nothing changed), bounded per peer (LRU:
 * a forgotten key is simply written), and a key is forgotten before each write and when it is
 * shredded: a failed write or a shred never leaves a digest that could skip a needed write.
 *
 * **Failures.** A projection store that cannot be opened (e.g. its key vault wrapped under a retired
 * X-Wing key) is tried again every 30 s; meanwhile the peer gets no projection. The same holds while
 * the last projection write to the store failed (until one succeeds). Tide's anti-entropy then leaves
 * the projected types out for that peer (fail closed: never the shared document) and shows the error
 * as the peer's `lastError` (`GET /admin/peers`). Warnings are rate-limited per peer.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { canonicalStringify, parseFhirJson, isJsonObject } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import { Replica } from '../merge/replica.ts';
import type { MergePolicy } from '../merge/policy.ts';
import { MemoryStore } from '../store/store.ts';
import { SqliteStore } from '../store/sqlite-store.ts';
import type { SqliteStoreOptions } from '../store/sqlite-store.ts';
import type { ResourceStore } from '../store/store.ts';
import type { ProjectionSource, ResourceUpdate } from '../tide/types.ts';
import type { Mapping } from './load.ts';
import { projectedTypesFor, withRedactedLabel } from './redact.ts';

/** An opened projection store: the store and its epoch (see module doc). */
export interface OpenedProjectionStore {
  store: ResourceStore;
  /** 1-32 of `[a-z0-9]`, new for every new (empty) store. */
  epoch: string;
}

/** Minimal pino-compatible logger (no PHI is ever passed: keys' types, peer ids, counts, error codes). */
export interface ProjectionLogger {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

/** Options of {@link ProjectionFeeds}. */
export interface ProjectionFeedsOptions {
  /** This node's id. */
  nodeId: string;
  /** The mapping in force (read at use time: a reload changes the rules). */
  mapping: () => Mapping | undefined;
  /** The node's shared merge replica: `current(key)` is projected, `keys()` backfilled. */
  shared: Pick<Replica, 'current' | 'keys'>;
  /** Merge policy of the projection replicas (the node's). */
  policy: MergePolicy;
  /** Opens (or creates) the projection store of a peer; default a {@link MemoryStore} with a new epoch. */
  openStore?: (peerId: string) => OpenedProjectionStore;
  /** Sends projection updates to one peer (Tide `publishTo`). May throw (logged, the projection is repaired by anti-entropy). */
  publishTo: (peerId: string, updates: ResourceUpdate[]) => void;
  /** May the peer receive `key` (route, withheld labels, Consent, subscription: Tide `mayReceive`)? */
  mayReceive: (peerId: string, key: string) => boolean;
  logger?: ProjectionLogger;
  /** Keys projected per event-loop turn. Default 100. */
  batchSize?: number;
  /**
   * Digests of written renders remembered per peer (see module doc "Unchanged renders"), LRU.
   * Default 100 000 (about 150 bytes each); 0 turns the skip off (every version is written).
   */
  renderCacheSize?: number;
}

/** Counters of {@link ProjectionFeeds.stats}. */
export interface ProjectionStats {
  /** Projection documents written (a change of a projection). */
  written: number;
  /** Updates handed to `publishTo`. */
  published: number;
  /** New versions whose redacted render equalled the projection's (no write, nothing published). */
  skipped: number;
  /** Keys that failed to project (logged; retried on the next version or backfill). */
  failures: number;
}

/** One peer's projection: its store, replica and epoch. */
interface Feed {
  replica: Replica;
  store: ResourceStore;
  epoch: string;
  /** Key → {@link renderDigest} of what the projection document holds, or {@link DELETED} (LRU: Map order). */
  rendered: Map<string, string>;
}

/** {@link Feed.rendered} of a key whose projection is deleted (or was never written while deleted). */
const DELETED = 'deleted';

/**
 * SHA-256 (FIPS 180-4) of the canonical JSON (docs/merge.md) of a projection render, without the
 * server-managed `meta.versionId` and `meta.lastUpdated` (the merge engine ignores them, so two
 * renders that differ only there write the same document; src/merge/flatten.ts), as base64 (44
 * characters). Equal digests: the same projection document content.
 * @param resource - the redacted, labelled resource about to be written to a projection.
 * @returns The digest, base64 (never equal to the deleted marker).
 */
export function renderDigest(resource: FhirJsonObject): string {
  let r = resource;
  if (isJsonObject(r.meta) && ('versionId' in r.meta || 'lastUpdated' in r.meta)) {
    const { versionId: _v, lastUpdated: _l, ...meta } = r.meta;
    r = { ...r, meta };
  }
  return createHash('sha256').update(canonicalStringify(r)).digest('base64');
}

/** After a projection store failed to open, how long before it is tried again, ms. */
const OPEN_RETRY_MS = 30_000;
/** At most one warning per peer and kind of failure in this many ms (the others are counted). */
const WARN_EVERY_MS = 60_000;

/**
 * A peer's projection store cannot be opened (e.g. its key vault is wrapped under a retired X-Wing
 * key: `ERR_VAULT_KEY_UNAVAILABLE`). Its message names the peer and the store's error (file path,
 * key id, error code), never resource content.
 */
export class ProjectionStoreError extends Error {
  override readonly name = 'ProjectionStoreError';
  readonly code = 'ERR_PROJECTION_STORE';
  /** The projection peer. */
  readonly peerId: string;
  /**
   * @param peerId - the projection peer.
   * @param detail - the store's error, as text (see {@link describeStoreError}).
   * @param cause - the store's error.
   */
  constructor(peerId: string, detail: string, cause?: unknown) {
    super(`projection store of peer ${peerId} unavailable: ${detail}`, cause === undefined ? undefined : { cause });
    this.peerId = peerId;
  }
}

/** `<code>: <message>` of a store error (codes and messages of src/store name files and key ids only). */
function describeStoreError(err: unknown): string {
  const code = (err as { code?: unknown }).code;
  const message = err instanceof Error ? err.message : String(err);
  return (typeof code === 'string' ? `${code}: ${message}` : message).slice(0, 400);
}

/** What every projection writer id holds (`<node>~redacted~<peer>~<epoch>`); node ids never contain `~`. */
const PROJECTION_WRITER_MARK = Buffer.from('~redacted~', 'utf8');

/**
 * True when a stored Yjs document (src/merge/doc.ts) holds a projection writer's log, i.e. it is a
 * projection this node received, whatever its current version says: a client at the projection
 * peer may have removed the REDACTED label (a PUT without `meta`), and the document must still
 * never be forwarded. Yjs stores the log's name (`n:<writer id>`) as UTF-8 in the state, so a byte
 * search finds it; a resource whose content holds the same text is withheld too (fail closed).
 * @param state - the document's Yjs state (the store record's `state`), or undefined.
 */
export function holdsProjectionWriter(state: Uint8Array | undefined): boolean {
  return state !== undefined && Buffer.from(state.buffer, state.byteOffset, state.byteLength).indexOf(PROJECTION_WRITER_MARK) >= 0;
}

/** A new random epoch. */
export function newEpoch(): string {
  return randomBytes(6).toString('hex');
}

/**
 * Opens the projection store of one peer next to the node's SQLite store file:
 * `<storeFile>.projection-<peerId>.<epoch>.sqlite` (sealed like the node's store when `opts` has
 * `secretKeys`; its key vault is that file + `.keys`). An existing file of that peer is reopened
 * with its epoch; otherwise a new file with a new epoch is created (see the module doc: a lost
 * projection store starts a new writer, it never reuses the old one's Yjs clocks).
 * @param storeFile - the node's store file (absolute or relative to the working directory).
 * @param peerId - the projection peer's node id.
 * @param opts - SQLite store options (`secretKeys` to seal it).
 * @returns The store, its epoch and its closer.
 * @throws Error when the file cannot be opened as a tidegate store (see {@link SqliteStore}).
 */
export function openProjectionSqlite(storeFile: string, peerId: string, opts: SqliteStoreOptions = {}): OpenedProjectionStore & { path: string; close(): void } {
  const dir = dirname(storeFile);
  const prefix = `${basename(storeFile)}.projection-${peerId}.`;
  let names: string[] = [];
  try {
    names = readdirSync(dir).filter((n) => n.startsWith(prefix) && /^[0-9a-f]{1,32}\.sqlite$/.test(n.slice(prefix.length)));
  } catch {
    // the folder is created with the store
  }
  // more than one (a copy restored by hand): the newest is in use
  names.sort((a, b) => statSync(join(dir, b)).mtimeMs - statSync(join(dir, a)).mtimeMs);
  const epoch = names[0] !== undefined ? names[0].slice(prefix.length, -'.sqlite'.length) : newEpoch();
  const path = join(dir, `${prefix}${epoch}.sqlite`);
  const store = new SqliteStore(path, opts);
  return { store, epoch, path, close: () => store.close() };
}

/**
 * Says once, at start, which projection peers get every projected resource again because their
 * projection stores are kept in memory (a memory or PostgreSQL node store: only a SQLite node store
 * has projection stores at rest, see {@link openProjectionSqlite}). A memory projection store is new
 * at every start, so it has a new epoch (module doc): its writer's documents are all new, and the
 * backfill sends every held resource of the peer's projected types to the peer once more. One
 * warning naming the peers and the types their rules name (`redactedTypes`: config, no resource
 * content); nothing when no peer has `redact` rules.
 * @param log - the node's logger.
 * @param storeKind - the node store's kind (src/store/open.ts).
 * @param mapping - the mapping in force at start, or undefined (no mapping file).
 * @returns The peers named (sorted), empty when nothing was logged.
 */
export function logProjectionResend(log: Pick<ProjectionLogger, 'warn'>, storeKind: 'memory' | 'postgres' | 'sqlite', mapping: Mapping | undefined): string[] {
  if (storeKind === 'sqlite' || mapping === undefined) return [];
  const peers = mapping.peers.filter((p) => mapping.redactionFor(p) !== undefined).sort();
  if (peers.length === 0) return [];
  // the projected types are the types the rules name (redact.ts projectedTypesFor)
  const redactedTypes = Object.fromEntries(peers.map((p) => [p, [...mapping.redactedTypes(p)].sort()]));
  log.warn(
    { peers, redactedTypes, store: storeKind, reason: 'projection stores are kept in memory: a new epoch at every start' },
    storeKind === 'postgres'
      ? 'projection: with a PostgreSQL store the projection stores are in memory; these redacted peers get every projected resource again after each start (docs/mappings.md "Projection stores")'
      : 'projection: with a memory store the projection stores are in memory; these redacted peers get every projected resource again after each start',
  );
  return peers;
}

/** One projection store file of a node's store file (see {@link projectionStoreFiles}). */
export interface ProjectionStoreFile {
  /** `<storeFile>.projection-<peerId>.<epoch>.sqlite` (its key vault: this path + `.keys`). */
  path: string;
  peerId: string;
  epoch: string;
}

/**
 * Every projection store file next to a node's SQLite store file, all peers and all epochs (a
 * projection store lost and rebuilt leaves no file behind, but a copy restored by hand does): the
 * files offline `tidegate shred` and `tidegate keys rewrap` must reach too, and whose key vaults
 * `tidegate keys retire` checks.
 * @param storeFile - the node's store file (absolute or relative to the working directory).
 * @returns The files, sorted by path; empty when there are none or the folder does not exist.
 */
export function projectionStoreFiles(storeFile: string): ProjectionStoreFile[] {
  const dir = dirname(storeFile);
  const prefix = `${basename(storeFile)}.projection-`;
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const out: ProjectionStoreFile[] = [];
  for (const n of names.sort()) {
    if (!n.startsWith(prefix)) continue;
    const m = /^(.+)\.([0-9a-f]{1,32})\.sqlite$/.exec(n.slice(prefix.length));
    if (m) out.push({ path: join(dir, n), peerId: m[1]!, epoch: m[2]! });
  }
  return out;
}

/** The resource type of a key `Type/id`. */
function typeOf(key: string): string {
  const i = key.indexOf('/');
  return i < 0 ? key : key.slice(0, i);
}

/** See module doc. */
export class ProjectionFeeds {
  readonly #opts: ProjectionFeedsOptions;
  readonly #feeds = new Map<string, Feed>();
  readonly #dirty = new Set<string>();
  #running: Promise<void> | undefined;
  #stopped = false;
  readonly #stats: ProjectionStats = { written: 0, published: 0, skipped: 0, failures: 0 };
  readonly #batchSize: number;
  readonly #renderCacheSize: number;
  /** Per peer whose projection store failed to open: the error, and when opening may be tried again. */
  readonly #openFailures = new Map<string, { message: string; retryAt: number }>();
  /** Per peer whose last projection write failed (cleared by the next one that succeeds): the error. */
  readonly #writeFailures = new Map<string, string>();
  /** Per peer and kind of failure: when it was last logged, and how many were not logged since. */
  readonly #warned = new Map<string, { at: number; suppressed: number }>();

  /** @param opts - see {@link ProjectionFeedsOptions}. */
  constructor(opts: ProjectionFeedsOptions) {
    this.#opts = opts;
    this.#batchSize = opts.batchSize ?? 100;
    this.#renderCacheSize = Math.max(0, opts.renderCacheSize ?? 100_000);
  }

  /** Resource types projected for `peerId` under the mapping in force (empty: not a projection peer). */
  typesFor(peerId: string): ReadonlySet<string> {
    // the types the rules name (src/mapping/redact.ts projectedTypesFor: one set for feed, Tide and preview)
    return projectedTypesFor(this.#opts.mapping()?.redactionFor(peerId));
  }

  /**
   * The peer's feed, opened on first use. A store that fails to open is tried again after
   * {@link OPEN_RETRY_MS} (until then the same error is thrown at once).
   * @throws ProjectionStoreError when the projection store cannot be opened.
   */
  #feed(peerId: string): Feed {
    let feed = this.#feeds.get(peerId);
    if (feed === undefined) {
      const failed = this.#openFailures.get(peerId);
      if (failed !== undefined && Date.now() < failed.retryAt) throw new ProjectionStoreError(peerId, failed.message);
      let opened: OpenedProjectionStore;
      try {
        opened = this.#opts.openStore?.(peerId) ?? { store: new MemoryStore(), epoch: newEpoch() };
      } catch (err) {
        const message = describeStoreError(err);
        this.#openFailures.set(peerId, { message, retryAt: Date.now() + OPEN_RETRY_MS });
        this.#warn(peerId, 'open', { peer: peerId, err: message }, 'projection: projection store cannot be opened; the peer gets no projection (tried again every 30 s)');
        throw new ProjectionStoreError(peerId, message, err);
      }
      this.#openFailures.delete(peerId);
      const replica = new Replica({ nodeId: `${this.#opts.nodeId}~redacted~${peerId}~${opened.epoch}`, store: opened.store, policy: this.#opts.policy });
      // a new feed (new store or epoch) remembers nothing: every key is written once more
      feed = { replica, store: opened.store, epoch: opened.epoch, rendered: new Map() };
      this.#feeds.set(peerId, feed);
    }
    return feed;
  }

  /**
   * The peer's projection as Tide sees it (`PeerConfig.projection`). The projection store is opened
   * only once the peer has redaction rules. `keys()` throws {@link ProjectionStoreError} while the
   * store cannot be opened or its last projection write failed (Tide then leaves the projected types
   * out for this peer and shows the error as its `lastError`).
   * @param peerId - a configured peer id.
   */
  source(peerId: string): ProjectionSource {
    return {
      types: () => this.typesFor(peerId),
      keys: () => {
        if (this.typesFor(peerId).size === 0) return [];
        // a store that stopped taking writes holds stale projections: Tide shows the error (lastError)
        const failed = this.#writeFailures.get(peerId);
        if (failed !== undefined) throw new ProjectionStoreError(peerId, `last write failed: ${failed}`);
        return this.#feed(peerId).replica.keys();
      },
      stateVector: (key) => (this.typesFor(peerId).size === 0 ? undefined : this.#feed(peerId).replica.stateVector(key)),
      diffFor: (key, sv) => (this.typesFor(peerId).size === 0 ? undefined : this.#feed(peerId).replica.diffFor(key, sv)),
    };
  }

  /**
   * The peer's projection replica (read access, e.g. for tests and `GET` of what a peer holds).
   * @param peerId - a configured peer id.
   */
  replicaFor(peerId: string): Replica {
    return this.#feed(peerId).replica;
  }

  /**
   * Tells the feeds that the shared resource `key` has a new version (local write, remote merge,
   * hospital read). Projection happens soon after, off the caller's stack, batched. Never throws.
   * @param key - `Type/id`.
   */
  onVersion(key: string): void {
    if (this.#stopped) return;
    this.#dirty.add(key);
    this.#schedule();
  }

  /**
   * Brings every projection up to date: queues every held key of a projected type. Runs in the
   * background in batches of `batchSize` keys, yielding to the event loop between them.
   * @returns Resolves once every key queued so far has been projected.
   */
  async backfill(): Promise<void> {
    const peers = this.#projectionPeers();
    if (peers.length === 0) return;
    const types = new Set(peers.flatMap((p) => [...this.typesFor(p)]));
    let n = 0;
    for (const key of this.#opts.shared.keys()) {
      if (this.#stopped) return;
      if (types.has(typeOf(key))) this.#dirty.add(key);
      if (++n % 1000 === 0) await yieldToLoop();
    }
    this.#schedule();
    await this.idle();
  }

  /** Resolves once nothing waits to be projected. */
  async idle(): Promise<void> {
    while (this.#running) await this.#running;
  }

  /** Stops projecting (what waits is left: the next start's backfill does it). */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#dirty.clear();
    await this.idle();
  }

  /**
   * Crypto-shredding (src/store/shred.ts) reaches the projections: `keys` are left out of what waits
   * to be projected, and shredded in every opened projection store that can shred (a sealed SQLite
   * projection store: content keys destroyed, tombstone kept). A memory projection store cannot
   * shred: its documents go when the process ends.
   * @param keys - the `Type/id` keys shredded in the node's store.
   * @returns Projection documents shredded, and projection stores that could not shred them.
   */
  shred(keys: readonly string[]): { shredded: number; unshreddable: number } {
    for (const k of keys) this.#dirty.delete(k);
    let shredded = 0;
    let unshreddable = 0;
    for (const feed of this.#feeds.values()) {
      // never skip a later write because of what the document held before the shred
      for (const k of keys) feed.rendered.delete(k);
      const held = keys.filter((k) => feed.store.get(k) !== undefined);
      if (held.length === 0) continue;
      const store = feed.store as ResourceStore & { shred?: (keys: readonly string[]) => { shredded: string[] } };
      if (typeof store.shred === 'function') shredded += store.shred(held).shredded.length;
      else unshreddable++;
    }
    return { shredded, unshreddable };
  }

  /** Counters since construction. */
  stats(): ProjectionStats {
    return { ...this.#stats };
  }

  /** Peers with redaction rules under the mapping in force. */
  #projectionPeers(): string[] {
    const m = this.#opts.mapping();
    return m === undefined ? [] : m.peers.filter((p) => m.redactionFor(p) !== undefined);
  }

  /**
   * Logs a warning at most once per peer and `kind` every {@link WARN_EVERY_MS} ms; the next one
   * carries `suppressed`, the count of those not logged in between.
   */
  #warn(peerId: string, kind: string, fields: Record<string, unknown>, msg: string): void {
    const topic = `${kind}:${peerId}`;
    const now = Date.now();
    const w = this.#warned.get(topic);
    if (w !== undefined && now - w.at < WARN_EVERY_MS) {
      w.suppressed++;
      return;
    }
    this.#warned.set(topic, { at: now, suppressed: 0 });
    this.#opts.logger?.warn(w !== undefined && w.suppressed > 0 ? { ...fields, suppressed: w.suppressed } : fields, msg);
  }

  #schedule(): void {
    if (this.#running || this.#dirty.size === 0) return;
    this.#running = this.#drain().finally(() => {
      this.#running = undefined;
      if (this.#dirty.size > 0 && !this.#stopped) this.#schedule();
    });
  }

  async #drain(): Promise<void> {
    while (this.#dirty.size > 0 && !this.#stopped) {
      await yieldToLoop();
      const batch: string[] = [];
      for (const key of this.#dirty) {
        batch.push(key);
        if (batch.length >= this.#batchSize) break;
      }
      for (const key of batch) this.#dirty.delete(key);
      const peers = this.#projectionPeers();
      for (const peerId of peers) {
        const updates: ResourceUpdate[] = [];
        for (const key of batch) {
          try {
            const update = this.#project(peerId, key);
            if (update) updates.push({ key, update });
          } catch (err) {
            this.#stats.failures++;
            if (err instanceof ProjectionStoreError) continue; // logged (rate-limited) by #feed
            this.#writeFailures.set(peerId, describeStoreError(err));
            this.#warn(peerId, 'project', { peer: peerId, type: typeOf(key), err: (err as { code?: string }).code ?? (err as Error).name }, 'projection: resource not projected');
          }
        }
        if (updates.length === 0) continue;
        try {
          this.#opts.publishTo(peerId, updates);
          this.#stats.published += updates.length;
        } catch (err) {
          this.#opts.logger?.warn({ peer: peerId, count: updates.length, err: (err as Error).message }, 'projection: updates not sent (anti-entropy repairs them)');
        }
      }
    }
  }

  /** A new version whose render the projection already holds: counted, marked recently used, not written. */
  #skip(feed: Feed, key: string): undefined {
    this.#stats.skipped++;
    const d = feed.rendered.get(key)!;
    feed.rendered.delete(key);
    feed.rendered.set(key, d);
    return undefined;
  }

  /** Remembers what the projection document of `key` now holds (LRU, at most `renderCacheSize` keys). */
  #remember(feed: Feed, key: string, digest: string): void {
    if (this.#renderCacheSize === 0) return;
    feed.rendered.delete(key);
    feed.rendered.set(key, digest);
    if (feed.rendered.size > this.#renderCacheSize) feed.rendered.delete(feed.rendered.keys().next().value as string);
  }

  /**
   * Writes the projection of `key` for `peerId` from the shared resource's current version.
   * @returns The projection's Yjs update, or undefined when it did not change (or is not due).
   */
  #project(peerId: string, key: string): Uint8Array | undefined {
    const mapping = this.#opts.mapping();
    if (mapping === undefined || !this.typesFor(peerId).has(typeOf(key))) return undefined;
    const current = this.#opts.shared.current(key);
    if (current === undefined) return undefined;
    // the route, withheld labels and Consent decide on the SHARED resource
    if (!this.#opts.mayReceive(peerId, key)) return undefined;
    const feed = this.#feed(peerId);
    let result;
    let digest: string;
    if (current.deleted || current.body === null) {
      if (feed.rendered.get(key) === DELETED) return this.#skip(feed, key);
      const mine = feed.replica.current(key);
      if (mine === undefined || mine.deleted) {
        this.#remember(feed, key, DELETED);
        return undefined;
      }
      digest = DELETED;
      feed.rendered.delete(key); // forgotten until the write succeeded
      result = feed.replica.write(key, null);
    } else {
      const parsed = parseFhirJson(current.body);
      if (!isJsonObject(parsed)) return undefined;
      const { resource } = mapping.redact(peerId, parsed as FhirJsonObject);
      // labelled even when nothing was redacted: the peer must never forward a projection
      const labelled = withRedactedLabel(resource);
      digest = renderDigest(labelled);
      if (feed.rendered.get(key) === digest) return this.#skip(feed, key);
      feed.rendered.delete(key); // forgotten until the write succeeded
      result = feed.replica.write(key, labelled);
    }
    this.#writeFailures.delete(peerId);
    this.#remember(feed, key, digest);
    if (result.update === undefined) return undefined;
    this.#stats.written++;
    return result.update;
  }
}
