//! The public value types of the proactor: slots, completions and refusals.

use std::fmt;
use std::io;

/// A registered file: an index into the context's file table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub(super) u32);

impl Slot {
    /// The slot number.
    pub fn index(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {}", self.0)
    }
}

/// A finished request.
#[derive(Debug)]
pub struct Completion {
    /// The token given when the request was queued.
    pub user_data: u64,
    /// Bytes transferred, 0, the new slot's index (ACCEPT), or a negative errno.
    pub result: i32,
    /// The buffer the request owned (RECV, SEND, READ, WRITE; the path of an OPENAT,
    /// the address of a CONNECT).
    pub buf: Option<Vec<u8>>,
    /// The buffers a WRITEV owned.
    pub bufs: Vec<Vec<u8>>,
    /// For a successful ACCEPT or OPENAT: the slot of the new connection or file.
    pub accepted: Option<Slot>,
    /// A RECV into provided buffers: the buffer holding the `result` bytes received.
    pub provided: Option<super::ProvidedBuf>,
    /// A multishot request stays armed: more completions will come for it. The last
    /// completion of every request has it clear.
    pub more: bool,
    /// The CQE's flags as the executor posted them (`CQE_F_*`).
    pub flags: u32,
}

impl Completion {
    /// The result as `io::Result`: `Ok(n)` for `n >= 0`, else the errno as an error.
    pub fn io_result(&self) -> io::Result<usize> {
        if self.result >= 0 {
            Ok(self.result as usize)
        } else {
            Err(io::Error::from_raw_os_error(-self.result))
        }
    }
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The lane's SQ is full or its in-flight limit reached: reap completions and retry.
    Busy,
    /// The slot is not registered (or is being closed, or is out of range).
    BadSlot,
    /// The buffer range does not lie inside the buffer, or a WRITEV has no or too many
    /// buffers.
    BadRange,
    /// No free slot is left for an ACCEPT (raise `max_files`).
    NoSlots,
}

/// A request that was not queued, with the buffers it would have owned.
#[derive(Debug)]
pub struct Rejected {
    /// Why.
    pub reason: RejectReason,
    /// The same, as an `io::Error` with a message.
    pub error: io::Error,
    /// The buffer given to the request, returned untouched.
    pub buf: Option<Vec<u8>>,
    /// The buffers given to a WRITEV, returned untouched.
    pub bufs: Vec<Vec<u8>>,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Rejected {}

impl From<Rejected> for io::Error {
    fn from(r: Rejected) -> io::Error {
        r.error
    }
}

pub(super) fn reject(reason: RejectReason, buf: Option<Vec<u8>>, bufs: Vec<Vec<u8>>) -> Rejected {
    let (kind, msg) = match reason {
        RejectReason::Busy => (
            io::ErrorKind::WouldBlock,
            "lane busy: SQ full or in-flight limit (CQ size) reached; reap completions first",
        ),
        RejectReason::BadSlot => (io::ErrorKind::InvalidInput, "slot is not registered"),
        RejectReason::BadRange => (
            io::ErrorKind::InvalidInput,
            "buffer range outside the buffer (or bad iovec count)",
        ),
        RejectReason::NoSlots => (
            io::ErrorKind::OutOfMemory,
            "no free file slot (raise max_files)",
        ),
    };
    Rejected {
        reason,
        error: io::Error::new(kind, msg),
        buf,
        bufs,
    }
}
