#!/usr/bin/env bash
# Build (once, cached) a small QEMU-friendly Linux 7.3 kernel with CONFIG_RUST=y from
# Debian's linux-source-7.3 (trixie-backports) and the repo's config fragment
# kmod/kernel.config (tinyconfig + fragment). The build dir doubles as KDIR for
# out-of-tree modules: make -C KDIR M=... $(scripts/kernel/build.sh --print-make-args) modules
#
# Usage: scripts/kernel/build.sh [options]
#   (no option)        install deps, fetch + extract the source, build; print KDIR last
#   --print-kdir       print the build dir (KDIR) and exit, without building
#   --print-make-args  print the make variables modules need (one per line) and exit
#   --refresh          ask the archive for the current linux-source-7.3 version even if
#                      one was downloaded before (default: reuse the cached version)
#   -v, --verbose      stream make's output (default: one progress line every 30 s)
#   -j N               make parallelism (default: nproc)
# Env: FASTIO_CACHE (default /var/cache/fastio-rs), FASTIO_KERNEL_CONFIG (fragment path)
#
# Cache layout (under $FASTIO_CACHE):
#   apt/             private apt sources list, lists, cache (the machine's apt config is untouched)
#   src/VERSION-linux-source-7.3   Debian version of the extracted source
#   src/<version>/linux-source-7.3/ extracted source tree (stamp: src/<version>/.extracted)
#   kernel/<version>-<sha256(fragment)[:12]>/  O= build dir = KDIR
#       .fastio-built (stamp, written last), fastio-build.log, arch/x86/boot/bzImage
#   bindgen/bin/bindgen
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/kernel/common.sh
source "$SCRIPT_DIR/common.sh"

MODE=build
REFRESH=0
VERBOSE=0
JOBS="$(nproc)"
while (($#)); do
    case "$1" in
        --print-kdir) MODE=print-kdir ;;
        --print-make-args) MODE=print-make-args ;;
        --refresh) REFRESH=1 ;;
        -v | --verbose) VERBOSE=1 ;;
        -j)
            [[ $# -ge 2 ]] || die "build.sh: -j needs a number"
            JOBS="$2"
            shift
            ;;
        -j*) JOBS="${1#-j}" ;;
        -h | --help)
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *) die "build.sh: unknown argument '$1' (see --help)" ;;
    esac
    shift
done
[[ "$JOBS" =~ ^[0-9]+$ ]] || die "build.sh: -j wants a number, got '$JOBS'"

if [[ $MODE == print-make-args ]]; then
    kernel_make_args
    exit 0
fi

[[ -f "$KERNEL_FRAGMENT" ]] || die "kernel config fragment $KERNEL_FRAGMENT not found"
FRAG_HASH="$(sha256sum "$KERNEL_FRAGMENT" | cut -c1-12)"

APT_DIR="$CACHE/apt"
SRC_ROOT="$CACHE/src"
VERSION_FILE="$SRC_ROOT/VERSION-$KERNEL_SRC_PKG"

# apt-get/apt-cache with a private sources list and private state: /etc/apt and
# /var/lib/apt stay untouched.
apt_private() {
    local tool="$1"
    shift
    "$tool" -q \
        -o Dir::Etc::sourcelist="$APT_DIR/sources.list" \
        -o Dir::Etc::sourceparts=- \
        -o Dir::State::Lists="$APT_DIR/lists" \
        -o Dir::Cache="$APT_DIR/cache" \
        -o Dir::Cache::archives="$APT_DIR/archives" \
        -o APT::Sandbox::User=root \
        -o Acquire::Languages=none \
        "$@"
}

# Set ARCHIVE_VERSION to the version of $KERNEL_SRC_PKG that trixie-backports offers now
# (the private index is refreshed at most once per run).
ARCHIVE_VERSION=""
archive_version() {
    [[ -z "$ARCHIVE_VERSION" ]] || return 0
    mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache" "$APT_DIR/archives/partial"
    cat >"$APT_DIR/sources.list" <<EOF
deb $DEBIAN_MIRROR trixie-backports main
deb $DEBIAN_MIRROR trixie main
EOF
    log "kernel: refreshing the private package index (trixie-backports) in $APT_DIR"
    local out
    if ! out="$(apt_private apt-get update 2>&1)"; then
        printf '%s\n' "$out" | tail -n 20 >&2
        die "apt-get update of the private trixie/trixie-backports index failed (network or signature problem, see above)"
    fi
    if grep -qE '^(W|E):' <<<"$out"; then printf '%s\n' "$out" | grep -E '^(W|E):' >&2; fi
    local ver
    ver="$(apt_private apt-cache show --no-all-versions "$KERNEL_SRC_PKG" 2>/dev/null |
        awk '/^Version:/ {print $2; exit}' || true)"
    if [[ -z "$ver" ]]; then
        die "trixie-backports no longer has $KERNEL_SRC_PKG (Debian replaced the $KERNEL_SERIES series with a newer one); update KERNEL_SERIES in scripts/kernel/common.sh and check kmod against the new kernel"
    fi
    ARCHIVE_VERSION="$ver"
}

# Set VERSION to the source version to use: the one downloaded before, unless --refresh
# or none yet.
source_version() {
    if [[ $REFRESH == 0 && -s "$VERSION_FILE" ]]; then
        VERSION="$(cat "$VERSION_FILE")"
        [[ ! -f "$SRC_ROOT/$VERSION/.extracted" ]] || return 0
    fi
    archive_version
    VERSION="$ARCHIVE_VERSION"
}

kdir_for() { printf '%s\n' "$CACHE/kernel/$1-$FRAG_HASH"; }

if [[ $MODE == print-kdir ]]; then
    if [[ $REFRESH == 0 && -s "$VERSION_FILE" ]]; then
        kdir_for "$(cat "$VERSION_FILE")"
    else
        ensure_cache_dir
        archive_version
        kdir_for "$ARCHIVE_VERSION"
    fi
    exit 0
fi

ensure_cache_dir
mkdir -p "$CACHE/kernel"

# One build at a time per cache (two make targets started together would race).
exec 9>"$CACHE/kernel/.lock"
if ! flock -n 9; then
    log "kernel: another build.sh holds $CACHE/kernel/.lock; waiting for it"
    flock 9
fi

T0=$SECONDS
source_version
KDIR="$(kdir_for "$VERSION")"
STAMP="$KDIR/.fastio-built"
if [[ -f "$STAMP" && -f "$KDIR/arch/x86/boot/bzImage" ]]; then
    log "kernel: cached build of $KERNEL_SRC_PKG $VERSION with fragment $FRAG_HASH is up to date"
    bash "$SCRIPT_DIR/deps.sh" --quiet
    printf 'KDIR=%s\n' "$KDIR"
    exit 0
fi

log "kernel: building $KERNEL_SRC_PKG $VERSION with $(basename "$KERNEL_FRAGMENT") ($FRAG_HASH) in $KDIR"
bash "$SCRIPT_DIR/deps.sh"

# ---- fetch + extract the source once -------------------------------------------------
SRC_DIR="$SRC_ROOT/$VERSION/$KERNEL_SRC_PKG"
if [[ ! -f "$SRC_ROOT/$VERSION/.extracted" ]]; then
    # Make sure the archive still has exactly this version before downloading.
    archive_version
    if [[ "$ARCHIVE_VERSION" != "$VERSION" ]]; then
        log "kernel: the archive now has $KERNEL_SRC_PKG $ARCHIVE_VERSION (cached version $VERSION is incomplete); using it"
        VERSION="$ARCHIVE_VERSION"
        KDIR="$(kdir_for "$VERSION")"
        STAMP="$KDIR/.fastio-built"
        SRC_DIR="$SRC_ROOT/$VERSION/$KERNEL_SRC_PKG"
    fi
fi
if [[ ! -f "$SRC_ROOT/$VERSION/.extracted" ]]; then
    dl="$APT_DIR/download"
    rm -rf "$dl"
    mkdir -p "$dl"
    log "kernel: downloading $KERNEL_SRC_PKG $VERSION (~170 MB)"
    if ! (cd "$dl" && apt_private apt-get download "$KERNEL_SRC_PKG=$VERSION" >"$dl/download.log" 2>&1); then
        tail -n 20 "$dl/download.log" >&2
        if ! apt_private apt-cache show "$KERNEL_SRC_PKG" >/dev/null 2>&1; then
            die "trixie-backports no longer has $KERNEL_SRC_PKG (Debian replaced the $KERNEL_SERIES series with a newer one)"
        fi
        die "download of $KERNEL_SRC_PKG $VERSION failed (see above)"
    fi
    deb="$(find "$dl" -maxdepth 1 -name "${KERNEL_SRC_PKG}_*.deb" | head -n 1 || true)"
    [[ -n "$deb" ]] || die "apt-get download produced no ${KERNEL_SRC_PKG}_*.deb in $dl"
    log "kernel: extracting $(basename "$deb")"
    dpkg-deb -x "$deb" "$dl/deb" || die "dpkg-deb -x $deb failed"
    tarball="$dl/deb/usr/src/$KERNEL_SRC_PKG.tar.xz"
    [[ -f "$tarball" ]] || die "$deb does not contain usr/src/$KERNEL_SRC_PKG.tar.xz"
    rm -rf "$SRC_ROOT/$VERSION.tmp"
    mkdir -p "$SRC_ROOT/$VERSION.tmp"
    tar -xJf "$tarball" -C "$SRC_ROOT/$VERSION.tmp" || die "untar of $tarball failed"
    [[ -f "$SRC_ROOT/$VERSION.tmp/$KERNEL_SRC_PKG/Makefile" ]] ||
        die "$tarball did not unpack to $KERNEL_SRC_PKG/ as expected"
    rm -rf "${SRC_ROOT:?}/${VERSION:?}"
    mv "$SRC_ROOT/$VERSION.tmp" "$SRC_ROOT/$VERSION"
    touch "$SRC_ROOT/$VERSION/.extracted"
    rm -rf "$dl"
    log "kernel: source ready in $SRC_DIR ($((SECONDS - T0)) s so far)"
fi
printf '%s\n' "$VERSION" >"$VERSION_FILE"

# ---- configure -------------------------------------------------------------------------
mapfile -t MAKE_VARS < <(kernel_make_args)
export LIBCLANG_PATH="$KLIBCLANG_PATH"
kmake() { make -C "$SRC_DIR" O="$KDIR" "${MAKE_VARS[@]}" "$@"; }

mkdir -p "$KDIR"
BUILD_LOG="$KDIR/fastio-build.log"
CONF_STAMP="$KDIR/.fastio-configured"
if [[ ! -f "$CONF_STAMP" || ! -f "$KDIR/.config" ]]; then
    log "kernel: configuring (tinyconfig + $(basename "$KERNEL_FRAGMENT"))"
    {
        kmake rustavailable &&
            kmake tinyconfig &&
            "$SRC_DIR/scripts/kconfig/merge_config.sh" -m -O "$KDIR" "$KDIR/.config" "$KERNEL_FRAGMENT" &&
            kmake olddefconfig
    } >"$KDIR/fastio-config.log" 2>&1 || {
        tail -n 30 "$KDIR/fastio-config.log" >&2
        die "kernel configuration failed (full log: $KDIR/fastio-config.log)"
    }
    # Every fragment line must have survived olddefconfig.
    dropped=()
    while IFS= read -r line; do
        line="${line%%[[:space:]]}"
        if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            grep -qxF "$line" "$KDIR/.config" ||
                dropped+=("$line (now: $(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$KDIR/.config" || echo 'absent: unmet dependency or unknown option'))")
        elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            ! grep -qE "^${BASH_REMATCH[1]}=[ym]" "$KDIR/.config" ||
                dropped+=("$line (now: $(grep -E "^${BASH_REMATCH[1]}=" "$KDIR/.config"))")
        fi
    done <"$KERNEL_FRAGMENT"
    if ! grep -qx 'CONFIG_RUST=y' "$KDIR/.config"; then
        if grep -qx 'CONFIG_RUST=y' "$KERNEL_FRAGMENT"; then
            log "kernel: CONFIG_RUST=y was dropped: check the 'make rustavailable' output in $KDIR/fastio-config.log and options Rust excludes (KASAN with GCC, MODVERSIONS, RANDSTRUCT, DEBUG_INFO_BTF)"
        else
            dropped+=("CONFIG_RUST=y (the fragment must set it)")
        fi
    fi
    if ((${#dropped[@]})); then
        log "kernel: these fragment options did not survive olddefconfig:"
        printf '  %s\n' "${dropped[@]}" >&2
        die "kernel config check failed: ${#dropped[@]} option(s) of $KERNEL_FRAGMENT were dropped (fix their dependencies in the fragment)"
    fi
    touch "$CONF_STAMP"
    log "kernel: config OK (all $(grep -cE '^(CONFIG_|# CONFIG_.* is not set)' "$KERNEL_FRAGMENT") fragment options present, CONFIG_RUST=y)"
fi

# ---- build (incremental: an interrupted build resumes) ---------------------------------
log "kernel: make -j$JOBS (log: $BUILD_LOG); a build from scratch takes ~7 min on 2 cores"
TB=$SECONDS
if [[ $VERBOSE == 1 ]]; then
    set +e
    kmake -j"$JOBS" 2>&1 | tee "$BUILD_LOG"
    rc=${PIPESTATUS[0]}
    set -e
else
    # make runs in its own process group (set -m) so an interruption stops all of it.
    set -m
    kmake -j"$JOBS" </dev/null >"$BUILD_LOG" 2>&1 &
    mpid=$!
    set +m
    stop_make() {
        kill -TERM -- "-$mpid" 2>/dev/null || return 0
        for _ in $(seq 50); do
            kill -0 -- "-$mpid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL -- "-$mpid" 2>/dev/null || true
        wait "$mpid" 2>/dev/null || true
    }
    trap 'stop_make' EXIT
    trap 'stop_make; log "kernel: build interrupted; run build.sh again to resume"; exit 130' INT
    trap 'stop_make; log "kernel: build terminated; run build.sh again to resume"; exit 143' TERM
    while kill -0 "$mpid" 2>/dev/null; do
        for _ in $(seq 30); do
            kill -0 "$mpid" 2>/dev/null || break
            sleep 1
        done
        if kill -0 "$mpid" 2>/dev/null; then
            last="$(grep -E '^  [A-Z]' "$BUILD_LOG" | tail -n 1 | sed 's/^ *//' || true)"
            log "kernel: [$((SECONDS - TB)) s] ${last:-starting}"
        fi
    done
    set +e
    wait "$mpid"
    rc=$?
    set -e
    trap - EXIT INT TERM
fi
if ((rc != 0)); then
    grep -E 'error|Error|ERROR' "$BUILD_LOG" | head -n 20 >&2 || true
    log "--- last lines of $BUILD_LOG ---"
    tail -n 40 "$BUILD_LOG" >&2
    die "kernel build failed (exit $rc); full log: $BUILD_LOG"
fi
[[ -f "$KDIR/arch/x86/boot/bzImage" ]] || die "make succeeded but $KDIR/arch/x86/boot/bzImage is missing"
[[ -f "$KDIR/Module.symvers" ]] || die "make succeeded but $KDIR/Module.symvers is missing (modules cannot be built)"
printf 'package=%s\nversion=%s\nfragment_sha256=%s\nbuilt=%s\nseconds=%s\n' \
    "$KERNEL_SRC_PKG" "$VERSION" "$(sha256sum "$KERNEL_FRAGMENT" | cut -d' ' -f1)" \
    "$(date -u +%FT%TZ)" "$((SECONDS - TB))" >"$STAMP"
log "kernel: built $(cat "$KDIR/include/config/kernel.release" 2>/dev/null || echo "$VERSION") in $((SECONDS - TB)) s (total $((SECONDS - T0)) s)"
printf 'KDIR=%s\n' "$KDIR"
