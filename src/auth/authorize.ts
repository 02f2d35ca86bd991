/**
 * The authorization decision for one FHIR interaction: SMART scopes per interaction and resource
 * type (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html), then, for a token
 * with a patient context, the Patient compartment rule (compartment.ts). Pure apart from the
 * `current` lookup it is given; framework-free, so Bundle entries are checked the same way as
 * single requests.
 *
 * The compartment rule applies to every token that carries a patient context, whatever the level
 * of the scope that grants the interaction (stricter than SMART, which limits only `patient/`
 * scopes): issue 7 requires such a token to see and change only that patient's compartment.
 */
import { AuthError } from './errors.ts';
import { checkScope, permissionsFor } from './scopes.ts';
import type { Permission } from './scopes.ts';
import type { AccessContext } from './token.ts';
import type { FhirRequestInfo } from './request.ts';
import { constrainSearchToPatient, inPatientCompartment, isPatientCompartmentType, PATIENT_SHARED_TYPES } from './compartment.ts';
import type { CompartmentOptions } from './compartment.ts';
import { applyPatchBody, patchFormatOf } from '../fhir/patch.ts';
import { isJsonObject, parseFhirJson, toPlainJson } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';

/**
 * The current (live) version of a resource as JSON text, or undefined when it does not exist or is
 * deleted. Used for writes and `$conflicts` under a patient context.
 */
export type CurrentResource = (resourceType: string, id: string) => string | undefined;

/** A classified interaction (the `interaction` kind of {@link FhirRequestInfo}). */
export type InteractionInfo = Extract<FhirRequestInfo, { kind: 'interaction' }>;

/** What the request carries that the decision may need. */
export interface AuthorizeInput {
  /** Request body text (writes, `POST _search` forms). */
  body?: string | undefined;
  /** `Content-Type` of the body (PATCH format). */
  contentType?: string | undefined;
  /** Search parameters of a search (URL query and form body). */
  searchParams?: ReadonlyArray<readonly [string, string]>;
  /** Lookup of current versions. Without it, writes under a patient context are refused. */
  current?: CurrentResource | undefined;
  /** The node's base URLs, for absolute references in compartment checks. */
  compartment?: CompartmentOptions;
}

/** What the caller must still do once the request is allowed. */
export interface AuthorizeResult {
  /** A `[name, value]` to AND to a type search (patient-context searches). */
  searchConstraint: [string, string] | undefined;
  /** Filter the response: single resources and Bundle entries the token may not see are removed. */
  filterResponse: boolean;
}

const READS = new Set(['read', 'vread', 'history-instance']);
const WRITES = new Set(['create', 'conditional-create', 'update', 'conditional-update', 'patch', 'delete', 'conditional-delete']);

function forbidden(reason: 'insufficient_scope' | 'unsupported_granular_scope' | 'patient_context_required', needed: string, what: string): never {
  const text = {
    insufficient_scope: `The access token's scopes do not allow ${what}`,
    unsupported_granular_scope: `Only a granular scope (?param=value) allows ${what}; this node does not support granular scope restrictions yet`,
    patient_context_required: `patient/ scopes allow ${what} only with a patient context in the token`,
  }[reason];
  throw new AuthError(reason, text, needed);
}

function outside(what: string): never {
  throw new AuthError('outside_compartment', `${what} is outside the patient compartment of this access token`);
}

/**
 * Requires every letter on a type.
 * @throws {@link AuthError} 403 naming the scope that would suffice.
 */
export function requirePermissions(ctx: AccessContext, permissions: readonly Permission[], resourceType: string, what: string): void {
  for (const p of permissions) {
    const d = checkScope(ctx.scopes, p, resourceType, ctx.patient !== undefined);
    if (!d.granted) forbidden(d.reason, d.needed, what);
  }
}

/** Whether the token may see a resource returned to it (search entries, includes, history, reads). */
export function canSee(ctx: AccessContext, resource: unknown, opts: CompartmentOptions = {}): boolean {
  if (typeof resource !== 'object' || resource === null) return false;
  const type = (resource as { resourceType?: unknown }).resourceType;
  if (typeof type !== 'string') return false;
  if (type === 'OperationOutcome') return true;
  const hasCtx = ctx.patient !== undefined;
  if (!checkScope(ctx.scopes, 'r', type, hasCtx).granted && !checkScope(ctx.scopes, 's', type, hasCtx).granted) return false;
  if (ctx.patient === undefined) return true;
  return PATIENT_SHARED_TYPES.has(type) || inPatientCompartment(resource, ctx.patient, opts);
}

function parseResource(text: string | undefined): FhirJsonObject | undefined {
  if (text === undefined || text === '') return undefined;
  try {
    const v = parseFhirJson(text);
    return isJsonObject(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Decides one interaction.
 * @param ctx - the verified token.
 * @param info - the classified request.
 * @param input - body, search parameters and current-version lookup as needed.
 * @returns What the caller must still apply (search constraint, response filter).
 * @throws {@link AuthError} 403 (`insufficient_scope`, `unsupported_granular_scope`,
 *   `patient_context_required`, `outside_compartment`) when the token may not perform it. A
 *   malformed body is not refused here: the FHIR layer answers it with its own 400/415/422.
 */
export function authorizeInteraction(ctx: AccessContext, info: InteractionInfo, input: AuthorizeInput = {}): AuthorizeResult {
  const type = info.resourceType ?? '*';
  const what = `${info.interaction}${info.operation ? ` ${info.operation}` : ''} on ${info.resourceType ?? 'the system'}`;
  const opts = input.compartment ?? {};

  // 1. Scopes.
  if (info.interaction === 'search-system') {
    const types = (input.searchParams ?? []).filter(([k]) => k === '_type').flatMap(([, v]) => v.split(',')).map((t) => t.trim()).filter(Boolean);
    for (const t of types) requirePermissions(ctx, ['s'], t, `search on ${t}`);
    if (types.length === 0) requirePermissions(ctx, ['s'], '*', 'system-level search without _type');
  } else if (info.interaction === 'operation' && info.operation === '$validate') {
    const c = checkScope(ctx.scopes, 'c', type, ctx.patient !== undefined);
    if (!c.granted) requirePermissions(ctx, ['u'], type, what);
  } else {
    requirePermissions(ctx, permissionsFor(info.interaction, info.operation), type, what);
  }
  if (info.interaction === 'update' && input.current && info.resourceType && info.id && input.current(info.resourceType, info.id) === undefined) {
    requirePermissions(ctx, ['c'], type, `create (by update) on ${type}`);
  }

  const pid = ctx.patient;
  if (pid === undefined) return { searchConstraint: undefined, filterResponse: info.interaction.startsWith('search') || info.interaction.startsWith('history') };

  // 2. Patient context: the compartment rule.
  if (info.interaction === 'search-system' || info.interaction === 'history-type' || info.interaction === 'history-system') {
    throw new AuthError('outside_compartment', 'A token with a patient context may search only one type at a time ([type]?…), not the whole system');
  }
  if (info.resourceType === undefined) outside('This system-level operation');
  const rt = info.resourceType;
  const shared = PATIENT_SHARED_TYPES.has(rt);
  if (!shared && !isPatientCompartmentType(rt)) outside(`Resource type ${rt}`);
  if (WRITES.has(info.interaction) && shared) outside(`Writing ${rt}`);
  if (info.interaction === 'conditional-update' || info.interaction === 'conditional-delete') {
    outside('A conditional update or delete (its target is only known after matching)');
  }

  if (info.interaction === 'search-type') {
    const constrained = constrainSearchToPatient(rt, [], pid);
    return { searchConstraint: constrained[0], filterResponse: true };
  }
  if (READS.has(info.interaction)) {
    // A history Bundle of someone else's resource would still say how many versions it has.
    if (info.interaction === 'history-instance' && info.id !== undefined && input.current) {
      const cur = parseResource(input.current(rt, info.id));
      if (cur !== undefined && !shared && !inPatientCompartment(toPlainJson(cur), pid, opts)) outside(`${rt}/${info.id}`);
    }
    return { searchConstraint: undefined, filterResponse: true };
  }
  if (info.interaction === 'operation') {
    if (info.operation === '$validate') return { searchConstraint: undefined, filterResponse: false };
    if (info.id === undefined || !input.current) outside(`Operation ${info.operation ?? ''}`);
    const cur = input.current(rt, info.id);
    if (cur !== undefined && !inPatientCompartment(toPlainJson(parseFhirJson(cur)), pid, opts)) outside(`${rt}/${info.id}`);
    return { searchConstraint: undefined, filterResponse: false };
  }

  // Writes: the new content and the current content must both be in the compartment.
  const body = parseResource(input.body);
  if (info.interaction === 'create' || info.interaction === 'conditional-create' || info.interaction === 'update') {
    if (body !== undefined && !inPatientCompartment(toPlainJson(body), pid, opts)) outside(`The ${rt} in the request body`);
  }
  if (info.interaction === 'update' || info.interaction === 'patch' || info.interaction === 'delete') {
    if (!input.current) outside(`Changing ${rt}/${info.id ?? ''} (no current-version lookup configured)`);
    if (info.id === undefined) return { searchConstraint: undefined, filterResponse: false };
    const curText = input.current(rt, info.id);
    const cur = parseResource(curText);
    if (cur !== undefined && !inPatientCompartment(toPlainJson(cur), pid, opts)) outside(`${rt}/${info.id}`);
    if (info.interaction === 'patch' && cur !== undefined) {
      const format = patchFormatOf(input.contentType);
      let patched: FhirJsonObject | undefined;
      try {
        patched = format ? applyPatchBody(cur, format, input.body ?? '') : undefined;
      } catch {
        patched = undefined; // the FHIR layer answers the bad patch itself
      }
      if (patched !== undefined && !inPatientCompartment(toPlainJson(patched), pid, opts)) outside(`The patched ${rt}/${info.id}`);
    }
  }
  // A conditional create may answer an existing match instead of writing: check what it returns.
  return { searchConstraint: undefined, filterResponse: info.interaction === 'conditional-create' };
}
