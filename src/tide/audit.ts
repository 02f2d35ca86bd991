/**
 * Security audit trail of Tide: every quarantined inbox message becomes a FHIR R4 AuditEvent
 * (https://hl7.org/fhir/R4/auditevent.html), kept in a bounded in-memory log and exposed by the
 * ops router (`GET /admin/audit`, src/ops/).
 *
 * PHI rule: an AuditEvent names node ids, the message id, the message kind and the reason code.
 * It never carries plaintext, the envelope, or resource keys (`Patient/<id>`): FHIR ids are often
 * derived from medical record numbers, so they are treated as identifiers linkable to a patient.
 */
import { randomUUID } from 'node:crypto';

/** Why a message was quarantined (an `EnvelopeError` code, a Tide code, or `ERR_APPLY_FAILED`). */
export type QuarantineReason = string;

/** One quarantined inbox message, as kept in memory and returned by the API (no envelope). */
export interface QuarantineRecord {
  /** Stable reason code, e.g. `ERR_SIGNATURE_INVALID`, `ERR_UPDATE_MALFORMED`, `ERR_APPLY_FAILED`. */
  reason: QuarantineReason;
  /** The BullMQ job id (= the signed messageId for messages Tide sent); `undefined` if none. */
  messageId: string | undefined;
  /** Sender node id: verified when `senderVerified`, else as claimed by the unverified header; `undefined` if unreadable. */
  sender: string | undefined;
  /** True when the sender was authenticated (ML-DSA-65 signature verified). */
  senderVerified: boolean;
  /** Envelope kind (`updates`, `ae-digest`, …) or the job name when the header is unreadable. */
  kind: string | undefined;
  /** When the message entered the inbox: BullMQ `job.timestamp`, ms since the Unix epoch. */
  receivedAt: number;
  /** When it was quarantined, ms since the Unix epoch. */
  quarantinedAt: number;
  /** Processing attempts made, this one included. */
  attempts: number;
  /** Length of the serialized envelope (ASCII, so bytes); 0 when the job carried no string. */
  envelopeBytes: number;
}

/** A FHIR R4 `Coding` (subset used here). */
export interface FhirCoding {
  system: string;
  code: string;
  display?: string;
}

/** A FHIR R4 `Reference` by logical identifier (subset used here). */
export interface FhirIdentifierReference {
  identifier: { system: string; value: string };
  display?: string;
}

/** The FHIR R4 AuditEvent resource as built by {@link quarantineAuditEvent} (https://hl7.org/fhir/R4/auditevent.html). */
export interface AuditEvent {
  resourceType: 'AuditEvent';
  id: string;
  type: FhirCoding;
  subtype: FhirCoding[];
  action: 'C' | 'R' | 'U' | 'D' | 'E';
  recorded: string;
  outcome: '0' | '4' | '8' | '12';
  outcomeDesc: string;
  agent: {
    type?: { coding: FhirCoding[] };
    who?: FhirIdentifierReference;
    requestor: boolean;
  }[];
  source: { site: string; observer: FhirIdentifierReference; type: FhirCoding[] };
  entity: {
    what: FhirIdentifierReference;
    type: FhirCoding;
    role: FhirCoding;
    detail: { type: string; valueString: string }[];
  }[];
}

/** A FHIR R4 `searchset` Bundle of AuditEvents (https://hl7.org/fhir/R4/bundle.html). */
export interface AuditBundle {
  resourceType: 'Bundle';
  type: 'searchset';
  total: number;
  timestamp: string;
  entry: { fullUrl: string; resource: AuditEvent }[];
}

/** `Identifier.system` of tidegate node ids. */
export const NODE_ID_SYSTEM = 'urn:tidegate:node';
/** `Identifier.system` of Tide message ids. */
export const MESSAGE_ID_SYSTEM = 'urn:tidegate:tide:message-id';
/** `Coding.system` of quarantine reason codes (AuditEvent.subtype). */
export const QUARANTINE_REASON_SYSTEM = 'urn:tidegate:tide:quarantine-reason';

/** Human text per reason (no PHI; used as `outcomeDesc`). */
const REASON_TEXT: Record<string, string> = {
  ERR_ENVELOPE_MALFORMED: 'not a tidegate-env/1 envelope',
  ERR_UNSUPPORTED_ALGORITHM: 'unsupported envelope version or algorithm',
  ERR_UNKNOWN_PEER: 'sender is not a configured peer (or its key id differs)',
  ERR_SIGNATURE_INVALID: 'signature does not verify',
  ERR_NOT_FOR_THIS_NODE: 'addressed to another node or key',
  ERR_DECRYPT_FAILED: 'does not decrypt',
  ERR_MESSAGE_ID_MISMATCH: 'job id is not the signed message id',
  ERR_UNKNOWN_KIND: 'unknown message kind',
  ERR_PLAINTEXT_MALFORMED: 'plaintext does not decode',
  ERR_UPDATE_MALFORMED: 'a Yjs update does not decode',
  ERR_APPLY_FAILED: 'the store refused the updates on every attempt',
  ERR_REPLAY: 'message id already accepted (replay)',
  ERR_STALE: 'outside the replay window',
  ERR_PEER_NOT_ALLOWED: 'the peer may not send a resource type in the message',
  ERR_PEER_QUARANTINED: 'the peer is quarantined',
};

/**
 * Builds the FHIR R4 AuditEvent of one quarantined message.
 *
 * Shape (https://hl7.org/fhir/R4/auditevent.html): `type` = DICOM DCM 110113 "Security Alert"
 * (from the R4 audit-event-type value set); `subtype` = the reason code in
 * {@link QUARANTINE_REASON_SYSTEM}; `action` `E`; `outcome` `4` (minor failure: the message was
 * refused, like an HTTP 400); agent 1 = the sender (requestor, identifier in {@link NODE_ID_SYSTEM},
 * `display` says whether it was verified; no `who` when unknown), agent 2 = this node (receiver);
 * `source.observer` = this node, source type 4 "Application Server"; one `entity` = the message
 * (identifier in {@link MESSAGE_ID_SYSTEM}, entity type 2 "System Object", role 20 "Job" of the R4
 * object-role code system), details `reason`, `kind`, `receivedAt`, `attempts`, `envelopeBytes`.
 * Agent types are DICOM 110153 "Source Role ID" / 110152 "Destination Role ID".
 * @param rec - The quarantine record (times in ms since the epoch).
 * @param nodeId - This node's id (observer).
 * @returns A new AuditEvent with a random UUID id. Never contains plaintext or resource keys.
 */
export function quarantineAuditEvent(rec: QuarantineRecord, nodeId: string): AuditEvent {
  const node: FhirIdentifierReference = { identifier: { system: NODE_ID_SYSTEM, value: nodeId }, display: `tidegate node ${nodeId}` };
  const sender: AuditEvent['agent'][number] = rec.sender
    ? {
        who: {
          identifier: { system: NODE_ID_SYSTEM, value: rec.sender },
          display: rec.senderVerified ? `tidegate node ${rec.sender} (verified)` : `claimed sender ${rec.sender} (unverified)`,
        },
        type: { coding: [{ system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110153', display: 'Source Role ID' }] },
        requestor: true,
      }
    : {
        type: { coding: [{ system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110153', display: 'Source Role ID' }] },
        requestor: true,
      };
  const detail = [
    { type: 'reason', valueString: rec.reason },
    { type: 'receivedAt', valueString: new Date(rec.receivedAt).toISOString() },
    { type: 'attempts', valueString: String(rec.attempts) },
    { type: 'envelopeBytes', valueString: String(rec.envelopeBytes) },
  ];
  if (rec.kind !== undefined) detail.push({ type: 'kind', valueString: rec.kind });
  return {
    resourceType: 'AuditEvent',
    id: randomUUID(),
    type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110113', display: 'Security Alert' },
    subtype: [{ system: QUARANTINE_REASON_SYSTEM, code: rec.reason, display: REASON_TEXT[rec.reason] ?? rec.reason }],
    action: 'E',
    recorded: new Date(rec.quarantinedAt).toISOString(),
    outcome: '4',
    outcomeDesc: `Tide message quarantined: ${rec.reason} (${REASON_TEXT[rec.reason] ?? 'refused'})`,
    agent: [
      sender,
      {
        type: { coding: [{ system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110152', display: 'Destination Role ID' }] },
        who: node,
        requestor: false,
      },
    ],
    source: {
      site: nodeId,
      observer: node,
      type: [{ system: 'http://terminology.hl7.org/CodeSystem/security-source-type', code: '4', display: 'Application Server' }],
    },
    entity: [
      {
        what: { identifier: { system: MESSAGE_ID_SYSTEM, value: rec.messageId ?? 'unknown' } },
        type: { system: 'http://terminology.hl7.org/CodeSystem/audit-entity-type', code: '2', display: 'System Object' },
        role: { system: 'http://terminology.hl7.org/CodeSystem/object-role', code: '20', display: 'Job' },
        detail,
      },
    ],
  };
}

/**
 * A bounded in-memory log of AuditEvents, newest first. When full, the oldest is dropped.
 * Not persisted: a restarted node starts empty (the quarantine itself is in Redis).
 */
export class AuditLog {
  readonly #max: number;
  readonly #events: AuditEvent[] = [];
  #total = 0;

  /**
   * @param max - Most events kept (≥ 1). Default 500.
   * @throws RangeError when `max` is not a positive integer.
   */
  constructor(max = 500) {
    if (!Number.isSafeInteger(max) || max < 1) throw new RangeError('AuditLog: max must be a positive integer');
    this.#max = max;
  }

  /** Adds an event (the oldest is dropped when full). */
  add(event: AuditEvent): void {
    this.#events.unshift(event);
    if (this.#events.length > this.#max) this.#events.length = this.#max;
    this.#total++;
  }

  /** Events added since construction (including dropped ones). */
  get total(): number {
    return this.#total;
  }

  /**
   * The kept events, newest first.
   * @param limit - At most this many (default: all kept).
   */
  list(limit = this.#max): AuditEvent[] {
    return this.#events.slice(0, Math.max(0, limit));
  }

  /**
   * The kept events as a FHIR R4 `searchset` Bundle (https://hl7.org/fhir/R4/bundle.html),
   * newest first; `total` = events kept; `fullUrl` = `urn:uuid:<id>`.
   * @param limit - At most this many entries.
   */
  bundle(limit?: number): AuditBundle {
    const events = this.list(limit);
    return {
      resourceType: 'Bundle',
      type: 'searchset',
      total: this.#events.length,
      timestamp: new Date().toISOString(),
      entry: events.map((resource) => ({ fullUrl: `urn:uuid:${resource.id}`, resource })),
    };
  }
}
