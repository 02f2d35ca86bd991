/**
 * The `Prefer` request header (RFC 7240) as FHIR uses it on writes:
 * `return=minimal|representation|OperationOutcome` (https://hl7.org/fhir/R4/http.html#ops) and
 * tidegate's opt-in to strict optimistic locking, `handling=strict` (see {@link parsePrefer}).
 */
import { badRequest, outcome } from './outcomes.ts';
import type { FhirResult } from './service.ts';
import type { OperationOutcomeIssue } from '@medplum/fhirtypes';

/** What a client asked for in `Prefer`. */
export interface Preferences {
  /** `return=`: what the body of a successful write holds; default `representation`. */
  return: 'minimal' | 'representation' | 'OperationOutcome';
  /**
   * `handling=strict` on a write: with `If-Match`, a version that is not the current one answers
   * `412` instead of merging against the named version. Without it (or with `handling=lenient`)
   * the write merges (tidegate's default).
   */
  strict: boolean;
}

/**
 * Parses a `Prefer` header. Tokens are comma- or semicolon-separated `name=value` pairs; unknown
 * tokens are ignored (RFC 7240 §2).
 * @param header - the header value, or undefined.
 * @returns The preferences (defaults when absent).
 * @throws {@link FhirError} 400 for a `return=` value other than the three FHIR defines.
 */
export function parsePrefer(header: string | undefined): Preferences {
  const out: Preferences = { return: 'representation', strict: false };
  if (!header) return out;
  for (const token of header.split(/[,;]/)) {
    const [rawName, rawValue] = token.split('=', 2).map((s) => s.trim().replace(/^"|"$/g, ''));
    const name = rawName?.toLowerCase();
    if (name === 'return') {
      if (rawValue === 'minimal' || rawValue === 'representation' || rawValue === 'OperationOutcome') out.return = rawValue;
      else throw badRequest('Prefer return= must be minimal, representation or OperationOutcome');
    } else if (name === 'handling') {
      out.strict = rawValue?.toLowerCase() === 'strict';
    }
  }
  return out;
}

/**
 * Shapes a successful write's result as the client preferred: `minimal` drops the body (headers
 * stay), `OperationOutcome` replaces it with an OperationOutcome holding an information issue and
 * the write's hints and warnings (https://hl7.org/fhir/R4/http.html#ops), `representation` keeps
 * the resource.
 * @param result - the write's result (status 200/201, ETag, Location, body).
 * @param prefs - from {@link parsePrefer}.
 * @param warnings - the validator's non-blocking issues of the write (warning, information).
 * @returns A new result.
 */
export function applyPrefer(result: FhirResult, prefs: Preferences, warnings: readonly OperationOutcomeIssue[] = []): FhirResult {
  if (prefs.return === 'representation' || result.body === undefined) return result;
  const { body: _body, ...rest } = result;
  if (prefs.return === 'minimal') return rest;
  const what = result.status === 201 ? 'created' : 'updated';
  const oo = outcome('information', 'informational', `Resource ${what} (version ${result.headers.ETag ?? 'unknown'})`);
  return { ...rest, body: { ...oo, issue: [...oo.issue!, ...warnings] } };
}
