/**
 * `batch` and `transaction` Bundles: `POST [base]` with a Bundle
 * (https://hl7.org/fhir/R4/http.html#transaction, #batch, #trules, #transaction-response).
 *
 * **Batch.** Each entry is processed on its own, by the node's live {@link FhirService}, in the
 * order FHIR specifies (DELETE, POST, PUT/PATCH, GET/HEAD), and answered in a `batch-response`
 * entry at the request's position with `response.status`, `location`, `etag`, `lastModified`,
 * and `outcome` on failure. Entries must not depend on each other (http.html#batch): a
 * `urn:uuid:`/`urn:oid:` reference in a batch entry fails that entry (400; use a transaction).
 * Search entries are forwarded to the hospital like `GET [type]?…`.
 *
 * **Transaction: all-or-nothing in the node's store.** Nothing of a transaction is merged into the
 * node's store, gossiped or queued for the hospital until every entry has succeeded:
 *
 * 1. *Check* the Bundle as a whole (type, entry limit, `request.method`/`url`, duplicate
 *    `fullUrl`, nested Bundles) and every entry (URL, resource type, body).
 * 2. *Resolve identities* against the store as it was before the transaction, in FHIR order:
 *    DELETE (conditional: 0 matches is a no-op, >1 is 412), POST (a new id now, or the one match
 *    of `ifNoneExist`), PUT (conditional update: the one match, else the body id or a new id).
 *    Two entries that change the same resource fail the transaction (400, http.html#trules).
 * 3. *Rewrite references*: every string element equal to an entry's `fullUrl` (`Reference.reference`,
 *    `uri` elements, also inside `contained` resources) becomes `Type/id`, and so do `href`/`src`
 *    attributes in narrative `div`s. A `urn:uuid:`/`urn:oid:` reference no entry declares is 400.
 *    Conditional references (`Patient?identifier=sys|val`, as Synthea writes them) are resolved by
 *    matching (conditional.ts) the store (without resources this transaction deletes or rewrites)
 *    plus the transaction's own resources: exactly one match, else 412.
 * 4. *Stage*: every entry runs, in FHIR order, through a second {@link FhirService} over a
 *    {@link StagingReplica} whose store is an {@link OverlayStore}: reads fall through to the node's
 *    store, writes stay in the overlay and are recorded, and nothing is gossiped.
 *    All per-entry checks run here exactly as for single interactions — R4 and profile validation
 *    (422), `If-Match` (with `Prefer: handling=strict`, 412 unless current; otherwise a base version
 *    the node does not hold is 412), `If-None-Match: *`, patch application, reads of what the
 *    transaction wrote (GET entries run last, http.html#trules). Any failure ends the transaction
 *    with that entry's status and an OperationOutcome naming `Bundle.entry[i]`; the overlay is
 *    dropped and nothing has changed.
 * 5. *Commit*: the recorded writes are replayed, with the same arguments, on the node's replica
 *    (each new version goes to the hospital outbox through the replica's `onVersion`, and each
 *    update is gossiped, as for any write). The node's store is exactly what the staging started
 *    from, so each replayed write succeeds as it did in staging; the response entries are then
 *    refreshed from the versions the node holds. Steps 1–5 run synchronously, without `await`, so
 *    no other write, gossip message or hospital edit interleaves between the checks and the commit.
 *
 * Why stage rather than write and roll back: a CRDT write cannot be taken back once gossiped or
 * queued, and the store has no "delete record" operation; staging means a failure needs no undo.
 * Limit: the commit applies one resource after another (the store commits each resource durably on
 * its own); only a storage failure (disk full, I/O error) during the commit can stop it part-way.
 * Then the resources already committed stay, are gossiped and sent to the hospital (so every
 * replica agrees), and the client gets 500.
 *
 * Search entries are refused in a transaction (501): search is answered asynchronously by the
 * hospital server, which cannot be part of the node's atomic step; use a batch.
 *
 * Responses: `Prefer: return=minimal|representation|OperationOutcome` applies to every write entry
 * (default `representation`, as for single writes); `Prefer: handling=strict` turns on strict
 * `If-Match` for every entry. An entry's `request.ifMatch`, `ifNoneMatch` and `ifModifiedSince`
 * (an HTTP date or a FHIR instant) are checked like the HTTP headers (preconditions.ts): a
 * malformed one fails the entry with 400.
 */
import { randomUUID } from 'node:crypto';
import type { Bundle, BundleEntry } from '@medplum/fhirtypes';
import { canonicalStringify, FhirJsonError, isJsonObject, parseFhirJson } from './json.ts';
import type { FhirJson, FhirJsonObject } from './json.ts';
import { badRequest, FhirError, notImplemented, outcome, preconditionFailed, toOutcome, unsupportedMediaType } from './outcomes.ts';
import { FHIR_ID, isKnownResourceType } from './validate.ts';
import { compileCriteria, criteriaQuery, findMatches, matchesCriteria } from './conditional.ts';
import { applyPrefer, parsePrefer } from './prefer.ts';
import type { Preferences } from './prefer.ts';
import { parseSearchQuery } from './search.ts';
import { parseHttpDate } from './preconditions.ts';
import type { FhirResult, FhirService, ReadQuery } from './service.ts';
import { Replica } from '../merge/replica.ts';
import type { LocalWriteResult, ReplicaOptions } from '../merge/replica.ts';
import type { ResourceRecord, ResourceStore } from '../store/store.ts';

/** Default most entries a batch or transaction Bundle may hold (`FhirServiceOptions.maxBundleEntries`). */
export const DEFAULT_MAX_BUNDLE_ENTRIES = 10_000;

const FHIR_MEDIA = /^application\/(fhir\+)?json\b/i;
const FHIR_JSON = 'application/fhir+json';
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE']);
/** Processing order of http.html#trules: DELETE, POST, PUT/PATCH, GET/HEAD. */
const ORDER: Record<string, number> = { DELETE: 0, POST: 1, PUT: 2, PATCH: 2, GET: 3, HEAD: 3 };
const URN = /^urn:(uuid|oid):/i;
const CONDITIONAL_REF = /^([A-Z][A-Za-z]{1,63})\?(.+)$/;
const STATUS_TEXT: Record<number, string> = {
  200: 'OK', 201: 'Created', 204: 'No Content', 304: 'Not Modified', 400: 'Bad Request', 404: 'Not Found', 405: 'Method Not Allowed',
  409: 'Conflict', 410: 'Gone', 412: 'Precondition Failed', 415: 'Unsupported Media Type', 422: 'Unprocessable Entity',
  500: 'Internal Server Error', 501: 'Not Implemented', 502: 'Bad Gateway', 503: 'Service Unavailable',
};

/** A `POST [base]` request after HTTP parsing. */
export interface BundleRequest {
  /** Raw body text. */
  text: string;
  contentType: string | undefined;
  /** `Prefer` header (return=…, handling=strict), applied to every entry. */
  prefer?: string | undefined;
  /** `X-Tidegate-Author`, applied to every write entry. */
  author?: string | undefined;
  /** The node's FHIR base URL, e.g. `http://127.0.0.1:8080/fhir`; entry URLs may be absolute under it. */
  baseUrl: string;
}

/** One local write a transaction staged: the exact arguments of {@link Replica.write}. */
export interface StagedWrite {
  key: string;
  body: FhirJsonObject | null;
  opts: { baseVersionId?: string; author?: string };
}

/**
 * The replica of a transaction's staging area: a {@link Replica} over an {@link OverlayStore}
 * (construct it with one) that records every write that changed something, so the commit can
 * replay the same writes, with the same arguments, on the node's replica.
 */
export class StagingReplica extends Replica {
  /** Writes that produced an update, in order. */
  readonly writes: StagedWrite[] = [];

  /** @param opts - as {@link Replica}; `store` should be an {@link OverlayStore} and `onVersion` absent. */
  constructor(opts: ReplicaOptions) {
    super(opts);
  }

  /** {@link Replica.write}, recorded when it changed the resource. */
  override write(key: string, body: FhirJsonObject | null, opts: { baseVersionId?: string; author?: string } = {}): LocalWriteResult {
    const res = super.write(key, body, opts);
    if (res.update) this.writes.push({ key, body, opts: { ...opts } });
    return res;
  }
}

/** A staging area: a service over a {@link StagingReplica}; its sink discards updates (nothing is gossiped). */
export interface Staging {
  service: FhirService;
  replica: StagingReplica;
}

/** What bundle processing needs from the node (built by {@link FhirService.bundle}). */
export interface BundleContext {
  /** The node's live service: batch entries go straight to it. */
  live: FhirService;
  /** The node's replica, as it is before the transaction (identity and reference resolution). */
  replica: Replica;
  /** Opens a fresh staging area over the node's current store. */
  stage(): Staging;
  /** Replays staged writes on the node's replica and gossips them (see module doc, step 5). */
  commit(writes: StagedWrite[]): void;
  /** Most entries accepted. */
  maxEntries: number;
}

/**
 * A {@link ResourceStore} that reads through to a replica and keeps its own writes: the store of a
 * transaction's staging replica. Reads of a key not written here return the node's record (its
 * Yjs state and versions, oldest first), so base versions named by `If-Match` are found; writes
 * never reach the node's store.
 */
export class OverlayStore implements ResourceStore {
  private readonly base: Replica;
  private readonly staged = new Map<string, ResourceRecord>();

  /** @param base - the node's replica (only read). */
  constructor(base: Replica) {
    this.base = base;
  }

  /** The staged record of `key`, else the node's. */
  get(key: string): ResourceRecord | undefined {
    const own = this.staged.get(key);
    if (own) return own;
    const state = this.base.diffFor(key, undefined);
    return state ? { state, versions: this.base.history(key).reverse() } : undefined;
  }

  /** Keeps `record` in the overlay only. */
  set(key: string, record: ResourceRecord): void {
    this.staged.set(key, record);
  }

  /** The node's keys, then the keys only staged here. */
  *keys(): IterableIterator<string> {
    for (const k of this.base.keys()) yield k;
    for (const k of this.staged.keys()) if (!this.base.stateVector(k)) yield k;
  }

  /** Number of keys (node's plus staged-only). */
  get size(): number {
    let n = 0;
    for (const _ of this.keys()) n++;
    return n;
  }
}

type Method = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** An entry after the Bundle-level checks. */
interface RawEntry {
  index: number;
  method: Method;
  url: string;
  fullUrl: string | undefined;
  resource: FhirJsonObject | undefined;
  ifMatch: string | undefined;
  ifNoneMatch: string | undefined;
  ifNoneExist: string | undefined;
  ifModifiedSince: string | undefined;
}

/** The URL of an entry's request, parsed. `query` is percent-encoded, without `?`. */
interface Target {
  kind: 'system' | 'type' | 'instance' | 'history' | 'vread';
  type: string;
  id: string;
  vid: string;
  query: string;
}

/** What one entry does, after identities are resolved (transaction) or as asked (batch). */
type Action =
  | { do: 'create'; type: string; id?: string; body: FhirJsonObject; ifNoneExist?: string }
  | { do: 'existing'; type: string; id: string }
  | { do: 'update'; type: string; id: string; body: FhirJsonObject }
  | { do: 'cond-update'; type: string; query: string; body: FhirJsonObject }
  | { do: 'patch'; type: string; id: string; text: string; contentType: string }
  | { do: 'delete'; type: string; id: string }
  | { do: 'cond-delete'; type: string; query: string }
  | { do: 'nothing' }
  | { do: 'read'; type: string; id: string; query: string }
  | { do: 'vread'; type: string; id: string; vid: string; query: string }
  | { do: 'history'; type: string; id: string; query: string }
  | { do: 'search'; type: string; query: string };

interface Planned {
  entry: RawEntry;
  action: Action;
}

const at = (i: number, tail = ''): string => `Bundle.entry[${i}]${tail}`;

/**
 * Re-labels an entry's error for the Bundle: every issue's diagnostics start with
 * `Bundle.entry[i] (METHOD Type)` and its expressions are moved under `Bundle.entry[i].resource`
 * (`Patient.name` → `Bundle.entry[3].resource.name`). No URL query (it may hold identifiers) is quoted.
 */
function relabel(err: FhirError, e: RawEntry, type: string | undefined): FhirError {
  const label = `${at(e.index)} (${e.method}${type ? ` ${type}` : ''})`;
  const issue = (err.outcome.issue ?? []).map((i) => ({
    ...i,
    diagnostics: `${label}: ${i.diagnostics ?? i.details?.text ?? 'failed'}`,
    expression: [
      ...(i.expression ?? []).map((x) => (x.startsWith('Bundle.') ? x : type && (x === type || x.startsWith(`${type}.`)) ? `${at(e.index, '.resource')}${x.slice(type.length)}` : `${at(e.index, '.resource')}.${x}`)),
      ...(i.expression?.some((x) => x.startsWith('Bundle.')) ? [] : [at(e.index)]),
    ],
  }));
  return new FhirError(err.status, { ...err.outcome, issue });
}

/** Bundle-level checks (http.html#transaction): any failure answers 400/422 for the whole Bundle. */
function parseBundle(req: BundleRequest, maxEntries: number): { type: 'batch' | 'transaction'; entries: RawEntry[] } {
  if (!req.contentType || !FHIR_MEDIA.test(req.contentType)) throw unsupportedMediaType('Content-Type must be application/fhir+json or application/json');
  let bundle: FhirJson;
  try {
    bundle = parseFhirJson(req.text);
  } catch (err) {
    if (err instanceof FhirJsonError) throw badRequest('Malformed JSON body');
    throw err;
  }
  if (!isJsonObject(bundle) || bundle.resourceType !== 'Bundle') throw badRequest('POST to the FHIR base needs a Bundle of type batch or transaction', ['Bundle']);
  if (bundle.type !== 'batch' && bundle.type !== 'transaction') throw badRequest('Bundle.type must be batch or transaction', ['Bundle.type']);
  const list = bundle.entry ?? [];
  if (!Array.isArray(list)) throw badRequest('Bundle.entry must be an array', ['Bundle.entry']);
  if (list.length > maxEntries) {
    throw new FhirError(422, outcome('error', 'too-costly', `The Bundle has ${list.length} entries; this node accepts at most ${maxEntries} per Bundle`, ['Bundle.entry']));
  }
  const fullUrls = new Map<string, number>();
  const str = (o: FhirJsonObject, k: string, where: string): string | undefined => {
    const v = o[k];
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || v === '') throw badRequest(`${where}.${k} must be a non-empty string`, [`${where}.${k}`]);
    return v;
  };
  const entries = list.map((raw, index): RawEntry => {
    const where = at(index);
    if (!isJsonObject(raw)) throw badRequest(`${where} must be an object`, [where]);
    const request = raw.request;
    if (!isJsonObject(request)) throw badRequest(`${where}.request is required in a ${bundle.type} Bundle`, [`${where}.request`]);
    const method = str(request, 'method', `${where}.request`);
    if (method === undefined) throw badRequest(`${where}.request.method is required`, [`${where}.request.method`]);
    if (!METHODS.has(method)) throw badRequest(`${where}.request.method must be one of GET, HEAD, POST, PUT, PATCH, DELETE`, [`${where}.request.method`]);
    const url = str(request, 'url', `${where}.request`);
    if (url === undefined) throw badRequest(`${where}.request.url is required`, [`${where}.request.url`]);
    const fullUrl = str(raw, 'fullUrl', where);
    if (fullUrl !== undefined) {
      const prev = fullUrls.get(fullUrl);
      if (prev !== undefined) throw badRequest(`${where}.fullUrl repeats the fullUrl of Bundle.entry[${prev}]`, [`${where}.fullUrl`]);
      fullUrls.set(fullUrl, index);
    }
    const resource = raw.resource;
    if (resource !== undefined) {
      if (!isJsonObject(resource) || typeof resource.resourceType !== 'string') throw badRequest(`${where}.resource must be a FHIR resource`, [`${where}.resource`]);
      if (resource.resourceType === 'Bundle') throw badRequest(`${where}.resource is a Bundle: Bundles inside a ${bundle.type} are not supported (write them with POST/PUT [base]/Bundle)`, [`${where}.resource`]);
    }
    return {
      index,
      method: method as Method,
      url,
      fullUrl,
      resource,
      ifMatch: str(request, 'ifMatch', `${where}.request`),
      ifNoneMatch: str(request, 'ifNoneMatch', `${where}.request`),
      ifNoneExist: str(request, 'ifNoneExist', `${where}.request`),
      ifModifiedSince: str(request, 'ifModifiedSince', `${where}.request`),
    };
  });
  return { type: bundle.type, entries };
}

/** Parses `request.url`: relative (`Patient/1`, `Patient?x=y`) or absolute under the node's base. */
function parseTarget(e: RawEntry, baseUrl: string): Target {
  let url = e.url;
  if (/^[a-z][a-z0-9+.-]*:/i.test(url)) {
    if (!url.startsWith(`${baseUrl}/`) && url !== baseUrl) throw badRequest(`${at(e.index, '.request.url')} is an absolute URL outside this server`, [at(e.index, '.request.url')]);
    url = url.slice(baseUrl.length);
  }
  url = url.replace(/^\/+/, '');
  const q = url.indexOf('?');
  const path = q < 0 ? url : url.slice(0, q);
  const query = q < 0 ? '' : url.slice(q + 1);
  let segs: string[];
  try {
    segs = path.split('/').filter((s) => s !== '').map(decodeURIComponent);
  } catch {
    throw badRequest(`Malformed percent-encoding in ${at(e.index, '.request.url')}`, [at(e.index, '.request.url')]);
  }
  const t: Target = { kind: 'system', type: '', id: '', vid: '', query };
  if (segs.length === 0) return t;
  const [type, id, h, vid] = segs;
  if (type!.startsWith('$') || type!.startsWith('_') || id?.startsWith('$') || id === '_search' || (id === '_history' && segs.length === 2)) {
    throw notImplemented(`Operations, history and _search URLs are not supported inside a Bundle`);
  }
  if (!isKnownResourceType(type!)) throw new FhirError(404, outcome('error', 'not-found', `Unknown resource type ${type}`));
  t.type = type!;
  if (id === undefined) return { ...t, kind: 'type' };
  if (!FHIR_ID.test(id)) throw badRequest('Invalid resource id (FHIR ids are 1-64 of A-Z a-z 0-9 - .)', [at(e.index, '.request.url')]);
  t.id = id;
  if (h === undefined) return { ...t, kind: 'instance' };
  if (h.startsWith('$')) throw notImplemented(`Operation ${h} is not supported inside a Bundle`);
  if (h !== '_history' || segs.length > 4) throw badRequest(`${at(e.index, '.request.url')} names no FHIR interaction`, [at(e.index, '.request.url')]);
  if (vid === undefined) return { ...t, kind: 'history' };
  return { ...t, kind: 'vread', vid };
}

/** The text and media type of a PATCH entry's resource: a Binary JSON Patch or a FHIRPath Patch Parameters. */
function patchBody(e: RawEntry): { text: string; contentType: string } {
  const r = e.resource;
  if (r?.resourceType === 'Parameters') return { text: canonicalStringify(r), contentType: FHIR_JSON };
  if (r?.resourceType === 'Binary' && typeof r.contentType === 'string' && /^application\/json-patch\+json\b/i.test(r.contentType) && typeof r.data === 'string') {
    return { text: Buffer.from(r.data, 'base64').toString('utf8'), contentType: 'application/json-patch+json' };
  }
  throw badRequest('A PATCH entry carries a FHIRPath Patch Parameters resource, or a Binary with contentType application/json-patch+json and base64 data', [at(e.index, '.resource')]);
}

/** Checks an entry against its URL and says what it asks for (no identities resolved yet). */
function planEntry(e: RawEntry, baseUrl: string): Action {
  const t = parseTarget(e, baseUrl);
  const body = (): FhirJsonObject => {
    const r = e.resource;
    if (!r) throw badRequest(`${e.method} needs ${at(e.index, '.resource')}`, [at(e.index, '.resource')]);
    if (r.resourceType !== t.type) throw badRequest(`${at(e.index, '.resource')} must be a ${t.type}`, [at(e.index, '.resource.resourceType')]);
    // A private copy: reference rewriting changes it.
    return parseFhirJson(canonicalStringify(r)) as FhirJsonObject;
  };
  const needs = (ok: boolean): void => {
    if (!ok) throw badRequest(`${e.method} is not allowed on ${at(e.index, '.request.url')}`, [at(e.index, '.request.url')]);
  };
  switch (e.method) {
    case 'POST':
      needs(t.kind === 'type' && t.query === '');
      return { do: 'create', type: t.type, body: body(), ...(e.ifNoneExist !== undefined ? { ifNoneExist: criteriaQuery(t.type, e.ifNoneExist) } : {}) };
    case 'PUT':
      needs(t.kind === 'instance' || (t.kind === 'type' && t.query !== ''));
      return t.kind === 'instance' ? { do: 'update', type: t.type, id: t.id, body: body() } : { do: 'cond-update', type: t.type, query: t.query, body: body() };
    case 'PATCH':
      if (t.kind === 'type') throw notImplemented('Conditional PATCH is not supported; PATCH [type]/[id]');
      needs(t.kind === 'instance');
      return { do: 'patch', type: t.type, id: t.id, ...patchBody(e) };
    case 'DELETE':
      needs(t.kind === 'instance' || (t.kind === 'type' && t.query !== ''));
      return t.kind === 'instance' ? { do: 'delete', type: t.type, id: t.id } : { do: 'cond-delete', type: t.type, query: t.query };
    default:
      if (t.kind === 'instance') return { do: 'read', type: t.type, id: t.id, query: t.query };
      if (t.kind === 'vread') return { do: 'vread', type: t.type, id: t.id, vid: t.vid, query: t.query };
      if (t.kind === 'history') return { do: 'history', type: t.type, id: t.id, query: t.query };
      return { do: 'search', type: t.type, query: t.query };
  }
}

/**
 * Walks every string element of `value` (including `contained` resources): `fullUrls` hits are
 * replaced by `Type/id`; narrative `div` `href`/`src` attributes too; `onReference` sees every
 * other `reference` element and returns its replacement (or throws).
 */
function rewrite(value: FhirJson, path: string, fullUrls: ReadonlyMap<string, string>, onReference: (ref: string, path: string) => string): void {
  if (Array.isArray(value)) {
    value.forEach((v, i) => {
      if (typeof v === 'string') {
        const m = fullUrls.get(v);
        if (m !== undefined) value[i] = m;
      } else rewrite(v, `${path}[${i}]`, fullUrls, onReference);
    });
    return;
  }
  if (!isJsonObject(value)) return;
  for (const [k, v] of Object.entries(value)) {
    const p = `${path}.${k}`;
    if (typeof v !== 'string') {
      rewrite(v, p, fullUrls, onReference);
      continue;
    }
    const m = fullUrls.get(v);
    if (m !== undefined) value[k] = m;
    else if (k === 'reference') value[k] = onReference(v, p);
    else if (k === 'div' && fullUrls.size > 0) {
      value[k] = v.replace(/\b(href|src)="([^"]*)"/g, (all, attr: string, url: string) => {
        const to = fullUrls.get(url);
        return to === undefined ? all : `${attr}="${to}"`;
      });
    }
  }
}

/** The `_summary`/`_elements` of a read entry's URL query (subset.ts), under the Bundle's `Prefer`. */
function shapeOf(query: string, prefer: string | undefined): ReadQuery {
  return { query: parseSearchQuery(query), prefer };
}

/** Runs one planned entry on `service` (the live one for a batch, the staging one for a transaction). */
function execute(service: FhirService, a: Exclude<Action, { do: 'search' }>, e: RawEntry, req: BundleRequest, prefs: Preferences): FhirResult {
  const common = { contentType: FHIR_JSON, prefer: req.prefer, author: req.author };
  switch (a.do) {
    case 'create':
      return service.create({ ...common, type: a.type, text: canonicalStringify(a.body), ifNoneExist: a.ifNoneExist }, a.id);
    case 'existing': {
      const r = service.read(a.type, a.id);
      return applyPrefer({ ...r, status: 200 }, prefs);
    }
    case 'update':
      return service.update({ ...common, type: a.type, id: a.id, text: canonicalStringify(a.body), ifMatch: e.ifMatch, ifNoneMatch: e.ifNoneMatch });
    case 'cond-update':
      return service.conditionalUpdate({ ...common, type: a.type, query: a.query, text: canonicalStringify(a.body), ifMatch: e.ifMatch });
    case 'patch':
      return service.patch({ ...common, type: a.type, id: a.id, text: a.text, contentType: a.contentType, ifMatch: e.ifMatch });
    case 'delete':
      return service.delete(a.type, a.id, req.author, e.ifMatch, req.prefer);
    case 'cond-delete':
      return service.conditionalDelete(a.type, a.query, req.author, req.prefer);
    case 'nothing':
      return { status: 204, headers: {} };
    case 'read': {
      const since = e.ifModifiedSince === undefined ? undefined : parseHttpDate(e.ifModifiedSince, 'ifModifiedSince', true);
      return service.read(a.type, a.id, e.ifNoneMatch, since, shapeOf(a.query, req.prefer));
    }
    case 'vread':
      return service.vread(a.type, a.id, a.vid, shapeOf(a.query, req.prefer));
    case 'history':
      return service.history(a.type, a.id, req.baseUrl, shapeOf(a.query, req.prefer));
  }
}

/** The `Bundle.entry.response` (and resource) of an entry's result. */
function responseEntry(r: FhirResult, e: RawEntry, fullUrl: string | undefined): BundleEntry {
  const body = typeof r.body === 'string' ? (parseFhirJson(r.body) as FhirJsonObject) : (r.body as FhirJsonObject | undefined);
  const lastModified = r.headers['Last-Modified'];
  const isOutcome = body?.resourceType === 'OperationOutcome' && (r.status >= 300 || e.method !== 'GET');
  return {
    ...(fullUrl && r.status < 300 ? { fullUrl } : {}),
    ...(body && !isOutcome && e.method !== 'HEAD' ? { resource: body as unknown as BundleEntry['resource'] } : {}),
    response: {
      status: `${r.status} ${STATUS_TEXT[r.status] ?? ''}`.trim(),
      ...(r.headers.Location ? { location: r.headers.Location } : {}),
      ...(r.headers.ETag ? { etag: r.headers.ETag } : {}),
      ...(lastModified ? { lastModified: new Date(lastModified).toISOString() } : {}),
      ...(body && isOutcome ? { outcome: body as unknown as NonNullable<BundleEntry['response']>['outcome'] } : {}),
    },
  };
}

/**
 * A staged result with the ETag, Last-Modified, Location and body of the version the node holds
 * after the commit (a replayed write has its own HLC stamp, so `lastUpdated` may differ by a few ms).
 */
function refresh(r: FhirResult, replica: Replica, key: string): FhirResult {
  const cur = replica.current(key);
  if (!cur || r.headers.ETag === undefined || r.status >= 300) return r;
  const headers: Record<string, string> = { ...r.headers, ETag: `W/"${cur.versionId}"` };
  if (headers['Last-Modified'] !== undefined) headers['Last-Modified'] = new Date(cur.lastUpdated).toUTCString();
  if (headers.Location !== undefined) headers.Location = `${key}/_history/${cur.versionId}`;
  const isResource = typeof r.body === 'string' && cur.body !== null;
  return { ...r, headers, ...(isResource ? { body: cur.body! } : {}) };
}

/** The node's fullUrl of a result's resource, from its body or its Location. */
function fullUrlOf(r: FhirResult, baseUrl: string): string | undefined {
  const loc = r.headers.Location;
  if (loc) return `${baseUrl}/${loc.replace(/\/_history\/.*$/, '')}`;
  const body = typeof r.body === 'string' ? r.body : undefined;
  const m = body ? /^\{"resourceType":"([A-Za-z]+)","id":"([A-Za-z0-9\-.]{1,64})"/.exec(body) : null;
  return m ? `${baseUrl}/${m[1]}/${m[2]}` : undefined;
}

/** Entries in FHIR processing order (http.html#trules), stable within a method group. */
function inOrder<T extends { entry: RawEntry }>(xs: T[]): T[] {
  return [...xs].sort((a, b) => ORDER[a.entry.method]! - ORDER[b.entry.method]! || a.entry.index - b.entry.index);
}

/**
 * Answers `POST [base]` with a batch or transaction Bundle (see module doc).
 *
 * @param ctx - the node's services, staging and commit (from {@link FhirService.bundle}).
 * @param req - the request body, media type, `Prefer`, author and base URL.
 * @returns 200 with a `batch-response` or `transaction-response` Bundle, entries in request order.
 * @throws {@link FhirError} 415 media type; 400 for a body that is not a batch/transaction Bundle,
 *   an entry without `request.method`/`url`, a duplicate `fullUrl`, a nested Bundle, or a bad
 *   `Prefer`; 422 (`too-costly`) over `ctx.maxEntries` entries. For a transaction also the status
 *   of the first failing entry (400, 404, 409, 410, 412, 422, 501) with an OperationOutcome whose
 *   issues name `Bundle.entry[i]`; nothing is then written, gossiped or sent to the hospital.
 */
export async function processBundle(ctx: BundleContext, req: BundleRequest): Promise<FhirResult> {
  const prefs = parsePrefer(req.prefer);
  const { type, entries } = parseBundle(req, ctx.maxEntries);
  const entryList = type === 'transaction' ? transaction(ctx, entries, req, prefs) : await batch(ctx, entries, req, prefs);
  const bundle: Bundle = { resourceType: 'Bundle', type: type === 'transaction' ? 'transaction-response' : 'batch-response', entry: entryList };
  return { status: 200, headers: {}, body: canonicalStringify(bundle) };
}

/** Batch: each entry alone, on the live service; failures become response entries. */
async function batch(ctx: BundleContext, entries: RawEntry[], req: BundleRequest, prefs: Preferences): Promise<BundleEntry[]> {
  const out: BundleEntry[] = new Array(entries.length);
  for (const { entry: e } of inOrder(entries.map((entry) => ({ entry })))) {
    let type: string | undefined;
    try {
      const a = planEntry(e, req.baseUrl);
      type = 'type' in a ? a.type : undefined;
      if ('body' in a) {
        rewrite(a.body, at(e.index, '.resource'), new Map(), (ref, path) => {
          if (URN.test(ref)) throw badRequest(`${ref} refers to another entry: batch entries are independent (use a transaction)`, [path]);
          return resolveConditionalReference(ctx.replica, ref, path, new Set(), []);
        });
      }
      let r: FhirResult;
      if (a.do === 'search') {
        const params = parseSearchQuery(a.query);
        r = a.type === '' ? await ctx.live.searchAll(params, req.baseUrl) : await ctx.live.search(a.type, params, req.baseUrl);
      } else {
        r = execute(ctx.live, a, e, req, prefs);
      }
      out[e.index] = responseEntry(r, e, a.do === 'search' ? undefined : fullUrlOf(r, req.baseUrl));
    } catch (err) {
      const { status, outcome: oo } = toOutcome(err instanceof FhirError ? relabel(err, e, type) : err);
      out[e.index] = { response: { status: `${status} ${STATUS_TEXT[status] ?? ''}`.trim(), outcome: oo } };
    }
  }
  return out;
}

/**
 * Resolves a conditional reference `Type?criteria` (http.html#trules) to `Type/id`. Candidates:
 * the store's live resources minus `excluded` keys, plus `own` (the transaction's resources).
 * Any other reference is returned unchanged.
 * @throws {@link FhirError} 404 unknown type, 400 bad criteria, 412 no match or several.
 */
function resolveConditionalReference(replica: Replica, ref: string, path: string, excluded: ReadonlySet<string>, own: ReadonlyArray<{ key: string; body: FhirJsonObject }>): string {
  const m = CONDITIONAL_REF.exec(ref);
  if (!m) return ref;
  const [, type, query] = m as unknown as [string, string, string];
  if (!isKnownResourceType(type)) throw new FhirError(404, outcome('error', 'not-found', `Unknown resource type ${type} in a conditional reference`, [path]));
  const criteria = compileCriteria(type, query);
  const matches = new Set<string>();
  for (const id of findMatches(replica, type, query, excluded.size + 2)) if (!excluded.has(`${type}/${id}`)) matches.add(`${type}/${id}`);
  for (const o of own) if (matchesCriteria(o.body, criteria)) matches.add(o.key);
  if (matches.size !== 1) {
    throw new FhirError(412, outcome('error', matches.size === 0 ? 'not-found' : 'multiple-matches', `Conditional reference to ${type} matched ${matches.size === 0 ? 'no resource' : 'more than one resource'}`, [path]));
  }
  return [...matches][0]!;
}

/** Transaction: resolve, stage, commit (see module doc). Synchronous by design. */
function transaction(ctx: BundleContext, entries: RawEntry[], req: BundleRequest, prefs: Preferences): BundleEntry[] {
  // Steps 1–2: plan every entry and resolve identities against the store before the transaction.
  const plans: Planned[] = [];
  const fail = (e: RawEntry, err: unknown, type?: string): never => {
    throw err instanceof FhirError ? relabel(err, e, type) : err;
  };
  for (const entry of entries) {
    try {
      const action = planEntry(entry, req.baseUrl);
      if (action.do === 'search') throw notImplemented('Search inside a transaction is not supported (search is answered by the hospital server, outside the node\'s atomic step); use a batch');
      plans.push({ entry, action });
    } catch (err) {
      fail(entry, err);
    }
  }
  const changed = new Map<string, number>(); // Type/id → entry index, for every entry that changes or names a resource
  const deleted = new Set<string>();
  const claim = (p: Planned, type: string, id: string): void => {
    const key = `${type}/${id}`;
    const prev = changed.get(key);
    if (prev !== undefined) throw badRequest(`Bundle.entry[${prev}] and ${at(p.entry.index)} both change ${type}/${id}; a transaction may change a resource once`, [at(p.entry.index)]);
    changed.set(key, p.entry.index);
  };
  const live = (type: string, query: string): string[] => findMatches(ctx.replica, type, query, deleted.size + 2).filter((id) => !deleted.has(`${type}/${id}`));
  const fullUrls = new Map<string, string>();
  for (const p of inOrder(plans)) {
    const a = p.action;
    try {
      if (a.do === 'delete') {
        claim(p, a.type, a.id);
        deleted.add(`${a.type}/${a.id}`);
      } else if (a.do === 'cond-delete') {
        const ids = live(a.type, a.query);
        if (ids.length > 1) throw preconditionFailed(`The criteria matched more than one ${a.type}`);
        if (ids.length === 0) p.action = { do: 'nothing' };
        else {
          p.action = { do: 'delete', type: a.type, id: ids[0]! };
          claim(p, a.type, ids[0]!);
          deleted.add(`${a.type}/${ids[0]!}`);
        }
      } else if (a.do === 'create') {
        const ids = a.ifNoneExist !== undefined ? live(a.type, a.ifNoneExist) : [];
        if (ids.length > 1) throw preconditionFailed(`ifNoneExist matched more than one ${a.type}`);
        p.action = ids.length === 1 ? { do: 'existing', type: a.type, id: ids[0]! } : { do: 'create', type: a.type, id: randomUUID(), body: a.body };
        claim(p, a.type, (p.action as { id: string }).id);
      } else if (a.do === 'cond-update') {
        const ids = live(a.type, a.query);
        if (ids.length > 1) throw preconditionFailed(`The criteria matched more than one ${a.type}`);
        let id: string;
        if (ids.length === 1) {
          id = ids[0]!;
          if (a.body.id !== undefined && a.body.id !== id) throw badRequest('The body id does not match the resource the criteria matched', ['id']);
        } else if (typeof a.body.id === 'string') {
          if (!FHIR_ID.test(a.body.id)) throw badRequest('Invalid resource id (FHIR ids are 1-64 of A-Z a-z 0-9 - .)', ['id']);
          id = a.body.id;
          const cur = ctx.replica.current(`${a.type}/${id}`);
          if (cur && !cur.deleted && !deleted.has(`${a.type}/${id}`)) throw new FhirError(409, outcome('error', 'conflict', 'The body id names an existing resource that does not match the criteria'));
        } else {
          id = randomUUID();
        }
        a.body.id = id;
        p.action = { do: 'update', type: a.type, id, body: a.body };
        claim(p, a.type, id);
      } else if (a.do === 'update' || a.do === 'patch') {
        claim(p, a.type, a.id);
      }
      const act = p.action;
      if (p.entry.fullUrl !== undefined && 'id' in act && act.do !== 'read' && act.do !== 'vread' && act.do !== 'history') fullUrls.set(p.entry.fullUrl, `${act.type}/${act.id}`);
    } catch (err) {
      fail(p.entry, err, 'type' in a ? a.type : undefined);
    }
  }
  // Step 3: rewrite fullUrl references everywhere, then resolve conditional references.
  const own: Array<{ key: string; body: FhirJsonObject }> = [];
  for (const p of plans) {
    const a = p.action;
    const target = 'body' in a ? a.body : a.do === 'patch' && a.contentType === FHIR_JSON ? (parseFhirJson(a.text) as FhirJsonObject) : undefined;
    if (!target) continue;
    try {
      rewrite(target, at(p.entry.index, '.resource'), fullUrls, (ref, path) => {
        if (URN.test(ref)) throw badRequest(`Reference ${ref} names no entry's fullUrl in this transaction`, [path]);
        return ref;
      });
    } catch (err) {
      fail(p.entry, err, 'type' in a ? a.type : undefined);
    }
    if (a.do === 'patch') a.text = canonicalStringify(target);
    else if ((a.do === 'create' || a.do === 'update') && 'id' in a) own.push({ key: `${a.type}/${a.id!}`, body: { ...target, id: a.id! } });
  }
  // Resources this transaction deletes or replaces are matched in their new form (or not at all).
  const excluded = new Set([...deleted, ...own.map((o) => o.key)]);
  const cache = new Map<string, string>();
  for (const p of plans) {
    const a = p.action;
    const target = 'body' in a ? a.body : a.do === 'patch' && a.contentType === FHIR_JSON ? (parseFhirJson(a.text) as FhirJsonObject) : undefined;
    if (!target) continue;
    try {
      rewrite(target, at(p.entry.index, '.resource'), new Map(), (ref, path) => {
        if (!CONDITIONAL_REF.test(ref)) return ref;
        let to = cache.get(ref);
        if (to === undefined) {
          to = resolveConditionalReference(ctx.replica, ref, path, excluded, own);
          cache.set(ref, to);
        }
        return to;
      });
    } catch (err) {
      fail(p.entry, err, 'type' in a ? a.type : undefined);
    }
    if (a.do === 'patch') a.text = canonicalStringify(target);
  }
  // Step 4: stage every entry in FHIR order; the first failure ends the transaction.
  const staging = ctx.stage();
  const results = new Map<number, FhirResult>();
  for (const p of inOrder(plans)) {
    const a = p.action as Exclude<Action, { do: 'search' }>;
    try {
      results.set(p.entry.index, execute(staging.service, a, p.entry, req, prefs));
    } catch (err) {
      fail(p.entry, err, 'type' in a ? a.type : undefined);
    }
  }
  // Step 5: commit, then answer with the versions the node now holds.
  ctx.commit(staging.replica.writes);
  return plans.map((p) => {
    const a = p.action;
    const r = 'id' in a && a.do !== 'vread' && a.do !== 'history' ? refresh(results.get(p.entry.index)!, ctx.replica, `${a.type}/${a.id}`) : results.get(p.entry.index)!;
    return responseEntry(r, p.entry, fullUrlOf(r, req.baseUrl));
  });
}
