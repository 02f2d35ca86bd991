/**
 * Admin HTTP route of crypto-shredding, mounted next to the ops routes (src/ops/router.ts):
 *
 * `POST /admin/shred/Patient/:id` → 200 `{ patient, resourcesShredded, keysDestroyed, tombstoned,
 * unreadable, dropped, auditEvent }` (counts and the AuditEvent; the list of shredded keys is not
 * returned), 400 OperationOutcome for a bad id or a store that cannot shred, 500 OperationOutcome
 * (generic, no detail) when the shred failed — retry it: the store part is all-or-nothing.
 *
 * Like the other admin routes it is not authenticated yet: bind the node to a trusted interface.
 */
import express from 'express';
import type { Request, Response, Router } from 'express';
import type { ShredReport } from './shred.ts';

/** Options of {@link shredRouter}. */
export interface ShredRouterOptions {
  /** Shreds `Patient/<id>` (e.g. `TidegateNode.shred`). */
  shred: (patientKey: string, requestor: string) => Promise<ShredReport>;
}

function operationOutcome(code: string, diagnostics: string): object {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] };
}

/**
 * Builds the router (see module doc).
 * @param opts - the shred function.
 * @returns An express Router.
 */
export function shredRouter(opts: ShredRouterOptions): Router {
  const r = express.Router();
  r.post('/admin/shred/Patient/:id', async (req: Request, res: Response) => {
    const id = String(req.params['id'] ?? '');
    try {
      const report = await opts.shred(`Patient/${id}`, 'admin-http');
      res.status(200).json({
        patient: report.patient,
        resourcesShredded: report.shredded.length,
        keysDestroyed: report.keysDestroyed,
        tombstoned: report.tombstoned.length,
        unreadable: report.unreadable,
        dropped: report.dropped,
        auditEvent: report.auditEvent,
      });
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code === 'ERR_SHRED_INVALID_KEY' || code === 'ERR_SHRED_UNSUPPORTED_STORE') {
        res.status(400).type('application/fhir+json').send(JSON.stringify(operationOutcome('invalid', (err as Error).message)));
        return;
      }
      res.status(500).type('application/fhir+json').send(JSON.stringify(operationOutcome('exception', 'The shred failed; nothing was half-done in the store, retry it')));
    }
  });
  return r;
}
