"""Lumina's parameter names and layouts against Hugging Face's, both ways.

Hugging Face names (the same for LlamaForCausalLM, MixtralForCausalLM as transformers saves it,
and the exported Lumina modeling file):

| Lumina | Hugging Face |
| --- | --- |
| `embed.weight` | `model.embed_tokens.weight` |
| `lm_head.weight` (untied only) | `lm_head.weight` |
| `norm.weight` | `model.norm.weight` |
| `blocks.i.attn_norm.weight` / `mlp_norm.weight` | `model.layers.i.input_layernorm.weight` / `post_attention_layernorm.weight` |
| `blocks.i.attn.w{q,k,v,o}.weight` | `model.layers.i.self_attn.{q,k,v,o}_proj.weight` |
| `blocks.i.mlp.w_{gate,up,down}.weight` | `model.layers.i.mlp.{gate,up,down}_proj.weight` |
| `blocks.i.mlp.router.weight` | `model.layers.i.block_sparse_moe.gate.weight` |
| `blocks.i.mlp.w_{gate,up,down}[e]` (in, out) | `model.layers.i.block_sparse_moe.experts.e.w{1,3,2}.weight` (out, in), transposed |
| `blocks.i.router.weight` (MoD) | `model.layers.i.mod_router.weight` |
| `blocks.i.predictor.{0,2}.{weight,bias}` | `model.layers.i.mod_predictor.{0,2}.{weight,bias}` |

A MoD-routed layer's block sits one level down in Lumina (`blocks.i.block.attn...`). q and k need
no permutation: Lumina's RoPE is rotate-half, as Hugging Face's Llama (lumina.ops.fused.rope_reference).
Every transform is a transpose or a rename, so values cross unchanged, bit for bit.
"""

from __future__ import annotations

import torch

from lumina.config import ModelConfig

_ATTN = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj"}
_MLP = {"w_gate": "gate_proj", "w_up": "up_proj", "w_down": "down_proj"}
_EXPERT = {"w_gate": "w1", "w_up": "w3", "w_down": "w2"}


def _pairs(cfg: ModelConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """((Lumina key, HF key) renamed as is, (Lumina stacked key, HF key pattern with {e}, _) experts)."""
    plain = [("embed.weight", "model.embed_tokens.weight"), ("norm.weight", "model.norm.weight")]
    if not cfg.tie_embeddings:
        plain.append(("lm_head.weight", "lm_head.weight"))
    experts = []
    routed = set(cfg.routed_layers())
    for i in range(cfg.num_layers):
        ours, theirs = f"blocks.{i}.block." if i in routed else f"blocks.{i}.", f"model.layers.{i}."
        plain += [(ours + "attn_norm.weight", theirs + "input_layernorm.weight"),
                  (ours + "mlp_norm.weight", theirs + "post_attention_layernorm.weight")]
        plain += [(f"{ours}attn.{a}.weight", f"{theirs}self_attn.{b}.weight") for a, b in _ATTN.items()]
        if cfg.moe is None:
            plain += [(f"{ours}mlp.{a}.weight", f"{theirs}mlp.{b}.weight") for a, b in _MLP.items()]
        else:
            plain.append((ours + "mlp.router.weight", theirs + "block_sparse_moe.gate.weight"))
            experts += [(f"{ours}mlp.{a}", theirs + "block_sparse_moe.experts.{e}." + b + ".weight", a)
                        for a, b in _EXPERT.items()]
        if i in routed:
            plain.append((f"blocks.{i}.router.weight", theirs + "mod_router.weight"))
            plain += [(f"blocks.{i}.predictor.{j}.{p}", f"{theirs}mod_predictor.{j}.{p}")
                      for j in (0, 2) for p in ("weight", "bias")]
    return plain, experts


def to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF tensors (contiguous, for safetensors) from a whole LuminaLM state dict. Consumes `state`
    entry by entry so the two copies of the model never coexist whole."""
    plain, experts = _pairs(cfg)
    _check_keys(set(state), {k for k, _ in plain} | {k for k, _, _ in experts}, "the Lumina checkpoint")
    out = {}
    for ours, theirs in plain:
        out[theirs] = state.pop(ours).contiguous()
    for ours, pattern, _ in experts:
        stacked = state.pop(ours)                               # (E, in, out)
        for e in range(stacked.shape[0]):
            out[pattern.format(e=e)] = stacked[e].t().contiguous()  # (out, in), nn.Linear's layout
    return out


def from_hf(tensors: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> dict[str, torch.Tensor]:
    """A whole LuminaLM state dict from HF tensors; missing or unknown names are refused, naming
    `source`."""
    plain, experts = _pairs(cfg)
    num_experts = cfg.moe.num_experts if cfg.moe is not None else 0
    expected = {k for _, k in plain} | {p.format(e=e) for _, p, _ in experts for e in range(num_experts)}
    _check_keys(set(tensors), expected, source)
    state = {ours: tensors[theirs] for ours, theirs in plain}
    for ours, pattern, _ in experts:
        state[ours] = torch.stack([tensors[pattern.format(e=e)].t() for e in range(num_experts)])
    return state


def _check_keys(have: set[str], want: set[str], source: str) -> None:
    def named(names: list[str]) -> str:
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    missing, unknown = sorted(want - have), sorted(have - want)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} weights ({named(missing)})")
        if unknown:
            parts.append(f"has {len(unknown)} it should not ({named(unknown)})")
        raise ValueError(f"{source} {' and '.join(parts)} for this model")
