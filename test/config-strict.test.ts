/**
 * Strict node configuration (src/config/config.ts) and the file checks of `tidegate config check`
 * (src/mapping/check.ts): a misspelt key is refused at every level, naming the key and the closest
 * known one; every config file in the repository still loads; a missing or unreadable key file,
 * mapping file, TLS or JWKS file, or an uncreatable store/audit location is reported at the config
 * key that names it; `serve` names the setting of a missing key file instead of a bare ENOENT.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { knownConfigKeys, loadNodeConfig, NodeConfigSchema, suggestConfigKey } from '../src/config/config.ts';
import { runConfigCheck } from '../src/mapping/check.ts';
import { generateNodeKeys, writeKeyFiles } from '../src/envelope/index.ts';
import { serve } from '../src/cli/serve.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const run = promisify(execFile);

/** A minimal valid config (every referenced file under `keys/`). */
const BASE = {
  nodeId: 'hospital-a',
  listen: { host: '127.0.0.1', port: 0 },
  hospitalFhirUrl: 'http://127.0.0.1:1/fhir',
  redisUrl: 'redis://127.0.0.1:1',
  secretKeyFile: 'keys/hospital-a.secret.json',
  peers: [{ nodeId: 'hospital-b', redisUrl: 'redis://127.0.0.1:1', publicKeyFile: 'keys/hospital-b.public.json' }],
  storeFile: ':memory:',
};

/** 1-based line of the first line of `text` containing `needle`. */
function lineOf(text: string, needle: string): number {
  const i = text.split('\n').findIndex((l) => l.includes(needle));
  assert.ok(i >= 0, `"${needle}" in the file`);
  return i + 1;
}

let dir: string;

/** Writes `cfg` pretty-printed (one member a line) as `name` in the temp dir; returns its path and text. */
function writeConfig(name: string, cfg: unknown): { path: string; text: string } {
  const path = join(dir, name);
  const text = `${JSON.stringify(cfg, null, 2)}\n`;
  writeFileSync(path, text);
  return { path, text };
}

/** The message thrown by loadNodeConfig for `cfg`. */
function loadError(cfg: unknown): string {
  const { path } = writeConfig('bad.json', cfg);
  try {
    loadNodeConfig(path, {});
  } catch (err) {
    return (err as Error).message;
  }
  assert.fail(`loadNodeConfig accepted ${JSON.stringify(cfg)}`);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'tidegate-config-strict-'));
  mkdirSync(join(dir, 'keys'));
  await writeKeyFiles(join(dir, 'keys'), generateNodeKeys('hospital-a'));
  await writeKeyFiles(join(dir, 'keys'), generateNodeKeys('hospital-b'));
});

after(() => rmSync(dir, { recursive: true, force: true }));

describe('config: unknown keys are refused at every level', () => {
  test('a misspelt top-level key names the key and the close known key', () => {
    const { listen, ...rest } = BASE;
    const msg = loadError({ ...rest, lsiten: listen });
    assert.match(msg, /lsiten: unknown key "lsiten" \(did you mean "listen"\?\)/);
    assert.match(loadError({ ...BASE, antiEntropyIntervallMs: 1000 }), /unknown key "antiEntropyIntervallMs" \(did you mean "antiEntropyIntervalMs"\?\)/);
  });

  test('nested objects: listen, peers[], http.rateLimit, security.*, tls, auth', () => {
    assert.match(loadError({ ...BASE, listen: { hots: '127.0.0.1' } }), /listen\.hots: unknown key "hots" \(did you mean "host"\?\)/);
    assert.match(loadError({ ...BASE, peers: [{ ...BASE.peers[0], publicKeyFlie: 'x' }] }), /peers\.0\.publicKeyFlie: unknown key "publicKeyFlie" \(did you mean "publicKeyFile"\?\)/);
    assert.match(loadError({ ...BASE, http: { rateLimit: { limt: 10 } } }), /http\.rateLimit\.limt: unknown key "limt" \(did you mean "limit"\?\)/);
    assert.match(loadError({ ...BASE, http: { maxBodyByte: 10 } }), /did you mean "maxBodyBytes"\?/);
    assert.match(loadError({ ...BASE, security: { authFailures: { treshold: 3 } } }), /security\.authFailures\.treshold: unknown key "treshold" \(did you mean "threshold"\?\)/);
    assert.match(loadError({ ...BASE, security: { cooldownMS: 3 } }), /did you mean "cooldownMs"\?/);
    assert.match(loadError({ ...BASE, tls: { certFile: 'c.pem', keyFile: 'k.pem', caFlie: 'ca.pem' } }), /tls\.caFlie: unknown key "caFlie" \(did you mean "caFile"\?\)/);
    assert.match(loadError({ ...BASE, auth: { issuer: 'https://as', audience: 'x', jwksFile: 'j.json', algorithm: ['ES256'] } }), /auth\.algorithm: unknown key "algorithm" \(did you mean "algorithms"\?\)/);
    assert.match(loadError({ ...BASE, redisTls: { caFile: 'ca.pem', certfile: 'c.pem' } }), /did you mean "certFile"\?/);
  });

  test('a key close to no known key is named without a suggestion', () => {
    const msg = loadError({ ...BASE, favouriteColour: 'blue' });
    assert.match(msg, /favouriteColour: unknown key "favouriteColour"/);
    assert.doesNotMatch(msg, /did you mean/);
  });

  test('suggestions: closest key within a small edit distance, case-insensitive', () => {
    assert.equal(suggestConfigKey('lsiten', knownConfigKeys([])), 'listen');
    assert.equal(suggestConfigKey('NODEID', knownConfigKeys([])), 'nodeId');
    assert.equal(suggestConfigKey('port', knownConfigKeys([])), undefined);
    assert.equal(suggestConfigKey('prot', knownConfigKeys(['listen'])), 'port');
    assert.deepEqual(knownConfigKeys(['peers', 0]).includes('publicKeyFile'), true);
    assert.deepEqual(knownConfigKeys(['security', 'webhook']), ['maxInFlight', 'timeoutMs', 'url']);
    assert.deepEqual(knownConfigKeys(['nosuch']), []);
  });

  test('every node config file in the repository still loads', () => {
    const files = ['config', 'config/examples']
      .flatMap((d) => readdirSync(join(ROOT, d)).map((n) => join(ROOT, d, n)))
      .filter((f) => f.endsWith('.json') && statSync(f).isFile())
      .filter((f) => {
        const v = JSON.parse(readFileSync(f, 'utf8')) as Record<string, unknown>;
        return typeof v.nodeId === 'string' && 'secretKeyFile' in v;
      });
    assert.ok(files.length >= 3, `found the node configs: ${files.join(', ')}`);
    for (const f of files) {
      const r = NodeConfigSchema.safeParse(JSON.parse(readFileSync(f, 'utf8')));
      assert.ok(r.success, `${f}: ${JSON.stringify(r.error?.issues)}`);
      assert.doesNotThrow(() => loadNodeConfig(f, {}), f);
    }
  });
});

describe('config check: unknown keys and referenced files', () => {
  test('an unknown key is reported at its file:line with the suggestion; the CLI prints it and exits 1', async () => {
    const { path, text } = writeConfig('typo.json', { ...BASE, antiEntropyIntervallMs: 1000, peers: [{ ...BASE.peers[0], resourcetypes: ['Patient'] }] });
    const report = runConfigCheck(path);
    assert.equal(report.ok, false);
    const top = report.issues.find((i) => i.pointer === '/antiEntropyIntervallMs');
    assert.ok(top, JSON.stringify(report.issues));
    assert.equal(top.line, lineOf(text, '"antiEntropyIntervallMs"'));
    assert.match(top.message, /unknown key "antiEntropyIntervallMs" \(did you mean "antiEntropyIntervalMs"\?\)/);
    const peer = report.issues.find((i) => i.pointer === '/peers/0/resourcetypes');
    assert.ok(peer);
    assert.equal(peer.line, lineOf(text, '"resourcetypes"'));
    assert.match(peer.message, /did you mean "resourceTypes"\?/);
    const cli = await run(process.execPath, [join(ROOT, 'src/cli/main.ts'), 'config', 'check', '--config', path], { cwd: dir }).then(
      () => ({ code: 0, stdout: '' }),
      (e: { code: number; stdout: string }) => e,
    );
    assert.equal(cli.code, 1);
    assert.match(cli.stdout, new RegExp(`typo\\.json:${top.line}:\\d+: error: unknown key "antiEntropyIntervallMs" \\(did you mean "antiEntropyIntervalMs"\\?\\)`));
  });

  test('a config whose files all exist passes', () => {
    const { path } = writeConfig('good.json', BASE);
    const report = runConfigCheck(path);
    assert.deepEqual(report.issues, []);
    assert.equal(report.ok, true);
  });

  test('missing key, mapping, TLS and JWKS files are reported at the key naming them, with a hint', () => {
    const cfg = {
      ...BASE,
      secretKeyFile: 'keys/nope.secret.json',
      peers: [{ ...BASE.peers[0], publicKeyFile: 'keys/hospital-c.public.json' }],
      mappingFile: 'missing.mapping.json',
      tls: { certFile: 'tls/cert.pem', keyFile: 'tls/key.pem' },
      auth: { issuer: 'https://as.example.org', audience: 'https://node-a.example.org/fhir', jwksFile: 'jwks.json' },
    };
    const { path, text } = writeConfig('missing.json', cfg);
    const report = runConfigCheck(path);
    assert.equal(report.ok, false);
    const at = (pointer: string) => {
      const found = report.issues.find((i) => i.pointer === pointer);
      assert.ok(found, `an issue at ${pointer}: ${JSON.stringify(report.issues)}`);
      assert.ok(found.file.endsWith('missing.json'));
      assert.ok(found.hint.length > 10);
      return found;
    };
    const secret = at('/secretKeyFile');
    assert.equal(secret.line, lineOf(text, '"secretKeyFile"'));
    assert.match(secret.message, /^secretKeyFile: cannot read .*nope\.secret\.json \(ENOENT\)/);
    assert.match(secret.hint, /keys generate/);
    const pub = at('/peers/0/publicKeyFile');
    assert.equal(pub.line, lineOf(text, 'hospital-c.public.json'));
    assert.match(pub.message, /^peers\.0\.publicKeyFile: cannot read .*hospital-c\.public\.json \(ENOENT\)/);
    assert.match(at('/mappingFile').message, /^mappingFile: cannot read .*missing\.mapping\.json \(ENOENT\)/);
    assert.match(at('/tls/certFile').message, /^tls\.certFile: cannot read/);
    assert.match(at('/tls/keyFile').message, /^tls\.keyFile: cannot read/);
    assert.match(at('/auth/jwksFile').message, /^auth\.jwksFile: cannot read .*jwks\.json/);
    assert.equal(report.errors, 6, JSON.stringify(report.issues.map((i) => i.message)));
  });

  test('a key path that is a folder, and a store/audit location under a regular file, are reported', () => {
    writeFileSync(join(dir, 'a-file'), 'x');
    const { path } = writeConfig('places.json', { ...BASE, secretKeyFile: 'keys', storeFile: 'a-file/store.sqlite', auditFile: 'a-file/sub/audit.jsonl' });
    const report = runConfigCheck(path);
    const msgs = report.issues.map((i) => i.message);
    assert.ok(msgs.some((m) => /^secretKeyFile: cannot read .* \(not a regular file\)/.test(m)), JSON.stringify(msgs));
    assert.ok(msgs.some((m) => /^storeFile: cannot create .*store\.sqlite \(.*a-file is not a directory\)/.test(m)), JSON.stringify(msgs));
    assert.ok(msgs.some((m) => /^auditFile: cannot create .*audit\.jsonl/.test(m)), JSON.stringify(msgs));
    assert.equal(report.errors, 3);
  });

  test('an unreadable secret key file is reported (EACCES)', { skip: process.getuid?.() === 0 ? 'root reads any file' : false }, () => {
    const locked = join(dir, 'keys', 'locked.secret.json');
    writeFileSync(locked, '{}', { mode: 0o000 });
    try {
      const { path } = writeConfig('locked.json', { ...BASE, secretKeyFile: 'keys/locked.secret.json' });
      const report = runConfigCheck(path);
      assert.ok(report.issues.some((i) => i.pointer === '/secretKeyFile' && /\(EACCES\)/.test(i.message)), JSON.stringify(report.issues));
    } finally {
      chmodSync(locked, 0o600);
    }
  });
});

describe('serve: a missing key file names the setting', () => {
  test('secretKeyFile', async () => {
    const { path } = writeConfig('serve-secret.json', { ...BASE, secretKeyFile: 'keys/absent.secret.json' });
    await assert.rejects(serve(path, { insecureDev: true }), (err: Error) => {
      assert.match(err.message, /^secretKeyFile: cannot read .*absent\.secret\.json \(ENOENT\)/);
      return true;
    });
  });

  test('a peer publicKeyFile', async () => {
    const { path } = writeConfig('serve-peer.json', { ...BASE, peers: [{ ...BASE.peers[0], publicKeyFile: 'keys/absent.public.json' }] });
    await assert.rejects(serve(path, { insecureDev: true }), (err: Error) => {
      assert.match(err.message, /^peers\[0\]\.publicKeyFile: cannot read .*absent\.public\.json \(ENOENT\)/);
      return true;
    });
  });
});
