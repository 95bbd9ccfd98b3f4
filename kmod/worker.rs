// SPDX-License-Identifier: GPL-2.0

//! The polling workers and their view of the ring memory.
//!
//! A worker drains its lane's SQ, reading each SQE once into a private copy and
//! validating it; spins for `idle_ms` after the last piece of work, giving way at once
//! to any other runnable task on its CPU (on a 2-core machine that is often the very
//! process it serves); then sets `SQ_NEED_WAKEUP`, re-checks the SQ and sleeps until
//! `ENTER(SQ_WAKEUP)` wakes it.

use core::ffi::{c_int, c_uint, c_void};
use core::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};

use kernel::{
    alloc::flags::GFP_KERNEL,
    bindings, new_condvar, new_mutex,
    prelude::*,
    sync::{Arc, ArcBorrow, CondVar, Mutex},
    task::Pid,
    time::{Delta, Instant, Monotonic},
};

use crate::abi::{self, Cqe, Op, RingHeader, Sqe};
use crate::context::Shared;
use crate::io::{issue, Pending};

extern "C" {
    /// `need_resched()`, from fastio_helpers.c.
    fn fastio_need_resched() -> bool;
    /// Exported by the scheduler: whether the current task is alone on its CPU.
    fn single_task_running() -> bool;
}

/// Raw pointers to one lane's rings inside the context's ring memory.
pub(crate) struct RingView {
    sq: *const RingHeader,
    sqes: *const Sqe,
    cq: *const RingHeader,
    cqes: *mut Cqe,
    sq_entries: u32,
    cq_entries: u32,
}

// SAFETY: the pointers lead into ring memory owned by the `Shared` that every holder of
// a `RingView` also holds; shared words are accessed only atomically, entries by volatile
// copies, and each CQE slot is written by this lane's worker alone.
unsafe impl Send for RingView {}
// SAFETY: as above.
unsafe impl Sync for RingView {}

impl RingView {
    /// # Safety
    ///
    /// The pointers must lead to a lane laid out as `abi::lane_layout(sq_entries,
    /// cq_entries)` describes, valid for as long as the view is used.
    pub(crate) unsafe fn new(
        sq: *mut u8,
        sqes: *mut u8,
        cq: *mut u8,
        cqes: *mut u8,
        sq_entries: u32,
        cq_entries: u32,
    ) -> Self {
        RingView {
            sq: sq.cast(),
            sqes: sqes.cast(),
            cq: cq.cast(),
            cqes: cqes.cast(),
            sq_entries,
            cq_entries,
        }
    }

    fn sq(&self) -> &RingHeader {
        // SAFETY: valid per `new`; only atomic fields are accessed through it.
        unsafe { &*self.sq }
    }

    fn cq(&self) -> &RingHeader {
        // SAFETY: as for `sq`.
        unsafe { &*self.cq }
    }

    /// Writes the informative ring descriptions (before userspace can map the memory).
    pub(crate) fn init_info(&self, lane: u32) {
        for (hdr, entries) in [(self.sq, self.sq_entries), (self.cq, self.cq_entries)] {
            let info = abi::RingInfo {
                entries,
                mask: entries - 1,
                lane,
                resv: 0,
            };
            // SAFETY: the header lies in fresh ring memory nobody else sees yet.
            unsafe { core::ptr::addr_of_mut!((*hdr.cast_mut()).info).write(info) };
        }
    }

    /// Completions waiting for userspace, clamped to the CQ size whatever the
    /// (untrusted) head says.
    pub(crate) fn cq_ready(&self) -> u32 {
        let tail = self.cq().tail.value.load(Ordering::Acquire);
        let head = self.cq().head.value.load(Ordering::Acquire);
        tail.wrapping_sub(head).min(self.cq_entries)
    }

    fn cq_free(&self, tail: u32) -> u32 {
        let head = self.cq().head.value.load(Ordering::Acquire);
        self.cq_entries.saturating_sub(tail.wrapping_sub(head))
    }

    fn sq_flags(&self) -> &AtomicU32 {
        &self.sq().flags.value
    }
}

/// The producer side of a CQ.
struct CqState {
    /// Our copy of the CQ tail (the shared one is only ever written from it).
    tail: u32,
    /// Requests taken from the SQ whose completion is not posted yet.
    reserved: u32,
}

/// One lane: its rings, its worker's sleep state.
#[pin_data]
pub(crate) struct Lane {
    idx: u32,
    shared: Arc<Shared>,
    pub(crate) ring: RingView,
    stop: AtomicBool,
    /// The CQ producer side: the worker and workqueue workers both post.
    #[pin]
    cq: Mutex<CqState>,
    /// A wakeup is pending.
    #[pin]
    sleep: Mutex<bool>,
    #[pin]
    wake: CondVar,
}

impl Lane {
    pub(crate) fn new(idx: u32, shared: Arc<Shared>, ring: RingView) -> Result<Arc<Self>> {
        let tail = ring.cq().tail.value.load(Ordering::Acquire);
        Arc::pin_init(
            pin_init!(Lane {
                idx,
                shared,
                ring,
                stop: AtomicBool::new(false),
                cq <- new_mutex!(CqState { tail, reserved: 0 }),
                sleep <- new_mutex!(false),
                wake <- new_condvar!(),
            }),
            GFP_KERNEL,
        )
    }

    /// `ENTER(SQ_WAKEUP)`.
    pub(crate) fn wake(&self) {
        let mut pending = self.sleep.lock();
        *pending = true;
        self.wake.notify_one();
    }

    /// Asks the worker to return; it checks the flag under the sleep lock, so the
    /// request cannot slip between its check and its sleep.
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _g = self.sleep.lock();
        self.wake.notify_all();
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Reserves CQ space for one more request; false when the CQ (counting requests
    /// still in flight) is full.
    fn reserve(&self) -> bool {
        let mut cq = self.cq.lock();
        if self.ring.cq_free(cq.tail) > cq.reserved {
            cq.reserved += 1;
            true
        } else {
            false
        }
    }

    /// Posts the completion of a request whose CQ space was reserved.
    pub(crate) fn post(&self, user_data: u64, res: i32) {
        {
            let mut cq = self.cq.lock();
            let idx = (cq.tail & (self.ring.cq_entries - 1)) as usize;
            let cqe = Cqe {
                user_data,
                res,
                flags: 0,
            };
            // SAFETY: masked index; the slot is free: it was reserved, and only holders
            // of this lock write CQEs of this lane.
            unsafe { self.ring.cqes.add(idx).write_volatile(cqe) };
            cq.tail = cq.tail.wrapping_add(1);
            self.ring.cq().tail.value.store(cq.tail, Ordering::Release);
            cq.reserved = cq.reserved.saturating_sub(1);
        }
        self.shared.notify_cq();
    }

    fn run(this: ArcBorrow<'_, Lane>) {
        let me: &Lane = &this;
        let idle = Delta::from_millis(me.shared.params.idle_ms as i64);
        let mut head = me.ring.sq().head.value.load(Ordering::Acquire);
        let mut last_work = Instant::<Monotonic>::now();
        while !me.stop.load(Ordering::Acquire) {
            if me.ring.sq().tail.value.load(Ordering::Acquire) != head {
                // One address-space and credentials switch per batch.
                let r = me.shared.owner.enter(|| me.drain(&this, &mut head, None));
                if let Err(e) = r {
                    // The process is exiting: complete what it queued with the error.
                    me.drain(&this, &mut head, Some(e));
                }
                last_work = Instant::now();
                continue;
            }
            if last_work.elapsed() < idle {
                me.pause();
                continue;
            }
            me.sleep(head);
            last_work = Instant::now();
        }
    }

    /// Takes SQEs while there are any and the CQ has room; runs them (or, with
    /// `fail`, completes them with that error).
    fn drain(&self, this: &ArcBorrow<'_, Lane>, head: &mut u32, fail: Option<i32>) -> u32 {
        let ring = &self.ring;
        let mut taken = 0;
        while taken < ring.sq_entries {
            if ring.sq().tail.value.load(Ordering::Acquire) == *head || !self.reserve() {
                break;
            }
            // SAFETY: the index is masked into the SQE array; the copy is taken once,
            // and only the copy is looked at from here on.
            let sqe = unsafe {
                ring.sqes
                    .add((*head & (ring.sq_entries - 1)) as usize)
                    .read_volatile()
            };
            *head = head.wrapping_add(1);
            ring.sq().head.value.store(*head, Ordering::Release);
            self.shared.stats.ops.fetch_add(1, Ordering::Relaxed);
            match fail {
                Some(e) => self.post(sqe.user_data, e),
                None => self.execute(this, &sqe),
            }
            taken += 1;
        }
        taken
    }

    /// One idle spin step: give the CPU away if anybody else wants it.
    fn pause(&self) {
        // SAFETY: plain queries of the current task's scheduler state.
        let others = unsafe { fastio_need_resched() || !single_task_running() };
        if others {
            // SAFETY: yield() may be called from any sleepable kernel thread context.
            unsafe { bindings::yield_() };
        } else {
            core::hint::spin_loop();
        }
    }

    /// Sets NEED_WAKEUP and sleeps unless work arrived meanwhile or a stop is pending.
    fn sleep(&self, head: u32) {
        let flags = self.ring.sq_flags();
        flags.fetch_or(abi::SQ_NEED_WAKEUP, Ordering::SeqCst);
        // Pairs with userspace's fence between publishing its tail and reading flags.
        fence(Ordering::SeqCst);
        if self.ring.sq().tail.value.load(Ordering::Acquire) == head {
            let mut pending = self.sleep.lock();
            while !*pending && !self.stop.load(Ordering::Acquire) {
                // Interruptible: an idle worker is not in D state. Kernel threads get
                // no signals, so a return is a wakeup (or a spurious one: loop).
                let _ = self.wake.wait_interruptible(&mut pending);
            }
            *pending = false;
        }
        flags.fetch_and(!abi::SQ_NEED_WAKEUP, Ordering::SeqCst);
    }

    /// Runs one request whose CQ space is reserved; it completes now or later.
    fn execute(&self, this: &ArcBorrow<'_, Lane>, sqe: &Sqe) {
        let user_data = sqe.user_data;
        let op = match abi::decode(sqe, self.shared.params.max_files) {
            Ok(op) => op,
            Err(e) => return self.post(user_data, -e.errno()),
        };
        match op {
            Op::Nop => self.post(user_data, 0),
            Op::Close { slot } => {
                // Requests waiting on the slot complete (-ECANCELED) before the CLOSE.
                self.shared.cancel_slot(slot);
                let res = if self.shared.close_slot(slot) {
                    0
                } else {
                    -(bindings::EBADF as i32)
                };
                self.post(user_data, res)
            }
            _ => {
                let slot = op.slot().unwrap_or(u32::MAX);
                let Some(file) = self.shared.file(slot) else {
                    return self.post(user_data, -(bindings::EBADF as i32));
                };
                let outcome = issue(self, &op, &file, false);
                let lane: Arc<Lane> = (*this).into();
                Pending::start(&lane, op, user_data, file, outcome);
            }
        }
    }
}

/// The thread function of a worker. `data` is the `Lane`, which the context's `Setup`
/// keeps alive until after `kthread_stop` has returned.
unsafe extern "C" fn worker_main(data: *mut c_void) -> c_int {
    // SAFETY: see above: the lane (inside an Arc) outlives this thread.
    let lane = unsafe { ArcBorrow::from_raw(data as *const Lane) };
    Lane::run(lane);
    0
}

/// Creates and starts the worker of `lane`, named `fastio-<pid>-<lane>`, pinned to CPU
/// `(affinity + lane) % nr_cpu_ids` when asked. Returns the task with a reference held.
pub(crate) fn spawn(
    lane: &Arc<Lane>,
    owner: Pid,
    affinity: Option<u32>,
) -> Result<*mut bindings::task_struct> {
    let data = Arc::as_ptr(lane) as *mut c_void;
    // SAFETY: `worker_main` matches the thread function type; `data` stays valid until
    // the task is stopped (see `worker_main`); the format takes an int and an unsigned.
    let task = unsafe {
        bindings::kthread_create_on_node(
            Some(worker_main),
            data,
            bindings::NUMA_NO_NODE,
            c"fastio-%d-%u".as_ptr().cast(),
            owner as c_int,
            lane.idx as c_uint,
        )
    };
    let addr = task as isize;
    if (-(bindings::MAX_ERRNO as isize)..0).contains(&addr) {
        return Err(Error::from_errno(addr as i32));
    }
    // SAFETY: `task` is a freshly created, not yet running kthread.
    unsafe {
        bindings::get_task_struct(task);
        if let Some(off) = affinity {
            let ncpu = bindings::nr_cpu_ids;
            bindings::kthread_bind(task, (off + lane.idx) % ncpu);
        }
        bindings::wake_up_process(task);
    }
    Ok(task)
}
