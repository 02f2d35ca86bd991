/**
 * Errors of client authorization, answered as an OperationOutcome plus a `WWW-Authenticate: Bearer`
 * challenge (RFC 6750 §3, https://www.rfc-editor.org/rfc/rfc6750#section-3).
 *
 * Every {@link AuthError} carries a stable `reason` (precise, for logs and the audit trail) and an
 * RFC 6750 `error` code (coarse, for the client). The text returned to the client is deliberately
 * generic for signature, key and claim failures: a client learns that its token is invalid, not
 * which check an attacker would have to defeat next.
 */
import type { OperationOutcome } from '@medplum/fhirtypes';
import { FhirError, outcome } from '../fhir/outcomes.ts';
import type { IssueCode } from '../fhir/outcomes.ts';

/** Stable reasons of {@link AuthError}; `reason` in logs and audit events. */
export const AUTH_ERROR_REASONS = Object.freeze([
  // 401, no error code (RFC 6750 §3.1: a request without credentials gets a bare challenge)
  'missing_token',
  // 401 invalid_token
  'malformed_token',
  'alg_none',
  'alg_symmetric',
  'alg_not_allowed',
  'unknown_kid',
  'bad_signature',
  'expired',
  'not_yet_valid',
  'wrong_issuer',
  'wrong_audience',
  'missing_claim',
  'revoked',
  // 400 invalid_request
  'bad_request',
  // 403 insufficient_scope
  'insufficient_scope',
  'outside_compartment',
  'patient_context_required',
  'unsupported_granular_scope',
  // 503: the key set could not be fetched (not the token's fault)
  'keys_unavailable',
] as const);

/** One of {@link AUTH_ERROR_REASONS}. */
export type AuthErrorReason = (typeof AUTH_ERROR_REASONS)[number];

/** RFC 6750 §3.1 error codes. */
export type BearerErrorCode = 'invalid_request' | 'invalid_token' | 'insufficient_scope';

const STATUS: Record<AuthErrorReason, number> = {
  missing_token: 401,
  malformed_token: 401,
  alg_none: 401,
  alg_symmetric: 401,
  alg_not_allowed: 401,
  unknown_kid: 401,
  bad_signature: 401,
  expired: 401,
  not_yet_valid: 401,
  wrong_issuer: 401,
  wrong_audience: 401,
  missing_claim: 401,
  revoked: 401,
  bad_request: 400,
  insufficient_scope: 403,
  outside_compartment: 403,
  patient_context_required: 403,
  unsupported_granular_scope: 403,
  keys_unavailable: 503,
};

/** OperationOutcome issue type per reason (https://hl7.org/fhir/R4/valueset-issue-type.html). */
function issueCode(reason: AuthErrorReason): IssueCode {
  if (reason === 'missing_token') return 'login';
  if (reason === 'expired') return 'expired';
  if (reason === 'bad_request') return 'invalid';
  if (reason === 'keys_unavailable') return 'transient';
  const status = STATUS[reason];
  return status === 403 ? 'forbidden' : 'security';
}

function bearerCode(reason: AuthErrorReason): BearerErrorCode | undefined {
  const status = STATUS[reason];
  if (reason === 'missing_token' || status === 503) return undefined;
  if (status === 400) return 'invalid_request';
  if (status === 403) return 'insufficient_scope';
  return 'invalid_token';
}

/**
 * An authorization failure: 401 (no or invalid token), 403 (token valid, permission missing),
 * 400 (malformed request) or 503 (key set unreachable). Extends {@link FhirError}, so the FHIR
 * edge's error handler also turns it into its OperationOutcome; {@link sendAuthError} adds the
 * `WWW-Authenticate` header.
 */
export class AuthError extends FhirError {
  /** Precise reason; for logs and audit only. */
  readonly reason: AuthErrorReason;
  /** RFC 6750 error code, undefined for a bare challenge (no credentials) or a 503. */
  readonly bearerError: BearerErrorCode | undefined;
  /** Client-facing description (no PHI, no token contents). */
  readonly description: string;
  /** For 403: the scope(s) that would have allowed the request (RFC 6750 §3 `scope` attribute). */
  readonly requiredScope: string | undefined;

  /**
   * @param reason - stable reason (decides the status and the RFC 6750 code).
   * @param description - client-facing text; must not contain PHI or token contents.
   * @param requiredScope - for 403: a space-separated list of scopes that would be enough.
   */
  constructor(reason: AuthErrorReason, description: string, requiredScope?: string) {
    super(STATUS[reason], outcome('error', issueCode(reason), description) as OperationOutcome);
    this.reason = reason;
    this.bearerError = bearerCode(reason);
    this.description = description;
    this.requiredScope = requiredScope;
  }
}

/** RFC 6750 §3: `error_description` and `scope` may hold only %x20-21 / %x23-5B / %x5D-7E. */
function quotable(s: string): string {
  return s.replace(/[^\x20\x21\x23-\x5B\x5D-\x7E]/g, '?');
}

/**
 * The `WWW-Authenticate` value for an error (RFC 6750 §3), e.g.
 * `Bearer realm="tidegate", error="invalid_token", error_description="The access token is invalid"`.
 * @param err - the failure.
 * @param realm - the protection space (RFC 7235 §2.2).
 */
export function wwwAuthenticate(err: AuthError, realm: string): string {
  const parts = [`realm="${quotable(realm)}"`];
  if (err.bearerError) {
    parts.push(`error="${err.bearerError}"`, `error_description="${quotable(err.description)}"`);
    if (err.requiredScope) parts.push(`scope="${quotable(err.requiredScope)}"`);
  }
  return `Bearer ${parts.join(', ')}`;
}
