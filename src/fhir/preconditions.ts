/**
 * Conditional request headers of the FHIR REST API, parsed strictly: `If-Match`
 * (https://hl7.org/fhir/R4/http.html#concurrency), `If-None-Match` and `If-Modified-Since`
 * (https://hl7.org/fhir/R4/http.html#cread, RFC 7232 §3.1–3.3). A header that is present but
 * empty or malformed is a client error (400 with an OperationOutcome), never taken as absent: a
 * client that meant to lock a version must not silently get an unconditional write.
 *
 * Deviation: RFC 7232 §3.3 lets a server ignore an invalid `If-Modified-Since`; here it is 400,
 * like the other conditional headers, so a client learns its date is not understood.
 */
import { badRequest } from './outcomes.ts';

/** One entity-tag, weak (`W/"2.eca343c4"`) or strong (`"2.eca343c4"`), whose opaque part is a FHIR id (a versionId). */
const ETAG = /^(?:W\/)?"([A-Za-z0-9\-.]{1,64})"$/;

/**
 * The versionId named by an `If-Match` value (or a Bundle entry's `request.ifMatch`).
 * @param value - the header value as received (surrounding blanks are ignored).
 * @param name - the header or element name for the diagnostics.
 * @returns The versionId, e.g. `2.eca343c4` for `W/"2.eca343c4"` or `"2.eca343c4"`.
 * @throws {@link FhirError} 400 when the value is empty, a list, `*`, or not an ETag.
 */
export function ifMatchVersion(value: string, name = 'If-Match'): string {
  const vid = ETAG.exec(value.trim())?.[1];
  if (vid === undefined) throw badRequest(`${name} must be one ETag such as W/"2.eca343c4" (the versionId of the version the change is based on)`);
  return vid;
}

/**
 * An `If-None-Match` value on a read: `*` or a comma-separated list of ETags (RFC 7232 §3.2).
 * @param value - the header value as received.
 * @param name - the header or element name for the diagnostics.
 * @returns `'*'`, or the versionIds the list names.
 * @throws {@link FhirError} 400 when the value is empty or an item is not an ETag.
 */
export function parseIfNoneMatch(value: string, name = 'If-None-Match'): '*' | string[] {
  const v = value.trim();
  if (v === '*') return '*';
  const vids = v.split(',').map((t) => ETAG.exec(t.trim())?.[1]);
  if (v === '' || vids.some((x) => x === undefined)) throw badRequest(`${name} must be * or a list of ETags such as W/"2.eca343c4"`);
  return vids as string[];
}

const DAY = '(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)';
const LONG_DAY = '(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)';
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const MONTH = `(${MONTHS.join('|')})`;
const TIME = '(\\d{2}):(\\d{2}):(\\d{2})';
/** IMF-fixdate, RFC 850 and asctime: the three HTTP-date forms a recipient must accept (RFC 7231 §7.1.1.1). */
const HTTP_DATE: Array<{ re: RegExp; parts: (m: RegExpExecArray) => [number, number, number, number, number, number] }> = [
  { re: new RegExp(`^${DAY}, (\\d{2}) ${MONTH} (\\d{4}) ${TIME} GMT$`), parts: (m) => [+m[3]!, MONTHS.indexOf(m[2]!), +m[1]!, +m[4]!, +m[5]!, +m[6]!] },
  { re: new RegExp(`^${LONG_DAY}, (\\d{2})-${MONTH}-(\\d{2}) ${TIME} GMT$`), parts: (m) => [+m[3]! + (+m[3]! < 70 ? 2000 : 1900), MONTHS.indexOf(m[2]!), +m[1]!, +m[4]!, +m[5]!, +m[6]!] },
  { re: new RegExp(`^${DAY} ${MONTH} ([ \\d]\\d) ${TIME} (\\d{4})$`), parts: (m) => [+m[7]!, MONTHS.indexOf(m[1]!), +m[2]!.trim(), +m[3]!, +m[4]!, +m[5]!] },
];
/** FHIR instant (https://hl7.org/fhir/R4/datatypes.html#instant). */
const INSTANT = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;

/** Epoch ms of calendar fields, or undefined when a field is out of range (day 32, hour 25). */
function utc([y, mo, d, h, mi, s]: [number, number, number, number, number, number]): number | undefined {
  const ms = Date.UTC(y, mo, d, h, mi, s);
  const back = new Date(ms);
  if (back.getUTCFullYear() !== y || back.getUTCMonth() !== mo || back.getUTCDate() !== d || h > 23 || mi > 59 || s > 60) return undefined;
  return ms;
}

/**
 * Parses an HTTP-date (RFC 7231 §7.1.1.1: IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, RFC 850,
 * asctime) and, with `instant`, also a FHIR instant (`2026-11-29T10:00:00Z`).
 * @param value - the header or element value.
 * @param name - the header or element name for the diagnostics.
 * @param instant - also accept a FHIR instant (a Bundle entry's `request.ifModifiedSince`).
 * @returns Milliseconds since the epoch.
 * @throws {@link FhirError} 400 when the value is none of those forms or names no real time.
 */
export function parseHttpDate(value: string, name = 'If-Modified-Since', instant = false): number {
  const v = value.trim();
  for (const f of HTTP_DATE) {
    const m = f.re.exec(v);
    const ms = m ? utc(f.parts(m)) : undefined;
    if (ms !== undefined) return ms;
  }
  const m = instant ? INSTANT.exec(v) : null;
  if (m && utc([+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!]) !== undefined) return Date.parse(v);
  throw badRequest(`${name} must be an HTTP date such as Sun, 06 Nov 1994 08:49:37 GMT${instant ? ' or a FHIR instant' : ''}`);
}

/**
 * The `If-Modified-Since` header of a read, parsed.
 * @param value - the header value, or undefined when absent.
 * @returns Milliseconds since the epoch, or undefined when the header is absent.
 * @throws {@link FhirError} 400 when present but empty or not an HTTP-date ({@link parseHttpDate}).
 */
export function ifModifiedSince(value: string | undefined): number | undefined {
  return value === undefined ? undefined : parseHttpDate(value);
}
