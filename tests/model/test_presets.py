import json
import pathlib

import pytest
import torch

from lumina.accounting import account
from lumina.cli import main
from lumina.config import MODES
from lumina.model import LuminaLM
from lumina.presets import MOD_CAPACITY, NOMINAL_PARAMS, SIZES, get_preset
from lumina.presets_table import markdown, preset_rows

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", MODES)
def test_every_preset_builds_on_meta_and_counts_match(size, mode):
    cfg = get_preset(size, mode)
    with torch.device("meta"):
        model = LuminaLM(cfg)
    assert sum(p.numel() for p in model.parameters()) == account(cfg).params_total


@pytest.mark.parametrize("size", SIZES)
def test_size_name_is_dense_non_embedding_count_within_15_percent(size):
    acc = account(get_preset(size, "dense"))
    assert 0.85 <= acc.params_non_embedding / NOMINAL_PARAMS[size] <= 1.15


@pytest.mark.parametrize("size", SIZES)
def test_moe_is_8_experts_top2_and_active_counts_two_experts(size):
    dense, moe = get_preset(size, "dense"), get_preset(size, "moe")
    assert (moe.moe.num_experts, moe.moe.top_k) == (8, 2)
    a_dense, a_moe = account(dense), account(moe)
    expert = 3 * dense.hidden_size * dense.ffn_hidden_size
    router = dense.hidden_size * 8
    assert a_moe.params_total - a_dense.params_total == dense.num_layers * (7 * expert + router)
    assert a_moe.params_active - a_dense.params_active == dense.num_layers * (expert + router)


def test_mod_capacities_come_from_the_table_and_cut_flops():
    for size in SIZES:
        mod = get_preset(size, "mod")
        assert mod.mod.capacity == MOD_CAPACITY[size]
        assert account(mod).mod_flops_ratio < 1.0
    assert MOD_CAPACITY["b300"] == 0.38 and MOD_CAPACITY["b1"] == 0.6


def test_gqa_and_32k_vocab_from_b1_up():
    for size in SIZES[2:]:
        cfg = get_preset(size)
        assert cfg.num_kv_heads < cfg.num_heads and cfg.vocab_size == 32000


def test_flops_per_token_is_6n_plus_attention_for_dense():
    cfg = get_preset("b7")
    acc = account(cfg)
    matmul_params = acc.params_non_embedding - cfg.num_layers * 2 * cfg.hidden_size - cfg.hidden_size
    matmul_params += cfg.vocab_size * cfg.hidden_size  # the LM head is a matmul, the embedding is not
    attention = 12 * cfg.num_layers * cfg.seq_length * cfg.hidden_size
    assert acc.flops_per_token == pytest.approx(6 * matmul_params + attention, rel=1e-12)


def test_cli_json_lists_all_32_with_required_keys(capsys):
    assert main(["presets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 32
    for key in ("name", "mode", "params_total", "params_active", "flops_per_token"):
        assert all(key in r for r in rows)
    assert {(r["name"], r["mode"]) for r in rows} == {(s, m) for s in SIZES for m in MODES}


def test_docs_presets_md_is_not_stale():
    committed = (ROOT / "docs" / "presets.md").read_text()
    assert committed == markdown(preset_rows()), "regenerate: lumina presets --markdown docs/presets.md"
