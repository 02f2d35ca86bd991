/**
 * The FHIR R4 AuditEvent shape written to the audit trail (https://hl7.org/fhir/R4/auditevent.html),
 * and the code systems used (R4 terminology, DICOM PS3.16 CID 400-403, IHE BALP
 * https://profiles.ihe.net/ITI/BALP/).
 *
 * Only the elements tidegate fills are typed. The free-text elements of R4 (`outcomeDesc`,
 * `entity.name`, `entity.description`, `agent.name`) are never given PHI: tidegate writes codes, ids
 * and counts only (docs/security.md "Audit trail").
 */

/** A FHIR R4 `Coding`. */
export interface Coding {
  system?: string;
  code?: string;
  display?: string;
}

/** A FHIR R4 `Identifier` (subset). */
export interface Identifier {
  system?: string;
  value?: string;
}

/** A FHIR R4 `Reference` (subset): a relative reference and/or a logical identifier. */
export interface Reference {
  reference?: string;
  identifier?: Identifier;
  display?: string;
}

/** A FHIR R4 `Extension` (the value types used here). */
export interface Extension {
  url: string;
  valueString?: string;
  valueCode?: string;
  extension?: Extension[];
}

/** `AuditEvent.agent` (https://hl7.org/fhir/R4/auditevent-definitions.html#AuditEvent.agent). */
export interface AuditEventAgent {
  type?: { coding: Coding[] };
  who?: Reference;
  altId?: string;
  requestor: boolean;
  /** BALP: the OAuth token's `jti` (IHE.BasicAudit.OAUTHaccessTokenUse). */
  policy?: string[];
  /** `type`: 1 machine name, 2 IP address, 5 URI (R4 network-type). */
  network?: { address: string; type: '1' | '2' | '3' | '4' | '5' };
}

/** One `AuditEvent.entity.detail`. */
export interface AuditEventEntityDetail {
  type: string;
  valueString: string;
}

/** `AuditEvent.entity`. */
export interface AuditEventEntity {
  what?: Reference;
  type?: Coding;
  role?: Coding;
  detail?: AuditEventEntityDetail[];
}

/** AuditEvent.action: C create, R read, U update, D delete, E execute. */
export type AuditAction = 'C' | 'R' | 'U' | 'D' | 'E';
/** AuditEvent.outcome: 0 success, 4 minor failure, 8 serious failure, 12 major failure. */
export type AuditOutcome = '0' | '4' | '8' | '12';

/** A FHIR R4 AuditEvent as stored in the trail. */
export interface AuditEvent {
  resourceType: 'AuditEvent';
  id: string;
  meta?: { profile?: string[] };
  /** The chain extension ({@link AUDIT_CHAIN_URL}) is added by the trail when the event is written. */
  extension?: Extension[];
  type: Coding;
  subtype?: Coding[];
  action?: AuditAction;
  /** ISO 8601 instant, ms precision, UTC. */
  recorded: string;
  outcome?: AuditOutcome;
  /** Codes only (e.g. `HTTP 404`), never PHI. */
  outcomeDesc?: string;
  agent: AuditEventAgent[];
  source: { site?: string; observer: Reference; type?: Coding[] };
  entity?: AuditEventEntity[];
}

/** Extension on every stored event: its place in the hash chain (`sequence`, `previousHash`). */
export const AUDIT_CHAIN_URL = 'urn:tidegate:audit:chain';
/** `previousHash` of the first event of a trail (no predecessor): 64 zeros. */
export const GENESIS_HASH = '0'.repeat(64);

export const DCM = 'http://dicom.nema.org/resources/ontology/DCM';
export const AUDIT_EVENT_TYPE = 'http://terminology.hl7.org/CodeSystem/audit-event-type';
export const RESTFUL_INTERACTION = 'http://hl7.org/fhir/restful-interaction';
export const AUDIT_ENTITY_TYPE = 'http://terminology.hl7.org/CodeSystem/audit-entity-type';
export const OBJECT_ROLE = 'http://terminology.hl7.org/CodeSystem/object-role';
export const SECURITY_SOURCE_TYPE = 'http://terminology.hl7.org/CodeSystem/security-source-type';
export const AUDIT_OUTCOME = 'http://hl7.org/fhir/audit-event-outcome';
/** BALP user agent types (IHE.BasicAudit.UserAgentTypes). */
export const BALP_USER_AGENT_TYPES = 'https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes';

/** `Identifier.system` of tidegate node ids (same as src/tide/audit.ts). */
export const NODE_SYSTEM = 'urn:tidegate:node';
/** `Identifier.system` of OAuth client ids (`client_id` of the access token). */
export const CLIENT_ID_SYSTEM = 'urn:tidegate:oauth:client-id';
/** `Identifier.system` of envelope key ids (22 base64url characters, src/envelope/keys.ts `keyIdOf`). */
export const KEY_ID_SYSTEM = 'urn:tidegate:key-id';
/** `Coding.system` of tidegate's own audit subtypes (merge, key operations, trail events). */
export const TIDEGATE_EVENT_SYSTEM = 'urn:tidegate:audit:event';
/** `Coding.system` of authorization refusal reasons (src/auth/errors.ts `AuthErrorReason`). */
export const AUTH_REASON_SYSTEM = 'urn:tidegate:auth:reason';
