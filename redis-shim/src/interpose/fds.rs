//! The ways a descriptor number is closed or replaced (`close`, `dup2`, `dup3`), or
//! handed out again (`accept`): a queued socket's number that goes away is forgotten;
//! the socket's queued bytes still go out from its slot, then the slot is released.

use libc::{c_int, sockaddr, socklen_t};

use super::forget;
use crate::real;

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
