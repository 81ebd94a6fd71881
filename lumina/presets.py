"""The eight preset sizes x four modes, as data.

A size's name is its dense model's non-embedding parameter count (within +-15%, checked by a
test). Shapes follow Llama conventions: SwiGLU, RMSNorm, RoPE, grouped-query attention from b1
up, a 32k vocabulary from debug_200m up. Concrete anchors: b1 is Llama-3.2-1B's block shape,
b7 is Llama-3-8B's block shape (arXiv 2407.21783, table 3), b300 uses Llama-3.1-405B's width,
heads and FFN width with 96 instead of 126 layers.

MoE replaces every MLP by 8 experts of the dense MLP's width, top-2 (Mixtral-style,
arXiv 2401.04088). MoD capacities per size are the ones the original benchmark table used.
"""

from __future__ import annotations

from lumina.config import MODES, ModelConfig, MoDConfig, MoEConfig

# name: (hidden, layers, heads, kv_heads, ffn, vocab, seq_length)
_SHAPES: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "debug":      (96,     4,   4,  2,   320,  2048,  128),
    "debug_200m": (1024,  16,  16, 16,  2816, 32000, 1024),
    "b1":         (2048,  16,  32,  8,  8192, 32000, 2048),
    "b7":         (4096,  32,  32,  8, 14336, 32000, 4096),
    "b50":        (8192,  72,  64,  8, 22016, 32000, 4096),
    "b100":       (10240, 90,  80,  8, 28672, 32000, 4096),
    "b200":       (12288, 120, 96,  8, 36864, 32000, 4096),
    "b300":       (16384, 96, 128,  8, 53248, 32000, 4096),
}

# Target dense non-embedding parameter count each name promises.
NOMINAL_PARAMS: dict[str, float] = {
    "debug": 0.5e6, "debug_200m": 200e6, "b1": 1e9, "b7": 7e9,
    "b50": 50e9, "b100": 100e9, "b200": 200e9, "b300": 300e9,
}

# MoD capacity per size, from the original benchmark table.
MOD_CAPACITY: dict[str, float] = {
    "debug": 0.5, "debug_200m": 0.5, "b1": 0.6, "b7": 0.5,
    "b50": 0.45, "b100": 0.42, "b200": 0.40, "b300": 0.38,
}

SIZES: tuple[str, ...] = tuple(_SHAPES)


def get_preset(size: str, mode: str = "dense") -> ModelConfig:
    """The config for one size and mode; unknown names raise ValueError listing the valid ones."""
    if size not in _SHAPES:
        raise ValueError(f"preset={size!r} is unknown: choose one of {', '.join(SIZES)}")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is unknown: choose one of {', '.join(MODES)}")
    hidden, layers, heads, kv_heads, ffn, vocab, seq = _SHAPES[size]
    moe = MoEConfig(num_experts=8, top_k=2) if mode in ("moe", "hybrid") else None
    mod = MoDConfig(capacity=MOD_CAPACITY[size]) if mode in ("mod", "hybrid") else None
    return ModelConfig(
        name=size, vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
        num_kv_heads=kv_heads, ffn_hidden_size=ffn, seq_length=seq,
        # Small models tie embeddings (the vocab matrix dominates them); large ones do not.
        tie_embeddings=size in ("debug", "debug_200m"),
        moe=moe, mod=mod,
    )


def all_presets() -> list[ModelConfig]:
    """All 32 configs, size-major."""
    return [get_preset(size, mode) for size in SIZES for mode in MODES]
