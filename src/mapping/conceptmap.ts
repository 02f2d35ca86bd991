/**
 * R4 ConceptMaps (https://hl7.org/fhir/R4/conceptmap.html) compiled into lookup tables, and the
 * lookup behind `$translate` (https://hl7.org/fhir/R4/conceptmap-operation-translate.html) and the
 * hospital-boundary translation (./translate.ts).
 *
 * Neither `@medplum/core` nor `@medplum/fhir-router` 5.2 ships a ConceptMap translation (Medplum's
 * lives in its server package), so the lookup is here: `group.source`/`group.target` systems,
 * `element.code` → `element.target[]` (`code`, `display`, `equivalence`), `group.unmapped` modes
 * `provided` and `fixed`. Not supported (refused by {@link compileConceptMap}): `unmapped.mode`
 * `other-map`, and `dependsOn`/`product` (conditional maps).
 */
import { validateFhirResource } from '../fhir/validate.ts';
import { toFhirJson } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import { IssueListError } from './issue-list.ts';
import type { HintedIssue } from './issue-list.ts';

/** A Coding (https://hl7.org/fhir/R4/datatypes.html#Coding), the members read and written here. */
export interface CodingValue {
  system: string;
  code: string;
  version?: string;
  display?: string;
}

/** One result of a lookup, as `$translate` returns it in `match`. */
export interface TranslationMatch {
  /** ConceptMap equivalence (https://hl7.org/fhir/R4/valueset-concept-map-equivalence.html). */
  equivalence: string;
  /** The target concept; absent for `unmatched`/`disjoint` targets without a code. */
  concept: CodingValue | undefined;
  /** Canonical URL (else `ConceptMap/<id>`) of the map that gave the match. */
  source: string;
}

/** One group of a compiled map: a source system to a target system. */
interface CompiledGroup {
  source: string;
  target: string;
  targetVersion: string | undefined;
  /** source code → its targets (in map order). */
  elements: Map<string, Array<{ code: string | undefined; display: string | undefined; equivalence: string }>>;
  /** target code → source codes with their equivalence, for `reverse`. */
  reverse: Map<string, Array<{ code: string; display: string | undefined; equivalence: string }>>;
  unmapped: { mode: 'provided' } | { mode: 'fixed'; code: string; display: string | undefined } | undefined;
}

/** A problem found in a ConceptMap: JSON Pointer into the map, message, hint. */
export interface ConceptMapIssue extends HintedIssue {
  pointer: string;
}

/** Thrown by {@link compileConceptMap}; `issues` point into the map's JSON. */
export class ConceptMapError extends IssueListError<ConceptMapIssue> {
  override readonly name = 'ConceptMapError';
  readonly code = 'ERR_CONCEPTMAP_INVALID';
  /** @param issues - what is wrong, with JSON Pointers. */
  constructor(issues: readonly ConceptMapIssue[]) {
    super('ConceptMap', issues, (i) => i.pointer || '(root)');
  }
}

/**
 * A FHIRPath of a validation issue (`ConceptMap.group[0].element[1].target[0]`) as a JSON Pointer
 * (`/group/0/element/1/target/0`); `''` when it names the root or cannot be read.
 * @param expression - FHIRPath as Medplum's validator writes it.
 */
export function fhirPathToPointer(expression: string | undefined): string {
  if (!expression) return '';
  const parts = expression.split('.').slice(1);
  const out: string[] = [];
  for (const part of parts) {
    const m = /^([A-Za-z0-9_]+)(?:\[(\d+)\])?$/.exec(part);
    if (m === null) break;
    out.push(m[1]!);
    if (m[2] !== undefined) out.push(m[2]);
  }
  return out.map((p) => `/${p}`).join('');
}

/** A ConceptMap ready for lookups. */
export class CompiledConceptMap {
  /** `ConceptMap.url`, if any. */
  readonly url: string | undefined;
  /** `ConceptMap.version`, if any. */
  readonly version: string | undefined;
  /** `ConceptMap.id`, if any. */
  readonly id: string | undefined;
  /** What matches report as their `source`: the url, else `ConceptMap/<id>`, else `ConceptMap`. */
  readonly label: string;
  /** The systems translated from (every `group.source`). */
  readonly sourceSystems: ReadonlySet<string>;
  /** The systems translated to (every `group.target`). */
  readonly targetSystems: ReadonlySet<string>;
  /** The map as read (plain JSON), for `$translate` and preview. */
  readonly resource: Record<string, unknown>;
  readonly #groups: CompiledGroup[];

  /** Use {@link compileConceptMap}. */
  constructor(resource: Record<string, unknown>, groups: CompiledGroup[]) {
    this.resource = resource;
    this.url = typeof resource['url'] === 'string' ? resource['url'] : undefined;
    this.version = typeof resource['version'] === 'string' ? resource['version'] : undefined;
    this.id = typeof resource['id'] === 'string' ? resource['id'] : undefined;
    this.label = this.url ?? (this.id ? `ConceptMap/${this.id}` : 'ConceptMap');
    this.#groups = groups;
    this.sourceSystems = new Set(groups.map((g) => g.source));
    this.targetSystems = new Set(groups.map((g) => g.target));
  }

  /**
   * Translates one code (https://hl7.org/fhir/R4/conceptmap-operation-translate.html).
   * @param system - the code's system (`Coding.system`).
   * @param code - the code.
   * @param opts.targetSystem - only targets in this system (`targetsystem`).
   * @param opts.reverse - translate from target to source (`reverse`).
   * @returns Every match, in map order (element targets first, then a group's `unmapped` fallback
   *   when the code has no element in that group: `provided` as `equal`, `fixed` as `inexact`).
   */
  translate(system: string, code: string, opts: { targetSystem?: string | undefined; reverse?: boolean | undefined } = {}): TranslationMatch[] {
    const out: TranslationMatch[] = [];
    for (const g of this.#groups) {
      if (opts.reverse) {
        if (g.target !== system || (opts.targetSystem !== undefined && g.source !== opts.targetSystem)) continue;
        for (const s of g.reverse.get(code) ?? []) {
          out.push({ equivalence: s.equivalence, concept: { system: g.source, code: s.code, ...(s.display !== undefined ? { display: s.display } : {}) }, source: this.label });
        }
        continue;
      }
      if (g.source !== system || (opts.targetSystem !== undefined && g.target !== opts.targetSystem)) continue;
      const targets = g.elements.get(code);
      const version = g.targetVersion !== undefined ? { version: g.targetVersion } : {};
      if (targets !== undefined) {
        for (const t of targets) {
          out.push({
            equivalence: t.equivalence,
            concept: t.code === undefined ? undefined : { system: g.target, ...version, code: t.code, ...(t.display !== undefined ? { display: t.display } : {}) },
            source: this.label,
          });
        }
      } else if (g.unmapped?.mode === 'provided') {
        out.push({ equivalence: 'equal', concept: { system: g.target, ...version, code }, source: this.label });
      } else if (g.unmapped?.mode === 'fixed') {
        out.push({ equivalence: 'inexact', concept: { system: g.target, ...version, code: g.unmapped.code, ...(g.unmapped.display !== undefined ? { display: g.unmapped.display } : {}) }, source: this.label });
      }
    }
    return out;
  }
}

/** The R4 value set concept-map-equivalence (required binding of `ConceptMap.group.element.target.equivalence`). */
const EQUIVALENCES: ReadonlySet<string> = new Set(['relatedto', 'equivalent', 'equal', 'wider', 'subsumes', 'narrower', 'specializes', 'inexact', 'unmatched', 'disjoint']);

const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const obj = (v: unknown): Record<string, unknown> => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {});

/**
 * Validates and compiles an R4 ConceptMap: the base R4 definition (Medplum's validator, with its
 * invariants), then what tidegate needs to apply it: every group has `source` and `target`; every
 * element a `code`; every target an `equivalence`, and a `code` unless it is `unmatched` or
 * `disjoint`; `unmapped.mode` `provided` or `fixed` (with a `code`); no `dependsOn`/`product`.
 * @param resource - the parsed JSON of the map.
 * @returns The compiled map.
 * @throws ConceptMapError listing every problem with a JSON Pointer and a fix hint.
 */
export function compileConceptMap(resource: unknown): CompiledConceptMap {
  const issues: ConceptMapIssue[] = [];
  const root = obj(resource);
  if (root['resourceType'] !== 'ConceptMap') {
    throw new ConceptMapError([{ pointer: '/resourceType', message: `resourceType is ${JSON.stringify(root['resourceType'])}, not "ConceptMap"`, hint: 'a ConceptMap file holds one R4 ConceptMap resource' }]);
  }
  for (const i of validateFhirResource(toFhirJson(root) as FhirJsonObject)) {
    issues.push({ pointer: fhirPathToPointer(i.expression?.[0]), message: i.details?.text ?? i.diagnostics ?? 'invalid', hint: 'see https://hl7.org/fhir/R4/conceptmap.html for the element definitions' });
  }
  const groups: CompiledGroup[] = [];
  arr(root['group']).forEach((gv, gi) => {
    const g = obj(gv);
    const at = `/group/${gi}`;
    const source = str(g['source']);
    const target = str(g['target']);
    if (source === undefined) issues.push({ pointer: at, message: 'group has no source system', hint: 'set group.source to the code system URI the local codes use' });
    if (target === undefined) issues.push({ pointer: at, message: 'group has no target system', hint: 'set group.target, e.g. "http://loinc.org"' });
    const elements: CompiledGroup['elements'] = new Map();
    const reverse: CompiledGroup['reverse'] = new Map();
    arr(g['element']).forEach((ev, ei) => {
      const e = obj(ev);
      const eat = `${at}/element/${ei}`;
      const code = str(e['code']);
      if (code === undefined) {
        issues.push({ pointer: eat, message: 'element has no code', hint: 'each element maps one source code: set element.code' });
        return;
      }
      const targets = elements.get(code) ?? [];
      arr(e['target']).forEach((tv, ti) => {
        const t = obj(tv);
        const tat = `${eat}/target/${ti}`;
        const equivalence = str(t['equivalence']);
        const tcode = str(t['code']);
        if (equivalence === undefined) issues.push({ pointer: tat, message: 'target has no equivalence', hint: 'set target.equivalence, e.g. "equivalent" (https://hl7.org/fhir/R4/valueset-concept-map-equivalence.html)' });
        else if (!EQUIVALENCES.has(equivalence)) issues.push({ pointer: `${tat}/equivalence`, message: `"${equivalence}" is not a ConceptMap equivalence`, hint: `use one of ${[...EQUIVALENCES].join(', ')} (https://hl7.org/fhir/R4/valueset-concept-map-equivalence.html)` });
        else if (tcode === undefined && equivalence !== 'unmatched' && equivalence !== 'disjoint') issues.push({ pointer: tat, message: `target with equivalence "${equivalence}" has no code`, hint: 'set target.code, or use equivalence "unmatched" for a code with no counterpart' });
        if (t['dependsOn'] !== undefined || t['product'] !== undefined) issues.push({ pointer: tat, message: 'dependsOn/product (conditional maps) are not supported', hint: 'split the map so each source code maps unconditionally' });
        if (equivalence === undefined) return;
        targets.push({ code: tcode, display: str(t['display']), equivalence });
        if (tcode !== undefined) {
          const back = reverse.get(tcode) ?? [];
          back.push({ code, display: str(e['display']), equivalence });
          reverse.set(tcode, back);
        }
      });
      elements.set(code, targets);
    });
    let unmapped: CompiledGroup['unmapped'];
    if (g['unmapped'] !== undefined) {
      const u = obj(g['unmapped']);
      if (u['mode'] === 'provided') unmapped = { mode: 'provided' };
      else if (u['mode'] === 'fixed' && str(u['code']) !== undefined) unmapped = { mode: 'fixed', code: str(u['code'])!, display: str(u['display']) };
      else if (u['mode'] === 'fixed') issues.push({ pointer: `${at}/unmapped`, message: 'unmapped mode "fixed" without a code', hint: 'set group.unmapped.code' });
      else issues.push({ pointer: `${at}/unmapped/mode`, message: `unmapped mode ${JSON.stringify(u['mode'])} is not supported`, hint: 'use "provided" or "fixed", or leave group.unmapped out and set the unmapped policy in the mapping file' });
    }
    if (source !== undefined && target !== undefined) groups.push({ source, target, targetVersion: str(g['targetVersion']), elements, reverse, unmapped });
  });
  if (arr(root['group']).length === 0 && issues.length === 0) issues.push({ pointer: '', message: 'ConceptMap has no group', hint: 'add a group with source, target and elements' });
  if (issues.length > 0) throw new ConceptMapError(issues);
  return new CompiledConceptMap(root, groups);
}
