//! An idle threads-backend worker spins for `idle_ms`, then sets NEED_WAKEUP and sleeps
//! (its CPU time stops growing); a later submission wakes it and completes. An idle
//! io_uring SQPOLL thread stays asleep while its owner waits with a timeout.
//! Own test binary: it looks the polling threads up by name in /proc/self/task.

use std::time::{Duration, Instant};

use fastio::{BackendKind, Config, Proactor};

/// utime + stime, in clock ticks, of this process's thread named `name`.
fn thread_cpu_ticks(name: &str) -> u64 {
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = entry.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // Fields after the parenthesised comm: state is field 3; utime 14, stime 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        return f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    }
    panic!("no thread named {name}");
}

#[test]
fn idle_worker_sleeps_with_need_wakeup_and_wakes_on_submit() {
    let cfg = Config {
        backend: BackendKind::Threads,
        idle_ms: 50,
        ..Config::default()
    };
    let mut p = Proactor::new(&cfg).unwrap();
    p.nop(1).unwrap();
    assert_eq!(p.wait(1, Some(Duration::from_secs(5))).unwrap(), 1);
    p.completions().for_each(drop);

    // After idle_ms the worker announces its sleep.
    let t0 = Instant::now();
    while p.lane_asleep(0) != Some(true) {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "worker never set NEED_WAKEUP"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let slept_after = t0.elapsed();
    println!("NEED_WAKEUP set {slept_after:?} after the last completion (idle_ms = 50)");

    // Asleep: over 1 s its CPU time stays near zero (ticks are 10 ms; spinning would
    // burn ~100 of them).
    let before = thread_cpu_ticks("fastio-thr-0");
    std::thread::sleep(Duration::from_secs(1));
    let used = thread_cpu_ticks("fastio-thr-0") - before;
    println!("worker CPU over 1 s idle: {used} tick(s)");
    assert!(used <= 2, "idle worker used {used} ticks in 1 s");
    assert_eq!(p.lane_asleep(0), Some(true));

    // A submission wakes it.
    let t1 = Instant::now();
    p.nop(2).unwrap();
    assert_eq!(
        p.wait(1, Some(Duration::from_secs(5))).unwrap(),
        1,
        "wakeup lost"
    );
    let c = p.next_completion().unwrap();
    assert_eq!((c.user_data, c.result), (2, 0));
    println!("woken NOP completed in {:?}", t1.elapsed());

    // And it spins again (not asleep) right after the wakeup, then sleeps again.
    let t2 = Instant::now();
    while p.lane_asleep(0) != Some(true) {
        assert!(
            t2.elapsed() < Duration::from_secs(2),
            "worker did not sleep again"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The name of this process's SQPOLL thread (`iou-sqp-<tid of its creator>`), if any.
fn sqpoll_thread() -> Option<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .find(|c| c.starts_with("iou-sqp-"))
}

/// An idle uring+SQPOLL proactor whose owner waits in a loop with a short timeout (as the
/// echo server does to check for shutdown) leaves the sleeping SQ thread asleep: a wait
/// with nothing to submit must not wake it, or every wait costs `idle_ms` of spinning.
#[test]
fn timed_waits_do_not_wake_an_idle_sqpoll_thread() {
    let cfg = Config {
        backend: BackendKind::Uring,
        sqpoll: true,
        idle_ms: 50,
        ..Config::default()
    };
    let mut p = Proactor::new(&cfg).unwrap();
    if !p.backend().sqpoll {
        println!("SKIP timed_waits_do_not_wake_an_idle_sqpoll_thread: SQPOLL refused here");
        return;
    }
    p.nop(1).unwrap();
    assert_eq!(p.wait(1, Some(Duration::from_secs(5))).unwrap(), 1);
    p.completions().for_each(drop);
    let Some(sqp) = sqpoll_thread() else {
        println!(
            "SKIP timed_waits_do_not_wake_an_idle_sqpoll_thread: no iou-sqp thread among \
             this process's threads (the SQ thread's CPU cannot be measured here)"
        );
        return;
    };
    std::thread::sleep(Duration::from_millis(200)); // past idle_ms: the thread sleeps

    // A RECV that never completes keeps something in flight, as the echo server's ACCEPT
    // does, so each wait really waits. 2 s of timed waits (100 ms each) with nothing to
    // submit: had each woken the thread, it would spin idle_ms (50 ms) per wait, ~100
    // ticks in all.
    let (quiet, peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let slot = p.register(&quiet).unwrap();
    p.recv(slot, vec![0; 16], 0..16, 9).unwrap();
    p.submit().unwrap();
    std::thread::sleep(Duration::from_millis(200)); // the thread sleeps again
    let before = thread_cpu_ticks(&sqp);
    let t0 = Instant::now();
    let mut waits = 0;
    while t0.elapsed() < Duration::from_secs(2) {
        assert_eq!(p.wait(1, Some(Duration::from_millis(100))).unwrap(), 0);
        waits += 1;
    }
    let used = thread_cpu_ticks(&sqp) - before;
    println!("SQ thread CPU over {waits} timed waits (2 s) while idle: {used} tick(s)");
    assert!(
        used <= 5,
        "timed waits woke the idle SQ thread: {used} ticks in 2 s"
    );

    // It still wakes for real work.
    drop(peer);
    assert_eq!(p.wait(1, Some(Duration::from_secs(5))).unwrap(), 1);
    assert_eq!(p.next_completion().unwrap().user_data, 9);
    p.nop(2).unwrap();
    p.submit().unwrap();
    assert_eq!(p.wait(1, Some(Duration::from_secs(5))).unwrap(), 1);
    assert_eq!(p.next_completion().unwrap().user_data, 2);
}
