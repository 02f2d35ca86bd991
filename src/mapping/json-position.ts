/**
 * Source positions of JSON values: a small pass over JSON text (RFC 8259) that records, for every
 * value, its JSON Pointer (RFC 6901) and the line and column where it starts, so that a config
 * error found on the parsed value can be reported at its place in the file.
 *
 * It only locates; parsing proper is `JSON.parse`. On text that is not JSON it stops at the
 * first error and returns what it has plus the error's position.
 */

/** 1-based line and column (UTF-16 code units) of a place in a text. */
export interface SourcePosition {
  line: number;
  column: number;
}

/** Result of {@link jsonPositions}. */
export interface JsonPositions {
  /** JSON Pointer (`''` for the root, `/routes/hospital-b/send/0/where`) → where its value starts. */
  values: Map<string, SourcePosition>;
  /** JSON Pointer of an object member → where its key (the opening quote) starts. */
  keys: Map<string, SourcePosition>;
  /** Set when the text is not JSON: the message and where scanning stopped. */
  error: { message: string; position: SourcePosition } | undefined;
}

/** Escapes one reference token of a JSON Pointer (RFC 6901 §3: `~` → `~0`, `/` → `~1`). */
export function pointerToken(token: string | number): string {
  return String(token).replace(/~/g, '~0').replace(/\//g, '~1');
}

/** JSON Pointer of a path of keys and indexes, e.g. `['routes', 'hospital-b', 0]` → `/routes/hospital-b/0`. */
export function toPointer(path: ReadonlyArray<string | number | symbol>): string {
  return path.map((p) => `/${pointerToken(typeof p === 'symbol' ? String(p.description) : p)}`).join('');
}

/** Deepest nesting of objects and arrays {@link jsonPositions} reads; deeper is reported as not JSON. */
export const MAX_DEPTH = 256;

/**
 * Locates every value of a JSON text.
 * @param text - the JSON text (a BOM is skipped).
 * @returns Positions by JSON Pointer; `error` set (and the maps partial) when the text is not JSON,
 *   has a duplicate key in an object (reported at the second one), or nests objects and arrays
 *   deeper than {@link MAX_DEPTH}.
 */
export function jsonPositions(text: string): JsonPositions {
  const values = new Map<string, SourcePosition>();
  const keys = new Map<string, SourcePosition>();
  let i = text.charCodeAt(0) === 0xfeff ? 1 : 0;
  let line = 1;
  let lineStart = i; // columns count from after a byte order mark
  const pos = (at: number): SourcePosition => ({ line, column: at - lineStart + 1 });
  class Stop extends Error {}
  const fail = (message: string): never => {
    throw new Stop(message);
  };
  const ws = (): void => {
    for (;;) {
      const c = text[i];
      if (c === '\n') {
        line++;
        i++;
        lineStart = i;
      } else if (c === ' ' || c === '\t' || c === '\r') i++;
      else return;
    }
  };
  const str = (): string => {
    if (text[i] !== '"') fail('expected a string');
    const start = i;
    i++;
    while (i < text.length && text[i] !== '"') {
      if (text[i] === '\\') i++;
      else if (text[i] === '\n') fail('line break inside a string');
      i++;
    }
    if (i >= text.length) fail('unterminated string');
    i++;
    try {
      return JSON.parse(text.slice(start, i)) as string;
    } catch {
      return fail('invalid escape in a string');
    }
  };
  let depth = 0;
  const value = (ptr: string): void => {
    ws();
    values.set(ptr, pos(i));
    const c = text[i];
    // a configuration file is shallow: refuse deep nesting before it exhausts the stack
    if ((c === '{' || c === '[') && ++depth > MAX_DEPTH) fail(`nested deeper than ${MAX_DEPTH} levels`);
    if (c === '{') {
      i++;
      ws();
      if (text[i] === '}') {
        i++;
        depth--;
        return;
      }
      const seen = new Set<string>();
      for (;;) {
        ws();
        const keyStart = i;
        const keyAt = pos(i);
        const key = str();
        if (seen.has(key)) {
          // JSON.parse would keep the last one silently (RFC 8259 §4: names SHOULD be unique)
          i = keyStart;
          fail(`duplicate key ${JSON.stringify(key)} in an object`);
        }
        seen.add(key);
        const child = `${ptr}/${pointerToken(key)}`;
        keys.set(child, keyAt);
        ws();
        if (text[i] !== ':') fail(`expected ':' after "${key}"`);
        i++;
        value(child);
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          depth--;
          return;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c === '[') {
      i++;
      ws();
      if (text[i] === ']') {
        i++;
        depth--;
        return;
      }
      for (let n = 0; ; n++) {
        value(`${ptr}/${n}`);
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          depth--;
          return;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') {
      str();
      return;
    }
    const m = /^(?:true|false|null|-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?)/.exec(text.slice(i, i + 400));
    if (m === null) fail(c === undefined ? 'unexpected end of text' : `unexpected character ${JSON.stringify(c)}`);
    i += m![0].length;
  };
  try {
    value('');
    ws();
    if (i < text.length) fail('text after the JSON value');
    return { values, keys, error: undefined };
  } catch (err) {
    if (!(err instanceof Stop)) throw err;
    return { values, keys, error: { message: err.message, position: pos(i) } };
  }
}

/**
 * Where to report a problem at `pointer`: the value's position, else its key's, else the nearest
 * ancestor's (a missing member is reported at the object that should hold it).
 * @param positions - from {@link jsonPositions}.
 * @param pointer - JSON Pointer.
 * @returns The position; line 1 column 1 when nothing is known.
 */
export function positionOf(positions: JsonPositions, pointer: string): SourcePosition {
  let p = pointer;
  for (;;) {
    const found = positions.values.get(p) ?? positions.keys.get(p);
    if (found) return found;
    if (p === '') return { line: 1, column: 1 };
    p = p.slice(0, p.lastIndexOf('/'));
  }
}
