/**
 * Crypto-shredding of a patient on one node (`tidegate shred Patient/ID`, `POST /admin/shred`):
 *
 * 1. find the patient's compartment among the resources this node holds (src/store/compartment.ts:
 *    every resource any of whose versions is in the compartment), plus the Patient itself;
 * 2. drop queued messages about them: the hospital outbox's jobs (src/hospital/outbox.ts) and, on
 *    the node's own Redis, Tide inbox jobs and quarantine entries whose envelope header names them;
 * 3. the store's `shred` ({@link SqliteStore.shred}, `PgStore.shred`): delete their rows, keep
 *    tombstones, destroy their content keys in the key vault (so no copy of the data file or
 *    database — disk, backup — decrypts them);
 * 4. drop queued messages again (anything enqueued meanwhile);
 * 5. record a FHIR AuditEvent (no PHI: the patient is named by its resource tag, an HMAC).
 *
 * docs/storage.md "Crypto-shredding" gives the semantics and the limits (hospital copies, peers,
 * Redis persistence files).
 */
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import type { AuditEvent } from '../tide/audit.ts';
import { NODE_ID_SYSTEM } from '../tide/audit.ts';
import { mayBeInPatientCompartment, inPatientCompartment } from './compartment.ts';
import type { SqliteStore, StoreShredResult } from './sqlite-store.ts';
import type { ResourceRecord } from './store.ts';

/**
 * A store that can crypto-shred: the sealed SQLite store ({@link SqliteStore}) and the sealed
 * PostgreSQL store (src/store/pg-store.ts `PgStore`). `shred` must tombstone the keys before it
 * first yields (so no write can slip in between the compartment check and the shred).
 */
export interface ShreddableStore {
  /** True when opened with the node's keys (shredding needs a key vault). */
  readonly sealed: boolean;
  keys(): IterableIterator<string>;
  get(key: string): ResourceRecord | undefined;
  /** Collects the keys written from now until `stop()`. */
  watchWrites(): { keys: ReadonlySet<string>; stop: () => void };
  shred(keys: readonly string[], at?: Date): StoreShredResult | Promise<StoreShredResult>;
  /** Hex row id (HMAC tag) of a key. */
  resourceTagHex(key: string): string;
  appendAuditEvent(event: { id: string; recorded: string }): void | Promise<void>;
}

/**
 * True when `store` has what {@link shredPatient} needs (sealed or not; {@link shredPatient} refuses
 * an unsealed one with a clear error).
 * @param store - any resource store.
 */
export function isShreddableStore(store: unknown): store is ShreddableStore {
  const s = store as Partial<Record<keyof ShreddableStore, unknown>> | null;
  return (
    typeof s === 'object' && s !== null && typeof s.shred === 'function' && typeof s.watchWrites === 'function' && typeof s.resourceTagHex === 'function' && typeof s.appendAuditEvent === 'function' && typeof s.sealed === 'boolean'
  );
}

/** `Identifier.system` of resource tags (hex HMAC-SHA256 of `Type/id` under the store's index key). */
export const RESOURCE_TAG_SYSTEM = 'urn:tidegate:store:resource-tag';
/** `Coding.system` of tidegate store events (AuditEvent.subtype). */
export const STORE_EVENT_SYSTEM = 'urn:tidegate:store:event';

const PATIENT_KEY = /^Patient\/[A-Za-z0-9\-.]{1,64}$/;

/** Stable code of {@link ShredError}. */
export type ShredErrorCode = 'ERR_SHRED_INVALID_KEY' | 'ERR_SHRED_UNSUPPORTED_STORE';

/** Refused shred request (bad key, store that cannot shred). Nothing is changed. */
export class ShredError extends Error {
  override readonly name = 'ShredError';
  readonly code: ShredErrorCode;
  /**
   * @param code - stable code.
   * @param message - human text (names no resource).
   */
  constructor(code: ShredErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

/** Where queued messages about shredded resources are dropped. Each returns how many it dropped. */
export interface ShredQueues {
  /** Drops hospital outbox jobs of these keys (`HospitalOutbox.drop` or `dropOutboxJobs`). */
  outbox?: (keys: ReadonlySet<string>) => Promise<number>;
  /** Drops Tide inbox jobs and quarantine entries naming these keys ({@link scrubTideRedis}). */
  tide?: (keys: ReadonlySet<string>) => Promise<{ inboxJobs: number; quarantineEntries: number; unrecognized: number }>;
  /** Drops outgoing Tide updates of these keys still waiting in memory (`Tide.drop`). */
  outgoing?: (keys: ReadonlySet<string>) => number;
}

/** Options of {@link shredPatient}. */
export interface ShredOptions {
  /** The node's store: a sealed {@link SqliteStore} or `PgStore`. */
  store: ShreddableStore;
  /** This node's id (AuditEvent observer). */
  nodeId: string;
  /** Queues to purge. */
  queues?: ShredQueues;
  /** Who asked, for the AuditEvent agent (e.g. `cli:<user>`, `admin-http`). Default `operator`. */
  requestor?: string;
  /** Further sink of the AuditEvent (e.g. Tide's in-memory audit log). */
  audit?: (event: AuditEvent) => void;
  /** Clock; tests only. */
  now?: () => Date;
}

/** What {@link shredPatient} did. Contains resource keys: show it to the operator, never log it. */
export interface ShredReport {
  patient: string;
  /** Keys whose rows and content keys were destroyed. */
  shredded: string[];
  /** Keys tombstoned although not held (the Patient itself when this node never held it). */
  tombstoned: string[];
  /** Content keys destroyed. */
  keysDestroyed: number;
  /** Resources that could not be read while looking for the compartment (damaged records), counted only. */
  unreadable: number;
  /** Queued messages dropped; `outgoingUpdates` = updates removed from Tide batches waiting in memory. */
  dropped: { outboxJobs: number; inboxJobs: number; quarantineEntries: number; unrecognized: number; outgoingUpdates: number };
  /** The AuditEvent recorded. */
  auditEvent: AuditEvent;
}

/**
 * Whether the resource `key` held by `store` is in the compartment of `patientKey`: the Patient
 * itself, or a resource any of whose versions is a member by the R4 Patient CompartmentDefinition.
 * @returns true / false, or `'unreadable'` when its records cannot be opened (damaged).
 */
export function heldInCompartment(store: ShreddableStore, key: string, patientKey: string): boolean | 'unreadable' {
  if (key === patientKey) return true;
  if (!mayBeInPatientCompartment(key.slice(0, key.indexOf('/')))) return false;
  try {
    const rec = store.get(key);
    if (!rec) return false;
    for (let i = rec.versions.length - 1; i >= 0; i--) {
      const body = rec.versions[i]!.body;
      if (body !== null && inPatientCompartment(JSON.parse(body) as { resourceType?: unknown; id?: unknown }, patientKey)) return true;
    }
    return false;
  } catch {
    return 'unreadable';
  }
}

/**
 * Keys of the resources this node holds in the compartment of `patientKey` (the Patient included),
 * by the R4 Patient CompartmentDefinition, looking at every version of each resource. Yields to the
 * event loop every `sliceMs` so a running node keeps serving (writes made meanwhile are caught by
 * {@link shredPatient}'s re-check).
 * @param store - the store.
 * @param patientKey - `Patient/<id>`.
 * @param sliceMs - longest stretch without yielding, ms. Default 8.
 * @returns The keys, and how many resources could not be read (damaged records are skipped).
 */
export async function patientCompartmentKeys(store: ShreddableStore, patientKey: string, sliceMs = 8): Promise<{ keys: string[]; unreadable: number }> {
  const keys: string[] = [];
  let unreadable = 0;
  let t0 = performance.now();
  for (const key of store.keys()) {
    const m = heldInCompartment(store, key, patientKey);
    if (m === true) keys.push(key);
    else if (m === 'unreadable') unreadable++;
    if (performance.now() - t0 >= sliceMs) {
      await new Promise((r) => setImmediate(r));
      t0 = performance.now();
    }
  }
  return { keys, unreadable };
}

/**
 * The FHIR R4 AuditEvent of a shred (https://hl7.org/fhir/R4/auditevent.html): `type` DICOM 110110
 * "Patient Record", `subtype` `crypto-shred` in {@link STORE_EVENT_SYSTEM}, `action` `D`, `outcome`
 * `0`; agent 1 the requestor, agent 2 this node; one entity: the patient by resource tag
 * (identifier in {@link RESOURCE_TAG_SYSTEM}; entity type 1 "Person", role 1 "Patient"), with details
 * `resourcesShredded`, `keysDestroyed`, `queuedMessagesDropped`. No resource id or content (PHI rule of
 * src/tide/audit.ts): whoever holds the node's keys can check a given id against the tag.
 * @returns A new AuditEvent with a random UUID id.
 */
export function shredAuditEvent(o: { nodeId: string; requestor: string; patientTagHex: string; resources: number; keysDestroyed: number; dropped: number; at: Date }): AuditEvent {
  const node = { identifier: { system: NODE_ID_SYSTEM, value: o.nodeId }, display: `tidegate node ${o.nodeId}` };
  return {
    resourceType: 'AuditEvent',
    id: randomUUID(),
    type: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: '110110', display: 'Patient Record' },
    subtype: [{ system: STORE_EVENT_SYSTEM, code: 'crypto-shred', display: 'content keys of a patient compartment destroyed' }],
    action: 'D',
    recorded: o.at.toISOString(),
    outcome: '0',
    outcomeDesc: `crypto-shredded ${o.resources} resource(s), ${o.keysDestroyed} content key(s) destroyed, ${o.dropped} queued message(s) dropped`,
    agent: [
      { who: { identifier: { system: 'urn:tidegate:operator', value: o.requestor } }, requestor: true },
      { who: node, requestor: false },
    ],
    source: {
      site: o.nodeId,
      observer: node,
      type: [{ system: 'http://terminology.hl7.org/CodeSystem/security-source-type', code: '4', display: 'Application Server' }],
    },
    entity: [
      {
        what: { identifier: { system: RESOURCE_TAG_SYSTEM, value: o.patientTagHex } },
        type: { system: 'http://terminology.hl7.org/CodeSystem/audit-entity-type', code: '1', display: 'Person' },
        role: { system: 'http://terminology.hl7.org/CodeSystem/object-role', code: '1', display: 'Patient' },
        detail: [
          { type: 'resourcesShredded', valueString: String(o.resources) },
          { type: 'keysDestroyed', valueString: String(o.keysDestroyed) },
          { type: 'queuedMessagesDropped', valueString: String(o.dropped) },
        ],
      },
    ],
  };
}

/**
 * Crypto-shreds the compartment of `patientKey` on this node (see module doc).
 * @param patientKey - `Patient/<id>`.
 * @param opts - see {@link ShredOptions}.
 * @returns What was shredded and dropped, and the AuditEvent (also appended to the store).
 * @throws ShredError `ERR_SHRED_INVALID_KEY` for a key that is not `Patient/<FHIR id>`,
 *   `ERR_SHRED_UNSUPPORTED_STORE` for an unsealed store; Error when Redis or the store fail (the
 *   store part is all-or-nothing; a retry finishes the rest).
 */
export async function shredPatient(patientKey: string, opts: ShredOptions): Promise<ShredReport> {
  if (typeof patientKey !== 'string' || !PATIENT_KEY.test(patientKey)) throw new ShredError('ERR_SHRED_INVALID_KEY', 'Expected Patient/<id> (FHIR id: 1-64 of A-Z a-z 0-9 - .)');
  const store = opts.store;
  if (!store.sealed) throw new ShredError('ERR_SHRED_UNSUPPORTED_STORE', 'Crypto-shredding needs a sealed store (a storeFile, or a storeUrl with its keyVaultFile, opened with the node keys)');
  const now = opts.now ?? (() => new Date());
  const watch = store.watchWrites();
  let keys: string[];
  let unreadable: number;
  try {
    ({ keys, unreadable } = await patientCompartmentKeys(store, patientKey));
  } catch (err) {
    watch.stop();
    throw err;
  }
  if (!keys.includes(patientKey)) keys.push(patientKey);
  const set = new Set(keys);
  const dropped = { outboxJobs: 0, inboxJobs: 0, quarantineEntries: 0, unrecognized: 0, outgoingUpdates: 0 };
  const drop = async (): Promise<void> => {
    if (opts.queues?.outgoing) dropped.outgoingUpdates += opts.queues.outgoing(set);
    if (opts.queues?.outbox) dropped.outboxJobs += await opts.queues.outbox(set);
    if (opts.queues?.tide) {
      const t = await opts.queues.tide(set);
      dropped.inboxJobs += t.inboxJobs;
      dropped.quarantineEntries += t.quarantineEntries;
      dropped.unrecognized = t.unrecognized;
    }
  };
  let shredding: StoreShredResult | Promise<StoreShredResult>;
  const at = now();
  try {
    await drop();
    // Synchronous from here to the store's shred: resources written during the scan and the drops
    // are re-checked, and nothing can be written in between.
    for (const k of watch.keys) {
      if (!set.has(k) && heldInCompartment(store, k, patientKey) === true) {
        set.add(k);
        keys.push(k);
      }
    }
    // The store tombstones the keys before it first yields (PgStore then awaits its transaction).
    shredding = store.shred(keys, at);
  } finally {
    watch.stop();
  }
  const result = await shredding;
  await drop();
  const event = shredAuditEvent({
    nodeId: opts.nodeId,
    requestor: opts.requestor ?? 'operator',
    patientTagHex: store.resourceTagHex(patientKey),
    resources: result.shredded.length,
    keysDestroyed: result.keysDestroyed,
    dropped: dropped.outboxJobs + dropped.inboxJobs + dropped.quarantineEntries + dropped.outgoingUpdates,
    at,
  });
  await store.appendAuditEvent(event);
  opts.audit?.(event);
  return { patient: patientKey, shredded: result.shredded, tombstoned: result.tombstoned, keysDestroyed: result.keysDestroyed, unreadable, dropped, auditEvent: event };
}

/**
 * The `resources` list of a Tide envelope's header, read without verifying or decrypting it
 * (tidegate-env/1 and /2 both carry a base64url `protected` header with `resources`).
 * @param env - the serialized envelope.
 * @returns The resource keys, or undefined when the envelope is not recognized.
 */
export function envelopeResources(env: unknown): string[] | undefined {
  if (typeof env !== 'string' || env.length > 67_108_864) return undefined;
  try {
    const outer = JSON.parse(env) as { protected?: unknown };
    if (typeof outer.protected !== 'string') return undefined;
    const header = JSON.parse(Buffer.from(outer.protected, 'base64url').toString('utf8')) as { resources?: unknown };
    return Array.isArray(header.resources) && header.resources.every((r) => typeof r === 'string') ? (header.resources as string[]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Removes, from the node's own Redis, Tide messages that name a shredded key: inbox jobs (BullMQ
 * queue `inbox-<nodeId>`: waiting, delayed, prioritized, completed and failed ones (a paused queue's jobs are in its wait list) — an
 * active job is being applied and is refused by the tombstone) and quarantine entries
 * (`<prefix>:quarantine-<nodeId>`) whose sealed envelope's header lists one of the keys. These
 * envelopes are sealed to this node's X-Wing key, so they would otherwise stay decryptable.
 * @param o - Redis URL, BullMQ prefix, node id.
 * @param keys - shredded keys.
 * @returns Counts; `unrecognized` = messages whose header could not be read (kept).
 * @throws Error when Redis is unreachable.
 */
export async function scrubTideRedis(o: { redisUrl: string; prefix: string; nodeId: string }, keys: ReadonlySet<string>): Promise<{ inboxJobs: number; quarantineEntries: number; unrecognized: number }> {
  const client = new Redis(o.redisUrl, { maxRetriesPerRequest: 1, lazyConnect: true });
  client.on('error', () => {});
  const out = { inboxJobs: 0, quarantineEntries: 0, unrecognized: 0 };
  const names = (env: unknown): string[] | undefined => {
    const r = envelopeResources(env);
    if (r === undefined) out.unrecognized++;
    return r;
  };
  let queue: Queue | undefined;
  try {
    await client.connect();
    queue = new Queue(`inbox-${o.nodeId}`, { connection: client, prefix: o.prefix });
    const jobs = await queue.getJobs(['wait', 'delayed', 'prioritized', 'completed', 'failed']);
    for (const job of jobs) {
      const r = names((job?.data as { env?: unknown } | undefined)?.env);
      if (job && r?.some((k) => keys.has(k))) {
        await job.remove();
        out.inboxJobs++;
      }
    }
    const qkey = `${o.prefix}:quarantine-${o.nodeId}`;
    for (const line of await client.lrange(qkey, 0, -1)) {
      let env: unknown;
      try {
        env = (JSON.parse(line) as { env?: unknown }).env;
      } catch {
        env = undefined;
      }
      if (env === undefined) continue; // entry without its envelope: nothing decryptable
      const r = names(env);
      if (r?.some((k) => keys.has(k))) out.quarantineEntries += await client.lrem(qkey, 0, line);
    }
  } finally {
    await queue?.close().catch(() => {});
    client.disconnect();
  }
  return out;
}
