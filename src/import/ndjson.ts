/**
 * Reading FHIR Bulk Data exports (one `Type.NNN.ndjson` file per resource type) for import.
 *
 * Pipeline, as run by {@link importPlan}:
 *  1. {@link readNdjsonFolder} streams every `*.ndjson` file of a folder, one resource per line, and
 *     reports (without echoing content, which may be PHI) every line it has to skip;
 *  2. {@link resolveConditionalReferences} rewrites conditional references such as
 *     `Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999999999` into literal `Type/id`
 *     references, using the identifiers of the resources in the same batch;
 *  3. {@link orderForImport} puts referenced types before the types that reference them.
 *
 * Sources: FHIR Bulk Data Access IG, https://hl7.org/fhir/uv/bulkdata/export.html (ndjson output
 * files), http://ndjson.org; conditional references, https://hl7.org/fhir/R4/http.html#trules and
 * https://hl7.org/fhir/R4/bundle.html#references; token search semantics for `identifier=`,
 * https://hl7.org/fhir/R4/search.html#token; ids, https://hl7.org/fhir/R4/datatypes.html#id.
 */
import { createReadStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { isJsonObject, isLosslessNumber, LosslessNumber, parseFhirJson } from '../fhir/json.ts';
import type { FhirJson, FhirJsonObject } from '../fhir/json.ts';

/** A line that was skipped, or a batch-level issue. Never contains the line's content. */
export interface ImportProblem {
  /** File name relative to the folder that was read (for example `Patient.000.ndjson`). */
  file: string;
  /** 1-based line number within {@link ImportProblem.file}; blank lines count. */
  line: number;
  /** Human-readable reason; never includes the content of the line (it may be PHI). */
  message: string;
}

/** Where a resource was read from: file name relative to the folder, and 1-based line number. */
export interface ImportSource {
  file: string;
  line: number;
}

/**
 * A conditional reference that {@link resolveConditionalReferences} left unchanged.
 *
 * The identifier value is deliberately not included (it may be an MRN, SSN or other PHI);
 * `file`/`line`/`path` locate the reference exactly.
 */
export interface UnresolvedReference {
  /** File the containing resource came from, when known (see {@link sourceOf}). */
  file: string | undefined;
  /** 1-based line of the containing resource, when known. */
  line: number | undefined;
  /** Key of the top-level resource holding the reference: `Type/id`, or `Type/(no id)`. */
  resource: string;
  /** FHIRPath-like location, for example `Encounter.participant[0].individual.reference`. */
  path: string;
  /** Resource type named by the conditional reference, for example `Practitioner`. */
  targetType: string;
  /** Identifier system of the search, when one was given (systems are not PHI). */
  system: string | undefined;
  /** Why it was not resolved (no match, several matches, unsupported criteria). */
  message: string;
}

/** Result of {@link importPlan}. */
export interface ImportPlan {
  /** Resources with conditional references resolved, in import order (see {@link orderForImport}). */
  resources: FhirJsonObject[];
  /** Lines skipped while reading (see {@link readNdjsonFolder}). */
  problems: ImportProblem[];
  /** Conditional references that could not be resolved; they are left unchanged in `resources`. */
  unresolved: UnresolvedReference[];
  /**
   * Resources whose `resourceType` + `id` was already seen earlier in the batch (reported at the
   * later occurrence). Both copies are kept in `resources`; the importer decides which wins.
   */
  duplicates: ImportProblem[];
  /** Number of resources per `resourceType`, keys in ascending code-unit order. */
  counts: Record<string, number>;
  /** Type order used for `resources` (see {@link typeImportOrder}). */
  typeOrder: string[];
}

/** A FHIR resource type name as accepted on import (syntax only; not checked against R4's list). */
export const RESOURCE_TYPE_PATTERN = /^[A-Z][A-Za-z]+$/;
/** A FHIR id, https://hl7.org/fhir/R4/datatypes.html#id: 1 to 64 of `A-Z a-z 0-9 - .`. */
export const FHIR_ID_PATTERN = /^(?!\.+$)[A-Za-z0-9\-.]{1,64}$/; // dot-only ids (URL dot-segments) refused

/**
 * Fixed preference used to order types deterministically: among types whose dependencies are all
 * placed, earlier entries go first, then the rest alphabetically; on a cycle, the first remaining
 * type by this same ranking is placed even though some of its dependencies are not.
 */
export const TYPE_PREFERENCE: readonly string[] = [
  'Organization',
  'Location',
  'HealthcareService',
  'Endpoint',
  'Practitioner',
  'PractitionerRole',
  'Patient',
  'RelatedPerson',
  'Group',
  'Device',
  'Medication',
  'Substance',
  'Encounter',
  'EpisodeOfCare',
  'Condition',
  'Observation',
];

/** Provenance of resources read by {@link readNdjsonFolder} (and copies made by the resolver). */
const sources = new WeakMap<FhirJsonObject, ImportSource>();

/**
 * Where a resource returned by {@link readNdjsonFolder}, {@link resolveConditionalReferences} or
 * {@link importPlan} was read from.
 *
 * @param resource - a top-level resource object returned by one of those functions.
 * @returns `{ file, line }` (file name relative to the folder, 1-based line), or `undefined` for
 *   objects that were not read from a file.
 */
export function sourceOf(resource: FhirJsonObject): ImportSource | undefined {
  return sources.get(resource);
}

function resourceKey(resource: FhirJsonObject): string {
  const type = typeof resource.resourceType === 'string' ? resource.resourceType : '(no resourceType)';
  const id = typeof resource.id === 'string' ? resource.id : '(no id)';
  return `${type}/${id}`;
}

/** Validates one parsed line; returns a content-free reason, or undefined when it is acceptable. */
function lineRejection(value: FhirJson): string | undefined {
  if (!isJsonObject(value)) {
    const kind = Array.isArray(value) ? 'an array' : value === null ? 'null' : isLosslessNumber(value) ? 'a number' : `a ${typeof value}`;
    return `not a FHIR resource: the line is ${kind}, not a JSON object`;
  }
  const rt = value.resourceType;
  if (rt === undefined) return 'not a FHIR resource: the object has no resourceType (for example a bulk-data client log entry)';
  if (typeof rt !== 'string') return 'not a FHIR resource: resourceType is not a string';
  if (!RESOURCE_TYPE_PATTERN.test(rt)) return `not a FHIR resource: resourceType does not match ${String(RESOURCE_TYPE_PATTERN)}`;
  const id = value.id;
  if (id !== undefined && (typeof id !== 'string' || !FHIR_ID_PATTERN.test(id))) {
    return `invalid FHIR id: id must be a string matching ${String(FHIR_ID_PATTERN)}`;
  }
  return undefined;
}

async function readNdjsonFile(
  dir: string,
  file: string,
  resources: FhirJsonObject[],
  problems: ImportProblem[],
): Promise<void> {
  const input = createReadStream(path.join(dir, file), { encoding: 'utf8' });
  const lines = createInterface({ input, crlfDelay: Infinity });
  let lineNo = 0;
  try {
    for await (const raw of lines) {
      lineNo++;
      const text = lineNo === 1 && raw.startsWith('\uFEFF') ? raw.slice(1) : raw;
      if (text.trim() === '') continue;
      let value: FhirJson;
      try {
        value = parseFhirJson(text);
      } catch (err) {
        // lossless-json messages quote the offending character: keep only the position.
        const pos = /position (\d+)/.exec((err as Error).message)?.[1];
        const where = pos === undefined ? '' : ` (syntax error at column ${Number(pos) + 1})`;
        problems.push({ file, line: lineNo, message: `not valid JSON${where}` });
        continue;
      }
      const rejection = lineRejection(value);
      if (rejection !== undefined || !isJsonObject(value)) {
        problems.push({ file, line: lineNo, message: rejection ?? 'not a FHIR resource' });
        continue;
      }
      sources.set(value, { file, line: lineNo });
      resources.push(value);
    }
  } finally {
    lines.close();
    input.destroy();
  }
}

/**
 * Reads a FHIR Bulk Data export folder: every regular file whose name ends in `.ndjson` (in
 * ascending code-unit order of file name; sub-folders and other files such as `LICENSE` are
 * ignored), streamed line by line (LF or CRLF; a UTF-8 BOM on line 1 is dropped; blank lines are
 * skipped). Format: https://hl7.org/fhir/uv/bulkdata/export.html (one resource per line).
 *
 * A line is reported in `problems` (file name + 1-based line number, never the line's content,
 * which may be PHI) and skipped when it is not JSON, not an object, lacks a string `resourceType`
 * matching {@link RESOURCE_TYPE_PATTERN}, or has an `id` that is not a valid FHIR id
 * ({@link FHIR_ID_PATTERN}). Consequently the lines of a bulk-data client's `log.ndjson` (JSON
 * objects without `resourceType`) are reported as problems, one per line, not silently dropped.
 * Nothing else is validated (not the R4 type list, not the element structure, not that the file
 * name matches the type: the spec does not require file names to name the type).
 *
 * Numbers are parsed losslessly ({@link parseFhirJson}), so `1.50` stays `1.50`.
 *
 * @param dir - folder path (absolute, or relative to the process working directory).
 * @returns `resources` in file-name then line order, and `problems` in the same order. Each
 *   resource's origin is available through {@link sourceOf}.
 * @throws the `fs` error (for example `ENOENT`, `ENOTDIR`, `EACCES`) when the folder or a file
 *   cannot be read. Invalid UTF-8 is not an error: it decodes to U+FFFD.
 */
export async function readNdjsonFolder(dir: string): Promise<{ resources: FhirJsonObject[]; problems: ImportProblem[] }> {
  const entries = await readdir(dir);
  const files: string[] = [];
  for (const name of entries) {
    if (!name.endsWith('.ndjson')) continue;
    if ((await stat(path.join(dir, name))).isFile()) files.push(name);
  }
  files.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const resources: FhirJsonObject[] = [];
  const problems: ImportProblem[] = [];
  for (const file of files) await readNdjsonFile(dir, file, resources, problems);
  return { resources, problems };
}

// ---------------------------------------------------------------------------------------------
// Conditional references
// ---------------------------------------------------------------------------------------------

const CONDITIONAL_REFERENCE = /^([A-Z][A-Za-z]+)\?(.*)$/s;

/** A parsed `Type?identifier=[system|]value` search (token semantics, search.html#token). */
interface IdentifierCriterion {
  type: string;
  /** `undefined`: any system (no `|` given); `''`: identifiers without a system (`|value`). */
  system: string | undefined;
  /** `''` with a system: any identifier in that system (`system|`). */
  value: string;
}

/** Splits a token parameter value at the first unescaped `|`, and unescapes `\|`, `\,`, `\$`, `\\`. */
function splitToken(text: string): { parts: string[]; hasUnescapedComma: boolean } {
  const parts: string[] = [];
  let current = '';
  let hasUnescapedComma = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === '\\' && i + 1 < text.length) {
      current += text[i + 1];
      i++;
    } else if (ch === '|' && parts.length === 0) {
      parts.push(current);
      current = '';
    } else {
      if (ch === ',') hasUnescapedComma = true;
      current += ch;
    }
  }
  parts.push(current);
  return { parts, hasUnescapedComma };
}

/** Parses a conditional reference; returns a content-free reason string when it is not supported. */
function parseConditional(type: string, query: string): IdentifierCriterion | string {
  if (query.includes('&')) return 'unsupported conditional reference: only a single identifier criterion is resolved';
  const eq = query.indexOf('=');
  const name = eq < 0 ? query : query.slice(0, eq);
  if (name !== 'identifier') {
    return 'unsupported conditional reference: only the identifier search parameter (without modifiers) is resolved';
  }
  let decoded: string;
  try {
    decoded = decodeURIComponent(query.slice(eq + 1));
  } catch {
    return 'malformed conditional reference: invalid percent-encoding';
  }
  const { parts, hasUnescapedComma } = splitToken(decoded);
  if (hasUnescapedComma) return 'unsupported conditional reference: several identifier values (comma) are not resolved';
  if (parts.length === 1) {
    const value = parts[0] ?? '';
    if (value === '') return 'malformed conditional reference: empty identifier';
    return { type, system: undefined, value };
  }
  const system = parts[0] ?? '';
  const value = parts[1] ?? '';
  if (system === '' && value === '') return 'malformed conditional reference: empty identifier';
  return { type, system, value };
}

interface IndexedIdentifier {
  system: string | undefined;
  value: string;
  target: string;
}

/** Type -> identifier value -> identifiers (with their `Type/id` target). */
type IdentifierIndex = Map<string, Map<string, IndexedIdentifier[]>>;

function buildIdentifierIndex(resources: readonly FhirJsonObject[]): IdentifierIndex {
  const index: IdentifierIndex = new Map();
  for (const resource of resources) {
    const type = resource.resourceType;
    const id = resource.id;
    if (typeof type !== 'string' || typeof id !== 'string') continue;
    const raw = resource.identifier;
    const list = Array.isArray(raw) ? raw : raw === undefined ? [] : [raw];
    for (const identifier of list) {
      if (!isJsonObject(identifier) || typeof identifier.value !== 'string') continue;
      const system = typeof identifier.system === 'string' ? identifier.system : undefined;
      let byValue = index.get(type);
      if (byValue === undefined) index.set(type, (byValue = new Map()));
      let bucket = byValue.get(identifier.value);
      if (bucket === undefined) byValue.set(identifier.value, (bucket = []));
      bucket.push({ system, value: identifier.value, target: `${type}/${id}` });
    }
  }
  return index;
}

/** Distinct `Type/id` targets matching a criterion, with token-search semantics. */
function lookup(index: IdentifierIndex, c: IdentifierCriterion): string[] {
  const byValue = index.get(c.type);
  if (byValue === undefined) return [];
  const candidates = c.value === '' ? [...byValue.values()].flat() : (byValue.get(c.value) ?? []);
  const matches = new Set<string>();
  for (const entry of candidates) {
    if (c.system === undefined) matches.add(entry.target);
    else if (c.system === '' ? entry.system === undefined : entry.system === c.system) matches.add(entry.target);
  }
  return [...matches];
}

/**
 * Resolves conditional references within one batch of resources (for example one Bulk Data
 * export): every string-valued `reference` element anywhere in a resource (nested elements,
 * extensions, `contained` resources, Bundle entries) of the form `Type?identifier=system|value`
 * is rewritten to the literal `Type/id` of the single resource of that type in the batch carrying
 * that identifier. The query part is percent-decoded first, so `%7C` for `|` (and `%3A`, `%2F`
 * in the system) work; token escapes `\|`, `\,`, `\\` are honoured. Token semantics
 * (https://hl7.org/fhir/R4/search.html#token): `system|value`, `|value` (identifier without
 * system), `value` (any system), `system|` (any value; resolves only when unique).
 *
 * As in transaction processing (https://hl7.org/fhir/R4/http.html#trules,
 * https://hl7.org/fhir/R4/bundle.html#references), zero matches or more than one match is a
 * failure: such references, and criteria other than a single `identifier` parameter, are left
 * unchanged and reported in `unresolved`. Only top-level resources with an `id` are indexed
 * (identifier given as an array or a single object). Logical references (`Reference.identifier`
 * without `reference`) are not touched.
 *
 * @param resources - the batch; not mutated.
 * @returns `resources`: deep copies, in the same order (provenance from {@link sourceOf} is carried
 *   over); `unresolved`: one entry per reference left unchanged, in document order.
 * @throws nothing for well-formed {@link FhirJson} input.
 */
export function resolveConditionalReferences(resources: readonly FhirJsonObject[]): {
  resources: FhirJsonObject[];
  unresolved: UnresolvedReference[];
} {
  const index = buildIdentifierIndex(resources);
  const unresolved: UnresolvedReference[] = [];
  const out: FhirJsonObject[] = [];

  for (const resource of resources) {
    const source = sources.get(resource);
    const key = resourceKey(resource);
    const root = typeof resource.resourceType === 'string' ? resource.resourceType : '(resource)';

    // Path segments of the element being copied; joined only when a reference is reported.
    const at: string[] = [root];
    const copy = (value: FhirJson): FhirJson => {
      if (value === null || typeof value === 'string' || typeof value === 'boolean') return value;
      if (isLosslessNumber(value)) return new LosslessNumber(value.value);
      if (Array.isArray(value)) {
        const last = at.length - 1;
        const base = at[last] ?? '';
        const items = value.map((item, i) => {
          at[last] = `${base}[${i}]`;
          return copy(item);
        });
        at[last] = base;
        return items;
      }
      const obj: FhirJsonObject = {};
      for (const [k, v] of Object.entries(value)) {
        at.push(k);
        const c = copy(v);
        // A `__proto__` key (kept as an own property by the parser) must stay an own property.
        if (k === '__proto__') Object.defineProperty(obj, k, { value: c, enumerable: true, writable: true, configurable: true });
        else obj[k] = c;
        at.pop();
      }
      const ref = obj.reference;
      if (typeof ref === 'string') {
        const m = CONDITIONAL_REFERENCE.exec(ref);
        if (m !== null) {
          const targetType = m[1] ?? '';
          const parsed = parseConditional(targetType, m[2] ?? '');
          let message: string | undefined;
          let system: string | undefined;
          if (typeof parsed === 'string') {
            message = parsed;
          } else {
            system = parsed.system === '' ? undefined : parsed.system;
            const matches = lookup(index, parsed);
            if (matches.length === 1) obj.reference = matches[0] ?? ref;
            else if (matches.length === 0) message = `no ${targetType} in the batch has a matching identifier`;
            else message = `ambiguous: ${matches.length} ${targetType} resources in the batch have a matching identifier`;
          }
          if (message !== undefined) {
            const where = `${at.join('.')}.reference`;
            unresolved.push({ file: source?.file, line: source?.line, resource: key, path: where, targetType, system, message });
          }
        }
      }
      return obj;
    };

    const result = copy(resource);
    if (!isJsonObject(result)) throw new TypeError('unreachable: copy of an object is an object');
    if (source !== undefined) sources.set(result, source);
    out.push(result);
  }
  return { resources: out, unresolved };
}

// ---------------------------------------------------------------------------------------------
// Ordering
// ---------------------------------------------------------------------------------------------

const LITERAL_REFERENCE = /^(?:[^?#]*\/)?([A-Z][A-Za-z]+)\/[A-Za-z0-9\-.]{1,64}(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/;

const BASE_DEFINITION = 'http://hl7.org/fhir/StructureDefinition/';

/** Resource types a reference element points to (literal, absolute, conditional or `type`). */
function referencedTypes(value: FhirJson, into: Set<string>): void {
  if (Array.isArray(value)) {
    for (const item of value) referencedTypes(item, into);
    return;
  }
  if (!isJsonObject(value)) return;
  const ref = value.reference;
  if (typeof ref === 'string') {
    const m = CONDITIONAL_REFERENCE.exec(ref) ?? LITERAL_REFERENCE.exec(ref);
    if (m?.[1] !== undefined) into.add(m[1]);
  }
  if (typeof value.type === 'string' && (ref !== undefined || value.identifier !== undefined)) {
    // Reference.type: a type name, or the absolute URL of a base resource StructureDefinition.
    const name = value.type.startsWith(BASE_DEFINITION) ? value.type.slice(BASE_DEFINITION.length) : value.type;
    if (RESOURCE_TYPE_PATTERN.test(name)) into.add(name);
  }
  for (const v of Object.values(value)) referencedTypes(v, into);
}

function preferenceCompare(a: string, b: string): number {
  const rank = (t: string): number => {
    const i = TYPE_PREFERENCE.indexOf(t);
    return i < 0 ? TYPE_PREFERENCE.length : i;
  };
  const d = rank(a) - rank(b);
  if (d !== 0) return d;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * The order in which resource types of a batch should be imported: a topological order of the
 * type-level reference graph (type A depends on type B when some A resource, including its
 * contained resources, references a B by literal, absolute, or conditional reference, or by a
 * `Reference.type`), restricted to types present in the batch. Self-references are ignored.
 * Among ready types, {@link TYPE_PREFERENCE} order then alphabetical; a cycle is broken by placing
 * the first remaining type in that same ranking.
 *
 * @param resources - the batch (not mutated).
 * @returns Distinct `resourceType`s, each exactly once.
 */
export function typeImportOrder(resources: readonly FhirJsonObject[]): string[] {
  const deps = new Map<string, Set<string>>();
  for (const resource of resources) {
    const type = String(resource.resourceType);
    let set = deps.get(type);
    if (set === undefined) deps.set(type, (set = new Set()));
    referencedTypes(resource, set);
  }
  const remaining = new Set(deps.keys());
  const order: string[] = [];
  while (remaining.size > 0) {
    const candidates = [...remaining].sort(preferenceCompare);
    const ready = candidates.find((t) => [...(deps.get(t) ?? [])].every((d) => d === t || !remaining.has(d)));
    const next = ready ?? candidates[0];
    if (next === undefined) break;
    order.push(next);
    remaining.delete(next);
  }
  return order;
}

/**
 * Orders a batch for import so that referenced types come first (see {@link typeImportOrder} for
 * the graph and the deterministic cycle breaking). Stable within a type: resources of one type
 * keep their input order (references between resources of the same type are not ordered).
 *
 * @param resources - the batch (not mutated).
 * @returns A new array holding the same objects.
 */
export function orderForImport(resources: readonly FhirJsonObject[]): FhirJsonObject[] {
  const byType = new Map<string, FhirJsonObject[]>();
  for (const resource of resources) {
    const type = String(resource.resourceType);
    let list = byType.get(type);
    if (list === undefined) byType.set(type, (list = []));
    list.push(resource);
  }
  return typeImportOrder(resources).flatMap((t) => byType.get(t) ?? []);
}

/**
 * Reads, resolves and orders a Bulk Data export folder for import: {@link readNdjsonFolder}, then
 * {@link resolveConditionalReferences} over the whole batch, then {@link orderForImport}; also
 * reports duplicate `resourceType`/`id` pairs and counts resources per type.
 * Formats: https://hl7.org/fhir/uv/bulkdata/export.html, https://hl7.org/fhir/R4/http.html#trules.
 *
 * @param dir - folder path (absolute, or relative to the process working directory).
 * @returns See {@link ImportPlan}. Skipped lines are in `problems`; conditional references that
 *   could not be resolved are left unchanged in `resources` and listed in `unresolved`.
 * @throws the `fs` error when the folder or a file cannot be read (see {@link readNdjsonFolder}).
 */
export async function importPlan(dir: string): Promise<ImportPlan> {
  const read = await readNdjsonFolder(dir);
  const duplicates: ImportProblem[] = [];
  const seen = new Map<string, ImportSource | undefined>();
  for (const resource of read.resources) {
    if (typeof resource.id !== 'string') continue;
    const key = resourceKey(resource);
    const source = sources.get(resource);
    if (seen.has(key)) {
      const first = seen.get(key);
      const where = first === undefined ? 'earlier in the batch' : `at ${first.file} line ${first.line}`;
      duplicates.push({
        file: source?.file ?? '',
        line: source?.line ?? 0,
        message: `duplicate resourceType and id (first seen ${where}); both kept`,
      });
    } else {
      seen.set(key, source);
    }
  }
  const resolved = resolveConditionalReferences(read.resources);
  const typeOrder = typeImportOrder(resolved.resources);
  const resources = orderForImport(resolved.resources);
  const tally = new Map<string, number>();
  for (const r of resources) tally.set(String(r.resourceType), (tally.get(String(r.resourceType)) ?? 0) + 1);
  const counts: Record<string, number> = {};
  for (const type of [...tally.keys()].sort()) counts[type] = tally.get(type) ?? 0;
  return { resources, problems: read.problems, unresolved: resolved.unresolved, duplicates, counts, typeOrder };
}
