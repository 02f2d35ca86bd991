/**
 * Command-line side of the audit trail:
 * - `tidegate audit verify --config FILE [--file PATH] [--expect SEQ:HASH] [--from SEGMENT]` ({@link runAuditVerify});
 * - recording key operations and offline shreds into the node's trail from `tidegate keys …` and
 *   `tidegate shred` ({@link recordOffline}, {@link keyOperationFromStore}).
 *
 * The trail of a node is its config's `auditFile` (default `data/<nodeId>.audit.jsonl` next to the
 * config file). A CLI command appends to it under the trail's lock, so it may run while the node runs.
 */
import { userInfo } from 'node:os';
import { loadNodeConfig } from '../config/config.ts';
import { AuditTrail } from './trail.ts';
import type { AuditTrailOptions } from './trail.ts';
import { verifyTrail } from './verify.ts';
import type { VerifyReport } from './verify.ts';
import { keyOperationEvent } from './events.ts';
import type { KeyFacts, KeyOperation } from './events.ts';
import type { AuditEvent } from './types.ts';

/** Options of {@link runAuditVerify}. */
export interface AuditVerifyOptions {
  /** Node configuration file (its `auditFile`). */
  config?: string;
  /** The trail file itself (instead of, or overriding, the config's). */
  file?: string;
  /** `SEQ:HASH` anchor from an earlier run (kept outside the node). */
  expect?: string;
  /** Segment file name to start at, the ones before it archived (its recorded previous hash is trusted). */
  from?: string;
  /** Environment for config overrides; tests only. */
  env?: NodeJS.ProcessEnv;
}

/**
 * The trail file of a configuration.
 * @param configPath - node configuration JSON.
 * @param env - environment for overrides.
 * @returns The absolute path of the trail (`auditFile`).
 * @throws Error when the configuration is invalid.
 */
export function auditFileOfConfig(configPath: string, env: NodeJS.ProcessEnv = process.env): { file: string; nodeId: string; rotation: Pick<AuditTrailOptions, 'maxSegmentBytes' | 'maxSegmentAgeMs'> } {
  const cfg = loadNodeConfig(configPath, env);
  // loadNodeConfig always sets auditFile (default data/<nodeId>.audit.jsonl).
  return { file: cfg.auditFile!, nodeId: cfg.nodeId, rotation: auditRotationOf(cfg.audit) };
}

/**
 * The {@link AuditTrail.open} rotation options of a node config's `audit` section.
 * @param audit - `{ maxSegmentBytes?, maxSegmentAgeHours? }` (bytes, hours) or undefined.
 * @returns `{ maxSegmentBytes?, maxSegmentAgeMs? }` (bytes, ms); absent fields take the trail's defaults.
 */
export function auditRotationOf(audit: { maxSegmentBytes?: number | undefined; maxSegmentAgeHours?: number | undefined } | undefined): Pick<AuditTrailOptions, 'maxSegmentBytes' | 'maxSegmentAgeMs'> {
  return {
    ...(audit?.maxSegmentBytes !== undefined ? { maxSegmentBytes: audit.maxSegmentBytes } : {}),
    ...(audit?.maxSegmentAgeHours !== undefined ? { maxSegmentAgeMs: audit.maxSegmentAgeHours * 3_600_000 } : {}),
  };
}

/**
 * Verifies a node's trail (src/audit/verify.ts).
 * @param o - see {@link AuditVerifyOptions}.
 * @returns The report; the caller exits non-zero when `ok` is false.
 * @throws Error when neither `config` nor `file` is given, `expect` or `from` is malformed, or the file cannot be read.
 */
export async function runAuditVerify(o: AuditVerifyOptions): Promise<VerifyReport> {
  const file = o.file ?? (o.config !== undefined ? auditFileOfConfig(o.config, o.env ?? process.env).file : undefined);
  if (file === undefined) throw new Error('audit verify needs --config FILE or --file PATH');
  let expect: { seq: number; hash: string } | undefined;
  if (o.expect !== undefined) {
    const m = /^([1-9]\d{0,15}):([0-9a-f]{64})$/.exec(o.expect);
    if (!m) throw new Error('--expect must be SEQ:HASH (a sequence number and 64 hex characters, as printed by an earlier verify)');
    expect = { seq: Number(m[1]), hash: m[2]! };
  }
  if (o.from !== undefined && !/^[^/\\]+\.\d{6,15}$/.test(o.from)) throw new Error('--from must be a segment file name such as node-a.audit.jsonl.000042 (no folder)');
  return verifyTrail(file, { ...(expect ? { expect } : {}), ...(o.from !== undefined ? { from: o.from } : {}) });
}

/**
 * Appends events to a trail from a short-lived process (opens, records, flushes, closes).
 * @param file - the trail file.
 * @param nodeId - the node the trail belongs to.
 * @param events - the events.
 * @param rotation - the node config's rotation ({@link auditRotationOf}); defaults when absent.
 * @throws AuditTrailError when the trail is locked for longer than 5 s or corrupt; Error from the file system.
 */
export async function recordOffline(file: string, nodeId: string, events: readonly AuditEvent[], rotation: Pick<AuditTrailOptions, 'maxSegmentBytes' | 'maxSegmentAgeMs'> = {}): Promise<void> {
  const trail = await AuditTrail.open(file, { nodeId, ...rotation });
  try {
    for (const e of events) trail.record(e);
  } finally {
    await trail.close();
  }
}

/** `cli:<user name>` of the operator running a command (`cli:operator` when there is none). */
export function cliRequestor(): string {
  try {
    return `cli:${userInfo().username}`;
  } catch {
    return 'cli:operator';
  }
}

/**
 * The key-operation event of a `tidegate keys` command, from the key listing it printed
 * (src/envelope/keys.ts `listKeys`: kid, alg, use, status; no key material).
 * @param nodeId - the node.
 * @param op - generate, rotate, retire, rewrap.
 * @param keys - the keys concerned (for retire: the retired one).
 * @param counts - e.g. `{ rewrapped: 12 }`.
 * @returns The AuditEvent.
 */
export function keyOperationFromStore(nodeId: string, op: KeyOperation, keys: readonly KeyFacts[], counts?: Record<string, number>): AuditEvent {
  return keyOperationEvent({ nodeId, op, keys: keys.map((k) => ({ kid: k.kid, alg: k.alg, use: k.use, status: k.status })), requestor: cliRequestor(), at: new Date(), ...(counts ? { counts } : {}) });
}

/**
 * Records a key operation in the trail of `configPath` when one is given; otherwise writes a
 * warning to stderr (the operation is then only visible at the node's next start, whose event
 * names its key ids).
 * @param configPath - node configuration JSON, or undefined.
 * @param nodeId - the node the keys belong to (must match the config's).
 * @param op - the operation.
 * @param keys - the keys concerned.
 * @param counts - counts to record.
 * @throws Error when the config names another node, or the trail cannot be written.
 */
export async function auditKeyCommand(configPath: string | undefined, nodeId: string, op: KeyOperation, keys: readonly KeyFacts[], counts?: Record<string, number>): Promise<void> {
  if (configPath === undefined) {
    process.stderr.write(`tidegate: key ${op} not recorded in an audit trail (give --config to record it)\n`);
    return;
  }
  const { file, nodeId: cfgNode, rotation } = auditFileOfConfig(configPath);
  if (cfgNode !== nodeId) throw new Error(`--config is for node ${cfgNode}, the keys are of node ${nodeId}`);
  await recordOffline(file, nodeId, [keyOperationFromStore(nodeId, op, keys, counts)], rotation);
}
