/**
 * Tide, tidegate's gossip engine: batched, sealed Yjs updates over BullMQ, plus state-vector
 * anti-entropy. Named exports only; see docs/tide.md.
 */
export { Tide, inboxQueueName, controlQueueName } from './tide.ts';
export {
  PLAINTEXT_VERSION,
  RESOURCE_KEY_RE,
  TidePlaintextError,
  chunkDigest,
  decodeDigest,
  decodeUpdates,
  encodeDigest,
  encodeUpdates,
  inRange,
  isResourceKey,
  stateVectorAhead,
} from './codec.ts';
export type { Digest, DigestEntry } from './codec.ts';
export { AuditLog, quarantineAuditEvent, NODE_ID_SYSTEM, MESSAGE_ID_SYSTEM, QUARANTINE_REASON_SYSTEM } from './audit.ts';
export type { AuditBundle, AuditEvent, QuarantineRecord } from './audit.ts';
export type {
  NodePublicKeys,
  NodeSecretKeys,
  PeerConfig,
  PeerStatus,
  Replica,
  ResourceUpdate,
  TideLogger,
  TideMessageKind,
  TideOptions,
  TideHealth,
  TideStats,
} from './types.ts';
