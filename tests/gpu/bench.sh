#!/usr/bin/env bash
# GPU benchmark of the four modes at b1 width (2048 hidden, 32/8 heads, SwiGLU 8192, 8 experts
# top-2 for moe/hybrid) with 4 layers instead of 16, on one H100 or H200: tokens/s, MFU (against
# the datasheet BF16 peak) and peak memory (CUDA max allocated) per mode, from Lumina's own trainer
# in BF16 on the embedded corpus. Two vocabularies:
# - 2048, the embedded tokenizer's: its LM head is far smaller than b1's;
# - 32000, b1's: a sentencepiece BPE of that size trained on the embedded corpus's training split
#   (a few seconds), the corpus tokenized with it (lumina prepare-data), then the same runs.
# Each run is cut off at LUMINA_GPU_BENCH_TIMEOUT seconds (default 75; start-up is most of it).
# Writes $OUT_DIR/gpu_bench.json (2k vocabulary; rows plus provenance: the commit checked out here,
# whether the tree had uncommitted changes, machine, versions, this command; `lumina bench --add-gpu
# $OUT_DIR/gpu_bench.json` puts it in docs/benchmarks/results.json and re-renders docs/benchmarks.md),
# gpu_bench_32000.json (same rows at 32k, same provenance) and gpu_bench.md (both).
# LUMINA_GPU_BENCH_VOCABS="2048" runs the first set only.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT_DIR=${LUMINA_GPU_OUT:-${OUT:-/tmp/lumina-gpu}}
LAYERS=${LUMINA_GPU_BENCH_LAYERS:-4}
ITERS=${LUMINA_GPU_BENCH_ITERS:-40}
LIMIT=${LUMINA_GPU_BENCH_TIMEOUT:-75}
VOCABS=${LUMINA_GPU_BENCH_VOCABS:-2048 32000}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: tests/gpu/bench.sh needs a GPU')"

for vocab in $VOCABS; do
    data=()
    if [[ "$vocab" != 2048 ]]; then
        dir="$OUT_DIR/vocab$vocab"
        mkdir -p "$dir"
        echo "== a $vocab-piece tokenizer and the corpus tokenized with it"
        "$PY" -m lumina.cli tokenizer train lumina/data/corpus/train --output "$dir/tokenizer.model" --vocab-size "$vocab"
        "$PY" -m lumina.cli prepare-data lumina/data/corpus/train --tokenizer "$dir/tokenizer.model" --output "$dir/train" --no-progress
        "$PY" -m lumina.cli prepare-data lumina/data/corpus/validation --tokenizer "$dir/tokenizer.model" --output "$dir/valid" --no-progress
        data=(--tokenizer-model "$dir/tokenizer.model" --data-path "$dir/train" --valid-data-path "$dir/valid")
    fi
    for mode in dense moe mod hybrid; do
        echo "== b1 x $LAYERS layers, $mode, vocabulary $vocab"
        timeout "$LIMIT" "$PY" -m lumina.pretrain --preset b1 --mode "$mode" --num-layers "$LAYERS" --bf16 \
            --seq-length 2048 --micro-batch-size 8 --global-batch-size 8 --train-iters "$ITERS" \
            --lr-warmup-iters 4 --log-interval 10 --eval-interval 100000 --eval-iters 1 --save-interval 1000000 \
            --no-progress --run-dir "$OUT_DIR/b1_${mode}_v$vocab" "${data[@]}" 2>&1 | grep -v WARNING | tail -4 || true
    done
done

"$PY" - "$OUT_DIR" "$LAYERS" "$ITERS" $VOCABS <<'PYEOF'
import json, os, sys
out, layers, iters, vocabs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
import torch
from lumina.util.provenance import provenance, write_json
command = (f"LUMINA_GPU_BENCH_LAYERS={layers} LUMINA_GPU_BENCH_ITERS={iters} "
           f"LUMINA_GPU_BENCH_VOCABS='{' '.join(vocabs)}' bash tests/gpu/bench.sh")
lines = ["| vocabulary | mode | GPU | layers | tokens/s | MFU | peak memory | final loss |",
         "| --- | --- | --- | --- | --- | --- | --- | --- |"]
for vocab in vocabs:
    rows = []
    for mode in ("dense", "moe", "mod", "hybrid"):
        path = os.path.join(out, f"b1_{mode}_v{vocab}", "metrics.jsonl")
        train = [json.loads(l) for l in open(path) if '"split": "train"' in l] if os.path.exists(path) else []
        if not train:
            lines.append(f"| {vocab} | {mode} | | {layers} | no steady-state figures (timed out or failed) | | | |")
            continue
        steady = train[1:] or train  # the first logged window includes warm-up
        # iters: the last logged iteration (the time limit may stop a mode before $ITERS)
        row = {"mode": mode, "layers": layers, "iters": train[-1]["iteration"], "gpu": torch.cuda.get_device_name(0),
               "tokens_per_s": sum(r["tokens_per_s"] for r in steady) / len(steady),
               "mfu": sum(r["mfu"] for r in steady) / len(steady),
               "peak_mem_gb": max(r["peak_mem_gb"] for r in train), "final_loss": train[-1]["loss"]}
        rows.append(row)
        lines.append(f"| {vocab} | {mode} | {row['gpu']} | {layers} | {row['tokens_per_s']:,.0f} | {row['mfu']:.1%} | "
                     f"{row['peak_mem_gb']:.1f} GiB | {row['final_loss']:.3f} |")
    name = "gpu_bench.json" if vocab == "2048" else f"gpu_bench_{vocab}.json"
    write_json(os.path.join(out, name), {"rows": rows}, provenance(command))
open(os.path.join(out, "gpu_bench.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
commit = provenance(command)
print(f"commit {commit['commit']}" + (" with uncommitted changes" if commit["dirty"] else "")
      if commit["commit"] else "no git checkout here: the commit is unknown, and `lumina bench --add-gpu` will refuse these rows")
PYEOF
