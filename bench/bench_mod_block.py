"""MoD speedup on one block at debug_200m width: measured forward+backward time against the
speedup the FLOPs ratio predicts (lumina.accounting). Prints a table; run:

    python bench/bench_mod_block.py [--batch 2] [--seq 1024] [--iters 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lumina.accounting import layer_forward_flops
from lumina.config import MoDConfig
from lumina.model.block import Block
from lumina.model.layers import LayerFactory, rope_tables
from lumina.model.mod import MoDBlock
from lumina.presets import get_preset


def time_once(layer: torch.nn.Module, x: torch.Tensor, cos, sin) -> float:
    start = time.perf_counter()
    layer(x, cos, sin).sum().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--capacities", type=float, nargs="+", default=[0.5, 0.125])
    args = parser.parse_args()

    torch.manual_seed(0)
    base = get_preset("debug_200m", "dense").replace(num_layers=1)
    cos, sin = (t[None] for t in rope_tables(args.seq, base.head_dim, base.rope_theta))
    x = torch.randn(args.batch, args.seq, base.hidden_size, requires_grad=True)
    dense_block = Block(base, LayerFactory())
    layers = {"dense": dense_block}
    predicted = {"dense": 1.0}
    dense_flops = layer_forward_flops(base, 0, args.seq, None)
    for capacity in args.capacities:
        cfg = base.replace(mod=MoDConfig(capacity=capacity, layer_pattern="all"))
        layer = MoDBlock(cfg, Block(cfg, LayerFactory()))
        layer.block.load_state_dict(dense_block.state_dict())
        layers[f"MoD c={capacity}"] = layer
        predicted[f"MoD c={capacity}"] = dense_flops / layer_forward_flops(cfg, 0, args.seq, None)
    for layer in layers.values():  # warm-up: allocator and oneDNN primitive caches
        time_once(layer, x, cos, sin)
    # Interleaved rounds: every round times each block once, so a slow spell of the machine hits
    # all of them; the speedup is the median of the per-round ratios.
    times: dict[str, list[float]] = {name: [] for name in layers}
    for _ in range(args.iters):
        for name, layer in layers.items():
            times[name].append(time_once(layer, x, cos, sin))
    print(f"threads={torch.get_num_threads()} batch={args.batch} seq={args.seq} d={base.hidden_size} "
          f"({args.iters} interleaved rounds of fwd+bwd; median per-round speedup)")
    print(f"{'block':<14}{'median ms':>10}{'measured x':>12}{'FLOPs x':>10}{'of FLOPs x':>12}")
    for name in layers:
        ratios = [d / t for d, t in zip(times["dense"], times[name])]
        measured = statistics.median(ratios)
        share = "" if name == "dense" else f"{measured / predicted[name]:>11.0%}"
        print(f"{name:<14}{statistics.median(times[name]) * 1e3:>10.1f}{measured:>12.2f}"
              f"{predicted[name]:>10.2f}{share}")


if __name__ == "__main__":
    main()
