/**
 * Hostile-input defences of the HTTP edge (docs/security.md "Hostile input"):
 * - {@link fhirBodyReader}: request bodies bounded in bytes (also after decompression), UTF-8 only
 *   (invalid bytes refused, never replaced with U+FFFD), and JSON bodies checked against
 *   structural limits (limits.ts) before anything parses them;
 * - {@link securityHeaders}: helmet, configured for a JSON API;
 * - {@link clientRateLimit} and {@link failedAuthRateLimit}: per-client request budgets (429);
 * - {@link createFhirServer}: the HTTP(S) server with header and request timeouts, and
 *   OperationOutcome answers for what Node's HTTP parser refuses itself (408, 431, 400).
 *
 * Every refusal is a 4xx with an OperationOutcome (https://hl7.org/fhir/R4/http.html#2.21.0.12)
 * and happens before the FHIR interaction runs, so nothing is merged, stored or gossiped.
 */
import { isUtf8 } from 'node:buffer';
import { createServer as createHttpServer, STATUS_CODES } from 'node:http';
import type { RequestListener, Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import express from 'express';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import helmet from 'helmet';
import { ipKeyGenerator, rateLimit } from 'express-rate-limit';
import { canonicalStringify } from './json.ts';
import { FhirError, outcome, unsupportedMediaType } from './outcomes.ts';
import type { IssueCode } from './outcomes.ts';
import { DEFAULT_JSON_LIMITS, scanJsonText } from './limits.ts';
import type { JsonLimitIssue, JsonLimits } from './limits.ts';
import type { ServerTls } from '../transport/tls.ts';

/** Default most request-body bytes: 16 MiB (after any Content-Encoding is undone). */
export const DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024;

/** A per-client request budget: at most `limit` requests per `windowMs` (fixed window). */
export interface RateLimitOptions {
  /** Window length, ms. */
  windowMs: number;
  /** Requests one client may make per window; more are answered 429. */
  limit: number;
  /**
   * Answers 401/403 one IP address may receive per window before it is answered 429 without its
   * token being verified (only with authorization configured). Default `limit`.
   */
  failedAuthLimit?: number;
}

/** Options of the FHIR edge's hostile-input defences; every field optional. */
export interface HardeningOptions {
  /** Most request-body bytes; more is 413. Default {@link DEFAULT_MAX_BODY_BYTES}. */
  maxBodyBytes?: number;
  /** Structural limits of JSON bodies (limits.ts); default {@link DEFAULT_JSON_LIMITS}. */
  json?: Partial<JsonLimits>;
  /** Per-client rate limit of `/fhir` (and `/auth`); absent or `false`: none. */
  rateLimit?: RateLimitOptions | false;
}

/** {@link HardeningOptions} with every default filled in. */
export interface ResolvedHardening {
  maxBodyBytes: number;
  json: JsonLimits;
  rateLimit: RateLimitOptions | false;
}

/**
 * Fills in the defaults of {@link HardeningOptions}.
 * @param opts - partial options.
 * @returns Complete options.
 * @throws RangeError when a limit is not a positive integer.
 */
export function resolveHardening(opts: HardeningOptions = {}): ResolvedHardening {
  const r: ResolvedHardening = {
    maxBodyBytes: opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES,
    json: { ...DEFAULT_JSON_LIMITS, ...opts.json },
    rateLimit: opts.rateLimit ?? false,
  };
  const positive = (name: string, v: number) => {
    if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer`);
  };
  positive('maxBodyBytes', r.maxBodyBytes);
  positive('json.maxDepth', r.json.maxDepth);
  positive('json.maxArrayItems', r.json.maxArrayItems);
  positive('json.maxStringLength', r.json.maxStringLength);
  if (r.rateLimit) {
    positive('rateLimit.windowMs', r.rateLimit.windowMs);
    positive('rateLimit.limit', r.rateLimit.limit);
    if (r.rateLimit.failedAuthLimit !== undefined) positive('rateLimit.failedAuthLimit', r.rateLimit.failedAuthLimit);
  }
  return r;
}

const JSON_MEDIA = /^application\/(?:[a-z0-9.+-]*\+)?json\s*(?:;|$)/i;
/** Set on a request whose body {@link fhirBodyReader} has read and checked. */
const CHECKED = Symbol('tidegate.bodyChecked');

/** The issue code and status of each structural refusal. */
const LIMIT_ISSUE: Record<JsonLimitIssue['code'], { status: number; code: IssueCode }> = {
  malformed: { status: 400, code: 'structure' },
  depth: { status: 400, code: 'too-long' },
  'array-length': { status: 400, code: 'too-long' },
  'string-length': { status: 400, code: 'too-long' },
  'duplicate-key': { status: 400, code: 'structure' },
  'forbidden-key': { status: 400, code: 'structure' },
  'unpaired-surrogate': { status: 400, code: 'structure' },
};

/** The charset parameter of a Content-Type, lower-cased, or undefined. */
function charsetOf(contentType: string | undefined): string | undefined {
  if (!contentType) return undefined;
  const m = /;\s*charset\s*=\s*"?([^";\s]+)"?/i.exec(contentType);
  return m?.[1]?.toLowerCase();
}

/**
 * The request-body reader of the FHIR API (used by the FHIR router and by the authorization
 * middleware, whichever reads first; the other then skips). It reads the body as bytes (undoing
 * gzip/deflate/br, the limit applying to the decoded bytes), and:
 * - refuses a Content-Type charset other than UTF-8 with 415 (FHIR JSON is UTF-8,
 *   https://hl7.org/fhir/R4/json.html);
 * - refuses more than `maxBodyBytes` with 413 (body-parser's `entity.too.large`);
 * - refuses bytes that are not valid UTF-8 with 400 (express.text would replace them with U+FFFD,
 *   silently changing what is stored);
 * - for JSON media types (`application/json`, `application/fhir+json`, `…+json`), refuses with
 *   400 what {@link scanJsonText} refuses (depth, array and string lengths, duplicate or
 *   `__proto__`/`constructor`/`prototype` member names, malformed JSON).
 * On success `req.body` is the body text (undefined without a body).
 *
 * @param opts - `maxBodyBytes` and `json` limits (see {@link ResolvedHardening}).
 * @returns An express middleware; it passes a {@link FhirError} (or body-parser's error) to `next`.
 */
export function fhirBodyReader(opts: Pick<ResolvedHardening, 'maxBodyBytes' | 'json'>): RequestHandler {
  const raw = express.raw({ type: () => true, limit: opts.maxBodyBytes });
  return (req: Request, res: Response, next: NextFunction) => {
    if ((req as unknown as Record<symbol, unknown>)[CHECKED]) {
      next();
      return;
    }
    const contentType = req.headers['content-type'];
    const charset = charsetOf(contentType);
    if (charset !== undefined && charset !== 'utf-8' && charset !== 'utf8') {
      next(unsupportedMediaType('Request bodies must be UTF-8 (charset=utf-8)'));
      return;
    }
    raw(req, res, (err?: unknown) => {
      if (err) {
        next(err);
        return;
      }
      (req as unknown as Record<symbol, unknown>)[CHECKED] = true;
      const body: unknown = req.body;
      let text: string;
      if (typeof body === 'string') {
        // read as text by an earlier parser (an app mounting its own in front): check its JSON still
        text = body;
      } else if (Buffer.isBuffer(body)) {
        if (!isUtf8(body)) {
          req.body = undefined;
          next(new FhirError(400, outcome('error', 'invalid', 'Request body is not valid UTF-8')));
          return;
        }
        text = body.toString('utf8');
        req.body = text;
      } else {
        req.body = undefined;
        next();
        return;
      }
      if (contentType !== undefined && JSON_MEDIA.test(contentType)) {
        const issue = scanJsonText(text, opts.json);
        if (issue) {
          req.body = undefined;
          const { status, code } = LIMIT_ISSUE[issue.code];
          next(new FhirError(status, outcome('error', code, issue.message)));
          return;
        }
      }
      next();
    });
  };
}

/**
 * Security headers through helmet, for a JSON API (OWASP REST Security Cheat Sheet, "Security
 * headers"): a Content-Security-Policy of `default-src 'none'; frame-ancestors 'none'` (nothing in
 * a FHIR JSON answer loads anything), `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`,
 * `Referrer-Policy: no-referrer`, `Strict-Transport-Security` (1 year; browsers ignore it over
 * plain HTTP), `Cross-Origin-Resource-Policy: same-origin`, `Cross-Origin-Opener-Policy:
 * same-origin`; no `X-Powered-By`.
 * @returns An express middleware.
 */
export function securityHeaders(): RequestHandler {
  return helmet({
    contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } },
    xFrameOptions: { action: 'deny' },
    strictTransportSecurity: { maxAge: 31_536_000, includeSubDomains: true },
    referrerPolicy: { policy: 'no-referrer' },
    crossOriginResourcePolicy: { policy: 'same-origin' },
    crossOriginOpenerPolicy: { policy: 'same-origin' },
  }) as RequestHandler;
}

/**
 * `Cache-Control: no-store` on every answer it sees: FHIR answers carry PHI, which no shared or
 * browser cache should keep (RFC 9111 §5.2.2.5). Conditional reads (`If-None-Match` → 304) still work.
 * @returns An express middleware.
 */
export function noStore(): RequestHandler {
  return (_req, res, next) => {
    res.setHeader('Cache-Control', 'no-store');
    next();
  };
}

const FHIR_JSON = 'application/fhir+json; charset=utf-8';

function throttled(req: Request, res: Response, windowMs: number, what: string): void {
  const info = (req as Request & { rateLimit?: { resetTime?: Date } }).rateLimit;
  const seconds = info?.resetTime ? Math.max(1, Math.ceil((info.resetTime.getTime() - Date.now()) / 1000)) : Math.ceil(windowMs / 1000);
  res.setHeader('Retry-After', String(seconds));
  res.status(429).type(FHIR_JSON).send(canonicalStringify(outcome('error', 'throttled', `${what}; retry after ${seconds} s`)));
}

/** The rate-limit key of a request: the token's client id when authenticated, else the IP (IPv6 by /56). */
function clientKey(req: Request, res: Response): string {
  const auth = res.locals.auth as { clientId?: string } | undefined;
  if (auth?.clientId) return `client:${auth.clientId}`;
  return `ip:${ipKeyGenerator(req.ip ?? req.socket.remoteAddress ?? 'unknown')}`;
}

/**
 * Per-client rate limit (express-rate-limit, fixed window in memory): at most `limit` requests per
 * `windowMs` for each client, where the client is the SMART token's client id when the request is
 * authenticated (`res.locals.auth`, set by src/auth; mount after it) and the IP address otherwise.
 * Over the budget: 429 with an OperationOutcome (`throttled`) and `Retry-After` in seconds
 * (RFC 6585 §4, RFC 9110 §10.2.3); `RateLimit` headers of draft-ietf-httpapi-ratelimit-headers-07.
 * @param opts - window and limit.
 * @returns An express middleware.
 */
export function clientRateLimit(opts: RateLimitOptions): RequestHandler {
  return rateLimit({
    windowMs: opts.windowMs,
    limit: opts.limit,
    standardHeaders: 'draft-7',
    legacyHeaders: false,
    keyGenerator: clientKey,
    handler: (req, res) => throttled(req, res, opts.windowMs, 'Too many requests from this client'),
  });
}

/**
 * Rate limit of failed authorizations, mounted before the authorization middleware: counts only
 * answers 401 and 403, per IP address; once an address has had `failedAuthLimit` (default
 * `limit`) in a window, its requests are answered 429 before any token is verified. It bounds
 * what a flood of bad tokens costs; breach detection (src/security) alerts on the same bursts.
 * @param opts - window and limits.
 * @returns An express middleware.
 */
export function failedAuthRateLimit(opts: RateLimitOptions): RequestHandler {
  return rateLimit({
    windowMs: opts.windowMs,
    limit: opts.failedAuthLimit ?? opts.limit,
    standardHeaders: false,
    legacyHeaders: false,
    skipSuccessfulRequests: true,
    requestWasSuccessful: (_req, res) => res.statusCode !== 401 && res.statusCode !== 403,
    keyGenerator: (req) => `ip:${ipKeyGenerator(req.ip ?? req.socket.remoteAddress ?? 'unknown')}`,
    handler: (req, res) => throttled(req, res, opts.windowMs, 'Too many failed authorizations from this address'),
  });
}

/** Timeouts of the HTTP server, ms (Node's `http.createServer` options). */
export interface HttpTimeouts {
  /** Time to receive the complete request headers; 408 after. Default 20,000. */
  headersTimeoutMs?: number;
  /** Time to receive the complete request (headers and body); 408 after. Default 120,000. */
  requestTimeoutMs?: number;
  /** Idle time of a kept-alive connection between requests. Default 5,000 (Node's). */
  keepAliveTimeoutMs?: number;
}

/** Defaults of {@link HttpTimeouts}. */
export const DEFAULT_HTTP_TIMEOUTS: Readonly<Required<HttpTimeouts>> = Object.freeze({ headersTimeoutMs: 20_000, requestTimeoutMs: 120_000, keepAliveTimeoutMs: 5_000 });

/** Options of {@link createFhirServer}. */
export interface FhirServerOptions extends HttpTimeouts {
  /** Serve HTTPS with this certificate (transport/tls.ts `readServerTls`); absent: plain HTTP. */
  tls?: ServerTls | undefined;
}

function rawOutcomeResponse(status: number, code: IssueCode, text: string): string {
  const body = canonicalStringify(outcome('error', code, text));
  return `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nContent-Type: ${FHIR_JSON}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}

/**
 * Answers what Node's HTTP parser refuses before express sees a request (server `clientError`):
 * 408 after a header or request timeout, 431 for oversized headers, 400 for anything else it
 * cannot parse, each with an OperationOutcome, then closes the connection. A connection whose
 * answer has started, or that is no longer writable, is just destroyed.
 */
function onClientError(err: Error & { code?: string }, socket: Socket): void {
  const started = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true;
  if (!socket.writable || started || err.code === 'ECONNRESET') {
    socket.destroy();
    return;
  }
  let response: string;
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') response = rawOutcomeResponse(408, 'timeout', 'The request was not received in time');
  else if (err.code === 'HPE_HEADER_OVERFLOW') response = rawOutcomeResponse(431, 'too-long', 'Request headers too large');
  else response = rawOutcomeResponse(400, 'structure', 'Malformed HTTP request');
  socket.end(response);
  // a client that does not read its answer does not keep the socket
  socket.setTimeout(2000, () => socket.destroy());
}

/**
 * Creates the node's HTTP server (HTTPS with `tls`) for an express app, with
 * `headersTimeout`/`requestTimeout` (slow clients: Slowloris, slow bodies) checked every
 * `min(1000, headersTimeoutMs / 2)` ms, and {@link onClientError} answers. Not listening yet.
 *
 * @param app - the request listener (an express app).
 * @param opts - timeouts and TLS.
 * @returns The server.
 * @throws RangeError when a timeout is not a positive integer or `headersTimeoutMs` exceeds `requestTimeoutMs`.
 */
export function createFhirServer(app: RequestListener, opts: FhirServerOptions = {}): Server {
  const t = { ...DEFAULT_HTTP_TIMEOUTS, ...Object.fromEntries(Object.entries(opts).filter(([k, v]) => k !== 'tls' && v !== undefined)) } as Required<HttpTimeouts>;
  for (const [k, v] of Object.entries(t)) if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`${k} must be a positive integer (ms)`);
  if (t.headersTimeoutMs > t.requestTimeoutMs) throw new RangeError('headersTimeoutMs must not exceed requestTimeoutMs');
  const common = {
    headersTimeout: t.headersTimeoutMs,
    requestTimeout: t.requestTimeoutMs,
    keepAliveTimeout: t.keepAliveTimeoutMs,
    connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(t.headersTimeoutMs / 2))),
  };
  const server: Server = opts.tls
    ? (createHttpsServer({ ...common, ...opts.tls }, app) as unknown as Server)
    : createHttpServer(common, app);
  server.on('clientError', onClientError);
  return server;
}


/** The config file's `http` section (src/config/config.ts), as read. */
export interface HttpConfigSection {
  maxBodyBytes: number;
  maxJsonDepth: number;
  maxArrayItems: number;
  maxStringLength: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
  rateLimit: RateLimitOptions | false;
  /** Trusted proxies and the public FHIR base (src/fhir/base-url.ts `ProxyOptions`). */
  trustProxy?: boolean | number | readonly string[] | undefined;
  publicBaseUrl?: string | undefined;
}

/**
 * Maps the config's `http` section to the node's hardening options.
 * @param http - the validated section.
 * @returns `hardening` (limits, rate limit, and the proxy settings fhirApp applies: src/fhir/base-url.ts)
 *   and `timeouts` for {@link createFhirServer}.
 */
export function hardeningFromConfig(http: HttpConfigSection): { hardening: HardeningOptions & Pick<HttpConfigSection, 'trustProxy' | 'publicBaseUrl'>; timeouts: HttpTimeouts } {
  return {
    hardening: {
      maxBodyBytes: http.maxBodyBytes,
      json: { maxDepth: http.maxJsonDepth, maxArrayItems: http.maxArrayItems, maxStringLength: http.maxStringLength },
      rateLimit: http.rateLimit,
      ...(http.trustProxy !== undefined ? { trustProxy: http.trustProxy } : {}),
      ...(http.publicBaseUrl !== undefined ? { publicBaseUrl: http.publicBaseUrl } : {}),
    },
    timeouts: { headersTimeoutMs: http.headersTimeoutMs, requestTimeoutMs: http.requestTimeoutMs, keepAliveTimeoutMs: http.keepAliveTimeoutMs },
  };
}
