/**
 * Smoke run of the `mapping` bench section (src/bench/mapping.ts) in quick mode, on the Synthea
 * sample when present and on the example data: every figure is finite, both variants ran for every
 * resource, translation really did work (the localized lab codes and MRNs were translated), and
 * redaction, the projection write of the redacted types and the Consent decision were measured. No
 * timing targets are asserted (the machine is shared).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { mappingSection } from '../src/bench/mapping.ts';
import type { MappingBenchFigures } from '../src/bench/mapping.ts';
import type { Summary } from '../src/bench/stats.ts';

const DATA_DIR = fileURLToPath(new URL('../../shared/data/synthea-10', import.meta.url));
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

function assertFinite(s: Summary, what: string): void {
  for (const k of ['p50', 'p99', 'mean', 'min', 'max'] as const) assert.ok(Number.isFinite(s[k]) && s[k] >= 0, `${what}.${k} = ${s[k]}`);
  assert.ok(s.n > 0, `${what}: no samples`);
  assert.ok(s.p99 >= s.p50, `${what}: p99 < p50`);
}

async function run(dataPresent: boolean): Promise<{ f: MappingBenchFigures; markdown: string; skipped: Record<string, string> }> {
  const r = await mappingSection.run({ dataDir: DATA_DIR, dataPresent, redisUrl: REDIS_URL, budgetMs: 10_000, quick: true, log: pino({ level: 'silent' }) });
  assert.equal(r.id, 'mapping');
  return { f: r.figures as unknown as MappingBenchFigures, markdown: r.markdown, skipped: r.skipped };
}

function assertSane(f: MappingBenchFigures): void {
  assert.ok(f.resources > 0 && f.rounds >= 1);
  assert.ok(f.translated > 0, 'inbound translation changed some resources (local lab codes, A MRNs)');
  assert.equal(f.none.n, f.resources * f.rounds, 'one "none" sample per resource and round');
  assert.equal(f.mapped.n, f.resources * f.rounds, 'one "mapped" sample per resource and round');
  assertFinite(f.none, 'none');
  assertFinite(f.mapped, 'mapped');
  for (const [k, s] of Object.entries(f.steps)) assertFinite(s, k);
  for (const k of ['parse', 'translateInbound', 'routingLabels', 'consent', 'projectionWrite', 'outboundAtB']) assert.ok(f.steps[k], `step ${k} measured`);
  assert.deepEqual(f.projectedTypes, ['Condition', 'Observation', 'Patient'], 'the research rules name these types');
  const projected = f.byType.filter((t) => f.projectedTypes.includes(t.type)).reduce((n, t) => n + t.resources, 0);
  assert.equal(f.steps['projectionWrite']!.n, projected * f.rounds, 'one projection write per resource of a redacted type and round');
  assertFinite(f.mappedConsent, 'mapped + consent');
  assert.ok(f.consents > 0, 'one Consent per Patient');
  assert.equal(f.steps['redaction'] !== undefined, f.redaction);
  assert.ok(Number.isFinite(f.overheadP50Ms) && Number.isFinite(f.overheadP99Ms));
  assert.equal(f.targetMet, f.overheadP50Ms < f.targetMs);
  assert.deepEqual(f.peers, ['hospital-b', 'research']);
  assert.equal(f.byType.reduce((n, t) => n + t.resources, 0), f.resources);
}

describe('bench section mapping (quick)', () => {
  it('runs on the example data (Synthea absent) with finite figures', async () => {
    const { f, markdown, skipped } = await run(false);
    assert.equal(f.synthea, false);
    assertSane(f);
    assert.ok(f.byType.some((t) => t.type === 'Observation') && f.byType.some((t) => t.type === 'Patient'));
    assert.match(markdown, /\| mapped: parse \+ inbound translation .* \| \*\*-?[0-9.]+ (µs|ms)\*\* \(/);
    assert.match(markdown, /Target: mapping overhead \(mapped − none, p50\) under 200\.0 µs per resource: \*\*(met|not met)\*\*/);
    assert.equal(f.redaction, true, `redaction measured (${skipped['redaction'] ?? ''})`);
  });

  it('runs on the Synthea sample with finite figures', { skip: existsSync(DATA_DIR) ? false : `Synthea sample not found at ${DATA_DIR}: skipped` }, async () => {
    const { f } = await run(true);
    assert.equal(f.synthea, true);
    assertSane(f);
  });
});
