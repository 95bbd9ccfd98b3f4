//! The echo server on multishot requests and a provided-buffer group
//! (`proactor_echo_server --multishot`): one multishot ACCEPT installs connections into
//! a range of slots, one multishot RECV per connection receives into buffers taken from
//! one group shared by every connection, and each buffer is sent back as it is, then
//! recycled. An idle connection holds no buffer and no CQ entry: its memory is its slot
//! and a few words of bookkeeping, and the connections per lane are no longer bounded by
//! `cq_entries`. All context travels in the 8 bytes of user_data (kind and slot).
//!
//! A connection holds at most [`MultishotOptions::held`] buffers waiting to be sent (a
//! client that does not read its echo must not take the group from the others): at that
//! many its RECV is cancelled, and armed again once half of them have been sent.
//!
//! A multishot request that ends is armed again: a RECV that ended with data (the
//! executor found its CQ full) or `-ENOBUFS` (every buffer is waiting to be sent), an
//! ACCEPT whose range filled up (`-ENFILE`). End of stream or an error closes the
//! connection once what it received has been sent.

use std::collections::VecDeque;
use std::io;
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;

use fastio::{BufGroup, Completion, Config, Proactor, ProvidedBuf, RejectReason, Slot};

use crate::proactor_server::{
    run_loop, serve_threads, token, untoken, CompletionLoop, Kind, ServeStats,
};

/// Tuning of the multishot echo loop.
#[derive(Clone, Debug)]
pub struct MultishotOptions {
    /// Buffers in the provided-buffer group (per serving thread).
    pub buffers: u32,
    /// Bytes per buffer.
    pub buf_size: u32,
    /// Slots reserved for the multishot ACCEPT (0: `max_files - 16`).
    pub accept_range: u32,
}

impl MultishotOptions {
    /// Buffers one connection may hold waiting to be sent: a sixteenth of the group,
    /// at least 2.
    pub fn held(&self) -> usize {
        (self.buffers as usize / 16).max(2)
    }
}

impl Default for MultishotOptions {
    fn default() -> Self {
        MultishotOptions {
            buffers: 1024,
            buf_size: 4096,
            accept_range: 0,
        }
    }
}

/// Serves `listener` with `config.max_usr_worker` threads until `shutdown` is set.
pub fn serve(
    listener: &TcpListener,
    config: &Config,
    opts: &MultishotOptions,
    shutdown: &AtomicBool,
) -> io::Result<ServeStats> {
    serve_threads(config, shutdown, || {
        serve_one(listener, config, opts, shutdown)
    })
}

/// A request to queue again after a refusal for lack of room.
enum Req {
    Accept,
    Recv(Slot),
    /// The next SEND of a connection.
    Pump(u32),
    Close(Slot),
}

/// A connection: the buffers received and not yet sent back (the first one is being
/// sent from `sent` on while `sending`), and whether it is closing.
struct Conn {
    slot: Slot,
    queue: VecDeque<ProvidedBuf>,
    sent: usize,
    sending: bool,
    /// End of stream or an error seen: close once the queue is empty.
    closing: bool,
    /// The CLOSE is queued.
    close_queued: bool,
    /// A multishot RECV is armed (queued and its last completion not seen).
    armed: bool,
    /// Its RECV was cancelled because it holds too many buffers.
    paused: bool,
}

impl Conn {
    fn new(slot: Slot) -> Self {
        Conn {
            slot,
            queue: VecDeque::new(),
            sent: 0,
            sending: false,
            closing: false,
            close_queued: false,
            armed: false,
            paused: false,
        }
    }
}

/// The connections by slot index (slots are dense, below `max_files`): a vector rather
/// than a hash map, since every completion looks its connection up.
#[derive(Default)]
struct Conns {
    by_slot: Vec<Option<Conn>>,
    len: usize,
}

impl Conns {
    fn get(&self, idx: u32) -> Option<&Conn> {
        self.by_slot.get(idx as usize)?.as_ref()
    }

    fn get_mut(&mut self, idx: u32) -> Option<&mut Conn> {
        self.by_slot.get_mut(idx as usize)?.as_mut()
    }

    fn insert(&mut self, idx: u32, conn: Conn) {
        let i = idx as usize;
        if i >= self.by_slot.len() {
            self.by_slot.resize_with(i + 1, || None);
        }
        if self.by_slot[i].replace(conn).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, idx: u32) -> Option<Conn> {
        let conn = self.by_slot.get_mut(idx as usize)?.take();
        if conn.is_some() {
            self.len -= 1;
        }
        conn
    }

    fn len(&self) -> usize {
        self.len
    }

    fn values(&self) -> impl Iterator<Item = &Conn> {
        self.by_slot.iter().flatten()
    }
}

struct Loop {
    p: Proactor,
    listener: Slot,
    group: BufGroup,
    range: u32,
    /// Buffers a connection may hold ([`MultishotOptions::held`]).
    held: usize,
    /// Whether "no free slot range" was reported already.
    warned_slots: bool,
    stats: ServeStats,
    conns: Conns,
    retry: VecDeque<Req>,
    fatal: Option<io::Error>,
    /// Buffers in the group.
    buffers: usize,
    /// Connections whose RECV ended with `-ENOBUFS` while every buffer was ours (queued
    /// or being sent): armed again when one of them is given back, not before (an
    /// executor that answers `-ENOBUFS` at once, like io_uring and the module, would
    /// otherwise have them go round in circles while the buffers are being sent).
    starved: Vec<u32>,
}

fn serve_one(
    listener: &TcpListener,
    config: &Config,
    opts: &MultishotOptions,
    shutdown: &AtomicBool,
) -> io::Result<ServeStats> {
    let mut p = Proactor::new(config)?;
    let listener = p.register(listener)?;
    let group = p.register_buffers(opts.buffers, opts.buf_size)?;
    let range = match opts.accept_range {
        0 => config.max_files.saturating_sub(16).max(1),
        n => n,
    };
    let mut lp = Loop {
        p,
        listener,
        group,
        range,
        held: opts.held(),
        warned_slots: false,
        stats: ServeStats::default(),
        conns: Conns::default(),
        retry: VecDeque::new(),
        fatal: None,
        buffers: opts.buffers as usize,
        starved: Vec::new(),
    };
    lp.queue(Req::Accept);
    run_loop(&mut lp, shutdown)?;
    lp.stats.closed += lp.conns.len() as u64;
    Ok(lp.stats)
}

impl CompletionLoop for Loop {
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

impl Loop {
    /// Arms the multishot ACCEPT over the largest range that fits, from `range` slots
    /// down to 16 (ranges shrink as connections stay open in the earlier ones).
    fn accept(&mut self) -> Result<(), fastio::Rejected> {
        let mut n = self.range;
        loop {
            match self
                .p
                .accept_multishot(self.listener, n, token(Kind::Accept, 0))
            {
                Err(r) if r.reason == RejectReason::NoSlots && n > 16 => n /= 2,
                r => return r,
            }
        }
    }

    fn queue(&mut self, req: Req) {
        let r = match req {
            Req::Accept => self.accept(),
            Req::Recv(slot) => {
                let r = self
                    .p
                    .recv_multishot(slot, self.group, token(Kind::Recv, slot.index()));
                if r.is_ok() {
                    if let Some(c) = self.conns.get_mut(slot.index()) {
                        c.armed = true;
                    }
                }
                r
            }
            Req::Pump(idx) => return self.pump(idx),
            Req::Close(slot) => self.p.close(slot, token(Kind::Close, slot.index())),
        };
        let Err(rej) = r else { return };
        match rej.reason {
            RejectReason::Busy => self.retry.push_back(req),
            RejectReason::NoSlots => {
                // Every slot is taken: accept again once connections have closed.
                if !self.warned_slots {
                    self.warned_slots = true;
                    eprintln!(
                        "proactor_echo_server: no free slot range for the multishot accept \
                         (raise max_files)"
                    );
                }
                self.retry.push_back(req);
            }
            _ => {
                eprintln!("proactor_echo_server: request refused: {rej}");
                if let Req::Recv(slot) | Req::Close(slot) = req {
                    if self.conns.remove(slot.index()).is_some() {
                        self.stats.closed += 1;
                    }
                }
            }
        }
    }

    fn on_completion(&mut self, c: Completion) {
        let (kind, idx) = untoken(c.user_data);
        match kind {
            Kind::Accept => self.on_accept(c),
            Kind::Recv => self.on_recv(idx, c),
            Kind::Send => self.on_send(idx, c),
            Kind::Close => {
                self.conns.remove(idx);
                self.stats.closed += 1;
            }
            // 0, or -ENOENT when the RECV had ended already.
            Kind::Cancel => {}
        }
    }

    fn on_accept(&mut self, c: Completion) {
        if let Some(slot) = c.accepted {
            self.stats.accepted += 1;
            self.conns.insert(slot.index(), Conn::new(slot));
            self.queue(Req::Recv(slot));
        } else if c.result < 0 && c.result != -libc::ENFILE && c.result != -libc::ECANCELED {
            self.stats.accept_errors += 1;
            let err = io::Error::from_raw_os_error(-c.result);
            if matches!(
                -c.result,
                libc::EOPNOTSUPP | libc::EINVAL | libc::EBADF | libc::ENOTSOCK
            ) {
                self.fatal.get_or_insert(io::Error::new(
                    err.kind(),
                    format!("multishot accept on the listening socket failed: {err}"),
                ));
                return;
            }
            eprintln!("proactor_echo_server: accept failed: {err}");
        }
        if !c.more && c.result != -libc::ECANCELED {
            self.queue(Req::Accept);
        }
    }

    fn on_recv(&mut self, idx: u32, c: Completion) {
        // (A -ENOBUFS completion brings no buffer: counted before as after.)
        let all_out = c.result == -libc::ENOBUFS && self.buffers_out() >= self.buffers;
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        let slot = conn.slot;
        if let Some(b) = c.provided {
            // After the CLOSE is queued nothing is sent any more.
            if !conn.close_queued {
                conn.queue.push_back(b);
            }
        }
        if c.more && conn.queue.len() >= self.held && !conn.paused {
            // Too much waits to be sent (the peer does not read): stop receiving.
            conn.paused = true;
            let _ = self
                .p
                .cancel(token(Kind::Recv, idx), token(Kind::Cancel, idx));
        }
        if !c.more {
            conn.armed = false;
            match c.result {
                // Out of buffers while every one is ours: receive again once one
                // has been sent.
                r if r == -libc::ENOBUFS && all_out && !conn.closing && !conn.paused => {
                    self.starved.push(idx)
                }
                // Ended with data (CQ full) or out of buffers: keep receiving.
                r if r > 0 || r == -libc::ENOBUFS => {
                    if !conn.closing && !conn.paused {
                        self.queue(Req::Recv(slot));
                    }
                }
                // Cancelled by our CLOSE, or by the pause, which may be over already.
                r if r == -libc::ECANCELED => {
                    if !conn.paused && !conn.closing && !conn.close_queued {
                        self.queue(Req::Recv(slot));
                    }
                }
                // End of stream or an error: close after the echo of what came.
                _ => conn.closing = true,
            }
        }
        self.pump(idx);
    }

    fn on_send(&mut self, idx: u32, c: Completion) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        conn.sending = false;
        let Some(buf) = c.provided else { return };
        if c.result < 0 {
            // The peer is gone: drop what waits and close.
            drop(buf);
            conn.queue.clear();
            conn.closing = true;
            self.feed_starved();
            return self.pump(idx);
        }
        self.stats.bytes += c.result as u64;
        conn.sent += c.result as usize;
        if conn.sent < buf.len() {
            conn.queue.push_front(buf);
        } else {
            // Sent whole: the buffer goes back to the group (at the next submit).
            conn.sent = 0;
            drop(buf);
            let starved = !self.starved.is_empty();
            if starved {
                self.feed_starved();
            }
            let Some(conn) = self.conns.get_mut(idx) else {
                return;
            };
            if conn.paused && conn.queue.len() <= self.held / 2 && !conn.closing {
                conn.paused = false;
                if !conn.armed {
                    let slot = conn.slot;
                    self.queue(Req::Recv(slot));
                }
            }
        }
        self.pump(idx);
    }

    /// Buffers this loop holds: queued to be sent, or being sent.
    fn buffers_out(&self) -> usize {
        self.conns
            .values()
            .map(|c| c.queue.len() + usize::from(c.sending))
            .sum()
    }

    /// A buffer was given back: the starved connections receive again.
    fn feed_starved(&mut self) {
        for idx in std::mem::take(&mut self.starved) {
            let Some(conn) = self.conns.get(idx) else {
                continue;
            };
            if !conn.armed && !conn.closing && !conn.paused && !conn.close_queued {
                let slot = conn.slot;
                self.queue(Req::Recv(slot));
            }
        }
    }

    /// Sends the next buffer of `idx` if none is being sent; closes a finished one (its
    /// CLOSE also ends the multishot RECV if that is still armed).
    fn pump(&mut self, idx: u32) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        if conn.sending || conn.close_queued {
            return;
        }
        let slot = conn.slot;
        if let Some(buf) = conn.queue.pop_front() {
            let range = conn.sent..buf.len();
            match self
                .p
                .send_provided(slot, buf, range, token(Kind::Send, idx))
            {
                Ok(()) => conn.sending = true,
                Err((rej, buf)) => {
                    conn.queue.push_front(buf);
                    if rej.reason == RejectReason::Busy {
                        self.retry.push_back(Req::Pump(idx));
                    } else {
                        eprintln!("proactor_echo_server: send refused: {rej}");
                        conn.queue.clear();
                        conn.closing = true;
                        self.retry.push_back(Req::Pump(idx));
                    }
                }
            }
        } else if conn.closing {
            conn.close_queued = true;
            self.queue(Req::Close(slot));
        }
    }
}
