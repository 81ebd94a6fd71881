"""Process groups for a ParallelLayout: megatron-core's parallel_state and the mpu DeepSpeed expects.

megatron's `initialize_model_parallel` builds the TP, PP, DP and expert groups with the same rank
order as ParallelLayout (tests/parallel checks the rank lists against megatron's RankGenerator),
so both libraries and Lumina agree on every rank's coordinates. DeepSpeed is handed an adapter:
it asks for "model parallel" groups under names megatron no longer has.
"""

from __future__ import annotations

from lumina.parallel.layout import ParallelLayout


def initialize(layout: ParallelLayout) -> None:
    """Create megatron's groups (a no-op for a pure data-parallel layout)."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        return
    ps.initialize_model_parallel(tensor_model_parallel_size=layout.tp,
                                 pipeline_model_parallel_size=layout.pp,
                                 expert_model_parallel_size=layout.ep)


def tp_group():
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_group()


class DeepSpeedMPU:
    """The `mpu` interface DeepSpeed calls, mapped onto megatron-core's parallel_state."""

    def __init__(self) -> None:
        from megatron.core import parallel_state as ps

        self.ps = ps

    def get_model_parallel_rank(self) -> int:
        return self.ps.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        return self.ps.get_tensor_model_parallel_world_size()

    def get_model_parallel_group(self):
        return self.ps.get_tensor_model_parallel_group()

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_data_parallel_rank(self) -> int:
        return self.ps.get_data_parallel_rank()

    def get_data_parallel_world_size(self) -> int:
        return self.ps.get_data_parallel_world_size()

    def get_data_parallel_group(self):
        return self.ps.get_data_parallel_group()

    def get_pipeline_model_parallel_rank(self) -> int:
        return self.ps.get_pipeline_model_parallel_rank()

    def get_pipeline_model_parallel_world_size(self) -> int:
        return self.ps.get_pipeline_model_parallel_world_size()

    def get_pipeline_model_parallel_group(self):
        return self.ps.get_pipeline_model_parallel_group()
