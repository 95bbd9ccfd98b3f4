//! What the shim knows about each descriptor number, readable without a lock (and from
//! a signal handler).
//!
//! Every interposed call looks here first: a descriptor that is not a registered socket
//! goes straight to the C library, whatever thread calls. The kind of a number is
//! learnt once (one `fstat`, `getsockopt`, `fcntl`) and forgotten when the number is
//! closed, replaced by `dup2`/`dup3` or handed out again by `accept`.
//!
//! A queued socket's entry also holds its slot and its *identity*, the socket's cookie
//! (`SO_COOKIE`, unique for the life of the network namespace). Each write compares the
//! identity of the descriptor with the entry's, so that a number closed in a way the
//! shim did not see and then reused for another file can never send its bytes to the
//! old socket: a mismatch drops the stale entry.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

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
    /// The number was closed or replaced where the shim could not take its lock (a
    /// signal handler, or the shim's own thread): the shim's state still maps it, and
    /// must forget it before the number is used again.
    Stale = 4,
}

impl Kind {
    fn from_u8(v: u8) -> Kind {
        match v {
            1 => Kind::Plain,
            2 => Kind::Queued,
            3 => Kind::Failed,
            4 => Kind::Stale,
            _ => Kind::Unknown,
        }
    }

    /// Whether the shim's state maps the number (calls on it need the shim's lock).
    pub fn is_managed(self) -> bool {
        matches!(self, Kind::Queued | Kind::Failed | Kind::Stale)
    }
}

static KINDS: [AtomicU8; MAX_FDS] = [const { AtomicU8::new(0) }; MAX_FDS];
static SLOTS: [AtomicU32; MAX_FDS] = [const { AtomicU32::new(0) }; MAX_FDS];
static IDS: [AtomicU64; MAX_FDS] = [const { AtomicU64::new(0) }; MAX_FDS];

fn index(fd: i32) -> Option<usize> {
    usize::try_from(fd).ok().filter(|&i| i < MAX_FDS)
}

/// The kind of `fd` (out-of-range numbers are `Plain`).
pub fn kind(fd: i32) -> Kind {
    match index(fd) {
        Some(i) => Kind::from_u8(KINDS[i].load(Ordering::Acquire)),
        None => Kind::Plain,
    }
}

/// Records the kind of `fd` (ignored for out-of-range numbers).
pub fn set(fd: i32, kind: Kind) {
    if let Some(i) = index(fd) {
        KINDS[i].store(kind as u8, Ordering::Release);
    }
}

/// Records that `fd` is the socket `id`, registered in `slot`, with `kind` (`Queued` or
/// `Failed`). A reader that sees `kind` sees the slot and identity that go with it.
pub fn set_socket(fd: i32, kind: Kind, slot: u32, id: u64) {
    if let Some(i) = index(fd) {
        KINDS[i].store(Kind::Unknown as u8, Ordering::Release);
        SLOTS[i].store(slot, Ordering::Relaxed);
        IDS[i].store(id, Ordering::Relaxed);
        KINDS[i].store(kind as u8, Ordering::Release);
    }
}

/// The kind, slot and identity recorded for `fd`.
pub fn entry(fd: i32) -> (Kind, u32, u64) {
    match index(fd) {
        Some(i) => {
            let k = Kind::from_u8(KINDS[i].load(Ordering::Acquire));
            (
                k,
                SLOTS[i].load(Ordering::Relaxed),
                IDS[i].load(Ordering::Relaxed),
            )
        }
        None => (Kind::Plain, 0, 0),
    }
}

/// Marks a managed number stale and any other as unknown (lock-free: for the paths that
/// cannot take the shim's lock).
pub fn invalidate(fd: i32) {
    match kind(fd) {
        Kind::Unknown => {}
        k if k.is_managed() => set(fd, Kind::Stale),
        _ => set(fd, Kind::Unknown),
    }
}

/// The numbers in `first..=last` (clamped to the table) whose kind is not `Unknown`.
pub fn known_in(first: u32, last: u32) -> impl Iterator<Item = i32> {
    let end = (last as usize).min(MAX_FDS - 1);
    (first as usize..=end)
        .filter(|&i| KINDS[i].load(Ordering::Acquire) != Kind::Unknown as u8)
        .map(|i| i as i32)
}

/// The identity of the socket `fd` refers to: its cookie (never 0). None when `fd` is
/// not open or not a socket.
pub fn identity(fd: i32) -> Option<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes one u64 into `cookie`, whose size is passed in `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (r == 0 && cookie != 0).then_some(cookie)
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
        invalidate(7000);
        assert_eq!(kind(7000), Kind::Stale);
        set(7000, Kind::Plain);
        invalidate(7000);
        assert_eq!(kind(7000), Kind::Unknown);
        assert_eq!(kind(-1), Kind::Plain);
        assert_eq!(kind(MAX_FDS as i32), Kind::Plain);
        set_socket(7001, Kind::Queued, 5, 99);
        assert_eq!(entry(7001), (Kind::Queued, 5, 99));
        assert_eq!(known_in(7000, 7005).collect::<Vec<_>>(), vec![7001]);
        set(7001, Kind::Unknown);
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

    #[test]
    fn identity_tells_sockets_apart() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let b = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let ia = identity(a.as_raw_fd()).expect("cookie");
        assert_eq!(identity(a.as_raw_fd()), Some(ia), "stable");
        assert_ne!(identity(b.as_raw_fd()), Some(ia));
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(identity(f.as_raw_fd()), None, "not a socket");
        assert_eq!(identity(-1), None);
    }
}
