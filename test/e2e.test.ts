import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { startNetwork } from '../src/node/network.ts';
import type { Network } from '../src/node/network.ts';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const FHIR = { 'Content-Type': 'application/fhir+json' };

async function put(base: string, resource: { resourceType: string; id: string }, author?: string): Promise<Response> {
  return fetch(`${base}/${resource.resourceType}/${resource.id}`, {
    method: 'PUT',
    headers: { ...FHIR, ...(author ? { 'X-Tidegate-Author': author } : {}) },
    body: JSON.stringify(resource),
  });
}

async function get(base: string, path: string): Promise<any> {
  const res = await fetch(`${base}/${path}`);
  assert.equal(res.status, 200, `GET ${path}`);
  return res.json();
}

describe('end to end: two nodes, two Medplum hospitals, one Redis', () => {
  let net: Network;
  before(async () => {
    net = await startNetwork({ hospitals: 2, redisUrl: REDIS_URL, batchDelayMs: 5 });
  });
  after(async () => {
    await net?.stop();
  });

  test('a write at hospital 1 reaches hospital 2 FHIR server, sealed on the way', async () => {
    const [a, b] = net.members as [typeof net.members[0], typeof net.members[0]];
    const res = await put(a.gateway, {
      resourceType: 'Patient',
      id: 'e2e-1',
      name: [{ family: 'Zebulonova', given: ['Quintessa'] }],
      telecom: [{ system: 'phone', value: '555-0100' }],
      gender: 'female',
    } as never);
    assert.equal(res.status, 201);
    assert.ok((await net.converge(30_000)) !== undefined, 'converged');
    const atB = await get(b.gateway, 'Patient/e2e-1');
    assert.equal(atB.name[0].family, 'Zebulonova');
    const onHospitalB = await b.client.read('Patient', 'e2e-1');
    assert.equal((onHospitalB as any).name[0].family, 'Zebulonova');

    // Nothing in Redis holds the plaintext.
    const r = new Redis(REDIS_URL);
    try {
      const keys = await r.keys(`${net.prefix}:*`);
      assert.ok(keys.length > 0, 'gossip left keys in Redis');
      for (const k of keys) {
        const type = await r.type(k);
        let dump = '';
        if (type === 'string') dump = (await r.get(k)) ?? '';
        else if (type === 'hash') dump = JSON.stringify(await r.hgetall(k));
        else if (type === 'list') dump = JSON.stringify(await r.lrange(k, 0, -1));
        else if (type === 'zset') dump = JSON.stringify(await r.zrange(k, 0, -1));
        else if (type === 'set') dump = JSON.stringify(await r.smembers(k));
        else if (type === 'stream') dump = JSON.stringify(await r.xrange(k, '-', '+'));
        for (const secret of ['Zebulonova', 'Quintessa', '555-0100']) assert.ok(!dump.includes(secret), `${k} leaks ${secret}`);
      }
    } finally {
      r.disconnect();
    }
  });

  test('concurrent edits converge; the same-field loser is a conflict record on every node', async () => {
    const [a, b] = net.members as [typeof net.members[0], typeof net.members[0]];
    const base = await get(a.gateway, 'Patient/e2e-1');
    const baseB = await get(b.gateway, 'Patient/e2e-1');
    assert.equal(base.meta.versionId, baseB.meta.versionId);
    const [ra, rb] = await Promise.all([
      put(a.gateway, { ...base, birthDate: '1970-01-01', telecom: [...base.telecom, { system: 'email', value: 'a@example.org' }] }, 'Practitioner/dr-a'),
      put(b.gateway, { ...baseB, birthDate: '1971-02-02', maritalStatus: { text: 'Married' } }, 'Practitioner/dr-b'),
    ]);
    assert.equal(ra.status, 200);
    assert.equal(rb.status, 200);
    assert.ok((await net.converge(30_000)) !== undefined, 'converged');
    const ma = await get(a.gateway, 'Patient/e2e-1');
    const mb = await get(b.gateway, 'Patient/e2e-1');
    assert.deepEqual(ma, mb);
    assert.equal(ma.maritalStatus.text, 'Married');
    assert.deepEqual(ma.telecom.map((t: any) => t.value), ['555-0100', 'a@example.org']);
    assert.ok(['1970-01-01', '1971-02-02'].includes(ma.birthDate));
    const ca = await get(a.gateway, 'Patient/e2e-1/$conflicts');
    const cb = await get(b.gateway, 'Patient/e2e-1/$conflicts');
    assert.deepEqual(ca, cb);
    const conflict = ca.parameter.find((p: any) => p.part.some((x: any) => x.name === 'path' && x.valueString === 'birthDate'));
    assert.ok(conflict, 'birthDate conflict recorded');
    const loser = conflict.part.find((x: any) => x.name === 'loserValue').valueString;
    const loserDate = JSON.parse(loser);
    assert.notEqual(loserDate, ma.birthDate);
    assert.ok(['1970-01-01', '1971-02-02'].includes(loserDate));
    const cmp = await net.compareHospitals();
    assert.deepEqual(cmp.mismatched, []);
    assert.ok(cmp.compared >= 1);
  });

  test('a node that missed updates catches up by anti-entropy', async () => {
    const [a, b] = net.members as [typeof net.members[0], typeof net.members[0]];
    // A merges a write that is never gossiped (as if the message was lost): only anti-entropy can repair B.
    const { parseFhirJson } = await import('../src/fhir/json.ts');
    const body = parseFhirJson('{"resourceType":"Patient","id":"e2e-missed","gender":"male"}') as never;
    const res = a.node.replica.write('Patient/e2e-missed', body);
    assert.ok(res.update);
    assert.equal(b.node.replica.current('Patient/e2e-missed'), undefined, 'B missed it');
    await net.antiEntropy();
    assert.ok((await net.converge(30_000)) !== undefined, 'converged');
    assert.equal((await get(b.gateway, 'Patient/e2e-missed')).gender, 'male');
  });
});
