import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import request from 'supertest';
import { makeHarness, FHIR } from './fhir-harness.ts';
import type { Harness } from './fhir-harness.ts';

/** Follows `next` links through the node, returning every page. */
async function allPages(h: Harness, first: string): Promise<any[]> {
  const pages: any[] = [];
  let url: string | undefined = first;
  while (url) {
    const res = await request(h.app).get(url).expect(200);
    pages.push(res.body);
    const next = res.body.link?.find((l: any) => l.relation === 'next')?.url as string | undefined;
    url = next ? new URL(next).pathname + new URL(next).search : undefined;
    assert.ok(pages.length < 20, 'paging terminates');
  }
  return pages;
}

describe('FHIR search, forwarded to a Medplum hospital that assigns its own ids', () => {
  let h: Harness;
  before(async () => {
    h = await makeHarness({ hospital: true, allowUpdateCreate: false });
    for (let i = 1; i <= 5; i++) {
      await request(h.app).put(`/fhir/Patient/sp${i}`).set('Content-Type', FHIR)
        .send(JSON.stringify({ resourceType: 'Patient', id: `sp${i}`, name: [{ family: 'Searchfamily', given: [`G${i}`] }], gender: i % 2 ? 'female' : 'male' })).expect(201);
    }
    await request(h.app).put('/fhir/Observation/so1').set('Content-Type', FHIR)
      .send('{"resourceType":"Observation","id":"so1","status":"final","code":{"text":"Hb"},"subject":{"reference":"Patient/sp1"},"valueQuantity":{"value":1.50,"unit":"g/dL"}}').expect(201);
    await h.sync!.idle();
  });
  after(async () => {
    await h?.close();
  });

  test('the hospital really holds the resources under its own ids (the id map is exercised)', async () => {
    const mapped = await h.client!.idMap.toHospital('Patient/sp1');
    assert.ok(mapped && mapped !== 'Patient/sp1', 'hospital assigned a different id');
  });

  test('GET [type]?… pages through the node with node ids, node fullUrls and node links', async () => {
    const pages = await allPages(h, '/fhir/Patient?family=Searchfamily&_count=2');
    assert.equal(pages.length, 3);
    const ids = pages.flatMap((p) => (p.entry ?? []).map((e: any) => e.resource.id)).sort();
    assert.deepEqual(ids, ['sp1', 'sp2', 'sp3', 'sp4', 'sp5']);
    for (const p of pages) {
      assert.equal(p.resourceType, 'Bundle');
      assert.equal(p.type, 'searchset');
      for (const l of p.link) assert.match(l.url, /^http:\/\/127\.0\.0\.1:\d+\/fhir\/Patient\?/, 'link points at the node');
      for (const l of p.link) assert.ok(!l.url.startsWith(h.hospital!.url), 'no hospital link leaks');
      for (const e of p.entry ?? []) assert.match(e.fullUrl, new RegExp(`/fhir/Patient/${e.resource.id}$`));
    }
    assert.equal(pages[0].total, 5);
  });

  test('results carry the node versionId and keep decimals; references are node ids', async () => {
    const res = await request(h.app).get('/fhir/Observation?subject=Patient/sp1').expect(200);
    assert.equal(res.body.entry.length, 1);
    assert.match(res.text, /"value":1\.50[,}]/, 'lexical decimal kept');
    const nodeVersion = h.replica.current('Observation/so1')!.versionId;
    assert.equal(res.body.entry[0].resource.meta.versionId, nodeVersion);
    assert.equal(res.body.entry[0].resource.subject.reference, 'Patient/sp1');
  });

  test('_id with a node id is translated, and the self link maps it back', async () => {
    const res = await request(h.app).get('/fhir/Patient?_id=sp3').expect(200);
    assert.deepEqual(res.body.entry.map((e: any) => e.resource.id), ['sp3']);
    const self = new URL(res.body.link.find((l: any) => l.relation === 'self').url);
    assert.equal(self.searchParams.get('_id'), 'sp3');
  });

  test('_elements: the subset of the node’s version, with its versionId', async () => {
    const res = await request(h.app).get('/fhir/Patient?_id=sp2&_elements=gender').expect(200);
    const r = res.body.entry[0].resource;
    assert.equal(r.meta.versionId, h.replica.current('Patient/sp2')!.versionId);
    assert.equal(r.name, undefined, 'name is not in the subset');
    assert.ok(r.gender);
  });

  test('_sort, _count and _include pass through', async () => {
    const res = await request(h.app).get('/fhir/Observation?_include=Observation:subject&_sort=-_lastUpdated&_count=10').expect(200);
    const self = new URL(res.body.link.find((l: any) => l.relation === 'self').url);
    assert.equal(self.searchParams.get('_include'), 'Observation:subject');
    assert.equal(self.searchParams.get('_sort'), '-_lastUpdated');
    assert.equal(self.searchParams.get('_count'), '10');
  });

  test('POST [type]/_search with a form body', async () => {
    const res = await request(h.app).post('/fhir/Patient/_search').set('Content-Type', 'application/x-www-form-urlencoded').send('family=Searchfamily&gender=male').expect(200);
    assert.deepEqual(res.body.entry.map((e: any) => e.resource.id).sort(), ['sp2', 'sp4']);
  });

  test('system-level search with _type pages through both types', async () => {
    const pages = await allPages(h, '/fhir?_type=Patient,Observation&_count=4');
    const keys = pages.flatMap((p) => (p.entry ?? []).map((e: any) => `${e.resource.resourceType}/${e.resource.id}`)).sort();
    assert.deepEqual(keys, ['Observation/so1', 'Patient/sp1', 'Patient/sp2', 'Patient/sp3', 'Patient/sp4', 'Patient/sp5']);
    assert.equal(pages[0].total, 6);
    assert.equal(pages.length, 2);
  });

  test('a resource deleted at the node is left out before the hospital catches up', async () => {
    await request(h.app).put('/fhir/Patient/spdel').set('Content-Type', FHIR).send(JSON.stringify({ resourceType: 'Patient', id: 'spdel', name: [{ family: 'Delfamily' }] })).expect(201);
    await h.sync!.idle();
    const before = await request(h.app).get('/fhir/Patient?family=Delfamily').expect(200);
    assert.equal(before.body.entry.length, 1);
    // Searched right after the delete, usually before the hospital sync has removed its copy.
    await request(h.app).delete('/fhir/Patient/spdel').expect(204);
    const after = await request(h.app).get('/fhir/Patient?family=Delfamily').expect(200);
    assert.equal(after.body.entry, undefined);
  });

  test('a resource only on the hospital server (not yet synced) is returned as the hospital has it', async () => {
    const res = await fetch(`${h.hospital!.url}/Patient`, { method: 'POST', headers: { 'Content-Type': FHIR }, body: JSON.stringify({ resourceType: 'Patient', name: [{ family: 'Onlyathospital' }] }) });
    assert.equal(res.status, 201);
    const found = await request(h.app).get('/fhir/Patient?family=Onlyathospital').expect(200);
    assert.equal(found.body.entry.length, 1);
    assert.equal(found.body.entry[0].resource.name[0].family, 'Onlyathospital');
  });

  test('search errors are OperationOutcomes', async () => {
    const cases: Array<[string, () => request.Test, number]> = [
      ['unknown type', () => request(h.app).get('/fhir/Nonsense?x=1'), 404],
      ['system without _type', () => request(h.app).get('/fhir?name=x'), 400],
      ['system with unknown _type', () => request(h.app).get('/fhir?_type=Nonsense'), 400],
      ['bad cursor', () => request(h.app).get('/fhir?_tidegate_page=xyz'), 400],
      ['_search with JSON body', () => request(h.app).post('/fhir/Patient/_search').set('Content-Type', FHIR).send('{"a":1}'), 415],
    ];
    for (const [name, make, status] of cases) {
      const res = await make();
      assert.equal(res.status, status, name);
      assert.equal(res.body.resourceType, 'OperationOutcome', name);
    }
  });
});

describe('FHIR search without or with an unreachable hospital', () => {
  test('a node without a hospital client answers 501 and does not list search', async () => {
    const h = await makeHarness();
    const res = await request(h.app).get('/fhir/Patient?name=x').expect(501);
    assert.equal(res.body.resourceType, 'OperationOutcome');
    const cap = await request(h.app).get('/fhir/metadata').expect(200);
    const pat = cap.body.rest[0].resource.find((r: any) => r.type === 'Patient');
    assert.equal(pat.interaction.some((i: any) => i.code === 'search-type'), false);
    assert.equal(cap.body.rest[0].interaction.some((i: any) => i.code === 'search-system'), false);
  });

  test('an unreachable hospital is 503 with an OperationOutcome; metadata lists search', async () => {
    const h = await makeHarness({ hospital: true });
    const cap = await request(h.app).get('/fhir/metadata').expect(200);
    const pat = cap.body.rest[0].resource.find((r: any) => r.type === 'Patient');
    assert.ok(pat.interaction.some((i: any) => i.code === 'search-type'));
    assert.ok(cap.body.rest[0].interaction.some((i: any) => i.code === 'search-system'));
    await h.hospital!.close();
    const res = await request(h.app).get('/fhir/Patient?name=x').expect(503);
    assert.equal(res.body.issue[0].code, 'transient');
    await h.close();
  });
});

describe('FHIR search through a running node (node.ts wiring)', () => {
  test('a node started by startNetwork forwards search to its Medplum hospital', async () => {
    const { startNetwork } = await import('../src/node/network.ts');
    // Two hospitals, as test/e2e.test.ts: a one-hospital network does not let the process exit after stop() (reported).
    const net = await startNetwork({ hospitals: 2, redisUrl: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', batchDelayMs: 5 });
    try {
      const gw = net.members[0]!.gateway;
      const put = await fetch(`${gw}/Patient/wired1`, { method: 'PUT', headers: { 'Content-Type': FHIR }, body: JSON.stringify({ resourceType: 'Patient', id: 'wired1', name: [{ family: 'Wiredfamily' }] }) });
      assert.equal(put.status, 201);
      await net.quiet();
      const res = await fetch(`${gw}/Patient?family=Wiredfamily`);
      assert.equal(res.status, 200);
      const bundle: any = await res.json();
      assert.deepEqual(bundle.entry.map((e: any) => e.fullUrl), [`${gw}/Patient/wired1`]);
    } finally {
      await net.stop();
    }
  });
});
