"""Baselines trained on exactly Lumina's batches, schedule and shapes, each in a plain loop.

- `hf`: Hugging Face `transformers` LlamaForCausalLM (dense) or MixtralForCausalLM (moe), built
  from Lumina's config: width, layers, heads, KV heads, SwiGLU width (per expert), vocabulary,
  RoPE base, RMSNorm epsilon, tied embeddings, init std, 8 experts top-2 with the same
  load-balancing coefficient. SDPA attention. Mixtral is dropless and has no router z-loss;
  Lumina's MoE has a capacity factor and a z-loss (docs/benchmarks.md says so).
- `plain`: Lumina's own model in a bare PyTorch loop (no DeepSpeed engine), nanoGPT-style: what
  the trainer's machinery costs or saves.

Both use torch's fused AdamW, as Lumina's trainer does (and as the Hugging Face Trainer does by
default, `adamw_torch_fused`), with Lumina's decay groups (matrices only), betas, epsilon, gradient
clipping at 1.0 and learning-rate schedule (`lumina.train.optim.lr_at`), and read batches from
Lumina's loader with the same seed, so every system sees the same tokens in the same order.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass


def hf_model(cfg, mode: str):
    """The transformers model with Lumina's shapes; None for modes transformers has no model of."""
    import transformers

    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
                  num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                  num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                  max_position_embeddings=cfg.seq_length, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                  tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std, use_cache=False,
                  attn_implementation="sdpa")
    if mode == "dense":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, attention_bias=False, mlp_bias=False))
    if mode == "moe":
        moe = cfg.moe
        return transformers.MixtralForCausalLM(transformers.MixtralConfig(
            **common, num_local_experts=moe.num_experts, num_experts_per_tok=moe.top_k,
            router_aux_loss_coef=moe.aux_loss_coef, output_router_logits=True, router_jitter_noise=0.0))
    return None


def hf_name(mode: str) -> str:
    return {"dense": "hf-llama", "moe": "hf-mixtral"}[mode]


def _groups(model, weight_decay: float) -> list[dict]:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not n.endswith(".bias")]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and not n.endswith(".bias"))]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


@dataclass
class Baseline:
    """A baseline system ready to train: its model and optimizer, and one step of it."""
    name: str
    model: object
    loss_of: Callable       # batch -> (LM loss, loss with the aux terms)
    optimizer: object
    clip: float

    def step(self, batch, lr: float):
        """One training step at learning rate `lr`; the LM loss, for the curve."""
        import torch

        for group in self.optimizer.param_groups:
            group["lr"] = lr
        lm, total = self.loss_of(batch)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lm


def build(kind: str, args, cfg) -> Baseline:
    """The `kind` baseline (hf or plain) for the trainer flags `args` and Lumina's config `cfg`,
    initialised from args.seed."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    if kind == "hf":
        model = hf_model(cfg, args.mode)
        if model is None:
            raise ValueError(f"baseline hf has no model of mode {args.mode!r}: transformers has "
                             f"{' and '.join(f'{m} ({hf_name(m)})' for m in ('dense', 'moe'))}")
        name = hf_name(args.mode)

        def loss_of(batch):
            out = model(input_ids=batch[:, :-1])
            lm = F.cross_entropy(out.logits.float().flatten(0, 1), batch[:, 1:].flatten())
            aux = getattr(out, "aux_loss", None)
            return lm, (lm + cfg.moe.aux_loss_coef * aux) if aux is not None else lm
    elif kind == "plain":
        from lumina.model.transformer import LuminaLM

        model = LuminaLM(cfg, init_seed=args.seed)
        name = "plain"

        def loss_of(batch):
            out = model(batch[:, :-1], labels=batch[:, 1:])
            return out.loss, out.loss + out.aux_loss
    else:
        raise ValueError(f"baseline kind {kind!r} is unknown: choose hf or plain")
    optimizer = torch.optim.AdamW(_groups(model, args.weight_decay), lr=args.lr,
                                  betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps, fused=True)
    model.train()
    return Baseline(name, model, loss_of, optimizer, args.clip_grad or 1.0)


def train(job: dict) -> dict:
    """Train one baseline as `job` describes (see `runner.run_baseline`); the run's record."""
    import torch

    from lumina.accounting import account
    from lumina.pretrain import build_parser
    from lumina.train.loop import _data, plan_layout
    from lumina.train.optim import lr_at

    args = build_parser().parse_args(job["trainer_args"])
    res, cfg, _, _, tokenizer = plan_layout(args)
    train_loader, valid_loader = _data(args, cfg.seq_length, res.micro_batch_size, 0, 1, tokenizer)
    base = build(job["kind"], args, cfg)
    params_total = sum(p.numel() for p in base.model.parameters())
    tokens_per_iter = res.micro_batch_size * cfg.seq_length
    curve, elapsed = [], 0.0
    for it in range(args.train_iters):
        lr = lr_at(it, args.lr, args.min_lr, args.lr_warmup_iters, args.train_iters)
        batch = train_loader.next_batch()
        start = time.perf_counter()
        lm = base.step(batch, lr)
        seconds = time.perf_counter() - start
        elapsed += seconds
        curve.append({"iteration": it + 1, "tokens": (it + 1) * tokens_per_iter, "loss": float(lm),
                      "seconds": elapsed, "step_seconds": seconds})
    base.model.eval()
    with torch.no_grad():
        valid = [float(base.loss_of(valid_loader.next_batch())[0]) for _ in range(args.eval_iters)]
    peak_mem_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    parts = None
    if job.get("breakdown"):
        # After the record is complete: these extra steps change the weights, not the results.
        from lumina.bench.breakdown import profile_step

        base.model.train()
        batches = iter([train_loader.next_batch() for _ in range(5)])
        parts = profile_step(lambda: base.step(next(batches), args.min_lr), steps=4, warmup=1)
    acc = account(cfg)
    return {"system": base.name, "params_total": params_total, "params_active": acc.params_active,
            "flops_per_token": acc.flops_per_token, "curve": curve,
            "valid_loss": sum(valid) / len(valid), "peak_mem_gb": peak_mem_gb,
            "threads": torch.get_num_threads(), "breakdown": parts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lumina.bench.baselines")
    parser.add_argument("job", help="the job as JSON (runner.baseline_job)")
    job = json.loads(parser.parse_args(argv).job)
    import warnings

    warnings.filterwarnings("ignore")
    record = train(job)
    if not all(math.isfinite(p["loss"]) for p in record["curve"]):
        print(f"lumina bench: {record['system']} produced a non-finite loss", file=sys.stderr)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
