//! The `threads` backend against real sockets: parking, backlog, cancellation.

use super::*;
use crate::config::BackendKind;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};

/// Bypassing the proactor's in-flight limit, 10x the CQ size of NOPs is pushed while
/// nobody reaps: the worker holds what does not fit in a backlog and every
/// completion arrives exactly once.
#[test]
fn overfilled_cq_drops_nothing() {
    let cfg = Config {
        backend: BackendKind::Threads,
        sq_entries: 16,
        cq_entries: 16,
        idle_ms: 1,
        ..Config::default()
    };
    let mut b = ThreadsBackend::open(&cfg).unwrap();
    let total = 160u64;
    let mut seen = vec![0u32; total as usize];
    let mut pushed = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.contains(&0) {
        assert!(Instant::now() < deadline, "completions lost");
        while pushed < total {
            let sqe = Sqe {
                user_data: pushed,
                ..Sqe::ZERO
            };
            if !b.push(0, &sqe) {
                break;
            }
            pushed += 1;
        }
        b.submit().unwrap();
        // Let the worker overfill: wait for a full CQ before reaping.
        b.wait(16, Some(Duration::from_millis(50))).unwrap();
        b.reap(&mut |c| seen[c.user_data as usize] += 1);
    }
    assert!(seen.iter().all(|&n| n == 1), "a completion came twice");
    assert!(b.stats(0).sleeps.load(Ordering::Relaxed) > 0 || pushed == total);
}

/// A RECV that would block is parked on epoll (not retried in a loop) and completes
/// once data arrives.
#[test]
fn would_block_parks_on_readiness() {
    use std::io::Write;
    let cfg = Config {
        backend: BackendKind::Threads,
        idle_ms: 1,
        ..Config::default()
    };
    let mut b = ThreadsBackend::open(&cfg).unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    b.register(3, s.as_fd()).unwrap();
    let mut buf = [0u8; 4];
    let sqe = Sqe {
        opcode: fastio_uapi::OP_RECV,
        slot: 3,
        addr: buf.as_mut_ptr() as u64,
        len: 4,
        user_data: 9,
        ..Sqe::ZERO
    };
    assert!(b.push(0, &sqe));
    b.submit().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(b.stats(0).parked.load(Ordering::Relaxed), 1, "parked once");
    assert_eq!(b.reap(&mut |_| panic!("nothing to complete yet")), 0);
    c.write_all(b"ping").unwrap();
    b.wait(1, Some(Duration::from_secs(5))).unwrap();
    let mut got = vec![];
    b.reap(&mut |c| got.push((c.user_data, c.res)));
    assert_eq!(got, vec![(9, 4)]);
    assert_eq!(&buf, b"ping");
    assert_eq!(
        b.stats(0).parked.load(Ordering::Relaxed),
        1,
        "no busy retry"
    );
}

fn tcp_pair() -> (
    std::net::TcpListener,
    std::net::TcpStream,
    std::net::TcpStream,
) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (l, c, s)
}

fn recv_sqe(slot: u32, buf: &mut [u8], user_data: u64) -> Sqe {
    Sqe {
        opcode: fastio_uapi::OP_RECV,
        slot,
        addr: buf.as_mut_ptr() as u64,
        len: buf.len() as u32,
        user_data,
        ..Sqe::ZERO
    }
}

/// Waits until lane 0 has parked `n` requests in all.
fn wait_parked(b: &ThreadsBackend, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.stats(0).parked.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "request {n} never parked");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits (up to 2 s) for the completion of `user_data`; other completions go to
/// `seen`.
fn completion(b: &mut ThreadsBackend, user_data: u64, seen: &mut Vec<Cqe>) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(i) = seen.iter().position(|c| c.user_data == user_data) {
            return Some(seen.remove(i).res);
        }
        if Instant::now() >= deadline {
            return None;
        }
        b.wait(1, Some(Duration::from_millis(50))).unwrap();
        b.reap(&mut |c| seen.push(c));
    }
}

fn threads_config() -> Config {
    Config {
        backend: BackendKind::Threads,
        idle_ms: 1,
        ..Config::default()
    }
}

/// A slot emptied while a RECV waits on its file and then filled with another file:
/// the new file's RECV does not queue behind the old file's (waits are per file).
#[test]
fn reused_slot_does_not_queue_behind_the_old_file() {
    use std::io::Write;
    let mut b = ThreadsBackend::open(&threads_config()).unwrap();
    let (_la, mut ca, sa) = tcp_pair();
    let (_lb, mut cb, sb) = tcp_pair();
    let (mut bufa, mut bufb) = ([0u8; 8], [0u8; 8]);
    b.register(3, sa.as_fd()).unwrap();
    assert!(b.push(0, &recv_sqe(3, &mut bufa, 1)));
    b.submit().unwrap();
    wait_parked(&b, 1);
    b.unregister(3).unwrap();
    b.register(3, sb.as_fd()).unwrap();
    assert!(b.push(0, &recv_sqe(3, &mut bufb, 2)));
    b.submit().unwrap();
    cb.write_all(b"bb").unwrap();
    let mut seen = vec![];
    assert_eq!(completion(&mut b, 2, &mut seen), Some(2), "stuck behind A");
    ca.write_all(b"aaa").unwrap();
    assert_eq!(completion(&mut b, 1, &mut seen), Some(3));
    assert_eq!((&bufa[..3], &bufb[..2]), (&b"aaa"[..], &b"bb"[..]));
}

/// An epoll registration left behind for a slot must never be deleted on behalf of
/// that slot once its descriptor number belongs to another file: here slot 3's old
/// descriptor number is reused by slot 5's file, then slot 3 parks a request on a
/// new file, and slot 5's parked RECV must still be woken.
#[test]
fn stale_registration_never_deletes_another_files() {
    use std::io::Write;
    let mut b = ThreadsBackend::open(&threads_config()).unwrap();
    let mut seen = vec![];
    let (_la, mut ca, sa) = tcp_pair();
    let (_lb, mut cb, sb) = tcp_pair();
    let (_lc, mut cc, sc) = tcp_pair();
    let mut bufs = [[0u8; 8]; 3];
    let [bufa, bufb, bufc] = &mut bufs;
    // Descriptor numbers far above what the other (concurrent) tests use, so that
    // A's number is reliably free for C once A is gone.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a valid struct.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let high = (lim.rlim_cur.min(1 << 20) as i32 - 48).max(64);
    let dup_at_least = |fd: BorrowedFd<'_>, min: i32| {
        // SAFETY: F_DUPFD_CLOEXEC of a live descriptor; the result is checked and owned.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
        assert!(r >= 0, "{}", io::Error::last_os_error());
        // SAFETY: r is a fresh descriptor nobody else owns.
        FileRef::adopt(unsafe { OwnedFd::from_raw_fd(r) }).unwrap()
    };
    b.shared
        .files
        .insert(3, dup_at_least(sa.as_fd(), high))
        .unwrap();
    let fd_a = b.shared.files.get(3).unwrap().raw();
    assert!(b.push(0, &recv_sqe(3, bufa, 1)));
    b.submit().unwrap();
    wait_parked(&b, 1);
    ca.write_all(b"a").unwrap();
    assert_eq!(completion(&mut b, 1, &mut seen), Some(1));
    b.unregister(3).unwrap();
    // Slot 5 gets file C under A's old descriptor number.
    b.shared
        .files
        .insert(5, dup_at_least(sc.as_fd(), fd_a))
        .unwrap();
    assert_eq!(
        b.shared.files.get(5).unwrap().raw(),
        fd_a,
        "number not reused"
    );
    assert!(b.push(0, &recv_sqe(5, bufc, 2)));
    b.submit().unwrap();
    wait_parked(&b, 2);
    b.register(3, sb.as_fd()).unwrap();
    assert!(b.push(0, &recv_sqe(3, bufb, 3)));
    b.submit().unwrap();
    wait_parked(&b, 3);
    cc.write_all(b"cc").unwrap();
    assert_eq!(
        completion(&mut b, 2, &mut seen),
        Some(2),
        "slot 5's registration was deleted"
    );
    cb.write_all(b"bbb").unwrap();
    assert_eq!(completion(&mut b, 3, &mut seen), Some(3));
}

/// `cancel_all` completes parked requests with -ECANCELED at once.
#[test]
fn cancel_all_completes_parked_requests() {
    let mut b = ThreadsBackend::open(&threads_config()).unwrap();
    let (_l, _c, s) = tcp_pair();
    let mut buf = [0u8; 8];
    b.register(1, s.as_fd()).unwrap();
    assert!(b.push(0, &recv_sqe(1, &mut buf, 4)));
    b.submit().unwrap();
    wait_parked(&b, 1);
    assert!(b.cancel_all().unwrap());
    let mut seen = vec![];
    assert_eq!(completion(&mut b, 4, &mut seen), Some(-libc::ECANCELED));
}

/// A RECV or SEND with an explicit MSG_DONTWAIT is never parked.
#[test]
fn msg_dontwait_is_not_parked() {
    let mut b = ThreadsBackend::open(&threads_config()).unwrap();
    let (_l, _c, s) = tcp_pair();
    let mut buf = [0u8; 8];
    b.register(1, s.as_fd()).unwrap();
    let mut sqe = recv_sqe(1, &mut buf, 5);
    sqe.op_flags = fastio_uapi::MSG_DONTWAIT;
    assert!(b.push(0, &sqe));
    b.submit().unwrap();
    let mut seen = vec![];
    assert_eq!(completion(&mut b, 5, &mut seen), Some(-libc::EAGAIN));
    assert_eq!(b.stats(0).parked.load(Ordering::SeqCst), 0);
}

const EPOLL_CHILD: &str = "FASTIO_TEST_EPOLL_CHILD";

/// When a lane cannot get its epoll instance, `open` fails (instead of succeeding
/// with a worker that died at startup). Runs in a child process whose descriptor
/// limit leaves room for the eventfds and a single epoll instance.
#[test]
fn open_fails_when_a_lane_cannot_get_its_epoll() {
    const NAME: &str = "backend::threads::tests::open_fails_when_a_lane_cannot_get_its_epoll";
    if std::env::var_os(EPOLL_CHILD).is_some() {
        let lanes = 4u64;
        let open: std::collections::HashSet<u64> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        // Free descriptor numbers below the limit: the wake eventfds and one epoll.
        let mut free = 0;
        let mut limit = 0u64;
        while free < lanes + 1 {
            // The directory's own descriptor is in `open` but closed again by now.
            if !open.contains(&limit)
                || std::fs::metadata(format!("/proc/self/fd/{limit}")).is_err()
            {
                free += 1;
            }
            limit += 1;
        }
        let lim = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: setrlimit with a valid struct, in this child process only.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
        let cfg = Config {
            max_ker_worker: lanes as u32,
            ..threads_config()
        };
        let e = ThreadsBackend::open(&cfg)
            .err()
            .expect("open succeeded with a lane that has no epoll instance");
        assert!(e.to_string().contains("epoll"), "{e}");
        println!("CHILD-OK: {e}");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(EPOLL_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
