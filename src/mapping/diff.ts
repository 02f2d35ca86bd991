/**
 * A line diff for `tidegate map preview`: the longest common subsequence of two texts' lines
 * (Hirschberg-free O(n·m) table, fine for one resource), printed as unified-diff hunks.
 */

/** One line of a diff: kept (`' '`), removed (`'-'`) or added (`'+'`). */
export interface DiffLine {
  op: ' ' | '-' | '+';
  text: string;
}

/** Most lines on each side for the LCS table (a 5,000 × 5,000 table is 25 M cells, ~100 MB). */
const MAX_LINES = 5000;

/**
 * Line diff of `a` against `b`.
 * @param a - the old text.
 * @param b - the new text.
 * @returns Every line of both, in order, marked kept/removed/added.
 * @throws RangeError when either text has more than 5,000 lines.
 */
export function diffLines(a: string, b: string): DiffLine[] {
  const x = a.split('\n');
  const y = b.split('\n');
  if (x.length > MAX_LINES || y.length > MAX_LINES) throw new RangeError(`diff: at most ${MAX_LINES} lines per side`);
  const n = x.length;
  const m = y.length;
  // lcs[i][j] = LCS length of x[i..] and y[j..]
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) lcs[i]![j] = x[i] === y[j] ? lcs[i + 1]![j + 1]! + 1 : Math.max(lcs[i + 1]![j]!, lcs[i]![j + 1]!);
  }
  const out: DiffLine[] = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) {
      out.push({ op: ' ', text: x[i]! });
      i++;
      j++;
    } else if (lcs[i + 1]![j]! >= lcs[i]![j + 1]!) out.push({ op: '-', text: x[i++]! });
    else out.push({ op: '+', text: y[j++]! });
  }
  while (i < n) out.push({ op: '-', text: x[i++]! });
  while (j < m) out.push({ op: '+', text: y[j++]! });
  return out;
}

/**
 * Unified diff text (https://www.gnu.org/software/diffutils/manual/html_node/Detailed-Unified.html).
 * @param a - the old text.
 * @param b - the new text.
 * @param labels - the `---`/`+++` names.
 * @param context - unchanged lines around each change (default 3).
 * @returns The diff; `''` when the texts are equal.
 */
export function unifiedDiff(a: string, b: string, labels: { from: string; to: string }, context = 3): string {
  const lines = diffLines(a, b);
  if (lines.every((l) => l.op === ' ')) return '';
  const out = [`--- ${labels.from}`, `+++ ${labels.to}`];
  let k = 0;
  while (k < lines.length) {
    if (lines[k]!.op === ' ') {
      k++;
      continue;
    }
    // a hunk: from `context` lines before this change to `context` lines after the last change near it
    let start = Math.max(0, k - context);
    let end = k;
    while (end < lines.length) {
      if (lines[end]!.op !== ' ') {
        end++;
        continue;
      }
      let run = 0;
      while (end + run < lines.length && lines[end + run]!.op === ' ') run++;
      if (end + run >= lines.length || run > 2 * context) {
        end = Math.min(lines.length, end + context);
        break;
      }
      end += run;
    }
    let oldStart = 1;
    let newStart = 1;
    for (let t = 0; t < start; t++) {
      if (lines[t]!.op !== '+') oldStart++;
      if (lines[t]!.op !== '-') newStart++;
    }
    const hunk = lines.slice(start, end);
    const oldLen = hunk.filter((l) => l.op !== '+').length;
    const newLen = hunk.filter((l) => l.op !== '-').length;
    out.push(`@@ -${oldStart},${oldLen} +${newStart},${newLen} @@`);
    for (const l of hunk) out.push(`${l.op}${l.text}`);
    k = end;
    start = end;
  }
  return `${out.join('\n')}\n`;
}
