// SPDX-License-Identifier: GPL-2.0

//! RECV into provided buffers (`SQE_BUFFER_SELECT`) and the multishot requests (RECV
//! and ACCEPT with `SQE_MULTISHOT`) on a lane; `uapi/src/pbuf.rs` is the contract,
//! io_uring/net.c (`io_recv_finish`, `io_accept`) the model.
//!
//! Such a request becomes a [`Pending`] at once and is stepped by the lane: a step
//! takes a buffer (pbuf.rs: never a reception without one, so an empty group ends the
//! request with `-ENOBUFS` and the data stays in the socket) and receives into it, or
//! reserves an empty slot of the range and accepts into it. A step that would block
//! leaves the buffer or slot where it was, and the request waits for readiness like any
//! other (pending.rs); cancellation (ASYNC_CANCEL, CLOSE of its slot, SHUTDOWN, a
//! POLLFREE) reaches it the same way and ends it with `-ECANCELED`. A multishot request
//! takes at most [`MAX_STEPS`] steps per round (io_uring's `MULTISHOT_MAX_RETRY`), then
//! is armed again: the poll finds it ready and it goes on in the next round, after the
//! lane's other work, so no request starves the lane. A reception after which the
//! socket reports nothing left (TCP's `msg_inq`, as io_uring reads it) is the round's
//! last step: the request is armed at once, without a reception that could only fail
//! (the poll at arming finds data that came in between).
//!
//! CQ room: a request taken from the SQ has one CQE reserved (lane.rs). A multishot
//! request gives its reservation back once it is running and holds a place in the
//! lane's backlog instead (capacity allocated up front, so ending never allocates):
//! armed multishot requests take no CQ room, as the ABI promises. Each step's CQE
//! carries `CQE_F_MORE` only if the CQ has room beyond the reservations and the
//! backlog is empty; otherwise it is the request's last CQE (it keeps its data and
//! buffer, without `CQE_F_MORE`), posted if there is room or else kept in the backlog.
//! The backlog goes out, oldest first, at the start of each round and before any SQE
//! is taken; a lane sleeps only while the CQ has no room for it, and ENTER(GETEVENTS)
//! wakes a lane whose backlog fits again.
//!
//! Lock order: as lane.rs (the CQ lock is a leaf); a group's head lock (pbuf.rs) and
//! the file table lock are each taken alone.

use core::sync::atomic::Ordering;

use kernel::{
    alloc::flags::GFP_KERNEL_ACCOUNT, bindings, fs::File, prelude::*, sync::aref::ARef, sync::Arc,
};

use crate::abi::{Cqe, Op, CQE_BUFFER_SHIFT, CQE_F_BUFFER, CQE_F_MORE};
use crate::lane::{user_res, Lane};
use crate::ops::{self, Outcome};
use crate::pending::{Armed, Pending};
use crate::sys::{neg, EPOLLIN, EPOLLRDHUP};

/// Steps of one multishot request per round.
pub(crate) const MAX_STEPS: u32 = 32;

/// What one step did.
enum Step {
    /// Would block: nothing taken.
    Wait,
    /// A reception or an accepted connection: the result, CQE flags, and whether
    /// another step may find more at once (false: the socket said it is empty, so the
    /// request waits for readiness without trying).
    Data(i32, u32, bool),
    /// The request is over with this result (nothing taken).
    End(i32),
}

impl Lane {
    /// Starts a provided-buffer or multishot request taken from the SQ (its CQE is
    /// reserved).
    pub(crate) fn execute_selected(&self, op: Op, user_data: u64) {
        let shared = &self.shared;
        let Some(file) = op.slot().and_then(|s| shared.file(s)) else {
            return self.post(user_data, neg(bindings::EBADF));
        };
        // A RECV counts as a user of its group until its last completion (pbuf.rs).
        if let Op::RecvSelect { group, .. } = op {
            if !shared.use_group(group) {
                return self.post(user_data, neg(bindings::ENOBUFS));
            }
        }
        let release = || {
            if let Op::RecvSelect { group, .. } = op {
                shared.release_group(group);
            }
        };
        let multishot = ops::is_multishot(&op);
        if multishot && !self.hold_backlog_place() {
            release();
            return self.post(user_data, neg(bindings::ENOMEM));
        }
        let end = |res| {
            release();
            if multishot {
                self.post_last(user_data, res, 0)
            } else {
                self.post(user_data, res)
            }
        };
        let events = match op {
            Op::AcceptMulti { .. } => EPOLLIN,
            _ => EPOLLIN | EPOLLRDHUP,
        };
        let Ok(p) = Pending::new(self.idx, &self.port, op, user_data, file, events) else {
            return end(neg(bindings::ENOMEM));
        };
        if shared.pendings.insert(&p).is_err() {
            return end(neg(bindings::ENOMEM));
        }
        shared.stats.parked.fetch_add(1, Ordering::Relaxed);
        self.step(p);
    }

    /// Runs a detached provided-buffer or multishot request: up to [`MAX_STEPS`]
    /// steps, then it waits again or is over.
    pub(crate) fn step(&self, p: Arc<Pending>) {
        let multishot = ops::is_multishot(&p.op);
        for _ in 0..MAX_STEPS {
            if p.is_cancelled() || self.shared.stopping.load(Ordering::SeqCst) {
                return self.end(&p, neg(bindings::ECANCELED), 0);
            }
            match self.one_step(&p) {
                Step::Wait => return self.arm_again(p),
                Step::End(res) => return self.end(&p, res, 0),
                Step::Data(res, flags, more) => {
                    if !multishot || !self.post_more(p.user_data, res, flags) {
                        return self.end(&p, res, flags);
                    }
                    if !more {
                        // Nothing left (TCP's inq): a wakeup since, or the poll of a
                        // first arming, finds data that came in between, so a
                        // reception that would only fail is saved.
                        return self.arm_again(p);
                    }
                }
            }
        }
        // Its share of the round is used up: it goes on in the next round (the port, or
        // the poll of a first arming, finds it ready).
        if p.is_running() {
            return Pending::requeue_running(p);
        }
        self.arm_again(p)
    }

    /// Ends a stepped request: off its wait queues, then its last completion.
    fn end(&self, p: &Pending, res: i32, flags: u32) {
        p.detach();
        self.finish_flags(p, res, flags)
    }

    /// Waits for readiness again: a request whose entries stayed on the wait queues
    /// (RUNNING) only changes state; one that never waited is armed.
    fn arm_again(&self, p: Arc<Pending>) {
        if p.is_running() {
            return Pending::rearm_running(p);
        }
        if let Armed::NoQueue(p) = self.poll_arm(p) {
            // A socket always has a wait queue; without one nothing would report
            // readiness (and these requests never go to a helper).
            self.finish(&p, neg(bindings::EINVAL));
        }
    }

    fn one_step(&self, p: &Pending) -> Step {
        match p.op {
            Op::RecvSelect { group, .. } => self.recv_step(&p.file, group),
            Op::AcceptMulti {
                first,
                count,
                flags,
                ..
            } => {
                let start = p.hint.load(Ordering::Relaxed);
                match ops::accept_range(&self.shared.files, &p.file, first, count, start, flags) {
                    Outcome::Done(slot) if slot >= 0 => {
                        // The next search starts after this slot (as io_uring's
                        // allocation hint): `slot` is inside the range.
                        // (reserve_free takes any hint outside the range as 0).
                        let next = (slot as u32).wrapping_sub(first).wrapping_add(1);
                        p.hint.store(next, Ordering::Relaxed);
                        Step::Data(slot, 0, true)
                    }
                    Outcome::Done(res) => Step::End(res),
                    Outcome::Wait(_) => Step::Wait,
                    Outcome::Offload | Outcome::Partial(_) => Step::End(neg(bindings::EINVAL)),
                }
            }
            _ => Step::End(neg(bindings::EINVAL)),
        }
    }

    /// One reception into a buffer of `group` (registered: the request is one of its
    /// users).
    fn recv_step(&self, file: &ARef<File>, group: u16) -> Step {
        if !ops::is_socket(file) {
            return Step::End(neg(bindings::ENOTSOCK));
        }
        let Some(g) = self.shared.group(group) else {
            return Step::End(neg(bindings::ENOBUFS));
        };
        let taken = match g.peek() {
            Ok(t) => t,
            Err(e) => return Step::End(e),
        };
        let (outcome, more) = ops::recv_into(file, taken.addr, taken.len);
        match outcome {
            Outcome::Done(n) if n > 0 => {
                let id = taken.commit();
                Step::Data(n, CQE_F_BUFFER | (u32::from(id) << CQE_BUFFER_SHIFT), more)
            }
            // End of stream or an error: the buffer stays in the ring.
            Outcome::Done(res) => Step::End(res),
            Outcome::Wait(_) => Step::Wait,
            Outcome::Offload | Outcome::Partial(_) => Step::End(neg(bindings::EINVAL)),
        }
    }

    /// A multishot request starts: its CQ reservation becomes a place in the backlog.
    /// False if the backlog's capacity cannot be had (the reservation stays).
    fn hold_backlog_place(&self) -> bool {
        let mut cq = self.cq.lock();
        let need = (cq.armed as usize).saturating_add(1);
        if cq.backlog.reserve(need, GFP_KERNEL_ACCOUNT).is_err() {
            return false;
        }
        cq.armed = cq.armed.saturating_add(1);
        cq.reserved = cq.reserved.saturating_sub(1);
        self.update_hints(&cq);
        drop(cq);
        // The reservation given back may let SQEs in.
        if self.port.sleeping.load(Ordering::SeqCst) && self.sq_runnable() {
            self.port.kick();
        }
        true
    }

    /// Posts a multishot step's CQE with `CQE_F_MORE` if the CQ has room beyond the
    /// reservations and nothing waits in the backlog; false (nothing posted) otherwise.
    fn post_more(&self, user_data: u64, res: i32, flags: u32) -> bool {
        {
            let mut cq = self.cq.lock();
            if !cq.backlog.is_empty() || self.ring.cq_free(cq.tail) <= cq.reserved {
                return false;
            }
            let cqe = Cqe {
                user_data,
                res: user_res(res),
                flags: flags | CQE_F_MORE,
            };
            self.write_cqe(&mut cq, cqe);
            self.update_hints(&cq);
        }
        self.shared.notify_cq();
        true
    }

    /// Posts the last CQE of a multishot request (which holds a place in the backlog,
    /// no reservation): into the CQ if it has room and the backlog is empty, else to
    /// the backlog.
    pub(crate) fn post_last(&self, user_data: u64, res: i32, flags: u32) {
        let cqe = Cqe {
            user_data,
            res: user_res(res),
            flags,
        };
        let posted = {
            let mut cq = self.cq.lock();
            cq.armed = cq.armed.saturating_sub(1);
            let room = self.ring.cq_free(cq.tail) > cq.reserved;
            let posted = if cq.backlog.is_empty() && room {
                self.write_cqe(&mut cq, cqe);
                true
            } else {
                // Capacity for it was allocated when the request started.
                if let Err(e) = cq.backlog.push_within_capacity(cqe) {
                    if cq.backlog.push(e.0, GFP_KERNEL_ACCOUNT).is_err() {
                        pr_err!("fastio: a multishot completion was lost (no memory)\n");
                    }
                }
                false
            };
            self.update_hints(&cq);
            posted
        };
        if posted {
            self.shared.notify_cq();
        }
    }

    /// Moves what the backlog holds into the CQ, oldest first, as far as there is
    /// room beyond the reservations; returns how many.
    pub(crate) fn flush_backlog(&self) -> u32 {
        if self.cq_backlog_hint.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let n = {
            let mut cq = self.cq.lock();
            let room = self.ring.cq_free(cq.tail).saturating_sub(cq.reserved) as usize;
            let len = cq.backlog.len();
            let n = room.min(len);
            for i in 0..n {
                let cqe = cq.backlog[i];
                self.write_cqe(&mut cq, cqe);
            }
            if n > 0 {
                cq.backlog.copy_within(n..len, 0);
                cq.backlog.truncate(len - n);
            }
            self.update_hints(&cq);
            n
        };
        if n > 0 {
            self.shared.notify_cq();
        }
        // At most the CQ size.
        n as u32
    }

    /// Whether the backlog holds completions that the CQ has room for (lock-free hint).
    pub(crate) fn backlog_flushable(&self) -> bool {
        self.cq_backlog_hint.load(Ordering::Relaxed) > 0
            && self.ring.cq_free(self.cq_tail_hint.load(Ordering::Relaxed))
                > self.cq_reserved_hint.load(Ordering::Relaxed)
    }
}
