/** File helpers shared by the ONNX modules: reading with path-naming errors, atomic writes. */

/**
 * Reads a model file.
 *
 * @throws Error `PATH: model file not found` (or the OS error), with the original as cause
 */
export async function readModelFile(path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound
      ? "model file not found"
      : e instanceof Deno.errors.IsADirectory
      ? "is a directory, expected an .onnx file"
      : `cannot read model file: ${(e as Error).message}`;
    throw new Error(`${path}: ${why}`, { cause: e });
  }
}

/** Writes `bytes` to `path` via a unique `*.tmp` file and a rename, so readers never see a partial file. */
export async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${path}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  try {
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}
