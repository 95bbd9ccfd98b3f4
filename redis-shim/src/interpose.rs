//! The interposed C library functions (`#[no_mangle]`), and the global shim state.
//!
//! # Who takes which path
//!
//! - Every call first reads the lock-free [`fdtable`]: a descriptor that is not a queued
//!   socket goes straight to the C library, from any thread.
//! - Only the *owner* thread, the first that writes to a non-blocking stream socket or
//!   waits in `epoll_wait`/`epoll_pwait` (Redis's event loop), classifies descriptors,
//!   registers sockets and flushes in the waits (`poll` flushes too, but only on the
//!   owner: it never makes a thread the owner). Other threads (Redis's bio
//!   threads, the `threads` backend's own workers) never classify anything and never
//!   block on the shim's lock for descriptors that are not queued sockets, so the
//!   runtime's workers, which call `send`/`epoll_wait` on their own duplicates of the
//!   sockets, are never interposed.
//! - While a thread runs inside the shim (holding its lock), every call it makes
//!   (the runtime's syscalls, `eprintln!`), and every call of a signal handler that
//!   interrupts it, goes to the C library: a thread-local flag, set before the lock is
//!   taken and cleared after it is released. `exit` from such a handler skips the exit
//!   drain rather than wait for the lock its own thread holds.
//! - After `fork` in a process whose shim is running, the child never touches the
//!   parent's rings: every call goes to the C library (`pthread_atfork`).

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use libc::{c_int, c_void, epoll_event, iovec, msghdr, nfds_t, pollfd, sigset_t, size_t};
use libc::{sockaddr, socklen_t, ssize_t};

use crate::fdtable::{self, Kind};
use crate::real;
use crate::settings::{self, Settings};
use crate::shim::{Shim, WriteError};

/// Nothing done yet.
const UNINIT: u8 = 0;
/// The owner thread is opening the proactor.
const STARTING: u8 = 1;
/// Running.
const ACTIVE: u8 = 2;
/// Every call goes to the C library (a forked child, a failed start, or disabled).
const OFF: u8 = 3;

static PHASE: AtomicU8 = AtomicU8::new(UNINIT);
static OWNER: AtomicUsize = AtomicUsize::new(0);
static STATE: Mutex<Option<Shim>> = Mutex::new(None);
static HOOKS: Once = Once::new();

/// How long the process's exit waits for queued writes.
const EXIT_DRAIN: Duration = Duration::from_secs(5);
/// How long the process's exit waits for the shim's lock (held by another thread).
const EXIT_LOCK: Duration = Duration::from_secs(1);
/// How long `shutdown` (or an unqueued send) waits for the socket's queued writes.
const DRAIN: Duration = Duration::from_secs(5);
/// Longest single wait for completions in an event-loop wait.
const COMPLETION_SLICE: Duration = Duration::from_millis(1);
/// Longest single `epoll_wait` while a request is stuck in flight.
const EPOLL_SLICE_MS: c_int = 10;

thread_local! {
    static IN_SHIM: Cell<bool> = const { Cell::new(false) };
}

fn this_thread() -> usize {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as usize }
}

fn in_shim() -> bool {
    IN_SHIM.with(Cell::get)
}

/// Holds the shim's lock and marks the thread as inside the shim.
struct Inside {
    /// The lock; `None` only while dropping.
    guard: Option<MutexGuard<'static, Option<Shim>>>,
}

impl Inside {
    fn enter() -> Inside {
        IN_SHIM.with(|f| f.set(true));
        Inside {
            guard: Some(STATE.lock().unwrap_or_else(PoisonError::into_inner)),
        }
    }

    /// Like [`Inside::enter`], but gives up (None) when the lock stays taken for `limit`.
    fn try_enter(limit: Duration) -> Option<Inside> {
        IN_SHIM.with(|f| f.set(true));
        let deadline = Instant::now() + limit;
        loop {
            let guard = match STATE.try_lock() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(TryLockError::WouldBlock) => {
                    IN_SHIM.with(|f| f.set(false));
                    return None;
                }
            };
            return Some(Inside { guard: Some(guard) });
        }
    }

    fn shim(&mut self) -> Option<&mut Shim> {
        self.guard.as_mut().and_then(|g| g.as_mut())
    }

    fn install(&mut self, shim: Shim) {
        if let Some(g) = self.guard.as_mut() {
            **g = Some(shim);
        }
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        // The lock first: a signal handler that runs before the flag is cleared still
        // sees the thread inside, and does not wait for a lock its thread holds.
        drop(self.guard.take());
        IN_SHIM.with(|f| f.set(false));
    }
}

/// Starts the shim on this thread (which becomes the owner). True when it runs.
fn start() -> bool {
    match PHASE.load(Ordering::Acquire) {
        ACTIVE => return OWNER.load(Ordering::Relaxed) == this_thread(),
        UNINIT => {}
        _ => return false,
    }
    if PHASE
        .compare_exchange(UNINIT, STARTING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return false;
    }
    OWNER.store(this_thread(), Ordering::Relaxed);
    let mut inside = Inside::enter();
    let ok = if settings::disabled_by_env() {
        eprintln!("fastio-redis-shim: disabled by {}=1", settings::DISABLE_VAR);
        false
    } else {
        match open() {
            Ok(shim) => {
                inside.install(shim);
                true
            }
            Err(e) => {
                eprintln!("fastio-redis-shim: not active, every call goes to the C library: {e}");
                false
            }
        }
    };
    drop(inside);
    if ok {
        HOOKS.call_once(|| {
            // SAFETY: registering plain extern "C" handlers without arguments.
            unsafe {
                libc::pthread_atfork(None, None, Some(after_fork_in_child));
                libc::atexit(at_exit);
            }
        });
    }
    PHASE.store(if ok { ACTIVE } else { OFF }, Ordering::Release);
    ok
}

fn open() -> Result<Shim, String> {
    let (config, source) = fastio::Config::resolve(None).map_err(|e| e.to_string())?;
    let settings = Settings::resolve(source.path())?;
    eprintln!("fastio-redis-shim: config {source}; {settings}");
    Shim::new(&config, settings).map_err(|e| format!("cannot open the proactor: {e}"))
}

extern "C" fn after_fork_in_child() {
    // The child has one thread and a copy of the parent's rings: it must not use them.
    PHASE.store(OFF, Ordering::Release);
}

extern "C" fn at_exit() {
    // `exit` from a signal handler that interrupted this thread inside the shim: the
    // lock is this thread's, so there is no drain (the kernel still sends what the
    // executors were given).
    if PHASE.load(Ordering::Acquire) != ACTIVE || in_shim() {
        return;
    }
    let Some(mut inside) = Inside::try_enter(EXIT_LOCK) else {
        return;
    };
    let Some(shim) = inside.shim() else { return };
    shim.drain_all(EXIT_DRAIN);
    if let Some(path) = shim.settings().stats_path.clone() {
        if let Err(e) = std::fs::write(&path, shim.stats().to_string()) {
            eprintln!("fastio-redis-shim: cannot write {}: {e}", path.display());
        }
    }
}

/// Whether the shim handles a write-family call on `fd` (classifying and registering
/// the socket on the owner thread's first write).
fn manages_write(fd: c_int) -> bool {
    let phase = PHASE.load(Ordering::Acquire);
    if phase == OFF || phase == STARTING && OWNER.load(Ordering::Relaxed) != this_thread() {
        return false;
    }
    if in_shim() {
        return false;
    }
    match fdtable::kind(fd) {
        Kind::Plain => false,
        Kind::Queued | Kind::Failed => phase == ACTIVE,
        Kind::Unknown => {
            if phase == ACTIVE && OWNER.load(Ordering::Relaxed) != this_thread() {
                return false;
            }
            if !fdtable::is_queueable_socket(fd) {
                fdtable::set(fd, Kind::Plain);
                return false;
            }
            if !start() {
                return false;
            }
            let mut inside = Inside::enter();
            inside.shim().is_some_and(|s| s.register(fd))
        }
    }
}

/// Whether a read-family call on `fd` must report a failed queued write first.
fn failed(fd: c_int) -> bool {
    fdtable::kind(fd) == Kind::Failed && PHASE.load(Ordering::Acquire) == ACTIVE && !in_shim()
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// Fails a call with errno `e`.
fn fail_call(e: c_int) -> ssize_t {
    set_errno(e);
    -1
}

/// Reports errno `e` for a write-family call, raising SIGPIPE for EPIPE as the kernel
/// would unless the call asked for `MSG_NOSIGNAL`.
fn write_error(e: c_int, flags: c_int) -> ssize_t {
    if e == libc::EPIPE && flags & libc::MSG_NOSIGNAL == 0 {
        // SAFETY: raise has no preconditions.
        unsafe { libc::raise(libc::SIGPIPE) };
    }
    fail_call(e)
}

/// Queues `parts` (at most `isize::MAX` bytes in all) for `fd`, or falls back to
/// `real_call` when the socket is not ours after all (closed by another thread in the
/// meantime).
fn queue_write(
    fd: c_int,
    parts: &[&[u8]],
    flags: c_int,
    real_call: impl FnOnce() -> ssize_t,
) -> ssize_t {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut inside = Inside::enter();
    let r = match inside.shim() {
        Some(shim) => shim.write(fd, parts, len),
        None => Err(WriteError::NotOurs),
    };
    // Leave the shim before calling the C library or raising SIGPIPE, whose handler
    // may write.
    drop(inside);
    match r {
        Ok(n) => ssize_t::try_from(n).unwrap_or(ssize_t::MAX),
        Err(WriteError::NotOurs) => real_call(),
        Err(WriteError::Errno(e)) => write_error(e, flags),
    }
}

/// A read-family call: reports a failed queued write on `fd` first, if one waits,
/// else runs `real_call`.
fn read_call(fd: c_int, real_call: impl FnOnce() -> ssize_t) -> ssize_t {
    if failed(fd) {
        let mut inside = Inside::enter();
        let e = inside.shim().and_then(|s| s.take_error(fd));
        drop(inside);
        if let Some(e) = e {
            return fail_call(e);
        }
    }
    real_call()
}

/// Waits for the queued writes of `fd`, then runs `real_call` (for calls that must come
/// after them but are not queued).
fn after_queued(fd: c_int, real_call: impl FnOnce() -> ssize_t) -> ssize_t {
    if fdtable::kind(fd) == Kind::Queued && PHASE.load(Ordering::Acquire) == ACTIVE && !in_shim() {
        let mut inside = Inside::enter();
        if let Some(s) = inside.shim() {
            s.drain_fd(fd, DRAIN);
        }
    }
    real_call()
}

/// Forgets what `fd` was when it is closed or replaced (or after a new descriptor got
/// the number): a queued socket's bytes still go out, from its slot.
fn forget(fd: c_int) {
    let k = fdtable::kind(fd);
    if k.is_managed() && PHASE.load(Ordering::Acquire) == ACTIVE && !in_shim() {
        let mut inside = Inside::enter();
        if let Some(s) = inside.shim() {
            s.detach(fd);
        }
    }
    if k != Kind::Unknown {
        fdtable::set(fd, Kind::Unknown);
    }
}

/// Most iovecs one call takes (`IOV_MAX`, the kernel's `UIO_MAXIOV`).
const IOV_MAX: usize = libc::UIO_MAXIOV as usize;

/// Builds byte slices from an iovec array, or the errno the kernel would fail the call
/// with: `too_many` for more than [`IOV_MAX`] iovecs (`EINVAL` for `writev`, `EMSGSIZE`
/// for `sendmsg`), `EINVAL` for a total length past `isize::MAX`, `EFAULT` for a null
/// array or buffer.
///
/// # Safety
///
/// `iov` must point to `cnt` valid iovecs, each naming readable memory.
unsafe fn iov_parts<'a>(
    iov: *const iovec,
    cnt: usize,
    too_many: c_int,
) -> Result<Vec<&'a [u8]>, c_int> {
    if cnt > IOV_MAX {
        return Err(too_many);
    }
    if cnt > 0 && iov.is_null() {
        return Err(libc::EFAULT);
    }
    let mut parts = Vec::with_capacity(cnt);
    let mut total: usize = 0;
    for i in 0..cnt {
        // SAFETY: the caller guarantees `cnt` valid iovecs.
        let v = unsafe { &*iov.add(i) };
        total = total
            .checked_add(v.iov_len)
            .filter(|&t| isize::try_from(t).is_ok())
            .ok_or(libc::EINVAL)?;
        if v.iov_len > 0 {
            if v.iov_base.is_null() {
                return Err(libc::EFAULT);
            }
            // SAFETY: the caller guarantees the iovec names readable memory.
            parts.push(unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len) });
        }
    }
    Ok(parts)
}

/// Builds a byte slice from a buffer argument.
///
/// # Safety
///
/// `buf` must name `len` readable bytes (or `len` is 0).
unsafe fn buf_part<'a>(buf: *const c_void, len: size_t) -> Option<&'a [u8]> {
    if len == 0 {
        return Some(&[]);
    }
    if buf.is_null() || len > isize::MAX as usize {
        return None;
    }
    // SAFETY: the caller guarantees `len` readable bytes at `buf`.
    Some(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) })
}

/// `send` flags the shim queues as plain writes; any other goes to the C library after
/// the queued bytes.
const QUEUEABLE_FLAGS: c_int = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT | libc::MSG_MORE;

/// `write(2)`, queued for sockets the shim manages.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    // SAFETY: forwarding the caller's arguments.
    let real_call = || unsafe { real::write(fd, buf, count) };
    if !manages_write(fd) {
        return real_call();
    }
    // SAFETY: the caller passes `count` readable bytes at `buf`.
    match unsafe { buf_part(buf, count) } {
        Some(p) => queue_write(fd, &[p], 0, real_call),
        None => after_queued(fd, real_call),
    }
}

/// `writev(2)`, queued for sockets the shim manages.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t {
    // SAFETY: forwarding the caller's arguments.
    let real_call = || unsafe { real::writev(fd, iov, iovcnt) };
    if !manages_write(fd) {
        return real_call();
    }
    let Ok(cnt) = usize::try_from(iovcnt) else {
        return fail_call(libc::EINVAL);
    };
    // SAFETY: the caller passes `iovcnt` valid iovecs.
    match unsafe { iov_parts(iov, cnt, libc::EINVAL) } {
        Ok(parts) => queue_write(fd, &parts, 0, real_call),
        Err(e) => fail_call(e),
    }
}

/// `send(2)`, queued for sockets the shim manages (with ordinary flags).
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
    // SAFETY: forwarding the caller's arguments.
    let real_call = || unsafe { real::send(fd, buf, len, flags) };
    if !manages_write(fd) {
        return real_call();
    }
    // SAFETY: the caller passes `len` readable bytes at `buf`.
    match unsafe { buf_part(buf, len) } {
        Some(p) if flags & !QUEUEABLE_FLAGS == 0 => queue_write(fd, &[p], flags, real_call),
        _ => after_queued(fd, real_call),
    }
}

/// `sendto(2)`: on a stream socket without an address, a `send`.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> ssize_t {
    // SAFETY: forwarding the caller's arguments.
    let real_call = || unsafe { real::sendto(fd, buf, len, flags, addr, alen) };
    if !manages_write(fd) {
        return real_call();
    }
    // SAFETY: the caller passes `len` readable bytes at `buf`.
    match unsafe { buf_part(buf, len) } {
        Some(p) if addr.is_null() && flags & !QUEUEABLE_FLAGS == 0 => {
            queue_write(fd, &[p], flags, real_call)
        }
        _ => after_queued(fd, real_call),
    }
}

/// `sendmsg(2)`: queued when the message has no address and no control data.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    // SAFETY: forwarding the caller's arguments.
    let real_call = || unsafe { real::sendmsg(fd, msg, flags) };
    if msg.is_null() || !manages_write(fd) {
        return real_call();
    }
    // SAFETY: the caller passes a valid msghdr.
    let m = unsafe { &*msg };
    let plain = m.msg_name.is_null() && m.msg_controllen == 0 && flags & !QUEUEABLE_FLAGS == 0;
    if !plain {
        return after_queued(fd, real_call);
    }
    // `msg_iovlen` is a size_t with glibc: the whole count, never truncated.
    let cnt: usize = m.msg_iovlen;
    // SAFETY: the msghdr names `msg_iovlen` valid iovecs.
    match unsafe { iov_parts(m.msg_iov, cnt, libc::EMSGSIZE) } {
        Ok(parts) => queue_write(fd, &parts, flags, real_call),
        Err(e) => fail_call(e),
    }
}

/// `read(2)`; reports a failed queued write on the socket first.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    // SAFETY: forwarding the caller's arguments.
    read_call(fd, || unsafe { real::read(fd, buf, count) })
}

/// `recv(2)`; reports a failed queued write on the socket first.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
    // SAFETY: forwarding the caller's arguments.
    read_call(fd, || unsafe { real::recv(fd, buf, len, flags) })
}

/// `close(2)`: the socket's queued writes still go out (the slot holds the socket),
/// then its slot is released.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    forget(fd);
    // SAFETY: forwarding the caller's argument.
    unsafe { real::close(fd) }
}

/// `shutdown(2)`: after the socket's queued writes (waiting up to 5 s).
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    after_queued(fd, || unsafe { real::shutdown(fd, how) } as ssize_t) as c_int
}

/// `dup2(2)`: when it succeeds, what `new` was is closed by the kernel, so it is
/// forgotten as by `close` (a queued socket's bytes still go out from its slot). The
/// copy of a queued socket (`dup`, `dup2`, `F_DUPFD`) is a descriptor of its own: its
/// writes get a queue of their own, in no set order with the original's.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { real::dup2(old, new) };
    if r >= 0 && old != new {
        forget(new);
    }
    r
}

/// `dup3(2)`: as [`dup2`].
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { real::dup3(old, new, flags) };
    if r >= 0 && old != new {
        forget(new);
    }
    r
}

/// `accept(2)`: the returned number is a new socket, whatever it was before.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { real::accept(fd, addr, len) };
    if r >= 0 {
        forget(r);
    }
    r
}

/// `accept4(2)`: the returned number is a new socket, whatever it was before.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { real::accept4(fd, addr, len, flags) };
    if r >= 0 {
        forget(r);
    }
    r
}

/// The event loop's wait, on the owner thread: submit the queued writes, reap
/// completions, and while requests are in flight wait for both completions and events.
/// `real_wait(ms)` is the C library's wait with the caller's arguments and timeout `ms`.
/// `may_start`: whether this wait may start the shim and make its thread the owner
/// (`epoll_wait`, `epoll_pwait`); `poll` only flushes for an owner that exists, since
/// runtimes poll at startup (Rust's std checks fds 0-2 with `poll`) on threads that are
/// not the event loop.
fn event_wait(timeout_ms: c_int, may_start: bool, real_wait: impl Fn(c_int) -> c_int) -> c_int {
    let owner = if may_start {
        start()
    } else {
        PHASE.load(Ordering::Acquire) == ACTIVE && OWNER.load(Ordering::Relaxed) == this_thread()
    };
    if in_shim() || !owner {
        return real_wait(timeout_ms);
    }
    let deadline = u64::try_from(timeout_ms)
        .ok()
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut inside = Inside::enter();
    let Some(shim) = inside.shim() else {
        drop(inside);
        return real_wait(timeout_ms);
    };
    shim.pump();
    if !shim.busy() || timeout_ms == 0 {
        drop(inside);
        return real_wait(timeout_ms);
    }
    drop(inside);
    loop {
        let n = real_wait(0);
        if n != 0 {
            return n;
        }
        let left_ms = match deadline {
            None => c_int::MAX,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return 0;
                }
                c_int::try_from(left.as_millis().max(1)).unwrap_or(c_int::MAX)
            }
        };
        let mut inside = Inside::enter();
        let Some(shim) = inside.shim() else {
            drop(inside);
            return real_wait(left_ms);
        };
        let slice = COMPLETION_SLICE.min(Duration::from_millis(left_ms as u64));
        let progressed = shim.wait_completions(slice);
        let busy = shim.busy();
        drop(inside);
        if !busy {
            return real_wait(left_ms);
        }
        if !progressed {
            // A request is stuck (a peer that does not read): wait for events in
            // longer slices, reaping in between.
            let n = real_wait(left_ms.min(EPOLL_SLICE_MS));
            if n != 0 {
                return n;
            }
        }
    }
}

/// `epoll_wait(2)`: the flush point of the event loop.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    // SAFETY: forwarding the caller's arguments with another timeout.
    event_wait(timeout, true, |ms| unsafe {
        real::epoll_wait(epfd, events, max, ms)
    })
}

/// `epoll_pwait(2)`: the flush point of the event loop.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const sigset_t,
) -> c_int {
    // SAFETY: forwarding the caller's arguments with another timeout.
    event_wait(timeout, true, |ms| unsafe {
        real::epoll_pwait(epfd, events, max, ms, mask)
    })
}

/// `poll(2)`: a flush point too, on the thread that already owns the shim.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments with another timeout.
    event_wait(timeout, false, |ms| unsafe { real::poll(fds, n, ms) })
}
