/**
 * A FHIR resource as a Yjs document.
 *
 * Layout: one top-level Y.Array per writing node, named `n:<node id>` (its *log*). Each element of
 * a log is the JSON text of one write: its stamp, author and {@link Entry}s, one per element path
 * (`p`). A node's live entry for a path (its *slot*) is the last one in its log; a write appends
 * one element and deletes the elements all of whose live entries it supersedes, in one
 * transaction. Only a node writes its own log, so Yjs never has to pick a
 * winner between two nodes (Yjs would pick by client id, which must not decide clinical data), and
 * nested shared types are never created (yjs issues #301, #306). The value at a path is decided by
 * tidegate from all nodes' slots: the entry with the greatest hybrid logical clock stamp wins, ties
 * broken by node id (or, at elements the merge policy marks `first-writer-wins`, the earliest of
 * the entries no other has seen, see {@link firstWriter}). A removed element is a tombstone entry,
 * which competes like any value. An entry that lost to a winner whose writer had not seen it is a
 * conflict record.
 *
 * Why logs rather than one Y.Map keyed by path: a Y.Map overwrite leaves a deleted Yjs item per
 * write that never merges with the node's other deleted items (their keys differ), so a document
 * held one struct per edit ever made (20,000 structs, 21–54 ms to load, after 10,000 edits).
 * Superseded log elements are deleted items of one client in one list; Yjs merges adjacent ones
 * into one struct, so a document holds a handful of structs whatever its history (3 after 10,000
 * edits of four fields).
 *
 * Every write also replaces the node's `@deleted` entry, which carries the writer's state vector
 * right after the write (its *head*, `h`), from which the version the write produced is computed.
 * The heads tell which writes a state merges (see {@link mergedHeads}, used for Provenance).
 *
 * See docs/merge.md. Yjs internals: https://docs.yjs.dev/api/shared-types/y.array and
 * https://docs.yjs.dev/api/document-updates.
 */
import * as Y from 'yjs';
import { createHash } from 'node:crypto';
import { parseFhirJson, isJsonObject } from '../fhir/json.ts';
import type { FhirJson, FhirJsonObject } from '../fhir/json.ts';
import { parseStamp, isStamp } from './hlc.ts';
import type { HlcStamp } from './hlc.ts';
import { flatten, leafMode, newUnflattenCache, ordersOf, unflatten } from './flatten.ts';
import type { UnflattenCache } from './flatten.ts';
import type { Leaves } from './flatten.ts';
import type { MergePolicy } from './policy.ts';
import { choicePattern, hasFirstWriterRules } from './policy.ts';

/** Prefix of a node's log (a top-level Y.Array). */
const LOG = 'n:';
/**
 * The `meta.tag` a rendered resource carries while it has unresolved conflict records, so EHRs can
 * filter on it (`_tag=urn:tidegate:merge|conflict`). Server-managed: a client sending it back is
 * ignored (it is never stored as data).
 */
export const CONFLICT_TAG: Readonly<{ system: string; code: string; display: string }> = Object.freeze({
  system: 'urn:tidegate:merge',
  code: 'conflict',
  display: 'Unresolved merge conflict: see $conflicts',
});

function isConflictTag(t: FhirJson): boolean {
  return isJsonObject(t) && t.system === CONFLICT_TAG.system && t.code === CONFLICT_TAG.code;
}

/** `body` without {@link CONFLICT_TAG} in `meta.tag` (a copy when it had it; empty meta dropped). */
function withoutConflictTag(body: FhirJsonObject): FhirJsonObject {
  const meta = body.meta;
  if (!isJsonObject(meta) || !Array.isArray(meta.tag) || !meta.tag.some(isConflictTag)) return body;
  const tag = meta.tag.filter((t) => !isConflictTag(t));
  const { tag: _t, ...rest } = meta;
  const nextMeta: FhirJsonObject = tag.length > 0 ? { ...rest, tag } : rest;
  const { meta: _m, ...others } = body;
  return Object.keys(nextMeta).length > 0 ? { ...others, meta: nextMeta } : others;
}

/** Path of the resource-level deletion flag (JSON `true` when deleted). */
export const DELETED = '@deleted';

/** The name of a node's log in a resource document. */
export function logName(nodeId: string): string {
  return `${LOG}${nodeId}`;
}

/** One node's slot for one element path. */
export interface Entry {
  /** Element path (docs/merge.md grammar); absent in conflict records and carried entries. */
  p?: string;
  /** Value as canonical JSON text; absent for a tombstone. */
  v?: string;
  /** Stamp of the write ({@link HlcStamp}). */
  t: HlcStamp;
  /** Writing node id. */
  n: string;
  /**
   * Only on `@deleted` entries, which every write makes: the writer's state vector right after
   * the write (Yjs client id → clock), i.e. the version the write produced (its *head*).
   */
  h?: Record<string, number>;
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
  /**
   * `value` for a same-field conflict, `removed-item` when the loser's item was removed, `choice`
   * when the loser belongs to another variant of a choice element (`value[x]`) than the winner.
   */
  kind: 'value' | 'removed-item' | 'choice';
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

/** An entry without its path and carried entries, for conflict records. */
function strip(e: Entry): Entry {
  if (!e.x && e.p === undefined && !e.h) return e;
  const { x: _x, p: _p, h: _h, ...rest } = e;
  return rest;
}

/**
 * Deterministic version id of a document state: `<sum of clocks>.<first 8 hex of SHA-256 over the
 * state vector sorted by client id>`. The sum makes ids grow with the state; the hash tells apart
 * different states with equal sums (e.g. {A:5,B:3} and {A:3,B:5}). A FHIR `id`-typed string.
 */
export function versionIdOf(doc: Y.Doc): string {
  return versionIdFromStateVector(Y.decodeStateVector(Y.encodeStateVector(doc)));
}

/**
 * {@link versionIdOf} of a decoded state vector (client id → clock).
 * @param stateVector - clocks by Yjs client id; zero clocks are ignored.
 */
export function versionIdFromStateVector(stateVector: ReadonlyMap<number, number>): string {
  const sv = [...stateVector].filter(([, clock]) => clock > 0).sort((a, b) => a[0] - b[0]);
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

/** Names of the node logs in a document, sorted (so every replica iterates them alike). */
function logNames(doc: Y.Doc): string[] {
  return [...doc.share.keys()].filter((k) => k.startsWith(LOG)).sort();
}

/** True when `e` is an entry written by tidegate (anything else in a log is ignored). */
function isEntry(e: unknown): e is Entry & { p: string } {
  return typeof e === 'object' && e !== null && typeof (e as Entry).p === 'string' && isStamp((e as Entry).t) && typeof (e as Entry).n === 'string';
}

/**
 * Parsed log elements by their text, per document and log. A log element is the JSON text of the
 * array of entries one write made (one string per write encodes several times faster in Yjs than
 * one value per entry, let alone an object of many small strings); elements never change once
 * written, so their parse is cached and reused. Format: {@link parseElement}.
 */
const parsedElements = new WeakMap<Y.Doc, Map<string, Map<string, Array<Entry & { p: string }>>>>();

/**
 * The entries of one log element: `{"t":stamp,"a"?:author,"e":[{"p":path,"v"?,"s"?,"x"?,"h"?},…]}`
 * (stamp and author are the write's, the node id is the log's). Anything else gives no entries.
 */
function parseElement(text: string, nodeId: string): Array<Entry & { p: string }> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return [];
  }
  if (typeof parsed !== 'object' || parsed === null) return [];
  const { t, a, e } = parsed as { t?: unknown; a?: unknown; e?: unknown };
  if (!isStamp(t) || !Array.isArray(e) || (a !== undefined && typeof a !== 'string')) return [];
  const out: Array<Entry & { p: string }> = [];
  for (const item of e as unknown[]) {
    const entry = { ...(item as object), t, n: nodeId, ...(a !== undefined ? { a } : {}) };
    if (isEntry(entry)) out.push(entry);
  }
  return out;
}

/** The text of a log element holding the entries of one write (see {@link parseElement}). */
function elementText(entries: Entry[], ctx: WriteContext): string {
  const e = entries.map(({ t: _t, n: _n, a: _a, ...rest }) => rest);
  return JSON.stringify(ctx.author ? { t: ctx.stamp, a: ctx.author, e } : { t: ctx.stamp, e });
}

/** One node's log read: its live entry per path, and which element (log index) holds it. */
interface LogRead {
  live: Map<string, { entry: Entry & { p: string }; element: number }>;
  /** Number of elements in the log. */
  length: number;
}

/**
 * Reads one node's log. An entry is live when no later element of the log has an entry for its
 * path (a write supersedes the node's earlier entries of the paths it writes). Elements that are
 * not a JSON array of tidegate entries are ignored. The returned entries are shared: never mutate.
 */
function readLog(doc: Y.Doc, name: string): LogRead {
  let reads = logReads.get(doc);
  if (!reads) logReads.set(doc, (reads = new Map()));
  const cached = reads.get(name);
  if (cached) return cached;
  let byLog = parsedElements.get(doc);
  if (!byLog) parsedElements.set(doc, (byLog = new Map()));
  const old = byLog.get(name);
  const next = new Map<string, Array<Entry & { p: string }>>();
  const live: LogRead['live'] = new Map();
  const arr = doc.getArray<unknown>(name);
  const elements = arr.toArray();
  elements.forEach((el, element) => {
    if (typeof el !== 'string') return;
    let entries = old?.get(el);
    if (entries === undefined) entries = parseElement(el, name.slice(LOG.length));
    next.set(el, entries);
    for (const entry of entries) live.set(entry.p, { entry, element });
  });
  byLog.set(name, next);
  const read = { live, length: elements.length };
  reads.set(name, read);
  watch(doc);
  return read;
}

/** Reads of logs (and of all paths) since a document's last transaction; see {@link watch}. */
const logReads = new WeakMap<Y.Doc, Map<string, LogRead>>();
const pathReads = new WeakMap<Y.Doc, Map<string, PathState>>();
/** {@link readPaths} under a policy with first-writer-wins rules for the document's type. */
const policyPathReads = new WeakMap<Y.Doc, { policy: MergePolicy; paths: Map<string, PathState> }>();
const watched = new WeakSet<Y.Doc>();

/** Drops a document's cached reads after every transaction (local write or applied update). */
function watch(doc: Y.Doc): void {
  if (watched.has(doc)) return;
  watched.add(doc);
  doc.on('afterTransaction', () => {
    logReads.delete(doc);
    pathReads.delete(doc);
    policyPathReads.delete(doc);
  });
}

/** A node's head: its last write's stamp, author and the state vector right after it. */
export interface Head {
  /** The head entry (stamp `t`, node `n`, author `a`). */
  entry: Entry;
  /** Clocks by Yjs client id right after the write. */
  sv: Map<number, number>;
  /** The version id that write produced ({@link versionIdFromStateVector} of `sv`). */
  versionId: string;
}

/** Heads of every node that wrote with a head, sorted by node id. */
export function readHeads(doc: Y.Doc): Head[] {
  const heads: Head[] = [];
  for (const name of logNames(doc)) {
    const e = readLog(doc, name).live.get(DELETED)?.entry;
    if (e && typeof e.h === 'object' && e.h !== null) {
      const sv = new Map<number, number>();
      for (const [c, k] of Object.entries(e.h)) if (typeof k === 'number') sv.set(Number(c), k);
      heads.push({ entry: strip(e), sv, versionId: versionIdFromStateVector(sv) });
    }
  }
  return heads.sort((a, b) => (a.entry.n < b.entry.n ? -1 : a.entry.n > b.entry.n ? 1 : 0));
}

/**
 * The heads a state merges: those not covered by another head (no other writer had seen them).
 * Two or more mean the document state is a merge of concurrent writes; one means it is that
 * write's version.
 */
export function mergedHeads(doc: Y.Doc): Head[] {
  const heads = readHeads(doc);
  const covers = (a: Head, b: Head): boolean => [...b.sv].every(([c, k]) => (a.sv.get(c) ?? 0) >= k);
  return heads.filter((h) => !heads.some((o) => o !== h && covers(o, h)));
}

/**
 * Reads every path's entries and winner. The winner is the greatest entry (HLC stamp, then node
 * id), except at paths the policy marks `first-writer-wins` for the document's resource type (its
 * `resourceType` leaf), where it is {@link firstWriter}.
 * @param doc - a resource document.
 * @param policy - the merge policy; undefined = last writer wins everywhere.
 * @returns path → {@link PathState}. Malformed entries (not from a tidegate writer) are ignored.
 *   Cached until the document's next transaction: shared, never mutate it.
 */
export function readPaths(doc: Y.Doc, policy?: MergePolicy): Map<string, PathState> {
  const base = readPathsLww(doc);
  if (!policy?.elements) return base;
  const typeText = base.get('resourceType')?.winner.v;
  const type = typeText?.startsWith('"') ? typeText.slice(1, -1) : undefined;
  if (type === undefined || !hasFirstWriterRules(policy, type)) return base;
  const cached = policyPathReads.get(doc);
  if (cached && cached.policy === policy) return cached.paths;
  let out: Map<string, PathState> | undefined;
  for (const [path, ps] of base) {
    if (ps.entries.length === 1 && !ps.winner.x) continue;
    if (leafMode(policy, type, path) !== 'first-writer-wins') continue;
    const w = firstWriter(ps);
    if (w === ps.winner) continue;
    out ??= new Map(base);
    out.set(path, { entries: ps.entries, winner: w });
  }
  const paths = out ?? base;
  policyPathReads.set(doc, { policy, paths });
  watch(doc);
  return paths;
}

/**
 * The `first-writer-wins` winner of a path: among its entries and the entries they carry (`x`),
 * those no other of them has seen (concurrent writes; a value a later writer had seen is replaced
 * as usual), the one with the smallest HLC stamp, then the smaller node id.
 */
export function firstWriter(ps: PathState): Entry {
  const all: Entry[] = [];
  for (const e of ps.entries) {
    all.push(e);
    for (const c of e.x ?? []) all.push(c);
  }
  let best: Entry | undefined;
  for (const e of all) {
    if (all.some((w) => w !== e && sawEntry(w, e))) continue;
    if (!best || compareEntries(e, best) < 0) best = e;
  }
  return best ?? ps.winner;
}

/** {@link readPaths} without policy: the greatest entry wins everywhere. */
function readPathsLww(doc: Y.Doc): Map<string, PathState> {
  const cached = pathReads.get(doc);
  if (cached) return cached;
  const out = new Map<string, PathState>();
  for (const name of logNames(doc)) {
    for (const [path, { entry }] of readLog(doc, name).live) {
      const ps = out.get(path);
      if (!ps) out.set(path, { entries: [entry], winner: entry });
      else {
        ps.entries.push(entry);
        if (compareEntries(entry, ps.winner) > 0) ps.winner = entry;
      }
    }
  }
  pathReads.set(doc, out);
  watch(doc);
  return out;
}

/** Leaves whose winner is a live value. */
export function liveLeaves(paths: ReadonlyMap<string, PathState>): Leaves {
  const leaves: Leaves = new Map();
  for (const [path, ps] of paths) if (ps.winner.v !== undefined && path !== DELETED) leaves.set(path, ps.winner.v);
  return leaves;
}

/** A choice variant a path lies in: its group `<parent path>/<base>[x]` and variant path. */
interface ChoiceSegment {
  group: string;
  variant: string;
}

/** Choice segments of paths already seen, per pattern (paths recur in every render). */
const choiceCache = new WeakMap<RegExp, Map<string, readonly ChoiceSegment[]>>();
const NO_CHOICE: readonly ChoiceSegment[] = Object.freeze([]);

/**
 * The choice variants a path lies in: for every segment that is a choice variant (e.g.
 * `valueQuantity`), group `<parent path>/<base>[x]` (e.g. `component[k%3A…]/value[x]`) and the
 * variant's path (`component[k%3A…]/valueQuantity`).
 */
function choiceSegments(path: string, pattern: RegExp): readonly ChoiceSegment[] {
  let cache = choiceCache.get(pattern);
  if (!cache) choiceCache.set(pattern, (cache = new Map()));
  let out = cache.get(path);
  if (out) return out;
  const segs = path.split('/');
  const found: ChoiceSegment[] = [];
  for (let i = 0; i < segs.length; i++) {
    const m = pattern.exec(segs[i]!);
    if (!m) continue;
    const parent = segs.slice(0, i).join('/');
    found.push({ group: `${parent}/${m[1]}[x]`, variant: parent ? `${parent}/${segs[i]}` : segs[i]! });
  }
  out = found.length > 0 ? found : NO_CHOICE;
  if (cache.size > 100_000) cache.clear();
  cache.set(path, out);
  return out;
}

/** The choice groups a path lies in (see {@link choiceSegments}). */
function choiceGroups(path: string, pattern: RegExp): string[] {
  return choiceSegments(path, pattern).map((c) => c.group);
}

/**
 * Choice elements (`[x]`, https://hl7.org/fhir/R4/formats.html#choice) are one logical element:
 * when live leaves of more than one variant of a group remain (e.g. `valueQuantity/value` and
 * `valueString`, from a concurrent switch of the type), the variant holding the newest winning
 * entry (HLC stamp, then node id) is kept and the leaves of the others are hidden.
 * @param paths - {@link readPaths} of a document.
 * @param leaves - its live leaves ({@link liveLeaves}).
 * @param policy - the merge policy (its `choiceElements`), or undefined for the R4 default.
 * @returns Hidden leaf path → the winning variant's newest entry (the cause).
 */
export function hiddenChoiceLeaves(paths: ReadonlyMap<string, PathState>, leaves: ReadonlyMap<string, string>, policy?: MergePolicy): Map<string, Entry> {
  const pattern = choicePattern(policy);
  // group → variant path prefix → { newest entry, leaf paths }
  const groups = new Map<string, Map<string, { newest: Entry; leaves: string[] }>>();
  for (const path of leaves.keys()) {
    for (const { group, variant } of choiceSegments(path, pattern)) {
      let variants = groups.get(group);
      if (!variants) groups.set(group, (variants = new Map()));
      const w = paths.get(path)!.winner;
      const v = variants.get(variant);
      if (!v) variants.set(variant, { newest: w, leaves: [path] });
      else {
        v.leaves.push(path);
        if (compareEntries(w, v.newest) > 0) v.newest = w;
      }
    }
  }
  const hidden = new Map<string, Entry>();
  for (const variants of groups.values()) {
    if (variants.size < 2) continue;
    let best: { newest: Entry; leaves: string[] } | undefined;
    for (const v of variants.values()) if (!best || compareEntries(v.newest, best.newest) > 0) best = v;
    for (const v of variants.values()) if (v !== best) for (const leaf of v.leaves) if (!hidden.has(leaf)) hidden.set(leaf, best!.newest);
  }
  return hidden;
}

/** Per document, the JSON of its top-level elements from the last render (see {@link UnflattenCache}). */
const renderCaches = new WeakMap<Y.Doc, UnflattenCache>();

/** What the leaves of a path map render: see {@link visibleLeaves}. */
interface Visible {
  policy: MergePolicy | undefined;
  leaves: ReadonlyMap<string, string>;
  hidden: ReadonlyMap<string, Entry>;
  orders: ReadonlyMap<string, number>;
}
const visibleCache = new WeakMap<ReadonlyMap<string, PathState>, Visible>();

/**
 * The leaves a path map renders: live leaves without the hidden variants of choice elements
 * ({@link hiddenChoiceLeaves}), the hidden ones, and the order numbers of array items. Cached per
 * path map (readPaths caches those per document state): shared, never mutate.
 */
export function visibleLeaves(paths: ReadonlyMap<string, PathState>, policy?: MergePolicy): Omit<Visible, 'policy'> {
  const hit = visibleCache.get(paths);
  if (hit && hit.policy === policy) return hit;
  const leaves = liveLeaves(paths);
  const hidden = hiddenChoiceLeaves(paths, leaves, policy);
  for (const path of hidden.keys()) leaves.delete(path);
  const v: Visible = { policy, leaves, hidden, orders: ordersOf(leaves) };
  visibleCache.set(paths, v);
  return v;
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
 * Every replica holding the same set of updates renders the same result. Elements that did not
 * change since the document's last render are reused, not rebuilt: the returned resource shares
 * objects below its top level with earlier renders, so never mutate it below the top level.
 * @param doc - a resource document.
 * @param policy - the merge policy (choice elements, per-element rules); undefined = R4 defaults.
 */
export function render(doc: Y.Doc, policy?: MergePolicy): Rendered {
  const paths = readPaths(doc, policy);
  const { leaves, hidden } = visibleLeaves(paths, policy);
  let maxStamp = '';
  for (const ps of paths.values()) if (ps.winner.t > maxStamp) maxStamp = ps.winner.t;
  const deleted = paths.get(DELETED)?.winner.v === 'true';
  let cache = renderCaches.get(doc);
  if (!cache) renderCaches.set(doc, (cache = newUnflattenCache()));
  const { resource, orphans } = leaves.size > 0 ? unflatten(leaves, cache) : { resource: null, orphans: [] };
  const conflicts: ConflictRecord[] = [];
  const consider = (path: string, ps: PathState, e: Entry): void => {
    if (e === ps.winner || e.v === ps.winner.v || sawEntry(ps.winner, e)) return;
    conflicts.push({ path, winner: strip(ps.winner), loser: strip(e), kind: 'value' });
  };
  for (const [path, ps] of paths) {
    // Most paths hold one entry that carries nothing: no conflict there. (Under first-writer-wins
    // the winner may be a carried entry, so test the slot entry, not the winner.)
    if (ps.entries.length === 1 && !ps.entries[0]!.x) continue;
    for (const e of ps.entries) {
      consider(path, ps, e);
      for (const c of e.x ?? []) consider(path, ps, c);
    }
  }
  for (const [path, cause] of hidden) conflicts.push({ path, winner: strip(cause), loser: strip(paths.get(path)!.winner), kind: 'choice' });
  for (const o of orphans) {
    const ps = paths.get(o.path);
    const cause = paths.get(o.cause);
    if (ps && cause) conflicts.push({ path: o.path, winner: strip(cause.winner), loser: strip(ps.winner), kind: 'removed-item' });
  }
  conflicts.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : compareEntries(a.loser, b.loser)));
  if (resource && conflicts.length > 0) {
    const meta: FhirJsonObject = isJsonObject(resource.meta) ? { ...resource.meta } : {};
    const tags = Array.isArray(meta.tag) ? meta.tag.filter((t) => !isConflictTag(t)) : [];
    meta.tag = [...tags, { ...CONFLICT_TAG }];
    resource.meta = meta;
  }
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
  // Leaves of a losing choice variant are not part of what the client saw: an unrelated write must
  // not remove them (that would resolve their conflict silently); a write to the choice element does.
  const { leaves: baseLeaves, hidden, orders } = visibleLeaves(basePaths, policy);
  const changes = new Map<string, string | undefined>();
  const wasDeleted = basePaths.get(DELETED)?.winner.v;
  if (next === null) {
    if (wasDeleted !== 'true') changes.set(DELETED, 'true');
  } else {
    const nextLeaves = flatten(withoutConflictTag(next), policy, orders);
    for (const [path, text] of nextLeaves) if (baseLeaves.get(path) !== text) changes.set(path, text);
    for (const path of baseLeaves.keys()) if (!nextLeaves.has(path)) changes.set(path, undefined);
    if (hidden.size > 0 && changes.size > 0) {
      const pattern = choicePattern(policy);
      const touched = new Set([...changes.keys()].flatMap((p) => choiceGroups(p, pattern)));
      for (const path of hidden.keys()) {
        if (!changes.has(path) && !nextLeaves.has(path) && choiceGroups(path, pattern).some((g) => touched.has(g))) changes.set(path, undefined);
      }
    }
    // Every write that changes something also states "not deleted", with what its writer had seen:
    // a concurrent delete then meets this entry at `@deleted`, the later one wins and the other is a
    // conflict record, so neither the delete nor the edit disappears silently.
    if (changes.size > 0 || wasDeleted !== 'false') changes.set(DELETED, 'false');
  }
  if (changes.size === 0) return 0;
  return writeChanges(doc, basePaths, changes, ctx, false);
}

/**
 * Writes entries for `changes` (path → value text, undefined = tombstone) in one transaction, plus
 * what a write always states (see {@link writeResource}).
 * @param seeAll - when true each entry records that its writer saw every entry at its path,
 *   including carried ones (a conflict resolution); else what `basePaths` held.
 * @returns The number of entries written.
 */
function writeChanges(doc: Y.Doc, basePaths: ReadonlyMap<string, PathState>, changes: Map<string, string | undefined>, ctx: WriteContext, seeAll: boolean): number {
  const log = doc.getArray<string>(logName(ctx.nodeId));
  // This node's live entries by path, and the log element holding each.
  const own = readLog(doc, logName(ctx.nodeId)).live;
  doc.transact(() => {
    const appended: Entry[] = [];
    for (const [path, v] of changes) {
      const s: Record<string, HlcStamp> = {};
      for (const e of basePaths.get(path)?.entries ?? []) {
        s[e.n] = e.t;
        if (seeAll) for (const c of e.x ?? []) if (!(s[c.n]! >= c.t)) s[c.n] = c.t;
      }
      const entry: Entry = { p: path, t: ctx.stamp, n: ctx.nodeId };
      if (v !== undefined) entry.v = v;
      if (ctx.author) entry.a = ctx.author;
      if (Object.keys(s).length > 0) entry.s = s;
      // This node's current entry (and what it carries) is lost with the slot unless the writer saw it.
      const mine = own.get(path);
      if (mine) {
        const carried = [strip(mine.entry), ...(mine.entry.x ?? [])].filter((e) => e.v !== v && !sawEntry(entry, e));
        if (carried.length > 0) entry.x = carried;
      }
      appended.push(entry);
    }
    // Elements whose every live entry this write supersedes are deleted (adjacent deleted elements
    // of one client merge into one Yjs struct, so superseded history costs next to nothing).
    const stillLive = new Set<number>();
    for (const [path, { element }] of own) if (!changes.has(path)) stillLive.add(element);
    const dead = new Set<number>();
    for (const { element } of own.values()) if (!stillLive.has(element)) dead.add(element);
    deleteIndices(log, [...dead]);
    // The head (on the `@deleted` entry every write makes): this node's state vector once the new
    // element is in (one pushed element advances this client's clock by one).
    const h: Record<string, number> = {};
    for (const [client, clock] of Y.decodeStateVector(Y.encodeStateVector(doc))) h[String(client)] = clock;
    h[String(doc.clientID)] = (h[String(doc.clientID)] ?? 0) + 1;
    const flag = appended.find((e) => e.p === DELETED);
    if (flag) flag.h = h;
    log.push([elementText(appended, ctx)]);
  }, ctx.nodeId);
  return changes.size;
}

/** Deletes the elements at the given indices of a Y.Array, adjacent ones as one range. */
function deleteIndices(arr: Y.Array<string>, indices: number[]): void {
  const sorted = [...indices].sort((a, b) => b - a);
  let i = 0;
  while (i < sorted.length) {
    let start = sorted[i]!;
    let len = 1;
    while (i + len < sorted.length && sorted[i + len] === start - 1) {
      start--;
      len++;
    }
    arr.delete(start, len);
    i += len;
  }
}

/** Greatest stamp in the document (for HLC receive events), or undefined when empty. */
export function maxStampOf(doc: Y.Doc): HlcStamp | undefined {
  let max: string | undefined;
  for (const name of logNames(doc)) {
    for (const { entry: e } of readLog(doc, name).live.values()) {
      if (max === undefined || e.t > max) max = e.t;
    }
  }
  return max;
}

/**
 * Resolves the conflict records at one path (`$resolve-conflict`): writes the path again with an
 * entry whose writer has seen every entry there, so no earlier entry is a conflict any more.
 *
 * - `value` undefined: keep what is rendered. A `value` conflict's winner is written again (its
 *   value, or a tombstone); the leaf of a `removed-item` or `choice` record is removed.
 * - `value` given (canonical JSON text) or null (remove the element): that becomes the value.
 *
 * @param doc - the current document (mutated in one transaction).
 * @param path - the conflict record's `path`.
 * @param value - see above.
 * @param policy - the merge policy.
 * @param ctx - writing node, stamp, author.
 * @returns The number of entries written; 0 when there is no conflict record at `path`.
 */
export function resolveConflictAt(doc: Y.Doc, path: string, value: string | null | undefined, policy: MergePolicy, ctx: WriteContext): number {
  const paths = readPaths(doc, policy);
  const records = render(doc, policy).conflicts.filter((c) => c.path === path);
  if (records.length === 0) return 0;
  let v: string | undefined;
  if (value !== undefined) v = value ?? undefined;
  else v = records.some((c) => c.kind === 'value') ? paths.get(path)?.winner.v : undefined;
  const changes = new Map<string, string | undefined>([[path, v]]);
  // Every write restates the deletion flag (it carries the head); a resolution does not change it.
  if (path !== DELETED) changes.set(DELETED, paths.get(DELETED)?.winner.v ?? 'false');
  return writeChanges(doc, paths, changes, ctx, true);
}

/** Parses an entry's value text back into FHIR JSON (undefined for a tombstone). */
export function entryValue(e: Entry): FhirJson | undefined {
  return e.v === undefined ? undefined : parseFhirJson(e.v);
}

export { isJsonObject };
