/**
 * Identifier system translation at the hospital boundary (docs/mappings.md "Identifiers and
 * patient matching"), in the style of code translation (src/mapping/translate.ts).
 *
 * Each hospital names its patients in its own identifier systems (an MRN namespace such as
 * `urn:oid:1.2.3.4.5`). The mapping file's `identifierSystems` says which shared system each local
 * one is known as across the network, either with the same value or through a crosswalk table
 * (local value → shared value). An `Identifier` is R4 https://hl7.org/fhir/R4/datatypes.html#Identifier;
 * only its `system` and `value` are read.
 *
 * - **Inbound** (a version read from this node's hospital): every identifier in a local system gets
 *   the shared identifier appended to the same `identifier` array, after the existing items; the
 *   original stays where it was.
 * - **Outbound** (a version written to this node's hospital): every identifier in a shared system
 *   gets this hospital's local identifier appended when the entry (or its crosswalk) knows it.
 *   Nothing is ever removed, so other hospitals' identifiers travel untouched.
 * - Idempotent: an identifier already present (equal `system` and `value`) is not added again.
 *
 * Changes name systems and element paths, never identifier values (MRNs are PHI).
 */
import { readFileSync } from 'node:fs';
import { isJsonObject } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import type { MappingDirection } from './translate.ts';
import { IssueListError } from './issue-list.ts';
import type { HintedIssue } from './issue-list.ts';

/** A crosswalk table: local value ↔ shared value, one to one. */
export interface Crosswalk {
  /** The CSV file it was read from (absolute path). */
  file: string;
  toShared: ReadonlyMap<string, string>;
  toLocal: ReadonlyMap<string, string>;
}

/** An `identifierSystems[i]` entry ready to apply. */
export interface ActiveIdentifierSystem {
  local: string;
  shared: string;
  /** Absent: the value is the same in both systems. */
  crosswalk?: Crosswalk;
  resourceTypes: ReadonlySet<string>;
  /** Where it was configured, for messages: `identifierSystems[0]`. */
  configPath: string;
}

/** What translation did to one resource's identifiers. No values. */
export interface IdentifierChange {
  action: 'added';
  /** Path of the added item, e.g. `Patient.identifier[3]`. */
  path: string;
  /** System of the identifier it was derived from. */
  from: string;
  /** System of the added identifier. */
  to: string;
  configPath: string;
}

/** One problem in a crosswalk file (1-based line). */
export interface CrosswalkIssue extends HintedIssue {
  line: number;
}

/** Thrown by {@link readCrosswalk}: `issues` lists every problem with its line. */
export class CrosswalkError extends IssueListError<CrosswalkIssue> {
  override readonly name = 'CrosswalkError';
  readonly code = 'ERR_MAPPING_CROSSWALK';
  /** @param issues - at least one issue. */
  constructor(issues: readonly CrosswalkIssue[]) {
    super('crosswalk', issues, (i) => `line ${i.line}`);
  }
}

const VALUE = /^[^\s,"]([^,"]*[^\s,"])?$/;

/**
 * Parses a crosswalk table. Format (a strict CSV subset, RFC 4180 without quoting): the header
 * line `local,shared`, then one `localValue,sharedValue` pair per line; blank lines and lines
 * starting with `#` are skipped. Values may not contain commas, double quotes or leading/trailing
 * spaces. The table must be one to one: a local value or a shared value listed twice is an error.
 * @param text - the file's text (UTF-8; a BOM is ignored).
 * @param file - the file's path, kept in the result.
 * @returns The crosswalk.
 * @throws CrosswalkError listing every problem with its line (the messages name line numbers, never values).
 */
export function parseCrosswalk(text: string, file: string): Crosswalk {
  const issues: CrosswalkIssue[] = [];
  const toShared = new Map<string, string>();
  const toLocal = new Map<string, string>();
  const localLine = new Map<string, number>();
  const sharedLine = new Map<string, number>();
  let header = false;
  text
    .replace(/^\uFEFF/, '')
    .split(/\r?\n/)
    .forEach((raw, i) => {
      const line = i + 1;
      if (raw.trim() === '' || raw.trimStart().startsWith('#')) return;
      if (!header) {
        header = true;
        if (raw.trim().replace(/\s*,\s*/, ',') !== 'local,shared') issues.push({ line, message: 'the first line must be the header "local,shared"', hint: 'start the file with the line: local,shared' });
        return;
      }
      const cells = raw.split(',');
      if (cells.length !== 2 || !VALUE.test(cells[0]!) || !VALUE.test(cells[1]!)) {
        issues.push({ line, message: 'expected two values "localValue,sharedValue"', hint: 'one pair per line; values without commas, double quotes or surrounding spaces' });
        return;
      }
      const [local, shared] = cells as [string, string];
      const l = localLine.get(local);
      if (l !== undefined) {
        issues.push({ line, message: `local value already listed on line ${l}`, hint: 'a local identifier maps to one shared identifier: keep one line' });
        return;
      }
      const s = sharedLine.get(shared);
      if (s !== undefined) {
        issues.push({ line, message: `shared value already listed on line ${s}`, hint: 'two local identifiers of one person: keep the surviving (merged-into) local identifier only' });
        return;
      }
      localLine.set(local, line);
      sharedLine.set(shared, line);
      toShared.set(local, shared);
      toLocal.set(shared, local);
    });
  if (!header) issues.push({ line: 1, message: 'the file is empty', hint: 'start the file with the line: local,shared' });
  if (issues.length > 0) throw new CrosswalkError(issues);
  return { file, toShared, toLocal };
}

/**
 * Reads a crosswalk file ({@link parseCrosswalk}).
 * @param file - path of the CSV file.
 * @throws CrosswalkError for a bad table; the fs error (ENOENT, EACCES) when it cannot be read.
 */
export function readCrosswalk(file: string): Crosswalk {
  return parseCrosswalk(readFileSync(file, 'utf8'), file);
}

/**
 * Adds the counterpart identifiers of `identifierSystems` (module doc).
 * @param resource - FHIR JSON of one resource; not modified.
 * @param systems - the active entries, in configuration order.
 * @param direction - `inbound`: local → shared; `outbound`: shared → local.
 * @returns The resource (a new object when something was added, else the input) and the changes.
 */
export function translateIdentifiers(resource: FhirJsonObject, systems: readonly ActiveIdentifierSystem[], direction: MappingDirection): { resource: FhirJsonObject; changes: IdentifierChange[] } {
  const changes: IdentifierChange[] = [];
  const type = typeof resource['resourceType'] === 'string' ? resource['resourceType'] : '';
  const list = resource['identifier'];
  if (!Array.isArray(list) || systems.length === 0) return { resource, changes };
  const applicable = systems.filter((s) => s.resourceTypes.has(type));
  if (applicable.length === 0) return { resource, changes };
  const out = [...list];
  const present = new Set<string>();
  for (const item of out) if (isJsonObject(item) && typeof item['system'] === 'string' && typeof item['value'] === 'string') present.add(`${item['system']}|${item['value']}`);
  for (const s of applicable) {
    const [fromSystem, toSystem] = direction === 'inbound' ? [s.local, s.shared] : [s.shared, s.local];
    const table = s.crosswalk === undefined ? undefined : direction === 'inbound' ? s.crosswalk.toShared : s.crosswalk.toLocal;
    const n = out.length;
    for (let i = 0; i < n; i++) {
      const item = out[i];
      if (!isJsonObject(item) || item['system'] !== fromSystem || typeof item['value'] !== 'string') continue;
      const value = table === undefined ? item['value'] : table.get(item['value']);
      if (value === undefined) continue;
      const key = `${toSystem}|${value}`;
      if (present.has(key)) continue;
      present.add(key);
      out.push({ system: toSystem, value });
      changes.push({ action: 'added', path: `${type}.identifier[${out.length - 1}]`, from: fromSystem, to: toSystem, configPath: s.configPath });
    }
  }
  if (changes.length === 0) return { resource, changes };
  return { resource: { ...resource, identifier: out }, changes };
}
