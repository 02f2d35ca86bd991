/**
 * `tidegate config check --config FILE`: validates the node configuration, its mapping file (schema,
 * ConceptMaps, FHIRPath conditions), its merge-policy file, and every StructureDefinition and
 * ConceptMap in the profiles directory. Each problem is reported with its file, line, column and a
 * fix hint; the command exits non-zero when there is any error.
 */
import { accessSync, constants as fsConstants, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { loadNodeConfig, NodeConfigSchema, unknownConfigKeyMessage } from '../config/config.ts';
import type { NodeConfig } from '../config/config.ts';
import { DEFAULT_PROFILES_DIR } from '../fhir/profiles.ts';
import { publicKeysFromJson, secretKeyFileModeProblem } from '../envelope/keys.ts';
import { toFhirJson } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import { validateFhirResource } from '../fhir/validate.ts';
import { loadMergePolicy } from '../merge/policy.ts';
import { compileConceptMap, ConceptMapError, fhirPathToPointer } from './conceptmap.ts';
import { positionOf, toPointer } from './json-position.ts';
import type { JsonPositions } from './json-position.ts';
import { displayPath, formatIssue, loadMapping, readConfigFile, readJsonFile, zodIssues } from './load.ts';
import { MappingFileSchema } from './schema.ts';
import { unknownElements } from './condition-elements.ts';
import type { ConfigIssue } from './load.ts';

/** Result of {@link runConfigCheck}. */
export interface ConfigCheckReport {
  /** True when there is no error (warnings allowed). */
  ok: boolean;
  errors: number;
  warnings: number;
  /** Every issue, grouped by file in the order the files were checked. */
  issues: ConfigIssue[];
  /** Every file read. */
  files: string[];
}

/** Options of {@link runConfigCheck}. */
export interface ConfigCheckOptions {
  /** Profiles directory to check; default the repository `profiles/`. */
  profilesDir?: string;
}

/** Issues of one FHIR resource against R4 (StructureDefinition, ConceptMap), at their positions. */
function resourceIssues(file: string, positions: JsonPositions, resource: unknown, base: string): ConfigIssue[] {
  const r = resource as { resourceType?: unknown };
  const shown = displayPath(file);
  if (r?.resourceType === 'ConceptMap') {
    try {
      compileConceptMap(resource);
      return [];
    } catch (err) {
      if (!(err instanceof ConceptMapError)) throw err;
      return err.issues.map((i) => ({ severity: 'error', file: shown, ...positionOf(positions, base + i.pointer), pointer: base + i.pointer, message: i.message, hint: i.hint }));
    }
  }
  if (r?.resourceType !== 'StructureDefinition') return [];
  const out: ConfigIssue[] = validateFhirResource(toFhirJson(resource) as FhirJsonObject).map((i) => {
    const pointer = base + fhirPathToPointer(i.expression?.[0]);
    return { severity: 'error', file: shown, ...positionOf(positions, pointer), pointer, message: `StructureDefinition: ${i.details?.text ?? i.diagnostics ?? 'invalid'}`, hint: 'see https://hl7.org/fhir/R4/structuredefinition.html; a profile must be a valid R4 StructureDefinition' };
  });
  return out;
}

/**
 * Checks the profiles directory: every `*.json` must be JSON; StructureDefinitions (alone, in a JSON
 * array or in a Bundle) must be valid R4, with a url; ConceptMaps must compile. Other JSON files
 * (e.g. merge-policy.json) are not FHIR and are skipped.
 * @param dir - the directory.
 * @returns Issues and files read.
 */
export function checkProfilesDir(dir: string): { issues: ConfigIssue[]; files: string[] } {
  const issues: ConfigIssue[] = [];
  const files: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.json')).sort();
  } catch (err) {
    return { issues: [{ severity: 'error', file: displayPath(dir), line: 1, column: 1, pointer: '', message: `cannot read the profiles directory (${(err as NodeJS.ErrnoException).code ?? 'error'})`, hint: 'create it, or pass --profiles DIR' }], files };
  }
  for (const name of names) {
    const file = join(dir, name);
    let isFile: boolean;
    try {
      isFile = statSync(file).isFile();
    } catch {
      isFile = true; // a dangling link or an unreadable entry: readJsonFile reports it at the file
    }
    if (!isFile) continue;
    files.push(file);
    const read = readJsonFile(file);
    if (read.issue) {
      issues.push(read.issue);
      continue;
    }
    const v = read.value as { resourceType?: unknown; entry?: unknown };
    if (Array.isArray(v)) v.forEach((item, i) => issues.push(...resourceIssues(file, read.positions, item, `/${i}`)));
    else if (v?.resourceType === 'Bundle' && Array.isArray(v.entry)) v.entry.forEach((e, i) => issues.push(...resourceIssues(file, read.positions, (e as { resource?: unknown })?.resource, `/entry/${i}/resource`)));
    else issues.push(...resourceIssues(file, read.positions, v, ''));
  }
  return { issues, files };
}

/** A file-system error's code (ENOENT, EACCES, …), or its message. */
function fsCode(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? (err as Error).message;
}

/**
 * Why a file the node reads at start cannot be read, or undefined when it can.
 * @param file - absolute path.
 */
function unreadableFile(file: string): string | undefined {
  try {
    if (!statSync(file).isFile()) return 'not a regular file';
    accessSync(file, fsConstants.R_OK);
    return undefined;
  } catch (err) {
    return fsCode(err);
  }
}

/**
 * Why the node could not create a file at `file` (its folder is made at start when absent), or
 * undefined when it can: the nearest existing ancestor folder must be a writable directory.
 * @param file - absolute path.
 */
function uncreatableFile(file: string): string | undefined {
  let dir = dirname(file);
  for (;;) {
    try {
      if (!statSync(dir).isDirectory()) return `${dir} is not a directory`;
      accessSync(dir, fsConstants.W_OK | fsConstants.X_OK);
      return undefined;
    } catch (err) {
      const code = fsCode(err);
      if (code !== 'ENOENT' || dirname(dir) === dir) return `${dir}: ${code}`;
      dir = dirname(dir);
    }
  }
}

/**
 * What is wrong with a key file the config names, as `serve` would find it, or undefined when it
 * is the right kind of file for the right node. A public key file is read with the node's reader
 * ({@link publicKeysFromJson}: format, key lengths, key ids); a secret key file is checked for its
 * kind and node id only (`serve` also runs its pairwise consistency test). Messages name files and
 * node ids, never key bytes.
 * @param file - absolute path of a readable file.
 * @param want - the kind the setting needs.
 * @param nodeId - the node it must belong to (the config's `nodeId`, or the peer's).
 * @returns The message and the fix hint, or undefined.
 */
function keyFileProblem(file: string, want: 'secret' | 'public', nodeId: string): { message: string; hint: string } | undefined {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    return { message: `${file} is not JSON`, hint: `give ${want === 'secret' ? `${nodeId}.secret.json` : `${nodeId}.public.json`} from \`tidegate keys generate --node ${nodeId}\`` };
  }
  const o = (typeof v === 'object' && v !== null && !Array.isArray(v) ? v : {}) as { format?: unknown; nodeId?: unknown };
  const kind = typeof o.format === 'string' && /^tidegate-node-secret\//.test(o.format) ? 'secret' : typeof o.format === 'string' && /^tidegate-node-public\//.test(o.format) ? 'public' : undefined;
  if (kind === 'secret' && want === 'public') return { message: `${file} is a secret key file, not a public key file`, hint: `this is a secret key file: give the peer's .public.json (${nodeId}.public.json from ${nodeId}'s \`tidegate keys generate\`); a secret key file never leaves its node` };
  if (kind === 'public' && want === 'secret') return { message: `${file} is a public key file, not a secret key file`, hint: `this is a public key file: give this node's ${nodeId}.secret.json (from \`tidegate keys generate --node ${nodeId}\`)` };
  if (kind === undefined) return { message: `${file} is not a tidegate ${want} key file (no "format" tidegate-node-${want}/1 or /2)`, hint: `give ${nodeId}.${want}.json from \`tidegate keys generate --node ${nodeId}\`` };
  const owner = typeof o.nodeId === 'string' ? o.nodeId : '(no nodeId)';
  if (owner !== nodeId) return { message: `${file} is the ${want} key file of ${owner}, not of ${nodeId}`, hint: `this is ${owner}'s ${want} key file; give ${nodeId}'s (${nodeId}.${want}.json)` };
  if (want === 'public') {
    try {
      publicKeysFromJson(v);
    } catch (err) {
      return { message: `${file}: ${(err as Error).message.replace(/^public keys: /, '')}`, hint: `the file is damaged: copy ${nodeId}'s .public.json again` };
    }
  }
  return undefined;
}

/**
 * Files the configuration names that the node reads (key files, mapping, merge policy, TLS, JWKS)
 * or creates (store, audit trail, key vault, hospital cursor), checked on disk. Each problem is
 * reported at the config key that names the file, with the key path in the message.
 * @param path - the config file.
 * @param positions - positions of its text.
 * @param cfg - the loaded config (paths absolute).
 */
function referencedFileIssues(path: string, positions: JsonPositions, cfg: NodeConfig): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  const at = (keyPath: (string | number)[], message: string, hint: string): void => {
    const pointer = toPointer(keyPath);
    out.push({ severity: 'error', file: displayPath(path), ...positionOf(positions, pointer), pointer, message: `${keyPath.join('.')}: ${message}`, hint });
  };
  const relHint = 'paths in the config file are relative to the config file\'s folder';
  const read = (keyPath: (string | number)[], file: string | undefined, hint: string): void => {
    if (file === undefined) return;
    const why = unreadableFile(file);
    if (why) at(keyPath, `cannot read ${file} (${why})`, `${hint}; ${relHint}`);
  };
  const create = (keyPath: (string | number)[], file: string | undefined): void => {
    if (file === undefined || file === ':memory:') return;
    const why = uncreatableFile(file);
    if (why) at(keyPath, `cannot create ${file} (${why})`, `the node creates this file (and its folder) at start: the nearest existing folder must be a writable directory; ${relHint}`);
  };
  const tlsFiles = (keyPath: (string | number)[], t: Record<string, string | undefined> | undefined): void => {
    if (!t) return;
    for (const k of Object.keys(t)) read([...keyPath, k], t[k], 'a PEM file; see docs/security.md "Hardened deployment"');
  };
  read(['secretKeyFile'], cfg.secretKeyFile, 'create it with `tidegate keys generate --node <nodeId> --out <folder>`');
  const secretProblem = unreadableFile(cfg.secretKeyFile) ? undefined : keyFileProblem(cfg.secretKeyFile, 'secret', cfg.nodeId);
  if (secretProblem) at(['secretKeyFile'], secretProblem.message, secretProblem.hint);
  const modeProblem = unreadableFile(cfg.secretKeyFile) ? undefined : secretKeyFileModeProblem(cfg.secretKeyFile);
  if (modeProblem) at(['secretKeyFile'], modeProblem, `the file holds this node's private keys: \`chmod 600 ${cfg.secretKeyFile}\` (as \`tidegate keys generate\` writes it)`);
  cfg.peers.forEach((p, i) => {
    read(['peers', i, 'publicKeyFile'], p.publicKeyFile, `copy ${p.nodeId}'s <nodeId>.public.json here (from its \`tidegate keys generate\`)`);
    const publicProblem = unreadableFile(p.publicKeyFile) ? undefined : keyFileProblem(p.publicKeyFile, 'public', p.nodeId);
    if (publicProblem) at(['peers', i, 'publicKeyFile'], publicProblem.message, publicProblem.hint);
    tlsFiles(['peers', i, 'redisTls'], p.redisTls);
  });
  read(['mappingFile'], cfg.mappingFile, 'see docs/mappings.md');
  read(['mergePolicyFile'], cfg.mergePolicyFile, 'see docs/merge.md "Repeating elements"');
  tlsFiles(['tls'], cfg.tls);
  tlsFiles(['redisTls'], cfg.redisTls);
  read(['auth', 'jwksFile'], cfg.auth?.jwksFile, 'a JWK Set file of the authorization server\'s public keys');
  if (cfg.auth?.backendServices) {
    read(['auth', 'backendServices', 'signingKeyFile'], cfg.auth.backendServices.signingKeyFile, 'a private JWK file (mode 0600); see docs/security.md');
    cfg.auth.backendServices.clients.forEach((c, i) => read(['auth', 'backendServices', 'clients', i, 'jwksFile'], c.jwksFile, 'the client\'s JWK Set file'));
  }
  create(['storeFile'], cfg.storeFile);
  create(['keyVaultFile'], cfg.keyVaultFile);
  create(['auditFile'], cfg.auditFile);
  create(['hospitalCursorFile'], cfg.hospitalCursorFile);
  return out;
}

/**
 * Warnings for FHIRPath conditions of a valid mapping file that name elements the rule's resource
 * type(s) do not have (always empty, so always false; src/mapping/condition-elements.ts): route
 * rules' `where` (types from `resourceType`) and redact rules' `where` (type from `path`).
 * @param file - the mapping file (already loaded without error).
 * @returns One warning per unknown element, at the condition.
 */
function conditionElementWarnings(file: string): ConfigIssue[] {
  const read = readConfigFile(file);
  const parsed = MappingFileSchema.safeParse(read.value);
  if (read.issue || !parsed.success) return [];
  const out: ConfigIssue[] = [];
  const warn = (pointer: string, where: string, types: string[]): void => {
    for (const u of unknownElements(where, types)) {
      out.push({ severity: 'warning', file: displayPath(file), ...positionOf(read.positions, pointer), pointer, message: `condition names an element that does not exist (always empty, so false): ${u.message}`, hint: "quote strings ('laboratory'); element names are case-sensitive (https://hl7.org/fhir/R4/elementdefinition.html#path); check with `tidegate map preview`" });
    }
  };
  for (const [peer, route] of Object.entries(parsed.data.routes)) {
    const rptr = toPointer(['routes', peer]);
    for (const kind of ['send', 'withhold'] as const) {
      (route[kind] ?? []).forEach((rule, i) => {
        const types = rule.resourceType === undefined ? [] : typeof rule.resourceType === 'string' ? [rule.resourceType] : rule.resourceType;
        if (rule.where !== undefined) warn(`${rptr}/${kind}/${i}/where`, rule.where, types);
      });
    }
    (route.redact ?? []).forEach((rule, i) => {
      if (rule.where !== undefined) warn(`${rptr}/redact/${i}/where`, rule.where, [rule.path.split('.')[0]!]);
    });
  }
  return out;
}

/**
 * Runs every check; never throws for a bad file.
 * @param configPath - the node configuration JSON.
 * @param opts - see {@link ConfigCheckOptions}.
 * @returns The report (`ok` false when any error).
 */
export function runConfigCheck(configPath: string, opts: ConfigCheckOptions = {}): ConfigCheckReport {
  const path = resolve(configPath);
  const issues: ConfigIssue[] = [];
  const files = [path];
  const read = readJsonFile(path);
  let cfg: NodeConfig | undefined;
  if (read.issue) issues.push(read.issue);
  else {
    const parsed = NodeConfigSchema.safeParse(read.value);
    if (!parsed.success) {
      const hint = 'see README.md "Configuration" and config/node-a.example.json';
      // Unknown (misspelt) keys: one issue each, at the key, with the closest known key.
      for (const i of parsed.error.issues) {
        if (i.code !== 'unrecognized_keys') continue;
        for (const k of i.keys) {
          const pointer = toPointer([...i.path, k]);
          issues.push({ severity: 'error', file: displayPath(path), ...(read.positions.keys.get(pointer) ?? positionOf(read.positions, pointer)), pointer, message: unknownConfigKeyMessage(i.path, k), hint: `remove it, or fix its spelling; ${hint}` });
        }
      }
      issues.push(...zodIssues(path, read.positions, parsed.error.issues.filter((i) => i.code !== 'unrecognized_keys'), () => hint));
    }
    else {
      try {
        cfg = loadNodeConfig(path, {});
      } catch (err) {
        issues.push({ severity: 'error', file: displayPath(path), line: 1, column: 1, pointer: '', message: (err as Error).message.replace(/^Invalid config [^:]*: /, ''), hint: 'see README.md "Configuration"' });
      }
    }
  }
  const missing = cfg ? referencedFileIssues(path, read.positions, cfg) : [];
  issues.push(...missing);
  const unreadable = new Set(missing.map((i) => i.pointer));
  if (cfg?.mergePolicyFile && !unreadable.has('/mergePolicyFile')) {
    files.push(cfg.mergePolicyFile);
    try {
      loadMergePolicy(cfg.mergePolicyFile);
    } catch (err) {
      issues.push({ severity: 'error', file: displayPath(cfg.mergePolicyFile), line: 1, column: 1, pointer: '', message: (err as Error).message, hint: 'see docs/merge.md "Merge policy file" and "Per-element merge policies"' });
    }
  }
  const profilesDir = opts.profilesDir ?? DEFAULT_PROFILES_DIR;
  if (cfg?.mappingFile && !unreadable.has('/mappingFile')) {
    const m = loadMapping(cfg.mappingFile, { peers: cfg.peers.map((p) => p.nodeId), profilesDir });
    issues.push(...m.issues);
    files.push(...m.files);
    if (m.mapping !== undefined) issues.push(...conditionElementWarnings(cfg.mappingFile));
  }
  const profiles = checkProfilesDir(profilesDir);
  issues.push(...profiles.issues);
  files.push(...profiles.files);
  const errors = issues.filter((i) => i.severity === 'error').length;
  return { ok: errors === 0, errors, warnings: issues.length - errors, issues, files: [...new Set(files)] };
}

/**
 * The report as text: one `file:line:column: severity: message` + hint per issue, then a summary line.
 * @param report - from {@link runConfigCheck}.
 */
export function formatCheckReport(report: ConfigCheckReport): string {
  const lines = report.issues.map(formatIssue);
  lines.push(report.ok ? `config check: OK (${report.files.length} files, ${report.warnings} warning(s))` : `config check: ${report.errors} error(s), ${report.warnings} warning(s) in ${report.files.length} files`);
  return `${lines.join('\n')}\n`;
}
