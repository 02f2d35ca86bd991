/**
 * FHIR JSON that keeps the lexical form of numbers, and tidegate's canonical serialization.
 *
 * FHIR decimals carry precision in their lexical form (`1.50` is not `1.5`), see
 * https://hl7.org/fhir/R4/json.html#primitive and https://hl7.org/fhir/R4/datatypes.html#decimal.
 * `JSON.parse` loses that, so every body tidegate reads is parsed with lossless-json, and numbers
 * stay {@link LosslessNumber} objects until they are written out again.
 */
import { isLosslessNumber, LosslessNumber, parse as losslessParse } from 'lossless-json';

export { isLosslessNumber, LosslessNumber };

/** A parsed FHIR JSON value; numbers are {@link LosslessNumber}s, never `number`. */
export type FhirJson = string | boolean | LosslessNumber | null | FhirJson[] | { [key: string]: FhirJson };
/** A parsed FHIR JSON object. */
export type FhirJsonObject = { [key: string]: FhirJson };

/** Raised by {@link parseFhirJson} for text that is not JSON. `code` is stable. */
export class FhirJsonError extends Error {
  readonly code = 'ERR_FHIR_JSON_MALFORMED';
  override readonly name = 'FhirJsonError';
}

/**
 * Parses FHIR JSON text, keeping every number's lexical form.
 *
 * @param text - UTF-8 JSON text (any length).
 * @returns The parsed value; numbers are {@link LosslessNumber}.
 * @throws {@link FhirJsonError} when the text is not valid JSON (RFC 8259).
 */
export function parseFhirJson(text: string): FhirJson {
  try {
    return losslessParse(text) as FhirJson;
  } catch (err) {
    throw new FhirJsonError(`Malformed JSON: ${(err as Error).message}`);
  }
}

/**
 * Converts a plain JS value (for example from `JSON.parse` or a library) into {@link FhirJson},
 * turning `number`s into {@link LosslessNumber}s via their shortest round-trip form.
 *
 * @param value - any JSON-compatible value.
 * @returns The same value with numbers as LosslessNumber; `undefined` members are dropped.
 */
export function toFhirJson(value: unknown): FhirJson {
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return value;
  if (typeof value === 'number') return new LosslessNumber(String(value));
  if (isLosslessNumber(value)) return value as LosslessNumber;
  if (Array.isArray(value)) return value.map(toFhirJson);
  if (typeof value === 'object') {
    const out: FhirJsonObject = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      if (v !== undefined) out[k] = toFhirJson(v);
    }
    return out;
  }
  throw new TypeError(`Not a JSON value: ${typeof value}`);
}

/**
 * JSON text that {@link canonicalStringify} writes out verbatim in place of a value. It lets a
 * caller splice text that is already canonical (for example a stored resource body) into a larger
 * document without parsing and re-serializing it; the caller vouches that `text` is canonical
 * FHIR JSON (then the output is byte-identical to serializing the parsed value).
 * {@link isJsonObject} is false for it. It is not part of {@link FhirJson}: hold it only where the
 * value goes straight to {@link canonicalStringify}.
 */
export class RawJson {
  /** The JSON text, written as is. */
  readonly text: string;
  /** @param text - canonical JSON text of one value (not checked). */
  constructor(text: string) {
    this.text = text;
  }
}

/** Sort rank of a key in the canonical order: `resourceType` 0, `id` 1, `meta` 2, others 3. */
function keyRank(k: string): number {
  return k === 'resourceType' ? 0 : k === 'id' ? 1 : k === 'meta' ? 2 : 3;
}

/**
 * Key order of tidegate's canonical form: `resourceType`, `id`, `meta` first (in that order), then
 * every other key in ascending UTF-16 code-unit order, at every depth. Arrays keep their order.
 */
function compareKeys(a: string, b: string): number {
  const d = keyRank(a) - keyRank(b);
  if (d !== 0) return d;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Serializes FHIR JSON in tidegate's canonical form: no whitespace, keys ordered as documented in
 * docs/merge.md (`resourceType`, `id`, `meta`, then code-unit order), numbers in their original
 * lexical form, strings escaped as `JSON.stringify` does. Equal resources give equal bytes.
 * Members whose value is `undefined` are left out; `undefined` array items are written `null`.
 * {@link RawJson} values are written verbatim.
 *
 * Every replica must keep producing the same bytes for the same resource, so the output is pinned
 * by a property test against the first (reference) implementation (test/fhir-json.test.ts). This
 * one is faster only: no closures per call, no sort when an object's keys are already in order
 * (every body tidegate stores), and string concatenation instead of intermediate arrays.
 *
 * @param value - parsed FHIR JSON, or plain JS values (numbers are written with `String(n)`).
 * @returns The canonical text.
 * @throws TypeError for values that are not JSON (functions, symbols, bigint, non-finite numbers).
 */
export function canonicalStringify(value: unknown): string {
  return writeValue(value);
}

function writeValue(value: unknown): string {
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value);
    case 'object':
      if (value === null) return 'null';
      if (isLosslessNumber(value)) return (value as LosslessNumber).value;
      if (Array.isArray(value)) return writeArray(value);
      if (value instanceof RawJson) return value.text;
      return writeObject(value as Record<string, unknown>);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError('Non-finite number');
      return String(value);
    default:
      throw new TypeError(`Not a JSON value: ${typeof value}`);
  }
}

function writeArray(arr: readonly unknown[]): string {
  const n = arr.length;
  if (n === 0) return '[]';
  const first = arr[0];
  let out = '[' + (first === undefined ? 'null' : writeValue(first));
  for (let i = 1; i < n; i++) {
    const v = arr[i];
    out += ',' + (v === undefined ? 'null' : writeValue(v));
  }
  return out + ']';
}

/** `JSON.stringify(key)` of member names seen so far (FHIR's element names are a small set). */
const QUOTED_KEYS = new Map<string, string>();
/** Most member names {@link QUOTED_KEYS} remembers, and the longest (UTF-16 units); others are quoted each time. */
const QUOTED_KEYS_MAX = 4096;
const QUOTED_KEY_MAX_LENGTH = 64;

function quotedKey(k: string): string {
  let q = QUOTED_KEYS.get(k);
  if (q === undefined) {
    q = JSON.stringify(k);
    if (QUOTED_KEYS.size < QUOTED_KEYS_MAX && k.length <= QUOTED_KEY_MAX_LENGTH) QUOTED_KEYS.set(k, q);
  }
  return q;
}

function writeObject(obj: Record<string, unknown>): string {
  const keys = Object.keys(obj);
  const n = keys.length;
  for (let i = 1; i < n; i++) {
    if (compareKeys(keys[i - 1]!, keys[i]!) > 0) {
      keys.sort(compareKeys);
      break;
    }
  }
  let out = '{';
  let empty = true;
  for (let i = 0; i < n; i++) {
    const k = keys[i]!;
    const v = obj[k];
    if (v === undefined) continue;
    out += (empty ? '' : ',') + quotedKey(k) + ':' + writeValue(v);
    empty = false;
  }
  return out + '}';
}

/**
 * Converts FHIR JSON into plain JS (numbers become `number`), for libraries such as Medplum's
 * validator that expect `JSON.parse` output. Lossy for decimals: use only for validation or
 * FHIRPath, never for what is stored or sent.
 *
 * @param value - parsed FHIR JSON.
 * @returns A plain JS value.
 */
export function toPlainJson(value: FhirJson): unknown {
  // Same result as JSON.parse(canonicalStringify(value)) (pinned by test/fhir-json.test.ts), without the text.
  return plainValue(value);
}

function plainValue(value: unknown): unknown {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return value;
    case 'object': {
      if (value === null) return null;
      // JSON.parse and Number read a JSON number lexeme into the same double ("-0" is -0 for both).
      if (isLosslessNumber(value)) return Number((value as LosslessNumber).value);
      if (Array.isArray(value)) {
        const out = new Array<unknown>(value.length);
        for (let i = 0; i < value.length; i++) {
          const v: unknown = value[i];
          out[i] = v === undefined ? null : plainValue(v);
        }
        return out;
      }
      if (value instanceof RawJson) return JSON.parse(value.text);
      const obj = value as Record<string, unknown>;
      const keys = Object.keys(obj);
      for (let i = 1; i < keys.length; i++) {
        if (compareKeys(keys[i - 1]!, keys[i]!) > 0) {
          keys.sort(compareKeys);
          break;
        }
      }
      const out: Record<string, unknown> = {};
      for (const k of keys) {
        const v = obj[k];
        if (v === undefined) continue;
        // An own member named __proto__, as JSON.parse makes it (plain assignment would set the prototype).
        if (k === '__proto__') Object.defineProperty(out, k, { value: plainValue(v), enumerable: true, writable: true, configurable: true });
        else out[k] = plainValue(v);
      }
      return out;
    }
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError('Non-finite number');
      // String(-0) is "0": canonical text has no negative zero from a JS number.
      return value === 0 ? 0 : value;
    default:
      throw new TypeError(`Not a JSON value: ${typeof value}`);
  }
}

/** True for a non-null, non-array object. */
export function isJsonObject(value: unknown): value is FhirJsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !isLosslessNumber(value) && !(value instanceof RawJson);
}
