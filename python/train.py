"""Trains ByteGPT on the Brown train split (bytes of data/brown/brown.train.txt).

Reproduce the shipped model (CPU, 2 threads):

    deno run --allow-read --allow-write tasks/export_corpus.ts data/brown
    /usr/bin/python3 python/train.py --data data/brown --out models/

Deterministic: seeded torch/numpy/random, batches drawn from a seeded numpy RandomState, so
the same flags give the same data order. Writes byte_gpt.pt (state_dict), config.json and
train_log.json (per-step losses, timings, final numbers) to --out.
"""
import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import ByteGPT, ByteGPTConfig  # noqa: E402


def read_bytes(path):
    with open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8)


def get_batch(data, rng, batch, context):
    """Random windows: x [batch, context] int64, y = x shifted by one."""
    starts = rng.randint(0, len(data) - context - 1, size=batch)
    x = np.stack([data[s : s + context] for s in starts]).astype(np.int64)
    y = np.stack([data[s + 1 : s + context + 1] for s in starts]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


@torch.no_grad()
def eval_loss(model, batches):
    model.eval()
    total = 0.0
    for x, y in batches:
        logits, _ = model(x)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
    model.train()
    return total / len(batches)


def lr_at(step, steps, warmup, lr, min_lr):
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="data/brown", help="dir with brown.{train,valid}.txt")
    ap.add_argument("--out", default="models", help="output dir")
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--d-model", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--eval-batches", type=int, default=8)
    args = ap.parse_args()

    if args.d_model % 64 != 0:
        ap.error("--d-model must be divisible by 64 (the index uses 64-byte PQ codes)")
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    cfg = ByteGPTConfig(
        d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, d_ff=4 * args.d_model
    )
    model = ByteGPT(cfg)
    n_params = model.num_params()
    train = read_bytes(os.path.join(args.data, "brown.train.txt"))
    valid = read_bytes(os.path.join(args.data, "brown.valid.txt"))
    print(f"params {n_params}  train bytes {len(train)}  valid bytes {len(valid)}", flush=True)

    # Fixed validation batches (own RNG) so valid losses are comparable across steps.
    vrng = np.random.RandomState(args.seed + 1)
    valid_batches = [get_batch(valid, vrng, args.batch, cfg.context) for _ in range(args.eval_batches)]

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.95),
    )

    os.makedirs(args.out, exist_ok=True)
    rng = np.random.RandomState(args.seed)
    log = {"args": vars(args), "params": n_params, "steps": [], "evals": []}
    model.train()
    t0 = time.time()
    smooth = None
    for step in range(args.steps):
        lr = lr_at(step, args.steps, args.warmup, args.lr, args.min_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch(train, rng, args.batch, cfg.context)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        li = loss.item()
        smooth = li if smooth is None else 0.95 * smooth + 0.05 * li
        log["steps"].append(li)
        if step % 10 == 0 or step == args.steps - 1:
            el = time.time() - t0
            print(
                f"step {step:5d}  loss {li:.4f}  smooth {smooth:.4f}  lr {lr:.2e}  "
                f"{el:7.1f}s  {el / (step + 1):.2f}s/step",
                flush=True,
            )
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            vl = eval_loss(model, valid_batches)
            log["evals"].append({"step": step + 1, "train_smooth": smooth, "valid": vl})
            print(f"eval step {step + 1}  train(smooth) {smooth:.4f}  valid {vl:.4f}", flush=True)
            tmp = os.path.join(args.out, "byte_gpt.pt.tmp")
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, os.path.join(args.out, "byte_gpt.pt"))

    elapsed = time.time() - t0
    cfg.save(os.path.join(args.out, "config.json"))
    log["train_seconds"] = elapsed
    log["final_train_loss_smooth"] = smooth
    log["final_train_loss_last10"] = float(np.mean(log["steps"][-10:]))
    log["final_valid_loss"] = log["evals"][-1]["valid"]
    log["torch_version"] = torch.__version__
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump(log, f)
    print(f"done in {elapsed:.1f}s", flush=True)


if __name__ == "__main__":
    main()
