/**
 * Search over the audit trail: the AuditEvent search parameters of FHIR R4
 * (https://hl7.org/fhir/R4/auditevent.html#search) that `GET /fhir/AuditEvent` supports, parsed into
 * a predicate over stored events.
 *
 * | parameter | type | matches |
 * | --- | --- | --- |
 * | `date` | date | `recorded`, prefixes `eq` `ne` `gt` `lt` `ge` `le` `sa` `eb` (https://hl7.org/fhir/R4/search.html#date) |
 * | `patient` | reference | `entity.what` = `Patient/<id>` (`Patient/x` or `x`) |
 * | `entity` | reference | any `entity.what.reference`; `entity:identifier=system|value` the identifier |
 * | `agent` | reference | any `agent.who.reference`; `agent:identifier=system|value` the identifier |
 * | `type`, `subtype` | token | `type` / any `subtype` coding (`code`, `system|code`, `|code`, `system|`) |
 * | `outcome` | token | `outcome` (`0`, `4`, `8`, `12`, system http://hl7.org/fhir/audit-event-outcome) |
 * | `action` | token | `action` |
 * | `_count` | number | page size, 1-1000 (default 50) |
 * | `_cursor` | — | paging: only events with a lower sequence number (set by the `next` link) |
 *
 * `date` also gives {@link AuditQuery.mayMatchTimes}, with which the trail skips rotated segments
 * whose recorded range cannot match (src/audit/segments.ts).
 *
 * Repeated parameters are AND-ed, comma-separated values OR-ed. Any other parameter (or modifier)
 * is an error: an auditor must not get a wider answer than asked for because a filter was ignored.
 */
import { badRequest } from '../fhir/outcomes.ts';
import type { AuditEvent, Coding } from './types.ts';
import { AUDIT_OUTCOME } from './types.ts';

/** Parsed query: a predicate, a page size and a paging cursor. */
export interface AuditQuery {
  matches(event: AuditEvent): boolean;
  count: number;
  /** Only events with `seq < cursor` (undefined: from the newest). */
  cursor: number | undefined;
  /** The query's own parameters, for the `self`/`next` links (without `_cursor`). */
  params: Array<[string, string]>;
  /**
   * With `date` parameters: whether events recorded within [firstMs, lastMs] (ms since the epoch)
   * may match them, so a rotated segment outside the range is not read. Undefined without `date`.
   */
  mayMatchTimes: ((firstMs: number, lastMs: number) => boolean) | undefined;
}

/** Default and largest `_count`. */
export const DEFAULT_COUNT = 50;
export const MAX_COUNT = 1000;

type Pred = (e: AuditEvent) => boolean;

/** A date value's range [lo, hi) in ms (https://hl7.org/fhir/R4/search.html#date: precision sets the range). */
function dateRange(value: string): [number, number] {
  const m = /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/.exec(value);
  if (!m) throw badRequest(`date: "${value.slice(0, 40)}" is not a FHIR date or dateTime`);
  const [, y, mo, d, h, mi, s, frac, tz] = m;
  if (h !== undefined && tz === undefined) throw badRequest('date: a time needs a time zone (Z or ±hh:mm)');
  const year = Number(y);
  if (mo === undefined) return [Date.UTC(year, 0, 1), Date.UTC(year + 1, 0, 1)];
  const month = Number(mo) - 1;
  if (month < 0 || month > 11) throw badRequest('date: month out of range');
  if (d === undefined) return [Date.UTC(year, month, 1), Date.UTC(year, month + 1, 1)];
  const day = Number(d);
  if (day < 1 || day > 31) throw badRequest('date: day out of range');
  if (h === undefined) return [Date.UTC(year, month, day), Date.UTC(year, month, day + 1)];
  const iso = `${y}-${mo}-${d}T${h}:${mi}:${s ?? '00'}${frac ?? ''}${tz === 'Z' ? 'Z' : tz}`;
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) throw badRequest('date: not a valid instant');
  const width = s === undefined ? 60_000 : frac === undefined ? 1000 : 1;
  return [t, t + width];
}

/** Whether some instant t in [first, last] satisfies the date value (the range form of {@link datePred}). */
function dateRangePred(value: string): (first: number, last: number) => boolean {
  const pm = /^(eq|ne|gt|lt|ge|le|sa|eb|ap)?(.*)$/.exec(value)!;
  const prefix = pm[1] ?? 'eq';
  const [lo, hi] = dateRange(pm[2]!);
  return (first, last) => {
    switch (prefix) {
      case 'eq':
        return last >= lo && first < hi;
      case 'ne':
        return first < lo || last >= hi;
      case 'gt':
      case 'sa':
        return last >= hi;
      case 'lt':
      case 'eb':
        return first < lo;
      case 'ge':
        return last >= lo;
      default: // le
        return first < hi;
    }
  };
}

function datePred(value: string): Pred {
  const pm = /^(eq|ne|gt|lt|ge|le|sa|eb|ap)?(.*)$/.exec(value)!;
  const prefix = pm[1] ?? 'eq';
  if (prefix === 'ap') throw badRequest('date: the ap prefix is not supported');
  const [lo, hi] = dateRange(pm[2]!);
  return (e) => {
    const t = Date.parse(e.recorded);
    if (!Number.isFinite(t)) return false;
    switch (prefix) {
      case 'eq':
        return t >= lo && t < hi;
      case 'ne':
        return t < lo || t >= hi;
      case 'gt':
      case 'sa':
        return t >= hi;
      case 'lt':
      case 'eb':
        return t < lo;
      case 'ge':
        return t >= lo;
      default: // le
        return t < hi;
    }
  };
}

function tokenPred(value: string, codings: (e: AuditEvent) => Coding[]): Pred {
  const bar = value.indexOf('|');
  if (bar < 0) return (e) => codings(e).some((c) => c.code === value);
  const system = value.slice(0, bar);
  const code = value.slice(bar + 1);
  if (system === '') return (e) => codings(e).some((c) => c.code === code && c.system === undefined);
  if (code === '') return (e) => codings(e).some((c) => c.system === system);
  return (e) => codings(e).some((c) => c.system === system && c.code === code);
}

function identifierPred(value: string, ids: (e: AuditEvent) => Array<{ system?: string; value?: string } | undefined>): Pred {
  const bar = value.indexOf('|');
  const system = bar < 0 ? undefined : value.slice(0, bar);
  const v = bar < 0 ? value : value.slice(bar + 1);
  return (e) => ids(e).some((i) => i !== undefined && i.value === v && (system === undefined || (system === '' ? i.system === undefined : i.system === system)));
}

function splitOr(value: string): string[] {
  // Commas separate alternatives; `\,` is a literal comma (https://hl7.org/fhir/R4/search.html#escaping).
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!;
    if (c === '\\' && value[i + 1] === ',') {
      cur += ',';
      i++;
    } else if (c === ',') {
      out.push(cur);
      cur = '';
    } else cur += c;
  }
  out.push(cur);
  if (out.some((v) => v === '')) throw badRequest('an empty search value');
  return out;
}

const whatRefs = (e: AuditEvent): string[] => (e.entity ?? []).flatMap((x) => (x.what?.reference ? [x.what.reference] : []));
const whoRefs = (e: AuditEvent): string[] => e.agent.flatMap((a) => (a.who?.reference ? [a.who.reference] : []));
/** `Type/id/_history/v` is `Type/id` for reference search. */
const unversioned = (r: string): string => r.replace(/\/_history\/[^/]+$/, '');

/**
 * Parses the query of `GET /fhir/AuditEvent`.
 * @param params - decoded `[name, value]` pairs in order (src/fhir/search.ts `parseSearchQuery`).
 * @returns The query.
 * @throws FhirError 400 for an unknown parameter or modifier, or a malformed value.
 */
export function parseAuditQuery(params: ReadonlyArray<readonly [string, string]>): AuditQuery {
  const preds: Pred[] = [];
  const timeRanges: Array<(first: number, last: number) => boolean> = [];
  let count = DEFAULT_COUNT;
  let cursor: number | undefined;
  const kept: Array<[string, string]> = [];
  for (const [rawName, value] of params) {
    if (value === '') throw badRequest(`${rawName}: empty value`);
    if (rawName === '_cursor') {
      if (!/^[1-9]\d{0,15}$/.test(value)) throw badRequest('_cursor: not a sequence number');
      cursor = Number(value);
      continue;
    }
    kept.push([rawName, value]);
    if (rawName === '_count') {
      if (!/^\d{1,7}$/.test(value) || Number(value) < 1) throw badRequest('_count: a positive integer');
      count = Math.min(Number(value), MAX_COUNT);
      continue;
    }
    if (rawName === '_sort') {
      if (value !== '-date') throw badRequest('_sort: only -date (newest first) is supported');
      continue;
    }
    const alts = splitOr(value);
    let one: (v: string) => Pred;
    switch (rawName) {
      case 'date': {
        one = datePred;
        const ranges = alts.map(dateRangePred);
        timeRanges.push((first, last) => ranges.some((r) => r(first, last)));
        break;
      }
      case 'patient':
        one = (v) => {
          const ref = v.includes('/') ? v : `Patient/${v}`;
          if (!/^Patient\/[A-Za-z0-9\-.]{1,64}$/.test(ref)) throw badRequest('patient: expected Patient/<id> or <id>');
          return (e) => whatRefs(e).some((r) => unversioned(r) === ref);
        };
        break;
      case 'entity':
        one = (v) => (e) => whatRefs(e).some((r) => r === v || unversioned(r) === v);
        break;
      case 'entity:identifier':
        one = (v) => identifierPred(v, (e) => (e.entity ?? []).map((x) => x.what?.identifier));
        break;
      case 'agent':
        one = (v) => (e) => whoRefs(e).includes(v);
        break;
      case 'agent:identifier':
        one = (v) => identifierPred(v, (e) => e.agent.map((a) => a.who?.identifier));
        break;
      case 'type':
        one = (v) => tokenPred(v, (e) => [e.type]);
        break;
      case 'subtype':
        one = (v) => tokenPred(v, (e) => e.subtype ?? []);
        break;
      case 'outcome':
        one = (v) => tokenPred(v, (e) => (e.outcome === undefined ? [] : [{ system: AUDIT_OUTCOME, code: e.outcome }]));
        break;
      case 'action':
        one = (v) => tokenPred(v, (e) => (e.action === undefined ? [] : [{ system: 'http://hl7.org/fhir/audit-event-action', code: e.action }]));
        break;
      default:
        throw badRequest(`Search parameter ${rawName.slice(0, 64)} is not supported on AuditEvent (supported: date, patient, entity, entity:identifier, agent, agent:identifier, type, subtype, outcome, action, _count, _sort=-date)`);
    }
    const alternatives = alts.map(one);
    preds.push((e) => alternatives.some((p) => p(e)));
  }
  const mayMatchTimes = timeRanges.length > 0 ? (first: number, last: number) => timeRanges.every((r) => r(first, last)) : undefined;
  return { matches: (e) => preds.every((p) => p(e)), count, cursor, params: kept, mayMatchTimes };
}
