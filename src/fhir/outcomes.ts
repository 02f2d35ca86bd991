/**
 * The one error type of the FHIR edge, and OperationOutcome builders.
 * https://hl7.org/fhir/R4/operationoutcome.html and https://hl7.org/fhir/R4/http.html#Status-Codes.
 */
import { OperationOutcomeError } from '@medplum/core';
import type { OperationOutcome, OperationOutcomeIssue } from '@medplum/fhirtypes';

/** OperationOutcome issue types used here (https://hl7.org/fhir/R4/valueset-issue-type.html). */
export type IssueCode = OperationOutcomeIssue['code'];

/** An OperationOutcome with the HTTP status it answers with. Thrown by handlers, caught by the adapter. */
export class FhirError extends OperationOutcomeError {
  readonly status: number;
  override readonly name = 'FhirError';

  /**
   * @param status - HTTP status code (4xx/5xx).
   * @param outcome - the OperationOutcome body.
   */
  constructor(status: number, outcome: OperationOutcome) {
    super(outcome);
    this.status = status;
  }
}

/**
 * Builds an OperationOutcome with one issue.
 * @param severity - issue severity.
 * @param code - issue type code.
 * @param diagnostics - human-readable text; must not contain PHI.
 * @param expression - FHIRPath expressions of the elements concerned.
 */
export function outcome(severity: 'error' | 'warning' | 'information' | 'fatal', code: IssueCode, diagnostics: string, expression?: string[]): OperationOutcome {
  return {
    resourceType: 'OperationOutcome',
    issue: [{ severity, code, diagnostics, ...(expression?.length ? { expression } : {}) }],
  };
}

/** 400 Bad Request. */
export const badRequest = (msg: string, expression?: string[]): FhirError => new FhirError(400, outcome('error', 'invalid', msg, expression));
/** 404 Not Found. */
export const notFound = (msg: string): FhirError => new FhirError(404, outcome('error', 'not-found', msg));
/** 410 Gone (deleted resource). */
export const gone = (msg: string): FhirError => new FhirError(410, outcome('error', 'deleted', msg));
/** 405 Method Not Allowed. */
export const methodNotAllowed = (msg: string): FhirError => new FhirError(405, outcome('error', 'not-supported', msg));
/** 501 Not Implemented. */
export const notImplemented = (msg: string): FhirError => new FhirError(501, outcome('error', 'not-supported', msg));
/** 412 Precondition Failed. */
export const preconditionFailed = (msg: string): FhirError => new FhirError(412, outcome('error', 'conflict', msg));
/** 415 Unsupported Media Type. */
export const unsupportedMediaType = (msg: string): FhirError => new FhirError(415, outcome('error', 'not-supported', msg));
/** 422 Unprocessable Entity with the validator's issues. */
export const unprocessable = (issues: OperationOutcomeIssue[]): FhirError => new FhirError(422, { resourceType: 'OperationOutcome', issue: issues });

/**
 * Turns anything thrown into a status and an OperationOutcome. Unknown errors become 500 with a
 * generic message (their text may contain PHI, so it is logged by the caller, not returned).
 */
export function toOutcome(err: unknown): { status: number; outcome: OperationOutcome } {
  if (err instanceof FhirError) return { status: err.status, outcome: err.outcome };
  return { status: 500, outcome: outcome('error', 'exception', 'Internal server error') };
}
