/**
 * Peer authorization of Tide: which resource types a peer may send this node, which it may
 * receive, and which security labels it must never receive (docs/security.md, "Peer authorization").
 *
 * - **May receive** = `PeerConfig.resourceTypes` (the existing subscription): direct fanout, relay
 *   and anti-entropy repairs carry only these types to the peer.
 * - **May send** = `PeerConfig.maySend`: an `updates` message of the peer holding any other type is
 *   refused whole (`ERR_PEER_NOT_ALLOWED`), quarantined and audited, never applied.
 * - **Withheld labels** = `PeerConfig.withheldLabels`: a resource whose current version carries one
 *   of these `meta.security` codings (https://hl7.org/fhir/R4/resource-definitions.html#Meta.security,
 *   value set https://hl7.org/fhir/R4/valueset-security-labels.html: confidentiality codes of
 *   http://terminology.hl7.org/CodeSystem/v3-Confidentiality such as `R` restricted, sensitivity
 *   codes of http://terminology.hl7.org/CodeSystem/v3-ActCode such as `PSY`, `HIV`, `ETH`) is not
 *   sent to that peer at all.
 *
 * A rule is written like a FHIR token search value (https://hl7.org/fhir/R4/search.html#token):
 * `system|code` matches that coding only; a bare `code` matches the code in any system.
 */

/** One `meta.security` Coding (subset read here). */
export interface SecurityLabel {
  /** Coding.system, e.g. `http://terminology.hl7.org/CodeSystem/v3-Confidentiality`; absent when the coding has none. */
  system?: string;
  /** Coding.code, e.g. `R`. */
  code: string;
}

/** A withheld-label rule, parsed: `system` undefined = any system. */
export interface LabelRule {
  system: string | undefined;
  code: string;
}

/** `Coding.system` of the HL7 v3 confidentiality codes (`U`, `L`, `M`, `N`, `R`, `V`). */
export const V3_CONFIDENTIALITY = 'http://terminology.hl7.org/CodeSystem/v3-Confidentiality';
/** `Coding.system` of the HL7 v3 ActCode sensitivity codes (`PSY`, `HIV`, `ETH`, `SDV`, …). */
export const V3_ACT_CODE = 'http://terminology.hl7.org/CodeSystem/v3-ActCode';

/** `Coding.system` of the HL7 v3 ObservationValue codes, among them `REDACTED` (https://terminology.hl7.org/CodeSystem-v3-ObservationValue.html). */
export const V3_OBSERVATION_VALUE = 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue';

/**
 * Built-in withheld-label rule of every peer of a node (src/node/node.ts): a resource carrying the
 * `REDACTED` security label is a projection this node received from a sender that redacted it
 * (docs/mappings.md "Redaction"). It is never forwarded: sent to a third node it would bring a
 * foreign document lineage into that node's shared document, and redacted content with it.
 */
export const REDACTED_LABEL_RULE = `${V3_OBSERVATION_VALUE}|REDACTED`;

/** A FHIR `code` (https://hl7.org/fhir/R4/datatypes.html#code): no leading/trailing whitespace, no control characters. */
const CODE_RE = /^[^\s|\u0000-\u001f](?:[^|\u0000-\u001f]*[^\s|\u0000-\u001f])?$/;

/**
 * Parses one withheld-label rule.
 * @param rule - `system|code` (e.g. `http://terminology.hl7.org/CodeSystem/v3-ActCode|HIV`) or a bare `code` (`R`).
 * @returns The rule; `system` undefined for a bare code.
 * @throws TypeError when the text is empty, has more than one `|`, or an empty system or code.
 */
export function parseLabelRule(rule: string): LabelRule {
  if (typeof rule !== 'string') throw new TypeError('withheld label must be a string "system|code" or "code"');
  const parts = rule.split('|');
  if (parts.length === 1 && CODE_RE.test(rule)) return { system: undefined, code: rule };
  if (parts.length === 2) {
    const [system, code] = parts as [string, string];
    if (system.length > 0 && !/\s/.test(system) && CODE_RE.test(code)) return { system, code };
  }
  throw new TypeError(`invalid withheld label ${JSON.stringify(rule)}: expected "system|code" or "code"`);
}

/**
 * The `meta.security` codings of a rendered resource body.
 * @param body - FHIR JSON text of the resource (as stored: canonical JSON), or null/undefined for none.
 * @returns The codings that have a string `code` (others are ignored); `[]` when there is no `meta.security`.
 * @throws SyntaxError when `body` is not JSON (callers treat it as "withhold": fail closed).
 */
export function securityLabelsOf(body: string | null | undefined): SecurityLabel[] {
  if (body === null || body === undefined) return [];
  // cheap pre-check: a body without "security" has no meta.security
  if (!body.includes('"security"')) return [];
  const parsed = JSON.parse(body) as { meta?: { security?: unknown } };
  const sec = parsed?.meta?.security;
  if (!Array.isArray(sec)) return [];
  const out: SecurityLabel[] = [];
  for (const c of sec as Array<{ system?: unknown; code?: unknown }>) {
    if (c === null || typeof c !== 'object' || typeof c.code !== 'string') continue;
    out.push(typeof c.system === 'string' ? { system: c.system, code: c.code } : { code: c.code });
  }
  return out;
}

/**
 * True when some label matches some rule (token semantics: a rule without system matches the code in any system).
 * @param labels - The resource's `meta.security` codings.
 * @param rules - The peer's withheld-label rules.
 */
export function labelsWithheld(labels: readonly SecurityLabel[], rules: readonly LabelRule[]): boolean {
  for (const r of rules) {
    for (const l of labels) if (l.code === r.code && (r.system === undefined || l.system === r.system)) return true;
  }
  return false;
}

/** Text of a rule as configured (`system|code` or `code`). */
export function ruleText(r: LabelRule): string {
  return r.system === undefined ? r.code : `${r.system}|${r.code}`;
}

/**
 * Routing rules (src/mapping/routing.ts, docs/mappings.md "Routing") reach Tide's outbound filter
 * as withheld labels that are never written to a resource: for each peer whose route refuses a
 * resource, {@link outboundLabelsOf} adds the label `urn:tidegate:route|withhold:<peerId>`, and
 * that peer's `withheldLabels` holds the matching rule ({@link routeLabelRule}). Fanout, relay,
 * anti-entropy and the send-time re-check then treat a routed-out resource exactly like one
 * carrying a withheld `meta.security` label (evaluated on the current version, cached while its
 * state vector is unchanged, fail closed when it cannot be read).
 */
export const ROUTE_LABEL_SYSTEM = 'urn:tidegate:route';

/** What {@link outboundLabelsOf} needs from the mapping configuration (src/mapping `Mapping`). */
export interface RouteCheck {
  /** Peer ids that have routing rules. */
  readonly peers: readonly string[];
  /** May this resource (plain JSON of its current version) be sent to `peerId`? */
  routeAllows(peerId: string, resource: unknown): boolean;
}

/**
 * The withheld-label rule that carries routing for one peer: `urn:tidegate:route|withhold:<peerId>`.
 * @param peerId - the peer node id.
 */
export function routeLabelRule(peerId: string): string {
  return `${ROUTE_LABEL_SYSTEM}|withhold:${peerId}`;
}

/**
 * The labels Tide filters on: the resource's `meta.security` codings ({@link securityLabelsOf}),
 * plus one routing label per peer whose route refuses the resource (when `routes` is given).
 * @param body - FHIR JSON text of the current version (null/undefined: none).
 * @param routes - the loaded mapping configuration, or undefined when there is none.
 * @returns The labels.
 * @throws SyntaxError when `body` is not JSON (Tide then withholds the resource: fail closed).
 */
export function outboundLabelsOf(body: string | null | undefined, routes?: RouteCheck): SecurityLabel[] {
  const labels = securityLabelsOf(body);
  if (routes === undefined || routes.peers.length === 0 || body === null || body === undefined) return labels;
  const resource = JSON.parse(body) as unknown;
  for (const peerId of routes.peers) if (!routes.routeAllows(peerId, resource)) labels.push({ system: ROUTE_LABEL_SYSTEM, code: `withhold:${peerId}` });
  return labels;
}
