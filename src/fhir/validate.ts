/**
 * Validation of resources against the base R4 StructureDefinitions, with Medplum's validator.
 * https://hl7.org/fhir/R4/validation.html
 */
import { isResourceType, validateResource } from '@medplum/core';
import type { OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';
import { ensureFhirDefinitionsLoaded } from '../hospital/definitions.ts';
import { toPlainJson } from './json.ts';
import type { FhirJsonObject } from './json.ts';

/** FHIR id: https://hl7.org/fhir/R4/datatypes.html#id */
export const FHIR_ID = /^[A-Za-z0-9\-.]{1,64}$/;

/**
 * True when `type` is an R4 resource type (loads the definitions on first call, ~1–2 s).
 */
export function isKnownResourceType(type: string): boolean {
  ensureFhirDefinitionsLoaded();
  return isResourceType(type);
}

/**
 * Validates a resource against the base R4 definitions.
 * @param resource - parsed FHIR JSON.
 * @returns The error- and fatal-severity issues (empty when valid), each with a FHIRPath expression.
 */
export function validateFhirResource(resource: FhirJsonObject): OperationOutcomeIssue[] {
  ensureFhirDefinitionsLoaded();
  try {
    const issues = validateResource(toPlainJson(resource) as Resource);
    return issues.filter((i) => i.severity === 'error' || i.severity === 'fatal');
  } catch (err) {
    const e = err as { outcome?: { issue?: OperationOutcomeIssue[] } };
    if (e.outcome?.issue) return e.outcome.issue;
    return [{ severity: 'error', code: 'invalid', diagnostics: 'Resource could not be validated' }];
  }
}
