/**
 * Writes each node's merged resources to its hospital FHIR server.
 *
 * Versions arrive faster than a hospital server takes them (an import, a burst of gossip), so the
 * sync keeps only the latest pending version per resource and writes it; older pending versions of
 * the same resource are skipped, never written out of order. A failed write is retried with
 * exponential backoff and jitter; after `maxAttempts` it is recorded in `failures()` and retried
 * again on the next version of that resource.
 *
 * A node uses the durable `HospitalOutbox` (src/hospital/outbox.ts) instead, which has the
 * same surface; this in-memory variant remains for embedding without Redis.
 */
import { parseFhirJson } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import type { VersionRecord } from '../store/store.ts';

/** What the sync needs from a hospital client (src/hospital/client.ts implements it). */
export interface HospitalWriter {
  /** Creates or updates a resource on the hospital server (update-as-create). */
  upsert(resource: FhirJsonObject): Promise<unknown>;
  /** Deletes a resource on the hospital server; absent is fine. */
  remove(type: string, id: string): Promise<unknown>;
}

/** Options of {@link HospitalSync}. */
export interface HospitalSyncOptions {
  /** Concurrent writes to the hospital server. Default 4. */
  concurrency?: number;
  /** Tries per version before it is recorded as failed. Default 5. */
  maxAttempts?: number;
  /** Base backoff delay, ms. Default 200. */
  backoffMs?: number;
  /** Called with a failure that used up its attempts. Must not log resource content. */
  onFailure?: (key: string, err: unknown) => void;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** See module doc. */
export class HospitalSync {
  private readonly writer: HospitalWriter;
  private readonly concurrency: number;
  private readonly maxAttempts: number;
  private readonly backoffMs: number;
  private readonly onFailure: ((key: string, err: unknown) => void) | undefined;
  private readonly pending = new Map<string, VersionRecord>();
  private readonly inFlight = new Set<string>();
  private readonly failed = new Map<string, string>();
  private waiters: Array<() => void> = [];
  private written = 0;
  private stopped = false;

  /**
   * @param writer - the hospital client.
   * @param opts - see {@link HospitalSyncOptions}.
   */
  constructor(writer: HospitalWriter, opts: HospitalSyncOptions = {}) {
    this.writer = writer;
    this.concurrency = opts.concurrency ?? 4;
    this.maxAttempts = opts.maxAttempts ?? 5;
    this.backoffMs = opts.backoffMs ?? 200;
    this.onFailure = opts.onFailure;
  }

  /** Queues the latest version of `key` (`Type/id`) for writing. */
  enqueue(key: string, version: VersionRecord): void {
    if (this.stopped) return;
    this.pending.set(key, version);
    this.pump();
  }

  /** Resolves when nothing is pending or in flight. */
  idle(): Promise<void> {
    if (this.pending.size === 0 && this.inFlight.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Number of resources waiting or being written. */
  get backlog(): number {
    return this.pending.size + this.inFlight.size;
  }

  /** Resources whose last version could not be written: key → error code/message (no PHI). */
  failures(): ReadonlyMap<string, string> {
    return this.failed;
  }

  /** Versions written successfully. */
  get writes(): number {
    return this.written;
  }

  /** Stops taking new work; in-flight writes finish. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.pending.clear();
    await this.idle();
  }

  private pump(): void {
    for (const [key, version] of this.pending) {
      if (this.inFlight.size >= this.concurrency) return;
      if (this.inFlight.has(key)) continue;
      this.pending.delete(key);
      this.inFlight.add(key);
      void this.writeOne(key, version).finally(() => {
        this.inFlight.delete(key);
        this.pump();
        if (this.pending.size === 0 && this.inFlight.size === 0) {
          const w = this.waiters;
          this.waiters = [];
          for (const f of w) f();
        }
      });
    }
  }

  private async writeOne(key: string, version: VersionRecord): Promise<void> {
    const [type, id] = [key.slice(0, key.indexOf('/')), key.slice(key.indexOf('/') + 1)];
    for (let attempt = 1; ; attempt++) {
      // A newer version arrived while we were retrying: it supersedes this one.
      if (this.pending.has(key) || this.stopped) return;
      try {
        if (version.deleted || version.body === null) await this.writer.remove(type, id);
        else await this.writer.upsert(parseFhirJson(version.body) as FhirJsonObject);
        this.failed.delete(key);
        this.written++;
        return;
      } catch (err) {
        // A refusal (HTTP 4xx other than 408/429) fails the same way every time: do not retry it.
        const permanent = (err as { code?: string }).code === 'ERR_HOSPITAL_REJECTED';
        if (permanent || attempt >= this.maxAttempts) {
          const e = err as { code?: string; status?: number; name?: string };
          this.failed.set(key, `${e.code ?? e.name ?? 'Error'}${e.status ? ` (HTTP ${e.status})` : ''}`);
          this.onFailure?.(key, err);
          return;
        }
        const delay = this.backoffMs * 2 ** (attempt - 1);
        await sleep(delay / 2 + Math.random() * (delay / 2));
      }
    }
  }
}
