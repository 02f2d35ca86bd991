/**
 * N hospitals in one process: each a Medplum FHIR server over HTTP, a tidegate node in front of it,
 * and its own keys; all nodes gossip through one Redis. Used by the demo, the bench and the tests.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import pino from 'pino';
import type { Logger } from 'pino';
import { generateNodeKeys } from '../envelope/index.ts';
import type { NodePublicKeys } from '../envelope/index.ts';
import { HospitalClient, comparableForm, startMedplumHospital } from '../hospital/index.ts';
import type { MedplumHospital, MedplumHospitalOptions } from '../hospital/index.ts';
import { TidegateNode } from './node.ts';
import type { Mapping } from '../mapping/index.ts';
import { deleteKeysMatching } from '../tide/redis-keys.ts';

/** One hospital of the network. */
export interface Member {
  name: string;
  node: TidegateNode;
  hospital: MedplumHospital;
  client: HospitalClient;
  /** The node's FHIR base URL. */
  gateway: string;
  /** The hospital FHIR server's base URL. */
  fhirServer: string;
}

/** Options of {@link startNetwork}. */
export interface NetworkOptions {
  hospitals: number;
  /** Member names (node ids), `hospitals` of them; default `hospital-1` … `hospital-N`. */
  names?: readonly string[];
  /** Each member's mapping (docs/mappings.md), by position, given to its node and its hospital client; default none. */
  mappings?: readonly (Mapping | undefined)[];
  redisUrl: string;
  /** BullMQ prefix; default a fresh random one so runs never see each other's jobs. */
  prefix?: string;
  logger?: Logger;
  /** Anti-entropy scheduler period, ms (0 = off; {@link Network.antiEntropy} still works). */
  antiEntropyIntervalMs?: number;
  batchDelayMs?: number;
  /** Period of each node's hospital `_history` poll, ms (0 = off). Default: the node's default (5000). */
  hospitalPollIntervalMs?: number;
  /** Outbox retry delays of each node, ms: base and cap (defaults: the node's, 200 and 30000). */
  hospitalBackoffMs?: number;
  hospitalMaxBackoffMs?: number;
  /** Options of every stand-in hospital server (e.g. `allowUpdateCreate: false`); port and name are set per hospital. */
  hospitalServer?: Omit<MedplumHospitalOptions, 'port' | 'name' | 'repo'>;
}

/** A running network; see {@link startNetwork}. */
export class Network {
  readonly members: Member[];
  readonly prefix: string;
  private readonly redisUrl: string;

  constructor(members: Member[], prefix: string, redisUrl: string) {
    this.members = members;
    this.prefix = prefix;
    this.redisUrl = redisUrl;
  }

  /** Waits until every node is quiet (gossip sent and drained, hospital writes done). */
  async quiet(): Promise<boolean> {
    let all = true;
    for (const m of this.members) all = (await m.node.quiet()) && all;
    return all;
  }

  /** Runs one anti-entropy round from every node. */
  async antiEntropy(): Promise<void> {
    for (const m of this.members) await m.node.tide.runAntiEntropy();
  }

  /**
   * Keys whose current canonical body differs between nodes (or that some node lacks).
   * @returns An empty array when all replicas hold the same bytes for every resource.
   */
  divergent(): string[] {
    const keys = new Set<string>();
    for (const m of this.members) for (const k of m.node.replica.keys()) keys.add(k);
    const out: string[] = [];
    for (const k of keys) {
      const bodies = this.members.map((m) => {
        const v = m.node.replica.current(k);
        return v ? `${v.versionId}|${v.body ?? 'deleted'}` : undefined;
      });
      if (bodies.some((b) => b === undefined || b !== bodies[0])) out.push(k);
    }
    return out;
  }

  /**
   * Waits until all replicas hold the same bytes and all are quiet.
   * @param timeoutMs - give up after this many ms.
   * @returns Convergence time in ms, or undefined on timeout.
   */
  async converge(timeoutMs = 120_000): Promise<number | undefined> {
    const t0 = performance.now();
    let lastAe = t0;
    for (;;) {
      const quiet = await this.quiet();
      if (quiet && this.divergent().length === 0) return performance.now() - t0;
      if (performance.now() - t0 > timeoutMs) return undefined;
      if (quiet && performance.now() - lastAe > 2000) {
        await this.antiEntropy();
        lastAe = performance.now();
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /**
   * Compares every hospital FHIR server's copy of every resource with the others and with the
   * node's merged resource, in comparable canonical form (server-managed meta removed; numbers
   * normalized because Medplum's server parses JSON with JSON.parse, which drops `1.50` to `1.5`).
   * @returns Keys compared and keys that differ anywhere.
   */
  async compareHospitals(): Promise<{ compared: number; mismatched: string[] }> {
    const first = this.members[0]!;
    const types = [...new Set([...first.node.replica.keys()].map((k) => k.slice(0, k.indexOf('/'))))].sort();
    const copies = await Promise.all(this.members.map((m) => m.client.readAll(types)));
    const maps = copies.map((list) => new Map(list.map((r) => [`${String(r.resourceType)}/${String(r.id)}`, comparableForm(r, { normalizeNumbers: true })])));
    const mismatched: string[] = [];
    let compared = 0;
    for (const key of first.node.replica.keys()) {
      const v = first.node.replica.current(key);
      compared++;
      const expected = v?.body ? comparableForm(JSON.parse(v.body) as Record<string, unknown> & { resourceType: string }, { normalizeNumbers: true }) : undefined;
      if (maps.some((m) => m.get(key) !== expected)) mismatched.push(key);
    }
    return { compared, mismatched };
  }

  /** Stops every node and hospital, and deletes this network's keys from Redis. */
  async stop(): Promise<void> {
    for (const m of [...this.members].reverse()) {
      await m.node.stop();
      await m.hospital.close();
    }
    const r = new Redis(this.redisUrl, { maxRetriesPerRequest: 1 });
    try {
      await deleteKeysMatching(r, `${this.prefix}:*`);
    } finally {
      r.disconnect();
    }
  }
}

/**
 * Starts `hospitals` hospitals (names `hospital-1` … unless `names` are given), each with a Medplum
 * server, a node and keys, and its mapping when `mappings` gives one.
 * @throws RangeError when `names` or `mappings` do not have `hospitals` items; an Error when Redis is
 *   unreachable or ports cannot be bound (everything started is stopped again).
 */
export async function startNetwork(opts: NetworkOptions): Promise<Network> {
  const prefix = opts.prefix ?? `tidegate-${randomBytes(4).toString('hex')}`;
  const log = opts.logger ?? pino({ level: 'warn' });
  const names = opts.names ?? Array.from({ length: opts.hospitals }, (_, i) => `hospital-${i + 1}`);
  if (names.length !== opts.hospitals || (opts.mappings !== undefined && opts.mappings.length !== opts.hospitals)) throw new RangeError(`startNetwork: names and mappings must have ${opts.hospitals} items`);
  const keys = names.map((n) => generateNodeKeys(n));
  const publics = new Map<string, NodePublicKeys>(keys.map((k) => [k.publicKeys.nodeId, k.publicKeys]));
  const members: Member[] = [];
  const network = new Network(members, prefix, opts.redisUrl);
  try {
    for (const [i, name] of names.entries()) {
      const hospital = await startMedplumHospital({ ...opts.hospitalServer, name: `${name}-fhir` });
      const mapping = opts.mappings?.[i];
      const client = new HospitalClient({ baseUrl: hospital.url, ...(mapping ? { mapping } : {}) });
      const node = new TidegateNode({
        secretKeys: keys[i]!.secretKeys,
        peers: names.filter((n) => n !== name).map((n) => ({ nodeId: n, redisUrl: opts.redisUrl, publicKeys: publics.get(n)! })),
        redisUrl: opts.redisUrl,
        queuePrefix: prefix,
        hospital: client,
        ...(mapping ? { mapping } : {}),
        logger: log.child({ node: name }),
        antiEntropyIntervalMs: opts.antiEntropyIntervalMs ?? 0,
        ...(opts.batchDelayMs !== undefined ? { batchDelayMs: opts.batchDelayMs } : {}),
        ...(opts.hospitalPollIntervalMs !== undefined ? { hospitalPollIntervalMs: opts.hospitalPollIntervalMs } : {}),
        ...(opts.hospitalBackoffMs !== undefined ? { hospitalBackoffMs: opts.hospitalBackoffMs } : {}),
        ...(opts.hospitalMaxBackoffMs !== undefined ? { hospitalMaxBackoffMs: opts.hospitalMaxBackoffMs } : {}),
      });
      members.push({ name, node, hospital, client, gateway: '', fhirServer: hospital.url });
      members[members.length - 1]!.gateway = await node.start();
    }
  } catch (err) {
    await network.stop().catch(() => {});
    throw err;
  }
  return network;
}
