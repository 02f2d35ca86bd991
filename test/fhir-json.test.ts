/**
 * tidegate's canonical serialization (src/fhir/json.ts `canonicalStringify`) must give the same
 * bytes on every replica and across releases: a replica that wrote a different byte would see a
 * different resource. The implementation was rewritten for speed, so these property tests pin it
 * to the first implementation, kept here verbatim as the oracle, on random FHIR-like JSON:
 * lossless numbers, keys that sort around `resourceType`/`id`/`meta`, key orders already canonical
 * and not, strings needing escapes (quotes, control characters, lone surrogates), `undefined`
 * members and array items, deep nesting.
 *
 * Seeded (FC_SEED, default below); FC_RUNS overrides the number of runs. On failure fast-check
 * prints the seed, the path and a shrunk counterexample.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { canonicalStringify, isJsonObject, isLosslessNumber, LosslessNumber, parseFhirJson, RawJson, toPlainJson } from '../src/fhir/json.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';

const SEED = Number(process.env.FC_SEED ?? 20_260_601);
const RUNS = Number(process.env.FC_RUNS ?? 2000);

// ---------------------------------------------------------------------------------------------
// The oracle: canonicalStringify as first written (commit 8621a89), unchanged.

function oracleCompareKeys(a: string, b: string): number {
  const rank = (k: string): number => (k === 'resourceType' ? 0 : k === 'id' ? 1 : k === 'meta' ? 2 : 3);
  const d = rank(a) - rank(b);
  if (d !== 0) return d;
  return a < b ? -1 : a > b ? 1 : 0;
}

function oracleCanonicalStringify(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string' || typeof value === 'boolean') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new TypeError('Non-finite number');
    return String(value);
  }
  if (isLosslessNumber(value)) return (value as LosslessNumber).value;
  if (Array.isArray(value)) return `[${value.map((v) => oracleCanonicalStringify(v === undefined ? null : v)).join(',')}]`;
  if (typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    const keys = Object.keys(obj).filter((k) => obj[k] !== undefined).sort(oracleCompareKeys);
    return `{${keys.map((k) => `${JSON.stringify(k)}:${oracleCanonicalStringify(obj[k])}`).join(',')}}`;
  }
  throw new TypeError(`Not a JSON value: ${typeof value}`);
}

// ---------------------------------------------------------------------------------------------
// Random FHIR-like JSON.

/** Element names: the ones ranked first, common FHIR names, near-misses, and arbitrary text. */
const keyArb: fc.Arbitrary<string> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom('resourceType', 'id', 'meta', 'extension', 'url', 'valueString', 'valueDecimal', 'system', 'code', 'display', 'coding', 'text', 'status', 'subject', 'reference', 'given', 'family', 'name', 'versionId', 'lastUpdated', 'profile', '_birthDate', 'birthDate') },
  { weight: 1, arbitrary: fc.constantFrom('Id', 'ID', 'ids', 'metaData', 'resourcetype', 'a', 'Z', '0', '10', '9', '', ' ', 'é', '\u00e9t\u00e9', '\ud83d\ude00', '"', '\\', '\u0000') },
  { weight: 2, arbitrary: fc.string({ maxLength: 8 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 6 }) },
);

/** FHIR decimal/integer lexical forms, kept as LosslessNumber (precision lives in the text). */
const losslessArb: fc.Arbitrary<LosslessNumber> = fc
  .oneof(
    fc.constantFrom('0', '-0', '1.50', '0.0', '100', '1e3', '1E-7', '-12.500', '3.14159265358979323846', '12345678901234567890'),
    fc.integer().map(String),
    fc.double({ noNaN: true, noDefaultInfinity: true }).map(String),
    fc.tuple(fc.integer({ min: -999, max: 999 }), fc.nat(99_999), fc.nat(4)).map(([i, f, pad]) => `${i}.${String(f).padStart(pad + 1, '0')}`),
  )
  .map((t) => new LosslessNumber(t));

const leafArb: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 4, arbitrary: fc.string({ maxLength: 20 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 10 }) },
  { weight: 1, arbitrary: fc.constantFrom('a"b', 'back\\slash', 'line\nbreak', '\t', '\u2028\u2029', '\ud800', 'x\udc00y', '\u007f', '</script>') },
  { weight: 2, arbitrary: losslessArb },
  { weight: 1, arbitrary: fc.double({ noNaN: true, noDefaultInfinity: true }) },
  { weight: 1, arbitrary: fc.integer() },
  { weight: 1, arbitrary: fc.boolean() },
  { weight: 1, arbitrary: fc.constant(null) },
  { weight: 1, arbitrary: fc.constant(undefined) },
);

/** A plain object from key/value pairs, in the generated order or already in canonical order. */
function objectOf(pairs: Array<[string, unknown]>, canonicalOrder: boolean): Record<string, unknown> {
  const entries = canonicalOrder ? [...pairs].sort(([a], [b]) => oracleCompareKeys(a, b)) : pairs;
  const out: Record<string, unknown> = {};
  // defineProperty: a key `__proto__` is a member like any other, as JSON.parse makes it.
  for (const [k, v] of entries) Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true });
  return out;
}

const { json: jsonArb } = fc.letrec<{ json: unknown; obj: unknown; arr: unknown }>((tie) => ({
  json: fc.oneof({ depthSize: 'small', withCrossShrink: true }, leafArb, tie('obj'), tie('arr')),
  obj: fc.tuple(fc.array(fc.tuple(keyArb, tie('json')), { maxLength: 8 }), fc.boolean()).map(([pairs, canonical]) => objectOf(pairs, canonical)),
  arr: fc.array(tie('json'), { maxLength: 6 }),
}));

/** A resource-shaped object: resourceType/id/meta plus random elements. */
const resourceArb: fc.Arbitrary<Record<string, unknown>> = fc
  .tuple(
    fc.constantFrom('Patient', 'Observation', 'Encounter', 'Bundle'),
    fc.stringMatching(/^[A-Za-z0-9\-.]{1,64}$/),
    fc.option(fc.record({ versionId: fc.string({ maxLength: 12 }), lastUpdated: fc.constant('2024-05-01T10:00:00.000Z'), profile: fc.array(fc.webUrl(), { maxLength: 2 }) }), { nil: undefined }),
    fc.array(fc.tuple(keyArb, jsonArb), { maxLength: 10 }),
    fc.boolean(),
  )
  .map(([resourceType, id, meta, rest, canonical]) => objectOf([...rest, ['resourceType', resourceType], ['id', id], ['meta', meta]], canonical));

const params = { seed: SEED, numRuns: RUNS };

/** The text, or the error class and message, of one serialization. */
function outcomeOf(stringify: (v: unknown) => string, v: unknown): { text: string } | { error: string } {
  try {
    return { text: stringify(v) };
  } catch (err) {
    return { error: `${(err as Error).constructor.name}: ${(err as Error).message}` };
  }
}

describe('canonicalStringify (src/fhir/json.ts)', () => {
  it('gives the same text as the reference implementation on random FHIR-like JSON', () => {
    fc.assert(
      fc.property(jsonArb, (v) => {
        assert.deepEqual(outcomeOf(canonicalStringify, v), outcomeOf(oracleCanonicalStringify, v));
      }),
      params,
    );
  });

  it('gives the same text as the reference implementation on random resources, parsed or not', () => {
    fc.assert(
      fc.property(resourceArb, (r) => {
        const expected = oracleCanonicalStringify(r);
        assert.equal(canonicalStringify(r), expected);
        // The same resource as tidegate holds it: parsed losslessly from text in another key order.
        const reparsed = parseFhirJson(JSON.stringify(r, (_k, v: unknown) => (isLosslessNumber(v) ? Number((v as LosslessNumber).value) : v)));
        assert.equal(canonicalStringify(reparsed), oracleCanonicalStringify(reparsed));
      }),
      params,
    );
  });

  it('is a fixed point on its own output (what tidegate stores re-serializes to the same bytes)', () => {
    fc.assert(
      fc.property(resourceArb, (r) => {
        const text = canonicalStringify(r);
        assert.equal(canonicalStringify(parseFhirJson(text)), text);
      }),
      params,
    );
  });

  it('throws TypeError like the reference for values that are not JSON', () => {
    for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, -Infinity, 1n, Symbol('s'), () => 1, { a: [1, { b: Number.NaN }] }, { f: () => 1 }, [1n]]) {
      assert.throws(() => oracleCanonicalStringify(bad), TypeError);
      assert.throws(() => canonicalStringify(bad), TypeError);
    }
  });

  it('keeps decimal precision and the documented key order', () => {
    const v = parseFhirJson('{"valueQuantity":{"value":1.50,"unit":"kg"},"meta":{"versionId":"2"},"id":"x","resourceType":"Observation","_a":[1e3,-0.0]}');
    assert.equal(canonicalStringify(v), '{"resourceType":"Observation","id":"x","meta":{"versionId":"2"},"_a":[1e3,-0.0],"valueQuantity":{"unit":"kg","value":1.50}}');
  });
});

describe('toPlainJson (src/fhir/json.ts)', () => {
  const oraclePlain = (v: unknown): unknown => JSON.parse(oracleCanonicalStringify(v));
  /** Value, key order and the sign of zero: deepStrictEqual compares primitives with Object.is. */
  const same = (a: unknown, b: unknown): void => {
    assert.deepStrictEqual(a, b);
    assert.equal(JSON.stringify(a), JSON.stringify(b), 'same key order');
  };

  it('equals JSON.parse of the reference canonical text on random FHIR-like JSON', () => {
    fc.assert(
      fc.property(jsonArb, (v) => {
        const expected = outcomeOf((x) => JSON.stringify(oraclePlain(x)), v);
        assert.deepEqual(outcomeOf((x) => JSON.stringify(toPlainJson(x as never)), v), expected);
        if ('text' in expected) same(toPlainJson(v as never), oraclePlain(v));
      }),
      params,
    );
  });

  it('equals JSON.parse of the reference canonical text on random resources, parsed losslessly', () => {
    fc.assert(
      fc.property(resourceArb, (r) => {
        const parsed = parseFhirJson(oracleCanonicalStringify(r));
        same(toPlainJson(parsed), oraclePlain(parsed));
        same(toPlainJson(r as never), oraclePlain(r));
      }),
      params,
    );
  });

  it('keeps a member named __proto__ as an own member, and negative zero as JSON.parse reads it', () => {
    const v = parseFhirJson('{"__proto__":{"a":1},"n":-0,"m":-0.0}');
    const plain = toPlainJson(v) as Record<string, unknown>;
    assert.equal(Object.getPrototypeOf(plain), Object.prototype);
    assert.deepEqual(Object.keys(plain), ['__proto__', 'm', 'n']);
    assert.ok(Object.is(plain['n'], -0) && Object.is(plain['m'], -0));
    assert.ok(Object.is((toPlainJson({ z: -0 } as never) as { z: number }).z, 0), 'a JS -0 is written "0" in canonical text');
  });
});

describe('RawJson splice', () => {
  it('writes canonical text verbatim: byte-identical to serializing the parsed value', () => {
    fc.assert(
      fc.property(fc.array(resourceArb, { maxLength: 5 }), fc.webUrl(), (resources, base) => {
        const texts = resources.map((r) => canonicalStringify(r));
        const shell = (resource: (t: string) => unknown) => ({
          type: 'searchset',
          resourceType: 'Bundle',
          link: [{ relation: 'self', url: base }],
          entry: texts.map((t, i) => ({ search: { mode: 'match' }, resource: resource(t), fullUrl: `${base}/${i}` })),
          total: new LosslessNumber(String(texts.length)),
        });
        assert.equal(canonicalStringify(shell((t) => new RawJson(t))), oracleCanonicalStringify(shell((t) => parseFhirJson(t))));
      }),
      { ...params, numRuns: Math.max(1, Math.floor(RUNS / 4)) },
    );
  });

  it('is not a JSON object to isJsonObject, and toPlainJson sees the spliced value', () => {
    const raw = new RawJson('{"a":1.50}');
    assert.equal(isJsonObject(raw), false);
    assert.deepEqual(toPlainJson({ x: raw } as unknown as FhirJsonObject), { x: { a: 1.5 } });
  });
});
