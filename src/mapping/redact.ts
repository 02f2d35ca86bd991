/**
 * Per-peer redaction of elements (docs/mappings.md "Redaction"): what a projection peer receives is
 * the resource with the elements its route's `redact` rules name removed or masked.
 *
 * - `remove`: every occurrence of the element is left out (a primitive's `_element` companion with
 *   it, https://hl7.org/fhir/R4/json.html#primitive).
 * - `mask`: every occurrence keeps its place but its value is replaced by the data-absent-reason
 *   extension with code `masked` (https://hl7.org/fhir/R4/extension-data-absent-reason.html):
 *   a complex value becomes `{ "extension": [DAR] }`; a primitive value is dropped and its
 *   `_element` companion becomes `{ "extension": [DAR] }`; in a repeating primitive every item
 *   becomes `null` with a companion `{ "extension": [DAR] }` at the same index (the two JSON arrays
 *   stay aligned, which the merge flattening keeps as one pair leaf, src/merge/flatten.ts).
 * - A rule with `where` (FHIRPath, https://hl7.org/fhir/R4/fhirpath.html) applies only when the
 *   condition holds on the original resource; a condition that fails to evaluate redacts (fail closed).
 *
 * Paths are FHIR element paths (https://hl7.org/fhir/R4/elementdefinition.html#path) checked
 * against the R4 StructureDefinitions (`@medplum/core` `tryGetDataType`); `[x]` matches the typed
 * variants (`Observation.value[x]` → `valueQuantity`, `valueString`, …).
 *
 * Nested resources: rules reach resources nested in the one sent (contained resources,
 * `Bundle.entry.resource`, any element of type `Resource`), recursively up to
 * {@link MAX_NESTED_RESOURCE_DEPTH} levels; each gets the rules of its own type ({@link redactResource}).
 * A peer with rules receives as projections only the types its rules name ({@link projectedTypesFor});
 * a resource of another type that nests one of them is withheld from the peer (`Mapping.explainRoute`
 * with {@link findNestedResource}). Copies of values held as other elements
 * (`Observation.subject.display`, attachments, free text) are not found: they need rules of their own.
 *
 * When anything was redacted, the narrative (`text`, which may repeat a redacted value in its XHTML)
 * is removed too (the root's and every nested resource's), and the resource gets the security label
 * `http://terminology.hl7.org/CodeSystem/v3-ObservationValue|REDACTED`
 * (https://terminology.hl7.org/CodeSystem-v3-ObservationValue.html) in `meta.security`.
 */
import { evalFhirPath, tryGetDataType } from '@medplum/core';
import type { FhirPathAtom, InternalSchemaElement } from '@medplum/core';
import { ensureFhirDefinitionsLoaded } from '../hospital/definitions.ts';
import { isJsonObject, isLosslessNumber, toPlainJson } from '../fhir/json.ts';
import type { FhirJson, FhirJsonObject } from '../fhir/json.ts';
import { compileCondition, conditionErrorWithoutValues, conditionHolds } from './routing.ts';
import type { RedactRule } from './schema.ts';
import { REDACTED_LABEL_RULE, V3_OBSERVATION_VALUE } from '../tide/peer-authz.ts';

/** URL of the data-absent-reason extension (https://hl7.org/fhir/R4/extension-data-absent-reason.html). */
export const DATA_ABSENT_REASON_URL = 'http://hl7.org/fhir/StructureDefinition/data-absent-reason';
/** `Coding.system` of the REDACTED security label (HL7 v3 ObservationValue). */
export const REDACTED_SYSTEM = V3_OBSERVATION_VALUE;
/** `Coding.code` of the REDACTED security label. */
export const REDACTED_CODE = 'REDACTED';
/** The label as a token `system|code`: the built-in withheld-label rule of every peer (src/tide/peer-authz.ts). */
export const REDACTED_TOKEN = REDACTED_LABEL_RULE;

/** A redaction rule ready to apply: see {@link compileRedactRule}. */
export interface CompiledRedactRule {
  /** The element path as configured, e.g. `Patient.telecom`. */
  path: string;
  /** Its resource type, e.g. `Patient`. */
  type: string;
  /** The element names below the resource, e.g. `['address', 'line']`; a name ending in `[x]` is a choice. */
  steps: string[];
  action: 'remove' | 'mask';
  where: FhirPathAtom | undefined;
  /** Where the rule is configured, e.g. `routes.research.redact[0]`. */
  at: string;
}

/** A rule that cannot be used: thrown by {@link compileRedactRule}. */
export class RedactRuleError extends Error {
  override readonly name = 'RedactRuleError';
  readonly code = 'ERR_REDACT_RULE';
  /** `path`, `action` or `where`: the member at fault. */
  readonly member: 'path' | 'action' | 'where';
  /**
   * @param member - `path` (not an R4 element), `action` (its result would not be valid R4) or `where` (FHIRPath that does not parse or evaluate).
   * @param message - why, naming the path or Medplum's FHIRPath message (no resource content).
   */
  constructor(member: 'path' | 'action' | 'where', message: string) {
    super(message);
    this.member = member;
  }
}

/**
 * Checks an element path against the R4 StructureDefinitions (loaded on first call, ~1–2 s).
 * @param path - `Type.element(.child)*`, e.g. `Patient.address.line`, `Observation.value[x]`.
 * @returns Undefined when the path names an R4 element, else why not (no PHI: only the path).
 */
export function elementPathProblem(path: string): string | undefined {
  ensureFhirDefinitionsLoaded();
  const [type, ...steps] = path.split('.');
  let schema = tryGetDataType(type ?? '');
  if (schema === undefined || schema.kind !== 'resource') return `"${type}" is not an R4 resource type`;
  if (steps.length === 0) return 'name an element of the resource, not the resource';
  let at = type!;
  for (const [i, step] of steps.entries()) {
    const el = schema?.elements[step];
    if (el === undefined) {
      const choice = schema?.elements[`${step.replace(/\[x\]$/, '')}[x]`];
      return choice !== undefined && !step.endsWith('[x]')
        ? `${at}.${step} is a choice element: write ${at}.${step}[x]`
        : `${at} has no element "${step}"`;
    }
    if (i === 0 && (step === 'id' || step === 'meta')) return `${at}.${step} cannot be redacted (the resource would lose its identity or its labels)`;
    at = `${at}.${step}`;
    if (i === steps.length - 1) break;
    const codes = (el.type ?? []).map((t) => t.code);
    if (codes.length !== 1) return `${at} ${codes.length === 0 ? 'refers to another element\'s definition' : 'has several types'}: a path cannot go below it`;
    schema = tryGetDataType(codes[0]!);
    if (schema === undefined || /^[a-z]/.test(codes[0]!)) return `${at} is a primitive (${codes[0]}): a path cannot go below it`;
  }
  return undefined;
}

/**
 * Checks that an action on an element gives resources a FHIR server accepts (R4 cardinalities of
 * the StructureDefinitions, https://hl7.org/fhir/R4/elementdefinition-definitions.html#ElementDefinition.min):
 * `remove` of a required element (min ≥ 1) leaves every occurrence of its parent invalid; `mask` of
 * an element whose single type has a required child (`Patient.communication` needs `language`, an
 * extension needs `url`) leaves each masked occurrence without it. (Invariants such as `pat-1` are
 * not checked: they depend on the resource.)
 * @param path - an element path {@link elementPathProblem} accepts.
 * @param action - `remove` or `mask`.
 * @returns Undefined when the action is fine, else why not (no PHI: only the path and element names).
 */
export function redactActionProblem(path: string, action: 'remove' | 'mask'): string | undefined {
  ensureFhirDefinitionsLoaded();
  const [type, ...steps] = path.split('.');
  let schema = tryGetDataType(type ?? '');
  let el: InternalSchemaElement | undefined;
  for (const [i, step] of steps.entries()) {
    el = schema?.elements[step];
    if (el === undefined) return undefined; // elementPathProblem reports it
    if (i < steps.length - 1) schema = tryGetDataType(el.type?.[0]?.code ?? '');
  }
  if (el === undefined) return undefined;
  const parent = steps.length > 1 ? `${type}.${steps.slice(0, -1).join('.')}` : undefined;
  if (action === 'remove' && el.min >= 1) {
    return `${path} is required (min ${el.min}): removing it leaves every ${parent ?? type} invalid, and a FHIR server refuses it; mask it, or ${parent !== undefined ? `remove ${parent}` : `withhold ${type} from the peer`}`;
  }
  const codes = (el.type ?? []).map((t) => t.code);
  if (action === 'mask' && codes.length === 1 && /^[A-Z]/.test(codes[0]!)) {
    const required = Object.entries(tryGetDataType(codes[0]!)?.elements ?? {}).filter(([, child]) => child.min >= 1).map(([name]) => name);
    if (required.length > 0) return `masking ${path} leaves each ${codes[0]} without its required ${required.join(', ')}, and a FHIR server refuses it; remove it, or mask its other elements`;
  }
  return undefined;
}

/**
 * Compiles one `redact` rule: checks its path against R4 and parses its `where`.
 * @param rule - the schema-checked rule.
 * @param at - where it is configured, e.g. `routes.research.redact[0]` (for messages and logs).
 * @returns The compiled rule.
 * @throws RedactRuleError (`member` path, action or where) when the path names no R4 element, the
 *   action would give resources a FHIR server refuses ({@link redactActionProblem}), or the condition does not parse or evaluate.
 */
export function compileRedactRule(rule: RedactRule, at: string): CompiledRedactRule {
  const problem = elementPathProblem(rule.path);
  if (problem !== undefined) throw new RedactRuleError('path', problem);
  const actionProblem = redactActionProblem(rule.path, rule.action ?? 'remove');
  if (actionProblem !== undefined) throw new RedactRuleError('action', actionProblem);
  const [type, ...steps] = rule.path.split('.');
  let where: FhirPathAtom | undefined;
  if (rule.where !== undefined) {
    try {
      where = compileCondition(rule.where, [type!]);
    } catch (err) {
      throw new RedactRuleError('where', (err as Error).message);
    }
  }
  return { path: rule.path, type: type!, steps, action: rule.action ?? 'remove', where, at };
}

/** The masked value: `{ "extension": [data-absent-reason = masked] }`. */
function masked(): FhirJsonObject {
  return { extension: [{ url: DATA_ABSENT_REASON_URL, valueCode: 'masked' }] };
}

/** True for a JSON primitive value (string, boolean, number, lossless number). */
function isPrimitive(v: FhirJson): boolean {
  return v !== null && (typeof v !== 'object' || isLosslessNumber(v));
}

/** Member names of `obj` that `step` names: itself, or the typed variants of a `[x]` choice. */
function namesFor(obj: FhirJsonObject, step: string): string[] {
  if (!step.endsWith('[x]')) return Object.hasOwn(obj, step) ? [step] : [];
  const base = step.slice(0, -3);
  return Object.keys(obj).filter((k) => k.length > base.length && k.startsWith(base) && /^[A-Z]/.test(k.slice(base.length)));
}

/**
 * Redacts at `steps` below `obj` (a fresh copy owned by the caller), copying each object on the way
 * down. Returns true when something was redacted.
 */
function redactIn(obj: FhirJsonObject, steps: readonly string[], action: 'remove' | 'mask'): boolean {
  const [step, ...rest] = steps;
  let done = false;
  // a primitive without a value may exist only as its companion `_name`
  const names = new Set(namesFor(obj, step!));
  if (rest.length === 0) {
    for (const k of Object.keys(obj)) if (k.startsWith('_') && namesFor({ [k.slice(1)]: null }, step!).length > 0) names.add(k.slice(1));
  }
  for (const name of names) {
    const value = obj[name];
    const companion = obj[`_${name}`];
    if (rest.length > 0) {
      // an element left empty by a removal goes too (FHIR ele-1: no empty elements)
      if (Array.isArray(value)) {
        const copy = value
          .map((item) => {
            if (!isJsonObject(item)) return item;
            const c = { ...item };
            if (redactIn(c, rest, action)) done = true;
            return c;
          })
          .filter((item) => !isJsonObject(item) || Object.keys(item).length > 0);
        if (copy.length > 0) obj[name] = copy;
        else delete obj[name];
      } else if (isJsonObject(value)) {
        const c = { ...value };
        if (redactIn(c, rest, action)) done = true;
        if (Object.keys(c).length > 0) obj[name] = c;
        else delete obj[name];
      }
      continue;
    }
    done = true;
    if (action === 'remove') {
      delete obj[name];
      delete obj[`_${name}`];
      continue;
    }
    if (Array.isArray(value) || Array.isArray(companion)) {
      const n = Math.max(Array.isArray(value) ? value.length : 0, Array.isArray(companion) ? companion.length : 0);
      const primitive = (Array.isArray(value) && value.some((v) => v === null || isPrimitive(v))) || Array.isArray(companion);
      if (primitive) {
        obj[name] = Array.from({ length: n }, () => null);
        obj[`_${name}`] = Array.from({ length: n }, () => masked());
      } else {
        obj[name] = Array.from({ length: n }, () => masked());
      }
    } else if (value !== undefined && !isPrimitive(value)) {
      obj[name] = masked();
    } else {
      delete obj[name];
      obj[`_${name}`] = masked();
    }
  }
  return done;
}

/** True when a `meta.security` coding is the REDACTED label. */
function isRedactedLabel(c: FhirJson): boolean {
  return isJsonObject(c) && c.system === REDACTED_SYSTEM && c.code === REDACTED_CODE;
}

/**
 * Most levels of resources nested in one another that redaction walks (a Bundle entry holding an
 * Observation that contains a Patient is 2 below the Bundle). A resource nested deeper is removed
 * from what the peer receives (fail closed); R4 forbids contained resources to contain others
 * (dom-2), so real documents stay far below.
 */
export const MAX_NESTED_RESOURCE_DEPTH = 8;
/** Most JSON levels (objects and arrays) redaction descends into below one resource; a deeper member is removed (fail closed). */
export const MAX_NESTED_JSON_DEPTH = 128;
const MAX_JSON_DEPTH = MAX_NESTED_JSON_DEPTH;

/** What one {@link redactResource} call collects while walking the resource tree. */
interface RedactWalk {
  rules: readonly CompiledRedactRule[];
  onError: ((rule: CompiledRedactRule, err: Error) => void) | undefined;
  /** Element paths redacted, without duplicates, in the order met (a Set: a walk may note 10⁴ paths, and a list search per note would be quadratic). */
  redacted: Set<string>;
}

/** Adds `path` to `list` once (insertion order kept). */
function note(list: Set<string>, path: string): void {
  list.add(path);
}

/**
 * Redacts the resource `res` (the root or a nested one) and every resource nested in it, copying
 * what changes. `at` is the FHIRPath of `res` from the root (`Observation.contained.ofType(Patient)`),
 * `level` its nesting level (0 for the root).
 * @returns `res` itself when nothing changed, else the redacted copy.
 */
function redactTree(res: FhirJsonObject, at: string, level: number, walk: RedactWalk): FhirJsonObject {
  const type = res.resourceType;
  const out = { ...res };
  let changed = false;
  let plain: unknown;
  for (const rule of walk.rules) {
    if (rule.type !== type) continue;
    if (rule.where !== undefined) {
      let holds: boolean;
      try {
        plain ??= toPlainJson(res);
        holds = conditionHolds(evalFhirPath(rule.where, plain));
      } catch (err) {
        walk.onError?.(rule, conditionErrorWithoutValues(err));
        holds = true;
      }
      if (!holds) continue;
    }
    if (redactIn(out, rule.steps, rule.action)) {
      changed = true;
      note(walk.redacted, level === 0 ? rule.path : `${at}.${rule.steps.join('.')}`);
    }
  }
  // resources nested in this one: contained[], Bundle.entry.resource, Parameters.parameter.resource, …
  for (const [name, value] of Object.entries(out)) {
    if (name === 'resourceType' || value === null || typeof value !== 'object') continue;
    const next = redactNested(value, `${at}.${name.replace(/^_/, '')}`, level, 1, walk);
    if (next === value) continue;
    changed = true;
    if (next === undefined) delete out[name];
    else out[name] = next;
  }
  return changed ? out : res;
}

/**
 * Walks a member value below a resource for nested resources (any object with a string
 * `resourceType`: R4 puts resources only where an element's type is `Resource`, and an object
 * anywhere else that claims to be one is treated as one, fail closed).
 * @returns `value` itself when nothing changed, the copy, or undefined when the member goes (too deep).
 */
function redactNested(value: FhirJson, path: string, level: number, jsonDepth: number, walk: RedactWalk): FhirJson | undefined {
  if (value === null || typeof value !== 'object' || isLosslessNumber(value)) return value;
  if (jsonDepth > MAX_JSON_DEPTH) {
    note(walk.redacted, path);
    return undefined;
  }
  if (Array.isArray(value)) {
    let copy: FhirJson[] | undefined;
    value.forEach((item, i) => {
      const next = redactNested(item, path, level, jsonDepth + 1, walk);
      if (next === item) return;
      copy ??= [...value];
      copy[i] = next === undefined ? null : next;
    });
    if (copy === undefined) return value;
    // removed items go (a null would be an item without value); aligned `_x` companions are primitive only, never resources
    const kept = copy.filter((item, i) => item !== null || value[i] === null);
    return kept.length > 0 ? kept : undefined;
  }
  if (typeof value.resourceType === 'string') {
    const nested = `${path}.ofType(${value.resourceType})`;
    if (level + 1 > MAX_NESTED_RESOURCE_DEPTH) {
      note(walk.redacted, nested);
      return undefined;
    }
    return redactTree(value, nested, level + 1, walk);
  }
  let copy: FhirJsonObject | undefined;
  for (const [name, v] of Object.entries(value)) {
    const next = redactNested(v, `${path}.${name.replace(/^_/, '')}`, level, jsonDepth + 1, walk);
    if (next === v) continue;
    copy ??= { ...value };
    if (next === undefined) delete copy[name];
    else copy[name] = next;
  }
  if (copy === undefined) return value;
  return Object.keys(copy).length > 0 ? copy : undefined;
}

/**
 * Removes the narrative (`text`) of `res` and of every resource nested in it, copying what
 * changes; notes each removed one's path (`Observation.text`, `Bundle.entry.resource.ofType(Composition).text`).
 * @returns `res` itself when it held no narrative, else the copy.
 */
function withoutNarratives(res: FhirJsonObject, at: string, level: number, redacted: Set<string>): FhirJsonObject {
  let out: FhirJsonObject = res;
  if (out.text !== undefined) {
    out = { ...res };
    delete out.text;
    note(redacted, `${at}.text`);
  }
  const strip = (value: FhirJson, path: string, jsonDepth: number): FhirJson => {
    if (value === null || typeof value !== 'object' || isLosslessNumber(value) || jsonDepth > MAX_JSON_DEPTH) return value;
    if (Array.isArray(value)) {
      let copy: FhirJson[] | undefined;
      value.forEach((item, i) => {
        const next = strip(item, path, jsonDepth + 1);
        if (next !== item) (copy ??= [...value])[i] = next;
      });
      return copy ?? value;
    }
    if (typeof value.resourceType === 'string') return level + 1 > MAX_NESTED_RESOURCE_DEPTH ? value : withoutNarratives(value, `${path}.ofType(${value.resourceType})`, level + 1, redacted);
    let copy: FhirJsonObject | undefined;
    for (const [name, v] of Object.entries(value)) {
      const next = strip(v, `${path}.${name}`, jsonDepth + 1);
      if (next !== v) (copy ??= { ...value })[name] = next;
    }
    return copy ?? value;
  };
  for (const [name, value] of Object.entries(out)) {
    if (name === 'resourceType' || name === 'text' || value === null || typeof value !== 'object') continue;
    const next = strip(value, `${at}.${name}`, 1);
    if (next !== value) {
      if (out === res) out = { ...res };
      out[name] = next;
    }
  }
  return out;
}

/**
 * Redacts a resource for one peer, and every resource nested in it: its contained resources
 * (https://hl7.org/fhir/R4/references.html#contained), the resources of a Bundle's entries
 * (https://hl7.org/fhir/R4/bundle.html, a stored document or collection), of
 * `Parameters.parameter.resource`, recursively up to {@link MAX_NESTED_RESOURCE_DEPTH} levels; each
 * nested resource gets the rules of its own type, a `where` evaluated on that nested resource.
 * Never mutates `resource`.
 * @param resource - FHIR JSON (plain `JSON.parse` output or `parseFhirJson` output with lossless numbers).
 * @param rules - the peer's compiled rules ({@link compileRedactRule}); rules of other resource types are skipped.
 * @param onError - told about each `where` that failed to evaluate (the rule was applied: fail closed); the error's message holds no resource content.
 * @returns The redacted copy (the input itself when nothing applied) and the element paths redacted
 *   (no values), without duplicates: the root's as configured (`Patient.telecom`) in rule order,
 *   a nested resource's as FHIRPath from the root (`Observation.contained.ofType(Patient).telecom`,
 *   `Bundle.entry.resource.ofType(Patient).telecom`), a nested resource removed for being too deep
 *   as its own path, then the narratives removed (`Patient.text`, `Bundle.entry.resource.ofType(Composition).text`).
 *   When anything was redacted anywhere, the narrative of the root and of every nested resource is
 *   removed (a container's or a document's XHTML may repeat what was redacted), and the root (only:
 *   R4 dom-5 forbids security labels on contained resources) carries the REDACTED security label
 *   ({@link REDACTED_TOKEN}) in `meta.security`.
 */
export function redactResource<T extends FhirJsonObject>(resource: T, rules: readonly CompiledRedactRule[], onError?: (rule: CompiledRedactRule, err: Error) => void): { resource: T; redacted: string[] } {
  const type = String(resource.resourceType);
  const walk: RedactWalk = { rules, onError, redacted: new Set() };
  let out = redactTree(resource, type, 0, walk);
  if (walk.redacted.size === 0) return { resource, redacted: [] };
  // the narrative may repeat what was redacted (a phone number in text.div): it goes too, in every nested resource
  out = withoutNarratives(out, type, 0, walk.redacted);
  return { resource: withRedactedLabel(out as T), redacted: [...walk.redacted] };
}

/** {@link projectedTypesFor} per rule list (a Mapping's rule lists live as long as the Mapping). */
const projectedCache = new WeakMap<readonly CompiledRedactRule[], ReadonlySet<string>>();

/**
 * The resource types a peer receives as projections (src/mapping/projection.ts) under its redaction
 * rules: exactly the types the rules name. {@link redactResource} reaches the resources nested in a
 * projected resource; a resource of another type that nests one of these types is withheld from the
 * peer instead (`Mapping.explainRoute`, {@link findNestedResource}). Used alike by the live feed,
 * Tide's fanout and anti-entropy (through `ProjectionSource.types`) and `map preview`, so they agree.
 * @param rules - the peer's compiled rules (`Mapping.redactionFor`), or undefined.
 * @returns Empty without rules (not a projection peer); the same set object for the same rule list.
 */
export function projectedTypesFor(rules: readonly CompiledRedactRule[] | undefined): ReadonlySet<string> {
  if (rules === undefined || rules.length === 0) return NO_TYPES;
  let types = projectedCache.get(rules);
  if (types === undefined) {
    types = new Set(rules.map((r) => r.type));
    projectedCache.set(rules, types);
  }
  return types;
}

/** What {@link findNestedResource} reports. */
export interface NestedResourceHit {
  /** `found`: a nested resource of a type asked for; `too-deep`: the walk stopped at a bound (what lies below is unknown). */
  kind: 'found' | 'too-deep';
  /** `found`: the nested resource's type; `too-deep`: the type of the resource the walk stopped in or at. */
  type: string;
  /** FHIRPath from the root, without indices: `Observation.contained.ofType(Patient)`, `Bundle.entry.resource.ofType(Observation).contained.ofType(Patient)`. */
  path: string;
}

/**
 * Looks for a resource of one of `types` nested (at any depth) in `resource`: contained resources
 * (https://hl7.org/fhir/R4/references.html#contained), the resources of a Bundle's entries
 * (https://hl7.org/fhir/R4/bundle.html), `Parameters.parameter.resource` (and `part[].resource`),
 * and any object below the root with a string `resourceType` (treated as a resource, as
 * {@link redactResource} treats it: fail closed). The root itself is not compared. Depth-first,
 * stops at the first hit. Bounds, the same as {@link redactResource}'s: at most
 * {@link MAX_NESTED_RESOURCE_DEPTH} levels of resources nested in one another, and at most
 * {@link MAX_NESTED_JSON_DEPTH} JSON levels (objects and arrays) below each resource; where a bound is reached the walk stops and
 * reports `too-deep` (the caller cannot know what lies below: withhold, fail closed). The walk is
 * linear in the number of JSON values (the input is already parsed, so bounded by the body size the
 * node accepts) and never recurses more than 8 × 128 levels.
 * @param resource - plain JSON (`JSON.parse` output) or `parseFhirJson` output of a resource; not modified.
 *   Anything that is not an object gives undefined.
 * @param types - the resource types looked for (e.g. {@link projectedTypesFor}); empty: only the bounds are checked.
 * @returns The first nested resource of one of `types`, or where a bound was reached, or undefined when neither.
 */
export function findNestedResource(resource: unknown, types: ReadonlySet<string>): NestedResourceHit | undefined {
  return findNestedResourceWhere(resource, (nested) => types.has(nested.resourceType as string));
}

/**
 * {@link findNestedResource} with a test of each nested resource instead of a set of types (the
 * same walk, bounds and fail-closed `too-deep`): e.g. "a nested resource that a peer's `withhold`
 * rules withhold" (`Mapping.explainRoute`).
 * @param resource - plain JSON or `parseFhirJson` output of a resource; not modified. Anything that is not an object gives undefined.
 * @param matches - called with each nested resource (an object with a string `resourceType`), outermost first; must not modify it.
 * @returns The first nested resource `matches` accepts (`found`), or where a bound was reached (`too-deep`), or undefined.
 */
export function findNestedResourceWhere(resource: unknown, matches: (nested: FhirJsonObject) => boolean): NestedResourceHit | undefined {
  if (resource === null || typeof resource !== 'object' || Array.isArray(resource)) return undefined;
  const root = resource as FhirJsonObject;
  const rootType = typeof root.resourceType === 'string' ? root.resourceType : 'Resource';
  return findBelow(root, rootType, rootType, 0, matches);
}

/** The members of the resource `res` (type `type`, FHIRPath `at`, nesting `level`), searched by {@link findNestedResourceWhere}. */
function findBelow(res: FhirJsonObject, type: string, at: string, level: number, matches: (nested: FhirJsonObject) => boolean): NestedResourceHit | undefined {
  const visit = (value: FhirJson, path: string, jsonDepth: number): NestedResourceHit | undefined => {
    if (value === null || typeof value !== 'object' || isLosslessNumber(value)) return undefined;
    if (jsonDepth > MAX_JSON_DEPTH) return { kind: 'too-deep', type, path };
    if (Array.isArray(value)) {
      for (const item of value) {
        const hit = visit(item, path, jsonDepth + 1);
        if (hit !== undefined) return hit;
      }
      return undefined;
    }
    if (typeof value.resourceType === 'string') {
      const nested = `${path}.ofType(${value.resourceType})`;
      if (matches(value)) return { kind: 'found', type: value.resourceType, path: nested };
      if (level + 1 > MAX_NESTED_RESOURCE_DEPTH) return { kind: 'too-deep', type: value.resourceType, path: nested };
      return findBelow(value, value.resourceType, nested, level + 1, matches);
    }
    for (const [name, v] of Object.entries(value)) {
      const hit = visit(v, `${path}.${name.replace(/^_/, '')}`, jsonDepth + 1);
      if (hit !== undefined) return hit;
    }
    return undefined;
  };
  for (const [name, value] of Object.entries(res)) {
    if (name === 'resourceType') continue;
    const hit = visit(value, `${at}.${name.replace(/^_/, '')}`, 1);
    if (hit !== undefined) return hit;
  }
  return undefined;
}

const NO_TYPES: ReadonlySet<string> = new Set();

/**
 * The resource with the REDACTED security label ({@link REDACTED_TOKEN}) in `meta.security`; the
 * input itself when it has it already. Never mutates `resource`. A projection document always
 * carries it, even when nothing was redacted from it: the label is what makes every tidegate node
 * withhold the projection from its peers (src/tide/peer-authz.ts), so a projection peer never
 * forwards it, nor its own edits of it, as if it were a shared document.
 * @param resource - FHIR JSON.
 * @returns A copy with the label (new `meta` and `meta.security`), or `resource`.
 */
export function withRedactedLabel<T extends FhirJsonObject>(resource: T): T {
  const meta = isJsonObject(resource.meta) ? { ...resource.meta } : {};
  const security = Array.isArray(meta.security) ? [...meta.security] : [];
  if (security.some(isRedactedLabel)) return resource;
  security.push({ system: REDACTED_SYSTEM, code: REDACTED_CODE, display: 'redacted' });
  meta.security = security;
  return { ...resource, meta };
}
