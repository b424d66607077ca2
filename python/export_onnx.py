"""Exports ByteGPT to ONNX and writes the golden fixtures the Deno test compares against.

    /usr/bin/python3 python/export_onnx.py --model models --out models/byte_gpt.onnx \
        --golden tests/fixtures
    /usr/bin/python3 python/export_onnx.py --model models --out /tmp/byte_gpt_nokey.onnx \
        --no-key-output

Graph contract: input `tokens` int64 [batch, seq] (both dynamic, seq <= 256); outputs
`logits` float32 [batch, seq, 256] and `ff_input` float32 [batch, seq, d_model] (the last
block's pre-FFN LayerNorm output). With --no-key-output only `logits` is an output and the
script prints the name of the intermediate tensor that carries ff_input, so a pipeline can
expose it by name.
"""
import argparse
import os
import sys

import numpy as np
import onnx
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import load_model  # noqa: E402

# Golden input: the bytes of this sentence (64 bytes, ASCII).
GOLDEN_TEXT = "The jury said it found the court had been conducted fairly, too."


class LogitsOnly(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return self.model(tokens)[0]


def key_tensor_name(onnx_model):
    """Name of the LayerNormalization output that feeds the last block's first MLP MatMul.

    Found structurally: the last block's fc MatMul consumes it; ln_f comes after it."""
    g = onnx_model.graph
    ln_nodes = [n for n in g.node if n.op_type == "LayerNormalization"]
    if len(ln_nodes) < 2:
        raise RuntimeError("expected LayerNormalization nodes (export with opset >= 17)")
    # Order of LayerNorms in a pre-LN GPT: ln1, ln2 per block, then ln_f.
    candidate = ln_nodes[-2].output[0]
    consumers = [n for n in g.node if candidate in n.input]
    if not any(n.op_type in ("MatMul", "Gemm") for n in consumers):
        raise RuntimeError(f"{candidate} does not feed a MatMul; graph layout changed")
    return candidate


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="models", help="dir with config.json + byte_gpt.pt")
    ap.add_argument("--out", default="models/byte_gpt.onnx")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--no-key-output", action="store_true", help="only `logits` as output")
    ap.add_argument("--golden", help="dir to write model_golden_{tokens,logits,ff_input}.npy")
    args = ap.parse_args()
    torch.set_num_threads(2)

    model = load_model(args.model)
    dummy = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    if args.no_key_output:
        module, outputs = LogitsOnly(model), ["logits"]
    else:
        module, outputs = model, ["logits", "ff_input"]
    axes = {"tokens": {0: "batch", 1: "seq"}}
    for name in outputs:
        axes[name] = {0: "batch", 1: "seq"}
    tmp = args.out + ".tmp"
    torch.onnx.export(
        module,
        (dummy,),
        tmp,
        input_names=["tokens"],
        output_names=outputs,
        dynamic_axes=axes,
        opset_version=args.opset,
        do_constant_folding=True,
    )
    m = onnx.load(tmp)
    onnx.checker.check_model(m)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, opset {args.opset})")
    print(f"key tensor (last block's pre-FFN LayerNorm output): {key_tensor_name(m)}")

    if args.golden:
        os.makedirs(args.golden, exist_ok=True)
        ids = np.frombuffer(GOLDEN_TEXT.encode("utf-8"), dtype=np.uint8).astype(np.int32)
        with torch.no_grad():
            logits, ff_input = model(torch.from_numpy(ids.astype(np.int64))[None])
        for name, arr in [
            ("tokens", ids[None]),
            ("logits", logits.numpy().astype(np.float32)),
            ("ff_input", ff_input.numpy().astype(np.float32)),
        ]:
            path = os.path.join(args.golden, f"model_golden_{name}.npy")
            np.save(path, arr)
            print(f"wrote {path} {arr.dtype} {list(arr.shape)}")


if __name__ == "__main__":
    main()
