"""Python side of the stage microbenchmark (``deno task bench --stages``).

FAISS's ``IndexIVFPQ`` train, ``add_with_ids`` in chunks straight from a memory-mapped ``.npy``,
and ``search`` in batches, on the same arrays and parameters as ``bench/stages_toolkit.ts``
(the toolkit through its FFI binding). Each stage is measured from inside the process: wall
time, the process's user and system CPU, and the CPU of its busiest thread (from
``/proc/self/task``). Prints one JSON object. Benchmark reference only.
"""
import argparse
import hashlib
import json
import os
import time

import faiss
import numpy as np

USER_HZ = os.sysconf("SC_CLK_TCK")


def thread_cpu():
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[tid] = (int(fields[11]) + int(fields[12])) / USER_HZ
        except OSError:
            pass  # the thread ended between the listing and the read
    return out


def stage(fn):
    t0 = thread_cpu()
    c0 = os.times()
    w0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - w0
    c1 = os.times()
    per = [s - t0.get(tid, 0.0) for tid, s in thread_cpu().items()]
    return {
        "wall": wall,
        "user": c1.user - c0.user,
        "sys": c1.system - c0.system,
        "busiestThread": max([0.0] + per),
        "activeThreads": sum(1 for s in per if s > 0.01),
    }


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--out", required=True)
    for name in ["rows", "train-size", "nlist", "m", "nbits", "nprobe", "k", "add-chunk",
                 "search-batch", "threads"]:
        ap.add_argument(f"--{name}", type=int, required=True)
    a = ap.parse_args()
    faiss.omp_set_num_threads(a.threads)
    keys = np.load(a.keys, mmap_mode="r")  # [n, d] float32
    queries = np.load(a.queries, mmap_mode="r")  # [nq, d] float32
    rows = min(a.rows, keys.shape[0])
    d = keys.shape[1]
    # Training rows copied into memory before the clock starts, as the toolkit side does.
    train_x = np.ascontiguousarray(keys[:min(a.train_size, rows)])
    trained = os.path.join(a.out, "reference_trained.index")
    stages = {}

    def train():
        index = faiss.IndexIVFPQ(faiss.IndexFlatL2(d), d, a.nlist, a.m, a.nbits)
        index.train(train_x)
        faiss.write_index(index, trained)

    stages["train"] = stage(train)
    index = faiss.read_index(trained)

    def add():
        for s in range(0, rows, a.add_chunk):
            e = min(rows, s + a.add_chunk)
            index.add_with_ids(keys[s:e], np.arange(s, e, dtype=np.int64))
        faiss.extract_index_ivf(index).nprobe = a.nprobe

    stages["add"] = stage(add)
    nq = queries.shape[0]
    labels = np.empty((nq, a.k), dtype=np.int64)

    def search():
        for s in range(0, nq, a.search_batch):
            e = min(nq, s + a.search_batch)
            _, labels[s:e] = index.search(queries[s:e], a.k)

    stages["search"] = stage(search)
    print(json.dumps({
        "side": "reference",
        "threads": a.threads,
        "rows": rows,
        "nq": nq,
        "stages": stages,
        "threadsAtEnd": len(os.listdir("/proc/self/task")),
        "trainedSha256": sha256_file(trained),
        "labelsSha256": hashlib.sha256(labels.tobytes()).hexdigest(),
        "versions": {"faiss": faiss.__version__, "numpy": np.__version__},
    }))


if __name__ == "__main__":
    main()
