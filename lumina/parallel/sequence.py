"""megatron-core's sequence-parallel code path on a machine without CUDA.

megatron-core 0.16.1 allocates the outputs of its sequence-parallel collectives on
`torch.cuda.current_device()`:

- `GlobalMemoryBuffer.get_tensor` (parallel_state's "mpu" buffer): the all-gathered input of a
  column-parallel linear, forward and backward (`LinearWithGradAccumulationAndAsyncCommunication`);
- `tensor_parallel.mappings._gather_along_first_dim` / `_reduce_scatter_along_first_dim` without
  the buffer: the scatter, gather and reduce-scatter to and from the sequence-parallel region (the
  embedding's reduce-scatter, a row-parallel linear's output, and their backward);
- the reduce-scattered input gradient in `LinearWithGradAccumulationAndAsyncCommunication.backward`.

Where CUDA is absent, `allocate_on_cpu` installs a buffer that allocates on the CPU and gives those
two modules a `torch` whose `cuda.current_device()` is the CPU. The layers, their autograd
functions and the collectives stay megatron's own, so a CPU test runs the code a GPU runs. The rest
of that path is device-neutral: `gradient_accumulation_fusion` stays False (apex's CUDA kernel),
and the async all-gather / reduce-scatter handles work under gloo.
"""

from __future__ import annotations

import math

import torch


class _CudaOnCPU:
    """torch.cuda, except that current_device() is the CPU."""

    @staticmethod
    def current_device() -> torch.device:
        return torch.device("cpu")

    def __getattr__(self, name: str):
        return getattr(torch.cuda, name)


class _TorchOnCPU:
    """The torch module as megatron's tensor_parallel code sees it on a CPU-only machine."""

    cuda = _CudaOnCPU()

    def __getattr__(self, name: str):
        return getattr(torch, name)


def allocate_on_cpu() -> None:
    """Make megatron's sequence-parallel collectives allocate on the CPU when CUDA is absent (a
    no-op with CUDA). Call after megatron's groups exist: they create the buffer replaced here."""
    if torch.cuda.is_available():
        return
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import layers, mappings
    from megatron.core.utils import GlobalMemoryBuffer

    class CPUMemoryBuffer(GlobalMemoryBuffer):
        """megatron's reusable buffer per (name, dtype), on the CPU."""

        def get_tensor(self, tensor_shape, dtype, name, mem_alloc_context=None):
            n = math.prod(tensor_shape)
            buffer = self.buffer.get((name, dtype))
            if buffer is None or buffer.numel() < n:
                buffer = self.buffer[(name, dtype)] = torch.empty(n, dtype=dtype)
            return buffer[:n].view(*tensor_shape)

    parallel_state._GLOBAL_MEMORY_BUFFER = CPUMemoryBuffer()
    layers.torch = mappings.torch = _TorchOnCPU()
