"""A Lumina checkpoint as a Hugging Face model directory.

dense -> LlamaForCausalLM, moe -> MixtralForCausalLM, mod and hybrid (and moe with no-op experts)
-> the self-contained `modeling_lumina.py` written beside the weights (trust_remote_code=True).
The weights come whole from `load_model_weights`, which merges every TP, PP and EP layout.
The output holds model.safetensors (fp32, every padded vocabulary row kept, so logits match
Lumina's exactly), config.json, generation_config.json (padded rows suppressed: no piece decodes
from them) and the converted tokenizer with its sentencepiece source.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from lumina.config import ModelConfig
from lumina.hf import require_transformers
from lumina.hf import config as hf_config
from lumina.hf import tokenizer as hf_tokenizer
from lumina.hf import weights
from lumina.hf.files import check_output, staged_output

MODELING_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "modeling_lumina.py")


@dataclass(frozen=True)
class Exported:
    path: str
    kind: str            # llama, mixtral or lumina
    cfg: ModelConfig


def export(load_dir: str, out: str, tokenizer_model: str | None = None,
           log: Callable[[str], None] = print) -> Exported:
    """Write the Hugging Face directory `out` (which must not exist or be empty) from the latest
    checkpoint under `load_dir`, trained with the sentencepiece model `tokenizer_model` (None: the
    embedded one)."""
    require_transformers()
    from safetensors.torch import save_file

    from lumina.data import load_tokenizer
    from lumina.train.checkpoint import load_model_weights

    check_output("--hf", out)  # before the (possibly long) read of the weights
    if not os.path.isdir(load_dir):
        raise ValueError(f"--load={load_dir!r}: no such checkpoint directory")
    state, meta = load_model_weights(load_dir)
    cfg = ModelConfig.from_dict(meta["model"])
    tokenizer = load_tokenizer(tokenizer_model)
    if tokenizer.sha256 != meta.get("tokenizer_sha256"):
        raise ValueError(f"--tokenizer-model={tokenizer_model or tokenizer.path!r} is not the tokenizer the checkpoint "
                         "was trained with (sha256 differs); pass the .model file it was trained with")
    kind = hf_config.hf_kind(cfg)
    tensors = weights.to_hf(state, cfg)
    with open(tokenizer.path, "rb") as f:
        sp_model = f.read()
    with staged_output("--hf", out) as tmp:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        hf_config.hf_config(cfg, tokenizer).save_pretrained(tmp)
        generation_config(cfg, tokenizer).save_pretrained(tmp)
        if kind == "lumina":
            shutil.copyfile(MODELING_FILE, os.path.join(tmp, "modeling_lumina.py"))
        hf_tokenizer.write(sp_model, tokenizer.path, tmp)
        # The class itself, not AutoTokenizer: that reads config.json first, whose auto_map makes
        # transformers ask (interactively) whether to trust the modeling file.
        from transformers import PreTrainedTokenizerFast

        hf_tokenizer.check(PreTrainedTokenizerFast.from_pretrained(tmp), tokenizer)
    name = {"llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM",
            "lumina": "LuminaForCausalLM (modeling_lumina.py; load with trust_remote_code=True)"}[kind]
    log(f"exported {cfg.name}/{cfg.mode} at iteration {meta['iteration']} to {out} as {name}")
    if cfg.moe is not None:
        capacity = "dropless" if cfg.moe.dropless else (
            f"capacity factors {cfg.moe.capacity_factor_train} (train) / {cfg.moe.capacity_factor_eval} (eval)")
        log(f"note: the exported MoE is dropless (every token reaches its top-{cfg.moe.top_k} experts), as HF "
            f"Mixtral is; Lumina trained it {capacity}, so its logits equal Lumina's in dropless and causal "
            "(sampling) mode")
    if cfg.mod is not None:
        log("note: MoD layers route by the causal predictor (mod_routing='predictor', as `lumina generate`); "
            "set mod_routing='topk' in config.json for Lumina's training-time top-k routing")
    if cfg.vocab_size > tokenizer.vocab_size:
        log(f"note: the embedding has {cfg.vocab_size} rows for {tokenizer.vocab_size} pieces (padded to a "
            "multiple of 128); generation_config.json suppresses the padding rows")
    eos = hf_tokenizer.piece(sp_model, tokenizer.eos_id)
    log(f"note: the tokenizer adds no BOS; Lumina's documents follow an EOS, so start a prompt with {eos!r} "
        "to condition as `lumina generate` does")
    return Exported(out, kind, cfg)


def generation_config(cfg: ModelConfig, tokenizer):
    from transformers import GenerationConfig

    padding = list(range(tokenizer.vocab_size, cfg.vocab_size))
    settings: dict = {"eos_token_id": tokenizer.eos_id}
    if tokenizer.bos_id >= 0:
        settings["bos_token_id"] = tokenizer.bos_id
    if tokenizer.pad_id >= 0:
        settings["pad_token_id"] = tokenizer.pad_id
    if padding:
        settings["suppress_tokens"] = padding
    if hf_config.hf_kind(cfg) == "lumina":
        settings["use_cache"] = False  # the exported file keeps no KV cache (modeling_lumina.py)
    return GenerationConfig(**settings)
