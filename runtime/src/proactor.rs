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
//! executor (a `fastio.ko` lane thread, io_uring, a worker thread) writes into or reads from the
//! buffer while the caller has no access to it, so a buffer can be neither freed, moved
//! nor reused while an operation owns it, and no `unsafe` is needed to use the API.
//! A request that cannot be queued hands its buffer back in [`Rejected`]. If the
//! proactor is dropped with requests in flight, it cancels them (backends that cannot
//! cancel everything at once get a CLOSE for each slot with requests in flight) and waits
//! (bounded) for their completions; buffers whose requests never complete are leaked,
//! never freed under the executor. [`Proactor::submit_raw`] is the `unsafe` escape hatch for callers
//! that manage memory themselves.
//!
//! # Limits
//!
//! Requests are spread over lanes by file slot (`slot % lanes`), so the requests of one
//! connection are issued in order. A lane never has more requests in flight than its
//! CQ has entries (minus two reserved for the runtime's own requests), so completions
//! are never dropped: a request beyond that, or beyond a full SQ, is [`Rejected`] with
//! [`RejectReason::Busy`]; reap completions and try again. A CLOSE counts for as many
//! CQ entries as the backend posts for it (two on `uring`: the close and the cancel of
//! the requests waiting on the file).
//!
//! # Slots
//!
//! A slot is never reused while requests issued through this API are in flight on it:
//! [`Proactor::unregister`] of a busy slot leaves it draining until its last request
//! completes, and a [`Proactor::close`] releases the slot (and reports its completion)
//! only after every other request on the slot has completed, so a CLOSE's completion
//! always comes after the `-ECANCELED` completions of the requests it cancelled.

use std::collections::{HashMap, VecDeque};
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
    /// A CLOSE is in flight (or its completion is held until the slot's other requests
    /// have completed); freed then.
    Closing,
    /// Unregistered while requests were in flight on it; freed when the last completes.
    Draining,
}

/// Where a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// The safe API: slot bookkeeping applies.
    Api,
    /// [`Proactor::submit_raw`]: no slot bookkeeping.
    Raw,
    /// The proactor's own shutdown CLOSEs: like `Raw`, and may use the reserved CQEs.
    Shutdown,
}

/// What an in-flight request owns.
struct InFlight {
    user_data: u64,
    lane: u32,
    opcode: u8,
    slot: u32,
    /// ACCEPT: the destination slot.
    dest: u32,
    /// Whether the slot bookkeeping applies (not a raw request).
    tracked: bool,
    /// CQ entries budgeted for it on its lane.
    cost: u32,
    buf: Option<Vec<u8>>,
    bufs: Vec<Vec<u8>>,
    /// WRITEV: the iovec array the executor reads (points into `bufs`).
    iovecs: Vec<IoVec>,
}

/// Whether a tracked request with `opcode` counts in its slot's in-flight count (every
/// opcode that works on a file, except the CLOSE that waits for the others).
fn counts_on_slot(opcode: u8) -> bool {
    !matches!(opcode, OP_NOP | OP_CLOSE)
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
    /// CQ entries budgeted per lane (a CLOSE may count for more than one).
    lane_inflight: Vec<u32>,
    /// Requests handed to the backend whose CQE has not been reaped.
    pending: usize,
    inflight: Vec<Option<InFlight>>,
    free_tokens: Vec<u32>,
    slots: Vec<SlotState>,
    /// Per slot: tracked requests (other than CLOSE) in flight on it.
    slot_inflight: Vec<u32>,
    /// CLOSE completions held until the other requests on their slot have completed.
    held_closes: HashMap<u32, Completion>,
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
        Ok(Self::with_backend(backend, choice, config.max_files))
    }

    fn with_backend(backend: Box<dyn Backend>, choice: Choice, max_files: u32) -> Self {
        let lanes = backend.lanes();
        let lane_limit = backend.lane_capacity().saturating_sub(RESERVED_CQES).max(1);
        Proactor {
            backend,
            choice,
            lanes,
            lane_limit,
            lane_inflight: vec![0; lanes as usize],
            pending: 0,
            inflight: Vec::new(),
            free_tokens: Vec::new(),
            slots: vec![SlotState::Free; max_files as usize],
            slot_inflight: vec![0; max_files as usize],
            held_closes: HashMap::new(),
            free_slots: (0..max_files).rev().collect(),
            ready: VecDeque::new(),
            next_nop_lane: 0,
            staged: false,
        }
    }

    /// The backend in use and why it was chosen.
    pub fn backend(&self) -> &Choice {
        &self.choice
    }

    /// Number of lanes.
    pub fn lanes(&self) -> u32 {
        self.lanes
    }

    /// Requests that may be in flight on one lane (a CLOSE counts for as many CQ entries
    /// as the backend posts for it: two on `uring`).
    pub fn lane_limit(&self) -> u32 {
        self.lane_limit
    }

    /// Requests queued or executing, whose completions are not ready yet (a CLOSE whose
    /// completion waits for the other requests on its slot counts too).
    pub fn in_flight(&self) -> usize {
        self.pending + self.held_closes.len()
    }

    /// Whether the worker of `lane` is asleep with NEED_WAKEUP set (None for backends
    /// without such a flag). For diagnostics and tests.
    pub fn lane_asleep(&self, lane: u32) -> Option<bool> {
        self.backend.lane_asleep(lane)
    }

    /// The kernel module's counters of this context (`FASTIO_GET_STATS`: requests
    /// taken, parked for readiness, woken, offloaded to a helper thread, waiting
    /// now). None on backends other than `kmod`. For diagnostics and tests.
    pub fn kernel_stats(&self) -> Option<io::Result<fastio_uapi::Stats>> {
        self.backend.kernel_stats()
    }

    // --------------------------------------------------------------------------------
    // Files
    // --------------------------------------------------------------------------------

    /// Registers a file: the backend takes its own reference (the caller may close its
    /// descriptor afterwards). Returns the slot to use in requests.
    ///
    /// On the `threads` backend, sockets, pipes and other pollable files are switched to
    /// non-blocking mode (`O_NONBLOCK`). That flag belongs to the open file description,
    /// so the caller's descriptor, and any descriptor later made by
    /// [`Proactor::install_fd`], is non-blocking too: a program that keeps using its own
    /// descriptor with blocking calls gets `EAGAIN` (`ErrorKind::WouldBlock`) instead.
    /// The other backends leave the file's flags alone.
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
    /// to the file and complete as usual; the slot number is not handed out again (by
    /// [`Proactor::register`] or an ACCEPT) until the last of them has completed. Use
    /// [`Proactor::close`] to release a slot in order with its requests.
    pub fn unregister(&mut self, slot: Slot) -> io::Result<()> {
        self.check_open(slot)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "slot is not registered"))?;
        self.backend.unregister(slot.0)?;
        if self.slot_inflight[slot.0 as usize] > 0 {
            self.slots[slot.0 as usize] = SlotState::Draining;
        } else {
            self.release_slot(slot.0);
        }
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
        self.queue(lane, Sqe::ZERO, user_data, None, Vec::new())
    }

    /// Queues an ACCEPT on the listening socket `listener`. The completion's
    /// [`Completion::accepted`] is the new connection's slot.
    pub fn accept(&mut self, listener: Slot, user_data: u64) -> Result<(), Rejected> {
        self.accept_with(listener, false, user_data)
    }

    /// ACCEPT whose new socket is non-blocking once installed as a descriptor.
    ///
    /// `nonblock` is honoured by the `kmod` and `uring` backends. On the `threads`
    /// backend every accepted socket is non-blocking whatever `nonblock` says: its
    /// worker threads must never block, and `O_NONBLOCK` belongs to the open file
    /// description, which a descriptor made by [`Proactor::install_fd`] shares (see
    /// [`Proactor::register`]).
    pub fn accept_with(
        &mut self,
        listener: Slot,
        nonblock: bool,
        user_data: u64,
    ) -> Result<(), Rejected> {
        self.check_open(listener)
            .map_err(|r| reject(r, None, Vec::new()))?;
        let lane = self.lane_of(listener.0);
        if !self.has_room(lane, 1, Origin::Api) {
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
        let r = self.queue(lane, sqe, user_data, None, Vec::new());
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
        self.queue_full(lane, sqe, user_data, None, bufs, iovecs, Origin::Api)
    }

    /// Queues a CLOSE: the slot is released after every request queued before it on the
    /// slot; requests still waiting for readiness complete with `-ECANCELED`. The
    /// CLOSE's completion comes after the completions of every other request on the slot,
    /// and the slot is free for reuse from then on. The slot can no longer be used in
    /// requests once this returns Ok.
    pub fn close(&mut self, slot: Slot, user_data: u64) -> Result<(), Rejected> {
        self.check_open(slot)
            .map_err(|r| reject(r, None, Vec::new()))?;
        let sqe = Sqe {
            opcode: OP_CLOSE,
            slot: slot.0,
            ..Sqe::ZERO
        };
        let lane = self.lane_of(slot.0);
        self.queue(lane, sqe, user_data, None, Vec::new())?;
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
    /// slot bypasses its slot bookkeeping (the completion is handed back as is, with no
    /// [`Completion::accepted`]), and raw requests do not keep a slot from being
    /// reused, so use raw requests only on slots you manage consistently.
    pub unsafe fn submit_raw(&mut self, lane: u32, sqe: Sqe) -> Result<(), Rejected> {
        if lane >= self.lanes {
            return Err(reject(RejectReason::BadRange, None, Vec::new()));
        }
        let ud = sqe.user_data;
        self.queue_full(lane, sqe, ud, None, Vec::new(), Vec::new(), Origin::Raw)
    }

    // --------------------------------------------------------------------------------
    // Submission and completion
    // --------------------------------------------------------------------------------

    /// Hands every queued request to the executors (waking sleeping workers).
    pub fn submit(&mut self) -> io::Result<()> {
        if self.staged {
            self.backend.submit()?;
            // A backend whose executor had no room (io_uring's EBUSY) keeps the rest for
            // the next submit.
            self.staged = self.backend.has_unsubmitted();
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
        // The clock is read only when the call really waits (a clock_gettime can be a
        // real system call, e.g. in a VM without a vDSO clock source).
        let mut deadline: Option<Instant> = None;
        while self.ready.len() < target {
            let left = match (timeout, deadline) {
                (None, _) => None,
                (Some(t), None) => {
                    deadline = Some(Instant::now() + t);
                    Some(t)
                }
                (Some(_), Some(d)) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => break,
                },
            };
            if left.is_some_and(|l| l.is_zero()) {
                break;
            }
            // Held CLOSE completions become ready without a CQE of their own, when the
            // last other request on their slot completes: wait for no more CQEs than
            // can come (`pending` is at least 1 here, since a held CLOSE implies one).
            let need = (target - self.ready.len()).min(self.pending.max(1)) as u32;
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
        self.lane_inflight[f.lane as usize] -= f.cost;
        self.pending -= 1;
        let mut accepted = None;
        if f.tracked && f.opcode == OP_ACCEPT && (f.dest as usize) < self.slots.len() {
            if cqe.res >= 0 {
                self.slots[f.dest as usize] = SlotState::Open;
                accepted = Some(Slot(f.dest));
            } else {
                self.release_slot(f.dest);
            }
        }
        let result = match accepted {
            Some(s) => s.0 as i32,
            None => cqe.res,
        };
        drop(f.iovecs);
        let completion = Completion {
            user_data: f.user_data,
            result,
            buf: f.buf,
            bufs: f.bufs,
            accepted,
        };
        if !f.tracked {
            self.ready.push_back(completion);
            return;
        }
        if f.opcode == OP_CLOSE {
            if self
                .slot_inflight
                .get(f.slot as usize)
                .is_some_and(|&n| n > 0)
            {
                // Requests on the slot are still to complete (io_uring posts the CLOSE
                // before the -ECANCELED of what it cancelled): the CLOSE comes last.
                self.held_closes.insert(f.slot, completion);
            } else {
                self.ready.push_back(completion);
                if self.slots.get(f.slot as usize) == Some(&SlotState::Closing) {
                    self.release_slot(f.slot);
                }
            }
            return;
        }
        self.ready.push_back(completion);
        if counts_on_slot(f.opcode) {
            self.slot_request_done(f.slot);
        }
    }

    /// A tracked request on `slot` has completed: a draining slot becomes free, and a
    /// held CLOSE completion is released (and its slot freed) with its last request.
    fn slot_request_done(&mut self, slot: u32) {
        let Some(n) = self.slot_inflight.get_mut(slot as usize) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        match self.slots[slot as usize] {
            SlotState::Draining => self.release_slot(slot),
            SlotState::Closing => {
                if let Some(c) = self.held_closes.remove(&slot) {
                    self.ready.push_back(c);
                    self.release_slot(slot);
                }
            }
            _ => {}
        }
    }

    fn buf_op(
        &mut self,
        opcode: u8,
        slot: Slot,
        mut buf: Vec<u8>,
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
        // The heap block of a Vec does not move when the Vec is moved into the in-flight
        // table below. The executor writes through the address of a RECV or READ, so
        // that one must come from `as_mut_ptr`.
        let base = match opcode {
            OP_RECV | OP_READ => buf.as_mut_ptr() as u64,
            _ => buf.as_ptr() as u64,
        };
        let sqe = Sqe {
            opcode,
            slot: slot.0,
            addr: base + range.start as u64,
            len,
            off: offset,
            ..Sqe::ZERO
        };
        let lane = self.lane_of(slot.0);
        self.queue(lane, sqe, user_data, Some(buf), Vec::new())
    }

    fn lane_of(&self, slot: u32) -> u32 {
        slot % self.lanes
    }

    /// CQ entries a request with `opcode` may make its lane's executor post.
    fn cost(&self, opcode: u8) -> u32 {
        if opcode == OP_CLOSE {
            self.backend.close_cost()
        } else {
            1
        }
    }

    /// Whether `lane` has CQ room for a request of `cost` entries. The proactor's own
    /// shutdown requests may use the entries reserved for the runtime.
    fn has_room(&self, lane: u32, cost: u32, origin: Origin) -> bool {
        let limit = match origin {
            Origin::Shutdown => self.backend.lane_capacity(),
            // A request costing more than the limit still fits on an otherwise idle lane.
            _ => self.lane_limit.max(cost),
        };
        self.lane_inflight[lane as usize] + cost <= limit
    }

    fn queue(
        &mut self,
        lane: u32,
        sqe: Sqe,
        user_data: u64,
        buf: Option<Vec<u8>>,
        bufs: Vec<Vec<u8>>,
    ) -> Result<(), Rejected> {
        self.queue_full(lane, sqe, user_data, buf, bufs, Vec::new(), Origin::Api)
    }

    #[allow(clippy::too_many_arguments)]
    fn queue_full(
        &mut self,
        lane: u32,
        mut sqe: Sqe,
        user_data: u64,
        buf: Option<Vec<u8>>,
        bufs: Vec<Vec<u8>>,
        iovecs: Vec<IoVec>,
        origin: Origin,
    ) -> Result<(), Rejected> {
        let opcode = sqe.opcode;
        let cost = self.cost(opcode);
        if !self.has_room(lane, cost, origin) {
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
        let tracked = origin == Origin::Api;
        self.inflight[token as usize] = Some(InFlight {
            user_data,
            lane,
            opcode,
            slot: sqe.slot,
            dest: sqe.aux,
            tracked,
            cost,
            buf,
            bufs,
            iovecs,
        });
        if tracked && counts_on_slot(opcode) {
            self.slot_inflight[sqe.slot as usize] += 1;
        }
        self.lane_inflight[lane as usize] += cost;
        self.pending += 1;
        self.staged = true;
        Ok(())
    }

    /// Shutdown: queues a CLOSE of `slot` (which cancels what waits on it on every
    /// backend); false when its lane has no room yet.
    fn queue_shutdown_close(&mut self, slot: u32) -> bool {
        let sqe = Sqe {
            opcode: OP_CLOSE,
            slot,
            ..Sqe::ZERO
        };
        let lane = self.lane_of(slot);
        let r = self.queue_full(
            lane,
            sqe,
            u64::MAX,
            None,
            Vec::new(),
            Vec::new(),
            Origin::Shutdown,
        );
        r.is_ok()
    }
}

fn off(offset: Option<u64>) -> u64 {
    offset.unwrap_or(OFF_CURRENT)
}

impl Drop for Proactor {
    /// Cancels what is in flight and waits up to 2 s for it; buffers of requests that
    /// still did not complete are leaked rather than freed under the executor.
    fn drop(&mut self) {
        if self.pending == 0 {
            return;
        }
        let _ = self.submit();
        // A backend that cannot cancel everything at once gets a CLOSE for every slot
        // with requests in flight: CLOSE cancels what waits on its slot on every
        // backend, and the slots are about to go away anyway.
        let mut to_close: Vec<u32> = match self.backend.cancel_all() {
            Ok(true) => Vec::new(),
            Ok(false) | Err(_) => (0..self.slots.len() as u32)
                .filter(|&s| {
                    self.slot_inflight[s as usize] > 0
                        && matches!(
                            self.slots[s as usize],
                            SlotState::Open | SlotState::Draining
                        )
                })
                .collect(),
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.pending > 0 {
            if !to_close.is_empty() {
                to_close.retain(|&s| !self.queue_shutdown_close(s));
                let _ = self.submit();
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            let need = self.pending as u32;
            if self
                .backend
                .wait(need, Some(left.min(Duration::from_millis(100))))
                .is_err()
            {
                break;
            }
            self.reap();
        }
        if self.pending > 0 && self.choice.kind != crate::config::BackendKind::Threads {
            // The threads backend's workers are joined before its memory goes away, so
            // only the others need to leak what the executor may still touch.
            eprintln!(
                "fastio: {} request(s) still in flight at shutdown; leaking their buffers",
                self.pending
            );
            std::mem::forget(std::mem::take(&mut self.inflight));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendKind;
    use std::os::fd::BorrowedFd;
    use std::sync::{Arc, Mutex};

    /// What the mock executor has been given, and what it will complete.
    #[derive(Default)]
    struct MockState {
        staged: Vec<Sqe>,
        submitted: Vec<Sqe>,
        cq: VecDeque<Cqe>,
        submits: u32,
        /// Entries one submit hands over (None: all), like io_uring after EBUSY.
        per_submit: Option<usize>,
    }

    /// A one-lane backend driven by the test.
    struct Mock {
        st: Arc<Mutex<MockState>>,
        capacity: u32,
        close_cost: u32,
    }

    impl Backend for Mock {
        fn lanes(&self) -> u32 {
            1
        }
        fn lane_capacity(&self) -> u32 {
            self.capacity
        }
        fn register(&mut self, _slot: u32, _fd: BorrowedFd<'_>) -> io::Result<()> {
            Ok(())
        }
        fn unregister(&mut self, _slot: u32) -> io::Result<()> {
            Ok(())
        }
        fn install_fd(&mut self, _slot: u32) -> io::Result<OwnedFd> {
            Err(io::ErrorKind::Unsupported.into())
        }
        fn push(&mut self, _lane: u32, sqe: &Sqe) -> bool {
            self.st
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .staged
                .push(*sqe);
            true
        }
        fn submit(&mut self) -> io::Result<()> {
            let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
            st.submits += 1;
            let n = st.per_submit.unwrap_or(usize::MAX).min(st.staged.len());
            let taken: Vec<Sqe> = st.staged.drain(..n).collect();
            st.submitted.extend(taken);
            Ok(())
        }
        fn has_unsubmitted(&mut self) -> bool {
            !self
                .st
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .staged
                .is_empty()
        }
        fn close_cost(&self) -> u32 {
            self.close_cost
        }
        fn reap(&mut self, f: &mut dyn FnMut(Cqe)) -> usize {
            let got: Vec<Cqe> = self
                .st
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cq
                .drain(..)
                .collect();
            got.iter().for_each(|&c| f(c));
            got.len()
        }
        fn wait(&mut self, _min: u32, _timeout: Option<Duration>) -> io::Result<()> {
            Ok(())
        }
        fn cancel_all(&mut self) -> io::Result<bool> {
            let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
            let st = &mut *st;
            for sqe in st.staged.drain(..).chain(st.submitted.drain(..)) {
                st.cq.push_back(Cqe {
                    user_data: sqe.user_data,
                    res: -libc::ECANCELED,
                    flags: 0,
                });
            }
            Ok(true)
        }
        fn lane_asleep(&self, _lane: u32) -> Option<bool> {
            None
        }
    }

    fn mock(capacity: u32, close_cost: u32) -> (Proactor, Arc<Mutex<MockState>>) {
        let st = Arc::new(Mutex::new(MockState::default()));
        let backend = Mock {
            st: Arc::clone(&st),
            capacity,
            close_cost,
        };
        let choice = Choice {
            kind: BackendKind::Threads,
            sqpoll: false,
            reason: "mock".into(),
        };
        (Proactor::with_backend(Box::new(backend), choice, 16), st)
    }

    fn null() -> std::fs::File {
        std::fs::File::open("/dev/null").unwrap()
    }

    /// The token the proactor gave the oldest uncompleted request with `opcode`.
    fn token(st: &Mutex<MockState>, opcode: u8) -> u64 {
        let st = st.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = st.staged.iter().chain(&st.submitted);
        all.find(|s| s.opcode == opcode)
            .expect("request pushed")
            .user_data
    }

    /// Completes the request `user_data` with `res`.
    fn post(st: &Mutex<MockState>, user_data: u64, res: i32) {
        let mut st = st.lock().unwrap_or_else(|e| e.into_inner());
        st.staged.retain(|s| s.user_data != user_data);
        st.submitted.retain(|s| s.user_data != user_data);
        st.cq.push_back(Cqe {
            user_data,
            res,
            flags: 0,
        });
    }

    /// A CLOSE whose CQE arrives before the cancelled RECV's (io_uring's order) is held
    /// back: it is reported after the RECV, and its slot is freed only then.
    #[test]
    fn close_completion_waits_for_the_requests_on_its_slot() {
        let (mut p, st) = mock(16, 2);
        let f = null();
        let slot = p.register(&f).unwrap();
        p.recv(slot, vec![0; 4], 0..4, 1).unwrap();
        p.close(slot, 2).unwrap();
        p.submit().unwrap();
        post(&st, token(&st, OP_CLOSE), 0);
        assert_eq!(p.reap(), 0, "the CLOSE must wait for the RECV");
        assert_eq!(p.in_flight(), 2);
        let other = p.register(&f).unwrap();
        assert_ne!(other, slot, "slot freed before its CLOSE was reported");
        post(&st, token(&st, OP_RECV), -libc::ECANCELED);
        assert_eq!(p.reap(), 2);
        let got: Vec<(u64, i32)> = p.completions().map(|c| (c.user_data, c.result)).collect();
        assert_eq!(got, vec![(1, -libc::ECANCELED), (2, 0)]);
        assert_eq!(p.in_flight(), 0);
        // wait() never waits for a CQE the held CLOSE will not get.
        assert_eq!(p.wait(5, None).unwrap(), 0);
        assert_eq!(p.register(&f).unwrap(), slot, "slot free after the CLOSE");
    }

    /// A CLOSE counts for the backend's `close_cost` CQ entries until it completes.
    #[test]
    fn a_close_counts_as_its_backends_cq_cost() {
        let (mut p, st) = mock(8, 2);
        assert_eq!(p.lane_limit(), 6);
        let f = null();
        let slots: Vec<Slot> = (0..6).map(|_| p.register(&f).unwrap()).collect();
        let mut closed = 0;
        for (i, &s) in slots.iter().enumerate() {
            match p.close(s, i as u64) {
                Ok(()) => closed += 1,
                Err(r) => {
                    assert_eq!(r.reason, RejectReason::Busy);
                    break;
                }
            }
        }
        assert_eq!(closed, 3, "3 CLOSEs of 2 CQEs fill a limit of 6");
        p.submit().unwrap();
        for _ in 0..closed {
            post(&st, token(&st, OP_CLOSE), 0);
        }
        assert_eq!(p.reap(), closed);
        assert_eq!(p.in_flight(), 0);
        for i in 0..6 {
            p.nop(100 + i).unwrap();
        }
        assert_eq!(p.nop(200).unwrap_err().reason, RejectReason::Busy);
    }

    /// Requests the backend could not hand over (io_uring's EBUSY) stay staged: the next
    /// submit tries again.
    #[test]
    fn unsubmitted_requests_stay_staged() {
        let (mut p, st) = mock(16, 1);
        st.lock().unwrap_or_else(|e| e.into_inner()).per_submit = Some(1);
        for i in 0..3 {
            p.nop(i).unwrap();
        }
        for _ in 0..3 {
            p.submit().unwrap();
        }
        let st = st.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!((st.submitted.len(), st.submits), (3, 3));
    }
}
