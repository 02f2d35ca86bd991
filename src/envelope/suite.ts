/**
 * The tidegate-env/1 parameter table, and small encoding helpers shared by keys.ts and envelope.ts.
 *
 * Sources: FIPS 203 (ML-KEM), draft-connolly-cfrg-xwing-kem (X-Wing = ML-KEM-768 + X25519),
 * FIPS 204 (ML-DSA), RFC 5869 (HKDF), NIST SP 800-38D (GCM), RFC 4648 §5 (base64url).
 */
import { ml_dsa65 } from '@noble/post-quantum/ml-dsa.js';
import { ml_kem768_x25519 } from '@noble/post-quantum/hybrid.js';

/**
 * Frozen parameter table of the tidegate-env/1 suite. Lengths are in bytes unless the name ends
 * in `Chars`. Changing any value is a new format version, never an edit of this one.
 */
export const SUITE = Object.freeze({
  /** Format identifier, header field `v`. */
  v: 'tidegate-env/1',
  /** KEM id, header field `kem`: X-Wing (draft-connolly-cfrg-xwing-kem), built on FIPS 203 ML-KEM-768 + X25519. */
  kem: 'X-Wing',
  /** KDF id, header field `kdf`: HKDF with SHA-256 (RFC 5869). */
  kdf: 'HKDF-SHA256',
  /** AEAD id, header field `aead`: AES-256-GCM (NIST SP 800-38D), named as in RFC 7518 `enc`. */
  aead: 'A256GCM',
  /** Signature id, header field `sig`: ML-DSA-65 (FIPS 204), pure (not HashML-DSA), hedged. */
  sig: 'ML-DSA-65',
  /** HKDF `info` (UTF-8). HKDF `salt` is absent, i.e. 32 zero bytes (RFC 5869 §2.2). */
  kdfInfo: 'tidegate-env/1 A256GCM',
  /** ML-DSA context string `ctx` (FIPS 204 §5.2), UTF-8. */
  sigContext: 'tidegate-env/1',
  /** Label that starts the signature input, followed by one 0x00 byte. */
  sigLabel: 'tidegate-env/1 signature',
  /** HKDF `info` labels used by `generateNodeKeys(nodeId, seed)` to split the seed. */
  keygenInfoKem: 'tidegate-env/1 keygen X-Wing',
  keygenInfoSig: 'tidegate-env/1 keygen ML-DSA-65',
  lengths: Object.freeze({
    /** X-Wing encapsulation (public) key: ML-KEM-768 ek (1184) || X25519 pk (32). */
    kemPublicKey: 1216,
    /** X-Wing decapsulation key: the 32-byte seed (draft-connolly-cfrg-xwing-kem). */
    kemSecretKey: 32,
    /** X-Wing ciphertext: ML-KEM-768 ct (1088) || X25519 ephemeral pk (32). */
    kemCipherText: 1120,
    /** X-Wing shared secret. */
    sharedSecret: 32,
    /** ML-DSA-65 public key (FIPS 204 Table 2). */
    sigPublicKey: 1952,
    /** ML-DSA-65 expanded secret key (FIPS 204 Table 2). */
    sigSecretKey: 4032,
    /** ML-DSA-65 signature (FIPS 204 Table 2). */
    signature: 3309,
    /** AES-256 content key, HKDF output length L. */
    contentKey: 32,
    /** GCM nonce (IV), SP 800-38D recommended 96 bits. */
    nonce: 12,
    /** GCM authentication tag, 128 bits, appended to the ciphertext. */
    tag: 16,
    /** Key id: first 16 bytes of SHA-256(public key) ... */
    keyId: 16,
    /** ... encoded as unpadded base64url: 22 characters. */
    keyIdChars: 22,
    /** Seed accepted by `generateNodeKeys`. */
    nodeSeed: 32,
    /** X-Wing encapsulation randomness `eseed` (draft-connolly-cfrg-xwing-kem §5.4.1, EncapsulateDerand). */
    kemEncapsSeed: 64,
    /** ML-DSA-65 signing randomness `rnd` (FIPS 204 Algorithm 2, hedged variant). */
    signRandomness: 32,
    /** ML-DSA-65 key generation seed ξ (FIPS 204 Algorithm 1), the AKP `priv` (draft-ietf-cose-dilithium). */
    sigSeed: 32,
    /**
     * Largest serialized envelope, in UTF-16 code units (= bytes: envelopes are ASCII), 64 MiB.
     * `open()`/`peekHeader()` reject longer input before parsing anything (`ERR_ENVELOPE_TOO_LARGE`).
     */
    maxEnvelopeChars: 67_108_864,
    /**
     * Largest plaintext `seal()` accepts, 45 MiB: with the 10 000-resource header and the fixed
     * overhead the envelope stays below `maxEnvelopeChars`.
     */
    maxPlaintext: 47_185_920,
  }),
} as const);

// Fail loudly at import if the installed library disagrees with the table (e.g. after an upgrade).
{
  const L = SUITE.lengths;
  const k = ml_kem768_x25519.lengths;
  const s = ml_dsa65.lengths;
  if (
    k.publicKey !== L.kemPublicKey ||
    k.secretKey !== L.kemSecretKey ||
    k.cipherText !== L.kemCipherText ||
    s.publicKey !== L.sigPublicKey ||
    s.secretKey !== L.sigSecretKey ||
    s.signature !== L.signature
  ) {
    throw new Error('tidegate-env/1: @noble/post-quantum key/ciphertext lengths differ from the suite table');
  }
}

/** Node ids: also used as file names, so no path separators. */
export const NODE_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** Key ids: 22 base64url characters (16 bytes). */
export const KEY_ID_RE = /^[A-Za-z0-9_-]{22}$/;

const B64URL_RE = /^[A-Za-z0-9_-]*$/;

/** Unpadded base64url (RFC 4648 §5). */
export function b64uEncode(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64url');
}

/**
 * Strict unpadded base64url decode: rejects padding, `+` `/`, whitespace, and non-canonical
 * encodings (non-zero trailing bits, impossible lengths). Returns `undefined` on any of those.
 */
export function b64uDecodeStrict(text: string): Uint8Array | undefined {
  if (!B64URL_RE.test(text)) return undefined;
  const buf = Buffer.from(text, 'base64url');
  if (buf.toString('base64url') !== text) return undefined;
  return new Uint8Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
}

/** UTF-8 encode. */
export function utf8(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** True for a non-null, non-array object whose own keys are exactly `keys` (any order). */
export function hasExactKeys(value: unknown, keys: readonly string[]): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const own = Object.keys(value);
  if (own.length !== keys.length) return false;
  return keys.every((k) => Object.hasOwn(value, k));
}

/**
 * Frozen parameter table of tidegate-env/2 (docs/envelope.md §11). Changing any value is a new
 * format version. The algorithm ids pin the drafts they follow: HPKE (RFC 9180) base mode with the
 * X-Wing KEM as registered for HPKE by draft-ietf-hpke-pq-05 (KEM id 0x647a `MLKEM768-X25519`),
 * KDF HKDF-SHA256 (0x0001), AEAD AES-256-GCM (0x0002); X-Wing per draft-connolly-cfrg-xwing-kem-10.
 */
export const SUITE_V2 = Object.freeze({
  /** Format identifier, header field `v`. */
  v: 'tidegate-env/2',
  /** Content-key wrapping, header field `hpke`: RFC 9180 mode_base, draft-ietf-hpke-pq-05, kem/kdf/aead ids. */
  hpke: 'RFC9180-base/draft-ietf-hpke-pq-05/0x647a-0x0001-0x0002',
  /** KEM, header field `kem`: X-Wing as specified by draft-connolly-cfrg-xwing-kem-10. */
  kem: 'X-Wing/draft-connolly-cfrg-xwing-kem-10',
  /** Content encryption, header field `enc`: AES-256-GCM with a random per-message 256-bit content key (RFC 7518 name). */
  enc: 'A256GCM',
  /** Signature, header field `sig`: ML-DSA-65 (FIPS 204), pure, hedged, with context string. */
  sig: 'ML-DSA-65',
  /** HPKE `info` for wrapping the content key (UTF-8). */
  hpkeInfo: 'tidegate-env/2 content key',
  /** Label of the content-key commitment: `cekCommit = SHA-256(label || 0x00 || CEK)`. */
  commitLabel: 'tidegate-env/2 content key commitment',
  /** ML-DSA context string `ctx` (FIPS 204 §5.2), UTF-8. */
  sigContext: 'tidegate-env/2',
  /** Label that starts the signature input, followed by one 0x00 byte. */
  sigLabel: 'tidegate-env/2 signature',
  lengths: Object.freeze({
    /** Random content encryption key (AES-256). */
    contentKey: 32,
    /** HPKE-wrapped content key: 32 + 16-byte tag. */
    wrappedKey: 48,
    /** SHA-256 commitment to the content key. */
    commitment: 32,
    /** Recipients per envelope. */
    maxRecipients: 64,
  }),
} as const);

/** Envelope format versions this code reads; `seal()` writes the last one. */
export const ENVELOPE_VERSIONS = Object.freeze(['tidegate-env/1', 'tidegate-env/2'] as const);
/** One of {@link ENVELOPE_VERSIONS}. */
export type EnvelopeVersion = (typeof ENVELOPE_VERSIONS)[number];
