"""The decoder-only language model: embedding -> blocks (dense/MoE, optionally MoD-routed) -> norm -> logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lumina.config import ModelConfig
from lumina.model.block import Block
from lumina.model.init import initialize
from lumina.model.layers import LayerFactory, RMSNorm, rope_tables
from lumina.model.mod import MoDBlock
from lumina.model.moe import MoE


@dataclass
class LMOutput:
    logits: torch.Tensor               # (B, T, V) (vocab-sharded under tensor parallel)
    loss: torch.Tensor | None          # LM cross-entropy, when labels are given
    aux_loss: torch.Tensor             # sum of coefficient-weighted MoE/MoD auxiliary losses
    aux: dict[str, torch.Tensor]       # unweighted auxiliary losses summed over layers


class LuminaLM(nn.Module):
    def __init__(self, cfg: ModelConfig, layers: LayerFactory | None = None, init_seed: int | None = None):
        """init_seed: draw every weight from (seed, name), the same under any parallel layout
        (lumina.model.init); None keeps torch's global-RNG construction-time init."""
        super().__init__()
        self.cfg = cfg
        layers = layers or LayerFactory()
        self.layers_factory = layers
        self.embed = layers.embedding(cfg.vocab_size, cfg.hidden_size, cfg.init_std)
        routed = set(cfg.routed_layers())
        blocks: list[nn.Module] = []
        for i in range(cfg.num_layers):
            block = Block(cfg, layers)
            blocks.append(MoDBlock(cfg, block) if i in routed else block)
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, layers)
        self.lm_head = None if cfg.tie_embeddings else layers.embedding(cfg.vocab_size, cfg.hidden_size, cfg.init_std)
        self.recompute = False
        cos, sin = rope_tables(cfg.seq_length, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        for name, p in self.named_parameters():
            p.init_name = name  # stable across pipeline stages, which rename modules
        if init_seed is not None:
            initialize(self, init_seed)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.recompute = enabled

    def _rope(self, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if T > self.rope_cos.shape[0] or self.rope_cos.device != device:
            length = max(T, self.rope_cos.shape[0])
            cos, sin = rope_tables(length, self.cfg.head_dim, self.cfg.rope_theta, device=device)
            self.rope_cos, self.rope_sin = cos, sin
        return self.rope_cos[:T].unsqueeze(0), self.rope_sin[:T].unsqueeze(0)   # (1, T, hd)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                causal: bool = False) -> LMOutput:
        """causal=True is sampling mode: MoD routes by its causal predictor and MoE runs
        dropless, so the logits at position t depend only on tokens <= t."""
        B, T = input_ids.shape
        cos, sin = self._rope(T, input_ids.device)
        x = self.embed(input_ids)          # (B, T, D); sequence parallel: this rank's (B * T / TP, D)
        for block in self.blocks:
            args = (x, cos, sin, causal)
            if self.recompute and self.training:
                x = checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)
        x = self.norm(x)
        head = self.embed.weight if self.lm_head is None else self.lm_head.weight
        logits = self.layers_factory.lm_logits(x, head).view(B, T, -1)
        loss = self.layers_factory.cross_entropy(logits, labels) if labels is not None else None
        aux, aux_loss = self.collect_aux(input_ids.device)
        return LMOutput(logits, loss, aux_loss, aux)

    def routing_modules(self) -> tuple[list[MoE], list[MoDBlock]]:
        moes = [m for m in self.modules() if isinstance(m, MoE)]
        mods = [m for m in self.blocks if isinstance(m, MoDBlock)]
        return moes, mods

    def collect_aux(self, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        moes, mods = self.routing_modules()
        aux: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=device)
        for module in [*moes, *mods]:
            if not module.aux:  # a MoD layer that skipped everything still records its loss
                continue
            for key, value in module.aux.items():
                aux[key] = aux.get(key, 0.0) + value
            total = total + module.weighted_aux_loss()
        return aux, total

    def routing_stats(self) -> dict:
        """Python-number statistics from the last forward (one host sync; call at log time)."""
        return summarize_routing([layer_routing(i, b) for i, b in enumerate(self.blocks)])


def layer_routing(index: int, block: nn.Module) -> dict:
    """One layer's routing statistics from its last forward, as Python numbers."""
    out: dict = {"layer": index, "moe": None, "mod": None}
    moe = next((m for m in block.modules() if isinstance(m, MoE)), None)
    s = moe.stats if moe is not None else {}  # computed on each read
    if s:
        out["moe"] = {"tokens_per_expert": s["tokens_per_expert"].tolist(),
                      **{k: float(s[k]) for k in ("dropped_fraction", "utilisation", "load_balance")}}
    if isinstance(block, MoDBlock):
        s = block.stats
        out["mod"] = {"skip_fraction": float(s["skip_fraction"]) if s else 0.0,
                      "predictor_accuracy": float(s["predictor_accuracy"]) if s else None}
    return out


def summarize_routing(layers: list[dict]) -> dict:
    """The logged statistics from every layer's `layer_routing` (gathered from every pipeline stage
    under pipeline parallel), in layer order."""
    layers = sorted(layers, key=lambda r: r["layer"])
    stats: dict = {}
    moe = [r["moe"] for r in layers if r["moe"] is not None]
    if moe:
        stats["moe_tokens_per_expert"] = [m["tokens_per_expert"] for m in moe]
        for key in ("dropped_fraction", "utilisation", "load_balance"):
            values = [m[key] for m in moe]
            stats[f"moe_{key}_per_layer"] = values
            stats[f"moe_{key}"] = sum(values) / len(values)
    if any(r["mod"] is not None for r in layers):
        skip = [r["mod"]["skip_fraction"] if r["mod"] else 0.0 for r in layers]
        acc = [r["mod"]["predictor_accuracy"] for r in layers if r["mod"] and r["mod"]["predictor_accuracy"] is not None]
        stats["mod_skip_fraction_per_layer"] = skip
        stats["mod_skip_fraction"] = sum(skip) / len(skip)
        stats["mod_predictor_accuracy"] = sum(acc) / max(len(acc), 1)
    return stats
