/**
 * `tidegate shred Patient/ID --config FILE` and `tidegate keys rewrap --config FILE`: the store's
 * crypto-shredding and key re-wrapping from the command line (docs/storage.md).
 *
 * Both open the node's sealed store directly, so the node must be stopped (its key vault is held
 * exclusively by a running node: the command then fails with `ERR_VAULT_IN_USE`). A running node
 * is shredded through its admin route instead: `--node-url http://HOST:PORT` sends
 * `POST /admin/shred/Patient/ID`.
 */
import { userInfo } from 'node:os';
import { loadNodeConfig } from '../config/config.ts';
import { readSecretKeys } from '../envelope/keys.ts';
import { HospitalOutbox } from '../hospital/outbox.ts';
import { SqliteStore } from '../store/sqlite-store.ts';
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
    const res = await fetch(new URL(`/admin/shred/Patient/${m[1]}`, o.nodeUrl), { method: 'POST' });
    const body = (await res.json()) as Record<string, unknown>;
    if (!res.ok) throw new Error(`Node answered ${res.status}: ${JSON.stringify(body)}`);
    return body;
  }
  const cfg = loadNodeConfig(o.config, o.env ?? process.env);
  if (cfg.storeFile === undefined || cfg.storeFile === ':memory:') throw new Error('The node has no store file (storeFile): nothing is kept at rest to shred');
  const secretKeys = await readSecretKeys(cfg.secretKeyFile);
  if (secretKeys.nodeId !== cfg.nodeId) throw new Error(`Secret key file is for node ${secretKeys.nodeId}, config says ${cfg.nodeId}`);
  const store = new SqliteStore(cfg.storeFile, { secretKeys, compaction: 'manual' });
  try {
    const queues: ShredQueues = {};
    if (o.redis !== false) {
      const outbox = new HospitalOutbox(
        { upsert: async () => undefined, remove: async () => undefined },
        { nodeId: cfg.nodeId, redisUrl: cfg.redisUrl, prefix: cfg.queuePrefix, secret: secretKeys.kemSecretKey },
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
    store.close();
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
  if (cfg.storeFile === undefined || cfg.storeFile === ':memory:') throw new Error('The node has no store file (storeFile)');
  const secretKeys = await readSecretKeys(cfg.secretKeyFile);
  const store = new SqliteStore(cfg.storeFile, { secretKeys, compaction: 'manual', autoRewrap: false });
  try {
    const before = store.keyVault!.generation;
    if (before.kid === secretKeys.kemKeyId && o.force !== true) return { from: before, to: before, keys: 0 };
    return store.rewrap();
  } finally {
    store.close();
  }
}
