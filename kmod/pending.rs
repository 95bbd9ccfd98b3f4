// SPDX-License-Identifier: GPL-2.0

//! Requests waiting for readiness, and the port through which they go back to their
//! lane's thread.
//!
//! A request that would block on a pollable file becomes a [`Pending`] armed on the
//! file's poll wait queues. When the file becomes ready, the wake function (any context,
//! often softirq, under the wait queue's lock) moves it onto its lane's [`Port`] (a
//! lock-free list) and wakes the lane thread, which takes it off the wait queues and
//! re-issues it. No worker pool, no kworker hop; only the lane thread detaches, re-arms
//! or completes a request (or, once no lane thread can run any more, the teardown).
//!
//! States (one atomic word): `ARMING` (the lane thread is putting it on wait queues; a
//! wakeup meanwhile sets `WOKEN`) → `ARMED` → `READY` (on the port, owned by the lane)
//! → re-armed or `DONE`. A multishot request keeps its entries on the wait queues from
//! one reception to the next, as io_uring's multishot poll does: the lane takes it off
//! the port as `RUNNING` (a wakeup meanwhile sets `WOKEN`), steps it, and puts it back
//! to `ARMED` with one compare-exchange instead of a detach and a new poll — or, woken
//! meanwhile, straight onto the port; it is detached only when it ends. A canceller sets `cancelled` and moves an `ARMED` request to
//! `READY` itself, so cancellation is just another wakeup. `POLLFREE` (the wait queue
//! itself is going away: signalfd's sighand, binder...) is handled as io_uring/poll.c
//! does: the request is cancelled, and the entry is unlinked and its head forgotten
//! (release store, last) inside the wake function; a detaching lane reads the head with
//! acquire under RCU, and the queue's memory stays valid for that RCU grace period.
//!
//! Reference counting: arming converts one `Arc` reference into the raw `private`
//! pointer of the wait entries ("the armed reference"). It moves, without a count
//! change, to the port when the request becomes `READY`, and back into an `Arc` when the
//! lane takes it off the port. A `RUNNING` request's entries stay on the queues while
//! the lane holds that `Arc`: it becomes the armed reference again (`rearm_running`),
//! moves to the port, or is dropped only after the entries left the queues (detach).

use core::ffi::{c_int, c_uint, c_void};
use core::ptr::null_mut;
use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use kernel::{
    alloc::flags::{GFP_KERNEL, GFP_KERNEL_ACCOUNT},
    bindings,
    fs::File,
    new_mutex,
    prelude::*,
    sync::aref::ARef,
    sync::Arc,
    sync::Mutex,
    types::Opaque,
};

use crate::abi::Op;
use crate::sys::{self, EPOLLERR, EPOLLHUP, POLLFREE};
use crate::waiters::Inline;
use crate::waitq::WaitQueue;

const ARMING: u32 = 1;
const WOKEN: u32 = 1 << 8;
const ARMED: u32 = 2;
const READY: u32 = 3;
const DONE: u32 = 4;
/// Taken off the port with its entries left on the wait queues (a multishot request
/// being stepped); a wakeup meanwhile sets `WOKEN`.
const RUNNING: u32 = 5;

/// A file calls the poll queue procedure once per wait queue it has (a pipe: two).
const MAX_HEADS: usize = 2;

/// Where ready requests go back to a lane thread: a lock-free stack (pushed from any
/// context, taken whole by the lane thread) and the queue the lane thread sleeps on.
#[pin_data]
pub(crate) struct Port {
    head: AtomicPtr<Pending>,
    /// The lane thread is about to sleep or sleeping (it set NEED_WAKEUP): a pusher
    /// must wake it.
    pub(crate) sleeping: AtomicBool,
    /// A wakeup was requested (ENTER, a ready request, teardown).
    pub(crate) kicked: AtomicBool,
    #[pin]
    pub(crate) wq: WaitQueue,
    /// The context's inline waiters, who take ready requests while the lane thread
    /// sleeps (inline.rs).
    inline: Arc<Inline>,
}

impl Port {
    pub(crate) fn new(inline: Arc<Inline>) -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Port {
                head: AtomicPtr::new(null_mut()),
                sleeping: AtomicBool::new(false),
                kicked: AtomicBool::new(false),
                wq <- WaitQueue::new(c"fastio::Port::wq", kernel::static_lock_class!()),
                inline,
            }),
            GFP_KERNEL,
        )
    }

    /// Wakes the lane thread (any context).
    pub(crate) fn kick(&self) {
        self.kicked.store(true, Ordering::SeqCst);
        self.wq.wake_all();
    }

    /// Pushes a READY request (its armed reference moves into the stack) and wakes the
    /// lane thread if it may be asleep, or instead the context's inline waiters if there
    /// are any (they run the request; the lane thread sleeps on). Any context.
    fn push(&self, p: *const Pending) {
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: `p` is a READY request kept alive by the armed reference that
            // moves into the stack; only the pusher touches its `next` until the push.
            unsafe { (*p).next.store(head, Ordering::Relaxed) };
            match self.head.compare_exchange_weak(
                head,
                p.cast_mut(),
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
        // Pairs with the lane's `sleeping` store + fence + `has_ready` check, and with
        // an inline waiter's `waiters` decrement + fence + `has_ready` check.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            if self.inline.has_waiters() {
                self.inline.wq.wake_all();
            } else if !self.inline.deferring() {
                self.wq.wake_all();
            }
        }
    }

    pub(crate) fn has_ready(&self) -> bool {
        !self.head.load(Ordering::SeqCst).is_null()
    }

    /// Takes every ready request, oldest first, and hands each to `f` (with the
    /// armed reference it owned). Allocates nothing; requests pushed meanwhile wait
    /// for the next call.
    pub(crate) fn drain(&self, mut f: impl FnMut(Arc<Pending>)) -> u32 {
        let mut list = self.head.swap(null_mut(), Ordering::SeqCst);
        // Reverse into push order.
        let mut rev: *mut Pending = null_mut();
        while !list.is_null() {
            // SAFETY: every entry is a READY request whose armed reference the stack
            // owns; we own the whole list since the swap.
            let next = unsafe { (*list).next.load(Ordering::Relaxed) };
            // SAFETY: as above.
            unsafe { (*list).next.store(rev, Ordering::Relaxed) };
            rev = list;
            list = next;
        }
        let mut n = 0;
        while !rev.is_null() {
            // SAFETY: as above; `next` is read before the request is handed on.
            let next = unsafe { (*rev).next.load(Ordering::Relaxed) };
            // SAFETY: takes back the armed reference the stack owned.
            f(unsafe { Arc::from_raw(rev) });
            n += 1;
            rev = next;
        }
        n
    }
}

/// A request waiting for readiness.
#[pin_data]
pub(crate) struct Pending {
    /// Index of the lane whose thread owns the request.
    pub(crate) lane: u32,
    /// The lane's port.
    port: Arc<Port>,
    /// The request.
    pub(crate) op: Op,
    pub(crate) user_data: u64,
    pub(crate) file: ARef<File>,
    /// Poll events that make it worth re-issuing.
    pub(crate) events: u32,
    state: AtomicU32,
    cancelled: AtomicBool,
    /// Place in the context's pending list (see `PendingList`).
    pub(crate) index: AtomicUsize,
    /// A multishot ACCEPT's next slot to try, relative to its range (lane thread only).
    pub(crate) hint: AtomicU32,
    next: AtomicPtr<Pending>,
    /// Wait queues joined by the last arming (set by `qproc`).
    joined: AtomicU32,
    heads: [AtomicPtr<bindings::wait_queue_head>; MAX_HEADS],
    #[pin]
    waits: [Opaque<bindings::wait_queue_entry>; MAX_HEADS],
    #[pin]
    pt: Opaque<bindings::poll_table_struct>,
}

// SAFETY: the wait-queue entries, poll table and head pointers are only touched under
// the state protocol in the module doc (the lane thread arms and detaches; the wake
// function only reads `private` and, for POLLFREE, unlinks under the queue's lock);
// everything else is Send + Sync.
unsafe impl Send for Pending {}
// SAFETY: as above.
unsafe impl Sync for Pending {}

/// What [`Pending::arm`] came to.
pub(crate) enum Armed {
    /// On the wait queues; it comes back through the port.
    Waiting,
    /// The file has no wait queue: it can never report readiness.
    NoQueue(Arc<Pending>),
}

impl Pending {
    pub(crate) fn new(
        lane: u32,
        port: &Arc<Port>,
        op: Op,
        user_data: u64,
        file: ARef<File>,
        events: u32,
    ) -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Pending {
                lane,
                port: port.clone(),
                op,
                user_data,
                file,
                events,
                state: AtomicU32::new(DONE),
                cancelled: AtomicBool::new(false),
                index: AtomicUsize::new(usize::MAX),
                hint: AtomicU32::new(0),
                next: AtomicPtr::new(null_mut()),
                joined: AtomicU32::new(0),
                heads: [AtomicPtr::new(null_mut()), AtomicPtr::new(null_mut())],
                waits <- pin_init::init_zeroed(),
                pt <- pin_init::init_zeroed(),
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Puts the request on its file's wait queues (lane thread only, with the request
    /// detached). If it is ready already, woke meanwhile or was cancelled, it goes
    /// straight to the port.
    pub(crate) fn arm(this: Arc<Self>) -> Armed {
        this.state.store(ARMING, Ordering::SeqCst);
        let raw = Arc::into_raw(this);
        // SAFETY: `raw` carries the armed reference, alive until it is taken back.
        let me = unsafe { &*raw };
        for (i, w) in me.waits.iter().enumerate() {
            // SAFETY: the entry is ours and on no queue (detached before any re-arm).
            unsafe {
                sys::fastio_init_wait_entry(w.get(), Some(wake_fn));
                (*w.get()).private = raw.cast_mut().cast();
            }
            me.heads[i].store(null_mut(), Ordering::SeqCst);
        }
        me.joined.store(0, Ordering::SeqCst);
        let want = me.events | EPOLLERR | EPOLLHUP;
        // SAFETY: the file is held; `pt` is ours; qproc finds `me` from `pt` and adds
        // our entries to the file's queues.
        let mask =
            unsafe { sys::fastio_vfs_poll(me.file.as_ptr(), me.pt.get(), Some(qproc), want) };
        if me.joined.load(Ordering::SeqCst) == 0 {
            // Not on any queue (the file has none), so nothing else can have seen `raw`.
            // (A queue joined and freed meanwhile — POLLFREE — still counts as joined:
            // the request then takes the woken path below and completes -ECANCELED.)
            me.state.store(DONE, Ordering::SeqCst);
            // SAFETY: takes back the armed reference.
            return Armed::NoQueue(unsafe { Arc::from_raw(raw) });
        }
        Self::settle(raw, ARMING, mask & want != 0);
        Armed::Waiting
    }

    /// ARMED → READY (the armed reference moves to the port); false if the request was
    /// not ARMED. Any context.
    fn make_ready(&self) -> bool {
        if self
            .state
            .compare_exchange(ARMED, READY, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.port.push(self);
            true
        } else {
            false
        }
    }

    /// Cancels the request: it completes with `-ECANCELED` through its lane (unless it
    /// completes first). Never waits.
    /// Returns false if it was cancelled already.
    pub(crate) fn cancel(&self) -> bool {
        let first = !self.cancelled.swap(true, Ordering::SeqCst);
        // ARMING, RUNNING: the lane checks `cancelled` after arming / re-arming.
        // READY/DONE: the lane sees it.
        self.make_ready();
        first
    }

    /// Takes the entries off the wait queues. Lane thread (or teardown), READY state.
    pub(crate) fn detach(&self) {
        let _rcu = kernel::sync::rcu::read_lock();
        for (i, h) in self.heads.iter().enumerate() {
            // Acquire pairs with the release store of POLLFREE in `wake_fn`.
            let head = h.swap(null_mut(), Ordering::Acquire);
            if !head.is_null() {
                // SAFETY: `head` is a queue of our file, which we hold; or one being
                // freed after POLLFREE, whose memory stays valid for this RCU read
                // section (the POLLFREE rule). Removal of an entry that POLLFREE
                // unlinked already is a no-op on its self-linked list node.
                unsafe { bindings::remove_wait_queue(head, self.waits[i].get()) };
            }
        }
    }

    /// Whether the request has entries on wait queues (lane thread, READY or RUNNING).
    pub(crate) fn is_attached(&self) -> bool {
        self.heads
            .iter()
            .any(|h| !h.load(Ordering::Acquire).is_null())
    }

    /// READY → RUNNING for a request taken off the port whose entries stay on the wait
    /// queues (lane thread). A wakeup from now on sets `WOKEN`.
    pub(crate) fn set_running(&self) {
        self.state.store(RUNNING, Ordering::SeqCst);
    }

    /// Whether the request is RUNNING (with or without `WOKEN`).
    pub(crate) fn is_running(&self) -> bool {
        self.state.load(Ordering::SeqCst) & 0xff == RUNNING
    }

    /// RUNNING → ARMED: the request would block and its entries are still on the wait
    /// queues, so the reference the lane held becomes the armed reference again, without
    /// a new poll. Woken meanwhile (data came, a POLLFREE) it goes to the port instead;
    /// cancelled meanwhile, too. Lane thread.
    pub(crate) fn rearm_running(this: Arc<Self>) {
        Self::settle(Arc::into_raw(this), RUNNING, false);
    }

    /// `from` (ARMING or RUNNING) → ARMED. Woken meanwhile (`WOKEN`), the armed
    /// reference `raw` goes to the port instead; found `ready` by the poll, or cancelled
    /// (a cancel that saw `from` left the request to the lane), it goes there too.
    fn settle(raw: *const Pending, from: u32, ready: bool) {
        // SAFETY: `raw` carries the armed reference, alive until it is taken back.
        let me = unsafe { &*raw };
        if me
            .state
            .compare_exchange(from, ARMED, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            me.state.store(READY, Ordering::SeqCst);
            me.port.push(raw);
            return;
        }
        if ready || me.is_cancelled() {
            me.make_ready();
        }
    }

    /// RUNNING → READY and onto the port (its round's share is used up; data may be
    /// waiting, which no new wakeup would report). Lane thread.
    pub(crate) fn requeue_running(this: Arc<Self>) {
        this.state.store(READY, Ordering::SeqCst);
        let raw = Arc::into_raw(this);
        // SAFETY: the armed reference moves into the port.
        unsafe { (*raw).port.push(raw) };
    }

    /// Marks the request completed (its armed reference is gone).
    pub(crate) fn set_done(&self) {
        self.state.store(DONE, Ordering::SeqCst);
    }
}

/// The poll queue procedure: records the wait-queue head and joins it.
unsafe extern "C" fn qproc(
    _file: *mut bindings::file,
    head: *mut bindings::wait_queue_head,
    pt: *mut bindings::poll_table_struct,
) {
    // SAFETY: `pt` is the `pt` field of a Pending being armed (see `arm`).
    let me =
        unsafe { &*(pt.cast::<u8>().sub(core::mem::offset_of!(Pending, pt)) as *const Pending) };
    for (i, h) in me.heads.iter().enumerate() {
        if h.load(Ordering::SeqCst).is_null() {
            h.store(head, Ordering::SeqCst);
            me.joined.fetch_add(1, Ordering::SeqCst);
            // SAFETY: `head` is a live wait-queue head of the file being polled; the
            // entry is initialised and on no queue.
            unsafe { bindings::add_wait_queue(head, me.waits[i].get()) };
            return;
        }
    }
    // More queues than we wait on: the ones we joined still report readiness.
}

/// Wait-queue wake function: runs in any context under the queue's lock. Only moves
/// the request to its lane's port; never sleeps, never takes a lock.
unsafe extern "C" fn wake_fn(
    wq: *mut bindings::wait_queue_entry,
    _mode: c_uint,
    _sync: c_int,
    key: *mut c_void,
) -> c_int {
    // SAFETY: `private` is the request, alive: its armed reference (or the lane's, while
    // RUNNING) is only given back after the entry left the queue (detach takes this
    // queue's lock).
    let me = unsafe { &*((*wq).private as *const Pending) };
    let events = key as usize as u32;
    if events & POLLFREE != 0 {
        // The queue is being freed: cancel, then unlink and forget the head, the head
        // last (release): once it is null a detaching lane no longer takes the lock,
        // so after that store the request may be freed (io_uring/poll.c).
        me.cancelled.store(true, Ordering::SeqCst);
        wake(me);
        let i = if core::ptr::eq(wq, me.waits[1].get()) {
            1
        } else {
            0
        };
        // SAFETY: we run under this queue's lock, with the entry on it.
        unsafe { sys::fastio_wait_entry_del_careful(wq) };
        me.heads[i].store(null_mut(), Ordering::Release);
        return 0;
    }
    if events != 0 && events & (me.events | EPOLLERR | EPOLLHUP) == 0 {
        return 0;
    }
    wake(me);
    0
}

/// ARMED → READY, or marks a wakeup that came while ARMING or RUNNING.
fn wake(me: &Pending) {
    let mut s = me.state.load(Ordering::SeqCst);
    loop {
        if s == ARMED {
            if me.make_ready() {
                return;
            }
        } else if (s & 0xff == ARMING || s & 0xff == RUNNING) && s & WOKEN == 0 {
            if me
                .state
                .compare_exchange(s, s | WOKEN, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return;
            }
        } else {
            return;
        }
        s = me.state.load(Ordering::SeqCst);
    }
}

/// The context's waiting requests, for cancellation by file or lane and for teardown.
/// O(1) insert and removal (each request knows its index).
#[pin_data]
pub(crate) struct PendingList {
    #[pin]
    list: Mutex<KVVec<Arc<Pending>>>,
}

impl PendingList {
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(PendingList {
            list <- new_mutex!(KVVec::new()),
        })
    }

    pub(crate) fn insert(&self, p: &Arc<Pending>) -> Result {
        let mut list = self.list.lock();
        p.index.store(list.len(), Ordering::Relaxed);
        list.push(p.clone(), GFP_KERNEL_ACCOUNT)?;
        Ok(())
    }

    pub(crate) fn remove(&self, p: &Pending) {
        let old = {
            let mut list = self.list.lock();
            let i = p.index.swap(usize::MAX, Ordering::Relaxed);
            if i >= list.len() || !core::ptr::eq(&*list[i], p) {
                return;
            }
            let last = list.len() - 1;
            list.swap(i, last);
            let old = list.pop();
            if let Some(moved) = list.get(i) {
                moved.index.store(i, Ordering::Relaxed);
            }
            old
        };
        // The list's reference is dropped outside the lock.
        drop(old);
    }

    pub(crate) fn len(&self) -> usize {
        self.list.lock().len()
    }

    /// Cancels every request `pred` selects (they complete through their lanes);
    /// returns how many were not cancelled before.
    pub(crate) fn cancel_where(&self, pred: impl Fn(&Pending) -> bool) -> usize {
        let list = self.list.lock();
        list.iter()
            .filter(|p| pred(p))
            .filter(|p| p.cancel())
            .count()
    }

    /// Takes every request `pred` selects off its wait queues. Once this returns, no
    /// wake function is still working on one of them (each detach takes the queue's
    /// lock), and every cancel that ran before has pushed its request.
    pub(crate) fn detach_where(&self, pred: impl Fn(&Pending) -> bool) {
        let list = self.list.lock();
        for p in list.iter().filter(|p| pred(p)) {
            p.detach();
        }
    }

    /// Whether a request `pred` selects is still waiting.
    pub(crate) fn any(&self, pred: impl Fn(&Pending) -> bool) -> bool {
        self.list.lock().iter().any(|p| pred(p))
    }

    /// Last resort of a teardown that could not complete every request: they are
    /// leaked (never freed while a wait queue may still point at them).
    pub(crate) fn leak_all(&self) {
        let mut list = self.list.lock();
        while let Some(p) = list.pop() {
            core::mem::forget(p);
        }
    }
}
