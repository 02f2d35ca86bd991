/**
 * What a new-user trial of the CLI found (each a test that failed before its fix):
 * 1. `map preview --consent FILE RESOURCE` keeps RESOURCE (the option takes one file, repeatable);
 * 2. `config check` reads the key files: another node's secret key file, another node's public key
 *    file, a secret key file given as a peer's public key file are errors at the setting's
 *    line:column; `serve` names the setting and says "secret key file"; no key material printed;
 * 3. `map preview` validates its resource and each Consent as the node does on write;
 * 4. a failed `POST /admin/reload` is logged like a failed SIGHUP; `GET /admin/reload` is 405;
 * 5. `demo --data DIR` without `.ndjson` files fails before starting anything;
 * 6. clear messages: `hospital --port abc`, `keys generate` twice, a bad node id, `keys list` of a
 *    missing key file, a `hospitalFhirUrl` without its scheme;
 * 7. a YAML ` #` cutting a FHIRPath condition gets a "quote the whole condition" hint.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import express from 'express';
import pino from 'pino';
import { Registry } from 'prom-client';
import { createKeyStore, writeKeyStoreFiles } from '../src/envelope/index.ts';
import { loadMapping, MappingConfigError, runConfigCheck } from '../src/mapping/index.ts';
import { opsRouter } from '../src/ops/router.ts';
import type { Tide } from '../src/tide/index.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const EXAMPLES = join(ROOT, 'config/examples');
const run = promisify(execFile);

async function cli(args: string[], cwd: string, timeout = 60_000): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [join(ROOT, 'src/cli/main.ts'), ...args], { cwd, timeout });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** Key files of hospital-a, hospital-b and hospital-c (format 2) in one folder. */
const KEYS = mkdtempSync(join(tmpdir(), 'cli-polish-keys-'));
before(async () => {
  for (const node of ['hospital-a', 'hospital-b', 'hospital-c']) await writeKeyStoreFiles(KEYS, createKeyStore(node));
});
after(() => rmSync(KEYS, { recursive: true, force: true }));

/** A copy of config/examples with `keys/`, node-a.json edited by `edit`. */
function examplesCopy(edit: (cfg: any) => void = () => {}): string {
  const dir = mkdtempSync(join(tmpdir(), 'cli-polish-'));
  cpSync(EXAMPLES, dir, { recursive: true });
  cpSync(KEYS, join(dir, 'keys'), { recursive: true });
  const cfg = JSON.parse(readFileSync(join(dir, 'node-a.json'), 'utf8'));
  edit(cfg);
  writeFileSync(join(dir, 'node-a.json'), `${JSON.stringify(cfg, null, 2)}\n`);
  return dir;
}

/** 1-based line and column of the first occurrence of `needle` in `text`. */
function positionIn(text: string, needle: string): { line: number; column: number } {
  const lines = text.split('\n');
  for (const [i, l] of lines.entries()) if (l.includes(needle)) return { line: i + 1, column: l.indexOf(needle) + 1 };
  throw new Error(`${needle} not found`);
}

/** The secret values of a key file (its `priv` members): none may appear in any output. */
function secretsOf(file: string): string[] {
  const v = JSON.parse(readFileSync(file, 'utf8'));
  return (v.keys as { priv?: string }[]).map((k) => k.priv).filter((p): p is string => typeof p === 'string');
}

const CONSENT_BASE = {
  resourceType: 'Consent',
  status: 'active',
  scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
  category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }],
  patient: { reference: 'Patient/example' },
  policyRule: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'OPTIN' }] },
};

describe('map preview', () => {
  test('--consent FILE before the resource keeps the resource; --consent repeats', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cli-polish-consent-'));
    try {
      writeFileSync(join(dir, 'deny.json'), JSON.stringify({ ...CONSENT_BASE, id: 'c-deny', provision: { type: 'deny' } }));
      writeFileSync(join(dir, 'other.json'), JSON.stringify({ ...CONSENT_BASE, id: 'c-other', patient: { reference: 'Patient/someone-else' }, provision: { type: 'deny' } }));
      const obs = join(EXAMPLES, 'lab-observation.json');
      const cfg = join(EXAMPLES, 'node-a.json');
      const one = await cli(['map', 'preview', '--config', cfg, '--peer', 'hospital-b', '--consent', 'deny.json', obs], dir);
      assert.equal(one.code, 0, one.stderr);
      assert.match(one.stdout, /# WITHHELD from hospital-b: denied by Consent\/c-deny/);
      const two = await cli(['map', 'preview', '--config', cfg, '--peer', 'hospital-b', '--consent', 'other.json', '--consent', 'deny.json', obs], dir);
      assert.equal(two.code, 0, two.stderr);
      assert.match(two.stdout, /# WITHHELD from hospital-b: denied by Consent\/c-deny/);
      const none = await cli(['map', 'preview', '--config', cfg, '--peer', 'hospital-b', '--consent', 'other.json', obs], dir);
      assert.equal(none.code, 0, none.stderr);
      assert.match(none.stdout, /hospital-b receives it/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a Consent or a resource the node would refuse is reported (exit 1), not previewed', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cli-polish-invalid-'));
    try {
      const { status: _s, ...noStatus } = { ...CONSENT_BASE, id: 'c-nostatus', provision: { type: 'deny' } };
      writeFileSync(join(dir, 'nostatus.json'), JSON.stringify(noStatus));
      const { policyRule: _p, ...noPolicy } = { ...CONSENT_BASE, id: 'c-nopolicy', provision: { type: 'deny' } };
      writeFileSync(join(dir, 'nopolicy.json'), JSON.stringify(noPolicy));
      const obs = JSON.parse(readFileSync(join(EXAMPLES, 'lab-observation.json'), 'utf8'));
      writeFileSync(join(dir, 'typo.json'), JSON.stringify({ ...obs, resourceType: 'Observaton' }));
      const cfg = join(EXAMPLES, 'node-a.json');
      const obsFile = join(EXAMPLES, 'lab-observation.json');
      const a = await cli(['map', 'preview', '--config', cfg, '--peer', 'hospital-b', '--consent', 'nostatus.json', obsFile], dir);
      assert.equal(a.code, 1, a.stdout + a.stderr);
      assert.match(a.stdout + a.stderr, /nostatus\.json.*Consent\.status/s);
      assert.doesNotMatch(a.stdout, /receives it|WITHHELD/);
      const b = await cli(['map', 'preview', '--config', cfg, '--peer', 'hospital-b', '--consent', 'nopolicy.json', obsFile], dir);
      assert.equal(b.code, 1, b.stdout + b.stderr);
      assert.match(b.stdout + b.stderr, /nopolicy\.json.*ppc-1/s);
      const c = await cli(['map', 'preview', '--config', cfg, '--peer', 'hospital-b', 'typo.json'], dir);
      assert.equal(c.code, 1, c.stdout + c.stderr);
      assert.match(c.stdout + c.stderr, /typo\.json.*Observaton/s);
      assert.doesNotMatch(c.stdout, /receives it/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('key files in config check and serve', () => {
  test("another node's secret key file, another node's public key file, a secret file as a public one: errors at the setting", async () => {
    const cases: { edit: (c: any) => void; setting: string; needle: string; message: RegExp; hint: RegExp }[] = [
      { edit: (c) => (c.secretKeyFile = 'keys/hospital-b.secret.json'), setting: '/secretKeyFile', needle: '"secretKeyFile"', message: /secretKeyFile: .*hospital-b/, hint: /this is hospital-b's secret key file; give hospital-a's/ },
      { edit: (c) => (c.peers[0].publicKeyFile = 'keys/hospital-c.public.json'), setting: '/peers/0/publicKeyFile', needle: '"publicKeyFile"', message: /peers\.0\.publicKeyFile: .*hospital-c/, hint: /this is hospital-c's public key file; give hospital-b's/ },
      { edit: (c) => (c.peers[0].publicKeyFile = 'keys/hospital-b.secret.json'), setting: '/peers/0/publicKeyFile', needle: '"publicKeyFile"', message: /peers\.0\.publicKeyFile: .*secret key file/, hint: /this is a secret key file: give the peer's \.public\.json/ },
    ];
    for (const c of cases) {
      const dir = examplesCopy(c.edit);
      try {
        const report = runConfigCheck(join(dir, 'node-a.json'));
        const issue = report.issues.find((i) => i.pointer === c.setting);
        assert.ok(issue, `${c.setting}: ${JSON.stringify(report.issues)}`);
        assert.equal(issue.severity, 'error');
        assert.match(issue.message, c.message);
        assert.match(issue.hint, c.hint);
        const text = readFileSync(join(dir, 'node-a.json'), 'utf8');
        const { line } = positionIn(text, c.needle);
        assert.equal(issue.line, line);
        const out = await cli(['config', 'check', '--config', 'node-a.json'], dir);
        assert.equal(out.code, 1);
        for (const s of [...secretsOf(join(dir, 'keys/hospital-a.secret.json')), ...secretsOf(join(dir, 'keys/hospital-b.secret.json'))]) assert.ok(!out.stdout.includes(s) && !out.stderr.includes(s), 'no key material printed');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
    const good = examplesCopy();
    try {
      assert.deepEqual(runConfigCheck(join(good, 'node-a.json')).issues.filter((i) => /KeyFile/.test(i.pointer)), [], 'the right key files pass');
    } finally {
      rmSync(good, { recursive: true, force: true });
    }
  });

  test('serve: a secret key file given as a peer\u2019s public key file is named as such, with the setting', async () => {
    const dir = examplesCopy((c) => {
      c.peers[0].publicKeyFile = 'keys/hospital-b.secret.json';
      c.listen.port = 0;
    });
    try {
      const out = await cli(['serve', '--config', 'node-a.json', '--insecure-dev'], dir);
      assert.notEqual(out.code, 0);
      assert.match(out.stderr, /peers\[0\]\.publicKeyFile/);
      assert.match(out.stderr, /secret key file/);
      assert.doesNotMatch(out.stderr, /expected exactly the fields/);
      for (const s of secretsOf(join(dir, 'keys/hospital-b.secret.json'))) assert.ok(!out.stderr.includes(s), 'no key material printed');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('/admin/reload', () => {
  test('a failed POST is logged at error with file:line:column; GET is 405 with an OperationOutcome', async () => {
    const lines: Record<string, unknown>[] = [];
    const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
    const failure = new MappingConfigError([{ severity: 'error', file: 'hospital-a.mapping.json', line: 7, column: 18, pointer: '/routes/hospital-b/send/0/where', message: 'FHIRPath does not parse', hint: 'quote it' }]);
    const app = express();
    app.use(opsRouter({ tide: {} as Tide, nodeId: 'hospital-a', registry: new Registry(), reload: async () => { throw failure; }, log }));
    const server = app.listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    try {
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const post = await fetch(`${base}/admin/reload`, { method: 'POST' });
      assert.equal(post.status, 422);
      const logged = lines.find((l) => l['level'] === 50);
      assert.ok(logged, JSON.stringify(lines));
      assert.equal(logged['file'], 'hospital-a.mapping.json');
      assert.equal(logged['line'], 7);
      assert.equal(logged['column'], 18);
      assert.match(String(logged['msg']), /mapping NOT reloaded/);
      const get = await fetch(`${base}/admin/reload`);
      assert.equal(get.status, 405);
      assert.equal(get.headers.get('allow'), 'POST');
      const body = (await get.json()) as { resourceType: string; issue: { diagnostics: string }[] };
      assert.equal(body.resourceType, 'OperationOutcome');
      assert.match(body.issue[0]!.diagnostics, /POST/);
    } finally {
      server.close();
    }
  });
});

describe('demo', () => {
  test('--data DIR without .ndjson files fails before starting anything', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cli-polish-empty-'));
    try {
      writeFileSync(join(dir, 'README.txt'), 'no data here\n');
      const t0 = Date.now();
      const out = await cli(['demo', '--data', dir], ROOT);
      assert.notEqual(out.code, 0, out.stdout);
      assert.match(out.stderr, /no \.ndjson files found in /);
      assert.ok(out.stderr.includes(dir));
      assert.doesNotMatch(out.stdout + out.stderr, /CONVERGED|imported/);
      assert.ok(Date.now() - t0 < 20_000);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('messages', () => {
  test('shred of a dot-segment id and hospital resync of an unreachable node say what is wrong', async () => {
    const shred = await cli(['shred', 'Patient/..', '--config', 'unused.json', '--node-url', 'http://127.0.0.1:9'], ROOT);
    assert.notEqual(shred.code, 0);
    assert.match(shred.stderr, /dot segment/);
    const resync = await cli(['hospital', 'resync', '--config', 'unused.json', '--node-url', 'http://127.0.0.1:9'], ROOT);
    assert.notEqual(resync.code, 0);
    assert.match(resync.stderr, /Cannot reach the node at http:\/\/127\.0\.0\.1:9 .*is it running\?/);
  });

  test('hospital --port abc', async () => {
    const out = await cli(['hospital', '--port', 'abc'], ROOT);
    assert.notEqual(out.code, 0);
    assert.match(out.stderr, /--port.*must be an integer from 0 to 65535/);
    assert.doesNotMatch(out.stderr, /NaN/);
  });

  test('keys generate / list: existing file, bad node id, missing file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cli-polish-keys-'));
    try {
      const first = await cli(['keys', 'generate', '--node', 'hospital-q', '--out', dir], ROOT);
      assert.equal(first.code, 0, first.stderr);
      const again = await cli(['keys', 'generate', '--node', 'hospital-q', '--out', dir], ROOT);
      assert.notEqual(again.code, 0);
      assert.match(again.stderr, /key file .*hospital-q\.secret\.json already exists/);
      assert.match(again.stderr, /keys rotate/);
      assert.doesNotMatch(again.stderr, /^tidegate: EEXIST/, 'not the raw fs error');
      const bad = await cli(['keys', 'generate', '--node', 'bad node', '--out', dir], ROOT);
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr, /node id must be/);
      assert.doesNotMatch(bad.stderr, /createKeyStore/);
      const list = await cli(['keys', 'list', '--node', 'hospital-z', '--dir', dir], ROOT);
      assert.notEqual(list.code, 0);
      assert.match(list.stderr, /no secret key file for hospital-z/);
      assert.ok(list.stderr.includes(join(dir, 'hospital-z.secret.json')));
      assert.doesNotMatch(list.stderr, /^tidegate: ENOENT/, 'not the raw fs error');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('hospitalFhirUrl without http:// says so', () => {
    const dir = examplesCopy((c) => (c.hospitalFhirUrl = '127.0.0.1:18201/fhir'));
    try {
      const report = runConfigCheck(join(dir, 'node-a.json'));
      const issue = report.issues.find((i) => i.pointer === '/hospitalFhirUrl');
      assert.ok(issue, JSON.stringify(report.issues));
      assert.match(issue.message, /http:\/\/ or https:\/\//);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('YAML comment trap', () => {
  test("a ' #' cut from a FHIRPath condition gets the quote hint", () => {
    const dir = mkdtempSync(join(tmpdir(), 'cli-polish-yaml-'));
    try {
      mkdirSync(dir, { recursive: true });
      const file = join(dir, 'm.mapping.yaml');
      writeFileSync(file, "routes:\n  hospital-b:\n    send:\n      - resourceType: Observation\n        where: code.coding.where(code = 'A' #1).exists()\n");
      const issues = loadMapping(file, { peers: ['hospital-b'] }).issues;
      const i = issues.find((x) => x.pointer === '/routes/hospital-b/send/0/where');
      assert.ok(i, JSON.stringify(issues));
      assert.match(i.hint, /YAML took ' #1\)\.exists\(\)' as a comment: quote the whole condition/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('conditions naming elements that do not exist', () => {
  test('config check warns (not an error) at the condition; the examples get no such warning', () => {
    const dir = examplesCopy();
    try {
      const clean = runConfigCheck(join(dir, 'node-a.json'));
      assert.deepEqual(clean.issues.filter((i) => /does not exist/.test(i.message)), [], JSON.stringify(clean.issues));
      const file = join(dir, 'hospital-a.mapping.json');
      const m = JSON.parse(readFileSync(file, 'utf8'));
      m.routes['hospital-b'].send[1].where = "category.coding.where(code = laboratory).exists()";
      writeFileSync(file, `${JSON.stringify(m, null, 2)}\n`);
      const report = runConfigCheck(join(dir, 'node-a.json'));
      assert.equal(report.ok, true, 'a warning, not an error');
      const w = report.issues.find((i) => i.pointer === '/routes/hospital-b/send/1/where');
      assert.ok(w, JSON.stringify(report.issues));
      assert.equal(w.severity, 'warning');
      assert.match(w.message, /laboratory is not an element of Observation\.category\.coding: did you mean 'laboratory' \(a string\)\?/);
      assert.equal(w.line, positionIn(readFileSync(file, 'utf8'), 'code = laboratory').line);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
