#!/usr/bin/env bash
# Builds Benchmarks/gemm_bench.c against Sources/CKernels/kernels.c and runs it; arguments go to the benchmark.
# With VLM_SIMD=avx2 in the environment the kernels stay on their AVX2 bodies on an AVX-512 machine (A/B runs of
# the same build): `VLM_SIMD=avx2 bash Benchmarks/kernels.sh --only gemm`.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${TMPDIR:-/tmp}/vlm-gemm-bench"
# clang, as SwiftPM builds the C target (gcc -O2 keeps some register arrays of the kernels in memory)
"${CC:-$(command -v clang || echo cc)}" -O2 -I Sources/CKernels/include Benchmarks/gemm_bench.c Sources/CKernels/kernels.c -lpthread -lm -o "$out"
exec "$out" "$@"
