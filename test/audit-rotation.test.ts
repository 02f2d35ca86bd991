/**
 * Rotation of the audit trail (src/audit/segments.ts, src/audit/trail.ts): the live file is rotated
 * by size and by age into numbered segments that continue one hash chain; rotated segments are never
 * rewritten; `verify` walks the whole folder and detects a missing, reordered, truncated or edited
 * segment, accepts archived segments only with `--from`; a crash between the rotation steps loses
 * and duplicates nothing; `GET /fhir/AuditEvent` pages across segments newest first, stops at a page,
 * and skips segments outside a `date` range; segment names and the manifest carry no PHI.
 */
import { describe, test, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import express from 'express';
import request from 'supertest';
import { AuditTrail, auditEventRouter, auditRotationOf, chainOf, GENESIS_HASH, readManifest, restEvent, rotateLiveFile, sha256Hex, verifyTrail } from '../src/audit/index.ts';
import type { AuditEvent } from '../src/audit/index.ts';
import { loadNodeConfig } from '../src/config/config.ts';

const MAIN = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
const DAY = 86_400_000;

/** Event i, recorded on day `day` of January 2025 (second i). */
function ev(i: number, day = 1): AuditEvent {
  return restEvent({ nodeId: 'node-a', at: new Date(Date.UTC(2025, 0, day, 0, 0, i % 60)), interaction: 'read', status: 200, resourceType: 'Observation', id: `o${i}`, patient: `p${i % 3}`, caller: { clientId: 'ehr', subject: 'u1', jti: `j${i}` } });
}

const lines = (file: string): string[] => readFileSync(file, 'utf8').split('\n').filter((l) => l !== '');
const writeLines = (file: string, ls: string[]): void => writeFileSync(file, ls.map((l) => `${l}\n`).join(''));
const seqOf = (line: string): number => chainOf(JSON.parse(line))!.seq;

describe('audit trail rotation', () => {
  let dir: string;
  let data: string;
  let file: string;
  const seg = (n: number): string => join(data, `node-a.audit.jsonl.${String(n).padStart(6, '0')}`);
  const segments = (): string[] => readdirSync(data).filter((n) => /\.\d{6}$/.test(n)).sort();
  /** Every stored line, oldest segment first, live file last. */
  const allLines = (): string[] => [...segments().flatMap((n) => lines(join(data, n))), ...lines(file)];

  /** Writes events [from, from+n) with a small segment size; batches of 2. */
  async function writeTrail(n: number, from = 0, opts: { maxSegmentBytes?: number; day?: (i: number) => number } = {}): Promise<void> {
    const t = await AuditTrail.open(file, { nodeId: 'node-a', flushIntervalMs: 1, maxBatch: 2, maxSegmentBytes: opts.maxSegmentBytes ?? 6000 });
    for (let i = from; i < from + n; i++) {
      t.record(ev(i, opts.day?.(i) ?? 1));
      if (i % 2 === 1) await t.flush();
    }
    await t.close();
  }

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tidegate-audit-rot-'));
    data = join(dir, 'data');
    file = join(data, 'node-a.audit.jsonl');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  test('size rotation: numbered segments continue one chain; the manifest names each predecessor and its last hash; verify passes', async () => {
    await writeTrail(40);
    const names = segments();
    assert.ok(names.length >= 3, `expected several segments, got ${names.length}`);
    // Every event exactly once, in order, chained across segment boundaries.
    const all = allLines();
    assert.deepEqual(all.map(seqOf), Array.from({ length: 40 }, (_, i) => i + 1));
    let prev = GENESIS_HASH;
    for (const l of all) {
      assert.equal(chainOf(JSON.parse(l))!.previousHash, prev);
      prev = sha256Hex(l);
    }
    const m = (await readManifest(file))!;
    assert.deepEqual(m.segments.map((s) => s.name), names);
    m.segments.forEach((s, k) => {
      const ls = lines(join(data, s.name));
      assert.equal(s.previous, k === 0 ? null : names[k - 1]);
      assert.equal(s.previousHash, k === 0 ? GENESIS_HASH : m.segments[k - 1]!.lastHash);
      assert.equal(s.lastHash, sha256Hex(ls.at(-1)!));
      assert.deepEqual([s.firstSeq, s.lastSeq], [seqOf(ls[0]!), seqOf(ls.at(-1)!)]);
      // A batch is never split, and a segment only goes past the limit by a batch started in an empty file.
      assert.ok(s.bytes <= 6000, `segment ${s.name} holds ${s.bytes} bytes`);
    });
    const r = await verifyTrail(file);
    assert.equal(r.ok, true, JSON.stringify(r.problem));
    assert.equal(r.events, 40);
    assert.deepEqual(r.segments, [...names, 'node-a.audit.jsonl']);
    assert.deepEqual(r.warnings, []);
  });

  test('rotated segments are never rewritten; a restart continues the chain in the live file', async () => {
    await writeTrail(20);
    const before = new Map(segments().map((n) => [n, readFileSync(join(data, n), 'utf8')]));
    await writeTrail(20, 20);
    for (const [n, text] of before) assert.equal(readFileSync(join(data, n), 'utf8'), text, `${n} was rewritten`);
    assert.deepEqual(allLines().map(seqOf), Array.from({ length: 40 }, (_, i) => i + 1));
    assert.equal((await verifyTrail(file)).ok, true);
  });

  test('age rotation: a batch after maxSegmentAgeMs starts a new segment', async () => {
    let now = Date.UTC(2026, 0, 1);
    const t = await AuditTrail.open(file, { nodeId: 'node-a', flushIntervalMs: 1, maxSegmentAgeMs: DAY, now: () => new Date(now) });
    t.record(ev(0));
    t.record(ev(1));
    await t.flush();
    now += DAY - 1;
    t.record(ev(2));
    await t.flush();
    assert.deepEqual(segments(), [], 'not rotated before the age is reached');
    now += 1;
    t.record(ev(3));
    await t.flush();
    await t.close();
    assert.deepEqual(segments(), ['node-a.audit.jsonl.000001']);
    assert.deepEqual(lines(seg(1)).map(seqOf), [1, 2, 3]);
    assert.deepEqual(lines(file).map(seqOf), [4]);
    assert.equal((await verifyTrail(file)).ok, true);
  });

  test('two writers rotating one trail: every event once, one chain', async () => {
    const a = await AuditTrail.open(file, { nodeId: 'node-a', flushIntervalMs: 1, maxBatch: 3, maxSegmentBytes: 5000 });
    const b = await AuditTrail.open(file, { nodeId: 'node-a', flushIntervalMs: 1, maxBatch: 2, maxSegmentBytes: 5000 });
    for (let i = 0; i < 60; i++) {
      (i % 2 === 0 ? a : b).record(ev(i));
      if (i % 7 === 0) await Promise.all([a.flush(), b.flush()]);
    }
    await Promise.all([a.close(), b.close()]);
    assert.ok(segments().length >= 3);
    const all = allLines();
    assert.deepEqual(all.map(seqOf), Array.from({ length: 60 }, (_, i) => i + 1));
    assert.equal(new Set(all.map((l) => (JSON.parse(l) as AuditEvent).id)).size, 60);
    const r = await verifyTrail(file);
    assert.equal(r.ok, true, JSON.stringify(r.problem));
  });

  test('verify detects a missing, reordered, truncated or edited segment', async () => {
    await writeTrail(40);
    assert.ok(segments().length >= 4);
    const s2 = readFileSync(seg(2));
    const s3 = readFileSync(seg(3));
    const restore = () => {
      writeFileSync(seg(2), s2);
      writeFileSync(seg(3), s3);
    };
    // Missing (listed in the manifest).
    rmSync(seg(2));
    let r = await verifyTrail(file);
    assert.equal(r.problem?.kind, 'removed');
    assert.equal(r.problem?.segment, 'node-a.audit.jsonl.000002');
    restore();
    // Reordered: the contents of segments 2 and 3 swapped.
    writeFileSync(seg(2), s3);
    writeFileSync(seg(3), s2);
    r = await verifyTrail(file);
    assert.equal(r.problem?.kind, 'reordered');
    restore();
    // Truncated: the last event of segment 2 cut off.
    writeLines(seg(2), lines(seg(2)).slice(0, -1));
    r = await verifyTrail(file);
    assert.equal(r.problem?.kind, 'removed');
    assert.equal(r.problem?.seq, seqOf(s2.toString('utf8').trim().split('\n').at(-1)!));
    restore();
    // Edited: one value in the middle of segment 3.
    const ls = lines(seg(3));
    const target = ls[1]!;
    const id = (JSON.parse(target) as AuditEvent).id;
    writeLines(seg(3), ls.map((l, i) => (i === 1 ? l.replace(/"Observation\/o(\d+)"/, '"Observation/x$1"') : l)));
    r = await verifyTrail(file);
    assert.equal(r.problem?.kind, 'edited', `edit of ${id}`);
    assert.equal(r.problem?.seq, seqOf(target));
    assert.equal(r.problem?.segment, 'node-a.audit.jsonl.000003');
    restore();
    // Edited last event of a segment (only the next segment's chain and the manifest see it).
    const l2 = lines(seg(2));
    writeLines(seg(2), l2.map((l, i) => (i === l2.length - 1 ? l.replace(/"Observation\/o(\d+)"/, '"Observation/x$1"') : l)));
    r = await verifyTrail(file);
    assert.equal(r.problem?.kind, 'edited');
    restore();
    // Bytes appended to a rotated segment.
    writeFileSync(seg(2), Buffer.concat([s2, Buffer.from('{"x"')]));
    r = await verifyTrail(file);
    assert.equal(r.ok, false);
    restore();
    assert.equal((await verifyTrail(file)).ok, true);
  });

  test('archived segments: verify refuses without --from, accepts with it and says what it trusted', async () => {
    await writeTrail(40);
    const archive = join(dir, 'archive');
    mkdirSync(archive);
    renameSync(seg(1), join(archive, 'node-a.audit.jsonl.000001'));
    renameSync(seg(2), join(archive, 'node-a.audit.jsonl.000002'));
    let r = await verifyTrail(file);
    assert.equal(r.ok, false);
    assert.equal(r.problem?.kind, 'removed');
    assert.match(r.problem!.message, /--from/);
    r = await verifyTrail(file, { from: 'node-a.audit.jsonl.000003' });
    assert.equal(r.ok, true, JSON.stringify(r.problem));
    assert.match(r.warnings.join(' '), /started at segment node-a\.audit\.jsonl\.000003 \(2 earlier segment\(s\) not checked\): trusted its recorded previous hash [0-9a-f]{64}/);
    // The trusted start still has to chain: an edited first event of the starting segment is caught.
    const ls = lines(seg(3));
    writeLines(seg(3), [ls[0]!.replace(/"Observation\/o(\d+)"/, '"Observation/x$1"'), ...ls.slice(1)]);
    r = await verifyTrail(file, { from: 'node-a.audit.jsonl.000003' });
    assert.equal(r.problem?.kind, 'edited');
    writeLines(seg(3), ls);
    // A segment missing after the starting one is still a problem.
    renameSync(seg(4), join(archive, 'node-a.audit.jsonl.000004'));
    r = await verifyTrail(file, { from: 'node-a.audit.jsonl.000003' });
    assert.equal(r.problem?.kind, 'removed');
    renameSync(join(archive, 'node-a.audit.jsonl.000004'), seg(4));
    // The CLI prints the same, and exits 0.
    const out = spawnSync(process.execPath, [MAIN, 'audit', 'verify', '--file', file, '--from', 'node-a.audit.jsonl.000003'], { encoding: 'utf8', env: { ...process.env, REDIS_URL: '', PORT: '', LOG_LEVEL: '', STORE_URL: '' }, timeout: 120_000 });
    assert.equal(out.status, 0, out.stderr);
    assert.match(JSON.parse(out.stdout).warnings.join(' '), /trusted its recorded previous hash/);
    const bad = spawnSync(process.execPath, [MAIN, 'audit', 'verify', '--file', file, '--from', '../etc/passwd'], { encoding: 'utf8', env: { ...process.env, REDIS_URL: '', PORT: '', LOG_LEVEL: '', STORE_URL: '' }, timeout: 120_000 });
    assert.notEqual(bad.status, 0);
  });

  test('a crash between the rotation steps loses and duplicates nothing', async (t) => {
    for (const step of ['renamed', 'listed', 'created'] as const) {
      await t.test(`crash after the segment was ${step}`, async () => {
        rmSync(data, { recursive: true, force: true });
        await writeTrail(6, 0, { maxSegmentBytes: 1 << 20 });
        // The states a rotation leaves when the process dies after each step.
        if (step === 'renamed') renameSync(file, seg(1));
        else await rotateLiveFile(file);
        if (step === 'created') writeFileSync(file, '');
        const mid = await verifyTrail(file);
        assert.equal(mid.ok, true, JSON.stringify(mid.problem));
        assert.equal(mid.events, 6);
        await writeTrail(4, 6, { maxSegmentBytes: 1 << 20 });
        assert.deepEqual(allLines().map(seqOf), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert.deepEqual((await readManifest(file))!.segments.map((s) => [s.name, s.firstSeq, s.lastSeq]), [['node-a.audit.jsonl.000001', 1, 6]]);
        const r = await verifyTrail(file);
        assert.equal(r.ok, true, JSON.stringify(r.problem));
        assert.deepEqual(r.warnings, []);
        // No notice: nothing was removed or torn.
        assert.ok(allLines().every((l) => !(JSON.parse(l) as AuditEvent).subtype?.some((c) => c.code?.startsWith('trail-'))));
      });
    }
  });

  test('GET /fhir/AuditEvent: newest first across segments, stops at a page, skips segments outside a date range', async () => {
    // Days 1-4 of January 2025, 10 events each; each day's events end up in their own segments.
    await writeTrail(40, 0, { maxSegmentBytes: 5000, day: (i) => 1 + Math.floor(i / 10) });
    const m = (await readManifest(file))!;
    const app = express();
    const trail = await AuditTrail.open(file, { nodeId: 'node-a', maxSegmentBytes: 5000 });
    app.use('/fhir', auditEventRouter({ trail, open: true }));
    try {
      // All pages together are the whole trail, newest first.
      const seen: string[] = [];
      let url: string | undefined = '/fhir/AuditEvent?_count=7';
      while (url) {
        const page: { body: { entry?: Array<{ resource: AuditEvent }>; link: Array<{ relation: string; url: string }> } } = await request(app).get(url).expect(200);
        seen.push(...(page.body.entry ?? []).map((e) => e.resource.id));
        const next: string | undefined = page.body.link.find((l) => l.relation === 'next')?.url;
        url = next ? new URL(next).pathname + new URL(next).search : undefined;
      }
      const ids = allLines().map((l) => (JSON.parse(l) as AuditEvent).id).reverse();
      assert.deepEqual(seen, ids);
      // Segments entirely before day 4 made unreadable (a folder in place of the file): a first
      // page, and a date search for day 4, never open them.
      const old = m.segments.filter((s) => Date.parse(s.lastRecorded!) < Date.UTC(2025, 0, 4));
      assert.ok(old.length >= 2);
      for (const s of old) {
        rmSync(join(data, s.name));
        mkdirSync(join(data, s.name));
      }
      let res = await request(app).get('/fhir/AuditEvent?_count=3').expect(200);
      assert.equal(res.body.entry.length, 3);
      res = await request(app).get('/fhir/AuditEvent?date=2025-01-04&_count=100').expect(200);
      assert.equal(res.body.total, 10);
      assert.ok(res.body.entry.every((e: { resource: AuditEvent }) => e.resource.recorded.startsWith('2025-01-04')));
      // A search that needs the old segments does read them (and fails here, proving the skip above).
      await request(app).get('/fhir/AuditEvent?date=2025-01-01&_count=100').expect(500);
      // Archived (absent) segments are skipped, not an error.
      for (const s of old) rmSync(join(data, s.name), { recursive: true });
      res = await request(app).get('/fhir/AuditEvent?date=2025-01-01&_count=100').expect(200);
      assert.equal(res.body.total, 0);
    } finally {
      await trail.close();
    }
  });

  test('a reader that started before a rotation sees each event once', async () => {
    await writeTrail(10, 0, { maxSegmentBytes: 1 << 20 });
    const t = await AuditTrail.open(file, { nodeId: 'node-a', maxSegmentBytes: 100 });
    try {
      const reader = t.newestFirst();
      const first = await reader.next();
      assert.equal(first.value?.seq, 10);
      t.record(ev(10));
      await t.flush();
      assert.deepEqual(segments(), ['node-a.audit.jsonl.000001'], 'rotated while the reader holds the old live file');
      const seqs = [first.value!.seq];
      for await (const { seq } of { [Symbol.asyncIterator]: () => reader }) seqs.push(seq);
      assert.deepEqual(seqs, [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]);
    } finally {
      await t.close();
    }
  });

  test('no PHI in segment names or the manifest', async () => {
    await writeTrail(30);
    for (const n of segments()) assert.match(n, /^node-a\.audit\.jsonl\.\d{6}$/);
    const text = readFileSync(`${file}.segments`, 'utf8');
    const m = JSON.parse(text) as { format: string; segments: Array<Record<string, unknown>> };
    assert.equal(m.format, 'tidegate-audit-segments/1');
    for (const s of m.segments) assert.deepEqual(Object.keys(s).sort(), ['bytes', 'firstRecorded', 'firstSeq', 'lastHash', 'lastRecorded', 'lastSeq', 'name', 'previous', 'previousHash']);
    assert.doesNotMatch(text, /Patient|Observation|ehr|u1/);
  });

  test('config: the audit section sets the rotation; bad values are refused', () => {
    const base = { nodeId: 'node-a', hospitalFhirUrl: 'http://127.0.0.1:1/fhir', secretKeyFile: 'keys/node-a.secret.json', storeFile: ':memory:' };
    const env = { REDIS_URL: '', PORT: '', LOG_LEVEL: '', STORE_URL: '' };
    writeFileSync(join(dir, 'node.json'), JSON.stringify({ ...base, audit: { maxSegmentBytes: 1048576, maxSegmentAgeHours: 24 } }));
    assert.deepEqual(auditRotationOf(loadNodeConfig(join(dir, 'node.json'), env).audit), { maxSegmentBytes: 1048576, maxSegmentAgeMs: DAY });
    writeFileSync(join(dir, 'node.json'), JSON.stringify(base));
    assert.deepEqual(auditRotationOf(loadNodeConfig(join(dir, 'node.json'), env).audit), {});
    writeFileSync(join(dir, 'node.json'), JSON.stringify({ ...base, audit: { maxSegmentBytes: 10 } }));
    assert.throws(() => loadNodeConfig(join(dir, 'node.json'), env), /audit\.maxSegmentBytes/);
    writeFileSync(join(dir, 'node.json'), JSON.stringify({ ...base, audit: { rotate: true } }));
    assert.throws(() => loadNodeConfig(join(dir, 'node.json'), env), /audit/);
  });
});
