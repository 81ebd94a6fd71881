"""Tensor parallel through megatron-core: the LayerFactory the model code is handed under TP > 1.

q/k/v, the MLP's gate and up projections are `ColumnParallelLinear` (output features split),
the attention output and MLP down projections `RowParallelLinear` (input features split, outputs
all-reduced), the embedding and LM head `VocabParallelEmbedding` weights (vocab rows split), and
the loss megatron-core's `vocab_parallel_cross_entropy`. MoE experts are expert-tensor-parallel:
each expert's FFN width is split the same way (see lumina/model/moe.py). Weights are drawn by
lumina.model.init over their full shape, so TP changes no initial value.

megatron-core runs on CPU with gloo when weights are initialised on CPU
(`use_cpu_initialization=True`); we skip its own initialisation and mark each weight for ours.

Sequence parallel (`sequence_parallel=True`, megatron's `ModelParallelConfig.sequence_parallel`):
outside the TP regions each rank keeps a contiguous shard of the micro-batch's flattened tokens,
(B * T / TP, D). megatron's layers gather and scatter along the first dimension (its activations
are [s, b, h]); flattening (B, T) makes our first dimension the tokens in order, so a shard is a
run of whole or partial sequences and a gather restores (B, T, D) by a view, with no transpose.
With one sequence per micro-batch (the b300 scripts: micro-batch 1, TP 8) it is exactly a split
of the sequence. The embedding reduce-scatters into the shard, the column layers all-gather it,
the row layers reduce-scatter back to it, and the LM head takes it like a column layer.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from lumina.model.init import mark
from lumina.model.layers import LayerFactory


class MegatronTPLayers(LayerFactory):
    def __init__(self, tp_group, params_dtype: torch.dtype = torch.float32, sequence_parallel: bool = False):
        import torch.distributed as dist
        from megatron.core import ModelParallelConfig

        self.group = tp_group
        self.tp_size = dist.get_world_size(tp_group)
        self._tp_rank = dist.get_rank(tp_group)
        self.sequence_parallel = sequence_parallel
        # gradient_accumulation_fusion stays False (its default): it needs apex's CUDA kernel.
        self.config = ModelParallelConfig(tensor_model_parallel_size=self.tp_size, use_cpu_initialization=True,
                                          perform_initialization=False, params_dtype=params_dtype,
                                          sequence_parallel=sequence_parallel)

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

        cls = _token_shard(VocabParallelEmbedding) if self.sequence_parallel else VocabParallelEmbedding
        emb = cls(num_embeddings, dim, init_method=nn.init.zeros_, config=self.config, tp_group=self.group,
                  reduce_scatter_embeddings=self.sequence_parallel)
        self._mark(emb.weight, init_std, 0)
        return emb

    def tp_copy(self, x: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

        return copy_to_tensor_model_parallel_region(x, group=self.group)

    def tp_reduce(self, x: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

        return reduce_from_tensor_model_parallel_region(x, group=self.group)

    def sp_gather(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sequence_parallel:
            return x
        from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

        return gather_from_sequence_parallel_region(x.reshape(-1, x.shape[-1]), tensor_parallel_output_grad=False,
                                                    group=self.group)

    def sp_split(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sequence_parallel:
            return x
        from megatron.core.tensor_parallel import scatter_to_sequence_parallel_region

        return scatter_to_sequence_parallel_region(x.reshape(-1, x.shape[-1]), group=self.group)

    def sp_weight(self, weight: torch.Tensor) -> torch.Tensor:
        return self.tp_copy(weight) if self.sequence_parallel else weight

    def lm_logits(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Vocab-sharded logits (B, T, V / TP); the hidden state's gradient is all-reduced. Under
        sequence parallel the token shard is all-gathered first (megatron's column-parallel
        linear, as its own output layer does) and the logits are (B * T, V / TP)."""
        if not self.sequence_parallel:
            return F.linear(self.tp_copy(hidden), weight)
        from megatron.core.tensor_parallel import linear_with_grad_accumulation_and_async_allreduce

        return linear_with_grad_accumulation_and_async_allreduce(
            hidden, weight, None, gradient_accumulation_fusion=False, allreduce_dgrad=False,
            sequence_parallel=True, tp_group=self.group)

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        logits = logits.float().view(*labels.shape, logits.shape[-1])  # (B * T, V / TP) under sequence parallel
        return vocab_parallel_cross_entropy(logits, labels).mean()  # uses parallel_state's TP group


@functools.cache
def _token_shard(base: type) -> type:
    """A VocabParallelEmbedding built with reduce_scatter_embeddings=True transposes its output
    [b, s, h] to [s, b, h] and reduce-scatters the first dimension. Looking up the (B, T) ids as
    one sequence (1, B * T) makes that the flattened tokens: out comes this rank's (B * T / TP, D)."""

    class TokenShard(base):
        def forward(self, input_ids):  # noqa: D102
            return super().forward(input_ids.reshape(1, -1)).squeeze(1)

    TokenShard.__name__ = base.__name__
    return TokenShard


@functools.cache
def _output_only(base: type) -> type:
    """megatron's linear layers return (output, bias); the model code wants the output."""

    class OutputOnly(base):
        def forward(self, x):  # noqa: D102 - the base's forward, first element
            return super().forward(x)[0]

    OutputOnly.__name__ = base.__name__
    return OutputOnly
