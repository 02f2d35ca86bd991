/**
 * The node's CapabilityStatement: https://hl7.org/fhir/R4/capabilitystatement.html.
 * Lists only the interactions tidegate really implements.
 */
import { getResourceTypes } from '@medplum/core';
import type { CapabilityStatement } from '@medplum/fhirtypes';
import { ensureFhirDefinitionsLoaded } from '../hospital/definitions.ts';

/** tidegate's software version, reported in the CapabilityStatement. */
export const TIDEGATE_VERSION = '0.1.0';

/**
 * Builds the CapabilityStatement.
 * @param baseUrl - the node's FHIR base URL, e.g. `http://127.0.0.1:8080/fhir`.
 * @param nodeId - the node id, used in the implementation description.
 */
export function capabilityStatement(baseUrl: string, nodeId: string): CapabilityStatement {
  ensureFhirDefinitionsLoaded();
  const types = getResourceTypes().filter((t) => t !== 'Binary').sort();
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: '2026-11-29',
    kind: 'instance',
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    software: { name: 'tidegate', version: TIDEGATE_VERSION },
    implementation: { description: `tidegate node ${nodeId}: CRDT-merging FHIR gateway`, url: baseUrl },
    rest: [
      {
        mode: 'server',
        documentation: 'Writes merge (Yjs CRDT) instead of failing on concurrent edits. GET [type]/[id]/$conflicts lists values that lost a same-field merge.',
        resource: types.map((type) => ({
          type,
          versioning: 'versioned-update',
          readHistory: true,
          updateCreate: true,
          conditionalCreate: false,
          conditionalUpdate: false,
          conditionalDelete: 'not-supported',
          interaction: [
            { code: 'read' },
            { code: 'vread' },
            { code: 'update' },
            { code: 'delete' },
            { code: 'history-instance' },
            { code: 'create' },
          ],
        })),
      },
    ],
  };
}
