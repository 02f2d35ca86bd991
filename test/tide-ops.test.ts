/**
 * Tide operations tests against a real Redis and real envelopes: quarantine of poison messages
 * (and that they never block the messages behind them), the ops router (/metrics, /readyz,
 * /admin/peers, /admin/audit, /admin/quarantine), the relay rule, bounded shutdown while Redis is
 * unreachable, bounded Redis memory. Nodes use Redis logical databases 11–13 with a random prefix.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import express from 'express';
import request from 'supertest';
import { seal } from '../src/envelope/index.ts';
import { encodeUpdates, inboxQueueName } from '../src/tide/index.ts';
import type { AuditBundle } from '../src/tide/index.ts';
import { opsRouter } from '../src/ops/index.ts';
import { Cluster, DocReplica, PATIENT_NAME, freePort, keysOf, killRedisServer, startRedisServer, waitFor, waitForJobState } from './fixtures/tide/harness.ts';

/** A sealed `updates` envelope from `from` to `to` and its message id. */
function sealed(from: string, to: string, plaintext: Uint8Array, resources: string[] = []): { id: string; env: string } {
  const id = randomUUID();
  return { id, env: seal({ kind: 'updates', messageId: id, resources, plaintext }, keysOf(from).secretKeys, keysOf(to).publicKeys) };
}

/** One base64url character flipped in the middle of member `field` of a serialized envelope. */
function tamper(env: string, field: string): string {
  const obj = JSON.parse(env) as Record<string, string>;
  const v = obj[field] as string;
  const i = Math.floor(v.length / 2);
  obj[field] = v.slice(0, i) + (v[i] === 'A' ? 'B' : 'A') + v.slice(i + 1);
  return JSON.stringify(obj);
}

const JOB_OPTS = { attempts: 3, backoff: { type: 'exponential', delay: 400 } } as const;

describe('tide quarantine and ops', { timeout: 120_000 }, () => {
  test('poison messages are quarantined with an alert and do not block the messages behind them', async (t) => {
    const cl = new Cluster(['q-a', 'q-b'], [11, 12], { quarantineMaxEntries: 4 });
    try {
      await cl.startAll();
      const B = cl.node('q-b');
      // the store refuses any batch containing this key, on every attempt; at each attempt, note
      // how many good messages were already applied
      const goodAppliedAtAttempt: number[] = [];
      B.replica.poison = (ups) => {
        const refuse = ups.some((u) => u.key === 'Patient/refused');
        if (refuse) goodAppliedAtAttempt.push(B.replica.applied.filter((k) => k.startsWith('Patient/good-')).length);
        return refuse;
      };
      await cl.stop('q-b'); // pile the jobs up while B is down, so they are processed in order
      const inbox = cl.inbox('q-b');
      const donor = new DocReplica('donor');
      const good = (i: number) => sealed('q-a', 'q-b', encodeUpdates([donor.set(`Patient/good-${i}`, { name: `${PATIENT_NAME} ${i}` })]));

      const poison: { id: string; env: unknown; reason: string; sender?: string; verified?: boolean }[] = [];
      const s1 = sealed('q-a', 'q-b', encodeUpdates([donor.set('Patient/x1', { name: PATIENT_NAME })]));
      poison.push({ id: s1.id, env: tamper(s1.env, 'sig'), reason: 'ERR_SIGNATURE_INVALID', sender: 'q-a', verified: false });
      poison.push({ id: randomUUID(), env: 'not an envelope', reason: 'ERR_ENVELOPE_MALFORMED' });
      const s3 = sealed('mallory', 'q-b', encodeUpdates([donor.set('Patient/x3', { name: PATIENT_NAME })]));
      poison.push({ id: s3.id, env: s3.env, reason: 'ERR_UNKNOWN_PEER', sender: 'mallory', verified: false });
      // structurally valid plaintext whose Yjs update is garbage
      const s4 = sealed('q-a', 'q-b', encodeUpdates([{ key: 'Patient/x4', update: new Uint8Array([200, 201, 202, 203, 1, 2, 3]) }]));
      poison.push({ id: s4.id, env: s4.env, reason: 'ERR_UPDATE_MALFORMED', sender: 'q-a', verified: true });
      const s5 = sealed('q-a', 'q-b', encodeUpdates([donor.set('Patient/refused', { name: PATIENT_NAME })]));
      poison.push({ id: s5.id, env: s5.env, reason: 'ERR_APPLY_FAILED', sender: 'q-a', verified: true });

      // interleave: poison, good, poison, good, ...; the refused one goes first, so its retries
      // (400 ms, 800 ms backoff) overlap the good messages behind it
      const order = [poison[4], good(0), poison[0], good(1), poison[1], good(2), poison[2], good(3), poison[3], good(4)];
      for (const j of order) await inbox.add('updates', { env: j!.env }, { jobId: j!.id, ...JOB_OPTS });
      const t0 = Date.now();
      const B2 = await cl.start('q-b');
      for (const p of poison) await waitForJobState(inbox, p.id, 'failed');
      for (let i = 0; i < 5; i++) assert.deepEqual(B2.replica.json(`Patient/good-${i}`), { name: `${PATIENT_NAME} ${i}` });
      // never applied
      for (const k of ['Patient/x1', 'Patient/x3', 'Patient/x4', 'Patient/refused']) assert.equal(B2.replica.json(k), undefined, k);

      // not blocked: every good message was applied before the refused one was given up
      const st = B2.tide.stats();
      const records = await B2.tide.quarantined(10, true);
      const refused = records.find((r) => r.reason === 'ERR_APPLY_FAILED');
      assert.ok(refused, 'ERR_APPLY_FAILED quarantined');
      const lastGood = B2.replica.appliedAt.get('Patient/good-4') ?? Infinity;
      assert.ok(lastGood < refused.quarantinedAt, 'good messages behind the poison were not held up');
      // BullMQ puts a retried job back at the end of the wait list (one worker, FIFO): every good
      // message behind the refused one is applied before its first retry. (Not a wall-clock bound:
      // on a loaded 2-core machine starting B and opening 10 envelopes took 2.6 s.)
      assert.deepEqual(goodAppliedAtAttempt, [0, 5, 5], 'good messages applied between the first attempt and the first retry');
      t.diagnostic(`good messages applied ${lastGood - t0} ms after B started`);
      assert.equal(refused.attempts, 3);

      // counters and the bounded Redis list (max 4 of 5)
      assert.deepEqual(st.quarantined, {
        ERR_SIGNATURE_INVALID: 1,
        ERR_ENVELOPE_MALFORMED: 1,
        ERR_UNKNOWN_PEER: 1,
        ERR_UPDATE_MALFORMED: 1,
        ERR_APPLY_FAILED: 1,
      });
      const raw = cl.redis(B2.url);
      assert.equal(await raw.llen(B2.tide.quarantineKey), 4);
      assert.equal(records.length, 4);
      for (const r of records) {
        const p = poison.find((x) => x.id === r.messageId);
        assert.ok(p, `entry ${r.messageId} is one of the poison messages`);
        assert.equal(r.reason, p.reason);
        assert.equal(r.sender, p.sender);
        if (p.sender) assert.equal(r.senderVerified, p.verified);
        assert.equal(r.env, p.env, 'the sealed envelope is kept as received');
        assert.ok(r.receivedAt <= r.quarantinedAt);
      }
      const dump = (await raw.lrange(B2.tide.quarantineKey, 0, -1)).join('\n');
      assert.ok(!dump.includes(PATIENT_NAME) && !dump.includes(Buffer.from(PATIENT_NAME).toString('base64url')), 'no plaintext in the quarantine');

      // rejected ones were not retried; the refused one used its 3 attempts
      for (const p of poison) {
        const job = await inbox.getJob(p.id);
        assert.equal(job?.failedReason?.startsWith(p.reason === 'ERR_APPLY_FAILED' ? 'applyRemote failed' : p.reason), true, p.reason);
        assert.equal(job?.attemptsMade, p.reason === 'ERR_APPLY_FAILED' ? 3 : 1, p.reason);
      }

      // the alert: one AuditEvent and one JSON log line each, no PHI, no resource keys
      const events = B2.tide.auditLog.list();
      assert.equal(events.length, 5);
      assert.deepEqual(new Set(events.map((e) => e.subtype[0]?.code)), new Set(poison.map((p) => p.reason)));
      for (const e of events) {
        assert.equal(e.resourceType, 'AuditEvent');
        assert.equal(e.type.code, '110113');
        assert.equal(e.outcome, '4');
        assert.equal(e.source.observer.identifier.value, 'q-b');
        assert.ok(e.agent.some((a) => a.requestor) && e.agent.some((a) => !a.requestor));
      }
      const unknown = events.find((e) => e.subtype[0]?.code === 'ERR_UNKNOWN_PEER');
      assert.match(unknown?.agent[0]?.who?.display ?? '', /claimed sender mallory \(unverified\)/);
      const alerts = cl.logs.filter((l) => l.msg === 'tide: message quarantined');
      assert.equal(alerts.length, 5);
      for (const a of alerts) assert.ok(!JSON.stringify(a.obj).includes('\n'));
      const everything = JSON.stringify(cl.logs) + JSON.stringify(events);
      assert.ok(!everything.includes(PATIENT_NAME), 'no PHI in logs or audit events');
      assert.ok(!everything.includes('Patient/'), 'no resource keys in logs or audit events');
    } finally {
      await cl.cleanup();
    }
  });

  test('ops router: /metrics per node registry, /readyz, /admin/peers, /admin/audit, /admin/quarantine', async () => {
    const cl = new Cluster(['o-a', 'o-b'], [11, 12]);
    try {
      await cl.startAll();
      const A = cl.node('o-a');
      const B = cl.node('o-b');
      const appA = express().use(opsRouter({ tide: A.tide, nodeId: 'o-a' }));
      const appB = express().use(opsRouter({ tide: B.tide, nodeId: 'o-b' }));
      A.tide.publish([A.replica.set('Patient/m-1', { name: PATIENT_NAME })]);
      await cl.quiesce();
      const s = sealed('o-a', 'o-b', encodeUpdates([A.replica.set('Patient/m-2', { name: PATIENT_NAME })]));
      const inbox = cl.inbox('o-b');
      await inbox.add('updates', { env: tamper(s.env, 'ct') }, { jobId: s.id });
      await waitForJobState(inbox, s.id, 'failed');
      await waitFor('audit', () => B.tide.auditLog.total === 1);

      const mB = await request(appB).get('/metrics').expect(200);
      assert.match(mB.headers['content-type'] ?? '', /^text\/plain/);
      const lineOf = (text: string, name: string): string | undefined => text.split('\n').find((l) => l.startsWith(name));
      assert.equal(lineOf(mB.text, 'tidegate_tide_messages_received_total'), 'tidegate_tide_messages_received_total{node="o-b"} 1');
      assert.equal(
        lineOf(mB.text, 'tidegate_tide_messages_quarantined_total{'),
        'tidegate_tide_messages_quarantined_total{reason="ERR_SIGNATURE_INVALID",node="o-b"} 1',
      );
      assert.match(mB.text, /^tidegate_tide_peer_up\{peer="o-a",node="o-b"\} 1$/m);
      assert.match(mB.text, /^tidegate_tide_peer_backlog_updates\{peer="o-a",node="o-b"\} 0$/m);
      assert.match(mB.text, /^tidegate_tide_peer_delivery_lag_seconds\{peer="o-a",node="o-b"\} \d/m);
      assert.match(mB.text, /^tidegate_tide_inbox_pending\{node="o-b"\} 0$/m);
      const mA = await request(appA).get('/metrics').expect(200);
      assert.equal(lineOf(mA.text, 'tidegate_tide_messages_sent_total'), 'tidegate_tide_messages_sent_total{node="o-a"} 1');
      assert.ok(!mA.text.includes('node="o-b"'), 'each node has its own registry');
      assert.ok(!(mA.text + mB.text).includes('Patient'), 'no resource keys in metrics');

      const ready = await request(appB).get('/readyz').expect(200);
      assert.equal(ready.body.status, 'ready');
      assert.equal(ready.body.redis, true);
      assert.equal(ready.body.workers, true);

      const peers = await request(appB).get('/admin/peers').expect(200);
      assert.equal(peers.body.node, 'o-b');
      const pa = peers.body.peers[0];
      assert.equal(pa.nodeId, 'o-a');
      assert.equal(pa.status, 'up');
      assert.equal(pa.messagesReceived, 1);
      assert.equal(pa.quarantined, 1); // the tampered one claimed to come from o-a
      assert.equal(pa.backlogUpdates, 0);
      assert.ok(Date.parse(pa.lastContactAt) > Date.now() - 60_000);
      assert.equal(typeof pa.deliveryLagMs, 'number');

      const audit = await request(appB).get('/admin/audit?_count=10').expect(200);
      assert.match(audit.headers['content-type'] ?? '', /application\/fhir\+json/);
      const bundle = JSON.parse(audit.text) as AuditBundle;
      assert.equal(bundle.resourceType, 'Bundle');
      assert.equal(bundle.type, 'searchset');
      assert.equal(bundle.entry.length, 1);
      assert.equal(bundle.entry[0]?.resource.subtype[0]?.code, 'ERR_SIGNATURE_INVALID');
      assert.equal(bundle.entry[0]?.fullUrl, `urn:uuid:${bundle.entry[0]?.resource.id}`);
      const emptyA = JSON.parse((await request(appA).get('/admin/audit').expect(200)).text) as AuditBundle;
      assert.equal(emptyA.total, 0);

      const q = await request(appB).get('/admin/quarantine').expect(200);
      assert.equal(q.body.entries.length, 1);
      assert.equal(q.body.entries[0].messageId, s.id);
      assert.equal(q.body.entries[0].env, undefined, 'no envelope over HTTP');

      await cl.stop('o-b');
      const notReady = await request(appB).get('/readyz').expect(503);
      assert.equal(notReady.body.status, 'not-ready');
      assert.equal(notReady.body.state, 'stopped');
      const stopped = await request(appB).get('/admin/peers').expect(200);
      assert.equal(stopped.body.peers[0].status, 'stopped');
    } finally {
      await cl.cleanup();
    }
  });

  test('relay: A → B → C when A cannot reach C; nothing is relayed in a healthy mesh', async () => {
    const cl = new Cluster(['r-a', 'r-b', 'r-c'], [11, 12, 13], {
      relayGraceMs: 200,
      attempts: 2,
      // the unreachable peer (port 1) fails at once (not connected); a healthy link must not be
      // given up (and dropped for 60 s) because one add took over 300 ms on a loaded machine
      sendTimeoutMs: 5000,
      peerDownMs: 60_000,
      stopTimeoutMs: 2000,
    });
    // nothing listens on port 1: A and C cannot reach each other's Redis
    cl.routes.set('r-a>r-c', 'redis://127.0.0.1:1/0');
    cl.routes.set('r-c>r-a', 'redis://127.0.0.1:1/0');
    try {
      await cl.startAll();
      const A = cl.node('r-a');
      const B = cl.node('r-b');
      const C = cl.node('r-c');
      A.tide.publish([A.replica.set('Patient/x1', { name: PATIENT_NAME })]);
      await waitFor('B has x1', () => B.replica.json('Patient/x1') !== undefined);
      await sleep(300); // > relayGraceMs: B has held x1 for a while
      assert.equal(C.replica.json('Patient/x1'), undefined);
      assert.equal(B.tide.stats().updatesRelayed, 0, 'no relay before B knows C lacks it');

      // C's digest shows B that C lacks what B has held for a while: B answers and marks C lagging
      await C.tide.runAntiEntropy();
      await waitFor('C has x1 by anti-entropy', () => C.replica.json('Patient/x1') !== undefined);
      const cOnB = B.tide.peers().find((p) => p.nodeId === 'r-c');
      assert.equal(cOnB?.lagging, true);
      assert.equal(B.tide.peers().find((p) => p.nodeId === 'r-a')?.lagging, false);

      // new writes at A now reach C through B, with no further anti-entropy
      A.tide.publish([A.replica.set('Patient/x2', { name: 'second' }), A.replica.set('Patient/x1', { gender: 'other' })]);
      await waitFor('C has x2 through B', () => C.replica.json('Patient/x2') !== undefined);
      await waitFor('C has the x1 edit', () => C.replica.json('Patient/x1')?.gender === 'other');
      await A.tide.flush();
      await cl.quiesce();
      assert.deepEqual(C.replica.snapshot(), A.replica.snapshot());
      assert.deepEqual(B.replica.snapshot(), A.replica.snapshot());
      // bounded: B relayed each new piece of content once, only to C; nobody relayed back
      assert.equal(B.tide.stats().updatesRelayed, 2);
      assert.equal(B.tide.peers().find((p) => p.nodeId === 'r-c')?.updatesRelayed, 2);
      assert.equal(B.tide.peers().find((p) => p.nodeId === 'r-a')?.updatesRelayed, 0);
      assert.equal(C.tide.stats().updatesRelayed, 0);
      assert.equal(A.tide.stats().updatesRelayed, 0);
      // C received x1 (anti-entropy), then x2 and the x1 edit (relay): 3 updates, no duplicates
      assert.equal(C.tide.stats().updatesReceived, 3);
      // the same content again is not relayed again
      A.tide.publish([{ key: 'Patient/x2', update: A.replica.diffFor('Patient/x2', undefined)! }]);
      await A.tide.flush();
      await cl.quiesce();
      assert.equal(B.tide.stats().updatesRelayed, 2);
    } finally {
      await cl.cleanup();
    }

    // healthy mesh: after a digest round everybody is in step, so direct fanout suffices
    const ok = new Cluster(['h-a', 'h-b', 'h-c'], [11, 12, 13], { relayGraceMs: 100 });
    try {
      await ok.startAll();
      const [A, B, C] = ['h-a', 'h-b', 'h-c'].map((n) => ok.node(n));
      A!.tide.publish([A!.replica.set('Patient/y1', { name: 'one' })]);
      await ok.quiesce();
      await sleep(150);
      for (const n of [A, B, C]) await n!.tide.runAntiEntropy();
      await ok.quiesce();
      for (let i = 0; i < 5; i++) {
        const n = [A, B, C][i % 3]!;
        n.tide.publish([n.replica.set(`Patient/y${i}`, { [`f${i}`]: String(i) })]);
      }
      await ok.quiesce();
      assert.deepEqual(B!.replica.snapshot(), A!.replica.snapshot());
      assert.deepEqual(C!.replica.snapshot(), A!.replica.snapshot());
      for (const n of [A, B, C]) {
        assert.equal(n!.tide.stats().updatesRelayed, 0, `${n!.name} relayed nothing`);
        assert.ok(n!.tide.peers().every((p) => !p.lagging && p.lastDigestAt !== undefined));
      }
    } finally {
      await ok.cleanup();
    }
  });

  test('Redis memory stays bounded: completed and failed jobs, quarantine, events streams', async () => {
    const cl = new Cluster(['b-a', 'b-b'], [11, 12], {
      eventsMaxLen: 50,
      completedJobsKept: 5,
      failedJobsBudget: 3,
      quarantineMaxEntries: 10,
      batchMaxUpdates: 1,
      batchDelayMs: 0,
    });
    try {
      await cl.startAll();
      const A = cl.node('b-a');
      const B = cl.node('b-b');
      for (let i = 0; i < 12; i++) A.tide.publish([A.replica.set(`Observation/o-${i}`, { value: String(i) })]);
      await A.tide.flush();
      const inbox = cl.inbox('b-b');
      // garbage is cheap to refuse (no crypto): 150 poison jobs
      const bulk = Array.from({ length: 150 }, (_, i) => ({ name: 'updates', data: { env: `garbage ${i}` }, opts: { jobId: `g-${i}` } }));
      await inbox.addBulk(bulk);
      await cl.quiesce(30_000);
      assert.deepEqual(B.replica.snapshot(), A.replica.snapshot());
      const counts = await inbox.getJobCounts('completed', 'failed');
      assert.ok((counts.completed ?? 0) <= 5, `completed kept ${counts.completed}`);
      assert.ok((counts.failed ?? 0) <= 3, `failed kept ${counts.failed}`);
      assert.equal(B.tide.stats().quarantined.ERR_ENVELOPE_MALFORMED, 150);
      const r = cl.redis(B.url);
      assert.equal(await r.llen(B.tide.quarantineKey), 10);
      // ~150 × 4 events were written; XADD MAXLEN ~ 50 trims whole stream nodes (≤ 100 entries each)
      const xlen = await r.xlen(`${cl.prefix}:${inboxQueueName('b-b')}:events`);
      assert.ok(xlen <= 50 + 100, `events stream length ${xlen}`);
    } finally {
      await cl.cleanup();
    }
  });

  const HAVE_REDIS_SERVER = spawnSync('redis-server', ['--version']).status === 0;
  test('stop() is bounded while the own Redis is unreachable', { skip: !HAVE_REDIS_SERVER }, async () => {
    const port = await freePort();
    const server = await startRedisServer(port);
    const cl = new Cluster(['s-a', 's-b'], [11, 12], { stopTimeoutMs: 1500, sendTimeoutMs: 300, attempts: 2 });
    let killed = false;
    try {
      // s-a lives on the throw-away server; s-b on the test Redis
      const A = await cl.start('s-a', {
        redisUrl: `redis://127.0.0.1:${port}/0`,
        peers: [{ nodeId: 's-b', redisUrl: cl.urlOf('s-b'), publicKeys: keysOf('s-b').publicKeys }],
      });
      const B = await cl.start('s-b', {
        peers: [{ nodeId: 's-a', redisUrl: `redis://127.0.0.1:${port}/0`, publicKeys: keysOf('s-a').publicKeys }],
      });
      A.tide.publish([A.replica.set('Patient/s-1', { name: 'before' })]);
      await waitFor('B has s-1', () => B.replica.json('Patient/s-1') !== undefined);
      assert.equal((await A.tide.health()).ready, true);
      await killRedisServer(server);
      killed = true;
      await waitFor('A not ready', async () => !(await A.tide.health(300)).ready);
      A.tide.publish([A.replica.set('Patient/s-2', { name: 'during the outage' })]);
      const t0 = Date.now();
      await cl.stop('s-a');
      const took = Date.now() - t0;
      assert.ok(took < 1500 + 1500, `stop() took ${took} ms`);
      assert.equal((await A.tide.health()).state, 'stopped');
      // the peer that was sent to still got what was pending (its Redis was fine)
      await waitFor('B has s-2', () => B.replica.json('Patient/s-2') !== undefined);
    } finally {
      await cl.cleanup();
      if (!killed) await killRedisServer(server);
    }
  });
});



