// SPDX-License-Identifier: GPL-2.0

//! Blocking work of one context, for its helper threads.
//!
//! A lane thread never blocks: a request that needs a blocking call (uncached file data,
//! a FIFO or tty, a busy file position) becomes a [`Job`] on its context's queue, which
//! only that context's helper threads (threads of the same process, parked in
//! `FASTIO_RUN_HELPER`) take. So one context's slow files can never hold back another
//! context, and the blocking call runs with the process's own identity and limits.
//!
//! A running job can be cancelled (CLOSE of its file, ASYNC_CANCEL, SHUTDOWN): its
//! helper is interrupted like a signal would (`TIF_NOTIFY_SIGNAL`), so an interruptible
//! wait (a FIFO read) returns at once; a killable one (disk I/O) finishes first.
//!
//! Lock order: `Jobs::inner` is a leaf.

use core::sync::atomic::{AtomicU32, Ordering};

use kernel::{
    alloc::{
        flags::{GFP_KERNEL, GFP_KERNEL_ACCOUNT},
        kvec::InsertError,
    },
    bindings,
    fs::File,
    new_mutex,
    prelude::*,
    sync::aref::ARef,
    sync::Mutex,
};

use crate::abi::Op;
use crate::sys;
use crate::waitq::{Interrupted, WaitQueue};

/// A request for a helper thread.
pub(crate) struct Job {
    /// The lane whose CQ gets the completion (its space is reserved).
    pub(crate) lane: u32,
    /// What is left of the request.
    pub(crate) op: Op,
    /// Bytes already transferred by the lane thread; added to the result.
    pub(crate) progress: u32,
    pub(crate) user_data: u64,
    /// The file the request works on (OPENAT: its directory, `None` for the current
    /// directory).
    pub(crate) file: Option<ARef<File>>,
    /// Cancelled while queued: the helper completes it with -ECANCELED without running it.
    pub(crate) cancelled: bool,
}

impl Job {
    /// The job's file, or null when it has none (an OPENAT in the current directory).
    pub(crate) fn file_ptr(&self) -> *const bindings::file {
        self.file
            .as_ref()
            .map_or(core::ptr::null(), |f| f.as_ptr() as *const bindings::file)
    }
}

/// A job a helper is running.
struct Running {
    /// The helper, inside `FASTIO_RUN_HELPER` for as long as this entry exists.
    task: *mut bindings::task_struct,
    file: *const bindings::file,
    user_data: u64,
    op: Op,
    cancelled: bool,
}

struct Inner {
    /// Waiting jobs, oldest first from `first`.
    queue: KVVec<Job>,
    /// Per helper index: whether a thread serves it, and what it runs.
    attached: KVec<bool>,
    running: KVec<Option<Running>>,
}

/// The context's blocking-work queue.
#[pin_data]
pub(crate) struct Jobs {
    #[pin]
    inner: Mutex<Inner>,
    /// Jobs in `queue` (read without the lock by sleeping helpers).
    queued: AtomicU32,
    /// Jobs running right now.
    running: AtomicU32,
    #[pin]
    pub(crate) wq: WaitQueue,
}

// SAFETY: the task pointers are only used under `inner`'s lock while their helper is
// inside the module's ioctl (so alive); the rest is Send + Sync.
unsafe impl Send for Jobs {}
// SAFETY: as above.
unsafe impl Sync for Jobs {}

impl Jobs {
    pub(crate) fn new(helpers: u32) -> Result<impl PinInit<Self>> {
        let n = helpers as usize;
        let attached = KVec::from_elem(false, n, GFP_KERNEL)?;
        let mut running = KVec::with_capacity(n, GFP_KERNEL)?;
        for _ in 0..n {
            running.push(None, GFP_KERNEL)?;
        }
        Ok(pin_init!(Jobs {
            inner <- new_mutex!(Inner {
                queue: KVVec::new(),
                attached,
                running,
            }),
            queued: AtomicU32::new(0),
            running: AtomicU32::new(0),
            wq <- WaitQueue::new(c"fastio::Jobs::wq", kernel::static_lock_class!()),
        }))
    }

    /// Queues a job; gives it back if there is no memory for it.
    pub(crate) fn push(&self, job: Job) -> core::result::Result<(), Job> {
        {
            let mut inner = self.inner.lock();
            if inner.queue.reserve(1, GFP_KERNEL_ACCOUNT).is_err() {
                return Err(job);
            }
            if let Err(e) = inner.queue.push_within_capacity(job) {
                return Err(e.0);
            }
            self.queued.fetch_add(1, Ordering::SeqCst);
        }
        // One job, one helper: the others sleep on (helpers wait exclusively).
        self.wq.wake_one();
        Ok(())
    }

    /// Puts back a job its helper could not finish (interrupted by a signal), first.
    pub(crate) fn push_front(&self, job: Job) -> core::result::Result<(), Job> {
        let mut inner = self.inner.lock();
        if inner.queue.reserve(1, GFP_KERNEL_ACCOUNT).is_err() {
            return Err(job);
        }
        if let Err(e) = inner.queue.insert_within_capacity(0, job) {
            let (InsertError::IndexOutOfBounds(job) | InsertError::OutOfCapacity(job)) = e;
            return Err(job);
        }
        self.queued.fetch_add(1, Ordering::SeqCst);
        drop(inner);
        self.wq.wake_one();
        Ok(())
    }

    /// Helper `idx` starts serving: `-EBUSY` if it has a thread, `-EINVAL` out of range.
    pub(crate) fn attach(&self, idx: u32) -> Result {
        let mut inner = self.inner.lock();
        match inner.attached.get_mut(idx as usize) {
            None => Err(EINVAL),
            Some(true) => Err(EBUSY),
            Some(a) => {
                *a = true;
                Ok(())
            }
        }
    }

    pub(crate) fn detach(&self, idx: u32) {
        if let Some(a) = self.inner.lock().attached.get_mut(idx as usize) {
            *a = false;
        }
    }

    pub(crate) fn has_queued(&self) -> bool {
        self.queued.load(Ordering::SeqCst) != 0
    }

    /// Jobs queued or running.
    pub(crate) fn count(&self) -> u64 {
        self.queued.load(Ordering::Relaxed) as u64 + self.running.load(Ordering::Relaxed) as u64
    }

    /// Takes the oldest job for helper `idx` (the calling thread) and records it as
    /// running there.
    pub(crate) fn take(&self, idx: u32) -> Option<Job> {
        let mut inner = self.inner.lock();
        if inner.queue.is_empty() {
            return None;
        }
        let job = inner.queue.remove(0).ok()?;
        self.queued.fetch_sub(1, Ordering::SeqCst);
        let task = kernel::current!().as_ptr();
        if let Some(r) = inner.running.get_mut(idx as usize) {
            *r = Some(Running {
                task,
                file: job.file_ptr(),
                user_data: job.user_data,
                op: job.op,
                cancelled: false,
            });
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        Some(job)
    }

    /// Helper `idx` is done with its job; returns whether it was cancelled meanwhile.
    pub(crate) fn done(&self, idx: u32) -> bool {
        let mut inner = self.inner.lock();
        let r = inner.running.get_mut(idx as usize).and_then(Option::take);
        if r.is_some() {
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
        r.is_some_and(|r| r.cancelled)
    }

    /// Cancels the jobs `pred(file, user_data, op)` selects (`file` is null for a job
    /// without one): queued ones are marked (a
    /// helper completes them without running them), running ones are interrupted.
    /// Returns how many it selected.
    pub(crate) fn cancel(&self, pred: impl Fn(*const bindings::file, u64, &Op) -> bool) -> usize {
        let mut inner = self.inner.lock();
        let mut n = 0;
        for job in inner.queue.iter_mut() {
            if !job.cancelled && pred(job.file_ptr(), job.user_data, &job.op) {
                job.cancelled = true;
                n += 1;
            }
        }
        for r in inner.running.iter_mut().flatten() {
            if !r.cancelled && pred(r.file, r.user_data, &r.op) {
                r.cancelled = true;
                n += 1;
                // SAFETY: the helper is inside the module's ioctl while its entry
                // exists, and we hold the lock that keeps the entry: the task is alive.
                unsafe { sys::fastio_notify_signal(r.task) };
            }
        }
        drop(inner);
        self.wq.wake_all();
        n
    }

    /// Takes every queued job `pred` selects (SHUTDOWN, teardown). Out of memory, it
    /// takes none (they stay queued: never lost).
    pub(crate) fn take_where(&self, pred: impl Fn(&Job) -> bool) -> KVVec<Job> {
        let mut inner = self.inner.lock();
        let n = inner.queue.len();
        let mut out = KVVec::new();
        let mut keep = KVVec::new();
        if out.reserve(n, GFP_KERNEL_ACCOUNT).is_err()
            || keep.reserve(n, GFP_KERNEL_ACCOUNT).is_err()
        {
            return KVVec::new();
        }
        for job in core::mem::take(&mut inner.queue) {
            let dest = if pred(&job) { &mut out } else { &mut keep };
            // Cannot fail: both have room for every job.
            let _ = dest.push_within_capacity(job);
        }
        inner.queue = keep;
        self.queued
            .store(inner.queue.len() as u32, Ordering::SeqCst);
        out
    }

    /// Helper `idx` sleeps until a job is queued or `stop()` says so. Helpers wait
    /// exclusively: a queued job wakes one of them. One that leaves for a signal passes
    /// its wakeup on.
    pub(crate) fn wait(&self, stop: impl Fn() -> bool) -> core::result::Result<(), Interrupted> {
        let r = self
            .wq
            .wait_interruptible_exclusive(|| self.has_queued() || stop());
        if r.is_err() {
            self.pass_on();
        }
        r
    }

    /// A helper that was woken for a job leaves without taking it (a signal): another
    /// one must take it.
    pub(crate) fn pass_on(&self) {
        if self.has_queued() {
            self.wq.wake_one();
        }
    }
}
