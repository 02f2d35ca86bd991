/**
 * Byte formats of the durable store (src/store/sqlite-store.ts), kept apart from SQL so another
 * backend can share them:
 *
 * - Yjs updates are stored in the **V2 encoding** (https://docs.yjs.dev/api/document-updates#update-api,
 *   `Y.convertUpdateFormatV1ToV2`); the merge engine (src/merge/replica.ts) works in V1, so
 *   the store converts at its boundary.
 * - A version's document is a **keyframe** (the whole V2 state) or a **delta** (a V2 update holding
 *   what the version added to the previous version's state: `Y.diffUpdateV2` against the previous
 *   state vector). A version's state is its nearest keyframe merged with the deltas after it.
 * - A version's body (canonical JSON) is plain UTF-8 when written, and the compactor rewrites it as
 *   raw DEFLATE (RFC 1951), either alone or with a **reference body** as preset dictionary
 *   (zlib `dictionary`, https://nodejs.org/api/zlib.html#class-options): successive versions of a
 *   resource differ in a few elements, so a body compressed against an earlier one is tens of bytes.
 */
import * as Y from 'yjs';
import * as encoding from 'lib0/encoding';
import * as decoding from 'lib0/decoding';
import { deflateRawSync, inflateRawSync } from 'node:zlib';

/** How a version's body is stored. */
export const BodyCodec = {
  /** UTF-8 text, as written (the SQLite store keeps these in its `fresh_body` table). */
  plain: 0,
  /** Raw DEFLATE with the plain body of the version named by `body_ref` as preset dictionary. */
  deflateWithRef: 1,
  /** Raw DEFLATE without dictionary; such a body can serve as reference for later versions. */
  deflate: 2,
  /** No body: the version is a deletion. */
  none: 3,
} as const;
/** One of {@link BodyCodec}'s values. */
export type BodyCodecId = (typeof BodyCodec)[keyof typeof BodyCodec];

/** How a version's document state is stored. */
export const StateKind = {
  /** The whole document, V2 update. */
  keyframe: 0,
  /** V2 update with what this version added to the previous version (`Y.diffUpdateV2`). */
  delta: 1,
  /**
   * A keyframe equal to the resource's current document, not stored twice (only ever the newest
   * version). Before the current document changes, the store writes it into the row as a keyframe.
   */
  current: 2,
} as const;
/** One of {@link StateKind}'s values. */
export type StateKindId = (typeof StateKind)[keyof typeof StateKind];

const EMPTY = new Uint8Array(0);

/**
 * Converts a Yjs update from the V1 to the V2 encoding.
 * @param v1 - V1 update bytes; an empty array stays empty (the Replica never stores one, but a
 *   caller may).
 * @returns V2 update bytes (typically 5-10× smaller than V1 for documents with many overwritten
 *   values, see docs/storage.md).
 * @throws Error (from Yjs/lib0) when `v1` is not a valid V1 update.
 */
export function toV2(v1: Uint8Array): Uint8Array {
  return v1.length === 0 ? EMPTY : Y.convertUpdateFormatV1ToV2(v1);
}

/**
 * Converts a Yjs update from the V2 to the V1 encoding (what `Y.applyUpdate` and the Replica read).
 * @param v2 - V2 update bytes; empty stays empty.
 * @returns V1 update bytes.
 * @throws Error (from Yjs/lib0) when `v2` is not a valid V2 update.
 */
export function toV1(v2: Uint8Array): Uint8Array {
  return v2.length === 0 ? EMPTY : Y.convertUpdateFormatV2ToV1(v2);
}

const TAG_V1 = 1;
const TAG_V2 = 2;

/**
 * Encodes a list of V1 updates (the Replica's held-back `pending` updates) as one blob, each update
 * converted to V2. An update Yjs cannot convert is kept verbatim (tagged V1), so nothing handed to
 * the store is dropped.
 * @param updates - V1 updates, in order.
 * @returns `varuint count, (varuint tag, varuint length, bytes)*` (lib0 encoding); tag 2 = V2, 1 = V1.
 */
export function encodeUpdateList(updates: readonly Uint8Array[]): Uint8Array {
  const enc = encoding.createEncoder();
  encoding.writeVarUint(enc, updates.length);
  for (const u of updates) {
    let v2: Uint8Array | undefined;
    try {
      v2 = toV2(u);
    } catch {
      v2 = undefined;
    }
    encoding.writeVarUint(enc, v2 ? TAG_V2 : TAG_V1);
    encoding.writeVarUint8Array(enc, v2 ?? u);
  }
  return encoding.toUint8Array(enc);
}

/**
 * Decodes {@link encodeUpdateList}'s blob back to V1 updates.
 * @param blob - the encoded list.
 * @returns V1 updates, in the stored order.
 * @throws Error when the blob is truncated, has an unknown tag, or holds an invalid V2 update.
 */
export function decodeUpdateList(blob: Uint8Array): Uint8Array[] {
  const dec = decoding.createDecoder(blob);
  const n = decoding.readVarUint(dec);
  const out: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    const tag = decoding.readVarUint(dec);
    const bytes = decoding.readVarUint8Array(dec);
    if (tag === TAG_V2) out.push(toV1(bytes));
    else if (tag === TAG_V1) out.push(bytes.slice());
    else throw new Error(`Unknown update tag ${tag} in stored update list`);
  }
  return out;
}

/**
 * The state vector of a V2 update (`Y.encodeStateVectorFromUpdateV2`): per client, the end of the
 * contiguous run of structs from clock 0.
 * @param v2 - V2 update; empty gives the empty state vector.
 * @throws Error when `v2` is not a valid V2 update.
 */
export function stateVectorOfV2(v2: Uint8Array): Uint8Array {
  return v2.length === 0 ? Y.encodeStateVector(new Y.Doc()) : Y.encodeStateVectorFromUpdateV2(v2);
}

/**
 * True when state vector `a` covers `b` (every client clock in `b` is ≤ its clock in `a`).
 * @param a - encoded state vector.
 * @param b - encoded state vector.
 */
export function svCovers(a: Uint8Array, b: Uint8Array): boolean {
  const da = Y.decodeStateVector(a);
  for (const [client, clock] of Y.decodeStateVector(b)) if ((da.get(client) ?? 0) < clock) return false;
  return true;
}

/**
 * The delta of a version: what its document holds beyond the previous version's state vector.
 * Merged after the previous version's state ({@link mergeStates}) it gives a document equal to
 * `stateV2` (same structs, same delete set; deleted content may be kept where `stateV2` had it
 * garbage-collected, which loading collects again).
 * @param stateV2 - the version's whole document, V2.
 * @param prevSv - state vector of the previous version's document.
 * @returns V2 update bytes (a Yjs diff update also carries the whole delete set, which for
 *   tidegate documents is one range list per writing node).
 * @throws Error when `stateV2` is not a valid V2 update.
 */
export function deltaOf(stateV2: Uint8Array, prevSv: Uint8Array): Uint8Array {
  return Y.diffUpdateV2(stateV2, prevSv);
}

/**
 * Rebuilds a version's document from its keyframe and the deltas after it.
 * @param parts - keyframe first, then deltas in version order (all V2).
 * @returns One V2 update (`Y.mergeUpdatesV2`), or the keyframe itself when there are no deltas.
 * @throws Error when a part is not a valid V2 update.
 */
export function mergeStates(parts: readonly Uint8Array[]): Uint8Array {
  if (parts.length === 0) return EMPTY;
  if (parts.length === 1) return parts[0]!;
  return Y.mergeUpdatesV2(parts.filter((p) => p.length > 0));
}

const utf8 = new TextEncoder();
const utf8d = new TextDecoder('utf-8', { fatal: true });

/**
 * Encodes a body as stored at write time.
 * @param body - canonical JSON text.
 * @returns UTF-8 bytes ({@link BodyCodec.plain}).
 */
export function plainBody(body: string): Uint8Array {
  return utf8.encode(body);
}

/**
 * Compresses a body for the compactor.
 * @param body - canonical JSON text.
 * @param ref - the reference body used as DEFLATE preset dictionary, or undefined for none. Only
 *   its last 32 KiB are used by DEFLATE (RFC 1951 window).
 * @returns Raw DEFLATE bytes (level 9).
 */
export function compressBody(body: string, ref?: string): Uint8Array {
  const buf = deflateRawSync(utf8.encode(body), ref === undefined ? { level: 9 } : { level: 9, dictionary: utf8.encode(ref) });
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/**
 * Decodes a stored body.
 * @param bytes - the stored bytes.
 * @param codec - a {@link BodyCodec} value.
 * @param ref - the reference body, required for {@link BodyCodec.deflateWithRef}.
 * @returns The canonical JSON text, exactly as written.
 * @throws Error on an unknown codec, a missing reference, or corrupt bytes (zlib error / invalid UTF-8).
 */
export function decodeBody(bytes: Uint8Array, codec: number, ref?: string): string {
  switch (codec) {
    case BodyCodec.plain:
      return utf8d.decode(bytes);
    case BodyCodec.deflate:
      return utf8d.decode(inflateRawSync(bytes));
    case BodyCodec.none:
      throw new Error('A deletion has no stored body');
    case BodyCodec.deflateWithRef:
      if (ref === undefined) throw new Error('Stored body needs its reference body, which is missing');
      return utf8d.decode(inflateRawSync(bytes, { dictionary: utf8.encode(ref) }));
    default:
      throw new Error(`Unknown stored body codec ${codec}`);
  }
}

/** Where a resource's stored history chain stands (see {@link nextHistoryState}). */
export interface HistoryChain {
  /** State vector of the newest stored version's document, or null before the first. */
  vsv: Uint8Array | null;
  /** Size of the newest keyframe, bytes. */
  kfBytes: number;
  /** Sum of the deltas stored since that keyframe, bytes. */
  deltaBytes: number;
}

/**
 * Decides how the next version's document is stored: as a delta against the previous version
 * (`Y.encodeStateAsUpdateV2(doc, previousStateVector)`) when that is smaller and the deltas since
 * the last keyframe stay within `keyframeRatio` × the keyframe's size, else as a keyframe (the
 * whole document). Advances `chain`. Shared by the SQLite and PostgreSQL stores (docs/storage.md,
 * "History").
 * @param chain - the chain so far; mutated.
 * @param full - the version's whole document, V2 update encoding.
 * @param keyframeRatio - deltas allowed per keyframe, as a multiple of its size (e.g. 4).
 * @returns The bytes to store and their {@link StateKind} (`keyframe` or `delta`).
 */
export function nextHistoryState(chain: HistoryChain, full: Uint8Array, keyframeRatio: number): { state: Uint8Array; kind: number } {
  const sv = stateVectorOfV2(full);
  let state = full;
  let kind: number = StateKind.keyframe;
  if (chain.vsv && svCovers(sv, chain.vsv)) {
    const delta = deltaOf(full, chain.vsv);
    if (delta.length < full.length && chain.deltaBytes + delta.length <= keyframeRatio * chain.kfBytes) {
      state = delta;
      kind = StateKind.delta;
    }
  }
  if (kind === StateKind.keyframe) {
    chain.kfBytes = full.length;
    chain.deltaBytes = 0;
  } else chain.deltaBytes += state.length;
  chain.vsv = sv;
  return { state, kind };
}
