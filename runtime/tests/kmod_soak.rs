//! A soak of fastio.ko: for `FASTIO_SOAK_SECS` seconds (default 60), forked children
//! (three at a time) each set up a context with its lane and helper threads, register a
//! pipe, a socket pair, a TCP listener, a file, /dev/zero, a FIFO and a signalfd, try to
//! register the context itself, fork (the grandchild must be refused, then it exits or
//! execs), arm a READ on the FIFO (nobody writes) and on the signalfd (the parent may
//! signal), submit random SQEs (valid and not, `common/random_sqes.rs`), scribble random
//! words over their ring memory, and then end in one of four ways: killed with SIGKILL at
//! a random moment, `_exit` with everything open, a clean close, or exec of /bin/true
//! with the context descriptor inherited and the lane threads still in the kernel. Some
//! of them run as uid 65534.
//!
//! Checked: every child ends (a killed one within 30 s, never stuck in D state for more
//! than 2 s); what a child checks itself holds (each CQE belongs to a request and agrees
//! with the ABI's decoder, REGISTER_FILES of the context is EBADF, the grandchild gets
//! EPERM); at the end no lane thread is left, the module's reference count is back, and
//! the kernel log has no WARNING/BUG/Oops/panic since the start. scripts/vm/guest-soak.sh
//! loops this between insmod and rmmod and checks VmallocUsed and Slab (`make vm-soak`,
//! SOAK_SECS=600 for the long run; 60 s in `make test`).
//!
//! `FASTIO_SOAK_SEED` replays the parent's choices (the seed is printed);
//! `FASTIO_SOAK_SKIP` (comma-separated: selfreg, signalfd, fifo, fork, exec, scribble,
//! nobody) leaves scenarios out, e.g. to run the rest against the old module. Runs where
//! /dev/fastio exists, as root (inside the VM); elsewhere it prints SKIP.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fastio::uapi::{SetupParams, Sqe, OFF_CURRENT};

mod common;
#[path = "common/kmod.rs"]
mod kmod;
#[path = "common/random_sqes.rs"]
mod random_sqes;

use kmod::{ChildIo, Ctx, Forked};
use random_sqes::{check_result, Fenced, Gen, Rng};

const MAX_FILES: u32 = 16;
const SQ_ENTRIES: u32 = 32;
const CQ_ENTRIES: u32 = 64;
const SCRATCH: usize = 64 << 10;
const IOV_AREA: usize = 16 << 10;
/// Children running at once.
const PARALLEL: usize = 3;
/// How long a killed child may take to be reaped.
const REAP_LIMIT: Duration = Duration::from_secs(30);
/// Longest D state tolerated in a killed child.
const D_LIMIT: Duration = Duration::from_secs(2);

/// How a child ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The parent sends SIGKILL after `run_ms`.
    Killed,
    /// `_exit(0)` with the context, its threads and the mapping open.
    Exit,
    /// SHUTDOWN, join, unmap, close, then exit 0.
    Close,
    /// exec of /bin/true with the context descriptor kept open across it.
    Exec,
}

/// What a child does; chosen by the parent.
#[derive(Clone, Debug)]
struct Plan {
    seed: u64,
    lanes: u32,
    idle_ms: u32,
    run_ms: u64,
    end: End,
    nobody: bool,
    selfreg: bool,
    signalfd: bool,
    fifo: bool,
    fork: bool,
    scribble: bool,
}

/// Scenarios left out (FASTIO_SOAK_SKIP).
struct Skip(Vec<String>);

impl Skip {
    fn from_env() -> Skip {
        Skip(
            std::env::var("FASTIO_SOAK_SKIP")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    }

    fn has(&self, what: &str) -> bool {
        self.0.iter().any(|s| s == what)
    }
}

impl Plan {
    fn random(rng: &mut Rng, skip: &Skip) -> Plan {
        let mut pct = |p, what| !skip.has(what) && rng.pct(p);
        let nobody = pct(15, "nobody");
        let selfreg = pct(40, "selfreg");
        let signalfd = pct(50, "signalfd");
        let fifo = pct(50, "fifo");
        let fork = pct(30, "fork");
        let scribble = pct(30, "scribble");
        let exec = !skip.has("exec");
        let end = match rng.below(if exec { 4 } else { 3 }) {
            0 => End::Killed,
            1 => End::Exit,
            2 => End::Close,
            _ => End::Exec,
        };
        Plan {
            seed: rng.next() | 1,
            lanes: 1 + rng.below(2) as u32,
            idle_ms: 1 + rng.below(50) as u32,
            run_ms: 20 + rng.below(1500),
            end,
            nobody,
            selfreg,
            signalfd,
            fifo,
            fork,
            scribble,
        }
    }
}

/// The paths a child `pid` may leave behind (it may be killed before it removes them):
/// its file on the scratch disk and in /tmp, and its FIFO.
fn child_paths(pid: i32) -> Vec<PathBuf> {
    let mut v = vec![
        PathBuf::from(format!("/tmp/fastio-soak-{pid}")),
        PathBuf::from(format!("/tmp/fastio-soak-fifo-{pid}")),
    ];
    if let Ok(dir) = std::env::var("FASTIO_SCRATCH") {
        v.push(PathBuf::from(dir).join(format!("fastio-soak-{pid}")));
    }
    v
}

/// The files a child registers, kept open while it runs.
struct Files {
    _keep: Vec<Box<dyn std::any::Any>>,
    path: PathBuf,
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Registers the child's files into slots 0..8: pipe read and write ends, both ends of
/// a socket pair, a fresh file, /dev/zero, a TCP listener, and (as planned) a FIFO
/// opened read-write (7) and a signalfd (8).
fn register_files(ctx: &Ctx, plan: &Plan, io: &mut ChildIo) -> Files {
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    let mut fds: Vec<(u32, RawFd)> = Vec::new();
    let (rd, wr) = kmod::pipe();
    fds.push((0, rd.as_raw_fd()));
    fds.push((1, wr.as_raw_fd()));
    keep.push(Box::new((rd, wr)));
    let (a, b) = UnixStream::pair().unwrap();
    fds.push((2, a.as_raw_fd()));
    fds.push((3, b.as_raw_fd()));
    keep.push(Box::new((a, b)));
    let dir = std::env::var("FASTIO_SCRATCH").unwrap_or_else(|_| "/tmp".into());
    let pid = std::process::id();
    let mut path = PathBuf::from(&dir).join(format!("fastio-soak-{pid}"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .or_else(|_| {
            // The scratch disk may not be writable for uid 65534.
            path = PathBuf::from(format!("/tmp/fastio-soak-{pid}"));
            common::rw_file(&path).try_clone()
        })
        .unwrap();
    fds.push((4, file.as_raw_fd()));
    keep.push(Box::new(file));
    let zero = std::fs::File::open("/dev/zero").unwrap();
    fds.push((5, zero.as_raw_fd()));
    keep.push(Box::new(zero));
    if let Ok(l) = TcpListener::bind("127.0.0.1:0") {
        fds.push((6, l.as_raw_fd()));
        keep.push(Box::new(l));
    }
    if plan.fifo {
        let fifo_path = PathBuf::from(format!("/tmp/fastio-soak-fifo-{pid}"));
        kmod::mkfifo(&fifo_path, 0o600);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo_path)
            .unwrap();
        let _ = std::fs::remove_file(&fifo_path);
        fds.push((7, f.as_raw_fd()));
        keep.push(Box::new(f));
    }
    if plan.signalfd {
        let s = kmod::signalfd(libc::SIGUSR1);
        fds.push((8, s.as_raw_fd()));
        keep.push(Box::new(s));
    }
    for (slot, fd) in &fds {
        if let Err(e) = ctx.register(*fd, *slot) {
            io.say(&format!("error=REGISTER_FILES of slot {slot}: errno {e}"));
        }
    }
    Files { _keep: keep, path }
}

/// The requests of a child in flight, to check each CQE.
struct Book {
    outstanding: HashMap<u64, Sqe>,
    inflight: Vec<u32>,
    next: u64,
    cqes: u64,
}

impl Book {
    fn push(&mut self, ctx: &mut Ctx, lane: u32, sqe: Sqe) -> bool {
        if self.inflight[lane as usize] >= CQ_ENTRIES || !ctx.push(lane, &sqe) {
            return false;
        }
        self.outstanding.insert(sqe.user_data, sqe);
        self.inflight[lane as usize] += 1;
        true
    }

    fn reap(&mut self, ctx: &mut Ctx, io: &mut ChildIo) -> bool {
        for lane in 0..self.inflight.len() as u32 {
            for c in ctx.reap(lane) {
                match self.outstanding.remove(&c.user_data) {
                    None => {
                        io.say(&format!("error=CQE of unknown user_data: {c:?}"));
                        return false;
                    }
                    Some(sqe) => {
                        let r = std::panic::catch_unwind(|| check_result(&sqe, c.res, MAX_FILES));
                        if r.is_err() {
                            io.say(&format!("error=CQE {c:?} disagrees with {sqe:?}"));
                            return false;
                        }
                    }
                }
                self.inflight[lane as usize] -= 1;
                self.cqes += 1;
            }
        }
        true
    }
}

/// The child: see the module doc. Returns its exit code (0: all its checks held).
fn child_main(plan: Plan, io: &mut ChildIo) -> i32 {
    if plan.signalfd {
        // Before any thread exists: every thread of this process blocks it.
        kmod::block_signal(libc::SIGUSR1);
    }
    if plan.nobody {
        kmod::set_rlimit(libc::RLIMIT_MEMLOCK, 64 << 20);
        kmod::become_nobody();
    }
    let p = SetupParams {
        idle_ms: plan.idle_ms,
        max_files: MAX_FILES,
        ..kmod::params(plan.lanes, SQ_ENTRIES, CQ_ENTRIES)
    };
    let mut ctx = match Ctx::new(p) {
        Ok(c) => c,
        // Another child of uid 65534 may hold the user's contexts.
        Err(libc::EMFILE) if plan.nobody => {
            io.say("ready=EMFILE");
            return 0;
        }
        Err(e) => {
            io.say(&format!("error=SETUP: errno {e}"));
            return 1;
        }
    };
    ctx.start_threads();
    let files = register_files(&ctx, &plan, io);
    let mut ok = true;
    if plan.selfreg {
        let other = Ctx::new(kmod::params(1, 8, 16)).ok();
        let own = ctx.register(ctx.fd(), 9);
        let another = other.as_ref().map(|o| ctx.register(o.fd(), 10));
        if own != Err(libc::EBADF) || another.is_some_and(|r| r != Err(libc::EBADF)) {
            io.say(&format!(
                "error=REGISTER_FILES of a context: own {own:?}, another {another:?}"
            ));
            ok = false;
        }
        // Left open on purpose: the end (kill, exit, exec...) must release it too.
        std::mem::forget(other);
    }
    if plan.fork {
        let fd = ctx.fd();
        let exec = (plan.seed >> 1) & 1 == 0;
        let g = kmod::fork_fn(move || {
            let r = kmod::wake(fd, 0);
            if r != Err(libc::EPERM) {
                return 3;
            }
            if exec {
                let prog = c"/bin/true";
                let argv = [prog.as_ptr(), std::ptr::null()];
                // SAFETY: a NUL-terminated path and argv; on failure we exit below.
                unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
                return 4;
            }
            0
        });
        match kmod::wait_child(g, Duration::from_secs(20)) {
            Some(s) if libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0 => {}
            other => {
                io.say(&format!("error=grandchild (exec {exec}): status {other:?}"));
                ok = false;
            }
        }
    }
    let scratch = Fenced::new(SCRATCH);
    let iov = Fenced::new(IOV_AREA);
    let mut gen = Gen::new(plan.seed, &scratch, SCRATCH, &iov, IOV_AREA, MAX_FILES);
    let mut book = Book {
        outstanding: HashMap::new(),
        inflight: vec![0; plan.lanes as usize],
        next: 1,
        cqes: 0,
    };
    // The READs that wait: the FIFO (nobody writes) and the signalfd.
    let waiting_buf = scratch.base as *mut u8;
    for (on, slot) in [(plan.fifo, 7), (plan.signalfd, 8)] {
        if on {
            let sqe = kmod::read(slot, waiting_buf, 128, OFF_CURRENT, book.next);
            book.next += 1;
            book.push(&mut ctx, slot % plan.lanes, sqe);
        }
    }
    for lane in 0..plan.lanes {
        ctx.publish(lane);
    }
    io.say("ready=1");
    let t0 = Instant::now();
    let run = Duration::from_millis(plan.run_ms);
    while ok && (t0.elapsed() < run || plan.end == End::Killed) {
        for _ in 0..1 + gen.rng.below(8) {
            let lane = gen.rng.below(plan.lanes as u64) as u32;
            let sqe = gen.sqe(book.next);
            if book.push(&mut ctx, lane, sqe) {
                book.next += 1;
            }
        }
        for lane in 0..plan.lanes {
            ctx.publish(lane);
        }
        ok = book.reap(&mut ctx, io);
        if book.inflight.iter().any(|&n| n >= CQ_ENTRIES / 2) {
            let _ = kmod::getevents(ctx.fd(), 1, Duration::from_millis(2));
        }
        if plan.scribble && t0.elapsed() > run / 2 {
            break;
        }
    }
    io.say(&format!("cqes={}", book.cqes));
    if plan.scribble {
        // From here on the rings are garbage: no more bookkeeping.
        let (base, len) = ctx.mapping();
        let mut rng = Rng(plan.seed ^ 0x9e37_79b9_7f4a_7c15);
        while t0.elapsed() < run || plan.end == End::Killed {
            // SAFETY: our own ring mapping, which the kernel treats as untrusted.
            unsafe { random_sqes::scribble(base, len, &mut rng, 64) };
            let _ = kmod::wake(ctx.fd(), fastio::uapi::LANE_ALL);
            let _ = kmod::getevents(ctx.fd(), rng.below(64) as u32, Duration::from_micros(500));
        }
    }
    if !ok {
        return 1;
    }
    match plan.end {
        End::Killed | End::Exit => {
            std::mem::forget(files);
            std::mem::forget(ctx);
            0
        }
        End::Close => {
            let results = ctx.shutdown_and_join();
            if results.iter().any(|(_, r)| r.is_err()) {
                io.say(&format!("error=threads after SHUTDOWN: {results:?}"));
                return 1;
            }
            ctx.close();
            drop(files);
            0
        }
        End::Exec => {
            // Keep the context descriptor across exec; the lane threads are in the
            // kernel and exec must end them.
            // SAFETY: fcntl on our own descriptor.
            unsafe { libc::fcntl(ctx.fd(), libc::F_SETFD, 0) };
            let prog = c"/bin/true";
            let argv = [prog.as_ptr(), std::ptr::null()];
            // SAFETY: a NUL-terminated path and argv.
            unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
            io.say(&format!("error=exec: errno {}", kmod::errno()));
            1
        }
    }
}

/// A running child and what the parent knows of it.
struct Running {
    child: Forked,
    plan: Plan,
    started: Instant,
    killed_at: Option<Instant>,
    ready: bool,
    d_since: Option<Instant>,
}

fn soak_secs() -> u64 {
    std::env::var("FASTIO_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

#[test]
fn soak() {
    let test = "kmod_soak";
    if !common::have_module(test) || !common::have_root(test) {
        return;
    }
    let seed = random_sqes::seed_from_env("FASTIO_SOAK_SEED");
    let secs = soak_secs();
    let skip = Skip::from_env();
    println!(
        "kmod_soak: seed {seed} (FASTIO_SOAK_SEED replays), {secs} s, module ABI {}, \
         skipping {:?}",
        kmod::abi_version(),
        skip.0
    );
    let mark = kmod::kernel_log_mark(test);
    let refcnt0 = kmod::module_refcnt();
    let mut rng = Rng(seed);
    let mut running: Vec<Running> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut ended: HashMap<String, u64> = HashMap::new();
    let (mut children, mut signals, mut cqes) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    let end = Duration::from_secs(secs);
    while (t0.elapsed() < end || !running.is_empty()) && failures.is_empty() {
        while t0.elapsed() < end && running.len() < PARALLEL {
            let plan = Plan::random(&mut rng, &skip);
            let p = plan.clone();
            let child = kmod::fork_reporting(move |io| child_main(p, io));
            children += 1;
            running.push(Running {
                child,
                plan,
                started: Instant::now(),
                killed_at: None,
                ready: false,
                d_since: None,
            });
        }
        let mut i = 0;
        while i < running.len() {
            let r = &mut running[i];
            // Reports: "ready", counts, and errors.
            let mut reports = |r: &mut Running| {
                while let Some(line) = r.child.line(Duration::ZERO) {
                    if line.starts_with("ready=") {
                        r.ready = true;
                    } else if let Some(n) = line.strip_prefix("cqes=") {
                        cqes += n.parse::<u64>().unwrap_or(0);
                    } else if let Some(e) = line.strip_prefix("error=") {
                        failures.push(format!("child {} {:?}: {e}", r.child.pid, r.plan));
                    }
                }
            };
            reports(r);
            let age = r.started.elapsed();
            if r.ready && r.plan.signalfd && r.killed_at.is_none() && rng.pct(2) {
                kmod::kill(r.child.pid, libc::SIGUSR1);
                signals += 1;
            }
            let run = Duration::from_millis(r.plan.run_ms);
            if r.killed_at.is_none() && (r.plan.end == End::Killed && r.ready && age >= run) {
                kmod::kill(r.child.pid, libc::SIGKILL);
                r.killed_at = Some(Instant::now());
            }
            if let Some(status) = r.child.wait(Duration::ZERO) {
                // What it said between our last read and its end.
                reports(r);
                let how = if libc::WIFSIGNALED(status) {
                    format!("signal {}", libc::WTERMSIG(status))
                } else {
                    format!("exit {}", libc::WEXITSTATUS(status))
                };
                let expected = match r.plan.end {
                    End::Killed => libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == 9,
                    _ => libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                };
                if !expected {
                    failures.push(format!(
                        "child {} {:?} ended with {how}",
                        r.child.pid, r.plan
                    ));
                }
                *ended.entry(format!("{:?}", r.plan.end)).or_default() += 1;
                for path in child_paths(r.child.pid) {
                    let _ = std::fs::remove_file(path);
                }
                running.remove(i);
                continue;
            }
            if let Some(k) = r.killed_at {
                if kmod::proc_state(r.child.pid) == Some('D') {
                    let since = *r.d_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > D_LIMIT {
                        failures.push(format!(
                            "child {} {:?} in D state for {D_LIMIT:?} after SIGKILL",
                            r.child.pid, r.plan
                        ));
                    }
                } else {
                    r.d_since = None;
                }
                if k.elapsed() > REAP_LIMIT {
                    failures.push(format!(
                        "child {} {:?} not reaped {REAP_LIMIT:?} after SIGKILL (state {:?})",
                        r.child.pid,
                        r.plan,
                        kmod::proc_state(r.child.pid)
                    ));
                }
            } else if age > run + REAP_LIMIT {
                failures.push(format!(
                    "child {} {:?} still running {:?} after its planned end (state {:?})",
                    r.child.pid,
                    r.plan,
                    age - run,
                    kmod::proc_state(r.child.pid)
                ));
            }
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Dropping what is left kills and reaps it.
    let pids: Vec<i32> = running.iter().map(|r| r.child.pid).collect();
    drop(running);
    for path in pids.into_iter().flat_map(child_paths) {
        let _ = std::fs::remove_file(path);
    }
    println!(
        "kmod_soak: {children} children in {:.1} s, ended {ended:?}, {cqes} CQEs checked, \
         {signals} SIGUSR1 sent",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "soak failures:\n  {}",
        failures.join("\n  ")
    );
    if let Some(r0) = refcnt0 {
        common::wait_until(
            "the module reference count back at its start",
            Duration::from_secs(30),
            || kmod::module_refcnt() == Some(r0),
        );
    }
    kmod::assert_kernel_log_clean_since(&mark);
}
