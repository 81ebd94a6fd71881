"""One run of the study: train a model for a FLOP budget, then score it on the held-out batches.

The model trains in `lumina.bench.baselines`' plain loop (Lumina's model, fused AdamW with the
trainer's decay groups, betas, epsilon and clipping), in this process: the runs are seconds long,
so a DeepSpeed engine and a fresh process per run would cost more than the training.

The step count is the budget over the FLOPs of one step, rounded to the nearest whole step; the
FLOPs per token are `lumina.accounting`'s (performed FLOPs: MoD counts its routed blocks at the
capacity fraction of tokens, MoE the top-k experts a token visits).
"""

from __future__ import annotations

import time

from lumina.study.spec import StudySpec


def steps_for(budget: float, flops_per_token: float, tokens_per_step: int) -> int:
    return max(1, round(budget / (flops_per_token * tokens_per_step)))


def train_run(spec: StudySpec, cfg, data, seed: int, budget: float, tokenizer) -> dict:
    """The run's record: what it trained, for how many FLOPs, and its held-out loss."""
    import torch

    from lumina.accounting import account
    from lumina.bench.baselines import build
    from lumina.pretrain import build_parser
    from lumina.train.optim import lr_at

    acc = account(cfg)
    steps = steps_for(budget, acc.flops_per_token, spec.tokens_per_step)
    args = build_parser().parse_args(["--mode", cfg.mode, "--lr", str(spec.lr), "--seed", str(seed)])
    base = build("plain", args, cfg)
    loader = data.train_loader(spec.seq, spec.micro_batch, seed, tokenizer)
    warmup = max(1, steps // 10)
    start = time.perf_counter()
    losses = []
    for it in range(steps):
        lm = base.step(loader.next_batch(), lr_at(it, spec.lr, spec.lr / 10, warmup, steps))
        losses.append(float(lm.detach()))
    train_seconds = time.perf_counter() - start
    noop = _noop_fraction(base.model)
    base.model.eval()
    with torch.no_grad():
        valid = [float(base.loss_of(batch)[0]) for batch in data.valid_batches]
    tail = losses[-max(1, steps // 10):]
    return {"dataset": data.name, "budget": budget, "seed": seed, "mode": cfg.mode,
            "hidden_size": cfg.hidden_size, "ffn_hidden_size": cfg.ffn_hidden_size,
            "params_total": acc.params_total, "params_non_embedding": acc.params_non_embedding,
            "flops_per_token": acc.flops_per_token, "steps": steps, "tokens": steps * spec.tokens_per_step,
            "flops": steps * spec.tokens_per_step * acc.flops_per_token,
            "train_loss": sum(tail) / len(tail), "valid_loss": sum(valid) / len(valid),
            "train_seconds": train_seconds, "noop_fraction": noop}


def _noop_fraction(model) -> float | None:
    """The no-op experts' share of the last step's assignments, over MoE layers (integrated MoDE);
    None without no-op experts."""
    from lumina.model.moe import MoE

    values = [float(m.stats["noop_fraction"]) for m in model.modules()
              if isinstance(m, MoE) and m.num_router_outputs > m.num_experts and m.stats]
    return sum(values) / len(values) if values else None
