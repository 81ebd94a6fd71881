"""`lumina generate --load DIR --prompt TEXT`: sample from a checkpoint (temperature, top-p)."""

from __future__ import annotations

import argparse

from lumina.util.argtypes import NON_NEGATIVE, SEED, number

# Each new token re-runs the model over the window (no KV cache, lumina.train.inference), so a
# long sample is slow; the cap keeps a typo from running for hours.
MAX_NEW_TOKENS = 16384


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--load", required=True, help="checkpoint directory (as given to --save)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=number(int, 1, MAX_NEW_TOKENS), default=100,
                        help=f"at most {MAX_NEW_TOKENS}; the text is printed as it is generated")
    parser.add_argument("--temperature", type=NON_NEGATIVE, default=0.8, help="0 = greedy")
    parser.add_argument("--top-p", type=number(float, 0, 1, low_open=True), default=0.95)
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--tokenizer-model", default=None, help="sentencepiece .model (default: embedded)")


def run(args: argparse.Namespace) -> int:
    import torch

    from lumina.train.inference import generate, load_model

    import sys

    model, meta, tokenizer = load_model(args.load, args.tokenizer_model)
    # Training documents follow an EOS in the token stream, so EOS is the start-of-document context.
    prompt = [tokenizer.eos_id] + tokenizer.encode(args.prompt)
    out: list[int] = []
    shown = ""
    sys.stdout.write(args.prompt)
    sys.stdout.flush()

    def show(token: int) -> None:  # print the text as it grows (a piece may complete a character later)
        nonlocal shown
        out.append(token)
        text = tokenizer.decode(out)
        if text.startswith(shown):
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text

    generate(model, prompt, args.max_new_tokens, args.temperature, args.top_p,
             torch.Generator().manual_seed(args.seed), eos_id=tokenizer.eos_id, on_token=show)
    sys.stdout.write(tokenizer.decode(out)[len(shown):] + "\n")
    return 0
