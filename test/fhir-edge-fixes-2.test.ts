/**
 * FHIR REST edge cases left open by the new-user trial (second round), over HTTP against a node
 * with a real Medplum stand-in hospital behind it (test/fhir-harness.ts), no mocks:
 *
 * 1. Conditional headers (https://hl7.org/fhir/R4/http.html#concurrency, #cread, #ccreate): an
 *    empty or malformed `If-Match`, `If-None-Match` or `If-Modified-Since` is 400 with an
 *    OperationOutcome and changes nothing; it is never taken as absent.
 * 2. PATCH errors (RFC 6902 JSON Patch, https://hl7.org/fhir/R4/fhirpatch.html FHIRPath Patch)
 *    name the failing operation by index, kind and path, and never echo values.
 * 3. Validation issues name the concrete choice element (`valueQuantity.value`, not
 *    `value[x].value`), in single writes, `$validate` and Bundles
 *    (https://hl7.org/fhir/R4/operationoutcome-definitions.html#OperationOutcome.issue.expression).
 * 4. Smaller gaps: `If-None-Match: *` and `If-Modified-Since` on read.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';

const JSON_PATCH = 'application/json-patch+json';
const SECRET = 'SECRET-4711';

const put = (h: Harness, path: string, body: object) =>
  request(h.app).put(`/fhir/${path}`).set('Content-Type', FHIR).send(JSON.stringify(body));

/** Asserts a 4xx OperationOutcome with the given status whose first issue's diagnostics match. */
function assertOutcome(res: request.Response, status: number, diagnostics: RegExp, label = ''): void {
  assert.equal(res.status, status, `${label}: ${res.text}`);
  assert.equal(res.body.resourceType, 'OperationOutcome', label);
  assert.match(res.body.issue[0].diagnostics ?? '', diagnostics, label);
}

describe('conditional headers: empty or malformed values are 400, never ignored', () => {
  let h: Harness;
  let vid: string;
  before(async () => {
    h = await makeHarness({ hospital: true });
    await put(h, 'Patient/ch1', { resourceType: 'Patient', id: 'ch1', gender: 'female', identifier: [{ system: 'http://example.org/mrn', value: 'ch1' }] }).expect(201);
    vid = h.replica.current('Patient/ch1')!.versionId;
  });
  after(async () => {
    await h?.close();
  });

  const unchanged = async (run: () => Promise<void>) => {
    const before = h.updates.length;
    const cur = h.replica.current('Patient/ch1')!.versionId;
    await run();
    assert.equal(h.updates.length, before, 'nothing was written');
    assert.equal(h.replica.current('Patient/ch1')!.versionId, cur);
  };

  for (const value of ['', '   ', 'garbage', 'W/12', 'W/""', '*', 'W/"1", W/"2"']) {
    it(`If-Match ${JSON.stringify(value)} is 400 on update, patch, delete, conditional update and create`, async () => {
      await unchanged(async () => {
        const body = { resourceType: 'Patient', id: 'ch1', gender: 'male' };
        assertOutcome(await put(h, 'Patient/ch1', body).set('If-Match', value), 400, /If-Match/, 'PUT');
        assertOutcome(await request(h.app).patch('/fhir/Patient/ch1').set('Content-Type', JSON_PATCH).set('If-Match', value).send('[{"op":"replace","path":"/gender","value":"male"}]'), 400, /If-Match/, 'PATCH');
        assertOutcome(await request(h.app).delete('/fhir/Patient/ch1').set('If-Match', value), 400, /If-Match/, 'DELETE');
        assertOutcome(await request(h.app).put('/fhir/Patient?identifier=http://example.org/mrn|ch1').set('Content-Type', FHIR).set('If-Match', value).send(JSON.stringify(body)), 400, /If-Match/, 'conditional PUT');
        assertOutcome(await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).set('If-Match', value).send('{"resourceType":"Patient"}'), 400, /If-Match/, 'POST');
      });
    });
  }

  it('a strong ETag "<versionId>" is accepted as If-Match like the weak one', async () => {
    const res = await put(h, 'Patient/ch2', { resourceType: 'Patient', id: 'ch2', gender: 'female' }).expect(201);
    const v = /^W\/("[^"]+")$/.exec(res.headers.etag!)![1]!;
    await put(h, 'Patient/ch2', { resourceType: 'Patient', id: 'ch2', gender: 'male' }).set('If-Match', v).set('Prefer', 'handling=strict').expect(200);
  });

  for (const value of ['', 'garbage', 'W/"x']) {
    it(`If-None-Match ${JSON.stringify(value)} is 400 on read and on update`, async () => {
      await unchanged(async () => {
        assertOutcome(await request(h.app).get('/fhir/Patient/ch1').set('If-None-Match', value), 400, /If-None-Match/, 'GET');
        assertOutcome(await put(h, 'Patient/ch1', { resourceType: 'Patient', id: 'ch1', gender: 'male' }).set('If-None-Match', value), 400, /If-None-Match/, 'PUT');
      });
    });
  }

  it('If-None-Match: * on read is 304 for an existing resource; a list naming the current version is 304', async () => {
    const star = await request(h.app).get('/fhir/Patient/ch1').set('If-None-Match', '*').expect(304);
    assert.equal(star.headers.etag, `W/"${vid}"`);
    await request(h.app).get('/fhir/Patient/ch1').set('If-None-Match', `W/"0", "${vid}"`).expect(304);
    await request(h.app).get('/fhir/Patient/ch1').set('If-None-Match', 'W/"0", W/"1"').expect(200);
  });

  it('If-Modified-Since on read: 304 when not modified since, 200 when modified; If-None-Match wins', async () => {
    const last = Date.parse(h.replica.current('Patient/ch1')!.lastUpdated);
    const later = new Date(last + 60_000).toUTCString();
    const earlier = new Date(last - 60_000).toUTCString();
    const nm = await request(h.app).get('/fhir/Patient/ch1').set('If-Modified-Since', later).expect(304);
    assert.equal(nm.headers.etag, `W/"${vid}"`);
    assert.equal(nm.text, '');
    const ok = await request(h.app).get('/fhir/Patient/ch1').set('If-Modified-Since', earlier).expect(200);
    assert.equal(ok.body.id, 'ch1');
    assert.ok(ok.headers['last-modified'], 'Last-Modified on read');
    await request(h.app).get('/fhir/Patient/ch1').set('If-Modified-Since', ok.headers['last-modified']!).expect(304);
    // RFC 7232 §6: with If-None-Match, If-Modified-Since is not evaluated.
    await request(h.app).get('/fhir/Patient/ch1').set('If-Modified-Since', later).set('If-None-Match', 'W/"0"').expect(200);
  });

  for (const value of ['', 'yesterday', '2020', 'Sun, 32 Nov 2026 10:00:00 GMT']) {
    it(`If-Modified-Since ${JSON.stringify(value)} on read is 400`, async () => {
      assertOutcome(await request(h.app).get('/fhir/Patient/ch1').set('If-Modified-Since', value), 400, /If-Modified-Since/);
    });
  }

  it('If-None-Exist that is only blanks is 400 and creates nothing', async () => {
    const before = [...h.replica.resourceKeys()].length;
    assertOutcome(await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).set('If-None-Exist', '   ').send('{"resourceType":"Patient"}'), 400, /criteria/);
    assert.equal([...h.replica.resourceKeys()].length, before);
  });

  it('in a batch, a malformed entry ifMatch or ifModifiedSince fails that entry with 400 and changes nothing', async () => {
    await unchanged(async () => {
      const res = await request(h.app).post('/fhir').set('Content-Type', FHIR).send(JSON.stringify({
        resourceType: 'Bundle', type: 'batch', entry: [
          { resource: { resourceType: 'Patient', id: 'ch1', gender: 'male' }, request: { method: 'PUT', url: 'Patient/ch1', ifMatch: 'garbage' } },
          { request: { method: 'GET', url: 'Patient/ch1', ifModifiedSince: '1' } },
          { request: { method: 'GET', url: 'Patient/ch1', ifNoneMatch: 'garbage' } },
          { request: { method: 'GET', url: 'Patient/ch1', ifModifiedSince: new Date(Date.now() + 60_000).toISOString() } },
        ],
      })).expect(200);
      const st = res.body.entry.map((e: any) => e.response.status);
      assert.deepEqual(st, ['400 Bad Request', '400 Bad Request', '400 Bad Request', '304 Not Modified']);
      assert.match(res.body.entry[0].response.outcome.issue[0].diagnostics, /If-Match/);
      assert.match(res.body.entry[1].response.outcome.issue[0].diagnostics, /ifModifiedSince/);
    });
  });
});

describe('PATCH errors name the failing operation and never echo values', () => {
  let h: Harness;
  before(async () => {
    h = await makeHarness();
    await put(h, 'Patient/pe1', { resourceType: 'Patient', id: 'pe1', gender: 'female', name: [{ family: SECRET }], identifier: [{ system: 'http://example.org/mrn', value: SECRET }] }).expect(201);
  });
  after(async () => {
    await h?.close();
  });

  const jsonPatch = (ops: unknown) => request(h.app).patch('/fhir/Patient/pe1').set('Content-Type', JSON_PATCH).send(typeof ops === 'string' ? ops : JSON.stringify(ops));
  const fhirPatch = (ops: Array<Array<Record<string, unknown>>>) =>
    request(h.app).patch('/fhir/Patient/pe1').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Parameters', parameter: ops.map((part) => ({ name: 'operation', part })) }));
  const noSecret = (res: request.Response, label: string) => assert.ok(!res.text.includes(SECRET) && !res.text.includes('1999-09-09'), `${label}: no value echoed: ${res.text}`);

  it('JSON Patch: an operation on a missing path is 422 naming index, op and path', async () => {
    const before = h.updates.length;
    const res = await jsonPatch([
      { op: 'test', path: '/gender', value: 'female' },
      { op: 'replace', path: '/gender', value: 'other' },
      { op: 'replace', path: '/birthDate', value: '1999-09-09' },
    ]);
    assertOutcome(res, 422, /^operation 2 \(replace \/birthDate\): path does not exist$/);
    noSecret(res, 'replace');
    assert.equal(h.updates.length, before, 'the whole patch failed: operation 1 was not applied');
    assert.equal(h.replica.current('Patient/pe1')!.body!.includes('"gender":"female"'), true);
  });

  it('JSON Patch: a failed test names the operation, not the values', async () => {
    const res = await jsonPatch([{ op: 'replace', path: '/gender', value: 'male' }, { op: 'test', path: '/name/0/family', value: '1999-09-09' }]);
    assertOutcome(res, 422, /^operation 1 \(test \/name\/0\/family\): the value differs$/);
    noSecret(res, 'test');
  });

  it('JSON Patch: a missing from path of move/copy is 422 naming from', async () => {
    const res = await jsonPatch([{ op: 'copy', from: '/birthDate', path: '/deceasedDateTime' }]);
    assertOutcome(res, 422, /^operation 0 \(copy \/deceasedDateTime\): from path \/birthDate does not exist$/);
  });

  const invalid: Array<[string, unknown, RegExp]> = [
    ['not an array', { op: 'add', path: '/gender', value: 'x' }, /must be a JSON array of operations/],
    ['empty array', [], /must be a JSON array of operations/],
    ['operation not an object', [{ op: 'remove', path: '/gender' }, 'x'], /^operation 1: must be an object/],
    ['unknown op', [{ op: 'frobnicate', path: '/gender' }], /^operation 0: op must be one of add, remove, replace, move, copy, test$/],
    ['missing op', [{ path: '/gender' }], /^operation 0: op must be one of/],
    ['missing path', [{ op: 'remove', path: '/gender' }, { op: 'add', value: '1999-09-09' }], /^operation 1 \(add\): path is required/],
    ['path not a JSON Pointer', [{ op: 'add', path: 'birthDate', value: '1999-09-09' }], /^operation 0 \(add\): path must be a JSON Pointer/],
    ['bad ~ escape', [{ op: 'remove', path: '/a~2b' }], /^operation 0 \(remove\): path must be a JSON Pointer/],
    ['missing value (add)', [{ op: 'add', path: '/birthDate' }], /^operation 0 \(add \/birthDate\): value is required$/],
    ['missing value (replace)', [{ op: 'replace', path: '/gender' }], /^operation 0 \(replace \/gender\): value is required$/],
    ['missing value (test)', [{ op: 'test', path: '/gender' }], /^operation 0 \(test \/gender\): value is required$/],
    ['missing from (move)', [{ op: 'move', path: '/gender' }], /^operation 0 \(move \/gender\): from is required/],
    ['missing from (copy)', [{ op: 'copy', path: '/gender' }], /^operation 0 \(copy \/gender\): from is required/],
  ];
  for (const [label, doc, msg] of invalid) {
    it(`JSON Patch: ${label} is 400 naming the problem`, async () => {
      const before = h.updates.length;
      const res = await jsonPatch(doc);
      assertOutcome(res, 400, msg, label);
      noSecret(res, label);
      assert.equal(h.updates.length, before);
    });
  }

  it('JSON Patch: a path segment that is not an element name is not echoed', async () => {
    const res = await jsonPatch([{ op: 'replace', path: `/name/0/${SECRET}`, value: 'x' }]);
    assertOutcome(res, 422, /^operation 0 \(replace \/name\/0\/…\): path does not exist$/);
    noSecret(res, 'segment');
  });

  it('FHIRPath Patch: an operation whose path matches nothing is 422 naming index, type and path', async () => {
    const before = h.updates.length;
    const res = await fhirPatch([
      [{ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Patient.gender' }, { name: 'value', valueCode: 'other' }],
      [{ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Patient.birthDate' }, { name: 'value', valueDate: '1999-09-09' }],
    ]);
    assertOutcome(res, 422, /^operation 1 \(replace Patient\.birthDate\): path matches no element$/);
    noSecret(res, 'fhirpath replace');
    assert.equal(h.updates.length, before);
  });

  it('FHIRPath Patch: string literals of the path are not echoed', async () => {
    const res = await fhirPatch([[{ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: `Patient.identifier.where(value='${SECRET}x').system` }, { name: 'value', valueUri: 'http://x' }]]);
    assertOutcome(res, 422, /^operation 0 \(replace Patient\.identifier\.where\(value='…'\)\.system\): path matches no element$/);
    noSecret(res, 'literal');
  });

  it('FHIRPath Patch: a path that is not FHIRPath is 422 naming the operation', async () => {
    const res = await fhirPatch([[{ name: 'type', valueCode: 'delete' }, { name: 'path', valueString: 'Patient.(' }]]);
    assertOutcome(res, 422, /^operation 0 \(delete Patient\.\(\): /);
  });

  const invalidFhir: Array<[string, Array<Array<Record<string, unknown>>>, RegExp]> = [
    ['unknown type', [[{ name: 'type', valueCode: 'frob' }, { name: 'path', valueString: 'Patient.gender' }]], /^operation 0: type must be one of add, insert, delete, replace, move$/],
    ['missing type', [[{ name: 'path', valueString: 'Patient.gender' }]], /^operation 0: type must be one of/],
    ['missing path', [[{ name: 'type', valueCode: 'delete' }], [{ name: 'type', valueCode: 'delete' }]], /^operation 0 \(delete\): path is required$/],
    ['replace without value', [[{ name: 'type', valueCode: 'delete' }, { name: 'path', valueString: 'Patient.name' }], [{ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Patient.gender' }]], /^operation 1 \(replace Patient\.gender\): value is required$/],
    ['add without name', [[{ name: 'type', valueCode: 'add' }, { name: 'path', valueString: 'Patient' }, { name: 'value', valueDate: '1999-09-09' }]], /^operation 0 \(add Patient\): name is required$/],
    ['insert without index', [[{ name: 'type', valueCode: 'insert' }, { name: 'path', valueString: 'Patient.name' }, { name: 'value', valueString: 'x' }]], /^operation 0 \(insert Patient\.name\): index is required$/],
    ['move without source', [[{ name: 'type', valueCode: 'move' }, { name: 'path', valueString: 'Patient.name' }, { name: 'destination', valueInteger: 0 }]], /^operation 0 \(move Patient\.name\): source is required$/],
  ];
  for (const [label, ops, msg] of invalidFhir) {
    it(`FHIRPath Patch: ${label} is 400 naming the operation`, async () => {
      const before = h.updates.length;
      const res = await fhirPatch(ops);
      assertOutcome(res, 400, msg, label);
      noSecret(res, label);
      assert.equal(h.updates.length, before);
    });
  }

  it('FHIRPath Patch: a parameter that is not an operation is 400', async () => {
    const res = await request(h.app).patch('/fhir/Patient/pe1').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Parameters', parameter: [{ name: 'foo', valueString: 'x' }] }));
    assertOutcome(res, 400, /parameter 0 .*operation/);
  });

  it('valid patches still apply', async () => {
    await jsonPatch([{ op: 'replace', path: '/gender', value: 'other' }, { op: 'add', path: '/birthDate', value: '1970-01-01' }]).expect(200);
    const res = await fhirPatch([[{ name: 'type', valueCode: 'delete' }, { name: 'path', valueString: 'Patient.birthDate' }]]).expect(200);
    assert.equal(res.body.gender, 'other');
    assert.equal(res.body.birthDate, undefined);
  });
});

describe('validation issues name the concrete choice element', () => {
  let h: Harness;
  before(async () => {
    h = await makeHarness();
  });
  after(async () => {
    await h?.close();
  });

  const obs = { resourceType: 'Observation', id: 'vx1', status: 'final', code: { text: 'Hb' }, valueQuantity: { value: 'abc', unit: 'g/dL' }, effectiveDateTime: 12, component: [{ code: { text: 'a' }, valueString: 5 }] };
  const expressions = (oo: any): string[] => oo.issue.flatMap((i: any) => i.expression ?? []);

  it('single write: 422 with valueQuantity.value, effectiveDateTime, component[0].valueString', async () => {
    const res = await put(h, 'Observation/vx1', obs).expect(422);
    const ex = expressions(res.body);
    for (const want of ['Observation.valueQuantity.value', 'Observation.effectiveDateTime', 'Observation.component[0].valueString']) assert.ok(ex.includes(want), `${want} in ${JSON.stringify(ex)}`);
    assert.ok(!ex.some((x) => x.includes('[x]')), JSON.stringify(ex));
  });

  it('$validate names them too', async () => {
    const res = await request(h.app).post('/fhir/Observation/$validate').set('Content-Type', FHIR).send(JSON.stringify(obs)).expect(200);
    const ex = expressions(res.body);
    assert.ok(ex.includes('Observation.valueQuantity.value'), JSON.stringify(ex));
    assert.ok(!ex.some((x) => x.includes('[x]')), JSON.stringify(ex));
  });

  it('transaction and batch entries: Bundle.entry[i].resource.valueQuantity.value', async () => {
    const entry = [
      { resource: { resourceType: 'Patient', id: 'vxp' }, request: { method: 'PUT', url: 'Patient/vxp' } },
      { resource: { ...obs, effectiveDateTime: undefined, component: undefined }, request: { method: 'PUT', url: 'Observation/vx1' } },
    ];
    const tx = await request(h.app).post('/fhir').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry })).expect(422);
    assert.ok(expressions(tx.body).includes('Bundle.entry[1].resource.valueQuantity.value'), JSON.stringify(tx.body));
    const b = await request(h.app).post('/fhir').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Bundle', type: 'batch', entry })).expect(200);
    assert.ok(expressions(b.body.entry[1].response.outcome).includes('Bundle.entry[1].resource.valueQuantity.value'), JSON.stringify(b.body.entry[1]));
  });

  it('a choice element inside an extension and a contained resource', async () => {
    const res = await put(h, 'Patient/vx2', { resourceType: 'Patient', id: 'vx2', extension: [{ url: 'http://example.org/x', valueBoolean: 'no' }], contained: [{ resourceType: 'Observation', id: 'c', status: 'final', code: { text: 'x' }, valueInteger: 'seven' }] }).expect(422);
    const ex = expressions(res.body);
    assert.ok(ex.includes('Patient.extension[0].valueBoolean'), JSON.stringify(ex));
    assert.ok(ex.some((x) => /^Patient\.contained\[0\]\.valueInteger$/.test(x)), JSON.stringify(ex));
  });
});

describe('Prefer: return=OperationOutcome carries the hints and warnings of the write', () => {
  let h: Harness;
  before(async () => {
    h = await makeHarness();
  });
  after(async () => {
    await h?.close();
  });

  const unknownProfile = 'http://example.org/StructureDefinition/not-known-here';

  it('create, update and patch answer the validator warnings with the information issue', async () => {
    const created = await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).set('Prefer', 'return=OperationOutcome')
      .send(JSON.stringify({ resourceType: 'Patient', meta: { profile: [unknownProfile] }, gender: 'female' })).expect(201);
    assert.ok(created.headers.location && created.headers.etag && created.headers['last-modified'], 'Location, ETag, Last-Modified');
    const codes = (res: request.Response) => res.body.issue.map((i: any) => `${i.severity}:${i.code}`).sort();
    assert.equal(created.body.resourceType, 'OperationOutcome');
    assert.deepEqual(codes(created), ['information:informational', 'warning:not-supported']);
    assert.ok(created.body.issue.some((i: any) => i.severity === 'warning' && (i.expression ?? []).includes('meta.profile')));
    const id = /\/fhir\/Patient\/([^/]+)\/_history\//.exec(created.headers.location!)![1]!;
    const updated = await put(h, `Patient/${id}`, { resourceType: 'Patient', id, meta: { profile: [unknownProfile] }, gender: 'male' }).set('Prefer', 'return=OperationOutcome').expect(200);
    assert.deepEqual(codes(updated), ['information:informational', 'warning:not-supported']);
    const patched = await request(h.app).patch(`/fhir/Patient/${id}`).set('Content-Type', JSON_PATCH).set('Prefer', 'return=OperationOutcome').send('[{"op":"replace","path":"/gender","value":"other"}]').expect(200);
    assert.deepEqual(codes(patched), ['information:informational', 'warning:not-supported']);
    assert.ok(patched.headers.etag && patched.headers['last-modified']);
  });

  it('a write without warnings answers only the information issue; minimal has no body but the headers', async () => {
    const created = await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).set('Prefer', 'return=OperationOutcome').send('{"resourceType":"Patient"}').expect(201);
    assert.deepEqual(created.body.issue.map((i: any) => i.severity), ['information']);
    const minimal = await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).set('Prefer', 'return=minimal').send('{"resourceType":"Patient"}').expect(201);
    assert.equal(minimal.text, '');
    assert.ok(minimal.headers.location && minimal.headers.etag && minimal.headers['last-modified']);
  });
});
