/**
 * tidegate-env/2 (docs/envelope.md §11–§14): the known-answer vector, multi-recipient sealing,
 * relay verification without decryption, every rejection of issue #4 for v2 (tampering of header,
 * recipient entries, ciphertext and signature; wrong recipient; unknown/revoked sender; unknown
 * version/algorithm and downgrade; replay; malformed input with fast-check), and reading v1.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { gcm } from '@noble/ciphers/aes.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { ml_dsa65 } from '@noble/post-quantum/ml-dsa.js';
import { ml_kem768_x25519 } from '@noble/post-quantum/hybrid.js';
import { keyScheduleBase, openBase, sealBase, TIDEGATE_HPKE_SUITE } from '../src/envelope/hpke.ts';
import {
  contentKeyCommitment,
  createKeyStore,
  EnvelopeCryptoPool,
  EnvelopeError,
  generateNodeKeys,
  keyStoreToPublicKeys,
  keyStoreToSecretKeys,
  open,
  peekHeader,
  ReplayGuard,
  retireKey,
  rotateKeyStore,
  seal,
  sealV1,
  signatureInputV2,
  SUITE,
  SUITE_V2,
  verifySignature,
} from '../src/envelope/index.ts';
import type { EnvelopeErrorCode, NodePublicKeys, SealInput } from '../src/envelope/index.ts';
import { sealV2WithRandomness } from '../src/envelope/v2.ts';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const h2b = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));
const u8 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'base64url'));
const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64url');
const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);

const A = generateNodeKeys('hospital-a', new Uint8Array(32).fill(1));
const B = generateNodeKeys('hospital-b', new Uint8Array(32).fill(2));
const C = generateNodeKeys('hospital-c', new Uint8Array(32).fill(3));
const D = generateNodeKeys('hospital-d', new Uint8Array(32).fill(4));
const M = generateNodeKeys('mallory', new Uint8Array(32).fill(5));
const peersOfB = new Map<string, NodePublicKeys>([
  ['hospital-a', A.publicKeys],
  ['mallory', M.publicKeys],
]);
const PLAINTEXT = utf8('{"resourceType":"Patient","id":"p1","birthDate":"1970-01-01"}');
const NOW = 1_700_000_000_000;
const input = (over: Partial<SealInput> = {}): SealInput => ({
  kind: 'updates',
  messageId: `m-${Math.random().toString(36).slice(2)}`,
  resources: ['Patient/p1', 'Observation/o1/_history/3'],
  plaintext: PLAINTEXT,
  createdAt: NOW,
  ...over,
});
/** v1 headers only take `Type/id` resources. */
const input1 = (): SealInput => input({ resources: ['Patient/p1'] });

interface Parts {
  protected: string;
  recipients: { kid: string; ek: string; wk: string }[];
  iv: string;
  ct: string;
  sig: string;
}
const ENV = seal(input({ messageId: 'fixed-1' }), A.secretKeys, [B.publicKeys, C.publicKeys]);
const PARTS = JSON.parse(ENV) as Parts;

function codeOf(fn: () => unknown): string {
  try {
    fn();
    return 'ok';
  } catch (e) {
    if (e instanceof EnvelopeError) return e.code;
    if (e instanceof TypeError) return 'TypeError';
    throw new Error(`unexpected ${(e as Error)?.name}: ${(e as Error)?.message}`);
  }
}
function expectCode(env: unknown, code: EnvelopeErrorCode, self = B.secretKeys, peers: ReadonlyMap<string, NodePublicKeys> = peersOfB): void {
  assert.equal(codeOf(() => open(env as string, self, peers)), code);
}
/** Re-signs `parts` as `signer` (a peer re-signing, or the legitimate sender after changing content). */
function resign(parts: Parts, signerSk: Uint8Array): Parts {
  const H = u8(parts.protected);
  const entries = parts.recipients.map((e) => ({ kid: e.kid, ek: u8(e.ek), wk: u8(e.wk) }));
  const msg = signatureInputV2(H, entries, u8(parts.iv), u8(parts.ct));
  return { ...parts, sig: b64(ml_dsa65.sign(msg, signerSk, { context: utf8('tidegate-env/2') })) };
}
/** Replaces the protected header by a canonical re-serialization of an edited copy (signature NOT redone). */
function editHeader(parts: Parts, mutate: (h: Record<string, unknown>) => void): Parts {
  const h = JSON.parse(Buffer.from(parts.protected, 'base64url').toString('utf8')) as Record<string, unknown>;
  mutate(h);
  const sorted = (v: unknown): unknown =>
    Array.isArray(v) ? v.map(sorted) : typeof v === 'object' && v !== null ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted((v as Record<string, unknown>)[k])])) : v;
  return { ...parts, protected: Buffer.from(JSON.stringify(sorted(h))).toString('base64url') };
}

describe('tidegate-env/2 known-answer vector (test/vectors/tidegate-env-2-kat.json)', () => {
  const kat = JSON.parse(readFileSync(new URL('./vectors/tidegate-env-2-kat.json', import.meta.url), 'utf8')) as {
    keys: { sender: { mlDsa65SeedXi: string; sigKeyId: string; mlDsa65PublicKeySha256: string }; recipients: { nodeId: string; xWingSeed: string; kemKeyId: string; xWingPublicKeySha256: string }[] };
    input: { kind: string; messageId: string; resources: string[]; createdAt: number; plaintextUtf8: string };
    randomness: { contentKey: string; gcmIv: string; mlDsaRnd: string };
    intermediate: {
      canonicalHeader: string;
      contentKeyCommitment: string;
      recipients: { nodeId: string; kid: string; xWingEseed: string; hpkeEncSha256: string; xWingSharedSecret: string; hpkeKey: string; hpkeBaseNonce: string; wrappedContentKey: string }[];
      gcmCiphertextWithTag: string;
      signatureInputLength: number;
      signatureInputSha256: string;
      signatureSha256: string;
    };
    envelope: string;
  };
  const now = new Date('2023-11-14T22:13:20.000Z');
  const store = (id: string, kem: number, sig: number) => createKeyStore(id, { now, seeds: { kem: new Uint8Array(32).fill(kem), sig: new Uint8Array(32).fill(sig) } });
  const a = store('hospital-a', 0x0a, 0x0b);
  const b = store('hospital-b', 0x0c, 0x0d);
  const c = store('hospital-c', 0x0e, 0x0f);
  const peers = new Map([['hospital-a', keyStoreToPublicKeys(a)]]);
  const sealInput: SealInput = { ...kat.input, plaintext: utf8(kat.input.plaintextUtf8) };
  const parts = JSON.parse(kat.envelope) as Parts;

  it('keys derive from the documented seeds', () => {
    assert.equal(hex(new Uint8Array(32).fill(0x0b)), kat.keys.sender.mlDsa65SeedXi);
    assert.equal(keyStoreToPublicKeys(a).sigKeyId, kat.keys.sender.sigKeyId);
    assert.equal(hex(sha256(keyStoreToPublicKeys(a).sigPublicKey)), kat.keys.sender.mlDsa65PublicKeySha256);
    for (const [i, s] of [b, c].entries()) {
      assert.equal(keyStoreToPublicKeys(s).kemKeyId, kat.keys.recipients[i]!.kemKeyId);
      assert.equal(hex(sha256(keyStoreToPublicKeys(s).kemPublicKey)), kat.keys.recipients[i]!.xWingPublicKeySha256);
    }
  });

  it('both recipients open the committed envelope to the plaintext and header', () => {
    for (const s of [b, c]) {
      const r = open(kat.envelope, keyStoreToSecretKeys(s), peers);
      assert.equal(new TextDecoder().decode(r.plaintext), kat.input.plaintextUtf8);
      assert.equal(r.header.v, 'tidegate-env/2');
      assert.equal(r.header.recipient, s.nodeId);
      assert.deepEqual(r.header.resources, kat.input.resources);
    }
  });

  it('sealing with the documented randomness reproduces the envelope byte for byte', () => {
    const r = kat.randomness;
    const queue = [h2b(r.contentKey), h2b(r.gcmIv), ...kat.intermediate.recipients.map((x) => h2b(x.xWingEseed)), h2b(r.mlDsaRnd)];
    const again = sealV2WithRandomness(sealInput, keyStoreToSecretKeys(a), [keyStoreToPublicKeys(b), keyStoreToPublicKeys(c)], (n) => {
      const next = queue.shift();
      assert.equal(next?.length, n);
      return next!;
    });
    assert.equal(again, kat.envelope);
    assert.equal(queue.length, 0);
  });

  it('every intermediate value recomputed from the primitives (HPKE key schedule, AES-256-GCM, SHA-256, ML-DSA-65)', () => {
    const H = u8(parts.protected);
    assert.equal(new TextDecoder().decode(H), kat.intermediate.canonicalHeader);
    const cek = h2b(kat.randomness.contentKey);
    assert.equal(hex(sha256(new Uint8Array([...utf8(SUITE_V2.commitLabel), 0, ...cek]))), kat.intermediate.contentKeyCommitment);
    assert.equal(b64(h2b(kat.intermediate.contentKeyCommitment)), (JSON.parse(kat.intermediate.canonicalHeader) as { cekCommit: string }).cekCommit);
    for (const [i, s] of [b, c].entries()) {
      const x = kat.intermediate.recipients[i]!;
      const e = parts.recipients[i]!;
      assert.equal(e.kid, x.kid);
      assert.equal(hex(sha256(u8(e.ek))), x.hpkeEncSha256);
      const ss = ml_kem768_x25519.decapsulate(u8(e.ek), keyStoreToSecretKeys(s).kemSecretKey);
      assert.equal(hex(ss), x.xWingSharedSecret);
      const ks = keyScheduleBase(TIDEGATE_HPKE_SUITE, ss, utf8('tidegate-env/2 content key'));
      assert.equal(hex(ks.key), x.hpkeKey);
      assert.equal(hex(ks.baseNonce), x.hpkeBaseNonce);
      assert.equal(hex(u8(e.wk)), x.wrappedContentKey);
      assert.equal(hex(gcm(ks.key, ks.baseNonce, H).decrypt(u8(e.wk))), kat.randomness.contentKey);
    }
    assert.equal(hex(u8(parts.ct)), kat.intermediate.gcmCiphertextWithTag);
    assert.equal(hex(gcm(cek, h2b(kat.randomness.gcmIv), H).decrypt(u8(parts.ct))), hex(utf8(kat.input.plaintextUtf8)));
    const msg = signatureInputV2(H, parts.recipients.map((e) => ({ kid: e.kid, ek: u8(e.ek), wk: u8(e.wk) })), u8(parts.iv), u8(parts.ct));
    assert.equal(msg.length, kat.intermediate.signatureInputLength);
    assert.equal(hex(sha256(msg)), kat.intermediate.signatureInputSha256);
    assert.equal(hex(sha256(u8(parts.sig))), kat.intermediate.signatureSha256);
    assert.ok(ml_dsa65.verify(u8(parts.sig), msg, keyStoreToPublicKeys(a).sigPublicKey, { context: utf8('tidegate-env/2') }));
  });
});

describe('tidegate-env/2 seal / open', () => {
  it('seal() writes v2; each recipient opens; the header binds all recipients, resources (with versions), sender, time', () => {
    const env = seal(input({ messageId: 'rt-1' }), A.secretKeys, [B.publicKeys, C.publicKeys]);
    const parts = JSON.parse(env) as Parts;
    assert.deepEqual(Object.keys(parts), ['protected', 'recipients', 'iv', 'ct', 'sig']);
    assert.equal(parts.recipients.length, 2);
    for (const e of parts.recipients) {
      assert.deepEqual(Object.keys(e), ['kid', 'ek', 'wk']);
      assert.equal(u8(e.ek).length, 1120);
      assert.equal(u8(e.wk).length, 48);
    }
    assert.equal(u8(parts.iv).length, 12);
    assert.equal(u8(parts.ct).length, PLAINTEXT.length + 16);
    assert.equal(u8(parts.sig).length, SUITE.lengths.signature);
    for (const [self, id] of [[B.secretKeys, 'hospital-b'], [C.secretKeys, 'hospital-c']] as const) {
      const r = open(env, self, new Map([['hospital-a', A.publicKeys]]));
      assert.deepEqual(r.plaintext, PLAINTEXT);
      assert.equal(r.header.recipient, id);
      assert.equal(r.header.sender, 'hospital-a');
      assert.equal(r.header.senderKid, A.publicKeys.sigKeyId);
      assert.equal(r.header.createdAt, NOW);
      assert.deepEqual(r.header.resources, ['Patient/p1', 'Observation/o1/_history/3']);
      assert.ok('recipients' in r.header);
      assert.deepEqual(r.header.recipients, [
        { kid: B.publicKeys.kemKeyId, node: 'hospital-b' },
        { kid: C.publicKeys.kemKeyId, node: 'hospital-c' },
      ]);
    }
    const { recipient: _r, recipientKid: _k, ...signed } = open(env, B.secretKeys, peersOfB).header;
    assert.deepEqual(peekHeader(env), signed, 'peekHeader gives the signed header (without the opening node\'s entry)');
  });

  it('one recipient as a single key object (the pre-v2 call shape used by Tide)', () => {
    const env = seal(input(), A.secretKeys, B.publicKeys);
    assert.equal(peekHeader(env).v, 'tidegate-env/2');
    assert.deepEqual(open(env, B.secretKeys, peersOfB).plaintext, PLAINTEXT);
  });

  it('is randomized: a fresh content key, iv and encapsulation every time', () => {
    const p1 = JSON.parse(seal(input({ messageId: 'same' }), A.secretKeys, B.publicKeys)) as Parts;
    const p2 = JSON.parse(seal(input({ messageId: 'same' }), A.secretKeys, B.publicKeys)) as Parts;
    for (const k of ['protected', 'iv', 'ct', 'sig'] as const) assert.notEqual(p1[k], p2[k], k);
    assert.notEqual(p1.recipients[0]!.ek, p2.recipients[0]!.ek);
    assert.notEqual(p1.recipients[0]!.wk, p2.recipients[0]!.wk);
  });

  it('a batch: one signature covers many resource updates for one peer', () => {
    const resources = Array.from({ length: 500 }, (_, i) => `Observation/o-${i}`);
    const env = seal(input({ resources, plaintext: new Uint8Array(100_000).fill(7) }), A.secretKeys, B.publicKeys);
    const r = open(env, B.secretKeys, peersOfB);
    assert.equal(r.header.resources.length, 500);
    assert.equal(r.plaintext.length, 100_000);
    assert.equal((JSON.parse(env) as Parts).sig.length, Math.ceil((SUITE.lengths.signature * 4) / 3));
  });

  it('seal() refuses bad input with TypeError: no recipient, duplicates, > 64, bad resource, bad kid', () => {
    const bad: [string, () => unknown][] = [
      ['no recipients', () => seal(input(), A.secretKeys, [])],
      ['duplicate recipient', () => seal(input(), A.secretKeys, [B.publicKeys, B.publicKeys])],
      ['65 recipients', () => seal(input(), A.secretKeys, Array.from({ length: 65 }, (_, i) => ({ ...B.publicKeys, nodeId: `n${i}` })))],
      ['resource', () => seal(input({ resources: ['Patient/p1/_history/'] }), A.secretKeys, B.publicKeys)],
      ['kid mismatch', () => seal(input(), A.secretKeys, { ...B.publicKeys, kemKeyId: C.publicKeys.kemKeyId })],
      ['plaintext too large', () => seal(input({ plaintext: new Uint8Array(SUITE.lengths.maxPlaintext + 1) }), A.secretKeys, B.publicKeys)],
    ];
    for (const [name, fn] of bad) assert.equal(codeOf(fn), 'TypeError', name);
  });

  it('a relay verifies the signature without any recipient key (verifySignature)', () => {
    const header = verifySignature(ENV, new Map([['hospital-a', A.publicKeys]]));
    assert.equal(header.messageId, 'fixed-1');
    const tampered = JSON.stringify({ ...PARTS, recipients: [PARTS.recipients[1], PARTS.recipients[0]] });
    assert.equal(codeOf(() => verifySignature(tampered, new Map([['hospital-a', A.publicKeys]]))), 'ERR_ENVELOPE_MALFORMED');
    const flipped = JSON.stringify({ ...PARTS, ct: b64(u8(PARTS.ct).map((x, i) => (i === 0 ? x ^ 1 : x))) });
    assert.equal(codeOf(() => verifySignature(flipped, new Map([['hospital-a', A.publicKeys]]))), 'ERR_SIGNATURE_INVALID');
    assert.equal(codeOf(() => verifySignature(ENV, new Map())), 'ERR_UNKNOWN_PEER');
    const v1 = sealV1(input1(), A.secretKeys, B.publicKeys);
    assert.equal(codeOf(() => verifySignature(v1, new Map([['hospital-a', A.publicKeys]]))), 'ERR_UNSUPPORTED_ALGORITHM');
  });

  it('the worker pool seals v2 to several recipients and opens it, with the same error codes', async () => {
    const pool = new EnvelopeCryptoPool(1);
    try {
      const env = await pool.seal(input(), A.secretKeys, [B.publicKeys, C.publicKeys]);
      assert.deepEqual((await pool.open(env, C.secretKeys, peersOfB)).plaintext, PLAINTEXT);
      await assert.rejects(pool.open(env, D.secretKeys, peersOfB), (e: unknown) => e instanceof EnvelopeError && e.code === 'ERR_NOT_FOR_THIS_NODE');
      const v1 = sealV1(input1(), A.secretKeys, B.publicKeys);
      await assert.rejects(pool.open(v1, B.secretKeys, peersOfB, { versions: ['tidegate-env/2'] }), (e: unknown) => e instanceof EnvelopeError && e.code === 'ERR_UNSUPPORTED_ALGORITHM');
    } finally {
      await pool.close();
    }
  });
});

describe('tidegate-env/2 rejections (issue #4)', () => {
  it('tampering: a flipped bit in any decoded member, at several positions, never opens; iv/ct/ek/wk/sig → ERR_SIGNATURE_INVALID', () => {
    const flip = (s: string, i: number): string => b64(u8(s).map((x, j) => (j === i ? x ^ 0x04 : x)));
    const targets: [string, (i: number) => Parts][] = [
      ['iv', (i) => ({ ...PARTS, iv: flip(PARTS.iv, i % 12) })],
      ['ct', (i) => ({ ...PARTS, ct: flip(PARTS.ct, i % u8(PARTS.ct).length) })],
      ['sig', (i) => ({ ...PARTS, sig: flip(PARTS.sig, i % SUITE.lengths.signature) })],
      ['recipients[0].ek', (i) => ({ ...PARTS, recipients: [{ ...PARTS.recipients[0]!, ek: flip(PARTS.recipients[0]!.ek, i % 1120) }, PARTS.recipients[1]!] })],
      ['recipients[1].wk', (i) => ({ ...PARTS, recipients: [PARTS.recipients[0]!, { ...PARTS.recipients[1]!, wk: flip(PARTS.recipients[1]!.wk, i % 48) }] })],
    ];
    for (const [name, make] of targets) {
      for (const i of [0, 7, 11, 47, 1119, 3308]) {
        assert.equal(codeOf(() => open(JSON.stringify(make(i)), B.secretKeys, peersOfB)), 'ERR_SIGNATURE_INVALID', `${name}[${i}]`);
      }
    }
  });

  it('tampering the header: any byte of the protected header fails (malformed, unsupported or signature)', () => {
    const H = u8(PARTS.protected);
    const seen = new Set<string>();
    for (let i = 0; i < H.length; i++) {
      const bytes = Uint8Array.from(H);
      bytes[i]! ^= 0x01;
      const code = codeOf(() => open(JSON.stringify({ ...PARTS, protected: b64(bytes) }), B.secretKeys, peersOfB));
      assert.ok(['ERR_ENVELOPE_MALFORMED', 'ERR_UNSUPPORTED_ALGORITHM', 'ERR_SIGNATURE_INVALID', 'ERR_UNKNOWN_PEER'].includes(code), `byte ${i}: ${code}`);
      seen.add(code);
    }
    assert.ok(seen.has('ERR_SIGNATURE_INVALID') && seen.has('ERR_ENVELOPE_MALFORMED'));
    // canonical edits of meaningful fields → signature fails
    for (const mutate of [
      (h: Record<string, unknown>) => (h['createdAt'] = NOW + 1),
      (h: Record<string, unknown>) => (h['resources'] = ['Patient/p1']),
      (h: Record<string, unknown>) => (h['messageId'] = 'fixed-2'),
      (h: Record<string, unknown>) => ((h['recipients'] as { node: string }[])[1]!.node = 'hospital-d'),
    ]) {
      expectCode(JSON.stringify(editHeader(PARTS, mutate)), 'ERR_SIGNATURE_INVALID');
    }
  });

  it('recipient entries: kid edited, entries reordered, dropped or duplicated → ERR_ENVELOPE_MALFORMED', () => {
    const [r0, r1] = [PARTS.recipients[0]!, PARTS.recipients[1]!];
    const cases: Parts[] = [
      { ...PARTS, recipients: [{ ...r0, kid: r1.kid }, r1] },
      { ...PARTS, recipients: [r1, r0] },
      { ...PARTS, recipients: [r0] },
      { ...PARTS, recipients: [r0, r1, r1] },
      { ...PARTS, recipients: [] },
    ];
    for (const c of cases) expectCode(JSON.stringify(c), 'ERR_ENVELOPE_MALFORMED');
  });

  it('validly re-signed by the sender after changing ct, iv or a wrapped key → ERR_DECRYPT_FAILED', () => {
    const ct = u8(PARTS.ct);
    ct[0]! ^= 1;
    expectCode(JSON.stringify(resign({ ...PARTS, ct: b64(ct) }, A.secretKeys.sigSecretKey)), 'ERR_DECRYPT_FAILED');
    const iv = u8(PARTS.iv);
    iv[0]! ^= 1;
    expectCode(JSON.stringify(resign({ ...PARTS, iv: b64(iv) }, A.secretKeys.sigSecretKey)), 'ERR_DECRYPT_FAILED');
    const wk = u8(PARTS.recipients[0]!.wk);
    wk[5]! ^= 1;
    expectCode(JSON.stringify(resign({ ...PARTS, recipients: [{ ...PARTS.recipients[0]!, wk: b64(wk) }, PARTS.recipients[1]!] }, A.secretKeys.sigSecretKey)), 'ERR_DECRYPT_FAILED');
  });

  it('content-key commitment: a sender wrapping a different key for one recipient is caught (no invisible salamanders)', () => {
    const H = u8(PARTS.protected);
    const other = sealBase(C.publicKeys.kemPublicKey, utf8(SUITE_V2.hpkeInfo), H, new Uint8Array(32).fill(9));
    const forged = resign({ ...PARTS, recipients: [PARTS.recipients[0]!, { kid: C.publicKeys.kemKeyId, ek: b64(other.enc), wk: b64(other.ct) }] }, A.secretKeys.sigSecretKey);
    assert.deepEqual(open(JSON.stringify(forged), B.secretKeys, peersOfB).plaintext, PLAINTEXT);
    expectCode(JSON.stringify(forged), 'ERR_DECRYPT_FAILED', C.secretKeys);
    // the forged wrapped key itself is authentic HPKE: only the commitment stops it
    assert.equal(openBase(other.enc, C.secretKeys.kemSecretKey, utf8(SUITE_V2.hpkeInfo), H, other.ct).length, 32);
    assert.notEqual(hex(contentKeyCommitment(new Uint8Array(32).fill(9))), hex(u8((JSON.parse(Buffer.from(PARTS.protected, 'base64url').toString()) as { cekCommit: string }).cekCommit)));
  });

  it('a peer re-signing the envelope under its own name fails (sender is in the header and AAD)', () => {
    const asMallory = editHeader(PARTS, (h) => {
      h['sender'] = 'mallory';
      h['senderKid'] = M.publicKeys.sigKeyId;
    });
    expectCode(JSON.stringify(resign(asMallory, M.secretKeys.sigSecretKey)), 'ERR_DECRYPT_FAILED');
  });

  it('wrong recipient → ERR_NOT_FOR_THIS_NODE (clean, before any decapsulation)', () => {
    expectCode(ENV, 'ERR_NOT_FOR_THIS_NODE', D.secretKeys);
    // same node id, another key (e.g. the node lost its keys and made new ones)
    const newB = generateNodeKeys('hospital-b');
    expectCode(ENV, 'ERR_NOT_FOR_THIS_NODE', newB.secretKeys);
  });

  it('rotation: a previous X-Wing key still opens; once retired → ERR_NOT_FOR_THIS_NODE', () => {
    const s0 = createKeyStore('hospital-b');
    const env = seal(input(), A.secretKeys, keyStoreToPublicKeys(s0));
    const s1 = rotateKeyStore(s0);
    assert.deepEqual(open(env, keyStoreToSecretKeys(s1), peersOfB).plaintext, PLAINTEXT);
    const oldKid = keyStoreToPublicKeys(s0).kemKeyId;
    expectCode(env, 'ERR_NOT_FOR_THIS_NODE', keyStoreToSecretKeys(retireKey(s1, oldKid)));
  });

  it('unknown sender, or a revoked sender key (no longer in the peer config) → ERR_UNKNOWN_PEER', () => {
    expectCode(seal(input(), D.secretKeys, B.publicKeys), 'ERR_UNKNOWN_PEER');
    const replaced = generateNodeKeys('hospital-a');
    expectCode(ENV, 'ERR_UNKNOWN_PEER', B.secretKeys, new Map([['hospital-a', replaced.publicKeys]]));
    // a peer map entry under another name does not vouch for "hospital-a"
    expectCode(ENV, 'ERR_UNKNOWN_PEER', B.secretKeys, new Map([['hospital-a', { ...A.publicKeys, nodeId: 'hospital-x' }]]));
  });

  it('unknown version or algorithm → ERR_UNSUPPORTED_ALGORITHM (no negotiation, no downgrade)', () => {
    const muts: [string, (h: Record<string, unknown>) => void][] = [
      ['v /3', (h) => (h['v'] = 'tidegate-env/3')],
      ['hpke other draft', (h) => (h['hpke'] = 'RFC9180-base/draft-ietf-hpke-pq-04/0x647a-0x0001-0x0002')],
      ['hpke AES-128', (h) => (h['hpke'] = 'RFC9180-base/draft-ietf-hpke-pq-05/0x647a-0x0001-0x0001')],
      ['kem', (h) => (h['kem'] = 'X-Wing/draft-connolly-cfrg-xwing-kem-06')],
      ['enc', (h) => (h['enc'] = 'A128GCM')],
      ['sig', (h) => (h['sig'] = 'ML-DSA-44')],
    ];
    for (const [name, m] of muts) assert.equal(codeOf(() => open(JSON.stringify(editHeader(PARTS, m)), B.secretKeys, peersOfB)), 'ERR_UNSUPPORTED_ALGORITHM', name);
    const v1 = sealV1(input1(), A.secretKeys, B.publicKeys);
    assert.equal(codeOf(() => open(v1, B.secretKeys, peersOfB, { versions: ['tidegate-env/2'] })), 'ERR_UNSUPPORTED_ALGORITHM');
    assert.equal(codeOf(() => open(ENV, B.secretKeys, peersOfB, { versions: ['tidegate-env/1'] })), 'ERR_UNSUPPORTED_ALGORITHM');
  });

  it('downgrade ratchet: after a v2 envelope from a sender, its v1 envelopes are refused by the ReplayGuard', () => {
    const guard = new ReplayGuard({ now: () => NOW });
    const v1a = open(sealV1(input1(), A.secretKeys, B.publicKeys), B.secretKeys, peersOfB).header;
    guard.checkAndRecord(v1a); // v1 accepted while no v2 was seen
    const v2 = open(seal(input(), A.secretKeys, B.publicKeys), B.secretKeys, peersOfB).header;
    guard.checkAndRecord(v2);
    const v1b = open(sealV1(input1(), A.secretKeys, B.publicKeys), B.secretKeys, peersOfB).header;
    assert.equal(codeOf(() => guard.check(v1b)), 'ERR_UNSUPPORTED_ALGORITHM');
    // other senders are not affected
    const fromM = open(sealV1(input1(), M.secretKeys, B.publicKeys), B.secretKeys, peersOfB).header;
    guard.checkAndRecord(fromM);
    guard.forget('hospital-a');
    assert.equal(codeOf(() => guard.check(v1b)), 'ERR_UNSUPPORTED_ALGORITHM', 'forget() keeps the ratchet');
  });

  it('replay: the same message id again → ERR_REPLAY', () => {
    const guard = new ReplayGuard({ now: () => NOW });
    const first = open(ENV, B.secretKeys, peersOfB).header;
    guard.checkAndRecord(first);
    const again = open(ENV, B.secretKeys, peersOfB).header;
    assert.equal(codeOf(() => guard.check(again)), 'ERR_REPLAY');
    // C's guard is its own: the same envelope is accepted once there
    const gC = new ReplayGuard({ now: () => NOW });
    gC.checkAndRecord(open(ENV, C.secretKeys, peersOfB).header);
  });

  it('reading old data: v1 envelopes still open, with their v1 header', () => {
    const v1 = sealV1(input({ resources: ['Patient/p1'] }), A.secretKeys, B.publicKeys);
    const r = open(v1, B.secretKeys, peersOfB);
    assert.equal(r.header.v, 'tidegate-env/1');
    assert.equal(r.header.recipient, 'hospital-b');
    assert.deepEqual(r.plaintext, PLAINTEXT);
    assert.equal(peekHeader(v1).v, 'tidegate-env/1');
  });
});

describe('tidegate-env/2 malformed input (fast-check)', () => {
  const SEED = 20_261_130;
  const outcome = (s: unknown): string => codeOf(() => open(s as string, B.secretKeys, peersOfB));

  it('structural faults → ERR_ENVELOPE_MALFORMED', () => {
    const cases: unknown[] = [
      { ...PARTS, extra: 'x' },
      { ...PARTS, recipients: 'x' },
      { ...PARTS, recipients: [{ ...PARTS.recipients[0]!, extra: 'x' }, PARTS.recipients[1]!] },
      { ...PARTS, recipients: [{ ...PARTS.recipients[0]!, ek: `${PARTS.recipients[0]!.ek}A` }, PARTS.recipients[1]!] },
      { ...PARTS, recipients: [{ ...PARTS.recipients[0]!, wk: b64(new Uint8Array(47)) }, PARTS.recipients[1]!] },
      { ...PARTS, iv: b64(new Uint8Array(16)) },
      { ...PARTS, sig: b64(new Uint8Array(3308)) },
      { ...PARTS, ct: b64(new Uint8Array(15)) },
      editHeader(PARTS, (h) => ((h['recipients'] as unknown[]).push((h['recipients'] as unknown[])[0]))),
      editHeader(PARTS, (h) => (h['recipients'] = [])),
      editHeader(PARTS, (h) => (h['cekCommit'] = 'AAAA')),
      editHeader(PARTS, (h) => (h['resources'] = ['patient/p1'])),
      editHeader(PARTS, (h) => (h['extra'] = 1)),
      { ...PARTS, protected: Buffer.from(`${Buffer.from(PARTS.protected, 'base64url').toString()} `).toString('base64url') },
    ];
    for (const [i, c] of cases.entries()) assert.equal(outcome(JSON.stringify(c)), 'ERR_ENVELOPE_MALFORMED', `case ${i}`);
    assert.equal(outcome(`{"protected":"${'A'.repeat(SUITE.lengths.maxEnvelopeChars)}"}`), 'ERR_ENVELOPE_TOO_LARGE');
  });

  it('arbitrary JSON values and strings only ever give EnvelopeError', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.json(), fc.anything()), (v) => {
        const r = outcome(v);
        assert.ok(r.startsWith('ERR_'), r);
      }),
      { numRuns: 600, seed: SEED },
    );
  });

  it('random objects with v2 members (random base64url of right and wrong lengths) are rejected cleanly', () => {
    const bytes = (lens: number[]) => fc.constantFrom(...lens).chain((n) => fc.uint8Array({ minLength: n, maxLength: n }).map(b64));
    const entry = fc.record({ kid: fc.oneof(fc.constant(PARTS.recipients[0]!.kid), fc.string()), ek: bytes([1120, 1119]), wk: bytes([48, 32]) });
    fc.assert(
      fc.property(
        fc.record({
          protected: fc.oneof(fc.constant(PARTS.protected), bytes([1, 300])),
          recipients: fc.array(entry, { minLength: 0, maxLength: 3 }),
          iv: bytes([12, 11]),
          ct: bytes([0, 16, 40]),
          sig: fc.oneof(fc.constant(PARTS.sig), bytes([3309, 10])),
        }),
        (o) => {
          const r = outcome(JSON.stringify(o));
          assert.ok(r.startsWith('ERR_'), r);
        },
      ),
      { numRuns: 150, seed: SEED },
    );
  });

  it('a genuine v2 envelope with one decoded byte changed (any member, recipient entry, position, bit) never opens', () => {
    const members = ['protected', 'iv', 'ct', 'sig', 'r0.ek', 'r0.wk', 'r1.ek', 'r1.wk'] as const;
    fc.assert(
      fc.property(fc.constantFrom(...members), fc.nat(), fc.integer({ min: 1, max: 255 }), (name, pos, mask) => {
        const p: Parts = JSON.parse(ENV) as Parts;
        const [scope, field] = name.includes('.') ? (name.split('.') as [string, 'ek' | 'wk']) : [undefined, name as 'protected' | 'iv' | 'ct' | 'sig'];
        const get = (): string => (scope ? p.recipients[Number(scope[1])]![field as 'ek' | 'wk'] : p[field as 'protected']);
        const bytes = u8(get());
        bytes[pos % bytes.length]! ^= mask;
        if (scope) p.recipients[Number(scope[1])]![field as 'ek' | 'wk'] = b64(bytes);
        else (p as unknown as Record<string, string>)[field] = b64(bytes);
        const r = outcome(JSON.stringify(p));
        assert.ok(r.startsWith('ERR_'), `${name}@${pos % bytes.length}^${mask}: ${r}`);
      }),
      { numRuns: 150, seed: SEED },
    );
  });

  it('character edits of the serialized v2 envelope never open', () => {
    fc.assert(
      fc.property(fc.nat(), fc.string({ minLength: 0, maxLength: 2 }), (pos, ch) => {
        const i = pos % ENV.length;
        const env = ENV.slice(0, i) + ch + ENV.slice(i + 1);
        fc.pre(env !== ENV);
        const r = outcome(env);
        assert.ok(r.startsWith('ERR_'), `@${i}: ${r}`);
      }),
      { numRuns: 200, seed: SEED },
    );
  });

  it('control: the unmutated envelope opens for both recipients', () => {
    assert.deepEqual(open(ENV, B.secretKeys, peersOfB).plaintext, PLAINTEXT);
    assert.deepEqual(open(ENV, C.secretKeys, peersOfB).plaintext, PLAINTEXT);
  });
});
