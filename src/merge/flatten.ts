/**
 * FHIR JSON ↔ leaves addressed by element path.
 *
 * tidegate never nests Y.Maps or Y.Arrays: two replicas that each create the same nested Y type
 * under one key lose one side (yjs issues #301, #306). Instead a resource is flattened into leaves,
 * each addressed by an element path, and each leaf holds one JSON value as text (so decimals keep
 * their lexical form, https://hl7.org/fhir/R4/json.html#primitive).
 *
 * Path grammar (segments joined with `/`):
 * - an object member is its element name, e.g. `name`, `birthDate`;
 * - a repeating-element item is `name[KEY]`, KEY being `id:<element id>`, `k:<natural key>` (from
 *   the merge policy) or `h:<content hash>`, URI-encoded, with `~N` appended for the N-th duplicate;
 * - `@o` under an item holds its order number; `@v` under an item holds a primitive item's value;
 * - `name@p` is one atomic leaf holding a repeating primitive and its `_name` companion together,
 *   as `[values, companions]` (either may be null), so the two arrays always stay aligned;
 * - an array that contains null without a companion is one atomic leaf at `name`;
 * - an element the policy marks `never-merge` is one atomic leaf at its path (a repeating one: the
 *   whole array), holding its whole JSON value.
 *
 * The *element path* of a leaf (for per-element policies) drops item keys, `@o`, `@v`, the `@p`
 * suffix and the `_` of a companion: `name[id%3An1]/given@p` is `Patient.name.given`.
 */
import { createHash } from 'node:crypto';
import { canonicalStringify, isJsonObject, isLosslessNumber, LosslessNumber, parseFhirJson } from '../fhir/json.ts';
import type { FhirJson, FhirJsonObject } from '../fhir/json.ts';
import { childRules, elementRuleRoot, NO_RULES } from './policy.ts';
import type { ElementMergeMode, ElementRule, MergePolicy } from './policy.ts';

/** Leaves of a resource: element path → canonical JSON text of the value. */
export type Leaves = Map<string, string>;

/** Order-number leaf name under an array item. */
export const ORDER = '@o';
/** Value leaf name under a primitive array item. */
export const VALUE = '@v';
/** Suffix of a primitive-array + companion pair leaf. */
export const PAIR = '@p';
/** Paths of server-managed elements that are never merged. */
const SERVER_MANAGED = new Set(['meta/versionId', 'meta/lastUpdated']);

/** Canonical JSON text of a leaf value; primitives directly (same text as `canonicalStringify`). */
function leafText(v: FhirJson): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (isLosslessNumber(v)) return v.value;
  return canonicalStringify(v);
}

function contentHash(v: FhirJson): string {
  return createHash('sha256').update(canonicalStringify(v)).digest('base64url').slice(0, 16);
}

/**
 * Identity key of an array item under element `name` (see module doc).
 * @param fields - the key fields; default `policy.arrayKeys[name]` (a per-element `key` of the
 *   policy's `elements` overrides it, see {@link flatten}).
 */
export function itemKey(name: string, item: FhirJson, policy: MergePolicy, fields: readonly string[] | undefined = policy.arrayKeys[name]): string {
  if (isJsonObject(item)) {
    if (typeof item.id === 'string' && item.id !== '') return `id:${item.id}`;
    if (fields) {
      const parts = fields.map((f) => item[f]);
      if (parts.every((p) => typeof p === 'string' || isLosslessNumber(p))) {
        return `k:${parts.map((p) => escapeKeyPart(typeof p === 'string' ? p : canonicalStringify(p))).join('|')}`;
      }
    }
  }
  return `h:${contentHash(item)}`;
}

/** Escapes the characters that delimit key parts (`|`) and duplicate suffixes (`~`). */
function escapeKeyPart(part: string): string {
  return part.replace(/[%|~]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function itemSegment(name: string, key: string): string {
  return `${name}[${encodeURIComponent(key)}]`;
}

/** An array stored as one atomic leaf at its own path: one that holds null (and has no companion). */
function isAtomicArray(arr: FhirJson[]): boolean {
  return arr.some((v) => v === null) || arr.some((v) => Array.isArray(v));
}

/**
 * A never-merge element's value without what flatten never stores: null members, empty strings,
 * empty objects and arrays (nulls and primitives inside arrays stay, they align with `_name`
 * companions). Undefined when nothing remains.
 */
function pruneEmpty(v: FhirJson): FhirJson | undefined {
  if (v === null || v === '') return undefined;
  if (Array.isArray(v)) {
    const items: FhirJson[] = [];
    for (const x of v) {
      if (x === null || typeof x !== 'object' || isLosslessNumber(x)) items.push(x);
      else {
        const p = pruneEmpty(x);
        if (p !== undefined) items.push(p);
      }
    }
    return items.some((x) => x !== null) ? items : undefined;
  }
  if (isJsonObject(v)) {
    const o: FhirJsonObject = {};
    for (const [k, x] of Object.entries(v)) {
      const p = pruneEmpty(x);
      if (p !== undefined) o[k] = p;
    }
    return Object.keys(o).length > 0 ? o : undefined;
  }
  return v;
}

/** Most cached top-level flattens kept per policy before the cache is emptied. */
const FLATTEN_CACHE_SIZE = 4096;
/**
 * Most JSON values (objects, arrays, primitives) of a top-level element group whose leaves are
 * cached. A bigger group (e.g. 60,000 identifiers: 180,000 values, 3 MB of text) is flattened anew:
 * its entry would keep megabytes per version alive (up to {@link FLATTEN_CACHE_SIZE} of them), the
 * garbage collector's work on that heap cost more than the flatten it saves, and its key alone (the
 * group's canonical text) costs about as much to build as a flatten.
 */
const FLATTEN_CACHE_MAX_VALUES = 4096;

/** True when `v` holds more than `budget` JSON values (counting stops there). */
function holdsMoreThan(v: FhirJson, budget: number): boolean {
  let left = budget;
  const stack: FhirJson[] = [v];
  while (stack.length > 0) {
    const x = stack.pop()!;
    if (--left < 0) return true;
    if (Array.isArray(x)) for (const y of x) stack.push(y);
    else if (isJsonObject(x)) for (const k in x) stack.push(x[k]!);
  }
  return false;
}

/**
 * Leaves of top-level elements already flattened, per policy: key `<element>\u0000<canonical text>`,
 * with the order numbers of the base version they were computed from (an array item's `@o` depends
 * on them). Entries are never mutated.
 */
const flattenCaches = new WeakMap<MergePolicy, Map<string, { leaves: Leaves; orders: Array<[string, number | undefined]> }>>();

/**
 * Flattens a resource into leaves.
 *
 * @param resource - parsed FHIR JSON resource (numbers as LosslessNumber).
 * @param policy - the merge policy: array item keys, and the per-element rules of
 *   `resource.resourceType` (never-merge elements become one leaf; a `key` there overrides `arrayKeys`).
 * @param orders - order numbers of existing items by item path (from the base version); items not
 *   found get an order number between their neighbours. Units: dimensionless floats.
 * @returns Leaves keyed by element path; `meta.versionId` and `meta.lastUpdated` are left out.
 */
export function flatten(resource: FhirJsonObject, policy: MergePolicy, orders: ReadonlyMap<string, number> = new Map()): Leaves {
  let out: Leaves = new Map();
  const type = typeof resource.resourceType === 'string' ? resource.resourceType : '';
  const root = elementRuleRoot(policy, type);
  const walk = (obj: FhirJsonObject, prefix: string, rules: readonly ElementRule[]): void => {
    for (const [name, value] of Object.entries(obj)) {
      const path = prefix ? `${prefix}/${name}` : name;
      if (SERVER_MANAGED.has(path)) continue;
      // A repeating primitive and its `_name` companion are stored together as one pair leaf.
      if (name.startsWith('_') && Array.isArray(value)) {
        const base = name.slice(1);
        if (!Array.isArray(obj[base]) && value.length > 0) out.set(`${prefix ? `${prefix}/` : ''}${base}${PAIR}`, canonicalStringify([null, value]));
        continue;
      }
      if (Array.isArray(value) && Array.isArray(obj[`_${name}`])) {
        const companion = obj[`_${name}`] as FhirJson[];
        if (value.length > 0 || companion.length > 0) out.set(`${path}${PAIR}`, canonicalStringify([value.length > 0 ? value : null, companion.length > 0 ? companion : null]));
        continue;
      }
      const sub = rules.length === 0 ? NO_RULES : childRules(rules, name.startsWith('_') ? name.slice(1) : name);
      if (sub.length > 0 && sub.some((r) => r.mode === 'never-merge')) {
        const whole = pruneEmpty(value);
        if (whole !== undefined) out.set(path, leafText(whole));
        continue;
      }
      if (Array.isArray(value)) {
        if (value.length === 0) continue;
        if (isAtomicArray(value)) {
          out.set(path, canonicalStringify(value));
          continue;
        }
        const seen = new Map<string, number>();
        const items: Array<{ itemPath: string; value: FhirJson }> = [];
        const fields = sub.find((r) => r.key)?.key ?? policy.arrayKeys[name];
        for (const item of value) {
          const base = itemKey(name, item, policy, fields);
          const n = (seen.get(base) ?? 0) + 1;
          seen.set(base, n);
          const key = n === 1 ? base : `${base}~${n}`;
          const itemPath = prefix ? `${prefix}/${itemSegment(name, key)}` : itemSegment(name, key);
          items.push({ itemPath, value: item });
        }
        const assigned = assignOrders(items.map((i) => i.itemPath), orders);
        items.forEach((item, i) => {
          out.set(`${item.itemPath}/${ORDER}`, String(assigned[i]));
          if (isJsonObject(item.value)) walk(item.value, item.itemPath, sub);
          else out.set(`${item.itemPath}/${VALUE}`, leafText(item.value));
        });
      } else if (isJsonObject(value)) {
        walk(value, path, sub);
      } else if (value !== null && value !== '') {
        out.set(path, leafText(value));
      }
    }
  };
  // Top-level elements one by one (an element and its `_element` companion together): the leaves
  // of an element whose canonical text and base order numbers were flattened before are reused.
  const result: Leaves = new Map();
  const groups = new Map<string, FhirJsonObject>();
  for (const [name, value] of Object.entries(resource)) {
    const g = name.startsWith('_') ? name.slice(1) : name;
    let o = groups.get(g);
    if (!o) groups.set(g, (o = {}));
    o[name] = value;
  }
  let cache = flattenCaches.get(policy);
  if (!cache) flattenCaches.set(policy, (cache = new Map()));
  for (const [g, sub] of groups) {
    // `meta` holds the server-managed versionId/lastUpdated, which differ in every version. With
    // element rules for this type, the leaves also depend on the type.
    const key = g === 'meta' || holdsMoreThan(sub, FLATTEN_CACHE_MAX_VALUES) ? undefined : `${root ? `${type}\u0001` : ''}${g}\u0000${canonicalStringify(sub)}`;
    const hit = key === undefined ? undefined : cache.get(key);
    if (hit && hit.orders.every(([itemPath, o]) => orders.get(itemPath) === o)) {
      for (const [path, text] of hit.leaves) result.set(path, text);
      continue;
    }
    out = new Map();
    walk(sub, '', root ? [root] : NO_RULES);
    for (const [path, text] of out) result.set(path, text);
    if (key !== undefined) {
      const consulted: Array<[string, number | undefined]> = [];
      for (const path of out.keys()) if (path.endsWith(`/${ORDER}`)) consulted.push([path.slice(0, -ORDER.length - 1), orders.get(path.slice(0, -ORDER.length - 1))]);
      if (cache.size >= FLATTEN_CACHE_SIZE) cache.clear();
      cache.set(key, { leaves: out, orders: consulted });
    }
  }
  return result;
}

/**
 * Order numbers for items in their new order: an item keeps its old number while that keeps the
 * sequence increasing; otherwise it gets the midpoint between its neighbours' numbers (the next
 * later item whose old number is above the previous one).
 *
 * Linear time: assigned numbers strictly increase, so a later item found unusable as the upper
 * neighbour (no old number, or one not above the previous number) stays unusable for every later
 * item; the search resumes where it stopped instead of rescanning to the end for each new item
 * (which made a write of n new items O(n²): 60,000 new identifiers cost ~5 s of CPU here alone).
 */
function assignOrders(itemPaths: string[], orders: ReadonlyMap<string, number>): number[] {
  const n = itemPaths.length;
  const olds: Array<number | undefined> = itemPaths.map((p) => orders.get(p));
  const result: number[] = [];
  let prev = Number.NEGATIVE_INFINITY;
  // Every index in (i, scan) is known to hold no old number above `prev`.
  let scan = 0;
  for (let i = 0; i < n; i++) {
    const old = olds[i];
    let o: number;
    if (old !== undefined && old > prev) {
      o = old;
    } else {
      if (scan <= i) scan = i + 1;
      while (scan < n && !(olds[scan] !== undefined && olds[scan]! > prev)) scan++;
      const next = scan < n ? olds[scan] : undefined;
      if (prev === Number.NEGATIVE_INFINITY) o = next === undefined ? 0 : next - 1;
      else o = next === undefined ? prev + 1 : (prev + next) / 2;
    }
    result.push(o);
    prev = o;
  }
  return result;
}

/** Splits a path into segments, keeping `[...]` keys (which are URI-encoded, so contain no `/`). */
export function splitPath(path: string): string[] {
  return path.split('/');
}

/**
 * Order numbers of every array item present in `leaves`, by item path.
 * @param leaves - leaves as produced by {@link flatten} or rendered from a document.
 */
export function ordersOf(leaves: ReadonlyMap<string, string>): Map<string, number> {
  const orders = new Map<string, number>();
  for (const [path, text] of leaves) {
    if (path.endsWith(`/${ORDER}`)) orders.set(path.slice(0, -ORDER.length - 1), Number(text));
  }
  return orders;
}

const PLAIN_STRING = /^"[^"\\]*"$/;
const JSON_NUMBER = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?$/;

/**
 * Parses a leaf's canonical JSON text: plain strings, booleans and numbers (as
 * {@link LosslessNumber}, keeping their lexical form) directly, anything else with the lossless
 * parser. Same result as `parseFhirJson(text)`.
 */
export function parseLeaf(text: string): FhirJson {
  if (PLAIN_STRING.test(text)) return text.slice(1, -1);
  if (text === 'true') return true;
  if (text === 'false') return false;
  if (JSON_NUMBER.test(text)) return new LosslessNumber(text);
  return parseFhirJson(text);
}

interface Node {
  value?: FhirJson; // atomic or primitive leaf
  children: Map<string, Node>; // by element name, or by item segment for array items; NO_CHILDREN when none
}

/**
 * The children of a node that has none yet, shared (never mutated): most nodes are leaves, and a
 * Map each cost a big resource (180,000 leaves for 60,000 identifiers) allocation and GC time.
 */
const NO_CHILDREN: Map<string, Node> = new Map();

const ITEM = /^([^[\]]+)\[([^[\]]*)\]$/;

/** A live leaf that is not part of the rendered resource, and why. */
export interface Orphan {
  /** The leaf's path. */
  path: string;
  /** The path of the leaf whose winner displaced it: the removed item's order leaf, or the pair leaf that replaced a structured array. */
  cause: string;
}

const join = (prefix: string, seg: string): string => (prefix ? `${prefix}/${seg}` : seg);

/**
 * Rebuilds FHIR JSON from leaves. Array items are ordered by order number, then by key. Array
 * items without a live order leaf are left out (the item was removed); a pair leaf (`name@p`)
 * takes precedence over structured items of the same array. Empty objects and arrays are never
 * produced.
 *
 * @param leaves - element path → JSON text.
 * @returns The resource, and the live leaves that were left out ({@link Orphan}s).
 */
export function unflatten(leaves: ReadonlyMap<string, string>, cache?: UnflattenCache): { resource: FhirJsonObject; orphans: Orphan[] } {
  if (cache) return unflattenCached(leaves, cache);
  const root: Node = { children: new Map() };
  for (const [path, text] of leaves) {
    let node = root;
    for (const seg of splitPath(path)) {
      let child = node.children.get(seg);
      if (!child) {
        child = { children: NO_CHILDREN };
        if (node.children === NO_CHILDREN) node.children = new Map();
        node.children.set(seg, child);
      }
      node = child;
    }
    node.value = parseLeaf(text);
  }
  const orphans: Orphan[] = [];
  const collectOrphans = (node: Node, path: string, cause: string): void => {
    if (node.value !== undefined) orphans.push({ path, cause });
    for (const [seg, child] of node.children) collectOrphans(child, `${path}/${seg}`, cause);
  };
  const build = (node: Node, path: string, isItem = false): FhirJson | undefined => {
    if (node.value !== undefined) {
      // An atomic leaf beside structured children: the atomic value wins deterministically.
      for (const [seg, child] of node.children) collectOrphans(child, `${path}/${seg}`, path);
      return node.value;
    }
    const obj: FhirJsonObject = {};
    const arrays = new Map<string, Array<{ key: string; order: number; value: FhirJson; itemPath: string; node: Node }>>();
    const pairs = new Map<string, string>();
    const pairNames = new Set([...node.children.keys()].filter((k) => k.endsWith(PAIR)).map((k) => k.slice(0, -PAIR.length)));
    for (const [seg, child] of node.children) {
      if (isItem && seg === ORDER) continue;
      const childPath = join(path, seg);
      // A pair leaf takes precedence over an atomic leaf of the same array or companion, whatever
      // the order the leaves arrived in; the other becomes an orphan (a conflict record).
      const plainName = seg.startsWith('_') ? seg.slice(1) : seg;
      if (!seg.endsWith(PAIR) && !ITEM.test(seg) && pairNames.has(plainName)) {
        collectOrphans(child, childPath, join(path, `${plainName}${PAIR}`));
        continue;
      }
      if (seg.endsWith(PAIR) && child.value !== undefined && child.children.size === 0) {
        const name = seg.slice(0, -PAIR.length);
        const pair = child.value;
        if (Array.isArray(pair) && pair.length === 2) {
          if (Array.isArray(pair[0])) obj[name] = pair[0];
          if (Array.isArray(pair[1])) obj[`_${name}`] = pair[1];
          pairs.set(name, childPath);
        }
        continue;
      }
      const m = ITEM.exec(seg);
      if (m) {
        const [, name, key] = m as unknown as [string, string, string];
        const orderNode = child.children.get(ORDER);
        const ov = orderNode?.value;
        const order = ov === undefined ? undefined : Number(isLosslessNumber(ov) ? ov.value : canonicalStringify(ov));
        if (order === undefined || Number.isNaN(order)) {
          collectOrphans(child, childPath, `${childPath}/${ORDER}`);
          continue;
        }
        const valueNode = child.children.get(VALUE);
        let item: FhirJson | undefined;
        if (valueNode && child.children.size === 2) item = valueNode.value;
        else item = build({ children: child.children }, childPath, true);
        if (item === undefined) continue;
        let list = arrays.get(name);
        if (!list) arrays.set(name, (list = []));
        list.push({ key, order, value: item, itemPath: childPath, node: child });
      } else {
        const v = build(child, childPath);
        if (v !== undefined) obj[seg] = v;
      }
    }
    for (const [name, list] of arrays) {
      const displacedBy = pairs.get(name) ?? (obj[name] !== undefined ? join(path, name) : undefined);
      if (displacedBy !== undefined) {
        for (const it of list) collectOrphans(it.node, it.itemPath, displacedBy);
        continue;
      }
      list.sort((a, b) => a.order - b.order || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
      obj[name] = list.map((it) => it.value);
    }
    return Object.keys(obj).length === 0 ? undefined : obj;
  };
  const resource = build(root, '');
  return { resource: isJsonObject(resource) ? resource : {}, orphans };
}

/**
 * What {@link unflatten} keeps between renders of one document: per top-level element group, its
 * leaves and the JSON built from them. Build results are shared between renders: never mutate a
 * rendered resource below its top level.
 */
export interface UnflattenCache {
  groups: Map<string, { leaves: Map<string, string>; part: FhirJsonObject; orphans: Orphan[] }>;
}

/** A new, empty {@link UnflattenCache}. */
export function newUnflattenCache(): UnflattenCache {
  return { groups: new Map() };
}

/**
 * The top-level element a path belongs to: its first segment without item key, `@p` suffix or
 * `_` prefix. Leaves of different groups never interact when rebuilding JSON (pair leaves, atomic
 * leaves and array items of one element share its group).
 */
function groupOf(path: string): string {
  const slash = path.indexOf('/');
  let seg = slash < 0 ? path : path.slice(0, slash);
  const bracket = seg.indexOf('[');
  if (bracket >= 0) seg = seg.slice(0, bracket);
  if (seg.endsWith(PAIR)) seg = seg.slice(0, -PAIR.length);
  return seg.startsWith('_') ? seg.slice(1) : seg;
}

function sameLeaves(a: ReadonlyMap<string, string>, b: ReadonlyMap<string, string>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of b) if (a.get(k) !== v) return false;
  return true;
}

/** {@link unflatten} rebuilding only the top-level groups whose leaves changed since the last call. */
function unflattenCached(leaves: ReadonlyMap<string, string>, cache: UnflattenCache): { resource: FhirJsonObject; orphans: Orphan[] } {
  const groups = new Map<string, Map<string, string>>();
  for (const [path, text] of leaves) {
    const g = groupOf(path);
    let m = groups.get(g);
    if (!m) groups.set(g, (m = new Map()));
    m.set(path, text);
  }
  const resource: FhirJsonObject = {};
  const orphans: Orphan[] = [];
  const next: UnflattenCache['groups'] = new Map();
  for (const [g, m] of groups) {
    let entry = cache.groups.get(g);
    if (!entry || !sameLeaves(entry.leaves, m)) {
      const built = unflatten(m);
      entry = { leaves: m, part: built.resource, orphans: built.orphans };
    }
    next.set(g, entry);
    Object.assign(resource, entry.part);
    orphans.push(...entry.orphans);
  }
  cache.groups = next;
  return { resource, orphans };
}

/** Leaf path → effective mode, per policy and resource type (paths recur in every read). */
const modeCaches = new WeakMap<MergePolicy, Map<string, Map<string, ElementMergeMode>>>();

/**
 * The merge mode of a leaf under the policy's per-element rules (docs/merge.md "Per-element merge
 * policies"): the mode of the most specific configured element the leaf lies in, matching a choice
 * variant segment (`valueQuantity`) to its element (`value[x]`); `last-writer-wins` when none.
 * `@deleted` is always `last-writer-wins`.
 * @param policy - the merge policy.
 * @param type - the resource type (from the `resourceType` leaf).
 * @param path - a leaf path (grammar in the module doc).
 */
export function leafMode(policy: MergePolicy, type: string, path: string): ElementMergeMode {
  const root = elementRuleRoot(policy, type);
  if (!root) return 'last-writer-wins';
  let byType = modeCaches.get(policy);
  if (!byType) modeCaches.set(policy, (byType = new Map()));
  let cache = byType.get(type);
  if (!cache) byType.set(type, (cache = new Map()));
  const hit = cache.get(path);
  if (hit) return hit;
  let mode: ElementMergeMode = 'last-writer-wins';
  let rules: readonly ElementRule[] = [root];
  for (const seg of splitPath(path)) {
    if (seg === ORDER || seg === VALUE) continue;
    if (seg.startsWith('@')) break;
    let name = seg;
    const bracket = name.indexOf('[');
    if (bracket >= 0) name = name.slice(0, bracket);
    if (name.endsWith(PAIR)) name = name.slice(0, -PAIR.length);
    if (name.startsWith('_')) name = name.slice(1);
    rules = childRules(rules, name);
    if (rules.length === 0) break;
    for (const r of rules) if (r.mode) mode = r.mode;
  }
  if (cache.size > 100_000) cache.clear();
  cache.set(path, mode);
  return mode;
}
