/**
 * `GET [base]/.well-known/smart-configuration`: the SMART discovery document
 * (https://hl7.org/fhir/smart-app-launch/conformance.html, "Metadata"). Public (no token): clients
 * read it to find the authorization server before they have one.
 */
import type { Request, RequestHandler, Response } from 'express';

/** What the document advertises. */
export interface SmartConfigurationInput {
  /** The authorization server's issuer (`iss` of the tokens this node accepts). */
  issuer: string;
  /** Its JWK Set URL, when it has one (a node configured with a local JWK Set file may not). */
  jwksUri?: string | undefined;
  /** Its authorization endpoint (needed for app launch; absent for backend services only). */
  authorizationEndpoint?: string | undefined;
  /** Its token endpoint. */
  tokenEndpoint?: string | undefined;
  /** JWS algorithms the node accepts in access tokens and client assertions. */
  algorithms: readonly string[];
  /** Extra SMART capabilities of the authorization server (e.g. `launch-standalone`). */
  capabilities?: readonly string[] | undefined;
}

/** Capabilities this node's resource server always implements (conformance.html, "Capabilities"). */
const NODE_CAPABILITIES = ['permission-v1', 'permission-v2', 'permission-patient', 'permission-user', 'context-standalone-patient'];

/**
 * Builds the discovery document. Required fields per SMART 2.x: `token_endpoint`,
 * `grant_types_supported`, `capabilities`, `code_challenge_methods_supported` (`S256`, never
 * `plain`); the others are filled when known.
 * @param input - what the configuration says about the authorization server.
 * @returns A JSON object (no `undefined` members).
 */
export function smartConfiguration(input: SmartConfigurationInput): Record<string, unknown> {
  const grants = ['client_credentials', ...(input.authorizationEndpoint ? ['authorization_code'] : [])];
  const capabilities = [...new Set([...NODE_CAPABILITIES, ...(input.tokenEndpoint ? ['client-confidential-asymmetric'] : []), ...(input.capabilities ?? [])])];
  const doc: Record<string, unknown> = {
    issuer: input.issuer,
    ...(input.jwksUri ? { jwks_uri: input.jwksUri } : {}),
    ...(input.authorizationEndpoint ? { authorization_endpoint: input.authorizationEndpoint } : {}),
    ...(input.tokenEndpoint ? { token_endpoint: input.tokenEndpoint } : {}),
    grant_types_supported: grants,
    token_endpoint_auth_methods_supported: ['private_key_jwt'],
    token_endpoint_auth_signing_alg_values_supported: [...input.algorithms],
    scopes_supported: ['openid', 'fhirUser', 'launch/patient', 'patient/*.rs', 'patient/*.cruds', 'user/*.rs', 'user/*.cruds', 'system/*.rs', 'system/*.cruds', 'patient/*.read', 'user/*.read', 'system/*.read', 'patient/*.*', 'user/*.*', 'system/*.*'],
    response_types_supported: input.authorizationEndpoint ? ['code'] : [],
    capabilities,
    code_challenge_methods_supported: ['S256'],
  };
  return doc;
}

/**
 * The express handler for `GET [base]/.well-known/smart-configuration` (mount it before the
 * authorization middleware). Answers `application/json` (conformance.html) with a one-hour cache.
 * @param input - see {@link smartConfiguration}.
 */
export function smartConfigurationHandler(input: SmartConfigurationInput): RequestHandler {
  const body = JSON.stringify(smartConfiguration(input));
  return (_req: Request, res: Response) => {
    res.status(200).setHeader('Content-Type', 'application/json; charset=utf-8');
    res.setHeader('Cache-Control', 'public, max-age=3600');
    res.send(body);
  };
}
