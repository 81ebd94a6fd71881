"""Every rank's place in the TP x PP x DP grid (with EP inside DP), computed from the world size.

This is the one place that decides rank placement. It is pure Python on purpose: no
torch.distributed, no process groups, no tensors, so `--dry-run` can lay out 48 or 4,096 GPUs
on a laptop, and every invalid combination is refused before any process group exists.

Rank order is megatron-core's default "tp-cp-ep-dp-pp" with cp = 1, which is also DeepSpeed's
`PipeModelDataParallelTopology` (axes pipe, data, model, the last varying fastest):

    rank = tp + TP * (dp + DP * pp)        TP innermost, PP outermost
    dp   = ep + EP * edp                   EP ranks are consecutive in DP order

Experts are split over EP and every expert is also sharded over TP (megatron-core's default
expert tensor parallel size = TP), so the ranks that hold the same expert shard, the expert
data-parallel group, are the DP / EP ranks with the same (tp, pp, ep).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lumina.accounting import layer_params
from lumina.util.argtypes import POSITIVE_INT
from lumina.config import ModelConfig

# How the transformer layers are split over pipeline stages when --pipeline-layers gives no list.
PARTITION_METHODS: tuple[str, ...] = ("parameters", "uniform")

# Ranks per node assumed when neither --gpus-per-node nor a launcher says: a DGX/HGX node.
DEFAULT_GPUS_PER_NODE = 8

_TP, _PP, _EP = ("--tensor-model-parallel-size", "--pipeline-model-parallel-size",
                 "--expert-model-parallel-size")
_GPN, _LAYERS = "--gpus-per-node", "--pipeline-layers"


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def _refuse(flag: str, value: object, rule: str) -> None:
    raise ValueError(f"{flag}={value} is invalid: {rule}")


def _positive_int(flag: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        _refuse(flag, value, "must be a positive integer")


@dataclass(frozen=True)
class RankCoords:
    """Where one rank sits: its index along every parallel dimension and on the machine."""

    rank: int
    tp: int
    """Tensor-parallel rank: which shard of every weight matrix it holds."""
    pp: int
    """Pipeline stage."""
    dp: int
    """Data-parallel rank among the ranks holding the same dense weights."""
    ep: int
    """Expert-parallel rank: which block of experts it holds (0 without EP)."""
    edp: int
    """Rank among the data-parallel replicas of its experts (equals dp without EP)."""
    node: int
    local_rank: int


@dataclass(frozen=True)
class ParallelLayout:
    """A validated TP x PP x DP (EP inside DP) layout and the pipeline split of the layers.

    Build it with `ParallelLayout.build`, which also checks the model against the sizes; the
    constructor checks only what the fields themselves must satisfy.
    """

    world_size: int
    tp: int
    """Tensor-parallel size (--tensor-model-parallel-size)."""
    pp: int
    """Pipeline-parallel size (--pipeline-model-parallel-size)."""
    ep: int
    """Expert-parallel size (--expert-model-parallel-size); divides dp."""
    dp: int
    """Data-parallel size = world_size / (tp * pp)."""
    gpus_per_node: int
    """Ranks launched per node; ranks fill node 0 first, then node 1, ..."""
    stage_num_layers: tuple[int, ...]
    """Transformer layers held by each pipeline stage, first stage first."""
    num_experts: int = 0
    """Experts per MoE layer (0 for a model without MoE)."""
    tie_embeddings: bool = False
    """Whether the LM head shares the input embedding (both ends of the pipeline then hold it)."""
    zero_stage: int = 0
    """ZeRO stage from the DeepSpeed config."""

    def __post_init__(self) -> None:
        for flag, value in (("world size", self.world_size), (_TP, self.tp), (_PP, self.pp),
                            (_EP, self.ep), ("data-parallel size", self.dp), (_GPN, self.gpus_per_node)):
            _positive_int(flag, value)
        if self.tp * self.pp * self.dp != self.world_size:
            raise ValueError(f"data-parallel size {self.dp} is inconsistent: world size "
                             f"{self.world_size} / (TP {self.tp} x PP {self.pp}) is not {self.dp}")
        if self.zero_stage not in (0, 1, 2, 3):
            _refuse("--zero-stage", self.zero_stage, "must be 0, 1, 2 or 3")
        _check_placement(self.world_size, self.tp, self.gpus_per_node)
        if len(self.stage_num_layers) != self.pp or any(n <= 0 for n in self.stage_num_layers):
            _refuse(_LAYERS, ",".join(map(str, self.stage_num_layers)),
                    f"must give {self.pp} positive layer counts, one per pipeline stage")
        if self.ep > 1:
            if self.num_experts <= 0:
                _refuse(_EP, self.ep, "the model has no experts; expert parallelism needs "
                        "--mode moe or hybrid (or use --expert-model-parallel-size 1)")
            if self.num_experts % self.ep:
                _refuse(_EP, self.ep, f"must divide the number of experts {self.num_experts}, since "
                        f"each EP rank holds whole experts: use one of {_divisors(self.num_experts)}")
            if self.dp % self.ep:
                _refuse(_EP, self.ep, f"must divide the data-parallel size {self.dp} = world size "
                        f"{self.world_size} / (TP {self.tp} x PP {self.pp}), since expert-parallel "
                        f"ranks are a subset of the data-parallel ranks: use one of {_divisors(self.dp)}")
        if self.pp > 1 and self.zero_stage >= 2:
            raise ValueError(
                f"--zero-stage={self.zero_stage} with {_PP}={self.pp} is refused: DeepSpeed's pipeline "
                f"engine supports ZeRO 0-1: use --zero-stage 1 or drop {_PP} "
                "(with --ds_config, set zero_optimization.stage to 0 or 1)")
        if self.ep > 1 and self.zero_stage == 3:
            raise ValueError(
                f"--zero-stage=3 with {_EP}={self.ep} is refused: ZeRO-3 partitions every parameter "
                "over the whole data-parallel group, but expert-parallel ranks hold different "
                f"experts: use --zero-stage 1 or 2, or {_EP} 1")

    @classmethod
    def build(cls, world_size: int, tp: int = 1, pp: int = 1, ep: int = 1,
              gpus_per_node: int | None = None, *, model_cfg: ModelConfig, zero_stage: int = 0,
              pipeline_layers: str | Sequence[int] | None = None,
              micro_batch_size: int | None = None, global_batch_size: int | None = None,
              sequence_parallel: bool = False, native_moe: bool = False) -> ParallelLayout:
        """Validate the sizes against the world and the model, and split the layers over stages.

        `model_cfg` must carry the padded vocabulary the embedding will have. `pipeline_layers`
        is "parameters" (default: balance parameter counts), "uniform" (balance layer counts)
        or layers per stage ("3,5" or [3, 5]). `native_moe` says the MoE layers are DeepSpeed's
        own `deepspeed.moe.layer.MoE`, which DeepSpeed refuses under ZeRO-3 at any EP size.
        """
        _positive_int("world size", world_size)
        for flag, value in ((_TP, tp), (_PP, pp), (_EP, ep)):
            _positive_int(flag, value)
        if world_size % (tp * pp):
            raise ValueError(
                f"{_TP}={tp} x {_PP}={pp} = {tp * pp} does not divide the world size {world_size}: "
                f"the data-parallel size is world / (TP x PP), so choose TP and PP whose product "
                f"is one of {_divisors(world_size)}")
        gpn = default_gpus_per_node(world_size) if gpus_per_node is None else gpus_per_node
        _positive_int(_GPN, gpn)
        _check_placement(world_size, tp, gpn)
        _check_tensor_split(model_cfg, tp)
        if sequence_parallel and tp == 1:
            _refuse("--sequence-parallel", True, f"it splits activations over the TP group, so it "
                    f"needs {_TP} > 1")
        if sequence_parallel and micro_batch_size is not None:
            _check_token_split(model_cfg, micro_batch_size, tp)
        if pp > model_cfg.num_layers:
            _refuse(_PP, pp, f"the model has {model_cfg.num_layers} layers and every stage needs at "
                    f"least one: use at most {model_cfg.num_layers}")
        if ep > 1 and model_cfg.moe is None:
            _refuse(_EP, ep, f"--mode {model_cfg.mode} has no experts; expert parallelism needs "
                    f"--mode moe or hybrid (or use {_EP} 1)")
        if native_moe and model_cfg.moe is not None and zero_stage == 3:
            raise ValueError("--zero-stage=3 with DeepSpeed's native MoE is refused: DeepSpeed does "
                             "not support its MoE layers under ZeRO-3: use --zero-stage 1 or 2")
        dp = world_size // (tp * pp)
        layout = cls(world_size=world_size, tp=tp, pp=pp, ep=ep, dp=dp, gpus_per_node=gpn,
                     stage_num_layers=split_layers(model_cfg, pp, pipeline_layers),
                     num_experts=model_cfg.moe.num_experts if model_cfg.moe is not None else 0,
                     tie_embeddings=model_cfg.tie_embeddings, zero_stage=zero_stage)
        if micro_batch_size is not None and global_batch_size is not None:
            unit = micro_batch_size * dp
            if global_batch_size <= 0 or global_batch_size % unit:
                _refuse("--global-batch-size", global_batch_size,
                        f"must be a positive multiple of --micro-batch-size ({micro_batch_size}) x "
                        f"data-parallel size ({dp}) = {unit}")
        return layout

    @property
    def num_nodes(self) -> int:
        return self.world_size // self.gpus_per_node

    @property
    def edp(self) -> int:
        """Expert data-parallel size: replicas of each expert shard."""
        return self.dp // self.ep

    @property
    def experts_per_rank(self) -> int:
        return self.num_experts // self.ep

    def rank(self, tp: int = 0, pp: int = 0, dp: int = 0) -> int:
        """The global rank at these coordinates."""
        for name, value, size in (("tp", tp, self.tp), ("pp", pp, self.pp), ("dp", dp, self.dp)):
            if not 0 <= value < size:
                raise ValueError(f"{name}={value} is out of range: must be in [0, {size})")
        return tp + self.tp * (dp + self.dp * pp)

    def coords(self, rank: int) -> RankCoords:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank={rank} is out of range: must be in [0, {self.world_size})")
        dp = (rank // self.tp) % self.dp
        return RankCoords(rank=rank, tp=rank % self.tp, pp=rank // (self.tp * self.dp), dp=dp,
                          ep=dp % self.ep, edp=dp // self.ep,
                          node=rank // self.gpus_per_node, local_rank=rank % self.gpus_per_node)

    def _groups(self, key: Callable[[RankCoords], tuple[int, ...]]) -> list[list[int]]:
        """Ranks bucketed by `key` (the coordinates the group members share), in ascending order.

        Ordering groups by their first rank gives the same list as megatron's RankGenerator,
        whose group index runs over the remaining dimensions innermost-first.
        """
        buckets: dict[tuple[int, ...], list[int]] = {}
        for r in range(self.world_size):
            buckets.setdefault(key(self.coords(r)), []).append(r)
        return sorted(buckets.values())

    def tp_groups(self) -> list[list[int]]:
        return self._groups(lambda c: (c.pp, c.dp))

    def pp_groups(self) -> list[list[int]]:
        return self._groups(lambda c: (c.tp, c.dp))

    def dp_groups(self) -> list[list[int]]:
        """Ranks holding the same dense weights: gradients of non-expert parameters reduce here."""
        return self._groups(lambda c: (c.tp, c.pp))

    def ep_groups(self) -> list[list[int]]:
        """Ranks that exchange tokens in the MoE all-to-all; together they hold every expert."""
        return self._groups(lambda c: (c.tp, c.pp, c.edp))

    def expert_dp_groups(self) -> list[list[int]]:
        """Ranks holding the same expert shard: expert gradients reduce here."""
        return self._groups(lambda c: (c.tp, c.pp, c.ep))

    def model_parallel_groups(self) -> list[list[int]]:
        """TP x PP: one whole model replica (megatron's model-parallel group)."""
        return self._groups(lambda c: (c.dp,))

    def embedding_groups(self) -> list[list[int]]:
        """First and last rank of each pipeline group: they all-reduce tied embedding gradients."""
        return [[g[0], g[-1]] if self.pp > 1 else [g[0]] for g in self.pp_groups()]

    def stage_layers(self, stage: int) -> range:
        """The transformer layers (0-based) pipeline stage `stage` holds."""
        if not 0 <= stage < self.pp:
            raise ValueError(f"stage={stage} is out of range: must be in [0, {self.pp})")
        start = sum(self.stage_num_layers[:stage])
        return range(start, start + self.stage_num_layers[stage])

    def stage_experts(self, ep_rank: int) -> range:
        """The experts (of every MoE layer) an EP rank holds: a contiguous block."""
        n = self.experts_per_rank
        return range(ep_rank * n, (ep_rank + 1) * n)

    def spec_parts(self, specs_before: int, specs_after: int) -> list[int]:
        """Stage boundaries over a PipelineModule's layer specs, in DeepSpeed's `parts` form.

        The spec list is `specs_before` specs (embedding, ...), then one per transformer layer,
        then `specs_after` (final norm, head, ...); stage s owns specs parts[s]:parts[s+1].
        """
        parts = [0]
        for s in range(self.pp):
            parts.append(specs_before + sum(self.stage_num_layers[:s + 1]))
        parts[-1] += specs_after
        return parts


def default_gpus_per_node(world_size: int) -> int:
    """A launcher's ranks per node if it says (torchrun LOCAL_WORLD_SIZE, deepspeed LOCAL_SIZE),
    otherwise one 8-GPU node per 8 ranks (the whole world when smaller)."""
    for var in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) > 0:
            return int(os.environ[var])
    return min(world_size, DEFAULT_GPUS_PER_NODE)


def _check_placement(world_size: int, tp: int, gpus_per_node: int) -> None:
    """TP groups all-reduce in every layer, so each must sit inside one node."""
    if world_size % gpus_per_node:
        _refuse(_GPN, gpus_per_node, f"must divide the world size {world_size}, since every node "
                "runs the same number of ranks")
    if tp > gpus_per_node:
        _refuse(_TP, tp, f"is larger than {_GPN}={gpus_per_node}; a tensor-parallel group "
                f"all-reduces in every layer and must sit inside one node: use TP <= {gpus_per_node}")
    if gpus_per_node % tp:
        _refuse(_TP, tp, f"must divide {_GPN}={gpus_per_node}, or a tensor-parallel group (TP ranks "
                f"are consecutive) would straddle two nodes: use one of {_divisors(gpus_per_node)}")


def _check_tensor_split(cfg: ModelConfig, tp: int) -> None:
    """Each TP rank holds whole heads, an equal slice of the MLP and of the (padded) vocabulary."""
    for name, value, why in (
            ("num_heads", cfg.num_heads, "each TP rank computes whole query heads"),
            ("num_kv_heads", cfg.num_kv_heads, "each TP rank holds whole key/value heads"),
            ("ffn_hidden_size", cfg.ffn_hidden_size, "the MLP's inner width is split over TP"),
            ("vocab_size", cfg.vocab_size,
             "the embedding and LM head rows are split over TP; pad the vocabulary to a multiple of TP")):
        if value % tp:
            _refuse(_TP, tp, f"{cfg.name} has {name}={value}, which TP must divide ({why})")


def _check_token_split(cfg: ModelConfig, micro_batch_size: int, tp: int) -> None:
    """Sequence parallel splits a micro-batch's B x T tokens, and the B x k tokens each MoD layer
    selects, into TP equal shards."""
    counts = [("--micro-batch-size x --seq-length", micro_batch_size * cfg.seq_length)]
    if cfg.mod is not None:  # k as in MoDBlock.selected_count
        k = max(1, math.ceil(cfg.mod.capacity * cfg.seq_length))
        counts.append((f"--micro-batch-size x the {k} tokens a MoD layer selects per sequence", micro_batch_size * k))
    for what, n in counts:
        if n % tp:
            _refuse("--sequence-parallel", True, f"it splits the {n} tokens of {what} over {_TP}={tp}, "
                    f"which must divide them: change the micro-batch size or the sequence length")


def split_layers(cfg: ModelConfig, pp: int, pipeline_layers: str | Sequence[int] | None = None
                 ) -> tuple[int, ...]:
    """Transformer layers per pipeline stage; see `ParallelLayout.build` for `pipeline_layers`."""
    n = cfg.num_layers
    if pp > n:
        _refuse(_PP, pp, f"the model has {n} layers and every stage needs at least one: "
                f"use at most {n}")
    spec = "parameters" if pipeline_layers is None else pipeline_layers
    if spec == "uniform":
        return uniform_split(n, pp)
    if spec == "parameters":
        d, vocab = cfg.hidden_size, cfg.vocab_size
        # Stage 0 holds the embedding; the last the final norm and the head (a tied head still
        # holds a copy of the embedding there, as DeepSpeed's TiedLayerSpec does).
        return balanced_split([layer_params(cfg, i) for i in range(n)], pp,
                              first_extra=vocab * d, last_extra=vocab * d + d)
    if isinstance(spec, str):
        try:
            counts = tuple(int(part) for part in spec.split(","))
        except ValueError:
            raise ValueError(f"{_LAYERS}={spec} is invalid: must be {' or '.join(PARTITION_METHODS)} "
                             "or layers per stage like 3,5") from None
    else:
        counts = tuple(spec)
    shown = ",".join(map(str, counts))
    if len(counts) != pp:
        _refuse(_LAYERS, shown, f"lists {len(counts)} stages but {_PP} is {pp}")
    if any(c <= 0 for c in counts):
        _refuse(_LAYERS, shown, "every stage needs at least one layer")
    if sum(counts) != n:
        _refuse(_LAYERS, shown, f"sums to {sum(counts)} layers but the model has {n}")
    return counts


def uniform_split(num_layers: int, stages: int) -> tuple[int, ...]:
    """Equal layer counts; the first num_layers % stages stages get one more (DeepSpeed's
    `partition_uniform` rule)."""
    base, extra = divmod(num_layers, stages)
    return tuple(base + (1 if s < extra else 0) for s in range(stages))


def balanced_split(weights: Sequence[int], stages: int, first_extra: int = 0,
                   last_extra: int = 0) -> tuple[int, ...]:
    """Contiguous, non-empty split of `weights` into `stages` that minimises the heaviest stage.

    The first stage also carries `first_extra`, the last `last_extra`. The pipeline runs at the
    pace of its heaviest stage, so that is minimised first; among splits with that maximum the
    one with the smallest sum of squared stage weights (the most even) wins, and among those the
    one giving earlier stages fewer layers (in 1F1B the first stage keeps the most micro-batches
    of activations alive).
    """
    n = len(weights)
    if not 1 <= stages <= n:
        raise ValueError(f"stages={stages} is invalid: must be in [1, {n}] for {n} layers")
    prefix = [0]
    for w in weights:
        prefix.append(prefix[-1] + w)

    def load(i: int, j: int) -> int:
        return prefix[j] - prefix[i] + (first_extra if i == 0 else 0) + (last_extra if j == n else 0)

    inf = float("inf")

    def suffix_table(cost: Callable[[float, int], float], cap: float) -> list[list[float]]:
        # table[s][i]: best cost of putting layers i..n-1 on stages s..stages-1, each stage
        # non-empty and no heavier than cap; cost(rest, stage_load) folds one stage in.
        table = [[inf] * (n + 1) for _ in range(stages + 1)]
        table[stages][n] = 0
        for s in reversed(range(stages)):
            left = stages - s
            for i in range(s, n - left + 1):
                table[s][i] = min((cost(table[s + 1][j], load(i, j))
                                   for j in range(i + 1, n - left + 2) if load(i, j) <= cap),
                                  default=inf)
        return table

    cap = suffix_table(lambda rest, w: max(rest, w), inf)[0][0]
    squares = suffix_table(lambda rest, w: rest + w * w, cap)
    counts: list[int] = []
    i = 0
    for s in range(stages):
        left = stages - s
        for j in range(i + 1, n - left + 2):
            w = load(i, j)
            if w <= cap and squares[s + 1][j] + w * w == squares[s][i]:
                counts.append(j - i)
                i = j
                break
    return tuple(counts)


def add_parallel_args(parser: argparse.ArgumentParser) -> None:
    """The parallelism flags, with Megatron-LM's names."""
    g = parser.add_argument_group("parallelism")
    g.add_argument(_TP, type=POSITIVE_INT, default=1, help="tensor-parallel size (within a node)")
    g.add_argument(_PP, type=POSITIVE_INT, default=1, help="pipeline stages (ZeRO 0-1 only)")
    g.add_argument(_EP, type=POSITIVE_INT, default=1,
                   help="expert-parallel size; divides the experts and the data-parallel size")
    g.add_argument(_GPN, type=POSITIVE_INT, default=None,
                   help="ranks per node (default: the launcher's, else 8 or the world if smaller)")
    g.add_argument(_LAYERS, default=None,
                   help='layers per pipeline stage: "parameters" (default, balance parameter counts), '
                        '"uniform" (balance layer counts) or counts like "10,12,10"')
    g.add_argument("--sequence-parallel", action="store_true",
                   help="split the tokens of the activations outside the TP regions over the TP group "
                        "(TP > 1)")
    # Bare --dry-run means the launcher's world size (const 0); an explicit size must be >= 1.
    g.add_argument("--dry-run", type=POSITIVE_INT, nargs="?", const=0, default=None, metavar="WORLD_SIZE",
                   help="print every rank's coordinates and layers for WORLD_SIZE ranks (default: "
                        "the launcher's world size) and exit, creating no process group")


def dry_run_world_size(args: argparse.Namespace, launcher_world_size: int) -> int | None:
    """The world size --dry-run asks for, or None without --dry-run."""
    if args.dry_run is None:
        return None
    return args.dry_run if args.dry_run > 0 else launcher_world_size


def layout_from_args(args: argparse.Namespace, world_size: int, model_cfg: ModelConfig,
                     zero_stage: int) -> ParallelLayout:
    """The validated layout for parsed flags (those of add_parallel_args plus the batch flags)."""
    return ParallelLayout.build(
        world_size, args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
        args.expert_model_parallel_size, args.gpus_per_node, model_cfg=model_cfg,
        zero_stage=zero_stage, pipeline_layers=args.pipeline_layers,
        micro_batch_size=getattr(args, "micro_batch_size", None),
        global_batch_size=getattr(args, "global_batch_size", None),
        sequence_parallel=bool(getattr(args, "sequence_parallel", False)))
