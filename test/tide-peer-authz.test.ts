/**
 * Peer authorization of Tide (docs/security.md "Peer authorization"), real Redis and real envelopes:
 * a peer sending a type it may not send is refused, quarantined and audited, never applied; a
 * resource carrying a label withheld from a peer never reaches that peer's Redis (the raw inbox is
 * read); a quarantined peer is refused until released, across a restart.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { peekHeader } from '../src/envelope/index.ts';
import { Tide, inboxQueueName, securityLabelsOf, V3_ACT_CODE, V3_CONFIDENTIALITY, parseLabelRule, labelsWithheld } from '../src/tide/index.ts';
import type { PeerConfig, SecurityLabel, TideOptions, TideRejectionEvent } from '../src/tide/index.ts';
import { DocReplica, REDIS_BASE, captureLogger, keysOf, waitFor } from './fixtures/tide/harness.ts';
import type { LogLine } from './fixtures/tide/harness.ts';

/** A DocReplica whose resources are whole FHIR JSON bodies in field `body`; labels read from the body. */
class BodyReplica extends DocReplica {
  write(key: string, resource: Record<string, unknown>) {
    return this.set(key, { body: JSON.stringify(resource) });
  }
  securityLabels(key: string): readonly SecurityLabel[] {
    return securityLabelsOf((this.json(key)?.body as string | undefined) ?? null);
  }
}

const DB_A = 9;
const DB_B = 10;
const urlA = `${REDIS_BASE}/${DB_A}`;
const urlB = `${REDIS_BASE}/${DB_B}`;

describe('peer authorization', () => {
  const prefix = `peerauthz-${randomUUID().slice(0, 8)}`;
  const logs: LogLine[] = [];
  const tides: Tide[] = [];
  const redis: Redis[] = [];
  const queues: Queue[] = [];

  const start = async (name: 'A' | 'B', replica: DocReplica, peer: Partial<PeerConfig>, extra: Partial<TideOptions> = {}): Promise<Tide> => {
    const other = name === 'A' ? 'B' : 'A';
    const tide = new Tide({
      self: keysOf(name).secretKeys,
      redisUrl: name === 'A' ? urlA : urlB,
      prefix,
      peers: [{ nodeId: other, redisUrl: other === 'A' ? urlA : urlB, publicKeys: keysOf(other).publicKeys, ...peer }],
      replica,
      logger: captureLogger(logs),
      antiEntropyIntervalMs: 0,
      backoffMs: 50,
      attempts: 2,
      ...extra,
    });
    await tide.start();
    tides.push(tide);
    return tide;
  };
  const r = (url: string): Redis => {
    const c = new Redis(url);
    redis.push(c);
    return c;
  };

  before(() => {
    keysOf('A');
    keysOf('B');
  });
  after(async () => {
    for (const t of tides) await t.stop();
    for (const q of queues) await q.close();
    for (const url of [urlA, urlB]) {
      const c = r(url);
      const keys = await c.keys(`${prefix}:*`);
      if (keys.length > 0) await c.del(...keys);
    }
    for (const c of redis) await c.quit();
  });

  test('label rules: system|code, bare code in any system; bad rules and missing securityLabels are refused', () => {
    const labels = [{ system: V3_ACT_CODE, code: 'HIV' }, { code: 'X' }];
    assert.equal(labelsWithheld(labels, [parseLabelRule('HIV')]), true);
    assert.equal(labelsWithheld(labels, [parseLabelRule(`${V3_ACT_CODE}|HIV`)]), true);
    assert.equal(labelsWithheld(labels, [parseLabelRule(`${V3_CONFIDENTIALITY}|HIV`)]), false);
    assert.equal(labelsWithheld(labels, [parseLabelRule('R')]), false);
    for (const bad of ['', 'a|b|c', '|R', `${V3_ACT_CODE}|`, ' R']) assert.throws(() => parseLabelRule(bad), TypeError, bad);
    const base = { self: keysOf('A').secretKeys, redisUrl: urlA, replica: new DocReplica('A') };
    const peer = { nodeId: 'B', redisUrl: urlB, publicKeys: keysOf('B').publicKeys };
    assert.throws(() => new Tide({ ...base, peers: [{ ...peer, withheldLabels: ['R'] }] }), /securityLabels/);
    assert.throws(() => new Tide({ ...base, peers: [{ ...peer, maySend: ['not a type'] }] }), /invalid resource type/);
    assert.throws(() => new Tide({ ...base, replica: new BodyReplica('A'), peers: [{ ...peer, withheldLabels: ['a|b|c'] }] }), /invalid withheld label/);
  });

  test('inbound: a type the peer may not send is refused whole, quarantined, audited and reported; allowed types apply', async () => {
    const a = new BodyReplica('A');
    const b = new BodyReplica('B');
    const events: TideRejectionEvent[] = [];
    const tideA = await start('A', a, { maySend: ['Observation'] }, { onRejection: (e) => events.push(e) });
    const tideB = await start('B', b, {}); // B sends everything: it misbehaves
    tideB.publish([b.write('Patient/in1', { resourceType: 'Patient', id: 'in1' }), b.write('Observation/in1', { resourceType: 'Observation', id: 'in1' })]);
    await tideB.flush();
    await waitFor('rejection', () => events.length === 1);
    const ev = events[0]!;
    assert.equal(ev.reason, 'ERR_PEER_NOT_ALLOWED');
    assert.equal(ev.sender, 'B');
    assert.equal(ev.senderVerified, true);
    assert.equal(a.json('Patient/in1'), undefined, 'the disallowed type was not applied');
    assert.equal(a.json('Observation/in1'), undefined, 'the whole message is refused');
    const q = await tideA.quarantined(10);
    assert.equal(q[0]?.reason, 'ERR_PEER_NOT_ALLOWED');
    assert.equal(tideA.auditLog.list(1)[0]?.subtype[0]?.code, 'ERR_PEER_NOT_ALLOWED');
    assert.equal(tideA.stats().quarantined.ERR_PEER_NOT_ALLOWED, 1);
    // an allowed type alone is applied
    tideB.publish([b.write('Observation/in2', { resourceType: 'Observation', id: 'in2' })]);
    await tideB.flush();
    await waitFor('allowed applied', () => a.json('Observation/in2') !== undefined);
    assert.equal(events.length, 1);
    assert.deepEqual(tideA.peers()[0]?.maySend, ['Observation']);
    for (const t of tides.splice(0)) await t.stop();
  });

  test('outbound: a resource whose current version carries a withheld label never reaches the peer\u2019s Redis', async () => {
    const a = new BodyReplica('A');
    const withheld = ['R', `${V3_ACT_CODE}|HIV`, 'PSY'];
    const tideA = await start('A', a, { withheldLabels: withheld });
    // B is not running: everything A sends waits in B's inbox, where it can be read raw
    const secret = `restricted-${randomUUID()}`;
    const updates = [
      a.write('Patient/p-r', { resourceType: 'Patient', id: 'p-r', meta: { security: [{ system: V3_CONFIDENTIALITY, code: 'R' }] }, name: [{ family: secret }] }),
      a.write('Observation/o-hiv', { resourceType: 'Observation', id: 'o-hiv', meta: { security: [{ system: V3_ACT_CODE, code: 'HIV' }] }, note: [{ text: secret }] }),
      a.write('Observation/o-other', { resourceType: 'Observation', id: 'o-other', meta: { security: [{ system: 'urn:example:other', code: 'HIV' }] } }),
      a.write('Patient/p-ok', { resourceType: 'Patient', id: 'p-ok' }),
      a.write('Patient/p-late', { resourceType: 'Patient', id: 'p-late' }),
    ];
    tideA.publish(updates);
    // labelled while still in the batch window: judged again at send time
    tideA.publish([a.write('Patient/p-late', { resourceType: 'Patient', id: 'p-late', meta: { security: [{ system: V3_ACT_CODE, code: 'PSY' }] }, name: [{ family: secret }] })]);
    await tideA.flush();
    // anti-entropy must not repair them either: B holds nothing, so A's tree (without withheld keys) is sent
    const inboxB = new Queue(inboxQueueName('B'), { connection: { url: urlB }, prefix, skipMetasUpdate: true });
    queues.push(inboxB);
    const jobs = await inboxB.getJobs(['waiting', 'prioritized', 'delayed']);
    assert.ok(jobs.length >= 1);
    const listed = new Set(jobs.flatMap((j) => (peekHeader((j.data as { env: string }).env) as { resources: string[] }).resources));
    assert.deepEqual([...listed].sort(), ['Observation/o-other', 'Patient/p-ok']);
    // the raw Redis of B: no trace of the withheld resources' keys
    const rb = r(urlB);
    let raw = '';
    for (const k of await rb.keys(`${prefix}:*`)) {
      const t = await rb.type(k);
      if (t === 'hash') raw += JSON.stringify(await rb.hgetall(k));
      else if (t === 'string') raw += await rb.get(k);
      else if (t === 'list') raw += (await rb.lrange(k, 0, -1)).join();
      else if (t === 'stream') raw += JSON.stringify(await rb.xrange(k, '-', '+'));
    }
    for (const key of ['Patient/p-r', 'Observation/o-hiv', 'Patient/p-late']) assert.ok(!raw.includes(key), `${key} reached B's Redis`);
    assert.ok(!raw.includes(secret));
    assert.equal(tideA.stats().updatesWithheld, 4, "p-r, o-hiv, and both updates of p-late (one at enqueue, one at send time)");

    // now B runs: it converges on what it may receive only, also through anti-entropy
    const b = new BodyReplica('B');
    const tideB = await start('B', b, {});
    await waitFor('B got the allowed ones', () => b.json('Patient/p-ok') !== undefined && b.json('Observation/o-other') !== undefined);
    await tideA.runAntiEntropy();
    await tideB.runAntiEntropy();
    await waitFor('quiet', async () => (await tideA.pending()) === 0 && (await tideB.pending()) === 0);
    await tideA.runAntiEntropy();
    await waitFor('quiet again', async () => (await tideA.pending()) === 0 && (await tideB.pending()) === 0);
    for (const key of ['Patient/p-r', 'Observation/o-hiv', 'Patient/p-late']) assert.equal(b.json(key), undefined, `${key} reached B`);
    assert.deepEqual(tideA.peers()[0]?.withheldLabels, withheld);
    // converged: a round exchanges one root per direction, no repairs
    const before = tideA.stats();
    await tideA.runAntiEntropy();
    await waitFor('quiet 3', async () => (await tideA.pending()) === 0 && (await tideB.pending()) === 0);
    assert.equal(tideA.stats().aeUpdatesQueued, before.aeUpdatesQueued, 'anti-entropy does not try to repair withheld resources');
    for (const t of tides.splice(0)) await t.stop();
  });

  test('outbound: a label added after a batch was taken but before it is sealed withholds it (judged again at seal time)', async () => {
    const a = new BodyReplica('A');
    const tideA = await start('A', a, { withheldLabels: ['PSY'] }, { prefix: `${prefix}-seal` });
    const secret = `sealtime-${randomUUID()}`;
    tideA.publish([a.write('Patient/p-seal', { resourceType: 'Patient', id: 'p-seal', name: [{ family: secret }] }), a.write('Patient/p-fine', { resourceType: 'Patient', id: 'p-fine' })]);
    // flush() takes the batch now (synchronously); sealing waits for the next turn of the event loop
    const flushed = tideA.flush();
    a.write('Patient/p-seal', { resourceType: 'Patient', id: 'p-seal', meta: { security: [{ system: V3_ACT_CODE, code: 'PSY' }] }, name: [{ family: secret }] });
    await flushed;
    const inboxB = new Queue(inboxQueueName('B'), { connection: { url: urlB }, prefix: `${prefix}-seal`, skipMetasUpdate: true });
    queues.push(inboxB);
    const jobs = await inboxB.getJobs(['waiting', 'prioritized', 'delayed']);
    const listed = new Set(jobs.flatMap((j) => (peekHeader((j.data as { env: string }).env) as { resources: string[] }).resources));
    assert.deepEqual([...listed].sort(), ['Patient/p-fine']);
    const rb = r(urlB);
    for (const k of await rb.keys(`${prefix}-seal:*`)) {
      if ((await rb.type(k)) === 'hash') assert.ok(!JSON.stringify(await rb.hgetall(k)).includes('Patient/p-seal'));
    }
    await tideA.stop();
    for (const k of await rb.keys(`${prefix}-seal:*`)) await rb.del(k);
  });

  test('quarantined peer: refused (ERR_PEER_QUARANTINED), nothing sent to it, kept across a restart, released by releasePeer', async () => {
    const a = new BodyReplica('A');
    const b = new BodyReplica('B');
    let tideA = await start('A', a, {});
    const tideB = await start('B', b, {});
    assert.equal(await tideA.quarantinePeer('B', 'test'), true);
    assert.equal(await tideA.quarantinePeer('B', 'again'), false);
    await assert.rejects(tideA.quarantinePeer('Z', 'x'), TypeError);
    tideB.publish([b.write('Patient/q1', { resourceType: 'Patient', id: 'q1' })]);
    await tideB.flush();
    await waitFor('refused', async () => (await tideA.quarantined(5)).some((e) => e.reason === 'ERR_PEER_QUARANTINED'));
    assert.equal(a.json('Patient/q1'), undefined);
    tideA.publish([a.write('Patient/q2', { resourceType: 'Patient', id: 'q2' })]);
    await tideA.flush();
    assert.equal(tideA.stats().messagesSent, 0, 'nothing is sent to a quarantined peer');
    assert.equal(await r(urlA).hexists(tideA.peerQuarantineKey, 'B'), 1);
    // a restart does not release it
    await tideA.stop();
    tides.splice(tides.indexOf(tideA), 1);
    tideA = await start('A', a, {});
    assert.equal(tideA.peerQuarantine('B')?.reason, 'test');
    assert.equal(tideA.peers()[0]?.quarantine?.reason, 'test');
    assert.equal(await tideA.releasePeer('B'), true);
    assert.equal(await r(urlA).hexists(tideA.peerQuarantineKey, 'B'), 0);
    tideB.publish([b.write('Patient/q3', { resourceType: 'Patient', id: 'q3' })]);
    await tideB.flush();
    await waitFor('accepted after release', () => a.json('Patient/q3') !== undefined);
    await tideA.runAntiEntropy();
    await waitFor('repaired by anti-entropy', () => b.json('Patient/q2') !== undefined && a.json('Patient/q1') !== undefined);
    for (const t of tides.splice(0)) await t.stop();
  });
});
