"""`lumina upcycle`: a dense model as moe, mod or hybrid. An upcycled moe computes the dense
model's function at step 0; the new routers are Lumina's own init."""

from __future__ import annotations

import pytest
import torch

from lumina.train.checkpoint import load_model_weights
from tests.hf.helpers import LOGIT_TOL, assert_trainer_accepts, lumina_model, max_diff, one_line_error, run_cli, tokens

# fp32 round-off of sum_k w_k FFN(x) with sum_k w_k = 1, through 4 layers.
IDENTITY_TOL = 1e-5


def upcycled(ckpt_dir: str):
    from lumina.config import ModelConfig

    state, meta = load_model_weights(ckpt_dir)
    return ModelConfig.from_dict(meta["model"]), state


def test_upcycled_moe_computes_the_dense_function(ckpt, tmp_path, capsys):
    dense_dir, dense_cfg, dense_state = ckpt("dense")
    out = str(tmp_path / "moe")
    code, stdout, err = run_cli(["upcycle", "--load", dense_dir, "--mode", "moe", "--out", out], capsys)
    assert code == 0, err
    assert_trainer_accepts(stdout, out)
    cfg, state = upcycled(out)
    assert cfg.mode == "moe" and not cfg.moe.dropless
    ids = tokens(dense_cfg.vocab_size)
    with torch.no_grad():
        dense = lumina_model(dense_cfg, dense_state)(ids).logits
        # causal=True runs MoE dropless: with capacity, a dropped token would skip its FFN.
        diff = max_diff(lumina_model(cfg, state)(ids, causal=True).logits, dense)
        print(f"upcycled moe vs dense: max |logit diff| = {diff:.3e}")
        assert diff <= IDENTITY_TOL
        # The identity rests on every expert being the FFN: change one expert and it breaks.
        broken = dict(state)
        broken["blocks.0.mlp.w_gate"] = state["blocks.0.mlp.w_gate"].clone()
        broken["blocks.0.mlp.w_gate"][3] += 0.02 * torch.randn_like(broken["blocks.0.mlp.w_gate"][3])
        broken_diff = max_diff(lumina_model(cfg, broken)(ids, causal=True).logits, dense)
        print(f"with expert 3 of layer 0 not a copy: max |logit diff| = {broken_diff:.3e}")
        assert broken_diff > 100 * IDENTITY_TOL


@pytest.mark.parametrize("mode", ["moe", "mod", "hybrid"])
def test_fresh_parameters_are_luminas_init_and_the_rest_is_copied(ckpt, tmp_path, capsys, mode):
    from lumina.model import LuminaLM

    dense_dir, _, dense_state = ckpt("dense")
    out = str(tmp_path / mode)
    assert run_cli(["upcycle", "--load", dense_dir, "--mode", mode, "--out", out, "--seed", "7"], capsys)[0] == 0
    cfg, state = upcycled(out)
    assert cfg.mode == mode
    fresh_init = LuminaLM(cfg, init_seed=7).state_dict()
    assert sorted(state) == sorted(fresh_init)
    routed = set(cfg.routed_layers())
    new = 0
    for name, value in state.items():
        parts = name.split(".")
        if parts[-2:] == ["router", "weight"] or "predictor" in parts:
            assert torch.equal(value, fresh_init[name]), name
            new += 1
            continue
        if parts[0] == "blocks" and int(parts[1]) in routed:
            del parts[2]
        source = ".".join(parts)
        if parts[-1] in ("w_gate", "w_up", "w_down"):
            for e in range(value.shape[0]):
                assert torch.equal(value[e], dense_state[source + ".weight"].t()), (name, e)
        else:
            assert torch.equal(value, dense_state[source]), name
    expected = (cfg.num_layers if cfg.moe else 0) + 5 * len(routed)
    assert new == expected


def test_upcycle_from_a_hugging_face_llama(hf_source, tmp_path, capsys):
    """--hf reads the Llama as import does; the upcycled moe computes the HF model's logits."""
    import transformers

    out = str(tmp_path / "moe")
    code, stdout, err = run_cli(["upcycle", "--hf", hf_source("llama"), "--mode", "moe", "--out", out], capsys)
    assert code == 0, err
    assert_trainer_accepts(stdout, out)
    cfg, state = upcycled(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_source("llama")).eval()
    ids = tokens(cfg.vocab_size)
    with torch.no_grad():
        assert max_diff(lumina_model(cfg, state)(ids, causal=True).logits, hf(ids).logits) <= LOGIT_TOL


def test_upcycle_refuses_bad_modes_and_sources(ckpt, tmp_path, capsys):
    dense_dir = ckpt("dense")[0]
    for mode in ("dense", "sparse"):
        one_line_error(*run_cli(["upcycle", "--load", dense_dir, "--mode", mode, "--out", str(tmp_path / "o")],
                                capsys)[::2], "--mode", repr(mode), "moe, mod, hybrid")
    moe_dir = ckpt("moe")[0]
    one_line_error(*run_cli(["upcycle", "--load", moe_dir, "--mode", "hybrid", "--out", str(tmp_path / "o")],
                            capsys)[::2], "--load", moe_dir, "debug/moe", "dense")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("")
    one_line_error(*run_cli(["upcycle", "--load", dense_dir, "--mode", "moe", "--out", str(taken)], capsys)[::2],
                   "--out", str(taken), "not empty")
    one_line_error(*run_cli(["upcycle", "--load", dense_dir, "--mode", "moe", "--out", str(tmp_path / "o"),
                             "--seq-length", "64"], capsys)[::2], "--seq-length", "--hf only")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
