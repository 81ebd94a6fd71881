"""`lumina prepare-data`: tokenize documents into indexed token shards, resumably."""

from __future__ import annotations

import argparse
import os

from lumina.data.sources import ENCODING_ERRORS, INVALID_BYTES_FATE


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say what to read; `lumina tokenizer train` reads the same inputs."""
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="files or folders (.json, .jsonl, .json.gz, .jsonl.gz, .parquet, .txt), or c4 / c4:validation",
    )
    parser.add_argument("--max-docs", type=int, help="read at most this many documents")
    parser.add_argument(
        "--text-field", default="text", help="JSON / parquet field holding the text (default: %(default)s)"
    )
    parser.add_argument(
        "--encoding-errors",
        choices=ENCODING_ERRORS,
        default="replace",
        help="what to do with bytes that are not UTF-8 (default: %(default)s)",
    )


def report_invalid_bytes(invalid_bytes: dict[str, int], encoding_errors: str) -> None:
    for path, count in invalid_bytes.items():
        print(f"{path}: {count} bytes were not UTF-8 and were {INVALID_BYTES_FATE[encoding_errors]}")


def configure(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("--output", help="dataset prefix P: writes P.manifest.json and shards P.00000.{bin,idx}, ...")
    parser.add_argument("--tokenizer", help="sentencepiece .model file (default: the embedded corpus's tokenizer)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="encoding processes (default: the CPU count, %(default)s)",
    )
    parser.add_argument("--docs-per-shard", type=int, default=100_000, help="default: %(default)s")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--rebuild-embedded-corpus",
        metavar="RAW_DIR",
        help="maintainers: regenerate lumina/data/corpus/{train,validation} from the raw "
        "tinyshakespeare.txt and gutenberg/*.txt in RAW_DIR, then exit",
    )


def run(args: argparse.Namespace) -> int:
    from lumina.data.embedded import write_embedded_corpus
    from lumina.data.prepare import prepare_dataset
    from lumina.data.tokenizer import load_tokenizer

    if args.rebuild_embedded_corpus is not None:
        for path in write_embedded_corpus(args.rebuild_embedded_corpus):
            print(f"wrote {path}")
        return 0
    if not args.inputs or args.output is None:
        raise ValueError("give INPUT... and --output PREFIX")
    import os

    from lumina.util.files import check_output_dir

    if os.path.isdir(args.output):
        raise ValueError(f"--output={args.output!r} is a directory; give a prefix inside it, e.g. "
                         f"{os.path.join(args.output, 'train')!r}")
    check_output_dir("--output", os.path.dirname(os.path.abspath(args.output)))
    tokenizer = load_tokenizer(args.tokenizer)
    result = prepare_dataset(
        args.inputs,
        args.output,
        tokenizer,
        workers=args.workers,
        docs_per_shard=args.docs_per_shard,
        text_field=args.text_field,
        encoding_errors=args.encoding_errors,
        max_docs=args.max_docs,
        progress=not args.no_progress,
    )
    report_invalid_bytes(result.invalid_bytes, args.encoding_errors)
    new_docs = result.num_docs - result.resumed_docs
    resumed = f", {result.resumed_docs:,} of them from an earlier run" if result.resumed_docs else ""
    print(
        f"wrote {result.prefix}: {result.num_docs:,} documents{resumed}, {result.num_tokens:,} tokens in "
        f"{result.num_shards} shards; {new_docs:,} documents in {result.seconds:.1f} s"
    )
    return 0
