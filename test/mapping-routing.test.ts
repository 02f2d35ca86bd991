/**
 * Routing (docs/mappings.md "Routing") on Synthea resources: the example routes decide per resource,
 * FHIRPath conditions are evaluated with FHIRPath's singleton rules and fail closed; and with real
 * Redis and real envelopes, a resource its route refuses never reaches that peer's queue (B's raw
 * Redis is read while B is stopped), through fanout and anti-entropy, with the same wiring as
 * src/node/node.ts (`outboundLabelsOf` + `routeLabelRule`).
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { peekHeader } from '../src/envelope/index.ts';
import { conditionHolds, loadMappingOrThrow, RouteConditionError, Router } from '../src/mapping/index.ts';
import type { Mapping } from '../src/mapping/index.ts';
import { inboxQueueName, Tide } from '../src/tide/index.ts';
import type { SecurityLabel } from '../src/tide/index.ts';
import { outboundLabelsOf, routeLabelRule } from '../src/tide/peer-authz.ts';
import { DocReplica, REDIS_BASE, captureLogger, keysOf, waitFor } from './fixtures/tide/harness.ts';
import type { LogLine } from './fixtures/tide/harness.ts';
import { readSynthea, SYNTHEA_SKIP } from './fixtures/synthea.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SENSITIVE = new Set(['706893006', '361055000', '10939881000119105']);

/** Node-like replica: bodies are whole FHIR JSON; labels come from `outboundLabelsOf` with the mapping, as in src/node/node.ts. */
class RoutedReplica extends DocReplica {
  mapping: Mapping | undefined;
  write(key: string, resource: Record<string, unknown>) {
    return this.set(key, { body: JSON.stringify(resource) });
  }
  securityLabels(key: string): readonly SecurityLabel[] {
    return outboundLabelsOf((this.json(key)?.body as string | undefined) ?? null, this.mapping);
  }
}

describe('routing on Synthea resources', { skip: SYNTHEA_SKIP }, () => {
  let mapping: Mapping;
  let conditions: Array<Record<string, any>>;
  before(() => {
    mapping = loadMappingOrThrow(join(ROOT, 'config/examples/hospital-a.mapping.json'), { peers: ['hospital-b'] });
    conditions = readSynthea('Condition');
  });

  test('example routes: sensitive Conditions withheld, other sent types sent, unlisted types withheld, lab Observations only', () => {
    let withheld = 0;
    for (const c of conditions) {
      const sensitive = c.code.coding.some((x: any) => x.system === 'http://snomed.info/sct' && SENSITIVE.has(x.code));
      const d = mapping.explainRoute('hospital-b', c);
      assert.equal(d.allowed, !sensitive, `${c.code.coding[0].code}: ${d.reason}`);
      if (sensitive) {
        withheld++;
        assert.equal(d.reason, 'withheld by routes.hospital-b.withhold[0]');
      }
    }
    assert.equal(withheld, 26, 'the sample holds 22 + 1 + 3 such Conditions');
    for (const p of readSynthea('Patient')) assert.equal(mapping.routeAllows('hospital-b', p), true);
    for (const m of readSynthea('MedicationRequest').slice(0, 50)) assert.equal(mapping.explainRoute('hospital-b', m).reason, 'no send rule of routes.hospital-b matched');
    const lab = { resourceType: 'Observation', status: 'final', category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs' }] }, { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'laboratory' }] }] };
    assert.equal(mapping.routeAllows('hospital-b', lab), true, 'a second category coding counts');
    assert.equal(mapping.routeAllows('hospital-b', { ...lab, category: [lab.category[0]] }), false);
    assert.equal(mapping.routeAllows('hospital-x', conditions[0]), true, 'a peer without a route gets everything');
  });

  test('conditions follow FHIRPath singleton evaluation and fail closed', () => {
    assert.equal(conditionHolds([]), false);
    assert.equal(conditionHolds([false]), false);
    assert.equal(conditionHolds(['x']), true);
    assert.throws(() => conditionHolds([true, true]), RouteConditionError);
    const errors: string[] = [];
    const router = new Router({ b: { send: [{ resourceType: 'Condition', where: 'code.coding.code' }] } }, { onError: (_p, at, err) => errors.push(`${at}: ${err.message}`) });
    const twoCodings = { resourceType: 'Condition', code: { coding: [{ code: 'a' }, { code: 'b' }] } };
    assert.equal(router.routeAllows('b', twoCodings), false, 'two items: not a condition, withheld');
    assert.match(errors[0]!, /routes\.b\.send\[0\]: condition gave 2 items/);
    assert.equal(router.routeAllows('b', { resourceType: 'Condition', code: { coding: [{ code: 'a' }] } }), true);
    assert.throws(() => new Router({ b: { withhold: [{ where: 'code.where(' }] } }), /routes\.b\.withhold\[0\]\.where: FHIRPath does not parse/);
  });
});

describe('routing in Tide, real Redis: a routed-out resource never reaches the peer\u2019s queue', { skip: SYNTHEA_SKIP }, () => {
  const prefix = `maproute-${randomUUID().slice(0, 8)}`;
  const urlA = `${REDIS_BASE}/11`;
  const urlB = `${REDIS_BASE}/12`;
  const tides: Tide[] = [];
  const clients: Redis[] = [];
  const logs: LogLine[] = [];
  after(async () => {
    for (const t of tides) await t.stop();
    for (const url of [urlA, urlB]) {
      const c = new Redis(url);
      clients.push(c);
      const keys = await c.keys(`${prefix}:*`);
      if (keys.length > 0) await c.del(...keys);
    }
    for (const c of clients) await c.quit();
  });

  test('fanout and anti-entropy send B only what its route allows', async () => {
    const mapping = loadMappingOrThrow(join(ROOT, 'config/examples/hospital-a.mapping.json'), { peers: ['hospital-b'] });
    // the example routes name "hospital-b": run A and B under those ids
    const a = new RoutedReplica('hospital-a');
    a.mapping = mapping;
    const b = new RoutedReplica('hospital-b');
    const start = async (id: 'hospital-a' | 'hospital-b', replica: RoutedReplica, withheldLabels: string[]) => {
      const other = id === 'hospital-a' ? 'hospital-b' : 'hospital-a';
      const t = new Tide({
        self: keysOf(id).secretKeys,
        redisUrl: id === 'hospital-a' ? urlA : urlB,
        prefix,
        peers: [{ nodeId: other, redisUrl: other === 'hospital-a' ? urlA : urlB, publicKeys: keysOf(other).publicKeys, withheldLabels }],
        replica,
        logger: captureLogger(logs),
        antiEntropyIntervalMs: 0,
        backoffMs: 50,
        attempts: 2,
      });
      await t.start();
      tides.push(t);
      return t;
    };
    // as src/node/node.ts does for a peer with a route
    const tideA = await start('hospital-a', a, [routeLabelRule('hospital-b')]);
    const conditions = readSynthea('Condition');
    const sensitiveKeys = conditions.filter((c) => SENSITIVE.has(c.code.coding[0].code)).map((c) => `Condition/${c.id}`);
    const meds = readSynthea('MedicationRequest').slice(0, 20);
    const late = conditions.find((c) => c.code.coding[0].code === '160903007')!;
    const updates = [...conditions.filter((c) => c !== late).map((c) => a.write(`Condition/${c.id}`, c)), ...meds.map((m) => a.write(`MedicationRequest/${m.id}`, m))];
    tideA.publish(updates);
    await tideA.flush();
    // a Condition that becomes sensitive while in the batch window is judged again at send time
    tideA.publish([a.write(`Condition/${late.id}`, late)]);
    tideA.publish([a.write(`Condition/${late.id}`, { ...late, code: { coding: [{ system: 'http://snomed.info/sct', code: '706893006' }] } })]);
    await tideA.flush();
    await tideA.runAntiEntropy();
    await tideA.flush();
    const inboxB = new Queue(inboxQueueName('hospital-b'), { connection: { url: urlB }, prefix, skipMetasUpdate: true });
    try {
      const jobs = await inboxB.getJobs(['waiting', 'prioritized', 'delayed']);
      const listed = new Set(jobs.flatMap((j) => (peekHeader((j.data as { env: string }).env) as { resources?: string[] }).resources ?? []));
      const expected = conditions.filter((c) => !SENSITIVE.has(c.code.coding[0].code) && c.id !== late.id).map((c) => `Condition/${c.id}`);
      const extra = [...listed].filter((k) => !expected.includes(k));
      const missing = expected.filter((k) => !listed.has(k));
      assert.deepEqual({ extra, missing }, { extra: [], missing: [] }, 'exactly the allowed Conditions; no MedicationRequest (no send rule)');
      // the raw Redis of B: no trace of a withheld resource's key
      const rb = new Redis(urlB);
      clients.push(rb);
      let raw = '';
      for (const k of await rb.keys(`${prefix}:*`)) {
        const t = await rb.type(k);
        if (t === 'hash') raw += JSON.stringify(await rb.hgetall(k));
        else if (t === 'string') raw += await rb.get(k);
        else if (t === 'list') raw += (await rb.lrange(k, 0, -1)).join();
        else if (t === 'stream') raw += JSON.stringify(await rb.xrange(k, '-', '+'));
      }
      for (const key of [...sensitiveKeys, `Condition/${late.id}`, ...meds.map((m) => `MedicationRequest/${m.id}`)]) assert.ok(!raw.includes(key), `${key} reached B's Redis`);
      assert.ok(tideA.stats().updatesWithheld >= sensitiveKeys.length + meds.length + 1);
    } finally {
      await inboxB.close();
    }
    // B runs and converges on what it may receive, anti-entropy included
    const tideB = await start('hospital-b', b, []);
    await waitFor('B applied the allowed ones', () => b.json(`Condition/${conditions.find((c) => !SENSITIVE.has(c.code.coding[0].code) && c.id !== late.id)!.id}`) !== undefined, 60_000);
    await tideA.runAntiEntropy();
    await tideB.runAntiEntropy();
    await waitFor('quiet', async () => (await tideA.pending()) === 0 && (await tideB.pending()) === 0, 60_000);
    for (const key of [...sensitiveKeys, `Condition/${late.id}`]) assert.equal(b.json(key), undefined, `${key} reached B`);
    assert.equal([...b.docs.keys()].filter((k) => k.startsWith('Condition/')).length, conditions.length - sensitiveKeys.length - 1);
  });
});
