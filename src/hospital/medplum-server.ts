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
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import type { FhirRequest, HttpMethod } from '@medplum/fhir-router';
import type { Bundle, CapabilityStatement, OperationOutcome, Resource } from '@medplum/fhirtypes';
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
}

/** A running stand-in hospital, as returned by {@link startMedplumHospital}. */
export interface MedplumHospital {
  /** FHIR base URL without trailing slash, e.g. `http://127.0.0.1:41234/fhir`. */
  readonly url: string;
  /** The name given in the options. */
  readonly name: string;
  /** The in-memory store behind the server (direct access for tests, e.g. `repo.clear()`). */
  readonly repo: MemoryRepository;
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
  const router = new FhirRouter();
  const repo = new MemoryRepository();
  let baseUrl = '';

  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  const limit = opts.bodyLimitBytes ?? 16 * 1024 * 1024;
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
      rest: [{ mode: 'server' }],
    };
    send(res, 200, cap);
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
    close(): Promise<void> {
      closing ??= closeServer(server);
      return closing;
    },
  };
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
