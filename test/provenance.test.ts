/**
 * Provenance of merges (issue 3, "Same-field conflicts → Provenance"; src/merge/provenance.ts):
 * every version that merges concurrent writes gets a Provenance whose agents are the authors of
 * both sides (on behalf of their nodes) and whose entities are the versions merged. Its id and
 * content are functions of the merged state, so replicas converge on one resource.
 *
 * Part 1 runs replicas in process; part 2 runs two real nodes (Medplum hospitals over HTTP, gossip
 * through the local Redis under a fresh key prefix) and reads the Provenance over FHIR REST; the same
 * network also checks the cross-hospital If-Match case of issue 3 (read at one node, write at the other).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { deliver, fhir, liveBody, makeNode, T0, write } from './fixtures/merge/harness.ts';
import { canonicalStringify } from '../src/fhir/json.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { startNetwork } from '../src/node/network.ts';
import type { Network } from '../src/node/network.ts';

const KEY = 'Patient/prov-1';
const BASE = '{"resourceType":"Patient","id":"prov-1","gender":"female","birthDate":"1980-01-01"}';
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

describe('merge Provenance (replicas in process)', () => {
  it('a merge of concurrent edits gets one Provenance, identical at both replicas', () => {
    const a = makeNode('hospital-a');
    const b = makeNode('hospital-b');
    deliver(b, KEY, write(a, KEY, BASE).update!);
    assert.equal(a.replica.mergeProvenance(KEY), undefined, 'a version of one write is no merge');
    const va = write(a, KEY, BASE.replace('female', 'other'), { author: 'Practitioner/dr-a' }).version;
    b.wall = T0 + 10;
    const vb = write(b, KEY, BASE.replace('1980', '1981'), { author: 'nurse b' }).version;
    assert.equal(b.replica.mergeProvenance(KEY), undefined, 'before the exchange nothing is merged');
    deliver(a, KEY, ...b.produced);
    deliver(b, KEY, a.produced[a.produced.length - 1]!);
    const pa = a.replica.mergeProvenance(KEY);
    const pb = b.replica.mergeProvenance(KEY);
    assert.ok(pa && pb);
    assert.equal(canonicalStringify(pa), canonicalStringify(pb), 'both replicas build the same Provenance');
    const merged = a.replica.current(KEY)!;
    assert.equal(merged.versionId, b.replica.current(KEY)!.versionId);
    assert.match(String(pa.id), /^merge-[0-9a-f]{40}$/);
    assert.deepEqual(pa.target, [{ reference: `${KEY}/_history/${merged.versionId}` }]);
    assert.equal(pa.recorded, merged.lastUpdated);
    assert.deepEqual(
      (pa.entity as FhirJsonObject[]).map((e) => [e.role, (e.what as FhirJsonObject).reference]),
      [
        ['revision', `${KEY}/_history/${va.versionId}`],
        ['revision', `${KEY}/_history/${vb.versionId}`],
      ],
      'entities: the version each side wrote',
    );
    const agents = pa.agent as FhirJsonObject[];
    assert.deepEqual(agents.map((g) => g.who), [{ reference: 'Practitioner/dr-a' }, { display: 'nurse b' }]);
    assert.deepEqual(agents.map((g) => ((g.onBehalfOf as FhirJsonObject).identifier as FhirJsonObject).value), ['hospital-a', 'hospital-b']);
    assert.equal(((pa.activity as FhirJsonObject).coding as FhirJsonObject[])[0]!.code, 'merge');
    // The merged versions are real versions at their nodes (vread works there).
    assert.equal(a.replica.version(KEY, va.versionId)?.versionId, va.versionId);
    assert.equal(b.replica.version(KEY, vb.versionId)?.versionId, vb.versionId);
  });

  it('written at both replicas, the Provenance converges to one resource without conflicts', () => {
    const a = makeNode('hospital-a');
    const b = makeNode('hospital-b');
    deliver(b, KEY, write(a, KEY, BASE).update!);
    write(a, KEY, BASE.replace('female', 'other'));
    b.wall = T0 + 10;
    write(b, KEY, BASE.replace('1980', '1981'));
    deliver(a, KEY, b.produced[0]!);
    deliver(b, KEY, a.produced[1]!);
    const ra = a.replica.recordMergeProvenance(KEY);
    const rb = b.replica.recordMergeProvenance(KEY);
    assert.ok(ra && rb);
    assert.equal(ra.key, rb.key);
    assert.equal(a.replica.recordMergeProvenance(KEY), undefined, 'written once per replica');
    deliver(a, ra.key, rb.update);
    deliver(b, rb.key, ra.update);
    const x = a.replica.current(ra.key)!;
    const y = b.replica.current(rb.key)!;
    assert.equal(x.body, y.body);
    assert.equal(x.versionId, y.versionId);
    assert.deepEqual(a.replica.conflicts(ra.key), []);
    assert.equal(a.replica.mergeProvenance(ra.key), undefined, 'a Provenance merged from two replicas gets no Provenance itself');
  });

  it('a sequential edit (one side had seen the other) is no merge', () => {
    const a = makeNode('hospital-a');
    const b = makeNode('hospital-b');
    deliver(b, KEY, write(a, KEY, BASE).update!);
    b.wall = T0 + 10;
    deliver(a, KEY, write(b, KEY, BASE.replace('1980', '1981')).update!);
    a.wall = T0 + 20;
    const body = liveBody(a, KEY);
    body.gender = 'male';
    deliver(b, KEY, write(a, KEY, fhir(canonicalStringify(body))).update!);
    assert.equal(a.replica.mergeProvenance(KEY), undefined);
    assert.equal(b.replica.mergeProvenance(KEY), undefined);
  });

  it('three concurrent writers give three entities and agents', () => {
    const nodes = ['n1', 'n2', 'n3'].map((id) => makeNode(id));
    const create = write(nodes[0]!, KEY, BASE).update!;
    for (const n of nodes.slice(1)) deliver(n, KEY, create);
    nodes.forEach((n, i) => {
      n.wall = T0 + i;
      write(n, KEY, BASE.replace('female', ['male', 'other', 'unknown'][i]!), { author: `Practitioner/p${i}` });
    });
    for (const to of nodes) for (const from of nodes) if (to !== from) deliver(to, KEY, from.produced[from.produced.length - 1]!);
    const ps = nodes.map((n) => n.replica.mergeProvenance(KEY));
    assert.ok(ps[0]);
    for (const p of ps) assert.equal(canonicalStringify(p!), canonicalStringify(ps[0]));
    assert.equal((ps[0].entity as unknown[]).length, 3);
    assert.deepEqual((ps[0].agent as FhirJsonObject[]).map((g) => (g.who as FhirJsonObject).reference), ['Practitioner/p0', 'Practitioner/p1', 'Practitioner/p2']);
  });
});

describe('merge Provenance between two nodes over HTTP', () => {
  let net: Network;
  before(async () => {
    // A long batch delay: both PUTs are answered before either node's update is sent.
    net = await startNetwork({ hospitals: 2, redisUrl: REDIS_URL, batchDelayMs: 300, hospitalPollIntervalMs: 0 });
  });
  after(async () => {
    await net?.stop();
  });

  it('concurrent PUTs at two nodes: both read the same Provenance by id, and the hospital finds it by target', async () => {
    const [m1, m2] = net.members as [Network['members'][0], Network['members'][0]];
    const put = (base: string, body: object, author: string): Promise<Response> =>
      fetch(`${base}/Patient/prov-net`, { method: 'PUT', headers: { 'Content-Type': 'application/fhir+json', 'X-Tidegate-Author': author }, body: JSON.stringify(body) });
    const base = { resourceType: 'Patient', id: 'prov-net', gender: 'female', birthDate: '1980-01-01' };
    assert.equal((await put(m1.gateway, base, 'Practitioner/dr-1')).status, 201);
    assert.ok((await net.converge(60_000)) !== undefined, 'create converged');
    const [r1, r2] = await Promise.all([put(m1.gateway, { ...base, gender: 'other' }, 'Practitioner/dr-1'), put(m2.gateway, { ...base, birthDate: '1981-02-02' }, 'Practitioner/dr-2')]);
    assert.deepEqual([r1.status, r2.status], [200, 200]);
    const v1 = r1.headers.get('etag');
    const v2 = r2.headers.get('etag');
    assert.ok((await net.converge(60_000)) !== undefined, 'merge converged');
    const merged = m1.node.replica.current('Patient/prov-net')!;
    const body = JSON.parse(merged.body!) as { gender: string; birthDate: string };
    assert.deepEqual([body.gender, body.birthDate], ['other', '1981-02-02'], 'both edits merged');
    const provKeys = [...m1.node.replica.resourceKeys()].filter((k) => k.startsWith('Provenance/'));
    assert.equal(provKeys.length, 1, `one Provenance, not one per node: ${provKeys.join(', ')}`);
    const id = provKeys[0]!.slice('Provenance/'.length);
    const read = async (gateway: string): Promise<any> => {
      const res = await fetch(`${gateway}/Provenance/${id}`);
      assert.equal(res.status, 200);
      return res.json();
    };
    const [p1, p2] = await Promise.all([read(m1.gateway), read(m2.gateway)]);
    assert.deepEqual(p1, p2, 'both nodes serve the same Provenance (same versionId)');
    assert.equal(p1.target[0].reference, `Patient/prov-net/_history/${merged.versionId}`);
    const versions = p1.entity.map((e: any) => `W/"${e.what.reference.split('/_history/')[1]}"`).sort();
    assert.deepEqual(versions, [v1, v2].sort(), 'entities are the versions the two PUTs answered');
    assert.deepEqual(p1.agent.map((g: any) => g.who.reference), ['Practitioner/dr-1', 'Practitioner/dr-2']);
    // Search by target is answered by the hospital FHIR server, which the nodes wrote it to. The
    // target is version-specific, and Medplum matches a reference parameter exactly, so the query
    // names the version (docs/merge.md, "Provenance").
    const target = encodeURIComponent(`Patient/prov-net/_history/${merged.versionId}`);
    const search = async (): Promise<any> => (await fetch(`${m2.gateway}/Provenance?target=${target}`)).json();
    let bundle = await search();
    for (let i = 0; i < 50 && !(bundle.entry?.length > 0); i++) {
      await new Promise((r) => setTimeout(r, 100));
      bundle = await search();
    }
    assert.equal(bundle.resourceType, 'Bundle');
    assert.deepEqual(bundle.entry?.map((e: any) => e.resource.id), [id], `search by target: ${JSON.stringify(bundle).slice(0, 400)}`);
  });

  it('cross-hospital If-Match: a version read at one node is a valid base at another; an unknown one is 412', async () => {
    const [m1, m2] = net.members as [Network['members'][0], Network['members'][0]];
    const body = { resourceType: 'Patient', id: 'xh-1', gender: 'female', birthDate: '1970-01-01' };
    const put = (base: string, b: object, ifMatch?: string): Promise<Response> =>
      fetch(`${base}/Patient/xh-1`, { method: 'PUT', headers: { 'Content-Type': 'application/fhir+json', ...(ifMatch ? { 'If-Match': ifMatch } : {}) }, body: JSON.stringify(b) });
    assert.equal((await put(m1.gateway, body)).status, 201);
    assert.ok((await net.converge(60_000)) !== undefined);
    const read = await fetch(`${m1.gateway}/Patient/xh-1`);
    const etag = read.headers.get('etag')!;
    await read.arrayBuffer();
    const res = await put(m2.gateway, { ...body, gender: 'male' }, etag);
    assert.equal(res.status, 200, 'the version read at hospital 1 is known at hospital 2');
    await res.arrayBuffer();
    const unknown = await put(m2.gateway, { ...body, gender: 'other' }, 'W/"999.deadbeef"');
    assert.equal(unknown.status, 412);
    const oo = (await unknown.json()) as { resourceType: string };
    assert.equal(oo.resourceType, 'OperationOutcome');
    assert.ok((await net.converge(60_000)) !== undefined);
    assert.equal(JSON.parse(m1.node.replica.current('Patient/xh-1')!.body!).gender, 'male');
  });
});
