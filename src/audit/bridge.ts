/**
 * Bridges into the audit trail for events built elsewhere:
 *
 * - envelope rejections: Tide adds a FHIR AuditEvent to its in-memory `AuditLog` for every
 *   quarantined inbox message (src/tide/audit.ts `quarantineAuditEvent`); {@link bridgeAuditLog}
 *   makes each `add` also record the event in the trail;
 * - crypto-shreds: `TidegateNode.shred` adds its AuditEvent (src/store/shred.ts `shredAuditEvent`)
 *   to the same log, so the bridge records shreds made through the node too; an offline
 *   `tidegate shred` records its report's event with {@link recordShredReport}.
 *
 * Those builders follow the same PHI rule (ids, codes and counts only; the shredded patient is
 * named by its HMAC resource tag).
 */
import type { AuditRecorder } from './middleware.ts';
import type { AuditEvent } from './types.ts';

/** Anything with an `add(event)` method, e.g. Tide's `AuditLog`. */
export interface AuditEventSink<E> {
  add(event: E): void;
}

/**
 * Makes `log.add(event)` also record the event in `trail` (the log keeps working as before).
 * @param log - e.g. `tide.auditLog` (src/tide/audit.ts `AuditLog`).
 * @param trail - the audit trail.
 * @returns A function that undoes the bridge.
 */
export function bridgeAuditLog<E extends AuditEvent>(log: AuditEventSink<E>, trail: AuditRecorder): () => void {
  const original = log.add;
  log.add = function bridgedAdd(this: unknown, event: E): void {
    original.call(log, event);
    try {
      trail.record(event);
    } catch {
      // closed trail (shutdown): the in-memory log still has it
    }
  };
  return () => {
    log.add = original;
  };
}

/**
 * Records the AuditEvent of a shred report (src/store/shred.ts `ShredReport.auditEvent`).
 * @param trail - the audit trail.
 * @param report - the report of `shredPatient` (only its `auditEvent` is read).
 */
export function recordShredReport(trail: AuditRecorder, report: { auditEvent: AuditEvent }): void {
  trail.record(report.auditEvent);
}
