/**
 * One error class for every layer: {@linkcode KnnError} carries a stable {@linkcode ErrorCode},
 * the file or key it concerns, and the original error as `cause`. Programs (the CLI, tests,
 * scripts) branch on `code`, never on message text; {@linkcode exitStatus} is the CLI's mapping
 * from code to process exit status.
 *
 * @example
 * ```ts
 * import { KnnError } from "./errors.ts";
 *
 * try {
 *   throw new KnnError("E_NOT_FOUND", "data/x/keys.npy: missing", { path: "data/x/keys.npy" });
 * } catch (e) {
 *   if (KnnError.is(e, "E_NOT_FOUND")) console.log(e.path); // "data/x/keys.npy"
 * }
 * ```
 *
 * @module
 */

/**
 * Stable error codes (part of the public API: add codes, never rename them).
 *
 * | code | meaning |
 * | --- | --- |
 * | `E_CONFIG` | a setting (flag, config file key, option) is malformed or out of range |
 * | `E_USAGE` | the command line itself is wrong (unknown command, missing argument) |
 * | `E_NOT_FOUND` | a file, directory, tensor or datastore that is needed does not exist |
 * | `E_CORRUPT` | a file exists but its contents are not what its format or manifest promise |
 * | `E_MISMATCH` | files or settings that must belong together do not (other model, other settings) |
 * | `E_LOCKED` | another process holds the datastore's writer lock |
 * | `E_NO_SPACE` | a write failed, or would fail, for lack of disk space (or a file size limit) |
 * | `E_PERMISSION` | the operating system refused access |
 * | `E_INTERRUPTED` | stopped by SIGINT/SIGTERM (or an abort signal) at a resumable point |
 * | `E_IO` | any other operating-system failure |
 * | `E_NATIVE` | FAISS or ONNX Runtime reported an error |
 * | `E_SETUP` | a prerequisite (compiler, FAISS, a native library) is missing |
 */
export type ErrorCode =
  | "E_CONFIG"
  | "E_USAGE"
  | "E_NOT_FOUND"
  | "E_CORRUPT"
  | "E_MISMATCH"
  | "E_LOCKED"
  | "E_NO_SPACE"
  | "E_PERMISSION"
  | "E_INTERRUPTED"
  | "E_IO"
  | "E_NATIVE"
  | "E_SETUP";

/** Every {@linkcode ErrorCode}, in documentation order. */
export const ERROR_CODES: readonly ErrorCode[] = [
  "E_CONFIG",
  "E_USAGE",
  "E_NOT_FOUND",
  "E_CORRUPT",
  "E_MISMATCH",
  "E_LOCKED",
  "E_NO_SPACE",
  "E_PERMISSION",
  "E_INTERRUPTED",
  "E_IO",
  "E_NATIVE",
  "E_SETUP",
];

/** Options of {@linkcode KnnError}: what it concerns and why. */
export interface KnnErrorOptions extends ErrorOptions {
  /** The file or directory the error concerns. */
  path?: string;
  /** The setting the error concerns, as a dotted config key (e.g. `"index.nlist"`). */
  key?: string;
  /** A short suggestion the CLI prints after the message (e.g. the command that fixes it). */
  hint?: string;
  /** For `E_INTERRUPTED`: the signal that stopped the work. */
  signal?: "SIGINT" | "SIGTERM";
}

/** The toolkit's error: a message a user can act on plus a stable, testable `code`. */
export class KnnError extends Error {
  /** What kind of failure this is; stable across versions. */
  readonly code: ErrorCode;
  /** The file or directory concerned, when there is one. */
  readonly path?: string;
  /** The dotted config key concerned, when there is one. */
  readonly key?: string;
  /** A suggestion for the user, printed by the CLI as `hint: …`. */
  readonly hint?: string;
  /** The signal behind an `E_INTERRUPTED`. */
  readonly signal?: "SIGINT" | "SIGTERM";

  /** An error with `code` and a complete, one-line-first `message`. */
  constructor(code: ErrorCode, message: string, options: KnnErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "KnnError";
    this.code = code;
    if (options.path !== undefined) this.path = options.path;
    if (options.key !== undefined) this.key = options.key;
    if (options.hint !== undefined) this.hint = options.hint;
    if (options.signal !== undefined) this.signal = options.signal;
  }

  /** True when `e` is a {@linkcode KnnError} (with `code`, when given). */
  static is(e: unknown, code?: ErrorCode): e is KnnError {
    return e instanceof KnnError && (code === undefined || e.code === code);
  }
}

/**
 * The process exit status the CLI uses for an error: 130 for an interrupt by SIGINT (128 + 2,
 * as shells report Ctrl-C), 143 for SIGTERM (128 + 15), 2 for bad usage or settings, 75
 * (`EX_TEMPFAIL`: try again later) for a held lock, 1 for everything else.
 */
export function exitStatus(e: unknown): number {
  if (!(e instanceof KnnError)) return 1;
  switch (e.code) {
    case "E_INTERRUPTED":
      return e.signal === "SIGTERM" ? 143 : 130;
    case "E_CONFIG":
    case "E_USAGE":
      return 2;
    case "E_LOCKED":
      return 75;
    default:
      return 1;
  }
}

/**
 * The {@linkcode KnnError} for an error thrown by a `Deno` file API on `path`: `Deno.errors`
 * classes become codes (NotFound → E_NOT_FOUND, PermissionDenied → E_PERMISSION, a full disk →
 * E_NO_SPACE, else E_IO) and the message names the file and what was being done.
 */
export function fsError(e: unknown, path: string, doing: string): KnnError {
  if (e instanceof KnnError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  let code: ErrorCode = "E_IO";
  if (e instanceof Deno.errors.NotFound) code = "E_NOT_FOUND";
  else if (e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.NotCapable) {
    code = "E_PERMISSION";
  } else if (/os error 28\b|No space left|os error 27\b|File too large/i.test(msg)) {
    code = "E_NO_SPACE";
  }
  // Deno's messages already carry the syscall and often the path; keep only the reason.
  const reason = msg.replace(/: '.*'$/, "").replace(/^.*?: (?=[A-Z])/, "");
  return new KnnError(code, `${path}: cannot ${doing}: ${reason}`, { path, cause: e });
}
