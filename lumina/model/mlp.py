"""SwiGLU feed-forward (Shazeer 2020), bias-free."""

from __future__ import annotations

import torch
from torch import nn

from lumina.config import ModelConfig
from lumina.model.layers import LayerFactory, output_init_std
from lumina.ops import fused


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig, layers: LayerFactory):
        super().__init__()
        d, f = cfg.hidden_size, cfg.ffn_hidden_size
        if f % layers.tp_size:
            raise ValueError(f"tensor parallel size {layers.tp_size} must divide ffn_hidden_size={f}")
        self.w_gate = layers.column(d, f, cfg.init_std)
        self.w_up = layers.column(d, f, cfg.init_std)
        self.w_down = layers.row(f, d, output_init_std(cfg))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(fused.swiglu(self.w_gate(x), self.w_up(x)))
