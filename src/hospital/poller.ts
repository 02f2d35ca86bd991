/**
 * Picks up changes made directly on the hospital's own FHIR server (by its EHR, not through
 * tidegate) by polling the server's history (https://hl7.org/fhir/R4/http.html#history):
 * `GET [base]/_history?_since=…` (system level), or `GET [base]/[type]/_history?_since=…` for each
 * configured type when the server has no system-level history.
 *
 * Each version the node did not write becomes a local write in the node's `Replica`, authored by
 * {@link HOSPITAL_SYSTEM_AUTHOR}, diffed against the node version the hospital held before the edit
 * (so only the elements changed at the hospital become CRDT operations, and node changes the
 * hospital had not received yet are not reverted), and the resulting Yjs update is handed to
 * `onUpdate` to be gossiped like any other write. Deletions become deletions.
 *
 * **No echo loop.** Versions the node wrote itself come back through `_history`; the
 * {@link SyncLedger} shared with the outbox recognizes them (hospital `versionId`, else content
 * hash) and they are skipped. A version whose content equals the node version it is diffed against
 * produces no operation either.
 *
 * **Cursor.** The poller asks `_since` = the newest `lastUpdated` it has handled minus `overlapMs`
 * (so versions committed late with an older timestamp are still seen), skips versions it already
 * handled (remembered by hash in the cursor for the overlap window), and saves the cursor in a
 * {@link HospitalCursorStore} after each poll. A poller without a saved cursor starts at the node's
 * clock (`start: 'now'`, the default) or reads the whole history (`start: 'beginning'`).
 *
 * Logs carry error codes, HTTP statuses, counts and FHIRPath expressions only, never resource content.
 */
import { refersToShreddedPatient } from '../store/compartment.ts';
import { createHash } from 'node:crypto';
import { isJsonObject, isLosslessNumber, parseFhirJson } from '../fhir/json.ts';
import type { FhirJson, FhirJsonObject, LosslessNumber } from '../fhir/json.ts';
import { isKnownResourceType, validateFhirResource } from '../fhir/validate.ts';
import { UnknownVersionError } from '../merge/replica.ts';
import type { LocalWriteResult, Replica } from '../merge/replica.ts';
import type { HospitalHistory, HospitalHistoryEntry, HospitalHistoryOptions } from './client.ts';
import { SERVER_MANAGED_META_FIELDS } from './client.ts';
import { MemoryCursorStore } from './cursor.ts';
import type { HospitalCursor, HospitalCursorStore } from './cursor.ts';
import { contentHash, SyncLedger } from './ledger.ts';
import type { Mapping } from '../mapping/index.ts';
import type { PatientMatcher } from '../mapping/matching.ts';

/** Author recorded on CRDT operations made from hospital-side edits (kept in conflict records). */
export const HOSPITAL_SYSTEM_AUTHOR = 'Device/hospital-system';

/** What the poller reads: `HospitalClient.history` (src/hospital/client.ts). */
export interface HospitalHistorySource {
  /** See `HospitalClient.history`. */
  history(options: HospitalHistoryOptions): Promise<HospitalHistory>;
}

/** Minimal logger (pino-compatible). */
export interface PollerLogger {
  warn(obj: object, msg: string): void;
  info?(obj: object, msg: string): void;
}

/** Options of {@link HospitalPoller}. Durations in ms. */
export interface HospitalPollerOptions {
  /** The hospital's history (a `HospitalClient`). */
  source: HospitalHistorySource;
  /** The node's merge engine. */
  replica: Replica;
  /** Receives each Yjs update made from a hospital edit, to gossip it (the node's `tide.publish`). */
  onUpdate: (key: string, update: Uint8Array) => void;
  /** Shared with the outbox (default: a private one, then every version counts as a hospital edit). */
  ledger?: SyncLedger;
  /** Where the cursor lives (default in memory). */
  cursor?: HospitalCursorStore;
  /** Poll period, ms; `0` = no timer (call {@link HospitalPoller.pollNow}). Default 5000. */
  intervalMs?: number;
  /** How far before the cursor each poll reads again, ms (late commits, clock steps). Default 2000. */
  overlapMs?: number;
  /**
   * Resource types to pick up (default: every R4 type). Also the types polled one by one when the
   * server has no system-level history (then this list is required).
   */
  types?: readonly string[];
  /** Where a poller without a saved cursor starts: `now` (default) or `beginning` (the whole history). */
  start?: 'now' | 'beginning';
  /** Author of the CRDT operations; default {@link HOSPITAL_SYSTEM_AUTHOR}. */
  author?: string;
  /** Logger; default none. */
  logger?: PollerLogger;
  /**
   * Code translation (src/mapping, docs/mappings.md): each hospital version is translated
   * (`translate(body, 'inbound')`: target codings added, originals kept) before it is merged, so
   * every replica holds the translated bytes. A version a `reject` map refuses counts as `rejected`.
   * Called once per version: with a `LiveMapping` (src/mapping/live.ts) each version is translated
   * under the mapping in force when it is read, so a reload applies from the next version on.
   */
  mapping?: Pick<Mapping, 'translate'>;
  /**
   * Patient matching (src/mapping/matching.ts): a Patient the node does not hold yet is matched
   * against the node's Patients after translation; sure matches add `Patient.link` (`seealso`),
   * possible ones go to the review list. When matching fails (review file not writable) the
   * version is merged without links and a warning is logged.
   */
  patientMatcher?: Pick<PatientMatcher, 'apply'>;
}

/** Outcome of one poll (counts of history entries). */
export interface HospitalPollResult {
  /** Versions read that were not handled before. */
  entries: number;
  /** Versions that changed the node's resource (an update was gossiped). */
  applied: number;
  /** Versions that were the node's own writes. */
  own: number;
  /** Versions that changed nothing at the node. */
  unchanged: number;
  /** Versions refused: not valid FHIR R4 (or the merge failed); logged without content. */
  rejected: number;
  /** Versions of resource types outside `types`, or not FHIR R4 resource types (e.g. a server's own types). */
  ignored: number;
}

/** Counters of {@link HospitalPoller.stats}. */
export interface HospitalPollerStats extends HospitalPollResult {
  /** Completed polls. */
  polls: number;
  /** Failed polls (hospital unreachable, cursor store failing). */
  errors: number;
  /** `system` or `type` (per-type history after the server refused system-level history). */
  mode: 'system' | 'type';
  /** Error code of the last failed poll, if any (no PHI). */
  lastError: string | undefined;
}

/** Statuses meaning "this server has no history at that level". */
const NO_SYSTEM_HISTORY: ReadonlySet<number> = new Set([400, 403, 404, 405, 501]);

/** A version's identity in the cursor: 24 hex of SHA-256 (no ids in the cursor). */
function versionTag(e: HospitalHistoryEntry): string {
  return createHash('sha256').update(`${e.hospitalRef}|${e.versionId ?? ''}|${e.lastUpdated ?? ''}|${e.deleted ? 'd' : 'u'}`).digest('hex').slice(0, 24);
}

function describe(err: unknown): string {
  const e = err as { code?: unknown; status?: unknown; name?: unknown };
  const code = typeof e?.code === 'string' ? e.code : typeof e?.name === 'string' ? e.name : 'Error';
  return typeof e?.status === 'number' ? `${code} (HTTP ${e.status})` : code;
}

/**
 * Copy of `value` where every number equal in value to the number at the same path in `base`
 * takes the base's lexical form (`1.5` from a `JSON.parse`-based server becomes the node's `1.50`),
 * so a server's number normalization is not mistaken for an edit.
 */
function restoreLexicalNumbers(value: FhirJson, base: FhirJson | undefined): FhirJson {
  if (isLosslessNumber(value)) {
    if (base !== undefined && isLosslessNumber(base) && Number((base as LosslessNumber).value) === Number((value as LosslessNumber).value)) return base;
    return value;
  }
  if (Array.isArray(value)) return value.map((v, i) => restoreLexicalNumbers(v, Array.isArray(base) ? base[i] : undefined));
  if (isJsonObject(value)) {
    const out: FhirJsonObject = {};
    for (const [k, v] of Object.entries(value)) out[k] = restoreLexicalNumbers(v, isJsonObject(base) ? base[k] : undefined);
    return out;
  }
  return value;
}

/**
 * The hospital's version prepared for a merge against `baseBody`: server-managed `meta` fields
 * (https://hl7.org/fhir/R4/resource.html#Meta and Medplum's) taken from the base instead of the
 * hospital, and lexical forms of unchanged numbers restored.
 */
function prepare(resource: FhirJsonObject, baseBody: string | null | undefined): FhirJsonObject {
  const base = baseBody ? (parseFhirJson(baseBody) as FhirJsonObject) : undefined;
  const out = restoreLexicalNumbers(resource, base) as FhirJsonObject;
  const meta: FhirJsonObject = isJsonObject(out['meta']) ? { ...out['meta'] } : {};
  const baseMeta = base !== undefined && isJsonObject(base['meta']) ? base['meta'] : {};
  for (const field of SERVER_MANAGED_META_FIELDS) {
    const kept = baseMeta[field];
    if (kept === undefined) delete meta[field];
    else meta[field] = kept;
  }
  if (Object.keys(meta).length === 0) delete out['meta'];
  else out['meta'] = meta;
  return out;
}

/** See module doc. */
export class HospitalPoller {
  /** Shared record of what the hospital holds. */
  readonly ledger: SyncLedger;
  readonly #source: HospitalHistorySource;
  readonly #replica: Replica;
  readonly #onUpdate: (key: string, update: Uint8Array) => void;
  readonly #store: HospitalCursorStore;
  readonly #intervalMs: number;
  readonly #overlapMs: number;
  readonly #types: readonly string[] | undefined;
  readonly #typeSet: ReadonlySet<string> | undefined;
  readonly #startAt: 'now' | 'beginning';
  readonly #author: string;
  readonly #log: PollerLogger | undefined;
  readonly #mapping: Pick<Mapping, 'translate'> | undefined;
  readonly #matcher: Pick<PatientMatcher, 'apply'> | undefined;
  #cursor: HospitalCursor | undefined;
  #mode: 'system' | 'type' = 'system';
  #state: 'new' | 'running' | 'stopped' = 'new';
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<HospitalPollResult> | undefined;
  #consecutiveErrors = 0;
  readonly #stats: HospitalPollerStats = { entries: 0, applied: 0, own: 0, unchanged: 0, rejected: 0, ignored: 0, polls: 0, errors: 0, mode: 'system', lastError: undefined };

  /**
   * @param opts - see {@link HospitalPollerOptions}.
   * @throws TypeError for a negative interval/overlap or an unknown resource type in `types`.
   */
  constructor(opts: HospitalPollerOptions) {
    const intervalMs = opts.intervalMs ?? 5000;
    const overlapMs = opts.overlapMs ?? 2000;
    if (!Number.isFinite(intervalMs) || intervalMs < 0) throw new TypeError('HospitalPoller: intervalMs must be >= 0');
    if (!Number.isFinite(overlapMs) || overlapMs < 0) throw new TypeError('HospitalPoller: overlapMs must be >= 0');
    for (const t of opts.types ?? []) if (!isKnownResourceType(t)) throw new TypeError('HospitalPoller: types must be FHIR R4 resource types');
    this.#source = opts.source;
    this.#replica = opts.replica;
    this.#onUpdate = opts.onUpdate;
    this.ledger = opts.ledger ?? new SyncLedger();
    this.#store = opts.cursor ?? new MemoryCursorStore();
    this.#intervalMs = intervalMs;
    this.#overlapMs = overlapMs;
    this.#types = opts.types && opts.types.length > 0 ? [...opts.types] : undefined;
    this.#typeSet = this.#types ? new Set(this.#types) : undefined;
    this.#startAt = opts.start ?? 'now';
    this.#author = opts.author ?? HOSPITAL_SYSTEM_AUTHOR;
    this.#log = opts.logger;
    this.#mapping = opts.mapping;
    this.#matcher = opts.patientMatcher;
  }

  /**
   * Loads the cursor (or sets a new one, see `start`) and, when `intervalMs` > 0, starts polling:
   * the first poll after `intervalMs`, then every `intervalMs` after the previous poll ended
   * (after failures the wait doubles, up to 16 periods and at most 60 s, or one period if longer).
   * @throws Error when called twice, or when the cursor store cannot be read.
   */
  async start(): Promise<void> {
    if (this.#state !== 'new') throw new Error(`HospitalPoller: start() called when ${this.#state}`);
    this.#state = 'running';
    await this.#loadCursor();
    this.#schedule();
  }

  /**
   * Polls once now (after any poll in progress). Works before {@link start} too (the cursor is
   * loaded or set first).
   * @returns Counts of what this poll read and did.
   * @throws HospitalError when the hospital is unreachable or refuses the history request
   *   (system-level refusals 400/403/404/405/501 switch to per-type polling when `types` is set).
   * @throws Error when the poller is stopped or the cursor store fails.
   */
  pollNow(): Promise<HospitalPollResult> {
    if (this.#state === 'stopped') return Promise.reject(new Error('HospitalPoller: stopped'));
    const previous = this.#running ?? Promise.resolve(undefined);
    const run: Promise<HospitalPollResult> = previous.catch(() => undefined).then(() => this.#poll());
    this.#running = run;
    void run.catch(() => undefined).finally(() => {
      if (this.#running === run) this.#running = undefined;
    });
    return run;
  }

  /** Resolves when no poll is in progress. */
  async idle(): Promise<void> {
    while (this.#running !== undefined) await this.#running.catch(() => undefined);
  }

  /** Counters since construction. */
  stats(): HospitalPollerStats {
    return { ...this.#stats, mode: this.#mode };
  }

  /** Stops the timer, waits for a poll in progress, closes the cursor store. Idempotent. */
  async stop(): Promise<void> {
    if (this.#state === 'stopped') return;
    this.#state = 'stopped';
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.idle();
    await this.#store.close();
  }

  #schedule(): void {
    if (this.#state !== 'running' || this.#intervalMs === 0) return;
    // After failures: double the wait, up to 16 periods and at most 60 s (or one period when longer).
    const cap = Math.max(this.#intervalMs, Math.min(60_000, this.#intervalMs * 16));
    const wait = this.#consecutiveErrors === 0 ? this.#intervalMs : Math.min(cap, this.#intervalMs * 2 ** Math.min(10, this.#consecutiveErrors));
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.pollNow()
        .catch(() => undefined)
        .finally(() => this.#schedule());
    }, wait);
  }

  async #loadCursor(): Promise<HospitalCursor> {
    if (this.#cursor !== undefined) return this.#cursor;
    const saved = await this.#store.load();
    this.#cursor = saved ?? { v: 1, since: this.#startAt === 'beginning' ? new Date(0).toISOString() : new Date().toISOString(), seen: [] };
    if (saved === undefined) await this.#store.save(this.#cursor);
    return this.#cursor;
  }

  async #poll(): Promise<HospitalPollResult> {
    try {
      const result = await this.#pollOnce();
      this.#consecutiveErrors = 0;
      this.#stats.polls++;
      return result;
    } catch (err) {
      this.#consecutiveErrors++;
      this.#stats.errors++;
      this.#stats.lastError = describe(err);
      if (this.#consecutiveErrors === 1 || this.#consecutiveErrors % 10 === 0) {
        this.#log?.warn({ err: describe(err), failures: this.#consecutiveErrors }, 'hospital poller: poll failed, will retry');
      }
      throw err;
    }
  }

  async #pollOnce(): Promise<HospitalPollResult> {
    const cursor = await this.#loadCursor();
    const sinceMs = Math.max(0, Date.parse(cursor.since) - this.#overlapMs);
    const since = new Date(sinceMs).toISOString();
    const lists = await this.#read(since);
    const seen = new Set(cursor.seen.map(([tag]) => tag));
    // Oldest first: by time, then (within one list, which the server gives newest first) by position from the end.
    const fresh: Array<{ e: HospitalHistoryEntry; tag: string; ms: number; pos: number }> = [];
    for (const list of lists) {
      list.forEach((e, i) => {
        const tag = versionTag(e);
        if (seen.has(tag)) return;
        seen.add(tag);
        const ms = e.lastUpdated === undefined ? Number.NaN : Date.parse(e.lastUpdated);
        fresh.push({ e, tag, ms, pos: list.length - i });
      });
    }
    fresh.sort((a, b) => (Number.isNaN(a.ms) ? 0 : a.ms) - (Number.isNaN(b.ms) ? 0 : b.ms) || a.pos - b.pos);
    const result: HospitalPollResult = { entries: fresh.length, applied: 0, own: 0, unchanged: 0, rejected: 0, ignored: 0 };
    for (const { e } of fresh) {
      try {
        result[this.#apply(e)]++;
      } catch (err) {
        // One version that cannot be merged must not stop the others (nor be retried forever).
        result.rejected++;
        this.#log?.warn({ err: describe(err) }, 'hospital poller: hospital version could not be merged');
      }
    }

    let newest = Date.parse(cursor.since);
    for (const f of fresh) if (!Number.isNaN(f.ms) && f.ms > newest) newest = f.ms;
    const windowStart = newest - this.#overlapMs;
    const kept = cursor.seen.filter(([, ms]) => ms >= windowStart);
    for (const f of fresh) kept.push([f.tag, Number.isNaN(f.ms) ? newest : f.ms]);
    const next: HospitalCursor = { v: 1, since: new Date(newest).toISOString(), seen: kept.filter(([, ms]) => ms >= windowStart) };
    await this.#store.save(next);
    this.#cursor = next;
    for (const k of ['entries', 'applied', 'own', 'unchanged', 'rejected', 'ignored'] as const) this.#stats[k] += result[k];
    return result;
  }

  /** The history lists since `since`: one (system level) or one per type. */
  async #read(since: string): Promise<HospitalHistoryEntry[][]> {
    if (this.#mode === 'system') {
      try {
        return [(await this.#source.history({ since })).entries];
      } catch (err) {
        const e = err as { code?: unknown; status?: unknown };
        const noSystem = e.code === 'ERR_HOSPITAL_REJECTED' && typeof e.status === 'number' && NO_SYSTEM_HISTORY.has(e.status);
        if (!noSystem || this.#types === undefined) throw err;
        this.#mode = 'type';
        this.#log?.info?.({ status: e.status, types: this.#types.length }, 'hospital poller: no system-level history, polling per type');
      }
    }
    const lists: HospitalHistoryEntry[][] = [];
    for (const type of this.#types ?? []) lists.push((await this.#source.history({ since, type })).entries);
    return lists;
  }

  /** Merges one hospital version; returns which counter it adds to. */
  #apply(e: HospitalHistoryEntry): 'applied' | 'own' | 'unchanged' | 'rejected' | 'ignored' {
    const key = e.ref;
    const type = key.slice(0, key.indexOf('/'));
    if (!isKnownResourceType(type) || (this.#typeSet !== undefined && !this.#typeSet.has(type))) return 'ignored';
    const hash = contentHash(e.deleted || e.resource === undefined ? null : e.resource);
    const own = this.ledger.matchOwn(key, e.versionId, hash, e.lastUpdated);
    if (own !== undefined) {
      this.ledger.setBase(key, own);
      return 'own';
    }
    const current = this.#replica.current(key);
    let res: LocalWriteResult;
    if (e.deleted || e.resource === undefined) {
      if (current === undefined || current.deleted) return 'unchanged';
      res = this.#replica.write(key, null, { author: this.#author });
    } else {
      const baseId = this.ledger.base(key);
      const baseVersion = baseId === undefined ? undefined : this.#replica.version(key, baseId);
      let body = prepare(e.resource, (baseVersion ?? current)?.body);
      if (this.#mapping !== undefined) {
        try {
          body = this.#mapping.translate(body, 'inbound').resource;
        } catch (err) {
          if ((err as { code?: unknown }).code !== 'ERR_MAPPING_UNMAPPED_CODE') throw err;
          this.#log?.warn({ type, err: describe(err), map: (err as { map?: unknown }).map, path: (err as { path?: unknown }).path }, 'hospital poller: hospital version refused by a code map (unmapped: reject), not merged');
          return 'rejected';
        }
      }
      if (this.#matcher !== undefined && type === 'Patient' && (current === undefined || current.deleted)) {
        try {
          body = this.#matcher.apply(body).resource;
        } catch (err) {
          this.#log?.warn({ type, err: describe(err) }, 'hospital poller: patient matching failed; merged without match links');
        }
      }
      const isShredded = this.#replica.isShredded;
      if (isShredded !== undefined && refersToShreddedPatient(body, isShredded)) {
        // docs/storage.md "Crypto-shredding": new data about an erased patient is not merged (nor gossiped)
        this.#log?.warn({ type }, 'hospital poller: hospital version refers to a crypto-shredded Patient, not merged');
        return 'rejected';
      }
      const issues = validateFhirResource(body);
      if (issues.length > 0) {
        this.#log?.warn(
          { type, issues: issues.length, expressions: issues.flatMap((i) => i.expression ?? []).slice(0, 5) },
          'hospital poller: hospital version is not valid FHIR R4, not merged',
        );
        return 'rejected';
      }
      try {
        res = this.#replica.write(key, body, { ...(baseVersion !== undefined ? { baseVersionId: baseVersion.versionId } : {}), author: this.#author });
      } catch (err) {
        if (!(err instanceof UnknownVersionError)) throw err;
        res = this.#replica.write(key, body, { author: this.#author });
      }
    }
    // What does the hospital hold now, in node terms?
    const merged = res.version;
    const mergedHash = merged.deleted || merged.body === null ? contentHash(null) : contentHash(parseFhirJson(merged.body) as FhirJsonObject);
    if (mergedHash === hash) {
      this.ledger.setBase(key, merged.versionId);
      this.ledger.setHolds(key, merged.versionId, e.lastUpdated);
    } else {
      this.ledger.setHolds(key, null, e.lastUpdated);
    }
    if (res.update === undefined) return 'unchanged';
    this.#onUpdate(key, res.update);
    return 'applied';
  }
}
