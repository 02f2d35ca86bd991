/**
 * The merge engine of one node: applies local writes and remote Yjs updates to resource documents,
 * renders versions, and answers the gossip layer's questions about state vectors.
 *
 * Every call is synchronous from load to store, so two merges of one resource never interleave.
 */
import * as Y from 'yjs';
import { canonicalStringify, isLosslessNumber } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import type { ResourceRecord, ResourceStore, VersionRecord } from '../store/store.ts';
import { HybridLogicalClock } from './hlc.ts';
import { loadDoc, maxStampOf, readPaths, render, resolveConflictAt, writeResource } from './doc.ts';
import type { ConflictRecord, Rendered } from './doc.ts';
import type { MergePolicy } from './policy.ts';
import { buildMergeProvenance, describeMerge, PROVENANCE_TYPE } from './provenance.ts';
import { checkUpdate, DEFAULT_MAX_CLOCK_SKEW_MS, RefusedUpdateError } from './skew.ts';
import type { SkewViolation } from './skew.ts';

/** Raised when a write names a base version this node does not hold. */
export class UnknownVersionError extends Error {
  readonly code = 'ERR_UNKNOWN_VERSION';
  override readonly name = 'UnknownVersionError';
}

/** Raised when a conflict resolution names a path without conflict record. */
export class NoConflictError extends Error {
  readonly code = 'ERR_NO_CONFLICT';
  override readonly name = 'NoConflictError';
}

/** Raised when a remote update is not a valid Yjs update. */
export class MalformedUpdateError extends Error {
  readonly code = 'ERR_MALFORMED_UPDATE';
  override readonly name = 'MalformedUpdateError';
}

/** Result of a local write. */
export interface LocalWriteResult {
  /** The version after the write (unchanged when the write changed nothing). */
  version: VersionRecord;
  /** True when the resource did not exist (or was deleted) before. */
  created: boolean;
  /** The Yjs update to gossip, or undefined when nothing changed. Bytes, v1 encoding. */
  update?: Uint8Array;
}

/** Options of {@link Replica}. */
export interface ReplicaOptions {
  nodeId: string;
  store: ResourceStore;
  policy: MergePolicy;
  clock?: HybridLogicalClock;
  /** Called after each new version (local or remote), e.g. to write it to the hospital server. */
  onVersion?: (key: string, version: VersionRecord) => void;
  /**
   * How many loaded Yjs documents to keep in memory (least recently used dropped first), so a
   * write or remote update does not decode the stored state again. A cached document is used only
   * while the store still returns the very state bytes it was saved as. Default 256; 0 = off.
   */
  docCacheSize?: number;
  /**
   * Largest future skew of a remote stamp's physical part against this node's wall clock, ms
   * (src/merge/skew.ts). Also the receive cap of the default clock. Default 300000 (5 minutes).
   */
  maxClockSkewMs?: number;
}

/** Most held-back updates kept per resource; older ones are dropped (anti-entropy resends them). */
const MAX_PENDING = 256;
/** Default number of loaded documents kept in memory ({@link ReplicaOptions.docCacheSize}). */
const DEFAULT_DOC_CACHE = 256;

function dedupe(updates: Uint8Array[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const u of updates) if (!out.some((o) => Buffer.compare(o, u) === 0)) out.push(u);
  return out;
}

function samePending(a: Uint8Array[] | undefined, b: Uint8Array[]): boolean {
  const x = a ?? [];
  return x.length === b.length && x.every((u, i) => Buffer.compare(u, b[i]!) === 0);
}

function withPending(rec: ResourceRecord, pending: Uint8Array[]): ResourceRecord {
  return pending.length > 0 ? { ...rec, pending } : rec;
}

function splitKey(key: string): [string, string] {
  const i = key.indexOf('/');
  return [key.slice(0, i), key.slice(i + 1)];
}

/** The node's merge engine. See module doc. */
export class Replica {
  readonly nodeId: string;
  private readonly store: ResourceStore;
  private readonly policy: MergePolicy;
  private readonly clock: HybridLogicalClock;
  private readonly maxClockSkewMs: number;
  /** Updates {@link checkRemote} just passed: {@link applyRemote} does not check them again. */
  private readonly checked = new WeakSet<Uint8Array>();
  private readonly onVersion: ((key: string, version: VersionRecord) => void) | undefined;
  /** Loaded documents by key, with the state bytes they were saved as (LRU: Map insertion order). */
  private readonly docs = new Map<string, { state: Uint8Array; doc: Y.Doc }>();
  private readonly docCacheSize: number;

  constructor(opts: ReplicaOptions) {
    this.nodeId = opts.nodeId;
    this.store = opts.store;
    this.policy = opts.policy;
    this.maxClockSkewMs = opts.maxClockSkewMs ?? DEFAULT_MAX_CLOCK_SKEW_MS;
    this.clock = opts.clock ?? new HybridLogicalClock(Date.now, { maxAheadMs: this.maxClockSkewMs });
    this.onVersion = opts.onVersion;
    this.docCacheSize = opts.docCacheSize ?? DEFAULT_DOC_CACHE;
  }

  /**
   * The document of a record: the cached one when the store still holds the bytes it was saved
   * as, else decoded from `rec.state`. The caller owns it until it calls {@link keep} or drops it
   * (it is taken out of the cache, so a failed write never leaves a half-written cached document).
   */
  private take(key: string, rec: ResourceRecord | undefined): Y.Doc {
    const hit = this.docs.get(key);
    if (hit) {
      this.docs.delete(key);
      if (rec && hit.state === rec.state) return hit.doc;
      hit.doc.destroy();
    }
    return loadDoc(rec?.state, this.nodeId);
  }

  /** Puts a document back into the cache as the one saved with `state`. */
  private keep(key: string, state: Uint8Array, doc: Y.Doc): void {
    if (this.docCacheSize <= 0) return;
    this.docs.set(key, { state, doc });
    if (this.docs.size > this.docCacheSize) {
      const oldest = this.docs.keys().next().value as string;
      this.docs.get(oldest)?.doc.destroy();
      this.docs.delete(oldest);
    }
  }

  /** The current version of `Type/id`, or undefined when never written here. */
  current(key: string): VersionRecord | undefined {
    const rec = this.store.get(key);
    return rec?.versions[rec.versions.length - 1];
  }

  /** Keys that have at least one version (documents still waiting for their create are left out). */
  *resourceKeys(): IterableIterator<string> {
    for (const key of this.store.keys()) if (this.current(key)) yield key;
  }

  /** A specific version, or undefined. */
  version(key: string, versionId: string): VersionRecord | undefined {
    return this.store.get(key)?.versions.find((v) => v.versionId === versionId);
  }

  /**
   * The store's crypto-shredding tombstone test (`ResourceStore.isShredded`, src/store/store.ts),
   * given `Type/id`; undefined when the store cannot shred.
   */
  get isShredded(): ((key: string) => boolean) | undefined {
    const store = this.store;
    return store.isShredded === undefined ? undefined : (key) => store.isShredded!(key);
  }

  /** All versions, newest first (FHIR `_history` order). */
  history(key: string): VersionRecord[] {
    return [...(this.store.get(key)?.versions ?? [])].reverse();
  }

  /** Conflict records of the current version of `key` (empty when none). */
  conflicts(key: string): ConflictRecord[] {
    const rec = this.store.get(key);
    if (!rec) return [];
    const doc = this.take(key, rec);
    const conflicts = render(doc, this.policy).conflicts;
    this.keep(key, rec.state, doc);
    return conflicts;
  }

  /**
   * Writes a resource body (or deletes it) as a diff against the version the client edited.
   *
   * @param key - `Type/id`.
   * @param body - new resource JSON (id and resourceType already checked), or null to delete.
   * @param opts.baseVersionId - the version the client edited (If-Match or meta.versionId); the
   *   current version when absent.
   * @param opts.author - who wrote it, kept in the entries for conflict records.
   * @returns The resulting version, whether it was a create, and the Yjs update to gossip.
   * @throws {@link UnknownVersionError} when `baseVersionId` is not a version of this resource.
   */
  write(key: string, body: FhirJsonObject | null, opts: { baseVersionId?: string; author?: string } = {}): LocalWriteResult {
    const [type, id] = splitKey(key);
    if (body && (body.resourceType !== type || body.id !== id)) throw new TypeError(`Body resourceType/id do not match ${key}`);
    const rec = this.store.get(key);
    const doc = this.take(key, rec);
    const before = rec?.versions[rec.versions.length - 1];
    let basePaths = readPaths(doc, this.policy);
    if (opts.baseVersionId !== undefined && opts.baseVersionId !== before?.versionId) {
      const base = rec?.versions.find((v) => v.versionId === opts.baseVersionId);
      if (!base) throw new UnknownVersionError(`Version ${opts.baseVersionId} of ${key} is not known to this node`);
      basePaths = readPaths(loadDoc(base.state, this.nodeId), this.policy);
    }
    const sv = Y.encodeStateVector(doc);
    // After a restart the clock starts from the wall clock: move it past every stored stamp first.
    const stored = maxStampOf(doc);
    if (stored) this.clock.observe(stored);
    const ctx = { nodeId: this.nodeId, stamp: this.clock.now(), ...(opts.author ? { author: opts.author } : {}) };
    const written = writeResource(doc, basePaths, body, this.policy, ctx);
    const created = !before || before.deleted;
    if (written === 0 && before) {
      if (rec) this.keep(key, rec.state, doc);
      return { version: before, created: false };
    }
    const update = Y.encodeStateAsUpdate(doc, sv);
    const version = this.commit(key, doc, rec);
    if (!version) throw new Error(`Write to ${key} left the resource incomplete`);
    return { version, created, update };
  }

  /**
   * Applies a Yjs update from another node. Idempotent: an update already held changes nothing.
   * @param key - `Type/id`.
   * @param update - Yjs update bytes (v1).
   * @returns The new version, or undefined when nothing visible changed.
   * @throws {@link MalformedUpdateError} when the bytes are not a Yjs update.
   * @throws {@link RefusedUpdateError} when the update fails the skew check (src/merge/skew.ts);
   *   nothing of it is applied.
   */
  applyRemote(key: string, update: Uint8Array): VersionRecord | undefined {
    const rec = this.store.get(key);
    const doc = this.take(key, rec);
    let refused: SkewViolation | undefined;
    try {
      if (!this.checked.delete(update)) refused = checkUpdate(update, { nowMs: this.clock.wallNow(), maxSkewMs: this.maxClockSkewMs, doc });
    } catch (err) {
      if (rec) this.keep(key, rec.state, doc);
      throw new MalformedUpdateError(`Update for ${key} is not a valid Yjs update: ${(err as Error).message}`);
    }
    if (refused) {
      if (rec) this.keep(key, rec.state, doc);
      throw new RefusedUpdateError(key, refused);
    }
    const before = Y.encodeStateVector(doc);
    // An update whose dependencies have not arrived is held back whole. Handing it to Yjs early
    // would apply its delete set at once while its new entries wait, so values would vanish until
    // the missing update came (Yjs "pending structs"). Held updates are retried on every apply.
    const queue = [...(rec?.pending ?? []), update];
    let progress = true;
    while (progress) {
      progress = false;
      for (let i = 0; i < queue.length; i++) {
        const u = queue[i]!;
        let from: Map<number, number>;
        let to: Map<number, number>;
        try {
          ({ from, to } = Y.parseUpdateMeta(u));
        } catch (err) {
          if (u === update) throw new MalformedUpdateError(`Update for ${key} is not a valid Yjs update: ${(err as Error).message}`);
          queue.splice(i--, 1);
          continue;
        }
        const local = Y.decodeStateVector(Y.encodeStateVector(doc));
        if (![...from].every(([client, clock]) => (local.get(client) ?? 0) >= clock)) continue;
        const covered = [...to].every(([client, clock]) => (local.get(client) ?? 0) >= clock);
        if (!covered || from.size === 0) {
          try {
            Y.applyUpdate(doc, u, 'remote');
          } catch (err) {
            throw new MalformedUpdateError(`Update for ${key} could not be applied: ${(err as Error).message}`);
          }
          progress = progress || !covered;
        }
        queue.splice(i--, 1);
      }
    }
    const pending = dedupe(queue).slice(-MAX_PENDING);
    const stamp = maxStampOf(doc);
    if (stamp) this.clock.observe(stamp);
    const after = Y.encodeStateVector(doc);
    if (Buffer.compare(before, after) === 0 && rec) {
      if (!samePending(rec.pending, pending)) this.store.set(key, withPending({ state: rec.state, versions: rec.versions }, pending));
      this.keep(key, rec.state, doc);
      return undefined;
    }
    return this.commit(key, doc, rec, pending);
  }

  /**
   * The skew check of a remote update against the current document of `key`, without applying it
   * (src/merge/skew.ts): stamps more than `maxClockSkewMs` ahead of this node's wall clock, or log
   * elements whose writer is not the log's node.
   * @param key - `Type/id`.
   * @param update - Yjs update bytes (v1).
   * A passed update (the very `Uint8Array`) is not checked again by the next {@link applyRemote}
   * of it, so a caller checking a whole message first pays the check once.
   * @returns The violation, or undefined when {@link applyRemote} would accept the update.
   * @throws {@link MalformedUpdateError} when the bytes are not a Yjs update.
   */
  checkRemote(key: string, update: Uint8Array): SkewViolation | undefined {
    const rec = this.store.get(key);
    const doc = rec ? this.take(key, rec) : undefined;
    try {
      const refused = checkUpdate(update, { nowMs: this.clock.wallNow(), maxSkewMs: this.maxClockSkewMs, ...(doc ? { doc } : {}) });
      if (!refused) this.checked.add(update);
      return refused;
    } catch (err) {
      throw new MalformedUpdateError(`Update for ${key} is not a valid Yjs update: ${(err as Error).message}`);
    } finally {
      if (rec && doc) this.keep(key, rec.state, doc);
    }
  }

  /**
   * Stores the document and, when its rendered version is new, a version record. A document that
   * does not yet hold its resource's `resourceType` and `id` (its creating update has not arrived)
   * is stored without a version: nothing half-merged is ever shown or written to a hospital.
   */
  private commit(key: string, doc: Y.Doc, rec: ResourceRecord | undefined, pending: Uint8Array[] = rec?.pending ?? []): VersionRecord | undefined {
    const state = Y.encodeStateAsUpdate(doc);
    const r: Rendered = render(doc, this.policy);
    const last = rec?.versions[rec.versions.length - 1];
    const [type, id] = splitKey(key);
    const complete = r.resource !== null && r.resource.resourceType === type && r.resource.id === id;
    if ((last && last.versionId === r.versionId) || (!complete && !r.deleted)) {
      this.store.set(key, withPending({ state, versions: rec?.versions ?? [] }, pending));
      this.keep(key, state, doc);
      return last && last.versionId === r.versionId ? last : undefined;
    }
    const version: VersionRecord = {
      versionId: r.versionId,
      lastUpdated: r.lastUpdated,
      deleted: r.deleted || r.resource === null,
      body: r.deleted || r.resource === null ? null : renderedBody(r.resource, r.versionId, r.lastUpdated),
      state,
    };
    this.store.set(key, withPending({ state, versions: [...(rec?.versions ?? []), version] }, pending));
    this.keep(key, state, doc);
    this.onVersion?.(key, version);
    return version;
  }

  /**
   * Resolves the conflict records at one element path (the merge side of
   * `POST [type]/[id]/$resolve-conflict`): a local write at `path` by a writer who has seen every
   * entry there. See `resolveConflictAt` in doc.ts for what `value` means.
   * @param key - `Type/id`.
   * @param path - a conflict record's `path` (from {@link conflicts}).
   * @param opts.value - canonical JSON text of the value to keep, null to remove the element, or
   *   undefined to keep what is rendered now.
   * @param opts.author - who resolved it.
   * @returns The new version and the Yjs update to gossip.
   * @throws {@link NoConflictError} when `key` has no conflict record at `path`.
   */
  resolveConflict(key: string, path: string, opts: { value?: string | null; author?: string } = {}): LocalWriteResult {
    const rec = this.store.get(key);
    if (!rec) throw new NoConflictError(`${key} has no conflict record at ${path}`);
    const doc = this.take(key, rec);
    const sv = Y.encodeStateVector(doc);
    const stored = maxStampOf(doc);
    if (stored) this.clock.observe(stored);
    const ctx = { nodeId: this.nodeId, stamp: this.clock.now(), ...(opts.author ? { author: opts.author } : {}) };
    const written = resolveConflictAt(doc, path, opts.value, this.policy, ctx);
    if (written === 0) {
      this.keep(key, rec.state, doc);
      throw new NoConflictError(`${key} has no conflict record at ${path}`);
    }
    const update = Y.encodeStateAsUpdate(doc, sv);
    const version = this.commit(key, doc, rec);
    if (!version) throw new Error(`Resolving ${path} of ${key} left the resource incomplete`);
    return { version, created: false, update };
  }

  /**
   * The Provenance of the current version of `key` when that version merges concurrent writes
   * (see src/merge/provenance.ts), built from the document alone: identical on every replica.
   * @param key - `Type/id`.
   * @returns The Provenance resource (FHIR JSON, without meta), or undefined when the current
   *   version is not a merge of concurrent writes, the resource is unknown, or is a Provenance.
   */
  mergeProvenance(key: string): FhirJsonObject | undefined {
    const rec = this.store.get(key);
    const current = rec?.versions[rec.versions.length - 1];
    if (!rec || !current) return undefined;
    const doc = this.take(key, rec);
    try {
      const merge = describeMerge(key, doc);
      if (!merge || merge.versionId !== current.versionId) return undefined;
      return buildMergeProvenance(merge, current.lastUpdated);
    } finally {
      this.keep(key, rec.state, doc);
    }
  }

  /**
   * Writes the merge Provenance of the current version of `key` (see {@link mergeProvenance}) as a
   * local write, unless this replica already holds a Provenance with that id (written here before,
   * or by another replica that merged the same writes: same id, same content).
   * Call it after {@link applyRemote} returned a new version.
   * @param key - `Type/id` of the merged resource.
   * @returns The Provenance key and the Yjs update to gossip, or undefined when nothing was written.
   */
  recordMergeProvenance(key: string): { key: string; update: Uint8Array } | undefined {
    const provenance = this.mergeProvenance(key);
    if (!provenance) return undefined;
    const pkey = `${PROVENANCE_TYPE}/${String(provenance.id)}`;
    if (this.store.get(pkey)) return undefined;
    const res = this.write(pkey, provenance);
    return res.update ? { key: pkey, update: res.update } : undefined;
  }

  // ---- questions asked by the gossip layer (src/tide) ----

  /** Every resource key held. */
  keys(): IterableIterator<string> {
    return this.store.keys();
  }

  /** Y.encodeStateVector of a resource document, or undefined when not held. */
  stateVector(key: string): Uint8Array | undefined {
    const rec = this.store.get(key);
    return rec ? Y.encodeStateVectorFromUpdate(rec.state) : undefined;
  }

  /**
   * The Yjs update a holder of `remoteStateVector` lacks for `key` (https://docs.yjs.dev/api/document-updates).
   * @returns Update bytes, or undefined when the remote lacks nothing.
   */
  diffFor(key: string, remoteStateVector: Uint8Array | undefined): Uint8Array | undefined {
    const rec = this.store.get(key);
    if (!rec) return undefined;
    if (!remoteStateVector) return rec.state;
    // Deletions in a resource document always come with an insertion by the same client in the same
    // transaction (a node overwriting its own slot), so a state vector that covers ours lacks nothing.
    const local = Y.decodeStateVector(Y.encodeStateVectorFromUpdate(rec.state));
    const remote = Y.decodeStateVector(remoteStateVector);
    let lacks = false;
    for (const [client, clock] of local) if ((remote.get(client) ?? 0) < clock) lacks = true;
    return lacks ? Y.diffUpdate(rec.state, remoteStateVector) : undefined;
  }

  /** Splits a key into resource type and id. */
  static splitKey = splitKey;
}

/**
 * Canonical JSON of a resource with server-managed meta set.
 * @param resource - merged resource without versionId/lastUpdated.
 */
export function withMeta(resource: FhirJsonObject, versionId: string, lastUpdated: string): string {
  const meta = { ...((resource.meta as FhirJsonObject | undefined) ?? {}), versionId, lastUpdated };
  return canonicalStringify({ ...resource, meta });
}

/** Canonical text of rendered element values; render reuses unchanged values, so their text is reused too. */
const valueText = new WeakMap<object, string>();

function rank(k: string): number {
  return k === 'resourceType' ? 0 : k === 'id' ? 1 : k === 'meta' ? 2 : 3;
}

/**
 * {@link withMeta} of a resource returned by `render`: the same text, with the canonical text of
 * each top-level element value cached by object (render shares unchanged element values between
 * versions and never mutates them). Key order as `canonicalStringify` (docs/merge.md).
 */
function renderedBody(resource: FhirJsonObject, versionId: string, lastUpdated: string): string {
  const meta = { ...((resource.meta as FhirJsonObject | undefined) ?? {}), versionId, lastUpdated };
  const keys = Object.keys(resource).filter((k) => k !== 'meta' && resource[k] !== undefined);
  keys.push('meta');
  keys.sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
  const parts = keys.map((k) => {
    if (k === 'meta') return `"meta":${canonicalStringify(meta)}`;
    const v = resource[k]!;
    if (typeof v !== 'object' || v === null || isLosslessNumber(v)) return `${JSON.stringify(k)}:${canonicalStringify(v)}`;
    let text = valueText.get(v);
    if (text === undefined) valueText.set(v, (text = canonicalStringify(v)));
    return `${JSON.stringify(k)}:${text}`;
  });
  return `{${parts.join(',')}}`;
}
