/**
 * HPKE (RFC 9180) base mode as implemented in src/envelope/hpke.ts, checked against published vectors:
 * - RFC 9180 Appendix A.1.1: shared_secret → key, base_nonce, exporter_secret and the first
 *   encryption (checks LabeledExtract/LabeledExpand/KeySchedule independently of the KEM);
 * - draft-ietf-hpke-pq-05 Appendix A.5 (MLKEM768-X25519 = X-Wing, KEM id 0x647a, HKDF-SHA256,
 *   ChaCha20Poly1305): X-Wing key derivation from skRm, decapsulation of enc, encapsulation with
 *   ikmE as the X-Wing eseed, key schedule, encryptions and exports.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { ml_kem768_x25519 } from '@noble/post-quantum/hybrid.js';
import {
  HPKE_KEM_XWING,
  TIDEGATE_HPKE_SUITE,
  aeadOpen,
  aeadSeal,
  computeNonce,
  hpkeExport,
  hpkeSuiteId,
  keyScheduleBase,
  labeledExpand,
  labeledExtract,
  openBase,
  sealBase,
} from '../src/envelope/hpke.ts';

const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s, 'hex'));
const toHex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);

interface A11 {
  kem_id: number;
  kdf_id: number;
  aead_id: number;
  info: string;
  shared_secret: string;
  key: string;
  base_nonce: string;
  exporter_secret: string;
  encryptions: { seq: number; pt: string; aad: string; nonce: string; ct: string }[];
}

/** Parses the draft's text layout: `name: hex` with indented hex continuation lines; blocks per encryption/export. */
function parseDraftVector(text: string): { setup: Map<string, string>; encryptions: Map<string, string>[]; exports: Map<string, string>[] } {
  const setup = new Map<string, string>();
  const encryptions: Map<string, string>[] = [];
  const exports: Map<string, string>[] = [];
  let current = setup;
  let last: string | undefined;
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    if (/^A\.5\.1\.1\./.test(line)) {
      current = new Map();
      continue;
    }
    const m = /^\s+([A-Za-z_ ]+): ([0-9a-f]+)$/.exec(line);
    if (m) {
      const name = m[1] as string;
      if (name === 'sequence number') encryptions.push((current = new Map()));
      if (name === 'exporter_context') exports.push((current = new Map()));
      current.set(name, m[2] as string);
      last = name;
      continue;
    }
    const cont = /^\s+([0-9a-f]+)$/.exec(line);
    if (cont && last !== undefined) {
      current.set(last, (current.get(last) ?? '') + (cont[1] as string));
      continue;
    }
    last = undefined; // a heading
  }
  return { setup, encryptions, exports };
}

describe('HPKE RFC 9180 key schedule', () => {
  const v = JSON.parse(readFileSync(new URL('./vectors/hpke-rfc9180-appendix-A.1.1.json', import.meta.url), 'utf8')) as A11;
  const suite = { kem: v.kem_id, kdf: v.kdf_id, aead: v.aead_id };

  test('suite_id is "HPKE" || kem || kdf || aead (RFC 9180 §5.1)', () => {
    assert.equal(toHex(hpkeSuiteId(suite)), `${toHex(utf8('HPKE'))}002000010001`);
    assert.equal(toHex(hpkeSuiteId(TIDEGATE_HPKE_SUITE)), `${toHex(utf8('HPKE'))}647a00010002`);
  });

  test('RFC 9180 A.1.1: shared_secret → key, base_nonce, exporter_secret', () => {
    const ks = keyScheduleBase(suite, hex(v.shared_secret), hex(v.info));
    assert.equal(toHex(ks.key), v.key);
    assert.equal(toHex(ks.baseNonce), v.base_nonce);
    assert.equal(toHex(ks.exporterSecret), v.exporter_secret);
  });

  test('RFC 9180 A.1.1.1: first encryption (AES-128-GCM) and its open', () => {
    const ks = keyScheduleBase(suite, hex(v.shared_secret), hex(v.info));
    for (const e of v.encryptions) {
      const nonce = computeNonce(ks.baseNonce, e.seq);
      assert.equal(toHex(nonce), e.nonce);
      assert.equal(toHex(aeadSeal(suite.aead, ks.key, nonce, hex(e.aad), hex(e.pt))), e.ct);
      assert.equal(toHex(aeadOpen(suite.aead, ks.key, nonce, hex(e.aad), hex(e.ct))), e.pt);
    }
  });

  test('a changed info, shared secret or suite id changes every output', () => {
    const base = keyScheduleBase(suite, hex(v.shared_secret), hex(v.info));
    const others = [
      keyScheduleBase(suite, hex(v.shared_secret), utf8('other info')),
      keyScheduleBase(suite, hex(v.shared_secret).map((b, i) => (i === 0 ? b ^ 1 : b)), hex(v.info)),
      keyScheduleBase({ ...suite, kem: HPKE_KEM_XWING }, hex(v.shared_secret), hex(v.info)),
    ];
    for (const o of others) {
      assert.notEqual(toHex(o.key), toHex(base.key));
      assert.notEqual(toHex(o.baseNonce), toHex(base.baseNonce));
      assert.notEqual(toHex(o.exporterSecret), toHex(base.exporterSecret));
    }
  });

  test('labeled functions refuse impossible lengths and unknown KDF / AEAD ids', () => {
    const sid = hpkeSuiteId(suite);
    const prk = labeledExtract(sid, new Uint8Array(0), 'x', new Uint8Array(1));
    assert.equal(prk.length, 32);
    assert.throws(() => labeledExpand(sid, prk, 'x', new Uint8Array(0), 0), RangeError);
    assert.throws(() => labeledExpand(sid, prk, 'x', new Uint8Array(0), 255 * 32 + 1), RangeError);
    assert.throws(() => keyScheduleBase({ ...suite, kdf: 2 }, hex(v.shared_secret), hex(v.info)), RangeError);
    assert.throws(() => keyScheduleBase({ ...suite, aead: 0xffff }, hex(v.shared_secret), hex(v.info)), RangeError);
  });
});

describe('HPKE with X-Wing: draft-ietf-hpke-pq-05 Appendix A.5', () => {
  const text = readFileSync(new URL('./vectors/hpke-draft-ietf-hpke-pq-05-appendix-A.5.txt', import.meta.url), 'utf8');
  const { setup, encryptions, exports } = parseDraftVector(text);
  const get = (k: string): string => {
    const val = setup.get(k);
    assert.ok(val !== undefined, `vector field ${k}`);
    return val;
  };
  const suite = { kem: Number(get('kem_id')), kdf: Number(get('kdf_id')), aead: Number(get('aead_id')) };

  test('the vector is the X-Wing KEM (0x647a), HKDF-SHA256, ChaCha20Poly1305, base mode', () => {
    assert.deepEqual(suite, { kem: 0x647a, kdf: 1, aead: 3 });
    assert.equal(get('mode'), '0');
    assert.equal(hex(get('pkRm')).length, 1216);
    assert.equal(hex(get('enc')).length, 1120);
    assert.equal(encryptions.length, 3);
    assert.equal(exports.length, 3);
  });

  test('X-Wing: pkRm from skRm, Decap(enc, skRm) = shared_secret, EncapDerand(pkRm, ikmE) = (enc, shared_secret)', () => {
    assert.equal(toHex(ml_kem768_x25519.getPublicKey(hex(get('skRm')))), get('pkRm'));
    assert.equal(toHex(ml_kem768_x25519.decapsulate(hex(get('enc')), hex(get('skRm')))), get('shared_secret'));
    const e = ml_kem768_x25519.encapsulate(hex(get('pkRm')), hex(get('ikmE')));
    assert.equal(toHex(e.cipherText), get('enc'));
    assert.equal(toHex(e.sharedSecret), get('shared_secret'));
  });

  test('key schedule, encryptions (ChaCha20Poly1305) and exports', () => {
    const ks = keyScheduleBase(suite, hex(get('shared_secret')), hex(get('info')));
    assert.equal(toHex(ks.key), get('key'));
    assert.equal(toHex(ks.baseNonce), get('base_nonce'));
    assert.equal(toHex(ks.exporterSecret), get('exporter_secret'));
    for (const e of encryptions) {
      const nonce = computeNonce(ks.baseNonce, Number(e.get('sequence number')));
      assert.equal(toHex(nonce), e.get('nonce'));
      assert.equal(toHex(aeadSeal(suite.aead, ks.key, nonce, hex(e.get('aad')!), hex(e.get('pt')!))), e.get('ct'));
    }
    for (const x of exports) {
      assert.equal(toHex(hpkeExport(suite, ks.exporterSecret, hex(x.get('exporter_context')!), Number(x.get('L')))), x.get('exported_value'));
    }
  });
});

describe('HPKE SealBase/OpenBase, suite X-Wing / HKDF-SHA256 / AES-256-GCM', () => {
  test('round trip; a wrong key, aad, info, enc or ciphertext byte fails to open', () => {
    const r = ml_kem768_x25519.keygen();
    const other = ml_kem768_x25519.keygen();
    const info = utf8('info');
    const aad = utf8('aad');
    const pt = utf8('content key bytes, 32 of them..!');
    const { enc, ct } = sealBase(r.publicKey, info, aad, pt);
    assert.equal(enc.length, 1120);
    assert.equal(ct.length, pt.length + 16);
    assert.deepEqual(openBase(enc, r.secretKey, info, aad, ct), pt);
    assert.throws(() => openBase(enc, other.secretKey, info, aad, ct));
    assert.throws(() => openBase(enc, r.secretKey, info, utf8('aae'), ct));
    assert.throws(() => openBase(enc, r.secretKey, utf8('infp'), aad, ct));
    const enc2 = Uint8Array.from(enc);
    enc2[500]! ^= 1;
    assert.throws(() => openBase(enc2, r.secretKey, info, aad, ct));
    const ct2 = Uint8Array.from(ct);
    ct2[3]! ^= 0x80;
    assert.throws(() => openBase(enc, r.secretKey, info, aad, ct2));
  });

  test('SealBase with a fixed eseed is deterministic and equals EncapDerand + key schedule + AEAD by hand', () => {
    const r = ml_kem768_x25519.keygen(new Uint8Array(32).fill(7));
    const eseed = Uint8Array.from({ length: 64 }, (_, i) => i);
    const info = utf8('i');
    const aad = utf8('a');
    const pt = utf8('p');
    const a = sealBase(r.publicKey, info, aad, pt, eseed);
    const b = sealBase(r.publicKey, info, aad, pt, eseed);
    assert.deepEqual(a, b);
    const { cipherText, sharedSecret } = ml_kem768_x25519.encapsulate(r.publicKey, eseed);
    const ks = keyScheduleBase(TIDEGATE_HPKE_SUITE, sharedSecret, info);
    assert.deepEqual(a.enc, cipherText);
    assert.deepEqual(a.ct, aeadSeal(2, ks.key, ks.baseNonce, aad, pt));
  });
});
