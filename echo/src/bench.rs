//! The load client behind `echo_bench`, flag-compatible with `rust_echo_bench`
//! (`-a ADDR -c CONNECTIONS -t SECONDS -l LENGTH`), with its summary lines
//! (`Speed: X request/sec, Y response/sec`, `Requests: N`, `Responses: N`), plus:
//!
//! - pipelining (`depth` messages in flight per connection);
//! - per-message round-trip latency in an HdrHistogram ([`LatencyHistogram`], 3
//!   significant digits, fixed memory);
//! - verification of every echoed byte: message `s` of connection `c` is a pattern
//!   specific to `c` with `c` and `s` mixed into its first 12 bytes, so each message is
//!   unique and lost, duplicated, reordered or corrupted bytes are counted as mismatches;
//! - errors instead of hangs: a refused connect fails at once naming the address; a
//!   connection that makes no progress for `stall_timeout` is reported as stalled and
//!   dropped; a connection that fails or is closed by the server is reported and
//!   dropped; the run ends early when no connection is left.
//!
//! Connections are driven by `min(connections, 2 × cores)` threads, each running its
//! share of non-blocking sockets with `poll(2)`, so `-c 1000` works on two cores. The
//! whole run is bounded by the connect phase (at most `max(stall_timeout, 1 s)`) plus
//! `duration` plus a fraction of a second.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::check::{poll, worker_count, Pattern};
use crate::latency::LatencyHistogram;

mod config;
pub use config::{BenchConfig, BenchError};

/// Longest single `poll` wait of a worker.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// Receive buffer of a worker.
const READ_CHUNK: usize = 64 * 1024;

/// Detailed problem messages kept per worker and per report (counts are always
/// complete).
const MAX_DETAILS: usize = 5;

/// Runs shorter than this print no progress lines.
const PROGRESS_MIN_DURATION: Duration = Duration::from_secs(3);

/// Latency summary of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencySummary {
    /// Median round trip.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Slowest round trip.
    pub max: Duration,
    /// Mean round trip.
    pub mean: Duration,
}

/// Result of a run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The server address.
    pub address: SocketAddr,
    /// Connections used.
    pub connections: usize,
    /// Bytes per message.
    pub length: usize,
    /// Messages in flight per connection.
    pub depth: usize,
    /// Messages completely sent.
    pub requests: u64,
    /// Messages completely echoed.
    pub responses: u64,
    /// Echoed messages that differed from what was sent (or extra bytes received).
    pub mismatches: u64,
    /// Connections that failed: I/O error, closed by the server, or stalled.
    pub errors: u64,
    /// Ids (0-based) of the connections that stalled.
    pub stalled: Vec<usize>,
    /// Measured time: from the end of the connect phase to the end of the run.
    pub duration: Duration,
    /// Round-trip latency of every echoed message: from when it was queued for sending
    /// to when its last byte came back.
    pub histogram: LatencyHistogram,
    /// Human-readable descriptions of the problems (bounded; counts above are complete).
    pub problems: Vec<String>,
}

impl Report {
    /// Requests sent per second (integer, as printed).
    pub fn requests_per_sec(&self) -> u64 {
        per_sec(self.requests, self.duration)
    }

    /// Complete responses received per second (integer, as printed).
    pub fn responses_per_sec(&self) -> u64 {
        per_sec(self.responses, self.duration)
    }

    /// p50/p99/p99.9/max/mean, if any response was received.
    pub fn latency(&self) -> Option<LatencySummary> {
        let h = &self.histogram;
        Some(LatencySummary {
            p50: h.percentile(0.5)?,
            p99: h.percentile(0.99)?,
            p999: h.percentile(0.999)?,
            max: h.max()?,
            mean: h.mean()?,
        })
    }

    /// True when every echoed byte matched, no connection failed or stalled, and at
    /// least one response was received.
    pub fn is_success(&self) -> bool {
        self.mismatches == 0 && self.errors == 0 && self.responses > 0
    }
}

impl fmt::Display for Report {
    /// The `rust_echo_bench` lines (`Speed: X request/sec, Y response/sec`,
    /// `Requests: N`, `Responses: N`), then `Latency: ...`, `Mismatches: N`, `Errors: N`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Speed: {} request/sec, {} response/sec",
            self.requests_per_sec(),
            self.responses_per_sec()
        )?;
        writeln!(f, "Requests: {}", self.requests)?;
        writeln!(f, "Responses: {}", self.responses)?;
        match self.latency() {
            Some(l) => writeln!(
                f,
                "Latency: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us, mean {:.1} us",
                micros(l.p50),
                micros(l.p99),
                micros(l.p999),
                micros(l.max),
                micros(l.mean)
            )?,
            None => writeln!(f, "Latency: no responses")?,
        }
        writeln!(f, "Mismatches: {}", self.mismatches)?;
        write!(f, "Errors: {}", self.errors)
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn per_sec(n: u64, d: Duration) -> u64 {
    let secs = d.as_secs_f64();
    if secs <= 0.0 {
        return 0;
    }
    (n as f64 / secs) as u64
}

/// Runs the benchmark described by `cfg`: connects every connection (failing at once,
/// naming the address, if one cannot be made), then drives them for `cfg.duration` and
/// returns what happened.
pub fn run(cfg: &BenchConfig) -> Result<Report, BenchError> {
    cfg.validate()?;
    let addr = resolve(&cfg.address)?;
    let streams = connect_all(
        addr,
        cfg.connections,
        cfg.stall_timeout.max(Duration::from_secs(1)),
    )?;

    let threads = cfg
        .threads
        .unwrap_or_else(|| worker_count(cfg.connections))
        .min(cfg.connections);
    let mut groups: Vec<Vec<Conn>> = (0..threads).map(|_| Vec::new()).collect();
    let start = Instant::now();
    for (id, stream) in streams.into_iter().enumerate() {
        groups[id % threads].push(Conn::new(id, stream, start));
    }
    let end = start + cfg.duration;
    let ctx = Ctx {
        addr,
        len: cfg.length,
        depth: cfg.depth,
        end,
        stall: cfg.stall_timeout,
        abort: AtomicBool::new(false),
    };
    let counters: Vec<Counters> = (0..threads).map(|_| Counters::default()).collect();
    let show_progress = cfg.progress && cfg.duration >= PROGRESS_MIN_DURATION;

    let outcomes: Vec<Result<WorkerOut, String>> = thread::scope(|s| {
        let mut handles = Vec::with_capacity(threads);
        for (i, (group, counters)) in groups.into_iter().zip(&counters).enumerate() {
            let ctx = &ctx;
            let spawned = thread::Builder::new()
                .name(format!("echo-bench-{i}"))
                .spawn_scoped(s, move || worker(group, ctx, counters));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    ctx.abort.store(true, Ordering::Relaxed);
                    for h in handles {
                        let _ = h.join();
                    }
                    return vec![Err(format!("cannot start worker thread {i}: {e}"))];
                }
            }
        }
        // Progress, and a hard bound in case a worker misbehaves.
        let hard_end = end + Duration::from_secs(2);
        let mut next_tick = start + Duration::from_secs(1);
        let (mut last_req, mut last_resp, mut last_at) = (0u64, 0u64, start);
        while !handles.iter().all(|h| h.is_finished()) {
            let now = Instant::now();
            if now >= hard_end {
                ctx.abort.store(true, Ordering::Relaxed);
            }
            if show_progress && now >= next_tick {
                let req: u64 = counters
                    .iter()
                    .map(|c| c.requests.load(Ordering::Relaxed))
                    .sum();
                let resp: u64 = counters
                    .iter()
                    .map(|c| c.responses.load(Ordering::Relaxed))
                    .sum();
                let live: usize = counters
                    .iter()
                    .map(|c| c.live.load(Ordering::Relaxed))
                    .sum();
                let dt = (now - last_at).as_secs_f64().max(1e-9);
                eprintln!(
                    "[{:>5.1}s] {:.0} request/sec, {:.0} response/sec, {resp} responses, \
                     {live} connections",
                    (now - start).as_secs_f64(),
                    (req - last_req) as f64 / dt,
                    (resp - last_resp) as f64 / dt,
                );
                (last_req, last_resp, last_at) = (req, resp, now);
                next_tick += Duration::from_secs(1);
            }
            thread::sleep(Duration::from_millis(10));
        }
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "a worker thread panicked".to_string()))
            .collect()
    });
    let finished = Instant::now().min(end);

    let mut report = Report {
        address: addr,
        connections: cfg.connections,
        length: cfg.length,
        depth: cfg.depth,
        requests: 0,
        responses: 0,
        mismatches: 0,
        errors: 0,
        stalled: Vec::new(),
        duration: finished.saturating_duration_since(start),
        histogram: LatencyHistogram::new(),
        problems: Vec::new(),
    };
    let mut hidden = 0u64;
    for outcome in outcomes {
        let w = outcome.map_err(BenchError::Thread)?;
        report.requests += w.requests;
        report.responses += w.responses;
        report.mismatches += w.mismatches;
        report.errors += w.errors;
        report.stalled.extend(w.stalled);
        report.histogram.merge(&w.hist);
        hidden += w.hidden;
        for detail in w.details {
            if report.problems.len() < MAX_DETAILS {
                report.problems.push(detail);
            } else {
                hidden += 1;
            }
        }
    }
    report.stalled.sort_unstable();
    if hidden > 0 {
        report
            .problems
            .push(format!("... and {hidden} more problems like these"));
    }
    if !report.stalled.is_empty() {
        const SHOW: usize = 20;
        let ids: Vec<String> = report
            .stalled
            .iter()
            .take(SHOW)
            .map(usize::to_string)
            .collect();
        let more = if report.stalled.len() > SHOW {
            ", ..."
        } else {
            ""
        };
        report.problems.push(format!(
            "{} of {} connections to {addr} stalled (no progress for {:.1} s): {}{more}",
            report.stalled.len(),
            cfg.connections,
            cfg.stall_timeout.as_secs_f64(),
            ids.join(", ")
        ));
    }
    if report.responses == 0 {
        report
            .problems
            .push(format!("no response at all was received from {addr}"));
    }
    Ok(report)
}

fn resolve(address: &str) -> Result<SocketAddr, BenchError> {
    let mut addrs = address.to_socket_addrs().map_err(|e| BenchError::Resolve {
        address: address.to_string(),
        source: Some(e),
    })?;
    addrs.next().ok_or_else(|| BenchError::Resolve {
        address: address.to_string(),
        source: None,
    })
}

fn connect_all(addr: SocketAddr, n: usize, bound: Duration) -> Result<Vec<TcpStream>, BenchError> {
    let deadline = Instant::now() + bound;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        let timed_out = || BenchError::ConnectTimeout {
            addr,
            established: i,
            total: n,
            timeout: bound,
        };
        if left.is_zero() {
            return Err(timed_out());
        }
        let stream = match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::TimedOut => return Err(timed_out()),
            Err(source) => {
                return Err(BenchError::Connect {
                    addr,
                    index: i + 1,
                    total: n,
                    source,
                })
            }
        };
        let setup = stream
            .set_nodelay(true)
            .and_then(|()| stream.set_nonblocking(true));
        if let Err(source) = setup {
            return Err(BenchError::Connect {
                addr,
                index: i + 1,
                total: n,
                source,
            });
        }
        out.push(stream);
    }
    Ok(out)
}

/// Shared, read-only parameters of the workers.
struct Ctx {
    addr: SocketAddr,
    len: usize,
    depth: usize,
    end: Instant,
    stall: Duration,
    abort: AtomicBool,
}

/// Live totals of one worker, for the progress line.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    responses: AtomicU64,
    live: AtomicUsize,
}

/// What one worker did.
#[derive(Default)]
struct WorkerOut {
    requests: u64,
    responses: u64,
    mismatches: u64,
    errors: u64,
    stalled: Vec<usize>,
    hist: LatencyHistogram,
    details: Vec<String>,
    hidden: u64,
}

impl WorkerOut {
    fn problem(&mut self, what: String) {
        if self.details.len() < MAX_DETAILS {
            self.details.push(what);
        } else {
            self.hidden += 1;
        }
    }
}

/// One benchmark connection.
struct Conn {
    id: usize,
    stream: TcpStream,
    pattern: Pattern,
    /// Queued outgoing bytes; `out[out_pos..]` is unsent.
    out: Vec<u8>,
    out_pos: usize,
    /// Sequence number of the next message to queue.
    next_seq: u64,
    /// Bytes sent and received so far.
    written: u64,
    received: u64,
    /// When each message not yet completely echoed was queued, oldest first.
    in_flight: VecDeque<Instant>,
    /// Content of message `expect_seq`, the one being received.
    expect: Vec<u8>,
    expect_seq: Option<u64>,
    /// The message being received has a mismatch already.
    bad: bool,
    last_progress: Instant,
}

impl Conn {
    fn new(id: usize, stream: TcpStream, now: Instant) -> Self {
        Self {
            id,
            stream,
            pattern: Pattern::new(0xbe9c_0000_0000_0000 ^ id as u64),
            out: Vec::new(),
            out_pos: 0,
            next_seq: 0,
            written: 0,
            received: 0,
            in_flight: VecDeque::new(),
            expect: Vec::new(),
            expect_seq: None,
            bad: false,
            last_progress: now,
        }
    }

    /// Appends message `seq` of this connection to `out`: the connection's pattern at
    /// stream offset `seq × len`, with the connection id and `seq` XORed into the first
    /// 12 bytes.
    fn message(&self, seq: u64, len: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + len, 0);
        let msg = &mut out[start..];
        self.pattern.fill(seq.wrapping_mul(len as u64), msg);
        let mut header = [0u8; 12];
        header[..4].copy_from_slice(&(self.id as u32).to_le_bytes());
        header[4..].copy_from_slice(&seq.to_le_bytes());
        for (m, h) in msg.iter_mut().zip(header) {
            *m ^= h;
        }
    }

    /// `connection ID to ADDR: WHAT (state)`, for problem reports.
    fn fail(&self, ctx: &Ctx, what: impl fmt::Display) -> String {
        format!(
            "connection {} to {}: {what} (messages in flight: {}, current response: {} of {} \
             bytes received)",
            self.id,
            ctx.addr,
            self.in_flight.len(),
            self.received % ctx.len as u64,
            ctx.len
        )
    }

    /// Queues messages up to the pipelining depth and writes what the socket takes.
    /// Returns the number of messages that became completely sent.
    fn pump(&mut self, ctx: &Ctx, now: Instant) -> io::Result<u64> {
        while self.in_flight.len() < ctx.depth {
            let mut out = std::mem::take(&mut self.out);
            self.message(self.next_seq, ctx.len, &mut out);
            self.out = out;
            self.next_seq += 1;
            self.in_flight.push_back(now);
        }
        let before = self.written / ctx.len as u64;
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "send returned 0")),
                Ok(n) => {
                    self.out_pos += n;
                    self.written += n as u64;
                    self.last_progress = now;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        Ok(self.written / ctx.len as u64 - before)
    }

    /// Verifies and accounts received bytes.
    fn on_data(
        &mut self,
        data: &[u8],
        ctx: &Ctx,
        now: Instant,
        w: &mut WorkerOut,
    ) -> Result<(), String> {
        if self.received + data.len() as u64 > self.written {
            w.mismatches += 1;
            let extra = self.received + data.len() as u64 - self.written;
            return Err(self.fail(
                ctx,
                format_args!("received {extra} bytes more than were sent"),
            ));
        }
        self.last_progress = now;
        let len = ctx.len;
        let mut data = data;
        while !data.is_empty() {
            let seq = self.received / len as u64;
            let off = (self.received % len as u64) as usize;
            if self.expect_seq != Some(seq) {
                let mut expect = std::mem::take(&mut self.expect);
                expect.clear();
                self.message(seq, len, &mut expect);
                self.expect = expect;
                self.expect_seq = Some(seq);
            }
            let take = (len - off).min(data.len());
            let expected = &self.expect[off..off + take];
            if !self.bad && data[..take] != *expected {
                self.bad = true;
                if let Some(k) = data[..take].iter().zip(expected).position(|(a, b)| a != b) {
                    w.problem(format!(
                        "mismatch on connection {} to {}: message {seq}, byte {} of {len}: \
                         sent {:#04x}, echoed {:#04x}",
                        self.id,
                        ctx.addr,
                        off + k,
                        expected[k],
                        data[k]
                    ));
                }
            }
            self.received += take as u64;
            data = &data[take..];
            if off + take == len {
                w.responses += 1;
                if let Some(sent_at) = self.in_flight.pop_front() {
                    w.hist.record(now.saturating_duration_since(sent_at));
                }
                if self.bad {
                    w.mismatches += 1;
                    self.bad = false;
                }
            }
        }
        Ok(())
    }

    /// One readiness report: write what is queued, read once, queue and write more.
    fn step(
        &mut self,
        revents: libc::c_short,
        ctx: &Ctx,
        buf: &mut [u8],
        w: &mut WorkerOut,
    ) -> Result<(), String> {
        let now = Instant::now();
        let io_err =
            |c: &Conn, op: &str, e: io::Error| c.fail(ctx, format_args!("{op} failed: {e}"));
        if revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
            match self.stream.read(buf) {
                Ok(0) => return Err(self.fail(ctx, "the server closed the connection")),
                Ok(n) => self.on_data(&buf[..n], ctx, now, w)?,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(io_err(self, "receive", e)),
            }
        }
        if now < ctx.end {
            w.requests += self.pump(ctx, now).map_err(|e| io_err(self, "send", e))?;
        }
        Ok(())
    }
}

/// Drives `conns` until the end of the run, an abort, or until none is left.
fn worker(mut conns: Vec<Conn>, ctx: &Ctx, counters: &Counters) -> WorkerOut {
    let mut w = WorkerOut::default();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(conns.len());
    let mut failed: Vec<(usize, String)> = Vec::new();

    let now = Instant::now();
    conns.retain_mut(|c| match c.pump(ctx, now) {
        Ok(n) => {
            w.requests += n;
            true
        }
        Err(e) => {
            w.errors += 1;
            w.problem(c.fail(ctx, format_args!("send failed: {e}")));
            false
        }
    });
    loop {
        counters.requests.store(w.requests, Ordering::Relaxed);
        counters.responses.store(w.responses, Ordering::Relaxed);
        counters.live.store(conns.len(), Ordering::Relaxed);
        let now = Instant::now();
        if now >= ctx.end || ctx.abort.load(Ordering::Relaxed) {
            break;
        }
        conns.retain(|c| {
            let idle = now.saturating_duration_since(c.last_progress);
            if c.in_flight.is_empty() || idle < ctx.stall {
                return true;
            }
            w.errors += 1;
            w.stalled.push(c.id);
            w.problem(c.fail(
                ctx,
                format_args!("stalled: no progress for {:.1} s", idle.as_secs_f64()),
            ));
            false
        });
        if conns.is_empty() {
            break;
        }
        fds.clear();
        fds.extend(conns.iter().map(|c| libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: if c.out_pos < c.out.len() {
                libc::POLLIN | libc::POLLOUT
            } else {
                libc::POLLIN
            },
            revents: 0,
        }));
        let wait = (ctx.end - now).min(POLL_SLICE);
        if let Err(e) = poll(&mut fds, wait) {
            w.errors += conns.len() as u64;
            w.problem(format!("poll failed: {e}"));
            break;
        }
        for (i, (c, pfd)) in conns.iter_mut().zip(&fds).enumerate() {
            if pfd.revents != 0 {
                if let Err(e) = c.step(pfd.revents, ctx, &mut buf, &mut w) {
                    failed.push((i, e));
                }
            }
        }
        for (i, e) in failed.drain(..).rev() {
            conns.swap_remove(i);
            w.errors += 1;
            w.problem(e);
        }
    }
    counters.live.store(0, Ordering::Relaxed);
    w
}
