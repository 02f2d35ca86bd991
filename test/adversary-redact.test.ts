/**
 * Adversarial review of nested resources (src/mapping/redact.ts, src/mapping/load.ts):
 * - a peer's `withhold` rules reach nested resources: an Observation whose `contained[]` holds a
 *   Condition the rules withhold (the docs' own example: intimate partner abuse stays at A), or a
 *   stored Bundle with such an entry, is withheld from that peer, now and in the history check
 *   (`Mapping.nestedInHistory`); harmless nesting still goes;
 * - a stored collection
 * Bundle whose entries contain resources of every R4 type (about 6 MB, under the node's 16 MiB
 * body limit) makes redaction note ~65 000 distinct nested paths; noting them must stay linear
 * (the walk runs on every projection write of the resource, on the event loop).
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { isMainThread, parentPort } from 'node:worker_threads';
import { runInWorker } from './fixtures/in-worker.ts';
import { getResourceTypes } from '@medplum/core';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compileRedactRule, redactResource } from '../src/mapping/redact.ts';
import { loadMappingOrThrow } from '../src/mapping/index.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';

interface Outcome {
  count: number;
  unique: number;
  first: string | undefined;
  leaks: boolean;
  narratives: boolean;
  types: number;
}

/** The redaction itself (run in a worker thread: see {@link inWorker}). */
function job(): Outcome {
  const rule = compileRedactRule({ path: 'Patient.telecom', action: 'remove' }, 'routes.r.redact[0]'); // loads the definitions
  const types = getResourceTypes();
  const div = (s: string) => ({ status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml">${s}</div>` });
  const holder = (t: string, i: number): FhirJsonObject => ({ resourceType: t, id: `h${i}`, text: div('x'), contained: types.map((u, j) => ({ resourceType: u, id: `c${j}`, text: div('y') })) });
  const entry: FhirJsonObject[] = types.map((t, i) => ({ resource: holder(t, i) }));
  // the same holders once more below a Parameters: another ~21 000 distinct paths
  entry.push({ resource: { resourceType: 'Parameters', id: 'p', parameter: types.map((t, i) => ({ name: `p${i}`, resource: holder(t, i) })) } });
  // and below a nested Bundle: ~21 000 more
  entry.push({ resource: { resourceType: 'Bundle', id: 'inner', type: 'collection', entry: types.map((t, i) => ({ resource: holder(t, i) })) } });
  entry.push({ resource: { resourceType: 'Patient', id: 'pat', telecom: [{ system: 'phone', value: '555-0100' }] } });
  const { resource, redacted } = redactResource({ resourceType: 'Bundle', id: 'b', type: 'collection', entry }, [rule]);
  const text = JSON.stringify(resource);
  return { count: redacted.length, unique: new Set(redacted).size, first: redacted[0], leaks: text.includes('555-0100'), narratives: text.includes('"div"'), types: types.length };
}

const inWorker = (ms: number): Promise<Outcome> => runInWorker(new URL(import.meta.url), ms, 'redaction');

if (!isMainThread) parentPort!.postMessage(job());

if (isMainThread) describe('redactResource on a Bundle nesting every type in every type', () => {
  // Quadratic noting (a list searched per note) takes ~40 s here; linear noting ~5 s with the
  // worker loading the definitions. The bound cuts a hang; it is not a speed assertion.
  test('~65 000 distinct nested paths: every narrative noted once, the Patient redacted', async () => {
    const r = await inWorker(20_000);
    assert.equal(r.unique, r.count, 'no duplicates');
    assert.equal(r.first, 'Bundle.entry.resource.ofType(Patient).telecom');
    // the telecom, then on each of the three paths one narrative per holder and per (holder type, contained type) pair
    assert.equal(r.count, 1 + 3 * r.types * (r.types + 1));
    assert.equal(r.leaks, false, 'telecom removed');
    assert.equal(r.narratives, false, 'every narrative removed');
  });
});

const SNOMED = 'http://snomed.info/sct';
const withheldCondition = { resourceType: 'Condition', id: 'ipa', code: { coding: [{ system: SNOMED, code: '706893006' }] }, subject: { reference: 'Patient/p1' } };
const otherCondition = { resourceType: 'Condition', id: 'flu', code: { coding: [{ system: SNOMED, code: '6142004' }] }, subject: { reference: 'Patient/p1' } };
const observation = (contained: unknown[]) => ({ resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'note' }, subject: { reference: 'Patient/p1' }, ...(contained.length > 0 ? { contained } : {}) });

if (isMainThread) describe('withhold rules reach nested resources (the mapping file of docs/mappings.md)', () => {
  let dir: string;
  let mapping: ReturnType<typeof loadMappingOrThrow>;
  const B = 'hospital-b';
  const R = 'research-r';
  // a real mapping file: B withholds a Condition by code (docs/mappings.md's example), R has only redaction rules
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'tidegate-adv-withhold-'));
    const file = join(dir, 'mapping.json');
    writeFileSync(
      file,
      JSON.stringify({
        routes: {
          [B]: { withhold: [{ resourceType: 'Condition', where: `code.coding.where(system = '${SNOMED}' and (code = '706893006' or code = '361055000')).exists()` }] },
          [R]: { redact: [{ path: 'Patient.telecom' }] },
        },
      }),
    );
    mapping = loadMappingOrThrow(file);
  });

  test('the Condition itself, contained in an Observation, or an entry of a stored Bundle: withheld from B', () => {
    assert.equal(mapping.explainRoute(B, withheldCondition).allowed, false);
    const contained = mapping.explainRoute(B, observation([withheldCondition]));
    assert.equal(contained.allowed, false, contained.reason);
    assert.match(contained.reason, /withhold rules/);
    assert.match(contained.reason, /Observation\.contained\.ofType\(Condition\)/);
    assert.ok(!contained.reason.includes('706893006'), 'no values in the reason');
    const bundle = mapping.explainRoute(B, { resourceType: 'Bundle', id: 'b1', type: 'collection', entry: [{ resource: observation([]) }, { resource: withheldCondition }] });
    assert.equal(bundle.allowed, false, bundle.reason);
    assert.match(bundle.reason, /Bundle\.entry\.resource\.ofType\(Condition\)/);
    // deeper: a Bundle entry whose Observation contains it
    assert.equal(mapping.explainRoute(B, { resourceType: 'Bundle', id: 'b2', type: 'collection', entry: [{ resource: observation([withheldCondition]) }] }).allowed, false);
  });

  test('harmless nesting still goes to B; R is unchanged (no withhold rules, nothing it names nested)', () => {
    assert.equal(mapping.explainRoute(B, observation([otherCondition])).allowed, true);
    assert.equal(mapping.explainRoute(B, observation([])).allowed, true);
    assert.equal(mapping.explainRoute(R, observation([withheldCondition])).allowed, true, 'R withholds no Condition');
    assert.equal(mapping.explainRoute(R, observation([{ resourceType: 'Patient', id: 'p1' }])).allowed, false, 'R: a nested Patient (redaction) is withheld as before');
  });

  test('an earlier version that contained the withheld Condition keeps the resource from B (history)', () => {
    const earlier = [JSON.stringify(observation([withheldCondition]))];
    assert.deepEqual(mapping.nestedInHistory('Observation', earlier), [B]);
    assert.deepEqual(mapping.nestedInHistory('Observation', [JSON.stringify(observation([otherCondition])), JSON.stringify(observation([]))]), []);
  });

  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
});
