/**
 * The verification keys of access tokens: a JWK Set from a local file, or from the authorization
 * server's `jwks_uri` (cached and refreshed by jose's `createRemoteJWKSet`).
 * JWK Set format: RFC 7517 §5; key selection by `kid`/`alg`/`kty`: jose.
 */
import { readFileSync } from 'node:fs';
import { createLocalJWKSet, createRemoteJWKSet } from 'jose';
import type { JSONWebKeySet, JWTVerifyGetKey } from 'jose';

/** Members of a JWK that only private or symmetric keys have (RFC 7518 §6.2.2, §6.3.2, §6.4.1). */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k', 'priv'];

/**
 * Checks that a JWK Set holds public asymmetric keys only. A private key in a verification key set
 * is a leaked secret; a symmetric (`kty: "oct"`) key would turn verification into shared-secret
 * HMAC, which this node never accepts.
 * @param jwks - the parsed JSON.
 * @param where - where it came from, for the message.
 * @returns The same object, typed.
 * @throws Error naming the offending key index when the set is malformed, empty, holds a private or
 *   symmetric key.
 */
export function checkPublicKeySet(jwks: unknown, where: string): JSONWebKeySet {
  if (typeof jwks !== 'object' || jwks === null || !Array.isArray((jwks as { keys?: unknown }).keys)) throw new Error(`${where} is not a JWK Set ({"keys": [...]})`);
  const keys = (jwks as { keys: unknown[] }).keys;
  if (keys.length === 0) throw new Error(`${where} holds no keys`);
  keys.forEach((k, i) => {
    if (typeof k !== 'object' || k === null) throw new Error(`${where}: keys[${i}] is not a JWK`);
    const jwk = k as Record<string, unknown>;
    if (jwk.kty === 'oct') throw new Error(`${where}: keys[${i}] is a symmetric (oct) key; only public asymmetric keys are accepted`);
    const secret = PRIVATE_MEMBERS.find((m) => m in jwk);
    if (secret) throw new Error(`${where}: keys[${i}] contains private key material ("${secret}"); give the public keys only`);
  });
  return jwks as JSONWebKeySet;
}

/**
 * A key resolver over a fixed JWK Set.
 * @param jwks - public keys (checked with {@link checkPublicKeySet}).
 * @throws Error as {@link checkPublicKeySet}.
 */
export function localKeySet(jwks: unknown): JWTVerifyGetKey {
  return createLocalJWKSet(checkPublicKeySet(jwks, 'JWK Set'));
}

/**
 * A key resolver over a JWK Set file, read once (restart the node to pick up a new file).
 * @param path - absolute path of the JSON file.
 * @throws Error when the file cannot be read or parsed, or as {@link checkPublicKeySet}.
 */
export function fileKeySet(path: string): JWTVerifyGetKey {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new Error(`Cannot read JWK Set file ${path}: ${(err as Error).message}`);
  }
  return createLocalJWKSet(checkPublicKeySet(json, `JWK Set file ${path}`));
}

/** Cache policy of {@link remoteKeySet}, ms. */
export interface RemoteKeySetOptions {
  /** Keep a fetched set this long before refetching (default 600000 = 10 min). */
  cacheMaxAgeMs?: number;
  /** An unknown `kid` triggers a refetch at most this often (default 30000). */
  cooldownMs?: number;
  /** HTTP timeout of one fetch (default 5000). */
  timeoutMs?: number;
}

/**
 * A key resolver over the authorization server's `jwks_uri`: fetched on first use, cached for
 * `cacheMaxAgeMs`, refetched when a token names an unknown `kid` (key rotation) at most every
 * `cooldownMs`. Fetch failures surface as jose errors (`ERR_JWKS_TIMEOUT`, `ERR_JOSE_GENERIC`) or
 * fetch's `TypeError`, which the verifier answers 503.
 * @param url - https URL (http only on loopback; enforced by the config schema).
 */
export function remoteKeySet(url: string, opts: RemoteKeySetOptions = {}): JWTVerifyGetKey {
  return createRemoteJWKSet(new URL(url), {
    cacheMaxAge: opts.cacheMaxAgeMs ?? 600_000,
    cooldownDuration: opts.cooldownMs ?? 30_000,
    timeoutDuration: opts.timeoutMs ?? 5_000,
  });
}
