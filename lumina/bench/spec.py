"""What a benchmark run trains: typed, validated before anything starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lumina.presets import MODES, SIZES

# The measured sizes of the table: the two that train on a CPU. The larger ones are projected.
MEASURED_SIZES = ("debug", "debug_200m")


@dataclass(frozen=True)
class SizeRun:
    """How one preset is trained in the benchmark: every mode and baseline sees the same batches."""
    preset: str
    tokens: int            # training tokens per run (the budget)
    micro_batch: int
    seq: int
    modes: tuple[str, ...] = MODES
    baselines: tuple[str, ...] = ("hf", "plain")   # hf: Llama for dense, Mixtral for moe
    eval_iters: int = 4
    # Extra seeds (init and data order) at which Lumina's model (in the plain loop) and the HF
    # model train again, for the held-out loss comparison only: one seed's difference is mostly
    # the draw at these budgets.
    loss_seeds: tuple[int, ...] = ()
    # The side-by-side speed trial (lumina.bench.speed): rounds, timed steps per system per round,
    # and untimed warm-up steps per system before the first round.
    speed_rounds: int = 8
    speed_steps: int = 4
    speed_warmup: int = 2

    def __post_init__(self) -> None:
        if self.preset not in SIZES:
            raise ValueError(f"bench preset {self.preset!r} is unknown: choose one of {', '.join(SIZES)}")
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"bench modes {bad} are unknown: choose from {', '.join(MODES)}")
        bad = [b for b in self.baselines if b not in ("hf", "plain")]
        if bad:
            raise ValueError(f"bench baselines {bad} are unknown: choose from hf, plain")
        if len(set(self.loss_seeds)) != len(self.loss_seeds) or not all(isinstance(s, int) for s in self.loss_seeds):
            raise ValueError(f"bench {self.preset} loss_seeds={self.loss_seeds} must be distinct integers")
        for name in ("tokens", "micro_batch", "seq", "eval_iters", "speed_rounds", "speed_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"bench {self.preset} {name}={getattr(self, name)} must be >= 1")
        if self.speed_warmup < 0:
            raise ValueError(f"bench {self.preset} speed_warmup={self.speed_warmup} must be >= 0")
        if self.iters < 3:
            raise ValueError(f"bench {self.preset}: --tokens {self.tokens} is {self.iters} iteration(s) of "
                             f"{self.micro_batch} x {self.seq} tokens; at least 3 are needed (the first, "
                             f"a warm-up, is left out of tokens/s)")

    @property
    def iters(self) -> int:
        return self.tokens // (self.micro_batch * self.seq)


@dataclass(frozen=True)
class BenchSpec:
    sizes: tuple[SizeRun, ...]
    seed: int = 1234
    lr: float = 3e-3
    smoke: bool = False
    projected_sizes: tuple[str, ...] = field(default=tuple(s for s in SIZES if s not in MEASURED_SIZES))

    def __post_init__(self) -> None:
        for size in self.sizes:
            if self.seed in size.loss_seeds:
                raise ValueError(f"bench {size.preset} loss_seeds={size.loss_seeds} repeat the main seed {self.seed}")

    def to_dict(self) -> dict:
        return asdict(self)


def default_spec(debug_tokens: int = 262_144, debug_200m_tokens: int = 4_096) -> BenchSpec:
    """debug at its own batch (8 x 128) for 256K tokens; debug_200m at 1 x 256 for 4K tokens; the
    speed trial at debug takes 10 rounds of 4 steps per system, at debug_200m (seconds a step) 5
    rounds of 1.

    The loss comparison with the HF models runs at six seeds at debug. At three, in the run of
    commit 7dcf9d2, the paired differences' standard deviations were 0.022 (dense) and 0.035 (moe),
    so the mean's standard error (0.013, 0.020) was as large as the 0.02 tolerance. debug_200m
    (a minute a run) keeps three.

    The debug_200m moe and hybrid models hold 1.2B parameters: 18 GiB of FP32 weights, gradients
    and Adam states, more than a 24 GiB CPU machine can train with activations and the baselines
    beside it, so at that size only dense and mod run (and HF Llama against dense)."""
    return BenchSpec(sizes=(
        SizeRun("debug", debug_tokens, 8, 128, loss_seeds=(1, 2, 3, 4, 5), speed_rounds=10, speed_steps=4,
                speed_warmup=3),
        SizeRun("debug_200m", debug_200m_tokens, 1, 256, modes=("dense", "mod"), eval_iters=2, loss_seeds=(1, 2),
                speed_rounds=5, speed_steps=1, speed_warmup=1),
    ))


def smoke_spec() -> BenchSpec:
    """A few iterations of debug in every mode and baseline: every output file, in a minute."""
    return BenchSpec(sizes=(SizeRun("debug", 4 * 2 * 64, 2, 64, eval_iters=1, loss_seeds=(1,), speed_rounds=2,
                                    speed_steps=1, speed_warmup=1),), smoke=True)
