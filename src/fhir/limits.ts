/**
 * Structural limits on request JSON, checked in one pass over the text before anything parses it.
 *
 * The FHIR JSON parser (json.ts, lossless-json) builds the whole value tree recursively; a body of
 * 16 MiB can hold a million nested arrays, a million-item array or one 16 MiB string, each of
 * which costs far more downstream (validation, the merge engine, gossip) than its bytes. This
 * scanner walks the text iteratively (no recursion, so no stack overflow at any depth) and refuses:
 * - nesting deeper than `maxDepth` objects/arrays;
 * - an array with more than `maxArrayItems` items, or a string longer than `maxStringLength`
 *   (UTF-16 code units after unescaping), at any depth;
 * - the same member name twice in one object (RFC 8259 §4 leaves duplicates undefined; parsers
 *   disagree on which one wins, so two replicas could read different resources from one text);
 * - member names `__proto__`, `constructor` and `prototype` (prototype-pollution gadgets; no FHIR
 *   element has these names, https://hl7.org/fhir/R4/json.html);
 * - `\u` escapes of unpaired UTF-16 surrogates (not Unicode scalar values: they cannot be written
 *   back as UTF-8, RFC 8259 §8.2), and any text that is not JSON (RFC 8259 grammar).
 */

/** Limits of {@link scanJsonText}. Sizes in items or UTF-16 code units. */
export interface JsonLimits {
  /** Most nested objects/arrays (the top-level value counts 1). Default 64. */
  maxDepth: number;
  /** Most items in one array, at any depth. Default 100,000 (a Bundle's entries are capped lower, bundle.ts). */
  maxArrayItems: number;
  /** Longest string (member names included), UTF-16 code units after unescaping. Default 4 Mi (4,194,304). */
  maxStringLength: number;
}

/** The defaults (see {@link JsonLimits}). */
export const DEFAULT_JSON_LIMITS: Readonly<JsonLimits> = Object.freeze({ maxDepth: 64, maxArrayItems: 100_000, maxStringLength: 4 * 1024 * 1024 });

/** Member names refused anywhere in a request body. */
export const FORBIDDEN_MEMBER_NAMES: ReadonlySet<string> = new Set(['__proto__', 'constructor', 'prototype']);

/** Why {@link scanJsonText} refused a text. */
export type JsonLimitCode = 'malformed' | 'depth' | 'array-length' | 'string-length' | 'duplicate-key' | 'forbidden-key' | 'unpaired-surrogate';

/** A refusal of {@link scanJsonText}: a stable `code`, a message naming no content, the offset in the text. */
export interface JsonLimitIssue {
  code: JsonLimitCode;
  /** Human-readable; quotes member names (at most 64 characters), never string values. */
  message: string;
  /** UTF-16 offset in the text where the problem was found. */
  offset: number;
}

interface Frame {
  /** Object (true) or array. */
  obj: boolean;
  /** Member names seen so far (objects). */
  keys: Set<string> | undefined;
  /** Items so far (arrays). */
  items: number;
}

const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
/** A run of string characters that need no attention: not `"`, not `\`, not a control character. */
const PLAIN = /[^"\\\u0000-\u001f]*/y;
const HEX4 = /^[0-9A-Fa-f]{4}$/;

const VALUE = 0;
const AFTER_VALUE = 1;
const KEY = 2;

/**
 * Checks JSON text against {@link JsonLimits} and the rules in the module doc, without building
 * the value. Linear time in the text's length, memory bounded by the depth and the member names
 * of the open objects.
 *
 * @param text - the decoded request body (any length).
 * @param limits - the limits; missing fields take {@link DEFAULT_JSON_LIMITS}.
 * @returns undefined when the text is one JSON value within the limits, else the first issue found.
 */
export function scanJsonText(text: string, limits: Partial<JsonLimits> = {}): JsonLimitIssue | undefined {
  const maxDepth = limits.maxDepth ?? DEFAULT_JSON_LIMITS.maxDepth;
  const maxItems = limits.maxArrayItems ?? DEFAULT_JSON_LIMITS.maxArrayItems;
  const maxString = limits.maxStringLength ?? DEFAULT_JSON_LIMITS.maxStringLength;
  const n = text.length;
  const stack: Frame[] = [];
  let i = 0;
  let state = VALUE;
  const fail = (code: JsonLimitCode, message: string): JsonLimitIssue => ({ code, message, offset: i });
  const ws = (): void => {
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) i++;
      else break;
    }
  };
  /** Reads the string at `i` (a `"`); returns its text when `wantText`, '' otherwise; an issue on failure. */
  const readString = (wantText: boolean): string | JsonLimitIssue => {
    const start = i;
    let j = i + 1;
    let length = 0;
    let escaped = false;
    for (;;) {
      PLAIN.lastIndex = j;
      PLAIN.test(text);
      length += PLAIN.lastIndex - j;
      j = PLAIN.lastIndex;
      if (j >= n) {
        i = j;
        return fail('malformed', 'Malformed JSON: unterminated string');
      }
      const c = text.charCodeAt(j);
      if (c === 0x22) break;
      if (c < 0x20) {
        i = j;
        return fail('malformed', 'Malformed JSON: control character in a string');
      }
      // a backslash
      escaped = true;
      const e = text.charCodeAt(j + 1);
      if (e === 0x75) {
        const hex = text.slice(j + 2, j + 6);
        if (!HEX4.test(hex)) {
          i = j;
          return fail('malformed', 'Malformed JSON: bad \\u escape');
        }
        const unit = parseInt(hex, 16);
        if (unit >= 0xd800 && unit <= 0xdbff) {
          // a high surrogate must be followed by an escaped low surrogate
          const next = text.slice(j + 6, j + 8) === '\\u' ? text.slice(j + 8, j + 12) : '';
          const low = HEX4.test(next) ? parseInt(next, 16) : -1;
          if (low < 0xdc00 || low > 0xdfff) {
            i = j;
            return fail('unpaired-surrogate', 'String holds an unpaired UTF-16 surrogate escape');
          }
          j += 12;
          length += 2;
        } else if (unit >= 0xdc00 && unit <= 0xdfff) {
          i = j;
          return fail('unpaired-surrogate', 'String holds an unpaired UTF-16 surrogate escape');
        } else {
          j += 6;
          length += 1;
        }
      } else if (e === 0x22 || e === 0x5c || e === 0x2f || e === 0x62 || e === 0x66 || e === 0x6e || e === 0x72 || e === 0x74) {
        j += 2;
        length += 1;
      } else {
        i = j;
        return fail('malformed', 'Malformed JSON: bad escape in a string');
      }
      if (length > maxString) {
        i = start;
        return fail('string-length', `A string is longer than ${maxString} characters`);
      }
    }
    if (length > maxString) {
      i = start;
      return fail('string-length', `A string is longer than ${maxString} characters`);
    }
    i = j + 1;
    if (!wantText) return '';
    return escaped ? (JSON.parse(text.slice(start, j + 1)) as string) : text.slice(start + 1, j);
  };

  for (;;) {
    ws();
    if (state === AFTER_VALUE) {
      const top = stack[stack.length - 1];
      if (top === undefined) return i < n ? fail('malformed', 'Malformed JSON: text after the value') : undefined;
      const c = text.charCodeAt(i);
      if (c === 0x2c) {
        i++;
        if (top.obj) state = KEY;
        else {
          if (++top.items > maxItems) return fail('array-length', `An array has more than ${maxItems} items`);
          state = VALUE;
        }
      } else if (c === (top.obj ? 0x7d : 0x5d)) {
        i++;
        stack.pop();
      } else return fail('malformed', i >= n ? 'Malformed JSON: unexpected end' : 'Malformed JSON: expected , or a closing bracket');
      continue;
    }
    if (state === KEY) {
      if (text.charCodeAt(i) !== 0x22) return fail('malformed', 'Malformed JSON: expected a member name');
      const key = readString(true);
      if (typeof key !== 'string') return key;
      const top = stack[stack.length - 1]!;
      if (FORBIDDEN_MEMBER_NAMES.has(key)) return fail('forbidden-key', `Member name "${key}" is not allowed`);
      if (top.keys!.has(key)) return fail('duplicate-key', `Duplicate member name "${key.slice(0, 64)}" in one object`);
      top.keys!.add(key);
      ws();
      if (text.charCodeAt(i) !== 0x3a) return fail('malformed', 'Malformed JSON: expected :');
      i++;
      state = VALUE;
      continue;
    }
    // VALUE
    const c = text.charCodeAt(i);
    if (c === 0x7b || c === 0x5b) {
      if (stack.length >= maxDepth) return fail('depth', `JSON nested deeper than ${maxDepth} levels`);
      i++;
      ws();
      if (c === 0x7b) {
        if (text.charCodeAt(i) === 0x7d) {
          i++;
          state = AFTER_VALUE;
        } else {
          stack.push({ obj: true, keys: new Set(), items: 0 });
          state = KEY;
        }
      } else if (text.charCodeAt(i) === 0x5d) {
        i++;
        state = AFTER_VALUE;
      } else {
        if (maxItems < 1) return fail('array-length', `An array has more than ${maxItems} items`);
        stack.push({ obj: false, keys: undefined, items: 1 });
        state = VALUE;
      }
      continue;
    }
    if (c === 0x22) {
      const s = readString(false);
      if (typeof s !== 'string') return s;
    } else if (c === 0x74 && text.startsWith('true', i)) i += 4;
    else if (c === 0x66 && text.startsWith('false', i)) i += 5;
    else if (c === 0x6e && text.startsWith('null', i)) i += 4;
    else {
      NUMBER.lastIndex = i;
      if (!NUMBER.test(text)) return fail('malformed', i >= n ? 'Malformed JSON: unexpected end' : 'Malformed JSON: unexpected character');
      i = NUMBER.lastIndex;
    }
    state = AFTER_VALUE;
  }
}
