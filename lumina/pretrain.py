"""Pre-training entry point for launchers:

    deepspeed lumina/pretrain.py --ds_config ds_configs/zero1.json --preset debug --mode hybrid ...
    torchrun --nproc-per-node 2 -m lumina.pretrain --preset debug --mode moe ...

`lumina train` runs the same code in a single process.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script by the deepspeed launcher: make `lumina` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    from lumina.train.args import add_train_args
    from lumina.util.argtypes import Parser

    parser = Parser(prog="lumina/pretrain.py", description="Lumina pre-training")
    add_train_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from lumina.train.loop import train

    return train(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
