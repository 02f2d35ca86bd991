/**
 * Prometheus metrics of one node's Tide, with prom-client (https://github.com/siimon/prom-client).
 *
 * Every metric reads Tide's in-memory counters at scrape time (`collect` callbacks), so values
 * are exactly `tide.stats()` / `tide.peers()` and nothing is double-counted. Each node gets its
 * own `Registry` (the demo runs several nodes in one process; prom-client's global registry would
 * mix them), with the default label `node`.
 *
 * Labels are node ids (`peer`, `node`) and reason codes only: never resource keys or payload.
 * Counters restart at 0 when the process restarts (Prometheus `rate()` handles resets).
 */
import { Counter, Gauge, Registry } from 'prom-client';
import type { Tide } from '../tide/index.ts';

/** The part of {@link Tide} the metrics read. */
export type MetricsSource = Pick<Tide, 'stats' | 'peers' | 'pending'>;

/** The part of the breach detector (src/security) the metrics read. */
export interface SecurityMetricsSource {
  /** Alerts raised since start, per signal (every signal present). */
  alertCounts(): Record<string, number>;
}

/**
 * Builds a Registry with Tide's metrics (names below; units in the name: `_seconds`, `_bytes`).
 *
 * Counters: `tidegate_tide_messages_sent_total`, `…_messages_received_total`,
 * `…_messages_quarantined_total{reason}`, `…_messages_rejected_total{reason}`,
 * `…_updates_sent_total`, `…_updates_received_total`, `…_updates_relayed_total` (resource diffs
 * forwarded under the relay rule), `…_sent_bytes_total`, `…_received_bytes_total`,
 * `…_send_failures_total`, `…_apply_failures_total`, `…_anti_entropy_runs_total`,
 * `…_digests_received_total`, and for anti-entropy cost (it scales with the differences, see
 * docs/tide.md): `…_anti_entropy_messages_sent_total`, `…_anti_entropy_sent_bytes_total`,
 * `…_anti_entropy_tree_nodes_sent_total`, `…_anti_entropy_digest_entries_sent_total`,
 * `…_anti_entropy_repairs_queued_total`.
 * Gauges per `peer`: `tidegate_tide_peer_up` (1 = status up), `…_peer_backlog_updates`,
 * `…_peer_backlog_messages`, `…_peer_oldest_unsent_seconds` (convergence lag on the sending
 * side: age of the oldest update for that peer not yet in its inbox; 0 when none waits),
 * `…_peer_delivery_lag_seconds` (last message from that peer: processed time − sealed
 * `createdAt`, on the sender's clock, so clock skew adds in), `…_peer_lagging` (1 when its last
 * digests showed it behind; relay target), `…_peer_quarantined_total`.
 * Gauge `tidegate_tide_inbox_pending` (`tide.pending()`, a Redis call; -1 when it fails).
 * With `security`: counter `tidegate_security_alerts_total{signal}` (breach-detection alerts raised,
 * docs/security.md "Breach detection"; every signal present from the start, at 0).
 *
 * @param tide - The node's Tide (or anything with `stats()`, `peers()`, `pending()`).
 * @param nodeId - Set as the default label `node` on every metric.
 * @param security - The node's breach detector (optional).
 * @returns A new prom-client Registry; serve it with `registry.metrics()` and `registry.contentType`.
 */
export function tideMetricsRegistry(tide: MetricsSource, nodeId: string, security?: SecurityMetricsSource): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ node: nodeId });

  const counter = (name: string, help: string, read: () => number): void => {
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(read());
      },
    });
  };
  const byReason = (name: string, help: string, read: () => Record<string, number>): void => {
    new Counter({
      name,
      help,
      labelNames: ['reason'],
      registers: [registry],
      collect() {
        this.reset();
        for (const [reason, n] of Object.entries(read())) this.inc({ reason }, n);
      },
    });
  };
  const perPeer = (name: string, help: string, read: (p: ReturnType<MetricsSource['peers']>[number]) => number): void => {
    new Gauge({
      name,
      help,
      labelNames: ['peer'],
      registers: [registry],
      collect() {
        this.reset();
        for (const p of tide.peers()) this.set({ peer: p.nodeId }, read(p));
      },
    });
  };

  counter('tidegate_tide_messages_sent_total', 'Envelopes added to peers\u2019 inboxes.', () => tide.stats().messagesSent);
  counter('tidegate_tide_messages_received_total', 'Inbox envelopes processed successfully.', () => tide.stats().messagesReceived);
  byReason('tidegate_tide_messages_quarantined_total', 'Inbox messages quarantined (never applied), by reason code.', () => tide.stats().quarantined);
  byReason('tidegate_tide_messages_rejected_total', 'Inbox messages rejected as unrecoverable, by reason code.', () => tide.stats().rejected);
  counter('tidegate_tide_updates_sent_total', 'Resource updates inside sent envelopes (after per-key merging).', () => tide.stats().updatesSent);
  counter('tidegate_tide_updates_received_total', 'Resource updates inside processed envelopes.', () => tide.stats().updatesReceived);
  counter('tidegate_tide_projection_updates_queued_total', 'Projection updates (redacted peers, docs/mappings.md "Redaction") queued for sending.', () => tide.stats().projectionUpdatesQueued);
  counter('tidegate_tide_projected_updates_dropped_total', 'Inbound updates of projected types from a projection peer, dropped (one-way feed).', () => tide.stats().projectedUpdatesDropped);
  counter('tidegate_tide_updates_relayed_total', 'Resource diffs relayed to peers that lacked them (relay rule).', () => tide.stats().updatesRelayed);
  counter('tidegate_tide_sent_bytes_total', 'Bytes of sent envelopes.', () => tide.stats().bytesSent);
  counter('tidegate_tide_received_bytes_total', 'Bytes of processed inbox envelopes.', () => tide.stats().bytesReceived);
  counter('tidegate_tide_send_failures_total', 'Messages not delivered to a peer (given up, dropped while down or backlog full).', () => tide.stats().sendFailures);
  counter('tidegate_tide_apply_failures_total', 'Failed replica.applyRemote calls (each attempt).', () => tide.stats().applyFailures);
  counter('tidegate_tide_anti_entropy_runs_total', 'Completed anti-entropy rounds started by this node.', () => tide.stats().antiEntropyRuns);
  counter('tidegate_tide_anti_entropy_scheduler_restored_total', 'Times the own queues and anti-entropy job scheduler were found lost in the own Redis (it lost its data) and set up again.', () => tide.stats().aeSchedulerRestored);
  counter('tidegate_tide_anti_entropy_fallback_runs_total', 'Anti-entropy rounds run locally because no scheduled round ran for 3 intervals.', () => tide.stats().aeFallbackRuns);
  counter('tidegate_tide_digests_received_total', 'Anti-entropy digests received and processed.', () => tide.stats().digestsReceived);
  counter('tidegate_tide_anti_entropy_messages_sent_total', 'Anti-entropy envelopes (ae-tree, ae-digest, ae-reply) sent.', () => tide.stats().aeMessagesSent);
  counter('tidegate_tide_anti_entropy_sent_bytes_total', 'Bytes of anti-entropy envelopes sent.', () => tide.stats().aeBytesSent);
  counter('tidegate_tide_anti_entropy_tree_nodes_sent_total', 'Digest-tree node summaries sent in ae-tree messages.', () => tide.stats().aeTreeNodesSent);
  counter('tidegate_tide_anti_entropy_digest_entries_sent_total', '(key, state vector) entries sent in ae-digest / ae-reply messages.', () => tide.stats().aeDigestEntriesSent);
  counter('tidegate_tide_anti_entropy_repairs_queued_total', 'Resource diffs queued to peers as anti-entropy repairs.', () => tide.stats().aeUpdatesQueued);

  perPeer('tidegate_tide_peer_up', '1 when the peer link is up (Redis connected, not marked down).', (p) => (p.status === 'up' ? 1 : 0));
  perPeer('tidegate_tide_peer_backlog_updates', 'Updates waiting in the peer\u2019s outbox.', (p) => p.backlogUpdates);
  perPeer('tidegate_tide_peer_backlog_messages', 'Envelopes waiting in the peer\u2019s send chain.', (p) => p.backlogMessages);
  perPeer(
    'tidegate_tide_peer_oldest_unsent_seconds',
    'Convergence lag, sending side: age of the oldest update for the peer not yet in its inbox (0 = none).',
    (p) => p.oldestUnsentMs / 1000,
  );
  perPeer(
    'tidegate_tide_peer_delivery_lag_seconds',
    'Last message from the peer: processed time minus sealed createdAt (sender clock). -1 = none yet.',
    (p) => (p.deliveryLagMs === undefined ? -1 : p.deliveryLagMs / 1000),
  );
  perPeer('tidegate_tide_peer_lagging', '1 when the peer\u2019s last digests showed it behind (relay target).', (p) => (p.lagging ? 1 : 0));
  perPeer('tidegate_tide_peer_quarantined_total', 'Messages quarantined whose (claimed) sender is the peer.', (p) => p.quarantined);
  perPeer('tidegate_tide_peer_policy_disagreements', 'Other nodes whose advertised policy digest for the peer differs from this node\u2019s (docs/tide.md "Policy agreement"); 0 = none known.', (p) => p.policy.with.length);

  if (security) {
    new Counter({
      name: 'tidegate_security_alerts_total',
      help: 'Breach-detection alerts raised, by signal.',
      labelNames: ['signal'],
      registers: [registry],
      collect() {
        this.reset();
        for (const [signal, n] of Object.entries(security.alertCounts())) this.inc({ signal }, n);
      },
    });
  }

  new Gauge({
    name: 'tidegate_tide_inbox_pending',
    help: 'Inbox jobs waiting/active/delayed plus unsent batches and sends in flight; -1 when Redis fails.',
    registers: [registry],
    async collect() {
      try {
        this.set(await tide.pending());
      } catch {
        this.set(-1);
      }
    },
  });
  return registry;
}
