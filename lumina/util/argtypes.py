"""Value rules for command-line flags, applied where argparse parses the value, so every entry
point (`lumina train`, `deepspeed lumina/pretrain.py`, `lumina slurm ... -- <flags>`, the planner)
refuses the same values with the same one-line message: `argument --lr: 'nan' is not a finite
number > 0`. torch's or numpy's own message for such a value would not name the flag.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable


class Parser(argparse.ArgumentParser):
    """argparse, with a bad flag reported in one line (the flag, the value, what is accepted) and
    a pointer to --help, instead of the whole usage block first."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def number(kind: type = float, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """An argparse `type`: a finite `kind` (float or int) in the given interval."""
    def show(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    rules = []
    if low is not None:
        rules.append(f"{'>' if low_open else '>='} {show(low)}")
    if high is not None:
        rules.append(f"{'<' if high_open else '<='} {show(high)}")
    rule = ("an integer" if kind is int else "a finite number") + (" " + " and ".join(rules) if rules else "")

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}") from None
        bad = not math.isfinite(value)
        bad = bad or (low is not None and (value <= low if low_open else value < low))
        bad = bad or (high is not None and (value >= high if high_open else value > high))
        if bad:
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}")
        return value

    parse.__name__ = rule  # argparse names the type in some messages
    return parse


POSITIVE = number(float, 0, low_open=True)
NON_NEGATIVE = number(float, 0)
POSITIVE_INT = number(int, 1)
NON_NEGATIVE_INT = number(int, 0)
UNIT_OPEN = number(float, 0, 1, high_open=True)  # Adam's betas: [0, 1)
SEED = number(int, 0, 2**32 - 1)  # numpy's seed range


_SCALE = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def parse_count(text: str) -> float:
    """'4M', '1.5B', '300e9', '2T' -> a number (suffixes are decimal)."""
    t = str(text).strip().upper()
    try:
        value = float(t[:-1]) * _SCALE[t[-1]] if t and t[-1] in _SCALE else float(t)
    except ValueError:
        raise ValueError(f"{text!r} is not a count: use a number with an optional K, M, B or T suffix (e.g. 4M)") from None
    return value


def COUNT(text: str) -> float:  # noqa: N802  (an argparse type, named like the others)
    """An argparse `type`: a finite count > 0 with an optional K/M/B/T suffix."""
    try:
        value = parse_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count > 0 (a number with an optional K, M, B or T suffix)")
    return value
