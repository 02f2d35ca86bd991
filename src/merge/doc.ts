/**
 * A FHIR resource as a Yjs document.
 *
 * Layout: one top-level Y.Map named `e` (entries). Its keys are `<element path>\u0001<node id>`:
 * each node writes only its own slot for each path, so Yjs never has to pick a winner between two
 * nodes for one key (Yjs would pick by client id, which must not decide clinical data). The value
 * at a path is decided by tidegate from all nodes' slots: the entry with the greatest hybrid logical
 * clock stamp wins, ties broken by node id. A removed element is a tombstone entry, which competes
 * like any value. An entry that lost to a winner whose writer had not seen it is a conflict record.
 *
 * See docs/merge.md. Yjs internals: https://docs.yjs.dev/api/shared-types/y.map and
 * https://docs.yjs.dev/api/document-updates.
 */
import * as Y from 'yjs';
import { createHash } from 'node:crypto';
import { parseFhirJson, isJsonObject } from '../fhir/json.ts';
import type { FhirJson, FhirJsonObject } from '../fhir/json.ts';
import { parseStamp, isStamp } from './hlc.ts';
import type { HlcStamp } from './hlc.ts';
import { flatten, ordersOf, unflatten } from './flatten.ts';
import type { Leaves } from './flatten.ts';
import type { MergePolicy } from './policy.ts';

const SEP = '\u0001';
/** Path of the resource-level deletion flag (JSON `true` when deleted). */
export const DELETED = '@deleted';

/** One node's slot for one element path. */
export interface Entry {
  /** Value as canonical JSON text; absent for a tombstone. */
  v?: string;
  /** Stamp of the write ({@link HlcStamp}). */
  t: HlcStamp;
  /** Writing node id. */
  n: string;
  /** Author (FHIR reference or user name given by the client), if known. */
  a?: string;
  /** What the writer had seen at this path: node id → stamp of that node's entry. */
  s?: Record<string, HlcStamp>;
  /**
   * This node's earlier entries at this path that the writer had not seen (a stale client at the
   * same node). They would vanish with the slot they were in, so they are carried here until a
   * write that has seen them supersedes them. Never nested.
   */
  x?: Entry[];
}

/** A same-field conflict: a value that lost to a write whose author had not seen it. */
export interface ConflictRecord {
  /** Element path (docs/merge.md grammar). */
  path: string;
  /** The winning entry (absent `v` = removed). */
  winner: Entry;
  /** The losing entry, kept here instead of being dropped. */
  loser: Entry;
  /** `value` for a same-field conflict, `removed-item` when the loser's item was removed. */
  kind: 'value' | 'removed-item';
}

/** Who writes, and when. */
export interface WriteContext {
  nodeId: string;
  stamp: HlcStamp;
  author?: string;
}

/** The state of one path: every node's entry, and the winner. */
export interface PathState {
  entries: Entry[];
  winner: Entry;
}

/** True when the writer of `w` had seen `e` (or a later entry of e's node) at the path. */
function sawEntry(w: Entry, e: Entry): boolean {
  const seen = w.s?.[e.n];
  return seen !== undefined && seen >= e.t;
}

/** An entry without its carried entries, for conflict records. */
function strip(e: Entry): Entry {
  if (!e.x) return e;
  const { x: _x, ...rest } = e;
  return rest;
}

/**
 * Deterministic version id of a document state: `<sum of clocks>.<first 8 hex of SHA-256 over the
 * state vector sorted by client id>`. The sum makes ids grow with the state; the hash tells apart
 * different states with equal sums (e.g. {A:5,B:3} and {A:3,B:5}). A FHIR `id`-typed string.
 */
export function versionIdOf(doc: Y.Doc): string {
  const sv = [...Y.decodeStateVector(Y.encodeStateVector(doc))].sort((a, b) => a[0] - b[0]);
  let sum = 0;
  for (const [, clock] of sv) sum += clock;
  const digest = createHash('sha256').update(sv.map(([c, k]) => `${c}:${k}`).join(',')).digest('hex').slice(0, 8);
  return `${sum}.${digest}`;
}

/** Compares entries by stamp, then node id. Positive when `a` wins over `b`. */
export function compareEntries(a: Entry, b: Entry): number {
  if (a.t !== b.t) return a.t < b.t ? -1 : 1;
  return a.n < b.n ? -1 : a.n > b.n ? 1 : 0;
}

/**
 * A stable 32-bit Yjs client id for a node id (first 4 bytes of SHA-256, as uint32).
 * Each node writes with one client id so state vectors stay small.
 */
export function clientIdFor(nodeId: string): number {
  return createHash('sha256').update(nodeId).digest().readUInt32BE(0);
}

/**
 * Loads a document from a stored Yjs update, ready for `nodeId` to write.
 * @param state - a Yjs update (v1 encoding) holding the whole document, or undefined for a new one.
 * @param nodeId - the local node id; its client id is set after loading so Yjs does not see its own
 *   history arrive as a remote edit.
 * @throws Error when `state` is not a valid Yjs update.
 */
export function loadDoc(state: Uint8Array | undefined, nodeId: string): Y.Doc {
  // A fixed guid: Y.Doc would otherwise draw a random UUID per load (the guid is never used here).
  const doc = new Y.Doc({ gc: true, guid: 'tidegate-resource' });
  if (state && state.length > 0) Y.applyUpdate(doc, state);
  doc.clientID = clientIdFor(nodeId);
  return doc;
}

function entriesMap(doc: Y.Doc): Y.Map<Entry> {
  return doc.getMap<Entry>('e');
}

/**
 * Reads every path's entries and winner.
 * @param doc - a resource document.
 * @returns path → {@link PathState}. Malformed entries (not from a tidegate writer) are ignored.
 */
export function readPaths(doc: Y.Doc): Map<string, PathState> {
  const out = new Map<string, PathState>();
  entriesMap(doc).forEach((entry, key) => {
    const i = key.lastIndexOf(SEP);
    if (i < 0 || typeof entry !== 'object' || entry === null || !isStamp(entry.t) || typeof entry.n !== 'string') return;
    const path = key.slice(0, i);
    const ps = out.get(path);
    if (!ps) out.set(path, { entries: [entry], winner: entry });
    else {
      ps.entries.push(entry);
      if (compareEntries(entry, ps.winner) > 0) ps.winner = entry;
    }
  });
  return out;
}

/** Leaves whose winner is a live value. */
export function liveLeaves(paths: ReadonlyMap<string, PathState>): Leaves {
  const leaves: Leaves = new Map();
  for (const [path, ps] of paths) if (ps.winner.v !== undefined && path !== DELETED) leaves.set(path, ps.winner.v);
  return leaves;
}

/** A rendered resource version. */
export interface Rendered {
  /** The merged resource without `meta.versionId`/`meta.lastUpdated`, or null when never written. */
  resource: FhirJsonObject | null;
  /** True when the resource is deleted. */
  deleted: boolean;
  /** Deterministic version id, see {@link versionIdOf}. */
  versionId: string;
  /** Greatest write stamp's wall time, as an ISO 8601 instant (FHIR `instant`). */
  lastUpdated: string;
  /** Same-field conflicts and removed-item conflicts, ordered by path. */
  conflicts: ConflictRecord[];
}

/**
 * Renders a document: winners per path, array items in order, and conflict records.
 * Every replica holding the same set of updates renders the same result.
 * @param doc - a resource document.
 */
export function render(doc: Y.Doc): Rendered {
  const paths = readPaths(doc);
  const leaves = liveLeaves(paths);
  let maxStamp = '';
  for (const ps of paths.values()) if (ps.winner.t > maxStamp) maxStamp = ps.winner.t;
  const deleted = paths.get(DELETED)?.winner.v === 'true';
  const { resource, orphans } = leaves.size > 0 ? unflatten(leaves) : { resource: null, orphans: [] };
  const conflicts: ConflictRecord[] = [];
  for (const [path, ps] of paths) {
    const candidates = ps.entries.flatMap((e) => [e, ...(e.x ?? [])]);
    for (const e of candidates) {
      if (e === ps.winner || e.v === ps.winner.v) continue;
      if (sawEntry(ps.winner, e)) continue;
      conflicts.push({ path, winner: strip(ps.winner), loser: strip(e), kind: 'value' });
    }
  }
  for (const o of orphans) {
    const ps = paths.get(o.path);
    const cause = paths.get(o.cause);
    if (ps && cause) conflicts.push({ path: o.path, winner: strip(cause.winner), loser: strip(ps.winner), kind: 'removed-item' });
  }
  conflicts.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : compareEntries(a.loser, b.loser)));
  return {
    resource,
    deleted,
    versionId: versionIdOf(doc),
    lastUpdated: maxStamp ? new Date(parseStamp(maxStamp).ms).toISOString() : new Date(0).toISOString(),
    conflicts,
  };
}

/**
 * Writes a new body as a diff against the version the client edited.
 *
 * Only paths whose value differs between `base` and `next` are written, so a client holding a stale
 * copy never reverts elements it did not touch. Each written entry records, in `s`, the entries the
 * client had seen at that path (those of `base`), so a later write it had not seen becomes a conflict
 * record rather than silently disappearing.
 *
 * @param doc - the current document (mutated, in one Yjs transaction with origin `ctx.nodeId`).
 * @param basePaths - {@link readPaths} of the document at the version the client edited.
 * @param next - the new resource body, or null to delete the resource.
 * @param policy - the merge policy.
 * @param ctx - writing node, HLC stamp and author.
 * @returns The number of entries written (0 when nothing changed).
 */
export function writeResource(doc: Y.Doc, basePaths: ReadonlyMap<string, PathState>, next: FhirJsonObject | null, policy: MergePolicy, ctx: WriteContext): number {
  const baseLeaves = liveLeaves(basePaths);
  const changes = new Map<string, string | undefined>();
  const wasDeleted = basePaths.get(DELETED)?.winner.v;
  if (next === null) {
    if (wasDeleted !== 'true') changes.set(DELETED, 'true');
  } else {
    const nextLeaves = flatten(next, policy, ordersOf(baseLeaves));
    for (const [path, text] of nextLeaves) if (baseLeaves.get(path) !== text) changes.set(path, text);
    for (const path of baseLeaves.keys()) if (!nextLeaves.has(path)) changes.set(path, undefined);
    // Every write that changes something also states "not deleted", with what its writer had seen:
    // a concurrent delete then meets this entry at `@deleted`, the later one wins and the other is a
    // conflict record, so neither the delete nor the edit disappears silently.
    if (changes.size > 0 || wasDeleted !== 'false') changes.set(DELETED, 'false');
  }
  if (changes.size === 0) return 0;
  const map = entriesMap(doc);
  doc.transact(() => {
    for (const [path, v] of changes) {
      const s: Record<string, HlcStamp> = {};
      for (const e of basePaths.get(path)?.entries ?? []) s[e.n] = e.t;
      const entry: Entry = { t: ctx.stamp, n: ctx.nodeId };
      if (v !== undefined) entry.v = v;
      if (ctx.author) entry.a = ctx.author;
      if (Object.keys(s).length > 0) entry.s = s;
      // This node's current entry (and what it carries) is lost with the slot unless the writer saw it.
      const slot = `${path}${SEP}${ctx.nodeId}`;
      const own = map.get(slot);
      if (own && isStamp(own.t)) {
        const carried = [strip(own), ...(own.x ?? [])].filter((e) => e.v !== v && !sawEntry(entry, e));
        if (carried.length > 0) entry.x = carried;
      }
      map.set(slot, entry);
    }
  }, ctx.nodeId);
  return changes.size;
}

/** Greatest stamp in the document (for HLC receive events), or undefined when empty. */
export function maxStampOf(doc: Y.Doc): HlcStamp | undefined {
  let max: string | undefined;
  entriesMap(doc).forEach((e) => {
    if (e && isStamp(e.t) && (max === undefined || e.t > max)) max = e.t;
  });
  return max;
}

/** Parses an entry's value text back into FHIR JSON (undefined for a tombstone). */
export function entryValue(e: Entry): FhirJson | undefined {
  return e.v === undefined ? undefined : parseFhirJson(e.v);
}

export { isJsonObject };
