/**
 * Code translation at the hospital boundary (docs/mappings.md "Code translation").
 *
 * Gossip carries Yjs updates of one shared document per resource (docs/merge.md), so every
 * replica must hold the same bytes and a peer cannot be sent a different version of a document.
 * Translation therefore happens where a resource crosses into or out of the CRDT: on the version
 * read from the hospital's FHIR server before it is merged (inbound), and on the version written
 * to it (outbound). Both add the target coding and keep the original one:
 *
 * - a Coding that is an item of a repeating element (`CodeableConcept.coding`, `meta.tag`, …) whose
 *   `system` is a map's source system gets each translation (a Coding in the target system) appended
 *   to the same array, after the existing items, unless an equal `system`+`code` is already there.
 *   The original keeps its place, so a round trip A → B → A gives A back its codes unchanged.
 * - a single Coding (an element of type Coding with max cardinality 1, e.g. `Encounter.class`)
 *   cannot hold two values: it is left as is and reported.
 *
 * Translation is idempotent: translating a translated resource changes nothing.
 */
import { isJsonObject } from '../fhir/json.ts';
import type { FhirJson, FhirJsonObject } from '../fhir/json.ts';
import type { CompiledConceptMap } from './conceptmap.ts';

/** Which crossing of the hospital boundary. */
export type MappingDirection = 'inbound' | 'outbound';

/** A ConceptMap with its configured use (mapping file `conceptMaps[i]`). */
export interface ActiveConceptMap {
  map: CompiledConceptMap;
  direction: 'inbound' | 'outbound' | 'both';
  unmapped: 'pass-through' | 'drop' | 'reject';
  /** Equivalences that count as a translation. */
  equivalence: ReadonlySet<string>;
  /** Where it was configured, for messages: `conceptMaps[0]`. */
  configPath: string;
}

/** What translation did to one Coding. Paths are FHIRPath-like (`Observation.code.coding[0]`), never values of other elements. */
export interface CodingChange {
  /** `added`: a translation appended; `dropped`: an unmapped coding removed; `kept`: an unmapped coding passed through; `single`: a single Coding that could not take its translation. */
  action: 'added' | 'dropped' | 'kept' | 'single';
  path: string;
  /** The source coding, `system|code`. */
  from: string;
  /** The translation, `system|code` (for `added` and `single` with a translation). */
  to?: string;
  /** Equivalence of the translation used. */
  equivalence?: string;
  /** The map (canonical URL) that applied. */
  map: string;
}

/** Result of {@link translateResource}. */
export interface TranslationResult {
  /** The translated resource: a new object when something changed, else the input itself. */
  resource: FhirJsonObject;
  changes: CodingChange[];
}

/** Stable codes of {@link MappingError}. */
export type MappingErrorCode = 'ERR_MAPPING_UNMAPPED_CODE';

/**
 * A version refused by a map whose unmapped policy is `reject`. The message names the map, the
 * element path and the source system, never the code (it may identify a rare test) nor other content.
 */
export class MappingError extends Error {
  override readonly name = 'MappingError';
  readonly code: MappingErrorCode;
  /** Canonical URL of the map. */
  readonly map: string;
  /** FHIRPath-like path of the coding. */
  readonly path: string;
  /**
   * @param code - stable code.
   * @param message - text without PHI.
   * @param details - map and path.
   */
  constructor(code: MappingErrorCode, message: string, details: { map: string; path: string }) {
    super(message);
    this.code = code;
    this.map = details.map;
    this.path = details.path;
  }
}

interface CodingLike {
  system: string;
  code: string;
}

/** A Coding-shaped object: string `system` and `code`, no `value` (which a Quantity would have). */
function asCoding(v: FhirJson): CodingLike | undefined {
  if (!isJsonObject(v)) return undefined;
  const system = v['system'];
  const code = v['code'];
  if (typeof system !== 'string' || typeof code !== 'string' || 'value' in v) return undefined;
  return { system, code };
}

/**
 * Applies the maps configured for `direction` to every Coding of their source systems.
 * @param resource - FHIR JSON of one resource (numbers as LosslessNumber are kept as they are); not modified.
 * @param maps - the active maps, in configuration order.
 * @param direction - `inbound` (read from the hospital) or `outbound` (written to it).
 * @returns The translated resource and what changed.
 * @throws MappingError `ERR_MAPPING_UNMAPPED_CODE` when a map with policy `reject` meets a coding of
 *   its source system without an accepted translation.
 */
export function translateResource(resource: FhirJsonObject, maps: readonly ActiveConceptMap[], direction: MappingDirection): TranslationResult {
  const active = maps.filter((m) => m.direction === 'both' || m.direction === direction);
  const changes: CodingChange[] = [];
  if (active.length === 0) return { resource, changes };
  const sources = new Set<string>();
  for (const m of active) for (const s of m.map.sourceSystems) sources.add(s);
  const type = typeof resource['resourceType'] === 'string' ? resource['resourceType'] : 'Resource';

  /** Accepted translations of one coding by the first map (in order) that knows its system. */
  const lookup = (c: CodingLike): { map: ActiveConceptMap; targets: Array<{ system: string; code: string; version?: string; display?: string; equivalence: string }> } | undefined => {
    for (const m of active) {
      if (!m.map.sourceSystems.has(c.system)) continue;
      const targets = m.map
        .translate(c.system, c.code)
        .filter((x) => x.concept !== undefined && m.equivalence.has(x.equivalence))
        .map((x) => ({ ...x.concept!, equivalence: x.equivalence }));
      return { map: m, targets };
    }
    return undefined;
  };

  const walk = (value: FhirJson, path: string): FhirJson => {
    if (Array.isArray(value)) {
      let out: FhirJson[] | undefined;
      const appended: FhirJsonObject[] = [];
      const added: CodingChange[] = [];
      const present = new Set<string>();
      for (const item of value) {
        const c = asCoding(item);
        if (c) present.add(`${c.system}|${c.code}`);
      }
      value.forEach((item, i) => {
        const c = asCoding(item);
        const itemPath = `${path}[${i}]`;
        if (c === undefined || !sources.has(c.system)) {
          const next = walk(item, itemPath);
          if (next !== item) out ??= value.slice(0, i);
          out?.push(next);
          return;
        }
        const found = lookup(c)!;
        if (found.targets.length === 0) {
          const from = `${c.system}|${c.code}`;
          if (found.map.unmapped === 'reject') {
            throw new MappingError('ERR_MAPPING_UNMAPPED_CODE', `${type}: a coding of ${c.system} at ${itemPath} has no translation in ${found.map.map.label} (${found.map.configPath}, unmapped: reject)`, { map: found.map.map.label, path: itemPath });
          }
          if (found.map.unmapped === 'drop') {
            changes.push({ action: 'dropped', path: itemPath, from, map: found.map.map.label });
            out ??= value.slice(0, i);
            return;
          }
          changes.push({ action: 'kept', path: itemPath, from, map: found.map.map.label });
          out?.push(item);
          return;
        }
        out?.push(item);
        for (const t of found.targets) {
          const key = `${t.system}|${t.code}`;
          if (present.has(key)) continue;
          present.add(key);
          const coding: FhirJsonObject = { system: t.system, ...(t.version !== undefined ? { version: t.version } : {}), code: t.code, ...(t.display !== undefined ? { display: t.display } : {}) };
          appended.push(coding);
          added.push({ action: 'added', path: '', from: `${c.system}|${c.code}`, to: key, equivalence: t.equivalence, map: found.map.map.label });
        }
      });
      if (appended.length === 0) return out ?? value;
      const kept = out ?? value;
      added.forEach((ch, n) => changes.push({ ...ch, path: `${path}[${kept.length + n}]` }));
      return [...kept, ...appended];
    }
    if (!isJsonObject(value)) return value;
    let out: FhirJsonObject | undefined;
    for (const k of Object.keys(value)) {
      const v = value[k]!;
      const childPath = `${path}.${k}`;
      const c = asCoding(v);
      if (c !== undefined && sources.has(c.system)) {
        // A single Coding: FHIR allows one value here, so the original stays and nothing is added.
        const found = lookup(c)!;
        const t = found.targets[0];
        if (t === undefined && found.map.unmapped === 'reject') {
          throw new MappingError('ERR_MAPPING_UNMAPPED_CODE', `${type}: the coding of ${c.system} at ${childPath} has no translation in ${found.map.map.label} (${found.map.configPath}, unmapped: reject)`, { map: found.map.map.label, path: childPath });
        }
        changes.push({ action: 'single', path: childPath, from: `${c.system}|${c.code}`, ...(t ? { to: `${t.system}|${t.code}`, equivalence: t.equivalence } : {}), map: found.map.map.label });
        continue;
      }
      if (typeof v !== 'object' || v === null) continue;
      const next = walk(v, childPath);
      if (next !== v) {
        out ??= { ...value };
        if (Array.isArray(next) && next.length === 0) delete out[k];
        else out[k] = next;
      }
    }
    return out ?? value;
  };

  const translated = walk(resource, type) as FhirJsonObject;
  return { resource: translated, changes };
}
