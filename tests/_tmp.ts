/**
 * Temporary directories that remove themselves: declare one with `using` (or `await using`)
 * before anything that writes into it, and it is deleted, recursively, when the test's block
 * ends — whether the test passed or threw. Declared first, it is disposed of last, after the
 * files, indexes and mappings opened inside it are closed.
 *
 * ```ts ignore
 * using tmp = tempDir("knnlm_eval_");
 * await Deno.writeTextFile(join(tmp.path, "train.txt"), "...");
 * ```
 *
 * @module
 */

/** A temporary directory, removed with everything in it on dispose. */
export interface TempDir extends Disposable, AsyncDisposable {
  /** Absolute path of the directory. */
  readonly path: string;
}

function removeSync(path: string): void {
  try {
    Deno.removeSync(path, { recursive: true });
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

/** Creates a fresh directory under the system temp dir whose name starts with `prefix`. */
export function tempDir(prefix: string): TempDir {
  const path = Deno.makeTempDirSync({ prefix });
  return {
    path,
    [Symbol.dispose]: () => removeSync(path),
    [Symbol.asyncDispose]: async () => {
      try {
        await Deno.remove(path, { recursive: true });
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    },
  };
}
