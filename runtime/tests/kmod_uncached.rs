//! Uncached file reads through fastio.ko: a 64 MiB file on the guest's ext4 scratch
//! disk (`FASTIO_SCRATCH`), written with a known pattern, synced and dropped from the
//! page cache, is READ through the ring and verified byte for byte. The context's
//! counters (`FASTIO_GET_STATS`) must show the READ went to the blocking workqueue
//! (`offloaded`), and while it is in flight a NOP flood on the other lane keeps
//! completing: the polling workers never block on the disk. Then the file is read again,
//! uncached, as 64 READs of 1 MiB in flight at once: every one must return its full
//! 1 MiB with the right bytes (a READ of a regular file is short only at end of file),
//! and so must a 1 MiB READ of which only the first page is cached (the module finishes
//! the rest in the workqueue). Last, READs across and at the end of the file.
//!
//! Runs where /dev/fastio exists, as root, with `FASTIO_SCRATCH` naming an ext4 mount
//! (inside the VM: `make vm-test`); elsewhere it prints SKIP and the reason.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fastio::uapi::{Sqe, Stats};
use fastio::{BackendKind, Config, Proactor, Slot};

mod common;

const FILE_LEN: usize = 64 << 20;
const CHUNK: usize = 1 << 20;
const SEED: u64 = 0x5eed_f00d_cafe_0001;
const READ_UD: u64 = 1 << 40;
/// Generous limit for any one phase (TCG is slow; a 64 MiB read takes about a second).
const PHASE_LIMIT: Duration = Duration::from_secs(120);

/// The 8 bytes at word index `i` of the file.
fn word(i: u64) -> [u8; 8] {
    let mut z = (i ^ SEED).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).to_le_bytes()
}

/// Fills `out` with the file's bytes from `offset` (a multiple of 8).
fn pattern(offset: usize, out: &mut [u8]) {
    for (k, w) in out.chunks_mut(8).enumerate() {
        let b = word((offset / 8 + k) as u64);
        w.copy_from_slice(&b[..w.len()]);
    }
}

/// The first offset where `got` differs from the file's bytes at `offset`.
fn first_mismatch(offset: usize, got: &[u8]) -> Option<usize> {
    let mut want = vec![0u8; CHUNK];
    for (c, part) in got.chunks(CHUNK).enumerate() {
        let at = offset + c * CHUNK;
        pattern(at, &mut want[..part.len()]);
        if let Some(i) = part.iter().zip(&want).position(|(a, b)| a != b) {
            return Some(at + i);
        }
    }
    None
}

/// The scratch ext4 directory, or why the test is skipped.
fn scratch_dir(test: &str) -> Option<PathBuf> {
    let Ok(dir) = std::env::var("FASTIO_SCRATCH") else {
        println!(
            "SKIP {test}: FASTIO_SCRATCH is not set (an ext4 scratch mount, as make vm-test \
             provides: tmpfs and 9p cannot show uncached reads)"
        );
        return None;
    };
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == dir && f[2] == "ext4"
    }) {
        println!("SKIP {test}: FASTIO_SCRATCH={dir} is not an ext4 mount point");
        return None;
    }
    Some(PathBuf::from(dir))
}

/// Writes the pattern file and makes it durable.
fn write_file(path: &Path) {
    let mut f = File::create(path).unwrap();
    let mut buf = vec![0u8; CHUNK];
    for off in (0..FILE_LEN).step_by(CHUNK) {
        pattern(off, &mut buf);
        f.write_all(&buf).unwrap();
    }
    f.sync_all().unwrap();
}

/// Pages of `file` (of `len` bytes) in the page cache, by mincore on a mapping.
fn resident_pages(file: &File, len: usize) -> usize {
    let map = memmap2::MmapOptions::new()
        .len(len)
        .map_raw_read_only(file)
        .unwrap();
    let pages = len.div_ceil(4096);
    let mut vec = vec![0u8; pages];
    // SAFETY: `map` is a live mapping of `len` bytes; `vec` has one byte per page.
    let r = unsafe { libc::mincore(map.as_mut_ptr().cast(), len, vec.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|&&b| b & 1 != 0).count()
}

/// Drops the file from the page cache and checks that it is gone.
fn make_uncached(file: &File) {
    common::drop_caches();
    let resident = resident_pages(file, FILE_LEN);
    assert!(
        resident <= FILE_LEN / 4096 / 64,
        "{resident} of {} pages still cached after drop_caches",
        FILE_LEN / 4096
    );
}

fn stats(p: &Proactor) -> Stats {
    p.kernel_stats()
        .expect("the kmod backend has kernel stats")
        .expect("FASTIO_GET_STATS")
}

fn config() -> Config {
    Config {
        backend: BackendKind::Kmod,
        max_ker_worker: 2,
        sq_entries: 128,
        cq_entries: 128,
        max_files: 8,
        idle_ms: 50,
        ..Config::default()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
fn uncached_read_goes_to_the_workqueue_while_nops_flow() {
    let test = "kmod_uncached::uncached_read";
    if !common::have_module(test) || !common::have_root(test) {
        return;
    }
    let Some(dir) = scratch_dir(test) else {
        return;
    };
    let path = dir.join(format!("uncached-{}.bin", std::process::id()));
    let t = Instant::now();
    write_file(&path);
    println!(
        "wrote {} MiB of pattern to {} in {:.2} s",
        FILE_LEN >> 20,
        path.display(),
        t.elapsed().as_secs_f64()
    );
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .unwrap();
    // Sanity: the plain file system returns the pattern.
    let mut head = [0u8; 4096];
    (&file).read_exact(&mut head).unwrap();
    assert_eq!(first_mismatch(0, &head), None, "the file as written");

    let mut p = Proactor::new(&config()).expect("kmod proactor");
    assert_eq!(p.backend().kind, BackendKind::Kmod);
    let slot = p.register(&file).unwrap();
    let read_lane = slot.index() % p.lanes();
    let flood_lane = (read_lane + 1) % p.lanes();
    make_uncached(&file);

    // Phase 1: one 64 MiB READ; a NOP flood on the other lane meanwhile.
    let before = stats(&p);
    let t0 = Instant::now();
    p.read(slot, vec![0u8; FILE_LEN], 0..FILE_LEN, Some(0), READ_UD)
        .unwrap();
    p.submit().unwrap();
    let mut read: Option<(Duration, fastio::Completion)> = None;
    let mut flood_lat = Vec::new();
    let mut own_lane_nops = 0u32;
    let mut seq = 0u64;
    while read.is_none() {
        assert!(t0.elapsed() < PHASE_LIMIT, "64 MiB READ not done in time");
        seq += 1;
        // Every 16th NOP goes to the READ's own lane: its polling worker is free too.
        let lane = if seq.is_multiple_of(16) {
            read_lane
        } else {
            flood_lane
        };
        let sent = Instant::now();
        let sqe = Sqe {
            user_data: seq,
            ..Sqe::ZERO
        };
        // SAFETY: a NOP names no memory.
        unsafe { p.submit_raw(lane, sqe) }.unwrap();
        let mut nop_back = false;
        while !nop_back {
            p.wait(1, Some(Duration::from_secs(10))).unwrap();
            assert!(sent.elapsed() < PHASE_LIMIT, "NOP {seq} never completed");
            let done: Vec<_> = p.completions().collect();
            for c in done {
                if c.user_data == READ_UD {
                    read = Some((t0.elapsed(), c));
                } else {
                    assert_eq!((c.user_data, c.result), (seq, 0), "NOP completion");
                    nop_back = true;
                    if read.is_none() {
                        if lane == flood_lane {
                            flood_lat.push(sent.elapsed());
                        } else {
                            own_lane_nops += 1;
                        }
                    }
                }
            }
        }
    }
    let after = stats(&p);
    let (took, c) = read.unwrap();
    let buf = c.buf.expect("the READ's buffer");
    assert_eq!(c.result, FILE_LEN as i32, "64 MiB READ result");
    assert_eq!(first_mismatch(0, &buf), None, "bytes of the 64 MiB READ");
    drop(buf);
    flood_lat.sort();
    let (p50, p99) = (
        common::percentile(&flood_lat, 0.5),
        common::percentile(&flood_lat, 0.99),
    );
    let max = flood_lat.last().copied().unwrap_or_default();
    println!(
        "uncached READ of {} MiB: {:.0} ms ({:.0} MiB/s); stats ops {}->{} offloaded {}->{} \
         parked {}->{}",
        FILE_LEN >> 20,
        ms(took),
        (FILE_LEN >> 20) as f64 / took.as_secs_f64(),
        before.ops,
        after.ops,
        before.offloaded,
        after.offloaded,
        before.parked,
        after.parked
    );
    println!(
        "NOPs on lane {flood_lane} during the READ: {} ({:.0}/s), round trip p50 {:.3} ms \
         p99 {:.3} ms max {:.3} ms; NOPs on the READ's lane {read_lane}: {own_lane_nops}",
        flood_lat.len(),
        flood_lat.len() as f64 / took.as_secs_f64(),
        ms(p50),
        ms(p99),
        ms(max)
    );
    assert!(
        after.offloaded > before.offloaded,
        "the uncached READ did not go through the workqueue (offloaded {} -> {})",
        before.offloaded,
        after.offloaded
    );
    assert_eq!(after.pending, 0, "requests still pending in the kernel");
    assert!(
        flood_lat.len() >= 10,
        "only {} NOPs completed on lane {flood_lane} during a {:.0} ms READ: a polling \
         worker is blocked",
        flood_lat.len(),
        ms(took)
    );
    assert!(
        p99 < took / 2,
        "NOP p99 {:.3} ms is not well under the READ's {:.0} ms",
        ms(p99),
        ms(took)
    );

    // Phase 2: the same file, uncached again, as 64 READs of 1 MiB in flight at once.
    make_uncached(&file);
    let before = stats(&p);
    let t0 = Instant::now();
    let chunks = FILE_LEN / CHUNK;
    for i in 0..chunks {
        let off = (i * CHUNK) as u64;
        p.read(slot, vec![0u8; CHUNK], 0..CHUNK, Some(off), i as u64)
            .unwrap_or_else(|r| panic!("queueing READ {i}: {r}"));
    }
    let mut seen = vec![false; chunks];
    let mut got = 0;
    while got < chunks {
        assert!(
            t0.elapsed() < PHASE_LIMIT,
            "{got}/{chunks} 1 MiB READs done"
        );
        p.wait(1, Some(Duration::from_secs(10))).unwrap();
        let done: Vec<_> = p.completions().collect();
        for c in done {
            let i = c.user_data as usize;
            assert!(
                i < chunks && !seen[i],
                "unexpected completion {}",
                c.user_data
            );
            seen[i] = true;
            got += 1;
            assert_eq!(
                c.result, CHUNK as i32,
                "READ of 1 MiB at offset {} MiB (a regular file is short only at EOF)",
                i
            );
            let buf = c.buf.unwrap();
            assert_eq!(first_mismatch(i * CHUNK, &buf), None, "bytes of chunk {i}");
        }
    }
    let took = t0.elapsed();
    let after = stats(&p);
    println!(
        "uncached READ as {chunks} x 1 MiB in flight: {:.0} ms ({:.0} MiB/s); offloaded {}",
        ms(took),
        (FILE_LEN >> 20) as f64 / took.as_secs_f64(),
        after.offloaded - before.offloaded
    );
    assert!(after.offloaded > before.offloaded, "no chunk was offloaded");

    // Phase 3: only the first page of a 1 MiB range cached (no readahead on this file):
    // the non-blocking attempt copies that page and stops; the READ must still return
    // the whole 1 MiB (the rest done by the workqueue).
    // SAFETY: posix_fadvise on our own descriptor (the slot shares its open file).
    let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(r, 0, "posix_fadvise(RANDOM)");
    make_uncached(&file);
    let mut page = [0u8; 4096];
    file.read_exact_at(&mut page, 0).unwrap();
    let cached = resident_pages(&file, CHUNK);
    let before = stats(&p);
    p.read(slot, vec![0u8; CHUNK], 0..CHUNK, Some(0), 3)
        .unwrap();
    assert_eq!(p.wait(1, Some(PHASE_LIMIT)).unwrap(), 1);
    let c = p.next_completion().unwrap();
    let after = stats(&p);
    println!(
        "READ of 1 MiB with {cached} page(s) of it cached: result {}, offloaded +{}",
        c.result,
        after.offloaded - before.offloaded
    );
    assert_eq!(c.result, CHUNK as i32, "READ of a partly cached range");
    assert_eq!(first_mismatch(0, &c.buf.unwrap()), None, "bytes of it");
    check_eof(&mut p, slot);
    drop(p);
    drop(file);
    std::fs::remove_file(&path).unwrap();
}

/// A READ that crosses the end of the file returns what is there; one past it, 0.
fn check_eof(p: &mut Proactor, slot: Slot) {
    let tail = 5000;
    let off = (FILE_LEN - tail) as u64;
    p.read(slot, vec![0u8; CHUNK], 0..CHUNK, Some(off), 1)
        .unwrap();
    p.read(slot, vec![0u8; 16], 0..16, Some(FILE_LEN as u64), 2)
        .unwrap();
    assert_eq!(p.wait(2, Some(PHASE_LIMIT)).unwrap(), 2);
    let mut done: Vec<_> = p.completions().collect();
    done.sort_by_key(|c| c.user_data);
    assert_eq!(done[0].result, tail as i32, "READ across EOF");
    let buf = done[0].buf.as_ref().unwrap();
    // The tail starts at a multiple of 8.
    assert_eq!(first_mismatch(FILE_LEN - tail, &buf[..tail]), None);
    assert_eq!(done[1].result, 0, "READ at EOF");
}
