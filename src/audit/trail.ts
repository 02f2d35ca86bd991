/**
 * The node's audit trail: an append-only, hash-chained file of FHIR R4 AuditEvents
 * (https://hl7.org/fhir/R4/auditevent.html), one canonical JSON event per line (JSON Lines, UTF-8,
 * `\n`), written in batches with one `fsync` per batch.
 *
 * Files (docs/security.md "Audit trail"):
 * - `<file>`: the events. Line n (1-based) holds the event with `sequence` n; its `previousHash` is
 *   the SHA-256 of line n-1's bytes (src/audit/chain.ts). Only appended to; a torn last line left by
 *   a crash is cut off (and that is itself recorded).
 * - `<file>.head`: `{"format":"tidegate-audit-head/1","seq":"N","hash":"…","bytes":B}`, the last
 *   event written and the file size after it, replaced (write, fsync, rename) after each batch.
 *   It lets `tidegate audit verify` notice an edited or removed *last* event, which no chain can.
 * - `<file>.lock`: held (`O_EXCL` create, `pid host` inside) while a batch is written, so a CLI
 *   command (`keys rotate --config`, offline `shred`) and the running node can append to one chain.
 *   A lock left by a dead process on the same host is taken over.
 *
 * - `<file>.NNNNNN` and `<file>.segments`: rotated segments and their manifest (src/audit/segments.ts).
 *   Before a batch that would take `<file>` past `maxSegmentBytes`, or once its first event was
 *   written `maxSegmentAgeMs` ago, `<file>` is renamed to the next segment and a new `<file>`
 *   continues the same chain. Each writer notices a rotation done by another (the path names a new
 *   file) and reopens.
 *
 * Events are queued by {@link AuditTrail.record} (synchronous, never blocks a request) and written
 * every `flushIntervalMs` or when `maxBatch` are queued. A crash loses at most the queued events.
 */
import { constants as fsConstants } from 'node:fs';
import { mkdir, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { canonicalJson, sha256Hex } from './canonical.ts';
import { chainOf, withChain } from './chain.ts';
import type { AuditEvent } from './types.ts';
import { GENESIS_HASH } from './types.ts';
import { trailNoticeEvent } from './events.ts';
import { readManifest, reconcileSegments, rotateLiveFile, syncDir } from './segments.ts';

/** Stable codes of {@link AuditTrailError}. */
export type AuditTrailErrorCode = 'ERR_AUDIT_CLOSED' | 'ERR_AUDIT_LOCKED' | 'ERR_AUDIT_CORRUPT' | 'ERR_AUDIT_INVALID_EVENT';

/** A failure of the audit trail (the message names files and counts, never event content). */
export class AuditTrailError extends Error {
  override readonly name = 'AuditTrailError';
  readonly code: AuditTrailErrorCode;
  /**
   * @param code - stable code.
   * @param message - human text.
   */
  constructor(code: AuditTrailErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

/** Options of {@link AuditTrail.open}. Durations in ms. */
export interface AuditTrailOptions {
  /** This node's id (observer of the trail's own notices). */
  nodeId: string;
  /** Longest time an event waits in memory before its batch is written. Default 50. */
  flushIntervalMs?: number;
  /** Most events in one write + fsync. Default 512. */
  maxBatch?: number;
  /** Most events queued while writes fail; beyond, new events are counted and dropped (a notice records how many). Default 100,000. */
  maxPending?: number;
  /** How long a batch waits for `<file>.lock` before the flush fails (and is retried). Default 5000. */
  lockTimeoutMs?: number;
  /** Rotate before a batch would take the live file past this many bytes. Default 64 MiB (67,108,864). */
  maxSegmentBytes?: number;
  /** Rotate before a batch once the live file's first event was written this many ms ago. Default: no age limit. */
  maxSegmentAgeMs?: number;
  /** Errors of background flushes (file names and codes only). */
  log?: Logger;
  /** Clock; tests only. */
  now?: () => Date;
}

/** The last event written: its sequence number and the SHA-256 (hex) of its line. */
export interface TrailHead {
  seq: number;
  hash: string;
}

/** Counters of one {@link AuditTrail}. */
export interface TrailStats {
  /** Events written by this instance. */
  written: number;
  /** Events queued, not written yet. */
  pending: number;
  /** Events dropped because `maxPending` was reached. */
  dropped: number;
  /** Failed batch writes (each retried). */
  failures: number;
}

const HEAD_FORMAT = 'tidegate-audit-head/1';
const CHUNK = 65536;

/** The head file's content, as read. */
export interface HeadFile {
  seq: number;
  hash: string;
  bytes: number;
  /** When the live file's first event was written (ms since the epoch), for age rotation; absent in older head files. */
  since?: number;
}

/** Default {@link AuditTrailOptions.maxSegmentBytes}: 64 MiB. */
export const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;

/** What {@link AuditTrail.newestFirst} may skip: segments that cannot hold a wanted event. */
export interface NewestFirstHints {
  /** Only events with a lower sequence number are wanted (the search's `_cursor`). */
  beforeSeq?: number;
  /** Whether a segment whose events were recorded within [firstMs, lastMs] may hold a wanted event. */
  mayMatchTimes?: (firstMs: number, lastMs: number) => boolean;
}

const TRAIL_FLAGS = fsConstants.O_RDWR | fsConstants.O_APPEND | fsConstants.O_CREAT;

/**
 * Reads `<file>.head`.
 * @param path - the trail file.
 * @returns The head, or undefined when the head file does not exist.
 * @throws AuditTrailError `ERR_AUDIT_CORRUPT` when it exists but does not parse.
 */
export async function readHeadFile(path: string): Promise<HeadFile | undefined> {
  let text: string;
  try {
    text = await readFile(`${path}.head`, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const h = JSON.parse(text) as { format?: unknown; seq?: unknown; hash?: unknown; bytes?: unknown; since?: unknown };
    const seq = Number(h.seq);
    if (h.format !== HEAD_FORMAT || !Number.isSafeInteger(seq) || seq < 0 || typeof h.hash !== 'string' || !/^[0-9a-f]{64}$/.test(h.hash) || !Number.isSafeInteger(h.bytes)) throw new Error('shape');
    return { seq, hash: h.hash, bytes: h.bytes as number, ...(Number.isSafeInteger(h.since) ? { since: h.since as number } : {}) };
  } catch {
    throw new AuditTrailError('ERR_AUDIT_CORRUPT', `${path}.head is not a ${HEAD_FORMAT} file`);
  }
}

/**
 * Reads the lines of a file from the end towards the start (newest event first), within its
 * first `limit` bytes; a last line without `\n` (torn) is skipped.
 * @param fh - an open file.
 * @param limit - bytes of the file to consider (its size when reading started).
 * @yields Each line (without `\n`) and the byte offset where it starts.
 */
export async function* linesBackwards(fh: FileHandle, limit: number): AsyncGenerator<{ line: string; offset: number }> {
  let pos = limit;
  // Bytes from `pos` up to the end of the current line (not emitted yet).
  let tail: Buffer = Buffer.alloc(0);
  let sawNewline = false;
  while (pos > 0) {
    const len = Math.min(CHUNK, pos);
    pos -= len;
    const buf = Buffer.alloc(len);
    const { bytesRead } = await fh.read(buf, 0, len, pos);
    if (bytesRead !== len) throw new AuditTrailError('ERR_AUDIT_CORRUPT', 'the audit trail shrank while being read');
    const data = tail.length > 0 ? Buffer.concat([buf, tail]) : buf;
    let end = data.length;
    while (end > 0) {
      const nl = data.lastIndexOf(0x0a, end - 1);
      if (nl < 0) break;
      // The bytes after the file's last newline are a torn line: never emitted.
      if (sawNewline && end > nl + 1) yield { line: data.subarray(nl + 1, end).toString('utf8'), offset: pos + nl + 1 };
      sawNewline = true;
      end = nl;
    }
    tail = Buffer.from(data.subarray(0, end));
  }
  if (sawNewline && tail.length > 0) yield { line: tail.toString('utf8'), offset: 0 };
}

async function endsWithNewline(fh: FileHandle, size: number): Promise<boolean> {
  if (size === 0) return false;
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, size - 1);
  return b[0] === 0x0a;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** See module doc. Open with {@link AuditTrail.open}. */
export class AuditTrail {
  readonly path: string;
  readonly nodeId: string;
  #fh: FileHandle;
  readonly #maxBytes: number;
  readonly #maxAgeMs: number | undefined;
  /** When the live file's first event was written (ms), undefined while it is empty or unknown. */
  #since: number | undefined;
  /** Segments reconciled with the manifest since this handle was opened. */
  #reconciled = false;
  readonly #flushMs: number;
  readonly #maxBatch: number;
  readonly #maxPending: number;
  readonly #lockMs: number;
  readonly #log: Logger | undefined;
  readonly #now: () => Date;
  #pending: AuditEvent[] = [];
  /** Notices of the trail itself, written before the next batch. */
  #notices: AuditEvent[] = [];
  #head: TrailHead = { seq: 0, hash: GENESIS_HASH };
  /** Where an empty live file continues the chain: the last rotated segment's last event. */
  #base: TrailHead = { seq: 0, hash: GENESIS_HASH };
  /** File size after the last line this instance knows of (-1: unknown, re-read). */
  #size = -1;
  #timer: NodeJS.Timeout | undefined;
  #inflight: Promise<void> | undefined;
  #closed = false;
  #backoffMs = 0;
  #stats: TrailStats = { written: 0, pending: 0, dropped: 0, failures: 0 };
  #droppedUnreported = 0;

  private constructor(path: string, fh: FileHandle, opts: AuditTrailOptions) {
    this.path = path;
    this.nodeId = opts.nodeId;
    this.#fh = fh;
    this.#flushMs = opts.flushIntervalMs ?? 50;
    this.#maxBatch = opts.maxBatch ?? 512;
    this.#maxPending = opts.maxPending ?? 100_000;
    this.#lockMs = opts.lockTimeoutMs ?? 5000;
    this.#maxBytes = opts.maxSegmentBytes ?? DEFAULT_SEGMENT_BYTES;
    this.#maxAgeMs = opts.maxSegmentAgeMs;
    this.#log = opts.log;
    this.#now = opts.now ?? (() => new Date());
  }

  /**
   * Opens (creating when absent, with its folder) the trail at `path` and finds where the chain
   * continues: the last complete line's sequence number and hash. When the head file says more was
   * written than the file holds (truncation), or its hash differs, or a torn last line is found, a
   * Security Alert notice is queued and written first (the chain continues from what the file holds).
   * An empty file continues the chain of the last rotated segment; a segment a crashed rotation
   * left out of the manifest is listed first (src/audit/segments.ts `reconcileSegments`).
   * @param path - the trail file, e.g. `data/<nodeId>.audit.jsonl`.
   * @param opts - see {@link AuditTrailOptions}.
   * @returns The open trail.
   * @throws AuditTrailError `ERR_AUDIT_LOCKED` when the lock cannot be had within `lockTimeoutMs`,
   *   `ERR_AUDIT_CORRUPT` when the last complete line is not a chained AuditEvent; Error with code
   *   `ERR_AUDIT_CORRUPT` for an unreadable manifest or segment end; Error from the file system.
   */
  static async open(path: string, opts: AuditTrailOptions): Promise<AuditTrail> {
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    const fh = await open(path, TRAIL_FLAGS, 0o600);
    const trail = new AuditTrail(path, fh, opts);
    try {
      await trail.#withLock(async () => {
        await trail.#syncTail();
        const head = await readHeadFile(path);
        if (head && (head.seq > trail.#head.seq || (head.seq === trail.#head.seq && head.hash !== trail.#head.hash))) {
          trail.#notices.push(
            trailNoticeEvent(opts.nodeId, 'trail-head-mismatch', 'the head file names an event the trail does not hold: events were removed or edited', trail.#now(), [
              ['expectedSeq', String(head.seq)],
              ['expectedHash', head.hash],
              ['foundSeq', String(trail.#head.seq)],
            ]),
          );
        }
      });
    } catch (err) {
      await trail.#fh.close().catch(() => {});
      throw err;
    }
    if (trail.#notices.length > 0) trail.#schedule(0);
    return trail;
  }

  /** The last event written (seq 0 and the genesis hash for an empty trail). */
  get head(): TrailHead {
    return { ...this.#head };
  }

  /** Counters (see {@link TrailStats}). */
  get stats(): TrailStats {
    return { ...this.#stats, pending: this.#pending.length + this.#notices.length };
  }

  /**
   * Queues an event; it is written within `flushIntervalMs`. Never throws for a full queue: the
   * event is then counted as dropped, and a notice saying how many were dropped is written later.
   * @param event - a FHIR R4 AuditEvent (any chain extension is replaced when written).
   * @throws AuditTrailError `ERR_AUDIT_CLOSED` after {@link close}; `ERR_AUDIT_INVALID_EVENT` when it
   *   is not an AuditEvent with a string id and a `recorded` instant.
   */
  record(event: AuditEvent): void {
    if (this.#closed) throw new AuditTrailError('ERR_AUDIT_CLOSED', 'the audit trail is closed');
    if (event?.resourceType !== 'AuditEvent' || typeof event.id !== 'string' || typeof event.recorded !== 'string') throw new AuditTrailError('ERR_AUDIT_INVALID_EVENT', 'not an AuditEvent with id and recorded');
    if (this.#pending.length >= this.#maxPending) {
      this.#stats.dropped++;
      this.#droppedUnreported++;
      return;
    }
    this.#pending.push(event);
    this.#schedule(this.#pending.length >= this.#maxBatch ? 0 : this.#flushMs);
  }

  /**
   * Writes everything queued so far (in batches) and waits until it is durable (fsync).
   * @throws Error of the last failed write (the events stay queued and are retried).
   */
  async flush(): Promise<void> {
    for (;;) {
      if (this.#inflight) {
        await this.#inflight.catch(() => {});
        continue;
      }
      if (this.#pending.length === 0 && this.#notices.length === 0 && this.#droppedUnreported === 0) return;
      const p = this.#writeBatch();
      this.#inflight = p;
      try {
        await p;
      } finally {
        this.#inflight = undefined;
      }
    }
  }

  /**
   * Flushes and closes the file. Further {@link record} calls throw.
   * @throws Error when the final flush fails (the file is closed anyway; queued events are lost and counted as dropped).
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    try {
      await this.flush();
    } finally {
      this.#stats.dropped += this.#pending.length;
      this.#pending = [];
      await this.#fh.close();
    }
  }

  /**
   * The stored events, newest first (a snapshot: events written meanwhile are not included): the
   * live file from its end, then the rotated segments of the manifest from the newest, each read
   * only when reached (stop iterating to stop reading). Segments that are absent (archived) and,
   * with `hints`, segments that cannot hold a wanted event are skipped. Lines that are not JSON are
   * skipped (`tidegate audit verify` reports them). A segment rotated while this runs is not read twice.
   * @param hints - see {@link NewestFirstHints}; events outside them may still be yielded.
   * @yields Each parsed event with its sequence number (0 when its chain extension is unreadable).
   * @throws Error `ERR_AUDIT_CORRUPT` for an unreadable manifest; Error from the file system.
   */
  async *newestFirst(hints: NewestFirstHints = {}): AsyncGenerator<{ seq: number; event: AuditEvent }> {
    // The live file first, then the manifest: a rotation in between shows the same events in both,
    // and `lowest` drops the second copy.
    let lowest = Infinity;
    const readOne = async function* (path: string): AsyncGenerator<{ seq: number; event: AuditEvent }> {
      let fh: FileHandle;
      try {
        fh = await open(path, 'r');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw err;
      }
      try {
        const size = (await fh.stat()).size;
        for await (const { line } of linesBackwards(fh, size)) {
          let event: AuditEvent;
          try {
            event = JSON.parse(line) as AuditEvent;
          } catch {
            continue;
          }
          const seq = chainOf(event)?.seq ?? 0;
          if (seq > 0) {
            if (seq >= lowest) continue;
            lowest = seq;
          }
          yield { seq, event };
        }
      } finally {
        await fh.close();
      }
    };
    yield* readOne(this.path);
    const manifest = await readManifest(this.path);
    for (const s of [...(manifest?.segments ?? [])].reverse()) {
      if (s.firstSeq >= lowest) continue;
      if (hints.beforeSeq !== undefined && s.firstSeq >= hints.beforeSeq) continue;
      if (hints.mayMatchTimes && !(s.firstRecorded !== undefined && s.lastRecorded !== undefined && hints.mayMatchTimes(Date.parse(s.firstRecorded), Date.parse(s.lastRecorded)))) continue;
      yield* readOne(join(dirname(this.path), s.name));
    }
  }

  #schedule(ms: number): void {
    if (this.#closed && ms > 0) return;
    if (this.#timer) {
      if (ms > 0) return;
      clearTimeout(this.#timer);
    }
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#inflight) {
        this.#schedule(this.#flushMs);
        return;
      }
      const p = this.#writeBatch();
      this.#inflight = p;
      p.then(
        () => {
          this.#backoffMs = 0;
          if (this.#pending.length > 0 || this.#notices.length > 0) this.#schedule(this.#pending.length >= this.#maxBatch ? 0 : this.#flushMs);
        },
        (err: unknown) => {
          this.#backoffMs = Math.min(5000, Math.max(this.#flushMs, this.#backoffMs * 2 || 100));
          this.#log?.error({ file: this.path, err: { name: (err as Error)?.name, code: (err as { code?: string })?.code } }, 'audit trail: batch not written, will retry');
          this.#schedule(this.#backoffMs);
        },
      ).finally(() => {
        if (this.#inflight === p) this.#inflight = undefined;
      });
    }, ms);
    this.#timer.unref?.();
  }

  /** Takes `<file>.lock` for the duration of `fn`. */
  async #withLock<T>(fn: () => Promise<T>): Promise<T> {
    const lockPath = `${this.path}.lock`;
    const me = `${process.pid} ${hostname()}`;
    const deadline = Date.now() + this.#lockMs;
    let lock: FileHandle | undefined;
    while (!lock) {
      try {
        lock = await open(lockPath, 'wx', 0o600);
        await lock.writeFile(me);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const holder = await readFile(lockPath, 'utf8').catch(() => '');
        const [pid, host] = holder.split(' ');
        if (host === hostname() && pid !== undefined && /^\d+$/.test(pid) && Number(pid) !== process.pid && !processAlive(Number(pid))) {
          // Left by a process that died while writing: take it over.
          await unlink(lockPath).catch(() => {});
          continue;
        }
        if (Date.now() >= deadline) throw new AuditTrailError('ERR_AUDIT_LOCKED', `${lockPath} is held by ${holder || 'another process'}`);
        await sleep(5 + Math.floor(Math.random() * 10));
      }
    }
    try {
      return await fn();
    } finally {
      await lock.close().catch(() => {});
      await unlink(lockPath).catch(() => {});
    }
  }

  /**
   * Under the lock: brings `#head`/`#size` up to the file (another process may have appended),
   * cutting off a torn last line.
   */
  async #syncTail(): Promise<void> {
    // Another writer may have rotated: the path then names a new file, or none after a crash between
    // the rename and the new file. Reopen, and list any segment the manifest misses.
    const onDisk = await stat(this.path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    const mine = await this.#fh.stat();
    if (!onDisk || onDisk.ino !== mine.ino || onDisk.dev !== mine.dev) {
      const fh = await open(this.path, TRAIL_FLAGS, 0o600);
      await this.#fh.close().catch(() => {});
      this.#fh = fh;
      if (!onDisk) await syncDir(dirname(this.path));
      this.#reconciled = false;
    }
    if (!this.#reconciled) {
      this.#base = (await reconcileSegments(this.path)).tail;
      this.#reconciled = true;
      this.#size = -1;
    }
    const size = (await this.#fh.stat()).size;
    if (size === this.#size) return;
    if (size === 0) {
      // An empty live file continues the chain of the last rotated segment.
      this.#head = { ...this.#base };
      this.#size = 0;
      this.#since = undefined;
      return;
    }
    if (!(await endsWithNewline(this.#fh, size))) {
      // A crash during a write left a partial line: it was never acknowledged; drop it.
      let keep = 0;
      for await (const { line, offset } of linesBackwards(this.#fh, size)) {
        keep = offset + Buffer.byteLength(line, 'utf8') + 1;
        break;
      }
      await this.#fh.truncate(keep);
      await this.#fh.sync();
      this.#notices.push(trailNoticeEvent(this.nodeId, 'trail-torn-tail', 'a partial last line (interrupted write) was cut off the audit trail', this.#now(), [['bytesDropped', String(size - keep)]]));
      return this.#syncTail();
    }
    for await (const { line } of linesBackwards(this.#fh, size)) {
      let link;
      try {
        link = chainOf(JSON.parse(line));
      } catch {
        link = undefined;
      }
      if (!link) throw new AuditTrailError('ERR_AUDIT_CORRUPT', `the last line of ${this.path} is not a chained AuditEvent; run "tidegate audit verify"`);
      this.#head = { seq: link.seq, hash: sha256Hex(line) };
      this.#size = size;
      this.#since = (await readHeadFile(this.path).catch(() => undefined))?.since ?? this.#since ?? this.#now().getTime();
      return;
    }
    throw new AuditTrailError('ERR_AUDIT_CORRUPT', `${this.path} holds no complete line`);
  }

  /** Writes one batch (notices first) under the lock: append, fsync, head file. */
  async #writeBatch(): Promise<void> {
    await this.#withLock(async () => {
      await this.#syncTail();
      if (this.#droppedUnreported > 0) {
        this.#notices.push(trailNoticeEvent(this.nodeId, 'trail-events-dropped', 'audit events were dropped: the queue was full while writes failed', this.#now(), [['eventsDropped', String(this.#droppedUnreported)]]));
        this.#droppedUnreported = 0;
      }
      const notices = this.#notices.length;
      const batch = [...this.#notices, ...this.#pending.slice(0, Math.max(0, this.#maxBatch - notices))];
      if (batch.length === 0) return;
      let seq = this.#head.seq;
      let prev = this.#head.hash;
      const lines: string[] = [];
      for (const event of batch) {
        seq++;
        const line = canonicalJson(withChain(event, { seq, previousHash: prev }));
        prev = sha256Hex(line);
        lines.push(line);
      }
      const text = Buffer.from(`${lines.join('\n')}\n`, 'utf8');
      if (this.#size > 0 && (this.#size + text.length > this.#maxBytes || (this.#maxAgeMs !== undefined && this.#since !== undefined && this.#now().getTime() - this.#since >= this.#maxAgeMs))) await this.#rotate();
      const before = this.#size;
      try {
        let off = 0;
        while (off < text.length) {
          const { bytesWritten } = await this.#fh.write(text, off, text.length - off);
          off += bytesWritten;
        }
        await this.#fh.sync();
      } catch (err) {
        this.#stats.failures++;
        // Leave no half batch behind: the events are retried as a whole.
        await this.#fh.truncate(before).catch(() => {
          this.#size = -1; // unknown: re-read under the lock next time
        });
        throw err;
      }
      this.#size = before + text.length;
      this.#head = { seq, hash: prev };
      this.#since ??= this.#now().getTime();
      this.#notices = [];
      this.#pending.splice(0, batch.length - notices);
      this.#stats.written += batch.length;
      await this.#writeHead();
    });
  }

  /**
   * Under the lock, with the live file complete and fsynced: renames it to the next segment, lists
   * it in the manifest, opens a new live file (src/audit/segments.ts). The chain head is unchanged.
   */
  async #rotate(): Promise<void> {
    const name = await rotateLiveFile(this.path);
    const fh = await open(this.path, TRAIL_FLAGS, 0o600);
    await this.#fh.close().catch(() => {});
    this.#fh = fh;
    await syncDir(dirname(this.path));
    this.#base = { ...this.#head };
    this.#size = 0;
    this.#since = undefined;
    this.#log?.info({ file: this.path, segment: name, seq: this.#head.seq }, 'audit trail: segment rotated');
  }

  async #writeHead(): Promise<void> {
    const tmp = `${this.path}.head.${randomUUID()}.tmp`;
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify({ format: HEAD_FORMAT, seq: String(this.#head.seq), hash: this.#head.hash, bytes: this.#size, ...(this.#since !== undefined ? { since: this.#since } : {}) }));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, `${this.path}.head`);
  }
}
