/**
 * Public API of the post-quantum envelope: tidegate-env/2 (written) and tidegate-env/1 (read), see docs/envelope.md.
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
export { contentKeyCommitment, open, peekHeader, seal, sealV1, signatureInput, signatureInputV2, verifySignature } from './envelope.ts';
export type { EnvelopeHeader, EnvelopeHeaderV2, OpenedHeaderV2, OpenOptions, OpenResult, RecipientId, SealInput, SealRandom } from './envelope.ts';
// sealV1WithRandomness / sealV2WithRandomness (fixed randomness, for test vectors only) are deliberately NOT re-exported.
export { ENVELOPE_VERSIONS, SUITE, SUITE_V2 } from './suite.ts';
export type { EnvelopeVersion } from './suite.ts';
export { PeerKeyring } from './keyring.ts';
export type { PeerKeyFile, KeyringReloadResult } from './keyring.ts';
export { EnvelopeCryptoPool, sharedCryptoPool } from './pool.ts';
