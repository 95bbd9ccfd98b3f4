//! The FastIO echo server rebuilt on the fastio proactor.
//!
//! Each connection cycles accept → recv → send (until everything received is sent) →
//! recv …, and is closed on end of stream or error. Every request goes through the
//! proactor, so on the `kmod` and SQPOLL backends the serving thread makes no system
//! call while the workers are awake. `max_usr_worker` serving threads each run their own
//! proactor over the same listening socket.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::ops::Range;

use fastio::{Completion, Config, Proactor, RejectReason, Slot};

/// Tuning of the echo loop.
#[derive(Clone, Debug)]
pub struct EchoOptions {
    /// Bytes of receive buffer per connection.
    pub buf_size: usize,
    /// ACCEPT requests kept outstanding per serving thread.
    pub accept_depth: usize,
    /// The async server only: receive into a provided-buffer group of this many
    /// buffers of this many bytes per serving thread (`recv_provided`) instead of a
    /// buffer of `buf_size` per connection.
    pub provided: Option<(u32, u32)>,
}

impl Default for EchoOptions {
    fn default() -> Self {
        EchoOptions {
            buf_size: 16 * 1024,
            accept_depth: 4,
            provided: None,
        }
    }
}

/// What one server run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServeStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed (end of stream, error or shutdown).
    pub closed: u64,
    /// Bytes echoed back.
    pub bytes: u64,
    /// ACCEPTs that failed (e.g. out of descriptors or slots).
    pub accept_errors: u64,
}

impl std::ops::AddAssign for ServeStats {
    fn add_assign(&mut self, o: ServeStats) {
        self.accepted += o.accepted;
        self.closed += o.closed;
        self.bytes += o.bytes;
        self.accept_errors += o.accept_errors;
    }
}

/// Serves `listener` with `config.max_usr_worker` threads until `shutdown` is set
/// (checked at least every 100 ms). Returns the summed statistics.
pub fn serve(
    listener: &TcpListener,
    config: &Config,
    opts: &EchoOptions,
    shutdown: &AtomicBool,
) -> io::Result<ServeStats> {
    serve_threads(config, shutdown, || {
        serve_one(listener, config, opts, shutdown)
    })
}

/// Runs `one` on `config.max_usr_worker` threads and sums their statistics; the first
/// thread to fail (or panic) sets `shutdown` so the others stop too.
pub(crate) fn serve_threads(
    config: &Config,
    shutdown: &AtomicBool,
    one: impl Fn() -> io::Result<ServeStats> + Sync,
) -> io::Result<ServeStats> {
    let threads = config.max_usr_worker.max(1) as usize;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(&one)).collect();
        let mut total = ServeStats::default();
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(st)) => total += st,
                Ok(Err(e)) => {
                    // One thread failing stops the others too.
                    shutdown.store(true, Ordering::SeqCst);
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    shutdown.store(true, Ordering::SeqCst);
                    first_err.get_or_insert(io::Error::other("serving thread panicked"));
                }
            }
        }
        first_err.map_or(Ok(total), Err)
    })
}

/// What a request was for; packed into user_data with the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Accept = 0,
    Recv = 1,
    Send = 2,
    Close = 3,
    /// An ASYNC_CANCEL (the multishot server's).
    Cancel = 4,
}

pub(crate) fn token(kind: Kind, slot: u32) -> u64 {
    (slot as u64) << 8 | kind as u64
}

pub(crate) fn untoken(ud: u64) -> (Kind, u32) {
    let kind = match ud & 0xff {
        0 => Kind::Accept,
        1 => Kind::Recv,
        2 => Kind::Send,
        4 => Kind::Cancel,
        _ => Kind::Close,
    };
    (kind, (ud >> 8) as u32)
}

/// A request to queue; kept and queued again when refused for lack of room.
enum Req {
    Accept,
    Recv(Slot, Vec<u8>),
    Send(Slot, Vec<u8>, Range<usize>),
    Close(Slot),
}

/// An open connection: its slot and, while a SEND is out, the range being sent.
struct Conn {
    slot: Slot,
    sending: Range<usize>,
}

struct Loop<'a> {
    p: Proactor,
    listener: Slot,
    opts: &'a EchoOptions,
    stats: ServeStats,
    conns: HashMap<u32, Conn>,
    retry: VecDeque<Req>,
    /// Whether the in-flight limit was reported already.
    warned_full: bool,
    /// An error that ends this serving thread.
    fatal: Option<io::Error>,
}

fn serve_one(
    listener: &TcpListener,
    config: &Config,
    opts: &EchoOptions,
    shutdown: &AtomicBool,
) -> io::Result<ServeStats> {
    let mut p = Proactor::new(config)?;
    let listener = p.register(listener)?;
    let mut lp = Loop {
        p,
        listener,
        opts,
        stats: ServeStats::default(),
        conns: HashMap::new(),
        retry: VecDeque::new(),
        warned_full: false,
        fatal: None,
    };
    for _ in 0..opts.accept_depth.max(1) {
        lp.queue(Req::Accept);
    }
    run_loop(&mut lp, shutdown)?;
    lp.stats.closed += lp.conns.len() as u64;
    Ok(lp.stats)
}

/// A completion loop of one serving thread, for [`run_loop`].
pub(crate) trait CompletionLoop {
    /// The thread's proactor.
    fn proactor(&mut self) -> &mut Proactor;
    /// Handles one completion.
    fn on_completion(&mut self, c: Completion);
    /// An error that ends the serving thread, if one happened.
    fn take_fatal(&mut self) -> Option<io::Error>;
    /// Queues again the requests refused for lack of room.
    fn retry(&mut self);
}

/// Waits for completions and hands them to `lp` until `shutdown` is set (checked at
/// least every 100 ms) or a fatal error.
pub(crate) fn run_loop(lp: &mut impl CompletionLoop, shutdown: &AtomicBool) -> io::Result<()> {
    while !shutdown.load(Ordering::Relaxed) {
        match lp.proactor().wait(1, Some(Duration::from_millis(100))) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        while let Some(c) = lp.proactor().next_completion() {
            lp.on_completion(c);
        }
        if let Some(e) = lp.take_fatal() {
            return Err(e);
        }
        // Requests refused for lack of room go again now that completions freed some.
        lp.retry();
    }
    // The module's counters (ops, parked, wakeups, inline_ops, lane_wakes...) say where
    // the requests ran: one line per serving thread at shutdown.
    if let Some(Ok(s)) = lp.proactor().kernel_stats() {
        eprintln!("proactor_echo_server: module counters of this thread's context: {s:?}");
    }
    Ok(())
}

impl CompletionLoop for Loop<'_> {
    fn proactor(&mut self) -> &mut Proactor {
        &mut self.p
    }
    fn on_completion(&mut self, c: Completion) {
        Loop::on_completion(self, c)
    }
    fn take_fatal(&mut self) -> Option<io::Error> {
        self.fatal.take()
    }
    fn retry(&mut self) {
        for _ in 0..self.retry.len() {
            let r = self.retry.pop_front().expect("counted");
            self.queue(r);
        }
    }
}

impl Loop<'_> {
    /// Queues `req`; if its lane is busy, keeps it for after the next reap.
    fn queue(&mut self, req: Req) {
        let (rej, again) = match req {
            Req::Accept => match self.p.accept(self.listener, token(Kind::Accept, 0)) {
                Ok(()) => return,
                Err(rej) => (rej, Req::Accept),
            },
            Req::Close(slot) => match self.p.close(slot, token(Kind::Close, slot.index())) {
                Ok(()) => return,
                Err(rej) => (rej, Req::Close(slot)),
            },
            Req::Recv(slot, buf) => {
                let n = buf.len();
                match self
                    .p
                    .recv(slot, buf, 0..n, token(Kind::Recv, slot.index()))
                {
                    Ok(()) => return,
                    Err(mut rej) => {
                        let buf = rej.buf.take().unwrap_or_default();
                        (rej, Req::Recv(slot, buf))
                    }
                }
            }
            Req::Send(slot, buf, range) => {
                if let Some(c) = self.conns.get_mut(&slot.index()) {
                    c.sending = range.clone();
                }
                let ud = token(Kind::Send, slot.index());
                match self.p.send(slot, buf, range.clone(), ud) {
                    Ok(()) => return,
                    Err(mut rej) => {
                        let buf = rej.buf.take().unwrap_or_default();
                        (rej, Req::Send(slot, buf, range))
                    }
                }
            }
        };
        if rej.reason == RejectReason::Busy {
            let full = self.p.in_flight() >= (self.p.lanes() * self.p.lane_limit()) as usize;
            if matches!(again, Req::Accept) && full && !self.warned_full {
                self.warned_full = true;
                eprintln!(
                    "proactor_echo_server: {} requests in flight, the CQ limit: new connections \
                     wait until others finish (raise cq_entries or max_ker_worker)",
                    self.p.in_flight()
                );
            }
            self.retry.push_back(again);
        } else {
            // Not retryable (cannot happen with slots this loop manages): report it and
            // forget the connection rather than spin on it.
            eprintln!("proactor_echo_server: request refused: {rej}");
            if let Req::Recv(slot, _) | Req::Send(slot, ..) | Req::Close(slot) = again {
                if self.conns.remove(&slot.index()).is_some() {
                    self.stats.closed += 1;
                }
            }
        }
    }

    fn on_completion(&mut self, c: Completion) {
        let (kind, idx) = untoken(c.user_data);
        if kind == Kind::Accept {
            return self.on_accept(c);
        }
        let Some(conn) = self.conns.get(&idx) else {
            eprintln!("proactor_echo_server: completion for unknown slot {idx}");
            return;
        };
        let slot = conn.slot;
        match kind {
            Kind::Recv => {
                let buf = c.buf.unwrap_or_default();
                if c.result > 0 {
                    self.queue(Req::Send(slot, buf, 0..c.result as usize));
                } else {
                    // End of stream, reset, or cancelled: close.
                    self.queue(Req::Close(slot));
                }
            }
            Kind::Send => {
                let mut buf = c.buf.unwrap_or_default();
                if c.result < 0 {
                    return self.queue(Req::Close(slot));
                }
                self.stats.bytes += c.result as u64;
                let sent = conn.sending.start + c.result as usize;
                let end = conn.sending.end;
                if sent < end {
                    // Partial send: finish it before receiving more.
                    self.queue(Req::Send(slot, buf, sent..end));
                } else {
                    buf.resize(self.opts.buf_size, 0);
                    self.queue(Req::Recv(slot, buf));
                }
            }
            Kind::Close => {
                self.conns.remove(&idx);
                self.stats.closed += 1;
            }
            Kind::Accept | Kind::Cancel => {}
        }
    }

    fn on_accept(&mut self, c: Completion) {
        match c.accepted {
            Some(slot) => {
                self.stats.accepted += 1;
                self.conns.insert(
                    slot.index(),
                    Conn {
                        slot,
                        sending: 0..0,
                    },
                );
                self.queue(Req::Recv(slot, vec![0; self.opts.buf_size]));
                self.queue(Req::Accept);
            }
            None if c.result == -libc::ECANCELED => {}
            None => {
                self.stats.accept_errors += 1;
                let err = io::Error::from_raw_os_error(-c.result);
                if matches!(
                    -c.result,
                    libc::EOPNOTSUPP | libc::EINVAL | libc::EBADF | libc::ENOTSOCK
                ) {
                    // The listener itself is unusable: no retry can succeed.
                    self.fatal.get_or_insert(io::Error::new(
                        err.kind(),
                        format!("accept on the listening socket failed: {err}"),
                    ));
                    return;
                }
                eprintln!("proactor_echo_server: accept failed: {err}");
                // Out of descriptors or the like: back off briefly, keep serving.
                std::thread::sleep(Duration::from_millis(10));
                self.queue(Req::Accept);
            }
        }
    }
}
