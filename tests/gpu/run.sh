#!/usr/bin/env bash
# The whole GPU check in one call, sized for one 10-minute device command (about 6 to 8 minutes on one
# H100/H200, estimated, not yet run; every step has its own time limit, and a failing step does not
# stop the ones after it):
#   1. build lumina._C with its CUDA kernels, in place, for this GPU's architecture only
#      (scripts/check_cuda_compile.sh covers sm_80 and sm_90 without a GPU);
#   2. tests/gpu/crash_probe.py: does a bad value raise ValueError or kill the process (CPU and CUDA),
#      with a gdb backtrace and the build facts if it crashes;
#   3. lumina doctor, then the gpu-marked tests (CUDA kernels against the reference on the same device,
#      each asserting that the CUDA kernel served the call; fp64 gradchecks of the CUDA backwards);
#   4. bench/bench_routing.py at S=65536, E=8, k=2, D=4096, bf16: permute/unpermute % of HBM peak;
#   5. tests/gpu/bench.sh: MFU per mode at b1 width, with the embedded 2k and a 32k vocabulary.
# Logs and JSON go to $LUMINA_GPU_OUT (default: $OUT if set, else /tmp/lumina-gpu); the last lines
# repeat every figure. Needs a CUDA build of torch, nvcc, pytest and hypothesis; DeepSpeed for step 5.
# LUMINA_GPU_SKIP_MFU=1 leaves out step 5.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT_DIR=${LUMINA_GPU_OUT:-${OUT:-/tmp/lumina-gpu}}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 LUMINA_GPU_OUT="$OUT_DIR"
declare -A STATUS

"$PY" - <<'PYEOF' || exit 1
import torch
assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA device"
print(f"torch {torch.__version__} CUDA {torch.version.cuda} on {torch.cuda.get_device_name()}")
PYEOF
ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' plus uncommitted changes')"

echo "== build (TORCH_CUDA_ARCH_LIST=$ARCH)"
start=$SECONDS
TORCH_CUDA_ARCH_LIST=$ARCH LUMINA_BUILD_CUDA=1 LUMINA_REQUIRE_EXT=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    timeout 240 "$PY" setup.py build_ext --inplace >"$OUT_DIR/build.log" 2>&1 \
    || { tail -40 "$OUT_DIR/build.log"; echo "build failed"; exit 1; }
echo "built in $((SECONDS - start)) s"

echo "== crash probe"
timeout 200 "$PY" tests/gpu/crash_probe.py 2>&1 | tee "$OUT_DIR/crash_probe.log"
STATUS[crash_probe]=${PIPESTATUS[0]}

"$PY" -m lumina.cli doctor 2>&1 | tee "$OUT_DIR/doctor.txt"

echo "== tests"
timeout 200 "$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider 2>&1 | tee "$OUT_DIR/tests.log"
STATUS[tests]=${PIPESTATUS[0]}

echo "== routing benchmark"
timeout 120 "$PY" bench/bench_routing.py --device cuda --tokens 65536 --experts 8 --top-k 2 --hidden 4096 \
    --dtype bfloat16 --mod-batch 8 --mod-seq 8192 --json "$OUT_DIR/bench_gpu.json" 2>&1 | tee "$OUT_DIR/bench.log"
STATUS[routing_bench]=${PIPESTATUS[0]}

if [[ "${LUMINA_GPU_SKIP_MFU:-0}" != 1 ]]; then
    echo "== MFU (tests/gpu/bench.sh)"
    bash tests/gpu/bench.sh 2>&1 | tee "$OUT_DIR/mfu.log"
    STATUS[mfu_bench]=${PIPESTATUS[0]}
fi

echo "== figures"
grep -E "^crash probe:|^== bad value" "$OUT_DIR/crash_probe.log"
tail -1 "$OUT_DIR/tests.log"
grep -E "^ *(permute|unpermute)\b" "$OUT_DIR/bench.log"
[[ -f "$OUT_DIR/gpu_bench.md" ]] && cat "$OUT_DIR/gpu_bench.md"
failed=0
for step in "${!STATUS[@]}"; do
    echo "$step: exit ${STATUS[$step]}"
    [[ ${STATUS[$step]} -ne 0 ]] && failed=1
done
exit $failed
