/**
 * A breach-detection alert and its FHIR R4 AuditEvent (https://hl7.org/fhir/R4/auditevent.html),
 * shaped like Tide's quarantine AuditEvents (src/tide/audit.ts) so both live in one trail.
 *
 * PHI rule: an alert names the suspect (peer node id, OAuth client id, token `jti`, IP address),
 * the signal, counts, thresholds and the responses taken. Never patient ids, resource keys,
 * tokens or payload.
 */
import type { AuditEvent, FhirIdentifierReference } from '../tide/audit.ts';
import { NODE_ID_SYSTEM } from '../tide/audit.ts';
import type { SecuritySignal } from './config.ts';

/** Who an alert is about. */
export interface AlertSubject {
  kind: 'peer' | 'client' | 'token' | 'ip';
  /** Node id, client id, `jti` or IP address. */
  value: string;
  /** For peers: true when the sender was authenticated (signature verified). */
  verified?: boolean;
}

/** One alert. Times in ms since the Unix epoch. */
export interface SecurityAlert {
  /** Random UUID; also the AuditEvent id. */
  id: string;
  signal: SecuritySignal;
  subject: AlertSubject;
  /** When the detector raised it. */
  at: number;
  /** When the first event counted in it happened (attack start as seen here). */
  firstSeenAt: number;
  /** Events counted in the window when it fired. */
  count: number;
  threshold: number;
  windowMs: number;
  /** Earlier hits of the same signal and subject not alerted (cooldown) since the last alert. */
  suppressed: number;
  /** Plain-text summary (no PHI). */
  summary: string;
  /** Extra facts (reason code, status, baseline, client id); strings and numbers only, no PHI. */
  details: Record<string, string | number>;
  /** Automatic responses taken: `quarantine-peer`, `revoke-token`, or their failures. */
  responses: string[];
}

/** `Coding.system` of the signals (AuditEvent.subtype). */
export const SECURITY_SIGNAL_SYSTEM = 'urn:tidegate:security:signal';
/** `Identifier.system` of alert ids. */
export const ALERT_ID_SYSTEM = 'urn:tidegate:security:alert';
/** `Identifier.system` of OAuth client ids. */
export const CLIENT_ID_SYSTEM = 'urn:tidegate:oauth:client-id';
/** `Identifier.system` of token ids (`jti`). */
export const TOKEN_ID_SYSTEM = 'urn:ietf:params:oauth:jti';
/** `Identifier.system` of client IP addresses. */
export const IP_SYSTEM = 'urn:tidegate:ip';

const SUBJECT_SYSTEM: Record<AlertSubject['kind'], string> = {
  peer: NODE_ID_SYSTEM,
  client: CLIENT_ID_SYSTEM,
  token: TOKEN_ID_SYSTEM,
  ip: IP_SYSTEM,
};

const DCM = 'http://dicom.nema.org/resources/ontology/DCM';

/**
 * The FHIR R4 AuditEvent of an alert: `type` DICOM 110113 *Security Alert*; `subtype` the signal in
 * {@link SECURITY_SIGNAL_SYSTEM}; `action` E; `outcome` 4 (the offending input was refused or
 * flagged); agent 1 = the suspect (requestor; identifier system by kind, DICOM 110153 *Source Role
 * ID*; an IP address also as `network` type 2 per BALP); agent 2 = this node (110152); `source` =
 * this node, type 4 *Application Server*; one `entity` = the alert (entity type 2 *System Object*,
 * role 20 *Job*) with details signal, count, threshold, windowMs, suppressed, firstSeenAt,
 * responses and the alert's details.
 * @param alert - The alert.
 * @param nodeId - This node's id.
 * @returns A new AuditEvent whose id is the alert id. Never contains PHI.
 */
export function alertAuditEvent(alert: SecurityAlert, nodeId: string): AuditEvent {
  const node: FhirIdentifierReference = { identifier: { system: NODE_ID_SYSTEM, value: nodeId }, display: `tidegate node ${nodeId}` };
  const s = alert.subject;
  const who: FhirIdentifierReference = {
    identifier: { system: SUBJECT_SYSTEM[s.kind], value: s.value },
    display: s.kind === 'peer' ? (s.verified ? `tidegate node ${s.value} (verified)` : `claimed sender ${s.value} (unverified)`) : `${s.kind} ${s.value}`,
  };
  const suspect: AuditEvent['agent'][number] & { network?: { address: string; type: string } } = {
    type: { coding: [{ system: DCM, code: '110153', display: 'Source Role ID' }] },
    who,
    requestor: true,
    ...(s.kind === 'ip' ? { network: { address: s.value, type: '2' } } : {}),
  };
  const detail: { type: string; valueString: string }[] = [
    { type: 'signal', valueString: alert.signal },
    { type: 'count', valueString: String(alert.count) },
    { type: 'threshold', valueString: String(alert.threshold) },
    { type: 'windowMs', valueString: String(alert.windowMs) },
    { type: 'suppressed', valueString: String(alert.suppressed) },
    { type: 'firstSeenAt', valueString: new Date(alert.firstSeenAt).toISOString() },
    { type: 'responses', valueString: alert.responses.join(',') || 'none' },
  ];
  for (const [k, v] of Object.entries(alert.details)) detail.push({ type: k, valueString: String(v) });
  return {
    resourceType: 'AuditEvent',
    id: alert.id,
    type: { system: DCM, code: '110113', display: 'Security Alert' },
    subtype: [{ system: SECURITY_SIGNAL_SYSTEM, code: alert.signal, display: alert.signal }],
    action: 'E',
    recorded: new Date(alert.at).toISOString(),
    outcome: '4',
    outcomeDesc: alert.summary,
    agent: [suspect, { type: { coding: [{ system: DCM, code: '110152', display: 'Destination Role ID' }] }, who: node, requestor: false }],
    source: {
      site: nodeId,
      observer: node,
      type: [{ system: 'http://terminology.hl7.org/CodeSystem/security-source-type', code: '4', display: 'Application Server' }],
    },
    entity: [
      {
        what: { identifier: { system: ALERT_ID_SYSTEM, value: alert.id } },
        type: { system: 'http://terminology.hl7.org/CodeSystem/audit-entity-type', code: '2', display: 'System Object' },
        role: { system: 'http://terminology.hl7.org/CodeSystem/object-role', code: '20', display: 'Job' },
        detail,
      },
    ],
  };
}
