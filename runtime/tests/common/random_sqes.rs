//! Random requests for the kernel-module fuzz and soak: a reproducible generator
//! (xorshift64*), buffers fenced by PROT_NONE guard pages, and SQEs valid and not (bad
//! opcodes, slots valid, empty and out of range, lengths 0 to huge, reserved fields set,
//! addresses inside the fenced scratch area, in its guards, 0, kernel addresses...), and
//! what the CQE of each may say according to `fastio_uapi::decode`.
//!
//! Included next to `common` and `kmod`: `#[path = "common/random_sqes.rs"] mod random_sqes;`.

// Each test program uses a different subset.
#![allow(dead_code)]

use fastio::uapi::{
    decode, IoVec, Op, Sqe, ACCEPT_NONBLOCK, MAX_RW_LEN, OFF_CURRENT, OP_ACCEPT, OP_ASYNC_CANCEL,
    OP_CLOSE, OP_CONNECT, OP_FALLOCATE, OP_FSYNC, OP_NOP, OP_OPENAT, OP_READ, OP_RECV, OP_SEND,
    OP_SENDFILE, OP_SHUTDOWN, OP_WRITE, OP_WRITEV, RECV_FLAGS, SEND_FLAGS,
};

/// The seed in environment variable `var` (to replay a run), else one from the clock.
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// Size of each PROT_NONE guard around a [`Fenced`] area.
pub const GUARD: usize = 64 << 10;

/// xorshift64*: small, fast, reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with `pct` percent probability.
    pub fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

/// `len` bytes of fresh memory between two PROT_NONE guards; returns (base, mapping).
pub struct Fenced {
    map: *mut libc::c_void,
    total: usize,
    /// The first usable byte.
    pub base: u64,
}

impl Fenced {
    /// `len` usable bytes (a multiple of the page size).
    pub fn new(len: usize) -> Fenced {
        let total = len + 2 * GUARD;
        // SAFETY: a fresh private anonymous mapping; nothing else is affected.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        let base = map as u64 + GUARD as u64;
        // SAFETY: the middle of our own mapping.
        let r = unsafe {
            libc::mprotect(
                base as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        assert_eq!(r, 0);
        Fenced { map, total, base }
    }
}

impl Drop for Fenced {
    fn drop(&mut self) {
        // SAFETY: our mapping; nothing in flight uses it any more (checked by the caller).
        unsafe { libc::munmap(self.map, self.total) };
    }
}

/// The name of an opcode, for summaries.
pub fn op_name(opcode: u8) -> String {
    match opcode {
        OP_NOP => "NOP".into(),
        OP_ACCEPT => "ACCEPT".into(),
        OP_RECV => "RECV".into(),
        OP_SEND => "SEND".into(),
        OP_READ => "READ".into(),
        OP_WRITE => "WRITE".into(),
        OP_WRITEV => "WRITEV".into(),
        OP_CLOSE => "CLOSE".into(),
        OP_ASYNC_CANCEL => "ASYNC_CANCEL".into(),
        OP_OPENAT => "OPENAT".into(),
        OP_FSYNC => "FSYNC".into(),
        OP_FALLOCATE => "FALLOCATE".into(),
        OP_SHUTDOWN => "SHUTDOWN".into(),
        OP_CONNECT => "CONNECT".into(),
        OP_SENDFILE => "SENDFILE".into(),
        _ => "bad-opcode".into(),
    }
}

/// Checks what the CQE of `sqe` says against the ABI's decoder for a context of
/// `max_files` slots.
pub fn check_result(sqe: &Sqe, res: i32, max_files: u32) {
    let ctx = || format!("{sqe:?} completed with {res}");
    assert!(res >= -4095, "{}: not an errno", ctx());
    match decode(sqe, max_files) {
        Err(e) => assert_eq!(res, -e.errno(), "{}: refused SQE", ctx()),
        Ok(Op::Nop) => assert_eq!(res, 0, "{}", ctx()),
        Ok(Op::Close { .. }) => assert!(res == 0 || res == -libc::EBADF, "{}", ctx()),
        Ok(Op::AsyncCancel { .. }) => assert!(res == 0 || res == -libc::ENOENT, "{}", ctx()),
        Ok(Op::Accept { dest, .. }) => {
            assert!(res < 0 || res == dest as i32, "{}", ctx())
        }
        Ok(
            Op::Recv { len, .. }
            | Op::Send { len, .. }
            | Op::Read { len, .. }
            | Op::Write { len, .. }
            | Op::Sendfile { len, .. },
        ) => assert!(res < 0 || res as u32 <= len, "{}", ctx()),
        Ok(Op::Writev { .. }) => assert!(res <= MAX_RW_LEN as i32, "{}", ctx()),
        Ok(Op::OpenAt { dest, .. }) => assert!(res < 0 || res == dest as i32, "{}", ctx()),
        Ok(Op::Fsync { .. } | Op::Fallocate { .. } | Op::Shutdown { .. } | Op::Connect { .. }) => {
            assert!(res <= 0, "{}", ctx())
        }
        Ok(Op::RecvSelect { .. }) => {
            assert!(
                res < 0 || res as u32 <= fastio::uapi::MAX_PBUF_SIZE,
                "{}",
                ctx()
            )
        }
        Ok(Op::AcceptMulti { first, count, .. }) => {
            assert!(
                res < 0 || (first..first + count).contains(&(res as u32)),
                "{}",
                ctx()
            )
        }
    }
}

/// The request generator.
pub struct Gen {
    /// The random source (also for the caller's own choices).
    pub rng: Rng,
    /// Start and length of the fenced scratch area that buffers point into.
    pub scratch: u64,
    pub scratch_len: usize,
    /// Start and length of the fenced area that iovec arrays are written into.
    pub iov_area: u64,
    pub iov_len: usize,
    iov_next: usize,
    /// File slots of the context.
    pub max_files: u32,
}

impl Gen {
    /// A generator over the two fenced areas, for a context of `max_files` slots.
    pub fn new(
        seed: u64,
        scratch: &Fenced,
        scratch_len: usize,
        iov: &Fenced,
        iov_len: usize,
        max_files: u32,
    ) -> Gen {
        Gen {
            rng: Rng(seed),
            scratch: scratch.base,
            scratch_len,
            iov_area: iov.base,
            iov_len,
            iov_next: 0,
            max_files,
        }
    }

    /// The first byte of the guard after the scratch area.
    fn guard(&self) -> u64 {
        self.scratch + self.scratch_len as u64
    }

    fn addr(&mut self) -> u64 {
        let r = self.rng.below(100);
        match r {
            0..=69 => self.scratch + self.rng.below(self.scratch_len as u64),
            70..=75 => 0,
            76..=81 => self.guard() + self.rng.below(GUARD as u64),
            82..=87 => self.rng.pick(&[
                0xffff_8880_0000_0000,
                0xffff_ffff_8100_0000,
                0xffff_ffff_ffff_f000,
                0x0000_8000_0000_0000,
                u64::MAX,
            ]),
            88..=93 => self.scratch + self.scratch_len as u64 - 1 - self.rng.below(4096),
            _ => self.rng.next(),
        }
    }

    fn len(&mut self) -> u32 {
        match self.rng.below(100) {
            0..=14 => 0,
            15..=59 => 1 + self.rng.below(4096) as u32,
            60..=74 => 1 + self.rng.below(self.scratch_len as u64) as u32,
            _ => {
                let any = self.rng.next() as u32;
                self.rng.pick(&[u32::MAX, MAX_RW_LEN, MAX_RW_LEN + 1, any])
            }
        }
    }

    fn off(&mut self) -> u64 {
        match self.rng.below(100) {
            0..=49 => self.rng.below(1 << 20),
            50..=64 => OFF_CURRENT,
            65..=74 => 0,
            75..=79 => i64::MAX as u64 - self.rng.below(1 << 16),
            _ => self.rng.next(),
        }
    }

    fn slot(&mut self) -> u32 {
        match self.rng.below(100) {
            0..=84 => self.rng.below(self.max_files as u64) as u32,
            85..=92 => self.max_files + self.rng.below(1000) as u32,
            _ => self
                .rng
                .pick(&[u32::MAX, 1 << 20, self.max_files, i32::MAX as u32]),
        }
    }

    /// Writes an iovec array into the iovec area; returns its address.
    fn iovecs(&mut self, count: u32) -> u64 {
        let n = (count as usize).min(1024);
        let bytes = n * std::mem::size_of::<IoVec>();
        if self.iov_next + bytes > self.iov_len {
            self.iov_next = 0;
        }
        let at = self.iov_area + self.iov_next as u64;
        self.iov_next += bytes.next_multiple_of(64);
        for i in 0..n {
            let v = IoVec {
                base: match self.rng.below(100) {
                    0..=84 => self.scratch + self.rng.below(self.scratch_len as u64),
                    _ => self.addr(),
                },
                len: match self.rng.below(100) {
                    0..=89 => self.rng.below(4097),
                    90..=94 => u64::MAX,
                    _ => self.rng.next() >> self.rng.below(64),
                },
            };
            // SAFETY: `at + i * 16` lies inside the iovec area (checked above), which
            // is ours; the kernel only reads it.
            unsafe { ((at as *mut IoVec).add(i)).write_unaligned(v) };
        }
        at
    }

    /// A random SQE with `user_data`.
    pub fn sqe(&mut self, user_data: u64) -> Sqe {
        let opcode = if self.rng.pct(12) {
            self.rng.next() as u8
        } else if self.rng.pct(5) {
            OP_ASYNC_CANCEL
        } else {
            self.rng.pick(&[
                OP_NOP,
                OP_NOP,
                OP_ACCEPT,
                OP_ACCEPT,
                OP_RECV,
                OP_RECV,
                OP_RECV,
                OP_RECV,
                OP_SEND,
                OP_SEND,
                OP_SEND,
                OP_READ,
                OP_READ,
                OP_READ,
                OP_WRITE,
                OP_WRITE,
                OP_WRITE,
                OP_WRITEV,
                OP_WRITEV,
                OP_CLOSE,
                OP_SENDFILE,
                OP_SENDFILE,
            ])
        };
        let mut s = Sqe {
            opcode,
            user_data,
            ..Sqe::ZERO
        };
        // Mostly well-formed for the opcode, sometimes anything goes.
        let sloppy = self.rng.pct(10);
        match opcode {
            OP_NOP => {}
            OP_ACCEPT => {
                s.slot = if self.rng.pct(60) { 0 } else { self.slot() };
                s.aux = if self.rng.pct(85) {
                    self.rng.below(self.max_files as u64) as u32
                } else {
                    self.rng.next() as u32
                };
                s.op_flags = self.rng.pick(&[0, 0, ACCEPT_NONBLOCK, 1 << 3]);
            }
            OP_RECV | OP_SEND => {
                s.slot = self.slot();
                s.addr = self.addr();
                s.len = self.len();
                let allowed = if opcode == OP_RECV {
                    RECV_FLAGS
                } else {
                    SEND_FLAGS
                };
                s.op_flags = match self.rng.below(100) {
                    0..=69 => 0,
                    70..=94 => self.rng.next() as u32 & allowed,
                    _ => self.rng.next() as u32,
                };
            }
            OP_READ | OP_WRITE => {
                s.slot = self.slot();
                s.addr = self.addr();
                s.len = self.len();
                s.off = self.off();
            }
            OP_SENDFILE => {
                s.slot = self.slot();
                s.aux = self.slot();
                s.len = self.len();
                s.off = self.off();
            }
            OP_WRITEV => {
                s.slot = self.slot();
                s.len = match self.rng.below(100) {
                    0..=74 => 1 + self.rng.below(8) as u32,
                    75..=79 => 1024,
                    80..=84 => 0,
                    85..=89 => 1025,
                    _ => self.rng.next() as u32,
                };
                s.addr = if self.rng.pct(85) {
                    self.iovecs(s.len)
                } else {
                    self.addr()
                };
                s.off = self.off();
            }
            OP_CLOSE => s.slot = self.rng.below(self.max_files as u64) as u32,
            // A recent request (maybe still parked), or garbage.
            OP_ASYNC_CANCEL => {
                s.addr = if self.rng.pct(80) {
                    user_data.saturating_sub(self.rng.below(32))
                } else {
                    self.rng.next()
                }
            }
            _ => {
                s.slot = self.slot();
                s.addr = self.addr();
                s.len = self.len();
            }
        }
        if sloppy {
            match self.rng.below(9) {
                // Always an undefined flag bit (4 and up), so the entry stays invalid.
                0 => s.flags = 4 + self.rng.below(252) as u8,
                1 => s.buf_group = 1 + self.rng.below(65535) as u16,
                2 => s.resv0 = 1 + self.rng.below(u32::MAX as u64 - 1) as u32,
                3 => s.resv[0] = 1 + self.rng.below(u64::MAX - 1),
                4 => s.resv[1] = 1 + self.rng.below(u64::MAX - 1),
                5 => s.aux = self.rng.next() as u32,
                6 => s.op_flags = self.rng.next() as u32,
                7 => s.off = self.rng.next(),
                _ => s.slot = self.slot(),
            }
        }
        s
    }
}

/// Writes `n` random words at random 8-byte places of the `len` bytes at `base`.
///
/// # Safety
///
/// `base..base + len` must be a live writable mapping that nothing in this process reads
/// as typed data (ring memory, which the kernel treats as untrusted).
pub unsafe fn scribble(base: *mut u8, len: usize, rng: &mut Rng, n: usize) {
    let words = len / 8;
    for _ in 0..n {
        let i = rng.below(words as u64) as usize;
        // SAFETY: `i` < words, inside the mapping (the caller's promise); volatile
        // because the kernel's workers read it concurrently.
        unsafe { (base as *mut u64).add(i).write_volatile(rng.next()) };
    }
}
