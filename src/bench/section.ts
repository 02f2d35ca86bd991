/**
 * A bench section: one self-contained group of figures that `npm run bench` runs after its core
 * figures (merge, envelope, replication, import) and appends to docs/BENCHMARKS.md.
 *
 * A section owns its setup and teardown (its own network, hospital servers, Redis prefix), measures
 * side by side within one run (the machine is shared and noisy, so it reports medians and ratios),
 * and never throws for a figure it cannot take: it reports it in `skipped` instead.
 */
import type { Logger } from 'pino';

/** What the bench driver hands every section. */
export interface BenchContext {
  /** Synthea Bulk Data export directory (ndjson), e.g. `../shared/data/synthea-10`. */
  dataDir: string;
  /** True when `dataDir` exists; sections fall back to small fixtures when it is absent. */
  dataPresent: boolean;
  /** Redis URL the section may use (under its own key prefix), e.g. `redis://127.0.0.1:6379`. */
  redisUrl: string;
  /** Wall-time budget for this section, ms; a section scales its sizes down to stay inside it. */
  budgetMs: number;
  /** Quick mode (`--quick`): smallest sizes, for smoke runs in tests. */
  quick: boolean;
  log: Logger;
}

/** What a section returns. */
export interface BenchSectionResult {
  /** Stable id, also the JSON key under `sections` in `--json` output, e.g. `http`. */
  id: string;
  /** Markdown heading text, e.g. `FHIR REST overhead: tidegate vs direct Medplum (autocannon)`. */
  title: string;
  /** Markdown body (tables, method, targets met or not), without the heading. */
  markdown: string;
  /** Plain-text lines for the terminal table. */
  text: string;
  /** Machine-readable figures (ms, bytes, ratios), printed by `--json`. */
  figures: Record<string, unknown>;
  /** Figure name → why it was skipped. */
  skipped: Record<string, string>;
}

/** A bench section: runs its measurements and returns them. Must clean up after itself. */
export interface BenchSection {
  id: string;
  /** Share of the whole run's budget this section wants, 0..1 (the driver normalises). */
  weight: number;
  run(ctx: BenchContext): Promise<BenchSectionResult>;
}
