/**
 * Property tests (fast-check) of the tidegate-env/1 decoder: open() and peekHeader() on arbitrary,
 * structured-random and mutated input. They must never throw anything but EnvelopeError (TypeError
 * is tolerated by the contract, and counted so a regression shows), and never return plaintext for
 * an envelope that differs from a genuine one.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { EnvelopeError, generateNodeKeys, open, peekHeader, sealV1 as seal, SUITE } from '../src/envelope/index.ts';

const A = generateNodeKeys('hospital-a', new Uint8Array(32).fill(1));
const B = generateNodeKeys('hospital-b', new Uint8Array(32).fill(2));
const peers = new Map([['hospital-a', A.publicKeys]]);
const PLAINTEXT = new TextEncoder().encode('{"resourceType":"Patient","id":"p1"}');
const ENV = seal({ kind: 'updates', messageId: 'fuzz-1', resources: ['Patient/p1'], plaintext: PLAINTEXT, createdAt: 1_700_000_000_000 }, A.secretKeys, B.publicKeys);
const MEMBERS = ['protected', 'ek', 'iv', 'ct', 'sig'] as const;
const SEED = 20_261_129; // fixed: failures are reproducible; fast-check prints the counterexample

/** Runs fn; returns 'ok' or the error's code. Fails the property on any other exception type. */
function outcome(fn: () => unknown): string {
  try {
    fn();
    return 'ok';
  } catch (e) {
    if (e instanceof EnvelopeError) return e.code;
    if (e instanceof TypeError) return 'TypeError';
    throw new Error(`unexpected ${(e as Error)?.name}: ${(e as Error)?.message}`);
  }
}

const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64url');
const parts = JSON.parse(ENV) as Record<(typeof MEMBERS)[number], string>;

describe('fuzz: open() / peekHeader()', () => {
  it('arbitrary strings (including JSON-ish ones) only ever give EnvelopeError', () => {
    const jsonish = fc.oneof(fc.string(), fc.json(), fc.jsonValue().map((v) => JSON.stringify(v)), fc.string({ unit: 'binary' }));
    fc.assert(
      fc.property(jsonish, (s) => {
        const a = outcome(() => open(s, B.secretKeys, peers));
        const b = outcome(() => peekHeader(s));
        assert.notEqual(a, 'ok');
        assert.notEqual(a, 'TypeError');
        assert.notEqual(b, 'TypeError');
      }),
      { numRuns: 1000, seed: SEED },
    );
  });

  it('non-string inputs only ever give EnvelopeError', () => {
    fc.assert(
      fc.property(fc.anything(), (v) => {
        fc.pre(typeof v !== 'string');
        assert.equal(outcome(() => open(v as string, B.secretKeys, peers)), 'ERR_ENVELOPE_MALFORMED');
      }),
      { numRuns: 300, seed: SEED },
    );
  });

  it('objects with the five members set to random base64url (right and wrong lengths) are rejected cleanly', () => {
    const lengths = { protected: [1, 600], ek: [1120, 1121], iv: [12, 16], ct: [0, 64], sig: [3309, 3308] } as const;
    const member = (name: (typeof MEMBERS)[number]) =>
      fc.oneof(
        fc.constant(parts[name]),
        fc.constantFrom(...lengths[name]).chain((n) => fc.uint8Array({ minLength: n, maxLength: n }).map(b64)),
        fc.string(),
      );
    fc.assert(
      fc.property(fc.record({ protected: member('protected'), ek: member('ek'), iv: member('iv'), ct: member('ct'), sig: member('sig') }), (o) => {
        fc.pre(MEMBERS.some((m) => o[m] !== parts[m]));
        const r = outcome(() => open(JSON.stringify(o), B.secretKeys, peers));
        assert.ok(r.startsWith('ERR_'), r);
      }),
      { numRuns: 150, seed: SEED },
    );
  });

  it('a genuine envelope with one decoded byte changed never opens (any member, any position, any bit)', () => {
    fc.assert(
      fc.property(fc.constantFrom(...MEMBERS), fc.nat(), fc.integer({ min: 1, max: 255 }), (name, pos, mask) => {
        const bytes = new Uint8Array(Buffer.from(parts[name], 'base64url'));
        const i = pos % bytes.length;
        bytes[i]! ^= mask;
        const env = JSON.stringify({ ...parts, [name]: b64(bytes) });
        const r = outcome(() => open(env, B.secretKeys, peers));
        assert.ok(r.startsWith('ERR_'), `${name}[${i}] ^ ${mask}: ${r}`);
      }),
      { numRuns: 120, seed: SEED },
    );
  });

  it('character edits of the serialized envelope (replace, delete, insert, truncate) never open', () => {
    const edit = fc.oneof(
      fc.record({ op: fc.constant('replace' as const), pos: fc.nat(), ch: fc.string({ minLength: 1, maxLength: 1, unit: 'binary' }) }),
      fc.record({ op: fc.constant('delete' as const), pos: fc.nat(), ch: fc.constant('') }),
      fc.record({ op: fc.constant('insert' as const), pos: fc.nat(), ch: fc.string({ minLength: 1, maxLength: 3 }) }),
      fc.record({ op: fc.constant('truncate' as const), pos: fc.nat(), ch: fc.constant('') }),
    );
    fc.assert(
      fc.property(edit, ({ op, pos, ch }) => {
        const i = pos % ENV.length;
        const env =
          op === 'replace' ? ENV.slice(0, i) + ch + ENV.slice(i + 1)
          : op === 'delete' ? ENV.slice(0, i) + ENV.slice(i + 1)
          : op === 'insert' ? ENV.slice(0, i) + ch + ENV.slice(i)
          : ENV.slice(0, i);
        fc.pre(env !== ENV);
        const r = outcome(() => open(env, B.secretKeys, peers));
        assert.ok(r.startsWith('ERR_'), `${op}@${i}: ${r}`);
      }),
      { numRuns: 250, seed: SEED },
    );
  });

  it('control: the unmutated envelope opens (so the properties above are not vacuous)', () => {
    assert.deepEqual(open(ENV, B.secretKeys, peers).plaintext, PLAINTEXT);
  });
});

describe('size limits', () => {
  it('open()/peekHeader() reject input over maxEnvelopeChars before parsing it (ERR_ENVELOPE_TOO_LARGE, no JSON.parse call)', () => {
    // A huge but otherwise JSON-looking input: parsing it would take long; the length check must not.
    const huge = `{"protected":"${'A'.repeat(SUITE.lengths.maxEnvelopeChars)}"}`;
    // "before parsing" checked by counting JSON.parse calls, not by a wall-clock bound (a 250 ms
    // bound can miss on a loaded machine)
    const parse = JSON.parse;
    let parsed = 0;
    JSON.parse = ((...args: Parameters<typeof JSON.parse>) => {
      parsed++;
      return parse(...args);
    }) as typeof JSON.parse;
    try {
      assert.equal(outcome(() => open(huge, B.secretKeys, peers)), 'ERR_ENVELOPE_TOO_LARGE');
      assert.equal(outcome(() => peekHeader(huge)), 'ERR_ENVELOPE_TOO_LARGE');
    } finally {
      JSON.parse = parse;
    }
    assert.equal(parsed, 0, 'rejected without parsing');
    // control: the counter sees the decoder's parse of an input under the limit
    JSON.parse = ((...args: Parameters<typeof JSON.parse>) => {
      parsed++;
      return parse(...args);
    }) as typeof JSON.parse;
    try {
      assert.equal(outcome(() => peekHeader('{"protected":"AAAA"}')), 'ERR_ENVELOPE_MALFORMED');
    } finally {
      JSON.parse = parse;
    }
    assert.ok(parsed > 0, 'the decoder parses with JSON.parse (so the count above is meaningful)');
    assert.equal(SUITE.lengths.maxEnvelopeChars, 64 * 1024 * 1024);
  });

  it('exactly maxEnvelopeChars is not rejected for its size', () => {
    const edge = `"${'A'.repeat(SUITE.lengths.maxEnvelopeChars - 2)}"`;
    assert.equal(edge.length, SUITE.lengths.maxEnvelopeChars);
    assert.equal(outcome(() => peekHeader(edge)), 'ERR_ENVELOPE_MALFORMED');
  });

  it('seal() refuses plaintext over maxPlaintext (45 MiB) with TypeError', () => {
    const big = new Uint8Array(SUITE.lengths.maxPlaintext + 1);
    assert.throws(() => seal({ kind: 'k', messageId: 'm', resources: [], plaintext: big }, A.secretKeys, B.publicKeys), TypeError);
  });
});
