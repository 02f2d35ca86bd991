// tidegate-env/1 (old data, still read): these tests seal with sealV1; tidegate-env/2 is in test/envelope-v2.test.ts.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ml_dsa65 } from '@noble/post-quantum/ml-dsa.js';
import {
  EnvelopeError,
  generateNodeKeys,
  KeyFileError,
  keyIdOf,
  open,
  peekHeader,
  publicKeysFromJson,
  publicKeysToJson,
  readPublicKeys,
  readSecretKeys,
  sealV1 as seal,
  signatureInput,
  SUITE,
  writeKeyFiles,
} from '../src/envelope/index.ts';
import type { EnvelopeErrorCode, NodePublicKeys, NodeSecretKeys, SealInput } from '../src/envelope/index.ts';

// ---------------------------------------------------------------------------------------------
// Fixtures and helpers

const enc = new TextEncoder();
const dec = new TextDecoder();
const SECRET_TEXT = 'Patient/123 has diagnosis ZEBRA-SECRET-4711';
const PLAINTEXT = enc.encode(SECRET_TEXT);

function seedOf(n: number): Uint8Array {
  return new Uint8Array(32).fill(n);
}

const A = generateNodeKeys('hospital-a', seedOf(1));
const B = generateNodeKeys('hospital-b', seedOf(2));
const C = generateNodeKeys('hospital-c', seedOf(3));

const peersOfB: ReadonlyMap<string, NodePublicKeys> = new Map([
  ['hospital-a', A.publicKeys],
  ['hospital-c', C.publicKeys],
]);
const peersOfC: ReadonlyMap<string, NodePublicKeys> = new Map([
  ['hospital-a', A.publicKeys],
  ['hospital-b', B.publicKeys],
]);

const INPUT: SealInput = {
  kind: 'fhir.resource.update',
  messageId: '0b7c1f5e-7d0a-4a4e-9a38-3c1e7b2d9f10',
  resources: ['Patient/123', 'Observation/obs-1.a'],
  plaintext: PLAINTEXT,
  createdAt: 1_700_000_000_000,
};

/** A->B envelope, sealed once and reused (sealing is randomized; each test copies the string). */
const ENV_AB = seal(INPUT, A.secretKeys, B.publicKeys);

type Parts = { protected: string; ek: string; iv: string; ct: string; sig: string };

function parts(env: string): Parts {
  return JSON.parse(env) as Parts;
}
function join5(p: Parts): string {
  return JSON.stringify(p);
}
function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64url');
}
function unb64(text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text, 'base64url'));
}
function flip(text: string, index: number): string {
  const bytes = unb64(text);
  const i = index < 0 ? bytes.length + index : index;
  bytes[i] = (bytes[i] ?? 0) ^ 0x01;
  return b64(bytes);
}
function canonical(h: Record<string, unknown>): string {
  const keys = Object.keys(h).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(h[k])}`).join(',')}}`;
}
/** Sets an unused low bit of the last character; Buffer decodes it to the same bytes. */
function setUnusedBits(text: string): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const last = alphabet.indexOf(text.slice(-1));
  const tweaked = `${text.slice(0, -1)}${alphabet[last | 1]}`;
  assert.deepEqual(unb64(tweaked), unb64(text)); // lenient decoders cannot tell them apart
  assert.notEqual(tweaked, text);
  return tweaked;
}
/** Re-encodes the protected header after `mutate`, canonically (sorted keys, compact). */
function editHeader(env: string, mutate: (h: Record<string, unknown>) => void): string {
  const p = parts(env);
  const h = JSON.parse(dec.decode(unb64(p.protected))) as Record<string, unknown>;
  mutate(h);
  return join5({ ...p, protected: b64(enc.encode(canonical(h))) });
}
/** Re-signs all parts with `signer` exactly as seal() does: models a peer that signs bad content. */
function resign(p: Parts, signer: NodeSecretKeys): Parts {
  const input = signatureInput(unb64(p.protected), unb64(p.ek), unb64(p.iv), unb64(p.ct));
  const sig = ml_dsa65.sign(input, signer.sigSecretKey, { context: enc.encode('tidegate-env/1') });
  return { ...p, sig: b64(sig) };
}

/** Asserts the error is an EnvelopeError with `code` and leaks nothing of the plaintext. */
function assertEnvelopeError(err: unknown, code: EnvelopeErrorCode): true {
  assert.ok(err instanceof EnvelopeError, `expected EnvelopeError, got ${String(err)}`);
  assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`);
  assert.equal(err.name, 'EnvelopeError');
  const dump = `${err.message}\n${err.stack ?? ''}\n${JSON.stringify(err)}\n${String(err.cause)}`;
  for (const needle of [SECRET_TEXT, 'ZEBRA', b64(PLAINTEXT), Buffer.from(PLAINTEXT).toString('hex')]) {
    assert.ok(!dump.includes(needle), `error text leaks plaintext (${needle})`);
  }
  assert.deepEqual(Object.keys(err).sort(), ['code', 'name']);
  return true;
}

function expectOpenError(
  env: string,
  code: EnvelopeErrorCode,
  self: NodeSecretKeys = B.secretKeys,
  peers: ReadonlyMap<string, NodePublicKeys> = peersOfB,
): void {
  let result: unknown = 'not thrown';
  assert.throws(
    () => {
      result = open(env, self, peers);
    },
    (err) => assertEnvelopeError(err, code),
  );
  assert.equal(result, 'not thrown', 'open() must not return anything on failure');
}

// ---------------------------------------------------------------------------------------------

describe('suite parameter table', () => {
  it('is frozen and lists the algorithm ids and lengths', () => {
    assert.ok(Object.isFrozen(SUITE));
    assert.ok(Object.isFrozen(SUITE.lengths));
    assert.deepEqual(
      [SUITE.v, SUITE.kem, SUITE.kdf, SUITE.aead, SUITE.sig],
      ['tidegate-env/1', 'X-Wing', 'HKDF-SHA256', 'A256GCM', 'ML-DSA-65'],
    );
    assert.equal(SUITE.lengths.kemCipherText, 1120);
    assert.equal(SUITE.lengths.signature, 3309);
    assert.throws(() => {
      (SUITE as { v: string }).v = 'x';
    }, TypeError);
  });
});

describe('keys', () => {
  it('generates keys with the documented lengths and key ids', () => {
    assert.equal(A.secretKeys.kemSecretKey.length, 32);
    assert.equal(A.secretKeys.sigSecretKey.length, 4032);
    assert.equal(A.publicKeys.kemPublicKey.length, 1216);
    assert.equal(A.publicKeys.sigPublicKey.length, 1952);
    // SHA-256 via node:crypto, independently of the implementation's noble sha256
    const expectedKid = createHash('sha256').update(A.publicKeys.kemPublicKey).digest().subarray(0, 16).toString('base64url');
    assert.equal(A.publicKeys.kemKeyId, expectedKid);
    assert.equal(A.publicKeys.kemKeyId.length, 22);
    assert.equal(A.secretKeys.kemKeyId, A.publicKeys.kemKeyId);
    assert.equal(A.secretKeys.sigKeyId, keyIdOf(A.publicKeys.sigPublicKey));
    assert.notEqual(A.publicKeys.kemKeyId, A.publicKeys.sigKeyId);
  });

  it('is deterministic for a seed, distinct across seeds, random without one', () => {
    const again = generateNodeKeys('hospital-a', seedOf(1));
    assert.deepEqual(again, A);
    assert.notEqual(B.publicKeys.kemKeyId, A.publicKeys.kemKeyId);
    assert.notEqual(B.publicKeys.sigKeyId, A.publicKeys.sigKeyId);
    const r1 = generateNodeKeys('hospital-a');
    const r2 = generateNodeKeys('hospital-a');
    assert.notEqual(r1.publicKeys.kemKeyId, r2.publicKeys.kemKeyId);
    assert.notEqual(r1.publicKeys.sigKeyId, A.publicKeys.sigKeyId);
  });

  it('rejects bad node ids and seeds', () => {
    for (const bad of ['', '../etc', 'a/b', '.hidden', 'x'.repeat(65), 'ü']) {
      assert.throws(() => generateNodeKeys(bad), KeyFileError, `nodeId ${JSON.stringify(bad)}`);
    }
    assert.throws(() => generateNodeKeys('ok', new Uint8Array(31)), RangeError);
  });

  describe('key files', () => {
    let dir = '';
    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'tidegate-envelope-'));
    });
    after(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it('writes the secret file with mode 0600, the public file 0644, and reads both back equal', async () => {
      const { secretPath, publicPath } = await writeKeyFiles(dir, A);
      assert.equal(secretPath, join(dir, 'hospital-a.secret.json'));
      assert.equal(publicPath, join(dir, 'hospital-a.public.json'));
      assert.equal((await stat(secretPath)).mode & 0o777, 0o600);
      assert.equal((await stat(publicPath)).mode & 0o777, 0o644);
      assert.deepEqual(await readSecretKeys(secretPath), A.secretKeys);
      assert.deepEqual(await readPublicKeys(publicPath), A.publicKeys);
      const onDisk = JSON.parse(await readFile(publicPath, 'utf8')) as unknown;
      assert.deepEqual(onDisk, publicKeysToJson(A.publicKeys));
    });

    it('refuses to overwrite by default; with overwrite, tightens a loose existing file to 0600', async () => {
      await assert.rejects(writeKeyFiles(dir, A), (err: NodeJS.ErrnoException) => err.code === 'EEXIST');
      const loose = join(dir, 'hospital-b.secret.json');
      await writeFile(loose, 'old', { mode: 0o666 });
      await chmod(loose, 0o666);
      await writeKeyFiles(dir, B, { overwrite: true });
      assert.equal((await stat(loose)).mode & 0o777, 0o600);
      assert.deepEqual(await readSecretKeys(loose), B.secretKeys);
    });

    it('refuses mismatched secret/public keys', async () => {
      await assert.rejects(
        writeKeyFiles(dir, { secretKeys: C.secretKeys, publicKeys: B.publicKeys }, { overwrite: true }),
        KeyFileError,
      );
    });

    it('rejects a corrupted secret key file (pairwise consistency, kid, lengths, base64url)', async () => {
      const path = join(dir, 'hospital-c.secret.json');
      await writeKeyFiles(dir, C);
      const good = JSON.parse(await readFile(path, 'utf8')) as Record<string, string>;
      const variants: Record<string, string>[] = [
        // bytes 64..127 of an ML-DSA secret key are tr = H(pk): not used to derive the public key,
        // so only the pairwise sign/verify test catches this
        { ...good, sigSecretKey: flip(good['sigSecretKey'] ?? '', 70) },
        // bytes 128.. start s1: changes the derived public key, so the kid no longer matches
        { ...good, sigSecretKey: flip(good['sigSecretKey'] ?? '', 130) },
        { ...good, kemSecretKey: flip(good['kemSecretKey'] ?? '', 0) },
        { ...good, kemKeyId: B.publicKeys.kemKeyId },
        { ...good, sigSecretKey: (good['sigSecretKey'] ?? '').slice(0, -4) },
        { ...good, kemSecretKey: `${good['kemSecretKey']}=` },
        { ...good, extra: 'x' },
        { ...good, format: 'tidegate-node-secret/2' },
      ];
      for (const v of variants) {
        await writeFile(path, JSON.stringify(v));
        await assert.rejects(readSecretKeys(path), KeyFileError);
      }
      await writeFile(path, 'not json');
      await assert.rejects(readSecretKeys(path), KeyFileError);
    });
  });

  it('round-trips public keys through JSON (object and string) and rejects bad input', () => {
    const json = publicKeysToJson(B.publicKeys);
    assert.equal(json.format, 'tidegate-node-public/1');
    assert.deepEqual(publicKeysFromJson(json), B.publicKeys);
    assert.deepEqual(publicKeysFromJson(JSON.stringify(json)), B.publicKeys);
    const bad: unknown[] = [
      null,
      [],
      'nope',
      { ...json, extra: 1 },
      { ...json, kemKeyId: json.sigKeyId },
      { ...json, kemPublicKey: json.kemPublicKey.slice(0, -8) },
      { ...json, sigPublicKey: json.sigPublicKey.replace(/[-_]/g, '+') },
      { ...json, kem: 'ML-KEM-768' },
      { ...json, nodeId: '../x' },
      { ...json, nodeId: 7 },
    ];
    for (const b of bad) assert.throws(() => publicKeysFromJson(b), KeyFileError);
    assert.throws(() => publicKeysToJson({ ...B.publicKeys, sigKeyId: A.publicKeys.sigKeyId }), KeyFileError);
  });
});

describe('seal / open', () => {
  it('round-trips plaintext and the header', () => {
    const { header, plaintext } = open(ENV_AB, B.secretKeys, peersOfB);
    assert.equal(dec.decode(plaintext), SECRET_TEXT);
    assert.deepEqual(header, {
      v: 'tidegate-env/1',
      kem: 'X-Wing',
      kdf: 'HKDF-SHA256',
      aead: 'A256GCM',
      sig: 'ML-DSA-65',
      sender: 'hospital-a',
      senderKid: A.publicKeys.sigKeyId,
      recipient: 'hospital-b',
      recipientKid: B.publicKeys.kemKeyId,
      messageId: INPUT.messageId,
      kind: INPUT.kind,
      resources: INPUT.resources,
      createdAt: 1_700_000_000_000,
    });
  });

  it('round-trips an empty and a 256 KiB payload, defaulting createdAt to now', () => {
    const big = new Uint8Array(256 * 1024).map((_, i) => (i * 31) & 0xff);
    for (const pt of [new Uint8Array(0), big]) {
      const before = Date.now();
      const env = seal({ kind: 'k', messageId: 'm', resources: [], plaintext: pt }, C.secretKeys, A.publicKeys);
      const out = open(env, A.secretKeys, new Map([['hospital-c', C.publicKeys]]));
      assert.deepEqual(out.plaintext, pt);
      assert.ok(out.header.createdAt >= before && out.header.createdAt <= Date.now());
      assert.deepEqual(out.header.resources, []);
    }
  });

  it('serializes as compact JSON with exactly protected/ek/iv/ct/sig, lengths per the suite', () => {
    assert.ok(!ENV_AB.includes(' ') && !ENV_AB.includes('\n'));
    const p = parts(ENV_AB);
    assert.deepEqual(Object.keys(p), ['protected', 'ek', 'iv', 'ct', 'sig']);
    assert.equal(unb64(p.ek).length, 1120);
    assert.equal(unb64(p.iv).length, 12);
    assert.equal(unb64(p.ct).length, PLAINTEXT.length + 16);
    assert.equal(unb64(p.sig).length, 3309);
    const headerText = dec.decode(unb64(p.protected));
    assert.equal(headerText, canonical(JSON.parse(headerText) as Record<string, unknown>));
    assert.ok(!ENV_AB.includes(SECRET_TEXT) && !ENV_AB.includes(b64(PLAINTEXT)));
  });

  it('is randomized: sealing twice gives different ek, iv, ct and sig', () => {
    const p1 = parts(ENV_AB);
    const p2 = parts(seal(INPUT, A.secretKeys, B.publicKeys));
    assert.equal(p1.protected, p2.protected);
    assert.notEqual(p1.ek, p2.ek);
    assert.notEqual(p1.iv, p2.iv);
    assert.notEqual(p1.ct, p2.ct);
    assert.notEqual(p1.sig, p2.sig);
  });

  it('peekHeader returns the header without keys, equal to the verified one', () => {
    assert.deepEqual(peekHeader(ENV_AB), open(ENV_AB, B.secretKeys, peersOfB).header);
    // returns a copy: mutating it does not affect a later parse
    const h = peekHeader(ENV_AB);
    h.resources.push('Patient/evil');
    assert.deepEqual(peekHeader(ENV_AB).resources, INPUT.resources);
  });

  it('seal rejects invalid input with TypeError', () => {
    const cases: [Partial<SealInput>, NodePublicKeys][] = [
      [{ resources: ['patient/1'] }, B.publicKeys],
      [{ resources: ['Patient/'] }, B.publicKeys],
      [{ messageId: '' }, B.publicKeys],
      [{ kind: 'has space' }, B.publicKeys],
      [{ createdAt: 1.5 }, B.publicKeys],
      [{}, { ...B.publicKeys, kemKeyId: C.publicKeys.kemKeyId }],
      [{}, { ...B.publicKeys, kemPublicKey: new Uint8Array(1216) }],
    ];
    for (const [patch, recipient] of cases) {
      assert.throws(() => seal({ ...INPUT, ...patch }, A.secretKeys, recipient), TypeError, JSON.stringify(patch));
    }
  });
});

describe('open: tampering', () => {
  it('header edit (re-encoded canonically) -> ERR_SIGNATURE_INVALID', () => {
    expectOpenError(editHeader(ENV_AB, (h) => (h['messageId'] = 'replayed-1')), 'ERR_SIGNATURE_INVALID');
    expectOpenError(editHeader(ENV_AB, (h) => (h['resources'] = ['Patient/999'])), 'ERR_SIGNATURE_INVALID');
    expectOpenError(editHeader(ENV_AB, (h) => (h['createdAt'] = 1_700_000_000_001)), 'ERR_SIGNATURE_INVALID');
  });

  it('protected byte flip that breaks the header -> ERR_ENVELOPE_MALFORMED', () => {
    const p = parts(ENV_AB);
    expectOpenError(join5({ ...p, protected: flip(p.protected, 0) }), 'ERR_ENVELOPE_MALFORMED'); // '{' -> 'z'
  });

  for (const member of ['ek', 'iv', 'ct', 'sig'] as const) {
    it(`${member} byte flip (first and last byte) -> ERR_SIGNATURE_INVALID`, () => {
      const p = parts(ENV_AB);
      expectOpenError(join5({ ...p, [member]: flip(p[member], 0) }), 'ERR_SIGNATURE_INVALID');
      expectOpenError(join5({ ...p, [member]: flip(p[member], -1) }), 'ERR_SIGNATURE_INVALID');
    });
  }

  it('swapping in a sig from another envelope -> ERR_SIGNATURE_INVALID', () => {
    const other = parts(seal(INPUT, A.secretKeys, B.publicKeys));
    expectOpenError(join5({ ...parts(ENV_AB), sig: other.sig }), 'ERR_SIGNATURE_INVALID');
  });

  // Past the signature, AES-GCM is the last line: a (compromised or buggy) peer signs bad content.
  it('validly signed but tampered ct / iv / ek -> ERR_DECRYPT_FAILED', () => {
    const p = parts(ENV_AB);
    expectOpenError(join5(resign({ ...p, ct: flip(p.ct, 0) }, A.secretKeys)), 'ERR_DECRYPT_FAILED');
    expectOpenError(join5(resign({ ...p, ct: flip(p.ct, -1) }, A.secretKeys)), 'ERR_DECRYPT_FAILED'); // tag
    expectOpenError(join5(resign({ ...p, iv: flip(p.iv, 5) }, A.secretKeys)), 'ERR_DECRYPT_FAILED');
    // ek from another encapsulation: ML-KEM implicit rejection / other secret, no decaps error
    const otherEk = parts(seal(INPUT, A.secretKeys, B.publicKeys)).ek;
    expectOpenError(join5(resign({ ...p, ek: otherEk }, A.secretKeys)), 'ERR_DECRYPT_FAILED');
    expectOpenError(join5(resign({ ...p, ek: flip(p.ek, 100) }, A.secretKeys)), 'ERR_DECRYPT_FAILED');
    // control: re-signing without changes still opens, so the failures above come from the edits
    assert.equal(dec.decode(open(join5(resign(p, A.secretKeys)), B.secretKeys, peersOfB).plaintext), SECRET_TEXT);
  });

  it('a peer re-signing the envelope under its own name fails GCM (sender is bound by the AAD)', () => {
    // C takes A's envelope to B, rewrites sender to itself and signs: the signature is valid for C,
    // but the header is the AES-GCM AAD, so B cannot be fooled into attributing A's content to C.
    const stolen = editHeader(ENV_AB, (h) => {
      h['sender'] = 'hospital-c';
      h['senderKid'] = C.publicKeys.sigKeyId;
    });
    expectOpenError(stolen, 'ERR_SIGNATURE_INVALID');
    expectOpenError(join5(resign(parts(stolen), C.secretKeys)), 'ERR_DECRYPT_FAILED');
  });
});

describe('open: addressing and peers', () => {
  it('sealed for B, opened by C (who knows A) -> ERR_NOT_FOR_THIS_NODE', () => {
    expectOpenError(ENV_AB, 'ERR_NOT_FOR_THIS_NODE', C.secretKeys, peersOfC);
  });

  it('sealed for an old key of B, opened with B\'s new key -> ERR_NOT_FOR_THIS_NODE', () => {
    const rotatedB = generateNodeKeys('hospital-b', seedOf(9));
    expectOpenError(ENV_AB, 'ERR_NOT_FOR_THIS_NODE', rotatedB.secretKeys, peersOfB);
  });

  it('header edited to claim recipient C -> ERR_SIGNATURE_INVALID (C opens it)', () => {
    const forC = editHeader(ENV_AB, (h) => {
      h['recipient'] = 'hospital-c';
      h['recipientKid'] = C.publicKeys.kemKeyId;
    });
    expectOpenError(forC, 'ERR_SIGNATURE_INVALID', C.secretKeys, peersOfC);
  });

  it('unknown sender -> ERR_UNKNOWN_PEER', () => {
    expectOpenError(ENV_AB, 'ERR_UNKNOWN_PEER', B.secretKeys, new Map());
    expectOpenError(ENV_AB, 'ERR_UNKNOWN_PEER', B.secretKeys, new Map([['hospital-c', C.publicKeys]]));
  });

  it('known sender id but a different signature key, or a map entry for another node -> ERR_UNKNOWN_PEER', () => {
    const otherA = generateNodeKeys('hospital-a', seedOf(7));
    expectOpenError(ENV_AB, 'ERR_UNKNOWN_PEER', B.secretKeys, new Map([['hospital-a', otherA.publicKeys]]));
    expectOpenError(ENV_AB, 'ERR_UNKNOWN_PEER', B.secretKeys, new Map([['hospital-a', C.publicKeys]]));
  });

  it('signature check happens before the recipient check', () => {
    const p = parts(ENV_AB);
    expectOpenError(join5({ ...p, sig: flip(p.sig, 10) }), 'ERR_SIGNATURE_INVALID', C.secretKeys, peersOfC);
  });
});

describe('open / peekHeader: malformed and unsupported', () => {
  const p = parts(ENV_AB);
  const malformed: [string, string][] = [
    ['empty string', ''],
    ['not JSON', '{protected:'],
    ['JSON null', 'null'],
    ['JSON array', '[]'],
    ['JSON string', '"x"'],
    ['missing sig', JSON.stringify({ ...p, sig: undefined })],
    ['missing protected', JSON.stringify({ ...p, protected: undefined })],
    ['extra member', JSON.stringify({ ...p, header: {} })],
    ['numeric member', JSON.stringify({ ...p, iv: 12 })],
    ['null member', JSON.stringify({ ...p, ct: null })],
    ['padded base64', JSON.stringify({ ...p, iv: `${p.iv}==` })],
    ['standard base64 alphabet', JSON.stringify({ ...p, iv: Buffer.from(unb64(p.iv)).toString('base64').replace(/[A-Za-z0-9]$/, '+') })],
    // ek is 1120 bytes (1120 % 3 = 1): its last base64url character carries 4 unused bits
    ['non-canonical base64url trailing bits', JSON.stringify({ ...p, ek: setUnusedBits(p.ek) })],
    ['whitespace in base64url', JSON.stringify({ ...p, ek: ` ${p.ek}` })],
    ['short ek', JSON.stringify({ ...p, ek: b64(unb64(p.ek).subarray(1)) })],
    ['long iv', JSON.stringify({ ...p, iv: b64(new Uint8Array(16)) })],
    ['short sig', JSON.stringify({ ...p, sig: b64(unb64(p.sig).subarray(0, 3308)) })],
    ['ct shorter than the tag', JSON.stringify({ ...p, ct: b64(new Uint8Array(15)) })],
    ['header not JSON', JSON.stringify({ ...p, protected: b64(enc.encode('not json')) })],
    ['header not UTF-8', JSON.stringify({ ...p, protected: b64(new Uint8Array([0x22, 0xff, 0x22])) })],
    ['header is an array', JSON.stringify({ ...p, protected: b64(enc.encode('[]')) })],
    ['header without v', editHeader(ENV_AB, (h) => delete h['v'])],
    ['header v not a string', editHeader(ENV_AB, (h) => (h['v'] = 1))],
    ['header missing field', editHeader(ENV_AB, (h) => delete h['kind'])],
    ['header extra field', editHeader(ENV_AB, (h) => (h['zip'] = 'DEF'))],
    ['header sender not a string', editHeader(ENV_AB, (h) => (h['sender'] = ['hospital-a']))],
    ['header createdAt string', editHeader(ENV_AB, (h) => (h['createdAt'] = '1700000000000'))],
    ['header createdAt fraction', editHeader(ENV_AB, (h) => (h['createdAt'] = 1.5))],
    ['header resources not array', editHeader(ENV_AB, (h) => (h['resources'] = 'Patient/123'))],
    ['header resource not Type/id', editHeader(ENV_AB, (h) => (h['resources'] = ['Patient/1/_history/2']))],
    ['header kid wrong form', editHeader(ENV_AB, (h) => (h['senderKid'] = 'short'))],
    ['header sender with path chars', editHeader(ENV_AB, (h) => (h['sender'] = '../a'))],
    [
      'header not canonical (whitespace)',
      JSON.stringify({ ...p, protected: b64(enc.encode(JSON.stringify(JSON.parse(dec.decode(unb64(p.protected))), null, 1))) }),
    ],
    [
      'header not canonical (key order)',
      JSON.stringify({ ...p, protected: b64(enc.encode(JSON.stringify(peekHeader(ENV_AB)))) }),
    ],
    [
      'header with a duplicate name',
      JSON.stringify({ ...p, protected: b64(enc.encode(dec.decode(unb64(p.protected)).replace('{', '{"aead":"A128GCM",'))) }),
    ],
  ];
  for (const [name, env] of malformed) {
    it(`${name} -> ERR_ENVELOPE_MALFORMED`, () => {
      expectOpenError(env, 'ERR_ENVELOPE_MALFORMED');
      assert.throws(() => peekHeader(env), (err) => assertEnvelopeError(err, 'ERR_ENVELOPE_MALFORMED'));
    });
  }

  it('non-string input -> ERR_ENVELOPE_MALFORMED', () => {
    expectOpenError(42 as unknown as string, 'ERR_ENVELOPE_MALFORMED');
    expectOpenError(Buffer.from(ENV_AB) as unknown as string, 'ERR_ENVELOPE_MALFORMED');
  });

  const unsupported: [string, (h: Record<string, unknown>) => void][] = [
    ['v tidegate-env/3 (unknown version)', (h) => (h['v'] = 'tidegate-env/3')],
    ['v tidegate-env/3 with another field set', (h) => {
      h['v'] = 'tidegate-env/3';
      h['recipients'] = [];
    }],
    ['kem ML-KEM-768', (h) => (h['kem'] = 'ML-KEM-768')],
    ['kdf HKDF-SHA512', (h) => (h['kdf'] = 'HKDF-SHA512')],
    ['aead A128GCM', (h) => (h['aead'] = 'A128GCM')],
    ['sig none', (h) => (h['sig'] = 'none')],
    ['sig ML-DSA-87', (h) => (h['sig'] = 'ML-DSA-87')],
  ];
  for (const [name, mutate] of unsupported) {
    it(`${name} -> ERR_UNSUPPORTED_ALGORITHM`, () => {
      const env = editHeader(ENV_AB, mutate);
      expectOpenError(env, 'ERR_UNSUPPORTED_ALGORITHM');
      assert.throws(() => peekHeader(env), (err) => assertEnvelopeError(err, 'ERR_UNSUPPORTED_ALGORITHM'));
    });
  }
});

describe('signatureInput', () => {
  it('is label || 0x00 || 8-byte big-endian length-prefixed fields', () => {
    const out = signatureInput(new Uint8Array([1, 2]), new Uint8Array([3]), new Uint8Array([]), new Uint8Array([4, 5, 6]));
    const label = [...enc.encode('tidegate-env/1 signature')];
    const lp = (bytes: number[]): number[] => [0, 0, 0, 0, 0, 0, 0, bytes.length, ...bytes];
    assert.deepEqual([...out], [...label, 0, ...lp([1, 2]), ...lp([3]), ...lp([]), ...lp([4, 5, 6])]);
  });

  it('moving a byte between fields changes it (length prefixes prevent ambiguity)', () => {
    const x = signatureInput(new Uint8Array([1, 2]), new Uint8Array([3]), new Uint8Array(0), new Uint8Array(0));
    const y = signatureInput(new Uint8Array([1]), new Uint8Array([2, 3]), new Uint8Array(0), new Uint8Array(0));
    assert.notDeepEqual(x, y);
  });
});
