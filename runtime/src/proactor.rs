//! The proactor: one completion-based API over every backend.
//!
//! ```no_run
//! use fastio::{Config, Proactor};
//! # fn main() -> std::io::Result<()> {
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let mut p = Proactor::new(&Config::default())?;
//! let lst = p.register(&listener)?;
//! p.accept(lst, 1).map_err(|r| r.error)?;
//! p.submit()?;
//! p.wait(1, None)?;
//! for c in p.completions() {
//!     println!("{} -> {}", c.user_data, c.result);
//! }
//! # Ok(()) }
//! ```
//!
//! # Buffer ownership
//!
//! Every operation that touches memory takes its buffer **by value** (`Vec<u8>`) and the
//! proactor keeps it until the request completes; the [`Completion`] hands it back. The
//! executor (a kernel worker, io_uring, a worker thread) writes into or reads from the
//! buffer while the caller has no access to it, so a buffer can be neither freed, moved
//! nor reused while an operation owns it, and no `unsafe` is needed to use the API.
//! A request that cannot be queued hands its buffer back in [`Rejected`]. If the
//! proactor is dropped with requests in flight, it cancels them and waits (bounded) for
//! their completions; buffers whose requests never complete are leaked, never freed
//! under the executor. [`Proactor::submit_raw`] is the `unsafe` escape hatch for callers
//! that manage memory themselves.
//!
//! # Limits
//!
//! Requests are spread over lanes by file slot (`slot % lanes`), so the requests of one
//! connection are issued in order. A lane never has more requests in flight than its
//! CQ has entries (minus two reserved for the runtime's own requests), so completions
//! are never dropped: a request beyond that, or beyond a full SQ, is [`Rejected`] with
//! [`RejectReason::Busy`]; reap completions and try again.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Once;
use std::time::{Duration, Instant};

use fastio_uapi::{
    Cqe, IoVec, Sqe, ACCEPT_NONBLOCK, OFF_CURRENT, OP_ACCEPT, OP_CLOSE, OP_NOP, OP_READ, OP_RECV,
    OP_SEND, OP_WRITE, OP_WRITEV,
};

use crate::backend::{self, Backend, Choice};
use crate::config::Config;

/// CQ entries per lane kept back for the runtime's own requests (cancel, install).
const RESERVED_CQES: u32 = 2;

/// A registered file: an index into the context's file table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(u32);

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
    /// The buffer the request owned (RECV, SEND, READ, WRITE).
    pub buf: Option<Vec<u8>>,
    /// The buffers a WRITEV owned.
    pub bufs: Vec<Vec<u8>>,
    /// For a successful ACCEPT: the slot of the new connection.
    pub accepted: Option<Slot>,
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

fn reject(reason: RejectReason, buf: Option<Vec<u8>>, bufs: Vec<Vec<u8>>) -> Rejected {
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

/// State of one slot as the proactor tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Reserved as an ACCEPT's destination.
    Accepting,
    Open,
    /// A CLOSE is in flight; freed when it completes.
    Closing,
}

/// What an in-flight request owns.
struct InFlight {
    user_data: u64,
    lane: u32,
    opcode: u8,
    slot: u32,
    /// ACCEPT: the destination slot.
    dest: u32,
    buf: Option<Vec<u8>>,
    bufs: Vec<Vec<u8>>,
    /// WRITEV: the iovec array the executor reads (points into `bufs`).
    iovecs: Vec<IoVec>,
}

static BANNER: Once = Once::new();

/// A completion-based I/O context over one backend.
///
/// Not `Sync`: one thread drives a proactor; create one per serving thread.
pub struct Proactor {
    backend: Box<dyn Backend>,
    choice: Choice,
    lanes: u32,
    lane_limit: u32,
    lane_inflight: Vec<u32>,
    inflight: Vec<Option<InFlight>>,
    free_tokens: Vec<u32>,
    slots: Vec<SlotState>,
    free_slots: Vec<u32>,
    ready: VecDeque<Completion>,
    next_nop_lane: u32,
    staged: bool,
}

impl Proactor {
    /// Opens the backend `config` asks for (see [`crate::backend`]) and prints, once per
    /// process, which backend was chosen and why.
    pub fn new(config: &Config) -> io::Result<Self> {
        let (backend, choice) = backend::open(config)?;
        BANNER.call_once(|| eprintln!("fastio: backend {choice}"));
        let lanes = backend.lanes();
        let lane_limit = backend.lane_capacity().saturating_sub(RESERVED_CQES).max(1);
        Ok(Proactor {
            backend,
            choice,
            lanes,
            lane_limit,
            lane_inflight: vec![0; lanes as usize],
            inflight: Vec::new(),
            free_tokens: Vec::new(),
            slots: vec![SlotState::Free; config.max_files as usize],
            free_slots: (0..config.max_files).rev().collect(),
            ready: VecDeque::new(),
            next_nop_lane: 0,
            staged: false,
        })
    }

    /// The backend in use and why it was chosen.
    pub fn backend(&self) -> &Choice {
        &self.choice
    }

    /// Number of lanes.
    pub fn lanes(&self) -> u32 {
        self.lanes
    }

    /// Requests that may be in flight on one lane.
    pub fn lane_limit(&self) -> u32 {
        self.lane_limit
    }

    /// Requests queued or executing, whose completions have not been reaped.
    pub fn in_flight(&self) -> usize {
        self.lane_inflight.iter().map(|&n| n as usize).sum()
    }

    /// Whether the worker of `lane` is asleep with NEED_WAKEUP set (None for backends
    /// without such a flag). For diagnostics and tests.
    pub fn lane_asleep(&self, lane: u32) -> Option<bool> {
        self.backend.lane_asleep(lane)
    }

    // --------------------------------------------------------------------------------
    // Files
    // --------------------------------------------------------------------------------

    /// Registers a file: the backend takes its own reference (the caller may close its
    /// descriptor afterwards). Returns the slot to use in requests.
    ///
    /// On the `threads` backend, sockets and pipes are switched to non-blocking mode,
    /// which the caller's descriptor shares.
    pub fn register(&mut self, fd: &impl AsFd) -> io::Result<Slot> {
        let slot = self.alloc_slot().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                "no free file slot (raise max_files)",
            )
        })?;
        match self.backend.register(slot, fd.as_fd()) {
            Ok(()) => {
                self.slots[slot as usize] = SlotState::Open;
                Ok(Slot(slot))
            }
            Err(e) => {
                self.release_slot(slot);
                Err(e)
            }
        }
    }

    /// Empties a slot at once. Requests still in flight on it keep their own reference
    /// to the file; use [`Proactor::close`] to release a slot in order with its requests.
    pub fn unregister(&mut self, slot: Slot) -> io::Result<()> {
        self.check_open(slot)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "slot is not registered"))?;
        self.backend.unregister(slot.0)?;
        self.release_slot(slot.0);
        Ok(())
    }

    /// A new descriptor (close-on-exec) for the file in `slot`; the slot stays registered.
    pub fn install_fd(&mut self, slot: Slot) -> io::Result<OwnedFd> {
        self.check_open(slot)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "slot is not registered"))?;
        self.backend.install_fd(slot.0)
    }

    fn alloc_slot(&mut self) -> Option<u32> {
        self.free_slots.pop()
    }

    fn release_slot(&mut self, slot: u32) {
        self.slots[slot as usize] = SlotState::Free;
        self.free_slots.push(slot);
    }

    fn check_open(&self, slot: Slot) -> Result<(), RejectReason> {
        match self.slots.get(slot.0 as usize) {
            Some(SlotState::Open) => Ok(()),
            _ => Err(RejectReason::BadSlot),
        }
    }

    // --------------------------------------------------------------------------------
    // Requests
    // --------------------------------------------------------------------------------

    /// Queues a NOP (lanes taken in turn).
    pub fn nop(&mut self, user_data: u64) -> Result<(), Rejected> {
        let lane = self.next_nop_lane;
        self.next_nop_lane = (lane + 1) % self.lanes;
        self.queue(lane, Sqe::ZERO, user_data, OP_NOP, None, Vec::new())
    }

    /// Queues an ACCEPT on the listening socket `listener`. The completion's
    /// [`Completion::accepted`] is the new connection's slot.
    pub fn accept(&mut self, listener: Slot, user_data: u64) -> Result<(), Rejected> {
        self.accept_with(listener, false, user_data)
    }

    /// ACCEPT whose new socket is non-blocking once installed as a descriptor.
    pub fn accept_with(
        &mut self,
        listener: Slot,
        nonblock: bool,
        user_data: u64,
    ) -> Result<(), Rejected> {
        self.check_open(listener)
            .map_err(|r| reject(r, None, Vec::new()))?;
        let lane = self.lane_of(listener.0);
        if !self.has_room(lane) {
            return Err(reject(RejectReason::Busy, None, Vec::new()));
        }
        let dest = self
            .alloc_slot()
            .ok_or_else(|| reject(RejectReason::NoSlots, None, Vec::new()))?;
        self.slots[dest as usize] = SlotState::Accepting;
        let sqe = Sqe {
            opcode: OP_ACCEPT,
            slot: listener.0,
            aux: dest,
            op_flags: if nonblock { ACCEPT_NONBLOCK } else { 0 },
            ..Sqe::ZERO
        };
        let r = self.queue(lane, sqe, user_data, OP_ACCEPT, None, Vec::new());
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                self.release_slot(dest);
                Err(e)
            }
        }
    }

    /// Queues a RECV into `buf[range]`.
    pub fn recv(
        &mut self,
        slot: Slot,
        buf: Vec<u8>,
        range: Range<usize>,
        user_data: u64,
    ) -> Result<(), Rejected> {
        self.buf_op(OP_RECV, slot, buf, range, 0, user_data)
    }

    /// Queues a SEND of `buf[range]`. The result may be short; send the rest again.
    pub fn send(
        &mut self,
        slot: Slot,
        buf: Vec<u8>,
        range: Range<usize>,
        user_data: u64,
    ) -> Result<(), Rejected> {
        self.buf_op(OP_SEND, slot, buf, range, 0, user_data)
    }

    /// Queues a READ into `buf[range]` at `offset` (`None`: the file position).
    pub fn read(
        &mut self,
        slot: Slot,
        buf: Vec<u8>,
        range: Range<usize>,
        offset: Option<u64>,
        user_data: u64,
    ) -> Result<(), Rejected> {
        self.buf_op(OP_READ, slot, buf, range, off(offset), user_data)
    }

    /// Queues a WRITE of `buf[range]` at `offset` (`None`: the file position).
    pub fn write(
        &mut self,
        slot: Slot,
        buf: Vec<u8>,
        range: Range<usize>,
        offset: Option<u64>,
        user_data: u64,
    ) -> Result<(), Rejected> {
        self.buf_op(OP_WRITE, slot, buf, range, off(offset), user_data)
    }

    /// Queues a WRITEV of every buffer in `bufs` (1 to 1024 of them) at `offset`.
    pub fn writev(
        &mut self,
        slot: Slot,
        bufs: Vec<Vec<u8>>,
        offset: Option<u64>,
        user_data: u64,
    ) -> Result<(), Rejected> {
        if bufs.is_empty() || bufs.len() > fastio_uapi::MAX_IOVECS as usize {
            return Err(reject(RejectReason::BadRange, None, bufs));
        }
        if let Err(r) = self.check_open(slot) {
            return Err(reject(r, None, bufs));
        }
        let iovecs: Vec<IoVec> = bufs
            .iter()
            .map(|b| IoVec {
                base: b.as_ptr() as u64,
                len: b.len() as u64,
            })
            .collect();
        let sqe = Sqe {
            opcode: OP_WRITEV,
            slot: slot.0,
            addr: iovecs.as_ptr() as u64,
            len: iovecs.len() as u32,
            off: off(offset),
            ..Sqe::ZERO
        };
        let lane = self.lane_of(slot.0);
        self.queue_full(lane, sqe, user_data, OP_WRITEV, None, bufs, iovecs)
    }

    /// Queues a CLOSE: the slot is released after every request queued before it on the
    /// slot; requests still waiting for readiness complete with `-ECANCELED`. The slot
    /// can no longer be used once this returns Ok.
    pub fn close(&mut self, slot: Slot, user_data: u64) -> Result<(), Rejected> {
        self.check_open(slot)
            .map_err(|r| reject(r, None, Vec::new()))?;
        let sqe = Sqe {
            opcode: OP_CLOSE,
            slot: slot.0,
            ..Sqe::ZERO
        };
        let lane = self.lane_of(slot.0);
        self.queue(lane, sqe, user_data, OP_CLOSE, None, Vec::new())?;
        self.slots[slot.0 as usize] = SlotState::Closing;
        Ok(())
    }

    /// Queues a request built by hand.
    ///
    /// # Safety
    ///
    /// Every address in `sqe` (`addr`, and for WRITEV the iovec array and every buffer
    /// it names) must stay valid, and not be accessed in a conflicting way, until the
    /// completion with this `user_data` has been returned by [`Proactor::completions`].
    /// The proactor does not track slots used this way: an ACCEPT's `aux` or a CLOSE's
    /// slot bypasses its slot bookkeeping, so use raw requests only on slots you
    /// manage consistently.
    pub unsafe fn submit_raw(&mut self, lane: u32, sqe: Sqe) -> Result<(), Rejected> {
        if lane >= self.lanes {
            return Err(reject(RejectReason::BadRange, None, Vec::new()));
        }
        let ud = sqe.user_data;
        self.queue(lane, sqe, ud, sqe.opcode, None, Vec::new())
    }

    // --------------------------------------------------------------------------------
    // Submission and completion
    // --------------------------------------------------------------------------------

    /// Hands every queued request to the executors (waking sleeping workers).
    pub fn submit(&mut self) -> io::Result<()> {
        if self.staged {
            self.backend.submit()?;
            self.staged = false;
        }
        Ok(())
    }

    /// Submits, then waits until at least `min` completions are ready or `timeout`
    /// passes. `min` is capped at what can still arrive (ready + in flight), so this
    /// never waits for completions that cannot come. Returns the number ready (which is
    /// below `min` only after a timeout). A signal gives `ErrorKind::Interrupted`.
    pub fn wait(&mut self, min: usize, timeout: Option<Duration>) -> io::Result<usize> {
        self.submit()?;
        self.reap();
        let target = min.min(self.ready.len() + self.in_flight());
        let deadline = timeout.map(|t| Instant::now() + t);
        while self.ready.len() < target {
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => break,
                },
                None => None,
            };
            let need = (target - self.ready.len()) as u32;
            self.backend.wait(need, left)?;
            self.reap();
        }
        Ok(self.ready.len())
    }

    /// Moves finished requests from the backend into the ready queue without waiting;
    /// returns how many are ready.
    pub fn reap(&mut self) -> usize {
        let mut got = Vec::new();
        self.backend.reap(&mut |cqe| got.push(cqe));
        for cqe in got {
            self.finish(cqe);
        }
        self.ready.len()
    }

    /// Takes the ready completions, oldest first.
    pub fn completions(&mut self) -> std::collections::vec_deque::Drain<'_, Completion> {
        self.ready.drain(..)
    }

    /// Takes one ready completion.
    pub fn next_completion(&mut self) -> Option<Completion> {
        self.ready.pop_front()
    }

    fn finish(&mut self, cqe: Cqe) {
        let token = cqe.user_data as usize;
        let Some(f) = self.inflight.get_mut(token).and_then(Option::take) else {
            eprintln!(
                "fastio: completion for unknown request {:#x} (result {}) ignored",
                cqe.user_data, cqe.res
            );
            return;
        };
        self.free_tokens.push(token as u32);
        self.lane_inflight[f.lane as usize] -= 1;
        let mut accepted = None;
        match f.opcode {
            OP_ACCEPT if (f.dest as usize) < self.slots.len() => {
                if cqe.res >= 0 {
                    self.slots[f.dest as usize] = SlotState::Open;
                    accepted = Some(Slot(f.dest));
                } else {
                    self.release_slot(f.dest);
                }
            }
            OP_CLOSE if self.slots.get(f.slot as usize) == Some(&SlotState::Closing) => {
                self.release_slot(f.slot);
            }
            _ => {}
        }
        let result = match accepted {
            Some(s) => s.0 as i32,
            None => cqe.res,
        };
        drop(f.iovecs);
        self.ready.push_back(Completion {
            user_data: f.user_data,
            result,
            buf: f.buf,
            bufs: f.bufs,
            accepted,
        });
    }

    fn buf_op(
        &mut self,
        opcode: u8,
        slot: Slot,
        buf: Vec<u8>,
        range: Range<usize>,
        offset: u64,
        user_data: u64,
    ) -> Result<(), Rejected> {
        if range.start > range.end || range.end > buf.len() {
            return Err(reject(RejectReason::BadRange, Some(buf), Vec::new()));
        }
        if let Err(r) = self.check_open(slot) {
            return Err(reject(r, Some(buf), Vec::new()));
        }
        let len = u32::try_from(range.len()).unwrap_or(u32::MAX);
        let sqe = Sqe {
            opcode,
            slot: slot.0,
            // The heap block of a Vec does not move when the Vec is moved into the
            // in-flight table below.
            addr: buf.as_ptr() as u64 + range.start as u64,
            len,
            off: offset,
            ..Sqe::ZERO
        };
        let lane = self.lane_of(slot.0);
        self.queue(lane, sqe, user_data, opcode, Some(buf), Vec::new())
    }

    fn lane_of(&self, slot: u32) -> u32 {
        slot % self.lanes
    }

    fn has_room(&self, lane: u32) -> bool {
        self.lane_inflight[lane as usize] < self.lane_limit
    }

    fn queue(
        &mut self,
        lane: u32,
        sqe: Sqe,
        user_data: u64,
        opcode: u8,
        buf: Option<Vec<u8>>,
        bufs: Vec<Vec<u8>>,
    ) -> Result<(), Rejected> {
        self.queue_full(lane, sqe, user_data, opcode, buf, bufs, Vec::new())
    }

    #[allow(clippy::too_many_arguments)]
    fn queue_full(
        &mut self,
        lane: u32,
        mut sqe: Sqe,
        user_data: u64,
        opcode: u8,
        buf: Option<Vec<u8>>,
        bufs: Vec<Vec<u8>>,
        iovecs: Vec<IoVec>,
    ) -> Result<(), Rejected> {
        if !self.has_room(lane) {
            return Err(reject(RejectReason::Busy, buf, bufs));
        }
        let token = match self.free_tokens.pop() {
            Some(t) => t,
            None => {
                self.inflight.push(None);
                (self.inflight.len() - 1) as u32
            }
        };
        sqe.user_data = token as u64;
        if !self.backend.push(lane, &sqe) {
            self.free_tokens.push(token);
            return Err(reject(RejectReason::Busy, buf, bufs));
        }
        self.inflight[token as usize] = Some(InFlight {
            user_data,
            lane,
            opcode,
            slot: sqe.slot,
            dest: sqe.aux,
            buf,
            bufs,
            iovecs,
        });
        self.lane_inflight[lane as usize] += 1;
        self.staged = true;
        Ok(())
    }
}

fn off(offset: Option<u64>) -> u64 {
    offset.unwrap_or(OFF_CURRENT)
}

impl Drop for Proactor {
    /// Cancels what is in flight and waits up to 2 s for it; buffers of requests that
    /// still did not complete are leaked rather than freed under the executor.
    fn drop(&mut self) {
        if self.in_flight() == 0 {
            return;
        }
        let _ = self.submit();
        let _ = self.backend.cancel_all();
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.in_flight() > 0 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            let need = self.in_flight() as u32;
            if self
                .backend
                .wait(need, Some(left.min(Duration::from_millis(100))))
                .is_err()
            {
                break;
            }
            self.reap();
        }
        if self.in_flight() > 0 && self.choice.kind != crate::config::BackendKind::Threads {
            // The threads backend's workers are joined before its memory goes away, so
            // only the others need to leak what the executor may still touch.
            eprintln!(
                "fastio: {} request(s) still in flight at shutdown; leaking their buffers",
                self.in_flight()
            );
            std::mem::forget(std::mem::take(&mut self.inflight));
        }
    }
}
