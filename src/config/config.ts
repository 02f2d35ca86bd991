/**
 * Node configuration: a JSON file validated with zod, with environment overrides.
 * Documented in README.md ("Configuration"); example in config/node-a.example.json.
 */
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { z } from 'zod';

const NodeId = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'node ids are 1-64 of A-Z a-z 0-9 . _ - (starting alphanumeric)');
const RedisUrl = z.string().regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL');

/** Schema of a node configuration file. */
export const NodeConfigSchema = z.object({
  /** This node's id; also names its inbox queue. */
  nodeId: NodeId,
  /** Where the FHIR API listens. */
  listen: z.object({ host: z.string().default('127.0.0.1'), port: z.number().int().min(0).max(65535).default(8080) }).default({ host: '127.0.0.1', port: 8080 }),
  /** The hospital's own FHIR server base URL (merged resources are written there). */
  hospitalFhirUrl: z.url(),
  /** This node's Redis (its inbox). */
  redisUrl: RedisUrl.default('redis://127.0.0.1:6379'),
  /** BullMQ key prefix, without ':'. */
  queuePrefix: z.string().regex(/^[A-Za-z0-9_-]+$/).default('tidegate'),
  /** Path of this node's secret key file (from `tidegate keys generate`), relative to the config file. */
  secretKeyFile: z.string(),
  /** Peers: id, Redis URL of their inbox, and their public key file. */
  peers: z.array(z.object({ nodeId: NodeId, redisUrl: RedisUrl, publicKeyFile: z.string() })).default([]),
  /** Anti-entropy period, ms; 0 disables the scheduler. */
  antiEntropyIntervalMs: z.number().int().min(0).default(30000),
  /** Period of polling the hospital's `_history` for edits made directly on it, ms; 0 turns it off. */
  hospitalPollIntervalMs: z.number().int().min(0).default(5000),
  /** Resource types to pick up from the hospital (default all); required when the hospital has no system-level `_history`. */
  hospitalPollTypes: z.array(z.string().regex(/^[A-Z][A-Za-z]{1,63}$/, 'must be a FHIR resource type')).optional(),
  /** File for the poller's cursor, relative to the config file; default: in Redis (`<queuePrefix>:hospital-cursor:<nodeId>`). */
  hospitalCursorFile: z.string().optional(),
  /** Outbox retry delays while the hospital is down, ms: base and cap of the exponential backoff (with jitter). */
  hospitalRetryBaseMs: z.number().int().min(1).default(200),
  hospitalRetryMaxMs: z.number().int().min(1).default(30000),
  /** Merge-policy file (repeating-element keys), relative to the config file. */
  mergePolicyFile: z.string().optional(),
  /**
   * The node's resource store: a SQLite file (src/store/sqlite-store.ts), relative to the config file;
   * default `data/<nodeId>.sqlite`. `:memory:` keeps resources in memory only (lost on restart).
   */
  storeFile: z.string().min(1).optional(),
  /** pino log level. */
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});

/** A validated node configuration with file paths made absolute. */
export type NodeConfig = z.infer<typeof NodeConfigSchema>;

/**
 * Loads a node configuration file. `REDIS_URL` overrides `redisUrl`, `PORT` overrides `listen.port`,
 * `LOG_LEVEL` overrides `logLevel`.
 * @param path - JSON file path.
 * @param env - environment (injectable for tests).
 * @returns The configuration; key, policy, cursor and store paths resolved against the file's folder
 *   (`storeFile` is always set: `data/<nodeId>.sqlite` by default, or `:memory:`).
 * @throws Error listing every invalid field (`field.path: message`).
 */
export function loadNodeConfig(path: string, env: NodeJS.ProcessEnv = process.env): NodeConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new Error(`Cannot read config ${path}: ${(err as Error).message}`);
  }
  const parsed = NodeConfigSchema.safeParse(raw);
  if (!parsed.success) {
    throw new Error(`Invalid config ${path}: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  }
  const cfg = parsed.data;
  const dir = dirname(resolve(path));
  cfg.secretKeyFile = resolve(dir, cfg.secretKeyFile);
  for (const p of cfg.peers) p.publicKeyFile = resolve(dir, p.publicKeyFile);
  if (cfg.mergePolicyFile) cfg.mergePolicyFile = resolve(dir, cfg.mergePolicyFile);
  if (cfg.hospitalCursorFile) cfg.hospitalCursorFile = resolve(dir, cfg.hospitalCursorFile);
  cfg.storeFile = cfg.storeFile === ':memory:' ? cfg.storeFile : resolve(dir, cfg.storeFile ?? join('data', `${cfg.nodeId}.sqlite`));
  if (env.REDIS_URL) cfg.redisUrl = RedisUrl.parse(env.REDIS_URL);
  if (env.PORT) cfg.listen.port = z.coerce.number().int().min(0).max(65535).parse(env.PORT);
  if (env.LOG_LEVEL) cfg.logLevel = NodeConfigSchema.shape.logLevel.parse(env.LOG_LEVEL);
  if (cfg.peers.some((p) => p.nodeId === cfg.nodeId)) throw new Error(`Invalid config ${path}: peers must not include the node itself`);
  return cfg;
}
