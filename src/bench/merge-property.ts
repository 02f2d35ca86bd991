/**
 * Bench section `merge-property`: the merge property test (test/merge-property.test.ts: random
 * concurrent edit schedules on 3 replicas, random delivery orders, duplicates and batching; every
 * replica byte-identical, every write in the resource or a conflict record) at the larger sizes CI
 * does not run. CI runs it at 100 seeded runs; here it runs as many as fit the budget with a fresh
 * seed, so each bench run explores new schedules. A failure is reported with its seed (fast-check
 * prints the shrunk counterexample in the test output) and fails the section.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { BenchContext, BenchSection, BenchSectionResult } from './section.ts';

const TEST_FILE = fileURLToPath(new URL('../../test/merge-property.test.ts', import.meta.url));
/** Measured throughput of the property on this machine class, runs per second (for sizing only). */
const RUNS_PER_SECOND_ESTIMATE = 100;

function runTest(runs: number, seed: number, timeoutMs: number): Promise<{ ok: boolean; ms: number; tail: string }> {
  const started = performance.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--test', '--test-concurrency=1', `--test-timeout=${timeoutMs}`, TEST_FILE], {
      env: { ...process.env, FC_RUNS: String(runs), FC_SEED: String(seed) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (b: Buffer) => void (out = (out + b.toString('utf8')).slice(-20_000)));
    child.stderr.on('data', (b: Buffer) => void (out = (out + b.toString('utf8')).slice(-20_000)));
    const timer = setTimeout(() => child.kill('SIGTERM'), timeoutMs + 30_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ ok: code === 0, ms: performance.now() - started, tail: out.split('\n').slice(-25).join('\n') });
    });
  });
}

/** See module doc. Weight is small: the runs are sized to the budget. */
export const mergePropertySection: BenchSection = {
  id: 'merge-property',
  weight: 0.1,
  async run(ctx: BenchContext): Promise<BenchSectionResult> {
    const skipped: Record<string, string> = {};
    if (!existsSync(TEST_FILE)) {
      skipped['merge property'] = `${TEST_FILE} not present (the test folder is not shipped in the image)`;
      return { id: 'merge-property', title: 'Merge property test at bench sizes', markdown: 'Skipped: the test folder is absent.', text: 'merge-property: skipped', figures: {}, skipped };
    }
    const runs = ctx.quick ? 50 : Math.max(200, Math.min(20_000, Math.floor((ctx.budgetMs / 1000) * 0.6 * RUNS_PER_SECOND_ESTIMATE)));
    const seed = Date.now() % 2_147_483_647;
    ctx.log.info({ runs, seed }, 'merge property at bench size');
    const r = await runTest(runs, seed, Math.max(60_000, ctx.budgetMs));
    if (!r.ok) throw new Error(`merge property failed (FC_SEED=${seed} FC_RUNS=${runs} node --test test/merge-property.test.ts):\n${r.tail}`);
    const markdown = `The CI-sized property test (\`test/merge-property.test.ts\`, 100 runs, fixed seed) run at bench size with a fresh seed: random concurrent edit schedules on 3 replicas with random delivery orders, duplicates and batching; every replica must end byte-identical in canonical form (bodies, versionIds, conflict records) and every clinician's write must be in the resource or in a conflict record.

| runs | seed | result | wall time |
|---:|---:|---|---:|
| ${runs} | ${seed} | passed | ${(r.ms / 1000).toFixed(1)} s |

Reproduce with \`FC_SEED=${seed} FC_RUNS=${runs} node --test test/merge-property.test.ts\`.`;
    return {
      id: 'merge-property',
      title: 'Merge property test at bench sizes',
      markdown,
      text: `merge property: ${runs} runs, seed ${seed}, passed in ${(r.ms / 1000).toFixed(1)} s`,
      figures: { runs, seed, passed: true, wallMs: Math.round(r.ms) },
      skipped,
    };
  },
};
