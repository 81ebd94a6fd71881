"""What `lumina study isoflop` trains: the budgets, the size ladder, the variants, the seeds.

Sizes are derived from a preset by scaling its width (hidden size and FFN width) by a factor,
keeping its depth, heads, vocabulary and sequence length, so the ladder follows the preset table
instead of a second list of shapes. Every variant of a size is the preset's mode at that width;
the two ablations change one setting each:

- `mod@C`: MoD at capacity C instead of the preset's (`lumina.presets.MOD_CAPACITY`);
- `hybrid-integrated`: integrated MoDE, MoE with no-op experts and no MoD routing (Raposo et al.
  2024, sec. 3.5), beside the default hybrid, which is staged MoDE (MoD around MoE blocks).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from lumina.config import MODES, ModelConfig
from lumina.presets import MOD_CAPACITY, SIZES, get_preset

DATASETS = ("c4", "embedded")
INTEGRATED = "hybrid-integrated"


@dataclass(frozen=True)
class StudySpec:
    base: str = "debug"
    """Preset whose shape the ladder scales."""
    width_factors: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5)
    """Hidden and FFN widths relative to the base preset's, one model size each."""
    budgets: tuple[float, ...] = (6e10, 1.2e11, 2.4e11)
    """Training FLOPs per run (lumina.accounting: performed FLOPs, fwd + bwd)."""
    seeds: tuple[int, ...] = (1, 2, 3)
    """Each seed sets a run's initialisation and data order; runs pair across variants by seed."""
    datasets: tuple[str, ...] = DATASETS
    """c4: the shipped C4 sample (or --c4 FILE); embedded: the corpus `lumina train` reads."""
    micro_batch: int = 4
    seq: int = 128
    lr: float = 3e-3
    """Peak learning rate; cosine to lr / 10 after a warm-up of 10% of the steps."""
    eval_batches: int = 16
    """Held-out batches of micro_batch x seq tokens, the same ones for every run of a data set."""
    ablation_budget: int = 1
    """Index into budgets of the budget at which the ablations run (on the first data set)."""
    mod_capacities: tuple[float, ...] = (0.125, 0.25, 0.5)
    integrated_noop_experts: int = 8
    """No-op experts beside the 8 real ones in hybrid-integrated (top-2 of 16 router outputs)."""
    min_steps: int = 5
    """A budget must give every run at least this many optimizer steps."""
    smoke: bool = False

    def __post_init__(self) -> None:
        if self.base not in SIZES:
            raise ValueError(f"study base={self.base!r} is unknown: choose one of {', '.join(SIZES)}")
        if not self.width_factors or any(not (0 < f <= 4) for f in self.width_factors):
            raise ValueError(f"study width_factors={self.width_factors}: give one or more factors in (0, 4]")
        if len(self.budgets) < 1 or any(not (math.isfinite(b) and b > 0) for b in self.budgets):
            raise ValueError(f"--budgets {self.budgets}: give positive FLOP counts such as 6e10,1.2e11,2.4e11")
        if list(self.budgets) != sorted(set(self.budgets)):
            raise ValueError(f"--budgets {self.budgets}: give distinct budgets in increasing order")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds {self.seeds}: give one or more distinct integers")
        bad = [d for d in self.datasets if d not in DATASETS]
        if bad or not self.datasets:
            raise ValueError(f"study datasets {self.datasets}: choose from {', '.join(DATASETS)}")
        for name in ("micro_batch", "seq", "eval_batches", "min_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"study {name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.ablation_budget < len(self.budgets):
            raise ValueError(f"study ablation_budget={self.ablation_budget}: an index into the "
                             f"{len(self.budgets)} budgets")
        if any(not (0 < c <= 1) for c in self.mod_capacities):
            raise ValueError(f"study mod_capacities={self.mod_capacities}: each must be in (0, 1]")
        if self.integrated_noop_experts < 1:
            raise ValueError(f"study integrated_noop_experts={self.integrated_noop_experts} must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"study lr={self.lr} must be > 0")
        self.sizes()  # a factor that gives no valid shape fails here, before anything trains

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch * self.seq

    def sizes(self) -> list[tuple[str, int, int]]:
        """(name, hidden, ffn) per width factor: widths rounded to whole heads of even head_dim."""
        base = get_preset(self.base)
        out = []
        for f in self.width_factors:
            step = 2 * base.num_heads  # hidden must split into num_heads heads of even width (RoPE)
            hidden = max(step, round(base.hidden_size * f / step) * step)
            ffn = max(16, round(base.ffn_hidden_size * f / 16) * 16)
            out.append((f"{self.base}-w{hidden}", hidden, ffn))
        if len({name for name, _, _ in out}) != len(out):
            raise ValueError(f"study width_factors={self.width_factors} give the same width twice: {out}")
        return out

    def main_variants(self) -> tuple[str, ...]:
        return MODES

    def ablation_variants(self) -> tuple[str, ...]:
        """MoD at each capacity the main grid does not already run, and the integrated hybrid."""
        own = MOD_CAPACITY[self.base]
        return tuple(f"mod@{c:g}" for c in self.mod_capacities if c != own) + (INTEGRATED,)

    def to_dict(self) -> dict:
        return asdict(self)


def variant_config(spec: StudySpec, variant: str, hidden: int, ffn: int, vocab_size: int) -> ModelConfig:
    """The model of one variant at one size of the ladder."""
    if variant in MODES:
        cfg = get_preset(spec.base, variant)
    elif variant.startswith("mod@"):
        cfg = get_preset(spec.base, "mod")
        cfg = cfg.replace(mod=_replace(cfg.mod, capacity=float(variant[4:])))
    elif variant == INTEGRATED:
        cfg = get_preset(spec.base, "moe")
        cfg = cfg.replace(moe=_replace(cfg.moe, num_noop_experts=spec.integrated_noop_experts))
    else:
        raise ValueError(f"study variant {variant!r} is unknown")
    return cfg.replace(hidden_size=hidden, ffn_hidden_size=ffn, seq_length=spec.seq, vocab_size=vocab_size)


def _replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def default_spec() -> StudySpec:
    """The published study, sized to finish within the hour on 2 cores: 324 runs, 4.5e13 training
    FLOPs. A run of it with widths 0.5, 1 and 1.5 only (3.4e13 FLOPs) took 19 minutes on the shared
    2-core VM; in it the smallest width won every frontier cell, so the ladder now reaches down to a
    quarter of debug's width. docs/study.md gives the measured wall time."""
    return StudySpec()


def smoke_spec() -> StudySpec:
    """Every output of the study in seconds: one budget, two sizes, one seed, a few steps."""
    return StudySpec(width_factors=(0.5, 0.75), budgets=(1e9,), seeds=(1,), micro_batch=2, seq=64,
                     eval_batches=1, ablation_budget=0, min_steps=2, smoke=True)
