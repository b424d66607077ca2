"""Bits per byte of ByteGPT on the Brown splits, against a unigram byte baseline.

    /usr/bin/python3 python/evaluate.py --model models --data data/brown [--json out.json]

Model: sliding window of the full context (256) with stride 128; every window after the
first scores only its last 128 positions (the ones not scored before), so each byte after
the first is predicted once, with at least 128 bytes of context once past the start.
Unigram: byte frequencies of the train split with add-one smoothing over all 256 bytes,
scored on the same positions. Bytes are tokens here, so bits per token = bits per byte.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import load_model  # noqa: E402


def read_bytes(path):
    with open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8)


def windows(n, context, stride):
    """(start, first_scored) pairs: window covers [start, start+context), scores targets
    at absolute positions first_scored..start+context-1 (position p predicted from < p)."""
    out = []
    start = 0
    while True:
        end = min(start + context, n)
        first = 1 if start == 0 else start + context - stride
        out.append((start, end, first))
        if end >= n:
            break
        start += stride
        if start + context > n:  # last window: align to the end, score only the unscored tail
            prev_end = end
            start = max(0, n - context)
            out.append((start, n, prev_end))
            break
    return out


@torch.no_grad()
def model_bpb(model, data, context=256, stride=128, batch=32):
    ids = torch.from_numpy(data.astype(np.int64))
    wins = windows(len(data), context, stride)
    total_nats = 0.0
    scored = 0
    # Group windows of full length into batches; a short final window runs alone.
    i = 0
    while i < len(wins):
        group = [wins[i]]
        length = wins[i][1] - wins[i][0]
        i += 1
        while i < len(wins) and len(group) < batch and wins[i][1] - wins[i][0] == length:
            group.append(wins[i])
            i += 1
        x = torch.stack([ids[s:e] for s, e, _ in group])
        logits, _ = model(x)
        logp = F.log_softmax(logits.float(), dim=-1)  # [b, t, 256]
        for row, (s, e, first) in enumerate(group):
            # logits at local position j predict the byte at absolute position s+j+1
            targets = ids[first:e]
            lp = logp[row, first - s - 1 : e - s - 1].gather(1, targets[:, None])
            total_nats -= lp.sum().item()
            scored += len(targets)
    assert scored == len(data) - 1, (scored, len(data))
    return total_nats / scored / math.log(2), scored


def unigram_bpb(train, data):
    counts = np.bincount(train, minlength=256).astype(np.float64) + 1.0
    logp = np.log2(counts / counts.sum())
    targets = data[1:]  # the same positions the model scores
    return float(-logp[targets].mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="models")
    ap.add_argument("--data", default="data/brown")
    ap.add_argument("--splits", default="valid,test")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    train = read_bytes(os.path.join(args.data, "brown.train.txt"))
    results = {}
    for split in args.splits.split(","):
        data = read_bytes(os.path.join(args.data, f"brown.{split}.txt"))
        t0 = time.time()
        bpb, n = model_bpb(model, data)
        uni = unigram_bpb(train, data)
        results[split] = {
            "bytes": int(len(data)),
            "scored": n,
            "model_bpb": bpb,
            "model_loss_nats": bpb * math.log(2),
            "unigram_bpb": uni,
            "seconds": time.time() - t0,
        }
        print(f"{split}: model {bpb:.4f} bpb  unigram {uni:.4f} bpb  ({n} bytes scored)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
