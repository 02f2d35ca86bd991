/**
 * The bench sections `npm run bench` runs after its core figures, in this order. Each entry names
 * the module and its exported {@link BenchSection}; a module that is not there is reported as
 * skipped rather than failing the run.
 */
import type { BenchContext, BenchSection, BenchSectionResult } from './section.ts';

/** Module (relative to this file) and export name of every section. */
export const SECTION_MODULES: ReadonlyArray<{ id: string; module: string; name: string }> = [
  { id: 'merge-automerge', module: './merge-automerge.ts', name: 'mergeCompareSection' },
  { id: 'merge-property', module: './merge-property.ts', name: 'mergePropertySection' },
  { id: 'envelope-throughput', module: './envelope.ts', name: 'envelopeThroughputSection' },
  { id: 'store-sealed', module: './store-sealed.ts', name: 'storeSealingSection' },
  { id: 'http', module: './http.ts', name: 'httpSection' },
  { id: 'tide', module: './tide-scale.ts', name: 'tideSection' },
  { id: 'detection', module: './detection.ts', name: 'detectionSection' },
  { id: 'mapping', module: './mapping.ts', name: 'mappingSection' },
];

/**
 * Loads the sections, optionally only those whose id is in `only`.
 * @param only - section ids to keep; all when empty.
 * @returns The loaded sections and, for each one that could not be loaded, why.
 */
export async function loadSections(only: readonly string[] = []): Promise<{ sections: BenchSection[]; missing: Record<string, string> }> {
  const sections: BenchSection[] = [];
  const missing: Record<string, string> = {};
  for (const m of SECTION_MODULES) {
    if (only.length > 0 && !only.includes(m.id)) continue;
    try {
      const mod = (await import(new URL(m.module, import.meta.url).href)) as Record<string, unknown>;
      const s = mod[m.name] as BenchSection | undefined;
      if (!s || typeof s.run !== 'function') missing[m.id] = `${m.module} does not export ${m.name}`;
      else sections.push(s);
    } catch (err) {
      missing[m.id] = `could not load ${m.module}: ${(err as Error).message}`;
    }
  }
  return { sections, missing };
}

/**
 * Runs sections one after the other, each with its share of `totalBudgetMs`. A section that throws
 * is recorded as failed in `failed` and the others still run.
 * @param sections - the sections to run.
 * @param base - the context, without the per-section budget.
 * @param totalBudgetMs - wall time for all sections together, ms.
 * @returns Results of the sections that ran, and section id → error message for those that threw.
 */
export async function runSections(
  sections: readonly BenchSection[],
  base: Omit<BenchContext, 'budgetMs'>,
  totalBudgetMs: number,
): Promise<{ results: BenchSectionResult[]; failed: Record<string, string> }> {
  const weights = sections.reduce((a, s) => a + Math.max(0.01, s.weight), 0);
  const results: BenchSectionResult[] = [];
  const failed: Record<string, string> = {};
  for (const s of sections) {
    const budgetMs = Math.round((totalBudgetMs * Math.max(0.01, s.weight)) / weights);
    base.log.info({ section: s.id, budgetMs }, 'bench section');
    process.stderr.write(`section ${s.id} (budget ${(budgetMs / 1000).toFixed(0)} s)…\n`);
    try {
      results.push(await s.run({ ...base, budgetMs }));
    } catch (err) {
      failed[s.id] = (err as Error).stack ?? String(err);
    }
  }
  return { results, failed };
}
