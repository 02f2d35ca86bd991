/**
 * Issue 3's session target: 100 clinicians editing one patient at once, across 5 hospitals
 * (replicas), with no gossip until everyone is done, then every update delivered in a random order
 * with duplicates. Every replica ends with the same bytes, and no edit is lost: each clinician's
 * added telecom is in the resource, and each of five concurrent same-field writes to `birthDate`
 * (one per hospital) is either the value shown or in a conflict record.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Replica } from '../src/merge/replica.ts';
import { MemoryStore } from '../src/store/store.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { parseFhirJson } from '../src/fhir/json.ts';

const KEY = 'Patient/session-1';

test('100 clinicians on one patient across 5 replicas: identical bytes, 0 lost edits', () => {
  const policy = loadMergePolicy();
  const replicas = Array.from({ length: 5 }, (_, i) => new Replica({ nodeId: `hospital-${i + 1}`, store: new MemoryStore(), policy }));
  const base: FhirJsonObject = { resourceType: 'Patient', id: 'session-1', gender: 'female', birthDate: '1970-01-01', name: [{ family: 'Session', given: ['Ann'] }] };
  const created = replicas[0]!.write(KEY, base, { author: 'Practitioner/admin' });
  for (const r of replicas.slice(1)) r.applyRemote(KEY, created.update!);

  const updates: Uint8Array[] = [];
  const birthDates = new Set<string>();
  for (let c = 0; c < 100; c++) {
    const r = replicas[c % 5]!;
    const cur = parseFhirJson(r.current(KEY)!.body!) as FhirJsonObject;
    const telecom = Array.isArray(cur.telecom) ? [...cur.telecom] : [];
    telecom.push({ system: 'phone', value: `+44 20 7946 ${String(c).padStart(4, '0')}`, use: 'work' });
    const body: FhirJsonObject = { ...cur, telecom };
    delete body.meta;
    if (c < 5) {
      // one per hospital, concurrent (no replica has seen another's): a same-field conflict
      body.birthDate = `1970-01-${String(2 + c).padStart(2, '0')}`;
      birthDates.add(body.birthDate);
    }
    const res = r.write(KEY, body, { author: `Practitioner/clinician-${c}` });
    if (res.update) updates.push(res.update);
  }
  assert.equal(updates.length, 100, 'every edit produced an update');

  // deliver everything everywhere, in a seeded random order, with duplicates
  let seed = 42;
  const rand = () => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31);
  for (const r of replicas) {
    const order = [...updates, ...updates.slice(0, 20)].map((u) => [rand(), u] as const).sort((a, b) => a[0] - b[0]);
    for (const [, u] of order) r.applyRemote(KEY, u);
  }

  const bodies = replicas.map((r) => r.current(KEY)!.body!);
  for (const b of bodies) assert.equal(b, bodies[0], 'identical bytes on every replica');
  const versionIds = new Set(replicas.map((r) => r.current(KEY)!.versionId));
  assert.equal(versionIds.size, 1);

  const final = parseFhirJson(bodies[0]!) as FhirJsonObject;
  const phones = new Set((final.telecom as Array<{ value: string }>).map((t) => t.value));
  for (let c = 0; c < 100; c++) assert.ok(phones.has(`+44 20 7946 ${String(c).padStart(4, '0')}`), `clinician ${c}'s telecom is in the resource`);

  // same-field writes: each value is shown or kept in a conflict record on every replica
  for (const r of replicas) {
    const shown = String((parseFhirJson(r.current(KEY)!.body!) as FhirJsonObject).birthDate);
    const kept = new Set<string>([shown]);
    for (const c of r.conflicts(KEY)) if (c.path === 'birthDate') for (const side of [c.winner, c.loser]) if (side.v) kept.add(JSON.parse(side.v) as string);
    for (const d of birthDates) assert.ok(kept.has(d), `birthDate ${d} is shown or in a conflict record`);
  }
});
