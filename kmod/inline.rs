// SPDX-License-Identifier: GPL-2.0

//! Inline execution: `ENTER` with [`abi::ENTER_INLINE`] runs the lanes' work on the
//! calling thread instead of waking their threads, as io_uring without SQPOLL runs a
//! submission in `io_uring_enter` and its ready requests as task work of the waiting
//! task.
//!
//! A lane's rounds (re-issue what its port handed back, then take a batch of SQEs) are
//! serialised by the lane's `round` lock, which its thread holds while it is awake. An
//! inline caller only ever `try_lock`s it: when the lane thread is awake the caller
//! leaves the work to it; when the thread sleeps the caller runs the round itself and
//! the thread sleeps on. While an `ENTER(GETEVENTS | INLINE)` caller waits, ready
//! requests wake it rather than the lane thread (`Inline::waiters`), and it runs them
//! before it looks at the CQ again. When it leaves with ready requests behind, it runs
//! one more round of a sleeping lane and wakes the lane threads for what is still
//! there, so nothing waits for a caller that is gone. A lane thread that finds an inline
//! caller waiting goes to sleep after its round (lane.rs): the caller is the one thread
//! that has to run anyway.
//!
//! So polling continues whenever a lane thread is awake, and a process that waits pays
//! no context switch to a lane thread for work it can do itself: the runtime chooses per
//! call (its policy: fewer CPUs than would let the lane threads poll without taking one
//! from the serving thread or its peers).
//!
//! Lock order: a lane's `round` lock is taken (try_lock only, by callers) before
//! everything a round takes (`Shared::pendings`, the lane's CQ lock, the file table).

use core::sync::atomic::{fence, Ordering};

use kernel::{ffi::c_long, prelude::*, sync::Arc};

use crate::abi;
use crate::lane::Lane;
use crate::shared::Shared;

/// `ENTER(SQ_WAKEUP | INLINE)`: runs one round of each addressed lane whose thread is
/// not running one.
pub(crate) fn submit(lanes: &[Arc<Lane>]) {
    for lane in lanes {
        lane.try_round();
    }
}

/// `ENTER(GETEVENTS | INLINE)`: runs the lanes' rounds on this thread until `min`
/// completions wait over all lanes, `timeout_ns` passes (`ETIME`) or a signal comes
/// (`EINTR`); SHUTDOWN ends the wait too.
pub(crate) fn wait(
    shared: &Shared,
    lanes: &[Arc<Lane>],
    min: u32,
    timeout_ns: u64,
    defer: bool,
) -> Result {
    let ready = || -> u64 { lanes.iter().map(|l| l.ring.cq_ready() as u64).sum() };
    let inline = &shared.inline;
    let mut left: Option<c_long> = if timeout_ns == abi::TIMEOUT_NONE {
        None
    } else {
        let ms = timeout_ns.div_ceil(1_000_000).min(u32::MAX as u64) as u32;
        Some(kernel::time::msecs_to_jiffies(ms) as c_long)
    };
    inline.waiters.fetch_add(1, Ordering::SeqCst);
    let result = loop {
        for lane in lanes {
            lane.try_round();
        }
        if ready() >= min as u64 || shared.stopping.load(Ordering::SeqCst) {
            break Ok(());
        }
        if left == Some(0) {
            break Err(ETIME);
        }
        // Woken by a completion (any lane's post), a ready request of a lane whose
        // thread sleeps, SQEs the CQ has room for again, or SHUTDOWN.
        let more = || {
            ready() >= min as u64
                || shared.stopping.load(Ordering::SeqCst)
                || lanes.iter().any(|l| l.inline_work())
        };
        match inline.wq.wait_interruptible_timeout(more, left) {
            Ok(l) => left = l,
            Err(_) => break Err(EINTR),
        }
    };
    inline.waiters.fetch_sub(1, Ordering::SeqCst);
    if defer {
        // From now on ready requests of sleeping lanes wait for the next inline call.
        inline.defer.store(true, Ordering::SeqCst);
    }
    // Pairs with the pusher's fence between its push and reading `waiters`: either it
    // saw this waiter (and woke it: the request is on the port now) or this sees the
    // request, and the lane thread takes it.
    fence(Ordering::SeqCst);
    for lane in lanes {
        if lane.port.has_ready() {
            // Requests that became ready while this caller ran or woke: run them here
            // if the lane thread sleeps (it would wake only to do this), then wake it
            // for what still waits, unless they wait for the next call (ENTER_DEFER).
            // A push after this round's drain saw no waiter and woke the lane thread
            // itself (or, deferring, left the request for the next call).
            lane.try_round();
            if lane.port.has_ready() && !defer {
                lane.kick();
            }
        }
    }
    result
}
