//! System calls made without the C library: for the interposed `syscall` (which must not
//! call itself, and may run before `dlsym` is usable) and for the event loop's short
//! waits (`epoll_pwait2`, `ppoll` with a timeout finer than a millisecond).

use std::time::Duration;

use libc::{c_int, c_long};

/// The system call `n` with six arguments: the kernel's result (`-errno` on failure).
///
/// # Safety
///
/// The arguments must be valid for the system call `n`.
#[cfg(target_arch = "x86_64")]
pub unsafe fn raw(n: c_long, a: [c_long; 6]) -> c_long {
    let ret: c_long;
    // SAFETY: the caller passes valid arguments; the syscall instruction clobbers only
    // rcx and r11 besides rax.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") n => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// The system call `n` with six arguments: the kernel's result (`-errno` on failure).
///
/// # Safety
///
/// The arguments must be valid for the system call `n`.
#[cfg(target_arch = "aarch64")]
pub unsafe fn raw(n: c_long, a: [c_long; 6]) -> c_long {
    let ret: c_long;
    // SAFETY: the caller passes valid arguments; svc clobbers only x0.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") n,
            inlateout("x0") a[0] => ret,
            in("x1") a[1],
            in("x2") a[2],
            in("x3") a[3],
            in("x4") a[4],
            in("x5") a[5],
            options(nostack),
        );
    }
    ret
}

/// As [`raw`], with the C library's convention: -1 and `errno` on failure.
///
/// # Safety
///
/// The arguments must be valid for the system call `n`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub unsafe fn call(n: c_long, a: [c_long; 6]) -> c_long {
    // SAFETY: forwarded.
    let r = unsafe { raw(n, a) };
    if (-4095..0).contains(&r) {
        // SAFETY: __errno_location returns this thread's errno.
        unsafe { *libc::__errno_location() = -r as c_int };
        return -1;
    }
    r
}

/// A `timespec` of `d`.
pub fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

/// The kernel's `sigset_t` size.
const KERNEL_SIGSET: c_long = 8;

/// `epoll_pwait2(epfd, events, max, timeout, mask)`, with the C library's convention
/// for errors: None when the kernel lacks it (or this architecture has no [`raw`]).
///
/// # Safety
///
/// The arguments of `epoll_pwait`.
pub unsafe fn epoll_pwait2(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: Duration,
    mask: *const libc::sigset_t,
) -> Option<c_int> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let ts = timespec(timeout);
        let args = [
            epfd as c_long,
            events as c_long,
            max as c_long,
            &ts as *const libc::timespec as c_long,
            mask as c_long,
            KERNEL_SIGSET,
        ];
        // SAFETY: the caller's epoll arguments and a valid timespec.
        let r = unsafe { raw(libc::SYS_epoll_pwait2, args) };
        if r == -(libc::ENOSYS as c_long) {
            return None;
        }
        if r < 0 {
            // SAFETY: __errno_location returns this thread's errno.
            unsafe { *libc::__errno_location() = -r as c_int };
            return Some(-1);
        }
        Some(r as c_int)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (epfd, events, max, timeout, mask, KERNEL_SIGSET);
        None
    }
}
