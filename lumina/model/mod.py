"""Mixture-of-Depths routing around a block (Raposo et al. 2024, arXiv 2404.02258).

A scalar router scores every token; per sequence the top ceil(capacity * T) tokens run the
whole block on the gathered (B, k, D) tensor (attention among the selected tokens only, in
position order, with their true RoPE positions), and the rest pass on the residual. The block's
update is scaled by sigmoid(router score) so the router learns from the LM loss.

Top-k over a sequence looks at future tokens, so sampling uses the paper's causal auxiliary
predictor instead: a small MLP on stop-gradient inputs, trained with BCE to predict top-k
membership (paper sec. 3.5, "method 2").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lumina.config import ModelConfig
from lumina.model.block import Block
from lumina.model.init import mark
from lumina.ops import routing


class MoDBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, block: Block):
        super().__init__()
        assert cfg.mod is not None
        self.capacity = cfg.mod.capacity
        self.predictor_loss_coef = cfg.mod.predictor_loss_coef
        self.block = block
        self.layers = block.layers
        d = cfg.hidden_size
        self.router = nn.Linear(d, 1, bias=False)
        self.predictor = nn.Sequential(
            nn.Linear(d, cfg.mod.predictor_hidden, bias=True), nn.SiLU(),
            nn.Linear(cfg.mod.predictor_hidden, 1, bias=True))
        for linear in (self.router, self.predictor[0], self.predictor[2]):
            nn.init.normal_(linear.weight, mean=0.0, std=cfg.init_std)
            mark(linear.weight, cfg.init_std)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        self.aux: dict[str, torch.Tensor] = {}
        self.stats: dict[str, torch.Tensor] = {}

    def selected_count(self, seq_len: int) -> int:
        return max(1, math.ceil(self.capacity * seq_len))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                causal: bool = False) -> torch.Tensor:
        """causal=False: per-sequence top-k (training). causal=True: the predictor decides.

        Under sequence parallel x is this rank's token shard: top-k needs whole sequences, so the
        routing runs on the gathered micro-batch (identically on every TP rank), the block on the
        shard of the selected tokens, and the output is this rank's shard again."""
        shard = x
        x = self.layers.sp_gather(shard).view(-1, cos.shape[-2], shard.shape[-1])   # (B, T, D)
        B, T, _ = x.shape
        scores = F.linear(x, self.router.weight).squeeze(-1)      # (B, T)
        pred_logits = self.predictor(x.detach()).squeeze(-1)      # (B, T), stop-gradient input
        k = self.selected_count(T)
        topk_index = routing.mod_select(scores.detach(), k)       # (B, k) ascending positions
        target = torch.zeros(B, T, device=x.device, dtype=torch.float32)
        target.scatter_(1, topk_index, 1.0)

        if not causal:
            index, valid = topk_index, None
        else:
            index, valid = _causal_selection(pred_logits)
            if index is None:  # nothing selected anywhere: the whole layer is skipped
                self._record(pred_logits, target, torch.zeros(B, T, device=x.device))
                return shard

        xs = routing.gather_tokens(x, index)                       # (B, k, D)
        pos_cos = cos.expand(B, -1, -1).gather(1, index.unsqueeze(-1).expand(-1, -1, cos.shape[-1]))
        pos_sin = sin.expand(B, -1, -1).gather(1, index.unsqueeze(-1).expand(-1, -1, sin.shape[-1]))
        ys = self.layers.sp_gather(self.block(self.layers.sp_split(xs), pos_cos, pos_sin, causal)).view_as(xs)
        gate = torch.sigmoid(torch.gather(scores, 1, index)).unsqueeze(-1).to(x.dtype)
        update = xs + gate * (ys - xs)
        if valid is not None:  # padded rows are unselected tokens: write them back unchanged
            update = torch.where(valid.unsqueeze(-1), update, xs)
        out = routing.scatter_tokens(x, index, update)

        chosen = torch.zeros(B, T, device=x.device)
        if valid is None:
            chosen.scatter_(1, index, 1.0)
        else:
            chosen.scatter_(1, index, valid.float())
        self._record(pred_logits, target, chosen)
        return self.layers.sp_split(out).view_as(shard)

    def _record(self, pred_logits: torch.Tensor, target: torch.Tensor, chosen: torch.Tensor) -> None:
        self.aux = {"mod_predictor": F.binary_cross_entropy_with_logits(pred_logits.float(), target)}
        with torch.no_grad():
            self.stats = {
                "skip_fraction": 1.0 - chosen.mean(),
                "predictor_accuracy": ((pred_logits > 0).float() == target).float().mean(),
            }

    def weighted_aux_loss(self) -> torch.Tensor:
        return self.predictor_loss_coef * self.aux["mod_predictor"]


def _causal_selection(pred_logits: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Tokens the predictor selects, first in position order, padded per row to the max count.

    Returns (index (B, kmax), valid (B, kmax)); padding entries point at unselected tokens, which
    come after every selected one, so causal attention never lets a selected token see them.
    """
    B, T = pred_logits.shape
    selected = pred_logits > 0
    counts = selected.sum(1)
    kmax = int(counts.max())
    if kmax == 0:
        return None, selected
    positions = torch.arange(T, device=pred_logits.device)
    key = (~selected).long() * T + positions                     # selected first, by position
    index = torch.sort(key, dim=1).indices[:, :kmax]
    valid = torch.arange(kmax, device=pred_logits.device).unsqueeze(0) < counts.unsqueeze(1)
    return index, valid
