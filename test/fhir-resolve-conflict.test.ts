/**
 * `POST [type]/[id]/$resolve-conflict` over HTTP (docs/merge.md, "Same-field conflicts"): a real
 * conflict made by two replicas writing one field concurrently, then resolved by keeping the
 * winner or taking the loser; bad requests change nothing.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { Replica } from '../src/merge/replica.ts';
import { MemoryStore } from '../src/store/store.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';

const params = (...p: Array<Record<string, string>>) => JSON.stringify({ resourceType: 'Parameters', parameter: p });

describe('$resolve-conflict', () => {
  let h: Harness;
  let b: Replica;

  /** Makes a same-field conflict on Patient/{id}.gender: A writes `a`, B writes `bv` concurrently. */
  async function conflict(id: string, a: string, bv: string): Promise<{ winner: string; loser: string }> {
    await request(h.app).put(`/fhir/Patient/${id}`).set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', id, gender: 'unknown', birthDate: '1980-01-01' })).expect(201);
    for (const u of h.updates.splice(0)) b.applyRemote(u.key, u.update);
    const fromB = b.write(`Patient/${id}`, { resourceType: 'Patient', id, gender: bv, birthDate: '1980-01-01' }, { author: 'Practitioner/b' });
    await request(h.app).put(`/fhir/Patient/${id}`).set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', id, gender: a, birthDate: '1980-01-01' })).expect(200);
    h.replica.applyRemote(`Patient/${id}`, fromB.update!);
    const c = await request(h.app).get(`/fhir/Patient/${id}/$conflicts`).expect(200);
    const rec = c.body.parameter?.find((x: { part: Array<{ name: string; valueString?: string }> }) => x.part.find((q) => q.name === 'path')?.valueString === 'gender');
    assert.ok(rec, `a conflict record at gender: ${JSON.stringify(c.body)}`);
    const part = (n: string) => rec.part.find((q: { name: string }) => q.name === n)?.valueString as string;
    return { winner: JSON.parse(part('winnerValue')), loser: JSON.parse(part('loserValue')) };
  }

  before(async () => {
    h = await makeHarness();
    b = new Replica({ nodeId: 'node-b', store: new MemoryStore(), policy: loadMergePolicy() });
  });
  after(async () => {
    await h?.close();
  });

  test('choice=loser takes the losing value; the record is gone and the resolution is gossiped', async () => {
    const { winner, loser } = await conflict('rc1', 'female', 'male');
    assert.notEqual(winner, loser);
    const shown = await request(h.app).get('/fhir/Patient/rc1').expect(200);
    assert.equal(shown.body.gender, winner);
    h.updates.splice(0);
    const res = await request(h.app).post('/fhir/Patient/rc1/$resolve-conflict').set('Content-Type', FHIR).set('X-Tidegate-Author', 'Practitioner/reviewer').send(params({ name: 'path', valueString: 'gender' }, { name: 'choice', valueCode: 'loser' })).expect(200);
    assert.equal(res.body.gender, loser);
    assert.match(res.headers.etag ?? '', /^W\/"/);
    assert.equal(h.updates.length, 1, 'the resolution is an update to gossip');
    const after = await request(h.app).get('/fhir/Patient/rc1/$conflicts').expect(200);
    assert.equal(after.body.parameter, undefined, 'no conflict record left');
    // the other replica gets the same result from the gossiped update
    b.applyRemote('Patient/rc1', h.replica.diffFor('Patient/rc1', b.stateVector('Patient/rc1'))!);
    assert.equal(b.current('Patient/rc1')?.body, h.replica.current('Patient/rc1')?.body);
  });

  test('choice=winner (the default) keeps what is shown and clears the record', async () => {
    const { winner } = await conflict('rc2', 'female', 'other');
    const res = await request(h.app).post('/fhir/Patient/rc2/$resolve-conflict').set('Content-Type', FHIR).send(params({ name: 'path', valueString: 'gender' })).expect(200);
    assert.equal(res.body.gender, winner);
    assert.equal((await request(h.app).get('/fhir/Patient/rc2/$conflicts').expect(200)).body.parameter, undefined);
  });

  test('bad requests answer an OperationOutcome and change nothing', async () => {
    await conflict('rc3', 'female', 'male');
    const before = h.replica.current('Patient/rc3')?.versionId;
    h.updates.splice(0);
    const cases: Array<[string, string, number]> = [
      [FHIR, params({ name: 'path', valueString: 'birthDate' }), 404],
      [FHIR, params({ name: 'choice', valueCode: 'loser' }), 400],
      [FHIR, params({ name: 'path', valueString: 'gender' }, { name: 'choice', valueCode: 'both' }), 400],
      [FHIR, JSON.stringify({ resourceType: 'Patient' }), 400],
      [FHIR, '{not json', 400],
      ['text/plain', params({ name: 'path', valueString: 'gender' }), 415],
    ];
    for (const [ct, body, status] of cases) {
      const res = await request(h.app).post('/fhir/Patient/rc3/$resolve-conflict').set('Content-Type', ct).send(body);
      assert.equal(res.status, status, `${body} → ${res.status} ${JSON.stringify(res.body)}`);
      assert.equal(res.body.resourceType, 'OperationOutcome');
    }
    await request(h.app).post('/fhir/Patient/nope/$resolve-conflict').set('Content-Type', FHIR).send(params({ name: 'path', valueString: 'gender' })).expect(404);
    assert.equal(h.replica.current('Patient/rc3')?.versionId, before, 'no new version');
    assert.equal(h.updates.length, 0, 'nothing gossiped');
    const c = await request(h.app).get('/fhir/Patient/rc3/$conflicts').expect(200);
    assert.ok(c.body.parameter?.length > 0, 'the record is still there');
  });
});
