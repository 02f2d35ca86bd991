export async function serve(_config: string): Promise<void> {
  throw new Error('serve: not written yet');
}
