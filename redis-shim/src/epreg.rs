//! The program's epoll registrations of its sockets, and `EPOLLOUT` held back while the
//! shim holds a socket's whole allowance.
//!
//! A socket is writable for the program when the kernel *and* the shim have room. When
//! a write finds the socket's allowance used up (a short write or `EAGAIN`), the kernel
//! may well still have room, since the shim's request is in flight, and would report
//! `EPOLLOUT` at once: an event loop waiting for writability (Redis) would spin, writing
//! and getting `EAGAIN`, until the request completes. So the shim *masks* the socket:
//! `EPOLLOUT` is taken out of the program's registration (`EPOLL_CTL_MOD`, and out of
//! every `epoll_ctl` the program makes on it meanwhile) until enough of the allowance is
//! free again ([`Shim::pump`](crate::shim::Shim::pump)), when the registration is put
//! back as the program made it, and the kernel reports `EPOLLOUT` if it has room.
//!
//! Only level-triggered registrations without `EPOLLONESHOT`, in a single epoll set, are
//! masked; a program that waits with `poll`, or registers a socket otherwise, may spin
//! for the time a request takes. The table is written by the owner thread's `epoll_ctl`
//! (and before the shim starts), lock-free.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

use crate::fdtable::MAX_FDS;

/// The epoll set a number is registered in (-1: none known; -2: more than one).
static EPFD: [AtomicI32; MAX_FDS] = [const { AtomicI32::new(-1) }; MAX_FDS];
/// The events the program registered.
static EVENTS: [AtomicU32; MAX_FDS] = [const { AtomicU32::new(0) }; MAX_FDS];
/// The data the program registered.
static DATA: [AtomicU64; MAX_FDS] = [const { AtomicU64::new(0) }; MAX_FDS];
/// Whether `EPOLLOUT` is held back.
static MASKED: [AtomicBool; MAX_FDS] = [const { AtomicBool::new(false) }; MAX_FDS];

const OUT: u32 = libc::EPOLLOUT as u32;

fn index(fd: i32) -> Option<usize> {
    usize::try_from(fd).ok().filter(|&i| i < MAX_FDS)
}

/// Whether a registration with `events` can be masked.
fn maskable(events: u32) -> bool {
    events & (libc::EPOLLET as u32 | libc::EPOLLONESHOT as u32) == 0
}

/// The events to hand the kernel for the program's `events` on `fd` in `epfd` (ADD or
/// MOD): without `EPOLLOUT` while the socket is masked.
pub fn events_for(epfd: i32, fd: i32, events: u32) -> u32 {
    let Some(i) = index(fd) else { return events };
    let prev = EPFD[i].load(Ordering::Relaxed);
    let single = epfd >= 0 && (prev == -1 || prev == epfd);
    if single && maskable(events) && MASKED[i].load(Ordering::Relaxed) {
        events & !OUT
    } else {
        events
    }
}

/// Records the program's registration of `fd` in `epfd` (an ADD or MOD that succeeded).
pub fn record(epfd: i32, fd: i32, events: u32, data: u64) {
    let Some(i) = index(fd) else { return };
    let prev = EPFD[i].load(Ordering::Relaxed);
    let set = if prev == -1 || prev == epfd { epfd } else { -2 };
    EPFD[i].store(set, Ordering::Relaxed);
    EVENTS[i].store(events, Ordering::Relaxed);
    DATA[i].store(data, Ordering::Relaxed);
}

/// The program removed `fd` from `epfd` (or closed it).
pub fn on_del(epfd: i32, fd: i32) {
    if let Some(i) = index(fd) {
        let prev = EPFD[i].load(Ordering::Relaxed);
        if prev == epfd || prev == -2 {
            EPFD[i].store(-1, Ordering::Relaxed);
        }
    }
}

/// Calls `epoll_ctl(MOD)` for `fd` with `events`.
fn modify(epfd: i32, fd: i32, events: u32, data: u64) {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: a valid event; a failure (the program removed the socket meanwhile) is
    // harmless.
    unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut ev) };
}

/// Holds back `EPOLLOUT` for `fd` (its allowance is used up).
pub fn mask(fd: i32) {
    let Some(i) = index(fd) else { return };
    if MASKED[i].swap(true, Ordering::Relaxed) {
        return;
    }
    let (epfd, events) = (
        EPFD[i].load(Ordering::Relaxed),
        EVENTS[i].load(Ordering::Relaxed),
    );
    if epfd >= 0 && maskable(events) && events & OUT != 0 {
        modify(epfd, fd, events & !OUT, DATA[i].load(Ordering::Relaxed));
    }
}

/// Puts the program's registration of `fd` back (there is room again, or the shim no
/// longer manages it); `restore`: call the kernel (false when the number is gone).
pub fn unmask(fd: i32, restore: bool) {
    let Some(i) = index(fd) else { return };
    if !MASKED[i].swap(false, Ordering::Relaxed) || !restore {
        return;
    }
    let (epfd, events) = (
        EPFD[i].load(Ordering::Relaxed),
        EVENTS[i].load(Ordering::Relaxed),
    );
    if epfd >= 0 && maskable(events) && events & OUT != 0 {
        modify(epfd, fd, events, DATA[i].load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_masked_and_put_back() {
        let fd = 9000;
        let lt = (libc::EPOLLIN | libc::EPOLLOUT) as u32;
        let add = |epfd, events| {
            let e = events_for(epfd, fd, events);
            record(epfd, fd, events, 7);
            e
        };
        assert_eq!(add(3, lt), lt, "not masked");
        // (Set 3 is not ours: `mask` would call epoll_ctl on it; set the flag alone.)
        MASKED[fd as usize].store(true, Ordering::Relaxed);
        assert_eq!(add(3, lt), libc::EPOLLIN as u32, "masked");
        let et = lt | libc::EPOLLET as u32;
        assert_eq!(add(3, et), et, "edge-triggered: left alone");
        assert_eq!(add(4, lt), lt, "a second epoll set: left alone");
        on_del(4, fd);
        assert_eq!(add(3, lt), libc::EPOLLIN as u32, "one set again");
        unmask(fd, false);
        assert_eq!(add(3, lt), lt, "unmasked");
        on_del(3, fd);
    }
}
