/**
 * The bottom layer every other layer uses: the toolkit's one error class with stable codes,
 * and its name and version. Private helpers (atomic writes, hashing, suggestions) live in
 * `_` files beside this one and are not part of the API.
 *
 * @module
 */

export {
  ERROR_CODES,
  type ErrorCode,
  exitStatus,
  KnnError,
  type KnnErrorOptions,
} from "./errors.ts";
export { TOOLKIT_NAME, TOOLKIT_VERSION } from "./version.ts";
