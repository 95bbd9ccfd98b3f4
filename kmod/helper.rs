// SPDX-License-Identifier: GPL-2.0

//! The loop a helper thread runs inside `FASTIO_RUN_HELPER`: take the context's oldest
//! blocking job, do the blocking call, post the completion to the job's lane; sleep
//! (interruptibly) when there is none.
//!
//! A signal interrupts the blocking call (FIFO and tty reads wait interruptibly, disk
//! I/O killably): the job goes back to the front of the queue, unless it was cancelled,
//! and the thread returns to user space with `-ERESTARTSYS`, so the process's handler
//! runs and the call restarts. Cancellation and SHUTDOWN interrupt a helper the same way
//! (`TIF_NOTIFY_SIGNAL`, no handler runs).

use core::sync::atomic::Ordering;

use kernel::{bindings, prelude::*, sync::Arc};

use crate::abi::Op;
use crate::lane::Lane;
use crate::offload::Job;
use crate::ops::{self, add_progress, Outcome};
use crate::shared::Shared;
use crate::sys::{self, neg};

/// Completes `job` on its lane with `res` (plus what was done before it).
pub(crate) fn complete(lanes: &[Arc<Lane>], job: &Job, res: i32) {
    if let Some(lane) = lanes.get(job.lane as usize) {
        lane.post(job.user_data, add_progress(job.progress, res));
    }
}

/// The body of `FASTIO_RUN_HELPER`: serves as helper `idx` until SHUTDOWN (`Ok(0)`) or
/// a signal (`-ERESTARTSYS`).
pub(crate) fn run(shared: &Shared, lanes: &[Arc<Lane>], idx: u32) -> Result<isize> {
    if shared.stopping.load(Ordering::SeqCst) {
        // After SHUTDOWN: nothing may stay queued (a job put back by a helper that a
        // signal interrupted just before SHUTDOWN).
        for job in shared.jobs.take_where(|_| true) {
            complete(lanes, &job, neg(bindings::ECANCELED));
        }
        return Err(ESHUTDOWN);
    }
    shared.jobs.attach(idx)?;
    let r = serve(shared, lanes, idx);
    shared.jobs.detach(idx);
    r
}

fn serve(shared: &Shared, lanes: &[Arc<Lane>], idx: u32) -> Result<isize> {
    let restart = || Error::from_errno(neg(bindings::ERESTARTSYS));
    let stopping = || shared.stopping.load(Ordering::SeqCst);
    loop {
        if stopping() {
            for job in shared.jobs.take_where(|_| true) {
                complete(lanes, &job, neg(bindings::ECANCELED));
            }
            return Ok(0);
        }
        if sys::must_return() {
            shared.jobs.pass_on();
            return Err(restart());
        }
        let Some(job) = shared.jobs.take(idx) else {
            if shared.jobs.wait(stopping).is_err() {
                return Err(restart());
            }
            continue;
        };
        if job.cancelled {
            shared.jobs.done(idx);
            complete(lanes, &job, neg(bindings::ECANCELED));
            continue;
        }
        let outcome = ops::issue(shared, &job.op, job.file.as_ref(), true);
        let cancelled = shared.jobs.done(idx);
        if let (Outcome::Wait(events), Op::Sendfile { .. }, Some(file), Some(lane)) = (
            &outcome,
            job.op,
            job.file.as_ref(),
            lanes.get(job.lane as usize),
        ) {
            // A SENDFILE whose non-blocking socket filled up since its lane looked:
            // back to waiting for writability on its lane (its CQ entry stays reserved).
            if cancelled || stopping() {
                complete(lanes, &job, neg(bindings::ECANCELED));
            } else {
                lane.park_again(job.op, job.user_data, file.clone(), *events);
            }
            continue;
        }
        let res = match outcome {
            Outcome::Done(r) => r,
            Outcome::Partial(n) => n as i32,
            // A socket request that ended up here (its file had no wait queue): its
            // non-blocking answer is final.
            Outcome::Wait(_) | Outcome::Offload => neg(bindings::EAGAIN),
        };
        let interrupted =
            sys::is_restart(res) || (res == neg(bindings::EINTR) && sys::signal_pending());
        if interrupted {
            if cancelled || stopping() {
                complete(lanes, &job, neg(bindings::ECANCELED));
                continue;
            }
            // Run it again after the signal, first in line.
            if let Err(job) = shared.jobs.push_front(job) {
                complete(lanes, &job, neg(bindings::EINTR));
            }
            return Err(restart());
        }
        // A cancelled request that still transferred data reports it: nothing is lost.
        let res = if cancelled && res < 0 {
            neg(bindings::ECANCELED)
        } else {
            res
        };
        complete(lanes, &job, res);
    }
}
