/**
 * Mappings for interface engineers (docs/mappings.md): per-peer routing with FHIRPath conditions,
 * ConceptMap code translation at the hospital boundary, `$translate`, and the checks behind
 * `tidegate config check` and `tidegate map preview`.
 */
export { CompiledConceptMap, ConceptMapError, compileConceptMap, fhirPathToPointer } from './conceptmap.ts';
export type { CodingValue, ConceptMapIssue, TranslationMatch } from './conceptmap.ts';
export { jsonPositions, pointerToken, positionOf, toPointer } from './json-position.ts';
export type { JsonPositions, SourcePosition } from './json-position.ts';
export { isYamlFile, yamlPositions, yamlTypeHint } from './yaml-position.ts';
export type { PlainScalar, YamlPositions } from './yaml-position.ts';
export { displayPath, formatIssue, loadMapping, loadMappingOrThrow, Mapping, MappingConfigError, readConfigFile, readJsonFile, zodIssues } from './load.ts';
export type { ConfigIssue, LoadMappingOptions, MappingLogger } from './load.ts';
export { compileCondition, conditionHolds, RouteConditionError, Router } from './routing.ts';
export type { RouteDecision } from './routing.ts';
export { ConceptMapRefSchema, ConsentPolicySchema, IdentifierSystemSchema, MappingFileSchema, mappingJsonSchema, PatientMatchingSchema, PeerRouteSchema, RedactRuleSchema, RouteRuleSchema, TRANSLATING_EQUIVALENCES } from './schema.ts';
export type { ConceptMapRef, ConsentPolicy, IdentifierSystemConfig, MappingFile, PatientMatchingConfig, RedactRule, RouteRule, TranslatingEquivalence } from './schema.ts';
export { MappingError, translateResource } from './translate.ts';
export type { ActiveConceptMap, CodingChange, MappingDirection, MappingErrorCode, TranslationResult } from './translate.ts';
export { TRANSLATE_OPERATION, translateOperation, translateRouter } from './translate-op.ts';
export type { ConceptMapProvider } from './translate-op.ts';
export { checkProfilesDir, formatCheckReport, runConfigCheck } from './check.ts';
export type { ConfigCheckOptions, ConfigCheckReport } from './check.ts';
export { diffLines, unifiedDiff } from './diff.ts';
export type { DiffLine } from './diff.ts';
export { formatPreview, previewMapping, previewResource } from './preview.ts';
export type { MapPreview } from './preview.ts';
export { CrosswalkError, parseCrosswalk, readCrosswalk, translateIdentifiers } from './identifiers.ts';
export type { ActiveIdentifierSystem, Crosswalk, CrosswalkIssue, IdentifierChange } from './identifiers.ts';
export { linkPatient, livePatientMatcher, matchPatient, matchPatientIndexed, MatchReviewList, normalizeName, pairId, PATIENT_MATCHER_AUTHOR, PatientIndex, PatientMatcher, patientMatcherFor } from './matching.ts';
export type { MatcherReplica, MatchOutcome, MatchReviewEntry, MatchRule, MatchRules, PatientMatch } from './matching.ts';
export { matchesRouter } from './matches-router.ts';
export { CONSENT_ACTION_SYSTEM, CONSENT_SCOPE_SYSTEM, ConsentEvaluationError, ConsentGate, consentDecision, consentGoverns, DEFAULT_CONSENT_POLICY, MAX_PROVISION_DEPTH, patientKeyOf, patientsOf, RESOURCE_TYPES_SYSTEM } from './consent.ts';
export type { ConsentConfig, ConsentDecision, ConsentGateOptions } from './consent.ts';
export type { MatchesRouterOptions } from './matches-router.ts';
export { LiveMapping, nodeReloader } from './live.ts';
export type { MappingReloadHook, MappingReloadReport, NodeReloadReport, PreparedMapping } from './live.ts';
export { compileRedactRule, DATA_ABSENT_REASON_URL, elementPathProblem, REDACTED_CODE, REDACTED_SYSTEM, REDACTED_TOKEN, redactActionProblem, RedactRuleError, redactResource, withRedactedLabel } from './redact.ts';
export type { CompiledRedactRule } from './redact.ts';
export { holdsProjectionWriter, newEpoch, openProjectionSqlite, ProjectionFeeds } from './projection.ts';
export type { OpenedProjectionStore, ProjectionFeedsOptions, ProjectionLogger, ProjectionStats } from './projection.ts';
