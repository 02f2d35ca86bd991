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
} from './keys.ts';
export type { NodePublicKeys, NodePublicKeysJson, NodeSecretKeys } from './keys.ts';
export { open, peekHeader, seal, signatureInput } from './envelope.ts';
export type { EnvelopeHeader, OpenResult, SealInput } from './envelope.ts';
export { SUITE } from './suite.ts';
export { EnvelopeCryptoPool, sharedCryptoPool } from './pool.ts';
