/** File helpers shared by the ONNX modules: reading with path-naming errors. */

import { ensureModelFile } from "./default_model.ts";
import { fsError, KnnError } from "../core/errors.ts";

/**
 * Reads a model file.
 *
 * @throws KnnError `E_NOT_FOUND` (`PATH: model file not found`), `E_CONFIG` for a directory,
 *   else the OS error's code (`E_PERMISSION`, `E_IO`), with the original as cause
 */
export async function readModelFile(path: string): Promise<Uint8Array> {
  await ensureModelFile(path); // the bundled model of a toolkit imported by URL: fetched once
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new KnnError("E_NOT_FOUND", `${path}: model file not found`, { path, cause: e });
    }
    if (e instanceof Deno.errors.IsADirectory) {
      throw new KnnError("E_CONFIG", `${path}: is a directory, expected an .onnx file`, {
        path,
        cause: e,
      });
    }
    throw new KnnError(
      fsError(e, path, "read").code,
      `${path}: cannot read model file: ${(e as Error).message}`,
      {
        path,
        cause: e,
      },
    );
  }
}
