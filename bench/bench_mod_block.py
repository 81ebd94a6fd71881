"""MoD speedup on one block at debug_200m width: measured forward+backward time against the
speedup the FLOPs ratio predicts (lumina.accounting). Prints a table; run:

    python bench/bench_mod_block.py [--batch 2] [--seq 1024] [--iters 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from lumina.accounting import layer_forward_flops
from lumina.config import MoDConfig
from lumina.model.block import Block
from lumina.model.layers import LayerFactory, rope_tables
from lumina.model.mod import MoDBlock
from lumina.presets import get_preset


def time_fwd_bwd(layer: torch.nn.Module, x: torch.Tensor, cos, sin, iters: int) -> float:
    for _ in range(2):  # warm-up: allocator and oneDNN primitive caches
        layer(x, cos, sin).sum().backward()
    best = float("inf")
    for _ in range(iters):
        start = time.perf_counter()
        layer(x, cos, sin).sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--capacities", type=float, nargs="+", default=[0.5, 0.125])
    args = parser.parse_args()

    torch.manual_seed(0)
    base = get_preset("debug_200m", "dense").replace(num_layers=1)
    cos, sin = (t[None] for t in rope_tables(args.seq, base.head_dim, base.rope_theta))
    x = torch.randn(args.batch, args.seq, base.hidden_size, requires_grad=True)
    dense_block = Block(base, LayerFactory())
    dense_time = time_fwd_bwd(dense_block, x, cos, sin, args.iters)
    dense_flops = layer_forward_flops(base, 0, args.seq, None)
    print(f"threads={torch.get_num_threads()} batch={args.batch} seq={args.seq} d={base.hidden_size} "
          f"(best of {args.iters} fwd+bwd)")
    print(f"{'block':<14}{'time ms':>10}{'measured x':>12}{'FLOPs x':>10}{'of FLOPs x':>12}")
    print(f"{'dense':<14}{dense_time * 1e3:>10.1f}{1.0:>12.2f}{1.0:>10.2f}{'':>12}")
    for capacity in args.capacities:
        cfg = base.replace(mod=MoDConfig(capacity=capacity, layer_pattern="all"))
        layer = MoDBlock(cfg, Block(cfg, LayerFactory()))
        layer.block.load_state_dict(dense_block.state_dict())
        t = time_fwd_bwd(layer, x, cos, sin, args.iters)
        measured = dense_time / t
        predicted = dense_flops / layer_forward_flops(cfg, 0, args.seq, None)
        print(f"{'MoD c=' + str(capacity):<14}{t * 1e3:>10.1f}{measured:>12.2f}{predicted:>10.2f}"
              f"{measured / predicted:>11.0%}")


if __name__ == "__main__":
    main()
