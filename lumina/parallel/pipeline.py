"""Pipeline parallel: LuminaLM as a DeepSpeed `PipelineModule`.

The spec list is [embedding, block 0 .. block L-1, final norm, head]; stage boundaries come from
`ParallelLayout.spec_parts` (`--pipeline-layers`), so DeepSpeed builds on each stage exactly the
layers the dry run shows. With tied embeddings the head is a `TiedLayerSpec` of the embedding:
the last stage keeps a copy whose gradient DeepSpeed sums with the first stage's.

Between stages the activation is a pair (hidden states, aux): `aux` is the running sum of the
weighted MoE/MoD auxiliary losses of the layers passed so far, so the last stage adds the whole
model's auxiliary loss to the LM loss and the gradient of each router reaches its own stage.
Every parameter is drawn by lumina.model.init under the name it has in LuminaLM, so a pipeline
run starts from the single-process weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lumina.config import ModelConfig
from lumina.model.block import Block
from lumina.model.init import initialize
from lumina.model.layers import LayerFactory, RMSNorm, rope_tables
from lumina.model.mod import MoDBlock
from lumina.model.moe import MoE
from lumina.model.transformer import layer_routing
from lumina.parallel.layout import ParallelLayout


def _name_and_init(module: nn.Module, prefix: str, seed: int) -> None:
    """Give every parameter its LuminaLM name (the key of its initial value), then draw it."""
    for name, p in module.named_parameters():
        p.init_name = prefix + name
    initialize(module, seed)


class EmbeddingStage(nn.Module):
    def __init__(self, cfg: ModelConfig, seed: int, layers: LayerFactory):
        super().__init__()
        self.layers = layers
        self.embed = layers.embedding(cfg.vocab_size, cfg.hidden_size, cfg.init_std)
        _name_and_init(self, "", seed)  # "embed.weight"

    @property
    def weight(self) -> nn.Parameter:  # the attribute TiedLayerSpec ties
        return self.embed.weight

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(input_ids)
        # Start the aux-loss sum connected to the graph: DeepSpeed runs backward on every float
        # tensor a stage sends, and one that does not require grad would fail there.
        return x, (x.sum() * 0.0).reshape(1)


def tied_head(stage: EmbeddingStage, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x, aux = inputs
    return stage.layers.lm_logits(x, stage.weight), aux  # vocab-sharded under TP


class BlockStage(nn.Module):
    """Layer `index` of LuminaLM (dense/MoE block, or a MoD-routed one)."""

    def __init__(self, cfg: ModelConfig, index: int, seed: int, recompute: bool, layers: LayerFactory):
        super().__init__()
        block: nn.Module = Block(cfg, layers)
        self.block = MoDBlock(cfg, block) if index in set(cfg.routed_layers()) else block
        self.index, self.recompute = index, recompute
        cos, sin = rope_tables(cfg.seq_length, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.routed = [m for m in self.block.modules() if isinstance(m, (MoE, MoDBlock))]
        _name_and_init(self.block, f"blocks.{index}.", seed)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, aux = inputs
        # (B, T, D), or under sequence parallel a (B * T / TP, D) token shard of whole training
        # sequences (cfg.seq_length, the length of the rope tables).
        T = x.shape[1] if x.dim() == 3 else self.rope_cos.shape[0]
        cos, sin = self.rope_cos[:T].unsqueeze(0), self.rope_sin[:T].unsqueeze(0)
        if self.recompute and self.training:  # activation checkpointing on blocks only
            x = checkpoint(self.block, x, cos, sin, False, use_reentrant=False)
        else:
            x = self.block(x, cos, sin, False)
        for module in self.routed:
            if module.aux:  # a MoD layer that skipped everything still records its loss
                aux = aux + module.weighted_aux_loss()
        return x, aux


class NormStage(nn.Module):
    def __init__(self, cfg: ModelConfig, layers: LayerFactory | None = None):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, layers)
        for name, p in self.named_parameters():
            p.init_name = name  # "norm.weight", the checkpoint's key (no random init: ones)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, aux = inputs
        return self.norm(x), aux


class HeadStage(nn.Module):
    """Untied output projection."""

    def __init__(self, cfg: ModelConfig, seed: int, layers: LayerFactory):
        super().__init__()
        self.layers = layers
        self.lm_head = layers.embedding(cfg.vocab_size, cfg.hidden_size, cfg.init_std)
        _name_and_init(self, "", seed)  # "lm_head.weight"

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, aux = inputs
        return self.layers.lm_logits(x, self.lm_head.weight), aux


# Specs before and after the transformer layers, for ParallelLayout.spec_parts.
SPECS_BEFORE, SPECS_AFTER = 1, 2


def build(cfg: ModelConfig, layout: ParallelLayout, seed: int, recompute: bool, layers: LayerFactory):
    """The DeepSpeed PipelineModule for `cfg` on `layout` (call after torch.distributed starts and,
    under tensor or expert parallel, after `lumina.parallel.groups.initialize`). `layers` is the
    factory every stage builds its weights with: megatron-core's TP layers under TP > 1."""
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    specs = [TiedLayerSpec("embed", EmbeddingStage, cfg, seed, layers) if cfg.tie_embeddings
             else LayerSpec(EmbeddingStage, cfg, seed, layers)]
    specs += [LayerSpec(BlockStage, cfg, i, seed, recompute, layers) for i in range(cfg.num_layers)]
    specs.append(LayerSpec(NormStage, cfg, layers))
    specs.append(TiedLayerSpec("embed", EmbeddingStage, cfg, seed, layers, forward_fn=tied_head)
                 if cfg.tie_embeddings else LayerSpec(HeadStage, cfg, seed, layers))
    parts = layout.spec_parts(SPECS_BEFORE, SPECS_AFTER)

    class LuminaPipeline(PipelineModule):
        def _partition_layers(self, method: str = "uniform") -> None:
            # Lumina's split (ParallelLayout), not DeepSpeed's: the same one --dry-run prints.
            self.parts = parts
            self._set_bounds(start=parts[self.stage_id], stop=parts[self.stage_id + 1])

        def lm_loss(self, outputs: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
            logits, aux = outputs
            lm = layers.cross_entropy(logits, labels)  # vocab-parallel under TP
            self.lm_losses.append(lm.detach())
            if not self.training:
                return lm
            loss = lm + aux.sum()
            return loss * float("nan") if self.poison_next else loss

        def routing_layers(self) -> list[dict]:
            return [layer_routing(m.index, m.block) for m in self.forward_funcs if isinstance(m, BlockStage)]

    # Axes pipe, data, model (the last fastest): the rank order of ParallelLayout and megatron-core.
    topology = PipeModelDataParallelTopology(num_pp=layout.pp, num_mp=layout.tp, num_dp=layout.dp)
    module = LuminaPipeline(specs, topology=topology, partition_method="lumina")
    check_grid(module._grid, layout)
    module.lm_losses, module.poison_next = [], False
    module.loss_fn = module.lm_loss
    return module


def check_grid(grid, layout: ParallelLayout) -> None:
    """Every rank: DeepSpeed's pipeline grid, megatron-core's parallel_state (when initialised) and
    the layout agree on this rank's coordinates and on its groups (Megatron-DeepSpeed makes the
    same check in its training.py). A disagreement is a bug that would train silently wrong."""
    import torch.distributed as dist

    rank = dist.get_rank()
    c = layout.coords(rank)
    group_of = lambda groups: next(g for g in groups if rank in g)  # noqa: E731
    seen = {"deepspeed": ((grid.get_stage_id(), grid.get_data_parallel_id(), grid.get_slice_parallel_rank()),
                          sorted(grid.pp_group), sorted(grid.dp_group))}
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        seen["megatron-core"] = ((ps.get_pipeline_model_parallel_rank(), ps.get_data_parallel_rank(),
                                  ps.get_tensor_model_parallel_rank()),
                                 dist.get_process_group_ranks(ps.get_pipeline_model_parallel_group()),
                                 dist.get_process_group_ranks(ps.get_data_parallel_group()))
    want = ((c.pp, c.dp, c.tp), group_of(layout.pp_groups()), group_of(layout.dp_groups()))
    for who, got in seen.items():
        if (got[0], sorted(got[1]), sorted(got[2])) != want:
            raise RuntimeError(f"rank {rank}: {who} places this rank at (pp, dp, tp) {got[0]} with pipeline "
                               f"group {got[1]} and data-parallel group {got[2]}, but the layout says {want[0]}, "
                               f"{want[1]}, {want[2]}; this is a bug")
