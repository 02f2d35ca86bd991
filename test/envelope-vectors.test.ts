/**
 * Known-answer tests: X-Wing against draft-connolly-cfrg-xwing-kem Appendix C, and tidegate-env/1
 * against its own committed vector (test/vectors/tidegate-env-1-kat.json, docs/envelope.md §9).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { gcm } from '@noble/ciphers/aes.js';
import { hkdf } from '@noble/hashes/hkdf.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { ml_dsa65 } from '@noble/post-quantum/ml-dsa.js';
import { ml_kem768_x25519 } from '@noble/post-quantum/hybrid.js';
import { sealV1WithRandomness as sealWithRandomness, signatureInput } from '../src/envelope/v1.ts';
import { createKeyStore, EnvelopeError, keyStoreToPublicKeys, keyStoreToSecretKeys, open, peekHeader } from '../src/envelope/index.ts';
import type { SealInput } from '../src/envelope/index.ts';

const h = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const u8 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'base64url'));
const vectorsDir = new URL('./vectors/', import.meta.url);

/** Parses the draft's Appendix C text: "name value" or "name" + indented hex lines; blank line ends a vector. */
function parseXWingVectors(text: string): Record<string, string>[] {
  const out: Record<string, string>[] = [];
  let cur: Record<string, string> = {};
  let key = '';
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    if (line.trim() === '') {
      if (Object.keys(cur).length > 0) out.push(cur);
      cur = {};
    } else if (line.startsWith('  ')) {
      cur[key] += line.trim();
    } else {
      const [k, v] = line.trim().split(/\s+/);
      key = k!;
      cur[key] = v ?? '';
    }
  }
  if (Object.keys(cur).length > 0) out.push(cur);
  return out;
}

describe('X-Wing (ml_kem768_x25519) vs draft-connolly-cfrg-xwing-kem-10 Appendix C', () => {
  const vectors = parseXWingVectors(readFileSync(new URL('xwing-draft-connolly-cfrg-xwing-kem-10-appendix-C.txt', vectorsDir), 'utf8'));

  it('the vector file holds the three published vectors with the draft sizes', () => {
    assert.equal(vectors.length, 3);
    for (const v of vectors) {
      assert.deepEqual(Object.keys(v), ['seed', 'sk', 'pk', 'eseed', 'ct', 'ss']);
      assert.deepEqual([v.seed, v.sk, v.pk, v.eseed, v.ct, v.ss].map((x) => h(x!).length), [32, 32, 1216, 64, 1120, 32]);
    }
    assert.equal(vectors[0]!.ss, 'd2df0522128f09dd8e2c92b1e905c793d8f57a54c3da25861f10bf4ca613e384');
  });

  vectors.forEach((v, i) => {
    it(`vector ${i + 1}: GenerateKeyPairDerand, EncapsulateDerand and Decapsulate give the published pk, sk, ct, ss`, () => {
      const kp = ml_kem768_x25519.keygen(h(v.seed!));
      assert.equal(hex(kp.secretKey), v.sk);
      assert.equal(hex(kp.publicKey), v.pk);
      const enc = ml_kem768_x25519.encapsulate(h(v.pk!), h(v.eseed!));
      assert.equal(hex(enc.cipherText), v.ct);
      assert.equal(hex(enc.sharedSecret), v.ss);
      assert.equal(hex(ml_kem768_x25519.decapsulate(h(v.ct!), h(v.sk!))), v.ss);
      // a changed ciphertext byte gives another secret (implicit rejection), never the published one
      const bad = h(v.ct!);
      bad[0]! ^= 1;
      assert.notEqual(hex(ml_kem768_x25519.decapsulate(bad, h(v.sk!))), v.ss);
    });
  });
});

interface Kat {
  keys: {
    sender: { nodeId: string; mlDsa65SeedXi: string; mlDsa65PublicKeySha256: string; sigKeyId: string; xWingSeed: string };
    recipient: { nodeId: string; xWingSeed: string; xWingPublicKeySha256: string; kemKeyId: string; mlDsa65SeedXi: string };
  };
  input: { kind: string; messageId: string; resources: string[]; createdAt: number; plaintextUtf8: string };
  randomness: { xWingEseed: string; gcmIv: string; mlDsaRnd: string };
  intermediate: {
    canonicalHeader: string;
    xWingCiphertextSha256: string;
    xWingSharedSecret: string;
    contentKey: string;
    gcmCiphertextWithTag: string;
    signatureInputLength: number;
    signatureInputSha256: string;
    signatureSha256: string;
  };
  envelope: string;
}

describe('tidegate-env/1 known-answer vector (test/vectors/tidegate-env-1-kat.json)', () => {
  const kat = JSON.parse(readFileSync(new URL('tidegate-env-1-kat.json', vectorsDir), 'utf8')) as Kat;
  const sender = createKeyStore(kat.keys.sender.nodeId, { seeds: { kem: h(kat.keys.sender.xWingSeed), sig: h(kat.keys.sender.mlDsa65SeedXi) } });
  const recipient = createKeyStore(kat.keys.recipient.nodeId, { seeds: { kem: h(kat.keys.recipient.xWingSeed), sig: h(kat.keys.recipient.mlDsa65SeedXi) } });
  const senderPublic = keyStoreToPublicKeys(sender);
  const recipientSecret = keyStoreToSecretKeys(recipient);
  const recipientPublic = keyStoreToPublicKeys(recipient);
  const peers = new Map([[senderPublic.nodeId, senderPublic]]);
  const input: SealInput = { ...kat.input, plaintext: new TextEncoder().encode(kat.input.plaintextUtf8) };
  const fixedRandom = (): ((n: number) => Uint8Array) => {
    const queue = [h(kat.randomness.xWingEseed), h(kat.randomness.gcmIv), h(kat.randomness.mlDsaRnd)];
    return (n) => {
      const next = queue.shift();
      assert.ok(next !== undefined && next.length === n, `unexpected random(${n})`);
      return next;
    };
  };

  it('the keys derived from the seeds have the recorded public-key hashes and kids', () => {
    assert.equal(createHash('sha256').update(senderPublic.sigPublicKey).digest('hex'), kat.keys.sender.mlDsa65PublicKeySha256);
    assert.equal(senderPublic.sigKeyId, kat.keys.sender.sigKeyId);
    assert.equal(createHash('sha256').update(recipientPublic.kemPublicKey).digest('hex'), kat.keys.recipient.xWingPublicKeySha256);
    assert.equal(recipientPublic.kemKeyId, kat.keys.recipient.kemKeyId);
  });

  it('open() of the committed envelope yields the expected plaintext and header', () => {
    const { header, plaintext } = open(kat.envelope, recipientSecret, peers);
    assert.equal(new TextDecoder().decode(plaintext), kat.input.plaintextUtf8);
    assert.equal(header.messageId, kat.input.messageId);
    assert.deepEqual(header.resources, kat.input.resources);
    assert.equal(header.createdAt, kat.input.createdAt);
    assert.equal(header.sender, 'hospital-a');
    assert.equal(header.recipientKid, kat.keys.recipient.kemKeyId);
    assert.deepEqual(peekHeader(kat.envelope), header);
  });

  it('sealWithRandomness() with the same keys, input and randomness reproduces the envelope byte for byte', () => {
    const again = sealWithRandomness(input, keyStoreToSecretKeys(sender), recipientPublic, fixedRandom());
    assert.equal(again, kat.envelope);
    // control: one different random byte changes the output
    const other = sealWithRandomness(input, keyStoreToSecretKeys(sender), recipientPublic, (n) => {
      const b = fixedRandom()(64);
      return n === 64 ? b.map((x, i) => (i === 0 ? x ^ 1 : x)) : n === 12 ? h(kat.randomness.gcmIv) : h(kat.randomness.mlDsaRnd);
    });
    assert.notEqual(other, kat.envelope);
  });

  it('the intermediate values (header bytes, X-Wing secret, HKDF key, GCM output, signature input) match, recomputed independently', () => {
    const p = JSON.parse(kat.envelope) as Record<'protected' | 'ek' | 'iv' | 'ct' | 'sig', string>;
    const H = u8(p.protected);
    assert.equal(new TextDecoder().decode(H), kat.intermediate.canonicalHeader);
    assert.equal(createHash('sha256').update(u8(p.ek)).digest('hex'), kat.intermediate.xWingCiphertextSha256);
    const ss = ml_kem768_x25519.decapsulate(u8(p.ek), recipientSecret.kemSecretKey);
    assert.equal(hex(ss), kat.intermediate.xWingSharedSecret);
    const K = hkdf(sha256, ss, undefined, new TextEncoder().encode('tidegate-env/1 A256GCM'), 32);
    assert.equal(hex(K), kat.intermediate.contentKey);
    assert.equal(hex(u8(p.iv)), kat.randomness.gcmIv);
    assert.equal(hex(u8(p.ct)), kat.intermediate.gcmCiphertextWithTag);
    assert.equal(new TextDecoder().decode(gcm(K, u8(p.iv), H).decrypt(u8(p.ct))), kat.input.plaintextUtf8);
    const M = signatureInput(H, u8(p.ek), u8(p.iv), u8(p.ct));
    assert.equal(M.length, kat.intermediate.signatureInputLength);
    assert.equal(createHash('sha256').update(M).digest('hex'), kat.intermediate.signatureInputSha256);
    assert.equal(createHash('sha256').update(u8(p.sig)).digest('hex'), kat.intermediate.signatureSha256);
    const ctx = new TextEncoder().encode('tidegate-env/1');
    assert.ok(ml_dsa65.verify(u8(p.sig), M, senderPublic.sigPublicKey, { context: ctx }));
    // the ML-DSA signature is the FIPS 204 hedged signature with rnd = mlDsaRnd, reproducible
    const sig = ml_dsa65.sign(M, keyStoreToSecretKeys(sender).sigSecretKey, { context: ctx, extraEntropy: h(kat.randomness.mlDsaRnd) });
    assert.equal(hex(sig), hex(u8(p.sig)));
  });

  it('a single changed byte of the committed envelope does not open', () => {
    const p = JSON.parse(kat.envelope) as Record<string, string>;
    const ct = u8(p['ct']!);
    ct[3]! ^= 0x80;
    const tampered = JSON.stringify({ ...p, ct: Buffer.from(ct).toString('base64url') });
    assert.throws(() => open(tampered, recipientSecret, peers), (e: unknown) => e instanceof EnvelopeError && e.code === 'ERR_SIGNATURE_INVALID');
  });

  it('sealWithRandomness rejects a random source of the wrong length', () => {
    assert.throws(() => sealWithRandomness(input, keyStoreToSecretKeys(sender), recipientPublic, (n) => new Uint8Array(n - 1)), TypeError);
  });
});
