"""`lumina export --load CKPT --hf OUT`: a checkpoint as a Hugging Face model directory."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--load", required=True, help="checkpoint directory (as given to --save)")
    parser.add_argument("--hf", required=True, metavar="OUT",
                        help="output directory; must not exist yet (or be empty)")
    parser.add_argument("--tokenizer-model", default=None,
                        help="sentencepiece .model the checkpoint was trained with (default: embedded)")


def run(args: argparse.Namespace) -> int:
    from lumina.hf.export import export

    export(args.load, args.hf, args.tokenizer_model)
    return 0
