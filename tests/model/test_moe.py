import math

import pytest
import torch
import torch.nn.functional as F

from lumina.config import MoEConfig
from lumina.model.block import Block
from lumina.model.layers import rope_tables
from lumina.model.moe import MoE, load_stats
from lumina.ops.routing_reference import router_z_loss, switch_balance_loss
from lumina.presets import get_preset


def _moe(**moe_kwargs) -> MoE:
    torch.manual_seed(0)
    cfg = get_preset("debug", "moe")
    return MoE(cfg.replace(moe=MoEConfig(**moe_kwargs)))


def naive_moe(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token-by-token loop: softmax, top-k, renormalise, weighted sum of expert outputs."""
    out = torch.zeros_like(x)
    for s in range(x.shape[0]):
        probs = torch.softmax(x[s].float() @ layer.router.weight.float().T, -1)
        top_p, top_e = torch.topk(probs, layer.cfg.top_k)
        top_p = top_p / top_p.sum()
        for p, e in zip(top_p, top_e):
            h = F.silu(x[s] @ layer.w_gate[e]) * (x[s] @ layer.w_up[e])
            out[s] += p * (h @ layer.w_down[e])
    return out


@pytest.mark.parametrize("kwargs", [dict(dropless=True), dict(capacity_factor_train=8.0),
                                    dict(top_k=1, dropless=True), dict(top_k=3, dropless=True)])
def test_moe_without_drops_equals_per_token_loop(kwargs):
    layer = _moe(**kwargs)
    x = torch.randn(40, layer.w_gate.shape[1])
    out = layer(x)
    assert float(layer.stats["dropped_fraction"]) == 0.0 and float(layer.stats["noop_fraction"]) == 0.0
    assert int(layer.stats["tokens_per_expert"].sum()) == 40 * layer.cfg.top_k
    torch.testing.assert_close(out, naive_moe(layer, x), rtol=1e-5, atol=1e-6)


def test_dropped_tokens_leave_the_block_on_the_residual():
    torch.manual_seed(0)
    cfg = get_preset("debug", "moe").replace(moe=MoEConfig(capacity_factor_train=0.25))
    block = Block(cfg, __import__("lumina.model.layers", fromlist=["LayerFactory"]).LayerFactory())
    with torch.no_grad():  # every token prefers experts 0 and 1, so most overflow
        block.mlp.router.weight.zero_()
        block.mlp.router.weight[0] = 1.0
        block.mlp.router.weight[1] = 0.5
    x = torch.randn(1, 64, cfg.hidden_size).abs()
    cos, sin = rope_tables(64, cfg.head_dim, cfg.rope_theta)
    out = block(x, cos[None], sin[None])
    residual = x + block.attn(block.attn_norm(x), cos[None], sin[None])
    mlp_out = block.mlp(block.mlp_norm(residual))[0]
    dropped = mlp_out.abs().sum(-1) == 0
    assert dropped.sum() >= 32, "the crafted router should overflow most tokens"
    torch.testing.assert_close(out[0][dropped], residual[0][dropped])
    assert float(block.mlp.stats["dropped_fraction"]) > 0.5


def test_drop_policy_keeps_highest_probability_assignments():
    layer = _moe(top_k=1, capacity_factor_train=1.0, num_experts=4)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0, 0] = 1.0  # logit of expert 0 grows with x[:, 0]
    x = torch.zeros(8, layer.w_gate.shape[1])
    x[:, 0] = torch.tensor([1.0, 5.0, 2.0, 4.0, 3.0, 0.5, 6.0, 0.1])
    layer(x)  # capacity = ceil(1.0 * 8 * 1 / 4) = 2 slots for expert 0
    assert layer.stats["tokens_per_expert"].tolist() == [2, 0, 0, 0]
    kept = (layer(x).abs().sum(-1) > 0).nonzero().squeeze(1).tolist()
    assert kept == [1, 6]  # the two highest router probabilities


def test_balance_loss_textbook_values():
    E, S = 8, 64
    uniform = torch.full((S, E), 1.0 / E)
    idx = torch.randint(0, E, (S, 2))
    assert switch_balance_loss(uniform, idx).item() == pytest.approx(1.0)
    collapsed = torch.zeros(S, E)
    collapsed[:, 0] = 1.0
    assert switch_balance_loss(collapsed, torch.zeros(S, 1, dtype=torch.long)).item() == pytest.approx(E)
    assert router_z_loss(torch.zeros(S, E)).item() == pytest.approx(math.log(E) ** 2)


def test_load_stats_perfect_and_collapsed():
    assert [float(v) for v in load_stats(torch.tensor([5, 5, 5, 5]))] == [1.0, 1.0]
    util, bal = load_stats(torch.tensor([20, 0, 0, 0]))
    assert float(util) == pytest.approx(0.25) and float(bal) == pytest.approx(0.25)


def test_noop_experts_skip_work_and_are_reported():
    layer = _moe(num_noop_experts=2, dropless=True)
    with torch.no_grad():
        layer.router.weight[8:] += 5.0  # strongly prefer the no-op experts
    x = torch.randn(16, layer.w_gate.shape[1]).abs()
    out = layer(x)
    assert float(layer.stats["noop_fraction"]) == 1.0
    assert torch.count_nonzero(out) == 0
