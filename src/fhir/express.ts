/**
 * Express adapter for {@link FhirService}: routing, body text, headers, and the one error handler
 * that turns anything thrown into an OperationOutcome (https://hl7.org/fhir/R4/http.html).
 */
import express from 'express';
import type { NextFunction, Request, RequestHandler, Response, Router } from 'express';
import type { Logger } from 'pino';
import { FhirService } from './service.ts';
import type { FhirResult } from './service.ts';
import { FhirError, outcome, methodNotAllowed, notImplemented, toOutcome, badRequest, notFound, unsupportedMediaType } from './outcomes.ts';
import { canonicalStringify } from './json.ts';
import { parseSearchQuery } from './search.ts';
import { isKnownResourceType } from './validate.ts';
import { ifModifiedSince } from './preconditions.ts';
import { currentFromService } from '../auth/middleware.ts';
import type { AuthSetup } from '../auth/setup.ts';
import { adminAuth } from '../auth/admin.ts';
import { clientRateLimit, failedAuthRateLimit, fhirBodyReader, noStore, resolveHardening, securityHeaders } from './hardening.ts';
import type { HardeningOptions } from './hardening.ts';
import type { AuditWiring } from '../audit/index.ts';
import { applyProxySettings, fhirBaseUrl } from './base-url.ts';
import type { ProxyOptions } from './base-url.ts';

const FHIR_JSON = 'application/fhir+json; charset=utf-8';

/** Max accepted request body, bytes. */
export const MAX_BODY_BYTES = 16 * 1024 * 1024;

function send(res: Response, result: FhirResult): void {
  res.status(result.status);
  const headers = result.headers;
  for (const k in headers) res.setHeader(k, headers[k]!);
  if (result.body === undefined) {
    res.end();
    return;
  }
  res.setHeader('Content-Type', FHIR_JSON);
  res.send(typeof result.body === 'string' ? result.body : canonicalStringify(result.body));
}

/**
 * The FHIR base URL of a request (base-url.ts `fhirBaseUrl`): the configured `publicBaseUrl`, else
 * `scheme://host/fhir` from the socket and `Host`, or from `X-Forwarded-Proto`/`-Host` when the
 * connecting address is a trusted proxy (`trustProxy`; none by default).
 */
const baseUrlOf = fhirBaseUrl;

/** A URI with a scheme (RFC 3986 §3.1), i.e. already absolute. */
const ABSOLUTE_URI = /^[A-Za-z][A-Za-z0-9+.-]*:/;

/**
 * The result with a relative `Location` or `Content-Location` (`Patient/1/_history/2.eca343c4`,
 * relative to the server base, as the service and Bundle code make it) made absolute:
 * `[base]/[type]/[id]/_history/[vid]` (https://hl7.org/fhir/R4/http.html#create, #update). A
 * client resolves a relative header against the request URL (RFC 7231 §7.1.2), which for
 * `PUT [base]/Patient/1` would give `[base]/Patient/Patient/1/…`.
 * @param result - what a handler answered.
 * @param baseUrl - the request's FHIR base URL ({@link baseUrlOf}), without a trailing `/`.
 */
function withAbsoluteLocation(result: FhirResult, baseUrl: string): FhirResult {
  let headers = result.headers;
  for (const name of ['Location', 'Content-Location']) {
    const v = headers[name];
    if (v !== undefined && !ABSOLUTE_URI.test(v)) headers = { ...headers, [name]: `${baseUrl}/${v.replace(/^\/+/, '')}` };
  }
  return headers === result.headers ? result : { ...result, headers };
}

function header(req: Request, name: string): string | undefined {
  const v = req.get(name);
  return v === undefined || v === '' ? undefined : v;
}

/** The raw (percent-encoded) query string of a request, without `?`. */
function rawQuery(req: Request): string {
  const i = req.originalUrl.indexOf('?');
  return i < 0 ? '' : req.originalUrl.slice(i + 1);
}

const FORM_MEDIA = /^application\/x-www-form-urlencoded\b/i;

/** The JSON media types a client may ask for (https://hl7.org/fhir/R4/http.html#mime-type). */
const JSON_MEDIA = ['application/fhir+json', 'application/json', 'application/json+fhir'];
/** `_format` values naming a JSON form: the media types and the short `json`. */
const JSON_FORMATS = new Set([...JSON_MEDIA, 'json']);

/**
 * True when some parameter name of a raw query may be `_format`: a name containing `format`, or
 * one with a `%` escape or `+` (which could spell it encoded). Most queries have neither, and are
 * then not parsed a second time here.
 */
function mayNameFormat(query: string): boolean {
  if (query === '') return false;
  let start = 0;
  while (start <= query.length) {
    let end = query.indexOf('&', start);
    if (end < 0) end = query.length;
    const eq = query.indexOf('=', start);
    const name = query.slice(start, eq < 0 || eq > end ? end : eq);
    if (name.includes('format') || name.includes('%') || name.includes('+')) return true;
    start = end + 1;
  }
  return false;
}

/** Answers of `req.accepts(JSON_MEDIA)` by `Accept` value (clients send a handful of values). */
const acceptVerdicts = new Map<string, boolean>();
/** Most `Accept` values remembered; the map starts over when full. */
const MAX_ACCEPT_VERDICTS = 256;

/** True when the `Accept` header allows a JSON form (RFC 9110 §12.5.1, negotiated by express's `req.accepts`). */
function acceptsJson(req: Request, accept: string): boolean {
  const known = acceptVerdicts.get(accept);
  if (known !== undefined) return known;
  const ok = req.accepts(JSON_MEDIA) !== false;
  if (accept.length > 512) return ok; // not worth keeping
  if (acceptVerdicts.size >= MAX_ACCEPT_VERDICTS) acceptVerdicts.clear();
  acceptVerdicts.set(accept, ok);
  return ok;
}

/**
 * Refuses a request whose `_format` (which overrides `Accept`) or `Accept` allows no JSON form
 * with 406 and an OperationOutcome (JSON): this node answers only JSON
 * (https://hl7.org/fhir/R4/http.html#mime-type). No `Accept`, wildcard types and the JSON
 * types pass. A `+` in `_format` left unencoded in the URL (read as a space) counts as `+`.
 * @throws {@link FhirError} 406 `not-supported`.
 */
function requireJsonAnswer(req: Request): void {
  const query = rawQuery(req);
  const formats = mayNameFormat(query) ? parseSearchQuery(query).filter(([n]) => n === '_format').map(([, v]) => v) : [];
  if (formats.length > 0) {
    for (const f of formats) {
      const media = f.split(';')[0]!.trim().replace(/ /g, '+').toLowerCase();
      if (!JSON_FORMATS.has(media)) throw notAcceptable(`_format ${media.slice(0, 64)} is not supported: this server answers only JSON (_format=json or application/fhir+json)`);
    }
    return;
  }
  const accept = header(req, 'accept');
  if (accept !== undefined && !acceptsJson(req, accept)) {
    throw notAcceptable('The Accept header allows no JSON form: this server answers only JSON (application/fhir+json or application/json)');
  }
}

/**
 * True when a request may carry a body: `Transfer-Encoding` or `Content-Length` is present
 * (RFC 9112 §6.3, body-parser's `hasBody`), or a `Content-Type` is (whose charset the body reader
 * checks even without a body). Other requests (most GETs) skip the body reader.
 */
function mayHaveBody(req: Request): boolean {
  const h = req.headers;
  return h['transfer-encoding'] !== undefined || h['content-length'] !== undefined || h['content-type'] !== undefined;
}

function notAcceptable(diagnostics: string): FhirError {
  return new FhirError(406, outcome('error', 'not-supported', diagnostics));
}

/** Search parameters of `POST …/_search`: the URL's plus the form body's (https://hl7.org/fhir/R4/http.html#search). */
function formSearchParams(req: Request): Array<[string, string]> {
  const ct = header(req, 'content-type');
  const text = typeof req.body === 'string' ? req.body : '';
  if (text !== '' && (!ct || !FORM_MEDIA.test(ct))) throw unsupportedMediaType('POST _search needs Content-Type application/x-www-form-urlencoded');
  return [...parseSearchQuery(rawQuery(req)), ...parseSearchQuery(text)];
}

/**
 * Maps anything thrown while handling a request to a status and an OperationOutcome. Errors of the
 * HTTP layer itself (body parsing, decompression, path decoding) are the client's: 4xx, never 500.
 */
function edgeError(err: unknown): { status: number; outcome: ReturnType<typeof toOutcome>['outcome'] } {
  const e = err as { type?: string; status?: number; statusCode?: number; code?: string; limit?: number };
  if (e?.type === 'entity.too.large') return { status: 413, outcome: toOutcome(badRequest(`Body larger than ${e.limit ?? MAX_BODY_BYTES} bytes`)).outcome };
  if (err instanceof URIError) return toOutcome(badRequest('Malformed percent-encoding in the URL'));
  if (typeof e?.code === 'string' && (e.code.startsWith('Z_') || e.code.startsWith('ERR__ERROR_FORMAT'))) return toOutcome(badRequest('Request body does not match its Content-Encoding'));
  // The resource store could not make the write durable (src/store/pg-store.ts): nothing was acknowledged.
  if (e?.code === 'ERR_STORE_UNAVAILABLE') return { status: 503, outcome: outcome('error', 'transient', 'The resource store is unavailable; the request was not completed. Try again later.') };
  const status = e?.status ?? e?.statusCode;
  if (!(err instanceof FhirError) && typeof status === 'number' && status >= 400 && status < 500) {
    if (status === 415) return toOutcome(unsupportedMediaType('Unsupported Content-Encoding or media type'));
    return toOutcome(badRequest('Unreadable request'));
  }
  return toOutcome(err);
}

/**
 * The shape of a request path for logs: resource types (`Patient`), operation and keyword segments
 * (`$validate`, `_history`, `metadata`) are kept, every other segment (ids, version ids, whatever a
 * client typed there — possibly an MRN or an SSN) becomes `*`. Logs never carry PHI.
 * @param path - `req.path`, e.g. `/Patient/123/_history/2`.
 * @returns e.g. `/Patient/*` + `/_history/*`.
 */
function pathShape(path: string): string {
  return path
    .split('/')
    .map((seg) => (seg === '' || isKnownResourceType(seg) || /^[$_][A-Za-z-]{1,64}$/.test(seg) || seg === 'metadata' ? seg : '*'))
    .join('/');
}

/**
 * The operations this router serves, by level, with the method each is invoked with
 * (https://hl7.org/fhir/R4/operations.html). `ConceptMap/$translate` is served, when a mapping is
 * loaded, by a router mounted before this one (src/mapping).
 */
const SERVED_OPERATIONS: { type: Record<string, string>; instance: Record<string, string> } = {
  type: { $validate: 'POST' },
  instance: { $conflicts: 'GET', '$resolve-conflict': 'POST' },
};

/**
 * Refuses an operation (`[type]/$op`, `[type]/[id]/$op`) that is not served, with 501, or that is
 * reached with a method it is not invoked with, with 405 and `Allow`; both with an OperationOutcome. Without
 * it `GET [type]/$everything` would be a read of the id `$everything` (400 "Invalid resource id").
 * Other requests, and a served operation with its method, go on to the routes.
 * @throws {@link FhirError} 501 or 405 `not-supported` (to `next`).
 */
function operationGate(req: Request, res: Response, next: NextFunction): void {
  const op = String(req.params['op']);
  if (!op.startsWith('$')) {
    next();
    return;
  }
  const method = req.method === 'HEAD' ? 'GET' : req.method;
  const served = (req.params['id'] === undefined ? SERVED_OPERATIONS.type : SERVED_OPERATIONS.instance)[op];
  if (served === undefined) next(notImplemented(`Operation ${op} is not supported`));
  else if (served !== method) {
    res.setHeader('Allow', served); // RFC 9110 §15.5.6: a 405 lists the allowed methods
    next(methodNotAllowed(`Operation ${op} is invoked with ${served}, not ${req.method}`));
  }
  else next();
}

/**
 * Builds the `/fhir` router.
 * @param service - the node's FHIR interactions.
 * @param log - pino logger; request bodies are never logged (PHI).
 * @param hardening - body size and JSON limits of the body reader (hardening.ts `fhirBodyReader`).
 */
export function fhirRouter(service: FhirService, log: Logger, hardening: HardeningOptions = {}): Router {
  const r = express.Router();
  const readBody = fhirBodyReader(resolveHardening(hardening));
  // One layer for both: the answer must be JSON, then the body (when there may be one) is read.
  r.use((req, res, next) => {
    try {
      requireJsonAnswer(req);
    } catch (err) {
      next(err);
      return;
    }
    if (mayHaveBody(req)) readBody(req, res, next);
    else next();
  });
  // An answer leaves only once everything stored so far is durable (FhirServiceOptions.durable).
  const settle = (req: Request, res: Response, next: NextFunction, answer: FhirResult) => {
    const result = withAbsoluteLocation(answer, baseUrlOf(req));
    const barrier = service.durable?.();
    if (barrier) barrier.then(() => send(res, result), next);
    else send(res, result);
  };
  const h = (fn: (req: Request) => FhirResult) => (req: Request, res: Response, next: NextFunction) => {
    let result: FhirResult;
    try {
      result = fn(req);
    } catch (err) {
      next(err);
      return;
    }
    settle(req, res, next, result);
  };
  const ha = (fn: (req: Request) => Promise<FhirResult>) => (req: Request, res: Response, next: NextFunction) => {
    fn(req).then((result) => settle(req, res, next, result), next);
  };
  const p = (req: Request, name: string): string => String(req.params[name]);
  const writeReq = (req: Request) => ({
    type: p(req, 'type'),
    text: typeof req.body === 'string' ? req.body : '',
    contentType: header(req, 'content-type'),
    // Conditional headers are passed even when empty: an empty one is 400 (preconditions.ts), not absent.
    ifMatch: req.get('if-match'),
    ifNoneMatch: req.get('if-none-match'),
    // An empty If-None-Exist is still conditional: it has no criteria, so it is 400, not a plain create.
    ifNoneExist: req.get('if-none-exist'),
    prefer: header(req, 'prefer'),
    author: header(req, 'x-tidegate-author'),
  });
  const isOperationName = (s: string) => s.startsWith('$') || s.startsWith('_');
  const needCriteria = (req: Request, what: string): string => {
    const q = rawQuery(req);
    if (q === '') throw badRequest(`${what} on a type needs search criteria (${req.method} [type]?criteria)`);
    return q;
  };

  r.all(['/:type/:op', '/:type/:id/:op'], operationGate);
  r.get('/metadata', h((req) => service.metadata(baseUrlOf(req))));
  // RFC 9110 §15.5.6: a 405 carries Allow, listing the methods served.
  r.all('/metadata', (_req: Request, res: Response, next: NextFunction) => {
    res.setHeader('Allow', 'GET');
    next(methodNotAllowed('Only GET is allowed on /metadata'));
  });
  r.use((req: Request, res: Response, next: NextFunction) => {
    if (['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH'].includes(req.method)) {
      next();
      return;
    }
    res.setHeader('Allow', 'GET, POST, PUT, DELETE, PATCH');
    next(methodNotAllowed(`Method ${req.method} is not allowed`));
  });
  r.post('/_search', ha((req) => service.searchAll(formSearchParams(req), baseUrlOf(req), header(req, 'prefer'))));
  r.get('/:type', ha((req) => {
    if (isOperationName(p(req, 'type'))) throw notImplemented(`Operation ${p(req, 'type')} is not supported`);
    return service.search(p(req, 'type'), parseSearchQuery(rawQuery(req)), baseUrlOf(req), header(req, 'prefer'));
  }));
  r.post('/:type/_search', ha((req) => service.search(p(req, 'type'), formSearchParams(req), baseUrlOf(req), header(req, 'prefer'))));
  r.post('/:type/:op', h((req) => {
    if (p(req, 'op') === '$validate') return service.validate(p(req, 'type'), typeof req.body === 'string' ? req.body : '', header(req, 'content-type'));
    throw notFound(`No FHIR interaction at ${req.path}`);
  }));
  r.post('/:type', h((req) => {
    if (isOperationName(p(req, 'type'))) throw notImplemented(`Operation ${p(req, 'type')} is not supported`);
    return service.create(writeReq(req));
  }));
  r.put('/:type', h((req) => service.conditionalUpdate({ ...writeReq(req), query: needCriteria(req, 'PUT') })));
  r.delete('/:type', h((req) => service.conditionalDelete(p(req, 'type'), needCriteria(req, 'DELETE'), header(req, 'x-tidegate-author'), header(req, 'prefer'))));
  r.patch('/:type', h(() => { throw notImplemented('Conditional PATCH is not supported; PATCH [type]/[id]'); }));
  r.post('/', ha((req) => service.bundle({
    text: typeof req.body === 'string' ? req.body : '',
    contentType: header(req, 'content-type'),
    prefer: header(req, 'prefer'),
    author: header(req, 'x-tidegate-author'),
    baseUrl: baseUrlOf(req),
  })));
  r.get('/', ha((req) => service.searchAll(parseSearchQuery(rawQuery(req)), baseUrlOf(req), header(req, 'prefer'))));
  r.get('/:type/_history', h(() => { throw notImplemented('Type-level history is not supported; GET [type]/[id]/_history'); }));
  // _summary/_elements of a read, vread or history (subset.ts).
  const shape = (req: Request) => ({ query: parseSearchQuery(rawQuery(req)), prefer: header(req, 'prefer') });
  r.get('/:type/:id', h((req) => service.read(p(req, 'type'), p(req, 'id'), req.get('if-none-match'), ifModifiedSince(req.get('if-modified-since')), shape(req))));
  r.put('/:type/:id', h((req) => service.update({ ...writeReq(req), id: p(req, 'id') })));
  r.delete('/:type/:id', h((req) => service.delete(p(req, 'type'), p(req, 'id'), header(req, 'x-tidegate-author'), req.get('if-match'), header(req, 'prefer'))));
  r.patch('/:type/:id', h((req) => service.patch({ ...writeReq(req), id: p(req, 'id') })));
  r.get('/:type/:id/_history', h((req) => service.history(p(req, 'type'), p(req, 'id'), baseUrlOf(req), shape(req))));
  r.get('/:type/:id/_history/:vid', h((req) => service.vread(p(req, 'type'), p(req, 'id'), p(req, 'vid'), shape(req))));
  r.post('/:type/:id/:op', h((req) => {
    if (p(req, 'op') === '$resolve-conflict') {
      return service.resolveConflict(p(req, 'type'), p(req, 'id'), { text: typeof req.body === 'string' ? req.body : '', contentType: header(req, 'content-type'), author: header(req, 'x-tidegate-author'), prefer: header(req, 'prefer') });
    }
    throw notFound(`No FHIR interaction at ${req.path}`);
  }));
  r.get('/:type/:id/:op', h((req) => {
    if (p(req, 'op') === '$conflicts') return service.conflicts(p(req, 'type'), p(req, 'id'));
    // Unserved `$name` operations are answered by operationGate; anything else is no interaction.
    throw notFound(`No FHIR interaction at ${req.path}`);
  }));
  r.all('/{*rest}', h((req) => {
    if (['GET', 'POST', 'PUT', 'DELETE', 'PATCH'].includes(req.method)) throw notFound(`No FHIR interaction at ${req.path}`);
    throw methodNotAllowed(`Method ${req.method} is not allowed`);
  }));
  r.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    const result = edgeError(err);
    // A server failure is an error; a refusal of the client's request (4xx, 501 not supported) is not.
    const fields = { err: { name: (err as Error)?.name, code: (err as { code?: string })?.code }, method: req.method, path: pathShape(req.path), status: result.status };
    if (result.status >= 500 && result.status !== 501) log.error(fields, 'FHIR request failed');
    else log.info(fields, 'FHIR request refused');
    send(res, { status: result.status, headers: {}, body: result.outcome });
  });
  return r;
}

/**
 * The headers a middleware sets regardless of the request (helmet's, as hardening.ts
 * `securityHeaders` configures it: no nonces, nothing taken from the request), captured once and
 * set in one loop per answer instead of through helmet's chain of 13 middlewares. The capture runs
 * twice with different stand-in requests; unless both set the same headers synchronously and call
 * `next()` without an error, the middleware itself is returned and runs per request as before.
 * @param mw - e.g. `securityHeaders()`.
 * @returns A middleware setting the same headers (and removing the same ones).
 */
export function precomputedHeaders(mw: RequestHandler): RequestHandler {
  const capture = (method: string, url: string): { set: Array<[string, string]>; removed: string[] } | undefined => {
    const set: Array<[string, string]> = [];
    const removed: string[] = [];
    let ok = false;
    const res = {
      setHeader: (name: string, value: unknown) => {
        if (typeof value !== 'string') throw new TypeError('not a fixed string header');
        set.push([name, value]);
        return res;
      },
      removeHeader: (name: string) => {
        removed.push(name);
      },
    };
    try {
      mw({ method, url, headers: {} } as Request, res as unknown as Response, (err?: unknown) => {
        ok = err === undefined;
      });
    } catch {
      return undefined;
    }
    return ok ? { set, removed } : undefined;
  };
  const a = capture('GET', '/fhir/Patient/a');
  const b = capture('POST', '/other?x=1');
  if (a === undefined || b === undefined || JSON.stringify(a) !== JSON.stringify(b)) return mw;
  const { set, removed } = a;
  return (_req: Request, res: Response, next: NextFunction) => {
    for (let i = 0; i < set.length; i++) res.setHeader(set[i]![0], set[i]![1]);
    for (let i = 0; i < removed.length; i++) res.removeHeader(removed[i]!);
    next();
  };
}

/**
 * An express application serving the FHIR API under `/fhir` and a liveness probe at `/healthz`.
 * @param service - the node's FHIR interactions.
 * @param log - pino logger.
 * @param health - optional readiness details merged into the `/healthz` JSON.
 * @param extra - optional Router mounted at the root before `/fhir` (the node's ops routes:
 *   `/metrics`, `/readyz`, `/admin/*`, see src/ops/router.ts).
 * @param auth - SMART on FHIR authorization (src/auth, docs/security.md): when given, every `/fhir`
 *   request needs a Bearer token with the scopes of its interaction (401/403 with an
 *   OperationOutcome and `WWW-Authenticate` otherwise), `/fhir/.well-known/smart-configuration` is
 *   published and, with Backend Services configured, `POST /auth/token` issues tokens.
 * @param audit - the hash-chained audit trail (src/audit/wiring.ts `auditWiring`): one AuditEvent per
 *   FHIR interaction, auth refusals through the auth decision hook, and `GET /fhir/AuditEvent`.
 * @param hardening - hostile-input limits and the rate limit (hardening.ts, docs/security.md
 *   "Hostile input"); security headers (helmet) and `Cache-Control: no-store` are always set.
 *   With `trustProxy` / `publicBaseUrl` (base-url.ts, node config `http`): which proxies are
 *   trusted for `X-Forwarded-*` (links, client address of rate limits, audit and breach
 *   detection), and a fixed public FHIR base for links.
 * @param operations - optional Router of extra operations mounted under `/fhir` after authorization,
 *   audit and rate limits, before the FHIR router (the mapping's `ConceptMap/$translate`).
 * @throws RangeError for an invalid `trustProxy` or `publicBaseUrl` (base-url.ts).
 */
export function fhirApp(service: FhirService, log: Logger, health: () => object = () => ({}), extra?: Router, auth?: AuthSetup, audit?: AuditWiring, hardening: HardeningOptions & ProxyOptions = {}, operations?: Router): express.Express {
  const limits = resolveHardening(hardening);
  const app = express();
  app.disable('x-powered-by');
  applyProxySettings(app, hardening);
  if (hardening.trustProxy === true) log.warn('http.trustProxy is true: every address is trusted as a proxy, so X-Forwarded-For (rate limits, audit client address) is the client\'s to set; use a hop count or the proxy addresses unless only the proxy can reach this node');
  app.use(precomputedHeaders(securityHeaders()));
  app.use('/fhir', noStore());
  app.set('etag', false);
  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok', ...health() });
  });
  // The operations endpoints (src/ops, shred, reload, security) need an admin token when auth is on.
  if (auth) app.use(['/admin', '/metrics'], adminAuth(auth.verifier));
  if (extra) app.use(extra);
  if (auth) {
    app.get('/fhir/.well-known/smart-configuration', auth.discovery);
    if (limits.rateLimit) {
      // counts 401/403 per IP: a flood of bad tokens is refused before verification
      const failed = failedAuthRateLimit(limits.rateLimit);
      app.use('/fhir', failed);
      app.use('/auth', failed);
    }
    if (auth.tokenEndpoint) app.post('/auth/token', ...auth.tokenEndpoint);
    app.use('/fhir', auth.middleware({ current: currentFromService(service), log, maxBodyBytes: limits.maxBodyBytes, bodyReader: fhirBodyReader(limits), ...(audit ? { onDecision: audit.onDecision } : {}) }));
  }
  // per client: the token's client id (res.locals.auth) when authenticated, else the IP
  if (limits.rateLimit) app.use('/fhir', clientRateLimit(limits.rateLimit));
  if (audit) app.use('/fhir', audit.middleware, audit.router);
  if (operations) app.use('/fhir', operations);
  app.use('/fhir', fhirRouter(service, log, limits));
  // Anything else: an OperationOutcome, not Express's HTML page.
  app.use((req, res) => {
    res.status(404).type('application/fhir+json').send(canonicalStringify(toOutcome(notFound(`Nothing at ${req.path}; the FHIR API is under /fhir`)).outcome));
  });
  return app;
}
