"""ByteGPT: a small GPT-style decoder over UTF-8 bytes, the toolkit's default model.

Pre-LayerNorm blocks, causal self-attention written out by hand (torch 1.13 has no
scaled_dot_product_attention), GELU MLP, learned positional embeddings, output head tied to
the token embedding. forward() returns both the logits and ``ff_input``: the last block's
second LayerNorm output, i.e. the input of its feed-forward block -- the kNN-LM key
(Khandelwal et al., 2020).
"""
import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ByteGPTConfig:
    vocab_size: int = 256
    context: int = 256
    d_model: int = 192  # divisible by 64: the index stores 64-byte PQ codes of the keys
    n_layers: int = 4
    n_heads: int = 6
    d_ff: int = 768

    def save(self, path):
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=2)
            f.write("\n")

    @staticmethod
    def load(path):
        with open(path) as f:
            raw = json.load(f)
        fields = ByteGPTConfig.__dataclass_fields__
        return ByteGPTConfig(**{k: v for k, v in raw.items() if k in fields})


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        # mask: [1, 1, context, context], 1 where key position <= query position
        mask = torch.tril(torch.ones(cfg.context, cfg.context, dtype=torch.bool))
        self.register_buffer("mask", mask.view(1, 1, cfg.context, cfg.context), persistent=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # q, k, v: [b, heads, t, head_dim]
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # [b, h, t, t]
        att = att.masked_fill(~self.mask[:, :, :t, :t], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        ff_input = self.ln2(x)  # [b, t, d_model]: the kNN-LM key for the last block
        x = x + self.fc_out(self.act(self.fc(ff_input)))
        return x, ff_input


class ByteGPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied
        self.apply(self._init)
        # GPT-2 style: scale residual projections by depth
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("fc_out.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # tied weight counted once

    def forward(self, tokens):
        """tokens: [b, t] int64, t <= context -> (logits [b, t, vocab], ff_input [b, t, d])."""
        t = tokens.shape[1]
        pos = torch.arange(t, device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(pos)[None]
        ff_input = None
        for block in self.blocks:
            x, ff_input = block(x)
        logits = self.head(self.ln_f(x))
        return logits, ff_input


def load_model(model_dir):
    """Loads config.json + byte_gpt.pt from a directory into an eval-mode ByteGPT."""
    import os

    cfg = ByteGPTConfig.load(os.path.join(model_dir, "config.json"))
    model = ByteGPT(cfg)
    state = torch.load(os.path.join(model_dir, "byte_gpt.pt"), map_location="cpu")
    model.load_state_dict(state)
    model.eval()
    return model
