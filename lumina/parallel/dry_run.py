"""`--dry-run`: the layout as text, one row per rank, with no process group and no tensor.

The output is deterministic (a function of the layout and the model config only), so a test can
compare it with a layout worked out by hand.
"""

from __future__ import annotations

import textwrap

from lumina.accounting import layer_params
from lumina.config import ModelConfig
from lumina.parallel.layout import ParallelLayout

_WIDTH = 100


def format_ranks(ranks: list[int] | range) -> str:
    """"0-7" for a run of three or more consecutive ranks, otherwise a comma list: "0,16,32"."""
    ranks = list(ranks)
    pieces: list[str] = []
    start = 0
    while start < len(ranks):
        end = start
        while end + 1 < len(ranks) and ranks[end + 1] == ranks[end] + 1:
            end += 1
        if end - start >= 2:
            pieces.append(f"{ranks[start]}-{ranks[end]}")
        else:
            pieces.extend(str(r) for r in ranks[start:end + 1])
        start = end + 1
    return ",".join(pieces)


def _layers(r: range) -> str:
    return f"L{r.start}" if len(r) == 1 else f"L{r.start}-L{r.stop - 1}"


def _count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def stage_parts(layout: ParallelLayout, stage: int) -> list[str]:
    """What a pipeline stage holds, in order: embed, layer range, norm and head."""
    parts = []
    if stage == 0:
        parts.append("embed")
    parts.append(_layers(layout.stage_layers(stage)))
    if stage == layout.pp - 1:
        parts += ["norm", "head (tied to embed)" if layout.tie_embeddings else "head"]
    return parts


def stage_params(layout: ParallelLayout, cfg: ModelConfig, stage: int) -> int:
    """Parameters of one whole stage (all its TP and EP shards together)."""
    n = sum(layer_params(cfg, i) for i in layout.stage_layers(stage))
    embed = cfg.vocab_size * cfg.hidden_size
    if stage == 0:
        n += embed
    if stage == layout.pp - 1:
        n += cfg.hidden_size
        # A tied head is the embedding itself on one stage; on another stage it is a copy.
        if not (layout.tie_embeddings and layout.pp == 1):
            n += embed
    return n


def _rank_holds(layout: ParallelLayout, stage: int, ep_rank: int) -> str:
    parts = stage_parts(layout, stage)
    if layout.num_experts:
        experts = layout.stage_experts(ep_rank)
        parts.append(f"experts {format_ranks(experts)}" if len(experts) > 1
                     else f"expert {experts.start}")
    return ", ".join(parts)


def _header(layout: ParallelLayout, cfg: ModelConfig) -> list[str]:
    model = (f"{cfg.name} {cfg.mode}: {cfg.num_layers} layers, {cfg.num_heads} heads, "
             f"{cfg.num_kv_heads} KV heads, ffn {cfg.ffn_hidden_size}, vocab {cfg.vocab_size}")
    if cfg.moe is not None:
        model += f", {cfg.moe.num_experts} experts top-{cfg.moe.top_k}"
    world = f"{layout.world_size} ranks = TP {layout.tp} x PP {layout.pp} x DP {layout.dp}"
    if layout.ep > 1:
        world += f", EP {layout.ep} within DP (expert DP {layout.edp})"
    world += (f"; {layout.num_nodes} node(s) x {layout.gpus_per_node} ranks; "
              f"ZeRO stage {layout.zero_stage}")
    shard = (f"heads {cfg.num_heads // layout.tp}, KV heads {cfg.num_kv_heads // layout.tp}, "
             f"ffn {cfg.ffn_hidden_size // layout.tp}, vocab rows {cfg.vocab_size // layout.tp}")
    if layout.num_experts:
        shard += f"; experts per EP rank {layout.experts_per_rank} of {layout.num_experts}"
    lines = [
        "Parallel layout (dry run: no process group, no tensor)",
        f"model:  {model}",
        f"world:  {world}",
        "rank = tp + TP * (dp + DP * pp); dp = ep + EP * edp; node = rank // ranks per node",
        f"per TP rank: {shard}",
        "pipeline (params per stage before the TP/EP split):",
    ]
    for s in range(layout.pp):
        lines.append(f"  stage {s}: {', '.join(stage_parts(layout, s))}"
                     f" ({_count(stage_params(layout, cfg, s))} params)")
    groups = [("tp", layout.tp_groups()), ("pp", layout.pp_groups()), ("dp", layout.dp_groups())]
    if layout.num_experts:
        groups += [("ep", layout.ep_groups()), ("expert dp", layout.expert_dp_groups())]
    if layout.tie_embeddings and layout.pp > 1:
        groups.append(("embedding", layout.embedding_groups()))
    lines.append("groups (count x size: ranks):")
    for name, gs in groups:
        label = f"  {name:<10} {len(gs)} x {len(gs[0])}: "
        body = " ".join(f"[{format_ranks(g)}]" for g in gs)
        lines.append(textwrap.fill(body, width=_WIDTH, initial_indent=label,
                                   subsequent_indent=" " * len(label),
                                   break_long_words=False, break_on_hyphens=False))
    return lines


def dry_run(layout: ParallelLayout, model_cfg: ModelConfig) -> str:
    """The layout report: header, group lists, then a table with one row per rank."""
    lines = _header(layout, model_cfg)
    columns = ("rank", "node", "local", "tp", "pp", "dp", "ep", "edp")
    lines.append("")
    lines.append(" ".join(f"{c:>5}" for c in columns) + "  holds")
    for r in range(layout.world_size):
        c = layout.coords(r)
        values = (c.rank, c.node, c.local_rank, c.tp, c.pp, c.dp, c.ep, c.edp)
        lines.append(" ".join(f"{v:>5}" for v in values) + "  " + _rank_holds(layout, c.pp, c.ep))
    return "\n".join(lines) + "\n"
