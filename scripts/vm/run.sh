#!/usr/bin/env bash
# Boot the cached fastio-rs test kernel (scripts/kernel/build.sh) under QEMU (TCG only) and
# run a command in the guest as root, or an interactive shell when no command is given.
#
# Usage: scripts/vm/run.sh [options] [-- CMD [ARG...]]
#   one CMD word is run as shell code:  run.sh -- 'insmod x.ko && dmesg | tail'
#   several words are run as argv:      run.sh -- cargo test -p fastio
#   no command: interactive bash on the console, in the repo dir (quit: exit, or Ctrl-A x)
#
# The guest sees the host's whole / read-only (under a throwaway tmpfs overlay, so it is
# writable and host-built dynamically linked binaries, /usr, /lib, python3 all work), the
# repository read-write at its host path (plus --share dirs), fresh /proc /sys /dev /tmp /run,
# and loopback up. Kernel command line: console=ttyS0 slub_debug=FZPU panic=-1 ...
#
# Exit status: the command's; 124 if the timeout hit; 125 if the VM failed (no status came
# back: boot failure, kernel panic). In command mode, a kernel log line with WARNING:, BUG:,
# Oops, general protection, a slab corruption report, etc. is printed and fails the run
# (status 1 if the command itself succeeded), unless --allow-kernel-warnings.
#
# Options:
#   --timeout SEC        overall limit, boot included (default 600, env FASTIO_VM_TIMEOUT;
#                        0 = none; interactive mode defaults to none)
#   --share DIR          also share host DIR read-write at the same path (repeatable)
#   --no-repo            do not share the repository read-write (it stays visible read-only)
#   --cwd DIR            working directory in the guest (default: $PWD if it is inside a
#                        read-write share, else the repository)
#   --env NAME=VALUE     set a variable in the guest (repeatable); PATH, HOME=/root, TERM,
#                        RUST_BACKTRACE, RUST_LOG are passed from the host
#   --scratch-ext4 MB    attach a fresh ext4 disk of MB MiB as /dev/vda, mounted at
#                        /mnt/scratch (env FASTIO_SCRATCH=/mnt/scratch in the guest)
#   --disk IMG           attach a raw image as the next virtio disk (repeatable)
#   --mem SIZE           guest memory (default 2G)     --smp N   vCPUs (default 2)
#   --append ARGS        extra kernel command line
#   --qemu-opt ARG       extra QEMU argument (repeatable; one word each)
#   --kernel BZIMAGE     boot this kernel instead of the cached build (build.sh runs if needed)
#   --log-dir DIR        keep console.log and dmesg.txt in DIR
#   --dmesg              print the guest's whole kernel log after the command
#   --allow-kernel-warnings   report kernel log problems but do not fail because of them
#   -v, --verbose        show the whole boot log on the console (default: loglevel 5)
# Env: FASTIO_CACHE (default /var/cache/fastio-rs); the initramfs (static busybox + guest-init.sh)
# is cached there as vm/initramfs-<hash>.cpio.gz.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/kernel/common.sh
source "$SCRIPT_DIR/../kernel/common.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

TIMEOUT=""
SHARES=()
SHARE_REPO=1
CWD=""
ENVS=()
SCRATCH_MB=""
DISKS=()
MEM=2G
SMP=2
APPEND=""
QEMU_EXTRA=()
KERNEL=""
LOG_DIR=""
SHOW_DMESG=0
ALLOW_WARN=0
VERBOSE=0
CMD=()
need_arg() { [[ $# -ge 2 && -n "$2" ]] || die "run.sh: $1 needs a value (see --help)"; }
while (($#)); do
    case "$1" in
        --timeout) need_arg "$@"; TIMEOUT="$2"; shift ;;
        --share) need_arg "$@"; SHARES+=("$2"); shift ;;
        --no-repo) SHARE_REPO=0 ;;
        --cwd) need_arg "$@"; CWD="$2"; shift ;;
        --env) need_arg "$@"; ENVS+=("$2"); shift ;;
        --scratch-ext4) need_arg "$@"; SCRATCH_MB="$2"; shift ;;
        --disk) need_arg "$@"; DISKS+=("$2"); shift ;;
        --mem) need_arg "$@"; MEM="$2"; shift ;;
        --smp) need_arg "$@"; SMP="$2"; shift ;;
        --append) need_arg "$@"; APPEND="$2"; shift ;;
        --qemu-opt) need_arg "$@"; QEMU_EXTRA+=("$2"); shift ;;
        --kernel) need_arg "$@"; KERNEL="$2"; shift ;;
        --log-dir) need_arg "$@"; LOG_DIR="$2"; shift ;;
        --dmesg) SHOW_DMESG=1 ;;
        --allow-kernel-warnings) ALLOW_WARN=1 ;;
        -v | --verbose) VERBOSE=1 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; CMD=("$@"); break ;;
        -*) die "run.sh: unknown option '$1' (see --help)" ;;
        *) CMD=("$@"); break ;;
    esac
    shift
done

if ((${#CMD[@]})); then MODE="test"; else MODE="shell"; fi
if [[ -z "$TIMEOUT" ]]; then
    if [[ $MODE == test ]]; then TIMEOUT="${FASTIO_VM_TIMEOUT:-600}"; else TIMEOUT=0; fi
fi
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "run.sh: --timeout wants whole seconds, got '$TIMEOUT'"
[[ -z "$SCRATCH_MB" || "$SCRATCH_MB" =~ ^[1-9][0-9]*$ ]] || die "run.sh: --scratch-ext4 wants a size in MiB, got '$SCRATCH_MB'"
[[ "$SMP" =~ ^[1-9][0-9]*$ ]] || die "run.sh: --smp wants a number, got '$SMP'"
if [[ $MODE == shell && ! -t 0 ]]; then
    die "run.sh: no command given and stdin is not a terminal (give a command: run.sh -- CMD)"
fi
for e in "${ENVS[@]}"; do
    [[ "$e" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "run.sh: --env wants NAME=VALUE, got '$e'"
done

# ---- tools and kernel ----------------------------------------------------------------------
bash "$SCRIPT_DIR/../kernel/deps.sh" --quiet --packages-only
QEMU="$(command -v qemu-system-x86_64 || true)"
[[ -n "$QEMU" ]] || die "qemu-system-x86_64 not found (scripts/kernel/deps.sh installs qemu-system-x86)"
BUSYBOX=/bin/busybox
[[ -x "$BUSYBOX" ]] || die "$BUSYBOX not found (package busybox-static)"

if [[ -n "$KERNEL" ]]; then
    [[ -f "$KERNEL" ]] || die "run.sh: kernel image $KERNEL not found"
    GEN_CPIO=""
else
    KDIR="$(bash "$SCRIPT_DIR/../kernel/build.sh" | sed -n 's/^KDIR=//p')" ||
        die "run.sh: scripts/kernel/build.sh failed (see above)"
    [[ -n "$KDIR" ]] || die "scripts/kernel/build.sh did not report a KDIR"
    KERNEL="$KDIR/arch/x86/boot/bzImage"
    [[ -f "$KERNEL" ]] || die "$KERNEL is missing after build.sh"
    GEN_CPIO="$KDIR/usr/gen_init_cpio"
fi

# ---- initramfs: static busybox + guest-init.sh, cached by content -------------------------
ensure_cache_dir
mkdir -p "$CACHE/vm"
INIT="$SCRIPT_DIR/guest-init.sh"
IRD_KEY="$(cat "$INIT" "$BUSYBOX" | sha256sum | cut -c1-12)"
INITRAMFS="$CACHE/vm/initramfs-$IRD_KEY.cpio.gz"
if [[ ! -s "$INITRAMFS" ]]; then
    tmp="$(mktemp -d)"
    list="$tmp/list"
    cat >"$list" <<EOF
dir /bin 0755 0 0
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
nod /dev/null 0666 0 0 c 1 3
dir /proc 0755 0 0
dir /sys 0755 0 0
dir /tmp 1777 0 0
file /bin/busybox $BUSYBOX 0755 0 0
file /init $INIT 0755 0 0
EOF
    if [[ -z "$GEN_CPIO" || ! -x "$GEN_CPIO" ]]; then
        # --kernel given: any gen_init_cpio from a cached build will do.
        GEN_CPIO="$(find "$CACHE/kernel" -maxdepth 3 -path '*/usr/gen_init_cpio' -type f 2>/dev/null | head -n 1 || true)"
    fi
    [[ -n "$GEN_CPIO" && -x "$GEN_CPIO" ]] || die "usr/gen_init_cpio not found in a kernel build dir (run scripts/kernel/build.sh)"
    "$GEN_CPIO" "$list" | gzip -9 >"$tmp/initramfs.cpio.gz" || die "creating the initramfs failed"
    mv "$tmp/initramfs.cpio.gz" "$INITRAMFS"
    rm -rf "$tmp"
fi

# ---- per-run directory, shared with the guest as 9p tag fastio_out -------------------------
OUT="$(mktemp -d "${TMPDIR:-/tmp}/fastio-vm.XXXXXX")"
KEEP_OUT=0
# shellcheck disable=SC2317  # called through trap
cleanup() {
    local rc=$?
    if [[ -n "$LOG_DIR" ]]; then
        mkdir -p "$LOG_DIR"
        cp -f "$OUT/console.log" "$OUT/dmesg.txt" "$LOG_DIR/" 2>/dev/null || true
    fi
    if ((KEEP_OUT)) && [[ -z "$LOG_DIR" ]]; then
        rm -f "$OUT"/*.img
        log "vm: logs kept in $OUT"
    else
        rm -rf "$OUT"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

QEMU_ARGS=(
    -accel "tcg,thread=multi" -cpu max -smp "$SMP" -m "$MEM" -nographic -no-reboot -nic none -vga none
    -kernel "$KERNEL" -initrd "$INITRAMFS"
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
    -virtfs "local,path=$OUT,mount_tag=fastio_out,security_model=none,multidevs=remap"
)

# qboot (qemu-system-data) boots faster than SeaBIOS and prints nothing on the console.
QBOOT=/usr/share/qemu/qboot.rom
[[ ! -f "$QBOOT" ]] || QEMU_ARGS+=(-bios "$QBOOT")

# Read-write shares.
RW=()
((SHARE_REPO)) && RW+=("$REPO_ROOT")
for d in "${SHARES[@]}"; do
    [[ -d "$d" ]] || die "run.sh: --share $d is not a directory"
    RW+=("$(cd "$d" && pwd -P)")
done
: >"$OUT/shares"
i=0
for d in "${RW[@]}"; do
    [[ "$d" != *[[:space:]]* ]] || die "run.sh: shared paths must not contain whitespace: '$d'"
    [[ "$d" != / ]] || die "run.sh: cannot share / read-write"
    QEMU_ARGS+=(-virtfs "local,path=$d,mount_tag=share$i,security_model=none,multidevs=remap")
    printf 'share%d %s\n' "$i" "$d" >>"$OUT/shares"
    i=$((i + 1))
done

# Working directory in the guest.
if [[ -z "$CWD" ]]; then
    CWD="$REPO_ROOT"
    here="$(pwd -P)"
    for d in "${RW[@]}"; do
        if [[ "$here" == "$d" || "$here" == "$d"/* ]]; then CWD="$here"; break; fi
    done
fi

# Disks.
SCRATCH=0
if [[ -n "$SCRATCH_MB" ]]; then
    command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 not found (package e2fsprogs)"
    truncate -s "${SCRATCH_MB}M" "$OUT/scratch.img"
    mkfs.ext4 -q -F "$OUT/scratch.img" || die "mkfs.ext4 of the scratch disk failed"
    QEMU_ARGS+=(-drive "file=$OUT/scratch.img,if=virtio,format=raw")
    SCRATCH=1
    ENVS+=("FASTIO_SCRATCH=/mnt/scratch")
fi
for img in "${DISKS[@]}"; do
    [[ -f "$img" ]] || die "run.sh: --disk $img not found"
    [[ "$img" != *,* ]] || die "run.sh: disk image paths must not contain commas: '$img'"
    QEMU_ARGS+=(-drive "file=$img,if=virtio,format=raw")
done

# Kernel command line. acpi=noirq: with slub_debug=FZPU, ACPI PCI interrupt-link setup
# takes ~8 s under TCG; legacy PIRQ routing is instant (virtio uses MSI-X anyway).
CMDLINE="console=ttyS0 slub_debug=FZPU panic=-1 acpi=noirq log_buf_len=4M printk.devkmsg=on rdinit=/init"
# Console log level: test mode shows warnings and worse live (5); the interactive shell
# only errors (4). The whole log is in dmesg either way.
if ((VERBOSE == 0)); then
    if [[ $MODE == test ]]; then CMDLINE+=" loglevel=5"; else CMDLINE+=" loglevel=4"; fi
fi
[[ -z "$APPEND" ]] || CMDLINE+=" $APPEND"
QEMU_ARGS+=(-append "$CMDLINE" "${QEMU_EXTRA[@]}")

# What the guest runs.
ROWS=""
COLS=""
if [[ $MODE == shell ]]; then
    read -r ROWS COLS < <(stty size 2>/dev/null || echo "")
fi
printf 'MODE=%s\nROWS=%s\nCOLS=%s\nSCRATCH=%s\n' "$MODE" "$ROWS" "$COLS" "$SCRATCH" >"$OUT/vm.conf"
{
    echo "# generated by scripts/vm/run.sh"
    printf 'export PATH=%q HOME=/root USER=root LOGNAME=root TERM=%q LANG=C.UTF-8 FASTIO_VM=1\n' \
        "$PATH" "${TERM:-vt100}"
    for v in RUST_BACKTRACE RUST_LOG; do
        [[ -z "${!v:-}" ]] || printf 'export %s=%q\n' "$v" "${!v}"
    done
    for e in "${ENVS[@]}"; do printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"; done
    printf 'cd -- %q || { echo "fastio-vm: cannot cd to %q" >&2; exit 127; }\n' "$CWD" "$CWD"
    if [[ $MODE == shell ]]; then
        echo "export PS1='[fastio-vm \\w]# '"
        echo "echo 'fastio-vm: $(uname -m) guest shell; exit (or Ctrl-A x) powers off'"
        echo "exec /bin/bash --norc -i"
    elif ((${#CMD[@]} == 1)); then
        printf '%s\n' "${CMD[0]}"
    else
        printf '%q ' "${CMD[@]}"
        echo
    fi
} >"$OUT/cmd.sh"

# ---- boot ------------------------------------------------------------------------------------
T0=$SECONDS
TO=()
((TIMEOUT == 0)) || TO=(timeout --kill-after=10)
[[ $MODE == shell ]] && ((TIMEOUT)) && TO+=(--foreground)
((TIMEOUT == 0)) || TO+=("$TIMEOUT")
if [[ $MODE == shell ]]; then
    set +e
    "${TO[@]}" "$QEMU" "${QEMU_ARGS[@]}"
    qrc=$?
    set -e
else
    log "vm: booting $(basename "$(dirname "$(dirname "$(dirname "$(dirname "$KERNEL")")")")") (timeout ${TIMEOUT}s)"
    set +e
    # console.log keeps everything; the terminal is spared known boot noise unless -v:
    # the no_hash_pointers banner (slub_debug implies it) and harmless IRQ/MMCONFIG notes.
    NOISE='^\[ *[0-9.]+\] (\*\*|ACPI: setting ELCR|acpi PNP0A03:00: fail to add MMCONFIG|virtio-pci [0-9a-f:.]+: can.t find IRQ for PCI INT)'
    ((VERBOSE)) && NOISE='^$^'
    "${TO[@]}" "$QEMU" "${QEMU_ARGS[@]}" </dev/null 2>&1 | sed -u 's/\r$//' | tee "$OUT/console.log" |
        { grep -avE --line-buffered "$NOISE" || true; }
    qrc=${PIPESTATUS[0]}
    set -e
fi
ELAPSED=$((SECONDS - T0))

# ---- results -----------------------------------------------------------------------------
BAD_RE='WARNING:|BUG:|BUG [^ ]+ \(|Oops|general protection|Kernel panic|kernel BUG|Poison overwritten|Redzone overwritten|Padding overwritten|Object padding|Freepointer corrupt|Object already free|Invalid object pointer|list_(add|del) corruption|ODEBUG:|refcount_t:|UBSAN:|slab.*corrupt|corrupted .*slab|blocked for more than|soft lockup|rcu_.*stall|unable to handle'
status=""
[[ -s "$OUT/status" ]] && status="$(tr -dc '0-9' <"$OUT/status")"
klog="$OUT/dmesg.txt"
[[ -s "$klog" ]] || klog="$OUT/console.log"
bad=""
[[ -f "$klog" ]] && bad="$(grep -aE "$BAD_RE" "$klog" || true)"

if ((SHOW_DMESG)) && [[ -s "$OUT/dmesg.txt" ]]; then
    log "vm: ---- guest kernel log ----"
    cat "$OUT/dmesg.txt" >&2
    log "vm: ---- end of guest kernel log ----"
fi
if [[ -n "$bad" ]]; then
    nbad="$(printf '%s\n' "$bad" | wc -l)"
    log "vm: the guest kernel log reports problems ($nbad line(s)):"
    printf '%s\n' "$bad" | head -n 40 | sed 's/^/vm:   /' >&2
    ((nbad <= 40)) || log "vm:   ... $((nbad - 40)) more (see dmesg.txt)"
fi

if ((TIMEOUT)) && ((qrc == 124 || qrc == 137)) && [[ -z "$status" ]]; then
    KEEP_OUT=1
    log "vm: TIMEOUT: the guest did not finish within ${TIMEOUT}s; QEMU was killed"
    exit 124
fi
if [[ -z "$status" ]]; then
    KEEP_OUT=1
    if grep -aq 'Kernel panic' "$OUT/console.log" 2>/dev/null; then
        log "vm: FAILED: the guest kernel panicked (see the console output above)"
    else
        log "vm: FAILED: the guest reported no exit status (QEMU exit $qrc after ${ELAPSED}s; boot failure or crash, see above)"
    fi
    exit 125
fi
log "vm: command exited with status $status (boot + command: ${ELAPSED}s)"
if [[ -n "$bad" && $MODE == test && $ALLOW_WARN == 0 ]]; then
    KEEP_OUT=1
    log "vm: FAILED: kernel log problems (full log: dmesg.txt in the kept directory; --allow-kernel-warnings to ignore)"
    ((status != 0)) || status=1
fi
exit "$status"
