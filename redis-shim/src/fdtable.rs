//! What the shim knows about each descriptor number, readable without a lock.
//!
//! Every interposed call looks here first: a descriptor that is not a registered socket
//! goes straight to the C library, whatever thread calls. The kind of a number is
//! learnt once (one `fstat`, `getsockopt`, `fcntl`) and forgotten when the number is
//! closed, replaced by `dup2`/`dup3` or handed out again by `accept`.

use std::sync::atomic::{AtomicU8, Ordering};

/// Descriptor numbers tracked; calls on higher numbers are never interposed.
pub const MAX_FDS: usize = 1 << 16;

/// What a descriptor number refers to, as far as the shim knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Not looked at yet (or closed since).
    Unknown = 0,
    /// Not ours: a file, pipe, datagram or blocking socket, or a socket the shim gave
    /// up on. Calls go to the C library.
    Plain = 1,
    /// A non-blocking stream socket whose writes go through the rings.
    Queued = 2,
    /// A queued socket whose queued write failed; the error is reported on the next
    /// call.
    Failed = 3,
}

impl Kind {
    fn from_u8(v: u8) -> Kind {
        match v {
            1 => Kind::Plain,
            2 => Kind::Queued,
            3 => Kind::Failed,
            _ => Kind::Unknown,
        }
    }

    /// Whether calls on the descriptor need the shim's state.
    pub fn is_managed(self) -> bool {
        matches!(self, Kind::Queued | Kind::Failed)
    }
}

static KINDS: [AtomicU8; MAX_FDS] = [const { AtomicU8::new(0) }; MAX_FDS];

/// The kind of `fd` (out-of-range numbers are `Plain`).
pub fn kind(fd: i32) -> Kind {
    match usize::try_from(fd).ok().and_then(|i| KINDS.get(i)) {
        Some(k) => Kind::from_u8(k.load(Ordering::Acquire)),
        None => Kind::Plain,
    }
}

/// Records the kind of `fd` (ignored for out-of-range numbers).
pub fn set(fd: i32, kind: Kind) {
    if let Some(k) = usize::try_from(fd).ok().and_then(|i| KINDS.get(i)) {
        k.store(kind as u8, Ordering::Release);
    }
}

/// Whether `fd` is a non-blocking stream socket, the only descriptors the shim queues
/// writes for. Sockets in blocking mode are left alone: their writers expect blocking
/// semantics and usually do not run an event loop that would flush the queue.
pub fn is_queueable_socket(fd: i32) -> bool {
    // SAFETY: fstat writes into a zeroed stat buffer of the right type.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid for writes; a bad fd just fails.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return false;
    }
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_TYPE writes one c_int into `ty`, whose size is passed in `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 || ty != libc::SOCK_STREAM {
        return false;
    }
    // SAFETY: F_GETFL takes no argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    flags >= 0 && flags & libc::O_NONBLOCK != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn kinds_round_trip_and_out_of_range_is_plain() {
        set(7000, Kind::Queued);
        assert_eq!(kind(7000), Kind::Queued);
        set(7000, Kind::Unknown);
        assert_eq!(kind(7000), Kind::Unknown);
        assert_eq!(kind(-1), Kind::Plain);
        assert_eq!(kind(MAX_FDS as i32), Kind::Plain);
    }

    #[test]
    fn only_nonblocking_stream_sockets_are_queueable() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_queueable_socket(f.as_raw_fd()));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert!(!is_queueable_socket(s.as_raw_fd()), "blocking socket");
        s.set_nonblocking(true).unwrap();
        assert!(is_queueable_socket(s.as_raw_fd()));
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_nonblocking(true).unwrap();
        assert!(!is_queueable_socket(u.as_raw_fd()), "datagram socket");
    }
}
