"""`lumina eval --load DIR`: held-out loss and perplexity of a checkpoint."""

from __future__ import annotations

import argparse
import json


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--load", required=True, help="checkpoint directory (as given to --save)")
    parser.add_argument("--valid-data-path", nargs="+", default=None,
                        help="[weight] prefix ... of prepared shards (default: the embedded corpus's held-out book)")
    parser.add_argument("--tokenizer-model", default=None, help="sentencepiece .model (default: embedded)")
    parser.add_argument("--eval-iters", type=int, default=20)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from lumina.data import BatchLoader, embedded_corpus_shards, parse_data_path
    from lumina.train.inference import evaluate, load_model

    if args.eval_iters <= 0:
        raise ValueError(f"--eval-iters={args.eval_iters} is invalid: must be > 0")
    model, meta, tokenizer = load_model(args.load, args.tokenizer_model)
    prefixes, weights = ([embedded_corpus_shards()[1]], None) if args.valid_data_path is None \
        else parse_data_path(args.valid_data_path)
    loader = BatchLoader(prefixes, weights, seq_length=model.cfg.seq_length,
                         micro_batch_size=args.micro_batch_size, dp_rank=0, dp_size=1, seed=args.seed,
                         tokenizer_sha256=tokenizer.sha256)
    result = {"checkpoint_iteration": meta["iteration"], **evaluate(model, loader, args.eval_iters)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{meta['preset']}/{meta['mode']} at iteration {meta['iteration']}: held-out loss "
              f"{result['loss']:.4f}, perplexity {result['ppl']:.2f} over {result['tokens']} tokens")
    return 0
