/**
 * Builders of the AuditEvents tidegate writes (FHIR R4, https://hl7.org/fhir/R4/auditevent.html),
 * following IHE BALP (https://profiles.ihe.net/ITI/BALP/) for RESTful interactions:
 *
 * - `type` `rest` (R4 audit-event-type), `subtype` the R4 restful-interaction code;
 * - agents: the user (BALP `UserOauthAgent`, requestor; `who.identifier` = token `iss` | `sub`,
 *   `who.reference` = `fhirUser`, `policy` = token `jti`), the client application (DICOM 110153
 *   "Source Role ID"; `who.identifier` = `client_id`, `network` = its IP address), this node
 *   (DICOM 110152 "Destination Role ID");
 * - entities: the patient (audit-entity-type 1 Person, object-role 1 Patient, `what` = `Patient/<id>`)
 *   when known, the resource (2 System Object, 4 Domain Resource, `what` = `Type/id[/_history/vid]`),
 *   or for a search the query (2, 24 Query) with the *names* of its parameters only.
 *
 * PHI rule: every string put in an event is an id, a code, a count or an instant. Ids are checked
 * against the FHIR id syntax and dropped when they do not match (a client could put a name in a
 * URL); search parameter values, request and response bodies, `X-Tidegate-Author` and any other
 * free text are never recorded. `outcomeDesc` holds `HTTP <status>` and codes only.
 */
import { randomUUID } from 'node:crypto';
import type { AuditAction, AuditEvent, AuditEventAgent, AuditEventEntity, AuditOutcome, Coding, Reference } from './types.ts';
import {
  AUDIT_ENTITY_TYPE,
  AUDIT_EVENT_TYPE,
  AUTH_REASON_SYSTEM,
  BALP_USER_AGENT_TYPES,
  CLIENT_ID_SYSTEM,
  DCM,
  KEY_ID_SYSTEM,
  NODE_SYSTEM,
  OBJECT_ROLE,
  RESTFUL_INTERACTION,
  SECURITY_SOURCE_TYPE,
  TIDEGATE_EVENT_SYSTEM,
} from './types.ts';

const FHIR_ID = /^[A-Za-z0-9\-.]{1,64}$/;
const RESOURCE_TYPE = /^[A-Z][A-Za-z]{0,63}$/;
const OPERATION = /^\$[A-Za-z][A-Za-z0-9\-]{0,63}$/;
const PARAM_NAME = /^[A-Za-z_][A-Za-z0-9_\-.:]{0,63}$/;
/** Token claims and codes: printable ASCII without spaces, bounded. */
const TOKEN_TEXT = /^[\x21-\x7e]{1,256}$/;
const KID = /^[A-Za-z0-9_-]{1,64}$/;

/** `x` when it is a FHIR id, else undefined. */
export const safeId = (x: unknown): string | undefined => (typeof x === 'string' && FHIR_ID.test(x) ? x : undefined);
/** `x` when it is a resource type name, else undefined. */
export const safeType = (x: unknown): string | undefined => (typeof x === 'string' && RESOURCE_TYPE.test(x) ? x : undefined);
const safeText = (x: unknown): string | undefined => (typeof x === 'string' && TOKEN_TEXT.test(x) ? x : undefined);

/**
 * A relative reference `Type/id` when both parts are well-formed (`Patient/p1`, or `p1` with
 * `defaultType`); absolute URLs and anything else give undefined.
 */
export function safeReference(x: unknown, defaultType?: string): string | undefined {
  if (typeof x !== 'string') return undefined;
  const parts = x.split('/');
  if (parts.length === 1 && defaultType) return safeId(parts[0]) ? `${defaultType}/${parts[0]}` : undefined;
  if (parts.length === 2 && safeType(parts[0]) && safeId(parts[1])) return x;
  if (parts.length === 4 && parts[2] === '_history' && safeType(parts[0]) && safeId(parts[1]) && safeId(parts[3])) return `${parts[0]}/${parts[1]}`;
  return undefined;
}

/** The Reference of a tidegate node. */
export function nodeReference(nodeId: string): Reference {
  return { identifier: { system: NODE_SYSTEM, value: nodeId } };
}

function source(nodeId: string): AuditEvent['source'] {
  return { site: nodeId, observer: nodeReference(nodeId), type: [{ system: SECURITY_SOURCE_TYPE, code: '4', display: 'Application Server' }] };
}

const SOURCE_ROLE: Coding = { system: DCM, code: '110153', display: 'Source Role ID' };
const DESTINATION_ROLE: Coding = { system: DCM, code: '110152', display: 'Destination Role ID' };

function serverAgent(nodeId: string): AuditEventAgent {
  return { type: { coding: [DESTINATION_ROLE] }, who: nodeReference(nodeId), requestor: false };
}

/** The identity of the caller, from a verified access token (src/auth `AccessContext`), ids only. */
export interface CallerIdentity {
  issuer?: string | undefined;
  subject?: string | undefined;
  clientId?: string | undefined;
  jti?: string | undefined;
  fhirUser?: string | undefined;
}

/**
 * BALP agents of a REST call: the user (when the token names one), the client application, and
 * this node. Strings that are not plain tokens (spaces, control characters, > 256 chars) are left out.
 */
export function callerAgents(nodeId: string, caller: CallerIdentity | undefined, clientAddress: string | undefined): AuditEventAgent[] {
  const agents: AuditEventAgent[] = [];
  const sub = safeText(caller?.subject);
  const jti = safeText(caller?.jti);
  const fhirUser = safeReference(caller?.fhirUser);
  if (sub !== undefined || fhirUser !== undefined) {
    const who: Reference = {};
    if (fhirUser) who.reference = fhirUser;
    if (sub !== undefined) who.identifier = { system: safeText(caller?.issuer) ?? 'urn:tidegate:oauth:subject', value: sub };
    agents.push({ type: { coding: [{ system: BALP_USER_AGENT_TYPES, code: 'UserOauthAgent', display: 'User OAuth Agent participant' }] }, who, requestor: true, ...(jti ? { policy: [jti] } : {}) });
  }
  const clientId = safeText(caller?.clientId);
  const address = safeText(clientAddress);
  agents.push({
    type: { coding: [SOURCE_ROLE] },
    ...(clientId ? { who: { identifier: { system: CLIENT_ID_SYSTEM, value: clientId } } } : {}),
    requestor: agents.length === 0,
    ...(agents.length === 0 && jti ? { policy: [jti] } : {}),
    ...(address ? { network: { address, type: '2' as const } } : {}),
  });
  agents.push(serverAgent(nodeId));
  return agents;
}

/**
 * The facts entity of an event: a System Object without `what`, whose `detail`s hold codes and
 * counts of the request (`httpStatus`, `operation`, `entries`, `durationMs`, …).
 */
export function factsEntity(detail: { type: string; valueString: string }[]): AuditEventEntity {
  return { type: { system: AUDIT_ENTITY_TYPE, code: '2', display: 'System Object' }, detail };
}

/** The BALP patient entity of `Patient/<id>`. */
export function patientEntity(patientId: string): AuditEventEntity {
  return {
    what: { reference: `Patient/${patientId}` },
    type: { system: AUDIT_ENTITY_TYPE, code: '1', display: 'Person' },
    role: { system: OBJECT_ROLE, code: '1', display: 'Patient' },
  };
}

/** The BALP data entity of a resource (`Type/id`, optionally a version). */
export function resourceEntity(reference: string, vid?: string): AuditEventEntity {
  return {
    what: { reference: vid ? `${reference}/_history/${vid}` : reference },
    type: { system: AUDIT_ENTITY_TYPE, code: '2', display: 'System Object' },
    role: { system: OBJECT_ROLE, code: '4', display: 'Domain Resource' },
  };
}

/** The restful-interaction codes used as `subtype` (http://hl7.org/fhir/R4/codesystem-restful-interaction.html). */
export type RestInteraction =
  | 'read'
  | 'vread'
  | 'update'
  | 'patch'
  | 'delete'
  | 'history-instance'
  | 'history-type'
  | 'history-system'
  | 'create'
  | 'search-type'
  | 'search-system'
  | 'capabilities'
  | 'transaction'
  | 'batch'
  | 'operation';

const ACTION: Record<RestInteraction, AuditAction> = {
  read: 'R',
  vread: 'R',
  'history-instance': 'R',
  'history-type': 'R',
  'history-system': 'R',
  update: 'U',
  patch: 'U',
  delete: 'D',
  create: 'C',
  'search-type': 'E',
  'search-system': 'E',
  capabilities: 'E',
  transaction: 'E',
  batch: 'E',
  operation: 'E',
};

/** AuditEvent.outcome of an HTTP status: < 400 success (0), 4xx minor failure (4), 5xx serious failure (8). */
export function outcomeOfStatus(status: number): AuditOutcome {
  if (status >= 500) return '8';
  if (status >= 400) return '4';
  return '0';
}

/** What the REST middleware knows of one FHIR interaction (ids are checked again here). */
export interface RestEventInput {
  nodeId: string;
  at: Date;
  /** Undefined for a request that names no interaction (answered 404/405). */
  interaction: RestInteraction | undefined;
  /** HTTP status answered (0 when the connection closed before an answer). */
  status: number;
  resourceType?: string | undefined;
  id?: string | undefined;
  vid?: string | undefined;
  /** `$name` of an operation. */
  operation?: string | undefined;
  /** The patient's logical id, when known. */
  patient?: string | undefined;
  /** Conditional create/update/delete. */
  conditional?: boolean;
  /** Names (with modifiers) of the search parameters; never their values. */
  searchParams?: readonly string[] | undefined;
  /** A Bundle's entry count and the `Type/id` its entries name (bounded by the caller). */
  bundle?: { entries: number; references: readonly string[] } | undefined;
  caller?: CallerIdentity | undefined;
  clientAddress?: string | undefined;
  /** The client went away before the answer was sent. */
  aborted?: boolean;
  /** Response time, ms. */
  durationMs?: number;
}

/**
 * The BALP-style AuditEvent of one RESTful interaction (see module doc).
 * @param i - see {@link RestEventInput}.
 * @returns A new AuditEvent with a random UUID id.
 */
export function restEvent(i: RestEventInput): AuditEvent {
  const type = safeType(i.resourceType);
  const id = safeId(i.id);
  const vid = safeId(i.vid);
  const patient = safeId(i.patient);
  const entities: AuditEventEntity[] = [];
  if (patient) entities.push(patientEntity(patient));
  if (type && id && !(type === 'Patient' && id === patient && !vid)) entities.push(resourceEntity(`${type}/${id}`, vid));
  const it = i.interaction;
  if (it === 'search-type' || it === 'search-system' || ((it === 'history-type' || it === 'history-system') && !id)) {
    const names = (i.searchParams ?? []).map((n) => (PARAM_NAME.test(n) ? n : '?'));
    entities.push({
      type: { system: AUDIT_ENTITY_TYPE, code: '2', display: 'System Object' },
      role: { system: OBJECT_ROLE, code: '24', display: 'Query' },
      detail: [...(type ? [{ type: 'resourceType', valueString: type }] : []), { type: 'parameters', valueString: [...new Set(names)].sort().join(',') }],
    });
  }
  if (i.bundle) {
    for (const ref of new Set(i.bundle.references)) {
      const r = safeReference(ref);
      if (!r) continue;
      if (r.startsWith('Patient/')) {
        if (r.slice(8) !== patient) entities.push(patientEntity(r.slice(8)));
      } else entities.push(resourceEntity(r));
    }
  }
  const detail: { type: string; valueString: string }[] = [{ type: 'httpStatus', valueString: String(i.status) }];
  if (i.conditional) detail.push({ type: 'conditional', valueString: 'true' });
  if (i.aborted) detail.push({ type: 'aborted', valueString: 'true' });
  if (i.durationMs !== undefined && Number.isFinite(i.durationMs)) detail.push({ type: 'durationMs', valueString: String(Math.round(i.durationMs)) });
  if (i.bundle) detail.push({ type: 'entries', valueString: String(i.bundle.entries) });
  const op = typeof i.operation === 'string' && OPERATION.test(i.operation) ? i.operation : undefined;
  if (op) detail.push({ type: 'operation', valueString: op });
  if (type && !id && !entities.some((e) => e.role?.code === '24')) detail.push({ type: 'resourceType', valueString: type });
  entities.push(factsEntity(detail));
  const subtype: Coding[] = it ? [{ system: RESTFUL_INTERACTION, code: it }] : [];
  return {
    resourceType: 'AuditEvent',
    id: randomUUID(),
    type: { system: AUDIT_EVENT_TYPE, code: 'rest', display: 'Restful Operation' },
    subtype,
    action: it ? ACTION[it] : 'E',
    recorded: i.at.toISOString(),
    outcome: outcomeOfStatus(i.status === 0 ? 499 : i.status),
    outcomeDesc: i.aborted ? `HTTP ${i.status} (client went away)` : `HTTP ${i.status}`,
    agent: callerAgents(i.nodeId, i.caller, i.clientAddress),
    source: source(i.nodeId),
    entity: entities,
  };
}

/** A refusal by the authorization layer (src/auth/middleware.ts `AuthDecisionEvent`, fields used here). */
export interface AuthFailureInput {
  nodeId: string;
  at: Date;
  status: number;
  /** `AuthErrorReason` (e.g. `bad_signature`, `insufficient_scope`), when an authorization failure. */
  reason?: string | undefined;
  /** The interaction as the auth layer classified it (`read`, `search-type`, `batch`, …). */
  interaction?: string | undefined;
  resourceType?: string | undefined;
  id?: string | undefined;
  caller?: CallerIdentity | undefined;
  /** The token's patient context. */
  patient?: string | undefined;
}

/**
 * The AuditEvent of a request refused before the FHIR layer saw it: 401 → DICOM 110114 "User
 * Authentication" / 110122 "Login" failed; 403 and other refusals → `rest` with the interaction as
 * subtype; both with the refusal reason as a subtype in {@link AUTH_REASON_SYSTEM} and outcome 4
 * (8 for 5xx, e.g. the key set being unreachable).
 * @returns A new AuditEvent with a random UUID id.
 */
export function authFailureEvent(i: AuthFailureInput): AuditEvent {
  const reason = safeText(i.reason);
  const interaction = safeText(i.interaction);
  const authentication = i.status === 401;
  const subtype: Coding[] = authentication ? [{ system: DCM, code: '110122', display: 'Login' }] : interaction ? [{ system: RESTFUL_INTERACTION, code: interaction === 'conditional-create' ? 'create' : interaction === 'conditional-update' ? 'update' : interaction === 'conditional-delete' ? 'delete' : interaction }] : [];
  if (reason) subtype.push({ system: AUTH_REASON_SYSTEM, code: reason });
  const entities: AuditEventEntity[] = [];
  const patient = safeId(i.patient);
  if (patient) entities.push(patientEntity(patient));
  const type = safeType(i.resourceType);
  const id = safeId(i.id);
  if (type && id && !(type === 'Patient' && id === patient)) entities.push(resourceEntity(`${type}/${id}`));
  entities.push(factsEntity([{ type: 'httpStatus', valueString: String(i.status) }, ...(type && !id ? [{ type: 'resourceType', valueString: type }] : []), ...(interaction ? [{ type: 'interaction', valueString: interaction }] : [])]));
  return {
    resourceType: 'AuditEvent',
    id: randomUUID(),
    type: authentication ? { system: DCM, code: '110114', display: 'User Authentication' } : { system: AUDIT_EVENT_TYPE, code: 'rest', display: 'Restful Operation' },
    subtype,
    action: 'E',
    recorded: i.at.toISOString(),
    outcome: outcomeOfStatus(i.status),
    outcomeDesc: `HTTP ${i.status}${reason ? ` ${reason}` : ''}`,
    agent: callerAgents(i.nodeId, i.caller, undefined),
    source: source(i.nodeId),
    entity: entities,
  };
}

/**
 * The AuditEvent of remote updates merged into this node's replicas (a Tide inbox message applied):
 * DICOM 110107 "Import", subtype `merge` in {@link TIDEGATE_EVENT_SYSTEM}, action U; agents the
 * sending node (Source Role ID, requestor) and this node; one entity per resource key (Patient keys
 * as the patient entity).
 * @param o.keys - the `Type/id` keys merged (malformed ones are counted, not named).
 * @param o.refused - keys refused (e.g. crypto-shredded here), counted only.
 * @returns A new AuditEvent with a random UUID id.
 */
export function mergeEvent(o: { nodeId: string; fromNode: string | undefined; keys: readonly string[]; refused?: number; at: Date; outcome?: AuditOutcome }): AuditEvent {
  const entities: AuditEventEntity[] = [];
  let unnamed = 0;
  for (const key of o.keys) {
    const ref = safeReference(key);
    if (!ref) unnamed++;
    else if (ref.startsWith('Patient/')) entities.push(patientEntity(ref.slice(8)));
    else entities.push(resourceEntity(ref));
  }
  const from = safeText(o.fromNode);
  return {
    resourceType: 'AuditEvent',
    id: randomUUID(),
    type: { system: DCM, code: '110107', display: 'Import' },
    subtype: [{ system: TIDEGATE_EVENT_SYSTEM, code: 'merge', display: 'remote updates merged' }],
    action: 'U',
    recorded: o.at.toISOString(),
    outcome: o.outcome ?? '0',
    outcomeDesc: `merged ${o.keys.length} resource update(s)`,
    agent: [{ type: { coding: [SOURCE_ROLE] }, ...(from ? { who: nodeReference(from) } : {}), requestor: true }, serverAgent(o.nodeId)],
    source: source(o.nodeId),
    entity: [
      ...entities,
      factsEntity([
        { type: 'resources', valueString: String(o.keys.length) },
        { type: 'refused', valueString: String(o.refused ?? 0) },
        ...(unnamed > 0 ? [{ type: 'unnamed', valueString: String(unnamed) }] : []),
      ]),
    ],
  };
}

/** Key operations of `tidegate keys` (docs/envelope.md §7) and `keys rewrap` (docs/storage.md). */
export type KeyOperation = 'generate' | 'rotate' | 'retire' | 'rewrap';

/** A key named in a key-operation event: public facts only (never `priv`, never `pub`). */
export interface KeyFacts {
  kid: string;
  alg?: string;
  use?: string;
  status?: string;
}

/**
 * The AuditEvent of a key operation: DICOM 110113 "Security Alert" with subtypes DICOM 110129
 * "Security Configuration" and the operation in {@link TIDEGATE_EVENT_SYSTEM} (`key-generate`,
 * `key-rotate`, `key-retire`, `key-rewrap`); action C/U/D/U; one entity per key by key id (object-role
 * 13 "Security Resource") with `alg`, `use`, `status`. Key material is never accepted: only the
 * fields of {@link KeyFacts} are read.
 * @param o.requestor - who ran it (e.g. `cli:<user>`), a token without spaces.
 * @param o.counts - e.g. `{ rewrapped: 12 }` for rewrap.
 * @returns A new AuditEvent with a random UUID id.
 */
export function keyOperationEvent(o: { nodeId: string; op: KeyOperation; keys: readonly KeyFacts[]; requestor?: string; at: Date; outcome?: AuditOutcome; counts?: Record<string, number> }): AuditEvent {
  const action: Record<KeyOperation, AuditAction> = { generate: 'C', rotate: 'U', retire: 'D', rewrap: 'U' };
  const requestor = safeText(o.requestor) ?? 'operator';
  return {
    resourceType: 'AuditEvent',
    id: randomUUID(),
    type: { system: DCM, code: '110113', display: 'Security Alert' },
    subtype: [
      { system: DCM, code: '110129', display: 'Security Configuration' },
      { system: TIDEGATE_EVENT_SYSTEM, code: `key-${o.op}` },
    ],
    action: action[o.op],
    recorded: o.at.toISOString(),
    outcome: o.outcome ?? '0',
    outcomeDesc: `key ${o.op}`,
    agent: [{ who: { identifier: { system: 'urn:tidegate:operator', value: requestor } }, requestor: true }, serverAgent(o.nodeId)],
    source: source(o.nodeId),
    entity: [
      ...o.keys
        .filter((k) => typeof k.kid === 'string' && KID.test(k.kid))
        .map(
          (k): AuditEventEntity => ({
            what: { identifier: { system: KEY_ID_SYSTEM, value: k.kid } },
            type: { system: AUDIT_ENTITY_TYPE, code: '2', display: 'System Object' },
            role: { system: OBJECT_ROLE, code: '13', display: 'Security Resource' },
            detail: (['alg', 'use', 'status'] as const).flatMap((f) => (safeText(k[f]) ? [{ type: f, valueString: k[f]! }] : [])),
          }),
        ),
      ...(o.counts
        ? [
            factsEntity(Object.entries(o.counts).filter(([k, v]) => /^[A-Za-z]{1,32}$/.test(k) && Number.isFinite(v)).map(([k, v]) => ({ type: k, valueString: String(v) }))),
          ]
        : []),
    ],
  };
}

/**
 * Start or stop of a node (DICOM 110100 "Application Activity", subtype 110120 "Application Start" /
 * 110121 "Application Stop"); a start names the node's current key ids, so a key change made without
 * an audited `tidegate keys` command still shows in the trail.
 * @returns A new AuditEvent with a random UUID id.
 */
export function lifecycleEvent(o: { nodeId: string; what: 'start' | 'stop'; at: Date; keys?: readonly KeyFacts[] }): AuditEvent {
  const start = o.what === 'start';
  return {
    resourceType: 'AuditEvent',
    id: randomUUID(),
    type: { system: DCM, code: '110100', display: 'Application Activity' },
    subtype: [start ? { system: DCM, code: '110120', display: 'Application Start' } : { system: DCM, code: '110121', display: 'Application Stop' }],
    action: 'E',
    recorded: o.at.toISOString(),
    outcome: '0',
    outcomeDesc: start ? 'node started' : 'node stopped',
    agent: [{ ...serverAgent(o.nodeId), requestor: true }],
    source: source(o.nodeId),
    entity: (o.keys ?? [])
      .filter((k) => KID.test(k.kid))
      .map((k) => ({
        what: { identifier: { system: KEY_ID_SYSTEM, value: k.kid } },
        type: { system: AUDIT_ENTITY_TYPE, code: '2', display: 'System Object' },
        role: { system: OBJECT_ROLE, code: '13', display: 'Security Resource' },
        detail: (['alg', 'use', 'status'] as const).flatMap((f) => (safeText(k[f]) ? [{ type: f, valueString: k[f]! }] : [])),
      })),
  };
}

/**
 * A notice of the trail about itself (torn tail cut off, head mismatch, events dropped): DICOM
 * 110113 "Security Alert", subtype `code` in {@link TIDEGATE_EVENT_SYSTEM}, outcome 4.
 * @param details - `[name, value]` pairs of counts, sequence numbers and hashes.
 * @returns A new AuditEvent with a random UUID id.
 */
export function trailNoticeEvent(nodeId: string, code: string, display: string, at: Date, details: ReadonlyArray<readonly [string, string]>): AuditEvent {
  return {
    resourceType: 'AuditEvent',
    id: randomUUID(),
    type: { system: DCM, code: '110113', display: 'Security Alert' },
    subtype: [{ system: TIDEGATE_EVENT_SYSTEM, code, display }],
    action: 'E',
    recorded: at.toISOString(),
    outcome: '4',
    outcomeDesc: code,
    agent: [{ ...serverAgent(nodeId), requestor: true }],
    source: source(nodeId),
    entity: [factsEntity(details.map(([type, valueString]) => ({ type, valueString })))],
  };
}
