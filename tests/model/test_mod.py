import pytest
import torch

from lumina.config import MoDConfig
from lumina.model.block import Block
from lumina.model.layers import LayerFactory, rope_tables
from lumina.model.mod import MoDBlock
from lumina.presets import get_preset


def _mod_block(capacity: float, mode: str = "mod") -> tuple[MoDBlock, object]:
    torch.manual_seed(0)
    cfg = get_preset("debug", mode).replace(mod=MoDConfig(capacity=capacity))
    if cfg.moe is not None:
        cfg = cfg.replace(moe=cfg.moe.__class__(dropless=True))
    return MoDBlock(cfg, Block(cfg, LayerFactory())), cfg


def _rope(cfg, T):
    cos, sin = rope_tables(T, cfg.head_dim, cfg.rope_theta)
    return cos[None], sin[None]


@pytest.mark.parametrize("mode", ["mod", "hybrid"])
def test_capacity_one_equals_the_dense_block_scaled_by_the_router(mode):
    layer, cfg = _mod_block(1.0, mode)
    x = torch.randn(2, 32, cfg.hidden_size)
    cos, sin = _rope(cfg, 32)
    gate = torch.sigmoid(layer.router(x))
    dense = layer.block(x, cos, sin)
    torch.testing.assert_close(layer(x, cos, sin), x + gate * (dense - x), rtol=1e-5, atol=1e-6)
    assert float(layer.stats["skip_fraction"]) == 0.0


def test_selected_tokens_attend_among_themselves_at_their_true_positions():
    layer, cfg = _mod_block(0.25)
    x = torch.randn(1, 32, cfg.hidden_size)
    cos, sin = _rope(cfg, 32)
    out = layer(x, cos, sin)
    changed = (out - x).abs().sum(-1)[0] > 0
    assert int(changed.sum()) == 8 and float(layer.stats["skip_fraction"]) == 0.75
    idx = changed.nonzero().squeeze(1)
    # Reference: run the block on only the selected tokens, with their original positions.
    sub = layer.block(x[:, idx], cos[:, idx], sin[:, idx])
    gate = torch.sigmoid(layer.router(x[:, idx]))
    torch.testing.assert_close(out[:, idx], x[:, idx] + gate * (sub - x[:, idx]), rtol=1e-5, atol=1e-6)
    # The selection is the router's top-8.
    assert set(idx.tolist()) == set(torch.topk(layer.router(x)[0, :, 0], 8).indices.tolist())


def test_compute_is_really_skipped():
    layer, cfg = _mod_block(0.125)
    seen = []
    layer.block.attn.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    cos, sin = _rope(cfg, 64)
    layer(torch.randn(3, 64, cfg.hidden_size), cos, sin)
    assert seen == [torch.Size([3, 8, cfg.hidden_size])]


def test_predictor_mode_routes_by_predictor_and_pads_safely():
    layer, cfg = _mod_block(0.5)
    x = torch.randn(2, 16, cfg.hidden_size)
    cos, sin = _rope(cfg, 16)
    with torch.no_grad():
        layer.predictor[2].bias.fill_(-100.0)  # predictor selects nothing in row 0 or 1 ...
        out = layer(x, cos, sin, causal=True)
    torch.testing.assert_close(out, x)
    assert float(layer.stats["skip_fraction"]) == 1.0
    with torch.no_grad():
        layer.predictor[2].bias.fill_(0.0)
        layer.predictor[2].weight.zero_()
        layer.predictor[2].bias[0] = 1.0  # ... now it selects every token
        out = layer(x, cos, sin, causal=True)
    gate = torch.sigmoid(layer.router(x))
    torch.testing.assert_close(out, x + gate * (layer.block(x, cos, sin) - x), rtol=1e-5, atol=1e-6)
