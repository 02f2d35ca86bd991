/**
 * Errors raised by the tidegate-env/1 envelope and its key files.
 *
 * Every error carries a stable `code` that callers (gossip workers, metrics, logs) may switch on;
 * messages are for humans and may change. No error message ever contains plaintext, key material
 * or the raw serialized envelope.
 */

/** Stable codes of {@link EnvelopeError}, in the order `open()` checks them. */
export const ENVELOPE_ERROR_CODES = Object.freeze([
  'ERR_ENVELOPE_TOO_LARGE',
  'ERR_ENVELOPE_MALFORMED',
  'ERR_UNSUPPORTED_ALGORITHM',
  'ERR_UNKNOWN_PEER',
  'ERR_SIGNATURE_INVALID',
  'ERR_NOT_FOR_THIS_NODE',
  'ERR_DECRYPT_FAILED',
  // Raised by ReplayGuard (src/envelope/replay.ts), after a successful open():
  'ERR_REPLAY',
  'ERR_STALE',
] as const);

/** One of {@link ENVELOPE_ERROR_CODES}. */
export type EnvelopeErrorCode = (typeof ENVELOPE_ERROR_CODES)[number];

/**
 * Raised when an envelope cannot be parsed, verified, routed or decrypted.
 *
 * - `ERR_ENVELOPE_TOO_LARGE`: the serialized envelope is longer than `SUITE.lengths.maxEnvelopeChars`
 *   (64 MiB); rejected before any parsing.
 * - `ERR_ENVELOPE_MALFORMED`: not the tidegate-env/1 serialization (bad JSON, missing/extra/non-string
 *   fields, bad base64url, wrong lengths, non-canonical header).
 * - `ERR_UNSUPPORTED_ALGORITHM`: header `v`, `kem`, `kdf`, `aead` or `sig` outside the allowlist.
 * - `ERR_UNKNOWN_PEER`: `sender` is not a configured peer, or `senderKid` is not that peer's key id.
 * - `ERR_SIGNATURE_INVALID`: the ML-DSA-65 signature does not verify.
 * - `ERR_NOT_FOR_THIS_NODE`: `recipient` / `recipientKid` do not name one of this node's (non-retired) KEM keys.
 * - `ERR_DECRYPT_FAILED`: the signed envelope was addressed to us, but AES-GCM authentication failed.
 * - `ERR_REPLAY` ({@link ReplayGuard}): this `(sender, messageId)` was already accepted.
 * - `ERR_STALE` ({@link ReplayGuard}): `createdAt` is outside the replay window (older than the TTL,
 *   at or below the sender's eviction floor, or too far in the future), so a replay cannot be ruled out.
 */
export class EnvelopeError extends Error {
  /** Stable machine-readable code. */
  readonly code: EnvelopeErrorCode;
  override readonly name = 'EnvelopeError';

  /**
   * @param code - Stable error code.
   * @param message - Human-readable description; must never contain plaintext or key bytes.
   */
  constructor(code: EnvelopeErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

/**
 * Raised when key material (a key file, or public keys embedded in config) is invalid:
 * bad JSON shape, bad base64url, wrong lengths, a key id that does not match its key,
 * or a secret key whose derived public key does not match the stored key id. `code` is stable.
 */
export class KeyFileError extends Error {
  readonly code = 'ERR_KEY_INVALID';
  override readonly name = 'KeyFileError';
}
