#!/usr/bin/env bash
# GPU benchmark of the four modes at b1 width (2048 hidden, 32/8 heads, SwiGLU 8192, 8 experts
# top-2 for moe/hybrid) with 4 layers instead of 16, sized for a 5-minute slot on one H100 or
# H200 (each mode is cut off at 120 s): tokens/s, MFU (against the datasheet BF16 peak) and peak memory (CUDA max
# allocated) per mode, from Lumina's own trainer in BF16 on the embedded corpus (its tokenizer
# has a 2,048-token vocabulary, not b1's 32,000: the LM head is smaller than b1's).
# Writes $OUT_DIR/gpu_bench.json (rows plus provenance: the commit checked out here, whether the tree
# had uncommitted changes, machine, versions, this command) and gpu_bench.md; `lumina bench --add-gpu
# $OUT_DIR/gpu_bench.json` puts them in docs/benchmarks/results.json and re-renders docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT_DIR=${LUMINA_GPU_OUT:-${OUT:-/tmp/lumina-gpu}}
LAYERS=${LUMINA_GPU_BENCH_LAYERS:-4}
ITERS=${LUMINA_GPU_BENCH_ITERS:-40}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: tests/gpu/bench.sh needs a GPU')"

for mode in dense moe mod hybrid; do
    echo "== b1 x $LAYERS layers, $mode"
    timeout 120 "$PY" -m lumina.pretrain --preset b1 --mode "$mode" --num-layers "$LAYERS" --bf16 \
        --seq-length 2048 --micro-batch-size 8 --global-batch-size 8 --train-iters "$ITERS" \
        --lr-warmup-iters 4 --log-interval 10 --eval-interval 100000 --eval-iters 1 --save-interval 1000000 \
        --no-progress --run-dir "$OUT_DIR/b1_$mode" 2>&1 | grep -v WARNING | tail -4
done

"$PY" - "$OUT_DIR" "$LAYERS" "$ITERS" <<'PYEOF'
import json, os, sys
out, layers, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
import torch
from lumina.util.provenance import provenance, write_json
command = f"LUMINA_GPU_BENCH_LAYERS={layers} LUMINA_GPU_BENCH_ITERS={iters} bash tests/gpu/bench.sh"
rows = []
for mode in ("dense", "moe", "mod", "hybrid"):
    with open(os.path.join(out, f"b1_{mode}", "metrics.jsonl")) as f:
        train = [json.loads(l) for l in f if '"split": "train"' in l]
    steady = train[1:] or train  # the first logged window includes warm-up
    # iters: the last logged iteration (the 120 s cut-off may stop a mode before $ITERS)
    rows.append({"mode": mode, "layers": layers, "iters": train[-1]["iteration"], "gpu": torch.cuda.get_device_name(0),
                 "tokens_per_s": sum(r["tokens_per_s"] for r in steady) / len(steady),
                 "mfu": sum(r["mfu"] for r in steady) / len(steady),
                 "peak_mem_gb": max(r["peak_mem_gb"] for r in train), "final_loss": train[-1]["loss"]})
write_json(os.path.join(out, "gpu_bench.json"), {"rows": rows}, provenance(command))
lines = ["| mode | GPU | layers | tokens/s | MFU | peak memory | final loss |", "| --- | --- | --- | --- | --- | --- | --- |"]
lines += [f"| {r['mode']} | {r['gpu']} | {r['layers']} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | "
          f"{r['peak_mem_gb']:.1f} GiB | {r['final_loss']:.3f} |" for r in rows]
open(os.path.join(out, "gpu_bench.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
with open(os.path.join(out, "gpu_bench.json")) as f:
    commit = json.load(f)["provenance"]
print(f"commit {commit['commit']}" + (" with uncommitted changes" if commit["dirty"] else "")
      if commit["commit"] else "no git checkout here: the commit is unknown, and `lumina bench --add-gpu` will refuse these rows")
PYEOF
