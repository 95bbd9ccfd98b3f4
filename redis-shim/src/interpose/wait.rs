//! The event loop's waits (`epoll_wait`, `epoll_pwait`, `epoll_pwait2`, `poll`): the
//! shim's flush point.
//!
//! Each wait first hands the queued writes to the executors and reaps completions; then
//! it sleeps on the program's own events, never on completions, so a client whose peer
//! does not read cannot delay the others. How long it may sleep before it looks at
//! completions again is [`Shim::plan`](crate::shim::Shim::plan)'s answer: as long as
//! the program asked, or slices of [`POLL_SLICE`] while a completion is due any moment.

use std::time::{Duration, Instant};

use libc::{c_int, epoll_event, nfds_t, pollfd, sigset_t};

use std::sync::atomic::Ordering;

use super::{active, in_shim, is_owner, start, Inside, PHASE, UNINIT};
use crate::epreg;
use crate::real;
use crate::shim::Wake;
use crate::sys;

/// Longest sleep on the program's events while a completion is due any moment.
const POLL_SLICE: Duration = Duration::from_micros(50);

/// A timeout of the program's wait as the shim passes it on.
#[derive(Clone, Copy)]
enum Timeout {
    /// Milliseconds, as the program's call takes them (-1: none).
    Ms(c_int),
    /// A short slice, finer than a millisecond.
    Fine(Duration),
}

/// Milliseconds from `now` until `t`, rounded up.
fn ms_until(t: Instant, now: Instant) -> c_int {
    ms_of(t.saturating_duration_since(now))
}

/// The event loop's wait, on the owner thread (see the module's notes). `real_wait(t)`
/// is the C library's wait with the caller's arguments and timeout `t`. `may_start`:
/// whether this wait may start the shim and make its thread the owner (`epoll_wait`,
/// `epoll_pwait`, `epoll_pwait2`); `poll` only flushes for an owner that exists, since
/// runtimes poll at startup (Rust's std checks fds 0-2 with `poll`) on threads that are
/// not the event loop.
fn event_wait(timeout_ms: c_int, may_start: bool, real_wait: impl Fn(Timeout) -> c_int) -> c_int {
    let owner = if may_start {
        start()
    } else {
        active() && is_owner()
    };
    if in_shim() || !owner {
        return real_wait(Timeout::Ms(timeout_ms));
    }
    let pump = || {
        let mut inside = Inside::enter();
        inside.shim().map_or(Wake::Idle, |s| {
            s.pump();
            s.plan()
        })
    };
    let mut wake = pump();
    if timeout_ms == 0 || wake == Wake::Idle {
        return real_wait(Timeout::Ms(timeout_ms));
    }
    let deadline = u64::try_from(timeout_ms)
        .ok()
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    loop {
        let now = Instant::now();
        let left = deadline.map(|d| d.saturating_duration_since(now));
        if left.is_some_and(|l| l.is_zero()) {
            return 0;
        }
        let n = match wake {
            Wake::Idle => {
                return real_wait(Timeout::Ms(deadline.map_or(-1, |d| ms_until(d, now))));
            }
            Wake::Poll => real_wait(Timeout::Fine(
                left.map_or(POLL_SLICE, |l| l.min(POLL_SLICE)),
            )),
            Wake::At(t) => {
                let until = deadline.map_or(t, |d| d.min(t));
                real_wait(Timeout::Ms(ms_until(until, now)))
            }
        };
        if n != 0 {
            return n;
        }
        wake = pump();
    }
}

/// An epoll wait with timeout `t`: `epoll_pwait` for milliseconds, `epoll_pwait2` for a
/// finer slice (a 1 ms `epoll_pwait` where the kernel lacks it).
///
/// # Safety
///
/// The arguments of `epoll_pwait` (`mask` may be null).
unsafe fn epoll(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    t: Timeout,
    mask: *const sigset_t,
) -> c_int {
    if let Timeout::Fine(d) = t {
        // SAFETY: the caller's arguments.
        if let Some(n) = unsafe { sys::epoll_pwait2(epfd, events, max, d, mask) } {
            return n;
        }
    }
    let ms = match t {
        Timeout::Ms(ms) => ms,
        Timeout::Fine(_) => 1,
    };
    // SAFETY: the caller's arguments.
    unsafe { real::epoll_pwait(epfd, events, max, ms, mask) }
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
    event_wait(timeout, true, |t| unsafe {
        match t {
            Timeout::Ms(ms) => real::epoll_wait(epfd, events, max, ms),
            t => epoll(epfd, events, max, t, std::ptr::null()),
        }
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
    event_wait(timeout, true, |t| unsafe {
        epoll(epfd, events, max, t, mask)
    })
}

/// `epoll_pwait2(2)`: the flush point of the event loop (a timeout finer than a
/// millisecond is rounded up).
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait2(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: *const libc::timespec,
    mask: *const sigset_t,
) -> c_int {
    // SAFETY: the caller passes a valid timespec or null.
    let ms = match unsafe { timeout.as_ref() } {
        None => -1,
        Some(ts) => ms_of(Duration::new(
            ts.tv_sec.max(0) as u64,
            ts.tv_nsec.clamp(0, 999_999_999) as u32,
        )),
    };
    // SAFETY: forwarding the caller's arguments with another timeout.
    event_wait(ms, true, |t| unsafe {
        let d = match t {
            Timeout::Ms(ms) => u64::try_from(ms).ok().map(Duration::from_millis),
            Timeout::Fine(d) => Some(d),
        };
        match d {
            Some(d) => sys::epoll_pwait2(epfd, events, max, d, mask)
                .unwrap_or_else(|| real::epoll_pwait(epfd, events, max, ms_of(d), mask)),
            None => real::epoll_pwait(epfd, events, max, -1, mask),
        }
    })
}

/// `d` in whole milliseconds, rounded up.
fn ms_of(d: Duration) -> c_int {
    c_int::try_from(d.as_micros().div_ceil(1000)).unwrap_or(c_int::MAX)
}

/// `poll(2)`: a flush point too, on the thread that already owns the shim.
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments with another timeout.
    event_wait(timeout, false, |t| unsafe {
        match t {
            Timeout::Ms(ms) => real::poll(fds, n, ms),
            Timeout::Fine(d) => {
                let ts = sys::timespec(d);
                libc::ppoll(fds, n, &ts, std::ptr::null())
            }
        }
    })
}

/// `epoll_ctl(2)`: the event-loop thread's registrations are recorded, and `EPOLLOUT`
/// is left out of those of sockets whose allowance is used up (see [`crate::epreg`]).
///
/// # Safety
///
/// The C function's contract.
#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut epoll_event,
) -> c_int {
    let ours = !in_shim() && (PHASE.load(Ordering::Acquire) == UNINIT || is_owner());
    // SAFETY: the caller passes a valid event or null.
    let ev = unsafe { event.as_ref() }.map(|e| (e.events, e.u64));
    match (ours, op, ev) {
        (true, libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD, Some((events, data))) => {
            let mut pass = epoll_event {
                events: epreg::events_for(epfd, fd, events),
                u64: data,
            };
            // SAFETY: the caller's arguments, with a valid event.
            let r = unsafe { real::epoll_ctl(epfd, op, fd, &mut pass) };
            if r == 0 {
                epreg::record(epfd, fd, events, data);
            }
            r
        }
        (true, libc::EPOLL_CTL_DEL, _) => {
            // SAFETY: forwarding the caller's arguments.
            let r = unsafe { real::epoll_ctl(epfd, op, fd, event) };
            if r == 0 {
                epreg::on_del(epfd, fd);
            }
            r
        }
        // SAFETY: forwarding the caller's arguments.
        _ => unsafe { real::epoll_ctl(epfd, op, fd, event) },
    }
}
