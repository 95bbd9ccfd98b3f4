// SPDX-License-Identifier: GPL-2.0

//! What a set-up context's lanes, helpers and ioctls share: the parameters, the ring
//! memory, the file table, the waiting and blocking requests, the counters.
//!
//! Lock order (outer first): `PendingList::list` → (wait-queue and port internals, which
//! take no lock of ours). `files`, `buf_rings`, `Jobs::inner`, `cq_lock` and each lane's
//! CQ lock are leaves: no other lock of the module is taken while holding one of them.

use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

use kernel::{
    alloc::flags::{__GFP_ZERO, GFP_KERNEL_ACCOUNT},
    bindings,
    fs::File,
    new_condvar, new_mutex,
    prelude::*,
    sync::{aref::ARef, Arc, CondVar, Mutex},
};

use crate::abi;
use crate::files::FileTable;
use crate::limits::Charge;
use crate::offload::Jobs;
use crate::pbuf;
use crate::pending::PendingList;
use crate::ring::RingView;
use crate::waiters::Inline;

/// Counters behind `FASTIO_GET_STATS`.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) ops: AtomicU64,
    pub(crate) parked: AtomicU64,
    pub(crate) wakeups: AtomicU64,
    pub(crate) offloaded: AtomicU64,
    pub(crate) inline_ops: AtomicU64,
    pub(crate) lane_wakes: AtomicU64,
    pub(crate) polls: AtomicU64,
}

/// The shared state of a set-up context.
#[pin_data]
pub(crate) struct Shared {
    /// The validated SETUP parameters.
    pub(crate) params: abi::SetupParams,
    pub(crate) stats: Stats,
    /// SHUTDOWN (or teardown) started: lane and helper threads return.
    pub(crate) stopping: AtomicBool,
    /// Registered files by slot.
    #[pin]
    pub(crate) files: Mutex<FileTable>,
    /// Registered provided-buffer groups (pbuf.rs): validated copies of their
    /// descriptions and the kernel's heads (the ring and the buffers stay in user
    /// memory, reached only by user copies).
    #[pin]
    pub(crate) buf_rings: Mutex<pbuf::Groups>,
    /// Requests waiting for readiness.
    #[pin]
    pub(crate) pendings: PendingList,
    /// Requests waiting for or running on a helper thread.
    #[pin]
    pub(crate) jobs: Jobs,
    pub(crate) layout: abi::LaneLayout,
    pub(crate) mmap_size: u64,
    /// The ring memory (vmalloc pages, charged to the process's memory cgroup); locked
    /// only to hand its pages to mmap.
    #[pin]
    pub(crate) mem: Mutex<VVec<u8>>,
    /// Start of `mem`: stable, as the vector is never resized.
    base: *mut u8,
    /// `ENTER(GETEVENTS)` callers sleeping on `cq_cv`.
    cq_waiters: AtomicU32,
    #[pin]
    cq_lock: Mutex<()>,
    #[pin]
    cq_cv: CondVar,
    /// `ENTER(GETEVENTS | INLINE)` callers (inline.rs); woken like `cq_cv`'s.
    pub(crate) inline: Arc<Inline>,
    /// Contexts and locked memory counted against the owner's user.
    _charge: Charge,
    /// The device's `file_operations`: an OPENAT that opens /dev/fastio is refused.
    pub(crate) fops: *const bindings::file_operations,
}

// SAFETY: `base` points into `mem`, which `Shared` owns and never resizes; the ring
// memory is only accessed through atomics and volatile copies (ring.rs); `fops` is only
// compared, never dereferenced; the rest of `Shared` is made of Send + Sync parts.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// Allocates the ring memory and the tables for the validated `p`.
    pub(crate) fn new(
        p: &abi::SetupParams,
        layout: abi::LaneLayout,
        charge: Charge,
        fops: *const bindings::file_operations,
    ) -> Result<Arc<Self>> {
        // Bounded by MAX_MMAP_BYTES at validation: no overflow.
        let mmap_size = layout.lane_size * p.workers as u64;
        let mut mem =
            VVec::<u8>::with_capacity(mmap_size as usize, GFP_KERNEL_ACCOUNT | __GFP_ZERO)?;
        mem.resize(mmap_size as usize, 0, GFP_KERNEL_ACCOUNT)?;
        let base = mem.as_mut_ptr();
        let files = FileTable::new(p.max_files)?;
        let params = *p;
        let inline = Inline::new()?;
        Arc::pin_init(
            try_pin_init!(Shared {
                params,
                stats: Stats::default(),
                stopping: AtomicBool::new(false),
                files <- new_mutex!(files),
                buf_rings <- new_mutex!(KVec::new()),
                pendings <- PendingList::new(),
                jobs <- Jobs::new(p.helpers)?,
                layout,
                mmap_size,
                mem <- new_mutex!(mem),
                base,
                cq_waiters: AtomicU32::new(0),
                cq_lock <- new_mutex!(()),
                cq_cv <- new_condvar!(),
                inline,
                _charge: charge,
                fops,
            }? Error),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// Raw view of lane `i` of the ring memory (`i < workers`).
    pub(crate) fn lane_view(&self, i: u32) -> RingView {
        let off = |o: u32| i as usize * self.layout.lane_size as usize + o as usize;
        // SAFETY: lane_layout keeps every part of lane `i` inside its lane_size bytes,
        // and `mem` holds workers * lane_size bytes (validated at SETUP).
        unsafe {
            RingView::new(
                self.base.add(off(self.layout.sq_off)),
                self.base.add(off(self.layout.sqes_off)),
                self.base.add(off(self.layout.cq_off)),
                self.base.add(off(self.layout.cqes_off)),
                self.params.sq_entries,
                self.params.cq_entries,
            )
        }
    }

    /// Provided-buffer group `id`, if registered.
    pub(crate) fn group(&self, id: u16) -> Option<Arc<pbuf::Group>> {
        pbuf::find(&self.buf_rings.lock(), id)
    }

    /// Counts a request as a user of group `id`; false if it is not registered.
    pub(crate) fn use_group(&self, id: u16) -> bool {
        let groups = self.buf_rings.lock();
        match groups.iter().find(|g| g.ring.group == id) {
            Some(g) => {
                // At most one per request in flight: no overflow.
                g.users.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// A user of group `id` is done (see [`Self::use_group`]).
    pub(crate) fn release_group(&self, id: u16) {
        let groups = self.buf_rings.lock();
        if let Some(g) = groups.iter().find(|g| g.ring.group == id) {
            let _ = g
                .users
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// The file in `slot`, as a new reference.
    pub(crate) fn file(&self, slot: u32) -> Option<ARef<File>> {
        self.files.lock().get(slot)
    }

    /// Cancels every request on `file` (every request with `None`): waiting ones
    /// complete through their lanes, blocking ones through a helper (running ones are
    /// interrupted). Never waits.
    pub(crate) fn cancel_file(&self, file: Option<&File>) {
        let ptr = file.map(|f| f.as_ptr() as *const bindings::file);
        let is = move |f: *const bindings::file| ptr.is_none_or(|want| core::ptr::eq(f, want));
        self.pendings.cancel_where(|p| is(p.file.as_ptr()));
        self.jobs.cancel(|f, _, _| is(f));
    }

    /// CLOSE of `slot`: cancels the SENDFILEs that read from it (waiting for their
    /// socket, queued for or running on a helper).
    pub(crate) fn cancel_sendfiles_from(&self, slot: u32) {
        let from = |op: &abi::Op| matches!(*op, abi::Op::Sendfile { src, .. } if src == slot);
        self.pendings.cancel_where(|p| from(&p.op));
        self.jobs.cancel(|_, _, op| from(op));
    }

    /// ASYNC_CANCEL: cancels the requests whose `user_data` is `target`; returns how
    /// many were found (waiting for readiness or for/on a helper).
    pub(crate) fn cancel_user_data(&self, target: u64) -> usize {
        self.pendings.cancel_where(|p| p.user_data == target)
            + self.jobs.cancel(|_, ud, _| ud == target)
    }

    /// Called after posting completions: wakes `ENTER(GETEVENTS)` sleepers.
    pub(crate) fn notify_cq(&self) {
        // Pairs with the SeqCst increment of `cq_waiters` in `wait_cq` before it
        // re-checks the rings: either the waiter sees our tail or we see the waiter.
        fence(Ordering::SeqCst);
        if self.cq_waiters.load(Ordering::Relaxed) != 0 {
            let _g = self.cq_lock.lock();
            self.cq_cv.notify_all();
        }
        self.inline.wake();
    }

    /// Sleeps until `ready()` reaches `min`, the timeout passes (`ETIME`) or a signal
    /// comes (`EINTR`).
    pub(crate) fn wait_cq(&self, ready: impl Fn() -> u64, min: u32, timeout_ns: u64) -> Result {
        use kernel::sync::CondVarTimeoutResult;
        if ready() >= min as u64 {
            return Ok(());
        }
        let mut left = if timeout_ns == abi::TIMEOUT_NONE {
            None
        } else {
            let ms = timeout_ns.div_ceil(1_000_000).min(u32::MAX as u64) as u32;
            Some(kernel::time::msecs_to_jiffies(ms))
        };
        self.cq_waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.cq_lock.lock();
        let mut result = Ok(());
        while ready() < min as u64 {
            match left {
                None => {
                    if self.cq_cv.wait_interruptible(&mut guard) {
                        result = Err(EINTR);
                        break;
                    }
                }
                Some(j) => match self.cq_cv.wait_interruptible_timeout(&mut guard, j) {
                    CondVarTimeoutResult::Timeout => {
                        if ready() < min as u64 {
                            result = Err(ETIME);
                        }
                        break;
                    }
                    CondVarTimeoutResult::Signal { .. } => {
                        result = Err(EINTR);
                        break;
                    }
                    CondVarTimeoutResult::Woken { jiffies } => left = Some(jiffies),
                },
            }
        }
        drop(guard);
        self.cq_waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }
}
