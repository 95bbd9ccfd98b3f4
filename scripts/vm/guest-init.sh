#!/bin/busybox sh
# PID 1 of the fastio-rs test VM. scripts/vm/run.sh packs it as /init into a busybox
# initramfs; it is not meant to run on the host.
#
# It builds the guest's root: the host's / (9p tag "hostroot", read-only) under a tmpfs
# overlay (writable, changes vanish at poweroff), so the host's /usr, /lib, tools and
# dynamically linked binaries work unchanged; host dirs shared read-write (9p tags from
# /out/shares) at their own paths; /proc /sys /dev /dev/pts /dev/shm /tmp /run; loopback up.
# Then it runs /out/cmd.sh in that root as root (test mode: stdin /dev/null; shell mode: on
# the console as controlling tty), writes the kernel log to /out/dmesg.txt and the exit
# status to /out/status, and powers off (reboot -f with QEMU -no-reboot). It never returns:
# PID 1 exiting would panic, and panic=-1 ends QEMU too.

/bin/busybox mkdir -p /bin /proc /sys /dev /host /out /rw /newroot
/bin/busybox --install -s /bin
export PATH=/bin

say() { echo "fastio-vm: $*"; }

poweroff_now() {
    cd /
    sync
    # Stop whatever the command left running so the shares can be unmounted.
    kill -TERM -1 2>/dev/null
    sleep 0.2
    kill -KILL -1 2>/dev/null
    # shellcheck disable=SC2013  # mount points have no spaces here
    for m in $(awk '{print $2}' /proc/mounts | sort -r); do
        case "$m" in
            /newroot/*) umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null ;;
        esac
    done
    umount /newroot 2>/dev/null
    sync
    umount /out 2>/dev/null
    reboot -f
    sleep 10
    echo o >/proc/sysrq-trigger 2>/dev/null
    while :; do sleep 60; done
}

fail() {
    say "ERROR: $*"
    [ -d /out ] && echo 125 >/out/status 2>/dev/null
    poweroff_now
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

P9="trans=virtio,version=9p2000.L,msize=262144"
mount -t 9p -o "$P9,cache=none" fastio_out /out || fail "cannot mount the 9p share fastio_out (is CONFIG_9P_FS/NET_9P_VIRTIO built in?)"
[ -f /out/vm.conf ] || fail "/out/vm.conf is missing"
# vm.conf sets MODE (test|shell), ROWS, COLS, SCRATCH (1 = /dev/vda is a scratch ext4 disk)
# shellcheck disable=SC1091
. /out/vm.conf

mount -t 9p -o "$P9,ro,cache=loose" hostroot /host || fail "cannot mount the host root (9p tag hostroot)"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
if ! mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot; then
    say "WARNING: overlayfs over the host root failed; the guest root is read-only"
    mount --bind /host /newroot || fail "cannot bind the host root"
fi
R=/newroot
mount -t proc proc $R/proc || fail "cannot mount /proc in the guest root"
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev || fail "cannot mount devtmpfs in the guest root"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
# What udev/systemd would provide: bash's process substitution needs /dev/fd.
ln -sf /proc/self/fd $R/dev/fd
ln -sf /proc/self/fd/0 $R/dev/stdin
ln -sf /proc/self/fd/1 $R/dev/stdout
ln -sf /proc/self/fd/2 $R/dev/stderr
mount -t tmpfs -o mode=1777 tmpfs $R/tmp
mount -t tmpfs -o mode=0755 tmpfs $R/run
mkdir -p $R/run/fastio-vm
mount --bind /out $R/run/fastio-vm || fail "cannot bind /out into the guest root"

# Read-write host directories, at their host paths ("TAG PATH" per line).
if [ -f /out/shares ]; then
    while read -r tag path; do
        [ -n "$tag" ] || continue
        mkdir -p "$R$path" 2>/dev/null
        mount -t 9p -o "$P9,cache=mmap" "$tag" "$R$path" || fail "cannot mount share $tag at $path"
    done </out/shares
fi
if [ "${SCRATCH:-0}" = 1 ]; then
    mkdir -p $R/mnt/scratch
    mount -t ext4 /dev/vda $R/mnt/scratch || fail "cannot mount the scratch disk /dev/vda"
fi

ifconfig lo 127.0.0.1 netmask 255.0.0.0 up || fail "cannot bring up loopback"
hostname fastio-vm

SH=/bin/bash
[ -x $R$SH ] || SH=/bin/sh
echo "fastio-vm: running /run/fastio-vm/cmd.sh (mode $MODE)" >/dev/kmsg
if [ "$MODE" = shell ]; then
    if [ -n "$ROWS" ] && [ -n "$COLS" ]; then stty rows "$ROWS" cols "$COLS" 2>/dev/null; fi
    setsid cttyhack chroot $R $SH /run/fastio-vm/cmd.sh
    rc=$?
else
    chroot $R $SH /run/fastio-vm/cmd.sh </dev/null
    rc=$?
fi
echo "fastio-vm: command exited with status $rc" >/dev/kmsg
dmesg >/out/dmesg.txt 2>/dev/null
echo "$rc" >/out/status
poweroff_now
