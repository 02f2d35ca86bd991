/**
 * The FHIR REST interactions, free of HTTP framework code: each takes a parsed request and returns
 * a status, headers and a body, or throws {@link FhirError}. See https://hl7.org/fhir/R4/http.html.
 */
import { randomUUID } from 'node:crypto';
import type { Parameters, ParametersParameter } from '@medplum/fhirtypes';
import { canonicalStringify, isJsonObject, parseFhirJson, FhirJsonError } from './json.ts';
import type { FhirJsonObject } from './json.ts';
import { badRequest, gone, notFound, preconditionFailed, unprocessable, unsupportedMediaType } from './outcomes.ts';
import { FHIR_ID, isKnownResourceType, validateFhirResource } from './validate.ts';
import { capabilityStatement } from './capability.ts';
import { UnknownVersionError } from '../merge/replica.ts';
import type { Replica } from '../merge/replica.ts';
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
}

/** Called with every local Yjs update, to gossip it (src/tide). */
export type UpdateSink = (key: string, update: Uint8Array) => void;

const FHIR_MEDIA = /^application\/(fhir\+)?json\b/i;

/** The REST interactions of one node. */
export class FhirService {
  private readonly replica: Replica;
  private readonly sink: UpdateSink;
  private readonly nodeId: string;

  /**
   * @param replica - the node's merge engine.
   * @param sink - receives each local update for gossip.
   */
  constructor(replica: Replica, sink: UpdateSink) {
    this.replica = replica;
    this.sink = sink;
    this.nodeId = replica.nodeId;
  }

  /** GET /metadata */
  metadata(baseUrl: string): FhirResult {
    return { status: 200, headers: {}, body: capabilityStatement(baseUrl, this.nodeId) };
  }

  /** GET [type]/[id] — 404 unknown, 410 deleted. */
  read(type: string, id: string): FhirResult {
    const v = this.currentOr404(type, id);
    if (v.deleted) throw gone(`${type}/${id} was deleted (version ${v.versionId})`);
    return this.versionResult(200, v);
  }

  /** GET [type]/[id]/_history/[vid] */
  vread(type: string, id: string, vid: string): FhirResult {
    this.checkTypeAndId(type, id);
    const v = this.replica.version(`${type}/${id}`, vid);
    if (!v) throw notFound(`Version ${vid} of ${type}/${id} not found`);
    if (v.deleted) throw gone(`Version ${vid} of ${type}/${id} is a deletion`);
    return this.versionResult(200, v);
  }

  /** GET [type]/[id]/_history — a history Bundle, newest first (https://hl7.org/fhir/R4/http.html#history). */
  history(type: string, id: string, baseUrl: string): FhirResult {
    this.currentOr404(type, id);
    const versions = this.replica.history(`${type}/${id}`);
    // Bodies are parsed losslessly and re-serialized canonically, so decimals keep their lexical form.
    const bundle = {
      resourceType: 'Bundle',
      type: 'history',
      total: versions.length,
      entry: versions.map((v) => ({
        fullUrl: `${baseUrl}/${type}/${id}`,
        ...(v.body ? { resource: parseFhirJson(v.body) } : {}),
        request: { method: v.deleted ? 'DELETE' : 'PUT', url: `${type}/${id}` },
        response: { status: v.deleted ? '204' : '200', etag: `W/"${v.versionId}"`, lastModified: v.lastUpdated },
      })),
    };
    const body = canonicalStringify(bundle);
    return { status: 200, headers: {}, body };
  }

  /** POST [type] — the server assigns the id (https://hl7.org/fhir/R4/http.html#create). */
  create(req: WriteRequest): FhirResult {
    const body = this.parseBody(req);
    const id = randomUUID();
    body.id = id;
    return this.write(req.type, id, body, req, true);
  }

  /** PUT [type]/[id] — update, or create with the client's id (https://hl7.org/fhir/R4/http.html#update). */
  update(req: WriteRequest & { id: string }): FhirResult {
    const body = this.parseBody(req);
    if (body.id === undefined) throw badRequest('Resource id is required in the body of an update', ['id']);
    if (body.id !== req.id) throw badRequest(`Resource id ${String(body.id)} does not match the URL id ${req.id}`, ['id']);
    return this.write(req.type, req.id, body, req, false);
  }

  /** DELETE [type]/[id] — 204; deleting an absent or deleted resource is also 204. */
  delete(type: string, id: string, author?: string): FhirResult {
    this.checkTypeAndId(type, id);
    const key = `${type}/${id}`;
    const cur = this.replica.current(key);
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

  private write(type: string, id: string, body: FhirJsonObject, req: WriteRequest, isCreate: boolean): FhirResult {
    const issues = validateFhirResource(body);
    if (issues.length > 0) throw unprocessable(issues);
    const key = `${type}/${id}`;
    let baseVersionId: string | undefined;
    if (!isCreate) {
      if (req.ifMatch !== undefined) {
        const m = /^(W\/)?"([^"]+)"$/.exec(req.ifMatch.trim());
        if (!m) throw badRequest('If-Match must be an ETag such as W/"12"');
        baseVersionId = m[2];
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
    return this.versionResult(status, res.version, status === 201 ? { Location: `${type}/${id}/_history/${res.version.versionId}` } : {});
  }

  private versionResult(status: number, v: VersionRecord, extra: Record<string, string> = {}): FhirResult {
    return {
      status,
      headers: { ETag: `W/"${v.versionId}"`, 'Last-Modified': new Date(v.lastUpdated).toUTCString(), ...extra },
      ...(v.body ? { body: v.body } : {}),
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
    if (!req.contentType || !FHIR_MEDIA.test(req.contentType)) throw unsupportedMediaType('Content-Type must be application/fhir+json');
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
