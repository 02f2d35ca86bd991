/**
 * Express middleware enforcing SMART on FHIR authorization in front of the FHIR router
 * (src/fhir/express.ts): Bearer token (token.ts) → interaction (request.ts) → scopes and Patient
 * compartment (authorize.ts) → search constraint and response filtering. Failures are answered here
 * with an OperationOutcome and `WWW-Authenticate: Bearer …` (RFC 6750 §3); the router never sees a
 * request that is not authorized.
 *
 * Mount it on the FHIR base, after the public discovery document and before the router:
 * `app.use('/fhir', smartAuth({ verifier, current }))`. `GET /fhir/metadata` stays public (SMART
 * clients read it before they have a token, https://hl7.org/fhir/smart-app-launch/conformance.html).
 */
import express from 'express';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { decodeJwt } from 'jose';
import type { JWTPayload } from 'jose';
import type { Logger } from 'pino';
import { AuthError, wwwAuthenticate } from './errors.ts';
import type { AuthErrorReason } from './errors.ts';
import { bearerToken } from './token.ts';
import type { AccessContext, TokenVerifier } from './token.ts';
import { classifyFhirRequest } from './request.ts';
import type { FhirRequestInfo } from './request.ts';
import { authorizeInteraction, canSee } from './authorize.ts';
import type { CurrentResource, InteractionInfo } from './authorize.ts';
import { filterBundleEntries } from './compartment.ts';
import { canonicalStringify, isJsonObject, parseFhirJson, toPlainJson } from '../fhir/json.ts';
import type { FhirJson } from '../fhir/json.ts';
import { FhirError, notFound, methodNotAllowed, outcome, toOutcome, badRequest } from '../fhir/outcomes.ts';
import { parseSearchQuery } from '../fhir/search.ts';
import { fhirBaseUrl } from '../fhir/base-url.ts';

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
/** Methods whose request body the middleware reads before authorizing (upper case, as Node gives them). */
const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
const FORM_MEDIA = /^application\/x-www-form-urlencoded\b/i;

/** One authorization decision, for the audit trail (no token, no body, no PHI beyond ids). */
export interface AuthDecisionEvent {
  readonly allowed: boolean;
  /** HTTP status of a refusal; undefined when allowed. */
  readonly status: number | undefined;
  readonly reason: AuthErrorReason | undefined;
  readonly method: string;
  /** Path below the FHIR base. */
  readonly path: string;
  readonly interaction: string | undefined;
  readonly resourceType: string | undefined;
  readonly subject: string | undefined;
  readonly clientId: string | undefined;
  readonly jti: string | undefined;
  /** The token's patient context (a logical id), if any. */
  readonly patient: string | undefined;
}

/** Options of {@link smartAuth}. */
export interface SmartAuthOptions {
  /** Verifies Bearer tokens (a {@link TokenVerifier}). */
  verifier: Pick<TokenVerifier, 'verify'>;
  /** Current-version lookup (see {@link currentFromService}); without it, patient-context writes are refused. */
  current?: CurrentResource;
  /** `realm` of the challenge (default `tidegate`). */
  realm?: string;
  /** The node's own FHIR base URLs, for absolute references in compartment checks. */
  baseUrls?: readonly string[];
  /** Max request body, bytes (default 16 MiB, as the FHIR router's `MAX_BODY_BYTES`). */
  maxBodyBytes?: number;
  /**
   * Reads the request body (src/fhir/hardening.ts `fhirBodyReader`: UTF-8 only, JSON limits); its
   * FhirErrors are answered as they are. Default express.text with `maxBodyBytes`.
   */
  bodyReader?: RequestHandler;
  /** Refusals are logged at `info` with their reason (never the token). */
  log?: Logger;
  /** Called once per request with the decision (audit hook). */
  onDecision?: (event: AuthDecisionEvent) => void;
  /**
   * Remember verified tokens ({@link VerifiedTokenCacheOptions}) so that a client's next requests
   * skip the signature check. Off (`false`, the default) unless given: whoever turns it on passes
   * the verifier's revocation hook, which the cache runs on every request it answers.
   */
  tokenCache?: VerifiedTokenCacheOptions | false;
}

/**
 * The verified-token cache of {@link smartAuth}. A token is verified in full by the verifier
 * (token.ts: header, algorithm, key, signature, `iss`, `aud`, `exp`, `nbf`, `iat`, revocation) the
 * first time; its {@link AccessContext} is then reused, keyed by the exact token text, while all of
 * these hold: the token's `exp` has not passed (no clock skew allowed here, so the cache never
 * accepts a token the verifier would refuse as expired), it was verified less than `maxAgeMs` ago,
 * and `isRevoked` (run on every reuse, with the token's claims) says no. Refusals are never cached.
 * The signature check (an ECDSA/RSA verification, ~0.1 ms of CPU each) is what it saves.
 */
export interface VerifiedTokenCacheOptions {
  /** The revocation hook the verifier runs (createAuth's `isRevoked`); run on every cache hit too. */
  isRevoked?: ((jti: string | undefined, claims: JWTPayload) => boolean) | undefined;
  /** Most tokens kept (oldest dropped first). Default 1024. */
  maxEntries?: number;
  /** Longest reuse of one verification, ms. Default 60,000. */
  maxAgeMs?: number;
  /** Clock, ms since the epoch (the verifier's; default `Date.now`). */
  now?: (() => number) | undefined;
}

/** A token verifier that reuses verifications (see {@link VerifiedTokenCacheOptions}). */
function cachingVerifier(verifier: Pick<TokenVerifier, 'verify'>, o: VerifiedTokenCacheOptions): (token: string) => Promise<AccessContext> {
  const maxEntries = o.maxEntries ?? 1024;
  const maxAgeMs = o.maxAgeMs ?? 60_000;
  const now = o.now ?? Date.now;
  if (!Number.isSafeInteger(maxEntries) || maxEntries < 1) throw new RangeError('tokenCache.maxEntries must be a positive integer');
  if (!Number.isSafeInteger(maxAgeMs) || maxAgeMs < 1) throw new RangeError('tokenCache.maxAgeMs must be a positive integer (ms)');
  const cache = new Map<string, { ctx: AccessContext; verifiedAt: number }>();
  return async (token: string) => {
    const hit = cache.get(token);
    if (hit !== undefined) {
      const t = now();
      let fresh = t < hit.ctx.expiresAtMs && t - hit.verifiedAt < maxAgeMs && t >= hit.verifiedAt;
      if (fresh && o.isRevoked !== undefined) {
        let claims: JWTPayload;
        try {
          claims = decodeJwt(token);
        } catch {
          claims = {};
        }
        fresh = !o.isRevoked(hit.ctx.jti, claims);
      }
      if (fresh) return hit.ctx;
      cache.delete(token); // the verifier decides again (and names the reason: expired, revoked)
    }
    const ctx = await verifier.verify(token);
    if (cache.size >= maxEntries) cache.delete(cache.keys().next().value!);
    cache.set(token, { ctx, verifiedAt: now() });
    return ctx;
  };
}

/**
 * Sends an {@link AuthError} as an OperationOutcome with its `WWW-Authenticate` challenge.
 * @param res - the express response (nothing sent yet).
 * @param err - the failure.
 * @param realm - the challenge realm.
 */
export function sendAuthError(res: Response, err: AuthError, realm = 'tidegate'): void {
  res.status(err.status);
  if (err.status === 401 || err.status === 403) res.setHeader('WWW-Authenticate', wwwAuthenticate(err, realm));
  if (err.status === 503) res.setHeader('Retry-After', '30');
  res.setHeader('Cache-Control', 'no-store');
  endWith(res, canonicalStringify(err.outcome));
}

/** Ends with an OperationOutcome body, bypassing `res.send` (no ETag of the app's settings, no response filter). */
function endWith(res: Response, text: string): void {
  const bytes = Buffer.from(text, 'utf8');
  res.setHeader('Content-Type', FHIR_JSON);
  res.setHeader('Content-Length', String(bytes.length));
  res.end(res.req.method === 'HEAD' ? undefined : bytes);
}

function sendFhirError(res: Response, err: FhirError): void {
  res.status(err.status);
  endWith(res, canonicalStringify(err.outcome));
}

function rawQuery(req: Request): string {
  const i = req.originalUrl.indexOf('?');
  return i < 0 ? '' : req.originalUrl.slice(i + 1);
}

/** Appends one `name=value` to the request's query, where the FHIR router reads it (`originalUrl`). */
function appendQuery(req: Request, [name, value]: [string, string]): void {
  const pair = `${encodeURIComponent(name)}=${encodeURIComponent(value)}`;
  const add = (u: string) => (u.includes('?') ? `${u}${u.endsWith('?') || u.endsWith('&') ? '' : '&'}${pair}` : `${u}?${pair}`);
  req.originalUrl = add(req.originalUrl);
  req.url = add(req.url);
}

/**
 * A lookup of current versions over any object with the FHIR service's `read(type, id)`: the body
 * text of the live version, undefined when it is unknown, deleted or the id is invalid.
 * @param service - e.g. the node's `FhirService`.
 */
export function currentFromService(service: { read(type: string, id: string): { status: number; body?: string | object } }): CurrentResource {
  return (type, id) => {
    try {
      const r = service.read(type, id);
      if (r.status !== 200 || r.body === undefined) return undefined;
      return typeof r.body === 'string' ? r.body : canonicalStringify(r.body);
    } catch (err) {
      if (err instanceof FhirError && err.status < 500) return undefined;
      throw err;
    }
  };
}

/** Interactions whose response must be checked entry by entry or resource by resource. */
const SINGLE_RESOURCE = new Set(['read', 'vread', 'conditional-create']);

/**
 * Wraps `res.send` so that what the token may not see never leaves: Bundle entries (search
 * matches, `_include`/`_revinclude`, history versions) are removed, and a single resource outside
 * the token's reach turns the response into a 403.
 */
function filterResponses(res: Response, ctx: AccessContext, info: InteractionInfo | { interaction: 'batch' }, realm: string, baseUrls: readonly string[]): void {
  const original = res.send.bind(res);
  res.send = ((body?: unknown) => {
    if (res.statusCode < 200 || res.statusCode >= 300 || body === undefined || body === null || body === '') return original(body);
    const text = typeof body === 'string' ? body : Buffer.isBuffer(body) ? body.toString('utf8') : JSON.stringify(body);
    let parsed: FhirJson;
    try {
      parsed = parseFhirJson(text);
    } catch {
      res.status(500).setHeader('Content-Type', FHIR_JSON);
      return original(canonicalStringify(toOutcome(new Error('unparseable')).outcome));
    }
    if (!isJsonObject(parsed)) return original(body);
    const visible = (r: unknown) => canSee(ctx, toPlainJson(r as FhirJson), { baseUrls });
    if (parsed.resourceType === 'Bundle' && (parsed.type === 'batch-response' || parsed.type === 'transaction-response')) {
      // Entries answer the request's entries in order: replace what may not be seen, never drop it.
      const denied = new AuthError('outside_compartment', 'The resource is outside what this access token may see');
      let changed = false;
      const entry = Array.isArray(parsed.entry)
        ? parsed.entry.map((e) => {
            if (!isJsonObject(e) || e.resource === undefined) return e;
            if (isJsonObject(e.resource) && e.resource.resourceType === 'Bundle') {
              // A search entry's answer: filter its entries like a search response.
              const inner = filterBundleEntries(e.resource as { entry?: Array<{ resource?: unknown }> }, visible);
              if (inner.removed > 0) changed = true;
              return inner.removed > 0 ? { ...e, resource: inner.bundle as unknown as FhirJson } : e;
            }
            if (visible(e.resource)) return e;
            changed = true;
            return { response: { status: '403 Forbidden', outcome: denied.outcome as unknown as FhirJson } };
          })
        : undefined;
      return original(changed ? canonicalStringify({ ...parsed, entry }) : body);
    }
    if (parsed.resourceType === 'Bundle') {
      const { bundle, removed } = filterBundleEntries(parsed as { entry?: Array<{ resource?: unknown }> }, visible);
      return original(removed === 0 ? body : canonicalStringify(bundle));
    }
    if (info.interaction !== 'batch' && SINGLE_RESOURCE.has(info.interaction) && !visible(parsed)) {
      for (const h of ['ETag', 'Last-Modified', 'Location', 'Content-Location']) res.removeHeader(h);
      const err = new AuthError('outside_compartment', 'The resource is outside what this access token may see');
      res.status(403).setHeader('WWW-Authenticate', wwwAuthenticate(err, realm));
      res.setHeader('Content-Type', FHIR_JSON);
      return original(canonicalStringify(err.outcome));
    }
    return original(body);
  }) as Response['send'];
}

/** Reads the body with the same parser as the FHIR router (which then skips it: the stream is consumed). */
function readBody(req: Request, res: Response, limit: number, reader?: RequestHandler): Promise<void> {
  const parser = reader ?? express.text({ type: () => true, limit });
  return new Promise((resolve, reject) => parser(req, res, (err?: unknown) => (err ? reject(err) : resolve())));
}

function bodyError(err: unknown, limit: number): FhirError {
  const e = err as { type?: string };
  if (err instanceof FhirError) return err;
  if (e?.type === 'entity.too.large') return new FhirError(413, outcome('error', 'too-costly', `Body larger than ${limit} bytes`));
  return badRequest('Unreadable request body');
}

/** Checks a batch/transaction Bundle entry by entry (https://hl7.org/fhir/R4/http.html#transaction). */
function authorizeBundle(ctx: AccessContext, text: string, opts: SmartAuthOptions, baseUrl: string): void {
  let bundle: unknown;
  try {
    bundle = toPlainJson(parseFhirJson(text));
  } catch {
    return; // the FHIR layer answers malformed JSON
  }
  const entries = (bundle as { resourceType?: unknown; entry?: unknown }).entry;
  if ((bundle as { resourceType?: unknown }).resourceType !== 'Bundle' || !Array.isArray(entries)) return;
  entries.forEach((e: { request?: { method?: unknown; url?: unknown; ifNoneExist?: unknown }; resource?: unknown; }, i) => {
    const method = e?.request?.method;
    const url = e?.request?.url;
    if (typeof method !== 'string' || typeof url !== 'string') throw new AuthError('bad_request', `Bundle entry ${i}: request.method and request.url are required`);
    // Absolute URLs are accepted under the node's own base only, as src/fhir/bundle.ts does.
    const rel = url.startsWith(`${baseUrl}/`) ? url.slice(baseUrl.length) : url;
    const q = rel.indexOf('?');
    const path = `/${(q < 0 ? rel : rel.slice(0, q)).replace(/^\/+/, '')}`;
    const query = q < 0 ? '' : rel.slice(q + 1);
    const info = classifyFhirRequest(method, path, query !== '', typeof e.request?.ifNoneExist === 'string');
    if (info.kind !== 'interaction') throw new AuthError('bad_request', `Bundle entry ${i}: no FHIR interaction at ${method} ${path}`);
    const result = authorizeInteraction(ctx, info, {
      body: e.resource === undefined ? undefined : JSON.stringify(e.resource),
      contentType: 'application/fhir+json',
      searchParams: parseSearchQuery(query),
      current: opts.current,
      compartment: { baseUrls: opts.baseUrls ?? [] },
    });
    if (result.searchConstraint) throw new AuthError('outside_compartment', `Bundle entry ${i}: searches in a Bundle are not allowed with a patient context`);
  });
}

/**
 * The authorization middleware.
 * @param opts - verifier, current-version lookup, realm, base URLs, body limit, logger, audit hook.
 * @returns An express handler: calls `next()` for an authorized request (with `res.locals.auth`
 *   set to the {@link AccessContext}), otherwise answers 400/401/403/404/405/413/503 itself.
 */
export function smartAuth(opts: SmartAuthOptions): RequestHandler {
  const realm = opts.realm ?? 'tidegate';
  const limit = opts.maxBodyBytes ?? 16 * 1024 * 1024;
  const baseUrls = opts.baseUrls ?? [];
  const verify = opts.tokenCache ? cachingVerifier(opts.verifier, opts.tokenCache) : (token: string) => opts.verifier.verify(token);

  const decide = (req: Request, ctx: AccessContext | undefined, info: FhirRequestInfo | undefined, err?: FhirError) => {
    const i = info?.kind === 'interaction' ? info : undefined;
    const event: AuthDecisionEvent = {
      allowed: err === undefined,
      status: err?.status,
      reason: err instanceof AuthError ? err.reason : undefined,
      method: req.method,
      path: req.path,
      interaction: i?.interaction ?? info?.kind,
      resourceType: i?.resourceType,
      subject: ctx?.subject,
      clientId: ctx?.clientId,
      jti: ctx?.jti,
      patient: ctx?.patient,
    };
    if (err instanceof AuthError) opts.log?.info({ reason: err.reason, status: err.status, method: req.method, interaction: event.interaction, resourceType: event.resourceType, clientId: ctx?.clientId }, 'request refused by authorization');
    opts.onDecision?.(event);
  };

  const handle = async (req: Request, res: Response): Promise<boolean> => {
    const query = rawQuery(req);
    const info = classifyFhirRequest(req.method, req.path, query !== '', (req.get('if-none-exist') ?? '') !== '');
    if (info.kind === 'public') return true;
    let ctx: AccessContext | undefined;
    try {
      ctx = await verify(bearerToken(req.get('authorization')));
      res.locals.auth = ctx;
      if (info.kind === 'unknown') throw info.status === 405 ? methodNotAllowed(`Method ${req.method} is not allowed`) : notFound(`No FHIR interaction at ${req.path}`);
      const method = req.method.toUpperCase();
      if (BODY_METHODS.has(method)) {
        try {
          await readBody(req, res, limit, opts.bodyReader);
        } catch (err) {
          throw bodyError(err, limit);
        }
      }
      const body = typeof req.body === 'string' ? req.body : undefined;
      if (info.kind === 'batch') {
        if (body !== undefined) authorizeBundle(ctx, body, opts, fhirBaseUrl(req));
        filterResponses(res, ctx, { interaction: 'batch' }, realm, baseUrls);
        decide(req, ctx, info);
        return true;
      }
      const searching = info.interaction === 'search-type' || info.interaction === 'search-system';
      const searchParams = searching ? [...parseSearchQuery(query), ...(method === 'POST' && body && FORM_MEDIA.test(req.get('content-type') ?? '') ? parseSearchQuery(body) : [])] : [];
      const result = authorizeInteraction(ctx, info, { body, contentType: req.get('content-type'), searchParams, current: opts.current, compartment: { baseUrls } });
      if (result.searchConstraint) appendQuery(req, result.searchConstraint);
      if (result.filterResponse) filterResponses(res, ctx, info, realm, baseUrls);
      decide(req, ctx, info);
      return true;
    } catch (thrown) {
      let err: FhirError;
      if (thrown instanceof FhirError) err = thrown;
      else {
        opts.log?.error({ err: { name: (thrown as Error)?.name }, method: req.method }, 'authorization failed unexpectedly');
        err = new FhirError(500, toOutcome(thrown).outcome);
      }
      if (err instanceof AuthError) sendAuthError(res, err, realm);
      else sendFhirError(res, err);
      decide(req, ctx, info, err);
      return false;
    }
  };

  return (req: Request, res: Response, next: NextFunction) => {
    handle(req, res).then((proceed) => (proceed ? next() : undefined), next);
  };
}
