/**
 * Validation of resources against the base R4 StructureDefinitions, with Medplum's validator.
 * https://hl7.org/fhir/R4/validation.html
 */
import { crawlTypedValue, isResourceType, toTypedValue, validateResource } from '@medplum/core';
import type { OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';
import { ensureFhirDefinitionsLoaded } from '../hospital/definitions.ts';
import { requiredBindingIssues } from './bindings.ts';
import { isJsonObject, toPlainJson } from './json.ts';
import type { FhirJsonObject } from './json.ts';

/** FHIR id: https://hl7.org/fhir/R4/datatypes.html#id */
/** Also refuses ids made only of dots (`.`, `..`): legal by the pattern but URL dot-segments. */
export const FHIR_ID = /^(?!\.+$)[A-Za-z0-9\-.]{1,64}$/;

/**
 * True when `type` is an R4 resource type (loads the definitions on first call, ~1–2 s).
 */
export function isKnownResourceType(type: string): boolean {
  ensureFhirDefinitionsLoaded();
  return isResourceType(type);
}

/** Options of {@link validateFhirResource}. */
export interface ValidateFhirOptions {
  /**
   * Also check the `required` bindings of `code` elements
   * (https://hl7.org/fhir/R4/terminologies.html#required, see ./bindings.ts). Default false here,
   * for callers with their own code checks (ConceptMap and profile configuration checks); the
   * write path and `$validate` (`validateWithProfiles` in ./profiles.ts) always check them.
   */
  requiredBindings?: boolean;
  /**
   * Also apply {@link primitiveFormIssues} (no empty strings; a time zone on every dateTime with a
   * time). Default false here, so the hospital poller keeps accepting what it
   * accepted before; the write path and `$validate` (`validateWithProfiles` in ./profiles.ts)
   * always check them.
   */
  primitiveForms?: boolean;
}

/**
 * Validates a resource against the base R4 definitions (https://hl7.org/fhir/R4/validation.html).
 * @param resource - parsed FHIR JSON.
 * @param opts - see {@link ValidateFhirOptions}.
 * @returns The error- and fatal-severity issues (empty when valid), each with a FHIRPath expression.
 */
export function validateFhirResource(resource: FhirJsonObject, opts: ValidateFhirOptions = {}): OperationOutcomeIssue[] {
  ensureFhirDefinitionsLoaded();
  // Medplum's validator looks element names up in plain objects, so names inherited from
  // Object.prototype (`constructor`, `toString`, …) pass as known elements: refuse them here.
  const inherited = inheritedNameIssues(resource);
  if (inherited.length > 0) return inherited;
  const forms = opts.primitiveForms === true ? primitiveFormIssues(resource) : [];
  const plain = toPlainJson(resource) as Resource;
  let issues: OperationOutcomeIssue[];
  try {
    issues = validateResource(plain).filter((i) => i.severity === 'error' || i.severity === 'fatal');
  } catch (err) {
    const e = err as { outcome?: { issue?: OperationOutcomeIssue[] } };
    if (!e.outcome?.issue) return [{ severity: 'error', code: 'invalid', diagnostics: 'Resource could not be validated' }];
    issues = e.outcome.issue;
  }
  return withConcreteChoiceNames(resource, [...forms, ...issues, ...(opts.requiredBindings === true ? requiredBindingIssues(plain) : [])]);
}

/** One step of a validator expression: `name`, `name[x]`, each with optional `[i]` indexes. */
const STEP = /^([A-Za-z_][A-Za-z0-9_]*)(\[x\])?((?:\[\d+\])*)$/;

/**
 * Names the concrete choice element in a FHIRPath expression, as OperationOutcome.issue.expression
 * should (https://hl7.org/fhir/R4/operationoutcome-definitions.html#OperationOutcome.issue.expression,
 * https://hl7.org/fhir/R4/formats.html#choice): the validator writes `Observation.value[x].value`
 * where the resource has `valueQuantity`, this gives `Observation.valueQuantity.value`.
 * @param resource - the resource the expression is about (FHIR JSON).
 * @param expression - e.g. `Observation.component[0].value[x]`.
 * @returns The expression with every `name[x]` step the resource resolves replaced by its element
 *   name (`valueString`); a step it cannot resolve, and everything after it, is left unchanged.
 */
export function concreteChoiceExpression(resource: FhirJsonObject, expression: string): string {
  if (!expression.includes('[x]')) return expression;
  const steps = expression.split('.');
  let cur: unknown = resource;
  for (let i = 1; i < steps.length; i++) {
    const m = STEP.exec(steps[i]!);
    if (!m || !isJsonObject(cur)) break;
    const [, name, choice, indexes] = m as unknown as [string, string, string | undefined, string];
    let key = name;
    if (choice) {
      const found = Object.keys(cur).filter((k) => k.length > name.length && k.startsWith(name) && /^[A-Z]/.test(k.charAt(name.length)));
      if (found.length !== 1) break;
      key = found[0]!;
      steps[i] = `${key}${indexes}`;
    }
    cur = cur[key];
    for (const ix of indexes.match(/\d+/g) ?? []) cur = Array.isArray(cur) ? cur[Number(ix)] : undefined;
  }
  return steps.join('.');
}

/**
 * Issues with {@link concreteChoiceExpression} applied to every expression.
 * @param resource - the validated resource.
 * @param issues - the validator's issues.
 * @returns New issues; the others are returned as they are.
 */
export function withConcreteChoiceNames(resource: FhirJsonObject, issues: OperationOutcomeIssue[]): OperationOutcomeIssue[] {
  return issues.map((i) => (i.expression?.some((x) => x.includes('[x]')) ? { ...i, expression: i.expression.map((x) => concreteChoiceExpression(resource, x)) } : i));
}

const OBJECT_PROTOTYPE_NAMES = new Set(Object.getOwnPropertyNames(Object.prototype));

/**
 * Error issues for members named like Object.prototype properties (`constructor`, `toString`, …),
 * which Medplum's validator takes for known elements.
 * @param resource - parsed FHIR JSON.
 * @returns One `structure` error per such member, with its FHIRPath; empty when there is none.
 */
export function inheritedNameIssues(resource: FhirJsonObject): OperationOutcomeIssue[] {
  return inheritedNames(resource, String(resource.resourceType)).map((path) => ({ severity: 'error', code: 'structure', diagnostics: 'Invalid additional property', expression: [path] }));
}

/** FHIRPath-like paths of members named like Object.prototype properties, at any depth. */
function inheritedNames(value: unknown, path: string, out: string[] = []): string[] {
  if (Array.isArray(value)) value.forEach((v, i) => inheritedNames(v, `${path}[${i}]`, out));
  else if (isJsonObject(value)) {
    for (const [k, v] of Object.entries(value)) {
      if (OBJECT_PROTOTYPE_NAMES.has(k)) out.push(`${path}.${k}`);
      else inheritedNames(v, `${path}.${k}`, out);
    }
  }
  return out;
}

/**
 * A dateTime with a time and no time zone: `YYYY-MM-DDThh:mm(:ss(.fff))` and nothing
 * after. Only a candidate: the element's type decides (a `string` may hold the same text).
 */
const ZONELESS_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/;

/**
 * Lexical rules of R4 primitives that Medplum's validator lets through:
 * - a string value is never empty (https://hl7.org/fhir/R4/json.html: "string property values can
 *   never be empty"; the validator skips `""` as if the element were absent, and the merge then
 *   drops it, so a client's `"family": ""` would be silently lost);
 * - a dateTime with hours and minutes has a time zone (https://hl7.org/fhir/R4/datatypes.html#dateTime:
 *   "If hours and minutes are specified, a time zone SHALL be populated"; an instant without a zone,
 *   https://hl7.org/fhir/R4/datatypes.html#instant, is already refused by the validator). Types come from the R4 definitions (Medplum's
 *   typed crawler), so a `valueString` that looks like a dateTime is not refused. Primitive
 *   extensions (`_birthDate`) are checked for empty strings only.
 *
 * Cost: one walk of the resource; the typed crawl runs only when some string looks like a
 * zone-less date and time.
 *
 * @param resource - parsed FHIR JSON (a resource; its `resourceType` starts every expression).
 * @returns One `error` issue per offending value, code `value`, with its FHIRPath expression
 *   (`Patient.name[0].family`; a choice element by its concrete name, `Observation.effectiveDateTime`);
 *   never quoting the value (PHI). Empty when there is none.
 */
export function primitiveFormIssues(resource: FhirJsonObject): OperationOutcomeIssue[] {
  const root = String(resource.resourceType);
  const issues: OperationOutcomeIssue[] = [];
  let zoneless = false;
  const walk = (value: unknown, path: string): void => {
    if (typeof value === 'string') {
      if (value === '') issues.push({ severity: 'error', code: 'value', diagnostics: 'A string value must not be empty (omit the element instead)', expression: [path] });
      else if (!zoneless && ZONELESS_TIME.test(value)) zoneless = true;
    } else if (Array.isArray(value)) value.forEach((v, i) => walk(v, `${path}[${i}]`));
    else if (isJsonObject(value)) for (const [k, v] of Object.entries(value)) if (k !== 'resourceType') walk(v, `${path}.${k}`);
  };
  walk(resource, root);
  if (zoneless) {
    const plain = toPlainJson(resource);
    const zonelessIssues: OperationOutcomeIssue[] = [];
    try {
      crawlTypedValue(toTypedValue(plain), {
        visitProperty(_parent, _key, _path, values) {
          for (const v of values.flat()) {
            if (v.type === 'dateTime' && typeof v.value === 'string' && ZONELESS_TIME.test(v.value)) {
              zonelessIssues.push({ severity: 'error', code: 'value', diagnostics: `A ${v.type} with a time must have a time zone (Z or +hh:mm)`, expression: [v.path] });
            }
          }
        },
      });
    } catch {
      // A resource the crawler cannot walk (unknown type or element): the validator reports that.
    }
    issues.push(...withConcreteChoiceNames(resource, zonelessIssues));
  }
  return issues;
}
