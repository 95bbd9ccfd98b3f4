//! The proactor test suite, run against every backend this machine can run:
//! io_uring with and without SQPOLL, the in-process threads backend with one and with
//! two lanes, and the kernel module (two lanes) where `/dev/fastio` exists (inside the
//! VM: `make vm-test`). A backend that cannot run here is skipped with the reason
//! printed.
//!
//! Part 1 of the kernel module executes only NOP and CLOSE; its other opcodes complete
//! with `-EOPNOTSUPP`. A test that meets such a completion on kmod prints a SKIP line
//! and stops for that flavor (see [`unsupported`]), so the suite covers more of the
//! module by itself as opcodes arrive.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::Flavor;
use fastio::{BackendKind, Config, Proactor, RejectReason};

fn flavors() -> Vec<Flavor> {
    let base = Config {
        sq_entries: 64,
        cq_entries: 128,
        max_files: 256,
        idle_ms: 5,
        ..Config::default()
    };
    common::flavors(base)
}

/// Runs `f` once per flavor that can open here; prints a skip line for the others.
fn each_backend(test: &str, f: impl Fn(&Flavor, &mut Proactor)) {
    common::each_flavor(test, flavors(), Proactor::new, |p| p.backend().sqpoll, f);
}

/// Whether `result` says that the kernel module does not implement the request's opcode
/// yet (`-EOPNOTSUPP`, kmod only); prints the SKIP line for `test` if so. Other backends
/// implement every opcode, so there the result stays an error for the test to catch.
fn unsupported(test: &str, fl: &Flavor, result: i32) -> bool {
    if fl.config.backend == BackendKind::Kmod && result == -libc::EOPNOTSUPP {
        println!(
            "SKIP {test} [{}]: the kernel module does not implement this opcode yet \
             (-EOPNOTSUPP)",
            fl.name
        );
        return true;
    }
    false
}

const T: Option<Duration> = Some(Duration::from_secs(10));

/// Waits for exactly one completion and returns it.
fn one(p: &mut Proactor) -> fastio::Completion {
    let n = p.wait(1, T).expect("wait");
    assert!(n >= 1, "no completion within 10 s");
    p.next_completion().expect("ready completion")
}

fn tcp_pair() -> (TcpListener, TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (l, c, s)
}

#[test]
fn nop_flood_ten_times_cq_exactly_once() {
    each_backend("nop_flood", |fl, p| {
        let total = 10 * fl.config.cq_entries as u64 * p.lanes() as u64;
        let cap = p.lanes() as usize * p.lane_limit() as usize;
        let mut next = 0u64;
        let mut seen = HashSet::new();
        let mut busy = 0u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while (seen.len() as u64) < total {
            assert!(Instant::now() < deadline, "[{}] flood stalled", fl.name);
            while next < total {
                match p.nop(next) {
                    Ok(()) => next += 1,
                    Err(r) => {
                        assert_eq!(r.reason, RejectReason::Busy);
                        busy += 1;
                        break;
                    }
                }
            }
            assert!(p.in_flight() <= cap, "[{}] in flight above CQ", fl.name);
            p.wait(1, T).unwrap();
            for c in p.completions() {
                assert_eq!(c.result, 0);
                assert!(
                    seen.insert(c.user_data),
                    "[{}] duplicate {}",
                    fl.name,
                    c.user_data
                );
            }
        }
        assert_eq!(seen.len() as u64, total);
        assert!(
            busy > 0,
            "[{}] pushing 10x the CQ never hit the limit",
            fl.name
        );
        assert_eq!(p.in_flight(), 0);
    });
}

#[test]
fn full_sq_rejects_and_returns_buffer() {
    each_backend("full_sq", |fl, p| {
        let (_l, _c, s) = tcp_pair();
        let slot = p.register(&s).unwrap();
        // Without submitting, the slot's lane SQ (64 entries) fills before its CQ limit.
        let mut queued = 0;
        let rejected = loop {
            match p.recv(slot, vec![7u8; 16], 0..16, queued) {
                Ok(()) => queued += 1,
                Err(r) => break r,
            }
            assert!(queued <= 1000, "[{}] never rejected", fl.name);
        };
        assert_eq!(rejected.reason, RejectReason::Busy);
        assert_eq!(
            rejected.buf.as_deref(),
            Some(&[7u8; 16][..]),
            "buffer handed back"
        );
        assert!(queued >= 1 && queued as u32 <= p.lane_limit());
        // Closing the slot cancels every parked RECV; all complete exactly once.
        p.submit().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(r) = p.close(slot, u64::MAX) {
            assert_eq!(r.reason, RejectReason::Busy, "[{}]", fl.name);
            assert!(Instant::now() < deadline, "[{}] SQ never drained", fl.name);
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut left = queued + 1;
        let mut got = HashSet::new();
        while left > 0 {
            let c = one(p);
            if c.user_data != u64::MAX {
                if unsupported("full_sq", fl, c.result) {
                    return;
                }
                assert_eq!(c.result, -libc::ECANCELED, "[{}]", fl.name);
                assert!(c.buf.is_some());
            }
            assert!(got.insert(c.user_data));
            left -= 1;
        }
    });
}

#[test]
fn accept_recv_send_roundtrip() {
    each_backend("roundtrip", |fl, p| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let ls = p.register(&l).unwrap();
        p.accept(ls, 1).unwrap();
        p.submit().unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        let c = one(p);
        assert_eq!(c.user_data, 1);
        if unsupported("roundtrip", fl, c.result) {
            return;
        }
        let conn = c
            .accepted
            .unwrap_or_else(|| panic!("[{}] accept: {}", fl.name, c.result));
        assert_eq!(c.result, conn.index() as i32);

        p.recv(conn, vec![0; 64], 0..64, 2).unwrap();
        p.submit().unwrap();
        client.write_all(b"hello fastio").unwrap();
        let c = one(p);
        assert_eq!(c.result, 12, "[{}]", fl.name);
        let buf = c.buf.unwrap();
        assert_eq!(&buf[..12], b"hello fastio");

        p.send(conn, buf, 6..12, 3).unwrap();
        let c = one(p);
        assert_eq!((c.user_data, c.result), (3, 6));
        let mut got = [0u8; 6];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"fastio");

        // The peer closes: RECV completes with 0.
        drop(client);
        p.recv(conn, vec![0; 8], 0..8, 4).unwrap();
        assert_eq!(one(p).result, 0);
        p.close(conn, 5).unwrap();
        assert_eq!(one(p).result, 0);
        assert_eq!(p.in_flight(), 0);
    });
}

#[test]
fn file_read_write_writev_offsets() {
    each_backend("files", |fl, p| {
        let dir = std::env::temp_dir().join(format!("fastio-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(fl.name.replace([' ', '+'], "_"));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let slot = p.register(&f).unwrap();
        p.write(slot, b"0123456789".to_vec(), 0..10, Some(0), 1)
            .unwrap();
        let r = one(p).result;
        if unsupported("files", fl, r) {
            std::fs::remove_file(&path).ok();
            return;
        }
        assert_eq!(r, 10, "[{}]", fl.name);
        p.writev(slot, vec![b"ab".to_vec(), b"cde".to_vec()], Some(3), 2)
            .unwrap();
        let c = one(p);
        assert_eq!(c.result, 5);
        assert_eq!(c.bufs, vec![b"ab".to_vec(), b"cde".to_vec()]);
        p.read(slot, vec![0; 32], 4..32, Some(1), 3).unwrap();
        let c = one(p);
        assert_eq!(c.result, 9);
        assert_eq!(&c.buf.unwrap()[4..13], b"12abcde89");
        assert_eq!(std::fs::read(&path).unwrap(), b"012abcde89");
        p.unregister(slot).unwrap();
        std::fs::remove_file(&path).ok();
    });
}

#[test]
fn invalid_requests_complete_with_errors() {
    each_backend("invalid", |fl, p| {
        let (_l, _c, s) = tcp_pair();
        let slot = p.register(&s).unwrap();
        // Reserved field set: -EINVAL. Unknown opcode: -EINVAL. Slot beyond the table:
        // -EBADF. Empty slot: -EBADF.
        let cases = [
            (
                fastio::uapi::Sqe {
                    opcode: fastio::uapi::OP_NOP,
                    resv0: 1,
                    user_data: 10,
                    ..Default::default()
                },
                -libc::EINVAL,
            ),
            (
                fastio::uapi::Sqe {
                    opcode: 200,
                    user_data: 11,
                    ..Default::default()
                },
                -libc::EINVAL,
            ),
            (
                fastio::uapi::Sqe {
                    opcode: fastio::uapi::OP_CLOSE,
                    slot: 1 << 30,
                    user_data: 12,
                    ..Default::default()
                },
                -libc::EBADF,
            ),
            (
                fastio::uapi::Sqe {
                    opcode: fastio::uapi::OP_SEND,
                    slot: slot.index() + 1,
                    user_data: 13,
                    ..Default::default()
                },
                -libc::EBADF,
            ),
        ];
        for (sqe, want) in cases {
            // SAFETY: none of these requests references memory.
            unsafe { p.submit_raw(0, sqe) }.unwrap();
            let c = one(p);
            // An empty slot is only noticed by an opcode that looks its file up.
            if want == -libc::EBADF && unsupported("invalid (SEND on an empty slot)", fl, c.result)
            {
                continue;
            }
            assert_eq!(
                (c.user_data, c.result),
                (sqe.user_data, want),
                "[{}]",
                fl.name
            );
        }
        // Misuse of the safe API is refused before it reaches the ring.
        let r = p.recv(slot, vec![0; 4], 2..9, 1).unwrap_err();
        assert_eq!(r.reason, RejectReason::BadRange);
        assert_eq!(r.buf.unwrap().len(), 4);
        p.unregister(slot).unwrap();
        let r = p.send(slot, vec![1], 0..1, 1).unwrap_err();
        assert_eq!(r.reason, RejectReason::BadSlot);
        assert!(p.writev(slot, vec![], None, 1).is_err());
    });
}

#[test]
fn wait_times_out_and_close_cancels_pending_recv() {
    each_backend("timeout_cancel", |fl, p| {
        let (_l, _c, s) = tcp_pair();
        let slot = p.register(&s).unwrap();
        p.recv(slot, vec![0; 8], 0..8, 1).unwrap();
        let t0 = Instant::now();
        let n = p.wait(1, Some(Duration::from_millis(200))).unwrap();
        let took = t0.elapsed();
        if n > 0 {
            let c = p.next_completion().unwrap();
            if unsupported("timeout_cancel", fl, c.result) {
                return;
            }
            panic!("[{}] nothing can complete, got {c:?}", fl.name);
        }
        assert!(
            took >= Duration::from_millis(150),
            "[{}] returned early: {took:?}",
            fl.name
        );
        assert!(
            took < Duration::from_secs(5),
            "[{}] timeout ignored: {took:?}",
            fl.name
        );
        p.close(slot, 2).unwrap();
        let mut res = vec![];
        while res.len() < 2 {
            let c = one(p);
            res.push((c.user_data, c.result));
        }
        res.sort();
        assert_eq!(res, vec![(1, -libc::ECANCELED), (2, 0)], "[{}]", fl.name);
        // min beyond what can arrive does not hang.
        assert_eq!(p.wait(5, None).unwrap(), 0);
    });
}

#[test]
fn install_fd_gives_a_working_descriptor() {
    each_backend("install_fd", |fl, p| {
        let (_l, mut c, s) = tcp_pair();
        let slot = p.register(&s).unwrap();
        drop(s); // the slot keeps the socket open
        let fd = p
            .install_fd(slot)
            .unwrap_or_else(|e| panic!("[{}] {e}", fl.name));
        assert!(fd.as_raw_fd() >= 0);
        let mut stream = TcpStream::from(fd);
        stream.write_all(b"via installed fd").unwrap();
        let mut got = [0u8; 16];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"via installed fd");
        p.close(slot, 1).unwrap();
        assert_eq!(one(p).result, 0);
    });
}

#[test]
fn requests_on_one_connection_stay_in_order() {
    each_backend("order", |fl, p| {
        let (_l, mut c, s) = tcp_pair();
        let slot = p.register(&s).unwrap();
        // 32 sends of distinct 1 KiB chunks queued at once arrive in order.
        let mut expect = Vec::new();
        for i in 0..32u8 {
            let chunk = vec![i; 1024];
            expect.extend_from_slice(&chunk);
            p.send(slot, chunk, 0..1024, i as u64).unwrap();
        }
        p.submit().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; 32 * 1024];
            c.read_exact(&mut got).map(|()| got)
        });
        let mut done = 0;
        while done < 32 {
            let c = one(p);
            if unsupported("order", fl, c.result) {
                // Let the reader finish: it waits for bytes that will not come.
                s.shutdown(std::net::Shutdown::Write).unwrap();
                assert!(reader.join().unwrap().is_err());
                return;
            }
            assert_eq!(c.result, 1024, "[{}]", fl.name);
            done += 1;
        }
        assert_eq!(
            reader.join().unwrap().unwrap(),
            expect,
            "[{}] bytes reordered",
            fl.name
        );
    });
}

/// Random SQEs (no file registered, so no request can touch memory) all complete, each
/// exactly once, with 0 or a negative errno; the backend survives and still works.
#[test]
fn random_sqes_complete_without_harm() {
    each_backend("random_sqes", |fl, p| {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let total = 4000u64;
        let mut sent = 0u64;
        let mut seen = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while (seen.len() as u64) < total {
            assert!(
                Instant::now() < deadline,
                "[{}] random SQEs stalled",
                fl.name
            );
            while sent < total {
                let mut raw = [0u8; 64];
                for c in raw.chunks_mut(8) {
                    c.copy_from_slice(&rnd().to_le_bytes());
                }
                // Mostly small opcodes and slots, so every decode path is reached.
                raw[0] %= fastio::uapi::OP_LAST + 1;
                if rnd() % 2 == 0 {
                    raw[1..4].fill(0);
                    raw[40..64].fill(0);
                }
                // SAFETY: Sqe is 64 bytes of plain integers: any bit pattern is valid.
                let mut sqe: fastio::uapi::Sqe = unsafe { std::mem::transmute(raw) };
                sqe.user_data = sent;
                // SAFETY: no file is registered, so no request reaches user memory: each
                // fails validation or finds an empty slot.
                match unsafe { p.submit_raw((rnd() % p.lanes() as u64) as u32, sqe) } {
                    Ok(()) => sent += 1,
                    Err(r) => {
                        assert_eq!(r.reason, RejectReason::Busy);
                        break;
                    }
                }
            }
            p.wait(1, T).unwrap();
            for c in p.completions() {
                assert!(
                    c.result <= 0,
                    "[{}] unexpected result {}",
                    fl.name,
                    c.result
                );
                assert!(
                    seen.insert(c.user_data),
                    "[{}] duplicate completion",
                    fl.name
                );
            }
        }
        // Still healthy.
        p.nop(u64::MAX).unwrap();
        assert_eq!(one(p).user_data, u64::MAX);
    });
}

/// Waits `ms` for completions that should not come (requests parked on readiness);
/// returns the first one if something completed after all.
fn settle(p: &mut Proactor, ms: u64) -> Option<fastio::Completion> {
    let n = p.wait(1, Some(Duration::from_millis(ms))).unwrap();
    (n > 0).then(|| p.next_completion().unwrap())
}

/// A slot unregistered while a RECV waits on it is not handed out again until that RECV
/// has completed: a new connection gets another slot, its requests are not stuck behind
/// the old file's, and the old slot is free again afterwards.
#[test]
fn unregister_does_not_recycle_a_busy_slot() {
    each_backend("unregister_busy", |fl, p| {
        let (_l1, mut c1, s1) = tcp_pair();
        let (_l2, mut c2, s2) = tcp_pair();
        let (_l3, _c3, s3) = tcp_pair();
        let a = p.register(&s1).unwrap();
        p.recv(a, vec![0; 8], 0..8, 1).unwrap();
        if let Some(c) = settle(p, 100) {
            if unsupported("unregister_busy", fl, c.result) {
                p.unregister(a).unwrap();
                return;
            }
            panic!("[{}] nothing can complete, got {c:?}", fl.name);
        }
        p.unregister(a).unwrap();
        let b = p.register(&s2).unwrap();
        assert_ne!(a, b, "[{}] slot reused with a request in flight", fl.name);
        p.recv(b, vec![0; 8], 0..8, 2).unwrap();
        p.submit().unwrap();
        c2.write_all(b"bbbb").unwrap();
        let c = one(p);
        assert_eq!((c.user_data, c.result), (2, 4), "[{}]", fl.name);
        // The old request still has its file: it completes with the old peer's data.
        c1.write_all(b"aaaaa").unwrap();
        let c = one(p);
        assert_eq!((c.user_data, c.result), (1, 5), "[{}]", fl.name);
        assert_eq!(&c.buf.unwrap()[..5], b"aaaaa");
        // Drained: the slot is free again (slots are handed out last-freed first).
        let again = p.register(&s3).unwrap();
        assert_eq!(again, a, "[{}] drained slot not freed", fl.name);
        for s in [b, again] {
            p.unregister(s).unwrap();
        }
        assert_eq!(p.in_flight(), 0);
    });
}

/// CLOSE's completion comes after the -ECANCELED completions of the requests it
/// cancelled (io_uring posts its own CQE first), and only then is the slot free.
#[test]
fn close_completes_after_the_requests_it_cancels() {
    each_backend("close_order", |fl, p| {
        let (_l, _c, s) = tcp_pair();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let slot = p.register(&s).unwrap();
        let ls = p.register(&l).unwrap();
        p.recv(slot, vec![0; 8], 0..8, 1).unwrap();
        p.recv(slot, vec![0; 8], 0..8, 2).unwrap();
        p.accept(ls, 3).unwrap();
        if let Some(c) = settle(p, 100) {
            if unsupported("close_order", fl, c.result) {
                return;
            }
            panic!("[{}] nothing can complete, got {c:?}", fl.name);
        }
        p.close(slot, 10).unwrap();
        p.close(ls, 11).unwrap();
        let mut order = vec![];
        while order.len() < 5 {
            let c = one(p);
            let want = if c.user_data >= 10 {
                0
            } else {
                -libc::ECANCELED
            };
            assert_eq!(c.result, want, "[{}] {c:?}", fl.name);
            order.push(c.user_data);
        }
        let pos = |ud| order.iter().position(|&u| u == ud).unwrap();
        assert!(
            pos(10) > pos(1) && pos(10) > pos(2),
            "[{}] CLOSE before the RECVs it cancelled: {order:?}",
            fl.name
        );
        assert!(
            pos(11) > pos(3),
            "[{}] CLOSE before the ACCEPT it cancelled: {order:?}",
            fl.name
        );
        assert_eq!(p.in_flight(), 0);
        // Both slots (and the ACCEPT's reserved one) are free again.
        let r = p.register(&s).unwrap();
        assert!(r == ls || r == slot, "[{}] got {r}", fl.name);
        p.unregister(r).unwrap();
    });
}

/// Dropping a proactor with a parked RECV and a parked ACCEPT cancels them at once
/// instead of waiting out the 2 s shutdown timeout.
#[test]
fn drop_with_parked_requests_is_prompt() {
    each_backend("drop_prompt", |fl, _p| {
        let mut q = Proactor::new(&fl.config).unwrap();
        let (_l, _c, s) = tcp_pair();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let slot = q.register(&s).unwrap();
        let ls = q.register(&l).unwrap();
        q.recv(slot, vec![0; 8], 0..8, 1).unwrap();
        q.accept(ls, 2).unwrap();
        if let Some(c) = settle(&mut q, 100) {
            if unsupported("drop_prompt", fl, c.result) {
                return;
            }
            panic!("[{}] nothing can complete, got {c:?}", fl.name);
        }
        assert_eq!(q.in_flight(), 2);
        let t0 = Instant::now();
        drop(q);
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(1000),
            "[{}] drop took {took:?}",
            fl.name
        );
    });
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// `wait` with no timeout returns `Interrupted` when a signal (with a handler installed
/// without SA_RESTART) reaches the waiting thread.
#[test]
fn a_signal_interrupts_an_unbounded_wait() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    static HANDLER: std::sync::Once = std::sync::Once::new();
    HANDLER.call_once(|| {
        // SAFETY: installs a handler that does nothing (async-signal-safe), no SA_RESTART.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        }
    });
    each_backend("signal_wait", |fl, p| {
        let (_l, c, s) = tcp_pair();
        let slot = p.register(&s).unwrap();
        p.recv(slot, vec![0; 8], 0..8, 1).unwrap();
        if let Some(c) = settle(p, 50) {
            if unsupported("signal_wait", fl, c.result) {
                return;
            }
            panic!("[{}] nothing can complete, got {c:?}", fl.name);
        }
        // SAFETY: pthread_self of this thread, which outlives the killer (joined below).
        let me = unsafe { libc::pthread_self() };
        let done = Arc::new(AtomicBool::new(false));
        let killer = {
            let done = Arc::clone(&done);
            let mut c = c.try_clone().unwrap();
            std::thread::spawn(move || {
                // Repeat until the waiter is back, in case a signal lands before it sleeps.
                let t0 = Instant::now();
                while !done.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                    if done.load(Ordering::SeqCst) {
                        break;
                    }
                    if t0.elapsed() > Duration::from_secs(3) {
                        // The signals did not interrupt the wait: end it with data, so
                        // that the test fails instead of hanging.
                        let _ = c.write_all(b"x");
                    } else {
                        // SAFETY: `me` is alive: it joins this thread before it ends.
                        unsafe { libc::pthread_kill(me, libc::SIGUSR1) };
                    }
                }
            })
        };
        let t0 = Instant::now();
        let r = p.wait(1, None);
        done.store(true, Ordering::SeqCst);
        killer.join().unwrap();
        // A signal still pending is delivered during this (restarted) sleep.
        std::thread::sleep(Duration::from_millis(20));
        let e = r.expect_err("a signal did not interrupt wait(1, None)");
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::Interrupted,
            "[{}] {e}",
            fl.name
        );
        assert!(t0.elapsed() < Duration::from_secs(5), "[{}]", fl.name);
        p.close(slot, 2).unwrap();
        let mut got = vec![one(p).user_data, one(p).user_data];
        got.sort();
        assert_eq!(got, vec![1, 2]);
    });
}

/// An explicit MSG_DONTWAIT makes a RECV on an empty socket complete with -EAGAIN
/// instead of waiting; with data there it receives it.
#[test]
fn recv_with_msg_dontwait_on_an_empty_socket_is_eagain() {
    each_backend("dontwait", |fl, p| {
        let (_l, mut c, s) = tcp_pair();
        let slot = p.register(&s).unwrap();
        let lane = slot.index() % p.lanes();
        let mut buf = vec![0u8; 16];
        let mut sqe = fastio::uapi::Sqe {
            opcode: fastio::uapi::OP_RECV,
            slot: slot.index(),
            addr: buf.as_mut_ptr() as u64,
            len: buf.len() as u32,
            op_flags: fastio::uapi::MSG_DONTWAIT,
            user_data: 1,
            ..Default::default()
        };
        // SAFETY: `buf` outlives the request: its completion is reaped below.
        unsafe { p.submit_raw(lane, sqe) }.unwrap();
        let r = one(p);
        if unsupported("dontwait", fl, r.result) {
            return;
        }
        assert_eq!((r.user_data, r.result), (1, -libc::EAGAIN), "[{}]", fl.name);
        c.write_all(b"now").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        sqe.user_data = 2;
        // SAFETY: as above.
        unsafe { p.submit_raw(lane, sqe) }.unwrap();
        let r = one(p);
        assert_eq!((r.user_data, r.result), (2, 3), "[{}]", fl.name);
        assert_eq!(&buf[..3], b"now");
        p.unregister(slot).unwrap();
    });
}

/// Raw requests get no slot bookkeeping: a failed raw ACCEPT into a free slot does not
/// put that slot on the free list a second time (which would hand it out twice).
#[test]
fn raw_requests_bypass_slot_bookkeeping() {
    each_backend("raw_slots", |fl, p| {
        let sqe = fastio::uapi::Sqe {
            opcode: fastio::uapi::OP_ACCEPT,
            slot: 200, // empty: the ACCEPT fails
            aux: 3,    // a free slot the proactor has not handed out
            user_data: 7,
            ..Default::default()
        };
        // SAFETY: the request references no memory.
        unsafe { p.submit_raw(0, sqe) }.unwrap();
        let c = one(p);
        assert_eq!(c.user_data, 7);
        assert!(c.result < 0, "[{}] {c:?}", fl.name);
        assert!(c.accepted.is_none());
        let socks: Vec<_> = (0..8).map(|_| tcp_pair()).collect();
        let mut slots = HashSet::new();
        for (_, _, s) in &socks {
            let slot = p
                .register(s)
                .unwrap_or_else(|e| panic!("[{}] register: {e}", fl.name));
            assert!(slots.insert(slot), "[{}] {slot} handed out twice", fl.name);
        }
        for s in slots {
            p.unregister(s).unwrap();
        }
    });
}

/// Waits for the completions of every user_data in `want` (others are a failure) and
/// returns them by user_data.
fn collect(
    fl: &Flavor,
    p: &mut Proactor,
    want: &[u64],
) -> std::collections::HashMap<u64, fastio::Completion> {
    let mut got = std::collections::HashMap::new();
    while got.len() < want.len() {
        let c = one(p);
        assert!(want.contains(&c.user_data), "[{}] stray {c:?}", fl.name);
        assert!(got.insert(c.user_data, c).is_none(), "[{}] twice", fl.name);
    }
    got
}

/// ASYNC_CANCEL: a RECV waiting for data completes with -ECANCELED (buffer back) after
/// a cancel that says 0; a cancel of nothing says -ENOENT; a RECV whose data was there
/// completes with its bytes whatever the cancel says.
#[test]
fn cancel_stops_a_waiting_recv() {
    each_backend("cancel", |fl, p| {
        let (_l, mut c, s) = tcp_pair();
        let slot = p.register(&s).unwrap();
        p.recv(slot, vec![0; 16], 0..16, 1).unwrap();
        p.cancel(1, 2).unwrap();
        let got = collect(fl, p, &[1, 2]);
        if unsupported("cancel", fl, got[&2].result) {
            return;
        }
        assert_eq!(got[&2].result, 0, "[{}] cancel found its target", fl.name);
        assert_eq!(got[&1].result, -libc::ECANCELED, "[{}]", fl.name);
        assert_eq!(got[&1].buf.as_ref().map(Vec::len), Some(16));
        // Nothing with that user_data is in flight any more.
        p.cancel(1, 3).unwrap();
        assert_eq!(collect(fl, p, &[3])[&3].result, -libc::ENOENT);
        // The connection still works: the cancelled RECV took nothing from it.
        c.write_all(b"hi").unwrap();
        p.recv(slot, vec![0; 16], 0..16, 4).unwrap();
        p.submit().unwrap();
        let got = collect(fl, p, &[4]);
        assert_eq!(got[&4].result, 2, "[{}]", fl.name);
        // Data already there: the RECV transfers it whether or not the cancel finds it.
        c.write_all(b"abc").unwrap();
        // Wait until the bytes are readable on the server side (poll, no sleep).
        let mut pfd = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 10_000) }, 1);
        p.recv(slot, vec![0; 16], 0..16, 5).unwrap();
        p.cancel(5, 6).unwrap();
        let got = collect(fl, p, &[5, 6]);
        assert!(
            got[&6].result == 0 || got[&6].result == -libc::ENOENT,
            "[{}] {}",
            fl.name,
            got[&6].result
        );
        assert!(
            got[&5].result == 3 || (got[&5].result == -libc::ECANCELED && got[&6].result == 0),
            "[{}] {}",
            fl.name,
            got[&5].result
        );
    });
}

/// CLOSE of the last reference to a connection really closes it: the peer reads end of
/// stream while the proactor (and its workers) stay up. On the kernel module the lane
/// thread that drops the last reference must let the deferred release run (it is
/// queued on that very thread); the regression left the socket open for ever.
#[test]
fn close_of_the_last_reference_sends_eof() {
    each_backend("close_eof", |fl, p| {
        let (_l, mut c, s) = tcp_pair();
        let slot = p.register(&s).unwrap();
        drop(s); // the proactor's reference is the last one now
        p.close(slot, 1).unwrap();
        let done = one(p);
        assert_eq!((done.user_data, done.result), (1, 0), "[{}]", fl.name);
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 1];
        let n = std::io::Read::read(&mut c, &mut buf)
            .unwrap_or_else(|e| panic!("[{}] no end of stream after CLOSE: {e}", fl.name));
        assert_eq!(n, 0, "[{}] read data instead of end of stream", fl.name);
        // The proactor still works afterwards (its lane thread came back).
        p.nop(2).unwrap();
        p.submit().unwrap();
        let c2 = one(p);
        assert_eq!((c2.user_data, c2.result), (2, 0), "[{}]", fl.name);
    });
}
