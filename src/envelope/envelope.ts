/**
 * Sealed, signed node-to-node envelopes: the version-independent entry points.
 *
 * - `seal()` writes tidegate-env/2 (v2.ts: HPKE RFC 9180 base mode with X-Wing, multi-recipient,
 *   ML-DSA-65), the only format new messages use.
 * - `open()` / `peekHeader()` read tidegate-env/1 (v1.ts, old data) and tidegate-env/2, dispatching
 *   on the signed header's `v`; any other version, or a version outside the caller's allowlist, is
 *   refused with `ERR_UNSUPPORTED_ALGORITHM`.
 *
 * docs/envelope.md is the normative description of both formats.
 */
import { readOuter } from './common.ts';
import type { SealInput } from './common.ts';
import { EnvelopeError } from './errors.ts';
import type { NodePublicKeys, NodeSecretKeys } from './keys.ts';
import { ENVELOPE_VERSIONS } from './suite.ts';
import type { EnvelopeVersion } from './suite.ts';
import { openV1, parseV1 } from './v1.ts';
import type { EnvelopeHeader } from './v1.ts';
import { openV2, parseV2, sealV2, verifyV2 } from './v2.ts';
import type { EnvelopeHeaderV2, OpenedHeaderV2 } from './v2.ts';

export type { SealInput, SealRandom } from './common.ts';
export type { EnvelopeHeader } from './v1.ts';
export { sealV1, signatureInput } from './v1.ts';
export type { EnvelopeHeaderV2, OpenedHeaderV2, RecipientId } from './v2.ts';
export { contentKeyCommitment, signatureInputV2 } from './v2.ts';

/** Result of {@link open}: the verified header and the plaintext. */
export interface OpenResult {
  /**
   * The verified header. Both versions carry `v`, `sender`, `senderKid`, `recipient` (this node),
   * `recipientKid` (the key that decrypted), `messageId`, `kind`, `resources`, `createdAt`; v2 adds
   * `recipients` (every addressee) and the v2 algorithm ids.
   */
  header: EnvelopeHeader | OpenedHeaderV2;
  plaintext: Uint8Array;
}

/** Options of {@link open} and {@link verifySignature}. */
export interface OpenOptions {
  /**
   * Versions accepted, an allowlist like jose's `algorithms` option. Default: all of
   * `ENVELOPE_VERSIONS` (tidegate-env/1 and tidegate-env/2). Set `['tidegate-env/2']` once every
   * peer seals v2, so that v1 is refused (docs/envelope.md §13, no downgrade).
   */
  versions?: readonly EnvelopeVersion[];
}

function checkVersion(v: string, options: OpenOptions): EnvelopeVersion {
  const allowed = options.versions ?? ENVELOPE_VERSIONS;
  if (!(ENVELOPE_VERSIONS as readonly string[]).includes(v) || !allowed.includes(v as EnvelopeVersion)) {
    throw new EnvelopeError('ERR_UNSUPPORTED_ALGORITHM', `Unsupported envelope version "${v}" (accepted: ${allowed.join(', ')})`);
  }
  return v as EnvelopeVersion;
}

/**
 * Seals `input.plaintext` for one or several recipients and signs it as `sender`, in the current
 * format tidegate-env/2 (docs/envelope.md §11): one random 256-bit content key, AES-256-GCM, the key
 * wrapped per recipient with HPKE base mode (X-Wing / HKDF-SHA256 / AES-256-GCM, RFC 9180 +
 * draft-ietf-hpke-pq-05), ML-DSA-65 signature (FIPS 204) over header, recipient entries and ciphertext.
 *
 * @param input - kind, messageId, resources (`Type/id` or `Type/id/_history/vid`), plaintext (≤ 45 MiB), createdAt (ms).
 * @param sender - This node's secret keys.
 * @param recipient - One recipient's public keys, or an array of 1..64 (distinct node ids).
 * @returns The serialized envelope, ASCII JSON.
 * @throws `TypeError` for invalid input or keys; never an {@link EnvelopeError}.
 */
export function seal(input: SealInput, sender: NodeSecretKeys, recipient: NodePublicKeys | readonly NodePublicKeys[]): string {
  return sealV2(input, sender, Array.isArray(recipient) ? recipient : [recipient as NodePublicKeys]);
}

/**
 * Verifies and decrypts an envelope addressed to this node, tidegate-env/1 or /2.
 *
 * Order of checks (first failure wins; docs/envelope.md §5 for v1, §12 for v2): length ≤ 64 MiB
 * (`ERR_ENVELOPE_TOO_LARGE`); outer JSON with a `protected` header whose `v` is a string
 * (`ERR_ENVELOPE_MALFORMED`); `v` known and allowed (`ERR_UNSUPPORTED_ALGORITHM`); the version's
 * exact members and forms (`ERR_ENVELOPE_MALFORMED`) and algorithm ids (`ERR_UNSUPPORTED_ALGORITHM`);
 * known sender key (`ERR_UNKNOWN_PEER`); ML-DSA-65 signature (`ERR_SIGNATURE_INVALID`); addressed to
 * one of this node's non-retired X-Wing keys (`ERR_NOT_FOR_THIS_NODE`); decryption (`ERR_DECRYPT_FAILED`).
 * No replay check here: feed the header to a `ReplayGuard`.
 *
 * @param serialized - The envelope string.
 * @param self - This node's secret keys.
 * @param peers - Known peers' public keys by node id.
 * @param options - `versions` allowlist (default both).
 * @returns The verified header and the plaintext bytes.
 * @throws {@link EnvelopeError} with the codes above.
 */
export function open(serialized: string, self: NodeSecretKeys, peers: ReadonlyMap<string, NodePublicKeys>, options: OpenOptions = {}): OpenResult {
  const stage1 = readOuter(serialized);
  const v = checkVersion(stage1.v, options);
  return v === 'tidegate-env/1' ? openV1(parseV1(stage1), self, peers) : openV2(parseV2(stage1), self, peers);
}

/**
 * Verifies a tidegate-env/2 envelope's signature without decrypting it, as a relay (an exchange's
 * Redis forwarder, an auditor) that holds no recipient key can: parse, known sender key, ML-DSA-65.
 * tidegate-env/1 envelopes are refused here (`ERR_UNSUPPORTED_ALGORITHM`): use {@link open}.
 *
 * @param serialized - The envelope string.
 * @param peers - Known senders' public keys by node id.
 * @returns The verified header.
 * @throws {@link EnvelopeError} `ERR_ENVELOPE_TOO_LARGE`, `ERR_ENVELOPE_MALFORMED`, `ERR_UNSUPPORTED_ALGORITHM`,
 *   `ERR_UNKNOWN_PEER`, `ERR_SIGNATURE_INVALID`.
 */
export function verifySignature(serialized: string, peers: ReadonlyMap<string, NodePublicKeys>): EnvelopeHeaderV2 {
  const stage1 = readOuter(serialized);
  checkVersion(stage1.v, { versions: ['tidegate-env/2'] });
  const parsed = parseV2(stage1);
  verifyV2(parsed, peers);
  return parsed.header;
}

/**
 * Parses an envelope (either version) and returns its header WITHOUT verifying the signature or
 * decrypting. The result is attacker-controlled: use it only for logs, metrics and routing, never
 * for authorization. Same strict parsing as {@link open}.
 *
 * @param serialized - An envelope string.
 * @returns A fresh copy of the header (createdAt in ms since epoch).
 * @throws {@link EnvelopeError} `ERR_ENVELOPE_TOO_LARGE`, `ERR_ENVELOPE_MALFORMED` or `ERR_UNSUPPORTED_ALGORITHM`.
 */
export function peekHeader(serialized: string): EnvelopeHeader | EnvelopeHeaderV2 {
  const stage1 = readOuter(serialized);
  const v = checkVersion(stage1.v, {});
  return v === 'tidegate-env/1' ? parseV1(stage1).header : parseV2(stage1).header;
}
