"""FAISS from Python doing the sharded recipe of `deno task bench-scale` on the same keys.

The recipe of FAISS's own docs (benchs/distributed_ondisk, faiss.contrib.ondisk.merge_ondisk):
train an IVF index once on a sample, add each shard's keys to a copy of it (in-memory lists)
and write it, then merge the shards' lists into one on-disk index. Every stage is one process;
`deno task bench-scale` times them and samples their memory from /proc, exactly as it does the
toolkit's, under the same thread environment.

  scale_reference.py train DIR ROWS.npy NLIST M NBITS OUT.index
  scale_reference.py add DIR I TRAINED.index OUT.index CHUNK
  scale_reference.py merge TRAINED.index OUT_DIR SHARD.index...
  scale_reference.py search INDEX QUERIES.npy K NPROBE
"""
import json
import os
import sys
import time

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk


def shards(d):
    """[(keys path, first global row, rows)] of DIR/shards/I in order."""
    out = []
    i = 0
    while os.path.exists(os.path.join(d, "shards", str(i), "shard.json")):
        with open(os.path.join(d, "shards", str(i), "shard.json")) as f:
            rec = json.load(f)
        out.append((os.path.join(d, "shards", str(i), "keys.npy"), rec["shard"]["rows"][0],
                    rec["keys"]["shape"][0]))
        i += 1
    return out


def train(d, rows_file, nlist, m, nbits, out):
    rows = np.load(rows_file)
    parts = shards(d)
    dim = np.load(parts[0][0], mmap_mode="r").shape[1]
    xt = np.empty((len(rows), dim), dtype=np.float32)
    at = 0
    for path, first, n in parts:  # the sample's rows, read in ascending order, shard by shard
        mine = rows[(rows >= first) & (rows < first + n)] - first
        xt[at:at + len(mine)] = np.load(path, mmap_mode="r")[mine]
        at += len(mine)
    assert at == len(rows)
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, nlist, m, nbits)
    index.train(xt)
    faiss.write_index(index, out)


def add(d, i, trained, out, chunk):
    path, first, n = shards(d)[i]
    index = faiss.read_index(trained)
    xb = np.load(path, mmap_mode="r")
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        index.add_with_ids(np.ascontiguousarray(xb[a:b], dtype=np.float32),
                           np.arange(first + a, first + b, dtype=np.int64))
    faiss.write_index(index, out)


def merge(trained, out_dir, parts):
    index = faiss.read_index(trained)
    merge_ondisk(index, parts, os.path.join(out_dir, "merged_index.ivfdata"))
    faiss.write_index(index, os.path.join(out_dir, "populated.index"))


def search(path, queries, k, nprobe):
    index = faiss.read_index(path)
    index.nprobe = nprobe
    q = np.load(queries).astype(np.float32)
    t = time.perf_counter()
    index.search(q, k)
    print(json.dumps({"seconds": time.perf_counter() - t, "queries": len(q)}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "train":
        train(args[0], args[1], int(args[2]), int(args[3]), int(args[4]), args[5])
    elif cmd == "add":
        add(args[0], int(args[1]), args[2], args[3], int(args[4]))
    elif cmd == "merge":
        merge(args[0], args[1], args[2:])
    elif cmd == "search":
        search(args[0], args[1], int(args[2]), int(args[3]))
    else:
        sys.exit("unknown stage " + cmd)
