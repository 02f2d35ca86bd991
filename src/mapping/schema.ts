/**
 * The mapping configuration file (docs/mappings.md): per-peer routing rules, ConceptMaps applied at
 * the hospital boundary and their unmapped-code policies. Validated with zod; the JSON Schema
 * published in docs/mappings.schema.json is generated from {@link MappingFileSchema} by
 * {@link mappingJsonSchema} (`test/mapping-config.test.ts` checks that the file is up to date).
 */
import { z } from 'zod';

/** A node id, as in the node configuration (src/config/config.ts). */
const NodeId = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'node ids are 1-64 of A-Z a-z 0-9 . _ - (starting alphanumeric)');
/** A FHIR resource type name (checked against R4 by `tidegate config check`). */
const ResourceType = z.string().regex(/^[A-Z][A-Za-z]{1,63}$/, 'must be a FHIR resource type such as "Observation"');

/**
 * ConceptMap equivalences (https://hl7.org/fhir/R4/valueset-concept-map-equivalence.html) that
 * count as a translation. `unmatched` and `disjoint` never do.
 */
export const TRANSLATING_EQUIVALENCES = ['relatedto', 'equivalent', 'equal', 'wider', 'subsumes', 'narrower', 'specializes', 'inexact'] as const;
/** One of {@link TRANSLATING_EQUIVALENCES}. */
export type TranslatingEquivalence = (typeof TRANSLATING_EQUIVALENCES)[number];

/** One routing rule: matches a resource of one of the types (any when absent) for which `where` is true (always when absent). */
export const RouteRuleSchema = z.strictObject({
  resourceType: z.union([ResourceType, z.array(ResourceType).min(1)]).optional().describe('resource type(s) the rule matches; any type when absent'),
  where: z
    .string()
    .min(1)
    .optional()
    .describe("FHIRPath (https://hl7.org/fhir/R4/fhirpath.html) evaluated on the resource's current version; must give true (a single Boolean true, or one non-Boolean item); empty is false"),
  description: z.string().optional().describe('free text for reviewers'),
});

/**
 * One redaction rule of a peer (docs/mappings.md "Redaction"): an element removed from, or masked
 * in, what the peer receives. `path` is a FHIR element path `Type.element(.child)*` without
 * array indices (https://hl7.org/fhir/R4/elementdefinition.html#path), e.g. `Patient.telecom` or
 * `Patient.address.line`.
 */
export const RedactRuleSchema = z.strictObject({
  path: z
    .string()
    .regex(/^[A-Z][A-Za-z]+(\.[a-z][A-Za-z0-9]*(\[x\])?)+$/, 'an element path such as "Patient.telecom" or "Patient.address.line"')
    .describe('FHIR element path Type.element(.child)*, without indices; every occurrence is redacted'),
  action: z
    .enum(['remove', 'mask'])
    .default('remove')
    .describe('remove: the element is left out; mask: its value is replaced by the data-absent-reason extension with code "masked" (https://hl7.org/fhir/R4/extension-data-absent-reason.html)'),
  where: z.string().min(1).optional().describe('FHIRPath condition on the resource; the rule applies only when it holds (always when absent)'),
  description: z.string().optional().describe('free text for reviewers'),
});

/** Routing of one peer: what this node sends it. */
export const PeerRouteSchema = z.strictObject({
  send: z.array(RouteRuleSchema).optional().describe('a resource is sent only if some rule matches; every resource when absent'),
  withhold: z.array(RouteRuleSchema).optional().describe('a resource matching any rule is never sent, even if a send rule matches'),
  redact: z
    .array(RedactRuleSchema)
    .optional()
    .describe('elements removed or masked in what this peer receives; such a peer gets a read-only projection of the resource types named here; a resource of another type that nests one of them is withheld from the peer (docs/mappings.md "Redaction")'),
  consentActors: z
    .array(z.string().regex(/^[A-Z][A-Za-z]+\/[A-Za-z0-9.-]{1,64}$/, 'a relative reference such as "Organization/hospital-b"'))
    .optional()
    .describe('references (e.g. "Organization/hospital-b") that stand for this peer in Consent.provision.actor.reference (docs/mappings.md "Consent")'),
  description: z.string().optional(),
});

/** How Consent resources decide sharing (docs/mappings.md "Consent"). */
export const ConsentPolicySchema = z.strictObject({
  honour: z.boolean().default(true).describe('honour active Consent resources when deciding what each peer receives; false turns it off (not recommended)'),
  scopes: z
    .array(z.string().min(1))
    .min(1)
    .default(['patient-privacy'])
    .describe('Consent.scope codes (http://terminology.hl7.org/CodeSystem/consentscope) that govern sharing with peers'),
  noConsent: z.enum(['permit', 'deny']).default('permit').describe('what applies to a patient without any active Consent of those scopes: permit (opt-out model) or deny (opt-in model)'),
  description: z.string().optional(),
});

/** A ConceptMap applied at the hospital boundary. */
export const ConceptMapRefSchema = z
  .strictObject({
    file: z.string().min(1).optional().describe('R4 ConceptMap JSON file, relative to the mapping file'),
    url: z.string().min(1).optional().describe('canonical URL of a ConceptMap found in the profiles directory'),
    direction: z
      .enum(['inbound', 'outbound', 'both'])
      .default('both')
      .describe('inbound: versions read from this hospital before they are merged and gossiped; outbound: versions written to this hospital'),
    unmapped: z
      .enum(['pass-through', 'drop', 'reject'])
      .default('pass-through')
      .describe('a coding of the source system without a translation: kept as is, removed (warning), or the whole version refused'),
    equivalence: z
      .array(z.enum(TRANSLATING_EQUIVALENCES))
      .min(1)
      .default(['equivalent', 'equal'])
      .describe('equivalences that count as a translation'),
    description: z.string().optional(),
  })
  .refine((m) => (m.file === undefined) !== (m.url === undefined), { message: 'give exactly one of "file" or "url"' });

/**
 * An identifier system (`Identifier.system`, https://hl7.org/fhir/R4/datatypes.html#Identifier):
 * an absolute URI such as `urn:oid:1.2.3.4.5`, written without the `|` of token search.
 */
const IdentifierSystemUri = z
  .string()
  .regex(/^[A-Za-z][A-Za-z0-9+.-]*:[^\s|]+$/, 'an identifier system is an absolute URI such as "urn:oid:1.2.3.4.5" or "https://mpi.example.org/sid/mrn", without "|" or spaces');

/**
 * One hospital-local identifier namespace (an MRN system) and the shared system it is known as
 * across the network (docs/mappings.md "Identifiers and patient matching").
 */
export const IdentifierSystemSchema = z
  .strictObject({
    local: IdentifierSystemUri.describe("this hospital's own identifier system (e.g. its MRN namespace)"),
    shared: IdentifierSystemUri.describe('the system the same identifier is known as across the network'),
    crosswalk: z
      .string()
      .min(1)
      .optional()
      .describe('CSV file (header "local,shared", relative to the mapping file) of local value -> shared value; absent: the value is the same in both systems'),
    resourceTypes: z.array(ResourceType).min(1).default(['Patient']).describe('resource types whose identifier element is translated'),
    description: z.string().optional(),
  })
  .refine((e) => e.local !== e.shared, { message: '"local" and "shared" must be different systems' });

/** Patient matching rules (docs/mappings.md "Identifiers and patient matching"). */
export const PatientMatchingSchema = z.strictObject({
  sharedSystems: z
    .array(IdentifierSystemUri)
    .optional()
    .describe('identifier systems whose equal value makes two Patients the same person; default: every "shared" system of identifierSystems'),
  deterministic: z
    .strictObject({
      identifierSystems: z.array(IdentifierSystemUri).min(1).describe('an equal identifier in one of these systems, with equal normalized family name, first given name and birthDate, makes two Patients the same person'),
    })
    .optional()
    .describe('the deterministic rule; absent: only shared identifiers make a sure match'),
  possible: z.boolean().default(true).describe('equal normalized family name, first given name and birthDate without an agreeing identifier go to the review list (GET /admin/matches)'),
  reviewFile: z.string().min(1).optional().describe('JSON file keeping the review list across restarts, relative to the mapping file; absent: in memory only'),
  description: z.string().optional(),
});

/** Schema of a mapping configuration file. */
export const MappingFileSchema = z.strictObject({
  $schema: z.string().optional().describe('path or URL of docs/mappings.schema.json, for editors'),
  description: z.string().optional(),
  profilesDir: z.string().min(1).optional().describe('where ConceptMaps named by url are looked up, relative to the mapping file; default the repository profiles/'),
  conceptMaps: z.array(ConceptMapRefSchema).default([]).describe('applied in this order to every Coding of each map\u2019s source system'),
  routes: z.record(NodeId, PeerRouteSchema).default({}).describe('per peer node id; a peer without an entry gets every resource (subject to the node config\u2019s resourceTypes and withheldLabels)'),
  identifierSystems: z.array(IdentifierSystemSchema).default([]).describe('local identifier systems and their shared counterparts, applied at the hospital boundary'),
  patientMatching: PatientMatchingSchema.optional().describe('rules deciding when a Patient read from this hospital is the same person as one the node holds'),
  consent: ConsentPolicySchema.default({ honour: true, scopes: ['patient-privacy'], noConsent: 'permit' }).describe('how Consent resources decide what each peer receives; honoured by default'),
  policyAgreement: z.enum(['warn', 'enforce']).default('warn').describe('when another node advertises other rules for a peer both serve (docs/tide.md "Policy agreement"): warn only, or also withhold from that node the resource types those rules protect until it agrees'),
});

/** A parsed mapping file (defaults applied). */
export type MappingFile = z.infer<typeof MappingFileSchema>;
/** A parsed routing rule. */
export type RouteRule = z.infer<typeof RouteRuleSchema>;
/** A parsed ConceptMap reference. */
export type ConceptMapRef = z.infer<typeof ConceptMapRefSchema>;
/** A parsed `identifierSystems[i]`. */
export type IdentifierSystemConfig = z.infer<typeof IdentifierSystemSchema>;
/** A parsed redaction rule. */
export type RedactRule = z.infer<typeof RedactRuleSchema>;
/** A parsed `consent`. */
export type ConsentPolicy = z.infer<typeof ConsentPolicySchema>;
/** A parsed `patientMatching`. */
export type PatientMatchingConfig = z.infer<typeof PatientMatchingSchema>;

/**
 * The JSON Schema (draft 2020-12) of the mapping file, generated from {@link MappingFileSchema}
 * with zod's `z.toJSONSchema` (input side: defaulted members are optional).
 * @returns The schema object, with `$id` and `title` set.
 */
export function mappingJsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(MappingFileSchema, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
  return { ...schema, $id: 'https://tidegate.example.org/schemas/mappings.schema.json', title: 'tidegate mapping configuration' };
}
