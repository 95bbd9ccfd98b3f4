//! NEED_WAKEUP boundary: thousands of submissions timed around the moment an idle
//! worker goes to sleep; every one must complete (no lost wakeup).

use std::time::{Duration, Instant};

use fastio::{BackendKind, Config, Proactor};

/// Thousands of submissions right at the sleep boundary: none may be lost.
#[test]
fn no_lost_wakeup_at_the_idle_boundary() {
    let cfg = Config {
        backend: BackendKind::Threads,
        idle_ms: 1,
        ..Config::default()
    };
    let mut p = Proactor::new(&cfg).unwrap();
    let start = Instant::now();
    for i in 0..2000u64 {
        // Sleep around the 1 ms idle boundary, varying the phase.
        std::thread::sleep(Duration::from_micros(700 + (i % 7) * 100));
        p.nop(i).unwrap();
        let n = p.wait(1, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(n, 1, "submission {i} lost at the idle boundary");
        assert_eq!(p.next_completion().unwrap().user_data, i);
        assert!(start.elapsed() < Duration::from_secs(60), "too slow");
    }
}
