//! The bytes queued for one socket: copied on write, sent one request at a time.
//!
//! Writes are appended to a list of chunks (small writes are packed into chunks of
//! [`CHUNK`] bytes). At most one request is in flight per socket, so a short send can be
//! finished before anything after it goes out and bytes keep their order whatever the
//! executor does: the unsent rest of a request goes back to the front of the queue.

use std::collections::VecDeque;
use std::ops::Range;

/// Size of the chunks small writes are packed into.
pub const CHUNK: usize = 64 * 1024;

/// Most buffers one WRITEV request carries.
const MAX_IOVECS: usize = 64;

/// Chunk buffers kept for reuse (per shim, not per socket).
const POOL_MAX: usize = 64;

/// Empty chunk buffers of capacity [`CHUNK`], kept to avoid an allocation per write.
#[derive(Default)]
pub struct Pool(Vec<Vec<u8>>);

impl Pool {
    fn take(&mut self) -> Vec<u8> {
        self.0.pop().unwrap_or_else(|| Vec::with_capacity(CHUNK))
    }

    fn give(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == CHUNK && self.0.len() < POOL_MAX {
            buf.clear();
            self.0.push(buf);
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

    /// Whether a request should be issued now: bytes wait and none is in flight.
    pub fn ready(&self) -> bool {
        self.in_flight.is_none() && !self.waiting.is_empty()
    }

    /// Copies the first `n` bytes of `parts` (in order) to the end of the queue.
    pub fn push(&mut self, parts: &[&[u8]], mut n: usize, pool: &mut Pool) {
        self.queued += n;
        for part in parts {
            if n == 0 {
                break;
            }
            let mut data = &part[..part.len().min(n)];
            n -= data.len();
            while !data.is_empty() {
                match self.waiting.back_mut() {
                    Some(c) if c.buf.capacity() == CHUNK && c.buf.len() < CHUNK => {
                        let k = (CHUNK - c.buf.len()).min(data.len());
                        c.buf.extend_from_slice(&data[..k]);
                        data = &data[k..];
                    }
                    _ if data.len() >= CHUNK => {
                        self.waiting.push_back(Chunk {
                            buf: data.to_vec(),
                            start: 0,
                        });
                        data = &[];
                    }
                    _ => self.waiting.push_back(Chunk {
                        buf: pool.take(),
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
    fn clear_drops_everything() {
        let mut pool = Pool::default();
        let mut q = WriteQueue::default();
        q.push(&[&[1u8; 100]], 100, &mut pool);
        let Some(Op::Send(b, _)) = q.take_op() else {
            panic!("expected a SEND")
        };
        q.push(&[&[2u8; 50]], 50, &mut pool);
        assert_eq!(q.clear(Some(b), Vec::new(), &mut pool), 150);
        assert!(q.is_idle());
    }
}
