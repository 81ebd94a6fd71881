"""`lumina import`: a Hugging Face Llama or Mixtral becomes a Lumina checkpoint the trainer
accepts, bit for bit, and unusable sources are refused with one line."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from tests.hf.helpers import (LOGIT_TOL, assert_trainer_accepts, continue_command, dropless, lumina_model,
                              max_diff, one_line_error, run_cli, tokens)


def safetensors_of(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


def config_of(path: str) -> dict:
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config.pop("transformers_version", None)
    return config


@pytest.mark.parametrize("kind", ["llama", "mixtral"])
def test_round_trip_is_bit_identical(hf_source, tmp_path, capsys, kind):
    """HF -> Lumina -> HF gives back every tensor bit for bit and the same config; the Lumina
    model in between computes HF's logits."""
    import transformers

    from lumina.config import ModelConfig
    from lumina.train.checkpoint import load_model_weights

    src, ckpt_dir, out = hf_source(kind), str(tmp_path / "ckpt"), str(tmp_path / "back")
    code, stdout, err = run_cli(["import", "--hf", src, "--out", ckpt_dir], capsys)
    assert code == 0, err
    assert_trainer_accepts(stdout, ckpt_dir)
    assert run_cli(["export", "--load", ckpt_dir, "--hf", out], capsys)[0] == 0

    before, after = safetensors_of(src), safetensors_of(out)
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name
    before_config, after_config = config_of(src), config_of(out)
    if kind == "mixtral":
        # A training setting whose loss Lumina defines differently; import keeps the preset's
        # recipe (lumina.hf.config.hf_config says how export converts it).
        del before_config["router_aux_loss_coef"], after_config["router_aux_loss_coef"]
    assert after_config == before_config

    state, meta = load_model_weights(ckpt_dir)
    cfg = ModelConfig.from_dict(meta["model"])
    assert cfg.mode == ("dense" if kind == "llama" else "moe")
    hf = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    ids = tokens(cfg.vocab_size)
    with torch.no_grad():
        diff = max_diff(lumina_model(dropless(cfg), state)(ids).logits, hf(ids).logits)
    print(f"{kind} import: max |logit diff| Lumina vs HF = {diff:.3e}")
    assert diff <= LOGIT_TOL


def test_import_names_what_the_trainer_needs(hf_source, tmp_path, capsys):
    """A Llama with more layers and a longer sequence than the preset imports, and the printed
    command carries the flags that make the trainer's config match."""
    import transformers

    src = str(tmp_path / "six")
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_source("llama"))
    config = model.config
    config.num_hidden_layers = 6
    transformers.LlamaForCausalLM(config).save_pretrained(src)
    shutil.copyfile(os.path.join(hf_source("llama"), "tokenizer.model"), os.path.join(src, "tokenizer.model"))
    ckpt_dir = str(tmp_path / "ckpt")
    code, stdout, err = run_cli(["import", "--hf", src, "--out", ckpt_dir, "--seq-length", "256"], capsys)
    assert code == 0, err
    command = continue_command(stdout)
    assert "--num-layers" in command and "--seq-length" in command
    assert_trainer_accepts(stdout, ckpt_dir)


def test_import_refuses_what_it_cannot_take(hf_source, tmp_path, capsys):
    import transformers

    src = hf_source("llama")

    def refused(hf_dir: str, *needles: str, out: str | None = None) -> None:
        out = out or str(tmp_path / "out")
        one_line_error(*run_cli(["import", "--hf", hf_dir, "--out", out], capsys)[::2], *needles)

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("not a model")
    refused(str(plain), "--hf", str(plain), "config.json")
    refused(str(tmp_path / "missing"), "--hf", "no such directory")

    def variant(name: str, **changes) -> str:
        path = tmp_path / name
        shutil.copytree(src, path)
        config = json.loads((path / "config.json").read_text())
        config.update(changes)
        (path / "config.json").write_text(json.dumps(config))
        return str(path)

    refused(variant("gpt2", model_type="gpt2"), "model_type='gpt2'", "llama or mixtral")
    refused(variant("wide", intermediate_size=512), "intermediate_size=512", "preset 320")
    refused(variant("untied", tie_word_embeddings=False), "tie_word_embeddings=False")
    refused(variant("biased", attention_bias=True), "attention_bias")
    refused(variant("scaled", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
            "rope_type='linear'")

    pickled = tmp_path / "pickled"
    shutil.copytree(src, pickled)
    os.rename(pickled / "model.safetensors", pickled / "pytorch_model.bin")
    refused(str(pickled), "pytorch_model.bin", "pickle")

    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(src, no_tokenizer)
    os.remove(no_tokenizer / "tokenizer.model")
    refused(str(no_tokenizer), "tokenizer.model", "--tokenizer-model")

    bigger = tmp_path / "bigger-vocab"
    model = transformers.AutoModelForCausalLM.from_pretrained(src)
    model.resize_token_embeddings(2176)
    model.save_pretrained(bigger)
    shutil.copyfile(os.path.join(src, "tokenizer.model"), bigger / "tokenizer.model")
    capsys.readouterr()  # transformers' progress bars
    refused(str(bigger), "2048 pieces", "2176")

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("")
    refused(src, "--out", str(taken), "not empty", out=str(taken))
    assert not os.path.exists(tmp_path / "out")  # no refusal left a checkpoint behind


@pytest.mark.slow  # the default run checks that the printed flags resolve the checkpoint's config (check_compatible)
def test_training_continues_from_an_import(hf_source, tmp_path, capsys):
    from lumina.train.checkpoint import load_model_weights
    from tests.train.runs import train, train_losses

    ckpt_dir = str(tmp_path / "ckpt")
    code, stdout, err = run_cli(["import", "--hf", hf_source("llama"), "--out", ckpt_dir, "--seq-length", "64"], capsys)
    assert code == 0, err
    flags = continue_command(stdout)[2:]
    assert "--seq-length" in flags
    run = str(tmp_path / "run")
    assert train(run, *flags, "--train-iters", "2", "--save-interval", "2") == 0
    assert sorted(train_losses(run)) == [1, 2]
    # Two Adam steps at lr 3e-3 move a weight by about 6e-3 at most; a fresh init would differ by
    # the weights' own scale (std 0.02 plus the fixture's 0.05 perturbation).
    imported, _ = load_model_weights(ckpt_dir)
    trained, _ = load_model_weights(os.path.join(run, "checkpoints"))
    for name in ("embed.weight", "blocks.0.attn.wq.weight", "blocks.3.mlp.w_down.weight"):
        assert (trained[name] - imported[name]).abs().max() < 0.01, name


@pytest.mark.slow  # the default run imports a single fp32 model.safetensors
def test_a_sharded_bf16_source_imports_exactly(hf_source, tmp_path, capsys):
    import transformers

    from lumina.train.checkpoint import load_model_weights

    src = str(tmp_path / "bf16")
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_source("llama"), dtype=torch.bfloat16)
    model.save_pretrained(src, max_shard_size="200KB")
    shutil.copyfile(os.path.join(hf_source("llama"), "tokenizer.model"), os.path.join(src, "tokenizer.model"))
    assert os.path.isfile(os.path.join(src, "model.safetensors.index.json"))
    assert run_cli(["import", "--hf", src, "--out", str(tmp_path / "ckpt")], capsys)[0] == 0
    state, _ = load_model_weights(str(tmp_path / "ckpt"))
    assert torch.equal(state["blocks.0.attn.wq.weight"], model.model.layers[0].self_attn.q_proj.weight.float())
    assert state["embed.weight"].dtype == torch.float32
