"""Rank placement, group membership, validation and pipeline splits of lumina.parallel.layout.

Group lists are checked three ways: against a 48-rank layout worked out by hand, against
megatron-core's RankGenerator, and against DeepSpeed's own group builders. The upstream code
is run from the installed sources (see `_load_upstream`) so these tests take no process group
and do not pay the ~10 s import of megatron.core.
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import importlib.util
import itertools
import math
import os
import random
import subprocess
import sys
import typing

import pytest

from lumina.config import ModelConfig
from lumina.parallel.layout import (
    ParallelLayout,
    add_parallel_args,
    balanced_split,
    dry_run_world_size,
    layout_from_args,
    split_layers,
    uniform_split,
)
from lumina.presets import get_preset


def _package_dir(name: str) -> str:
    # find_spec on a top-level name locates the package without importing it.
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
    return next(iter(spec.submodule_search_locations))


def _load_upstream(path: str, names: tuple[str, ...], namespace: dict) -> dict:
    """Execute only the named top-level functions/classes of an installed source file.

    Importing megatron.core costs ~10 s of CPU and deepspeed ~4 s; the definitions compared
    here are plain Python, so running them from the installed file checks the real code.
    """
    with open(path) as f:
        tree = ast.parse(f.read())
    nodes = [n for n in tree.body
             if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names]
    missing = set(names) - {n.name for n in nodes}
    assert not missing, f"{path} no longer defines {missing}"
    exec(compile(ast.Module(body=nodes, type_ignores=[]), path, "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def megatron() -> dict:
    path = os.path.join(_package_dir("megatron"), "core", "parallel_state.py")
    return _load_upstream(path, ("generate_masked_orthogonal_rank_groups", "RankGenerator",
                                 "default_embedding_ranks"),
                          {"List": typing.List, "Optional": typing.Optional})  # noqa: UP006 (its own imports)


class _FakeDist:
    """Stands in for deepspeed.comm: records the rank lists DeepSpeed would make groups of."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.groups: list[list[int]] = []

    def is_initialized(self) -> bool:
        return True

    def get_world_size(self) -> int:
        return self.world_size

    def get_rank(self) -> int:
        return 0

    def new_group(self, ranks) -> int:
        self.groups.append(list(ranks))
        return len(self.groups) - 1


@pytest.fixture(scope="module")
def deepspeed_src() -> dict:
    root = _package_dir("deepspeed")
    ns: dict = {"namedtuple": collections.namedtuple, "cartesian_product": itertools.product}
    _load_upstream(os.path.join(root, "utils", "groups.py"),
                   ("_ensure_divisibility", "_get_expert_parallel_ranks"), ns)
    _load_upstream(os.path.join(root, "runtime", "pipe", "topology.py"),
                   ("ProcessTopology", "PipeModelDataParallelTopology"), ns)
    _load_upstream(os.path.join(root, "runtime", "utils.py"), ("partition_uniform",), ns)
    return ns


def _layout(world: int, tp: int, pp: int, ep: int = 1, gpn: int = 8, experts: int = 8) -> ParallelLayout:
    return ParallelLayout(world_size=world, tp=tp, pp=pp, ep=ep, dp=world // (tp * pp),
                          gpus_per_node=math.gcd(gpn, world), stage_num_layers=(1,) * pp,
                          num_experts=experts)


# (world, TP, PP, EP) covering EP = 1, EP = DP, EP < DP, TP = 1 and PP = 1.
SIZES = [(48, 8, 3, 2), (16, 2, 2, 2), (32, 2, 2, 4), (8, 1, 1, 8), (24, 2, 3, 2),
         (64, 4, 2, 4), (12, 1, 3, 2), (16, 4, 1, 1), (8, 2, 4, 1)]


@pytest.fixture(scope="module")
def b300_moe_48() -> ParallelLayout:
    return ParallelLayout.build(48, 8, 3, 2, 8, model_cfg=get_preset("b300", "moe"), zero_stage=1)


def test_48_rank_layout_matches_hand_worked(b300_moe_48: ParallelLayout) -> None:
    """b300 moe on 6 nodes of 8: TP 8 fills a node; nodes (0,1) are stage 0, (2,3) stage 1 ..."""
    lay = b300_moe_48
    assert (lay.dp, lay.edp, lay.num_nodes, lay.experts_per_rank) == (2, 1, 6, 4)
    assert lay.stage_num_layers == (32, 32, 32)
    # rank: (tp, pp, dp, ep, edp, node, local_rank), worked out by hand.
    expected = {0: (0, 0, 0, 0, 0, 0, 0), 7: (7, 0, 0, 0, 0, 0, 7), 8: (0, 0, 1, 1, 0, 1, 0),
                13: (5, 0, 1, 1, 0, 1, 5), 16: (0, 1, 0, 0, 0, 2, 0), 29: (5, 1, 1, 1, 0, 3, 5),
                34: (2, 2, 0, 0, 0, 4, 2), 47: (7, 2, 1, 1, 0, 5, 7)}
    for rank, want in expected.items():
        c = lay.coords(rank)
        assert (c.tp, c.pp, c.dp, c.ep, c.edp, c.node, c.local_rank) == want, rank
    assert lay.tp_groups() == [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15],
                               [16, 17, 18, 19, 20, 21, 22, 23], [24, 25, 26, 27, 28, 29, 30, 31],
                               [32, 33, 34, 35, 36, 37, 38, 39], [40, 41, 42, 43, 44, 45, 46, 47]]
    assert lay.pp_groups() == [[0, 16, 32], [1, 17, 33], [2, 18, 34], [3, 19, 35], [4, 20, 36],
                               [5, 21, 37], [6, 22, 38], [7, 23, 39], [8, 24, 40], [9, 25, 41],
                               [10, 26, 42], [11, 27, 43], [12, 28, 44], [13, 29, 45],
                               [14, 30, 46], [15, 31, 47]]
    pairs = [[0, 8], [1, 9], [2, 10], [3, 11], [4, 12], [5, 13], [6, 14], [7, 15],
             [16, 24], [17, 25], [18, 26], [19, 27], [20, 28], [21, 29], [22, 30], [23, 31],
             [32, 40], [33, 41], [34, 42], [35, 43], [36, 44], [37, 45], [38, 46], [39, 47]]
    assert lay.dp_groups() == pairs
    # EP = DP here: the two data-parallel replicas split the experts, so nothing replicates them.
    assert lay.ep_groups() == pairs
    assert lay.expert_dp_groups() == [[r] for r in range(48)]
    assert lay.model_parallel_groups() == [list(range(8)) + list(range(16, 24)) + list(range(32, 40)),
                                           list(range(8, 16)) + list(range(24, 32)) + list(range(40, 48))]
    assert [list(lay.stage_layers(s)) for s in range(3)] == [list(range(32)), list(range(32, 64)),
                                                             list(range(64, 96))]
    assert (list(lay.stage_experts(0)), list(lay.stage_experts(1))) == ([0, 1, 2, 3], [4, 5, 6, 7])
    assert lay.rank(tp=5, pp=1, dp=1) == 29


@pytest.mark.parametrize("world,tp,pp,ep", SIZES)
def test_groups_equal_megatron_rank_generator(megatron: dict, world: int, tp: int, pp: int,
                                              ep: int) -> None:
    """The same lists, in the same order, as initialize_model_parallel builds with its default
    order and expert TP = TP; so megatron's parallel_state and ours name the same groups."""
    lay = _layout(world, tp, pp, ep)
    order = "tp-cp-ep-dp-pp"  # initialize_model_parallel's default
    dense = megatron["RankGenerator"](tp=tp, ep=1, dp=lay.dp, pp=pp, cp=1, order=order)
    expert = megatron["RankGenerator"](tp=tp, ep=ep, dp=lay.dp // ep, pp=pp, cp=1, order=order)
    assert lay.tp_groups() == dense.get_ranks("tp")
    assert lay.pp_groups() == dense.get_ranks("pp")
    assert lay.dp_groups() == dense.get_ranks("dp")
    assert lay.model_parallel_groups() == dense.get_ranks("tp-pp")
    assert lay.ep_groups() == expert.get_ranks("ep")
    assert lay.expert_dp_groups() == expert.get_ranks("dp")
    assert lay.embedding_groups() == [megatron["default_embedding_ranks"](g)
                                      for g in dense.get_ranks("pp")]


@pytest.mark.parametrize("world,tp,pp,ep", SIZES)
def test_groups_equal_deepspeed(deepspeed_src: dict, world: int, tp: int, pp: int, ep: int) -> None:
    """DeepSpeed's pipeline topology (pipe, data, model) and its EP/EDP groups built from an mpu
    (`_get_expert_parallel_ranks`, used when TP > 1) give the same memberships."""
    lay = _layout(world, tp, pp, ep)
    topo = deepspeed_src["PipeModelDataParallelTopology"](num_pp=pp, num_mp=tp, num_dp=lay.dp)
    assert lay.tp_groups() == topo.get_axis_comm_lists("model")
    assert lay.pp_groups() == topo.get_axis_comm_lists("pipe")
    assert lay.dp_groups() == topo.get_axis_comm_lists("data")
    ep_groups, edp_groups = deepspeed_src["_get_expert_parallel_ranks"](world, tp, ep, pp)
    assert sorted(ep_groups) == lay.ep_groups()
    assert sorted(edp_groups) == lay.expert_dp_groups()


@pytest.mark.parametrize("world,pp,ep", [(8, 1, 2), (8, 2, 2), (12, 3, 4), (16, 2, 8)])
def test_tp1_groups_equal_deepspeed_default_moe_path(deepspeed_src: dict, world: int, pp: int,
                                                      ep: int) -> None:
    """Without TP, DeepSpeed's MoE layer builds groups with `_create_expert_and_data_parallel`
    (consecutive EP ranks per pipeline stage); ours must agree there too."""
    dist = _FakeDist(world)
    # A fresh namespace per call, so the function's globals are these fakes and empty registries.
    ns = _load_upstream(os.path.join(_package_dir("deepspeed"), "utils", "groups.py"),
                        ("_ensure_divisibility", "_create_expert_and_data_parallel"),
                        dict(dist=dist, log_dist=lambda *a, **k: None, mpu=None,
                             bwc_pipeline_parallel_world_size=lambda mpu: 1,
                             _EXPERT_DATA_PARALLEL_GROUP={}, _EXPERT_DATA_PARALLEL_GROUP_RANKS={},
                             _EXPERT_PARALLEL_GROUP={}, _EXPERT_PARALLEL_GROUP_RANKS={}))
    ns["_create_expert_and_data_parallel"](ep, pp_size=pp)
    lay = _layout(world, 1, pp, ep)
    want = lay.expert_dp_groups() + lay.ep_groups()
    assert sorted(dist.groups) == sorted(want)


@pytest.mark.parametrize("world,tp,pp,ep", SIZES)
def test_groups_partition_the_world_and_tp_stays_in_a_node(world: int, tp: int, pp: int, ep: int) -> None:
    lay = _layout(world, tp, pp, ep)
    for groups, size in ((lay.tp_groups(), tp), (lay.pp_groups(), pp), (lay.dp_groups(), lay.dp),
                         (lay.ep_groups(), ep), (lay.expert_dp_groups(), lay.edp)):
        assert sorted(r for g in groups for r in g) == list(range(world))
        assert {len(g) for g in groups} == {size}
    for g in lay.tp_groups():
        assert len({lay.coords(r).node for r in g}) == 1
    for r in range(world):
        c = lay.coords(r)
        assert lay.rank(tp=c.tp, pp=c.pp, dp=c.dp) == r
        # An EP group holds each expert block exactly once.
        assert sorted(lay.coords(x).ep for x in lay.ep_groups()[0]) == list(range(ep))


# Each invalid combination and the words its message must contain.
_MOE = get_preset("b7", "moe")
_DENSE = get_preset("b7", "dense")
INVALID = [
    (dict(world_size=0), "world size=0 is invalid: must be a positive integer"),
    (dict(tp=0), "--tensor-model-parallel-size=0 is invalid: must be a positive integer"),
    (dict(world_size=48, tp=8, pp=5),
     "--tensor-model-parallel-size=8 x --pipeline-model-parallel-size=5 = 40 does not divide the world size 48"),
    (dict(world_size=16, tp=16, gpus_per_node=8),
     "--tensor-model-parallel-size=16 is invalid: is larger than --gpus-per-node=8"),
    (dict(world_size=24, tp=4, gpus_per_node=6),
     "--tensor-model-parallel-size=4 is invalid: must divide --gpus-per-node=6"),
    (dict(world_size=12, gpus_per_node=8), "--gpus-per-node=8 is invalid: must divide the world size 12"),
    (dict(world_size=16, tp=16, gpus_per_node=16, model_cfg=_DENSE),
     "b7 has num_kv_heads=8, which TP must divide"),
    (dict(world_size=6, tp=3, gpus_per_node=6, model_cfg=get_preset("b100", "dense")),
     "b100 has num_heads=80, which TP must divide"),
    (dict(world_size=8, tp=8, model_cfg=_DENSE.replace(ffn_hidden_size=14340)),
     "b7 has ffn_hidden_size=14340, which TP must divide"),
    (dict(world_size=8, tp=8, model_cfg=_DENSE.replace(vocab_size=32001)),
     "b7 has vocab_size=32001, which TP must divide"),
    (dict(world_size=64, pp=64, zero_stage=0),
     "--pipeline-model-parallel-size=64 is invalid: the model has 32 layers"),
    (dict(world_size=8, ep=2, model_cfg=_DENSE),
     "--expert-model-parallel-size=2 is invalid: --mode dense has no experts"),
    (dict(world_size=8, ep=2, model_cfg=get_preset("b7", "mod")), "--mode mod has no experts"),
    (dict(world_size=6, ep=3, gpus_per_node=6),
     "--expert-model-parallel-size=3 is invalid: must divide the number of experts 8"),
    (dict(world_size=8, tp=2, ep=8),
     "--expert-model-parallel-size=8 is invalid: must divide the data-parallel size 4"),
    (dict(world_size=8, pp=2, zero_stage=2),
     ("DeepSpeed's pipeline engine supports ZeRO 0-1: use --zero-stage 1 or drop "
      "--pipeline-model-parallel-size")),
    (dict(world_size=8, pp=2, zero_stage=3), "--zero-stage=3 with --pipeline-model-parallel-size=2 is refused"),
    (dict(world_size=8, ep=2, zero_stage=3),
     "--zero-stage=3 with --expert-model-parallel-size=2 is refused"),
    (dict(world_size=8, zero_stage=3, native_moe=True), "DeepSpeed's native MoE is refused"),
    (dict(world_size=8, zero_stage=4), "--zero-stage=4 is invalid: must be 0, 1, 2 or 3"),
    (dict(world_size=8, tp=2, micro_batch_size=4, global_batch_size=24),
     ("--global-batch-size=24 is invalid: must be a positive multiple of --micro-batch-size (4) x "
      "data-parallel size (4) = 16")),
    (dict(world_size=8, sequence_parallel=True), "--sequence-parallel=True is invalid"),
    (dict(world_size=8, tp=8, micro_batch_size=1, sequence_parallel=True, model_cfg=_MOE.replace(seq_length=4090)),
     "it splits the 4090 tokens of --micro-batch-size x --seq-length over --tensor-model-parallel-size=8"),
    (dict(world_size=8, tp=2, micro_batch_size=1, sequence_parallel=True,
          model_cfg=get_preset("b7", "mod").replace(seq_length=2050)),
     "it splits the 1025 tokens of --micro-batch-size x the 1025 tokens a MoD layer selects per sequence"),
    (dict(world_size=8, pp=2, pipeline_layers="16,15,1"),
     "--pipeline-layers=16,15,1 is invalid: lists 3 stages but --pipeline-model-parallel-size is 2"),
    (dict(world_size=8, pp=2, pipeline_layers="32,0"),
     "--pipeline-layers=32,0 is invalid: every stage needs at least one layer"),
    (dict(world_size=8, pp=2, pipeline_layers="10,12"),
     "--pipeline-layers=10,12 is invalid: sums to 22 layers but the model has 32"),
    (dict(world_size=8, pp=2, pipeline_layers="balanced"),
     "--pipeline-layers=balanced is invalid: must be parameters or uniform or layers per stage"),
]


@pytest.mark.parametrize("changes,message", INVALID, ids=[m[:40] for _, m in INVALID])
def test_invalid_combination_gives_promised_message(changes: dict, message: str) -> None:
    kwargs: dict = dict(world_size=8, model_cfg=_MOE, zero_stage=1)
    kwargs.update(changes)
    with pytest.raises(ValueError) as err:
        ParallelLayout.build(**kwargs)
    assert message in str(err.value)


def test_valid_edge_cases_are_accepted() -> None:
    # ZeRO-3 with MoE is fine while every rank holds every expert (EP = 1, Lumina's own MoE).
    assert ParallelLayout.build(8, model_cfg=_MOE, zero_stage=3).ep == 1
    # Pipeline with ZeRO-1, TP across a whole node, a single partially used node.
    lay = ParallelLayout.build(16, 8, 2, model_cfg=_MOE, zero_stage=1, gpus_per_node=8)
    assert (lay.dp, lay.num_nodes) == (1, 2)
    assert ParallelLayout.build(4, 2, model_cfg=_MOE).gpus_per_node == 4
    lay = ParallelLayout.build(16, 2, 1, 4, model_cfg=_MOE, micro_batch_size=2, global_batch_size=48,
                               sequence_parallel=True)
    assert (lay.dp, lay.edp) == (8, 2)


def test_uniform_split_matches_deepspeed(deepspeed_src: dict) -> None:
    for layers, stages in ((96, 3), (10, 3), (16, 5), (7, 7)):
        parts = deepspeed_src["partition_uniform"](num_items=layers, num_parts=stages)
        assert uniform_split(layers, stages) == tuple(b - a for a, b in itertools.pairwise(parts))


def test_balanced_split_hand_worked() -> None:
    # Equal layers: the heaviest stage must hold ceil(10/3) = 4; the extra layer goes last.
    assert balanced_split([1] * 10, 3) == (3, 3, 4)
    # An embedding worth two layers on stage 0 and a head worth one on the last: loads 4/4/4.
    assert balanced_split([1] * 9, 3, first_extra=2, last_extra=1) == (2, 4, 3)
    # One huge layer pins the maximum; the rest spread as evenly as possible around it.
    assert balanced_split([1, 1, 10, 1, 1, 1], 3) == (2, 1, 3)
    assert balanced_split([5], 1, first_extra=1, last_extra=1) == (1,)


def _split_cost(weights: list[int], counts: tuple[int, ...], first: int, last: int
                ) -> tuple[int, int, tuple[int, ...]]:
    """(heaviest stage, sum of squared stage loads, counts): the order balanced_split promises."""
    loads, i = [], 0
    for s, c in enumerate(counts):
        loads.append(sum(weights[i:i + c]) + (first if s == 0 else 0)
                     + (last if s == len(counts) - 1 else 0))
        i += c
    return max(loads), sum(x * x for x in loads), counts


def test_balanced_split_is_optimal_against_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 10)
        stages = rng.randint(1, n)
        weights = [rng.randint(1, 20) for _ in range(n)]
        first, last = rng.randint(0, 30), rng.randint(0, 30)
        # Every split is a choice of stages - 1 cut points between the n layers.
        splits = [tuple(b - a for a, b in zip((0, *cuts), (*cuts, n)))
                  for cuts in itertools.combinations(range(1, n), stages - 1)]
        got = balanced_split(weights, stages, first, last)
        assert _split_cost(weights, got, first, last) == min(
            _split_cost(weights, c, first, last) for c in splits)


def test_split_layers_for_presets() -> None:
    b300 = get_preset("b300", "moe")
    assert split_layers(b300, 3) == (32, 32, 32)
    assert split_layers(b300, 3, "3,90,3") == (3, 90, 3)
    assert split_layers(b300, 2, [40, 56]) == (40, 56)
    # debug: the 2048 x 96 embedding outweighs a layer ~1.3x, so the end stages get fewer layers.
    debug = get_preset("debug", "dense")
    assert split_layers(debug, 3) == (1, 2, 1)
    assert split_layers(debug, 3, "uniform") == (2, 1, 1)


def test_spec_parts_in_deepspeed_form() -> None:
    lay = ParallelLayout.build(24, 1, 3, model_cfg=get_preset("b7", "dense"), pipeline_layers="10,12,10")
    # Specs: [embed, 32 blocks, norm, head]; stage 1 owns blocks 10..21 = specs 11..22.
    assert lay.spec_parts(1, 2) == [0, 11, 23, 35]
    assert [list(lay.stage_layers(s))[::9] for s in range(3)] == [[0, 9], [10, 19], [22, 31]]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parallel_args(parser)
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--global-batch-size", type=int, default=None)
    return parser.parse_args(argv)


def test_flags_defaults_and_layout_from_args(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_SIZE", raising=False)
    args = _parse([])
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
            args.expert_model_parallel_size, args.gpus_per_node, args.pipeline_layers,
            args.dry_run) == (1, 1, 1, None, None, None)
    assert layout_from_args(args, 4, _MOE, zero_stage=0).dp == 4
    args = _parse(["--tensor-model-parallel-size", "8", "--pipeline-model-parallel-size", "3",
                   "--expert-model-parallel-size", "2", "--gpus-per-node", "8",
                   "--pipeline-layers", "uniform", "--dry-run", "48", "--global-batch-size", "6"])
    world = dry_run_world_size(args, launcher_world_size=1)
    assert world == 48
    lay = layout_from_args(args, world, get_preset("b300", "moe"), zero_stage=1)
    assert (lay.tp, lay.pp, lay.ep, lay.dp, lay.gpus_per_node) == (8, 3, 2, 2, 8)
    assert dry_run_world_size(_parse(["--dry-run"]), launcher_world_size=16) == 16
    assert dry_run_world_size(_parse([]), launcher_world_size=16) is None
    with pytest.raises(ValueError, match="--global-batch-size=3 is invalid"):
        layout_from_args(_parse(["--global-batch-size", "3"]), 2, _MOE, zero_stage=0)


def test_gpus_per_node_follows_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_SIZE", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun --nproc-per-node 4
    lay = layout_from_args(_parse(["--tensor-model-parallel-size", "4"]), 16, _MOE, zero_stage=0)
    assert (lay.gpus_per_node, lay.num_nodes) == (4, 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert layout_from_args(_parse([]), 48, _MOE, zero_stage=0).gpus_per_node == 8


def test_layout_is_pure_python() -> None:
    """The layout and the dry run must run where no torch can start (a laptop planning 48 GPUs)."""
    code = ("import sys, lumina.parallel; "
            "assert not {'torch', 'deepspeed', 'megatron'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))))


def test_frozen_layout_revalidates_on_construction() -> None:
    with pytest.raises(ValueError, match="data-parallel size 3 is inconsistent"):
        ParallelLayout(world_size=8, tp=2, pp=1, ep=1, dp=3, gpus_per_node=8, stage_num_layers=(1,))
    with pytest.raises(ValueError, match="must give 2 positive layer counts"):
        ParallelLayout(world_size=8, tp=2, pp=2, ep=1, dp=2, gpus_per_node=8, stage_num_layers=(4,))
    lay = _layout(8, 2, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        lay.tp = 4  # type: ignore[misc]
    with pytest.raises(ValueError, match="rank=8 is out of range"):
        lay.coords(8)


def test_model_cfg_type_is_used_not_copied() -> None:
    # The build reads the model only through ModelConfig fields; a custom config works.
    cfg = ModelConfig(name="tiny", vocab_size=256, hidden_size=64, num_layers=6, num_heads=4,
                      num_kv_heads=2, ffn_hidden_size=128, seq_length=32)
    lay = ParallelLayout.build(4, 2, 2, model_cfg=cfg, pipeline_layers="uniform")
    assert lay.stage_num_layers == (3, 3) and lay.num_experts == 0
