/**
 * A secret key file that group or others may read (README "Keys": 0600) is refused by `serve` and
 * reported by `config check` (file path, mode, the chmod fix); 0600 and 0400 pass. POSIX only.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { createKeyStore, writeKeyStoreFiles } from '../src/envelope/index.ts';
import { KeyFileError } from '../src/envelope/errors.ts';
import { assertSecretKeyFileMode, secretKeyFileModeProblem } from '../src/envelope/keys.ts';
import { runConfigCheck } from '../src/mapping/check.ts';
import { serve } from '../src/cli/serve.ts';

const POSIX = process.platform !== 'win32';
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const run = promisify(execFile);
let dir: string;
let secret: string;
let config: string;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'tidegate-key-mode-'));
  mkdirSync(join(dir, 'keys'));
  ({ secretPath: secret } = await writeKeyStoreFiles(join(dir, 'keys'), createKeyStore('mode-a')));
  await writeKeyStoreFiles(join(dir, 'keys'), createKeyStore('mode-b'));
  config = join(dir, 'node.json');
  writeFileSync(
    config,
    `${JSON.stringify(
      {
        nodeId: 'mode-a',
        listen: { host: '127.0.0.1', port: 0 },
        hospitalFhirUrl: 'http://127.0.0.1:1/fhir',
        redisUrl: 'redis://127.0.0.1:1',
        secretKeyFile: 'keys/mode-a.secret.json',
        peers: [{ nodeId: 'mode-b', redisUrl: 'redis://127.0.0.1:1', publicKeyFile: 'keys/mode-b.public.json' }],
        storeFile: ':memory:',
      },
      null,
      2,
    )}\n`,
  );
});
after(() => rmSync(dir, { recursive: true, force: true }));

const modeIssues = () => runConfigCheck(config).issues.filter((i) => i.pointer === '/secretKeyFile' && /readable by group or others/.test(i.message));

describe('secret key file mode', { skip: POSIX ? false : 'no POSIX file modes on this platform' }, () => {
  for (const mode of [0o644, 0o640, 0o604]) {
    test(`mode ${mode.toString(8)}: config check reports it with the chmod fix, serve refuses`, async () => {
      chmodSync(secret, mode);
      try {
        const issues = modeIssues();
        assert.equal(issues.length, 1, JSON.stringify(runConfigCheck(config).issues));
        assert.equal(issues[0]!.severity, 'error');
        assert.ok(issues[0]!.message.includes(secret), 'names the file');
        assert.ok(issues[0]!.message.includes(`mode 0${mode.toString(8)}`), issues[0]!.message);
        assert.match(issues[0]!.hint, /chmod 600/);
        assert.equal(runConfigCheck(config).ok, false);
        await assert.rejects(serve(config, { insecureDev: true }), (err: unknown) => {
          assert.ok(err instanceof KeyFileError, String(err));
          assert.match(err.message, /^secretKeyFile: secret key file .* is readable by group or others/);
          assert.ok(err.message.includes(`chmod 600 ${secret}`), err.message);
          return true;
        });
      } finally {
        chmodSync(secret, 0o600);
      }
    });
  }

  test('0600 and 0400 pass the mode check', () => {
    for (const mode of [0o600, 0o400]) {
      chmodSync(secret, mode);
      assert.equal(secretKeyFileModeProblem(secret), undefined);
      assert.doesNotThrow(() => assertSecretKeyFileMode(secret));
      assert.deepEqual(modeIssues(), []);
    }
    chmodSync(secret, 0o600);
    assert.equal(runConfigCheck(config).ok, true, JSON.stringify(runConfigCheck(config).issues));
  });

  test('the CLI `config check` prints the problem and exits 1', async () => {
    chmodSync(secret, 0o644);
    try {
      await assert.rejects(run(process.execPath, [join(ROOT, 'src/cli/main.ts'), 'config', 'check', '--config', config], { cwd: ROOT }), (err: { code?: number; stdout?: string }) => {
        assert.equal(err.code, 1);
        assert.match(String(err.stdout), /secretKeyFile: secret key file .*mode-a\.secret\.json is readable by group or others \(mode 0644\)/);
        assert.match(String(err.stdout), /chmod 600/);
        return true;
      });
    } finally {
      chmodSync(secret, 0o600);
    }
  });
});
