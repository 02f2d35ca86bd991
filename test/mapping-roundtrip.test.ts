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
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import pino from 'pino';
import { generateNodeKeys } from '../src/envelope/index.ts';
import { HospitalClient, startMedplumHospital } from '../src/hospital/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';
import { loadMappingOrThrow } from '../src/mapping/index.ts';
import { TidegateNode } from '../src/node/node.ts';
import { readSynthea, SYNTHEA_SKIP } from './fixtures/synthea.ts';
import { clearRedisPrefix } from './fixtures/redis.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const LOCAL_LAB = 'http://hospital-a.example.org/fhir/CodeSystem/lab-codes';
const LOINC = 'http://loinc.org';
const FHIR = { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' };

/** The first resource of the sample's `<type>.000.ndjson` that `pick` accepts; throws when none does. */
function firstLine(type: string, pick: (r: any) => boolean): any {
  const found = readSynthea(type).find(pick);
  if (found === undefined) throw new Error(`no matching resource in ${type}.000.ndjson`);
  return found;
}

async function hospitalPut(h: MedplumHospital, resource: any): Promise<void> {
  const res = await fetch(`${h.url}/${resource.resourceType}/${resource.id}`, { method: 'PUT', headers: FHIR, body: JSON.stringify(resource) });
  assert.ok(res.ok, `PUT at the hospital: ${res.status} ${await res.text()}`);
}

async function hospitalGet(h: MedplumHospital, path: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`${h.url}/${path}`, { headers: FHIR });
  return { status: res.status, body: res.status === 200 ? await res.json() : undefined };
}

describe('round trip A → B → A through the hospital boundary', { skip: SYNTHEA_SKIP }, () => {
  const prefix = `maprt-${randomBytes(4).toString('hex')}`;
  const names = ['hospital-a', 'hospital-b'] as const;
  const hospitals: MedplumHospital[] = [];
  const nodes: TidegateNode[] = [];

  /** Polls both hospitals and waits until both nodes are quiet twice in a row. */
  const settle = async (): Promise<void> => {
    const deadline = Date.now() + 60_000;
    let quietRuns = 0;
    while (quietRuns < 2) {
      if (Date.now() > deadline) throw new Error('nodes did not settle');
      for (const n of nodes) await n.hospitalPoller!.pollNow();
      const q = await Promise.all(nodes.map((n) => n.quiet()));
      quietRuns = q.every(Boolean) ? quietRuns + 1 : 0;
      await sleep(50);
    }
  };

  before(async () => {
    const keys = names.map((n) => generateNodeKeys(n));
    for (const [i, name] of names.entries()) {
      const hospital = await startMedplumHospital({ name: `${name}-fhir` });
      hospitals.push(hospital);
      const other = names[1 - i]!;
      const mapping = loadMappingOrThrow(join(ROOT, `config/examples/${name}.mapping.json`), { peers: [other] });
      const node = new TidegateNode({
        secretKeys: keys[i]!.secretKeys,
        peers: [{ nodeId: other, redisUrl: REDIS_URL, publicKeys: keys[1 - i]!.publicKeys }],
        redisUrl: REDIS_URL,
        queuePrefix: prefix,
        hospital: new HospitalClient({ baseUrl: hospital.url, mapping }),
        mapping,
        logger: pino({ level: 'silent' }),
        antiEntropyIntervalMs: 0,
        batchDelayMs: 5,
        hospitalPollIntervalMs: 3_600_000, // polled by hand (pollNow)
      });
      await node.start();
      nodes.push(node);
    }
  });

  after(async () => {
    for (const n of nodes.reverse()) await n.stop();
    for (const h of hospitals) await h.close();
    await clearRedisPrefix(REDIS_URL, prefix);
  });

  test('a local lab code written at hospital A is LOINC at hospital B with the original kept, and back at A unchanged', async () => {
    const [hA, hB] = hospitals as [MedplumHospital, MedplumHospital];
    const [nA, nB] = nodes as [TidegateNode, TidegateNode];
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
    await settle();

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
    await settle();

    const a2 = await hospitalGet(hA, 'Observation/rt-glucose');
    assert.equal(a2.body.status, 'final', 'the edit made at B reached A');
    assert.equal(a2.body.note[0].text, 'checked at B');
    assert.deepEqual(a2.body.code.coding[0], localCoding, 'A keeps its original coding, first and unchanged');
    assert.deepEqual(a2.body.code.coding.map((c: any) => `${c.system}|${c.code}`), [`${LOCAL_LAB}|GLU`, `${LOINC}|2345-7`]);
    assert.equal(a2.body.code.text, 'Glucose');
    assert.equal(nA.replica.current('Observation/rt-glucose')!.body, nB.replica.current('Observation/rt-glucose')!.body);
  });

  test('a sensitive Synthea Condition written at hospital A reaches neither node B nor hospital B', async () => {
    const [hA, hB] = hospitals as [MedplumHospital, MedplumHospital];
    const [nA, nB] = nodes as [TidegateNode, TidegateNode];
    const sensitive = firstLine('Condition', (c) => c.code.coding[0].code === '706893006');
    const ordinary = firstLine('Condition', (c) => c.code.coding[0].code === '444814009');
    for (const c of [sensitive, ordinary]) await hospitalPut(hA, { ...c, subject: { reference: 'Patient/rt-someone' }, encounter: undefined });
    await settle();
    await nA.tide.runAntiEntropy();
    await settle();
    assert.ok(nA.replica.current(`Condition/${sensitive.id}`), 'A holds it');
    assert.ok(nB.replica.current(`Condition/${ordinary.id}`), 'the ordinary Condition reached B');
    assert.equal(nB.replica.current(`Condition/${sensitive.id}`), undefined, 'node B never got it');
    assert.equal((await hospitalGet(hB, `Condition/${sensitive.id}`)).status, 404, 'hospital B never got it');
    assert.ok(nA.tide.stats().updatesWithheld >= 1);
  });
});
