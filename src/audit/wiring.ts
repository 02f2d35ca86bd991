/**
 * The three pieces the FHIR app mounts for the audit trail, built from one trail:
 * - `onDecision`: the authorization middleware's hook (refused requests, src/auth/middleware.ts);
 * - `middleware`: one event per FHIR interaction that got past authorization;
 * - `router`: `GET /fhir/AuditEvent` (audit scope only).
 *
 * Mount order on `/fhir`: auth (with `onDecision`) → `middleware` → `router` → FHIR router.
 */
import type { RequestHandler, Router } from 'express';
import type { Logger } from 'pino';
import type { AuthDecisionEvent } from '../auth/middleware.ts';
import { auditAuthDecisions, auditMiddleware } from './middleware.ts';
import type { AuditRecorder } from './middleware.ts';
import { auditEventRouter } from './router.ts';
import type { AuditEventSource } from './router.ts';

/** What `fhirApp` mounts (see module doc). */
export interface AuditWiring {
  onDecision: (event: AuthDecisionEvent) => void;
  middleware: RequestHandler;
  router: Router;
}

/**
 * @param trail - the node's trail (an `AuditTrail`).
 * @param nodeId - this node's id.
 * @param opts.open - serve `GET /fhir/AuditEvent` without a token: insecure dev mode only (no `auth`).
 * @param opts.log - failures to record.
 * @returns The pieces.
 */
export function auditWiring(trail: AuditRecorder & AuditEventSource, nodeId: string, opts: { open?: boolean; log?: Logger } = {}): AuditWiring {
  return {
    onDecision: auditAuthDecisions(trail, nodeId),
    middleware: auditMiddleware({ trail, nodeId, ...(opts.log ? { log: opts.log } : {}) }),
    router: auditEventRouter({ trail, open: opts.open === true }),
  };
}
