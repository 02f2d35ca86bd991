/**
 * tidegate-env/1 (read for old data; new messages are tidegate-env/2, see v2.ts): a
 * single-recipient, sender-signed, post-quantum hybrid envelope.
 *
 *   X-Wing KEM (draft-connolly-cfrg-xwing-kem; ML-KEM-768 per FIPS 203 + X25519)
 *   → HKDF-SHA256 (RFC 5869) → AES-256-GCM (NIST SP 800-38D), AAD = canonical header
 *   → ML-DSA-65 signature (FIPS 204) over header, KEM ciphertext, nonce and ciphertext.
 *
 * The serialization borrows from the JWE/JWS flattened JSON serializations (RFC 7516 §7.2.2,
 * RFC 7515 §7.2.2): base64url `protected` header plus base64url binary members. It is NOT JOSE:
 * no JOSE library can read it. See docs/envelope.md for the normative description.
 */
import { gcm } from '@noble/ciphers/aes.js';
import { hkdf } from '@noble/hashes/hkdf.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { randomBytes } from '@noble/hashes/utils.js';
import { ml_dsa65 } from '@noble/post-quantum/ml-dsa.js';
import { ml_kem768_x25519 } from '@noble/post-quantum/hybrid.js';
import { decodeMember, KIND_RE, labeledFields, malformed, MAX_RESOURCES, MESSAGE_ID_RE, peerSigKey, RESOURCE_RE, selectKemKey } from './common.ts';
import type { OuterEnvelope, SealInput, SealRandom } from './common.ts';
import { EnvelopeError } from './errors.ts';
import { keyIdOf } from './keys.ts';
import type { NodePublicKeys, NodeSecretKeys } from './keys.ts';
import { b64uEncode, hasExactKeys, KEY_ID_RE, NODE_ID_RE, SUITE, utf8 } from './suite.ts';

/** The authenticated (signed, and used as AAD) envelope header. */
export interface EnvelopeHeader {
  /** Format version. */
  v: 'tidegate-env/1';
  kem: 'X-Wing';
  kdf: 'HKDF-SHA256';
  aead: 'A256GCM';
  sig: 'ML-DSA-65';
  /** Sender node id. */
  sender: string;
  /** Kid of the sender's ML-DSA-65 public key. */
  senderKid: string;
  /** Recipient node id. */
  recipient: string;
  /** Kid of the recipient's X-Wing public key the envelope was encapsulated to. */
  recipientKid: string;
  /** Sender-chosen unique id, `^[A-Za-z0-9._:-]{1,128}$` (e.g. a UUID); for dedupe/replay checks. */
  messageId: string;
  /** Application message kind, `^[A-Za-z0-9._:/-]{1,64}$`. */
  kind: string;
  /** FHIR `Type/id` keys the payload concerns, in sender order, at most 10 000. */
  resources: string[];
  /** Creation time, integer milliseconds since the Unix epoch (sender's clock, not verified). */
  createdAt: number;
}

const HEADER_KEYS = [
  'aead', 'createdAt', 'kdf', 'kem', 'kind', 'messageId', 'recipient', 'recipientKid', 'resources',
  'sender', 'senderKid', 'sig', 'v',
] as const;
const ENVELOPE_KEYS = ['protected', 'ek', 'iv', 'ct', 'sig'] as const;

const KDF_INFO = utf8(SUITE.kdfInfo);
const SIG_CONTEXT = utf8(SUITE.sigContext);
const SIG_LABEL = utf8(SUITE.sigLabel);

/**
 * Canonical header bytes: UTF-8 of compact JSON with member names sorted by code unit, which for
 * this ASCII-only header coincides with RFC 8785 (JCS).
 */
function canonicalHeaderBytes(h: EnvelopeHeader): Uint8Array {
  const parts = [...HEADER_KEYS].sort().map((k) => `${JSON.stringify(k)}:${JSON.stringify(h[k])}`);
  return utf8(`{${parts.join(',')}}`);
}

/**
 * Builds the byte string the sender signs (ML-DSA-65 message `M`, FIPS 204 §5.2, with
 * `ctx` = "tidegate-env/1"):
 *
 *   "tidegate-env/1 signature" || 0x00 || LP(protected) || LP(ek) || LP(iv) || LP(ct)
 *
 * where LP(x) = 8-byte big-endian length of x || x, and every argument is the decoded byte string.
 * Exposed for interop tests and independent implementations.
 *
 * @param protectedHeader - Canonical header bytes (the decoded `protected` member).
 * @param ek - X-Wing ciphertext, 1120 bytes.
 * @param iv - GCM nonce, 12 bytes.
 * @param ct - GCM ciphertext with the 16-byte tag appended.
 * @returns The signature input bytes.
 */
export function signatureInput(protectedHeader: Uint8Array, ek: Uint8Array, iv: Uint8Array, ct: Uint8Array): Uint8Array {
  return labeledFields(SIG_LABEL, [protectedHeader, ek, iv, ct]);
}

function deriveContentKey(sharedSecret: Uint8Array): Uint8Array {
  // salt absent = 32 zero bytes (RFC 5869 §2.2); X-Wing's shared secret already binds its ciphertext
  // and the recipient public key (draft-connolly-cfrg-xwing-kem combiner), so salt adds nothing.
  return hkdf(sha256, sharedSecret, undefined, KDF_INFO, SUITE.lengths.contentKey);
}

function checkSealInput(input: SealInput, sender: NodeSecretKeys, recipient: NodePublicKeys): EnvelopeHeader {
  const fail = (msg: string): never => {
    throw new TypeError(`seal: ${msg}`);
  };
  if (typeof input.kind !== 'string' || !KIND_RE.test(input.kind)) fail(`kind must match ${KIND_RE.source}`);
  if (typeof input.messageId !== 'string' || !MESSAGE_ID_RE.test(input.messageId)) {
    fail(`messageId must match ${MESSAGE_ID_RE.source}`);
  }
  if (!Array.isArray(input.resources) || input.resources.length > MAX_RESOURCES) {
    fail(`resources must be an array of at most ${MAX_RESOURCES} entries`);
  }
  for (const r of input.resources) {
    if (typeof r !== 'string' || !RESOURCE_RE.test(r)) fail('each resource must be a FHIR "Type/id" key');
  }
  if (!(input.plaintext instanceof Uint8Array)) fail('plaintext must be a Uint8Array');
  if (input.plaintext.length > SUITE.lengths.maxPlaintext) fail(`plaintext must be at most ${SUITE.lengths.maxPlaintext} bytes`);
  const createdAt = input.createdAt ?? Date.now();
  if (!Number.isSafeInteger(createdAt) || createdAt < 0) fail('createdAt must be a non-negative integer (ms)');
  if (!NODE_ID_RE.test(sender.nodeId) || !KEY_ID_RE.test(sender.sigKeyId)) fail('invalid sender nodeId / sigKeyId');
  if (!(sender.sigSecretKey instanceof Uint8Array) || sender.sigSecretKey.length !== SUITE.lengths.sigSecretKey) {
    fail(`sender.sigSecretKey must be ${SUITE.lengths.sigSecretKey} bytes`);
  }
  if (!NODE_ID_RE.test(recipient.nodeId)) fail('invalid recipient nodeId');
  if (!(recipient.kemPublicKey instanceof Uint8Array) || recipient.kemPublicKey.length !== SUITE.lengths.kemPublicKey) {
    fail(`recipient.kemPublicKey must be ${SUITE.lengths.kemPublicKey} bytes`);
  }
  if (recipient.kemKeyId !== keyIdOf(recipient.kemPublicKey)) fail('recipient.kemKeyId does not match recipient.kemPublicKey');
  return {
    v: SUITE.v,
    kem: SUITE.kem,
    kdf: SUITE.kdf,
    aead: SUITE.aead,
    sig: SUITE.sig,
    sender: sender.nodeId,
    senderKid: sender.sigKeyId,
    recipient: recipient.nodeId,
    recipientKid: recipient.kemKeyId,
    messageId: input.messageId,
    kind: input.kind,
    resources: [...input.resources],
    createdAt,
  };
}

/**
 * Seals `input.plaintext` for one recipient and signs it as `sender` in the OLD format tidegate-env/1.
 * New messages use `seal()` (tidegate-env/2); this exists to produce old data for tests and migration.
 *
 * 1. (ek, ss) = X-Wing.Encaps(recipient.kemPublicKey) — draft-connolly-cfrg-xwing-kem (ML-KEM-768, FIPS 203);
 *    ek 1120 bytes, ss 32 bytes.
 * 2. key = HKDF-SHA256(ikm = ss, salt = absent (32 zero bytes), info = "tidegate-env/1 A256GCM", L = 32) — RFC 5869.
 * 3. iv = 12 random bytes (CSPRNG); ct = AES-256-GCM(key, iv, AAD = canonical header bytes) with the
 *    16-byte tag appended — NIST SP 800-38D.
 * 4. sig = ML-DSA-65.Sign(sender.sigSecretKey, {@link signatureInput}(header, ek, iv, ct),
 *    ctx = "tidegate-env/1"), hedged with 32 fresh random bytes `rnd` — FIPS 204; 3309 bytes.
 * 5. Output compact JSON `{"protected","ek","iv","ct","sig"}`, each unpadded base64url
 *    (RFC 4648 §5), in the style of the RFC 7516 / RFC 7515 flattened JSON serializations.
 *
 * `ss` and `key` are zeroed in `finally` (best effort: JS gives no guarantee about other copies).
 *
 * @param input - kind, messageId, resources (`Type/id`), plaintext bytes, createdAt (ms since epoch, default now).
 * @param sender - This node's secret keys (only nodeId, sigKeyId and sigSecretKey are used).
 * @param recipient - The recipient's public keys (nodeId, kemKeyId, kemPublicKey are used).
 * @returns The serialized envelope: ASCII JSON text of about 4/3 × (plaintext bytes + ~4.8 KB) characters
 *   (ek 1120 + iv 12 + tag 16 + sig 3309 bytes + header).
 * @throws `TypeError` when the input or keys are invalid (bad kind/messageId/resources pattern,
 *   wrong key lengths, recipient kid not matching its key, plaintext over 45 MiB). Never an {@link EnvelopeError}.
 */
export function sealV1(input: SealInput, sender: NodeSecretKeys, recipient: NodePublicKeys): string {
  return sealInternal(input, sender, recipient, randomBytes);
}

/**
 * {@link sealV1} with caller-supplied randomness, for known-answer test vectors ONLY
 * (test/vectors/tidegate-env-1-kat.json). Not re-exported from `src/envelope/index.ts` and not
 * reachable through the worker pool, so production code cannot call it by accident.
 *
 * `random(n)` is called exactly three times, in this order:
 * 1. n = 64: X-Wing `eseed` for EncapsulateDerand (draft-connolly-cfrg-xwing-kem §5.4.1);
 * 2. n = 12: the AES-256-GCM nonce (NIST SP 800-38D);
 * 3. n = 32: ML-DSA-65 `rnd` (FIPS 204 Algorithm 2; all zeros = the deterministic variant).
 *
 * Reusing any of these values across two envelopes breaks confidentiality (GCM nonce reuse under
 * the same key is only avoided because `eseed` changes the key) — never use fixed values for real data.
 *
 * @param input - As for {@link seal}.
 * @param sender - As for {@link seal}.
 * @param recipient - As for {@link seal}.
 * @param random - Randomness source (see above); each result must have exactly the requested length.
 * @returns The serialized envelope, byte-for-byte reproducible for equal inputs.
 * @throws `TypeError` as {@link seal}, and when `random` returns the wrong length.
 */
export function sealV1WithRandomness(input: SealInput, sender: NodeSecretKeys, recipient: NodePublicKeys, random: SealRandom): string {
  if (typeof random !== 'function') throw new TypeError('sealWithRandomness: random must be a function');
  const checked: SealRandom = (n) => {
    const out = random(n);
    if (!(out instanceof Uint8Array) || out.length !== n) throw new TypeError(`sealWithRandomness: random(${n}) must return ${n} bytes`);
    return Uint8Array.from(out);
  };
  return sealInternal(input, sender, recipient, checked);
}

function sealInternal(input: SealInput, sender: NodeSecretKeys, recipient: NodePublicKeys, random: SealRandom): string {
  const header = checkSealInput(input, sender, recipient);
  const protectedBytes = canonicalHeaderBytes(header);
  const L = SUITE.lengths;
  let sharedSecret: Uint8Array | undefined;
  let key: Uint8Array | undefined;
  let eseed: Uint8Array | undefined;
  try {
    eseed = random(L.kemEncapsSeed);
    const enc = ml_kem768_x25519.encapsulate(recipient.kemPublicKey, eseed);
    sharedSecret = enc.sharedSecret;
    const ek = enc.cipherText;
    key = deriveContentKey(sharedSecret);
    const iv = random(L.nonce);
    const ct = gcm(key, iv, protectedBytes).encrypt(input.plaintext);
    const rnd = random(L.signRandomness);
    const sig = ml_dsa65.sign(signatureInput(protectedBytes, ek, iv, ct), sender.sigSecretKey, { context: SIG_CONTEXT, extraEntropy: rnd });
    rnd.fill(0);
    const out = JSON.stringify({
      protected: b64uEncode(protectedBytes),
      ek: b64uEncode(ek),
      iv: b64uEncode(iv),
      ct: b64uEncode(ct),
      sig: b64uEncode(sig),
    });
    if (out.length > L.maxEnvelopeChars) throw new TypeError(`seal: envelope would exceed ${L.maxEnvelopeChars} characters`);
    return out;
  } finally {
    eseed?.fill(0);
    sharedSecret?.fill(0);
    key?.fill(0);
  }
}

/** A parsed (not yet verified) tidegate-env/1 envelope. */
export interface ParsedEnvelope {
  header: EnvelopeHeader;
  protectedBytes: Uint8Array;
  ek: Uint8Array;
  iv: Uint8Array;
  ct: Uint8Array;
  sig: Uint8Array;
}

function checkHeaderSchema(h: Record<string, unknown>): EnvelopeHeader {
  for (const k of ['kem', 'kdf', 'aead', 'sig', 'sender', 'senderKid', 'recipient', 'recipientKid', 'messageId', 'kind']) {
    if (typeof h[k] !== 'string') malformed(`header "${k}" must be a string`);
  }
  const str = (k: string): string => h[k] as string;
  if (!NODE_ID_RE.test(str('sender'))) malformed('header "sender" is not a node id');
  if (!NODE_ID_RE.test(str('recipient'))) malformed('header "recipient" is not a node id');
  if (!KEY_ID_RE.test(str('senderKid'))) malformed('header "senderKid" is not a key id');
  if (!KEY_ID_RE.test(str('recipientKid'))) malformed('header "recipientKid" is not a key id');
  if (!MESSAGE_ID_RE.test(str('messageId'))) malformed('header "messageId" has an invalid form');
  if (!KIND_RE.test(str('kind'))) malformed('header "kind" has an invalid form');
  const resources = h['resources'];
  if (!Array.isArray(resources) || resources.length > MAX_RESOURCES) {
    malformed(`header "resources" must be an array of at most ${MAX_RESOURCES} entries`);
  }
  for (const r of resources as unknown[]) {
    if (typeof r !== 'string' || !RESOURCE_RE.test(r)) malformed('header "resources" entries must be "Type/id"');
  }
  const createdAt = h['createdAt'];
  if (typeof createdAt !== 'number' || !Number.isSafeInteger(createdAt) || createdAt < 0) {
    malformed('header "createdAt" must be a non-negative integer');
  }
  // Algorithm allowlist (after the schema, so the types are known to be strings).
  for (const k of ['kem', 'kdf', 'aead', 'sig'] as const) {
    if (h[k] !== SUITE[k]) {
      throw new EnvelopeError('ERR_UNSUPPORTED_ALGORITHM', `Unsupported ${k} "${str(k)}" for ${SUITE.v}`);
    }
  }
  return {
    v: SUITE.v,
    kem: SUITE.kem,
    kdf: SUITE.kdf,
    aead: SUITE.aead,
    sig: SUITE.sig,
    sender: str('sender'),
    senderKid: str('senderKid'),
    recipient: str('recipient'),
    recipientKid: str('recipientKid'),
    messageId: str('messageId'),
    kind: str('kind'),
    resources: [...(resources as string[])],
    createdAt: createdAt as number,
  };
}

/**
 * Stage 2 of parsing a tidegate-env/1 envelope (after {@link readOuter} read `v` = "tidegate-env/1"):
 * exact outer members, header fields and forms, algorithm ids, canonical header, binary lengths.
 * @throws {@link EnvelopeError} `ERR_ENVELOPE_MALFORMED` or `ERR_UNSUPPORTED_ALGORITHM`.
 */
export function parseV1(stage1: OuterEnvelope): ParsedEnvelope {
  const { outer, protectedBytes, header: h } = stage1;
  if (!hasExactKeys(outer, ENVELOPE_KEYS)) malformed(`expected exactly the members ${ENVELOPE_KEYS.join(', ')}`);
  for (const k of ENVELOPE_KEYS) {
    if (typeof outer[k] !== 'string') malformed(`"${k}" must be a string`);
  }
  if (h['v'] !== SUITE.v) throw new EnvelopeError('ERR_UNSUPPORTED_ALGORITHM', `Unsupported envelope version "${String(h['v'])}"`);
  if (!hasExactKeys(h, HEADER_KEYS)) malformed(`header must have exactly the fields ${HEADER_KEYS.join(', ')}`);
  const header = checkHeaderSchema(h);
  // One byte string per header: reject whitespace, key reordering, escapes, duplicate names, etc.
  if (Buffer.compare(canonicalHeaderBytes(header), protectedBytes) !== 0) malformed('protected header is not canonical');

  const ek = decodeMember(outer, 'ek');
  const iv = decodeMember(outer, 'iv');
  const ct = decodeMember(outer, 'ct');
  const sig = decodeMember(outer, 'sig');
  const L = SUITE.lengths;
  if (ek.length !== L.kemCipherText) malformed(`"ek" must be ${L.kemCipherText} bytes`);
  if (iv.length !== L.nonce) malformed(`"iv" must be ${L.nonce} bytes`);
  if (ct.length < L.tag) malformed(`"ct" must be at least ${L.tag} bytes`);
  if (sig.length !== L.signature) malformed(`"sig" must be ${L.signature} bytes`);
  return { header, protectedBytes, ek, iv, ct, sig };
}

/**
 * Verifies and decrypts a parsed tidegate-env/1 envelope addressed to this node (use `open()`,
 * which parses and dispatches on the version).
 *
 * Checks, in this order (first failure wins):
 * 0. length ≤ 64 MiB (`SUITE.lengths.maxEnvelopeChars`), before any parsing → `ERR_ENVELOPE_TOO_LARGE`;
 * 1. strict parse: JSON object with exactly `protected`, `ek`, `iv`, `ct`, `sig` (strings, canonical
 *    unpadded base64url, RFC 4648 §5); header is canonical JSON with exactly the tidegate-env/1 fields;
 *    ek 1120, iv 12, sig 3309 bytes, ct ≥ 16 bytes → `ERR_ENVELOPE_MALFORMED`
 *    (a header `v` other than "tidegate-env/1" → `ERR_UNSUPPORTED_ALGORITHM`, checked before the field set);
 * 2. `kem`/`kdf`/`aead`/`sig` ids in the allowlist → `ERR_UNSUPPORTED_ALGORITHM`;
 * 3. `peers.get(sender)` exists, its nodeId equals `sender`, and `senderKid` is its `sigKeyId` or
 *    the kid of one of its `additionalSigKeys` → `ERR_UNKNOWN_PEER`;
 * 4. ML-DSA-65 verify (FIPS 204, ctx "tidegate-env/1") of {@link signatureInput} → `ERR_SIGNATURE_INVALID`;
 * 5. `recipient` === self.nodeId and `recipientKid` is `self.kemKeyId` or the kid of one of
 *    `self.additionalKemKeys` (still-decrypting previous keys) → `ERR_NOT_FOR_THIS_NODE`
 *    (X-Wing/ML-KEM decapsulation never fails — implicit rejection returns an unrelated secret —
 *    so addressing is decided from the signed header ids);
 * 6. X-Wing decapsulation, HKDF-SHA256 (RFC 5869), AES-256-GCM decryption with AAD = protected
 *    header bytes (NIST SP 800-38D) → `ERR_DECRYPT_FAILED`.
 *
 * No replay or freshness check is made here: feed the returned header to a {@link ReplayGuard}.
 * Error messages never include plaintext. The decapsulated secret and content key are zeroed.
 *
 * @param parsed - The result of {@link parseV1}.
 * @param self - This node's secret keys.
 * @param peers - Known peers' public keys, keyed by nodeId.
 * @returns The verified header and the plaintext bytes.
 * @throws {@link EnvelopeError} with the codes above.
 */
export function openV1(parsed: ParsedEnvelope, self: NodeSecretKeys, peers: ReadonlyMap<string, NodePublicKeys>): { header: EnvelopeHeader; plaintext: Uint8Array } {
  const { header, protectedBytes, ek, iv, ct, sig } = parsed;

  const sigPublicKey = peerSigKey(peers, header.sender, header.senderKid);

  let valid = false;
  try {
    valid = ml_dsa65.verify(sig, signatureInput(protectedBytes, ek, iv, ct), sigPublicKey, { context: SIG_CONTEXT });
  } catch {
    valid = false;
  }
  if (!valid) {
    throw new EnvelopeError('ERR_SIGNATURE_INVALID', `Signature by "${header.sender}" does not verify (message ${header.messageId})`);
  }

  const kemSecretKey = header.recipient === self.nodeId ? selectKemKey(self, header.recipientKid) : undefined;
  if (kemSecretKey === undefined) {
    throw new EnvelopeError(
      'ERR_NOT_FOR_THIS_NODE',
      `Envelope ${header.messageId} is for "${header.recipient}" key ${header.recipientKid}, not one of "${self.nodeId}"'s keys`,
    );
  }

  let sharedSecret: Uint8Array | undefined;
  let key: Uint8Array | undefined;
  try {
    sharedSecret = ml_kem768_x25519.decapsulate(ek, kemSecretKey);
    key = deriveContentKey(sharedSecret);
    const plaintext = gcm(key, iv, protectedBytes).decrypt(ct);
    return { header, plaintext };
  } catch {
    throw new EnvelopeError('ERR_DECRYPT_FAILED', `Decryption of envelope ${header.messageId} failed`);
  } finally {
    sharedSecret?.fill(0);
    key?.fill(0);
  }
}
