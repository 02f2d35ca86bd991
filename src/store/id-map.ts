/**
 * The hospital id map (node `Type/id` ↔ hospital `Type/id`, src/hospital/client.ts
 * `HospitalIdMap`) kept in the node's SQLite store: persistent across restarts, and sealed like the
 * rest of the store — each pairing is sealed under the content key of its node resource (so
 * shredding a resource erases its pairing), and both sides are filed under HMAC tags.
 */
import type { HospitalIdMap } from '../hospital/client.ts';
import type { SqliteStore } from './sqlite-store.ts';

/** A {@link HospitalIdMap} in a {@link SqliteStore} (see module doc). Synchronous; one transaction per `set`. */
export class StoreIdMap implements HospitalIdMap {
  readonly #store: SqliteStore;

  /** @param store - the node's store (sealed in production). */
  constructor(store: SqliteStore) {
    this.#store = store;
  }

  /**
   * Hospital `Type/id` of node `nodeRef`, or undefined when unmapped (same id on both sides).
   * @throws SealedRecordError / KeyVaultError when the stored pairing cannot be opened.
   */
  toHospital(nodeRef: string): string | undefined {
    return this.#store.idMapToHospital(nodeRef);
  }

  /** Node `Type/id` of hospital `hospitalRef`, or undefined when unmapped. */
  toNode(hospitalRef: string): string | undefined {
    return this.#store.idMapToNode(hospitalRef);
  }

  /**
   * Pairs them (replacing any previous pairing of either side).
   * @throws ResourceShreddedError when `nodeRef` was shredded on this node.
   */
  set(nodeRef: string, hospitalRef: string): void {
    this.#store.idMapSet(nodeRef, hospitalRef);
  }

  /** Forgets the pairing of `nodeRef`, if any. */
  delete(nodeRef: string): void {
    this.#store.idMapDelete(nodeRef);
  }
}
