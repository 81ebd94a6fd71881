import pytest
import torch

from lumina.config import MODES, MoEConfig
from lumina.model import LuminaLM
from lumina.model.mod import MoDBlock
from lumina.model.moe import MoE
from lumina.presets import get_preset


def _model(mode: str, seed: int = 0, **changes) -> LuminaLM:
    torch.manual_seed(seed)
    return LuminaLM(get_preset("debug", mode).replace(**changes))


@pytest.mark.parametrize("mode", MODES)
def test_causal_mode_logits_never_see_the_future(mode):
    model = _model(mode).eval()
    if mode in ("mod", "hybrid"):  # make the predictor select a mix of tokens
        for block in model.blocks:
            if isinstance(block, MoDBlock):
                for layer in (block.predictor[0], block.predictor[2]):
                    torch.nn.init.normal_(layer.weight, std=1.0)
                    torch.nn.init.zeros_(layer.bias)
    ids = torch.randint(0, 2048, (2, 48))
    with torch.no_grad():
        base = model(ids, causal=True).logits
        for t in (0, 10, 30, 46):
            changed = ids.clone()
            changed[:, t + 1] = (changed[:, t + 1] + 1) % 2048
            logits = model(changed, causal=True).logits
            torch.testing.assert_close(logits[:, : t + 1], base[:, : t + 1], rtol=1e-5, atol=1e-5)
            assert not torch.allclose(logits[:, t + 1], base[:, t + 1])
    if mode in ("mod", "hybrid"):
        skip = model.routing_stats()["mod_skip_fraction_per_layer"]
        assert 0.0 < max(skip) < 1.0, "the test must exercise partial selection"


def test_training_topk_mode_is_not_causal_for_mod():
    """Documents why sampling needs the predictor: top-k selection looks ahead."""
    model = _model("mod").train()
    ids = torch.randint(0, 2048, (1, 64))
    base = model(ids).logits
    diffs = []
    for t in range(1, 63):
        changed = ids.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 7) % 2048
        diffs.append((model(changed).logits[:, : t + 1] - base[:, : t + 1]).abs().max().item())
    assert max(diffs) > 0


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_routers_and_predictors(mode):
    model = _model(mode)
    ids = torch.randint(0, 2048, (2, 32))
    out = model(ids[:, :-1], labels=ids[:, 1:])
    (out.loss + out.aux_loss).backward()
    for module in model.modules():
        if isinstance(module, MoE):
            assert module.router.weight.grad.abs().sum() > 0
            assert module.w_gate.grad.abs().sum() > 0
        if isinstance(module, MoDBlock):
            assert module.router.weight.grad.abs().sum() > 0
            assert all(p.grad.abs().sum() > 0 for p in module.predictor.parameters())
    assert all(p.grad is not None for p in model.parameters())


def test_aux_losses_present_per_mode():
    expected = {"dense": set(), "moe": {"moe_balance", "moe_z"}, "mod": {"mod_predictor"},
                "hybrid": {"moe_balance", "moe_z", "mod_predictor"}}
    for mode, keys in expected.items():
        out = _model(mode)(torch.randint(0, 2048, (1, 16)))
        assert set(out.aux) == keys
        assert (out.aux_loss > 0) == bool(keys)


def test_activation_checkpointing_gives_identical_gradients():
    grads = []
    for recompute in (False, True):
        model = _model("hybrid", moe=MoEConfig(dropless=True))
        model.set_activation_checkpointing(recompute)
        ids = torch.randint(0, 2048, (2, 33), generator=torch.Generator().manual_seed(1))
        out = model(ids[:, :-1], labels=ids[:, 1:])
        (out.loss + out.aux_loss).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("mode", MODES)
def test_debug_model_overfits_one_batch(mode):
    model = _model(mode)
    ids = torch.randint(0, 2048, (2, 33), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(120):
        out = model(ids[:, :-1], labels=ids[:, 1:])
        opt.zero_grad()
        (out.loss + out.aux_loss).backward()
        opt.step()
    assert out.loss.item() < 0.05, f"{mode}: loss {out.loss.item():.3f} after 120 steps"


@pytest.mark.parametrize("scaled", [False, True])
def test_output_projections_are_flat_unless_depth_scaled(scaled):
    """Default: every matrix at init_std (HF Llama); depth_scaled_init: attention out, MLP and
    expert down at init_std / sqrt(2 * num_layers) (GPT-2, Megatron-LM)."""
    cfg = get_preset("debug", "hybrid").replace(depth_scaled_init=scaled, num_layers=8)
    model = LuminaLM(cfg, init_seed=0)
    out_std = cfg.init_std / 4.0 if scaled else cfg.init_std  # sqrt(2 * 8) = 4
    block = model.blocks[0]
    for w in (block.attn.wo.weight, block.mlp.w_down):
        assert w.std().item() == pytest.approx(out_std, rel=0.05)
    for w in (block.attn.wq.weight, block.mlp.w_gate):
        assert w.std().item() == pytest.approx(cfg.init_std, rel=0.05)


def test_depth_scaled_init_flag_and_bad_value():
    from lumina.pretrain import build_parser
    from lumina.train.args import model_config

    assert model_config(build_parser().parse_args(["--preset", "debug"])).depth_scaled_init is False
    assert model_config(build_parser().parse_args(["--preset", "debug", "--depth-scaled-init"])).depth_scaled_init
    with pytest.raises(ValueError, match="depth_scaled_init"):
        get_preset("debug").replace(depth_scaled_init="yes")
