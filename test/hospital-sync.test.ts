/**
 * Sync between tidegate nodes and their hospitals' own FHIR servers (issue 6, "Sync with the
 * hospital FHIR server"): the `_history` poller, the durable BullMQ outbox, ids and references.
 * Real Medplum stand-in servers over HTTP and a real Redis (REDIS_URL, default 127.0.0.1:6379).
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { loadNodeConfig } from '../src/config/config.ts';
import { startNetwork } from '../src/node/network.ts';
import type { Member, Network } from '../src/node/network.ts';
import { isJsonObject, parseFhirJson } from '../src/fhir/json.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { Replica } from '../src/merge/replica.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { MemoryStore } from '../src/store/store.ts';
import {
  comparableForm,
  contentHash,
  FileCursorStore,
  HOSPITAL_SYSTEM_AUTHOR,
  HospitalClient,
  HospitalError,
  HospitalOutbox,
  HospitalPoller,
  MemoryCursorStore,
  RedisCursorStore,
  startMedplumHospital,
  SyncLedger,
} from '../src/hospital/index.ts';
import type { HospitalCursorStore, MedplumHospital } from '../src/hospital/index.ts';
import { deleteKeysMatching } from '../src/tide/redis-keys.ts';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const FHIR_HEADERS = { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' };
const POLL_MS = 150;

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    if (await cond()) return;
    if (Date.now() - t0 > timeoutMs) assert.fail(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 40));
  }
}

async function fhirFetch(url: string, init: { method?: string; body?: unknown; headers?: Record<string, string> } = {}): Promise<{ status: number; body: any }> {
  const res = await fetch(url, {
    method: init.method ?? 'GET',
    headers: { ...FHIR_HEADERS, ...init.headers },
    ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

/** Journal entries of one resource on a stand-in hospital, oldest first. */
function journalOf(h: MedplumHospital, type: string, id: string): Array<{ method: string; resource: any }> {
  return h.repo
    .changes({ resourceType: type })
    .filter((e) => e.id === id)
    .reverse()
    .map((e) => ({ method: e.method, resource: e.resource === undefined ? undefined : JSON.parse(e.resource) }));
}

async function deleteKeys(prefix: string): Promise<void> {
  const r = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  try {
    await deleteKeysMatching(r, `${prefix}:*`);
  } finally {
    r.disconnect();
  }
}

function fhir(text: string): FhirJsonObject {
  const v = parseFhirJson(text);
  assert.ok(isJsonObject(v));
  return v;
}

/** Every counter that must stop moving once a network is quiet. */
function counters(net: Network): string {
  return JSON.stringify(
    net.members.map((m) => {
      const s = m.node.stats();
      return [s.localUpdates, s.remoteUpdates, s.hospitalWrites, s.hospitalInbound, m.hospital.repo.journalSize];
    }),
  );
}

describe('hospital sync: edits made directly on the hospital server, two nodes, one Redis', () => {
  let net: Network;
  let a: Member;
  let b: Member;
  before(async () => {
    net = await startNetwork({ hospitals: 2, redisUrl: REDIS_URL, batchDelayMs: 5, hospitalPollIntervalMs: POLL_MS });
    [a, b] = net.members as [Member, Member];
  });
  after(async () => {
    await net?.stop();
  });

  it('an edit made directly on hospital B reaches hospital A through the nodes', async () => {
    const put = await fhirFetch(`${a.gateway}/Patient/direct-1`, {
      method: 'PUT',
      body: { resourceType: 'Patient', id: 'direct-1', gender: 'female', name: [{ family: 'Original' }] },
    });
    assert.equal(put.status, 201);
    assert.ok((await net.converge(30_000)) !== undefined, 'converged after the node write');
    await waitFor('hospital B holds the resource', async () => (await b.client.read('Patient', 'direct-1')) !== undefined);

    // A clinician edits the resource in hospital B's own EHR: straight to its FHIR server.
    const atB = await fhirFetch(`${b.fhirServer}/Patient/direct-1`);
    const edited = { ...atB.body, birthDate: '1984-03-05', telecom: [{ system: 'phone', value: '555-0199' }] };
    assert.equal((await fhirFetch(`${b.fhirServer}/Patient/direct-1`, { method: 'PUT', body: edited })).status, 200);

    await waitFor('hospital A receives the edit', async () => (await a.client.read('Patient', 'direct-1'))?.['birthDate'] === '1984-03-05');
    assert.ok((await net.converge(30_000)) !== undefined, 'converged after the hospital edit');
    const onA = await a.client.read('Patient', 'direct-1');
    assert.ok(onA);
    assert.equal(((onA['telecom'] as FhirJsonObject[])[0]!)['value'], '555-0199');
    assert.equal(((onA['name'] as FhirJsonObject[])[0]!)['family'], 'Original', 'untouched elements kept');
    const viaGatewayA = await fhirFetch(`${a.gateway}/Patient/direct-1`);
    assert.equal(viaGatewayA.body.birthDate, '1984-03-05');
    assert.ok(b.node.hospitalPoller!.stats().applied >= 1, 'B picked it up from its hospital');
    assert.equal(a.node.hospitalPoller!.stats().applied, 0, 'A only saw its own writes in its history');
    // The edit merged without concurrent changes: hospital B already holds the merged version, no write back.
    assert.deepEqual(
      journalOf(b.hospital, 'Patient', 'direct-1').map((e) => e.method),
      ['POST', 'PUT'],
      'hospital B: the node write and the clinician edit, nothing echoed back',
    );
    const cmp = await net.compareHospitals();
    assert.deepEqual(cmp.mismatched, []);
  });

  it('a resource created directly on hospital B (server-assigned id) appears at hospital A under that id', async () => {
    const created = await fhirFetch(`${b.fhirServer}/Observation`, {
      method: 'POST',
      body: { resourceType: 'Observation', status: 'final', code: { text: 'heart rate' }, subject: { reference: 'Patient/direct-1' }, valueQuantity: { value: 72, unit: '/min' } },
    });
    assert.equal(created.status, 201);
    const id = created.body.id as string;
    await waitFor('hospital A has the observation', async () => (await a.client.read('Observation', id)) !== undefined);
    const onA = await a.client.read('Observation', id);
    assert.equal(((onA!['subject'] as FhirJsonObject)['reference']), 'Patient/direct-1');
    assert.equal((await fhirFetch(`${a.gateway}/Observation/${id}`)).status, 200);
  });

  it('a hospital edit and a concurrent node edit of other elements both survive (diff against the last synced state)', async () => {
    await fhirFetch(`${a.gateway}/Patient/direct-2`, { method: 'PUT', body: { resourceType: 'Patient', id: 'direct-2', gender: 'male', active: true } });
    assert.ok((await net.converge(30_000)) !== undefined);
    await waitFor('hospital B holds it', async () => (await b.client.read('Patient', 'direct-2')) !== undefined);
    const stale = (await fhirFetch(`${b.fhirServer}/Patient/direct-2`)).body;
    // Node A changes maritalStatus; hospital B's clinician, who never saw that, changes birthDate.
    const current = (await fhirFetch(`${a.gateway}/Patient/direct-2`)).body;
    const [ra, rb] = await Promise.all([
      fhirFetch(`${a.gateway}/Patient/direct-2`, { method: 'PUT', body: { ...current, maritalStatus: { text: 'Married' } } }),
      fhirFetch(`${b.fhirServer}/Patient/direct-2`, { method: 'PUT', body: { ...stale, birthDate: '1990-10-10' } }),
    ]);
    assert.equal(ra.status, 200);
    assert.equal(rb.status, 200);
    await waitFor('both edits on both hospitals', async () => {
      const [x, y] = await Promise.all([a.client.read('Patient', 'direct-2'), b.client.read('Patient', 'direct-2')]);
      return [x, y].every((r) => r?.['birthDate'] === '1990-10-10' && isJsonObject(r?.['maritalStatus']));
    });
    assert.ok((await net.converge(30_000)) !== undefined);
    const merged = (await fhirFetch(`${b.gateway}/Patient/direct-2`)).body;
    assert.equal(merged.maritalStatus.text, 'Married');
    assert.equal(merged.birthDate, '1990-10-10');
    assert.equal(merged.gender, 'male');
    assert.deepEqual((await net.compareHospitals()).mismatched, []);
  });

  it('a same-element conflict between the hospital and a node is recorded with the hospital system as author', async () => {
    await fhirFetch(`${a.gateway}/Patient/direct-3`, { method: 'PUT', body: { resourceType: 'Patient', id: 'direct-3', birthDate: '1970-01-01' } });
    assert.ok((await net.converge(30_000)) !== undefined);
    await waitFor('hospital B holds it', async () => (await b.client.read('Patient', 'direct-3')) !== undefined);
    const stale = (await fhirFetch(`${b.fhirServer}/Patient/direct-3`)).body;
    const current = (await fhirFetch(`${a.gateway}/Patient/direct-3`)).body;
    const appliedBefore = b.node.hospitalPoller!.stats().applied;
    await Promise.all([
      fhirFetch(`${a.gateway}/Patient/direct-3`, { method: 'PUT', body: { ...current, birthDate: '1971-01-01' }, headers: { 'X-Tidegate-Author': 'Practitioner/dr-a' } }),
      fhirFetch(`${b.fhirServer}/Patient/direct-3`, { method: 'PUT', body: { ...stale, birthDate: '1972-02-02' } }),
    ]);
    await waitFor('B merged the hospital edit', () => b.node.hospitalPoller!.stats().applied > appliedBefore);
    assert.ok((await net.converge(30_000)) !== undefined);
    const conflicts = (await fhirFetch(`${a.gateway}/Patient/direct-3/$conflicts`)).body;
    const birth = (conflicts.parameter ?? []).find((p: any) => p.part.some((x: any) => x.name === 'path' && x.valueString === 'birthDate'));
    assert.ok(birth, 'birthDate conflict recorded');
    const authors = birth.part.filter((x: any) => x.name.endsWith('Author')).map((x: any) => x.valueString);
    assert.ok(authors.includes(HOSPITAL_SYSTEM_AUTHOR), `authors ${authors.join(', ')}`);
    assert.ok(authors.includes('Practitioner/dr-a'));
    assert.deepEqual((await net.compareHospitals()).mismatched, []);
  });

  it('a delete on hospital B propagates to node A and hospital A', async () => {
    await fhirFetch(`${a.gateway}/Patient/direct-del`, { method: 'PUT', body: { resourceType: 'Patient', id: 'direct-del', gender: 'other' } });
    assert.ok((await net.converge(30_000)) !== undefined);
    await waitFor('both hospitals hold it', async () => (await a.client.read('Patient', 'direct-del')) !== undefined && (await b.client.read('Patient', 'direct-del')) !== undefined);
    assert.equal((await fhirFetch(`${b.fhirServer}/Patient/direct-del`, { method: 'DELETE' })).status, 200);
    await waitFor('hospital A no longer holds it', async () => (await a.client.read('Patient', 'direct-del')) === undefined);
    assert.equal((await fhirFetch(`${a.gateway}/Patient/direct-del`)).status, 410);
    assert.equal((await fhirFetch(`${b.gateway}/Patient/direct-del`)).status, 410);
    assert.ok(a.node.replica.current('Patient/direct-del')?.deleted);
  });

  it('no echo loop: once quiet, nothing moves for many poll periods', async () => {
    assert.ok((await net.converge(30_000)) !== undefined);
    // Let the pollers see the last own writes, then take a snapshot.
    await new Promise((r) => setTimeout(r, POLL_MS * 4));
    assert.ok((await net.converge(30_000)) !== undefined);
    const before = counters(net);
    const pollsBefore = net.members.map((m) => m.node.hospitalPoller!.stats().polls);
    await new Promise((r) => setTimeout(r, POLL_MS * 12));
    // at least 5 polls each in the quiet window (a loaded machine may need longer than 12 periods)
    await waitFor('pollers kept polling', () => net.members.every((m, i) => m.node.hospitalPoller!.stats().polls >= pollsBefore[i]! + 5));
    assert.ok(await net.quiet());
    assert.equal(counters(net), before, 'no updates, gossip, hospital writes or hospital versions after quiescence');
    for (const m of net.members) {
      assert.equal(m.node.hospitalPoller!.stats().errors, 0);
      assert.equal(m.node.hospitalSync.failures().size, 0);
    }
  });
});

describe('hospital sync: a hospital server that is down for a while', () => {
  let net: Network;
  let a: Member;
  let b: Member;
  before(async () => {
    net = await startNetwork({
      hospitals: 2,
      redisUrl: REDIS_URL,
      batchDelayMs: 5,
      hospitalPollIntervalMs: POLL_MS,
      hospitalBackoffMs: 50,
      hospitalMaxBackoffMs: 400,
    });
    [a, b] = net.members as [Member, Member];
  });
  after(async () => {
    await net?.stop();
  });

  it('answering 503: writes queue up, then all arrive in order when it returns', async () => {
    b.hospital.setAvailable(false);
    try {
      for (let i = 0; i < 8; i++) {
        const r = await fhirFetch(`${a.gateway}/Patient/outage-${i}`, { method: 'PUT', body: { resourceType: 'Patient', id: `outage-${i}`, gender: 'female' } });
        assert.equal(r.status, 201);
      }
      // One resource changes five times while hospital B is down.
      for (let v = 1; v <= 5; v++) {
        const cur = (await fhirFetch(`${a.gateway}/Patient/outage-0`)).body;
        assert.equal((await fhirFetch(`${a.gateway}/Patient/outage-0`, { method: 'PUT', body: { ...cur, birthDate: `200${v}-01-01` } })).status, 200);
      }
      await waitFor('B received everything from A', () => b.node.replica.current('Patient/outage-0')?.body?.includes('2005-01-01') === true);
      await waitFor('B retried a few times', () => b.node.hospitalSync.stats().attemptsFailed >= 3);
      assert.ok(b.node.hospitalSync.backlog > 0, 'writes wait in the outbox');
      assert.equal(b.hospital.repo.changes({ resourceType: 'Patient' }).filter((e) => e.id.startsWith('outage-')).length, 0, 'nothing reached hospital B');
      assert.equal(b.node.hospitalSync.failures().size, 0, 'an outage is not a failure');
    } finally {
      b.hospital.setAvailable(true);
    }
    assert.ok((await net.converge(30_000)) !== undefined, 'converged after the outage');
    for (let i = 0; i < 8; i++) assert.ok(await b.client.read('Patient', `outage-${i}`), `outage-${i} on hospital B`);
    const history = journalOf(b.hospital, 'Patient', 'outage-0');
    assert.equal(history.at(-1)?.resource.birthDate, '2005-01-01');
    const years = history.map((e) => e.resource?.birthDate ?? '0000');
    assert.deepEqual(years, [...years].sort(), 'never an older version after a newer one');
    assert.ok(history.length <= 3, `superseded versions skipped (${history.length} writes)`);
    assert.deepEqual((await net.compareHospitals()).mismatched, []);
  });

  it('closed, then restarted on the same port with its data: writes made meanwhile arrive', async () => {
    const { port, repo, name } = b.hospital;
    const failedBefore = b.node.hospitalSync.stats().attemptsFailed;
    await b.hospital.close();
    let restarted: MedplumHospital | undefined;
    try {
      await fhirFetch(`${a.gateway}/Patient/closed-1`, { method: 'PUT', body: { resourceType: 'Patient', id: 'closed-1', gender: 'male' } });
      const cur = (await fhirFetch(`${a.gateway}/Patient/outage-1`)).body;
      await fhirFetch(`${a.gateway}/Patient/outage-1`, { method: 'PUT', body: { ...cur, gender: 'unknown' } });
      await waitFor('B retried against the closed port', () => b.node.hospitalSync.stats().attemptsFailed >= failedBefore + 3 && b.node.hospitalSync.backlog > 0);
      await waitFor('B poller noticed the outage', () => b.node.hospitalPoller!.stats().errors > 0);
      restarted = await startMedplumHospital({ port, repo, name });
      await waitFor('hospital B has the new resource', async () => (await b.client.read('Patient', 'closed-1')) !== undefined);
      assert.ok((await net.converge(30_000)) !== undefined);
      assert.equal((await b.client.read('Patient', 'outage-1'))?.['gender'], 'unknown');
      assert.deepEqual((await net.compareHospitals()).mismatched, []);
      assert.equal(b.node.hospitalSync.failures().size, 0);
      await waitFor('B poller recovered', async () => {
        const before = b.node.hospitalPoller!.stats().polls;
        await new Promise((r) => setTimeout(r, POLL_MS * 3));
        return b.node.hospitalPoller!.stats().polls > before;
      });
    } finally {
      await restarted?.close();
    }
  });
});

describe('hospital sync: id-assigning hospitals (server ids, references rewritten both ways)', () => {
  let net: Network;
  let a: Member;
  let b: Member;
  before(async () => {
    net = await startNetwork({
      hospitals: 2,
      redisUrl: REDIS_URL,
      batchDelayMs: 5,
      hospitalPollIntervalMs: POLL_MS,
      hospitalServer: { allowUpdateCreate: false },
    });
    [a, b] = net.members as [Member, Member];
  });
  after(async () => {
    await net?.stop();
  });

  it('a direct edit on hospital B, in hospital ids, comes back to the nodes in node ids; no echo', async () => {
    await fhirFetch(`${a.gateway}/Patient/ida-p`, { method: 'PUT', body: { resourceType: 'Patient', id: 'ida-p', gender: 'female' } });
    await fhirFetch(`${a.gateway}/Observation/ida-o`, {
      method: 'PUT',
      body: {
        resourceType: 'Observation',
        id: 'ida-o',
        status: 'final',
        code: { text: 'weight' },
        subject: { reference: 'Patient/ida-p' },
        contained: [{ resourceType: 'Practitioner', id: 'pr', name: [{ family: 'Contained' }] }],
        performer: [{ reference: '#pr' }],
        valueQuantity: { value: 70.5, unit: 'kg' },
      },
    });
    assert.ok((await net.converge(30_000)) !== undefined);
    await waitFor('hospital B has both', async () => (await b.client.read('Observation', 'ida-o')) !== undefined);
    const patientHid = (await b.client.idMap.toHospital('Patient/ida-p'))!.slice('Patient/'.length);
    const obsHid = (await b.client.idMap.toHospital('Observation/ida-o'))!.slice('Observation/'.length);
    assert.notEqual(patientHid, 'ida-p', 'hospital B assigned its own id');
    const raw = (await fhirFetch(`${b.fhirServer}/Observation/${obsHid}`)).body;
    assert.equal(raw.subject.reference, `Patient/${patientHid}`);
    assert.equal(raw.performer[0].reference, '#pr');

    // Direct edit at hospital B (its ids inside).
    assert.equal((await fhirFetch(`${b.fhirServer}/Observation/${obsHid}`, { method: 'PUT', body: { ...raw, status: 'amended' } })).status, 200);
    await waitFor('A sees the amendment', async () => (await fhirFetch(`${a.gateway}/Observation/ida-o`)).body.status === 'amended');
    assert.ok((await net.converge(30_000)) !== undefined);
    const atA = (await fhirFetch(`${a.gateway}/Observation/ida-o`)).body;
    assert.equal(atA.subject.reference, 'Patient/ida-p', 'node form keeps node ids');
    assert.equal(atA.contained[0].name[0].family, 'Contained');
    assert.equal((await fhirFetch(`${a.gateway}/Observation/${obsHid}`)).status, 404, 'no resource under the hospital id');
    const onA = await a.client.read('Observation', 'ida-o');
    assert.equal(onA?.['status'], 'amended');
    assert.deepEqual((await net.compareHospitals()).mismatched, []);

    await new Promise((r) => setTimeout(r, POLL_MS * 4));
    assert.ok((await net.converge(30_000)) !== undefined);
    const snapshot = counters(net);
    await new Promise((r) => setTimeout(r, POLL_MS * 8));
    assert.equal(counters(net), snapshot, 'quiet after the round trip');
  });
});

describe('HospitalClient: ids and references inside Bundles and contained resources', () => {
  let hosp: MedplumHospital;
  before(async () => {
    hosp = await startMedplumHospital({ allowUpdateCreate: false, name: 'ids' });
  });
  after(async () => {
    await hosp?.close();
  });

  it('rewrites references, Bundle entries (resource ids, fullUrl, request.url) and contained references both ways', async () => {
    const nodeBase = 'http://node.example/fhir';
    const client = new HospitalClient({ baseUrl: hosp.url, nodeBaseUrl: nodeBase });
    const { hospitalId: pid } = await client.upsert({ resourceType: 'Patient', id: 'bp-1', gender: 'male' });
    assert.notEqual(pid, 'bp-1');
    const bundle = {
      resourceType: 'Bundle',
      id: 'bundle-1',
      type: 'collection',
      entry: [
        { fullUrl: `${nodeBase}/Patient/bp-1`, resource: { resourceType: 'Patient', id: 'bp-1', gender: 'male' } },
        {
          fullUrl: 'urn:uuid:6f1c1d8e-7c6e-4b8e-9f0a-2d3c4b5a6978',
          resource: {
            resourceType: 'Observation',
            status: 'final',
            code: { text: 'x' },
            subject: { reference: 'Patient/bp-1' },
            focus: [{ reference: `${nodeBase}/Patient/bp-1/_history/3` }],
            contained: [{ resourceType: 'Device', id: 'd1', patient: { reference: 'Patient/bp-1' } }],
            device: { reference: '#d1' },
          },
        },
      ],
    };
    const { hospitalId: bid } = await client.upsert(bundle);
    const raw = (await fhirFetch(`${hosp.url}/Bundle/${bid}`)).body;
    assert.equal(raw.entry[0].fullUrl, `${hosp.url}/Patient/${pid}`);
    assert.equal(raw.entry[0].resource.id, pid);
    assert.equal(raw.entry[1].fullUrl, 'urn:uuid:6f1c1d8e-7c6e-4b8e-9f0a-2d3c4b5a6978');
    assert.equal(raw.entry[1].resource.subject.reference, `Patient/${pid}`);
    assert.equal(raw.entry[1].resource.focus[0].reference, `${hosp.url}/Patient/${pid}/_history/3`);
    assert.equal(raw.entry[1].resource.contained[0].patient.reference, `Patient/${pid}`);
    assert.equal(raw.entry[1].resource.contained[0].id, 'd1', 'contained ids are local');
    assert.equal(raw.entry[1].resource.device.reference, '#d1');

    const back = await client.read('Bundle', 'bundle-1');
    assert.ok(back);
    assert.equal(comparableForm(back), comparableForm(bundle), 'node form round-trips exactly');

    // A transaction-style Bundle: request.url is rewritten too.
    const tx = await client.toHospitalForm({ resourceType: 'Bundle', type: 'transaction', entry: [{ request: { method: 'PUT', url: 'Patient/bp-1' }, resource: { resourceType: 'Patient', id: 'bp-1' } }, { request: { method: 'POST', url: 'Patient?identifier=x|1' } }] });
    const txEntries = tx['entry'] as FhirJsonObject[];
    assert.equal((txEntries[0]!['request'] as FhirJsonObject)['url'], `Patient/${pid}`);
    assert.equal((txEntries[0]!['resource'] as FhirJsonObject)['id'], pid);
    assert.equal((txEntries[1]!['request'] as FhirJsonObject)['url'], 'Patient?identifier=x|1');

    // Without nodeBaseUrl, absolute references to the hospital come back as relative node references.
    const plain = new HospitalClient({ baseUrl: hosp.url, idMap: client.idMap });
    const nodeForm = await plain.toNodeForm({ resourceType: 'Observation', status: 'final', code: { text: 'y' }, subject: { reference: `${hosp.url}/Patient/${pid}` }, performer: [{ reference: 'https://elsewhere.example/fhir/Practitioner/1' }] });
    assert.equal((nodeForm['subject'] as FhirJsonObject)['reference'], 'Patient/bp-1');
    assert.equal(((nodeForm['performer'] as FhirJsonObject[])[0]!)['reference'], 'https://elsewhere.example/fhir/Practitioner/1');
  });

  it('history returns versions newest first in node form, with deletions, and needs a known level', async () => {
    const client = new HospitalClient({ baseUrl: hosp.url, pageSize: 2 });
    const since = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 5));
    const { hospitalId } = await client.upsert({ resourceType: 'Patient', id: 'hist-1', gender: 'male' });
    await client.upsert({ resourceType: 'Patient', id: 'hist-1', gender: 'female' });
    await client.upsert({ resourceType: 'Observation', id: 'hist-o', status: 'final', code: { text: 'z' }, subject: { reference: 'Patient/hist-1' } });
    await client.remove('Patient', 'hist-1');
    const { entries, serverDate } = await client.history({ since });
    assert.equal(typeof serverDate, 'string');
    assert.deepEqual(
      entries.map((e) => [e.ref, e.deleted]),
      [
        ['Patient/hist-1', true],
        ['Observation/hist-o', false],
        ['Patient/hist-1', false],
        ['Patient/hist-1', false],
      ],
      'all pages, newest first, in node ids',
    );
    assert.equal(entries[0]!.hospitalRef, `Patient/${hospitalId}`);
    assert.equal(((entries[1]!.resource!['subject'] as FhirJsonObject)['reference']), 'Patient/hist-1');
    assert.equal(entries[2]!.resource!['gender'], 'female');
    assert.ok(entries.every((e) => typeof e.versionId === 'string' && typeof e.lastUpdated === 'string'));
    const typed = await client.history({ since, type: 'Observation' });
    assert.deepEqual(typed.entries.map((e) => e.ref), ['Observation/hist-o']);

    const noSystem = await startMedplumHospital({ systemHistory: false });
    try {
      const err = await new HospitalClient({ baseUrl: noSystem.url }).history({ since }).then(
        () => assert.fail('expected a refusal'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof HospitalError);
      assert.equal(err.code, 'ERR_HOSPITAL_REJECTED');
      assert.equal(err.status, 404);
      assert.equal(err.operation, 'history');
    } finally {
      await noSystem.close();
    }
    await assert.rejects(client.history({ since: 'yesterday' }), TypeError);
  });

  it('the stand-in answers instance history newest first on every call (Medplum\'s MemoryRepository flips it)', async () => {
    const created = await fhirFetch(`${hosp.url}/Patient`, { method: 'POST', body: { resourceType: 'Patient', gender: 'male' } });
    const id = created.body.id as string;
    await fhirFetch(`${hosp.url}/Patient/${id}`, { method: 'PUT', body: { ...created.body, gender: 'female' } });
    for (let i = 0; i < 3; i++) {
      const h = await fhirFetch(`${hosp.url}/Patient/${id}/_history`);
      assert.equal(h.status, 200);
      assert.deepEqual(h.body.entry.map((e: any) => e.resource.gender), ['female', 'male'], `call ${i + 1}`);
    }
  });
});

describe('HospitalPoller on its own (one replica, one hospital)', () => {
  let hosp: MedplumHospital;
  let client: HospitalClient;
  const stores: HospitalCursorStore[] = [];
  before(async () => {
    hosp = await startMedplumHospital({ name: 'poller' });
    client = new HospitalClient({ baseUrl: hosp.url });
  });
  after(async () => {
    for (const s of stores) await s.close();
    await hosp?.close();
  });

  function replica(): Replica {
    return new Replica({ nodeId: 'poll-node', store: new MemoryStore(), policy: loadMergePolicy() });
  }

  it('keeps its cursor durably: a restarted poller does not merge old versions again', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tidegate-cursor-'));
    try {
      const file = new FileCursorStore(join(dir, 'sub', 'cursor.json'));
      const r = replica();
      const updates: string[] = [];
      const p1 = new HospitalPoller({ source: client, replica: r, cursor: file, intervalMs: 0, onUpdate: (k) => updates.push(k) });
      await p1.start();
      await fhirFetch(`${hosp.url}/Patient/cur-1`, { method: 'PUT', body: { resourceType: 'Patient', id: 'cur-1', gender: 'male' } });
      assert.equal((await p1.pollNow()).applied, 1);
      await p1.stop();
      assert.equal(((await stat(file.path)).mode & 0o777).toString(8), '600');
      const saved = await file.load();
      assert.ok(saved && saved.seen.length >= 1);
      assert.ok(!JSON.stringify(saved).includes('cur-1'), 'no resource ids in the cursor');

      const p2 = new HospitalPoller({ source: client, replica: r, cursor: new FileCursorStore(file.path), intervalMs: 0, onUpdate: (k) => updates.push(k) });
      const second = await p2.pollNow();
      assert.equal(second.entries, 0, 'nothing new after a restart');
      await fhirFetch(`${hosp.url}/Patient/cur-1`, { method: 'PUT', body: { resourceType: 'Patient', id: 'cur-1', gender: 'female' } });
      const third = await p2.pollNow();
      assert.equal(third.applied, 1);
      await p2.stop();
      assert.deepEqual(updates, ['Patient/cur-1', 'Patient/cur-1']);
      assert.ok(r.current('Patient/cur-1')?.body?.includes('"female"'));

      // 'beginning' with a fresh cursor reads the whole history again (the replica already has it: no change).
      const p3 = new HospitalPoller({ source: client, replica: r, cursor: new MemoryCursorStore(), intervalMs: 0, start: 'beginning', onUpdate: (k) => updates.push(k) });
      const all = await p3.pollNow();
      assert.ok(all.entries >= 2);
      await p3.stop();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a hospital-side resource that references a crypto-shredded Patient is not merged (the erasure holds on the poller path too)', async () => {
    const store = new MemoryStore();
    const shredded = new Set(['Patient/shr-gone']);
    (store as MemoryStore & { isShredded(key: string): boolean }).isShredded = (key) => shredded.has(key);
    const r = new Replica({ nodeId: 'poll-node', store, policy: loadMergePolicy() });
    const updates: string[] = [];
    const p = new HospitalPoller({ source: client, replica: r, cursor: new MemoryCursorStore(), intervalMs: 0, onUpdate: (k) => updates.push(k) });
    await p.start();
    await fhirFetch(`${hosp.url}/Observation/shr-obs`, { method: 'PUT', body: { resourceType: 'Observation', id: 'shr-obs', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/shr-gone' } } });
    await fhirFetch(`${hosp.url}/Observation/shr-ok`, { method: 'PUT', body: { resourceType: 'Observation', id: 'shr-ok', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/shr-kept' } } });
    const res = await p.pollNow();
    await p.stop();
    assert.equal(r.current('Observation/shr-obs'), undefined, 'not merged');
    assert.ok(r.current('Observation/shr-ok'), 'a resource about another patient is merged');
    assert.ok(updates.includes('Observation/shr-ok') && !updates.includes('Observation/shr-obs'), 'only the other patient\u2019s resource is gossiped');
    assert.ok(res.rejected >= 1);
  });

  it('Redis cursor store round-trips and rejects garbage', async () => {
    const key = `tidegate-test-${randomBytes(4).toString('hex')}:cursor`;
    const store = new RedisCursorStore({ redisUrl: REDIS_URL, key });
    stores.push(store);
    assert.equal(await store.load(), undefined);
    const cursor = { v: 1 as const, since: '2024-01-02T03:04:05.678Z', seen: [['abc', 1] as [string, number]] };
    await store.save(cursor);
    assert.deepEqual(await store.load(), cursor);
    const r = new Redis(REDIS_URL);
    try {
      await r.set(key, '{"v":2}');
      await assert.rejects(store.load(), /not a cursor/);
    } finally {
      await r.del(key);
      r.disconnect();
    }
  });

  it('falls back to per-type history when the server has none at system level; invalid versions are refused', async () => {
    const noSystem = await startMedplumHospital({ systemHistory: false, validate: false });
    try {
      const c = new HospitalClient({ baseUrl: noSystem.url });
      const r = replica();
      const keys: string[] = [];
      const untyped = new HospitalPoller({ source: c, replica: r, intervalMs: 0, onUpdate: () => {} });
      await assert.rejects(untyped.pollNow(), (e: unknown) => e instanceof HospitalError && e.status === 404);
      assert.equal(untyped.stats().errors, 1);
      const poller = new HospitalPoller({ source: c, replica: r, intervalMs: 0, types: ['Patient'], onUpdate: (k) => keys.push(k) });
      await poller.pollNow();
      await fhirFetch(`${noSystem.url}/Patient/typed-1`, { method: 'PUT', body: { resourceType: 'Patient', id: 'typed-1', gender: 'female' } });
      await fhirFetch(`${noSystem.url}/Patient/typed-bad`, { method: 'PUT', body: { resourceType: 'Patient', id: 'typed-bad', nickname: 'not FHIR' } });
      await fhirFetch(`${noSystem.url}/Observation/untyped`, { method: 'PUT', body: { resourceType: 'Observation', id: 'untyped', status: 'final', code: { text: 'q' } } });
      const res = await poller.pollNow();
      assert.equal(poller.stats().mode, 'type');
      assert.deepEqual(keys, ['Patient/typed-1']);
      assert.equal(res.rejected, 1, 'the invalid Patient is refused');
      assert.equal(r.current('Patient/typed-bad'), undefined);
      assert.equal(r.current('Observation/untyped'), undefined, 'types outside the list are not polled');
      await poller.stop();
    } finally {
      await noSystem.close();
    }
  });

  it('a hospital version equal to the last synced state makes no update; own writes are skipped', async () => {
    const own = await startMedplumHospital({ name: 'own' });
    try {
      await ownWritesScenario(own);
    } finally {
      await own.close();
    }
  });

  async function ownWritesScenario(hosp: MedplumHospital): Promise<void> {
    const client = new HospitalClient({ baseUrl: hosp.url });
    const r = replica();
    const ledger = new SyncLedger();
    const updates: string[] = [];
    const poller = new HospitalPoller({ source: client, replica: r, ledger, intervalMs: 0, onUpdate: (k) => updates.push(k) });
    await poller.pollNow();
    // The node writes a version to the hospital as the outbox does (decimal in lexical form).
    const body = fhir('{"resourceType":"Observation","id":"own-1","status":"final","code":{"text":"w"},"valueQuantity":{"value":71.50,"unit":"kg"}}');
    const { version } = r.write('Observation/own-1', body);
    ledger.beginWrite('Observation/own-1', version.versionId, contentHash(parseFhirJson(version.body!) as FhirJsonObject));
    const stored = await client.upsert(parseFhirJson(version.body!) as FhirJsonObject);
    ledger.wrote('Observation/own-1', version.versionId, stored.versionId, stored.lastUpdated);
    const first = await poller.pollNow();
    assert.equal(first.own, 1);
    assert.equal(first.applied, 0);
    // The hospital re-serializes 71.50 as 71.5; a direct edit of another element must not touch the decimal.
    const raw = (await fhirFetch(`${hosp.url}/Observation/own-1`)).body;
    assert.equal(raw.valueQuantity.value, 71.5);
    await fhirFetch(`${hosp.url}/Observation/own-1`, { method: 'PUT', body: { ...raw, status: 'amended' } });
    const second = await poller.pollNow();
    assert.equal(second.applied, 1);
    assert.ok(r.current('Observation/own-1')!.body!.includes('"value":71.50'), 'lexical decimal kept');
    // The same content again (a no-op save at the hospital) changes nothing.
    const again = (await fhirFetch(`${hosp.url}/Observation/own-1`)).body;
    await fhirFetch(`${hosp.url}/Observation/own-1`, { method: 'PUT', body: again });
    const third = await poller.pollNow();
    assert.equal(third.unchanged, 1);
    assert.deepEqual(updates, ['Observation/own-1']);
    // Restoring, at the hospital, the content the node once wrote is an edit too (not taken for an echo).
    const latest = (await fhirFetch(`${hosp.url}/Observation/own-1`)).body;
    await fhirFetch(`${hosp.url}/Observation/own-1`, { method: 'PUT', body: { ...latest, status: 'final' } });
    const fourth = await poller.pollNow();
    assert.equal(fourth.applied, 1);
    assert.ok(r.current('Observation/own-1')!.body!.includes('"status":"final"'));
    await poller.stop();
  }
});

describe('HospitalOutbox (BullMQ) on its own', () => {
  let hosp: MedplumHospital;
  const prefix = `tidegate-outbox-test-${randomBytes(4).toString('hex')}`;
  const secret = randomBytes(32);
  const opened: HospitalOutbox[] = [];
  before(async () => {
    hosp = await startMedplumHospital({ name: 'outbox' });
  });
  afterEach(async () => {
    for (const o of opened.splice(0)) await o.stop();
  });
  after(async () => {
    await hosp?.close();
    await deleteKeys(prefix);
  });

  function outbox(nodeId: string, writer = new HospitalClient({ baseUrl: hosp.url, timeoutMs: 2000 })): HospitalOutbox {
    const o = new HospitalOutbox(writer, { nodeId, redisUrl: REDIS_URL, prefix, secret, backoffMs: 30, maxBackoffMs: 200 });
    opened.push(o);
    return o;
  }

  it('nothing acknowledged is lost across an outbox restart during an outage; order holds', async () => {
    const r = new Replica({ nodeId: 'ob-node', store: new MemoryStore(), policy: loadMergePolicy() });
    hosp.setAvailable(false);
    const first = outbox('ob-1');
    await first.start();
    const versions = [];
    for (let v = 1; v <= 4; v++) {
      const { version } = r.write('Patient/ob-p', fhir(`{"resourceType":"Patient","id":"ob-p","name":[{"family":"Secretname"}],"birthDate":"200${v}-01-01"}`));
      versions.push(version);
      first.enqueue('Patient/ob-p', version);
      await new Promise((res) => setTimeout(res, 20)); // separate jobs
    }
    await waitFor('jobs in Redis and failing', () => first.stats().attemptsFailed >= 2);
    await waitFor('older versions superseded by the newest', () => first.stats().superseded === 3);
    assert.equal(first.backlog, 1, 'one job left: the newest version');
    // No PHI in Redis: payloads are encrypted, the written-versions hash is keyed by HMAC tags.
    const redis = new Redis(REDIS_URL);
    try {
      for (const k of await redis.keys(`${prefix}:*`)) {
        const type = await redis.type(k);
        const dump = type === 'hash' ? JSON.stringify(await redis.hgetall(k)) : type === 'string' ? ((await redis.get(k)) ?? '') : type === 'list' ? JSON.stringify(await redis.lrange(k, 0, -1)) : '';
        assert.ok(!dump.includes('Secretname') && !dump.includes('ob-p'), `${k} leaks content`);
      }
    } finally {
      redis.disconnect();
    }
    await first.stop();
    opened.splice(opened.indexOf(first), 1);

    hosp.setAvailable(true);
    const second = outbox('ob-1');
    await second.start();
    assert.equal(second.backlog, 1, 'the earlier run\'s job is counted');
    await second.idle();
    const onHospital = journalOf(hosp, 'Patient', 'ob-p');
    assert.deepEqual(onHospital.map((e) => e.resource.birthDate), ['2004-01-01'], 'one write, of the newest version');
    assert.equal(second.failures().size, 0);
    assert.equal(second.writes, 1);
    await second.stop();
    opened.splice(opened.indexOf(second), 1);

    // A job for an older version (as an earlier run may leave behind) never overwrites a newer one.
    const third = outbox('ob-1');
    await third.start();
    third.enqueue('Patient/ob-p', versions[1]!);
    await third.idle();
    assert.equal(third.stats().stale, 1);
    assert.equal(journalOf(hosp, 'Patient', 'ob-p').length, 1, 'hospital untouched');
  });

  it('on a hospital that assigns its own ids, a referenced resource is created before the resource pointing at it', async () => {
    const idHosp = await startMedplumHospital({ allowUpdateCreate: false, name: 'outbox-ids' });
    try {
      const client = new HospitalClient({ baseUrl: idHosp.url });
      const o = outbox('ob-3', client);
      const r = new Replica({ nodeId: 'ob-node-3', store: new MemoryStore(), policy: loadMergePolicy() });
      const obs = r.write('Observation/ref-o', fhir('{"resourceType":"Observation","id":"ref-o","status":"final","code":{"text":"t"},"subject":{"reference":"Patient/ref-p"}}'));
      const pat = r.write('Patient/ref-p', fhir('{"resourceType":"Patient","id":"ref-p","gender":"male"}'));
      // The referring resource is queued first, in the same batch.
      o.enqueue('Observation/ref-o', obs.version);
      o.enqueue('Patient/ref-p', pat.version);
      await o.start();
      await o.idle();
      assert.equal(client.assignsOwnIds, true);
      const pid = (await client.idMap.toHospital('Patient/ref-p'))!;
      const oid = (await client.idMap.toHospital('Observation/ref-o'))!;
      assert.ok(pid && oid);
      assert.equal((await fhirFetch(`${idHosp.url}/${oid}`)).body.subject.reference, pid);
      assert.equal(o.writes, 2);
    } finally {
      await idHosp.close();
    }
  });

  it('a refusal is not retried and is reported without content; a later version clears it', async () => {
    const r = new Replica({ nodeId: 'ob-node-2', store: new MemoryStore(), policy: loadMergePolicy() });
    const o = outbox('ob-2');
    await o.start();
    const bad = r.write('Patient/ob-bad', fhir('{"resourceType":"Patient","id":"ob-bad","nickname":"Secretname"}'));
    o.enqueue('Patient/ob-bad', bad.version);
    await o.idle();
    assert.equal(o.failures().get('Patient/ob-bad'), 'ERR_HOSPITAL_REJECTED (HTTP 400)');
    assert.equal(o.stats().attemptsFailed, 1, 'one attempt only');
    const good = r.write('Patient/ob-bad', fhir('{"resourceType":"Patient","id":"ob-bad","gender":"female"}'));
    o.enqueue('Patient/ob-bad', good.version);
    await o.idle();
    assert.equal(o.failures().size, 0);
    assert.equal(o.writes, 1);
    const again = outbox('ob-2b', new HospitalClient({ baseUrl: hosp.url }));
    assert.throws(() => new HospitalOutbox(new HospitalClient({ baseUrl: hosp.url }), { nodeId: 'x', redisUrl: REDIS_URL, secret: new Uint8Array(8) }), TypeError);
    await again.stop();
  });
});

describe('serve configuration: hospital sync fields', () => {
  it('have defaults, are validated, and the cursor file is relative to the config file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tidegate-config-'));
    try {
      const base = { nodeId: 'node-x', hospitalFhirUrl: 'http://127.0.0.1:9/fhir', secretKeyFile: 'k.json' };
      await writeFile(join(dir, 'a.json'), JSON.stringify(base));
      const dflt = loadNodeConfig(join(dir, 'a.json'), {});
      assert.equal(dflt.hospitalPollIntervalMs, 5000);
      assert.equal(dflt.hospitalRetryBaseMs, 200);
      assert.equal(dflt.hospitalRetryMaxMs, 30000);
      assert.equal(dflt.hospitalCursorFile, undefined);
      await writeFile(join(dir, 'b.json'), JSON.stringify({ ...base, hospitalPollIntervalMs: 0, hospitalPollTypes: ['Patient'], hospitalCursorFile: 'state/cursor.json' }));
      const set = loadNodeConfig(join(dir, 'b.json'), {});
      assert.equal(set.hospitalPollIntervalMs, 0);
      assert.deepEqual(set.hospitalPollTypes, ['Patient']);
      assert.equal(set.hospitalCursorFile, join(dir, 'state', 'cursor.json'));
      await writeFile(join(dir, 'c.json'), JSON.stringify({ ...base, hospitalPollIntervalMs: -1, hospitalPollTypes: ['patient'] }));
      assert.throws(() => loadNodeConfig(join(dir, 'c.json'), {}), /hospitalPollIntervalMs.*hospitalPollTypes/s);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
