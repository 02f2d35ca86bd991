/**
 * A sealed store opened without its key vault, with another store's vault, or with a vault backup
 * older than the data file must refuse to open (src/store/vault.ts openBoundVault), instead of
 * starting empty with a new vault (every resource 404, new writes under version ids the peers hold
 * with other content). Crypto-shredded records still read as shredded.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { parseFhirJson } from '../src/fhir/json.ts';
import type { FhirJsonObject } from '../src/fhir/json.ts';
import { Replica } from '../src/merge/replica.ts';
import { loadMergePolicy } from '../src/merge/policy.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import { openConfiguredStore } from '../src/store/open.ts';
import { PgStore } from '../src/store/pg-store.ts';
import pg from 'pg';
import { KeyVaultError } from '../src/store/vault.ts';
import { createKeyStore, keyStoreToSecretKeys } from '../src/envelope/keys.ts';
import type { NodeSecretKeys } from '../src/envelope/keys.ts';

const POLICY = loadMergePolicy();
let root: string;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'tidegate-vault-missing-'));
});
after(() => {
  rmSync(root, { recursive: true, force: true });
});
let n = 0;
const dbPath = (): string => join(root, `s${n++}.sqlite`);

function patient(id: string, family: string): FhirJsonObject {
  return parseFhirJson(JSON.stringify({ resourceType: 'Patient', id, name: [{ family }] })) as FhirJsonObject;
}

/** A closed sealed store holding `count` patients. */
function populated(file: string, keys: NodeSecretKeys, count = 3, poolSize?: number): void {
  const store = new SqliteStore(file, { secretKeys: keys, compaction: 'manual', ...(poolSize !== undefined ? { vaultPoolSize: poolSize } : {}) });
  const replica = new Replica({ nodeId: 'node-v', store, policy: POLICY });
  for (let i = 0; i < count; i++) replica.write(`Patient/v${i}`, patient(`v${i}`, `Family${i}`));
  store.close();
}

function vaultError(code: string, ...patterns: RegExp[]) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof KeyVaultError, `a KeyVaultError, got ${String(err)}`);
    assert.equal(err.code, code);
    for (const p of patterns) assert.match(err.message, p);
    return true;
  };
}

describe('sealed SQLite store without its key vault', () => {
  it('refuses to open when the vault file is missing, creates no new vault, and opens again once it is restored', () => {
    const file = dbPath();
    const keys = keyStoreToSecretKeys(createKeyStore('node-v'));
    populated(file, keys);
    renameSync(`${file}.keys`, `${file}.keys.away`);
    assert.throws(
      () => new SqliteStore(file, { secretKeys: keys, compaction: 'manual' }),
      vaultError('ERR_VAULT_MISSING', new RegExp(`${file.replaceAll('.', '\\.')}\\.keys does not exist`), /Restore .*from the backup/, /move .* away as well/),
    );
    assert.ok(!existsSync(`${file}.keys`), 'no new empty vault was created');
    // The store file is still usable: nothing was changed by the refused open.
    renameSync(`${file}.keys.away`, `${file}.keys`);
    const again = new SqliteStore(file, { secretKeys: keys, compaction: 'manual' });
    assert.deepEqual([...again.keys()].sort(), ['Patient/v0', 'Patient/v1', 'Patient/v2']);
    assert.match(String(again.get('Patient/v1')!.versions.at(-1)!.body), /Family1/);
    again.close();
  });

  it('refuses through openConfiguredStore (what serve calls)', async () => {
    const file = dbPath();
    const keys = keyStoreToSecretKeys(createKeyStore('node-v'));
    populated(file, keys);
    rmSync(`${file}.keys`);
    await assert.rejects(openConfiguredStore({ storeFile: file }, {}, { secretKeys: keys }), vaultError('ERR_VAULT_MISSING'));
  });

  it('refuses another store’s vault (a copied or new vault file)', () => {
    const a = dbPath();
    const b = dbPath();
    const keys = keyStoreToSecretKeys(createKeyStore('node-v'));
    populated(a, keys);
    populated(b, keys, 1);
    copyFileSync(`${b}.keys`, `${a}.keys`);
    assert.throws(() => new SqliteStore(a, { secretKeys: keys, compaction: 'manual' }), vaultError('ERR_VAULT_MISMATCH', /is not the key vault of store/));
  });

  it('refuses a vault backup older than the data file (keys created after the backup)', () => {
    const file = dbPath();
    const keys = keyStoreToSecretKeys(createKeyStore('node-v'));
    populated(file, keys, 2, 2);
    copyFileSync(`${file}.keys`, join(root, 'vault-backup'));
    const store = new SqliteStore(file, { secretKeys: keys, compaction: 'manual', vaultPoolSize: 2 });
    const replica = new Replica({ nodeId: 'node-v', store, policy: POLICY });
    for (let i = 10; i < 14; i++) replica.write(`Patient/v${i}`, patient(`v${i}`, `Later${i}`));
    store.close();
    rmSync(`${file}.keys-wal`, { force: true });
    copyFileSync(join(root, 'vault-backup'), `${file}.keys`);
    assert.throws(() => new SqliteStore(file, { secretKeys: keys, compaction: 'manual' }), vaultError('ERR_VAULT_INCOMPLETE', /older than store/, /slots above 2/));
  });

  it('a store holding only shred tombstones still needs its vault (the tombstones are tags under its index key)', () => {
    const file = dbPath();
    const keys = keyStoreToSecretKeys(createKeyStore('node-v'));
    populated(file, keys, 1);
    const store = new SqliteStore(file, { secretKeys: keys, compaction: 'manual' });
    store.shred(['Patient/v0']);
    store.close();
    // Drop the recorded check too: a store written before it was recorded is judged by its rows.
    const db = new DatabaseSync(file);
    db.exec("DELETE FROM tidegate_meta WHERE name = 'vault_check'");
    db.close();
    rmSync(`${file}.keys`);
    assert.throws(() => new SqliteStore(file, { secretKeys: keys, compaction: 'manual' }), vaultError('ERR_VAULT_MISSING'));
  });

  it('a store written before the check was recorded opens with its vault and records it', () => {
    const file = dbPath();
    const keys = keyStoreToSecretKeys(createKeyStore('node-v'));
    populated(file, keys, 1);
    const db = new DatabaseSync(file);
    db.exec("DELETE FROM tidegate_meta WHERE name = 'vault_check'");
    db.close();
    const again = new SqliteStore(file, { secretKeys: keys, compaction: 'manual' });
    assert.deepEqual([...again.keys()], ['Patient/v0']);
    again.close();
    const check = new DatabaseSync(file);
    const row = check.prepare("SELECT value FROM tidegate_meta WHERE name = 'vault_check'").get() as { value: string } | undefined;
    check.close();
    assert.match(String(row?.value), /^[0-9a-f]{64}$/);
  });

  it('moving both files away (the documented deliberate reset) starts an empty store', () => {
    const file = dbPath();
    const keys = keyStoreToSecretKeys(createKeyStore('node-v'));
    populated(file, keys);
    for (const f of [file, `${file}-wal`, `${file}-shm`, `${file}.keys`, `${file}.keys-wal`, `${file}.keys-shm`]) if (existsSync(f)) renameSync(f, `${f}.old`);
    const fresh = new SqliteStore(file, { secretKeys: keys, compaction: 'manual' });
    assert.equal([...fresh.keys()].length, 0);
    fresh.close();
  });

  it('a restored data backup with today’s vault still reads a shredded resource as shredded, not as a missing vault', () => {
    const file = dbPath();
    const keys = keyStoreToSecretKeys(createKeyStore('node-v'));
    populated(file, keys, 2);
    const backup = join(root, 'data-backup.sqlite');
    const s0 = new SqliteStore(file, { secretKeys: keys, compaction: 'manual' });
    s0.close();
    copyFileSync(file, backup);
    const s1 = new SqliteStore(file, { secretKeys: keys, compaction: 'manual' });
    s1.shred(['Patient/v0']);
    s1.close();
    copyFileSync(`${file}.keys`, `${backup}.keys`);
    const restored = new SqliteStore(backup, { secretKeys: keys, compaction: 'manual' });
    assert.match(String(restored.get('Patient/v1')!.versions.at(-1)!.body), /Family1/);
    assert.throws(() => restored.get('Patient/v0')!.versions.at(-1)!.body, vaultError('ERR_CONTENT_KEY_DESTROYED'));
    restored.close();
  });
});

const PG_URL = process.env.TIDEGATE_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

describe('sealed PostgreSQL store without its key vault file', () => {
  const schemas: string[] = [];
  const schema = (): string => {
    const s = `tg_vault_missing_${process.pid}_${schemas.length}`;
    schemas.push(s);
    return s;
  };
  after(async () => {
    const admin = new pg.Client({ connectionString: PG_URL });
    await admin.connect();
    for (const s of schemas) await admin.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
    await admin.end();
  });

  async function pgPopulated(s: string, vaultFile: string, keys: NodeSecretKeys, from: number, count: number, poolSize = 256): Promise<void> {
    const store = await PgStore.open({ url: PG_URL, schema: s, compaction: 'manual', secretKeys: keys, keyVaultFile: vaultFile, vaultPoolSize: poolSize });
    const replica = new Replica({ nodeId: 'node-v', store, policy: POLICY });
    for (let i = from; i < from + count; i++) replica.write(`Patient/v${i}`, patient(`v${i}`, `Family${i}`));
    await store.close();
  }

  it('refuses a missing vault file, says it is missing, and leaves no new vault behind', async () => {
    const s = schema();
    const vaultFile = join(root, `${s}.keys`);
    const keys = keyStoreToSecretKeys(createKeyStore('node-v'));
    await pgPopulated(s, vaultFile, keys, 0, 2);
    renameSync(vaultFile, `${vaultFile}.away`);
    await assert.rejects(PgStore.open({ url: PG_URL, schema: s, compaction: 'manual', secretKeys: keys, keyVaultFile: vaultFile }), (err: Error) => {
      assert.equal((err as { code?: string }).code, 'ERR_STORE_FORMAT');
      assert.match(err.message, /not the key vault/);
      assert.match(err.message, /the file did not exist/);
      assert.match(err.message, /Restore .* from the backup/);
      return true;
    });
    assert.ok(!existsSync(vaultFile), 'the vault created by the refused open was removed');
    renameSync(`${vaultFile}.away`, vaultFile);
    const again = await PgStore.open({ url: PG_URL, schema: s, compaction: 'manual', secretKeys: keys, keyVaultFile: vaultFile });
    assert.deepEqual([...again.keys()].sort(), ['Patient/v0', 'Patient/v1']);
    await again.close();
  });

  it('refuses a vault backup older than the schema instead of reading the newer rows as shredded', async () => {
    const s = schema();
    const vaultFile = join(root, `${s}.keys`);
    const keys = keyStoreToSecretKeys(createKeyStore('node-v'));
    await pgPopulated(s, vaultFile, keys, 0, 2, 2);
    rmSync(`${vaultFile}-wal`, { force: true });
    copyFileSync(vaultFile, `${vaultFile}.backup`);
    await pgPopulated(s, vaultFile, keys, 10, 4, 2);
    rmSync(`${vaultFile}-wal`, { force: true });
    copyFileSync(`${vaultFile}.backup`, vaultFile);
    await assert.rejects(PgStore.open({ url: PG_URL, schema: s, compaction: 'manual', secretKeys: keys, keyVaultFile: vaultFile }), vaultError('ERR_VAULT_INCOMPLETE', /older than store PostgreSQL schema/));
  });
});
