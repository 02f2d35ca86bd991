/**
 * Binary plaintext encodings of Tide messages (what goes inside a sealed envelope).
 *
 * Built on lib0's varint encoding (the one Yjs itself uses, https://github.com/dmonad/lib0):
 * `varUint` is an unsigned LEB128-style integer, `varString` is `varUint` byte length + UTF-8,
 * `varUint8Array` is `varUint` byte length + bytes. The layouts are described in docs/tide.md.
 * Decoders are strict: any truncation, trailing byte, bad key, empty update, unsorted digest or
 * unknown version throws {@link TidePlaintextError}.
 */
import * as encoding from 'lib0/encoding';
import * as decoding from 'lib0/decoding';
import * as Y from 'yjs';
import type { ResourceUpdate } from './types.ts';
import { PathSet, TREE_HASH_BYTES, isTreePath, keyHashOf } from './tree.ts';
import type { TreeNode, TreePath } from './tree.ts';

/** Version number that starts an `updates` plaintext (digests and tree messages have their own, below). */
export const PLAINTEXT_VERSION = 1;

/**
 * Resource keys Tide accepts: FHIR resource type (`[A-Z][A-Za-z]{0,63}`), `/`, FHIR id
 * (`[A-Za-z0-9.-]{1,64}`, FHIR R4 `id` datatype, https://hl7.org/fhir/R4/datatypes.html#id).
 */
export const RESOURCE_KEY_RE = /^[A-Z][A-Za-z]{0,63}\/(?!\.+$)[A-Za-z0-9.-]{1,64}$/; // dot-only ids refused

/** True when `key` is a valid `'Type/id'` resource key ({@link RESOURCE_KEY_RE}). */
export function isResourceKey(key: unknown): key is string {
  return typeof key === 'string' && RESOURCE_KEY_RE.test(key);
}

/** Thrown by the decoders; `code` is always `'ERR_PLAINTEXT_MALFORMED'`. Messages never echo plaintext. */
export class TidePlaintextError extends Error {
  readonly code = 'ERR_PLAINTEXT_MALFORMED';
  override readonly name = 'TidePlaintextError';
}

/** One anti-entropy digest entry: a held key and its `Y.encodeStateVector` bytes. */
export interface DigestEntry {
  key: string;
  stateVector: Uint8Array;
}

/**
 * Resource types an anti-entropy message covers: a sorted list of distinct FHIR type names, or
 * `undefined` for every type.
 */
export type TypeFilter = readonly string[] | undefined;

/**
 * An anti-entropy digest (`ae-digest` / `ae-reply`): every key the sender holds, of the types in
 * `types`, below the tree paths `paths` (see ./tree.ts), with its state vector. A key of those
 * types below those paths that is absent from `entries` is a key the sender lacks.
 */
export interface Digest {
  types: TypeFilter;
  /** Non-overlapping subtrees, at least one. */
  paths: TreePath[];
  /** Sorted by key, strictly ascending, each below one of `paths` and of a type in `types`. */
  entries: DigestEntry[];
}

/**
 * An `ae-tree` message: the sender's summaries (count, hash) of some tree nodes, computed over the
 * keys of the types in `types`. The receiver compares each with its own and descends where they
 * differ (docs/tide.md, "Anti-entropy").
 */
export interface TreeMessage {
  types: TypeFilter;
  /** At least one node; a node's hash is 32 bytes, or empty iff its count is 0. */
  nodes: TreeNode[];
}

/** Plaintext format version of `ae-digest` / `ae-reply` (1 was the key-range digest, no longer accepted). */
export const DIGEST_VERSION = 2;
/** Plaintext format version of `ae-tree`. */
export const TREE_VERSION = 1;
/** Most paths or tree nodes in one message (4096 = one full tree level at depth 3). */
export const MAX_TREE_ITEMS = 4096;

/** Resource type of a `'Type/id'` key. */
export function typeOf(key: string): string {
  return key.slice(0, key.indexOf('/'));
}

/** True when `key`'s resource type is in `types` (`undefined` = all). */
export function typeAllowed(key: string, types: TypeFilter): boolean {
  return types === undefined || types.includes(typeOf(key));
}

/**
 * Intersection of two type filters (`undefined` = all), sorted and distinct.
 * @returns `undefined` only when both are `undefined`.
 */
export function intersectTypes(a: TypeFilter, b: TypeFilter): TypeFilter {
  if (a === undefined) return b === undefined ? undefined : [...new Set(b)].sort();
  if (b === undefined) return [...new Set(a)].sort();
  const bs = new Set(b);
  return [...new Set(a.filter((t) => bs.has(t)))].sort();
}

/**
 * Encode an `updates` message: `varUint 1`, `varUint n`, then n × (`varString key`,
 * `varUint8Array update`).
 * @param updates - Updates to encode (keys are not re-validated here).
 * @returns The plaintext bytes.
 */
export function encodeUpdates(updates: readonly ResourceUpdate[]): Uint8Array {
  const enc = encoding.createEncoder();
  encoding.writeVarUint(enc, PLAINTEXT_VERSION);
  encoding.writeVarUint(enc, updates.length);
  for (const u of updates) {
    encoding.writeVarString(enc, u.key);
    encoding.writeVarUint8Array(enc, u.update);
  }
  return encoding.toUint8Array(enc);
}

/**
 * Decode an `updates` message (see {@link encodeUpdates}). Returned updates are copies.
 * @throws TidePlaintextError on any malformation (truncation, trailing bytes, bad key, empty update).
 */
export function decodeUpdates(bytes: Uint8Array): ResourceUpdate[] {
  return strict(bytes, PLAINTEXT_VERSION, (dec) => {
    const n = readCount(dec);
    const out: ResourceUpdate[] = [];
    for (let i = 0; i < n; i++) {
      const key = readKey(dec);
      const update = decoding.readVarUint8Array(dec).slice();
      if (update.length === 0) throw new TidePlaintextError('empty update');
      out.push({ key, update });
    }
    return out;
  });
}

/**
 * Encode an anti-entropy digest (`ae-digest` / `ae-reply`): `varUint 2`, types, `varUint p`,
 * p × (`varUint depth`, `varUint index`), `varUint n`, n × (`varString key`, `varUint8Array sv`).
 * Types: `varUint 0` (all) or `varUint 1`, `varUint t`, t × `varString type`.
 * @returns The plaintext bytes.
 */
export function encodeDigest(digest: Digest): Uint8Array {
  const enc = encoding.createEncoder();
  encoding.writeVarUint(enc, DIGEST_VERSION);
  writeTypes(enc, digest.types);
  encoding.writeVarUint(enc, digest.paths.length);
  for (const p of digest.paths) {
    encoding.writeVarUint(enc, p.depth);
    encoding.writeVarUint(enc, p.index);
  }
  encoding.writeVarUint(enc, digest.entries.length);
  for (const e of digest.entries) {
    encoding.writeVarString(enc, e.key);
    encoding.writeVarUint8Array(enc, e.stateVector);
  }
  return encoding.toUint8Array(enc);
}

/**
 * Decode an anti-entropy digest (see {@link encodeDigest}). Each state vector is checked with
 * `Y.decodeStateVector`; each key's hash is checked against the paths (SHA-256 per key).
 * @throws TidePlaintextError on any malformation: bad version, types not sorted/distinct, no path,
 *   more than {@link MAX_TREE_ITEMS} paths, a bad or overlapping path, unsorted/duplicate keys, a
 *   key below no path or of a type outside `types`, a bad state vector.
 */
export function decodeDigest(bytes: Uint8Array): Digest {
  return strict(bytes, DIGEST_VERSION, (dec) => {
    const types = readTypes(dec);
    const np = readCount(dec);
    if (np === 0 || np > MAX_TREE_ITEMS) throw new TidePlaintextError('bad number of digest paths');
    const paths: TreePath[] = [];
    for (let i = 0; i < np; i++) paths.push(readPath(dec));
    let set: PathSet;
    try {
      set = new PathSet(paths);
    } catch {
      throw new TidePlaintextError('overlapping digest paths');
    }
    const n = readCount(dec);
    const entries: DigestEntry[] = [];
    let prev: string | undefined;
    for (let i = 0; i < n; i++) {
      const key = readKey(dec);
      if (prev !== undefined && !(prev < key)) throw new TidePlaintextError('digest keys not strictly ascending');
      prev = key;
      if (!typeAllowed(key, types)) throw new TidePlaintextError('digest key of a type outside the digest');
      if (!set.has(keyHashOf(key))) throw new TidePlaintextError('digest key below none of its paths');
      const stateVector = decoding.readVarUint8Array(dec).slice();
      try {
        Y.decodeStateVector(stateVector);
      } catch {
        throw new TidePlaintextError('bad state vector');
      }
      entries.push({ key, stateVector });
    }
    return { types, paths, entries };
  });
}

/**
 * Encode an `ae-tree` message: `varUint 1`, types (as in {@link encodeDigest}), `varUint n`,
 * n × (`varUint depth`, `varUint index`, `varUint count`, `varUint8Array hash`).
 * @returns The plaintext bytes.
 */
export function encodeTree(msg: TreeMessage): Uint8Array {
  const enc = encoding.createEncoder();
  encoding.writeVarUint(enc, TREE_VERSION);
  writeTypes(enc, msg.types);
  encoding.writeVarUint(enc, msg.nodes.length);
  for (const n of msg.nodes) {
    encoding.writeVarUint(enc, n.depth);
    encoding.writeVarUint(enc, n.index);
    encoding.writeVarUint(enc, n.count);
    encoding.writeVarUint8Array(enc, n.hash);
  }
  return encoding.toUint8Array(enc);
}

/**
 * Decode an `ae-tree` message (see {@link encodeTree}).
 * @throws TidePlaintextError on any malformation: bad version or types, no node or more than
 *   {@link MAX_TREE_ITEMS}, a bad path, overlapping paths, a hash that is not 32 bytes (or not empty
 *   with count 0).
 */
export function decodeTree(bytes: Uint8Array): TreeMessage {
  return strict(bytes, TREE_VERSION, (dec) => {
    const types = readTypes(dec);
    const n = readCount(dec);
    if (n === 0 || n > MAX_TREE_ITEMS) throw new TidePlaintextError('bad number of tree nodes');
    const nodes: TreeNode[] = [];
    for (let i = 0; i < n; i++) {
      const p = readPath(dec);
      const count = decoding.readVarUint(dec);
      if (!Number.isSafeInteger(count)) throw new TidePlaintextError('bad node count');
      const hash = decoding.readVarUint8Array(dec).slice();
      if (count === 0 ? hash.length !== 0 : hash.length !== TREE_HASH_BYTES) throw new TidePlaintextError('bad node hash');
      nodes.push({ ...p, count, hash });
    }
    try {
      new PathSet(nodes);
    } catch {
      throw new TidePlaintextError('overlapping tree nodes');
    }
    return { types, nodes };
  });
}

/** One entry of an `ae-policy` message: a peer id and the sender's policy digest for it (32 bytes, SHA-256). */
export interface PolicyDigestEntry {
  peer: string;
  digest: Uint8Array;
}

/** Plaintext format version of `ae-policy`. */
export const POLICY_VERSION = 1;
/** Length of one policy digest, bytes (SHA-256, FIPS 180-4). */
export const POLICY_DIGEST_BYTES = 32;
/** Node ids as in the node configuration (src/config/config.ts). */
const PEER_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/**
 * Encode an `ae-policy` message (docs/tide.md "Policy agreement"): `varUint 1`, `varUint n`, then
 * n × (`varString peerId`, `varUint8Array digest`), sorted by peer id (UTF-16 code units).
 * @param entries - at most {@link MAX_TREE_ITEMS}, distinct peer ids, 32-byte digests (not re-validated here).
 * @returns The plaintext bytes.
 */
export function encodePolicy(entries: readonly PolicyDigestEntry[]): Uint8Array {
  const enc = encoding.createEncoder();
  encoding.writeVarUint(enc, POLICY_VERSION);
  const sorted = [...entries].sort((a, b) => (a.peer < b.peer ? -1 : a.peer > b.peer ? 1 : 0));
  encoding.writeVarUint(enc, sorted.length);
  for (const e of sorted) {
    encoding.writeVarString(enc, e.peer);
    encoding.writeVarUint8Array(enc, e.digest);
  }
  return encoding.toUint8Array(enc);
}

/**
 * Decode an `ae-policy` message (see {@link encodePolicy}). Returned digests are copies.
 * @throws TidePlaintextError on any malformation: bad version, more than {@link MAX_TREE_ITEMS}
 *   entries, a bad peer id, ids not strictly ascending, a digest that is not 32 bytes, trailing bytes.
 */
export function decodePolicy(bytes: Uint8Array): PolicyDigestEntry[] {
  return strict(bytes, POLICY_VERSION, (dec) => {
    const n = readCount(dec);
    if (n > MAX_TREE_ITEMS) throw new TidePlaintextError('bad number of policy digests');
    const out: PolicyDigestEntry[] = [];
    for (let i = 0; i < n; i++) {
      const peer = decoding.readVarString(dec);
      if (!PEER_ID_RE.test(peer)) throw new TidePlaintextError('bad peer id');
      if (out.length > 0 && !((out[out.length - 1] as PolicyDigestEntry).peer < peer)) throw new TidePlaintextError('policy peers not sorted and distinct');
      const digest = decoding.readVarUint8Array(dec).slice();
      if (digest.length !== POLICY_DIGEST_BYTES) throw new TidePlaintextError('bad policy digest');
      out.push({ peer, digest });
    }
    return out;
  });
}

/**
 * True when `theirs` has seen some Yjs operation that `mine` has not, i.e. some client's clock in
 * `theirs` is greater than in `mine`. (State vectors do not describe deletions.)
 */
export function stateVectorAhead(theirs: Uint8Array, mine: Uint8Array): boolean {
  const t = Y.decodeStateVector(theirs);
  const m = Y.decodeStateVector(mine);
  for (const [client, clock] of t) {
    if (clock > (m.get(client) ?? 0)) return true;
  }
  return false;
}

function strict<T>(bytes: Uint8Array, expectedVersion: number, body: (dec: decoding.Decoder) => T): T {
  try {
    const dec = decoding.createDecoder(bytes);
    const version = decoding.readVarUint(dec);
    if (version !== expectedVersion) throw new TidePlaintextError('unsupported plaintext version');
    const value = body(dec);
    if (decoding.hasContent(dec)) throw new TidePlaintextError('trailing bytes');
    return value;
  } catch (err) {
    if (err instanceof TidePlaintextError) throw err;
    throw new TidePlaintextError('truncated or undecodable plaintext');
  }
}

function readCount(dec: decoding.Decoder): number {
  const n = decoding.readVarUint(dec);
  // every item takes at least 2 bytes, so a larger count is certainly truncated
  if (n > dec.arr.length - dec.pos) throw new TidePlaintextError('count exceeds payload');
  return n;
}

function readKey(dec: decoding.Decoder): string {
  const key = decoding.readVarString(dec);
  if (!isResourceKey(key)) throw new TidePlaintextError('bad resource key');
  return key;
}

const TYPE_RE = /^[A-Z][A-Za-z]{0,63}$/;

function writeTypes(enc: encoding.Encoder, types: TypeFilter): void {
  if (types === undefined) {
    encoding.writeVarUint(enc, 0);
    return;
  }
  encoding.writeVarUint(enc, 1);
  encoding.writeVarUint(enc, types.length);
  for (const t of types) encoding.writeVarString(enc, t);
}

function readTypes(dec: decoding.Decoder): TypeFilter {
  const flag = decoding.readVarUint(dec);
  if (flag === 0) return undefined;
  if (flag !== 1) throw new TidePlaintextError('bad types flag');
  const n = readCount(dec);
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const t = decoding.readVarString(dec);
    if (!TYPE_RE.test(t)) throw new TidePlaintextError('bad resource type');
    if (out.length > 0 && !((out[out.length - 1] as string) < t)) throw new TidePlaintextError('types not sorted and distinct');
    out.push(t);
  }
  return out;
}

function readPath(dec: decoding.Decoder): TreePath {
  const depth = decoding.readVarUint(dec);
  const index = decoding.readVarUint(dec);
  const p = { depth, index };
  if (!isTreePath(p)) throw new TidePlaintextError('bad tree path');
  return p;
}
