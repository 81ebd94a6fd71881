"""Prepare throughput on the C4 fixture, beside sentencepiece's encode-only speed on the same text.

The fixture (200 documents) is repeated to make a workload long enough to time; the documents
are the same, so the work per token is what C4 costs. Three figures, all in tokens per second:

- encode-only bound: sentencepiece encoding the documents already in memory, in 1 and in N
  processes (each process loads its share before the clock starts), one thread each. No
  reading, no writing.
- prepare: `prepare_dataset` end to end on the JSON-lines file with N workers: reading through
  `datasets`, the UTF-8 check, starting the worker pool, encoding, writing and checksumming the
  shards. `datasets` is imported, and its first `load_dataset` call made, before the clock
  starts: a one-off cost of a few seconds per process that a real dataset never notices.

The fixed cost of one prepare call (starting the workers, opening the input) is timed on 10
documents; "steady" throughput leaves it out, which is what a long run sustains.

Each is also given per CPU-second (user + system time of every process involved, workers and
pool start-up included), which other load on the machine changes far less than wall time.

The goal is prepare with 2 workers at >= 70% of the 2-process encode-only bound.

    python bench/bench_prepare.py [--repeat 50] [--rounds 3] [--workers 2] [--tokenizer PATH] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

import sentencepiece as spm

from lumina.data import load_tokenizer, prepare_dataset
from lumina.util.provenance import write_json

ROOT = Path(__file__).resolve().parents[1]

FIXTURE = ROOT / "tests" / "fixtures" / "c4_en_train00000_head_200.jsonl"

_texts: list[str] = []
_sp: spm.SentencePieceProcessor | None = None


def _load_share(model: str, texts: list[str]) -> None:
    global _sp, _texts
    _sp = spm.SentencePieceProcessor(model_file=model)
    _texts = texts


def _encode_share(_: int) -> tuple[int, float]:
    start = time.process_time()
    tokens = sum(len(ids) for ids in _sp.encode(_texts, num_threads=1))
    return tokens, time.process_time() - start


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (prepare's workers once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def encode_only(model: str, texts: list[str], processes: int) -> tuple[int, float, float]:
    """Tokens, wall seconds and CPU seconds for `processes` processes to encode `texts` between them."""
    shares = [texts[i::processes] for i in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    pools = [ctx.Pool(1, _load_share, (model, share)) for share in shares]
    try:
        for pool in pools:  # wait until every process has loaded its share
            pool.apply(int)
        start = time.perf_counter()
        pending = [pool.apply_async(_encode_share, (0,)) for pool in pools]
        results = [p.get() for p in pending]
        wall = time.perf_counter() - start
        return sum(r[0] for r in results), wall, sum(r[1] for r in results)
    finally:
        for pool in pools:
            pool.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=50, help="copies of the 200-document fixture (default: %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs of each (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--tokenizer", help="sentencepiece .model (default: the embedded tokenizer)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    # `datasets` imports much more (pyarrow, torch formatters) on its first load_dataset call;
    # pay that one-off cost before any clock starts.
    import datasets

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "warm.jsonl").write_text('{"text": "warm up"}\n')
        list(datasets.load_dataset("json", data_files=str(Path(tmp) / "warm.jsonl"), split="train", streaming=True))

    tokenizer = load_tokenizer(args.tokenizer)
    lines = FIXTURE.read_text(encoding="utf-8").splitlines(keepends=True)
    texts = [json.loads(line)["text"] for line in lines] * args.repeat
    figures: dict[str, float | int | str] = {
        "documents": len(texts),
        "characters": sum(map(len, texts)),
        "tokenizer": f"{Path(tokenizer.path).name} ({tokenizer.vocab_size} pieces)",
        "cpus": os.cpu_count() or 1,
    }
    counts = sorted({1, args.workers})
    best: dict[str, float] = {}
    fixed: dict[int, float] = {}

    def keep(key: str, value: float) -> None:
        best[key] = max(best.get(key, 0.0), value)

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "c4.jsonl"
        src.write_text("".join(lines) * args.repeat, encoding="utf-8")
        # Rounds interleave every measurement, so a burst of load from elsewhere on the machine
        # cannot favour one of them; each keeps its best round.
        for r in range(args.rounds):
            for n in counts:
                tokens, wall, cpu = encode_only(tokenizer.path, texts, n)
                keep(f"encode_only_{n}p_tok_s", tokens / wall)
                keep(f"encode_only_{n}p_tok_per_cpu_s", tokens / cpu)
                # the fixed cost of a prepare call (worker start-up, opening the input): 10 documents
                small = prepare_dataset([str(src)], str(Path(tmp) / f"small{r}_{n}" / "c4"), tokenizer, n, max_docs=10)
                fixed[n] = min(fixed.get(n, float("inf")), small.seconds)
                out = Path(tmp) / f"round{r}_workers{n}" / "c4"
                cpu_before = _cpu_seconds()
                result = prepare_dataset([str(src)], str(out), tokenizer, workers=n)
                cpu = _cpu_seconds() - cpu_before
                # count encoded text only, as the bound does: prepare also writes one EOS per document
                text_tokens = result.num_tokens - result.num_docs
                keep(f"prepare_{n}w_tok_s", text_tokens / result.seconds)
                keep(f"prepare_{n}w_steady_tok_s", text_tokens / (result.seconds - fixed[n]))
                keep(f"prepare_{n}w_tok_per_cpu_s", text_tokens / cpu)
                figures["tokens"] = text_tokens
    figures.update({f"prepare_{n}w_fixed_cost_s": fixed[n] for n in counts})
    figures.update(best)
    w = args.workers
    figures[f"ratio_prepare_{w}w_vs_encode_only_{w}p"] = best[f"prepare_{w}w_tok_s"] / best[f"encode_only_{w}p_tok_s"]
    figures[f"ratio_prepare_{w}w_steady_vs_encode_only_{w}p"] = (
        best[f"prepare_{w}w_steady_tok_s"] / best[f"encode_only_{w}p_tok_s"]
    )
    figures[f"ratio_prepare_{w}w_vs_encode_only_1p"] = best[f"prepare_{w}w_tok_s"] / best["encode_only_1p_tok_s"]
    figures[f"cpu_ratio_prepare_{w}w_vs_encode_only"] = (
        best[f"prepare_{w}w_tok_per_cpu_s"] / best["encode_only_1p_tok_per_cpu_s"]
    )
    for key, value in figures.items():
        print(f"{key:45s} {value:,.3f}" if isinstance(value, float) else f"{key:45s} {value}")
    if args.json:
        write_json(args.json, figures)


if __name__ == "__main__":
    main()
