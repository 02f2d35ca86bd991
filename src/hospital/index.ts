/**
 * Hospital side of a tidegate node: the client for the hospital's own FHIR R4 server, the durable
 * outbox of writes to it, the `_history` poller that picks up edits made directly on it, and a
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
  HospitalHistory,
  HospitalHistoryEntry,
  HospitalHistoryOptions,
  HospitalIdMap,
  HospitalOperation,
  HospitalResourceInput,
  HospitalSearchParams,
  HospitalUpsertResult,
} from './client.ts';
export { ensureFhirDefinitionsLoaded, fhirDefinitionsLoaded, FHIR_STRUCTURE_DEFINITION_FILES } from './definitions.ts';
export { JournaledMemoryRepository, startMedplumHospital } from './medplum-server.ts';
export type { JournalEntry, MedplumHospital, MedplumHospitalOptions } from './medplum-server.ts';
export { HospitalSync } from './sync.ts';
export type { HospitalSyncOptions, HospitalWriter } from './sync.ts';
export { HospitalOutbox, outboxQueueName } from './outbox.ts';
export type { HospitalOutboxOptions, HospitalOutboxStats, OutboxLogger } from './outbox.ts';
export { HOSPITAL_SYSTEM_AUTHOR, HospitalPoller } from './poller.ts';
export type { HospitalHistorySource, HospitalPollerOptions, HospitalPollerStats, HospitalPollResult, PollerLogger } from './poller.ts';
export { assertCursor, FileCursorStore, MemoryCursorStore, RedisCursorStore } from './cursor.ts';
export type { HospitalCursor, HospitalCursorStore, RedisCursorStoreOptions } from './cursor.ts';
export { contentHash, DELETED_HASH, SyncLedger } from './ledger.ts';
