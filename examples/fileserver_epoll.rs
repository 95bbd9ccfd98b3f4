//! The baseline: the same file server on plain epoll + `sendfile(2)`, one thread per
//! worker, each with its own `SO_REUSEPORT` listener and level-triggered epoll instance,
//! non-blocking sockets; one request is answered at a time per connection (pipelined
//! heads wait in its buffer), its file sent with `sendfile(2)` until `EAGAIN`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::PathBuf;

use super::{response_head, route, take_heads, Route};

struct Conn {
    sock: TcpStream,
    pending: Vec<u8>,
    heads: std::collections::VecDeque<Vec<u8>>,
    /// The response being sent: head bytes left, the file and what is left of it.
    out: Vec<u8>,
    file: Option<(File, i64, u64)>,
    keep: bool,
}

fn epoll_ctl(ep: RawFd, op: i32, fd: RawFd, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events,
        u64: fd as u64,
    };
    // SAFETY: `ev` is valid for the call; the kernel checks the descriptors.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Serves on `addr` with `workers` threads until the process ends.
pub fn serve(addr: SocketAddr, root: PathBuf, workers: usize) -> io::Result<()> {
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let root = root.clone();
            let l = reuseport_listener(addr)?;
            Ok(std::thread::spawn(move || worker(l, root)))
        })
        .collect::<io::Result<_>>()?;
    println!("listening on {addr}");
    for t in threads {
        t.join()
            .map_err(|_| io::Error::other("worker panicked"))??;
    }
    Ok(())
}

/// A listening socket on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT` (backlog 1024).
fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let SocketAddr::V4(a) = addr else {
        return Err(io::Error::other("the epoll baseline listens on IPv4 only"));
    };
    // SAFETY: plain syscalls on a descriptor we own; `sa` lives across bind.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let l = TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            let p = (&one as *const libc::c_int).cast();
            if libc::setsockopt(fd, libc::SOL_SOCKET, opt, p, 4) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = a.port().to_be();
        sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len) < 0
            || libc::listen(fd, 1024) < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(l)
    }
}

fn worker(l: TcpListener, root: PathBuf) -> io::Result<()> {
    l.set_nonblocking(true)?;
    // SAFETY: plain syscall; the result is checked and then owned.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let _ep_owner = unsafe { std::os::fd::OwnedFd::from_raw_fd(ep) };
    epoll_ctl(ep, libc::EPOLL_CTL_ADD, l.as_raw_fd(), libc::EPOLLIN as u32)?;
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        // SAFETY: `events` is writable for its length.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as RawFd;
            if fd == l.as_raw_fd() {
                while let Ok((s, _)) = l.accept() {
                    s.set_nonblocking(true)?;
                    let _ = s.set_nodelay(true);
                    let sfd = s.as_raw_fd();
                    epoll_ctl(ep, libc::EPOLL_CTL_ADD, sfd, libc::EPOLLIN as u32)?;
                    conns.insert(
                        sfd,
                        Conn {
                            sock: s,
                            pending: Vec::new(),
                            heads: Default::default(),
                            out: Vec::new(),
                            file: None,
                            keep: true,
                        },
                    );
                }
                continue;
            }
            let Some(c) = conns.get_mut(&fd) else {
                continue;
            };
            let alive = step(c, &root).unwrap_or(false);
            if !alive {
                conns.remove(&fd);
                continue;
            }
            let want = if c.out.is_empty() && c.file.is_none() {
                libc::EPOLLIN
            } else {
                libc::EPOLLOUT
            };
            epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, want as u32)?;
        }
    }
}

/// Reads what is there, then sends until the socket is full or nothing is left.
/// Returns whether the connection stays open.
fn step(c: &mut Conn, root: &std::path::Path) -> io::Result<bool> {
    let mut buf = [0u8; 4096];
    loop {
        match c.sock.read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => c.pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    match take_heads(&mut c.pending) {
        Some(h) => c.heads.extend(h),
        None => return Ok(false),
    }
    loop {
        // Send what is queued of the current response.
        while !c.out.is_empty() {
            match c.sock.write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        if let Some((f, off, left)) = &mut c.file {
            while *left > 0 {
                let chunk = (*left).min(1 << 30) as usize;
                // SAFETY: both descriptors are open; `off` is ours.
                let r = unsafe { libc::sendfile(c.sock.as_raw_fd(), f.as_raw_fd(), off, chunk) };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::WouldBlock {
                        return Ok(true);
                    }
                    return Err(e);
                }
                if r == 0 {
                    return Ok(false); // the file shrank
                }
                *left -= r as u64;
            }
            c.file = None;
        }
        if !c.keep {
            return Ok(false);
        }
        let Some(head) = c.heads.pop_front() else {
            return Ok(true);
        };
        let (r, keep) = route(&head, root);
        c.keep = keep;
        match r {
            Route::Status(code, reason) => c.out = response_head(code, reason, 0, keep),
            Route::File { path, head } => match File::open(&path).and_then(|f| {
                let m = f.metadata()?;
                Ok((f, m))
            }) {
                Ok((f, m)) if m.is_file() => {
                    c.out = response_head(200, "OK", m.len(), keep);
                    if !head {
                        c.file = Some((f, 0, m.len()));
                    }
                }
                _ => c.out = response_head(404, "Not Found", 0, keep),
            },
        }
    }
}
