/**
 * Builds the authorization pieces of a node from its `auth` configuration: the token verifier
 * (external authorization server and/or the node's own token endpoint), the discovery handler,
 * the middleware factory and, with `backendServices`, the token endpoint.
 */
import { readFileSync } from 'node:fs';
import type { RequestHandler } from 'express';
import type { JWK, JWTPayload } from 'jose';
import type { Logger } from 'pino';
import type { AuthConfig } from './config.ts';
import { DEFAULT_ALGORITHMS, DEFAULT_CLOCK_SKEW_SECONDS } from './config.ts';
import { fileKeySet, localKeySet, remoteKeySet } from './keys.ts';
import { MultiIssuerVerifier, TokenVerifier } from './token.ts';
import { smartConfigurationHandler } from './smart-configuration.ts';
import { smartAuth } from './middleware.ts';
import type { SmartAuthOptions } from './middleware.ts';
import { TokenIssuer, tokenEndpointHandler } from './token-endpoint.ts';

/** A node's authorization: verifier, discovery document handler, middleware factory, token endpoint. */
export interface AuthSetup {
  readonly verifier: MultiIssuerVerifier;
  /** `GET /fhir/.well-known/smart-configuration`. */
  readonly discovery: RequestHandler;
  /** `POST /auth/token` (form parser + handler + error handler), when `backendServices` is configured. */
  readonly tokenEndpoint: RequestHandler[] | undefined;
  /** The token issuer behind {@link tokenEndpoint}. */
  readonly issuer: TokenIssuer | undefined;
  /** OAuth endpoints advertised in the CapabilityStatement (`rest.security`, oauth-uris extension). */
  readonly endpoints: { readonly token?: string; readonly authorize?: string };
  /** The middleware for `/fhir` (see {@link smartAuth}); `verifier` is filled in. */
  middleware(opts?: Omit<SmartAuthOptions, 'verifier'>): RequestHandler;
}

/** Runtime hooks of {@link createAuth}. */
export interface CreateAuthOptions {
  /** Clock, ms since the epoch (default `Date.now`). */
  now?: () => number;
  /** Revocation check by `jti` (breach response). */
  isRevoked?: (jti: string | undefined, claims: JWTPayload) => boolean;
  /** Default logger of the middleware and the token endpoint. */
  log?: Logger;
}

function readJwk(path: string): JWK {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as JWK;
  } catch (err) {
    throw new Error(`Cannot read the token signing key ${path}: ${(err as Error).message}`);
  }
}

/**
 * @param cfg - a validated `auth` section with absolute file paths (`loadNodeConfig` resolves them).
 * @param opts - clock, revocation hook, logger.
 * @throws Error when a JWK Set file cannot be read or holds private or symmetric keys, or the
 *   signing key is unusable (see {@link TokenIssuer}).
 */
export function createAuth(cfg: AuthConfig, opts: CreateAuthOptions = {}): AuthSetup {
  const algorithms = cfg.algorithms ?? DEFAULT_ALGORITHMS;
  const common = {
    audience: cfg.audience,
    algorithms,
    clockSkewSeconds: cfg.clockSkewSeconds ?? DEFAULT_CLOCK_SKEW_SECONDS,
    ...(opts.now ? { now: opts.now } : {}),
    ...(opts.isRevoked ? { isRevoked: opts.isRevoked } : {}),
  };
  const verifiers: TokenVerifier[] = [];
  if (cfg.issuer !== undefined) {
    const keys = cfg.jwksFile ? fileKeySet(cfg.jwksFile) : remoteKeySet(cfg.jwksUri!);
    verifiers.push(new TokenVerifier({ ...common, issuer: cfg.issuer, keys }));
  }
  let issuer: TokenIssuer | undefined;
  const bs = cfg.backendServices;
  if (bs) {
    issuer = new TokenIssuer({
      issuer: bs.issuer,
      audience: cfg.audience,
      tokenUrl: bs.tokenUrl,
      signingKey: readJwk(bs.signingKeyFile),
      clients: bs.clients.map((c) => ({ clientId: c.clientId, scope: c.scope, keys: c.jwksFile ? fileKeySet(c.jwksFile) : remoteKeySet(c.jwksUri!) })),
      algorithms,
      ...(bs.tokenLifetimeSeconds !== undefined ? { tokenLifetimeSeconds: bs.tokenLifetimeSeconds } : {}),
      clockSkewSeconds: common.clockSkewSeconds,
      ...(opts.now ? { now: opts.now } : {}),
    });
    verifiers.push(new TokenVerifier({ ...common, issuer: bs.issuer, keys: localKeySet({ keys: [issuer.publicJwk()] }) }));
  }
  const verifier = new MultiIssuerVerifier(verifiers);
  const discovery = smartConfigurationHandler({
    issuer: cfg.issuer ?? bs!.issuer,
    jwksUri: cfg.jwksUri,
    authorizationEndpoint: cfg.authorizationEndpoint,
    tokenEndpoint: bs?.tokenUrl ?? cfg.tokenEndpoint,
    algorithms,
    capabilities: cfg.capabilities,
  });
  const tokenUrl = bs?.tokenUrl ?? cfg.tokenEndpoint;
  return {
    verifier,
    discovery,
    endpoints: { ...(tokenUrl ? { token: tokenUrl } : {}), ...(cfg.authorizationEndpoint ? { authorize: cfg.authorizationEndpoint } : {}) },
    tokenEndpoint: issuer ? tokenEndpointHandler(issuer, opts.log) : undefined,
    issuer,
    // verified tokens are reused (no second signature check) under the same revocation hook and clock
    middleware: (m = {}) => smartAuth({ ...(opts.log ? { log: opts.log } : {}), tokenCache: { isRevoked: opts.isRevoked, now: opts.now }, ...m, verifier }),
  };
}
