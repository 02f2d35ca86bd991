/**
 * tidegate's client for the hospital's own FHIR R4 server (the node's downstream), over HTTP with
 * fhir-kit-client.
 *
 * The node keeps canonical resources under node ids (`Type/id`). A hospital may accept those ids
 * (update-as-create, https://hl7.org/fhir/R4/http.html#upsert) or insist on assigning its own
 * (https://hl7.org/fhir/R4/http.html#create). {@link HospitalClient} hides the difference: it keeps
 * a {@link HospitalIdMap} between node and hospital ids, rewrites `reference`s on the way out and
 * back, and always hands callers resources in node-id form.
 *
 * Precision: bodies are sent as text produced by `canonicalStringify`, so decimals leave the node
 * in their lexical form (`1.50`). fhir-kit-client parses responses with `JSON.parse`, so what comes
 * back carries the shortest round-trip form (`1.5`); results are converted to {@link FhirJson}
 * (LosslessNumber) with `toFhirJson`. Searches ({@link HospitalClient.search}, the forwarded hot
 * path) skip fhir-kit-client: one GET over node:http(s) with a keep-alive agent, the body parsed
 * once with `parseFhirJson`, so their numbers keep the hospital's lexical form.
 */
import { Client } from 'fhir-kit-client';
import type { FhirResource, RequestOptions } from 'fhir-kit-client';
import type { OperationOutcomeIssue } from '@medplum/fhirtypes';
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { canonicalStringify, isJsonObject, parseFhirJson, toFhirJson, toPlainJson } from '../fhir/json.ts';
import type { FhirJson, FhirJsonObject } from '../fhir/json.ts';
import type { Mapping } from '../mapping/index.ts';

/** Stable error codes of {@link HospitalError}. */
export type HospitalErrorCode = 'ERR_HOSPITAL_UNREACHABLE' | 'ERR_HOSPITAL_REJECTED';

/** The FHIR interaction that failed (https://hl7.org/fhir/R4/http.html). */
export type HospitalOperation = 'read' | 'update' | 'create' | 'delete' | 'search' | 'history';

/** Details carried by a {@link HospitalError}. */
export interface HospitalErrorDetails {
  /** The interaction that failed. */
  operation: HospitalOperation;
  /** HTTP status of the hospital's answer; `undefined` when there was no answer. */
  status?: number | undefined;
  /** Issues of the OperationOutcome the hospital returned (empty when it sent none). */
  issues?: readonly OperationOutcomeIssue[] | undefined;
  /** Resource type of the request, when there was one. */
  resourceType?: string | undefined;
  /** Underlying network error (never a response body). */
  cause?: unknown;
}

/** HTTP statuses that mean "try again later" rather than "the hospital refused this request". */
const TRANSIENT_STATUSES: ReadonlySet<number> = new Set([408, 429, 502, 503, 504]);

/**
 * Failure talking to a hospital FHIR server.
 *
 * - `ERR_HOSPITAL_UNREACHABLE`: no usable answer: connection refused/reset, DNS failure, timeout
 *   (`timeoutMs`), or a transient HTTP status (408, 429, 502, 503, 504; then `status` is set).
 *   Retrying later may succeed.
 * - `ERR_HOSPITAL_REJECTED`: the hospital answered and refused (any other non-2xx status, e.g.
 *   400/422 validation, 409/412 conflicts, 500), or answered with something that is not the
 *   expected FHIR JSON. `status` and the OperationOutcome `issues` are carried.
 *
 * The message names the operation, resource type, status and issue codes only; it never contains
 * resource content or ids (they may be PHI). Issue `diagnostics` are in {@link issues}, not in the
 * message.
 */
export class HospitalError extends Error {
  override readonly name = 'HospitalError';
  /** Stable machine-readable code. */
  readonly code: HospitalErrorCode;
  /** HTTP status, or `undefined` when no response was received. */
  readonly status: number | undefined;
  /** OperationOutcome issues returned by the hospital (https://hl7.org/fhir/R4/operationoutcome.html). */
  readonly issues: readonly OperationOutcomeIssue[];
  /** The interaction that failed. */
  readonly operation: HospitalOperation;
  /** Resource type involved, if any. */
  readonly resourceType: string | undefined;

  /**
   * @param code - stable error code.
   * @param message - human-readable summary without PHI.
   * @param details - operation, status, issues, resource type, cause.
   */
  constructor(code: HospitalErrorCode, message: string, details: HospitalErrorDetails) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.code = code;
    this.status = details.status;
    this.issues = details.issues ?? [];
    this.operation = details.operation;
    this.resourceType = details.resourceType;
  }
}

type Awaitable<T> = T | Promise<T>;

/**
 * Bidirectional map between node references and hospital references, both as relative
 * `Type/id` strings (https://hl7.org/fhir/R4/references.html#literal). Only ids that differ are
 * stored: an unmapped `Type/id` means "same id on both sides". Implementations may be synchronous
 * (in memory) or asynchronous (persisted); {@link HospitalClient} awaits every call. The map must
 * stay one-to-one: `set` replaces any previous pairing of either side.
 */
export interface HospitalIdMap {
  /** Hospital `Type/id` for a node `Type/id`, or `undefined` when unmapped. */
  toHospital(nodeRef: string): Awaitable<string | undefined>;
  /** Node `Type/id` for a hospital `Type/id`, or `undefined` when unmapped. */
  toNode(hospitalRef: string): Awaitable<string | undefined>;
  /** Records that node `nodeRef` is stored at the hospital as `hospitalRef` (same type). */
  set(nodeRef: string, hospitalRef: string): Awaitable<void>;
  /** Forgets the pairing of node `nodeRef`, if any. */
  delete(nodeRef: string): Awaitable<void>;
}

/** In-memory {@link HospitalIdMap}. `entries()` gives a snapshot to persist; the constructor restores one. */
export class MemoryHospitalIdMap implements HospitalIdMap {
  readonly #toHospital = new Map<string, string>();
  readonly #toNode = new Map<string, string>();

  /** @param entries - initial `[nodeRef, hospitalRef]` pairs, e.g. from {@link entries}. */
  constructor(entries: Iterable<readonly [string, string]> = []) {
    for (const [nodeRef, hospitalRef] of entries) this.set(nodeRef, hospitalRef);
  }

  /** @inheritDoc */
  toHospital(nodeRef: string): string | undefined {
    return this.#toHospital.get(nodeRef);
  }

  /** @inheritDoc */
  toNode(hospitalRef: string): string | undefined {
    return this.#toNode.get(hospitalRef);
  }

  /** @inheritDoc */
  set(nodeRef: string, hospitalRef: string): void {
    this.delete(nodeRef);
    const previousNode = this.#toNode.get(hospitalRef);
    if (previousNode !== undefined) this.#toHospital.delete(previousNode);
    this.#toHospital.set(nodeRef, hospitalRef);
    this.#toNode.set(hospitalRef, nodeRef);
  }

  /** @inheritDoc */
  delete(nodeRef: string): void {
    const hospitalRef = this.#toHospital.get(nodeRef);
    if (hospitalRef === undefined) return;
    this.#toHospital.delete(nodeRef);
    this.#toNode.delete(hospitalRef);
  }

  /** Number of stored (non-identity) pairings. */
  get size(): number {
    return this.#toHospital.size;
  }

  /** Snapshot of all pairings as `[nodeRef, hospitalRef]`. */
  entries(): Array<[string, string]> {
    return [...this.#toHospital.entries()];
  }
}

/** Options of {@link HospitalClient}. */
export interface HospitalClientOptions {
  /** FHIR base URL of the hospital, http or https, e.g. `http://127.0.0.1:8080/fhir` (trailing `/` ignored). */
  baseUrl: string;
  /** Per-HTTP-request timeout in milliseconds (default 10000). `readAll` applies it to each page. */
  timeoutMs?: number;
  /** Node ↔ hospital id map (default: a new {@link MemoryHospitalIdMap}). */
  idMap?: HospitalIdMap;
  /** `_count` used by {@link HospitalClient.readAll} and {@link HospitalClient.history} (default 1000, 1–10000). */
  pageSize?: number;
  /**
   * The node's own FHIR base URL (e.g. `http://127.0.0.1:8080/fhir`), optional. When set, absolute
   * references and Bundle `entry.fullUrl`s under it are rewritten to the hospital's base URL on the
   * way out, and those under the hospital's base URL back to it on the way in. When unset, absolute
   * references under the hospital's base become relative `Type/id` node references on the way in,
   * and `fullUrl`s are left alone.
   */
  nodeBaseUrl?: string;
  /**
   * Code translation (src/mapping, docs/mappings.md): {@link HospitalClient.upsert} writes
   * `translate(resource, 'outbound')` (target codings added, originals kept). A write a `reject`
   * map refuses fails with `ERR_HOSPITAL_REJECTED` (not retried), status undefined. Called once
   * per write: give a `LiveMapping` (src/mapping/live.ts) and each write uses the mapping in force
   * when it is made, so a reload applies from the next write on.
   */
  mapping?: Pick<Mapping, 'translate'>;
}

/** Result of {@link HospitalClient.upsert}. */
export interface HospitalUpsertResult {
  /** The id (no type) of the resource at the hospital. */
  hospitalId: string;
  /** The hospital's `meta.versionId` of the stored version (or from the `ETag`), when it said. */
  versionId?: string | undefined;
  /** The hospital's `meta.lastUpdated` of the stored version (FHIR instant), when it said. */
  lastUpdated?: string | undefined;
}

/** Options of {@link HospitalClient.history}. */
export interface HospitalHistoryOptions {
  /** FHIR instant: only versions at or after it (`_since`, https://hl7.org/fhir/R4/http.html#history); all when absent. */
  since?: string | undefined;
  /** Resource type for type-level history (`GET [type]/_history`); system level (`GET _history`) when absent. */
  type?: string | undefined;
}

/** One version in the hospital's history, in node-id form (see {@link HospitalClient.history}). */
export interface HospitalHistoryEntry {
  /** Node `Type/id` of the resource. */
  ref: string;
  /** Hospital `Type/id` of the resource. */
  hospitalRef: string;
  /** The hospital's version id (`meta.versionId`, else the entry's `response.etag`); `undefined` when it gave none. */
  versionId: string | undefined;
  /** When the version was made (FHIR instant, from `meta.lastUpdated` or `response.lastModified`); `undefined` when unknown. */
  lastUpdated: string | undefined;
  /** True for a deletion (`request.method` `DELETE`, or no resource and status 204/410). */
  deleted: boolean;
  /** The version in node-id form; `undefined` for a deletion. Numbers are LosslessNumber. */
  resource: FhirJsonObject | undefined;
}

/** Result of {@link HospitalClient.history}. */
export interface HospitalHistory {
  /** Versions in the order the hospital gave them (FHIR: newest first), every page concatenated. */
  entries: HospitalHistoryEntry[];
  /** The hospital's clock at the first page (HTTP `Date`, ISO 8601), when it sent one. */
  serverDate: string | undefined;
}

/** A resource as accepted by {@link HospitalClient}: FHIR JSON (LosslessNumber numbers) or plain JS. */
export type HospitalResourceInput = FhirJsonObject | { readonly resourceType: string; readonly id?: string; readonly [key: string]: unknown };

/** Search parameters (https://hl7.org/fhir/R4/search.html); repeated parameters as arrays. */
export type HospitalSearchParams = Readonly<Record<string, string | readonly string[]>>;

/** Options of {@link HospitalClient.search}. */
export interface HospitalSearchOptions {
  /**
   * Called with the node `Type/id` of each entry's resource; `true` means the caller holds that
   * resource and will replace it, so the entry's `resource` comes back as the stub
   * `{ resourceType, id }` (node id) without converting the hospital's copy.
   */
  held?: (nodeRef: string) => boolean;
}

/** Options of {@link comparableForm}. */
export interface ComparableFormOptions {
  /**
   * Rewrite every number in the shortest round-trip form that a `JSON.parse`-based server
   * returns (`1.50` → `1.5`, `1e2` → `100`). Use when comparing the node's lexical form with what
   * a hospital gives back; leave off (default) to compare hospitals with each other.
   */
  normalizeNumbers?: boolean;
}

/**
 * `meta` elements that servers manage and that differ between two servers holding the same
 * content: FHIR's `versionId`/`lastUpdated` (https://hl7.org/fhir/R4/resource.html#Meta) and the
 * fields Medplum adds to `Meta` (`author`, `onBehalfOf`, `project`, `account`, `accounts`,
 * `compartment`, `deleted`; see @medplum/fhirtypes `Meta`).
 */
export const SERVER_MANAGED_META_FIELDS: readonly string[] = Object.freeze([
  'versionId',
  'lastUpdated',
  'author',
  'onBehalfOf',
  'project',
  'account',
  'accounts',
  'compartment',
  'deleted',
]);

const TYPE_RE = /^[A-Z][A-Za-z]{1,63}$/;
/** FHIR `id` (https://hl7.org/fhir/R4/datatypes.html#id). */
const ID_RE = /^(?!\.+$)[A-Za-z0-9\-.]{1,64}$/; // dot-only ids are URL dot-segments: refused
/** Relative literal reference `Type/id`, optionally versioned. */
const REF_RE = /^([A-Z][A-Za-z]{1,63})\/([A-Za-z0-9\-.]{1,64})(\/_history\/[A-Za-z0-9\-.]{1,64})?$/;
/** `Location` of a created resource: `…/Type/id[/_history/vid]`. */
const LOCATION_RE = /\/([A-Z][A-Za-z]{1,63})\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[^/]+)?\/?$/;
/** PUT failures after which a resource without a known hospital id is created with POST instead. */
const CREATE_FALLBACK_STATUSES: ReadonlySet<number> = new Set([400, 404, 405, 410, 422, 501]);
/** Removed pairings remembered by `HospitalClient.remove` for `nodeRefOf`. */
const REMOVED_KEPT = 100_000;
/** PUT failures on a mapped hospital id meaning the hospital copy is gone: recreate with POST. */
const GONE_STATUSES: ReadonlySet<number> = new Set([404, 410]);

/**
 * Client for one hospital FHIR R4 server, built on fhir-kit-client over HTTP(S).
 *
 * All methods take and return node ids; the {@link HospitalIdMap} translates. Every resource
 * returned is {@link FhirJson} (numbers as LosslessNumber) in node-id form. Concurrent
 * `upsert`/`remove` calls for the same `Type/id` are serialized.
 */
export class HospitalClient {
  /** Normalized base URL (no trailing slash). */
  readonly baseUrl: string;
  /** Per-request timeout in ms. */
  readonly timeoutMs: number;
  /** `_count` of `readAll`. */
  readonly pageSize: number;
  /** The id map in use. */
  readonly idMap: HospitalIdMap;
  /** The node's base URL used for absolute references, if configured (no trailing slash). */
  readonly nodeBaseUrl: string | undefined;
  readonly #fhir: Client;
  readonly #origin: URL;
  /** Keep-alive agent of the search GETs ({@link httpGet}); default CAs (and `NODE_EXTRA_CA_CERTS`) for https. */
  readonly #agent: http.Agent;
  /** Set once a PUT with a client id failed and a POST then succeeded: the server assigns ids. */
  #assignsOwnIds = false;
  /** Set once a PUT with a new node id was accepted under that id: the server takes client ids. */
  #acceptsClientIds = false;
  /** Pairings forgotten by `remove` (hospital ref → node ref), so history of deleted resources still maps; bounded. */
  readonly #removed = new Map<string, string>();
  readonly #queues = new Map<string, Promise<void>>();
  readonly #mapping: Pick<Mapping, 'translate'> | undefined;

  /**
   * @param options - base URL, timeout (ms), id map, page size.
   * @throws TypeError when `baseUrl` is not an absolute http(s) URL, or `timeoutMs`/`pageSize` is out of range.
   */
  constructor(options: HospitalClientOptions) {
    let url: URL;
    try {
      url = new URL(options.baseUrl);
    } catch {
      throw new TypeError('HospitalClient: baseUrl is not an absolute URL');
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new TypeError('HospitalClient: baseUrl must be http or https');
    }
    const timeoutMs = options.timeoutMs ?? 10_000;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new TypeError('HospitalClient: timeoutMs must be > 0');
    const pageSize = options.pageSize ?? 1000;
    if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > 10_000) {
      throw new TypeError('HospitalClient: pageSize must be an integer in 1..10000');
    }
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.#origin = url;
    this.timeoutMs = timeoutMs;
    this.pageSize = pageSize;
    this.idMap = options.idMap ?? new MemoryHospitalIdMap();
    this.nodeBaseUrl = options.nodeBaseUrl?.replace(/\/+$/, '');
    this.#fhir = new Client({ baseUrl: this.baseUrl });
    this.#agent = url.protocol === 'https:' ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
    this.#mapping = options.mapping;
  }

  /**
   * What this client has learnt about the hospital's ids: `true` once a PUT with a node id was
   * refused and a POST then succeeded (the server assigns its own ids, so references to resources
   * not written yet cannot be mapped), `false` once a PUT with a node id the map did not know was
   * stored under that id (the server takes client ids), `undefined` before either happened.
   */
  get assignsOwnIds(): boolean | undefined {
    return this.#assignsOwnIds ? true : this.#acceptsClientIds ? false : undefined;
  }

  /**
   * Writes the node's canonical resource to the hospital and returns the id it has there.
   *
   * Known hospital id: `PUT Type/{hospitalId}` (https://hl7.org/fhir/R4/http.html#update); if the
   * hospital copy is gone (404/410) it is recreated with POST. Unknown: `PUT Type/{nodeId}`
   * (update-as-create, https://hl7.org/fhir/R4/http.html#upsert); if the server refuses
   * (400, 404, 405, 410, 422, 501) the resource is created with `POST Type` without an id
   * (https://hl7.org/fhir/R4/http.html#create) and the server's id is remembered; later new
   * resources go straight to POST. A PUT answered with a different id is remembered too. Ids and
   * references are rewritten to hospital ids first, see {@link toHospitalForm} (also inside
   * `contained` resources and Bundles). Reference targets should be upserted before the resources
   * pointing at them. The body is sent as `application/fhir+json` text from `canonicalStringify`,
   * so decimals keep their lexical form.
   *
   * @param resource - a resource with `resourceType` and `id` (node id).
   * @returns `{ hospitalId, versionId, lastUpdated }`: the id (no type) of the resource at the
   *   hospital, and the hospital's version id and time of the stored version when it returned them.
   * @throws TypeError (as a rejection) when `resourceType` or `id` is missing or not a valid FHIR type/id.
   * @throws HospitalError `ERR_HOSPITAL_REJECTED` (e.g. 400 validation, with issues; or a code map with
   *   `unmapped: reject` refused it, see {@link HospitalClientOptions.mapping}) or `ERR_HOSPITAL_UNREACHABLE`.
   *   When both the PUT and the fallback POST are refused and the PUT said 400/422, the PUT's error is thrown.
   */
  async upsert(resource: HospitalResourceInput): Promise<HospitalUpsertResult> {
    const node = toFhirJson(resource);
    if (!isJsonObject(node)) throw new TypeError('upsert: resource must be an object');
    const type = node['resourceType'];
    const id = node['id'];
    if (typeof type !== 'string' || !TYPE_RE.test(type)) throw new TypeError('upsert: invalid resourceType');
    if (typeof id !== 'string' || !ID_RE.test(id)) throw new TypeError('upsert: missing or invalid id');
    let out = node;
    if (this.#mapping !== undefined) {
      try {
        out = this.#mapping.translate(node, 'outbound').resource;
      } catch (err) {
        if ((err as { code?: unknown }).code !== 'ERR_MAPPING_UNMAPPED_CODE') throw err;
        throw new HospitalError('ERR_HOSPITAL_REJECTED', `Code mapping refused the write of ${type} (unmapped: reject)`, { operation: 'update', resourceType: type, cause: err });
      }
    }
    return this.#serialized(`${type}/${id}`, () => this.#upsert(type, id, out));
  }

  /**
   * Reads a resource by node id (https://hl7.org/fhir/R4/http.html#read).
   *
   * @param type - resource type, e.g. `Patient`.
   * @param id - node id.
   * @returns The resource in node-id form, or `undefined` when the hospital answers 404/410 or does not hold it.
   * @throws TypeError (as a rejection) for an invalid type or id.
   * @throws HospitalError `ERR_HOSPITAL_REJECTED` / `ERR_HOSPITAL_UNREACHABLE`.
   */
  async read(type: string, id: string): Promise<FhirJsonObject | undefined> {
    assertTypeAndId(type, id);
    const hospitalRef = await this.#hospitalRefOf(`${type}/${id}`);
    if (hospitalRef === undefined) return undefined;
    let raw: FhirResource;
    try {
      raw = await this.#request('read', type, hospitalRef, 'GET');
    } catch (err) {
      if (err instanceof HospitalError && err.code === 'ERR_HOSPITAL_REJECTED' && GONE_STATUSES.has(err.status ?? 0)) {
        return undefined;
      }
      throw err;
    }
    const resource = expectResource(raw, type, 'read');
    const [nodeForm] = await this.#toNodeForms([resource]);
    return nodeForm?.['id'] === id ? nodeForm : undefined;
  }

  /**
   * Deletes a resource by node id (https://hl7.org/fhir/R4/http.html#delete) and forgets its id
   * mapping. Idempotent: 404/410 from the hospital count as success. The client still remembers
   * the pairing, in memory, for {@link nodeRefOf} (the hospital's history of the deleted resource
   * keeps naming the hospital id), for the last 100 000 removed resources.
   *
   * @param type - resource type.
   * @param id - node id.
   * @throws TypeError (as a rejection) for an invalid type or id.
   * @throws HospitalError `ERR_HOSPITAL_REJECTED` (e.g. 409 referential integrity) / `ERR_HOSPITAL_UNREACHABLE`.
   */
  async remove(type: string, id: string): Promise<void> {
    assertTypeAndId(type, id);
    const nodeRef = `${type}/${id}`;
    return this.#serialized(nodeRef, async () => {
      const hospitalRef = await this.#hospitalRefOf(nodeRef);
      if (hospitalRef === undefined) return;
      try {
        await this.#request('delete', type, hospitalRef, 'DELETE');
      } catch (err) {
        if (!(err instanceof HospitalError && err.code === 'ERR_HOSPITAL_REJECTED' && GONE_STATUSES.has(err.status ?? 0))) {
          throw err;
        }
      }
      if (hospitalRef !== nodeRef) {
        this.#removed.delete(hospitalRef);
        this.#removed.set(hospitalRef, nodeRef);
        if (this.#removed.size > REMOVED_KEPT) this.#removed.delete(this.#removed.keys().next().value!);
      }
      await this.idMap.delete(nodeRef);
    });
  }

  /**
   * Type-level search, one page (https://hl7.org/fhir/R4/http.html#search). Parameter values that
   * are exactly `Type/id`, and the ids of `_id`, are translated to hospital ids; everything else is
   * sent verbatim. Resources in `entry[].resource` are returned in node-id form; `fullUrl` and
   * `link` are the hospital's.
   *
   * With {@link HospitalSearchOptions.held}, an entry whose resource the caller already holds
   * comes back as a stub `{ resourceType, id }` (node id) that the caller replaces: its hospital
   * copy is neither converted to {@link FhirJson} nor walked for references (the search hot path,
   * src/fhir/search.ts).
   *
   * @param type - resource type.
   * @param params - search parameters (default none).
   * @param options - see {@link HospitalSearchOptions}.
   * @returns The searchset Bundle.
   * @throws TypeError (as a rejection) for an invalid type.
   * @throws HospitalError `ERR_HOSPITAL_REJECTED` (e.g. unknown parameter) / `ERR_HOSPITAL_UNREACHABLE`.
   */
  async search(type: string, params: HospitalSearchParams = {}, options: HospitalSearchOptions = {}): Promise<FhirJsonObject> {
    assertType(type);
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      for (const v of typeof value === 'string' ? [value] : value) {
        query.append(name, await this.#searchValueToHospital(type, name, v));
      }
    }
    const qs = query.toString();
    const { status, data: bundle } = await this.#getJson('search', type, qs ? `${type}?${qs}` : type);
    if (!isJsonObject(bundle) || bundle['resourceType'] !== 'Bundle') throw notABundle(status);
    // The body was parsed losslessly into a fresh copy owned here: held entries become stubs, the
    // other resources are only walked for references (the costly part is converting them).
    const entries = bundle['entry'];
    if (!Array.isArray(entries)) return bundle;
    const pending: Array<{ entry: FhirJsonObject; resource: FhirJsonObject }> = [];
    for (const entry of entries) {
      if (!isJsonObject(entry)) continue;
      const r = entry['resource'];
      if (!isJsonObject(r)) continue;
      if (options.held !== undefined && typeof r['resourceType'] === 'string' && typeof r['id'] === 'string') {
        const hospitalRef = `${r['resourceType']}/${r['id']}`;
        const pendingRef = this.idMap.toNode(hospitalRef);
        const nodeRef = (pendingRef instanceof Promise ? await pendingRef : pendingRef) ?? this.#removed.get(hospitalRef) ?? hospitalRef;
        if (options.held(nodeRef)) {
          entry['resource'] = { resourceType: r['resourceType'], id: nodeRef.slice(r['resourceType'].length + 1) };
          continue;
        }
      }
      pending.push({ entry, resource: r });
    }
    const converted = await this.#toNodeForms(pending.map((p) => p.resource));
    pending.forEach((p, i) => {
      p.entry['resource'] = converted[i]!;
    });
    return bundle;
  }

  /**
   * Reads every resource of the given types: `GET Type?_count={pageSize}` and then each `next`
   * link (https://hl7.org/fhir/R4/http.html#paging). `next` links are followed on this client's
   * scheme/host/port only (a server behind a proxy may advertise its internal host). Only
   * `search.mode` `match` entries are kept; duplicates across pages are dropped.
   *
   * @param types - resource types, e.g. `['Patient', 'Observation']`.
   * @returns Resources in node-id form, grouped in the order of `types`, each group sorted by id (UTF-16 code units).
   * @throws TypeError (as a rejection) for an invalid type.
   * @throws HospitalError `ERR_HOSPITAL_UNREACHABLE` / `ERR_HOSPITAL_REJECTED` (also when paging repeats a page).
   */
  async readAll(types: readonly string[]): Promise<FhirJsonObject[]> {
    types.forEach(assertType);
    const out: FhirJsonObject[] = [];
    for (const type of types) {
      const byRef = new Map<string, FhirJsonObject>();
      const seen = new Set<string>();
      let next: string | undefined = `${type}?_count=${this.pageSize}`;
      while (next !== undefined) {
        if (seen.has(next)) {
          throw new HospitalError('ERR_HOSPITAL_REJECTED', `Hospital search paging loops for ${type}`, {
            operation: 'search',
            resourceType: type,
          });
        }
        seen.add(next);
        const bundle = expectBundle(await this.#request('search', type, next, 'GET'));
        for (const entry of Array.isArray(bundle['entry']) ? bundle['entry'] : []) {
          if (!isJsonObject(entry) || !isJsonObject(entry['resource'])) continue;
          const mode = isJsonObject(entry['search']) ? entry['search']['mode'] : undefined;
          if (mode !== undefined && mode !== 'match') continue;
          const r = entry['resource'];
          if (r['resourceType'] !== type || typeof r['id'] !== 'string') continue;
          byRef.set(r['id'], r);
        }
        next = this.#nextLink(bundle);
      }
      const converted = await this.#toNodeForms([...byRef.values()]);
      converted.sort((a, b) => compareIds(a['id'], b['id']));
      out.push(...converted);
    }
    return out;
  }

  /**
   * The hospital's history (https://hl7.org/fhir/R4/http.html#history): `GET _history` (system
   * level) or `GET [type]/_history`, with `_since` and `_count={pageSize}`, following every `next`
   * link (pinned to this client's scheme/host/port, like {@link readAll}). Bodies are parsed
   * losslessly. Each version is returned in node-id form: its node `Type/id` comes from
   * {@link nodeRefOf} (so a resource created directly at the hospital gets a node id), and the
   * resource body goes through {@link toNodeForm}. Entries without a resource type and id (neither
   * in the resource nor in `request.url`/`fullUrl`) are skipped.
   *
   * @param options - `since` (FHIR instant) and `type`; see {@link HospitalHistoryOptions}.
   * @returns The versions, newest first as the hospital ordered them, and the hospital's `Date`.
   * @throws TypeError (as a rejection) for an invalid type or a `since` that is not an instant.
   * @throws HospitalError `ERR_HOSPITAL_UNREACHABLE` (network, timeout of `timeoutMs` per page,
   *   408/429/502/503/504) or `ERR_HOSPITAL_REJECTED` (e.g. 404 when the server has no history at
   *   that level, a body that is not a Bundle, or paging that loops); operation `history`.
   */
  async history(options: HospitalHistoryOptions = {}): Promise<HospitalHistory> {
    if (options.type !== undefined) assertType(options.type);
    if (options.since !== undefined && Number.isNaN(Date.parse(options.since))) throw new TypeError('history: since must be a FHIR instant');
    const query = new URLSearchParams();
    if (options.since !== undefined) query.set('_since', options.since);
    query.set('_count', String(this.pageSize));
    let next: string | undefined = `${this.baseUrl}/${options.type === undefined ? '' : `${options.type}/`}_history?${query.toString()}`;
    const what = options.type ?? 'system';
    const seen = new Set<string>();
    const raw: FhirJsonObject[] = [];
    let serverDate: string | undefined;
    while (next !== undefined) {
      if (seen.has(next)) throw new HospitalError('ERR_HOSPITAL_REJECTED', `Hospital history paging loops for ${what}`, { operation: 'history', resourceType: what });
      seen.add(next);
      const { bundle, date } = await this.#getBundle(next, what);
      serverDate ??= date;
      for (const entry of Array.isArray(bundle['entry']) ? bundle['entry'] : []) if (isJsonObject(entry)) raw.push(entry);
      next = this.#nextLink(bundle);
    }
    const entries: HospitalHistoryEntry[] = [];
    for (const entry of raw) {
      const parsed = parseHistoryEntry(entry);
      if (parsed === undefined) continue;
      const ref = await this.nodeRefOf(parsed.hospitalRef);
      let resource: FhirJsonObject | undefined;
      if (parsed.resource !== undefined) {
        resource = await this.toNodeForm(parsed.resource);
        resource['id'] = ref.slice(ref.indexOf('/') + 1);
      }
      entries.push({ ref, hospitalRef: parsed.hospitalRef, versionId: parsed.versionId, lastUpdated: parsed.lastUpdated, deleted: parsed.deleted, resource });
    }
    return { entries, serverDate };
  }

  /**
   * The node `Type/id` for a hospital `Type/id`: the mapped one; else the one it had before
   * {@link remove} forgot the pairing; else the same `Type/id` when no other node resource is
   * stored at the hospital under a different id while holding that node id; else a new node id (a
   * UUID) that is recorded in the id map. The last case only arises when a hospital that assigns
   * its own ids hands out an id the node already uses for another resource.
   *
   * @param hospitalRef - hospital `Type/id`.
   * @returns Node `Type/id` of the same type.
   * @throws TypeError (as a rejection) when `hospitalRef` is not `Type/id`.
   */
  async nodeRefOf(hospitalRef: string): Promise<string> {
    const m = REF_RE.exec(hospitalRef);
    if (m === null || m[3] !== undefined) throw new TypeError('nodeRefOf: expected Type/id');
    const mapped = await this.idMap.toNode(hospitalRef);
    if (mapped !== undefined) return mapped;
    const removed = this.#removed.get(hospitalRef);
    if (removed !== undefined) return removed;
    const elsewhere = await this.idMap.toHospital(hospitalRef);
    if (elsewhere === undefined || elsewhere === hospitalRef) return hospitalRef;
    const fresh = `${m[1]}/${randomUUID()}`;
    await this.idMap.set(fresh, hospitalRef);
    return fresh;
  }

  /**
   * Copy of a node-form resource in hospital-id form, as {@link upsert} sends it (the top-level
   * `id` is left as given). Rewritten, at any depth (also inside `contained` resources and the
   * entries of a Bundle, and Bundles inside those): every `reference` of form `Type/id[/_history/v]`
   * and, when {@link HospitalClientOptions.nodeBaseUrl} is set, absolute ones under it; in every
   * Bundle entry `request.url` (`Type/id…`), `fullUrl` (when under `nodeBaseUrl`) and the entry
   * resource's `id`. `#contained`, `urn:` and other absolute references, contained resources' own
   * ids and version suffixes are kept. Unmapped ids stay as they are.
   *
   * @param resource - a resource, FHIR JSON or plain JS (not modified).
   * @returns A new object in hospital-id form.
   * @throws TypeError when `resource` is not a JSON object.
   */
  async toHospitalForm(resource: HospitalResourceInput): Promise<FhirJsonObject> {
    const value = toFhirJson(resource);
    if (!isJsonObject(value)) throw new TypeError('toHospitalForm: resource must be an object');
    const bases: RewriteBases = { from: this.nodeBaseUrl, to: this.baseUrl };
    const refs = new Set<string>();
    collectRefs(value, refs, bases.from);
    const table = new Map<string, string>();
    for (const ref of refs) {
      const mapped = await this.idMap.toHospital(ref);
      if (mapped !== undefined) table.set(ref, mapped);
    }
    return rewriteRefs(value, table, bases) as FhirJsonObject;
  }

  /**
   * Copy of a hospital-form resource in node-id form: the reverse of {@link toHospitalForm}, plus
   * the top-level `id` when it is mapped. Absolute references under the hospital's base URL become
   * references under `nodeBaseUrl` when it is set, else relative `Type/id`; `fullUrl`s under the
   * hospital's base URL are rewritten only when `nodeBaseUrl` is set.
   *
   * @param resource - a resource, FHIR JSON or plain JS (not modified).
   * @returns A new object in node-id form.
   * @throws TypeError when `resource` is not a JSON object.
   */
  async toNodeForm(resource: HospitalResourceInput): Promise<FhirJsonObject> {
    const value = toFhirJson(resource);
    if (!isJsonObject(value)) throw new TypeError('toNodeForm: resource must be an object');
    const [out] = await this.#toNodeForms([value]);
    return out!;
  }

  /**
   * Same as the module function {@link comparableForm}.
   *
   * @param resource - a resource.
   * @param options - see {@link ComparableFormOptions}.
   * @returns Canonical text without server-managed meta.
   */
  comparableForm(resource: HospitalResourceInput, options?: ComparableFormOptions): string {
    return comparableForm(resource, options);
  }

  async #upsert(type: string, id: string, node: FhirJsonObject): Promise<HospitalUpsertResult> {
    const nodeRef = `${type}/${id}`;
    const mapped = await this.idMap.toHospital(nodeRef);
    // Without a mapping the node id is used at the hospital, unless another node resource holds it there.
    const claimedBy = mapped === undefined ? await this.idMap.toNode(nodeRef) : undefined;
    const target = mapped ?? (claimedBy === undefined || claimedBy === nodeRef ? nodeRef : undefined);
    const tryPut = target !== undefined && (mapped !== undefined || !this.#assignsOwnIds);
    let putError: HospitalError | undefined;
    if (tryPut) {
      const hospitalId = target.slice(type.length + 1);
      const body = await this.#toHospitalForm(node, hospitalId);
      try {
        const res = await this.#request('update', type, target, 'PUT', canonicalStringify(body));
        const gotId = createdIdOf(res, type) ?? hospitalId;
        if (mapped === undefined && gotId === hospitalId) this.#acceptsClientIds = true;
        await this.#remember(nodeRef, `${type}/${gotId}`);
        return { hospitalId: gotId, ...storedVersionOf(res, type) };
      } catch (err) {
        const fallback = mapped !== undefined ? GONE_STATUSES : CREATE_FALLBACK_STATUSES;
        if (!(err instanceof HospitalError && err.code === 'ERR_HOSPITAL_REJECTED' && fallback.has(err.status ?? 0))) {
          throw err;
        }
        putError = err;
      }
    }
    const body = await this.#toHospitalForm(node, undefined);
    let res: FhirResource;
    try {
      res = await this.#request('create', type, type, 'POST', canonicalStringify(body));
    } catch (err) {
      // Both refused: when the PUT already complained about the content (400/422), that is the
      // more useful answer; a 404/405/410/501 PUT only said "no client ids", so report the POST.
      const contentComplaint = putError?.status === 400 || putError?.status === 422;
      if (putError && contentComplaint && err instanceof HospitalError && err.code === 'ERR_HOSPITAL_REJECTED') {
        throw putError;
      }
      throw err;
    }
    const newId = createdIdOf(res, type);
    if (newId === undefined) {
      throw new HospitalError('ERR_HOSPITAL_REJECTED', `Hospital create of ${type} returned no id`, {
        operation: 'create',
        resourceType: type,
        status: Client.httpFor(res).response?.status,
      });
    }
    if (tryPut && mapped === undefined) this.#assignsOwnIds = true;
    await this.#remember(nodeRef, `${type}/${newId}`);
    return { hospitalId: newId, ...storedVersionOf(res, type) };
  }

  async #remember(nodeRef: string, hospitalRef: string): Promise<void> {
    if (hospitalRef === nodeRef) await this.idMap.delete(nodeRef);
    else await this.idMap.set(nodeRef, hospitalRef);
  }

  /** Hospital `Type/id` of a node ref, or `undefined` when the hospital cannot hold it under that ref. */
  async #hospitalRefOf(nodeRef: string): Promise<string | undefined> {
    const mapped = await this.idMap.toHospital(nodeRef);
    if (mapped !== undefined) return mapped;
    const claimedBy = await this.idMap.toNode(nodeRef);
    return claimedBy === undefined || claimedBy === nodeRef ? nodeRef : undefined;
  }

  async #searchValueToHospital(type: string, name: string, value: string): Promise<string> {
    if (name === '_id') {
      const ids = await Promise.all(
        value.split(',').map(async (v) => {
          if (!ID_RE.test(v)) return v;
          const mapped = await this.idMap.toHospital(`${type}/${v}`);
          return mapped === undefined ? v : mapped.slice(type.length + 1);
        }),
      );
      return ids.join(',');
    }
    const m = REF_RE.exec(value);
    if (m === null || m[3] !== undefined) return value;
    return (await this.idMap.toHospital(value)) ?? value;
  }

  /** Copy of `node` with references in hospital ids and `id` set (or removed when `undefined`). */
  async #toHospitalForm(node: FhirJsonObject, hospitalId: string | undefined): Promise<FhirJsonObject> {
    const out = await this.toHospitalForm(node);
    if (hospitalId === undefined) delete out['id'];
    else out['id'] = hospitalId;
    return out;
  }

  /**
   * Converts hospital resources to node-id form (id and references). The inputs must be fresh
   * copies owned by the caller (every caller passes the output of `toFhirJson`): when nothing in
   * them needs rewriting (no mapped id, no absolute reference or `fullUrl` under the hospital's
   * base, the common case of a hospital that takes the node's ids) they are returned as they are,
   * without a second deep copy; this is the search and read hot path.
   */
  async #toNodeForms(resources: readonly FhirJsonObject[]): Promise<FhirJsonObject[]> {
    const bases: RewriteBases = { from: this.baseUrl, to: this.nodeBaseUrl };
    const refs = new Set<string>();
    const seen = { absolute: false };
    for (const r of resources) {
      collectRefs(r, refs, bases.from, seen);
      if (typeof r['resourceType'] === 'string' && typeof r['id'] === 'string') refs.add(`${r['resourceType']}/${r['id']}`);
    }
    const table = new Map<string, string>();
    for (const ref of refs) {
      const pending = this.idMap.toNode(ref);
      // Synchronous maps (the in-memory one) answer without a microtask turn per reference.
      const mapped = (pending instanceof Promise ? await pending : pending) ?? this.#removed.get(ref);
      if (mapped !== undefined) table.set(ref, mapped);
    }
    if (table.size === 0 && !seen.absolute) return [...resources];
    return resources.map((r) => {
      const out = rewriteRefs(r, table, bases) as FhirJsonObject;
      if (typeof r['resourceType'] === 'string' && typeof r['id'] === 'string') {
        const nodeRef = table.get(`${r['resourceType']}/${r['id']}`);
        if (nodeRef !== undefined) out['id'] = nodeRef.slice(r['resourceType'].length + 1);
      }
      return out;
    });
  }

  /** The bundle's `next` link, pinned to this client's scheme/host/port. */
  #nextLink(bundle: FhirJsonObject): string | undefined {
    const links = Array.isArray(bundle['link']) ? bundle['link'] : [];
    const next = links.find((l) => isJsonObject(l) && l['relation'] === 'next');
    if (!isJsonObject(next) || typeof next['url'] !== 'string' || next['url'] === '') return undefined;
    const url = new URL(next['url'], `${this.baseUrl}/`);
    url.protocol = this.#origin.protocol;
    url.host = this.#origin.host;
    return url.href;
  }

  /** GET of an absolute URL expected to answer a Bundle; parsed losslessly. */
  async #getBundle(url: string, what: string): Promise<{ bundle: FhirJsonObject; date: string | undefined }> {
    let res: Response;
    let text: string;
    try {
      res = await fetch(url, { headers: { accept: 'application/fhir+json' }, signal: AbortSignal.timeout(this.timeoutMs) });
      text = await res.text();
    } catch (err) {
      throw toHospitalError(err, 'history', what, this.timeoutMs);
    }
    let data: unknown;
    try {
      data = parseFhirJson(text);
    } catch {
      data = undefined;
    }
    if (!res.ok) throw toHospitalError({ response: { status: res.status, data: data === undefined ? undefined : toPlainJson(data as FhirJson) } }, 'history', what, this.timeoutMs);
    if (!isJsonObject(data) || data['resourceType'] !== 'Bundle') {
      throw new HospitalError('ERR_HOSPITAL_REJECTED', `Hospital history of ${what} returned something other than a Bundle`, {
        operation: 'history',
        resourceType: what,
        status: res.status,
      });
    }
    const dateHeader = res.headers.get('date');
    const ms = dateHeader === null ? Number.NaN : Date.parse(dateHeader);
    return { bundle: data, date: Number.isNaN(ms) ? undefined : new Date(ms).toISOString() };
  }

  /**
   * GET of `path` under the base URL over node:http(s) with this client's keep-alive agent (the
   * search hot path; fetch costs about twice as much per request), body parsed losslessly.
   * @returns The HTTP status (2xx) and the parsed body (`{}` when empty).
   * @throws HospitalError as {@link toHospitalError}: non-2xx status, unparseable body, network
   *   failure or no full answer within `timeoutMs`.
   */
  async #getJson(operation: HospitalOperation, resourceType: string, path: string): Promise<{ status: number; data: FhirJson }> {
    let status: number;
    let text: string;
    try {
      ({ status, text } = await httpGet(new URL(`${this.baseUrl}/${path}`), this.#agent, this.timeoutMs));
    } catch (err) {
      throw toHospitalError(err, operation, resourceType, this.timeoutMs);
    }
    let data: FhirJson = {};
    if (text !== '') {
      try {
        data = parseFhirJson(text);
      } catch {
        throw toHospitalError({ response: { status } }, operation, resourceType, this.timeoutMs);
      }
    }
    if (status < 200 || status > 299) throw toHospitalError({ response: { status, data: toPlainJson(data) } }, operation, resourceType, this.timeoutMs);
    return { status, data };
  }

  async #request(
    operation: HospitalOperation,
    resourceType: string,
    path: string,
    method: 'GET' | 'PUT' | 'POST' | 'DELETE',
    body?: string,
  ): Promise<FhirResource> {
    const headers: Record<string, string> = { accept: 'application/fhir+json' };
    if (body !== undefined) {
      headers['content-type'] = 'application/fhir+json';
      headers['prefer'] = 'return=representation';
    }
    const options: RequestOptions = { headers, signal: AbortSignal.timeout(this.timeoutMs) };
    try {
      return await this.#fhir.request(path, { method, options, body });
    } catch (err) {
      throw toHospitalError(err, operation, resourceType, this.timeoutMs);
    }
  }

  /** Runs `fn` after any earlier call for the same key has settled. */
  #serialized<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#queues.get(key) ?? Promise.resolve();
    const run = previous.then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.#queues.set(key, tail);
    void tail.then(() => {
      if (this.#queues.get(key) === tail) this.#queues.delete(key);
    });
    return run;
  }
}

/**
 * Canonical text of a resource for byte-for-byte comparison across hospitals:
 * `canonicalStringify` (docs/merge.md key order) of the resource without the
 * {@link SERVER_MANAGED_META_FIELDS}; `meta` is dropped when nothing else is left in it. Nothing
 * else is removed (`meta.source`, `meta.tag`, `meta.profile`, `meta.security` stay).
 *
 * @param resource - a resource, FHIR JSON or plain JS (not modified).
 * @param options - see {@link ComparableFormOptions}.
 * @returns The canonical text.
 * @throws TypeError when `resource` is not a JSON object.
 */
export function comparableForm(resource: HospitalResourceInput, options: ComparableFormOptions = {}): string {
  let value = toFhirJson(resource);
  if (options.normalizeNumbers) value = toFhirJson(toPlainJson(value));
  if (!isJsonObject(value)) throw new TypeError('comparableForm: resource must be an object');
  const out: FhirJsonObject = { ...value };
  const meta = out['meta'];
  if (isJsonObject(meta)) {
    const kept: FhirJsonObject = { ...meta };
    for (const field of SERVER_MANAGED_META_FIELDS) delete kept[field];
    if (Object.keys(kept).length === 0) delete out['meta'];
    else out['meta'] = kept;
  }
  return canonicalStringify(out);
}

function assertType(type: string): void {
  if (typeof type !== 'string' || !TYPE_RE.test(type)) throw new TypeError('Invalid FHIR resource type');
}

function assertTypeAndId(type: string, id: string): void {
  assertType(type);
  if (typeof id !== 'string' || !ID_RE.test(id)) throw new TypeError('Invalid FHIR id');
}

function compareIds(a: FhirJson | undefined, b: FhirJson | undefined): number {
  const x = typeof a === 'string' ? a : '';
  const y = typeof b === 'string' ? b : '';
  return x < y ? -1 : x > y ? 1 : 0;
}

/** Base URLs between which absolute references and `fullUrl`s are rewritten (either may be absent). */
interface RewriteBases {
  from: string | undefined;
  to: string | undefined;
}

/** `Type/id[/_history/v]` at the end of `url` when `url` is `${base}/Type/id…`, else undefined. */
function underBase(url: string, base: string | undefined): RegExpExecArray | null {
  if (base === undefined || !url.startsWith(`${base}/`)) return null;
  return REF_RE.exec(url.slice(base.length + 1));
}

/** `Type/id` of a relative `Type/id[/_history/v]` or `Type/id?…`-free `request.url`, else null. */
function relativeRef(value: string): RegExpExecArray | null {
  return REF_RE.exec(value);
}

/**
 * Adds every `Type/id` that {@link rewriteRefs} may rewrite in `value`: relative and (under
 * `fromBase`) absolute `reference`s at any depth, and in Bundle entries `request.url`, `fullUrl`
 * (under `fromBase`) and the entry resource's `Type/id`. Sets `seen.absolute` when an absolute
 * `reference` or `fullUrl` under `fromBase` was found (those are rewritten even without a mapping).
 */
function collectRefs(value: FhirJson, out: Set<string>, fromBase: string | undefined, seen?: { absolute: boolean }): void {
  if (Array.isArray(value)) {
    for (const v of value) collectRefs(v, out, fromBase, seen);
    return;
  }
  if (!isJsonObject(value)) return;
  for (const k in value) {
    const v = value[k]!;
    if (k === 'reference' && typeof v === 'string') {
      let m = relativeRef(v);
      if (m === null) {
        m = underBase(v, fromBase);
        if (m !== null && seen) seen.absolute = true;
      }
      if (m !== null) out.add(`${m[1]}/${m[2]}`);
    } else if (typeof v === 'object' && v !== null) {
      collectRefs(v, out, fromBase, seen);
    }
  }
  if (value['resourceType'] === 'Bundle' && Array.isArray(value['entry'])) {
    for (const entry of value['entry']) {
      if (!isJsonObject(entry)) continue;
      const full = typeof entry['fullUrl'] === 'string' ? underBase(entry['fullUrl'], fromBase) : null;
      if (full !== null && seen) seen.absolute = true;
      if (full !== null) out.add(`${full[1]}/${full[2]}`);
      const request = entry['request'];
      const url = isJsonObject(request) && typeof request['url'] === 'string' ? relativeRef(request['url']) : null;
      if (url !== null) out.add(`${url[1]}/${url[2]}`);
      const r = entry['resource'];
      if (isJsonObject(r) && typeof r['resourceType'] === 'string' && typeof r['id'] === 'string') out.add(`${r['resourceType']}/${r['id']}`);
    }
  }
}

/**
 * Deep copy of `value` with ids rewritten via `table` (`Type/id` → `Type/id`), see
 * {@link HospitalClient.toHospitalForm}: `reference`s (relative; absolute under `bases.from`, which
 * become absolute under `bases.to`, or relative when `bases.to` is absent), and in Bundle entries
 * `request.url`, `fullUrl` (under `bases.from`, only when `bases.to` is set) and the entry
 * resource's `id`. Version suffixes are kept.
 */
function rewriteRefs(value: FhirJson, table: ReadonlyMap<string, string>, bases: RewriteBases): FhirJson {
  if (Array.isArray(value)) return value.map((v) => rewriteRefs(v, table, bases));
  if (!isJsonObject(value)) return value;
  const mapRef = (m: RegExpExecArray): string => `${table.get(`${m[1]}/${m[2]}`) ?? `${m[1]}/${m[2]}`}${m[3] ?? ''}`;
  const out: FhirJsonObject = {};
  for (const [k, v] of Object.entries(value)) {
    if (k === 'reference' && typeof v === 'string') {
      const rel = relativeRef(v);
      const abs = rel === null ? underBase(v, bases.from) : null;
      if (rel !== null) out[k] = mapRef(rel);
      else if (abs !== null) out[k] = bases.to === undefined ? mapRef(abs) : `${bases.to}/${mapRef(abs)}`;
      else out[k] = v;
    } else {
      out[k] = rewriteRefs(v, table, bases);
    }
  }
  if (out['resourceType'] === 'Bundle' && Array.isArray(out['entry'])) {
    for (const entry of out['entry']) {
      if (!isJsonObject(entry)) continue;
      const full = typeof entry['fullUrl'] === 'string' && bases.to !== undefined ? underBase(entry['fullUrl'], bases.from) : null;
      if (full !== null) entry['fullUrl'] = `${bases.to}/${mapRef(full)}`;
      const request = entry['request'];
      if (isJsonObject(request) && typeof request['url'] === 'string') {
        const url = relativeRef(request['url']);
        if (url !== null) request['url'] = mapRef(url);
      }
      const r = entry['resource'];
      if (isJsonObject(r) && typeof r['resourceType'] === 'string' && typeof r['id'] === 'string') {
        const mapped = table.get(`${r['resourceType']}/${r['id']}`);
        if (mapped !== undefined) r['id'] = mapped.slice(r['resourceType'].length + 1);
      }
    }
  }
  return out;
}

/** The parts of a history Bundle entry (https://hl7.org/fhir/R4/bundle.html), in hospital form. */
function parseHistoryEntry(entry: FhirJsonObject):
  | { hospitalRef: string; versionId: string | undefined; lastUpdated: string | undefined; deleted: boolean; resource: FhirJsonObject | undefined }
  | undefined {
  const request = isJsonObject(entry['request']) ? entry['request'] : undefined;
  const response = isJsonObject(entry['response']) ? entry['response'] : undefined;
  const r = isJsonObject(entry['resource']) ? entry['resource'] : undefined;
  const method = typeof request?.['method'] === 'string' ? request['method'] : undefined;
  const status = typeof response?.['status'] === 'string' ? response['status'] : '';
  const deleted = method === 'DELETE' || (r === undefined && /^(204|410)\b/.test(status));
  let hospitalRef: string | undefined;
  if (r !== undefined && typeof r['resourceType'] === 'string' && typeof r['id'] === 'string' && REF_RE.test(`${r['resourceType']}/${r['id']}`)) {
    hospitalRef = `${r['resourceType']}/${r['id']}`;
  } else {
    const url = typeof request?.['url'] === 'string' ? REF_RE.exec(request['url'].split('?')[0]!) : null;
    const full = url === null && typeof entry['fullUrl'] === 'string' ? LOCATION_RE.exec(entry['fullUrl'].split('?')[0]!) : null;
    const m = url ?? full;
    if (m !== null) hospitalRef = `${m[1]}/${m[2]}`;
  }
  if (hospitalRef === undefined || (!deleted && r === undefined)) return undefined;
  const meta = r !== undefined && isJsonObject(r['meta']) ? r['meta'] : undefined;
  const etag = typeof response?.['etag'] === 'string' ? /^(?:W\/)?"([^"]+)"$/.exec(response['etag']) : null;
  const versionId = typeof meta?.['versionId'] === 'string' ? meta['versionId'] : (etag?.[1] ?? undefined);
  const when = typeof meta?.['lastUpdated'] === 'string' ? meta['lastUpdated'] : typeof response?.['lastModified'] === 'string' ? response['lastModified'] : undefined;
  const ms = when === undefined ? Number.NaN : Date.parse(when);
  return { hospitalRef, versionId, lastUpdated: Number.isNaN(ms) ? undefined : new Date(ms).toISOString(), deleted, resource: deleted ? undefined : r };
}

/** `meta.versionId`/`meta.lastUpdated` of a stored resource, else the version from the `ETag`. */
function storedVersionOf(res: FhirResource, type: string): { versionId?: string; lastUpdated?: string } {
  const meta = res.resourceType === type && typeof res['meta'] === 'object' && res['meta'] !== null ? (res['meta'] as { versionId?: unknown; lastUpdated?: unknown }) : undefined;
  const out: { versionId?: string; lastUpdated?: string } = {};
  if (typeof meta?.versionId === 'string') out.versionId = meta.versionId;
  else {
    const etag = Client.httpFor(res).response?.headers.get('etag');
    const m = etag ? /^(?:W\/)?"([^"]+)"$/.exec(etag) : null;
    if (m !== null) out.versionId = m[1]!;
  }
  if (typeof meta?.lastUpdated === 'string') out.lastUpdated = meta.lastUpdated;
  return out;
}

/** Id of a created/updated resource: from the body, else from the `Location` header. */
function createdIdOf(res: FhirResource, type: string): string | undefined {
  if (res.resourceType === type && typeof res['id'] === 'string' && ID_RE.test(res['id'])) return res['id'];
  const location = Client.httpFor(res).response?.headers.get('location') ?? Client.httpFor(res).response?.headers.get('content-location');
  const m = location ? LOCATION_RE.exec(new URL(location, 'http://x').pathname) : null;
  return m !== null && m[1] === type ? m[2] : undefined;
}

function expectResource(raw: FhirResource, type: string, operation: HospitalOperation): FhirJsonObject {
  const value = toFhirJson(raw);
  if (!isJsonObject(value) || value['resourceType'] !== type || typeof value['id'] !== 'string') {
    throw new HospitalError('ERR_HOSPITAL_REJECTED', `Hospital ${operation} of ${type} returned an unexpected body`, {
      operation,
      resourceType: type,
      status: Client.httpFor(raw).response?.status,
    });
  }
  return value;
}

function expectBundle(raw: FhirResource): FhirJsonObject {
  const value = toFhirJson(raw);
  if (!isJsonObject(value) || value['resourceType'] !== 'Bundle') throw notABundle(raw);
  return value;
}

function notABundle(raw: FhirResource | number): HospitalError {
  return new HospitalError('ERR_HOSPITAL_REJECTED', 'Hospital search returned something other than a Bundle', {
    operation: 'search',
    status: typeof raw === 'number' ? raw : typeof raw === 'object' && raw !== null ? Client.httpFor(raw).response?.status : undefined,
  });
}

/**
 * One HTTP GET (RFC 9110 §9.3.1) of `url` with `accept: application/fhir+json` through `agent`.
 * A request on a reused keep-alive connection that the server had closed (ECONNRESET before any
 * answer) is sent once more on a new connection, as the GET is idempotent.
 * @param timeoutMs - for the whole exchange, ms; then it fails with a `TimeoutError`.
 * @returns The status and the body as UTF-8 text.
 * @throws Error the socket error (`code` e.g. `ECONNREFUSED`), or a `TimeoutError`.
 */
function httpGet(url: URL, agent: http.Agent, timeoutMs: number, retried = false): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    let answered = false;
    const send = url.protocol === 'https:' ? https.request : http.request;
    const req = send(url, { method: 'GET', agent, headers: { accept: 'application/fhir+json' } }, (res) => {
      answered = true;
      res.setEncoding('utf8');
      let text = '';
      res.on('data', (chunk: string) => {
        text += chunk;
      });
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, text });
      });
      res.on('error', fail);
    });
    function fail(err: Error): void {
      clearTimeout(timer);
      if (!retried && !answered && req.reusedSocket && (err as { code?: unknown }).code === 'ECONNRESET') {
        resolve(httpGet(url, agent, timeoutMs, true));
      } else {
        reject(err);
      }
    }
    const timer = setTimeout(() => {
      answered = true;
      const err = new Error(`no response within ${timeoutMs} ms`);
      err.name = 'TimeoutError';
      reject(err);
      req.destroy();
    }, timeoutMs);
    req.on('error', fail);
    req.end();
  });
}

function issuesOf(data: unknown): OperationOutcomeIssue[] {
  if (typeof data !== 'object' || data === null) return [];
  const oo = data as { resourceType?: unknown; issue?: unknown };
  if (oo.resourceType !== 'OperationOutcome' || !Array.isArray(oo.issue)) return [];
  return oo.issue.filter((i): i is OperationOutcomeIssue => typeof i === 'object' && i !== null);
}

/** Maps a fhir-kit-client / fetch failure to a {@link HospitalError}, keeping response bodies out of messages. */
function toHospitalError(err: unknown, operation: HospitalOperation, resourceType: string, timeoutMs: number): HospitalError {
  if (err instanceof HospitalError) return err;
  const response = typeof err === 'object' && err !== null ? (err as { response?: { status?: unknown; data?: unknown } }).response : undefined;
  if (response !== undefined && typeof response.status === 'number') {
    const status = response.status;
    const issues = issuesOf(response.data);
    const codes = [...new Set(issues.map((i) => i.code).filter((c) => typeof c === 'string'))];
    const suffix = codes.length > 0 ? ` (${codes.join(', ')})` : '';
    if (TRANSIENT_STATUSES.has(status)) {
      return new HospitalError('ERR_HOSPITAL_UNREACHABLE', `Hospital unavailable during ${operation} of ${resourceType}: HTTP ${status}${suffix}`, {
        operation,
        status,
        issues,
        resourceType,
      });
    }
    const what = status < 300 ? `unparseable response, HTTP ${status}` : `HTTP ${status}${suffix}`;
    return new HospitalError('ERR_HOSPITAL_REJECTED', `Hospital rejected ${operation} of ${resourceType}: ${what}`, {
      operation,
      status,
      issues,
      resourceType,
    });
  }
  return new HospitalError('ERR_HOSPITAL_UNREACHABLE', `Hospital unreachable during ${operation} of ${resourceType}: ${networkReason(err, timeoutMs)}`, {
    operation,
    resourceType,
    cause: err,
  });
}

function networkReason(err: unknown, timeoutMs: number): string {
  if (typeof err !== 'object' || err === null) return String(err);
  const e = err as { name?: unknown; message?: unknown; cause?: unknown };
  if (e.name === 'TimeoutError') return `no response within ${timeoutMs} ms`;
  if (e.name === 'AbortError') return 'request aborted';
  const cause = e.cause as { code?: unknown; message?: unknown } | undefined;
  if (cause && typeof cause.code === 'string') return cause.code;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string') return code;
  const base = typeof e.message === 'string' ? e.message : 'network error';
  return cause && typeof cause.message === 'string' ? `${base}: ${cause.message}` : base;
}
