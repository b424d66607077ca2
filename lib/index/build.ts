/**
 * Finds FAISS and a C++ compiler, and compiles the shim (`_shim_source.ts`) into the cache:
 * `<cache>/faiss-shim/<key>/libknnlm_faiss.so`, where `<key>` hashes the shim source, the
 * compiler version and the FAISS version/library, so a second build costs nothing.
 *
 * Cache root: `$KNNLM_CACHE_DIR`, else `$XDG_CACHE_HOME/knnlm`, else `~/.cache/knnlm`.
 * Installing missing system packages is not done here (that is `tasks/setup.ts`).
 *
 * @module
 */

import { KnnError } from "../core/errors.ts";
import { sha256Hex } from "../core/_hash.ts";
import { cacheRoot } from "../core/_cache.ts";
import { runSync as run, tail } from "../core/_run.ts";
import { SHIM_ABI_VERSION, SHIM_SOURCE } from "./_shim_source.ts";

/** Environment variable naming an already built shim library; it overrides the cache. */
export const LIB_ENV = "KNNLM_FAISS_LIB";
/** File name of the compiled shim inside its cache directory. */
export const LIB_NAME = "libknnlm_faiss.so";
/** Debian/Ubuntu packages that provide everything the shim build needs. */
export const APT_PACKAGES = ["libfaiss-dev", "libopenblas-dev", "g++"] as const;

/** What `findToolchain` found; `missing` is empty when the shim can be compiled. */
export interface FaissToolchain {
  /** C++ compiler command (`$CXX`, `g++`, `c++` or `clang++`), or null. */
  compiler: string | null;
  /** First line of `compiler --version`. */
  compilerVersion: string | null;
  /** Directory holding `faiss/Index.h`, or null. */
  includeDir: string | null;
  /** `libfaiss.a` (preferred: the shim then needs no FAISS at run time) or `libfaiss.so`. */
  library: string | null;
  /** FAISS version from `faiss/Index.h`, e.g. `"1.7.3"`. */
  faissVersion: string | null;
  /** Debian package version of libfaiss-dev when dpkg knows it, e.g. `"1.7.3-2+b1"`. */
  packageVersion: string | null;
  /** Human-readable names of what is missing, e.g. `"FAISS headers (faiss/Index.h)"`. */
  missing: string[];
  /** Every location looked at, for error messages. */
  searched: string[];
}

/** Result of `buildShim`. */
export interface ShimBuild {
  /** Absolute path of the shared library. */
  path: string;
  /** True when the cache already held this build and nothing was compiled. */
  cached: boolean;
  /** Seconds spent compiling and linking (0 when cached). */
  seconds: number;
  /** Cache key (directory name). */
  key: string;
  /** Link flags that resolved BLAS/LAPACK, e.g. `["-lopenblas"]`. */
  linkFlags: string[];
}

function env(name: string): string | undefined {
  const v = Deno.env.get(name);
  return v === undefined || v === "" ? undefined : v;
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function multiarch(): string {
  return Deno.build.arch === "aarch64" ? "aarch64-linux-gnu" : "x86_64-linux-gnu";
}

function prefixes(): string[] {
  const list = [env("CONDA_PREFIX"), "/usr/local", "/usr"].filter((p): p is string => !!p);
  return [...new Set(list)];
}

/** The cache root for compiled shims: `<cache>/faiss-shim`. */
export function shimCacheRoot(): string {
  return `${cacheRoot()}/faiss-shim`;
}

/** Looks for a C++ compiler, the FAISS headers and the FAISS library; runs no install. */
export function findToolchain(): FaissToolchain {
  const searched: string[] = [];
  const missing: string[] = [];

  let compiler: string | null = null;
  let compilerVersion: string | null = null;
  for (const c of [env("CXX"), "g++", "c++", "clang++"].filter((c): c is string => !!c)) {
    searched.push(`compiler ${c}`);
    const r = run(c, ["--version"]);
    if (r.ok) {
      compiler = c;
      compilerVersion = r.stdout.split("\n")[0].trim();
      break;
    }
  }
  if (!compiler) missing.push("C++ compiler (g++)");

  let includeDir: string | null = null;
  for (const p of prefixes()) {
    const header = `${p}/include/faiss/Index.h`;
    searched.push(header);
    if (isFile(header)) {
      includeDir = `${p}/include`;
      break;
    }
  }
  let faissVersion: string | null = null;
  if (includeDir) {
    const text = Deno.readTextFileSync(`${includeDir}/faiss/Index.h`);
    const part = (name: string) => text.match(new RegExp(`#define FAISS_VERSION_${name} (\\d+)`));
    const [ma, mi, pa] = [part("MAJOR"), part("MINOR"), part("PATCH")];
    if (ma && mi && pa) faissVersion = `${ma[1]}.${mi[1]}.${pa[1]}`;
  } else {
    missing.push("FAISS headers (faiss/Index.h)");
  }

  let library: string | null = null;
  outer: for (const name of ["libfaiss.a", "libfaiss.so"]) {
    for (const p of prefixes()) {
      for (const dir of [`${p}/lib/${multiarch()}`, `${p}/lib`, `${p}/lib64`]) {
        searched.push(`${dir}/${name}`);
        if (isFile(`${dir}/${name}`)) {
          library = `${dir}/${name}`;
          break outer;
        }
      }
    }
  }
  if (!library) missing.push("FAISS library (libfaiss.a or libfaiss.so)");

  const dpkg = run("dpkg-query", ["-W", "-f=${Version}", "libfaiss-dev"]);
  const packageVersion = dpkg.ok && dpkg.stdout.trim() ? dpkg.stdout.trim() : null;

  return {
    compiler,
    compilerVersion,
    includeDir,
    library,
    faissVersion,
    packageVersion,
    missing,
    searched,
  };
}

/** Hash of the shim source and ABI, recorded in each build's `build.json`. */
export function shimSourceHash(): string {
  return sha256Hex(`${SHIM_ABI_VERSION}\n${SHIM_SOURCE}`);
}

/** Cache key of a build with this toolchain, or null when the toolchain is incomplete. */
export function shimKey(tc: FaissToolchain): string | null {
  if (!tc.compilerVersion || !tc.library || !tc.includeDir) return null;
  let libStamp = tc.library;
  try {
    const st = Deno.statSync(tc.library);
    libStamp += `:${st.size}:${st.mtime?.getTime() ?? 0}`;
  } catch { /* missing library: the key still differs by path */ }
  const material = JSON.stringify({
    source: shimSourceHash(),
    compiler: tc.compilerVersion,
    faiss: tc.faissVersion,
    package: tc.packageVersion,
    library: libStamp,
    include: tc.includeDir,
  });
  return sha256Hex(material).slice(0, 16);
}

interface BuildRecord {
  key: string;
  abi: number;
  sourceSha256: string;
  compilerVersion: string | null;
  faissVersion: string | null;
}

/**
 * Finds an already compiled shim for this source. With a complete toolchain that is exactly
 * `<root>/<key>/libknnlm_faiss.so`; without one (no compiler, or FAISS headers removed after the
 * build) any cached build of the same shim source, newest first.
 */
export function findCachedShim(
  tc: FaissToolchain,
  root = shimCacheRoot(),
): { path: string | null; tried: string[] } {
  const key = shimKey(tc);
  if (key) {
    const path = `${root}/${key}/${LIB_NAME}`;
    return { path: isFile(path) ? path : null, tried: [path] };
  }
  const want = shimSourceHash();
  const found: { path: string; mtime: number }[] = [];
  try {
    for (const entry of Deno.readDirSync(root)) {
      if (!entry.isDirectory || entry.name.includes(".tmp")) continue;
      const dir = `${root}/${entry.name}`;
      try {
        const rec = JSON.parse(Deno.readTextFileSync(`${dir}/build.json`)) as BuildRecord;
        const path = `${dir}/${LIB_NAME}`;
        if (rec.sourceSha256 === want && rec.abi === SHIM_ABI_VERSION && isFile(path)) {
          found.push({ path, mtime: Deno.statSync(path).mtime?.getTime() ?? 0 });
        }
      } catch { /* not a finished build */ }
    }
  } catch { /* no cache yet */ }
  found.sort((a, b) => b.mtime - a.mtime);
  return {
    path: found[0]?.path ?? null,
    tried: [`${root}/*/${LIB_NAME} (any build of this shim source; no toolchain to compute key)`],
  };
}

/** Options of `buildShim`. */
export interface BuildShimOptions {
  /** Toolchain to use; default `findToolchain()`. */
  toolchain?: FaissToolchain;
  /** Recompile even when the cache has this build; default false. */
  force?: boolean;
  /** Cache root; default `shimCacheRoot()`. */
  cacheRoot?: string;
}

/**
 * Compiles the shim into the cache unless it is there already. Compiles into a temporary
 * directory and renames it into place, so a crash or a concurrent build never leaves a
 * half-written library under the final name. Throws with the compiler's output on failure.
 */
export function buildShim(opts: BuildShimOptions = {}): ShimBuild {
  const tc = opts.toolchain ?? findToolchain();
  const root = opts.cacheRoot ?? shimCacheRoot();
  const key = shimKey(tc);
  if (tc.missing.length > 0 || !key || !tc.compiler || !tc.library || !tc.includeDir) {
    throw new KnnError(
      "E_SETUP",
      `cannot compile the FAISS shim: missing ${tc.missing.join(", ")}\n` +
        `  searched: ${tc.searched.join(", ")}`,
    );
  }
  const finalDir = `${root}/${key}`;
  const finalPath = `${finalDir}/${LIB_NAME}`;
  if (!opts.force && isFile(finalPath)) {
    const rec = readRecord(finalDir);
    return { path: finalPath, cached: true, seconds: 0, key, linkFlags: rec?.linkFlags ?? [] };
  }

  Deno.mkdirSync(root, { recursive: true });
  const tmpDir = Deno.makeTempDirSync({ dir: root, prefix: `${key}.tmp-` });
  try {
    const started = performance.now();
    const src = `${tmpDir}/shim.cpp`;
    Deno.writeTextFileSync(src, SHIM_SOURCE);
    const include = tc.includeDir === "/usr/include" ? [] : [`-I${tc.includeDir}`];
    const compileArgs = [
      "-std=c++17",
      "-O2",
      "-fPIC",
      "-fopenmp",
      "-fvisibility=hidden",
      ...include,
      "-c",
      src,
      "-o",
      `${tmpDir}/shim.o`,
    ];
    const c = run(tc.compiler, compileArgs);
    if (!c.ok) {
      throw new KnnError(
        "E_SETUP",
        `compiling the FAISS shim failed: ${tc.compiler} ${compileArgs.join(" ")}\n${
          tail(c.stderr)
        }`,
      );
    }
    const linkFlags = linkShim(
      tc.compiler,
      tc.library,
      `${tmpDir}/shim.o`,
      `${tmpDir}/${LIB_NAME}`,
    );
    const seconds = (performance.now() - started) / 1000;
    Deno.removeSync(`${tmpDir}/shim.o`);
    const record = {
      key,
      abi: SHIM_ABI_VERSION,
      sourceSha256: shimSourceHash(),
      compiler: tc.compiler,
      compilerVersion: tc.compilerVersion,
      faissVersion: tc.faissVersion,
      packageVersion: tc.packageVersion,
      library: tc.library,
      includeDir: tc.includeDir,
      linkFlags,
      compileSeconds: Number(seconds.toFixed(2)),
      builtAt: new Date().toISOString(),
    };
    Deno.writeTextFileSync(`${tmpDir}/build.json`, JSON.stringify(record, null, 2) + "\n");
    if (exists(finalDir)) Deno.removeSync(finalDir, { recursive: true });
    try {
      Deno.renameSync(tmpDir, finalDir);
    } catch (e) {
      // Another process finished the same build first: keep theirs.
      if (!isFile(finalPath)) throw e;
      Deno.removeSync(tmpDir, { recursive: true });
    }
    return { path: finalPath, cached: false, seconds, key, linkFlags };
  } catch (e) {
    try {
      Deno.removeSync(tmpDir, { recursive: true });
    } catch { /* already renamed or gone */ }
    throw e;
  }
}

// Links shim.o against FAISS. A static libfaiss.a needs BLAS and LAPACK: OpenBLAS (which
// carries LAPACK on Debian) first, then the reference libraries. --no-undefined makes a
// missing symbol fail here rather than at dlopen time.
function linkShim(compiler: string, library: string, obj: string, out: string): string[] {
  const isStatic = library.endsWith(".a");
  const dir = library.slice(0, library.lastIndexOf("/"));
  const faissArgs = isStatic ? [library] : [`-L${dir}`, "-lfaiss", `-Wl,-rpath,${dir}`];
  const candidates = isStatic
    ? [["-lopenblas"], ["-lopenblas", "-llapack"], ["-llapack", "-lblas"]]
    : [[]];
  const errors: string[] = [];
  for (const blas of candidates) {
    const args = [
      "-shared",
      "-fopenmp",
      "-o",
      out,
      obj,
      ...faissArgs,
      ...blas,
      "-Wl,--no-undefined",
      "-Wl,--exclude-libs,ALL",
    ];
    const r = run(compiler, args);
    if (r.ok) return blas;
    errors.push(`${compiler} ${args.join(" ")}\n${tail(r.stderr)}`);
  }
  throw new KnnError(
    "E_SETUP",
    `linking the FAISS shim failed:\n${errors.join("\n")}`,
  );
}

function readRecord(dir: string): { linkFlags?: string[] } | null {
  try {
    return JSON.parse(Deno.readTextFileSync(`${dir}/build.json`));
  } catch {
    return null;
  }
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}
