//! fastio.ko against hostile use: one test per way the first module (ABI 1, kernel
//! threads) was broken by a hostile program (issue 10), plus the review findings that a
//! test can show. Each test prints what it checks, waits for conditions with deadlines
//! (never a sleep as synchronisation), and ends by checking the kernel log since it began
//! (no WARNING, BUG, Oops, Rust panic, refcount or list corruption).
//!
//! 1. SETUP_AFFINITY with an out-of-range `affinity_offset` is EINVAL (ABI 1: a Rust
//!    panic in the kernel, "attempt to add with overflow", the caller in D state).
//! 2. A READ of a signalfd slot sees the process's signals (ABI 1: the kernel thread's,
//!    never completes); a context whose signalfd READ waits outlives its process and is
//!    closed by another one: no POLLFREE warning (ABI 1: WARNING in __wake_up_pollfree).
//! 3. REGISTER_FILES refuses /dev/fastio descriptors (ABI 1: a reference cycle, the
//!    module reference is never given back, rmmod refused).
//! 4. Blocking READs on a FIFO by an unprivileged process neither starve root's
//!    readiness-driven RECV nor survive kill -9 in D state (ABI 1: both).
//! 5. A lane whose CQ is full and nobody reaps goes to sleep instead of spinning (ABI 1:
//!    100 % of a CPU forever).
//! 6. Per-user context limit, ring memory against RLIMIT_MEMLOCK, bounded idle spin and
//!    helper count (ABI 1: one user takes every context; no limit).
//! 7. RLIMIT_FSIZE applies to ring WRITEs as to write(2) (ABI 1: the file grows past it).
//!
//! And: ACCEPT into a busy slot leaves the connection for a later ACCEPT; cancellation
//! (CLOSE) is keyed by the file, not the slot; setuid() after SETUP applies to the
//! requests; the lane workers are threads of the process.
//!
//! Runs where /dev/fastio exists, as root (inside the VM: `make vm-test`); elsewhere each
//! test prints SKIP and returns. Against the old module too (`common/kmod.rs` detects it),
//! where these tests fail.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fastio::uapi::{SetupParams, OFF_CURRENT, SETUP_AFFINITY, SQ_NEED_WAKEUP};

mod common;
#[path = "common/kmod.rs"]
mod kmod;

use kmod::{Ctx, KmsgMark};

/// How long a request that should complete may take (TCG is slow; the old module's
/// failures are "never").
const LIMIT: Duration = Duration::from_secs(10);
const NOBODY: u32 = 65534;

/// Skips (SKIP line) unless the module is loaded and we are root; else prints what the
/// test checks and marks the kernel log.
fn begin(test: &str, what: &str) -> Option<KmsgMark> {
    let name = format!("kmod_hostile::{test}");
    if !common::have_module(&name) || !common::have_root(&name) {
        return None;
    }
    println!("{name}: {what} (module ABI {})", kmod::abi_version());
    Some(kmod::kernel_log_mark(&name))
}

fn errno_name(e: i32) -> String {
    format!("{} ({e})", std::io::Error::from_raw_os_error(e))
}

/// A fresh path under /tmp for this test process.
fn tmp_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/fastio-hostile-{}-{name}", std::process::id()))
}

// ---------------------------------------------------------------------------------------
// 1. affinity
// ---------------------------------------------------------------------------------------

#[test]
fn affinity_offset_out_of_range_is_einval() {
    let Some(mark) = begin(
        "affinity",
        "SETUP_AFFINITY with affinity_offset 0xffffffff or = possible CPUs is EINVAL",
    ) else {
        return;
    };
    let ncpu = kmod::possible_cpus();
    for (what, off) in [
        ("0xffffffff", u32::MAX),
        ("the number of possible CPUs", ncpu),
    ] {
        let p = SetupParams {
            flags: SETUP_AFFINITY,
            affinity_offset: off,
            ..kmod::params(2, 8, 16)
        };
        match Ctx::new(p) {
            Err(e) => assert_eq!(
                e,
                libc::EINVAL,
                "affinity_offset {what} ({off}): {}",
                errno_name(e)
            ),
            Ok(ctx) => {
                ctx.close();
                panic!("SETUP_AFFINITY with affinity_offset {what} ({off}) was accepted");
            }
        }
    }
    // The last possible CPU is valid; lane 1 wraps around to CPU 0.
    let mut ctx = Ctx::started(SetupParams {
        flags: SETUP_AFFINITY,
        affinity_offset: ncpu - 1,
        ..kmod::params(2, 8, 16)
    });
    for lane in 0..2 {
        let r = ctx.call(lane, kmod::nop(lane as u64 + 1), LIMIT);
        assert_eq!(
            r,
            Some(0),
            "NOP on lane {lane} with affinity_offset {}",
            ncpu - 1
        );
    }
    ctx.close();
    kmod::assert_kernel_log_clean_since(&mark);
}

// ---------------------------------------------------------------------------------------
// 2. signalfd
// ---------------------------------------------------------------------------------------

/// The size of `struct signalfd_siginfo`.
const SIGINFO_LEN: usize = 128;

/// In a forked child (so that SIGUSR1 is blocked in every thread of its process): a
/// context with its threads, a signalfd for SIGUSR1 in slot 0, a READ of it that waits
/// (stats: parked); reports `parked=1`, then runs `then`.
fn child_with_signalfd_read(
    io: &mut kmod::ChildIo,
    then: impl FnOnce(&mut kmod::ChildIo, Ctx) -> i32,
) -> i32 {
    kmod::block_signal(libc::SIGUSR1);
    let sfd = kmod::signalfd(libc::SIGUSR1);
    let mut ctx = Ctx::started(kmod::params(1, 8, 16));
    if let Err(e) = ctx.register(sfd.as_raw_fd(), 0) {
        io.say(&format!("register={e}"));
        return 2;
    }
    // Leaked on purpose: the kernel may write it until the READ completes.
    let buf = vec![0u8; SIGINFO_LEN].leak();
    ctx.submit(
        0,
        kmod::read(0, buf.as_mut_ptr(), SIGINFO_LEN as u32, OFF_CURRENT, 7),
    );
    let parked = ctx.wait_stats(Duration::from_secs(5), |s| s.parked >= 1);
    if !parked {
        // It may have completed at once (nothing pending is expected, though).
        let c = ctx.wait_for(7, Duration::ZERO);
        io.say(&format!("parked=0 early={c:?}"));
        return 3;
    }
    io.say("parked=1");
    then(io, ctx)
}

#[test]
fn signalfd_read_sees_the_process_signals() {
    let Some(mark) = begin(
        "signalfd_read",
        "a READ of a signalfd slot completes with the siginfo when the process gets the signal",
    ) else {
        return;
    };
    let mut child = kmod::fork_reporting(|io| {
        child_with_signalfd_read(io, |io, mut ctx| {
            // SAFETY: getpid/kill have no preconditions; SIGUSR1 is blocked in every
            // thread of this process, so it stays pending for the signalfd.
            unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
            match ctx.wait_for(7, LIMIT) {
                None => {
                    io.say("result=none");
                    // Leave the context to the exit: SHUTDOWN would cancel the READ.
                    std::mem::forget(ctx);
                    4
                }
                Some(c) => {
                    io.say(&format!("result={}", c.res));
                    0
                }
            }
        })
    });
    let parked = child.line(LIMIT);
    assert_eq!(
        parked.as_deref(),
        Some("parked=1"),
        "the child's READ did not wait"
    );
    let result = child.value("result", LIMIT + LIMIT);
    let code = child.exit_code("signalfd child", LIMIT);
    println!("signalfd READ after kill(SIGUSR1): result {result:?}, child exit {code:?}");
    assert_eq!(
        result.as_deref(),
        Some(SIGINFO_LEN.to_string().as_str()),
        "the READ of the signalfd did not complete with one siginfo within {LIMIT:?} of the \
         signal (it waits on the signals of someone else than the process)"
    );
    assert_eq!(code, Some(0));
    kmod::assert_kernel_log_clean_since(&mark);
}

#[test]
fn signalfd_read_outliving_its_process_is_pollfree_safe() {
    let Some(mark) = begin(
        "signalfd_pollfree",
        "a child arms a signalfd READ, passes the context to us and exits; we close it; \
         the kernel log stays clean (POLLFREE)",
    ) else {
        return;
    };
    let refcnt0 = kmod::module_refcnt();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut child = kmod::fork_reporting(move |io| {
        child_with_signalfd_read(io, |io, ctx| {
            if let Err(e) = kmod::send_fd(&theirs, ctx.fd()) {
                io.say(&format!("sent={e}"));
                return 5;
            }
            io.say("sent=0");
            // Exit with the context, its threads and the armed READ all live.
            std::mem::forget(ctx);
            0
        })
    });
    assert_eq!(child.line(LIMIT).as_deref(), Some("parked=1"));
    let ctx_fd = kmod::recv_fd(&ours);
    assert_eq!(child.value("sent", LIMIT).as_deref(), Some("0"));
    let pid = child.pid as u32;
    assert_eq!(child.exit_code("pollfree child", LIMIT), Some(0));
    // On ABI 2 the child's exit freed the sighand the READ waited on: POLLFREE now.
    drop(ctx_fd);
    common::wait_until(
        "the exited child's lane workers gone after the last close",
        LIMIT,
        || common::workers_of(pid).is_empty(),
    );
    if let Some(r0) = refcnt0 {
        common::wait_until("the module reference count back", LIMIT, || {
            kmod::module_refcnt() == Some(r0)
        });
    }
    kmod::assert_kernel_log_clean_since(&mark);
}

// ---------------------------------------------------------------------------------------
// 3. registering /dev/fastio descriptors
// ---------------------------------------------------------------------------------------

#[test]
fn register_files_refuses_fastio_descriptors() {
    let Some(mark) = begin(
        "register_self",
        "REGISTER_FILES of the context's own fd or another context's fd is EBADF, and the \
         module reference count returns to its baseline after a child that tried exits",
    ) else {
        return;
    };
    let refcnt0 = kmod::module_refcnt().expect("/sys/module/fastio/refcnt");
    let mut results = Vec::new();
    {
        let a = Ctx::started(kmod::params(1, 8, 16));
        let b = Ctx::started(kmod::params(1, 8, 16));
        let sock = TcpListener::bind("127.0.0.1:0").unwrap();
        results.push(("own fd", a.register(a.fd(), 0)));
        results.push(("another context's fd", a.register(b.fd(), 1)));
        results.push((
            "a socket and the own fd in one call",
            kmod::register(a.fd(), &[sock.as_raw_fd(), a.fd()], &[2, 3]),
        ));
        // All or nothing: slot 2 stayed empty.
        results.push(("INSTALL_FD of slot 2 afterwards", a.install(2).map(|_| 0)));
    }
    println!("in this process: {results:?}");
    let mut child = kmod::fork_reporting(|io| {
        let a = Ctx::started(kmod::params(1, 8, 16));
        let b = Ctx::started(kmod::params(1, 8, 16));
        let own = a.register(a.fd(), 0);
        let other = a.register(b.fd(), 1);
        let back = b.register(a.fd(), 0);
        io.say(&format!("child={own:?} {other:?} {back:?}"));
        // Exit with everything open: the exit must release it all.
        std::mem::forget((a, b));
        0
    });
    let child_results = child.value("child", LIMIT);
    assert_eq!(child.exit_code("register child", LIMIT), Some(0));
    let t0 = Instant::now();
    let mut refcnt = kmod::module_refcnt();
    while refcnt != Some(refcnt0) && t0.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(10));
        refcnt = kmod::module_refcnt();
    }
    println!(
        "child: {child_results:?}; module refcnt {refcnt0} before, {refcnt:?} {:.1} s after \
         the child exited",
        t0.elapsed().as_secs_f64()
    );
    let ebadf = Err(libc::EBADF);
    for (what, r) in &results {
        assert_eq!(*r, ebadf, "REGISTER_FILES / check: {what}");
    }
    let ebadf_s = format!("{ebadf:?}");
    assert_eq!(
        child_results,
        Some(format!("{ebadf_s} {ebadf_s} {ebadf_s}")),
        "the child's REGISTER_FILES of context descriptors"
    );
    assert_eq!(
        refcnt,
        Some(refcnt0),
        "the module reference count did not return to its baseline: contexts leaked"
    );
    kmod::assert_kernel_log_clean_since(&mark);
}

// ---------------------------------------------------------------------------------------
// 4. FIFO starvation and D state
// ---------------------------------------------------------------------------------------

/// At drop: writes into the FIFO (so that readers stuck in it, on the old module, get
/// their bytes and the child can die), then removes it.
struct FifoGuard(PathBuf);

impl Drop for FifoGuard {
    fn drop(&mut self) {
        if let Ok(mut w) = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.0)
        {
            let _ = w.write(&[0u8; 4096]);
        }
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn fifo_readers_neither_starve_others_nor_hang_in_d_state() {
    let Some(mark) = begin(
        "fifo",
        "uid 65534 issues 5 READs on a FIFO nobody writes; root's RECV completes when its \
         data arrives; kill -9 of the reader: reaped within 10 s, never stuck in D state",
    ) else {
        return;
    };
    let path = tmp_path("fifo");
    kmod::mkfifo(&path, 0o666);
    let fifo_path = path.clone();
    // Dropped last: on the old module its teardown waits for the FIFO readers, which the
    // guard (dropped first) releases.
    let mut root: Option<Ctx> = None;
    let mut child = kmod::fork_reporting(move |io| {
        kmod::set_rlimit(libc::RLIMIT_MEMLOCK, 64 << 20);
        kmod::become_nobody();
        // Read and write end at once: the READs block (a writer exists) and never see EOF.
        let fifo = match OpenOptions::new().read(true).write(true).open(&fifo_path) {
            Ok(f) => f,
            Err(e) => {
                io.say(&format!("open={e}"));
                return 2;
            }
        };
        let mut ctx = Ctx::started(kmod::params(1, 8, 16));
        ctx.register(fifo.as_raw_fd(), 0)
            .expect("register the FIFO");
        let buf = vec![0u8; 5 * 64].leak();
        for i in 0..5u64 {
            let at = buf[i as usize * 64..].as_mut_ptr();
            assert!(ctx.push(0, &kmod::read(0, at, 64, OFF_CURRENT, 100 + i)));
        }
        ctx.publish(0);
        let waiting = ctx.wait_stats(LIMIT, |s| s.pending >= 5);
        let st = ctx.stats();
        // Only the descriptor keeps the context now, so the exit's close of it is the
        // last reference (with the rings mapped, the old module's blocked reads held the
        // address space and the release happened later, in a kworker).
        ctx.unmap();
        io.say(&format!("ready={waiting} {st:?}"));
        loop {
            // SAFETY: pause has no preconditions; we wait for SIGKILL.
            unsafe { libc::pause() };
        }
    });
    let _fifo = FifoGuard(path);
    let ready = child.value("ready", LIMIT);
    println!("uid {NOBODY} child {}: {ready:?}", child.pid);
    assert!(
        ready.as_deref().is_some_and(|r| r.starts_with("true")),
        "the child's 5 FIFO READs are not all waiting: {ready:?}"
    );

    // Root's context: a RECV waits for data, then the data comes.
    let ctx = root.insert(Ctx::started(kmod::params(1, 8, 16)));
    let (mut peer, sock) = UnixStream::pair().unwrap();
    ctx.register(sock.as_raw_fd(), 0).unwrap();
    let mut buf = [0u8; 64];
    ctx.submit(0, kmod::recv(0, buf.as_mut_ptr(), 64, 1));
    assert!(
        ctx.wait_stats(LIMIT, |s| s.parked >= 1),
        "root's RECV did not wait for readiness"
    );
    peer.write_all(b"ping").unwrap();
    let t0 = Instant::now();
    let recv = ctx.wait_for(1, LIMIT);
    let recv_time = t0.elapsed();
    println!(
        "root's RECV with data waiting: {:?} after {:.1} ms",
        recv.map(|c| c.res),
        recv_time.as_secs_f64() * 1000.0
    );

    // kill -9 of the reader: reaped in time, and never stuck in D state.
    kmod::kill(child.pid, libc::SIGKILL);
    let t1 = Instant::now();
    let (mut d_since, mut d_longest) = (None::<Instant>, Duration::ZERO);
    let status = loop {
        if let Some(s) = child.wait(Duration::ZERO) {
            break Some(s);
        }
        if kmod::proc_state(child.pid) == Some('D') {
            let since = *d_since.get_or_insert_with(Instant::now);
            d_longest = d_longest.max(since.elapsed());
        } else {
            d_since = None;
        }
        if t1.elapsed() >= LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    println!(
        "kill -9 of the FIFO reader: reaped {:?} after {:.1} ms; longest D state seen {:.1} ms",
        status.is_some(),
        t1.elapsed().as_secs_f64() * 1000.0,
        d_longest.as_secs_f64() * 1000.0
    );
    assert_eq!(
        recv.map(|c| c.res),
        Some(4),
        "root's RECV did not complete within {LIMIT:?} of its data while another user's \
         FIFO READs blocked"
    );
    assert!(
        status.is_some(),
        "the killed FIFO reader was not reaped within {LIMIT:?} (state {:?})",
        kmod::proc_state(child.pid)
    );
    assert!(
        d_longest < Duration::from_millis(200),
        "the killed FIFO reader stayed in D state for {d_longest:?}"
    );
    root.take().unwrap().close();
    kmod::assert_kernel_log_clean_since(&mark);
}

// ---------------------------------------------------------------------------------------
// 5. livelock on a full CQ
// ---------------------------------------------------------------------------------------

#[test]
fn full_cq_puts_the_lane_to_sleep() {
    let Some(mark) = begin(
        "livelock",
        "1 lane, cq_entries 4, 64 NOPs, nothing reaped: SQ_NEED_WAKEUP within idle_ms, the \
         lane's CPU time stays flat, then reaping + GETEVENTS completes all 64 once each",
    ) else {
        return;
    };
    const IDLE_MS: u32 = 20;
    const SLACK: Duration = Duration::from_secs(2);
    let mut ctx = Ctx::started(SetupParams {
        idle_ms: IDLE_MS,
        ..kmod::params(1, 64, 4)
    });
    let me = std::process::id();
    for ud in 1..=64 {
        assert!(ctx.push(0, &kmod::nop(ud)));
    }
    ctx.publish(0);
    common::wait_until("the CQ full (4 completions posted)", LIMIT, || {
        ctx.cq_tail(0) == 4
    });
    let t0 = Instant::now();
    let limit = Duration::from_millis(IDLE_MS as u64) + SLACK;
    let mut asleep = false;
    while t0.elapsed() < limit {
        if ctx.sq_flags(0) & SQ_NEED_WAKEUP != 0 {
            asleep = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let asleep_after = t0.elapsed();
    let worker = kmod::lane_worker_dir(me, 0).expect("the lane worker in /proc");
    let ticks0 = kmod::cpu_ticks(&worker).unwrap();
    // A measurement window, not a synchronisation.
    std::thread::sleep(Duration::from_secs(1));
    let ticks1 = kmod::cpu_ticks(&worker).unwrap();
    let head = ctx.sq_head(0);
    println!(
        "full CQ: SQ_NEED_WAKEUP {} after {:.1} ms; lane worker {} used {} ticks in 1 s; \
         SQ head {head}",
        if asleep { "set" } else { "NOT set" },
        asleep_after.as_secs_f64() * 1000.0,
        worker.display(),
        ticks1 - ticks0
    );
    let got = ctx.wait(64, LIMIT);
    let mut uds: Vec<u64> = got.iter().map(|c| c.user_data).collect();
    uds.sort_unstable();
    assert!(
        asleep,
        "SQ_NEED_WAKEUP not set within idle_ms ({IDLE_MS} ms) + {SLACK:?} while the CQ is full"
    );
    assert!(
        ticks1 - ticks0 <= 5,
        "the lane worker used {} clock ticks in 1 s with a full CQ (it spins)",
        ticks1 - ticks0
    );
    assert!(got.iter().all(|c| c.res == 0), "NOP results: {got:?}");
    assert_eq!(
        uds,
        (1..=64).collect::<Vec<_>>(),
        "each NOP completes exactly once"
    );
    ctx.close();
    kmod::assert_kernel_log_clean_since(&mark);
}

// ---------------------------------------------------------------------------------------
// 6. limits for unprivileged users
// ---------------------------------------------------------------------------------------

#[test]
fn unprivileged_limits_hold() {
    let Some(mark) = begin(
        "limits",
        "uid 65534 gets EMFILE after max_user_contexts contexts while root still gets one; \
         RLIMIT_MEMLOCK 0 makes an unprivileged SETUP ENOMEM; idle_ms above max_idle_ms and \
         helpers above max_helpers are refused",
    ) else {
        return;
    };
    // Rust module parameters have no sysfs entry in 7.3: where none is shown, the
    // module's defaults (what vm-test loads it with) apply.
    let param = |name: &str, default: u64| {
        let v = kmod::module_param(name);
        (
            v.unwrap_or(default),
            if v.is_some() { "sysfs" } else { "default" },
        )
    };
    let (per_user, per_user_from) = param("max_user_contexts", 8);
    let (max_idle, max_idle_from) = param("max_idle_ms", 1000);
    let (max_helpers, max_helpers_from) = param("max_helpers", 16);
    println!(
        "module parameters: max_user_contexts {per_user} ({per_user_from}), max_idle_ms \
         {max_idle} ({max_idle_from}), max_helpers {max_helpers} ({max_helpers_from})"
    );

    // Contexts until refused, as uid 65534; root asks for one while they are held.
    let mut child = kmod::fork_reporting(|io| {
        kmod::set_rlimit(libc::RLIMIT_MEMLOCK, 256 << 20);
        kmod::become_nobody();
        let mut held = Vec::new();
        let mut err = 0;
        while held.len() < 1000 {
            match Ctx::new(kmod::params(1, 8, 16)) {
                Ok(c) => held.push(c),
                Err(e) => {
                    err = e;
                    break;
                }
            }
        }
        io.say(&format!("contexts={} {err}", held.len()));
        io.wait_go();
        0
    });
    let got = child
        .value("contexts", LIMIT + LIMIT)
        .expect("the child's count");
    let (count, err) = got.split_once(' ').unwrap();
    let (count, err): (u64, i32) = (count.parse().unwrap(), err.parse().unwrap());
    let root = Ctx::new(kmod::params(1, 8, 16));
    let root_res = root.as_ref().map(|_| ()).map_err(|&e| errno_name(e));
    drop(root);
    child.go();
    assert_eq!(child.exit_code("contexts child", LIMIT), Some(0));
    println!(
        "uid {NOBODY}: {count} contexts, then {}; root meanwhile: {root_res:?}",
        errno_name(err)
    );

    // RLIMIT_MEMLOCK 0 and no CAP_IPC_LOCK: the rings cannot be charged.
    let mut child = kmod::fork_reporting(|io| {
        kmod::set_rlimit(libc::RLIMIT_MEMLOCK, 0);
        kmod::become_nobody();
        let r = Ctx::new(kmod::params(1, 8, 16)).map(|_| ());
        io.say(&format!("memlock={r:?}"));
        0
    });
    let memlock = child.value("memlock", LIMIT);
    assert_eq!(child.exit_code("memlock child", LIMIT), Some(0));
    println!("uid {NOBODY} with RLIMIT_MEMLOCK 0: SETUP {memlock:?}");

    // The idle spin and the helper count are bounded.
    let idle = |ms: u32| {
        Ctx::new(SetupParams {
            idle_ms: ms,
            ..kmod::params(1, 8, 16)
        })
        .map(|_| ())
    };
    let idle_600s = idle(600_000);
    let idle_above = idle(max_idle as u32 + 1);
    let idle_max = idle(max_idle as u32);
    let too_many_helpers = max_helpers as u32 + 1;
    let helpers_above = Ctx::new(SetupParams {
        helpers: too_many_helpers,
        ..kmod::params(1, 8, 16)
    })
    .map(|_| ());
    println!(
        "idle_ms 600000: {idle_600s:?}; max_idle_ms + 1: {idle_above:?}; max_idle_ms: \
         {idle_max:?}; helpers max_helpers + 1: {helpers_above:?}"
    );

    let limit = per_user;
    assert_eq!(err, libc::EMFILE, "what ended uid {NOBODY}'s SETUPs");
    assert!(
        count <= limit,
        "uid {NOBODY} got {count} contexts (max_user_contexts {limit})"
    );
    assert_eq!(
        root_res,
        Ok(()),
        "root's SETUP while uid {NOBODY} holds its contexts"
    );
    assert_eq!(
        memlock.as_deref(),
        Some(format!("{:?}", Err::<(), i32>(libc::ENOMEM)).as_str()),
        "unprivileged SETUP with RLIMIT_MEMLOCK 0"
    );
    assert_eq!(idle_600s, Err(libc::EINVAL), "idle_ms 600000");
    assert_eq!(idle_above, Err(libc::EINVAL), "idle_ms max_idle_ms + 1");
    assert_eq!(idle_max, Ok(()), "idle_ms = max_idle_ms");
    if too_many_helpers > fastio::uapi::MAX_HELPERS {
        // Above the ABI's own bound as well: either refusal will do.
        assert!(
            matches!(helpers_above, Err(libc::E2BIG) | Err(libc::EINVAL)),
            "helpers {too_many_helpers}: {helpers_above:?}"
        );
    } else {
        assert_eq!(helpers_above, Err(libc::E2BIG), "helpers above max_helpers");
    }
    kmod::assert_kernel_log_clean_since(&mark);
}

// ---------------------------------------------------------------------------------------
// 7. RLIMIT_FSIZE
// ---------------------------------------------------------------------------------------

/// Two writes of 8192 bytes (at 0, then at 4096) with `write` into a fresh file at
/// `path`: the two results (count or -errno) and the file's size.
fn two_writes(path: &Path, mut write: impl FnMut(&File, u64) -> i64) -> (i64, i64, u64) {
    let f = common::rw_file(path);
    let a = write(&f, 0);
    let b = write(&f, 4096);
    let size = f.metadata().unwrap().len();
    (a, b, size)
}

#[test]
fn rlimit_fsize_applies_to_ring_writes() {
    let Some(mark) = begin(
        "fsize",
        "with RLIMIT_FSIZE 4096 (SIGXFSZ ignored) a ring WRITE of 8192 bytes stops at 4096 \
         and the next is EFBIG, like write(2)",
    ) else {
        return;
    };
    let mut dirs = vec![PathBuf::from("/tmp")];
    if let Ok(s) = std::env::var("FASTIO_SCRATCH") {
        dirs.push(PathBuf::from(s));
    }
    let me = std::process::id();
    let child_dirs = dirs.clone();
    let mut child = kmod::fork_reporting(move |io| {
        // SAFETY: ignoring SIGXFSZ in this single-purpose child.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        let mut ctx = Ctx::started(kmod::params(1, 8, 16));
        kmod::set_rlimit(libc::RLIMIT_FSIZE, 4096);
        let data = vec![0x5au8; 8192];
        let mut ud = 0;
        for (i, dir) in child_dirs.iter().enumerate() {
            let ring = two_writes(&dir.join(format!("fastio-hostile-{me}-ring")), |f, off| {
                ud += 1;
                ctx.register(f.as_raw_fd(), i as u32).unwrap();
                let r = ctx.call(
                    0,
                    kmod::write(i as u32, data.as_ptr(), 8192, off, ud),
                    LIMIT,
                );
                let _ = ctx.unregister(i as u32);
                r.map_or(i64::MIN, i64::from)
            });
            let sys = two_writes(&dir.join(format!("fastio-hostile-{me}-sys")), |f, off| {
                // SAFETY: pwrite from a live buffer of 8192 bytes.
                let r =
                    unsafe { libc::pwrite(f.as_raw_fd(), data.as_ptr().cast(), 8192, off as i64) };
                if r < 0 {
                    -(kmod::errno() as i64)
                } else {
                    r as i64
                }
            });
            io.say(&format!("fsize={} {ring:?} {sys:?}", dir.display()));
        }
        0
    });
    let mut lines = Vec::new();
    for _ in &dirs {
        lines.push(child.value("fsize", LIMIT + LIMIT));
    }
    assert_eq!(child.exit_code("fsize child", LIMIT + LIMIT), Some(0));
    for dir in &dirs {
        for which in ["ring", "sys"] {
            let _ = std::fs::remove_file(dir.join(format!("fastio-hostile-{me}-{which}")));
        }
    }
    for line in &lines {
        println!("RLIMIT_FSIZE 4096, (ring WRITE, WRITE, size) then write(2)'s: {line:?}");
    }
    let want = format!("{:?}", (4096i64, -(libc::EFBIG as i64), 4096u64));
    for (dir, line) in dirs.iter().zip(&lines) {
        let line = line.as_deref().unwrap_or("none");
        let tag = format!("{} ", dir.display());
        let rest = line.strip_prefix(&tag).unwrap_or(line);
        assert_eq!(
            rest,
            format!("{want} {want}"),
            "in {}: (first WRITE, second WRITE, file size) through the ring, then with \
             pwrite(2)",
            dir.display()
        );
    }
    kmod::assert_kernel_log_clean_since(&mark);
}

// ---------------------------------------------------------------------------------------
// Review findings
// ---------------------------------------------------------------------------------------

#[test]
fn accept_into_a_busy_slot_keeps_the_connection() {
    let Some(mark) = begin(
        "accept_busy",
        "ACCEPT into a busy slot completes with -EBUSY and the connection is accepted by a \
         later ACCEPT",
    ) else {
        return;
    };
    let mut ctx = Ctx::started(kmod::params(1, 8, 16));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (busy, _peer) = UnixStream::pair().unwrap();
    ctx.register(listener.as_raw_fd(), 0).unwrap();
    ctx.register(busy.as_raw_fd(), 1).unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let first = ctx.call(0, kmod::accept(0, 1, 1), LIMIT);
    let second = ctx.call(0, kmod::accept(0, 2, 2), LIMIT);
    println!("ACCEPT into busy slot 1: {first:?}; then ACCEPT into slot 2: {second:?}");
    assert_eq!(first, Some(-libc::EBUSY), "ACCEPT into a busy slot");
    assert_eq!(
        second,
        Some(2),
        "the connection was lost: a later ACCEPT did not get it within {LIMIT:?}"
    );
    let accepted = ctx.install(2).unwrap();
    let accepted = TcpStream::from(accepted);
    assert_eq!(
        accepted.peer_addr().unwrap(),
        client.local_addr().unwrap(),
        "slot 2 holds the client's connection"
    );
    ctx.close();
    kmod::assert_kernel_log_clean_since(&mark);
}

#[test]
fn cancellation_follows_the_file_not_the_slot() {
    let Some(mark) = begin(
        "cancel",
        "a RECV waiting on file A survives UNREGISTER of its slot (io_uring semantics) or \
         completes -ECANCELED at once; a CLOSE of file B later put into the same slot \
         cancels B's RECV and not A's",
    ) else {
        return;
    };
    let mut ctx = Ctx::started(kmod::params(1, 8, 16));
    let (mut peer_a, a) = UnixStream::pair().unwrap();
    let (_peer_b, b) = UnixStream::pair().unwrap();
    let mut buf = [0u8; 128];
    ctx.register(a.as_raw_fd(), 0).unwrap();
    ctx.submit(0, kmod::recv(0, buf.as_mut_ptr(), 64, 10));
    assert!(
        ctx.wait_stats(LIMIT, |s| s.parked >= 1),
        "the RECV on A did not wait for readiness"
    );
    assert_eq!(ctx.unregister(0), Ok(0));
    // Cancelled at once, or still waiting on A (its own reference keeps A).
    let after_unregister = ctx.wait_for(10, Duration::from_millis(500)).map(|c| c.res);
    ctx.register(b.as_raw_fd(), 0).unwrap();
    ctx.submit(0, kmod::recv(0, buf[64..].as_mut_ptr(), 64, 11));
    assert!(
        ctx.wait_stats(LIMIT, |s| s.parked >= 2),
        "the RECV on B did not wait for readiness"
    );
    ctx.submit(0, kmod::close(0, 12));
    let close = ctx.wait_for(12, LIMIT).map(|c| c.res);
    let b_recv = ctx.wait_for(11, LIMIT).map(|c| c.res);
    let a_recv = match after_unregister {
        Some(r) => Some(r),
        None => {
            // A's RECV must still be waiting for A's data, not cancelled by B's CLOSE.
            let early = ctx.wait_for(10, Duration::ZERO).map(|c| c.res);
            peer_a.write_all(b"data").unwrap();
            early.or_else(|| ctx.wait_for(10, LIMIT).map(|c| c.res))
        }
    };
    println!(
        "RECV on A right after UNREGISTER: {after_unregister:?}; CLOSE of B in the same \
         slot: {close:?}, RECV on B: {b_recv:?}; RECV on A in the end: {a_recv:?}"
    );
    assert_eq!(close, Some(0), "CLOSE");
    assert_eq!(
        b_recv,
        Some(-libc::ECANCELED),
        "RECV waiting on the closed file B"
    );
    match after_unregister {
        Some(r) => assert_eq!(r, -libc::ECANCELED, "RECV on A completed at UNREGISTER"),
        None => assert_eq!(
            a_recv,
            Some(4),
            "RECV on A (unregistered earlier) was cancelled by the CLOSE of another file in \
             its old slot, or never completed"
        ),
    }
    assert_eq!(ctx.stats().pending, 0);
    ctx.close();
    kmod::assert_kernel_log_clean_since(&mark);
}

#[test]
fn setuid_after_setup_applies_to_requests() {
    let Some(mark) = begin(
        "setuid",
        "after setuid(65534), a ring WRITE to root-only /proc/sys/vm/drop_caches (opened as \
         root) fails as write(2) on an equally old descriptor does",
    ) else {
        return;
    };
    let mut child = kmod::fork_reporting(|io| {
        let mut ctx = Ctx::started(kmod::params(1, 8, 16));
        let open = || {
            OpenOptions::new()
                .write(true)
                .open("/proc/sys/vm/drop_caches")
                .expect("open drop_caches as root")
        };
        let (ring_file, sys_file) = (open(), open());
        ctx.register(ring_file.as_raw_fd(), 0).unwrap();
        // SAFETY: glibc applies these to every thread of the process (the lane and
        // helper threads are interrupted and call RUN_* again).
        unsafe {
            assert_eq!(libc::setgid(NOBODY), 0);
            assert_eq!(libc::setuid(NOBODY), 0);
        }
        let data = b"1\n";
        let ring = ctx.call(0, kmod::write(0, data.as_ptr(), 2, OFF_CURRENT, 1), LIMIT);
        // SAFETY: write from a live 2-byte buffer.
        let sys = unsafe { libc::write(sys_file.as_raw_fd(), data.as_ptr().cast(), 2) };
        let sys = if sys < 0 { -kmod::errno() } else { sys as i32 };
        io.say(&format!("setuid={ring:?} {sys}"));
        0
    });
    let got = child.value("setuid", LIMIT + LIMIT);
    assert_eq!(child.exit_code("setuid child", LIMIT + LIMIT), Some(0));
    println!("after setuid({NOBODY}): (ring WRITE, write(2)) = {got:?}");
    let got = got.expect("the child's report");
    let (ring, sys) = got.split_once(' ').unwrap();
    let sys: i32 = sys.parse().unwrap();
    assert!(
        sys < 0,
        "write(2) after setuid succeeded ({sys}): nothing to compare with"
    );
    assert_eq!(
        ring,
        format!("{:?}", Some(sys)),
        "the ring WRITE after setuid({NOBODY}) did not fail like write(2): it ran with the \
         credentials of SETUP time"
    );
    kmod::assert_kernel_log_clean_since(&mark);
}

#[test]
fn lane_workers_are_threads_of_the_process() {
    let Some(mark) = begin(
        "threads",
        "the lane workers are threads of the process (fastio-lane-N in /proc/self/task) and \
         the CPU time of a NOP flood is theirs",
    ) else {
        return;
    };
    let me = std::process::id();
    let mut ctx = Ctx::started(SetupParams {
        idle_ms: 50,
        ..kmod::params(2, 64, 64)
    });
    if !kmod::is_v1() {
        ctx.wait_threads_running(LIMIT);
    }
    let lanes = common::threads_of(me, "fastio-lane-");
    let helpers = common::helpers_of(me);
    let kthreads: Vec<String> = common::workers_of(me)
        .into_iter()
        .filter(|n| !n.starts_with("fastio-lane-"))
        .collect();
    println!(
        "threads of {me}: lanes {lanes:?}, helpers {helpers:?}; module kernel threads {kthreads:?}"
    );
    let ticks = |lane| {
        kmod::lane_worker_dir(me, lane)
            .and_then(|d| kmod::cpu_ticks(&d))
            .unwrap_or(0)
    };
    let before = ticks(0);
    let t0 = Instant::now();
    let mut done = 0u64;
    while t0.elapsed() < Duration::from_secs(2) {
        for ud in 0..32 {
            assert!(ctx.push(0, &kmod::nop(ud)));
        }
        ctx.publish(0);
        done += ctx.wait(32, LIMIT).len() as u64;
    }
    let after = ticks(0);
    println!(
        "{done} NOPs on lane 0 in {:.1} s; its worker's CPU time +{} ticks",
        t0.elapsed().as_secs_f64(),
        after - before
    );
    assert_eq!(
        lanes,
        vec!["fastio-lane-0".to_string(), "fastio-lane-1".to_string()]
    );
    assert_eq!(helpers.len() as u32, ctx.helpers());
    assert!(kthreads.is_empty(), "module kernel threads: {kthreads:?}");
    assert!(
        after > before,
        "the NOP flood cost lane 0's thread no CPU time"
    );
    ctx.close();
    kmod::assert_kernel_log_clean_since(&mark);
}
