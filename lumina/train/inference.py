"""Loading a trained model for evaluation and sampling, outside DeepSpeed."""

from __future__ import annotations

import math

import torch

from lumina.config import ModelConfig
from lumina.model import LuminaLM
from lumina.train.checkpoint import load_model_weights


def load_model(load_dir: str, tokenizer_model: str | None = None) -> tuple[LuminaLM, dict, object]:
    """(model in eval mode, checkpoint metadata, tokenizer); the tokenizer must be the one the
    checkpoint was trained with."""
    import os

    from lumina.data import load_tokenizer

    if not os.path.isdir(load_dir):
        raise ValueError(f"--load={load_dir!r}: no such checkpoint directory")
    state, meta = load_model_weights(load_dir)
    tokenizer = load_tokenizer(tokenizer_model)
    if tokenizer.sha256 != meta.get("tokenizer_sha256"):
        raise ValueError(f"--tokenizer-model={tokenizer_model!r} is not the tokenizer the checkpoint "
                         "was trained with (sha256 differs)")
    model = LuminaLM(ModelConfig.from_dict(meta["model"]))
    model.load_state_dict(state)
    return model.eval(), meta, tokenizer


@torch.no_grad()
def evaluate(model: LuminaLM, loader, iters: int) -> dict:
    total = 0.0
    for _ in range(iters):
        batch = loader.next_batch()
        total += float(model(batch[:, :-1], labels=batch[:, 1:]).loss)
    loss = total / iters
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "batches": iters,
            "tokens": iters * loader.micro_batch_size * loader.seq_length}


@torch.no_grad()
def generate(model: LuminaLM, prompt_ids: list[int], max_new_tokens: int, temperature: float,
             top_p: float, generator: torch.Generator, eos_id: int | None = None,
             on_token=None) -> list[int]:
    """Temperature + nucleus (top-p, Holtzman et al. 2020) sampling in causal mode: MoD routes by
    its predictor and MoE runs dropless, so no decision looks at tokens not yet generated.
    Each step re-runs the window (no KV cache: MoD layers see a different token subset per step)."""
    if not temperature >= 0 or temperature == float("inf"):  # also refuses NaN
        raise ValueError(f"--temperature={temperature} is invalid: must be a finite number >= 0 (0 = greedy)")
    if not 0 < top_p <= 1:
        raise ValueError(f"--top-p={top_p} is invalid: must be in (0, 1]")
    ids = list(prompt_ids)
    window = model.cfg.seq_length
    for _ in range(max_new_tokens):
        x = torch.tensor([ids[-window:]])
        logits = model(x, causal=True).logits[0, -1].float()
        if temperature == 0:
            nxt = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits / temperature, -1)
            sorted_p, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p  # smallest set reaching top_p
            sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
            nxt = int(order[torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)])
        ids.append(nxt)
        if on_token is not None:
            on_token(nxt)
        if eos_id is not None and nxt == eos_id:
            break
    return ids[len(prompt_ids):]
