/**
 * Admin routes of breach detection (mounted by the node next to src/ops/router.ts):
 *
 * | route | answer |
 * | --- | --- |
 * | `GET /admin/security/alerts` | `{ node, counts, alerts }`: alerts newest first (`?_count=N`, default 100) |
 * | `POST /admin/peers/:id/quarantine` | quarantine a peer by hand: `{ node, peer, quarantined }` |
 * | `POST /admin/peers/:id/release` | release a quarantined peer: `{ node, peer, released }` (false when it was not) |
 * | `GET /admin/revocations` | `{ node, revocations }`: revoked token ids |
 * | `POST /admin/revocations/:jti` | revoke a token by hand: `{ node, jti, revoked }` |
 * | `DELETE /admin/revocations/:jti` | clear a revocation: `{ node, jti, released: true }`; 404 when not revoked |
 *
 * Errors are OperationOutcomes (404 unknown peer or revocation, 400 invalid jti, 503 Redis). Like
 * the other `/admin` routes they need a `tidegate/admin` token when `auth` is configured (src/auth/admin.ts).
 */
import express from 'express';
import type { Request, Response, Router } from 'express';
import type { BreachDetector } from './detector.ts';
import type { RevocationList } from './revocations.ts';

/** The part of Tide the routes use. */
export interface PeerQuarantineControl {
  quarantinePeer(peerId: string, reason: string): Promise<boolean>;
  releasePeer(peerId: string): Promise<boolean>;
}

/** Options of {@link securityRouter}. */
export interface SecurityRouterOptions {
  nodeId: string;
  detector: BreachDetector;
  /** The node's Tide (peer quarantine). */
  tide: PeerQuarantineControl;
  /** The revocation list the token verifier checks. */
  revocations: RevocationList;
}

function outcome(res: Response, status: number, code: string, diagnostics: string): void {
  res.status(status).type('application/fhir+json').send(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] }));
}

function countParam(req: Request, dflt: number): number {
  const raw = req.query._count;
  const n = typeof raw === 'string' ? Number.parseInt(raw, 10) : Number.NaN;
  return Number.isSafeInteger(n) && n >= 0 ? Math.min(n, 1000) : dflt;
}

/**
 * Builds the router (routes in the module doc).
 * @param opts - see {@link SecurityRouterOptions}.
 */
export function securityRouter(opts: SecurityRouterOptions): Router {
  const { nodeId, detector, tide, revocations } = opts;
  const r = express.Router();

  r.get('/admin/security/alerts', (req: Request, res: Response) => {
    res.json({ node: nodeId, counts: detector.alertCounts(), alerts: detector.alerts(countParam(req, 100)) });
  });

  const peerAction = (action: 'quarantine' | 'release') => async (req: Request, res: Response) => {
    const peer = String(req.params.id);
    try {
      if (action === 'quarantine') res.json({ node: nodeId, peer, quarantined: await tide.quarantinePeer(peer, 'manual') });
      else res.json({ node: nodeId, peer, released: await tide.releasePeer(peer) });
    } catch (err) {
      if (err instanceof TypeError) outcome(res, 404, 'not-found', `${peer} is not a configured peer`);
      else outcome(res, 503, 'transient', `peer quarantine state not changed: own Redis unavailable`);
    }
  };
  r.post('/admin/peers/:id/quarantine', peerAction('quarantine'));
  r.post('/admin/peers/:id/release', peerAction('release'));

  r.get('/admin/revocations', (_req: Request, res: Response) => {
    res.json({ node: nodeId, revocations: revocations.list().map((e) => ({ ...e, since: new Date(e.since).toISOString() })) });
  });
  r.post('/admin/revocations/:jti', async (req: Request, res: Response) => {
    const jti = String(req.params.jti);
    let p: Promise<boolean>;
    try {
      p = revocations.revoke(jti, 'manual');
    } catch (err) {
      outcome(res, 400, 'invalid', (err as Error).message);
      return;
    }
    try {
      res.json({ node: nodeId, jti, revoked: await p });
    } catch {
      // in force in memory; not persisted
      res.status(202).json({ node: nodeId, jti, revoked: true, persisted: false });
    }
  });
  r.delete('/admin/revocations/:jti', async (req: Request, res: Response) => {
    const jti = String(req.params.jti);
    try {
      if (await revocations.release(jti)) res.json({ node: nodeId, jti, released: true });
      else outcome(res, 404, 'not-found', 'no revocation for this jti');
    } catch {
      outcome(res, 503, 'transient', 'revocation not cleared: Redis unavailable (the token stays revoked)');
    }
  });
  return r;
}
