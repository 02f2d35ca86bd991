/**
 * `npm run demo` on the example data (src/cli/demo.ts `runDemo`): real Redis, real Medplum stand-in
 * hospital servers over HTTP, hospital-a and hospital-b with the example mappings of config/examples.
 * The run must converge with nothing lost, every hospital server must hold what its node holds
 * (through its outbound translation), and the three mapping checks must pass: GLU gains LOINC
 * 2345-7 at hospital-b, MRN A00001 gains hospital-b's B00001 there, and a Condition hospital-a's
 * route withholds never reaches hospital-b.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { EXAMPLES_DIR, formatReport, runDemo } from '../src/cli/demo.ts';

describe('demo with the example mappings', () => {
  it('converges, compares every hospital server, and passes the mapping checks', async () => {
    const lines: string[] = [];
    const report = await runDemo({ hospitals: 2, data: EXAMPLES_DIR, json: true, serve: false, editPatients: 3, concurrency: 8, timeoutMs: 120_000 }, { info: (s) => lines.push(s) });
    const text = formatReport(report);
    assert.deepEqual(report.hospitalMismatches, [], text);
    assert.equal(report.lostEdits, 0, text);
    assert.equal(report.converged, true, text);
    assert.deepEqual(
      report.mappingChecks.map((c) => [c.ok, c.name.slice(0, 40)]),
      [
        [true, 'lab Observation written at hospital-a wi'],
        [true, 'Patient registered at hospital-a with MR'],
        [true, "a Condition hospital-a's route withholds"],
      ],
      text,
    );
    assert.match(report.mappingChecks[0]!.detail, /lab-codes\|GLU, loinc\.org\|2345-7/);
    assert.match(report.mappingChecks[2]!.detail, /[1-9]\d* resources written at hospital-a routed away from hospital-b, 0 of them found there/);
    assert.equal(report.ok, true, text);
    assert.match(text, /example mappings {10}3 of 3 checks passed/);
    assert.ok(lines.some((l) => l.startsWith('✓ lab Observation')), 'the checks are printed as they run');
  });
});
