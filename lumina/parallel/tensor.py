"""Tensor parallel through megatron-core: the LayerFactory the model code is handed under TP > 1.

q/k/v, the MLP's gate and up projections are `ColumnParallelLinear` (output features split),
the attention output and MLP down projections `RowParallelLinear` (input features split, outputs
all-reduced), the embedding and LM head `VocabParallelEmbedding` weights (vocab rows split), and
the loss megatron-core's `vocab_parallel_cross_entropy`. MoE experts are expert-tensor-parallel:
each expert's FFN width is split the same way (see lumina/model/moe.py). Weights are drawn by
lumina.model.init over their full shape, so TP changes no initial value.

megatron-core runs on CPU with gloo when weights are initialised on CPU
(`use_cpu_initialization=True`); we skip its own initialisation and mark each weight for ours.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from lumina.model.init import mark
from lumina.model.layers import LayerFactory


class MegatronTPLayers(LayerFactory):
    def __init__(self, tp_group, params_dtype: torch.dtype = torch.float32):
        import torch.distributed as dist
        from megatron.core import ModelParallelConfig

        self.group = tp_group
        self.tp_size = dist.get_world_size(tp_group)
        self._tp_rank = dist.get_rank(tp_group)
        self.config = ModelParallelConfig(tensor_model_parallel_size=self.tp_size, use_cpu_initialization=True,
                                          perform_initialization=False, params_dtype=params_dtype)

    @property
    def tp_rank(self) -> int:
        return self._tp_rank

    def _mark(self, weight: torch.Tensor, init_std: float, dim: int) -> None:
        mark(weight, init_std, partition_dim=dim, partition_rank=self._tp_rank, partition_size=self.tp_size)

    def column(self, in_features: int, out_features: int, init_std: float) -> nn.Module:
        from megatron.core.tensor_parallel import ColumnParallelLinear

        layer = _output_only(ColumnParallelLinear)(in_features, out_features, config=self.config, init_method=nn.init.zeros_,
                        bias=False, gather_output=False, tp_group=self.group)
        self._mark(layer.weight, init_std, 0)
        return layer

    def row(self, in_features: int, out_features: int, init_std: float) -> nn.Module:
        from megatron.core.tensor_parallel import RowParallelLinear

        layer = _output_only(RowParallelLinear)(in_features, out_features, config=self.config, init_method=nn.init.zeros_, bias=False,
                     input_is_parallel=True, skip_bias_add=False, tp_group=self.group)
        self._mark(layer.weight, init_std, 1)
        return layer

    def embedding(self, num_embeddings: int, dim: int, init_std: float) -> nn.Module:
        from megatron.core.tensor_parallel import VocabParallelEmbedding

        emb = VocabParallelEmbedding(num_embeddings, dim, init_method=nn.init.zeros_, config=self.config,
                                     tp_group=self.group)
        self._mark(emb.weight, init_std, 0)
        return emb

    def tp_copy(self, x: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

        return copy_to_tensor_model_parallel_region(x, group=self.group)

    def tp_reduce(self, x: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

        return reduce_from_tensor_model_parallel_region(x, group=self.group)

    def lm_logits(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Vocab-sharded logits (B, T, V / TP); the hidden state's gradient is all-reduced."""
        return F.linear(self.tp_copy(hidden), weight)

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        return vocab_parallel_cross_entropy(logits.float(), labels).mean()  # uses parallel_state's TP group


@functools.cache
def _output_only(base: type) -> type:
    """megatron's linear layers return (output, bias); the model code wants the output."""

    class OutputOnly(base):
        def forward(self, x):  # noqa: D102 - the base's forward, first element
            return super().forward(x)[0]

    OutputOnly.__name__ = base.__name__
    return OutputOnly
