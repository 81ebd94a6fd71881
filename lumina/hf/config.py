"""Model configs across the border: Lumina's ModelConfig to Hugging Face's and back.

Export writes `LlamaConfig` (dense), `MixtralConfig` (moe) or the exported file's `LuminaConfig`
(mod, hybrid, and moe with no-op experts, which Mixtral cannot express). Import reads a Llama or
Mixtral config and finds the Lumina preset with the same block shape, because `lumina train
--load` refuses a checkpoint whose config is not what its flags resolve to
(lumina.train.checkpoint.check_compatible); the fields train flags can set (layers, sequence
length, experts, top-k, dropless) may differ from the preset, and the command to continue says so.
"""

from __future__ import annotations

from lumina.config import ModelConfig, MoEConfig
from lumina.presets import SIZES, get_preset

# (Lumina field, Hugging Face field) that must equal a preset's: no train flag changes them.
_FIXED = (("hidden_size", "hidden_size"), ("num_heads", "num_attention_heads"),
          ("num_kv_heads", "num_key_value_heads"), ("ffn_hidden_size", "intermediate_size"),
          ("tie_embeddings", "tie_word_embeddings"), ("rope_theta", "rope_theta"), ("norm_eps", "rms_norm_eps"))


def hf_kind(cfg: ModelConfig) -> str:
    """Which Hugging Face class holds this model: llama, mixtral, or the exported lumina file."""
    if cfg.mod is not None or (cfg.moe is not None and cfg.moe.num_noop_experts):
        return "lumina"
    return "mixtral" if cfg.moe is not None else "llama"


def _common(cfg: ModelConfig, tokenizer) -> dict:
    def token(i: int) -> int | None:
        return i if i >= 0 else None

    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.seq_length,
                rms_norm_eps=cfg.norm_eps, initializer_range=cfg.init_std, tie_word_embeddings=cfg.tie_embeddings,
                bos_token_id=token(tokenizer.bos_id), eos_token_id=token(tokenizer.eos_id),
                pad_token_id=token(tokenizer.pad_id))


def hf_config(cfg: ModelConfig, tokenizer):
    """The transformers config object (saved as config.json) for `cfg` with `tokenizer`'s ids."""
    import transformers

    kind = hf_kind(cfg)
    common = _common(cfg, tokenizer)
    if kind == "llama":
        return transformers.LlamaConfig(**common, rope_theta=cfg.rope_theta, hidden_act="silu", attention_bias=False,
                                        mlp_bias=False, architectures=["LlamaForCausalLM"], dtype="float32")
    if kind == "mixtral":
        # Lumina's balance loss is per layer, summed over layers, 1 for a uniform router; HF Mixtral's
        # pools the layers and counts each of the k choices (k for a uniform router). Scaling by
        # layers / k gives a layer's router the same gradient from either loss on even routing.
        aux = cfg.moe.aux_loss_coef * cfg.num_layers / cfg.moe.top_k
        return transformers.MixtralConfig(**common, rope_theta=cfg.rope_theta, hidden_act="silu",
                                          num_local_experts=cfg.moe.num_experts, num_experts_per_tok=cfg.moe.top_k,
                                          router_aux_loss_coef=aux, sliding_window=None,
                                          architectures=["MixtralForCausalLM"], dtype="float32")
    from lumina.hf.modeling_lumina import LuminaConfig

    moe, mod = cfg.moe, cfg.mod
    return LuminaConfig(
        **common, lumina_rope_theta=cfg.rope_theta,
        num_local_experts=moe.num_experts if moe else 0, num_experts_per_tok=moe.top_k if moe else 2,
        num_noop_experts=moe.num_noop_experts if moe else 0,
        mod_layers=list(cfg.routed_layers()), mod_capacity=mod.capacity if mod else 0.5,
        mod_predictor_hidden=mod.predictor_hidden if mod else 128, mod_routing="predictor",
        architectures=["LuminaForCausalLM"], dtype="float32",
        auto_map={"AutoConfig": "modeling_lumina.LuminaConfig",
                  "AutoModelForCausalLM": "modeling_lumina.LuminaForCausalLM"})


def _rope_theta(hf, flag: str) -> float:
    params = getattr(hf, "rope_parameters", None)
    if params is None:  # transformers 4: rope_theta and rope_scaling
        if getattr(hf, "rope_scaling", None):
            raise ValueError(f"{flag}: rope_scaling={hf.rope_scaling!r}; Lumina has plain RoPE only")
        return float(hf.rope_theta)
    if params.get("rope_type", "default") != "default":
        raise ValueError(f"{flag}: rope_type={params['rope_type']!r}; Lumina has plain RoPE only (default)")
    return float(params["rope_theta"])


def from_hf(hf, flag: str, seq_length: int | None, moe_dropless: bool) -> ModelConfig:
    """The Lumina config of a transformers Llama/Mixtral config, on the preset of the same shape.
    `flag` (`--hf=DIR`) names the source in errors."""
    mode = "moe" if hf.model_type == "mixtral" else "dense"
    unsupported = {"hidden_act": (getattr(hf, "hidden_act", "silu"), "silu"),
                   "attention_bias": (bool(getattr(hf, "attention_bias", False)), False),
                   "mlp_bias": (bool(getattr(hf, "mlp_bias", False)), False)}
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    unsupported["head_dim"] = (head_dim, hf.hidden_size // hf.num_attention_heads)
    for name, (value, needed) in unsupported.items():
        if value != needed:
            raise ValueError(f"{flag}: {name}={value!r}; Lumina's blocks need {name}={needed!r}")
    values = {"hidden_size": hf.hidden_size, "num_heads": hf.num_attention_heads,
              "num_kv_heads": hf.num_key_value_heads or hf.num_attention_heads,
              "ffn_hidden_size": hf.intermediate_size, "tie_embeddings": bool(hf.tie_word_embeddings),
              "rope_theta": _rope_theta(hf, flag), "norm_eps": float(hf.rms_norm_eps)}
    preset = _matching_preset(values, mode, flag)
    cfg = preset.replace(num_layers=hf.num_hidden_layers, vocab_size=hf.vocab_size,
                         seq_length=seq_length or preset.seq_length)
    window = getattr(hf, "sliding_window", None)
    if window is not None and window < cfg.seq_length:
        raise ValueError(f"{flag}: sliding_window={window} is shorter than the sequence length "
                         f"{cfg.seq_length}; Lumina attends over the whole sequence")
    if mode == "moe":
        moe = MoEConfig(**{**preset.moe.__dict__, "num_experts": hf.num_local_experts,
                           "top_k": hf.num_experts_per_tok, "dropless": moe_dropless or preset.moe.dropless})
        cfg = cfg.replace(moe=moe)
    return cfg


def _matching_preset(values: dict, mode: str, flag: str) -> ModelConfig:
    hf_names = dict(_FIXED)
    diffs = {}
    for size in SIZES:
        preset = get_preset(size, mode)
        diffs[size] = [(f, values[f], getattr(preset, f)) for f, _ in _FIXED if values[f] != getattr(preset, f)]
        if not diffs[size]:
            return preset
    nearest = min(SIZES, key=lambda s: (len(diffs[s]), abs(get_preset(s).hidden_size - values["hidden_size"])))
    told = ", ".join(f"{hf_names[f]}={v!r} (preset {p!r})" for f, v, p in diffs[nearest])
    raise ValueError(f"{flag}: no Lumina preset has this model's shape; the nearest, {nearest}, differs in {told}")


# (ModelConfig section or None for the top level, field, `lumina train` flag): the model settings
# a train flag changes.
_TRAIN_FLAGS = ((None, "seq_length", "--seq-length"), (None, "num_layers", "--num-layers"),
                (None, "depth_scaled_init", "--depth-scaled-init"),
                ("moe", "num_experts", "--num-experts"), ("moe", "top_k", "--moe-router-topk"),
                ("moe", "capacity_factor_train", "--moe-capacity-factor"),
                ("moe", "capacity_factor_eval", "--moe-eval-capacity-factor"),
                ("moe", "dropless", "--moe-dropless"), ("moe", "aux_loss_coef", "--moe-aux-loss-coeff"),
                ("moe", "z_loss_coef", "--moe-z-loss-coeff"), ("moe", "num_noop_experts", "--moe-noop-experts"),
                ("mod", "capacity", "--mod-capacity"), ("mod", "layer_pattern", "--mod-layer-pattern"),
                ("mod", "predictor_loss_coef", "--mod-predictor-loss-coeff"))


def train_flags(cfg: ModelConfig) -> list[str]:
    """The `lumina train` arguments under which the trainer resolves exactly `cfg` (its vocabulary
    comes from the tokenizer), so that `--load` of a checkpoint of `cfg` is accepted. Checked by
    resolving them through the trainer's own parser."""
    from lumina.pretrain import build_parser
    from lumina.train.args import model_config

    preset = get_preset(cfg.name, cfg.mode)
    argv = ["--preset", cfg.name, "--mode", cfg.mode]
    for section, field, flag in _TRAIN_FLAGS:
        if section is not None and getattr(cfg, section) is None:
            continue
        ours = getattr(cfg if section is None else getattr(cfg, section), field)
        theirs = getattr(preset if section is None else getattr(preset, section), field)
        if ours != theirs:
            argv += [flag] if isinstance(ours, bool) else [flag, str(ours)]
    resolved = model_config(build_parser().parse_args(argv)).replace(vocab_size=cfg.vocab_size)
    if resolved != cfg:
        diff = [k for k, v in cfg.to_dict().items() if resolved.to_dict()[k] != v]
        raise ValueError(f"no `lumina train` flags give this {cfg.name}/{cfg.mode} model: {', '.join(diff)} differ")
    return argv
