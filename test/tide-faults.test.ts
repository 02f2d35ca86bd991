/**
 * Tide fault test at a bounded size for CI: 5 nodes, each on its own Redis logical database
 * (11–15, random key prefix), every directed link through a TCP proxy that can be cut. Random
 * partitions (cut links, stopped nodes), dropped inbox jobs, duplicated deliveries, reordered
 * inboxes and node restarts, while every node keeps writing (offline writes stay local). After
 * healing, every node must hold identical state within a bound, and every write must be present
 * everywhere. Seed: TIDE_FAULT_SEED (printed), default fixed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { Cluster } from './fixtures/tide/harness.ts';

/** mulberry32: a small deterministic PRNG, returns floats in [0, 1). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const NAMES = ['f1', 'f2', 'f3', 'f4', 'f5'];
const ROUNDS = 4;
const KEYS = 12;
const CONVERGE_BOUND_MS = 40_000;

test('5 nodes converge after random partitions, drops, duplicates, reordering and restarts', { timeout: 120_000 }, async (t) => {
  const seed = Number(process.env.TIDE_FAULT_SEED ?? 20240611);
  const rnd = prng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
  t.diagnostic(`seed ${seed}`);
  const cl = new Cluster(
    NAMES,
    [11, 12, 13, 14, 15],
    {
      // sized for one crypto worker thread on a 2-core CI box: every envelope costs ~60 ms to seal
      // and ~35 ms to open, shared by all 5 nodes of this process; one anti-entropy round of 5 nodes
      // is 20 digests (~2 s of that thread), so rounds are 5 s apart
      antiEntropyIntervalMs: 5000,
      relayGraceMs: 8000,
      attempts: 2,
      backoffMs: 50,
      sendTimeoutMs: 500,
      peerDownMs: 1000,
      stopTimeoutMs: 2000,
      batchDelayMs: 300,
    },
    true,
  );
  /** Every write: node, key, field, value. Fields are unique, so no write can overwrite another. */
  const writes: { node: string; key: string; field: string; value: string }[] = [];
  const faults: string[] = [];
  let n = 0;
  const write = (node: string): void => {
    const key = `Patient/k${Math.floor(rnd() * KEYS)}`;
    const field = `w-${node}-${n++}`;
    const value = `v${n}`;
    const running = cl.nodes.get(node);
    const replica = cl.replicas.get(node)!;
    const u = replica.set(key, { [field]: value });
    if (running) running.tide.publish([u]); // a stopped node only writes locally
    writes.push({ node, key, field, value });
  };
  try {
    await cl.startAll();
    for (let round = 0; round < ROUNDS; round++) {
      for (let i = 0; i < 2; i++) {
        const running = [...cl.nodes.keys()];
        const stopped = NAMES.filter((x) => !cl.nodes.has(x));
        const r = rnd();
        if (r < 0.25) {
          const a = pick(NAMES);
          const b = pick(NAMES.filter((x) => x !== a));
          cl.link(a, b).block();
          cl.link(b, a).block();
          faults.push(`cut ${a}<->${b}`);
        } else if (r < 0.4 && stopped.length < 2 && running.length > 3) {
          const x = pick(running);
          await cl.stop(x);
          faults.push(`stop ${x}`);
        } else if (r < 0.55 && stopped.length > 0) {
          const x = pick(stopped);
          await cl.start(x);
          faults.push(`restart ${x}`);
        } else if (r < 0.7) {
          // drop: everything waiting in one inbox is lost
          const x = pick(NAMES);
          const q = cl.inbox(x);
          const waiting = await q.getJobs(['wait']);
          for (const j of waiting) await j.remove().catch(() => {});
          faults.push(`drop ${waiting.length} at ${x}`);
        } else if (r < 0.85) {
          // duplicate: completed jobs removed and delivered again (same id, same envelope)
          const x = pick([...cl.nodes.keys()]);
          const q = cl.inbox(x);
          const done = (await q.getJobs(['completed'], 0, 4)).filter((j) => j.name === 'updates');
          for (const j of done) {
            await j.remove().catch(() => {});
            await q.add(j.name, j.data, { jobId: j.id! });
          }
          faults.push(`duplicate ${done.length} at ${x}`);
        } else {
          // reorder: a stopped node's waiting inbox is re-added in reverse order
          const x = stopped[0];
          if (x) {
            const q = cl.inbox(x);
            const waiting = await q.getJobs(['wait']);
            for (const j of waiting) await j.remove().catch(() => {});
            for (const j of [...waiting].reverse()) await q.add(j.name, j.data, { jobId: j.id! });
            faults.push(`reorder ${waiting.length} at ${x}`);
          }
        }
      }
      for (const x of NAMES) for (let i = 0; i < 2; i++) write(x);
      await sleep(400 + Math.floor(rnd() * 400));
      if (rnd() < 0.3) {
        for (const p of cl.proxies.values()) p.unblock();
        faults.push('partial heal');
      }
    }

    // heal everything
    for (const p of cl.proxies.values()) p.unblock();
    for (const x of NAMES) if (!cl.nodes.has(x)) await cl.start(x);
    const t0 = Date.now();
    const expected = (): Map<string, Record<string, string>> => {
      const m = new Map<string, Record<string, string>>();
      for (const w of writes) m.set(w.key, { ...(m.get(w.key) ?? {}), [w.field]: w.value });
      return m;
    };
    const want = expected();
    const converged = (): boolean => {
      for (const x of NAMES) {
        const rep = cl.replicas.get(x)!;
        for (const [key, fields] of want) {
          const got = rep.json(key);
          if (!got) return false;
          for (const [f, v] of Object.entries(fields)) if (got[f] !== v) return false;
        }
      }
      return true;
    };
    while (!converged()) {
      if (Date.now() - t0 >= CONVERGE_BOUND_MS) {
        for (const x of NAMES) {
          const rep = cl.replicas.get(x)!;
          let missing = 0;
          for (const [key, fields] of want) for (const [f, v] of Object.entries(fields)) if (rep.json(key)?.[f] !== v) missing++;
          const tide = cl.node(x).tide;
          const counts = await cl.inbox(x).getJobCounts();
          t.diagnostic(`${x}: inbox ${JSON.stringify(counts)} missing ${missing}; ${JSON.stringify(tide.stats())}; peers ${JSON.stringify(tide.peers().map((p) => [p.nodeId, p.status, p.backlogMessages, p.lastError?.message]))}`);
        }
      }
      assert.ok(Date.now() - t0 < CONVERGE_BOUND_MS, `not converged after ${CONVERGE_BOUND_MS} ms; faults: ${faults.join(', ')}`);
      await sleep(100);
    }
    const took = Date.now() - t0;
    // (no quiesce wait: the 5 s anti-entropy scheduler keeps a trickle of digests flowing)
    // identical state everywhere, and every write accounted for
    const ref = cl.replicas.get('f1')!.snapshot();
    for (const x of NAMES) assert.deepEqual(cl.replicas.get(x)!.snapshot(), ref, `${x} identical to f1`);
    let fieldsHeld = 0;
    for (const v of Object.values(ref)) fieldsHeld += Object.keys(v as object).length;
    assert.equal(fieldsHeld, writes.length, 'every write is present, none invented');
    // duplicates, drops and reordering are not poison
    for (const x of NAMES) assert.deepEqual(cl.node(x).tide.stats().quarantined, {}, `${x} quarantined nothing`);
    const relayed = NAMES.reduce((s, x) => s + cl.node(x).tide.stats().updatesRelayed, 0);
    t.diagnostic(`${writes.length} writes, faults: ${faults.join(', ')}; converged ${took} ms after healing; ${relayed} updates relayed`);
  } finally {
    await cl.cleanup();
  }
});
