//! What the event loop's wait needs from the proactor, the identity sweep, and the
//! drain at exit.
//!
//! The event loop must never wait for a completion while the program's own events may
//! be ready: a slow peer would then slow every client. So the interposed wait always
//! waits on the program's epoll set (or poll set), and [`Shim::plan`] only says how
//! long it may sleep there before the shim must look at completions again:
//!
//! - [`Wake::Poll`]: a request that something waits behind (bytes queued after it, an
//!   orphan to close, a deferred shutdown, the program's `EPOLLOUT` held back until the
//!   allowance has room, a request the lanes refused for lack of room) was issued less
//!   than [`FRESH`] ago: its completion is due any moment, so the wait
//!   is cut into short slices.
//! - [`Wake::At`]: such requests exist but are older (a peer that does not read): look
//!   again every [`SLOW_REAP`], or at the next linger deadline or identity sweep.
//! - [`Wake::Idle`]: nothing needs a completion soon; the bytes in flight go out
//!   whether or not anyone reaps their completion.

use std::time::{Duration, Instant};

use super::Shim;
use crate::fdtable::{self, Kind};

/// How long after its issue a request counts as due any moment.
pub const FRESH: Duration = Duration::from_millis(2);
/// How often the completions of older requests are looked at.
pub const SLOW_REAP: Duration = Duration::from_millis(5);
/// How often every open socket's identity is checked (see [`Shim::sweep`]).
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long the exit drain waits without any completion before it gives up.
const EXIT_IDLE: Duration = Duration::from_millis(500);
/// One slice of the exit drain's wait.
const DRAIN_SLICE: Duration = Duration::from_millis(10);

/// How long the event loop may sleep on the program's events alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// As long as the program asked.
    Idle,
    /// Only a short slice at a time.
    Poll,
    /// Until this instant at the latest.
    At(Instant),
}

impl Shim {
    /// What the next wait needs (see the module's notes). Uses the clock of the last
    /// [`Shim::pump`].
    pub fn plan(&self) -> Wake {
        if !self.dirty.is_empty() || !self.closes.is_empty() {
            return Wake::Poll;
        }
        let now = self.now;
        let mut at: Option<Instant> = self.next_linger();
        for s in &self.in_flight {
            let Some(c) = self.conns.get(s) else { continue };
            if !(c.queue.has_waiting() || c.fd.is_none() || c.shut.is_some() || c.masked) {
                continue;
            }
            let issued = c.issued.unwrap_or(now);
            if now.saturating_duration_since(issued) < FRESH {
                return Wake::Poll;
            }
            let t = now + SLOW_REAP;
            at = Some(at.map_or(t, |a| a.min(t)));
        }
        if !self.conns.is_empty() {
            at = Some(at.map_or(self.next_sweep, |a| a.min(self.next_sweep)));
        }
        at.map_or(Wake::Idle, Wake::At)
    }

    /// Once per [`SWEEP_EVERY`]: every open socket whose number no longer names it
    /// (closed, or closed and reused, in a way the shim did not see; or marked stale)
    /// is detached, so that its slot is released once its bytes are sent and its peer
    /// sees the end of the stream.
    pub(super) fn sweep(&mut self) {
        if self.now < self.next_sweep {
            return;
        }
        self.next_sweep = self.now + SWEEP_EVERY;
        let stale: Vec<i32> = self
            .conns
            .values()
            .filter_map(|c| {
                let fd = c.fd?;
                let gone = fdtable::kind(fd) == Kind::Stale || fdtable::identity(fd) != Some(c.id);
                gone.then_some(fd)
            })
            .collect();
        for fd in stale {
            self.stats.stale += 1;
            self.detach(fd);
        }
    }

    /// Waits up to `timeout` for at least one completion and handles what came; true
    /// when something completed (or a signal interrupted the wait). For the exit drain
    /// only: the event loop never waits here.
    fn wait_completions(&mut self, timeout: Duration) -> bool {
        let got = match self.proactor.wait(1, Some(timeout)) {
            Ok(n) => n > 0,
            Err(e) => e.kind() == std::io::ErrorKind::Interrupted,
        };
        if self.handle_completions() {
            self.flush();
        }
        got
    }

    /// Sends what is queued and releases the slots of closed sockets (at exit, or
    /// before `exec`): waits while requests complete, up to `timeout`, and gives up
    /// after [`EXIT_IDLE`] without a completion (a peer that does not read).
    pub fn drain_all(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = Instant::now();
        loop {
            self.pump();
            if !self.busy() {
                return;
            }
            let now = Instant::now();
            if now >= deadline || now - last >= EXIT_IDLE {
                return;
            }
            if self.wait_completions((deadline - now).min(DRAIN_SLICE)) {
                last = Instant::now();
            }
        }
    }
}
