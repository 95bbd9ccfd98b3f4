// SPDX-License-Identifier: GPL-2.0

//! A wait queue that can be woken from any context (a poll wake function runs in softirq
//! or hard-irq context under another queue's lock) and waited on interruptibly without a
//! lock: the waiter is on the queue and in `TASK_INTERRUPTIBLE` before it checks its
//! condition (`prepare_to_wait_event`), so a wakeup that follows a change of the
//! condition is never lost. The kernel crate's `CondVar` needs a lock held by both sides,
//! which a softirq waker cannot take.

use core::{ffi::c_int, marker::PhantomPinned, pin::pin, ptr::null_mut};

use kernel::{bindings, prelude::*, sync::LockClassKey, types::Opaque};

/// A `wait_queue_head`.
#[pin_data]
pub(crate) struct WaitQueue {
    #[pin]
    head: Opaque<bindings::wait_queue_head>,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: a wait queue head is designed for use from any thread and context; it has its
// own spinlock.
unsafe impl Send for WaitQueue {}
// SAFETY: as above.
unsafe impl Sync for WaitQueue {}

/// Why an interruptible wait ended early.
pub(crate) struct Interrupted;

impl WaitQueue {
    pub(crate) fn new(name: &'static CStr, key: Pin<&'static LockClassKey>) -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `slot` is valid while the closure runs; `name` and `key` are static.
            head <- Opaque::ffi_init(|slot| unsafe {
                bindings::__init_waitqueue_head(slot, name.as_char_ptr(), key.as_ptr())
            }),
            _pin: PhantomPinned,
        })
    }

    /// Wakes every waiter. Callable from any context, including under other locks.
    pub(crate) fn wake_all(&self) {
        // SAFETY: the head is initialised and pinned; __wake_up takes its own lock.
        unsafe { bindings::__wake_up(self.head.get(), bindings::TASK_NORMAL, 0, null_mut()) };
    }

    /// Wakes one exclusive waiter ([`Self::wait_interruptible_exclusive`]) and every
    /// other one. Callable from any context.
    pub(crate) fn wake_one(&self) {
        // SAFETY: as in `wake_all`; nr_exclusive = 1 stops after the first exclusive
        // waiter woken.
        unsafe { bindings::__wake_up(self.head.get(), bindings::TASK_NORMAL, 1, null_mut()) };
    }

    /// As [`Self::wait_interruptible`], queued as an exclusive waiter: a
    /// [`Self::wake_one`] wakes only one of them (the wake-one of io-wq and of accept
    /// queues, no thundering herd). A waiter woken that leaves without taking what it was
    /// woken for (a signal) must pass the wakeup on; the caller knows what it takes.
    pub(crate) fn wait_interruptible_exclusive(
        &self,
        mut ready: impl FnMut() -> bool,
    ) -> core::result::Result<(), Interrupted> {
        let entry = pin!(Opaque::<bindings::wait_queue_entry>::uninit());
        // SAFETY: `entry` is valid, pinned for the whole function, and initialised here
        // before any other use.
        unsafe { bindings::init_wait(entry.get()) };
        let result = loop {
            // SAFETY: `entry` and the head are valid; the entry is queued at the tail as
            // exclusive if it is not queued (a wakeup dequeues it), and the task state
            // is TASK_INTERRUPTIBLE before the checks below.
            unsafe {
                bindings::prepare_to_wait_exclusive(
                    self.head.get(),
                    entry.get(),
                    bindings::TASK_INTERRUPTIBLE as c_int,
                )
            };
            if ready() {
                break Ok(());
            }
            if crate::sys::signal_pending() {
                break Err(Interrupted);
            }
            // SAFETY: queued and TASK_INTERRUPTIBLE: a wake or a signal (which wakes
            // TASK_INTERRUPTIBLE tasks) makes us runnable again.
            unsafe { bindings::schedule() };
        };
        // SAFETY: takes the entry off the queue if still on it, sets TASK_RUNNING.
        unsafe { bindings::finish_wait(self.head.get(), entry.get()) };
        result
    }

    /// Sleeps until `ready()` is true, or a signal is pending (`Err`). `ready` is checked
    /// after the caller is queued, so a `wake_all` after the condition became true is
    /// never missed. Must be called from a sleepable task context holding no spinlock.
    pub(crate) fn wait_interruptible(
        &self,
        ready: impl FnMut() -> bool,
    ) -> core::result::Result<(), Interrupted> {
        self.wait_interruptible_timeout(ready, None).map(drop)
    }

    /// As [`Self::wait_interruptible`], for at most `timeout` jiffies (`None`: no limit).
    /// Returns the jiffies left (`Some(0)` once the time is up and `ready()` is still
    /// false; `ready()` is checked once more after the last sleep).
    pub(crate) fn wait_interruptible_timeout(
        &self,
        mut ready: impl FnMut() -> bool,
        timeout: Option<kernel::ffi::c_long>,
    ) -> core::result::Result<Option<kernel::ffi::c_long>, Interrupted> {
        let entry = pin!(Opaque::<bindings::wait_queue_entry>::uninit());
        // SAFETY: `entry` is valid, pinned for the whole function, and initialised here
        // before any other use.
        unsafe { bindings::init_wait(entry.get()) };
        let mut left = timeout;
        let mut result = Ok(());
        loop {
            // SAFETY: `entry` and the head are valid; prepare_to_wait_event queues the
            // entry (once) and sets TASK_INTERRUPTIBLE, or returns -ERESTARTSYS when a
            // signal is pending (then the entry is not queued).
            let r = unsafe {
                bindings::prepare_to_wait_event(
                    self.head.get(),
                    entry.get(),
                    bindings::TASK_INTERRUPTIBLE as c_int,
                )
            };
            if ready() {
                break;
            }
            if r != 0 {
                result = Err(Interrupted);
                break;
            }
            match left {
                Some(0) => break,
                // SAFETY: we are queued and in TASK_INTERRUPTIBLE; a wake, a signal or
                // the timer makes us runnable again; schedule_timeout returns the
                // jiffies left (>= 0).
                Some(j) => left = Some(unsafe { bindings::schedule_timeout(j) }),
                // SAFETY: as above, without a timer.
                None => unsafe { bindings::schedule() },
            }
        }
        // SAFETY: takes the entry off the queue if it is still on it and sets
        // TASK_RUNNING; the entry is valid.
        unsafe { bindings::finish_wait(self.head.get(), entry.get()) };
        result.map(|()| left)
    }
}
