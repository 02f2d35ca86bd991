/**
 * The mapping bench's before/after of a new projection version (src/bench/mapping.ts, quick mode on
 * the example data) measures what it says: every "only a removed element changed" version is one
 * in which `Replica.write` found nothing to change and the render digest skipped it, the four new
 * steps have one sample per projected resource and round, and the Markdown shows the before/after
 * table. No timing is asserted (the machine is shared).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { mappingSection } from '../src/bench/mapping.ts';
import type { MappingBenchFigures } from '../src/bench/mapping.ts';

const DATA_DIR = fileURLToPath(new URL('../../shared/data/synthea-10', import.meta.url));

describe('mapping bench: projection versions before and after the digest skip', () => {
  it('a removed-element change is a no-op write and a digest skip, every time', async () => {
    const r = await mappingSection.run({ dataDir: DATA_DIR, dataPresent: false, redisUrl: 'redis://127.0.0.1:6379', budgetMs: 10_000, quick: true, log: pino({ level: 'silent' }) });
    const f = r.figures as unknown as MappingBenchFigures;
    const c = f.redactedOnlyChanges;
    assert.ok(c.versions > 0, 'projected resources were versioned');
    assert.equal(c.writeNoUpdate, c.versions, 'Replica.write found nothing to change: the redacted render was the same');
    assert.equal(c.digestSkipped, c.versions, 'the digest recognised every one');
    for (const k of ['projectionRedactedChangeRewrite', 'projectionRedactedChangeSkip', 'projectionKeptChangeWrite', 'projectionKeptChangeDigestWrite']) {
      assert.equal(f.steps[k]?.n, c.versions, `${k}: one sample per projected resource and round`);
    }
    assert.equal(f.steps['projectionWrite']?.n, c.versions);
    assert.match(r.markdown, /\| only a removed element changed \(\d+: `Replica\.write` found nothing to change in \d+, the digest skipped \d+\) \| [0-9.]+ (µs|ms) \| [0-9.]+ (µs|ms) \| [0-9.]+× \|/);
    assert.match(r.markdown, /\| a kept element changed \| [0-9.]+ (µs|ms) \| [0-9.]+ (µs|ms) \| [0-9.]+× \|/);
  });
});
