/**
 * FHIR REST edge cases left open by the new-user trial (third round), over real HTTP against a
 * node served by the express adapter (test/fhir-harness.ts), no mocks:
 *
 * 1. `Location` of a create is absolute, `[base]/[type]/[id]/_history/[vid]`
 *    (https://hl7.org/fhir/R4/http.html#create, #update), built from the request's protocol and
 *    `Host` (no proxy is trusted, so `X-Forwarded-*` is ignored); a client that resolves it
 *    against the request URL reads the created version. In a transaction-response Bundle,
 *    `entry.response.location` stays relative to the server base, as in R4's own example
 *    (https://hl7.org/fhir/R4/bundle-response.json.html).
 * 2. An operation on a type (`GET [type]/$op`) is not a read of an id named `$op`: 501 with an
 *    OperationOutcome when the operation is not served, like the POST forms; a served operation
 *    reached with a method it is not invoked with is 405 (https://hl7.org/fhir/R4/operations.html).
 * 3. The 415 diagnostics name both accepted media types.
 * 4. The `If-Match` 400 diagnostics give a realistic ETag example (versionIds here are `2.eca343c4`).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import request from 'supertest';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';

/** Asserts an OperationOutcome with the given status and issue code whose diagnostics match. */
function assertOutcome(res: { status: number; body: any; text: string }, status: number, code: string, diagnostics: RegExp, label = ''): void {
  assert.equal(res.status, status, `${label}: ${res.text}`);
  assert.equal(res.body.resourceType, 'OperationOutcome', label);
  assert.equal(res.body.issue[0].code, code, label);
  assert.match(res.body.issue[0].diagnostics ?? '', diagnostics, label);
}

describe('Location of a create is absolute: [base]/[type]/[id]/_history/[vid]', () => {
  let h: Harness;
  let server: Server;
  let base: string;
  before(async () => {
    h = await makeHarness();
    server = h.app.listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
  });
  after(async () => {
    await new Promise((r) => server.close(r));
    await h?.close();
  });

  it('PUT (create) answers an absolute Location that a client can follow', async () => {
    const url = `${base}/Patient/loc1`;
    const res = await fetch(url, { method: 'PUT', headers: { 'Content-Type': FHIR }, body: JSON.stringify({ resourceType: 'Patient', id: 'loc1', gender: 'female' }) });
    assert.equal(res.status, 201);
    const vid = h.replica.current('Patient/loc1')!.versionId;
    const location = res.headers.get('location');
    assert.equal(location, `${base}/Patient/loc1/_history/${vid}`);
    // A client resolves the header against the request URL (RFC 7231 §7.1.2).
    const followed = await fetch(new URL(location!, url));
    assert.equal(followed.status, 200);
    assert.equal(((await followed.json()) as any).meta.versionId, vid);
    // An update (200) has no Location.
    const upd = await fetch(url, { method: 'PUT', headers: { 'Content-Type': FHIR }, body: JSON.stringify({ resourceType: 'Patient', id: 'loc1', gender: 'male' }) });
    assert.equal(upd.status, 200);
    assert.equal(upd.headers.get('location'), null);
  });

  it('POST (create), conditional update and Prefer: return=minimal answer an absolute Location', async () => {
    const post = await fetch(`${base}/Patient`, { method: 'POST', headers: { 'Content-Type': 'application/json', Prefer: 'return=minimal' }, body: '{"resourceType":"Patient"}' });
    assert.equal(post.status, 201);
    assert.match(post.headers.get('location') ?? '', new RegExp(`^${base}/Patient/[0-9a-f-]{36}/_history/[^/]+$`));
    const cond = await fetch(`${base}/Patient?identifier=urn:loc|c1`, { method: 'PUT', headers: { 'Content-Type': FHIR }, body: '{"resourceType":"Patient","identifier":[{"system":"urn:loc","value":"c1"}]}' });
    assert.equal(cond.status, 201);
    const loc = cond.headers.get('location') ?? '';
    assert.match(loc, new RegExp(`^${base}/Patient/[^/]+/_history/[^/]+$`));
    assert.equal((await fetch(loc)).status, 200);
  });

  it('X-Forwarded-Proto and X-Forwarded-Host are not trusted (no proxy is configured)', async () => {
    const res = await request(h.app).put('/fhir/Patient/loc2').set('Host', 'node-a.example:8443').set('X-Forwarded-Proto', 'https').set('X-Forwarded-Host', 'evil.example')
      .set('Content-Type', FHIR).send('{"resourceType":"Patient","id":"loc2"}').expect(201);
    assert.match(res.headers.location ?? '', /^http:\/\/node-a\.example:8443\/fhir\/Patient\/loc2\/_history\/[^/]+$/);
  });

  it('a transaction-response keeps entry.response.location relative to the base, fullUrl absolute', async () => {
    const bundle = { resourceType: 'Bundle', type: 'transaction', entry: [{ fullUrl: 'urn:uuid:7f0c8a2e-0000-4000-8000-000000000001', resource: { resourceType: 'Patient' }, request: { method: 'POST', url: 'Patient' } }] };
    const res = await fetch(base, { method: 'POST', headers: { 'Content-Type': FHIR }, body: JSON.stringify(bundle) });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('location'), null);
    const e = ((await res.json()) as any).entry[0];
    assert.match(e.response.location, /^Patient\/[0-9a-f-]{36}\/_history\/[^/]+$/);
    assert.equal(e.fullUrl, `${base}/${e.response.location.split('/_history/')[0]}`);
  });
});

describe('[type]/$operation is an operation, not a read of an id', () => {
  let h: Harness;
  before(async () => {
    h = await makeHarness();
    await request(h.app).put('/fhir/Patient/op1').set('Content-Type', FHIR).send('{"resourceType":"Patient","id":"op1"}').expect(201);
  });
  after(async () => {
    await h?.close();
  });

  it('GET, PUT, DELETE and PATCH on [type]/$op that is not served are 501 and change nothing', async () => {
    const before = h.updates.length;
    const cases: Array<[string, () => request.Test, string]> = [
      ['GET /Patient/$everything', () => request(h.app).get('/fhir/Patient/$everything'), '$everything'],
      ['GET /Patient/$foo', () => request(h.app).get('/fhir/Patient/$foo'), '$foo'],
      ['GET /ConceptMap/$translate (no mapping)', () => request(h.app).get('/fhir/ConceptMap/$translate?code=x&system=urn:s'), '$translate'],
      ['PUT /Patient/$foo', () => request(h.app).put('/fhir/Patient/$foo').set('Content-Type', FHIR).send('{"resourceType":"Patient","id":"x"}'), '$foo'],
      ['DELETE /Patient/$foo', () => request(h.app).delete('/fhir/Patient/$foo'), '$foo'],
      ['PATCH /Patient/$foo', () => request(h.app).patch('/fhir/Patient/$foo').set('Content-Type', 'application/json-patch+json').send('[]'), '$foo'],
      ['PUT /Patient/op1/$foo', () => request(h.app).put('/fhir/Patient/op1/$foo').set('Content-Type', FHIR).send('{}'), '$foo'],
      ['DELETE /Patient/op1/$everything', () => request(h.app).delete('/fhir/Patient/op1/$everything'), '$everything'],
      ['GET /Patient/op1/$everything', () => request(h.app).get('/fhir/Patient/op1/$everything'), '$everything'],
      ['POST /Patient/$everything', () => request(h.app).post('/fhir/Patient/$everything').set('Content-Type', FHIR).send('{}'), '$everything'],
    ];
    for (const [what, make, op] of cases) {
      assertOutcome(await make(), 501, 'not-supported', new RegExp(`^Operation \\${op} is not supported`), what);
    }
    assert.equal(h.updates.length, before);
    assert.equal(h.replica.current('Patient/op1')!.deleted, false);
  });

  it('a served operation reached with a method it is not invoked with is 405, naming the method to use', async () => {
    const cases: Array<[string, () => request.Test, RegExp, string]> = [
      ['GET /Patient/$validate', () => request(h.app).get('/fhir/Patient/$validate'), /\$validate is invoked with POST/, 'POST'],
      ['DELETE /Patient/$validate', () => request(h.app).delete('/fhir/Patient/$validate'), /\$validate is invoked with POST/, 'POST'],
      ['DELETE /Patient/op1/$conflicts', () => request(h.app).delete('/fhir/Patient/op1/$conflicts'), /\$conflicts is invoked with GET/, 'GET'],
      ['GET /Patient/op1/$resolve-conflict', () => request(h.app).get('/fhir/Patient/op1/$resolve-conflict'), /\$resolve-conflict is invoked with POST/, 'POST'],
    ];
    for (const [what, make, diagnostics, allow] of cases) {
      const res = await make();
      assertOutcome(res, 405, 'not-supported', diagnostics, what);
      assert.equal(res.headers.allow, allow, `${what}: Allow`);
    }
    assert.equal(h.replica.current('Patient/op1')!.deleted, false);
  });

  it('the served operations and ordinary ids still work', async () => {
    await request(h.app).post('/fhir/Patient/$validate').set('Content-Type', FHIR).send('{"resourceType":"Patient"}').expect(200);
    const conflicts = await request(h.app).get('/fhir/Patient/op1/$conflicts').expect(200);
    assert.equal(conflicts.body.resourceType, 'Parameters');
    await request(h.app).get('/fhir/Patient/op1').expect(200);
    assertOutcome(await request(h.app).get('/fhir/Patient/bad!id'), 400, 'invalid', /Invalid resource id/, 'a bad id is still 400');
  });
});

describe('diagnostics of media type and If-Match errors', () => {
  let h: Harness;
  before(async () => {
    h = await makeHarness();
    await request(h.app).put('/fhir/Patient/d1').set('Content-Type', FHIR).send('{"resourceType":"Patient","id":"d1"}').expect(201);
  });
  after(async () => {
    await h?.close();
  });

  it('415 names both application/fhir+json and application/json', async () => {
    const cases: Array<[string, () => request.Test]> = [
      ['PUT', () => request(h.app).put('/fhir/Patient/d1').set('Content-Type', 'text/plain').send('{"resourceType":"Patient","id":"d1"}')],
      ['POST', () => request(h.app).post('/fhir/Patient').set('Content-Type', 'application/xml').send('<Patient/>')],
      ['POST $validate', () => request(h.app).post('/fhir/Patient/$validate').set('Content-Type', 'text/plain').send('{}')],
      ['POST Bundle', () => request(h.app).post('/fhir').set('Content-Type', 'text/plain').send('{}')],
      ['POST $resolve-conflict', () => request(h.app).post('/fhir/Patient/d1/$resolve-conflict').set('Content-Type', 'text/plain').send('{}')],
    ];
    for (const [what, make] of cases) {
      assertOutcome(await make(), 415, 'not-supported', /application\/fhir\+json.*application\/json/, what);
    }
  });

  it('an If-Match 400 shows an ETag example shaped like this node\'s versionIds', async () => {
    const vid = h.replica.current('Patient/d1')!.versionId;
    assert.match(vid, /^\d+\.[0-9a-f]{8}$/, 'versionIds look like 2.eca343c4');
    const res = await request(h.app).put('/fhir/Patient/d1').set('Content-Type', FHIR).set('If-Match', '12').send('{"resourceType":"Patient","id":"d1"}');
    assertOutcome(res, 400, 'invalid', /If-Match must be one ETag such as W\/"\d+\.[0-9a-f]{8}"/, 'If-Match');
    assert.doesNotMatch(res.body.issue[0].diagnostics, /W\/"12"/);
    const read = await request(h.app).get('/fhir/Patient/d1').set('If-None-Match', 'nope');
    assertOutcome(read, 400, 'invalid', /If-None-Match must be \* or a list of ETags such as W\/"\d+\.[0-9a-f]{8}"/, 'If-None-Match');
  });
});
