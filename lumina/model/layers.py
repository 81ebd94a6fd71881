"""Building blocks shared by every block type: the linear-layer factory, RMSNorm and the RoPE tables
(RoPE itself and SwiGLU's gate are in `lumina.ops.fused`).

Every weight matrix of the attention and MLP comes from a `LayerFactory`, so tensor-parallel
wiring (megatron-core's Column/RowParallelLinear, VocabParallelEmbedding) replaces the plain
torch layers here without the block code changing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lumina.config import ModelConfig
from lumina.model.init import mark
from lumina.ops import fused


class LayerFactory:
    """Plain single-device torch layers. Subclasses swap in parallel ones.

    `column` layers may shard their output features over `tp_size` ranks and `row` layers their
    input features; block code sizes heads and widths by `tp_size` and never looks deeper.
    """

    tp_size: int = 1
    # lumina.parallel.expert.ExpertParallel when the experts are split over ranks (read by MoE).
    expert_parallel = None

    def column(self, in_features: int, out_features: int, init_std: float) -> nn.Module:
        return _linear(in_features, out_features, init_std)

    def row(self, in_features: int, out_features: int, init_std: float) -> nn.Module:
        return _linear(in_features, out_features, init_std)

    def embedding(self, num_embeddings: int, dim: int, init_std: float) -> nn.Module:
        emb = nn.Embedding(num_embeddings, dim)
        nn.init.normal_(emb.weight, mean=0.0, std=init_std)
        mark(emb.weight, init_std)
        return emb

    def tp_copy(self, x: torch.Tensor) -> torch.Tensor:
        """Enter a tensor-parallel region: identity forward, all-reduce of the gradient backward."""
        return x

    def tp_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Leave it: all-reduce of partial sums forward, identity backward."""
        return x

    # Sequence parallel: outside the TP regions each TP rank holds a contiguous shard of the
    # micro-batch's flattened tokens, (B * T / TP, D). Single-device, these hooks are identities.
    sequence_parallel: bool = False

    def sp_gather(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens of the micro-batch, (B * T, D), from this rank's shard, for a computation every
        TP rank then repeats identically (routing): all-gather forward, this rank's slice of the
        (identical) gradient backward."""
        return x

    def sp_split(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's token shard of a (..., D) tensor every TP rank holds whole: slice forward,
        all-gather of the gradient backward."""
        return x

    def sp_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """A replicated weight applied to the token shard (norms): identity forward; its gradient,
        which covers only this rank's tokens, summed over TP backward."""
        return weight

    @property
    def tp_rank(self) -> int:
        return 0

    def lm_logits(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(B, T, D) x (V, D) -> (B, T, V) logits (vocab-sharded under tensor parallel; under
        sequence parallel the token shard goes in and (B * T, V / TP) comes out)."""
        return F.linear(hidden, weight)

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean token loss in fp32; labels equal to -100 are ignored (torch's default ignore_index)."""
        return fused.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def _linear(in_features: int, out_features: int, init_std: float) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=False)
    nn.init.normal_(layer.weight, mean=0.0, std=init_std)
    mark(layer.weight, init_std)
    return layer


def output_init_std(cfg: ModelConfig) -> float:
    """Std for the projections that write into the residual stream: init_std, or with
    cfg.depth_scaled_init the GPT-2 / Megatron-LM depth scaling init_std / sqrt(2 * num_layers)."""
    return cfg.init_std / math.sqrt(2.0 * cfg.num_layers) if cfg.depth_scaled_init else cfg.init_std


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), computed in fp32 (one fused kernel on CPU)."""

    def __init__(self, dim: int, eps: float, layers: LayerFactory | None = None):
        super().__init__()
        self.eps = eps
        self.layers = layers or LayerFactory()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused.rms_norm(x, self.layers.sp_weight(self.weight), self.eps)


def rope_tables(seq_length: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (seq_length, head_dim) for rotate-half RoPE (Su et al. 2021)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_length, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # (T, head_dim)
    return angles.cos(), angles.sin()
