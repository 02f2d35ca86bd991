/**
 * Patient matching (docs/mappings.md "Identifiers and patient matching"): decides whether a Patient
 * new to this node — read from its hospital, or created through its FHIR API — is the same person
 * as a Patient the node already holds (its own hospital's, its API clients', or one gossiped from a
 * peer). Candidates come from an index ({@link PatientIndex}); {@link matchPatient} is the same
 * decision by comparing with every Patient.
 *
 * Rules, in this order, for each existing Patient:
 *
 * 1. **`shared-identifier`** — both carry an identifier in one of `sharedSystems` with the same value:
 *    `same` (score 1). Both carry one in the same shared system with *different* values: they are
 *    different people (`none`), whatever the demographics say.
 * 2. **`deterministic`** (when configured) — equal normalized family name, first given name and
 *    birthDate, and an equal identifier in one of `deterministic.identifierSystems`: `same` (score 1).
 * 3. **`demographics`** (when `possible`, the default) — equal normalized family name, first given
 *    name and birthDate without an agreeing identifier: `possible` (score 0.8). Possible matches go
 *    to the review list ({@link MatchReviewList}, `GET /admin/matches`); they are never merged.
 *
 * Normalization: Unicode NFKD, combining marks removed, lower case, everything but letters removed
 * (so `García-López` = `garcialopez`; Synthea's digit suffixes `Harold594` = `harold`). The name used
 * is the first `HumanName` with `use` `official`, else the first one; `birthDate` compares its first
 * 10 characters (a full date; partial dates never match).
 *
 * What `same` does in this slice: the new Patient gets a `Patient.link` of type `seealso` to each
 * sure match (https://hl7.org/fhir/R4/patient-definitions.html#Patient.link) — in the poller's own
 * write for a hospital read, in a separate version for an API create; resources are never merged
 * nor replaced (`replaced-by`/`replaces` are left to a person).
 *
 * Nothing here logs or returns names, birth dates or identifier values: results carry resource ids,
 * the rule and the score only.
 */
import { randomUUID, createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { isJsonObject, parseFhirJson } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import type { LocalWriteResult, Replica } from '../merge/replica.ts';
import type { VersionRecord } from '../store/store.ts';
import type { PatientMatchingConfig } from './schema.ts';
import type { LiveMapping } from './live.ts';

/** The matching rules in use (mapping file `patientMatching`, defaults applied). */
export interface MatchRules {
  /** Systems whose equal value means the same person. */
  sharedSystems: readonly string[];
  /** The deterministic rule's identifier systems; absent: no deterministic rule. */
  deterministic?: { identifierSystems: readonly string[] };
  /** Report demographic-only agreement as `possible` (default true). */
  possible?: boolean;
}

/** The rule that decided a match. */
export type MatchRule = 'shared-identifier' | 'deterministic' | 'demographics';

/** One candidate match: ids only. */
export interface PatientMatch {
  decision: 'same' | 'possible';
  /** The existing Patient's id (`Patient.id`). */
  otherId: string;
  rule: MatchRule;
  /** 1 for `same`, 0.8 for `possible`. */
  score: number;
}

/** Result of {@link matchPatient}: the strongest decision over all existing Patients, and every match. */
export interface MatchOutcome {
  decision: 'same' | 'possible' | 'none';
  matches: PatientMatch[];
}

/**
 * A name part normalized for comparison (module doc).
 * @param s - a family or given name.
 * @returns Lower-case letters only; `''` when none.
 */
export function normalizeName(s: string): string {
  return s.normalize('NFKD').replace(/\p{M}/gu, '').toLowerCase().replace(/[^\p{L}]/gu, '');
}

interface Demographics {
  key: string | undefined;
  identifiers: Map<string, Set<string>>;
}

function demographics(p: FhirJsonObject): Demographics {
  const identifiers = new Map<string, Set<string>>();
  const ids = p['identifier'];
  if (Array.isArray(ids)) {
    for (const i of ids) {
      if (!isJsonObject(i) || typeof i['system'] !== 'string' || typeof i['value'] !== 'string') continue;
      let set = identifiers.get(i['system']);
      if (set === undefined) identifiers.set(i['system'], (set = new Set()));
      set.add(i['value']);
    }
  }
  const names = Array.isArray(p['name']) ? p['name'].filter(isJsonObject) : [];
  const name = names.find((n) => n['use'] === 'official') ?? names[0];
  const family = name && typeof name['family'] === 'string' ? normalizeName(name['family']) : '';
  const given = name && Array.isArray(name['given']) && typeof name['given'][0] === 'string' ? normalizeName(name['given'][0]) : '';
  const birthDate = typeof p['birthDate'] === 'string' && /^\d{4}-\d{2}-\d{2}/.test(p['birthDate']) ? p['birthDate'].slice(0, 10) : '';
  return { key: family && given && birthDate ? `${family}\u0000${given}\u0000${birthDate}` : undefined, identifiers };
}

/** Do `a` and `b` share a value in `system`? `undefined` when either has none in it. */
function agree(a: Demographics, b: Demographics, system: string): boolean | undefined {
  const x = a.identifiers.get(system);
  const y = b.identifiers.get(system);
  if (x === undefined || y === undefined) return undefined;
  for (const v of x) if (y.has(v)) return true;
  return false;
}

/**
 * The decision for one pair (rules in the module doc), or undefined when they do not match.
 * @param c - the candidate's demographics.
 * @param o - the other Patient's demographics.
 * @param otherId - the other Patient's id.
 * @param rules - see {@link MatchRules}.
 */
function decidePair(c: Demographics, o: Demographics, otherId: string, rules: MatchRules): PatientMatch | undefined {
  let conflict = false;
  let same = false;
  for (const s of rules.sharedSystems) {
    const a = agree(c, o, s);
    if (a === true) same = true;
    else if (a === false) conflict = true;
  }
  if (same) return { decision: 'same', otherId, rule: 'shared-identifier', score: 1 };
  if (conflict || c.key === undefined || c.key !== o.key) return undefined;
  if (rules.deterministic?.identifierSystems.some((s) => agree(c, o, s) === true)) return { decision: 'same', otherId, rule: 'deterministic', score: 1 };
  if (rules.possible !== false) return { decision: 'possible', otherId, rule: 'demographics', score: 0.8 };
  return undefined;
}

/** The outcome of a list of matches: sorted by score, then id; the strongest decision. */
function outcomeOf(matches: PatientMatch[]): MatchOutcome {
  matches.sort((a, b) => b.score - a.score || (a.otherId < b.otherId ? -1 : a.otherId > b.otherId ? 1 : 0));
  const decision = matches.some((m) => m.decision === 'same') ? 'same' : matches.length > 0 ? 'possible' : 'none';
  return { decision, matches };
}

/**
 * Decides whether `candidate` is the same person as any of `existing` (rules in the module doc), by
 * comparing it with each of them: O(existing). The reference the indexed path ({@link PatientIndex})
 * must agree with.
 * @param candidate - the new Patient (FHIR JSON; a hospital read after identifier translation).
 * @param existing - the node's Patients (FHIR JSON with `id`); one whose id equals the candidate's is skipped.
 * @param rules - see {@link MatchRules}.
 * @returns `same` when any sure match, else `possible` when any possible one, else `none`; the
 *   matches sorted by score, then id.
 */
export function matchPatient(candidate: FhirJsonObject, existing: Iterable<FhirJsonObject>, rules: MatchRules): MatchOutcome {
  const c = demographics(candidate);
  const matches: PatientMatch[] = [];
  for (const other of existing) {
    const otherId = other['id'];
    if (typeof otherId !== 'string' || otherId === candidate['id'] || other['resourceType'] !== 'Patient') continue;
    const m = decidePair(c, demographics(other), otherId, rules);
    if (m !== undefined) matches.push(m);
  }
  return outcomeOf(matches);
}

/** The live Patient body of a version, or undefined (deleted, empty, not a Patient object). */
function patientOf(v: VersionRecord | undefined): FhirJsonObject | undefined {
  if (v === undefined || v.deleted || !v.body) return undefined;
  const body = parseFhirJson(v.body);
  return isJsonObject(body) ? body : undefined;
}

/** The index terms of a Patient: one per identifier in an indexed system, one for its blocking key. */
function termsOf(d: Demographics, systems: ReadonlySet<string>): string[] {
  const terms: string[] = [];
  for (const [system, values] of d.identifiers) if (systems.has(system)) for (const v of values) terms.push(`i\u0000${system}\u0000${v}`);
  if (d.key !== undefined) terms.push(`b\u0000${d.key}`);
  return terms;
}

/**
 * An index of the node's Patients for matching: identifier terms (system and value, for each of
 * the `sharedSystems` it was built for) and blocking keys (normalized family name, first given
 * name, birthDate) → `Patient/<id>` keys. A candidate can only match a Patient that shares one of
 * its terms (a shared-identifier match needs an equal value in a shared system; the other rules
 * need an equal blocking key), so matching looks at those Patients only and decides with the same
 * rules as {@link matchPatient}. Memory: one entry per term (a few per Patient).
 */
export class PatientIndex {
  /** The shared systems whose identifiers are indexed. */
  readonly systems: ReadonlySet<string>;
  readonly #keys = new Map<string, Set<string>>();
  readonly #terms = new Map<string, string[]>();

  /** @param systems - the `sharedSystems` of the rules in force. */
  constructor(systems: Iterable<string>) {
    this.systems = new Set(systems);
  }

  /** Number of Patients indexed. */
  get size(): number {
    return this.#terms.size;
  }

  /**
   * Sets the entries of one Patient from its current body, removing those of its previous one.
   * @param key - `Patient/<id>`.
   * @param body - its current body; undefined when deleted (its entries are removed).
   */
  set(key: string, body: FhirJsonObject | undefined): void {
    const terms = body === undefined ? [] : termsOf(demographics(body), this.systems);
    const old = this.#terms.get(key);
    if (old !== undefined && old.length === terms.length && old.every((t, i) => t === terms[i])) return;
    for (const t of old ?? []) {
      const set = this.#keys.get(t);
      set?.delete(key);
      if (set?.size === 0) this.#keys.delete(t);
    }
    if (body === undefined) {
      this.#terms.delete(key);
      return;
    }
    this.#terms.set(key, terms);
    for (const t of terms) {
      let set = this.#keys.get(t);
      if (set === undefined) this.#keys.set(t, (set = new Set()));
      set.add(key);
    }
  }

  /**
   * The keys of the Patients sharing a term with `candidate`.
   * @param candidate - FHIR JSON of a Patient.
   * @returns `Patient/<id>` keys, each once (the candidate's own included when indexed).
   */
  candidates(candidate: FhirJsonObject): Set<string> {
    const out = new Set<string>();
    for (const t of termsOf(demographics(candidate), this.systems)) for (const k of this.#keys.get(t) ?? []) out.add(k);
    return out;
  }
}

/**
 * Decides like {@link matchPatient} over the Patients of `replica`, looking only at the candidates
 * `index` gives: O(candidates) instead of O(Patients).
 * @param candidate - the Patient to match (FHIR JSON with `id`).
 * @param index - an index of `replica`'s Patients built for `rules.sharedSystems`.
 * @param replica - where the candidates' current versions are read.
 * @param rules - see {@link MatchRules}.
 * @returns The same outcome {@link matchPatient} gives over every Patient of `replica`.
 */
export function matchPatientIndexed(candidate: FhirJsonObject, index: PatientIndex, replica: Pick<Replica, 'current'>, rules: MatchRules): MatchOutcome {
  const c = demographics(candidate);
  const matches: PatientMatch[] = [];
  for (const key of index.candidates(candidate)) {
    const other = patientOf(replica.current(key));
    const otherId = other?.['id'];
    if (other === undefined || typeof otherId !== 'string' || otherId === candidate['id'] || other['resourceType'] !== 'Patient') continue;
    const m = decidePair(c, demographics(other), otherId, rules);
    if (m !== undefined) matches.push(m);
  }
  return outcomeOf(matches);
}

/**
 * Adds a `Patient.link` of type `seealso` to `Patient/otherId` unless one to that reference exists
 * (https://hl7.org/fhir/R4/valueset-link-type.html). Idempotent.
 * @param patient - FHIR JSON of a Patient; not modified.
 * @param otherIds - ids of the other Patients.
 * @returns The Patient (a new object when a link was added, else the input).
 */
export function linkPatient(patient: FhirJsonObject, otherIds: readonly string[]): FhirJsonObject {
  const links = Array.isArray(patient['link']) ? patient['link'] : [];
  const have = new Set(links.flatMap((l) => (isJsonObject(l) && isJsonObject(l['other']) && typeof l['other']['reference'] === 'string' ? [l['other']['reference']] : [])));
  const add = otherIds.map((id) => `Patient/${id}`).filter((ref) => !have.has(ref) && have.add(ref));
  if (add.length === 0) return patient;
  return { ...patient, link: [...links, ...add.map((reference) => ({ other: { reference }, type: 'seealso' }))] };
}

/** One entry of the review list: ids, rule and score only. */
export interface MatchReviewEntry {
  /** Stable id of the pair (24 hex of SHA-256 of the two references, order-independent). */
  id: string;
  /** The new Patient (read from the hospital or created through the API), `Patient/x`. */
  candidate: string;
  /** The Patient it may be, `Patient/y`. */
  existing: string;
  rule: MatchRule;
  score: number;
  /** When it was listed, ISO 8601. */
  createdAt: string;
}

interface ReviewFile {
  v: 1;
  open: MatchReviewEntry[];
  /** Pair ids dismissed by a reviewer: never listed again. */
  dismissed: string[];
}

/** Stable id of an unordered pair of references. */
export function pairId(a: string, b: string): string {
  const [x, y] = a < b ? [a, b] : [b, a];
  return createHash('sha256').update(`${x}\u0000${y}`).digest('hex').slice(0, 24);
}

/**
 * The review list of possible matches: in memory, and in a small JSON file when `file` is given
 * (rewritten whole on each change, through a temporary file and rename, so a crash leaves the old
 * or the new list, never half of one). Entries are never acted on automatically.
 */
export class MatchReviewList {
  #file: string | undefined;
  readonly #open = new Map<string, MatchReviewEntry>();
  readonly #dismissed = new Set<string>();

  /**
   * @param file - JSON file to keep the list in; read now when it exists. Absent: memory only.
   * @throws Error when the file exists but is not a review list written by this class (nothing is overwritten).
   */
  constructor(file?: string) {
    this.#file = file;
    const saved = readReviewFile(file);
    if (saved === undefined) return;
    for (const e of saved.open) this.#open.set(e.id, e);
    for (const d of saved.dismissed) this.#dismissed.add(d);
  }

  /** The file the list is kept in; undefined: memory only. */
  get file(): string | undefined {
    return this.#file;
  }

  /**
   * Prepares keeping the list in another file (a mapping reload that changed `reviewFile`): the
   * new file is read now (nothing changes yet); the returned function merges its entries with
   * those in memory (a pair dismissed in either stays dismissed), keeps the list there from then
   * on and writes it (a failed write is retried by the next change). The old file is left as it is.
   * @param file - the new file; undefined: memory only from then on.
   * @returns The commit function (throws nothing).
   * @throws Error when the new file exists but is not a review list, or cannot be read.
   */
  prepareMove(file: string | undefined): () => void {
    if (file === this.#file) return () => {};
    const saved = readReviewFile(file);
    return () => {
      this.#file = file;
      for (const d of saved?.dismissed ?? []) this.#dismissed.add(d);
      for (const e of saved?.open ?? []) if (!this.#open.has(e.id)) this.#open.set(e.id, e);
      for (const id of this.#dismissed) this.#open.delete(id);
      try {
        this.#save();
      } catch {
        // kept in memory; the next add or dismiss writes the file again and reports a failure
      }
    };
  }

  /**
   * Lists a possible match unless the pair is listed already or was dismissed.
   * @param candidateId - id of the new Patient.
   * @param match - a `possible` match from {@link matchPatient}.
   * @returns The entry, or undefined when not added.
   * @throws the fs error when the file cannot be written (the entry is then not kept).
   */
  add(candidateId: string, match: PatientMatch): MatchReviewEntry | undefined {
    const candidate = `Patient/${candidateId}`;
    const existing = `Patient/${match.otherId}`;
    const id = pairId(candidate, existing);
    if (this.#open.has(id) || this.#dismissed.has(id)) return undefined;
    const entry: MatchReviewEntry = { id, candidate, existing, rule: match.rule, score: match.score, createdAt: new Date().toISOString() };
    this.#open.set(id, entry);
    try {
      this.#save();
    } catch (err) {
      this.#open.delete(id);
      throw err;
    }
    return entry;
  }

  /** Open entries, oldest first. */
  list(): MatchReviewEntry[] {
    return [...this.#open.values()];
  }

  /**
   * Removes an entry for good (the pair is not listed again).
   * @param id - an entry id.
   * @returns The removed entry, or undefined when there is none with that id.
   * @throws the fs error when the file cannot be written (nothing changes).
   */
  dismiss(id: string): MatchReviewEntry | undefined {
    const entry = this.#open.get(id);
    if (entry === undefined) return undefined;
    this.#open.delete(id);
    this.#dismissed.add(id);
    try {
      this.#save();
    } catch (err) {
      this.#dismissed.delete(id);
      this.#open.set(id, entry);
      throw err;
    }
    return entry;
  }

  #save(): void {
    if (this.#file === undefined) return;
    const body: ReviewFile = { v: 1, open: this.list(), dismissed: [...this.#dismissed] };
    mkdirSync(dirname(this.#file), { recursive: true });
    const tmp = `${this.#file}.${randomUUID()}.tmp`;
    writeFileSync(tmp, `${JSON.stringify(body, null, 2)}\n`, { mode: 0o600 });
    renameSync(tmp, this.#file);
  }
}

/** Author of the `seealso` link writes on Patients created through the FHIR API (a CRDT author, like the poller's `Device/hospital-system`). */
export const PATIENT_MATCHER_AUTHOR = 'Device/tidegate-patient-matcher';

/** Patients examined between two yields to the event loop while the index is built. */
const BUILD_BATCH = 500;

/** What the matcher reads and writes of the node's replica. */
export type MatcherReplica = Pick<Replica, 'resourceKeys' | 'current' | 'history' | 'write'>;

/**
 * Matching applied to Patients new to the node — read from the hospital ({@link apply}, called by
 * the poller before its write) or created through the FHIR API ({@link afterApiWrite}, a separate
 * write after the client's): sure matches become `seealso` links on the new Patient, possible ones
 * go to the review list. Patients received from peers are not matched (each node matches what its
 * own hospital and its own API clients register), and updates of a Patient the node holds are not
 * re-matched.
 *
 * Candidates come from a {@link PatientIndex} kept up to date from every Patient version
 * ({@link onVersion}); it is built from the replica in the background ({@link buildIndex}, in
 * batches of {@link BUILD_BATCH} keys with a yield between them) and rebuilt when a reload changes
 * `sharedSystems`. Until it is ready, matching compares with every Patient (same decisions, slower).
 */
export class PatientMatcher {
  #rules: MatchRules | undefined;
  /** The review list: one object for the life of the matcher (a reload may move it to another file). */
  readonly review: MatchReviewList;
  readonly #replica: MatcherReplica;
  /** The index; undefined when matching is off. Kept up to date from the start of its build. */
  #index: PatientIndex | undefined;
  /** True once the build of {@link #index} has gone through every key. */
  #ready = false;
  #building: Promise<void> | undefined;

  /**
   * @param rules - see {@link MatchRules}; undefined: matching off ({@link apply} changes nothing).
   * @param replica - the node's replica: its Patients are the ones matched against.
   * @param review - the review list; default one in memory.
   */
  constructor(rules: MatchRules | undefined, replica: MatcherReplica, review: MatchReviewList = new MatchReviewList()) {
    this.#rules = rules;
    this.#replica = replica;
    this.review = review;
    if (rules !== undefined) this.#index = new PatientIndex(rules.sharedSystems);
  }

  /** The rules in force; undefined when matching is off. */
  get rules(): MatchRules | undefined {
    return this.#rules;
  }

  /** True when matching uses the index (built and current); false while it compares with every Patient. */
  get indexed(): boolean {
    return this.#ready && this.#index !== undefined;
  }

  /**
   * Builds the index from the replica unless it is built or being built: keys are read in batches
   * of {@link BUILD_BATCH}, yielding to the event loop (`setImmediate`) between batches; versions
   * written meanwhile are indexed by {@link onVersion}. A reload that changes `sharedSystems`
   * abandons a build in progress and starts another.
   * @returns Resolves when the index in force is ready (at once when matching is off).
   */
  buildIndex(): Promise<void> {
    if (this.#index === undefined || this.#ready) return Promise.resolve();
    if (this.#building !== undefined) return this.#building;
    const index = this.#index;
    const building = (async () => {
      let n = 0;
      for (const key of this.#replica.resourceKeys()) {
        if (this.#index !== index) return; // a reload replaced it; that build takes over
        if (key.startsWith('Patient/')) index.set(key, patientOf(this.#replica.current(key)));
        if (++n % BUILD_BATCH === 0) await new Promise<void>((r) => setImmediate(r));
      }
      if (this.#index === index) this.#ready = true;
    })().finally(() => {
      if (this.#building === building) this.#building = undefined;
    });
    this.#building = building;
    return building;
  }

  /**
   * Keeps the index current: call with every version the replica records (node `onVersion`; local,
   * hospital and peer writes alike). Cheap for other types (a prefix check).
   * @param key - `Type/id`.
   * @param version - the new current version.
   */
  onVersion(key: string, version: VersionRecord): void {
    if (this.#index === undefined || !key.startsWith('Patient/')) return;
    this.#index.set(key, patientOf(version));
  }

  /**
   * Prepares new rules from a reloaded mapping's `patientMatching` (absent: matching off; the
   * review list keeps its entries). Nothing changes until the returned function runs; when it
   * changes `sharedSystems` (or turns matching on), the index is rebuilt in the background.
   * @param cfg - the parsed `patientMatching` (`reviewFile` absolute), or undefined.
   * @returns The commit function (throws nothing).
   * @throws Error when a new `reviewFile` exists but is not a review list (see {@link MatchReviewList.prepareMove}).
   */
  prepareReconfigure(cfg: PatientMatchingConfig | undefined): () => void {
    const move = cfg === undefined ? () => {} : this.review.prepareMove(cfg.reviewFile);
    return () => {
      this.#rules = cfg === undefined ? undefined : rulesOf(cfg);
      const systems = this.#rules?.sharedSystems;
      const same = systems !== undefined && this.#index !== undefined && systems.length === this.#index.systems.size && systems.every((s) => this.#index!.systems.has(s));
      if (!same) {
        this.#index = systems === undefined ? undefined : new PatientIndex(systems);
        this.#ready = false;
        this.#building = undefined;
        this.buildIndex().catch(() => {}); // a failed read leaves the full scan in use
      }
      move();
    };
  }

  /**
   * Matches one Patient against the node's Patients: by the index when ready, else by comparing
   * with each (same decisions). Possible matches are added to the review list.
   * @param patient - FHIR JSON with `id` (node id); not modified.
   * @param rules - the rules in force.
   * @throws the fs error when the review file cannot be written.
   */
  #match(patient: FhirJsonObject, rules: MatchRules): MatchOutcome {
    const index = this.#index;
    let outcome: MatchOutcome;
    if (this.#ready && index !== undefined) outcome = matchPatientIndexed(patient, index, this.#replica, rules);
    else {
      this.buildIndex().catch(() => {});
      outcome = matchPatient(patient, allPatients(this.#replica), rules);
    }
    for (const m of outcome.matches) if (m.decision === 'possible') this.review.add(patient['id'] as string, m);
    return outcome;
  }

  /**
   * Matches one Patient read from the hospital (the poller calls it before writing a Patient the
   * node does not hold). Other resource types are returned unchanged.
   * @param patient - FHIR JSON with `id` (node id); not modified.
   * @returns The Patient with `seealso` links to sure matches, and the outcome.
   * @throws the fs error when the review file cannot be written.
   */
  apply(patient: FhirJsonObject): { resource: FhirJsonObject; outcome: MatchOutcome } {
    const rules = this.#rules;
    if (rules === undefined || patient['resourceType'] !== 'Patient' || typeof patient['id'] !== 'string') return { resource: patient, outcome: { decision: 'none', matches: [] } };
    const outcome = this.#match(patient, rules);
    const sure = outcome.matches.filter((m) => m.decision === 'same').map((m) => m.otherId);
    return { resource: linkPatient(patient, sure), outcome };
  }

  /**
   * Matching of a Patient written through the node's FHIR API (create, update-as-create,
   * conditional create or update, transaction and batch entries): call it from the service's
   * update sink, right after the write. When that write created the Patient (no version before it,
   * or a deleted one), matching runs in a microtask — after the other writes of the same request or
   * transaction — on the Patient's current version; sure matches are written as a separate version
   * adding `seealso` links, authored by {@link PATIENT_MATCHER_AUTHOR}, whose update goes to `sink`
   * (gossip, like the client's). Updates of a Patient the node held are not re-matched (as for
   * hospital reads). Never throws: a failure (review file not writable) is passed to `onError`
   * and the Patient stays without links.
   * @param key - the written key (`Type/id`; other types are ignored).
   * @param sink - receives the link write's update (the node's API sink).
   * @param onError - told of a failure; default none.
   */
  afterApiWrite(key: string, sink: (key: string, update: Uint8Array) => void, onError: (err: unknown) => void = () => {}): void {
    if (this.#rules === undefined || !key.startsWith('Patient/')) return;
    const [current, previous] = this.#replica.history(key);
    if (current === undefined || current.deleted || (previous !== undefined && !previous.deleted)) return;
    queueMicrotask(() => {
      try {
        const res = this.#linkCreated(key);
        if (res?.update) sink(key, res.update);
      } catch (err) {
        onError(err);
      }
    });
  }

  /** Matches the current version of `key` and writes its sure-match links; undefined when none were added. */
  #linkCreated(key: string): LocalWriteResult | undefined {
    const rules = this.#rules;
    const cur = this.#replica.current(key);
    const patient = patientOf(cur);
    if (rules === undefined || cur === undefined || patient === undefined || patient['resourceType'] !== 'Patient' || typeof patient['id'] !== 'string') return undefined;
    const outcome = this.#match(patient, rules);
    const sure = outcome.matches.filter((m) => m.decision === 'same').map((m) => m.otherId);
    const linked = linkPatient(patient, sure);
    if (linked === patient) return undefined;
    return this.#replica.write(key, linked, { baseVersionId: cur.versionId, author: PATIENT_MATCHER_AUTHOR });
  }
}

/** Every live Patient of a replica (FHIR JSON), for the full comparison. */
function* allPatients(replica: Pick<Replica, 'resourceKeys' | 'current'>): Generator<FhirJsonObject> {
  for (const key of replica.resourceKeys()) {
    if (!key.startsWith('Patient/')) continue;
    const body = patientOf(replica.current(key));
    if (body !== undefined) yield body;
  }
}

/**
 * A {@link PatientMatcher} over a node's replica, from the mapping file's `patientMatching`
 * (`Mapping.patientMatching`; `reviewFile` absolute). Call its `buildIndex` once the replica is
 * loaded and its `onVersion` with every version.
 * @param cfg - the parsed `patientMatching`, `sharedSystems` filled in by the loader.
 * @param replica - the node's replica.
 * @returns The matcher; its `review` is the list `GET /admin/matches` serves.
 * @throws Error when `reviewFile` exists but is not a review list.
 */
export function patientMatcherFor(cfg: PatientMatchingConfig | undefined, replica: MatcherReplica): PatientMatcher {
  return new PatientMatcher(cfg === undefined ? undefined : rulesOf(cfg), replica, new MatchReviewList(cfg?.reviewFile));
}

/** {@link MatchRules} of a parsed `patientMatching`. */
function rulesOf(cfg: PatientMatchingConfig): MatchRules {
  return { sharedSystems: cfg.sharedSystems ?? [], ...(cfg.deterministic ? { deterministic: cfg.deterministic } : {}), possible: cfg.possible };
}

/**
 * Reads a review list file.
 * @param file - the file, or undefined (memory only).
 * @returns Its entries; undefined when `file` is undefined or does not exist.
 * @throws Error when the file exists but is not a review list; the fs error when it cannot be read.
 */
function readReviewFile(file: string | undefined): ReviewFile | undefined {
  if (file === undefined) return undefined;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let v: Partial<ReviewFile> | undefined;
  try {
    v = JSON.parse(text) as Partial<ReviewFile>;
  } catch {
    v = undefined;
  }
  if (v?.v !== 1 || !Array.isArray(v.open) || !Array.isArray(v.dismissed)) throw new Error(`${file}: not a tidegate match review list (expected {"v":1,"open":[],"dismissed":[]})`);
  return v as ReviewFile;
}

/**
 * The node's patient matcher over a live mapping (src/mapping/live.ts): configured from the
 * mapping in force, and reconfigured by each reload (rules, `reviewFile`; a `patientMatching`
 * added by a reload turns matching on, one removed turns it off). A new `reviewFile` that is not a
 * review list refuses the reload.
 * @param live - the node's live mapping.
 * @param replica - the node's replica.
 * @returns The matcher (one object for the node's life).
 * @throws Error when the `reviewFile` in force exists but is not a review list.
 */
export function livePatientMatcher(live: LiveMapping, replica: MatcherReplica): PatientMatcher {
  const matcher = patientMatcherFor(live.current.patientMatching, replica);
  live.onReload((next) => matcher.prepareReconfigure(next.patientMatching));
  return matcher;
}
