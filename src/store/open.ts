/**
 * Opens the resource store a node configuration names (`storeFile` or `storeUrl`, src/config/config.ts).
 */
import { MemoryStore } from './store.ts';
import type { ResourceStore } from './store.ts';
import { SqliteStore } from './sqlite-store.ts';
import type { SqliteStoreOptions } from './sqlite-store.ts';
import { PgStore } from './pg-store.ts';
import type { PgStoreOptions } from './pg-store.ts';

/** The `storeFile` value that selects the in-memory store. */
export const MEMORY_STORE = ':memory:';

/** An opened store and how to close it. */
export interface OpenedStore {
  store: ResourceStore;
  /** `sqlite` for a file, `memory` for {@link MEMORY_STORE}, `postgres` for a `storeUrl`. */
  kind: 'sqlite' | 'memory' | 'postgres';
  /** Absolute file path, `:memory:`, or `host:port/db schema` (no credentials). */
  location: string;
  /** Closes the file or pool (no-op for memory); for PostgreSQL after queued writes are committed. Safe to call twice. */
  close(): void | Promise<void>;
}

/**
 * Opens a node's resource store.
 * @param storeFile - a SQLite file path (absolute, or relative to the working directory), or
 *   `:memory:` / undefined for a {@link MemoryStore} (lost on restart).
 * @param opts - options of the SQLite store (see {@link SqliteStoreOptions}).
 * @returns The store and its closer.
 * @throws Error when the file cannot be opened as a tidegate store (see {@link SqliteStore});
 *   KeyVaultError (src/store/vault.ts openBoundVault) for a sealed store whose vault is missing
 *   (`ERR_VAULT_MISSING`), another store's (`ERR_VAULT_MISMATCH`) or older than the data file
 *   (`ERR_VAULT_INCOMPLETE`): the message names both files and what to do.
 */
export function openStore(storeFile: string | undefined, opts: SqliteStoreOptions = {}): OpenedStore {
  if (storeFile === undefined || storeFile === MEMORY_STORE) {
    return { store: new MemoryStore(), kind: 'memory', location: MEMORY_STORE, close: () => {} };
  }
  const store = new SqliteStore(storeFile, opts);
  return { store, kind: 'sqlite', location: store.path, close: () => store.close() };
}

/**
 * Opens the store of a node configuration: PostgreSQL when `storeUrl` is set, else as
 * {@link openStore}.
 * @param cfg - `storeUrl` (+ `storeSchema`, `keyVaultFile`) or `storeFile` (see src/config/config.ts).
 * @param pgOpts - further options of the PostgreSQL store (see {@link PgStoreOptions}).
 * @param sqliteOpts - options of the SQLite store. Its `secretKeys` (which `tidegate serve` passes)
 *   seal either store at rest: the SQLite file with its vault at `<storeFile>.keys`, PostgreSQL with
 *   its vault at `cfg.keyVaultFile` (unless `pgOpts` gives its own `secretKeys`).
 * @returns The store and its closer.
 * @throws StoreUnavailableError when PostgreSQL is unreachable; StoreFormatError when its schema
 *   holds another store schema version or the other sealing; KeyVaultError when the vault is in use
 *   or cannot be opened with the keys, or is older than the schema (`ERR_VAULT_INCOMPLETE`); a missing
 *   `keyVaultFile` is a StoreFormatError saying so; Error/KeyVaultError as {@link openStore} for a file.
 */
export async function openConfiguredStore(
  cfg: { storeFile?: string | undefined; storeUrl?: string | undefined; storeSchema?: string | undefined; keyVaultFile?: string | undefined },
  pgOpts: Omit<PgStoreOptions, 'url' | 'schema'> = {},
  sqliteOpts: SqliteStoreOptions = {},
): Promise<OpenedStore> {
  if (cfg.storeUrl === undefined) return openStore(cfg.storeFile, sqliteOpts);
  const secretKeys = pgOpts.secretKeys ?? sqliteOpts.secretKeys;
  const keyVaultFile = pgOpts.keyVaultFile ?? cfg.keyVaultFile;
  const store = await PgStore.open({
    ...pgOpts,
    ...(secretKeys !== undefined ? { secretKeys } : {}),
    ...(keyVaultFile !== undefined ? { keyVaultFile } : {}),
    url: cfg.storeUrl,
    ...(cfg.storeSchema !== undefined ? { schema: cfg.storeSchema } : {}),
  });
  const u = new URL(cfg.storeUrl);
  return { store, kind: 'postgres', location: `${u.host}${u.pathname} schema ${store.schema}`, close: () => store.close() };
}
