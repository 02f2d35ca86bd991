/**
 * Authorization of the node's operations endpoints (`/admin/*`, `/metrics`) when the node has an
 * `auth` section: a Bearer token from a configured issuer (same checks as the FHIR API, see
 * token.ts) that carries the scope {@link ADMIN_SCOPE}. Probes (`/healthz`, `/readyz`) stay open.
 *
 * The scope is not a SMART clinical scope: SMART v2 (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html)
 * lets servers define their own; an administrator's token from the authorization server (or from
 * the node's Backend Services endpoint, if the client is registered for it) asks for it explicitly.
 * Errors are RFC 6750 §3 challenges with an OperationOutcome, as on the FHIR API.
 */
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { AuthError } from './errors.ts';
import { sendAuthError } from './middleware.ts';
import type { MultiIssuerVerifier } from './token.ts';

/** The scope an operations token must carry. */
export const ADMIN_SCOPE = 'tidegate/admin';

/**
 * @param verifier - the node's token verifier (AuthSetup.verifier).
 * @returns Express middleware: 401 without a valid Bearer token, 403 without {@link ADMIN_SCOPE},
 *   503 when the key set is unreachable; otherwise `res.locals.auth` is set and the request goes on.
 */
export function adminAuth(verifier: MultiIssuerVerifier): RequestHandler {
  return (req: Request, res: Response, next: NextFunction) => {
    const header = req.headers.authorization;
    const m = typeof header === 'string' ? /^Bearer ([A-Za-z0-9\-._~+/]+=*)$/.exec(header) : null;
    if (!m) {
      sendAuthError(res, new AuthError('missing_token', 'The operations endpoints need a Bearer token with the tidegate/admin scope'));
      return;
    }
    verifier.verify(m[1]!).then(
      (ctx) => {
        if (!ctx.scopes.other.includes(ADMIN_SCOPE)) {
          sendAuthError(res, new AuthError('insufficient_scope', 'This token does not carry the tidegate/admin scope', ADMIN_SCOPE));
          return;
        }
        res.locals.auth = ctx;
        next();
      },
      (err: unknown) => {
        if (err instanceof AuthError) sendAuthError(res, err);
        else next(err);
      },
    );
  };
}
