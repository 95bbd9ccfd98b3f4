//! End-to-end checks for an echo server at any address, shared by the tests of every
//! server (the epoll baseline and the proactor server on each backend).
//!
//! Every check is bounded by the `timeout` it is given and reports failure as an
//! `Err(String)` that says what went wrong, on which connection, in which round and at
//! which byte, instead of panicking. Every byte the server echoes is verified: each
//! message has content that depends on its connection and round (a pseudo-random
//! pattern with an odd period), so lost, duplicated, reordered, corrupted or
//! cross-connection bytes are all detected.
//!
//! Many connections are driven by a small pool of threads (at most twice the number of
//! cores, at most 16), each running several non-blocking connections with `poll(2)`, and
//! each connection writes and reads at the same time, so multi-megabyte messages cannot
//! deadlock on full socket buffers.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Period of the test pattern: a prime, so that it never lines up with power-of-two
/// buffer sizes.
const PATTERN_PERIOD: usize = 4093;

/// Bytes moved by one read or write of the checks.
const IO_CHUNK: usize = 128 * 1024;

/// Longest single `poll` wait, so that deadlines and aborts are noticed promptly.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// Upper bound of what [`never_reader`] sends.
pub const NEVER_READER_MAX_BYTES: u64 = 64 << 20;

/// How long a send of [`never_reader`] may block before it concludes that the server
/// has stopped reading.
pub const NEVER_READER_BLOCK: Duration = Duration::from_secs(1);

/// Opens `conns` connections to `addr` (all open at the same time), then on each of them
/// sends `rounds` messages of `payload_len` bytes, one at a time, and reads every echoed
/// byte back, verifying it. Writing and reading of a message overlap, so messages larger
/// than the socket buffers work.
///
/// Every message has distinct content. The first failure is reported with its
/// connection, round and byte offset; on timeout the unfinished connections and their
/// progress are listed.
pub fn echo_roundtrip(
    addr: SocketAddr,
    conns: usize,
    payload_len: usize,
    rounds: usize,
    timeout: Duration,
) -> Result<(), String> {
    if payload_len == 0 {
        return Err("echo_roundtrip: payload_len must be at least 1".to_string());
    }
    let deadline = Instant::now() + timeout;
    let streams = connect_many(addr, conns, deadline)?;
    run_echo(addr, streams, payload_len, rounds, deadline, timeout)
}

/// Misbehaving clients that disconnect in the middle of a message, after each of which
/// the server must still echo correctly for fresh connections:
///
/// 1. sends 1 MiB without reading the echo, then resets the connection (`SO_LINGER` 0);
/// 2. sends part of a message, never reads, closes normally (the kernel answers with a
///    reset because of the unread echo);
/// 3. sends part of a message, reads part of its echo, shuts down its sending side
///    and closes;
/// 4. fills the server's send path until its own send blocks (the server is then
///    blocked writing to it), then resets;
/// 5. connects and closes at once; another resets without having sent anything.
///
/// Then 8 connections echo 64 KiB three times each.
pub fn disconnect_mid_stream(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let after = |what: &str| -> Result<(), String> {
        // Give the server a moment to run into the error paths before checking it.
        thread::sleep(Duration::from_millis(20));
        let remaining = remaining(deadline)?;
        echo_roundtrip(addr, 2, 4096, 2, remaining)
            .map_err(|e| format!("server stopped echoing after a client {what}: {e}"))
    };

    // 1. Part of a message, then RST.
    let s = connect_one(addr, deadline)?;
    send_pattern(&s, 1, 1 << 20, deadline).map_err(|e| format!("client 1: {e}"))?;
    set_linger_zero(&s).map_err(|e| format!("client 1: setting SO_LINGER 0: {e}"))?;
    drop(s);
    after("reset the connection in the middle of a message")?;

    // 2. Part of a message, unread echo, normal close.
    let s = connect_one(addr, deadline)?;
    send_pattern(&s, 2, 256 << 10, deadline).map_err(|e| format!("client 2: {e}"))?;
    thread::sleep(Duration::from_millis(10)); // let the echo arrive unread
    drop(s);
    after("closed without reading its echo")?;

    // 3. Part of a message, part of its echo read, half close, close.
    let mut s = connect_one(addr, deadline)?;
    send_pattern(&s, 3, 64 << 10, deadline).map_err(|e| format!("client 3: {e}"))?;
    let mut part = vec![0; 1000];
    s.set_read_timeout(Some(remaining(deadline)?))
        .map_err(|e| format!("client 3: {e}"))?;
    s.read_exact(&mut part)
        .map_err(|e| format!("client 3: reading the first 1000 echoed bytes: {e}"))?;
    if let Some(k) = Pattern::new(3).first_mismatch(0, &part) {
        return Err(format!(
            "client 3: echoed byte {k} differs from the byte sent"
        ));
    }
    let _ = s.shutdown(Shutdown::Write);
    drop(s);
    after("half-closed and closed in the middle of its echo")?;

    // 4. Server blocked writing to us, then RST.
    let s = connect_one(addr, deadline)?;
    let sent = send_pattern(&s, 4, 8 << 20, deadline).map_err(|e| format!("client 4: {e}"))?;
    set_linger_zero(&s).map_err(|e| format!("client 4: setting SO_LINGER 0: {e}"))?;
    drop(s);
    after(&format!(
        "sent {sent} bytes without reading and then reset the connection"
    ))?;

    // 5. Connect and close at once; connect and reset at once.
    drop(connect_one(addr, deadline)?);
    let s = connect_one(addr, deadline)?;
    set_linger_zero(&s).map_err(|e| format!("client 5: setting SO_LINGER 0: {e}"))?;
    drop(s);
    after("connected and disconnected at once")?;

    let remaining = remaining(deadline)?;
    echo_roundtrip(addr, 8, 64 << 10, 3, remaining)
        .map_err(|e| format!("after the disconnecting clients: {e}"))
}

/// A client connection that has sent a lot and never reads; see [`never_reader`].
/// Dropping it closes the connection (the kernel resets it, as echoed data is unread).
#[derive(Debug)]
pub struct NeverReader {
    stream: TcpStream,
    sent: u64,
    blocked: bool,
}

impl NeverReader {
    /// Bytes sent before giving up.
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// Whether sending stopped because a send blocked for [`NEVER_READER_BLOCK`]
    /// (i.e. the server stopped reading), rather than because
    /// [`NEVER_READER_MAX_BYTES`] were sent or the timeout ran out.
    pub fn send_blocked(&self) -> bool {
        self.blocked
    }

    /// The client's local address (to tell it apart in server logs).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }
}

/// Connects a client that sends until a send blocks for [`NEVER_READER_BLOCK`] (or up to
/// [`NEVER_READER_MAX_BYTES`], or until `timeout`) and never reads anything. The returned
/// guard keeps the connection open; a well-behaved server keeps serving other
/// connections meanwhile, with bounded memory for this one.
///
/// Fails if the connection cannot be made or the server breaks it off.
pub fn never_reader(addr: SocketAddr, timeout: Duration) -> Result<NeverReader, String> {
    let deadline = Instant::now() + timeout;
    let stream = connect_one(addr, deadline)?;
    let mut sent = 0u64;
    let mut blocked = false;
    let pattern = Pattern::new(0xdead_beef);
    let mut chunk = vec![0; 64 << 10];
    let mut writer = &stream;
    while sent < NEVER_READER_MAX_BYTES {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        if left.is_zero() {
            break;
        }
        stream
            .set_write_timeout(Some(left.min(NEVER_READER_BLOCK)))
            .map_err(|e| format!("never_reader: {e}"))?;
        pattern.fill(sent, &mut chunk);
        match writer.write(&chunk) {
            Ok(0) => return Err(format!("never_reader: send returned 0 after {sent} bytes")),
            Ok(n) => sent += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                blocked = left >= NEVER_READER_BLOCK;
                break;
            }
            Err(e) => {
                return Err(format!(
                    "never_reader: the server broke off the connection after {sent} bytes: {e}"
                ))
            }
        }
    }
    Ok(NeverReader {
        stream,
        sent,
        blocked,
    })
}

/// Opens `n` connections and keeps them idle for `idle`; checks that a separate
/// connection is served meanwhile; then echoes two 512-byte messages on every one of
/// the `n` connections at the same time. For the many-connections tests (see
/// [`raise_fd_limit`]).
pub fn hold_idle(
    addr: SocketAddr,
    n: usize,
    idle: Duration,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let streams = connect_many(addr, n, deadline)?;
    let wake = (Instant::now() + idle).min(deadline);
    thread::sleep(wake.saturating_duration_since(Instant::now()));
    echo_roundtrip(addr, 1, 512, 1, remaining(deadline)?)
        .map_err(|e| format!("with {n} idle connections open, a new connection failed: {e}"))?;
    let left = remaining(deadline)?;
    run_echo(addr, streams, 512, 2, deadline, left)
        .map_err(|e| format!("echo on {n} connections that had been idle: {e}"))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit if it is below `needed`; returns
/// the soft limit in force. Fails, saying why, if the hard limit is below `needed`.
// `rlim_t` is u64 on the 64-bit targets but not everywhere: keep the casts.
#[allow(clippy::unnecessary_cast)]
pub fn raise_fd_limit(needed: u64) -> Result<u64, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, which is valid for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit(NOFILE): {}", io::Error::last_os_error()));
    }
    let (soft, hard) = (lim.rlim_cur as u64, lim.rlim_max as u64);
    if soft >= needed {
        return Ok(soft);
    }
    if hard < needed {
        return Err(format!(
            "RLIMIT_NOFILE hard limit is {hard}, {needed} descriptors are needed"
        ));
    }
    lim.rlim_cur = if lim.rlim_max == libc::RLIM_INFINITY {
        needed.max(65536) as libc::rlim_t
    } else {
        lim.rlim_max
    };
    // SAFETY: setrlimit reads one rlimit from `lim`, which is valid for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(format!(
            "setrlimit(NOFILE, {}): {}",
            lim.rlim_cur,
            io::Error::last_os_error()
        ));
    }
    Ok(lim.rlim_cur as u64)
}

/// Time left until `deadline`, or an error if it has passed.
fn remaining(deadline: Instant) -> Result<Duration, String> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err("timed out".to_string()),
    }
}

fn connect_one(addr: SocketAddr, deadline: Instant) -> Result<TcpStream, String> {
    let left = remaining(deadline).map_err(|_| format!("timed out connecting to {addr}"))?;
    let s = TcpStream::connect_timeout(&addr, left)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    s.set_nodelay(true)
        .map_err(|e| format!("setting TCP_NODELAY: {e}"))?;
    Ok(s)
}

/// Opens `n` connections one after the other, all before `deadline`.
fn connect_many(addr: SocketAddr, n: usize, deadline: Instant) -> Result<Vec<TcpStream>, String> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let Ok(left) = remaining(deadline) else {
            return Err(format!(
                "timed out connecting to {addr}: {i} of {n} connections established"
            ));
        };
        let s = TcpStream::connect_timeout(&addr, left)
            .map_err(|e| format!("connection {} of {n} to {addr} failed: {e}", i + 1))?;
        s.set_nodelay(true)
            .map_err(|e| format!("setting TCP_NODELAY: {e}"))?;
        out.push(s);
    }
    Ok(out)
}

/// Sends up to `total` pattern bytes (seed `seed`) on a blocking socket without reading;
/// stops early, without error, when a send blocks for 200 ms. Returns the bytes sent.
fn send_pattern(s: &TcpStream, seed: u64, total: usize, deadline: Instant) -> Result<u64, String> {
    let pattern = Pattern::new(seed);
    let mut chunk = vec![0; 64 << 10];
    let mut sent = 0usize;
    let mut w = s;
    while sent < total {
        let left = remaining(deadline)?;
        w.set_write_timeout(Some(left.min(Duration::from_millis(200))))
            .map_err(|e| e.to_string())?;
        let n = chunk.len().min(total - sent);
        pattern.fill(sent as u64, &mut chunk[..n]);
        match w.write(&chunk[..n]) {
            Ok(0) => return Err(format!("send returned 0 after {sent} bytes")),
            Ok(k) => sent += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => return Err(format!("send failed after {sent} bytes: {e}")),
        }
    }
    Ok(sent as u64)
}

/// Sets `SO_LINGER` to {on, 0 s}: closing the socket then sends a reset.
fn set_linger_zero(s: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the option value points to a valid `linger` of the size passed; the
    // kernel only reads it. The descriptor is owned by `s` and open for the call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `poll(2)` over `fds` for at most `timeout` (rounded up to whole milliseconds).
/// An interrupted poll returns 0.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `fds` is a valid, writable slice of pollfd for the call's duration and its
    // exact length is passed; the kernel writes only the `revents` fields.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(rc as usize)
}

/// Threads used to drive `conns` connections.
pub(crate) fn worker_count(conns: usize) -> usize {
    let cores = thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores).clamp(2, 16).min(conns.max(1))
}

/// Deterministic test content: an infinite byte stream with period
/// [`PATTERN_PERIOD`], pseudo-random within a period, different for every seed.
pub(crate) struct Pattern {
    /// Two periods back to back, so any window of up to one period is contiguous.
    bytes: Box<[u8]>,
}

impl Pattern {
    pub(crate) fn new(seed: u64) -> Self {
        let mut state = seed ^ 0x6a09_e667_f3bc_c908;
        let mut bytes = Vec::with_capacity(2 * PATTERN_PERIOD);
        while bytes.len() < PATTERN_PERIOD {
            let word = splitmix64(&mut state).to_le_bytes();
            let take = word.len().min(PATTERN_PERIOD - bytes.len());
            bytes.extend_from_slice(&word[..take]);
        }
        bytes.extend_from_within(..PATTERN_PERIOD);
        Self {
            bytes: bytes.into_boxed_slice(),
        }
    }

    /// Fills `out` with the stream bytes starting at `offset`.
    pub(crate) fn fill(&self, offset: u64, out: &mut [u8]) {
        let mut at = (offset % PATTERN_PERIOD as u64) as usize;
        for piece in out.chunks_mut(PATTERN_PERIOD) {
            piece.copy_from_slice(&self.bytes[at..at + piece.len()]);
            at = (at + piece.len()) % PATTERN_PERIOD;
        }
    }

    /// Index in `data` of the first byte that differs from the stream at `offset`.
    pub(crate) fn first_mismatch(&self, offset: u64, data: &[u8]) -> Option<usize> {
        let mut at = (offset % PATTERN_PERIOD as u64) as usize;
        let mut base = 0;
        for piece in data.chunks(PATTERN_PERIOD) {
            let expected = &self.bytes[at..at + piece.len()];
            if piece != expected {
                let k = piece.iter().zip(expected).position(|(a, b)| a != b)?;
                return Some(base + k);
            }
            base += piece.len();
            at = (at + piece.len()) % PATTERN_PERIOD;
        }
        None
    }

    /// The stream byte at `offset`.
    pub(crate) fn byte_at(&self, offset: u64) -> u8 {
        self.bytes[(offset % PATTERN_PERIOD as u64) as usize]
    }
}

pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Pattern seed of message `round` of connection `id`.
fn message_seed(id: usize, round: usize) -> u64 {
    ((id as u64) << 32) ^ (round as u64) ^ 0xec40_0000_0000_0000
}

/// One connection of [`run_echo`].
struct EchoConn {
    id: usize,
    stream: TcpStream,
    round: usize,
    sent: usize,
    received: usize,
    pattern: Pattern,
    done: bool,
}

impl EchoConn {
    fn progress(&self, len: usize, rounds: usize) -> String {
        format!(
            "conn {} round {}/{}: sent {}/{len}, echoed {}/{len}",
            self.id,
            self.round + 1,
            rounds,
            self.sent,
            self.received
        )
    }
}

/// Runs `rounds` verified echoes of `len` bytes on each of `streams`.
fn run_echo(
    addr: SocketAddr,
    streams: Vec<TcpStream>,
    len: usize,
    rounds: usize,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), String> {
    if streams.is_empty() || rounds == 0 {
        return Ok(());
    }
    let mut conns = Vec::with_capacity(streams.len());
    for (id, stream) in streams.into_iter().enumerate() {
        stream
            .set_nonblocking(true)
            .map_err(|e| format!("conn {id}: setting O_NONBLOCK: {e}"))?;
        conns.push(EchoConn {
            id,
            stream,
            round: 0,
            sent: 0,
            received: 0,
            pattern: Pattern::new(message_seed(id, 0)),
            done: false,
        });
    }
    let total = conns.len();
    let per_thread = total.div_ceil(worker_count(total));
    let abort = AtomicBool::new(false);
    let results: Vec<Result<(), String>> = thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, group) in conns.chunks_mut(per_thread).enumerate() {
            let abort = &abort;
            let spawned = thread::Builder::new()
                .name(format!("echo-check-{i}"))
                .spawn_scoped(s, move || {
                    let r = drive(group, len, rounds, deadline, abort);
                    if r.is_err() {
                        abort.store(true, Ordering::Relaxed);
                    }
                    r
                });
            if spawned.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            handles.push(spawned);
        }
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err("a checker thread panicked".to_string())),
                Err(e) => Err(format!("cannot start a checker thread: {e}")),
            })
            .collect()
    });
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    match errors.len() {
        0 => Ok(()),
        1 => Err(format!("echo {addr}: {}", errors[0])),
        n => Err(format!(
            "echo {addr}: {} (and {} more failures of {total} connections, timeout {:?})",
            errors[0],
            n - 1,
            timeout
        )),
    }
}

/// Drives a group of connections until all are done, one fails, another group fails
/// (`abort`) or `deadline` passes.
fn drive(
    conns: &mut [EchoConn],
    len: usize,
    rounds: usize,
    deadline: Instant,
    abort: &AtomicBool,
) -> Result<(), String> {
    let mut wbuf = vec![0u8; IO_CHUNK.min(len)];
    let mut rbuf = vec![0u8; IO_CHUNK];
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(conns.len());
    let mut index: Vec<usize> = Vec::with_capacity(conns.len());
    loop {
        if abort.load(Ordering::Relaxed) {
            return Ok(()); // the failing group reports
        }
        fds.clear();
        index.clear();
        for (i, c) in conns.iter().enumerate() {
            if !c.done {
                let mut events = libc::POLLIN;
                if c.sent < len {
                    events |= libc::POLLOUT;
                }
                fds.push(libc::pollfd {
                    fd: c.stream.as_raw_fd(),
                    events,
                    revents: 0,
                });
                index.push(i);
            }
        }
        if fds.is_empty() {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            let unfinished: Vec<String> = conns
                .iter()
                .filter(|c| !c.done)
                .take(5)
                .map(|c| c.progress(len, rounds))
                .collect();
            return Err(format!(
                "timed out with {} of {} connections of this thread unfinished: {}",
                fds.len(),
                conns.len(),
                unfinished.join("; ")
            ));
        }
        poll(&mut fds, (deadline - now).min(POLL_SLICE)).map_err(|e| format!("poll: {e}"))?;
        for (pfd, &i) in fds.iter().zip(&index) {
            let ready = pfd.revents;
            if ready == 0 {
                continue;
            }
            let c = &mut conns[i];
            if ready & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 && c.sent < len {
                step_write(c, len, rounds, &mut wbuf)?;
            }
            if ready & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
                step_read(c, len, rounds, &mut rbuf)?;
            }
        }
    }
    // Nothing may follow the last echo.
    for c in conns.iter_mut() {
        match c.stream.read(&mut rbuf) {
            Ok(n) if n > 0 => {
                return Err(format!(
                    "conn {}: {n} unexpected bytes after the last echoed message",
                    c.id
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

fn step_write(c: &mut EchoConn, len: usize, rounds: usize, wbuf: &mut [u8]) -> Result<(), String> {
    let n = wbuf.len().min(len - c.sent);
    c.pattern.fill(c.sent as u64, &mut wbuf[..n]);
    match c.stream.write(&wbuf[..n]) {
        Ok(0) => Err(format!("{}: send returned 0", c.progress(len, rounds))),
        Ok(k) => {
            c.sent += k;
            Ok(())
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(()),
        Err(e) => Err(format!("{}: send failed: {e}", c.progress(len, rounds))),
    }
}

fn step_read(c: &mut EchoConn, len: usize, rounds: usize, rbuf: &mut [u8]) -> Result<(), String> {
    match c.stream.read(rbuf) {
        Ok(0) => Err(format!(
            "{}: the server closed the connection",
            c.progress(len, rounds)
        )),
        Ok(n) => {
            let data = &rbuf[..n];
            if c.received + n > c.sent {
                return Err(format!(
                    "{}: received {n} more bytes, more than was sent",
                    c.progress(len, rounds)
                ));
            }
            if let Some(k) = c.pattern.first_mismatch(c.received as u64, data) {
                let at = c.received + k;
                return Err(format!(
                    "conn {} round {}/{rounds}: echoed byte {at} of {len} differs: \
                     expected {:#04x}, got {:#04x}",
                    c.id,
                    c.round + 1,
                    c.pattern.byte_at(at as u64),
                    data[k]
                ));
            }
            c.received += n;
            if c.received == len {
                c.round += 1;
                c.sent = 0;
                c.received = 0;
                if c.round == rounds {
                    c.done = true;
                } else {
                    c.pattern = Pattern::new(message_seed(c.id, c.round));
                }
            }
            Ok(())
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(()),
        Err(e) => Err(format!("{}: receive failed: {e}", c.progress(len, rounds))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_windows_agree() {
        let p = Pattern::new(7);
        let mut long = vec![0; 3 * PATTERN_PERIOD + 17];
        p.fill(5, &mut long);
        for (i, b) in long.iter().enumerate() {
            assert_eq!(*b, p.byte_at(5 + i as u64));
        }
        assert_eq!(p.first_mismatch(5, &long), None);
        long[PATTERN_PERIOD + 3] ^= 1;
        assert_eq!(p.first_mismatch(5, &long), Some(PATTERN_PERIOD + 3));
        assert_ne!(Pattern::new(8).bytes, p.bytes);
    }
}
