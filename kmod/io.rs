// SPDX-License-Identifier: GPL-2.0

//! Running requests on behalf of the owning process, and waiting for readiness.
//!
//! Every request runs inside [`Owner::enter`]: the process's address space
//! (`kthread_use_mm`, with an `mm_users` reference taken for the call only, so a
//! context never keeps a dead process's memory alive) and its credentials
//! (`override_creds`), so a request can do nothing the process could not do itself.
//!
//! Each request is first issued without blocking ([`issue`]). When it would block:
//! - a pollable file (socket, pipe) gets a [`Pending`] armed on its poll wait queues;
//!   the wake function queues the pending request's work on the module workqueue,
//!   which re-issues it. No busy retry, no thread per idle connection;
//! - a regular file whose data is not cached (a READ copies only cached pages and starts
//!   no readahead: `IOCB_NOIO`; a WRITE uses `RWF_NOWAIT`: `-EAGAIN`), or a file that
//!   cannot do non-blocking I/O at all, gets a [`Pending`] queued straight away: the
//!   work does the blocking call. A READ or WRITE of a regular file that was partly
//!   done without blocking is finished the same way, from where it stopped.
//!
//! Both post to the request's lane, whose CQ space was reserved when the SQE was
//! taken, so no completion is ever dropped.
//!
//! A `Pending` goes IDLE → ARMED (on wait queues, holding one `Arc` reference of its
//! own) → QUEUED (the wake function moved that reference into the workqueue) → DONE,
//! or to CANCELLED from ARMED. Wait-queue entries are only removed in process context
//! (the work, or the canceller), never in the wake function, which runs in softirq
//! under the wait-queue lock.

use core::ffi::{c_int, c_uint, c_void};
use core::ptr::{null_mut, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};

use kernel::{
    alloc::flags::GFP_KERNEL,
    bindings,
    cred::Credential,
    fs::File,
    mm::Mm,
    new_work,
    prelude::*,
    sync::{aref::ARef, Arc},
    types::Opaque,
    workqueue::{self, impl_has_work, Work, WorkItem},
};

use crate::abi::{self, Op};
use crate::worker::Lane;

#[allow(improper_ctypes)]
extern "C" {
    fn fastio_get_current_cred() -> *const bindings::cred;
    fn fastio_override_creds(cred: *const bindings::cred) -> *const bindings::cred;
    fn fastio_revert_creds(old: *const bindings::cred);
    fn fastio_init_wait_entry(wq: *mut bindings::wait_queue_entry, f: bindings::wait_queue_func_t);
    fn fastio_vfs_poll(
        file: *mut bindings::file,
        pt: *mut bindings::poll_table_struct,
        qproc: bindings::poll_queue_proc,
        events: c_uint,
    ) -> c_uint;
    fn fastio_read_cached(
        file: *mut bindings::file,
        iter: *mut bindings::iov_iter,
        pos: *mut i64,
    ) -> isize;
}

// Constants that are macros with casts in C, so bindgen does not export them.
const RWF_NOWAIT: i32 = 8;
const FMODE_NOWAIT: u32 = 1 << 27;
const EPOLLIN: u32 = 0x1;
const EPOLLOUT: u32 = 0x4;
const EPOLLERR: u32 = 0x8;
const EPOLLHUP: u32 = 0x10;
const EPOLLRDHUP: u32 = 0x2000;
const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;
/// UIO_FASTIOV: iovecs import_iovec copies into the caller's array.
const FAST_IOVECS: usize = 8;

fn neg(code: u32) -> i32 {
    -(code as i32)
}

/// The identity requests run with: the process's address space and credentials.
pub(crate) struct Owner {
    mm: ARef<Mm>,
    cred: ARef<Credential>,
}

impl Owner {
    /// The calling process (called from the SETUP ioctl).
    pub(crate) fn current(mm: ARef<Mm>) -> Result<Self> {
        // SAFETY: returns a counted reference to the caller's credentials, which we own.
        let raw = unsafe { fastio_get_current_cred() };
        let raw = NonNull::new(raw.cast_mut()).ok_or(EINVAL)?;
        // SAFETY: `raw` is a valid `cred` with one reference that we hand to the ARef;
        // `Credential` is a transparent wrapper of `struct cred`.
        let cred = unsafe { ARef::from_raw(raw.cast::<Credential>()) };
        Ok(Owner { mm, cred })
    }

    /// Runs `f` in the process's address space and with its credentials. Fails with
    /// `-ESRCH` when the process's address space is already gone (it is exiting).
    pub(crate) fn enter<R>(&self, f: impl FnOnce() -> R) -> core::result::Result<R, i32> {
        let mm = self.mm.mmget_not_zero().ok_or(neg(bindings::ESRCH))?;
        // SAFETY: we are a kernel thread or a kworker, and we hold `mm_users` through
        // `mm` for the whole window; the credentials outlive it (we hold a reference).
        let old = unsafe {
            bindings::kthread_use_mm(mm.as_raw());
            fastio_override_creds(self.cred.as_ptr())
        };
        let r = f();
        // SAFETY: undoes the two calls above in reverse order.
        unsafe {
            fastio_revert_creds(old);
            bindings::kthread_unuse_mm(mm.as_raw());
        }
        // The last `mm_users` reference may go here if the process exited meanwhile;
        // releasing the address space then closes /dev/fastio, whose release is deferred
        // (fput from a kernel thread), so it never runs inside this call.
        drop(mm);
        Ok(r)
    }
}

/// What one non-blocking attempt came to.
pub(crate) enum Outcome {
    /// Finished: the CQE result.
    Done(i32),
    /// Would block on a pollable file: wait for these poll events.
    Wait(u32),
    /// A regular (or non-pollable) file: do the blocking call in a workqueue worker.
    Offload,
    /// A regular file transferred this many bytes (fewer than asked, not at end of file)
    /// without blocking: a workqueue worker transfers the rest.
    Partial(u32),
}

/// `op` with its first `n` bytes done (READ and WRITE; other requests are returned
/// unchanged). `n` is below the request's length.
fn advance(mut op: Op, n: u32) -> Op {
    if let Op::Read { addr, len, off, .. } | Op::Write { addr, len, off, .. } = &mut op {
        *addr = addr.wrapping_add(n as u64);
        *len = len.saturating_sub(n);
        if *off != abi::OFF_CURRENT {
            *off = off.wrapping_add(n as u64);
        }
    }
    op
}

/// Whether position `pos` is at or past the end of `file`.
fn at_eof(file: &File, pos: i64) -> bool {
    // SAFETY: an open file always has an inode; i_size is read racily, like
    // i_size_read() does on 64-bit machines: a hint only.
    let size = unsafe { core::ptr::read_volatile(&(*(*file.as_ptr()).f_inode).i_size) };
    pos >= size
}

fn is_regular(file: &File) -> bool {
    // SAFETY: an open file always has an inode, and its mode does not change type.
    let mode = unsafe { (*(*file.as_ptr()).f_inode).i_mode };
    mode & S_IFMT == S_IFREG
}

fn can_nowait(file: &File) -> bool {
    // SAFETY: f_mode is fixed once the file is open.
    unsafe { (*file.as_ptr()).f_mode & FMODE_NOWAIT != 0 }
}

fn socket_of(file: &File) -> Option<*mut bindings::socket> {
    // SAFETY: sock_from_file only reads the file's operations and private data.
    let s = unsafe { bindings::sock_from_file(file.as_ptr()) };
    (!s.is_null()).then_some(s)
}

/// A zeroed `msghdr` whose iterator covers the user buffer `addr..addr+len`.
fn user_msg(dir: u32, addr: u64, len: u32) -> core::result::Result<bindings::msghdr, i32> {
    // SAFETY: msghdr is plain C data for which all-zero is the empty value.
    let mut msg: bindings::msghdr = unsafe { core::mem::zeroed() };
    // SAFETY: import_ubuf only checks the range with access_ok and fills the iterator;
    // the copy happens later, inside the owner's address space.
    let r = unsafe {
        bindings::import_ubuf(
            dir as c_int,
            addr as usize as *mut c_void,
            len as usize,
            &mut msg.msg_iter,
        )
    };
    if r < 0 {
        return Err(r);
    }
    Ok(msg)
}

/// Issues `op` once. Must run inside [`Owner::enter`]. With `blocking`, file I/O may
/// sleep (workqueue context) and is repeated until complete, end of file or error.
pub(crate) fn issue(lane: &Lane, op: &Op, file: &ARef<File>, blocking: bool) -> Outcome {
    match *op {
        Op::Accept { dest, flags, .. } => accept(lane, file, dest, flags),
        Op::Recv {
            addr, len, flags, ..
        } => {
            let Some(sock) = socket_of(file) else {
                return Outcome::Done(neg(bindings::ENOTSOCK));
            };
            let mut msg = match user_msg(bindings::ITER_DEST, addr, len) {
                Ok(m) => m,
                Err(e) => return Outcome::Done(e),
            };
            // SAFETY: `sock` belongs to `file`, which we hold; `msg` is initialised.
            let r = unsafe {
                bindings::sock_recvmsg(sock, &mut msg, (flags | abi::MSG_DONTWAIT) as c_int)
            };
            would_block(r, flags, EPOLLIN | EPOLLRDHUP)
        }
        Op::Send {
            addr, len, flags, ..
        } => {
            let Some(sock) = socket_of(file) else {
                return Outcome::Done(neg(bindings::ENOTSOCK));
            };
            let mut msg = match user_msg(bindings::ITER_SOURCE, addr, len) {
                Ok(m) => m,
                Err(e) => return Outcome::Done(e),
            };
            msg.msg_flags = (flags | abi::MSG_DONTWAIT | abi::MSG_NOSIGNAL) as c_uint;
            // SAFETY: as for RECV.
            let r = unsafe { bindings::sock_sendmsg(sock, &mut msg) };
            would_block(r, flags, EPOLLOUT)
        }
        Op::Read { addr, len, off, .. } => rw(file, bindings::ITER_DEST, addr, len, off, blocking),
        Op::Write { addr, len, off, .. } => {
            rw(file, bindings::ITER_SOURCE, addr, len, off, blocking)
        }
        Op::Writev {
            iov, count, off, ..
        } => writev(file, iov, count, off, blocking),
        Op::Nop | Op::Close { .. } => Outcome::Done(0),
    }
}

/// `-EAGAIN` from a socket call: wait for readiness, unless the request itself asked for
/// `MSG_DONTWAIT` (then `-EAGAIN` is its answer).
fn would_block(r: c_int, flags: u32, events: u32) -> Outcome {
    if r == neg(bindings::EAGAIN) && flags & abi::MSG_DONTWAIT == 0 {
        Outcome::Wait(events)
    } else {
        Outcome::Done(r)
    }
}

fn accept(lane: &Lane, file: &ARef<File>, dest: u32, flags: u32) -> Outcome {
    let Some(sock) = socket_of(file) else {
        return Outcome::Done(neg(bindings::ENOTSOCK));
    };
    let mut new: *mut bindings::socket = null_mut();
    // SAFETY: `sock` belongs to `file`, which we hold; `new` receives a new socket.
    let r = unsafe { bindings::kernel_accept(sock, &mut new, bindings::O_NONBLOCK as c_int) };
    if r == neg(bindings::EAGAIN) {
        return Outcome::Wait(EPOLLIN);
    }
    if r < 0 {
        return Outcome::Done(r);
    }
    let fflags = if flags & abi::ACCEPT_NONBLOCK != 0 {
        bindings::O_NONBLOCK
    } else {
        0
    };
    // SAFETY: `new` is the accepted socket; sock_alloc_file takes it over (and releases
    // it itself on failure).
    let f = unsafe { bindings::sock_alloc_file(new, fflags as c_int, core::ptr::null()) };
    let addr = f as isize;
    if (-(bindings::MAX_ERRNO as isize)..0).contains(&addr) {
        return Outcome::Done(addr as i32);
    }
    // SAFETY: sock_alloc_file returned a file with one reference, which the ARef adopts.
    let file = unsafe { ARef::from_raw(NonNull::new_unchecked(f.cast::<File>())) };
    Outcome::Done(match lane.shared().install(dest, file) {
        Ok(()) => dest as i32,
        Err(e) => e,
    })
}

fn rw(file: &ARef<File>, dir: u32, addr: u64, len: u32, off: u64, blocking: bool) -> Outcome {
    let regular = is_regular(file);
    if !blocking && !can_nowait(file) {
        // tmpfs, 9p and friends: no non-blocking mode; only a worker may wait on them.
        return Outcome::Offload;
    }
    let mut done: u32 = 0;
    loop {
        // `done` < `len`, and `addr..addr + len` passed access_ok: no overflow here.
        let mut msg = match user_msg(dir, addr.wrapping_add(done as u64), len - done) {
            Ok(m) => m,
            Err(e) => return Outcome::Done(if done > 0 { done as i32 } else { e }),
        };
        // Only used when `off` is not OFF_CURRENT (u64::MAX, which must not overflow).
        let mut local = off.wrapping_add(done as u64) as i64;
        // SAFETY: the position lives in the file (racy like any shared file offset,
        // as with io_uring's -1 offset) or in `local`.
        let pos: *mut i64 = if off == abi::OFF_CURRENT {
            unsafe { &mut (*file.as_ptr()).f_pos }
        } else {
            &mut local
        };
        let rwf = if blocking { 0 } else { RWF_NOWAIT };
        // SAFETY: `file` is held, the iterator describes user memory of the owner, whose
        // address space we are in.
        let r = unsafe {
            if dir == bindings::ITER_DEST && regular && !blocking {
                // Only what is cached: never readahead I/O from a polling worker.
                fastio_read_cached(file.as_ptr(), &mut msg.msg_iter, pos)
            } else if dir == bindings::ITER_DEST {
                bindings::vfs_iter_read(file.as_ptr(), &mut msg.msg_iter, pos, rwf)
            } else {
                bindings::vfs_iter_write(file.as_ptr(), &mut msg.msg_iter, pos, rwf)
            }
        } as i32;
        if !blocking {
            if r == neg(bindings::EAGAIN) || r == neg(bindings::EOPNOTSUPP) {
                return if regular || r == neg(bindings::EOPNOTSUPP) {
                    Outcome::Offload
                } else {
                    Outcome::Wait(if dir == bindings::ITER_DEST {
                        EPOLLIN
                    } else {
                        EPOLLOUT
                    })
                };
            }
            // A short transfer of a regular file that is not at its end: part of the
            // range is not in the page cache (or the write would block); a workqueue
            // worker does the rest (a READ of a regular file is short only at EOF).
            let short = r > 0 && (r as u32) < len;
            // SAFETY: `pos` points to `local` or to the held file's position.
            let eof = dir == bindings::ITER_DEST && at_eof(file, unsafe { *pos });
            if regular && short && !eof {
                return Outcome::Partial(r as u32);
            }
            return Outcome::Done(r);
        }
        if r < 0 {
            return Outcome::Done(if done > 0 { done as i32 } else { r });
        }
        done += r as u32;
        // Regular files: finish short transfers; end of file or a stream stops here.
        if r == 0 || done >= len || !regular {
            return Outcome::Done(done as i32);
        }
    }
}

fn writev(file: &ARef<File>, iov: u64, count: u32, off: u64, blocking: bool) -> Outcome {
    let sock = socket_of(file);
    if sock.is_none() && !blocking && !can_nowait(file) {
        return Outcome::Offload;
    }
    // import_iovec copies up to FAST_IOVECS iovecs here (and a single one always, so
    // this array is mandatory), more into memory it allocates. The iterator may point
    // into this array: it lives until the end of the function.
    // SAFETY: iovec is plain C data; all-zero is valid.
    let mut fast: [bindings::iovec; FAST_IOVECS] = unsafe { core::mem::zeroed() };
    let mut iovp: *mut bindings::iovec = fast.as_mut_ptr();
    // SAFETY: msghdr is plain C data; all-zero is empty.
    let mut msg: bindings::msghdr = unsafe { core::mem::zeroed() };
    // SAFETY: import_iovec copies and checks `count` (<= UIO_MAXIOV, validated) iovecs
    // from the owner's memory into `fast` (FAST_IOVECS entries, as it is told) or into
    // an allocation it returns in `iovp` (freed below); otherwise it sets `iovp` to null.
    let r = unsafe {
        bindings::import_iovec(
            bindings::ITER_SOURCE as c_int,
            iov as usize as *const bindings::iovec,
            count,
            FAST_IOVECS as c_uint,
            &mut iovp,
            &mut msg.msg_iter,
        )
    };
    if r < 0 {
        return Outcome::Done(r as i32);
    }
    let out = match sock {
        Some(sock) => {
            msg.msg_flags = (abi::MSG_DONTWAIT | abi::MSG_NOSIGNAL) as c_uint;
            // SAFETY: `sock` belongs to `file`; `msg` carries the imported iterator.
            let r = unsafe { bindings::sock_sendmsg(sock, &mut msg) };
            would_block(r, 0, EPOLLOUT)
        }
        None => {
            let mut local = off as i64;
            let pos: *mut i64 = if off == abi::OFF_CURRENT {
                // SAFETY: as in `rw`.
                unsafe { &mut (*file.as_ptr()).f_pos }
            } else {
                &mut local
            };
            let rwf = if blocking { 0 } else { RWF_NOWAIT };
            // SAFETY: as in `rw`.
            let r = unsafe { bindings::vfs_iter_write(file.as_ptr(), &mut msg.msg_iter, pos, rwf) };
            if !blocking
                && (r == neg(bindings::EAGAIN) as isize || r == neg(bindings::EOPNOTSUPP) as isize)
            {
                if is_regular(file) || r == neg(bindings::EOPNOTSUPP) as isize {
                    Outcome::Offload
                } else {
                    Outcome::Wait(EPOLLOUT)
                }
            } else {
                Outcome::Done(r as i32)
            }
        }
    };
    // SAFETY: import_iovec left `iovp` null or pointing to the array it allocated
    // (never to `fast`); kfree(NULL) is a no-op.
    unsafe { bindings::kfree(iovp.cast()) };
    out
}

// ---------------------------------------------------------------------------------------
// Pending requests
// ---------------------------------------------------------------------------------------

/// Being put on wait queues (by the work or a polling worker).
const ARMING: u32 = 1;
/// On wait queues; the wake function may queue it.
const ARMED: u32 = 2;
/// Its work is queued or running.
const QUEUED: u32 = 3;
/// Completed.
const DONE: u32 = 4;
/// Cancelled while armed.
const CANCELLED: u32 = 5;

/// A file calls the poll queue procedure once per wait queue it has (a pipe: two).
const MAX_HEADS: usize = 2;

/// A request waiting for readiness or for a workqueue worker.
#[pin_data]
pub(crate) struct Pending {
    lane: Arc<Lane>,
    /// The request (for a [`Outcome::Partial`] start: what is left of it).
    op: Op,
    /// Bytes transferred before the request was offloaded; added to its result.
    progress: u32,
    user_data: u64,
    file: ARef<File>,
    /// Poll events that make it worth re-issuing (0: offloaded to a blocking worker).
    events: u32,
    state: AtomicU32,
    cancelled: AtomicBool,
    /// A wakeup came while ARMING.
    early_wake: AtomicBool,
    heads: [AtomicPtr<bindings::wait_queue_head>; MAX_HEADS],
    #[pin]
    waits: [Opaque<bindings::wait_queue_entry>; MAX_HEADS],
    #[pin]
    pt: Opaque<bindings::poll_table_struct>,
    #[pin]
    work: Work<Pending>,
}

impl_has_work! {
    impl HasWork<Self> for Pending { self.work }
}

// SAFETY: the wait-queue entries, poll table and head pointers are only touched under
// the state protocol in the module doc (one owner at a time decides who attaches and
// detaches); everything else is Send + Sync.
unsafe impl Send for Pending {}
// SAFETY: as above.
unsafe impl Sync for Pending {}

/// The module's workqueue (set at module init, destroyed at exit).
pub(crate) static WQ: AtomicPtr<bindings::workqueue_struct> = AtomicPtr::new(null_mut());

fn queue() -> &'static workqueue::Queue {
    // SAFETY: WQ is set before the device is registered and destroyed only after the
    // device is gone and every context released, so every caller sees a live queue.
    unsafe { workqueue::Queue::from_raw(WQ.load(Ordering::Acquire)) }
}

impl Pending {
    /// Completes `op` now (`Done`) or starts waiting for it (`Wait`, `Offload`). The
    /// lane's CQ space for it is already reserved.
    pub(crate) fn start(
        lane: &Arc<Lane>,
        op: Op,
        user_data: u64,
        file: ARef<File>,
        outcome: Outcome,
    ) {
        let (op, progress, events) = match outcome {
            Outcome::Wait(ev) => (op, 0, ev),
            Outcome::Offload => (op, 0, 0),
            Outcome::Partial(n) => (advance(op, n), n, 0),
            Outcome::Done(res) => return lane.post(user_data, res),
        };
        let shared = lane.shared();
        let pending = Arc::pin_init(
            pin_init!(Pending {
                lane: lane.clone(),
                op,
                progress,
                user_data,
                file,
                events,
                state: AtomicU32::new(QUEUED),
                cancelled: AtomicBool::new(false),
                early_wake: AtomicBool::new(false),
                heads: [AtomicPtr::new(null_mut()), AtomicPtr::new(null_mut())],
                waits <- pin_init::init_zeroed(),
                pt <- pin_init::init_zeroed(),
                work <- new_work!("fastio::Pending::work"),
            }),
            GFP_KERNEL,
        );
        let Ok(pending) = pending else {
            return lane.post(user_data, neg(bindings::ENOMEM));
        };
        if shared.track(&pending).is_err() {
            return lane.post(user_data, neg(bindings::ENOMEM));
        }
        if events == 0 {
            shared.stats.offloaded.fetch_add(1, Ordering::Relaxed);
            let _ = queue().enqueue(pending);
        } else {
            shared.stats.parked.fetch_add(1, Ordering::Relaxed);
            Pending::arm(pending);
        }
    }

    /// Puts the request on its file's wait queues, holding `this` as the armed
    /// reference; if the file is ready already (or woke meanwhile), queues the work.
    fn arm(this: Arc<Self>) {
        this.state.store(ARMING, Ordering::SeqCst);
        this.early_wake.store(false, Ordering::SeqCst);
        // Once the state says ARMED, the armed reference may be taken by the wake
        // function (and the request completed and freed by its work) or by a canceller
        // at any moment: this function keeps a reference of its own until it returns.
        let me: Arc<Self> = this.clone();
        let raw = Arc::into_raw(this);
        for (i, w) in me.waits.iter().enumerate() {
            // SAFETY: the entry is ours and on no queue (detached before any re-arm).
            unsafe {
                fastio_init_wait_entry(w.get(), Some(wake_fn));
                (*w.get()).private = raw as *mut c_void;
            }
            me.heads[i].store(null_mut(), Ordering::Relaxed);
        }
        let want = me.events | EPOLLERR | EPOLLHUP;
        // SAFETY: the file is held; `pt` is ours; qproc finds `me` from `pt` and adds
        // our entries to the file's queues.
        let mask = unsafe { fastio_vfs_poll(me.file.as_ptr(), me.pt.get(), Some(qproc), want) };
        let attached = !me.heads[0].load(Ordering::SeqCst).is_null();
        me.state.store(ARMED, Ordering::SeqCst);
        if !attached {
            // The file has no wait queue: waiting for it would never end.
            if me
                .state
                .compare_exchange(ARMED, DONE, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                // SAFETY: takes back the armed reference.
                let this = unsafe { Arc::from_raw(raw) };
                this.finish(neg(bindings::EAGAIN));
            }
            return;
        }
        if mask & want != 0 || me.early_wake.swap(false, Ordering::SeqCst) {
            if me
                .state
                .compare_exchange(ARMED, QUEUED, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                // SAFETY: takes back the armed reference, moved into the queue.
                let this = unsafe { Arc::from_raw(raw) };
                let _ = queue().enqueue(this);
            }
        }
    }

    /// The slot the request operates on.
    pub(crate) fn slot(&self) -> Option<u32> {
        self.op.slot()
    }

    /// Takes the request's entries off the wait queues (process context).
    fn detach(&self) {
        for (i, h) in self.heads.iter().enumerate() {
            let head = h.swap(null_mut(), Ordering::SeqCst);
            if !head.is_null() {
                // SAFETY: `head` belongs to our file, which we hold; the entry was
                // added to it by qproc and is removed exactly once (the swap).
                unsafe { bindings::remove_wait_queue(head, self.waits[i].get()) };
            }
        }
    }

    fn finish(self: &Arc<Self>, res: i32) {
        // What was transferred before the request was offloaded counts, also when the
        // rest failed or was cancelled.
        let res = match self.progress {
            0 => res,
            p if res >= 0 => (p as i32).saturating_add(res),
            p => p as i32,
        };
        self.state.store(DONE, Ordering::SeqCst);
        self.lane.post(self.user_data, res);
        self.lane.shared().untrack(self);
    }

    /// Completes the request with `-ECANCELED` unless it completes first; returns when
    /// it has completed either way (process context; may wait for its work).
    pub(crate) fn cancel(this: &Arc<Self>) {
        this.cancelled.store(true, Ordering::SeqCst);
        loop {
            match this
                .state
                .compare_exchange(ARMED, CANCELLED, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    this.detach();
                    // SAFETY: we won the armed reference (nobody else can: the wake
                    // function only acts on ARMED); give it back.
                    drop(unsafe { Arc::from_raw(Arc::as_ptr(this)) });
                    this.finish(neg(bindings::ECANCELED));
                    return;
                }
                Err(DONE) | Err(CANCELLED) => return,
                Err(QUEUED) => {
                    // The work will see `cancelled` (or has finished); wait for it.
                    // SAFETY: the work item lives in `this`, which we hold.
                    unsafe { bindings::flush_work(Work::raw_get(&this.work)) };
                    if this.state.load(Ordering::SeqCst) == QUEUED {
                        // SAFETY: plain scheduler call from process context.
                        unsafe { bindings::yield_() };
                    }
                }
                // Another thread is arming it right now: let it finish.
                Err(_) => {
                    // SAFETY: plain scheduler call from process context.
                    unsafe { bindings::yield_() };
                }
            }
        }
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
            // SAFETY: `head` is a live wait-queue head of the file being polled; the
            // entry is initialised and on no queue.
            unsafe { bindings::add_wait_queue(head, me.waits[i].get()) };
            return;
        }
    }
    // More queues than we wait on: the ones we joined still report readiness.
}

/// Wait-queue wake function: runs in any context (often softirq) under the queue's
/// lock. Only moves an ARMED request to its work; never sleeps, never detaches.
unsafe extern "C" fn wake_fn(
    wq: *mut bindings::wait_queue_entry,
    _mode: c_uint,
    _sync: c_int,
    key: *mut c_void,
) -> c_int {
    // SAFETY: `private` was set to the request in `arm`, and the request is alive: its
    // armed reference is only given back after the entry left the queue.
    let me = unsafe { &*((*wq).private as *const Pending) };
    let events = key as usize as u32;
    if events != 0 && events & (me.events | EPOLLERR | EPOLLHUP) == 0 {
        return 0;
    }
    match me
        .state
        .compare_exchange(ARMED, QUEUED, Ordering::SeqCst, Ordering::SeqCst)
    {
        Ok(_) => {
            me.lane
                .shared()
                .stats
                .wakeups
                .fetch_add(1, Ordering::Relaxed);
            // SAFETY: we won the armed reference; it moves into the workqueue.
            let this = unsafe { Arc::from_raw(me as *const Pending) };
            let _ = queue().enqueue(this);
        }
        Err(ARMING) => me.early_wake.store(true, Ordering::SeqCst),
        Err(_) => {}
    }
    0
}

impl WorkItem for Pending {
    type Pointer = Arc<Pending>;

    fn run(this: Arc<Pending>) {
        this.detach();
        if this.cancelled.load(Ordering::SeqCst) {
            return this.finish(neg(bindings::ECANCELED));
        }
        let blocking = this.events == 0;
        let lane = &this.lane;
        let outcome = lane
            .shared()
            .owner
            .enter(|| issue(lane, &this.op, &this.file, blocking));
        match outcome {
            Err(e) => this.finish(e),
            Ok(Outcome::Done(r)) => this.finish(r),
            Ok(Outcome::Partial(n)) => this.finish(n as i32),
            Ok(Outcome::Wait(_)) if !blocking => {
                if this.cancelled.load(Ordering::SeqCst) {
                    this.finish(neg(bindings::ECANCELED));
                } else {
                    Pending::arm(this);
                }
            }
            Ok(_) => this.finish(neg(bindings::EAGAIN)),
        }
    }
}
