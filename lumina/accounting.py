"""Parameter and FLOP accounting for any ModelConfig, computed from the shapes (never typed in).

Conventions (see docs/presets.md):
- A multiply-add is 2 FLOPs; training costs 3x the forward (forward + 2x for backward), the
  "6N" rule of Kaplan et al. 2020.
- Attention scores and the weighted sum add 2 * 2 * T * (heads * head_dim) forward FLOPs per token
  per layer over the full context T, the convention of PaLM's MFU (Chowdhery et al. 2022,
  appendix B) and Megatron (Narayanan et al. 2021). It ignores causal masking, like they do.
- MoE counts only the top-k experts a token visits; MoD counts a routed layer's block for the
  `capacity` fraction of tokens, with attention over the `capacity * T` selected tokens, plus the
  router and predictor for every token.
- `params_active` is the parameters a token can touch: MoE's unchosen experts are excluded, MoD
  changes nothing here (every block parameter serves some tokens); MoD's saving is in FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from lumina.config import ModelConfig


@dataclass(frozen=True)
class Accounting:
    params_total: int
    params_active: int
    params_embedding: int
    params_non_embedding: int
    flops_per_token: float         # training FLOPs (fwd + bwd) per token at seq_length
    dense_flops_per_token: float   # the same model without MoD routing
    seq_length: int

    @property
    def mod_flops_ratio(self) -> float:
        """Training FLOPs relative to the same model with every layer dense-routed."""
        return self.flops_per_token / self.dense_flops_per_token

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mod_flops_ratio"] = self.mod_flops_ratio
        return d


def _attn_params(cfg: ModelConfig) -> int:
    d, hd = cfg.hidden_size, cfg.head_dim
    return d * cfg.num_heads * hd * 2 + 2 * d * cfg.num_kv_heads * hd


def _expert_params(cfg: ModelConfig) -> int:
    return 3 * cfg.hidden_size * cfg.ffn_hidden_size


def _router_outputs(cfg: ModelConfig) -> int:
    return cfg.moe.num_experts + cfg.moe.num_noop_experts if cfg.moe else 0


def _mod_extra_params(cfg: ModelConfig) -> int:
    """Router (d -> 1) and predictor (d -> h -> 1, with biases) of one routed layer."""
    d, h = cfg.hidden_size, cfg.mod.predictor_hidden
    return d + (d * h + h) + (h + 1)


def layer_params(cfg: ModelConfig, layer: int) -> int:
    d = cfg.hidden_size
    n = _attn_params(cfg) + 2 * d  # projections + two RMSNorm weights
    if cfg.moe:
        n += d * _router_outputs(cfg) + cfg.moe.num_experts * _expert_params(cfg)
    else:
        n += _expert_params(cfg)
    if layer in cfg.routed_layers():
        n += _mod_extra_params(cfg)
    return n


def layer_forward_flops(cfg: ModelConfig, layer: int, seq_len: int, capacity: float | None) -> float:
    """Forward FLOPs per token of one layer, averaged over all tokens of the sequence."""
    d = cfg.hidden_size
    routed = layer in cfg.routed_layers()
    frac = 1.0
    context = seq_len
    extra = 0.0
    if routed:
        c = cfg.mod.capacity if capacity is None else capacity
        k = max(1, math.ceil(c * seq_len))
        frac, context = k / seq_len, k
        extra = 2.0 * _mod_extra_params(cfg)  # router + predictor run on every token
    mlp = 2.0 * cfg.moe.top_k * _expert_params(cfg) + 2.0 * d * _router_outputs(cfg) if cfg.moe else 2.0 * _expert_params(cfg)
    block = 2.0 * _attn_params(cfg) + 4.0 * context * cfg.num_heads * cfg.head_dim + mlp
    return frac * block + extra


def forward_flops_per_token(cfg: ModelConfig, seq_len: int | None = None,
                            mod_capacity: float | None = None, with_mod: bool = True) -> float:
    """Forward FLOPs per token; `mod_capacity` overrides the config's (e.g. a measured rate)."""
    T = seq_len or cfg.seq_length
    c = cfg if with_mod else cfg.replace(mod=None)
    layers = sum(layer_forward_flops(c, i, T, mod_capacity) for i in range(c.num_layers))
    return layers + 2.0 * cfg.hidden_size * cfg.vocab_size  # LM head; the embedding is a lookup


def account(cfg: ModelConfig, seq_len: int | None = None) -> Accounting:
    T = seq_len or cfg.seq_length
    d, V = cfg.hidden_size, cfg.vocab_size
    embedding = V * d * (1 if cfg.tie_embeddings else 2)
    non_embedding = sum(layer_params(cfg, i) for i in range(cfg.num_layers)) + d  # + final norm
    total = embedding + non_embedding
    inactive = 0
    if cfg.moe:
        unchosen = max(cfg.moe.num_experts - cfg.moe.top_k, 0)
        inactive = cfg.num_layers * unchosen * _expert_params(cfg)
    return Accounting(
        params_total=total,
        params_active=total - inactive,
        params_embedding=embedding,
        params_non_embedding=non_embedding,
        flops_per_token=3.0 * forward_flops_per_token(cfg, T),
        dense_flops_per_token=3.0 * forward_flops_per_token(cfg, T, with_mod=False),
        seq_length=T,
    )
