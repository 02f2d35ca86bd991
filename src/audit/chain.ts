/**
 * The hash chain of the audit trail: where an event carries its sequence number and the SHA-256 of
 * its predecessor, and how a stored line is read back.
 *
 * Every stored event has one extension (https://hl7.org/fhir/R4/extensibility.html) with the URL
 * {@link AUDIT_CHAIN_URL} and two sub-extensions:
 * - `sequence`: `valueString`, the decimal sequence number (1 for the first event of the trail, +1
 *   for each next one; a string because R4 `integer` stops at 2^31-1);
 * - `previousHash`: `valueString`, 64 lowercase hex characters: SHA-256 of the previous stored line
 *   (the previous event's canonical JSON, RFC 8785), or {@link GENESIS_HASH} for event 1.
 */
import type { AuditEvent, Extension } from './types.ts';
import { AUDIT_CHAIN_URL } from './types.ts';

/** The chain position of one stored event. */
export interface ChainLink {
  /** Sequence number, ≥ 1. */
  seq: number;
  /** SHA-256 (hex) of the previous line, or 64 zeros for seq 1. */
  previousHash: string;
}

const HEX64 = /^[0-9a-f]{64}$/;
const SEQ = /^[1-9][0-9]{0,15}$/;

/**
 * The event with its chain extension set (any earlier chain extension replaced; the input is not modified).
 * @param event - the event as recorded.
 * @param link - its sequence number and its predecessor's hash.
 * @returns A shallow copy with `extension` = other extensions + the chain extension.
 */
export function withChain(event: AuditEvent, link: ChainLink): AuditEvent {
  const others = (event.extension ?? []).filter((e) => e.url !== AUDIT_CHAIN_URL);
  const chain: Extension = {
    url: AUDIT_CHAIN_URL,
    extension: [
      { url: 'sequence', valueString: String(link.seq) },
      { url: 'previousHash', valueString: link.previousHash },
    ],
  };
  return { ...event, extension: [...others, chain] };
}

/**
 * Reads the chain extension of a parsed event.
 * @param event - a parsed stored line.
 * @returns The link, or undefined when the extension is missing or malformed (exactly one chain
 *   extension, a decimal `sequence` ≥ 1 below 2^53, a 64-hex `previousHash`).
 */
export function chainOf(event: unknown): ChainLink | undefined {
  const ext = (event as { extension?: unknown } | null)?.extension;
  if (!Array.isArray(ext)) return undefined;
  const chains = ext.filter((e): e is Extension => (e as Extension | null)?.url === AUDIT_CHAIN_URL);
  if (chains.length !== 1) return undefined;
  const sub = chains[0]!.extension ?? [];
  const seq = sub.find((s) => s.url === 'sequence')?.valueString;
  const prev = sub.find((s) => s.url === 'previousHash')?.valueString;
  if (typeof seq !== 'string' || !SEQ.test(seq) || typeof prev !== 'string' || !HEX64.test(prev)) return undefined;
  const n = Number(seq);
  return Number.isSafeInteger(n) ? { seq: n, previousHash: prev } : undefined;
}
