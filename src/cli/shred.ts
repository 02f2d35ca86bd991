/**
 * `tidegate shred Patient/ID --config FILE` and `tidegate keys rewrap --config FILE`: the store's
 * crypto-shredding and key re-wrapping from the command line (docs/storage.md).
 *
 * Both open the node's sealed store directly — the SQLite file, or PostgreSQL (`storeUrl`) with its
 * local key vault (`keyVaultFile`) — so the node must be stopped (its key vault is held exclusively
 * by a running node: the command then fails with `ERR_VAULT_IN_USE`, before touching the database).
 * `keys rewrap` of a PostgreSQL node changes only the vault file. A running node
 * is shredded through its admin route instead: `--node-url http://HOST:PORT` sends
 * `POST /admin/shred/Patient/ID`.
 *
 * A SQLite node with redacted peers also keeps projection stores next to its store file
 * (`<storeFile>.projection-<peer>.<epoch>.sqlite`, src/mapping/projection.ts, docs/mappings.md
 * "Projection stores"), sealed with the same keys: both commands reach every one of them (all peers,
 * all epochs), and {@link vaultsWrappedUnder} lets `keys retire` check all the vaults first.
 */
import { existsSync } from 'node:fs';
import { userInfo } from 'node:os';
import { basename } from 'node:path';
import { loadNodeConfig } from '../config/config.ts';
import { readSecretKeys } from '../envelope/keys.ts';
import { HospitalOutbox } from '../hospital/outbox.ts';
import { SqliteStore } from '../store/sqlite-store.ts';
import { PgStore } from '../store/pg-store.ts';
import { KeyVault, KeyVaultError } from '../store/vault.ts';
import type { RewrapResult } from '../store/vault.ts';
import { patientCompartmentKeys, scrubTideRedis, shredPatient } from '../store/shred.ts';
import type { ShredQueues, ShredReport } from '../store/shred.ts';
import { projectionStoreFiles } from '../mapping/projection.ts';
import type { NodeSecretKeys } from '../envelope/keys.ts';

/** Options of {@link runShred}. */
export interface ShredCliOptions {
  /** Node configuration file. */
  config: string;
  /** Shred through a running node's admin route at this base URL (`http://host:port`) instead. */
  nodeUrl?: string;
  /** Do not touch Redis (queued messages are then not dropped). */
  redis?: boolean;
  /** Environment for config overrides; tests only. */
  env?: NodeJS.ProcessEnv;
}

/** What an offline shred did in one projection store (counts only: no resource key, no content). */
export interface ProjectionShredCount {
  /** File name (`<storeFile>.projection-<peer>.<epoch>.sqlite`), without its folder. */
  file: string;
  peer: string;
  epoch: string;
  /** Projection documents shredded (rows deleted, tombstone kept). */
  shredded: number;
  /** Content keys destroyed in that file's key vault. */
  keysDestroyed: number;
}

/** Report of an offline {@link runShred}: the node store's report and one entry per projection store file. */
export interface OfflineShredReport extends ShredReport {
  projections: ProjectionShredCount[];
}

/**
 * Shreds `patientKey` on the node of a configuration (see module doc). Offline, every projection
 * store of the store file is opened first (a store that does not open stops the command before
 * anything changes), then the node's store is shredded, then in each projection store the same
 * keys plus the compartment found in that store (docs/storage.md "Crypto-shredding").
 * @param patientKey - `Patient/<id>`.
 * @param o - see {@link ShredCliOptions}.
 * @returns The report (offline, with `projections`) or the node's JSON answer (`--node-url`).
 * @throws Error when the config or keys are invalid, the store or a projection store is in use,
 *   unsealed or cannot be opened, Redis is unreachable (unless `redis: false`), or the node answers
 *   with an error.
 */
export async function runShred(patientKey: string, o: ShredCliOptions): Promise<OfflineShredReport | Record<string, unknown>> {
  if (o.nodeUrl !== undefined) {
    const m = /^Patient\/([A-Za-z0-9\-.]{1,64})$/.exec(patientKey);
    if (!m) throw new Error('Expected Patient/<id> (FHIR id: 1-64 of A-Z a-z 0-9 - .)');
    if (m[1] === '.' || m[1] === '..') throw new Error(`Patient/${m[1]} cannot be addressed in a URL (a dot segment): no resource can have that id here`);
    // A node with `auth` wants an operator token (scope tidegate/admin): TIDEGATE_ADMIN_TOKEN.
    const token = (o.env ?? process.env).TIDEGATE_ADMIN_TOKEN;
    const res = await fetch(new URL(`/admin/shred/Patient/${m[1]}`, o.nodeUrl), { method: 'POST', ...(token ? { headers: { Authorization: `Bearer ${token}` } } : {}) });
    const body = (await res.json()) as Record<string, unknown>;
    if (!res.ok) throw new Error(`Node answered ${res.status}: ${JSON.stringify(body)}`);
    return body;
  }
  const cfg = loadNodeConfig(o.config, o.env ?? process.env);
  if (cfg.storeUrl === undefined && (cfg.storeFile === undefined || cfg.storeFile === ':memory:')) throw new Error('The node has no store file (storeFile) or database (storeUrl): nothing is kept at rest to shred');
  const secretKeys = await readSecretKeys(cfg.secretKeyFile);
  if (secretKeys.nodeId !== cfg.nodeId) throw new Error(`Secret key file is for node ${secretKeys.nodeId}, config says ${cfg.nodeId}`);
  const store =
    cfg.storeUrl !== undefined
      ? await PgStore.open({ url: cfg.storeUrl, ...(cfg.storeSchema !== undefined ? { schema: cfg.storeSchema } : {}), secretKeys, ...(cfg.keyVaultFile !== undefined ? { keyVaultFile: cfg.keyVaultFile } : {}), compaction: 'manual' })
      : new SqliteStore(cfg.storeFile!, { secretKeys, compaction: 'manual' });
  let projections: OpenedProjection[] = [];
  try {
    // PostgreSQL nodes keep projection stores in memory: nothing at rest
    if (cfg.storeUrl === undefined) projections = openProjectionStores(cfg.storeFile!, secretKeys);
    const queues: ShredQueues = {};
    if (o.redis !== false) {
      const outbox = new HospitalOutbox(
        { upsert: async () => undefined, remove: async () => undefined },
        { nodeId: cfg.nodeId, redisUrl: cfg.redisUrl, prefix: cfg.queuePrefix, secret: secretKeys.kemSecretKey, previousSecrets: (secretKeys.additionalKemKeys ?? []).map((k) => k.secretKey) },
      );
      queues.outbox = (keys) => outbox.drop(keys);
      queues.tide = (keys) => scrubTideRedis({ redisUrl: cfg.redisUrl, prefix: cfg.queuePrefix, nodeId: cfg.nodeId }, keys);
    }
    let who = 'operator';
    try {
      who = userInfo().username;
    } catch {
      // no user name (container without passwd entry)
    }
    const report = await shredPatient(patientKey, { store, nodeId: cfg.nodeId, queues, requestor: `cli:${who}` });
    const counts: ProjectionShredCount[] = [];
    for (const p of projections) {
      // the keys shredded in the node's store, and the compartment as this projection holds it
      const keys = new Set([...report.shredded, ...report.tombstoned, ...(await patientCompartmentKeys(p.store, patientKey)).keys]);
      const held = [...keys].filter((k) => p.store.get(k) !== undefined);
      const r = held.length > 0 ? p.store.shred(held) : { shredded: [], keysDestroyed: 0 };
      counts.push({ file: basename(p.path), peer: p.peerId, epoch: p.epoch, shredded: r.shredded.length, keysDestroyed: r.keysDestroyed });
    }
    return { ...report, projections: counts };
  } finally {
    for (const p of projections) p.store.close();
    await store.close();
  }
}

/** A projection store file opened by an offline command. */
interface OpenedProjection {
  path: string;
  peerId: string;
  epoch: string;
  store: SqliteStore;
}

/**
 * Opens every projection store of `storeFile` (all or none: on an error the ones opened are closed).
 * @throws Error naming the file when one cannot be opened (KeyVaultError code in the message).
 */
function openProjectionStores(storeFile: string, secretKeys: NodeSecretKeys, opts: { autoRewrap?: boolean } = {}): OpenedProjection[] {
  const out: OpenedProjection[] = [];
  try {
    for (const f of projectionStoreFiles(storeFile)) {
      let store: SqliteStore;
      try {
        store = new SqliteStore(f.path, { secretKeys, compaction: 'manual', ...opts });
      } catch (err) {
        if (err instanceof KeyVaultError && err.code === 'ERR_VAULT_IN_USE') throw err;
        const code = (err as { code?: string }).code;
        throw new Error(
          `The projection store ${f.path} (peer ${f.peerId}) cannot be opened${code ? ` (${code})` : ''}: ${(err as Error).message}. Nothing was changed. ` +
            'Fix its keys, or move the file and its .keys away: the node then rebuilds that projection under a new epoch (docs/mappings.md "Projection stores").',
          { cause: err },
        );
      }
      out.push({ ...f, store });
    }
  } catch (err) {
    for (const p of out) p.store.close();
    throw err;
  }
  return out;
}

/** What {@link runRewrap} did in one projection store's key vault. */
export interface ProjectionRewrap extends RewrapResult {
  /** File name of the projection store (its vault: this + `.keys`), without its folder. */
  file: string;
  peer: string;
}

/** Result of {@link runRewrap}: the node store's vault, and every projection store's vault. */
export interface RewrapReport extends RewrapResult {
  /** One entry per projection store file (`keys` 0: already under the current key). */
  projections: ProjectionRewrap[];
}

/**
 * Re-wraps the store's content keys, and those of every projection store of a SQLite store file,
 * under the node's current X-Wing key (after `tidegate keys rotate`, before `tidegate keys retire`
 * of the old key). Payloads are not re-encrypted. Each vault is re-wrapped in its own transaction;
 * a failure leaves the vaults done so far re-wrapped, and a second run finishes the rest.
 * @param o.config - node configuration file.
 * @param o.force - re-wrap even when already under the current key (a new encapsulation).
 * @returns Generation and key id before and after, and how many keys were re-wrapped (0: nothing
 *   to do), for the node's store and per projection store.
 * @throws Error when a store is in use, unsealed, or wrapped under a key the key file lacks.
 */
export async function runRewrap(o: { config: string; force?: boolean; env?: NodeJS.ProcessEnv }): Promise<RewrapReport> {
  const cfg = loadNodeConfig(o.config, o.env ?? process.env);
  const secretKeys = await readSecretKeys(cfg.secretKeyFile);
  if (cfg.storeUrl !== undefined) {
    // PostgreSQL: the content keys are in the local vault file only; the database is not touched.
    if (!existsSync(cfg.keyVaultFile!)) throw new Error(`No key vault at ${cfg.keyVaultFile!} (keyVaultFile of the PostgreSQL store)`);
    const vault = new KeyVault(cfg.keyVaultFile!, { secretKeys, autoRewrap: false });
    try {
      return { ...rewrapVault(vault, secretKeys, o.force === true), projections: [] };
    } finally {
      vault.close();
    }
  }
  if (cfg.storeFile === undefined || cfg.storeFile === ':memory:') throw new Error('The node has no store file (storeFile) or database (storeUrl)');
  const store = new SqliteStore(cfg.storeFile, { secretKeys, compaction: 'manual', autoRewrap: false });
  let projections: OpenedProjection[] = [];
  try {
    projections = openProjectionStores(cfg.storeFile, secretKeys, { autoRewrap: false });
    const main = rewrapVault(store.keyVault!, secretKeys, o.force === true);
    const done: ProjectionRewrap[] = [];
    for (const p of projections) done.push({ file: basename(p.path), peer: p.peerId, ...rewrapVault(p.store.keyVault!, secretKeys, o.force === true) });
    return { ...main, projections: done };
  } finally {
    for (const p of projections) p.store.close();
    store.close();
  }
}

/** Re-wraps one vault unless it is already under the current X-Wing key (and `force` is false). */
function rewrapVault(vault: KeyVault, secretKeys: NodeSecretKeys, force: boolean): RewrapResult {
  const before = vault.generation;
  if (before.kid === secretKeys.kemKeyId && !force) return { from: before, to: before, keys: 0 };
  return vault.rewrap();
}

/**
 * The key vaults of a node configuration still wrapped under the X-Wing key `kid`: the store's
 * (`<storeFile>.keys`, or `keyVaultFile` of a PostgreSQL store) and every projection store's
 * (`<storeFile>.projection-<peer>.<epoch>.sqlite.keys`). `tidegate keys retire --config` refuses
 * to retire `kid` while this is not empty (a vault under a retired key never opens again).
 * Vault files that do not exist are skipped; each one is opened (so the node must be stopped).
 * @param kid - an X-Wing key id of the node's key file (22 base64url characters).
 * @param o.config - node configuration file; `o.env` for its overrides (tests).
 * @returns The vault file paths wrapped under `kid` (empty: safe to retire).
 * @throws KeyVaultError `ERR_VAULT_IN_USE` when a vault is held by a running node; Error when the
 *   config or key file is invalid or a vault is damaged.
 */
export async function vaultsWrappedUnder(kid: string, o: { config: string; env?: NodeJS.ProcessEnv }): Promise<string[]> {
  const cfg = loadNodeConfig(o.config, o.env ?? process.env);
  const secretKeys = await readSecretKeys(cfg.secretKeyFile);
  const files: string[] = [];
  if (cfg.storeUrl !== undefined) files.push(cfg.keyVaultFile!);
  else if (cfg.storeFile !== undefined && cfg.storeFile !== ':memory:') files.push(`${cfg.storeFile}.keys`, ...projectionStoreFiles(cfg.storeFile).map((f) => `${f.path}.keys`));
  const under: string[] = [];
  for (const file of files) {
    if (!existsSync(file)) continue;
    let vault: KeyVault;
    try {
      vault = new KeyVault(file, { secretKeys, autoRewrap: false });
    } catch (err) {
      // under a key the key file no longer holds: not under `kid`, which it still holds
      if (err instanceof KeyVaultError && err.code === 'ERR_VAULT_KEY_UNAVAILABLE') continue;
      throw err;
    }
    try {
      if (vault.generation.kid === kid) under.push(file);
    } finally {
      vault.close();
    }
  }
  return under;
}
