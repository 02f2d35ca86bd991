/**
 * FHIR REST edge cases left open by the new-user trial (fourth round), over HTTP against a node
 * served by the express adapter (test/fhir-harness.ts), no mocks:
 *
 * 1. JSON Patch (RFC 6902) is applied by its rules or not at all: `move` into its own child
 *    (§4.4), array indexes beyond the end or with leading zeros (§4.1, RFC 6901 §4), `-` where an
 *    existing element is needed, `test` (§4.6), `~0`/`~1` escapes (RFC 6901 §4); any error fails
 *    the whole patch (§5) with an OperationOutcome naming the operation, and nothing is written.
 * 2. FHIRPath Patch `add` of a choice element takes the element name without the type suffix
 *    (`deceased`) and the value's type gives the concrete name (`deceasedBoolean`)
 *    (https://hl7.org/fhir/R4/fhirpatch.html); `replace` of a choice element may change its type.
 * 3. Strings are never empty (https://hl7.org/fhir/R4/json.html): 422 naming the element.
 * 4. A dateTime with a time carries a time zone, an instant always does
 *    (https://hl7.org/fhir/R4/datatypes.html#dateTime, #instant): 422 otherwise.
 * 5. The history entry of the version that created a resource answers 201
 *    (https://hl7.org/fhir/R4/http.html#history).
 * 6. A 405 carries `Allow` (RFC 9110 §15.5.6), OPTIONS included.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';
import { readSynthea, SYNTHEA_SKIP } from './fixtures/synthea.ts';
import { primitiveFormIssues, validateFhirResource } from '../src/fhir/validate.ts';
import { parseFhirJson } from '../src/fhir/json.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';

const JSON_PATCH = 'application/json-patch+json';

/** Asserts an OperationOutcome with the given status whose first issue's diagnostics (or details) match. */
function assertOutcome(res: request.Response, status: number, text: RegExp, label = ''): void {
  assert.equal(res.status, status, `${label}: ${res.text}`);
  assert.equal(res.body.resourceType, 'OperationOutcome', label);
  const issue = res.body.issue[0];
  assert.match(issue.diagnostics ?? issue.details?.text ?? '', text, label);
}

const put = (h: Harness, path: string, body: object) => request(h.app).put(`/fhir/${path}`).set('Content-Type', FHIR).send(JSON.stringify(body));
const jsonPatch = (h: Harness, path: string, ops: unknown) => request(h.app).patch(`/fhir/${path}`).set('Content-Type', JSON_PATCH).send(JSON.stringify(ops));
const fhirPathPatch = (h: Harness, path: string, ...ops: Array<Array<Record<string, unknown>>>) =>
  request(h.app).patch(`/fhir/${path}`).set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Parameters', parameter: ops.map((part) => ({ name: 'operation', part })) }));

const PATIENT = { resourceType: 'Patient', id: 'mv1', name: [{ family: 'Chalmers', given: ['Peter', 'James'] }] };

describe('JSON Patch follows RFC 6902: an operation it forbids fails the whole patch', () => {
  let h: Harness;
  let vid: string;
  before(async () => {
    h = await makeHarness();
    await put(h, 'Patient/mv1', PATIENT).expect(201);
    vid = h.replica.current('Patient/mv1')!.versionId;
  });
  after(async () => {
    await h?.close();
  });

  /** The patch fails with `status`, diagnostics matching `diag`, and Patient/mv1 is unchanged. */
  async function refused(ops: unknown, status: number, diag: RegExp, label: string): Promise<void> {
    const updates = h.updates.length;
    assertOutcome(await jsonPatch(h, 'Patient/mv1', ops), status, diag, label);
    assert.equal(h.replica.current('Patient/mv1')!.versionId, vid, `${label}: no new version`);
    assert.equal(h.updates.length, updates, `${label}: nothing sent`);
    const read = await request(h.app).get('/fhir/Patient/mv1').expect(200);
    assert.deepEqual(read.body.name, PATIENT.name, `${label}: name kept`);
  }

  it('move into its own child (§4.4) is 422 naming the operation, nothing written', async () => {
    await refused([{ op: 'move', from: '/name', path: '/name/0' }], 422, /^operation 0 \(move \/name\/0\): from \/name is a proper prefix of path/, 'move /name → /name/0');
    await refused([{ op: 'move', from: '/name/0', path: '/name/0/given/0' }], 422, /^operation 0 \(move \/name\/0\/given\/0\): from \/name\/0 is a proper prefix/, 'move /name/0 → /name/0/given/0');
    // A later operation: the earlier ones are not applied either (§5).
    await refused([{ op: 'replace', path: '/name/0/family', value: 'Other' }, { op: 'move', from: '/name', path: '/name/1' }], 422, /^operation 1 \(move \/name\/1\)/, 'second operation');
  });

  it('a move onto itself or into a sibling with a common name prefix is allowed', async () => {
    // from == path is not a *proper* prefix: a no-op.
    await jsonPatch(h, 'Patient/mv1', [{ op: 'move', from: '/name', path: '/name' }]).expect(200);
    // `/name/0/given` is not a prefix of `/name/0/givenX`… by segments; here: `/name/1` vs `/name/10` style.
    const res = await jsonPatch(h, 'Patient/mv1', [{ op: 'copy', from: '/name/0', path: '/name/1' }, { op: 'move', from: '/name/1/given/1', path: '/name/1/given/0' }]).expect(200);
    assert.deepEqual(res.body.name, [PATIENT.name[0], { family: 'Chalmers', given: ['James', 'Peter'] }]);
    await put(h, 'Patient/mv1', PATIENT).expect(200);
    vid = h.replica.current('Patient/mv1')!.versionId;
  });

  it('array indexes: beyond the end, leading zeros and `-` where an element must exist are 422 (§4.1, RFC 6901 §4)', async () => {
    await refused([{ op: 'add', path: '/name/0/given/3', value: 'X' }], 422, /^operation 0 \(add \/name\/0\/given\/3\): index 3 is beyond the end of the array \(length 2\b/, 'add beyond length');
    await refused([{ op: 'add', path: '/name/0/given/01', value: 'X' }], 422, /^operation 0 \(add \/name\/0\/given\/01\): .*array index/, 'leading zero');
    await refused([{ op: 'replace', path: '/name/0/given/-', value: 'X' }], 422, /^operation 0 \(replace \/name\/0\/given\/-\): path does not exist/, 'replace -');
    await refused([{ op: 'remove', path: '/name/0/given/2' }], 422, /path does not exist/, 'remove beyond');
    await refused([{ op: 'test', path: '/name/0/given/-', value: 'X' }], 422, /path does not exist/, 'test -');
    await refused([{ op: 'copy', from: '/name/0/given/-', path: '/name/0/given/0' }], 422, /from path \/name\/0\/given\/- does not exist/, 'copy from -');
    // Index == length and `-` append.
    const res = await jsonPatch(h, 'Patient/mv1', [{ op: 'add', path: '/name/0/given/2', value: 'Jr' }, { op: 'add', path: '/name/0/given/-', value: 'III' }, { op: 'remove', path: '/name/0/given/3' }]).expect(200);
    assert.deepEqual(res.body.name[0].given, ['Peter', 'James', 'Jr']);
    await put(h, 'Patient/mv1', PATIENT).expect(200);
    vid = h.replica.current('Patient/mv1')!.versionId;
  });

  it('test (§4.6) compares JSON values: member order does not matter, types do; a failed test fails the patch', async () => {
    await refused([{ op: 'replace', path: '/name/0/family', value: 'Other' }, { op: 'test', path: '/name/0/family', value: 'Chalmers' }], 422, /^operation 1 \(test \/name\/0\/family\): the value differs/, 'test after replace');
    await refused([{ op: 'test', path: '/name/0/given', value: ['James', 'Peter'] }], 422, /the value differs/, 'array order matters');
    const ok = await jsonPatch(h, 'Patient/mv1', [{ op: 'test', path: '/name/0', value: { given: ['Peter', 'James'], family: 'Chalmers' } }, { op: 'add', path: '/gender', value: 'male' }]).expect(200);
    assert.equal(ok.body.gender, 'male');
    vid = h.replica.current('Patient/mv1')!.versionId;
  });

  it('~0 and ~1 escapes (RFC 6901 §4): decoded once, ~01 is "~1", never "/"', async () => {
    // `/name~10` decodes to the member "name/0", which does not exist: not the first name.
    await refused([{ op: 'remove', path: '/name~10' }], 422, /path does not exist/, '~1');
    await refused([{ op: 'remove', path: '/name/0/family~01' }], 422, /path does not exist/, '~01');
    await refused([{ op: 'remove', path: '/name/0/~0' }], 422, /path does not exist/, '~0');
  });
});

describe('FHIRPath Patch adds and replaces choice elements', () => {
  let h: Harness;
  before(async () => {
    h = await makeHarness();
    await put(h, 'Patient/fc1', { resourceType: 'Patient', id: 'fc1', active: false }).expect(201);
  });
  after(async () => {
    await h?.close();
  });

  it('add name "deceased" with valueBoolean gives deceasedBoolean; "multipleBirth" with valueInteger gives multipleBirthInteger', async () => {
    const res = await fhirPathPatch(h, 'Patient/fc1',
      [{ name: 'type', valueCode: 'add' }, { name: 'path', valueString: 'Patient' }, { name: 'name', valueString: 'deceased' }, { name: 'value', valueBoolean: true }],
      [{ name: 'type', valueCode: 'add' }, { name: 'path', valueString: 'Patient' }, { name: 'name', valueString: 'multipleBirth' }, { name: 'value', valueInteger: 2 }]);
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.deceasedBoolean, true);
    assert.equal(res.body.multipleBirthInteger, 2);
    assert.equal(res.body.deceased, undefined);
    const read = await request(h.app).get('/fhir/Patient/fc1').expect(200);
    assert.equal(read.body.deceasedBoolean, true);
  });

  it('add a choice element inside a backbone element (Observation.component.value[x])', async () => {
    await put(h, 'Observation/fc2', { resourceType: 'Observation', id: 'fc2', status: 'final', code: { text: 'bp' }, component: [{ code: { text: 'sys' } }] }).expect(201);
    const res = await fhirPathPatch(h, 'Observation/fc2', [{ name: 'type', valueCode: 'add' }, { name: 'path', valueString: 'Observation.component[0]' }, { name: 'name', valueString: 'value' }, { name: 'value', valueQuantity: { value: 120.0, unit: 'mmHg' } }]);
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.body.component[0].valueQuantity, { value: 120.0, unit: 'mmHg' });
  });

  it('replace of a choice element may change its type (deceasedBoolean → deceasedDateTime)', async () => {
    const res = await fhirPathPatch(h, 'Patient/fc1', [{ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Patient.deceased' }, { name: 'value', valueDateTime: '2020-02-03' }]);
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.deceasedDateTime, '2020-02-03');
    assert.equal(res.body.deceasedBoolean, undefined);
    const same = await fhirPathPatch(h, 'Patient/fc1', [{ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Patient.deceased' }, { name: 'value', valueDateTime: '2021-04-05' }]);
    assert.equal(same.status, 200, same.text);
    assert.equal(same.body.deceasedDateTime, '2021-04-05');
  });

  it('delete of a choice element removes the member that is present', async () => {
    await put(h, 'Patient/fc3', { resourceType: 'Patient', id: 'fc3', deceasedBoolean: true, multipleBirthBoolean: false }).expect(201);
    const res = await fhirPathPatch(h, 'Patient/fc3', [{ name: 'type', valueCode: 'delete' }, { name: 'path', valueString: 'Patient.deceased' }]);
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.deceasedBoolean, undefined);
    assert.equal(res.body.multipleBirthBoolean, false);
  });

  it('a value type the choice element does not allow is 422 naming the operation', async () => {
    const vid = h.replica.current('Patient/fc1')!.versionId;
    const res = await fhirPathPatch(h, 'Patient/fc1', [{ name: 'type', valueCode: 'replace' }, { name: 'path', valueString: 'Patient.deceased' }, { name: 'value', valueString: 'yes' }]);
    assertOutcome(res, 422, /^operation 0 \(replace Patient\.deceased\): deceased\[x\] takes valueBoolean, valueDateTime, not valueString/);
    assert.equal(h.replica.current('Patient/fc1')!.versionId, vid);
    assert.ok(!res.text.includes('yes'), 'value not echoed');
  });

  it('adding a second type of a choice element that is present is refused (422), nothing written', async () => {
    const vid = h.replica.current('Patient/fc1')!.versionId;
    const res = await fhirPathPatch(h, 'Patient/fc1', [{ name: 'type', valueCode: 'add' }, { name: 'path', valueString: 'Patient' }, { name: 'name', valueString: 'deceased' }, { name: 'value', valueBoolean: false }]);
    assertOutcome(res, 422, /deceased\[x\] already has a value \(use replace\)/);
    assert.equal(h.replica.current('Patient/fc1')!.versionId, vid);
  });
});

describe('strings are never empty; dateTimes with a time and instants carry a time zone', () => {
  let h: Harness;
  before(async () => {
    h = await makeHarness();
  });
  after(async () => {
    await h?.close();
  });

  it('an empty string is 422 with the element\'s FHIRPath, nothing written (create, update, $validate, Bundle)', async () => {
    const cases: Array<[object, string]> = [
      [{ resourceType: 'Patient', id: 'es1', name: [{ family: '' }] }, 'Patient.name[0].family'],
      [{ resourceType: 'Patient', id: 'es1', name: [{ given: ['Ann', ''] }] }, 'Patient.name[0].given[1]'],
      [{ resourceType: 'Patient', id: 'es1', gender: '' }, 'Patient.gender'],
      [{ resourceType: 'Patient', id: 'es1', identifier: [{ system: '', value: 'x' }] }, 'Patient.identifier[0].system'],
      [{ resourceType: 'Patient', id: 'es1', extension: [{ url: 'http://example.org/x', valueString: '' }] }, 'Patient.extension[0].valueString'],
    ];
    for (const [body, expression] of cases) {
      const res = await put(h, 'Patient/es1', body);
      assertOutcome(res, 422, /empty/i, expression);
      assert.ok(res.body.issue.some((i: any) => i.expression?.[0] === expression), `${expression}: ${res.text}`);
      assert.equal(h.replica.current('Patient/es1'), undefined, `${expression}: nothing written`);
    }
    const post = await request(h.app).post('/fhir/Patient').set('Content-Type', FHIR).send('{"resourceType":"Patient","name":[{"family":""}]}');
    assertOutcome(post, 422, /empty/i, 'POST');
    const bundle = { resourceType: 'Bundle', type: 'transaction', entry: [{ resource: { resourceType: 'Patient', id: 'es2', name: [{ family: '' }] }, request: { method: 'PUT', url: 'Patient/es2' } }] };
    const tx = await request(h.app).post('/fhir').set('Content-Type', FHIR).send(JSON.stringify(bundle));
    assert.ok(tx.status >= 400 && tx.status < 500, tx.text);
    assert.ok(tx.text.includes('name[0].family'), tx.text);
    assert.equal(h.replica.current('Patient/es2'), undefined, 'transaction: nothing written');
    const val = await request(h.app).post('/fhir/Patient/$validate').set('Content-Type', FHIR).send('{"resourceType":"Patient","name":[{"family":""}]}');
    assert.ok(JSON.stringify(val.body).includes('Patient.name[0].family'), val.text);
    // Whitespace-only stays refused, a non-empty string is fine.
    assertOutcome(await put(h, 'Patient/es1', { resourceType: 'Patient', id: 'es1', name: [{ family: '  ' }] }), 422, /non-whitespace/, 'whitespace');
    await put(h, 'Patient/es1', { resourceType: 'Patient', id: 'es1', name: [{ family: 'A' }] }).expect(201);
  });

  it('a dateTime with a time and no zone, and an instant without a zone, are 422 naming the element', async () => {
    const obs = (extra: object) => ({ resourceType: 'Observation', id: 'dt1', status: 'final', code: { text: 'x' }, ...extra });
    const bad: Array<[object, string]> = [
      [obs({ effectiveDateTime: '2020-01-01T10:00:00' }), 'Observation.effectiveDateTime'],
      [obs({ effectiveDateTime: '2020-01-01T10:00:00.123' }), 'Observation.effectiveDateTime'],
      [obs({ effectivePeriod: { start: '2020-01-01T10:00:00' } }), 'Observation.effectivePeriod.start'],
      [obs({ issued: '2020-01-01T10:00:00' }), 'Observation.issued'],
      [obs({ component: [{ code: { text: 'y' }, valueDateTime: '2020-01-01T10:00:00' }] }), 'Observation.component[0].valueDateTime'],
      [obs({ extension: [{ url: 'http://example.org/x', valueDateTime: '2020-01-01T10:00:00' }] }), 'Observation.extension[0].valueDateTime'],
    ];
    for (const [body, expression] of bad) {
      const res = await put(h, 'Observation/dt1', body);
      assert.equal(res.status, 422, `${expression}: ${res.text}`);
      assert.ok(res.body.issue.some((i: any) => i.expression?.[0] === expression), `${expression}: ${res.text}`);
      assert.equal(h.replica.current('Observation/dt1'), undefined, `${expression}: nothing written`);
    }
    // Zones, dates without a time, and a string that only looks like a dateTime are accepted.
    for (const good of [
      obs({ effectiveDateTime: '2020-01-01T10:00:00Z', issued: '2020-01-01T10:00:00.5+02:00' }),
      obs({ effectiveDateTime: '2020-01-01T10:00:00-05:00' }),
      obs({ effectiveDateTime: '2020-01' }),
      obs({ effectiveDateTime: '2020-01-01', valueString: '2020-01-01T10:00:00' }),
    ]) {
      const res = await put(h, 'Observation/dt1', good);
      assert.ok(res.status === 200 || res.status === 201, res.text);
    }
  });

  it('the unit checks: primitiveFormIssues and validateFhirResource', () => {
    const r = parseFhirJson('{"resourceType":"Patient","name":[{"family":""}],"deceasedDateTime":"2020-01-01T10:00:00"}') as FhirJsonObject;
    const issues = primitiveFormIssues(r);
    assert.deepEqual(issues.map((i) => i.expression?.[0]).sort(), ['Patient.deceasedDateTime', 'Patient.name[0].family']);
    assert.ok(issues.every((i) => !JSON.stringify(i).includes('2020')), 'no value quoted');
    // validateFhirResource keeps its former checks by default (the hospital poller), and adds these on request.
    assert.equal(validateFhirResource(r).length, 0);
    assert.equal(validateFhirResource(r, { primitiveForms: true }).length, 2);
  });

  it('the Synthea sample has no empty string and no zone-less dateTime or instant', { skip: SYNTHEA_SKIP }, async () => {
    const { readdirSync } = await import('node:fs');
    const { SYNTHEA_DIR } = await import('./fixtures/synthea.ts');
    const types = readdirSync(SYNTHEA_DIR).filter((f) => f.endsWith('.000.ndjson')).map((f) => f.slice(0, -'.000.ndjson'.length));
    let n = 0;
    const found: string[] = [];
    for (const type of types) {
      for (const r of readSynthea(type)) {
        n++;
        for (const i of primitiveFormIssues(parseFhirJson(JSON.stringify(r)) as FhirJsonObject)) found.push(`${type}: ${i.expression?.[0]}`);
      }
    }
    assert.ok(n > 1000, `read ${n} resources`);
    assert.deepEqual(found.slice(0, 10), [], `${found.length} issues`);
  });
});

describe('history entries and 405', () => {
  let h: Harness;
  before(async () => {
    h = await makeHarness();
  });
  after(async () => {
    await h?.close();
  });

  it('the version that created the resource (also again after a delete) has response.status 201', async () => {
    await put(h, 'Patient/hs1', { resourceType: 'Patient', id: 'hs1' }).expect(201);
    await put(h, 'Patient/hs1', { resourceType: 'Patient', id: 'hs1', gender: 'male' }).expect(200);
    await request(h.app).delete('/fhir/Patient/hs1').expect(204);
    await put(h, 'Patient/hs1', { resourceType: 'Patient', id: 'hs1', gender: 'female' }).expect(201);
    const res = await request(h.app).get('/fhir/Patient/hs1/_history').expect(200);
    // Newest first: re-create, delete, update, create.
    assert.deepEqual(res.body.entry.map((e: any) => e.response.status), ['201', '204', '200', '201']);
  });

  it('OPTIONS and other unserved methods are 405 with an Allow header', async () => {
    for (const path of ['/fhir/Patient/hs1', '/fhir/Patient', '/fhir/metadata']) {
      const res = await request(h.app).options(path);
      assert.equal(res.status, 405, path);
      assert.equal(res.body.resourceType, 'OperationOutcome');
      assert.match(res.headers.allow ?? '', /\bGET\b/, `${path}: Allow`);
    }
    const meta = await request(h.app).delete('/fhir/metadata');
    assert.equal(meta.status, 405);
    assert.equal(meta.headers.allow, 'GET');
  });
});
