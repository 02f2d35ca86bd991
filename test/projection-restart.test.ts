/**
 * The restart cost of projection stores kept in memory is explicit (src/mapping/projection.ts
 * `logProjectionResend`, docs/mappings.md "Projection stores"): with a PostgreSQL (or memory) node
 * store, `tidegate serve` says once at start which redacted peers get every projected resource again
 * and why; with a SQLite store (projection stores at rest) it says nothing of the kind.
 *
 * `tidegate serve` in a child process on real PostgreSQL (a schema of its own), real Redis and a
 * Medplum hospital over HTTP; the log is read from its output.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { createKeyStore, writeKeyStoreFiles } from '../src/envelope/keys.ts';
import { startMedplumHospital } from '../src/hospital/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';
import { loadMappingOrThrow } from '../src/mapping/load.ts';
import { logProjectionResend } from '../src/mapping/projection.ts';
import { freePort, REDIS_BASE } from './fixtures/tide/harness.ts';
import { clearRedisPrefix } from './fixtures/redis.ts';

const PG_URL = process.env.TIDEGATE_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const RESEND = 'redacted peers get every projected resource again';

function writeJson(file: string, value: unknown): void {
  writeFileSync(file, `${JSON.stringify(value, null, 2)}\n`);
}

describe('logProjectionResend', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-projection-resend-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'm.mapping.json');
  writeJson(file, { routes: { research: { redact: [{ path: 'Patient.telecom' }, { path: 'Condition.note' }] }, partner: { send: [{ resourceType: 'Patient' }] } } });
  const mapping = loadMappingOrThrow(file, { peers: ['research', 'partner', 'other'] });
  const capture = (): { warn(o: object, m: string): void; lines: Array<[Record<string, unknown>, string]> } => {
    const lines: Array<[Record<string, unknown>, string]> = [];
    return { lines, warn: (o, m) => lines.push([o as Record<string, unknown>, m]) };
  };

  test('PostgreSQL or memory store: one warning naming the redacted peers, their types and the reason', () => {
    for (const kind of ['postgres', 'memory'] as const) {
      const log = capture();
      assert.deepEqual(logProjectionResend(log, kind, mapping), ['research']);
      assert.equal(log.lines.length, 1);
      const [fields, msg] = log.lines[0]!;
      assert.deepEqual(fields['peers'], ['research']);
      assert.deepEqual(fields['redactedTypes'], { research: ['Condition', 'Patient'] });
      assert.equal(fields['store'], kind);
      assert.match(String(fields['reason']), /in memory: a new epoch at every start/);
      assert.ok(msg.includes(RESEND), msg);
    }
  });

  test('SQLite store, no mapping, or no redacted peer: nothing', () => {
    const log = capture();
    assert.deepEqual(logProjectionResend(log, 'sqlite', mapping), []);
    assert.deepEqual(logProjectionResend(log, 'postgres', undefined), []);
    const plain = join(dir, 'plain.mapping.json');
    writeJson(plain, { routes: { partner: { send: [{ resourceType: 'Patient' }] } } });
    assert.deepEqual(logProjectionResend(log, 'postgres', loadMappingOrThrow(plain, { peers: ['partner'] })), []);
    assert.equal(log.lines.length, 0);
  });
});

describe('tidegate serve says the restart cost of in-memory projection stores', { timeout: 300_000 }, () => {
  const prefix = `projrestart-${randomBytes(4).toString('hex')}`;
  const schema = `tg_projrestart_${randomBytes(4).toString('hex')}`;
  const redisUrl = `${REDIS_BASE}/13`;
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-projection-restart-'));
  let hospital: MedplumHospital;
  const children: ChildProcess[] = [];

  before(async () => {
    await writeKeyStoreFiles(dir, createKeyStore('pr-a'));
    await writeKeyStoreFiles(dir, createKeyStore('pr-research'));
    writeJson(join(dir, 'pr.mapping.json'), { routes: { 'pr-research': { redact: [{ path: 'Patient.telecom' }] } } });
    hospital = await startMedplumHospital({ name: 'projection-restart' });
  });

  after(async () => {
    for (const c of children) {
      if (c.exitCode === null && c.signalCode === null) {
        c.kill('SIGTERM');
        await new Promise((r) => c.once('exit', r));
      }
    }
    await hospital?.close();
    await clearRedisPrefix(redisUrl, prefix);
    const admin = new pg.Client({ connectionString: PG_URL });
    await admin.connect();
    try {
      await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    } finally {
      await admin.end();
    }
    rmSync(dir, { recursive: true, force: true });
  });

  /** Starts `serve` with the given store settings, waits until it listens, stops it; returns its output. */
  const runServe = async (name: string, store: Record<string, unknown>): Promise<string> => {
    const cfgPath = join(dir, `${name}.json`);
    writeJson(cfgPath, {
      nodeId: 'pr-a',
      listen: { host: '127.0.0.1', port: await freePort() },
      hospitalFhirUrl: hospital.url,
      redisUrl,
      queuePrefix: prefix,
      secretKeyFile: join(dir, 'pr-a.secret.json'),
      ...store,
      peers: [{ nodeId: 'pr-research', redisUrl, publicKeyFile: join(dir, 'pr-research.public.json') }],
      antiEntropyIntervalMs: 0,
      hospitalPollIntervalMs: 0,
      logLevel: 'info',
      mappingFile: join(dir, 'pr.mapping.json'),
      auditFile: join(dir, `${name}.audit.jsonl`),
    });
    const child = spawn(process.execPath, ['src/cli/main.ts', 'serve', '--config', cfgPath, '--insecure-dev'], { cwd: new URL('..', import.meta.url), stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let text = '';
    child.stdout!.on('data', (d: Buffer) => (text += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (text += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const t0 = Date.now();
    while (!text.includes('tidegate node listening')) {
      if (child.exitCode !== null || Date.now() - t0 > 120_000) throw new Error(`serve did not start:\n${text.slice(-2000)}`);
      await sleep(50);
    }
    child.kill('SIGTERM');
    await exited;
    return text;
  };

  test('PostgreSQL store: one warning at start names the redacted peer; SQLite store: none', async () => {
    const pgOut = await runServe('pg', { storeUrl: PG_URL, storeSchema: schema, keyVaultFile: join(dir, 'pg.keys') });
    const lines = pgOut.split('\n').filter((l) => l.includes(RESEND));
    assert.equal(lines.length, 1, pgOut.slice(-2000));
    const entry = JSON.parse(lines[0]!) as Record<string, unknown>;
    assert.deepEqual(entry['peers'], ['pr-research']);
    assert.deepEqual(entry['redactedTypes'], { 'pr-research': ['Patient'] });
    assert.equal(entry['store'], 'postgres');
    assert.ok(!pgOut.includes('555-'), 'no resource content');

    const sqliteOut = await runServe('sqlite', { storeFile: join(dir, 'node.sqlite') });
    assert.ok(sqliteOut.includes('tidegate node listening'));
    assert.ok(!sqliteOut.includes(RESEND), 'projection stores at rest: no re-send warning');
  });
});
