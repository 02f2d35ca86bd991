/**
 * A big resource (a Patient with 60,000 identifiers, ~3 MB of JSON: under the default limits of
 * 16 MiB per body and 100,000 items per array) through the merge layer and a node's HTTP app.
 *
 * The first write of a big repeating element used to take time quadratic in its item count (the
 * order numbers of new items, src/merge/flatten.ts `assignOrders`: 60,000 new identifiers took
 * ~20 s of CPU and blocked the node). These tests check that such a resource still merges as any
 * other (concurrent edits of different identifiers merge, a same-identifier edit is a conflict
 * record) and that a node keeps answering while one is written. No speed is asserted.
 * Real Replicas on MemoryStores; a real TidegateNode (real Redis, a Medplum hospital over HTTP).
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { request } from 'node:http';
import { Redis } from 'ioredis';
import pino from 'pino';
import { canonicalStringify } from '../src/fhir/json.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { flatten, ordersOf } from '../src/merge/flatten.ts';
import { TidegateNode } from '../src/node/node.ts';
import { MemoryStore } from '../src/store/store.ts';
import { createKeyStore, keyStoreToPublicJson, keyStoreToSecretKeys, publicKeysFromJson } from '../src/envelope/keys.ts';
import { HospitalClient, startMedplumHospital } from '../src/hospital/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';
import { copy, deliver, fhir, liveBody, makeNode, POLICY, write } from './fixtures/merge/harness.ts';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const KEY = 'Patient/bigp';
const N = 60_000;

/** A Patient with `n` identifiers `urn:oid:1.2.3.4|ID-<8 digits>`. */
function bigPatient(n: number): FhirJsonObject {
  const identifier: FhirJsonObject[] = [];
  for (let i = 0; i < n; i++) identifier.push({ system: 'urn:oid:1.2.3.4', value: `ID-${String(i).padStart(8, '0')}` });
  return fhir(JSON.stringify({ resourceType: 'Patient', id: 'bigp', active: true, identifier }));
}

describe('a Patient with 60,000 identifiers through Replicas', () => {
  test('round-trips; concurrent edits of two identifiers merge; a same-identifier edit is a conflict record', () => {
    const a = makeNode('a');
    const b = makeNode('b');
    const body = bigPatient(N);
    const created = write(a, KEY, body);
    assert.ok(created.update);
    deliver(b, KEY, created.update);
    for (const node of [a, b]) {
      const got = liveBody(node, KEY);
      assert.equal((got.identifier as unknown[]).length, N);
      assert.equal(canonicalStringify(got.identifier!), canonicalStringify(body.identifier!), `${node.id}: identifiers in order`);
    }

    // a and b each edit another identifier (a non-key element, so the item keeps its key), concurrently
    a.wall += 1000;
    b.wall += 1000;
    const atA = copy(liveBody(a, KEY));
    (atA.identifier as FhirJsonObject[])[10]!.use = 'official';
    const atB = copy(liveBody(b, KEY));
    (atB.identifier as FhirJsonObject[])[N - 10]!.use = 'secondary';
    const ua = write(a, KEY, atA).update!;
    const ub = write(b, KEY, atB).update!;
    deliver(a, KEY, ub);
    deliver(b, KEY, ua);
    const merged = liveBody(a, KEY);
    assert.equal(canonicalStringify(merged), canonicalStringify(liveBody(b, KEY)), 'a and b converge');
    const ids = merged.identifier as FhirJsonObject[];
    assert.equal(ids.length, N);
    assert.equal(ids[10]!.use, 'official');
    assert.equal(ids[N - 10]!.use, 'secondary');
    assert.equal(ids[11]!.use, undefined);
    assert.deepEqual(a.replica.conflicts(KEY), [], 'edits of different identifiers are no conflict');

    // both edit the same identifier's `use` without seeing each other: one wins, the other is recorded
    a.wall += 1000;
    b.wall += 2000;
    const sameA = copy(merged);
    (sameA.identifier as FhirJsonObject[])[500]!.use = 'temp';
    const sameB = copy(merged);
    (sameB.identifier as FhirJsonObject[])[500]!.use = 'old';
    const va = write(a, KEY, sameA).update!;
    const vb = write(b, KEY, sameB).update!;
    deliver(a, KEY, vb);
    deliver(b, KEY, va);
    const final = liveBody(a, KEY);
    assert.equal(canonicalStringify(final), canonicalStringify(liveBody(b, KEY)), 'a and b converge');
    assert.equal((final.identifier as FhirJsonObject[])[500]!.use, 'old', 'b wrote later (HLC), so b wins');
    const conflicts = a.replica.conflicts(KEY);
    assert.equal(conflicts.length, 1);
    assert.equal(conflicts[0]!.path, `identifier[${encodeURIComponent('k:urn:oid:1.2.3.4|ID-00000500')}]/use`);
    assert.equal(conflicts[0]!.winner.v, '"old"');
    assert.equal(conflicts[0]!.loser.v, '"temp"');
    assert.equal(conflicts[0]!.kind, 'value');
    assert.deepEqual(b.replica.conflicts(KEY).map((c) => c.path), conflicts.map((c) => c.path));
  });

  test('order numbers of n new items take O(n) look-ups of the base order numbers, not O(n²)', () => {
    // counts what flatten asks of the base version's order numbers: deterministic, no timing
    class CountingMap extends Map<string, number> {
      gets = 0;
      override get(k: string): number | undefined {
        this.gets++;
        return super.get(k);
      }
    }
    const n = 20_000;
    const orders = new CountingMap([['identifier[elsewhere]', 5]]);
    const leaves = flatten(bigPatient(n), POLICY, orders);
    assert.equal(ordersOf(leaves).size, n);
    // before the fix each new item scanned every later item: n²/2 = 200,000,000 look-ups here
    assert.ok(orders.gets <= 4 * n, `${orders.gets} look-ups for ${n} items`);
  });

  test('order numbers of new items: as before the linear-time fix (from 0; midpoints between kept neighbours; after the last)', () => {
    const ids = (vals: string[]): FhirJsonObject => fhir(JSON.stringify({ resourceType: 'Patient', id: 'p', identifier: vals.map((value) => ({ system: 's', value })) }));
    const numbers = (vals: string[], base?: Map<string, number>): number[] => {
      const orders = ordersOf(flatten(ids(vals), POLICY, base));
      return vals.map((v) => orders.get(`identifier[${encodeURIComponent(`k:s|${v}`)}]`)!);
    };
    assert.deepEqual(numbers(['a', 'b', 'c', 'd']), [0, 1, 2, 3]);
    // base: b=0, d=1; new items before, between and after them
    const base = ordersOf(flatten(ids(['b', 'd']), POLICY));
    assert.deepEqual(numbers(['x', 'b', 'y', 'w', 'd', 'z'], base), [-1, 0, 0.5, 0.75, 1, 2]);
    // b moved behind d: d keeps 1, the new q and the moved b come after it
    assert.deepEqual(numbers(['d', 'q', 'b'], base), [1, 2, 3]);
    // no kept neighbour above: new items run on from the previous number
    assert.deepEqual(numbers(['d', 'b', 'x', 'y'], base), [1, 2, 3, 4]);
  });
});

interface Running {
  node: TidegateNode;
  base: string;
}

/** One HTTP request; resolves with status and body text. The body may be a stream. */
function send(url: string, method: string, body?: Readable): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers: body ? { 'content-type': 'application/fhir+json' } : {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (body) body.pipe(req);
    else req.end();
  });
}

describe('a node writing a Patient with 60,000 identifiers keeps answering', () => {
  let hospital: MedplumHospital;
  let prefix: string;
  let nodes: Running[] = [];

  before(async () => {
    hospital = await startMedplumHospital();
    prefix = `bigres-${randomBytes(4).toString('hex')}`;
    const ka = createKeyStore('bigA');
    const kb = createKeyStore('bigB');
    const mk = (self: ReturnType<typeof createKeyStore>, peerId: string, peer: ReturnType<typeof createKeyStore>): TidegateNode =>
      new TidegateNode({
        secretKeys: keyStoreToSecretKeys(self),
        peers: [{ nodeId: peerId, redisUrl: REDIS_URL, publicKeys: publicKeysFromJson(keyStoreToPublicJson(peer)) }],
        redisUrl: REDIS_URL,
        queuePrefix: prefix,
        hospital: new HospitalClient({ baseUrl: hospital.url, timeoutMs: 120_000 }),
        store: new MemoryStore(),
        logger: pino({ level: 'silent' }),
        antiEntropyIntervalMs: 0,
        batchDelayMs: 5,
        hospitalPollIntervalMs: 0,
        hardening: { maxBodyBytes: 16 * 1024 * 1024, json: { maxDepth: 64, maxArrayItems: 100_000, maxStringLength: 4 * 1024 * 1024 } },
        server: { headersTimeoutMs: 120_000, requestTimeoutMs: 300_000 },
      });
    const a = mk(ka, 'bigB', kb);
    const b = mk(kb, 'bigA', ka);
    nodes = [
      { node: a, base: await a.start() },
      { node: b, base: await b.start() },
    ];
  });

  after(async () => {
    for (const n of nodes) await n.node.stop();
    await hospital?.close();
    const r = new Redis(REDIS_URL);
    const keys = await r.keys(`${prefix}:*`);
    if (keys.length) await r.del(...keys);
    await r.quit();
  });

  test('a small read sent while the big PUT is in flight is answered before it; the peer receives the Patient', async () => {
    const [a, b] = nodes as [Running, Running];
    const small = await send(`${a.base}/Patient/small`, 'PUT', Readable.from([JSON.stringify({ resourceType: 'Patient', id: 'small', active: true })]));
    assert.equal(small.status, 201, small.text);
    const text = JSON.stringify(bigPatient(N));
    // The body goes out in two halves; the read is sent between them, and the second half only once it has been answered.
    const events: string[] = [];
    let releaseSecondHalf!: () => void;
    const secondHalf = new Promise<void>((r) => (releaseSecondHalf = r));
    const half = Math.floor(text.length / 2);
    const body = Readable.from(
      (async function* () {
        yield text.slice(0, half);
        await secondHalf;
        yield text.slice(half);
      })(),
    );
    const put = send(`${a.base}/Patient/bigp`, 'PUT', body).then((r) => {
      events.push('put');
      return r;
    });
    const read = await send(`${a.base}/Patient/small`, 'GET');
    events.push('read');
    assert.equal(read.status, 200, read.text);
    assert.equal(JSON.parse(read.text).id, 'small');
    const health = await send(`${a.base.replace(/\/fhir$/, '')}/healthz`, 'GET');
    events.push(`healthz:${health.status}`);
    releaseSecondHalf();
    const done = await put;
    assert.equal(done.status, 201, done.text.slice(0, 500));
    assert.deepEqual(events.slice(0, 1), ['read'], 'the read was answered while the PUT was in flight');
    assert.equal(events.at(-1), 'put');

    // while the peer merges and the hospital outbox writes it, both nodes still answer reads
    const deadline = Date.now() + 300_000;
    let atPeer: { status: number; text: string } | undefined;
    let readsMeanwhile = 0;
    while (Date.now() < deadline) {
      const r = await send(`${a.base}/Patient/small`, 'GET');
      assert.equal(r.status, 200);
      readsMeanwhile++;
      atPeer = await send(`${b.base}/Patient/bigp`, 'GET');
      if (atPeer.status === 200) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(atPeer?.status, 200, 'the peer received the Patient');
    assert.ok(readsMeanwhile >= 1);
    const got = JSON.parse(atPeer!.text) as { identifier: Array<{ value: string }> };
    assert.equal(got.identifier.length, N);
    assert.equal(got.identifier[N - 1]!.value, `ID-${String(N - 1).padStart(8, '0')}`);
  });
});
