//! The classic epoll echo server: the baseline that the proactor server is measured
//! against.
//!
//! # Design
//!
//! - One thread, one epoll instance, **level-triggered**. Level triggering keeps the loop
//!   simple and fair: each readiness report costs one `recv` (at most
//!   [`ServerConfig::read_chunk`] bytes), and a connection that still has data is simply
//!   reported again on the next `epoll_wait`, so one busy client cannot starve the others.
//! - The listener and every connection are non-blocking. All readable connections are
//!   accepted per wakeup until `EAGAIN`.
//! - Echo path: data read is written back at once; whatever the socket does not take
//!   (`EAGAIN` or a short write) is kept in a per-connection *pending* buffer, in order,
//!   and `EPOLLOUT` interest is switched on until the buffer is drained. No byte is ever
//!   dropped.
//! - Back-pressure: while a connection has at least [`ServerConfig::max_pending`] unsent
//!   bytes (1 MiB by default) the server stops reading from it (`EPOLLIN` interest off) and
//!   resumes once `EPOLLOUT` has drained it below the bound. A client that sends and never
//!   reads therefore costs at most `max_pending + read_chunk` bytes of server memory,
//!   and the other connections keep being served.
//! - End of stream: after `recv` returns 0 the remaining pending bytes are still delivered,
//!   then the connection is closed (so a client that half-closes gets its full echo).
//!   Any error on a connection (`ECONNRESET`, `EPIPE`, ...) closes that connection only.
//! - Descriptor exhaustion (`EMFILE`/`ENFILE`) on accept is handled with a reserved spare
//!   descriptor: it is released, the pending connection is accepted and closed at once,
//!   and the spare is re-opened, so the level-triggered listener cannot spin.
//! - Epoll tokens carry the descriptor and a generation number, so an event that was
//!   queued for a connection closed earlier in the same batch is ignored even if the
//!   descriptor number was already reused by a new connection.
//! - [`serve`] waits at most 100 ms in `epoll_wait`, so it notices the shutdown flag
//!   within that time; it then closes every connection and returns its statistics.

use std::fmt;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Default bound on the unsent bytes of one connection before the server stops reading
/// from it (1 MiB).
pub const DEFAULT_MAX_PENDING: usize = 1 << 20;

/// Default size of one `recv` (64 KiB).
pub const DEFAULT_READ_CHUNK: usize = 64 * 1024;

/// Longest time [`serve`] blocks in `epoll_wait` before it looks at the shutdown flag.
pub const SHUTDOWN_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// How long the listener is left out of the event loop after an accept error that is
/// neither transient nor descriptor exhaustion (e.g. `ENOBUFS`), so that the
/// level-triggered loop does not spin on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Epoll token of the listener. Connection tokens are `generation << 32 | fd`, and
/// generations stop below `u32::MAX`, so no connection token can equal it.
const LISTENER_TOKEN: u64 = u64::MAX;

/// Tunables of the epoll server. [`ServerConfig::default`] is what [`serve`] uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Unsent bytes of one connection at or above which the server stops reading from it.
    pub max_pending: usize,
    /// Bytes requested by one `recv`.
    pub read_chunk: usize,
    /// Events fetched by one `epoll_wait`.
    pub max_events: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_pending: DEFAULT_MAX_PENDING,
            read_chunk: DEFAULT_READ_CHUNK,
            max_events: 1024,
        }
    }
}

/// What one run of [`serve`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServeStats {
    /// Connections accepted (and served).
    pub accepted: u64,
    /// Connections closed: by the peer, because of an error, or at shutdown.
    pub closed: u64,
    /// Connections closed because of an error (reset by the peer, broken pipe, ...).
    pub conn_errors: u64,
    /// Failed `accept` calls, other than "would block" and aborted handshakes.
    pub accept_errors: u64,
    /// Connections accepted and closed at once because the process was out of descriptors.
    pub rejected: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes echoed back to clients.
    pub bytes_out: u64,
    /// Largest number of connections open at the same time.
    pub peak_connections: usize,
    /// Largest number of unsent bytes held for one connection.
    pub peak_pending: usize,
    /// Times reading from a connection was paused because its pending buffer was full.
    pub read_pauses: u64,
}

impl fmt::Display for ServeStats {
    /// One line: `accepted N, closed N (E errors), peak N connections, in B bytes, out B
    /// bytes, peak pending B bytes, P read pauses, A accept errors, R rejected`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted {}, closed {} ({} errors), peak {} connections, in {} bytes, \
             out {} bytes, peak pending {} bytes, {} read pauses, {} accept errors, \
             {} rejected",
            self.accepted,
            self.closed,
            self.conn_errors,
            self.peak_connections,
            self.bytes_in,
            self.bytes_out,
            self.peak_pending,
            self.read_pauses,
            self.accept_errors,
            self.rejected,
        )
    }
}

/// Serves echo on `listener` with [`ServerConfig::default`] until `shutdown` becomes
/// true (checked at least every 100 ms), then closes every connection and returns.
///
/// Errors are returned only for failures of the event loop itself (creating the epoll
/// instance, registering the listener, `epoll_wait`); a failing connection is closed
/// and counted in [`ServeStats::conn_errors`].
pub fn serve(listener: TcpListener, shutdown: &AtomicBool) -> io::Result<ServeStats> {
    serve_with(listener, shutdown, &ServerConfig::default())
}

/// Like [`serve`], with explicit tunables.
///
/// The listener is switched to non-blocking mode and its accept backlog is raised to
/// [`crate::net::BACKLOG`], so that a burst of connects (e.g. `echo_bench -c 1000`) is not slowed by
/// SYN retransmissions.
pub fn serve_with(
    listener: TcpListener,
    shutdown: &AtomicBool,
    cfg: &ServerConfig,
) -> io::Result<ServeStats> {
    if cfg.max_pending == 0 || cfg.read_chunk == 0 || cfg.max_events == 0 {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "max_pending, read_chunk and max_events must be positive",
        ));
    }
    listener.set_nonblocking(true)?;
    crate::net::raise_backlog(&listener)?;
    let epoll = Epoll::new()?;
    epoll.ctl(
        libc::EPOLL_CTL_ADD,
        listener.as_raw_fd(),
        libc::EPOLLIN as u32,
        LISTENER_TOKEN,
    )?;
    let mut server = Server {
        cfg: cfg.clone(),
        epoll,
        listener,
        listener_paused_until: None,
        conns: Vec::new(),
        live: 0,
        next_gen: 0,
        buf: vec![0; cfg.read_chunk],
        spare_fd: File::open("/dev/null").ok(),
        stats: ServeStats::default(),
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; cfg.max_events];
    while !shutdown.load(Ordering::Acquire) {
        let mut timeout = SHUTDOWN_CHECK_INTERVAL;
        if let Some(until) = server.listener_paused_until {
            let now = Instant::now();
            if now >= until {
                server.resume_listener()?;
            } else {
                timeout = timeout.min(until - now);
            }
        }
        let n = server.epoll.wait(&mut events, timeout)?;
        for ev in &events[..n] {
            // Copy the fields out: `epoll_event` is packed on x86_64.
            let (token, flags) = (ev.u64, ev.events);
            if token == LISTENER_TOKEN {
                server.accept_all()?;
            } else {
                server.handle(token, flags);
            }
        }
    }
    server.close_all();
    Ok(server.stats)
}

/// One client connection.
struct Conn {
    stream: TcpStream,
    /// Generation, part of the epoll token (see the module documentation).
    gen: u32,
    /// Bytes read but not yet written back; `pending[sent..]` is still to be sent.
    pending: Vec<u8>,
    sent: usize,
    /// Current epoll interest.
    interest: u32,
    /// The peer has finished sending (recv returned 0).
    read_closed: bool,
}

impl Conn {
    fn unsent(&self) -> usize {
        self.pending.len() - self.sent
    }
}

/// What happens to a connection after it was handled.
enum Next {
    Keep,
    Close,
    Fail,
}

struct Server {
    cfg: ServerConfig,
    epoll: Epoll,
    listener: TcpListener,
    /// Set while the listener is out of the event loop after an accept error.
    listener_paused_until: Option<Instant>,
    /// Connections indexed by descriptor number.
    conns: Vec<Option<Conn>>,
    live: usize,
    next_gen: u32,
    /// Receive buffer shared by all connections.
    buf: Vec<u8>,
    /// Reserved descriptor, released to accept-and-close when out of descriptors.
    spare_fd: Option<File>,
    stats: ServeStats,
}

impl Server {
    /// Accepts until the listener would block.
    fn accept_all(&mut self) -> io::Result<()> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.add(stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    self.stats.accept_errors += 1;
                    if self.spare_fd.take().is_some() {
                        // The spare is closed now: take the connection off the queue
                        // and close it, so the client sees a close rather than a hang.
                        if self.listener.accept().is_ok() {
                            self.stats.rejected += 1;
                        }
                        self.spare_fd = File::open("/dev/null").ok();
                    } else {
                        return self.pause_listener();
                    }
                }
                Err(_) => {
                    self.stats.accept_errors += 1;
                    return self.pause_listener();
                }
            }
        }
    }

    /// Takes the listener out of the loop for [`ACCEPT_BACKOFF`].
    fn pause_listener(&mut self) -> io::Result<()> {
        self.epoll.ctl(
            libc::EPOLL_CTL_MOD,
            self.listener.as_raw_fd(),
            0,
            LISTENER_TOKEN,
        )?;
        self.listener_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
        Ok(())
    }

    fn resume_listener(&mut self) -> io::Result<()> {
        self.listener_paused_until = None;
        self.epoll.ctl(
            libc::EPOLL_CTL_MOD,
            self.listener.as_raw_fd(),
            libc::EPOLLIN as u32,
            LISTENER_TOKEN,
        )
    }

    /// Registers a freshly accepted connection.
    fn add(&mut self, stream: TcpStream) {
        if stream.set_nonblocking(true).is_err() {
            self.stats.conn_errors += 1;
            return;
        }
        // Echo is request/response: never let Nagle hold back a small echo.
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        let Ok(slot) = usize::try_from(fd) else {
            self.stats.conn_errors += 1;
            return;
        };
        let gen = self.next_gen;
        // Skip u32::MAX so that no token can equal LISTENER_TOKEN.
        self.next_gen = if gen >= u32::MAX - 1 { 0 } else { gen + 1 };
        let interest = libc::EPOLLIN as u32;
        if self
            .epoll
            .ctl(libc::EPOLL_CTL_ADD, fd, interest, token(gen, fd))
            .is_err()
        {
            self.stats.conn_errors += 1;
            return;
        }
        if slot >= self.conns.len() {
            self.conns.resize_with(slot + 1, || None);
        }
        self.conns[slot] = Some(Conn {
            stream,
            gen,
            pending: Vec::new(),
            sent: 0,
            interest,
            read_closed: false,
        });
        self.stats.accepted += 1;
        self.live += 1;
        self.stats.peak_connections = self.stats.peak_connections.max(self.live);
    }

    /// Handles the readiness `flags` reported for connection `token`.
    fn handle(&mut self, token: u64, flags: u32) {
        let slot = (token & u64::from(u32::MAX)) as usize;
        let gen = (token >> 32) as u32;
        let Some(conn) = self
            .conns
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|c| c.gen == gen)
        else {
            return; // stale event for a connection closed earlier in this batch
        };
        let next = handle_conn(conn, flags, &mut self.buf, &self.cfg, &mut self.stats);
        let next = match next {
            Next::Keep => self.update_interest(slot),
            other => other,
        };
        match next {
            Next::Keep => {}
            Next::Close => self.close(slot, false),
            Next::Fail => self.close(slot, true),
        }
    }

    /// Sets the epoll interest of connection `slot` from its state; closes it when it
    /// has nothing left to do.
    fn update_interest(&mut self, slot: usize) -> Next {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return Next::Keep;
        };
        let unsent = conn.unsent();
        let want_in = !conn.read_closed && unsent < self.cfg.max_pending;
        let want_out = unsent > 0;
        if !want_in && !want_out {
            return Next::Close; // end of stream, everything echoed
        }
        let mut interest = 0;
        if want_in {
            interest |= libc::EPOLLIN as u32;
        }
        if want_out {
            interest |= libc::EPOLLOUT as u32;
        }
        if interest == conn.interest {
            return Next::Keep;
        }
        if !want_in && !conn.read_closed && conn.interest & libc::EPOLLIN as u32 != 0 {
            self.stats.read_pauses += 1;
        }
        let fd = conn.stream.as_raw_fd();
        match self
            .epoll
            .ctl(libc::EPOLL_CTL_MOD, fd, interest, token(conn.gen, fd))
        {
            Ok(()) => {
                conn.interest = interest;
                Next::Keep
            }
            Err(_) => Next::Fail,
        }
    }

    /// Closes connection `slot` (dropping the stream closes the descriptor, which also
    /// removes it from the epoll set).
    fn close(&mut self, slot: usize, failed: bool) {
        if let Some(conn) = self.conns.get_mut(slot).and_then(Option::take) {
            drop(conn);
            self.live -= 1;
            self.stats.closed += 1;
            if failed {
                self.stats.conn_errors += 1;
            }
        }
    }

    fn close_all(&mut self) {
        for slot in 0..self.conns.len() {
            self.close(slot, false);
        }
    }
}

/// Runs one readiness report of a connection: flush, then one read and echo.
fn handle_conn(
    conn: &mut Conn,
    flags: u32,
    buf: &mut [u8],
    cfg: &ServerConfig,
    stats: &mut ServeStats,
) -> Next {
    let err_or_hup = flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
    if flags & libc::EPOLLOUT as u32 != 0 || err_or_hup {
        if let Err(next) = flush(conn, stats) {
            return next;
        }
    }
    let reading = conn.interest & libc::EPOLLIN as u32 != 0 && !conn.read_closed;
    if reading && (flags & libc::EPOLLIN as u32 != 0 || err_or_hup) {
        let len = buf.len().min(cfg.read_chunk);
        match conn.stream.read(&mut buf[..len]) {
            Ok(0) => conn.read_closed = true,
            Ok(n) => {
                stats.bytes_in += n as u64;
                if let Err(next) = echo(conn, &buf[..n], stats) {
                    return next;
                }
            }
            Err(e) if is_retry(&e) => {}
            Err(_) => return Next::Fail,
        }
    } else if err_or_hup && conn.unsent() > 0 {
        // Not reading and the socket is dead: the pending bytes cannot be delivered.
        return Next::Fail;
    }
    Next::Keep
}

/// Writes `data` back, after any pending bytes; keeps what the socket does not take.
fn echo(conn: &mut Conn, data: &[u8], stats: &mut ServeStats) -> Result<(), Next> {
    let mut done = 0;
    if conn.unsent() == 0 {
        while done < data.len() {
            match conn.stream.write(&data[done..]) {
                Ok(0) => return Err(Next::Fail),
                Ok(n) => {
                    done += n;
                    stats.bytes_out += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return Err(Next::Fail),
            }
        }
    }
    if done < data.len() {
        conn.pending.extend_from_slice(&data[done..]);
        stats.peak_pending = stats.peak_pending.max(conn.unsent());
    }
    Ok(())
}

/// Writes pending bytes until the socket would block or nothing is left.
fn flush(conn: &mut Conn, stats: &mut ServeStats) -> Result<(), Next> {
    while conn.sent < conn.pending.len() {
        match conn.stream.write(&conn.pending[conn.sent..]) {
            Ok(0) => return Err(Next::Fail),
            Ok(n) => {
                conn.sent += n;
                stats.bytes_out += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => return Err(Next::Fail),
        }
    }
    if conn.sent == conn.pending.len() {
        conn.sent = 0;
        if conn.pending.capacity() > 4 * DEFAULT_READ_CHUNK {
            conn.pending = Vec::new(); // give a burst's memory back
        } else {
            conn.pending.clear();
        }
    } else if conn.sent >= conn.pending.len() / 2 {
        // Keep the buffer from growing by its sent prefix: amortised O(1) per byte.
        conn.pending.drain(..conn.sent);
        conn.sent = 0;
    }
    Ok(())
}

fn token(gen: u32, fd: RawFd) -> u64 {
    (u64::from(gen) << 32) | u64::from(fd as u32)
}

fn is_retry(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

/// Accept errors that concern one pending connection, or none, and leave the listener
/// healthy.
fn is_transient_accept_error(e: &io::Error) -> bool {
    e.kind() == ErrorKind::Interrupted
        || matches!(
            e.raw_os_error(),
            Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::ENETDOWN)
        )
}

/// An owned epoll instance.
struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; it returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created by epoll_create1 and is owned by nothing else.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid, initialised epoll_event that lives across the call;
        // the kernel only reads it. Both descriptors are open for the call's duration.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` and returns how many entries of `events` were filled.
    /// An interrupted wait (a signal) returns 0.
    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
        let max = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
        // Round up so that a sub-millisecond timeout does not turn into a busy poll.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `events` is a valid, writable buffer of at least `max` epoll_event
        // entries for the duration of the call; the kernel writes at most `max` of them.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err);
        }
        Ok(n as usize)
    }
}
