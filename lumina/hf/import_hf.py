"""A Hugging Face Llama or Mixtral model as a Lumina checkpoint, for continued pre-training.

The config must match a Lumina preset's block shape (lumina.hf.config.from_hf), the weights are
read from safetensors only, and the tokenizer is the sentencepiece model Lumina will train with
(the directory's tokenizer.model, as `lumina export` writes, or --tokenizer-model): its padded
size must be the model's vocabulary, since the trainer sizes the embedding from it.
The checkpoint is weights-only at iteration 0 (lumina.train.checkpoint.write_weights).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from lumina.config import ModelConfig
from lumina.hf import require_transformers
from lumina.hf import config as hf_config
from lumina.hf import weights
from lumina.hf.files import read_hf_config, read_tensors, weight_files

KINDS = ("llama", "mixtral")


@dataclass(frozen=True)
class ModelWeights:
    """A whole model ready for `write`: config, fp32 LuminaLM tensors and its tokenizer's identity."""

    cfg: ModelConfig
    state: dict[str, torch.Tensor]
    tokenizer_sha256: str
    tokenizer_path: str | None        # None: known by its checksum only


def read(hf_dir: str, tokenizer_model: str | None = None, seq_length: int | None = None,
         moe_dropless: bool = False) -> ModelWeights:
    """The Lumina config, whole LuminaLM weights and tokenizer of the HF model in `hf_dir`."""
    require_transformers()
    import transformers

    from lumina.data import load_tokenizer
    from lumina.train.loop import padded_vocab

    flag = f"--hf={hf_dir!r}"
    raw = read_hf_config("--hf", hf_dir)
    if raw.get("model_type") not in KINDS:
        raise ValueError(f"{flag}: config.json has model_type={raw.get('model_type')!r}; "
                         f"import reads {' or '.join(KINDS)}")
    files = weight_files("--hf", hf_dir)
    if seq_length is not None and seq_length <= 0:
        raise ValueError(f"--seq-length={seq_length} is invalid: must be > 0")
    # transformers' own config class fills the defaults of fields the file leaves out (no code runs:
    # llama and mixtral are built-in types).
    config_class = transformers.LlamaConfig if raw["model_type"] == "llama" else transformers.MixtralConfig
    try:
        hf = config_class.from_pretrained(hf_dir)
    except (ValueError, TypeError, KeyError, OSError) as exc:  # transformers' own validation of the fields
        raise ValueError(f"{flag}: transformers refuses config.json ({' '.join(str(exc).split())})") from None
    cfg = hf_config.from_hf(hf, flag, seq_length, moe_dropless)
    if tokenizer_model is None:
        tokenizer_model = os.path.join(hf_dir, "tokenizer.model")
        if not os.path.isfile(tokenizer_model):
            raise ValueError(f"{flag} has no tokenizer.model; pass --tokenizer-model FILE, the sentencepiece "
                             "model Lumina is to train with")
    tokenizer = load_tokenizer(tokenizer_model)
    if padded_vocab(tokenizer.vocab_size) != cfg.vocab_size:
        raise ValueError(f"tokenizer {tokenizer_model!r} has {tokenizer.vocab_size} pieces, padded to "
                         f"{padded_vocab(tokenizer.vocab_size)}, but the model's vocab_size is "
                         f"{cfg.vocab_size}; pass --tokenizer-model, the tokenizer the model was trained with")
    tensors = read_tensors(flag, files)
    # Buffers some older checkpoints saved: recomputed by every implementation, not weights.
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings and "lm_head.weight" in tensors:
        if not torch.equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"]):
            raise ValueError(f"{flag}: tie_word_embeddings is true but lm_head.weight differs from the embedding")
        del tensors["lm_head.weight"]
    return ModelWeights(cfg, weights.from_hf(tensors, cfg, flag), tokenizer.sha256, tokenizer.path)


def write(out: str, model: ModelWeights, source: dict) -> str:
    """The Lumina checkpoint directory `out` (staged, then renamed) holding `model`."""
    from lumina.hf.files import staged_output
    from lumina.train.checkpoint import write_weights

    extra = {"preset": model.cfg.name, "mode": model.cfg.mode, "tokenizer_sha256": model.tokenizer_sha256,
             "source": source}
    with staged_output("--out", out) as tmp:
        write_weights(tmp, model.cfg, model.state, extra)
    return out


def train_command(out: str, model: ModelWeights) -> str:
    """The `lumina train` line that continues from the checkpoint at `out`."""
    from lumina.data import load_tokenizer

    parts = ["lumina", "train", *hf_config.train_flags(model.cfg), "--load", out]
    if model.tokenizer_sha256 != load_tokenizer().sha256:
        parts += ["--tokenizer-model", model.tokenizer_path or "<the .model it was trained with>"]
    return " ".join(parts)
