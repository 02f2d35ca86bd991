/**
 * The patient match review list over HTTP (docs/mappings.md "Identifiers and patient matching"),
 * an express Router mounted at the app root with the other operations endpoints (so, with auth
 * configured, behind the `tidegate/admin` token like every `/admin/*` route):
 *
 * | route | answer |
 * | --- | --- |
 * | `GET /admin/matches` | `{ node, matches: [{ id, candidate, existing, rule, score, createdAt }] }`: open possible matches, ids only (no names, birth dates or identifiers) |
 * | `POST /admin/matches/:id/dismiss` | `{ node, dismissed: entry }`; 404 OperationOutcome for an unknown id; 503 when the review file cannot be written (nothing changed) |
 *
 * Dismissing removes the entry for good; it merges and links nothing (a sure link is a `Patient.link`
 * a person writes through the FHIR API).
 */
import express from 'express';
import type { Request, Response, Router } from 'express';
import type { MatchReviewList } from './matching.ts';

/** Options of {@link matchesRouter}. */
export interface MatchesRouterOptions {
  /** This node's id, in response bodies. */
  nodeId: string;
  /** The review list (a `PatientMatcher`'s `review`). */
  review: MatchReviewList;
}

function outcome(res: Response, status: number, code: string, diagnostics: string): void {
  res.status(status).type('application/fhir+json').send(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] }));
}

/**
 * Builds the review list Router (routes in the module doc).
 * @param opts - see {@link MatchesRouterOptions}.
 * @returns An express Router.
 */
export function matchesRouter(opts: MatchesRouterOptions): Router {
  const r = express.Router();
  r.get('/admin/matches', (_req: Request, res: Response) => {
    res.json({ node: opts.nodeId, matches: opts.review.list() });
  });
  r.post('/admin/matches/:id/dismiss', (req: Request, res: Response) => {
    const id = String(req.params['id'] ?? '');
    if (!/^[0-9a-f]{24}$/.test(id)) return outcome(res, 404, 'not-found', 'no open match with this id');
    try {
      const entry = opts.review.dismiss(id);
      if (entry === undefined) return outcome(res, 404, 'not-found', 'no open match with this id');
      res.json({ node: opts.nodeId, dismissed: entry });
    } catch (err) {
      outcome(res, 503, 'transient', `review list not saved (${(err as NodeJS.ErrnoException).code ?? 'error'}); nothing changed`);
    }
  });
  return r;
}
