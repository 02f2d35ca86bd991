/**
 * `tidegate serve --config FILE`: runs one node in front of one hospital FHIR server.
 */
import pino from 'pino';
import { loadNodeConfig } from '../config/config.ts';
import { assertAuthOrInsecureDev } from '../auth/config.ts';
import { createAuth } from '../auth/setup.ts';
import { KeyFileError, PeerKeyring, readPublicKeys, readSecretKeys } from '../envelope/index.ts';
import { assertSecretKeyFileMode } from '../envelope/keys.ts';
import { logReloadFailure } from '../ops/router.ts';
import { FileCursorStore, HospitalClient } from '../hospital/index.ts';
import { loadMergePolicy } from '../merge/policy.ts';
import { TidegateNode } from '../node/node.ts';
import { openConfiguredStore } from '../store/open.ts';
import { SqliteStore } from '../store/sqlite-store.ts';
import { StoreIdMap } from '../store/id-map.ts';
import { RevocationList } from '../security/index.ts';
import { AuditTrail } from '../audit/index.ts';
import { auditRotationOf } from '../audit/cli.ts';
import { hardeningFromConfig } from '../fhir/hardening.ts';
import { displayPath, loadMappingOrThrow } from '../mapping/load.ts';
import { LiveMapping } from '../mapping/live.ts';
import { logProjectionResend, openProjectionSqlite } from '../mapping/projection.ts';
import { createServer } from 'node:net';
import { readRedisTls, readServerTls } from '../transport/tls.ts';

/**
 * A file-system error reading a file the config names, as `setting: cannot read /path (ENOENT)`
 * (the setting to fix, not a bare ENOENT); other errors (bad key file content) pass unchanged.
 * @param setting - the config key path, e.g. `secretKeyFile`, `peers[0].publicKeyFile`.
 * @param file - the absolute path read.
 * @param err - what the read threw.
 */
function settingReadError(setting: string, file: string, err: unknown): unknown {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  // bad key file content (KeyFileError: names the file and the problem, never key bytes): name the setting too
  if (err instanceof KeyFileError) return new KeyFileError(`${setting}: ${err.message}`, { cause: err });
  if (typeof code !== 'string' || !/^E[A-Z]+$/.test(code)) return err;
  return new Error(`${setting}: cannot read ${file} (${code}); paths in the config file are relative to its folder (check with \`tidegate config check\`)`, { cause: err });
}

/**
 * Starts a node from a configuration file and runs until SIGINT/SIGTERM. SIGHUP (or
 * `POST /admin/reload`) re-reads the mapping file and the peers' public key files without a
 * restart, all or nothing (src/mapping/live.ts `nodeReloader`); the node config itself is not
 * reloaded. The HTTP port is checked free before anything is opened (nothing gossips when it is taken).
 * @param configPath - node configuration JSON (see config/node-a.example.json).
 * @param opts.insecureDev - `--insecure-dev`: allowed only without `auth` and on a loopback `listen.host`.
 * @throws Error when the config has no `auth` and `--insecure-dev` on loopback was not given, when the config, key files or policy are invalid, the store file or PostgreSQL
 *   cannot be opened, or Redis is unreachable.
 */
export async function serve(configPath: string, opts: { insecureDev?: boolean } = {}): Promise<void> {
  const cfg = loadNodeConfig(configPath);
  // Refuse to start an open node anywhere but on loopback, before anything is opened (issue 7, "Open mode").
  const authMode = assertAuthOrInsecureDev(cfg, cfg.listen.host, opts.insecureDev === true);
  const log = pino({ level: cfg.logLevel });
  if (authMode === 'insecure-dev') log.warn({ host: cfg.listen.host }, 'INSECURE DEV MODE: no client authorization; FHIR API bound to loopback only');
  // The mapping file (docs/mappings.md): an invalid one stops the start, with `tidegate config check`'s messages.
  const mappingOptions = { peers: cfg.peers.map((p) => p.nodeId), logger: log };
  const mapping = cfg.mappingFile ? new LiveMapping(loadMappingOrThrow(cfg.mappingFile, mappingOptions), mappingOptions) : undefined;
  mapping?.onReload((next) => () => log.info({ file: displayPath(next.file) }, 'mapping reloaded'));
  // A port in use stops the start here, before Redis, the store or gossip are touched.
  await assertPortFree(cfg.listen.port, cfg.listen.host);
  // HTTPS certificate and key, read (and the key file's mode checked) before anything is opened
  const serverTls = cfg.tls ? readServerTls(cfg.tls) : undefined;
  // A secret key file group or others may read is refused (src/envelope/keys.ts assertSecretKeyFileMode).
  const secretKeys = await Promise.resolve().then(() => { assertSecretKeyFileMode(cfg.secretKeyFile); return readSecretKeys(cfg.secretKeyFile); }).catch((err: unknown) => {
    throw settingReadError('secretKeyFile', cfg.secretKeyFile, err);
  });
  if (secretKeys.nodeId !== cfg.nodeId) throw new Error(`secretKeyFile: ${cfg.secretKeyFile} is ${secretKeys.nodeId}'s secret key file; give ${cfg.nodeId}'s (the config's nodeId is ${cfg.nodeId})`);
  // Peers' public keys stay reloadable (SIGHUP, POST /admin/reload): the keyring updates these objects in place.
  const peerTls = (p: (typeof cfg.peers)[number]) => p.redisTls ?? (/^rediss:\/\//i.test(p.redisUrl) ? cfg.redisTls : undefined);
  const keyring = await PeerKeyring.load(
    cfg.peers.map((p) => ({ nodeId: p.nodeId, publicKeyFile: p.publicKeyFile })),
    (file) =>
      readPublicKeys(file).catch((err: unknown) => {
        throw settingReadError(`peers[${cfg.peers.findIndex((p) => p.publicKeyFile === file)}].publicKeyFile`, file, err);
      }),
  );
  const peers = cfg.peers.map((p) => ({
    nodeId: p.nodeId,
    redisUrl: p.redisUrl,
    publicKeys: keyring.get(p.nodeId)!,
    ...(p.resourceTypes ? { resourceTypes: p.resourceTypes } : {}),
    ...(p.maySend ? { maySend: p.maySend } : {}),
    ...(p.withheldLabels ? { withheldLabels: p.withheldLabels } : {}),
    // rediss:// with the CA pinned (docs/security.md "Hardened deployment")
    ...(peerTls(p) ? { redisTls: readRedisTls(peerTls(p)!) } : {}),
  }));
  // Revoked token ids (breach response), kept in the node's Redis so a restart does not forget them.
  const revocations = new RevocationList({ redisUrl: cfg.redisUrl, key: `${cfg.queuePrefix}:revoked-jti-${cfg.nodeId}` });
  await revocations.load();
  const reloadKeys = async (): Promise<unknown> => {
    const result = await keyring.reload();
    log.info({ changed: result.changed, unchanged: result.unchanged.length }, 'peer public keys reloaded');
    return result;
  };
  const onHup = (): void => {
    // mapping issues are config text (file:line:column and message), never resource content; as POST /admin/reload logs them
    node.reload!().catch((err: unknown) => logReloadFailure(log, err));
  };
  // Durable by default (config `storeFile`, or `storeUrl` for PostgreSQL): a write is answered
  // only once it is on disk.
  // A SQLite store file is sealed at rest with the node's keys (docs/storage.md "Encryption at rest").
  const opened = await openConfiguredStore(
    cfg,
    { onError: (err) => log.error({ err: { name: err.name, code: (err as { code?: string }).code } }, 'resource store: PostgreSQL batch or recovery failed') },
    { secretKeys },
  );
  log.info({ store: opened.kind, location: opened.location }, 'resource store opened');
  // Redaction: each redacted peer's projection store, a sealed SQLite file next to a SQLite store
  // (`<storeFile>.projection-<peer>.<epoch>.sqlite`); in memory for a memory or PostgreSQL store,
  // so each start is a new epoch and those peers get every projected resource again: said once here.
  const projectionClosers: (() => void)[] = [];
  const projectionStore =
    opened.kind === 'sqlite'
      ? (peerId: string) => {
          const p = openProjectionSqlite(opened.location, peerId, { secretKeys });
          projectionClosers.push(p.close);
          log.info({ peer: peerId, epoch: p.epoch }, 'projection store opened');
          return p;
        }
      : undefined;
  if (!projectionStore) logProjectionResend(log, opened.kind, mapping?.current);
  // The hash-chained audit trail (docs/security.md "Audit trail"); it continues the chain on disk.
  const audit = await AuditTrail.open(cfg.auditFile!, { nodeId: cfg.nodeId, log, ...auditRotationOf(cfg.audit) });
  log.info({ audit: cfg.auditFile, head: audit.head.seq }, 'audit trail opened');
  const node = new TidegateNode({
    store: opened.store,
    secretKeys,
    peers,
    redisUrl: cfg.redisUrl,
    queuePrefix: cfg.queuePrefix,
    // The id map persists (sealed) in the SQLite store; otherwise in memory.
    hospital: new HospitalClient({ baseUrl: cfg.hospitalFhirUrl, ...(opened.store instanceof SqliteStore ? { idMap: new StoreIdMap(opened.store) } : {}), ...(mapping ? { mapping } : {}) }),
    ...(mapping ? { mapping } : {}),
    policy: cfg.mergePolicyFile ? loadMergePolicy(cfg.mergePolicyFile) : loadMergePolicy(),
    logger: log,
    antiEntropyIntervalMs: cfg.antiEntropyIntervalMs,
    maxClockSkewMs: cfg.maxClockSkewMs,
    hospitalPollIntervalMs: cfg.hospitalPollIntervalMs,
    ...(cfg.hospitalPollTypes ? { hospitalPollTypes: cfg.hospitalPollTypes } : {}),
    ...(cfg.hospitalCursorFile ? { hospitalCursor: new FileCursorStore(cfg.hospitalCursorFile) } : {}),
    hospitalBackoffMs: cfg.hospitalRetryBaseMs,
    hospitalMaxBackoffMs: cfg.hospitalRetryMaxMs,
    reloadKeys,
    ...(cfg.auth ? { auth: createAuth(cfg.auth, { log, isRevoked: revocations.isRevoked }) } : {}),
    security: { config: cfg.security, revocations },
    audit,
    // hostile-input limits, rate limit, HTTP timeouts, HTTPS (docs/security.md "Hostile input")
    hardening: hardeningFromConfig(cfg.http).hardening,
    server: { ...hardeningFromConfig(cfg.http).timeouts, ...(serverTls ? { tls: serverTls } : {}) },
    ...(projectionStore ? { projectionStore } : {}),
  });
  try {
    process.on('SIGHUP', onHup); // before start: an early SIGHUP must not kill the node
    await node.start(cfg.listen.port, cfg.listen.host);
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
      // Run by a launcher (scripts/node.mjs, bin/tidegate.js) that was killed with SIGKILL, which it
      // cannot forward: re-parented means the launcher is gone, so shut down as on SIGTERM rather
      // than run on orphaned, holding the port, the inbox and the store.
      const parent = process.ppid;
      if (parent > 1) {
        const watch = setInterval(() => {
          if (process.ppid === parent) return;
          clearInterval(watch);
          log.warn({ parent }, 'the launcher process is gone: shutting down');
          resolve();
        }, 1000);
        watch.unref();
      }
    });
    log.info('shutting down');
    await node.stop();
  } finally {
    process.off('SIGHUP', onHup);
    await revocations.close();
    await audit.close();
    for (const close of projectionClosers) close();
    await opened.close();
  }
}

/**
 * Fails when `port` cannot be bound on `host` (in use, or not allowed), by binding it and closing
 * it again. A small window remains before the node binds it for good; the node's own listen error
 * is still reported then.
 * @param port - TCP port; 0 (any free port) is not checked.
 * @param host - interface, as in the config's `listen.host`.
 * @throws Error `listen: port P on H is not available (EADDRINUSE)`.
 */
async function assertPortFree(port: number, host: string): Promise<void> {
  if (port === 0) return;
  await new Promise<void>((resolve, reject) => {
    const s = createServer();
    s.once('error', (err: NodeJS.ErrnoException) => reject(new Error(`listen: port ${port} on ${host} is not available (${err.code ?? err.message})`, { cause: err })));
    s.listen({ port, host, exclusive: true }, () => s.close(() => resolve()));
  });
}
