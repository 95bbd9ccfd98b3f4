// SPDX-License-Identifier: GPL-2.0
//! Ring ABI definitions (version [`ABI_VERSION`]).
//!
//! # Memory model
//!
//! A context has `workers` *lanes*. Each lane is one submission queue (SQ), one
//! completion queue (CQ) and one polling worker. All lanes live in one mapping of
//! `mmap_size` bytes; lane `i` starts at `i * lane_size` and is laid out as
//! [`LaneLayout`] describes:
//!
//! ```text
//! +0            SQ RingHeader   (head, tail, flags, info: one cache line each)
//! +sqes_off     sq_entries x Sqe
//! +cq_off       CQ RingHeader
//! +cqes_off     cq_entries x Cqe
//! ```
//!
//! Indices are free-running `u32` counters; the slot of index `i` is `i & (entries - 1)`.
//! The SQ tail and the CQ head are written by userspace, the SQ head and the CQ tail by
//! the worker. Producers publish with a release store of the tail; consumers read the
//! tail with an acquire load, copy the entry, then release-store the head.
//!
//! # Workers are threads of the process (ABI 2)
//!
//! The module starts no thread of its own. After `FASTIO_SETUP` and `mmap`, the process
//! starts one thread per lane that calls [`FASTIO_RUN_LANE`] and stays in the kernel as
//! that lane's polling worker, and up to `helpers` threads that call
//! [`FASTIO_RUN_HELPER`] and do the context's blocking work (uncached file I/O, files
//! without non-blocking support such as FIFOs and ttys). Both return 0 after
//! [`FASTIO_SHUTDOWN`] (or with the error of a signal: restart them after a non-fatal
//! one); a fatal signal ends them like any thread. So every request runs as the process
//! itself: its address space, credentials, rlimits, cgroups and signals.
//!
//! # Wakeup protocol
//!
//! A worker that found its SQ empty (or could not make progress because its CQ is full)
//! for `idle_ms` sets [`SQ_NEED_WAKEUP`] in the SQ flags, issues a full fence, re-reads
//! the SQ tail, and sleeps only if it is still unchanged. Userspace publishes its tail, issues a full fence, and calls `ENTER` with
//! [`ENTER_SQ_WAKEUP`] when it sees the flag. Either the worker sees the new tail or
//! userspace sees the flag: no wakeup is lost. `ENTER(GETEVENTS)` also wakes every sleeping
//! worker whose SQ holds entries (a worker that stopped on a full CQ resumes once the
//! process reaps and waits).
//!
//! # Trust
//!
//! The kernel treats every byte of ring memory as hostile: it reads each SQE once into
//! a private copy and validates the copy. Userspace never lets more requests be in
//! flight on a lane than its CQ has entries, so a completion never has to be dropped.

use core::sync::atomic::AtomicU32;

/// Version of this ABI. `SetupParams::abi_version` must carry it.
pub const ABI_VERSION: u32 = 3;

/// Cache line size assumed by the layout.
pub const CACHE_LINE: usize = 64;

/// Page size the layout is rounded to (lanes start on page boundaries).
pub const PAGE_SIZE: usize = 4096;

/// Largest number of entries in one SQ or CQ.
pub const MAX_ENTRIES: u32 = 32768;

/// Largest number of lanes (workers) in one context.
pub const MAX_WORKERS: u32 = 64;

/// Largest number of helper threads (blocking work) in one context.
pub const MAX_HELPERS: u32 = 64;

/// Largest number of registered file slots in one context.
pub const MAX_FILES: u32 = 1 << 20;

/// Largest iovec count of one `WRITEV` (the kernel's `UIO_MAXIOV`).
pub const MAX_IOVECS: u32 = 1024;

/// Largest byte count one request transfers; longer lengths are clamped to it, like the
/// kernel's `MAX_RW_COUNT` (`INT_MAX & PAGE_MASK`), so a result never overflows `i32`.
pub const MAX_RW_LEN: u32 = (i32::MAX as u32) & !(PAGE_SIZE as u32 - 1);

/// The `off` value that means "the file's current position" for READ, WRITE and WRITEV.
pub const OFF_CURRENT: u64 = u64::MAX;

// ---------------------------------------------------------------------------------------
// Opcodes
// ---------------------------------------------------------------------------------------

/// Does nothing; completes with 0. Useful for measuring the ring itself.
pub const OP_NOP: u8 = 0;
/// Accepts a connection on the listening socket in `slot` and installs it into the
/// (empty) slot `aux`; completes with `aux`. `op_flags` may hold [`ACCEPT_NONBLOCK`].
pub const OP_ACCEPT: u8 = 1;
/// Receives up to `len` bytes into `addr` from the socket in `slot`; completes with the
/// byte count (0 = end of stream). `op_flags` holds `MSG_*` flags from [`RECV_FLAGS`].
pub const OP_RECV: u8 = 2;
/// Sends up to `len` bytes from `addr` on the socket in `slot`; completes with the byte
/// count, which may be short. `op_flags` holds `MSG_*` flags from [`SEND_FLAGS`].
pub const OP_SEND: u8 = 3;
/// Reads up to `len` bytes at offset `off` (or [`OFF_CURRENT`]) into `addr`.
pub const OP_READ: u8 = 4;
/// Writes up to `len` bytes from `addr` at offset `off` (or [`OFF_CURRENT`]).
pub const OP_WRITE: u8 = 5;
/// Writes the `len` iovecs (`struct iovec`, at most [`MAX_IOVECS`]) at `addr`, at
/// offset `off` (or [`OFF_CURRENT`]).
pub const OP_WRITEV: u8 = 6;
/// Releases `slot` after every request queued before it on the same lane; requests
/// still waiting for readiness on that slot complete with `-ECANCELED`.
pub const OP_CLOSE: u8 = 7;
/// Cancels the request(s) of the same context whose `user_data` equals `addr` (the
/// target); uses no slot (`slot`, `off`, `len`, `op_flags` and `aux` must be 0).
/// Completes with 0 when a target was found: the target then completes with
/// `-ECANCELED`, or with its own result if it had already finished its transfer.
/// Completes with `-ENOENT` when no request with that `user_data` is waiting. A target
/// queued before the cancel on the same lane is always seen by it (userspace queues a
/// cancel on its target's lane).
pub const OP_ASYNC_CANCEL: u8 = 8;
/// Opens the NUL-terminated path at `addr` (at most [`PATH_MAX`] bytes with the NUL)
/// and installs the new file into the (empty) slot `aux`; completes with `aux`.
/// `slot` is a registered directory, or [`OPENAT_CWD`] for the current directory;
/// `op_flags` holds `O_*` flags from [`OPEN_FLAGS`] ([`O_PATH`] is refused: a slot
/// holds files for I/O), `off` the mode (at most `0o7777`, and 0 unless `O_CREAT` or
/// `O_TMPFILE` is given); `len` must be 0.
///
/// A path relative to a directory slot is resolved *inside* that directory, as
/// `openat2(RESOLVE_IN_ROOT)` does: `..` and absolute paths (also in symlinks) do not
/// leave it. (The kernel module's exported API for a directory, `file_open_root`, works
/// that way; the other backends use `openat2` with `RESOLVE_IN_ROOT` to match.) A busy
/// destination completes with `-EBUSY` before anything is opened; a `/dev/fastio` or an
/// io_uring file is refused with `-EBADF` (it could make a reference cycle).
pub const OP_OPENAT: u8 = 9;
/// Flushes the file in `slot` to its storage (`fsync`), only its data with
/// [`FSYNC_DATASYNC`] in `op_flags` (`fdatasync`); `off` and `len` give a byte range
/// (`len` 0: to the end of the file). `addr` and `aux` must be 0.
pub const OP_FSYNC: u8 = 10;
/// `fallocate` on the file in `slot`: `op_flags` is the mode ([`FALLOCATE_FLAGS`]),
/// `off` the offset, `addr` the length in bytes (nonzero; `off + addr` at most
/// `i64::MAX`). `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE` is a trim. `len` and `aux`
/// must be 0.
pub const OP_FALLOCATE: u8 = 11;
/// `shutdown` of the socket in `slot`: `op_flags` is [`SHUT_RD`], [`SHUT_WR`] or
/// [`SHUT_RDWR`]; every other field must be 0.
pub const OP_SHUTDOWN: u8 = 12;
/// Connects the socket in `slot` to the `len`-byte socket address at `addr` (`len` in
/// `2..=`[`MAX_SOCKADDR_LEN`]; the address is copied once). A connection that is in
/// progress waits for the socket to become writable, then completes with the socket's
/// error (`SO_ERROR`): 0 when connected. Cancellable while it waits, like RECV. `off`,
/// `op_flags` and `aux` must be 0.
pub const OP_CONNECT: u8 = 13;
/// Sends up to `len` bytes of the file in slot `aux` (the source) to the socket in
/// `slot` (the destination), as `sendfile(2)` does: the bytes never enter user space.
/// `off` is the source offset, or [`OFF_CURRENT`] for the source's file position, which
/// then advances by the bytes sent. `len` is nonzero (a result of
/// 0 then always means end of file) and clamped to [`MAX_RW_LEN`]; `off + len` must
/// not exceed `i64::MAX` for an explicit offset. `addr` and `op_flags` must be 0.
///
/// Completes with the byte count, which may be short (end of file, a signal, the
/// backend's chunk size; callers loop like with `sendfile(2)`), or `-errno`: `-EBADF`
/// for a source not open for reading or a destination not open for writing, `-EINVAL`
/// for a source that is not a regular file or block device, `-ENOTSOCK` for a
/// destination that is not a socket, `-EPIPE`/`-ECONNRESET` when the peer is gone.
/// It waits for the destination to become writable like SEND (cancellable the same
/// way: ASYNC_CANCEL, CLOSE of the destination slot, SHUTDOWN). Bytes already sent
/// when it is cancelled are reported, never lost.
pub const OP_SENDFILE: u8 = 14;
/// One past the last valid opcode.
pub const OP_LAST: u8 = 15;

// ---------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------

/// SQ flags word: the lane's worker is asleep; call `ENTER` with [`ENTER_SQ_WAKEUP`].
pub const SQ_NEED_WAKEUP: u32 = 1 << 0;

/// `ENTER` flag: wake the worker of `EnterArgs::lane` (or of every lane).
pub const ENTER_SQ_WAKEUP: u32 = 1 << 0;
/// `ENTER` flag: sleep until `min_complete` CQEs are waiting over all lanes, the
/// timeout expires (`-ETIME`) or a signal arrives (`-EINTR`).
pub const ENTER_GETEVENTS: u32 = 1 << 1;
/// `ENTER` flag: do the lanes' work on the calling thread where their threads sleep,
/// instead of waking them: with [`ENTER_SQ_WAKEUP`], take the submitted SQEs of each
/// addressed lane whose thread sleeps and run them now; with [`ENTER_GETEVENTS`], while
/// waiting, re-issue the requests that became ready on lanes whose threads sleep (as
/// io_uring runs task work in the waiting task). A lane thread that is awake keeps its
/// lane's work until it finds such a caller waiting, then hands over after its round.
/// Without `ENTER_INLINE` the lane threads are woken.
pub const ENTER_INLINE: u32 = 1 << 2;
/// `ENTER` flag, with [`ENTER_INLINE`] only (else `-EINVAL`): until the context's next
/// `ENTER` with `ENTER_INLINE`, requests that become ready on lanes whose threads sleep
/// wait for that call instead of waking a lane thread, and that call runs them first
/// (io_uring's `DEFER_TASKRUN`). The caller promises to come back: the requests of a
/// process that does not are delayed (never lost; SHUTDOWN and the last close end them
/// as always).
pub const ENTER_DEFER: u32 = 1 << 3;
/// Every valid `ENTER` flag.
pub const ENTER_FLAGS: u32 = ENTER_SQ_WAKEUP | ENTER_GETEVENTS | ENTER_INLINE | ENTER_DEFER;

/// `EnterArgs::lane` value that addresses every lane.
pub const LANE_ALL: u32 = u32::MAX;
/// `EnterArgs::timeout_ns` value that means "no timeout".
pub const TIMEOUT_NONE: u64 = u64::MAX;

/// `SetupParams::flags`: the process pins lane thread `i` to CPU
/// `(affinity_offset + i) % CPUs`; the module only checks that `affinity_offset` is a
/// possible CPU number (the process's own `sched_setaffinity` respects its cpuset).
pub const SETUP_AFFINITY: u32 = 1 << 0;
/// Every valid setup flag.
pub const SETUP_FLAGS: u32 = SETUP_AFFINITY;

/// ACCEPT `op_flags`: the accepted socket is non-blocking (as `SOCK_NONBLOCK`).
pub const ACCEPT_NONBLOCK: u32 = 0o4000;
/// Every valid ACCEPT `op_flags` bit.
pub const ACCEPT_FLAGS: u32 = ACCEPT_NONBLOCK;

/// `MSG_PEEK`.
pub const MSG_PEEK: u32 = 0x2;
/// `MSG_TRUNC`.
pub const MSG_TRUNC: u32 = 0x20;
/// `MSG_DONTWAIT`: given explicitly in a RECV or SEND, the request completes with
/// `-EAGAIN` when the socket is not ready, instead of waiting for readiness (io_uring's
/// behaviour). Without it a request that would block waits for readiness; either way
/// the executor itself never blocks (it always tries without blocking first).
pub const MSG_DONTWAIT: u32 = 0x40;
/// `MSG_WAITALL`.
pub const MSG_WAITALL: u32 = 0x100;
/// `MSG_NOSIGNAL` (always implied on SEND: a closed peer gives `-EPIPE`, not SIGPIPE).
pub const MSG_NOSIGNAL: u32 = 0x4000;
/// `MSG_MORE`.
pub const MSG_MORE: u32 = 0x8000;
/// Every `MSG_*` flag RECV accepts.
pub const RECV_FLAGS: u32 = MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT | MSG_WAITALL;
/// Every `MSG_*` flag SEND accepts.
pub const SEND_FLAGS: u32 = MSG_DONTWAIT | MSG_NOSIGNAL | MSG_MORE;

/// `INSTALL_FD` flag: the new descriptor is close-on-exec (as `O_CLOEXEC`).
pub const INSTALL_CLOEXEC: u32 = 0o2000000;

/// OPENAT `slot` value: relative to the current directory (as `AT_FDCWD`).
pub const OPENAT_CWD: u32 = u32::MAX;
/// Longest path OPENAT takes, its terminating NUL included (the kernel's `PATH_MAX`).
pub const PATH_MAX: u32 = 4096;
/// `O_CREAT`.
pub const O_CREAT: u32 = 0o100;
/// `O_PATH` (refused by OPENAT).
pub const O_PATH: u32 = 0o10000000;
/// `__O_TMPFILE` (the bit `O_TMPFILE` adds to `O_DIRECTORY`).
pub const O_TMPFILE_BIT: u32 = 0o20000000;
/// Every `O_*` bit OPENAT accepts: the access mode, `O_CREAT`, `O_EXCL`, `O_NOCTTY`,
/// `O_TRUNC`, `O_APPEND`, `O_NONBLOCK`, `O_DSYNC`, `O_DIRECT`, `O_LARGEFILE`,
/// `O_DIRECTORY`, `O_NOFOLLOW`, `O_NOATIME`, `O_CLOEXEC` (no effect on a slot),
/// `O_SYNC`, `O_TMPFILE`. x86-64 and arm64 give four of them different bits, but the
/// same set of bits in all (`0o40000..=0o400000`).
pub const OPEN_FLAGS: u32 = 0o3
    | O_CREAT
    | 0o200
    | 0o400
    | 0o1000
    | 0o2000
    | 0o4000
    | 0o10000
    | 0o40000
    | 0o100000
    | 0o200000
    | 0o400000
    | 0o1000000
    | 0o2000000
    | 0o4000000
    | O_TMPFILE_BIT;
/// Largest OPENAT mode (`S_IALLUGO`).
pub const MAX_MODE: u32 = 0o7777;

/// FSYNC `op_flags`: only the data and what is needed to read it back (`fdatasync`).
pub const FSYNC_DATASYNC: u32 = 1;
/// Every valid FSYNC `op_flags` bit.
pub const FSYNC_FLAGS: u32 = FSYNC_DATASYNC;

/// `FALLOC_FL_KEEP_SIZE`.
pub const FALLOC_FL_KEEP_SIZE: u32 = 0x01;
/// `FALLOC_FL_PUNCH_HOLE` (needs `FALLOC_FL_KEEP_SIZE`).
pub const FALLOC_FL_PUNCH_HOLE: u32 = 0x02;
/// `FALLOC_FL_COLLAPSE_RANGE`.
pub const FALLOC_FL_COLLAPSE_RANGE: u32 = 0x08;
/// `FALLOC_FL_ZERO_RANGE`.
pub const FALLOC_FL_ZERO_RANGE: u32 = 0x10;
/// `FALLOC_FL_INSERT_RANGE`.
pub const FALLOC_FL_INSERT_RANGE: u32 = 0x20;
/// `FALLOC_FL_UNSHARE_RANGE`.
pub const FALLOC_FL_UNSHARE_RANGE: u32 = 0x40;
/// Every FALLOCATE mode bit accepted (the file system checks the combination).
pub const FALLOCATE_FLAGS: u32 = FALLOC_FL_KEEP_SIZE
    | FALLOC_FL_PUNCH_HOLE
    | FALLOC_FL_COLLAPSE_RANGE
    | FALLOC_FL_ZERO_RANGE
    | FALLOC_FL_INSERT_RANGE
    | FALLOC_FL_UNSHARE_RANGE;

/// SHUTDOWN: no more receptions.
pub const SHUT_RD: u32 = 0;
/// SHUTDOWN: no more transmissions (sends a FIN on TCP).
pub const SHUT_WR: u32 = 1;
/// SHUTDOWN: both.
pub const SHUT_RDWR: u32 = 2;

/// Largest CONNECT address length (`sizeof(struct sockaddr_storage)`).
pub const MAX_SOCKADDR_LEN: u32 = 128;

// ---------------------------------------------------------------------------------------
// Provided buffers and multishot requests (ABI 3): pbuf.rs
// ---------------------------------------------------------------------------------------

#[path = "pbuf.rs"]
mod pbuf;
pub use pbuf::*;

// ---------------------------------------------------------------------------------------
// Entries and ring header
// ---------------------------------------------------------------------------------------

/// A submission queue entry: 64 bytes.
///
/// Fields not used by an opcode must be zero; a nonzero reserved field completes the
/// request with `-EINVAL`, so they can be given meaning later.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sqe {
    /// One of the `OP_*` constants.
    pub opcode: u8,
    /// Per-entry flags: [`SQE_BUFFER_SELECT`], [`SQE_MULTISHOT`].
    pub flags: u8,
    /// With [`SQE_BUFFER_SELECT`]: the provided-buffer group (else must be 0).
    pub buf_group: u16,
    /// The registered file slot the request operates on.
    pub slot: u32,
    /// File offset for READ/WRITE/WRITEV/SENDFILE (or [`OFF_CURRENT`]), FSYNC and
    /// FALLOCATE;
    /// the mode for OPENAT.
    pub off: u64,
    /// User address: the buffer, the iovec array for WRITEV, the path for OPENAT, the
    /// socket address for CONNECT; the length for FALLOCATE.
    pub addr: u64,
    /// Byte count, iovec count for WRITEV, address length for CONNECT, range length
    /// for FSYNC, slot count for a multishot ACCEPT.
    pub len: u32,
    /// Opcode-specific flags (`MSG_*` for RECV/SEND, `ACCEPT_*` for ACCEPT, `O_*` for
    /// OPENAT, `FSYNC_*`, the FALLOCATE mode, the SHUTDOWN `how`).
    pub op_flags: u32,
    /// Opaque token copied into the CQE.
    pub user_data: u64,
    /// ACCEPT and OPENAT: the slot that receives the new file (multishot ACCEPT: the
    /// first slot of its range); SENDFILE: the source file's slot.
    pub aux: u32,
    /// Reserved (must be 0).
    pub resv0: u32,
    /// Reserved (must be 0).
    pub resv: [u64; 2],
}

impl Sqe {
    /// An all-zero entry (a NOP with user_data 0).
    pub const ZERO: Sqe = Sqe {
        opcode: OP_NOP,
        flags: 0,
        buf_group: 0,
        slot: 0,
        off: 0,
        addr: 0,
        len: 0,
        op_flags: 0,
        user_data: 0,
        aux: 0,
        resv0: 0,
        resv: [0; 2],
    };
}

/// A completion queue entry: 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cqe {
    /// The `user_data` of the request.
    pub user_data: u64,
    /// Result: a count or slot (>= 0) or a negative errno.
    pub res: i32,
    /// Completion flags: [`CQE_F_BUFFER`] (with the buffer id in the upper 16 bits),
    /// [`CQE_F_MORE`].
    pub flags: u32,
}

/// A `u32` counter alone on its cache line.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct PaddedU32 {
    /// The counter.
    pub value: AtomicU32,
}

/// Read-only description of a ring, written once by the ring's creator.
///
/// Informative only: neither side trusts it (the kernel keeps its own copy; userspace
/// takes the sizes from `SetupParams`).
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct RingInfo {
    /// Number of entries (a power of two).
    pub entries: u32,
    /// `entries - 1`.
    pub mask: u32,
    /// Index of the lane the ring belongs to.
    pub lane: u32,
    /// Reserved.
    pub resv: u32,
}

/// Header of an SQ or a CQ: head, tail and flags each on its own cache line.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RingHeader {
    /// Consumer index (SQ: worker; CQ: userspace).
    pub head: PaddedU32,
    /// Producer index (SQ: userspace; CQ: worker).
    pub tail: PaddedU32,
    /// Ring flags (SQ: [`SQ_NEED_WAKEUP`], written by the worker).
    pub flags: PaddedU32,
    /// Sizes, for debugging tools.
    pub info: RingInfo,
}

/// Where the parts of one lane lie, relative to the lane's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneLayout {
    /// Offset of the SQ [`RingHeader`].
    pub sq_off: u32,
    /// Offset of the SQE array.
    pub sqes_off: u32,
    /// Offset of the CQ [`RingHeader`].
    pub cq_off: u32,
    /// Offset of the CQE array.
    pub cqes_off: u32,
    /// Bytes per lane, a multiple of [`PAGE_SIZE`].
    pub lane_size: u64,
}

/// Rounds `v` up to a multiple of `align` (a power of two).
pub const fn align_up(v: u64, align: u64) -> u64 {
    (v + align - 1) & !(align - 1)
}

/// Whether `n` is a valid ring size: a power of two in `1..=MAX_ENTRIES`.
pub const fn valid_entries(n: u32) -> bool {
    n != 0 && n <= MAX_ENTRIES && n.is_power_of_two()
}

/// The layout of one lane with the given ring sizes (both must pass [`valid_entries`]).
pub const fn lane_layout(sq_entries: u32, cq_entries: u32) -> LaneLayout {
    let hdr = core::mem::size_of::<RingHeader>() as u64;
    let sqes_off = hdr;
    let cq_off = align_up(
        sqes_off + sq_entries as u64 * core::mem::size_of::<Sqe>() as u64,
        CACHE_LINE as u64,
    );
    let cqes_off = cq_off + hdr;
    let end = cqes_off + cq_entries as u64 * core::mem::size_of::<Cqe>() as u64;
    LaneLayout {
        sq_off: 0,
        sqes_off: sqes_off as u32,
        cq_off: cq_off as u32,
        cqes_off: cqes_off as u32,
        lane_size: align_up(end, PAGE_SIZE as u64),
    }
}

/// `struct iovec` as the kernel reads it for WRITEV (64-bit layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoVec {
    /// Start address.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

// ---------------------------------------------------------------------------------------
// Request decoding (shared by the kernel module and the in-process workers): decode.rs
// ---------------------------------------------------------------------------------------

#[path = "decode.rs"]
mod decode;
pub use decode::*;

// ---------------------------------------------------------------------------------------
// ioctl arguments and numbers: ioctl.rs
// ---------------------------------------------------------------------------------------

#[path = "ioctl.rs"]
mod ioctl;
pub use ioctl::*;

// ---------------------------------------------------------------------------------------
// Compile-time layout checks
// ---------------------------------------------------------------------------------------

macro_rules! assert_layout {
    ($ty:ty, size $size:expr, align $align:expr, { $($field:ident @ $off:expr),* $(,)? }) => {
        const _: () = {
            assert!(core::mem::size_of::<$ty>() == $size);
            assert!(core::mem::align_of::<$ty>() == $align);
            $(assert!(core::mem::offset_of!($ty, $field) == $off);)*
        };
    };
}

assert_layout!(Sqe, size 64, align 8, {
    opcode @ 0, flags @ 1, buf_group @ 2, slot @ 4, off @ 8, addr @ 16, len @ 24,
    op_flags @ 28, user_data @ 32, aux @ 40, resv0 @ 44, resv @ 48,
});
assert_layout!(Cqe, size 16, align 8, { user_data @ 0, res @ 8, flags @ 12 });
assert_layout!(PaddedU32, size 64, align 64, { value @ 0 });
assert_layout!(RingInfo, size 64, align 64, { entries @ 0, mask @ 4, lane @ 8, resv @ 12 });
assert_layout!(RingHeader, size 256, align 64, { head @ 0, tail @ 64, flags @ 128, info @ 192 });
assert_layout!(SetupParams, size 128, align 8, {
    abi_version @ 0, workers @ 4, sq_entries @ 8, cq_entries @ 12, idle_ms @ 16, flags @ 20,
    affinity_offset @ 24, max_files @ 28, helpers @ 32, resv_in @ 36,
    lane_size @ 64, mmap_size @ 72, sq_off @ 80, sqes_off @ 84, cq_off @ 88, cqes_off @ 92,
    resv_out @ 96,
});
assert_layout!(EnterArgs, size 24, align 8, {
    flags @ 0, lane @ 4, min_complete @ 8, resv @ 12, timeout_ns @ 16,
});
assert_layout!(FilesUpdate, size 24, align 8, { fds @ 0, slots @ 8, count @ 16, resv @ 20 });
assert_layout!(SlotArg, size 8, align 4, { slot @ 0, flags @ 4 });
assert_layout!(ThreadArg, size 8, align 4, { index @ 0, flags @ 4 });
assert_layout!(BufRingHeader, size 128, align 64, { tail @ 0, head @ 64 });
assert_layout!(BufRingReg, size 48, align 8, {
    ring_addr @ 0, bufs_addr @ 8, entries @ 16, count @ 20, buf_size @ 24, group @ 28,
    resv @ 32,
});
assert_layout!(BufGroupArg, size 8, align 4, { group @ 0, flags @ 4 });
assert_layout!(IoVec, size 16, align 8, { base @ 0, len @ 8 });
assert_layout!(Stats, size 64, align 8, {
    ops @ 0, parked @ 8, wakeups @ 16, offloaded @ 24, pending @ 32, inline_ops @ 40,
    lane_wakes @ 48, polls @ 56,
});

const _: () = {
    assert!(core::mem::size_of::<AtomicU32>() == 4);
    // The smallest and the largest lane both keep every part cache-line aligned and fit
    // the u32 offsets.
    let small = lane_layout(1, 1);
    assert!(small.sqes_off == 256 && small.cq_off == 320 && small.cqes_off == 576);
    assert!(small.lane_size == PAGE_SIZE as u64);
    let big = lane_layout(MAX_ENTRIES, MAX_ENTRIES);
    assert!(big.cq_off as usize & (CACHE_LINE - 1) == 0);
    assert!(big.cqes_off as usize & (CACHE_LINE - 1) == 0);
    assert!(big.lane_size & (PAGE_SIZE as u64 - 1) == 0);
    assert!((big.lane_size * MAX_WORKERS as u64) < (1u64 << 32));
    // The ioctl numbers match the kernel's _IOWR/_IOW of these sizes.
    assert!(FASTIO_SETUP == 0xC080_FA01);
    assert!(FASTIO_ENTER == 0x4018_FA02);
    assert!(FASTIO_REGISTER_FILES == 0x4018_FA03);
    assert!(FASTIO_UNREGISTER_FILE == 0x4008_FA04);
    assert!(FASTIO_INSTALL_FD == 0x4008_FA05);
    assert!(FASTIO_GET_STATS == 0x8040_FA06);
    assert!(FASTIO_RUN_LANE == 0x4008_FA07);
    assert!(FASTIO_RUN_HELPER == 0x4008_FA08);
    assert!(FASTIO_SHUTDOWN == 0x0000_FA09);
    assert!(FASTIO_REGISTER_BUF_RING == 0x4030_FA0A);
    assert!(FASTIO_UNREGISTER_BUF_RING == 0x4008_FA0B);
    // Buffer ids fit the upper 16 bits of the CQE flags.
    assert!(MAX_PBUF_ENTRIES <= 1 << 16);
    assert!(MAX_PBUF_BYTES >= MAX_PBUF_SIZE as u64);
    assert!(MAX_RW_LEN == 0x7FFF_F000);
    // Opcodes are dense: OP_LAST is one past SENDFILE, the last one.
    assert!(OP_ASYNC_CANCEL == 8 && OP_OPENAT == 9 && OP_CONNECT == 13);
    assert!(OP_SENDFILE == 14 && OP_LAST == OP_SENDFILE + 1);
    assert!(OPEN_FLAGS & O_PATH == 0);
    // ASYNC_CANCEL takes its target from `addr` and uses no slot.
    let cancel = Sqe {
        opcode: OP_ASYNC_CANCEL,
        addr: 7,
        ..Sqe::ZERO
    };
    assert!(matches!(
        decode(&cancel, 1),
        Ok(Op::AsyncCancel { target: 7 })
    ));
    let with_slot = Sqe { slot: 1, ..cancel };
    assert!(matches!(decode(&with_slot, 1), Err(SqeError::Invalid)));
};
