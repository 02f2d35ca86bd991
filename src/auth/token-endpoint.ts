/**
 * The node's own token endpoint for SMART Backend Services: OAuth 2.0 client credentials with a
 * signed client assertion (`private_key_jwt`).
 * https://hl7.org/fhir/smart-app-launch/backend-services.html; RFC 7523 §2.2 and §3 (JWT client
 * authentication); RFC 6749 §4.4 (client credentials) and §5.2 (error responses); RFC 9068 (the
 * issued access token's format).
 *
 * `POST /auth/token`, `application/x-www-form-urlencoded`:
 * `grant_type=client_credentials`, `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`,
 * `client_assertion=<JWT>`, `scope=system/…`. The assertion must be signed by a key of the
 * registered client (allowlisted asymmetric algorithm), with `iss` = `sub` = the client id, `aud` =
 * the token URL, `exp` at most 5 minutes ahead, and a `jti` not seen before (replays are refused
 * until the assertion expires). The answer is a short-lived access token signed by the node's key,
 * with the requested scopes the client is registered for.
 */
import { randomUUID } from 'node:crypto';
import express from 'express';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { decodeJwt, decodeProtectedHeader, importJWK, jwtVerify, SignJWT, errors as joseErrors } from 'jose';
import type { JWK, JWTVerifyGetKey } from 'jose';
import type { Logger } from 'pino';
import { parseScope } from './scopes.ts';
import type { ClinicalScope } from './scopes.ts';

/** RFC 7523 §2.2 client assertion type. */
export const JWT_BEARER_ASSERTION = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

/** A registered backend client. */
export interface BackendClient {
  clientId: string;
  /** The client's public keys. */
  keys: JWTVerifyGetKey;
  /** `system/` scopes it may be granted. */
  scope: string;
}

/** Options of {@link TokenIssuer}. */
export interface TokenIssuerOptions {
  /** `iss` of issued tokens. */
  issuer: string;
  /** `aud` of issued tokens (the node's FHIR base URL(s), as the node's verifier expects). */
  audience: string | readonly string[];
  /** The token endpoint URL: required `aud` of client assertions. */
  tokenUrl: string;
  /** The node's private signing key as a JWK with `alg` and `kid`. */
  signingKey: JWK;
  clients: readonly BackendClient[];
  /** Allowed algorithms for client assertions (asymmetric only). */
  algorithms: readonly string[];
  /** Issued token lifetime, seconds (default 300). */
  tokenLifetimeSeconds?: number;
  /** Clock skew on assertion times, seconds (default 60). */
  clockSkewSeconds?: number;
  /** Clock, ms since the epoch. */
  now?: () => number;
}

/** An OAuth error (RFC 6749 §5.2) with its HTTP status. */
export class OAuthError extends Error {
  readonly status: number;
  readonly error: 'invalid_request' | 'invalid_client' | 'invalid_grant' | 'unauthorized_client' | 'unsupported_grant_type' | 'invalid_scope';
  override readonly name = 'OAuthError';

  /**
   * @param status - 400 or 401.
   * @param error - the RFC 6749 §5.2 code.
   * @param description - `error_description`; no secrets.
   */
  constructor(status: number, error: OAuthError['error'], description: string) {
    super(description);
    this.status = status;
    this.error = error;
  }
}

/** A successful token response (RFC 6749 §5.1). */
export interface TokenResponse {
  access_token: string;
  token_type: 'bearer';
  /** Seconds. */
  expires_in: number;
  scope: string;
}

/** Whether granted scope `held` covers requested scope `want` (same context; type or `*`; letters a superset). */
function covers(held: ClinicalScope, want: ClinicalScope): boolean {
  if (held.context !== want.context || held.restrictions !== undefined || want.restrictions !== undefined) return false;
  if (held.resourceType !== '*' && held.resourceType !== want.resourceType) return false;
  return [...want.permissions].every((p) => held.permissions.has(p));
}

/** Issues access tokens to registered backend clients. Holds the replay cache of assertion `jti`s. */
export class TokenIssuer {
  private readonly opts: TokenIssuerOptions;
  private readonly clients: Map<string, BackendClient & { allowed: ClinicalScope[] }>;
  /** `clientId jti` → expiry (ms) of assertions already used. */
  private readonly seen = new Map<string, number>();
  private key: Awaited<ReturnType<typeof importJWK>> | undefined;
  private readonly lifetime: number;
  private readonly skew: number;
  private readonly now: () => number;

  /**
   * @param opts - issuer, audience, token URL, signing key, clients, algorithms, lifetime, clock.
   * @throws Error when the signing key has no `alg`/`kid`, is not private, uses an algorithm outside
   *   `algorithms`, or a client's scope list holds a non-`system/` or malformed scope.
   */
  constructor(opts: TokenIssuerOptions) {
    const alg = opts.signingKey.alg;
    if (!alg || !opts.algorithms.includes(alg)) throw new Error(`The token signing key needs an alg among ${opts.algorithms.join(', ')}`);
    if (!opts.signingKey.kid) throw new Error('The token signing key needs a kid');
    if (opts.signingKey.d === undefined && opts.signingKey.priv === undefined) throw new Error('The token signing key file must hold the private key');
    this.opts = opts;
    this.lifetime = opts.tokenLifetimeSeconds ?? 300;
    this.skew = opts.clockSkewSeconds ?? 60;
    this.now = opts.now ?? Date.now;
    this.clients = new Map(
      opts.clients.map((c) => {
        const allowed = c.scope.split(' ').map((s) => {
          const p = parseScope(s);
          if (typeof p !== 'object' || p.context !== 'system' || p.restrictions !== undefined) throw new Error(`Client ${c.clientId}: ${s} is not a system/ scope`);
          return p;
        });
        return [c.clientId, { ...c, allowed }];
      }),
    );
  }

  /** The public half of the signing key, for verifying issued tokens. */
  publicJwk(): JWK {
    const { d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, oth: _oth, priv: _priv, ...pub } = this.opts.signingKey as JWK & { priv?: string };
    return pub;
  }

  /**
   * Handles one token request.
   * @param form - the decoded form fields.
   * @returns The token response.
   * @throws {@link OAuthError} 400 `unsupported_grant_type` / `invalid_request` / `invalid_scope`,
   *   401 `invalid_client` (unknown client, bad signature, wrong `aud`, expired or too long-lived
   *   assertion, replayed `jti`).
   */
  async issue(form: Record<string, string | undefined>): Promise<TokenResponse> {
    if (form.grant_type !== 'client_credentials') throw new OAuthError(400, 'unsupported_grant_type', 'grant_type must be client_credentials');
    if (form.client_assertion_type !== JWT_BEARER_ASSERTION) throw new OAuthError(400, 'invalid_request', `client_assertion_type must be ${JWT_BEARER_ASSERTION}`);
    const assertion = form.client_assertion;
    if (!assertion) throw new OAuthError(400, 'invalid_request', 'client_assertion is required');
    if (!form.scope) throw new OAuthError(400, 'invalid_request', 'scope is required');
    let clientId: unknown;
    let alg: unknown;
    try {
      clientId = decodeJwt(assertion).iss;
      alg = decodeProtectedHeader(assertion).alg;
    } catch {
      throw new OAuthError(401, 'invalid_client', 'The client assertion is not a JWT');
    }
    const client = typeof clientId === 'string' ? this.clients.get(clientId) : undefined;
    if (!client) throw new OAuthError(401, 'invalid_client', 'Unknown client');
    if (typeof alg !== 'string' || !this.opts.algorithms.includes(alg)) throw new OAuthError(401, 'invalid_client', 'The client assertion algorithm is not allowed');
    const now = this.now();
    let claims;
    try {
      ({ payload: claims } = await jwtVerify(assertion, client.keys, {
        issuer: client.clientId,
        subject: client.clientId,
        audience: this.opts.tokenUrl,
        algorithms: [...this.opts.algorithms],
        clockTolerance: this.skew,
        currentDate: new Date(now),
        requiredClaims: ['exp', 'jti', 'iss', 'sub', 'aud'],
      }));
    } catch (err) {
      const why = err instanceof joseErrors.JWTExpired ? 'The client assertion has expired' : 'The client assertion is invalid';
      throw new OAuthError(401, 'invalid_client', why);
    }
    const exp = (claims.exp as number) * 1000;
    if (exp > now + (300 + this.skew) * 1000) throw new OAuthError(401, 'invalid_client', 'The client assertion expires more than 5 minutes ahead');
    for (const [k, until] of this.seen) if (until < now - this.skew * 1000) this.seen.delete(k);
    const replayKey = `${client.clientId} ${String(claims.jti)}`;
    if (this.seen.has(replayKey)) throw new OAuthError(401, 'invalid_client', 'The client assertion jti was already used');
    this.seen.set(replayKey, exp);

    const granted: string[] = [];
    for (const s of form.scope.split(' ').filter(Boolean)) {
      const want = parseScope(s);
      if (typeof want === 'object' && client.allowed.some((held) => covers(held, want))) granted.push(s);
    }
    if (granted.length === 0) throw new OAuthError(400, 'invalid_scope', 'None of the requested scopes is allowed for this client');
    this.key ??= await importJWK(this.opts.signingKey, this.opts.signingKey.alg);
    const iat = Math.floor(now / 1000);
    const accessToken = await new SignJWT({ scope: granted.join(' '), client_id: client.clientId })
      .setProtectedHeader({ alg: this.opts.signingKey.alg!, kid: this.opts.signingKey.kid!, typ: 'at+jwt' })
      .setIssuer(this.opts.issuer)
      .setSubject(client.clientId)
      .setAudience(typeof this.opts.audience === 'string' ? this.opts.audience : [...this.opts.audience])
      .setIssuedAt(iat)
      .setExpirationTime(iat + this.lifetime)
      .setJti(randomUUID())
      .sign(this.key);
    return { access_token: accessToken, token_type: 'bearer', expires_in: this.lifetime, scope: granted.join(' ') };
  }
}

/**
 * `POST /auth/token` as an express handler chain (form parser, then the issuer). Answers JSON with
 * `Cache-Control: no-store` (RFC 6749 §5.1), errors as `{ error, error_description }` (§5.2).
 * @param issuer - the token issuer.
 * @param log - failures are logged at `info` with the OAuth error code and client id only.
 */
export function tokenEndpointHandler(issuer: TokenIssuer, log?: Logger): RequestHandler[] {
  const form = express.urlencoded({ extended: false, limit: 16 * 1024, parameterLimit: 20 });
  const handle = (req: Request, res: Response, _next: NextFunction) => {
    res.setHeader('Cache-Control', 'no-store');
    res.setHeader('Pragma', 'no-cache');
    const body = (typeof req.body === 'object' && req.body !== null ? req.body : {}) as Record<string, unknown>;
    const fields: Record<string, string | undefined> = {};
    for (const k of ['grant_type', 'client_assertion_type', 'client_assertion', 'scope']) fields[k] = typeof body[k] === 'string' ? body[k] : undefined;
    issuer.issue(fields).then(
      (token) => {
        res.status(200).json(token);
      },
      (err: unknown) => {
        const e = err instanceof OAuthError ? err : new OAuthError(400, 'invalid_request', 'The token request could not be processed');
        log?.info({ error: e.error, status: e.status }, 'token request refused');
        if (e.status === 401) res.setHeader('WWW-Authenticate', 'Bearer realm="tidegate-token"');
        res.status(e.status).json({ error: e.error, error_description: e.message });
      },
    );
  };
  const formErrors = (err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    res.setHeader('Cache-Control', 'no-store');
    res.status(400).json({ error: 'invalid_request', error_description: (err as { type?: string })?.type === 'entity.too.large' ? 'Request too large' : 'Unreadable form body' });
  };
  return [form, handle, formErrors as unknown as RequestHandler];
}
