/**
 * Code translation (docs/mappings.md "Code translation") on Synthea resources: a SNOMED CT → ICD-10-CM
 * map over every Synthea Condition, hospital A's local lab codes → LOINC (config/examples), the
 * unmapped-code policies (pass through, drop with a warning, reject), idempotence, single Codings,
 * and `$translate` over HTTP (POST and GET, every input form, errors as OperationOutcomes).
 */
import { describe, test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import express from 'express';
import request from 'supertest';
import { canonicalStringify, parseFhirJson } from '../src/fhir/json.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { compileConceptMap, loadMappingOrThrow, MappingError, previewResource, translateRouter } from '../src/mapping/index.ts';
import type { Mapping } from '../src/mapping/index.ts';
import { SYNTHEA_DIR, SYNTHEA_SKIP } from './fixtures/synthea.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SNOMED = 'http://snomed.info/sct';
const ICD10 = 'http://hl7.org/fhir/sid/icd-10-cm';
const LOCAL_LAB = 'http://hospital-a.example.org/fhir/CodeSystem/lab-codes';
const LOINC = 'http://loinc.org';

/** SNOMED CT → ICD-10-CM for common Synthea conditions (a demonstration map, not a clinical one). */
const SNOMED_TO_ICD10: Array<[string, string, string]> = [
  ['444814009', 'J01.90', 'Acute sinusitis, unspecified'],
  ['195662009', 'J02.9', 'Acute pharyngitis, unspecified'],
  ['10509002', 'J20.9', 'Acute bronchitis, unspecified'],
  ['15777000', 'R73.03', 'Prediabetes'],
  ['59621000', 'I10', 'Essential (primary) hypertension'],
  ['44054006', 'E11.9', 'Type 2 diabetes mellitus without complications'],
  ['55822004', 'E78.5', 'Hyperlipidemia, unspecified'],
];

function readNdjson(file: string): FhirJsonObject[] {
  return readFileSync(join(SYNTHEA_DIR, file), 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => parseFhirJson(l) as FhirJsonObject);
}

/** A temp folder with the SNOMED → ICD-10 map and a mapping file using it with `unmapped`. */
function icdMapping(unmapped: 'pass-through' | 'drop' | 'reject', logger?: { warn(o: object, m: string): void }): { mapping: Mapping; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-icd-'));
  writeFileSync(
    join(dir, 'snomed-icd10.json'),
    JSON.stringify({
      resourceType: 'ConceptMap',
      id: 'snomed-icd10-demo',
      url: 'http://example.org/fhir/ConceptMap/snomed-icd10-demo',
      status: 'draft',
      sourceUri: 'http://snomed.info/sct?fhir_vs',
      targetUri: 'http://hl7.org/fhir/sid/icd-10-cm?fhir_vs',
      group: [{ source: SNOMED, target: ICD10, element: SNOMED_TO_ICD10.map(([code, target, display]) => ({ code, target: [{ code: target, display, equivalence: 'equivalent' }] })) }],
    }),
  );
  writeFileSync(join(dir, 'm.json'), JSON.stringify({ conceptMaps: [{ file: 'snomed-icd10.json', direction: 'outbound', unmapped }] }));
  return { mapping: loadMappingOrThrow(join(dir, 'm.json'), logger ? { logger } : {}), dir };
}

function labObservation(id: string, code: string, subject: string): FhirJsonObject {
  return parseFhirJson(
    JSON.stringify({
      resourceType: 'Observation',
      id,
      status: 'final',
      category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'laboratory' }] }],
      code: { coding: [{ system: LOCAL_LAB, code, display: `local ${code}` }] },
      subject: { reference: subject },
    }),
  ) as FhirJsonObject;
}

describe('code translation on Synthea resources', { skip: SYNTHEA_SKIP }, () => {
  let conditions: FhirJsonObject[];
  let patients: FhirJsonObject[];
  before(() => {
    conditions = readNdjson('Condition.000.ndjson');
    patients = readNdjson('Patient.000.ndjson');
  });

  test('every Synthea Condition with a mapped SNOMED code gets its ICD-10-CM coding appended; the original stays first; idempotent', () => {
    const { mapping, dir } = icdMapping('pass-through');
    try {
      const mapped = new Map(SNOMED_TO_ICD10.map(([s, i]) => [s, i]));
      let translated = 0;
      let kept = 0;
      for (const c of conditions) {
        const before = canonicalStringify(c);
        const { resource, changes } = mapping.translate(c, 'outbound');
        assert.equal(canonicalStringify(c), before, 'the input is not modified');
        const coding = (resource['code'] as any).coding as Array<{ system: string; code: string }>;
        const original = (c['code'] as any).coding as Array<{ system: string; code: string }>;
        assert.deepEqual(coding.slice(0, original.length), original, 'original codings kept, in place');
        const expected = mapped.get(original[0]!.code);
        if (expected !== undefined) {
          translated++;
          assert.deepEqual(coding.slice(original.length).map((x) => `${x.system}|${x.code}`), [`${ICD10}|${expected}`]);
          assert.equal(changes.filter((ch) => ch.action === 'added').length, 1);
          assert.equal(changes[0]!.path, `Condition.code.coding[${original.length}]`);
          // translating again changes nothing
          const again = mapping.translate(resource, 'outbound');
          assert.equal(again.resource, resource);
          assert.deepEqual(again.changes, []);
        } else {
          kept++;
          assert.equal(resource, c, 'pass-through: nothing changes, same object');
          assert.deepEqual(changes.map((ch) => ch.action), ['kept']);
        }
        // the other direction is not configured for this map
        assert.equal(mapping.translate(c, 'inbound').resource, c);
      }
      assert.ok(translated >= 30, `translated ${translated}`);
      assert.ok(kept > 100);
      // resources without a SNOMED coding are left alone (same object)
      for (const p of patients) assert.equal(mapping.translate(p, 'outbound').resource, p);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('unmapped policy drop: the coding is removed and a warning names map and path (no code); reject: MappingError', () => {
    const warnings: Array<{ o: any; m: string }> = [];
    const drop = icdMapping('drop', { warn: (o, m) => warnings.push({ o, m }) });
    const reject = icdMapping('reject');
    try {
      const unmapped = conditions.find((c) => (c['code'] as any).coding[0].code === '160903007')!; // Full-time employment
      const mappedOne = conditions.find((c) => (c['code'] as any).coding[0].code === '444814009')!;
      const d = drop.mapping.translate(unmapped, 'outbound');
      assert.equal((d.resource['code'] as any).coding, undefined, 'the only coding was dropped');
      assert.equal((d.resource['code'] as any).text, (unmapped['code'] as any).text, 'the text stays');
      assert.equal(warnings.length, 1);
      assert.equal(warnings[0]!.o.path, 'Condition.code.coding[0]');
      assert.ok(!JSON.stringify(warnings).includes('160903007'), 'the code is not logged');
      assert.equal(drop.mapping.translate(mappedOne, 'outbound').changes[0]!.action, 'added');
      assert.throws(
        () => reject.mapping.translate(unmapped, 'outbound'),
        (err: unknown) => err instanceof MappingError && err.code === 'ERR_MAPPING_UNMAPPED_CODE' && err.path === 'Condition.code.coding[0]' && !err.message.includes('160903007'),
      );
      assert.ok(reject.mapping.translate(mappedOne, 'outbound').changes.length === 1, 'a mapped code passes a reject map');
    } finally {
      rmSync(drop.dir, { recursive: true, force: true });
      rmSync(reject.dir, { recursive: true, force: true });
    }
  });

  test('local lab codes → LOINC (config/examples) for lab results of Synthea patients; unmatched and single Codings; decimals kept', () => {
    const mapping = loadMappingOrThrow(join(ROOT, 'config/examples/hospital-a.mapping.json'), { peers: ['hospital-b'] });
    const expected: Record<string, string> = { GLU: '2345-7', HGB: '718-7', K: '2823-3', CREA: '2160-0', HBA1C: '4548-4' };
    for (const [i, p] of patients.entries()) {
      const local = Object.keys(expected)[i % 5]!;
      const obs = labObservation(`lab-${i}`, local, `Patient/${p['id'] as string}`);
      const { resource } = mapping.translate(obs, 'inbound');
      const coding = (resource['code'] as any).coding;
      assert.deepEqual(coding[0], { system: LOCAL_LAB, code: local, display: `local ${local}` }, 'original first, unchanged');
      assert.equal(coding[1].system, LOINC);
      assert.equal(coding[1].code, expected[local]);
      assert.ok(coding[1].display.length > 3);
    }
    // CHEM7 has only an "unmatched" target: not a translation; pass-through keeps it as is
    const chem = labObservation('chem', 'CHEM7', 'Patient/x');
    const t = mapping.translate(chem, 'inbound');
    assert.equal(t.resource, chem);
    assert.deepEqual(t.changes.map((c) => c.action), ['kept']);
    // a single Coding (Encounter.class, 1..1) cannot hold two values: reported, not changed
    const enc = parseFhirJson(JSON.stringify({ resourceType: 'Encounter', id: 'e', status: 'finished', class: { system: LOCAL_LAB, code: 'GLU' } })) as FhirJsonObject;
    const te = mapping.translate(enc, 'inbound');
    assert.equal(te.resource, enc);
    assert.deepEqual(te.changes.map((c) => [c.action, c.path, c.to]), [['single', 'Encounter.class', `${LOINC}|2345-7`]]);
    // preview keeps decimals in their lexical form
    const withValue = parseFhirJson(JSON.stringify(labObservation('v', 'K', 'Patient/x')).replace(/}$/, ',"valueQuantity":{"value":4.10,"unit":"mmol/L"}}').replace('"value":4.1', '"value":4.10')) as FhirJsonObject;
    const preview = previewResource(mapping, withValue, 'hospital-b');
    assert.match(canonicalStringify(preview.output), /"value":4\.10/);
  });
});

describe('$translate over HTTP', () => {
  let app: express.Express;
  before(() => {
    const mapping = loadMappingOrThrow(join(ROOT, 'config/examples/hospital-a.mapping.json'));
    app = express().use('/fhir', translateRouter(mapping));
  });
  const post = (body: unknown, type = 'application/fhir+json') => request(app).post('/fhir/ConceptMap/$translate').set('Content-Type', type).send(typeof body === 'string' ? body : JSON.stringify(body));
  const param = (res: request.Response, name: string) => res.body.parameter.filter((p: any) => p.name === name);

  test('system + code, coding, codeableConcept, reverse, url and targetsystem', async () => {
    let res = await post({ resourceType: 'Parameters', parameter: [{ name: 'system', valueUri: LOCAL_LAB }, { name: 'code', valueCode: 'HGB' }] });
    assert.equal(res.status, 200);
    assert.match(res.headers['content-type']!, /application\/fhir\+json/);
    assert.equal(param(res, 'result')[0].valueBoolean, true);
    const match = param(res, 'match')[0].part;
    assert.deepEqual(match.find((p: any) => p.name === 'concept').valueCoding, { system: LOINC, code: '718-7', display: 'Hemoglobin [Mass/volume] in Blood' });
    assert.equal(match.find((p: any) => p.name === 'equivalence').valueCode, 'equivalent');
    assert.equal(match.find((p: any) => p.name === 'source').valueUri, 'http://hospital-a.example.org/fhir/ConceptMap/lab-to-loinc');

    res = await post({ resourceType: 'Parameters', parameter: [{ name: 'codeableConcept', valueCodeableConcept: { coding: [{ system: 'urn:other', code: 'x' }, { system: LOCAL_LAB, code: 'K' }] } }] });
    assert.equal(param(res, 'match').length, 1);
    res = await post({ resourceType: 'Parameters', parameter: [{ name: 'coding', valueCoding: { system: LOINC, code: '2345-7' } }, { name: 'reverse', valueBoolean: true }] });
    assert.deepEqual(param(res, 'match')[0].part.find((p: any) => p.name === 'concept').valueCoding, { system: LOCAL_LAB, code: 'GLU', display: 'Glucose, serum' });
    res = await post({ resourceType: 'Parameters', parameter: [{ name: 'url', valueUri: 'http://hospital-a.example.org/fhir/ConceptMap/lab-to-loinc' }, { name: 'system', valueUri: LOCAL_LAB }, { name: 'code', valueCode: 'GLU' }, { name: 'targetsystem', valueUri: 'http://snomed.info/sct' }] });
    assert.equal(param(res, 'result')[0].valueBoolean, false);
    assert.equal(param(res, 'message')[0].valueString, 'No translation found');
    // an unmatched target is reported, but is no translation
    res = await post({ resourceType: 'Parameters', parameter: [{ name: 'system', valueUri: LOCAL_LAB }, { name: 'code', valueCode: 'CHEM7' }] });
    assert.equal(param(res, 'result')[0].valueBoolean, false);
    assert.equal(param(res, 'match')[0].part[0].valueCode, 'unmatched');
    // GET with query parameters
    res = await request(app).get(`/fhir/ConceptMap/$translate?system=${encodeURIComponent(LOCAL_LAB)}&code=CREA`);
    assert.equal(res.status, 200);
    assert.equal(param(res, 'match')[0].part.find((p: any) => p.name === 'concept').valueCoding.code, '2160-0');
  });

  test('an inline conceptMap is used; an invalid one is a 400 OperationOutcome naming the element', async () => {
    const cm = JSON.parse(readFileSync(join(ROOT, 'config/examples/hospital-a-lab-to-loinc.conceptmap.json'), 'utf8'));
    cm.group[0].element = [{ code: 'NA', target: [{ code: '2951-2', equivalence: 'equivalent' }] }];
    let res = await post({ resourceType: 'Parameters', parameter: [{ name: 'conceptMap', resource: cm }, { name: 'system', valueUri: LOCAL_LAB }, { name: 'code', valueCode: 'NA' }] });
    assert.equal(res.status, 200);
    assert.equal(param(res, 'match')[0].part.find((p: any) => p.name === 'concept').valueCoding.code, '2951-2');
    cm.group[0].element[0].target[0].equivalence = 'same';
    res = await post({ resourceType: 'Parameters', parameter: [{ name: 'conceptMap', resource: cm }, { name: 'system', valueUri: LOCAL_LAB }, { name: 'code', valueCode: 'NA' }] });
    assert.equal(res.status, 400);
    assert.equal(res.body.resourceType, 'OperationOutcome');
    assert.match(res.body.issue[0].expression[0], /group\[0\]\.element\[0\]\.target\[0\]\.equivalence$/);
    assert.equal(res.body.issue[0].diagnostics, 'conceptMap: "same" is not a ConceptMap equivalence');
    assert.throws(() => compileConceptMap(cm), { name: 'ConceptMapError', code: 'ERR_CONCEPTMAP_INVALID', message: 'invalid ConceptMap: /group/0/element/0/target/0/equivalence: "same" is not a ConceptMap equivalence' });
  });

  test('bad requests are OperationOutcomes: 400, 404, 405, 415', async () => {
    const cases: Array<[request.Test, number, RegExp]> = [
      [post('{not json'), 400, /not JSON/],
      [post({ resourceType: 'Patient' }), 400, /Parameters/],
      [post({ resourceType: 'Parameters', parameter: [] }), 400, /"system" and "code"/],
      [post({ resourceType: 'Parameters', parameter: [{ name: 'code', valueCode: 'GLU' }] }), 400, /go together/],
      [post({ resourceType: 'Parameters', parameter: [{ name: 'system', valueUri: LOCAL_LAB }, { name: 'code', valueCode: 'GLU' }, { name: 'reverse', valueString: 'yes' }] }), 400, /reverse/],
      [post({ resourceType: 'Parameters', parameter: [{ name: 'dependency', part: [] }, { name: 'system', valueUri: LOCAL_LAB }, { name: 'code', valueCode: 'GLU' }] }), 400, /dependency/],
      [post({ resourceType: 'Parameters', parameter: [{ name: 'url', valueUri: 'http://nowhere.example/cm' }, { name: 'system', valueUri: LOCAL_LAB }, { name: 'code', valueCode: 'GLU' }] }), 404, /No ConceptMap/],
      [post('x', 'text/plain'), 415, /Content-Type/],
      [request(app).delete('/fhir/ConceptMap/$translate'), 405, /DELETE/],
    ];
    for (const [req, status, diag] of cases) {
      const res = await req;
      assert.equal(res.status, status, res.text);
      assert.equal(res.body.resourceType, 'OperationOutcome');
      assert.match(res.body.issue[0].diagnostics, diag);
    }
    // other paths are not this router's
    assert.equal((await request(app).get('/fhir/ConceptMap/x')).status, 404);
  });
});
