/**
 * Patient matching by index (src/mapping/matching.ts `PatientIndex`, `PatientMatcher`):
 *
 * - the indexed matcher decides exactly as the full comparison (`matchPatient`) on Synthea Patients
 *   and crafted near-duplicates (accents, hyphens, Synthea digits in names, conflicting shared
 *   identifiers), after updates that change identifiers, names and birth dates, after deletes, and
 *   after reloads that change `sharedSystems` or `deterministic.identifierSystems`;
 * - Patients created through the node's FHIR API (create, update-as-create, conditional create,
 *   transaction and batch entries) are matched: sure matches get a `seealso` link as a separate
 *   version authored by the matcher, possible ones land in `GET /admin/matches`; updates are not
 *   re-matched; Patients received from peers are not matched (a peer's update never reaches the
 *   API sink);
 * - the time to match one new Patient with 10,000 and 100,000 Patients held, full scan vs index
 *   (printed as test diagnostics).
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { matchPatient, PatientMatcher } from '../src/mapping/matching.ts';
import type { MatcherReplica, MatchRules } from '../src/mapping/matching.ts';
import type { PatientMatchingConfig } from '../src/mapping/schema.ts';
import { Replica } from '../src/merge/replica.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { MemoryStore } from '../src/store/store.ts';
import type { VersionRecord } from '../src/store/store.ts';
import type { TidegateNode } from '../src/node/node.ts';
import { startMappedNodes } from './fixtures/mapped-nodes.ts';
import type { MappedNodes } from './fixtures/mapped-nodes.ts';
import { readSynthea, SYNTHEA_SKIP } from './fixtures/synthea.ts';

const FHIR = { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' };
const EMPI = 'https://mpi.example.org/sid/enterprise-id';
const OTHER_SHARED = 'https://mpi.example.org/sid/hospital-a-mrn';
const SSN = 'http://hl7.org/fhir/sid/us-ssn';

const ssnOf = (p: any): string | undefined => p.identifier?.find((i: any) => i.system === SSN)?.value;
const official = (p: any): any => p.name.find((n: any) => n.use === 'official') ?? p.name[0];

/**
 * Near-duplicates of one Synthea Patient: the same person written differently, and different
 * people who look alike. Ids are `<prefix>-<n>`.
 */
function variants(p: any, prefix: string): any[] {
  const n = official(p);
  const family: string = n.family;
  const given: string = n.given[0];
  const plain = { resourceType: 'Patient', birthDate: p.birthDate, gender: p.gender };
  const name = (f: string, g: string, use = 'official'): any[] => [{ use, family: f, given: [g] }];
  const ssn = ssnOf(p);
  const out = [
    // accents, case, hyphens, spaces and Synthea digits removed by normalization
    { ...plain, name: name(`${family.toUpperCase()}-`, `${given.replace(/\d+$/, '')}\u0301`), identifier: ssn ? [{ system: SSN, value: ssn }] : [] },
    { ...plain, name: name(` ${family.replace(/\d+$/, '')}99`, given.toLowerCase()), identifier: [] },
    // same shared id, different demographics: the same person
    { ...plain, birthDate: '1901-02-03', name: name('Other', 'Name'), identifier: [{ system: EMPI, value: `E-${p.id}` }] },
    { ...plain, birthDate: '1902-03-04', name: name('Else', 'Someone'), identifier: [{ system: OTHER_SHARED, value: `A-${p.id}` }] },
    // same demographics, different id in the same shared system: different people
    { ...plain, name: name(family, given), identifier: [{ system: EMPI, value: `E-x-${p.id}` }, ...(ssn ? [{ system: SSN, value: ssn }] : [])] },
    // a second shared system agreeing while the first conflicts: same (an agreeing shared id wins)
    { ...plain, name: name(family, given), identifier: [{ system: EMPI, value: `E-x-${p.id}` }, { system: OTHER_SHARED, value: `A-${p.id}` }] },
    // only an old name, no official one: the first name is used
    { ...plain, name: [{ use: 'old', family, given: [given] }, { use: 'nickname', family: 'Zed', given: ['Zed'] }], identifier: [] },
    // partial birthDate: never a demographic match
    { ...plain, birthDate: String(p.birthDate).slice(0, 7), name: name(family, given), identifier: [] },
    // a different SSN with equal demographics: possible (deterministic needs an equal one)
    { ...plain, name: name(family, given), identifier: [{ system: SSN, value: '999-99-9999' }] },
  ];
  return out.map((v, i) => ({ ...v, id: `${prefix}-${i}` }));
}

/** Every live Patient of a replica, for the full comparison. */
function allPatients(replica: Replica): any[] {
  const out: any[] = [];
  for (const key of replica.resourceKeys()) {
    const v = replica.current(key);
    if (key.startsWith('Patient/') && v && !v.deleted && v.body) out.push(JSON.parse(v.body));
  }
  return out;
}

const cfgOf = (rules: MatchRules): PatientMatchingConfig => ({ sharedSystems: [...rules.sharedSystems], ...(rules.deterministic ? { deterministic: { identifierSystems: [...rules.deterministic.identifierSystems] } } : {}), possible: rules.possible ?? true });

describe('indexed matching decides exactly as the full comparison', { skip: SYNTHEA_SKIP }, () => {
  const policy = loadMergePolicy();
  let matcher: PatientMatcher | undefined;
  const replica = new Replica({ nodeId: 'idx', store: new MemoryStore(), policy, onVersion: (key: string, v: VersionRecord) => matcher?.onVersion(key, v) });
  const rules: MatchRules = { sharedSystems: [EMPI, OTHER_SHARED], deterministic: { identifierSystems: [SSN] } };
  const synthea = SYNTHEA_SKIP ? [] : readSynthea('Patient');

  /** Compares the matcher with `matchPatient` over the replica for every candidate. */
  const compare = (candidates: any[], label: string): number => {
    assert.ok(matcher!.indexed, `${label}: the index is in use`);
    let decided = 0;
    for (const c of candidates) {
      const expected = matchPatient(c, allPatients(replica), matcher!.rules!);
      const got = matcher!.apply(c).outcome;
      assert.deepEqual(got, expected, `${label}: ${c.id}`);
      if (got.decision !== 'none') decided++;
    }
    return decided;
  };

  before(async () => {
    // held: the Synthea Patients (some with an enterprise id and a second shared id) and one
    // variant set of the first three, written before the matcher exists (the build indexes them)
    for (const p of synthea) {
      const extra = [{ system: EMPI, value: `E-${p.id}` }, { system: OTHER_SHARED, value: `A-${p.id}` }];
      replica.write(`Patient/${p.id}`, { ...p, identifier: [...p.identifier, ...extra] });
    }
    for (const p of synthea.slice(0, 3)) for (const v of variants(p, `held-${p.id.slice(0, 8)}`)) replica.write(`Patient/${v.id}`, v);
    matcher = new PatientMatcher(rules, replica);
    assert.equal(matcher.indexed, false);
    await matcher.buildIndex();
  });

  test('Synthea Patients and crafted near-duplicates: same outcome, every rule exercised', () => {
    const candidates = [...synthea.map((p) => ({ ...p, id: `again-${p.id}` })), ...synthea.flatMap((p) => variants(p, `cand-${p.id.slice(0, 8)}`))];
    const decided = compare(candidates, 'initial');
    const rulesSeen = new Set(candidates.flatMap((c) => matchPatient(c, allPatients(replica), rules).matches.map((m) => `${m.decision}/${m.rule}`)));
    assert.deepEqual([...rulesSeen].sort(), ['possible/demographics', 'same/deterministic', 'same/shared-identifier']);
    assert.ok(decided > synthea.length, `${decided} candidates matched something`);
    // the crafted cases decide as documented
    const [p0] = synthea;
    const v = variants(p0, 'doc');
    assert.equal(matchPatient(v[3], allPatients(replica), { sharedSystems: [EMPI] }).matches.some((m) => m.otherId === p0.id), false, 'different enterprise ids: not the same person');
    assert.ok(matchPatient(v[0], allPatients(replica), rules).matches.some((m) => m.otherId === p0.id && m.rule === 'deterministic'), 'accents, hyphens and case: same by SSN');
  });

  test('the index follows updates (identifiers, name, birthDate) and deletes', () => {
    const [p0, p1, p2, p3] = synthea as [any, any, any, any];
    const key = (p: any): string => `Patient/${p.id}`;
    const cur = (p: any): any => JSON.parse(replica.current(key(p))!.body!);
    replica.write(key(p0), { ...cur(p0), identifier: [{ system: EMPI, value: 'E-moved' }] }); // shared ids replaced
    replica.write(key(p1), { ...cur(p1), name: [{ use: 'official', family: 'Renamed', given: ['Person'] }] });
    replica.write(key(p2), { ...cur(p2), birthDate: '1950-05-05' });
    replica.write(key(p3), null);
    const candidates = [
      ...synthea.slice(0, 4).flatMap((p) => variants(p, `upd-${p.id.slice(0, 8)}`)),
      { resourceType: 'Patient', id: 'upd-moved', identifier: [{ system: EMPI, value: 'E-moved' }] },
      { resourceType: 'Patient', id: 'upd-renamed', birthDate: p1.birthDate, name: [{ family: 'RENAMÉ-d', given: ['person'] }] },
      { resourceType: 'Patient', id: 'upd-born', birthDate: '1950-05-05', name: [official(p2)] },
    ];
    compare(candidates, 'after updates');
    assert.equal(matcher!.apply(candidates.at(-3)).outcome.matches[0]?.otherId, p0.id, 'the new enterprise id is found');
    assert.equal(matcher!.apply(variants(p3, 'gone')[2]).outcome.decision, 'none', 'a deleted Patient is not a candidate');
    replica.write(key(p3), { ...p3, identifier: [{ system: EMPI, value: `E-${p3.id}` }] }); // re-created
    compare(variants(p3, 'back'), 're-created');
  });

  test('a reload changing sharedSystems or deterministic.identifierSystems: the index follows', async () => {
    // an equal SSN with other demographics: found only through an index of SSN as a shared system
    const ssnOnly: any[] = synthea.filter(ssnOf).map((p) => ({ resourceType: 'Patient', id: `rl-ssn-${p.id.slice(0, 8)}`, name: [{ family: 'Other', given: ['Name'] }], birthDate: '1901-01-01', identifier: [{ system: SSN, value: ssnOf(p) }] }));
    const candidates = [...synthea.flatMap((p) => variants(p, `rl-${p.id.slice(0, 8)}`)), ...ssnOnly];
    matcher!.prepareReconfigure(cfgOf({ sharedSystems: [OTHER_SHARED] }))();
    await matcher!.buildIndex();
    compare(candidates, 'sharedSystems [hospital-a-mrn], no deterministic rule');
    matcher!.prepareReconfigure(cfgOf({ sharedSystems: [OTHER_SHARED], deterministic: { identifierSystems: [SSN, EMPI] } }))();
    assert.ok(matcher!.indexed, 'same sharedSystems: the index is kept');
    compare(candidates, 'deterministic SSN and enterprise id');
    matcher!.prepareReconfigure(cfgOf({ sharedSystems: [EMPI, SSN], possible: false }))();
    await matcher!.buildIndex(); // new sharedSystems: rebuilt (at once here: fewer keys than a batch)
    compare(candidates, 'SSN as a shared system, no possible matches');
    const bySsn = ssnOnly.filter((c) => matcher!.apply(c).outcome.matches.some((m) => m.rule === 'shared-identifier'));
    assert.ok(bySsn.length >= synthea.length - 3, `SSN agreement found through the rebuilt index (${bySsn.length} of ${ssnOnly.length}; two Patients lost their SSN above)`);
    matcher!.prepareReconfigure(undefined)();
    assert.equal(matcher!.apply(candidates[0]).outcome.decision, 'none', 'matching off');
    matcher!.prepareReconfigure(cfgOf(rules))();
    await matcher!.buildIndex();
    compare(candidates, 'back on');
  });

  test('before the index is ready, matching compares with every Patient (same decisions)', () => {
    const fresh = new PatientMatcher(rules, replica);
    const c = variants(synthea[0], 'early')[0];
    assert.equal(fresh.indexed, false);
    const outcome = fresh.apply(c).outcome;
    assert.deepEqual(outcome, matchPatient(c, allPatients(replica), rules));
    assert.ok(outcome.matches.some((m) => m.otherId === synthea[0].id), 'the variant is found among every Patient (not two empty outcomes)');
  });
});

/** A read-only replica over a Map of bodies (for the measurement only: real `Replica` writes of 100,000 Patients take minutes). */
function mapReplica(bodies: Map<string, string>): MatcherReplica {
  const version = (body: string): VersionRecord => ({ versionId: '1', lastUpdated: '2026-01-01T00:00:00Z', deleted: false, body, state: new Uint8Array() });
  return {
    resourceKeys: () => bodies.keys(),
    current: (key: string) => {
      const b = bodies.get(key);
      return b === undefined ? undefined : version(b);
    },
    history: () => [],
    write: () => {
      throw new Error('read-only');
    },
  } as unknown as MatcherReplica;
}

describe('time to match one new Patient', () => {
  const FAMILIES = ['Smith', 'Johnson', 'Williams', 'Brown', 'Jones', 'García', 'Miller', 'Davis', 'Rodríguez', 'Martínez'];
  const GIVENS = ['James', 'Mary', 'John', 'Patricia', 'Robert', 'Jennifer', 'Michael', 'Linda', 'William', 'Elizabeth'];
  const synthetic = (i: number): any => ({
    resourceType: 'Patient',
    id: `p${i}`,
    identifier: [{ system: EMPI, value: `E${i}` }, { system: SSN, value: `${100000000 + i}` }],
    name: [{ use: 'official', family: `${FAMILIES[i % 10]}${Math.floor(i / 100)}`, given: [GIVENS[Math.floor(i / 10) % 10]] }],
    birthDate: `19${String(20 + (i % 80)).padStart(2, '0')}-0${1 + (i % 9)}-1${i % 10}`,
  });
  const rules: MatchRules = { sharedSystems: [EMPI], deterministic: { identifierSystems: [SSN] } };

  for (const held of [10_000, 100_000]) {
    test(`${held} Patients held: full scan vs index`, async (t) => {
      const bodies = new Map<string, string>();
      for (let i = 0; i < held; i++) bodies.set(`Patient/p${i}`, JSON.stringify(synthetic(i)));
      const replica = mapReplica(bodies);
      const matcher = new PatientMatcher(rules, replica);
      let start = performance.now();
      await matcher.buildIndex();
      const buildMs = performance.now() - start;
      // new Patients: a sure match by SSN + demographics, a possible one, and a stranger
      const news = [
        { ...synthetic(held - 7), id: 'n1', identifier: [{ system: SSN, value: `${100000000 + held - 7}` }] },
        { ...synthetic(held - 3), id: 'n2', identifier: [] },
        { ...synthetic(3), id: 'n3', identifier: [{ system: EMPI, value: 'E-new' }], name: [{ family: 'Nobody', given: ['New'] }] },
      ];
      const runs = 5;
      start = performance.now();
      for (let r = 0; r < runs; r++) for (const n of news) matchPatient(n, (function* () { for (const b of bodies.values()) yield JSON.parse(b); })(), rules);
      const scanMs = (performance.now() - start) / (runs * news.length);
      start = performance.now();
      const outcomes = [];
      for (let r = 0; r < runs; r++) for (const n of news) outcomes.push(matcher.apply(n).outcome);
      const indexMs = (performance.now() - start) / (runs * news.length);
      assert.deepEqual(outcomes.slice(0, 3).map((o) => o.decision), ['same', 'possible', 'none']);
      for (const n of news) assert.deepEqual(matcher.apply(n).outcome, matchPatient(n, [...bodies.values()].map((b) => JSON.parse(b)), rules));
      t.diagnostic(`${held} Patients held: full scan ${scanMs.toFixed(1)} ms per new Patient; index ${indexMs.toFixed(3)} ms per new Patient (index built in ${buildMs.toFixed(0)} ms, yielding every 500 keys)`);
      assert.ok(indexMs < scanMs / 10, 'the index is at least 10x faster');
    });
  }
});

describe('Patients created through the node FHIR API are matched', { skip: SYNTHEA_SKIP }, () => {
  let fx: MappedNodes | undefined;
  let node: TidegateNode | undefined;
  let base = '';
  let mappingFile = '';
  const synthea = SYNTHEA_SKIP ? [] : readSynthea('Patient');

  const send = async (method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: any }> => {
    const res = await fetch(`${base}/fhir/${path}`, { method, headers: { ...FHIR, ...headers }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  };
  const links = (id: string): any[] => JSON.parse(node!.replica.current(`Patient/${id}`)!.body!).link ?? [];
  const seeAlso = (...ids: string[]): any[] => ids.map((id) => ({ other: { reference: `Patient/${id}` }, type: 'seealso' }));
  const reviewFor = async (id: string): Promise<any[]> => ((await (await fetch(`${base}/admin/matches`)).json()) as any).matches.filter((m: any) => m.candidate === `Patient/${id}`);

  before(async () => {
    fx = await startMappedNodes({ prefix: 'matchidx', names: ['matchidx'], mappings: { matchidx: { patientMatching: { sharedSystems: [EMPI], deterministic: { identifierSystems: [SSN] } } } } });
    [node] = fx.nodes as [TidegateNode];
    [base] = fx.urls as [string];
    mappingFile = join(fx.dir, 'matchidx.mapping.json');
    for (const p of synthea.slice(0, 6)) {
      const res = await send('PUT', `Patient/held-${p.id}`, { ...p, id: `held-${p.id}`, identifier: [...p.identifier, { system: EMPI, value: `E-${p.id}` }] });
      assert.equal(res.status, 201);
    }
    await node.patientMatcher!.buildIndex();
    assert.ok(node.patientMatcher!.indexed);
  });

  after(() => fx?.stop());

  test('create (POST): a sure match gets a seealso link in a separate version by the matcher', async () => {
    const [p0] = synthea;
    // the first Patients were created through the API too: each was matched (against fewer) and none linked
    assert.deepEqual(links(`held-${p0.id}`), []);
    const res = await send('POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Different', given: ['Name'] }], identifier: [{ system: EMPI, value: `E-${p0.id}` }] });
    assert.equal(res.status, 201);
    assert.equal(res.body.link, undefined, 'the answer is the client\u2019s version');
    const id = res.body.id;
    assert.deepEqual(links(id), seeAlso(`held-${p0.id}`));
    const history = node!.replica.history(`Patient/${id}`);
    assert.equal(history.length, 2, 'the link is a second version');
    const got = await send('GET', `Patient/${id}`);
    assert.deepEqual(got.body.link, seeAlso(`held-${p0.id}`));
    assert.ok(node!.replica.conflicts(`Patient/${id}`).length === 0);
  });

  test('update-as-create (PUT), conditional create, conditional update creating: matched', async () => {
    const [, p1, p2, p3] = synthea;
    const ssnTwin = (p: any, id: string): any => ({ ...p, id, name: [{ ...official(p), family: `${official(p).family.toUpperCase()}-` }], identifier: [{ system: SSN, value: ssnOf(p) }] });
    assert.equal((await send('PUT', 'Patient/put-new', ssnTwin(p1, 'put-new'))).status, 201);
    assert.deepEqual(links('put-new'), seeAlso(`held-${p1.id}`));

    const cc = await send('POST', 'Patient', ssnTwin(p2, 'ignored'), { 'if-none-exist': 'identifier=urn:x|none' });
    assert.equal(cc.status, 201);
    assert.deepEqual(links(cc.body.id), seeAlso(`held-${p2.id}`));

    const cu = await send('PUT', 'Patient?identifier=urn:x|none-either', { ...ssnTwin(p3, 'cu-new') });
    assert.equal(cu.status, 201);
    assert.deepEqual(links('cu-new'), seeAlso(`held-${p3.id}`));
  });

  test('transaction and batch entries: matched; possible matches go to GET /admin/matches', async () => {
    const [, , , , p4, p5] = synthea;
    const tx = await send('POST', '', {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        { fullUrl: 'urn:uuid:7f1c2a7e-0000-4000-8000-000000000001', resource: { resourceType: 'Patient', identifier: [{ system: EMPI, value: `E-${p4.id}` }] }, request: { method: 'POST', url: 'Patient' } },
        { resource: { ...p5, id: 'tx-maybe', identifier: [{ system: 'urn:x:local', value: 'tx-maybe' }] }, request: { method: 'PUT', url: 'Patient/tx-maybe' } },
      ],
    });
    assert.equal(tx.status, 200, JSON.stringify(tx.body));
    const created = tx.body.entry[0].response.location.match(/Patient\/([^/]+)/)[1];
    assert.deepEqual(links(created), seeAlso(`held-${p4.id}`));
    assert.deepEqual(links('tx-maybe'), [], 'a possible match is not linked');
    assert.deepEqual((await reviewFor('tx-maybe')).map((m: any) => [m.existing, m.rule, m.score]), [[`Patient/held-${p5.id}`, 'demographics', 0.8]]);

    const batch = await send('POST', '', {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [{ resource: { resourceType: 'Patient', id: 'batch-new', identifier: [{ system: EMPI, value: `E-${p5.id}` }] }, request: { method: 'PUT', url: 'Patient/batch-new' } }],
    });
    assert.equal(batch.status, 200);
    assert.deepEqual(links('batch-new'), seeAlso(`held-${p5.id}`));
  });

  test('an update of a Patient the node holds is not re-matched; a re-create after a delete is', async () => {
    const [, p1] = synthea;
    const plain = { resourceType: 'Patient', id: 'upd-1', identifier: [{ system: EMPI, value: 'E-nobody' }] };
    assert.equal((await send('PUT', 'Patient/upd-1', plain)).status, 201);
    assert.deepEqual(links('upd-1'), []);
    assert.equal((await send('PUT', 'Patient/upd-1', { ...plain, identifier: [{ system: EMPI, value: `E-${p1.id}` }] })).status, 200);
    assert.deepEqual(links('upd-1'), [], 'not re-matched on update');
    assert.equal((await send('DELETE', 'Patient/upd-1')).status, 204);
    assert.equal((await send('PUT', 'Patient/upd-1', { ...plain, identifier: [{ system: EMPI, value: `E-${p1.id}` }] })).status, 201);
    assert.deepEqual(links('upd-1'), seeAlso(`held-${p1.id}`), 'a Patient created again after a delete is matched');
  });

  test('a Patient received from a peer is not matched', async () => {
    const [, , , p3] = synthea;
    // a peer's version: written on a second replica and applied as a remote update (the node's merge path)
    const peer = new Replica({ nodeId: 'peer-x', store: new MemoryStore(), policy: loadMergePolicy() });
    const w = peer.write('Patient/from-peer', { resourceType: 'Patient', id: 'from-peer', identifier: [{ system: EMPI, value: `E-${p3.id}` }] });
    node!.replica.applyRemote('Patient/from-peer', w.update!);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(links('from-peer'), []);
    // but it is indexed: a later API create matching it gets a link to it
    const res = await send('POST', 'Patient', { resourceType: 'Patient', identifier: [{ system: EMPI, value: `E-${p3.id}` }] });
    assert.deepEqual(links(res.body.id).map((l: any) => l.other.reference).sort(), [`Patient/from-peer`, `Patient/held-${p3.id}`]);
    // the matcher has run since (it linked the create): the peer's version still has no link and no review item
    assert.deepEqual(links('from-peer'), []);
    assert.deepEqual(await reviewFor('from-peer'), []);
    assert.equal(node!.replica.history('Patient/from-peer').length, 1, 'no version written by the matcher');
  });

  test('a mapping reload making SSN a shared system: the node\u2019s index is rebuilt and API creates match by SSN', async () => {
    const [, , , , p4] = synthea;
    const create = async (): Promise<string> => {
      const res = await send('POST', 'Patient', { resourceType: 'Patient', name: [{ family: 'Unrelated', given: ['Person'] }], birthDate: '1903-04-05', identifier: [{ system: SSN, value: ssnOf(p4) }] });
      assert.equal(res.status, 201);
      return res.body.id;
    };
    assert.deepEqual(links(await create()), [], 'SSN alone (other demographics) is no match while SSN is not a shared system');
    writeFileSync(mappingFile, JSON.stringify({ patientMatching: { sharedSystems: [EMPI, SSN] } }));
    node!.liveMapping!.reload();
    assert.deepEqual(node!.patientMatcher!.rules!.sharedSystems, [EMPI, SSN]);
    await node!.patientMatcher!.buildIndex();
    assert.ok(node!.patientMatcher!.indexed);
    const id = await create();
    const refs = links(id).map((l: any) => l.other.reference);
    assert.ok(refs.includes(`Patient/held-${p4.id}`), 'linked to the held Patient with that SSN');
    assert.ok(refs.length >= 2, 'and to the Patient created above with the same SSN');
  });
});
