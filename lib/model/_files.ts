/** File helpers shared by the ONNX modules: reading with path-naming errors. */

import { ensureModelFile } from "./default_model.ts";

/**
 * Reads a model file.
 *
 * @throws Error `PATH: model file not found` (or the OS error), with the original as cause
 */
export async function readModelFile(path: string): Promise<Uint8Array> {
  await ensureModelFile(path); // the bundled model of a toolkit imported by URL: fetched once
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
