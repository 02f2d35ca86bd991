/**
 * Search, forwarded to the node's hospital FHIR server (https://hl7.org/fhir/R4/search.html,
 * https://hl7.org/fhir/R4/http.html#search).
 *
 * The hospital server holds the merged data and its indexes, so the node does not search its own
 * store: it sends the query to the hospital through {@link HospitalSearcher} (tidegate's
 * `HospitalClient`, fhir-kit-client) and turns the answer into the node's view:
 * - resource ids and references are node ids (the client maps them);
 * - `fullUrl` and the paging links (`self`, `next`, `previous`, `first`, `last`) point at the node's
 *   own base URL, with id parameters mapped back to node ids, so a client pages through the node;
 * - an entry whose resource the node holds is answered with the node's current version (its
 *   `versionId`, which a later `If-Match`/`meta.versionId` names, and decimals in their lexical
 *   form); an entry the node holds as deleted is left out;
 * - `_summary` and `_elements` (subset.ts) are sent on to the hospital but enforced by the node on
 *   what comes back, whether or not the hospital applied them: each resource is the subset of the
 *   node's version (or of the hospital copy when the node does not hold it), tagged SUBSETTED;
 *   `_summary=count` answers `total` and no entries (the node adds `_total=accurate` to the
 *   hospital query when the client gave no `_total`, and, when its store crypto-shreds, asks for
 *   `_elements=id` instead of the count so the shredded matches drop out of `total` as below), and
 *   no paging links but `self`. Invalid
 *   values are 400 under `Prefer: handling=strict`, otherwise dropped like unknown parameters;
 * - an entry (match, `_include` or `_revinclude`) whose key the node's store reports as
 *   crypto-shredded (src/store/shred.ts) is left out, and `total` drops by the matches left out:
 *   the hospital may still hold the resource, but this node no longer discloses it;
 * - a parameter unknown for the type (https://hl7.org/fhir/R4/search.html#errors) is refused with
 *   400 under `Prefer: handling=strict`; otherwise it is not applied (not sent to the hospital)
 *   and is left out of the `self` link, which shows the parameters that were applied.
 *
 * Consistency: search sees the hospital's copy, which the node writes asynchronously, so a write
 * through the node is found by search only once the hospital has it (usually milliseconds).
 */
import { canonicalStringify, isJsonObject, isLosslessNumber, parseFhirJson, RawJson } from './json.ts';
import type { FhirJson, FhirJsonObject } from './json.ts';
import { badRequest, FhirError, outcome } from './outcomes.ts';
import { isKnownSearchParameter } from './conditional.ts';
import { isKnownResourceType } from './validate.ts';
import { parseSubset, subsetResource } from './subset.ts';
import type { Subset } from './subset.ts';
import type { Replica } from '../merge/replica.ts';
import type { VersionRecord } from '../store/store.ts';
import type { OperationOutcomeIssue } from '@medplum/fhirtypes';

/** Search parameters as accepted by the hospital client; repeated parameters as arrays. */
export type SearchParamRecord = Record<string, string | string[]>;

/**
 * What search needs from the hospital client (`HospitalClient` of src/hospital implements it).
 * `search` takes and returns node ids; `idMap.toNode` maps a hospital `Type/id` to the node's.
 */
export interface HospitalSearcher {
  /** Hospital FHIR base URL, e.g. `http://10.0.0.5/fhir`. */
  readonly baseUrl: string;
  /**
   * One page of a type-level search; resources come back in node-id form. With `options.held`, an
   * entry whose node `Type/id` it accepts may come back as a stub `{ resourceType, id }` that
   * search replaces with the node's version (a searcher may also ignore the option).
   */
  search(type: string, params: Readonly<Record<string, string | readonly string[]>>, options?: { held?: (nodeRef: string) => boolean }): Promise<FhirJsonObject>;
  /** The node ↔ hospital id map. */
  readonly idMap: { toNode(hospitalRef: string): string | undefined | Promise<string | undefined> };
}

/** True when `x` can serve as a {@link HospitalSearcher} (has `search`, `baseUrl`, `idMap.toNode`). */
export function isHospitalSearcher(x: unknown): x is HospitalSearcher {
  const o = x as Partial<HospitalSearcher> | null | undefined;
  return typeof o?.search === 'function' && typeof o.baseUrl === 'string' && typeof o.idMap?.toNode === 'function';
}

/** Link relations rewritten to the node's base (https://hl7.org/fhir/R4/http.html#paging). */
const PAGING_RELATIONS = new Set(['self', 'next', 'previous', 'prev', 'first', 'last']);
const REF_RE = /^([A-Z][A-Za-z]{1,63})\/([A-Za-z0-9\-.]{1,64})$/;
const TYPE_RE = /^[A-Z][A-Za-z]{1,63}$/;
/** The node's own paging cursor of a system-level search (see {@link searchSystem}). */
const CURSOR = '_tidegate_page';

/**
 * Parses search parameters from a URL query string or an `application/x-www-form-urlencoded` body.
 * @param query - text after `?` (or a form body), percent-encoded.
 * @returns `[name, value]` pairs in order; empty names are dropped.
 */
export function parseSearchQuery(query: string): Array<[string, string]> {
  return [...new URLSearchParams(query)].filter(([name]) => name !== '');
}

/**
 * Groups `[name, value]` pairs into the record the hospital client takes. Linear: a repeated name
 * appends to its own array in place (a `POST _search` body may repeat one parameter 10⁵ times;
 * copying the array per repeat was quadratic, minutes of a blocked event loop). Own members only
 * (`Object.hasOwn`): `constructor` is not an inherited value to append to.
 */
function toRecord(pairs: ReadonlyArray<[string, string]>): SearchParamRecord {
  const out: SearchParamRecord = {};
  for (const [name, value] of pairs) {
    const prev = Object.hasOwn(out, name) ? out[name] : undefined;
    if (prev === undefined) out[name] = value;
    else if (Array.isArray(prev)) prev.push(value);
    else out[name] = [prev, value];
  }
  return out;
}

/** Dependencies of search. */
export interface SearchContext {
  hospital: HospitalSearcher;
  replica: Replica;
  /** True when the node's store crypto-shredded `Type/id` (`ResourceStore.isShredded`); absent: none is. */
  isShredded?: ((key: string) => boolean) | undefined;
}

/**
 * The parameters a search applies (https://hl7.org/fhir/R4/search.html#errors): those known for
 * every type in `types` (conditional.ts {@link isKnownSearchParameter}).
 * @param strict - `Prefer: handling=strict`: an unknown parameter is 400; lenient: it is dropped.
 * @throws {@link FhirError} 400 naming the first unknown parameter (its name only, never a value).
 */
function appliedParams(types: readonly string[], pairs: ReadonlyArray<[string, string]>, strict: boolean): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const pair of pairs) {
    if (types.every((t) => isKnownSearchParameter(t, pair[0]))) out.push(pair);
    else if (strict) throw badRequest(`Unknown search parameter ${pair[0].slice(0, 64)} for ${types.join(', ')} (Prefer: handling=strict)`, [pair[0].slice(0, 64)]);
  }
  return out;
}

/**
 * Type-level search: `GET [base]/[type]?params` or `POST [base]/[type]/_search`.
 *
 * @param ctx - hospital client and the node's replica.
 * @param type - resource type (404 when not an R4 type).
 * @param pairs - search parameters, passed through verbatim (`_count`, `_sort`, `_include`,
 *   `_revinclude`, …; `_summary` and `_elements` are also enforced by the node, subset.ts);
 *   `Type/id` values and `_id` are node ids.
 * @param nodeBase - the node's FHIR base URL, e.g. `http://127.0.0.1:8080/fhir`.
 * @param strict - `Prefer: handling=strict`: unknown parameters are 400 instead of ignored.
 * @returns A `searchset` Bundle in the node's view (see module doc) as canonical JSON text.
 * @throws {@link FhirError} 404 unknown type; 400 unknown parameter or invalid `_summary`/`_elements`
 *   when `strict`; the hospital's
 *   4xx with its issues; 502 when the hospital fails or answers nonsense; 503 when it is unreachable.
 */
export async function searchType(ctx: SearchContext, type: string, given: ReadonlyArray<[string, string]>, nodeBase: string, strict = false): Promise<string> {
  if (!isKnownResourceType(type)) throw new FhirError(404, outcome('error', 'not-found', `Unknown resource type ${type}`));
  const { subset, pairs } = parseSubset([type], appliedParams([type], given, strict), strict, 'search');
  const held = new Map<string, VersionRecord>();
  const shredAware = ctx.isShredded !== undefined;
  const bundle = await forward(ctx, type, hospitalQuery(pairs, subset, shredAware), held);
  const link = subset?.kind === 'count' && shredAware ? (url: string) => countSelfLink(ctx, url, nodeBase, type, pairs) : (url: string) => nodeLink(ctx, url, nodeBase, type);
  await toNodeView(ctx, bundle, nodeBase, subset, held, link, subset?.kind === 'count' ? SELF_ONLY : PAGING_RELATIONS);
  return canonicalStringify(bundle);
}

/**
 * System-level search: `GET [base]?_type=A,B&params` (or the same as a form body to
 * `POST [base]/_search`). `_type` is required. The node runs one type-level search per listed type
 * on the hospital with the other parameters and returns one `searchset` Bundle: entries grouped by
 * type in `_type` order, `total` the sum when every type reported one. `_count` and `_sort` apply
 * per type (there is no global order across types). The `next` link carries the node's own cursor
 * parameter `_tidegate_page` holding each type's next hospital page.
 *
 * @param ctx - hospital client and the node's replica.
 * @param pairs - search parameters including `_type`, or only `_tidegate_page` when paging.
 * @param nodeBase - the node's FHIR base URL.
 * @param strict - `Prefer: handling=strict`: a parameter not known for every listed type is 400
 *   instead of ignored (left out of the search and of the `self` link).
 * @returns The searchset Bundle as canonical JSON text.
 * @throws {@link FhirError} 400 without `_type`, with an unknown type in it, a bad cursor, or an
 *   unknown parameter when `strict`; the hospital's 4xx; 502/503 as {@link searchType}.
 */
export async function searchSystem(ctx: SearchContext, given: ReadonlyArray<[string, string]>, nodeBase: string, strict = false): Promise<string> {
  let pairs: ReadonlyArray<[string, string]> = given;
  const cursor = pairs.find(([n]) => n === CURSOR)?.[1];
  let plan: Array<[string, Array<[string, string]>]>;
  if (cursor !== undefined) {
    plan = decodeCursor(cursor);
  } else {
    const typeValues = pairs.filter(([n]) => n === '_type').flatMap(([, v]) => v.split(','));
    if (typeValues.length === 0) throw badRequest('System-level search needs _type (e.g. ?_type=Patient,Observation)', ['_type']);
    for (const t of typeValues) if (!TYPE_RE.test(t) || !isKnownResourceType(t)) throw badRequest(`Unknown resource type in _type: ${t}`, ['_type']);
    const types = [...new Set(typeValues)];
    const rest = parseSubset(types, appliedParams(types, pairs.filter(([n]) => n !== '_type'), strict), strict, 'search').pairs;
    pairs = [...pairs.filter(([n]) => n === '_type'), ...rest];
    plan = types.map((t) => [t, rest]);
  }
  const entries: FhirJson[] = [];
  let total: number | undefined = 0;
  const nextPlan: Array<[string, Array<[string, string]>]> = [];
  let count = false;
  for (const [type, given] of plan) {
    // Already cleaned (above, or when the cursor was made): parsed again only to know the subset.
    const { subset, pairs: params } = parseSubset([type], given, false, 'search');
    count ||= subset?.kind === 'count';
    const held = new Map<string, VersionRecord>();
    const bundle = await forward(ctx, type, hospitalQuery(params, subset, ctx.isShredded !== undefined), held);
    const found: { next?: Array<[string, string]> } = {};
    await toNodeView(ctx, bundle, nodeBase, subset, held, async (url) => {
      const mapped = await nodeLink(ctx, url, nodeBase, type);
      if (mapped !== undefined) found.next = [...new URL(mapped).searchParams];
      return undefined;
    }, subset?.kind === 'count' ? new Set() : new Set(['next']));
    if (found.next) nextPlan.push([type, found.next]);
    const t = bundle.total;
    total = total !== undefined && isLosslessNumber(t) ? total + Number(t.value) : undefined;
    if (Array.isArray(bundle.entry)) entries.push(...bundle.entry);
  }
  const self = cursor !== undefined ? `${nodeBase}?${new URLSearchParams([[CURSOR, cursor]])}` : `${nodeBase}?${new URLSearchParams(pairs)}`;
  const link: FhirJsonObject[] = [{ relation: 'self', url: self }];
  if (nextPlan.length > 0) link.push({ relation: 'next', url: `${nodeBase}?${new URLSearchParams([[CURSOR, encodeCursor(nextPlan)]])}` });
  const out: FhirJsonObject = { resourceType: 'Bundle', type: 'searchset', link };
  if (total !== undefined) out.total = parseFhirJson(String(total));
  if (entries.length > 0 && !count) out.entry = entries;
  return canonicalStringify(out);
}

function encodeCursor(plan: Array<[string, Array<[string, string]>]>): string {
  return Buffer.from(JSON.stringify(plan)).toString('base64url');
}

function decodeCursor(cursor: string): Array<[string, Array<[string, string]>]> {
  const bad = () => badRequest(`Invalid ${CURSOR} paging cursor`, [CURSOR]);
  let plan: unknown;
  try {
    plan = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    throw bad();
  }
  const isPair = (p: unknown): p is [string, string] => Array.isArray(p) && p.length === 2 && typeof p[0] === 'string' && typeof p[1] === 'string';
  if (!Array.isArray(plan) || plan.length === 0) throw bad();
  for (const step of plan) {
    if (!Array.isArray(step) || step.length !== 2 || typeof step[0] !== 'string' || !TYPE_RE.test(step[0]) || !isKnownResourceType(step[0])) throw bad();
    if (!Array.isArray(step[1]) || !step[1].every(isPair)) throw bad();
  }
  return plan as Array<[string, Array<[string, string]>]>;
}

/** Only the `self` link, for `_summary=count` (nothing to page through). */
const SELF_ONLY: ReadonlySet<string> = new Set(['self']);

/**
 * The parameters sent to the hospital: the applied ones, plus `_total=accurate` for
 * `_summary=count` when the client gave no `_total`, so a hospital that ignores `_summary` still
 * reports the total (https://hl7.org/fhir/R4/search.html#total). With `shredAware` (the node's
 * store reports crypto-shredded keys), `_summary=count` (and `_elements`) go to the hospital as
 * `_elements=id`: a hospital that honours `_summary=count` sends no entries, so the node could not
 * leave out the shredded matches the hospital still holds, and the count would disclose them; with
 * the ids of the page, `total` drops by them exactly as for the same search without `_summary`.
 */
function hospitalQuery(pairs: Array<[string, string]>, subset: Subset | undefined, shredAware: boolean): Array<[string, string]> {
  if (subset?.kind !== 'count') return pairs;
  const q: Array<[string, string]> = shredAware ? [...pairs.filter(([n]) => n !== '_summary' && n !== '_elements'), ['_elements', 'id']] : [...pairs];
  if (!q.some(([n]) => n === '_total')) q.push(['_total', 'accurate']);
  return q;
}

/**
 * The node's `self` link of a `_summary=count` search sent as `_elements=id` ({@link hospitalQuery}):
 * the hospital's link mapped by {@link nodeLink}, with the client's `_summary`/`_elements` in place
 * of the `_elements=id` the node sent.
 */
async function countSelfLink(ctx: SearchContext, url: string, nodeBase: string, type: string, pairs: ReadonlyArray<[string, string]>): Promise<string | undefined> {
  const mapped = await nodeLink(ctx, url, nodeBase, type);
  if (mapped === undefined) return undefined;
  const u = new URL(mapped);
  const params = [...u.searchParams].filter(([n]) => n !== '_elements' && n !== '_summary');
  params.push(...pairs.filter(([n]) => n === '_summary' || n === '_elements'));
  u.search = new URLSearchParams(params).toString();
  return u.toString();
}

/**
 * Sends one type-level search to the hospital and maps its failures to FHIR errors. With `held`,
 * entries whose resource the node holds (a version with a body, or a deletion) may come back as
 * stubs, and `held` records the version each stub stands for (read once, so the view is consistent).
 */
async function forward(ctx: SearchContext, type: string, pairs: ReadonlyArray<[string, string]>, held?: Map<string, VersionRecord>): Promise<FhirJsonObject> {
  const options =
    held === undefined
      ? {}
      : {
          held: (nodeRef: string): boolean => {
            const cur = ctx.replica.current(nodeRef);
            if (cur === undefined || (!cur.deleted && !cur.body)) return false;
            held.set(nodeRef, cur);
            return true;
          },
        };
  try {
    return await ctx.hospital.search(type, toRecord(pairs), options);
  } catch (err) {
    throw hospitalFailure(err, 'search');
  }
}

/**
 * Maps a hospital client failure to a {@link FhirError}: the hospital's own 4xx refusal keeps its
 * status and issues (they are about the client's request), a 5xx or unusable answer becomes 502,
 * an unreachable hospital 503. Other errors are rethrown unchanged (500 at the edge).
 * @param err - what the hospital client threw (`HospitalError` has `code`, `status`, `issues`).
 * @param what - the interaction, used in the diagnostics (no PHI).
 */
export function hospitalFailure(err: unknown, what: string): unknown {
  const e = err as { code?: unknown; status?: unknown; issues?: unknown } | null;
  if (e?.code === 'ERR_HOSPITAL_UNREACHABLE') {
    return new FhirError(503, outcome('error', 'transient', `The hospital FHIR server is unreachable; ${what} is answered there. Try again later.`));
  }
  if (e?.code === 'ERR_HOSPITAL_REJECTED') {
    const status = typeof e.status === 'number' ? e.status : undefined;
    if (status !== undefined && status >= 400 && status < 500) {
      const issues = (Array.isArray(e.issues) ? e.issues : []) as OperationOutcomeIssue[];
      const kept: OperationOutcomeIssue[] = issues.map((i) => ({
        severity: i.severity ?? 'error',
        code: i.code ?? 'processing',
        ...(i.details?.text ? { details: { text: i.details.text } } : {}),
        ...(i.diagnostics ? { diagnostics: i.diagnostics } : {}),
        ...(i.expression ? { expression: i.expression } : {}),
      }));
      if (kept.length === 0) kept.push({ severity: 'error', code: 'processing', diagnostics: `The hospital FHIR server refused the ${what} (HTTP ${status})` });
      return new FhirError(status, { resourceType: 'OperationOutcome', issue: kept });
    }
    return new FhirError(502, outcome('error', 'exception', `The hospital FHIR server failed the ${what}${status ? ` (HTTP ${status})` : ''}`));
  }
  return err;
}

/**
 * Rewrites a hospital searchset in place into the node's view (module doc). An entry the node
 * holds gets the stored body (canonical text) spliced in as {@link RawJson}, not parsed, or, with
 * a `subset` (subset.ts), that body's subset; an entry it does not hold is subsetted as the
 * hospital sent it. `_summary=count` leaves no entries. `held` gives the versions already read by
 * {@link forward}.
 */
async function toNodeView(
  ctx: SearchContext,
  bundle: FhirJsonObject,
  nodeBase: string,
  subset: Subset | undefined,
  held: ReadonlyMap<string, VersionRecord>,
  link: (url: string) => Promise<string | undefined>,
  relations: ReadonlySet<string> = PAGING_RELATIONS,
): Promise<void> {
  if (Array.isArray(bundle.entry)) {
    const kept: FhirJson[] = [];
    let shreddedMatches = 0;
    for (const entry of bundle.entry) {
      if (!isJsonObject(entry)) continue;
      const r = entry.resource;
      if (isJsonObject(r) && typeof r.resourceType === 'string' && typeof r.id === 'string') {
        const ref = `${r.resourceType}/${r.id}`;
        if (ctx.isShredded?.(ref)) {
          if (!(isJsonObject(entry.search) && entry.search.mode === 'include')) shreddedMatches++;
          continue;
        }
        const cur = held.get(ref) ?? ctx.replica.current(ref);
        if (cur?.deleted) continue;
        const isOutcome = isJsonObject(entry.search) && entry.search.mode === 'outcome';
        if (cur?.body) {
          // Stored bodies are canonical (VersionRecord.body), so the splice is byte-identical to parsing and re-serializing.
          if (subset === undefined || subset.kind === 'count' || isOutcome) entry.resource = new RawJson(cur.body) as unknown as FhirJson;
          else entry.resource = subsetResource(parseFhirJson(cur.body) as FhirJsonObject, subset);
        } else if (subset !== undefined && subset.kind !== 'count' && !isOutcome) {
          entry.resource = subsetResource(r, subset);
        }
        entry.fullUrl = `${nodeBase}/${r.resourceType}/${r.id}`;
      } else {
        delete entry.fullUrl;
      }
      kept.push(entry);
    }
    if (kept.length > 0) bundle.entry = kept;
    else delete bundle.entry;
    if (shreddedMatches > 0 && isLosslessNumber(bundle.total)) bundle.total = parseFhirJson(String(Math.max(0, Number(bundle.total.value) - shreddedMatches)));
  }
  if (subset?.kind === 'count') {
    // A hospital that ignored both _summary=count and _total: on a single page, the matches are the total.
    const pagesOn = Array.isArray(bundle.link) && bundle.link.some((l) => isJsonObject(l) && l.relation === 'next');
    const matches = (Array.isArray(bundle.entry) ? bundle.entry : []).filter((e) => !(isJsonObject(e) && isJsonObject(e.search) && e.search.mode !== 'match'));
    if (bundle.total === undefined && !pagesOn) bundle.total = parseFhirJson(String(matches.length));
    delete bundle.entry;
  }
  if (Array.isArray(bundle.link)) {
    const links: FhirJson[] = [];
    for (const l of bundle.link) {
      if (!isJsonObject(l) || typeof l.relation !== 'string' || typeof l.url !== 'string') continue;
      if (!relations.has(l.relation)) continue;
      const url = await link(l.url);
      if (url !== undefined) links.push({ ...l, url });
    }
    if (links.length > 0) bundle.link = links;
    else delete bundle.link;
  }
}

/**
 * A hospital paging link as the node's: `[nodeBase]/[type]?params`, with `_id` values and
 * `Type/id` values mapped back to node ids. Links that are not on the hospital's base are dropped.
 */
async function nodeLink(ctx: SearchContext, url: string, nodeBase: string, type: string): Promise<string | undefined> {
  let u: URL;
  let base: URL;
  try {
    base = new URL(`${ctx.hospital.baseUrl.replace(/\/+$/, '')}/`);
    u = new URL(url, base);
  } catch {
    return undefined;
  }
  if (!u.pathname.startsWith(base.pathname)) return undefined;
  const rel = u.pathname.slice(base.pathname.length).replace(/\/+$/, '');
  if (rel !== type && rel !== `${type}/_search`) return undefined;
  const out: Array<[string, string]> = [];
  for (const [name, value] of u.searchParams) {
    if (name === '_id') {
      const ids = await Promise.all(value.split(',').map(async (v) => ((await ctx.hospital.idMap.toNode(`${type}/${v}`)) ?? `${type}/${v}`).slice(type.length + 1)));
      out.push([name, ids.join(',')]);
    } else if (REF_RE.test(value)) {
      out.push([name, (await ctx.hospital.idMap.toNode(value)) ?? value]);
    } else {
      out.push([name, value]);
    }
  }
  const qs = new URLSearchParams(out).toString();
  return `${nodeBase}/${type}${qs ? `?${qs}` : ''}`;
}
