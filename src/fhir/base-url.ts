/**
 * The public FHIR base URL of a request (`[base]` of https://hl7.org/fhir/R4/http.html#general),
 * used for `Location`/`Content-Location`, Bundle `fullUrl`s, paging links and the
 * CapabilityStatement, and the proxy settings of the node's HTTP edge that decide it:
 *
 * - `publicBaseUrl` (fixed): every link starts with it, whatever the request's headers say;
 * - else `trustProxy` (express's `trust proxy`, https://expressjs.com/en/guide/behind-proxies.html):
 *   when the connecting address is a trusted proxy, `X-Forwarded-Proto` and `X-Forwarded-Host`
 *   give the scheme and host, and the client address (`req.ip`: rate limits, audit, breach
 *   detection) is the nearest untrusted address of `X-Forwarded-For`;
 * - else (the default, no proxy trusted) the socket's scheme and the `Host` header.
 */
import type { Express, Request } from 'express';

/** Named address ranges a `trustProxy` list may use (proxy-addr's): loopback, link-local, unique-local. */
export const TRUST_PROXY_PRESETS = ['loopback', 'linklocal', 'uniquelocal'] as const;

/**
 * Which connecting addresses are trusted proxies: `false` none (default); `true` every address
 * (then `X-Forwarded-For` is the client's to set: only when nothing but the proxy can reach the
 * node); a hop count n ≥ 1 (the n nearest hops); or a list of IPv4/IPv6 addresses, CIDR ranges
 * and {@link TRUST_PROXY_PRESETS}.
 */
export type TrustProxy = boolean | number | readonly string[];

/** Proxy settings of the HTTP edge (node config `http.trustProxy`, `http.publicBaseUrl`). */
export interface ProxyOptions {
  /** See {@link TrustProxy}. Default `false`. */
  trustProxy?: TrustProxy | undefined;
  /**
   * The FHIR base clients reach the node at, e.g. `https://fhir.example.org/tidegate/fhir`: an
   * absolute http(s) URL without query or fragment (a trailing `/` is dropped). Overrides what
   * the request's headers say. Default: none.
   */
  publicBaseUrl?: string | undefined;
}

/** The express setting holding the normalised {@link ProxyOptions.publicBaseUrl}. */
const PUBLIC_BASE_SETTING = 'tidegate public base url';

/** An RFC 3986 §3.2.2 host (DNS name, IPv4, bracketed IPv6) with an optional port. */
const AUTHORITY = /^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9._-]{1,253})(?::(\d{1,5}))?$/;

/** {@link AUTHORITY} with a port, when given, of at most 65535. */
function isAuthority(host: string): boolean {
  const m = AUTHORITY.exec(host);
  return m !== null && (m[1] === undefined || Number(m[1]) <= 65535);
}

/**
 * Checks a {@link ProxyOptions.publicBaseUrl} and returns it without a trailing `/`.
 * @param url - absolute `http:` or `https:` URL with a host, no query, fragment or credentials.
 * @returns e.g. `https://fhir.example.org/fhir`.
 * @throws RangeError naming what is wrong.
 */
export function normalizePublicBaseUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new RangeError(`publicBaseUrl must be an absolute http(s) URL, e.g. "https://fhir.example.org/fhir"`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new RangeError('publicBaseUrl must use http: or https:');
  if (u.search !== '' || u.hash !== '' || url.includes('?') || url.includes('#')) throw new RangeError('publicBaseUrl must not have a query or a fragment');
  if (u.username !== '' || u.password !== '') throw new RangeError('publicBaseUrl must not carry credentials');
  return `${u.origin}${u.pathname.replace(/\/+$/, '')}`;
}

/**
 * Checks a {@link TrustProxy} value.
 * @returns The value as express's `trust proxy` takes it (a copied list).
 * @throws RangeError for a hop count that is not an integer 1–64, an empty list, or an entry
 *   that is neither an IP address, a CIDR range (RFC 4632 / RFC 4291 §2.3) nor a preset.
 */
export function normalizeTrustProxy(value: TrustProxy): boolean | number | string[] {
  if (typeof value === 'boolean') return value;
  if (typeof value === 'number') {
    if (!Number.isInteger(value) || value < 1 || value > 64) throw new RangeError('trustProxy as a hop count must be an integer 1-64');
    return value;
  }
  if (!Array.isArray(value) || value.length === 0) throw new RangeError('trustProxy must be false, true, a hop count or a non-empty list of addresses');
  return value.map((entry: unknown) => {
    if (typeof entry !== 'string' || !isTrustProxyEntry(entry)) throw new RangeError(`trustProxy entry ${JSON.stringify(entry).slice(0, 64)} is not an IP address, a CIDR range or one of ${TRUST_PROXY_PRESETS.join(', ')}`);
    return entry;
  });
}

function isTrustProxyEntry(entry: string): boolean {
  if ((TRUST_PROXY_PRESETS as readonly string[]).includes(entry)) return true;
  const slash = entry.indexOf('/');
  const addr = slash < 0 ? entry : entry.slice(0, slash);
  const v4 = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/.test(addr);
  const v6 = !v4 && /^[0-9A-Fa-f:.]{2,45}$/.test(addr) && addr.includes(':') && URL.canParse(`http://[${addr}]/`);
  if (!v4 && !v6) return false;
  if (slash < 0) return true;
  const bits = entry.slice(slash + 1);
  return /^\d{1,3}$/.test(bits) && Number(bits) <= (v4 ? 32 : 128);
}

/**
 * Applies the proxy settings to an express app: `trust proxy` and the fixed public base.
 * @param app - the node's app (fhirApp).
 * @param opts - see {@link ProxyOptions}.
 * @throws RangeError from {@link normalizeTrustProxy} / {@link normalizePublicBaseUrl}; nothing is set then.
 */
export function applyProxySettings(app: Express, opts: ProxyOptions): void {
  const trust = normalizeTrustProxy(opts.trustProxy ?? false);
  const base = opts.publicBaseUrl === undefined ? undefined : normalizePublicBaseUrl(opts.publicBaseUrl);
  app.set('trust proxy', trust);
  if (base !== undefined) app.set(PUBLIC_BASE_SETTING, base);
}

/**
 * The FHIR base URL of a request, without a trailing `/`: the app's public base when set
 * ({@link applyProxySettings}), else `scheme://host` + the mount path (`/fhir`), where scheme and
 * host are `X-Forwarded-Proto`/`X-Forwarded-Host` only when the connecting address is a trusted
 * proxy (express `req.protocol`, `req.host`), else the socket's and `Host`. A host that is not a
 * valid RFC 3986 authority (or none) gives `localhost`, so no header can put a path, `@` or
 * spaces into a link.
 * @param req - a request under the FHIR mount.
 * @returns e.g. `https://fhir.example.org/fhir`.
 */
export function fhirBaseUrl(req: Request): string {
  const fixed: unknown = req.app?.settings?.[PUBLIC_BASE_SETTING];
  if (typeof fixed === 'string') return fixed;
  const host = req.host;
  // a forwarded scheme other than http/https is not used: the socket's instead
  const scheme = req.protocol === 'https' || req.protocol === 'http' ? req.protocol : (req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http';
  return `${scheme}://${host !== undefined && isAuthority(host) ? host : 'localhost'}${req.baseUrl}`;
}
