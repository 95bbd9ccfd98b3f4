//! The bytes queued for one socket: copied on write, sent one request at a time.
//!
//! Writes are appended to a list of chunks: small writes are packed into one chunk of up
//! to [`CHUNK`] bytes, whose buffer starts at the size of the write (at least [`SMALL`])
//! and grows by powers of two, so a socket holds little more memory than the bytes it
//! has queued (the cap counts bytes). At most one request is in flight per socket, so a
//! short send can be finished before anything after it goes out and bytes keep their
//! order whatever the executor does: the unsent rest of a request goes back to the front
//! of the queue.

use std::collections::VecDeque;
use std::ops::Range;

/// Largest chunk small writes are packed into (a larger write is a chunk of its own).
pub const CHUNK: usize = 64 * 1024;

/// Smallest chunk buffer.
pub const SMALL: usize = 512;

/// Most buffers one WRITEV request carries.
const MAX_IOVECS: usize = 64;

/// Buffer sizes the pool keeps: the powers of two from [`SMALL`] to [`CHUNK`].
const CLASSES: usize = (CHUNK / SMALL).trailing_zeros() as usize + 1;

/// Buffers of one size kept for reuse (per shim, not per socket).
const POOL_PER_CLASS: usize = 32;

/// The pool's size class of a buffer of capacity `cap`, if it keeps such buffers.
fn class_of(cap: usize) -> Option<usize> {
    (cap.is_power_of_two() && (SMALL..=CHUNK).contains(&cap))
        .then(|| (cap / SMALL).trailing_zeros() as usize)
}

/// Empty chunk buffers (capacities: powers of two from [`SMALL`] to [`CHUNK`]), kept to
/// avoid an allocation per write.
#[derive(Default)]
pub struct Pool([Vec<Vec<u8>>; CLASSES]);

impl Pool {
    /// An empty buffer with room for `want` bytes (at least [`SMALL`], at most
    /// [`CHUNK`]), its capacity rounded up to a power of two.
    fn take(&mut self, want: usize) -> Vec<u8> {
        let size = want.clamp(SMALL, CHUNK).next_power_of_two();
        class_of(size)
            .and_then(|k| self.0.get_mut(k))
            .and_then(Vec::pop)
            .unwrap_or_else(|| Vec::with_capacity(size))
    }

    fn give(&mut self, mut buf: Vec<u8>) {
        if let Some(list) = class_of(buf.capacity()).and_then(|k| self.0.get_mut(k)) {
            if list.len() < POOL_PER_CLASS {
                buf.clear();
                list.push(buf);
            }
        }
    }
}

/// Queued bytes: `buf[start..]`.
struct Chunk {
    buf: Vec<u8>,
    start: usize,
}

impl Chunk {
    fn len(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// A request to hand to the proactor.
#[derive(Debug)]
pub enum Op {
    /// SEND of `buf[range]`.
    Send(Vec<u8>, Range<usize>),
    /// WRITEV of every buffer, whole.
    Writev(Vec<Vec<u8>>),
}

/// The queue of one socket.
#[derive(Default)]
pub struct WriteQueue {
    waiting: VecDeque<Chunk>,
    /// Start offset of the SEND in flight (`Some` while a request is in flight).
    in_flight: Option<usize>,
    queued: usize,
}

impl WriteQueue {
    /// Bytes accepted and not yet sent (in flight or waiting).
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Whether nothing is waiting or in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.waiting.is_empty()
    }

    /// Whether a request is in flight.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether bytes wait that are not in flight.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Whether a request should be issued now: bytes wait and none is in flight.
    pub fn ready(&self) -> bool {
        self.in_flight.is_none() && !self.waiting.is_empty()
    }

    /// Copies the first `n` bytes of `parts` (in order) to the end of the queue.
    pub fn push(&mut self, parts: &[&[u8]], n: usize, pool: &mut Pool) {
        self.queued += n;
        // Bytes of this write not copied yet.
        let mut left = n;
        for part in parts {
            if left == 0 {
                break;
            }
            let mut data = &part[..part.len().min(left)];
            while !data.is_empty() {
                match self.waiting.back_mut() {
                    // The last chunk is never in flight: pack into it, up to CHUNK.
                    Some(c) if c.buf.len() < CHUNK => {
                        let k = (CHUNK - c.buf.len()).min(data.len());
                        if c.buf.capacity() - c.buf.len() < k {
                            // Grow to fit the rest of this write (a power of two, at
                            // most CHUNK), dropping what was sent of the chunk.
                            let mut bigger = pool.take((c.len() + left).min(CHUNK));
                            bigger.extend_from_slice(&c.buf[c.start..]);
                            c.start = 0;
                            pool.give(std::mem::replace(&mut c.buf, bigger));
                        }
                        c.buf.extend_from_slice(&data[..k]);
                        data = &data[k..];
                        left -= k;
                    }
                    _ if data.len() >= CHUNK => {
                        self.waiting.push_back(Chunk {
                            buf: data.to_vec(),
                            start: 0,
                        });
                        left -= data.len();
                        data = &[];
                    }
                    _ => self.waiting.push_back(Chunk {
                        buf: pool.take(left),
                        start: 0,
                    }),
                }
            }
        }
    }

    /// The next request: a SEND of the first chunk, or a WRITEV of the first few.
    /// The queue counts it in flight until [`WriteQueue::complete`] or
    /// [`WriteQueue::put_back`].
    pub fn take_op(&mut self) -> Option<Op> {
        if !self.ready() {
            return None;
        }
        let whole = self.waiting.iter().take_while(|c| c.start == 0).count();
        if whole < 2 {
            let c = self.waiting.pop_front()?;
            self.in_flight = Some(c.start);
            let end = c.buf.len();
            return Some(Op::Send(c.buf, c.start..end));
        }
        let bufs: Vec<Vec<u8>> = self
            .waiting
            .drain(..whole.min(MAX_IOVECS))
            .map(|c| c.buf)
            .collect();
        self.in_flight = Some(0);
        Some(Op::Writev(bufs))
    }

    /// Returns a request that was not queued to the front, unchanged.
    pub fn put_back(&mut self, buf: Option<Vec<u8>>, bufs: Vec<Vec<u8>>) {
        let start = self.in_flight.take().unwrap_or(0);
        for b in bufs.into_iter().rev() {
            self.waiting.push_front(Chunk { buf: b, start: 0 });
        }
        if let Some(b) = buf {
            self.waiting.push_front(Chunk { buf: b, start });
        }
    }

    /// The request in flight sent `n` bytes: the rest goes back to the front of the
    /// queue, fully sent buffers go to `pool`.
    pub fn complete(
        &mut self,
        n: usize,
        buf: Option<Vec<u8>>,
        bufs: Vec<Vec<u8>>,
        pool: &mut Pool,
    ) {
        let start = self.in_flight.take().unwrap_or(0);
        self.queued = self.queued.saturating_sub(n);
        let mut left = n;
        let mut rest = Vec::new();
        let chunks = buf
            .map(|b| Chunk { buf: b, start })
            .into_iter()
            .chain(bufs.into_iter().map(|b| Chunk { buf: b, start: 0 }));
        for mut c in chunks {
            let k = left.min(c.len());
            left -= k;
            c.start += k;
            if c.len() == 0 {
                pool.give(c.buf);
            } else {
                rest.push(c);
            }
        }
        for c in rest.into_iter().rev() {
            self.waiting.push_front(c);
        }
    }

    /// Drops the bytes waiting to be issued, not the request in flight; returns how many
    /// were dropped.
    pub fn discard_waiting(&mut self, pool: &mut Pool) -> usize {
        let mut dropped = 0;
        for c in self.waiting.drain(..) {
            dropped += c.len();
            pool.give(c.buf);
        }
        self.queued = self.queued.saturating_sub(dropped);
        dropped
    }

    /// Bytes of memory the queue's chunks hold.
    pub fn allocated(&self) -> usize {
        self.waiting.iter().map(|c| c.buf.capacity()).sum()
    }

    /// Drops every queued byte (the socket failed); returns how many were dropped.
    pub fn clear(&mut self, buf: Option<Vec<u8>>, bufs: Vec<Vec<u8>>, pool: &mut Pool) -> usize {
        self.in_flight = None;
        for b in buf.into_iter().chain(bufs) {
            pool.give(b);
        }
        for c in self.waiting.drain(..) {
            pool.give(c.buf);
        }
        std::mem::take(&mut self.queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends everything through `take_op`, each request sending at most `max` bytes;
    /// returns the bytes in the order they went out.
    fn drain(q: &mut WriteQueue, pool: &mut Pool, max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut guard = 0;
        while let Some(op) = q.take_op() {
            guard += 1;
            assert!(guard < 2_000_000, "no progress");
            let (buf, bufs, sent) = match op {
                Op::Send(b, r) => {
                    let n = r.len().min(max);
                    out.extend_from_slice(&b[r.start..r.start + n]);
                    (Some(b), Vec::new(), n)
                }
                Op::Writev(bs) => {
                    let mut n = 0;
                    for b in &bs {
                        let k = b.len().min(max - n);
                        out.extend_from_slice(&b[..k]);
                        n += k;
                    }
                    (None, bs, n)
                }
            };
            q.complete(sent, buf, bufs, pool);
        }
        assert!(q.is_idle());
        assert_eq!(q.queued(), 0);
        out
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn short_sends_keep_every_byte_in_order() {
        for max in [1, 7, 4096, CHUNK - 1, CHUNK + 3, 1 << 20] {
            let mut pool = Pool::default();
            let mut q = WriteQueue::default();
            let mut expect = Vec::new();
            for (i, len) in [1, 10, CHUNK, 3, 200_000, 5, CHUNK - 2]
                .into_iter()
                .enumerate()
            {
                let d = pattern(len, i as u8);
                q.push(&[&d[..len / 2], &d[len / 2..]], len, &mut pool);
                expect.extend_from_slice(&d);
            }
            assert_eq!(q.queued(), expect.len());
            assert_eq!(drain(&mut q, &mut pool, max), expect, "max {max}");
        }
    }

    #[test]
    fn push_takes_only_the_accepted_prefix() {
        let mut pool = Pool::default();
        let mut q = WriteQueue::default();
        q.push(&[b"abc", b"defg"], 5, &mut pool);
        assert_eq!(q.queued(), 5);
        assert_eq!(drain(&mut q, &mut pool, usize::MAX), b"abcde");
    }

    #[test]
    fn one_request_in_flight_and_put_back_restores_it() {
        let mut pool = Pool::default();
        let mut q = WriteQueue::default();
        q.push(&[&pattern(3 * CHUNK, 1)], 3 * CHUNK, &mut pool);
        let op = q.take_op().expect("op");
        assert!(
            q.take_op().is_none(),
            "a second request while one is in flight"
        );
        match op {
            Op::Send(b, _) => q.put_back(Some(b), Vec::new()),
            Op::Writev(bs) => q.put_back(None, bs),
        }
        assert_eq!(drain(&mut q, &mut pool, 1000), pattern(3 * CHUNK, 1));
    }

    #[test]
    fn small_writes_hold_little_memory_and_are_packed() {
        let mut pool = Pool::default();
        // Many sockets with a small write each: a small buffer each, not a CHUNK.
        let mut queues: Vec<WriteQueue> = (0..1000).map(|_| WriteQueue::default()).collect();
        for q in &mut queues {
            q.push(&[&[7u8; 100]], 100, &mut pool);
            assert_eq!(q.allocated(), SMALL);
        }
        // One socket with many small writes: packed into few chunks, at most about
        // twice the bytes queued.
        let mut q = WriteQueue::default();
        let mut expect = Vec::new();
        for i in 0..2000 {
            let d = pattern(100 + i % 7, i as u8);
            q.push(&[&d], d.len(), &mut pool);
            expect.extend_from_slice(&d);
        }
        assert!(
            q.waiting.len() <= expect.len() / CHUNK + 1,
            "{} chunks",
            q.waiting.len()
        );
        assert!(
            q.allocated() <= 2 * expect.len() + SMALL,
            "{} bytes held",
            q.allocated()
        );
        assert_eq!(drain(&mut q, &mut pool, 3000), expect);
    }

    #[test]
    fn a_partly_sent_chunk_grows_without_its_sent_bytes() {
        let mut pool = Pool::default();
        let mut q = WriteQueue::default();
        let a = pattern(300, 1);
        q.push(&[&a], a.len(), &mut pool);
        let Some(Op::Send(b, _)) = q.take_op() else {
            panic!("expected a SEND")
        };
        q.complete(200, Some(b), Vec::new(), &mut pool);
        let c = pattern(5000, 2);
        q.push(&[&c], c.len(), &mut pool);
        let mut expect = a[200..].to_vec();
        expect.extend_from_slice(&c);
        assert_eq!(q.queued(), expect.len());
        assert_eq!(drain(&mut q, &mut pool, usize::MAX), expect);
    }

    /// A queue with 100 bytes in flight (the SEND's buffer is returned) and 50 waiting.
    fn in_flight_and_waiting(pool: &mut Pool) -> (WriteQueue, Vec<u8>) {
        let mut q = WriteQueue::default();
        q.push(&[&[1u8; 100]], 100, pool);
        let Some(Op::Send(b, _)) = q.take_op() else {
            panic!("expected a SEND")
        };
        q.push(&[&[2u8; 50]], 50, pool);
        (q, b)
    }

    #[test]
    fn discard_waiting_keeps_the_request_in_flight() {
        let mut pool = Pool::default();
        let (mut q, b) = in_flight_and_waiting(&mut pool);
        assert_eq!(q.discard_waiting(&mut pool), 50);
        assert_eq!(q.queued(), 100);
        assert!(!q.is_idle());
        q.complete(100, Some(b), Vec::new(), &mut pool);
        assert!(q.is_idle());
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn clear_drops_everything() {
        let mut pool = Pool::default();
        let (mut q, b) = in_flight_and_waiting(&mut pool);
        assert_eq!(q.clear(Some(b), Vec::new(), &mut pool), 150);
        assert!(q.is_idle());
    }
}
