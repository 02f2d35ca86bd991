/**
 * The node's audit trail: append-only, hash-chained FHIR R4 AuditEvents (IHE BALP where it fits),
 * the REST middleware, the `GET /fhir/AuditEvent` router, `tidegate audit verify`. See
 * docs/security.md "Audit trail".
 */
export { AUDIT_CHAIN_URL, GENESIS_HASH, NODE_SYSTEM, CLIENT_ID_SYSTEM, KEY_ID_SYSTEM, TIDEGATE_EVENT_SYSTEM, AUTH_REASON_SYSTEM } from './types.ts';
export type { AuditEvent, AuditEventAgent, AuditEventEntity, AuditAction, AuditOutcome, Coding, Reference } from './types.ts';
export { canonicalJson, sha256Hex } from './canonical.ts';
export { chainOf, withChain } from './chain.ts';
export type { ChainLink } from './chain.ts';
export { AuditTrail, AuditTrailError, DEFAULT_SEGMENT_BYTES, readHeadFile } from './trail.ts';
export type { AuditTrailOptions, AuditTrailErrorCode, NewestFirstHints, TrailHead, TrailStats, HeadFile } from './trail.ts';
export { listSegmentFiles, manifestPath, readManifest, reconcileSegments, rotateLiveFile, scanSegment, segmentIndex, segmentName } from './segments.ts';
export type { Manifest, SegmentEntry } from './segments.ts';
export { authFailureEvent, callerAgents, keyOperationEvent, lifecycleEvent, mergeEvent, outcomeOfStatus, restEvent, trailNoticeEvent } from './events.ts';
export type { AuthFailureInput, CallerIdentity, KeyFacts, KeyOperation, RestEventInput, RestInteraction } from './events.ts';
export { auditAuthDecisions, auditMiddleware, callerOf } from './middleware.ts';
export type { AuditMiddlewareOptions, AuditRecorder } from './middleware.ts';
export { auditEventRouter, hasAuditScope } from './router.ts';
export type { AuditEventSource, AuditRouterOptions } from './router.ts';
export { parseAuditQuery, DEFAULT_COUNT, MAX_COUNT } from './search.ts';
export type { AuditQuery } from './search.ts';
export { bridgeAuditLog, recordShredReport } from './bridge.ts';
export type { AuditEventSink } from './bridge.ts';
export { verifyTrail } from './verify.ts';
export type { VerifyProblem, VerifyReport } from './verify.ts';
export { auditFileOfConfig, auditKeyCommand, auditRotationOf, cliRequestor, keyOperationFromStore, recordOffline, runAuditVerify } from './cli.ts';
export type { AuditVerifyOptions } from './cli.ts';
export { auditWiring } from './wiring.ts';
export type { AuditWiring } from './wiring.ts';
