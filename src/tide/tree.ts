/**
 * The anti-entropy digest tree: a Merkle-style hash tree over buckets of per-resource state
 * vectors, so that two nodes find where they differ by exchanging a few hashes instead of every
 * resource's state vector.
 *
 * - Every resource key is placed by its **key hash**: the first 32 bits of SHA-256(UTF-8 key)
 *   (FIPS 180-4), read big-endian. A tree **path** `(depth, index)` covers the keys whose key hash
 *   starts with the `4 · depth` bits `index` (fanout 16, depth 0 = the root = every key, depth
 *   {@link TREE_MAX_DEPTH} = 8 = the full 32 bits).
 * - Every held resource has a **leaf hash**: SHA-256(`varString key` ‖ `varUint8Array sv`), where
 *   `sv` is its canonical Yjs state vector (`Y.encodeStateVector`: clients by descending id, zero
 *   clocks dropped).
 * - A **node** `(depth, index)` summarises its keys as `count` (how many) and `hash`: SHA-256 of
 *   the concatenated leaf hashes of its keys in (key hash, key) order, or empty bytes when
 *   `count` is 0.
 *
 * Equal nodes mean (up to SHA-256 collisions) identical keys and state vectors below them, so a
 * comparison descends only into the nodes that differ and its cost scales with the differences.
 * Node hashes are recomputed from the leaves on demand (a node costs O(its keys)); a node only
 * holds its own keys' leaves, so asking for a deep node is cheap.
 *
 * Sources: FIPS 180-4 (SHA-256); Merkle trees for anti-entropy as in Dynamo (DeCandia et al.,
 * SOSP 2007, §4.7); Yjs state vectors, https://docs.yjs.dev/api/document-updates.
 */
import { createHash } from 'node:crypto';
import * as encoding from 'lib0/encoding';
import * as Y from 'yjs';

/** Bits of the key hash consumed per tree level (fanout 2^4 = 16). */
export const TREE_FANOUT_BITS = 4;
/** Children per tree node. */
export const TREE_FANOUT = 1 << TREE_FANOUT_BITS;
/** Deepest level: 8 levels × 4 bits = the 32-bit key hash. */
export const TREE_MAX_DEPTH = 8;
/** Bytes of a node hash (SHA-256). */
export const TREE_HASH_BYTES = 32;

/** A subtree: the keys whose key hash starts with the `4 · depth` bits `index`. */
export interface TreePath {
  /** 0 ..= {@link TREE_MAX_DEPTH}. */
  depth: number;
  /** 0 ..< 16^depth. */
  index: number;
}

/** A subtree's summary as one node sees it. */
export interface TreeNode extends TreePath {
  /** Keys held below this path. */
  count: number;
  /** SHA-256 of the leaf hashes below (32 bytes), or empty bytes when `count` is 0. */
  hash: Uint8Array;
}

/** One held resource as the tree sees it. */
export interface TreeLeaf {
  key: string;
  /** First 32 bits of SHA-256(key), unsigned. */
  keyHash: number;
  /** Canonical `Y.encodeStateVector` bytes. */
  stateVector: Uint8Array;
  /** SHA-256(varString key ‖ varUint8Array stateVector), 32 bytes. */
  leafHash: Uint8Array;
}

/** The root path `(0, 0)`. */
export const ROOT_PATH: TreePath = Object.freeze({ depth: 0, index: 0 });

/** True when `p` is a well-formed path (integer depth 0..8, integer index < 16^depth). */
export function isTreePath(p: TreePath): boolean {
  return (
    Number.isSafeInteger(p.depth) &&
    p.depth >= 0 &&
    p.depth <= TREE_MAX_DEPTH &&
    Number.isSafeInteger(p.index) &&
    p.index >= 0 &&
    p.index < 2 ** (TREE_FANOUT_BITS * p.depth)
  );
}

/**
 * The 32-bit key hash of a resource key: SHA-256(UTF-8 `key`), first 4 bytes big-endian.
 * @param key - `'Type/id'`.
 * @returns An integer in [0, 2^32).
 */
export function keyHashOf(key: string): number {
  return createHash('sha256').update(key, 'utf8').digest().readUInt32BE(0);
}

/** Half-open key-hash interval `[lo, hi)` covered by `path` (numbers, not 32-bit ints: hi may be 2^32). */
export function pathSpan(path: TreePath): { lo: number; hi: number } {
  const span = 2 ** (32 - TREE_FANOUT_BITS * path.depth);
  const lo = path.index * span;
  return { lo, hi: lo + span };
}

/** True when a key with key hash `keyHash` lies below `path`. */
export function underPath(keyHash: number, path: TreePath): boolean {
  const { lo, hi } = pathSpan(path);
  return keyHash >= lo && keyHash < hi;
}

/** The 16 children of `path`. @throws RangeError at {@link TREE_MAX_DEPTH}. */
export function childrenOf(path: TreePath): TreePath[] {
  if (path.depth >= TREE_MAX_DEPTH) throw new RangeError('a leaf bucket has no children');
  const out: TreePath[] = [];
  for (let i = 0; i < TREE_FANOUT; i++) out.push({ depth: path.depth + 1, index: path.index * TREE_FANOUT + i });
  return out;
}

/** `'depth:index'`, a map key for a path. */
export function pathId(p: TreePath): string {
  return `${p.depth}:${p.index}`;
}

/** True when one of the two paths contains the other (or they are equal). */
export function pathsOverlap(a: TreePath, b: TreePath): boolean {
  const sa = pathSpan(a);
  const sb = pathSpan(b);
  return sa.lo < sb.hi && sb.lo < sa.hi;
}

/** `Y.encodeStateVector` of `sv` after decoding: sorted clients, zero clocks dropped. @throws Error when `sv` is not a state vector. */
export function canonicalStateVector(sv: Uint8Array): Uint8Array {
  const m = Y.decodeStateVector(sv);
  for (const [client, clock] of m) if (clock === 0) m.delete(client);
  return Y.encodeStateVector(m);
}

/**
 * Builds a leaf. @param keyHash - `keyHashOf(key)` (callers cache it).
 * @throws Error when `stateVector` is not a Yjs state vector.
 */
export function makeLeaf(key: string, keyHash: number, stateVector: Uint8Array): TreeLeaf {
  const sv = canonicalStateVector(stateVector);
  const enc = encoding.createEncoder();
  encoding.writeVarString(enc, key);
  encoding.writeVarUint8Array(enc, sv);
  const leafHash = new Uint8Array(createHash('sha256').update(encoding.toUint8Array(enc)).digest());
  return { key, keyHash, stateVector: sv, leafHash };
}

/**
 * A set of leaves, sorted by (key hash, key), that answers node summaries.
 * Building is O(n log n); {@link DigestTree.node} is O(log n + keys below the path).
 */
export class DigestTree {
  readonly leaves: readonly TreeLeaf[];

  /** @param leaves - Leaves with distinct keys, any order. */
  constructor(leaves: TreeLeaf[]) {
    this.leaves = leaves.sort((a, b) => a.keyHash - b.keyHash || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  /** Index range `[from, to)` of the leaves below `path`. */
  range(path: TreePath): { from: number; to: number } {
    const { lo, hi } = pathSpan(path);
    return { from: this.#lowerBound(lo), to: this.#lowerBound(hi) };
  }

  /** The summary (count, hash) of `path`. */
  node(path: TreePath): TreeNode {
    const { from, to } = this.range(path);
    if (from === to) return { depth: path.depth, index: path.index, count: 0, hash: new Uint8Array(0) };
    const h = createHash('sha256');
    for (let i = from; i < to; i++) h.update((this.leaves[i] as TreeLeaf).leafHash);
    return { depth: path.depth, index: path.index, count: to - from, hash: new Uint8Array(h.digest()) };
  }

  /** The leaves below `path`, in tree order. */
  leavesUnder(path: TreePath): TreeLeaf[] {
    const { from, to } = this.range(path);
    return this.leaves.slice(from, to);
  }

  #lowerBound(keyHash: number): number {
    let lo = 0;
    let hi = this.leaves.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.leaves[mid] as TreeLeaf).keyHash < keyHash) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/** True when two node summaries are equal (same count and hash). */
export function sameNode(a: TreeNode, b: TreeNode): boolean {
  if (a.count !== b.count || a.hash.length !== b.hash.length) return false;
  for (let i = 0; i < a.hash.length; i++) if (a.hash[i] !== b.hash[i]) return false;
  return true;
}

/**
 * A set of pairwise disjoint paths that answers "is this key hash below one of them" in
 * O(log n).
 */
export class PathSet {
  readonly paths: readonly TreePath[];
  readonly #spans: { lo: number; hi: number }[];

  /**
   * @param paths - Well-formed paths ({@link isTreePath}).
   * @throws RangeError when two paths overlap or a path is malformed.
   */
  constructor(paths: readonly TreePath[]) {
    for (const p of paths) if (!isTreePath(p)) throw new RangeError('malformed tree path');
    this.paths = paths;
    this.#spans = paths.map(pathSpan).sort((a, b) => a.lo - b.lo);
    for (let i = 1; i < this.#spans.length; i++) {
      if ((this.#spans[i - 1] as { hi: number }).hi > (this.#spans[i] as { lo: number }).lo) throw new RangeError('overlapping tree paths');
    }
  }

  /** True when `keyHash` lies below one of the paths. */
  has(keyHash: number): boolean {
    let lo = 0;
    let hi = this.#spans.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const s = this.#spans[mid] as { lo: number; hi: number };
      if (keyHash < s.lo) hi = mid;
      else if (keyHash >= s.hi) lo = mid + 1;
      else return true;
    }
    return false;
  }
}
