"""Typed, self-validating model configuration.

Every field has a docstring-style comment; `__post_init__` raises `ValueError` naming the field,
the value and what is allowed, so a bad config fails before any tensor is allocated.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

MODES = ("dense", "moe", "mod", "hybrid")


def _fail(field_name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{field_name}={value!r} is invalid: {allowed}")


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        _fail(name, value, "must be a positive integer")


def _in_range(name: str, value: float, low: float, high: float, low_open: bool = True) -> None:
    ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        _fail(name, value, f"must be in {bracket}{low}, {high}]")


@dataclass(frozen=True)
class MoEConfig:
    """Token-choice top-k Mixture-of-Experts replacing a block's MLP."""

    num_experts: int = 8
    """Number of real experts, each a SwiGLU MLP of the dense MLP's width."""
    top_k: int = 2
    """Experts each token is sent to."""
    capacity_factor_train: float = 1.25
    """Per-expert slots = ceil(factor * tokens * top_k / num_experts) in training; ignored when dropless."""
    capacity_factor_eval: float = 2.0
    """The same during evaluation (no gradient)."""
    dropless: bool = False
    """Give every expert unlimited capacity, so no token is ever dropped."""
    aux_loss_coef: float = 0.01
    """Weight of the Switch load-balancing loss (Fedus et al. 2021)."""
    z_loss_coef: float = 0.001
    """Weight of the router z-loss (Zoph et al. 2022, ST-MoE)."""
    num_noop_experts: int = 0
    """No-op experts added to the router ("integrated MoDE", Raposo et al. 2024 sec. 3.5):
    an assignment to one costs nothing and leaves the token on the residual."""

    def __post_init__(self) -> None:
        _positive_int("moe.num_experts", self.num_experts)
        _positive_int("moe.top_k", self.top_k)
        if self.num_noop_experts < 0:
            _fail("moe.num_noop_experts", self.num_noop_experts, "must be >= 0")
        if self.top_k > self.num_experts + self.num_noop_experts:
            _fail("moe.top_k", self.top_k,
                  f"must be <= num_experts + num_noop_experts = {self.num_experts + self.num_noop_experts}")
        # Capacity is a fraction-of-fair-share multiplier; above 0 and finite. The "(0, 1]"
        # applies to MoD capacity; MoE factors above 1 are normal (1.25 is the Switch default).
        for name in ("capacity_factor_train", "capacity_factor_eval"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                _fail(f"moe.{name}", value, "must be a finite number > 0 (use dropless=True for no limit)")
        for name in ("aux_loss_coef", "z_loss_coef"):
            if getattr(self, name) < 0:
                _fail(f"moe.{name}", getattr(self, name), "must be >= 0")


@dataclass(frozen=True)
class MoDConfig:
    """Mixture-of-Depths (Raposo et al. 2024, arXiv 2404.02258): per-sequence top-k block routing."""

    capacity: float = 0.5
    """Fraction of each sequence's tokens that go through a routed block, in (0, 1]."""
    layer_pattern: str = "alternate"
    """Which layers route: "alternate" (1, 3, 5, ...: every other block, as in the paper),
    "all", or an explicit comma-separated list of 0-based layer indices such as "2,5,7"."""
    predictor_hidden: int = 128
    """Width of the causal auxiliary predictor MLP (paper sec. 3.5)."""
    predictor_loss_coef: float = 0.01
    """Weight of the predictor's BCE loss; its input is stop-gradient so it never moves the LM."""

    def __post_init__(self) -> None:
        _in_range("mod.capacity", self.capacity, 0.0, 1.0)
        _positive_int("mod.predictor_hidden", self.predictor_hidden)
        if self.predictor_loss_coef < 0:
            _fail("mod.predictor_loss_coef", self.predictor_loss_coef, "must be >= 0")
        if self.layer_pattern not in ("alternate", "all"):
            try:
                indices = [int(part) for part in self.layer_pattern.split(",")]
            except ValueError:
                _fail("mod.layer_pattern", self.layer_pattern,
                      'must be "alternate", "all" or comma-separated layer indices like "1,3"')
            if any(i < 0 for i in indices):
                _fail("mod.layer_pattern", self.layer_pattern, "layer indices must be >= 0")

    def routed_layers(self, num_layers: int) -> tuple[int, ...]:
        """0-based indices of the layers that route, for a model of `num_layers` layers."""
        if self.layer_pattern == "all":
            return tuple(range(num_layers))
        if self.layer_pattern == "alternate":
            return tuple(range(1, num_layers, 2))
        return tuple(sorted({int(part) for part in self.layer_pattern.split(",")}))


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only Llama-style transformer, optionally with MoE MLPs and/or MoD routing."""

    name: str
    """Preset size name, e.g. "b7"; free-form for custom configs."""
    vocab_size: int
    """Embedding rows. The trainer replaces it with the tokenizer's (padded) vocab."""
    hidden_size: int
    """Model width d."""
    num_layers: int
    """Number of transformer blocks."""
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (grouped-query attention); must divide num_heads."""
    ffn_hidden_size: int
    """SwiGLU inner width (per expert for MoE)."""
    seq_length: int
    """Training sequence length; RoPE works beyond it."""
    rope_theta: float = 10000.0
    """RoPE base (Su et al. 2021)."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    tie_embeddings: bool = False
    """Share the input embedding with the output projection."""
    init_std: float = 0.02
    """Std of the normal init of every weight matrix (see depth_scaled_init)."""
    depth_scaled_init: bool = False
    """Draw the projections that write into the residual stream (attention output, MLP and expert
    down) with init_std / sqrt(2 * num_layers), as GPT-2 and Megatron-LM do, instead of init_std,
    as Hugging Face's Llama does. Off by default: at debug size the flat init reached a lower
    held-out loss (docs/model.md)."""
    moe: MoEConfig | None = None
    """MoE settings; None for a dense MLP."""
    mod: MoDConfig | None = None
    """MoD settings; None for no depth routing."""
    extra: dict = field(default_factory=dict, compare=False)
    """Free-form annotations (not used by the model)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "ffn_hidden_size", "seq_length"):
            _positive_int(name, getattr(self, name))
        if self.hidden_size % self.num_heads:
            _fail("hidden_size", self.hidden_size,
                  f"must be divisible by num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            _fail("num_kv_heads", self.num_kv_heads,
                  f"must divide num_heads={self.num_heads} (grouped-query attention)")
        if self.head_dim % 2:
            _fail("hidden_size", self.hidden_size,
                  f"gives head_dim={self.head_dim}; RoPE rotates pairs of channels so head_dim must be even")
        if not (self.rope_theta > 0):
            _fail("rope_theta", self.rope_theta, "must be > 0")
        if not (self.norm_eps > 0):
            _fail("norm_eps", self.norm_eps, "must be > 0")
        if not (self.init_std > 0):
            _fail("init_std", self.init_std, "must be > 0")
        if not isinstance(self.depth_scaled_init, bool):
            _fail("depth_scaled_init", self.depth_scaled_init, "must be True or False")
        if self.moe is not None and not isinstance(self.moe, MoEConfig):
            _fail("moe", self.moe, "must be a MoEConfig or None")
        if self.mod is not None:
            if not isinstance(self.mod, MoDConfig):
                _fail("mod", self.mod, "must be a MoDConfig or None")
            routed = self.mod.routed_layers(self.num_layers)
            out_of_range = [i for i in routed if i >= self.num_layers]
            if out_of_range:
                _fail("mod.layer_pattern", self.mod.layer_pattern,
                      f"names layers {out_of_range} but the model has layers 0..{self.num_layers - 1}")
            if not routed:
                _fail("mod.layer_pattern", self.mod.layer_pattern,
                      f"selects no layer of a {self.num_layers}-layer model; "
                      'use "all" or list layer indices')

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mode(self) -> str:
        if self.moe is not None and self.mod is not None:
            return "hybrid"
        if self.moe is not None:
            return "moe"
        if self.mod is not None:
            return "mod"
        return "dense"

    def routed_layers(self) -> tuple[int, ...]:
        """Layers that MoD routes (empty without MoD)."""
        return self.mod.routed_layers(self.num_layers) if self.mod is not None else ()

    def replace(self, **changes: Any) -> "ModelConfig":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        if d.get("moe") is not None:
            d["moe"] = MoEConfig(**d["moe"])
        if d.get("mod") is not None:
            d["mod"] = MoDConfig(**d["mod"])
        return cls(**d)
