/**
 * The check of a remote Yjs update before it is applied (docs/merge.md "Clock skew and forged
 * entries", docs/security.md threat model). Last-writer-wins decides by HLC stamp, so a peer whose
 * wall clock is hours ahead (or a compromised peer forging stamps) would win every same-field
 * conflict and drag every receiver's HLC into the future. An update is refused whole when one log
 * element it inserts
 *
 * - carries a stamp (`t`, a seen stamp in `s`, a carried entry's `t` in `x`) whose physical part
 *   is more than `maxSkewMs` ahead of this node's wall clock: `ERR_CLOCK_SKEW`; or
 * - sits in the log `n:X` but was inserted by another Yjs client than X's (`clientIdFor(X)`), or
 *   names in an entry a node id `n` other than X: `ERR_FORGED_ENTRY`. Relayed entries keep their
 *   writer's client id, so a relay is accepted: only the log and the writer must agree.
 *
 * Elements the update deletes itself never become live and are not checked. The update is only
 * decoded (`Y.decodeUpdate`, https://docs.yjs.dev/api/document-updates), never applied.
 */
import * as Y from 'yjs';
import { clientIdFor } from './doc.ts';

/** Default bound of future skew, ms (5 minutes). */
export const DEFAULT_MAX_CLOCK_SKEW_MS = 5 * 60_000;

/** Prefix of a node's log (see doc.ts). */
const LOG = 'n:';
const STAMP = /^(\d{15})\.\d{6}$/;

/** Why an update was refused. */
export interface SkewViolation {
  /** `ERR_CLOCK_SKEW` (a stamp too far in the future) or `ERR_FORGED_ENTRY` (log and writer disagree). */
  code: 'ERR_CLOCK_SKEW' | 'ERR_FORGED_ENTRY';
  /** Name of the log (`n:<node id>`) holding the refused element. */
  log: string;
  /** For `ERR_CLOCK_SKEW`: how far the stamp's physical part is ahead of the wall clock, ms. */
  skewMs?: number;
}

/** Raised by `Replica.applyRemote` when an update fails {@link checkUpdate}; nothing of it was applied. */
export class RefusedUpdateError extends Error {
  readonly code: SkewViolation['code'];
  readonly log: string;
  readonly skewMs: number | undefined;
  /** `Type/id` of the refused update. */
  readonly key: string;
  /** Marks a refusal for the gossip layer: the message is quarantined with {@link code}, never retried (src/tide/tide.ts). */
  readonly refused = true;
  override readonly name = 'RefusedUpdateError';
  /** @param key - `Type/id` of the resource; @param v - the violation. */
  constructor(key: string, v: SkewViolation) {
    super(`Update for ${key} refused: ${v.code} in ${v.log}${v.skewMs !== undefined ? ` (${v.skewMs} ms ahead)` : ''}`);
    this.code = v.code;
    this.key = key;
    this.log = v.log;
    this.skewMs = v.skewMs;
  }
}

/** Options of {@link checkUpdate}. */
export interface CheckOptions {
  /** This node's wall clock now, ms since the epoch. */
  nowMs: number;
  /** Largest accepted future skew of a stamp's physical part, ms. */
  maxSkewMs: number;
  /**
   * The document the update is for, to find the log of an element inserted after one already held.
   * Without it (or when the neighbour is not held yet: the update waits for its dependencies), such
   * elements are checked for their stamps only.
   */
  doc?: Y.Doc;
}

const clientIds = new Map<string, number>();
function clientOf(nodeId: string): number {
  let c = clientIds.get(nodeId);
  if (c === undefined) {
    if (clientIds.size > 10_000) clientIds.clear();
    clientIds.set(nodeId, (c = clientIdFor(nodeId)));
  }
  return c;
}

/** The root type name of a held item (undefined when not held, garbage-collected or nested). */
function heldLog(doc: Y.Doc | undefined, id: Y.ID): string | undefined {
  if (!doc || Y.getState(doc.store, id.client) <= id.clock) return undefined;
  const item = Y.getItem(doc.store, id);
  if (!(item instanceof Y.Item) || !(item.parent instanceof Y.AbstractType) || item.parent._item !== null) return undefined;
  try {
    return Y.findRootTypeKey(item.parent);
  } catch {
    return undefined;
  }
}

/**
 * A stamp as a JSON string value (`"MMMMMMMMMMMMMMM.CCCCCC"` not followed by `:`, so not an object
 * key). Stamps inside an entry's value `v` are escaped (`\"…\"`) and never match: a value cannot
 * fake or hide one.
 */
const STAMP_VALUE = /"(\d{15})\.\d{6}"(?!:)/g;
/** An entry naming its node (`"n":`): never written by tidegate (the node id is the log's). */
const NODE_MEMBER = '"n":';

/**
 * The greatest stamp ms in one log element text (`t`, the values of `s`, the `t` of carried
 * entries `x`), and whether an entry names a node other than `nodeId`. A text scan of the JSON
 * string values rather than JSON.parse (several times faster); a text with a `\u` escape, which
 * could spell a stamp the scan does not see, is parsed instead.
 */
function scanElement(text: string, nodeId: string): { maxMs: number; forged: boolean } {
  if (text.includes('\\u')) return scanParsed(text, nodeId);
  let maxMs = 0;
  for (const m of text.matchAll(STAMP_VALUE)) {
    const ms = Number(m[1]);
    if (ms > maxMs) maxMs = ms;
  }
  return { maxMs, forged: text.includes(NODE_MEMBER) && scanParsed(text, nodeId).forged };
}

/** Physical part (ms) of a well-formed stamp, else undefined. */
function stampMs(s: unknown): number | undefined {
  if (typeof s !== 'string') return undefined;
  const m = STAMP.exec(s);
  return m ? Number(m[1]) : undefined;
}

/** {@link scanElement} by JSON.parse: the stamps it reads, and entries naming another node. */
function scanParsed(text: string, nodeId: string): { maxMs: number; forged: boolean } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return { maxMs: 0, forged: false }; // not a log element: ignored by the merge too
  }
  let maxMs = 0;
  let forged = false;
  const see = (s: unknown): void => {
    const ms = stampMs(s);
    if (ms !== undefined && ms > maxMs) maxMs = ms;
  };
  const entry = (e: unknown): void => {
    if (typeof e !== 'object' || e === null) return;
    const { n, t, s, x } = e as { n?: unknown; t?: unknown; s?: unknown; x?: unknown };
    if (n !== undefined && n !== nodeId) forged = true;
    see(t);
    if (typeof s === 'object' && s !== null) for (const v of Object.values(s)) see(v);
    if (Array.isArray(x)) for (const c of x) entry(c);
  };
  if (typeof parsed === 'object' && parsed !== null) {
    const { t, e } = parsed as { t?: unknown; e?: unknown };
    see(t);
    if (Array.isArray(e)) for (const item of e) entry(item);
  }
  return { maxMs, forged };
}

/**
 * Checks a remote update (v1 encoding) before it is applied: see module doc.
 * @param update - Yjs update bytes (v1).
 * @param opts - wall clock, bound and (optionally) the current document, see {@link CheckOptions}.
 * @returns The first violation found, or undefined when the update may be applied.
 * @throws Error when the bytes are not a Yjs update.
 */
export function checkUpdate(update: Uint8Array, opts: CheckOptions): SkewViolation | undefined {
  const { structs, ds } = Y.decodeUpdate(update);
  const limit = opts.nowMs + opts.maxSkewMs;
  // log name of each item of the update, by client (in clock order, as Yjs encodes them)
  const logs = new Map<number, Array<{ clock: number; end: number; log: string | undefined }>>();
  const unsorted = new Set<number>();
  const logOf = (id: Y.ID | null): string | undefined => {
    if (id === null) return undefined;
    const ranges = logs.get(id.client);
    if (ranges) {
      // binary search: the last range starting at or before the clock
      let lo = 0;
      let hi = ranges.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (ranges[mid]!.clock <= id.clock) lo = mid;
        else hi = mid - 1;
      }
      const r = ranges[lo];
      if (r && id.clock >= r.clock && id.clock < r.end) return r.log;
      // a crafted update may list a client twice, out of order
      if (unsorted.has(id.client)) for (const u of ranges) if (id.clock >= u.clock && id.clock < u.end) return u.log;
    }
    return heldLog(opts.doc, id);
  };
  for (const s of structs) {
    if (!(s instanceof Y.Item)) continue;
    const log = typeof s.parent === 'string' ? s.parent : logOf(s.origin) ?? logOf(s.rightOrigin);
    let ranges = logs.get(s.id.client);
    if (!ranges) logs.set(s.id.client, (ranges = []));
    else if (ranges[ranges.length - 1]!.clock > s.id.clock) unsorted.add(s.id.client);
    ranges.push({ clock: s.id.clock, end: s.id.clock + s.length, log });
    const nodeId = log?.startsWith(LOG) ? log.slice(LOG.length) : undefined;
    if (nodeId !== undefined && clientOf(nodeId) !== s.id.client) return { code: 'ERR_FORGED_ENTRY', log: log! };
    // any content that reads as strings (ContentAny as tidegate writes, but also ContentJSON)
    if (s.content instanceof Y.ContentDeleted || !s.content.isCountable()) continue;
    const values = s.content.getContent();
    for (let i = 0; i < values.length; i++) {
      const text = values[i];
      if (typeof text !== 'string') continue;
      if (Y.isDeleted(ds, Y.createID(s.id.client, s.id.clock + i))) continue;
      const { maxMs, forged } = scanElement(text, nodeId ?? '');
      if (forged && nodeId !== undefined) return { code: 'ERR_FORGED_ENTRY', log: log! };
      if (maxMs > limit) return { code: 'ERR_CLOCK_SKEW', log: log ?? 'unknown', skewMs: maxMs - opts.nowMs };
    }
  }
  return undefined;
}
