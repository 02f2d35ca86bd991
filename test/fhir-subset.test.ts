/**
 * `_summary` and `_elements` (src/fhir/subset.ts, https://hl7.org/fhir/R4/search.html#summary,
 * #elements) on read, vread, history and search, enforced by the node whatever the hospital did;
 * invalid values under `Prefer: handling=strict`; SUBSETTED bodies refused as writes. Real Medplum
 * stand-in hospital over HTTP, real HospitalClient and Replica; "a hospital that ignores the
 * parameters" is the same client with `_summary`/`_elements`/`_total` removed from its query.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import pino from 'pino';
import { fhirApp } from '../src/fhir/express.ts';
import { FhirService } from '../src/fhir/service.ts';
import type { HospitalSearcher } from '../src/fhir/search.ts';
import { resourceModifierElements as modifierElements } from '../src/hospital/definitions.ts';
import { isSubsetted, parseSubset, subsetResource, SUBSETTED_CODE, SUBSETTED_SYSTEM } from '../src/fhir/subset.ts';
import { getDataType, getResourceTypes } from '@medplum/core';
import { canonicalStringify, parseFhirJson } from '../src/fhir/json.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { FhirError } from '../src/fhir/outcomes.ts';
import { FHIR, makeHarness } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';

const STRICT = 'handling=strict';

const PATIENT = {
  resourceType: 'Patient',
  id: 'sub1',
  text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">Ann Subsetfamily</div>' },
  modifierExtension: [{ url: 'http://example.org/fhir/StructureDefinition/test-modifier', valueBoolean: true }],
  active: true,
  name: [{ family: 'Subsetfamily', given: ['Ann'] }],
  gender: 'female',
  birthDate: '1980-02-03',
  _birthDate: { extension: [{ url: 'http://hl7.org/fhir/StructureDefinition/patient-birthTime', valueDateTime: '1980-02-03T10:00:00Z' }] },
  deceasedBoolean: false,
  maritalStatus: { text: 'M' },
  communication: [{ language: { text: 'en' } }],
};

function tagsOf(r: any): any[] {
  return (r.meta?.tag ?? []).filter((t: any) => t.code === SUBSETTED_CODE);
}

function assertSubsetted(r: any, what: string): void {
  assert.deepEqual(tagsOf(r), [{ system: SUBSETTED_SYSTEM, code: SUBSETTED_CODE }], `${what}: one SUBSETTED tag`);
}

/** The harness's hospital client, but the hospital never sees `_summary`, `_elements` or `_total`. */
function ignoring(h: Harness): HospitalSearcher {
  const c = h.client!;
  const drop = new Set(['_summary', '_elements', '_total']);
  return {
    baseUrl: c.baseUrl,
    idMap: c.idMap,
    search: (type, params, options) => c.search(type, Object.fromEntries(Object.entries(params).filter(([n]) => !drop.has(n))), options),
  };
}

describe('subset.ts on the R4 definitions', () => {
  test('_summary=true keeps isSummary, modifier and mandatory elements, drops the rest, tags once', () => {
    const r = subsetResource(parseFhirJson(JSON.stringify(PATIENT)) as FhirJsonObject, { kind: 'summary', mode: 'true' });
    assert.deepEqual(Object.keys(r).sort(), ['_birthDate', 'active', 'birthDate', 'deceasedBoolean', 'gender', 'id', 'meta', 'modifierExtension', 'name', 'resourceType']);
    assertSubsetted(r, 'summary');
  });

  test('R4: every top-level modifier but modifierExtension is isSummary (what _summary=true relies on)', () => {
    let modifiers = 0;
    for (const type of getResourceTypes()) {
      const summary = getDataType(type).summaryProperties!;
      for (const m of modifierElements(type)) {
        modifiers++;
        if (m !== 'modifierExtension') assert.ok(summary.has(m), `${type}.${m} is a modifier and a summary element`);
      }
    }
    assert.ok(modifiers > 400, `modifiers indexed (${modifiers})`);
    assert.ok(modifierElements('Observation').has('status') && modifierElements('Patient').has('deceased'));
  });

  test('Observation: mandatory status/code kept under _elements, value[x] named by its base name', () => {
    const obs = { resourceType: 'Observation', id: 'o', status: 'final', code: { text: 'Hb' }, subject: { reference: 'Patient/x' }, valueQuantity: { value: 1 }, note: [{ text: 'n' }] };
    const r = subsetResource(parseFhirJson(JSON.stringify(obs)) as FhirJsonObject, { kind: 'elements', names: new Set(['value']) });
    assert.deepEqual(Object.keys(r).sort(), ['code', 'id', 'meta', 'resourceType', 'status', 'valueQuantity']);
  });

  test('idempotent, and a DSTU3-system SUBSETTED tag is replaced by the R4 one', () => {
    const start = parseFhirJson(JSON.stringify({ ...PATIENT, meta: { tag: [{ system: 'http://hl7.org/fhir/v3/ObservationValue', code: 'SUBSETTED' }, { system: 'urn:x', code: 'keep' }] } })) as FhirJsonObject;
    for (const s of [{ kind: 'summary', mode: 'text' }, { kind: 'summary', mode: 'data' }, { kind: 'elements', names: new Set(['gender']) }] as const) {
      const once = subsetResource(start, s);
      assert.equal(canonicalStringify(subsetResource(once, s)), canonicalStringify(once), `${JSON.stringify(s)} applied twice is the same`);
      assert.deepEqual((once.meta as any).tag, [{ system: 'urn:x', code: 'keep' }, { system: SUBSETTED_SYSTEM, code: SUBSETTED_CODE }]);
      assert.ok(isSubsetted(once));
    }
    assert.ok(!isSubsetted(parseFhirJson(JSON.stringify(PATIENT)) as FhirJsonObject));
  });

  test('parseSubset: precedence, cleaning, strict refusals', () => {
    assert.deepEqual(parseSubset(['Patient'], [['_summary', 'count'], ['_elements', 'name']], false, 'search').subset, { kind: 'count' });
    assert.equal(parseSubset(['Patient'], [['_summary', 'true'], ['_elements', 'name']], false, 'search').subset?.kind, 'elements');
    assert.equal(parseSubset(['Patient'], [['_summary', 'false']], false, 'read').subset, undefined);
    const lenient = parseSubset(['Patient'], [['name', 'x'], ['_elements', 'gender,nope'], ['_summary', 'bogus'], ['_elements', 'name']], false, 'search');
    assert.deepEqual(lenient.pairs, [['name', 'x'], ['_elements', 'gender,name']]);
    assert.equal(parseSubset(['Patient'], [['_summary', 'count']], false, 'read').subset, undefined, 'count is no read shape');
    const refused: Array<[Array<[string, string]>, 'read' | 'search']> = [
      [[['_summary', 'bogus']], 'search'],
      [[['_summary', 'count']], 'read'],
      [[['_summary', 'true'], ['_summary', 'text']], 'search'],
      [[['_elements', '']], 'search'],
      [[['_elements', 'name,nope']], 'search'],
      [[['_elements:x', 'name']], 'search'],
    ];
    for (const [pairs, interaction] of refused) {
      assert.throws(() => parseSubset(['Patient'], pairs, true, interaction), (e: unknown) => e instanceof FhirError && e.status === 400, JSON.stringify(pairs));
    }
  });
});

describe('_summary and _elements over HTTP, with a Medplum hospital', () => {
  let h: Harness;
  let v1: string;
  before(async () => {
    h = await makeHarness({ hospital: true, allowUpdateCreate: false });
    const res = await request(h.app).put('/fhir/Patient/sub1').set('Content-Type', FHIR).send(JSON.stringify(PATIENT)).expect(201);
    v1 = JSON.parse(res.text).meta.versionId;
    await request(h.app).put('/fhir/Patient/sub1').set('Content-Type', FHIR).send(JSON.stringify({ ...PATIENT, gender: 'other' })).expect(200);
    for (let i = 2; i <= 4; i++) {
      await request(h.app).put(`/fhir/Patient/sub${i}`).set('Content-Type', FHIR).send(JSON.stringify({ ...PATIENT, id: `sub${i}` })).expect(201);
    }
    await request(h.app).put('/fhir/Observation/subo1').set('Content-Type', FHIR)
      .send('{"resourceType":"Observation","id":"subo1","status":"final","code":{"text":"Hb"},"subject":{"reference":"Patient/sub1"},"valueQuantity":{"value":1.50,"unit":"g/dL"},"note":[{"text":"n"}]}').expect(201);
    await h.sync!.idle();
  });
  after(async () => {
    await h?.close();
  });

  test('read _summary=true|text|data: the subset, tagged, with the version ETag', async () => {
    const whole = await request(h.app).get('/fhir/Patient/sub1').expect(200);
    const sum = await request(h.app).get('/fhir/Patient/sub1?_summary=true').expect(200);
    assert.equal(sum.headers.etag, whole.headers.etag);
    assert.equal(sum.body.meta.versionId, whole.body.meta.versionId);
    assert.deepEqual(sum.body.name, PATIENT.name);
    for (const k of ['text', 'maritalStatus', 'communication']) assert.equal(sum.body[k], undefined, `summary drops ${k}`);
    assertSubsetted(sum.body, '_summary=true');
    assert.equal(tagsOf(whole.body).length, 0, 'a plain read is not tagged');

    const text = await request(h.app).get('/fhir/Patient/sub1?_summary=text').expect(200);
    assert.deepEqual(Object.keys(text.body).sort(), ['active', 'deceasedBoolean', 'id', 'meta', 'modifierExtension', 'resourceType', 'text']);
    assertSubsetted(text.body, '_summary=text');

    const data = await request(h.app).get('/fhir/Patient/sub1?_summary=data').expect(200);
    assert.equal(data.body.text, undefined);
    assert.deepEqual(data.body.communication, PATIENT.communication);
    assertSubsetted(data.body, '_summary=data');

    const no = await request(h.app).get('/fhir/Patient/sub1?_summary=false').expect(200);
    assert.equal(no.text, whole.text, '_summary=false is the whole resource');
  });

  test('read _elements keeps the named elements plus id, meta, modifiers; decimals keep their form', async () => {
    const res = await request(h.app).get('/fhir/Patient/sub1?_elements=name').expect(200);
    assert.deepEqual(Object.keys(res.body).sort(), ['active', 'deceasedBoolean', 'id', 'meta', 'modifierExtension', 'name', 'resourceType']);
    assertSubsetted(res.body, '_elements');
    const obs = await request(h.app).get('/fhir/Observation/subo1?_elements=value').expect(200);
    assert.match(obs.text, /"value":1\.50[,}]/);
    assert.equal(obs.body.note, undefined);
    assert.equal(obs.body.status, 'final', 'mandatory element kept');
  });

  test('batch GET entries honour _summary/_elements of their URL; strict refuses a bad one in its entry', async () => {
    const batch = {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [
        { request: { method: 'GET', url: 'Patient/sub1?_elements=name' } },
        { request: { method: 'GET', url: `Patient/sub1/_history/${v1}?_summary=true` } },
        { request: { method: 'GET', url: 'Patient/sub1' } },
      ],
    };
    const res = await request(h.app).post('/fhir').set('Content-Type', FHIR).send(JSON.stringify(batch)).expect(200);
    const [els, vr, whole] = res.body.entry.map((e: any) => e.resource);
    assert.deepEqual(Object.keys(els).sort(), ['active', 'deceasedBoolean', 'id', 'meta', 'modifierExtension', 'name', 'resourceType']);
    assertSubsetted(els, 'batch read _elements');
    assert.equal(vr.gender, 'female');
    assert.equal(vr.text, undefined);
    assertSubsetted(vr, 'batch vread _summary=true');
    assert.equal(tagsOf(whole).length, 0, 'a plain batch read is whole');
    assert.ok(whole.text);
    const strict = await request(h.app).post('/fhir').set('Content-Type', FHIR).set('Prefer', 'handling=strict')
      .send(JSON.stringify({ resourceType: 'Bundle', type: 'batch', entry: [{ request: { method: 'GET', url: 'Patient/sub1?_summary=bogus' } }] })).expect(200);
    assert.match(strict.body.entry[0].response.status, /^400/);
  });

  test('vread and history honour the parameters; history _summary=count has a total and no entries', async () => {
    const vr = await request(h.app).get(`/fhir/Patient/sub1/_history/${v1}?_elements=gender`).expect(200);
    assert.equal(vr.body.gender, 'female');
    assert.equal(vr.body.name, undefined);
    assertSubsetted(vr.body, 'vread');
    const hist = await request(h.app).get('/fhir/Patient/sub1/_history?_summary=text').expect(200);
    assert.equal(hist.body.entry.length, 2);
    for (const e of hist.body.entry) {
      assert.equal(e.resource.name, undefined);
      assertSubsetted(e.resource, 'history entry');
    }
    const count = await request(h.app).get('/fhir/Patient/sub1/_history?_summary=count').expect(200);
    assert.equal(count.body.total, 2);
    assert.equal(count.body.entry, undefined);
  });

  test('invalid values: 400 OperationOutcome under Prefer: handling=strict, ignored otherwise', async () => {
    const whole = await request(h.app).get('/fhir/Patient/sub1').expect(200);
    for (const q of ['_summary=bogus', '_elements=', '_elements=name,nope', '_summary=count']) {
      const strict = await request(h.app).get(`/fhir/Patient/sub1?${q}`).set('Prefer', STRICT);
      assert.equal(strict.status, 400, q);
      assert.equal(strict.body.resourceType, 'OperationOutcome', q);
      const lenient = await request(h.app).get(`/fhir/Patient/sub1?${q}`).expect(200);
      if (q === '_elements=name,nope') assert.deepEqual(lenient.body.name, PATIENT.name, 'the good name is applied');
      else assert.equal(lenient.text, whole.text, `${q} is ignored`);
    }
    const search = await request(h.app).get('/fhir/Patient?_summary=bogus&family=Subsetfamily').set('Prefer', STRICT);
    assert.equal(search.status, 400);
    const lenient = await request(h.app).get('/fhir/Patient?_summary=bogus&family=Subsetfamily').expect(200);
    assert.equal(lenient.body.entry.length, 4);
    assert.equal(tagsOf(lenient.body.entry[0].resource).length, 0);
    const self = new URL(lenient.body.link.find((l: any) => l.relation === 'self').url);
    assert.equal(self.searchParams.get('_summary'), null, 'the self link shows only what was applied');
  });

  test('search _summary=true and _elements subset every entry, node versionId kept', async () => {
    const res = await request(h.app).get('/fhir/Patient?family=Subsetfamily&_summary=true').expect(200);
    assert.equal(res.body.entry.length, 4);
    for (const e of res.body.entry) {
      assert.equal(e.resource.text, undefined);
      assert.equal(e.resource.meta.versionId, h.replica.current(`Patient/${e.resource.id}`)!.versionId);
      assertSubsetted(e.resource, 'search entry');
    }
    const el = await request(h.app).get('/fhir/Observation?_id=subo1&_elements=subject').expect(200);
    assert.deepEqual(Object.keys(el.body.entry[0].resource).sort(), ['code', 'id', 'meta', 'resourceType', 'status', 'subject']);
  });

  test('search _summary=count: total, no entries, only the self link', async () => {
    const res = await request(h.app).get('/fhir/Patient?family=Subsetfamily&_summary=count&_count=2').expect(200);
    assert.equal(res.body.total, 4);
    assert.equal(res.body.entry, undefined);
    assert.deepEqual(res.body.link.map((l: any) => l.relation), ['self']);
    const sys = await request(h.app).get('/fhir?_type=Patient,Observation&_summary=count').expect(200);
    assert.equal(sys.body.total, 5);
    assert.equal(sys.body.entry, undefined);
    assert.deepEqual(sys.body.link.map((l: any) => l.relation), ['self']);
  });

  test('a hospital that ignores _summary/_elements/_total: the node still enforces them', async () => {
    const app = fhirApp(new FhirService(h.replica, () => {}, { hospital: ignoring(h) }), pino({ level: 'silent' }));
    // A Patient only the hospital holds comes back subsetted from the hospital copy.
    const posted = await fetch(`${h.hospital!.url}/Patient`, { method: 'POST', headers: { 'Content-Type': FHIR }, body: JSON.stringify({ resourceType: 'Patient', name: [{ family: 'Hospitalonlysub' }], gender: 'male', maritalStatus: { text: 'S' } }) });
    assert.equal(posted.status, 201);
    const count = await request(app).get('/fhir/Patient?family=Subsetfamily&_summary=count&_count=2').expect(200);
    assert.equal(count.body.total, 4);
    assert.equal(count.body.entry, undefined);
    assert.deepEqual(count.body.link.map((l: any) => l.relation), ['self']);
    const sys = await request(app).get('/fhir?_type=Patient,Observation&family=Subsetfamily&_summary=count').set('Prefer', 'handling=lenient');
    assert.equal(sys.status, 200);
    assert.equal(sys.body.entry, undefined);
    const el = await request(app).get('/fhir/Patient?family=Subsetfamily,Hospitalonlysub&_elements=gender').expect(200);
    assert.equal(el.body.entry.length, 5);
    for (const e of el.body.entry) {
      assert.equal(e.resource.name, undefined, 'name dropped by the node');
      assert.equal(e.resource.maritalStatus, undefined);
      assert.ok(e.resource.gender);
      assertSubsetted(e.resource, 'entry of an ignoring hospital');
    }
  });

  test('a SUBSETTED resource is refused as a write (422), nothing changes', async () => {
    const before = h.replica.current('Patient/sub2')!.versionId;
    const sum = await request(h.app).get('/fhir/Patient/sub2?_summary=true').expect(200);
    const put = await request(h.app).put('/fhir/Patient/sub2').set('Content-Type', FHIR).send(sum.text);
    assert.equal(put.status, 422);
    assert.equal(put.body.resourceType, 'OperationOutcome');
    assert.deepEqual(put.body.issue[0].expression, ['meta.tag']);
    const legacy = { ...PATIENT, id: 'sub2', meta: { tag: [{ system: 'http://hl7.org/fhir/v3/ObservationValue', code: 'SUBSETTED' }] } };
    assert.equal((await request(h.app).put('/fhir/Patient/sub2').set('Content-Type', FHIR).send(JSON.stringify(legacy))).status, 422);
    assert.equal((await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).send(sum.text)).status, 422);
    const tx = await request(h.app).post('/fhir').set('Content-Type', FHIR)
      .send(JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry: [{ resource: JSON.parse(sum.text), request: { method: 'PUT', url: 'Patient/sub2' } }] }));
    assert.ok(tx.status >= 400, `transaction refused (${tx.status})`);
    assert.equal(h.replica.current('Patient/sub2')!.versionId, before);
    const whole = await request(h.app).get('/fhir/Patient/sub2').expect(200);
    await request(h.app).put('/fhir/Patient/sub2').set('Content-Type', FHIR).send(whole.text.replace('"Ann"', '"Anna"')).expect(200);
  });

  test('the CapabilityStatement documents _summary and _elements', async () => {
    const cap = await request(h.app).get('/fhir/metadata').expect(200);
    assert.match(cap.body.rest[0].documentation, /_summary \(true\|text\|data\|false; count on search and history\) and _elements/);
  });
});
