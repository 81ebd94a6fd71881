"""Token-choice top-k Mixture-of-Experts MLP with capacity, dropping and index-based dispatch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lumina.config import ModelConfig
from lumina.model.init import mark
from lumina.model.layers import LayerFactory, output_init_std
from lumina.ops import fused, routing


def load_stats(tokens_per_expert: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(utilisation, balance) of a per-expert token count vector; both 1.0 for perfect balance.

    utilisation = mean_e min(1, n_e / fair) with fair = sum(n) / E: the share of the ideal
    expert compute that was actually used, so a starved expert lowers it.
    balance = 1 / (E * sum_e p_e^2) with p_e = n_e / sum(n): the effective number of experts
    (inverse Simpson index) over E, from 1/E (collapse onto one expert) to 1.0.
    """
    n = tokens_per_expert.float()
    E = n.numel()
    total = n.sum().clamp_min(1.0)
    utilisation = torch.clamp(n / (total / E), max=1.0).mean()
    p = n / total
    balance = 1.0 / (E * p.pow(2).sum().clamp_min(1.0 / E))
    return utilisation, balance


class MoE(nn.Module):
    """Replaces a block's SwiGLU MLP with `num_experts` SwiGLU experts of the same width."""

    def __init__(self, cfg: ModelConfig, layers: LayerFactory | None = None):
        super().__init__()
        assert cfg.moe is not None
        self.cfg = cfg.moe
        self.layers = layers or LayerFactory()
        tp, tp_rank = self.layers.tp_size, self.layers.tp_rank
        E, d, f = cfg.moe.num_experts, cfg.hidden_size, cfg.ffn_hidden_size
        if f % tp:
            raise ValueError(f"tensor parallel size {tp} must divide ffn_hidden_size={f} (experts are tensor-parallel)")
        f //= tp
        self.num_experts = E
        # Expert parallel: this rank holds the contiguous block [first, first + local) of experts.
        ep = getattr(self.layers, "expert_parallel", None)
        self.ep = ep if ep is not None and ep.size > 1 else None
        first, local = self.ep.local_experts(E) if self.ep else (0, E)
        self.num_router_outputs = E + cfg.moe.num_noop_experts
        self.router = nn.Linear(d, self.num_router_outputs, bias=False)
        # Stacked expert weights: (E, in, out). Stacking keeps expert-parallel sharding a slice
        # of dim 0 and lets each expert run on its contiguous chunk of permuted tokens.
        self.w_gate = nn.Parameter(torch.empty(local, d, f))
        self.w_up = nn.Parameter(torch.empty(local, d, f))
        self.w_down = nn.Parameter(torch.empty(local, f, d))
        std, out_std = cfg.init_std, output_init_std(cfg)
        nn.init.normal_(self.router.weight, mean=0.0, std=std)
        mark(self.router.weight, std)
        # Expert tensor parallel: each expert's FFN width is split like the dense MLP's
        # (gate/up by columns, down by rows); the router is replicated on every TP rank.
        for p, s, dim in ((self.w_gate, std, 2), (self.w_up, std, 2), (self.w_down, out_std, 1)):
            nn.init.normal_(p, mean=0.0, std=s)
            mark(p, s, partition_dim=dim, partition_rank=tp_rank, partition_size=tp, expert_offset=first)
            p.is_expert = True  # read by the trainer to build DeepSpeed's expert param groups
            if self.ep is not None:
                from lumina.parallel.expert import mark_expert_param

                mark_expert_param(p, self.ep)
        self.aux: dict[str, torch.Tensor] = {}
        # (tokens per expert, no-op mask or None, assignments) of the last forward, for `stats`.
        self._last: tuple[torch.Tensor, torch.Tensor | None, int] | None = None

    def capacity(self, num_tokens: int, causal: bool = False) -> int | None:
        # Capacity makes a token's fate depend on later tokens' priorities, which sampling must
        # not see; causal (sampling) mode therefore runs dropless.
        if self.cfg.dropless or causal:
            return None
        factor = self.cfg.capacity_factor_train if self.training else self.cfg.capacity_factor_eval
        return routing.expert_capacity(num_tokens, self.num_experts, self.cfg.top_k, factor)

    def experts(self, xs: torch.Tensor, counts: list[int], local_ids: list[int] | None = None) -> torch.Tensor:
        """Run local expert local_ids[i] (default i) on the i-th contiguous chunk of the (N, D) tokens."""
        return fused.expert_mlp(xs, self.w_gate, self.w_up, self.w_down, counts, local_ids)

    def _expert_parallel(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Send each expert's tokens to the rank that holds it, run them, bring the outputs back."""
        from lumina.parallel.expert import all_to_all, exchange_counts

        ep, local = self.ep, self.w_gate.shape[0]
        received = exchange_counts(counts, ep)                      # (E ranks, local experts)
        send = counts.view(ep.size, local).sum(1).tolist()
        recv = received.sum(1).tolist()
        xr = all_to_all(xs, ep.group, send, recv)                   # by source rank, then expert
        ids = [j for _ in range(ep.size) for j in range(local)]
        yr = self.experts(xr, received.flatten().tolist(), ids)
        return all_to_all(yr, ep.group, recv, send)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        shape = x.shape
        # Under sequence parallel x is this rank's token shard: every TP rank routes the whole
        # micro-batch identically (so capacity and drops are the single-process ones) and keeps
        # its shard of the output.
        xf = self.layers.sp_gather(x).reshape(-1, shape[-1])   # (S, D)
        S = xf.shape[0]
        logits = F.linear(xf.float(), self.router.weight.float())   # (S, E + noop), fp32
        route = routing.topk_route(logits, self.cfg.top_k, self.capacity(S, causal))
        noop, slot = None, route.slot
        if self.num_router_outputs > self.num_experts:
            # No-op experts (integrated MoDE) do no work: their assignments leave the token on the
            # residual, so they never enter the dispatch plan.
            noop = route.expert_index >= self.num_experts
            slot = torch.where(noop, torch.full_like(route.slot, -1), route.slot)
        plan = routing.dispatch_plan(route.expert_index, slot, self.num_router_outputs)
        counts = plan.counts[: self.num_experts]
        # Under tensor parallel each rank computes a slice of every expert's FFN: the input enters
        # the TP region (its gradient is all-reduced) and the partial outputs are summed before
        # the router weights apply, so the router's gradient is whole on every rank.
        xs = routing.permute(self.layers.tp_copy(xf), plan)
        ys = self.experts(xs, counts.tolist()) if self.ep is None else self._expert_parallel(xs, counts)
        ys = self.layers.tp_reduce(ys)
        out = routing.unpermute(ys, plan, route.weights, S).to(x.dtype)

        balance, z = fused.router_losses(logits, route.probs, route.expert_index)
        self.aux = {"moe_balance": balance, "moe_z": z}
        self._last = (counts.detach(), noop, route.expert_index.numel())
        return self.layers.sp_split(out).view(shape)

    @property
    def stats(self) -> dict[str, torch.Tensor]:
        """Routing statistics of the last forward ({} before the first). Computed when read: the
        trainer reads them at log time, and a dozen small ops per layer and step add up on CPU."""
        if self._last is None:
            return {}
        counts, noop, assignments = self._last
        with torch.no_grad():
            if noop is None:
                real, noop_fraction = counts.new_tensor(max(assignments, 1)), counts.new_zeros((), dtype=torch.float32)
            else:
                real, noop_fraction = (~noop).sum().clamp_min(1), noop.float().mean()
            utilisation, balance = load_stats(counts)
            return {
                "tokens_per_expert": counts,
                "dropped_fraction": 1.0 - counts.sum().float() / real.float(),
                "noop_fraction": noop_fraction,
                "utilisation": utilisation,
                "load_balance": balance,
            }

    def weighted_aux_loss(self) -> torch.Tensor:
        return self.cfg.aux_loss_coef * self.aux["moe_balance"] + self.cfg.z_loss_coef * self.aux["moe_z"]
