import pytest

from lumina.config import ModelConfig, MoDConfig, MoEConfig
from lumina.presets import get_preset

BASE = dict(name="t", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
            ffn_hidden_size=64, seq_length=16)


@pytest.mark.parametrize("changes, field, hint", [
    (dict(hidden_size=30), "hidden_size=30", "divisible by num_heads=4"),
    (dict(num_kv_heads=3), "num_kv_heads=3", "must divide num_heads=4"),
    (dict(hidden_size=36, num_heads=4, num_kv_heads=4), "hidden_size=36", "head_dim=9"),
    (dict(num_layers=0), "num_layers=0", "positive integer"),
    (dict(mod=MoDConfig(layer_pattern="alternate"), num_layers=1), "mod.layer_pattern='alternate'",
     "selects no layer"),
    (dict(mod=MoDConfig(layer_pattern="0,5")), "mod.layer_pattern='0,5'", "layers [5]"),
])
def test_model_config_errors_name_field_value_and_rule(changes, field, hint):
    with pytest.raises(ValueError) as err:
        ModelConfig(**{**BASE, **changes})
    assert field in str(err.value) and hint in str(err.value)


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_experts=4, top_k=5), "moe.top_k=5"),
    (dict(capacity_factor_train=0.0), "moe.capacity_factor_train=0.0"),
    (dict(capacity_factor_eval=float("nan")), "moe.capacity_factor_eval=nan"),
    (dict(aux_loss_coef=-1.0), "moe.aux_loss_coef=-1.0"),
])
def test_moe_config_errors(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.").replace("=", "=")):
        MoEConfig(**kwargs)


@pytest.mark.parametrize("capacity", [0.0, -0.5, 1.01])
def test_mod_capacity_outside_unit_interval_is_refused(capacity):
    with pytest.raises(ValueError, match=r"mod\.capacity=.*\(0\.0, 1\.0\]"):
        MoDConfig(capacity=capacity)


def test_mod_layer_pattern_that_is_not_a_list_is_refused():
    with pytest.raises(ValueError, match="alternate"):
        MoDConfig(layer_pattern="every-third")


def test_paper_capacity_0125_is_accepted_and_patterns_select_layers():
    cfg = get_preset("debug", "mod").replace(mod=MoDConfig(capacity=0.125, layer_pattern="all"))
    assert cfg.routed_layers() == (0, 1, 2, 3)
    assert get_preset("debug", "mod").routed_layers() == (1, 3)


def test_config_dict_roundtrip():
    cfg = get_preset("b7", "hybrid")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_preset_and_mode_list_valid_names():
    with pytest.raises(ValueError, match="debug, debug_200m, b1, b7, b50, b100, b200, b300"):
        get_preset("b3")
    with pytest.raises(ValueError, match="dense, moe, mod, hybrid"):
        get_preset("b1", "mixture")
