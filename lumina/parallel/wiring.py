"""The process groups and layer factory of one rank, built from its ParallelLayout.

One place decides, for every combination of TP, PP, EP and DP, which groups exist and which
libraries own them:

- megatron-core's `parallel_state` holds the TP, PP, DP and expert groups whenever TP or EP is
  above 1 (its TP layers and vocab-parallel loss read them);
- DeepSpeed's expert groups (`ep_size_<E>`) are built from megatron's through the `mpu` adapter,
  per pipeline stage, so the ZeRO optimizer reduces expert gradients over expert data parallel;
- under pipeline parallel DeepSpeed's `PipelineModule` builds its own grid from the same rank
  order, and `lumina.parallel.pipeline.check_grid` checks it on every rank against the layout
  and megatron; `deepspeed.initialize` then takes no `mpu` (the grid is the mpu there).
Each builder checks its groups against the layout's lists, so the three never silently disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from lumina.model.layers import LayerFactory
from lumina.parallel.layout import ParallelLayout


@dataclass
class Wiring:
    layers: LayerFactory
    """The factory the model builds its weights with (megatron-core TP layers under TP > 1)."""
    mpu: object | None
    """What `deepspeed.initialize(mpu=...)` gets: the adapter under TP or EP without PP, else None."""
    ep: object | None
    """lumina.parallel.expert.ExpertParallel under EP > 1."""
    tp_group: object | None
    """The tensor-parallel process group under TP > 1."""


def wire(layout: ParallelLayout, sequence_parallel: bool = False) -> Wiring:
    """Create this rank's groups (collective: every rank calls it in the same order).
    `sequence_parallel` (TP > 1 only) splits the activations outside the TP regions over TP."""
    layers, adapter, ep, tp_group = LayerFactory(), None, None, None
    if layout.tp > 1 or layout.ep > 1:
        from lumina.parallel import groups

        groups.initialize(layout)
        adapter = groups.DeepSpeedMPU()
        if layout.tp > 1:
            from lumina.parallel.tensor import MegatronTPLayers

            tp_group = groups.tp_group()
            layers = MegatronTPLayers(tp_group, sequence_parallel=sequence_parallel)
            if sequence_parallel:
                from lumina.parallel.sequence import allocate_on_cpu

                allocate_on_cpu()
    if layout.ep > 1:
        from lumina.parallel.expert import create_groups

        ep = layers.expert_parallel = create_groups(layout, adapter)
    mpu = adapter if layout.pp == 1 and layout.tp > 1 else None
    return Wiring(layers=layers, mpu=mpu, ep=ep, tp_group=tp_group)
