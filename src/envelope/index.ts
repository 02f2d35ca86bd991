/**
 * Public API of the tidegate-env/1 post-quantum envelope (see docs/envelope.md).
 * Named re-exports only.
 */
export { ENVELOPE_ERROR_CODES, EnvelopeError, KeyFileError } from './errors.ts';
export type { EnvelopeErrorCode } from './errors.ts';
export {
  generateNodeKeys,
  keyIdOf,
  publicKeysFromJson,
  publicKeysToJson,
  readPublicKeys,
  readSecretKeys,
  writeKeyFiles,
  createKeyStore,
  rotateKeyStore,
  retireKey,
  listKeys,
  keyStoreToSecretKeys,
  keyStoreToPublicKeys,
  keyStoreToPublicJson,
  readKeyStore,
  writeKeyStoreFiles,
} from './keys.ts';
export type { AkpPublicJwk, KeyListing, KeyStatus, KeyStore, NodePublicKeys, NodePublicKeysJson, NodeSecretKeys, StoredKey } from './keys.ts';
export { ReplayGuard } from './replay.ts';
export type { ReplayGuardOptions, ReplayKey } from './replay.ts';
export { open, peekHeader, seal, signatureInput } from './envelope.ts';
export type { EnvelopeHeader, OpenResult, SealInput, SealRandom } from './envelope.ts';
// sealWithRandomness (fixed randomness, for test vectors only) is deliberately NOT re-exported.
export { SUITE } from './suite.ts';
export { EnvelopeCryptoPool, sharedCryptoPool } from './pool.ts';
