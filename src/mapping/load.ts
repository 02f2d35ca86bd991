/**
 * Loading a mapping file (docs/mappings.md): schema, ConceptMaps, FHIRPath conditions, with every
 * problem reported at its file, line and column with a fix hint. `tidegate config check` prints
 * these issues; a node given an invalid mapping file refuses to start with the same messages.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import type { z } from 'zod';
import { DEFAULT_PROFILES_DIR } from '../fhir/profiles.ts';
import { isKnownResourceType } from '../fhir/validate.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import { compileConceptMap, ConceptMapError } from './conceptmap.ts';
import type { CompiledConceptMap } from './conceptmap.ts';
import { jsonPositions, positionOf, toPointer } from './json-position.ts';
import type { JsonPositions } from './json-position.ts';
import { isYamlFile, yamlCommentHint, yamlPositions, yamlTypeHint } from './yaml-position.ts';
import { compileCondition, Router } from './routing.ts';
import { compileRedactRule, findNestedResourceWhere, MAX_NESTED_JSON_DEPTH, MAX_NESTED_RESOURCE_DEPTH, projectedTypesFor, RedactRuleError, redactResource } from './redact.ts';
import type { CompiledRedactRule } from './redact.ts';
import type { RouteDecision } from './routing.ts';
import { MappingFileSchema } from './schema.ts';
import type { ConsentPolicy, MappingFile, PatientMatchingConfig } from './schema.ts';
import { CrosswalkError, readCrosswalk, translateIdentifiers } from './identifiers.ts';
import type { ActiveIdentifierSystem, Crosswalk, IdentifierChange } from './identifiers.ts';
import { translateResource } from './translate.ts';
import type { ActiveConceptMap, MappingDirection, TranslationResult } from './translate.ts';

/** One problem in a configuration file, at its place. Lines and columns are 1-based. */
export interface ConfigIssue {
  severity: 'error' | 'warning';
  /** The file, as given (relative to the working directory when possible). */
  file: string;
  line: number;
  column: number;
  /** JSON Pointer of the value (RFC 6901); `''` for the whole file. */
  pointer: string;
  message: string;
  /** How to fix it. */
  hint: string;
}

/**
 * One issue as one line plus its hint, compiler style: `file:line:column: error: message` then
 * `  hint: …`.
 * @param issue - the issue.
 */
export function formatIssue(issue: ConfigIssue): string {
  return `${issue.file}:${issue.line}:${issue.column}: ${issue.severity}: ${issue.message}${issue.pointer ? ` (at ${issue.pointer})` : ''}\n  hint: ${issue.hint}`;
}

/** Thrown by {@link loadMappingOrThrow}: `issues` are the errors (and warnings) found; the message lists them. */
export class MappingConfigError extends Error {
  override readonly name = 'MappingConfigError';
  readonly code = 'ERR_MAPPING_CONFIG';
  readonly issues: readonly ConfigIssue[];
  /** @param issues - every issue found (at least one error). */
  constructor(issues: readonly ConfigIssue[]) {
    super(`Invalid mapping configuration:\n${issues.map(formatIssue).join('\n')}`);
    this.issues = issues;
  }
}

/** A display name for a path: relative to the working directory when that is shorter. */
export function displayPath(file: string): string {
  const rel = relative(process.cwd(), file);
  return rel !== '' && !rel.startsWith('..') ? rel : file;
}

/** Reads a JSON file for the checks: its value, positions, and an issue when it is not JSON. */
export function readJsonFile(file: string): { value: unknown; positions: JsonPositions; issue: ConfigIssue | undefined } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return {
      value: undefined,
      positions: { values: new Map(), keys: new Map(), error: undefined },
      issue: { severity: 'error', file: displayPath(file), line: 1, column: 1, pointer: '', message: `cannot read the file (${e.code ?? e.message})`, hint: 'check the path; paths in a config file are relative to that file' },
    };
  }
  const positions = jsonPositions(text);
  if (positions.error) {
    return {
      value: undefined,
      positions,
      issue: {
        severity: 'error',
        file: displayPath(file),
        ...positions.error.position,
        pointer: '',
        message: `not JSON: ${positions.error.message}`,
        hint: positions.error.message.startsWith('duplicate key')
          ? 'remove one of the two: a JSON reader would keep only the last, silently'
          : positions.error.message.startsWith('nested deeper')
            ? 'a configuration file is a few levels deep: check the brackets'
            : 'JSON has no comments or trailing commas; strings use double quotes',
      },
    };
  }
  // a byte order mark (some editors write one) is not part of the JSON text (RFC 8259 §8.1)
  return { value: JSON.parse(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text) as unknown, positions, issue: undefined };
}

/**
 * Reads a mapping file for the checks: YAML 1.2 when its name ends in `.yaml`/`.yml`
 * (src/mapping/yaml-position.ts), JSON otherwise (ConceptMaps stay FHIR JSON: {@link readJsonFile}).
 * @param file - path of the file.
 * @returns As {@link readJsonFile}, plus for YAML a `hint` for schema issues caused by YAML's
 *   implicit typing (undefined: use the default hint).
 */
export function readConfigFile(file: string): ReturnType<typeof readJsonFile> & { hint?: (i: z.core.$ZodIssue) => string | undefined } {
  let text: string;
  try {
    if (!isYamlFile(file)) return readJsonFile(file);
    text = readFileSync(file, 'utf8');
  } catch {
    return readJsonFile(file); // reports the unreadable file
  }
  const { value, positions } = yamlPositions(text);
  if (positions.error) {
    const { message, position, pointer, hint } = positions.error;
    return { value: undefined, positions, issue: { severity: 'error', file: displayPath(file), ...position, pointer, message, hint } };
  }
  return { value, positions, issue: undefined, hint: (i) => yamlTypeHint(positions, i) };
}

/** Fix hints for zod issue codes. */
function zodHint(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'unrecognized_keys':
      return 'remove it, or check its spelling against docs/mappings.schema.json';
    case 'invalid_type':
      return `expected ${issue.expected}; see docs/mappings.md`;
    case 'invalid_value':
      return `allowed: ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'too_small':
      return 'give at least one item, or leave the member out';
    default:
      return 'see docs/mappings.md and docs/mappings.schema.json';
  }
}

/**
 * Schema issues of a parsed file as {@link ConfigIssue}s at their positions.
 * @param file - the file path (for messages).
 * @param positions - positions of the file's text.
 * @param issues - zod issues.
 * @param hint - optional hint override (returning undefined: the default hint).
 */
export function zodIssues(file: string, positions: JsonPositions, issues: readonly z.core.$ZodIssue[], hint?: (i: z.core.$ZodIssue) => string | undefined): ConfigIssue[] {
  return issues.flatMap((i) => {
    const keys = i.code === 'unrecognized_keys' ? i.keys : [undefined];
    return keys.map((k) => {
      const pointer = toPointer(k === undefined ? i.path : [...i.path, k]);
      const message = k === undefined ? i.message : `unknown member "${k}"`;
      return { severity: 'error' as const, file: displayPath(file), ...positionOf(positions, pointer), pointer, message, hint: hint?.(i) ?? zodHint(i) };
    });
  });
}

/** Options of {@link loadMapping}. */
export interface LoadMappingOptions {
  /** Peer ids of the node config: a route for another id is an error. */
  peers?: readonly string[];
  /** Where ConceptMaps named by url are looked up when the file has no `profilesDir`; default the repository `profiles/`. */
  profilesDir?: string;
  /** Told about conditions that fail while evaluating and codings dropped by a map (no PHI). */
  logger?: MappingLogger;
}

/** Minimal pino-compatible logger. */
export interface MappingLogger {
  warn(obj: object, msg: string): void;
}

/** A loaded mapping configuration: routing and code translation. See docs/mappings.md. */
export class Mapping {
  /** The mapping file (absolute path). */
  readonly file: string;
  /** The per-peer routing rules. */
  readonly router: Router;
  /** The ConceptMaps in use, in configuration order. */
  readonly conceptMaps: readonly ActiveConceptMap[];
  /** The identifier systems in use (src/mapping/identifiers.ts), in configuration order. */
  readonly identifierSystems: readonly ActiveIdentifierSystem[];
  /** Patient matching rules (src/mapping/matching.ts) with `reviewFile` resolved to an absolute path; absent when not configured. */
  readonly patientMatching: PatientMatchingConfig | undefined;
  /** How Consent resources decide sharing (src/mapping/consent.ts), defaults applied. */
  readonly consent: ConsentPolicy;
  readonly #consentActors: ReadonlyMap<string, readonly string[]>;
  readonly #log: MappingLogger | undefined;
  readonly #redactions: ReadonlyMap<string, readonly CompiledRedactRule[]>;
  readonly #redactedTypes = new Map<string, ReadonlySet<string>>();
  /** The routes' `withhold` rules alone (no `send` rules), applied to nested resources (see {@link explainRoute}). */
  readonly #withholding: Router | undefined;

  /** Use {@link loadMapping} or {@link loadMappingOrThrow}. */
  constructor(file: string, router: Router, conceptMaps: readonly ActiveConceptMap[], logger?: MappingLogger, identity: { identifierSystems?: readonly ActiveIdentifierSystem[]; patientMatching?: PatientMatchingConfig; redactions?: ReadonlyMap<string, readonly CompiledRedactRule[]>; consent?: ConsentPolicy; consentActors?: ReadonlyMap<string, readonly string[]>; withholding?: Router } = {}) {
    this.file = file;
    this.router = router;
    this.conceptMaps = conceptMaps;
    this.identifierSystems = identity.identifierSystems ?? [];
    this.patientMatching = identity.patientMatching;
    this.#log = logger;
    this.#redactions = identity.redactions ?? new Map();
    this.consent = identity.consent ?? { honour: true, scopes: ['patient-privacy'], noConsent: 'permit' };
    this.#consentActors = identity.consentActors ?? new Map();
    this.#withholding = identity.withholding;
  }

  /** True when the peer's route has `withhold` rules (then they also reach nested resources). */
  #withholds(peerId: string): boolean {
    return this.#withholding?.peers.includes(peerId) ?? false;
  }

  /**
   * The test {@link explainRoute} applies to each resource nested in a resource sent to `peerId`:
   * of a type the peer's redaction rules name (when the root is not one: it is not a projection),
   * or withheld by the peer's `withhold` rules (a condition that fails to evaluate withholds).
   */
  #nestedTest(peerId: string, rootType: unknown): ((nested: FhirJsonObject) => boolean) | undefined {
    const projected = projectedTypesFor(this.redactionFor(peerId));
    const byType = projected.size > 0 && !(typeof rootType === 'string' && projected.has(rootType));
    const withholds = this.#withholds(peerId);
    if (!byType && !withholds) return undefined;
    return (nested) => (byType && projected.has(nested.resourceType as string)) || (withholds && !this.#withholding!.explain(peerId, nested).allowed);
  }

  /**
   * The references that stand for a peer in `Consent.provision.actor` (`routes.<peer>.consentActors`).
   * @param peerId - a peer node id.
   * @returns e.g. `["Organization/hospital-b"]`; empty when none are configured.
   */
  consentActors(peerId: string): readonly string[] {
    return this.#consentActors.get(peerId) ?? [];
  }

  /**
   * The redaction rules of a peer's route (src/mapping/redact.ts), or undefined when it has none:
   * such a peer is a projection peer for {@link redactedTypes} (src/mapping/projection.ts).
   * @param peerId - a peer node id.
   */
  redactionFor(peerId: string): readonly CompiledRedactRule[] | undefined {
    const rules = this.#redactions.get(peerId);
    return rules !== undefined && rules.length > 0 ? rules : undefined;
  }

  /**
   * The resource types a peer's redaction rules name (empty when it has none).
   * @param peerId - a peer node id.
   */
  redactedTypes(peerId: string): ReadonlySet<string> {
    let types = this.#redactedTypes.get(peerId);
    if (types === undefined) {
      types = new Set((this.#redactions.get(peerId) ?? []).map((r) => r.type));
      this.#redactedTypes.set(peerId, types);
    }
    return types;
  }

  /**
   * Redacts a resource for a peer (src/mapping/redact.ts `redactResource`); a `where` that fails
   * to evaluate is logged (rule place, no content) and the rule applied (fail closed).
   * @param peerId - a peer node id.
   * @param resource - FHIR JSON; not modified.
   * @returns The copy the peer receives and the element paths redacted (no values).
   */
  redact<T extends FhirJsonObject>(peerId: string, resource: T): { resource: T; redacted: string[] } {
    return redactResource(resource, this.#redactions.get(peerId) ?? [], (rule, err) => this.#log?.warn({ peer: peerId, rule: rule.at, err: err.message }, 'mapping: redaction condition failed; element redacted'));
  }

  /** Peer ids that have routing rules. */
  get peers(): string[] {
    return this.router.peers;
  }

  /**
   * May `resource` be sent to `peerId`? See {@link explainRoute}.
   * @param peerId - a peer node id.
   * @param resource - plain JSON of the resource's current version.
   */
  routeAllows(peerId: string, resource: unknown): boolean {
    return this.explainRoute(peerId, resource).allowed;
  }

  /**
   * May `resource` be sent to `peerId`, and why. First the peer's route (src/mapping/routing.ts);
   * when it allows and the peer has redaction rules (docs/mappings.md "Redaction"), a resource of a
   * type the rules do not name (so not sent as a projection) that nests a resource of a type they do
   * name (a contained Patient, https://hl7.org/fhir/R4/references.html#contained; a Patient entry of
   * a stored Bundle, https://hl7.org/fhir/R4/bundle.html; any object below the root with a
   * `resourceType`), or nests deeper than redaction walks, is withheld (fail closed:
   * src/mapping/redact.ts `findNestedResource`). A resource of a named type goes as a projection
   * and its nested resources are redacted there. The peer's `withhold` rules reach nested resources
   * too: a resource (projection or not) nesting one they withhold is withheld (an Observation whose
   * `contained[]` holds a withheld Condition, a Bundle with such an entry; a condition that fails
   * to evaluate withholds; `send` rules apply to the resource sent only). Routing decisions reach Tide as withheld labels
   * (src/tide/peer-authz.ts `outboundLabelsOf`), so fanout, anti-entropy and `map preview` agree.
   * @param peerId - a peer node id.
   * @param resource - plain JSON of the resource (`JSON.parse` or `toPlainJson` output).
   * @returns The decision; `reason` names the rule or the nested resource's type and path (never values).
   */
  explainRoute(peerId: string, resource: unknown): RouteDecision {
    const decision = this.router.explain(peerId, resource);
    if (!decision.allowed) return decision;
    const test = this.#nestedTest(peerId, (resource as { resourceType?: unknown } | null)?.resourceType);
    if (test === undefined) return decision; // no redaction rules (or a projection) and no withhold rules
    const hit = findNestedResourceWhere(resource, test);
    if (hit === undefined) return decision;
    const projected = projectedTypesFor(this.redactionFor(peerId));
    const isProjection = projected.has(String((resource as { resourceType?: unknown }).resourceType));
    // a projection's redaction removes what lies below the bounds (redact.ts): nothing unknown is sent
    if (hit.kind === 'too-deep' && isProjection) return decision;
    if (hit.kind === 'found' && projected.has(hit.type) && !isProjection) {
      return { allowed: false, reason: `holds a nested ${hit.type} that ${peerId}'s redaction rules name: withheld (only ${hit.type} resources themselves go to ${peerId}, as projections), at ${hit.path}` };
    }
    if (hit.kind === 'found') return { allowed: false, reason: `holds a nested ${hit.type} that ${peerId}'s withhold rules withhold: withheld, at ${hit.path}` };
    return { allowed: false, reason: `nests deeper than redaction checks (${MAX_NESTED_RESOURCE_DEPTH} levels of resources, ${MAX_NESTED_JSON_DEPTH} JSON levels in one; at ${hit.path}) and ${peerId} has ${projected.size > 0 ? 'redaction' : 'withhold'} rules: withheld, fail closed` };
  }

  /**
   * The peers a resource stays withheld from because an **earlier** version of it nested a type
   * their redaction rules name, or a resource their `withhold` rules withhold (see {@link explainRoute}). The shared document of a resource
   * carries its history (src/merge/doc.ts: an earlier version's entries stay in the document while
   * any of them is not superseded), so removing the nested resource does not make the document
   * safe to send: the withholding is permanent for that resource and peer (fail closed). A cheap
   * text test (`"resourceType"` more than once) skips versions that nest nothing.
   * @param type - the resource type (for a peer whose redaction rules name it, only its withhold rules are checked: it gets projections).
   * @param bodies - FHIR JSON texts of the earlier versions (null/undefined for deletions: skipped).
   * @returns Peer ids, each once; empty when no peer has redaction or withhold rules.
   */
  nestedInHistory(type: string, bodies: Iterable<string | null | undefined>): string[] {
    const tests = new Map<string, (nested: FhirJsonObject) => boolean>();
    for (const p of this.peers) {
      const test = this.#nestedTest(p, type);
      if (test !== undefined) tests.set(p, test);
    }
    if (tests.size === 0) return [];
    const out = new Set<string>();
    for (const body of bodies) {
      if (!body) continue;
      const first = body.indexOf('"resourceType"');
      if (first < 0 || body.indexOf('"resourceType"', first + 1) < 0) continue;
      let resource: unknown;
      try {
        resource = JSON.parse(body);
      } catch {
        for (const p of tests.keys()) out.add(p); // unreadable: fail closed
        continue;
      }
      for (const [p, test] of tests) {
        if (out.has(p)) continue;
        const hit = findNestedResourceWhere(resource, test);
        // as explainRoute: below the bounds of a projection, redaction removes what is there
        if (hit !== undefined && !(hit.kind === 'too-deep' && projectedTypesFor(this.redactionFor(p)).has(type))) out.add(p);
      }
      if (out.size === tests.size) break;
    }
    return [...out];
  }


  /**
   * Translates codings (src/mapping/translate.ts), then identifiers (src/mapping/identifiers.ts:
   * inbound local → shared, outbound shared → local, originals kept) at the hospital boundary.
   * Codings dropped by a `drop` map are logged as warnings (map and element path, not the code).
   * @param resource - FHIR JSON; not modified.
   * @param direction - `inbound` (read from this node's hospital) or `outbound` (written to it).
   * @returns The translated resource, the coding changes and the identifier changes (systems and paths, no values).
   * @throws MappingError when a `reject` map meets a coding it cannot translate.
   */
  translate(resource: FhirJsonObject, direction: MappingDirection): TranslationResult & { identifiers: IdentifierChange[] } {
    const result = translateResource(resource, this.conceptMaps, direction);
    for (const c of result.changes) if (c.action === 'dropped') this.#log?.warn({ map: c.map, path: c.path, direction }, 'mapping: coding without a translation dropped');
    const ids = translateIdentifiers(result.resource, this.identifierSystems, direction);
    return { resource: ids.resource, changes: result.changes, identifiers: ids.changes };
  }

  /**
   * The ConceptMaps in use, optionally only the one with canonical `url` (and `version`).
   * @param url - canonical URL.
   * @param version - `ConceptMap.version`.
   */
  maps(url?: string, version?: string): CompiledConceptMap[] {
    return this.conceptMaps.map((m) => m.map).filter((m) => (url === undefined || m.url === url) && (version === undefined || m.version === version));
  }
}

/** ConceptMaps found in a directory (`*.json` whose resourceType is ConceptMap), by canonical URL. */
function conceptMapsIn(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of names.filter((n) => n.endsWith('.json')).sort()) {
    const file = join(dir, name);
    try {
      if (!statSync(file).isFile()) continue;
      const v = JSON.parse(readFileSync(file, 'utf8')) as { resourceType?: unknown; url?: unknown };
      if (v?.resourceType === 'ConceptMap' && typeof v.url === 'string' && !out.has(v.url)) out.set(v.url, file);
    } catch {
      // unreadable files are reported by `config check` when it walks the directory
    }
  }
  return out;
}

/**
 * The JSON Pointer of the first own key `__proto__` in a parsed file, or undefined. `JSON.parse`
 * and the YAML reader keep it as an own key, but the schema's records would turn it into the
 * object's prototype, so a route (or anything) under it would vanish without an error.
 */
function protoKeyAt(v: unknown, ptr: string): string | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  for (const [k, child] of Object.entries(v)) {
    const at = `${ptr}/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`;
    if (k === '__proto__') return at;
    const found = protoKeyAt(child, at);
    if (found !== undefined) return found;
  }
  return undefined;
}

/**
 * Loads and checks a mapping file. Never throws for a bad file: every problem is an issue.
 * @param file - path of the mapping file (JSON, or YAML when named `*.yaml`/`*.yml`).
 * @param opts - see {@link LoadMappingOptions}.
 * @returns The mapping when there is no error, and every issue (errors and warnings) in file order.
 */
export function loadMapping(file: string, opts: LoadMappingOptions = {}): { mapping: Mapping | undefined; issues: ConfigIssue[]; files: string[] } {
  const path = resolve(file);
  const shown = displayPath(path);
  const issues: ConfigIssue[] = [];
  const files = [path];
  const read = readConfigFile(path);
  if (read.issue) return { mapping: undefined, issues: [read.issue], files };
  const proto = protoKeyAt(read.value, '');
  if (proto !== undefined) return { mapping: undefined, issues: [{ severity: 'error', file: shown, ...positionOf(read.positions, proto), pointer: proto, message: 'key "__proto__" is not allowed in a mapping file', hint: 'JavaScript objects cannot hold this key (it would be dropped silently): rename it' }], files };
  const parsed = MappingFileSchema.safeParse(read.value);
  if (!parsed.success) return { mapping: undefined, issues: zodIssues(path, read.positions, parsed.error.issues, read.hint), files };
  const cfg: MappingFile = parsed.data;
  const at = (pointer: string): { file: string; line: number; column: number; pointer: string } => ({ file: shown, ...positionOf(read.positions, pointer), pointer });
  const dir = dirname(path);

  // ConceptMaps
  const profilesDir = cfg.profilesDir !== undefined ? resolve(dir, cfg.profilesDir) : (opts.profilesDir ?? DEFAULT_PROFILES_DIR);
  let byUrl: Map<string, string> | undefined;
  const active: ActiveConceptMap[] = [];
  const sourceOwner = new Map<string, number>();
  cfg.conceptMaps.forEach((ref, i) => {
    const ptr = `/conceptMaps/${i}`;
    let mapFile: string;
    if (ref.file !== undefined) {
      mapFile = resolve(dir, ref.file);
    } else {
      byUrl ??= conceptMapsIn(profilesDir);
      const found = byUrl.get(ref.url!);
      if (found === undefined) {
        issues.push({ severity: 'error', ...at(`${ptr}/url`), message: `no ConceptMap with url ${ref.url} in ${displayPath(profilesDir)}`, hint: 'put the ConceptMap JSON in the profiles directory, set "profilesDir", or name it with "file"' });
        return;
      }
      mapFile = found;
    }
    files.push(mapFile);
    const mapRead = readJsonFile(mapFile);
    if (mapRead.issue) {
      issues.push(ref.file !== undefined ? { ...mapRead.issue, ...at(`${ptr}/file`), message: `${displayPath(mapFile)}: ${mapRead.issue.message}` } : mapRead.issue);
      return;
    }
    let map: CompiledConceptMap;
    try {
      map = compileConceptMap(mapRead.value);
    } catch (err) {
      if (!(err instanceof ConceptMapError)) throw err;
      for (const ci of err.issues) issues.push({ severity: 'error', file: displayPath(mapFile), ...positionOf(mapRead.positions, ci.pointer), pointer: ci.pointer, message: ci.message, hint: ci.hint });
      return;
    }
    for (const s of map.sourceSystems) {
      const owner = sourceOwner.get(s);
      if (owner !== undefined) issues.push({ severity: 'warning', ...at(ptr), message: `source system ${s} is already translated by conceptMaps[${owner}], which is applied first`, hint: 'merge the two maps, or remove one' });
      else sourceOwner.set(s, i);
    }
    if (ref.unmapped === 'drop' && ref.direction !== 'outbound') {
      issues.push({
        severity: 'warning',
        ...at(`${ptr}/unmapped`),
        message: 'unmapped: "drop" on the inbound path removes the coding from the shared resource, and from this hospital\u2019s own copy when the node writes it back',
        hint: 'use "direction": "outbound" with "drop", or "pass-through"/"reject" inbound',
      });
    }
    active.push({ map, direction: ref.direction, unmapped: ref.unmapped, equivalence: new Set(ref.equivalence), configPath: `conceptMaps[${i}]` });
  });

  // Identifier systems
  const crosswalks = new Map<string, Crosswalk>();
  const idSystems: ActiveIdentifierSystem[] = [];
  const pairs = new Map<string, number>();
  const sharedOwner = new Map<string, { local: string; i: number }>();
  cfg.identifierSystems.forEach((entry, i) => {
    const ptr = `/identifierSystems/${i}`;
    const pair = `${entry.local} ${entry.shared}`;
    const dup = pairs.get(pair);
    if (dup !== undefined) {
      issues.push({ severity: 'error', ...at(ptr), message: `identifierSystems[${dup}] already maps ${entry.local} to ${entry.shared}`, hint: 'remove one of the two entries' });
      return;
    }
    pairs.set(pair, i);
    const owner = sharedOwner.get(entry.shared);
    if (owner !== undefined && owner.local !== entry.local) {
      issues.push({ severity: 'error', ...at(`${ptr}/shared`), message: `shared system ${entry.shared} is already the counterpart of ${owner.local} (identifierSystems[${owner.i}]); outbound, a shared identifier must give one local system`, hint: 'give each local system its own shared system' });
      return;
    }
    sharedOwner.set(entry.shared, { local: entry.local, i });
    let crosswalk: Crosswalk | undefined;
    if (entry.crosswalk !== undefined) {
      const cwFile = resolve(dir, entry.crosswalk);
      files.push(cwFile);
      crosswalk = crosswalks.get(cwFile);
      if (crosswalk === undefined) {
        try {
          crosswalk = readCrosswalk(cwFile);
          crosswalks.set(cwFile, crosswalk);
        } catch (err) {
          if (err instanceof CrosswalkError) {
            for (const ci of err.issues) issues.push({ severity: 'error', file: displayPath(cwFile), line: ci.line, column: 1, pointer: '', message: `crosswalk: ${ci.message}`, hint: ci.hint });
          } else {
            const e = err as NodeJS.ErrnoException;
            issues.push({ severity: 'error', ...at(`${ptr}/crosswalk`), message: `cannot read the crosswalk ${displayPath(cwFile)} (${e.code ?? e.message})`, hint: 'check the path; it is relative to the mapping file' });
          }
          return;
        }
      }
    }
    for (const t of entry.resourceTypes) {
      if (!isKnownResourceType(t)) issues.push({ severity: 'error', ...at(`${ptr}/resourceTypes/${entry.resourceTypes.indexOf(t)}`), message: `"${t}" is not an R4 resource type`, hint: 'resource type names are case-sensitive, e.g. "Patient", "Practitioner"' });
    }
    idSystems.push({ local: entry.local, shared: entry.shared, ...(crosswalk !== undefined ? { crosswalk } : {}), resourceTypes: new Set(entry.resourceTypes), configPath: `identifierSystems[${i}]` });
  });
  let patientMatching: PatientMatchingConfig | undefined;
  if (cfg.patientMatching !== undefined) {
    const pm = cfg.patientMatching;
    const shared = pm.sharedSystems ?? [...new Set(cfg.identifierSystems.map((e) => e.shared))];
    if (shared.length === 0 && pm.deterministic === undefined) {
      issues.push({ severity: 'warning', ...at('/patientMatching'), message: 'no shared identifier system and no deterministic rule: no Patient is ever a sure match', hint: 'add identifierSystems, "sharedSystems" or "deterministic"' });
    }
    patientMatching = { ...pm, sharedSystems: shared, ...(pm.reviewFile !== undefined ? { reviewFile: resolve(dir, pm.reviewFile) } : {}) };
  }

  // Routes
  const peers = opts.peers === undefined ? undefined : new Set(opts.peers);
  const redactions = new Map<string, CompiledRedactRule[]>();
  for (const [peer, route] of Object.entries(cfg.routes)) {
    const rptr = `/routes/${peer.replace(/~/g, '~0').replace(/\//g, '~1')}`;
    if (peers !== undefined && !peers.has(peer)) {
      issues.push({ severity: 'error', ...at(rptr), message: `route for "${peer}", which is not a peer in the node configuration`, hint: `use one of: ${[...peers].join(', ') || '(no peers configured)'}` });
    }
    for (const kind of ['send', 'withhold'] as const) {
      (route[kind] ?? []).forEach((rule, i) => {
        const ptr = `${rptr}/${kind}/${i}`;
        const types = rule.resourceType === undefined ? [] : typeof rule.resourceType === 'string' ? [rule.resourceType] : rule.resourceType;
        types.forEach((t, ti) => {
          if (!isKnownResourceType(t)) issues.push({ severity: 'error', ...at(typeof rule.resourceType === 'string' ? `${ptr}/resourceType` : `${ptr}/resourceType/${ti}`), message: `"${t}" is not an R4 resource type`, hint: 'resource type names are case-sensitive, e.g. "Observation", "DiagnosticReport"' });
        });
        if (rule.where !== undefined) {
          try {
            compileCondition(rule.where, types.filter((t) => isKnownResourceType(t)));
          } catch (err) {
            issues.push({ severity: 'error', ...at(`${ptr}/where`), message: (err as Error).message, hint: yamlCommentHint(read.positions, `${ptr}/where`) ?? "FHIRPath such as \"category.coding.where(code = 'laboratory').exists()\"; see https://hl7.org/fhir/R4/fhirpath.html" });
          }
        }
      });
    }
    if (route.send !== undefined && route.send.length === 0) {
      issues.push({ severity: 'warning', ...at(`${rptr}/send`), message: `"send": [] sends nothing to ${peer}`, hint: 'leave "send" out to send everything, or list what to send' });
    }
    if (route.consentActors !== undefined && !cfg.consent.honour) {
      issues.push({ severity: 'warning', ...at(`${rptr}/consentActors`), message: `consentActors of ${peer} are unused: "consent.honour" is false, so no Consent is honoured`, hint: 'remove "consentActors", or set "consent": { "honour": true }' });
    }
    // Redaction (src/mapping/redact.ts): every path an R4 element, every condition compiles
    (route.redact ?? []).forEach((rule, i) => {
      try {
        const compiled = compileRedactRule(rule, `routes.${peer}.redact[${i}]`);
        redactions.set(peer, [...(redactions.get(peer) ?? []), compiled]);
      } catch (err) {
        if (!(err instanceof RedactRuleError)) throw err;
        issues.push({ severity: 'error', ...at(`${rptr}/redact/${i}/${err.member}`), message: err.message, hint: err.member === 'path' ? 'an R4 element path such as "Patient.telecom", "Patient.address.line" or "Observation.value[x]" (https://hl7.org/fhir/R4/elementdefinition.html#path)' : err.member === 'action' ? 'see docs/mappings.md "Redaction"; check the result with `tidegate map preview` and $validate' : "FHIRPath such as \"meta.tag.where(code = 'research').exists()\"; see https://hl7.org/fhir/R4/fhirpath.html" });
      }
    });
  }
  issues.sort((a, b) => (a.file === b.file ? a.line - b.line || a.column - b.column : 0));
  if (issues.some((i) => i.severity === 'error')) return { mapping: undefined, issues, files };
  const onError = opts.logger ? { onError: (peerId: string, where: string, err: Error) => opts.logger!.warn({ peer: peerId, rule: where, err: err.message }, 'mapping: routing condition failed; resource withheld') } : {};
  const router = new Router(cfg.routes, onError);
  // the withhold rules alone, for the resources nested in one sent (Mapping.explainRoute)
  const withholding = new Router(Object.fromEntries(Object.entries(cfg.routes).filter(([, r]) => (r.withhold ?? []).length > 0).map(([peer, r]) => [peer, { withhold: r.withhold }])), onError);
  return { mapping: new Mapping(path, router, active, opts.logger, { identifierSystems: idSystems, ...(patientMatching !== undefined ? { patientMatching } : {}), redactions, consent: cfg.consent, consentActors: new Map(Object.entries(cfg.routes).map(([peer, r]) => [peer, r.consentActors ?? []])), withholding }), issues, files };
}

/**
 * {@link loadMapping} for start-up: the node refuses to start with an invalid mapping file.
 * @param file - path of the mapping file (JSON, or YAML when named `*.yaml`/`*.yml`).
 * @param opts - see {@link LoadMappingOptions}.
 * @returns The mapping (warnings are logged to `opts.logger` when given).
 * @throws MappingConfigError listing every error and warning (file:line:column, message, hint).
 */
export function loadMappingOrThrow(file: string, opts: LoadMappingOptions = {}): Mapping {
  const { mapping, issues } = loadMapping(file, opts);
  if (mapping === undefined) throw new MappingConfigError(issues);
  for (const i of issues) opts.logger?.warn({ file: i.file, line: i.line, column: i.column }, `mapping configuration: ${i.message}`);
  return mapping;
}
