"""Causal grouped-query self-attention (lumina.ops.fused.causal_attention: a C++ kernel on CPU, torch's
scaled_dot_product_attention elsewhere)."""

from __future__ import annotations

import torch
from torch import nn

from lumina.config import ModelConfig
from lumina.model.layers import LayerFactory, output_init_std
from lumina.ops.fused import apply_rope, causal_attention


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layers: LayerFactory):
        super().__init__()
        tp = layers.tp_size
        if cfg.num_heads % tp or cfg.num_kv_heads % tp:
            raise ValueError(
                f"tensor parallel size {tp} must divide num_heads={cfg.num_heads} "
                f"and num_kv_heads={cfg.num_kv_heads}")
        self.head_dim = cfg.head_dim
        self.local_heads = cfg.num_heads // tp
        self.local_kv_heads = cfg.num_kv_heads // tp
        d, hd = cfg.hidden_size, cfg.head_dim
        # Separate q/k/v projections shard cleanly by heads under tensor parallel.
        self.wq = layers.column(d, cfg.num_heads * hd, cfg.init_std)
        self.wk = layers.column(d, cfg.num_kv_heads * hd, cfg.init_std)
        self.wv = layers.column(d, cfg.num_kv_heads * hd, cfg.init_std)
        self.wo = layers.row(cfg.num_heads * hd, d, output_init_std(cfg))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D), or under sequence parallel a (B * T / TP, D) token shard that the q/k/v
        projections all-gather; cos/sin: (B or 1, T, hd). T may be a MoD-selected subset."""
        T, hd = cos.shape[-2], self.head_dim
        q = self.wq(x).view(-1, T, self.local_heads, hd).transpose(1, 2)      # (B, H, T, hd)
        k = self.wk(x).view(-1, T, self.local_kv_heads, hd).transpose(1, 2)
        v = self.wv(x).view(-1, T, self.local_kv_heads, hd).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        out = causal_attention(q, k, v)
        # Tokens flattened: under sequence parallel wo reduce-scatters them back to the shard.
        return self.wo(out.transpose(1, 2).reshape(-1, self.local_heads * hd)).view_as(x)
