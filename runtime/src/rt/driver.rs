//! The driver: one [`Proactor`] with the runtime's bookkeeping around it.
//!
//! - Every operation of a future is an entry in `ops`, addressed by its user_data
//!   (index and generation). A request the proactor refuses as Busy waits in `busy`, in
//!   order, and is queued again after the next reap: no caller ever sees Busy, and a
//!   later request never overtakes an earlier refused one.
//! - A future dropped while its request is in flight leaves its buffer (`orphan`) here
//!   and an ASYNC_CANCEL goes out; the buffer is freed only when the request's own
//!   completion arrives, so the executor never writes into freed memory.
//! - Timers are deadlines in a `BTreeMap`; the earliest one bounds the proactor's wait.
//! - One READ of the runtime's eventfd is always in flight, so a wakeup from another
//!   thread (a waker, the [`super::Handle`]) ends a wait.

use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::OwnedFd;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use fastio_uapi::MAX_RW_LEN;

use crate::proactor::{BufGroup, Completion, Proactor, ProvidedBuf, RejectReason, Rejected, Slot};

/// user_data of the runtime's own requests: the top bit, never set on an op's.
const INTERNAL: u64 = 1 << 63;
/// The completion of a cancel the runtime sent for a dropped future.
const UD_CANCEL: u64 = INTERNAL | 1;
/// The completion of a CLOSE of a dropped I/O object's slot.
const UD_CLOSE: u64 = INTERNAL | 2;
/// The completion of the eventfd READ.
const UD_WAKE: u64 = INTERNAL | 3;

/// A request as the runtime keeps it until the proactor takes it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Req {
    /// ACCEPT on a listener.
    Accept { listener: Slot },
    /// RECV, SEND, READ or WRITE of memory the op's owner keeps alive.
    Io {
        opcode: u8,
        slot: Slot,
        addr: u64,
        len: u32,
        offset: Option<u64>,
    },
    /// CLOSE, awaited.
    Close { slot: Slot },
    /// NOP: a round trip through the rings.
    Nop,
    /// OPENAT of the NUL-terminated path at `path` (memory the op's owner keeps alive).
    OpenAt {
        dir: Option<Slot>,
        path: u64,
        flags: i32,
        mode: u32,
    },
    /// FSYNC of the whole file.
    Fsync { slot: Slot, datasync: bool },
    /// FALLOCATE.
    Fallocate {
        slot: Slot,
        mode: u32,
        offset: u64,
        len: u64,
    },
    /// SHUTDOWN of a socket.
    Shutdown { slot: Slot, how: std::net::Shutdown },
    /// CONNECT of a socket.
    Connect {
        slot: Slot,
        addr: std::net::SocketAddr,
    },
    /// SENDFILE of `len` bytes of the file in `src` to the socket in `slot`.
    Sendfile {
        slot: Slot,
        src: Slot,
        offset: Option<u64>,
        len: u32,
    },
    /// RECV into a buffer of a provided-buffer group (the completion carries it).
    RecvProvided { slot: Slot, group: BufGroup },
}

/// What a completed operation reports.
#[derive(Debug)]
pub(crate) struct OpResult {
    /// The CQE's result (negative errno on error).
    pub(crate) res: i32,
    /// ACCEPT and OPENAT: the new slot.
    pub(crate) accepted: Option<Slot>,
    /// A RECV into a provided-buffer group: the buffer it filled.
    pub(crate) provided: Option<ProvidedBuf>,
}

impl OpResult {
    pub(crate) fn io(&self) -> io::Result<usize> {
        if self.res >= 0 {
            Ok(self.res as usize)
        } else {
            Err(io::Error::from_raw_os_error(-self.res))
        }
    }
}

enum State {
    /// Refused as Busy: waits in `busy`.
    Queued(Req),
    InFlight,
    Done(OpResult),
}

struct OpEntry {
    gen: u32,
    state: State,
    waker: Option<Waker>,
    /// The future was dropped while the request was in flight: what it owned (its
    /// buffer), freed when the completion arrives.
    orphan: Option<Box<dyn Any>>,
    orphaned: bool,
}

/// What waits in `busy` for room on its lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queued {
    Op(u64),
    Cancel(u64),
    Close(Slot),
}

pub(crate) struct Driver {
    p: Proactor,
    ops: Vec<Option<OpEntry>>,
    free: Vec<u32>,
    next_gen: u32,
    busy: VecDeque<Queued>,
    timers: BTreeMap<(Instant, u64), Waker>,
    timer_seq: u64,
    /// The eventfd's slot and the 8 bytes its READ fills (boxed: the address is stable).
    wake_slot: Slot,
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
    /// Set by `shutdown`: no more eventfd READs.
    shutting_down: bool,
    /// Orphans whose requests completed, for the runtime to drop outside the driver.
    graveyard: Vec<Box<dyn Any>>,
}

fn errno_of(r: &Rejected) -> i32 {
    match r.reason {
        RejectReason::Busy => libc::EAGAIN,
        RejectReason::BadSlot => libc::EBADF,
        RejectReason::BadRange => libc::EINVAL,
        RejectReason::NoSlots => libc::ENFILE,
    }
}

impl Driver {
    pub(crate) fn new(mut p: Proactor, wake_fd: &OwnedFd) -> io::Result<Self> {
        let wake_slot = p.register(wake_fd)?;
        let mut d = Driver {
            p,
            ops: Vec::new(),
            free: Vec::new(),
            next_gen: 1,
            busy: VecDeque::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            wake_slot,
            wake_buf: Box::new([0; 8]),
            wake_armed: false,
            shutting_down: false,
            graveyard: Vec::new(),
        };
        d.arm_wake();
        Ok(d)
    }

    pub(crate) fn proactor(&self) -> &Proactor {
        &self.p
    }

    pub(crate) fn proactor_mut(&mut self) -> &mut Proactor {
        &mut self.p
    }

    fn arm_wake(&mut self) {
        if self.wake_armed || self.shutting_down {
            return;
        }
        let addr = self.wake_buf.as_mut_ptr() as u64;
        // SAFETY: `wake_buf` is a heap block owned by the driver, which outlives every
        // request: the driver's drop waits for the READ's completion (or leaks the
        // block, see `shutdown`).
        let r = unsafe {
            self.p
                .queue_at(fastio_uapi::OP_READ, self.wake_slot, addr, 8, None, UD_WAKE)
        };
        // Busy: armed again after the next reap.
        self.wake_armed = r.is_ok();
    }

    // ------------------------------------------------------------------------------
    // Operations
    // ------------------------------------------------------------------------------

    /// Starts `req`; returns its user_data.
    pub(crate) fn start(&mut self, req: Req) -> u64 {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.ops.push(None);
                (self.ops.len() - 1) as u32
            }
        };
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1) & 0x7fff_ffff;
        let ud = (gen as u64) << 32 | idx as u64;
        self.ops[idx as usize] = Some(OpEntry {
            gen,
            state: State::Queued(req),
            waker: None,
            orphan: None,
            orphaned: false,
        });
        if self.busy.is_empty() {
            if !self.issue(ud) {
                self.busy.push_back(Queued::Op(ud));
            }
        } else {
            // Behind earlier refused requests: keeps every connection's order.
            self.busy.push_back(Queued::Op(ud));
        }
        ud
    }

    fn entry(&mut self, ud: u64) -> Option<&mut OpEntry> {
        let e = self.ops.get_mut((ud & 0xffff_ffff) as usize)?.as_mut()?;
        (e.gen as u64 == ud >> 32).then_some(e)
    }

    fn free_entry(&mut self, ud: u64) -> Option<OpEntry> {
        let idx = (ud & 0xffff_ffff) as usize;
        let e = self.ops.get_mut(idx)?.take()?;
        self.free.push(idx as u32);
        Some(e)
    }

    /// Hands a queued op to the proactor; false when its lane is busy.
    fn issue(&mut self, ud: u64) -> bool {
        let Some(e) = self.entry(ud) else {
            return true;
        };
        let State::Queued(req) = e.state else {
            return true;
        };
        let r = match req {
            Req::Accept { listener } => self.p.accept(listener, ud),
            Req::Close { slot } => self.p.close(slot, ud),
            Req::Nop => self.p.nop(ud),
            Req::OpenAt {
                dir,
                path,
                flags,
                mode,
            } => {
                // SAFETY: `path` points to a NUL-terminated string the op's future (or its
                // orphan) owns until the completion; the proactor copies it.
                let path = unsafe { std::ffi::CStr::from_ptr(path as *const libc::c_char) };
                self.p.openat(dir, path, flags, mode, ud)
            }
            Req::Fsync { slot, datasync } => self.p.fsync(slot, datasync, ud),
            Req::Fallocate {
                slot,
                mode,
                offset,
                len,
            } => self.p.fallocate(slot, mode, offset, len, ud),
            Req::Shutdown { slot, how } => self.p.shutdown_socket(slot, how, ud),
            Req::Connect { slot, addr } => self.p.connect(slot, addr, ud),
            Req::Sendfile {
                slot,
                src,
                offset,
                len,
            } => self.p.sendfile(slot, src, offset, len.min(MAX_RW_LEN), ud),
            Req::RecvProvided { slot, group } => self.p.recv_provided(slot, group, ud),
            Req::Io {
                opcode,
                slot,
                addr,
                len,
                offset,
            } => {
                // SAFETY: the memory belongs to the op's future, or to `orphan` once the
                // future is dropped; either way it lives until the completion of `ud`
                // is dispatched (`complete`), and the future cannot reach it meanwhile.
                unsafe {
                    self.p
                        .queue_at(opcode, slot, addr, len.min(MAX_RW_LEN), offset, ud)
                }
            }
        };
        let e = self.entry(ud).expect("entry checked above");
        match r {
            Ok(()) => {
                e.state = State::InFlight;
                true
            }
            Err(rej) if rej.reason == RejectReason::Busy => false,
            Err(rej) => {
                e.state = State::Done(OpResult {
                    res: -errno_of(&rej),
                    accepted: None,
                    provided: None,
                });
                if let Some(w) = e.waker.take() {
                    w.wake();
                }
                true
            }
        }
    }

    /// Polls the op `ud`: its result once complete.
    pub(crate) fn poll_op(&mut self, ud: u64, cx: &mut Context<'_>) -> Poll<OpResult> {
        let e = self.entry(ud).expect("op polled after completion");
        if matches!(e.state, State::Done(_)) {
            if let Some(OpEntry {
                state: State::Done(r),
                ..
            }) = self.free_entry(ud)
            {
                return Poll::Ready(r);
            }
            unreachable!("the entry was done");
        }
        match &e.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => e.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The future of op `ud` is gone before its result was taken; `owner` is what it
    /// owned (its buffer).
    pub(crate) fn drop_op(&mut self, ud: u64, owner: Box<dyn Any>) {
        let Some(e) = self.entry(ud) else {
            self.graveyard.push(owner);
            return;
        };
        match e.state {
            State::Queued(_) => {
                // Never handed to the executor: nothing can touch the buffer.
                self.busy.retain(|q| *q != Queued::Op(ud));
                self.free_entry(ud);
                self.graveyard.push(owner);
            }
            State::Done(ref r) => {
                let accepted = r.accepted;
                // A provided buffer nobody took goes back to its group when the entry
                // is dropped.
                self.free_entry(ud);
                self.graveyard.push(owner);
                // A finished ACCEPT whose result nobody took: close the connection.
                if let Some(slot) = accepted {
                    self.close_detached(slot);
                }
            }
            State::InFlight => {
                e.orphan = Some(owner);
                e.orphaned = true;
                e.waker = None;
                self.cancel(ud);
            }
        }
    }

    fn cancel(&mut self, target: u64) {
        if !self.busy.is_empty() || self.p.cancel(target, UD_CANCEL).is_err() {
            self.busy.push_back(Queued::Cancel(target));
        }
    }

    /// Closes `slot` without anyone waiting (an I/O object dropped).
    pub(crate) fn close_detached(&mut self, slot: Slot) {
        if !self.busy.is_empty() {
            self.busy.push_back(Queued::Close(slot));
            return;
        }
        match self.p.close(slot, UD_CLOSE) {
            Err(r) if r.reason == RejectReason::Busy => self.busy.push_back(Queued::Close(slot)),
            _ => {}
        }
    }

    /// Queues again what was refused as Busy, in order, until a lane is busy again.
    fn retry_busy(&mut self) {
        while let Some(&q) = self.busy.front() {
            let ok = match q {
                Queued::Op(ud) => self.issue(ud),
                Queued::Cancel(target) => {
                    // A target that completed meanwhile needs no cancel.
                    let live = self.entry(target).is_some_and(|e| e.orphaned);
                    !live || self.p.cancel(target, UD_CANCEL).is_ok()
                }
                Queued::Close(slot) => {
                    !matches!(self.p.close(slot, UD_CLOSE), Err(r) if r.reason == RejectReason::Busy)
                }
            };
            if !ok {
                break;
            }
            self.busy.pop_front();
        }
    }

    fn complete(&mut self, c: Completion) {
        if c.user_data & INTERNAL != 0 {
            if c.user_data == UD_WAKE {
                self.wake_armed = false;
                if c.result >= 0 || c.result == -libc::EAGAIN || c.result == -libc::EINTR {
                    self.arm_wake();
                } else if !self.shutting_down {
                    eprintln!(
                        "fastio::rt: the runtime's eventfd read failed ({}): wakeups from \
                         other threads now wait for the next completion",
                        io::Error::from_raw_os_error(-c.result)
                    );
                }
            }
            return;
        }
        let ud = c.user_data;
        let Some(e) = self.entry(ud) else {
            return;
        };
        if e.orphaned {
            // The future is gone; now the executor is done with its buffer too. It is
            // dropped by the caller of `turn`, outside the driver (a buffer type may
            // own anything, even an I/O object whose drop needs the driver).
            if let Some(orphan) = self.free_entry(ud).and_then(|e| e.orphan) {
                self.graveyard.push(orphan);
            }
            // An ACCEPT (OPENAT) nobody waits for any more: its connection (file) is not
            // wanted.
            if let Some(slot) = c.accepted {
                self.close_detached(slot);
            }
            return;
        }
        e.state = State::Done(OpResult {
            res: c.result,
            accepted: c.accepted,
            provided: c.provided,
        });
        if let Some(w) = e.waker.take() {
            w.wake();
        }
    }

    // ------------------------------------------------------------------------------
    // Timers
    // ------------------------------------------------------------------------------

    /// Registers (or refreshes) a timer; returns its key.
    pub(crate) fn add_timer(&mut self, deadline: Instant, waker: Waker) -> (Instant, u64) {
        self.timer_seq += 1;
        let key = (deadline, self.timer_seq);
        self.timers.insert(key, waker);
        key
    }

    pub(crate) fn update_timer(&mut self, key: (Instant, u64), waker: &Waker) {
        if let Some(w) = self.timers.get_mut(&key) {
            if !w.will_wake(waker) {
                *w = waker.clone();
            }
        }
    }

    pub(crate) fn remove_timer(&mut self, key: (Instant, u64)) {
        self.timers.remove(&key);
    }

    fn fire_timers(&mut self) {
        if self.timers.is_empty() {
            return;
        }
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            entry.remove().wake();
        }
    }

    // ------------------------------------------------------------------------------
    // The loop
    // ------------------------------------------------------------------------------

    /// Submits, waits for a completion when `block` (bounded by the earliest timer),
    /// and dispatches what completed and what expired.
    pub(crate) fn turn(&mut self, block: bool) -> io::Result<()> {
        if block {
            let timeout = self
                .timers
                .first_key_value()
                .map(|(k, _)| k.0.saturating_duration_since(Instant::now()));
            if timeout == Some(Duration::ZERO) {
                self.p.submit()?;
            } else {
                match self.p.wait(1, timeout) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        } else {
            self.p.submit()?;
        }
        self.p.reap();
        while let Some(c) = self.p.next_completion() {
            self.complete(c);
        }
        if !self.busy.is_empty() {
            self.retry_busy();
        }
        if !self.wake_armed {
            self.arm_wake();
        }
        self.fire_timers();
        Ok(())
    }

    /// What completed orphans owned: the caller drops it with the driver released.
    pub(crate) fn take_graveyard(&mut self) -> Vec<Box<dyn Any>> {
        std::mem::take(&mut self.graveyard)
    }

    /// Requests waiting inside the runtime for room on their lane.
    pub(crate) fn queued(&self) -> usize {
        self.busy.len()
    }

    /// Requests in flight that belong to futures or orphans.
    fn live_ops(&self) -> usize {
        self.ops
            .iter()
            .flatten()
            .filter(|e| matches!(e.state, State::InFlight))
            .count()
    }

    /// Teardown: cancels every request still in flight (their futures are gone by
    /// now), waits up to 2 s for them, and leaks the buffers of any that still did not
    /// complete, rather than free memory an executor may write.
    pub(crate) fn shutdown(&mut self) {
        self.shutting_down = true;
        self.busy.retain(|q| matches!(q, Queued::Close(_)));
        let live: Vec<u64> = self
            .ops
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let e = e.as_ref()?;
                matches!(e.state, State::InFlight).then_some((e.gen as u64) << 32 | i as u64)
            })
            .collect();
        for ud in live {
            if let Some(e) = self.entry(ud) {
                e.orphaned = true;
            }
            self.cancel(ud);
        }
        // The eventfd READ would wait forever: CLOSE its slot, which cancels what waits
        // on it on every backend (also one whose executor cannot ASYNC_CANCEL yet).
        self.close_detached(self.wake_slot);
        let deadline = Instant::now() + Duration::from_secs(2);
        while (self.live_ops() > 0 || self.wake_armed || !self.busy.is_empty())
            && Instant::now() < deadline
        {
            if self.p.wait(1, Some(Duration::from_millis(100))).is_err() {
                break;
            }
            while let Some(c) = self.p.next_completion() {
                self.complete(c);
            }
            self.retry_busy();
        }
        if self.live_ops() > 0 || self.wake_armed {
            eprintln!(
                "fastio::rt: {} request(s) still in flight at shutdown; leaking their buffers",
                self.live_ops() + self.wake_armed as usize
            );
            std::mem::forget(std::mem::take(&mut self.ops));
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new([0; 8])));
        }
    }
}
