import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { canonicalStringify, isJsonObject, parseFhirJson } from '../src/fhir/json.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import {
  comparableForm,
  HospitalClient,
  HospitalError,
  MemoryHospitalIdMap,
  startMedplumHospital,
} from '../src/hospital/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';

function fhir(text: string): FhirJsonObject {
  const v = parseFhirJson(text);
  assert.ok(isJsonObject(v));
  return v;
}

async function getJson(url: string): Promise<{ status: number; contentType: string | null; text: string; body: Record<string, unknown> }> {
  const res = await fetch(url, { headers: { accept: 'application/fhir+json' } });
  const text = await res.text();
  return { status: res.status, contentType: res.headers.get('content-type'), text, body: JSON.parse(text) as Record<string, unknown> };
}

async function rejection(p: Promise<unknown>): Promise<HospitalError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof HospitalError, `expected HospitalError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected a rejection');
}

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

const patientText = '{"resourceType":"Patient","id":"pat-1","active":true,"name":[{"family":"Tide","given":["Ada"]}],"birthDate":"1980-02-29"}';
const observationText =
  '{"resourceType":"Observation","id":"obs-1","status":"final","code":{"text":"weight"},' +
  '"subject":{"reference":"Patient/pat-1","display":"Ada"},' +
  '"performer":[{"reference":"https://elsewhere.example/fhir/Practitioner/dr-1"}],' +
  '"valueQuantity":{"value":71.50,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}}';

describe('hospital: Medplum stand-in + HospitalClient', () => {
  let hospA: MedplumHospital;
  let hospB: MedplumHospital;
  let hospC: MedplumHospital; // refuses update-as-create, like Medplum's hosted server
  let clientA: HospitalClient;
  let clientB: HospitalClient;
  let clientC: HospitalClient;

  before(async () => {
    [hospA, hospB, hospC] = await Promise.all([
      startMedplumHospital({ port: 0, name: 'A' }),
      startMedplumHospital({ port: 0, name: 'B' }),
      startMedplumHospital({ port: 0, name: 'C', allowUpdateCreate: false }),
    ]);
    clientA = new HospitalClient({ baseUrl: hospA.url, timeoutMs: 5000 });
    clientB = new HospitalClient({ baseUrl: `${hospB.url}/`, timeoutMs: 5000 });
    clientC = new HospitalClient({ baseUrl: hospC.url, timeoutMs: 5000 });
  });

  after(async () => {
    await Promise.all([hospA?.close(), hospB?.close(), hospC?.close()]);
  });

  it('serves FHIR JSON under /fhir with a CapabilityStatement', async () => {
    assert.match(hospA.url, /^http:\/\/127\.0\.0\.1:\d+\/fhir$/);
    const meta = await getJson(`${hospA.url}/metadata`);
    assert.equal(meta.status, 200);
    assert.match(meta.contentType ?? '', /^application\/fhir\+json/);
    assert.equal(meta.body['resourceType'], 'CapabilityStatement');
    assert.deepEqual(meta.body['implementation'], { description: 'A', url: hospA.url });
    const missing = await getJson(`${hospA.url}/Patient/nope`);
    assert.equal(missing.status, 404);
    assert.equal(missing.body['resourceType'], 'OperationOutcome');

    const put = (body: string, type = 'application/json') =>
      fetch(`${hospA.url}/Patient/raw-1`, { method: 'PUT', headers: { 'content-type': type }, body });
    const created = await put('{"resourceType":"Patient","id":"raw-1"}');
    assert.equal(created.status, 201, 'update-as-create answers 201');
    assert.match(created.headers.get('location') ?? '', /\/fhir\/Patient\/raw-1\/_history\//);
    assert.equal((await put('{"resourceType":"Patient","id":"raw-1","active":true}', 'application/fhir+json')).status, 200);
    assert.equal((await put('{"resourceType":"Patient","id":"raw-1"}', 'text/plain')).status, 415);
    const malformed = await put('{"resourceType":"Patient","name":"Secret');
    assert.equal(malformed.status, 400);
    assert.doesNotMatch(await malformed.text(), /Secret/);
    assert.equal((await put('{"resourceType":"Patient","id":"other"}')).status, 400, 'body id must match the URL');

    const posted = await fetch(`${hospA.url}/Patient`, {
      method: 'POST',
      headers: { 'content-type': 'application/fhir+json' },
      body: '{"resourceType":"Patient","id":"client-chosen"}',
    });
    assert.equal(posted.status, 201);
    const postedBody = (await posted.json()) as { id: string };
    assert.notEqual(postedBody.id, 'client-chosen', 'create ignores the client id');

    const formSearch = await fetch(`${hospA.url}/Patient/_search`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: '_id=raw-1',
    });
    assert.equal(formSearch.status, 200);
    assert.equal(((await formSearch.json()) as { total: number }).total, 1);

    for (const id of ['raw-1', postedBody.id]) {
      assert.equal((await fetch(`${hospA.url}/Patient/${id}`, { method: 'DELETE' })).status, 200);
    }
  });

  it('upserts a Patient with a client id (update-as-create) and reads it back over HTTP', async () => {
    const { hospitalId } = await clientA.upsert(fhir(patientText));
    assert.equal(hospitalId, 'pat-1');

    const raw = await getJson(`${hospA.url}/Patient/pat-1`);
    assert.equal(raw.status, 200);
    assert.match(raw.contentType ?? '', /^application\/fhir\+json/);
    assert.equal(raw.body['id'], 'pat-1');
    assert.deepEqual(raw.body['name'], [{ family: 'Tide', given: ['Ada'] }]);
    const meta = raw.body['meta'] as Record<string, unknown>;
    assert.equal(typeof meta['versionId'], 'string');
    assert.equal(typeof meta['lastUpdated'], 'string');
    assert.deepEqual(Object.keys(meta).sort(), ['lastUpdated', 'versionId'], 'MemoryRepository adds only versionId and lastUpdated');

    const read = await clientA.read('Patient', 'pat-1');
    assert.ok(read);
    assert.equal(read['id'], 'pat-1');
    assert.equal(read['birthDate'], '1980-02-29');
    assert.equal(comparableForm(read), comparableForm(fhir(patientText)));
  });

  it('updates an existing resource in place with a new version', async () => {
    const before = await clientA.read('Patient', 'pat-1');
    const updated = fhir(patientText);
    updated['active'] = false;
    updated['gender'] = 'female';
    const written = await clientA.upsert(updated);
    assert.equal(written.hospitalId, 'pat-1');
    assert.equal(typeof written.versionId, 'string', 'upsert reports the hospital versionId');

    const after = await clientA.read('Patient', 'pat-1');
    assert.ok(before && after);
    assert.equal(after['active'], false);
    assert.equal(after['gender'], 'female');
    const v1 = (before['meta'] as FhirJsonObject)['versionId'];
    const v2 = (after['meta'] as FhirJsonObject)['versionId'];
    assert.notEqual(v1, v2);
    assert.equal(written.versionId, v2, 'the reported versionId is the stored one');
    const bundle = await clientA.search('Patient', { _id: 'pat-1' });
    assert.equal(bundle['total']?.toString(), '1');
    // Put the original back for the comparisons below.
    await clientA.upsert(fhir(patientText));
  });

  it('keeps references to another resource, and sends decimals lexically (Medplum re-serializes them)', async () => {
    await clientA.upsert(fhir(observationText));
    const raw = await getJson(`${hospA.url}/Observation/obs-1`);
    assert.deepEqual(raw.body['subject'], { reference: 'Patient/pat-1', display: 'Ada' });
    assert.deepEqual(raw.body['performer'], [{ reference: 'https://elsewhere.example/fhir/Practitioner/dr-1' }]);
    // express.json/JSON.parse on the Medplum side: 71.50 is stored and served as 71.5.
    assert.match(raw.text, /"value":71\.5[,}]/);

    const read = await clientA.read('Observation', 'obs-1');
    assert.ok(read);
    assert.equal(((read['subject'] as FhirJsonObject)['reference']), 'Patient/pat-1');
    assert.equal(canonicalStringify((read['valueQuantity'] as FhirJsonObject)['value']), '71.5');
    // Reading the reference target through the client works too.
    assert.equal((await clientA.read('Patient', 'pat-1'))?.['id'], 'pat-1');
    // Node form vs hospital form differ only by the decimal's lexical form.
    assert.notEqual(comparableForm(read), comparableForm(fhir(observationText)));
    assert.equal(comparableForm(read, { normalizeNumbers: true }), comparableForm(fhir(observationText), { normalizeNumbers: true }));
  });

  it('puts decimals on the wire in their lexical form', async () => {
    let received = '';
    const echo = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        received = Buffer.concat(chunks).toString('utf8');
        res.writeHead(200, { 'content-type': 'application/fhir+json' });
        res.end(received);
      });
    });
    const port = await listen(echo);
    try {
      const client = new HospitalClient({ baseUrl: `http://127.0.0.1:${port}/fhir`, timeoutMs: 5000 });
      await client.upsert(fhir(observationText));
      assert.match(received, /"value":71\.50[,}]/);
      assert.doesNotMatch(received, /isLosslessNumber/);
    } finally {
      await closeServer(echo);
    }
  });

  it('readAll finds every resource, following next links', async () => {
    const all = await clientA.readAll(['Patient', 'Observation']);
    assert.deepEqual(
      all.map((r) => `${String(r['resourceType'])}/${String(r['id'])}`),
      ['Patient/pat-1', 'Observation/obs-1'],
    );

    for (let i = 0; i < 5; i++) {
      await clientA.upsert({ resourceType: 'Patient', id: `page-${i}`, name: [{ family: `P${i}` }] });
    }
    const firstPage = await getJson(`${hospA.url}/Patient?_count=2`);
    const links = firstPage.body['link'] as Array<{ relation: string; url: string }>;
    assert.ok(links.some((l) => l.relation === 'next'), 'stand-in emits next links');

    const paging = new HospitalClient({ baseUrl: hospA.url, pageSize: 2, idMap: clientA.idMap });
    const patients = await paging.readAll(['Patient']);
    assert.deepEqual(
      patients.map((r) => r['id']),
      ['page-0', 'page-1', 'page-2', 'page-3', 'page-4', 'pat-1'],
    );
    for (let i = 0; i < 5; i++) await clientA.remove('Patient', `page-${i}`);
    assert.equal((await clientA.readAll(['Patient'])).length, 1);
  });

  it('comparableForm is equal across two Medplum servers for the same resource', async () => {
    await clientB.upsert(fhir(patientText));
    await clientB.upsert(fhir(observationText));
    const a = await clientA.readAll(['Patient', 'Observation']);
    const b = await clientB.readAll(['Patient', 'Observation']);
    assert.equal(a.length, 2);
    assert.equal(b.length, 2);
    for (let i = 0; i < a.length; i++) {
      assert.notEqual(canonicalStringify(a[i]), canonicalStringify(b[i]), 'raw forms differ in meta.versionId/lastUpdated');
      assert.equal(comparableForm(a[i]!), comparableForm(b[i]!));
    }
    assert.equal(clientA.comparableForm(a[0]!), comparableForm(a[0]!));
  });

  it('comparableForm drops server-managed meta (incl. Medplum fields) but keeps client meta', () => {
    const withMeta = {
      resourceType: 'Patient',
      id: 'x',
      meta: {
        versionId: '3',
        lastUpdated: '2024-01-01T00:00:00Z',
        author: { reference: 'Practitioner/1' },
        project: 'p',
        compartment: [{ reference: 'Patient/x' }],
        accounts: [{ reference: 'Organization/o' }],
        tag: [{ code: 't' }],
      },
    };
    assert.equal(comparableForm(withMeta), '{"resourceType":"Patient","id":"x","meta":{"tag":[{"code":"t"}]}}');
    assert.equal(comparableForm({ resourceType: 'Patient', id: 'x', meta: { versionId: '1' } }), '{"resourceType":"Patient","id":"x"}');
    assert.equal(comparableForm(fhir('{"resourceType":"Basic","id":"x","extension":[{"url":"u","valueDecimal":1.50}]}')).includes('1.50'), true);
  });

  it('falls back to POST when the server refuses client ids, and maps ids both ways', async () => {
    const { hospitalId: patientHid } = await clientC.upsert(fhir(patientText));
    assert.notEqual(patientHid, 'pat-1');
    assert.equal(clientC.idMap.toHospital('Patient/pat-1'), `Patient/${patientHid}`);

    const { hospitalId: obsHid } = await clientC.upsert(fhir(observationText));
    assert.notEqual(obsHid, 'obs-1');
    const raw = await getJson(`${hospC.url}/Observation/${obsHid}`);
    assert.deepEqual(raw.body['subject'], { reference: `Patient/${patientHid}`, display: 'Ada' }, 'reference rewritten to the hospital id');

    const read = await clientC.read('Observation', 'obs-1');
    assert.ok(read);
    assert.equal(read['id'], 'obs-1');
    assert.equal((read['subject'] as FhirJsonObject)['reference'], 'Patient/pat-1');

    // An update goes to the mapped id: no duplicate.
    const changed = fhir(patientText);
    changed['gender'] = 'other';
    assert.equal((await clientC.upsert(changed)).hospitalId, patientHid);
    const search = await clientC.search('Patient', { _id: 'pat-1' });
    assert.equal(search['total']?.toString(), '1');
    const entry = (search['entry'] as FhirJsonObject[])[0]!;
    assert.equal((entry['resource'] as FhirJsonObject)['id'], 'pat-1');
    const bySubject = await clientC.search('Observation', { subject: 'Patient/pat-1' });
    assert.equal(bySubject['total']?.toString(), '1');

    const all = await clientC.readAll(['Patient', 'Observation']);
    assert.deepEqual(all.map((r) => r['id']), ['pat-1', 'obs-1']);
    // Same content as hospital A apart from the update above.
    assert.equal(comparableForm(all[1]!), comparableForm((await clientA.read('Observation', 'obs-1'))!));

    // A node id that a hospital-assigned id happens to equal is not confused with it.
    assert.equal(await clientC.read('Patient', patientHid), undefined);

    await clientC.remove('Observation', 'obs-1');
    assert.equal(await clientC.read('Observation', 'obs-1'), undefined);
    assert.equal(clientC.idMap.toHospital('Observation/obs-1'), undefined);
    assert.equal((await getJson(`${hospC.url}/Observation/${obsHid}`)).status, 404);
  });

  it('remove makes read return undefined, and is idempotent', async () => {
    await clientB.remove('Observation', 'obs-1');
    assert.equal(await clientB.read('Observation', 'obs-1'), undefined);
    assert.equal((await getJson(`${hospB.url}/Observation/obs-1`)).status, 404);
    await clientB.remove('Observation', 'obs-1');
    assert.equal(await clientB.read('Observation', 'never-existed'), undefined);
  });

  it('an invalid resource is rejected with ERR_HOSPITAL_REJECTED, status and issues, without PHI in the message', async () => {
    const bad = fhir('{"resourceType":"Patient","id":"bad-1","birthDate":"Ada-secret-date"}');
    const err = await rejection(clientA.upsert(bad));
    assert.equal(err.code, 'ERR_HOSPITAL_REJECTED');
    assert.equal(err.status, 400);
    assert.equal(err.operation, 'update');
    assert.equal(err.resourceType, 'Patient');
    assert.ok(err.issues.length > 0);
    assert.equal(err.issues[0]?.severity, 'error');
    assert.deepEqual(err.issues[0]?.expression, ['Patient.birthDate']);
    assert.doesNotMatch(err.message, /secret|bad-1/);
    assert.equal(await clientA.read('Patient', 'bad-1'), undefined);

    const unknownProp = await rejection(clientA.upsert({ resourceType: 'Patient', id: 'bad-2', nickname: 'x' }));
    assert.equal(unknownProp.code, 'ERR_HOSPITAL_REJECTED');
    assert.equal(unknownProp.status, 400);

    await assert.rejects(clientA.upsert({ resourceType: 'Patient' }), TypeError);
    await assert.rejects(clientA.upsert({ resourceType: 'Patient', id: '../../etc' }), TypeError);
    await assert.rejects(clientA.readAll(['patient']), TypeError);
    await assert.rejects(clientA.read('Patient', 'a/b'), TypeError);
  });

  it('an unreachable URL gives ERR_HOSPITAL_UNREACHABLE', async () => {
    const probe = createServer();
    const port = await listen(probe);
    await closeServer(probe); // nothing listens on this port now
    const client = new HospitalClient({ baseUrl: `http://127.0.0.1:${port}/fhir`, timeoutMs: 2000 });
    const err = await rejection(client.read('Patient', 'pat-1'));
    assert.equal(err.code, 'ERR_HOSPITAL_UNREACHABLE');
    assert.equal(err.status, undefined);
    assert.match(err.message, /ECONNREFUSED/);
    const err2 = await rejection(client.upsert(fhir(patientText)));
    assert.equal(err2.code, 'ERR_HOSPITAL_UNREACHABLE');
  });

  it('a hospital that does not answer in timeoutMs is ERR_HOSPITAL_UNREACHABLE', async () => {
    const silent = createServer(() => {
      /* never responds */
    });
    const port = await listen(silent);
    try {
      const client = new HospitalClient({ baseUrl: `http://127.0.0.1:${port}/fhir`, timeoutMs: 200 });
      const started = Date.now();
      const err = await rejection(client.readAll(['Patient']));
      assert.equal(err.code, 'ERR_HOSPITAL_UNREACHABLE');
      assert.match(err.message, /200 ms/);
      assert.ok(Date.now() - started < 3000);
    } finally {
      await closeServer(silent);
    }
  });

  it('503 from a proxy is UNREACHABLE with the status; bodies over 64 KiB go through', async () => {
    const proxy = createServer((_req, res) => {
      res.writeHead(503, { 'content-type': 'text/html' });
      res.end('<html>down</html>');
    });
    const port = await listen(proxy);
    try {
      const err = await rejection(new HospitalClient({ baseUrl: `http://127.0.0.1:${port}/fhir` }).read('Patient', 'x'));
      assert.equal(err.code, 'ERR_HOSPITAL_UNREACHABLE');
      assert.equal(err.status, 503);
    } finally {
      await closeServer(proxy);
    }

    const big = { resourceType: 'Patient', id: 'big-1', name: [{ family: 'Big', given: ['x'.repeat(200_000)] }] };
    assert.equal((await clientB.upsert(big)).hospitalId, 'big-1');
    assert.equal(comparableForm((await clientB.read('Patient', 'big-1'))!), comparableForm(big));
    await clientB.remove('Patient', 'big-1');
  });

  it('concurrent upserts of one new resource on an id-assigning server create it once', async () => {
    const client = new HospitalClient({ baseUrl: hospC.url });
    const results = await Promise.all([1, 2, 3].map((n) => client.upsert({ resourceType: 'Patient', id: 'conc-1', birthDate: `200${n}-01-01` })));
    assert.equal(new Set(results.map((r) => r.hospitalId)).size, 1);
    const found = await client.search('Patient', { _id: 'conc-1' });
    assert.equal(found['total']?.toString(), '1');
    assert.equal((await client.read('Patient', 'conc-1'))?.['birthDate'], '2003-01-01');
  });
});

describe('MemoryHospitalIdMap', () => {
  it('stays one-to-one and round-trips through entries()', () => {
    const map = new MemoryHospitalIdMap();
    map.set('Patient/a', 'Patient/x');
    map.set('Patient/b', 'Patient/y');
    map.set('Patient/a', 'Patient/z'); // re-pair a
    assert.equal(map.toHospital('Patient/a'), 'Patient/z');
    assert.equal(map.toNode('Patient/x'), undefined);
    map.set('Patient/c', 'Patient/y'); // steal y from b
    assert.equal(map.toHospital('Patient/b'), undefined);
    assert.equal(map.toNode('Patient/y'), 'Patient/c');
    const copy = new MemoryHospitalIdMap(map.entries());
    assert.deepEqual(copy.entries().sort(), [
      ['Patient/a', 'Patient/z'],
      ['Patient/c', 'Patient/y'],
    ]);
    copy.delete('Patient/a');
    assert.equal(copy.toNode('Patient/z'), undefined);
    assert.equal(copy.size, 1);
  });

  it('HospitalClient rejects bad options', () => {
    assert.throws(() => new HospitalClient({ baseUrl: 'not a url' }), TypeError);
    assert.throws(() => new HospitalClient({ baseUrl: 'ftp://h/fhir' }), TypeError);
    assert.throws(() => new HospitalClient({ baseUrl: 'http://h/fhir', timeoutMs: 0 }), TypeError);
  });
});
