/**
 * `tidegate serve --config FILE`: runs one node in front of one hospital FHIR server.
 */
import pino from 'pino';
import { loadNodeConfig } from '../config/config.ts';
import { readPublicKeys, readSecretKeys } from '../envelope/index.ts';
import { FileCursorStore, HospitalClient } from '../hospital/index.ts';
import { loadMergePolicy } from '../merge/policy.ts';
import { TidegateNode } from '../node/node.ts';
import { openStore } from '../store/open.ts';

/**
 * Starts a node from a configuration file and runs until SIGINT/SIGTERM.
 * @param configPath - node configuration JSON (see config/node-a.example.json).
 * @throws Error when the config, key files or policy are invalid, the store file cannot be opened,
 *   or Redis is unreachable.
 */
export async function serve(configPath: string): Promise<void> {
  const cfg = loadNodeConfig(configPath);
  const log = pino({ level: cfg.logLevel });
  const secretKeys = await readSecretKeys(cfg.secretKeyFile);
  if (secretKeys.nodeId !== cfg.nodeId) throw new Error(`Secret key file is for node ${secretKeys.nodeId}, config says ${cfg.nodeId}`);
  const peers = [];
  for (const p of cfg.peers) {
    const publicKeys = await readPublicKeys(p.publicKeyFile);
    if (publicKeys.nodeId !== p.nodeId) throw new Error(`Public key file ${p.publicKeyFile} is for node ${publicKeys.nodeId}, not ${p.nodeId}`);
    peers.push({ nodeId: p.nodeId, redisUrl: p.redisUrl, publicKeys });
  }
  // Durable by default (config `storeFile`): a write is answered only once it is on disk.
  const opened = openStore(cfg.storeFile);
  log.info({ store: opened.kind, location: opened.location }, 'resource store opened');
  const node = new TidegateNode({
    store: opened.store,
    secretKeys,
    peers,
    redisUrl: cfg.redisUrl,
    queuePrefix: cfg.queuePrefix,
    hospital: new HospitalClient({ baseUrl: cfg.hospitalFhirUrl }),
    policy: cfg.mergePolicyFile ? loadMergePolicy(cfg.mergePolicyFile) : loadMergePolicy(),
    logger: log,
    antiEntropyIntervalMs: cfg.antiEntropyIntervalMs,
    hospitalPollIntervalMs: cfg.hospitalPollIntervalMs,
    ...(cfg.hospitalPollTypes ? { hospitalPollTypes: cfg.hospitalPollTypes } : {}),
    ...(cfg.hospitalCursorFile ? { hospitalCursor: new FileCursorStore(cfg.hospitalCursorFile) } : {}),
    hospitalBackoffMs: cfg.hospitalRetryBaseMs,
    hospitalMaxBackoffMs: cfg.hospitalRetryMaxMs,
  });
  try {
    await node.start(cfg.listen.port, cfg.listen.host);
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    log.info('shutting down');
    await node.stop();
  } finally {
    opened.close();
  }
}
