//! NEED_WAKEUP boundary: thousands of submissions timed around the moment an idle
//! worker goes to sleep; every one must complete (no lost wakeup).
//!
//! The same loop runs against every executor that sleeps with a NEED_WAKEUP flag: the
//! in-process threads backend, io_uring's SQPOLL thread, and the kernel module's workers
//! (where `/dev/fastio` exists, i.e. inside the VM). Backends that cannot run here are
//! skipped with the reason printed.

mod common;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fastio::backend::DEVICE_PATH;
use fastio::{BackendKind, Config, InlineMode, Proactor};

/// The loops measure sleep phases: run them one at a time, not side by side.
static SERIAL: Mutex<()> = Mutex::new(());

/// Thousands of submissions right at the sleep boundary of a 1 ms idle time: none may
/// be lost.
fn boundary_loop(name: &str, p: &mut Proactor) {
    let start = Instant::now();
    for i in 0..2000u64 {
        // Sleep around the 1 ms idle boundary, varying the phase.
        std::thread::sleep(Duration::from_micros(700 + (i % 7) * 100));
        p.nop(i).unwrap();
        let n = p.wait(1, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(n, 1, "[{name}] submission {i} lost at the idle boundary");
        assert_eq!(p.next_completion().unwrap().user_data, i);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "[{name}] too slow"
        );
    }
}

#[test]
fn no_lost_wakeup_at_the_idle_boundary() {
    if !common::backend_selected("wakeup_boundary", BackendKind::Threads) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = Config {
        backend: BackendKind::Threads,
        idle_ms: 1,
        ..Config::default()
    };
    let mut p = Proactor::new(&cfg).unwrap();
    boundary_loop("threads", &mut p);
}

#[test]
fn no_lost_wakeup_at_the_idle_boundary_uring_sqpoll() {
    if !common::backend_selected("wakeup_boundary", BackendKind::Uring) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = Config {
        backend: BackendKind::Uring,
        sqpoll: true,
        idle_ms: 1,
        // io_uring refuses a file table larger than RLIMIT_NOFILE (often 1024).
        max_files: 64,
        ..Config::default()
    };
    let mut p = match Proactor::new(&cfg) {
        Ok(p) => p,
        Err(e) => {
            println!("SKIP wakeup_boundary [uring+sqpoll]: backend cannot run here: {e}");
            return;
        }
    };
    if !p.backend().sqpoll {
        println!("SKIP wakeup_boundary [uring+sqpoll]: SQPOLL refused here");
        return;
    }
    boundary_loop("uring+sqpoll", &mut p);
}

#[test]
fn no_lost_wakeup_at_the_idle_boundary_kmod() {
    if !Path::new(DEVICE_PATH).exists() {
        println!(
            "SKIP wakeup_boundary [kmod]: {DEVICE_PATH} not present (the module runs in the \
             VM: make vm-test)"
        );
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Both policies: the lane thread woken by ENTER, and ENTER running the work itself
    // while the lane thread sleeps (kmod_inline), which races with the thread's own sleep.
    for mode in [InlineMode::Never, InlineMode::Always] {
        let cfg = Config {
            backend: BackendKind::Kmod,
            idle_ms: 1,
            max_files: 64,
            kmod_inline: mode,
            ..Config::default()
        };
        let name = format!("kmod, kmod_inline = {}", mode.as_str());
        let mut p = Proactor::new(&cfg).unwrap_or_else(|e| panic!("{DEVICE_PATH} exists but: {e}"));
        boundary_loop(&name, &mut p);
        // With idle_ms = 1 the worker does announce its sleep, so the loop's phases
        // crossed the boundary (a worker that never sleeps would make the loop test
        // nothing).
        let t0 = Instant::now();
        while p.lane_asleep(0) != Some(true) {
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "[{name}] the worker never set NEED_WAKEUP with idle_ms = 1"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
