#!/usr/bin/env bash
# The whole GPU check of the routing kernels in one go, about 3 to 5 minutes on one GPU:
#   1. build lumina._C with its CUDA kernels, in place, for this GPU's architecture only
#      (scripts/check_cuda_compile.sh covers sm_80 and sm_90 without a GPU);
#   2. the gpu-marked tests (CUDA kernels against the reference on the same device);
#   3. the benchmark on CUDA, with permute/unpermute bandwidth against the HBM peak.
# Logs and bench JSON go to $LUMINA_GPU_OUT (default: $OUT if set, else /tmp/lumina-gpu).
# Needs a CUDA build of torch, nvcc, pytest and hypothesis; DeepSpeed is optional (bench only).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT_DIR=${LUMINA_GPU_OUT:-${OUT:-/tmp/lumina-gpu}}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA device"
print(f"torch {torch.__version__} CUDA {torch.version.cuda} on {torch.cuda.get_device_name()}")
EOF
ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")

echo "== build (TORCH_CUDA_ARCH_LIST=$ARCH)"
start=$SECONDS
TORCH_CUDA_ARCH_LIST=$ARCH LUMINA_BUILD_CUDA=1 LUMINA_REQUIRE_EXT=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    timeout 240 "$PY" setup.py build_ext --inplace >"$OUT_DIR/build.log" 2>&1 \
    || { tail -40 "$OUT_DIR/build.log"; echo "build failed"; exit 1; }
echo "built in $((SECONDS - start)) s"
"$PY" -c "import argparse; from lumina.commands import doctor; doctor.run(argparse.Namespace(json=False, strict=False))" \
    | tee "$OUT_DIR/doctor.txt" || echo "lumina doctor failed (continuing)"

echo "== tests"
timeout 150 "$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider 2>&1 | tee "$OUT_DIR/tests.log"

echo "== benchmark"
timeout 120 "$PY" bench/bench_routing.py --device cuda --tokens 65536 --experts 8 --top-k 2 --hidden 4096 \
    --mod-batch 8 --mod-seq 8192 --json "$OUT_DIR/bench_gpu.json" 2>&1 | tee "$OUT_DIR/bench.log"
