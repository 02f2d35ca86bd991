/**
 * batch and transaction Bundles (src/fhir/bundle.ts; https://hl7.org/fhir/R4/http.html#transaction):
 * against a node whose hospital is a real Medplum server over HTTP (test/fhir-harness.ts), and
 * a Synthea patient imported by one transaction through a running two-hospital network.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import request from 'supertest';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';
import { SYNTHEA_DIR, SYNTHEA_SKIP } from './fixtures/synthea.ts';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

const post = (h: Harness, bundle: object | string, prefer?: string) => {
  const r = request(h.app).post('/fhir').set('Content-Type', FHIR);
  if (prefer) r.set('Prefer', prefer);
  return r.send(typeof bundle === 'string' ? bundle : JSON.stringify(bundle));
};
const txn = (entry: object[]) => ({ resourceType: 'Bundle', type: 'transaction', entry });
const batchOf = (entry: object[]) => ({ resourceType: 'Bundle', type: 'batch', entry });

/** Everything observable that a write would change: store keys + versions, gossiped updates, hospital journal. */
async function snapshot(h: Harness): Promise<{ store: string[]; updates: number; journal: number }> {
  await h.sync?.idle();
  const store = [...h.replica.keys()].map((k) => `${k}@${h.replica.current(k)?.versionId ?? '-'}`).sort();
  return { store, updates: h.updates.length, journal: h.hospital!.repo.journalSize };
}

/** Resources of `type` the hospital server holds, read over HTTP. */
async function hospitalHas(h: Harness, type: string): Promise<any[]> {
  const res = await fetch(`${h.hospital!.url}/${type}?_count=1000`);
  assert.equal(res.status, 200);
  const b: any = await res.json();
  return (b.entry ?? []).map((e: any) => e.resource);
}

describe('transaction Bundles', () => {
  let h: Harness;
  before(async () => {
    h = await makeHarness({ hospital: true });
  });
  after(async () => {
    await h?.close();
  });

  test('urn:uuid fullUrls get server ids; references are rewritten everywhere, also in contained resources and narrative', async () => {
    const pat = 'urn:uuid:11111111-1111-4111-8111-111111111111';
    const enc = 'urn:uuid:22222222-2222-4222-8222-222222222222';
    const res = await post(h, JSON.stringify(txn([
      { fullUrl: enc, resource: { resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: pat } }, request: { method: 'POST', url: 'Encounter' } },
      {
        fullUrl: 'urn:uuid:33333333-3333-4333-8333-333333333333',
        resource: {
          resourceType: 'Observation', status: 'final', code: { text: 'Hb' }, valueQuantity: { value: 13.25, unit: 'g/dL' },
          subject: { reference: pat }, encounter: { reference: enc },
          text: { status: 'generated', div: `<div xmlns="http://www.w3.org/1999/xhtml">See <a href="${pat}">the patient</a></div>` },
          contained: [{ resourceType: 'Provenance', id: 'p1', target: [{ reference: enc }], recorded: '2024-01-01T00:00:00Z', agent: [{ who: { reference: pat } }] }],
        },
        request: { method: 'POST', url: 'Observation' },
      },
      { fullUrl: pat, resource: { resourceType: 'Patient', identifier: [{ system: 'urn:test', value: 'tx-1' }], gender: 'female' }, request: { method: 'POST', url: 'Patient' } },
    ])).replace('"value":13.25', '"value":13.50')).expect(200);
    assert.equal(res.body.type, 'transaction-response');
    assert.deepEqual(res.body.entry.map((e: any) => e.response.status), ['201 Created', '201 Created', '201 Created']);
    const [encE, obsE, patE] = res.body.entry;
    const id = (e: any) => e.response.location.split('/')[1];
    const patId = id(patE);
    const encId = id(encE);
    assert.match(patE.response.location, /^Patient\/[0-9a-f-]{36}\/_history\/[^/]+$/);
    assert.equal(patE.fullUrl, `${res.request.url.replace(/\/fhir.*$/, '')}/fhir/Patient/${patId}`);
    assert.equal(patE.response.etag, `W/"${h.replica.current(`Patient/${patId}`)!.versionId}"`, 'the etag is the version the node holds after commit');
    const obs = JSON.parse(h.replica.current(`Observation/${id(obsE)}`)!.body!);
    assert.equal(obs.subject.reference, `Patient/${patId}`);
    assert.equal(obs.encounter.reference, `Encounter/${encId}`);
    assert.equal(obs.contained[0].target[0].reference, `Encounter/${encId}`);
    assert.equal(obs.contained[0].agent[0].who.reference, `Patient/${patId}`);
    assert.match(obs.text.div, new RegExp(`href="Patient/${patId}"`));
    assert.match(h.replica.current(`Observation/${id(obsE)}`)!.body!, /"value":13\.50/, 'decimals keep their lexical form');
    assert.equal(JSON.parse(h.replica.current(`Encounter/${encId}`)!.body!).subject.reference, `Patient/${patId}`);
    // Gossiped and sent to the hospital (the harness hospital takes client ids).
    assert.ok(h.updates.some((u) => u.key === `Observation/${id(obsE)}`));
    await h.sync!.idle();
    const hobs = (await hospitalHas(h, 'Observation')).find((o) => o.id === id(obsE));
    assert.equal(hobs?.subject?.reference, `Patient/${patId}`);
  });

  test('FHIR order: DELETE, POST, PUT/PATCH, then GET sees the writes; conditional create returns the match', async () => {
    await request(h.app).put('/fhir/Patient/ord-old').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', id: 'ord-old', gender: 'male' })).expect(201);
    await request(h.app).put('/fhir/Patient/ord-keep').set('Content-Type', FHIR)
      .send(JSON.stringify({ resourceType: 'Patient', id: 'ord-keep', identifier: [{ system: 'urn:test', value: 'keep' }], gender: 'male' })).expect(201);
    await request(h.app).put('/fhir/Patient/ord-patch').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', id: 'ord-patch', gender: 'male' })).expect(201);
    const count = [...h.replica.keys()].length;
    const res = await post(h, txn([
      { request: { method: 'GET', url: 'Patient/ord-new' } },
      { fullUrl: 'urn:uuid:aaaaaaaa-0000-4000-8000-000000000001', resource: { resourceType: 'Patient', id: 'ord-new', gender: 'female', link: [{ other: { reference: 'urn:uuid:aaaaaaaa-0000-4000-8000-000000000002' }, type: 'seealso' }] }, request: { method: 'PUT', url: 'Patient/ord-new' } },
      { fullUrl: 'urn:uuid:aaaaaaaa-0000-4000-8000-000000000002', resource: { resourceType: 'Patient', identifier: [{ system: 'urn:test', value: 'keep' }] }, request: { method: 'POST', url: 'Patient', ifNoneExist: 'identifier=urn:test|keep' } },
      { request: { method: 'DELETE', url: 'Patient/ord-old' } },
      { request: { method: 'PATCH', url: 'Patient/ord-patch' }, resource: { resourceType: 'Binary', contentType: 'application/json-patch+json', data: Buffer.from('[{"op":"replace","path":"/gender","value":"other"}]').toString('base64') } },
    ])).expect(200);
    const st = res.body.entry.map((e: any) => e.response.status);
    assert.deepEqual(st, ['200 OK', '201 Created', '200 OK', '204 No Content', '200 OK']);
    assert.equal(res.body.entry[0].resource.gender, 'female', 'the GET ran after the PUT');
    assert.equal(res.body.entry[1].resource.link[0].other.reference, 'Patient/ord-keep', 'the conditional create matched ord-keep; its fullUrl maps there');
    assert.equal(res.body.entry[2].resource.id, 'ord-keep');
    assert.equal(res.body.entry[4].resource.gender, 'other');
    assert.equal(JSON.parse(h.replica.current('Patient/ord-patch')!.body!).gender, 'other');
    assert.equal(h.replica.current('Patient/ord-old')!.deleted, true);
    assert.equal([...h.replica.keys()].length, count + 1, 'only ord-new is new (no second patient from the conditional create)');
  });

  test('conditional references resolve against the store and the transaction; conditional update resolves its id', async () => {
    await request(h.app).put('/fhir/Practitioner/dr1').set('Content-Type', FHIR)
      .send(JSON.stringify({ resourceType: 'Practitioner', id: 'dr1', identifier: [{ system: 'http://hl7.org/fhir/sid/us-npi', value: '9999000001' }] })).expect(201);
    const res = await post(h, txn([
      { resource: { resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: 'Patient?identifier=urn:test|cond-1' }, participant: [{ individual: { reference: 'Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999000001' } }] }, request: { method: 'POST', url: 'Encounter' } },
      { resource: { resourceType: 'Patient', identifier: [{ system: 'urn:test', value: 'cond-1' }], gender: 'female' }, request: { method: 'PUT', url: 'Patient?identifier=urn:test|cond-1' } },
    ])).expect(200);
    const patKey = `Patient/${res.body.entry[1].response.location.split('/')[1]}`;
    assert.equal(res.body.entry[1].response.status, '201 Created');
    const enc = JSON.parse(h.replica.current(`Encounter/${res.body.entry[0].response.location.split('/')[1]}`)!.body!);
    assert.equal(enc.subject.reference, patKey, 'a conditional reference to a resource created by the same transaction');
    assert.equal(enc.participant[0].individual.reference, 'Practitioner/dr1', 'a conditional reference to a stored resource');
    // Now the conditional update finds the patient and updates it in place.
    const again = await post(h, txn([{ resource: { resourceType: 'Patient', identifier: [{ system: 'urn:test', value: 'cond-1' }], gender: 'other' }, request: { method: 'PUT', url: 'Patient?identifier=urn:test|cond-1' } }])).expect(200);
    assert.equal(again.body.entry[0].response.status, '200 OK');
    assert.equal(JSON.parse(h.replica.current(patKey)!.body!).gender, 'other');
  });

  test('If-Match per entry: merges by default; with Prefer: handling=strict a stale version fails the whole transaction', async () => {
    await request(h.app).put('/fhir/Patient/im1').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', id: 'im1', gender: 'male', birthDate: '1970-01-01' })).expect(201);
    const v1 = h.replica.current('Patient/im1')!.versionId;
    await request(h.app).put('/fhir/Patient/im1').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', id: 'im1', gender: 'male', birthDate: '1971-01-01' })).expect(200);
    const entries = [
      { resource: { resourceType: 'Patient', id: 'im-other', gender: 'female' }, request: { method: 'PUT', url: 'Patient/im-other' } },
      { resource: { resourceType: 'Patient', id: 'im1', gender: 'female', birthDate: '1970-01-01' }, request: { method: 'PUT', url: 'Patient/im1', ifMatch: `W/"${v1}"` } },
    ];
    const snap = await snapshot(h);
    const strict = await post(h, txn(entries), 'handling=strict').expect(412);
    assert.equal(strict.body.resourceType, 'OperationOutcome');
    assert.ok(strict.body.issue[0].expression.includes('Bundle.entry[1]'));
    assert.match(strict.body.issue[0].diagnostics, /^Bundle\.entry\[1\] \(PUT Patient\)/);
    assert.deepEqual(await snapshot(h), snap, 'nothing stored, gossiped or sent');
    assert.equal(h.replica.current('Patient/im-other'), undefined);
    const merged = await post(h, txn(entries)).expect(200);
    assert.equal(merged.body.entry[1].resource.gender, 'female');
    assert.equal(merged.body.entry[1].resource.birthDate, '1971-01-01', 'merged against the named version: the later birthDate is kept');
    const unknown = await post(h, txn([{ resource: { resourceType: 'Patient', id: 'im1' }, request: { method: 'PUT', url: 'Patient/im1', ifMatch: 'W/"999.deadbeef"' } }])).expect(412);
    assert.ok(unknown.body.issue[0].expression.includes('Bundle.entry[0]'));
  });

  test('a failing entry (R4 validation, 422) leaves the store, gossip and the hospital server unchanged', async () => {
    const snap = await snapshot(h);
    const patientsBefore = (await hospitalHas(h, 'Patient')).length;
    const res = await post(h, txn([
      { fullUrl: 'urn:uuid:bbbbbbbb-0000-4000-8000-000000000001', resource: { resourceType: 'Patient', gender: 'female' }, request: { method: 'POST', url: 'Patient' } },
      { resource: { resourceType: 'Patient', id: 'aon-2', gender: 'female' }, request: { method: 'PUT', url: 'Patient/aon-2' } },
      { resource: { resourceType: 'Observation', code: { text: 'x' }, subject: { reference: 'urn:uuid:bbbbbbbb-0000-4000-8000-000000000001' } }, request: { method: 'POST', url: 'Observation' } },
      { request: { method: 'DELETE', url: 'Patient/ord-keep' } },
    ])).expect(422);
    assert.equal(res.body.resourceType, 'OperationOutcome');
    assert.ok(res.body.issue.some((i: any) => i.expression?.includes('Bundle.entry[2]')), JSON.stringify(res.body.issue));
    assert.ok(res.body.issue.some((i: any) => i.expression?.some((x: string) => x.startsWith('Bundle.entry[2].resource.status'))), JSON.stringify(res.body.issue));
    assert.match(res.body.issue[0].diagnostics, /^Bundle\.entry\[2\] \(POST Observation\): /);
    assert.deepEqual(await snapshot(h), snap);
    assert.equal((await hospitalHas(h, 'Patient')).length, patientsBefore);
    assert.equal(h.replica.current('Patient/ord-keep')!.deleted, false, 'the DELETE processed first was not kept');
  });

  test('conditional reference with no match or several matches is 412 and changes nothing', async () => {
    for (const v of ['many-1', 'many-2']) {
      await request(h.app).put(`/fhir/Patient/${v}`).set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', id: v, identifier: [{ system: 'urn:many', value: 'same' }] })).expect(201);
    }
    const snap = await snapshot(h);
    const none = await post(h, txn([{ resource: { resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: 'Patient?identifier=urn:none|x' } }, request: { method: 'POST', url: 'Encounter' } }])).expect(412);
    assert.equal(none.body.issue[0].code, 'not-found');
    assert.ok(none.body.issue[0].expression.includes('Bundle.entry[0].resource.subject.reference'));
    const many = await post(h, txn([{ resource: { resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: 'Patient?identifier=urn:many|same' } }, request: { method: 'POST', url: 'Encounter' } }])).expect(412);
    assert.equal(many.body.issue[0].code, 'multiple-matches');
    const bad = await post(h, txn([{ resource: { resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: 'Patient?nosuchparam=1' } }, request: { method: 'POST', url: 'Encounter' } }])).expect(400);
    assert.ok(bad.body.issue[0].expression.includes('Bundle.entry[0]'));
    assert.deepEqual(await snapshot(h), snap);
  });

  test('bad Bundles are 400/413/415/422/501 OperationOutcomes and change nothing (store, gossip, hospital)', async () => {
    const snap = await snapshot(h);
    const patient = { resourceType: 'Patient', gender: 'male' };
    const cases: Array<[string, object | string, number, RegExp]> = [
      ['malformed JSON', '{"resourceType":"Bundle",', 400, /Malformed JSON/],
      ['not a Bundle', patient, 400, /Bundle of type batch or transaction/],
      ['wrong Bundle type', { resourceType: 'Bundle', type: 'collection', entry: [{ resource: patient }] }, 400, /Bundle\.type/],
      ['entry without request', txn([{ resource: patient }]), 400, /entry\[0\]\.request is required/],
      ['entry without method', txn([{ resource: patient, request: { url: 'Patient' } }]), 400, /request\.method is required/],
      ['entry with an unknown method', txn([{ resource: patient, request: { method: 'COPY', url: 'Patient' } }]), 400, /request\.method must be/],
      ['entry without url', txn([{ resource: patient, request: { method: 'POST' } }]), 400, /request\.url is required/],
      ['unknown urn:uuid reference', txn([
        { fullUrl: 'urn:uuid:cccccccc-0000-4000-8000-000000000001', resource: patient, request: { method: 'POST', url: 'Patient' } },
        { resource: { resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: 'urn:uuid:cccccccc-0000-4000-8000-00000000dead' } }, request: { method: 'POST', url: 'Encounter' } },
      ]), 400, /names no entry's fullUrl/],
      ['duplicate fullUrl', txn([
        { fullUrl: 'urn:uuid:cccccccc-0000-4000-8000-000000000002', resource: patient, request: { method: 'POST', url: 'Patient' } },
        { fullUrl: 'urn:uuid:cccccccc-0000-4000-8000-000000000002', resource: patient, request: { method: 'POST', url: 'Patient' } },
      ]), 400, /repeats the fullUrl of Bundle\.entry\[0\]/],
      ['nested Bundle', txn([{ resource: { resourceType: 'Bundle', type: 'transaction', entry: [] }, request: { method: 'POST', url: 'Bundle' } }]), 400, /is a Bundle/],
      ['resource of the wrong type', txn([{ resource: patient, request: { method: 'POST', url: 'Observation' } }]), 400, /must be a Observation/],
      ['two entries change one resource', txn([
        { resource: { resourceType: 'Patient', id: 'dup1' }, request: { method: 'PUT', url: 'Patient/dup1' } },
        { request: { method: 'DELETE', url: 'Patient/dup1' } },
      ]), 400, /both change Patient\/dup1/],
      ['unknown resource type', txn([{ resource: patient, request: { method: 'POST', url: 'Nonsense' } }]), 404, /Unknown resource type/],
      ['search inside a transaction', txn([{ resource: patient, request: { method: 'POST', url: 'Patient' } }, { request: { method: 'GET', url: 'Patient?gender=male' } }]), 501, /Search inside a transaction/],
      ['an operation inside a transaction', txn([{ resource: patient, request: { method: 'POST', url: 'Patient/$validate' } }]), 501, /not supported inside a Bundle/],
      ['conditional PATCH', txn([{ resource: { resourceType: 'Parameters' }, request: { method: 'PATCH', url: 'Patient?identifier=a|b' } }]), 501, /Conditional PATCH/],
      ['GET of an absent resource', txn([{ resource: patient, request: { method: 'POST', url: 'Patient' } }, { request: { method: 'GET', url: 'Patient/nobody-here' } }]), 404, /entry\[1\] \(GET Patient\)/],
      ['If-None-Match: * on an existing resource', txn([{ resource: { resourceType: 'Patient', id: 'ord-keep' }, request: { method: 'PUT', url: 'Patient/ord-keep', ifNoneMatch: '*' } }]), 412, /exists/],
      ['absolute URL of another server', txn([{ resource: patient, request: { method: 'POST', url: 'http://elsewhere.example/fhir/Patient' } }]), 400, /outside this server/],
    ];
    for (const [name, body, status, re] of cases) {
      const res = await post(h, body);
      assert.equal(res.status, status, `${name}: ${res.text}`);
      assert.equal(res.body.resourceType, 'OperationOutcome', name);
      assert.match(res.body.issue.map((i: any) => i.diagnostics).join(' | '), re, name);
    }
    const media = await request(h.app).post('/fhir').set('Content-Type', 'text/plain').send(JSON.stringify(txn([]))).expect(415);
    assert.equal(media.body.resourceType, 'OperationOutcome');
    assert.deepEqual(await snapshot(h), snap);
  });

  test('an over-large Bundle is 422 too-costly; the limit is configurable', async () => {
    const small = await makeHarness({ hospital: true, service: { maxBundleEntries: 3 } });
    try {
      const entry = { resource: { resourceType: 'Patient' }, request: { method: 'POST', url: 'Patient' } };
      const snap = await snapshot(small);
      for (const b of [txn([entry, entry, entry, entry]), batchOf([entry, entry, entry, entry])]) {
        const res = await post(small, b).expect(422);
        assert.equal(res.body.issue[0].code, 'too-costly');
        assert.match(res.body.issue[0].diagnostics, /at most 3/);
      }
      assert.deepEqual(await snapshot(small), snap);
      assert.equal((await hospitalHas(small, 'Patient')).length, 0);
      const ok = await post(small, txn([entry, entry, entry])).expect(200);
      assert.equal(ok.body.entry.length, 3);
    } finally {
      await small.close();
    }
  });

  test('Prefer: return=minimal drops resources, return=OperationOutcome gives outcomes', async () => {
    const e = [{ resource: { resourceType: 'Patient', id: 'pref1' }, request: { method: 'PUT', url: 'Patient/pref1' } }];
    const min = await post(h, txn(e), 'return=minimal').expect(200);
    assert.equal(min.body.entry[0].resource, undefined);
    assert.match(min.body.entry[0].response.etag, /^W\/"/);
    const oo = await post(h, txn([{ resource: { resourceType: 'Patient', id: 'pref1', gender: 'male' }, request: { method: 'PUT', url: 'Patient/pref1' } }]), 'return=OperationOutcome').expect(200);
    assert.equal(oo.body.entry[0].response.outcome.resourceType, 'OperationOutcome');
    assert.equal(oo.body.entry[0].resource, undefined);
    await post(h, txn(e), 'return=everything').expect(400);
  });
});

describe('batch Bundles', () => {
  let h: Harness;
  before(async () => {
    h = await makeHarness({ hospital: true });
  });
  after(async () => {
    await h?.close();
  });

  test('entries are independent: each gets its own status, location, etag or outcome', async () => {
    await request(h.app).put('/fhir/Patient/b-del').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', id: 'b-del', gender: 'male' })).expect(201);
    const res = await post(h, batchOf([
      { resource: { resourceType: 'Patient', gender: 'female' }, request: { method: 'POST', url: 'Patient' } },
      { resource: { resourceType: 'Patient', id: 'b-put', gender: 'male' }, request: { method: 'PUT', url: 'Patient/b-put' } },
      { resource: { resourceType: 'Patient', id: 'b-bad', birthDate: 'not-a-date' }, request: { method: 'PUT', url: 'Patient/b-bad' } },
      { request: { method: 'GET', url: 'Patient/b-absent' } },
      { request: { method: 'DELETE', url: 'Patient/b-del' } },
      { resource: { resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: 'urn:uuid:dddddddd-0000-4000-8000-000000000001' } }, request: { method: 'POST', url: 'Encounter' } },
      { request: { method: 'GET', url: 'Patient/b-put' } },
      { resource: { resourceType: 'Patient', identifier: [{ system: 'urn:b', value: '1' }] }, request: { method: 'PUT', url: 'Patient?identifier=urn:b|1' } },
    ])).expect(200);
    assert.equal(res.body.type, 'batch-response');
    const st = res.body.entry.map((e: any) => e.response.status.slice(0, 3));
    assert.deepEqual(st, ['201', '201', '422', '404', '204', '400', '200', '201']);
    assert.match(res.body.entry[0].response.location, /^Patient\/[0-9a-f-]{36}\/_history\//);
    assert.match(res.body.entry[1].response.etag, /^W\/"/);
    assert.equal(res.body.entry[2].response.outcome.resourceType, 'OperationOutcome');
    assert.ok(res.body.entry[2].response.outcome.issue.some((i: any) => i.expression?.some((x: string) => x.startsWith('Bundle.entry[2].resource.birthDate'))));
    assert.match(res.body.entry[5].response.outcome.issue[0].diagnostics, /batch entries are independent/);
    assert.equal(res.body.entry[6].resource.id, 'b-put', 'GET ran after the PUT');
    assert.equal(h.replica.current('Patient/b-bad'), undefined);
    assert.equal(h.replica.current('Patient/b-del')!.deleted, true);
    await h.sync!.idle();
    assert.ok((await hospitalHas(h, 'Patient')).some((p) => p.id === 'b-put'), 'batch writes reach the hospital');
  });

  test('search entries are forwarded to the hospital; conditional references resolve against the store', async () => {
    await request(h.app).put('/fhir/Patient/b-s1').set('Content-Type', FHIR)
      .send(JSON.stringify({ resourceType: 'Patient', id: 'b-s1', identifier: [{ system: 'urn:bs', value: '1' }], name: [{ family: 'Batchsearchfam' }] })).expect(201);
    await h.sync!.idle();
    const res = await post(h, batchOf([
      { request: { method: 'GET', url: 'Patient?family=Batchsearchfam' } },
      { resource: { resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: 'Patient?identifier=urn:bs|1' } }, request: { method: 'POST', url: 'Encounter' } },
      { request: { method: 'GET', url: 'Patient/b-s1/_history' } },
    ])).expect(200);
    assert.equal(res.body.entry[0].response.status, '200 OK');
    assert.equal(res.body.entry[0].resource.type, 'searchset');
    assert.deepEqual(res.body.entry[0].resource.entry.map((e: any) => e.resource.id), ['b-s1']);
    const encId = res.body.entry[1].response.location.split('/')[1];
    assert.equal(JSON.parse(h.replica.current(`Encounter/${encId}`)!.body!).subject.reference, 'Patient/b-s1');
    assert.equal(res.body.entry[2].resource.type, 'history');
  });
});

describe('batch Bundles: conditional reads and FHIRPath Patch entries', () => {
  test('ifNoneMatch and ifModifiedSince on GET give 304; HEAD has no resource; a FHIRPath Patch entry applies', async () => {
    const h = await makeHarness();
    try {
      await request(h.app).put('/fhir/Patient/c1').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', id: 'c1', gender: 'male' })).expect(201);
      await request(h.app).put('/fhir/Patient/c2').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', id: 'c2', gender: 'male' })).expect(201);
      const v = h.replica.current('Patient/c1')!;
      // The PATCH (of another patient: writes run before GETs) is processed first.
      const params = { resourceType: 'Parameters', parameter: [{ name: 'operation', part: [{ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Patient.gender' }, { name: 'value', valueCode: 'female' }] }] };
      const res = await post(h, batchOf([
        { request: { method: 'GET', url: 'Patient/c1', ifNoneMatch: `W/"${v.versionId}"` } },
        { request: { method: 'GET', url: 'Patient/c1', ifModifiedSince: new Date(Date.parse(v.lastUpdated) + 60_000).toUTCString() } },
        { request: { method: 'GET', url: 'Patient/c1', ifModifiedSince: new Date(Date.parse(v.lastUpdated) - 60_000).toISOString() } },
        { request: { method: 'HEAD', url: 'Patient/c1' } },
        { resource: params, request: { method: 'PATCH', url: 'Patient/c2' } },
      ])).expect(200);
      assert.deepEqual(res.body.entry.map((e: any) => e.response.status), ['304 Not Modified', '304 Not Modified', '200 OK', '200 OK', '200 OK']);
      assert.equal(res.body.entry[3].resource, undefined);
      assert.equal(res.body.entry[3].response.etag, `W/"${v.versionId}"`);
      assert.equal(res.body.entry[4].resource.gender, 'female');
      assert.equal(JSON.parse(h.replica.current('Patient/c2')!.body!).gender, 'female');
    } finally {
      await h.close();
    }
  });
});

/** A Synthea patient as Synthea writes a transaction Bundle: urn:uuid fullUrls, conditional references to shared resources. */
function syntheaPatientBundles(dir: string): { shared: object; patient: object; counts: Record<string, number>; patientId: string } {
  const read = (type: string): any[] => {
    const f = join(dir, `${type}.000.ndjson`);
    return existsSync(f) ? readFileSync(f, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l)) : [];
  };
  const clinical = ['Encounter', 'Condition', 'Observation', 'Procedure', 'Immunization', 'AllergyIntolerance', 'MedicationRequest', 'Device', 'DocumentReference'];
  const all = new Map(clinical.map((t) => [t, read(t)]));
  const patients = read('Patient');
  // The patient with the fewest resources that still has encounters and conditions keeps the test quick.
  const own = (p: any) => [...all.values()].flat().filter((r) => JSON.stringify(r).includes(`"Patient/${p.id}"`));
  const ranked = patients.map((p) => ({ p, rs: own(p) })).filter(({ rs }) => rs.some((r) => r.resourceType === 'Encounter') && rs.some((r) => r.resourceType === 'Condition'));
  ranked.sort((a, b) => a.rs.length - b.rs.length);
  const { p: patient, rs } = ranked[0]!;
  const urn = (type: string, id: string) => `urn:uuid:${id}`;
  const local = new Map<string, string>([[`Patient/${patient.id}`, urn('Patient', patient.id)], ...rs.map((r): [string, string] => [`${r.resourceType}/${r.id}`, urn(r.resourceType, r.id)])]);
  const patientIdentifier = patient.identifier.find((i: any) => i.system === 'https://github.com/synthetichealth/synthea');
  let n = 0;
  const rewriteRefs = (v: any): any => {
    if (Array.isArray(v)) return v.map(rewriteRefs);
    if (v && typeof v === 'object') {
      const o: any = {};
      for (const [k, x] of Object.entries(v)) {
        if (k === 'reference' && typeof x === 'string' && x === `Patient/${patient.id}` && n++ % 2 === 1) o[k] = `Patient?identifier=${patientIdentifier.system}|${patientIdentifier.value}`;
        else o[k] = k === 'reference' && typeof x === 'string' && local.has(x) ? local.get(x) : rewriteRefs(x);
      }
      return o;
    }
    return v;
  };
  const entry = [patient, ...rs].map((r) => ({ fullUrl: local.get(`${r.resourceType}/${r.id}`), resource: rewriteRefs(r), request: { method: 'POST', url: r.resourceType } }));
  // The shared resources the patient's references name by identifier (Synthea's hospital and practitioner bundles).
  const wanted = new Set<string>();
  JSON.stringify(entry).replace(/"reference":"((?:Practitioner|Organization|Location|PractitionerRole)\?[^"]+)"/g, (_m, ref: string) => (wanted.add(ref), ''));
  const sharedEntries: object[] = [];
  for (const type of ['Organization', 'Location', 'Practitioner', 'PractitionerRole']) {
    for (const r of read(type)) {
      const hit = (r.identifier ?? []).some((i: any) => wanted.has(`${type}?identifier=${i.system}|${i.value}`));
      if (!hit) continue;
      const ident = r.identifier[0];
      sharedEntries.push({ fullUrl: `urn:uuid:${r.id}`, resource: r, request: { method: 'POST', url: type, ifNoneExist: `identifier=${ident.system}|${ident.value}` } });
    }
  }
  const counts: Record<string, number> = {};
  for (const e of entry) counts[e.resource.resourceType] = (counts[e.resource.resourceType] ?? 0) + 1;
  return { shared: { resourceType: 'Bundle', type: 'transaction', entry: sharedEntries }, patient: { resourceType: 'Bundle', type: 'transaction', entry }, counts, patientId: patient.id };
}

describe('a Synthea patient transaction through a running network', () => {
  test('imports whole, reaches both hospitals\' FHIR servers; a failing transaction changes nothing', { skip: SYNTHEA_SKIP }, async () => {
    const { shared, patient, counts } = syntheaPatientBundles(SYNTHEA_DIR);
    const { startNetwork } = await import('../src/node/network.ts');
    const net = await startNetwork({ hospitals: 2, redisUrl: REDIS_URL, batchDelayMs: 5, hospitalPollIntervalMs: 0 });
    try {
      const [a, b] = net.members as [typeof net.members[0], typeof net.members[0]];
      const send = (bundle: object) => fetch(a.gateway, { method: 'POST', headers: { 'Content-Type': FHIR, Prefer: 'return=minimal' }, body: JSON.stringify(bundle) });
      const s = await send(shared);
      assert.equal(s.status, 200, await s.clone().text());
      const t0 = Date.now();
      const res = await send(patient);
      const body: any = await res.json();
      assert.equal(res.status, 200, JSON.stringify(body).slice(0, 2000));
      const total = Object.values(counts).reduce((x, y) => x + y, 0);
      assert.equal(body.entry.length, total);
      assert.ok(body.entry.every((e: any) => e.response.status === '201 Created'), 'every entry created');
      const ids = body.entry.map((e: any) => e.response.location.split('/_history/')[0] as string);
      // The node's store holds every resource with its references resolved to node ids.
      const patientKey = ids[0]!;
      for (const key of ids) {
        const cur = a.node.replica.current(key);
        assert.ok(cur && !cur.deleted, `${key} stored`);
        assert.doesNotMatch(cur.body!, /"reference":"(urn:uuid:|[A-Za-z]+\?)/, `${key} has no unresolved reference`);
      }
      const enc = JSON.parse(a.node.replica.current(ids.find((k: string) => k.startsWith('Encounter/'))!)!.body!);
      assert.equal(enc.subject.reference, patientKey);
      console.log(`# Synthea transaction: ${total} entries (${JSON.stringify(counts)}) in ${Date.now() - t0} ms`);
      // Reaches both hospital servers over HTTP (A through its outbox, B through gossip and its outbox).
      const deadline = Date.now() + 120_000;
      const held = async (base: string) => {
        let n = 0;
        for (const [type, c] of Object.entries(counts)) {
          const r: any = await (await fetch(`${base}/${type}?_count=${c + 10}&_summary=count`)).json();
          n += Math.min(r.total ?? 0, c);
        }
        return n;
      };
      let inA = 0;
      let inB = 0;
      while (Date.now() < deadline) {
        await net.quiet();
        [inA, inB] = [await held(a.fhirServer), await held(b.fhirServer)];
        if (inA >= total && inB >= total) break;
        await new Promise((r) => setTimeout(r, 250));
      }
      assert.equal(inA, total, 'hospital A holds the whole patient');
      assert.equal(inB, total, 'hospital B holds the whole patient');
      // A failing transaction (its last entry invalid) changes nothing anywhere.
      const journalA = a.hospital.repo.journalSize;
      const keysA = [...a.node.replica.keys()].length;
      const localA = a.node.stats().localUpdates;
      const bad = await send({ resourceType: 'Bundle', type: 'transaction', entry: [
        { fullUrl: 'urn:uuid:eeeeeeee-0000-4000-8000-000000000001', resource: { resourceType: 'Patient', gender: 'female' }, request: { method: 'POST', url: 'Patient' } },
        { resource: { resourceType: 'Condition', subject: { reference: 'urn:uuid:eeeeeeee-0000-4000-8000-000000000001' }, clinicalStatus: { coding: [{ code: 'nonsense' }] }, onsetDateTime: 'yesterday' }, request: { method: 'POST', url: 'Condition' } },
      ] });
      assert.equal(bad.status, 422);
      await net.quiet();
      assert.equal([...a.node.replica.keys()].length, keysA);
      assert.equal(a.node.stats().localUpdates, localA, 'nothing gossiped');
      assert.equal(a.hospital.repo.journalSize, journalA, 'nothing sent to the hospital');
    } finally {
      await net.stop();
    }
  });
});
