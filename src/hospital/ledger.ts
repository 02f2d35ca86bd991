/**
 * What a node knows about each resource's state at its hospital FHIR server, shared by the outbox
 * (src/hospital/outbox.ts, the node's writes) and the poller (src/hospital/poller.ts, the
 * hospital's `_history`, https://hl7.org/fhir/R4/http.html#history).
 *
 * It answers three questions:
 * - **Is this hospital version one the node wrote?** The outbox records each write before it is
 *   sent (content hash) and after it succeeded (the hospital's `versionId`). A version that matches
 *   is the node's own write coming back and is not merged again (no echo loop).
 * - **What did the hospital hold before an edit made directly on it?** The node version the
 *   hospital last held verbatim (the *base*), so an edit is diffed against what its author saw and
 *   never reverts node changes the hospital had not received yet.
 * - **Does the hospital already hold this node version?** Then the outbox need not write it (a
 *   hospital edit merged without concurrent changes needs no write back).
 *
 * Everything is in memory (lost on restart; then the poller diffs against the node's current
 * version and the outbox writes once more). No resource content is kept: only version ids and
 * SHA-256 hashes of content.
 */
import { createHash } from 'node:crypto';
import { comparableForm } from './client.ts';
import type { FhirJsonObject } from '../fhir/json.ts';

/** {@link contentHash} of a deletion. */
export const DELETED_HASH = 'deleted';

/**
 * Own writes remembered per resource. Every own version still to be read back through `_history`
 * must be remembered, or it would be taken for a hospital edit and merged back (reverting newer
 * content): 16 was too few when one resource was written ~25 times between two polls (found by the
 * bench). 512 covers ~100 writes/s to one resource at the default 5 s poll period.
 */
export const OWN_WRITES_KEPT = 512;

/**
 * Hash of a resource's content as two servers holding the same content agree on it: SHA-256 (hex)
 * of {@link comparableForm} with numbers normalized (server-managed `meta` removed, `1.50` = `1.5`,
 * see https://hl7.org/fhir/R4/json.html#primitive). `null` (a deletion) hashes to {@link DELETED_HASH}.
 *
 * @param body - a resource in node-id form, or `null` for a deletion.
 * @returns 64 hex characters, or `'deleted'`.
 * @throws TypeError when `body` is not a JSON object.
 */
export function contentHash(body: FhirJsonObject | null): string {
  if (body === null) return DELETED_HASH;
  return createHash('sha256').update(comparableForm(body, { normalizeNumbers: true })).digest('hex');
}

interface OwnWrite {
  nodeVersionId: string;
  hash: string;
  hospitalVersionId: string | undefined;
}

/** What the hospital holds: a node version (or `null`: other content), as of hospital time `at` (ms; Infinity = unknown, newest). */
interface Holding {
  v: string | null;
  at: number;
  byPoller: boolean;
}

function instantMs(instant: string | undefined): number {
  const ms = instant === undefined ? Number.NaN : Date.parse(instant);
  return Number.isNaN(ms) ? Number.POSITIVE_INFINITY : ms;
}

/** See module doc. Keys are node `Type/id`; version ids are node versionIds unless named hospital. */
export class SyncLedger {
  readonly #own = new Map<string, OwnWrite[]>();
  readonly #polledBase = new Map<string, string>();
  readonly #lastWritten = new Map<string, string>();
  readonly #holds = new Map<string, Holding>();

  /**
   * Records that the outbox is about to write node version `nodeVersionId` of `key`, whose content
   * hashes to `hash` ({@link contentHash}). From now on a hospital version with that hash is the
   * node's own, even before the write's answer arrives.
   * @param key - node `Type/id`.
   * @param nodeVersionId - node versionId being written.
   * @param hash - its {@link contentHash}.
   */
  beginWrite(key: string, nodeVersionId: string, hash: string): void {
    const list = this.#own.get(key) ?? [];
    list.push({ nodeVersionId, hash, hospitalVersionId: undefined });
    if (list.length > OWN_WRITES_KEPT) list.splice(0, list.length - OWN_WRITES_KEPT);
    this.#own.set(key, list);
  }

  /**
   * Records that the write begun with {@link beginWrite} succeeded: the hospital now holds
   * `nodeVersionId`, stored there as `hospitalVersionId` at `hospitalLastUpdated` when the hospital said.
   * @param key - node `Type/id`.
   * @param nodeVersionId - node versionId written.
   * @param hospitalVersionId - the hospital's `meta.versionId` of the stored version, if known.
   * @param hospitalLastUpdated - the hospital's `meta.lastUpdated` of it (FHIR instant), if known.
   */
  wrote(key: string, nodeVersionId: string, hospitalVersionId: string | undefined, hospitalLastUpdated?: string): void {
    const list = this.#own.get(key);
    const entry = list?.findLast((w) => w.nodeVersionId === nodeVersionId && w.hospitalVersionId === undefined);
    if (entry) entry.hospitalVersionId = hospitalVersionId;
    this.#lastWritten.set(key, nodeVersionId);
    this.#holds.set(key, { v: nodeVersionId, at: instantMs(hospitalLastUpdated), byPoller: false });
  }

  /**
   * If a hospital version is the node's own write (same hospital `versionId`; or, for a write whose
   * hospital version is not known, e.g. still in flight, the same content hash), returns the node
   * versionId written, and forgets older own writes of `key` (the hospital has moved past them).
   * Otherwise `undefined`.
   * @param key - node `Type/id`.
   * @param hospitalVersionId - the hospital version's id, if it has one.
   * @param hash - its {@link contentHash}.
   * @param lastUpdated - its `lastUpdated` (FHIR instant), if known; dates the node's record of
   *   what the hospital holds when the write's answer did not.
   * @returns The node versionId, or `undefined` when the version is not the node's.
   */
  matchOwn(key: string, hospitalVersionId: string | undefined, hash: string, lastUpdated?: string): string | undefined {
    const list = this.#own.get(key);
    if (!list) return undefined;
    let i = hospitalVersionId === undefined ? -1 : list.findIndex((w) => w.hospitalVersionId === hospitalVersionId);
    // Content only identifies writes whose hospital version is not known (in flight, or the
    // hospital did not say): a hospital edit that restores content the node wrote earlier is an edit.
    if (i < 0) i = list.findLastIndex((w) => w.hospitalVersionId === undefined && w.hash === hash);
    if (i < 0) return undefined;
    const found = list[i]!;
    list.splice(0, i);
    const holding = this.#holds.get(key);
    if (holding !== undefined && holding.v === found.nodeVersionId && holding.at === Number.POSITIVE_INFINITY) holding.at = instantMs(lastUpdated);
    return found.nodeVersionId;
  }

  /**
   * The node version the hospital last held verbatim, to diff a hospital edit against: the one
   * the poller last established (see {@link setBase}), else the node's last successful write.
   * @param key - node `Type/id`.
   * @returns A node versionId, or `undefined` when unknown (diff against the current version).
   */
  base(key: string): string | undefined {
    return this.#polledBase.get(key) ?? this.#lastWritten.get(key);
  }

  /**
   * Sets the base of `key` (see {@link base}), as the poller walks the hospital's history in order.
   * @param key - node `Type/id`.
   * @param nodeVersionId - node versionId the hospital holds verbatim at that point.
   */
  setBase(key: string, nodeVersionId: string): void {
    this.#polledBase.set(key, nodeVersionId);
  }

  /**
   * Records what the hospital held as of its version at `lastUpdated` (a version the poller just
   * merged): node version `nodeVersionId`, or `null` for content that is no node version (a
   * hospital edit merged with concurrent node changes). Ignored when the node knows of a later
   * hospital version of `key` (its own write answered after that time): the hospital has moved on.
   * @param key - node `Type/id`.
   * @param nodeVersionId - node versionId, or `null`.
   * @param lastUpdated - the hospital version's `lastUpdated` (FHIR instant), if known.
   */
  setHolds(key: string, nodeVersionId: string | null, lastUpdated: string | undefined): void {
    const at = instantMs(lastUpdated);
    const current = this.#holds.get(key);
    if (current !== undefined && !(at > current.at || (at === current.at && current.byPoller))) return;
    this.#holds.set(key, { v: nodeVersionId, at, byPoller: true });
  }

  /**
   * The node version the hospital is known to hold now.
   * @param key - node `Type/id`.
   * @returns A node versionId, `null` (hospital holds other content), or `undefined` (unknown).
   */
  holds(key: string): string | null | undefined {
    return this.#holds.get(key)?.v;
  }
}
