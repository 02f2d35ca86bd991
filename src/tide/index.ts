/**
 * Tide, tidegate's gossip engine: batched, sealed Yjs updates over BullMQ, plus state-vector
 * anti-entropy. Named exports only; see docs/tide.md.
 */
export { Tide, backoffDelay, inboxQueueName, controlQueueName } from './tide.ts';
export {
  DIGEST_VERSION,
  MAX_TREE_ITEMS,
  PLAINTEXT_VERSION,
  RESOURCE_KEY_RE,
  TREE_VERSION,
  TidePlaintextError,
  decodeDigest,
  decodeTree,
  decodeUpdates,
  encodeDigest,
  encodeTree,
  encodeUpdates,
  intersectTypes,
  isResourceKey,
  stateVectorAhead,
  typeAllowed,
  typeOf,
} from './codec.ts';
export type { Digest, DigestEntry, TreeMessage, TypeFilter } from './codec.ts';
export {
  DigestTree,
  PathSet,
  ROOT_PATH,
  TREE_FANOUT,
  TREE_MAX_DEPTH,
  childrenOf,
  keyHashOf,
  makeLeaf,
  pathSpan,
  underPath,
} from './tree.ts';
export type { TreeLeaf, TreeNode, TreePath } from './tree.ts';
export { AuditLog, quarantineAuditEvent, NODE_ID_SYSTEM, MESSAGE_ID_SYSTEM, QUARANTINE_REASON_SYSTEM } from './audit.ts';
export type { AuditBundle, AuditEvent, QuarantineRecord } from './audit.ts';
export { V3_ACT_CODE, V3_CONFIDENTIALITY, labelsWithheld, parseLabelRule, ruleText, securityLabelsOf } from './peer-authz.ts';
export type { LabelRule, SecurityLabel } from './peer-authz.ts';
export type {
  NodePublicKeys,
  NodeSecretKeys,
  PeerConfig,
  PeerPolicyStatus,
  PeerQuarantine,
  PeerStatus,
  ProjectionSource,
  Replica,
  ResourceUpdate,
  TideLogger,
  TideMessageKind,
  TideOptions,
  TideRejectionEvent,
  TideHealth,
  TideStats,
} from './types.ts';
