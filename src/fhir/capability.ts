/**
 * The node's CapabilityStatement: https://hl7.org/fhir/R4/capabilitystatement.html.
 * Lists only the interactions tidegate really implements.
 */
import { getResourceTypes } from '@medplum/core';
import type { CapabilityStatement } from '@medplum/fhirtypes';
import { ensureFhirDefinitionsLoaded } from '../hospital/definitions.ts';

/** tidegate's software version, reported in the CapabilityStatement. */
export const TIDEGATE_VERSION = '0.1.0';

/** What a node offers beyond the interactions every node has. */
export interface CapabilityFeatures {
  /** Search is forwarded to a hospital server (type level, system level with `_type`). */
  search: boolean;
  /** Known profiles, by resource type (listed as `supportedProfile`). */
  profiles?: Record<string, string[]>;
  /** `ConceptMap/$translate` is mounted (a mapping file is configured, src/mapping). */
  translate?: boolean;
  /** SMART on FHIR authorization is on (src/auth): advertised as `rest.security`. */
  smart?: { token?: string; authorize?: string };
}

/**
 * Builds the CapabilityStatement.
 * @param baseUrl - the node's FHIR base URL, e.g. `http://127.0.0.1:8080/fhir`.
 * @param nodeId - the node id, used in the implementation description.
 * @param features - optional features that are present (default: no search, no profiles).
 */
export function capabilityStatement(baseUrl: string, nodeId: string, features: CapabilityFeatures = { search: false }): CapabilityStatement {
  ensureFhirDefinitionsLoaded();
  const types = getResourceTypes().filter((t) => t !== 'Binary').sort();
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: '2026-11-29',
    kind: 'instance',
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    patchFormat: ['application/json-patch+json', 'application/fhir+json'],
    software: { name: 'tidegate', version: TIDEGATE_VERSION },
    implementation: { description: `tidegate node ${nodeId}: CRDT-merging FHIR gateway`, url: baseUrl },
    rest: [
      {
        mode: 'server',
        ...(features.smart
          ? {
              security: {
                cors: false,
                service: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }], text: 'SMART on FHIR (Bearer JWT; see .well-known/smart-configuration)' }],
                ...(features.smart.token || features.smart.authorize
                  ? {
                      extension: [
                        {
                          url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
                          extension: [
                            ...(features.smart.token ? [{ url: 'token', valueUri: features.smart.token }] : []),
                            ...(features.smart.authorize ? [{ url: 'authorize', valueUri: features.smart.authorize }] : []),
                          ],
                        },
                      ],
                    }
                  : {}),
              },
            }
          : {}),
        documentation:
          'Writes merge (Yjs CRDT) instead of failing on concurrent edits; If-Match with Prefer: handling=strict answers 412 on a version mismatch. ' +
          'GET [type]/[id]/$conflicts lists values that lost a same-field merge; POST [type]/[id]/$resolve-conflict (Parameters: path, choice winner|loser) resolves them. Conditional interactions match in the node\'s own store. ' +
          (features.search ? 'Search is answered by the hospital FHIR server (eventually consistent with the node); system-level search needs _type. ' : '') +
          `_summary (true|text|data|false${features.search ? '; count on search and history' : '; count on history'}) and _elements are enforced by the node on read, vread, history${features.search ? ' and search' : ''}; subsetted resources carry the SUBSETTED tag and are refused (422) as a write body. ` +
          'Transactions are all-or-nothing in the node\'s store; urn:uuid fullUrls and conditional references (Type?criteria) are resolved; search entries are refused in a transaction (use a batch).',
        interaction: [{ code: 'batch' }, { code: 'transaction' }, ...(features.search ? [{ code: 'search-system' as const }] : [])],
        resource: types.map((type) => ({
          type,
          ...(features.profiles?.[type]?.length ? { supportedProfile: features.profiles[type] } : {}),
          versioning: 'versioned-update',
          readHistory: true,
          updateCreate: true,
          conditionalCreate: true,
          conditionalRead: 'full-support',
          conditionalUpdate: true,
          conditionalDelete: 'single',
          interaction: [
            { code: 'read' },
            { code: 'vread' },
            { code: 'update' },
            { code: 'patch' },
            { code: 'delete' },
            { code: 'history-instance' },
            { code: 'create' },
            ...(features.search ? [{ code: 'search-type' as const }] : []),
          ],
          operation: [
            { name: 'validate', definition: 'http://hl7.org/fhir/OperationDefinition/Resource-validate' },
            ...(features.translate && type === 'ConceptMap' ? [{ name: 'translate', definition: 'http://hl7.org/fhir/OperationDefinition/ConceptMap-translate' }] : []),
          ],
        })),
      },
    ],
  };
}
