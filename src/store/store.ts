/**
 * The node's resource store: per resource, the Yjs document state and every version it rendered.
 *
 * This is the in-memory implementation. The interface is what a durable store (sealed at rest,
 * see the envelope issue) must provide.
 */

/** One version of a resource as this node rendered it. */
export interface VersionRecord {
  /** Deterministic version id (see merge/doc.ts `render`). */
  versionId: string;
  /** FHIR instant of the newest write in this version. */
  lastUpdated: string;
  /** True when this version is a deletion. */
  deleted: boolean;
  /** Canonical JSON of the resource with meta.versionId/lastUpdated, or null when deleted. */
  body: string | null;
  /** The whole Yjs document at this version (v1 update encoding). */
  state: Uint8Array;
}

/** A resource's stored state. */
export interface ResourceRecord {
  /** Current Yjs document (v1 update encoding, including any pending structs). */
  state: Uint8Array;
  /** Versions, oldest first. */
  versions: VersionRecord[];
  /** Remote updates held back until their dependencies arrive (v1 encoding), oldest first. */
  pending?: Uint8Array[];
}

/** Storage of resource records by key `Type/id`. Synchronous so merges never interleave. */
export interface ResourceStore {
  get(key: string): ResourceRecord | undefined;
  set(key: string, record: ResourceRecord): void;
  keys(): IterableIterator<string>;
  readonly size: number;
  /**
   * Durability barrier of a write-behind store (src/store/pg-store.ts): resolves once every `set`
   * made before the call is durable; rejects (code `ERR_STORE_UNAVAILABLE`) when one of them could
   * not be, after the store has rolled those records back. Nothing that depends on a write (HTTP
   * answer, gossip, hospital write) leaves the node before it resolves. Absent: `set` is durable
   * when it returns (MemoryStore: never durable; SqliteStore: after COMMIT).
   */
  durable?(): Promise<void>;
  /** With {@link durable}: true while `key` has a `set` that is not durable yet (anti-entropy skips it). */
  unsettled?(key: string): boolean;
  /**
   * True when `key` was crypto-shredded on this node (a tombstone is kept, docs/storage.md): `get`
   * answers undefined and `set` throws (410 at the FHIR edge); the node refuses peers' updates for it.
   * Absent: the store cannot shred.
   */
  isShredded?(key: string): boolean;
}

/** A {@link ResourceStore} in process memory. Lost on restart; peers restore it by anti-entropy. */
export class MemoryStore implements ResourceStore {
  private readonly records = new Map<string, ResourceRecord>();

  get(key: string): ResourceRecord | undefined {
    return this.records.get(key);
  }

  set(key: string, record: ResourceRecord): void {
    this.records.set(key, record);
  }

  keys(): IterableIterator<string> {
    return this.records.keys();
  }

  get size(): number {
    return this.records.size;
  }
}
