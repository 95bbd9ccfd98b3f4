//! Every way a descriptor number is closed or replaced (`close`, `close_range`,
//! `closefrom`, `fclose`, `dup2`, `dup3`, `syscall` with those numbers), handed out
//! again (`accept`), or the process image replaced (the `exec` family); and the signal
//! handlers' installation (`sigaction`, `signal`).
//!
//! A queued socket's number that goes away is forgotten: the socket's queued bytes still
//! go out from its slot, then the slot is released. What cannot be interposed (a raw
//! system call, a close inside the C library) is caught by the identity check of each
//! write and by the shim's periodic sweep (see [`crate::fdtable`]).
//! Before `exec` the shim sends what is queued, as at exit: the rings do not survive
//! the new image. (`execl`, `execlp` and `execle` take variable arguments and cannot be
//! interposed here; their bytes still queued are lost.)

use libc::{c_char, c_int, c_long, c_uint, sighandler_t, sockaddr, socklen_t};

use super::{drain_before_end, forget, forget_range};
use crate::real;
use crate::signals;

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

/// `close_range(2)`: as `close` for each number closed (not for
/// `CLOSE_RANGE_CLOEXEC`, which closes nothing now).
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { real::close_range(first, last, flags) };
    if r == 0 && flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 {
        forget_range(first, last);
    }
    r
}

/// `closefrom(3)`: as `close` for every number from `low` on.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn closefrom(low: c_int) {
    forget_range(low.max(0) as u32, u32::MAX);
    // SAFETY: forwarding the caller's argument.
    unsafe { real::closefrom(low) }
}

/// `fclose(3)`: closes the stream's descriptor, as `close`.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn fclose(stream: *mut libc::FILE) -> c_int {
    if !stream.is_null() {
        // SAFETY: the caller passes an open stream.
        let fd = unsafe { libc::fileno(stream) };
        if fd >= 0 {
            forget(fd);
        }
    }
    // SAFETY: forwarding the caller's argument.
    unsafe { real::fclose(stream) }
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

/// `execve(2)`: sends what is queued first.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    drain_before_end();
    // SAFETY: forwarding the caller's arguments.
    unsafe { real::execve(path, argv, envp) }
}

/// `execv(3)`: sends what is queued first.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    drain_before_end();
    // SAFETY: forwarding the caller's arguments.
    unsafe { real::execv(path, argv) }
}

/// `execvp(3)`: sends what is queued first.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    drain_before_end();
    // SAFETY: forwarding the caller's arguments.
    unsafe { real::execvp(file, argv) }
}

/// `execvpe(3)`: sends what is queued first.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    drain_before_end();
    // SAFETY: forwarding the caller's arguments.
    unsafe { real::execvpe(file, argv, envp) }
}

/// `fexecve(3)`: sends what is queued first.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn fexecve(
    fd: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    drain_before_end();
    // SAFETY: forwarding the caller's arguments.
    unsafe { real::fexecve(fd, argv, envp) }
}

/// `syscall(2)`: the system calls that close or replace descriptors (`close`,
/// `close_range`, `dup2`, `dup3`) forget them as their C library functions do, and
/// `execve`/`execveat` send what is queued first; every call is made here, without the
/// C library. Declared with six fixed arguments after the number: on x86-64 and AArch64
/// a variadic caller passes them where a fixed-argument callee reads them, and missing
/// ones are never used by the system calls that do not take them.
///
/// # Safety
///
/// The C function's contract.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[no_mangle]
pub unsafe extern "C" fn syscall(
    n: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    let args = [a1, a2, a3, a4, a5, a6];
    // SAFETY: forwarding the caller's arguments.
    let call = || unsafe { crate::sys::call(n, args) };
    match n {
        libc::SYS_close => {
            forget(a1 as c_int);
            call()
        }
        libc::SYS_close_range => {
            let r = call();
            if r == 0 && (a3 as c_int) & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 {
                forget_range(a1 as u32, a2 as u32);
            }
            r
        }
        #[cfg(target_arch = "x86_64")]
        libc::SYS_dup2 => {
            let r = call();
            if r >= 0 && a1 != a2 {
                forget(a2 as c_int);
            }
            r
        }
        libc::SYS_dup3 => {
            let r = call();
            if r >= 0 && a1 != a2 {
                forget(a2 as c_int);
            }
            r
        }
        libc::SYS_execve | libc::SYS_execveat => {
            drain_before_end();
            call()
        }
        _ => call(),
    }
}

/// `sigaction(2)`: the program's handler runs behind [`signals::trampoline`], which
/// tells the shim that a handler runs; the old action reported is the program's own.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    if !signals::wrappable(sig) {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real::sigaction(sig, act, old) };
    }
    // SAFETY: the caller passes a valid action or null.
    let (installed, saved) = match unsafe { act.as_ref() } {
        Some(a) => {
            let (copy, saved) = signals::wrap(sig, a);
            (Some(copy), Some(saved))
        }
        None => (None, None),
    };
    let saved_now = saved.unwrap_or_else(|| signals::wrap_state(sig));
    let act2 = installed
        .as_ref()
        .map_or(std::ptr::null(), |a| a as *const libc::sigaction);
    // SAFETY: a valid action (or null) and the caller's old-action pointer.
    let r = unsafe { real::sigaction(sig, act2, old) };
    if r != 0 {
        if let Some(s) = saved {
            signals::restore(sig, s);
        }
        return r;
    }
    // SAFETY: the caller's old-action pointer, filled in by the kernel.
    if let Some(o) = unsafe { old.as_mut() } {
        signals::unwrap_old(o, saved_now);
    }
    r
}

/// `signal(2)`, with the C library's (BSD) semantics: the handler stays installed, the
/// signal is blocked while it runs, interrupted calls restart. Through [`sigaction`].
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn signal(sig: c_int, handler: sighandler_t) -> sighandler_t {
    // SAFETY: an all-zero sigaction is a valid value.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = libc::SA_RESTART;
    // SAFETY: `act.sa_mask` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaddset(&mut act.sa_mask, sig) != 0 {
            return libc::SIG_ERR;
        }
    }
    // SAFETY: an all-zero sigaction is a valid value.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to two sigactions.
    if unsafe { sigaction(sig, &act, &mut old) } != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}
