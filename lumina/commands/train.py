"""`lumina train`: the pre-training job in one process (defaults: debug preset, hybrid mode,
embedded corpus, CPU in a few minutes)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    from lumina.train.args import add_train_args

    add_train_args(parser)


def run(args: argparse.Namespace) -> int:
    from lumina.train.loop import train

    return train(args)
