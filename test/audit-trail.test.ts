/**
 * The audit trail file (src/audit/trail.ts) and `tidegate audit verify` (src/audit/verify.ts): an
 * intact chain passes, across restarts and with two writers; every one-byte edit, a removed event
 * (first, middle, last) and reordered events are detected, and a rewritten chain is caught by an
 * anchor kept elsewhere; a torn tail is cut off and noted.
 */
import { describe, test, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AuditTrail, canonicalJson, chainOf, restEvent, sha256Hex, verifyTrail, withChain, GENESIS_HASH } from '../src/audit/index.ts';
import type { AuditEvent } from '../src/audit/index.ts';

const MAIN = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));

function ev(i: number): AuditEvent {
  return restEvent({ nodeId: 'node-a', at: new Date(Date.UTC(2025, 0, 1, 0, 0, i)), interaction: 'read', status: 200, resourceType: 'Observation', id: `o${i}`, patient: `p${i % 3}`, caller: { clientId: 'ehr', subject: 'u1', jti: `j${i}` } });
}

async function writeTrail(file: string, n: number, from = 0): Promise<void> {
  const t = await AuditTrail.open(file, { nodeId: 'node-a', flushIntervalMs: 5, maxBatch: 4 });
  for (let i = from; i < from + n; i++) t.record(ev(i));
  await t.close();
}

const lines = (file: string): string[] => readFileSync(file, 'utf8').split('\n').filter((l) => l !== '');
const writeLines = (file: string, ls: string[]): void => writeFileSync(file, ls.map((l) => `${l}\n`).join(''));

describe('audit trail: chain, restart, verify', () => {
  let dir: string;
  let file: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tidegate-audit-'));
    file = join(dir, 'data', 'node-a.audit.jsonl');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  test('intact: each line is canonical, sequence 1..n, previousHash = SHA-256 of the previous line; verify passes', async () => {
    await writeTrail(file, 10);
    const ls = lines(file);
    assert.equal(ls.length, 10);
    let prev = GENESIS_HASH;
    ls.forEach((l, i) => {
      const e = JSON.parse(l) as AuditEvent;
      assert.equal(canonicalJson(e), l);
      assert.deepEqual(chainOf(e), { seq: i + 1, previousHash: prev });
      prev = sha256Hex(l);
    });
    const r = await verifyTrail(file);
    assert.equal(r.ok, true, JSON.stringify(r.problem));
    assert.deepEqual(r.head, { seq: 10, hash: prev });
    assert.deepEqual(r.warnings, []);
  });

  test('a restart continues the chain', async () => {
    await writeTrail(file, 5);
    const before = await verifyTrail(file);
    await writeTrail(file, 5, 5);
    const ls = lines(file);
    assert.equal(ls.length, 10);
    assert.deepEqual(chainOf(JSON.parse(ls[5]!)), { seq: 6, previousHash: before.head.hash });
    const r = await verifyTrail(file);
    assert.equal(r.ok, true, JSON.stringify(r.problem));
    assert.equal(r.head.seq, 10);
  });

  test('two writers (node and a CLI command) append to one chain under the lock', async () => {
    const a = await AuditTrail.open(file, { nodeId: 'node-a', flushIntervalMs: 1, maxBatch: 3 });
    const b = await AuditTrail.open(file, { nodeId: 'node-a', flushIntervalMs: 1, maxBatch: 2 });
    for (let i = 0; i < 40; i++) (i % 2 === 0 ? a : b).record(ev(i));
    await Promise.all([a.flush(), b.flush()]);
    await Promise.all([a.close(), b.close()]);
    const r = await verifyTrail(file);
    assert.equal(r.ok, true, JSON.stringify(r.problem));
    assert.equal(r.events, 40);
    assert.deepEqual(new Set(lines(file).map((l) => (JSON.parse(l) as AuditEvent).id)).size, 40);
  });

  test('a lock left by a dead process is taken over', async () => {
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
    await writeTrail(file, 1);
    const host = (await import('node:os')).hostname();
    writeFileSync(`${file}.lock`, `${dead} ${host}`);
    await writeTrail(file, 2, 1);
    assert.equal((await verifyTrail(file)).head.seq, 3);
  });

  test('every one-byte edit anywhere in the file is detected', async () => {
    await writeTrail(file, 8);
    const original = readFileSync(file);
    // Deterministic spread of offsets (first and last bytes included) and replacement bytes.
    const offsets = new Set<number>([0, original.length - 1, original.length - 2]);
    for (let k = 0; offsets.size < 120; k++) offsets.add((k * 7919 + 13) % original.length);
    for (const off of offsets) {
      const edited = Buffer.from(original);
      const old = edited[off]!;
      edited[off] = old === 0x61 ? 0x62 : old === 0x30 ? 0x31 : old === 0x0a ? 0x20 : 0x61;
      writeFileSync(file, edited);
      const r = await verifyTrail(file);
      assert.equal(r.ok, false, `edit at byte ${off} (${String.fromCharCode(old)}) went unseen`);
      assert.ok(['edited', 'unreadable', 'removed', 'reordered'].includes(r.problem!.kind));
    }
  });

  test('an edited value in the middle names that event; an edited last event is caught by the head file', async () => {
    await writeTrail(file, 6);
    const ls = lines(file);
    writeLines(file, ls.map((l, i) => (i === 2 ? l.replace('"Observation/o2"', '"Observation/o9"') : l)));
    let r = await verifyTrail(file);
    assert.equal(r.ok, false);
    assert.equal(r.problem!.kind, 'edited');
    assert.equal(r.problem!.seq, 3);
    writeLines(file, ls.map((l, i) => (i === 5 ? l.replace('"Observation/o5"', '"Observation/o7"') : l)));
    r = await verifyTrail(file);
    assert.equal(r.problem?.kind, 'edited');
    assert.equal(r.problem!.seq, 6);
  });

  test('a removed event is detected: first, middle and last', async () => {
    await writeTrail(file, 6);
    const ls = lines(file);
    for (const [drop, seq] of [[0, 1], [3, 4], [5, 6]] as const) {
      writeLines(file, ls.filter((_, i) => i !== drop));
      const r = await verifyTrail(file);
      assert.equal(r.ok, false, `removing line ${drop + 1} went unseen`);
      assert.equal(r.problem!.kind, 'removed');
      assert.equal(r.problem!.seq, seq);
    }
  });

  test('reordered events are detected', async () => {
    await writeTrail(file, 6);
    const ls = lines(file);
    const swapped = [...ls];
    [swapped[2], swapped[3]] = [swapped[3]!, swapped[2]!];
    writeLines(file, swapped);
    let r = await verifyTrail(file);
    assert.equal(r.problem?.kind, 'reordered');
    assert.equal(r.problem!.seq, 3);
    const moved = [ls[0]!, ls[2]!, ls[3]!, ls[4]!, ls[1]!, ls[5]!];
    writeLines(file, moved);
    r = await verifyTrail(file);
    assert.equal(r.problem?.kind, 'reordered');
  });

  test('a chain rewritten with fresh hashes (and head file) is caught by an anchor kept elsewhere', async () => {
    await writeTrail(file, 5);
    const anchor = (await verifyTrail(file)).head;
    // The attacker edits event 2 and recomputes every hash after it, and the head file.
    const ls = lines(file).map((l) => JSON.parse(l) as AuditEvent);
    ls[1]!.outcome = '4';
    let prev = GENESIS_HASH;
    const rewritten = ls.map((e, i) => {
      const line = canonicalJson(withChain(e, { seq: i + 1, previousHash: prev }));
      prev = sha256Hex(line);
      return line;
    });
    writeLines(file, rewritten);
    writeFileSync(`${file}.head`, JSON.stringify({ format: 'tidegate-audit-head/1', seq: '5', hash: prev, bytes: 0 }));
    assert.equal((await verifyTrail(file)).ok, true, 'without an anchor a full rewrite is consistent');
    const r = await verifyTrail(file, { expect: anchor });
    assert.equal(r.ok, false);
    assert.equal(r.problem!.kind, 'edited');
  });

  test('a torn last line is a warning; reopening cuts it off and records a notice', async () => {
    await writeTrail(file, 3);
    appendFileSync(file, '{"resourceType":"AuditEv');
    let r = await verifyTrail(file);
    assert.equal(r.ok, true);
    assert.match(r.warnings.join(' '), /interrupted write/);
    const t = await AuditTrail.open(file, { nodeId: 'node-a' });
    await t.close();
    r = await verifyTrail(file);
    assert.equal(r.ok, true, JSON.stringify(r.problem));
    assert.deepEqual(r.warnings, []);
    const last = JSON.parse(lines(file).at(-1)!) as AuditEvent;
    assert.equal(last.subtype?.[0]?.code, 'trail-torn-tail');
    assert.equal(r.head.seq, 4);
  });

  test('a trail cut short is noted when the writer reopens it (head file ahead)', async () => {
    await writeTrail(file, 4);
    writeLines(file, lines(file).slice(0, 3));
    assert.equal((await verifyTrail(file)).problem?.kind, 'removed');
    const t = await AuditTrail.open(file, { nodeId: 'node-a' });
    await t.close();
    const notice = JSON.parse(lines(file).at(-1)!) as AuditEvent;
    assert.equal(notice.subtype?.[0]?.code, 'trail-head-mismatch');
    assert.ok(notice.entity?.[0]?.detail?.some((d) => d.type === 'expectedSeq' && d.valueString === '4'));
  });

  test('tidegate keys generate/rotate --config record key events (key ids only) in the node trail', async () => {
    writeFileSync(join(dir, 'node.json'), JSON.stringify({ nodeId: 'node-a', hospitalFhirUrl: 'http://127.0.0.1:1/fhir', secretKeyFile: 'keys/node-a.secret.json', storeFile: ':memory:' }));
    const env = { ...process.env, REDIS_URL: '', PORT: '', LOG_LEVEL: '', STORE_URL: '' };
    const cli = (...args: string[]) => spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', env, timeout: 120_000 });
    let out = cli('keys', 'generate', '--node', 'node-a', '--out', join(dir, 'keys'), '--config', join(dir, 'node.json'));
    assert.equal(out.status, 0, out.stderr);
    out = cli('keys', 'rotate', '--node', 'node-a', '--dir', join(dir, 'keys'), '--config', join(dir, 'node.json'));
    assert.equal(out.status, 0, out.stderr);
    const events = lines(file).map((l) => JSON.parse(l) as AuditEvent);
    assert.deepEqual(events.map((e) => e.subtype?.map((c) => c.code)), [['110129', 'key-generate'], ['110129', 'key-rotate']]);
    const secret = JSON.parse(readFileSync(join(dir, 'keys', 'node-a.secret.json'), 'utf8')) as { keys: Array<{ kid: string; priv?: string }> };
    const text = readFileSync(file, 'utf8');
    for (const k of secret.keys) {
      assert.ok(text.includes(k.kid), 'key ids are recorded');
      if (k.priv) assert.ok(!text.includes(k.priv), 'key material is never recorded');
    }
    assert.equal((await verifyTrail(file)).ok, true);
  });

  test('tidegate audit verify --config: exit 0 intact, 1 with the problem as JSON', async () => {
    writeFileSync(join(dir, 'node.json'), JSON.stringify({ nodeId: 'node-a', hospitalFhirUrl: 'http://127.0.0.1:1/fhir', secretKeyFile: 'keys/node-a.secret.json', storeFile: ':memory:' }));
    await writeTrail(file, 4);
    const run = () => spawnSync(process.execPath, [MAIN, 'audit', 'verify', '--config', join(dir, 'node.json')], { encoding: 'utf8', env: { ...process.env, REDIS_URL: '', PORT: '', LOG_LEVEL: '', STORE_URL: '' }, timeout: 120_000 });
    let out = run();
    assert.equal(out.status, 0, out.stderr);
    assert.equal(JSON.parse(out.stdout).ok, true);
    writeLines(file, lines(file).filter((_, i) => i !== 1));
    out = run();
    assert.equal(out.status, 1, out.stderr);
    const rep = JSON.parse(out.stdout);
    assert.equal(rep.problem.kind, 'removed');
    assert.equal(rep.problem.seq, 2);
  });
});
