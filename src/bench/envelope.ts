/**
 * Figure 2: seal+sign and verify+open per tidegate-env/1 envelope, for a Tide `updates` plaintext
 * (src/tide/codec.ts `encodeUpdates`) holding (a) one real Yjs create update of a Synthea Patient,
 * (b) one Patient edit update, and (c) a batch of 200 updates; envelope size and overhead. Then a
 * breakdown of one seal/open into its primitives (X-Wing, ML-DSA-65, AES-256-GCM), measured side by
 * side in the same loop.
 */
import { randomUUID } from 'node:crypto';
import { gcm } from '@noble/ciphers/aes.js';
import { randomBytes } from '@noble/hashes/utils.js';
import { ml_dsa65 } from '@noble/post-quantum/ml-dsa.js';
import { ml_kem768_x25519 } from '@noble/post-quantum/hybrid.js';
import { generateNodeKeys, open, seal, signatureInput } from '../envelope/index.ts';
import { encodeUpdates } from '../tide/index.ts';
import type { ResourceUpdate } from '../tide/index.ts';
import { nextTurn, ratio, summarize } from './stats.ts';
import type { Summary } from './stats.ts';

/** Figures of one payload. Durations in ms, sizes in bytes. */
export interface EnvelopeCase {
  /** What the plaintext holds. */
  label: string;
  updates: number;
  /** Tide plaintext bytes (`encodeUpdates`). */
  plaintextBytes: number;
  /** Serialized envelope (ASCII JSON) bytes. */
  envelopeBytes: number;
  /** envelopeBytes − plaintextBytes. */
  overheadBytes: number;
  /** envelopeBytes / plaintextBytes. */
  expansion: number | null;
  /** `seal` (X-Wing encaps, HKDF, AES-GCM, ML-DSA-65 sign, base64url). */
  seal: Summary;
  /** `open` (strict parse, ML-DSA-65 verify, X-Wing decaps, HKDF, AES-GCM decrypt). */
  open: Summary;
}

/** Primitive costs of one seal + open of the single-update payload, ms. */
export interface EnvelopeBreakdown {
  xwingEncapsulate: Summary;
  mldsaSign: Summary;
  aesGcmEncrypt: Summary;
  mldsaVerify: Summary;
  xwingDecapsulate: Summary;
  aesGcmDecrypt: Summary;
  /** Median shares of `seal` and `open` medians taken by the signature primitives (0..1). */
  signShareOfSeal: number | null;
  verifyShareOfOpen: number | null;
}

/** Figure 2 results. */
export interface EnvelopeFigures {
  cases: EnvelopeCase[];
  breakdown: EnvelopeBreakdown;
}

/** Inputs of {@link runEnvelopeBench}: the payloads to seal. */
export interface EnvelopeInputs {
  /** A typical (median-size) Patient create update. */
  patientCreate: ResourceUpdate;
  /** A typical Patient edit update. */
  patientEdit: ResourceUpdate;
  /** The batch (200 updates). */
  batch: ResourceUpdate[];
  /** Description of the batch's contents, for the report. */
  batchLabel: string;
}

/** Iteration counts of {@link runEnvelopeBench}. */
export interface EnvelopeBenchOptions {
  warmup?: number;
  /** Iterations for single-update payloads. Default 120. */
  iterations?: number;
  /** Iterations for the batch. Default 25. */
  batchIterations?: number;
  /** Iterations of the primitive breakdown. Default 60. */
  breakdownIterations?: number;
  /** Progress callback (stderr). */
  progress?: (msg: string) => void;
}

async function measureCase(label: string, updates: ResourceUpdate[], warmup: number, iterations: number): Promise<EnvelopeCase> {
  const a = generateNodeKeys('hospital-1');
  const b = generateNodeKeys('hospital-2');
  const peers = new Map([[a.publicKeys.nodeId, a.publicKeys]]);
  const plaintext = encodeUpdates(updates);
  const resources = [...new Set(updates.map((u) => u.key))];
  const sealT: number[] = [];
  const openT: number[] = [];
  let envelopeBytes = 0;
  for (let i = 0; i < warmup + iterations; i++) {
    let t = performance.now();
    const env = seal({ kind: 'updates', messageId: randomUUID(), resources, plaintext }, a.secretKeys, b.publicKeys);
    const ts = performance.now() - t;
    t = performance.now();
    const opened = open(env, b.secretKeys, peers);
    const to = performance.now() - t;
    if (opened.plaintext.length !== plaintext.length) throw new Error('envelope bench: open returned a different plaintext');
    envelopeBytes = env.length;
    if (i >= warmup) {
      sealT.push(ts);
      openT.push(to);
    }
    await nextTurn();
  }
  return {
    label,
    updates: updates.length,
    plaintextBytes: plaintext.length,
    envelopeBytes,
    overheadBytes: envelopeBytes - plaintext.length,
    expansion: ratio(envelopeBytes, plaintext.length),
    seal: summarize(sealT),
    open: summarize(openT),
  };
}

async function measureBreakdown(update: ResourceUpdate, warmup: number, iterations: number): Promise<Omit<EnvelopeBreakdown, 'signShareOfSeal' | 'verifyShareOfOpen'>> {
  const a = generateNodeKeys('hospital-1');
  const b = generateNodeKeys('hospital-2');
  const plaintext = encodeUpdates([update]);
  const aad = new TextEncoder().encode(`{"protected-header-stand-in":"${'x'.repeat(400)}"}`);
  const ctx = new TextEncoder().encode('tidegate-env/1');
  const out = { enc: [] as number[], sign: [] as number[], gcmE: [] as number[], verify: [] as number[], dec: [] as number[], gcmD: [] as number[] };
  for (let i = 0; i < warmup + iterations; i++) {
    let t = performance.now();
    const { cipherText: ek, sharedSecret } = ml_kem768_x25519.encapsulate(b.publicKeys.kemPublicKey);
    const tEnc = performance.now() - t;
    const key = sharedSecret.slice(0, 32);
    const iv = randomBytes(12);
    t = performance.now();
    const ct = gcm(key, iv, aad).encrypt(plaintext);
    const tGcmE = performance.now() - t;
    const msg = signatureInput(aad, ek, iv, ct);
    t = performance.now();
    const sig = ml_dsa65.sign(msg, a.secretKeys.sigSecretKey, { context: ctx });
    const tSign = performance.now() - t;
    t = performance.now();
    const ok = ml_dsa65.verify(sig, msg, a.publicKeys.sigPublicKey, { context: ctx });
    const tVerify = performance.now() - t;
    t = performance.now();
    const ss2 = ml_kem768_x25519.decapsulate(ek, b.secretKeys.kemSecretKey);
    const tDec = performance.now() - t;
    t = performance.now();
    const pt2 = gcm(ss2.slice(0, 32), iv, aad).decrypt(ct);
    const tGcmD = performance.now() - t;
    if (!ok || pt2.length !== plaintext.length) throw new Error('envelope bench: primitive round trip failed');
    if (i >= warmup) {
      out.enc.push(tEnc);
      out.sign.push(tSign);
      out.gcmE.push(tGcmE);
      out.verify.push(tVerify);
      out.dec.push(tDec);
      out.gcmD.push(tGcmD);
    }
    await nextTurn();
  }
  return {
    xwingEncapsulate: summarize(out.enc),
    mldsaSign: summarize(out.sign),
    aesGcmEncrypt: summarize(out.gcmE),
    mldsaVerify: summarize(out.verify),
    xwingDecapsulate: summarize(out.dec),
    aesGcmDecrypt: summarize(out.gcmD),
  };
}

/**
 * Runs figure 2.
 * @param inputs - the payloads (see {@link EnvelopeInputs}).
 * @param opts - iteration counts and a progress callback.
 * @returns {@link EnvelopeFigures}: one case per payload plus the primitive breakdown.
 * @throws Error when a sealed envelope does not open to the same plaintext.
 */
export async function runEnvelopeBench(inputs: EnvelopeInputs, opts: EnvelopeBenchOptions = {}): Promise<EnvelopeFigures> {
  const warmup = opts.warmup ?? 5;
  const iterations = opts.iterations ?? 120;
  const progress = opts.progress ?? (() => {});
  progress(`  seal/open: 1 Patient create update × ${iterations}`);
  const single = await measureCase('1 Patient create update', [inputs.patientCreate], warmup, iterations);
  progress(`  seal/open: 1 Patient edit update × ${iterations}`);
  const edit = await measureCase('1 Patient edit update', [inputs.patientEdit], warmup, iterations);
  const bi = opts.batchIterations ?? 25;
  progress(`  seal/open: batch of ${inputs.batch.length} × ${bi}`);
  const batch = await measureCase(inputs.batchLabel, inputs.batch, 3, bi);
  const biter = opts.breakdownIterations ?? 60;
  progress(`  primitives × ${biter}`);
  const bd = await measureBreakdown(inputs.patientCreate, warmup, biter);
  return {
    cases: [single, edit, batch],
    breakdown: {
      ...bd,
      signShareOfSeal: ratio(bd.mldsaSign.p50, single.seal.p50),
      verifyShareOfOpen: ratio(bd.mldsaVerify.p50, single.open.p50),
    },
  };
}
