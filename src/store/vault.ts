/**
 * The key vault of a sealed store: the per-resource content keys, wrapped under a key-encryption
 * key (KEK) that only the node's X-Wing secret key recovers (src/store/seal.ts). It is a SQLite file
 * of its own (`<storeFile>.keys`), apart from the data file, so that
 *
 * - a backup of the data file holds no key: once a content key is destroyed here (crypto-shredding),
 *   no copy of the data file, old or new, decrypts that resource;
 * - destroying a key is a small write: its row is deleted with `secure_delete=ON` (SQLite zeroes the
 *   freed bytes, https://sqlite.org/pragma.html#pragma_secure_delete) and the write-ahead log is
 *   truncated (`wal_checkpoint(TRUNCATE)`), so the wrapped key leaves the files.
 *
 * Keys are held in **slots** (integers, never reused). A new resource takes a free slot; slots are
 * created in batches (`poolSize`, one fsync per batch), so creating a resource costs no vault write.
 * Which slots are in use is recorded by the data file (src/store/sqlite-store.ts), which tells the
 * vault at open ({@link KeyVault.setUsed}).
 *
 * **Generations.** All keys are wrapped under the KEK of the current generation
 * `(gen, kid, ek)`: `ek` is an X-Wing encapsulation to the node's KEM key `kid`. {@link KeyVault.rewrap}
 * makes a new generation for the node's current KEM key and re-wraps every key in one transaction
 * (payloads are not touched). Opening a vault whose generation is not under the current KEM key
 * re-wraps automatically (after `tidegate keys rotate` and a restart), provided the old key is still
 * in the key file (status `previous`).
 *
 * The vault is opened with `locking_mode=EXCLUSIVE` and written once at open, so a second process
 * (e.g. `tidegate shred` while the node runs) gets a clear "in use" error instead of racing.
 */
import { DatabaseSync } from 'node:sqlite';
import type { StatementSync } from 'node:sqlite';
import { ml_kem768_x25519 } from '@noble/post-quantum/hybrid.js';
import type { NodeSecretKeys } from '../envelope/keys.ts';
import { b64uEncode } from '../envelope/suite.ts';
import { existsSync, rmSync } from 'node:fs';
import { deriveKek, INDEX_KEY_SLOT, resourceTag, STORE_FORMAT, unwrapKey, wrapKey } from './seal.ts';
import type { RandomSource } from './seal.ts';

/** Stable codes of {@link KeyVaultError}. */
export type KeyVaultErrorCode =
  /** The vault is wrapped under an X-Wing key the key file does not hold (retired, or another node's). */
  | 'ERR_VAULT_KEY_UNAVAILABLE'
  /** The content key of a slot was destroyed (crypto-shredded) or never existed. */
  | 'ERR_CONTENT_KEY_DESTROYED'
  /** The vault file is not a tidegate key vault, or is damaged. */
  | 'ERR_VAULT_INVALID'
  /** Another process holds the vault (a running node). */
  | 'ERR_VAULT_IN_USE'
  /** The vault file does not exist, but the store holds sealed records that need its keys. */
  | 'ERR_VAULT_MISSING'
  /** The vault is not the one the store was sealed with (another store's, or a new empty one). */
  | 'ERR_VAULT_MISMATCH'
  /** The vault is older than the store: the store references content keys the vault never created. */
  | 'ERR_VAULT_INCOMPLETE';

/** Error of the key vault; messages carry slot numbers and key ids only. */
export class KeyVaultError extends Error {
  override readonly name = 'KeyVaultError';
  /** Stable machine-readable code. */
  readonly code: KeyVaultErrorCode;
  /**
   * @param code - stable code.
   * @param message - human text (no key bytes, no resource keys).
   * @param cause - underlying error.
   */
  constructor(code: KeyVaultErrorCode, message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.code = code;
  }
}

/** Options of {@link KeyVault}. */
export interface KeyVaultOptions {
  /** The node's secret keys (current X-Wing key and `previous` ones, from its key file). */
  secretKeys: NodeSecretKeys;
  /** Slots created per pool refill (one vault transaction each). Default 256. */
  poolSize?: number;
  /** Re-wrap at open when the vault's generation is not under the current X-Wing key. Default true. */
  autoRewrap?: boolean;
  /** How long to wait for a lock, ms. Default 1000. */
  busyTimeoutMs?: number;
  /** Most unwrapped content keys kept in memory. Default 65536 (~6 MiB). */
  cacheKeys?: number;
  /** CSPRNG; tests only. */
  random?: RandomSource;
}

/** The current key generation. */
interface Generation {
  gen: number;
  kid: string;
  kek: Uint8Array;
}

/** Result of {@link KeyVault.rewrap}. */
export interface RewrapResult {
  /** Generation and X-Wing key id before and after. */
  from: { gen: number; kid: string };
  to: { gen: number; kid: string };
  /** Keys re-wrapped (content keys + the index key). */
  keys: number;
}

const FORMAT = 'tidegate-store-keys/1';
const SCHEMA = `
CREATE TABLE IF NOT EXISTS vault_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kek (gen INTEGER PRIMARY KEY, kid TEXT NOT NULL, ek BLOB NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS content_key (slot INTEGER PRIMARY KEY AUTOINCREMENT, wrapped BLOB NOT NULL);
`;

function num(v: unknown): number {
  return typeof v === 'bigint' ? Number(v) : typeof v === 'number' ? v : Number.NaN;
}

/** See module doc. */
export class KeyVault {
  /** Absolute path of the vault file (or `:memory:`). */
  readonly path: string;
  readonly #db: DatabaseSync;
  readonly #keys: NodeSecretKeys;
  readonly #poolSize: number;
  readonly #cacheMax: number;
  readonly #random: RandomSource;
  readonly #cache = new Map<number, Uint8Array>();
  #gen: Generation;
  #indexKey: Uint8Array;
  #free: number[] = [];
  #closed = false;
  readonly #st: Record<'selKey' | 'insKey' | 'delKey' | 'allSlots', StatementSync>;

  /**
   * Opens (creating when absent) a key vault.
   * @param path - file path, or `:memory:` (tests).
   * @param opts - see {@link KeyVaultOptions}.
   * @throws KeyVaultError `ERR_VAULT_IN_USE` (another process holds it), `ERR_VAULT_INVALID` (not a
   *   vault / damaged), `ERR_VAULT_KEY_UNAVAILABLE` (wrapped under an X-Wing key the key file lacks).
   */
  constructor(path: string, opts: KeyVaultOptions) {
    this.path = path;
    this.#keys = opts.secretKeys;
    this.#poolSize = Math.max(1, opts.poolSize ?? 256);
    this.#cacheMax = Math.max(16, opts.cacheKeys ?? 65536);
    this.#random = opts.random ?? ((n) => crypto.getRandomValues(new Uint8Array(n)));
    try {
      this.#db = new DatabaseSync(path, { timeout: opts.busyTimeoutMs ?? 1000 });
    } catch (err) {
      throw new KeyVaultError('ERR_VAULT_INVALID', `Cannot open key vault ${path}: ${(err as Error).message}`, err);
    }
    const db = this.#db;
    try {
      db.exec('PRAGMA locking_mode=EXCLUSIVE');
      db.exec('PRAGMA secure_delete=ON');
      db.exec('PRAGMA journal_mode=WAL');
      db.exec('PRAGMA synchronous=FULL');
      db.exec('BEGIN IMMEDIATE');
    } catch (err) {
      db.close();
      const msg = (err as Error).message;
      if (/locked|busy/i.test(msg)) throw new KeyVaultError('ERR_VAULT_IN_USE', `Key vault ${path} is in use by another process (a running node?): ${msg}`, err);
      throw new KeyVaultError('ERR_VAULT_INVALID', `Cannot open key vault ${path}: ${msg}`, err);
    }
    try {
      db.exec(SCHEMA);
      const format = db.prepare("SELECT value FROM vault_meta WHERE name = 'format'").get() as { value?: unknown } | undefined;
      if (format === undefined) {
        const hasRows = num((db.prepare('SELECT COUNT(*) AS n FROM kek').get() as { n?: unknown }).n) > 0;
        if (hasRows) throw new Error('kek rows without a format marker');
        db.prepare("INSERT INTO vault_meta (name, value) VALUES ('format', ?)").run(FORMAT);
        const g = this.#newGeneration(1);
        this.#gen = g;
        this.#indexKey = this.#random(32);
        db.prepare("INSERT INTO vault_meta (name, value) VALUES ('index_key', ?)").run(b64uEncode(wrapKey(g.kek, g.gen, INDEX_KEY_SLOT, this.#indexKey, this.#random)));
      } else {
        if (format.value !== FORMAT) throw new Error(`format ${String(format.value)} is not ${FORMAT}`);
        const rows = db.prepare('SELECT gen, kid, ek FROM kek').all();
        if (rows.length !== 1) throw new Error(`expected one key generation, found ${rows.length}`);
        const r = rows[0]!;
        const gen = num(r.gen);
        const kid = String(r.kid);
        const ek = r.ek instanceof Uint8Array ? r.ek : new Uint8Array(0);
        this.#gen = { gen, kid, kek: this.#decapsulate(ek, kid) };
        const wrappedIndex = db.prepare("SELECT value FROM vault_meta WHERE name = 'index_key'").get() as { value?: unknown } | undefined;
        if (typeof wrappedIndex?.value !== 'string') throw new Error('index key missing');
        this.#indexKey = unwrapKey(this.#gen.kek, gen, INDEX_KEY_SLOT, new Uint8Array(Buffer.from(wrappedIndex.value, 'base64url')));
      }
      // A write at open takes the exclusive lock for the connection's lifetime (locking_mode=EXCLUSIVE).
      db.prepare("INSERT OR REPLACE INTO vault_meta (name, value) VALUES ('opened', ?)").run(new Date().toISOString());
      db.exec('COMMIT');
    } catch (err) {
      if (db.isTransaction) db.exec('ROLLBACK');
      db.close();
      if (err instanceof KeyVaultError) throw err;
      throw new KeyVaultError('ERR_VAULT_INVALID', `Key vault ${path} is not readable: ${(err as Error).message}`, err);
    }
    const p = (sql: string): StatementSync => db.prepare(sql);
    this.#st = {
      selKey: p('SELECT wrapped FROM content_key WHERE slot = ?'),
      insKey: p('INSERT INTO content_key (wrapped) VALUES (?)'),
      delKey: p('DELETE FROM content_key WHERE slot = ?'),
      allSlots: p('SELECT slot FROM content_key ORDER BY slot'),
    };
    if (this.#gen.kid !== this.#keys.kemKeyId && opts.autoRewrap !== false) this.rewrap();
  }

  /** The store's 32-byte index key (HMAC key of resource tags). */
  get indexKey(): Uint8Array {
    return this.#indexKey;
  }

  /** Generation number and X-Wing key id the keys are wrapped under now. */
  get generation(): { gen: number; kid: string } {
    return { gen: this.#gen.gen, kid: this.#gen.kid };
  }

  /**
   * Tells the vault which slots the data file references; every other slot becomes free (slots of
   * a pool handed out before a crash, never committed in the data file).
   * @param used - slots in use.
   */
  setUsed(used: Iterable<number>): void {
    const taken = new Set(used);
    this.#free = [];
    for (const r of this.#st.allSlots.all()) {
      const s = num(r.slot);
      if (!taken.has(s)) this.#free.push(s);
    }
  }

  /**
   * A free slot with a fresh random content key for a new resource. Refills the pool (one vault
   * transaction, fsync) when empty. The caller records the slot in its data file; until then a
   * crash returns it to the pool.
   * @returns The slot number (≥ 1).
   * @throws Error on an SQLite error (disk full, closed vault).
   */
  allocate(): number {
    this.#check();
    if (this.#free.length === 0) this.#refill();
    return this.#free.shift()!;
  }

  /**
   * The content key of a slot (unwrapped, cached).
   * @param slot - a slot from {@link allocate}.
   * @returns 32 bytes. Do not modify.
   * @throws KeyVaultError `ERR_CONTENT_KEY_DESTROYED` when the slot has no key (shredded);
   *   SealedRecordError when its wrapped bytes are damaged.
   */
  contentKey(slot: number): Uint8Array {
    this.#check();
    const hit = this.#cache.get(slot);
    if (hit !== undefined) return hit;
    const row = this.#st.selKey.get(slot) as { wrapped?: unknown } | undefined;
    if (!(row?.wrapped instanceof Uint8Array)) throw new KeyVaultError('ERR_CONTENT_KEY_DESTROYED', `content key of slot ${slot} does not exist (destroyed by crypto-shredding?)`);
    const key = unwrapKey(this.#gen.kek, this.#gen.gen, slot, row.wrapped);
    if (this.#cache.size >= this.#cacheMax) {
      const oldest = this.#cache.keys().next().value;
      if (oldest !== undefined) this.#forget(oldest);
    }
    this.#cache.set(slot, key);
    return key;
  }

  /**
   * The wrapped bytes of a slot's content key as stored (for tests that look for them in files).
   * @returns 61 bytes, or undefined when the slot has no key.
   */
  wrappedKey(slot: number): Uint8Array | undefined {
    this.#check();
    const row = this.#st.selKey.get(slot) as { wrapped?: unknown } | undefined;
    return row?.wrapped instanceof Uint8Array ? Uint8Array.from(row.wrapped) : undefined;
  }

  /**
   * Destroys content keys (crypto-shredding): deletes their rows in one transaction (zeroed by
   * `secure_delete`), then checkpoints and truncates the write-ahead log. Idempotent.
   * @param slots - slots to destroy.
   * @returns How many keys existed and were destroyed.
   * @throws Error on an SQLite error; nothing is destroyed then.
   */
  destroy(slots: Iterable<number>): number {
    this.#check();
    const db = this.#db;
    let n = 0;
    const list = [...slots];
    db.exec('BEGIN IMMEDIATE');
    try {
      for (const s of list) n += num(this.#st.delKey.run(s).changes);
      db.exec('COMMIT');
    } catch (err) {
      if (db.isTransaction) db.exec('ROLLBACK');
      throw err;
    }
    for (const s of list) {
      this.#forget(s);
      const i = this.#free.indexOf(s);
      if (i >= 0) this.#free.splice(i, 1);
    }
    db.prepare('PRAGMA wal_checkpoint(TRUNCATE)').all();
    return n;
  }

  /**
   * Re-wraps every key (content keys and the index key) under a new generation for the node's
   * current X-Wing key, in one transaction; payloads are not touched. The old generation's
   * encapsulation is deleted.
   * @returns What was re-wrapped.
   * @throws SealedRecordError when a wrapped key is damaged (nothing changes then); Error on SQLite errors.
   */
  rewrap(): RewrapResult {
    this.#check();
    const db = this.#db;
    const from = { gen: this.#gen.gen, kid: this.#gen.kid };
    db.exec('BEGIN IMMEDIATE');
    let next: Generation;
    let count = 0;
    try {
      next = this.#newGeneration(this.#gen.gen + 1);
      const upd = db.prepare('UPDATE content_key SET wrapped = ? WHERE slot = ?');
      for (const r of db.prepare('SELECT slot, wrapped FROM content_key').all()) {
        const slot = num(r.slot);
        const key = unwrapKey(this.#gen.kek, this.#gen.gen, slot, r.wrapped as Uint8Array);
        upd.run(wrapKey(next.kek, next.gen, slot, key, this.#random), slot);
        key.fill(0);
        count++;
      }
      db.prepare("UPDATE vault_meta SET value = ? WHERE name = 'index_key'").run(b64uEncode(wrapKey(next.kek, next.gen, INDEX_KEY_SLOT, this.#indexKey, this.#random)));
      db.prepare('DELETE FROM kek WHERE gen = ?').run(this.#gen.gen);
      db.exec('COMMIT');
    } catch (err) {
      if (db.isTransaction) db.exec('ROLLBACK');
      throw err;
    }
    this.#gen.kek.fill(0);
    this.#gen = next;
    db.prepare('PRAGMA wal_checkpoint(TRUNCATE)').all();
    return { from, to: { gen: next.gen, kid: next.kid }, keys: count + 1 };
  }

  /**
   * The highest slot this vault ever created (SQLite `AUTOINCREMENT` keeps it after deletes,
   * https://sqlite.org/autoinc.html), 0 for none. A store slot at or below it without a key was
   * destroyed (crypto-shredded); one above it was created by a newer copy of this vault.
   */
  get highWater(): number {
    this.#check();
    const row = this.#db.prepare("SELECT seq FROM sqlite_sequence WHERE name = 'content_key'").get() as { seq?: unknown } | undefined;
    return row === undefined ? 0 : num(row.seq);
  }

  /** Number of content keys held (slots in use and free). */
  get size(): number {
    this.#check();
    return num((this.#db.prepare('SELECT COUNT(*) AS n FROM content_key').get() as { n?: unknown }).n);
  }

  /** Wipes cached keys and closes the file. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const k of this.#cache.values()) k.fill(0);
    this.#cache.clear();
    this.#gen.kek.fill(0);
    this.#db.close();
  }

  // ---- internals ----

  #check(): void {
    if (this.#closed) throw new Error('Key vault is closed');
  }

  #forget(slot: number): void {
    const k = this.#cache.get(slot);
    if (k) k.fill(0);
    this.#cache.delete(slot);
  }

  /** Inserts a new generation row (inside the caller's transaction) for the current X-Wing key. */
  #newGeneration(gen: number): Generation {
    const pk = ml_kem768_x25519.getPublicKey(this.#keys.kemSecretKey);
    const { cipherText, sharedSecret } = ml_kem768_x25519.encapsulate(pk);
    try {
      const kek = deriveKek(sharedSecret, cipherText, this.#keys.kemKeyId);
      this.#db.prepare('INSERT INTO kek (gen, kid, ek, created) VALUES (?, ?, ?, ?)').run(gen, this.#keys.kemKeyId, cipherText, new Date().toISOString());
      return { gen, kid: this.#keys.kemKeyId, kek };
    } finally {
      sharedSecret.fill(0);
    }
  }

  /** KEK of a stored generation: X-Wing decapsulation with the key file's key `kid`. */
  #decapsulate(ek: Uint8Array, kid: string): Uint8Array {
    const sk = kid === this.#keys.kemKeyId ? this.#keys.kemSecretKey : this.#keys.additionalKemKeys?.find((k) => k.kid === kid)?.secretKey;
    if (sk === undefined) {
      throw new KeyVaultError(
        'ERR_VAULT_KEY_UNAVAILABLE',
        `Key vault ${this.path} is wrapped under X-Wing key ${kid}, which the key file of ${this.#keys.nodeId} does not hold (retired before the store was re-wrapped, or another node's key file)`,
      );
    }
    if (ek.length !== 1120) throw new KeyVaultError('ERR_VAULT_INVALID', `Key vault ${this.path}: encapsulation has the wrong length`);
    const ss = ml_kem768_x25519.decapsulate(ek, sk);
    try {
      return deriveKek(ss, ek, kid);
    } finally {
      ss.fill(0);
    }
  }

  #refill(): void {
    const db = this.#db;
    const fresh: number[] = [];
    const setWrapped = db.prepare('UPDATE content_key SET wrapped = ? WHERE slot = ?');
    db.exec('BEGIN IMMEDIATE');
    try {
      for (let i = 0; i < this.#poolSize; i++) {
        // The slot number is bound into the wrapping AAD, so insert first, then wrap under it.
        const slot = num(this.#st.insKey.run(new Uint8Array(61)).lastInsertRowid);
        const key = this.#random(STORE_FORMAT.contentKey);
        setWrapped.run(wrapKey(this.#gen.kek, this.#gen.gen, slot, key, this.#random), slot);
        key.fill(0);
        fresh.push(slot);
      }
      db.exec('COMMIT');
    } catch (err) {
      if (db.isTransaction) db.exec('ROLLBACK');
      throw err;
    }
    this.#free.push(...fresh);
  }
}

/** Vault file of a store file: `<storeFile>.keys` (`:memory:` stays `:memory:`). */
export function vaultPathOf(storeFile: string): string {
  return storeFile === ':memory:' ? storeFile : `${storeFile}.keys`;
}


/** Tagged (HMAC under the vault's index key) into a store's `vault_check`; not a `Type/id`. Same value as src/store/pg-store.ts. */
const VAULT_CHECK = 'tidegate-store/1 vault-check';

/**
 * The identity check of a vault: hex of the HMAC-SHA-256 tag (`resourceTag`, src/store/seal.ts) of a
 * fixed label under the vault's index key. Stable across re-wraps; reveals nothing of the key.
 * @param indexKey - the vault's 32-byte index key.
 * @returns 64 hex characters.
 */
export function vaultCheckOf(indexKey: Uint8Array): string {
  return Buffer.from(resourceTag(indexKey, VAULT_CHECK)).toString('hex');
}

/** What a store's data file knows about its key vault (see {@link openBoundVault}). */
export interface VaultBinding {
  /** The store, for messages: an absolute file path or `host:port/db schema` (no credentials). */
  store: string;
  /** The `vault_check` the store recorded ({@link vaultCheckOf}), or undefined (new store, or written before it was recorded). */
  recorded: string | undefined;
  /** True when the store holds sealed records or shred tombstones (which only the vault's keys read). */
  holdsSealed: boolean;
  /** The content key slots the store references (read only after the vault opened). */
  usedSlots: () => Iterable<number>;
  /** Records the vault's check in the store; called when `recorded` is undefined. */
  record: (check: string) => void;
}

/**
 * Opens the key vault of a sealed store and checks that it is the store's vault, so that a lost,
 * foreign or outdated vault stops the node at start instead of reading as an empty store (every
 * resource 404, new writes under version ids the peers hold with other content):
 *
 * - the vault file is absent but the store recorded a vault check or holds sealed records →
 *   `ERR_VAULT_MISSING` (a new empty vault is **not** created);
 * - the vault's {@link vaultCheckOf} differs from the recorded one → `ERR_VAULT_MISMATCH`;
 * - the store references a slot above the vault's {@link KeyVault.highWater} → `ERR_VAULT_INCOMPLETE`
 *   (a vault backup older than the store). A slot at or below it without a key was crypto-shredded
 *   and reads as such (`ERR_CONTENT_KEY_DESTROYED`), e.g. a data backup restored with today's vault.
 *
 * Then marks the free slots ({@link KeyVault.setUsed}) and records the check when the store had none.
 * @param path - the vault file (`:memory:` in tests).
 * @param opts - see {@link KeyVaultOptions}.
 * @param binding - see {@link VaultBinding}.
 * @returns The open vault (the caller closes it).
 * @throws KeyVaultError with the codes above (the message names both files and what to do), or as
 *   the {@link KeyVault} constructor.
 */
export function openBoundVault(path: string, opts: KeyVaultOptions, binding: VaultBinding): KeyVault {
  const what = lostVaultAdvice(path, binding.store);
  if (path !== ':memory:' && !existsSync(path) && (binding.recorded !== undefined || binding.holdsSealed)) {
    throw new KeyVaultError('ERR_VAULT_MISSING', `Key vault ${path} does not exist, but store ${binding.store} holds sealed records that only its keys read. Refusing to start with a new empty vault. ${what}`);
  }
  const vault = new KeyVault(path, opts);
  try {
    const check = vaultCheckOf(vault.indexKey);
    if (binding.recorded !== undefined && binding.recorded !== check) {
      throw new KeyVaultError('ERR_VAULT_MISMATCH', `Key vault ${path} is not the key vault of store ${binding.store} (another store's vault, or one created anew). ${what}`);
    }
    const used = [...binding.usedSlots()];
    const high = vault.highWater;
    const newer = used.filter((s) => s > high);
    if (newer.length > 0) {
      throw new KeyVaultError('ERR_VAULT_INCOMPLETE', incompleteVaultMessage(path, binding.store, newer.length, high));
    }
    vault.setUsed(used);
    if (binding.recorded === undefined) binding.record(check);
    return vault;
  } catch (err) {
    vault.close();
    throw err;
  }
}

/**
 * True when a vault file exists (`:memory:` counts as existing: nothing to lose).
 * @param path - vault file path.
 */
export function vaultFileExists(path: string): boolean {
  return path === ':memory:' || existsSync(path);
}

/**
 * Deletes a vault this process just created by mistake (e.g. in place of a missing one), with its
 * `-wal` and `-shm` files, so the next start sees the vault still missing. Never throws.
 * @param path - vault file path (`:memory:` is ignored).
 */
export function discardNewVault(path: string): void {
  if (path === ':memory:') return;
  for (const f of [path, `${path}-wal`, `${path}-shm`]) rmSync(f, { force: true });
}

/**
 * The "what to do" text of a missing or wrong vault (used in error messages).
 * @param path - vault file path.
 * @param store - the store (file path, or `host:port/db schema`).
 */
export function lostVaultAdvice(path: string, store: string): string {
  return (
    `Restore ${path} from the backup made with this store. Or, to give up this node's copy deliberately, move ${store} away as well ` +
    `(a file with its -wal file; a PostgreSQL schema: drop or rename it) and restart: the node starts empty and the peers restore it by anti-entropy (see docs/storage.md, "Losing the key vault").`
  );
}

/**
 * The message of `ERR_VAULT_INCOMPLETE`: the store references slots above the vault's {@link KeyVault.highWater}.
 * @param path - vault file path.
 * @param store - the store.
 * @param count - how many slots are above it.
 * @param high - the vault's high-water slot.
 */
export function incompleteVaultMessage(path: string, store: string, count: number, high: number): string {
  return `Key vault ${path} is older than store ${store}: ${count} content key(s) of the store (slots above ${high}) were created after this copy of the vault. ${lostVaultAdvice(path, store)}`;
}
