"""Sparse upcycling (Komatsuzaki et al. 2022, arXiv 2212.05055): a dense model becomes moe, mod or
hybrid of the same preset.

Every weight of the dense model is kept; each MoE expert of a layer starts as a copy of that
layer's dense FFN, and only what the dense model lacks is new: the MoE router and the MoD router
and predictor, drawn exactly as Lumina initialises them (lumina.model.init, from the seed and
the parameter's name). Because top-k weights are renormalised to sum to 1, a token's MoE output
is then sum_k w_k FFN(x) = FFN(x) whatever the router picks, so an upcycled moe model computes
the dense model's function at step 0, as long as no token is dropped (dropless, or causal mode).
MoD changes the function from the start: a routed block's update is gated and skipped tokens
bypass it.
"""

from __future__ import annotations

import torch
from torch import nn

from lumina.config import ModelConfig
from lumina.model import LuminaLM
from lumina.model.init import initialize
from lumina.presets import get_preset

MODES = ("moe", "mod", "hybrid")
# Fields a dense checkpoint may carry apart from its preset (set by train flags); the target
# keeps them.
_CARRIED = ("vocab_size", "seq_length", "num_layers", "depth_scaled_init")


def target_config(dense: ModelConfig, mode: str, flag: str) -> ModelConfig:
    """The `mode` config of the dense model's preset, with the dense model's flag-set fields."""
    if mode not in MODES:
        raise ValueError(f"--mode={mode!r} is invalid: upcycling makes one of {', '.join(MODES)}")
    if dense.mode != "dense":
        raise ValueError(f"{flag} is a {dense.name}/{dense.mode} model; upcycling starts from a dense one")
    base = get_preset(dense.name, "dense").replace(**{f: getattr(dense, f) for f in _CARRIED})
    if base != dense:
        diff = [k for k, v in dense.to_dict().items() if base.to_dict()[k] != v]
        raise ValueError(f"{flag} differs from preset {dense.name} in {', '.join(diff)}; upcycling builds on "
                         "the preset")
    return get_preset(dense.name, mode).replace(**{f: getattr(dense, f) for f in _CARRIED})


def _source_key(key: str, routed: set[int]) -> str:
    """The dense key a target key copies: routed layers hold their block one level down."""
    parts = key.split(".")
    if parts[0] == "blocks" and int(parts[1]) in routed and parts[2] == "block":
        del parts[2]
    return ".".join(parts)


@torch.no_grad()
def upcycle(dense_state: dict[str, torch.Tensor], dense_cfg: ModelConfig, mode: str, seed: int,
            flag: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, whole state dict) of the upcycled model. `flag` names the source in errors."""
    cfg = target_config(dense_cfg, mode, flag)
    with torch.device("meta"):  # names, shapes and init marks only: no memory for the whole model
        meta_model = LuminaLM(cfg)
    routed = set(cfg.routed_layers())
    state: dict[str, torch.Tensor] = {}
    fresh: dict[str, nn.Parameter] = {}
    used = set()
    for name, p in meta_model.named_parameters():
        source = _source_key(name, routed)
        if getattr(p, "expert_offset", None) is not None:      # (E, in, out) stacked experts
            source += ".weight"
            dense = dense_state[source].t()                      # nn.Linear (out, in) -> (in, out)
            state[name] = dense.unsqueeze(0).repeat(p.shape[0], 1, 1)
            used.add(source)
        elif source in dense_state:
            state[name] = dense_state[source].clone()
            used.add(source)
        else:                                                    # routers and predictors
            # Lumina starts every unmarked parameter (the predictor's biases) at zero and draws the
            # marked ones from (seed, name); `initialize` reads both marks from the copy.
            if getattr(p, "init_std", None) is None and not name.endswith(".bias"):
                raise RuntimeError(f"{name}: no dense weight and no init rule to draw it from")
            q = nn.Parameter(torch.zeros(p.shape))
            for attr in ("init_name", "init_std"):
                if hasattr(p, attr):
                    setattr(q, attr, getattr(p, attr))
            fresh[name] = q
    holder = nn.Module()
    for name, q in fresh.items():
        holder.register_parameter(name.replace(".", "_"), q)
    initialize(holder, seed)  # draws by init_name, so the values are LuminaLM(cfg, init_seed=seed)'s
    state.update({name: q.detach() for name, q in fresh.items()})
    unused = sorted(set(dense_state) - used)
    if unused:
        raise ValueError(f"{flag} has weights the {cfg.mode} model has no place for: {', '.join(unused[:3])}")
    return cfg, state


def read_dense(load: str | None, hf: str | None, tokenizer_model: str | None = None,
               seq_length: int | None = None):
    """(dense model as lumina.hf.import_hf.ModelWeights, flag naming it, provenance) from a Lumina
    checkpoint (`load`) or a Hugging Face Llama directory (`hf`)."""
    import os

    from lumina.hf import import_hf
    from lumina.train.checkpoint import load_model_weights

    if hf is not None:
        return import_hf.read(hf, tokenizer_model, seq_length), f"--hf={hf!r}", {"hf": hf}
    if tokenizer_model is not None or seq_length is not None:
        raise ValueError("--tokenizer-model and --seq-length apply to --hf only; a checkpoint keeps its own")
    if not os.path.isdir(load):
        raise ValueError(f"--load={load!r}: no such checkpoint directory")
    state, meta = load_model_weights(load)
    dense = import_hf.ModelWeights(ModelConfig.from_dict(meta["model"]), state, meta["tokenizer_sha256"], None)
    return dense, f"--load={load!r}", {"lumina": load, "iteration": meta["iteration"]}
