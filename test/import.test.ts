import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { canonicalStringify, isJsonObject, parseFhirJson } from '../src/fhir/json.ts';
import type { FhirJson, FhirJsonObject } from '../src/fhir/json.ts';
import {
  importPlan,
  orderForImport,
  readNdjsonFolder,
  resolveConditionalReferences,
  sourceOf,
  typeImportOrder,
} from '../src/import/index.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const fixtures = path.join(repoRoot, 'test', 'fixtures', 'import');
const examples = path.join(repoRoot, 'examples', 'data');
const synthea = path.resolve(repoRoot, '..', 'shared', 'data', 'synthea-10');

function res(text: string): FhirJsonObject {
  const v = parseFhirJson(text);
  assert.ok(isJsonObject(v));
  return v;
}

function byKey(resources: FhirJsonObject[], key: string): FhirJsonObject {
  const found = resources.find((r) => `${String(r.resourceType)}/${String(r.id)}` === key);
  assert.ok(found, `${key} present`);
  return found;
}

/** Every string `reference` anywhere in a value. */
function allReferences(value: FhirJson, out: string[] = []): string[] {
  if (Array.isArray(value)) for (const v of value) allReferences(v, out);
  else if (isJsonObject(value)) {
    if (typeof value.reference === 'string') out.push(value.reference);
    for (const v of Object.values(value)) allReferences(v, out);
  }
  return out;
}

describe('readNdjsonFolder', () => {
  test('reads valid lines, reports bad ones by file and 1-based line without content, ignores non-ndjson files', async () => {
    const { resources, problems } = await readNdjsonFolder(path.join(fixtures, 'lines'));
    assert.deepEqual(
      resources.map((r) => `${String(r.resourceType)}/${String(r.id)}`),
      ['Observation/o1', 'Observation/o2', 'Patient/p1', 'Patient/p4', 'Patient/p7'],
    );
    assert.deepEqual(
      problems.map((p) => `${p.file}:${p.line}`),
      [3, 5, 6, 7, 9, 10, 11, 12].map((n) => `Patient.000.ndjson:${n}`),
    );
    const message = (line: number): string => problems.find((p) => p.line === line)?.message ?? '';
    assert.match(message(3), /^not valid JSON/);
    assert.match(message(5), /array/);
    assert.match(message(6), /resourceType does not match/);
    assert.match(message(7), /invalid FHIR id/);
    assert.match(message(9), /no resourceType/);
    assert.match(message(10), /resourceType is not a string/);
    assert.match(message(11), /invalid FHIR id/);
    assert.match(message(12), /a string, not a JSON object/);
    for (const p of problems) {
      assert.doesNotMatch(p.message, /SECRET|PHI|Zelda|p2|p3|p5|p6/, `no line content in: ${p.message}`);
    }
    assert.deepEqual(sourceOf(byKey(resources, 'Patient/p4')), { file: 'Patient.000.ndjson', line: 8 });
    assert.equal(resources.some((r) => r.id === 'ignored'), false, 'notes.txt is ignored');
  });

  test('keeps decimal precision (1.50 stays 1.50)', async () => {
    const { resources } = await readNdjsonFolder(path.join(fixtures, 'lines'));
    const o1 = canonicalStringify(byKey(resources, 'Observation/o1'));
    assert.match(o1, /"value":1\.50[,}]/);
    assert.match(canonicalStringify(byKey(resources, 'Observation/o2')), /"value":0\.000000000000000000012340[,}]/);
  });

  test('handles CRLF, a UTF-8 BOM, a final line without newline, and skips sub-folders named *.ndjson', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'tidegate-import-'));
    try {
      await writeFile(
        path.join(dir, 'Patient.000.ndjson'),
        '\uFEFF{"resourceType":"Patient","id":"a"}\r\n\r\nnot json\r\n{"resourceType":"Patient","id":"b"}',
      );
      await mkdir(path.join(dir, 'nested.ndjson'));
      const { resources, problems } = await readNdjsonFolder(dir);
      assert.deepEqual(resources.map((r) => r.id), ['a', 'b']);
      assert.deepEqual(problems, [{ file: 'Patient.000.ndjson', line: 3, message: 'not valid JSON (syntax error at column 1)' }]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('rejects with the fs error for a missing folder', async () => {
    await assert.rejects(readNdjsonFolder(path.join(fixtures, 'does-not-exist')), { code: 'ENOENT' });
  });
});

describe('resolveConditionalReferences', () => {
  test('rewrites nested, contained, Bundle-entry, %7C-encoded, escaped and system-less forms; reports the rest', async () => {
    const { resources: input } = await readNdjsonFolder(path.join(fixtures, 'refs'));
    const before = input.map((r) => canonicalStringify(r));
    const { resources, unresolved } = resolveConditionalReferences(input);

    assert.deepEqual(input.map((r) => canonicalStringify(r)), before, 'input not mutated');
    assert.equal(resources.length, input.length);
    assert.notEqual(resources[0], input[0], 'copies, not the input objects');

    const enc1 = byKey(resources, 'Encounter/enc1');
    assert.deepEqual(allReferences(enc1), [
      'Patient/pat1',
      'Practitioner/pr1',
      'Practitioner/pr2',
      'Practitioner/pr2',
      'Organization/org2',
    ]);
    assert.deepEqual(allReferences(byKey(resources, 'Organization/org2')), ['Organization/org1'], 'token escape \\| honoured');
    assert.deepEqual(allReferences(byKey(resources, 'Patient/pat1')), ['Practitioner/pr1']);
    assert.deepEqual(allReferences(byKey(resources, 'Bundle/b1')), ['Patient/pat1', 'Practitioner/pr2'], 'Bundle entries walked');

    const enc2 = byKey(resources, 'Encounter/enc2');
    assert.deepEqual(allReferences(enc2), [
      'Patient/pat1',
      'Encounter/enc2',
      'Practitioner/pr2', // contained Provenance: identifier=LOCAL-7 (any system)
      'Practitioner/pr2', // extension valueReference: identifier=|LOCAL-7 (no system)
      'Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|0000000000',
      'Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9990003037',
      'Practitioner?name=Smith',
    ]);

    assert.equal(unresolved.length, 3);
    for (const u of unresolved) {
      assert.equal(u.file, 'Encounter.000.ndjson');
      assert.equal(u.line, 2);
      assert.equal(u.resource, 'Encounter/enc2');
      assert.equal(u.targetType, 'Practitioner');
      assert.doesNotMatch(JSON.stringify(u), /0000000000|9990003037|Smith/, 'identifier values are not echoed');
    }
    assert.deepEqual(
      unresolved.map((u) => u.path),
      [0, 1, 2].map((i) => `Encounter.participant[${i}].individual.reference`),
    );
    assert.match(unresolved[0]?.message ?? '', /^no Practitioner/);
    assert.match(unresolved[1]?.message ?? '', /^ambiguous: 2 Practitioner/);
    assert.match(unresolved[2]?.message ?? '', /^unsupported/);
    assert.equal(unresolved[0]?.system, 'http://hl7.org/fhir/sid/us-npi');
    assert.equal(unresolved[2]?.system, undefined);
    assert.deepEqual(sourceOf(enc2), { file: 'Encounter.000.ndjson', line: 2 }, 'provenance carried to the copy');
  });

  test('works on objects not read from files: single-object identifier, no provenance, decimals kept', () => {
    const input = [
      res('{"resourceType":"Location","id":"loc","identifier":{"system":"urn:s","value":"L1"}}'),
      res('{"resourceType":"Observation","id":"o","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50},' +
        '"extension":[{"url":"urn:e","valueReference":{"reference":"Location?identifier=urn:s|L1"}}],' +
        '"performer":[{"reference":"Organization?identifier=urn:s|nope"}]}'),
    ];
    const { resources, unresolved } = resolveConditionalReferences(input);
    const obs = resources[1];
    assert.ok(obs);
    assert.equal(
      canonicalStringify(obs),
      '{"resourceType":"Observation","id":"o","code":{"text":"x"},"extension":[{"url":"urn:e","valueReference":{"reference":"Location/loc"}}],' +
        '"performer":[{"reference":"Organization?identifier=urn:s|nope"}],"status":"final","valueQuantity":{"value":1.50}}',
    );
    assert.deepEqual(unresolved, [
      {
        file: undefined,
        line: undefined,
        resource: 'Observation/o',
        path: 'Observation.performer[0].reference',
        targetType: 'Organization',
        system: 'urn:s',
        message: 'no Organization in the batch has a matching identifier',
      },
    ]);
  });

  test('copies a "__proto__" key as an own property, never as the prototype', () => {
    const input = [res('{"resourceType":"Basic","id":"x","__proto__":{"polluted":true}}')];
    const [out] = resolveConditionalReferences(input).resources;
    assert.ok(out);
    assert.equal(Object.getPrototypeOf(out), Object.prototype);
    assert.equal((out as Record<string, unknown>).polluted, undefined);
    assert.equal(canonicalStringify(out), canonicalStringify(input[0]));
  });
});

describe('orderForImport', () => {
  test('referenced types first, stable within a type, unreferenced types by preference then name', () => {
    const input = [
      res('{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"},"encounter":{"reference":"Encounter/e1"}}'),
      res('{"resourceType":"Encounter","id":"e2","subject":{"reference":"Patient/p2"},"serviceProvider":{"reference":"https://x.example/fhir/Organization/o1/_history/3"}}'),
      res('{"resourceType":"Patient","id":"p2","generalPractitioner":[{"reference":"Practitioner?identifier=urn:npi|1"}]}'),
      res('{"resourceType":"Encounter","id":"e1","subject":{"reference":"Patient/p1"}}'),
      res('{"resourceType":"Patient","id":"p1"}'),
      res('{"resourceType":"Organization","id":"o1"}'),
      res('{"resourceType":"Practitioner","id":"pr1"}'),
      res('{"resourceType":"Basic","id":"b1","author":{"type":"http://hl7.org/fhir/StructureDefinition/Questionnaire","identifier":{"value":"q"}}}'),
      res('{"resourceType":"Questionnaire","id":"q1","status":"active"}'),
      res('{"resourceType":"Condition","id":"c0","subject":{"reference":"Patient/p2"},"contained":[{"resourceType":"Medication","id":"m"}],"evidence":[{"detail":[{"reference":"#m"}]}]}'),
    ];
    const ordered = orderForImport(input);
    assert.deepEqual(
      ordered.map((r) => `${String(r.resourceType)}/${String(r.id)}`),
      [
        'Organization/o1',
        'Practitioner/pr1',
        'Patient/p2',
        'Patient/p1',
        'Encounter/e2',
        'Encounter/e1',
        'Condition/c1',
        'Condition/c0',
        'Questionnaire/q1', // before Basic (which references it by Reference.type), despite the alphabet
        'Basic/b1',
      ],
    );
    assert.equal(ordered[0], input[5], 'same objects');
    assert.equal(input[0]?.id, 'c1', 'input array not reordered');
  });

  test('breaks cycles deterministically by the preference list, then alphabetically', () => {
    const cycle = [
      res('{"resourceType":"Endpoint","id":"ep","managingOrganization":{"reference":"Organization/o"}}'),
      res('{"resourceType":"Organization","id":"o","endpoint":[{"reference":"Endpoint/ep"}]}'),
      res('{"resourceType":"Zeta","id":"z","x":{"reference":"Alpha/a"}}'),
      res('{"resourceType":"Alpha","id":"a","x":{"reference":"Zeta/z"}}'),
    ];
    assert.deepEqual(typeImportOrder(cycle), ['Organization', 'Endpoint', 'Alpha', 'Zeta']);
    assert.deepEqual(typeImportOrder([...cycle].reverse()), ['Organization', 'Endpoint', 'Alpha', 'Zeta']);
  });
});

describe('importPlan', () => {
  test('reports a repeated resourceType/id at its later occurrence and keeps both copies', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'tidegate-import-'));
    try {
      await writeFile(path.join(dir, 'Patient.000.ndjson'), '{"resourceType":"Patient","id":"a"}\n{"resourceType":"Patient","id":"b"}\n');
      await writeFile(path.join(dir, 'Patient.001.ndjson'), '\n{"resourceType":"Patient","id":"a","active":true}\n');
      const plan = await importPlan(dir);
      assert.deepEqual(plan.duplicates, [
        { file: 'Patient.001.ndjson', line: 2, message: 'duplicate resourceType and id (first seen at Patient.000.ndjson line 1); both kept' },
      ]);
      assert.deepEqual(plan.counts, { Patient: 3 });
      assert.deepEqual(plan.problems, []);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('examples/data', () => {
  test('imports with exactly one problem (the non-resource line) and no unresolved references', async () => {
    const plan = await importPlan(examples);
    assert.deepEqual(plan.problems, [
      {
        file: 'Observation.000.ndjson',
        line: 3,
        message: 'not a FHIR resource: the object has no resourceType (for example a bulk-data client log entry)',
      },
    ]);
    assert.deepEqual(plan.unresolved, []);
    assert.deepEqual(plan.duplicates, []);
    assert.deepEqual(plan.counts, { Condition: 3, Encounter: 4, Location: 1, Observation: 5, Organization: 1, Patient: 3, Practitioner: 2 });
    // Observation before Condition: ex-cond-2 cites ex-obs-1 as evidence.
    assert.deepEqual(plan.typeOrder, ['Organization', 'Location', 'Practitioner', 'Patient', 'Encounter', 'Observation', 'Condition']);

    const keys = new Set(plan.resources.map((r) => `${String(r.resourceType)}/${String(r.id)}`));
    for (const r of plan.resources) {
      for (const ref of allReferences(r)) assert.ok(keys.has(ref), `${ref} resolves inside the batch`);
    }
    assert.deepEqual(allReferences(byKey(plan.resources, 'Encounter/ex-enc-3')), [
      'Patient/ex-pat-2',
      'Practitioner/ex-prac-castellan',
      'Location/ex-loc-harbourview-main',
      'Organization/ex-org-harbourview',
    ]);
    assert.match(canonicalStringify(byKey(plan.resources, 'Observation/ex-obs-1')), /"valueQuantity":\{"code":"mg\/dL","system":"http:\/\/unitsofmeasure\.org","unit":"mg\/dL","value":1\.50\}/);
  });

  test('every example file is named Type.000.ndjson after the type it holds', async () => {
    const files = (await readdir(examples)).filter((f) => f.endsWith('.ndjson'));
    const { resources } = await readNdjsonFolder(examples);
    for (const r of resources) {
      const src = sourceOf(r);
      assert.equal(src?.file, `${String(r.resourceType)}.000.ndjson`);
    }
    assert.equal(files.length, 7);
  });
});

describe('Synthea sample export (../shared/data/synthea-10)', () => {
  test('reads everything, reports log.ndjson, resolves every conditional reference, orders referenced types first', async (t) => {
    if (!existsSync(synthea)) {
      t.skip(`sample folder ${synthea} absent: skipping the Synthea import test`);
      return;
    }
    // Expected: every non-blank line of every *.ndjson file except the bulk-data client log.
    const files = (await readdir(synthea)).filter((f) => f.endsWith('.ndjson'));
    let expected = 0;
    let logLines = 0;
    for (const f of files) {
      const n = (await readFile(path.join(synthea, f), 'utf8')).split('\n').filter((l) => l.trim() !== '').length;
      if (f === 'log.ndjson') logLines = n;
      else expected += n;
    }

    const plan = await importPlan(synthea);
    assert.equal(plan.resources.length, expected);
    assert.equal(Object.values(plan.counts).reduce((a, b) => a + b, 0), expected);
    // log.ndjson holds bulk-data client events (JSON objects without resourceType): reported, one per line.
    assert.equal(plan.problems.length, logLines);
    assert.ok(plan.problems.every((p) => p.file === 'log.ndjson' && /no resourceType/.test(p.message)));
    assert.deepEqual(plan.unresolved, []);
    assert.deepEqual(plan.duplicates, []);

    const keys = new Set(plan.resources.map((r) => `${String(r.resourceType)}/${String(r.id)}`));
    for (const r of plan.resources) {
      for (const ref of allReferences(r)) {
        assert.ok(!ref.includes('?'), 'no conditional reference left');
        assert.ok(keys.has(ref), `reference target in the export: ${ref}`);
      }
    }

    const types = plan.resources.map((r) => String(r.resourceType));
    const firstEncounter = types.indexOf('Encounter');
    assert.ok(firstEncounter > 0);
    for (const dep of ['Organization', 'Location', 'Practitioner', 'Patient']) {
      assert.ok(types.lastIndexOf(dep) >= 0 && types.lastIndexOf(dep) < firstEncounter, `${dep} before Encounter`);
    }
    assert.ok(types.lastIndexOf('Encounter') < types.indexOf('Condition'), 'Encounter before Condition');
    assert.ok(types.lastIndexOf('Condition') < types.indexOf('MedicationRequest'), 'Condition before MedicationRequest');
  });
});
