/**
 * Node key pairs for tidegate-env/1: one X-Wing KEM key pair (receiving) and one ML-DSA-65 key
 * pair (signing) per node, their key ids, and their on-disk / in-config JSON forms.
 *
 * Key id ("kid"): base64url (RFC 4648 §5, unpadded) of the first 16 bytes of SHA-256 over the raw
 * public key bytes, i.e. 22 characters. This is in the spirit of RFC 7638 JWK thumbprints, but is
 * taken over the raw key encoding (FIPS 203 / FIPS 204 / X-Wing byte strings) rather than a JWK,
 * and truncated to 128 bits. The KEM key and the signature key each have their own kid.
 */
import { randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { open as fsOpen, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { hkdf } from '@noble/hashes/hkdf.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { ml_dsa65 } from '@noble/post-quantum/ml-dsa.js';
import { ml_kem768_x25519 } from '@noble/post-quantum/hybrid.js';
import { KeyFileError } from './errors.ts';
import { b64uDecodeStrict, b64uEncode, hasExactKeys, KEY_ID_RE, NODE_ID_RE, SUITE, utf8 } from './suite.ts';

/** A node's own secret keys. Never share; on disk only in a mode-0600 file. */
export interface NodeSecretKeys {
  /** Node id; also the key file base name. Matches `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`. */
  nodeId: string;
  /** Kid of the X-Wing public key that belongs to `kemSecretKey`. */
  kemKeyId: string;
  /** X-Wing decapsulation key (32-byte seed). */
  kemSecretKey: Uint8Array;
  /** Kid of the ML-DSA-65 public key that belongs to `sigSecretKey`. */
  sigKeyId: string;
  /** ML-DSA-65 secret key (4032 bytes, FIPS 204 encoding). */
  sigSecretKey: Uint8Array;
  /**
   * Older X-Wing keys that still decrypt (key status `previous`, see docs/envelope.md §7): `open()`
   * picks the key whose kid equals the header's `recipientKid`. Absent or empty for single-key files.
   */
  additionalKemKeys?: ReadonlyArray<{ kid: string; secretKey: Uint8Array }>;
}

/** A node's public keys, as distributed to its peers. */
export interface NodePublicKeys {
  /** Node id. */
  nodeId: string;
  /** Kid of `kemPublicKey`. */
  kemKeyId: string;
  /** X-Wing encapsulation key (1216 bytes). */
  kemPublicKey: Uint8Array;
  /** Kid of `sigPublicKey`. */
  sigKeyId: string;
  /** ML-DSA-65 public key (1952 bytes). */
  sigPublicKey: Uint8Array;
  /**
   * Further ML-DSA-65 keys of this peer that `open()` accepts (key status `next` during a rotation,
   * see docs/envelope.md §7), chosen by the header's `senderKid`. Absent for single-key files.
   */
  additionalSigKeys?: ReadonlyArray<{ kid: string; publicKey: Uint8Array }>;
}

/** JSON form of {@link NodePublicKeys} (key files and config); binary fields are base64url. */
export interface NodePublicKeysJson {
  format: 'tidegate-node-public/1';
  nodeId: string;
  kem: 'X-Wing';
  kemKeyId: string;
  kemPublicKey: string;
  sig: 'ML-DSA-65';
  sigKeyId: string;
  sigPublicKey: string;
}

/** JSON form of {@link NodeSecretKeys} in `<nodeId>.secret.json`; binary fields are base64url. */
interface NodeSecretKeysJson {
  format: 'tidegate-node-secret/1';
  nodeId: string;
  kem: 'X-Wing';
  kemKeyId: string;
  kemSecretKey: string;
  sig: 'ML-DSA-65';
  sigKeyId: string;
  sigSecretKey: string;
}

const PUBLIC_FORMAT = 'tidegate-node-public/1';
const SECRET_FORMAT = 'tidegate-node-secret/1';
const PUBLIC_JSON_KEYS = ['format', 'nodeId', 'kem', 'kemKeyId', 'kemPublicKey', 'sig', 'sigKeyId', 'sigPublicKey'] as const;
const SECRET_JSON_KEYS = ['format', 'nodeId', 'kem', 'kemKeyId', 'kemSecretKey', 'sig', 'sigKeyId', 'sigSecretKey'] as const;

/**
 * Computes a key id: unpadded base64url of the first 16 bytes of SHA-256(publicKey).
 *
 * @param publicKey - Raw public key bytes (X-Wing 1216 bytes or ML-DSA-65 1952 bytes).
 * @returns 22-character base64url string.
 */
export function keyIdOf(publicKey: Uint8Array): string {
  return b64uEncode(sha256(publicKey).subarray(0, SUITE.lengths.keyId));
}

function assertNodeId(nodeId: unknown, what: string): asserts nodeId is string {
  if (typeof nodeId !== 'string' || !NODE_ID_RE.test(nodeId)) {
    throw new KeyFileError(`${what}: nodeId must match ${NODE_ID_RE.source}`);
  }
}

/**
 * Generates a node's X-Wing and ML-DSA-65 key pairs and their key ids.
 *
 * Without `seed`, both key pairs come from the CSPRNG (`crypto.getRandomValues` via noble).
 * With a 32-byte `seed`, generation is deterministic: the X-Wing seed is
 * HKDF-SHA256(ikm = seed, salt = absent, info = "tidegate-env/1 keygen X-Wing", L = 32) and the
 * ML-DSA-65 ξ is HKDF-SHA256(ikm = seed, salt = absent, info = "tidegate-env/1 keygen ML-DSA-65", L = 32)
 * (RFC 5869; X-Wing KeyGen per draft-connolly-cfrg-xwing-kem; ML-DSA.KeyGen_internal per FIPS 204).
 * A seed is for tests and reproducible fixtures; treat it as secret as the keys themselves.
 *
 * @param nodeId - Node id, `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$` (it becomes a file name).
 * @param seed - Optional 32-byte master seed.
 * @returns Secret keys (X-Wing 32 bytes, ML-DSA-65 4032 bytes) and public keys (1216 / 1952 bytes).
 * @throws {@link KeyFileError} for an invalid nodeId; `RangeError` for a seed that is not 32 bytes.
 */
export function generateNodeKeys(
  nodeId: string,
  seed?: Uint8Array,
): { secretKeys: NodeSecretKeys; publicKeys: NodePublicKeys } {
  assertNodeId(nodeId, 'generateNodeKeys');
  let kemSeed: Uint8Array | undefined;
  let sigSeed: Uint8Array | undefined;
  if (seed !== undefined) {
    if (!(seed instanceof Uint8Array) || seed.length !== SUITE.lengths.nodeSeed) {
      throw new RangeError(`generateNodeKeys: seed must be ${SUITE.lengths.nodeSeed} bytes`);
    }
    kemSeed = hkdf(sha256, seed, undefined, utf8(SUITE.keygenInfoKem), SUITE.lengths.kemSecretKey);
    sigSeed = hkdf(sha256, seed, undefined, utf8(SUITE.keygenInfoSig), 32);
  }
  try {
    const kem = ml_kem768_x25519.keygen(kemSeed);
    const sig = ml_dsa65.keygen(sigSeed);
    // Copy: the X-Wing secret key is the seed itself and may alias our buffer, which we wipe.
    const kemSecretKey = Uint8Array.from(kem.secretKey);
    const kemPublicKey = Uint8Array.from(kem.publicKey);
    const sigSecretKey = Uint8Array.from(sig.secretKey);
    const sigPublicKey = Uint8Array.from(sig.publicKey);
    const kemKeyId = keyIdOf(kemPublicKey);
    const sigKeyId = keyIdOf(sigPublicKey);
    return {
      secretKeys: { nodeId, kemKeyId, kemSecretKey, sigKeyId, sigSecretKey },
      publicKeys: { nodeId, kemKeyId, kemPublicKey, sigKeyId, sigPublicKey },
    };
  } finally {
    kemSeed?.fill(0);
    sigSeed?.fill(0);
  }
}

/**
 * Converts public keys to their JSON form, for a key file or to embed a peer in config.
 *
 * @param keys - Public keys (lengths are checked).
 * @returns `{ format: 'tidegate-node-public/1', nodeId, kem: 'X-Wing', kemKeyId, kemPublicKey, sig: 'ML-DSA-65', sigKeyId, sigPublicKey }`,
 *   binary fields as unpadded base64url (RFC 4648 §5).
 * @throws {@link KeyFileError} when a length, the nodeId or a key id is wrong.
 */
export function publicKeysToJson(keys: NodePublicKeys): NodePublicKeysJson {
  validatePublicKeys(keys, 'publicKeysToJson');
  return {
    format: PUBLIC_FORMAT,
    nodeId: keys.nodeId,
    kem: SUITE.kem,
    kemKeyId: keys.kemKeyId,
    kemPublicKey: b64uEncode(keys.kemPublicKey),
    sig: SUITE.sig,
    sigKeyId: keys.sigKeyId,
    sigPublicKey: b64uEncode(keys.sigPublicKey),
  };
}

/**
 * Parses and validates public keys in the JSON form produced by {@link publicKeysToJson}
 * (`tidegate-node-public/1`), or a `tidegate-node-public/2` JWK Set (see {@link keyStoreToPublicJson}).
 * Strict: exactly the documented fields, the right algorithm ids, canonical unpadded base64url,
 * exact lengths (X-Wing 1216 bytes, ML-DSA-65 1952 bytes), and each kid must equal the kid
 * recomputed from its key.
 *
 * @param json - The parsed JSON object, or a JSON string of it.
 * @returns Public keys with fresh `Uint8Array`s.
 * @throws {@link KeyFileError} on any deviation.
 */
export function publicKeysFromJson(json: unknown): NodePublicKeys {
  const what = 'public keys';
  const obj = typeof json === 'string' ? parseJsonText(json, what) : json;
  if (isFormat(obj, PUBLIC_FORMAT_V2)) return parsePublicKeysV2(obj, what);
  return parsePublicKeys(obj, what);
}

function isFormat(obj: unknown, format: string): obj is Record<string, unknown> {
  return typeof obj === 'object' && obj !== null && !Array.isArray(obj) && (obj as Record<string, unknown>)['format'] === format;
}

function parsePublicKeys(obj: unknown, what: string): NodePublicKeys {
  if (!hasExactKeys(obj, PUBLIC_JSON_KEYS)) {
    throw new KeyFileError(`${what}: expected exactly the fields ${PUBLIC_JSON_KEYS.join(', ')}`);
  }
  checkHeaderFields(obj, PUBLIC_FORMAT, what);
  const keys: NodePublicKeys = {
    nodeId: obj['nodeId'] as string,
    kemKeyId: obj['kemKeyId'] as string,
    kemPublicKey: decodeField(obj, 'kemPublicKey', SUITE.lengths.kemPublicKey, what),
    sigKeyId: obj['sigKeyId'] as string,
    sigPublicKey: decodeField(obj, 'sigPublicKey', SUITE.lengths.sigPublicKey, what),
  };
  validatePublicKeys(keys, what);
  return keys;
}

/**
 * Writes `<dir>/<nodeId>.secret.json` (mode 0600) and `<dir>/<nodeId>.public.json` (mode 0644).
 * The secret file is created with mode 0600 and additionally chmod-ed to 0600 before any bytes are
 * written (so a pre-existing, looser file is tightened first). Both files hold JSON with base64url
 * binary fields; the public file is exactly {@link publicKeysToJson}.
 *
 * @param dir - Existing directory.
 * @param keys - Matching secret and public keys (as returned by {@link generateNodeKeys}); the
 *   public keys derived from the secret keys must equal `publicKeys`.
 * @param options - `overwrite` (default `false`): replace existing files instead of failing.
 * @returns The two paths written.
 * @throws {@link KeyFileError} when the keys are invalid or do not match each other; the Node.js
 *   fs error (e.g. `EEXIST` when a file exists and `overwrite` is false, `ENOENT` for a missing dir).
 */
export async function writeKeyFiles(
  dir: string,
  keys: { secretKeys: NodeSecretKeys; publicKeys: NodePublicKeys },
  options: { overwrite?: boolean } = {},
): Promise<{ secretPath: string; publicPath: string }> {
  const { secretKeys, publicKeys } = keys;
  validateSecretKeys(secretKeys, 'writeKeyFiles');
  const publicJson = publicKeysToJson(publicKeys);
  if (
    publicKeys.nodeId !== secretKeys.nodeId ||
    publicKeys.kemKeyId !== secretKeys.kemKeyId ||
    publicKeys.sigKeyId !== secretKeys.sigKeyId
  ) {
    throw new KeyFileError('writeKeyFiles: secret and public keys belong to different nodes or key pairs');
  }
  const secretJson: NodeSecretKeysJson = {
    format: SECRET_FORMAT,
    nodeId: secretKeys.nodeId,
    kem: SUITE.kem,
    kemKeyId: secretKeys.kemKeyId,
    kemSecretKey: b64uEncode(secretKeys.kemSecretKey),
    sig: SUITE.sig,
    sigKeyId: secretKeys.sigKeyId,
    sigSecretKey: b64uEncode(secretKeys.sigSecretKey),
  };
  const flags = options.overwrite === true ? 'w' : 'wx';
  const secretPath = join(dir, `${secretKeys.nodeId}.secret.json`);
  const publicPath = join(dir, `${secretKeys.nodeId}.public.json`);
  await writeWithMode(secretPath, `${JSON.stringify(secretJson, null, 2)}\n`, flags, 0o600);
  await writeWithMode(publicPath, `${JSON.stringify(publicJson, null, 2)}\n`, flags, 0o644);
  return { secretPath, publicPath };
}

async function writeWithMode(path: string, text: string, flags: string, mode: number): Promise<void> {
  const handle = await fsOpen(path, flags, mode);
  try {
    await handle.chmod(mode); // before writing: tighten a pre-existing file, undo a permissive umask
    await handle.truncate(0);
    await handle.writeFile(text, 'utf8');
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * What is wrong with the permissions of a secret key file: group or others may read it (any bit
 * of `mode & 0o077`), as OpenSSH refuses for its private keys (ssh(1) FILES: "must not be
 * accessible by others"). `tidegate keys generate` writes it 0600. On a platform without POSIX
 * modes (Windows) nothing is checked; a file that cannot be stat'ed is left to the reader's error.
 * @param path - the secret key file.
 * @returns The message (path, octal mode, the chmod fix), or undefined when the mode is fine.
 */
export function secretKeyFileModeProblem(path: string): string | undefined {
  if (process.platform === 'win32') return undefined;
  let mode: number;
  try {
    mode = statSync(path).mode;
  } catch {
    return undefined;
  }
  if ((mode & 0o077) === 0) return undefined;
  return `secret key file ${path} is readable by group or others (mode ${(mode & 0o777).toString(8).padStart(4, '0')}); it holds the node's private keys: run \`chmod 600 ${path}\``;
}

/**
 * Refuses a secret key file that group or others may read (see {@link secretKeyFileModeProblem}).
 * @param path - the secret key file.
 * @throws {@link KeyFileError} naming the file, its mode and the chmod fix.
 */
export function assertSecretKeyFileMode(path: string): void {
  const problem = secretKeyFileModeProblem(path);
  if (problem !== undefined) throw new KeyFileError(problem);
}

/**
 * Reads and validates a `<nodeId>.secret.json` file: a `tidegate-node-secret/1` file written by
 * {@link writeKeyFiles}, or a `tidegate-node-secret/2` key store (see {@link readKeyStore}; the
 * result then carries the `previous` X-Wing keys in `additionalKemKeys`). Derives both
 * public keys from the secret keys, runs one encapsulate/decapsulate and one sign/verify as a
 * pairwise consistency test (~10 ms), and checks the stored key ids, so a corrupted or mixed-up
 * file is rejected. Does not check the file mode (see docs/envelope.md).
 *
 * @param path - Path of the secret key file.
 * @returns Secret keys (X-Wing 32 bytes, ML-DSA-65 4032 bytes).
 * @throws {@link KeyFileError} on bad content; the Node.js fs error when the file cannot be read.
 */
export async function readSecretKeys(path: string): Promise<NodeSecretKeys> {
  const what = `secret key file ${path}`;
  const obj = parseJsonText(await readFile(path, 'utf8'), what);
  if (isFormat(obj, PUBLIC_FORMAT) || isFormat(obj, PUBLIC_FORMAT_V2)) throw new KeyFileError(`${what}: this is a public key file, not a secret key file: give this node's <nodeId>.secret.json`);
  if (isFormat(obj, SECRET_FORMAT_V2)) return keyStoreToSecretKeys(parseKeyStoreV2(obj, what));
  if (!hasExactKeys(obj, SECRET_JSON_KEYS)) {
    throw new KeyFileError(`${what}: expected exactly the fields ${SECRET_JSON_KEYS.join(', ')}`);
  }
  checkHeaderFields(obj, SECRET_FORMAT, what);
  const keys: NodeSecretKeys = {
    nodeId: obj['nodeId'] as string,
    kemKeyId: obj['kemKeyId'] as string,
    kemSecretKey: decodeField(obj, 'kemSecretKey', SUITE.lengths.kemSecretKey, what),
    sigKeyId: obj['sigKeyId'] as string,
    sigSecretKey: decodeField(obj, 'sigSecretKey', SUITE.lengths.sigSecretKey, what),
  };
  validateSecretKeys(keys, what);
  return keys;
}

/**
 * Reads and validates a `<nodeId>.public.json` file, `tidegate-node-public/1` or `/2` (see {@link publicKeysFromJson}).
 *
 * @param path - Path of the public key file.
 * @returns Public keys (X-Wing 1216 bytes, ML-DSA-65 1952 bytes).
 * @throws {@link KeyFileError} on bad content; the Node.js fs error when the file cannot be read.
 */
export async function readPublicKeys(path: string): Promise<NodePublicKeys> {
  const what = `public key file ${path}`;
  const obj = parseJsonText(await readFile(path, 'utf8'), what);
  if (isFormat(obj, SECRET_FORMAT) || isFormat(obj, SECRET_FORMAT_V2)) throw new KeyFileError(`${what}: this is a secret key file, not a public key file: give the peer's <nodeId>.public.json (a secret key file never leaves its node)`);
  if (isFormat(obj, PUBLIC_FORMAT_V2)) return parsePublicKeysV2(obj, what);
  return parsePublicKeys(obj, what);
}

// ---------------------------------------------------------------------------------------------

function parseJsonText(text: string, what: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new KeyFileError(`${what}: not valid JSON`);
  }
}

function checkHeaderFields(obj: Record<string, unknown>, format: string, what: string): void {
  if (obj['format'] !== format) throw new KeyFileError(`${what}: format must be "${format}"`);
  if (obj['kem'] !== SUITE.kem) throw new KeyFileError(`${what}: kem must be "${SUITE.kem}"`);
  if (obj['sig'] !== SUITE.sig) throw new KeyFileError(`${what}: sig must be "${SUITE.sig}"`);
  for (const f of ['nodeId', 'kemKeyId', 'sigKeyId']) {
    if (typeof obj[f] !== 'string') throw new KeyFileError(`${what}: ${f} must be a string`);
  }
}

function decodeField(obj: Record<string, unknown>, field: string, length: number, what: string): Uint8Array {
  const text = obj[field];
  const bytes = typeof text === 'string' ? b64uDecodeStrict(text) : undefined;
  if (bytes === undefined) throw new KeyFileError(`${what}: ${field} must be unpadded base64url`);
  if (bytes.length !== length) {
    throw new KeyFileError(`${what}: ${field} must be ${length} bytes, got ${bytes.length}`);
  }
  return bytes;
}

function checkBytes(value: unknown, length: number, field: string, what: string): void {
  if (!(value instanceof Uint8Array) || value.length !== length) {
    throw new KeyFileError(`${what}: ${field} must be a Uint8Array of ${length} bytes`);
  }
}

function checkKid(value: unknown, expected: string, field: string, what: string): void {
  if (typeof value !== 'string' || !KEY_ID_RE.test(value)) {
    throw new KeyFileError(`${what}: ${field} must be a 22-character base64url key id`);
  }
  if (value !== expected) throw new KeyFileError(`${what}: ${field} does not match its key`);
}

function validatePublicKeys(keys: NodePublicKeys, what: string): void {
  assertNodeId(keys.nodeId, what);
  checkBytes(keys.kemPublicKey, SUITE.lengths.kemPublicKey, 'kemPublicKey', what);
  checkBytes(keys.sigPublicKey, SUITE.lengths.sigPublicKey, 'sigPublicKey', what);
  checkKid(keys.kemKeyId, keyIdOf(keys.kemPublicKey), 'kemKeyId', what);
  checkKid(keys.sigKeyId, keyIdOf(keys.sigPublicKey), 'sigKeyId', what);
}

function validateSecretKeys(keys: NodeSecretKeys, what: string): void {
  assertNodeId(keys.nodeId, what);
  checkBytes(keys.kemSecretKey, SUITE.lengths.kemSecretKey, 'kemSecretKey', what);
  checkBytes(keys.sigSecretKey, SUITE.lengths.sigSecretKey, 'sigSecretKey', what);
  let ok = false;
  let kemPublicKey: Uint8Array | undefined;
  let sigPublicKey: Uint8Array | undefined;
  try {
    kemPublicKey = ml_kem768_x25519.getPublicKey(keys.kemSecretKey);
    sigPublicKey = ml_dsa65.getPublicKey(keys.sigSecretKey);
    ok = pairwiseConsistent(keys, kemPublicKey, sigPublicKey);
  } catch {
    ok = false;
  }
  if (!ok || kemPublicKey === undefined || sigPublicKey === undefined) {
    throw new KeyFileError(`${what}: secret key bytes are not a consistent X-Wing / ML-DSA-65 key pair`);
  }
  checkKid(keys.kemKeyId, keyIdOf(kemPublicKey), 'kemKeyId', what);
  checkKid(keys.sigKeyId, keyIdOf(sigPublicKey), 'sigKeyId', what);
}

/**
 * Pairwise consistency test (in the spirit of FIPS 140-3 PCTs): one encapsulate/decapsulate and one
 * sign/verify. Deriving the ML-DSA-65 public key only uses rho, s1 and s2 of the secret key; the
 * sign/verify also covers tr (a wrong tr makes every signature fail). Small corruptions of K or t0
 * may go unnoticed, but signatures made with such a key still verify.
 */
function pairwiseConsistent(keys: NodeSecretKeys, kemPublicKey: Uint8Array, sigPublicKey: Uint8Array): boolean {
  const { cipherText, sharedSecret } = ml_kem768_x25519.encapsulate(kemPublicKey);
  const decapsulated = ml_kem768_x25519.decapsulate(cipherText, keys.kemSecretKey);
  const kemOk = Buffer.compare(sharedSecret, decapsulated) === 0;
  sharedSecret.fill(0);
  decapsulated.fill(0);
  const msg = utf8('tidegate-env/1 pairwise consistency test');
  const opts = { context: utf8('tidegate-env/1 pct') };
  const signature = ml_dsa65.sign(msg, keys.sigSecretKey, opts);
  return kemOk && ml_dsa65.verify(signature, msg, sigPublicKey, opts);
}

// =============================================================================================
// Key stores: several keys per node, with status, for rotation (docs/envelope.md §7).
//
// Each key is a JWK of key type "AKP" (Algorithm Key Pair, draft-ietf-cose-dilithium §"The
// Algorithm Key Type"; also used for KEM keys by draft-ietf-jose-pqc-kem §"Use of AKP Key Type"):
// "alg" is required, "pub" is the public key and "priv" the private key, both base64url. For
// ML-DSA "priv" is the 32-byte seed ξ, never the expanded key (draft-ietf-cose-dilithium, "ML-DSA
// Private Key"); for X-Wing "priv" is the 32-byte decapsulation key, which is itself a seed
// (draft-connolly-cfrg-xwing-kem §5.1). "X-Wing" is not a registered JOSE "alg" value: it is the
// tidegate-env/1 KEM id (and the name in the HPKE KEM registry request of draft-connolly-cfrg-xwing-kem §7).
// "kid" is the tidegate key id of §2 (truncated SHA-256 of the raw public key), not an RFC 7638
// thumbprint, so that kids stay equal to the ones already in envelope headers.

/** Lifecycle status of a stored key (docs/envelope.md §7). */
export type KeyStatus = 'current' | 'next' | 'previous' | 'retired';

/** One key of a {@link KeyStore}. Binary fields are raw bytes; dates are ISO 8601 UTC strings. */
export interface StoredKey {
  /** Always "AKP" (draft-ietf-cose-dilithium). */
  kty: 'AKP';
  /** "X-Wing" (use "enc") or "ML-DSA-65" (use "sig"). */
  alg: 'X-Wing' | 'ML-DSA-65';
  /** "enc" for the X-Wing KEM key, "sig" for the ML-DSA-65 key (RFC 7517 §4.2). */
  use: 'enc' | 'sig';
  /** Key id of `pub` (22 base64url characters, {@link keyIdOf}). */
  kid: string;
  /** Public key: X-Wing 1216 bytes, ML-DSA-65 1952 bytes. */
  pub: Uint8Array;
  /**
   * Private key, absent once retired: X-Wing 32-byte seed; ML-DSA-65 32-byte seed ξ, or the
   * 4032-byte expanded key for a key migrated from a `tidegate-node-secret/1` file.
   */
  priv?: Uint8Array;
  /** Creation time, ISO 8601 UTC; `null` for keys migrated from a version-1 file (unknown). */
  created: string | null;
  /**
   * enc: `current` (peers seal to it) | `previous` (still decrypts) | `retired` (secret destroyed);
   * sig: `current` (signs) | `next` (published, accepted by peers, not yet signing) | `retired`.
   */
  status: KeyStatus;
  /** When the key was retired, ISO 8601 UTC; only with status `retired`. */
  retired?: string;
}

/** A node's keys: exactly one current enc key and one current sig key, plus others. */
export interface KeyStore {
  /** Node id; also the key file base name. */
  nodeId: string;
  /** Keys in creation order. */
  keys: StoredKey[];
}

/** Row of {@link listKeys}. */
export interface KeyListing {
  kid: string;
  alg: 'X-Wing' | 'ML-DSA-65';
  use: 'enc' | 'sig';
  status: KeyStatus;
  created: string | null;
  retired: string | null;
}

const SECRET_FORMAT_V2 = 'tidegate-node-secret/2';
const PUBLIC_FORMAT_V2 = 'tidegate-node-public/2';
const STORE_KEYS = ['format', 'nodeId', 'keys'] as const;
const JWK_PUBLIC_KEYS = ['kty', 'alg', 'use', 'kid', 'pub', 'created', 'status'] as const;
const ISO_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z$/;

function isoNow(now: Date): string {
  return now.toISOString();
}

function randomSeed(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(32));
}

function newKeyPair(use: 'enc' | 'sig', status: KeyStatus, now: Date, seed: Uint8Array = randomSeed()): StoredKey {
  if (seed.length !== 32) throw new RangeError('key seed must be 32 bytes');
  const priv = Uint8Array.from(seed);
  const pub = use === 'enc' ? Uint8Array.from(ml_kem768_x25519.keygen(priv).publicKey) : Uint8Array.from(ml_dsa65.keygen(priv).publicKey);
  return { kty: 'AKP', alg: use === 'enc' ? 'X-Wing' : 'ML-DSA-65', use, kid: keyIdOf(pub), pub, priv, created: isoNow(now), status };
}

/**
 * Creates a key store with one current X-Wing key and one current ML-DSA-65 key.
 *
 * @param nodeId - `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`.
 * @param options - `now` (creation time, default the current time); `seeds` (32-byte X-Wing seed and
 *   32-byte ML-DSA ξ, for tests only; default CSPRNG via `crypto.getRandomValues`).
 * @returns A new store (X-Wing priv 32 bytes, ML-DSA priv 32 bytes).
 * @throws {@link KeyFileError} for an invalid nodeId; `RangeError` for a seed that is not 32 bytes.
 */
export function createKeyStore(nodeId: string, options: { now?: Date; seeds?: { kem: Uint8Array; sig: Uint8Array } } = {}): KeyStore {
  assertNodeId(nodeId, 'createKeyStore');
  const now = options.now ?? new Date();
  return {
    nodeId,
    keys: [newKeyPair('enc', 'current', now, options.seeds?.kem), newKeyPair('sig', 'current', now, options.seeds?.sig)],
  };
}

/**
 * Rotates a store (returns a new store; the input is not modified): the current X-Wing key
 * becomes `previous` (it still decrypts until retired) and a new X-Wing key becomes `current`;
 * a new ML-DSA-65 key is added as `next` (published to peers, accepted by them, but the node keeps
 * signing with the current key until that one is retired, see docs/envelope.md §7).
 *
 * @param store - A valid store.
 * @param now - Creation time of the new keys; default now.
 * @returns The rotated store.
 * @throws {@link KeyFileError} when a `next` signing key is already pending (retire the current
 *   signing key first, which promotes it).
 */
export function rotateKeyStore(store: KeyStore, now: Date = new Date()): KeyStore {
  if (store.keys.some((k) => k.use === 'sig' && k.status === 'next')) {
    const cur = store.keys.find((k) => k.use === 'sig' && k.status === 'current');
    throw new KeyFileError(`a rotation is pending: retire the current signing key ${cur?.kid ?? '?'} first`);
  }
  const keys = store.keys.map((k) => (k.use === 'enc' && k.status === 'current' ? { ...k, status: 'previous' as const } : { ...k }));
  keys.push(newKeyPair('enc', 'current', now), newKeyPair('sig', 'next', now));
  return { nodeId: store.nodeId, keys };
}

/**
 * Retires key `kid` (returns a new store): its secret bytes are dropped from the store and its
 * status becomes `retired`. A `previous` X-Wing key stops decrypting. Retiring the `current`
 * ML-DSA-65 key promotes the `next` one to `current`. A `next` key may be retired (rotation undone
 * for signing).
 *
 * @param store - A valid store.
 * @param kid - Key id (22 base64url characters).
 * @param now - Retirement time; default now.
 * @returns The new store.
 * @throws {@link KeyFileError} for an unknown or already retired kid, the current X-Wing key
 *   (rotate first), or the current ML-DSA-65 key when no `next` key exists (rotate first).
 */
export function retireKey(store: KeyStore, kid: string, now: Date = new Date()): KeyStore {
  const target = store.keys.find((k) => k.kid === kid);
  if (target === undefined) throw new KeyFileError(`no key with id ${kid} for node ${store.nodeId}`);
  if (target.status === 'retired') throw new KeyFileError(`key ${kid} is already retired`);
  if (target.use === 'enc' && target.status === 'current') {
    throw new KeyFileError(`key ${kid} is the current X-Wing key: run "keys rotate" first`);
  }
  const next = store.keys.find((k) => k.use === 'sig' && k.status === 'next');
  if (target.use === 'sig' && target.status === 'current' && next === undefined) {
    throw new KeyFileError(`key ${kid} is the only signing key: run "keys rotate" first`);
  }
  const keys = store.keys.map((k): StoredKey => {
    if (k.kid === kid) {
      // Not zeroed here: stores are values that may share buffers with their predecessor; the
      // secret leaves the file when the new store is written (writeKeyStoreFiles).
      const { priv: _priv, ...rest } = k;
      return { ...rest, status: 'retired', retired: isoNow(now) };
    }
    if (target.use === 'sig' && target.status === 'current' && k === next) return { ...k, status: 'current' };
    return { ...k };
  });
  return { nodeId: store.nodeId, keys };
}

/**
 * The keys of a store for display: kid, alg, use, status, created, retired (ISO 8601 or null).
 * @param store - A store.
 * @returns One row per key, in store order. Contains no secret material.
 */
export function listKeys(store: KeyStore): KeyListing[] {
  return store.keys.map((k) => ({ kid: k.kid, alg: k.alg, use: k.use, status: k.status, created: k.created, retired: k.retired ?? null }));
}

/**
 * The in-memory secret keys `seal()`/`open()` use: the current X-Wing and ML-DSA-65 keys, and the
 * `previous` X-Wing keys as `additionalKemKeys` (omitted when there are none).
 *
 * @param store - A valid store.
 * @returns Secret keys (X-Wing 32 bytes, ML-DSA-65 expanded 4032 bytes).
 * @throws {@link KeyFileError} when the store lacks a current key with its secret.
 */
export function keyStoreToSecretKeys(store: KeyStore): NodeSecretKeys {
  const what = `key store of ${store.nodeId}`;
  const enc = store.keys.find((k) => k.use === 'enc' && k.status === 'current');
  const sig = store.keys.find((k) => k.use === 'sig' && k.status === 'current');
  if (enc?.priv === undefined || sig?.priv === undefined) throw new KeyFileError(`${what}: no current key with its secret`);
  const sigSecretKey = sig.priv.length === SUITE.lengths.sigSecretKey ? Uint8Array.from(sig.priv) : Uint8Array.from(ml_dsa65.keygen(sig.priv).secretKey);
  const out: NodeSecretKeys = { nodeId: store.nodeId, kemKeyId: enc.kid, kemSecretKey: Uint8Array.from(enc.priv), sigKeyId: sig.kid, sigSecretKey };
  const previous = store.keys.filter((k) => k.use === 'enc' && k.status === 'previous' && k.priv !== undefined);
  if (previous.length > 0) out.additionalKemKeys = previous.map((k) => ({ kid: k.kid, secretKey: Uint8Array.from(k.priv!) }));
  return out;
}

/**
 * The public keys peers use: current X-Wing key, current ML-DSA-65 key, and a `next` ML-DSA-65 key
 * as `additionalSigKeys` (omitted when there is none).
 * @param store - A valid store.
 * @returns Public keys (X-Wing 1216 bytes, ML-DSA-65 1952 bytes).
 * @throws {@link KeyFileError} when the store lacks a current key.
 */
export function keyStoreToPublicKeys(store: KeyStore): NodePublicKeys {
  const enc = store.keys.find((k) => k.use === 'enc' && k.status === 'current');
  const sig = store.keys.find((k) => k.use === 'sig' && k.status === 'current');
  if (enc === undefined || sig === undefined) throw new KeyFileError(`key store of ${store.nodeId}: no current key`);
  const out: NodePublicKeys = { nodeId: store.nodeId, kemKeyId: enc.kid, kemPublicKey: Uint8Array.from(enc.pub), sigKeyId: sig.kid, sigPublicKey: Uint8Array.from(sig.pub) };
  const next = store.keys.filter((k) => k.use === 'sig' && k.status === 'next');
  if (next.length > 0) out.additionalSigKeys = next.map((k) => ({ kid: k.kid, publicKey: Uint8Array.from(k.pub) }));
  return out;
}

/** JSON of one public AKP JWK in a `tidegate-node-public/2` file. */
export interface AkpPublicJwk {
  kty: 'AKP';
  alg: 'X-Wing' | 'ML-DSA-65';
  use: 'enc' | 'sig';
  kid: string;
  pub: string;
  created: string | null;
  status: 'current' | 'next';
}

/**
 * The `tidegate-node-public/2` document for peers: a JWK Set (RFC 7517 §5) with the extra members
 * `format` and `nodeId`, listing the current X-Wing key, the current ML-DSA-65 key and a `next`
 * ML-DSA-65 key if a rotation is pending. Previous and retired keys are not published.
 *
 * @param store - A valid store.
 * @returns `{ format: "tidegate-node-public/2", nodeId, keys: AkpPublicJwk[] }`, `pub` unpadded base64url.
 */
export function keyStoreToPublicJson(store: KeyStore): { format: 'tidegate-node-public/2'; nodeId: string; keys: AkpPublicJwk[] } {
  const keys: AkpPublicJwk[] = [];
  for (const k of store.keys) {
    const published = (k.use === 'enc' && k.status === 'current') || (k.use === 'sig' && (k.status === 'current' || k.status === 'next'));
    if (!published) continue;
    keys.push({ kty: 'AKP', alg: k.alg, use: k.use, kid: k.kid, pub: b64uEncode(k.pub), created: k.created, status: k.status as 'current' | 'next' });
  }
  return { format: PUBLIC_FORMAT_V2, nodeId: store.nodeId, keys };
}

function keyStoreToSecretJson(store: KeyStore): Record<string, unknown> {
  return {
    format: SECRET_FORMAT_V2,
    nodeId: store.nodeId,
    keys: store.keys.map((k) => {
      const o: Record<string, unknown> = { kty: 'AKP', alg: k.alg, use: k.use, kid: k.kid, pub: b64uEncode(k.pub) };
      if (k.priv !== undefined) o['priv'] = b64uEncode(k.priv);
      o['created'] = k.created;
      o['status'] = k.status;
      if (k.retired !== undefined) o['retired'] = k.retired;
      return o;
    }),
  };
}

function parseJwkCommon(e: unknown, allowed: readonly string[], required: readonly string[], what: string): Record<string, unknown> {
  if (typeof e !== 'object' || e === null || Array.isArray(e)) throw new KeyFileError(`${what}: each key must be a JSON object`);
  const o = e as Record<string, unknown>;
  for (const f of Object.keys(o)) if (!allowed.includes(f)) throw new KeyFileError(`${what}: unexpected key member "${f}"`);
  for (const f of required) if (!Object.hasOwn(o, f)) throw new KeyFileError(`${what}: key member "${f}" is missing`);
  if (o['kty'] !== 'AKP') throw new KeyFileError(`${what}: kty must be "AKP"`);
  const pair = `${String(o['alg'])}/${String(o['use'])}`;
  if (pair !== 'X-Wing/enc' && pair !== 'ML-DSA-65/sig') throw new KeyFileError(`${what}: alg/use must be X-Wing/enc or ML-DSA-65/sig`);
  if (o['created'] !== null && (typeof o['created'] !== 'string' || !ISO_RE.test(o['created']))) {
    throw new KeyFileError(`${what}: created must be an ISO 8601 UTC time or null`);
  }
  return o;
}

function parseStoredKey(e: unknown, what: string): StoredKey {
  const o = parseJwkCommon(e, [...JWK_PUBLIC_KEYS, 'priv', 'retired'], JWK_PUBLIC_KEYS, what);
  const use = o['use'] as 'enc' | 'sig';
  const status = o['status'];
  const okStatus = use === 'enc' ? ['current', 'previous', 'retired'] : ['current', 'next', 'retired'];
  if (typeof status !== 'string' || !okStatus.includes(status)) throw new KeyFileError(`${what}: status of a ${use} key must be one of ${okStatus.join(', ')}`);
  const pub = decodeField(o, 'pub', use === 'enc' ? SUITE.lengths.kemPublicKey : SUITE.lengths.sigPublicKey, what);
  checkKid(o['kid'], keyIdOf(pub), 'kid', what);
  const key: StoredKey = { kty: 'AKP', alg: o['alg'] as StoredKey['alg'], use, kid: o['kid'] as string, pub, created: o['created'] as string | null, status: status as KeyStatus };
  if (status === 'retired') {
    if (Object.hasOwn(o, 'priv')) throw new KeyFileError(`${what}: a retired key must not have priv`);
    if (typeof o['retired'] !== 'string' || !ISO_RE.test(o['retired'])) throw new KeyFileError(`${what}: a retired key needs a retired time`);
    key.retired = o['retired'];
    return key;
  }
  if (Object.hasOwn(o, 'retired')) throw new KeyFileError(`${what}: only retired keys have a retired time`);
  const privText = o['priv'];
  const priv = typeof privText === 'string' ? b64uDecodeStrict(privText) : undefined;
  if (priv === undefined) throw new KeyFileError(`${what}: priv must be unpadded base64url`);
  let derived: Uint8Array | undefined;
  try {
    if (use === 'enc' && priv.length === SUITE.lengths.kemSecretKey) derived = ml_kem768_x25519.getPublicKey(priv);
    else if (use === 'sig' && priv.length === SUITE.lengths.sigSeed) derived = ml_dsa65.keygen(priv).publicKey;
    else if (use === 'sig' && priv.length === SUITE.lengths.sigSecretKey) derived = ml_dsa65.getPublicKey(priv);
  } catch {
    derived = undefined;
  }
  if (derived === undefined) throw new KeyFileError(`${what}: priv has the wrong length for ${key.alg}`);
  if (Buffer.compare(derived, pub) !== 0) throw new KeyFileError(`${what}: priv of key ${key.kid} does not match its pub`);
  key.priv = priv;
  return key;
}

function parseKeyStoreV2(obj: unknown, what: string): KeyStore {
  if (!hasExactKeys(obj, STORE_KEYS)) throw new KeyFileError(`${what}: expected exactly the fields ${STORE_KEYS.join(', ')}`);
  if (obj['format'] !== SECRET_FORMAT_V2) throw new KeyFileError(`${what}: format must be "${SECRET_FORMAT_V2}"`);
  assertNodeId(obj['nodeId'], what);
  const list = obj['keys'];
  if (!Array.isArray(list) || list.length === 0 || list.length > 1000) throw new KeyFileError(`${what}: keys must be a non-empty array`);
  const store: KeyStore = { nodeId: obj['nodeId'], keys: list.map((e) => parseStoredKey(e, what)) };
  validateStoreShape(store, what);
  // Pairwise consistency of the keys in use (one encaps/decaps, one sign/verify), as for version 1.
  validateSecretKeys(keyStoreToSecretKeys(store), what);
  return store;
}

function validateStoreShape(store: { nodeId: string; keys: ReadonlyArray<{ kid: string; use: string; status: string }> }, what: string): void {
  const count = (use: string, status: string): number => store.keys.filter((k) => k.use === use && k.status === status).length;
  if (count('enc', 'current') !== 1) throw new KeyFileError(`${what}: exactly one current X-Wing key is required`);
  if (count('sig', 'current') !== 1) throw new KeyFileError(`${what}: exactly one current ML-DSA-65 key is required`);
  if (count('sig', 'next') > 1) throw new KeyFileError(`${what}: at most one next ML-DSA-65 key is allowed`);
  if (new Set(store.keys.map((k) => k.kid)).size !== store.keys.length) throw new KeyFileError(`${what}: duplicate key ids`);
}

function parsePublicKeysV2(obj: Record<string, unknown>, what: string): NodePublicKeys {
  if (!hasExactKeys(obj, STORE_KEYS)) throw new KeyFileError(`${what}: expected exactly the fields ${STORE_KEYS.join(', ')}`);
  assertNodeId(obj['nodeId'], what);
  const list = obj['keys'];
  if (!Array.isArray(list) || list.length === 0 || list.length > 16) throw new KeyFileError(`${what}: keys must be a non-empty array`);
  const keys = list.map((e) => {
    const o = parseJwkCommon(e, JWK_PUBLIC_KEYS, JWK_PUBLIC_KEYS, what);
    const use = o['use'] as 'enc' | 'sig';
    const okStatus = use === 'enc' ? ['current'] : ['current', 'next'];
    if (typeof o['status'] !== 'string' || !okStatus.includes(o['status'])) throw new KeyFileError(`${what}: published ${use} keys must have status ${okStatus.join(' or ')}`);
    const pub = decodeField(o, 'pub', use === 'enc' ? SUITE.lengths.kemPublicKey : SUITE.lengths.sigPublicKey, what);
    checkKid(o['kid'], keyIdOf(pub), 'kid', what);
    return { kid: o['kid'] as string, use, status: o['status'], pub };
  });
  validateStoreShape({ nodeId: obj['nodeId'], keys }, what);
  const enc = keys.find((k) => k.use === 'enc')!;
  const sig = keys.find((k) => k.use === 'sig' && k.status === 'current')!;
  const out: NodePublicKeys = { nodeId: obj['nodeId'], kemKeyId: enc.kid, kemPublicKey: enc.pub, sigKeyId: sig.kid, sigPublicKey: sig.pub };
  const next = keys.filter((k) => k.use === 'sig' && k.status === 'next');
  if (next.length > 0) out.additionalSigKeys = next.map((k) => ({ kid: k.kid, publicKey: k.pub }));
  return out;
}

/**
 * Reads a secret key file as a {@link KeyStore}: `tidegate-node-secret/2`, or a
 * `tidegate-node-secret/1` single-key file, converted in memory (its keys become `current` with
 * `created: null`; the ML-DSA key keeps its 4032-byte expanded form because version 1 never stored ξ).
 * All checks of {@link readSecretKeys} apply (kids, lengths, pairwise consistency).
 *
 * @param path - Secret key file.
 * @returns The store.
 * @throws {@link KeyFileError} on bad content; the Node.js fs error when the file cannot be read.
 */
export async function readKeyStore(path: string): Promise<KeyStore> {
  const what = `secret key file ${path}`;
  const obj = parseJsonText(await readFile(path, 'utf8'), what);
  if (isFormat(obj, SECRET_FORMAT_V2)) return parseKeyStoreV2(obj, what);
  const v1 = await readSecretKeys(path); // validates version 1 (or throws)
  return {
    nodeId: v1.nodeId,
    keys: [
      { kty: 'AKP', alg: 'X-Wing', use: 'enc', kid: v1.kemKeyId, pub: ml_kem768_x25519.getPublicKey(v1.kemSecretKey), priv: v1.kemSecretKey, created: null, status: 'current' },
      { kty: 'AKP', alg: 'ML-DSA-65', use: 'sig', kid: v1.sigKeyId, pub: ml_dsa65.getPublicKey(v1.sigSecretKey), priv: v1.sigSecretKey, created: null, status: 'current' },
    ],
  };
}

/**
 * Writes `<dir>/<nodeId>.secret.json` (`tidegate-node-secret/2`, mode 0600) and
 * `<dir>/<nodeId>.public.json` ({@link keyStoreToPublicJson}, mode 0644). Each file is written to a
 * temporary file in `dir` (created 0600 / 0644, exclusive), fsync-ed, then renamed over the target,
 * so a crash never leaves a half-written key file. Secret bytes are never logged.
 *
 * @param dir - Existing directory.
 * @param store - A valid store (checked as on reading).
 * @param options - `overwrite` (default false): replace existing files; otherwise fail with `EEXIST`.
 * @returns The two paths written.
 * @throws {@link KeyFileError} for an invalid store; the Node.js fs error (`EEXIST`, `ENOENT`, …).
 */
export async function writeKeyStoreFiles(dir: string, store: KeyStore, options: { overwrite?: boolean } = {}): Promise<{ secretPath: string; publicPath: string }> {
  const what = `key store of ${store.nodeId}`;
  assertNodeId(store.nodeId, what);
  validateStoreShape(store, what);
  const secretJson = keyStoreToSecretJson(store);
  parseKeyStoreV2(secretJson, what); // full validation before touching the disk
  const secretPath = join(dir, `${store.nodeId}.secret.json`);
  const publicPath = join(dir, `${store.nodeId}.public.json`);
  if (options.overwrite !== true) {
    for (const p of [secretPath, publicPath]) {
      const exists = await stat(p).then(
        () => true,
        (err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? false : Promise.reject(err)),
      );
      if (exists) throw Object.assign(new Error(`EEXIST: file already exists, ${p}`), { code: 'EEXIST', path: p });
    }
  }
  await writeAtomic(secretPath, `${JSON.stringify(secretJson, null, 2)}\n`, 0o600);
  await writeAtomic(publicPath, `${JSON.stringify(keyStoreToPublicJson(store), null, 2)}\n`, 0o644);
  return { secretPath, publicPath };
}

async function writeAtomic(path: string, text: string, mode: number): Promise<void> {
  const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeWithMode(tmp, text, 'wx', mode);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
