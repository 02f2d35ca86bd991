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
 * When anything was redacted, the narrative (`text`, which may repeat a redacted value in its XHTML)
 * is removed too, and the resource gets the security label
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
 * Redacts a resource for one peer. Never mutates `resource`.
 * @param resource - FHIR JSON (plain `JSON.parse` output or `parseFhirJson` output with lossless numbers).
 * @param rules - the peer's compiled rules ({@link compileRedactRule}); rules of other resource types are skipped.
 * @param onError - told about each `where` that failed to evaluate (the rule was applied: fail closed); the error's message holds no resource content.
 * @returns The redacted copy (the input itself when nothing applied) and the element paths redacted
 *   (`Patient.telecom`, no values), in rule order without duplicates, then `Type.text` when the
 *   narrative was removed with them. When the list is non-empty the copy carries the REDACTED security label ({@link REDACTED_TOKEN}) in `meta.security`.
 */
export function redactResource<T extends FhirJsonObject>(resource: T, rules: readonly CompiledRedactRule[], onError?: (rule: CompiledRedactRule, err: Error) => void): { resource: T; redacted: string[] } {
  const type = resource.resourceType;
  const out = { ...resource } as FhirJsonObject;
  const redacted: string[] = [];
  let plain: unknown;
  for (const rule of rules) {
    if (rule.type !== type) continue;
    if (rule.where !== undefined) {
      let holds: boolean;
      try {
        plain ??= toPlainJson(resource);
        holds = conditionHolds(evalFhirPath(rule.where, plain));
      } catch (err) {
        onError?.(rule, conditionErrorWithoutValues(err));
        holds = true;
      }
      if (!holds) continue;
    }
    if (redactIn(out, rule.steps, rule.action) && !redacted.includes(rule.path)) redacted.push(rule.path);
  }
  if (redacted.length === 0) return { resource, redacted };
  // the narrative may repeat what was redacted (a phone number in text.div): it goes too
  if (out.text !== undefined) {
    delete out.text;
    redacted.push(`${String(type)}.text`);
  }
  return { resource: withRedactedLabel(out as T), redacted };
}

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
