//! fastio.ko context lifetime in the ABI 2 thread model: the lane workers are threads of
//! the process (`fastio-lane-N`, helpers `fastio-help-N`) that live in the kernel inside
//! RUN_LANE / RUN_HELPER; SHUTDOWN makes them return 0; a process killed with SIGKILL in
//! the middle of a NOP flood, or one that exits without closing anything, frees its
//! context (threads gone, the module's reference count back, SETUP works afterwards).
//! Runs where /dev/fastio exists (inside the VM: `make vm-test`); elsewhere each test
//! prints SKIP and returns.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fastio::uapi::SetupParams;

mod common;
#[path = "common/kmod.rs"]
mod kmod;

use kmod::Ctx;

/// What the helper child does (see `child_helper`).
const MODE_VAR: &str = "FASTIO_LIFETIME_CHILD";
const LIMIT: Duration = Duration::from_secs(10);

/// Not a test by itself: with FASTIO_LIFETIME_CHILD set (by the tests below, re-running
/// this binary): "flood" submits NOPs on two lanes without pause until killed, after
/// saying "ready"; "exit" opens a 3-lane context, runs 64 NOPs, says "ready" and exits
/// without closing anything (its threads still in the kernel).
#[test]
fn child_helper() {
    let Ok(mode) = std::env::var(MODE_VAR) else {
        return;
    };
    let lanes = if mode == "flood" { 2 } else { 3 };
    let mut ctx = Ctx::started(SetupParams {
        idle_ms: 1000,
        ..kmod::params(lanes, 64, 64)
    });
    let say_ready = || {
        // The test harness prints "test child_helper ... " without a newline first.
        println!();
        println!("ready");
        std::io::stdout().flush().unwrap();
    };
    if mode == "flood" {
        let mut next = 0u64;
        let mut said = false;
        loop {
            for lane in 0..lanes {
                for _ in 0..32 {
                    assert!(ctx.push(lane, &kmod::nop(next)));
                    next += 1;
                }
                ctx.publish(lane);
            }
            let want = 32 * lanes as usize;
            assert_eq!(ctx.wait(want, LIMIT).len(), want, "NOPs lost");
            if !said && next > 10_000 {
                say_ready();
                said = true;
            }
        }
    }
    for lane in 0..lanes {
        for i in 0..64 / lanes as u64 {
            assert!(ctx.push(lane, &kmod::nop(i)));
        }
        ctx.publish(lane);
    }
    let want = (64 / lanes * lanes) as usize;
    assert_eq!(ctx.wait(want, LIMIT).len(), want);
    say_ready();
    // Leak the context: descriptor, mapping and threads stay until the process ends.
    std::mem::forget(ctx);
    std::process::exit(0)
}

/// Starts `child_helper` in `mode` and waits for its "ready".
fn spawn_child(mode: &str) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_helper", "--nocapture", "--test-threads=1"])
        .env(MODE_VAR, mode)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let ready = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("ready"));
    assert!(ready, "the {mode} child could not get going");
    child
}

/// After a process is gone: its lane workers are gone, the module reference count is
/// back at `refcnt0`, and a new context can be set up.
fn assert_freed(pid: u32, refcnt0: Option<i64>, what: &str) {
    let t0 = Instant::now();
    common::wait_until(&format!("the lane workers of {what} gone"), LIMIT, || {
        common::workers_of(pid).is_empty()
    });
    if let Some(r0) = refcnt0 {
        common::wait_until(
            &format!("the module reference count back after {what}"),
            LIMIT,
            || kmod::module_refcnt() == Some(r0),
        );
    }
    println!(
        "{what}: everything freed {:.1} ms after it was reaped",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    Ctx::new(kmod::params(1, 8, 16)).expect("SETUP afterwards");
}

#[test]
fn lane_threads_are_threads_of_the_process_and_shutdown_ends_them() {
    if !common::have_module("lane_threads_shutdown") {
        return;
    }
    if kmod::is_v1() {
        println!("SKIP lane_threads_shutdown: the loaded module speaks ABI 1 (kernel threads)");
        return;
    }
    let me = std::process::id();
    let mut ctx = Ctx::started(SetupParams {
        idle_ms: 50,
        ..kmod::params(2, 8, 16)
    });
    ctx.wait_threads_running(LIMIT);
    for lane in 0..2 {
        assert_eq!(ctx.call(lane, kmod::nop(lane as u64), LIMIT), Some(0));
    }
    assert_eq!(
        common::threads_of(me, "fastio-lane-"),
        vec!["fastio-lane-0", "fastio-lane-1"]
    );
    assert_eq!(
        common::helpers_of(me),
        vec!["fastio-help-0", "fastio-help-1"]
    );
    assert_eq!(common::workers_of(me).len(), 2, "no module kernel threads");
    // The threads the test started, by tid, are the ones /proc lists.
    let mut started: Vec<String> = ctx
        .thread_tids()
        .iter()
        .map(|(name, tid)| {
            let comm = std::fs::read_to_string(format!("/proc/{me}/task/{tid}/comm"))
                .unwrap_or_else(|e| panic!("{name} ({tid}) not in /proc/{me}/task: {e}"));
            assert_eq!(comm.trim(), name);
            name.clone()
        })
        .collect();
    started.sort();
    assert_eq!(started.len(), 4);
    let results = ctx.shutdown_and_join();
    assert!(
        results.iter().all(|(_, r)| r.is_ok()),
        "RUN_LANE/RUN_HELPER after SHUTDOWN: {results:?}"
    );
    assert!(common::threads_of(me, "fastio-").is_empty());
    ctx.close();
}

#[test]
fn sigkill_mid_flood_frees_everything() {
    if !common::have_module("sigkill_mid_flood") {
        return;
    }
    let refcnt0 = kmod::module_refcnt();
    let mut child = spawn_child("flood");
    let pid = child.id();
    assert_eq!(common::workers_of(pid).len(), 2, "2 workers while flooding");
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success());
    assert_freed(pid, refcnt0, "a process killed mid-flood");
}

#[test]
fn exit_without_close_frees_the_context() {
    if !common::have_module("exit_without_close") {
        return;
    }
    let refcnt0 = kmod::module_refcnt();
    let mut child = spawn_child("exit");
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    assert_freed(pid, refcnt0, "a process that exited without closing");
}
