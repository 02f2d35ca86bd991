/**
 * The `auth` section of a node configuration (zod), and the open-mode rule: without `auth` a node
 * starts only on loopback and only with `--insecure-dev`.
 *
 * Token checks follow RFC 8725 (JWT BCP) §3.1 and §3.9 and RFC 9068 §4; SMART discovery fields
 * follow https://hl7.org/fhir/smart-app-launch/conformance.html.
 */
import { isIP } from 'node:net';
import { z } from 'zod';

/**
 * Signature algorithms a configuration may allow: asymmetric JWS algorithms only (RFC 7518 §3.3-3.5,
 * RFC 8037). `none` and the HMAC family (HS*) cannot be configured: with a shared secret, anyone
 * who can verify a token can also mint one, and HS256 "keyed with the public key" is the classic
 * algorithm-confusion attack (RFC 8725 §2.1).
 */
export const ASYMMETRIC_ALGORITHMS = Object.freeze(['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'] as const);

/** Default allowlist when `auth.algorithms` is absent. */
export const DEFAULT_ALGORITHMS: readonly string[] = Object.freeze(['RS256', 'RS384', 'ES256', 'ES384', 'PS256', 'EdDSA']);

/** Default clock skew tolerated on `exp`/`nbf`/`iat`, seconds. */
export const DEFAULT_CLOCK_SKEW_SECONDS = 60;

/** A host name that is loopback-only: `localhost`, `127.0.0.0/8`, `::1` (and `::ffff:127.x.y.z`). */
export function isLoopbackHost(host: string): boolean {
  const h = host.trim().toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (h === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1' || h === '0:0:0:0:0:0:0:1' || /^::ffff:127\./.test(h);
  return false;
}

const HttpsOrLoopbackUrl = z.url().refine((u) => {
  const url = new URL(u);
  return url.protocol === 'https:' || (url.protocol === 'http:' && isLoopbackHost(url.hostname));
}, 'must be an https:// URL (http:// only on loopback)');

/**
 * One client of the SMART Backend Services token endpoint
 * (https://hl7.org/fhir/smart-app-launch/backend-services.html): its id, its public keys (one
 * source), and the `system/` scopes it may be granted.
 */
export const BackendClientSchema = z
  .object({
    clientId: z.string().regex(/^[A-Za-z0-9._~:-]{1,128}$/, 'client ids are 1-128 of A-Z a-z 0-9 . _ ~ : -'),
    jwksUri: HttpsOrLoopbackUrl.optional(),
    /** Relative to the config file. */
    jwksFile: z.string().min(1).optional(),
    /** Space-separated `system/` scopes this client may be granted, e.g. `system/Observation.rs system/Patient.r`. */
    scope: z.string().regex(/^system\/\S+( system\/\S+)*$/, 'space-separated system/ scopes'),
  })
  .strict()
  .refine((c) => (c.jwksUri === undefined) !== (c.jwksFile === undefined), { message: 'give exactly one of jwksUri or jwksFile per client' });

/** The node's own token endpoint (SMART Backend Services, client credentials with `private_key_jwt`). */
export const BackendServicesSchema = z
  .object({
    /** `iss` of the tokens this node issues (e.g. `https://node-a.example.org/auth`); must differ from `auth.issuer`. */
    issuer: z.string().min(1),
    /** The token endpoint's absolute URL as clients see it: the required `aud` of client assertions. */
    tokenUrl: HttpsOrLoopbackUrl,
    /** Private JWK file (0600) signing issued tokens; its `alg` must be in `auth.algorithms`. Relative to the config file. */
    signingKeyFile: z.string().min(1),
    /** Lifetime of issued access tokens, seconds (default 300, at most 3600). */
    tokenLifetimeSeconds: z.number().int().min(30).max(3600).optional(),
    clients: z.array(BackendClientSchema).min(1),
  })
  .strict();

/** Schema of `auth` (README "Authorization"; docs/security.md). */
export const AuthConfigSchema = z
  .object({
    /**
     * Expected `iss` of access tokens from the external authorization server (exact match). With
     * `jwksUri` or `jwksFile`; the three may be left out only when `backendServices` is given.
     */
    issuer: z.string().min(1).optional(),
    /** Expected `aud`: this node's FHIR base URL as the authorization server names it; one or several. */
    audience: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
    /** The authorization server's JWK Set URL; fetched, cached (10 min) and refetched on an unknown `kid` (at most every 30 s). */
    jwksUri: HttpsOrLoopbackUrl.optional(),
    /** A local JWK Set file (public keys only), relative to the config file. Read at start. */
    jwksFile: z.string().min(1).optional(),
    /** Allowed JWS algorithms; asymmetric only. Default RS256, RS384, ES256, ES384, PS256, EdDSA. */
    algorithms: z.array(z.enum(ASYMMETRIC_ALGORITHMS)).min(1).optional(),
    /** Tolerated clock difference on `exp`, `nbf`, `iat`, seconds (default 60, at most 300). */
    clockSkewSeconds: z.number().int().min(0).max(300).optional(),
    /** Published in `/.well-known/smart-configuration` when the authorization server has them. */
    authorizationEndpoint: HttpsOrLoopbackUrl.optional(),
    tokenEndpoint: HttpsOrLoopbackUrl.optional(),
    /** Extra SMART capabilities the authorization server supports (e.g. `launch-standalone`). */
    capabilities: z.array(z.string().regex(/^[a-z0-9-]+$/)).optional(),
    /** The node's own token endpoint for backend clients (token-endpoint.ts); optional. */
    backendServices: BackendServicesSchema.optional(),
  })
  .strict()
  .refine((a) => a.jwksUri === undefined || a.jwksFile === undefined, { message: 'give only one of auth.jwksUri or auth.jwksFile' })
  .refine((a) => (a.issuer === undefined) === (a.jwksUri === undefined && a.jwksFile === undefined), { message: 'auth.issuer needs auth.jwksUri or auth.jwksFile, and they need auth.issuer' })
  .refine((a) => a.issuer !== undefined || a.backendServices !== undefined, { message: 'give an external authorization server (auth.issuer with auth.jwksUri or auth.jwksFile) or auth.backendServices, or both' })
  .refine((a) => a.backendServices === undefined || a.backendServices.issuer !== a.issuer, { message: 'auth.backendServices.issuer must differ from auth.issuer' });

/** A validated `auth` section. */
export type AuthConfig = z.infer<typeof AuthConfigSchema>;

/** What {@link assertAuthOrInsecureDev} decided. */
export type AuthMode = 'authorized' | 'insecure-dev';

/**
 * The open-mode rule (issue 7, "Open mode"): a node without `auth` refuses to start unless it binds
 * to loopback only and `--insecure-dev` was given; with `auth`, `--insecure-dev` is refused too, so
 * a leftover flag can never silently mean something.
 * @param config - the node configuration (only `auth` is read).
 * @param host - the interface the FHIR API binds to (`listen.host`).
 * @param insecureDev - whether `--insecure-dev` was given.
 * @returns `authorized` (auth configured) or `insecure-dev` (no client authorization, loopback only).
 * @throws Error with the fix in its message when the combination is not allowed.
 */
export function assertAuthOrInsecureDev(config: { auth?: AuthConfig | undefined }, host: string, insecureDev: boolean): AuthMode {
  if (config.auth) {
    if (insecureDev) throw new Error('--insecure-dev was given but the config has an auth section: remove the flag (client authorization is on)');
    return 'authorized';
  }
  if (!insecureDev) {
    throw new Error(
      'No client authorization configured: add an "auth" section (issuer, audience, jwksUri or jwksFile; see README "Authorization"), ' +
        'or, for local development only, bind listen.host to 127.0.0.1 and pass --insecure-dev',
    );
  }
  if (!isLoopbackHost(host)) {
    throw new Error(`--insecure-dev runs without client authorization and is allowed only on loopback (127.0.0.1, ::1, localhost), not on ${host}`);
  }
  return 'insecure-dev';
}
