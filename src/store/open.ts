/**
 * Opens the resource store a node configuration names (`storeFile`, src/config/config.ts).
 */
import { MemoryStore } from './store.ts';
import type { ResourceStore } from './store.ts';
import { SqliteStore } from './sqlite-store.ts';
import type { SqliteStoreOptions } from './sqlite-store.ts';

/** The `storeFile` value that selects the in-memory store. */
export const MEMORY_STORE = ':memory:';

/** An opened store and how to close it. */
export interface OpenedStore {
  store: ResourceStore;
  /** `sqlite` for a file, `memory` for {@link MEMORY_STORE}. */
  kind: 'sqlite' | 'memory';
  /** Absolute file path, or `:memory:`. */
  location: string;
  /** Closes the file (no-op for memory). Safe to call twice. */
  close(): void;
}

/**
 * Opens a node's resource store.
 * @param storeFile - a SQLite file path (absolute, or relative to the working directory), or
 *   `:memory:` / undefined for a {@link MemoryStore} (lost on restart).
 * @param opts - options of the SQLite store (see {@link SqliteStoreOptions}).
 * @returns The store and its closer.
 * @throws Error when the file cannot be opened as a tidegate store (see {@link SqliteStore}).
 */
export function openStore(storeFile: string | undefined, opts: SqliteStoreOptions = {}): OpenedStore {
  if (storeFile === undefined || storeFile === MEMORY_STORE) {
    return { store: new MemoryStore(), kind: 'memory', location: MEMORY_STORE, close: () => {} };
  }
  const store = new SqliteStore(storeFile, opts);
  return { store, kind: 'sqlite', location: store.path, close: () => store.close() };
}
