/**
 * tidegate-env/2: a multi-recipient, sender-signed, post-quantum hybrid envelope (docs/envelope.md §11–§14).
 *
 * - One random 256-bit content key (CEK) per message; payload = AES-256-GCM(CEK, iv, AAD = header)
 *   (NIST SP 800-38D, `@noble/ciphers`).
 * - The CEK is wrapped once per recipient with HPKE base mode (RFC 9180 §6.1 single-shot SealBase),
 *   suite X-Wing (draft-ietf-hpke-pq-05 KEM id 0x647a) / HKDF-SHA256 / AES-256-GCM, info
 *   "tidegate-env/2 content key", aad = the header. A SHA-256 commitment to the CEK in the header
 *   makes every recipient decrypt the same plaintext (AES-GCM alone is not key-committing).
 * - The header (the AAD of both layers) binds version and algorithm ids, sender and its key id, every
 *   recipient's node id and key id, the resource keys (`Type/id[/_history/vid]`), message id, kind
 *   and creation time.
 * - ML-DSA-65 (FIPS 204, context "tidegate-env/2") signs header, recipient entries, iv and
 *   ciphertext, so a relay verifies without decrypting; one signature covers a whole batch.
 * - Serialization: JSON with unpadded base64url members, shaped like the JWE General JSON
 *   Serialization (RFC 7516 §7.2.1: `protected`, `recipients[]`, `iv`, `ciphertext`) but not JOSE.
 */
import { gcm } from '@noble/ciphers/aes.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { randomBytes } from '@noble/hashes/utils.js';
import { ml_dsa65 } from '@noble/post-quantum/ml-dsa.js';
import {
  canonicalJson,
  decodeMember,
  KIND_RE,
  labeledFields,
  malformed,
  MAX_RESOURCES,
  MESSAGE_ID_RE,
  peerSigKey,
  RESOURCE_V2_RE,
  selectKemKey,
} from './common.ts';
import type { OuterEnvelope, SealInput, SealRandom } from './common.ts';
import { EnvelopeError } from './errors.ts';
import { openBase, sealBase } from './hpke.ts';
import { keyIdOf } from './keys.ts';
import type { NodePublicKeys, NodeSecretKeys } from './keys.ts';
import { b64uDecodeStrict, b64uEncode, hasExactKeys, KEY_ID_RE, NODE_ID_RE, SUITE, SUITE_V2, utf8 } from './suite.ts';

/** One addressee of a tidegate-env/2 envelope, as listed in the signed header. */
export interface RecipientId {
  /** Recipient node id. */
  node: string;
  /** Kid of the recipient's X-Wing public key the content key was wrapped to. */
  kid: string;
}

/** The authenticated (signed, and AAD of both encryption layers) tidegate-env/2 header. */
export interface EnvelopeHeaderV2 {
  v: 'tidegate-env/2';
  hpke: typeof SUITE_V2.hpke;
  kem: typeof SUITE_V2.kem;
  enc: typeof SUITE_V2.enc;
  sig: typeof SUITE_V2.sig;
  /** Sender node id. */
  sender: string;
  /** Kid of the sender's ML-DSA-65 public key. */
  senderKid: string;
  /** Addressees in sender order, 1..64, node ids unique. */
  recipients: RecipientId[];
  /** Sender-chosen unique id, `^[A-Za-z0-9._:-]{1,128}$`. */
  messageId: string;
  /** Application message kind, `^[A-Za-z0-9._:/-]{1,64}$`. */
  kind: string;
  /** FHIR `Type/id` or `Type/id/_history/vid` keys the payload concerns (the batch's keys), ≤ 10 000. */
  resources: string[];
  /** Creation time, integer ms since the Unix epoch (sender's clock). */
  createdAt: number;
  /** Unpadded base64url of SHA-256("tidegate-env/2 content key commitment" || 0x00 || CEK), 43 characters. */
  cekCommit: string;
}

/** The header `open()` returns for a v2 envelope: the signed header plus the entry this node opened. */
export interface OpenedHeaderV2 extends EnvelopeHeaderV2 {
  /** This node's id (the recipient entry used). */
  recipient: string;
  /** The kid of this node's X-Wing key that unwrapped the content key. */
  recipientKid: string;
}

/** One serialized recipient entry: kid, HPKE `enc` (1120 bytes), wrapped CEK (48 bytes), base64url. */
interface RecipientEntry {
  kid: string;
  ek: Uint8Array;
  wk: Uint8Array;
}

/** A parsed (not yet verified) tidegate-env/2 envelope. */
export interface ParsedEnvelopeV2 {
  header: EnvelopeHeaderV2;
  protectedBytes: Uint8Array;
  entries: RecipientEntry[];
  iv: Uint8Array;
  ct: Uint8Array;
  sig: Uint8Array;
}

const HEADER_KEYS = [
  'cekCommit', 'createdAt', 'enc', 'hpke', 'kem', 'kind', 'messageId', 'recipients', 'resources',
  'sender', 'senderKid', 'sig', 'v',
] as const;
const ENVELOPE_KEYS = ['protected', 'recipients', 'iv', 'ct', 'sig'] as const;
const ENTRY_KEYS = ['kid', 'ek', 'wk'] as const;
const RECIPIENT_ID_KEYS = ['kid', 'node'] as const;

const HPKE_INFO = utf8(SUITE_V2.hpkeInfo);
const COMMIT_LABEL = utf8(SUITE_V2.commitLabel);
const SIG_CONTEXT = utf8(SUITE_V2.sigContext);
const SIG_LABEL = utf8(SUITE_V2.sigLabel);

/** Canonical header bytes: RFC 8785 (JCS) of the header, which here is sorted compact JSON. */
function canonicalHeaderBytes(h: EnvelopeHeaderV2): Uint8Array {
  return utf8(canonicalJson(h));
}

/**
 * Commitment to the content key: SHA-256("tidegate-env/2 content key commitment" || 0x00 || CEK) (FIPS 180-4).
 * @param cek - 32-byte content key.
 * @returns 32 bytes.
 */
export function contentKeyCommitment(cek: Uint8Array): Uint8Array {
  const buf = new Uint8Array(COMMIT_LABEL.length + 1 + cek.length);
  buf.set(COMMIT_LABEL, 0);
  buf.set(cek, COMMIT_LABEL.length + 1);
  const out = sha256(buf);
  buf.fill(0);
  return out;
}

/**
 * The byte string a tidegate-env/2 sender signs (ML-DSA-65 message `M`, ctx "tidegate-env/2"):
 *
 *   "tidegate-env/2 signature" || 0x00 || LP(H) || for each entry i in header order:
 *   LP(kid_i) || LP(ek_i) || LP(wk_i) || then LP(iv) || LP(ct)
 *
 * with LP(x) = I2OSP(len(x), 8) || x. The number of entries is fixed by H (its `recipients`).
 *
 * @param protectedHeader - Canonical header bytes H.
 * @param entries - Recipient entries: kid (22 ASCII characters), ek (1120 bytes), wk (48 bytes).
 * @param iv - 12-byte GCM nonce.
 * @param ct - Content ciphertext with the 16-byte tag.
 * @returns The signature input.
 */
export function signatureInputV2(
  protectedHeader: Uint8Array,
  entries: ReadonlyArray<{ kid: string; ek: Uint8Array; wk: Uint8Array }>,
  iv: Uint8Array,
  ct: Uint8Array,
): Uint8Array {
  const fields: Uint8Array[] = [protectedHeader];
  for (const e of entries) fields.push(utf8(e.kid), e.ek, e.wk);
  fields.push(iv, ct);
  return labeledFields(SIG_LABEL, fields);
}

function checkSealInput(input: SealInput, sender: NodeSecretKeys, recipients: readonly NodePublicKeys[]): Omit<EnvelopeHeaderV2, 'cekCommit'> {
  const fail = (msg: string): never => {
    throw new TypeError(`seal: ${msg}`);
  };
  if (typeof input !== 'object' || input === null) fail('input must be an object');
  if (typeof input.kind !== 'string' || !KIND_RE.test(input.kind)) fail(`kind must match ${KIND_RE.source}`);
  if (typeof input.messageId !== 'string' || !MESSAGE_ID_RE.test(input.messageId)) fail(`messageId must match ${MESSAGE_ID_RE.source}`);
  if (!Array.isArray(input.resources) || input.resources.length > MAX_RESOURCES) fail(`resources must be an array of at most ${MAX_RESOURCES}`);
  for (const r of input.resources) if (typeof r !== 'string' || !RESOURCE_V2_RE.test(r)) fail('resources entries must be "Type/id" or "Type/id/_history/vid"');
  if (!(input.plaintext instanceof Uint8Array)) fail('plaintext must be a Uint8Array');
  if (input.plaintext.length > SUITE.lengths.maxPlaintext) fail(`plaintext exceeds ${SUITE.lengths.maxPlaintext} bytes`);
  const createdAt = input.createdAt ?? Date.now();
  if (!Number.isSafeInteger(createdAt) || createdAt < 0) fail('createdAt must be a non-negative integer (ms)');
  if (!NODE_ID_RE.test(sender.nodeId) || !KEY_ID_RE.test(sender.sigKeyId)) fail('invalid sender nodeId / sigKeyId');
  if (!(sender.sigSecretKey instanceof Uint8Array) || sender.sigSecretKey.length !== SUITE.lengths.sigSecretKey) {
    fail(`sender.sigSecretKey must be ${SUITE.lengths.sigSecretKey} bytes`);
  }
  if (recipients.length < 1 || recipients.length > SUITE_V2.lengths.maxRecipients) fail(`1 to ${SUITE_V2.lengths.maxRecipients} recipients`);
  const seen = new Set<string>();
  for (const r of recipients) {
    if (typeof r !== 'object' || r === null || !NODE_ID_RE.test(r.nodeId)) fail('invalid recipient nodeId');
    if (seen.has(r.nodeId)) fail(`recipient ${r.nodeId} listed twice`);
    seen.add(r.nodeId);
    if (!(r.kemPublicKey instanceof Uint8Array) || r.kemPublicKey.length !== SUITE.lengths.kemPublicKey) {
      fail(`recipient.kemPublicKey must be ${SUITE.lengths.kemPublicKey} bytes`);
    }
    if (r.kemKeyId !== keyIdOf(r.kemPublicKey)) fail(`recipient ${r.nodeId}: kemKeyId does not match kemPublicKey`);
  }
  return {
    v: SUITE_V2.v,
    hpke: SUITE_V2.hpke,
    kem: SUITE_V2.kem,
    enc: SUITE_V2.enc,
    sig: SUITE_V2.sig,
    sender: sender.nodeId,
    senderKid: sender.sigKeyId,
    recipients: recipients.map((r) => ({ node: r.nodeId, kid: r.kemKeyId })),
    messageId: input.messageId,
    kind: input.kind,
    resources: [...input.resources],
    createdAt,
  };
}

/**
 * Seals `input.plaintext` for one or more recipients and signs it as `sender` (tidegate-env/2).
 *
 * 1. CEK = 32 random bytes; cekCommit = {@link contentKeyCommitment}(CEK); header H = canonical JSON.
 * 2. For each recipient i: `(ek_i, wk_i) = HPKE.SealBase(pk_i, info = "tidegate-env/2 content key",
 *    aad = H, pt = CEK)` (RFC 9180 §6.1; X-Wing 0x647a / HKDF-SHA256 / AES-256-GCM).
 * 3. iv = 12 random bytes; ct = AES-256-GCM(CEK, iv, AAD = H, plaintext), tag appended.
 * 4. sig = ML-DSA-65.Sign(sk, {@link signatureInputV2}(H, entries, iv, ct), ctx = "tidegate-env/2"), hedged.
 * 5. `{"protected","recipients":[{"kid","ek","wk"}],"iv","ct","sig"}`, binary members unpadded base64url.
 * CEK and shared secrets are zeroed afterwards (best effort).
 *
 * @param input - kind, messageId, resources, plaintext (≤ 45 MiB), createdAt (ms, default now).
 * @param sender - This node's secret keys (nodeId, sigKeyId, sigSecretKey are used).
 * @param recipients - 1..64 recipients' public keys (nodeId unique; kemKeyId, kemPublicKey used).
 * @returns The serialized envelope (ASCII JSON): about 4/3 × (plaintext + 3.4 KB + 1.2 KB per recipient) characters.
 * @throws `TypeError` for invalid input or keys. Never an {@link EnvelopeError}.
 */
export function sealV2(input: SealInput, sender: NodeSecretKeys, recipients: readonly NodePublicKeys[]): string {
  return sealInternal(input, sender, recipients, randomBytes);
}

/**
 * {@link sealV2} with caller-supplied randomness, for the known-answer vector ONLY
 * (test/vectors/tidegate-env-2-kat.json); not re-exported from the package index nor reachable
 * through the worker pool. `random(n)` is called in this order: n = 32 (CEK), n = 12 (iv), then
 * n = 64 per recipient in header order (X-Wing `eseed`, EncapsulateDerand), then n = 32 (ML-DSA `rnd`).
 *
 * @param input - As {@link sealV2}.
 * @param sender - As {@link sealV2}.
 * @param recipients - As {@link sealV2}.
 * @param random - Randomness source; each call must return exactly `n` bytes.
 * @returns The envelope, byte-for-byte reproducible.
 * @throws `TypeError` as {@link sealV2}, or when `random` returns the wrong length.
 */
export function sealV2WithRandomness(input: SealInput, sender: NodeSecretKeys, recipients: readonly NodePublicKeys[], random: SealRandom): string {
  if (typeof random !== 'function') throw new TypeError('sealV2WithRandomness: random must be a function');
  return sealInternal(input, sender, recipients, (n) => {
    const out = random(n);
    if (!(out instanceof Uint8Array) || out.length !== n) throw new TypeError(`sealV2WithRandomness: random(${n}) must return ${n} bytes`);
    return Uint8Array.from(out);
  });
}

function sealInternal(input: SealInput, sender: NodeSecretKeys, recipients: readonly NodePublicKeys[], random: SealRandom): string {
  if (!Array.isArray(recipients)) throw new TypeError('seal: recipients must be an array');
  const base = checkSealInput(input, sender, recipients);
  let cek: Uint8Array | undefined;
  try {
    cek = random(SUITE_V2.lengths.contentKey);
    const header: EnvelopeHeaderV2 = { ...base, cekCommit: b64uEncode(contentKeyCommitment(cek)) };
    const H = canonicalHeaderBytes(header);
    const iv = random(SUITE.lengths.nonce);
    const entries: RecipientEntry[] = recipients.map((r) => {
      const eseed = random(SUITE.lengths.kemEncapsSeed);
      try {
        const { enc, ct: wk } = sealBase(r.kemPublicKey, HPKE_INFO, H, cek!, eseed);
        return { kid: r.kemKeyId, ek: enc, wk };
      } finally {
        eseed.fill(0);
      }
    });
    const ct = gcm(cek, iv, H).encrypt(input.plaintext);
    const rnd = random(SUITE.lengths.signRandomness);
    const sig = ml_dsa65.sign(signatureInputV2(H, entries, iv, ct), sender.sigSecretKey, { context: SIG_CONTEXT, extraEntropy: rnd });
    rnd.fill(0);
    const out = JSON.stringify({
      protected: b64uEncode(H),
      recipients: entries.map((e) => ({ kid: e.kid, ek: b64uEncode(e.ek), wk: b64uEncode(e.wk) })),
      iv: b64uEncode(iv),
      ct: b64uEncode(ct),
      sig: b64uEncode(sig),
    });
    if (out.length > SUITE.lengths.maxEnvelopeChars) throw new TypeError(`seal: envelope would exceed ${SUITE.lengths.maxEnvelopeChars} characters`);
    return out;
  } finally {
    cek?.fill(0);
  }
}

function unsupported(what: string, value: string): never {
  throw new EnvelopeError('ERR_UNSUPPORTED_ALGORITHM', `Unsupported ${what} "${value}" for ${SUITE_V2.v}`);
}

function checkHeaderSchema(h: Record<string, unknown>): EnvelopeHeaderV2 {
  for (const k of ['hpke', 'kem', 'enc', 'sig', 'sender', 'senderKid', 'messageId', 'kind', 'cekCommit']) {
    if (typeof h[k] !== 'string') malformed(`header "${k}" must be a string`);
  }
  const str = (k: string): string => h[k] as string;
  if (!NODE_ID_RE.test(str('sender'))) malformed('header "sender" is not a node id');
  if (!KEY_ID_RE.test(str('senderKid'))) malformed('header "senderKid" is not a key id');
  if (!MESSAGE_ID_RE.test(str('messageId'))) malformed('header "messageId" has an invalid form');
  if (!KIND_RE.test(str('kind'))) malformed('header "kind" has an invalid form');
  const commit = b64uDecodeStrict(str('cekCommit'));
  if (commit === undefined || commit.length !== SUITE_V2.lengths.commitment) malformed('header "cekCommit" must be 32 bytes of base64url');
  const list = h['recipients'];
  if (!Array.isArray(list) || list.length < 1 || list.length > SUITE_V2.lengths.maxRecipients) {
    malformed(`header "recipients" must be an array of 1 to ${SUITE_V2.lengths.maxRecipients} entries`);
  }
  const recipients: RecipientId[] = [];
  const nodes = new Set<string>();
  for (const r of list as unknown[]) {
    if (!hasExactKeys(r, RECIPIENT_ID_KEYS)) malformed('header "recipients" entries must be {"kid","node"}');
    const { kid, node } = r;
    if (typeof node !== 'string' || !NODE_ID_RE.test(node)) malformed('header recipient "node" is not a node id');
    if (typeof kid !== 'string' || !KEY_ID_RE.test(kid)) malformed('header recipient "kid" is not a key id');
    if (nodes.has(node)) malformed(`header lists recipient "${node}" twice`);
    nodes.add(node);
    recipients.push({ kid, node });
  }
  const resources = h['resources'];
  if (!Array.isArray(resources) || resources.length > MAX_RESOURCES) malformed(`header "resources" must be an array of at most ${MAX_RESOURCES} entries`);
  for (const r of resources as unknown[]) {
    if (typeof r !== 'string' || !RESOURCE_V2_RE.test(r)) malformed('header "resources" entries must be "Type/id" or "Type/id/_history/vid"');
  }
  const createdAt = h['createdAt'];
  if (typeof createdAt !== 'number' || !Number.isSafeInteger(createdAt) || createdAt < 0) malformed('header "createdAt" must be a non-negative integer');
  // Algorithm allowlist, after the schema (types known): exactly the pinned ids, no negotiation.
  if (h['hpke'] !== SUITE_V2.hpke) unsupported('hpke', str('hpke'));
  if (h['kem'] !== SUITE_V2.kem) unsupported('kem', str('kem'));
  if (h['enc'] !== SUITE_V2.enc) unsupported('enc', str('enc'));
  if (h['sig'] !== SUITE_V2.sig) unsupported('sig', str('sig'));
  return {
    v: SUITE_V2.v,
    hpke: SUITE_V2.hpke,
    kem: SUITE_V2.kem,
    enc: SUITE_V2.enc,
    sig: SUITE_V2.sig,
    sender: str('sender'),
    senderKid: str('senderKid'),
    recipients,
    messageId: str('messageId'),
    kind: str('kind'),
    resources: [...(resources as string[])],
    createdAt: createdAt as number,
    cekCommit: str('cekCommit'),
  };
}

/**
 * Stage 2 of parsing a tidegate-env/2 envelope (after `readOuter` read `v` = "tidegate-env/2"):
 * docs/envelope.md §12 checks 3–5.
 * @param stage1 - Output of `readOuter`.
 * @returns The parsed envelope (unverified).
 * @throws {@link EnvelopeError} `ERR_ENVELOPE_MALFORMED` or `ERR_UNSUPPORTED_ALGORITHM`.
 */
export function parseV2(stage1: OuterEnvelope): ParsedEnvelopeV2 {
  const { outer, protectedBytes, header: h } = stage1;
  if (!hasExactKeys(outer, ENVELOPE_KEYS)) malformed(`expected exactly the members ${ENVELOPE_KEYS.join(', ')}`);
  for (const k of ['protected', 'iv', 'ct', 'sig'] as const) if (typeof outer[k] !== 'string') malformed(`"${k}" must be a string`);
  const rawEntries = outer['recipients'];
  if (!Array.isArray(rawEntries) || rawEntries.length < 1 || rawEntries.length > SUITE_V2.lengths.maxRecipients) {
    malformed(`"recipients" must be an array of 1 to ${SUITE_V2.lengths.maxRecipients} entries`);
  }
  for (const e of rawEntries as unknown[]) {
    if (!hasExactKeys(e, ENTRY_KEYS) || ENTRY_KEYS.some((k) => typeof e[k] !== 'string')) malformed('recipient entries must be {"kid","ek","wk"} strings');
  }
  if (!hasExactKeys(h, HEADER_KEYS)) malformed(`header must have exactly the fields ${HEADER_KEYS.join(', ')}`);
  const header = checkHeaderSchema(h);
  if (Buffer.compare(canonicalHeaderBytes(header), protectedBytes) !== 0) malformed('protected header is not canonical');

  const L = SUITE.lengths;
  if ((rawEntries as unknown[]).length !== header.recipients.length) malformed('"recipients" entries do not match the header recipients');
  const entries = (rawEntries as Record<string, unknown>[]).map((e, i): RecipientEntry => {
    if (e['kid'] !== header.recipients[i]?.kid) malformed(`recipient entry ${i} kid does not match the header`);
    const ek = decodeMember(e, 'ek', `recipient ${i} `);
    const wk = decodeMember(e, 'wk', `recipient ${i} `);
    if (ek.length !== L.kemCipherText) malformed(`recipient ${i} "ek" must be ${L.kemCipherText} bytes`);
    if (wk.length !== SUITE_V2.lengths.wrappedKey) malformed(`recipient ${i} "wk" must be ${SUITE_V2.lengths.wrappedKey} bytes`);
    return { kid: e['kid'] as string, ek, wk };
  });
  const iv = decodeMember(outer, 'iv');
  const ct = decodeMember(outer, 'ct');
  const sig = decodeMember(outer, 'sig');
  if (iv.length !== L.nonce) malformed(`"iv" must be ${L.nonce} bytes`);
  if (ct.length < L.tag) malformed(`"ct" must be at least ${L.tag} bytes`);
  if (sig.length !== L.signature) malformed(`"sig" must be ${L.signature} bytes`);
  return { header, protectedBytes, entries, iv, ct, sig };
}

/**
 * Verifies a parsed tidegate-env/2 envelope's signature only (no decryption): what a relay that
 * holds no recipient key can check. docs/envelope.md §12 checks 6–7.
 * @param parsed - Output of {@link parseV2}.
 * @param peers - Known peers' public keys by node id.
 * @throws {@link EnvelopeError} `ERR_UNKNOWN_PEER` or `ERR_SIGNATURE_INVALID`.
 */
export function verifyV2(parsed: ParsedEnvelopeV2, peers: ReadonlyMap<string, NodePublicKeys>): void {
  const { header, protectedBytes, entries, iv, ct, sig } = parsed;
  const key = peerSigKey(peers, header.sender, header.senderKid);
  let valid = false;
  try {
    valid = ml_dsa65.verify(sig, signatureInputV2(protectedBytes, entries, iv, ct), key, { context: SIG_CONTEXT });
  } catch {
    valid = false;
  }
  if (!valid) throw new EnvelopeError('ERR_SIGNATURE_INVALID', `Signature by "${header.sender}" does not verify (message ${header.messageId})`);
}

/**
 * Verifies and decrypts a parsed tidegate-env/2 envelope for this node (docs/envelope.md §12 checks 6–9):
 * known sender key, ML-DSA-65 signature, an entry for this node with a non-retired X-Wing key, then
 * HPKE OpenBase of the wrapped CEK (aad = header), the CEK commitment, and AES-256-GCM decryption.
 *
 * @param parsed - Output of {@link parseV2}.
 * @param self - This node's secret keys.
 * @param peers - Known peers' public keys by node id.
 * @returns The header (plus `recipient`/`recipientKid` of the entry used) and the plaintext.
 * @throws {@link EnvelopeError} `ERR_UNKNOWN_PEER`, `ERR_SIGNATURE_INVALID`, `ERR_NOT_FOR_THIS_NODE`, `ERR_DECRYPT_FAILED`.
 */
export function openV2(parsed: ParsedEnvelopeV2, self: NodeSecretKeys, peers: ReadonlyMap<string, NodePublicKeys>): { header: OpenedHeaderV2; plaintext: Uint8Array } {
  verifyV2(parsed, peers);
  const { header, protectedBytes, entries, iv, ct } = parsed;
  const i = header.recipients.findIndex((r) => r.node === self.nodeId);
  const entry = i >= 0 ? entries[i] : undefined;
  const kemSecretKey = entry === undefined ? undefined : selectKemKey(self, entry.kid);
  if (entry === undefined || kemSecretKey === undefined) {
    const to = header.recipients.map((r) => `${r.node}/${r.kid}`).join(', ');
    throw new EnvelopeError('ERR_NOT_FOR_THIS_NODE', `Envelope ${header.messageId} is for ${to}, not one of "${self.nodeId}"'s keys`);
  }
  let cek: Uint8Array | undefined;
  try {
    cek = openBase(entry.ek, kemSecretKey, HPKE_INFO, protectedBytes, entry.wk);
    const commit = b64uDecodeStrict(header.cekCommit);
    if (commit === undefined || Buffer.compare(contentKeyCommitment(cek), commit) !== 0) throw new Error('commitment');
    const plaintext = gcm(cek, iv, protectedBytes).decrypt(ct);
    return { header: { ...header, recipients: header.recipients.map((r) => ({ ...r })), recipient: self.nodeId, recipientKid: entry.kid }, plaintext };
  } catch {
    throw new EnvelopeError('ERR_DECRYPT_FAILED', `Decryption of envelope ${header.messageId} failed`);
  } finally {
    cek?.fill(0);
  }
}
