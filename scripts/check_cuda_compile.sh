#!/usr/bin/env bash
# Compile-check the CUDA routing kernels without a GPU; exits non-zero on any compile error.
#
#   1. nvcc compiles csrc/*.cu for sm_80 and sm_90 with the flags torch gives extension builds.
#   2. The host compiler checks the CUDA glue (csrc/routing_cuda.cpp) and the bindings built with
#      LUMINA_WITH_CUDA against torch's CUDA headers. A CPU-only torch ships those headers but not
#      c10/cuda/impl/cuda_cmake_macros.h, hence -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE.
#
# Nothing is linked (a CPU-only torch has no CUDA libraries). About 1 to 2 minutes on 2 cores.
# Usage: scripts/check_cuda_compile.sh   (NVCC=/path/to/nvcc and CXX=c++ override the tools)
set -euo pipefail

cd "$(dirname "$0")/.."
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
CXX="${CXX:-c++}"
if [[ ! -x "$NVCC" ]]; then
    echo "check_cuda_compile: nvcc not found (set NVCC or put it on PATH)" >&2
    exit 2
fi
# The toolkit root, for cuda_runtime_api.h: CUDA_HOME, else next to nvcc, else /usr/local/cuda
# (nvcc may be a wrapper script elsewhere on PATH).
CUDA_ROOT=""
for root in "${CUDA_HOME:-}" "$(dirname "$(readlink -f "$NVCC")")/.." /usr/local/cuda; do
    if [[ -n "$root" && -f "$root/include/cuda_runtime_api.h" ]]; then CUDA_ROOT="$root"; break; fi
done
if [[ -z "$CUDA_ROOT" ]]; then
    echo "check_cuda_compile: CUDA headers not found (set CUDA_HOME)" >&2
    exit 2
fi

# torch's include paths and the nvcc flags torch.utils.cpp_extension adds for extensions.
mapfile -t TORCH_INFO < <(python - <<'EOF'
import sysconfig
from torch.utils import cpp_extension as c
print(" ".join("-I" + p for p in c.include_paths()))
print(" ".join(c.COMMON_NVCC_FLAGS))
print(sysconfig.get_paths()["include"])
EOF
)
TORCH_INCLUDES=${TORCH_INFO[0]}
TORCH_NVCC_FLAGS=${TORCH_INFO[1]}
PY_INCLUDE=${TORCH_INFO[2]}

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
echo "check_cuda_compile: $("$NVCC" --version | tail -1)"

status=0
for cu in csrc/*.cu; do
    echo "  nvcc sm_80 sm_90  $cu"
    # shellcheck disable=SC2086 # the flag strings are lists
    "$NVCC" -std=c++17 -O3 -Icsrc $TORCH_NVCC_FLAGS -DLUMINA_WITH_CUDA \
        -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
        -Xcompiler -fPIC -c "$cu" -o "$OUT/$(basename "$cu").o" || status=1
done

for cpp in csrc/routing_cuda.cpp csrc/bindings.cpp; do
    echo "  $CXX -fsyntax-only (LUMINA_WITH_CUDA)  $cpp"
    # shellcheck disable=SC2086
    "$CXX" -std=c++20 -fsyntax-only -fopenmp -Icsrc $TORCH_INCLUDES -I"$CUDA_ROOT/include" -I"$PY_INCLUDE" \
        -DLUMINA_WITH_CUDA -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -DTORCH_EXTENSION_NAME=_C \
        -DTORCH_API_INCLUDE_EXTENSION_H "$cpp" || status=1
done

if [[ $status -ne 0 ]]; then
    echo "check_cuda_compile: FAILED" >&2
    exit 1
fi
echo "check_cuda_compile: ok (sm_80, sm_90)"
