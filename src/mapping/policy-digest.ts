/**
 * Policy digests (docs/mappings.md "Policy agreement"): per peer P, a SHA-256 (FIPS 180-4) over a
 * canonical form of exactly the rules that decide what this node sends P:
 *
 * - the node config's `peers[P].resourceTypes` (may receive) and `peers[P].withheldLabels`;
 * - the mapping file's `routes.P.send` / `withhold` (resource types and FHIRPath conditions),
 *   `routes.P.redact` (path, action, condition) and `routes.P.consentActors`;
 * - the mapping file's `consent` policy (`honour`, `scopes`, `noConsent`), which applies to every peer.
 *
 * Not ConceptMaps, identifier systems or patient matching: those translate at the hospital
 * boundary and may legitimately differ between nodes. Free-text `description`s are left out too.
 *
 * Rules are enforced by the sender, and the shared document of a resource reaches every node by
 * gossip, so every node that serves P must apply the same rules to P: a node lacking another's
 * redaction rules for P would send P the full resource. Tide exchanges these digests in its
 * anti-entropy round (src/tide/tide.ts, `ae-policy`) and reports nodes that disagree.
 *
 * The canonical form is JSON with sorted keys and no whitespace (the JSON Canonicalization Scheme,
 * RFC 8785, restricted to the strings, booleans, null and arrays used here), so the same rules
 * written in YAML or JSON, in any key order, give the same digest. Rules whose order does not
 * matter (send and withhold rules, resource types, labels, scopes, actors) are sorted and
 * de-duplicated; redaction rules keep their order (they are applied in order).
 */
import { createHash } from 'node:crypto';
import { readConfigFile } from './load.ts';
import { MappingFileSchema } from './schema.ts';
import type { MappingFile, RouteRule } from './schema.ts';
import type { LiveMapping } from './live.ts';

/** The part of a node config peer (src/config/config.ts `peers[i]`) a policy digest covers. */
export interface PolicyPeer {
  nodeId: string;
  /** Resource types the peer may receive; absent = all. */
  resourceTypes?: readonly string[] | undefined;
  /** `meta.security` labels withheld from the peer (`system|code` or `code`). */
  withheldLabels?: readonly string[] | undefined;
}

/** The mapping file could not be read or parsed for digesting: thrown by {@link readPolicyRules}. */
export class PolicyDigestError extends Error {
  override readonly name = 'PolicyDigestError';
  readonly code = 'ERR_POLICY_DIGEST';
}

/**
 * JSON text of `value` with object keys sorted by UTF-16 code units and no whitespace (RFC 8785
 * §3.2.3 ordering; strings as `JSON.stringify` writes them, which RFC 8785 §3.2.2.2 matches).
 * @param value - strings, finite numbers, booleans, null, arrays and plain objects.
 * @returns The canonical text.
 * @throws TypeError for any other value (undefined, functions, non-finite numbers).
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new TypeError('canonicalJson: non-finite number');
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (typeof value === 'object') {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`).join(',')}}`;
  }
  throw new TypeError(`canonicalJson: unsupported ${typeof value}`);
}

const sortedUnique = (xs: readonly string[]): string[] => [...new Set(xs)].sort();

/**
 * The mapping file's route of a peer, or undefined. Own members only: `routes` is a plain object,
 * and a valid node id such as `constructor` or `toString` would otherwise read an `Object.prototype`
 * member as a route (routing.ts reads `Object.entries(routes)`, so it has no such route).
 */
function routeOf(mapping: MappingFile | undefined, peerId: string): MappingFile['routes'][string] | undefined {
  return mapping !== undefined && Object.hasOwn(mapping.routes, peerId) ? mapping.routes[peerId] : undefined;
}

/** A send/withhold rule in canonical form: types (sorted, null = any) and condition (null = always). */
function routeRule(rule: RouteRule): { types: string[] | null; where: string | null } {
  const types = rule.resourceType === undefined ? null : sortedUnique(typeof rule.resourceType === 'string' ? [rule.resourceType] : rule.resourceType);
  return { types, where: rule.where === undefined ? null : rule.where.trim() };
}

/** Rules as a sorted, de-duplicated list (their order does not change what is sent). */
function ruleSet(rules: readonly RouteRule[]): { types: string[] | null; where: string | null }[] {
  const byText = new Map(rules.map((r) => { const c = routeRule(r); return [canonicalJson(c), c] as const; }));
  return [...byText.keys()].sort().map((k) => byText.get(k)!);
}

/**
 * The canonical policy of one peer: what decides what this node sends it (see module doc).
 * @param mapping - the parsed mapping file (defaults applied), or undefined when the node has none.
 * @param peer - the peer as in the node config.
 * @returns A plain JSON object (version 1 of the form); give it to {@link canonicalJson}.
 */
export function peerPolicy(mapping: MappingFile | undefined, peer: PolicyPeer): Record<string, unknown> {
  const route = routeOf(mapping, peer.nodeId);
  const consent = mapping?.consent ?? { honour: true, scopes: ['patient-privacy'], noConsent: 'permit' as const };
  return {
    v: 1,
    resourceTypes: peer.resourceTypes === undefined ? null : sortedUnique(peer.resourceTypes),
    withheldLabels: sortedUnique(peer.withheldLabels ?? []),
    // no route: everything is sent; a route without send rules: every resource not withheld
    route:
      route === undefined
        ? null
        : {
            send: route.send === undefined ? null : ruleSet(route.send),
            withhold: ruleSet(route.withhold ?? []),
            redact: (route.redact ?? []).map((r) => ({ path: r.path, action: r.action, where: r.where === undefined ? null : r.where.trim() })),
          },
    // consent.honour false: no Consent is honoured, so scopes, noConsent and actors change nothing
    consent: consent.honour
      ? { honour: true, scopes: sortedUnique(consent.scopes), noConsent: consent.noConsent, actors: sortedUnique(route?.consentActors ?? []) }
      : { honour: false },
  };
}

/**
 * SHA-256 (FIPS 180-4) of the canonical JSON (UTF-8) of a peer's policy.
 * @param mapping - the parsed mapping file, or undefined.
 * @param peer - the peer as in the node config.
 * @returns 64 lowercase hex characters (32 bytes).
 */
export function policyDigest(mapping: MappingFile | undefined, peer: PolicyPeer): string {
  return createHash('sha256').update(canonicalJson(peerPolicy(mapping, peer)), 'utf8').digest('hex');
}

/**
 * {@link policyDigest} of every peer.
 * @param mapping - the parsed mapping file, or undefined.
 * @param peers - the node config's peers.
 * @returns Peer id → hex digest.
 */
export function policyDigestsOf(mapping: MappingFile | undefined, peers: readonly PolicyPeer[]): Map<string, string> {
  return new Map(peers.map((p) => [p.nodeId, policyDigest(mapping, p)]));
}

/**
 * Reads and schema-checks a mapping file (JSON, or YAML when named `*.yaml`/`*.yml`) for digesting.
 * (`Mapping` keeps compiled rules only, so the digest is taken from the file's parsed rules.)
 * @param file - path of the mapping file.
 * @returns The parsed file, defaults applied.
 * @throws PolicyDigestError when the file cannot be read or does not match the schema (no content in the message).
 */
export function readPolicyRules(file: string): MappingFile {
  const read = readConfigFile(file);
  if (read.issue) throw new PolicyDigestError(`mapping file ${read.issue.file}: ${read.issue.message}`);
  const parsed = MappingFileSchema.safeParse(read.value);
  if (!parsed.success) throw new PolicyDigestError(`mapping file ${file}: does not match the schema`);
  return parsed.data;
}

/**
 * The policy digests of a node, kept up to date across mapping reloads: read now from the mapping
 * file in force, and again by a reload hook of `live` (src/mapping/live.ts) when a reload is
 * prepared, put in force with the swap (a reload whose file cannot be digested is refused, nothing
 * changed). Hand the result to Tide as `policyDigests` (src/tide/types.ts).
 * @param peers - the node config's peers (their `resourceTypes` and `withheldLabels`).
 * @param live - the node's live mapping, or undefined without a mapping file.
 * @returns A cheap function returning the current digests (peer id → 64 hex characters).
 * @throws PolicyDigestError when the mapping file in force cannot be read.
 */
export function policyDigestSource(peers: readonly PolicyPeer[], live?: LiveMapping): () => ReadonlyMap<string, string> {
  const own = peers.map((p) => ({ nodeId: p.nodeId, resourceTypes: p.resourceTypes, withheldLabels: p.withheldLabels }));
  let current: ReadonlyMap<string, string> = policyDigestsOf(live ? readPolicyRules(live.file) : undefined, own);
  live?.onReload((next) => {
    const digests = policyDigestsOf(readPolicyRules(next.file), own);
    return () => {
      current = digests;
    };
  });
  return () => current;
}

/**
 * Resource types whose resources a peer's rules redact or withhold, for the fail-closed mode of
 * policy agreement (Tide `policyEnforcement`, docs/tide.md "Policy agreement"): `'*'` (every type)
 * when the peer has `withheldLabels`, a `resourceTypes` subscription, `send` rules, a `withhold`
 * rule without `resourceType`, or Consent settings that can deny it (`noConsent: deny` or
 * `consentActors`), `withhold` or `redact` rules (a resource of any type may nest a withheld or
 * redacted one); otherwise none.
 * @param mapping - the parsed mapping file, or undefined.
 * @param peer - the peer as in the node config.
 * @returns `'*'` or the set of type names.
 */
export function sensitiveTypes(mapping: MappingFile | undefined, peer: PolicyPeer): '*' | ReadonlySet<string> {
  if ((peer.withheldLabels ?? []).length > 0 || peer.resourceTypes !== undefined) return '*';
  const route = routeOf(mapping, peer.nodeId);
  const consent = mapping?.consent;
  if (consent?.honour && (consent.noConsent === 'deny' || (route?.consentActors ?? []).length > 0)) return '*';
  if (route === undefined) return new Set();
  if (route.send !== undefined) return '*';
  // withhold and redact rules: a resource of any type may nest a withheld or redacted one
  // (contained[], a Bundle entry), and such a resource is withheld from the peer too
  // (src/mapping/load.ts explainRoute), so every type is sensitive
  if ((route.withhold ?? []).length > 0 || (route.redact ?? []).length > 0) return '*';
  return new Set();
}

/**
 * {@link sensitiveTypes} of every peer, kept up to date across mapping reloads like
 * {@link policyDigestSource}. Hand the result to Tide as `policyEnforcement` for the fail-closed
 * mode; an empty map (mode off) makes Tide warn only.
 * @param peers - the node config's peers.
 * @param live - the node's live mapping, or undefined without a mapping file.
 * @param enforce - whether the mapping file in force asks for the fail-closed mode (read at start
 *   and at each reload); default always. The node passes `policyAgreement === 'enforce'` of the
 *   mapping file (src/mapping/schema.ts).
 * @returns A cheap function returning peer id → `'*'` or type names (empty when not enforcing).
 * @throws PolicyDigestError when the mapping file in force cannot be read.
 */
export function sensitiveTypesSource(peers: readonly PolicyPeer[], live?: LiveMapping, enforce: (rules: MappingFile | undefined) => boolean = () => true): () => ReadonlyMap<string, '*' | ReadonlySet<string>> {
  const compute = (m: MappingFile | undefined): Map<string, '*' | ReadonlySet<string>> => (enforce(m) ? new Map(peers.map((p) => [p.nodeId, sensitiveTypes(m, p)])) : new Map());
  let current: ReadonlyMap<string, '*' | ReadonlySet<string>> = compute(live ? readPolicyRules(live.file) : undefined);
  live?.onReload((next) => {
    const types = compute(readPolicyRules(next.file));
    return () => {
      current = types;
    };
  });
  return () => current;
}
