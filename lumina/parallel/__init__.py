"""Parallel wiring. `layout` places every rank (pure Python, no process group); `dry_run` prints it."""

from lumina.parallel.dry_run import dry_run
from lumina.parallel.layout import (
    ParallelLayout,
    RankCoords,
    add_parallel_args,
    dry_run_world_size,
    layout_from_args,
)

__all__ = ["ParallelLayout", "RankCoords", "add_parallel_args", "dry_run", "dry_run_world_size",
           "layout_from_args"]
