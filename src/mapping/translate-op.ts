/**
 * `$translate` (https://hl7.org/fhir/R4/conceptmap-operation-translate.html) over the node's
 * ConceptMaps: the handler ({@link translateOperation}, no HTTP) and its Express adapter
 * ({@link translateRouter}, `POST`/`GET [base]/ConceptMap/$translate`).
 *
 * Inputs: `url` + `conceptMapVersion` (which map; default every map the node uses), `conceptMap`
 * (a map given inline, POST only), `system` + `code` (+ `version`), `coding`, `codeableConcept`
 * (each coding is translated), `source` / `target` (value set URIs: only maps with that
 * `sourceUri`/`targetUri`), `targetsystem`, `reverse`. `dependency` is refused (conditional maps are
 * not supported). Output: a Parameters with `result`, `message` when there is no match, and one
 * `match` (`equivalence`, `concept`, `source`) per target.
 */
import express from 'express';
import type { Request, Response, Router } from 'express';
import { canonicalStringify } from '../fhir/json.ts';
import { badRequest, FhirError, methodNotAllowed, notFound, toOutcome, unsupportedMediaType } from '../fhir/outcomes.ts';
import { compileConceptMap, ConceptMapError } from './conceptmap.ts';
import type { CompiledConceptMap, CodingValue, TranslationMatch } from './conceptmap.ts';

/** The operation's definition (for the CapabilityStatement's `operation`). */
export const TRANSLATE_OPERATION = Object.freeze({ name: 'translate', definition: 'http://hl7.org/fhir/OperationDefinition/ConceptMap-translate' });

/**
 * Where `$translate` finds maps: the loaded mapping configuration (`Mapping.maps`); called once per
 * request, so a `LiveMapping` (src/mapping/live.ts) answers with the maps in force after a reload.
 */
export interface ConceptMapProvider {
  /** The maps in use, optionally only those with canonical `url` (and `version`). */
  maps(url?: string, version?: string): CompiledConceptMap[];
}

/** One input parameter (https://hl7.org/fhir/R4/parameters.html), the members read here. */
interface Param {
  name?: unknown;
  valueUri?: unknown;
  valueString?: unknown;
  valueCode?: unknown;
  valueBoolean?: unknown;
  valueCoding?: unknown;
  valueCodeableConcept?: unknown;
  resource?: unknown;
  part?: unknown;
}

const MAX_CODINGS = 100;

/**
 * Runs `$translate`.
 * @param params - the input: a `Parameters` resource (POST), or name → values (GET query).
 * @param provider - the node's maps.
 * @returns The output `Parameters` (plain JSON).
 * @throws FhirError 400 for missing/contradictory inputs or an invalid inline ConceptMap (issues
 *   carry FHIRPath expressions), 404 when `url` names no map in use.
 */
export function translateOperation(params: Param[], provider: ConceptMapProvider): Record<string, unknown> {
  const all = (name: string): Param[] => params.filter((p) => p?.name === name);
  const one = (name: string): Param | undefined => {
    const found = all(name);
    if (found.length > 1) throw badRequest(`Parameter "${name}" given more than once`, [`Parameters.parameter.where(name = '${name}')`]);
    return found[0];
  };
  const text = (name: string): string | undefined => {
    const p = one(name);
    if (p === undefined) return undefined;
    const v = p.valueUri ?? p.valueString ?? p.valueCode;
    if (typeof v !== 'string' || v === '') throw badRequest(`Parameter "${name}" needs a non-empty value`, [`Parameters.parameter.where(name = '${name}')`]);
    return v;
  };
  for (const p of params) {
    if (typeof p?.name !== 'string') throw badRequest('Every parameter needs a name', ['Parameters.parameter.name']);
  }
  if (all('dependency').length > 0) throw badRequest('Parameter "dependency" is not supported: tidegate applies unconditional maps only', ["Parameters.parameter.where(name = 'dependency')"]);
  const reverseParam = one('reverse');
  const reverse = reverseParam === undefined ? false : reverseParam.valueBoolean;
  if (typeof reverse !== 'boolean') throw badRequest('Parameter "reverse" must be a boolean', ["Parameters.parameter.where(name = 'reverse')"]);

  // which maps
  const url = text('url');
  const version = text('conceptMapVersion');
  const sourceVs = text('source');
  const targetVs = text('target');
  const targetSystem = text('targetsystem');
  let maps: CompiledConceptMap[];
  const inline = one('conceptMap');
  if (inline !== undefined) {
    try {
      maps = [compileConceptMap(inline.resource)];
    } catch (err) {
      if (!(err instanceof ConceptMapError)) throw err;
      throw new FhirError(400, {
        resourceType: 'OperationOutcome',
        issue: err.issues.map((i) => ({ severity: 'error', code: 'invalid', diagnostics: `conceptMap: ${i.message}`, expression: [`Parameters.parameter.where(name = 'conceptMap').resource${i.pointer.replace(/\/(\d+)/g, '[$1]').replace(/\//g, '.')}`] })),
      });
    }
  } else {
    maps = provider.maps(url, version);
    if (url !== undefined && maps.length === 0) throw notFound(`No ConceptMap with url ${url}${version ? ` and version ${version}` : ''} is in use on this node`);
  }
  const uri = (m: CompiledConceptMap, key: 'source' | 'target'): string | undefined => {
    const r = m.resource as Record<string, unknown>;
    const v = r[`${key}Uri`] ?? r[`${key}Canonical`];
    return typeof v === 'string' ? v : undefined;
  };
  if (sourceVs !== undefined) maps = maps.filter((m) => uri(m, reverse ? 'target' : 'source') === sourceVs);
  if (targetVs !== undefined) maps = maps.filter((m) => uri(m, reverse ? 'source' : 'target') === targetVs);

  // which codings
  const codings: CodingValue[] = [];
  const code = text('code');
  const system = text('system');
  if (code !== undefined || system !== undefined) {
    if (code === undefined || system === undefined) throw badRequest('"code" and "system" go together', ["Parameters.parameter.where(name = 'code')"]);
    codings.push({ system, code });
  }
  const asCoding = (v: unknown, where: string): CodingValue => {
    const c = v as { system?: unknown; code?: unknown };
    if (typeof c?.system !== 'string' || typeof c?.code !== 'string' || c.system === '' || c.code === '') throw badRequest(`${where} needs a system and a code`, [where]);
    return { system: c.system, code: c.code };
  };
  const coding = one('coding');
  if (coding !== undefined) codings.push(asCoding(coding.valueCoding, "Parameters.parameter.where(name = 'coding').valueCoding"));
  const cc = one('codeableConcept');
  if (cc !== undefined) {
    const list = (cc.valueCodeableConcept as { coding?: unknown })?.coding;
    if (!Array.isArray(list) || list.length === 0) throw badRequest('codeableConcept needs at least one coding', ["Parameters.parameter.where(name = 'codeableConcept').valueCodeableConcept.coding"]);
    list.forEach((c, i) => codings.push(asCoding(c, `Parameters.parameter.where(name = 'codeableConcept').valueCodeableConcept.coding[${i}]`)));
  }
  if (codings.length === 0) throw badRequest('Give "system" and "code", a "coding" or a "codeableConcept" to translate');
  if (codings.length > MAX_CODINGS) throw badRequest(`At most ${MAX_CODINGS} codings per request`);

  const matches: TranslationMatch[] = [];
  const seen = new Set<string>();
  for (const c of codings) {
    for (const m of maps) {
      for (const match of m.translate(c.system, c.code, { targetSystem, reverse })) {
        const key = `${match.equivalence}|${match.concept?.system}|${match.concept?.code}|${match.source}`;
        if (seen.has(key)) continue;
        seen.add(key);
        matches.push(match);
      }
    }
  }
  const result = matches.some((m) => m.concept !== undefined && m.equivalence !== 'unmatched' && m.equivalence !== 'disjoint');
  return {
    resourceType: 'Parameters',
    parameter: [
      { name: 'result', valueBoolean: result },
      ...(result ? [] : [{ name: 'message', valueString: matches.length === 0 ? 'No translation found' : 'Only unmatched or disjoint targets found' }]),
      ...matches.map((m) => ({
        name: 'match',
        part: [
          { name: 'equivalence', valueCode: m.equivalence },
          ...(m.concept ? [{ name: 'concept', valueCoding: m.concept }] : []),
          { name: 'source', valueUri: m.source },
        ],
      })),
    ],
  };
}

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const JSON_MEDIA = /^application\/(fhir\+)?json\b/i;

/** GET query → parameters (each value a string or the `reverse` boolean). */
function queryParams(req: Request): Param[] {
  const out: Param[] = [];
  const q = new URLSearchParams(req.originalUrl.includes('?') ? req.originalUrl.slice(req.originalUrl.indexOf('?') + 1) : '');
  for (const [name, value] of q) {
    if (name === 'reverse') {
      if (value !== 'true' && value !== 'false') throw badRequest('Parameter "reverse" must be true or false');
      out.push({ name, valueBoolean: value === 'true' });
    } else if (name === 'coding') {
      const bar = value.indexOf('|');
      out.push({ name, valueCoding: bar < 0 ? {} : { system: value.slice(0, bar), code: value.slice(bar + 1) } });
    } else if (name === 'conceptMap' || name === 'codeableConcept' || name === 'dependency') {
      throw badRequest(`Parameter "${name}" needs POST with a Parameters body`);
    } else {
      out.push({ name, valueString: value });
    }
  }
  return out;
}

/**
 * Express router for `[base]/ConceptMap/$translate`, to mount under `/fhir` after the
 * authorization middleware. POST takes a `Parameters` body (`application/fhir+json` or
 * `application/json`, at most 1 MiB); GET takes query parameters (`coding` as `system|code`).
 * Errors are OperationOutcomes (400, 404, 405, 413, 415).
 * @param provider - the node's maps (a loaded `Mapping`).
 * @returns The router.
 */
export function translateRouter(provider: ConceptMapProvider): Router {
  const router = express.Router();
  const path = '/ConceptMap/$translate';
  const fail = (res: Response, err: unknown): void => {
    const e = err as { type?: string; status?: number };
    const mapped = e?.type === 'entity.too.large' ? { status: 413, outcome: toOutcome(badRequest('Body larger than 1 MiB')).outcome } : toOutcome(err);
    res.status(mapped.status).type(FHIR_JSON).send(canonicalStringify(mapped.outcome));
  };
  const text = express.text({ type: () => true, limit: 1024 * 1024 });
  router.use((req, res, next) => {
    if (req.path !== path) return next();
    if (req.method !== 'POST' && req.method !== 'GET') return fail(res, methodNotAllowed(`${req.method} is not allowed on ConceptMap/$translate (use POST or GET)`));
    const run = (): void => {
      try {
        let params: Param[];
        if (req.method === 'GET') params = queryParams(req);
        else {
          const ct = req.get('content-type');
          if (!ct || !JSON_MEDIA.test(ct)) throw unsupportedMediaType('POST ConceptMap/$translate needs Content-Type application/fhir+json');
          let body: unknown = req.body;
          if (typeof body === 'string') {
            try {
              body = JSON.parse(body);
            } catch {
              throw badRequest('Body is not JSON');
            }
          }
          const p = body as { resourceType?: unknown; parameter?: unknown };
          if (p?.resourceType !== 'Parameters') throw badRequest('Body must be a Parameters resource');
          if (p.parameter !== undefined && !Array.isArray(p.parameter)) throw badRequest('Parameters.parameter must be an array', ['Parameters.parameter']);
          params = (p.parameter ?? []) as Param[];
        }
        const out = translateOperation(params, provider);
        res.status(200).type(FHIR_JSON).send(canonicalStringify(out));
      } catch (err) {
        fail(res, err);
      }
    };
    // A body already read by an earlier middleware (e.g. authorization) is used as it is.
    if (req.method === 'GET' || (req as { _body?: boolean })._body === true) return run();
    text(req, res, (err?: unknown) => (err ? fail(res, err) : run()));
  });
  return router;
}
