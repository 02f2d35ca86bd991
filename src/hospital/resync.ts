/**
 * Hospital resync: sends the node's current version of every resource (or of given resource
 * types) to its hospital FHIR server again, through the durable outbox (./outbox.ts). For a
 * hospital that lost data (an in-memory server restarted, a restore from an old backup): the
 * outbox only writes new versions, so what was written before would otherwise never come back.
 *
 * - Live resources are written with update-as-create PUT (https://hl7.org/fhir/R4/http.html#update),
 *   idempotent; a resource whose current version is a deletion is sent as DELETE (absent is fine),
 *   so a hospital restored from an old backup does not keep it live.
 * - Crypto-shredded resources (docs/storage.md "Crypto-shredding") are never sent: the store
 *   reports them (`isShredded`) and holds no content for them.
 * - Work is done in bounded batches (default 500 resources): each batch is handed to Redis before
 *   the next is read, and the event loop is yielded between batches, so a large store neither
 *   fills memory nor stalls the FHIR API.
 * - One run at a time per node; progress is visible ({@link HospitalResync.status}).
 *
 * HTTP (mounted with the admin routes, not authenticated beyond them, see src/ops/router.ts):
 * `POST /admin/hospital/resync[?type=Patient[,Observation]]` → 202 `{ status:'started', total, types }`
 * (409 OperationOutcome while one runs, 400 for a bad type); `GET /admin/hospital/resync` → 200 the
 * status of the last run.
 */
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import express from 'express';
import type { Request, Response, Router } from 'express';
import type { ResourceStore, VersionRecord } from '../store/store.ts';
import { isKnownResourceType } from '../fhir/validate.ts';

/** Resource type name (https://hl7.org/fhir/R4/datatypes.html#code, as the FHIR type list uses). */
const RESOURCE_TYPE_RE = /^[A-Z][A-Za-z]{0,63}$/;
/** A resource key `Type/id` (https://hl7.org/fhir/R4/datatypes.html#id). */
const RESOURCE_KEY_RE = /^([A-Z][A-Za-z]{0,63})\/[A-Za-z0-9\-.]{1,64}$/;

/** What the resync needs from the outbox (`HospitalOutbox.resend`). */
export interface ResyncOutbox {
  resend(versions: ReadonlyArray<readonly [string, VersionRecord]>): Promise<number>;
}

/** Logger subset; only counts and types are logged, never resource keys or content. */
export interface ResyncLogger {
  info(obj: Record<string, unknown>, msg?: string): void;
  error(obj: Record<string, unknown>, msg?: string): void;
}

/** Options of {@link HospitalResync}. */
export interface HospitalResyncOptions {
  /** The node's resource store. */
  store: ResourceStore;
  /** The node's hospital outbox. */
  outbox: ResyncOutbox;
  /** Resources per batch handed to the outbox. Default 500. */
  batchSize?: number;
  logger?: ResyncLogger;
}

/** Status of the last (or current) run; counts of resources. Times in ms since the epoch. */
export interface HospitalResyncStatus {
  state: 'idle' | 'running' | 'done' | 'failed';
  /** Resource types asked for; undefined = all. */
  types: string[] | undefined;
  /** Resources of those types held (not shredded) when the run started. */
  total: number;
  /** Live versions queued for an update (PUT). */
  queued: number;
  /** Deleted resources queued for a DELETE. */
  deleted: number;
  /** Resources left out because they were crypto-shredded (or shredded during the run). */
  shredded: number;
  startedAt: number | undefined;
  finishedAt: number | undefined;
  /** Error code of a failed run (no PHI). */
  error: string | undefined;
}

/** A request the resync refuses; `code` is `ERR_RESYNC_BAD_TYPE` or `ERR_RESYNC_RUNNING`. */
export class ResyncError extends Error {
  readonly code: 'ERR_RESYNC_BAD_TYPE' | 'ERR_RESYNC_RUNNING';
  constructor(code: 'ERR_RESYNC_BAD_TYPE' | 'ERR_RESYNC_RUNNING', message: string) {
    super(message);
    this.name = 'ResyncError';
    this.code = code;
  }
}

/**
 * Checks and normalizes resource type names (sorted, deduplicated).
 * @param types - e.g. `['Patient', 'Observation']`; undefined or empty = all types.
 * @returns The sorted list, or undefined for all types.
 * @throws ResyncError `ERR_RESYNC_BAD_TYPE` for a name that is not a resource type name.
 */
export function parseResyncTypes(types: readonly string[] | undefined): string[] | undefined {
  if (types === undefined || types.length === 0) return undefined;
  for (const t of types) {
    if (typeof t !== 'string' || !RESOURCE_TYPE_RE.test(t) || !isKnownResourceType(t)) throw new ResyncError('ERR_RESYNC_BAD_TYPE', `Not an R4 resource type: ${JSON.stringify(String(t).slice(0, 70))}`);
  }
  return [...new Set(types)].sort();
}

/** See module doc. */
export class HospitalResync {
  readonly #store: ResourceStore;
  readonly #outbox: ResyncOutbox;
  readonly #batchSize: number;
  readonly #log: ResyncLogger | undefined;
  #status: HospitalResyncStatus = { state: 'idle', types: undefined, total: 0, queued: 0, deleted: 0, shredded: 0, startedAt: undefined, finishedAt: undefined, error: undefined };
  #run: Promise<HospitalResyncStatus> | undefined;

  /**
   * @param opts - see {@link HospitalResyncOptions}.
   * @throws TypeError for a batch size that is not an integer in [1, 10000].
   */
  constructor(opts: HospitalResyncOptions) {
    const batch = opts.batchSize ?? 500;
    if (!Number.isInteger(batch) || batch < 1 || batch > 10_000) throw new TypeError('HospitalResync: batchSize must be an integer in [1, 10000]');
    this.#store = opts.store;
    this.#outbox = opts.outbox;
    this.#batchSize = batch;
    this.#log = opts.logger;
  }

  /** A copy of the status of the current or last run. */
  status(): HospitalResyncStatus {
    return { ...this.#status, types: this.#status.types ? [...this.#status.types] : undefined };
  }

  /** The current run (resolves to its final status), or undefined when none runs. */
  get running(): Promise<HospitalResyncStatus> | undefined {
    return this.#run;
  }

  /**
   * Starts a run in the background: lists the keys of the given types (cheap: keys only) and
   * returns; the versions are then read and queued batch by batch. Poll {@link status} or await
   * {@link running}.
   * @param types - resource types, or undefined / empty for all.
   * @returns The status at start (`total` = resources to send).
   * @throws ResyncError `ERR_RESYNC_BAD_TYPE` for a bad type name, `ERR_RESYNC_RUNNING` while a run is going on.
   */
  start(types?: readonly string[]): HospitalResyncStatus {
    const wanted = parseResyncTypes(types);
    if (this.#run) throw new ResyncError('ERR_RESYNC_RUNNING', 'A hospital resync is already running');
    const keys: string[] = [];
    let shredded = 0;
    for (const key of this.#store.keys()) {
      const m = RESOURCE_KEY_RE.exec(key);
      if (m === null || (wanted !== undefined && !wanted.includes(m[1]!))) continue;
      if (this.#store.isShredded?.(key) === true) shredded++;
      else keys.push(key);
    }
    this.#status = { state: 'running', types: wanted, total: keys.length, queued: 0, deleted: 0, shredded, startedAt: Date.now(), finishedAt: undefined, error: undefined };
    this.#log?.info({ types: wanted ?? 'all', total: keys.length }, 'hospital resync started');
    this.#run = this.#resend(keys).finally(() => {
      this.#run = undefined;
    });
    return this.status();
  }

  async #resend(keys: string[]): Promise<HospitalResyncStatus> {
    const st = this.#status;
    try {
      for (let i = 0; i < keys.length; i += this.#batchSize) {
        const batch: Array<[string, VersionRecord]> = [];
        for (const key of keys.slice(i, i + this.#batchSize)) {
          // shredded since the listing: the store answers undefined and keeps a tombstone
          const current = this.#store.isShredded?.(key) === true ? undefined : this.#store.get(key)?.versions.at(-1);
          if (current === undefined) {
            st.shredded++;
            continue;
          }
          batch.push([key, current]);
        }
        await this.#outbox.resend(batch);
        for (const [, v] of batch) {
          if (v.deleted || v.body === null) st.deleted++;
          else st.queued++;
        }
        await yieldToLoop();
      }
      st.state = 'done';
    } catch (err) {
      st.state = 'failed';
      st.error = typeof (err as { code?: unknown })?.code === 'string' ? (err as { code: string }).code : (err as Error)?.name ?? 'Error';
      this.#log?.error({ err: st.error, queued: st.queued }, 'hospital resync failed');
    }
    st.finishedAt = Date.now();
    if (st.state === 'done') this.#log?.info({ queued: st.queued, deleted: st.deleted, shredded: st.shredded }, 'hospital resync queued');
    return this.status();
  }
}

function operationOutcome(code: string, diagnostics: string): string {
  return JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] });
}

/**
 * Admin routes of the resync (see module doc): `POST /admin/hospital/resync` with optional
 * `type` query parameters (repeated or comma-separated) → 202 `{ status:'started', total, types }`,
 * 400 / 409 OperationOutcome; `GET /admin/hospital/resync` → 200 {@link HospitalResyncStatus}.
 * @param resync - the node's resync.
 * @returns An express Router.
 */
export function hospitalResyncRouter(resync: HospitalResync): Router {
  const r = express.Router();
  r.post('/admin/hospital/resync', (req: Request, res: Response) => {
    const raw = req.query['type'];
    const given = (Array.isArray(raw) ? raw : raw === undefined ? [] : [raw]).flatMap((v) => String(v).split(','));
    const list = given.filter((v) => v !== '');
    try {
      // `?type=` (or a stray comma) names no type: refused rather than read as "every type"
      if (given.length > list.length) throw new ResyncError('ERR_RESYNC_BAD_TYPE', 'Empty resource type in ?type= (leave type out to resend every type)');
      const st = resync.start(list);
      res.status(202).json({ status: 'started', total: st.total, shredded: st.shredded, types: st.types ?? null });
    } catch (err) {
      if (err instanceof ResyncError) {
        res
          .status(err.code === 'ERR_RESYNC_RUNNING' ? 409 : 400)
          .type('application/fhir+json')
          .send(operationOutcome(err.code === 'ERR_RESYNC_RUNNING' ? 'conflict' : 'invalid', err.message));
        return;
      }
      res.status(500).type('application/fhir+json').send(operationOutcome('exception', 'The resync could not start'));
    }
  });
  r.get('/admin/hospital/resync', (_req: Request, res: Response) => {
    res.status(200).json(resync.status());
  });
  return r;
}
