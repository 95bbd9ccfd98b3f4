//! The write family (queued), the read family (reports a failed queued write), and
//! `shutdown` (after the queued bytes).

use std::sync::atomic::Ordering;

use libc::{c_int, c_void, iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t};

use super::{
    active, fail_call, in_shim, is_owner, reconcile, set_errno, start, Inside, ACTIVE, OFF, PHASE,
    STARTING,
};
use crate::fdtable::{self, Kind};
use crate::real;
use crate::shim::{Shutdown, WriteError};
use crate::signals;

/// Where a write-family call goes.
enum Route {
    /// The C library.
    Plain,
    /// The shim's queue.
    Queue,
    /// A signal handler interrupted this thread inside the shim (or while deferred writes
    /// of earlier handlers wait to be queued): the thread's buffer of deferred writes,
    /// for the socket `id` in the slot.
    Defer(u32, u64),
}

/// Where a write-family call on `fd` goes: classifies and registers the socket on the
/// owner thread's first write, and drops an entry whose number no longer names its
/// socket (closed or replaced in a way the shim did not see).
fn route(fd: c_int) -> Route {
    let phase = PHASE.load(Ordering::Acquire);
    if phase == OFF || phase == STARTING && !is_owner() {
        return Route::Plain;
    }
    let (kind, slot, id) = fdtable::entry(fd);
    // Deferred writes of this thread not yet queued (a handler that runs while the thread
    // leaves the shim, after its flag is cleared, finds them): defer behind them, or its
    // bytes would overtake theirs (seen by shim_signals when inline execution on the
    // module kept the thread inside the shim longer).
    if in_shim() || signals::with_deferred(signals::Deferred::pending) {
        if kind == Kind::Queued && phase == ACTIVE {
            if fdtable::identity(fd) == Some(id) {
                return Route::Defer(slot, id);
            }
            fdtable::invalidate(fd);
        }
        return Route::Plain;
    }
    match kind {
        Kind::Plain => return Route::Plain,
        Kind::Queued | Kind::Failed | Kind::Stale if phase != ACTIVE => return Route::Plain,
        Kind::Queued | Kind::Failed if fdtable::identity(fd) == Some(id) => return Route::Queue,
        // The number no longer names the socket: the owner thread forgets the entry;
        // another thread (which may be a worker the shim's own lock waits for) marks it.
        Kind::Queued | Kind::Failed | Kind::Stale => {
            if !stale(fd) {
                return Route::Plain;
            }
        }
        Kind::Unknown => {}
    }
    if phase == ACTIVE && !is_owner() {
        return Route::Plain;
    }
    // A signal handler neither starts the shim (not async-signal-safe) nor registers a
    // socket: nothing of an unregistered socket is queued, so its bytes may go straight
    // to the kernel.
    if signals::in_handler() {
        return Route::Plain;
    }
    if !fdtable::is_queueable_socket(fd) {
        fdtable::set(fd, Kind::Plain);
        return Route::Plain;
    }
    if !start() {
        return Route::Plain;
    }
    let mut inside = Inside::enter();
    if inside.shim().is_some_and(|s| s.register(fd)) {
        Route::Queue
    } else {
        Route::Plain
    }
}

/// `fd` no longer names the socket its entry maps: the owner thread forgets the entry
/// (true); another thread (which may be a worker the shim's own lock waits for) only
/// marks it stale (false).
fn stale(fd: c_int) -> bool {
    if is_owner() {
        reconcile(fd);
        true
    } else {
        fdtable::invalidate(fd);
        false
    }
}

/// Whether `fd` is a queued socket this call must deal with (checking its identity).
fn queued(fd: c_int) -> bool {
    let (kind, _, id) = fdtable::entry(fd);
    if kind != Kind::Queued || !active() || in_shim() {
        return false;
    }
    if fdtable::identity(fd) == Some(id) {
        return true;
    }
    stale(fd);
    false
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
/// meantime, or the cap of all sockets reached with nothing of it queued).
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

/// A signal handler's write of `parts` (`len` bytes) while its thread is inside the
/// shim: deferred (see [`signals`]), or `EAGAIN` when the thread's buffer is full.
fn defer<'a>(slot: u32, id: u64, len: usize, parts: impl IntoIterator<Item = &'a [u8]>) -> ssize_t {
    if signals::with_deferred(|d| d.push(slot, id, len, parts)) {
        ssize_t::try_from(len).unwrap_or(ssize_t::MAX)
    } else {
        fail_call(libc::EAGAIN)
    }
}

/// A read-family call: reports a failed queued write on `fd` first, if one waits,
/// else runs `real_call`.
fn read_call(fd: c_int, real_call: impl FnOnce() -> ssize_t) -> ssize_t {
    let (kind, _, id) = fdtable::entry(fd);
    if kind == Kind::Failed && active() && !in_shim() {
        if fdtable::identity(fd) != Some(id) {
            stale(fd);
            return real_call();
        }
        let mut inside = Inside::enter();
        let e = inside.shim().and_then(|s| s.take_error(fd));
        drop(inside);
        if let Some(e) = e {
            return fail_call(e);
        }
    }
    real_call()
}

/// A write-family call the shim does not queue (flags, an address, control data): it
/// must come after the socket's queued bytes, so while some are queued (after one round
/// of completions) it fails with `EAGAIN`, as on a full socket.
fn after_queued(fd: c_int, real_call: impl FnOnce() -> ssize_t) -> ssize_t {
    if in_shim() && fdtable::kind(fd) == Kind::Queued {
        return fail_call(libc::EAGAIN);
    }
    if queued(fd) {
        let mut inside = Inside::enter();
        if inside.shim().is_some_and(|s| !s.quiesce(fd)) {
            drop(inside);
            return fail_call(libc::EAGAIN);
        }
    }
    real_call()
}

/// Most iovecs one call takes (`IOV_MAX`, the kernel's `UIO_MAXIOV`).
const IOV_MAX: usize = libc::UIO_MAXIOV as usize;

/// The iovec array as a slice, or the errno the kernel would fail the call with:
/// `too_many` for more than [`IOV_MAX`] iovecs (`EINVAL` for `writev`, `EMSGSIZE` for
/// `sendmsg`), `EINVAL` for a total length past `isize::MAX`, `EFAULT` for a null array
/// or buffer. Returns the total length too. No allocation (signal handlers use it).
///
/// # Safety
///
/// `iov` must point to `cnt` valid iovecs.
unsafe fn iov_slice<'a>(
    iov: *const iovec,
    cnt: usize,
    too_many: c_int,
) -> Result<(&'a [iovec], usize), c_int> {
    if cnt > IOV_MAX {
        return Err(too_many);
    }
    if cnt == 0 {
        return Ok((&[], 0));
    }
    if iov.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller guarantees `cnt` valid iovecs.
    let v = unsafe { std::slice::from_raw_parts(iov, cnt) };
    let mut total: usize = 0;
    for e in v {
        total = total
            .checked_add(e.iov_len)
            .filter(|&t| isize::try_from(t).is_ok())
            .ok_or(libc::EINVAL)?;
        if e.iov_len > 0 && e.iov_base.is_null() {
            return Err(libc::EFAULT);
        }
    }
    Ok((v, total))
}

/// The bytes an iovec names.
///
/// # Safety
///
/// The iovec must name readable memory (checked by [`iov_slice`] for null bases).
unsafe fn iov_bytes<'a>(e: &iovec) -> &'a [u8] {
    if e.iov_len == 0 {
        return &[];
    }
    // SAFETY: the caller guarantees the iovec names readable memory.
    unsafe { std::slice::from_raw_parts(e.iov_base.cast::<u8>(), e.iov_len) }
}

/// Queues (or defers) an iovec write routed to the shim.
///
/// # Safety
///
/// `iov` must point to `cnt` valid iovecs, each naming readable memory.
unsafe fn iov_write(
    fd: c_int,
    how: Route,
    iov: *const iovec,
    cnt: usize,
    too_many: c_int,
    flags: c_int,
    real_call: impl FnOnce() -> ssize_t,
) -> ssize_t {
    // SAFETY: the caller's iovecs.
    let (v, total) = match unsafe { iov_slice(iov, cnt, too_many) } {
        Ok(x) => x,
        Err(e) => return fail_call(e),
    };
    // SAFETY: validated above; the caller's iovecs name readable memory.
    let bytes = v.iter().map(|e| unsafe { iov_bytes(e) });
    match how {
        Route::Defer(slot, id) => defer(slot, id, total, bytes),
        _ => {
            let parts: Vec<&[u8]> = bytes.filter(|p| !p.is_empty()).collect();
            queue_write(fd, &parts, flags, real_call)
        }
    }
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

/// Queues (or defers) a one-buffer write routed to the shim; `queueable`: the call's
/// flags and address allow it.
///
/// # Safety
///
/// `buf` must name `len` readable bytes (or `len` is 0).
unsafe fn buf_write(
    fd: c_int,
    how: Route,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    queueable: bool,
    real_call: impl FnOnce() -> ssize_t,
) -> ssize_t {
    // SAFETY: the caller's buffer.
    match (unsafe { buf_part(buf, len) }, how) {
        (Some(p), Route::Defer(slot, id)) if queueable => defer(slot, id, p.len(), [p]),
        (Some(p), _) if queueable => queue_write(fd, &[p], flags, real_call),
        _ => after_queued(fd, real_call),
    }
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
    match route(fd) {
        Route::Plain => real_call(),
        // SAFETY: the caller passes `count` readable bytes at `buf`.
        how => unsafe { buf_write(fd, how, buf, count, 0, true, real_call) },
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
    let how = route(fd);
    if matches!(how, Route::Plain) {
        return real_call();
    }
    let Ok(cnt) = usize::try_from(iovcnt) else {
        return fail_call(libc::EINVAL);
    };
    // SAFETY: the caller passes `iovcnt` valid iovecs.
    unsafe { iov_write(fd, how, iov, cnt, libc::EINVAL, 0, real_call) }
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
    match route(fd) {
        Route::Plain => real_call(),
        how => {
            let ok = flags & !QUEUEABLE_FLAGS == 0;
            // SAFETY: the caller passes `len` readable bytes at `buf`.
            unsafe { buf_write(fd, how, buf, len, flags, ok, real_call) }
        }
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
    match route(fd) {
        Route::Plain => real_call(),
        how => {
            let ok = addr.is_null() && flags & !QUEUEABLE_FLAGS == 0;
            // SAFETY: the caller passes `len` readable bytes at `buf`.
            unsafe { buf_write(fd, how, buf, len, flags, ok, real_call) }
        }
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
    if msg.is_null() {
        return real_call();
    }
    let how = route(fd);
    if matches!(how, Route::Plain) {
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
    unsafe { iov_write(fd, how, m.msg_iov, cnt, libc::EMSGSIZE, flags, real_call) }
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

/// `shutdown(2)`: shutting down the writing side comes after the socket's queued bytes:
/// with bytes queued, the call returns at once and the shim carries it out once they are
/// sent; later writes fail with EPIPE, as after a real shutdown.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    if !queued(fd) {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real::shutdown(fd, how) };
    }
    let mut inside = Inside::enter();
    let r = inside.shim().map_or(Shutdown::Now, |s| s.shutdown(fd, how));
    drop(inside);
    match r {
        // SAFETY: forwarding the caller's arguments.
        Shutdown::Now => unsafe { real::shutdown(fd, how) },
        // SAFETY: the reading side of the caller's socket.
        Shutdown::Deferred if how == libc::SHUT_RDWR => unsafe {
            real::shutdown(fd, libc::SHUT_RD)
        },
        Shutdown::Deferred => 0,
        Shutdown::Errno(e) => {
            set_errno(e);
            -1
        }
    }
}
