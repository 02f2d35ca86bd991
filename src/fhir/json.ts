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
 * Key order of tidegate's canonical form: `resourceType`, `id`, `meta` first (in that order), then
 * every other key in ascending UTF-16 code-unit order, at every depth. Arrays keep their order.
 */
function compareKeys(a: string, b: string): number {
  const rank = (k: string): number => (k === 'resourceType' ? 0 : k === 'id' ? 1 : k === 'meta' ? 2 : 3);
  const d = rank(a) - rank(b);
  if (d !== 0) return d;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Serializes FHIR JSON in tidegate's canonical form: no whitespace, keys ordered as documented in
 * docs/merge.md (`resourceType`, `id`, `meta`, then code-unit order), numbers in their original
 * lexical form, strings escaped as `JSON.stringify` does. Equal resources give equal bytes.
 *
 * @param value - parsed FHIR JSON, or plain JS values (numbers are written with `String(n)`).
 * @returns The canonical text.
 * @throws TypeError for values that are not JSON (functions, symbols, bigint).
 */
export function canonicalStringify(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string' || typeof value === 'boolean') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new TypeError('Non-finite number');
    return String(value);
  }
  if (isLosslessNumber(value)) return (value as LosslessNumber).value;
  if (Array.isArray(value)) return `[${value.map((v) => canonicalStringify(v === undefined ? null : v)).join(',')}]`;
  if (typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    const keys = Object.keys(obj).filter((k) => obj[k] !== undefined).sort(compareKeys);
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalStringify(obj[k])}`).join(',')}}`;
  }
  throw new TypeError(`Not a JSON value: ${typeof value}`);
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
  return JSON.parse(canonicalStringify(value));
}

/** True for a non-null, non-array object. */
export function isJsonObject(value: unknown): value is FhirJsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !isLosslessNumber(value);
}
