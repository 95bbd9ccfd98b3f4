// SPDX-License-Identifier: GPL-2.0
//! Provided-buffer groups and multishot requests (ABI 3): the SQE and CQE flags, the
//! buffer ring in user memory and the arguments of its ioctls.

use super::PaddedU32;

/// SQE `flags`: the request takes its buffer from the provided-buffer group
/// `Sqe::buf_group` instead of `addr`/`len` (RECV only; `addr`, `len` and `op_flags`
/// must be 0). The CQE carries [`CQE_F_BUFFER`] and the buffer id when a buffer was
/// used. An unregistered group, or a group whose ring is empty, completes the request
/// with `-ENOBUFS` (io_uring's answer); nothing is received then.
pub const SQE_BUFFER_SELECT: u8 = 1 << 0;
/// SQE `flags`: one request, many completions. RECV (with [`SQE_BUFFER_SELECT`]): every
/// reception takes a buffer from the group and posts a CQE with
/// `CQE_F_BUFFER | CQE_F_MORE`. ACCEPT: every accepted connection is installed into an
/// empty slot of `aux..aux + len` (which one is the executor's choice: the `threads`
/// backend scans on from the slot it filled last, io_uring allocates from its
/// file-allocation range the same way) and posts a CQE (result: that slot) with
/// [`CQE_F_MORE`]. The request stays armed until a CQE *without* [`CQE_F_MORE`] ends it:
/// end of stream (0), out of buffers (`-ENOBUFS`: the data stays in the socket), no
/// empty slot left in the range (`-ENFILE`, posted when a connection comes: it stays
/// in the backlog, except on io_uring, which has accepted and then closes it),
/// `-ECANCELED` (ASYNC_CANCEL, CLOSE of the slot, shutdown), another error, or a CQ
/// without room: then the last CQE carries its data (a positive result with
/// [`CQE_F_BUFFER`]) and no [`CQE_F_MORE`]; re-arm to go on. A multishot request's
/// CQEs are not bounded by the CQ size: userspace reserves CQ room only for its final
/// CQE (executors keep completions that find the CQ full in a backlog, never drop them).
pub const SQE_MULTISHOT: u8 = 1 << 1;
/// Every valid SQE `flags` bit.
pub const SQE_FLAGS: u8 = SQE_BUFFER_SELECT | SQE_MULTISHOT;

/// CQE `flags`: the request used a provided buffer; its id is `flags >> CQE_BUFFER_SHIFT`.
pub const CQE_F_BUFFER: u32 = 1 << 0;
/// CQE `flags`: the multishot request stays armed; more CQEs will come for it.
pub const CQE_F_MORE: u32 = 1 << 1;
/// Shift of the buffer id in CQE `flags` (the upper 16 bits, as io_uring).
pub const CQE_BUFFER_SHIFT: u32 = 16;

/// Number of provided-buffer groups of a context (group ids `0..MAX_BUF_GROUPS`).
pub const MAX_BUF_GROUPS: u32 = 1024;
/// Largest number of entries of a provided-buffer ring (and of buffers in a group).
pub const MAX_PBUF_ENTRIES: u32 = 32768;
/// Largest size of one provided buffer.
pub const MAX_PBUF_SIZE: u32 = 1 << 20;
/// Largest total size of a group's buffers (`count * buf_size`).
pub const MAX_PBUF_BYTES: u64 = 1 << 30;

/// Header of a provided-buffer ring in user memory, followed by `entries` `u16` buffer
/// ids (slot of index `i`: `i & (entries - 1)`).
///
/// Userspace writes ids at `tail` and publishes them with a release store of `tail`; the
/// executor keeps its own head (it never reads `head` back), reads `tail` once per
/// reception with an acquire load, takes the id at its head and advances it, and stores
/// its head into `head` for debugging tools only. Every id read from the ring is
/// hostile: an id outside `0..count` is consumed and ends the request with `-EINVAL`
/// (nothing is received into it). The `uring` backend uses io_uring's own ring format
/// behind the same proactor API. Userspace
/// never puts more than `entries` ids in flight: it gives back only ids that a CQE
/// handed it (and, at registration, every id once). The kernel module (kmod/pbuf.rs)
/// advances its head only once data went into the buffer (a reception that would block
/// leaves the id at the head, as io_uring's ring buffers do), and a tail more than
/// `entries` ahead of its head (that rule broken, or the tail moved backwards) ends the
/// request with `-EINVAL` without consuming anything.
#[repr(C)]
#[derive(Debug, Default)]
pub struct BufRingHeader {
    /// Producer index (userspace).
    pub tail: PaddedU32,
    /// Consumer index as the executor last published it (informative).
    pub head: PaddedU32,
}

/// Argument of [`FASTIO_REGISTER_BUF_RING`](super::FASTIO_REGISTER_BUF_RING): a group of `count` buffers of `buf_size`
/// bytes at `bufs_addr` (buffer `id` at `bufs_addr + id * buf_size`), and its ring of
/// `entries` ids at `ring_addr` ([`BufRingHeader`] then the ids; [`buf_ring_size`] bytes,
/// aligned to [`CACHE_LINE`](super::CACHE_LINE)). The module copies this description once, checks every
/// range, and touches both areas only through user-copy routines.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufRingReg {
    /// User address of the ring (aligned to [`CACHE_LINE`](super::CACHE_LINE)).
    pub ring_addr: u64,
    /// User address of the buffers.
    pub bufs_addr: u64,
    /// Ring entries ([`validate_buf_ring`](super::validate_buf_ring): a power of two up to [`MAX_PBUF_ENTRIES`]).
    pub entries: u32,
    /// Number of buffers, `1..=entries`.
    pub count: u32,
    /// Bytes per buffer, `1..=MAX_PBUF_SIZE`.
    pub buf_size: u32,
    /// Group id, below [`MAX_BUF_GROUPS`].
    pub group: u32,
    /// Reserved (must be 0).
    pub resv: [u64; 2],
}

/// Argument of [`FASTIO_UNREGISTER_BUF_RING`](super::FASTIO_UNREGISTER_BUF_RING).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufGroupArg {
    /// Group id.
    pub group: u32,
    /// Reserved (must be 0).
    pub flags: u32,
}

/// Bytes of a provided-buffer ring of `entries` entries (header and ids).
pub const fn buf_ring_size(entries: u32) -> u64 {
    core::mem::size_of::<BufRingHeader>() as u64 + entries as u64 * 2
}
