/**
 * HPKE (RFC 9180) base mode, as tidegate-env/2 uses it to wrap content keys, with the X-Wing KEM
 * registered for HPKE by draft-ietf-hpke-pq-05 §4 / §8.2 (`MLKEM768-X25519`, KEM id 0x647a;
 * X-Wing itself is draft-connolly-cfrg-xwing-kem-10).
 *
 * Only what tidegate needs is implemented, written against RFC 9180 directly:
 * - `LabeledExtract` / `LabeledExpand` (RFC 9180 §4), KDF HKDF-SHA256 (KDF id 0x0001, RFC 5869);
 * - `KeySchedule` for `mode_base` (RFC 9180 §5.1, psk = psk_id = ""), `ComputeNonce` (§5.2),
 *   `Export` (§5.3);
 * - single-shot `SealBase` / `OpenBase` (RFC 9180 §6.1) for the suite
 *   X-Wing (0x647a) / HKDF-SHA256 (0x0001) / AES-256-GCM (0x0002).
 *
 * The key schedule and AEAD helpers also accept AES-128-GCM (0x0001) and ChaCha20Poly1305 (0x0003)
 * so that the published test vectors (RFC 9180 Appendix A.1, draft-ietf-hpke-pq-05 Appendix A.5)
 * can be checked; tidegate-env/2 itself only ever uses AES-256-GCM.
 */
import { gcm } from '@noble/ciphers/aes.js';
import { chacha20poly1305 } from '@noble/ciphers/chacha.js';
import { expand, extract } from '@noble/hashes/hkdf.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { ml_kem768_x25519 } from '@noble/post-quantum/hybrid.js';

/** `mode_base` (RFC 9180 §5 Table 1). */
export const HPKE_MODE_BASE = 0x00;
/** HPKE KEM id of X-Wing / `MLKEM768-X25519` (draft-ietf-hpke-pq-05 §8.2 Table 3). */
export const HPKE_KEM_XWING = 0x647a;
/** HPKE KDF id of HKDF-SHA256 (RFC 9180 §7.2 Table 3). */
export const HPKE_KDF_HKDF_SHA256 = 0x0001;
/** HPKE AEAD ids (RFC 9180 §7.3 Table 5). */
export const HPKE_AEAD_AES128GCM = 0x0001;
export const HPKE_AEAD_AES256GCM = 0x0002;
export const HPKE_AEAD_CHACHA20POLY1305 = 0x0003;

/** An HPKE ciphersuite: KEM, KDF and AEAD ids (RFC 9180 §5.1 `suite_id`). */
export interface HpkeSuite {
  kem: number;
  /** Only HKDF-SHA256 (0x0001) is implemented. */
  kdf: number;
  /** 0x0001 AES-128-GCM, 0x0002 AES-256-GCM, 0x0003 ChaCha20Poly1305. */
  aead: number;
}

/** The suite tidegate-env/2 uses to wrap content keys: X-Wing, HKDF-SHA256, AES-256-GCM. */
export const TIDEGATE_HPKE_SUITE: Readonly<HpkeSuite> = Object.freeze({
  kem: HPKE_KEM_XWING,
  kdf: HPKE_KDF_HKDF_SHA256,
  aead: HPKE_AEAD_AES256GCM,
});

/** Context values of the key schedule (RFC 9180 §5.1). */
export interface HpkeKeySchedule {
  /** AEAD key, `Nk` bytes (16 or 32). */
  key: Uint8Array;
  /** Base nonce, `Nn` = 12 bytes. */
  baseNonce: Uint8Array;
  /** Exporter secret, `Nh` = 32 bytes (HKDF-SHA256). */
  exporterSecret: Uint8Array;
}

const LABEL_V1 = new TextEncoder().encode('HPKE-v1');
const NH = 32; // HKDF-SHA256 output size
const NN = 12; // every AEAD here
const NT = 16;

function i2osp(n: number, w: number): Uint8Array {
  const out = new Uint8Array(w);
  let v = n;
  for (let i = w - 1; i >= 0; i--) {
    out[i] = v & 0xff;
    v = Math.floor(v / 256);
  }
  if (v !== 0) throw new RangeError(`I2OSP: ${n} does not fit in ${w} bytes`);
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function aeadKeyLength(aead: number): number {
  if (aead === HPKE_AEAD_AES128GCM) return 16;
  if (aead === HPKE_AEAD_AES256GCM || aead === HPKE_AEAD_CHACHA20POLY1305) return 32;
  throw new RangeError(`HPKE: unsupported AEAD id 0x${aead.toString(16)}`);
}

function checkKdf(suite: HpkeSuite): void {
  if (suite.kdf !== HPKE_KDF_HKDF_SHA256) throw new RangeError(`HPKE: unsupported KDF id 0x${suite.kdf.toString(16)} (only HKDF-SHA256)`);
}

/**
 * `suite_id = "HPKE" || I2OSP(kem_id, 2) || I2OSP(kdf_id, 2) || I2OSP(aead_id, 2)` (RFC 9180 §5.1).
 * @param suite - KEM, KDF, AEAD ids (each 0..65535).
 * @returns 10 bytes.
 * @throws `RangeError` for an id outside 0..65535.
 */
export function hpkeSuiteId(suite: HpkeSuite): Uint8Array {
  return concat(new TextEncoder().encode('HPKE'), i2osp(suite.kem, 2), i2osp(suite.kdf, 2), i2osp(suite.aead, 2));
}

/**
 * `LabeledExtract(salt, label, ikm) = Extract(salt, "HPKE-v1" || suite_id || label || ikm)` (RFC 9180 §4),
 * Extract = HKDF-Extract with SHA-256 (RFC 5869 §2.2; an empty salt equals HashLen zero bytes).
 * @param suiteId - 10-byte `suite_id` ({@link hpkeSuiteId}).
 * @param salt - Salt bytes (may be empty).
 * @param label - ASCII label, e.g. `psk_id_hash`.
 * @param ikm - Input keying material.
 * @returns 32-byte pseudorandom key.
 */
export function labeledExtract(suiteId: Uint8Array, salt: Uint8Array, label: string, ikm: Uint8Array): Uint8Array {
  return extract(sha256, concat(LABEL_V1, suiteId, new TextEncoder().encode(label), ikm), salt);
}

/**
 * `LabeledExpand(prk, label, info, L) = Expand(prk, I2OSP(L, 2) || "HPKE-v1" || suite_id || label || info, L)`
 * (RFC 9180 §4), Expand = HKDF-Expand with SHA-256 (RFC 5869 §2.3).
 * @param suiteId - 10-byte `suite_id`.
 * @param prk - 32-byte pseudorandom key.
 * @param label - ASCII label, e.g. `key`.
 * @param info - Context bytes.
 * @param length - Output bytes, 1..min(65535, 255 × 32).
 * @returns `length` bytes.
 * @throws `RangeError` for an impossible length.
 */
export function labeledExpand(suiteId: Uint8Array, prk: Uint8Array, label: string, info: Uint8Array, length: number): Uint8Array {
  if (!Number.isSafeInteger(length) || length < 1 || length > 255 * NH) throw new RangeError(`LabeledExpand: bad length ${length}`);
  const labeledInfo = concat(i2osp(length, 2), LABEL_V1, suiteId, new TextEncoder().encode(label), info);
  return expand(sha256, prk, labeledInfo, length);
}

/**
 * `KeySchedule(mode_base, shared_secret, info, psk = "", psk_id = "")` (RFC 9180 §5.1): returns the
 * AEAD key, base nonce and exporter secret of the encryption context.
 *
 * @param suite - Ciphersuite ids; the KDF must be HKDF-SHA256.
 * @param sharedSecret - KEM shared secret (`Nsecret` bytes, 32 for X-Wing).
 * @param info - Application info string.
 * @returns key (`Nk` bytes), baseNonce (12 bytes), exporterSecret (32 bytes).
 * @throws `RangeError` for an unsupported KDF or AEAD id.
 */
export function keyScheduleBase(suite: HpkeSuite, sharedSecret: Uint8Array, info: Uint8Array): HpkeKeySchedule {
  checkKdf(suite);
  const nk = aeadKeyLength(suite.aead);
  const sid = hpkeSuiteId(suite);
  const empty = new Uint8Array(0);
  const pskIdHash = labeledExtract(sid, empty, 'psk_id_hash', empty);
  const infoHash = labeledExtract(sid, empty, 'info_hash', info);
  const context = concat(Uint8Array.of(HPKE_MODE_BASE), pskIdHash, infoHash);
  const secret = labeledExtract(sid, sharedSecret, 'secret', empty);
  try {
    return {
      key: labeledExpand(sid, secret, 'key', context, nk),
      baseNonce: labeledExpand(sid, secret, 'base_nonce', context, NN),
      exporterSecret: labeledExpand(sid, secret, 'exp', context, NH),
    };
  } finally {
    secret.fill(0);
  }
}

/**
 * `ComputeNonce(seq) = base_nonce XOR I2OSP(seq, Nn)` (RFC 9180 §5.2).
 * @param baseNonce - 12 bytes.
 * @param seq - Sequence number, 0 ≤ seq ≤ 2^53 − 1.
 * @returns 12-byte nonce.
 */
export function computeNonce(baseNonce: Uint8Array, seq: number): Uint8Array {
  const s = i2osp(seq, NN);
  return baseNonce.map((b, i) => b ^ (s[i] as number));
}

/**
 * `Context.Export(exporter_context, L) = LabeledExpand(exporter_secret, "sec", exporter_context, L)` (RFC 9180 §5.3).
 * @param suite - Ciphersuite ids.
 * @param exporterSecret - 32 bytes from {@link keyScheduleBase}.
 * @param exporterContext - Context bytes.
 * @param length - Output bytes.
 * @returns `length` bytes.
 */
export function hpkeExport(suite: HpkeSuite, exporterSecret: Uint8Array, exporterContext: Uint8Array, length: number): Uint8Array {
  checkKdf(suite);
  return labeledExpand(hpkeSuiteId(suite), exporterSecret, 'sec', exporterContext, length);
}

/**
 * AEAD `Seal(key, nonce, aad, pt)` of the suite (RFC 9180 §5.2): ciphertext with the 16-byte tag appended.
 * @param aead - 0x0001 AES-128-GCM, 0x0002 AES-256-GCM (NIST SP 800-38D), 0x0003 ChaCha20Poly1305 (RFC 8439).
 * @param key - `Nk` bytes.
 * @param nonce - 12 bytes.
 * @param aad - Associated data.
 * @param pt - Plaintext.
 * @returns `pt.length + 16` bytes.
 * @throws `RangeError` for an unsupported id; noble's error for bad key/nonce lengths.
 */
export function aeadSeal(aead: number, key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, pt: Uint8Array): Uint8Array {
  aeadKeyLength(aead);
  return aead === HPKE_AEAD_CHACHA20POLY1305 ? chacha20poly1305(key, nonce, aad).encrypt(pt) : gcm(key, nonce, aad).encrypt(pt);
}

/**
 * AEAD `Open(key, nonce, aad, ct)` (RFC 9180 §5.2).
 * @returns The plaintext (`ct.length − 16` bytes).
 * @throws `Error` when authentication fails (RFC 9180 `OpenError`); `RangeError` for an unsupported id.
 */
export function aeadOpen(aead: number, key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, ct: Uint8Array): Uint8Array {
  aeadKeyLength(aead);
  if (ct.length < NT) throw new Error('HPKE OpenError: ciphertext shorter than the tag');
  return aead === HPKE_AEAD_CHACHA20POLY1305 ? chacha20poly1305(key, nonce, aad).decrypt(ct) : gcm(key, nonce, aad).decrypt(ct);
}

/**
 * Single-shot `SealBase(pkR, info, aad, pt)` (RFC 9180 §6.1) with the suite X-Wing (0x647a) /
 * HKDF-SHA256 / AES-256-GCM: `(enc, ss) = X-Wing.Encapsulate(pkR)` (draft-connolly-cfrg-xwing-kem-10
 * §5.4; with `eseed`, EncapsulateDerand), key schedule in base mode, then AEAD Seal with sequence
 * number 0 (nonce = base_nonce). The shared secret and the context are zeroed afterwards.
 *
 * @param pkR - Recipient X-Wing encapsulation key, 1216 bytes.
 * @param info - Application info.
 * @param aad - Associated data.
 * @param pt - Plaintext.
 * @param eseed - Optional 64-byte encapsulation randomness (test vectors only); default CSPRNG.
 * @returns `enc` (1120 bytes) and `ct` (`pt.length + 16` bytes).
 * @throws noble's `Error` for a malformed public key or seed length.
 */
export function sealBase(pkR: Uint8Array, info: Uint8Array, aad: Uint8Array, pt: Uint8Array, eseed?: Uint8Array): { enc: Uint8Array; ct: Uint8Array } {
  const { cipherText: enc, sharedSecret } = ml_kem768_x25519.encapsulate(pkR, eseed);
  let ks: HpkeKeySchedule | undefined;
  try {
    ks = keyScheduleBase(TIDEGATE_HPKE_SUITE, sharedSecret, info);
    return { enc, ct: aeadSeal(TIDEGATE_HPKE_SUITE.aead, ks.key, ks.baseNonce, aad, pt) };
  } finally {
    sharedSecret.fill(0);
    ks?.key.fill(0);
    ks?.exporterSecret.fill(0);
  }
}

/**
 * Single-shot `OpenBase(enc, skR, info, aad, ct)` (RFC 9180 §6.1), suite X-Wing / HKDF-SHA256 / AES-256-GCM.
 * X-Wing decapsulation never fails (implicit rejection), so a wrong key or a changed `enc`
 * surfaces as an AEAD authentication failure.
 *
 * @param enc - X-Wing ciphertext, 1120 bytes.
 * @param skR - Recipient X-Wing decapsulation key (32-byte seed).
 * @param info - Application info (must equal the sender's).
 * @param aad - Associated data (must equal the sender's).
 * @param ct - AEAD ciphertext with tag.
 * @returns The plaintext.
 * @throws `Error` when authentication fails or an input has the wrong length.
 */
export function openBase(enc: Uint8Array, skR: Uint8Array, info: Uint8Array, aad: Uint8Array, ct: Uint8Array): Uint8Array {
  const sharedSecret = ml_kem768_x25519.decapsulate(enc, skR);
  let ks: HpkeKeySchedule | undefined;
  try {
    ks = keyScheduleBase(TIDEGATE_HPKE_SUITE, sharedSecret, info);
    return aeadOpen(TIDEGATE_HPKE_SUITE.aead, ks.key, ks.baseNonce, aad, ct);
  } finally {
    sharedSecret.fill(0);
    ks?.key.fill(0);
    ks?.exporterSecret.fill(0);
  }
}
