/**
 * The mapping configuration in force, reloadable without a restart (docs/mappings.md "Reload";
 * issue 8 "Reload"): SIGHUP or `POST /admin/reload` reads the mapping file again (and its
 * ConceptMaps and crosswalks) with {@link loadMapping}, the same checks as `tidegate config check`.
 *
 * - An invalid file changes nothing: the mapping in force stays, and the reload fails with a
 *   {@link MappingConfigError} whose issues say why (file:line:column, message, hint).
 * - A valid file replaces the mapping in one synchronous step. Everything that uses the mapping
 *   reads {@link LiveMapping.current} (or calls the delegating methods below) at the moment it
 *   handles one version or one message, so each is handled entirely under one mapping, and nothing
 *   in flight is dropped.
 *
 * A `LiveMapping` is a drop-in for a `Mapping` where the hospital client, the poller and
 * `$translate` take one (`translate`, `maps`), and for Tide's routing check (`peers`, `routeAllows`).
 */
import { displayPath, loadMapping, MappingConfigError } from './load.ts';
import type { ConfigIssue, LoadMappingOptions, Mapping } from './load.ts';
import type { CompiledConceptMap } from './conceptmap.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import type { MappingDirection } from './translate.ts';

/**
 * Told about a candidate mapping before it replaces the current one. Throw to refuse the reload
 * (nothing changes; a {@link MappingConfigError} keeps its issues, any other error becomes one
 * issue at the mapping file); return a function to run once the candidate is in force (it must not
 * throw, and runs synchronously with the swap).
 */
export type MappingReloadHook = (next: Mapping, current: Mapping) => (() => void) | void;

/** A checked candidate of {@link LiveMapping.prepare}, not yet in force. */
export interface PreparedMapping {
  readonly mapping: Mapping;
  /** Warnings of the check (`tidegate config check` prints the same). */
  readonly warnings: readonly ConfigIssue[];
  /** @internal what the hooks run at the swap */
  readonly commits: readonly (() => void)[];
}

/** What one successful reload did (no PHI: a path and counts). */
export interface MappingReloadReport {
  /** The mapping file, as shown in messages (relative to the working directory when shorter). */
  file: string;
  reloaded: true;
  /** Number of warnings (each is logged with its file:line:column). */
  warnings: number;
}

/** See module doc. */
export class LiveMapping {
  #current: Mapping;
  readonly #options: LoadMappingOptions;
  readonly #hooks: MappingReloadHook[] = [];

  /**
   * @param initial - the mapping loaded at start (`loadMappingOrThrow`).
   * @param options - the options it was loaded with (peer ids, profiles directory, logger): a
   *   reload checks the file again with these.
   */
  constructor(initial: Mapping, options: LoadMappingOptions = {}) {
    this.#current = initial;
    this.#options = options;
  }

  /** The mapping in force. Read it once per version or message handled. */
  get current(): Mapping {
    return this.#current;
  }

  /** The mapping file (absolute path); the node config names it, so a reload never changes it. */
  get file(): string {
    return this.#current.file;
  }

  /**
   * Registers a hook run on every reload, before and at the swap (see {@link MappingReloadHook}).
   * @param hook - the hook.
   */
  onReload(hook: MappingReloadHook): void {
    this.#hooks.push(hook);
  }

  /**
   * Reads and checks the mapping file again, and runs the hooks' checks, without changing anything.
   * @returns The candidate, to give to {@link commit}.
   * @throws MappingConfigError with every issue (errors and warnings) when the file or a hook refuses it.
   */
  prepare(): PreparedMapping {
    const { mapping, issues } = loadMapping(this.#current.file, this.#options);
    if (mapping === undefined) throw new MappingConfigError(issues);
    const commits: (() => void)[] = [];
    for (const hook of this.#hooks) {
      try {
        const commit = hook(mapping, this.#current);
        if (commit) commits.push(commit);
      } catch (err) {
        if (err instanceof MappingConfigError) throw err;
        throw new MappingConfigError([{ severity: 'error', file: displayPath(mapping.file), line: 1, column: 1, pointer: '', message: (err as Error).message, hint: 'fix the file it names, then reload again' }]);
      }
    }
    return { mapping, warnings: issues.filter((i) => i.severity === 'warning'), commits };
  }

  /**
   * Puts a candidate of {@link prepare} in force: one synchronous swap, then the hooks' commits.
   * Warnings are logged to the load options' logger (file:line:column and message, no PHI).
   * @param prepared - from {@link prepare}.
   * @returns The report.
   */
  commit(prepared: PreparedMapping): MappingReloadReport {
    this.#current = prepared.mapping;
    for (const c of prepared.commits) c();
    for (const w of prepared.warnings) this.#options.logger?.warn({ file: w.file, line: w.line, column: w.column }, `mapping configuration: ${w.message}`);
    return { file: displayPath(prepared.mapping.file), reloaded: true, warnings: prepared.warnings.length };
  }

  /**
   * {@link prepare} then {@link commit}.
   * @returns The report.
   * @throws MappingConfigError when the file is invalid; the mapping in force is then unchanged.
   */
  reload(): MappingReloadReport {
    return this.commit(this.prepare());
  }

  /** Peer ids with routing rules in the mapping in force (Tide's `RouteCheck`). */
  get peers(): string[] {
    return this.#current.peers;
  }

  /**
   * `Mapping.routeAllows` of the mapping in force.
   * @param peerId - a peer node id.
   * @param resource - plain JSON of the resource's current version.
   */
  routeAllows(peerId: string, resource: unknown): boolean {
    return this.#current.routeAllows(peerId, resource);
  }

  /**
   * `Mapping.translate` of the mapping in force (one version, one mapping).
   * @param resource - FHIR JSON; not modified.
   * @param direction - `inbound` or `outbound`.
   * @throws MappingError when a `reject` map meets a coding it cannot translate.
   */
  translate(resource: FhirJsonObject, direction: MappingDirection): ReturnType<Mapping['translate']> {
    return this.#current.translate(resource, direction);
  }

  /**
   * `Mapping.maps` of the mapping in force (`$translate`).
   * @param url - canonical URL.
   * @param version - `ConceptMap.version`.
   */
  maps(url?: string, version?: string): CompiledConceptMap[] {
    return this.#current.maps(url, version);
  }
}

/** What {@link nodeReloader} did: per part, its report (absent when the node has no such part). */
export interface NodeReloadReport {
  /** The peers' public keys (`PeerKeyring.reload` result: changed and unchanged kids, no key bytes). */
  keys?: unknown;
  /** The mapping file. */
  mapping?: MappingReloadReport;
}

/**
 * One reload of a node's reloadable configuration, all or nothing: the mapping file is read and
 * checked first (nothing changes when it is invalid), then the peers' public key files are re-read
 * (`PeerKeyring.reload`, itself all or nothing: nothing changes when one is invalid, and then the
 * new mapping is not put in force either), then the mapping is swapped. Reloads run one at a time
 * (a SIGHUP during a `POST /admin/reload` waits), so an older read never replaces a newer one.
 * @param parts.mapping - the node's live mapping, when the node config names a `mappingFile`.
 * @param parts.keys - re-reads the peers' public keys; must change nothing when it throws.
 * @returns A function running one reload: resolves to the report; rejects with the
 *   MappingConfigError (invalid mapping) or the key file error, nothing changed.
 */
export function nodeReloader(parts: { mapping?: LiveMapping; keys?: () => Promise<unknown> }): () => Promise<NodeReloadReport> {
  let chain: Promise<unknown> = Promise.resolve();
  const once = async (): Promise<NodeReloadReport> => {
    const prepared = parts.mapping?.prepare();
    const keys = parts.keys ? await parts.keys() : undefined;
    const mapping = prepared ? parts.mapping!.commit(prepared) : undefined;
    return { ...(parts.keys ? { keys } : {}), ...(mapping ? { mapping } : {}) };
  };
  return () => {
    const run = chain.then(once, once);
    chain = run.catch(() => {});
    return run;
  };
}
