"""A pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(.)). The MLP is dense or MoE."""

from __future__ import annotations

import torch
from torch import nn

from lumina.config import ModelConfig
from lumina.model.attention import Attention
from lumina.model.layers import LayerFactory, RMSNorm
from lumina.model.mlp import SwiGLU
from lumina.model.moe import MoE


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layers: LayerFactory):
        super().__init__()
        self.layers = layers  # read by MoDBlock, which routes around this block
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, layers)
        self.attn = Attention(cfg, layers)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, layers)
        self.mlp: nn.Module = MoE(cfg, layers) if cfg.moe is not None else SwiGLU(cfg, layers)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                causal: bool = False) -> torch.Tensor:
        """causal=True: every routing decision depends only on the past (MoE runs dropless).
        x is (B, T, D), or under sequence parallel this rank's (B * T / TP, D) token shard."""
        x = x + self.attn(self.attn_norm(x), cos, sin)        # (B, T, D)
        h = self.mlp_norm(x)
        return x + (self.mlp(h, causal) if isinstance(self.mlp, MoE) else self.mlp(h))
