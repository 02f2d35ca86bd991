/**
 * Per-peer routing (docs/mappings.md "Routing"): which resources this node sends each peer,
 * decided by rules of resource types and FHIRPath conditions (https://hl7.org/fhir/R4/fhirpath.html,
 * evaluated with `@medplum/core` `evalFhirPath`) on the resource's current version.
 *
 * A peer with a route gets a resource when some `send` rule matches (or there are no `send` rules)
 * and no `withhold` rule matches. A peer without a route gets everything. A condition that fails
 * to evaluate, or gives more than one item, withholds the resource (fail closed).
 *
 * Routing is an outbound filter of Tide (src/tide/peer-authz.ts `outboundLabelsOf`), like
 * `withheldLabels`: fanout, relay and anti-entropy all skip what a peer may not receive.
 */
import { evalFhirPath, parseFhirPath } from '@medplum/core';
import type { FhirPathAtom } from '@medplum/core';
import type { RouteRule } from './schema.ts';

/** One compiled rule. */
interface CompiledRule {
  types: ReadonlySet<string> | undefined;
  where: FhirPathAtom | undefined;
  /** Where the rule is configured, e.g. `routes.hospital-b.send[1]`. */
  at: string;
}

/** One peer's compiled route. */
interface CompiledRoute {
  send: CompiledRule[] | undefined;
  withhold: CompiledRule[];
}

/** The outcome of {@link Router.explain}. */
export interface RouteDecision {
  allowed: boolean;
  /** Why, for people: the rule that decided (`routes.hospital-b.withhold[0]`) or `no route for the peer`. */
  reason: string;
}

/** A condition that cannot be used: thrown by {@link compileCondition}. */
export class RouteConditionError extends Error {
  override readonly name = 'RouteConditionError';
  readonly code = 'ERR_ROUTE_CONDITION';
}

/**
 * Parses a FHIRPath condition and checks it evaluates: on `{ resourceType }` of each given type
 * (so unknown functions, which Medplum reports only when evaluating, are found before use).
 * @param expression - FHIRPath text.
 * @param types - the resource types the rule applies to (`['Resource']`-like empty list = try on `{}`).
 * @returns The parsed expression.
 * @throws RouteConditionError with Medplum's parse or evaluation message.
 */
export function compileCondition(expression: string, types: readonly string[] = []): FhirPathAtom {
  let atom: FhirPathAtom;
  try {
    atom = parseFhirPath(expression);
  } catch (err) {
    throw new RouteConditionError(`FHIRPath does not parse: ${(err as Error).message}`);
  }
  for (const t of types.length > 0 ? types : [undefined]) {
    try {
      evalFhirPath(atom, t === undefined ? {} : { resourceType: t });
    } catch (err) {
      throw new RouteConditionError(`FHIRPath does not evaluate: ${(err as Error).message.replace(/^FhirPathError on "[^"]*": /, '')}`);
    }
  }
  return atom;
}

/**
 * A FHIRPath evaluation error without the values it met: Medplum's messages may list the items an
 * expression found (`Expected singleton, but found [{"value":"555-…"}]`, a regular expression built
 * from an element's value), i.e. resource content, which must never reach a log. Keeps the
 * configuration's own text (the expression) and Medplum's reason up to the first value.
 * @param err - what `evalFhirPath` (or {@link conditionHolds}) threw.
 * @returns A {@link RouteConditionError} whose message holds no resource content.
 */
export function conditionErrorWithoutValues(err: unknown): RouteConditionError {
  if (err instanceof RouteConditionError) return err;
  const text = String((err as Error)?.message ?? err).replace(/^FhirPathError on "(?:[^"\\]|\\.)*": /, '');
  // everything from the first value on: ", but found [...]", a JSON value, a quoted text, a /regexp/
  const cut = text.search(/, but found|[[{"'/]/);
  return new RouteConditionError(`FHIRPath evaluation failed: ${(cut < 0 ? text : text.slice(0, cut)).trim()}${cut < 0 ? '' : ' (values not shown)'}`);
}

/**
 * FHIRPath singleton evaluation of a result collection as a condition
 * (https://hl7.org/fhir/R4/fhirpath.html, "Singleton Evaluation of Collections"): empty is false,
 * one Boolean is its value, one other item is true.
 * @param result - what `evalFhirPath` returned.
 * @returns The truth value.
 * @throws RouteConditionError when the collection holds more than one item.
 */
export function conditionHolds(result: readonly unknown[]): boolean {
  if (result.length === 0) return false;
  if (result.length > 1) throw new RouteConditionError(`condition gave ${result.length} items, not one; wrap it in exists(), all() or where()`);
  const v = result[0];
  return typeof v === 'boolean' ? v : true;
}

/** Compiled routing rules of every peer; see module doc. */
export class Router {
  readonly #routes = new Map<string, CompiledRoute>();
  readonly #onError: ((peerId: string, at: string, err: Error) => void) | undefined;

  /**
   * @param routes - the mapping file's `routes` (peer id → send/withhold rules), already schema-checked.
   * @param opts.onError - told about each condition that failed while evaluating (the resource was withheld).
   * @throws RouteConditionError (message prefixed with the rule's place) for a condition that does not parse or evaluate.
   */
  constructor(routes: Readonly<Record<string, { send?: RouteRule[] | undefined; withhold?: RouteRule[] | undefined }>>, opts: { onError?: (peerId: string, at: string, err: Error) => void } = {}) {
    this.#onError = opts.onError;
    for (const [peer, route] of Object.entries(routes)) {
      const compile = (rule: RouteRule, at: string): CompiledRule => {
        const types = rule.resourceType === undefined ? undefined : typeof rule.resourceType === 'string' ? [rule.resourceType] : rule.resourceType;
        let where: FhirPathAtom | undefined;
        if (rule.where !== undefined) {
          try {
            where = compileCondition(rule.where, types ?? []);
          } catch (err) {
            throw new RouteConditionError(`${at}.where: ${(err as Error).message}`);
          }
        }
        return { types: types === undefined ? undefined : new Set(types), where, at };
      };
      this.#routes.set(peer, {
        send: route.send?.map((r, i) => compile(r, `routes.${peer}.send[${i}]`)),
        withhold: (route.withhold ?? []).map((r, i) => compile(r, `routes.${peer}.withhold[${i}]`)),
      });
    }
  }

  /** Peer ids that have a route (the others get everything). */
  get peers(): string[] {
    return [...this.#routes.keys()];
  }

  /**
   * May `resource` be sent to `peerId`?
   * @param peerId - a peer node id.
   * @param resource - the resource's current version as plain JSON (`JSON.parse` of the stored body).
   * @returns True when the peer has no route, or some send rule (or none configured) and no withhold rule matches.
   */
  routeAllows(peerId: string, resource: unknown): boolean {
    return this.explain(peerId, resource).allowed;
  }

  /**
   * {@link routeAllows} with the reason.
   * @param peerId - a peer node id.
   * @param resource - plain JSON of the resource.
   */
  explain(peerId: string, resource: unknown): RouteDecision {
    const route = this.#routes.get(peerId);
    if (route === undefined) return { allowed: true, reason: `no route for ${peerId}: everything is sent` };
    const type = typeof (resource as { resourceType?: unknown })?.resourceType === 'string' ? (resource as { resourceType: string }).resourceType : '';
    const matches = (rule: CompiledRule): boolean | 'error' => {
      if (rule.types !== undefined && !rule.types.has(type)) return false;
      if (rule.where === undefined) return true;
      try {
        return conditionHolds(evalFhirPath(rule.where, resource));
      } catch (err) {
        this.#onError?.(peerId, rule.at, conditionErrorWithoutValues(err));
        return 'error';
      }
    };
    for (const rule of route.withhold) {
      const m = matches(rule);
      if (m === 'error') return { allowed: false, reason: `${rule.at}: condition failed to evaluate (withheld, fail closed)` };
      if (m) return { allowed: false, reason: `withheld by ${rule.at}` };
    }
    if (route.send === undefined) return { allowed: true, reason: `no send rules for ${peerId} and no withhold rule matched` };
    for (const rule of route.send) {
      const m = matches(rule);
      if (m === 'error') return { allowed: false, reason: `${rule.at}: condition failed to evaluate (withheld, fail closed)` };
      if (m) return { allowed: true, reason: `sent by ${rule.at}` };
    }
    return { allowed: false, reason: `no send rule of routes.${peerId} matched` };
  }
}
