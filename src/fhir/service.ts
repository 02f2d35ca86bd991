/**
 * The FHIR REST interactions, free of HTTP framework code: each takes a parsed request and returns
 * a status, headers and a body, or throws {@link FhirError}. See https://hl7.org/fhir/R4/http.html.
 */
import { randomUUID } from 'node:crypto';
import type { Parameters, ParametersParameter } from '@medplum/fhirtypes';
import { canonicalStringify, isJsonObject, parseFhirJson, FhirJsonError } from './json.ts';
import type { FhirJsonObject } from './json.ts';
import { refersToShreddedPatient } from '../store/compartment.ts';
import { badRequest, FhirError, gone, notFound, outcome, preconditionFailed, unprocessable, unsupportedMediaType } from './outcomes.ts';
import { FHIR_ID, isKnownResourceType } from './validate.ts';
import { capabilityStatement } from './capability.ts';
import { isBlocking, ProfileRegistry, validateWithProfiles } from './profiles.ts';
import { searchSystem, searchType } from './search.ts';
import { isSubsetted, parseSubset, subsetResource } from './subset.ts';
import type { Subset } from './subset.ts';
import type { HospitalSearcher, SearchContext } from './search.ts';
import { applyPrefer, parsePrefer } from './prefer.ts';
import { criteriaQuery, findMatches } from './conditional.ts';
import { applyPatchBody, patchFormatOf } from './patch.ts';
import { validateOperation } from './validate-op.ts';
import { ifMatchVersion, parseIfNoneMatch } from './preconditions.ts';
import { DEFAULT_MAX_BUNDLE_ENTRIES, OverlayStore, processBundle, StagingReplica } from './bundle.ts';
import type { BundleRequest, StagedWrite, Staging } from './bundle.ts';
import { NoConflictError, UnknownVersionError } from '../merge/replica.ts';
import type { Replica } from '../merge/replica.ts';
import { loadMergePolicy } from '../merge/policy.ts';
import type { MergePolicy } from '../merge/policy.ts';
import type { VersionRecord } from '../store/store.ts';
import { parseStamp } from '../merge/hlc.ts';

/** What a handler answers. `body` is canonical JSON text, or an object to serialize. */
export interface FhirResult {
  status: number;
  headers: Record<string, string>;
  body?: string | object;
}

/** A write request after HTTP parsing. */
export interface WriteRequest {
  type: string;
  id?: string;
  /** Raw body text. */
  text: string;
  contentType: string | undefined;
  ifMatch?: string | undefined;
  author?: string | undefined;
  /** `If-None-Match` (only `*` on PUT: create only). */
  ifNoneMatch?: string | undefined;
  /** `If-None-Exist` on POST: conditional create criteria. */
  ifNoneExist?: string | undefined;
  /** `Prefer` header: `return=…`, `handling=strict` (see prefer.ts). */
  prefer?: string | undefined;
}

/** Options of {@link FhirService}. */
export interface FhirServiceOptions {
  /** The hospital FHIR server client; search is answered there. Without it search is 501. */
  hospital?: HospitalSearcher | undefined;
  /** Known profiles for `meta.profile` validation; default US Core + `profiles/`. */
  profiles?: ProfileRegistry;
  /**
   * The node's merge policy (the one its {@link Replica} uses); transactions stage their writes on
   * a second replica with it. Default `profiles/merge-policy.json`.
   */
  mergePolicy?: MergePolicy;
  /** Most entries in one batch or transaction Bundle; more is 422 (`too-costly`). Default 10,000. */
  maxBundleEntries?: number;
  /** `ConceptMap/$translate` is served (src/mapping `translateRouter`); listed in the CapabilityStatement. */
  translate?: boolean;
  /** SMART on FHIR authorization is on: its OAuth endpoints, advertised in `rest.security`. */
  smart?: { token?: string; authorize?: string };
  /**
   * The store's durability barrier (`ResourceStore.durable`, src/store/store.ts). The HTTP edge
   * sends an answer only after it resolves (a rejection answers 503). Absent: writes are durable
   * when `Replica.write` returns.
   */
  durable?: (() => Promise<void>) | undefined;
  /**
   * The store's crypto-shredding tombstones (`ResourceStore.isShredded`, src/store/store.ts): search
   * leaves out every resource whose `Type/id` it reports as shredded (search.ts). Absent: none is.
   */
  isShredded?: ((key: string) => boolean) | undefined;
  /**
   * Whether the node may take writes now: undefined when it may, else the reason (e.g. its node-id
   * lease was taken by another process, src/node/instance-lease.ts). While it gives a reason, every
   * write (create, update, patch, delete, conditional writes, Bundle entries) is refused with 503
   * and nothing is written; reads and searches are served.
   */
  writeGate?: (() => string | undefined) | undefined;
}

/**
 * The query of a read, vread or history that may shape the answer: `_summary` and `_elements`
 * (subset.ts, https://hl7.org/fhir/R4/search.html#summary); other parameters are ignored.
 */
export interface ReadQuery {
  /** The request's `[name, value]` parameters (search.ts `parseSearchQuery`). */
  query: ReadonlyArray<[string, string]>;
  /** The `Prefer` header: `handling=strict` makes an invalid `_summary`/`_elements` 400. */
  prefer?: string | undefined;
}

/** Called with every local Yjs update, to gossip it (src/tide). */
export type UpdateSink = (key: string, update: Uint8Array) => void;

const FHIR_MEDIA = /^application\/(fhir\+)?json\b/i;

/**
 * True when a `Prefer` header asks for `handling=strict` (https://hl7.org/fhir/R4/search.html#errors).
 * Other preferences are ignored on a search (RFC 7240 §2), so a bad `return=` is not an error here.
 */
function strictHandling(prefer: string | undefined): boolean {
  return prefer !== undefined && /(?:^|[,;])\s*handling\s*=\s*"?strict"?\s*(?:[,;]|$)/i.test(prefer);
}

/** The subset a read, vread or history asks for (subset.ts `parseSubset`); undefined: the whole resource. */
function subsetOf(type: string, shape: ReadQuery | undefined, interaction: 'read' | 'history'): Subset | undefined {
  if (shape === undefined) return undefined;
  const params = shape.query.filter(([n]) => n.startsWith('_summary') || n.startsWith('_elements'));
  return params.length === 0 ? undefined : parseSubset([type], params, strictHandling(shape.prefer), interaction).subset;
}

/** The REST interactions of one node. */
export class FhirService {
  private readonly replica: Replica;
  private readonly sink: UpdateSink;
  private readonly nodeId: string;
  private readonly hospital: HospitalSearcher | undefined;
  /** The known profiles; call `profiles.load()` to reload `profiles/`. */
  readonly profiles: ProfileRegistry;
  /** See {@link FhirServiceOptions.durable}. */
  readonly durable: (() => Promise<void>) | undefined;
  private readonly mergePolicy: MergePolicy;
  private readonly maxBundleEntries: number;
  private readonly translate: boolean;
  private readonly smart: { token?: string; authorize?: string } | undefined;
  private readonly isShredded: ((key: string) => boolean) | undefined;
  private readonly writeGate: (() => string | undefined) | undefined;

  /**
   * @param replica - the node's merge engine.
   * @param sink - receives each local update for gossip.
   * @param opts - hospital client for search, profile registry.
   */
  constructor(replica: Replica, sink: UpdateSink, opts: FhirServiceOptions = {}) {
    this.replica = replica;
    this.sink = sink;
    this.nodeId = replica.nodeId;
    this.hospital = opts.hospital;
    this.profiles = opts.profiles ?? new ProfileRegistry();
    this.durable = opts.durable;
    this.mergePolicy = opts.mergePolicy ?? loadMergePolicy();
    this.maxBundleEntries = opts.maxBundleEntries ?? DEFAULT_MAX_BUNDLE_ENTRIES;
    this.translate = opts.translate === true;
    this.smart = opts.smart;
    this.isShredded = opts.isShredded;
    this.writeGate = opts.writeGate;
    if (!Number.isInteger(this.maxBundleEntries) || this.maxBundleEntries < 1) throw new RangeError('maxBundleEntries must be a positive integer');
  }

  /**
   * POST [base] with a `batch` or `transaction` Bundle (bundle.ts; https://hl7.org/fhir/R4/http.html#transaction).
   * A transaction is staged on a {@link StagingReplica} over an {@link OverlayStore} and committed
   * only when every entry succeeded: then its writes are replayed on this node's replica (new
   * versions go to the hospital outbox through the replica's `onVersion`) and gossiped through the sink.
   * @param req - body text, media type, `Prefer`, author, base URL.
   * @returns 200 with a batch-response or transaction-response Bundle.
   * @throws {@link FhirError} see {@link processBundle}.
   */
  bundle(req: BundleRequest): Promise<FhirResult> {
    return processBundle(
      {
        live: this,
        replica: this.replica,
        maxEntries: this.maxBundleEntries,
        stage: () => this.stage(),
        commit: (writes) => this.commitStaged(writes),
      },
      req,
    );
  }

  /** A staging service: same node id, profiles and merge policy; writes stay in an overlay and are recorded, nothing is gossiped. */
  private stage(): Staging {
    const replica = new StagingReplica({ nodeId: this.nodeId, store: new OverlayStore(this.replica), policy: this.mergePolicy });
    const service = new FhirService(replica, () => {}, { profiles: this.profiles, mergePolicy: this.mergePolicy, isShredded: this.isShredded });
    return { service, replica };
  }

  /**
   * Replays staged writes on the node's replica, gossiping each update as it is made. Only a store
   * failure (disk full, I/O error) can stop it part-way; what was written is then kept and
   * gossiped, and the error is rethrown (500).
   */
  private commitStaged(writes: StagedWrite[]): void {
    this.assertWritable();
    for (const w of writes) {
      const res = this.replica.write(w.key, w.body, w.opts);
      if (res.update) this.sink(w.key, res.update);
    }
  }

  /** GET /metadata */
  metadata(baseUrl: string): FhirResult {
    return { status: 200, headers: {}, body: capabilityStatement(baseUrl, this.nodeId, { search: this.hospital !== undefined, profiles: this.profiles.byType(), translate: this.translate, ...(this.smart ? { smart: this.smart } : {}) }) };
  }

  /**
   * GET [type]/[id] — 404 unknown, 410 deleted (https://hl7.org/fhir/R4/http.html#read). Conditional
   * read (https://hl7.org/fhir/R4/http.html#cread, RFC 7232 §3.2, §3.3, §6): 304 when
   * `If-None-Match` is `*` or lists the current version's ETag, or, without `If-None-Match`, when
   * the resource was not modified after `If-Modified-Since` (compared in whole seconds, as
   * `Last-Modified` is sent).
   * @param ifNoneMatch - the `If-None-Match` value (or a Bundle entry's `request.ifNoneMatch`).
   * @param modifiedSince - `If-Modified-Since`, ms since the epoch (preconditions.ts `parseHttpDate`).
   * @param shape - `_summary` (`true|text|data|false`) and `_elements`: the answer is the
   *   resource's subset, tagged SUBSETTED (subset.ts); ETag and Last-Modified stay the version's.
   * @throws {@link FhirError} 400 for an empty or malformed `If-None-Match`, or an invalid
   *   `_summary`/`_elements` under `Prefer: handling=strict`; 404, 410.
   */
  read(type: string, id: string, ifNoneMatch?: string, modifiedSince?: number, shape?: ReadQuery): FhirResult {
    const v = this.currentOr404(type, id);
    const subset = subsetOf(type, shape, 'read');
    if (v.deleted) throw gone(`${type}/${id} was deleted (version ${v.versionId})`);
    const notModified = { status: 304, headers: { ETag: `W/"${v.versionId}"`, 'Last-Modified': new Date(v.lastUpdated).toUTCString() } };
    if (ifNoneMatch !== undefined) {
      const tags = parseIfNoneMatch(ifNoneMatch);
      if (tags === '*' || tags.includes(v.versionId)) return notModified;
    } else if (modifiedSince !== undefined && Math.floor(Date.parse(v.lastUpdated) / 1000) * 1000 <= modifiedSince) {
      return notModified;
    }
    return this.versionResult(200, v, {}, subset);
  }

  /**
   * GET [type]?… / POST [type]/_search — forwarded to the hospital server (search.ts).
   * @param prefer - the `Prefer` header: `handling=strict` makes unknown parameters 400.
   */
  async search(type: string, params: Array<[string, string]>, baseUrl: string, prefer?: string): Promise<FhirResult> {
    if (!this.hospital) throw new FhirError(501, outcome('error', 'not-supported', 'Search is not available: this node has no hospital FHIR server client'));
    return { status: 200, headers: {}, body: await searchType(this.searchContext(this.hospital), type, params, baseUrl, strictHandling(prefer)) };
  }

  /** GET [base]?_type=… — system-level search (search.ts); `prefer` as {@link search}. */
  async searchAll(params: Array<[string, string]>, baseUrl: string, prefer?: string): Promise<FhirResult> {
    if (!this.hospital) throw new FhirError(501, outcome('error', 'not-supported', 'Search is not available: this node has no hospital FHIR server client'));
    return { status: 200, headers: {}, body: await searchSystem(this.searchContext(this.hospital), params, baseUrl, strictHandling(prefer)) };
  }

  private searchContext(hospital: HospitalSearcher): SearchContext {
    return { hospital, replica: this.replica, isShredded: this.isShredded };
  }

  /** POST [type]/$validate — an OperationOutcome, 200 whether or not the resource is valid (validate-op.ts). */
  validate(type: string, text: string, contentType: string | undefined): FhirResult {
    if (!isKnownResourceType(type)) throw notFound(`Unknown resource type ${type}`);
    if (!contentType || !FHIR_MEDIA.test(contentType)) throw unsupportedMediaType('Content-Type must be application/fhir+json or application/json');
    return { status: 200, headers: {}, body: validateOperation(type, text, this.profiles) };
  }

  /**
   * GET [type]/[id]/_history/[vid] (https://hl7.org/fhir/R4/http.html#vread).
   * @param shape - `_summary`/`_elements` as {@link read}.
   * @throws {@link FhirError} 400 (bad id; invalid `_summary`/`_elements` when strict), 404, 410.
   */
  vread(type: string, id: string, vid: string, shape?: ReadQuery): FhirResult {
    this.checkTypeAndId(type, id);
    const subset = subsetOf(type, shape, 'read');
    const v = this.replica.version(`${type}/${id}`, vid);
    if (!v) throw notFound(`Version ${vid} of ${type}/${id} not found`);
    if (v.deleted) throw gone(`Version ${vid} of ${type}/${id} is a deletion`);
    return this.versionResult(200, v, {}, subset);
  }

  /**
   * GET [type]/[id]/_history — a history Bundle, newest first (https://hl7.org/fhir/R4/http.html#history).
   * @param shape - `_summary`/`_elements` as {@link read}, applied to each version's resource;
   *   `_summary=count` answers `total` and no entries.
   * @throws {@link FhirError} 400 (bad id; invalid `_summary`/`_elements` when strict), 404.
   */
  history(type: string, id: string, baseUrl: string, shape?: ReadQuery): FhirResult {
    this.currentOr404(type, id);
    const subset = subsetOf(type, shape, 'history');
    const versions = this.replica.history(`${type}/${id}`);
    const resourceOf = (body: string) => {
      const parsed = parseFhirJson(body);
      return subset === undefined || subset.kind === 'count' || !isJsonObject(parsed) ? parsed : subsetResource(parsed, subset);
    };
    // The version that created the resource (the oldest, or the first after a delete) answers 201,
    // as its create did (https://hl7.org/fhir/R4/http.html#history: the status of the interaction).
    const created = (i: number) => i === versions.length - 1 || versions[i + 1]!.deleted;
    const entry = versions.map((v, i) => ({
      fullUrl: `${baseUrl}/${type}/${id}`,
      ...(v.body ? { resource: resourceOf(v.body) } : {}),
      request: { method: v.deleted ? 'DELETE' : 'PUT', url: `${type}/${id}` },
      response: { status: v.deleted ? '204' : created(i) ? '201' : '200', etag: `W/"${v.versionId}"`, lastModified: v.lastUpdated },
    }));
    // Bodies are parsed losslessly and re-serialized canonically, so decimals keep their lexical form.
    // _summary=count: no entry element at all (FHIR forbids empty arrays).
    const bundle = { resourceType: 'Bundle', type: 'history', total: versions.length, ...(subset?.kind === 'count' ? {} : { entry }) };
    const body = canonicalStringify(bundle);
    return { status: 200, headers: {}, body };
  }

  /**
   * POST [type] — the server assigns the id (https://hl7.org/fhir/R4/http.html#create). With
   * `If-None-Exist` (https://hl7.org/fhir/R4/http.html#ccreate): no match creates, one match
   * answers 200 with that resource and writes nothing, several matches answer 412.
   * @param req - the write request.
   * @param id - the id to assign; default a new UUID. A transaction assigns ids before it applies
   *   its entries, to rewrite `urn:uuid:` references (bundle.ts).
   */
  create(req: WriteRequest, id: string = randomUUID()): FhirResult {
    const prefs = parsePrefer(req.prefer);
    const body = this.parseBody(req);
    if (req.ifMatch !== undefined) ifMatchVersion(req.ifMatch);
    if (req.ifNoneExist !== undefined) {
      const ids = findMatches(this.replica, req.type, criteriaQuery(req.type, req.ifNoneExist));
      if (ids.length > 1) throw preconditionFailed(`If-None-Exist matched more than one ${req.type}`);
      if (ids.length === 1) return applyPrefer(this.versionResult(200, this.replica.current(`${req.type}/${ids[0]}`)!), prefs);
    }
    body.id = id;
    return this.write(req.type, id, body, req, true);
  }

  /**
   * PUT [type]/[id] — update, or create with the client's id (https://hl7.org/fhir/R4/http.html#update).
   * `If-None-Match: *` makes it create-only (412 when the resource exists).
   */
  update(req: WriteRequest & { id: string }): FhirResult {
    const body = this.parseBody(req);
    if (body.id === undefined) throw badRequest('Resource id is required in the body of an update', ['id']);
    if (body.id !== req.id) throw badRequest(`Resource id ${String(body.id)} does not match the URL id ${req.id}`, ['id']);
    if (req.ifMatch !== undefined) ifMatchVersion(req.ifMatch);
    if (req.ifNoneMatch !== undefined) {
      if (req.ifNoneMatch.trim() !== '*') throw badRequest('If-None-Match on a write supports only *');
      const cur = this.replica.current(`${req.type}/${req.id}`);
      if (cur && !cur.deleted) throw preconditionFailed(`${req.type}/${req.id} exists (If-None-Match: *)`);
    }
    return this.write(req.type, req.id, body, req, false);
  }

  /**
   * PUT [type]?criteria — conditional update (https://hl7.org/fhir/R4/http.html#cond-update),
   * matched in the node's store (conditional.ts): no match creates (with the body's id, or a new
   * one; 409 when that id exists but does not match), one match updates it (a body id must be that
   * id), several matches answer 412.
   */
  conditionalUpdate(req: WriteRequest & { query: string }): FhirResult {
    const body = this.parseBody(req);
    if (req.ifMatch !== undefined) ifMatchVersion(req.ifMatch);
    const ids = findMatches(this.replica, req.type, req.query);
    if (ids.length > 1) throw preconditionFailed(`The criteria matched more than one ${req.type}`);
    let id: string;
    if (ids.length === 1) {
      id = ids[0]!;
      if (body.id !== undefined && body.id !== id) throw badRequest('The body id does not match the resource the criteria matched', ['id']);
    } else if (typeof body.id === 'string') {
      if (!FHIR_ID.test(body.id)) throw badRequest('Invalid resource id (FHIR ids are 1-64 of A-Z a-z 0-9 - .)', ['id']);
      id = body.id;
      const cur = this.replica.current(`${req.type}/${id}`);
      if (cur && !cur.deleted) throw new FhirError(409, outcome('error', 'conflict', 'The body id names an existing resource that does not match the criteria'));
    } else {
      id = randomUUID();
    }
    body.id = id;
    return this.write(req.type, id, body, req, ids.length === 0);
  }

  /**
   * PATCH [type]/[id] — JSON Patch or FHIRPath Patch (patch.ts), applied to the version named by
   * `If-Match` (else the current one) and written as a merge against that version.
   */
  patch(req: WriteRequest & { id: string }): FhirResult {
    this.checkTypeAndId(req.type, req.id);
    const format = patchFormatOf(req.contentType);
    if (!format) throw unsupportedMediaType('PATCH needs application/json-patch+json (JSON Patch) or application/fhir+json (FHIRPath Patch Parameters)');
    const key = `${req.type}/${req.id}`;
    const cur = this.replica.current(key);
    if (!cur) throw notFound(`${key} not found`);
    if (cur.deleted) throw gone(`${key} was deleted (version ${cur.versionId})`);
    let base = cur;
    if (req.ifMatch !== undefined) {
      const vid = ifMatchVersion(req.ifMatch);
      const named = this.replica.version(key, vid);
      if (!named) throw preconditionFailed(`Version ${vid} of ${key} is not known to this node`);
      if (named.deleted || !named.body) throw preconditionFailed(`Version ${vid} of ${key} is a deletion`);
      base = named;
    }
    const patched = applyPatchBody(parseFhirJson(base.body!) as FhirJsonObject, format, req.text);
    // The merge diffs against the patched version: name it, whatever meta the patch left.
    if (isJsonObject(patched.meta)) patched.meta = { ...patched.meta, versionId: base.versionId };
    return this.write(req.type, req.id, patched, { ...req, ifMatch: `W/"${base.versionId}"` }, false, req.ifMatch !== undefined);
  }

  /** DELETE [type]?criteria — conditional delete (single): 204 for none, deletes one, 412 for several. */
  conditionalDelete(type: string, query: string, author?: string, prefer?: string): FhirResult {
    if (!isKnownResourceType(type)) throw notFound(`Unknown resource type ${type}`);
    parsePrefer(prefer);
    const ids = findMatches(this.replica, type, query);
    if (ids.length > 1) throw preconditionFailed(`The criteria matched more than one ${type}`);
    if (ids.length === 0) return { status: 204, headers: {} };
    return this.delete(type, ids[0]!, author);
  }

  /**
   * DELETE [type]/[id] — 204; deleting an absent or deleted resource is also 204. With `If-Match`
   * and `Prefer: handling=strict`, 412 unless the ETag names the current version; an empty or
   * malformed `If-Match` is 400 whatever `Prefer` says (preconditions.ts).
   */
  delete(type: string, id: string, author?: string, ifMatch?: string, prefer?: string): FhirResult {
    this.checkTypeAndId(type, id);
    this.assertWritable();
    const prefs = parsePrefer(prefer);
    const key = `${type}/${id}`;
    const cur = this.replica.current(key);
    const vid = ifMatch === undefined ? undefined : ifMatchVersion(ifMatch);
    if (vid !== undefined && prefs.strict && cur?.versionId !== vid) throw preconditionFailed(`${key} is not at version ${vid} (strict If-Match)`);
    if (!cur || cur.deleted) return { status: 204, headers: {} };
    const res = this.replica.write(key, null, author ? { author } : {});
    if (res.update) this.sink(key, res.update);
    return { status: 204, headers: { ETag: `W/"${res.version.versionId}"` } };
  }

  /** GET [type]/[id]/$conflicts — a Parameters resource with one `conflict` per record. */
  conflicts(type: string, id: string): FhirResult {
    this.currentOr404(type, id);
    const records = this.replica.conflicts(`${type}/${id}`);
    const side = (prefix: string, e: { v?: string; n: string; a?: string; t: string }): ParametersParameter[] => [
      { name: `${prefix}Value`, valueString: e.v ?? '(removed)' },
      { name: `${prefix}Node`, valueString: e.n },
      ...(e.a ? [{ name: `${prefix}Author`, valueString: e.a }] : []),
      { name: `${prefix}Time`, valueInstant: new Date(parseStamp(e.t).ms).toISOString() },
    ];
    // An empty Parameters has no `parameter` element at all: FHIR forbids empty arrays.
    const params: Parameters = { resourceType: 'Parameters' };
    if (records.length > 0) params.parameter = records.map((c) => ({
        name: 'conflict',
        part: [{ name: 'path', valueString: c.path }, { name: 'kind', valueCode: c.kind }, ...side('winner', c.winner), ...side('loser', c.loser)],
      }));
    return { status: 200, headers: {}, body: params };
  }

  /**
   * `POST [type]/[id]/$resolve-conflict` — resolves the conflict records at one element path
   * (docs/merge.md, "Same-field conflicts"). The body is a Parameters resource:
   * `path` (valueString, required: a record's `path` from `$conflicts`), `choice` (valueCode
   * `winner` — keep what is shown, the default — or `loser` — take the losing value, or its
   * removal), and, when several records at `path` lost, `loserNode` (valueString) to pick one.
   * The resolution is an ordinary local write (new version, gossiped, sent to the hospital) whose
   * writer has seen every entry at `path`, so no replica keeps the record.
   * @returns 200 with the new version (honours `Prefer: return=…`).
   * @throws FhirError 404 (unknown resource, or no conflict record at `path`), 400 (body not a
   *   Parameters with a `path`, bad `choice`, ambiguous loser), 415 (not application/fhir+json).
   */
  resolveConflict(type: string, id: string, req: { text: string; contentType: string | undefined; author?: string | undefined; prefer?: string | undefined }): FhirResult {
    this.currentOr404(type, id);
    if (!req.contentType || !FHIR_MEDIA.test(req.contentType)) throw unsupportedMediaType('Content-Type must be application/fhir+json or application/json');
    let body;
    try {
      body = parseFhirJson(req.text);
    } catch (err) {
      if (err instanceof FhirJsonError) throw badRequest('Malformed JSON body');
      throw err;
    }
    if (!isJsonObject(body) || body.resourceType !== 'Parameters' || !Array.isArray(body.parameter)) throw badRequest('$resolve-conflict takes a Parameters resource with a `path` parameter');
    const param = (name: string, field: string): string | undefined => {
      const found = (body.parameter as unknown[]).filter((x) => isJsonObject(x) && x.name === name);
      if (found.length > 1) throw badRequest(`Parameter ${name} given more than once`);
      const v = found[0] && isJsonObject(found[0]) ? found[0][field] : undefined;
      if (found.length === 1 && typeof v !== 'string') throw badRequest(`Parameter ${name} must have a ${field}`);
      return v as string | undefined;
    };
    const path = param('path', 'valueString');
    if (!path) throw badRequest('Parameter path (valueString) is required: a conflict record path from $conflicts');
    const choice = param('choice', 'valueCode') ?? 'winner';
    if (choice !== 'winner' && choice !== 'loser') throw badRequest('Parameter choice must be winner or loser');
    const loserNode = param('loserNode', 'valueString');
    const key = `${type}/${id}`;
    const records = this.replica.conflicts(key).filter((c) => c.path === path && (loserNode === undefined || c.loser.n === loserNode));
    if (records.length === 0) throw notFound(`${key} has no conflict record at ${path}${loserNode ? ` lost by ${loserNode}` : ''}`);
    let value: string | null | undefined;
    if (choice === 'loser') {
      if (records.length > 1) throw badRequest(`Several values lost at ${path}: give loserNode (${records.map((c) => c.loser.n).join(', ')})`);
      value = records[0]!.loser.v ?? null;
    }
    let res;
    try {
      res = this.replica.resolveConflict(key, path, { ...(value !== undefined ? { value } : {}), ...(req.author ? { author: req.author } : {}) });
    } catch (err) {
      if (err instanceof NoConflictError) throw notFound(err.message);
      throw err;
    }
    if (res.update) this.sink(key, res.update);
    return applyPrefer(this.versionResult(200, res.version), parsePrefer(req.prefer));
  }

  /** Throws 503 (OperationOutcome `transient`) while {@link FhirServiceOptions.writeGate} gives a reason. */
  private assertWritable(): void {
    const reason = this.writeGate?.();
    if (reason !== undefined) throw new FhirError(503, outcome('error', 'transient', `This node takes no writes now: ${reason}`));
  }

  private write(type: string, id: string, body: FhirJsonObject, req: WriteRequest, isCreate: boolean, strictIfMatch = true): FhirResult {
    this.assertWritable();
    const prefs = parsePrefer(req.prefer);
    // https://hl7.org/fhir/R4/search.html#summary: a SUBSETTED resource must not overwrite a whole one (HAPI FHIR answers 422 too).
    if (isSubsetted(body)) {
      throw new FhirError(422, outcome('error', 'business-rule', 'The resource carries the SUBSETTED tag (it came from _summary or _elements): an incomplete resource cannot be stored; read it whole and write that', ['meta.tag']));
    }
    const all = validateWithProfiles(body, this.profiles);
    const issues = all.filter(isBlocking);
    if (issues.length > 0) throw unprocessable(issues);
    if (this.isShredded !== undefined && refersToShreddedPatient(body, this.isShredded)) {
      // docs/storage.md "Crypto-shredding": new data about an erased patient is not stored (nor gossiped)
      throw new FhirError(410, outcome('error', 'deleted', 'This resource refers to a patient erased on this node (crypto-shredded): it cannot be written'));
    }
    const key = `${type}/${id}`;
    let baseVersionId: string | undefined;
    if (!isCreate) {
      if (req.ifMatch !== undefined) {
        baseVersionId = ifMatchVersion(req.ifMatch);
        if (prefs.strict && strictIfMatch && this.replica.current(key)?.versionId !== baseVersionId) {
          throw preconditionFailed(`${key} is not at version ${baseVersionId} (strict If-Match)`);
        }
      } else {
        const meta = body.meta;
        if (isJsonObject(meta) && typeof meta.versionId === 'string') baseVersionId = meta.versionId;
      }
    }
    let res;
    try {
      res = this.replica.write(key, body, { ...(baseVersionId !== undefined ? { baseVersionId } : {}), ...(req.author ? { author: req.author } : {}) });
    } catch (err) {
      if (err instanceof UnknownVersionError) throw preconditionFailed(`Version ${baseVersionId} of ${key} is not known to this node`);
      throw err;
    }
    if (res.update) this.sink(key, res.update);
    const status = res.created ? 201 : 200;
    return applyPrefer(this.versionResult(status, res.version, status === 201 ? { Location: `${type}/${id}/_history/${res.version.versionId}` } : {}), prefs, all.filter((i) => !isBlocking(i)));
  }

  private versionResult(status: number, v: VersionRecord, extra: Record<string, string> = {}, subset?: Subset): FhirResult {
    let body = v.body;
    if (body && subset !== undefined && subset.kind !== 'count') body = canonicalStringify(subsetResource(parseFhirJson(body) as FhirJsonObject, subset));
    return {
      status,
      headers: { ETag: `W/"${v.versionId}"`, 'Last-Modified': new Date(v.lastUpdated).toUTCString(), ...extra },
      ...(body ? { body } : {}),
    };
  }

  private currentOr404(type: string, id: string): VersionRecord {
    this.checkTypeAndId(type, id);
    const v = this.replica.current(`${type}/${id}`);
    if (!v) throw notFound(`${type}/${id} not found`);
    return v;
  }

  private checkTypeAndId(type: string, id: string): void {
    if (!isKnownResourceType(type)) throw notFound(`Unknown resource type ${type}`);
    if (!FHIR_ID.test(id)) throw badRequest(`Invalid resource id (FHIR ids are 1-64 of A-Z a-z 0-9 - .)`);
  }

  private parseBody(req: WriteRequest): FhirJsonObject {
    if (!isKnownResourceType(req.type)) throw notFound(`Unknown resource type ${req.type}`);
    if (req.id !== undefined && !FHIR_ID.test(req.id)) throw badRequest('Invalid resource id (FHIR ids are 1-64 of A-Z a-z 0-9 - .)');
    if (!req.contentType || !FHIR_MEDIA.test(req.contentType)) throw unsupportedMediaType('Content-Type must be application/fhir+json or application/json');
    let parsed;
    try {
      parsed = parseFhirJson(req.text);
    } catch (err) {
      if (err instanceof FhirJsonError) throw badRequest('Malformed JSON body');
      throw err;
    }
    if (!isJsonObject(parsed)) throw badRequest('Body must be a JSON object (a FHIR resource)');
    if (parsed.resourceType !== req.type) throw badRequest(`Body resourceType must be ${req.type}`, ['resourceType']);
    return parsed;
  }
}
