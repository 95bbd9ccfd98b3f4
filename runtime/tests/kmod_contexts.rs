//! fastio.ko context lifecycle at scale and across processes, with raw system calls:
//! 1,000 contexts opened, given their lane and helper threads, shut down and closed in a
//! loop (the module is loaded with `max_contexts=64`, so one context that outlived its
//! descriptor and mapping would exhaust the limit long before the end), and a context
//! descriptor passed to another process by SCM_RIGHTS is refused there. (A process killed
//! in the middle of a NOP flood: kmod_lifetime.)
//!
//! Runs where /dev/fastio exists (inside the VM: `make vm-test`); elsewhere each test
//! prints SKIP and returns.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fastio::uapi::{EnterArgs, SetupParams, ENTER_SQ_WAKEUP};

mod common;
#[path = "common/kmod.rs"]
mod kmod;

use kmod::Ctx;

/// Set (to the role) when this binary is re-run as a helper child.
const ROLE_VAR: &str = "FASTIO_CONTEXTS_CHILD";

/// A one-lane context (8/16 entries, 4 file slots, idle 1 ms).
fn small() -> SetupParams {
    SetupParams {
        idle_ms: 1,
        max_files: 4,
        ..kmod::params(1, 8, 16)
    }
}

/// Maps the whole ring area of the context behind `file`; `Err(errno)` on refusal.
fn map_rings(file: &File, len: usize) -> Result<memmap2::MmapRaw, i32> {
    memmap2::MmapOptions::new()
        .len(len)
        .map_raw(file)
        .map_err(|e| e.raw_os_error().unwrap_or(0))
}

/// 1,000 contexts, each set up, mapped, given its threads (one NOP goes through), shut
/// down and released, alternating the order of munmap and close (the mapping holds the
/// file: the context must end at whichever comes last). With `max_contexts=64` a leaked
/// context would make SETUP fail with EMFILE; at the end no worker of this process
/// remains, the module's reference count and vmalloc usage are back.
#[test]
fn thousand_contexts_open_and_close() {
    if !common::have_module("thousand_contexts_open_and_close") {
        return;
    }
    let me = std::process::id();
    let vmalloc_before = common::meminfo_kib("VmallocUsed");
    let refcnt_before = kmod::module_refcnt();
    let t0 = Instant::now();
    for i in 0..1000u64 {
        let mut ctx = Ctx::new(small()).unwrap_or_else(|e| panic!("context {i}: errno {e}"));
        ctx.start_threads();
        let r = ctx.call(0, kmod::nop(i), Duration::from_secs(10));
        assert_eq!(r, Some(0), "context {i}: NOP");
        let results = ctx.shutdown_and_join();
        assert!(
            results.iter().all(|(_, r)| r.is_ok()),
            "context {i}: {results:?}"
        );
        if i % 2 == 0 {
            ctx.unmap();
            ctx.close_fd();
        } else {
            ctx.close_fd();
            ctx.unmap();
        }
    }
    let elapsed = t0.elapsed();
    common::wait_until(
        "all workers of this process gone",
        Duration::from_secs(10),
        || common::workers_of(me).is_empty(),
    );
    if let Some(r0) = refcnt_before {
        common::wait_until(
            "the module reference count back",
            Duration::from_secs(10),
            || kmod::module_refcnt() == Some(r0),
        );
    }
    let vmalloc_after = common::meminfo_kib("VmallocUsed");
    println!(
        "1000 contexts set up, mapped, served and released in {:.2} s ({:.2} ms each); \
         VmallocUsed {vmalloc_before} KiB -> {vmalloc_after} KiB",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    // Each context's rings are at least 3 pages; 1000 leaked would be > 12 MiB.
    assert!(
        vmalloc_after < vmalloc_before + 2048,
        "vmalloc grew by {} KiB over 1000 released contexts",
        vmalloc_after.saturating_sub(vmalloc_before)
    );
    // And the module still hands out contexts.
    Ctx::new(small()).expect("SETUP after the loop");
}

/// Not a test by itself: with FASTIO_CONTEXTS_CHILD=receiver (set by
/// `a_context_passed_by_scm_rights_is_refused`), receives a context descriptor on stdin
/// (a Unix socket) and prints the errno of each thing it tries with it.
#[test]
fn child_receiver() {
    if std::env::var(ROLE_VAR).as_deref() != Ok("receiver") {
        return;
    }
    // SAFETY: the parent made stdin a Unix stream socket for this child; it is owned
    // here from now on.
    let sock = unsafe { UnixStream::from_raw_fd(0) };
    let ctx = File::from(kmod::recv_fd(&sock));
    let fd = ctx.as_raw_fd();
    let code = |r: Result<i32, i32>| match r {
        Ok(_) => "accepted".to_string(),
        Err(e) => e.to_string(),
    };
    let enter = EnterArgs {
        flags: ENTER_SQ_WAKEUP,
        ..EnterArgs::default()
    };
    // The test harness prints "test child_receiver ... " without a newline first.
    println!();
    println!("enter={}", code(kmod::enter(fd, enter)));
    println!("register={}", code(kmod::register(fd, &[0 as RawFd], &[0])));
    let len: usize = std::env::var("FASTIO_CONTEXTS_LEN")
        .unwrap()
        .parse()
        .unwrap();
    println!("mmap={}", code(map_rings(&ctx, len).map(|_| 0)));
    if !kmod::is_v1() {
        println!("run_lane={}", code(kmod::run_lane(fd, 0, 0)));
        println!("run_helper={}", code(kmod::run_helper(fd, 0, 0)));
        println!("shutdown={}", code(kmod::shutdown(fd)));
    }
    println!("done");
}

/// A context descriptor sent to another process by SCM_RIGHTS gives that process no
/// access: ENTER, REGISTER_FILES, mmap (and on ABI 2 RUN_LANE, RUN_HELPER, SHUTDOWN) all
/// fail with EPERM there, and the owner's context keeps working.
#[test]
fn a_context_passed_by_scm_rights_is_refused() {
    if !common::have_module("a_context_passed_by_scm_rights_is_refused") {
        return;
    }
    let mut ctx = Ctx::started(small());
    let len = ctx.p.mmap_size as usize;
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_receiver",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_VAR, "receiver")
        .env("FASTIO_CONTEXTS_LEN", len.to_string())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    kmod::send_fd(&ours, ctx.fd()).expect("sendmsg");
    let out = BufReader::new(child.stdout.take().unwrap());
    let lines: Vec<String> = out.lines().map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success(), "child failed: {lines:?}");
    let eperm = libc::EPERM.to_string();
    let mut refused = vec!["enter", "register", "mmap"];
    if !kmod::is_v1() {
        refused.extend(["run_lane", "run_helper", "shutdown"]);
    }
    for what in refused {
        let got = lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{what}=")))
            .unwrap_or_else(|| panic!("child did not report {what}: {lines:?}"));
        assert_eq!(got, eperm, "{what} by the receiving process: {lines:?}");
    }
    assert_eq!(
        ctx.call(0, kmod::nop(1), Duration::from_secs(10)),
        Some(0),
        "the owner's context after the receiver tried"
    );
}
