/**
 * Verification of Bearer access tokens (JWS-signed JWTs) with `jose`.
 *
 * Checks, in order (RFC 8725 §3.1, §3.8, §3.9; RFC 9068 §4; RFC 7519 §4.1):
 * 1. the compact JWS parses and its protected header names an algorithm;
 * 2. the algorithm is not `none`, not symmetric (HS*), and is in the allowlist (checked before any
 *    key is looked up, and again by jose's `algorithms` option);
 * 3. a key of the configured issuer's JWK Set matches `kid`/`alg` (remote sets refetch once on an
 *    unknown `kid`);
 * 4. the signature verifies;
 * 5. `iss` equals the issuer, `aud` contains an accepted audience, `exp` is present and not past,
 *    `nbf` (when present) is not future, `iat` (when present) is not future, all with the clock skew;
 * 6. `jti` is not revoked (optional hook, for breach response).
 */
import { decodeJwt, decodeProtectedHeader, jwtVerify, errors as joseErrors } from 'jose';
import type { JWTPayload, JWTVerifyGetKey } from 'jose';
import { AuthError } from './errors.ts';
import type { AuthErrorReason } from './errors.ts';
import { parseScopes } from './scopes.ts';
import type { ScopeSet } from './scopes.ts';
import { DEFAULT_ALGORITHMS, DEFAULT_CLOCK_SKEW_SECONDS } from './config.ts';

/** What a verified token says about its bearer. */
export interface AccessContext {
  /** `iss`. */
  readonly issuer: string;
  /** `sub` (the user or client), when present. */
  readonly subject: string | undefined;
  /** `client_id` (RFC 9068 §2.2), when present. */
  readonly clientId: string | undefined;
  /** `jti`, when present (revocation key). */
  readonly jti: string | undefined;
  /** `exp`, ms since the epoch. */
  readonly expiresAtMs: number;
  /** The granted scopes, parsed. */
  readonly scopes: ScopeSet;
  /**
   * The patient context: the `patient` claim, else `context.patient` / `launch_context.patient`
   * (how some authorization servers put SMART launch context into the access token). A token with
   * a patient context sees and changes only that patient's compartment.
   */
  readonly patient: string | undefined;
  /** `fhirUser`, when present (e.g. `Practitioner/123`). */
  readonly fhirUser: string | undefined;
}

/** Options of {@link TokenVerifier}. */
export interface TokenVerifierOptions {
  /** Expected `iss` (exact match). */
  issuer: string;
  /** Accepted `aud` values: the token's `aud` must contain one. */
  audience: string | readonly string[];
  /** The issuer's keys: {@link fileKeySet}, {@link remoteKeySet} or {@link localKeySet}. */
  keys: JWTVerifyGetKey;
  /** JWS algorithm allowlist; asymmetric only (default RS256, RS384, ES256, ES384, PS256, EdDSA). */
  algorithms?: readonly string[];
  /** Tolerated clock difference, seconds (default 60). */
  clockSkewSeconds?: number;
  /** The clock, ms since the epoch (default `Date.now`). */
  now?: () => number;
  /** Called with a verified token's `jti` and claims; true refuses the token as revoked. */
  isRevoked?: (jti: string | undefined, claims: JWTPayload) => boolean;
}

const FHIR_ID = /^[A-Za-z0-9\-.]{1,64}$/;

function fail(reason: AuthErrorReason): never {
  // Client-facing text stays coarse (see errors.ts); `reason` is precise.
  const text: Partial<Record<AuthErrorReason, string>> = {
    expired: 'The access token has expired',
    not_yet_valid: 'The access token is not valid yet',
    revoked: 'The access token has been revoked',
  };
  throw new AuthError(reason, text[reason] ?? 'The access token is invalid');
}

/** Maps a jose error to a reason; anything unknown is `malformed_token`. */
function reasonOf(err: unknown): AuthErrorReason {
  if (err instanceof joseErrors.JWTExpired) return 'expired';
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    if (err.claim === 'iss') return 'wrong_issuer';
    if (err.claim === 'aud') return 'wrong_audience';
    if (err.claim === 'nbf' || err.claim === 'iat') return 'not_yet_valid';
    if (err.reason === 'missing') return 'missing_claim';
    return 'malformed_token';
  }
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return 'alg_not_allowed';
  if (err instanceof joseErrors.JWKSNoMatchingKey || err instanceof joseErrors.JWKSMultipleMatchingKeys) return 'unknown_kid';
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return 'bad_signature';
  if (err instanceof joseErrors.JWKSTimeout) return 'keys_unavailable';
  if (err instanceof joseErrors.JOSEError && /JSON Web Key Set HTTP response/.test(err.message)) return 'keys_unavailable';
  if (err instanceof TypeError && /fetch/i.test(err.message)) return 'keys_unavailable';
  return 'malformed_token';
}

function stringClaim(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

/** The patient id of the token's patient context, or undefined; `Patient/123` is accepted as `123`. */
function patientOf(claims: JWTPayload): string | undefined {
  const ctx = (o: unknown) => (typeof o === 'object' && o !== null ? stringClaim((o as Record<string, unknown>).patient) : undefined);
  const raw = stringClaim(claims.patient) ?? ctx(claims.context) ?? ctx(claims.launch_context);
  if (raw === undefined) return undefined;
  const id = raw.startsWith('Patient/') ? raw.slice('Patient/'.length) : raw;
  if (!FHIR_ID.test(id)) fail('malformed_token');
  return id;
}

/** Verifies access tokens of one issuer. Stateless apart from the key cache of a remote JWK Set. */
export class TokenVerifier {
  /** The issuer this verifier accepts. */
  readonly issuer: string;
  private readonly audience: string[];
  private readonly keys: JWTVerifyGetKey;
  private readonly algorithms: string[];
  private readonly skew: number;
  private readonly now: () => number;
  private readonly isRevoked: TokenVerifierOptions['isRevoked'];

  /**
   * @param opts - issuer, audience, keys, allowlist, clock skew, clock, revocation hook.
   * @throws Error when the allowlist is empty or names `none` or a symmetric algorithm.
   */
  constructor(opts: TokenVerifierOptions) {
    this.issuer = opts.issuer;
    this.audience = typeof opts.audience === 'string' ? [opts.audience] : [...opts.audience];
    this.keys = opts.keys;
    this.algorithms = [...(opts.algorithms ?? DEFAULT_ALGORITHMS)];
    if (this.algorithms.length === 0) throw new Error('The algorithm allowlist is empty');
    const bad = this.algorithms.find((a) => a.toLowerCase() === 'none' || /^HS/i.test(a));
    if (bad) throw new Error(`Algorithm ${bad} cannot be allowed: only asymmetric JWS algorithms verify access tokens`);
    this.skew = opts.clockSkewSeconds ?? DEFAULT_CLOCK_SKEW_SECONDS;
    this.now = opts.now ?? Date.now;
    this.isRevoked = opts.isRevoked;
  }

  /**
   * Verifies one compact JWS access token.
   * @param token - the Bearer credential (no `Bearer ` prefix).
   * @returns The access context (claims the node relies on, scopes parsed).
   * @throws {@link AuthError} 401 with a precise `reason` (see {@link AUTH_ERROR_REASONS}) when the
   *   token is malformed, uses a refused algorithm, names an unknown key, fails the signature,
   *   issuer, audience or time checks, lacks `exp`, or is revoked; 503 `keys_unavailable` when a
   *   remote JWK Set cannot be fetched.
   */
  async verify(token: string): Promise<AccessContext> {
    if (token.length > 16384 || !/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(token)) fail('malformed_token');
    let alg: string | undefined;
    try {
      alg = decodeProtectedHeader(token).alg;
    } catch {
      fail('malformed_token');
    }
    if (typeof alg !== 'string' || alg === '') fail('malformed_token');
    if (alg.toLowerCase() === 'none') fail('alg_none');
    if (/^HS/i.test(alg)) fail('alg_symmetric');
    if (!this.algorithms.includes(alg)) fail('alg_not_allowed');
    let claims: JWTPayload;
    try {
      ({ payload: claims } = await jwtVerify(token, this.keys, {
        issuer: this.issuer,
        audience: this.audience,
        algorithms: this.algorithms,
        clockTolerance: this.skew,
        currentDate: new Date(this.now()),
        requiredClaims: ['exp', 'iss', 'aud'],
      }));
    } catch (err) {
      const reason = reasonOf(err);
      if (reason === 'keys_unavailable') throw new AuthError('keys_unavailable', 'The authorization server keys are unavailable; try again later');
      fail(reason);
    }
    // jose checks `iat` only with maxTokenAge; a token issued in the future is refused here.
    if (typeof claims.iat === 'number' && claims.iat * 1000 > this.now() + this.skew * 1000) fail('not_yet_valid');
    const jti = stringClaim(claims.jti);
    if (this.isRevoked?.(jti, claims)) fail('revoked');
    const scope = claims.scope ?? claims.scp;
    const scopes = parseScopes(typeof scope === 'string' || (Array.isArray(scope) && scope.every((s) => typeof s === 'string')) ? (scope as string | string[]) : undefined);
    return {
      issuer: this.issuer,
      subject: stringClaim(claims.sub),
      clientId: stringClaim(claims.client_id),
      jti,
      expiresAtMs: (claims.exp as number) * 1000,
      scopes,
      patient: patientOf(claims),
      fhirUser: stringClaim(claims.fhirUser),
    };
  }
}

/**
 * The Bearer credential of an `Authorization` header (RFC 6750 §2.1).
 * @param header - the header value, or undefined.
 * @returns The token text.
 * @throws {@link AuthError} 401 `missing_token` when there is no header or it is not a Bearer
 *   credential; 401 `malformed_token` when `Bearer` has no token.
 */
export function bearerToken(header: string | undefined): string {
  if (header === undefined || header.trim() === '') throw new AuthError('missing_token', 'An access token is required (Authorization: Bearer <token>)');
  const m = /^Bearer(?:\s+(\S*))?\s*$/i.exec(header.trim());
  if (!m) throw new AuthError('missing_token', 'An access token is required (Authorization: Bearer <token>)');
  if (!m[1]) throw new AuthError('malformed_token', 'The access token is invalid');
  return m[1];
}

/**
 * Verifies tokens of several issuers (an external authorization server, and the node's own token
 * endpoint): the unverified `iss` only picks the verifier, which then checks everything, `iss`
 * included, against that issuer's own keys. A token naming no known issuer goes to the first
 * verifier and fails there (`wrong_issuer`, or an earlier header check).
 */
export class MultiIssuerVerifier {
  private readonly verifiers: readonly TokenVerifier[];

  /**
   * @param verifiers - one per issuer, at least one.
   * @throws Error when the list is empty or two verifiers share an issuer.
   */
  constructor(verifiers: readonly TokenVerifier[]) {
    if (verifiers.length === 0) throw new Error('At least one token issuer is needed');
    if (new Set(verifiers.map((v) => v.issuer)).size !== verifiers.length) throw new Error('Two token verifiers share an issuer');
    this.verifiers = verifiers;
  }

  /**
   * @param token - the Bearer credential.
   * @returns As {@link TokenVerifier.verify}.
   * @throws {@link AuthError} as {@link TokenVerifier.verify}.
   */
  async verify(token: string): Promise<AccessContext> {
    let iss: unknown;
    try {
      iss = decodeJwt(token).iss;
    } catch {
      iss = undefined;
    }
    const v = this.verifiers.find((x) => x.issuer === iss) ?? this.verifiers[0]!;
    return v.verify(token);
  }
}
