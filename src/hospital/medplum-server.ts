/**
 * A stand-in hospital FHIR R4 server: Medplum's `FhirRouter` over an in-memory
 * `MemoryRepository` (@medplum/fhir-router 5.x), served over HTTP by express 5.
 *
 * It is what tests and the demo run in place of a real hospital EHR. Behaviour worth knowing
 * (see the report in docs or the TSDoc below):
 * - ids: `PUT Type/id` of an unknown id creates the resource with that id (update-as-create,
 *   https://hl7.org/fhir/R4/http.html#upsert) unless `allowUpdateCreate: false`; `POST Type`
 *   ignores any id in the body and assigns a UUID (https://hl7.org/fhir/R4/http.html#create).
 * - meta: the repository overwrites `meta.versionId` (a UUID) and `meta.lastUpdated`; other meta
 *   fields sent by the client are kept.
 * - bodies are parsed with `JSON.parse` (express.json), so decimals lose their lexical form
 *   (`1.50` is stored and returned as `1.5`), and empty strings/arrays/objects are dropped.
 * - validation: when `validate` is on (default) every create/update body is checked with
 *   `validateResource` from @medplum/core, as Medplum's real server does in strict mode; failures
 *   are `400` with an OperationOutcome. Batch/transaction entries are not validated.
 * - search: `_count` defaults to 20 and is capped at 1000 like Medplum's server; `next` links use
 *   `_offset`.
 * - delete: a later read is `404` (the real Medplum server answers `410 Gone`).
 * - history: `GET /fhir/_history` (system level) and `GET /fhir/[type]/_history` (type level),
 *   with `_since` and `_count`, newest first (https://hl7.org/fhir/R4/http.html#history). These are
 *   tidegate additions: Medplum's `FhirRouter` 5.x routes only instance history and
 *   `MemoryRepository` keeps no record of deletes, so the stand-in records every create, update,
 *   delete and expunge in a journal ({@link JournaledMemoryRepository}) and answers from it.
 *   `systemHistory: false` turns system-level history off (404) to stand for servers without it.
 * - outages: `setAvailable(false)` makes every request answer `503` until `setAvailable(true)`;
 *   passing the previous server's `repo` to a new server on the same `port` simulates a restart
 *   that keeps its data.
 */
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import type { Request, Response } from 'express';
import {
  badRequest,
  DEFAULT_MAX_SEARCH_COUNT,
  DEFAULT_SEARCH_COUNT,
  getStatus,
  isOk,
  normalizeOperationOutcome,
  notFound,
  OperationOutcomeError,
  unsupportedMediaType,
  validateResource,
} from '@medplum/core';
import { randomUUID } from 'node:crypto';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import type { CreateResourceOptions, DeleteResourceOptions, FhirRequest, HttpMethod } from '@medplum/fhir-router';
import type { SearchRequest, WithId } from '@medplum/core';
import type { Bundle, BundleEntry, CapabilityStatement, OperationOutcome, Resource } from '@medplum/fhirtypes';
import { ensureFhirDefinitionsLoaded } from './definitions.ts';

/** Options for {@link startMedplumHospital}. */
export interface MedplumHospitalOptions {
  /** TCP port; `0` (default) picks a free port. */
  port?: number;
  /** Interface to bind; default `127.0.0.1`. */
  host?: string;
  /** Display name, returned in `GET /fhir/metadata` (`implementation.description`); default `medplum-hospital`. */
  name?: string;
  /** Validate create/update bodies with Medplum's `validateResource` (default `true`). */
  validate?: boolean;
  /**
   * Allow `PUT Type/id` to create a resource whose id does not exist yet (default `true`). Set to
   * `false` to behave like Medplum's hosted server, which answers such a PUT with `404 Not found`.
   */
  allowUpdateCreate?: boolean;
  /** Largest accepted request body in bytes (default 16 MiB); larger bodies get `413`. */
  bodyLimitBytes?: number;
  /** Serve system-level `GET /fhir/_history` (default `true`); `false` answers it `404`, type-level history stays. */
  systemHistory?: boolean;
  /**
   * The repository to serve (default: a new {@link JournaledMemoryRepository}). Pass the `repo` of
   * a closed server to a new server on the same `port` to simulate a restart that keeps its data.
   */
  repo?: JournaledMemoryRepository;
}

/** One change recorded by {@link JournaledMemoryRepository}, in the order the changes happened. */
export interface JournalEntry {
  /** Position in the journal, from 1, strictly increasing. */
  readonly seq: number;
  /** Resource type. */
  readonly resourceType: string;
  /** Resource id on this server. */
  readonly id: string;
  /** `meta.versionId` of the version (a new UUID for a delete). */
  readonly versionId: string;
  /** `meta.lastUpdated` of the version (FHIR instant; time of the delete for a delete). */
  readonly lastUpdated: string;
  /** `POST` (created), `PUT` (updated) or `DELETE`, as in a history Bundle's `entry.request.method`. */
  readonly method: 'POST' | 'PUT' | 'DELETE';
  /** The stored version as JSON text; `undefined` for a delete. */
  readonly resource: string | undefined;
}

/**
 * Medplum's `MemoryRepository` plus a journal of every change, for FHIR history across resources
 * (https://hl7.org/fhir/R4/http.html#history). Creates, updates (including PATCH, conditional
 * update and the entries of batch/transaction Bundles, which all end in `createResource`),
 * conditional creates, deletes and expunges are journaled; `clear()` empties the journal too.
 * Deletes get a new `versionId` (UUID) and the current time as `lastUpdated`, like a server that
 * keeps deletion versions.
 */
export class JournaledMemoryRepository extends MemoryRepository {
  readonly #journal: JournalEntry[] = [];
  readonly #live = new Set<string>();
  #seq = 0;

  /**
   * Creates (or, with `update`, replaces) a resource, then journals the stored version.
   * @param resource - the resource; its `id` is kept when given.
   * @param options - Medplum create options.
   * @param update - replace an existing resource instead of failing with "Assigned ID is already in use".
   * @returns The stored resource with `id` and `meta.versionId`/`meta.lastUpdated`.
   * @throws OperationOutcomeError as `MemoryRepository.createResource` does.
   */
  override async createResource<T extends Resource>(resource: T, options?: CreateResourceOptions, update = false): Promise<WithId<T>> {
    const stored = await super.createResource(resource, options, update);
    this.#record(stored, undefined);
    return stored;
  }

  /**
   * Conditional create (https://hl7.org/fhir/R4/http.html#ccreate); journals the resource only when it was created.
   * @param resource - the resource to create when nothing matches.
   * @param search - the `If-None-Exist` search.
   * @param options - Medplum create options.
   * @returns The matching or created resource and Medplum's outcome (`created` or `allOk`).
   * @throws OperationOutcomeError as `MemoryRepository.conditionalCreate` does (e.g. multiple matches).
   */
  override async conditionalCreate<T extends Resource>(
    resource: T,
    search: SearchRequest<T>,
    options?: CreateResourceOptions,
  ): Promise<{ resource: WithId<T>; outcome: OperationOutcome }> {
    const result = await super.conditionalCreate(resource, search, options);
    if (getStatus(result.outcome) === 201) this.#record(result.resource, undefined);
    return result;
  }

  /**
   * Deletes a resource and journals a deletion version.
   * @param resourceType - resource type.
   * @param id - resource id.
   * @param options - Medplum delete options (`ifMatch`).
   * @throws OperationOutcomeError `404` when absent, `412` on an `ifMatch` mismatch.
   */
  override async deleteResource(resourceType: string, id: string, options?: DeleteResourceOptions): Promise<void> {
    await super.deleteResource(resourceType, id, options);
    this.#record({ resourceType, id } as Resource, 'DELETE');
  }

  /**
   * Removes resources and their history; journals a deletion for each one that was live.
   * @param resourceType - resource type.
   * @param ids - resource ids.
   */
  override async expungeResources(resourceType: string, ids: string[]): Promise<void> {
    await super.expungeResources(resourceType, ids);
    for (const id of ids) if (this.#live.has(`${resourceType}/${id}`)) this.#record({ resourceType, id } as Resource, 'DELETE');
  }

  /**
   * Instance history (https://hl7.org/fhir/R4/http.html#history), newest first, from the journal.
   * Replaces `MemoryRepository.readHistory` of @medplum/fhir-router 5.2.13, which reverses its
   * stored list in place, so that every other call returned the versions oldest first.
   * @param resourceType - resource type.
   * @param id - resource id.
   * @returns A `history` Bundle of the stored versions (deletions have no version here, as in Medplum).
   * @throws OperationOutcomeError `404` when the resource does not exist (or is deleted), as Medplum does.
   */
  override async readHistory<T extends Resource>(resourceType: string, id: string): Promise<Bundle<T>> {
    await this.readResource(resourceType, id);
    const entry = this.changes({ resourceType })
      .filter((e) => e.id === id && e.resource !== undefined)
      .map((e) => ({ resource: JSON.parse(e.resource!) as T }));
    return { resourceType: 'Bundle', type: 'history', ...(entry.length > 0 ? { entry } : {}) };
  }

  /** Empties the repository and the journal. */
  override clear(): void {
    super.clear();
    this.#journal.length = 0;
    this.#live.clear();
  }

  /**
   * Journal entries with `seq` below `beforeSeq` (all when undefined) and `lastUpdated` at or after
   * `sinceMs` (all when undefined), restricted to `resourceType` when given; newest first.
   * @param opts - filters; `limit` caps the result (default: no cap).
   * @returns Matching entries, newest first.
   */
  changes(opts: { sinceMs?: number; resourceType?: string; beforeSeq?: number; limit?: number } = {}): JournalEntry[] {
    const out: JournalEntry[] = [];
    // seq grows by one per entry, so the entry with seq s sits at index s - (seq of the first entry).
    const firstSeq = this.#journal[0]?.seq ?? 1;
    const last = opts.beforeSeq === undefined ? this.#journal.length - 1 : Math.min(this.#journal.length - 1, opts.beforeSeq - firstSeq - 1);
    for (let i = last; i >= 0; i--) {
      const e = this.#journal[i]!;
      if (opts.resourceType !== undefined && e.resourceType !== opts.resourceType) continue;
      if (opts.sinceMs !== undefined && Date.parse(e.lastUpdated) < opts.sinceMs) continue;
      out.push(e);
      if (opts.limit !== undefined && out.length >= opts.limit) break;
    }
    return out;
  }

  /** Number of journal entries. */
  get journalSize(): number {
    return this.#journal.length;
  }

  #record(resource: Resource, method: 'DELETE' | undefined): void {
    const key = `${resource.resourceType}/${resource.id ?? ''}`;
    const existed = this.#live.has(key);
    if (method === 'DELETE') this.#live.delete(key);
    else this.#live.add(key);
    this.#journal.push({
      seq: ++this.#seq,
      resourceType: resource.resourceType,
      id: resource.id ?? '',
      versionId: method === 'DELETE' ? randomUUID() : (resource.meta?.versionId ?? randomUUID()),
      lastUpdated: method === 'DELETE' ? new Date().toISOString() : (resource.meta?.lastUpdated ?? new Date().toISOString()),
      method: method ?? (existed ? 'PUT' : 'POST'),
      resource: method === 'DELETE' ? undefined : JSON.stringify(resource),
    });
  }
}

/** A running stand-in hospital, as returned by {@link startMedplumHospital}. */
export interface MedplumHospital {
  /** FHIR base URL without trailing slash, e.g. `http://127.0.0.1:41234/fhir`. */
  readonly url: string;
  /** The name given in the options. */
  readonly name: string;
  /** The in-memory store behind the server (direct access for tests, e.g. `repo.clear()`). */
  readonly repo: JournaledMemoryRepository;
  /** TCP port the server listens on. */
  readonly port: number;
  /**
   * Simulates an outage without closing the socket: while `false`, every request is answered
   * `503 Service Unavailable` with an OperationOutcome (`transient`). Default `true`.
   * @param available - `false` to start the outage, `true` to end it.
   */
  setAvailable(available: boolean): void;
  /** Stops listening and drops open connections. Idempotent. */
  close(): Promise<void>;
}

const ROUTER_METHODS: ReadonlySet<string> = new Set(['GET', 'POST', 'PUT', 'PATCH', 'DELETE']);
const JSON_TYPES = ['application/json', 'application/fhir+json', 'application/json-patch+json'];
const FHIR_CONTENT_TYPE = 'application/fhir+json; charset=utf-8';

/**
 * Starts a stand-in hospital FHIR R4 server (Medplum `FhirRouter` + `MemoryRepository` behind
 * express 5). The FHIR REST API (https://hl7.org/fhir/R4/http.html) is served under `/fhir`:
 * read, vread, create, update (and update-as-create), patch, delete, history, type search,
 * batch/transaction on the base, plus a minimal `GET /fhir/metadata` CapabilityStatement.
 * Request bodies must be `application/fhir+json` or `application/json` (`415` otherwise);
 * responses are `application/fhir+json`, with the HTTP status taken from the OperationOutcome by
 * `getStatus()` of @medplum/core. Indexes the FHIR definitions on first use
 * ({@link ensureFhirDefinitionsLoaded}, ~1 s).
 *
 * @param opts - see {@link MedplumHospitalOptions}; all optional.
 * @returns The running server: base `url`, the `repo`, and `close()`.
 * @throws Error (`EADDRINUSE`, `EACCES`, …) from `listen` when the port cannot be bound.
 */
export async function startMedplumHospital(opts: MedplumHospitalOptions = {}): Promise<MedplumHospital> {
  ensureFhirDefinitionsLoaded();
  const host = opts.host ?? '127.0.0.1';
  const name = opts.name ?? 'medplum-hospital';
  const validate = opts.validate ?? true;
  const allowUpdateCreate = opts.allowUpdateCreate ?? true;
  const systemHistory = opts.systemHistory ?? true;
  const router = new FhirRouter();
  const repo = opts.repo ?? new JournaledMemoryRepository();
  let baseUrl = '';
  let available = true;

  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  const limit = opts.bodyLimitBytes ?? 16 * 1024 * 1024;
  app.use((_req, res, next) => {
    if (available) {
      next();
      return;
    }
    res.setHeader('Retry-After', '1');
    send(res, 503, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'transient', details: { text: 'Service unavailable' } }] });
  });
  app.use('/fhir', express.json({ type: JSON_TYPES, limit }));
  app.use('/fhir', express.urlencoded({ extended: false, limit })); // POST Type/_search

  app.get('/fhir/metadata', (_req, res) => {
    const cap: CapabilityStatement = {
      resourceType: 'CapabilityStatement',
      status: 'active',
      date: new Date().toISOString(),
      kind: 'instance',
      software: { name: 'tidegate medplum stand-in' },
      implementation: { description: name, url: baseUrl },
      fhirVersion: '4.0.1',
      format: ['json'],
      rest: [{ mode: 'server', ...(systemHistory ? { interaction: [{ code: 'history-system' as const }] } : {}) }],
    };
    send(res, 200, cap);
  });

  app.get(['/fhir/_history', '/fhir/:type/_history'], (req, res) => {
    const param: unknown = req.params['type'];
    const type = typeof param === 'string' ? param : undefined;
    if (type === undefined && !systemHistory) {
      sendOutcome(res, notFound);
      return;
    }
    const outcomeOrBundle = historyBundle(repo, baseUrl, type, new URL(req.originalUrl, 'http://x').searchParams);
    if (outcomeOrBundle.resourceType === 'OperationOutcome') sendOutcome(res, outcomeOrBundle);
    else send(res, 200, outcomeOrBundle);
  });

  app.use('/fhir', (req, res) => {
    handleFhir(req, res, { router, repo, baseUrl, validate, allowUpdateCreate }).catch((err: unknown) => {
      sendOutcome(res, normalizeOperationOutcome(err));
    });
  });

  // Body-parser failures (malformed JSON, too large) and anything else thrown by express.
  app.use((err: unknown, _req: Request, res: Response, _next: (err?: unknown) => void) => {
    const status = httpStatusOf(err);
    if (status !== undefined && status >= 400 && status < 500) {
      send(res, status, {
        resourceType: 'OperationOutcome',
        // Fixed texts: parser messages quote the body, which may be PHI.
        issue: [{ severity: 'error', code: status === 413 ? 'too-costly' : 'invalid', details: { text: status === 413 ? 'Request body too large' : 'Malformed request body' } }],
      } satisfies OperationOutcome);
      return;
    }
    sendOutcome(res, normalizeOperationOutcome(err));
  });

  const server = createServer(app);
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once('error', onError);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const urlHost = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '[::1]' : host.includes(':') ? `[${host}]` : host;
  baseUrl = `http://${urlHost}:${port}/fhir`;

  let closing: Promise<void> | undefined;
  return {
    url: baseUrl,
    name,
    repo,
    port,
    setAvailable(value: boolean): void {
      available = value;
    },
    close(): Promise<void> {
      closing ??= closeServer(server);
      return closing;
    },
  };
}

const ISO_INSTANT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/;

/**
 * System- or type-level history Bundle (https://hl7.org/fhir/R4/http.html#history) from the
 * journal: newest first, `_since` inclusive, `_count` (default 20, max 1000), and `_page` (an
 * opaque journal position used by the `next` link, so pages stay stable while changes arrive).
 */
function historyBundle(repo: JournaledMemoryRepository, baseUrl: string, type: string | undefined, query: URLSearchParams): Bundle | OperationOutcome {
  if (type !== undefined && !/^[A-Z][A-Za-z]{1,63}$/.test(type)) return notFound;
  const sinceText = query.get('_since');
  let sinceMs: number | undefined;
  if (sinceText !== null) {
    sinceMs = Date.parse(sinceText);
    if (!ISO_INSTANT.test(sinceText) || Number.isNaN(sinceMs)) return badRequest('_since must be a FHIR instant', '_since');
  }
  const count = clampInt(query.get('_count'), DEFAULT_SEARCH_COUNT, 1, DEFAULT_MAX_SEARCH_COUNT);
  const page = query.get('_page');
  const beforeSeq = page !== null && /^\d+$/.test(page) ? Number.parseInt(page, 10) : undefined;
  const found = repo.changes({
    ...(sinceMs !== undefined ? { sinceMs } : {}),
    ...(type !== undefined ? { resourceType: type } : {}),
    ...(beforeSeq !== undefined ? { beforeSeq } : {}),
    limit: count + 1,
  });
  const entries = found.slice(0, count);
  const entry: BundleEntry[] = entries.map((e) => ({
    fullUrl: `${baseUrl}/${e.resourceType}/${e.id}`,
    ...(e.resource !== undefined ? { resource: JSON.parse(e.resource) as Resource } : {}),
    request: { method: e.method, url: e.method === 'POST' ? e.resourceType : `${e.resourceType}/${e.id}` },
    response: {
      status: e.method === 'POST' ? '201' : e.method === 'DELETE' ? '204' : '200',
      etag: `W/"${e.versionId}"`,
      lastModified: e.lastUpdated,
    },
  }));
  const base = type === undefined ? `${baseUrl}/_history` : `${baseUrl}/${type}/_history`;
  const pageUrl = (before: number | undefined): string => {
    const q = new URLSearchParams();
    if (sinceText !== null) q.set('_since', sinceText);
    q.set('_count', String(count));
    if (before !== undefined) q.set('_page', String(before));
    return `${base}?${q.toString()}`;
  };
  const link: NonNullable<Bundle['link']> = [{ relation: 'self', url: pageUrl(beforeSeq) }];
  if (found.length > count) link.push({ relation: 'next', url: pageUrl(entries[entries.length - 1]!.seq) });
  return { resourceType: 'Bundle', type: 'history', link, ...(entry.length > 0 ? { entry } : {}) };
}

interface HandlerContext {
  router: FhirRouter;
  repo: MemoryRepository;
  baseUrl: string;
  validate: boolean;
  allowUpdateCreate: boolean;
}

async function handleFhir(req: Request, res: Response, ctx: HandlerContext): Promise<void> {
  const method = req.method.toUpperCase();
  if (!ROUTER_METHODS.has(method)) {
    send(res, 405, outcome('not-supported', `Method ${method} not allowed`));
    return;
  }
  const rawUrl = req.url.replace(/^\/+/, '');
  const qIndex = rawUrl.indexOf('?');
  const path = qIndex === -1 ? rawUrl : rawUrl.slice(0, qIndex);
  const segments = path.split('/').filter(Boolean);
  const query = new URLSearchParams(qIndex === -1 ? '' : rawUrl.slice(qIndex + 1));
  const hasBody = method === 'POST' || method === 'PUT' || method === 'PATCH';
  const body: unknown = req.body;

  if (hasBody && (body === undefined || body === null || typeof body !== 'object') && !isFormSearch(req, segments)) {
    sendOutcome(res, req.is(JSON_TYPES) ? badRequest('Missing or non-object JSON body') : unsupportedMediaType);
    return;
  }

  const type = segments[0];
  const isTypeLevel = segments.length === 1 && type !== undefined && !type.startsWith('$') && !type.startsWith('_');
  const isInstanceLevel =
    segments.length === 2 && type !== undefined && !type.startsWith('$') && !segments[1]!.startsWith('$') && !segments[1]!.startsWith('_');

  // POST Type: a server ignores the client's id (https://hl7.org/fhir/R4/http.html#create).
  if (method === 'POST' && isTypeLevel && isRecord(body)) {
    delete body['id'];
  }
  if (ctx.validate && ((method === 'POST' && isTypeLevel) || (method === 'PUT' && isInstanceLevel)) && isRecord(body)) {
    try {
      validateResource(body as unknown as Resource);
    } catch (err) {
      sendOutcome(res, normalizeOperationOutcome(err));
      return;
    }
  }
  // MemoryRepository answers 200 to every update; a real server says 201 when a PUT created the
  // resource (https://hl7.org/fhir/R4/http.html#upsert), or refuses it (Medplum's hosted server: 404).
  let putCreates = false;
  if (method === 'PUT' && isInstanceLevel) {
    try {
      await ctx.repo.readResource(type!, segments[1]!);
    } catch (err) {
      if (!(err instanceof OperationOutcomeError && getStatus(err.outcome) === 404)) throw err;
      if (!ctx.allowUpdateCreate) {
        sendOutcome(res, notFound);
        return;
      }
      putCreates = true;
    }
  }

  // Type search: Medplum's server defaults _count to 20 and caps it at 1000; MemoryRepository
  // has neither, so apply them here to get realistic paging.
  const isTypeSearch = method === 'GET' && isTypeLevel;
  let count = 0;
  let offset = 0;
  if (isTypeSearch) {
    count = clampInt(query.get('_count'), DEFAULT_SEARCH_COUNT, 0, DEFAULT_MAX_SEARCH_COUNT);
    offset = clampInt(query.get('_offset'), 0, 0, Number.MAX_SAFE_INTEGER);
    query.set('_count', String(count));
    query.set('_offset', String(offset));
  }
  const queryString = query.toString();
  const fhirReq: FhirRequest = {
    method: method as HttpMethod,
    url: queryString ? `${path}?${queryString}` : path,
    pathname: '',
    body: hasBody ? body : undefined,
    params: {},
    query: {},
    headers: req.headers,
  };

  const [result, resource] = await ctx.router.handleRequest(fhirReq, ctx.repo);
  const status = putCreates && isOk(result) ? 201 : getStatus(result);
  if (!resource || !isOk(result)) {
    send(res, status, result);
    return;
  }
  if (isTypeSearch && resource.resourceType === 'Bundle') {
    decorateSearchBundle(resource, ctx.baseUrl, type!, query, count, offset);
  }
  const versionId = resource.meta?.versionId;
  if (versionId && resource.id && resource.resourceType !== 'Bundle') {
    res.setHeader('ETag', `W/"${versionId}"`);
    if (status === 201) {
      res.setHeader('Location', `${ctx.baseUrl}/${resource.resourceType}/${resource.id}/_history/${versionId}`);
    }
  }
  send(res, status, resource);
}

/** Adds `fullUrl`s and `self`/`next` links (offset paging) to a searchset. */
function decorateSearchBundle(
  bundle: Bundle,
  baseUrl: string,
  type: string,
  query: URLSearchParams,
  count: number,
  offset: number,
): void {
  for (const entry of bundle.entry ?? []) {
    if (entry.resource?.id) entry.fullUrl = `${baseUrl}/${entry.resource.resourceType}/${entry.resource.id}`;
  }
  const pageUrl = (o: number): string => {
    const q = new URLSearchParams(query);
    q.set('_offset', String(o));
    return `${baseUrl}/${type}?${q.toString()}`;
  };
  const link: NonNullable<Bundle['link']> = [{ relation: 'self', url: pageUrl(offset) }];
  if (count > 0 && bundle.total !== undefined && offset + count < bundle.total) {
    link.push({ relation: 'next', url: pageUrl(offset + count) });
  }
  bundle.link = link;
}

function isFormSearch(req: Request, segments: string[]): boolean {
  return req.method === 'POST' && segments[segments.length - 1] === '_search';
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function clampInt(raw: string | null, dflt: number, min: number, max: number): number {
  if (raw === null || !/^\d+$/.test(raw)) return dflt;
  return Math.min(max, Math.max(min, Number.parseInt(raw, 10)));
}

function outcome(code: 'not-supported' | 'invalid', text: string): OperationOutcome {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] };
}

function httpStatusOf(err: unknown): number | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const s = (err as { status?: unknown; statusCode?: unknown }).status ?? (err as { statusCode?: unknown }).statusCode;
  return typeof s === 'number' ? s : undefined;
}

function sendOutcome(res: Response, oo: OperationOutcome): void {
  send(res, getStatus(oo), oo);
}

function send(res: Response, status: number, body: Resource): void {
  if (res.headersSent) return;
  res.status(status).setHeader('Content-Type', FHIR_CONTENT_TYPE);
  res.end(JSON.stringify(body));
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve, reject) => {
    server.close((err) => (err ? reject(err) : resolve()));
    server.closeAllConnections();
  });
}
