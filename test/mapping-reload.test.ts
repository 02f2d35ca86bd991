/**
 * Reloading the mapping configuration without a restart (docs/mappings.md "Reload", issue 8):
 *
 * 1. under load: a writer keeps creating and updating Observations at node A (lab, non-lab, and
 *    lab ones matching a withhold rule) over HTTP while A's mapping file is rewritten and reloaded
 *    through `POST /admin/reload` (two valid route sets, alternating, and one invalid file in
 *    between). B is stopped meanwhile, so B's raw Redis keeps every message A sent it, in order:
 *    a withheld Observation never appears there; no message Tide took for B entirely while the
 *    lab-only routes were in force (delimited by marker writes, see below) holds a non-lab one;
 *    the invalid file is refused with 422 (`file:line:column`) and the mapping in force stays.
 *    Then B starts and, after anti-entropy, holds every Observation the final routes allow, at A's
 *    latest version; no write failed, no message failed. A last reload that allows more brings the
 *    other Observations to B by the anti-entropy round the reload starts (cached labels dropped);
 * 2. + 4. a node with SMART auth: `POST /admin/reload` needs the admin token and returns the report;
 *    a ConceptMap changed on disk translates the next version read from the hospital (poller);
 *    a new `patientMatching.reviewFile` is picked up, an invalid one refuses the reload;
 * 3. `tidegate serve` in a child process: SIGHUP reloads the mapping (`$translate` answers with
 *    the new map), an invalid file is logged and changes nothing; and a taken HTTP port stops the
 *    start before anything touches Redis (no gossip worker ever runs).
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import type { Server as NetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import pino from 'pino';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { createKeyStore, generateNodeKeys, peekHeader, writeKeyStoreFiles } from '../src/envelope/index.ts';
import { HospitalClient, startMedplumHospital } from '../src/hospital/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';
import { LiveMapping, loadMappingOrThrow, MappingConfigError } from '../src/mapping/index.ts';
import { TidegateNode } from '../src/node/node.ts';
import { inboxQueueName } from '../src/tide/index.ts';
import { createAuth } from '../src/auth/setup.ts';
import { AuthConfigSchema } from '../src/auth/config.ts';
import { freePort, REDIS_BASE } from './fixtures/tide/harness.ts';
import { clearRedisPrefix } from './fixtures/redis.ts';

const FHIR = { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' };
const CATEGORY = 'http://terminology.hl7.org/CodeSystem/observation-category';
const LOCAL_LAB = 'http://hospital-a.example.org/fhir/CodeSystem/lab-codes';
const LOINC = 'http://loinc.org';
const LAB_WHERE = `category.coding.where(system = '${CATEGORY}' and code = 'laboratory').exists()`;
const SECRET_WHERE = "code.coding.where(code = 'SECRET').exists()";

/** Route set LAB: lab Observations only; SECRET ones withheld. */
const LAB = { routes: { 'hospital-b': { send: [{ resourceType: 'Observation', where: LAB_WHERE }], withhold: [{ resourceType: 'Observation', where: SECRET_WHERE }] } } };
/** Route set ALL: every Observation; SECRET ones withheld. */
const ALL = { routes: { 'hospital-b': { send: [{ resourceType: 'Observation' }], withhold: [{ resourceType: 'Observation', where: SECRET_WHERE }] } } };
/** Invalid: a FHIRPath condition that does not parse. */
const INVALID = { routes: { 'hospital-b': { send: [{ resourceType: 'Observation', where: 'category.where(' }] } } };

function writeJson(file: string, value: unknown): void {
  writeFileSync(file, `${JSON.stringify(value, null, 2)}\n`);
}

/** 1-based line and column of the first occurrence of `needle` in `file`. */
function positionIn(file: string, needle: string): { line: number; column: number } {
  const lines = readFileSync(file, 'utf8').split('\n');
  for (const [i, l] of lines.entries()) if (l.includes(needle)) return { line: i + 1, column: l.indexOf(needle) + 1 };
  throw new Error(`${needle} not in ${file}`);
}

type Kind = 'lab' | 'other' | 'secret';
const kindOf = (i: number): Kind => (['lab', 'lab', 'other', 'secret'] as const)[i % 4]!;

function observation(id: string, kind: Kind, n: number): Record<string, unknown> {
  return {
    resourceType: 'Observation',
    id,
    status: 'final',
    category: [{ coding: [{ system: CATEGORY, code: kind === 'other' ? 'vital-signs' : 'laboratory' }] }],
    code: { coding: [{ system: LOCAL_LAB, code: kind === 'secret' ? 'SECRET' : 'GLU' }] },
    valueQuantity: { value: n, unit: 'mmol/L', system: 'http://unitsofmeasure.org', code: 'mmol/L' },
  };
}

describe('reload under load: routes change while A writes; nothing withheld reaches B, nothing is lost', { timeout: 300_000 }, () => {
  const prefix = `mapreload-${randomBytes(4).toString('hex')}`;
  const urlA = `${REDIS_BASE}/13`;
  const urlB = `${REDIS_BASE}/14`;
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-reload-'));
  const mappingFile = join(dir, 'a.mapping.json');
  const hospitals: MedplumHospital[] = [];
  const nodes: TidegateNode[] = [];

  after(async () => {
    for (const n of nodes.reverse()) await n.stop();
    for (const h of hospitals) await h.close();
    await clearRedisPrefix(urlA, prefix);
    await clearRedisPrefix(urlB, prefix);
    rmSync(dir, { recursive: true, force: true });
  });

  test('alternating route sets and an invalid file, under a stream of writes', async () => {
    const keys = { a: generateNodeKeys('hospital-a'), b: generateNodeKeys('hospital-b') };
    for (const n of ['a', 'b']) hospitals.push(await startMedplumHospital({ name: `reload-${n}` }));
    writeJson(mappingFile, LAB);
    const live = new LiveMapping(loadMappingOrThrow(mappingFile, { peers: ['hospital-b'] }), { peers: ['hospital-b'] });
    const common = { queuePrefix: prefix, logger: pino({ level: 'silent' }), antiEntropyIntervalMs: 0, batchDelayMs: 5, hospitalPollIntervalMs: 0 };
    const nA = new TidegateNode({
      ...common,
      secretKeys: keys.a.secretKeys,
      peers: [{ nodeId: 'hospital-b', redisUrl: urlB, publicKeys: keys.b.publicKeys }],
      redisUrl: urlA,
      hospital: new HospitalClient({ baseUrl: hospitals[0]!.url, mapping: live }),
      mapping: live,
    });
    nodes.push(nA);
    const baseA = await nA.start();
    const adminA = baseA.replace(/\/fhir$/, '');

    // the writer: 4 loops of PUTs over HTTP until told to stop
    const N = 40;
    const ids = Array.from({ length: N }, (_, i) => `rl-${i}`);
    let writing = true;
    let writes = 0;
    const failures: string[] = [];
    const writer = async (w: number): Promise<void> => {
      let n = w;
      while (writing) {
        const i = n++ % N;
        const res = await fetch(`${baseA}/Observation/${ids[i]}`, { method: 'PUT', headers: FHIR, body: JSON.stringify(observation(ids[i]!, kindOf(i), n)) });
        await res.arrayBuffer();
        if (res.status !== 200 && res.status !== 201) failures.push(`${res.status}`);
        writes++;
        n += 3;
      }
    };
    const writers = [0, 1, 2, 3].map(writer);

    // Markers: Tide sends each peer's batches in the order it took them (one chain per peer), and
    // a batch is judged when it is taken, then sealed (under load, a moment later). A marker lab
    // Observation written and taken (flush) just before a reload request, and one just after the
    // answer, delimit in B's queue the messages taken entirely while one route set was in force.
    let markers = 0;
    const marker = async (): Promise<string> => {
      const id = `mk-${markers++}`;
      const res = await fetch(`${baseA}/Observation/${id}`, { method: 'PUT', headers: FHIR, body: JSON.stringify(observation(id, 'lab', 0)) });
      assert.equal(res.status, 201);
      void nA.tide.flush(); // takes every outbox now, under the route set in force
      return `Observation/${id}`;
    };
    // [set, marker taken after it came in force, marker taken before the next reload]
    const phases: { set: 'LAB' | 'ALL'; after: string | undefined; before: string | undefined }[] = [{ set: 'LAB', after: undefined, before: undefined }];
    const reload = async (set: 'LAB' | 'ALL'): Promise<void> => {
      writeJson(mappingFile, set === 'LAB' ? LAB : ALL);
      phases.at(-1)!.before = await marker();
      const res = await fetch(`${adminA}/admin/reload`, { method: 'POST' });
      const body = (await res.json()) as { node: string; reloaded: { keys?: unknown; mapping?: { file: string; reloaded: boolean; warnings: number } } };
      assert.equal(res.status, 200, JSON.stringify(body));
      assert.equal(body.node, 'hospital-a');
      assert.deepEqual(body.reloaded.mapping, { file: mappingFile, reloaded: true, warnings: 0 });
      assert.equal(body.reloaded.keys, undefined, 'no key reload configured on this node');
      phases.push({ set, after: await marker(), before: undefined });
    };
    const PHASE_MS = 2000;
    await sleep(PHASE_MS);
    await reload('ALL');
    await sleep(PHASE_MS / 2);
    // an invalid file: 422, issue at its place, the mapping in force stays
    const inForce = nA.liveMapping!.current;
    writeJson(mappingFile, INVALID);
    const at = positionIn(mappingFile, '"category.where("');
    const bad = await fetch(`${adminA}/admin/reload`, { method: 'POST' });
    assert.equal(bad.status, 422);
    const oo = (await bad.json()) as { resourceType: string; issue: { severity: string; code: string; diagnostics: string }[] };
    assert.equal(oo.resourceType, 'OperationOutcome');
    assert.equal(oo.issue.length, 1);
    assert.equal(oo.issue[0]!.severity, 'error');
    assert.ok(oo.issue[0]!.diagnostics.includes(`a.mapping.json:${at.line}:${at.column}: error: `), oo.issue[0]!.diagnostics);
    assert.match(oo.issue[0]!.diagnostics, /FHIRPath/);
    assert.equal(nA.liveMapping!.current, inForce, 'the mapping in force is unchanged');
    assert.equal(nA.liveMapping!.current.routeAllows('hospital-b', observation('x', 'other', 0)), true, 'ALL still in force');
    await sleep(PHASE_MS / 2);
    await reload('LAB');
    await sleep(PHASE_MS);
    await reload('ALL');
    await sleep(PHASE_MS);
    await reload('LAB'); // final
    await sleep(PHASE_MS);
    writing = false;
    await Promise.all(writers);
    assert.deepEqual(failures, [], 'every write answered 200/201');
    assert.ok(writes > 100, `a stream of writes (${writes})`);
    await nA.quiet();
    await nA.tide.runAntiEntropy();
    await nA.quiet();

    // B's raw Redis, B stopped: every message A sent it is still in its inbox, in the order sent
    const secret = new Set(ids.filter((_, i) => kindOf(i) === 'secret').map((id) => `Observation/${id}`));
    const other = new Set(ids.filter((_, i) => kindOf(i) === 'other').map((id) => `Observation/${id}`));
    const inboxB = new Queue(inboxQueueName('hospital-b'), { connection: { url: urlB }, prefix, skipMetasUpdate: true });
    let otherSeen = 0;
    let labSeen = 0;
    try {
      assert.equal(await inboxB.getJobCountByTypes('prioritized', 'delayed'), 0);
      const jobs = await inboxB.getJobs(['wait'], 0, -1, true);
      const messages = jobs.map((j) => (peekHeader((j.data as { env: string }).env) as { resources?: string[] }).resources ?? []);
      const indexOf = (key: string | undefined, dflt: number): number => {
        if (key === undefined) return dflt;
        const i = messages.findIndex((m) => m.includes(key));
        assert.ok(i >= 0, `marker ${key} reached B's queue`);
        return i;
      };
      const marks = phases.flatMap((p) => [p.after, p.before]).filter((k) => k !== undefined).map((k) => indexOf(k, 0));
      assert.deepEqual(marks, [...marks].sort((x, y) => x - y), 'markers are in B\u2019s queue in the order they were written');
      // messages taken entirely while LAB was in force carry no non-lab Observation
      for (const p of phases.filter((ph) => ph.set === 'LAB')) {
        const from = indexOf(p.after, 0);
        const to = indexOf(p.before, messages.length - 1);
        for (let i = from; i <= to; i++) for (const key of messages[i]!) assert.ok(!other.has(key), `${key} (non-lab) was sent while LAB was in force (message ${i} of ${from}..${to})`);
      }
      for (const m of messages) {
        for (const key of m) {
          assert.ok(!secret.has(key), `${key} (withheld by both route sets) reached B's queue`);
          if (other.has(key)) otherSeen++;
          else labSeen++;
        }
      }
      const raw = new Redis(urlB);
      try {
        let text = '';
        for (const k of await raw.keys(`${prefix}:*`)) {
          const t = await raw.type(k);
          if (t === 'hash') text += JSON.stringify(await raw.hgetall(k));
          else if (t === 'string') text += await raw.get(k);
          else if (t === 'list') text += (await raw.lrange(k, 0, -1)).join();
        }
        for (const key of secret) assert.ok(!text.includes(`"${key}"`), `${key} is in B's raw Redis`);
      } finally {
        await raw.quit();
      }
    } finally {
      await inboxB.close();
    }
    assert.ok(otherSeen > 0, 'non-lab Observations were sent while ALL was in force');
    assert.ok(labSeen > 0);

    // B starts and converges: everything the final routes (LAB) allow, at A's latest version
    const nB = new TidegateNode({
      ...common,
      secretKeys: keys.b.secretKeys,
      peers: [{ nodeId: 'hospital-a', redisUrl: urlA, publicKeys: keys.a.publicKeys }],
      redisUrl: urlB,
      hospital: new HospitalClient({ baseUrl: hospitals[1]!.url }),
    });
    nodes.push(nB);
    await nB.start();
    const lab = [...ids.filter((_, i) => kindOf(i) === 'lab'), ...Array.from({ length: markers }, (_, i) => `mk-${i}`)].map((id) => `Observation/${id}`);
    const deadline = Date.now() + 30_000;
    for (let quietRuns = 0; quietRuns < 2; ) {
      if (Date.now() > deadline) {
        const q = await Promise.all([nA.quiet(), nB.quiet()]);
        const diff = lab.filter((k) => nB.replica.current(k)?.versionId !== nA.replica.current(k)?.versionId).map((k) => `${k}: ${nA.replica.current(k)?.versionId} vs ${nB.replica.current(k)?.versionId}`);
        assert.fail(`nodes did not converge: quiet ${q}, pending ${await nA.tide.pending()}/${await nB.tide.pending()}, differing ${diff.length}: ${diff.slice(0, 5).join('; ')}`);
      }
      const q = await Promise.all([nA.quiet(), nB.quiet()]);
      const same = lab.every((k) => nB.replica.current(k)?.versionId === nA.replica.current(k)?.versionId);
      quietRuns = q.every(Boolean) && same ? quietRuns + 1 : 0;
      if (q.every(Boolean) && !same) {
        await nA.tide.runAntiEntropy();
        await nB.tide.runAntiEntropy();
      }
      await sleep(100);
    }
    let count = 0;
    for (const k of lab) {
      const a = nA.replica.current(k)!;
      const b = nB.replica.current(k);
      assert.ok(b, `${k} is at B`);
      assert.equal(b.versionId, a.versionId, `${k}: B has A's latest version`);
      assert.equal(b.body, a.body);
      count++;
    }
    assert.equal(count, N / 2 + markers);
    for (const k of secret) assert.equal(nB.replica.current(k), undefined, `${k} reached node B`);
    // a reload that allows more: the non-lab Observations (at A's latest version) reach B by the
    // anti-entropy round the reload starts (labels judged under LAB are not reused)
    assert.ok([...other].some((k) => nB.replica.current(k)?.versionId !== nA.replica.current(k)?.versionId), 'some non-lab Observation is behind at B under LAB');
    writeJson(mappingFile, ALL);
    assert.equal((await fetch(`${adminA}/admin/reload`, { method: 'POST' })).status, 200);
    const t0 = Date.now();
    while (![...other].every((k) => nB.replica.current(k) !== undefined && nB.replica.current(k)!.versionId === nA.replica.current(k)!.versionId)) {
      assert.ok(Date.now() - t0 < 30_000, 'the non-lab Observations did not reach B after the reload');
      await sleep(100);
    }
    // no error, nothing lost
    const sA = nA.stats();
    assert.equal(sA.tide.sendFailures, 0);
    assert.equal(nB.stats().tide.applyFailures, 0);
    assert.equal(sA.hospitalFailures, 0);
    const inbox = new Queue(inboxQueueName('hospital-b'), { connection: { url: urlB }, prefix, skipMetasUpdate: true });
    try {
      assert.equal(await inbox.getJobCountByTypes('failed'), 0, 'no message failed at B');
    } finally {
      await inbox.close();
    }
  });
});

describe('POST /admin/reload with SMART auth; a changed ConceptMap and review file are picked up', { timeout: 180_000 }, () => {
  const prefix = `mapreload2-${randomBytes(4).toString('hex')}`;
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-reload2-'));
  const mappingFile = join(dir, 'c.mapping.json');
  const mapFile = join(dir, 'lab.conceptmap.json');
  const fullMap = JSON.parse(readFileSync(new URL('../config/examples/hospital-a-lab-to-loinc.conceptmap.json', import.meta.url), 'utf8')) as { group: { element: { code: string }[] }[] };
  const withoutHba1c = { ...fullMap, group: [{ ...fullMap.group[0]!, element: fullMap.group[0]!.element.filter((e) => e.code !== 'HBA1C') }] };
  const ISS = 'https://auth.example.org';
  const AUD = 'https://node-c.example.org/fhir';
  let hospital: MedplumHospital;
  let node: TidegateNode;
  let admin: string;
  let sign: (scope: string) => Promise<string>;

  before(async () => {
    const kp = await generateKeyPair('ES256', { extractable: true });
    const jwksFile = join(dir, 'jwks.json');
    writeJson(jwksFile, { keys: [{ ...(await exportJWK(kp.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] });
    sign = (scope) => {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ scope, client_id: 'ops' }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer(ISS).setAudience(AUD).setSubject('ops').setIssuedAt(now).setExpirationTime(now + 300).sign(kp.privateKey);
    };
    writeJson(mapFile, withoutHba1c);
    writeJson(mappingFile, { conceptMaps: [{ file: 'lab.conceptmap.json', direction: 'both' }], patientMatching: { sharedSystems: ['https://mpi.example.org/sid/enterprise-id'], reviewFile: 'r1.json' } });
    hospital = await startMedplumHospital({ name: 'reload-c' });
    const live = new LiveMapping(loadMappingOrThrow(mappingFile, { peers: [] }), { peers: [] });
    node = new TidegateNode({
      secretKeys: generateNodeKeys('hospital-c').secretKeys,
      peers: [],
      redisUrl: `${REDIS_BASE}/13`,
      queuePrefix: prefix,
      hospital: new HospitalClient({ baseUrl: hospital.url, mapping: live }),
      mapping: live,
      logger: pino({ level: 'silent' }),
      antiEntropyIntervalMs: 0,
      hospitalPollIntervalMs: 3_600_000, // polled by hand
      auth: createAuth(AuthConfigSchema.parse({ issuer: ISS, audience: AUD, jwksFile }), { log: pino({ level: 'silent' }) }),
    });
    admin = (await node.start()).replace(/\/fhir$/, '');
  });

  after(async () => {
    await node?.stop();
    await hospital?.close();
    await clearRedisPrefix(`${REDIS_BASE}/13`, prefix);
    rmSync(dir, { recursive: true, force: true });
  });

  const reload = async (token?: string): Promise<{ status: number; body: any }> => {
    const res = await fetch(`${admin}/admin/reload`, { method: 'POST', headers: token ? { authorization: `Bearer ${token}` } : {} });
    return { status: res.status, body: await res.json() };
  };

  test('only with the tidegate/admin token; the report says what was reloaded', async () => {
    assert.equal((await reload()).status, 401);
    assert.equal((await reload(await sign('system/*.cruds'))).status, 403);
    const ok = await reload(await sign('tidegate/admin'));
    assert.equal(ok.status, 200);
    assert.deepEqual(ok.body, { node: 'hospital-c', reloaded: { mapping: { file: mappingFile, reloaded: true, warnings: 0 } } });
  });

  test('a ConceptMap changed on disk translates the next version read from the hospital (and written to it)', async () => {
    const obs = { resourceType: 'Observation', id: 'cm-1', status: 'preliminary', code: { coding: [{ system: LOCAL_LAB, code: 'HBA1C' }] } };
    const put = async (o: unknown): Promise<void> => {
      const res = await fetch(`${hospital.url}/Observation/cm-1`, { method: 'PUT', headers: FHIR, body: JSON.stringify(o) });
      assert.ok(res.ok, `${res.status}`);
    };
    const loinc = (body: string | null | undefined): string[] => (JSON.parse(body ?? '{}').code?.coding ?? []).filter((c: { system: string }) => c.system === LOINC).map((c: { code: string }) => c.code);
    await put(obs);
    await node.hospitalPoller!.pollNow();
    const v1 = node.replica.current('Observation/cm-1');
    assert.ok(v1);
    assert.deepEqual(loinc(v1.body), [], 'HBA1C is not in the map yet');
    writeJson(mapFile, fullMap);
    assert.equal((await reload(await sign('tidegate/admin'))).status, 200);
    await put({ ...obs, status: 'final' });
    await node.hospitalPoller!.pollNow();
    const v2 = node.replica.current('Observation/cm-1')!;
    assert.notEqual(v2.versionId, v1.versionId);
    assert.deepEqual(loinc(v2.body), ['4548-4'], 'the next version read is translated with the new map');
    assert.deepEqual(loinc(node.replica.version('Observation/cm-1', v1.versionId)!.body), [], 'the version read before stays as it was');
    // outbound: a write through the node reaches the hospital with the new map's coding
    const res = await fetch(`${admin}/fhir/Observation/cm-2`, {
      method: 'PUT',
      headers: { ...FHIR, authorization: `Bearer ${await sign('system/*.cruds')}` },
      body: JSON.stringify({ ...obs, id: 'cm-2' }),
    });
    assert.equal(res.status, 201, await res.text());
    await node.quiet();
    const atHospital = (await (await fetch(`${hospital.url}/Observation/cm-2`, { headers: FHIR })).json()) as { code: { coding: { system: string; code: string }[] } };
    assert.deepEqual(atHospital.code.coding.filter((c) => c.system === LOINC).map((c) => c.code), ['4548-4']);
  });

  test('a new reviewFile is picked up; one that is not a review list refuses the reload and changes nothing', async () => {
    const matcher = node.patientMatcher!;
    assert.equal(matcher.review.file, join(dir, 'r1.json'));
    writeJson(mappingFile, { conceptMaps: [{ file: 'lab.conceptmap.json', direction: 'both' }], patientMatching: { sharedSystems: ['https://mpi.example.org/sid/enterprise-id'], reviewFile: 'r2.json' } });
    assert.equal((await reload(await sign('tidegate/admin'))).status, 200);
    assert.equal(matcher.review.file, join(dir, 'r2.json'));
    assert.ok(existsSync(join(dir, 'r2.json')), 'the list is written to the new file');
    const inForce = node.liveMapping!.current;
    writeFileSync(join(dir, 'r3.json'), '{"not":"a review list"}\n');
    writeJson(mappingFile, { conceptMaps: [{ file: 'lab.conceptmap.json', direction: 'both' }], patientMatching: { reviewFile: 'r3.json' } });
    const bad = await reload(await sign('tidegate/admin'));
    assert.equal(bad.status, 422);
    assert.match(bad.body.issue[0].diagnostics, /r3\.json: not a tidegate match review list/);
    assert.equal(node.liveMapping!.current, inForce);
    assert.equal(matcher.review.file, join(dir, 'r2.json'));
    assert.deepEqual(matcher.rules?.sharedSystems, ['https://mpi.example.org/sid/enterprise-id']);
    // the library call gives the same issues
    assert.throws(() => node.liveMapping!.reload(), MappingConfigError);
  });
});

describe('tidegate serve: SIGHUP reloads the mapping; a taken port stops the start before gossip', { timeout: 300_000 }, () => {
  const prefix = `mapreload3-${randomBytes(4).toString('hex')}`;
  const redisUrl = `${REDIS_BASE}/13`;
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-reload3-'));
  const mappingFile = join(dir, 'srv.mapping.json');
  const mapFile = join(dir, 'lab.conceptmap.json');
  const fullMap = JSON.parse(readFileSync(new URL('../config/examples/hospital-a-lab-to-loinc.conceptmap.json', import.meta.url), 'utf8')) as { group: { element: { code: string }[] }[] };
  const withoutHba1c = { ...fullMap, group: [{ ...fullMap.group[0]!, element: fullMap.group[0]!.element.filter((e) => e.code !== 'HBA1C') }] };
  let hospital: MedplumHospital;
  const children: ChildProcess[] = [];
  let blocker: NetServer | undefined;

  /** Writes a node config and spawns `tidegate serve --insecure-dev` on it; `logs()` is its output so far. */
  const serve = async (name: string, port: number): Promise<{ child: ChildProcess; logs: () => string; exited: Promise<number | null> }> => {
    const cfgPath = join(dir, `${name}.json`);
    writeJson(cfgPath, {
      nodeId: 'srv-c',
      listen: { host: '127.0.0.1', port },
      hospitalFhirUrl: hospital.url,
      redisUrl,
      queuePrefix: prefix,
      secretKeyFile: join(dir, 'srv-c.secret.json'),
      storeFile: ':memory:',
      peers: [{ nodeId: 'srv-d', redisUrl, publicKeyFile: join(dir, 'srv-d.public.json') }],
      antiEntropyIntervalMs: 0,
      hospitalPollIntervalMs: 0,
      logLevel: 'info',
      mappingFile,
      auditFile: join(dir, `${name}.audit.jsonl`),
      audit: { maxSegmentBytes: 4096 },
    });
    const child = spawn(process.execPath, ['src/cli/main.ts', 'serve', '--config', cfgPath, '--insecure-dev'], { cwd: new URL('..', import.meta.url), stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let text = '';
    child.stdout!.on('data', (d: Buffer) => (text += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (text += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    return { child, logs: () => text, exited };
  };

  const until = async (what: string, cond: () => boolean | Promise<boolean>, ms = 60_000): Promise<void> => {
    const t0 = Date.now();
    while (!(await cond())) {
      if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
      await sleep(50);
    }
  };

  before(async () => {
    await writeKeyStoreFiles(dir, createKeyStore('srv-c'));
    await writeKeyStoreFiles(dir, createKeyStore('srv-d'));
    writeJson(mapFile, withoutHba1c);
    writeJson(mappingFile, { conceptMaps: [{ file: 'lab.conceptmap.json' }], routes: { 'srv-d': { send: [{ resourceType: 'Observation' }] } } });
    hospital = await startMedplumHospital({ name: 'reload-srv' });
  });

  after(async () => {
    for (const c of children) {
      if (c.exitCode === null && c.signalCode === null) {
        c.kill('SIGTERM');
        await new Promise((r) => c.once('exit', r));
      }
    }
    await new Promise<void>((r) => (blocker ? blocker.close(() => r()) : r()));
    await hospital?.close();
    await clearRedisPrefix(redisUrl, prefix);
    rmSync(dir, { recursive: true, force: true });
  });

  test('SIGHUP: a new ConceptMap is in force ($translate); an invalid file is logged at its place and changes nothing; POST /admin/reload reports keys and mapping', async () => {
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const { child, logs } = await serve('srv-c', port);
    await until('node listening', () => logs().includes('tidegate node listening'), 120_000);
    const translate = async (): Promise<boolean> => {
      const res = await fetch(`${base}/fhir/ConceptMap/$translate?system=${encodeURIComponent(LOCAL_LAB)}&code=HBA1C`, { headers: FHIR });
      assert.equal(res.status, 200);
      const p = (await res.json()) as { parameter: { name: string; valueBoolean?: boolean }[] };
      return p.parameter.find((x) => x.name === 'result')!.valueBoolean === true;
    };
    assert.equal(await translate(), false, 'HBA1C not in the map yet');
    writeJson(mapFile, fullMap);
    const count = (re: RegExp): number => (logs().match(re) ?? []).length;
    child.kill('SIGHUP');
    await until('mapping reloaded', () => count(/"msg":"mapping reloaded"/g) === 1, 30_000);
    assert.equal(await translate(), true, 'the new map is in force');
    assert.match(logs(), /"file":"[^"]*srv\.mapping\.json"[^\n]*"msg":"mapping reloaded"/);

    // an invalid mapping file: logged with file:line:column, nothing changed, the node runs on
    writeJson(mappingFile, { conceptMaps: [{ file: 'lab.conceptmap.json' }], routes: { 'srv-x': {} } });
    const at = positionIn(mappingFile, '"srv-x"');
    const keysBefore = count(/"msg":"peer public keys reloaded"/g);
    child.kill('SIGHUP');
    await until('reload refused', () => count(/mapping NOT reloaded/g) === 1, 30_000);
    assert.match(logs(), new RegExp(`srv\\.mapping\\.json:${at.line}:\\d+: error: route for \\\\"srv-x\\\\", which is not a peer`));
    assert.equal(child.exitCode, null, 'still running');
    assert.equal(await translate(), true, 'the mapping in force stays');
    assert.equal(count(/"msg":"peer public keys reloaded"/g), keysBefore, 'all or nothing: the keys were not reloaded either');

    // POST /admin/reload (open in insecure dev mode): keys and mapping
    writeJson(mappingFile, { conceptMaps: [{ file: 'lab.conceptmap.json' }] });
    const res = await fetch(`${base}/admin/reload`, { method: 'POST' });
    assert.equal(res.status, 200);
    const body = (await res.json()) as { node: string; reloaded: { keys: { changed: unknown[]; unchanged: string[] }; mapping: { reloaded: boolean; warnings: number } } };
    assert.equal(body.node, 'srv-c');
    assert.deepEqual(body.reloaded.keys, { changed: [], unchanged: ['srv-d'] });
    assert.equal(body.reloaded.mapping.reloaded, true);
    assert.equal(body.reloaded.mapping.warnings, 0);
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  });

  test('serve rotates the audit trail at the configured audit.maxSegmentBytes', async () => {
    const port = await freePort();
    const { child, logs } = await serve('srv-c-audit', port);
    await until('node listening', () => logs().includes('tidegate node listening'), 120_000);
    for (let i = 0; i < 20; i++) {
      const res = await fetch(`http://127.0.0.1:${port}/fhir/Patient/audit-${i}`, { method: 'PUT', headers: { 'Content-Type': 'application/fhir+json' }, body: JSON.stringify({ resourceType: 'Patient', id: `audit-${i}`, gender: 'female' }) });
      assert.equal(res.status, 201);
    }
    const auditFile = join(dir, 'srv-c-audit.audit.jsonl');
    await until('a rotated segment', () => existsSync(`${auditFile}.000001`) && existsSync(`${auditFile}.segments`), 30_000);
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  });

  test('a taken HTTP port: serve exits with the port in the message, before Redis or gossip are touched', async () => {
    blocker = createServer();
    await new Promise<void>((r) => blocker!.listen(0, '127.0.0.1', () => r()));
    const port = (blocker.address() as { port: number }).port;
    await clearRedisPrefix(redisUrl, prefix);
    writeJson(mappingFile, { conceptMaps: [{ file: 'lab.conceptmap.json' }] });
    const { logs, exited } = await serve('srv-c-taken', port);
    const code = await exited;
    assert.notEqual(code, 0);
    assert.match(logs(), new RegExp(`port ${port} on 127\\.0\\.0\\.1 is not available \\(EADDRINUSE\\)`));
    assert.ok(!logs().includes('tide: started'), 'gossip never started');
    const r = new Redis(redisUrl);
    try {
      assert.deepEqual(await r.keys(`${prefix}:*`), [], 'nothing written to Redis');
    } finally {
      await r.quit();
    }
  });
});
