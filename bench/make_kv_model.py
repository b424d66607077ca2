"""A GPT-2-layout decoder with past, big enough to time the KV-cached gather (bench/kv_gather.ts).

    /usr/bin/python3 bench/make_kv_model.py OUT.onnx

d_model 256, 4 layers, 4 heads, vocab 1024, a position table of 1024, random (seeded)
weights; the layout and export are tests/fixtures/make_hf_models.py's gpt2_with_past.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "fixtures"))
import make_hf_models as m  # noqa: E402

m.CTX = 1024
LAYERS, HEADS, D = 4, 4, 256


def main(out):
    torch.manual_seed(12)
    gpt2 = m.GPT2LMHeadModel(vocab=1024, d=D, layers=LAYERS, heads=HEADS).eval()
    m.round_weights_fp16(gpt2)
    ids = torch.randint(0, 1024, (2, 8))
    pos = torch.arange(8).expand(2, 8) + 3
    io = ["input_ids", "attention_mask", "position_ids"]
    past = tuple(torch.randn(2, HEADS, 3, D // HEADS) for _ in range(2 * LAYERS))
    dyn = {"input_ids": {0: "batch", 1: "sequence_length"},
           "position_ids": {0: "batch", 1: "sequence_length"},
           "logits": {0: "batch", 1: "sequence_length"},
           "attention_mask": {0: "batch", 1: "past_sequence_length + sequence_length"}}
    dyn.update({p: {0: "batch", 2: "past_sequence_length"} for p in m.past_names(LAYERS)})
    dyn.update({p: {0: "batch", 2: "past_sequence_length + sequence_length"}
                for p in m.present_names(LAYERS)})
    m.export(m.GPT2WithPast(gpt2), (ids, torch.ones(2, 11, dtype=torch.long), pos, *past), out,
             io + m.past_names(LAYERS), ["logits"] + m.present_names(LAYERS), dyn, 17)


if __name__ == "__main__":
    main(sys.argv[1])
