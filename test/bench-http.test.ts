/**
 * Smoke run of the `http` bench section (src/bench/http.ts) in quick mode: real Medplum stand-in
 * servers over HTTP, each in a child process (src/hospital/medplum-main.ts), real tidegate nodes,
 * real Redis, autocannon on a worker thread. Asserts that every figure is sane and non-zero on both
 * sides; no timing targets (the machine is shared).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { generatedFixture, httpSection, startHospitalProcess } from '../src/bench/http.ts';
import type { HttpBenchFigures, TargetFigures } from '../src/bench/http.ts';

const DATA_DIR = fileURLToPath(new URL('../../shared/data/synthea-10', import.meta.url));
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

function assertSane(t: TargetFigures, what: string): void {
  assert.ok(t.rounds >= 1, `${what}: rounds`);
  assert.ok(t.ok > 0, `${what}: no 2xx answer`);
  assert.equal(t.non2xx, 0, `${what}: non-2xx answers`);
  assert.equal(t.errors, 0, `${what}: connection errors`);
  assert.equal(t.timeouts, 0, `${what}: timeouts`);
  assert.ok(t.requestsPerSecond > 0, `${what}: req/s`);
  assert.ok(t.p50Ms > 0 && Number.isFinite(t.p50Ms), `${what}: p50`);
  assert.ok(t.p99Ms >= t.p50Ms, `${what}: p99 < p50`);
  assert.ok(t.eventLoop.maxMs >= 0 && Number.isFinite(t.eventLoop.maxMs), `${what}: event-loop max`);
  for (const r of t.perRound) assert.ok(r.seconds > 0, `${what}: run length`);
}

describe('bench section http (quick)', () => {
  it('generatedFixture gives Patients with Encounters in their compartment', () => {
    const rs = generatedFixture(3, 2);
    const patients = rs.filter((r) => r.resourceType === 'Patient');
    const encounters = rs.filter((r) => r.resourceType === 'Encounter');
    assert.equal(patients.length, 3);
    assert.equal(encounters.length, 6);
    const ids = new Set(patients.map((p) => `Patient/${String(p.id)}`));
    for (const e of encounters) assert.ok(ids.has(String((e.subject as { reference: string }).reference)));
    assert.equal(new Set(rs.map((r) => `${String(r.resourceType)}/${String(r.id)}`)).size, rs.length, 'ids are unique');
  });

  it('runs the stand-in hospital in a child process that serves FHIR and ends with close()', async () => {
    const h = await startHospitalProcess('bench-http-test-fhir');
    try {
      assert.notEqual(h.pid, process.pid);
      assert.match(h.url, /^http:\/\/127\.0\.0\.1:\d+\/fhir$/);
      const meta = await fetch(`${h.url}/metadata`);
      assert.equal(meta.status, 200);
      assert.equal(((await meta.json()) as { implementation?: { description?: string } }).implementation?.description, 'bench-http-test-fhir');
      const put = await fetch(`${h.url}/Patient/child-1`, { method: 'PUT', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify({ resourceType: 'Patient', id: 'child-1', gender: 'female' }) });
      assert.equal(put.status, 201);
      assert.equal((await fetch(`${h.url}/Patient/child-1`)).status, 200);
    } finally {
      await h.close();
    }
    assert.throws(() => process.kill(h.pid, 0), { code: 'ESRCH' }, 'the child exited');
    await assert.rejects(fetch(`${h.url}/metadata`), 'nothing listens any more');
    await h.close(); // idempotent
  });

  it('measures read, search and write through tidegate and directly, and writes with and without peers', async () => {
    const present = existsSync(DATA_DIR);
    if (!present) process.stderr.write(`bench-http: Synthea sample not found at ${DATA_DIR}; the section uses its generated fixture\n`);
    // In quick mode the budget only sizes the load time box (30 % of it, at most 30 s, counted from
    // the section's start, so reading the sample and starting the node use it up too). With 60 s
    // (an 18 s box) a loaded 2-core machine loaded 8 of 60 resources, no Encounter, and the
    // compartment search was left out; 100 s gives the 30 s maximum. A quick run is no longer.
    const result = await httpSection.run({ dataDir: DATA_DIR, dataPresent: present, redisUrl: REDIS_URL, budgetMs: 100_000, quick: true, log: pino({ level: 'silent' }) });
    assert.equal(result.id, 'http');
    assert.deepEqual(result.skipped, {});
    const f = result.figures as unknown as HttpBenchFigures;
    assert.ok(f.data.loaded > 0 && f.data.patients > 0);
    assert.equal(f.data.rejected, 0);
    assert.deepEqual(f.comparisons.map((c) => c.id), ['read', 'search-compartment', 'search-name', 'write']);
    for (const c of f.comparisons) {
      assertSane(c.tidegate, `${c.id} tidegate`);
      assertSane(c.direct, `${c.id} direct`);
      assert.ok(c.throughputRatio !== null && c.throughputRatio > 0, `${c.id}: ratio`);
      if (c.id === 'write') assert.ok(c.drainMs !== undefined && c.drainMs >= 0);
      else {
        assert.ok(c.bareProxy, `${c.id}: bare proxy reference`);
        assertSane(c.bareProxy, `${c.id} bare proxy`);
      }
    }
    assert.equal(typeof f.targetMet, 'boolean');
    const s = f.signing;
    assert.ok(s, 'signing figures');
    assert.ok(s.peers >= 1);
    assertSane(s.noPeers, 'write 0 peers');
    assertSane(s.withPeers, 'write with peers');
    assert.ok(s.envelopesPerRound > 0, 'writes through the node with peers were sealed and sent');
    assert.ok(s.updatesPerEnvelope !== null && s.updatesPerEnvelope >= 1);
    assert.equal(typeof f.eventLoopTargetMet, 'boolean');
    assert.match(result.markdown, /tidegate \/ direct/);
    assert.match(result.markdown, /\*\*(met|not met)\*\*/);
    assert.match(result.text, /http read/);
  });
});
