/**
 * `_summary` and `_elements`: the subsets of a resource a client may ask for, enforced on the node
 * (https://hl7.org/fhir/R4/search.html#summary, https://hl7.org/fhir/R4/search.html#elements).
 *
 * - `_summary=true`: the top-level elements marked `isSummary` in the resource's base
 *   StructureDefinition (https://hl7.org/fhir/R4/elementdefinition-definitions.html#ElementDefinition.isSummary),
 *   read from `@medplum/core`'s type schema (`summaryProperties`);
 * - `_summary=text`: `text`, `id`, `meta` and the top-level mandatory elements (min ≥ 1);
 * - `_summary=data`: everything but `text`;
 * - `_summary=count`: no resources, only `Bundle.total` (search and history only);
 * - `_summary=false`: the whole resource;
 * - `_elements=a,b`: the listed top-level elements (base names: `value` for `value[x]`).
 *
 * Every subset also keeps `resourceType`, `id`, `meta`, the top-level mandatory elements and the
 * modifier elements (`isModifier`, and `modifierExtension`): a reader must never see a resource
 * without the elements that change its meaning. A subsetted resource carries the tag
 * `http://terminology.hl7.org/CodeSystem/v3-ObservationValue|SUBSETTED` in `meta.tag`, so it is not
 * used to update the whole resource (a write carrying it is refused, see {@link isSubsetted}).
 * Applying a subset is idempotent: a resource already subsetted (by the hospital FHIR server, or
 * by the node) comes out the same when subsetted again with the same request.
 *
 * Precedence when several are given: `_summary=count` wins, then `_elements`, then `_summary`
 * `true`/`text`/`data`.
 */
import { capitalize, tryGetDataType } from '@medplum/core';
import { isJsonObject } from './json.ts';
import type { FhirJson, FhirJsonObject } from './json.ts';
import { badRequest } from './outcomes.ts';
import { ensureFhirDefinitionsLoaded, resourceModifierElements } from '../hospital/definitions.ts';

/** The R4 code system of the SUBSETTED tag (https://hl7.org/fhir/R4/v3/ObservationValue/cs.html). */
export const SUBSETTED_SYSTEM = 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue';
/** The code of the SUBSETTED tag. */
export const SUBSETTED_CODE = 'SUBSETTED';
/** The pre-R4 (DSTU3) system of the same code, still sent by some servers (Medplum, older HAPI). */
const LEGACY_SUBSETTED_SYSTEM = 'http://hl7.org/fhir/v3/ObservationValue';

/** The interaction a subset is asked for on: `count` is only meaningful for a list. */
export type SubsetInteraction = 'read' | 'search' | 'history';

/** A resolved subset request; `undefined` where one is used means the whole resource. */
export type Subset =
  | { readonly kind: 'count' }
  | { readonly kind: 'summary'; readonly mode: 'true' | 'text' | 'data' }
  | { readonly kind: 'elements'; readonly names: ReadonlySet<string> };

/** A subset that shapes a resource (every kind but `count`). */
export type ResourceSubset = Exclude<Subset, { kind: 'count' }>;

const SUMMARY_VALUES = new Set(['true', 'text', 'data', 'count', 'false']);
/** Elements every subset keeps (https://hl7.org/fhir/R4/search.html#elements). */
const ALWAYS_KEPT = new Set(['resourceType', 'id', 'meta', 'modifierExtension']);

/** What subsetting needs to know of one resource type. */
interface TypeInfo {
  /** JSON property (without a leading `_`) → element name (`valueQuantity` → `value`). */
  readonly keys: ReadonlyMap<string, string>;
  readonly summary: ReadonlySet<string>;
  readonly mandatory: ReadonlySet<string>;
  readonly modifiers: ReadonlySet<string>;
}

/** Indexed R4 resource types (at most ~150): a `resourceType` that is no R4 type (a hospital's answer is not validated) is not remembered, so the map stays bounded. */
const typeInfos = new Map<string, TypeInfo>();
function typeInfo(type: string): TypeInfo | undefined {
  const known = typeInfos.get(type);
  if (known !== undefined) return known;
  ensureFhirDefinitionsLoaded();
  const schema = tryGetDataType(type);
  if (!schema || schema.kind !== 'resource') return undefined;
  const keys = new Map<string, string>();
  for (const [path, el] of Object.entries(schema.elements)) {
    if (path.includes('.')) continue;
    if (path.endsWith('[x]')) {
      const base = path.slice(0, -3);
      for (const t of el.type) keys.set(base + capitalize(t.code), base);
    } else {
      keys.set(path, path);
    }
  }
  let modifiers: ReadonlySet<string> | undefined;
  const info: TypeInfo = {
    keys,
    summary: schema.summaryProperties ?? new Set(),
    mandatory: schema.mandatoryProperties ?? new Set(),
    get modifiers() {
      return (modifiers ??= resourceModifierElements(type));
    },
  };
  typeInfos.set(type, info);
  return info;
}

/**
 * How many resource types subsetting has indexed (at most the R4 resource types: a `resourceType`
 * that is not one is never remembered). For tests and diagnostics.
 * @returns The number of indexed types.
 */
export function subsetTypeCacheSize(): number {
  return typeInfos.size;
}

/** The element names of `type` (`value` for `value[x]`); empty for an unknown type. */
function elementNames(type: string): ReadonlySet<string> {
  return new Set(typeInfo(type)?.keys.values() ?? []);
}

/**
 * Reads `_summary` and `_elements` from a request's parameters.
 *
 * Invalid values (https://hl7.org/fhir/R4/search.html#errors): a `_summary` value other than
 * `true|text|data|count|false`, `count` on a read, two different `_summary` values, an empty
 * `_elements`, an `_elements` name that is not a top-level element of any of `types`, or a
 * modifier on either name (`_summary:x`). Under `Prefer: handling=strict` they answer 400;
 * otherwise they are ignored: the bad `_summary` is dropped (the first good one is used) and bad
 * `_elements` names are dropped (an `_elements` left empty is dropped).
 *
 * @param types - the resource types the request is about (one for a read or a type-level search).
 * @param pairs - the request's `[name, value]` parameters in order; other parameters pass through.
 * @param strict - `Prefer: handling=strict`.
 * @param interaction - `read` (also vread) refuses `_summary=count`.
 * @returns The subset (`undefined`: the whole resource) and the parameters with the subset ones
 *   cleaned (what was applied, for a search's `self` link and the hospital query).
 * @throws {@link FhirError} 400 `invalid` naming the parameter (never its value) when `strict`.
 */
export function parseSubset(
  types: readonly string[],
  pairs: ReadonlyArray<[string, string]>,
  strict: boolean,
  interaction: SubsetInteraction,
): { subset: Subset | undefined; pairs: Array<[string, string]> } {
  let summary: string | undefined;
  // a Set, not an array copied per parameter: a batch entry's URL may repeat `_elements` 10⁵ times (linear, not quadratic)
  let names: Set<string> | undefined;
  const known = types.map(elementNames);
  const refuse = (msg: string, name: string): void => {
    if (strict) throw badRequest(`${msg} (Prefer: handling=strict)`, [name]);
  };
  const out: Array<[string, string]> = [];
  let elementsAt = -1;
  for (const [name, value] of pairs) {
    const code = name.split(':')[0];
    if (code !== '_summary' && code !== '_elements') {
      out.push([name, value]);
      continue;
    }
    if (name !== code) {
      refuse(`${code} takes no modifier`, code);
      continue;
    }
    if (code === '_summary') {
      if (!SUMMARY_VALUES.has(value)) refuse('_summary must be true, text, data, count or false', '_summary');
      else if (value === 'count' && interaction === 'read') refuse('_summary=count applies to a search or a history, not a read', '_summary');
      else if (summary !== undefined && summary !== value) refuse('_summary given twice with different values', '_summary');
      else if (summary === undefined) {
        summary = value;
        out.push([name, value]);
      }
      continue;
    }
    const listed = value.split(',').map((s) => s.trim());
    const good: string[] = [];
    for (const n of listed) {
      if (n === '') continue;
      if (known.some((k) => k.has(n))) good.push(n);
      else refuse(`_elements names ${n.slice(0, 64)}, not a top-level element of ${types.join(', ')}`, '_elements');
    }
    if (listed.every((n) => n === '')) refuse('_elements needs at least one element name', '_elements');
    if (good.length === 0) continue;
    names ??= new Set();
    for (const n of good) names.add(n);
    if (elementsAt < 0) {
      elementsAt = out.length;
      out.push([name, '']);
    }
  }
  if (names !== undefined) out[elementsAt] = ['_elements', [...names].join(',')];
  let subset: Subset | undefined;
  if (summary === 'count') subset = { kind: 'count' };
  else if (names !== undefined) subset = { kind: 'elements', names };
  else if (summary === 'true' || summary === 'text' || summary === 'data') subset = { kind: 'summary', mode: summary };
  return { subset, pairs: out };
}

/** True when the JSON property `key` of a resource of `info`'s type is kept by `subset`. */
function keeps(info: TypeInfo | undefined, subset: ResourceSubset, key: string): boolean {
  const bare = key.startsWith('_') ? key.slice(1) : key;
  if (ALWAYS_KEPT.has(bare)) return true;
  if (subset.kind === 'summary' && subset.mode === 'data') return bare !== 'text';
  const element = info?.keys.get(bare);
  if (element === undefined) return subset.kind === 'elements' && subset.names.has(bare);
  if (info!.mandatory.has(element)) return true;
  // Every top-level modifier of an R4 resource but modifierExtension (always kept) is isSummary
  // (pinned by test/fhir-subset.test.ts), so _summary=true never needs the modifier index.
  if (subset.kind === 'summary' && subset.mode === 'true') return info!.summary.has(element);
  if (info!.modifiers.has(element)) return true;
  return subset.kind === 'elements' ? subset.names.has(element) : element === 'text';
}

/** True when `coding` is a SUBSETTED tag (R4 system, or the DSTU3 one). */
function isSubsettedTag(coding: FhirJson | undefined): boolean {
  return isJsonObject(coding) && coding.code === SUBSETTED_CODE && (coding.system === SUBSETTED_SYSTEM || coding.system === LEGACY_SUBSETTED_SYSTEM);
}

/**
 * The subset of one resource (module doc): a new object holding the kept top-level elements (the
 * values themselves are shared, not copied) with `meta.tag` carrying SUBSETTED once (a DSTU3-system
 * SUBSETTED tag is replaced by the R4 one). Idempotent. An OperationOutcome is returned unchanged.
 *
 * @param resource - a parsed resource (lossless numbers), not changed.
 * @param subset - from {@link parseSubset}, not `count`.
 * @returns The subsetted resource.
 */
export function subsetResource(resource: FhirJsonObject, subset: ResourceSubset): FhirJsonObject {
  if (resource.resourceType === 'OperationOutcome') return resource;
  const info = typeof resource.resourceType === 'string' ? typeInfo(resource.resourceType) : undefined;
  const out: FhirJsonObject = {};
  for (const [key, value] of Object.entries(resource)) {
    if (keeps(info, subset, key)) out[key] = value;
  }
  const meta: FhirJsonObject = isJsonObject(resource.meta) ? { ...resource.meta } : {};
  const tags = Array.isArray(meta.tag) ? meta.tag.filter((t) => !isSubsettedTag(t)) : [];
  meta.tag = [...tags, { system: SUBSETTED_SYSTEM, code: SUBSETTED_CODE }];
  out.meta = meta;
  return out;
}


/**
 * True when a resource carries the SUBSETTED tag in `meta.tag` (R4 or DSTU3 system). Such a
 * resource is incomplete and must not be used to update the whole resource
 * (https://hl7.org/fhir/R4/search.html#summary: "to ensure that the incomplete resource is not
 * actually used to overwrite a complete resource").
 * @param resource - a parsed resource.
 */
export function isSubsetted(resource: FhirJsonObject): boolean {
  return isJsonObject(resource.meta) && Array.isArray(resource.meta.tag) && resource.meta.tag.some(isSubsettedTag);
}
