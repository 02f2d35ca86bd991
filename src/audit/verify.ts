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
 */
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { canonicalJson, sha256Hex } from './canonical.ts';
import { chainOf } from './chain.ts';
import type { ChainLink } from './chain.ts';
import { readHeadFile } from './trail.ts';
import type { HeadFile } from './trail.ts';
import { GENESIS_HASH } from './types.ts';

/** What went wrong first. */
export interface VerifyProblem {
  kind: 'unreadable' | 'edited' | 'removed' | 'reordered' | 'head-missing';
  /** 1-based line number in the file where it was noticed. */
  line: number;
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
  /** The last event: sequence number and SHA-256 of its line (keep it elsewhere as an anchor). */
  head: { seq: number; hash: string };
  problem?: VerifyProblem;
  warnings: string[];
}

interface Line {
  text: string;
  no: number;
}

/** Complete lines of a file, in order; reports a torn last line through `torn`. */
async function* linesForward(fh: FileHandle, torn: { bytes: number }): AsyncGenerator<Line> {
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
      yield { text: data.subarray(start, nl).toString('utf8'), no };
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
 * Verifies a trail file (see module doc).
 * @param path - the trail file.
 * @param opts.expect - an anchor `{ seq, hash }` recorded earlier: the event `seq` must still hash to `hash`.
 * @returns The report; `ok` false with `problem` set at the first problem found.
 * @throws Error when the file cannot be opened; AuditTrailError `ERR_AUDIT_CORRUPT` when the head file is unreadable.
 */
export async function verifyTrail(path: string, opts: { expect?: { seq: number; hash: string } } = {}): Promise<VerifyReport> {
  const head: HeadFile | undefined = await readHeadFile(path);
  const fh = await open(path, 'r');
  const warnings: string[] = [];
  const torn = { bytes: 0 };
  let events = 0;
  let prev = { seq: 0, hash: GENESIS_HASH, no: 0 };
  const hashAt = new Map<number, string>();
  const watch = new Set<number>([head?.seq ?? 0, opts.expect?.seq ?? 0].filter((n) => n > 0));
  const report = (problem: VerifyProblem): VerifyReport => ({ ok: false, file: path, events, head: { seq: prev.seq, hash: prev.hash }, problem, warnings });
  try {
    const lines = linesForward(fh, torn);
    for (let next = await lines.next(); !next.done; ) {
      const line = next.value;
      next = await lines.next();
      events++;
      const p = parseLine(line.text);
      if (!p.ok) return report({ kind: p.why === 'is not in canonical form' ? 'edited' : 'unreadable', line: line.no, message: `line ${line.no} ${p.why}: it was edited or corrupted` });
      const expected = prev.seq + 1;
      if (p.link.seq !== expected) {
        if (p.link.seq < expected) return report({ kind: 'reordered', line: line.no, seq: p.link.seq, message: `line ${line.no} holds event ${p.link.seq} after event ${prev.seq}: events were reordered or duplicated` });
        // A jump: is the missing event further down (reordered) or gone (removed)?
        let laterAt: number | undefined;
        for (let rest = next; !rest.done; rest = await lines.next()) {
          const q = parseLine(rest.value.text);
          if (q.ok && q.link.seq === expected) {
            laterAt = rest.value.no;
            break;
          }
        }
        if (laterAt !== undefined) return report({ kind: 'reordered', line: line.no, seq: expected, message: `event ${expected} is on line ${laterAt}, after event ${p.link.seq} on line ${line.no}: events were reordered` });
        const gap = p.link.seq - expected;
        return report({ kind: 'removed', line: line.no, seq: expected, message: `event${gap > 1 ? `s ${expected}-${p.link.seq - 1}` : ` ${expected}`} missing before line ${line.no} (event ${p.link.seq}): removed` });
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
        if (decided && nextHolds) return report({ kind: 'edited', line: prev.no, seq: prev.seq, message: `event ${prev.seq} (line ${prev.no}) was edited: its hash is not the one event ${p.link.seq} chained` });
        if (decided) return report({ kind: 'edited', line: line.no, seq: p.link.seq, message: `event ${p.link.seq} (line ${line.no}) was edited: its chain fields no longer match its neighbours` });
        return report({ kind: 'edited', line: prev.no, seq: prev.seq, message: `event ${prev.seq} (line ${prev.no}) or the chain fields of the last event ${p.link.seq} were edited` });
      }
      if (watch.has(p.link.seq)) hashAt.set(p.link.seq, p.hash);
      prev = { seq: p.link.seq, hash: p.hash, no: line.no };
    }
  } finally {
    await fh.close();
  }
  if (torn.bytes > 0) warnings.push(`${torn.bytes} byte(s) after the last complete line (an interrupted write; the writer cuts them off on its next start)`);
  const anchors: Array<[string, { seq: number; hash: string }]> = [];
  if (head) anchors.push(['the head file', head]);
  else if (events > 0) return report({ kind: 'head-missing', line: prev.no, seq: prev.seq, message: `${path}.head is missing: the last event cannot be checked (removed or edited events at the end would go unseen)` });
  if (opts.expect) anchors.push(['the expected anchor', opts.expect]);
  for (const [what, a] of anchors) {
    if (a.seq > prev.seq) return report({ kind: 'removed', line: prev.no + 1, seq: prev.seq + 1, message: `${what} names event ${a.seq}, the trail ends at event ${prev.seq}: events ${prev.seq + 1}-${a.seq} were removed` });
    const h = a.seq === prev.seq ? prev.hash : hashAt.get(a.seq);
    if (a.seq > 0 && h !== a.hash) return report({ kind: 'edited', line: a.seq, seq: a.seq, message: `event ${a.seq} does not hash to what ${what} recorded: it was edited` });
  }
  if (head && head.seq < prev.seq) warnings.push(`the head file is ${prev.seq - head.seq} event(s) behind (a write was interrupted, or the node is writing now)`);
  return { ok: true, file: path, events, head: { seq: prev.seq, hash: prev.hash }, warnings };
}
