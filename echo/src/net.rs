//! Listening sockets for the servers and the tests.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

/// Listen backlog: the kernel caps it at `net.core.somaxconn` (4096 by default).
pub const BACKLOG: i32 = 4096;

/// Binds `addr` (with `SO_REUSEADDR`, as std does), sets `TCP_NODELAY` (inherited by
/// every connection it accepts, also those an executor installs straight into a slot)
/// and listens with [`BACKLOG`].
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    set_nodelay(&listener)?;
    raise_backlog(&listener)?;
    Ok(listener)
}

/// Sets `TCP_NODELAY` on `listener`: echo is request/response, and a reply sent in two
/// parts (a message larger than one provided buffer) must not wait for the client's
/// delayed ACK (Nagle), which cost 40 ms per message. Linux copies it to accepted
/// sockets; the epoll server also sets it on each connection.
pub fn set_nodelay(listener: &TcpListener) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a c_int option value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the accept backlog of a listening socket to [`BACKLOG`], so that a burst of a
/// thousand connects queues in the kernel instead of being dropped and retried a second
/// later, as std's backlog of 128 would.
pub fn raise_backlog(listener: &TcpListener) -> io::Result<()> {
    // SAFETY: listen(2) on a socket `listener` owns for the duration of the call; on an
    // already listening socket Linux only updates the backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
