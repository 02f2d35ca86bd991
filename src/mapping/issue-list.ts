/**
 * The shape shared by the problems found in a file the mapping configuration refers to (a
 * ConceptMap, a crosswalk table): each says where (a JSON Pointer or a line, per file kind), what
 * is wrong and how to fix it, and all of them are thrown together in one coded error. The loader
 * and `config check` (src/mapping/load.ts, src/mapping/check.ts) turn each into a `ConfigIssue`
 * with the file, line and column.
 */

/** One problem: what is wrong and how to fix it; the subtype adds where. */
export interface HintedIssue {
  message: string;
  /** How to fix it. */
  hint: string;
}

/**
 * Every problem of one file, thrown at once. The message is
 * `invalid <what>: <where>: <message>; <where>: <message>…` (no hints: they are in `issues`).
 */
export abstract class IssueListError<I extends HintedIssue> extends Error {
  /** Stable error code, e.g. `ERR_CONCEPTMAP_INVALID`. */
  abstract readonly code: string;
  readonly issues: readonly I[];
  /**
   * @param what - what was invalid, as it reads in the message: `ConceptMap`, `crosswalk`.
   * @param issues - at least one issue.
   * @param where - where one issue is, as it reads in the message: `/group/0`, `line 3`.
   */
  constructor(what: string, issues: readonly I[], where: (issue: I) => string) {
    super(`invalid ${what}: ${issues.map((i) => `${where(i)}: ${i.message}`).join('; ')}`);
    this.issues = issues;
  }
}
