/**
 * Hospital side of a tidegate node: the client for the hospital's own FHIR R4 server, and a
 * Medplum-based stand-in hospital server for tests and the demo.
 */
export {
  comparableForm,
  HospitalClient,
  HospitalError,
  MemoryHospitalIdMap,
  SERVER_MANAGED_META_FIELDS,
} from './client.ts';
export type {
  ComparableFormOptions,
  HospitalClientOptions,
  HospitalErrorCode,
  HospitalErrorDetails,
  HospitalIdMap,
  HospitalOperation,
  HospitalResourceInput,
  HospitalSearchParams,
} from './client.ts';
export { ensureFhirDefinitionsLoaded, fhirDefinitionsLoaded, FHIR_STRUCTURE_DEFINITION_FILES } from './definitions.ts';
export { startMedplumHospital } from './medplum-server.ts';
export type { MedplumHospital, MedplumHospitalOptions } from './medplum-server.ts';
