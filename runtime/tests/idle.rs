//! An idle threads-backend worker spins for `idle_ms`, then sets NEED_WAKEUP and sleeps
//! (its CPU time stops growing); a later submission wakes it and completes.
//! Own test binary: it looks its worker thread up by name in /proc/self/task.

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
