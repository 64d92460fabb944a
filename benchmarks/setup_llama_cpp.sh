#!/usr/bin/env bash
# Builds llama-cpp-python from source into .bench-env/llama_cpp (git-ignored), the environment of
# bench_cpu_decode.py's llama.cpp peer: PyPI has no prebuilt wheel for this platform. CPU build,
# native instructions (as a user of llama.cpp would build it); about 10 minutes on 2 cores.
#   bash benchmarks/setup_llama_cpp.sh
#   PYTHONPATH=.bench-env/llama_cpp python benchmarks/bench_cpu_decode.py --repeats 5
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
PY=${PYTHON:-.venv/bin/python}
TARGET=.bench-env/llama_cpp
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip download -q --no-deps --no-binary :all: -d "$WORK" "llama-cpp-python==$VERSION"
# Native instructions, except AMX: on a KVM guest with AMX (Xeon 4th/5th gen), this llama.cpp's AMX
# matmul dies with SIGILL at its first tile instruction (tilezero, in ggml_backend_amx_mul_mat) on any
# prompt of more than one token. There the build names the CPU's vector extensions one by one instead.
ISA="-DGGML_NATIVE=ON"
if grep -qw amx_tile /proc/cpuinfo; then
  ISA="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  for pair in avx:AVX avx2:AVX2 bmi2:BMI2 fma:FMA f16c:F16C avx_vnni:AVX_VNNI avx512f:AVX512 \
              avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
    grep -qw "${pair%%:*}" /proc/cpuinfo && ISA="$ISA -DGGML_${pair##*:}=ON"
  done
fi
echo "llama.cpp instruction sets: $ISA"
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
CMAKE_ARGS="$ISA -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
  "$PY" -m pip wheel -q --no-deps -w "$WORK/wheel" "$WORK"/llama_cpp_python-"$VERSION".tar.gz
# Its runtime dependencies besides numpy, jinja2 and typing-extensions (already in the project's venv).
"$PY" -m pip install -q --no-deps --upgrade --target "$TARGET" "$WORK"/wheel/*.whl diskcache
echo "llama-cpp-python $VERSION in $TARGET; run: PYTHONPATH=$TARGET $PY benchmarks/bench_cpu_decode.py"
