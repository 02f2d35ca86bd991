/**
 * Node key pairs for tidegate-env/1: one X-Wing KEM key pair (receiving) and one ML-DSA-65 key
 * pair (signing) per node, their key ids, and their on-disk / in-config JSON forms.
 *
 * Key id ("kid"): base64url (RFC 4648 §5, unpadded) of the first 16 bytes of SHA-256 over the raw
 * public key bytes, i.e. 22 characters. This is in the spirit of RFC 7638 JWK thumbprints, but is
 * taken over the raw key encoding (FIPS 203 / FIPS 204 / X-Wing byte strings) rather than a JWK,
 * and truncated to 128 bits. The KEM key and the signature key each have their own kid.
 */
import { open as fsOpen, readFile } from 'node:fs/promises';
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
 * Parses and validates public keys in the JSON form produced by {@link publicKeysToJson}.
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
  return parsePublicKeys(typeof json === 'string' ? parseJsonText(json, what) : json, what);
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
 * Reads and validates a `<nodeId>.secret.json` file written by {@link writeKeyFiles}. Derives both
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
 * Reads and validates a `<nodeId>.public.json` file (see {@link publicKeysFromJson}).
 *
 * @param path - Path of the public key file.
 * @returns Public keys (X-Wing 1216 bytes, ML-DSA-65 1952 bytes).
 * @throws {@link KeyFileError} on bad content; the Node.js fs error when the file cannot be read.
 */
export async function readPublicKeys(path: string): Promise<NodePublicKeys> {
  const what = `public key file ${path}`;
  return parsePublicKeys(parseJsonText(await readFile(path, 'utf8'), what), what);
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
