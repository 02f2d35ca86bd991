/**
 * The skew check of remote updates (src/merge/skew.ts, docs/merge.md "Clock skew and forged
 * entries"): stamps more than `maxClockSkewMs` ahead of this node's wall clock and log elements
 * whose Yjs writer is not the log's node are refused before anything is applied; the HLC receive is
 * capped. Unit tests on crafted updates, then two real nodes over Redis where B's clock is an hour
 * ahead (refused at A, quarantined, alerted) or a minute ahead (merged).
 */
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import * as Y from 'yjs';
import pino from 'pino';
import { HybridLogicalClock, formatStamp, parseStamp } from '../src/merge/hlc.ts';
import { clientIdFor, logName } from '../src/merge/doc.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { Replica } from '../src/merge/replica.ts';
import { checkUpdate, DEFAULT_MAX_CLOCK_SKEW_MS, RefusedUpdateError } from '../src/merge/skew.ts';
import { MemoryStore } from '../src/store/store.ts';
import { generateNodeKeys } from '../src/envelope/index.ts';
import { TidegateNode } from '../src/node/node.ts';
import { readSynthea, SYNTHEA_SKIP } from './fixtures/synthea.ts';
import { clearRedisPrefix } from './fixtures/redis.ts';

const HOUR = 3_600_000;
const MINUTE = 60_000;
const policy = loadMergePolicy();
const patient = (id: string, gender: string) => ({ resourceType: 'Patient', id, gender });

/** A replica whose wall clock is `offsetMs` ahead of the real one; its clock is returned too. */
function replica(nodeId: string, offsetMs = 0): { r: Replica; clock: HybridLogicalClock } {
  const clock = new HybridLogicalClock(() => Date.now() + offsetMs, { maxAheadMs: DEFAULT_MAX_CLOCK_SKEW_MS });
  return { r: new Replica({ nodeId, store: new MemoryStore(), policy, clock }), clock };
}

/** A Yjs update inserting `elements` (JSON texts) into log `n:<log>` as Yjs client of node `writer`. */
function crafted(log: string, writer: string, elements: string[], opts: { deleteFirst?: boolean } = {}): Uint8Array {
  const doc = new Y.Doc({ gc: false });
  doc.clientID = clientIdFor(writer);
  const arr = doc.getArray<string>(logName(log));
  arr.push(elements);
  if (opts.deleteFirst) arr.delete(0, 1);
  return Y.encodeStateAsUpdate(doc);
}

const element = (t: string, extra: Record<string, unknown> = {}) => JSON.stringify({ t, e: [{ p: 'gender', v: '"male"', ...extra }] });

describe('skew check on crafted updates', () => {
  const now = Date.now();
  const opts = { nowMs: now, maxSkewMs: 5 * MINUTE };

  test('a stamp an hour ahead is refused with the skew in ms; one a minute ahead is accepted', () => {
    const v = checkUpdate(crafted('X', 'X', [element(formatStamp(now + HOUR, 0))]), opts);
    assert.equal(v?.code, 'ERR_CLOCK_SKEW');
    assert.equal(v?.log, 'n:X');
    assert.equal(v?.skewMs, HOUR);
    assert.equal(checkUpdate(crafted('X', 'X', [element(formatStamp(now + MINUTE, 3))]), opts), undefined);
    assert.equal(checkUpdate(crafted('X', 'X', [element(formatStamp(now - HOUR, 0))]), opts), undefined, 'the past is fine');
  });

  test('future stamps hidden in a seen-set or a carried entry are refused too', () => {
    const ok = formatStamp(now, 0);
    const far = formatStamp(now + HOUR, 0);
    assert.equal(checkUpdate(crafted('X', 'X', [element(ok, { s: { Y: far } })]), opts)?.code, 'ERR_CLOCK_SKEW');
    assert.equal(checkUpdate(crafted('X', 'X', [element(ok, { x: [{ t: far, v: '"female"' }] })]), opts)?.code, 'ERR_CLOCK_SKEW');
    // a stamp spelled with a JSON escape is still read as the merge reads it
    const escaped = `{"t":"\\u0030${far.slice(1)}","e":[{"p":"gender","v":"\\"male\\""}]}`;
    assert.equal((JSON.parse(escaped) as { t: string }).t, far);
    assert.equal(checkUpdate(crafted('X', 'X', [escaped]), opts)?.code, 'ERR_CLOCK_SKEW');
    // a stamp-shaped string inside a value is not a stamp
    assert.equal(checkUpdate(crafted('X', 'X', [element(ok, { v: JSON.stringify(far) })]), opts), undefined);
  });

  test('an element in log n:X inserted by Y\u2019s client, or naming another node, is forged', () => {
    const t = formatStamp(now, 0);
    assert.deepEqual(checkUpdate(crafted('X', 'Y', [element(t)]), opts), { code: 'ERR_FORGED_ENTRY', log: 'n:X' });
    assert.equal(checkUpdate(crafted('X', 'X', [element(t, { n: 'Y' })]), opts)?.code, 'ERR_FORGED_ENTRY');
  });

  test('relayed entries of a third node are accepted, also when appended after elements already held', () => {
    const c = replica('C');
    const a = replica('A');
    const first = c.r.write('Patient/relay', patient('relay', 'male')).update!;
    // A gets C's create relayed by B: the log is n:C and the writer is C's client
    assert.equal(a.r.checkRemote('Patient/relay', first), undefined);
    a.r.applyRemote('Patient/relay', first);
    const second = c.r.write('Patient/relay', patient('relay', 'female')).update!;
    // its element's left neighbour is already held at A: the log is found in A's document
    assert.equal(a.r.checkRemote('Patient/relay', second), undefined);
    a.r.applyRemote('Patient/relay', second);
    assert.match(a.r.current('Patient/relay')!.body!, /"gender":"female"/);
    // the same append by another client than C's, after an element held: forged
    const doc = new Y.Doc();
    Y.applyUpdate(doc, first);
    doc.clientID = clientIdFor('B');
    const sv = Y.encodeStateVector(doc);
    doc.getArray<string>(logName('C')).push([element(formatStamp(now, 0))]);
    const forged = Y.encodeStateAsUpdate(doc, sv);
    assert.equal(a.r.checkRemote('Patient/relay', forged)?.code, 'ERR_FORGED_ENTRY');
  });

  test('an element the update deletes itself is not checked (it never becomes live)', () => {
    const far = formatStamp(now + HOUR, 0);
    const u = crafted('X', 'X', [element(far), element(formatStamp(now, 0))], { deleteFirst: true });
    assert.ok(Buffer.from(u).includes(Buffer.from(far)), 'the deleted element\u2019s text is in the update');
    assert.equal(checkUpdate(u, opts), undefined);
    assert.equal(checkUpdate(crafted('X', 'X', [element(far), element(formatStamp(now, 0))]), opts)?.code, 'ERR_CLOCK_SKEW');
  });

  test('applyRemote refuses the update whole, keeps the document and does not move the clock', () => {
    const b = replica('B', HOUR);
    const a = replica('A');
    a.r.write('Patient/p1', patient('p1', 'female'));
    const own = b.r.write('Patient/p1', patient('p1', 'male')).update!;
    const before = a.r.current('Patient/p1');
    const svBefore = a.r.stateVector('Patient/p1');
    const stamp0 = a.clock.now();
    assert.throws(
      () => a.r.applyRemote('Patient/p1', own),
      (err: unknown) => err instanceof RefusedUpdateError && err.code === 'ERR_CLOCK_SKEW' && err.refused && err.key === 'Patient/p1' && err.skewMs! > HOUR - MINUTE,
    );
    assert.equal(a.r.current('Patient/p1'), before, 'same version');
    assert.deepEqual(a.r.stateVector('Patient/p1'), svBefore, 'nothing of it applied');
    assert.ok(parseStamp(a.clock.now()).ms < Date.now() + MINUTE, `HLC not advanced (was ${stamp0})`);
    // within the bound: merges, and the clock moves past it
    const c = replica('C', 2 * MINUTE);
    const wroteAt = Date.now(); // C's stamp is at least this + 2 minutes (no wall-clock window to miss)
    const near = c.r.write('Patient/p1', patient('p1', 'other')).update!;
    a.r.applyRemote('Patient/p1', near);
    assert.match(a.r.current('Patient/p1')!.body!, /"gender":"other"/);
    assert.ok(parseStamp(a.clock.now()).ms >= wroteAt + 2 * MINUTE, 'HLC moved to the accepted stamp');
  });

  test('the HLC receive is capped: a stamp beyond maxAheadMs is ignored', () => {
    const wall = 1_700_000_000_000;
    const clock = new HybridLogicalClock(() => wall, { maxAheadMs: 5 * MINUTE });
    assert.equal(clock.observe(formatStamp(wall + HOUR, 0)), false);
    assert.equal(parseStamp(clock.now()).ms, wall);
    assert.equal(clock.observe(formatStamp(wall + MINUTE, 7)), true);
    assert.equal(clock.now(), formatStamp(wall + MINUTE, 8));
    const uncapped = new HybridLogicalClock(() => wall);
    assert.equal(uncapped.observe(formatStamp(wall + HOUR, 0)), true, 'no cap by default');
  });

  test('cost: checking a Synthea Patient\u2019s create update', { skip: SYNTHEA_SKIP }, () => {
    const patients = readSynthea('Patient');
    const b = replica('B');
    const updates = patients.map((p) => ({ key: `Patient/${p.id}`, update: b.r.write(`Patient/${p.id}`, p).update! }));
    const a = replica('A');
    const times: number[] = [];
    for (let round = 0; round < 20; round++) {
      for (const u of updates) {
        const t0 = performance.now();
        assert.equal(a.r.checkRemote(u.key, u.update), undefined);
        times.push(performance.now() - t0);
      }
    }
    times.sort((x, y) => x - y);
    const p50 = times[Math.floor(times.length / 2)]!;
    console.log(`skew check of ${updates.length} Synthea Patient updates × 20: p50 ${p50.toFixed(4)} ms, p99 ${times[Math.floor(times.length * 0.99)]!.toFixed(4)} ms`);
    assert.ok(p50 < 0.2, `p50 ${p50} ms`);
  });
});

describe('two nodes over Redis: B\u2019s clock ahead', () => {
  const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
  const prefix = `skew-${randomBytes(4).toString('hex')}`;
  const noHospital = { upsert: async () => undefined, remove: async () => undefined };
  const started: TidegateNode[] = [];
  after(async () => {
    for (const n of started.reverse()) await n.stop();
    await clearRedisPrefix(REDIS_URL, prefix);
  });

  const put = async (base: string, resource: Record<string, unknown>): Promise<void> => {
    const res = await fetch(`${base}/${resource.resourceType as string}/${resource.id as string}`, { method: 'PUT', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify(resource) });
    assert.ok(res.ok, `PUT: ${res.status} ${await res.text()}`);
  };
  const waitFor = async (what: string, fn: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> => {
    const deadline = Date.now() + ms;
    while (!(await fn())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(25);
    }
  };

  test('an hour ahead: refused at A whole, quarantined with ERR_CLOCK_SKEW, alerted once, A unchanged; a minute ahead: merged', async () => {
    const keys = { A: generateNodeKeys('skew-a'), B: generateNodeKeys('skew-b') };
    const clockA = new HybridLogicalClock(Date.now, { maxAheadMs: DEFAULT_MAX_CLOCK_SKEW_MS });
    let offsetB = HOUR;
    const clockB = new HybridLogicalClock(() => Date.now() + offsetB, { maxAheadMs: DEFAULT_MAX_CLOCK_SKEW_MS });
    const node = (self: 'A' | 'B', clock: HybridLogicalClock) => {
      const other = self === 'A' ? 'B' : 'A';
      return new TidegateNode({
        secretKeys: keys[self].secretKeys,
        peers: [{ nodeId: keys[other].secretKeys.nodeId, redisUrl: REDIS_URL, publicKeys: keys[other].publicKeys }],
        redisUrl: REDIS_URL,
        queuePrefix: prefix,
        hospital: noHospital,
        logger: pino({ level: 'silent' }),
        antiEntropyIntervalMs: 0,
        batchDelayMs: 5,
        hospitalPollIntervalMs: 0,
        clock,
      });
    };
    const a = node('A', clockA);
    let b = node('B', clockB);
    const baseA = await a.start();
    started.push(a);
    await b.start();
    started.push(b);

    await put(baseA, patient('skew1', 'female'));
    await waitFor('A\u2019s create at B', () => b.replica.current('Patient/skew1') !== undefined);
    const versionA = a.replica.current('Patient/skew1')!.versionId;
    // one message from B: a create written while its clock was right, and an overwrite an hour ahead
    offsetB = 0;
    const good = b.replica.write('Patient/skew0', patient('skew0', 'male')).update!;
    offsetB = HOUR;
    const bad = b.replica.write('Patient/skew1', patient('skew1', 'male')).update!;
    b.tide.publish([{ key: 'Patient/skew0', update: good }, { key: 'Patient/skew1', update: bad }]);
    await waitFor('quarantine at A', async () => (await a.tide.quarantined(10)).length > 0);
    const q = await a.tide.quarantined(10);
    assert.equal(q.length, 1);
    assert.equal(q[0]?.reason, 'ERR_CLOCK_SKEW');
    assert.equal(q[0]?.sender, 'skew-b');
    assert.equal(q[0]?.senderVerified, true);
    assert.equal(a.replica.current('Patient/skew0'), undefined, 'the whole message is refused');
    assert.equal(a.replica.current('Patient/skew1')!.versionId, versionA, 'A\u2019s data unchanged');
    assert.match(a.replica.current('Patient/skew1')!.body!, /"gender":"female"/);
    assert.ok(parseStamp(clockA.now()).ms < Date.now() + MINUTE, 'A\u2019s HLC not advanced');
    const alerts = a.detector.alerts().filter((al) => al.signal === 'clock-skew');
    assert.equal(alerts.length, 1);
    assert.equal(alerts[0]?.subject.value, 'skew-b');
    assert.deepEqual(alerts[0]?.responses, [], 'a skewed clock does not quarantine the peer by default');
    // anti-entropy resends it: refused again, but neither quarantined nor alerted again
    const refusedBefore = a.tide.stats().rejected.ERR_CLOCK_SKEW ?? 0;
    await b.tide.runAntiEntropy();
    await a.tide.runAntiEntropy();
    await waitFor('resend refused', () => (a.tide.stats().rejected.ERR_CLOCK_SKEW ?? 0) > refusedBefore);
    assert.equal((await a.tide.quarantined(100)).length, 1, 'no new quarantine record');
    assert.equal(a.detector.alerts().filter((al) => al.signal === 'clock-skew').length, 1, 'no new alert');
    assert.match(a.replica.current('Patient/skew1')!.body!, /"gender":"female"/, 'not converged on that resource');

    // B restarted with its clock a minute ahead (within the bound): its write merges at A
    await b.stop();
    started.splice(started.indexOf(b), 1);
    b = node('B', new HybridLogicalClock(() => Date.now() + MINUTE, { maxAheadMs: DEFAULT_MAX_CLOCK_SKEW_MS }));
    const baseB = await b.start();
    started.push(b);
    const wroteAt = Date.now(); // B's stamp for skew3 is at least this + 1 minute
    await put(baseB, patient('skew3', 'male'));
    await waitFor('skew3 at A', () => a.replica.current('Patient/skew3') !== undefined);
    assert.match(a.replica.current('Patient/skew3')!.body!, /"gender":"male"/);
    assert.ok(parseStamp(clockA.now()).ms >= wroteAt + MINUTE, 'A\u2019s HLC moved to the accepted stamp');
  });
});
