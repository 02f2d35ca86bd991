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
 */
import { existsSync } from 'node:fs';
import { userInfo } from 'node:os';
import { loadNodeConfig } from '../config/config.ts';
import { readSecretKeys } from '../envelope/keys.ts';
import { HospitalOutbox } from '../hospital/outbox.ts';
import { SqliteStore } from '../store/sqlite-store.ts';
import { PgStore } from '../store/pg-store.ts';
import { KeyVault } from '../store/vault.ts';
import { scrubTideRedis, shredPatient } from '../store/shred.ts';
import type { ShredQueues, ShredReport } from '../store/shred.ts';

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

/**
 * Shreds `patientKey` on the node of a configuration (see module doc).
 * @param patientKey - `Patient/<id>`.
 * @param o - see {@link ShredCliOptions}.
 * @returns The report (offline) or the node's JSON answer (`--node-url`).
 * @throws Error when the config or keys are invalid, the store is in use or unsealed, Redis is
 *   unreachable (unless `redis: false`), or the node answers with an error.
 */
export async function runShred(patientKey: string, o: ShredCliOptions): Promise<ShredReport | Record<string, unknown>> {
  if (o.nodeUrl !== undefined) {
    const m = /^Patient\/([A-Za-z0-9\-.]{1,64})$/.exec(patientKey);
    if (!m) throw new Error('Expected Patient/<id> (FHIR id: 1-64 of A-Z a-z 0-9 - .)');
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
  try {
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
    return await shredPatient(patientKey, { store, nodeId: cfg.nodeId, queues, requestor: `cli:${who}` });
  } finally {
    await store.close();
  }
}

/**
 * Re-wraps the store's content keys under the node's current X-Wing key (after `tidegate keys
 * rotate`, before `tidegate keys retire` of the old key). Payloads are not re-encrypted.
 * @param o.config - node configuration file.
 * @param o.force - re-wrap even when already under the current key (a new encapsulation).
 * @returns Generation and key id before and after, and how many keys were re-wrapped (0: nothing to do).
 * @throws Error when the store is in use, unsealed, or wrapped under a key the key file lacks.
 */
export async function runRewrap(o: { config: string; force?: boolean; env?: NodeJS.ProcessEnv }): Promise<{ from: { gen: number; kid: string }; to: { gen: number; kid: string }; keys: number }> {
  const cfg = loadNodeConfig(o.config, o.env ?? process.env);
  const secretKeys = await readSecretKeys(cfg.secretKeyFile);
  if (cfg.storeUrl !== undefined) {
    // PostgreSQL: the content keys are in the local vault file only; the database is not touched.
    if (!existsSync(cfg.keyVaultFile!)) throw new Error(`No key vault at ${cfg.keyVaultFile!} (keyVaultFile of the PostgreSQL store)`);
    const vault = new KeyVault(cfg.keyVaultFile!, { secretKeys, autoRewrap: false });
    try {
      const before = vault.generation;
      if (before.kid === secretKeys.kemKeyId && o.force !== true) return { from: before, to: before, keys: 0 };
      return vault.rewrap();
    } finally {
      vault.close();
    }
  }
  if (cfg.storeFile === undefined || cfg.storeFile === ':memory:') throw new Error('The node has no store file (storeFile) or database (storeUrl)');
  const store = new SqliteStore(cfg.storeFile, { secretKeys, compaction: 'manual', autoRewrap: false });
  try {
    const before = store.keyVault!.generation;
    if (before.kid === secretKeys.kemKeyId && o.force !== true) return { from: before, to: before, keys: 0 };
    return store.rewrap();
  } finally {
    store.close();
  }
}
