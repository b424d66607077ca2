"""Reference kNN-LM pipeline in Python, for side-by-side benchmarks with the toolkit.

This follows labml's kNN-LM scripts (``labml_nn/transformers/knn/build_index.py`` and
``eval_knn.py``): PyTorch eager forward passes whose ``ff_input`` rows go into ``np.memmap``
arrays, a FAISS ``IndexIVFPQ`` with an ``IndexFlatL2`` quantizer trained on a
``np.random.choice`` sample, ``add_with_ids`` in chunks of 1024 straight from the memmap,
then FAISS search during evaluation. It runs on the SAME tokens (an int ``.npy`` written by
the bench harness from the toolkit's corpus loader) and the SAME weights (``python/model.py``
+ ``models/byte_gpt.pt``) as the toolkit, with the toolkit's window plan (``lib/windows.ts``)
and index-parameter clamping (``planIndex`` in ``lib/build_index.ts``) ported exactly, so the
two build the same datastore and index shape.

Where it departs from labml, it does so to match the toolkit's semantics: the stored keys
are ``.npy`` files (``open_memmap``) with int32 values, windows overlap by
``seq_len - stride`` instead of being disjoint batches, and p_kNN is the softmax of the
negated FAISS (squared L2) distances over k neighbours (the paper's rule) rather than
labml's cosine-similarity vote over 10.

Benchmark reference only: never a runtime dependency of the toolkit. Run it with Debian's
Python (torch 1.13, faiss 1.7.3, numpy)::

    /usr/bin/python3 bench/reference.py build --tokens train.npy --model-dir models \\
        --out /tmp/ref --threads 2 --nlist 1024
    /usr/bin/python3 bench/reference.py eval --tokens test.npy --model-dir models \\
        --out /tmp/ref --threads 2

Each run prints one JSON object on stdout (per-stage seconds and tokens/s); progress and
warnings go to stderr.
"""
import argparse
import json
import math
import os
import platform
import resource
import sys
import time

import faiss
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from model import load_model  # noqa: E402  (python/model.py, the toolkit's model definition)

# FAISS wants at least this many training points per centroid (lib/build_index.ts).
MIN_POINTS_PER_CENTROID = 39


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Window plan: an exact port of planWindows in lib/windows.ts.


class WindowPlan:
    """Windows of ``length`` tokens advancing by ``stride``; each position keyed once.

    Position i is the context ending at token i (value: token i + 1). Window k covers tokens
    [start, end) and produces positions [score_from, end); the last window is pulled back to
    end exactly at the last position so every window has the same length.
    """

    def __init__(self, n_tokens, seq_len, stride):
        if n_tokens < 2:
            raise ValueError(f"a token stream needs at least 2 tokens, found {n_tokens}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be an integer >= 1, found {seq_len}")
        if stride < 1 or stride > seq_len:
            raise ValueError(f"stride must be an integer in 1..seq_len ({seq_len}), found {stride}")
        self.positions = n_tokens - 1
        self.length = min(seq_len, self.positions)
        self.stride = stride
        self.seq_len = seq_len
        if self.positions <= seq_len:
            self.count = 1
        else:
            self.count = -(-(self.positions - seq_len) // stride) + 1  # ceil division

    def _end(self, k):
        if k < 0:
            return 0
        if k == self.count - 1:
            return self.positions
        return min(k * self.stride + self.seq_len, self.positions)

    def at(self, k):
        """(start, end, score_from) of window k."""
        end = self._end(k)
        return end - self.length, end, self._end(k - 1)


def batches(plan, tokens, batch_size):
    """Yields (windows, input) per batch: input is [n_windows, length] int64."""
    for first in range(0, plan.count, batch_size):
        windows = [plan.at(k) for k in range(first, min(first + batch_size, plan.count))]
        x = np.stack([tokens[s:e] for s, e, _ in windows]).astype(np.int64)
        yield windows, torch.from_numpy(x)


# ---------------------------------------------------------------------------------------------
# Index parameters: an exact port of planIndex in lib/build_index.ts (IVFPQ branch).


def plan_index(n, d, nlist, m, nbits, nprobe, train_size):
    warnings = []
    if n < 1:
        raise ValueError("the datastore has no keys to index")
    if train_size > n:
        warnings.append(f"trainSize {train_size} > {n} keys: training on all {n} keys")
        train_size = n
    if d % m != 0:
        raise ValueError(f"m = {m} must divide the key width d = {d}")
    max_nlist = max(1, train_size // MIN_POINTS_PER_CENTROID)
    if nlist > max_nlist:
        warnings.append(f"nlist {nlist} needs >= {nlist * MIN_POINTS_PER_CENTROID} training keys; "
                        f"{train_size} available: using nlist {max_nlist}")
        nlist = max_nlist
    max_bits = max(1, int(math.floor(math.log2(train_size))))
    if nbits > max_bits:
        warnings.append(f"nbits {nbits} needs >= {2 ** nbits} training keys: using nbits {max_bits}")
        nbits = max_bits
    if nprobe > nlist:
        warnings.append(f"nprobe {nprobe} > nlist {nlist}: using nprobe {nlist}")
        nprobe = nlist
    return {
        "factory": f"IVF{nlist},PQ{m}x{nbits}",
        "nlist": nlist,
        "m": m,
        "nbits": nbits,
        "nprobe": nprobe,
        "trainSize": train_size,
    }, warnings


# ---------------------------------------------------------------------------------------------
# Stages


def load_tokens(path):
    # tokens: [n] int32 (any integer .npy, flattened in C order like the toolkit's loader)
    a = np.load(path)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{path}: expected integer token ids, found dtype {a.dtype}")
    return np.ascontiguousarray(a.reshape(-1)).astype(np.int32, copy=False)


def paths(out):
    return {
        "keys": os.path.join(out, "keys.npy"),
        "vals": os.path.join(out, "vals.npy"),
        "trained": os.path.join(out, "faiss.trained.index"),
        "index": os.path.join(out, "faiss.index"),
        "meta": os.path.join(out, "reference.json"),
    }


def check_window(model, plan):
    if plan.length > model.cfg.context:
        raise ValueError(f"seq_len {plan.length} exceeds the model's context {model.cfg.context}")


def gather(args, model, tokens):
    p = paths(args.out)
    plan = WindowPlan(len(tokens), args.seq_len, args.stride)
    check_window(model, plan)
    d = model.cfg.d_model
    n = plan.positions
    t0 = time.perf_counter()
    # keys: [n, d] float32, row i = context ending at token i; vals: [n] int32 = token i + 1
    keys = np.lib.format.open_memmap(p["keys"] + ".tmp", mode="w+", dtype=np.float32, shape=(n, d))
    vals = np.lib.format.open_memmap(p["vals"] + ".tmp", mode="w+", dtype=np.int32, shape=(n,))
    with torch.no_grad():
        for windows, x in batches(plan, tokens, args.batch_size):
            _, ff_input = model(x)  # ff_input: [n_windows, length, d]
            ff = ff_input.numpy()
            for j, (s, e, score_from) in enumerate(windows):
                keys[score_from:e] = ff[j, score_from - s:]
                vals[score_from:e] = tokens[score_from + 1:e + 1]
    keys.flush()
    vals.flush()
    del keys, vals
    os.replace(p["keys"] + ".tmp", p["keys"])
    os.replace(p["vals"] + ".tmp", p["vals"])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rows": n, "dModel": d, "windows": plan.count,
            "tokensPerSecond": n / seconds}


def train(args):
    p = paths(args.out)
    t0 = time.perf_counter()
    keys = np.load(p["keys"], mmap_mode="r")
    n, d = keys.shape
    params, warnings = plan_index(n, d, args.nlist, args.m, args.nbits, args.nprobe,
                                  args.train_size)
    for w in warnings:
        log(f"warning: {w}")
    np.random.seed(args.seed)
    sample = np.random.choice(n, size=params["trainSize"], replace=False)
    x = np.ascontiguousarray(keys[sample])  # [trainSize, d] float32
    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFPQ(quantizer, d, params["nlist"], params["m"], params["nbits"])
    index.train(x)
    faiss.write_index(index, p["trained"] + ".tmp")
    os.replace(p["trained"] + ".tmp", p["trained"])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, **params, "warnings": warnings}


def add(args):
    p = paths(args.out)
    t0 = time.perf_counter()
    keys = np.load(p["keys"], mmap_mode="r")
    n, d = keys.shape
    params, _ = plan_index(n, d, args.nlist, args.m, args.nbits, args.nprobe, args.train_size)
    index = faiss.read_index(p["trained"])
    if index.d != d or index.ntotal != 0:
        raise ValueError(f"{p['trained']}: expected an empty index of dimension {d}")
    for s in range(0, n, args.add_chunk):
        e = min(s + args.add_chunk, n)
        index.add_with_ids(np.ascontiguousarray(keys[s:e]), np.arange(s, e, dtype=np.int64))
    faiss.extract_index_ivf(index).nprobe = params["nprobe"]
    faiss.write_index(index, p["index"] + ".tmp")
    os.replace(p["index"] + ".tmp", p["index"])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "ntotal": int(index.ntotal), "chunk": args.add_chunk}


def knn_log_prob(distances, neighbour_vals, y):
    """log p_kNN(y) per query: log sum_{i: v_i = y} softmax(-d)_i; -inf when no vote.

    distances, neighbour_vals: [nq, k] (vals -1 where FAISS found nothing); y: [nq].
    """
    valid = neighbour_vals >= 0
    s = np.where(valid, -distances.astype(np.float64), -np.inf)
    top = s.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(s - top)
    total = e.sum(axis=1)
    hit = np.where(neighbour_vals == y[:, None], e, 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(hit > 0, np.log(hit / np.where(total > 0, total, 1.0)), -np.inf)


def interpolated_perplexity(lm, knn, lam):
    if lam == 0:
        return float(np.exp(-lm.mean()))
    mixed = np.logaddexp(np.log1p(-lam) + lm, np.log(lam) + knn)
    return float(np.exp(-mixed.mean()))


def evaluate(args, model, tokens):
    p = paths(args.out)
    index = faiss.read_index(p["index"])
    ivf = faiss.extract_index_ivf(index)
    if args.nprobe_eval is not None:
        ivf.nprobe = args.nprobe_eval
    vals_store = np.load(p["vals"], mmap_mode="r")  # [n] int32
    if args.k > index.ntotal:
        raise ValueError(f"k = {args.k} is larger than the datastore ({index.ntotal} keys)")
    plan = WindowPlan(len(tokens), args.seq_len, args.stride)
    check_window(model, plan)
    n = plan.positions
    lm = np.empty(n, dtype=np.float64)
    knn = np.empty(n, dtype=np.float64)
    t0 = time.perf_counter()
    search_seconds = 0.0
    with torch.no_grad():
        for windows, x in batches(plan, tokens, args.batch_size):
            logits, ff_input = model(x)  # [nw, L, V], [nw, L, d]
            logp = torch.log_softmax(logits.double(), dim=-1).numpy()
            ff = ff_input.numpy()
            rows, pos = [], []
            for j, (s, e, score_from) in enumerate(windows):
                positions = np.arange(score_from, e)
                lm[positions] = logp[j, positions - s, tokens[positions + 1]]
                rows.append(ff[j, score_from - s:])
                pos.append(positions)
            queries = np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)  # [nq, d]
            positions = np.concatenate(pos)
            ts = time.perf_counter()
            distances, labels = index.search(queries, args.k)  # [nq, k] each
            search_seconds += time.perf_counter() - ts
            neighbour_vals = np.where(labels >= 0, vals_store[np.maximum(labels, 0)], -1)
            knn[positions] = knn_log_prob(distances, neighbour_vals, tokens[positions + 1])
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "searchSeconds": search_seconds,
        "tokens": n,
        "tokensPerSecond": n / seconds,
        "k": args.k,
        "nprobe": int(ivf.nprobe),
        "lmPerplexity": interpolated_perplexity(lm, knn, 0),
        "perplexity": {str(lam): interpolated_perplexity(lm, knn, lam) for lam in args.lambdas},
        "missRate": float(np.mean(np.isneginf(knn))),
    }


def compare(args):
    """Compares two datastores' keys/vals (e.g. toolkit vs reference) on the same tokens."""
    a = np.load(os.path.join(args.out, "keys.npy"), mmap_mode="r")
    b = np.load(os.path.join(args.other, "keys.npy"), mmap_mode="r")
    va = np.load(os.path.join(args.out, "vals.npy"), mmap_mode="r")
    vb = np.load(os.path.join(args.other, "vals.npy"), mmap_mode="r")
    if a.shape != b.shape or va.shape != vb.shape:
        return {"sameShape": False, "keys": [list(a.shape), list(b.shape)]}
    max_abs, sum_abs = 0.0, 0.0
    for s in range(0, a.shape[0], 65536):
        diff = np.abs(a[s:s + 65536].astype(np.float64) - b[s:s + 65536])
        max_abs = max(max_abs, float(diff.max()))
        sum_abs += float(diff.sum())
    return {
        "sameShape": True,
        "rows": int(a.shape[0]),
        "valsEqual": bool(np.array_equal(va, vb)),
        "keysMaxAbsDiff": max_abs,
        "keysMeanAbsDiff": sum_abs / a.size,
    }


def versions():
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
    }


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=["build", "gather", "train", "add", "eval", "compare"],
                    help="build = gather + train + add in one process")
    ap.add_argument("--tokens", help="int token ids .npy (datastore tokens; eval: held-out)")
    ap.add_argument("--model-dir", default="models", help="config.json + byte_gpt.pt")
    ap.add_argument("--out", required=True, help="datastore directory")
    ap.add_argument("--other", help="compare: the second datastore directory")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--stride", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="0: all cores")
    ap.add_argument("--nlist", type=int, default=2048)
    ap.add_argument("--m", type=int, default=64)
    ap.add_argument("--nbits", type=int, default=8)
    ap.add_argument("--nprobe", type=int, default=8)
    ap.add_argument("--nprobe-eval", type=int, default=None, help="eval: override nprobe")
    ap.add_argument("--train-size", type=int, default=200_000)
    ap.add_argument("--add-chunk", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--lambdas", type=lambda s: [float(x) for x in s.split(",")], default=[0.25])
    return ap.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    t_start = time.perf_counter()
    threads = args.threads if args.threads > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    result = {"stage": args.stage, "threads": threads, "versions": versions()}
    if args.stage == "compare":
        result["compare"] = compare(args)
    else:
        os.makedirs(args.out, exist_ok=True)
        needs_model = args.stage in ("build", "gather", "eval")
        if needs_model:
            t0 = time.perf_counter()
            model = load_model(args.model_dir)
            tokens = load_tokens(args.tokens)
            result["loadSeconds"] = time.perf_counter() - t0
            result["nTokens"] = int(len(tokens))
        if args.stage in ("build", "gather"):
            result["gather"] = gather(args, model, tokens)
            log(f"gather: {result['gather']['seconds']:.2f} s")
        if args.stage in ("build", "train"):
            result["train"] = train(args)
            log(f"train: {result['train']['seconds']:.2f} s ({result['train']['factory']})")
        if args.stage in ("build", "add"):
            result["add"] = add(args)
            log(f"add: {result['add']['seconds']:.2f} s")
        if args.stage == "eval":
            result["eval"] = evaluate(args, model, tokens)
            log(f"eval: {result['eval']['seconds']:.2f} s")
    result["seconds"] = time.perf_counter() - t_start
    # ru_maxrss is KiB on Linux; the harness samples /proc itself, this is a cross-check.
    result["maxRssKiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
