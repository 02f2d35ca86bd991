/**
 * The hospital boundary, end to end (docs/mappings.md "Code translation"): two tidegate nodes, two
 * Medplum hospital FHIR servers over HTTP, one Redis, the example mapping of config/examples.
 * A lab result written with a local code directly on hospital A's FHIR server is translated when
 * A's node reads it (LOINC added, local coding kept), reaches hospital B's server with both codings,
 * is edited there, and comes back to hospital A with its original coding unchanged. A sensitive
 * Synthea Condition written at hospital A never reaches node B nor hospital B (routing).
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { MedplumHospital } from '../src/hospital/index.ts';
import type { TidegateNode } from '../src/node/node.ts';
import { readSynthea, SYNTHEA_SKIP } from './fixtures/synthea.ts';
import { exampleMappings, hospitalPut, startMappedNodes } from './fixtures/mapped-nodes.ts';
import type { MappedNodes } from './fixtures/mapped-nodes.ts';

const LOCAL_LAB = 'http://hospital-a.example.org/fhir/CodeSystem/lab-codes';
const LOINC = 'http://loinc.org';
const FHIR = { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' };

/** The first resource of the sample's `<type>.000.ndjson` that `pick` accepts; throws when none does. */
function firstLine(type: string, pick: (r: any) => boolean): any {
  const found = readSynthea(type).find(pick);
  if (found === undefined) throw new Error(`no matching resource in ${type}.000.ndjson`);
  return found;
}

async function hospitalGet(h: MedplumHospital, path: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`${h.url}/${path}`, { headers: FHIR });
  return { status: res.status, body: res.status === 200 ? await res.json() : undefined };
}

describe('round trip A → B → A through the hospital boundary', { skip: SYNTHEA_SKIP }, () => {
  let fx: MappedNodes;
  before(async () => {
    fx = await startMappedNodes({ prefix: 'maprt', names: ['hospital-a', 'hospital-b'], mappings: exampleMappings('hospital-a', 'hospital-b') });
  });
  after(() => fx?.stop());

  test('a local lab code written at hospital A is LOINC at hospital B with the original kept, and back at A unchanged', async () => {
    const [hA, hB] = fx.hospitals as [MedplumHospital, MedplumHospital];
    const [nA, nB] = fx.nodes as [TidegateNode, TidegateNode];
    const patient = firstLine('Patient', () => true);
    const localCoding = { system: LOCAL_LAB, code: 'GLU', display: 'Glucose, serum' };
    await hospitalPut(hA, patient);
    await hospitalPut(hA, {
      resourceType: 'Observation',
      id: 'rt-glucose',
      status: 'preliminary',
      category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'laboratory' }] }],
      code: { coding: [localCoding], text: 'Glucose' },
      subject: { reference: `Patient/${patient.id}` },
      valueQuantity: { value: 5.4, unit: 'mmol/L', system: 'http://unitsofmeasure.org', code: 'mmol/L' },
    });
    await fx.settle();

    // every replica holds the same translated version
    const atA = nA.replica.current('Observation/rt-glucose');
    const atB = nB.replica.current('Observation/rt-glucose');
    assert.ok(atA && atB, 'both nodes hold it');
    assert.equal(atA.versionId, atB.versionId);
    assert.equal(atA.body, atB.body);
    assert.ok(nB.replica.current(`Patient/${patient.id}`), 'the Synthea patient reached B');

    // hospital B: LOINC, with hospital A's coding kept
    const b1 = await hospitalGet(hB, 'Observation/rt-glucose');
    assert.equal(b1.status, 200);
    assert.deepEqual(b1.body.code.coding[0], localCoding);
    assert.deepEqual(b1.body.code.coding[1], { system: LOINC, code: '2345-7', display: 'Glucose [Mass/volume] in Serum or Plasma' });
    assert.equal(b1.body.code.coding.length, 2);

    // a clinician at hospital B finalizes the result on B's own server
    await hospitalPut(hB, { ...b1.body, status: 'final', note: [{ text: 'checked at B' }] });
    await fx.settle();

    const a2 = await hospitalGet(hA, 'Observation/rt-glucose');
    assert.equal(a2.body.status, 'final', 'the edit made at B reached A');
    assert.equal(a2.body.note[0].text, 'checked at B');
    assert.deepEqual(a2.body.code.coding[0], localCoding, 'A keeps its original coding, first and unchanged');
    assert.deepEqual(a2.body.code.coding.map((c: any) => `${c.system}|${c.code}`), [`${LOCAL_LAB}|GLU`, `${LOINC}|2345-7`]);
    assert.equal(a2.body.code.text, 'Glucose');
    assert.equal(nA.replica.current('Observation/rt-glucose')!.body, nB.replica.current('Observation/rt-glucose')!.body);
  });

  test('a sensitive Synthea Condition written at hospital A reaches neither node B nor hospital B', async () => {
    const [hA, hB] = fx.hospitals as [MedplumHospital, MedplumHospital];
    const [nA, nB] = fx.nodes as [TidegateNode, TidegateNode];
    const sensitive = firstLine('Condition', (c) => c.code.coding[0].code === '706893006');
    const ordinary = firstLine('Condition', (c) => c.code.coding[0].code === '444814009');
    for (const c of [sensitive, ordinary]) await hospitalPut(hA, { ...c, subject: { reference: 'Patient/rt-someone' }, encounter: undefined });
    await fx.settle();
    await nA.tide.runAntiEntropy();
    await fx.settle();
    assert.ok(nA.replica.current(`Condition/${sensitive.id}`), 'A holds it');
    assert.ok(nB.replica.current(`Condition/${ordinary.id}`), 'the ordinary Condition reached B');
    assert.equal(nB.replica.current(`Condition/${sensitive.id}`), undefined, 'node B never got it');
    assert.equal((await hospitalGet(hB, `Condition/${sensitive.id}`)).status, 404, 'hospital B never got it');
    assert.ok(nA.tide.stats().updatesWithheld >= 1);
  });
});
