/**
 * Import of FHIR Bulk Data ndjson exports (https://hl7.org/fhir/uv/bulkdata/export.html):
 * reading, conditional-reference resolution and import ordering. Named exports only.
 */
export {
  FHIR_ID_PATTERN,
  importPlan,
  orderForImport,
  readNdjsonFolder,
  RESOURCE_TYPE_PATTERN,
  resolveConditionalReferences,
  sourceOf,
  TYPE_PREFERENCE,
  typeImportOrder,
} from './ndjson.ts';
export type { ImportPlan, ImportProblem, ImportSource, UnresolvedReference } from './ndjson.ts';
