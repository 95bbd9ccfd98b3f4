# Shared settings for scripts/kernel/*.sh and scripts/vm/*.sh. Source it, do not run it.
# shellcheck shell=bash
# shellcheck disable=SC2034  # variables are used by the scripts that source this file

# Where everything downloaded or built lives (outside the repository).
CACHE="${FASTIO_CACHE:-/var/cache/fastio-rs}"

# Repository root (this file is scripts/kernel/common.sh).
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# Kernel source: Debian's linux-source-$KERNEL_SERIES from trixie-backports.
KERNEL_SERIES=7.3
KERNEL_SRC_PKG="linux-source-$KERNEL_SERIES"
DEBIAN_MIRROR="${FASTIO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# Config fragment merged into tinyconfig.
KERNEL_FRAGMENT="${FASTIO_KERNEL_CONFIG:-$REPO_ROOT/kmod/kernel.config}"

# Toolchain for Rust-for-Linux 7.3 (shared/KERNEL.md): Debian's rustc-web (it has the
# library source the kernel needs; rustup's rustc first on PATH does not), bindgen 0.71.1,
# libclang 19, GCC.
KRUSTC=/usr/bin/rustc
BINDGEN_VERSION=0.71.1
BINDGEN="$CACHE/bindgen/bin/bindgen"
KLIBCLANG_PATH=/usr/lib/llvm-19/lib

KERNEL_DEB_PACKAGES=(
    build-essential bc flex bison libelf-dev libssl-dev cpio xz-utils python3-venv
    qemu-system-x86 busybox-static kmod udev rustc-web cargo-web rust-web-src
    libclang1-19 libclang-common-19-dev e2fsprogs
)

log() { printf '%s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

ensure_cache_dir() {
    if ! mkdir -p "$CACHE" 2>/dev/null || [[ ! -w "$CACHE" ]]; then
        die "cache dir $CACHE is not writable: run as root or set FASTIO_CACHE to a writable directory"
    fi
}

# Variables every kernel or module make needs. NB: do not pass LLVM=0: Kbuild treats any
# non-empty LLVM as LLVM=1 (clang), and bookworm's clang 14 is too old.
kernel_make_args() {
    printf '%s\n' "RUSTC=$KRUSTC" "HOSTRUSTC=$KRUSTC" "BINDGEN=$BINDGEN" "LIBCLANG_PATH=$KLIBCLANG_PATH"
}
