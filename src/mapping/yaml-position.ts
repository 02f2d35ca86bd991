/**
 * Mapping files in YAML (docs/mappings.md "The file"): a `*.yaml` / `*.yml` mapping file is read as
 * YAML 1.2 with the core schema (https://yaml.org/spec/1.2.2/#103-core-schema) by the `yaml`
 * package (`parseDocument`, https://eemeli.org/yaml/), and its value is located with the same
 * {@link JsonPositions} as a JSON file, so every check reports `file.yaml:line:column`.
 *
 * What a mapping file may use of YAML, so that every value has one place and a JSON value:
 * - one document; block or flow style; comments;
 * - keys are strings (an unquoted `0123:` or `true:` key is refused: quote it);
 * - no anchors or aliases (a problem inside an aliased value would be in two places);
 * - no explicit tags except `!!str` (which forces a string, like quoting);
 * - duplicate keys are an error (YAML 1.2 §3.2.1.1 requires unique keys).
 * The core schema reads `yes`/`no`/`on`/`off` as strings, but an unquoted `0123` as the number 123
 * and `1.10` as 1.1; {@link yamlTypeHint} turns the schema's "expected string" into "quote it".
 */
import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, visit } from 'yaml';
import type { Node as YamlNode } from 'yaml';
import { pointerToken, toPointer } from './json-position.ts';
import type { JsonPositions, SourcePosition } from './json-position.ts';

/** A plain (unquoted) scalar: its text and what YAML read it as. */
export interface PlainScalar {
  source: string;
  value: string | number | boolean | null;
  /** The comment YAML cut after the scalar on its line (` #…` to the end of the line), when there is one. */
  comment?: string;
}

/** {@link JsonPositions} of a YAML text, with fix hints and the plain scalars. */
export interface YamlPositions extends JsonPositions {
  /** Set when the text is not a usable mapping YAML document: the first problem, where, and how to fix it. */
  error: { message: string; position: SourcePosition; pointer: string; hint: string } | undefined;
  /** JSON Pointer → each plain (unquoted, untagged) scalar value. */
  plain: Map<string, PlainScalar>;
}

/** True for a file name ending in `.yaml` or `.yml` (any case). */
export function isYamlFile(file: string): boolean {
  return /\.ya?ml$/i.test(file);
}

/** Fix hints for `yaml` error codes (https://eemeli.org/yaml/#errors). */
function yamlHint(code: string): string {
  switch (code) {
    case 'DUPLICATE_KEY':
      return 'each key may appear once in a mapping: remove one of the two, or merge them';
    case 'TAB_AS_INDENT':
      return 'indent with spaces, not tabs';
    case 'MULTIPLE_DOCS':
      return 'a mapping file is one YAML document: remove the second "---" and what follows, or put it in its own file';
    case 'TAG_RESOLVE_FAILED':
      return 'remove the tag; mapping files use no custom tags (quote a value to keep it a string)';
    default:
      return 'YAML 1.2: indent nested members with spaces, start list items with "- ", and quote values that contain ": " or " #" or start with one of [ ] { } , & * ! | > \' " % @ `';
  }
}

/** Raised inside {@link yamlPositions} to stop at the first refused construct: where (`offset` in the text, `pointer`) and the fix `hint`. */
class Refused extends Error {
  readonly offset: number;
  readonly pointer: string;
  readonly hint: string;
  constructor(message: string, offset: number, pointer: string, hint: string) {
    super(message);
    this.offset = offset;
    this.pointer = pointer;
    this.hint = hint;
  }
}

/** How a plain scalar's value reads in a message: `the number 123`, `null`. */
function described(v: string | number | boolean | null): string {
  return v === null ? 'null' : `the ${typeof v} ${String(v)}`;
}

/**
 * Parses a YAML mapping file and locates every value.
 * @param text - the YAML text (UTF-8 decoded; a BOM is allowed).
 * @returns The file's value as JSON (objects, arrays, strings, numbers, booleans, null) and its
 *   positions (1-based lines and UTF-16 columns); `value` undefined and `positions.error` set for a
 *   syntax error, a duplicate key, an anchor, alias, tag other than `!!str`, or a key that is not a
 *   string. Never throws for bad input.
 */
export function yamlPositions(text: string): { value: unknown; positions: YamlPositions } {
  const lines = new LineCounter();
  const values = new Map<string, SourcePosition>();
  const keys = new Map<string, SourcePosition>();
  const plain = new Map<string, PlainScalar>();
  const pos = (offset: number): SourcePosition => {
    const p = lines.linePos(offset);
    return { line: p.line, column: p.col };
  };
  const doc = parseDocument(text, { version: '1.2', schema: 'core', uniqueKeys: true, prettyErrors: false, lineCounter: lines, resolveKnownTags: false });
  const problem = doc.errors[0] ?? doc.warnings[0];
  if (problem !== undefined) {
    // errors: the text is not YAML; warnings (an unknown tag): YAML this file may not use
    let message = `${doc.errors.length > 0 ? 'not YAML: ' : ''}${problem.message.split('\n')[0]}`;
    if (problem.code === 'DUPLICATE_KEY') {
      visit(doc, {
        Pair(_, pair) {
          if (isScalar(pair.key) && pair.key.range?.[0] === problem.pos[0]) message = `duplicate key ${JSON.stringify(String(pair.key.value))} in a mapping`;
        },
      });
    }
    return { value: undefined, positions: { values, keys, plain, error: { message, position: pos(problem.pos[0]), pointer: '', hint: yamlHint(problem.code) } } };
  }

  const noAnchors = 'write the value out in full; mapping files use no YAML anchors (&) or aliases (*)';
  /** Refuses an alias, an anchor or a tag other than `!!str` on `node` (a value or a key at `ptr`). */
  const refuseExtras = (node: YamlNode, ptr: string, at: number): void => {
    if (isAlias(node)) throw new Refused(`alias *${node.source} in a mapping file`, node.range?.[0] ?? at, ptr, noAnchors);
    if (node.anchor) throw new Refused(`anchor &${node.anchor} in a mapping file`, node.range?.[0] ?? at, ptr, noAnchors);
    if (node.tag !== undefined && node.tag !== 'tag:yaml.org,2002:str') throw new Refused(`tag ${node.tag.replace('tag:yaml.org,2002:', '!!')} in a mapping file`, node.range?.[0] ?? at, ptr, 'remove the tag; only !!str is allowed (quoting does the same)');
  };
  /** The JSON value of `node` at `ptr`; `at` is where the value is reported (see the module doc). */
  const walk = (node: YamlNode | null, ptr: string, at: number): unknown => {
    values.set(ptr, pos(at));
    if (node === null) return null;
    refuseExtras(node, ptr, at);
    if (isScalar(node)) {
      const v = node.value;
      if (v !== null && typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') throw new Refused('a value that is not a string, number, boolean or null', node.range?.[0] ?? at, ptr, 'quote it');
      if (node.type === 'PLAIN' && node.tag === undefined) {
        // ` #` ends a plain scalar (YAML 1.2 §6.6): keep what was cut, for {@link yamlCommentHint}
        const cut = node.range ? /^[ \t]+(#[^\r\n]*)/.exec(text.slice(node.range[1])) : null;
        plain.set(ptr, { source: node.range ? text.slice(node.range[0], node.range[1]) : String(v), value: v, ...(cut ? { comment: cut[1]!.trimEnd() } : {}) });
      }
      return v;
    }
    if (isSeq(node)) return node.items.map((item, i) => walk(item as YamlNode | null, `${ptr}/${i}`, (item as YamlNode | null)?.range?.[0] ?? at));
    if (isMap(node)) {
      const entries: [string, unknown][] = [];
      for (const pair of node.items) {
        const key = pair.key as YamlNode | null;
        const keyAt = key?.range?.[0] ?? at;
        if (key !== null) refuseExtras(key, ptr, keyAt);
        if (!isScalar(key) || typeof key.value !== 'string') {
          const shown = key?.range ? text.slice(key.range[0], key.range[1]) : '(empty)';
          const reads = isScalar(key) && key.type === 'PLAIN' && !key.tag ? ` (YAML reads it as ${described(key.value as string | number | boolean | null)})` : '';
          throw new Refused(`key ${shown} is not a string${reads}`, keyAt, ptr, isScalar(key) ? `quote the key: "${shown}"` : 'keys are plain or quoted strings');
        }
        const child = `${ptr}/${pointerToken(key.value)}`;
        keys.set(child, pos(keyAt));
        const value = pair.value as YamlNode | null;
        // A block collection starts on the line after its key: report it at the key.
        const block = (isMap(value) || isSeq(value)) && !value.flow;
        entries.push([key.value, walk(value, child, block || !value?.range ? keyAt : value.range[0])]);
      }
      return Object.fromEntries(entries);
    }
    throw new Refused('an unsupported YAML node', at, ptr, yamlHint(''));
  };
  try {
    const root = doc.contents as YamlNode | null;
    const value = walk(root, '', root?.range?.[0] ?? 0);
    return { value, positions: { values, keys, plain, error: undefined } };
  } catch (err) {
    if (!(err instanceof Refused)) throw err;
    return { value: undefined, positions: { values, keys, plain, error: { message: err.message, position: pos(err.offset), pointer: err.pointer, hint: err.hint } } };
  }
}

/**
 * A fix hint for a value YAML cut short: an unquoted scalar followed by ` #…` on its line, which
 * YAML 1.2 reads as a comment (https://yaml.org/spec/1.2.2/#66-comments), e.g. a FHIRPath condition
 * `code = 'A' #1` that then does not parse.
 * @param positions - positions of the file (JSON or YAML; only YAML has cut comments).
 * @param pointer - JSON Pointer of the value.
 * @returns `YAML took ' #…' as a comment: quote the whole condition`, or undefined.
 */
export function yamlCommentHint(positions: JsonPositions, pointer: string): string | undefined {
  const comment = (positions as Partial<YamlPositions>).plain?.get(pointer)?.comment;
  return comment === undefined ? undefined : `YAML took ' ${comment}' as a comment: quote the whole condition`;
}

/**
 * A fix hint for a schema issue caused by YAML's implicit typing, or undefined. Handles zod
 * `invalid_type` issues at a plain scalar: a string expected but YAML read a number, boolean or
 * null (`0123`, `1.10`, `true`, an empty value) → quote it; a boolean expected but YAML 1.2 read
 * `yes`/`no`/`on`/`off` as a string → write true or false; a list or object expected but the value
 * is empty → give it or remove the key.
 * @param positions - from {@link yamlPositions}.
 * @param issue - a zod issue (`code`, `path`, and `expected` for `invalid_type`).
 */
export function yamlTypeHint(positions: YamlPositions, issue: { code: string; path: PropertyKey[]; expected?: unknown }): string | undefined {
  if (issue.code !== 'invalid_type') return undefined;
  const scalar = positions.plain.get(toPointer(issue.path));
  if (scalar === undefined) return undefined;
  const { source, value } = scalar;
  if (issue.expected === 'string' && typeof value !== 'string') {
    if (source === '') return 'the value is empty, which YAML reads as null: give a value, or remove the key';
    return `YAML reads the unquoted ${source} as ${described(value)}: quote it ("${source}") to keep it a string`;
  }
  if (issue.expected === 'boolean' && typeof value === 'string' && /^(y|yes|n|no|on|off)$/i.test(source)) return `YAML 1.2 reads ${source} as a string: write true or false`;
  if ((issue.expected === 'array' || issue.expected === 'object') && value === null) return `the value ${source === '' ? 'is empty' : `${source} is null`}: give the ${issue.expected === 'array' ? 'list items' : 'members'}, or remove the key`;
  return undefined;
}
