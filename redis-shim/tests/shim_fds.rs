//! A queued socket's descriptor number closed or replaced, then reused for a socket to
//! another peer: one test per way (close, close_range, closefrom, fclose,
//! syscall(SYS_close), a raw close system call the shim cannot see, dup2, dup3,
//! syscall(SYS_dup3), exec of a close-on-exec socket), on every backend available here.
//! A small C program (tests/c/reuse.c, compiled with cc) runs with the shim preloaded;
//! each peer must get exactly its own bytes, the first one all of them (the last write
//! still queued when the number went away) and then the end of the stream.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use support::probe::{compile_c, run_preloaded};
use support::{flavors, TempDir};

/// Bytes written to each peer.
const N: usize = 2 << 20;

/// Accepts one connection on `l` and reads it to EOF on a thread; returns the bytes and
/// when EOF came.
fn peer(l: TcpListener) -> thread::JoinHandle<(Vec<u8>, Instant)> {
    thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read to EOF");
        (got, Instant::now())
    })
}

/// What one run of the program shows.
struct Run {
    stdout: String,
    first: (Vec<u8>, Instant),
    second: Vec<u8>,
    exited: Instant,
    stale: u64,
}

/// Runs `reuse MODE` on every flavor and checks that each peer got its own bytes;
/// returns the runs for further checks.
fn check(mode: &str) -> Vec<Run> {
    let test = format!("descriptor_reuse_{mode}");
    let dir = TempDir::new("reuse");
    let src = include_str!("c/reuse.c");
    let Some(prog) = compile_c(&test, dir.path(), "reuse", src) else {
        return Vec::new();
    };
    let mut runs = Vec::new();
    for f in flavors(&test) {
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let (p1, p2) = (
            l1.local_addr().unwrap().port(),
            l2.local_addr().unwrap().port(),
        );
        let (r1, r2) = (peer(l1), peer(l2));
        let args = [mode, &p1.to_string(), &p2.to_string(), &N.to_string()];
        let (out, st) = run_preloaded(&f, dir.path(), &prog, &args, &[]);
        let exited = Instant::now();
        assert!(
            out.status.success(),
            "[{}] {mode}: {}\n{}",
            f.name,
            out.text(),
            out.stderr
        );
        let first = r1.join().expect("first peer");
        let (second, _) = r2.join().expect("second peer");
        let count = |v: &[u8], b: u8| v.iter().filter(|&&x| x == b).count();
        assert!(
            first.0.len() == N && count(&first.0, b'A') == N,
            "[{}] {mode}: the first peer got {} bytes, {} of them 'B'",
            f.name,
            first.0.len(),
            count(&first.0, b'B')
        );
        assert!(
            second.len() == N && count(&second, b'B') == N,
            "[{}] {mode}: the second peer got {} bytes",
            f.name,
            second.len()
        );
        let stdout = out.text();
        // (After exec, and once the sweep released the old socket, a lower number may
        // be free.)
        if mode != "exec" && mode != "raw_close_sweep" {
            let nums: Vec<&str> = stdout
                .split_whitespace()
                .filter_map(|w| w.split_once('=').map(|(_, n)| n))
                .collect();
            assert!(
                nums.len() == 2 && nums[0] == nums[1],
                "[{}] {mode}: the number was not reused: {stdout}",
                f.name
            );
        }
        let st = st.expect("shim counters");
        println!("[{}] {mode}: {stdout:?} {:?}", f.name, st.0);
        runs.push(Run {
            stdout,
            first,
            second,
            exited,
            stale: st.get("stale"),
        });
    }
    runs
}

/// The paths the shim interposes: no stale entry is ever found.
fn check_interposed(mode: &str) {
    for r in check(mode) {
        assert_eq!(r.stale, 0, "{mode}: {}", r.stdout);
        assert_eq!(r.second.len(), N);
    }
}

#[test]
fn descriptor_reuse_after_close() {
    check_interposed("close");
}

#[test]
fn descriptor_reuse_after_close_range() {
    check_interposed("close_range");
}

#[test]
fn descriptor_reuse_after_closefrom() {
    check_interposed("closefrom");
}

#[test]
fn descriptor_reuse_after_fclose() {
    check_interposed("fclose");
}

#[test]
fn descriptor_reuse_after_syscall_close() {
    check_interposed("syscall_close");
}

#[test]
fn descriptor_replaced_by_dup2() {
    check_interposed("dup2");
}

#[test]
fn descriptor_replaced_by_dup3() {
    check_interposed("dup3");
}

#[test]
fn descriptor_replaced_by_syscall_dup3() {
    check_interposed("syscall_dup3");
}

/// exec of a close-on-exec socket: the bytes still queued go out before the new image
/// runs (which reuses the number).
#[test]
fn descriptor_reuse_after_exec_with_cloexec() {
    check_interposed("exec");
}

/// A close the shim cannot see (a raw system call): the identity check of the next
/// write on the reused number drops the stale entry.
#[cfg(target_arch = "x86_64")]
#[test]
fn descriptor_reuse_after_a_raw_close_is_detected() {
    for r in check("raw_close") {
        assert!(r.stale >= 1, "no stale entry found: {}", r.stdout);
    }
}

/// A close the shim cannot see, the number not reused: the periodic identity sweep
/// (once a second) finds it, so the peer sees the end of the stream long before the
/// program ends (3 s after the close).
#[cfg(target_arch = "x86_64")]
#[test]
fn a_raw_close_without_reuse_is_found_by_the_sweep() {
    for r in check("raw_close_sweep") {
        assert!(r.stale >= 1, "no stale entry found: {}", r.stdout);
        let early = r.exited.saturating_duration_since(r.first.1);
        assert!(
            early > Duration::from_millis(1000),
            "EOF only {early:?} before the program ended"
        );
    }
}
