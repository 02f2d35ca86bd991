/**
 * Provenance of merges (https://hl7.org/fhir/R4/provenance.html): every version that merges
 * concurrent writes gets one Provenance resource saying which versions it merged and who wrote them.
 *
 * The Provenance is a function of the merged document alone, so every replica that renders the
 * merged version builds byte-identical content under the same id; replicas that write it
 * independently then converge on one resource (identical concurrent values are no conflict), never
 * on duplicates.
 *
 * - `id`: `merge-` + the first 40 hex digits of SHA-256 over the resource key, the target version
 *   and the merged versions;
 * - `target`: the merged version, `Type/id/_history/<versionId>`;
 * - `recorded`: the merged version's `lastUpdated` (the newest write it holds, not the time a
 *   replica happened to merge, which differs per replica);
 * - `activity`: ISO 21089 lifecycle event `merge`
 *   (http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle);
 * - `agent`: per merged write, its author (`who`: a `Type/id` reference when the author is one, else
 *   a display) on behalf of the node it was written at, or the node itself when there is no author;
 *   type `author` (http://terminology.hl7.org/CodeSystem/provenance-participant-type);
 * - `entity`: per merged write, role `revision`, `what` = the version that write produced at its
 *   node, `Type/id/_history/<versionId>`.
 *
 * Which writes a state merges: see `mergedHeads` in doc.ts (each node's last write carries its
 * state vector; the heads no other head covers are the concurrent writes).
 */
import { createHash } from 'node:crypto';
import type * as Y from 'yjs';
import type { FhirJsonObject } from '../fhir/json.ts';
import { mergedHeads, versionIdOf } from './doc.ts';
import type { Head } from './doc.ts';

/** The resource type of merge Provenance; merges of Provenance resources get none (no regress). */
export const PROVENANCE_TYPE = 'Provenance';
/** Identifier system of tidegate node ids in Provenance agents. */
export const NODE_ID_SYSTEM = 'urn:tidegate:node';
const ACTIVITY_SYSTEM = 'http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle';
const PARTICIPANT_SYSTEM = 'http://terminology.hl7.org/CodeSystem/provenance-participant-type';
const REFERENCE = /^[A-Z][A-Za-z]{1,63}\/[A-Za-z0-9\-.]{1,64}$/;

/** A merge a Provenance describes: the merged version and the concurrent writes it holds. */
export interface MergeDescription {
  /** `Type/id` of the merged resource. */
  key: string;
  /** The merged version's id. */
  versionId: string;
  /** The writes merged (two or more), sorted by node id. */
  heads: Head[];
}

/**
 * Describes the merge a document state is, if it is one.
 * @param key - `Type/id` of the resource.
 * @param doc - the resource document (complete: no pending updates missing).
 * @returns The merge, or undefined when the state is one write's version (no concurrent writes),
 *   or the resource is itself a Provenance.
 */
export function describeMerge(key: string, doc: Y.Doc): MergeDescription | undefined {
  if (key.startsWith(`${PROVENANCE_TYPE}/`)) return undefined;
  const heads = mergedHeads(doc);
  if (heads.length < 2) return undefined;
  return { key, versionId: versionIdOf(doc), heads };
}

/**
 * The deterministic id of a merge's Provenance.
 * @param merge - see {@link describeMerge}.
 * @returns `merge-<40 hex>`, a FHIR id (https://hl7.org/fhir/R4/datatypes.html#id).
 */
export function provenanceId(merge: MergeDescription): string {
  const h = createHash('sha256').update(`${merge.key}|${merge.versionId}|${merge.heads.map((x) => `${x.entry.n}=${x.versionId}`).join(',')}`);
  return `merge-${h.digest('hex').slice(0, 40)}`;
}

function nodeReference(nodeId: string): FhirJsonObject {
  return { identifier: { system: NODE_ID_SYSTEM, value: nodeId }, display: `tidegate node ${nodeId}` };
}

/**
 * Builds the Provenance resource of a merge (see module doc).
 * @param merge - see {@link describeMerge}.
 * @param lastUpdated - the merged version's `lastUpdated` (FHIR instant), used as `recorded`.
 * @returns The Provenance as FHIR JSON (no `meta`), identical on every replica.
 */
export function buildMergeProvenance(merge: MergeDescription, lastUpdated: string): FhirJsonObject {
  const agents: FhirJsonObject[] = [];
  for (const h of merge.heads) {
    const author = h.entry.a;
    const agent: FhirJsonObject = { type: { coding: [{ system: PARTICIPANT_SYSTEM, code: 'author', display: 'Author' }] } };
    if (author) {
      agent.who = REFERENCE.test(author) ? { reference: author } : { display: author };
      agent.onBehalfOf = nodeReference(h.entry.n);
    } else {
      agent.who = nodeReference(h.entry.n);
    }
    agents.push(agent);
  }
  return {
    resourceType: PROVENANCE_TYPE,
    id: provenanceId(merge),
    target: [{ reference: `${merge.key}/_history/${merge.versionId}` }],
    recorded: lastUpdated,
    activity: { coding: [{ system: ACTIVITY_SYSTEM, code: 'merge', display: 'Merge Record Lifecycle Event' }] },
    agent: agents,
    entity: merge.heads.map((h) => ({ role: 'revision', what: { reference: `${merge.key}/_history/${h.versionId}` } })),
  };
}
