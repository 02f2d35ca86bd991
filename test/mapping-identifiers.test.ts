/**
 * Identifier translation and patient matching (docs/mappings.md "Identifiers and patient matching"),
 * on Synthea Patients with the example two-hospital mapping of config/examples:
 * - identifier systems at the hospital boundary: inbound local → shared, outbound shared → local,
 *   originals kept, idempotent; the crosswalk round trip A → B → A, through the mapping and end to
 *   end over two Medplum hospital servers and two nodes;
 * - matching rules (shared identifier, deterministic, demographics), the review list and its file;
 * - a possible match lands in `GET /admin/matches` (ids only) and is not merged; a sure match by a
 *   shared identifier is linked (`Patient.link` `seealso`);
 * - an invalid crosswalk is refused by `config check` and by the loader with file:line.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MedplumHospital } from '../src/hospital/index.ts';
import { linkPatient, loadMapping, loadMappingOrThrow, MappingConfigError, matchPatient, MatchReviewList, parseCrosswalk, CrosswalkError, runConfigCheck } from '../src/mapping/index.ts';
import type { TidegateNode } from '../src/node/node.ts';
import { readSynthea, SYNTHEA_SKIP } from './fixtures/synthea.ts';
import { exampleMappings, hospitalPut, startMappedNodes } from './fixtures/mapped-nodes.ts';
import type { MappedNodes } from './fixtures/mapped-nodes.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const EXAMPLES = join(ROOT, 'config/examples');
const FHIR = { 'content-type': 'application/fhir+json', accept: 'application/fhir+json' };

const A_MRN = 'urn:oid:1.2.3.4.5';
const B_MRN = 'urn:oid:2.16.840.1.113883.19.5';
const A_SHARED = 'https://mpi.example.org/sid/hospital-a-mrn';
const B_SHARED = 'https://mpi.example.org/sid/hospital-b-mrn';
const EMPI = 'https://mpi.example.org/sid/enterprise-id';
const SSN = 'http://hl7.org/fhir/sid/us-ssn';
const SYNTHEA_MRN = 'http://hospital.smarthealthit.org';

/** A Synthea Patient as registered at a hospital: its MRN in `system` with `mrn`, other identifiers kept. */
function registered(p: any, system: string, mrn: string, id = p.id): any {
  return { ...p, id, identifier: p.identifier.map((i: any) => (i.system === SYNTHEA_MRN ? { ...i, system, value: mrn } : i)) };
}

const keysOf = (p: any): string[] => p.identifier.map((i: any) => `${i.system}|${i.value}`);

function examplesCopy(): string {
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-ids-'));
  cpSync(EXAMPLES, dir, { recursive: true });
  return dir;
}

describe('identifier translation (mapping)', { skip: SYNTHEA_SKIP }, () => {
  const mA = loadMappingOrThrow(join(EXAMPLES, 'hospital-a.mapping.json'), { peers: ['hospital-b'] });
  const mB = loadMappingOrThrow(join(EXAMPLES, 'hospital-b.mapping.json'), { peers: ['hospital-a'] });

  test('inbound adds the shared identifiers after the originals; outbound adds the local one; both idempotent', () => {
    const p = registered(readSynthea('Patient')[0], A_MRN, 'A00001');
    const before = structuredClone(p);
    const inbound = mA.translate(p, 'inbound') as { resource: any; identifiers: any[] };
    assert.deepEqual(p, before, 'input not modified');
    assert.deepEqual(inbound.resource.identifier.slice(0, p.identifier.length), p.identifier, 'originals kept, in place');
    assert.deepEqual(keysOf(inbound.resource).slice(p.identifier.length), [`${A_SHARED}|A00001`, `${EMPI}|E-1001`]);
    assert.deepEqual(
      inbound.identifiers.map((c) => [c.from, c.to, c.configPath]),
      [
        [A_MRN, A_SHARED, 'identifierSystems[0]'],
        [A_MRN, EMPI, 'identifierSystems[1]'],
      ],
    );
    assert.ok(!JSON.stringify(inbound.identifiers).includes('A00001'), 'changes carry no identifier values');
    const again = mA.translate(inbound.resource, 'inbound');
    assert.equal(again.resource, inbound.resource, 'idempotent: nothing added the second time');
    assert.equal(again.identifiers.length, 0);

    const atB = mB.translate(inbound.resource, 'outbound');
    assert.deepEqual(keysOf(atB.resource), [...keysOf(inbound.resource), `${B_MRN}|B00001`], "B's own MRN added from the crosswalk; A's identifiers untouched");
    assert.equal(mB.translate(atB.resource, 'outbound').resource, atB.resource, 'outbound idempotent');
  });

  test('round trip A → B → A keeps A\u2019s original MRN first and unchanged and carries the shared ones', () => {
    const p = registered(readSynthea('Patient')[1], A_MRN, 'A00002');
    const shared = mA.translate(p, 'inbound').resource; // node A merges, gossips
    const hospitalB = mB.translate(shared, 'outbound').resource; // written to B's server
    const editedAtB = { ...hospitalB, active: false };
    const backFromB = mB.translate(editedAtB, 'inbound').resource; // B's node reads B's edit
    const hospitalA: any = mA.translate(backFromB, 'outbound').resource; // written to A's server
    assert.deepEqual(hospitalA.identifier[p.identifier.findIndex((i: any) => i.system === A_MRN)], p.identifier.find((i: any) => i.system === A_MRN), 'A\u2019s MRN where it was, unchanged');
    assert.deepEqual(hospitalA.identifier.slice(0, p.identifier.length), p.identifier);
    const keys = keysOf(hospitalA);
    for (const k of [`${A_MRN}|A00002`, `${A_SHARED}|A00002`, `${EMPI}|E-1002`, `${B_MRN}|B00002`, `${B_SHARED}|B00002`]) assert.ok(keys.includes(k), k);
    assert.equal(new Set(keys).size, keys.length, 'no identifier twice');
  });

  test('a local identifier the crosswalk does not know gets only the same-value shared one; other resource types are left alone', () => {
    const p = registered(readSynthea('Patient')[2], A_MRN, 'A99999');
    assert.deepEqual(keysOf(mA.translate(p, 'inbound').resource).slice(p.identifier.length), [`${A_SHARED}|A99999`]);
    const practitioner = { resourceType: 'Practitioner', id: 'x', identifier: [{ system: A_MRN, value: 'A00001' }] };
    assert.equal(mA.translate(practitioner, 'inbound').resource, practitioner);
  });
});

describe('crosswalk files and config check', () => {
  test('parseCrosswalk: header, comments, one-to-one; every bad line is reported', () => {
    const cw = parseCrosswalk('\uFEFF# c\nlocal,shared\n\nA1,E1\nA2,E2\n', 'x.csv');
    assert.equal(cw.toShared.get('A1'), 'E1');
    assert.equal(cw.toLocal.get('E2'), 'A2');
    assert.throws(
      () => parseCrosswalk('local,shared\nA1,E1\nA1,E9\nA3,E1\nA4\n"A5",E5\n', 'x.csv'),
      (err: unknown) => {
        assert.ok(err instanceof CrosswalkError);
        assert.equal(err.code, 'ERR_MAPPING_CROSSWALK');
        assert.equal(err.message, 'invalid crosswalk: line 3: local value already listed on line 2; line 4: shared value already listed on line 2; line 5: expected two values "localValue,sharedValue"; line 6: expected two values "localValue,sharedValue"');
        assert.deepEqual(
          err.issues.map((i) => i.line),
          [3, 4, 5, 6],
        );
        assert.match(err.issues[0]!.message, /local value already listed on line 2/);
        assert.match(err.issues[1]!.message, /shared value already listed on line 2/);
        assert.ok(!err.message.includes('A1') && !err.message.includes('E1'), 'no values in messages');
        return true;
      },
    );
    assert.throws(() => parseCrosswalk('mrn,empi\nA1,E1\n', 'x.csv'), /header "local,shared"/);
    assert.throws(() => parseCrosswalk('', 'x.csv'), /empty/);
  });

  test('an invalid crosswalk is refused by config check and by the loader, with file:line', () => {
    const dir = examplesCopy();
    try {
      appendFileSync(join(dir, 'hospital-a-mrn.crosswalk.csv'), 'A00004,E-1001\n');
      const lines = readFileSync(join(dir, 'hospital-a-mrn.crosswalk.csv'), 'utf8').split('\n');
      const bad = lines.indexOf('A00004,E-1001') + 1;
      const first = lines.indexOf('A00001,E-1001') + 1;
      const report = runConfigCheck(join(dir, 'node-a.json'));
      assert.equal(report.ok, false);
      const issue = report.issues.find((i) => i.file.endsWith('hospital-a-mrn.crosswalk.csv'));
      assert.ok(issue, JSON.stringify(report.issues));
      assert.equal(issue.severity, 'error');
      assert.equal(issue.line, bad);
      assert.match(issue.message, new RegExp(`shared value already listed on line ${first}`));
      assert.ok(report.files.some((f) => f.endsWith('hospital-a-mrn.crosswalk.csv')));
      assert.throws(
        () => loadMappingOrThrow(join(dir, 'hospital-a.mapping.json')),
        (err: unknown) => err instanceof MappingConfigError && new RegExp(`hospital-a-mrn\\.crosswalk\\.csv:${bad}:1: error: crosswalk: shared value`).test(err.message),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('schema and cross-entry errors point at the mapping file line', () => {
    const dir = examplesCopy();
    try {
      const file = join(dir, 'hospital-a.mapping.json');
      const m = JSON.parse(readFileSync(file, 'utf8'));
      m.identifierSystems[0].local = `${A_MRN}|`;
      m.identifierSystems.push({ local: 'urn:oid:9.9.9', shared: EMPI });
      m.identifierSystems.push({ local: 'urn:oid:9.9.8', shared: 'urn:oid:9.9.7', crosswalk: 'missing.csv' });
      const text = `${JSON.stringify(m, null, 2)}\n`;
      writeFileSync(file, text);
      const lineOf = (needle: string, from = 0): number => text.split('\n').findIndex((l, i) => i >= from && l.includes(needle)) + 1;
      const schema = loadMapping(file);
      assert.equal(schema.mapping, undefined);
      assert.equal(schema.issues.length, 1);
      assert.equal(schema.issues[0]!.line, lineOf(`"${A_MRN}|"`));
      assert.equal(schema.issues[0]!.pointer, '/identifierSystems/0/local');

      m.identifierSystems[0].local = A_MRN;
      writeFileSync(file, `${JSON.stringify(m, null, 2)}\n`);
      const text2 = readFileSync(file, 'utf8');
      const cross = loadMapping(file);
      assert.equal(cross.mapping, undefined);
      assert.deepEqual(
        cross.issues.map((i) => [i.pointer, i.line]),
        [
          ['/identifierSystems/2/shared', text2.split('\n').findIndex((l) => l.includes('"urn:oid:9.9.9"')) + 2],
          ['/identifierSystems/3/crosswalk', text2.split('\n').findIndex((l) => l.includes('missing.csv')) + 1],
        ],
      );
      assert.match(cross.issues[0]!.message, /already the counterpart of urn:oid:1\.2\.3\.4\.5/);
      assert.match(cross.issues[1]!.message, /cannot read the crosswalk .*missing\.csv \(ENOENT\)/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('patient matching rules', { skip: SYNTHEA_SKIP }, () => {
  const rules = { sharedSystems: [EMPI], deterministic: { identifierSystems: [SSN] } };

  test('shared identifier: same; conflicting shared identifier: none; deterministic: same; demographics only: possible', () => {
    const [p0, p1] = readSynthea('Patient') as [any, any];
    const existing = { ...p0, identifier: [...p0.identifier, { system: EMPI, value: 'E-1' }] };
    const other = { ...p1, id: 'someone-else' };
    const rename = (p: any, given: string): any => ({ ...p, name: [{ ...p.name[0], given: [given] }] });

    const byShared = { ...rename(p0, 'Different'), id: 'new-1', identifier: [{ system: EMPI, value: 'E-1' }] };
    assert.deepEqual(matchPatient(byShared, [existing, other], rules), { decision: 'same', matches: [{ decision: 'same', otherId: p0.id, rule: 'shared-identifier', score: 1 }] });

    const conflicting = { ...p0, id: 'new-2', identifier: [{ system: EMPI, value: 'E-2' }, ...p0.identifier] };
    assert.equal(matchPatient(conflicting, [existing], rules).decision, 'none', 'different enterprise ids: different people, even with equal SSN and demographics');

    const accents = { ...p0, id: 'new-3', name: [{ use: 'official', family: ` ${p0.name[0].family.toUpperCase()}`, given: [`${p0.name[0].given[0]}-`] }], identifier: p0.identifier.filter((i: any) => i.system === SSN) };
    assert.deepEqual(matchPatient(accents, [existing, other], rules).matches, [{ decision: 'same', otherId: p0.id, rule: 'deterministic', score: 1 }]);

    const noIds = { ...p0, id: 'new-4', identifier: [] };
    assert.deepEqual(matchPatient(noIds, [existing, other], rules), { decision: 'possible', matches: [{ decision: 'possible', otherId: p0.id, rule: 'demographics', score: 0.8 }] });
    assert.equal(matchPatient(noIds, [existing], { ...rules, possible: false }).decision, 'none');
    assert.equal(matchPatient({ ...noIds, birthDate: '1900-01-01' }, [existing], rules).decision, 'none');
    assert.equal(matchPatient(p0, [p0], rules).decision, 'none', 'a Patient never matches itself');
  });

  test('linkPatient adds one seealso link per other id, idempotently', () => {
    const p = readSynthea('Patient')[0];
    const linked = linkPatient(p, ['x', 'y']);
    assert.deepEqual(linked.link, [{ other: { reference: 'Patient/x' }, type: 'seealso' }, { other: { reference: 'Patient/y' }, type: 'seealso' }]);
    assert.equal(linkPatient(linked, ['y', 'x']), linked);
  });

  test('the review list survives a restart through its file; dismissed pairs are not listed again', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tidegate-review-'));
    try {
      const file = join(dir, 'sub', 'matches.json');
      const list = new MatchReviewList(file);
      const e = list.add('new-4', { decision: 'possible', otherId: 'old-1', rule: 'demographics', score: 0.8 })!;
      assert.equal(list.add('new-4', { decision: 'possible', otherId: 'old-1', rule: 'demographics', score: 0.8 }), undefined, 'listed once');
      const reopened = new MatchReviewList(file);
      assert.deepEqual(reopened.list(), [e]);
      assert.deepEqual(reopened.dismiss(e.id), e);
      assert.equal(reopened.dismiss(e.id), undefined);
      const third = new MatchReviewList(file);
      assert.deepEqual(third.list(), []);
      assert.equal(third.add('old-1', { decision: 'possible', otherId: 'new-4', rule: 'demographics', score: 0.8 }), undefined, 'the dismissed pair (either order) stays dismissed');
      writeFileSync(file, '{"hello":1}');
      assert.throws(() => new MatchReviewList(file), /not a tidegate match review list/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('end to end: two hospitals, two nodes', { skip: SYNTHEA_SKIP }, () => {
  let fx: MappedNodes;
  const settle = (): Promise<void> => fx.settle({ timeoutMs: 120_000 });
  const put = hospitalPut;
  const get = async (h: MedplumHospital, path: string): Promise<any> => {
    const res = await fetch(`${h.url}/${path}`, { headers: FHIR });
    assert.equal(res.status, 200, path);
    return res.json();
  };
  const nodeBody = (n: TidegateNode, key: string): any => {
    const v = n.replica.current(key);
    return v?.body ? JSON.parse(v.body) : undefined;
  };

  before(async () => {
    fx = await startMappedNodes({ prefix: 'mapids', names: ['hospital-a', 'hospital-b'], mappings: exampleMappings('hospital-a', 'hospital-b') });
  });
  after(() => fx?.stop());

  test('crosswalk round trip A → B → A over HTTP: A\u2019s MRN kept first and unchanged, shared ones added, B gets its own MRN', async () => {
    const [hA, hB] = fx.hospitals as [MedplumHospital, MedplumHospital];
    const [nA, nB] = fx.nodes as [TidegateNode, TidegateNode];
    const p = registered(readSynthea('Patient')[0], A_MRN, 'A00001');
    await put(hA, p);
    await settle();
    const shared = nodeBody(nA, `Patient/${p.id}`);
    assert.deepEqual(keysOf(shared).slice(p.identifier.length), [`${A_SHARED}|A00001`, `${EMPI}|E-1001`], 'node A added the shared identifiers');
    assert.equal(nB.replica.current(`Patient/${p.id}`)!.body, nA.replica.current(`Patient/${p.id}`)!.body, 'both replicas hold the same version');
    const atB = await get(hB, `Patient/${p.id}`);
    assert.deepEqual(keysOf(atB), [...keysOf(shared), `${B_MRN}|B00001`], 'hospital B: everything A sent, plus B\u2019s own MRN');

    await put(hB, { ...atB, active: false });
    await settle();
    const atA = await get(hA, `Patient/${p.id}`);
    assert.equal(atA.active, false, 'the edit made at B reached A');
    assert.deepEqual(atA.identifier.slice(0, p.identifier.length), p.identifier, 'A\u2019s identifiers first and unchanged');
    const keys = keysOf(atA);
    for (const k of [`${A_SHARED}|A00001`, `${EMPI}|E-1001`, `${B_MRN}|B00001`, `${B_SHARED}|B00001`]) assert.ok(keys.includes(k), k);
    assert.equal(new Set(keys).size, keys.length, 'no identifier twice');
  });

  test('a sure match by shared identifier is linked (seealso), not merged', async () => {
    const [, hB] = fx.hospitals as [MedplumHospital, MedplumHospital];
    const [nA, nB] = fx.nodes as [TidegateNode, TidegateNode];
    const p = readSynthea('Patient')[0];
    // hospital B registers the same person again under B00001 (enterprise id E-1001), with another given name and no SSN
    const dup = { resourceType: 'Patient', id: 'b-dup-1', name: [{ family: 'Someone', given: ['Else'] }], birthDate: '1950-01-01', identifier: [{ system: B_MRN, value: 'B00001' }] };
    await put(hB, dup);
    await settle();
    const linked = nodeBody(nB, 'Patient/b-dup-1');
    assert.deepEqual(linked.link, [{ other: { reference: `Patient/${p.id}` }, type: 'seealso' }]);
    assert.ok(keysOf(linked).includes(`${EMPI}|E-1001`));
    assert.equal(nodeBody(nB, `Patient/${p.id}`).link, undefined, 'the other record is unchanged');
    assert.ok(nodeBody(nA, 'Patient/b-dup-1'), 'both records travel as two resources');
    const res = await fetch(`${fx.urls[1]}/admin/matches`);
    assert.deepEqual(((await res.json()) as any).matches.filter((m: any) => m.candidate === 'Patient/b-dup-1'), [], 'a sure match is not a review item');
  });

  test('a possible match lands in GET /admin/matches (ids only), is not merged, and can be dismissed', async () => {
    const [hA, hB] = fx.hospitals as [MedplumHospital, MedplumHospital];
    const [, nB] = fx.nodes as [TidegateNode, TidegateNode];
    const p = readSynthea('Patient')[1];
    await put(hA, registered(p, A_MRN, 'A00002'));
    await settle();
    // hospital B registers a Patient with the same name and birthDate, an MRN the crosswalk does not know, no SSN
    const maybe = { ...registered(p, B_MRN, 'B77777', 'b-maybe-1'), identifier: [{ system: B_MRN, value: 'B77777' }] };
    await put(hB, maybe);
    await settle();
    const res = await fetch(`${fx.urls[1]}/admin/matches`);
    assert.equal(res.status, 200);
    const text = await res.text();
    const body = JSON.parse(text);
    assert.equal(body.node, 'hospital-b');
    const mine = body.matches.filter((m: any) => m.candidate === 'Patient/b-maybe-1');
    assert.equal(mine.length, 1);
    assert.deepEqual({ ...mine[0], createdAt: undefined, id: undefined }, { candidate: 'Patient/b-maybe-1', existing: `Patient/${p.id}`, rule: 'demographics', score: 0.8, createdAt: undefined, id: undefined });
    assert.match(mine[0].id, /^[0-9a-f]{24}$/);
    for (const phi of [p.birthDate, p.name[0].family, p.name[0].given[0], 'B77777', 'A00002']) assert.ok(!text.includes(phi), 'no names, birth dates or identifiers in the review list');
    const candidate = nodeBody(nB, 'Patient/b-maybe-1');
    assert.equal(candidate.link, undefined, 'not linked');
    assert.equal(nodeBody(nB, `Patient/${p.id}`).link, undefined, 'not merged into the other record');
    assert.ok(nodeBody(nB, `Patient/${p.id}`).identifier.some((i: any) => i.system === A_MRN), 'the existing record is unchanged');

    const dismissed = await fetch(`${fx.urls[1]}/admin/matches/${mine[0].id}/dismiss`, { method: 'POST' });
    assert.equal(dismissed.status, 200);
    assert.equal(((await dismissed.json()) as any).dismissed.id, mine[0].id);
    const after: any = await (await fetch(`${fx.urls[1]}/admin/matches`)).json();
    assert.equal(after.matches.filter((m: any) => m.id === mine[0].id).length, 0);
    const again = await fetch(`${fx.urls[1]}/admin/matches/${mine[0].id}/dismiss`, { method: 'POST' });
    assert.equal(again.status, 404);
    assert.equal(((await again.json()) as any).resourceType, 'OperationOutcome');
    assert.equal((await fetch(`${fx.urls[1]}/admin/matches/not-an-id/dismiss`, { method: 'POST' })).status, 404);
  });
});
