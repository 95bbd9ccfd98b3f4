// SPDX-License-Identifier: GPL-2.0
//! Request decoding, shared by the kernel module and the in-process workers: [`decode`]
//! turns a private copy of an SQE into a validated [`Op`].

use super::*;

/// Why an SQE was refused before it ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqeError {
    /// Unknown opcode, nonzero reserved field or flag, bad count: `-EINVAL`.
    Invalid,
    /// Slot out of range: `-EBADF`.
    BadSlot,
}

impl SqeError {
    /// The positive errno the request completes with (negated in the CQE).
    pub const fn errno(self) -> i32 {
        match self {
            SqeError::Invalid => 22,
            SqeError::BadSlot => 9,
        }
    }
}

/// A validated request, decoded from a private copy of an SQE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// [`OP_NOP`].
    Nop,
    /// [`OP_ACCEPT`] on `slot` into `dest`.
    Accept {
        /// Listening socket.
        slot: u32,
        /// Empty slot for the new connection.
        dest: u32,
        /// [`ACCEPT_*`](ACCEPT_NONBLOCK) flags.
        flags: u32,
    },
    /// [`OP_RECV`].
    Recv {
        /// Socket.
        slot: u32,
        /// Buffer address.
        addr: u64,
        /// Byte count (clamped to [`MAX_RW_LEN`]).
        len: u32,
        /// `MSG_*` flags (a subset of [`RECV_FLAGS`]).
        flags: u32,
    },
    /// [`OP_RECV`] with [`SQE_BUFFER_SELECT`]: into a buffer of a provided group.
    RecvSelect {
        /// Socket.
        slot: u32,
        /// Provided-buffer group (below [`MAX_BUF_GROUPS`]).
        group: u16,
        /// With [`SQE_MULTISHOT`]: stays armed, one CQE per reception.
        multishot: bool,
    },
    /// [`OP_ACCEPT`] with [`SQE_MULTISHOT`]: each connection into the lowest empty slot
    /// of `first..first + count`.
    AcceptMulti {
        /// Listening socket.
        slot: u32,
        /// First slot of the range.
        first: u32,
        /// Number of slots in the range (`first + count <= max_files`, `count >= 1`).
        count: u32,
        /// [`ACCEPT_*`](ACCEPT_NONBLOCK) flags.
        flags: u32,
    },
    /// [`OP_SEND`].
    Send {
        /// Socket.
        slot: u32,
        /// Buffer address.
        addr: u64,
        /// Byte count (clamped to [`MAX_RW_LEN`]).
        len: u32,
        /// `MSG_*` flags (a subset of [`SEND_FLAGS`]).
        flags: u32,
    },
    /// [`OP_READ`].
    Read {
        /// File.
        slot: u32,
        /// Buffer address.
        addr: u64,
        /// Byte count (clamped to [`MAX_RW_LEN`]).
        len: u32,
        /// Offset or [`OFF_CURRENT`].
        off: u64,
    },
    /// [`OP_WRITE`].
    Write {
        /// File.
        slot: u32,
        /// Buffer address.
        addr: u64,
        /// Byte count (clamped to [`MAX_RW_LEN`]).
        len: u32,
        /// Offset or [`OFF_CURRENT`].
        off: u64,
    },
    /// [`OP_WRITEV`].
    Writev {
        /// File.
        slot: u32,
        /// Address of the [`IoVec`] array.
        iov: u64,
        /// Number of iovecs, `1..=MAX_IOVECS`.
        count: u32,
        /// Offset or [`OFF_CURRENT`].
        off: u64,
    },
    /// [`OP_CLOSE`].
    Close {
        /// Slot to release.
        slot: u32,
    },
    /// [`OP_ASYNC_CANCEL`].
    AsyncCancel {
        /// The `user_data` of the request(s) to cancel (from the SQE's `addr`).
        target: u64,
    },
    /// [`OP_OPENAT`].
    OpenAt {
        /// Directory slot, or `None` for the current directory ([`OPENAT_CWD`]).
        dir: Option<u32>,
        /// Address of the NUL-terminated path.
        path: u64,
        /// `O_*` flags (a subset of [`OPEN_FLAGS`]).
        flags: u32,
        /// Mode for a created file (at most [`MAX_MODE`]).
        mode: u32,
        /// Empty slot for the new file.
        dest: u32,
    },
    /// [`OP_FSYNC`].
    Fsync {
        /// File.
        slot: u32,
        /// [`FSYNC_*`](FSYNC_DATASYNC) flags.
        flags: u32,
        /// Start of the range (at most `i64::MAX`).
        off: u64,
        /// Length of the range; 0 = to the end of the file.
        len: u32,
    },
    /// [`OP_FALLOCATE`].
    Fallocate {
        /// File.
        slot: u32,
        /// `FALLOC_FL_*` mode (a subset of [`FALLOCATE_FLAGS`]).
        mode: u32,
        /// Offset; `off + len <= i64::MAX`.
        off: u64,
        /// Length, nonzero.
        len: u64,
    },
    /// [`OP_SHUTDOWN`].
    Shutdown {
        /// Socket.
        slot: u32,
        /// [`SHUT_RD`], [`SHUT_WR`] or [`SHUT_RDWR`].
        how: u32,
    },
    /// [`OP_CONNECT`].
    Connect {
        /// Socket.
        slot: u32,
        /// Address of the socket address.
        addr: u64,
        /// Its length, `2..=MAX_SOCKADDR_LEN` (0 only inside a backend: "in progress").
        len: u32,
    },
    /// [`OP_SENDFILE`].
    Sendfile {
        /// Destination socket.
        slot: u32,
        /// Source file.
        src: u32,
        /// Source offset or [`OFF_CURRENT`].
        off: u64,
        /// Byte count, nonzero (clamped to [`MAX_RW_LEN`]).
        len: u32,
    },
}

/// Which readiness a request waits for when it would block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Needs the file readable (ACCEPT, RECV, READ).
    In,
    /// Needs the file writable (SEND, WRITE, WRITEV, CONNECT in progress, SENDFILE).
    Out,
    /// Never waits for readiness (NOP, CLOSE, ASYNC_CANCEL, OPENAT, FSYNC, FALLOCATE,
    /// SHUTDOWN).
    None,
}

impl Op {
    /// The slot the request operates on, if any.
    pub const fn slot(&self) -> Option<u32> {
        match *self {
            Op::Nop | Op::AsyncCancel { .. } => None,
            Op::OpenAt { dir, .. } => dir,
            Op::Accept { slot, .. }
            | Op::AcceptMulti { slot, .. }
            | Op::RecvSelect { slot, .. }
            | Op::Recv { slot, .. }
            | Op::Send { slot, .. }
            | Op::Read { slot, .. }
            | Op::Write { slot, .. }
            | Op::Writev { slot, .. }
            | Op::Close { slot }
            | Op::Fsync { slot, .. }
            | Op::Fallocate { slot, .. }
            | Op::Shutdown { slot, .. }
            | Op::Connect { slot, .. }
            | Op::Sendfile { slot, .. } => Some(slot),
        }
    }

    /// The readiness the request needs when it would block.
    pub const fn direction(&self) -> Direction {
        match self {
            Op::Accept { .. }
            | Op::AcceptMulti { .. }
            | Op::Recv { .. }
            | Op::RecvSelect { .. }
            | Op::Read { .. } => Direction::In,
            Op::Send { .. }
            | Op::Write { .. }
            | Op::Writev { .. }
            | Op::Connect { .. }
            | Op::Sendfile { .. } => Direction::Out,
            Op::Nop
            | Op::Close { .. }
            | Op::AsyncCancel { .. }
            | Op::OpenAt { .. }
            | Op::Fsync { .. }
            | Op::Fallocate { .. }
            | Op::Shutdown { .. } => Direction::None,
        }
    }
}

const fn clamp_len(len: u32) -> u32 {
    if len > MAX_RW_LEN {
        MAX_RW_LEN
    } else {
        len
    }
}

/// Validates a private copy of an SQE against a context with `max_files` slots.
///
/// Every reserved field and flag must be zero, the opcode known, every slot below
/// `max_files` (OPENAT's directory may be [`OPENAT_CWD`]), flags within the opcode's
/// set, WRITEV's count in `1..=MAX_IOVECS`, ranges within `i64` (FSYNC, FALLOCATE,
/// SENDFILE, checked without overflow), CONNECT's address length in
/// `2..=MAX_SOCKADDR_LEN`, SENDFILE's source slot and nonzero length.
/// Lengths above [`MAX_RW_LEN`] are clamped, not refused. Addresses are not checked
/// here: the copy to or from user memory reports `-EFAULT`.
///
/// SQE flags: only [`SQE_FLAGS`]; [`SQE_BUFFER_SELECT`] only on RECV (with `addr`,
/// `len` and `op_flags` 0 and a group below [`MAX_BUF_GROUPS`]); [`SQE_MULTISHOT`] only
/// on RECV with [`SQE_BUFFER_SELECT`] and on ACCEPT (with a slot range `aux..aux + len`,
/// `len >= 1`, inside `max_files`); `buf_group` is 0 without [`SQE_BUFFER_SELECT`].
/// Whether the group is registered is the executor's business (`-ENOBUFS`).
pub const fn decode(sqe: &Sqe, max_files: u32) -> Result<Op, SqeError> {
    if sqe.flags & !SQE_FLAGS != 0 || sqe.resv0 != 0 || sqe.resv[0] != 0 || sqe.resv[1] != 0 {
        return Err(SqeError::Invalid);
    }
    if sqe.flags != 0 {
        return decode_selected(sqe, max_files);
    }
    if sqe.buf_group != 0 {
        return Err(SqeError::Invalid);
    }
    let slot = sqe.slot;
    let uses_slot = sqe.opcode != OP_NOP
        && sqe.opcode != OP_ASYNC_CANCEL
        && sqe.opcode < OP_LAST
        && !(sqe.opcode == OP_OPENAT && slot == OPENAT_CWD);
    if uses_slot && slot >= max_files {
        return Err(SqeError::BadSlot);
    }
    // Fields an opcode does not use must be zero.
    let no_rw = sqe.off == 0 && sqe.addr == 0 && sqe.len == 0;
    let op = match sqe.opcode {
        OP_NOP => {
            if sqe.slot != 0 || !no_rw || sqe.op_flags != 0 || sqe.aux != 0 {
                return Err(SqeError::Invalid);
            }
            Op::Nop
        }
        OP_ACCEPT => {
            if !no_rw || sqe.op_flags & !ACCEPT_FLAGS != 0 {
                return Err(SqeError::Invalid);
            }
            if sqe.aux >= max_files {
                return Err(SqeError::BadSlot);
            }
            Op::Accept {
                slot,
                dest: sqe.aux,
                flags: sqe.op_flags,
            }
        }
        OP_RECV | OP_SEND => {
            let allowed = if sqe.opcode == OP_RECV {
                RECV_FLAGS
            } else {
                SEND_FLAGS
            };
            if sqe.off != 0 || sqe.aux != 0 || sqe.op_flags & !allowed != 0 {
                return Err(SqeError::Invalid);
            }
            let (addr, len, flags) = (sqe.addr, clamp_len(sqe.len), sqe.op_flags);
            if sqe.opcode == OP_RECV {
                Op::Recv {
                    slot,
                    addr,
                    len,
                    flags,
                }
            } else {
                Op::Send {
                    slot,
                    addr,
                    len,
                    flags,
                }
            }
        }
        OP_READ | OP_WRITE => {
            if sqe.aux != 0 || sqe.op_flags != 0 {
                return Err(SqeError::Invalid);
            }
            let (addr, len, off) = (sqe.addr, clamp_len(sqe.len), sqe.off);
            if sqe.opcode == OP_READ {
                Op::Read {
                    slot,
                    addr,
                    len,
                    off,
                }
            } else {
                Op::Write {
                    slot,
                    addr,
                    len,
                    off,
                }
            }
        }
        OP_WRITEV => {
            if sqe.aux != 0 || sqe.op_flags != 0 || sqe.len == 0 || sqe.len > MAX_IOVECS {
                return Err(SqeError::Invalid);
            }
            Op::Writev {
                slot,
                iov: sqe.addr,
                count: sqe.len,
                off: sqe.off,
            }
        }
        OP_CLOSE => {
            if !no_rw || sqe.op_flags != 0 || sqe.aux != 0 {
                return Err(SqeError::Invalid);
            }
            Op::Close { slot }
        }
        OP_ASYNC_CANCEL => {
            if sqe.slot != 0 || sqe.off != 0 || sqe.len != 0 || sqe.op_flags != 0 || sqe.aux != 0 {
                return Err(SqeError::Invalid);
            }
            Op::AsyncCancel { target: sqe.addr }
        }
        OP_OPENAT => return decode_openat(sqe, max_files),
        OP_FSYNC => {
            if sqe.addr != 0 || sqe.aux != 0 || sqe.op_flags & !FSYNC_FLAGS != 0 {
                return Err(SqeError::Invalid);
            }
            // The range's end stays a valid loff_t (off + len cannot overflow a u64).
            if sqe.off > i64::MAX as u64 || sqe.off + sqe.len as u64 > i64::MAX as u64 {
                return Err(SqeError::Invalid);
            }
            Op::Fsync {
                slot,
                flags: sqe.op_flags,
                off: sqe.off,
                len: sqe.len,
            }
        }
        OP_FALLOCATE => {
            if sqe.len != 0 || sqe.aux != 0 || sqe.op_flags & !FALLOCATE_FLAGS != 0 {
                return Err(SqeError::Invalid);
            }
            let (off, len) = (sqe.off, sqe.addr);
            let end = match off.checked_add(len) {
                Some(e) => e,
                None => return Err(SqeError::Invalid),
            };
            if len == 0 || end > i64::MAX as u64 {
                return Err(SqeError::Invalid);
            }
            Op::Fallocate {
                slot,
                mode: sqe.op_flags,
                off,
                len,
            }
        }
        OP_SHUTDOWN => {
            if !no_rw || sqe.aux != 0 || sqe.op_flags > SHUT_RDWR {
                return Err(SqeError::Invalid);
            }
            Op::Shutdown {
                slot,
                how: sqe.op_flags,
            }
        }
        OP_CONNECT => {
            if sqe.off != 0 || sqe.op_flags != 0 || sqe.aux != 0 {
                return Err(SqeError::Invalid);
            }
            if sqe.len < 2 || sqe.len > MAX_SOCKADDR_LEN {
                return Err(SqeError::Invalid);
            }
            Op::Connect {
                slot,
                addr: sqe.addr,
                len: sqe.len,
            }
        }
        OP_SENDFILE => return decode_sendfile(sqe, max_files),
        _ => return Err(SqeError::Invalid),
    };
    Ok(op)
}

/// A request with SQE flags (the reserved fields are checked).
const fn decode_selected(sqe: &Sqe, max_files: u32) -> Result<Op, SqeError> {
    let select = sqe.flags & SQE_BUFFER_SELECT != 0;
    let multishot = sqe.flags & SQE_MULTISHOT != 0;
    if sqe.opcode != OP_RECV && sqe.opcode != OP_ACCEPT {
        return Err(SqeError::Invalid);
    }
    if sqe.slot >= max_files {
        return Err(SqeError::BadSlot);
    }
    if sqe.opcode == OP_RECV {
        // The buffer comes from the group: no address, length or flags of its own.
        if !select
            || sqe.off != 0
            || sqe.addr != 0
            || sqe.len != 0
            || sqe.op_flags != 0
            || sqe.aux != 0
            || sqe.buf_group as u32 >= MAX_BUF_GROUPS
        {
            return Err(SqeError::Invalid);
        }
        return Ok(Op::RecvSelect {
            slot: sqe.slot,
            group: sqe.buf_group,
            multishot,
        });
    }
    // ACCEPT takes no buffer; only MULTISHOT.
    if select
        || !multishot
        || sqe.buf_group != 0
        || sqe.off != 0
        || sqe.addr != 0
        || sqe.op_flags & !ACCEPT_FLAGS != 0
        || sqe.len == 0
    {
        return Err(SqeError::Invalid);
    }
    match sqe.aux.checked_add(sqe.len) {
        Some(end) if end <= max_files => {}
        _ => return Err(SqeError::BadSlot),
    }
    Ok(Op::AcceptMulti {
        slot: sqe.slot,
        first: sqe.aux,
        count: sqe.len,
        flags: sqe.op_flags,
    })
}

/// Why a [`BufRingReg`] was refused: always `-EINVAL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufRingError;

/// A validated [`BufRingReg`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufRing {
    /// Group id.
    pub group: u16,
    /// User address of the ring header.
    pub ring_addr: u64,
    /// User address of the first id (after the header).
    pub ids_addr: u64,
    /// Ring entries (a power of two).
    pub entries: u32,
    /// User address of the buffers.
    pub bufs_addr: u64,
    /// Number of buffers.
    pub count: u32,
    /// Bytes per buffer.
    pub buf_size: u32,
}

impl BufRing {
    /// User address of buffer `id` (below `count`; `None` otherwise).
    pub const fn buf_addr(&self, id: u16) -> Option<u64> {
        if id as u32 >= self.count {
            return None;
        }
        // Cannot overflow: `validate_buf_ring` checked the end of the last buffer.
        Some(self.bufs_addr + id as u64 * self.buf_size as u64)
    }
}

/// Validates a private copy of a [`BufRingReg`]: group below [`MAX_BUF_GROUPS`],
/// entries a power of two up to [`MAX_PBUF_ENTRIES`], `count` in `1..=entries`,
/// `buf_size` in `1..=MAX_PBUF_SIZE`, `count * buf_size <= MAX_PBUF_BYTES`, the ring
/// aligned to [`CACHE_LINE`], both areas non-empty ranges that do not wrap and end below
/// `user_end` (the top of the user address space; the caller also checks access), and
/// the reserved fields 0. All arithmetic is checked.
pub const fn validate_buf_ring(reg: &BufRingReg, user_end: u64) -> Result<BufRing, BufRingError> {
    if reg.resv[0] != 0 || reg.resv[1] != 0 || reg.group >= MAX_BUF_GROUPS {
        return Err(BufRingError);
    }
    let e = reg.entries;
    if e == 0 || e > MAX_PBUF_ENTRIES || !e.is_power_of_two() {
        return Err(BufRingError);
    }
    if reg.count == 0 || reg.count > e || reg.buf_size == 0 || reg.buf_size > MAX_PBUF_SIZE {
        return Err(BufRingError);
    }
    let bytes = match (reg.count as u64).checked_mul(reg.buf_size as u64) {
        Some(b) if b <= MAX_PBUF_BYTES => b,
        _ => return Err(BufRingError),
    };
    if reg.ring_addr == 0 || reg.ring_addr & (CACHE_LINE as u64 - 1) != 0 || reg.bufs_addr == 0 {
        return Err(BufRingError);
    }
    match reg.ring_addr.checked_add(buf_ring_size(e)) {
        Some(end) if end <= user_end => {}
        _ => return Err(BufRingError),
    }
    match reg.bufs_addr.checked_add(bytes) {
        Some(end) if end <= user_end => {}
        _ => return Err(BufRingError),
    }
    Ok(BufRing {
        group: reg.group as u16,
        ring_addr: reg.ring_addr,
        ids_addr: reg.ring_addr + core::mem::size_of::<BufRingHeader>() as u64,
        entries: e,
        bufs_addr: reg.bufs_addr,
        count: reg.count,
        buf_size: reg.buf_size,
    })
}

/// SENDFILE's checks (the common ones are done).
const fn decode_sendfile(sqe: &Sqe, max_files: u32) -> Result<Op, SqeError> {
    if sqe.addr != 0 || sqe.op_flags != 0 || sqe.len == 0 {
        return Err(SqeError::Invalid);
    }
    if sqe.aux >= max_files {
        return Err(SqeError::BadSlot);
    }
    let len = clamp_len(sqe.len);
    // An explicit offset and the end of the range stay valid loff_t values (a u32 added
    // to a value at most i64::MAX cannot overflow a u64).
    if sqe.off != OFF_CURRENT
        && (sqe.off > i64::MAX as u64 || sqe.off + len as u64 > i64::MAX as u64)
    {
        return Err(SqeError::Invalid);
    }
    Ok(Op::Sendfile {
        slot: sqe.slot,
        src: sqe.aux,
        off: sqe.off,
        len,
    })
}

/// OPENAT's checks (the common ones are done).
const fn decode_openat(sqe: &Sqe, max_files: u32) -> Result<Op, SqeError> {
    let flags = sqe.op_flags;
    if sqe.len != 0 || flags & !OPEN_FLAGS != 0 || sqe.off > MAX_MODE as u64 {
        return Err(SqeError::Invalid);
    }
    // A mode only means something when a file may be created (as openat2 checks).
    if sqe.off != 0 && flags & (O_CREAT | O_TMPFILE_BIT) == 0 {
        return Err(SqeError::Invalid);
    }
    if sqe.aux >= max_files {
        return Err(SqeError::BadSlot);
    }
    let dir = if sqe.slot == OPENAT_CWD {
        None
    } else {
        Some(sqe.slot)
    };
    Ok(Op::OpenAt {
        dir,
        path: sqe.addr,
        flags,
        mode: sqe.off as u32,
        dest: sqe.aux,
    })
}
