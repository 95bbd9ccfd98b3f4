// SPDX-License-Identifier: GPL-2.0

//! A lane and the loop its thread runs inside `FASTIO_RUN_LANE`.
//!
//! The lane thread is a thread of the owning process that stays in the kernel. Each
//! round it posts the last completions of multishot requests that found the CQ full
//! (multishot.rs), re-issues the requests its port handed back (ready or cancelled),
//! then takes a batch of SQEs — no more than its CQ has room for, counting requests
//! still in flight and that backlog — reading each once into a private copy, validating
//! and executing it, and
//! publishes the SQ head once per batch. With nothing to do it spins for `idle_ms`
//! (not at all while an inline `ENTER` caller waits: that caller takes the lane's work
//! over after the current round, busy or not: inline.rs), giving the CPU away at
//! once whenever another task wants it; then it sets
//! `SQ_NEED_WAKEUP`, re-checks, and sleeps until `ENTER`, a ready request, SHUTDOWN or a
//! signal. "Nothing to do" includes a full CQ: a lane whose process does not reap never
//! spins for longer than `idle_ms`. A signal returns to user space (`-ERESTARTSYS`: the
//! process's handler runs, the call restarts, credentials changed by `setuid()` take
//! effect); a fatal one ends the thread.
//!
//! A round can also run on a thread that calls `ENTER` with `ENTER_INLINE` while the
//! lane thread sleeps (inline.rs): the `round` lock, held by the lane thread while it is
//! awake, serialises them.
//!
//! Lock order: `round` → everything a round takes (inline.rs); the lane's `cq` lock is
//! a leaf.

use core::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};

use kernel::{
    alloc::flags::GFP_KERNEL,
    bindings,
    fs::File,
    new_mutex,
    prelude::*,
    sync::{aref::ARef, Arc, Mutex},
    time::{Delta, Instant, Monotonic},
};

use crate::abi::{self, Cqe, Op};
use crate::offload::Job;
use crate::ops::{self, add_progress, Outcome};
use crate::pending::{Armed, Pending, Port};
use crate::ring::RingView;
use crate::shared::Shared;
use crate::sys::{self, neg};

/// The producer side of a CQ.
pub(crate) struct CqState {
    /// Our copy of the CQ tail (the shared one is only ever written from it).
    pub(crate) tail: u32,
    /// Requests taken from the SQ whose completion is not posted yet (armed multishot
    /// requests excepted: they hold a place in `backlog` instead).
    pub(crate) reserved: u32,
    /// Last completions of multishot requests that found the CQ without room, oldest
    /// first; posted before any SQE is taken again (multishot.rs).
    pub(crate) backlog: KVec<Cqe>,
    /// Armed multishot requests: `backlog`'s capacity is kept at least
    /// `backlog.len() + armed`, so a last completion never needs an allocation.
    pub(crate) armed: u32,
}

/// One lane: its rings, its port, its CQ producer state.
#[pin_data]
pub(crate) struct Lane {
    pub(crate) idx: u32,
    pub(crate) shared: Arc<Shared>,
    pub(crate) ring: RingView,
    pub(crate) port: Arc<Port>,
    /// A thread serves the lane.
    attached: AtomicBool,
    /// The SQ head as the module knows it; whoever runs a round holds the lock: the lane
    /// thread while it is awake, or an inline `ENTER` caller while it sleeps.
    #[pin]
    round: Mutex<u32>,
    /// Lock-free copy of `round`'s head, for [`Self::sq_runnable`] (a hint).
    sq_head: AtomicU32,
    /// Lock-free copies of `cq` for the sleeping thread's checks (hints only).
    pub(crate) cq_tail_hint: AtomicU32,
    pub(crate) cq_reserved_hint: AtomicU32,
    pub(crate) cq_backlog_hint: AtomicU32,
    #[pin]
    pub(crate) cq: Mutex<CqState>,
}

/// A result as userspace may see it: a "restart" code never reaches it.
pub(crate) fn user_res(res: i32) -> i32 {
    if sys::is_restart(res) {
        neg(bindings::EINTR)
    } else {
        res
    }
}

/// The error a thread returns to have the call restarted after a signal.
fn restart() -> Error {
    Error::from_errno(neg(bindings::ERESTARTSYS))
}

impl Lane {
    pub(crate) fn new(idx: u32, shared: Arc<Shared>, ring: RingView) -> Result<Arc<Self>> {
        let tail = ring.cq_tail();
        let inline = shared.inline.clone();
        Arc::pin_init(
            pin_init!(Lane {
                idx,
                shared,
                ring,
                port: Port::new(inline)?,
                attached: AtomicBool::new(false),
                round <- new_mutex!(0),
                sq_head: AtomicU32::new(0),
                cq_tail_hint: AtomicU32::new(tail),
                cq_reserved_hint: AtomicU32::new(0),
                cq_backlog_hint: AtomicU32::new(0),
                cq <- new_mutex!(CqState {
                    tail,
                    reserved: 0,
                    backlog: KVec::new(),
                    armed: 0,
                }),
            }? Error),
            GFP_KERNEL,
        )
    }

    /// Posts the completion of a request whose CQ space was reserved.
    pub(crate) fn post(&self, user_data: u64, res: i32) {
        self.post_flags(user_data, res, 0)
    }

    /// [`Self::post`] with CQE flags (a provided buffer's).
    pub(crate) fn post_flags(&self, user_data: u64, res: i32, flags: u32) {
        {
            let mut cq = self.cq.lock();
            self.write_cqe(
                &mut cq,
                Cqe {
                    user_data,
                    res: user_res(res),
                    flags,
                },
            );
            cq.reserved = cq.reserved.saturating_sub(1);
            self.update_hints(&cq);
        }
        self.shared.notify_cq();
        // A lane asleep on a CQ full of reservations may run again now.
        if self.port.sleeping.load(Ordering::SeqCst) && self.sq_runnable() {
            self.port.kick();
        }
    }

    /// Writes `cqe` at the CQ tail and publishes it (the caller holds the CQ lock and
    /// made sure there is room).
    pub(crate) fn write_cqe(&self, cq: &mut CqState, cqe: Cqe) {
        self.ring.write_cqe(cq.tail, cqe);
        cq.tail = cq.tail.wrapping_add(1);
        self.ring.set_cq_tail(cq.tail);
    }

    /// Refreshes the lock-free copies of `cq`.
    pub(crate) fn update_hints(&self, cq: &CqState) {
        self.cq_tail_hint.store(cq.tail, Ordering::Relaxed);
        self.cq_reserved_hint.store(cq.reserved, Ordering::Relaxed);
        let backlog = u32::try_from(cq.backlog.len()).unwrap_or(u32::MAX);
        self.cq_backlog_hint.store(backlog, Ordering::Relaxed);
    }

    /// Whether the SQ holds entries that the CQ has room for (lock-free hint).
    pub(crate) fn sq_runnable(&self) -> bool {
        let head = self.sq_head.load(Ordering::Relaxed);
        let room = self
            .ring
            .cq_free(self.cq_tail_hint.load(Ordering::Relaxed))
            .saturating_sub(self.cq_reserved_hint.load(Ordering::Relaxed))
            .saturating_sub(self.cq_backlog_hint.load(Ordering::Relaxed));
        self.ring.sq_tail() != head && room > 0
    }

    /// The body of `FASTIO_RUN_LANE`: serves the lane until SHUTDOWN (`Ok(0)`) or a
    /// signal (`-ERESTARTSYS`).
    pub(crate) fn run(&self) -> Result<isize> {
        if self.attached.swap(true, Ordering::SeqCst) {
            return Err(EBUSY);
        }
        let r = if self.shared.stopping.load(Ordering::SeqCst) {
            // After SHUTDOWN: make sure nothing of this lane is left waiting (after any
            // inline round in progress).
            let _round = self.round.lock();
            self.retire();
            Err(ESHUTDOWN)
        } else {
            self.serve()
        };
        self.attached.store(false, Ordering::SeqCst);
        r
    }

    /// Runs `f` as the lane's only server if no thread serves it (SHUTDOWN, teardown),
    /// after any inline round in progress.
    pub(crate) fn with_claim(&self, f: impl FnOnce(&Self)) -> bool {
        if self.attached.swap(true, Ordering::SeqCst) {
            return false;
        }
        {
            let _round = self.round.lock();
            f(self);
        }
        self.attached.store(false, Ordering::SeqCst);
        true
    }

    /// The lane is stopping (its server holds it): every request of the lane still
    /// waiting for readiness or queued for a helper completes with -ECANCELED.
    /// Deterministic: after the cancel and the detach of every such request, all of
    /// them are on the port.
    pub(crate) fn retire(&self) {
        let mine = |p: &Pending| p.lane == self.idx;
        self.shared.pendings.cancel_where(mine);
        self.shared.pendings.detach_where(mine);
        self.port.drain(|p| {
            p.detach();
            self.finish(&p, neg(bindings::ECANCELED));
        });
        for job in self.shared.jobs.take_where(|j| j.lane == self.idx) {
            self.post(
                job.user_data,
                add_progress(job.progress, neg(bindings::ECANCELED)),
            );
        }
    }

    fn serve(&self) -> Result<isize> {
        let idle = Delta::from_millis(self.shared.params.idle_ms as i64);
        let mut round = self.round.lock();
        let mut last_work = Instant::<Monotonic>::now();
        self.ring
            .sq_flags()
            .fetch_and(!abi::SQ_NEED_WAKEUP, Ordering::SeqCst);
        loop {
            if self.shared.stopping.load(Ordering::SeqCst) {
                self.retire();
                return Ok(0);
            }
            if sys::must_return() {
                return Err(restart());
            }
            let mut progress = self.flush_backlog() + self.process_ready();
            progress += self.drain(&mut *round);
            // A caller waits inline (inline.rs), or the last one will come back for what
            // becomes ready (ENTER_DEFER): it does the lane's work from now on, in its
            // own ENTER and without a context switch per completion it waits for;
            // polling on (or spinning) would only take its CPU. The lane hands over
            // after the round it is in, with work left or not.
            let hand_over = self.shared.inline.has_waiters() || self.shared.inline.deferring();
            if progress > 0 && !hand_over {
                last_work = Instant::now();
                if sys::others_want_cpu() {
                    sys::yield_cpu();
                }
                continue;
            }
            // Nothing to do: spin for idle_ms, unless the process runs lanes' work inline
            // (waiters.rs: it has no CPU to spare for a spinning lane thread).
            let spin = !hand_over && !self.shared.inline.used.load(Ordering::Relaxed);
            if progress == 0 && spin && last_work.elapsed() < idle {
                if sys::others_want_cpu() {
                    sys::yield_cpu();
                } else {
                    core::hint::spin_loop();
                }
                continue;
            }
            // Work queued on this thread runs only on its way out (the release of a
            // file whose last reference a round dropped: a CLOSE's socket stays open
            // until then): go out first, then sleep. The loop's top only sees it when
            // the lane goes round again, which a lane that hands over does not.
            if sys::must_return() {
                return Err(restart());
            }
            // Asleep, the lane may be served by inline ENTER callers.
            let slept = self.sleep(|| drop(round));
            round = self.round.lock();
            self.shared.stats.lane_wakes.fetch_add(1, Ordering::Relaxed);
            if slept.is_err() {
                return Err(restart());
            }
            last_work = Instant::now();
        }
    }

    /// One round on the calling thread (an inline `ENTER`) if no other thread runs one:
    /// the lane thread sleeps or there is none.
    pub(crate) fn try_round(&self) {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if let Some(mut round) = self.round.try_lock() {
            let n = self.flush_backlog() + self.process_ready() + self.drain(&mut *round);
            if n > 0 {
                let stats = &self.shared.stats;
                stats.inline_ops.fetch_add(u64::from(n), Ordering::Relaxed);
            }
        }
    }

    /// Whether an inline waiter should run a round: there is work and no lane thread
    /// awake to do it (lock-free hints).
    pub(crate) fn inline_work(&self) -> bool {
        let idle =
            self.port.sleeping.load(Ordering::SeqCst) || !self.attached.load(Ordering::SeqCst);
        idle && (self.port.has_ready() || self.sq_runnable() || self.backlog_flushable())
    }

    /// Sets NEED_WAKEUP, calls `release` (which lets go of the round lock) and sleeps
    /// until there is something to do. Ready requests do not wake it while an inline
    /// waiter takes them (inline.rs).
    fn sleep(&self, release: impl FnOnce()) -> core::result::Result<(), crate::waitq::Interrupted> {
        let port = &self.port;
        port.sleeping.store(true, Ordering::SeqCst);
        self.ring
            .sq_flags()
            .fetch_or(abi::SQ_NEED_WAKEUP, Ordering::SeqCst);
        // Pairs with user space's fence between publishing its tail and reading the
        // flags, and with the port's fence between a push and reading `sleeping`.
        fence(Ordering::SeqCst);
        release();
        let inline = &self.shared.inline;
        // A request pushed before `sleeping` was visible did not wake an inline waiter
        // (the pusher saw an awake lane): wake it now, it takes the request.
        if port.has_ready() && inline.has_waiters() {
            inline.wq.wake_all();
        }
        let r = port.wq.wait_interruptible(|| {
            port.kicked.swap(false, Ordering::SeqCst)
                || (port.has_ready() && !inline.has_waiters() && !inline.deferring())
                || self.sq_runnable()
                || self.backlog_flushable()
                || self.shared.stopping.load(Ordering::SeqCst)
        });
        port.sleeping.store(false, Ordering::SeqCst);
        self.ring
            .sq_flags()
            .fetch_and(!abi::SQ_NEED_WAKEUP, Ordering::SeqCst);
        r
    }

    /// Takes SQEs while there are any and the CQ has room, runs them; publishes the new
    /// head once. Returns how many were taken.
    fn drain(&self, head: &mut u32) -> u32 {
        let ring = &self.ring;
        let avail = ring.sq_tail().wrapping_sub(*head).min(ring.sq_entries);
        if avail == 0 {
            return 0;
        }
        let n = {
            let mut cq = self.cq.lock();
            // The backlog goes out first: SQEs get only the room left after it.
            let backlog = u32::try_from(cq.backlog.len()).unwrap_or(u32::MAX);
            let room = ring
                .cq_free(cq.tail)
                .saturating_sub(cq.reserved)
                .saturating_sub(backlog);
            let n = avail.min(room);
            cq.reserved += n;
            self.update_hints(&cq);
            n
        };
        // The hint covers the whole batch before it runs: a completion posted meanwhile
        // must not see these entries as waiting and kick a sleeping lane thread for them
        // (an inline round runs while the thread sleeps).
        self.sq_head.store(head.wrapping_add(n), Ordering::Relaxed);
        for _ in 0..n {
            let sqe = ring.sqe(*head);
            *head = head.wrapping_add(1);
            self.execute(&sqe);
        }
        if n > 0 {
            ring.set_sq_head(*head);
            self.shared.stats.ops.fetch_add(n as u64, Ordering::Relaxed);
        }
        n
    }

    /// Runs one request whose CQ space is reserved; it completes now or later.
    fn execute(&self, sqe: &abi::Sqe) {
        let user_data = sqe.user_data;
        let shared = &self.shared;
        let op = match abi::decode(sqe, shared.params.max_files) {
            Ok(op) => op,
            Err(e) => return self.post(user_data, -e.errno()),
        };
        match op {
            Op::Nop => self.post(user_data, 0),
            Op::AsyncCancel { target } => {
                // The targets complete -ECANCELED through their own lanes (those on this
                // lane in its next round, after this completion, as with io_uring).
                let res = if shared.cancel_user_data(target) > 0 {
                    0
                } else {
                    neg(bindings::ENOENT)
                };
                self.post(user_data, res)
            }
            // Provided buffers and multishot requests (multishot.rs).
            Op::RecvSelect { .. } | Op::AcceptMulti { .. } => self.execute_selected(op, user_data),
            Op::Close { slot } => {
                let old = shared.files.lock().take(slot);
                let res = match old {
                    Some(file) => {
                        // What waits on this very file completes -ECANCELED (after the
                        // CLOSE's own completion, as with io_uring), and so do the
                        // SENDFILEs whose source this slot is.
                        shared.cancel_file(Some(&file));
                        shared.cancel_sendfiles_from(slot);
                        0
                    }
                    None => neg(bindings::EBADF),
                };
                self.post(user_data, res)
            }
            _ => {
                // Every other request works on its slot's file, but OPENAT in the
                // current directory, which has none.
                let file = match op.slot() {
                    Some(slot) => match shared.file(slot) {
                        Some(f) => Some(f),
                        None => return self.post(user_data, neg(bindings::EBADF)),
                    },
                    None => None,
                };
                let outcome = ops::issue(shared, &op, file.as_ref(), false);
                self.handle(op, user_data, file, outcome);
            }
        }
    }

    /// Completes, parks or offloads a request after an attempt.
    fn handle(&self, op: Op, user_data: u64, file: Option<ARef<File>>, outcome: Outcome) {
        match (outcome, file) {
            (Outcome::Done(r), _) => self.post(user_data, r),
            (Outcome::Wait(events), Some(file)) => {
                self.park(ops::waiting(op), user_data, file, events)
            }
            // Only requests on a file wait for readiness.
            (Outcome::Wait(_), None) => self.post(user_data, neg(bindings::EINVAL)),
            (Outcome::Offload, file) => self.offload(op, user_data, file, 0),
            (Outcome::Partial(n), file) => self.offload(ops::advance(op, n), user_data, file, n),
        }
    }

    /// A helper hands back a request that must wait for readiness after all (a
    /// SENDFILE whose socket filled up): it waits on this lane as if it had parked here.
    pub(crate) fn park_again(&self, op: Op, user_data: u64, file: ARef<File>, events: u32) {
        self.park(op, user_data, file, events)
    }

    fn park(&self, op: Op, user_data: u64, file: ARef<File>, events: u32) {
        let shared = &self.shared;
        let Ok(p) = Pending::new(self.idx, &self.port, op, user_data, file, events) else {
            return self.post(user_data, neg(bindings::ENOMEM));
        };
        if shared.pendings.insert(&p).is_err() {
            return self.post(user_data, neg(bindings::ENOMEM));
        }
        shared.stats.parked.fetch_add(1, Ordering::Relaxed);
        self.arm(p);
    }

    /// Puts a request on its file's wait queues with a poll (counted in `Stats::polls`).
    pub(crate) fn poll_arm(&self, p: Arc<Pending>) -> Armed {
        self.shared.stats.polls.fetch_add(1, Ordering::Relaxed);
        Pending::arm(p)
    }

    fn arm(&self, p: Arc<Pending>) {
        if let Armed::NoQueue(p) = self.poll_arm(p) {
            // Nothing will ever report readiness: a helper does the blocking call.
            self.shared.pendings.remove(&p);
            self.offload(p.op, p.user_data, Some(p.file.clone()), 0);
        }
    }

    fn offload(&self, op: Op, user_data: u64, file: Option<ARef<File>>, progress: u32) {
        let job = Job {
            lane: self.idx,
            op,
            progress,
            user_data,
            file,
            cancelled: false,
        };
        self.shared.stats.offloaded.fetch_add(1, Ordering::Relaxed);
        if let Err(job) = self.shared.jobs.push(job) {
            self.post(
                job.user_data,
                add_progress(job.progress, neg(bindings::ENOMEM)),
            );
        }
    }

    /// Re-issues (or completes, when cancelled) what the port handed back.
    fn process_ready(&self) -> u32 {
        let stopping = self.shared.stopping.load(Ordering::SeqCst);
        self.port.drain(|p| {
            if p.is_cancelled() || stopping {
                p.detach();
                return self.finish(&p, neg(bindings::ECANCELED));
            }
            // A multishot request stays on its wait queues while it is stepped
            // (pending.rs: RUNNING; its loop checks `cancelled` again); it is detached
            // when it ends.
            if ops::is_multishot(&p.op) && p.is_attached() {
                p.set_running();
            } else {
                p.detach();
            }
            self.shared.stats.wakeups.fetch_add(1, Ordering::Relaxed);
            if ops::is_selected(&p.op) {
                return self.step(p);
            }
            match ops::issue(&self.shared, &p.op, Some(&p.file), false) {
                // Still not ready (a spurious or shared wakeup): wait again.
                Outcome::Wait(_) => self.arm(p),
                outcome => {
                    p.set_done();
                    self.shared.pendings.remove(&p);
                    self.handle(p.op, p.user_data, Some(p.file.clone()), outcome);
                }
            }
        })
    }

    /// Completes a detached request with `res`.
    pub(crate) fn finish(&self, p: &Pending, res: i32) {
        self.finish_flags(p, res, 0)
    }

    /// [`Self::finish`] with CQE flags; a multishot request's last completion takes no
    /// reservation (multishot.rs).
    pub(crate) fn finish_flags(&self, p: &Pending, res: i32, flags: u32) {
        p.set_done();
        self.shared.pendings.remove(p);
        if let Op::RecvSelect { group, .. } = p.op {
            self.shared.release_group(group);
        }
        if ops::is_multishot(&p.op) {
            self.post_last(p.user_data, res, flags);
        } else {
            self.post_flags(p.user_data, res, flags);
        }
    }

    /// `ENTER(SQ_WAKEUP)`, SHUTDOWN, or a CQ that was full has room again.
    pub(crate) fn kick(&self) {
        self.port.kick();
    }
}
