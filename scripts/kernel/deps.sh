#!/usr/bin/env bash
# Install what building a Rust-enabled Linux 7.3 kernel, building out-of-tree Rust
# modules against it and booting it under QEMU need (see shared/KERNEL.md):
#   - Debian packages (apt-get; `apt-get update` only when a package has no candidate)
#   - bindgen-cli 0.71.1 under $CACHE/bindgen (cargo install --locked)
# Idempotent: what is already there is skipped. Never prompts.
#
# Usage: scripts/kernel/deps.sh [--packages-only|--bindgen-only] [--quiet]
# Env:   FASTIO_CACHE (default /var/cache/fastio-rs)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/kernel/common.sh
source "$SCRIPT_DIR/common.sh"

want_pkgs=1
want_bindgen=1
QUIET=0
for arg in "$@"; do
    case "$arg" in
        --packages-only) want_bindgen=0 ;;
        --bindgen-only) want_pkgs=0 ;;
        --quiet | -q) QUIET=1 ;;
        -h | --help)
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *) die "deps.sh: unknown argument '$arg' (see --help)" ;;
    esac
done

say() { [[ $QUIET == 1 ]] || log "$@"; }

install_packages() {
    local missing=() p
    for p in "${KERNEL_DEB_PACKAGES[@]}"; do
        if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" != installed ]]; then
            missing+=("$p")
        fi
    done
    if ((${#missing[@]} == 0)); then
        say "deps: all ${#KERNEL_DEB_PACKAGES[@]} Debian packages already installed"
        return 0
    fi
    command -v apt-get >/dev/null || die "deps: apt-get not found; this needs a Debian machine (missing: ${missing[*]})"
    local sudo=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null || die "deps: not root and no sudo; install as root: apt-get install ${missing[*]}"
        sudo=(sudo)
    fi
    log "deps: installing Debian packages: ${missing[*]}"
    # apt-get update once, and only if some missing package has no candidate version.
    local need_update=0
    local pol
    for p in "${missing[@]}"; do
        pol="$(apt-cache policy "$p" 2>/dev/null || true)"
        if [[ "$pol" != *"Candidate: "[0-9]* ]]; then
            need_update=1
            break
        fi
    done
    local aptq=(env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0)
    if ((need_update)); then
        log "deps: apt-get update (package lists are missing or stale)"
        "${sudo[@]}" "${aptq[@]}" update >/dev/null || die "deps: apt-get update failed"
        need_update=2
    fi
    local out
    if ! out="$("${sudo[@]}" "${aptq[@]}" install --no-install-recommends "${missing[@]}" 2>&1)"; then
        if ((need_update != 2)); then
            # Stale lists give 404s: refresh once and retry.
            log "deps: install failed; running apt-get update and retrying once"
            "${sudo[@]}" "${aptq[@]}" update >/dev/null || die "deps: apt-get update failed"
            out="$("${sudo[@]}" "${aptq[@]}" install --no-install-recommends "${missing[@]}" 2>&1)" || {
                printf '%s\n' "$out" | tail -n 30 >&2
                die "deps: apt-get install failed for: ${missing[*]}"
            }
        else
            printf '%s\n' "$out" | tail -n 30 >&2
            die "deps: apt-get install failed for: ${missing[*]}"
        fi
    fi
    for p in "${missing[@]}"; do
        [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" == installed ]] ||
            die "deps: package $p is still not installed after apt-get install"
    done
    log "deps: installed ${#missing[@]} package(s)"
}

install_bindgen() {
    local want="$BINDGEN_VERSION" have=""
    if [[ -x "$BINDGEN" ]]; then
        have="$("$BINDGEN" --version 2>/dev/null | awk '{print $2}' || true)"
    fi
    if [[ "$have" == "$want" ]]; then
        say "deps: bindgen $want already at $BINDGEN"
        return 0
    fi
    local cargo
    cargo="$(command -v cargo || true)"
    [[ -n "$cargo" ]] || cargo=/usr/bin/cargo
    [[ -x "$cargo" ]] || die "deps: no cargo found (install the Debian package cargo-web or rustup) to build bindgen-cli"
    ensure_cache_dir
    log "deps: building bindgen-cli $want with $cargo into $CACHE/bindgen (about 2 minutes)"
    local t0=$SECONDS logf="$CACHE/bindgen-install.log"
    if ! "$cargo" install --locked --quiet bindgen-cli --version "$want" --root "$CACHE/bindgen" --force >"$logf" 2>&1; then
        tail -n 30 "$logf" >&2
        die "deps: cargo install bindgen-cli $want failed (full log: $logf)"
    fi
    have="$("$BINDGEN" --version 2>/dev/null | awk '{print $2}' || true)"
    [[ "$have" == "$want" ]] || die "deps: $BINDGEN reports version '$have', expected $want"
    log "deps: bindgen $want installed in $((SECONDS - t0)) s"
}

((want_pkgs)) && install_packages
((want_bindgen)) && install_bindgen
exit 0
