/**
 * Canonical JSON of audit events, and their SHA-256.
 *
 * The form is the JSON Canonicalization Scheme (RFC 8785): no whitespace, object members sorted by
 * the UTF-16 code units of their names (RFC 8785 §3.2.3), strings and numbers serialized as
 * ECMAScript `JSON.stringify` does (§3.2.2). Each stored line of the trail is exactly this form, so
 * "the SHA-256 of the previous event's canonical JSON" is the SHA-256 of the previous line's bytes.
 */
import { createHash } from 'node:crypto';

/**
 * Serializes a JSON value canonically (RFC 8785).
 * @param value - a JSON value (object members whose value is `undefined` are left out, as JSON.stringify does).
 * @returns The canonical text (UTF-16 string; stored as UTF-8).
 * @throws TypeError for a non-finite number or a value that is not JSON (function, bigint, symbol).
 */
export function canonicalJson(value: unknown): string {
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value);
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError('canonicalJson: non-finite number');
      return JSON.stringify(value);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'object': {
      if (value === null) return 'null';
      if (Array.isArray(value)) return `[${value.map((v) => (v === undefined ? 'null' : canonicalJson(v))).join(',')}]`;
      const obj = value as Record<string, unknown>;
      const parts: string[] = [];
      // Default sort compares UTF-16 code units, as RFC 8785 §3.2.3 asks.
      for (const k of Object.keys(obj).sort()) {
        const v = obj[k];
        if (v === undefined) continue;
        parts.push(`${JSON.stringify(k)}:${canonicalJson(v)}`);
      }
      return `{${parts.join(',')}}`;
    }
    default:
      throw new TypeError(`canonicalJson: not a JSON value (${typeof value})`);
  }
}

/**
 * SHA-256 (FIPS 180-4) of a text's UTF-8 bytes.
 * @param text - e.g. one canonical event line, without its newline.
 * @returns 64 lowercase hex characters.
 */
export function sha256Hex(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}
