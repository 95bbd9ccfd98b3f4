//! Completions, failures, and the end of a socket's life in the shim.
//!
//! A socket the program closes (an *orphan*) keeps its slot until its queued bytes are
//! sent. Its bytes do not count against the cap of the open sockets, but against a bound
//! of their own (the same size), and if none of them goes out for the linger time (a
//! peer that does not read), the shim aborts it: the rest is dropped and a CLOSE through
//! the proactor cancels the send waiting on it and releases the slot.

use std::time::Instant;

use fastio::Completion;

use super::{FdEntry, Shim, TAG_CLOSE, TAG_SEND};

impl Shim {
    /// Handles every ready completion; true when there were any.
    pub(super) fn handle_completions(&mut self) -> bool {
        let done: Vec<Completion> = self.proactor.completions().collect();
        let any = !done.is_empty();
        for c in done {
            let slot = (c.user_data & 0xffff_ffff) as u32;
            match c.user_data & !0xffff_ffff {
                TAG_SEND => self.sent(slot, c),
                TAG_CLOSE => self.release(slot),
                _ => {}
            }
        }
        any
    }

    /// A SEND or WRITEV of `slot` completed.
    fn sent(&mut self, slot: u32, c: Completion) {
        self.in_flight.remove(&slot);
        let linger = self.settings.close_linger;
        let Some(conn) = self.conns.get_mut(&slot) else {
            return;
        };
        conn.issued = None;
        let orphan = conn.fd.is_none();
        let res = c.result;
        if conn.failed {
            // An aborted orphan: whatever the request did, the rest is dropped.
            let sent = usize::try_from(res).unwrap_or(0);
            conn.queue.complete(sent, c.buf, c.bufs, &mut self.pool);
            let dropped = conn.queue.clear(None, Vec::new(), &mut self.pool);
            self.unqueue(sent, orphan);
            self.stats.bytes_sent += sent as u64;
            self.discard(dropped);
        } else if res >= 0 || res == -libc::EAGAIN || res == -libc::EINTR {
            let n = usize::try_from(res).unwrap_or(0);
            let asked =
                c.buf.as_ref().map_or(0, Vec::len) + c.bufs.iter().map(Vec::len).sum::<usize>();
            if n > 0 && n < asked {
                self.stats.short_sends += 1;
            }
            conn.queue.complete(n, c.buf, c.bufs, &mut self.pool);
            if orphan && n > 0 && conn.linger_until.is_some() {
                conn.linger_until = Instant::now().checked_add(linger);
            }
            let ready = conn.queue.ready();
            if ready && !conn.dirty {
                conn.dirty = true;
                self.dirty.push(slot);
            }
            if conn.queue.is_idle() {
                if let Some(copy) = conn.shut.take() {
                    // The bytes queued before the program's shutdown are all sent.
                    // SAFETY: shutdown on our own copy of the socket's descriptor.
                    unsafe {
                        libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&copy), libc::SHUT_WR)
                    };
                    self.stats.deferred_shutdowns += 1;
                }
            }
            self.unqueue(n, orphan);
            self.stats.bytes_sent += n as u64;
            if !ready {
                self.close_if_done(slot);
            }
        } else {
            let dropped = conn.queue.clear(c.buf, c.bufs, &mut self.pool);
            if orphan {
                self.discard(dropped);
            } else {
                self.unqueue(dropped, false);
            }
            // EBADF would tell the program its descriptor is not open: the executor
            // lost the slot's file, an internal failure.
            let errno = if -res == libc::EBADF { libc::EIO } else { -res };
            self.fail(slot, errno);
        }
    }

    /// A queued write of `slot` failed with `errno`: drop what is queued, report the
    /// error on the program's next call, release the slot.
    pub(super) fn fail(&mut self, slot: u32, errno: i32) {
        let Some(conn) = self.conns.get_mut(&slot) else {
            return;
        };
        self.stats.send_errors += 1;
        conn.failed = true;
        conn.shut = None;
        let id = conn.id;
        let dropped = conn.queue.clear(None, Vec::new(), &mut self.pool);
        match conn.fd.take() {
            Some(fd) => {
                if std::mem::take(&mut conn.masked) {
                    // The program must see the socket writable, and then the error.
                    crate::epreg::unmask(fd, true);
                }
                self.unqueue(dropped, false);
                self.set_entry(fd, FdEntry::Failed(errno), id);
            }
            None => self.discard(dropped),
        }
        self.close_if_done(slot);
    }

    /// The program no longer has a descriptor for `slot`'s socket: its bytes move from
    /// the open sockets' count to the orphans'; with bytes queued it lingers, and beyond
    /// the orphans' bound it is aborted at once.
    pub(super) fn orphan(&mut self, slot: u32) {
        let linger = self.settings.close_linger;
        let Some(conn) = self.conns.get_mut(&slot) else {
            return;
        };
        let Some(fd) = conn.fd.take() else {
            return;
        };
        if std::mem::take(&mut conn.masked) {
            crate::epreg::unmask(fd, false);
        }
        self.orphaned += conn.queue.queued();
        if !conn.queue.is_idle() {
            // A linger too long to represent never expires.
            conn.linger_until = Instant::now().checked_add(linger);
            if conn.linger_until.is_some() {
                self.lingering.push(slot);
            }
            if self.orphaned > self.settings.max_queued {
                // Completions not reaped yet may have sent this socket's bytes, or
                // other orphans': only what is still queued then counts.
                self.proactor.reap();
                self.handle_completions();
                if self.orphaned > self.settings.max_queued {
                    self.abort(slot);
                    return;
                }
            }
        }
        self.close_if_done(slot);
    }

    /// Aborts the orphans whose linger time passed without progress; true when any was.
    pub(super) fn expire_lingering(&mut self) -> bool {
        if self.lingering.is_empty() {
            return false;
        }
        let now = self.now;
        let conns = &self.conns;
        let mut expired = Vec::new();
        self.lingering.retain(|s| match conns.get(s) {
            Some(c) if !c.closing => match c.linger_until {
                Some(t) if t <= now => {
                    expired.push(*s);
                    false
                }
                Some(_) => true,
                None => false,
            },
            _ => false,
        });
        let any = !expired.is_empty();
        for s in expired {
            self.abort(s);
        }
        any
    }

    /// The earliest linger deadline, if an orphan lingers.
    pub(super) fn next_linger(&self) -> Option<Instant> {
        self.lingering
            .iter()
            .filter_map(|s| self.conns.get(s)?.linger_until)
            .min()
    }

    /// Gives up on the orphan `slot`: drops the bytes waiting to be issued and queues a
    /// CLOSE, which cancels the request in flight (its bytes are dropped when it
    /// completes) and releases the slot.
    fn abort(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(&slot) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.failed = true;
        conn.closing = true;
        conn.linger_until = None;
        conn.shut = None;
        let dropped = conn.queue.discard_waiting(&mut self.pool);
        self.closes.push(slot);
        self.stats.aborted += 1;
        self.discard(dropped);
    }

    /// The CLOSE of `slot` completed (or the slot was gone already): forget it, and drop
    /// anything still queued.
    pub(super) fn release(&mut self, slot: u32) {
        let Some(mut conn) = self.conns.remove(&slot) else {
            return;
        };
        self.in_flight.remove(&slot);
        let rest = conn.queue.clear(None, Vec::new(), &mut self.pool);
        if conn.fd.is_some() {
            self.unqueue(rest, false);
        } else {
            self.discard(rest);
        }
        self.stats.closed += 1;
    }

    /// `n` queued bytes left a queue (sent or dropped); `orphan`: an orphan's.
    fn unqueue(&mut self, n: usize, orphan: bool) {
        self.queued = self.queued.saturating_sub(n);
        if orphan {
            self.orphaned = self.orphaned.saturating_sub(n);
        }
    }

    /// `n` queued bytes of an orphan were dropped.
    fn discard(&mut self, n: usize) {
        self.unqueue(n, true);
        self.stats.discarded_bytes += n as u64;
    }

    /// Queues the CLOSE of `slot` once the program closed it (or it failed) and nothing
    /// of it is in flight.
    fn close_if_done(&mut self, slot: u32) {
        if let Some(conn) = self.conns.get_mut(&slot) {
            if conn.fd.is_none() && conn.queue.is_idle() && !conn.closing {
                conn.closing = true;
                self.closes.push(slot);
            }
        }
    }
}
