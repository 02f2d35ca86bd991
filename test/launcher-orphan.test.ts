/**
 * `bin/tidegate.js` (and scripts/node.mjs) run the node in a child process. A supervisor that kills
 * the launcher with SIGKILL (which cannot be forwarded) must not leave the node running, holding
 * its port, its Redis inbox and its store: the child notices its parent is gone and shuts down as
 * on SIGTERM. Real `serve` in child processes, real Redis, a Medplum hospital over HTTP.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { createKeyStore, writeKeyStoreFiles } from '../src/envelope/keys.ts';
import { startMedplumHospital } from '../src/hospital/index.ts';
import type { MedplumHospital } from '../src/hospital/index.ts';
import { freePort, REDIS_BASE } from './fixtures/tide/harness.ts';
import { clearRedisPrefix } from './fixtures/redis.ts';

const ROOT = new URL('..', import.meta.url);

/** The pids of `pid`'s children (Linux /proc). */
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('a launcher killed with SIGKILL does not orphan the node', { timeout: 180_000, skip: process.platform !== 'linux' ? 'needs Linux /proc' : false }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'tidegate-orphan-'));
  const prefix = `tg-orphan-${randomBytes(4).toString('hex')}`;
  const redisUrl = `${REDIS_BASE}/0`;
  let hospital: MedplumHospital;
  let launcher: ChildProcess | undefined;
  const pids: number[] = [];

  before(async () => {
    hospital = await startMedplumHospital({ name: 'orphan-fhir' });
    await writeKeyStoreFiles(dir, createKeyStore('orphan-a'));
    await writeKeyStoreFiles(dir, createKeyStore('orphan-b'));
  });
  after(async () => {
    for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL');
    if (launcher?.exitCode === null) launcher.kill('SIGKILL');
    await hospital?.close();
    await clearRedisPrefix(redisUrl, prefix);
    rmSync(dir, { recursive: true, force: true });
  });

  test('kill -9 of bin/tidegate.js: the node process stops and frees its port', async () => {
    const port = await freePort();
    const cfg = join(dir, 'node.json');
    writeFileSync(cfg, JSON.stringify({
      nodeId: 'orphan-a',
      listen: { host: '127.0.0.1', port },
      hospitalFhirUrl: hospital.url,
      redisUrl,
      queuePrefix: prefix,
      secretKeyFile: join(dir, 'orphan-a.secret.json'),
      storeFile: ':memory:',
      peers: [{ nodeId: 'orphan-b', redisUrl, publicKeyFile: join(dir, 'orphan-b.public.json') }],
      antiEntropyIntervalMs: 0,
      hospitalPollIntervalMs: 0,
      auditFile: join(dir, 'audit.jsonl'),
    }));
    launcher = spawn(process.execPath, ['bin/tidegate.js', 'serve', '--config', cfg, '--insecure-dev'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    launcher.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    launcher.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const t0 = Date.now();
    while (!out.includes('tidegate node listening')) {
      if (launcher.exitCode !== null || Date.now() - t0 > 120_000) throw new Error(`serve did not start:\n${out.slice(-2000)}`);
      await sleep(100);
    }
    // the whole tree below the launcher: scripts/node.mjs, then the node itself
    const tree: number[] = [];
    for (let frontier = [launcher.pid!]; frontier.length > 0; ) {
      frontier = frontier.flatMap(childrenOf);
      tree.push(...frontier);
    }
    pids.push(...tree);
    assert.ok(tree.length >= 1, 'the launcher runs the node in a child process');
    assert.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200);

    launcher.kill('SIGKILL');
    const deadline = Date.now() + 30_000;
    while (tree.some(alive) && Date.now() < deadline) await sleep(200);
    const left = tree.filter(alive).map((pid) => `${pid}: ${execFileSync('ps', ['-o', 'args=', '-p', String(pid)], { encoding: 'utf8' }).trim()}`);
    assert.deepEqual(left, [], 'no process of the tree is left running');
    await assert.rejects(fetch(`http://127.0.0.1:${port}/healthz`), 'the port is free');
  });
});
