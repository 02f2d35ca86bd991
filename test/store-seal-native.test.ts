/**
 * src/store/seal.ts seals records and computes resource tags on node:crypto (OpenSSL); this checks
 * them against an independent implementation, @noble/ciphers' AES-256-GCM and @noble/hashes'
 * HMAC-SHA256, which wrote `tidegate-store/1` before: same bytes for the same nonce, each side
 * opens the other's records, refusals with their codes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { gcm } from '@noble/ciphers/aes.js';
import { hmac } from '@noble/hashes/hmac.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { RecordKind, SealedRecordError, openRecord, recordAad, resourceTag, sealRecord } from '../src/store/seal.ts';
import type { RecordKindId } from '../src/store/seal.ts';

const key = new Uint8Array(randomBytes(32));
/** `tidegate-store/1` sealing on @noble/ciphers (the reference). */
const nobleSeal = (k: Uint8Array, kind: RecordKindId, rk: string, seq: number, plain: Uint8Array, nonce: Uint8Array): Uint8Array => {
  const ct = gcm(k, nonce, recordAad(kind, rk, seq)).encrypt(plain);
  return new Uint8Array([1, ...nonce, ...ct]);
};
const nobleOpen = (k: Uint8Array, kind: RecordKindId, rk: string, seq: number, sealed: Uint8Array): Uint8Array => gcm(k, sealed.subarray(1, 13), recordAad(kind, rk, seq)).decrypt(sealed.subarray(13));
const sizes = [0, 1, 15, 16, 17, 4096, 100_003];
const kinds = Object.values(RecordKind) as RecordKindId[];

test('seal.ts: the same bytes as @noble/ciphers for the same nonce, and each side opens the other', () => {
  for (const size of sizes) {
    for (const kind of kinds) {
      const plain = new Uint8Array(randomBytes(size));
      const sealed = sealRecord(key, kind, 'Patient/p-1', 3, plain);
      assert.equal(sealed.length, plain.length + 29);
      assert.equal(sealed[0], 1);
      const nonce = sealed.slice(1, 13);
      const reference = nobleSeal(key, kind, 'Patient/p-1', 3, plain, nonce);
      assert.deepEqual(Buffer.from(sealed), Buffer.from(reference), `size ${size}, kind ${kind}`);
      assert.deepEqual(Buffer.from(sealRecord(key, kind, 'Patient/p-1', 3, plain, () => nonce.slice())), Buffer.from(reference), 'an injected nonce is used');
      assert.deepEqual(Buffer.from(nobleOpen(key, kind, 'Patient/p-1', 3, sealed)), Buffer.from(plain));
      const opened = openRecord(key, kind, 'Patient/p-1', 3, reference);
      assert.deepEqual(Buffer.from(opened), Buffer.from(plain));
      assert.equal(Object.getPrototypeOf(opened), Uint8Array.prototype, 'a plain Uint8Array, not a Buffer view');
    }
  }
});

test('sealRecord draws a fresh nonce for every record', () => {
  const plain = new TextEncoder().encode('{"resourceType":"Patient"}');
  const a = sealRecord(key, RecordKind.state, 'Patient/p-1', 0, plain);
  const b = sealRecord(key, RecordKind.state, 'Patient/p-1', 0, plain);
  assert.notDeepEqual(Buffer.from(a.subarray(1, 13)), Buffer.from(b.subarray(1, 13)));
});

test('openRecord refuses a damaged, moved or foreign record with its code; a bad key is a TypeError', () => {
  const plain = new TextEncoder().encode('{"resourceType":"Observation","status":"final"}');
  const sealed = sealRecord(key, RecordKind.freshBody, 'Observation/o-1', 2, plain);
  const tampered = sealed.slice();
  tampered[20]! ^= 1;
  const badTag = sealed.slice();
  badTag[badTag.length - 1]! ^= 1;
  const version2 = sealed.slice();
  version2[0] = 2;
  const cases: Array<[string, () => Uint8Array, string]> = [
    ['tampered ciphertext', () => openRecord(key, RecordKind.freshBody, 'Observation/o-1', 2, tampered), 'ERR_SEALED_AUTH_FAILED'],
    ['tampered tag', () => openRecord(key, RecordKind.freshBody, 'Observation/o-1', 2, badTag), 'ERR_SEALED_AUTH_FAILED'],
    ['other kind', () => openRecord(key, RecordKind.state, 'Observation/o-1', 2, sealed), 'ERR_SEALED_AUTH_FAILED'],
    ['other version seq', () => openRecord(key, RecordKind.freshBody, 'Observation/o-1', 3, sealed), 'ERR_SEALED_AUTH_FAILED'],
    ['other resource', () => openRecord(key, RecordKind.freshBody, 'Observation/o-2', 2, sealed), 'ERR_SEALED_AUTH_FAILED'],
    ['other key', () => openRecord(new Uint8Array(32), RecordKind.freshBody, 'Observation/o-1', 2, sealed), 'ERR_SEALED_AUTH_FAILED'],
    ['too short', () => openRecord(key, RecordKind.freshBody, 'Observation/o-1', 2, sealed.subarray(0, 28)), 'ERR_SEALED_MALFORMED'],
    ['unknown format version', () => openRecord(key, RecordKind.freshBody, 'Observation/o-1', 2, version2), 'ERR_SEALED_UNSUPPORTED'],
  ];
  for (const [what, open, code] of cases) {
    assert.throws(open, (e: unknown) => e instanceof SealedRecordError && e.code === code && !e.message.includes('final'), what);
    if (code === 'ERR_SEALED_AUTH_FAILED') assert.throws(() => nobleOpen(what === 'other key' ? new Uint8Array(32) : key, what === 'other kind' ? RecordKind.state : RecordKind.freshBody, what === 'other resource' ? 'Observation/o-2' : 'Observation/o-1', what === 'other version seq' ? 3 : 2, what === 'tampered tag' ? badTag : what === 'tampered ciphertext' ? tampered : sealed), `${what}: the reference refuses it too`);
  }
  assert.throws(() => sealRecord(new Uint8Array(16), RecordKind.state, 'Patient/p-1', 0, plain), TypeError);
  assert.throws(() => openRecord(new Uint8Array(16), RecordKind.state, 'Patient/p-1', 0, sealed), TypeError);
});

test('resourceTag equals @noble/hashes HMAC-SHA256 of the UTF-8 key, ASCII and not', () => {
  for (const k of ['Patient/p-1', 'Observation/' + 'x'.repeat(64), 'Patient/ü-ß-名前', 'Patient/\ud800']) {
    assert.deepEqual(Buffer.from(resourceTag(key, k)), Buffer.from(hmac(sha256, key, new TextEncoder().encode(k))), k);
  }
  assert.throws(() => resourceTag(new Uint8Array(3), 'Patient/p-1'));
});
