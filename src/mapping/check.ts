/**
 * `tidegate config check --config FILE`: validates the node configuration, its mapping file (schema,
 * ConceptMaps, FHIRPath conditions), its merge-policy file, and every StructureDefinition and
 * ConceptMap in the profiles directory. Each problem is reported with its file, line, column and a
 * fix hint; the command exits non-zero when there is any error.
 */
import { readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { loadNodeConfig, NodeConfigSchema } from '../config/config.ts';
import type { NodeConfig } from '../config/config.ts';
import { DEFAULT_PROFILES_DIR } from '../fhir/profiles.ts';
import { toFhirJson } from '../fhir/json.ts';
import type { FhirJsonObject } from '../fhir/json.ts';
import { validateFhirResource } from '../fhir/validate.ts';
import { loadMergePolicy } from '../merge/policy.ts';
import { compileConceptMap, ConceptMapError, fhirPathToPointer } from './conceptmap.ts';
import { positionOf } from './json-position.ts';
import type { JsonPositions } from './json-position.ts';
import { displayPath, formatIssue, loadMapping, readJsonFile, zodIssues } from './load.ts';
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
    if (!statSync(file).isFile()) continue;
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
    if (!parsed.success) issues.push(...zodIssues(path, read.positions, parsed.error.issues, () => 'see README.md "Configuration" and config/node-a.example.json'));
    else {
      try {
        cfg = loadNodeConfig(path, {});
      } catch (err) {
        issues.push({ severity: 'error', file: displayPath(path), line: 1, column: 1, pointer: '', message: (err as Error).message.replace(/^Invalid config [^:]*: /, ''), hint: 'see README.md "Configuration"' });
      }
    }
  }
  if (cfg?.mergePolicyFile) {
    files.push(cfg.mergePolicyFile);
    try {
      loadMergePolicy(cfg.mergePolicyFile);
    } catch (err) {
      issues.push({ severity: 'error', file: displayPath(cfg.mergePolicyFile), line: 1, column: 1, pointer: '', message: (err as Error).message, hint: 'see docs/merge.md "Repeating elements"' });
    }
  }
  const profilesDir = opts.profilesDir ?? DEFAULT_PROFILES_DIR;
  if (cfg?.mappingFile) {
    const m = loadMapping(cfg.mappingFile, { peers: cfg.peers.map((p) => p.nodeId), profilesDir });
    issues.push(...m.issues);
    files.push(...m.files);
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
