/**
 * Policy agreement (docs/tide.md "Policy agreement", docs/mappings.md "Policy agreement"): the
 * rules deciding what a peer receives are enforced by the sender, and gossip brings every node the
 * shared document of every resource, so every node serving a peer P must apply the same rules to
 * P. Each node advertises, in its anti-entropy round, its policy digest per peer (SHA-256 over the
 * canonical rules, src/mapping/policy-digest.ts) in a sealed `ae-policy` message; the receiver
 * compares them with its own.
 *
 * Comparison rule: a node N receiving the digests of sender S compares, for every peer P that
 * N serves (has a digest for) and S advertised, except P = S. P = N never occurs (a node is not
 * its own peer; S leaves the recipient's own digest out). S's rules about S itself do not exist,
 * and N's rules about S are N's business with S alone: S's data reaches S directly, never through
 * a third node it could disagree with. A peer S does not advertise is one S does not serve: nothing
 * to compare.
 *
 * Rollout: an old node does not know `ae-policy` and refuses it (`ERR_UNKNOWN_KIND`, quarantined
 * there). So a node sends it to a peer every round only once that peer sent one itself
 * ("capable"); to any other peer, once per start (a probe). A new node accepts an old node's
 * messages unchanged: `ae-tree`, `ae-digest` and `ae-reply` are not modified, and a peer that never
 * sent `ae-policy` is shown as "unknown" (never as disagreeing).
 */
import type { PolicyDigestEntry } from './codec.ts';

/** `GET /admin/peers` `policy` of one peer (no PHI: node ids and digest prefixes). */
export interface PeerPolicyStatus {
  /** First 12 hex characters of this node's policy digest for the peer; undefined without a digest source. */
  digest: string | undefined;
  /** False when some node advertised another digest for the peer; true when some agreed and none differed; undefined when no other node advertised one. */
  agrees: boolean | undefined;
  /** Nodes whose advertised digest for this peer differs from this node's (sorted). */
  with: string[];
  /** Nodes whose advertised digest for this peer equals this node's (sorted). */
  agreeing: string[];
  /** Third peers for which this peer's advertised digest differs from this node's (sorted). */
  disagreesOn: string[];
  /** When this peer's last `ae-policy` was processed (ms since the epoch); undefined when it never sent one. */
  reportedAt: number | undefined;
}

/** A peer not known to send `ae-policy` is probed at start and then once every this many anti-entropy rounds. */
export const PROBE_EVERY_ROUNDS = 20;

/** What is known of one peer's advertised digests. */
interface Advertised {
  /** Peer id → hex digest, as last advertised. */
  digests: Map<string, string>;
  at: number;
}

const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
const PREFIX = 12;
/** A policy digest as the source gives it: SHA-256, 64 lowercase hex characters. */
const HEX_DIGEST_RE = /^[0-9a-f]{64}$/;

/** See module doc. One per Tide. */
export class PolicyAgreement {
  readonly #source: (() => ReadonlyMap<string, string>) | undefined;
  readonly #enforcement: (() => ReadonlyMap<string, '*' | ReadonlySet<string>>) | undefined;
  readonly #advertised = new Map<string, Advertised>();
  /** Rounds since the last probe of a peer not known to be capable (absent: never probed). */
  readonly #sinceProbe = new Map<string, number>();

  /**
   * @param source - this node's policy digests (peer id → 64 hex characters), read at each use; undefined: none advertised.
   * @param enforcement - fail-closed mode: per peer, the resource types its rules redact or withhold here (`'*'` = all).
   */
  constructor(source: (() => ReadonlyMap<string, string>) | undefined, enforcement?: () => ReadonlyMap<string, '*' | ReadonlySet<string>>) {
    this.#source = source;
    this.#enforcement = enforcement;
  }

  /** True in the fail-closed mode: an enforcement source was given and names some peer (read now: a reload may turn it on or off). */
  get enforcing(): boolean {
    return this.#enforcement !== undefined && this.#enforcement().size > 0;
  }

  /**
   * Fail-closed mode: must a resource of `type` be kept from `recipient`? Yes when, for some other
   * peer R whose rules redact or withhold that type here, the recipient never advertised digests,
   * or advertised a digest for R other than this node's (it would apply other rules to R). A
   * recipient that advertised digests without R does not serve R: nothing to fear from it about R.
   * @param recipient - the peer a resource would be sent to.
   * @param type - the resource's type.
   * @returns False when not enforcing.
   */
  blocks(recipient: string, type: string): boolean {
    const enforcement = this.#enforcement?.();
    if (enforcement === undefined || enforcement.size === 0) return false;
    const adv = this.#advertised.get(recipient);
    const mine = this.mine();
    for (const [peer, types] of enforcement) {
      if (peer === recipient || (types !== '*' && !types.has(type))) continue;
      if (adv === undefined) return true;
      const theirs = adv.digests.get(peer);
      if (theirs !== undefined && theirs !== mine.get(peer)) return true;
    }
    return false;
  }

  /** This node's digests now (empty without a source). */
  mine(): ReadonlyMap<string, string> {
    return this.#source?.() ?? new Map();
  }

  /**
   * Whether to send `ae-policy` to the peer in this round, and the entries: every digest of this
   * node but the recipient's own (the rules about it are not its business to check).
   * @param peerId - the recipient.
   * @returns The entries, or undefined: nothing to send (no source, or a peer not known to be
   *   capable that was probed less than {@link PROBE_EVERY_ROUNDS} rounds ago).
   */
  outgoing(peerId: string): PolicyDigestEntry[] | undefined {
    if (this.#source === undefined) return undefined;
    if (!this.#advertised.has(peerId)) {
      // probe a peer not known to be capable at start, then every PROBE_EVERY_ROUNDS rounds (a lost
      // probe must not leave two nodes silent for good; an old node quarantines one per probe)
      const since = this.#sinceProbe.get(peerId);
      if (since !== undefined && since + 1 < PROBE_EVERY_ROUNDS) {
        this.#sinceProbe.set(peerId, since + 1);
        return undefined;
      }
      this.#sinceProbe.set(peerId, 0);
    }
    const out: PolicyDigestEntry[] = [];
    for (const [peer, d] of this.mine()) if (peer !== peerId && HEX_DIGEST_RE.test(d)) out.push({ peer, digest: Buffer.from(d, 'hex') });
    return out;
  }

  /**
   * Records the digests a peer advertised (replacing what it advertised before).
   * @param sender - the verified sender.
   * @param entries - decoded `ae-policy` entries.
   * @param now - ms since the epoch.
   * @returns The peers on which the sender disagrees with this node (sorted).
   */
  receive(sender: string, entries: readonly PolicyDigestEntry[], now: number): string[] {
    this.#advertised.set(sender, { digests: new Map(entries.map((e) => [e.peer, hex(e.digest)])), at: now });
    return this.disagreementsOf(sender);
  }

  /**
   * Peers on which `sender`'s last advertised digests differ from this node's (comparison rule: module doc).
   * @param sender - a peer id.
   */
  disagreementsOf(sender: string): string[] {
    const adv = this.#advertised.get(sender);
    if (adv === undefined) return [];
    const out: string[] = [];
    for (const [peer, d] of this.mine()) {
      if (peer === sender) continue;
      const theirs = adv.digests.get(peer);
      if (theirs !== undefined && theirs !== d) out.push(peer);
    }
    return out.sort();
  }

  /**
   * The policy status of one peer, computed now from this node's current digests (a reload shows at once).
   * @param peerId - a peer id.
   */
  status(peerId: string): PeerPolicyStatus {
    const mine = this.mine().get(peerId);
    const differ: string[] = [];
    const agreeing: string[] = [];
    if (mine !== undefined) {
      for (const [node, adv] of this.#advertised) {
        if (node === peerId) continue;
        const theirs = adv.digests.get(peerId);
        if (theirs === undefined) continue;
        (theirs === mine ? agreeing : differ).push(node);
      }
    }
    return {
      digest: mine?.slice(0, PREFIX),
      agrees: differ.length > 0 ? false : agreeing.length > 0 ? true : undefined,
      with: differ.sort(),
      agreeing: agreeing.sort(),
      disagreesOn: this.disagreementsOf(peerId),
      reportedAt: this.#advertised.get(peerId)?.at,
    };
  }

  /**
   * The digest prefix a node advertised for a peer (for logs; no PHI).
   * @param node - the advertising node.
   * @param peerId - the peer the digest is about.
   */
  advertisedPrefix(node: string, peerId: string): string | undefined {
    return this.#advertised.get(node)?.digests.get(peerId)?.slice(0, PREFIX);
  }
}
