/**
 * Policy agreement (docs/tide.md and docs/mappings.md "Policy agreement"): per-peer policy digests
 * (src/mapping/policy-digest.ts), their `ae-policy` encoding (src/tide/codec.ts), and, over real
 * Redis with three hospitals and a research peer, the network-wide comparison: agreeing nodes
 * agree, a node lacking a redaction rule for the research peer is flagged at both others (log,
 * metric, GET /admin/peers), fixing its file and reloading clears it, and a node that sends no
 * digests (the old format) is accepted and shown as unknown.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { peekHeader } from '../src/envelope/index.ts';
import { canonicalJson, peerPolicy, policyDigest, policyDigestSource, readPolicyRules, sensitiveTypes, sensitiveTypesSource } from '../src/mapping/policy-digest.ts';
import { LiveMapping, loadMappingOrThrow } from '../src/mapping/index.ts';
import { decodePolicy, encodePolicy, POLICY_DIGEST_BYTES } from '../src/tide/codec.ts';
import { PolicyAgreement, PROBE_EVERY_ROUNDS } from '../src/tide/policy.ts';
import { opsRouter, tideMetricsRegistry } from '../src/ops/index.ts';
import { Cluster, PATIENT_NAME, waitFor } from './fixtures/tide/harness.ts';
import { startMappedNodes } from './fixtures/mapped-nodes.ts';
import type { MappedNodes } from './fixtures/mapped-nodes.ts';

const A = 'hospital-a';
const B = 'hospital-b';
const C = 'hospital-c';
const R = 'research-r';
const NODES = [A, B, C, R];

/** The rules for R, as hospital A writes them (YAML). */
const YAML_A = `# research peer: redacted, labs only without psychiatry
routes:
  ${R}:
    description: research feed
    send:
      - resourceType: [Patient, Observation]
      - resourceType: Condition
        where: "category.coding.where(code = 'problem-list-item').exists()"
    withhold:
      - resourceType: Observation
        where: "meta.tag.where(code = 'psy').exists()"
    redact:
      - path: Patient.telecom
      - path: Patient.address
        action: mask
    consentActors: [Organization/research-r]
consent:
  noConsent: deny
`;

/** The same rules in JSON, other key and rule order, other descriptions, plus an identifier system (legitimately local). */
const jsonB = (withAddressRule = true): string =>
  JSON.stringify(
    {
      consent: { scopes: ['patient-privacy'], noConsent: 'deny', honour: true },
      identifierSystems: [{ shared: 'urn:oid:9.9.9', local: 'urn:oid:1.2.3' }],
      routes: {
        [R]: {
          redact: [{ action: 'remove', path: 'Patient.telecom', description: 'phones' }, ...(withAddressRule ? [{ action: 'mask', path: 'Patient.address' }] : [])],
          consentActors: ['Organization/research-r'],
          withhold: [{ where: "meta.tag.where(code = 'psy').exists()", resourceType: 'Observation' }],
          send: [{ where: "category.coding.where(code = 'problem-list-item').exists()", resourceType: 'Condition' }, { resourceType: ['Observation', 'Patient'] }],
        },
      },
    },
    null,
    2,
  );

describe('policy digests', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-policy-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const write = (name: string, text: string): string => {
    const f = join(dir, name);
    writeFileSync(f, text);
    return f;
  };
  const peer = { nodeId: R, withheldLabels: ['R', 'http://terminology.hl7.org/CodeSystem/v3-ActCode|PSY'] };

  test('canonical JSON: key order and whitespace independent, unsupported values refused', () => {
    assert.equal(canonicalJson({ b: [1, 'x', null], a: { d: true, c: false } }), '{"a":{"c":false,"d":true},"b":[1,"x",null]}');
    assert.throws(() => canonicalJson({ a: undefined }), TypeError);
    assert.throws(() => canonicalJson(Number.NaN), TypeError);
  });

  test('the same rules in YAML and JSON give the same digest; ConceptMap-side settings and descriptions do not count', () => {
    const a = readPolicyRules(write('a.yaml', YAML_A));
    const b = readPolicyRules(write('b.json', jsonB()));
    assert.equal(policyDigest(a, peer), policyDigest(b, peer));
    assert.match(policyDigest(a, peer), /^[0-9a-f]{64}$/);
    // label order does not matter either
    assert.equal(policyDigest(a, peer), policyDigest(a, { ...peer, withheldLabels: [...peer.withheldLabels].reverse() }));
  });

  test('each rule deciding what the peer receives changes the digest', () => {
    const a = readPolicyRules(write('a2.yaml', YAML_A));
    const base = policyDigest(a, peer);
    const variants = [
      readPolicyRules(write('v1.json', jsonB(false))), // a redaction rule less
      readPolicyRules(write('v2.yaml', YAML_A.replace('action: mask', 'action: remove'))),
      readPolicyRules(write('v3.yaml', YAML_A.replace("code = 'psy'", "code = 'hiv'"))),
      readPolicyRules(write('v4.yaml', YAML_A.replace('[Patient, Observation]', '[Patient]'))),
      readPolicyRules(write('v5.yaml', YAML_A.replace('noConsent: deny', 'noConsent: permit'))),
      readPolicyRules(write('v6.yaml', YAML_A.replace('consentActors: [Organization/research-r]', 'consentActors: [Organization/other]'))),
    ];
    for (const v of variants) assert.notEqual(policyDigest(v, peer), base);
    assert.notEqual(policyDigest(a, { ...peer, withheldLabels: ['R'] }), base);
    assert.notEqual(policyDigest(a, { ...peer, resourceTypes: ['Patient'] }), base);
    assert.notEqual(policyDigest(undefined, peer), base); // no mapping file at all
    // with consent.honour false, scopes, noConsent and actors change nothing
    const off = peerPolicy(readPolicyRules(write('off.yaml', `${YAML_A.replace('noConsent: deny', 'honour: false')}`)), peer);
    assert.deepEqual(off['consent'], { honour: false });
  });

  test('ae-policy encoding round-trips; malformed plaintext is refused', () => {
    const d = (n: number): Uint8Array => new Uint8Array(POLICY_DIGEST_BYTES).fill(n);
    const bytes = encodePolicy([{ peer: 'z-node', digest: d(2) }, { peer: 'a-node', digest: d(1) }]);
    assert.deepEqual(decodePolicy(bytes), [{ peer: 'a-node', digest: d(1) }, { peer: 'z-node', digest: d(2) }]);
    assert.deepEqual(decodePolicy(encodePolicy([])), []);
    assert.throws(() => decodePolicy(new Uint8Array([...bytes, 0])), { code: 'ERR_PLAINTEXT_MALFORMED' });
    assert.throws(() => decodePolicy(encodePolicy([{ peer: 'a', digest: d(1).slice(1) }])), { code: 'ERR_PLAINTEXT_MALFORMED' });
    assert.throws(() => decodePolicy(encodePolicy([{ peer: 'bad:id', digest: d(1) }])), { code: 'ERR_PLAINTEXT_MALFORMED' });
    assert.throws(() => decodePolicy(new Uint8Array([2, 0])), { code: 'ERR_PLAINTEXT_MALFORMED' });
    // duplicate peer ids are refused (sorted and distinct)
    const dup = encodePolicy([{ peer: 'a', digest: d(1) }]);
    const twice = new Uint8Array([1, 2, ...dup.slice(2), ...dup.slice(2)]);
    assert.throws(() => decodePolicy(twice), /sorted and distinct/);
  });

  test('comparison rule: the recipient never gets its own digest; the sender is not judged on rules about itself; unknown is not disagreement', () => {
    const mine = new Map([
      [B, 'a'.repeat(64)],
      [C, 'b'.repeat(64)],
      [R, 'c'.repeat(64)],
    ]);
    const p = new PolicyAgreement(() => mine);
    assert.deepEqual(p.outgoing(C)?.map((e) => e.peer), [B, R]);
    assert.equal(p.outgoing(C), undefined, 'a peer not known to be capable is not probed every round');
    const probe = new PolicyAgreement(() => mine);
    const sent = Array.from({ length: 2 * PROBE_EVERY_ROUNDS + 1 }, () => probe.outgoing(C) !== undefined);
    assert.deepEqual(sent.flatMap((s, i) => (s ? [i] : [])), [0, PROBE_EVERY_ROUNDS, 2 * PROBE_EVERY_ROUNDS], 'probed again every PROBE_EVERY_ROUNDS rounds (a lost probe is not final)');
    const raw = (h: string): Uint8Array => Buffer.from(h.repeat(64), 'hex');
    // C advertises other rules about B? No: about R. About itself it sends nothing; its digest for A is not ours to compare.
    assert.deepEqual(p.receive(C, [{ peer: A, digest: raw('f') }, { peer: B, digest: raw('a') }, { peer: R, digest: raw('d') }], 1), [R]);
    assert.deepEqual(p.outgoing(C)?.map((e) => e.peer), [B, R], 'capable now: sent every round');
    assert.deepEqual(p.status(R), { digest: 'cccccccccccc', agrees: false, with: [C], agreeing: [], disagreesOn: [], reportedAt: undefined });
    assert.deepEqual(p.status(B), { digest: 'aaaaaaaaaaaa', agrees: true, with: [], agreeing: [C], disagreesOn: [], reportedAt: undefined });
    assert.deepEqual(p.status(C).disagreesOn, [R]);
    assert.equal(p.status(C).agrees, undefined, 'nobody else advertised a digest for C');
    assert.equal(new PolicyAgreement(undefined).outgoing(B), undefined);
    // fail-closed: unknown recipient blocked, a recipient not serving R is not, a disagreeing one is
    const enforced = new PolicyAgreement(() => mine, () => new Map([[R, new Set(['Patient'])]]));
    assert.equal(enforced.enforcing, true);
    assert.equal(enforced.blocks(C, 'Patient'), true, 'no digests from C yet');
    assert.equal(enforced.blocks(C, 'Observation'), false, 'not a sensitive type');
    assert.equal(enforced.blocks(R, 'Patient'), false, 'R’s own rules are applied to R');
    enforced.receive(C, [{ peer: B, digest: raw('a') }], 1);
    assert.equal(enforced.blocks(C, 'Patient'), false, 'C does not serve R');
    enforced.receive(C, [{ peer: R, digest: raw('d') }], 2);
    assert.equal(enforced.blocks(C, 'Patient'), true, 'C applies other rules to R');
    enforced.receive(C, [{ peer: R, digest: raw('c') }], 3);
    assert.equal(enforced.blocks(C, 'Patient'), false, 'C agrees now');
    const off = new PolicyAgreement(() => mine, () => new Map());
    assert.equal(off.enforcing, false);
    assert.equal(off.blocks(C, 'Patient'), false);
  });
});

describe('policy agreement across the network (real Redis)', () => {
  const cluster = new Cluster(NODES, [11, 12, 13, 14]);
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-policy-net-'));
  const files = new Map<string, string>();
  const lives = new Map<string, LiveMapping>();
  const servers: { close(): void }[] = [];

  before(async () => {
    files.set(A, join(dir, 'a.yaml'));
    files.set(B, join(dir, 'b.json'));
    files.set(C, join(dir, 'c.json'));
    writeFileSync(files.get(A)!, YAML_A);
    writeFileSync(files.get(B)!, jsonB(true));
    writeFileSync(files.get(C)!, jsonB(false)); // C lacks the Patient.address rule for R
    for (const name of NODES) {
      const peers = NODES.filter((n) => n !== name).map((nodeId) => ({ nodeId, ...(nodeId === R ? { withheldLabels: ['R'] } : {}) }));
      if (name === R) {
        await cluster.start(name); // a node that advertises nothing: the old message format
        continue;
      }
      const live = new LiveMapping(loadMappingOrThrow(files.get(name)!, { peers: peers.map((p) => p.nodeId) }), { peers: peers.map((p) => p.nodeId) });
      lives.set(name, live);
      await cluster.start(name, { policyDigests: policyDigestSource(peers, live) });
    }
  });
  after(async () => {
    for (const s of servers) s.close();
    await cluster.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  const round = async (names = NODES): Promise<void> => {
    for (const n of names) await cluster.node(n).tide.runAntiEntropy();
    await cluster.quiesce();
  };
  const policyAt = (node: string, peer: string) => {
    const p = cluster.node(node).tide.peers().find((s) => s.nodeId === peer);
    assert.ok(p);
    return p.policy;
  };

  test('a node lacking a redaction rule for R is flagged at both others; agreeing nodes agree', async () => {
    await round();
    for (const [node, other] of [
      [A, B],
      [B, A],
    ] as const) {
      const r = policyAt(node, R);
      assert.equal(r.agrees, false, `${node} sees the disagreement about ${R}`);
      assert.deepEqual(r.with, [C]);
      assert.deepEqual(r.agreeing, [other]);
      assert.deepEqual(policyAt(node, C).disagreesOn, [R]);
      assert.deepEqual(policyAt(node, other).disagreesOn, []);
      // rules about the other hospitals are the same everywhere (no routes)
      assert.equal(policyAt(node, other).agrees, true);
    }
    assert.deepEqual(policyAt(C, R).with, [A, B]);
    // warning: node ids and digest prefixes only
    const warnings = cluster.logs.filter((l) => l.level === 'warn' && String(l.msg).includes('policy digests differ'));
    for (const node of [A, B]) assert.ok(warnings.some((w) => w.obj['node'] === node && w.obj['peer'] === C && JSON.stringify(w.obj['disagreesOn']) === JSON.stringify([R])), `warning at ${node}`);
    for (const w of warnings) {
      assert.ok(!JSON.stringify(w).includes(PATIENT_NAME));
      for (const d of [...(w.obj['mine'] as string[]), ...(w.obj['theirs'] as string[])]) assert.match(d, /^[0-9a-f]{12}$/);
    }
    // a second round does not repeat the warning (rate-limited)
    const before = warnings.length;
    await round();
    assert.equal(cluster.logs.filter((l) => l.level === 'warn' && String(l.msg).includes('policy digests differ')).length, before);
    // metric
    const text = await tideMetricsRegistry(cluster.node(A).tide, A).metrics();
    assert.match(text, new RegExp(`tidegate_tide_peer_policy_disagreements\\{peer="${R}",node="${A}"\\} 1`));
    assert.match(text, new RegExp(`tidegate_tide_peer_policy_disagreements\\{peer="${B}",node="${A}"\\} 0`));
    // GET /admin/peers
    const server = express().use(opsRouter({ tide: cluster.node(B).tide, nodeId: B })).listen(0);
    servers.push(server);
    await new Promise((ok) => server.once('listening', ok));
    const res = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/admin/peers`);
    const body = (await res.json()) as { peers: { nodeId: string; policy: { agrees: boolean; with: string[]; reportedAt?: string } }[] };
    const r = body.peers.find((p) => p.nodeId === R);
    assert.equal(r?.policy.agrees, false);
    assert.deepEqual(r?.policy.with, [C]);
    assert.match(body.peers.find((p) => p.nodeId === C)?.policy.reportedAt ?? '', /^\d{4}-\d\d-\d\dT/);
  });

  test('a node that advertises no digests (old format) is accepted and shown as unknown; it is probed once only', async () => {
    const tideA = cluster.node(A).tide;
    assert.deepEqual(tideA.stats().rejected, {});
    assert.deepEqual(tideA.stats().quarantined, {});
    const r = policyAt(A, R);
    assert.equal(r.reportedAt, undefined);
    assert.ok(tideA.peers().find((p) => p.nodeId === R)!.messagesReceived > 0, 'R\u2019s anti-entropy messages were processed');
    assert.deepEqual(policyAt(A, C).with.includes(R) || policyAt(A, B).with.includes(R), false);
    // two rounds of A so far: R (never advertised) got one ae-policy, B (capable) one per round
    const count = async (to: string): Promise<number> => {
      const jobs = await cluster.inbox(to).getJobs(['completed', 'waiting', 'active', 'failed']);
      return jobs.filter((j) => j.name === 'ae-policy' && peekHeader(j.data.env as string).sender === A).length;
    };
    assert.equal(await count(R), 1);
    assert.equal(await count(B), 2);
  });

  test('fixing the file and reloading clears the disagreement everywhere', async () => {
    writeFileSync(files.get(C)!, jsonB(true));
    lives.get(C)!.reload();
    // C's own view changes at once (its digest is recomputed by the reload)
    assert.equal(policyAt(C, R).agrees, true);
    await round([C]);
    await waitFor('A and B see C agree', () => policyAt(A, R).agrees === true && policyAt(B, R).agrees === true);
    for (const node of [A, B]) {
      assert.deepEqual(policyAt(node, R).with, []);
      assert.deepEqual(policyAt(node, C).disagreesOn, []);
    }
    const text = await tideMetricsRegistry(cluster.node(B).tide, B).metrics();
    assert.match(text, new RegExp(`tidegate_tide_peer_policy_disagreements\\{peer="${R}",node="${B}"\\} 0`));
  });
});

describe('fail-closed policy agreement (policyEnforcement, real Redis)', () => {
  // R is not started: its inbox only collects what the hospitals send it
  const cluster = new Cluster(NODES, [11, 12, 13, 14]);
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-policy-enf-'));
  const files = new Map<string, string>([
    [A, join(dir, 'a.json')],
    [B, join(dir, 'b.json')],
    [C, join(dir, 'c.json')],
  ]);
  const lives = new Map<string, LiveMapping>();
  const HOSPITALS = [A, B, C];
  // R's only rules: redaction of Patient elements; every type is sensitive (any resource may nest a Patient)
  const rules = (withAddressRule: boolean): string => JSON.stringify({ routes: { [R]: { redact: [{ path: 'Patient.telecom' }, ...(withAddressRule ? [{ path: 'Patient.address', action: 'mask' }] : [])] } } });

  before(async () => {
    writeFileSync(files.get(A)!, rules(true));
    writeFileSync(files.get(B)!, rules(true));
    writeFileSync(files.get(C)!, rules(false));
    for (const name of HOSPITALS) {
      const peers = NODES.filter((n) => n !== name).map((nodeId) => ({ nodeId }));
      const live = new LiveMapping(loadMappingOrThrow(files.get(name)!, { peers: peers.map((p) => p.nodeId) }), { peers: peers.map((p) => p.nodeId) });
      lives.set(name, live);
      await cluster.start(name, { policyDigests: policyDigestSource(peers, live), policyEnforcement: sensitiveTypesSource(peers, live) });
    }
  });
  after(async () => {
    await cluster.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  const round = async (): Promise<void> => {
    for (const n of HOSPITALS) await cluster.node(n).tide.runAntiEntropy();
    await cluster.quiesce();
  };
  /** Resource keys named in the (cleartext, signed) headers of every envelope that reached `to`'s inbox. */
  const keysReceived = async (to: string): Promise<Set<string>> => {
    const jobs = await cluster.inbox(to).getJobs(['completed', 'waiting', 'active', 'failed', 'delayed']);
    return new Set(jobs.flatMap((j) => peekHeader(j.data.env as string).resources as string[]));
  };

  test('sensitive types: per peer, from its rules', () => {
    const m = readPolicyRules(files.get(A)!);
    assert.equal(sensitiveTypes(m, { nodeId: R }), '*', 'redact rules: any type may nest a Patient');
    assert.deepEqual([...(sensitiveTypes(m, { nodeId: B }) as Set<string>)], []);
    assert.equal(sensitiveTypes(m, { nodeId: R, withheldLabels: ['R'] }), '*');
    const other = (name: string, value: unknown): ReturnType<typeof readPolicyRules> => {
      writeFileSync(join(dir, name), JSON.stringify(value));
      return readPolicyRules(join(dir, name));
    };
    assert.equal(sensitiveTypes(other('s1.json', { routes: { [R]: { send: [{ resourceType: 'Observation' }] } } }), { nodeId: R }), '*');
    assert.equal(sensitiveTypes(other('s2.json', { consent: { noConsent: 'deny' } }), { nodeId: R }), '*');
    assert.equal(sensitiveTypes(other('s3.json', { routes: { [R]: { withhold: [{ where: 'true' }] } } }), { nodeId: R }), '*');
    assert.equal(sensitiveTypes(other('s4.json', { routes: { [R]: { withhold: [{ resourceType: ['Condition', 'Observation'] }] } } }), { nodeId: R }), '*', 'a resource of any type may nest a withheld Condition');
    assert.deepEqual([...(sensitiveTypes(other('s5.json', { routes: { [R]: { description: 'no rules' } } }), { nodeId: R }) as Set<string>)], []);
  });

  test('a sensitive type goes only to peers that advertised the same rules for R; fixing C releases it', async () => {
    const a = cluster.node(A);
    // before any digest is known: both go to nobody but R
    a.tide.publish([a.replica.set('Patient/p1', { name: PATIENT_NAME }), a.replica.set('Observation/o1', { value: '42' })]);
    await a.tide.flush();
    await cluster.quiesce();
    for (const n of [B, C]) {
      assert.equal(cluster.node(n).replica.json('Observation/o1'), undefined, `${n} has not advertised its digests yet`);
      assert.equal(cluster.node(n).replica.json('Patient/p1'), undefined, `${n} has not advertised its digests yet`);
    }
    assert.ok((await keysReceived(R)).has('Patient/p1'), 'R itself gets it (its own rules are applied to it)');
    assert.ok(a.tide.stats().updatesWithheld > 0);
    // digests exchanged, then anti-entropy repairs: B (agrees) gets it, C (disagrees) does not, from A nor by relay from B
    await round();
    await round();
    await waitFor('B gets Patient/p1', () => cluster.node(B).replica.json('Patient/p1') !== undefined);
    await waitFor('B gets Observation/o1', () => cluster.node(B).replica.json('Observation/o1') !== undefined);
    await round();
    assert.equal(cluster.node(C).replica.json('Patient/p1'), undefined);
    assert.equal(cluster.node(C).replica.json('Observation/o1'), undefined);
    assert.ok(!(await keysReceived(C)).has('Patient/p1'), 'Patient/p1 never reached C\u2019s Redis');
    assert.deepEqual(a.tide.peers().find((p) => p.nodeId === R)?.policy.with, [C]);
    // C fixes its file and reloads: after its next round, anti-entropy brings it the resource
    writeFileSync(files.get(C)!, rules(true));
    lives.get(C)!.reload();
    for (let i = 0; i < 5 && cluster.node(C).replica.json('Patient/p1') === undefined; i++) await round();
    assert.deepEqual(cluster.node(C).replica.json('Patient/p1'), { name: PATIENT_NAME });
    for (let i = 0; i < 5 && cluster.node(C).replica.json('Observation/o1') === undefined; i++) await round();
    assert.deepEqual(cluster.node(C).replica.json('Observation/o1'), { value: '42' });
  });
});

describe('policyAgreement: enforce in the mapping file (tidegate nodes)', () => {
  let fx: MappedNodes | undefined;
  const redact = { routes: { [R]: { redact: [{ path: 'Patient.telecom' }] } } };

  before(async () => {
    // A enforces; B has no rules for R, so it disagrees with A about R
    fx = await startMappedNodes({ prefix: 'tg-policy-enf', names: [A, B], remotePeers: [R], hospitals: false, mappings: { [A]: { ...redact, policyAgreement: 'enforce' }, [B]: {} } });
  });
  after(() => fx?.stop());

  test('an unknown policyAgreement value is refused with its place', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tidegate-policy-bad-'));
    try {
      writeFileSync(join(dir, 'm.json'), JSON.stringify({ policyAgreement: 'sometimes' }));
      assert.throws(() => loadMappingOrThrow(join(dir, 'm.json'), { peers: [R] }), /policyAgreement/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the enforcing node holds back what it writes from a node that disagrees; a warn-only node would send it', async () => {
    const res = await fetch(`${fx!.urls[0]}/fhir/Observation/enf-o1`, { method: 'PUT', headers: { 'Content-Type': 'application/fhir+json' }, body: JSON.stringify({ resourceType: 'Observation', id: 'enf-o1', status: 'final', code: { text: 'x' } }) });
    assert.equal(res.status, 201);
    await fx!.settle({ antiEntropyRounds: 2 });
    assert.equal(fx!.node(B).replica.current('Observation/enf-o1'), undefined, 'B advertised another digest for R: nothing of it reaches B');
    assert.ok(fx!.node(A).tide.stats().updatesWithheld > 0);
    assert.equal((await (await fetch(`${fx!.urls[0]}/admin/peers`)).json() as { peers: { nodeId: string; policy: { with: string[] } }[] }).peers.find((p) => p.nodeId === R)?.policy.with.join(), B);
  });
});

describe('policy agreement between tidegate nodes (GET /admin/peers, POST /admin/reload)', () => {
  let fx: MappedNodes | undefined;
  const redactFor = (withAddressRule: boolean): object => ({ routes: { [R]: { redact: [{ path: 'Patient.telecom' }, ...(withAddressRule ? [{ path: 'Patient.address', action: 'mask' }] : [])] } } });

  before(async () => {
    fx = await startMappedNodes({ prefix: 'tg-policy', names: [A, B, C], remotePeers: [R], hospitals: false, mappings: { [A]: redactFor(true), [B]: redactFor(true), [C]: redactFor(false) } });
  });
  after(() => fx?.stop());

  type Peers = { peers: { nodeId: string; policy: { agrees?: boolean; with: string[]; disagreesOn: string[] } }[] };
  const policyOf = async (node: string, peer: string) => {
    const body = (await (await fetch(`${fx!.urls[[A, B, C].indexOf(node)]}/admin/peers`)).json()) as Peers;
    return body.peers.find((p) => p.nodeId === peer)?.policy;
  };

  test('the node wiring advertises digests; C is flagged at A and B; fixing its file and POST /admin/reload clears it', async () => {
    await fx!.settle({ antiEntropyRounds: 1 });
    for (const node of [A, B]) {
      assert.deepEqual((await policyOf(node, R))?.with, [C], `${node} flags C`);
      assert.deepEqual((await policyOf(node, C))?.disagreesOn, [R]);
    }
    writeFileSync(join(fx!.dir, `${C}.mapping.json`), JSON.stringify(redactFor(true)));
    const res = await fetch(`${fx!.urls[2]}/admin/reload`, { method: 'POST' });
    assert.equal(res.status, 200);
    assert.equal((await policyOf(C, R))?.agrees, true, 'C\u2019s digest recomputed by the reload');
    await fx!.settle({ antiEntropyRounds: 1, which: [fx!.node(C)] });
    await waitFor('A and B see agreement', async () => (await policyOf(A, R))?.agrees === true && (await policyOf(B, R))?.agrees === true);
    assert.deepEqual((await policyOf(A, C))?.disagreesOn, []);
  });
});
