/**
 * Matching of conditional interactions (https://hl7.org/fhir/R4/http.html#ccreate,
 * #cond-update, #3.1.0.7.1 conditional delete): which resources of a type meet search criteria.
 *
 * Matching runs in the node's own store, not on the hospital server: the store holds every write
 * the node has merged, including those the hospital has not received yet, so a conditional create
 * right after a create through the same node sees it. It does not see resources that exist only on
 * the hospital server (edits made there and not yet synced) or writes at other nodes that have not
 * arrived by gossip: two nodes may each conditionally create "the same" resource concurrently.
 *
 * Criteria are evaluated with `@medplum/core`'s `matchesSearchRequest`, which supports search
 * parameters of type token, string, uri, reference and date, with the modifiers in
 * {@link SUPPORTED_MODIFIERS} (`:missing`, `:not` on tokens, `:contains` on strings). Other types
 * (number, quantity, composite, special), other modifiers (unknown ones such as `name:foo`, and
 * ones the matcher would evaluate wrongly, such as `:exact` or `:[type]`), chains, `_has` and
 * unknown parameters are refused with 400 rather than silently matching nothing.
 */
import { getSearchParameter, matchesSearchRequest, parseSearchRequest } from '@medplum/core';
import type { SearchRequest } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import type { Replica } from '../merge/replica.ts';
import { badRequest } from './outcomes.ts';
import { parseFhirJson, toPlainJson } from './json.ts';
import { ensureFhirDefinitionsLoaded } from '../hospital/definitions.ts';
import type { FhirJsonObject } from './json.ts';

const SUPPORTED_TYPES = new Set(['token', 'string', 'uri', 'reference', 'date']);
/**
 * Modifiers evaluated correctly by `matchesSearchRequest`, per search parameter type
 * (https://hl7.org/fhir/R4/search.html#modifiers). Medplum parses an unknown modifier as plain
 * equality, so every other modifier is refused here.
 */
const SUPPORTED_MODIFIERS: Readonly<Record<string, ReadonlySet<string>>> = {
  token: new Set(['missing', 'not']),
  string: new Set(['missing', 'contains']),
  uri: new Set(['missing']),
  reference: new Set(['missing']),
  date: new Set(['missing']),
};
/** Result-shaping parameters that carry no criteria; ignored when matching. */
const IGNORED = new Set(['_count', '_sort', '_include', '_revinclude', '_summary', '_elements', '_format', '_pretty', '_total', '_offset']);

/**
 * Parameters of every search that are not SearchParameter resources of a type: the result
 * parameters and the special ones of https://hl7.org/fhir/R4/search.html#all (`_has`, `_text`, …).
 */
const GENERAL_PARAMS = new Set([...IGNORED, '_contained', '_containedType', '_has', '_text', '_content', '_list', '_query', '_filter']);

/**
 * Whether a search parameter name is known for a resource type: a result or special parameter
 * (`_count`, `_has`, …) or a SearchParameter of the type in the indexed R4 definitions (core and
 * US Core, src/hospital/definitions.ts). Modifiers (`name:exact`) and chains (`subject.name`) are
 * judged by the parameter before them. See https://hl7.org/fhir/R4/search.html#errors.
 * @param type - resource type (an R4 type).
 * @param name - the parameter name as sent, e.g. `gender`, `name:contains`, `subject:Patient.name`.
 * @returns True when known; false for a name such as `gendr`.
 */
export function isKnownSearchParameter(type: string, name: string): boolean {
  const code = name.split(':')[0]!.split('.')[0]!;
  if (GENERAL_PARAMS.has(code)) return true;
  ensureFhirDefinitionsLoaded();
  return getSearchParameter(type, code) !== undefined;
}

/**
 * Normalizes conditional criteria: `If-None-Exist` values may be `identifier=x`, `?identifier=x`
 * or `Patient?identifier=x`.
 * @param type - resource type the criteria are about.
 * @param criteria - the criteria text (percent-encoded query).
 * @returns The query without prefix.
 */
export function criteriaQuery(type: string, criteria: string): string {
  let q = criteria.trim();
  if (q.startsWith(`${type}?`)) q = q.slice(type.length + 1);
  else if (q.startsWith('?')) q = q.slice(1);
  return q;
}

/** Criteria checked and parsed once, to match many resources (see {@link compileCriteria}). */
export interface CompiledCriteria {
  /** The resource type the criteria are about. */
  readonly type: string;
  /** Medplum's parsed search request (criteria only, result-shaping parameters dropped). */
  readonly request: SearchRequest;
}

/**
 * Checks and parses conditional criteria (https://hl7.org/fhir/R4/search.html).
 *
 * @param type - resource type (already checked to be an R4 type).
 * @param query - percent-encoded search query without `?`, e.g. `identifier=http://x|123`.
 * @returns The compiled criteria, for {@link matchesCriteria}.
 * @throws {@link FhirError} 400 when the query has no criteria or uses an unsupported parameter.
 */
export function compileCriteria(type: string, query: string): CompiledCriteria {
  const params = [...new URLSearchParams(query)];
  const criteria = params.filter(([name]) => !IGNORED.has(name.split(':')[0]!));
  if (criteria.length === 0) throw badRequest('Conditional interactions need search criteria (e.g. identifier=system|value)');
  for (const [name] of criteria) {
    const code = name.split(':')[0]!;
    if (code.includes('.') || code === '_has') throw badRequest(`Chained and _has parameters are not supported in conditional interactions (${code})`);
    ensureFhirDefinitionsLoaded();
    const sp = getSearchParameter(type, code);
    if (!sp) throw badRequest(`Unknown search parameter ${code} for ${type}`);
    if (!SUPPORTED_TYPES.has(sp.type)) throw badRequest(`Search parameter ${code} (${sp.type}) is not supported in conditional interactions`);
    const modifier = name.includes(':') ? name.slice(name.indexOf(':') + 1) : undefined;
    if (modifier !== undefined && !SUPPORTED_MODIFIERS[sp.type]?.has(modifier)) {
      throw badRequest(`Modifier :${modifier} of search parameter ${code} (${sp.type}) is unknown or not supported in conditional interactions`);
    }
  }
  try {
    return { type, request: parseSearchRequest(`${type}?${new URLSearchParams(criteria)}`) };
  } catch {
    throw badRequest('Conditional criteria could not be parsed');
  }
}

/**
 * Whether one resource meets compiled criteria.
 * @param resource - lossless FHIR JSON (converted to plain JS for the matcher only; none of the
 *   supported parameter types compares decimals).
 * @param criteria - from {@link compileCriteria}.
 * @returns True when `resource` is of the criteria's type and matches every parameter.
 */
export function matchesCriteria(resource: FhirJsonObject, criteria: CompiledCriteria): boolean {
  if (resource.resourceType !== criteria.type) return false;
  return matchesSearchRequest(toPlainJson(resource) as Resource, criteria.request);
}

/**
 * Ids of the live (not deleted) resources of `type` in the node's store that meet `query`.
 *
 * @param replica - the node's merge engine.
 * @param type - resource type (already checked to be an R4 type).
 * @param query - percent-encoded search query without `?`, e.g. `identifier=http://x|123`.
 * @param limit - stop after this many matches (2 is enough to tell "one" from "many").
 * @returns Matching ids, at most `limit`, in store order.
 * @throws {@link FhirError} 400 when the query has no criteria or uses an unsupported parameter.
 */
export function findMatches(replica: Replica, type: string, query: string, limit = 2): string[] {
  const criteria = compileCriteria(type, query);
  const out: string[] = [];
  const prefix = `${type}/`;
  for (const key of replica.resourceKeys()) {
    if (!key.startsWith(prefix)) continue;
    const v = replica.current(key);
    if (!v || v.deleted || !v.body) continue;
    if (matchesCriteria(parseFhirJson(v.body) as FhirJsonObject, criteria)) {
      out.push(key.slice(prefix.length));
      if (out.length >= limit) break;
    }
  }
  return out;
}
