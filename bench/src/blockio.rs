//! Pieces of `blockio_bench` that its tests check on their own: the block contents it
//! writes and verifies, its offset generator, 4 KiB-aligned owned buffers for O_DIRECT,
//! and the CPU time of the process.
//!
//! Every block the benchmark writes is self-describing: its first 8 bytes are its block
//! index, the next 8 a tag (the `--tag` of the run that wrote it; 0 when the file was
//! laid out), and every later 8-byte word a function of the tag, the index and the word's
//! place. A block read back can therefore be checked byte for byte without knowing which
//! run wrote it last ([`check_block`]).

use std::ops::Range;
use std::time::Duration;

/// The block size of every transfer (and the alignment of buffers and offsets).
pub const BLOCK: usize = 4096;

/// A 64-bit mix (splitmix64's finalizer): consecutive inputs give unrelated outputs.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Word `i` (from 2) of block `index` written with `tag`.
fn word(tag: u64, index: u64, i: usize) -> u64 {
    mix(tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ mix(index) ^ (i as u64))
}

/// Fills `block` (one [`BLOCK`]) with the contents of block `index` written with `tag`.
/// With `full` false only the 16-byte header is written (the rest is left as it is):
/// what the benchmark does when it is not asked to verify, so that it spends its time on
/// I/O as fio does.
pub fn fill_block(block: &mut [u8], index: u64, tag: u64, full: bool) {
    assert_eq!(block.len(), BLOCK, "fill_block takes one block");
    block[..8].copy_from_slice(&index.to_le_bytes());
    block[8..16].copy_from_slice(&tag.to_le_bytes());
    if full {
        for (i, w) in block.chunks_exact_mut(8).enumerate().skip(2) {
            w.copy_from_slice(&word(tag, index, i).to_le_bytes());
        }
    }
}

/// Checks that `block` holds block `index` as [`fill_block`] (full) wrote it with the tag
/// found in its header; returns that tag, or what is wrong.
pub fn check_block(block: &[u8], index: u64) -> Result<u64, String> {
    if block.len() != BLOCK {
        return Err(format!("block {index}: {} bytes, not {BLOCK}", block.len()));
    }
    let head = |r: Range<usize>| u64::from_le_bytes(block[r].try_into().expect("8 bytes"));
    let (found, tag) = (head(0..8), head(8..16));
    if found != index {
        return Err(format!("block {index}: header says block {found}"));
    }
    for (i, w) in block.chunks_exact(8).enumerate().skip(2) {
        let want = word(tag, index, i);
        let got = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        if got != want {
            return Err(format!(
                "block {index} (tag {tag}): word {i} is {got:#x}, expected {want:#x}"
            ));
        }
    }
    Ok(tag)
}

/// Uniform random block indices below a bound (xorshift64*; a fixed seed gives the same
/// sequence).
#[derive(Debug, Clone)]
pub struct Offsets {
    state: u64,
    blocks: u64,
}

impl Offsets {
    /// Indices in `0..blocks` (`blocks` > 0) from `seed`.
    pub fn new(seed: u64, blocks: u64) -> Self {
        assert!(blocks > 0, "no blocks to choose from");
        Self {
            state: mix(seed) | 1,
            blocks,
        }
    }

    /// The next block index.
    pub fn next_block(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let r = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        // Multiply-shift: uniform enough for 2^64 / blocks >> 1, no division.
        ((u128::from(r) * u128::from(self.blocks)) >> 64) as u64
    }
}

/// An owned buffer (the proactor takes `Vec<u8>`s) with one [`BLOCK`] at a 4 KiB-aligned
/// address inside it: the vector is one block longer than needed and [`AlignedBlock::range`]
/// says where the aligned block lies. A `Vec<u8>` cannot itself be allocated with a larger
/// alignment and freed as a `Vec<u8>`, so the alignment is found inside it.
#[derive(Debug)]
pub struct AlignedBlock {
    buf: Vec<u8>,
    start: usize,
}

impl AlignedBlock {
    /// A zeroed buffer.
    pub fn new() -> Self {
        Self::from_vec(vec![0; 2 * BLOCK])
    }

    /// Takes back a buffer made by [`AlignedBlock::into_vec`] (the heap block has not
    /// moved, so the aligned range is the same).
    pub fn from_vec(buf: Vec<u8>) -> Self {
        assert!(
            buf.len() >= 2 * BLOCK,
            "buffer too short to hold an aligned block"
        );
        let start = (BLOCK - buf.as_ptr() as usize % BLOCK) % BLOCK;
        Self { buf, start }
    }

    /// Where the aligned block lies in the vector.
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + BLOCK
    }

    /// The aligned block.
    pub fn block(&self) -> &[u8] {
        &self.buf[self.range()]
    }

    /// The aligned block, writable.
    pub fn block_mut(&mut self) -> &mut [u8] {
        let r = self.range();
        &mut self.buf[r]
    }

    /// The vector, to hand to a READ or WRITE of [`AlignedBlock::range`].
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

impl Default for AlignedBlock {
    fn default() -> Self {
        Self::new()
    }
}

/// User plus system CPU time of this process, all its threads included (`getrusage`
/// `RUSAGE_SELF`): the proactor's lane and helper threads, io_uring's SQPOLL thread and
/// io-wq workers are threads of the process.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage writes a plain struct; all-zero is a valid one.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to an rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Thread names of the polling threads (kmod lanes, threads workers, io_uring's SQPOLL)
/// and of the blocking-work threads (kmod helpers, io_uring's io-wq workers), as
/// scripts/bench/procfs.py sorts them.
const LANE_PREFIXES: [&str; 3] = ["fastio-lane-", "fastio-thr-", "iou-sqp-"];
const HELPER_PREFIXES: [&str; 2] = ["fastio-help-", "iou-wrk-"];

/// CPU ticks (`utime + stime` of `/proc/self/task/*/stat`) per thread id, with whether
/// the thread is a lane (polling) thread, a helper, or neither.
#[derive(Debug, Clone, Default)]
pub struct ThreadTicks(Vec<(u32, Role, u64)>);

/// What a thread of the process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Polls rings (kmod lane, threads worker, SQPOLL).
    Lane,
    /// Runs blocking work (kmod helper, io-wq worker).
    Helper,
    /// Anything else: the submitting thread.
    Other,
}

impl ThreadTicks {
    /// The ticks of every thread of this process now (threads that vanish while the
    /// directory is read are left out).
    pub fn now() -> Self {
        let mut v = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return Self(v);
        };
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // "tid (comm) state ...": comm may hold spaces and parentheses.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            // Fields 14 and 15 of stat(5) are the 12th and 13th after the comm.
            let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            let role = if LANE_PREFIXES.iter().any(|p| comm.starts_with(p)) {
                Role::Lane
            } else if HELPER_PREFIXES.iter().any(|p| comm.starts_with(p)) {
                Role::Helper
            } else {
                Role::Other
            };
            v.push((tid, role, ticks(11) + ticks(12)));
        }
        Self(v)
    }

    /// CPU time of the threads of `role` since `before` (a thread started in between
    /// counts from zero; one that ended in between is left out).
    pub fn since(&self, before: &ThreadTicks, role: Role) -> Duration {
        let hz = clock_ticks_per_sec();
        let ticks: u64 = self
            .0
            .iter()
            .filter(|(_, r, _)| *r == role)
            .map(|(tid, _, t)| {
                let b = before
                    .0
                    .iter()
                    .find(|(bt, _, _)| bt == tid)
                    .map_or(0, |x| x.2);
                t.saturating_sub(b)
            })
            .sum();
        Duration::from_secs_f64(ticks as f64 / hz as f64)
    }
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_check_and_catch_changes() {
        let mut a = AlignedBlock::new();
        assert_eq!(a.block().as_ptr() as usize % BLOCK, 0);
        fill_block(a.block_mut(), 42, 7, true);
        assert_eq!(check_block(a.block(), 42), Ok(7));
        assert!(check_block(a.block(), 43).is_err(), "wrong place");
        let mut b = a.block().to_vec();
        b[4000] ^= 1;
        assert!(check_block(&b, 42).unwrap_err().contains("word 500"));
        let mut c = a.block().to_vec();
        c[8] = 8; // another tag, same body
        assert!(check_block(&c, 42).is_err());
        // Header only: the body stays as it was.
        fill_block(a.block_mut(), 42, 9, false);
        assert!(check_block(a.block(), 42).is_err());
    }

    #[test]
    fn aligned_range_survives_into_vec() {
        let a = AlignedBlock::new();
        let (r, p) = (a.range(), a.block().as_ptr());
        let b = AlignedBlock::from_vec(a.into_vec());
        assert_eq!((b.range(), b.block().as_ptr()), (r, p));
    }

    #[test]
    fn offsets_cover_the_range_evenly() {
        let mut o = Offsets::new(1, 16);
        let mut seen = [0u32; 16];
        for _ in 0..16_000 {
            seen[o.next_block() as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        let (mut x, mut y) = (Offsets::new(5, 1 << 20), Offsets::new(5, 1 << 20));
        assert!((0..100).all(|_| x.next_block() == y.next_block()));
    }

    #[test]
    fn thread_ticks_see_a_busy_helper() {
        let before = ThreadTicks::now();
        let t = std::thread::Builder::new()
            .name("fastio-help-9".into())
            .spawn(|| {
                let (mut z, t) = (0u64, std::time::Instant::now());
                while t.elapsed() < Duration::from_millis(300) {
                    z = mix(z);
                }
                // Still running when sampled below: sample from inside.
                (z, ThreadTicks::now())
            })
            .unwrap();
        let (_, after) = t.join().unwrap();
        assert!(after.since(&before, Role::Helper) >= Duration::from_millis(100));
        assert!(after.since(&before, Role::Lane).is_zero());
    }

    #[test]
    fn cpu_time_grows() {
        let a = process_cpu();
        let mut z = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(50) {
            z = mix(z);
        }
        assert!(z != 1);
        assert!(process_cpu() > a);
    }
}
