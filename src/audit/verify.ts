/**
 * `tidegate audit verify`: walks the audit trail's hash chain (src/audit/chain.ts) from the first
 * line and reports the first event that was edited, removed or reordered.
 *
 * Per line n (in file order) it checks, in this order:
 * 1. the line is JSON, an AuditEvent, and carries one well-formed chain extension (`unreadable`);
 * 2. the line is exactly the canonical JSON (RFC 8785) of what it parses to (`edited`): any byte
 *    changed outside a value is caught here, inside a value by the next check;
 * 3. its `sequence` is the previous one + 1: a jump means events were `removed` (or `reordered`, when
 *    a missing number shows up later in the file); a number already passed means `reordered`;
 * 4. its `previousHash` is the SHA-256 of the previous line. When this link breaks but the next
 *    link (to line n+1) holds, line n-1 was `edited`; when both break, line n was edited.
 *
 * Then the head file (`<file>.head`, written after each batch) catches what no chain can: the last
 * event edited (`edited`) or the last events cut off (`removed`). `expect` checks an anchor kept
 * elsewhere (`SEQ:HASH` from an earlier run) the same way.
 *
 * A torn last line (a write interrupted by a crash; the writer cuts it off on its next start) and a
 * head file one batch behind the file (a crash between the two writes) are warnings, not failures.
 *
 * Rotated segments (src/audit/segments.ts) are walked first, in index order, then the live file, as
 * one chain: a missing segment is `removed` (or, unlisted, a `removed` gap in the sequence), swapped
 * segments are `reordered`, a truncated one leaves a `removed` gap, an edited one breaks a link.
 * Then each walked segment is checked against its manifest entry (`manifest`: sequence range, last
 * hash, size). Segments archived away are accepted only with `from`: the walk then starts at that
 * segment, trusting its recorded previous hash, and says so in `warnings`. A segment renamed but not
 * yet in the manifest (a rotation interrupted by a crash) is a warning.
 */
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { canonicalJson, sha256Hex } from './canonical.ts';
import { chainOf } from './chain.ts';
import type { ChainLink } from './chain.ts';
import { basename, dirname, join } from 'node:path';
import { readHeadFile } from './trail.ts';
import { listSegmentFiles, readManifest, segmentIndex } from './segments.ts';
import type { SegmentEntry } from './segments.ts';
import type { HeadFile } from './trail.ts';
import { GENESIS_HASH } from './types.ts';

/** What went wrong first. */
export interface VerifyProblem {
  kind: 'unreadable' | 'edited' | 'removed' | 'reordered' | 'head-missing' | 'manifest';
  /** 1-based line number in the file where it was noticed. */
  line: number;
  /** The file (name, no folder) where it was noticed: a segment or the live file. */
  segment?: string;
  /** The sequence number of the event concerned, when known. */
  seq?: number;
  /** Human explanation (sequence numbers and line numbers only). */
  message: string;
}

/** Result of {@link verifyTrail}. */
export interface VerifyReport {
  ok: boolean;
  file: string;
  /** Complete lines read. */
  events: number;
  /** Segment files walked (names, oldest first; the live file last). */
  segments: string[];
  /** The last event: sequence number and SHA-256 of its line (keep it elsewhere as an anchor). */
  head: { seq: number; hash: string };
  problem?: VerifyProblem;
  warnings: string[];
}

interface Line {
  text: string;
  no: number;
  /** File name of the segment. */
  file: string;
}

/** Facts of one walked file, for the manifest check. */
interface Walked {
  name: string;
  firstSeq?: number;
  lastSeq?: number;
  lastHash?: string;
  bytes: number;
  torn: number;
}

/** Complete lines of a file, in order; reports a torn last line through `torn`. */
async function* linesForward(fh: FileHandle, torn: { bytes: number }, file: string): AsyncGenerator<Line> {
  const size = (await fh.stat()).size;
  let pos = 0;
  let carry: Buffer = Buffer.alloc(0);
  let no = 0;
  const chunk = Buffer.alloc(1 << 20);
  while (pos < size) {
    const { bytesRead } = await fh.read(chunk, 0, Math.min(chunk.length, size - pos), pos);
    if (bytesRead === 0) break;
    pos += bytesRead;
    const data = carry.length > 0 ? Buffer.concat([carry, chunk.subarray(0, bytesRead)]) : chunk.subarray(0, bytesRead);
    let start = 0;
    for (let nl = data.indexOf(0x0a, start); nl >= 0; nl = data.indexOf(0x0a, start)) {
      no++;
      yield { text: data.subarray(start, nl).toString('utf8'), no, file };
      start = nl + 1;
    }
    carry = Buffer.from(data.subarray(start));
  }
  torn.bytes = carry.length;
}

type Parsed = { ok: true; link: ChainLink; hash: string } | { ok: false; why: string };

function parseLine(text: string): Parsed {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { ok: false, why: 'is not JSON' };
  }
  if ((value as { resourceType?: unknown } | null)?.resourceType !== 'AuditEvent') return { ok: false, why: 'is not an AuditEvent' };
  const link = chainOf(value);
  if (!link) return { ok: false, why: 'has no well-formed chain extension' };
  let canonical: string;
  try {
    canonical = canonicalJson(value);
  } catch {
    return { ok: false, why: 'does not serialize' };
  }
  if (canonical !== text) return { ok: false, why: 'is not in canonical form' };
  return { ok: true, link, hash: sha256Hex(text) };
}

/**
 * Verifies a trail: its rotated segments in order, then the live file (see module doc).
 * @param path - the trail file (the live segment).
 * @param opts.expect - an anchor `{ seq, hash }` recorded earlier: the event `seq` must still hash to `hash`.
 * @param opts.from - name of the first segment to walk (those before it were archived): its recorded
 *   previous hash (manifest entry, else its first event's `previousHash`) is trusted, with a warning.
 * @returns The report; `ok` false with `problem` set at the first problem found.
 * @throws Error when `from` names no segment of this trail, or a file cannot be read;
 *   AuditTrailError / Error `ERR_AUDIT_CORRUPT` when the head file or the manifest is unreadable.
 */
export async function verifyTrail(path: string, opts: { expect?: { seq: number; hash: string }; from?: string } = {}): Promise<VerifyReport> {
  const head: HeadFile | undefined = await readHeadFile(path);
  const listed: SegmentEntry[] = (await readManifest(path))?.segments ?? [];
  const present = new Set((await listSegmentFiles(path)).map((f) => f.name));
  const lastListed = listed.length > 0 ? segmentIndex(path, listed.at(-1)!.name)! : 0;
  const byName = new Map(listed.map((e) => [e.name, e]));
  const order = [...new Set([...listed.map((e) => e.name), ...present])].sort((a, b) => segmentIndex(path, a)! - segmentIndex(path, b)!);
  const warnings: string[] = [];
  const live = basename(path);
  let events = 0;
  let prev = { seq: 0, hash: GENESIS_HASH, no: 0, file: order[0] ?? live };
  const walked: Walked[] = [];
  const hashAt = new Map<number, string>();
  const watch = new Set<number>([head?.seq ?? 0, opts.expect?.seq ?? 0].filter((n) => n > 0));
  const names = (): string[] => walked.map((w) => w.name);
  const report = (problem: VerifyProblem): VerifyReport => ({ ok: false, file: path, events, segments: names(), head: { seq: prev.seq, hash: prev.hash }, problem, warnings });

  let start = 0;
  if (opts.from !== undefined) {
    start = order.indexOf(opts.from);
    if (start < 0 || !present.has(opts.from)) throw new Error(`--from: ${opts.from} is not a segment of this trail present on disk`);
    const entry = byName.get(opts.from);
    let link: ChainLink | undefined = entry ? { seq: entry.firstSeq, previousHash: entry.previousHash } : undefined;
    if (!link) {
      const fh = await open(join(dirname(path), opts.from), 'r');
      try {
        for await (const l of linesForward(fh, { bytes: 0 }, opts.from)) {
          const p = parseLine(l.text);
          if (p.ok) link = p.link;
          break;
        }
      } finally {
        await fh.close();
      }
    }
    if (!link) throw new Error(`--from: ${opts.from} holds no readable first event`);
    prev = { seq: link.seq - 1, hash: link.previousHash, no: 0, file: opts.from };
    warnings.push(`started at segment ${opts.from} (${start} earlier segment(s) not checked): trusted its recorded previous hash ${link.previousHash} for event ${link.seq - 1}`);
  }
  const files = order.slice(start);
  for (const name of files) {
    const idx = segmentIndex(path, name)!;
    if (!present.has(name)) {
      const hint = name === order[start] ? `; if it was archived, verify from the first segment present with --from` : '';
      return report({ kind: 'removed', line: 0, segment: name, ...(byName.has(name) ? { seq: byName.get(name)!.firstSeq } : {}), message: `segment ${name} is listed in the manifest but missing: its events were removed${hint}` });
    }
    if (!byName.has(name)) {
      if (idx <= lastListed) return report({ kind: 'manifest', line: 0, segment: name, message: `segment ${name} is not in the manifest, but a later segment is: the manifest was edited` });
      warnings.push(`segment ${name} is not in the manifest yet (a rotation was interrupted; the writer adds it on its next start)`);
    }
  }
  let liveExists = true;
  try {
    await open(path, 'r').then((fh) => fh.close());
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || files.length === 0) throw err;
    liveExists = false;
    warnings.push(`${live} is missing after segment ${files.at(-1)} (a rotation was interrupted; the writer creates it on its next start)`);
  }
  if (liveExists) files.push(live);

  async function* allLines(): AsyncGenerator<Line> {
    for (const name of files) {
      const fh = await open(join(dirname(path), name), 'r');
      const w: Walked = { name, bytes: (await fh.stat()).size, torn: 0 };
      walked.push(w);
      const torn = { bytes: 0 };
      try {
        yield* linesForward(fh, torn, name);
      } finally {
        await fh.close();
      }
      w.torn = torn.bytes;
    }
  }

  const lines = allLines();
  try {
    for (let next = await lines.next(); !next.done; ) {
      const line = next.value;
      next = await lines.next();
      events++;
      const w = walked.find((x) => x.name === line.file)!;
      const p = parseLine(line.text);
      const at = line.file === live && files.length === 1 ? '' : ` of ${line.file}`;
      if (!p.ok) return report({ kind: p.why === 'is not in canonical form' ? 'edited' : 'unreadable', line: line.no, segment: line.file, message: `line ${line.no}${at} ${p.why}: it was edited or corrupted` });
      const expected = prev.seq + 1;
      if (p.link.seq !== expected) {
        if (p.link.seq < expected) return report({ kind: 'reordered', line: line.no, segment: line.file, seq: p.link.seq, message: `line ${line.no}${at} holds event ${p.link.seq} after event ${prev.seq}: events were reordered or duplicated` });
        // A jump: is the missing event further down (reordered) or gone (removed)?
        let laterAt: Line | undefined;
        for (let rest = next; !rest.done; rest = await lines.next()) {
          const q = parseLine(rest.value.text);
          if (q.ok && q.link.seq === expected) {
            laterAt = rest.value;
            break;
          }
        }
        if (laterAt !== undefined) return report({ kind: 'reordered', line: line.no, segment: line.file, seq: expected, message: `event ${expected} is on line ${laterAt.no} of ${laterAt.file}, after event ${p.link.seq} on line ${line.no}${at}: events were reordered` });
        const gap = p.link.seq - expected;
        return report({ kind: 'removed', line: line.no, segment: line.file, seq: expected, message: `event${gap > 1 ? `s ${expected}-${p.link.seq - 1}` : ` ${expected}`} missing before line ${line.no}${at} (event ${p.link.seq}): removed` });
      }
      if (p.link.previousHash !== prev.hash) {
        // Which side changed? If this line still chains to the next one, the previous line was edited.
        let nextHolds = false;
        let decided = false;
        if (!next.done) {
          const q = parseLine(next.value.text);
          decided = true;
          nextHolds = q.ok && q.link.previousHash === p.hash;
        } else if (head && head.seq === p.link.seq) {
          decided = true;
          nextHolds = head.hash === p.hash;
        }
        if (prev.no === 0) return report({ kind: 'edited', line: line.no, segment: line.file, seq: p.link.seq, message: `event ${p.link.seq} (line ${line.no}${at}) does not chain to the trusted starting hash: it or its chain fields were edited` });
        if (decided && nextHolds) return report({ kind: 'edited', line: prev.no, segment: prev.file, seq: prev.seq, message: `event ${prev.seq} (line ${prev.no} of ${prev.file}) was edited: its hash is not the one event ${p.link.seq} chained` });
        if (decided) return report({ kind: 'edited', line: line.no, segment: line.file, seq: p.link.seq, message: `event ${p.link.seq} (line ${line.no}${at}) was edited: its chain fields no longer match its neighbours` });
        return report({ kind: 'edited', line: prev.no, segment: prev.file, seq: prev.seq, message: `event ${prev.seq} (line ${prev.no} of ${prev.file}) or the chain fields of the last event ${p.link.seq} were edited` });
      }
      if (watch.has(p.link.seq)) hashAt.set(p.link.seq, p.hash);
      w.firstSeq ??= p.link.seq;
      w.lastSeq = p.link.seq;
      w.lastHash = p.hash;
      prev = { seq: p.link.seq, hash: p.hash, no: line.no, file: line.file };
    }
  } finally {
    await lines.return(undefined);
  }
  for (const w of walked) {
    if (w.name === live) {
      if (w.torn > 0) warnings.push(`${w.torn} byte(s) after the last complete line (an interrupted write; the writer cuts them off on its next start)`);
      continue;
    }
    const e = byName.get(w.name);
    if (w.torn > 0) return report({ kind: 'edited', line: 0, segment: w.name, message: `rotated segment ${w.name} ends in ${w.torn} byte(s) that are not a complete line: it was written to after rotation` });
    if (w.firstSeq === undefined) return report({ kind: 'removed', line: 0, segment: w.name, message: `rotated segment ${w.name} holds no event: its events were removed` });
    if (e && (e.firstSeq !== w.firstSeq || e.lastSeq !== w.lastSeq || e.lastHash !== w.lastHash || e.bytes !== w.bytes)) {
      return report({ kind: 'manifest', line: 0, segment: w.name, seq: e.firstSeq, message: `rotated segment ${w.name} holds events ${w.firstSeq}-${w.lastSeq} (${w.bytes} bytes), the manifest recorded ${e.firstSeq}-${e.lastSeq} (${e.bytes} bytes) and another last hash: the segment or the manifest was edited` });
    }
  }
  const anchors: Array<[string, { seq: number; hash: string }]> = [];
  if (head) anchors.push(['the head file', head]);
  else if (events > 0) return report({ kind: 'head-missing', line: prev.no, seq: prev.seq, message: `${path}.head is missing: the last event cannot be checked (removed or edited events at the end would go unseen)` });
  if (opts.expect) anchors.push(['the expected anchor', opts.expect]);
  for (const [what, a] of anchors) {
    if (a.seq > prev.seq) return report({ kind: 'removed', line: prev.no + 1, seq: prev.seq + 1, message: `${what} names event ${a.seq}, the trail ends at event ${prev.seq}: events ${prev.seq + 1}-${a.seq} were removed` });
    const h = a.seq === prev.seq ? prev.hash : hashAt.get(a.seq);
    if (a.seq > 0 && h !== a.hash && !(opts.from !== undefined && h === undefined)) return report({ kind: 'edited', line: a.seq, seq: a.seq, message: `event ${a.seq} does not hash to what ${what} recorded: it was edited` });
    if (a.seq > 0 && h === undefined) warnings.push(`${what} names event ${a.seq}, before the first segment checked: not checked`);
  }
  if (head && head.seq < prev.seq) warnings.push(`the head file is ${prev.seq - head.seq} event(s) behind (a write was interrupted, or the node is writing now)`);
  return { ok: true, file: path, events, segments: names(), head: { seq: prev.seq, hash: prev.hash }, warnings };
}
