/**
 * The `$validate` operation at type level: `POST [type]/$validate`
 * (https://hl7.org/fhir/R4/resource-operation-validate.html).
 */
import type { OperationOutcome } from '@medplum/fhirtypes';
import { FhirJsonError, isJsonObject, parseFhirJson } from './json.ts';
import type { FhirJson, FhirJsonObject } from './json.ts';
import { badRequest, FhirError, outcome } from './outcomes.ts';
import { validateWithProfiles } from './profiles.ts';
import type { ProfileRegistry } from './profiles.ts';

/**
 * Validates the body of a `$validate` request.
 *
 * The body is either a `Parameters` resource with a `resource` parameter (and optionally
 * `profile`, a canonical URL to check in addition to `meta.profile`, and `mode`; `mode=delete` is
 * not supported) or the resource itself.
 *
 * @param type - the resource type of the URL; the resource must be of this type.
 * @param text - the raw body (JSON text).
 * @param profiles - the known profiles.
 * @returns An OperationOutcome (returned with 200 whether or not the resource is valid, as the
 *   operation page says): every issue of the base R4 validation and of each claimed or requested
 *   profile, errors and warnings, with FHIRPath expressions; a single `information` issue when
 *   there are none.
 * @throws {@link FhirError} 400 for malformed JSON, a body that is not a resource, a resource of
 *   another type, or a bad `profile`/`mode` parameter.
 */
export function validateOperation(type: string, text: string, profiles: ProfileRegistry): OperationOutcome {
  let body: FhirJson;
  try {
    body = parseFhirJson(text);
  } catch (err) {
    if (err instanceof FhirJsonError) throw badRequest('Malformed JSON body');
    throw err;
  }
  if (!isJsonObject(body)) throw badRequest('Body must be a Parameters resource or a FHIR resource');
  let resource: FhirJsonObject = body;
  const extra: string[] = [];
  const params = body.resourceType === 'Parameters' && Array.isArray(body.parameter) ? body.parameter.filter(isJsonObject) : [];
  const wrapped = params.find((p) => p.name === 'resource' && isJsonObject(p.resource));
  if (wrapped && isJsonObject(wrapped.resource)) {
    resource = wrapped.resource;
    for (const p of params) {
      if (p.name === 'profile') {
        const url = p.valueUri ?? p.valueCanonical ?? p.valueString;
        if (typeof url !== 'string' || url === '') throw badRequest('The profile parameter must be a canonical URL', ['Parameters.parameter']);
        extra.push(url);
      } else if (p.name === 'mode') {
        if (p.valueCode === 'delete') throw new FhirError(501, outcome('error', 'not-supported', '$validate mode=delete is not supported'));
        if (p.valueCode !== undefined && p.valueCode !== 'create' && p.valueCode !== 'update' && p.valueCode !== 'profile') throw badRequest('mode must be create, update, delete or profile');
      }
    }
  } else if (body.resourceType === 'Parameters' && type !== 'Parameters') {
    throw badRequest('A Parameters body must carry the resource in a parameter named "resource"');
  }
  if (resource.resourceType !== type) throw badRequest(`The resource to validate must be a ${type}`, ['resourceType']);
  const issues = validateWithProfiles(resource, profiles, extra);
  if (issues.length === 0) return outcome('information', 'informational', 'Validation passed: no issues');
  return { resourceType: 'OperationOutcome', issue: issues };
}
