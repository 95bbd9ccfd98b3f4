//! The event loop's wait is never held up by a peer that does not read: with a socket
//! whose request is stuck in flight (bytes queued behind it), `epoll_wait` still returns
//! as soon as another descriptor is ready. This test binary runs itself again with the
//! shim preloaded on every backend available here, and measures how long `epoll_wait`
//! takes to return after another thread makes a pipe readable, without and with such a
//! socket.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::probe::*;
use support::{common, flavors, pattern};

const ROLE: &str = "FASTIO_SHIM_WAIT_PROBE";
/// Wake-ups measured per phase.
const SAMPLES: usize = 300;

/// Nanoseconds since `base`.
fn since(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

/// Measures wake-ups of `epoll_wait` on `ep` (which watches the pipe `rd`): another
/// thread writes a byte to `wr` `SAMPLES` times, at moments of its choosing, and records
/// when; returns the delays between each wake-up and the oldest write it found unread,
/// sorted.
fn wake_delays(ep: i32, rd: i32, wr: i32) -> Vec<Duration> {
    let base = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..SAMPLES).map(|_| AtomicU64::new(0)).collect());
    let at = sent.clone();
    let writer = thread::spawn(move || {
        for (i, t) in at.iter().enumerate() {
            // Pacing: 0.3 to 1.5 ms between writes, varied.
            thread::sleep(Duration::from_micros(300 + (i as u64 * 397) % 1200));
            t.store(since(base), Ordering::SeqCst);
            // SAFETY: one byte from a valid buffer to our pipe.
            assert_eq!(unsafe { libc::write(wr, b"x".as_ptr().cast(), 1) }, 1);
        }
    });
    let mut delays = Vec::with_capacity(SAMPLES);
    let mut consumed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumed < SAMPLES {
        assert!(Instant::now() < deadline, "only {consumed} writes seen");
        let mut ev = [libc::epoll_event { events: 0, u64: 0 }; 8];
        // SAFETY: `ev` has room for 8 events.
        let n = unsafe { libc::epoll_wait(ep, ev.as_mut_ptr(), 8, 100) };
        let woke = since(base);
        if ev[..n.max(0) as usize].iter().any(|e| e.u64 == rd as u64) {
            let mut b = [0u8; 64];
            // SAFETY: reading into a valid buffer from our pipe.
            let got = unsafe { libc::read(rd, b.as_mut_ptr().cast(), b.len()) };
            if got > 0 {
                let first = sent[consumed].load(Ordering::SeqCst);
                delays.push(Duration::from_nanos(woke.saturating_sub(first)));
                consumed += got as usize;
            }
        }
    }
    writer.join().unwrap();
    delays.sort();
    delays
}

#[test]
fn wait_child() {
    let Some((ep, l)) = child_setup(ROLE) else {
        return;
    };
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) },
        0
    );
    let (rd, wr) = (fds[0], fds[1]);
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: rd as u64,
    };
    // SAFETY: a valid event for our epoll set and pipe.
    assert_eq!(
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, rd, &mut ev) },
        0
    );
    let base = wake_delays(ep, rd, wr);
    // A socket whose peer never reads: its request is stuck in flight, with bytes
    // queued behind it.
    let (s, _c) = small_pair(&l);
    let off = fill_stuck(ep, &s, &pattern(8 << 20, 1));
    let stuck = wake_delays(ep, rd, wr);
    let q = |v: &[Duration], p| common::percentile(v, p).as_micros();
    println!(
        "wake us: without median {} p90 {}; with a stuck socket ({off} bytes accepted) \
         median {} p90 {}",
        q(&base, 0.5),
        q(&base, 0.9),
        q(&stuck, 0.5),
        q(&stuck, 0.9)
    );
    println!(
        "wait result {} {} {} {}",
        q(&base, 0.5),
        q(&base, 0.9),
        q(&stuck, 0.5),
        q(&stuck, 0.9)
    );
    drop(s);
    println!("wait ok");
}

#[test]
fn a_stuck_peer_does_not_delay_the_event_loop() {
    for f in flavors("a_stuck_peer_does_not_delay_the_event_loop") {
        let env = [("FASTIO_SHIM_SOCKET_ALLOWANCE", "1M")];
        let dir = support::TempDir::new("wait");
        let conf = dir.path().join("fastio.conf");
        std::fs::write(&conf, f.conf_text()).unwrap();
        let mut cmd = common::rerun("wait_child", ROLE, "1");
        cmd.env("LD_PRELOAD", support::shim_path())
            .env("FASTIO_CONF", &conf)
            .envs(env);
        let out = support::run_command(cmd, Duration::from_secs(120));
        let text = out.text();
        assert!(
            out.status.success() && text.contains("wait ok"),
            "[{}] {text}\n{}",
            f.name,
            out.stderr
        );
        let v: Vec<u128> = text
            .split("wait result ")
            .nth(1)
            .map(|r| {
                r.split_whitespace()
                    .take(4)
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(v.len(), 4, "[{}] {text}", f.name);
        println!(
            "[{}] wake-up delay (us): without {v:?}[0..2], with a stuck socket [2..4]",
            f.name
        );
        // A wait that looked at completions first would add up to its slice (1 ms)
        // to every wake-up: half of it at the median.
        assert!(
            v[2] < v[0] + 250 && v[3] < v[1] + 500,
            "[{}] wake-ups delayed by a stuck socket: without median {} p90 {} us, with \
             median {} p90 {} us",
            f.name,
            v[0],
            v[1],
            v[2],
            v[3]
        );
    }
}
