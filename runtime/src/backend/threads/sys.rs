//! The system calls the `threads` backend wraps: eventfds, epoll, ppoll, the signal
//! mask and CPU pinning of its workers, a connect's result, a file's type.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Writes 1 to the eventfd `fd` (a saturated counter means a wakeup is pending anyway).
pub(super) fn signal_eventfd(fd: &OwnedFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes from a valid u64 to our own eventfd.
    let r = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    if r == 8 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EAGAIN) {
        Ok(())
    } else {
        Err(e)
    }
}

/// Resets the non-blocking eventfd `fd` (nothing to do if it is not signalled).
pub(super) fn drain_eventfd(fd: &OwnedFd) {
    let mut buf = 0u64;
    // SAFETY: reading 8 bytes into a valid u64 from our own non-blocking eventfd.
    unsafe { libc::read(fd.as_raw_fd(), (&mut buf as *mut u64).cast(), 8) };
}

pub(super) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked and then owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sleeps until `fd` is readable, `timeout` passes (Ok either way) or a signal arrives
/// (`Interrupted`).
pub(super) fn poll_in(fd: &OwnedFd, timeout: Option<Duration>) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: one valid pollfd; the timespec (if any) lives across the call; no sigmask.
    let r = unsafe { libc::ppoll(&mut pfd, 1, ts_ptr, std::ptr::null()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn epoll_ctl(
    epfd: &OwnedFd,
    op: i32,
    fd: RawFd,
    events: u32,
    token: u64,
) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: epoll_ctl on an epoll fd we own with a valid event struct.
    if unsafe { libc::epoll_ctl(epfd.as_raw_fd(), op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked and then owned.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A write to a closed pipe or socket must give EPIPE, not kill the process.
pub(super) fn block_sigpipe() {
    // SAFETY: manipulating this thread's own signal mask with a properly initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

pub(super) fn pin_to_cpu(cpu: usize) {
    if let Err(e) = crate::backend::pin_current_thread(cpu) {
        eprintln!("fastio: cannot pin worker to CPU {cpu}: {e}");
    }
}

pub(super) fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The `S_IFMT` bits of the file `fd`, or `-errno`.
pub(super) fn file_type(fd: RawFd) -> Result<libc::mode_t, i32> {
    // SAFETY: stat is plain data; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `st`; `fd` is a descriptor the caller holds.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(-last_errno());
    }
    Ok(st.st_mode & libc::S_IFMT)
}

/// The end of a connect in progress on `fd`: `-EAGAIN` while it is not writable, then
/// the socket's error (`SO_ERROR`), `-ECONNABORTED` if it hung up without one, else 0.
pub(super) fn connect_result(fd: RawFd) -> i32 {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    if unsafe { libc::poll(&mut p, 1, 0) } < 0 {
        return -last_errno();
    }
    if p.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) == 0 {
        return -libc::EAGAIN;
    }
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for getsockopt's output.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        -last_errno()
    } else if err != 0 {
        -err
    } else if p.revents & libc::POLLHUP != 0 {
        -libc::ECONNABORTED
    } else {
        0
    }
}
