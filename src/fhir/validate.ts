/**
 * Validation of resources against the base R4 StructureDefinitions, with Medplum's validator.
 * https://hl7.org/fhir/R4/validation.html
 */
import { isResourceType, validateResource } from '@medplum/core';
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
  const plain = toPlainJson(resource) as Resource;
  let issues: OperationOutcomeIssue[];
  try {
    issues = validateResource(plain).filter((i) => i.severity === 'error' || i.severity === 'fatal');
  } catch (err) {
    const e = err as { outcome?: { issue?: OperationOutcomeIssue[] } };
    if (!e.outcome?.issue) return [{ severity: 'error', code: 'invalid', diagnostics: 'Resource could not be validated' }];
    issues = e.outcome.issue;
  }
  return withConcreteChoiceNames(resource, opts.requiredBindings === true ? [...issues, ...requiredBindingIssues(plain)] : issues);
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
