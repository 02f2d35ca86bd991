/**
 * `tidegate map preview --config FILE [--peer B] RESOURCE.json`: what a resource becomes on its way
 * through this node's mapping, printed as a diff against the input.
 *
 * - With `--peer B`: the resource as read from this node's hospital is translated inbound (that is
 *   the version every replica holds), then B's route decides whether B receives it, then the
 *   patient's Consents (src/mapping/consent.ts; those given with `--consent`). The diff is
 *   against what B would receive (everything removed when it is withheld).
 * - Without `--peer`: what this node writes to its own hospital (outbound translation).
 */
import { readFileSync } from 'node:fs';
import { stringify } from 'lossless-json';
import { loadNodeConfig } from '../config/config.ts';
import { FhirJsonError, isJsonObject, parseFhirJson, toPlainJson } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import { unifiedDiff } from './diff.ts';
import { loadMappingOrThrow } from './load.ts';
import type { Mapping } from './load.ts';
import type { RouteDecision } from './routing.ts';
import type { CodingChange } from './translate.ts';
import type { IdentifierChange } from './identifiers.ts';
import { ConsentGate } from './consent.ts';
import type { ConsentDecision } from './consent.ts';
import { projectedTypesFor, withRedactedLabel } from './redact.ts';
import { isKnownResourceType, validateFhirResource } from '../fhir/validate.ts';

/** One reason the node would refuse a file given to the preview (no values of the resource). */
export interface PreviewInputIssue {
  /** The file as given. */
  file: string;
  /** FHIRPath of the element, e.g. `Consent.status`, or the resource type. */
  expression: string;
  /** The validator's text, e.g. `Missing required property`, `Constraint ppc-1 not met: …`. */
  message: string;
}

/** Result of {@link previewMapping}. */
export interface MapPreview {
  /** The peer previewed, or undefined for this node's own hospital. */
  peer: string | undefined;
  /** The routing decision (with `--peer`). */
  route: RouteDecision | undefined;
  /** What translation did. */
  changes: CodingChange[];
  /** What identifier translation did (systems and paths, no values). */
  identifiers: IdentifierChange[];
  /** Set when a `reject` map refused the resource: the message. */
  rejected: string | undefined;
  /** Element paths redacted for the peer (its route's `redact` rules; no values), `[]` when none; nested resources' as FHIRPath (`Observation.contained.ofType(Patient).telecom`). */
  redacted: string[];
  /** The Consent decision for the peer (src/mapping/consent.ts), with the Consents given; undefined without `--peer` or when routing withheld it. */
  consent: ConsentDecision | undefined;
  /** What the peer or hospital gets; undefined when withheld or rejected. */
  output: FhirJsonObject | undefined;
  /** Unified diff of the input against the output (`''` when unchanged). */
  diff: string;
  /** Why the node would refuse the resource or a Consent given (then nothing is previewed); `[]` when valid. */
  invalid: PreviewInputIssue[];
}

/** Pretty JSON with decimals in their lexical form. */
function pretty(v: FhirJsonObject | undefined): string {
  return v === undefined ? '' : `${stringify(v, undefined, 2) ?? ''}\n`;
}

/**
 * Previews one resource through a loaded mapping.
 * @param mapping - the mapping.
 * @param resource - the resource (FHIR JSON).
 * @param peer - a peer id, or undefined for the own hospital.
 * @param consents - Consent resources the node would hold (`--consent`); judged for `peer` as the node does.
 * @returns The preview.
 * @throws ConsentEvaluationError when a Consent for the resource's patient cannot be evaluated.
 */
export function previewResource(mapping: Mapping, resource: FhirJsonObject, peer: string | undefined, consents: readonly FhirJsonObject[] = []): MapPreview {
  let output: FhirJsonObject | undefined;
  let changes: CodingChange[] = [];
  let identifiers: IdentifierChange[] = [];
  let route: RouteDecision | undefined;
  let rejected: string | undefined;
  try {
    const t = mapping.translate(resource, peer === undefined ? 'outbound' : 'inbound');
    changes = t.changes;
    identifiers = t.identifiers;
    output = t.resource;
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'ERR_MAPPING_UNMAPPED_CODE') throw err;
    rejected = (err as Error).message;
  }
  if (output !== undefined && peer !== undefined) {
    route = mapping.explainRoute(peer, toPlainJson(output));
    if (!route.allowed) output = undefined;
  }
  // Consent: the given Consents, judged as the node judges its own (src/mapping/consent.ts)
  let consent: ConsentDecision | undefined;
  if (output !== undefined && peer !== undefined) {
    const held = new Map(consents.map((c) => [`Consent/${String(c['id'])}`, { deleted: false, body: JSON.stringify(toPlainJson(c)) }]));
    const gate = new ConsentGate({ peers: [peer], mapping: () => mapping, replica: { keys: () => held.keys(), current: (k) => held.get(k) } });
    consent = gate.explain(peer, toPlainJson(output) as Record<string, unknown>);
    if (!consent.allowed) output = undefined;
  }
  // redaction: a projection peer receives the redacted copy (src/mapping/redact.ts) of the types its
  // rules name (projectedTypesFor, as the node decides); one of another type nesting such a resource
  // was withheld above (explainRoute)
  let redacted: string[] = [];
  if (output !== undefined && peer !== undefined && projectedTypesFor(mapping.redactionFor(peer)).has(String(output['resourceType']))) {
    ({ resource: output, redacted } = mapping.redact(peer, output));
    output = withRedactedLabel(output); // a projection always carries the label (src/mapping/projection.ts)
  }
  const diff = unifiedDiff(pretty(resource), pretty(output), { from: 'input', to: peer === undefined ? 'to this hospital' : `to ${peer}` });
  return { peer, route, changes, identifiers, rejected, redacted, consent, output, diff, invalid: [] };
}

/**
 * Loads the node config and its mapping file, reads the resource file and previews it.
 * @param opts.config - node configuration JSON (must name a `mappingFile`).
 * @param opts.peer - peer id (must be a configured peer), or undefined for the own hospital.
 * @param opts.file - the resource JSON file.
 * @param opts.consent - files of Consent resources (a Consent, or a Bundle of them) the node would hold.
 * @returns The preview; with `invalid` set (and nothing previewed) when the node would refuse the resource or a Consent on write.
 * @throws Error for an unreadable/invalid node config, a config without `mappingFile`, an unknown
 *   peer, a resource or Consent file that is not a FHIR resource (or Bundle of Consents); MappingConfigError for an invalid mapping file.
 */
export function previewMapping(opts: { config: string; peer?: string | undefined; file: string; consent?: readonly string[] | undefined }): MapPreview {
  const cfg = loadNodeConfig(opts.config, {});
  if (!cfg.mappingFile) throw new Error(`${opts.config} has no "mappingFile": nothing to preview`);
  if (opts.peer !== undefined && !cfg.peers.some((p) => p.nodeId === opts.peer)) throw new Error(`"${opts.peer}" is not a peer in ${opts.config} (peers: ${cfg.peers.map((p) => p.nodeId).join(', ') || 'none'})`);
  const mapping = loadMappingOrThrow(cfg.mappingFile, { peers: cfg.peers.map((p) => p.nodeId) });
  let resource: unknown;
  try {
    resource = parseFhirJson(readFileSync(opts.file, 'utf8'));
  } catch (err) {
    throw new Error(`Cannot read ${opts.file}: ${err instanceof FhirJsonError ? 'not JSON' : (err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (!isJsonObject(resource) || typeof resource['resourceType'] !== 'string') throw new Error(`${opts.file} is not a FHIR resource (no resourceType)`);
  const consents = (opts.consent ?? []).map((f) => ({ file: f, consents: readConsents(f) }));
  // the node refuses these on write (src/fhir/service.ts): preview nothing, say why
  const invalid = [...writeIssues(opts.file, resource), ...consents.flatMap((c) => c.consents.flatMap((r) => writeIssues(c.file, r)))];
  if (invalid.length > 0) return { peer: opts.peer, route: undefined, changes: [], identifiers: [], rejected: undefined, redacted: [], consent: undefined, output: undefined, diff: '', invalid };
  return previewResource(mapping, resource, opts.peer, consents.flatMap((c) => c.consents));
}

/**
 * The blocking issues the node's write path finds in a resource: base R4 structure, cardinality,
 * invariants (e.g. Consent `ppc-1`) and required bindings (src/fhir/validate.ts,
 * https://hl7.org/fhir/R4/validation.html). Profiles claimed in `meta.profile` are not checked here.
 * @param file - the file it came from (for the message).
 * @param resource - the resource.
 * @returns One issue per problem, `[]` when the node would accept it.
 */
function writeIssues(file: string, resource: FhirJsonObject): PreviewInputIssue[] {
  const type = String(resource['resourceType']);
  if (!isKnownResourceType(type)) return [{ file, expression: 'resourceType', message: `"${type}" is not an R4 resource type (names are case-sensitive, e.g. "Observation")` }];
  return validateFhirResource(resource, { requiredBindings: true }).map((i) => ({ file, expression: i.expression?.[0] ?? type, message: i.details?.text ?? i.diagnostics ?? 'invalid' }));
}

/** The Consents of a file: one Consent, or the Consents of a Bundle's entries. @throws Error for anything else. */
function readConsents(file: string): FhirJsonObject[] {
  let v: unknown;
  try {
    v = parseFhirJson(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`Cannot read ${file}: ${err instanceof FhirJsonError ? 'not JSON' : (err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (isJsonObject(v) && v['resourceType'] === 'Consent') return [v];
  if (isJsonObject(v) && v['resourceType'] === 'Bundle' && Array.isArray(v['entry'])) {
    const found = v['entry'].map((e) => (isJsonObject(e) ? e['resource'] : undefined)).filter((r): r is FhirJsonObject => isJsonObject(r) && r['resourceType'] === 'Consent');
    if (found.length > 0) return found;
  }
  throw new Error(`${file} is neither a Consent nor a Bundle of Consents`);
}

/**
 * The preview as text: the diff, then one line per code translation change and one per identifier
 * added (its path and the systems, never the value), then the verdict.
 * @param p - from {@link previewMapping}.
 */
export function formatPreview(p: MapPreview): string {
  if (p.invalid.length > 0) {
    const refused = p.invalid.map((i) => `${i.file}: error: ${i.expression}: ${i.message}`);
    return `${[...refused, '# not previewed: the node refuses such a resource on write (fix it, then preview again)'].join('\n')}\n`;
  }
  const lines: string[] = [];
  if (p.diff) lines.push(p.diff.trimEnd());
  for (const c of p.changes) lines.push(`# ${c.action} ${c.path}: ${c.from}${c.to ? ` -> ${c.to}` : ''}${c.equivalence ? ` (${c.equivalence})` : ''} by ${c.map}`);
  for (const c of p.identifiers) lines.push(`# ${c.action} identifier ${c.path}: system ${c.from} -> ${c.to} by ${c.configPath}`);
  for (const path of p.redacted) lines.push(`# redacted ${path} (projection for ${p.peer})`);
  const target = p.peer === undefined ? 'this hospital' : p.peer;
  if (p.rejected) lines.push(`# REJECTED: ${p.rejected}`);
  else if (p.route && !p.route.allowed) lines.push(`# WITHHELD from ${target}: ${p.route.reason}`);
  else if (p.consent && !p.consent.allowed) lines.push(`# WITHHELD from ${target}: ${p.consent.reason}`);
  else lines.push(`# ${target} receives it${p.route ? ` (${p.route.reason}${p.consent?.consent !== undefined ? `; ${p.consent.reason}` : ''})` : ''}${p.diff ? '' : ', unchanged'}`);
  return `${lines.join('\n')}\n`;
}
