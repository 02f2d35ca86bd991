/**
 * Search answers splice the node's stored bodies (canonical text) into the searchset instead of
 * parsing and re-serializing them (src/fhir/search.ts, `HospitalClient.search` with `held`). These
 * tests pin that the bytes are the same as before: the fast path and the full-conversion path give
 * identical text, the text is canonical (a fixed point of parse + canonicalStringify, which is what
 * the old code produced), and every entry the node holds is exactly its stored body. Real Medplum
 * stand-in over HTTP, real HospitalClient, real Replica; both id modes of the hospital.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { canonicalStringify, isJsonObject, parseFhirJson } from '../src/fhir/json.ts';
import { searchSystem, searchType } from '../src/fhir/search.ts';
import type { HospitalSearcher, SearchContext } from '../src/fhir/search.ts';
import { FHIR, makeHarness } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';

const BASE = 'http://node.example/fhir';

/** The same hospital client, but ignoring `held`: every entry comes back fully converted (the path before the splice). */
function fullConversion(h: Harness): HospitalSearcher {
  const c = h.client!;
  return { baseUrl: c.baseUrl, idMap: c.idMap, search: (type, params) => c.search(type, params) };
}

function checkAnswer(h: Harness, text: string, expectHeld: number): void {
  assert.equal(canonicalStringify(parseFhirJson(text)), text, 'the answer is canonical JSON (what the old parse + re-serialize gave)');
  const bundle = parseFhirJson(text);
  assert.ok(isJsonObject(bundle) && Array.isArray(bundle.entry));
  let held = 0;
  for (const e of bundle.entry) {
    assert.ok(isJsonObject(e) && isJsonObject(e.resource));
    const key = `${String(e.resource.resourceType)}/${String(e.resource.id)}`;
    const cur = h.replica.current(key);
    if (cur?.body) {
      held++;
      assert.equal(canonicalStringify(e.resource), cur.body, `${key} is the node's stored body, byte for byte`);
    }
    assert.equal(e.fullUrl, `${BASE}/${key}`);
  }
  assert.equal(held, expectHeld);
}

for (const allowUpdateCreate of [true, false]) {
  describe(`search splices stored bodies (hospital ${allowUpdateCreate ? 'takes node ids' : 'assigns its own ids'})`, () => {
    let h: Harness;
    before(async () => {
      h = await makeHarness({ hospital: true, allowUpdateCreate });
      for (let i = 1; i <= 4; i++) {
        await request(h.app).put(`/fhir/Patient/js${i}`).set('Content-Type', FHIR)
          .send(JSON.stringify({ resourceType: 'Patient', id: `js${i}`, name: [{ family: 'Splicefamily', given: [`G${i}`, 'é "quoted" \\ \u2028'] }], gender: i % 2 ? 'female' : 'male', birthDate: `198${i}-02-03` })).expect(201);
      }
      for (let i = 1; i <= 3; i++) {
        await request(h.app).put(`/fhir/Observation/jo${i}`).set('Content-Type', FHIR)
          .send(`{"resourceType":"Observation","id":"jo${i}","status":"final","code":{"text":"Hb"},"subject":{"reference":"Patient/js1"},"valueQuantity":{"value":1.${i}0,"unit":"g/dL"}}`).expect(201);
      }
      await h.sync!.idle();
    });
    after(async () => {
      await h?.close();
    });

    it('type-level search: same bytes with and without the splice, canonical, held entries are the stored bodies', async () => {
      const params: Array<[string, string]> = [['family', 'Splicefamily'], ['_sort', 'birthdate']];
      const fast = await searchType({ hospital: h.client!, replica: h.replica }, 'Patient', params, BASE);
      const full = await searchType({ hospital: fullConversion(h), replica: h.replica }, 'Patient', params, BASE);
      assert.equal(fast, full);
      checkAnswer(h, fast, 4);
      assert.match(fast, /"given":\["G1","é \\"quoted\\" \\\\ \u2028"\]/);
    });

    it('keeps decimals in their lexical form, with _include entries spliced too', async () => {
      const params: Array<[string, string]> = [['subject', 'Patient/js1'], ['_include', 'Observation:subject'], ['_sort', '_id']];
      const ctx: SearchContext = { hospital: h.client!, replica: h.replica };
      const fast = await searchType(ctx, 'Observation', params, BASE);
      assert.equal(fast, await searchType({ hospital: fullConversion(h), replica: h.replica }, 'Observation', params, BASE));
      checkAnswer(h, fast, 4);
      for (const v of ['1.10', '1.20', '1.30']) assert.ok(fast.includes(`"value":${v},`) || fast.includes(`"value":${v}}`), `decimal ${v} kept`);
    });

    it('system-level search gives the same bytes with and without the splice', async () => {
      const params: Array<[string, string]> = [['_type', 'Patient,Observation'], ['_count', '3']];
      const fast = await searchSystem({ hospital: h.client!, replica: h.replica }, params, BASE);
      assert.equal(fast, await searchSystem({ hospital: fullConversion(h), replica: h.replica }, params, BASE));
      checkAnswer(h, fast, 6);
    });

    it('a resource only the hospital holds comes back as the hospital copy, in node-id form', async () => {
      const res = await fetch(`${h.hospital!.url}/Patient`, { method: 'POST', headers: { 'content-type': FHIR }, body: JSON.stringify({ resourceType: 'Patient', name: [{ family: 'Splicefamily', given: ['Direct'] }], birthDate: '1999-09-09' }) });
      assert.equal(res.status, 201);
      const created = (await res.json()) as { id: string };
      const params: Array<[string, string]> = [['family', 'Splicefamily'], ['_sort', 'birthdate']];
      const fast = await searchType({ hospital: h.client!, replica: h.replica }, 'Patient', params, BASE);
      assert.equal(fast, await searchType({ hospital: fullConversion(h), replica: h.replica }, 'Patient', params, BASE));
      checkAnswer(h, fast, 4);
      const bundle = parseFhirJson(fast) as { entry: Array<{ resource: { id: string; name: Array<{ given: string[] }> } }> };
      const direct = bundle.entry.find((e) => e.resource.name[0]!.given[0] === 'Direct');
      assert.ok(direct, 'the hospital-only Patient is found');
      assert.equal(h.replica.current(`Patient/${direct.resource.id}`), undefined);
      if (allowUpdateCreate) assert.equal(direct.resource.id, created.id);
    });

    it('_elements takes the full-conversion path (the hospital subset) with the node versionId and lastUpdated', async () => {
      const params: Array<[string, string]> = [['_id', 'js2'], ['_elements', 'gender']];
      const text = await searchType({ hospital: h.client!, replica: h.replica }, 'Patient', params, BASE);
      assert.equal(text, await searchType({ hospital: fullConversion(h), replica: h.replica }, 'Patient', params, BASE));
      assert.equal(canonicalStringify(parseFhirJson(text)), text);
      const bundle = parseFhirJson(text) as { entry: Array<{ resource: Record<string, unknown> & { meta: { versionId: string; lastUpdated: string } } }> };
      assert.equal(bundle.entry.length, 1);
      const cur = h.replica.current('Patient/js2')!;
      assert.equal(bundle.entry[0]!.resource.meta.versionId, cur.versionId);
      assert.equal(bundle.entry[0]!.resource.meta.lastUpdated, cur.lastUpdated);
    });

    it('an entry the node holds as deleted is left out', async () => {
      await request(h.app).delete('/fhir/Patient/js4').expect(204);
      // Searched before the hospital outbox has deleted it there: the node's deletion hides it.
      const text = await searchType({ hospital: h.client!, replica: h.replica }, 'Patient', [['family', 'Splicefamily']], BASE);
      assert.ok(!text.includes('"id":"js4"'));
      await h.sync!.idle();
    });
  });
}
