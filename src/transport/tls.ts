/**
 * TLS for the node's two transports (docs/security.md "Hardened deployment"):
 * - the FHIR API over HTTPS when a certificate is configured (config `tls`), optionally with
 *   client certificates (mutual TLS) when a client CA is given;
 * - peers' Redis over `rediss://` with the CA pinned (config `redisTls`): only certificates issued
 *   by the configured CA are accepted, not the system's public roots.
 */
import { readFileSync, statSync } from 'node:fs';
import type { SecureContextOptions } from 'node:tls';

/** Config `tls`: PEM file paths (absolute once loaded by config.ts). */
export interface ServerTlsFiles {
  /** Server certificate chain (leaf first, then intermediates), PEM. */
  certFile: string;
  /** Private key of the certificate, PEM; must not be readable by group or others (mode 0600 or 0400). */
  keyFile: string;
  /** CA certificates of client certificates, PEM; when set, every client must present one (mutual TLS). */
  caFile?: string | undefined;
}

/** Options handed to `https.createServer` (node:tls `SecureContextOptions` and `TlsOptions`). */
export interface ServerTls {
  cert: string;
  key: string;
  ca?: string;
  requestCert?: boolean;
  rejectUnauthorized?: boolean;
  minVersion: 'TLSv1.2' | 'TLSv1.3';
}

/** Raised for an unusable TLS configuration. `code` is stable. */
export class TlsConfigError extends Error {
  readonly code: 'ERR_TLS_KEY_FILE_MODE' | 'ERR_TLS_FILE' | 'ERR_TLS_CA_WITHOUT_TLS';
  override readonly name = 'TlsConfigError';
  /**
   * @param code - stable code.
   * @param message - what is wrong (names the file, never its content).
   */
  constructor(code: TlsConfigError['code'], message: string) {
    super(message);
    this.code = code;
  }
}

function readPem(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new TlsConfigError('ERR_TLS_FILE', `Cannot read the ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/**
 * Refuses a private-key file that group or others may read (as OpenSSH does for its keys).
 * @param path - the key file.
 * @throws TlsConfigError `ERR_TLS_KEY_FILE_MODE` when `mode & 0o077` is not 0 (POSIX only).
 */
export function assertPrivateKeyFileMode(path: string): void {
  if (process.platform === 'win32') return;
  let mode: number;
  try {
    mode = statSync(path).mode;
  } catch (err) {
    throw new TlsConfigError('ERR_TLS_FILE', `Cannot stat the TLS key file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if ((mode & 0o077) !== 0) throw new TlsConfigError('ERR_TLS_KEY_FILE_MODE', `TLS key file ${path} is readable by group or others (mode ${(mode & 0o777).toString(8)}); chmod 600 it`);
}

/**
 * Reads the FHIR API's certificate, key and optional client CA for `https.createServer`. TLS 1.2
 * is the minimum (RFC 9325 §3.1.1); with `caFile`, clients must present a certificate it issued.
 * @param files - see {@link ServerTlsFiles}.
 * @returns Server TLS options.
 * @throws TlsConfigError when a file cannot be read or the key file's mode lets others read it.
 */
export function readServerTls(files: ServerTlsFiles): ServerTls {
  assertPrivateKeyFileMode(files.keyFile);
  const tls: ServerTls = { cert: readPem(files.certFile, 'TLS certificate file'), key: readPem(files.keyFile, 'TLS key file'), minVersion: 'TLSv1.2' };
  if (files.caFile) {
    tls.ca = readPem(files.caFile, 'TLS client CA file');
    tls.requestCert = true;
    tls.rejectUnauthorized = true;
  }
  return tls;
}

/** TLS of a Redis connection: the pinned CA (PEM text), and an optional client certificate. */
export interface RedisTls {
  /** CA certificate(s), PEM: the only roots the server's certificate may chain to. */
  ca: string;
  /** Client certificate and key, PEM, for Redis servers with `tls-auth-clients yes`. */
  cert?: string;
  key?: string;
}

/** Config `redisTls`: PEM file paths. */
export interface RedisTlsFiles {
  caFile: string;
  certFile?: string | undefined;
  keyFile?: string | undefined;
}

/**
 * Reads a Redis TLS configuration.
 * @param files - CA file, and optionally a client certificate and key (the key file must be 0600).
 * @returns The PEM texts.
 * @throws TlsConfigError when a file cannot be read or the key file's mode lets others read it.
 */
export function readRedisTls(files: RedisTlsFiles): RedisTls {
  const tls: RedisTls = { ca: readPem(files.caFile, 'Redis CA file') };
  if (files.certFile) tls.cert = readPem(files.certFile, 'Redis client certificate file');
  if (files.keyFile) {
    assertPrivateKeyFileMode(files.keyFile);
    tls.key = readPem(files.keyFile, 'Redis client key file');
  }
  return tls;
}

/**
 * The ioredis options that pin a Redis connection's CA. ioredis turns `rediss://` into TLS with the
 * system's roots; this replaces them with `tls.ca` only, and keeps certificate and host-name checks
 * on (`rejectUnauthorized`, Node's `checkServerIdentity`).
 * @param redisUrl - the connection URL.
 * @param tls - the pinned CA (and client certificate); undefined: no options.
 * @returns `{ tls: { ca, rejectUnauthorized: true, … } }`, or `{}` without `tls`.
 * @throws TlsConfigError `ERR_TLS_CA_WITHOUT_TLS` when a CA is given for a plain `redis://` URL
 *   (the pin would protect nothing).
 */
export function redisTlsOptions(redisUrl: string, tls: RedisTls | undefined): { tls?: SecureContextOptions & { rejectUnauthorized: true } } {
  if (!tls) return {};
  if (!/^rediss:\/\//i.test(redisUrl)) throw new TlsConfigError('ERR_TLS_CA_WITHOUT_TLS', 'A Redis CA is configured for a redis:// URL; use rediss://');
  return { tls: { ca: [tls.ca], rejectUnauthorized: true, ...(tls.cert ? { cert: tls.cert } : {}), ...(tls.key ? { key: tls.key } : {}) } };
}
