// SPDX-License-Identifier: GPL-2.0
//! The ioctls of `/dev/fastio`: their argument structs and numbers (the kernel's `_IOC`
//! encoding). Sizes and numbers are checked at the bottom of `abi.rs`.

use super::*;

// ---------------------------------------------------------------------------------------
// ioctl arguments
// ---------------------------------------------------------------------------------------

/// Argument of `FASTIO_SETUP`: parameters in, mmap geometry out (like `io_uring_params`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetupParams {
    /// In: must be [`ABI_VERSION`].
    pub abi_version: u32,
    /// In: number of lanes and polling workers, `1..=MAX_WORKERS`.
    pub workers: u32,
    /// In: entries per SQ ([`valid_entries`]).
    pub sq_entries: u32,
    /// In: entries per CQ ([`valid_entries`]); in-flight requests per lane never exceed it.
    pub cq_entries: u32,
    /// In: how long an idle worker polls before it sets [`SQ_NEED_WAKEUP`] and sleeps.
    pub idle_ms: u32,
    /// In: `SETUP_*` flags.
    pub flags: u32,
    /// In: first CPU for [`SETUP_AFFINITY`].
    pub affinity_offset: u32,
    /// In: number of registered file slots, `1..=MAX_FILES`.
    pub max_files: u32,
    /// In: how many helper threads may attach with [`FASTIO_RUN_HELPER`],
    /// `1..=MAX_HELPERS` and at most the module's `max_helpers` (0 = the module default).
    pub helpers: u32,
    /// Reserved (must be 0).
    pub resv_in: [u32; 7],
    /// Out: bytes per lane (lane `i` starts at `i * lane_size`).
    pub lane_size: u64,
    /// Out: total bytes to map at offset 0 (`workers * lane_size`).
    pub mmap_size: u64,
    /// Out: offset of the SQ header inside a lane.
    pub sq_off: u32,
    /// Out: offset of the SQE array inside a lane.
    pub sqes_off: u32,
    /// Out: offset of the CQ header inside a lane.
    pub cq_off: u32,
    /// Out: offset of the CQE array inside a lane.
    pub cqes_off: u32,
    /// Reserved (0).
    pub resv_out: [u64; 4],
}

/// Argument of `FASTIO_ENTER`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnterArgs {
    /// `ENTER_*` flags.
    pub flags: u32,
    /// Lane to wake for [`ENTER_SQ_WAKEUP`], or [`LANE_ALL`].
    pub lane: u32,
    /// For [`ENTER_GETEVENTS`]: completions to wait for, over all lanes.
    pub min_complete: u32,
    /// Reserved (must be 0).
    pub resv: u32,
    /// For [`ENTER_GETEVENTS`]: timeout in nanoseconds, or [`TIMEOUT_NONE`].
    pub timeout_ns: u64,
}

/// Argument of `FASTIO_REGISTER_FILES`: install `fds[i]` into `slots[i]` for `i < count`.
/// All or nothing: on error no slot has changed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilesUpdate {
    /// User address of `count` `i32` file descriptors.
    pub fds: u64,
    /// User address of `count` `u32` slots, each empty and below `max_files`.
    pub slots: u64,
    /// Number of entries.
    pub count: u32,
    /// Reserved (must be 0).
    pub resv: u32,
}

/// Argument of [`FASTIO_RUN_LANE`] and [`FASTIO_RUN_HELPER`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadArg {
    /// The lane (`0..workers`) or helper (`0..helpers`) index the calling thread serves.
    pub index: u32,
    /// Reserved (must be 0).
    pub flags: u32,
}

/// Argument of `FASTIO_UNREGISTER_FILE` and `FASTIO_INSTALL_FD`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotArg {
    /// The slot.
    pub slot: u32,
    /// `INSTALL_FD`: [`INSTALL_CLOEXEC`] or 0; `UNREGISTER_FILE`: must be 0.
    pub flags: u32,
}

/// Argument of `FASTIO_GET_STATS`: counters of a context since SETUP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests taken from the SQs.
    pub ops: u64,
    /// Requests that would have blocked on a pollable file and waited for readiness.
    pub parked: u64,
    /// Readiness wakeups that handed a parked request back to its lane's worker.
    pub wakeups: u64,
    /// Requests handed to a helper thread for blocking I/O (uncached or
    /// non-`FMODE_NOWAIT` files).
    pub offloaded: u64,
    /// Requests waiting right now (parked or offloaded, not yet completed).
    pub pending: u64,
    /// Requests run by `ENTER(ENTER_INLINE)` callers instead of a lane thread: SQEs taken
    /// and ready requests re-issued.
    pub inline_ops: u64,
    /// Times a lane thread woke up from its sleep (after `SQ_NEED_WAKEUP`).
    pub lane_wakes: u64,
    /// Times a request was put on its file's wait queues by a poll. A multishot request
    /// is polled once when it first waits and keeps its wait entries from one reception
    /// to the next (0 from modules before this counter).
    pub polls: u64,
}

// ---------------------------------------------------------------------------------------
// ioctl numbers (the kernel's _IOC encoding on x86-64 and arm64)
// ---------------------------------------------------------------------------------------

/// ioctl type byte of `/dev/fastio`.
pub const IOC_MAGIC: u32 = 0xFA;

const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = 8;
const IOC_SIZESHIFT: u32 = 16;
const IOC_DIRSHIFT: u32 = 30;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << IOC_DIRSHIFT)
        | (IOC_MAGIC << IOC_TYPESHIFT)
        | (nr << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
}

/// `_IOWR(0xFA, 1, SetupParams)`: create the context's lanes and workers.
pub const FASTIO_SETUP: u32 = ioc(IOC_READ | IOC_WRITE, 1, core::mem::size_of::<SetupParams>());
/// `_IOW(0xFA, 2, EnterArgs)`: wake workers and/or wait for completions.
pub const FASTIO_ENTER: u32 = ioc(IOC_WRITE, 2, core::mem::size_of::<EnterArgs>());
/// `_IOW(0xFA, 3, FilesUpdate)`: register files into slots.
pub const FASTIO_REGISTER_FILES: u32 = ioc(IOC_WRITE, 3, core::mem::size_of::<FilesUpdate>());
/// `_IOW(0xFA, 4, SlotArg)`: empty a slot. Requests in flight on its file keep their own
/// reference and complete normally (as with io_uring's fixed files); `OP_ASYNC_CANCEL`
/// or `FASTIO_SHUTDOWN` cancels them.
pub const FASTIO_UNREGISTER_FILE: u32 = ioc(IOC_WRITE, 4, core::mem::size_of::<SlotArg>());
/// `_IOW(0xFA, 5, SlotArg)`: install a slot's file as a new descriptor (returned).
pub const FASTIO_INSTALL_FD: u32 = ioc(IOC_WRITE, 5, core::mem::size_of::<SlotArg>());
/// `_IOR(0xFA, 6, Stats)`: read the context's counters.
pub const FASTIO_GET_STATS: u32 = ioc(IOC_READ, 6, core::mem::size_of::<Stats>());
/// `_IOW(0xFA, 7, ThreadArg)`: the calling thread becomes the polling worker of a lane
/// and stays in the kernel until [`FASTIO_SHUTDOWN`] (returns 0) or a signal (returns
/// `-EINTR`, or restarts with `SA_RESTART`; call again). `-EBUSY`: the lane has a worker.
pub const FASTIO_RUN_LANE: u32 = ioc(IOC_WRITE, 7, core::mem::size_of::<ThreadArg>());
/// `_IOW(0xFA, 8, ThreadArg)`: the calling thread becomes a helper that does the
/// context's blocking work, until [`FASTIO_SHUTDOWN`] or a signal (as `RUN_LANE`).
pub const FASTIO_RUN_HELPER: u32 = ioc(IOC_WRITE, 8, core::mem::size_of::<ThreadArg>());
/// `_IOW(0xFA, 10, BufRingReg)`: registers a provided-buffer group (see [`BufRingReg`]).
/// `-EEXIST`: the group is registered.
pub const FASTIO_REGISTER_BUF_RING: u32 = ioc(IOC_WRITE, 10, core::mem::size_of::<BufRingReg>());
/// `_IOW(0xFA, 11, BufGroupArg)`: unregisters a provided-buffer group; `-EBUSY` while a
/// request that uses it is in flight, `-ENOENT` if it is not registered.
pub const FASTIO_UNREGISTER_BUF_RING: u32 = ioc(IOC_WRITE, 11, core::mem::size_of::<BufGroupArg>());
/// `_IO(0xFA, 9)`: every lane and helper thread of the context returns 0, waiting
/// requests complete with `-ECANCELED`; later `RUN_*` calls fail with `-ESHUTDOWN`.
pub const FASTIO_SHUTDOWN: u32 = ioc(0, 9, 0);
