//! Random SQEs against fastio.ko, through the raw ring (no proactor in between): for
//! 30 s (`FASTIO_FUZZ_SECS`), batches of random requests over registered files: a TCP
//! listener, connected TCP sockets, both ends of pipes, regular files on tmpfs and ext4,
//! a read-only file and /dev/zero. Opcodes valid and not, slots valid, empty and out of
//! range, lengths 0, small and huge, random offsets, reserved fields and flags set,
//! buffer addresses inside a scratch area fenced by PROT_NONE guard pages, and invalid
//! ones (0, unmapped, kernel addresses). Meanwhile the test keeps the peers of the
//! sockets and pipes fed and drained, connects new clients for ACCEPTs, truncates the
//! files, and re-registers closed slots.
//!
//! Checked: every SQE gets exactly one CQE (unique user_data), and its result agrees
//! with `fastio_uapi::decode` (refused SQEs complete with the exact errno, NOPs with 0,
//! transfers never exceed the length); no request is left pending in the kernel; and
//! after everything is closed, the kernel's slab memory is back near its baseline.
//! `make vm-test` then checks that the module unloads and that the kernel log has no
//! WARNING/BUG/Oops (slub_debug=FZPU catches use-after-free and overwrites).
//!
//! `FASTIO_FUZZ_SEED` replays a run (the seed is printed). Runs where /dev/fastio exists,
//! as root (inside the VM: `make vm-test`); elsewhere it prints SKIP and the reason.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fastio::uapi::{
    IoVec, SetupParams, Sqe, FASTIO_INSTALL_FD, FASTIO_UNREGISTER_FILE, OFF_CURRENT, OP_CLOSE,
    OP_READ, OP_WRITEV,
};

mod common;
#[path = "common/kmod.rs"]
mod kmod;
#[path = "common/random_sqes.rs"]
mod random_sqes;

use kmod::Ctx;
use random_sqes::{check_result, op_name, Fenced, Gen, Rng};

const LANES: u32 = 2;
const SQ_ENTRIES: u32 = 64;
const CQ_ENTRIES: u32 = 128;
const MAX_FILES: u32 = 16;
const SCRATCH: usize = 256 << 10;
const IOV_AREA: usize = 32 << 10;
/// Longest time without any completion while requests are in flight.
const STALL: Duration = Duration::from_secs(20);
/// Slab growth allowed after everything is closed.
const SLAB_TOLERANCE_KIB: u64 = 1024;

/// The fuzzed context: LANES lanes of SQ_ENTRIES/CQ_ENTRIES, MAX_FILES slots, idle
/// 2 ms, its lane and helper threads running.
fn open_context() -> Ctx {
    Ctx::started(SetupParams {
        idle_ms: 2,
        max_files: MAX_FILES,
        ..kmod::params(LANES, SQ_ENTRIES, CQ_ENTRIES)
    })
}

/// Sets `SO_LINGER {on, 0}`: close sends RST and leaves no TIME_WAIT socket behind.
fn linger0(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a live linger struct of the right size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
}

/// A pipe (read end, write end); both blocking.
fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors that we own from here on.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: as above.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// Makes the test's own end of a pipe non-blocking.
fn nonblocking(f: &File) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        assert_eq!(
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK),
            0
        );
    }
}

/// The files of the run: what goes into the base slots, and the test's ends of them.
struct Files {
    /// (slot, descriptor) re-registered when a slot is found empty.
    base: Vec<(u32, OwnedFd)>,
    clients: Vec<TcpStream>,
    listener_addr: std::net::SocketAddr,
    /// Written by the test, read through the ring (slot 5).
    pipe_in: File,
    /// Written through the ring (slot 6), drained by the test.
    pipe_out: File,
    /// Regular files to truncate now and then.
    regular: Vec<File>,
    paths: Vec<PathBuf>,
}

fn files() -> Files {
    let mut base: Vec<(u32, OwnedFd)> = Vec::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let listener_addr = listener.local_addr().unwrap();
    base.push((0, listener.into()));
    let helper = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut clients = Vec::new();
    for slot in 1..=4 {
        let c = TcpStream::connect(helper.local_addr().unwrap()).unwrap();
        let (s, _) = helper.accept().unwrap();
        c.set_nonblocking(true).unwrap();
        linger0(&c);
        clients.push(c);
        base.push((slot, s.into()));
    }
    let (rd_in, pipe_in) = pipe();
    let (pipe_out, wr_out) = pipe();
    nonblocking(&pipe_in);
    nonblocking(&pipe_out);
    base.push((5, rd_in.into()));
    base.push((6, wr_out.into()));
    let dirs = [
        PathBuf::from("/tmp"),
        std::env::var("FASTIO_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from("/tmp")),
    ];
    let mut regular = Vec::new();
    let mut paths = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let path = dir.join(format!("fastio-fuzz-{}-{i}", std::process::id()));
        let f = common::rw_file(&path);
        base.push((7 + i as u32, f.try_clone().unwrap().into()));
        regular.push(f);
        paths.push(path);
    }
    let ro = File::open(&paths[0]).unwrap();
    base.push((9, ro.into()));
    base.push((10, File::open("/dev/zero").unwrap().into()));
    Files {
        base,
        clients,
        listener_addr,
        pipe_in,
        pipe_out,
        regular,
        paths,
    }
}

impl Files {
    /// Drains what the ring sent, feeds what the ring may receive.
    fn pump(&mut self, rng: &mut Rng) {
        let mut sink = [0u8; 64 << 10];
        let feed = [0x5au8; 512];
        let mut dead = Vec::new();
        for (i, c) in self.clients.iter_mut().enumerate() {
            loop {
                match c.read(&mut sink) {
                    Ok(0) => {
                        dead.push(i);
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        dead.push(i);
                        break;
                    }
                }
            }
            if rng.pct(50) {
                let n = 1 + rng.below(feed.len() as u64) as usize;
                let _ = c.write(&feed[..n]);
            }
        }
        // Peers the ring closed: forget them (keep the four base connections' peers
        // even then, so their indices stay put; they are just no longer fed).
        for i in dead.into_iter().rev() {
            if i >= 4 {
                self.clients.remove(i);
            }
        }
        while matches!(self.pipe_out.read(&mut sink), Ok(n) if n > 0) {}
        if rng.pct(50) {
            let _ = self.pipe_in.write(&feed[..1 + rng.below(256) as usize]);
        }
    }

    /// A new connection for the ring's ACCEPTs (at most 24 kept; older ones are reset).
    fn connect(&mut self) {
        if let Ok(c) = TcpStream::connect(self.listener_addr) {
            c.set_nonblocking(true).unwrap();
            linger0(&c);
            self.clients.push(c);
        }
        if self.clients.len() > 28 {
            self.clients.remove(4);
        }
    }
}

/// Every SQE handed to the rings until its CQE comes back, and counts for the summary.
struct Ledger {
    /// user_data -> (lane, SQE) of what is in flight.
    outstanding: HashMap<u64, (u32, Sqe)>,
    inflight: [u32; LANES as usize],
    next_ud: u64,
    submitted: u64,
    completed: u64,
    by_op: BTreeMap<String, (u64, u64)>,
    by_result: BTreeMap<i32, u64>,
}

impl Ledger {
    fn new() -> Ledger {
        Ledger {
            outstanding: HashMap::new(),
            inflight: [0; LANES as usize],
            next_ud: 1,
            submitted: 0,
            completed: 0,
            by_op: BTreeMap::new(),
            by_result: BTreeMap::new(),
        }
    }

    /// Stages the SQE `make` builds for the next user_data on `lane`; false (nothing
    /// staged) when the lane has as many requests in flight as its CQ holds, or its SQ
    /// is full.
    fn push(&mut self, ctx: &mut Ctx, lane: u32, make: impl FnOnce(u64) -> Sqe) -> bool {
        if self.inflight[lane as usize] >= CQ_ENTRIES {
            return false;
        }
        let sqe = make(self.next_ud);
        if !ctx.push(lane, &sqe) {
            return false;
        }
        self.outstanding.insert(self.next_ud, (lane, sqe));
        self.next_ud += 1;
        self.inflight[lane as usize] += 1;
        self.submitted += 1;
        self.by_op.entry(op_name(sqe.opcode)).or_default().0 += 1;
        true
    }

    /// Publishes the staged SQEs, waking the workers that sleep.
    fn publish(&self, ctx: &mut Ctx) {
        for lane in 0..LANES {
            ctx.publish(lane);
        }
    }

    /// Reaps every lane, checking each CQE; returns how many came.
    fn reap(&mut self, ctx: &mut Ctx) -> u32 {
        let mut n = 0;
        for lane in 0..LANES {
            for cqe in ctx.reap(lane) {
                let (l, sqe) = self.outstanding.remove(&cqe.user_data).unwrap_or_else(|| {
                    panic!(
                        "CQE for unknown or already completed user_data {:#x} (res {}) \
                         on lane {lane}",
                        cqe.user_data, cqe.res
                    )
                });
                assert_eq!(l, lane, "CQE on another lane than its SQE");
                self.inflight[lane as usize] -= 1;
                check_result(&sqe, cqe.res, MAX_FILES);
                self.completed += 1;
                self.by_op.entry(op_name(sqe.opcode)).or_default().1 += 1;
                *self.by_result.entry(cqe.res.min(1)).or_default() += 1;
                n += 1;
            }
        }
        n
    }
}

fn fuzz_secs() -> u64 {
    std::env::var("FASTIO_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

fn slab() -> (u64, u64) {
    (
        common::meminfo_kib("Slab"),
        common::meminfo_kib("SUnreclaim"),
    )
}

/// Lets deferred frees (RCU, delayed fput, workqueues) run, drops caches, reads Slab.
fn settled_slab() -> (u64, u64) {
    std::thread::sleep(Duration::from_millis(1500));
    common::drop_caches();
    std::thread::sleep(Duration::from_millis(500));
    slab()
}

#[test]
fn random_sqes_each_complete_once_and_leave_nothing_behind() {
    let test = "kmod_fuzz::random_sqes";
    if !common::have_module(test) || !common::have_root(test) {
        return;
    }
    let seed = random_sqes::seed_from_env("FASTIO_FUZZ_SEED");
    let secs = fuzz_secs();
    println!("kmod_fuzz: seed {seed} (FASTIO_FUZZ_SEED replays), {secs} s");
    let me = std::process::id();
    let (slab0, unrecl0) = settled_slab();

    let scratch = Fenced::new(SCRATCH);
    let iov = Fenced::new(IOV_AREA);
    let mut files = files();
    let mut ctx = open_context();
    for (slot, fd) in &files.base {
        ctx.register(fd.as_raw_fd(), *slot)
            .unwrap_or_else(|e| panic!("register slot {slot}: errno {e}"));
    }
    let mut gen = Gen::new(seed, &scratch, SCRATCH, &iov, IOV_AREA, MAX_FILES);
    let mut book = Ledger::new();
    let t0 = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_connect = Instant::now();
    let mut iteration = 0u64;
    let mut ioctl_calls = 0u64;
    let end = Duration::from_secs(secs);

    while t0.elapsed() < end {
        iteration += 1;
        // A batch of random SQEs on random lanes, within each lane's CQ size.
        for _ in 0..1 + gen.rng.below(16) {
            let lane = gen.rng.below(LANES as u64) as u32;
            book.push(&mut ctx, lane, |ud| gen.sqe(ud));
        }
        book.publish(&mut ctx);
        let got = book.reap(&mut ctx);
        if got > 0 {
            last_progress = Instant::now();
        } else if !book.outstanding.is_empty() {
            assert!(
                last_progress.elapsed() < STALL,
                "no completion for {STALL:?} with {} in flight: {:?}",
                book.outstanding.len(),
                book.outstanding.values().take(8).collect::<Vec<_>>()
            );
            if book.inflight.iter().all(|&n| n >= CQ_ENTRIES / 2) {
                let _ = kmod::getevents(ctx.fd(), 1, Duration::from_millis(2));
            }
        }
        files.pump(&mut gen.rng);
        if last_connect.elapsed() > Duration::from_millis(100) {
            files.connect();
            last_connect = Instant::now();
        }
        if iteration.is_multiple_of(64) {
            for f in &files.regular {
                f.set_len(0).unwrap();
            }
        }
        if iteration.is_multiple_of(16) {
            // Refill base slots the fuzz CLOSEd (EBUSY: still or again in use).
            for (slot, fd) in &files.base {
                let _ = ctx.register(fd.as_raw_fd(), *slot);
            }
            // The slot ioctls, on random slots, while requests run.
            let slot = gen.rng.below(MAX_FILES as u64 + 2) as u32;
            if let Ok(fd) = kmod::slot_ioctl(ctx.fd(), FASTIO_INSTALL_FD, slot, 0) {
                // SAFETY: INSTALL_FD returned a new descriptor of ours.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            if slot >= 11 && gen.rng.pct(30) {
                let _ = kmod::slot_ioctl(ctx.fd(), FASTIO_UNREGISTER_FILE, slot, 0);
            }
            let st = ctx.stats();
            assert!(st.pending <= book.outstanding.len() as u64, "{st:?}");
            ioctl_calls += 3;
        }
    }
    let fuzz_time = t0.elapsed();

    // Wind down: CLOSE every slot (cancels what waits), keep pumping until every SQE
    // has its CQE.
    let mut to_close: Vec<u32> = (0..MAX_FILES).collect();
    let t1 = Instant::now();
    while !book.outstanding.is_empty() || !to_close.is_empty() {
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "{} requests never completed after CLOSE of every slot: {:?}",
            book.outstanding.len(),
            book.outstanding.values().take(8).collect::<Vec<_>>()
        );
        while let Some(&slot) = to_close.last() {
            let close = |user_data| Sqe {
                opcode: OP_CLOSE,
                slot,
                user_data,
                ..Sqe::ZERO
            };
            if !book.push(&mut ctx, slot % LANES, close) {
                break;
            }
            to_close.pop();
        }
        book.publish(&mut ctx);
        if book.reap(&mut ctx) == 0 {
            let _ = kmod::getevents(ctx.fd(), 1, Duration::from_millis(10));
        }
        files.pump(&mut gen.rng);
    }
    let st = ctx.stats();
    println!(
        "kmod_fuzz: {} SQEs in {:.1} s ({:.0}/s), {} CQEs, {} slot ioctls; kernel stats {st:?}",
        book.submitted,
        fuzz_time.as_secs_f64(),
        book.submitted as f64 / fuzz_time.as_secs_f64(),
        book.completed,
        ioctl_calls
    );
    println!(
        "kmod_fuzz: per opcode (submitted, completed): {:?}",
        book.by_op
    );
    let results: Vec<String> = book
        .by_result
        .iter()
        .map(|(r, n)| match r {
            1 => format!(">0:{n}"),
            r => format!("{r}:{n}"),
        })
        .collect();
    println!("kmod_fuzz: results {}", results.join(" "));
    assert_eq!(book.submitted, book.completed, "every SQE gets one CQE");
    assert_eq!(st.pending, 0, "requests left pending in the kernel");
    assert!(book.submitted > 1000, "too few SQEs for a fuzz run");

    drop(ctx);
    let paths = files.paths.clone();
    drop(files);
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
    drop(scratch);
    drop(iov);
    common::wait_workers_gone(me, Duration::from_secs(10));
    let (slab1, unrecl1) = settled_slab();
    println!(
        "kmod_fuzz: Slab {slab0} KiB -> {slab1} KiB ({:+} KiB), SUnreclaim {unrecl0} KiB -> \
         {unrecl1} KiB ({:+} KiB)",
        slab1 as i64 - slab0 as i64,
        unrecl1 as i64 - unrecl0 as i64
    );
    assert!(
        slab1 <= slab0 + SLAB_TOLERANCE_KIB,
        "slab grew by {} KiB after the fuzz run (tolerance {SLAB_TOLERANCE_KIB} KiB)",
        slab1 - slab0
    );
}

/// Garbage in the shared ring memory itself (indices, flags, SQEs, CQ head), rewritten
/// over and over while the workers run and ENTER is called: the module must neither
/// crash nor hang, and the context must close cleanly. No file is registered, so the
/// garbage requests can only be refused, NOPs or CLOSEs of empty slots.
#[test]
fn garbage_ring_memory_is_survived() {
    let test = "kmod_fuzz::garbage_ring";
    if !common::have_module(test) {
        return;
    }
    let me = std::process::id();
    let ctx = open_context();
    let (base, len) = ctx.mapping();
    let mut rng = Rng(0x6a09_e667_f3bc_c909 ^ me as u64);
    let t0 = Instant::now();
    let mut rounds = 0u64;
    while t0.elapsed() < Duration::from_secs(3) {
        rounds += 1;
        // SAFETY: the context's own ring mapping, which the kernel treats as untrusted.
        unsafe { random_sqes::scribble(base, len, &mut rng, 256) };
        let lane = if rng.pct(50) {
            fastio::uapi::LANE_ALL
        } else {
            rng.below(LANES as u64) as u32
        };
        kmod::wake(ctx.fd(), lane).expect("ENTER(SQ_WAKEUP)");
        let min = rng.below(300) as u32;
        match kmod::getevents(ctx.fd(), min, Duration::from_micros(200)) {
            Ok(_) => {}
            Err(e) => assert_eq!(e, libc::ETIME, "GETEVENTS on garbage rings"),
        }
    }
    let st = ctx.stats();
    println!("garbage ring: {rounds} rounds of 256 random words; kernel stats {st:?}");
    drop(ctx);
    common::wait_workers_gone(me, Duration::from_secs(10));
}

/// Deterministic replays of what the fuzz found in the module:
/// - a WRITEV of exactly one iovec (import_iovec's single-segment path writes it into
///   the caller's fast array, which the module passed as NULL: NULL-pointer oops);
/// - a READ at the file position (OFF_CURRENT) of a file without non-blocking reads
///   (tmpfs: done by a workqueue worker) whose buffer ends in an unmapped page: after
///   the short first pass the next offset was computed as OFF_CURRENT + done, an
///   arithmetic overflow (a Rust panic in the kernel). Now: the bytes that fit.
#[test]
fn fuzz_findings_stay_fixed() {
    let test = "kmod_fuzz::findings";
    if !common::have_module(test) {
        return;
    }
    let mut ctx = Ctx::started(SetupParams {
        max_files: 4,
        ..kmod::params(1, 8, 8)
    });
    let path = PathBuf::from(format!("/tmp/fastio-fuzz-findings-{}", std::process::id()));
    let file = common::rw_file(&path);
    ctx.register(file.as_raw_fd(), 0).unwrap();

    let data = vec![7u8; 12 << 10];
    let iov = [IoVec {
        base: data.as_ptr() as u64,
        len: data.len() as u64,
    }];
    let writev = Sqe {
        opcode: OP_WRITEV,
        slot: 0,
        addr: iov.as_ptr() as u64,
        len: 1,
        off: 0,
        user_data: 1,
        ..Sqe::ZERO
    };
    let r = ctx.call(0, writev, Duration::from_secs(30));
    assert_eq!(r, Some(12 << 10), "WRITEV of one iovec");

    // The buffer: 8 KiB from the last mapped page of a fenced area into its guard.
    let area = Fenced::new(SCRATCH);
    let read = Sqe {
        opcode: OP_READ,
        slot: 0,
        addr: area.base + SCRATCH as u64 - 4096,
        len: 8192,
        off: OFF_CURRENT,
        user_data: 2,
        ..Sqe::ZERO
    };
    let r = ctx.call(0, read, Duration::from_secs(30));
    assert_eq!(
        r,
        Some(4096),
        "READ at the file position into a buffer that ends in an unmapped page"
    );
    ctx.close();
    drop(area);
    std::fs::remove_file(&path).unwrap();
}
