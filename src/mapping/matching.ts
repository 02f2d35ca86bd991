/**
 * Patient matching (docs/mappings.md "Identifiers and patient matching"): decides whether a Patient
 * read from this node's hospital is the same person as a Patient the node already holds (its own
 * hospital's or one gossiped from a peer).
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
 * What `same` does in this slice: the arriving Patient gets a `Patient.link` of type `seealso` to
 * each sure match (https://hl7.org/fhir/R4/patient-definitions.html#Patient.link); resources are
 * never merged nor replaced (`replaced-by`/`replaces` are left to a person).
 *
 * Nothing here logs or returns names, birth dates or identifier values: results carry resource ids,
 * the rule and the score only.
 */
import { randomUUID, createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { isJsonObject, parseFhirJson } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import type { Replica } from '../merge/replica.ts';
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
 * Decides whether `candidate` is the same person as any of `existing` (rules in the module doc).
 * @param candidate - the Patient read from the hospital (FHIR JSON, after identifier translation).
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
    const o = demographics(other);
    let conflict = false;
    let same = false;
    for (const s of rules.sharedSystems) {
      const a = agree(c, o, s);
      if (a === true) same = true;
      else if (a === false) conflict = true;
    }
    if (same) {
      matches.push({ decision: 'same', otherId, rule: 'shared-identifier', score: 1 });
      continue;
    }
    if (conflict || c.key === undefined || c.key !== o.key) continue;
    if (rules.deterministic?.identifierSystems.some((s) => agree(c, o, s) === true)) {
      matches.push({ decision: 'same', otherId, rule: 'deterministic', score: 1 });
      continue;
    }
    if (rules.possible !== false) matches.push({ decision: 'possible', otherId, rule: 'demographics', score: 0.8 });
  }
  matches.sort((a, b) => b.score - a.score || (a.otherId < b.otherId ? -1 : a.otherId > b.otherId ? 1 : 0));
  const decision = matches.some((m) => m.decision === 'same') ? 'same' : matches.length > 0 ? 'possible' : 'none';
  return { decision, matches };
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
  /** The Patient read from the hospital, `Patient/x`. */
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
   * @param candidateId - id of the Patient read from the hospital.
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

/**
 * Matching applied to Patients read from the hospital: sure matches become `seealso` links on the
 * arriving Patient, possible ones go to the review list.
 */
export class PatientMatcher {
  #rules: MatchRules | undefined;
  /** The review list: one object for the life of the matcher (a reload may move it to another file). */
  readonly review: MatchReviewList;
  readonly #existing: () => Iterable<FhirJsonObject>;

  /**
   * @param rules - see {@link MatchRules}; undefined: matching off ({@link apply} changes nothing).
   * @param existing - the node's current Patients (called once per arriving Patient).
   * @param review - the review list; default one in memory.
   */
  constructor(rules: MatchRules | undefined, existing: () => Iterable<FhirJsonObject>, review: MatchReviewList = new MatchReviewList()) {
    this.#rules = rules;
    this.#existing = existing;
    this.review = review;
  }

  /** The rules in force; undefined when matching is off. */
  get rules(): MatchRules | undefined {
    return this.#rules;
  }

  /**
   * Prepares new rules from a reloaded mapping's `patientMatching` (absent: matching off; the
   * review list keeps its entries). Nothing changes until the returned function runs.
   * @param cfg - the parsed `patientMatching` (`reviewFile` absolute), or undefined.
   * @returns The commit function (throws nothing).
   * @throws Error when a new `reviewFile` exists but is not a review list (see {@link MatchReviewList.prepareMove}).
   */
  prepareReconfigure(cfg: PatientMatchingConfig | undefined): () => void {
    const move = cfg === undefined ? () => {} : this.review.prepareMove(cfg.reviewFile);
    return () => {
      this.#rules = cfg === undefined ? undefined : rulesOf(cfg);
      move();
    };
  }

  /**
   * Matches one Patient read from the hospital. Other resource types are returned unchanged.
   * @param patient - FHIR JSON with `id` (node id); not modified.
   * @returns The Patient with `seealso` links to sure matches, and the outcome.
   * @throws the fs error when the review file cannot be written.
   */
  apply(patient: FhirJsonObject): { resource: FhirJsonObject; outcome: MatchOutcome } {
    const rules = this.#rules;
    if (rules === undefined || patient['resourceType'] !== 'Patient' || typeof patient['id'] !== 'string') return { resource: patient, outcome: { decision: 'none', matches: [] } };
    const outcome = matchPatient(patient, this.#existing(), rules);
    for (const m of outcome.matches) if (m.decision === 'possible') this.review.add(patient['id'], m);
    const sure = outcome.matches.filter((m) => m.decision === 'same').map((m) => m.otherId);
    return { resource: linkPatient(patient, sure), outcome };
  }
}

/**
 * A {@link PatientMatcher} over a node's replica, from the mapping file's `patientMatching`
 * (`Mapping.patientMatching`; `reviewFile` absolute). Each arriving Patient is compared with every
 * live `Patient/…` of the replica (a scan: O(Patients held) per new Patient).
 * @param cfg - the parsed `patientMatching`, `sharedSystems` filled in by the loader.
 * @param replica - the node's replica (`resourceKeys`, `current`).
 * @returns The matcher; its `review` is the list `GET /admin/matches` serves.
 * @throws Error when `reviewFile` exists but is not a review list.
 */
export function patientMatcherFor(cfg: PatientMatchingConfig | undefined, replica: Pick<Replica, 'resourceKeys' | 'current'>): PatientMatcher {
  const existing = function* (): Generator<FhirJsonObject> {
    for (const key of replica.resourceKeys()) {
      if (!key.startsWith('Patient/')) continue;
      const v = replica.current(key);
      if (v === undefined || v.deleted || !v.body) continue;
      const body = parseFhirJson(v.body);
      if (isJsonObject(body)) yield body;
    }
  };
  return new PatientMatcher(cfg === undefined ? undefined : rulesOf(cfg), existing, new MatchReviewList(cfg?.reviewFile));
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
export function livePatientMatcher(live: LiveMapping, replica: Pick<Replica, 'resourceKeys' | 'current'>): PatientMatcher {
  const matcher = patientMatcherFor(live.current.patientMatching, replica);
  live.onReload((next) => matcher.prepareReconfigure(next.patientMatching));
  return matcher;
}
