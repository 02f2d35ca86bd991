/**
 * JSON ↔ Yjs round trip over a real data set: every resource of the Synthea bulk export in
 * `../shared/data/synthea-10` (relative to the repository root) is written through a Replica,
 * rendered, and compared byte for byte (canonical form, minus meta.versionId/lastUpdated) with the
 * input. The update is then applied to a second replica, which must render the same bytes and the
 * same versionId. Skipped when the folder is absent. Override the folder with TIDEGATE_SYNTHEA_DIR.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { canonicalStringify, isJsonObject, parseFhirJson } from '../src/fhir/json.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { Replica } from '../src/merge/replica.ts';
import { HybridLogicalClock } from '../src/merge/hlc.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { MemoryStore } from '../src/store/store.ts';
import { SYNTHEA_DIR } from './fixtures/synthea.ts';

const DATA_DIR = process.env.TIDEGATE_SYNTHEA_DIR ?? SYNTHEA_DIR;
const EXPECTED_TOTAL = 7160;

/** Canonical text without meta.versionId / meta.lastUpdated (and without meta if that empties it). */
function comparable(resource: FhirJsonObject): string {
  const copy = parseFhirJson(canonicalStringify(resource));
  assert.ok(isJsonObject(copy));
  if (isJsonObject(copy.meta)) {
    delete copy.meta.versionId;
    delete copy.meta.lastUpdated;
    if (Object.keys(copy.meta).length === 0) delete copy.meta;
  }
  return canonicalStringify(copy);
}

/** First index where two strings differ, with some context, for readable failures. */
function firstDiff(a: string, b: string): string {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return `at ${i}: expected …${a.slice(Math.max(0, i - 60), i + 60)}… got …${b.slice(Math.max(0, i - 60), i + 60)}…`;
}

const files = existsSync(DATA_DIR)
  ? readdirSync(DATA_DIR)
      .filter((f) => /^[A-Z][A-Za-z]+\.\d{3}\.ndjson$/.test(f))
      .sort()
  : [];

describe('merge round trip over synthea-10', () => {
  if (files.length === 0) {
    it('round trip', (t) => {
      t.skip(`synthea-10 data folder absent (${DATA_DIR}); nothing to round-trip`);
    });
    return;
  }

  let total = 0;
  const t0 = performance.now();

  for (const file of files) {
    it(`${file}: write → render → apply elsewhere is the identity`, () => {
      const policy = loadMergePolicy();
      let wall = 1_700_000_000_000;
      const a = new Replica({ nodeId: 'node-a', store: new MemoryStore(), policy, clock: new HybridLogicalClock(() => wall++) });
      const b = new Replica({ nodeId: 'node-b', store: new MemoryStore(), policy, clock: new HybridLogicalClock(() => wall) });
      const failures: string[] = [];
      let count = 0;
      let mismatches = 0;
      for (const line of readFileSync(`${DATA_DIR}/${file}`, 'utf8').split('\n')) {
        if (line.trim() === '') continue;
        const input = parseFhirJson(line);
        assert.ok(isJsonObject(input), `${file}: a line is not a JSON object`);
        const type = input.resourceType;
        const id = input.id;
        assert.ok(typeof type === 'string' && typeof id === 'string', `${file}: resource without resourceType/id`);
        const key = `${type}/${id}`;
        count++;

        const res = a.write(key, input);
        assert.equal(res.created, true, `${key}: first write must be a create`);
        assert.ok(res.update && res.update.length > 0, `${key}: first write must produce an update`);
        assert.ok(res.version.body !== null, `${key}: rendered as deleted`);

        const rendered = parseFhirJson(res.version.body);
        assert.ok(isJsonObject(rendered));
        const meta = rendered.meta;
        assert.ok(isJsonObject(meta) && meta.versionId === res.version.versionId && meta.lastUpdated === res.version.lastUpdated, `${key}: meta not set`);

        const want = comparable(input);
        const got = comparable(rendered);
        if (got !== want) {
          mismatches++;
          if (failures.length < 5) failures.push(`${key} ${firstDiff(want, got)}`);
        }

        // A second node that receives the update renders the same bytes and versionId.
        const vb = b.applyRemote(key, res.update);
        assert.ok(vb, `${key}: remote apply produced no version`);
        assert.equal(vb.body, res.version.body, `${key}: second replica renders different bytes`);
        assert.equal(vb.versionId, res.version.versionId, `${key}: second replica has a different versionId`);
        if (count <= 50) assert.deepEqual(b.conflicts(key), [], `${key}: conflicts after a single write`);

        // Re-writing the same body is a no-op (no update, same version).
        const again = a.write(key, parseFhirJson(line) as FhirJsonObject);
        assert.equal(again.update, undefined, `${key}: rewriting the same body produced an update`);
        assert.equal(again.version.versionId, res.version.versionId);
      }
      total += count;
      assert.ok(count > 0, `${file} is empty`);
      assert.equal(mismatches, 0, `${file}: ${mismatches} resource(s) did not round-trip:\n${failures.join('\n')}`);
    });
  }

  it(`covers all ${EXPECTED_TOTAL} resources`, (t) => {
    t.diagnostic(`round-tripped ${total} resources in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    if (process.env.TIDEGATE_SYNTHEA_DIR === undefined) assert.equal(total, EXPECTED_TOTAL);
    else assert.ok(total > 0);
  });
});
