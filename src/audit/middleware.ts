/**
 * Express middleware recording one AuditEvent per FHIR interaction (src/audit/events.ts
 * `restEvent`): read, vread, search, history, create, update, patch, delete, batch/transaction and
 * operations, with the HTTP outcome, the caller from `res.locals.auth` (src/auth), the resource
 * type and id, and the patient when known.
 *
 * Mount it on the FHIR base *after* the authorization middleware (requests it refuses are recorded
 * by {@link auditAuthDecisions} through its `onDecision` hook, once) and before the AuditEvent
 * router and the FHIR router:
 *
 * ```ts
 * app.use('/fhir', auth.middleware({ …, onDecision: auditAuthDecisions(trail, nodeId) }));
 * app.use('/fhir', auditMiddleware({ trail, nodeId }));
 * app.use('/fhir', auditEventRouter({ trail }));
 * app.use('/fhir', fhirRouter(service, log));
 * ```
 *
 * The event is built when the response has been sent (`finish`, or `close` when the client went
 * away), so it adds no latency to the answer; the trail writes it within its flush interval.
 *
 * Where the patient comes from: the token's patient context; the id of a Patient read/written; a
 * `patient`/`subject` search parameter naming one patient (or `_id` on Patient); the `subject`,
 * `patient` or `beneficiary` reference of a create/update body. A read of another type does not
 * look into the response, so its patient is known only through the token.
 *
 * Ids taken from the URL, the query or the body are recorded only for answers below 400: an id the
 * server never accepted could be anything a client typed (a name, a social security number). A
 * refused or failed request keeps its resource type, interaction and caller, not the id.
 */
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import type { Logger } from 'pino';
import type { AccessContext } from '../auth/token.ts';
import type { AuthDecisionEvent } from '../auth/middleware.ts';
import { classifyFhirRequest } from '../auth/request.ts';
import type { FhirRequestInfo } from '../auth/request.ts';
import { parseSearchQuery } from '../fhir/search.ts';
import { authFailureEvent, restEvent, safeId, safeReference } from './events.ts';
import type { CallerIdentity, RestInteraction } from './events.ts';
import type { AuditEvent } from './types.ts';

/** Where events go (an {@link AuditTrail}). */
export interface AuditRecorder {
  record(event: AuditEvent): void;
}

/** Options of {@link auditMiddleware}. */
export interface AuditMiddlewareOptions {
  trail: AuditRecorder;
  /** This node's id (observer, destination agent). */
  nodeId: string;
  /** Most `Type/id` references of a Bundle's entries named in its event. Default 1000. */
  maxBundleReferences?: number;
  /** Bodies larger than this are not parsed for patient references / Bundle entries, bytes. Default 4 MiB. */
  maxInspectBytes?: number;
  /** Failures to record (never event content). */
  log?: Logger;
  /** Clock; tests only. */
  now?: () => Date;
}

function rawQuery(url: string): string {
  const i = url.indexOf('?');
  return i < 0 ? '' : url.slice(i + 1);
}

/** The caller of a verified token, ids only. */
export function callerOf(ctx: AccessContext | undefined): CallerIdentity | undefined {
  if (!ctx) return undefined;
  return { issuer: ctx.issuer, subject: ctx.subject, clientId: ctx.clientId, jti: ctx.jti, fhirUser: ctx.fhirUser };
}

/** The restful-interaction code of a classified request. */
function interactionOf(info: FhirRequestInfo, bundleType: string | undefined): { interaction: RestInteraction | undefined; conditional: boolean } {
  if (info.kind === 'batch') return { interaction: bundleType === 'transaction' ? 'transaction' : 'batch', conditional: false };
  if (info.kind !== 'interaction') return { interaction: undefined, conditional: false };
  switch (info.interaction) {
    case 'conditional-create':
      return { interaction: 'create', conditional: true };
    case 'conditional-update':
      return { interaction: 'update', conditional: true };
    case 'conditional-delete':
      return { interaction: 'delete', conditional: true };
    case 'operation':
      return { interaction: info.operation === '_history' ? 'history-system' : 'operation', conditional: false };
    default:
      return { interaction: info.interaction, conditional: false };
  }
}

/** `Type/id` of a `Location`/`Content-Location` header (`…/Type/id/_history/v`). */
function locationReference(value: unknown): { type: string; id: string } | undefined {
  if (typeof value !== 'string') return undefined;
  const m = /([A-Z][A-Za-z]{0,63})\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[A-Za-z0-9\-.]{1,64})?\/?$/.exec(value);
  return m ? { type: m[1]!, id: m[2]! } : undefined;
}

const PATIENT_ELEMENTS = ['subject', 'patient', 'beneficiary'] as const;

function patientOfResource(resource: unknown): string | undefined {
  if (typeof resource !== 'object' || resource === null) return undefined;
  const r = resource as Record<string, unknown>;
  if (r['resourceType'] === 'Patient') return safeId(r['id']);
  for (const el of PATIENT_ELEMENTS) {
    const ref = (r[el] as { reference?: unknown } | undefined)?.reference;
    if (typeof ref === 'string' && ref.startsWith('Patient/')) {
      const id = safeReference(ref)?.slice(8);
      if (id) return id;
    }
  }
  return undefined;
}

function parseBody(body: unknown, max: number): unknown {
  if (typeof body !== 'string' || body.length === 0 || body.length > max) return undefined;
  try {
    return JSON.parse(body) as unknown;
  } catch {
    return undefined;
  }
}

/** The patient a search names: exactly one `patient`/`subject` value, or `_id` on Patient. */
function patientOfSearch(type: string | undefined, params: ReadonlyArray<readonly [string, string]>): string | undefined {
  const found = new Set<string>();
  for (const [name, value] of params) {
    if (name === 'patient' || name === 'subject' || (type === 'Patient' && name === '_id')) {
      for (const v of value.split(',')) {
        const ref = name === '_id' ? safeReference(v, 'Patient') : safeReference(v, name === 'patient' ? 'Patient' : undefined);
        if (ref?.startsWith('Patient/')) found.add(ref.slice(8));
      }
    }
  }
  return found.size === 1 ? [...found][0] : undefined;
}

/**
 * Builds the middleware (see module doc).
 * @param opts - see {@link AuditMiddlewareOptions}.
 * @returns An express handler that calls `next()` at once and records when the answer is sent.
 */
export function auditMiddleware(opts: AuditMiddlewareOptions): RequestHandler {
  const maxRefs = opts.maxBundleReferences ?? 1000;
  const maxInspect = opts.maxInspectBytes ?? 4 * 1024 * 1024;
  const now = opts.now ?? (() => new Date());
  return (req: Request, res: Response, next: NextFunction) => {
    const started = performance.now();
    const path = req.path;
    const query = rawQuery(req.originalUrl);
    const info = classifyFhirRequest(req.method, path, query !== '', (req.get('if-none-exist') ?? '') !== '');
    // The CapabilityStatement and discovery are public and hold no PHI: not recorded.
    if (info.kind === 'public') return next();
    let done = false;
    const finish = (aborted: boolean): void => {
      if (done) return;
      done = true;
      try {
        const status = aborted && !res.headersSent ? 0 : res.statusCode;
        const accepted = status > 0 && status < 400;
        const ctx = res.locals.auth as AccessContext | undefined;
        const i = info.kind === 'interaction' ? info : undefined;
        const body = info.kind === 'batch' || i?.interaction === 'create' || i?.interaction === 'conditional-create' || i?.interaction === 'update' || i?.interaction === 'conditional-update' ? parseBody(req.body, maxInspect) : undefined;
        const bundleType = info.kind === 'batch' ? (body as { type?: unknown } | undefined)?.type : undefined;
        const { interaction, conditional } = interactionOf(info, typeof bundleType === 'string' ? bundleType : undefined);
        const type = i?.resourceType;
        let id = i?.id;
        if (i && (i.interaction === 'create' || i.interaction === 'conditional-create' || i.interaction === 'conditional-update') && status < 400) {
          const loc = locationReference(res.getHeader('location') ?? res.getHeader('content-location'));
          if (loc && loc.type === type) id = loc.id;
        }
        const params = interaction === 'search-type' || interaction === 'search-system' || interaction === 'history-type' || interaction === 'history-system' ? parseSearchQuery(query) : [];
        let patient = ctx?.patient;
        if (accepted && !patient) {
          if (type === 'Patient' && id) patient = id;
          else if (params.length > 0) patient = patientOfSearch(type, params);
          else if (body !== undefined && info.kind !== 'batch') patient = patientOfResource(body);
        }
        let bundle: { entries: number; references: string[] } | undefined;
        if (info.kind === 'batch') {
          const entries = (body as { entry?: unknown } | undefined)?.entry;
          const list = Array.isArray(entries) ? entries : [];
          const references: string[] = [];
          if (accepted) {
            for (const e of list) {
              if (references.length >= maxRefs) break;
              const url = (e as { request?: { url?: unknown } } | null)?.request?.url;
              const ref = typeof url === 'string' ? safeReference(url.split('?')[0]!.replace(/^\/+/, '')) : undefined;
              if (ref) references.push(ref);
              const p = patientOfResource((e as { resource?: unknown } | null)?.resource);
              if (p && references.length < maxRefs) references.push(`Patient/${p}`);
            }
          }
          bundle = { entries: list.length, references };
        }
        if (!accepted) id = undefined;
        opts.trail.record(
          restEvent({
            nodeId: opts.nodeId,
            at: now(),
            interaction,
            status,
            resourceType: type,
            id,
            vid: accepted ? i?.vid : undefined,
            operation: i?.operation,
            patient,
            conditional,
            searchParams: params.map(([n]) => n),
            bundle,
            caller: callerOf(ctx),
            clientAddress: req.ip ?? req.socket.remoteAddress,
            aborted,
            durationMs: performance.now() - started,
          }),
        );
      } catch (err) {
        opts.log?.error({ err: { name: (err as Error)?.name, code: (err as { code?: string })?.code } }, 'audit: event not recorded');
      }
    };
    res.once('finish', () => finish(false));
    res.once('close', () => finish(!res.writableFinished));
    next();
  };
}

/**
 * The `onDecision` hook of the authorization middleware (src/auth/middleware.ts): records every
 * refused request (401, 403, and the 400/404/405/413/503 the auth layer answers itself) as an
 * {@link authFailureEvent}. Allowed requests are left to {@link auditMiddleware}.
 * @param trail - where to record.
 * @param nodeId - this node's id.
 * @param now - clock; tests only.
 * @returns The hook. It never throws (a failure to record is logged by the trail).
 */
export function auditAuthDecisions(trail: AuditRecorder, nodeId: string, now: () => Date = () => new Date()): (event: AuthDecisionEvent) => void {
  return (d) => {
    if (d.allowed) return;
    try {
      const status = d.status ?? 500;
      trail.record(
        authFailureEvent({
          nodeId,
          at: now(),
          status,
          reason: d.reason,
          interaction: d.interaction,
          resourceType: d.resourceType,
          caller: { subject: d.subject, clientId: d.clientId, jti: d.jti },
          patient: d.patient,
        }),
      );
    } catch {
      // The trail only throws once closed (node shutting down): nothing more to do.
    }
  };
}
