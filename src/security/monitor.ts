/**
 * Express middleware that feeds the {@link BreachDetector} with every finished FHIR request. Mount
 * it on the FHIR base **before** the authorization middleware, so that it also sees the 401/403
 * answers auth gives itself, and sees response bodies after auth's compartment filter:
 * `app.use('/fhir', securityMonitor(detector))`.
 *
 * What it reads: the final status, method and path, `req.ip`, the verified token's `jti`,
 * `client_id`, `sub` and `exp` (`res.locals.auth`, set by src/auth/middleware.ts), and the patients
 * of a successful read, search or history response: the id in a `Patient/<id>` path, and every
 * `Patient/<id>` (a reference, or a `fullUrl`) in the body — the patients whose data left. Nothing
 * is logged or stored beyond the detector's in-memory windows.
 */
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import type { AccessContext } from '../auth/token.ts';
import type { BreachDetector, HttpObservation } from './detector.ts';

/** `Patient/<id>` in a path, a reference or a fullUrl (id: https://hl7.org/fhir/R4/datatypes.html#id). */
const PATIENT_REF = /Patient\/([A-Za-z0-9\-.]{1,64})(?![A-Za-z0-9\-.])/g;
/** Most patient ids taken from one response body. */
const MAX_PATIENTS_PER_RESPONSE = 10_000;
/** Bodies longer than this are scanned up to here only (chars). */
const MAX_SCAN_CHARS = 32 * 1024 * 1024;

/**
 * Classifies a request below the FHIR base (https://hl7.org/fhir/R4/http.html).
 * @param method - HTTP method.
 * @param path - Path below the base, e.g. `/Patient/1/_history`.
 * @returns `history` for any `_history`, `search` for type/system search (GET or POST `_search`),
 *   `read` for `GET [type]/[id]`, else `other`.
 */
export function classifyForMonitor(method: string, path: string): HttpObservation['kind'] {
  const m = method.toUpperCase();
  const parts = path.split('/').filter((p) => p !== '');
  if (parts.includes('_history')) return m === 'GET' ? 'history' : 'other';
  if (m === 'POST' && parts[parts.length - 1] === '_search') return 'search';
  if (m !== 'GET' && m !== 'HEAD') return 'other';
  if (parts.length === 0) return 'search';
  const first = parts[0] as string;
  if (first === 'metadata' || first.startsWith('.') || first.startsWith('$')) return 'other';
  if (parts.length === 1) return 'search';
  if (parts.length === 2 && !(parts[1] as string).startsWith('$')) return 'read';
  return 'other';
}

/**
 * Patient ids a response carried (see module doc).
 * @param path - Request path below the FHIR base.
 * @param body - Response body text, if any.
 * @returns Distinct ids.
 */
export function patientsInResponse(path: string, body: string | undefined): string[] {
  const out = new Set<string>();
  const m = /^\/Patient\/([A-Za-z0-9\-.]{1,64})(?:\/|$)/.exec(path);
  if (m) out.add(m[1] as string);
  if (body !== undefined && body.includes('Patient/')) {
    const text = body.length > MAX_SCAN_CHARS ? body.slice(0, MAX_SCAN_CHARS) : body;
    for (const r of text.matchAll(PATIENT_REF)) {
      out.add(r[1] as string);
      if (out.size >= MAX_PATIENTS_PER_RESPONSE) break;
    }
  }
  return [...out];
}

/**
 * The middleware (see module doc). Never changes a response and never throws into the request.
 * @param detector - The node's breach detector.
 * @param now - Clock, ms since the epoch (default `Date.now`).
 * @returns An express handler that calls `next()` at once.
 */
export function securityMonitor(detector: Pick<BreachDetector, 'httpRequest'>, now: () => number = Date.now): RequestHandler {
  return (req: Request, res: Response, next: NextFunction) => {
    const startedAt = now();
    const path = req.path;
    const method = req.method;
    const kind = classifyForMonitor(method, path);
    let body: string | undefined;
    if (kind !== 'other') {
      const send = res.send.bind(res);
      res.send = ((b?: unknown) => {
        if (res.statusCode >= 200 && res.statusCode < 300) {
          if (typeof b === 'string') body = b;
          else if (Buffer.isBuffer(b)) body = b.toString('utf8');
        }
        return send(b as never);
      }) as Response['send'];
    }
    res.once('finish', () => {
      try {
        const auth = res.locals.auth as AccessContext | undefined;
        const ok = res.statusCode >= 200 && res.statusCode < 300;
        detector.httpRequest({
          status: res.statusCode,
          method,
          kind,
          ip: req.ip,
          jti: auth?.jti,
          clientId: auth?.clientId,
          subject: auth?.subject,
          expiresAtMs: auth?.expiresAtMs,
          patients: ok && kind !== 'other' ? patientsInResponse(path, body) : [],
          startedAt,
        });
      } catch {
        // detection must never break serving
      }
      body = undefined;
    });
    next();
  };
}
