//! Listening sockets for the servers and the tests.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

/// Listen backlog: the kernel caps it at `net.core.somaxconn` (4096 by default).
pub const BACKLOG: i32 = 4096;

/// Binds `addr` (with `SO_REUSEADDR`, as std does) and listens with [`BACKLOG`].
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    raise_backlog(&listener)?;
    Ok(listener)
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
