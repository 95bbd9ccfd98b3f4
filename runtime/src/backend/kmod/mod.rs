//! The `kmod` backend: `fastio.ko` through `/dev/fastio`, with this process's own lane
//! and helper threads as its workers (ABI 2; ABI 3's provided-buffer rings: bufs.rs).
//!
//! One open of the device is one context:
//! 1. `FASTIO_SETUP` creates `max_ker_worker` lanes, allows `wq_max_active` helper
//!    threads, and returns the ring geometry, which must be exactly
//!    [`fastio_uapi::lane_layout`] of the requested sizes (anything else is an ABI
//!    mismatch and refused);
//! 2. the ring memory is mapped shared (memmap2) and driven through the same
//!    [`RingSide`] as the `threads` backend. The kernel initialised the rings (their
//!    `RingInfo` included); userspace never writes anything but its own SQEs, SQ tails
//!    and CQ heads;
//! 3. the workers are started ([`threads`]): one thread `fastio-lane-<i>` per lane that
//!    enters the kernel with `FASTIO_RUN_LANE` and polls the lane there, and
//!    `wq_max_active` threads `fastio-help-<j>` (`FASTIO_RUN_HELPER`) for blocking work.
//!    They block every signal and are pinned when the config asks for it;
//! 4. `submit` publishes the SQ tails and calls `FASTIO_ENTER(SQ_WAKEUP)` only for lanes
//!    whose worker set NEED_WAKEUP; `wait` calls `FASTIO_ENTER(GETEVENTS)` only when the
//!    CQs hold too few completions; files are registered, unregistered and installed as
//!    descriptors with their own ioctls.
//!
//! A lane or helper thread that leaves the kernel unasked (its ioctl failed) makes every
//! later `submit` and `wait` fail with an error naming the thread and the errno.
//!
//! Teardown, in this order: `FASTIO_SHUTDOWN` (every lane and helper thread returns,
//! waiting requests complete with `-ECANCELED`) and every thread joined; the mapping
//! unmapped; the descriptor closed, which makes the module drop the registered files and
//! free the ring memory. The proactor has already waited for the requests in flight by
//! then, and after the join no thread of the context can touch the process's memory.

mod bufs;
mod threads;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use fastio_uapi::{
    BufGroupArg, BufRingReg, Cqe, EnterArgs, FilesUpdate, SetupParams, SlotArg, Sqe, Stats,
    ABI_VERSION, ENTER_DEFER, ENTER_GETEVENTS, ENTER_INLINE, ENTER_SQ_WAKEUP, FASTIO_ENTER,
    FASTIO_GET_STATS, FASTIO_INSTALL_FD, FASTIO_REGISTER_BUF_RING, FASTIO_REGISTER_FILES,
    FASTIO_SETUP, FASTIO_UNREGISTER_BUF_RING, FASTIO_UNREGISTER_FILE, INSTALL_CLOEXEC, LANE_ALL,
    SETUP_AFFINITY, TIMEOUT_NONE,
};
use memmap2::MmapOptions;

use self::bufs::{KmodBufRing, KmodBufs};
use self::threads::{Device, Workers};
use super::rings::{LaneSet, RingSide};
use super::{Backend, DEVICE_PATH};
use crate::config::Config;
use crate::ring::{Geometry, RingMemory};

/// The userspace side of one `/dev/fastio` context.
///
/// Field order is drop order, and it matters:
/// 1. `workers`: `FASTIO_SHUTDOWN`, then every lane and helper thread is joined, so no
///    thread of the context runs any more (and none reads a buffer ring of `bufs`);
/// 2. `rings` holds the only references to the [`RingMemory`] (inside its `LaneRing`s),
///    so dropping it unmaps the rings;
/// 3. `dev` last: the threads' references to it are gone with the join, so this drops
///    the last one and closes the descriptor, which frees the context.
pub(crate) struct KmodBackend {
    // Never read: held for its Drop (shutdown and join) at the right moment.
    #[allow(dead_code)]
    workers: Workers,
    rings: RingSide,
    /// Provided-buffer rings (unmapped after the threads are joined).
    bufs: KmodBufs,
    dev: Arc<Device>,
    /// `ENTER_INLINE` (and `ENTER_DEFER` per `kmod_defer`) on every ENTER (the
    /// `kmod_inline` policy, decided at open).
    inline: u32,
}

/// One ioctl on `fd` with argument `arg`; returns the ioctl's non-negative result.
///
/// # Safety
///
/// `T` must be the argument type the kernel reads (and, for `_IOWR`, writes) for `cmd`,
/// and any user address inside `*arg` must be valid for what the command does with it.
unsafe fn ioctl<T>(fd: &File, cmd: u32, arg: *mut T) -> io::Result<i32> {
    // SAFETY: forwarded to the caller: `arg` points to a live `T` matching `cmd`'s size
    // (the ioctl number encodes it); the kernel copies it in/out with copy_{from,to}_user.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as libc::c_ulong, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The `SetupParams` a config asks for.
fn setup_params(config: &Config) -> SetupParams {
    SetupParams {
        abi_version: ABI_VERSION,
        workers: config.max_ker_worker,
        sq_entries: config.sq_entries,
        cq_entries: config.cq_entries,
        idle_ms: config.idle_ms,
        flags: if config.affinity_offset.is_some() {
            SETUP_AFFINITY
        } else {
            0
        },
        affinity_offset: config.affinity_offset.unwrap_or(0),
        max_files: config.max_files,
        // `default_wq_worker_idle_time` is not sent: v2 helpers are parked threads of the
        // process, with no idle time to bound.
        helpers: config.wq_max_active,
        ..SetupParams::default()
    }
}

/// Explains a failed open of the device.
fn open_error(e: io::Error) -> io::Error {
    let msg = match e.raw_os_error() {
        Some(libc::ENOENT) => format!(
            "backend kmod: {DEVICE_PATH} not found: the fastio kernel module is not loaded \
             (sudo make reload), or use backend = \"auto\", \"uring\" or \"threads\""
        ),
        // A stale device node whose driver is gone.
        Some(libc::ENXIO) | Some(libc::ENODEV) => format!(
            "backend kmod: {DEVICE_PATH} has no driver behind it ({e}): the fastio kernel \
             module is not loaded (sudo make reload)"
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => format!(
            "backend kmod: permission denied opening {DEVICE_PATH} read-write ({e}): give \
             this user access to the device (e.g. a udev rule setting its group or mode), \
             or use backend = \"uring\" or \"threads\""
        ),
        _ => format!("backend kmod: cannot open {DEVICE_PATH}: {e}"),
    };
    io::Error::new(e.kind(), msg)
}

/// Bytes of ring memory a SETUP of `p` asks for (what RLIMIT_MEMLOCK is charged), or
/// `None` for sizes the module refuses anyway.
fn ring_bytes(p: &SetupParams) -> Option<u64> {
    (fastio_uapi::valid_entries(p.sq_entries) && fastio_uapi::valid_entries(p.cq_entries))
        .then(|| fastio_uapi::lane_layout(p.sq_entries, p.cq_entries).lane_size)
        .and_then(|lane| lane.checked_mul(u64::from(p.workers)))
}

/// Explains a failed `FASTIO_SETUP` of `p`, naming the config keys and module
/// parameters that can cause `e`.
fn setup_error(e: io::Error, p: &SetupParams) -> io::Error {
    let params = format!(
        "workers={} helpers={} sq_entries={} cq_entries={} max_files={} idle_ms={} \
         flags={:#x} affinity_offset={}",
        p.workers,
        p.helpers,
        p.sq_entries,
        p.cq_entries,
        p.max_files,
        p.idle_ms,
        p.flags,
        p.affinity_offset
    );
    let msg = match e.raw_os_error() {
        Some(libc::ENOTTY) | Some(libc::EINVAL) => format!(
            "fastio.ko rejected SETUP (ABI version {ABI_VERSION}?): {e}: the loaded module \
             speaks another ABI version or refused a parameter ({params}), e.g. \
             default_main_worker_idle_time above the module parameter max_idle_ms \
             (default 1000) or affinity_offset not below the number of possible CPUs; the \
             kernel log (dmesg) says which"
        ),
        Some(libc::EMFILE) | Some(libc::ENFILE) => format!(
            "fastio.ko: too many contexts: {e}: the module parameter max_user_contexts \
             (contexts per user) or max_contexts (system-wide) is reached; close other \
             fastio programs of this user or reload the module with larger limits"
        ),
        Some(libc::E2BIG) | Some(libc::ENOSPC) => format!(
            "fastio.ko: too many threads ({e}): max_ker_worker = {} exceeds the module \
             parameter max_workers, or wq_max_active = {} (helper threads) exceeds the \
             module parameter max_helpers; lower them or reload the module with larger \
             limits",
            p.workers, p.helpers
        ),
        Some(libc::EBUSY) => format!(
            "fastio.ko: SETUP refused as busy ({e}): the context is already set up, or a \
             module limit (max_contexts, max_workers) is reached"
        ),
        Some(libc::ENOMEM) => {
            let size = ring_bytes(p).map_or_else(String::new, |b| {
                format!(" the rings take {} KiB;", b.div_ceil(1024))
            });
            format!(
                "fastio.ko: cannot allocate the rings ({params}): {e}:{size} ring memory is \
                 locked memory, counted against RLIMIT_MEMLOCK (ulimit -l) unless the \
                 process has CAP_IPC_LOCK; raise ulimit -l (limits.conf memlock, systemd \
                 LimitMEMLOCK=), or lower sq_entries, cq_entries, max_files or \
                 max_ker_worker"
            )
        }
        _ => format!("fastio.ko: SETUP failed ({params}): {e}"),
    };
    io::Error::new(e.kind(), msg)
}

/// Checks that the geometry the kernel returned is the one this runtime computes.
fn check_geometry(p: &SetupParams, g: &Geometry) -> io::Result<()> {
    let l = g.layout;
    let got = (
        p.lane_size,
        p.sq_off,
        p.sqes_off,
        p.cq_off,
        p.cqes_off,
        p.mmap_size,
    );
    let want = (
        l.lane_size,
        l.sq_off,
        l.sqes_off,
        l.cq_off,
        l.cqes_off,
        g.mmap_size() as u64,
    );
    if got == want {
        return Ok(());
    }
    let fmt = |(lane, sq, sqes, cq, cqes, total): (u64, u32, u32, u32, u32, u64)| {
        format!(
            "lane_size={lane} sq_off={sq} sqes_off={sqes} cq_off={cq} cqes_off={cqes} \
             mmap_size={total}"
        )
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "kernel module ABI mismatch: SETUP returned {}, this runtime (ABI version \
             {ABI_VERSION}) expects {} for {} lane(s) of {}/{} entries; rebuild and reload \
             the module from this tree (sudo make reload)",
            fmt(got),
            fmt(want),
            g.lanes,
            g.sq_entries,
            g.cq_entries
        ),
    ))
}

/// `wait`'s timeout as `EnterArgs::timeout_ns` (never the "no timeout" value by accident).
fn timeout_ns(timeout: Option<Duration>) -> u64 {
    match timeout {
        None => TIMEOUT_NONE,
        Some(t) => t.as_nanos().min(TIMEOUT_NONE as u128 - 1) as u64,
    }
}

/// The `EnterArgs::lane` that wakes every lane of `set` with one call: the lane itself,
/// or [`LANE_ALL`] for several (waking a worker that is awake is harmless).
fn wake_target(set: LaneSet) -> Option<u32> {
    match set.count() {
        0 => None,
        1 => set.iter().next().map(|l| l as u32),
        _ => Some(LANE_ALL),
    }
}

impl KmodBackend {
    /// Opens `/dev/fastio`, sets a context up and maps its rings. Returns the backend and
    /// a note for the banner.
    pub(crate) fn open(config: &Config) -> io::Result<(Self, String)> {
        // Refuse impossible sizes before touching the device, with the runtime's message.
        let geometry = Geometry::new(config.max_ker_worker, config.sq_entries, config.cq_entries)?;
        // std opens with O_CLOEXEC.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(DEVICE_PATH)
            .map_err(open_error)?;
        // Declared before `rings` and `workers`, so that an early return drops them first,
        // in the order of a KmodBackend's drop.
        let dev = Arc::new(Device::new(file));
        let mut p = setup_params(config);
        // SAFETY: FASTIO_SETUP is _IOWR(SetupParams); `p` is a live, initialised
        // SetupParams the kernel reads and overwrites; it holds no user addresses.
        unsafe { ioctl(dev.file(), FASTIO_SETUP, &mut p) }.map_err(|e| setup_error(e, &p))?;
        check_geometry(&p, &geometry)?;
        let map = MmapOptions::new()
            .len(geometry.mmap_size())
            .map_raw(dev.file())
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "fastio.ko: mapping the rings ({} bytes) failed: {e}",
                        geometry.mmap_size()
                    ),
                )
            })?;
        // SAFETY: the mapping is `mmap_size` bytes of the context's ring memory, laid out
        // as `geometry` says (checked against the kernel's answer above); the kernel keeps
        // its pages for as long as they are mapped, and `RingMemory` owns the mapping.
        let mem = unsafe { RingMemory::from_map(map, geometry) }?;
        // SAFETY: `mem` is the mapping made just above; this is its only userspace side.
        let rings = unsafe { RingSide::new(&mem) };
        drop(mem); // `rings` now holds the only references to the mapping.

        // On error the threads already started are shut down and joined (inside), then
        // `rings` and `dev` go.
        let workers = Workers::start(&dev, config)?;
        let cpus = crate::backend::allowed_cpus().len();
        let inline = config.kmod_inline.inline_for(geometry.lanes, cpus);
        let note = format!(
            "{} lane thread(s) + {} helper thread(s) in the kernel, sq={} cq={} idle={}ms, \
             {} (kmod_inline = {}, {cpus} CPU(s))",
            geometry.lanes,
            config.wq_max_active,
            geometry.sq_entries,
            geometry.cq_entries,
            config.idle_ms,
            if inline && config.kmod_defer {
                "callers run the lanes' work while their threads sleep, and what becomes \
                 ready while they are away waits for their next call"
            } else if inline {
                "callers run the lanes' work while their threads sleep"
            } else {
                "sleeping lane threads are woken"
            },
            config.kmod_inline.as_str(),
        );
        Ok((
            KmodBackend {
                workers,
                rings,
                bufs: KmodBufs::default(),
                dev,
                inline: match (inline, config.kmod_defer) {
                    (true, true) => ENTER_INLINE | ENTER_DEFER,
                    (true, false) => ENTER_INLINE,
                    (false, _) => 0,
                },
            },
            note,
        ))
    }

    fn enter(&self, mut args: EnterArgs) -> io::Result<()> {
        // SAFETY: FASTIO_ENTER is _IOW(EnterArgs); `args` is a live EnterArgs without
        // user addresses.
        unsafe { ioctl(self.dev.file(), FASTIO_ENTER, &mut args) }.map(drop)
    }

    fn slot_ioctl(&self, cmd: u32, slot: u32, flags: u32) -> io::Result<i32> {
        let mut arg = SlotArg { slot, flags };
        // SAFETY: UNREGISTER_FILE and INSTALL_FD are _IOW(SlotArg); `arg` is a live SlotArg
        // without user addresses.
        unsafe { ioctl(self.dev.file(), cmd, &mut arg) }
    }
}

impl Backend for KmodBackend {
    fn lanes(&self) -> u32 {
        self.rings.lanes()
    }

    fn lane_capacity(&self) -> u32 {
        self.rings.lane_capacity()
    }

    fn register(&mut self, slot: u32, fd: BorrowedFd<'_>) -> io::Result<()> {
        let fds = [fd.as_raw_fd()];
        let slots = [slot];
        let mut update = FilesUpdate {
            fds: fds.as_ptr() as u64,
            slots: slots.as_ptr() as u64,
            count: 1,
            resv: 0,
        };
        // SAFETY: FASTIO_REGISTER_FILES is _IOW(FilesUpdate); `fds` and `slots` are live
        // arrays of `count` i32 / u32 for the duration of the call, which only reads them.
        unsafe { ioctl(self.dev.file(), FASTIO_REGISTER_FILES, &mut update) }.map(drop)
    }

    fn unregister(&mut self, slot: u32) -> io::Result<()> {
        self.slot_ioctl(FASTIO_UNREGISTER_FILE, slot, 0).map(drop)
    }

    fn install_fd(&mut self, slot: u32) -> io::Result<OwnedFd> {
        let fd = self.slot_ioctl(FASTIO_INSTALL_FD, slot, INSTALL_CLOEXEC)?;
        // SAFETY: INSTALL_FD returned a descriptor it just installed in our table for us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn push(&mut self, lane: u32, sqe: &Sqe) -> bool {
        self.rings.push(lane, sqe)
    }

    fn submit(&mut self) -> io::Result<()> {
        // A lane whose thread is gone would never run what is submitted.
        self.dev.check()?;
        match wake_target(self.rings.publish()) {
            None => Ok(()),
            Some(lane) => self.enter(EnterArgs {
                flags: ENTER_SQ_WAKEUP | self.inline,
                lane,
                ..EnterArgs::default()
            }),
        }
    }

    fn reap(&mut self, f: &mut dyn FnMut(Cqe)) -> usize {
        self.rings.reap(f)
    }

    fn wait(&mut self, min: u32, timeout: Option<Duration>) -> io::Result<()> {
        self.dev.check()?;
        if self.rings.cq_ready() >= min {
            return Ok(());
        }
        let r = self.enter(EnterArgs {
            flags: ENTER_GETEVENTS | self.inline,
            min_complete: min,
            timeout_ns: timeout_ns(timeout),
            ..EnterArgs::default()
        });
        // A thread that failed while this one slept explains a timeout or a short wait.
        self.dev.check()?;
        match r {
            // The timeout passed: the caller looks at what is there.
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            // EINTR comes back as ErrorKind::Interrupted, like the other backends.
            r => r,
        }
    }

    fn cancel_all(&mut self) -> io::Result<bool> {
        // The ABI has no cancel-everything request (the module cancels what waits when
        // the context closes, after the proactor has stopped waiting): the proactor
        // CLOSEs the busy slots instead, which cancels what waits on them.
        Ok(false)
    }

    fn lane_asleep(&self, lane: u32) -> Option<bool> {
        self.rings.lane_asleep(lane)
    }

    unsafe fn register_buffers(
        &mut self,
        group: u16,
        bufs: *mut u8,
        buf_size: u32,
        count: u32,
    ) -> io::Result<()> {
        if self.bufs.groups.contains_key(&group) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        let ring = KmodBufRing::new(count)?;
        let mut reg = BufRingReg {
            ring_addr: ring.addr(),
            bufs_addr: bufs as u64,
            entries: ring.entries(),
            count,
            buf_size,
            group: u32::from(group),
            resv: [0; 2],
        };
        // SAFETY: FASTIO_REGISTER_BUF_RING is _IOW(BufRingReg); the ring is our live
        // mapping (dropped only after the group is unregistered or the context is gone)
        // and the buffers are valid as our caller promises; the module reaches both only
        // with user copies.
        unsafe { ioctl(self.dev.file(), FASTIO_REGISTER_BUF_RING, &mut reg) }?;
        self.bufs.groups.insert(group, ring);
        Ok(())
    }

    fn provide_buffer(&mut self, group: u16, id: u16) {
        self.bufs.provide(group, id);
    }

    fn unregister_buffers(&mut self, group: u16) -> io::Result<()> {
        if !self.bufs.groups.contains_key(&group) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let mut arg = BufGroupArg {
            group: u32::from(group),
            flags: 0,
        };
        // SAFETY: FASTIO_UNREGISTER_BUF_RING is _IOW(BufGroupArg), without addresses.
        unsafe { ioctl(self.dev.file(), FASTIO_UNREGISTER_BUF_RING, &mut arg) }?;
        // The module no longer reads the ring: unmap it.
        self.bufs.groups.remove(&group);
        Ok(())
    }

    fn kernel_stats(&self) -> Option<io::Result<Stats>> {
        let mut stats = Stats::default();
        // SAFETY: FASTIO_GET_STATS is _IOR(Stats); `stats` is a live Stats the kernel
        // overwrites; it holds no user addresses.
        let r = unsafe { ioctl(self.dev.file(), FASTIO_GET_STATS, &mut stats) };
        Some(r.map(|_| stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendKind;

    fn err(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn setup_params_follow_the_config() {
        let cfg = Config {
            backend: BackendKind::Kmod,
            max_ker_worker: 3,
            sq_entries: 64,
            cq_entries: 256,
            idle_ms: 7,
            max_files: 100,
            wq_max_active: 9,
            wq_idle_ms: 1234,
            affinity_offset: Some(2),
            wq_affinity_offset: Some(5),
            ..Config::default()
        };
        let p = setup_params(&cfg);
        assert_eq!(p.abi_version, ABI_VERSION);
        assert_eq!(
            (
                p.workers,
                p.sq_entries,
                p.cq_entries,
                p.idle_ms,
                p.max_files
            ),
            (3, 64, 256, 7, 100)
        );
        // FastIO's workqueue idle time reaches nowhere; the helper count does.
        assert_eq!(p.helpers, 9);
        // Helper pinning is the process's business: only lane affinity reaches SETUP.
        assert_eq!((p.flags, p.affinity_offset), (SETUP_AFFINITY, 2));
        assert_eq!(p.resv_in, [0; 7]);
        let p2 = setup_params(&Config {
            wq_idle_ms: 1,
            ..cfg.clone()
        });
        assert_eq!(p2, p);
        let p = setup_params(&Config {
            affinity_offset: None,
            ..cfg
        });
        assert_eq!((p.flags, p.affinity_offset), (0, 0));
    }

    #[test]
    fn geometry_mismatch_is_refused_with_both_layouts() {
        let g = Geometry::new(2, 64, 128).unwrap();
        let l = g.layout;
        let good = SetupParams {
            lane_size: l.lane_size,
            mmap_size: 2 * l.lane_size,
            sq_off: l.sq_off,
            sqes_off: l.sqes_off,
            cq_off: l.cq_off,
            cqes_off: l.cqes_off,
            ..SetupParams::default()
        };
        check_geometry(&good, &g).unwrap();
        for bad in [
            SetupParams {
                cq_off: l.cq_off + 64,
                ..good
            },
            SetupParams {
                mmap_size: l.lane_size,
                ..good
            },
            SetupParams {
                lane_size: l.lane_size + 4096,
                ..good
            },
        ] {
            let e = check_geometry(&bad, &g).unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with("kernel module ABI mismatch: "), "{msg}");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        }
    }

    #[test]
    fn errors_name_the_cause() {
        let p = setup_params(&Config {
            max_ker_worker: 40,
            wq_max_active: 33,
            ..Config::default()
        });
        let cases = [
            (
                open_error(err(libc::ENOENT)),
                "not loaded (sudo make reload)",
            ),
            (open_error(err(libc::EACCES)), "permission denied"),
            (
                setup_error(err(libc::EINVAL), &p),
                "rejected SETUP (ABI version 3?)",
            ),
            (
                setup_error(err(libc::EINVAL), &p),
                "max_idle_ms (default 1000)",
            ),
            (setup_error(err(libc::EINVAL), &p), "helpers=33"),
            (
                setup_error(err(libc::ENOTTY), &p),
                "rejected SETUP (ABI version 3?)",
            ),
            (setup_error(err(libc::EMFILE), &p), "max_user_contexts"),
            (
                setup_error(err(libc::EMFILE), &p),
                "max_contexts (system-wide)",
            ),
            (
                setup_error(err(libc::E2BIG), &p),
                "max_ker_worker = 40 exceeds",
            ),
            (
                setup_error(err(libc::E2BIG), &p),
                "wq_max_active = 33 (helper threads) exceeds the module parameter max_helpers",
            ),
            (
                setup_error(err(libc::ENOSPC), &p),
                "module parameter max_workers",
            ),
            (setup_error(err(libc::ENOMEM), &p), "ulimit -l"),
            (setup_error(err(libc::ENOMEM), &p), "CAP_IPC_LOCK"),
            // 40 lanes of 256 SQEs (16 KiB + header) and 8192 CQEs (128 KiB + header).
            (
                setup_error(err(libc::ENOMEM), &p),
                "the rings take 5920 KiB;",
            ),
        ];
        for (e, want) in cases {
            assert!(e.to_string().contains(want), "{e} should say {want:?}");
        }
        assert_eq!(
            open_error(err(libc::ENOENT)).kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            open_error(err(libc::EACCES)).kind(),
            io::ErrorKind::PermissionDenied
        );
    }

    #[test]
    fn timeouts_and_wake_targets() {
        assert_eq!(timeout_ns(None), TIMEOUT_NONE);
        assert_eq!(timeout_ns(Some(Duration::from_millis(3))), 3_000_000);
        assert_eq!(timeout_ns(Some(Duration::MAX)), TIMEOUT_NONE - 1);
        let mut set = LaneSet::default();
        assert_eq!(wake_target(set), None);
        set = lanes(&[5]);
        assert_eq!(wake_target(set), Some(5));
        set = lanes(&[0, 5]);
        assert_eq!(wake_target(set), Some(LANE_ALL));
    }

    fn lanes(l: &[usize]) -> LaneSet {
        let mut s = LaneSet::default();
        for &l in l {
            s.insert(l);
        }
        s
    }

    /// Without the module, opening names the missing device (and never panics).
    #[test]
    fn open_without_the_module_explains() {
        if std::path::Path::new(DEVICE_PATH).exists() {
            return;
        }
        let cfg = Config {
            backend: BackendKind::Kmod,
            ..Config::default()
        };
        let e = KmodBackend::open(&cfg).err().expect("no device here");
        assert!(e.to_string().contains("not loaded"), "{e}");
    }
}
