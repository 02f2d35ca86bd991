/**
 * Classifies an HTTP request under the FHIR base into a FHIR interaction, the same way the routes
 * of src/fhir/express.ts (`fhirRouter`) dispatch it (https://hl7.org/fhir/R4/http.html). Kept in
 * step with those routes: literal segments compare case-insensitively and one trailing slash is
 * ignored (Express's defaults), HEAD is GET. A request the router would not route to an interaction
 * is `unknown`, and the authorization middleware answers it itself, so a disagreement between the
 * two can only refuse, never widen access.
 */
import type { Interaction } from './scopes.ts';

/** A classified FHIR request. */
export type FhirRequestInfo =
  | { readonly kind: 'public' }
  | { readonly kind: 'unknown'; readonly status: 404 | 405 }
  | { readonly kind: 'batch' }
  | {
      readonly kind: 'interaction';
      readonly interaction: Interaction;
      /** The resource type (absent for system-level search). */
      readonly resourceType: string | undefined;
      readonly id: string | undefined;
      readonly vid: string | undefined;
      /** Operation name with `$`, for `operation`. */
      readonly operation: string | undefined;
    };

const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH']);

function segmentsOf(path: string): string[] | undefined {
  let p = path;
  if (p.length > 1 && p.endsWith('/')) p = p.slice(0, -1);
  if (p === '/' || p === '') return [];
  if (!p.startsWith('/')) return undefined;
  const raw = p.slice(1).split('/');
  // Most paths have no escape: nothing to decode.
  if (!p.includes('%')) return raw.includes('') ? undefined : raw;
  try {
    const segs = raw.map((s) => decodeURIComponent(s));
    // An empty segment (`//`) does not match any route of the router.
    return segs.some((s) => s === '') ? undefined : segs;
  } catch {
    return undefined;
  }
}

const eq = (a: string | undefined, b: string) => a !== undefined && a.toLowerCase() === b;
const isOp = (s: string) => s.startsWith('$') || s.startsWith('_');

function interaction(interaction: Interaction, resourceType?: string, id?: string, extra: { vid?: string; operation?: string } = {}): FhirRequestInfo {
  return { kind: 'interaction', interaction, resourceType, id, vid: extra.vid, operation: extra.operation };
}

/**
 * @param method - HTTP method.
 * @param path - the path below the FHIR base (`req.path` inside the `/fhir` mount), percent-encoded.
 * @param hasQuery - whether the URL has a non-empty query (conditional update/delete need one).
 * @param ifNoneExist - whether `If-None-Exist` is present (conditional create).
 * @returns The interaction, `public` (`GET /metadata`), `batch` (`POST /`), or `unknown` with the
 *   status the router would answer (404 unknown path, 405 unknown method).
 */
export function classifyFhirRequest(method: string, path: string, hasQuery: boolean, ifNoneExist: boolean): FhirRequestInfo {
  const upper = method.toUpperCase();
  const m = upper === 'HEAD' ? 'GET' : upper;
  const segs = segmentsOf(path);
  if (!METHODS.has(m)) return { kind: 'unknown', status: 405 };
  if (segs === undefined) return { kind: 'unknown', status: 404 };
  const [a, b, c, d] = segs;
  switch (segs.length) {
    case 0:
      if (m === 'GET') return interaction('search-system');
      if (m === 'POST') return { kind: 'batch' };
      return { kind: 'unknown', status: 404 };
    case 1:
      if (eq(a, 'metadata')) return m === 'GET' ? { kind: 'public' } : { kind: 'unknown', status: 405 };
      if (eq(a, '_search') && m === 'POST') return interaction('search-system');
      if (isOp(a!)) return interaction('operation', undefined, undefined, { operation: a! });
      if (m === 'GET') return interaction('search-type', a);
      if (m === 'POST') return interaction(ifNoneExist ? 'conditional-create' : 'create', a);
      if (m === 'PUT') return hasQuery ? interaction('conditional-update', a) : { kind: 'unknown', status: 404 };
      if (m === 'DELETE') return hasQuery ? interaction('conditional-delete', a) : { kind: 'unknown', status: 404 };
      // PATCH [type] is 501 (conditional patch); treat as a patch of the type for authorization.
      return interaction('patch', a);
    case 2:
      // `[type]/$op` with any method is an operation: the router answers a wrong method (405) or an
      // unserved operation (501) itself, after authorization.
      if (b!.startsWith('$')) return interaction('operation', a, undefined, { operation: b! });
      if (m === 'POST') {
        if (eq(b, '_search')) return interaction('search-type', a);
        return { kind: 'unknown', status: 404 };
      }
      if (m === 'GET') return eq(b, '_history') ? interaction('history-type', a) : interaction('read', a, b);
      if (m === 'PUT') return interaction('update', a, b);
      if (m === 'DELETE') return interaction('delete', a, b);
      return interaction('patch', a, b);
    case 3:
      // `[type]/[id]/$op` with any method (e.g. POST $resolve-conflict) is an operation, as above.
      if (c!.startsWith('$')) return interaction('operation', a, b, { operation: c! });
      if (m !== 'GET') return { kind: 'unknown', status: 404 };
      if (eq(c, '_history')) return interaction('history-instance', a, b);
      return { kind: 'unknown', status: 404 };
    case 4:
      if (m === 'GET' && eq(c, '_history')) return interaction('vread', a, b, { vid: d! });
      return { kind: 'unknown', status: 404 };
    default:
      return { kind: 'unknown', status: 404 };
  }
}
