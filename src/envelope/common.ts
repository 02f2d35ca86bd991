/**
 * Pieces shared by the tidegate-env/1 (v1.ts) and tidegate-env/2 (v2.ts) envelope formats:
 * input types, the first parsing stage (outer JSON → protected header → `v`), strict base64url
 * members, key selection by kid, and the length-prefixed signature-input encoding.
 * See docs/envelope.md.
 */
import { EnvelopeError } from './errors.ts';
import { keyIdOf } from './keys.ts';
import type { NodePublicKeys, NodeSecretKeys } from './keys.ts';
import { b64uDecodeStrict, SUITE } from './suite.ts';

/** Input of `seal()` (both versions). */
export interface SealInput {
  /** Application message kind, `^[A-Za-z0-9._:/-]{1,64}$`. */
  kind: string;
  /** Sender-unique message id, `^[A-Za-z0-9._:-]{1,128}$` (e.g. a UUID). */
  messageId: string;
  /**
   * FHIR keys the payload concerns, at most 10 000: `Type/id` (v1 and v2) or, v2 only,
   * `Type/id/_history/versionId` to bind a resource version.
   */
  resources: string[];
  /** Payload bytes (any length, including 0, up to 45 MiB). */
  plaintext: Uint8Array;
  /** Integer ms since the Unix epoch; defaults to `Date.now()`. */
  createdAt?: number;
}

/**
 * Source of the random values one seal consumes (order: docs/envelope.md §4 for v1, §11 for v2).
 * Must return exactly `n` fresh bytes.
 */
export type SealRandom = (n: number) => Uint8Array;

/** Regexes of the header strings (ASCII only, so canonical JSON never escapes anything). */
export const MESSAGE_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;
export const KIND_RE = /^[A-Za-z0-9._:/-]{1,64}$/;
/** FHIR R4 resource type name / FHIR id (https://hl7.org/fhir/R4/datatypes.html#id). */
export const RESOURCE_RE = /^[A-Z][A-Za-z]{0,63}\/[A-Za-z0-9.-]{1,64}$/;
/** v2 also allows a version-specific reference `Type/id/_history/vid` (https://hl7.org/fhir/R4/http.html#vread). */
export const RESOURCE_V2_RE = /^[A-Z][A-Za-z]{0,63}\/[A-Za-z0-9.-]{1,64}(\/_history\/[A-Za-z0-9.-]{1,64})?$/;
export const MAX_RESOURCES = 10_000;

/** Throws `ERR_ENVELOPE_MALFORMED`. */
export function malformed(msg: string): never {
  throw new EnvelopeError('ERR_ENVELOPE_MALFORMED', `Malformed envelope: ${msg}`);
}

/** Decodes member `name` of `obj` as canonical unpadded base64url, else `ERR_ENVELOPE_MALFORMED`. */
export function decodeMember(obj: Record<string, unknown>, name: string, what = ''): Uint8Array {
  const text = obj[name];
  if (typeof text !== 'string') malformed(`${what}"${name}" must be a string`);
  const bytes = b64uDecodeStrict(text);
  if (bytes === undefined) malformed(`${what}"${name}" is not unpadded base64url`);
  return bytes;
}

/** Result of the version-independent first parsing stage. */
export interface OuterEnvelope {
  /** The parsed outer JSON object. */
  outer: Record<string, unknown>;
  /** Decoded `protected` member: the canonical header bytes (not yet checked for canonical form). */
  protectedBytes: Uint8Array;
  /** The parsed header object. */
  header: Record<string, unknown>;
  /** Header `v`. */
  v: string;
}

/**
 * Stage 1 of parsing, common to all versions (docs/envelope.md §5 checks 0–1, §12 checks 0–2):
 * length ≤ 64 MiB, outer JSON object with a string `protected` member that is canonical unpadded
 * base64url of a UTF-8 JSON object whose `v` is a string.
 * @throws {@link EnvelopeError} `ERR_ENVELOPE_TOO_LARGE` or `ERR_ENVELOPE_MALFORMED`.
 */
export function readOuter(serialized: unknown): OuterEnvelope {
  if (typeof serialized !== 'string') malformed('expected a string');
  if (serialized.length > SUITE.lengths.maxEnvelopeChars) {
    throw new EnvelopeError('ERR_ENVELOPE_TOO_LARGE', `Envelope of ${serialized.length} characters exceeds ${SUITE.lengths.maxEnvelopeChars}`);
  }
  let outer: unknown;
  try {
    outer = JSON.parse(serialized);
  } catch {
    malformed('not JSON');
  }
  if (typeof outer !== 'object' || outer === null || Array.isArray(outer)) malformed('not a JSON object');
  const o = outer as Record<string, unknown>;
  if (!Object.hasOwn(o, 'protected')) malformed('"protected" is missing');
  const protectedBytes = decodeMember(o, 'protected');
  let headerValue: unknown;
  try {
    headerValue = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(protectedBytes));
  } catch {
    malformed('protected header is not UTF-8 JSON');
  }
  if (typeof headerValue !== 'object' || headerValue === null || Array.isArray(headerValue)) {
    malformed('protected header is not a JSON object');
  }
  const header = headerValue as Record<string, unknown>;
  if (typeof header['v'] !== 'string') malformed('header "v" must be a string');
  return { outer: o, protectedBytes, header, v: header['v'] };
}

/** The peer's ML-DSA-65 public key whose kid is `kid`: the current one or an additional (`next`) one. */
export function selectSigKey(peer: NodePublicKeys, kid: string): Uint8Array | undefined {
  if (peer.sigKeyId === kid) return peer.sigPublicKey;
  for (const k of peer.additionalSigKeys ?? []) {
    if (k.kid === kid && k.publicKey instanceof Uint8Array && keyIdOf(k.publicKey) === kid) return k.publicKey;
  }
  return undefined;
}

/** This node's X-Wing secret key whose kid is `kid`: the current one or a `previous` one. */
export function selectKemKey(self: NodeSecretKeys, kid: string): Uint8Array | undefined {
  if (self.kemKeyId === kid) return self.kemSecretKey;
  for (const k of self.additionalKemKeys ?? []) {
    if (k.kid === kid) return k.secretKey;
  }
  return undefined;
}

/** The configured peer `sender` and its signature key `senderKid`, else `ERR_UNKNOWN_PEER`. */
export function peerSigKey(peers: ReadonlyMap<string, NodePublicKeys>, sender: string, senderKid: string): Uint8Array {
  const peer = peers.get(sender);
  if (peer === undefined || peer.nodeId !== sender) {
    throw new EnvelopeError('ERR_UNKNOWN_PEER', `Unknown sender "${sender}"`);
  }
  const key = selectSigKey(peer, senderKid);
  if (key === undefined) {
    throw new EnvelopeError('ERR_UNKNOWN_PEER', `Sender "${sender}" key id ${senderKid} is not a configured key`);
  }
  return key;
}

/**
 * `label || 0x00 || LP(f1) || LP(f2) || …` with `LP(x) = I2OSP(len(x), 8) || x` (8-byte big-endian
 * length). Used for both versions' signature inputs.
 */
export function labeledFields(label: Uint8Array, fields: readonly Uint8Array[]): Uint8Array {
  const total = label.length + 1 + fields.reduce((n, f) => n + 8 + f.length, 0);
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  out.set(label, 0);
  let off = label.length + 1; // the 0x00 separator is already zero
  for (const f of fields) {
    view.setBigUint64(off, BigInt(f.length), false);
    off += 8;
    out.set(f, off);
    off += f.length;
  }
  return out;
}

/**
 * Canonical JSON of a value made of objects, arrays, ASCII strings without `"`/`\`/controls and
 * safe integers: member names sorted by code point, no whitespace. For such values this equals
 * RFC 8785 (JCS).
 */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (typeof value === 'object' && value !== null) {
    const obj = value as Record<string, unknown>;
    return `{${Object.keys(obj)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}
