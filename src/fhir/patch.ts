/**
 * PATCH bodies (https://hl7.org/fhir/R4/http.html#patch): JSON Patch (RFC 6902,
 * `application/json-patch+json`) and FHIRPath Patch (https://hl7.org/fhir/R4/fhirpatch.html, a
 * `Parameters` resource in `application/fhir+json`), applied with `@medplum/core`'s `applyPatch`,
 * `parseFhirPathPatchParameters` and `fhirpathPatchTypedValue`.
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
import { applyPatch, fhirpathPatchTypedValue, parseFhirPathPatchParameters, toTypedValue } from '@medplum/core';
import type { Operation } from '@medplum/core';
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
 * @param base - the resource as stored (lossless FHIR JSON); not modified.
 * @param format - from {@link patchFormatOf}.
 * @param text - the raw PATCH body.
 * @returns The patched resource (lossless FHIR JSON), `resourceType` and `id` unchanged.
 * @throws {@link FhirError} 400 when the body is not JSON, not an array of operations (JSON Patch)
 *   or not a FHIRPath Patch Parameters resource, or when the patch changes `resourceType` or `id`;
 *   422 when an operation cannot be applied (missing path, failed `test`, FHIRPath error). No
 *   diagnostics quote resource content.
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
    if (!Array.isArray(doc) || doc.length === 0 || !doc.every((op) => isJsonObject(op) && typeof op.op === 'string' && typeof op.path === 'string')) {
      throw badRequest('A JSON Patch body must be a non-empty array of operations, each with "op" and "path"');
    }
    let results;
    try {
      results = applyPatch(plain, toPlainJson(doc) as Operation[]);
    } catch {
      throw badRequest('JSON Patch could not be applied: invalid operation');
    }
    const failed = results.findIndex((r) => r !== null);
    if (failed >= 0) {
      const op = (doc[failed] as FhirJsonObject).op;
      const kind = results[failed]?.name ?? 'Error';
      throw unprocessablePatch(`JSON Patch operation ${failed} (${String(op)}) failed: ${kind}`);
    }
    result = plain;
  } else {
    if (!isJsonObject(doc) || doc.resourceType !== 'Parameters') {
      throw badRequest('A FHIRPath Patch body must be a Parameters resource (or send JSON Patch as application/json-patch+json)');
    }
    let ops;
    try {
      ops = parseFhirPathPatchParameters(toPlainJson(doc) as Parameters);
    } catch {
      throw badRequest('Invalid FHIRPath Patch Parameters');
    }
    if (ops.length === 0) throw badRequest('FHIRPath Patch has no operation');
    const typed = toTypedValue(plain);
    try {
      fhirpathPatchTypedValue(typed, ops);
    } catch (err) {
      const issue = (err as { outcome?: { issue?: Array<{ code?: string }> } }).outcome?.issue?.[0];
      throw unprocessablePatch(`FHIRPath Patch could not be applied${issue?.code ? ` (${issue.code})` : ''}`);
    }
    result = typed.value;
  }
  const patched = restoreLexical(result, base, pool);
  if (!isJsonObject(patched)) throw badRequest('The patch must leave a resource (a JSON object)');
  if (patched.resourceType !== base.resourceType) throw badRequest('A patch may not change resourceType', ['resourceType']);
  if (patched.id !== base.id) throw badRequest('A patch may not change id', ['id']);
  return patched;
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
