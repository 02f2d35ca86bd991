/**
 * PATCH bodies (https://hl7.org/fhir/R4/http.html#patch): JSON Patch (RFC 6902,
 * `application/json-patch+json`) and FHIRPath Patch (https://hl7.org/fhir/R4/fhirpatch.html, a
 * `Parameters` resource in `application/fhir+json`), applied with `@medplum/core`'s `applyPatch`,
 * `parseFhirPathPatchParameters` and `fhirpathPatchTypedValue`. Where those engines are lax
 * (JSON Patch locations: {@link checkJsonPatchLocations}) or cannot do it (FHIRPath Patch on choice
 * elements: {@link applyChoiceOperation}), tidegate checks or applies the operation itself.
 *
 * The patch engines work on plain JS, where `1.50` becomes `1.5`. So the patch is applied to a
 * plain copy of the resource and the result is turned back into lossless FHIR JSON by
 * {@link restoreLexical}: every number keeps the lexical form it had in the original at the same
 * place (array items are matched by content first, so inserts and moves keep forms too), a new
 * number takes the lexical form it had in the patch, and only a computed number is written in its
 * shortest form. The caller then writes the patched body through the normal merge, diffed against
 * the version the patch was applied to, so only the elements the patch changed become CRDT
 * operations and the patch merges with concurrent edits.
 */
import { applyPatch, evalFhirPathTyped, fhirpathPatchTypedValue, getElementDefinition, parseFhirPathPatchParameters, toTypedValue } from '@medplum/core';
import type { Operation, TypedValue } from '@medplum/core';
import type { Parameters } from '@medplum/fhirtypes';
import { canonicalStringify, FhirJsonError, isJsonObject, isLosslessNumber, LosslessNumber, parseFhirJson, toPlainJson } from './json.ts';
import type { FhirJson, FhirJsonObject } from './json.ts';
import { badRequest, FhirError, outcome } from './outcomes.ts';

/** The PATCH formats tidegate accepts. */
export type PatchFormat = 'json-patch' | 'fhirpath-patch';

const JSON_PATCH_MEDIA = /^application\/json-patch\+json\b/i;
const FHIR_MEDIA = /^application\/(fhir\+)?json\b/i;

/**
 * The patch format named by a request's `Content-Type`.
 * @param contentType - the header value.
 * @returns The format, or undefined for any other media type (the caller answers 415).
 */
export function patchFormatOf(contentType: string | undefined): PatchFormat | undefined {
  if (!contentType) return undefined;
  if (JSON_PATCH_MEDIA.test(contentType)) return 'json-patch';
  if (FHIR_MEDIA.test(contentType)) return 'fhirpath-patch';
  return undefined;
}

const unprocessablePatch = (msg: string): FhirError => new FhirError(422, outcome('error', 'processing', msg));

/**
 * Applies a patch body to a resource.
 *
 * Errors name the failing operation by its index in the patch (counted from 0), its kind and its
 * path, e.g. `operation 2 (replace /birthDate): path does not exist`; they never quote values, of
 * the patch or of the resource (PHI). Path segments that are not element names or indexes (JSON
 * Pointer) and string literals of FHIRPath paths are shown as `…`.
 *
 * @param base - the resource as stored (lossless FHIR JSON); not modified.
 * @param format - from {@link patchFormatOf}.
 * @param text - the raw PATCH body.
 * @returns The patched resource (lossless FHIR JSON), `resourceType` and `id` unchanged.
 * @throws {@link FhirError} 400 when the body is not JSON, not a valid JSON Patch document
 *   (RFC 6902 §4: an array of operations, each with a known `op`, a JSON Pointer `path`, and the
 *   `value` or `from` its op needs) or not a valid FHIRPath Patch Parameters resource
 *   (https://hl7.org/fhir/R4/fhirpatch.html: every parameter an `operation` with a known `type`,
 *   a `path` and the parts its type needs), or when the patch changes `resourceType` or `id`;
 *   422 when an operation cannot be applied (missing path, failed `test`, FHIRPath error; a
 *   `move` into its own child, RFC 6902 §4.4; an array index beyond the end, with a leading zero,
 *   or `-` where a value must exist, RFC 6902 §4.1 and RFC 6901 §4; a choice-element value of a
 *   type the element does not allow). The whole patch then fails (RFC 6902 §5): nothing of it is
 *   applied.
 */
export function applyPatchBody(base: FhirJsonObject, format: PatchFormat, text: string): FhirJsonObject {
  let doc: FhirJson;
  try {
    doc = parseFhirJson(text);
  } catch (err) {
    if (err instanceof FhirJsonError) throw badRequest('Malformed JSON in PATCH body');
    throw err;
  }
  const pool: LosslessNumber[] = [];
  collectNumbers(doc, pool);
  const plain = toPlainJson(base) as Record<string, unknown>;
  let result: unknown;
  if (format === 'json-patch') {
    const ops = checkJsonPatch(doc);
    ops.forEach((op, i) => applyJsonPatchOperation(plain, op, i));
    result = plain;
  } else {
    if (!isJsonObject(doc) || doc.resourceType !== 'Parameters') {
      throw badRequest('A FHIRPath Patch body must be a Parameters resource (or send JSON Patch as application/json-patch+json)');
    }
    const ops = checkFhirPathPatch(doc);
    const typed = toTypedValue(plain);
    ops.forEach((op, i) => {
      const label = `operation ${i} (${op.type} ${shownFhirPath(op.path)})`;
      try {
        if (applyChoiceOperation(typed, op, label)) return;
        fhirpathPatchTypedValue(typed, parseFhirPathPatchParameters({ resourceType: 'Parameters', parameter: [op.parameter] }));
      } catch (err) {
        if (err instanceof FhirError) throw err;
        throw unprocessablePatch(`${label}: ${fhirPathFailure(err)}`);
      }
    });
    result = typed.value;
  }
  const patched = restoreLexical(result, base, pool);
  if (!isJsonObject(patched)) throw badRequest('The patch must leave a resource (a JSON object)');
  if (patched.resourceType !== base.resourceType) throw badRequest('A patch may not change resourceType', ['resourceType']);
  if (patched.id !== base.id) throw badRequest('A patch may not change id', ['id']);
  return patched;
}

/** The operations of RFC 6902 §4. */
const JSON_PATCH_OPS = ['add', 'remove', 'replace', 'move', 'copy', 'test'];
/** A JSON Pointer (RFC 6901 §3): empty, or `/`-separated segments where `~` is only `~0` or `~1`. */
const JSON_POINTER = /^(\/([^~/]|~[01])*)*$/;

/**
 * Checks a JSON Patch document (RFC 6902 §4) before anything is applied.
 * @param doc - the parsed body.
 * @returns The operations, as plain JSON for the patch engine.
 * @throws {@link FhirError} 400 naming the first invalid operation and what is wrong with it.
 */
function checkJsonPatch(doc: FhirJson): Operation[] {
  if (!Array.isArray(doc) || doc.length === 0) throw badRequest('A JSON Patch body must be a JSON array of operations (at least one), such as [{"op":"replace","path":"/gender","value":"female"}]');
  doc.forEach((raw, i) => {
    if (!isJsonObject(raw)) throw badRequest(`operation ${i}: must be an object with "op" and "path"`);
    const op = raw.op;
    if (typeof op !== 'string' || !JSON_PATCH_OPS.includes(op)) throw badRequest(`operation ${i}: op must be one of ${JSON_PATCH_OPS.join(', ')}`);
    if (typeof raw.path !== 'string') throw badRequest(`operation ${i} (${op}): path is required (a JSON Pointer such as /birthDate)`);
    if (!JSON_POINTER.test(raw.path)) throw badRequest(`operation ${i} (${op}): path must be a JSON Pointer such as /birthDate (RFC 6901)`);
    const label = `operation ${i} (${op} ${shownPointer(raw.path)})`;
    if ((op === 'add' || op === 'replace' || op === 'test') && !('value' in raw)) throw badRequest(`${label}: value is required`);
    if ((op === 'move' || op === 'copy') && (typeof raw.from !== 'string' || !JSON_POINTER.test(raw.from))) throw badRequest(`${label}: from is required (a JSON Pointer such as /birthDate)`);
  });
  return toPlainJson(doc) as Operation[];
}

/**
 * Applies one checked JSON Patch operation to `target` (mutated).
 * @throws {@link FhirError} 422 `operation i (op path): reason` when it cannot be applied.
 */
function applyJsonPatchOperation(target: Record<string, unknown>, op: Operation, i: number): void {
  const label = `operation ${i} (${op.op} ${shownPointer(op.path)})`;
  checkJsonPatchLocations(target, op, label);
  let error: Error | null | undefined;
  try {
    error = applyPatch(target, [op])[0];
  } catch {
    throw unprocessablePatch(`${label}: could not be applied`);
  }
  if (!error) return;
  if (error.name === 'TestError') throw unprocessablePatch(`${label}: the value differs`);
  if (error.name === 'MissingError') {
    const from = 'from' in op ? op.from : undefined;
    if (from !== undefined && error.message.endsWith(`: ${from}`)) throw unprocessablePatch(`${label}: from path ${shownPointer(from)} does not exist`);
    throw unprocessablePatch(`${label}: ${op.op === 'add' || op.op === 'move' || op.op === 'copy' ? 'the parent of path does not exist' : 'path does not exist'}`);
  }
  throw unprocessablePatch(`${label}: could not be applied`);
}

/** An array index token (RFC 6901 §4): `0`, or digits without a leading zero. */
const ARRAY_INDEX = /^(0|[1-9][0-9]{0,8})$/;

/** The reference tokens of a JSON Pointer, `~1` decoded before `~0` (RFC 6901 §4: `~01` is `~1`). */
function pointerTokens(pointer: string): string[] {
  return pointer === '' ? [] : pointer.slice(1).split('/').map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/**
 * Checks the locations of one JSON Patch operation against the document as it is before that
 * operation, by the rules the patch engine does not enforce itself:
 * - RFC 6902 §4.4: the `from` of a `move` is not a proper prefix of its `path` (a value cannot be
 *   moved into one of its own children; the engine would delete it);
 * - RFC 6901 §4: an array index is `0` or digits without a leading zero; `-` (past the end) names
 *   no element, so it is only an `add` (or `move`/`copy`) target;
 * - RFC 6902 §4.1: an `add` index is at most the array's length;
 * - RFC 6902 §4.2, §4.3, §4.5, §4.6: `remove`, `replace`, `test` and the `from` of `move`/`copy`
 *   name an existing value.
 * @param target - the document (plain JSON) before this operation.
 * @param op - a checked operation.
 * @param label - `operation i (op path)` for the diagnostics.
 * @throws {@link FhirError} 422 naming the operation and the rule.
 */
function checkJsonPatchLocations(target: unknown, op: Operation, label: string): void {
  const from = op.op === 'move' || op.op === 'copy' ? (op as { from: string }).from : undefined;
  const path = pointerTokens(op.path);
  if (op.op === 'move' && from !== undefined) {
    const src = pointerTokens(from);
    if (src.length < path.length && src.every((t, k) => t === path[k])) {
      throw unprocessablePatch(`${label}: from ${shownPointer(from)} is a proper prefix of path; a value cannot be moved into one of its own children (RFC 6902 §4.4)`);
    }
  }
  if (from !== undefined && !resolvesTo(target, pointerTokens(from))) throw unprocessablePatch(`${label}: from path ${shownPointer(from)} does not exist`);
  if (op.op === 'add' || op.op === 'move' || op.op === 'copy') {
    if (path.length === 0) return;
    const parent = resolve(target, path.slice(0, -1));
    if (!parent.found) throw unprocessablePatch(`${label}: the parent of path does not exist`);
    const last = path[path.length - 1]!;
    if (Array.isArray(parent.value) && last !== '-') {
      if (!ARRAY_INDEX.test(last)) throw unprocessablePatch(`${label}: ${shownPointer(`/${last}`).slice(1)} is not an array index (0, digits without a leading zero, or - to append; RFC 6901 §4)`);
      // For a move the length is the one after the value is removed (RFC 6902 §4.4: remove, then add).
      const sameArray = op.op === 'move' && from !== undefined && isSameParent(pointerTokens(from), path);
      const length = parent.value.length - (sameArray ? 1 : 0);
      if (Number(last) > length) throw unprocessablePatch(`${label}: index ${last} is beyond the end of the array (length ${length}; RFC 6902 §4.1)`);
    }
    return;
  }
  if (!resolvesTo(target, path)) throw unprocessablePatch(`${label}: path does not exist`);
}

/** True when `a` and `b` name members of the same container. */
function isSameParent(a: string[], b: string[]): boolean {
  return a.length === b.length && a.slice(0, -1).every((t, k) => t === b[k]);
}

/** True when the pointer names an existing value (`-` never does). */
function resolvesTo(target: unknown, tokens: string[]): boolean {
  return resolve(target, tokens).found;
}

/** The value a pointer names, by own members and strict array indexes only. */
function resolve(target: unknown, tokens: string[]): { found: boolean; value?: unknown } {
  let cur = target;
  for (const t of tokens) {
    if (Array.isArray(cur)) {
      if (!ARRAY_INDEX.test(t) || Number(t) >= cur.length) return { found: false };
      cur = cur[Number(t)];
    } else if (typeof cur === 'object' && cur !== null && Object.prototype.hasOwnProperty.call(cur, t)) {
      cur = (cur as Record<string, unknown>)[t];
    } else return { found: false };
  }
  return { found: true, value: cur };
}

/** A JSON Pointer for diagnostics: element names, indexes and `-` are kept, other segments become `…`. */
function shownPointer(pointer: string): string {
  return pointer.split('/').slice(1).map((seg) => (/^([A-Za-z_][A-Za-z0-9_]{0,63}|\d{1,9}|-)$/.test(seg) ? seg : '…')).map((seg) => `/${seg}`).join('').slice(0, 256);
}

/** A FHIRPath for diagnostics: string literals (which may hold identifiers or names) become `'…'`. */
function shownFhirPath(path: string): string {
  return path.replace(/'(?:[^'\\]|\\.)*'?/g, "'…'").slice(0, 256);
}

/** The operation types of https://hl7.org/fhir/R4/fhirpatch.html and the parts each needs besides `type` and `path`. */
const FHIRPATH_PATCH_PARTS: Record<string, string[]> = { add: ['name', 'value'], insert: ['index', 'value'], delete: [], replace: ['value'], move: ['source', 'destination'] };

/** One checked FHIRPath Patch operation. */
interface FhirPathPatchOperation {
  type: string;
  path: string;
  /** The `operation` parameter, as plain JSON. */
  parameter: NonNullable<Parameters['parameter']>[number];
}

/**
 * Checks a FHIRPath Patch Parameters resource (https://hl7.org/fhir/R4/fhirpatch.html) before
 * anything is applied: every parameter is an `operation` with a known `type`, a `path`
 * (valueString) and the parts its type needs (`name` valueString, `index`/`source`/`destination`
 * valueInteger, `value` with a value[x]).
 * @throws {@link FhirError} 400 naming the first invalid operation and what is wrong with it.
 */
function checkFhirPathPatch(doc: FhirJsonObject): FhirPathPatchOperation[] {
  const params = doc.parameter;
  if (!Array.isArray(params) || params.length === 0) throw badRequest('FHIRPath Patch has no operation');
  return params.map((raw, i): FhirPathPatchOperation => {
    if (!isJsonObject(raw) || raw.name !== 'operation' || !Array.isArray(raw.part)) throw badRequest(`parameter ${i} of a FHIRPath Patch must be an "operation" with parts`);
    const parts = raw.part.filter(isJsonObject);
    const part = (name: string) => parts.find((p) => p.name === name);
    const type = part('type')?.valueCode;
    if (typeof type !== 'string' || !(type in FHIRPATH_PATCH_PARTS)) throw badRequest(`operation ${i}: type must be one of ${Object.keys(FHIRPATH_PATCH_PARTS).join(', ')}`);
    const path = part('path')?.valueString;
    if (typeof path !== 'string' || path.trim() === '') throw badRequest(`operation ${i} (${type}): path is required`);
    for (const need of FHIRPATH_PATCH_PARTS[type]!) {
      const p = part(need);
      const ok = need === 'value' ? p !== undefined && Object.keys(p).some((k) => k.startsWith('value')) : need === 'name' ? typeof p?.valueString === 'string' : isLosslessNumber(p?.valueInteger) && Number.isInteger(Number(p.valueInteger.value));
      if (!ok) throw badRequest(`operation ${i} (${type} ${shownFhirPath(path)}): ${need} is required`);
    }
    return { type, path, parameter: toPlainJson(raw) as FhirPathPatchOperation['parameter'] };
  });
}

/** One element of a resource's plain JSON: the object holding it and the typed value of that object. */
interface ChoiceSite {
  holder: Record<string, unknown>;
  /** The choice element's name without the type suffix (`deceased`). */
  base: string;
  /** The type suffixes it allows (`Boolean`, `DateTime`). */
  suffixes: string[];
}

/** The choice element `name` (`deceased` or `deceasedBoolean`) of the object `target`, or undefined when it is not one. */
function choiceSite(target: TypedValue, name: string): ChoiceSite | undefined {
  if (typeof target.value !== 'object' || target.value === null || Array.isArray(target.value)) return undefined;
  let def;
  try {
    def = getElementDefinition(target.type, name);
  } catch {
    return undefined;
  }
  const last = def?.path.split('.').pop();
  if (!def || !last?.endsWith('[x]')) return undefined;
  const base = last.slice(0, -3);
  if (name !== base && !name.startsWith(base)) return undefined;
  const suffixes = def.type.map((t) => t.code.charAt(0).toUpperCase() + t.code.slice(1));
  return { holder: target.value as Record<string, unknown>, base, suffixes };
}

/** The concrete member of a choice element present in its holder (`deceasedBoolean`), or undefined. */
function presentChoice(site: ChoiceSite): string | undefined {
  return site.suffixes.map((s) => site.base + s).find((k) => Object.prototype.hasOwnProperty.call(site.holder, k));
}

/** The `value[x]` of an operation's `value` part: the type suffix (`Boolean`) and the plain value, or undefined. */
function partValue(op: FhirPathPatchOperation): { suffix: string; value: unknown } | undefined {
  const part = op.parameter.part?.find((p) => p.name === 'value') as Record<string, unknown> | undefined;
  const key = part && Object.keys(part).find((k) => k.startsWith('value') && k.length > 5);
  return key ? { suffix: key.slice(5), value: part[key] } : undefined;
}

/**
 * Applies a FHIRPath Patch operation on a choice element (https://hl7.org/fhir/R4/formats.html#choice),
 * which `@medplum/core`'s engine cannot do: its `add` throws for them, and its `replace` and `delete`
 * of `Patient.deceased` look for a member `deceased` and silently change nothing.
 * By https://hl7.org/fhir/R4/fhirpatch.html, `add` names the element without the type suffix
 * (`deceased`; the concrete name `deceasedBoolean` is accepted too) and the value's type gives the
 * concrete member (`valueBoolean` → `deceasedBoolean`); `replace` may change the type (the old
 * member is removed); `delete` removes the member that is present.
 * @param root - the resource (typed value over its plain JSON, mutated).
 * @param op - a checked operation.
 * @param label - `operation i (type path)` for the diagnostics.
 * @returns True when the operation was on a choice element and has been applied; false for any
 *   other operation (the caller hands it to the engine, which also reports path errors).
 * @throws {@link FhirError} 422 when the value's type is not one the element allows, or an `add`
 *   finds the element already present.
 */
function applyChoiceOperation(root: TypedValue, op: FhirPathPatchOperation, label: string): boolean {
  if (op.type === 'add') {
    const name = op.parameter.part?.find((p) => p.name === 'name')?.valueString;
    const v = partValue(op);
    if (name === undefined || v === undefined) return false;
    const targets = evalFhirPathTyped(op.path, [root]);
    if (targets.length !== 1) return false;
    const site = choiceSite(targets[0]!, name);
    if (!site) return false;
    if (!site.suffixes.includes(v.suffix) || (name !== site.base && name !== site.base + v.suffix)) {
      throw unprocessablePatch(`${label}: ${site.base}[x] takes ${site.suffixes.map((s) => `value${s}`).join(', ')}, not value${v.suffix.slice(0, 64)} as ${name.slice(0, 64)}`);
    }
    if (presentChoice(site) !== undefined) throw unprocessablePatch(`${label}: ${site.base}[x] already has a value (use replace)`);
    site.holder[site.base + v.suffix] = v.value;
    return true;
  }
  if (op.type !== 'replace' && op.type !== 'delete') return false;
  const found = evalFhirPathTyped(op.path, [root]);
  if (found.length !== 1) return false;
  const path = (found[0] as { path?: unknown }).path;
  const m = typeof path === 'string' ? /^(.+)\.([A-Za-z][A-Za-z0-9]*)$/.exec(path) : null;
  if (!m) return false;
  const holders = evalFhirPathTyped(m[1]!, [root]);
  if (holders.length !== 1) return false;
  const site = choiceSite(holders[0]!, m[2]!);
  const present = site && presentChoice(site);
  if (!site || present === undefined) return false;
  if (op.type === 'delete') {
    delete site.holder[present];
    return true;
  }
  const v = partValue(op);
  if (v === undefined) return false;
  if (!site.suffixes.includes(v.suffix)) throw unprocessablePatch(`${label}: ${site.base}[x] takes ${site.suffixes.map((s) => `value${s}`).join(', ')}, not value${v.suffix.slice(0, 64)}`);
  delete site.holder[present];
  site.holder[site.base + v.suffix] = v.value;
  return true;
}

/** Why a FHIRPath Patch operation failed, from `@medplum/core`'s error, without quoting it. */
function fhirPathFailure(err: unknown): string {
  const msg = err instanceof Error ? err.message : '';
  if (/^Failed to resolve (target|base)/.test(msg)) return 'path matches no element';
  if (msg.startsWith('Resolved multiple')) return 'path matches more than one element';
  if (msg.startsWith('Cannot patch')) return 'path does not name one list of elements';
  return 'could not be applied (is the path valid FHIRPath naming an element of this resource?)';
}

function collectNumbers(v: FhirJson, out: LosslessNumber[]): void {
  if (isLosslessNumber(v)) out.push(v);
  else if (Array.isArray(v)) for (const x of v) collectNumbers(x, out);
  else if (isJsonObject(v)) for (const x of Object.values(v)) collectNumbers(x, out);
}

/**
 * Turns a plain JS value (a patch engine's output) back into lossless FHIR JSON, keeping the
 * lexical form of numbers (see module doc).
 *
 * @param result - plain JS value (numbers are `number`).
 * @param original - the lossless value at the same place before the patch (or undefined).
 * @param pool - lossless numbers that appeared in the patch body, for new values.
 * @returns FHIR JSON equal in value to `result`.
 * @throws TypeError for values that are not JSON (functions, non-finite numbers).
 */
export function restoreLexical(result: unknown, original: FhirJson | undefined, pool: readonly LosslessNumber[] = []): FhirJson {
  if (result === null || typeof result === 'string' || typeof result === 'boolean') return result;
  if (typeof result === 'number') {
    if (!Number.isFinite(result)) throw new TypeError('Non-finite number');
    if (isLosslessNumber(original) && Number(original.value) === result) return original;
    return pool.find((n) => Number(n.value) === result) ?? new LosslessNumber(String(result));
  }
  if (Array.isArray(result)) {
    const orig = Array.isArray(original) ? original : [];
    const origText = orig.map((o) => canonicalStringify(toPlainJson(o)));
    const used = new Set<number>();
    // First pass: items equal in value to an original item take it (inserts, removes, moves);
    // second pass: the rest pair with the original at the same index when that one is free.
    const match = result.map((item) => {
      const text = canonicalStringify(item);
      const j = origText.findIndex((t, k) => !used.has(k) && t === text);
      if (j >= 0) used.add(j);
      return j;
    });
    return result.map((item, i) => {
      let j = match[i]!;
      if (j < 0 && i < orig.length && !used.has(i)) {
        j = i;
        used.add(i);
      }
      return restoreLexical(item, j >= 0 ? orig[j] : undefined, pool);
    });
  }
  if (typeof result === 'object') {
    const out: FhirJsonObject = {};
    for (const [k, v] of Object.entries(result as Record<string, unknown>)) {
      if (v !== undefined) out[k] = restoreLexical(v, isJsonObject(original) ? original[k] : undefined, pool);
    }
    return out;
  }
  throw new TypeError(`Not a JSON value: ${typeof result}`);
}
