/**
 * Node configuration: a JSON file validated with zod, with environment overrides.
 * Documented in README.md ("Configuration"); example in config/node-a.example.json.
 */
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { z } from 'zod';
import { AuthConfigSchema } from '../auth/config.ts';
import { SecurityConfigSchema } from '../security/config.ts';
import { parseLabelRule } from '../tide/peer-authz.ts';

const NodeId = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'node ids are 1-64 of A-Z a-z 0-9 . _ - (starting alphanumeric)');
const RedisUrl = z.string().regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL');
/** TLS of `rediss://` connections to peers' Redis (src/transport/tls.ts): the pinned CA, and an optional client certificate. */
const RedisTlsSchema = z.strictObject({ caFile: z.string().min(1), certFile: z.string().min(1).optional(), keyFile: z.string().min(1).optional() });
const PositiveInt = z.number().int().min(1);
/** Hostile-input limits, timeouts and rate limit of the HTTP edge (src/fhir/hardening.ts, docs/security.md "Hostile input"). */
const HttpHardeningSchema = z
  .strictObject({
    /** Most request-body bytes (after Content-Encoding); more is 413. */
    maxBodyBytes: PositiveInt.default(16 * 1024 * 1024),
    /** Most nested JSON objects/arrays in a body. */
    maxJsonDepth: PositiveInt.default(64),
    /** Most items of one JSON array, at any depth. */
    maxArrayItems: PositiveInt.default(100_000),
    /** Longest JSON string, UTF-16 code units. */
    maxStringLength: PositiveInt.default(4 * 1024 * 1024),
    /** Time to receive a request's headers, ms (408 after). */
    headersTimeoutMs: PositiveInt.default(20_000),
    /** Time to receive a whole request, headers and body, ms (408 after). */
    requestTimeoutMs: PositiveInt.default(120_000),
    /** Idle time of a kept-alive connection, ms. */
    keepAliveTimeoutMs: PositiveInt.default(5_000),
    /** Per-client rate limit of /fhir and /auth (429); `false` turns it off. */
    rateLimit: z
      .union([z.literal(false), z.strictObject({ windowMs: PositiveInt.default(60_000), limit: PositiveInt.default(6_000), failedAuthLimit: PositiveInt.default(100) })])
      .default({ windowMs: 60_000, limit: 6_000, failedAuthLimit: 100 }),
    /** Proxies trusted for X-Forwarded-Proto/-Host/-For (src/fhir/base-url.ts): false, true, a hop count, or addresses/CIDRs/loopback|linklocal|uniquelocal. */
    trustProxy: z.union([z.boolean(), z.number().int().min(1).max(64), z.array(z.union([z.enum(['loopback', 'linklocal', 'uniquelocal']), z.ipv4(), z.ipv6(), z.cidrv4(), z.cidrv6()])).min(1)]).default(false),
    /** The FHIR base clients reach the node at (links use it, whatever the request says), e.g. "https://fhir.example.org/fhir". */
    publicBaseUrl: z.url({ protocol: /^https?$/ }).refine((u) => !/[?#]/.test(u), 'must not have a query or a fragment').refine((u) => !/^[a-z]+:\/\/[^/]*@/i.test(u), 'must not carry credentials (user:password@)').optional(),
  })
  .refine((h) => h.headersTimeoutMs <= h.requestTimeoutMs, { message: 'headersTimeoutMs must not exceed requestTimeoutMs', path: ['headersTimeoutMs'] });

/** Schema of a node configuration file. */
export const NodeConfigSchema = z.strictObject({
  /** This node's id; also names its inbox queue. */
  nodeId: NodeId,
  /** Where the FHIR API listens. */
  listen: z.strictObject({ host: z.string().default('127.0.0.1'), port: z.number().int().min(0).max(65535).default(8080) }).default({ host: '127.0.0.1', port: 8080 }),
  /** The hospital's own FHIR server base URL (merged resources are written there). */
  hospitalFhirUrl: z.url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL with a host, e.g. "http://127.0.0.1:8201/fhir" (the scheme is required)' }),
  /** This node's Redis (its inbox). */
  redisUrl: RedisUrl.default('redis://127.0.0.1:6379'),
  /**
   * BullMQ key prefix, without ':'. May hold one Redis Cluster hash tag, e.g. `{tide}`, so that all
   * of a queue's keys hash to one slot (docs/tide.md, "Sizing and running Redis").
   */
  queuePrefix: z
    .string()
    .regex(/^(?:[A-Za-z0-9_-]*\{[A-Za-z0-9_-]+\}[A-Za-z0-9_-]*|[A-Za-z0-9_-]+)$/, 'letters, digits, _ and -, optionally one {hash tag}')
    .default('tidegate'),
  /** Path of this node's secret key file (from `tidegate keys generate`), relative to the config file. */
  secretKeyFile: z.string(),
  /**
   * Peers: id, Redis URL of their inbox, their public key file, and optionally the FHIR resource
   * types they subscribe to (default all): fanout, relay and anti-entropy send them only these.
   */
  peers: z
    .array(
      z.strictObject({
        nodeId: NodeId,
        redisUrl: RedisUrl,
        publicKeyFile: z.string(),
        /** TLS of this peer's `rediss://` Redis (pinned CA); overrides the top-level `redisTls`. */
        redisTls: RedisTlsSchema.optional(),
        resourceTypes: z.array(z.string().regex(/^[A-Z][A-Za-z]{0,63}$/, 'must be a FHIR resource type')).min(1).optional(),
        /** Peer authorization: types the peer may send this node (default all); `resourceTypes` is what it may receive. */
        maySend: z.array(z.string().regex(/^[A-Z][A-Za-z]{0,63}$/, 'must be a FHIR resource type')).optional(),
        /** `meta.security` labels the peer must never receive: `system|code` or a bare `code` (docs/security.md "Peer authorization"). */
        withheldLabels: z
          .array(
            z.string().refine((l) => {
              try {
                parseLabelRule(l);
                return true;
              } catch {
                return false;
              }
            }, 'must be "system|code" or "code"'),
          )
          .optional(),
      }),
    )
    .default([]),
  /** Anti-entropy period, ms; 0 disables the scheduler. */
  antiEntropyIntervalMs: z.number().int().min(0).default(30000),
  /** Largest future skew of a peer's HLC stamps against this node's clock, ms; updates beyond are refused (docs/merge.md "Clock skew and forged entries"). */
  maxClockSkewMs: z.number().int().min(1000).default(300000),
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
  /** Mapping file (per-peer routing, ConceptMap code translation; docs/mappings.md), relative to the config file. */
  mappingFile: z.string().min(1).optional(),
  /**
   * The node's resource store: a SQLite file (src/store/sqlite-store.ts), relative to the config file;
   * default `data/<nodeId>.sqlite`. `:memory:` keeps resources in memory only (lost on restart).
   */
  storeFile: z.string().min(1).optional(),
  /**
   * PostgreSQL instead of SQLite (src/store/pg-store.ts): `postgres://user@host:port/db`. The
   * password is better given by `PGPASSWORD` or ~/.pgpass than in this file. Excludes `storeFile`.
   */
  storeUrl: z.string().regex(/^postgres(ql)?:\/\//, 'must be a postgres:// or postgresql:// URL').optional(),
  /** PostgreSQL schema of this node's tables (created when absent); default `tidegate_<nodeId>` (`.`/`-` as `_`). */
  storeSchema: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,62}$/, 'PostgreSQL schema names here are 1-63 of A-Z a-z 0-9 _ (not starting with a digit)').optional(),
  /**
   * Key vault of the sealed PostgreSQL store (a local file with the wrapped content keys,
   * src/store/vault.ts), relative to the config file; default `data/<nodeId>.pg.keys`. Only with
   * `storeUrl` (a SQLite store keeps its vault at `<storeFile>.keys`). Keep it out of database backups.
   */
  keyVaultFile: z.string().min(1).optional(),
  /**
   * Client authorization (SMART on FHIR, src/auth): `{ issuer, audience, jwksUri | jwksFile,
   * algorithms?, clockSkewSeconds?, … }`. Absent: the node starts only with `--insecure-dev` on loopback.
   */
  auth: AuthConfigSchema.optional(),
  /** Breach detection (src/security): thresholds, alert webhook, automatic responses; defaults when absent. */
  security: SecurityConfigSchema.prefault({}),
  /**
   * The audit trail (src/audit, docs/security.md "Audit trail"): a hash-chained JSON Lines file of
   * AuditEvents, relative to the config file; default `data/<nodeId>.audit.jsonl`.
   */
  auditFile: z.string().min(1).optional(),
  /**
   * Rotation of the audit trail (src/audit/segments.ts, docs/security.md "Rotation"): the live file
   * is rotated before a batch would take it past `maxSegmentBytes` (default 64 MiB), and, with
   * `maxSegmentAgeHours` (e.g. 24 for daily), once its first event is that old. Segments are never deleted.
   */
  audit: z.strictObject({ maxSegmentBytes: z.number().int().min(4096).max(2 ** 40).optional(), maxSegmentAgeHours: z.number().positive().max(24 * 366).optional() }).optional(),
  /** Hostile-input limits, HTTP timeouts and the rate limit (docs/security.md "Hostile input"); defaults when absent. */
  http: HttpHardeningSchema.prefault({}),
  /**
   * HTTPS for the FHIR API (src/transport/tls.ts): PEM files relative to the config file; the key
   * file must be mode 0600. With `caFile`, clients must present a certificate that CA issued.
   */
  tls: z.strictObject({ certFile: z.string().min(1), keyFile: z.string().min(1), caFile: z.string().min(1).optional() }).optional(),
  /** TLS of every peer's `rediss://` Redis: the pinned CA (and a client certificate), relative to the config file. */
  redisTls: RedisTlsSchema.optional(),
  /** pino log level. */
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});

/** A validated node configuration with file paths made absolute. */
export type NodeConfig = z.infer<typeof NodeConfigSchema>;

/**
 * Loads a node configuration file. `REDIS_URL` overrides `redisUrl`, `PORT` overrides `listen.port`,
 * `LOG_LEVEL` overrides `logLevel`, `STORE_URL` overrides `storeUrl`.
 * @param path - JSON file path.
 * @param env - environment (injectable for tests).
 * @returns The configuration; key, policy, cursor, store and `auth.jwksFile` paths resolved against the file's folder
 *   (without `storeUrl`, `storeFile` is always set: `data/<nodeId>.sqlite` by default, or `:memory:`;
 *   with it, `storeFile` is unset and `storeSchema` and `keyVaultFile` are set; `auditFile` is always set).
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
    throw new Error(`Invalid config ${path}: ${describeConfigIssues(parsed.error.issues).join('; ')}`);
  }
  const cfg = parsed.data;
  const dir = dirname(resolve(path));
  cfg.secretKeyFile = resolve(dir, cfg.secretKeyFile);
  for (const p of cfg.peers) p.publicKeyFile = resolve(dir, p.publicKeyFile);
  const resolveTls = <T extends Record<string, string | undefined>>(t: T | undefined): void => {
    if (!t) return;
    for (const k of Object.keys(t)) if (typeof t[k] === 'string') (t as Record<string, string>)[k] = resolve(dir, t[k]!);
  };
  resolveTls(cfg.tls);
  resolveTls(cfg.redisTls);
  for (const p of cfg.peers) resolveTls(p.redisTls);
  if (cfg.mergePolicyFile) cfg.mergePolicyFile = resolve(dir, cfg.mergePolicyFile);
  if (cfg.mappingFile) cfg.mappingFile = resolve(dir, cfg.mappingFile);
  if (cfg.hospitalCursorFile) cfg.hospitalCursorFile = resolve(dir, cfg.hospitalCursorFile);
  if (cfg.auth?.jwksFile) cfg.auth.jwksFile = resolve(dir, cfg.auth.jwksFile);
  if (cfg.auth?.backendServices) {
    cfg.auth.backendServices.signingKeyFile = resolve(dir, cfg.auth.backendServices.signingKeyFile);
    for (const c of cfg.auth.backendServices.clients) if (c.jwksFile) c.jwksFile = resolve(dir, c.jwksFile);
  }
  if (env.STORE_URL) cfg.storeUrl = NodeConfigSchema.shape.storeUrl.unwrap().parse(env.STORE_URL);
  if (cfg.storeUrl !== undefined) {
    if (cfg.storeFile !== undefined) throw new Error(`Invalid config ${path}: storeFile and storeUrl are exclusive (SQLite file or PostgreSQL)`);
    cfg.storeSchema ??= `tidegate_${cfg.nodeId.replace(/[^A-Za-z0-9_]/g, '_')}`.slice(0, 63);
    cfg.keyVaultFile = resolve(dir, cfg.keyVaultFile ?? join('data', `${cfg.nodeId}.pg.keys`));
  } else {
    if (cfg.keyVaultFile !== undefined) throw new Error(`Invalid config ${path}: keyVaultFile is for a PostgreSQL store (storeUrl); a storeFile keeps its vault at <storeFile>.keys`);
    cfg.storeFile = cfg.storeFile === ':memory:' ? cfg.storeFile : resolve(dir, cfg.storeFile ?? join('data', `${cfg.nodeId}.sqlite`));
  }
  cfg.auditFile = resolve(dir, cfg.auditFile ?? join('data', `${cfg.nodeId}.audit.jsonl`));
  if (env.REDIS_URL) cfg.redisUrl = RedisUrl.parse(env.REDIS_URL);
  if (env.PORT) cfg.listen.port = z.coerce.number().int().min(0).max(65535).parse(env.PORT);
  if (env.LOG_LEVEL) cfg.logLevel = NodeConfigSchema.shape.logLevel.parse(env.LOG_LEVEL);
  for (const p of cfg.peers) if (p.redisTls && !/^rediss:\/\//i.test(p.redisUrl)) throw new Error(`Invalid config ${path}: peers[${p.nodeId}].redisTls needs a rediss:// redisUrl`);
  if (cfg.peers.some((p) => p.nodeId === cfg.nodeId)) throw new Error(`Invalid config ${path}: peers must not include the node itself`);
  return cfg;
}

/** One zod issue of a node configuration (the shape {@link describeConfigIssues} reads). */
type NodeConfigIssue = z.core.$ZodIssue;

/** zod 4 schema internals read by {@link knownConfigKeys}: the definition's type and its inner schemas. */
interface SchemaDef {
  type: string;
  shape?: Record<string, { _zod: { def: SchemaDef } }>;
  innerType?: { _zod: { def: SchemaDef } };
  in?: { _zod: { def: SchemaDef } };
  element?: { _zod: { def: SchemaDef } };
  options?: { _zod: { def: SchemaDef } }[];
}

/** The definitions a value at this schema may have, through optional, default, prefault, pipe and union. */
function unwrapDef(def: SchemaDef): SchemaDef[] {
  if (def.type === 'union') return (def.options ?? []).flatMap((o) => unwrapDef(o._zod.def));
  const inner = def.innerType ?? def.in;
  return inner ? unwrapDef(inner._zod.def) : [def];
}

/**
 * The members the node configuration schema allows in the object at `path` (e.g. `[]` for the top
 * level, `['peers', 0]` for a peer, `['security', 'webhook']`). Reads zod 4 schema definitions.
 * @param path - zod issue path: member names and array indexes.
 * @returns The allowed member names, sorted; `[]` when the path names no object of the schema.
 */
export function knownConfigKeys(path: readonly PropertyKey[]): string[] {
  let defs = unwrapDef((NodeConfigSchema as unknown as { _zod: { def: SchemaDef } })._zod.def);
  for (const seg of path) {
    defs = defs.flatMap((d) => {
      if (typeof seg === 'number') return d.type === 'array' && d.element ? unwrapDef(d.element._zod.def) : [];
      const child = d.type === 'object' ? d.shape?.[String(seg)] : undefined;
      return child ? unwrapDef(child._zod.def) : [];
    });
  }
  return [...new Set(defs.filter((d) => d.type === 'object').flatMap((d) => Object.keys(d.shape ?? {})))].sort();
}

/** Optimal-string-alignment edit distance (insertions, deletions, substitutions, adjacent transpositions). */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}

/**
 * The known member closest to a misspelt one, when close enough: a case-only difference, or an edit
 * distance of at most 1 (names up to 4 characters), 2 (up to 12) or 3 (longer).
 * @param key - the unknown member name.
 * @param known - the allowed names.
 * @returns The suggestion, or undefined.
 */
export function suggestConfigKey(key: string, known: readonly string[]): string | undefined {
  const limit = key.length <= 4 ? 1 : key.length <= 12 ? 2 : 3;
  let best: { name: string; d: number } | undefined;
  for (const name of known) {
    const d = name.toLowerCase() === key.toLowerCase() ? 0 : editDistance(key, name);
    if (d <= limit && (best === undefined || d < best.d)) best = { name, d };
  }
  return best?.name;
}

/**
 * The message of an unknown member of the node configuration: `unknown key "lsiten" (did you mean
 * "listen"?)`, the suggestion only when a known member at that level is close.
 * @param path - path of the object holding the member (zod issue path).
 * @param key - the unknown member.
 */
export function unknownConfigKeyMessage(path: readonly PropertyKey[], key: string): string {
  const suggestion = suggestConfigKey(key, knownConfigKeys(path));
  return `unknown key "${key}"${suggestion ? ` (did you mean "${suggestion}"?)` : ''}`;
}

/**
 * zod issues of a node configuration as `path: message` strings, one per unknown key (with its
 * "did you mean" suggestion) and one per other issue.
 * @param issues - from `NodeConfigSchema.safeParse`.
 */
export function describeConfigIssues(issues: readonly NodeConfigIssue[]): string[] {
  return issues.flatMap((i) => {
    if (i.code === 'unrecognized_keys') return i.keys.map((k) => `${[...i.path, k].join('.')}: ${unknownConfigKeyMessage(i.path, k)}`);
    return [`${i.path.join('.') || '(root)'}: ${i.message}`];
  });
}
