//! Signal handlers and the shim, on every backend available here (this test binary runs
//! itself again with the shim preloaded): a handler that writes to a queued socket while
//! the main thread is inside the shim neither deadlocks nor sends its bytes ahead of
//! those queued before it ran; `exit` from a handler does not wait for a slow peer.

mod support;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use support::probe::*;
use support::{common, flavors, pattern, run_command, shim_path, TempDir};

const HANDLER_ROLE: &str = "FASTIO_SHIM_HANDLER_PROBE";
const EXIT_ROLE: &str = "FASTIO_SHIM_EXIT_PROBE";

/// Length of the main thread's messages: `M`, 8 digits, then `m`s.
const MAIN_LEN: usize = 1000;
/// Length of the handler's messages: `H`, 8 digits (its number), 8 digits (how many main
/// messages had been written when it ran), then `h`s.
const HANDLER_LEN: usize = 100;
/// Main messages written at least; more until enough handlers ran.
const MAIN_MIN: u64 = 20_000;
/// Handler writes wanted.
const HANDLERS_MIN: u64 = 500;

static FD: AtomicI32 = AtomicI32::new(-1);
static MAIN_DONE: AtomicU64 = AtomicU64::new(0);
static HANDLED: AtomicU64 = AtomicU64::new(0);
static SHORT: AtomicBool = AtomicBool::new(false);

/// Writes `n` as 8 decimal digits into `out`.
fn digits(out: &mut [u8], mut n: u64) {
    for d in out[..8].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

fn parse8(b: &[u8]) -> u64 {
    std::str::from_utf8(&b[..8]).unwrap().parse().unwrap()
}

extern "C" fn on_usr1(_: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno.
    let saved = unsafe { *libc::__errno_location() };
    let k = MAIN_DONE.load(Ordering::SeqCst);
    let seq = HANDLED.load(Ordering::SeqCst);
    let mut msg = [b'h'; HANDLER_LEN];
    msg[0] = b'H';
    digits(&mut msg[1..], seq);
    digits(&mut msg[9..], k);
    // SAFETY: `msg` is readable for its length.
    let r = unsafe { libc::write(FD.load(Ordering::SeqCst), msg.as_ptr().cast(), msg.len()) };
    if r == HANDLER_LEN as isize {
        HANDLED.store(seq + 1, Ordering::SeqCst);
    } else if r >= 0 {
        SHORT.store(true, Ordering::SeqCst);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// Where handler messages `from..to` are in `got` (for a failure message): the byte
/// offset of each, or "missing".
fn whereabouts(got: &[u8], from: u64, to: u64) -> String {
    (from..to.min(from + 16))
        .map(|n| {
            let mut tag = [0u8; 9];
            tag[0] = b'H';
            digits(&mut tag[1..], n);
            let at = got.windows(tag.len()).position(|w| w == tag);
            at.map_or(format!("{n}: missing"), |a| {
                let h = &got[a..(a + HANDLER_LEN).min(got.len())];
                format!(
                    "{n}: at byte {a} (ran after {} main messages)",
                    parse8(&h[9..])
                )
            })
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the stream: the main messages, whole and in order, with the handlers'
/// messages (whole, in order) among them, each after every main message written before
/// it ran. Returns the number of handler messages.
fn check_stream(got: &[u8], mains: u64) -> u64 {
    let mut main_bytes = 0usize;
    let mut handlers = 0u64;
    let mut i = 0;
    while i < got.len() {
        if got[i] == b'H' {
            let h = &got[i..i + HANDLER_LEN];
            let seq = parse8(&h[1..]);
            assert_eq!(
                seq,
                handlers,
                "handler messages out of order: {handlers} expected at byte {i} (after {} \
                 main messages), {seq} found; {}",
                main_bytes / MAIN_LEN,
                whereabouts(got, handlers, seq)
            );
            let k = parse8(&h[9..]);
            assert!(
                (main_bytes / MAIN_LEN) as u64 >= k,
                "handler message {handlers} overtook queued bytes: it ran after {k} main \
                 messages, but came after {} of them",
                main_bytes / MAIN_LEN
            );
            assert!(
                h[17..].iter().all(|&b| b == b'h'),
                "handler message altered"
            );
            handlers += 1;
            i += HANDLER_LEN;
            continue;
        }
        let seq = (main_bytes / MAIN_LEN) as u64;
        let at = main_bytes % MAIN_LEN;
        let want = match at {
            0 => b'M',
            1..=8 => b'0' + (seq / 10u64.pow(8 - at as u32) % 10) as u8,
            _ => b'm',
        };
        assert_eq!(got[i], want, "main message {seq} altered at byte {at}");
        main_bytes += 1;
        i += 1;
    }
    assert_eq!(main_bytes as u64, mains * MAIN_LEN as u64, "main bytes");
    handlers
}

/// The main thread writes numbered messages (pumping in between, so that it spends much
/// of its time inside the shim) while another thread signals it; the handler writes its
/// own messages to the same socket.
#[test]
fn handler_child() {
    let Some((ep, l)) = child_setup(HANDLER_ROLE) else {
        return;
    };
    let (s, c) = pair(&l);
    let r = reader(c, None);
    FD.store(s.as_raw_fd(), Ordering::SeqCst);
    // SAFETY: installing a handler that only writes and touches atomics.
    unsafe { libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t) };
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let signaller = thread::spawn(move || {
        let t = Instant::now();
        let mut sent = 0u32;
        while !stop.load(Ordering::SeqCst) && sent < 200_000 && t.elapsed().as_secs() < 20 {
            // SAFETY: `me` runs until `stop` is set.
            unsafe { libc::pthread_kill(me, libc::SIGUSR1) };
            sent += 1;
            // Pacing of the signals, not synchronisation.
            thread::sleep(Duration::from_micros(20));
        }
    });
    let started = Instant::now();
    let mut seq = 0u64;
    while seq < MAIN_MIN
        || HANDLED.load(Ordering::SeqCst) < HANDLERS_MIN && started.elapsed().as_secs() < 20
    {
        let mut msg = [b'm'; MAIN_LEN];
        msg[0] = b'M';
        digits(&mut msg[1..], seq);
        // Never short: the allowance is larger than everything written.
        assert_eq!(
            raw_write(s.as_raw_fd(), &msg),
            MAIN_LEN as isize,
            "main write"
        );
        MAIN_DONE.store(seq + 1, Ordering::SeqCst);
        pump(ep, 0);
        seq += 1;
    }
    done.store(true, Ordering::SeqCst);
    signaller.join().unwrap();
    pump(ep, 10);
    drop(s);
    let got = join_pumping(ep, vec![r]).pop().unwrap();
    assert!(!SHORT.load(Ordering::SeqCst), "a handler's write was short");
    let handlers = check_stream(&got, seq);
    assert_eq!(
        handlers,
        HANDLED.load(Ordering::SeqCst),
        "handler messages lost"
    );
    assert!(handlers >= HANDLERS_MIN, "only {handlers} handler writes");
    // SAFETY: closing the epoll descriptor made above.
    unsafe { libc::close(ep) };
    println!("handlers ok ({seq} main messages, {handlers} from handlers)");
}

#[test]
fn a_handler_writing_while_the_thread_is_inside_the_shim_waits_behind_the_queue() {
    for f in flavors("a_handler_writing_while_the_thread_is_inside_the_shim") {
        // Allowances large enough that no write is ever short.
        let env = [
            ("FASTIO_SHIM_SOCKET_ALLOWANCE", "256M"),
            ("FASTIO_SHIM_MAX_QUEUED", "512M"),
        ];
        let st = run_child(&f, "handler_child", HANDLER_ROLE, &env, "handlers");
        // Some handlers ran while the thread was inside the shim: deferred.
        assert!(st.get("deferred") > 0, "[{}] {st:?}", f.name);
        assert_eq!(st.get("deferred_dropped"), 0, "[{}] {st:?}", f.name);
    }
}

/// Exit status of the `exit_child` role.
const EXIT_CODE: i32 = 3;

extern "C" fn exit_on_alarm(_: libc::c_int) {
    // SAFETY: exiting the process from the handler, as Redis's second SIGINT does.
    unsafe { libc::exit(EXIT_CODE) };
}

/// CLOCK_MONOTONIC in nanoseconds (the same clock in every process).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for writes.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A signal handler calls `exit` while bytes are queued for a peer that reads, but
/// slowly (64 KiB every 20 ms): a drain at exit would wait seconds while the bytes
/// trickle out. The role's value says where the thread is when the signal comes:
/// `outside` the shim (waiting in `pause`; the shim's lock is free), or `busy` writing
/// and waiting in `epoll_wait`, mostly inside the shim (then its lock is the thread's
/// own). Prints when it sends the signal.
#[test]
fn exit_child() {
    let Some((ep, l)) = child_setup(EXIT_ROLE) else {
        return;
    };
    let busy = std::env::var(EXIT_ROLE).is_ok_and(|v| v == "busy");
    let (s, mut c) = pair(&l);
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                return;
            }
            // Pacing of the reader: about 3 MB/s.
            thread::sleep(Duration::from_millis(20));
        }
    });
    // SAFETY: installing a handler that exits the process.
    unsafe {
        libc::signal(
            libc::SIGALRM,
            exit_on_alarm as *const () as libc::sighandler_t,
        )
    };
    let stream = pattern(64 << 20, 11);
    // The shim holds bytes for the socket: its allowance is used up.
    write_until_eagain(ep, &s, &stream);
    pump(ep, 0);
    // The signal goes to this thread (a process-directed one may land on another).
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    thread::spawn(move || {
        println!("signal at {}", monotonic_ns());
        // SAFETY: `me` is this thread, which waits for it below.
        unsafe { libc::pthread_kill(me, libc::SIGALRM) };
    });
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if busy {
            raw_write(s.as_raw_fd(), &stream[..64 << 10]);
            pump(ep, 0);
        } else {
            // SAFETY: pause has no preconditions; the signal ends the process.
            unsafe { libc::pause() };
        }
    }
    println!("no signal");
}

#[test]
fn exit_from_a_signal_handler_does_not_wait_for_a_slow_peer() {
    for (f, mode) in flavors("exit_from_a_signal_handler_does_not_wait_for_a_slow_peer")
        .iter()
        .flat_map(|f| [(f, "outside"), (f, "busy")])
    {
        let dir = TempDir::new("exit");
        let conf = dir.path().join("fastio.conf");
        std::fs::write(&conf, f.conf_text()).unwrap();
        let mut cmd = common::rerun("exit_child", EXIT_ROLE, mode);
        cmd.env("LD_PRELOAD", shim_path()).env("FASTIO_CONF", &conf);
        // run_command panics if the child hangs.
        let out = run_command(cmd, Duration::from_secs(30));
        let ended = monotonic_ns();
        assert_eq!(
            out.status.code(),
            Some(EXIT_CODE),
            "[{}] {}\n{}",
            f.name,
            out.text(),
            out.stderr
        );
        let text = out.text();
        let at: u64 = text
            .split("signal at ")
            .nth(1)
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("[{}] no signal time in {text}", f.name));
        let took = Duration::from_nanos(ended.saturating_sub(at));
        println!("[{}] {mode}: exit {took:?} after the signal", f.name);
        assert!(
            took < Duration::from_millis(500),
            "[{}] {mode}: exit took {took:?} after the signal",
            f.name
        );
    }
}
