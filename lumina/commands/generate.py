"""`lumina generate --load DIR --prompt TEXT`: sample from a checkpoint (temperature, top-p)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--load", required=True, help="checkpoint directory (as given to --save)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer-model", default=None, help="sentencepiece .model (default: embedded)")


def run(args: argparse.Namespace) -> int:
    import torch

    from lumina.train.inference import generate, load_model

    if args.max_new_tokens <= 0:
        raise ValueError(f"--max-new-tokens={args.max_new_tokens} is invalid: must be > 0")
    model, meta, tokenizer = load_model(args.load, args.tokenizer_model)
    # Training documents follow an EOS in the token stream, so EOS is the start-of-document context.
    prompt = [tokenizer.eos_id] + tokenizer.encode(args.prompt)
    out = generate(model, prompt, args.max_new_tokens, args.temperature, args.top_p,
                   torch.Generator().manual_seed(args.seed), eos_id=tokenizer.eos_id)
    print(args.prompt + tokenizer.decode(out))
    return 0
