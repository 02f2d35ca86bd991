/**
 * `GET /fhir/AuditEvent` answered from the audit trail (https://hl7.org/fhir/R4/auditevent.html#search),
 * as an express Router mounted on the FHIR base after the authorization middleware and before the
 * FHIR router:
 *
 * | route | answer |
 * | --- | --- |
 * | `GET /AuditEvent?…`, `POST /AuditEvent/_search` | `searchset` Bundle, newest first, `next` link while more may match (src/audit/search.ts) |
 * | `GET /AuditEvent/:id` | the event, or 404 |
 * | anything else under `/AuditEvent` | 405: the trail is written by the node only, never through the API |
 *
 * Access needs an audit scope: a `user/` or `system/` scope naming `AuditEvent` itself with `r`
 * (read) or `s` (search), e.g. `system/AuditEvent.rs` or `user/AuditEvent.read`. Wildcard scopes
 * (`system/*.rs`) do not grant it (separation of duties: clinical access is not audit access),
 * and a token with a patient context is refused. Without authorization configured (insecure dev
 * mode) the route answers only when built with `open: true`.
 */
import express from 'express';
import type { NextFunction, Request, Response, Router } from 'express';
import type { AccessContext } from '../auth/token.ts';
import type { Permission } from '../auth/scopes.ts';
import { AuthError } from '../auth/errors.ts';
import { sendAuthError } from '../auth/middleware.ts';
import { FhirError, methodNotAllowed, notFound, toOutcome, unsupportedMediaType } from '../fhir/outcomes.ts';
import { parseSearchQuery } from '../fhir/search.ts';
import { fhirBaseUrl } from '../fhir/base-url.ts';
import { parseAuditQuery } from './search.ts';
import type { AuditEvent } from './types.ts';

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const FHIR_ID = /^[A-Za-z0-9\-.]{1,64}$/;

/** What the router reads events from (an {@link AuditTrail}). */
export interface AuditEventSource {
  /**
   * Stored events, newest first, with their sequence numbers. `hints` let it skip rotated segments
   * that cannot hold a wanted event (`beforeSeq`: the cursor; `mayMatchTimes`: the `date` filter on
   * a segment's recorded range in ms); it may still yield events outside them.
   */
  newestFirst(hints?: { beforeSeq?: number; mayMatchTimes?: (firstMs: number, lastMs: number) => boolean }): AsyncIterable<{ seq: number; event: AuditEvent }>;
  /** Writes queued events, so an answer includes everything recorded before the request. */
  flush?(): Promise<void>;
}

/** Options of {@link auditEventRouter}. */
export interface AuditRouterOptions {
  /** The trail. */
  trail: AuditEventSource;
  /** Serve without a token (insecure dev mode only). Default false. */
  open?: boolean;
  /** `realm` of `WWW-Authenticate` (default `tidegate`). */
  realm?: string;
}

/**
 * Whether a token may read the trail: a `user/` or `system/` scope on exactly `AuditEvent`, without
 * a granular restriction, holding `permission`; never with a patient context.
 * @param ctx - the verified token (src/auth `AccessContext`).
 * @param permission - `r` (read by id) or `s` (search).
 */
export function hasAuditScope(ctx: AccessContext, permission: Permission): boolean {
  if (ctx.patient !== undefined) return false;
  return ctx.scopes.clinical.some((s) => s.context !== 'patient' && s.resourceType === 'AuditEvent' && s.restrictions === undefined && s.permissions.has(permission));
}

function send(res: Response, status: number, body: unknown): void {
  res.status(status).setHeader('Content-Type', FHIR_JSON);
  res.setHeader('Cache-Control', 'no-store');
  res.send(JSON.stringify(body));
}

/** The request's FHIR base: the configured public base, or proxy-aware (src/fhir/base-url.ts). */
const baseUrlOf = (req: Request): string => fhirBaseUrl(req);

/**
 * Builds the router (see module doc).
 * @param opts - see {@link AuditRouterOptions}.
 * @returns An express Router; mount it on the FHIR base (`app.use('/fhir', router)`).
 */
export function auditEventRouter(opts: AuditRouterOptions): Router {
  const r = express.Router({ caseSensitive: true });
  const realm = opts.realm ?? 'tidegate';

  const guard = (permission: Permission) => (req: Request, res: Response, next: NextFunction) => {
    const ctx = res.locals.auth as AccessContext | undefined;
    if (ctx === undefined) {
      if (opts.open === true) return next();
      return sendAuthError(res, new AuthError('missing_token', 'The audit trail needs an access token with an audit scope'), realm);
    }
    if (!hasAuditScope(ctx, permission)) {
      const letter = permission === 's' ? 'rs' : 'r';
      return sendAuthError(res, new AuthError('insufficient_scope', 'Reading the audit trail needs an audit scope', `system/AuditEvent.${letter} user/AuditEvent.${letter}`), realm);
    }
    next();
  };

  const search = (params: Array<[string, string]>, req: Request, res: Response, next: NextFunction): void => {
    (async () => {
      const q = parseAuditQuery(params);
      await opts.trail.flush?.();
      const entries: AuditEvent[] = [];
      let lastSeq = 0;
      let more = false;
      const hints = { ...(q.cursor !== undefined ? { beforeSeq: q.cursor } : {}), ...(q.mayMatchTimes ? { mayMatchTimes: q.mayMatchTimes } : {}) };
      for await (const { seq, event } of opts.trail.newestFirst(hints)) {
        if (q.cursor !== undefined && !(seq > 0 && seq < q.cursor)) continue;
        if (!q.matches(event)) continue;
        if (entries.length === q.count) {
          more = true;
          break;
        }
        entries.push(event);
        lastSeq = seq;
      }
      const base = baseUrlOf(req);
      const qs = (extra: Array<[string, string]>) => new URLSearchParams([...q.params, ...extra]).toString();
      const link = [{ relation: 'self', url: `${base}/AuditEvent${q.params.length > 0 || q.cursor ? `?${qs(q.cursor ? [['_cursor', String(q.cursor)]] : [])}` : ''}` }];
      if (more && lastSeq > 0) link.push({ relation: 'next', url: `${base}/AuditEvent?${qs([['_cursor', String(lastSeq)]])}` });
      send(res, 200, {
        resourceType: 'Bundle',
        type: 'searchset',
        // The whole trail was scanned when there is no next page: the total is then exact.
        ...(more ? {} : { total: entries.length }),
        timestamp: new Date().toISOString(),
        link,
        entry: entries.map((resource) => ({ fullUrl: `${base}/AuditEvent/${resource.id}`, resource, search: { mode: 'match' } })),
      });
    })().catch(next);
  };

  r.get('/AuditEvent', guard('s'), (req, res, next) => {
    const i = req.originalUrl.indexOf('?');
    search(parseSearchQuery(i < 0 ? '' : req.originalUrl.slice(i + 1)), req, res, next);
  });
  r.post('/AuditEvent/_search', guard('s'), express.text({ type: () => true, limit: 65536 }), (req, res, next) => {
    const ct = req.get('content-type') ?? '';
    const body = typeof req.body === 'string' ? req.body : '';
    if (body !== '' && !/^application\/x-www-form-urlencoded\b/i.test(ct)) return next(unsupportedMediaType('POST _search needs Content-Type application/x-www-form-urlencoded'));
    const i = req.originalUrl.indexOf('?');
    search([...parseSearchQuery(i < 0 ? '' : req.originalUrl.slice(i + 1)), ...parseSearchQuery(body)], req, res, next);
  });
  r.get('/AuditEvent/:id', guard('r'), (req, res, next) => {
    (async () => {
      const id = String(req.params['id']);
      if (!FHIR_ID.test(id)) throw notFound('No AuditEvent with this id');
      await opts.trail.flush?.();
      for await (const { event } of opts.trail.newestFirst()) {
        if (event.id === id) return send(res, 200, event);
      }
      throw notFound('No AuditEvent with this id');
    })().catch(next);
  });
  r.all(['/AuditEvent', '/AuditEvent/{*rest}'], () => {
    throw methodNotAllowed('The audit trail is read-only: AuditEvents are written by the node, not through the API');
  });
  r.use((err: unknown, req: Request, res: Response, next: NextFunction) => {
    if (!req.path.startsWith('/AuditEvent')) return next(err);
    const o = err instanceof FhirError ? { status: err.status, outcome: err.outcome } : toOutcome(err);
    send(res, o.status, o.outcome);
  });
  return r;
}
