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

mod bufs;
mod requests;
mod sysops;
#[cfg(test)]
mod tests;
mod types;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Once;
use std::time::{Duration, Instant};

use fastio_uapi::{
    Cqe, IoVec, CQE_F_MORE, OP_ACCEPT, OP_ASYNC_CANCEL, OP_CLOSE, OP_NOP, OP_OPENAT, OP_SENDFILE,
};

use crate::backend::{self, Backend, Choice};
use crate::config::Config;

pub use self::bufs::{BufGroup, ProvidedBuf};
pub use self::types::{Completion, RejectReason, Rejected, Slot};

/// CQ entries per lane kept back for the runtime's own requests (cancel, install).
const RESERVED_CQES: u32 = 2;

/// State of one slot as the proactor tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Reserved as an ACCEPT's or OPENAT's destination.
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
    origin: Origin,
    slot: u32,
    /// ACCEPT and OPENAT: the destination slot; SENDFILE: the source slot.
    dest: u32,
    /// Whether the slot bookkeeping applies (not a raw request).
    tracked: bool,
    /// CQ entries budgeted for it on its lane.
    cost: u32,
    buf: Option<Vec<u8>>,
    bufs: Vec<Vec<u8>>,
    /// WRITEV: the iovec array the executor reads (points into `bufs`).
    iovecs: Vec<IoVec>,
    /// A RECV into provided buffers: the group.
    group: Option<u16>,
    /// A multishot request (many CQEs; `dest` is the first slot of an ACCEPT's range).
    multishot: bool,
    /// A SEND from a provided buffer: the buffer, handed back in the completion.
    pbuf: Option<ProvidedBuf>,
}

/// Whether a tracked request with `opcode` counts in its slot's in-flight count (every
/// opcode that works on a file, except the CLOSE that waits for the others).
fn counts_on_slot(opcode: u8) -> bool {
    !matches!(opcode, OP_NOP | OP_CLOSE | OP_ASYNC_CANCEL)
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
    /// Tokens that ASYNC_CANCELs in flight name, with how many: such a token is not
    /// reused until those cancels have completed, or a late cancel would hit the new
    /// request that took it over.
    cancel_pins: HashMap<u32, u32>,
    /// Pinned tokens whose own request completed: freed when the last pin goes.
    pinned_free: Vec<u32>,
    /// The target token of each ASYNC_CANCEL in flight, by the cancel's token.
    cancel_targets: HashMap<u32, u32>,
    /// The token `queue_full` gave its last request.
    pub(super) last_token: u32,
    free_slots: Vec<u32>,
    /// Provided-buffer groups, by id.
    groups: HashMap<u16, bufs::GroupState>,
    /// Slot ranges of the armed multishot ACCEPTs.
    accept_ranges: Vec<std::ops::Range<u32>>,
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
            cancel_pins: HashMap::new(),
            pinned_free: Vec::new(),
            cancel_targets: HashMap::new(),
            last_token: 0,
            free_slots: (0..max_files).rev().collect(),
            groups: HashMap::new(),
            accept_ranges: Vec::new(),
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
        if self.in_accept_range(slot) {
            // Back to the armed multishot ACCEPT that may install into it.
            self.slots[slot as usize] = SlotState::Accepting;
            return;
        }
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
    // Submission and completion
    // --------------------------------------------------------------------------------

    /// Hands every queued request to the executors (waking sleeping workers).
    pub fn submit(&mut self) -> io::Result<()> {
        if !self.groups.is_empty() {
            self.return_buffers();
        }
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

    /// Gives `token` back for reuse, unless a cancel in flight still names it.
    fn release_token(&mut self, token: u32) {
        if self.cancel_pins.contains_key(&token) {
            self.pinned_free.push(token);
        } else {
            self.free_tokens.push(token);
        }
    }

    /// Records an ASYNC_CANCEL (token `cancel`) of `target` in flight.
    pub(super) fn pin(&mut self, cancel: u32, target: u32) {
        *self.cancel_pins.entry(target).or_insert(0) += 1;
        self.cancel_targets.insert(cancel, target);
    }

    fn unpin(&mut self, target: u32) {
        if let Some(n) = self.cancel_pins.get_mut(&target) {
            *n -= 1;
            if *n == 0 {
                self.cancel_pins.remove(&target);
                if let Some(i) = self.pinned_free.iter().position(|&t| t == target) {
                    self.pinned_free.swap_remove(i);
                    self.free_tokens.push(target);
                }
            }
        }
    }

    /// A CQE with `CQE_F_MORE`: the multishot request stays in flight.
    fn finish_more(&mut self, cqe: Cqe) {
        let Some(f) = self
            .inflight
            .get(cqe.user_data as usize)
            .and_then(Option::as_ref)
        else {
            eprintln!(
                "fastio: completion for unknown request {:#x} (result {}) ignored",
                cqe.user_data, cqe.res
            );
            return;
        };
        let (user_data, group, accept) = (f.user_data, f.group, f.opcode == OP_ACCEPT && f.tracked);
        let provided = group.and_then(|g| self.take_provided(g, cqe.res, cqe.flags));
        let accepted = if accept {
            self.accept_landed(cqe.res)
        } else {
            None
        };
        self.ready.push_back(Completion {
            user_data,
            result: cqe.res,
            buf: None,
            bufs: Vec::new(),
            accepted,
            provided,
            more: true,
            flags: cqe.flags,
        });
    }

    /// A multishot ACCEPT installed a connection into `res` (if it is a slot of an armed
    /// range waiting for one): the slot is open now.
    fn accept_landed(&mut self, res: i32) -> Option<Slot> {
        let slot = u32::try_from(res).ok()?;
        if self.slots.get(slot as usize) != Some(&SlotState::Accepting)
            || !self.in_accept_range(slot)
        {
            return None;
        }
        self.slots[slot as usize] = SlotState::Open;
        Some(Slot(slot))
    }

    fn finish(&mut self, cqe: Cqe) {
        if cqe.flags & CQE_F_MORE != 0 {
            return self.finish_more(cqe);
        }
        let token = cqe.user_data as usize;
        let Some(f) = self.inflight.get_mut(token).and_then(Option::take) else {
            eprintln!(
                "fastio: completion for unknown request {:#x} (result {}) ignored",
                cqe.user_data, cqe.res
            );
            return;
        };
        self.release_token(token as u32);
        if f.opcode == OP_ASYNC_CANCEL {
            if let Some(target) = self.cancel_targets.remove(&(token as u32)) {
                self.unpin(target);
            }
        }
        self.lane_inflight[f.lane as usize] -= f.cost;
        self.pending -= 1;
        let mut accepted = None;
        let provided = match f.group {
            Some(g) => {
                let b = self.take_provided(g, cqe.res, cqe.flags);
                self.group_user_done(g);
                b
            }
            None => f.pbuf,
        };
        if f.tracked && f.multishot && f.opcode == OP_ACCEPT {
            accepted = self.accept_landed(cqe.res);
            self.accept_range_done(f.dest);
        }
        let installs = matches!(f.opcode, OP_ACCEPT | OP_OPENAT) && !f.multishot;
        if f.tracked && installs && (f.dest as usize) < self.slots.len() {
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
            provided,
            more: false,
            flags: cqe.flags,
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
            if f.opcode == OP_SENDFILE {
                self.slot_request_done(f.dest);
            }
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
            self.leak_groups();
        }
    }
}
