"""`lumina tokenizer train`: a lossless sentencepiece tokenizer from any corpus the pipeline reads."""

from __future__ import annotations

import argparse

from lumina.commands.prepare_data import add_input_arguments, report_invalid_bytes


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = sub.add_parser(
        "train",
        help="train a sentencepiece model (BPE by default)",
        description="Train a lossless sentencepiece model: identity normalisation, whitespace and newlines "
        "kept, byte fallback; ids 0-3 are unk, BOS, EOS, PAD and 4 is newline.",
    )
    add_input_arguments(train)
    train.add_argument("--output", help="the .model file to write (with --embedded: default the shipped file)")
    train.add_argument("--vocab-size", type=int, help="number of pieces, including the 261 reserved ones")
    train.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe", help="default: %(default)s")
    train.add_argument(
        "--max-sentences",
        type=int,
        default=2_000_000,
        help="lines sentencepiece samples, with a fixed seed, when there are more (default: %(default)s)",
    )
    train.add_argument(
        "--embedded",
        action="store_true",
        help="regenerate the tokenizer of the embedded corpus (BPE, 2048 pieces); takes no inputs",
    )


def run(args: argparse.Namespace) -> int:
    import itertools

    from lumina.data.sources import HUB_NAMES, DocumentReader, resolve_inputs
    from lumina.data.tokenizer import EMBEDDED_TOKENIZER, train_embedded_tokenizer, train_tokenizer

    if args.embedded:
        if args.inputs or args.vocab_size is not None:
            raise ValueError(
                "--embedded trains on the embedded corpus with 2048 pieces; drop the inputs and --vocab-size"
            )
        tokenizer = train_embedded_tokenizer(args.output or EMBEDDED_TOKENIZER)
    else:
        if not args.inputs or args.output is None or args.vocab_size is None:
            raise ValueError("give INPUT..., --output FILE.model and --vocab-size N (or --embedded)")
        if any(name in HUB_NAMES for name in args.inputs) and args.max_docs is None:
            raise ValueError("c4 streams 365M documents; give --max-docs")
        with DocumentReader(resolve_inputs(args.inputs), args.text_field, args.encoding_errors) as reader:
            docs = itertools.islice(reader, args.max_docs)
            tokenizer = train_tokenizer(docs, args.output, args.vocab_size, args.model_type, args.max_sentences)
        report_invalid_bytes(reader.invalid_bytes, args.encoding_errors)
    print(f"wrote {tokenizer.path}: {tokenizer.vocab_size} pieces, sha256 {tokenizer.sha256}")
    return 0
