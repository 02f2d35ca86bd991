/**
 * Consent-based sharing (docs/mappings.md "Consent", issue #8): where a patient has a Consent
 * resource (https://hl7.org/fhir/R4/consent.html), it decides which peers receive the resources
 * of that patient's compartment (https://hl7.org/fhir/R4/compartmentdefinition-patient.html).
 *
 * - **Which Consents count**: `status` = `active`, a `scope` coding of
 *   http://terminology.hl7.org/CodeSystem/consentscope whose code is one of the mapping file's
 *   `consent.scopes` (default `patient-privacy`), `patient` = the resource's patient.
 * - **One Consent for (peer, resource)**: its root `provision` applies when its conditions hold;
 *   its `type` (`deny` / `permit`) is the answer unless a nested `provision` whose own conditions
 *   hold overrides it (the deepest match wins; between matching siblings, deny wins). A Consent
 *   whose root provision does not apply gives no answer.
 * - **Conditions** of a provision: `actor` (one `actor.reference.reference` is one of the peer's
 *   `consentActors`), `class` (a coding of http://hl7.org/fhir/resource-types equal to the
 *   resource type), `period` (contains now), `securityLabel` (one of the resource's
 *   `meta.security`), `data` (one `data.reference` is the resource itself), `action` (one of
 *   `access`, `use`, `disclose` of http://terminology.hl7.org/CodeSystem/consentaction).
 *   Each holds when absent. What the gateway cannot judge at sharing time (`purpose`, `code`,
 *   `dataPeriod`, an actor or class it cannot read) is read restrictively: it holds for a deny
 *   provision and not for a permit provision.
 * - **Several Consents**: deny wins. **None gives an answer**: `consent.noConsent` (default
 *   `permit`). `consent.honour: false` turns all of this off.
 * - **Fail closed**: a Consent that cannot be evaluated (bad period, nesting deeper than
 *   {@link MAX_PROVISION_DEPTH}) withholds the resource from every peer, with a warning that names
 *   ids only.
 *
 * A denied (peer, resource) reaches Tide as the label `urn:tidegate:route|withhold:<peer>` (the
 * routing label of src/tide/peer-authz.ts), so fanout, relay, anti-entropy and the send-time
 * re-check all withhold it. Consent resources themselves replicate to every peer.
 */
import { evalFhirPath } from '@medplum/core';
import { patientCompartmentExpressions } from '../store/compartment.ts';
import { ROUTE_LABEL_SYSTEM } from '../tide/peer-authz.ts';
import type { SecurityLabel } from '../tide/peer-authz.ts';
import { ConsentPolicySchema } from './schema.ts';
import type { ConsentPolicy } from './schema.ts';

/** `Coding.system` of `Consent.scope` (https://hl7.org/fhir/R4/codesystem-consent-scope.html). */
export const CONSENT_SCOPE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/consentscope';
/** `Coding.system` of resource type codes in `Consent.provision.class` (https://hl7.org/fhir/R4/valueset-consent-content-class.html). */
export const RESOURCE_TYPES_SYSTEM = 'http://hl7.org/fhir/resource-types';
/** `Coding.system` of `Consent.provision.action` (https://hl7.org/fhir/R4/codesystem-consent-action.html). */
export const CONSENT_ACTION_SYSTEM = 'http://terminology.hl7.org/CodeSystem/consentaction';
/** Actions that sharing a resource with a peer is (the peer's clinicians access, use and have it disclosed to them). */
const SHARING_ACTIONS = new Set(['access', 'use', 'disclose']);
/** Deepest provision nesting evaluated; deeper is an error (fail closed). */
export const MAX_PROVISION_DEPTH = 16;
/** The policy when there is no mapping file, or it has no `consent` member: honour, `patient-privacy`, permit without Consent. */
export const DEFAULT_CONSENT_POLICY: ConsentPolicy = ConsentPolicySchema.parse({});

/** The outcome of {@link consentDecision}. Ids and pointers only, never content: safe for logs. */
export interface ConsentDecision {
  allowed: boolean;
  /** The deciding Consent, `Consent/<id>`; absent when no Consent decided. */
  consent?: string;
  /** JSON Pointer (RFC 6901) of the deciding provision in that Consent, e.g. `/provision/provision/0`. */
  provision?: string;
  /** Why, for people: `denied by Consent/x /provision`, `no applicable Consent: noConsent permit`, … */
  reason: string;
}

/** Thrown for a Consent that cannot be evaluated (the caller withholds: fail closed). */
export class ConsentEvaluationError extends Error {
  override readonly name = 'ConsentEvaluationError';
  readonly code = 'ERR_CONSENT_EVALUATION';
}

type Json = Record<string, unknown>;
const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

/** What a provision is judged against. */
interface Subject {
  /** `Type/id` of the resource. */
  key: string;
  type: string;
  labels: readonly SecurityLabel[];
  /** The peer's `consentActors`. */
  actors: ReadonlySet<string>;
  now: number;
}

/** FHIR id (https://hl7.org/fhir/R4/datatypes.html#id). */
const ID = '[A-Za-z0-9\\-.]{1,64}';
const PATIENT_REF = new RegExp(`(?:^|/)(Patient/${ID})(?:/_history/[^/]*)?$`);

/**
 * The `Patient/<id>` a Reference points to, when it is a literal reference to a Patient (relative,
 * absolute URL, or with `/_history/`); undefined otherwise (conditional, contained, other types).
 * @param ref - a Reference (https://hl7.org/fhir/R4/references.html#Reference), any value accepted.
 */
export function patientKeyOf(ref: unknown): string | undefined {
  const r = isObj(ref) ? ref['reference'] : undefined;
  if (typeof r !== 'string' || r.startsWith('#') || r.includes('?')) return undefined;
  return PATIENT_REF.exec(r)?.[1];
}

/** True when the literal reference `ref` names `key` (`Type/id`): relative, absolute, or versioned. */
function refersTo(ref: string, key: string): boolean {
  const bare = ref.replace(/\/_history\/[^/]*$/, '');
  return bare === key || bare.endsWith(`/${key}`);
}

/** Per resource type: element paths (`["subject"]`) to Patient references, or FHIRPath text for what is not a plain path. */
const compartmentPaths = new Map<string, ReadonlyArray<readonly string[] | string>>();

/**
 * The ways a resource of `type` points to its patient: the branches of the R4 Patient
 * CompartmentDefinition's expressions that concern `type` (plain element paths are walked
 * directly, `.where(resolve() is Patient)` being checked on the reference itself), plus the
 * top-level `patient` and `subject` elements, so that a type outside the compartment (R4 `Device`)
 * that names a Patient is still that patient's data.
 */
function pathsOf(type: string): ReadonlyArray<readonly string[] | string> {
  let out = compartmentPaths.get(type);
  if (out !== undefined) return out;
  const list: Array<readonly string[] | string> = [['patient'], ['subject']];
  for (const expr of patientCompartmentExpressions().get(type) ?? []) {
    for (const raw of expr.split('|')) {
      const branch = raw.trim();
      if (!branch.startsWith(`${type}.`)) {
        if (/^[A-Z][A-Za-z]+\./.test(branch)) continue; // another type's branch of a shared search parameter
        list.push(branch);
        continue;
      }
      const plain = branch.replace(/\.where\(resolve\(\) is Patient\)$/, '');
      list.push(/^[A-Za-z]+(\.[a-z][A-Za-z]*)+$/.test(plain) ? plain.split('.').slice(1) : branch);
    }
  }
  out = list;
  compartmentPaths.set(type, out);
  return out;
}

/**
 * The patients whose data `resource` is: the Patient compartments that hold it (R4 Patient
 * CompartmentDefinition, https://hl7.org/fhir/R4/compartmentdefinition-patient.html, read by
 * src/store/compartment.ts) and the Patient its top-level `patient` or `subject` names. A Patient
 * is its own; a Consent is governed by none (Consents replicate to every peer); Organization,
 * Practitioner and the like have none.
 * @param resource - plain JSON of the resource.
 * @returns `Patient/<id>` keys, without duplicates.
 * @throws Error when the compartment definitions cannot be loaded or a non-path expression fails to evaluate.
 */
export function patientsOf(resource: Json): string[] {
  const type = typeof resource['resourceType'] === 'string' ? resource['resourceType'] : '';
  if (type === 'Patient') return typeof resource['id'] === 'string' ? [`Patient/${resource['id']}`] : [];
  if (type === 'Consent' || type === '') return [];
  const out = new Set<string>();
  for (const path of pathsOf(type)) {
    let values: unknown[];
    if (typeof path === 'string') values = evalFhirPath(path, resource);
    else {
      values = [resource];
      for (const step of path) values = values.flatMap((v) => (isObj(v) ? (Array.isArray(v[step]) ? (v[step] as unknown[]) : v[step] === undefined ? [] : [v[step]]) : []));
    }
    for (const v of values) {
      const p = patientKeyOf(v);
      if (p !== undefined) out.add(p);
    }
  }
  return [...out];
}

/**
 * The exclusive upper bound (ms) of a FHIR date/dateTime used as `Period.end`: a partial date
 * covers its whole year, month or day (https://hl7.org/fhir/R4/datatypes.html#Period).
 */
function endBound(text: string): number {
  checkDateTime(text);
  const m = /^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$/.exec(text);
  if (m) {
    const [y, mo, d] = [Number(m[1]), m[2] === undefined ? undefined : Number(m[2]) - 1, m[3] === undefined ? undefined : Number(m[3])];
    if (mo === undefined) return Date.UTC(y + 1, 0, 1);
    if (d === undefined) return Date.UTC(y, mo + 1, 1);
    return Date.UTC(y, mo, d + 1);
  }
  return instant(text) + 1;
}

/** FHIR R4 `dateTime` (https://hl7.org/fhir/R4/datatypes.html#dateTime): a time needs seconds and a zone. */
const FHIR_DATE_TIME = /^(\d{4})(?:-(0[1-9]|1[0-2])(?:-(0[1-9]|[12]\d|3[01])(?:T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d+)?(?:Z|[+-](?:(?:0\d|1[0-3]):[0-5]\d|14:00)))?)?)?$/;

/**
 * Refuses what is not a FHIR date/dateTime (`Date.parse` would read `"1"` as 2001, and
 * `Date.UTC` would roll `2020-02-30` over to March): such a Consent cannot be evaluated.
 * @throws ConsentEvaluationError naming no value.
 */
function checkDateTime(text: string): void {
  const m = FHIR_DATE_TIME.exec(text);
  const [y, mo, d] = m === null ? [] : [Number(m[1]), Number(m[2]), Number(m[3])];
  if (m === null || (m[3] !== undefined && new Date(Date.UTC(y!, mo! - 1, d!)).getUTCDate() !== d)) {
    throw new ConsentEvaluationError('Period has a date that is not a FHIR dateTime');
  }
}

function instant(text: string): number {
  checkDateTime(text);
  const t = Date.parse(text);
  if (!Number.isFinite(t)) throw new ConsentEvaluationError('Period has a date that is not a FHIR dateTime');
  return t;
}

/** True when `period` (absent = always) contains `now`. @throws ConsentEvaluationError for a date that is not a FHIR dateTime, or a Period ending before it starts. */
function periodHolds(period: unknown, now: number): boolean {
  if (period === undefined) return true;
  if (!isObj(period)) throw new ConsentEvaluationError('Period is not an object');
  const { start, end } = period;
  if (start !== undefined && typeof start !== 'string') throw new ConsentEvaluationError('Period.start is not a string');
  if (end !== undefined && typeof end !== 'string') throw new ConsentEvaluationError('Period.end is not a string');
  const from = start === undefined ? undefined : instant(start);
  const until = end === undefined ? undefined : endBound(end);
  // per-1 (https://hl7.org/fhir/R4/datatypes.html#Period): start <= end; otherwise the Period is invalid, not empty
  if (from !== undefined && until !== undefined && from >= until) throw new ConsentEvaluationError('Period ends before it starts');
  if (from !== undefined && now < from) return false;
  if (until !== undefined && now >= until) return false;
  return true;
}

/**
 * Do the conditions of one provision hold for the subject? `restrictive` is what a condition the
 * gateway cannot judge counts as: true for a deny (or type-less) provision, false for a permit.
 */
function conditionsHold(p: Json, s: Subject, restrictive: boolean): boolean {
  // time first: an expired provision applies to nothing
  if (!periodHolds(p['period'], s.now)) return false;
  const actors = arr(p['actor']);
  if (actors.length > 0) {
    let matched = false;
    let unreadable = false;
    for (const a of actors) {
      const ref = isObj(a) && isObj(a['reference']) ? a['reference']['reference'] : undefined;
      if (typeof ref !== 'string') unreadable = true;
      else if ([...s.actors].some((actor) => refersTo(ref, actor))) matched = true;
    }
    if (!matched && !(unreadable && restrictive)) return false;
  }
  const classes = arr(p['class']);
  if (classes.length > 0) {
    let matched = false;
    let unreadable = false;
    for (const c of classes) {
      if (isObj(c) && c['system'] === RESOURCE_TYPES_SYSTEM) {
        if (c['code'] === s.type) matched = true;
      } else unreadable = true; // a profile or MIME type class: not judged here
    }
    if (!matched && !(unreadable && restrictive)) return false;
  }
  const labels = arr(p['securityLabel']);
  if (labels.length > 0) {
    const hit = labels.some((l) => isObj(l) && typeof l['code'] === 'string' && s.labels.some((r) => r.code === l['code'] && (l['system'] === undefined || r.system === l['system'])));
    if (!hit) return false;
  }
  const data = arr(p['data']);
  if (data.length > 0) {
    const hit = data.some((d) => {
      const ref = isObj(d) && isObj(d['reference']) ? d['reference']['reference'] : undefined;
      return typeof ref === 'string' && refersTo(ref, s.key);
    });
    if (!hit) return false;
  }
  const actions = arr(p['action']);
  if (actions.length > 0) {
    const all = actions.flatMap((a) => arr(isObj(a) ? a['coding'] : undefined));
    const known = all.filter((c): c is Json => isObj(c) && (c['system'] === undefined || c['system'] === CONSENT_ACTION_SYSTEM));
    // an action only in text or in another code system is not judged here
    const unreadable = all.length === 0 || known.length < all.length;
    if (!known.some((c) => SHARING_ACTIONS.has(String(c['code']))) && !(unreadable && restrictive)) return false;
  }
  // not judged at sharing time
  if ((arr(p['purpose']).length > 0 || arr(p['code']).length > 0 || p['dataPeriod'] !== undefined) && !restrictive) return false;
  return true;
}

interface ProvisionMatch {
  type: 'permit' | 'deny';
  pointer: string;
}

/** The answer of one provision and its nested ones (undefined: does not apply, or applies without a type and no nested one answers). */
function evaluateProvision(p: unknown, s: Subject, pointer: string, depth: number): ProvisionMatch | undefined {
  if (depth > MAX_PROVISION_DEPTH) throw new ConsentEvaluationError(`provisions nested deeper than ${MAX_PROVISION_DEPTH}`);
  if (!isObj(p)) throw new ConsentEvaluationError(`${pointer} is not an object`);
  const raw = p['type'];
  // R4: type is required on nested provisions; an unknown or missing one there is read as deny (fail closed)
  const type: 'permit' | 'deny' | undefined = raw === 'permit' || raw === 'deny' ? raw : raw === undefined && depth === 0 ? undefined : 'deny';
  if (!conditionsHold(p, s, type !== 'permit')) return undefined;
  let answer: ProvisionMatch | undefined = type === undefined ? undefined : { type, pointer };
  let nested: ProvisionMatch | undefined;
  arr(p['provision']).forEach((n, i) => {
    const m = evaluateProvision(n, s, `${pointer}/provision/${i}`, depth + 1);
    if (m !== undefined && (nested === undefined || (m.type === 'deny' && nested.type === 'permit'))) nested = m;
  });
  if (nested !== undefined) answer = nested;
  return answer;
}

/** The `meta.security` codings of a resource (those with a string code). */
function labelsOf(resource: Json): SecurityLabel[] {
  const meta = resource['meta'];
  return arr(isObj(meta) ? meta['security'] : undefined).flatMap((c) => (isObj(c) && typeof c['code'] === 'string' ? [typeof c['system'] === 'string' ? { system: c['system'], code: c['code'] } : { code: c['code'] }] : []));
}

/**
 * True when a Consent governs sharing under `policy`: `status` active and a `scope` coding of
 * {@link CONSENT_SCOPE_SYSTEM} whose code is in `policy.scopes`. (The patient is matched by the caller.)
 * @param consent - plain JSON of a Consent.
 * @param policy - the mapping file's `consent`.
 */
export function consentGoverns(consent: Json, policy: ConsentPolicy): boolean {
  if (consent['resourceType'] !== 'Consent' || consent['status'] !== 'active') return false;
  const scope = consent['scope'];
  return arr(isObj(scope) ? scope['coding'] : undefined).some((c) => isObj(c) && c['system'] === CONSENT_SCOPE_SYSTEM && typeof c['code'] === 'string' && policy.scopes.includes(c['code']));
}

/**
 * May `resource` be shared with a peer, given its patient's Consents? See the module doc for the rules.
 * @param actors - the peer's `consentActors` (e.g. `["Organization/hospital-b"]`); empty: only
 *   provisions without `actor` can match it.
 * @param resource - plain JSON of the resource's current version.
 * @param consents - plain JSON of the Consents whose `patient` is the resource's patient (any status or scope: filtered here).
 * @param policy - the mapping file's `consent` ({@link DEFAULT_CONSENT_POLICY} without one).
 * @param now - the time the decision is for, ms since the epoch.
 * @returns The decision, naming the deciding Consent and provision (ids and pointers only).
 * @throws ConsentEvaluationError when a governing Consent cannot be evaluated (the caller withholds).
 */
export function consentDecision(actors: readonly string[], resource: Json, consents: readonly Json[], policy: ConsentPolicy, now: number): ConsentDecision {
  if (!policy.honour) return { allowed: true, reason: 'consent.honour is false' };
  const type = typeof resource['resourceType'] === 'string' ? resource['resourceType'] : '';
  const subject: Subject = { key: `${type}/${String(resource['id'])}`, type, labels: labelsOf(resource), actors: new Set(actors), now };
  let permit: ConsentDecision | undefined;
  for (const c of consents) {
    if (!consentGoverns(c, policy)) continue;
    const id = `Consent/${String(c['id'])}`;
    let m: ProvisionMatch | undefined;
    try {
      m = c['provision'] === undefined ? undefined : evaluateProvision(c['provision'], subject, '/provision', 0);
    } catch (err) {
      if (err instanceof ConsentEvaluationError) err.message = `${id}: ${err.message}`;
      throw err;
    }
    if (m?.type === 'deny') return { allowed: false, consent: id, provision: m.pointer, reason: `denied by ${id} ${m.pointer}` };
    if (m?.type === 'permit') permit ??= { allowed: true, consent: id, provision: m.pointer, reason: `permitted by ${id} ${m.pointer}` };
  }
  return permit ?? { allowed: policy.noConsent === 'permit', reason: `no applicable Consent: noConsent ${policy.noConsent}` };
}

/** What {@link ConsentGate} needs from the mapping configuration (src/mapping/load.ts `Mapping`). */
export interface ConsentConfig {
  /** The mapping file's `consent` (defaults applied). */
  readonly consent: ConsentPolicy;
  /** The peer's `routes.<peer>.consentActors` (empty when none). */
  consentActors(peerId: string): readonly string[];
}

/** A stored version, as the replica gives it (src/store/store.ts `VersionRecord`). */
interface StoredVersion {
  deleted: boolean;
  body: string | null;
}

/** Options of {@link ConsentGate}. */
export interface ConsentGateOptions {
  /** The node's peer ids (every one is judged). */
  peers: readonly string[];
  /** The current mapping configuration, or undefined without a mapping file (then {@link DEFAULT_CONSENT_POLICY}, no actors). Read on each decision. */
  mapping: () => ConsentConfig | undefined;
  /** The node's resources: keys and current versions (src/merge/replica.ts `Replica`), read once to index the Consents. */
  replica: { keys(): Iterable<string>; current(key: string): StoredVersion | undefined };
  /** Called after a Consent changed the decisions of these patients (`Patient/<id>`): forget cached labels. */
  onChange?: (patients: readonly string[]) => void;
  /** Warnings (ids only) and denials at debug level. */
  logger?: { warn(obj: object, msg: string): void; debug?(obj: object, msg: string): void };
  /** Clock, ms; default `Date.now`. */
  now?: () => number;
}

/**
 * The node's Consent resources by patient, and the labels that carry their decisions to Tide.
 * Index built from the replica on first use, then kept current by {@link onVersion}.
 */
export class ConsentGate {
  readonly #opts: ConsentGateOptions;
  /** Patient key → Consent key → plain JSON of its current version. */
  #byPatient: Map<string, Map<string, Json>> | undefined;
  /** Consent key → its patient key. */
  readonly #patientOf = new Map<string, string>();
  #lastWarn = 0;

  /** @param opts - see {@link ConsentGateOptions}. */
  constructor(opts: ConsentGateOptions) {
    this.#opts = opts;
  }

  /** The policy in force. */
  get policy(): ConsentPolicy {
    return this.#opts.mapping()?.consent ?? DEFAULT_CONSENT_POLICY;
  }

  #index(): Map<string, Map<string, Json>> {
    if (this.#byPatient !== undefined) return this.#byPatient;
    this.#byPatient = new Map();
    for (const key of this.#opts.replica.keys()) {
      if (key.startsWith('Consent/')) this.#put(key, this.#opts.replica.current(key));
    }
    return this.#byPatient;
  }

  /** Updates the index for one Consent version; returns the patients whose Consents changed. */
  #put(key: string, version: StoredVersion | undefined): string[] {
    const index = this.#byPatient!;
    const touched: string[] = [];
    const old = this.#patientOf.get(key);
    if (old !== undefined) {
      index.get(old)?.delete(key);
      if (index.get(old)?.size === 0) index.delete(old);
      this.#patientOf.delete(key);
      touched.push(old);
    }
    if (version !== undefined && !version.deleted && version.body) {
      let consent: unknown;
      try {
        consent = JSON.parse(version.body);
      } catch {
        consent = undefined;
      }
      const patient = isObj(consent) ? patientKeyOf(consent['patient']) : undefined;
      if (isObj(consent) && patient !== undefined) {
        let m = index.get(patient);
        if (m === undefined) index.set(patient, (m = new Map()));
        m.set(key, consent);
        this.#patientOf.set(key, patient);
        if (patient !== old) touched.push(patient);
      } else if (isObj(consent) && consent['status'] === 'active') {
        this.#opts.logger?.warn({ consent: key }, 'consent: active Consent without a literal Patient reference in "patient" is not honoured');
      }
    }
    return touched;
  }

  /**
   * Tells the gate about a new version of a resource (the replica's `onVersion`): a Consent updates
   * the index and calls `onChange` with the patients concerned. Other keys are ignored. Throws nothing.
   * @param key - `Type/id`.
   * @param version - the new version (deleted or with its body).
   */
  onVersion(key: string, version: StoredVersion): void {
    if (!key.startsWith('Consent/') || this.#byPatient === undefined) return; // not built yet: the first use reads it
    const touched = this.#put(key, version);
    if (touched.length > 0) this.#opts.onChange?.(touched);
  }

  /** Consents indexed for `patient` (`Patient/<id>`), any status. */
  consentsOf(patient: string): Json[] {
    return [...(this.#index().get(patient)?.values() ?? [])];
  }

  /**
   * The decision for one peer and one resource: every patient of the resource is judged; a deny
   * for any of them withholds it.
   * @param peerId - a peer node id.
   * @param resource - plain JSON of the resource's current version.
   * @returns The decision (ids and pointers only).
   * @throws ConsentEvaluationError when a Consent cannot be evaluated; Error when the compartment cannot be computed.
   */
  explain(peerId: string, resource: Json): ConsentDecision {
    return this.#decide(peerId, resource, this.#patientsOf(resource), this.#opts.mapping(), (this.#opts.now ?? Date.now)());
  }

  /**
   * {@link patientsOf}, and for a Provenance (such as the node's merge Provenance,
   * src/merge/provenance.ts) the patients of the resources its `target` names that the node holds:
   * it tells of them, so it follows their Consents.
   */
  #patientsOf(resource: Json): string[] {
    const own = patientsOf(resource);
    if (resource['resourceType'] !== 'Provenance') return own;
    const out = new Set(own);
    for (const t of arr(resource['target'])) {
      const ref = isObj(t) ? t['reference'] : undefined;
      const m = typeof ref === 'string' ? /(?:^|\/)([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64})(?:\/_history\/[^/]*)?$/.exec(ref) : null;
      if (m === null || m[1]!.startsWith('Provenance/')) continue;
      const body = this.#opts.replica.current(m[1]!)?.body;
      const target = body ? (JSON.parse(body) as unknown) : undefined;
      if (isObj(target)) for (const p of patientsOf(target)) out.add(p);
    }
    return [...out];
  }

  #decide(peerId: string, resource: Json, patients: readonly string[], mapping: ConsentConfig | undefined, now: number): ConsentDecision {
    const policy = mapping?.consent ?? DEFAULT_CONSENT_POLICY;
    if (!policy.honour) return { allowed: true, reason: 'consent.honour is false' };
    if (patients.length === 0) return { allowed: true, reason: 'not in a patient compartment' };
    const actors = mapping?.consentActors(peerId) ?? [];
    let first: ConsentDecision | undefined;
    for (const p of patients) {
      const d = consentDecision(actors, resource, this.consentsOf(p), policy, now);
      if (!d.allowed) return d;
      first ??= d;
    }
    return first!;
  }

  /**
   * The routing labels (src/tide/peer-authz.ts {@link ROUTE_LABEL_SYSTEM}) for every peer the
   * Consents deny this resource to; used by the node's `securityLabels`. When a Consent cannot be
   * evaluated, every peer is denied (fail closed) and a warning names the resource key only.
   * @param key - `Type/id`.
   * @param body - canonical JSON of its current version.
   * @returns Labels `urn:tidegate:route|withhold:<peer>`; `[]` when every peer may receive it.
   */
  labels(key: string, body: string): SecurityLabel[] {
    const mapping = this.#opts.mapping();
    const policy = mapping?.consent ?? DEFAULT_CONSENT_POLICY;
    if (!policy.honour || key.startsWith('Consent/')) return [];
    if (this.#index().size === 0 && policy.noConsent === 'permit') return []; // no Consent anywhere: nothing to parse
    const denied: string[] = [];
    try {
      const resource = JSON.parse(body) as unknown;
      if (!isObj(resource)) throw new ConsentEvaluationError('the resource is not a JSON object');
      const patients = this.#patientsOf(resource);
      if (patients.length === 0) return [];
      const now = (this.#opts.now ?? Date.now)();
      for (const peer of this.#opts.peers) {
        const d = this.#decide(peer, resource, patients, mapping, now);
        if (!d.allowed) {
          denied.push(peer);
          this.#opts.logger?.debug?.({ key, peer, consent: d.consent, provision: d.provision }, 'consent: resource withheld from peer');
        }
      }
    } catch (err) {
      const now = Date.now();
      if (now - this.#lastWarn > 10_000) {
        this.#lastWarn = now;
        this.#opts.logger?.warn({ key, err: err instanceof ConsentEvaluationError ? err.message : (err as Error).name }, 'consent: decision failed; resource withheld from every peer');
      }
      return this.#opts.peers.map((p) => ({ system: ROUTE_LABEL_SYSTEM, code: `withhold:${p}` }));
    }
    return denied.map((p) => ({ system: ROUTE_LABEL_SYSTEM, code: `withhold:${p}` }));
  }
}
