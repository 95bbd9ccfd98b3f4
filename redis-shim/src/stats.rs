//! Counters that show what the shim did, written to `FASTIO_SHIM_STATS` at exit.

use std::fmt;

/// What the shim did since the process started.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Backend the proactor runs on.
    pub backend: String,
    /// Sockets registered into slots.
    pub registered: u64,
    /// Sockets the proactor could not register (left to the C library).
    pub register_failed: u64,
    /// Write calls (write, writev, send, sendto, sendmsg) answered from the queue.
    pub writes: u64,
    /// Bytes accepted into the queue.
    pub bytes_queued: u64,
    /// Bytes the executors reported sent.
    pub bytes_sent: u64,
    /// SEND/WRITEV requests issued.
    pub requests: u64,
    /// Requests that sent less than asked (the rest was requeued).
    pub short_sends: u64,
    /// Writes accepted only in part: the socket's allowance (or the cap) was reached.
    pub partial_writes: u64,
    /// Writes refused with EAGAIN: nothing left of the socket's allowance (or the cap).
    pub eagain: u64,
    /// Writes on sockets with nothing queued that went to the kernel directly because
    /// the cap of all open sockets was reached.
    pub passthrough: u64,
    /// Entries dropped because their number no longer named their socket (closed or
    /// replaced in a way the shim did not see, found by the identity check).
    pub stale: u64,
    /// Writes of signal handlers that interrupted the shim, queued after it.
    pub deferred: u64,
    /// Of those, the ones whose socket was gone by then (dropped).
    pub deferred_dropped: u64,
    /// `shutdown` calls carried out after the socket's queued bytes.
    pub deferred_shutdowns: u64,
    /// Failed queued writes.
    pub send_errors: u64,
    /// Errors reported to the program on a later call.
    pub errors_reported: u64,
    /// Slots released (CLOSE completed).
    pub closed: u64,
    /// Sockets the program had closed that the shim aborted: no progress for the linger
    /// time, or beyond the bound on the bytes of closed sockets.
    pub aborted: u64,
    /// Bytes queued for sockets the program had closed that were dropped (aborted, or
    /// their send failed).
    pub discarded_bytes: u64,
    /// Calls of the event-loop waits (epoll_wait, epoll_pwait, poll) that flushed.
    pub flushes: u64,
    /// Largest number of bytes held at once.
    pub peak_queued: u64,
    /// Sockets still registered when the counters were written.
    pub open_slots: u64,
    /// Bytes still queued when the counters were written.
    pub queued_now: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pid {}", std::process::id())?;
        writeln!(f, "backend {}", self.backend)?;
        let rows = [
            ("registered", self.registered),
            ("register_failed", self.register_failed),
            ("writes", self.writes),
            ("bytes_queued", self.bytes_queued),
            ("bytes_sent", self.bytes_sent),
            ("requests", self.requests),
            ("short_sends", self.short_sends),
            ("partial_writes", self.partial_writes),
            ("eagain", self.eagain),
            ("passthrough", self.passthrough),
            ("stale", self.stale),
            ("deferred", self.deferred),
            ("deferred_dropped", self.deferred_dropped),
            ("deferred_shutdowns", self.deferred_shutdowns),
            ("send_errors", self.send_errors),
            ("errors_reported", self.errors_reported),
            ("closed", self.closed),
            ("aborted", self.aborted),
            ("discarded_bytes", self.discarded_bytes),
            ("flushes", self.flushes),
            ("peak_queued", self.peak_queued),
            ("open_slots", self.open_slots),
            ("queued_now", self.queued_now),
        ];
        for (k, v) in rows {
            writeln!(f, "{k} {v}")?;
        }
        Ok(())
    }
}
