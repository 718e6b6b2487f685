#!/usr/bin/env bash
# Runs the NEON (arm64) kernel bodies on an x86-64 host: cross-compiles Tests/NEONCheck/neon_check.c with
# Sources/CKernels for aarch64 and runs it under qemu-user, comparing every NEON body with the scalar reference.
# Installs what a fresh Debian/Ubuntu machine lacks (qemu-user, the arm64 libc headers; clang and lld come with the
# Swift toolchain). On an arm64 host it compiles and runs natively. Exit status: that of the check.
# Usage: bash Tools/neon-check.sh [extra clang flags, e.g. -fsanitize=address]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${TMPDIR:-/tmp}/vlm-neon-check"
mkdir -p "$out"
srcs=(Tests/NEONCheck/neon_check.c Sources/CKernels/kernels.c Sources/CKernels/resample.c)
flags=(-O2 -std=gnu11 -Wall -Wextra -Werror -I Sources/CKernels/include -lpthread -lm "$@")
if [ "$(uname -m)" = aarch64 ] || [ "$(uname -m)" = arm64 ]; then
    cc "${srcs[@]}" "${flags[@]}" -o "$out/neon_check"
    exec "$out/neon_check"
fi
need=()
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
[ -f /usr/aarch64-linux-gnu/include/stdio.h ] || need+=(libc6-dev-arm64-cross)
ls /usr/lib/gcc-cross/aarch64-linux-gnu/*/libgcc.a >/dev/null 2>&1 || need+=(libgcc-12-dev-arm64-cross)
if [ ${#need[@]} -gt 0 ]; then
    echo "neon-check: installing ${need[*]}"
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
gcc_dir="$(dirname "$(ls /usr/lib/gcc-cross/aarch64-linux-gnu/*/libgcc.a | head -1)")"
clang --target=aarch64-linux-gnu -fuse-ld=lld -static -isystem /usr/aarch64-linux-gnu/include \
    -B/usr/aarch64-linux-gnu/lib -L/usr/aarch64-linux-gnu/lib -B"$gcc_dir" -L"$gcc_dir" \
    "${srcs[@]}" "${flags[@]}" -o "$out/neon_check"
# Twice: a CPU with FEAT_DotProd (SDOT; -cpu max has every extension qemu knows, as Apple M1 and later have it) and
# one without (Cortex-A57), so both decode bodies and the detection between them run.
qemu-aarch64 -cpu max "$out/neon_check" neon-dotprod
qemu-aarch64 -cpu cortex-a57 "$out/neon_check" neon
