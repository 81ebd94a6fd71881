"""The `lumina` console command.

Each subcommand lives in its own module under `lumina.commands` and exposes two functions:
`configure(parser)` adds its flags and `run(args) -> int` does the work. Command modules keep
heavy imports (torch, deepspeed, datasets) inside `run`, so `lumina --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lumina.util.argtypes import Parser

# name -> (module, one-line help). Registration order is the order `lumina --help` shows.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("lumina.commands.train", "train a model in this process (default: debug hybrid on the embedded corpus)"),
    "eval": ("lumina.commands.eval", "held-out loss and perplexity of a checkpoint"),
    "generate": ("lumina.commands.generate", "sample text from a checkpoint"),
    "presets": ("lumina.commands.presets", "list the 32 preset configs with parameter and FLOP counts"),
    "tokenizer": ("lumina.commands.tokenizer", "train a lossless sentencepiece tokenizer"),
    "prepare-data": ("lumina.commands.prepare_data", "tokenize text into resumable, memory-mapped token shards"),
    "plan": ("lumina.commands.plan", "layout, memory per GPU, speed, time and cost of a run, before submitting it"),
    "dsconfig": ("lumina.commands.dsconfig", "write the DeepSpeed JSON files of ds_configs/ (base and planned)"),
    "slurm": ("lumina.commands.slurm", "write slurm/<preset>_<mode>.sh from the plans, or a CPU variant"),
    "export": ("lumina.commands.export", "a checkpoint as a Hugging Face model (Llama, Mixtral, or Lumina's own file for MoD)"),
    "import": ("lumina.commands.import_hf", "a Hugging Face Llama or Mixtral model as a checkpoint to continue pre-training"),
    "upcycle": ("lumina.commands.upcycle", "a dense model as moe, mod or hybrid: experts copied from the FFN, routers fresh"),
    "bench": ("lumina.commands.bench", "the benchmark table: every mode beside HF Llama/Mixtral and a plain loop, measured"),
    "study": ("lumina.commands.study", "studies that train many small models: `lumina study isoflop` (every mode at equal FLOPs)"),
    "doctor": ("lumina.commands.doctor", "versions (torch, DeepSpeed, megatron-core, CUDA), the backend of each routing op, active apex kernels"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lumina", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).configure(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its one-line error (or the help)
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except ValueError as exc:  # our validation errors: one clear line, no traceback
        print(f"lumina {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
