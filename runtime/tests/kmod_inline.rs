//! `ENTER_INLINE` (config `kmod_inline`) on the module: a serving thread whose lane thread
//! sleeps runs the lane's work itself instead of waking it.
//!
//! A ping-pong over a TCP pair (the peer answers each message only after it has read it,
//! so every RECV waits for readiness while the serving thread waits in `ENTER`), with a
//! lane thread that sleeps between messages (`idle_ms` = 1): with `kmod_inline =
//! "always"` the requests run inline (`Stats::inline_ops` grows by at least the number of
//! requests) and the lane thread stays mostly asleep (`lane_wakes` well below the number
//! of messages); with `"never"` nothing runs inline. Every message comes back byte for
//! byte either way.
//!
//! `kmod_defer` (`ENTER_DEFER`): a RECV that becomes ready while the serving thread is in
//! user space waits for its next `ENTER` (the sleeping lane thread is not woken); without
//! it the lane thread is woken and completes the RECV at once.
//!
//! Runs where /dev/fastio exists (inside the VM: `make vm-test`); elsewhere SKIP.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use fastio::uapi::Stats;
use fastio::{BackendKind, Config, InlineMode, Proactor};

mod common;

const ROUNDS: u64 = 200;
const MSG: usize = 32;
const LIMIT: Option<Duration> = Some(Duration::from_secs(30));

fn stats(p: &Proactor) -> Stats {
    p.kernel_stats()
        .expect("the kmod backend has kernel stats")
        .expect("FASTIO_GET_STATS")
}

/// Waits for the completion `ud` (the only one expected) and returns it.
fn one(p: &mut Proactor, ud: u64) -> fastio::Completion {
    let n = p.wait(1, LIMIT).unwrap();
    assert_eq!(n, 1, "no completion within {LIMIT:?}");
    let c = p.completions().next().unwrap();
    assert_eq!(c.user_data, ud);
    c
}

/// A one-lane kmod proactor (`idle_ms` = 1) with the `kmod_inline` and `kmod_defer`
/// given, and a TCP pair: (proactor, peer, the server end, its slot).
fn connected(mode: InlineMode, defer: bool) -> (Proactor, TcpStream, TcpStream, fastio::Slot) {
    let cfg = Config {
        backend: BackendKind::Kmod,
        max_ker_worker: 1,
        idle_ms: 1,
        kmod_inline: mode,
        kmod_defer: defer,
        ..Config::default()
    };
    let mut p = Proactor::new(&cfg).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    s.set_nonblocking(true).unwrap();
    let slot = p.register(&s).unwrap();
    (p, peer, s, slot)
}

/// `ROUNDS` messages from the peer, each read through the ring and sent back; returns the
/// counters accumulated during the exchange.
fn ping_pong(mode: InlineMode) -> (u64, u64) {
    let (mut p, mut peer, _s, slot) = connected(mode, true);

    let peer_thread = std::thread::spawn(move || {
        let mut back = [0u8; MSG];
        for i in 0..ROUNDS {
            let msg = [i as u8; MSG];
            peer.write_all(&msg).unwrap();
            peer.read_exact(&mut back).unwrap();
            assert_eq!(back, msg, "message {i} came back changed");
        }
    });
    let before = stats(&p);
    for i in 0..ROUNDS {
        p.recv(slot, vec![0; MSG], 0..MSG, 2 * i)
            .map_err(|r| r.error)
            .unwrap();
        let mut c = one(&mut p, 2 * i);
        let mut got = c.buf.take().unwrap();
        let n = c.io_result().unwrap();
        // The peer writes one message and waits for it: a short read takes the rest.
        let mut have = n;
        while have < MSG {
            p.recv(slot, vec![0; MSG - have], 0..MSG - have, 2 * i)
                .map_err(|r| r.error)
                .unwrap();
            let mut c = one(&mut p, 2 * i);
            let part = c.io_result().unwrap();
            assert!(part > 0, "EOF in message {i}");
            got[have..have + part].copy_from_slice(&c.buf.take().unwrap()[..part]);
            have += part;
        }
        p.send(slot, got, 0..MSG, 2 * i + 1)
            .map_err(|r| r.error)
            .unwrap();
        assert_eq!(one(&mut p, 2 * i + 1).result, MSG as i32);
    }
    peer_thread.join().unwrap();
    let after = stats(&p);
    let (ops, wakes) = (
        after.inline_ops - before.inline_ops,
        after.lane_wakes - before.lane_wakes,
    );
    println!(
        "kmod_inline = {}: {ROUNDS} messages, {} requests, {ops} run inline, lane thread \
         woken {wakes} times",
        mode.as_str(),
        after.ops - before.ops
    );
    (ops, wakes)
}

#[test]
fn inline_callers_do_the_sleeping_lane_s_work() {
    if !common::have_module("inline_callers_do_the_sleeping_lane_s_work") {
        return;
    }
    let (ops, wakes) = ping_pong(InlineMode::Always);
    // Two requests per message at least; a lane thread that happens to be awake (it
    // polls for idle_ms after any wakeup) keeps some of them.
    assert!(
        ops >= ROUNDS,
        "only {ops} requests ran inline for {ROUNDS} messages"
    );
    assert!(
        wakes < ROUNDS / 2,
        "the lane thread was woken {wakes} times in {ROUNDS} messages"
    );

    // Without inline the lane thread does everything: how often it had to be woken
    // depends on timing (a thread still polling needs no wakeup), so it is printed only.
    let (ops, _) = ping_pong(InlineMode::Never);
    assert_eq!(ops, 0, "kmod_inline = never ran requests inline");
}

/// A RECV parks while the serving thread is in user space (not in `ENTER`), then its data
/// arrives. Returns whether its completion appeared before the thread entered again, and
/// how often the lane thread was woken meanwhile.
fn ready_while_away(defer: bool) -> (bool, u64) {
    let (mut p, mut peer, _s, slot) = connected(InlineMode::Always, defer);
    // The RECV runs inline in this submit, finds nothing and parks; the thread leaves
    // the module (the lane thread, with inline callers, sleeps at once).
    p.recv(slot, vec![0; MSG], 0..MSG, 1)
        .map_err(|r| r.error)
        .unwrap();
    p.submit().unwrap();
    assert_eq!(p.reap(), 0, "the RECV completed without data");
    let before = stats(&p);
    peer.write_all(&[7u8; MSG]).unwrap();
    // Watch the CQ (memory only, no system call into the module) for up to 2 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut early = false;
    while std::time::Instant::now() < deadline {
        if p.reap() > 0 {
            early = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let wakes = stats(&p).lane_wakes - before.lane_wakes;
    // The next ENTER completes it either way, with every byte.
    let mut c = if early {
        p.completions().next().unwrap()
    } else {
        one(&mut p, 1)
    };
    assert_eq!(c.io_result().unwrap(), MSG);
    assert_eq!(c.buf.take().unwrap(), vec![7u8; MSG]);
    println!("kmod_defer = {defer}: completed before the next ENTER: {early}, lane thread woken {wakes} times");
    (early, wakes)
}

#[test]
fn deferred_readiness_waits_for_the_next_enter() {
    if !common::have_module("deferred_readiness_waits_for_the_next_enter") {
        return;
    }
    // ENTER_DEFER: nothing wakes the sleeping lane thread; the serving thread's next
    // ENTER runs the request.
    let (early, wakes) = ready_while_away(true);
    assert!(
        !early,
        "with kmod_defer the RECV completed while the thread was away"
    );
    assert_eq!(wakes, 0, "with kmod_defer the lane thread was woken");
    // Without it the data wakes the lane thread, which completes the RECV at once.
    let (early, wakes) = ready_while_away(false);
    assert!(
        early,
        "without kmod_defer the RECV waited for the next ENTER"
    );
    assert!(
        wakes >= 1,
        "without kmod_defer the lane thread was not woken"
    );
}
