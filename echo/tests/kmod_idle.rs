//! Idle connections cost the kernel module no CPU: the proactor echo server on the kmod
//! backend (one lane, 20 ms idle time) holds 1,000 idle connections, each with a RECV
//! outstanding; once things settle, neither the context's polling worker
//! (`fastio-<pid>-0`) nor any kworker may burn CPU (readiness callbacks, not polling or
//! a parked thread per connection), and afterwards every connection still echoes.
//!
//! Runs where /dev/fastio exists (inside the VM: `make vm-test`); elsewhere it prints
//! SKIP and returns.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastio::{BackendKind, Config};
use fastio_echo::check;
use fastio_echo::proactor_server::{serve, EchoOptions, ServeStats};

const DEVICE_PATH: &str = "/dev/fastio";
const CONNS: usize = 1000;
const SETTLE: Duration = Duration::from_millis(300);
const WINDOW: Duration = Duration::from_secs(2);
/// Most CPU ticks (utime + stime, normally 10 ms each) the idle window may cost each
/// group of threads: a worker that kept polling would burn ~200 over the window.
const MAX_IDLE_TICKS: u64 = 5;

/// utime + stime (clock ticks) and comm of every task listed directly under /proc
/// (processes and kernel threads: every kthread is its own thread group) whose comm
/// passes `keep`.
fn cpu_ticks(keep: impl Fn(&str) -> bool) -> HashMap<u32, (String, u64)> {
    let mut out = HashMap::new();
    // Every task of the system: /proc/PID/task/TID (threads such as the lane threads
    // of this process, which are not listed in /proc itself).
    let tasks = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read_dir(p.path().join("task")).ok())
        .flat_map(|t| t.flatten());
    for entry in tasks {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // The task may exit at any moment: skip what cannot be read.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        if !keep(comm) {
            continue;
        }
        // After the parenthesised comm: state is field 3, utime 14, stime 15.
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        out.insert(pid, (comm.to_string(), ticks));
    }
    out
}

/// Ticks used between two [`cpu_ticks`] snapshots (tasks born in between count in full),
/// and the busiest tasks.
fn used(
    before: &HashMap<u32, (String, u64)>,
    after: &HashMap<u32, (String, u64)>,
) -> (u64, Vec<String>) {
    let mut per: Vec<(u64, String)> = after
        .iter()
        .map(|(pid, (comm, t))| {
            let was = before.get(pid).map_or(0, |(_, b)| *b);
            (t.saturating_sub(was), format!("{comm}[{pid}]"))
        })
        .filter(|(d, _)| *d > 0)
        .collect();
    per.sort_by(|a, b| b.cmp(a));
    let total = per.iter().map(|(d, _)| d).sum();
    let top = per
        .iter()
        .take(5)
        .map(|(d, n)| format!("{n}: {d}"))
        .collect();
    (total, top)
}

/// utime + stime (clock ticks) of this whole process.
fn own_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> i64 {
    // SAFETY: sysconf only reads its argument.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }
}

/// Seed of the message of connection `id` in `round`.
fn seed(id: usize, round: usize) -> u64 {
    (id as u64) << 16 | round as u64
}

/// `len` bytes of content that differs per seed.
fn message(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends one `len`-byte message on every connection, then reads every echo back and
/// verifies it byte for byte. Everything fits the socket buffers, so blocking sockets
/// cannot deadlock.
fn echo_all(streams: &mut [TcpStream], round: usize, len: usize, deadline: Instant) {
    for (id, s) in streams.iter_mut().enumerate() {
        s.write_all(&message(seed(id, round), len))
            .unwrap_or_else(|e| panic!("round {round}: conn {id}: send failed: {e}"));
    }
    let mut buf = vec![0u8; len];
    for (id, s) in streams.iter_mut().enumerate() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("round {round}: timed out before reading conn {id}"));
        s.set_read_timeout(Some(left)).unwrap();
        s.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("round {round}: conn {id}: reading the echo: {e}"));
        let want = message(seed(id, round), len);
        if let Some(k) = buf.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "round {round}: conn {id}: echoed byte {k} of {len} differs: \
                 expected {:#04x}, got {:#04x}",
                want[k], buf[k]
            );
        }
    }
}

#[test]
fn thousand_idle_connections_cost_no_cpu() {
    let test = "thousand_idle_connections_cost_no_cpu";
    if let Ok(list) = std::env::var("FASTIO_TEST_BACKENDS") {
        if !list.split(',').any(|b| b.trim() == "kmod") {
            println!("SKIP {test} [kmod]: not in FASTIO_TEST_BACKENDS={list}");
            return;
        }
    }
    if !Path::new(DEVICE_PATH).exists() {
        println!(
            "SKIP {test} [kmod]: {DEVICE_PATH} not present (the module runs in the VM: \
             make vm-test)"
        );
        return;
    }
    // Client descriptors only: the server's connections are slots in the kernel.
    check::raise_fd_limit(CONNS as u64 + 200).expect("raising RLIMIT_NOFILE");

    let config = Config {
        backend: BackendKind::Kmod,
        max_ker_worker: 1,
        idle_ms: 20,
        ..Config::default()
    };
    let listener = fastio_echo::net::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&shutdown);
    let server = std::thread::spawn(move || -> std::io::Result<ServeStats> {
        serve(&listener, &config, &EchoOptions::default(), &flag)
    });

    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(120);
    let mut streams = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let left = deadline.saturating_duration_since(Instant::now());
        let s = TcpStream::connect_timeout(&addr, left)
            .unwrap_or_else(|e| panic!("connection {} of {CONNS}: {e}", i + 1));
        s.set_nodelay(true).unwrap();
        streams.push(s);
    }
    // The listener's queue is FIFO: once a later connection is served, all of these
    // were accepted and have their RECV outstanding.
    check::echo_roundtrip(addr, 1, 512, 1, Duration::from_secs(60))
        .expect("echo on a fresh connection after opening the idle ones");
    println!(
        "{CONNS} connections open and accepted in {:.2?}",
        t0.elapsed()
    );

    std::thread::sleep(SETTLE);
    // The lane thread is a thread of this process (fastio.ko v2); the kmod backend is
    // the only one in this process, so the name is enough.
    let prefix = "fastio-lane-";
    let is_worker = |comm: &str| comm.starts_with(prefix);
    let is_kworker = |comm: &str| comm.starts_with("kworker");
    let (w0, k0, own0) = (cpu_ticks(is_worker), cpu_ticks(is_kworker), own_ticks());
    assert_eq!(
        w0.len(),
        1,
        "expected one lane thread {prefix}0, found {:?}",
        w0.values().map(|(c, _)| c).collect::<Vec<_>>()
    );
    std::thread::sleep(WINDOW);
    let (w1, k1, own1) = (cpu_ticks(is_worker), cpu_ticks(is_kworker), own_ticks());
    let (worker_ticks, worker_top) = used(&w0, &w1);
    let (kworker_ticks, kworker_top) = used(&k0, &k1);
    let hz = clock_ticks_per_second();
    println!(
        "idle CPU over {WINDOW:?} with {CONNS} idle connections ({hz} ticks/s): \
         lane thread {worker_ticks} tick(s) {worker_top:?}; \
         kworkers ({} seen) {kworker_ticks} tick(s) {kworker_top:?}; \
         this process (serving thread, informational) {} tick(s)",
        k1.len(),
        own1 - own0
    );
    assert!(
        worker_ticks <= MAX_IDLE_TICKS,
        "the lane thread used {worker_ticks} ticks in {WINDOW:?} of idle connections"
    );
    assert!(
        kworker_ticks <= MAX_IDLE_TICKS,
        "kworkers used {kworker_ticks} ticks in {WINDOW:?} of idle connections: {kworker_top:?}"
    );

    let t1 = Instant::now();
    let deadline = t1 + Duration::from_secs(120);
    for round in 0..2 {
        echo_all(&mut streams, round, 512, deadline);
    }
    println!(
        "all {CONNS} connections echoed 2 x 512 bytes after the idle window in {:.2?}",
        t1.elapsed()
    );

    drop(streams);
    shutdown.store(true, Ordering::SeqCst);
    let stats = server
        .join()
        .expect("server panicked")
        .expect("server failed");
    assert!(
        stats.accepted > CONNS as u64,
        "server accepted {} connections, expected more than {CONNS}",
        stats.accepted
    );
}
