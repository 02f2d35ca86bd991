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

/** Version number that starts every Tide plaintext. */
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
 * An anti-entropy digest of the key range `[from, to)` (JavaScript string order; `to`
 * `undefined` = no upper bound). Every key the sender holds in that range is listed, so a key in
 * the range that is absent from `entries` is a key the sender lacks.
 */
export interface Digest {
  from: string;
  to: string | undefined;
  /** Sorted by key, strictly ascending, all inside `[from, to)`. */
  entries: DigestEntry[];
}

/** True when `key` lies in `[from, to)`. */
export function inRange(key: string, from: string, to: string | undefined): boolean {
  return key >= from && (to === undefined || key < to);
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
  return strict(bytes, (dec) => {
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
 * Encode an anti-entropy digest: `varUint 1`, `varString from`, `varUint hasTo (0|1)`,
 * [`varString to`], `varUint n`, then n × (`varString key`, `varUint8Array stateVector`).
 * @returns The plaintext bytes.
 */
export function encodeDigest(digest: Digest): Uint8Array {
  const enc = encoding.createEncoder();
  encoding.writeVarUint(enc, PLAINTEXT_VERSION);
  encoding.writeVarString(enc, digest.from);
  encoding.writeVarUint(enc, digest.to === undefined ? 0 : 1);
  if (digest.to !== undefined) encoding.writeVarString(enc, digest.to);
  encoding.writeVarUint(enc, digest.entries.length);
  for (const e of digest.entries) {
    encoding.writeVarString(enc, e.key);
    encoding.writeVarUint8Array(enc, e.stateVector);
  }
  return encoding.toUint8Array(enc);
}

/**
 * Decode an anti-entropy digest (see {@link encodeDigest}). Each state vector is checked with
 * `Y.decodeStateVector`.
 * @throws TidePlaintextError on any malformation, unsorted/duplicate keys or keys outside the range.
 */
export function decodeDigest(bytes: Uint8Array): Digest {
  return strict(bytes, (dec) => {
    const from = decoding.readVarString(dec);
    const hasTo = decoding.readVarUint(dec);
    if (hasTo !== 0 && hasTo !== 1) throw new TidePlaintextError('bad range flag');
    const to = hasTo === 1 ? decoding.readVarString(dec) : undefined;
    if (to !== undefined && !(from < to)) throw new TidePlaintextError('empty range');
    const n = readCount(dec);
    const entries: DigestEntry[] = [];
    let prev: string | undefined;
    for (let i = 0; i < n; i++) {
      const key = readKey(dec);
      if (prev !== undefined && !(prev < key)) throw new TidePlaintextError('digest keys not strictly ascending');
      if (!inRange(key, from, to)) throw new TidePlaintextError('digest key outside its range');
      prev = key;
      const stateVector = decoding.readVarUint8Array(dec).slice();
      try {
        Y.decodeStateVector(stateVector);
      } catch {
        throw new TidePlaintextError('bad state vector');
      }
      entries.push({ key, stateVector });
    }
    return { from, to, entries };
  });
}

/**
 * Split a sorted key list into digests that together cover `[from, to)` exactly, each with at
 * most `maxKeys` entries. Always returns at least one digest (an empty one when no key is held).
 * @param entries - Entries sorted strictly ascending, all inside `[from, to)`.
 */
export function chunkDigest(
  entries: readonly DigestEntry[],
  from: string,
  to: string | undefined,
  maxKeys: number,
): Digest[] {
  if (entries.length <= maxKeys) return [{ from, to, entries: [...entries] }];
  const out: Digest[] = [];
  for (let i = 0; i < entries.length; i += maxKeys) {
    const next = entries[i + maxKeys];
    const first = entries[i];
    out.push({
      from: i === 0 || first === undefined ? from : first.key,
      to: next === undefined ? to : next.key,
      entries: entries.slice(i, i + maxKeys),
    });
  }
  return out;
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

function strict<T>(bytes: Uint8Array, body: (dec: decoding.Decoder) => T): T {
  try {
    const dec = decoding.createDecoder(bytes);
    const version = decoding.readVarUint(dec);
    if (version !== PLAINTEXT_VERSION) throw new TidePlaintextError('unsupported plaintext version');
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
