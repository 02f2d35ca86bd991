/**
 * The merge engine of one node: applies local writes and remote Yjs updates to resource documents,
 * renders versions, and answers the gossip layer's questions about state vectors.
 *
 * Every call is synchronous from load to store, so two merges of one resource never interleave.
 */
import * as Y from 'yjs';
import { canonicalStringify } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import type { ResourceRecord, ResourceStore, VersionRecord } from '../store/store.ts';
import { HybridLogicalClock } from './hlc.ts';
import { loadDoc, maxStampOf, readPaths, render, writeResource } from './doc.ts';
import type { ConflictRecord, Rendered } from './doc.ts';
import type { MergePolicy } from './policy.ts';

/** Raised when a write names a base version this node does not hold. */
export class UnknownVersionError extends Error {
  readonly code = 'ERR_UNKNOWN_VERSION';
  override readonly name = 'UnknownVersionError';
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
}

/** Most held-back updates kept per resource; older ones are dropped (anti-entropy resends them). */
const MAX_PENDING = 256;

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
  private readonly onVersion: ((key: string, version: VersionRecord) => void) | undefined;

  constructor(opts: ReplicaOptions) {
    this.nodeId = opts.nodeId;
    this.store = opts.store;
    this.policy = opts.policy;
    this.clock = opts.clock ?? new HybridLogicalClock();
    this.onVersion = opts.onVersion;
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

  /** All versions, newest first (FHIR `_history` order). */
  history(key: string): VersionRecord[] {
    return [...(this.store.get(key)?.versions ?? [])].reverse();
  }

  /** Conflict records of the current version of `key` (empty when none). */
  conflicts(key: string): ConflictRecord[] {
    const rec = this.store.get(key);
    return rec ? render(loadDoc(rec.state, this.nodeId)).conflicts : [];
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
    const doc = loadDoc(rec?.state, this.nodeId);
    const before = rec?.versions[rec.versions.length - 1];
    let basePaths = readPaths(doc);
    if (opts.baseVersionId !== undefined && opts.baseVersionId !== before?.versionId) {
      const base = rec?.versions.find((v) => v.versionId === opts.baseVersionId);
      if (!base) throw new UnknownVersionError(`Version ${opts.baseVersionId} of ${key} is not known to this node`);
      basePaths = readPaths(loadDoc(base.state, this.nodeId));
    }
    const sv = Y.encodeStateVector(doc);
    // After a restart the clock starts from the wall clock: move it past every stored stamp first.
    const stored = maxStampOf(doc);
    if (stored) this.clock.observe(stored);
    const ctx = { nodeId: this.nodeId, stamp: this.clock.now(), ...(opts.author ? { author: opts.author } : {}) };
    const written = writeResource(doc, basePaths, body, this.policy, ctx);
    const created = !before || before.deleted;
    if (written === 0 && before) return { version: before, created: false };
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
   */
  applyRemote(key: string, update: Uint8Array): VersionRecord | undefined {
    const rec = this.store.get(key);
    const doc = loadDoc(rec?.state, this.nodeId);
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
      return undefined;
    }
    return this.commit(key, doc, rec, pending);
  }

  /**
   * Stores the document and, when its rendered version is new, a version record. A document that
   * does not yet hold its resource's `resourceType` and `id` (its creating update has not arrived)
   * is stored without a version: nothing half-merged is ever shown or written to a hospital.
   */
  private commit(key: string, doc: Y.Doc, rec: ResourceRecord | undefined, pending: Uint8Array[] = rec?.pending ?? []): VersionRecord | undefined {
    const state = Y.encodeStateAsUpdate(doc);
    const r: Rendered = render(doc);
    const last = rec?.versions[rec.versions.length - 1];
    const [type, id] = splitKey(key);
    const complete = r.resource !== null && r.resource.resourceType === type && r.resource.id === id;
    if ((last && last.versionId === r.versionId) || (!complete && !r.deleted)) {
      this.store.set(key, withPending({ state, versions: rec?.versions ?? [] }, pending));
      return last && last.versionId === r.versionId ? last : undefined;
    }
    const version: VersionRecord = {
      versionId: r.versionId,
      lastUpdated: r.lastUpdated,
      deleted: r.deleted || r.resource === null,
      body: r.deleted || r.resource === null ? null : withMeta(r.resource, r.versionId, r.lastUpdated),
      state,
    };
    this.store.set(key, withPending({ state, versions: [...(rec?.versions ?? []), version] }, pending));
    this.onVersion?.(key, version);
    return version;
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
