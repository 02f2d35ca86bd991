/**
 * Rotated segments of the audit trail and their manifest (docs/security.md "Audit trail", "Rotation").
 *
 * The trail `<file>` is the live segment. When it is rotated it is renamed to `<file>.NNNNNN`
 * (index 1, 2, 3, …, six digits or more) and never written again; a new, empty `<file>` follows.
 * The chain does not restart: the first event of the new segment continues the sequence numbers and
 * its `previousHash` is the hash of the last line of the previous segment (src/audit/chain.ts).
 *
 * `<file>.segments` (the manifest, replaced by write, fsync, rename) lists each rotated segment:
 * `{"format":"tidegate-audit-segments/1","segments":[{ name, previous, previousHash, firstSeq,
 * lastSeq, lastHash, bytes, firstRecorded?, lastRecorded? }]}` — the previous segment's name and
 * last hash, the sequence range, the hash of the last line, the size in bytes and the earliest and
 * latest `recorded` instant (for date searches). Names hold the trail's file name and a counter,
 * the manifest ids, counts, hashes and instants: no PHI.
 *
 * A rotation is: rename `<file>` to the next segment name and fsync the folder; add the segment to
 * the manifest; create the new `<file>`. A crash after any step leaves a state {@link reconcileSegments}
 * completes on the next open (a renamed segment missing from the manifest is added), so no event is
 * lost or written twice. Segments are never deleted by tidegate: the operator archives them.
 */
import { open, readdir, readFile, rename } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { chainOf } from './chain.ts';
import { sha256Hex } from './canonical.ts';
import { GENESIS_HASH } from './types.ts';

const MANIFEST_FORMAT = 'tidegate-audit-segments/1';
const HEX64 = /^[0-9a-f]{64}$/;

/** One rotated segment, as listed in the manifest. Sequence numbers ≥ 1; times ISO 8601 instants. */
export interface SegmentEntry {
  /** File name (no folder), `<trail file name>.NNNNNN`. */
  name: string;
  /** Name of the segment before it, or null for the first segment of the trail. */
  previous: string | null;
  /** SHA-256 (hex) of the previous segment's last line (64 zeros for the first segment): the first event's `previousHash`. */
  previousHash: string;
  firstSeq: number;
  lastSeq: number;
  /** SHA-256 (hex) of the segment's last line. */
  lastHash: string;
  /** File size in bytes. */
  bytes: number;
  /** Earliest and latest `recorded` of its events (absent when none parses). */
  firstRecorded?: string;
  lastRecorded?: string;
}

/** The manifest `<file>.segments`. */
export interface Manifest {
  segments: SegmentEntry[];
}

/** Path of the manifest of a trail file. */
export const manifestPath = (trailFile: string): string => `${trailFile}.segments`;

/**
 * File name of segment `index` of a trail.
 * @param trailFile - the trail (live segment) path.
 * @param index - 1, 2, … .
 * @returns `<trail file name>.NNNNNN` (no folder).
 */
export function segmentName(trailFile: string, index: number): string {
  return `${basename(trailFile)}.${String(index).padStart(6, '0')}`;
}

/**
 * The index of a segment file name of this trail, or undefined when the name is not one.
 * @param trailFile - the trail path.
 * @param name - a file name in its folder.
 */
export function segmentIndex(trailFile: string, name: string): number | undefined {
  const prefix = `${basename(trailFile)}.`;
  if (!name.startsWith(prefix)) return undefined;
  const rest = name.slice(prefix.length);
  return /^\d{6,15}$/.test(rest) && Number(rest) > 0 ? Number(rest) : undefined;
}

/**
 * Segment files present next to a trail, in index order.
 * @param trailFile - the trail path.
 * @returns `{ name, index }` per file `<trail>.NNNNNN`.
 * @throws Error from the file system (not for a missing folder: empty).
 */
export async function listSegmentFiles(trailFile: string): Promise<Array<{ name: string; index: number }>> {
  let names: string[];
  try {
    names = await readdir(dirname(trailFile));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  return names.flatMap((name) => {
    const index = segmentIndex(trailFile, name);
    return index === undefined ? [] : [{ name, index }];
  }).sort((a, b) => a.index - b.index);
}

function bad(trailFile: string): Error {
  const e = new Error(`${manifestPath(trailFile)} is not a ${MANIFEST_FORMAT} file`) as Error & { code: string };
  e.code = 'ERR_AUDIT_CORRUPT';
  return e;
}

/**
 * Reads the manifest.
 * @param trailFile - the trail path.
 * @returns The manifest, or undefined when there is none (no rotation yet).
 * @throws Error with code `ERR_AUDIT_CORRUPT` when it exists but does not parse.
 */
export async function readManifest(trailFile: string): Promise<Manifest | undefined> {
  let text: string;
  try {
    text = await readFile(manifestPath(trailFile), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let raw: { format?: unknown; segments?: unknown };
  try {
    raw = JSON.parse(text) as typeof raw;
  } catch {
    throw bad(trailFile);
  }
  if (raw.format !== MANIFEST_FORMAT || !Array.isArray(raw.segments)) throw bad(trailFile);
  const segments = raw.segments.map((s: Record<string, unknown>): SegmentEntry => {
    const firstSeq = Number(s['firstSeq']);
    const lastSeq = Number(s['lastSeq']);
    const ok =
      typeof s['name'] === 'string' && segmentIndex(trailFile, s['name']) !== undefined &&
      (s['previous'] === null || typeof s['previous'] === 'string') &&
      typeof s['previousHash'] === 'string' && HEX64.test(s['previousHash']) &&
      typeof s['lastHash'] === 'string' && HEX64.test(s['lastHash']) &&
      Number.isSafeInteger(firstSeq) && firstSeq >= 1 && Number.isSafeInteger(lastSeq) && lastSeq >= firstSeq &&
      Number.isSafeInteger(s['bytes']) &&
      (s['firstRecorded'] === undefined || typeof s['firstRecorded'] === 'string') &&
      (s['lastRecorded'] === undefined || typeof s['lastRecorded'] === 'string');
    if (!ok) throw bad(trailFile);
    return {
      name: s['name'] as string,
      previous: s['previous'] as string | null,
      previousHash: s['previousHash'] as string,
      firstSeq,
      lastSeq,
      lastHash: s['lastHash'] as string,
      bytes: s['bytes'] as number,
      ...(typeof s['firstRecorded'] === 'string' ? { firstRecorded: s['firstRecorded'] } : {}),
      ...(typeof s['lastRecorded'] === 'string' ? { lastRecorded: s['lastRecorded'] } : {}),
    };
  });
  return { segments };
}

/** fsync of a folder, so a rename in it is durable (POSIX; a no-op error on platforms without it). */
export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync().catch(() => {});
  } finally {
    await fh.close();
  }
}

async function writeManifest(trailFile: string, m: Manifest): Promise<void> {
  const target = manifestPath(trailFile);
  const tmp = `${target}.${randomUUID()}.tmp`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    const segments = m.segments.map((s) => ({ ...s, firstSeq: String(s.firstSeq), lastSeq: String(s.lastSeq) }));
    await fh.writeFile(`${JSON.stringify({ format: MANIFEST_FORMAT, segments })}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, target);
  await syncDir(dirname(trailFile));
}

/**
 * Reads a whole segment file forward and describes it (chain range, last hash, size, time range).
 * @param path - the segment file.
 * Reads it whole into memory (one segment, at most about `maxSegmentBytes`); lines that are not
 * chained AuditEvents are skipped (`tidegate audit verify` reports them).
 * @returns The facts, or undefined when it holds no chained event; `firstPrevious` is the first
 *   chained event's `previousHash`.
 * @throws Error with code `ERR_AUDIT_CORRUPT` when the last line is not a chained AuditEvent.
 */
export async function scanSegment(path: string): Promise<{ firstSeq: number; firstPrevious: string; lastSeq: number; lastHash: string; bytes: number; firstRecorded?: string; lastRecorded?: string } | undefined> {
  const buf = await readFile(path);
  let start = 0;
  let first: { seq: number; previousHash: string } | undefined;
  let last: { seq: number; hash: string } | undefined;
  let lo = Infinity;
  let hi = -Infinity;
  for (let nl = buf.indexOf(0x0a, start); nl >= 0; nl = buf.indexOf(0x0a, start)) {
    const line = buf.subarray(start, nl).toString('utf8');
    start = nl + 1;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      value = undefined;
    }
    // An unreadable line in the middle is left to `tidegate audit verify`: rotation must not stop the trail.
    const link = chainOf(value);
    if (!link) {
      last = undefined;
      continue;
    }
    first ??= link;
    last = { seq: link.seq, hash: sha256Hex(line) };
    const t = Date.parse(String((value as { recorded?: unknown }).recorded));
    if (Number.isFinite(t)) {
      lo = Math.min(lo, t);
      hi = Math.max(hi, t);
    }
  }
  if (!first) return undefined;
  if (!last) {
    const e = new Error(`the last line of ${basename(path)} is not a chained AuditEvent; run "tidegate audit verify"`) as Error & { code: string };
    e.code = 'ERR_AUDIT_CORRUPT';
    throw e;
  }
  return {
    firstSeq: first.seq,
    firstPrevious: first.previousHash,
    lastSeq: last.seq,
    lastHash: last.hash,
    bytes: start,
    ...(Number.isFinite(lo) ? { firstRecorded: new Date(lo).toISOString(), lastRecorded: new Date(hi).toISOString() } : {}),
  };
}

/**
 * Brings the manifest up to the segment files on disk: a segment renamed by a rotation that was
 * interrupted before the manifest was written is added now (the writer calls this under the trail's
 * lock on open and after each rotation). Listed segments that are absent (archived) stay listed.
 * @param trailFile - the trail path.
 * @returns The manifest (empty when there are no segments) and the chain point the live file
 *   continues from: the last segment's last sequence number and hash (seq 0 and the genesis hash
 *   without segments).
 * @throws Error with code `ERR_AUDIT_CORRUPT` for an unreadable manifest or segment; Error from the file system.
 */
export async function reconcileSegments(trailFile: string): Promise<{ manifest: Manifest; tail: { seq: number; hash: string } }> {
  const manifest = (await readManifest(trailFile)) ?? { segments: [] };
  const lastListed = manifest.segments.at(-1);
  const lastIndex = lastListed ? segmentIndex(trailFile, lastListed.name)! : 0;
  let added = false;
  for (const f of await listSegmentFiles(trailFile)) {
    if (f.index <= lastIndex) continue;
    const facts = await scanSegment(join(dirname(trailFile), f.name));
    if (!facts) continue;
    const prev = manifest.segments.at(-1);
    manifest.segments.push({
      name: f.name,
      // Without a listed predecessor (a lost manifest, earlier segments archived), the first event says.
      previous: prev?.name ?? (f.index > 1 ? segmentName(trailFile, f.index - 1) : null),
      previousHash: prev?.lastHash ?? facts.firstPrevious,
      firstSeq: facts.firstSeq,
      lastSeq: facts.lastSeq,
      lastHash: facts.lastHash,
      bytes: facts.bytes,
      ...(facts.firstRecorded ? { firstRecorded: facts.firstRecorded, lastRecorded: facts.lastRecorded! } : {}),
    });
    added = true;
  }
  if (added) await writeManifest(trailFile, manifest);
  const last = manifest.segments.at(-1);
  return { manifest, tail: last ? { seq: last.lastSeq, hash: last.lastHash } : { seq: 0, hash: GENESIS_HASH } };
}

/**
 * Rotation steps 1 and 2 (see module doc): renames the live file to the next segment name, makes the
 * rename durable, and lists the segment in the manifest. The caller holds the trail's lock, has
 * fsynced the live file, and creates the new live file afterwards.
 * @param trailFile - the trail path; its file must end with a complete line.
 * @returns The new segment's name.
 * @throws Error from the file system; Error `ERR_AUDIT_CORRUPT` as {@link reconcileSegments}.
 */
export async function rotateLiveFile(trailFile: string): Promise<string> {
  const files = await listSegmentFiles(trailFile);
  const listed = (await readManifest(trailFile))?.segments.at(-1);
  const index = Math.max(files.at(-1)?.index ?? 0, listed ? segmentIndex(trailFile, listed.name)! : 0) + 1;
  const name = segmentName(trailFile, index);
  await rename(trailFile, join(dirname(trailFile), name));
  await syncDir(dirname(trailFile));
  await reconcileSegments(trailFile);
  return name;
}
