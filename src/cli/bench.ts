export async function runBench(_o: { json: boolean; data: string }): Promise<void> {
  throw new Error('bench: not written yet');
}
