/**
 * Anti-entropy over the digest tree (src/tide/tree.ts): its cost scales with the differences, not
 * with the corpus; it alone repairs a node whose Redis lost its data; and subscriptions
 * (`PeerConfig.resourceTypes`) limit fanout, relay and anti-entropy to the subscribed types.
 * Real Redis (dbs 11-13 of TIDE_TEST_REDIS_URL), real envelopes, real Yjs replicas.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { Queue } from 'bullmq';
import * as Y from 'yjs';
import { NodeConfigSchema } from '../src/config/config.ts';
import { controlQueueName, stateVectorAhead, TREE_MAX_DEPTH } from '../src/tide/index.ts';
import type { TideStats } from '../src/tide/index.ts';
import { Cluster, DocReplica, PATIENT_NAME, freePort, killRedisServer, startRedisServer, waitFor } from './fixtures/tide/harness.ts';
import type { TestNode } from './fixtures/tide/harness.ts';

const HAVE_REDIS_SERVER = spawnSync('redis-server', ['--version']).status === 0;

type AeCost = { messages: number; bytes: number; treeNodes: number; entries: number; repairs: number };

function aeCost(before: TideStats[], after: TideStats[]): AeCost {
  const d = (f: (s: TideStats) => number): number => after.reduce((n, s, i) => n + f(s) - f(before[i] as TideStats), 0);
  return {
    messages: d((s) => s.aeMessagesSent),
    bytes: d((s) => s.aeBytesSent),
    treeNodes: d((s) => s.aeTreeNodesSent),
    entries: d((s) => s.aeDigestEntriesSent),
    repairs: d((s) => s.aeUpdatesQueued),
  };
}

/**
 * The store's rule for diffs (src/merge/replica.ts): nothing to send when the remote state vector
 * covers ours (DocReplica also sends delete-set-only diffs, which would blur the counts here).
 */
class CoveringReplica extends DocReplica {
  override diffFor(key: string, remote: Uint8Array | undefined): Uint8Array | undefined {
    const mine = this.stateVector(key);
    if (mine !== undefined && remote !== undefined && !stateVectorAhead(mine, remote)) return undefined;
    return super.diffFor(key, remote);
  }
}

/** Writes `n` resources on `from` and copies their state to `to` directly (no gossip). */
function seedIdentical(from: TestNode, to: TestNode, n: number): void {
  for (let i = 0; i < n; i++) {
    const u = from.replica.set(`Observation/o-${i}`, { value: String(i), unit: 'mmol/L' });
    Y.applyUpdate(to.replica.doc(u.key), u.update);
  }
}

describe('tide anti-entropy over the digest tree', { timeout: 180_000 }, () => {
  test('cost scales with the number of differing resources k, not with the corpus N', async (t) => {
    const LEAF = 16;
    const cl = new Cluster(['ae-a', 'ae-b'], [11, 12], { digestLeafKeys: LEAF });
    for (const n of cl.names) cl.replicas.set(n, new CoveringReplica(n));
    try {
      await cl.startAll();
      const A = cl.node('ae-a');
      const B = cl.node('ae-b');
      const stats = (): TideStats[] => [A.tide.stats(), B.tide.stats()];
      /** One round started by A after `k` resources changed on A only (A wrote without publishing). */
      const round = async (k: number, tag: string): Promise<AeCost> => {
        for (let i = 0; i < k; i++) A.replica.set(`Observation/o-${(i * 37) % 1000}`, { note: `${tag}-${i}` });
        const before = stats();
        const receivedBefore = B.tide.stats().updatesReceived;
        await A.tide.runAntiEntropy();
        await cl.quiesce(60_000);
        const cost = aeCost(before, stats());
        assert.deepEqual(B.replica.snapshot(), A.replica.snapshot(), `converged after k=${k}`);
        // only the missing updates travel: one diff per changed resource
        assert.equal(B.tide.stats().updatesReceived - receivedBefore, k, `k=${k}: exactly k updates sent`);
        assert.equal(cost.repairs, k);
        return cost;
      };

      seedIdentical(A, B, 1000);
      const n1 = { k0: await round(0, 'a'), k2: await round(2, 'b'), k20: await round(20, 'c') };
      seedIdentical(A, B, 4000); // o-0 … o-3999: the corpus grows fourfold (o-0 … o-999 rewritten)
      await A.tide.runAntiEntropy(); // settle the rewrite of o-0 … o-999
      await cl.quiesce(60_000);
      const n4 = { k0: await round(0, 'd'), k2: await round(2, 'e'), k20: await round(20, 'f') };
      t.diagnostic(`N=1000: ${JSON.stringify(n1)}`);
      t.diagnostic(`N=4000: ${JSON.stringify(n4)}`);

      for (const [N, c] of [[1000, n1], [4000, n4]] as const) {
        // converged: one ae-tree message holding the root, unanswered
        assert.equal(c.k0.messages, 1, `N=${N}: a converged round is one message`);
        assert.equal(c.k0.treeNodes, 1);
        assert.equal(c.k0.entries, 0);
        for (const [k, cost] of [[2, c.k2], [20, c.k20]] as const) {
          // per differing resource at most one digest bucket of ≤ LEAF entries each way, and
          // at most 16 child summaries per tree level on its path
          assert.ok(cost.entries <= 2 * k * LEAF, `N=${N} k=${k}: ${cost.entries} digest entries`);
          assert.ok(cost.treeNodes <= 1 + 16 * k * TREE_MAX_DEPTH, `N=${N} k=${k}: ${cost.treeNodes} tree nodes`);
          // a flat digest would list all N (key, state vector) entries
          assert.ok(cost.entries < N / 4, `N=${N} k=${k}: far fewer entries than the corpus`);
          // a bounded number of round trips, whatever k
          assert.ok(cost.messages <= 2 * TREE_MAX_DEPTH + 4, `N=${N} k=${k}: ${cost.messages} messages`);
        }
        assert.ok(c.k20.entries > c.k2.entries, `N=${N}: more differences, more entries`);
      }
      // the corpus grew 4×: the payload for the same k does not (it may add one tree level)
      assert.ok(n4.k2.entries <= n1.k2.entries * 2 + 2 * LEAF, 'entries do not scale with N');
      assert.ok(n4.k2.treeNodes <= n1.k2.treeNodes + 16 * 2 + 1, 'tree nodes grow by at most one level');
      assert.ok(n4.k0.bytes <= n1.k0.bytes + 64, 'a converged round costs the same bytes for 4× the corpus');
    } finally {
      await cl.cleanup();
    }
  });

  test(
    'a node whose Redis lost its data is brought back by scheduled anti-entropy alone',
    { skip: HAVE_REDIS_SERVER ? false : 'redis-server not installed' },
    async () => {
      const port = await freePort();
      let server = await startRedisServer(port);
      const cl = new Cluster(['rl-a', 'rl-b'], [11, 0], {
        attempts: 2,
        backoffMs: 20,
        sendTimeoutMs: 500,
        peerDownMs: 200,
        stopTimeoutMs: 3000,
      });
      cl.ownUrls.set('rl-b', `redis://127.0.0.1:${port}/0`);
      try {
        // only B runs the scheduler, and B's scheduler lives on the Redis that will lose its data
        await cl.start('rl-a');
        const B = await cl.start('rl-b', { antiEntropyIntervalMs: 400 });
        const A = cl.node('rl-a');
        for (let i = 0; i < 20; i++) A.tide.publish([A.replica.set(`Patient/l-${i}`, { name: `${PATIENT_NAME} ${i}` })]);
        await waitFor('B has the first writes', () => B.replica.docs.size === 20, 30_000);

        await killRedisServer(server);
        // traffic while B's Redis is down: A's sends to B fail; B's sends to A (main Redis) work
        for (let i = 20; i < 40; i++) A.tide.publish([A.replica.set(`Patient/l-${i}`, { name: `down ${i}` })]);
        for (let i = 0; i < 5; i++) B.tide.publish([B.replica.set(`Encounter/e-${i}`, { status: 'planned' })]);
        await A.tide.flush();
        assert.ok(A.tide.stats().sendFailures > 0, 'A could not reach B');
        await sleep(300);
        // counted while B's Redis is down (no scheduled round can run): a round that starts once it
        // is back and repairs B before this test reads the counter again still counts
        const runsBefore = B.tide.stats().antiEntropyRuns;

        server = await startRedisServer(port); // same port, empty: B's inbox and scheduler are gone
        const control = new Queue(controlQueueName('rl-b'), { connection: { url: cl.urlOf('rl-b') }, prefix: cl.prefix, skipMetasUpdate: true });
        try {
          // B re-creates its job scheduler once its Redis is back, and its rounds repair B
          await waitFor('scheduler re-created', async () => (await control.getJobScheduler('anti-entropy'))?.every === 400, 15_000);
        } finally {
          await control.close();
        }
        await waitFor('B converges by anti-entropy', () => B.replica.docs.size === 45 && A.replica.docs.size === 45, 30_000);
        assert.ok(B.tide.stats().antiEntropyRuns > runsBefore, 'scheduled rounds ran after the restart');
        await waitFor('identical', () => JSON.stringify(B.replica.snapshot()) === JSON.stringify(A.replica.snapshot()), 15_000);
        assert.deepEqual(B.replica.json('Patient/l-39'), { name: 'down 39' });
      } finally {
        await cl.cleanup();
        await killRedisServer(server);
      }
    },
  );

  test('subscriptions: fanout, relay and anti-entropy send a peer only its resource types', async () => {
    const cl = new Cluster(['s-a', 's-b', 's-c'], [11, 12, 13], {
      relayGraceMs: 200,
      attempts: 2,
      // the unreachable peer (port 1) fails at once (not connected); a healthy link must not be
      // given up (and dropped for 60 s) because one add took over 300 ms on a loaded machine
      sendTimeoutMs: 5000,
      peerDownMs: 60_000,
      stopTimeoutMs: 2000,
    });
    cl.subscriptions.set('s-c', ['Patient']); // C takes Patients only, from everybody
    // A and C cannot reach each other: what A writes reaches C through B (relay)
    cl.routes.set('s-a>s-c', 'redis://127.0.0.1:1/0');
    cl.routes.set('s-c>s-a', 'redis://127.0.0.1:1/0');
    try {
      await cl.startAll();
      const A = cl.node('s-a');
      const B = cl.node('s-b');
      const C = cl.node('s-c');
      assert.deepEqual(B.tide.peers().find((p) => p.nodeId === 's-c')?.resourceTypes, ['Patient']);
      assert.equal(B.tide.peers().find((p) => p.nodeId === 's-a')?.resourceTypes, undefined);

      // direct fanout: B's Observation goes to A only
      B.tide.publish([B.replica.set('Patient/p-b', { name: PATIENT_NAME }), B.replica.set('Observation/o-b', { value: '1' })]);
      await waitFor('C has p-b', () => C.replica.json('Patient/p-b') !== undefined);
      await waitFor('A has o-b', () => A.replica.json('Observation/o-b') !== undefined);
      await cl.quiesce();
      assert.equal(C.replica.json('Observation/o-b'), undefined);
      assert.equal(C.tide.stats().updatesReceived, 1);

      // C catches up by anti-entropy with B and becomes a relay target of B
      A.tide.publish([A.replica.set('Patient/x1', { name: 'first' }), A.replica.set('Observation/o-a1', { value: '2' })]);
      await waitFor('B has x1', () => B.replica.json('Patient/x1') !== undefined);
      await sleep(300); // > relayGraceMs
      await C.tide.runAntiEntropy();
      await waitFor('C has x1 by anti-entropy', () => C.replica.json('Patient/x1') !== undefined);
      await cl.quiesce();
      assert.equal(B.tide.peers().find((p) => p.nodeId === 's-c')?.lagging, true);

      // relay: A's new Patient reaches C through B, its Observation does not
      A.tide.publish([A.replica.set('Patient/x2', { name: 'second' }), A.replica.set('Observation/o-a2', { value: '3' })]);
      await waitFor('C has x2 through B', () => C.replica.json('Patient/x2') !== undefined);
      await A.tide.flush();
      await cl.quiesce();
      assert.equal(B.tide.stats().updatesRelayed, 1, 'only the Patient was relayed');

      // anti-entropy in both directions never brings C an Observation; B↔C compare Patients only
      for (const n of [B, C, B, C]) {
        await n.tide.runAntiEntropy();
        await cl.quiesce();
      }
      assert.deepEqual([...C.replica.docs.keys()].sort(), ['Patient/p-b', 'Patient/x1', 'Patient/x2']);
      assert.deepEqual(Object.keys(B.replica.snapshot()), Object.keys(A.replica.snapshot()));
      // converged on the agreed types: a round between B and C is now one message each way
      const before = [B.tide.stats(), C.tide.stats()];
      await B.tide.runAntiEntropy();
      await C.tide.runAntiEntropy();
      await cl.quiesce();
      const cost = aeCost(before, [B.tide.stats(), C.tide.stats()]);
      // B's round goes to A and C, C's round to B (A is unreachable from C: given up, not counted)
      assert.equal(cost.messages, 3, 'converged rounds are root messages only');
      assert.equal(cost.repairs, 0);
      assert.ok(C.tide.stats().rejected.ERR_UNKNOWN_KIND === undefined);
    } finally {
      await cl.cleanup();
    }
  });

  test('a hash-tagged prefix ({…}) puts every key of every node in one Redis Cluster hash slot', async () => {
    const cl = new Cluster(['ht-a', 'ht-b'], [11, 12], { antiEntropyIntervalMs: 60_000 });
    const tag = `{${cl.prefix}}`;
    cl.prefix = tag;
    try {
      await cl.startAll();
      const A = cl.node('ht-a');
      const B = cl.node('ht-b');
      A.tide.publish([A.replica.set('Patient/h-1', { name: PATIENT_NAME })]);
      await waitFor('B has h-1', () => B.replica.json('Patient/h-1') !== undefined);
      await B.tide.runAntiEntropy();
      await cl.quiesce();
      assert.equal(B.tide.quarantineKey, `${tag}:quarantine-ht-b`);
      const keys = await cl.allKeys();
      assert.ok(keys.length >= 6, `inbox, control and scheduler keys exist (${keys.length})`);
      // Redis Cluster hashes only the part between the first { and the next } (the hash tag)
      const tags = new Set(keys.map(({ key }) => key.slice(key.indexOf('{') + 1, key.indexOf('}'))));
      assert.deepEqual([...tags], [tag.slice(1, -1)]);
      assert.ok(keys.every(({ key }) => key.startsWith(`${tag}:`)));
    } finally {
      await cl.cleanup();
    }
  });

  test('config: peers[].resourceTypes and a hash-tagged queuePrefix are accepted, bad ones refused', () => {
    const base = {
      nodeId: 'hospital-a',
      hospitalFhirUrl: 'http://127.0.0.1:1/fhir',
      secretKeyFile: 'a.secret.json',
      peers: [{ nodeId: 'hospital-b', redisUrl: 'redis://127.0.0.1:6379', publicKeyFile: 'b.public.json', resourceTypes: ['Patient', 'Observation'] }],
    };
    const ok = NodeConfigSchema.safeParse({ ...base, queuePrefix: '{tide}' });
    assert.ok(ok.success);
    assert.equal(ok.data.queuePrefix, '{tide}');
    assert.deepEqual(ok.data.peers[0]?.resourceTypes, ['Patient', 'Observation']);
    assert.equal(NodeConfigSchema.safeParse({ ...base, queuePrefix: 'tide-{east}' }).success, true);
    for (const queuePrefix of ['{tide', 'a:b', '{}', '{a}{b}']) {
      assert.equal(NodeConfigSchema.safeParse({ ...base, queuePrefix }).success, false, queuePrefix);
    }
    const peer = base.peers[0]!;
    for (const resourceTypes of [[], ['patient'], ['Patient/x']]) {
      assert.equal(NodeConfigSchema.safeParse({ ...base, peers: [{ ...peer, resourceTypes }] }).success, false, JSON.stringify(resourceTypes));
    }
    const all = NodeConfigSchema.safeParse({ ...base, peers: [{ ...peer, resourceTypes: undefined }] });
    assert.equal(all.success && all.data.peers[0]?.resourceTypes, undefined);
  });
});
