// SPDX-License-Identifier: GPL-2.0

//! The inline `ENTER` callers of a context: how many wait, and the queue they sleep on
//! (inline.rs runs the rounds; a lane's port wakes these callers instead of the lane
//! thread while there are any: pending.rs).
//!
//! Lock order: the wait queue's lock is a leaf.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use kernel::{prelude::*, sync::Arc};

use crate::waitq::WaitQueue;

/// The callers waiting inline in one context, and the queue they sleep on (woken from
/// any context: a ready request is pushed from a poll wake function).
#[pin_data]
pub(crate) struct Inline {
    /// `ENTER(GETEVENTS | INLINE)` callers between their first round and their exit.
    pub(crate) waiters: AtomicU32,
    /// Some `ENTER` came with `ENTER_INLINE`: the process runs lanes' work itself (it
    /// chose to for lack of CPUs), so an idle lane thread sleeps at once instead of
    /// spinning for `idle_ms` on a CPU the process needs.
    pub(crate) used: AtomicBool,
    /// The last inline `ENTER` asked for `ENTER_DEFER`: ready requests of sleeping lanes
    /// wait for the next one (no lane thread is woken for them).
    pub(crate) defer: AtomicBool,
    #[pin]
    pub(crate) wq: WaitQueue,
}

impl Inline {
    pub(crate) fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Inline {
                waiters: AtomicU32::new(0),
                used: AtomicBool::new(false),
                defer: AtomicBool::new(false),
                wq <- WaitQueue::new(c"fastio::Inline::wq", kernel::static_lock_class!()),
            }),
            GFP_KERNEL,
        )
    }

    /// Whether an inline waiter takes ready requests (read after the pusher's fence).
    pub(crate) fn has_waiters(&self) -> bool {
        self.waiters.load(Ordering::SeqCst) != 0
    }

    /// Whether ready requests of sleeping lanes wait for the next inline `ENTER`.
    pub(crate) fn deferring(&self) -> bool {
        self.defer.load(Ordering::SeqCst)
    }

    /// Wakes the inline waiters if there are any. Any context.
    pub(crate) fn wake(&self) {
        if self.has_waiters() {
            self.wq.wake_all();
        }
    }
}
