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
export type {
  NodePublicKeys,
  NodeSecretKeys,
  PeerConfig,
  Replica,
  ResourceUpdate,
  TideLogger,
  TideMessageKind,
  TideOptions,
  TideStats,
} from './types.ts';
