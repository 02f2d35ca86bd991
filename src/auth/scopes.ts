/**
 * SMART on FHIR clinical-data scopes, v1 and v2, as permissions per interaction and resource type.
 * https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html
 *
 * - v2: `(patient|user|system)/(Type|*).[c][r][u][d][s]` in that order, optionally followed by
 *   `?param=value&…` (granular scopes, SMART 2.x §"Finer-grained resource constraints").
 *   `c` create; `r` read, vread, instance history; `u` update, patch; `d` delete;
 *   `s` search (type and system level, type and system history).
 * - v1: `(patient|user|system)/(Type|*).(read|write|*)`, read = `rs`, write = `cud`, `*` = `cruds`
 *   (SMART 2.x §"Scope equivalence with SMART on FHIR v1").
 *
 * Other scopes (`openid`, `fhirUser`, `launch`, `launch/patient`, `offline_access`, …) carry no
 * clinical-data permission and are kept only as text. A malformed clinical scope grants nothing.
 * Granular scopes are parsed but this node does not evaluate their restrictions yet: such a scope
 * grants nothing, and a request it alone would have allowed is refused with
 * `unsupported_granular_scope` (never silently widened to the whole type).
 */

/** SMART v2 permission letters. */
export type Permission = 'c' | 'r' | 'u' | 'd' | 's';

/** The three SMART scope contexts. */
export type ScopeContext = 'patient' | 'user' | 'system';

/** One parsed clinical-data scope. */
export interface ClinicalScope {
  /** The scope text as granted. */
  readonly raw: string;
  readonly context: ScopeContext;
  /** A resource type or `*`. */
  readonly resourceType: string;
  readonly permissions: ReadonlySet<Permission>;
  readonly version: 1 | 2;
  /** Granular restriction `?param=value&…` (v2 only), as decoded pairs; undefined when absent. */
  readonly restrictions: ReadonlyArray<readonly [string, string]> | undefined;
}

/** A token's scopes, parsed. */
export interface ScopeSet {
  /** Clinical-data scopes (valid ones only). */
  readonly clinical: readonly ClinicalScope[];
  /** Scopes that are not clinical-data scopes (`openid`, `launch/patient`, …). */
  readonly other: readonly string[];
  /** Scopes that look like clinical-data scopes but are malformed; they grant nothing. */
  readonly invalid: readonly string[];
}

const V2 = /^(patient|user|system)\/(\*|[A-Z][A-Za-z]{1,63})\.(c?r?u?d?s?)(?:\?(.*))?$/;
const V1 = /^(patient|user|system)\/(\*|[A-Z][A-Za-z]{1,63})\.(read|write|\*)$/;
const V1_PERMISSIONS: Record<string, Permission[]> = { read: ['r', 's'], write: ['c', 'u', 'd'], '*': ['c', 'r', 'u', 'd', 's'] };

/**
 * Parses one scope.
 * @param scope - one space-free scope token.
 * @returns The clinical scope, `'other'` for a non-clinical scope, or `'invalid'` for a malformed
 *   clinical scope (e.g. `patient/Observation.sr`, letters out of order).
 */
export function parseScope(scope: string): ClinicalScope | 'other' | 'invalid' {
  const v1 = V1.exec(scope);
  if (v1) return { raw: scope, context: v1[1] as ScopeContext, resourceType: v1[2]!, permissions: new Set(V1_PERMISSIONS[v1[3]!]), version: 1, restrictions: undefined };
  const v2 = V2.exec(scope);
  if (v2 && v2[3] !== '') {
    let restrictions: Array<[string, string]> | undefined;
    if (v2[4] !== undefined) {
      try {
        restrictions = [...new URLSearchParams(v2[4])];
      } catch {
        return 'invalid';
      }
      if (restrictions.length === 0 || restrictions.some(([k, v]) => k === '' || v === '')) return 'invalid';
    }
    return { raw: scope, context: v2[1] as ScopeContext, resourceType: v2[2]!, permissions: new Set(v2[3]!.split('') as Permission[]), version: 2, restrictions };
  }
  return /^(patient|user|system)\//.test(scope) ? 'invalid' : 'other';
}

/**
 * Parses a token's `scope` claim (RFC 8693 §4.2 / RFC 9068 §2.2.3: space-separated).
 * @param scope - the claim value; a string, or an array of strings (`scp`, as some servers issue).
 */
export function parseScopes(scope: string | readonly string[] | undefined): ScopeSet {
  const list = scope === undefined ? [] : typeof scope === 'string' ? scope.split(' ') : scope.flatMap((s) => s.split(' '));
  const clinical: ClinicalScope[] = [];
  const other: string[] = [];
  const invalid: string[] = [];
  for (const s of list) {
    if (s === '') continue;
    const p = parseScope(s);
    if (p === 'other') other.push(s);
    else if (p === 'invalid') invalid.push(s);
    else clinical.push(p);
  }
  return { clinical, other, invalid };
}

/** The outcome of {@link checkScope}. */
export type ScopeDecision =
  | { readonly granted: true; readonly via: ClinicalScope }
  | { readonly granted: false; readonly reason: 'insufficient_scope' | 'unsupported_granular_scope' | 'patient_context_required'; readonly needed: string };

/**
 * Whether a token's scopes grant one permission on one resource type.
 * @param scopes - the token's parsed scopes.
 * @param permission - the letter needed (see {@link permissionsFor}).
 * @param resourceType - the FHIR resource type concerned.
 * @param hasPatientContext - whether the token carries a patient context; `patient/` scopes grant
 *   nothing without one (SMART: "the server SHALL provide a patient launch context").
 * @returns Granted with the first granting scope, else the reason and the scope that would suffice
 *   (for the `scope` attribute of the `WWW-Authenticate` challenge).
 */
export function checkScope(scopes: ScopeSet, permission: Permission, resourceType: string, hasPatientContext: boolean): ScopeDecision {
  let granular = false;
  let needsContext = false;
  for (const s of scopes.clinical) {
    if (!s.permissions.has(permission)) continue;
    if (s.resourceType !== '*' && s.resourceType !== resourceType) continue;
    if (s.restrictions !== undefined) {
      granular = true;
      continue;
    }
    if (s.context === 'patient' && !hasPatientContext) {
      needsContext = true;
      continue;
    }
    return { granted: true, via: s };
  }
  const level = hasPatientContext ? 'patient' : 'user';
  const needed = `${level}/${resourceType}.${permission} system/${resourceType}.${permission}`;
  if (granular) return { granted: false, reason: 'unsupported_granular_scope', needed };
  if (needsContext) return { granted: false, reason: 'patient_context_required', needed };
  return { granted: false, reason: 'insufficient_scope', needed };
}

/** FHIR interactions as the authorization layer sees them (https://hl7.org/fhir/R4/http.html). */
export type Interaction =
  | 'read'
  | 'vread'
  | 'history-instance'
  | 'history-type'
  | 'history-system'
  | 'search-type'
  | 'search-system'
  | 'create'
  | 'conditional-create'
  | 'update'
  | 'conditional-update'
  | 'patch'
  | 'delete'
  | 'conditional-delete'
  | 'operation';

/**
 * The permission letters an interaction needs (all of them), per the SMART 2.x table. Conditional
 * interactions also search (`s`); a conditional create answers an existing match (`r`); a
 * conditional update may create (`c`). Operations: `$validate` is a dry-run write (`c` or `u`,
 * checked by the caller), `$conflicts` reads (`r`); any other operation needs every letter.
 * @param interaction - the interaction.
 * @param operation - the operation name with `$`, for `operation`.
 */
export function permissionsFor(interaction: Interaction, operation?: string): Permission[] {
  switch (interaction) {
    case 'read':
    case 'vread':
    case 'history-instance':
      return ['r'];
    case 'history-type':
    case 'history-system':
    case 'search-type':
    case 'search-system':
      return ['s'];
    case 'create':
      return ['c'];
    case 'conditional-create':
      return ['c', 's', 'r'];
    case 'update':
    case 'patch':
      return ['u'];
    case 'conditional-update':
      return ['c', 'u', 's'];
    case 'delete':
      return ['d'];
    case 'conditional-delete':
      return ['d', 's'];
    case 'operation':
      if (operation === '$conflicts') return ['r'];
      if (operation === '$validate') return ['c'];
      return ['c', 'r', 'u', 'd', 's'];
  }
}
