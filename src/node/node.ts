/**
 * A tidegate node: FHIR API → merge (Replica) → seal + gossip (Tide) → hospital FHIR server.
 *
 * Services start in order (hospital client, merge engine, gossip, HTTP) and stop in reverse.
 */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import pino from 'pino';
import type { Logger } from 'pino';
import { FhirService } from '../fhir/service.ts';
import { isHospitalSearcher } from '../fhir/search.ts';
import { fhirApp } from '../fhir/express.ts';
import { Replica } from '../merge/replica.ts';
import type { MergePolicy } from '../merge/policy.ts';
import { loadMergePolicy } from '../merge/policy.ts';
import { MemoryStore } from '../store/store.ts';
import type { ResourceStore } from '../store/store.ts';
import { Tide } from '../tide/index.ts';
import { opsRouter } from '../ops/index.ts';
import type { PeerConfig, ResourceUpdate, TideStats } from '../tide/index.ts';
import type { NodeSecretKeys } from '../envelope/index.ts';
import type { HospitalWriter } from '../hospital/sync.ts';
import { HospitalOutbox } from '../hospital/outbox.ts';
import { HospitalPoller } from '../hospital/poller.ts';
import type { HospitalHistorySource } from '../hospital/poller.ts';
import { RedisCursorStore } from '../hospital/cursor.ts';
import type { HospitalCursorStore } from '../hospital/cursor.ts';
import { SyncLedger } from '../hospital/ledger.ts';

/** Options of {@link TidegateNode}. Durations in ms. */
export interface TidegateNodeOptions {
  secretKeys: NodeSecretKeys;
  peers: PeerConfig[];
  redisUrl: string;
  queuePrefix?: string;
  hospital: HospitalWriter;
  policy?: MergePolicy;
  store?: ResourceStore;
  logger?: Logger;
  antiEntropyIntervalMs?: number;
  /** Tide batching: flush a peer's batch after this many ms. */
  batchDelayMs?: number;
  /**
   * Period of polling the hospital's `_history` for edits made directly on it, ms; `0` = off.
   * Default 5000. Only when `hospital` can read history (a `HospitalClient`).
   */
  hospitalPollIntervalMs?: number;
  /** Resource types polled one by one when the hospital has no system-level `_history`; also limits what is picked up. */
  hospitalPollTypes?: string[];
  /** Where the poller keeps its cursor; default the Redis key `<queuePrefix>:hospital-cursor:<nodeId>` on `redisUrl`. */
  hospitalCursor?: HospitalCursorStore;
  /** Outbox retry delays, ms: base (default 200) and cap (default 30000). */
  hospitalBackoffMs?: number;
  hospitalMaxBackoffMs?: number;
}

/** See module doc. */
export class TidegateNode {
  readonly nodeId: string;
  readonly replica: Replica;
  readonly tide: Tide;
  /** Durable outbox of writes to the hospital (BullMQ on the node's Redis). */
  readonly hospitalSync: HospitalOutbox;
  /** Poller of the hospital's `_history`, when enabled. */
  readonly hospitalPoller: HospitalPoller | undefined;
  readonly service: FhirService;
  readonly log: Logger;
  private server: Server | undefined;
  private url: string | undefined;
  private localUpdates = 0;
  private remoteUpdates = 0;

  /** @param opts - see {@link TidegateNodeOptions}. */
  constructor(opts: TidegateNodeOptions) {
    this.nodeId = opts.secretKeys.nodeId;
    this.log = opts.logger ?? pino({ level: 'info' });
    const log = this.log;
    const ledger = new SyncLedger();
    this.hospitalSync = new HospitalOutbox(opts.hospital, {
      nodeId: this.nodeId,
      redisUrl: opts.redisUrl,
      prefix: opts.queuePrefix ?? 'tidegate',
      secret: opts.secretKeys.kemSecretKey,
      ledger,
      logger: log,
      ...(opts.hospitalBackoffMs !== undefined ? { backoffMs: opts.hospitalBackoffMs } : {}),
      ...(opts.hospitalMaxBackoffMs !== undefined ? { maxBackoffMs: opts.hospitalMaxBackoffMs } : {}),
      onFailure: (key, err) => log.error({ key, code: (err as { code?: string }).code, status: (err as { status?: number }).status }, 'hospital write failed'),
    });
    this.replica = new Replica({
      nodeId: this.nodeId,
      store: opts.store ?? new MemoryStore(),
      policy: opts.policy ?? loadMergePolicy(),
      onVersion: (key, version) => this.hospitalSync.enqueue(key, version),
    });
    const replica = this.replica;
    this.tide = new Tide({
      self: opts.secretKeys,
      redisUrl: opts.redisUrl,
      prefix: opts.queuePrefix ?? 'tidegate',
      peers: opts.peers,
      logger: log,
      antiEntropyIntervalMs: opts.antiEntropyIntervalMs ?? 30000,
      ...(opts.batchDelayMs !== undefined ? { batchDelayMs: opts.batchDelayMs } : {}),
      replica: {
        nodeId: this.nodeId,
        applyRemote: async (updates: ResourceUpdate[]) => {
          for (const u of updates) {
            replica.applyRemote(u.key, u.update);
            this.remoteUpdates++;
          }
        },
        keys: () => replica.keys(),
        stateVector: (key) => replica.stateVector(key),
        diffFor: (key, sv) => replica.diffFor(key, sv),
      },
    });
    const pollMs = opts.hospitalPollIntervalMs ?? 5000;
    const history = opts.hospital as Partial<HospitalHistorySource>;
    this.hospitalPoller =
      pollMs > 0 && typeof history.history === 'function'
        ? new HospitalPoller({
            source: history as HospitalHistorySource,
            replica: this.replica,
            ledger,
            intervalMs: pollMs,
            cursor: opts.hospitalCursor ?? new RedisCursorStore({ redisUrl: opts.redisUrl, key: `${opts.queuePrefix ?? 'tidegate'}:hospital-cursor:${this.nodeId}` }),
            ...(opts.hospitalPollTypes !== undefined ? { types: opts.hospitalPollTypes } : {}),
            logger: log,
            onUpdate: (key, update) => {
              this.localUpdates++;
              this.tide.publish([{ key, update }]);
            },
          })
        : undefined;
    this.service = new FhirService(this.replica, (key, update) => {
      this.localUpdates++;
      this.tide.publish([{ key, update }]);
    }, { hospital: isHospitalSearcher(opts.hospital) ? opts.hospital : undefined });
  }

  /**
   * Starts gossip and the HTTP server.
   * @param port - TCP port; 0 picks a free one.
   * @param host - interface to bind. Default 127.0.0.1.
   * @returns The FHIR base URL, e.g. `http://127.0.0.1:41234/fhir`.
   * @throws when Redis is unreachable or the port is taken.
   */
  async start(port = 0, host = '127.0.0.1'): Promise<string> {
    await this.hospitalSync.start();
    await this.tide.start();
    await this.hospitalPoller?.start();
    const app = fhirApp(this.service, this.log, () => ({ node: this.nodeId, hospitalBacklog: this.hospitalSync.backlog }), opsRouter({ tide: this.tide, nodeId: this.nodeId }));
    this.server = await new Promise<Server>((resolve, reject) => {
      // Express 5 hands listen errors (EADDRINUSE, EACCES) to this callback.
      const s = app.listen(port, host, (err?: Error) => (err ? reject(err) : resolve(s)));
    });
    const addr = this.server.address() as AddressInfo;
    this.url = `http://${host}:${addr.port}/fhir`;
    this.log.info({ node: this.nodeId, url: this.url }, 'tidegate node listening');
    return this.url;
  }

  /** The FHIR base URL once started. */
  get baseUrl(): string {
    if (!this.url) throw new Error('Node not started');
    return this.url;
  }

  /** Local and remote update counts, plus gossip counters. */
  stats(): { localUpdates: number; remoteUpdates: number; hospitalWrites: number; hospitalFailures: number; hospitalInbound: number; tide: TideStats } {
    return {
      localUpdates: this.localUpdates,
      remoteUpdates: this.remoteUpdates,
      hospitalWrites: this.hospitalSync.writes,
      hospitalFailures: this.hospitalSync.failures().size,
      hospitalInbound: this.hospitalPoller?.stats().applied ?? 0,
      tide: this.tide.stats(),
    };
  }

  /** Outgoing batches sent, inbox drained, hospital writes done. Resolves to true when quiet. */
  async quiet(): Promise<boolean> {
    await this.hospitalPoller?.idle();
    await this.tide.flush();
    const pending = await this.tide.pending();
    await this.hospitalSync.idle();
    return pending === 0 && this.hospitalSync.backlog === 0;
  }

  /** Stops HTTP, then gossip, then hospital writes. */
  async stop(): Promise<void> {
    if (this.server) {
      const s = this.server;
      this.server = undefined;
      s.closeAllConnections?.();
      await new Promise<void>((r) => s.close(() => r()));
    }
    await this.hospitalPoller?.stop();
    await this.tide.stop();
    await this.hospitalSync.stop();
  }
}
