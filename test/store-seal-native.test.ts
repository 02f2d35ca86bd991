import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { openRecordNative, resourceTagNative, sealRecordNative } from '../src/store/sqlite-store.ts';
import { RecordKind, SealedRecordError, openRecord, resourceTag, sealRecord } from '../src/store/seal.ts';
import type { RecordKindId } from '../src/store/seal.ts';

const key = new Uint8Array(randomBytes(32));
const sizes = [0, 1, 15, 16, 17, 4096, 100_003];
const kinds = Object.values(RecordKind) as RecordKindId[];

test('native seal: the same bytes as seal.ts for the same nonce, and each side opens the other', () => {
  for (const size of sizes) {
    for (const kind of kinds) {
      const plain = new Uint8Array(randomBytes(size));
      const sealed = sealRecordNative(key, kind, 'Patient/p-1', 3, plain);
      assert.equal(sealed.length, plain.length + 29);
      assert.equal(sealed[0], 1);
      const nonce = sealed.slice(1, 13);
      const reference = sealRecord(key, kind, 'Patient/p-1', 3, plain, () => nonce.slice());
      assert.deepEqual(Buffer.from(sealed), Buffer.from(reference), `size ${size}, kind ${kind}`);
      assert.deepEqual(Buffer.from(openRecord(key, kind, 'Patient/p-1', 3, sealed)), Buffer.from(plain));
      const opened = openRecordNative(key, kind, 'Patient/p-1', 3, sealRecord(key, kind, 'Patient/p-1', 3, plain));
      assert.deepEqual(Buffer.from(opened), Buffer.from(plain));
      assert.equal(Object.getPrototypeOf(opened), Uint8Array.prototype, 'a plain Uint8Array, not a Buffer view');
    }
  }
});

test('native seal draws a fresh nonce for every record', () => {
  const plain = new TextEncoder().encode('{"resourceType":"Patient"}');
  const a = sealRecordNative(key, RecordKind.state, 'Patient/p-1', 0, plain);
  const b = sealRecordNative(key, RecordKind.state, 'Patient/p-1', 0, plain);
  assert.notDeepEqual(Buffer.from(a.subarray(1, 13)), Buffer.from(b.subarray(1, 13)));
});

test('native open refuses what seal.ts refuses, with the same error code and message', () => {
  const plain = new TextEncoder().encode('{"resourceType":"Observation","status":"final"}');
  const sealed = sealRecordNative(key, RecordKind.freshBody, 'Observation/o-1', 2, plain);
  const tampered = sealed.slice();
  tampered[20]! ^= 1;
  const badTag = sealed.slice();
  badTag[badTag.length - 1]! ^= 1;
  const version2 = sealed.slice();
  version2[0] = 2;
  const cases: Array<[string, () => Uint8Array, () => Uint8Array]> = [
    ['tampered ciphertext', () => openRecordNative(key, RecordKind.freshBody, 'Observation/o-1', 2, tampered), () => openRecord(key, RecordKind.freshBody, 'Observation/o-1', 2, tampered)],
    ['tampered tag', () => openRecordNative(key, RecordKind.freshBody, 'Observation/o-1', 2, badTag), () => openRecord(key, RecordKind.freshBody, 'Observation/o-1', 2, badTag)],
    ['other kind', () => openRecordNative(key, RecordKind.state, 'Observation/o-1', 2, sealed), () => openRecord(key, RecordKind.state, 'Observation/o-1', 2, sealed)],
    ['other version seq', () => openRecordNative(key, RecordKind.freshBody, 'Observation/o-1', 3, sealed), () => openRecord(key, RecordKind.freshBody, 'Observation/o-1', 3, sealed)],
    ['other resource', () => openRecordNative(key, RecordKind.freshBody, 'Observation/o-2', 2, sealed), () => openRecord(key, RecordKind.freshBody, 'Observation/o-2', 2, sealed)],
    ['other key', () => openRecordNative(new Uint8Array(32), RecordKind.freshBody, 'Observation/o-1', 2, sealed), () => openRecord(new Uint8Array(32), RecordKind.freshBody, 'Observation/o-1', 2, sealed)],
    ['too short', () => openRecordNative(key, RecordKind.freshBody, 'Observation/o-1', 2, sealed.subarray(0, 28)), () => openRecord(key, RecordKind.freshBody, 'Observation/o-1', 2, sealed.subarray(0, 28))],
    ['unknown format version', () => openRecordNative(key, RecordKind.freshBody, 'Observation/o-1', 2, version2), () => openRecord(key, RecordKind.freshBody, 'Observation/o-1', 2, version2)],
  ];
  for (const [what, native, reference] of cases) {
    let expected: SealedRecordError | undefined;
    try {
      reference();
    } catch (e) {
      expected = e as SealedRecordError;
    }
    assert.ok(expected instanceof SealedRecordError, `${what}: seal.ts refuses it`);
    assert.throws(native, (e: unknown) => e instanceof SealedRecordError && e.code === expected.code && e.message === expected.message, what);
  }
  assert.throws(() => sealRecordNative(new Uint8Array(16), RecordKind.state, 'Patient/p-1', 0, plain), TypeError);
  assert.throws(() => openRecordNative(new Uint8Array(16), RecordKind.state, 'Patient/p-1', 0, sealed), TypeError);
});

test('native resource tag equals seal.ts resourceTag (HMAC-SHA256), ASCII and not', () => {
  for (const k of ['Patient/p-1', 'Observation/' + 'x'.repeat(64), 'Patient/ü-ß-名前', 'Patient/\ud800']) {
    assert.deepEqual(Buffer.from(resourceTagNative(key, k)), Buffer.from(resourceTag(key, k)), k);
  }
  assert.throws(() => resourceTagNative(new Uint8Array(3), 'Patient/p-1'));
});
