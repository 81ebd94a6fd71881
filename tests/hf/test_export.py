"""`lumina export`: logits through transformers equal Lumina's, generation runs, the tokenizer
encodes like Lumina's, and bad outputs are refused."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.hf.helpers import LOGIT_TOL, dropless, lumina_model, max_diff, one_line_error, run_cli, tokens

HF_CLASS = {"dense": "LlamaForCausalLM", "moe": "MixtralForCausalLM",
            "mod": "LuminaForCausalLM", "hybrid": "LuminaForCausalLM"}


def load_hf(path: str, remote: bool):
    import transformers

    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        path, trust_remote_code=remote, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


@pytest.mark.parametrize("mode", ["dense", "moe"])
def test_llama_and_mixtral_logits_equal_luminas(ckpt, exported, mode):
    _, cfg, state = ckpt(mode)
    hf = load_hf(exported(mode), remote=False)
    assert type(hf).__name__ == HF_CLASS[mode]
    assert not os.path.exists(os.path.join(exported(mode), "modeling_lumina.py"))
    ids = tokens(cfg.vocab_size)
    with torch.no_grad():
        ours = lumina_model(dropless(cfg), state)(ids).logits
        theirs = hf(ids).logits
    print(f"{mode}: max |logit diff| HF vs Lumina = {max_diff(ours, theirs):.3e}")
    assert max_diff(ours, theirs) <= LOGIT_TOL


@pytest.mark.parametrize("mode", ["mod", "hybrid"])
def test_remote_code_logits_equal_luminas(ckpt, exported, mode):
    """Predictor routing (the default, for generation) against Lumina's causal=True, and top-k
    routing against Lumina's training-time forward."""
    _, cfg, state = ckpt(mode)
    hf = load_hf(exported(mode), remote=True)
    assert type(hf).__name__ == HF_CLASS[mode] and hf.config.mod_routing == "predictor"
    ids = tokens(cfg.vocab_size)
    model = lumina_model(dropless(cfg), state)
    with torch.no_grad():
        causal, topk = model(ids, causal=True).logits, model(ids).logits
        theirs = hf(ids).logits
        for layer in hf.model.layers:
            if layer.routed:
                layer.routing = "topk"
        theirs_topk = hf(ids).logits
    print(f"{mode}: max |logit diff| HF vs Lumina = {max_diff(causal, theirs):.3e} (predictor), "
          f"{max_diff(topk, theirs_topk):.3e} (top-k)")
    assert max_diff(causal, theirs) <= LOGIT_TOL
    assert max_diff(topk, theirs_topk) <= LOGIT_TOL
    # The two routings differ here, so each comparison above checks its own path.
    assert max_diff(theirs, theirs_topk) > 1e-2


def test_remote_code_file_stands_alone(exported):
    """The modeling file imports only torch and transformers, and its config says where it is."""
    path = exported("mod")
    with open(os.path.join(path, "modeling_lumina.py")) as f:
        source = f.read()
    imports = [line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert {name.split(".")[0] for name in imports} <= {"__future__", "math", "torch", "transformers"}, imports
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_lumina.LuminaForCausalLM"


@pytest.mark.parametrize("mode", ["dense", "moe", "mod", "hybrid"])
def test_pipeline_generates_what_lumina_generates(ckpt, exported, mode):
    """Greedy `pipeline("text-generation")` on the export gives the text `lumina generate`'s
    sampler gives at temperature 0, from the same EOS-led prompt."""
    import transformers

    from lumina.data import load_tokenizer
    from lumina.train.inference import generate

    _, cfg, state = ckpt(mode)
    remote = mode in ("mod", "hybrid")
    pipe = transformers.pipeline("text-generation", model=exported(mode), trust_remote_code=remote)
    out = pipe("</s>ROMEO:", max_new_tokens=6, do_sample=False, return_full_text=False)[0]["generated_text"]
    tokenizer = load_tokenizer()
    ids = generate(lumina_model(cfg, state), [tokenizer.eos_id] + tokenizer.encode("ROMEO:"), 6, 0.0, 1.0,
                   torch.Generator(), eos_id=tokenizer.eos_id)
    assert out == tokenizer.decode(ids)


def test_tokenizer_encodes_like_luminas(exported):
    import transformers

    from lumina.data import load_tokenizer
    from lumina.data.embedded import corpus_files
    from lumina.hf.tokenizer import CHECK_TEXTS

    ours = load_tokenizer()
    theirs = transformers.AutoTokenizer.from_pretrained(exported("dense"))
    book = corpus_files("validation")[0].read_text(encoding="utf-8")[:20000]
    for text in (*CHECK_TEXTS, book):
        ids = ours.encode(text)
        assert theirs(text)["input_ids"] == ids
        assert theirs.decode(ids) == ours.decode(ids) == text
    # The control piece's text is the special token: how a prompt gets Lumina's EOS lead.
    assert theirs("</s>ROMEO:")["input_ids"] == [ours.eos_id] + ours.encode("ROMEO:")


def test_padded_vocabulary_exports_whole_and_is_suppressed(ckpt, tmp_path, capsys):
    """A tokenizer of 400 pieces gives a 512-row embedding (padded to a multiple of 128): every
    row is exported, so logits still match, and generation never picks a padding row."""
    import transformers

    from lumina.data import load_tokenizer
    from lumina.data.embedded import corpus_files
    from lumina.data.tokenizer import train_tokenizer

    model_file = str(tmp_path / "small.model")
    text = corpus_files("validation")[0].read_text(encoding="utf-8")[:60000]
    train_tokenizer([text], model_file, 400)
    path, cfg, state = ckpt("dense", model_file)
    assert cfg.vocab_size == 512
    out = str(tmp_path / "hf")
    code, stdout, _ = run_cli(["export", "--load", path, "--hf", out, "--tokenizer-model", model_file], capsys)
    assert code == 0 and "512 rows for 400 pieces" in stdout
    hf = load_hf(out, remote=False)
    assert hf.config.vocab_size == 512
    assert transformers.GenerationConfig.from_pretrained(out).suppress_tokens == list(range(400, 512))
    ids = tokens(400)
    with torch.no_grad():
        assert max_diff(lumina_model(cfg, state)(ids).logits, hf(ids).logits) <= LOGIT_TOL
    ours, theirs = load_tokenizer(model_file), transformers.AutoTokenizer.from_pretrained(out)
    assert theirs(text[:5000])["input_ids"] == ours.encode(text[:5000])


def test_export_refuses_bad_outputs_and_inputs(ckpt, tmp_path, capsys):
    path = ckpt("dense")[0]
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep me")
    one_line_error(*run_cli(["export", "--load", path, "--hf", str(full)], capsys)[::2], "--hf", str(full), "not empty")
    assert (full / "x").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("")
    one_line_error(*run_cli(["export", "--load", path, "--hf", str(a_file)], capsys)[::2],
                   "--hf", str(a_file), "is a file")
    missing = str(tmp_path / "nope")
    one_line_error(*run_cli(["export", "--load", missing, "--hf", str(tmp_path / "o1")], capsys)[::2],
                   "--load", missing)
    from lumina.train.checkpoint import write_weights

    _, cfg, state = ckpt("dense")
    foreign = str(tmp_path / "foreign")
    write_weights(foreign, cfg, state, {"tokenizer_sha256": "0" * 64})  # trained with another tokenizer
    one_line_error(*run_cli(["export", "--load", foreign, "--hf", str(tmp_path / "o2")], capsys)[::2],
                   "--tokenizer-model", "sha256")
    assert sorted(os.listdir(tmp_path)) == ["file", "foreign", "full"]  # nothing half-written left behind


def test_an_empty_output_directory_is_used_and_a_failure_leaves_nothing(ckpt, tmp_path, monkeypatch, capsys):
    from lumina.hf import export as export_module

    path = ckpt("dense")[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(["export", "--load", path, "--hf", str(empty)], capsys)[0] == 0
    assert "model.safetensors" in os.listdir(empty)

    def broken(*args, **kwargs):
        raise ValueError("tokenizer conversion failed")

    monkeypatch.setattr(export_module.hf_tokenizer, "write", broken)
    code, _, err = run_cli(["export", "--load", path, "--hf", str(tmp_path / "late")], capsys)
    one_line_error(code, err, "tokenizer conversion failed")
    assert sorted(os.listdir(tmp_path)) == ["empty"]


@pytest.mark.slow  # the default run exports write_weights checkpoints, which load_model_weights reads alike
def test_export_of_a_trained_checkpoint(tmp_path, capsys):
    """A checkpoint the trainer saved (2 iterations, hybrid) exports and matches through transformers."""
    from lumina.train.inference import load_model
    from tests.train.runs import train

    run = str(tmp_path / "run")
    assert train(run, "--mode", "hybrid", "--train-iters", "2", "--save-interval", "2") == 0
    out = str(tmp_path / "hf")
    assert run_cli(["export", "--load", os.path.join(run, "checkpoints"), "--hf", out], capsys)[0] == 0
    model, _, _ = load_model(os.path.join(run, "checkpoints"))
    hf = load_hf(out, remote=True)
    ids = tokens(model.cfg.vocab_size, (2, 64))
    with torch.no_grad():
        diff = max_diff(model(ids, causal=True).logits, hf(ids).logits)
    print(f"trained hybrid: max |logit diff| HF vs Lumina = {diff:.3e}")
    assert diff <= LOGIT_TOL


@pytest.mark.slow  # the default run covers the modeling file through mod and hybrid, and MoE routing through moe
def test_noop_experts_export_through_the_modeling_file(tmp_path, capsys):
    """Mixtral has no no-op experts (integrated MoDE), so such a moe model exports as Lumina's own file."""
    from lumina.config import MoEConfig
    from lumina.data import load_tokenizer
    from lumina.model import LuminaLM
    from lumina.presets import get_preset
    from lumina.train.checkpoint import write_weights
    from tests.hf.helpers import perturbed

    base = get_preset("debug", "moe")
    cfg = base.replace(moe=MoEConfig(**{**base.moe.__dict__, "num_noop_experts": 2, "dropless": True}))
    state = perturbed(LuminaLM(cfg, init_seed=1).state_dict(), seed=2)
    write_weights(str(tmp_path / "ckpt"), cfg, state, {"tokenizer_sha256": load_tokenizer().sha256})
    out = str(tmp_path / "hf")
    assert run_cli(["export", "--load", str(tmp_path / "ckpt"), "--hf", out], capsys)[0] == 0
    hf = load_hf(out, remote=True)
    assert type(hf).__name__ == "LuminaForCausalLM" and hf.config.num_noop_experts == 2
    ids = tokens(cfg.vocab_size)
    with torch.no_grad():
        diff = max_diff(lumina_model(cfg, state)(ids).logits, hf(ids).logits)
    print(f"moe with no-op experts: max |logit diff| HF vs Lumina = {diff:.3e}")
    assert diff <= LOGIT_TOL


@pytest.mark.slow  # the default run converts BPE tokenizers (the embedded one and a padded one)
def test_a_unigram_tokenizer_converts(tmp_path):
    import transformers

    from lumina.data import load_tokenizer
    from lumina.data.embedded import corpus_files
    from lumina.data.tokenizer import train_tokenizer
    from lumina.hf import tokenizer as hf_tokenizer

    text = corpus_files("validation")[0].read_text(encoding="utf-8")
    model_file = str(tmp_path / "uni.model")
    train_tokenizer([text[:100000]], model_file, 600, "unigram")
    with open(model_file, "rb") as f:
        hf_tokenizer.write(f.read(), model_file, str(tmp_path))
    ours, theirs = load_tokenizer(model_file), transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    hf_tokenizer.check(theirs, ours)
    assert theirs(text[100000:120000])["input_ids"] == ours.encode(text[100000:120000])
