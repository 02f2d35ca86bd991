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
import { createFhirServer } from '../fhir/hardening.ts';
import type { FhirServerOptions, HardeningOptions } from '../fhir/hardening.ts';
import { Replica } from '../merge/replica.ts';
import { RefusedUpdateError } from '../merge/skew.ts';
import type { HybridLogicalClock } from '../merge/hlc.ts';
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
import { HospitalResync, hospitalResyncRouter } from '../hospital/resync.ts';
import { HospitalPoller } from '../hospital/poller.ts';
import type { HospitalHistorySource } from '../hospital/poller.ts';
import { RedisCursorStore } from '../hospital/cursor.ts';
import type { HospitalCursorStore } from '../hospital/cursor.ts';
import { SyncLedger } from '../hospital/ledger.ts';
import { isShreddableStore, scrubTideRedis, shredPatient, ShredError } from '../store/shred.ts';
import type { ShredReport } from '../store/shred.ts';
import { shredRouter } from '../store/shred-route.ts';
import express from 'express';
import type { AuthSetup } from '../auth/setup.ts';
import { BreachDetector, RevocationList, securityMonitor, securityRouter } from '../security/index.ts';
import type { SecurityConfig } from '../security/index.ts';
import { outboundLabelsOf, ROUTE_LABEL_SYSTEM, routeLabelRule } from '../tide/peer-authz.ts';
import { REDACTED_LABEL_RULE, V3_OBSERVATION_VALUE } from '../tide/peer-authz.ts';
import { holdsProjectionWriter, ProjectionFeeds } from '../mapping/projection.ts';
import type { OpenedProjectionStore } from '../mapping/projection.ts';
import type { Mapping } from '../mapping/index.ts';
import { translateRouter } from '../mapping/index.ts';
import { LiveMapping, nodeReloader } from '../mapping/live.ts';
import { policyDigestSource, sensitiveTypesSource } from '../mapping/policy-digest.ts';
import type { NodeReloadReport } from '../mapping/live.ts';
import { livePatientMatcher } from '../mapping/matching.ts';
import type { PatientMatcher } from '../mapping/matching.ts';
import { matchesRouter } from '../mapping/matches-router.ts';
import { ConsentGate } from '../mapping/consent.ts';
import { auditWiring, bridgeAuditLog, lifecycleEvent, mergeEvent } from '../audit/index.ts';
import type { AuditTrail } from '../audit/index.ts';
import { InstanceLease } from './instance-lease.ts';

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
  /** Largest future skew of a peer's HLC stamps, ms (src/merge/skew.ts); default 300000. */
  maxClockSkewMs?: number;
  /** The node's hybrid logical clock (tests inject a wall clock); default one capped at `maxClockSkewMs`. */
  clock?: HybridLogicalClock;
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
  /** Renewal period of the node id's instance lease (src/node/instance-lease.ts), ms; it lives 3 × this. Default 5000. */
  instanceLeaseRenewMs?: number;
  /** Outbox retry delays, ms: base (default 200) and cap (default 30000). */
  hospitalBackoffMs?: number;
  hospitalMaxBackoffMs?: number;
  /** Most entries in one batch/transaction Bundle (FhirService); default 10,000. */
  maxBundleEntries?: number;
  /** Re-reads peers' public keys for `POST /admin/reload` (src/ops/router.ts); see `PeerKeyring`. */
  reloadKeys?: () => Promise<unknown>;
  /** SMART on FHIR authorization of the FHIR API (src/auth/setup.ts `createAuth`); none in insecure dev mode. */
  auth?: AuthSetup;
  /**
   * Breach detection (src/security): the config's `security` section, and the revocation list that
   * `auth` checks (`createAuth(cfg, { isRevoked: revocations.isRevoked })`); without it, a list in
   * memory that no verifier reads (token revocation then has no effect).
   */
  security?: { config?: SecurityConfig; revocations?: RevocationList; fetch?: typeof fetch };
  /**
   * The audit trail (src/audit, opened by `serve` from `auditFile`): the node records merges, node
   * start/stop and everything added to `tide.auditLog` (quarantines, breach alerts, shreds). The
   * node does not close it: whoever opened it does, after `stop()`.
   */
  audit?: AuditTrail;
  /** Hostile-input limits and the per-client rate limit of the FHIR edge (src/fhir/hardening.ts); defaults without a rate limit when absent. */
  hardening?: HardeningOptions;
  /** HTTP header/request timeouts and HTTPS (src/fhir/hardening.ts `createFhirServer`, src/transport/tls.ts). */
  server?: FhirServerOptions;
  /**
   * The mapping configuration (src/mapping, docs/mappings.md), when the config names a
   * `mappingFile`: its routes filter what Tide sends each peer, its ConceptMaps translate versions
   * read from the hospital (the poller). Give the same object to the `HospitalClient` for the
   * outbound translation. A `LiveMapping` (src/mapping/live.ts) is reloaded by {@link TidegateNode.reload};
   * a `Mapping` is wrapped in one (reloaded from its file, checked against `peers`).
   */
  mapping?: Mapping | LiveMapping;
  /**
   * Opens the projection store of a redacted peer (src/mapping/projection.ts; `serve` gives sealed
   * SQLite files next to the store file); default a memory store with a new epoch per start.
   */
  projectionStore?: (peerId: string) => OpenedProjectionStore;
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
  /** Patient matching of Patients read from the hospital or created through the FHIR API (mapping file `patientMatching`), and its review list (`GET /admin/matches`). */
  readonly patientMatcher: PatientMatcher | undefined;
  /** Consent resources by patient (src/mapping/consent.ts): what they deny a peer is withheld from it. */
  readonly consent: ConsentGate;
  /** Projection documents of redacted peers (src/mapping/projection.ts, docs/mappings.md "Redaction"). */
  readonly projections: ProjectionFeeds;
  readonly service: FhirService;
  readonly log: Logger;
  private server: Server | undefined;
  private url: string | undefined;
  private localUpdates = 0;
  /**
   * Reloads the mapping file and the peers' public keys, all or nothing (SIGHUP, `POST /admin/reload`;
   * src/mapping/live.ts `nodeReloader`); undefined when the node has neither.
   */
  readonly reload: (() => Promise<NodeReloadReport>) | undefined;
  /** The mapping in force, reloadable; undefined without a mapping file. */
  readonly liveMapping: LiveMapping | undefined;
  /** The mapping in force at the moment of the call: the single way this node reads it. */
  private readonly mapping: () => Mapping | undefined;
  private readonly auth: AuthSetup | undefined;
  private readonly hardening: HardeningOptions | undefined;
  private readonly serverOptions: FhirServerOptions | undefined;
  /** Breach detector: fed by Tide rejections and every finished FHIR request. */
  readonly detector: BreachDetector;
  /** Revoked token ids (breach response); the auth module checks it when wired by `serve`. */
  readonly revocations: RevocationList;
  private remoteUpdates = 0;
  /** Remote updates refused because their resource was crypto-shredded here. */
  private shreddedRefused = 0;
  private readonly store: ResourceStore;
  private readonly redisUrl: string;
  private readonly queuePrefix: string;
  /** The node id's instance lease (src/node/instance-lease.ts). */
  readonly lease: InstanceLease;
  /** The audit trail, when configured. */
  readonly audit: AuditTrail | undefined;
  private readonly keyIds: { kem: string; sig: string };

  /** @param opts - see {@link TidegateNodeOptions}. */
  constructor(opts: TidegateNodeOptions) {
    this.nodeId = opts.secretKeys.nodeId;
    this.auth = opts.auth;
    const live = opts.mapping === undefined || opts.mapping instanceof LiveMapping ? opts.mapping : new LiveMapping(opts.mapping, { peers: opts.peers.map((p) => p.nodeId), ...(opts.logger ? { logger: opts.logger } : {}) });
    this.liveMapping = live;
    // The single way this node reads the mapping: the one in force, at use time (one read per version or message).
    const mapping = (): Mapping | undefined => live?.current;
    this.mapping = mapping;
    this.reload = live !== undefined || opts.reloadKeys !== undefined ? nodeReloader({ ...(live ? { mapping: live } : {}), ...(opts.reloadKeys ? { keys: opts.reloadKeys } : {}) }) : undefined;
    this.hardening = opts.hardening;
    this.serverOptions = opts.server;
    this.audit = opts.audit;
    this.keyIds = { kem: opts.secretKeys.kemKeyId, sig: opts.secretKeys.sigKeyId };
    this.log = opts.logger ?? pino({ level: 'info' });
    const log = this.log;
    const ledger = new SyncLedger();
    const store: ResourceStore = opts.store ?? new MemoryStore();
    this.store = store;
    this.redisUrl = opts.redisUrl;
    this.queuePrefix = opts.queuePrefix ?? 'tidegate';
    // One process per node id: another instance taking the lease stops this one's inbox (/readyz 503).
    this.lease = new InstanceLease({ redisUrl: opts.redisUrl, prefix: this.queuePrefix, nodeId: this.nodeId, log: this.log, ...(opts.instanceLeaseRenewMs !== undefined ? { renewMs: opts.instanceLeaseRenewMs } : {}), onLost: () => void this.tide.stop() });
    // A write-behind store (src/store/pg-store.ts) acknowledges a write with its barrier: nothing
    // that depends on a write leaves the node before it resolves. When it rejects, the store has
    // rolled the write back and the client got a 503, so the dependent step is dropped.
    const afterDurable = (fn: () => void): void => {
      const barrier = store.durable?.();
      if (barrier) barrier.then(fn, () => {});
      else fn();
    };
    this.hospitalSync = new HospitalOutbox(opts.hospital, {
      nodeId: this.nodeId,
      redisUrl: opts.redisUrl,
      prefix: opts.queuePrefix ?? 'tidegate',
      secret: opts.secretKeys.kemSecretKey,
      // Jobs queued under a key rotated out since stay readable (and are re-encrypted at start).
      previousSecrets: (opts.secretKeys.additionalKemKeys ?? []).map((k) => k.secretKey),
      ledger,
      logger: log,
      ...(opts.hospitalBackoffMs !== undefined ? { backoffMs: opts.hospitalBackoffMs } : {}),
      ...(opts.hospitalMaxBackoffMs !== undefined ? { maxBackoffMs: opts.hospitalMaxBackoffMs } : {}),
      onFailure: (key, err) => log.error({ key, code: (err as { code?: string }).code, status: (err as { status?: number }).status }, 'hospital write failed'),
    });
    const policy = opts.policy ?? loadMergePolicy();
    this.replica = new Replica({
      nodeId: this.nodeId,
      store,
      policy,
      ...(opts.maxClockSkewMs !== undefined ? { maxClockSkewMs: opts.maxClockSkewMs } : {}),
      ...(opts.clock ? { clock: opts.clock } : {}),
      onVersion: (key, version) => {
        this.consent.onVersion(key, version);
        this.patientMatcher?.onVersion(key, version); // patient matching: keeps its index current
        afterDurable(() => this.projections.onVersion(key)); // redaction: re-project for redacted peers
        afterDurable(() => this.hospitalSync.enqueue(key, version));
      },
    });
    const replica = this.replica;
    // ---- redaction (src/mapping/projection.ts, docs/mappings.md "Redaction") ----
    // A peer with `redact` rules gets, for the types they name, a projection document per resource
    // written only here (Tide `publishTo`, anti-entropy from `projection`), never the shared one.
    this.projections = new ProjectionFeeds({
      nodeId: this.nodeId,
      mapping,
      shared: replica,
      policy,
      ...(opts.projectionStore ? { openStore: opts.projectionStore } : {}),
      publishTo: (peerId, updates) => this.tide.publishTo(peerId, updates),
      mayReceive: (peerId, key) => this.tide.mayReceive(peerId, key),
      logger: log,
    });
    // Every peer: a resource carrying the REDACTED label (a projection received here) is never forwarded.
    const withRedaction = (p: PeerConfig): PeerConfig => ({ ...p, withheldLabels: [...(p.withheldLabels ?? []), REDACTED_LABEL_RULE], projection: this.projections.source(p.nodeId) });
    // ---- end redaction ----
    // Consents are honoured with or without a mapping file (defaults of its `consent` member). A
    // Consent that changes invalidates the cached labels; what it now allows goes by anti-entropy.
    this.consent = new ConsentGate({ peers: opts.peers.map((p) => p.nodeId), mapping, replica, logger: log, onChange: () => this.tide.invalidateLabels() });
    this.tide = new Tide({
      self: opts.secretKeys,
      redisUrl: opts.redisUrl,
      prefix: opts.queuePrefix ?? 'tidegate',
      // Routing rules travel as withheld labels (src/tide/peer-authz.ts `outboundLabelsOf`); every
      // peer carries its route rule, so a route given by a reload filters from the first message.
      // Consent decisions travel as the same label, so every peer carries it even without a mapping.
      peers: opts.peers.map((p) => withRedaction({ ...p, withheldLabels: [...(p.withheldLabels ?? []), routeLabelRule(p.nodeId)] })),
      logger: log,
      // per-peer policy digests, advertised in anti-entropy and compared (docs/tide.md "Policy agreement"); recomputed on reload
      policyDigests: policyDigestSource(opts.peers, live),
      policyEnforcement: sensitiveTypesSource(opts.peers, live, (m) => m?.policyAgreement === 'enforce'),
      antiEntropyIntervalMs: opts.antiEntropyIntervalMs ?? 30000,
      ...(opts.batchDelayMs !== undefined ? { batchDelayMs: opts.batchDelayMs } : {}),
      onRejection: (event) => this.detector.tideRejection(event),
      replica: {
        nodeId: this.nodeId,
        applyRemote: async (updates: ResourceUpdate[], fromNode: string) => {
          const provenances: ResourceUpdate[] = [];
          const applied: string[] = [];
          // All or nothing: every update of the message passes the skew check before any is applied
          // (src/merge/skew.ts); a refusal is quarantined by Tide with its code.
          for (const u of updates) {
            if (store.isShredded?.(u.key)) continue;
            const refused = replica.checkRemote(u.key, u.update);
            if (refused) throw new RefusedUpdateError(u.key, refused);
          }
          for (const u of updates) {
            // A crypto-shredded resource is tombstoned: a peer's update must not resurrect it.
            if (store.isShredded?.(u.key)) {
              this.shreddedRefused++;
              continue;
            }
            const merged = replica.applyRemote(u.key, u.update);
            applied.push(u.key);
            this.remoteUpdates++;
            // A new version that merges concurrent writes gets its Provenance (src/merge/provenance.ts).
            const provenance = merged ? replica.recordMergeProvenance(u.key) : undefined;
            if (provenance) provenances.push(provenance);
          }
          // The inbox job completes (and is removed) only once the merge is durable.
          await store.durable?.();
          this.audit?.record(mergeEvent({ nodeId: this.nodeId, fromNode, keys: applied, refused: updates.length - applied.length, at: new Date() }));
          // Merge Provenance is gossiped like a local write: only once it is durable.
          if (provenances.length > 0) {
            this.localUpdates += provenances.length;
            this.tide.publish(provenances);
          }
        },
        keys: () => replica.keys(),
        stateVector: (key) => replica.stateVector(key),
        // A document with a change not durable yet is not sent (it could still be rolled back).
        diffFor: (key, sv) => (store.unsettled?.(key) ? undefined : replica.diffFor(key, sv)),
        // Peer authorization: labels of the current version (a deleted resource keeps those of its last live
        // version), and the route labels of peers an earlier version nested a redacted type for (Mapping.nestedInHistory).
        securityLabels: (key) => {
          const history = replica.history(key);
          for (const [i, v] of history.entries()) {
            if (v.deleted || !v.body) continue;
            const labels = [...outboundLabelsOf(v.body, mapping()), ...this.consent.labels(key, v.body)];
            // an earlier version that nested a redacted or withheld resource stays in the shared document's history
            const m = mapping();
            if (m !== undefined && i + 1 < history.length) {
              for (const peer of m.nestedInHistory(key.slice(0, key.indexOf('/')), history.slice(i + 1).map((h) => h.body))) labels.push({ system: ROUTE_LABEL_SYSTEM, code: `withhold:${peer}` });
            }
            // a projection received here stays one even when an edit here dropped its REDACTED label
            const labelled = labels.some((l) => l.system === V3_OBSERVATION_VALUE && l.code === 'REDACTED');
            if (!labelled && holdsProjectionWriter(store.get(key)?.state)) labels.push({ system: V3_OBSERVATION_VALUE, code: 'REDACTED' });
            return labels;
          }
          return [];
        },
      },
    });
    // Quarantines, breach alerts and shreds are added to tide.auditLog: each also goes to the trail.
    if (this.audit) bridgeAuditLog(this.tide.auditLog, this.audit);
    // A reload may change routes: the labels Tide cached are stale, and resources a new route
    // allows reach the peer by anti-entropy (a round now; rejected when Tide is not running).
    live?.onReload(() => () => {
      // redaction rules may have changed: re-project everything (background)
      this.projections.backfill().catch(() => {});
      this.tide.invalidateLabels();
      this.tide.runAntiEntropy().catch(() => {});
    });
    this.revocations = opts.security?.revocations ?? new RevocationList();
    this.detector = new BreachDetector({
      nodeId: this.nodeId,
      ...(opts.security?.config ? { config: opts.security.config } : {}),
      revocations: this.revocations,
      quarantinePeer: (peerId, reason) => this.tide.quarantinePeer(peerId, reason),
      // one function, so the alerts' AuditEvents can be sent to the node's audit trail
      audit: (event) => this.tide.auditLog.add(event),
      log,
      ...(opts.security?.fetch ? { fetch: opts.security.fetch } : {}),
    });
    const pollMs = opts.hospitalPollIntervalMs ?? 5000;
    const history = opts.hospital as Partial<HospitalHistorySource>;
    this.patientMatcher = live !== undefined ? livePatientMatcher(live, this.replica) : undefined;
    this.hospitalPoller =
      pollMs > 0 && typeof history.history === 'function'
        ? new HospitalPoller({
            source: history as HospitalHistorySource,
            replica: this.replica,
            ledger,
            intervalMs: pollMs,
            cursor: durableCursor(store, opts.hospitalCursor ?? new RedisCursorStore({ redisUrl: opts.redisUrl, key: `${opts.queuePrefix ?? 'tidegate'}:hospital-cursor:${this.nodeId}` })),
            ...(opts.hospitalPollTypes !== undefined ? { types: opts.hospitalPollTypes } : {}),
            ...(live !== undefined ? { mapping: { translate: (r, d) => mapping()!.translate(r, d) } } : {}),
            ...(this.patientMatcher !== undefined ? { patientMatcher: this.patientMatcher } : {}),
            logger: log,
            onUpdate: (key, update) => {
              this.localUpdates++;
              afterDurable(() => this.tide.publish([{ key, update }]));
            },
          })
        : undefined;
    const apiSink = (key: string, update: Uint8Array): void => {
      this.localUpdates++;
      afterDurable(() => this.tide.publish([{ key, update }]));
      // a Patient created through the API is matched; its seealso links are a separate write, gossiped here too
      this.patientMatcher?.afterApiWrite(key, apiSink, (err) => log.warn({ key, err: (err as Error).message }, 'patient matching failed; Patient kept without match links'));
    };
    this.service = new FhirService(this.replica, apiSink, {
      hospital: isHospitalSearcher(opts.hospital) ? opts.hospital : undefined,
      ...(store.durable ? { durable: () => store.durable!() } : {}),
      ...(store.isShredded ? { isShredded: (key: string) => store.isShredded!(key) } : {}),
      // another process took this node id's lease: it must not write under the same Yjs client id
      writeGate: () => (this.lease.state === 'lost' ? `another process holds node id ${this.nodeId} (README "One process per node id")` : undefined),
      mergePolicy: policy,
      ...(opts.maxBundleEntries !== undefined ? { maxBundleEntries: opts.maxBundleEntries } : {}),
      translate: live !== undefined,
      ...(opts.auth ? { smart: { ...opts.auth.endpoints } } : {}),
    });
  }

  /**
   * Starts gossip and the HTTP server.
   * @param port - TCP port; 0 picks a free one.
   * @param host - interface to bind. Default 127.0.0.1.
   * @returns The FHIR base URL, e.g. `http://127.0.0.1:41234/fhir`.
   * @throws InstanceLeaseError (src/node/instance-lease.ts) when another process runs this node id;
   *   Error when Redis is unreachable or the port is taken.
   */
  async start(port = 0, host = '127.0.0.1'): Promise<string> {
    await this.lease.acquire(); // InstanceLeaseError when another process runs this node id
    await this.hospitalSync.start();
    await this.tide.start();
    // redaction: bring every projection up to date in the background (batches yield to the event loop)
    this.projections.backfill().catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'projection backfill failed'));
    // patient matching: index the Patients held in the background (batches yield to the event loop)
    this.patientMatcher?.buildIndex().catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'patient matching index build failed; matching compares with every Patient'));
    await this.hospitalPoller?.start();
    this.audit?.record(lifecycleEvent({ nodeId: this.nodeId, what: 'start', at: new Date(), keys: [{ kid: this.keyIds.kem, alg: 'X-Wing', use: 'enc', status: 'current' }, { kid: this.keyIds.sig, alg: 'ML-DSA-65', use: 'sig', status: 'current' }] }));
    const admin = express.Router();
    // Breach detection sees every /fhir request first (this router is mounted before auth and the FHIR router).
    admin.use('/fhir', securityMonitor(this.detector));
    admin.use(opsRouter({ tide: this.tide, nodeId: this.nodeId, security: this.detector, log: this.log, ...(this.reload ? { reload: this.reload } : {}) }));
    admin.use(securityRouter({ nodeId: this.nodeId, detector: this.detector, tide: this.tide, revocations: this.revocations }));
    if (this.patientMatcher !== undefined) admin.use(matchesRouter({ nodeId: this.nodeId, review: this.patientMatcher.review }));
    admin.use(shredRouter({ shred: (key, requestor) => this.shred(key, requestor) }));
    // hospital resync (src/hospital/resync.ts): resend every current version to a hospital that lost data
    admin.use(hospitalResyncRouter(new HospitalResync({ store: this.store, outbox: this.hospitalSync, logger: this.log })));
    const app = fhirApp(this.service, this.log, () => ({ node: this.nodeId, hospitalBacklog: this.hospitalSync.backlog }), admin, this.auth, this.audit ? auditWiring(this.audit, this.nodeId, { open: !this.auth, log: this.log }) : undefined, this.hardening, this.liveMapping ? translateRouter({ maps: (url, version) => this.mapping()!.maps(url, version) }) : undefined);
    this.server = await new Promise<Server>((resolve, reject) => {
      // listen errors (EADDRINUSE, EACCES) come as the server's 'error' event
      const s = createFhirServer(app, this.serverOptions);
      s.once('error', reject);
      s.listen(port, host, () => {
        s.off('error', reject);
        resolve(s);
      });
    });
    const addr = this.server.address() as AddressInfo;
    this.url = `${this.serverOptions?.tls ? 'https' : 'http'}://${host}:${addr.port}/fhir`;
    this.log.info({ node: this.nodeId, url: this.url }, 'tidegate node listening');
    return this.url;
  }

  /** The FHIR base URL once started. */
  get baseUrl(): string {
    if (!this.url) throw new Error('Node not started');
    return this.url;
  }

  /**
   * Crypto-shreds a patient's compartment on this node (src/store/shred.ts): drops its queued
   * hospital writes and Tide messages on the own Redis, destroys its content keys, tombstones the
   * keys (peers' later updates are refused), records an AuditEvent (store and `/admin/audit`).
   * @param patientKey - `Patient/<id>`.
   * @param requestor - who asked (AuditEvent agent).
   * @returns The report (contains resource keys: for the operator, never for logs).
   * @throws ShredError for a bad key or a store that cannot shred (in-memory or unsealed).
   */
  async shred(patientKey: string, requestor = 'admin-http'): Promise<ShredReport> {
    if (!isShreddableStore(this.store)) throw new ShredError('ERR_SHRED_UNSUPPORTED_STORE', 'Crypto-shredding needs a sealed store (storeFile, or storeUrl with keyVaultFile), not this store');
    const report = await shredPatient(patientKey, {
      store: this.store,
      nodeId: this.nodeId,
      requestor,
      queues: {
        outbox: (keys) => this.hospitalSync.drop(keys),
        tide: (keys) => scrubTideRedis({ redisUrl: this.redisUrl, prefix: this.queuePrefix, nodeId: this.nodeId }, keys),
        outgoing: (keys) => this.tide.drop(keys),
      },
      audit: (event) => this.tide.auditLog.add(event),
    });
    // redaction: the projections of the shredded resources go too (src/mapping/projection.ts)
    const projections = this.projections.shred([...report.shredded, ...report.tombstoned]);
    if (projections.shredded > 0 || projections.unshreddable > 0) this.log.info({ patient: 'shredded', ...projections }, 'projection documents shredded');
    return report;
  }

  /** Remote updates refused because their resource was crypto-shredded on this node. */
  get shreddedUpdatesRefused(): number {
    return this.shreddedRefused;
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
    await this.projections.idle(); // redaction: projections written and handed to Tide
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
    await this.projections.stop();
    await this.tide.stop();
    await this.hospitalSync.stop();
    await this.detector.idle();
    if (this.audit) {
      this.audit.record(lifecycleEvent({ nodeId: this.nodeId, what: 'stop', at: new Date() }));
      await this.audit.flush();
    }
    await this.lease.release();
  }
}

/**
 * The poller's cursor store, saving only once the merges it covers are durable in `store` (a
 * cursor ahead of the store would skip hospital edits after a crash).
 * @param store - the node's resource store.
 * @param cursor - where the cursor is kept.
 * @returns `cursor` itself when `store` has no barrier.
 */
function durableCursor(store: ResourceStore, cursor: HospitalCursorStore): HospitalCursorStore {
  if (!store.durable) return cursor;
  return {
    load: () => cursor.load(),
    save: async (c) => {
      await store.durable!();
      await cursor.save(c);
    },
    close: () => cursor.close(),
  };
}
