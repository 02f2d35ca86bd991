/**
 * Sealed records of the node store (`tidegate-store/1`): the byte format every store backend
 * (src/store/sqlite-store.ts, the PostgreSQL backend) uses to keep resource content encrypted at
 * rest, and the key wrapping of the per-resource content keys. docs/storage.md "Encryption at rest"
 * is the specification; this module is its implementation.
 *
 * - **Content key** (CK): 32 random bytes per resource (one per `Type/id`), never stored in clear.
 * - **Sealed record** = `0x01 || nonce(12) || AES-256-GCM(CK, nonce, plaintext, AAD)` with the
 *   16-byte tag appended (NIST SP 800-38D; node:crypto (OpenSSL) for records and tags, `@noble/ciphers`
 *   `gcm` for key wrapping; test/store-seal-native.test.ts checks records against `@noble/ciphers`). The nonce is 96 random bits per
 *   seal (SP 800-38D §8.2.2, RBG-based IVs: at most 2^32 seals per key; a resource gets far fewer).
 * - **AAD** = `"tidegate-store/1" || 0x00 || kind(1) || u64be(seq) || utf8(Type/id)`: the format
 *   version, the record kind, the version sequence number (0 for per-resource records) and the
 *   resource key, so a record cannot be moved to another resource, kind or version undetected.
 * - **Key-encryption key** (KEK): `(ek, ss) = X-Wing.Encapsulate(pk)` to the node's own current KEM
 *   public key (draft-connolly-cfrg-xwing-kem), then
 *   `KEK = HKDF-SHA256(IKM = ss, salt = SHA-256(ek), info = "tidegate-store/1 key-wrap" || 0x00 || kid)`
 *   (RFC 5869). `ek` and the kid are stored with the wrapped keys; the node's secret key file
 *   decapsulates it. One encapsulation serves a whole key generation (rotation makes a new one).
 * - **Wrapped CK** = `0x01 || nonce(12) || AES-256-GCM(KEK, nonce, CK, AAD = "tidegate-store/1 wrap" || 0x00 || u64be(gen) || u64be(slot))`.
 * - **Resource tag**: `HMAC-SHA256(indexKey, utf8(Type/id))` (RFC 2104), 32 bytes: the row id
 *   under which a backend files a resource instead of its key. `indexKey` is a random 32-byte key
 *   wrapped like a content key (slot {@link INDEX_KEY_SLOT}), so tags are stable across rotations.
 */
import { createCipheriv, createDecipheriv, createHmac, randomFillSync } from 'node:crypto';
import { gcm } from '@noble/ciphers/aes.js';
import { hkdf } from '@noble/hashes/hkdf.js';
import { sha256 } from '@noble/hashes/sha2.js';

/** Frozen parameter table of the `tidegate-store/1` format. Lengths in bytes. */
export const STORE_FORMAT = Object.freeze({
  /** Format name (in AADs and the key vault's `format`). */
  name: 'tidegate-store/1',
  /** First byte of every sealed record and wrapped key of this format. */
  version: 1,
  /** HKDF `info` prefix of the KEK (followed by 0x00 and the KEM kid). */
  kekInfo: 'tidegate-store/1 key-wrap',
  /** AAD prefix of wrapped keys. */
  wrapLabel: 'tidegate-store/1 wrap',
  contentKey: 32,
  nonce: 12,
  tag: 16,
  /** Resource tag (HMAC-SHA256 output). */
  resourceTag: 32,
  /** Fixed overhead of a sealed record: version byte + nonce + GCM tag. */
  overhead: 29,
});

/**
 * Record kinds: one byte of the AAD. A backend seals each stored field under its kind, so a field
 * cannot be read as another.
 */
export const RecordKind = {
  /** The resource key `Type/id` itself (so a backend can list keys without storing them in clear). */
  key: 1,
  /** Current Yjs document (V2 update), which also holds the conflict records. */
  state: 2,
  /** Held-back remote updates (the codec's update list). */
  pending: 3,
  /** State vector of the newest version (`resource.vsv`). */
  stateVector: 4,
  /** A version's metadata: versionId and lastUpdated (see {@link encodeVersionMeta}). */
  versionMeta: 5,
  /** A version's document (keyframe or delta, V2). */
  versionState: 6,
  /** A version's body as written (plain UTF-8). */
  freshBody: 7,
  /** A version's compacted body (raw DEFLATE). */
  compactBody: 8,
  /** One hospital id map pairing (src/store/id-map.ts). */
  idMap: 9,
} as const;
/** One of {@link RecordKind}'s values. */
export type RecordKindId = (typeof RecordKind)[keyof typeof RecordKind];

/** Slot number reserved for the index (tag) key in a key generation. */
export const INDEX_KEY_SLOT = 0;

/** Stable codes of {@link SealedRecordError}. */
export type SealedRecordErrorCode =
  /** Too short, or not a sealed record at all. */
  | 'ERR_SEALED_MALFORMED'
  /** A format version this build does not read. */
  | 'ERR_SEALED_UNSUPPORTED'
  /** GCM authentication failed: damaged bytes, another resource/kind/version, or another key. */
  | 'ERR_SEALED_AUTH_FAILED';

/**
 * A sealed record or wrapped key that cannot be opened. The message names the record kind and
 * the code only — never content or resource keys.
 */
export class SealedRecordError extends Error {
  override readonly name = 'SealedRecordError';
  /** Stable machine-readable code. */
  readonly code: SealedRecordErrorCode;

  /**
   * @param code - stable code.
   * @param message - human text without PHI.
   */
  constructor(code: SealedRecordErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

const utf8 = new TextEncoder();
const KIND_NAMES: Record<number, string> = Object.fromEntries(Object.entries(RecordKind).map(([k, v]) => [v, k]));

function u64(n: number): Uint8Array {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError('sequence numbers are non-negative safe integers');
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n));
  return b;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function checkKey(key: Uint8Array, what: string): void {
  if (!(key instanceof Uint8Array) || key.length !== STORE_FORMAT.contentKey) throw new TypeError(`${what} must be a ${STORE_FORMAT.contentKey}-byte Uint8Array`);
}

/** Random bytes from the platform CSPRNG (`crypto.getRandomValues`). Injectable in {@link sealRecord} for tests. */
export type RandomSource = (n: number) => Uint8Array;
const csprng: RandomSource = (n) => crypto.getRandomValues(new Uint8Array(n));

/**
 * The AAD of a sealed record (see module doc).
 * @param kind - a {@link RecordKind} value.
 * @param resourceKey - `Type/id`.
 * @param seq - version sequence number (0-based), 0 for per-resource records.
 * @returns `"tidegate-store/1" || 0x00 || kind || u64be(seq) || utf8(resourceKey)`.
 * @throws RangeError for a negative or unsafe `seq`.
 */
export function recordAad(kind: RecordKindId, resourceKey: string, seq = 0): Uint8Array {
  return concat(utf8.encode(STORE_FORMAT.name), new Uint8Array([0, kind]), u64(seq), utf8.encode(resourceKey));
}

/**
 * Seals one stored field of a resource under its content key.
 * @param contentKey - the resource's 32-byte content key.
 * @param kind - what the field is ({@link RecordKind}).
 * @param resourceKey - `Type/id` (bound in the AAD, not stored).
 * @param seq - version sequence number for per-version fields, else 0.
 * @param plaintext - the field's bytes (any length, may be empty).
 * @param random - CSPRNG (default `crypto.getRandomValues`); tests only.
 * @returns `0x01 || nonce(12) || ciphertext || tag(16)`: plaintext length + 29 bytes.
 * @throws TypeError for a content key that is not 32 bytes.
 */
export function sealRecord(contentKey: Uint8Array, kind: RecordKindId, resourceKey: string, seq: number, plaintext: Uint8Array, random?: RandomSource): Uint8Array {
  checkKey(contentKey, 'sealRecord: contentKey');
  const aad = recordAad(kind, resourceKey, seq);
  const out = new Uint8Array(STORE_FORMAT.overhead + plaintext.length);
  out[0] = STORE_FORMAT.version;
  const nonce = out.subarray(1, 1 + STORE_FORMAT.nonce);
  if (random) nonce.set(random(STORE_FORMAT.nonce));
  else randomFillSync(nonce);
  const cipher = createCipheriv('aes-256-gcm', contentKey, nonce, { authTagLength: STORE_FORMAT.tag });
  cipher.setAAD(aad);
  const ct = cipher.update(plaintext);
  const rest = cipher.final();
  out.set(ct, 1 + STORE_FORMAT.nonce);
  out.set(rest, 1 + STORE_FORMAT.nonce + ct.length);
  out.set(cipher.getAuthTag(), out.length - STORE_FORMAT.tag);
  return out;
}

/**
 * Opens a record sealed by {@link sealRecord}.
 * @param contentKey - the resource's 32-byte content key.
 * @param kind - the kind it was sealed as.
 * @param resourceKey - `Type/id` it was sealed for.
 * @param seq - the sequence number it was sealed with.
 * @param sealed - the stored bytes.
 * @returns The plaintext.
 * @throws SealedRecordError `ERR_SEALED_MALFORMED` (shorter than 29 bytes or not a Uint8Array),
 *   `ERR_SEALED_UNSUPPORTED` (unknown version byte), `ERR_SEALED_AUTH_FAILED` (damaged, moved or
 *   wrong key); TypeError for a bad content key.
 */
export function openRecord(contentKey: Uint8Array, kind: RecordKindId, resourceKey: string, seq: number, sealed: Uint8Array): Uint8Array {
  checkKey(contentKey, 'openRecord: contentKey');
  const what = `sealed ${KIND_NAMES[kind] ?? `kind-${kind}`} record`;
  if (!(sealed instanceof Uint8Array) || sealed.length < STORE_FORMAT.overhead) throw new SealedRecordError('ERR_SEALED_MALFORMED', `${what}: too short to be sealed`);
  if (sealed[0] !== STORE_FORMAT.version) throw new SealedRecordError('ERR_SEALED_UNSUPPORTED', `${what}: format version ${sealed[0]} is not supported`);
  let plain: Buffer;
  try {
    const decipher = createDecipheriv('aes-256-gcm', contentKey, sealed.subarray(1, 1 + STORE_FORMAT.nonce), { authTagLength: STORE_FORMAT.tag });
    decipher.setAAD(recordAad(kind, resourceKey, seq));
    decipher.setAuthTag(sealed.subarray(sealed.length - STORE_FORMAT.tag));
    const head = decipher.update(sealed.subarray(1 + STORE_FORMAT.nonce, sealed.length - STORE_FORMAT.tag));
    const tail = decipher.final();
    plain = tail.length === 0 ? head : Buffer.concat([head, tail]);
  } catch {
    throw new SealedRecordError('ERR_SEALED_AUTH_FAILED', `${what}: authentication failed (damaged, moved, or sealed under another key)`);
  }
  // a plain Uint8Array (not a view of a pooled Buffer)
  const out = new Uint8Array(plain.length);
  out.set(plain);
  return out;
}

/**
 * Derives the key-encryption key of a key generation from an X-Wing encapsulation.
 * @param sharedSecret - X-Wing shared secret (32 bytes).
 * @param encapsulation - X-Wing ciphertext `ek` (1120 bytes).
 * @param kid - key id of the X-Wing key it was encapsulated to (22 characters).
 * @returns 32-byte KEK: HKDF-SHA256(ss, salt = SHA-256(ek), info = "tidegate-store/1 key-wrap" || 0x00 || kid).
 */
export function deriveKek(sharedSecret: Uint8Array, encapsulation: Uint8Array, kid: string): Uint8Array {
  return hkdf(sha256, sharedSecret, sha256(encapsulation), concat(utf8.encode(STORE_FORMAT.kekInfo), new Uint8Array([0]), utf8.encode(kid)), 32);
}

function wrapAad(gen: number, slot: number): Uint8Array {
  return concat(utf8.encode(STORE_FORMAT.wrapLabel), new Uint8Array([0]), u64(gen), u64(slot));
}

/**
 * Wraps a content key (or the index key) under a KEK.
 * @param kek - 32-byte key-encryption key ({@link deriveKek}).
 * @param gen - key generation number (bound in the AAD).
 * @param slot - slot number of the key (bound in the AAD).
 * @param key - the 32-byte key to wrap.
 * @param random - CSPRNG; tests only.
 * @returns 61 bytes: `0x01 || nonce(12) || ct(32) || tag(16)`.
 * @throws TypeError for keys that are not 32 bytes.
 */
export function wrapKey(kek: Uint8Array, gen: number, slot: number, key: Uint8Array, random: RandomSource = csprng): Uint8Array {
  checkKey(kek, 'wrapKey: kek');
  checkKey(key, 'wrapKey: key');
  const nonce = random(STORE_FORMAT.nonce);
  return concat(new Uint8Array([STORE_FORMAT.version]), nonce, gcm(kek, nonce, wrapAad(gen, slot)).encrypt(key));
}

/**
 * Unwraps a key wrapped by {@link wrapKey}.
 * @returns The 32-byte key.
 * @throws SealedRecordError (`ERR_SEALED_MALFORMED`, `ERR_SEALED_UNSUPPORTED`, `ERR_SEALED_AUTH_FAILED`).
 */
export function unwrapKey(kek: Uint8Array, gen: number, slot: number, wrapped: Uint8Array): Uint8Array {
  checkKey(kek, 'unwrapKey: kek');
  if (!(wrapped instanceof Uint8Array) || wrapped.length !== 1 + STORE_FORMAT.nonce + STORE_FORMAT.contentKey + STORE_FORMAT.tag) {
    throw new SealedRecordError('ERR_SEALED_MALFORMED', `wrapped key of slot ${slot}: wrong length`);
  }
  if (wrapped[0] !== STORE_FORMAT.version) throw new SealedRecordError('ERR_SEALED_UNSUPPORTED', `wrapped key of slot ${slot}: format version ${wrapped[0]} is not supported`);
  try {
    return gcm(kek, wrapped.subarray(1, 13), wrapAad(gen, slot)).decrypt(wrapped.subarray(13));
  } catch {
    throw new SealedRecordError('ERR_SEALED_AUTH_FAILED', `wrapped key of slot ${slot}: authentication failed (damaged, or wrapped under another key)`);
  }
}

/**
 * The row id of a resource: HMAC-SHA256(indexKey, utf8(Type/id)) (RFC 2104).
 * @param indexKey - the store's 32-byte index key.
 * @param resourceKey - `Type/id` (or a hospital reference, for the id map's reverse index).
 * @returns 32 bytes.
 */
export function resourceTag(indexKey: Uint8Array, resourceKey: string): Uint8Array {
  checkKey(indexKey, 'resourceTag: indexKey');
  const mac = createHmac('sha256', indexKey).update(utf8.encode(resourceKey)).digest();
  const out = new Uint8Array(mac.length);
  out.set(mac);
  return out;
}

/**
 * Encodes a version's metadata for sealing under {@link RecordKind.versionMeta}.
 * @param versionId - the node versionId.
 * @param lastUpdated - FHIR instant.
 * @returns UTF-8 of `versionId + "\n" + lastUpdated` (neither contains a newline).
 */
export function encodeVersionMeta(versionId: string, lastUpdated: string): Uint8Array {
  return utf8.encode(`${versionId}\n${lastUpdated}`);
}

/**
 * Decodes {@link encodeVersionMeta}'s bytes.
 * @throws SealedRecordError `ERR_SEALED_MALFORMED` when there is no separator.
 */
export function decodeVersionMeta(bytes: Uint8Array): { versionId: string; lastUpdated: string } {
  const text = new TextDecoder().decode(bytes);
  const i = text.indexOf('\n');
  if (i < 0) throw new SealedRecordError('ERR_SEALED_MALFORMED', 'sealed versionMeta record: no separator');
  return { versionId: text.slice(0, i), lastUpdated: text.slice(i + 1) };
}
