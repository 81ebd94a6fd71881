"""Checkpoints and Hugging Face directories shared by the tests/hf tests, each built once.

Checkpoints are written with `write_weights` from a freshly initialised debug model whose every
tensor is then perturbed: at init every norm weight is 1 and every predictor bias 0, so a
mapping that swapped two norms or dropped a bias would otherwise go unnoticed.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from lumina.presets import get_preset
from tests.hf.helpers import perturbed


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """ckpt(mode, tokenizer_model=None) -> (checkpoint dir, config, whole state dict)."""
    from lumina.data import load_tokenizer
    from lumina.model import LuminaLM
    from lumina.train.checkpoint import write_weights
    from lumina.train.loop import padded_vocab

    cache: dict = {}

    def get(mode: str, tokenizer_model: str | None = None):
        if (mode, tokenizer_model) not in cache:
            tokenizer = load_tokenizer(tokenizer_model)
            cfg = get_preset("debug", mode).replace(vocab_size=padded_vocab(tokenizer.vocab_size))
            state = perturbed(LuminaLM(cfg, init_seed=1).state_dict(), seed=2)
            path = str(tmp_path_factory.mktemp(f"ckpt-{mode}"))
            write_weights(path, cfg, state, {"tokenizer_sha256": tokenizer.sha256})
            cache[mode, tokenizer_model] = (path, cfg, state)
        return cache[mode, tokenizer_model]

    return get


@pytest.fixture(scope="session")
def exported(ckpt, tmp_path_factory):
    """exported(mode) -> Hugging Face directory written by `lumina export` from ckpt(mode)."""
    from lumina.cli import main

    cache: dict = {}

    def get(mode: str) -> str:
        if mode not in cache:
            out = os.path.join(str(tmp_path_factory.mktemp(f"hf-{mode}")), "out")
            assert main(["export", "--load", ckpt(mode)[0], "--hf", out]) == 0
            cache[mode] = out
        return cache[mode]

    return get


@pytest.fixture(scope="session")
def hf_source(tmp_path_factory):
    """hf_source(kind) -> a Hugging Face directory saved by transformers itself: a Llama or
    Mixtral of the debug preset's shape, tied embeddings, with the embedded tokenizer.model."""
    import transformers

    from lumina.data.tokenizer import EMBEDDED_TOKENIZER

    cache: dict = {}

    def get(kind: str) -> str:
        if kind not in cache:
            p = get_preset("debug", "dense")
            common = dict(vocab_size=p.vocab_size, hidden_size=p.hidden_size, intermediate_size=p.ffn_hidden_size,
                          num_hidden_layers=p.num_layers, num_attention_heads=p.num_heads,
                          num_key_value_heads=p.num_kv_heads, max_position_embeddings=p.seq_length,
                          rms_norm_eps=p.norm_eps, rope_theta=p.rope_theta, tie_word_embeddings=True,
                          bos_token_id=1, eos_token_id=2, pad_token_id=3)
            torch.manual_seed(3)
            if kind == "llama":
                model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
            else:
                model = transformers.MixtralForCausalLM(transformers.MixtralConfig(
                    **common, num_local_experts=8, num_experts_per_tok=2))
            with torch.no_grad():
                for p_ in model.parameters():  # norms start at 1: make every tensor distinct
                    p_.add_(0.05 * torch.randn_like(p_))
            path = str(tmp_path_factory.mktemp(f"src-{kind}"))
            model.save_pretrained(path)
            shutil.copyfile(EMBEDDED_TOKENIZER, os.path.join(path, "tokenizer.model"))
            cache[kind] = path
        return cache[kind]

    return get
