//! proactor_echo_server end to end, on every backend this machine can run (io_uring with
//! and without SQPOLL, threads with one and two lanes, the kernel module with two lanes
//! where /dev/fastio exists): real sockets on 127.0.0.1, every byte verified. A backend
//! that cannot run here is skipped with the reason; `FASTIO_TEST_BACKENDS` (a comma list
//! of backend names, e.g. `kmod`, as `make vm-test` sets it in the VM) restricts the run
//! to those backends.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fastio::{BackendKind, Config, Proactor};
use fastio_echo::multishot_server::{self, MultishotOptions};
use fastio_echo::proactor_server::{serve, EchoOptions, ServeStats};
use fastio_echo::{async_server, check};

#[path = "../../runtime/tests/common/mod.rs"]
mod common;

use common::Flavor;

struct Server {
    addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    handle: Option<JoinHandle<std::io::Result<ServeStats>>>,
}

/// The server's forms: the async runtime (the default), the raw loop (`--raw`), the
/// multishot loop with provided buffers (`--multishot`) and the async runtime receiving
/// into provided buffers (`--provided`).
const MODES: [(&str, Serve); 4] = [
    ("async", async_server::serve),
    ("raw", serve),
    ("multishot", multishot),
    ("provided", provided),
];

fn multishot(
    l: &std::net::TcpListener,
    config: &Config,
    _: &EchoOptions,
    shutdown: &AtomicBool,
) -> std::io::Result<ServeStats> {
    let (buffers, buf_size) = pbufs(config);
    let opts = MultishotOptions {
        buffers,
        buf_size,
        accept_range: 0,
    };
    multishot_server::serve(l, config, &opts, shutdown)
}

/// Provided buffers of the multishot and provided modes: few, so that running out of
/// them (-ENOBUFS) is exercised, and small on the host (64 x 2 KiB). The module runs in
/// a TCG guest ~50x slower, where 2 KiB receptions of the 200 x 1 MiB test (100,000 of
/// them, each sent back) take longer than its 120 s (measured: 85-98% echoed at the
/// deadline, while the 16 KiB modes take 17 s): there 256 x 32 KiB, still far too few
/// for 200 connections that send 1 MiB at once.
fn pbufs(config: &Config) -> (u32, u32) {
    if config.backend == BackendKind::Kmod {
        (256, 32 * 1024)
    } else {
        (64, 2048)
    }
}

fn provided(
    l: &std::net::TcpListener,
    config: &Config,
    _: &EchoOptions,
    shutdown: &AtomicBool,
) -> std::io::Result<ServeStats> {
    let opts = EchoOptions {
        provided: Some(pbufs(config)),
        ..EchoOptions::default()
    };
    async_server::serve(l, config, &opts, shutdown)
}

type Serve =
    fn(&std::net::TcpListener, &Config, &EchoOptions, &AtomicBool) -> std::io::Result<ServeStats>;

impl Server {
    fn start(config: Config, serve: Serve) -> Server {
        let listener = fastio_echo::net::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&shutdown);
        let handle =
            std::thread::spawn(move || serve(&listener, &config, &EchoOptions::default(), &flag));
        Server {
            addr,
            shutdown,
            handle: Some(handle),
        }
    }

    /// Stops the server and returns its statistics (fails the test on a server error).
    fn stop(mut self) -> ServeStats {
        self.shutdown.store(true, Ordering::SeqCst);
        let h = self.handle.take().unwrap();
        h.join().expect("server panicked").expect("server failed")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

use fastio::backend::DEVICE_PATH;

fn flavors() -> Vec<Flavor> {
    let base = Config {
        idle_ms: 10,
        ..Config::default()
    };
    common::flavors(base)
}

/// Runs `f` against a fresh server per backend that can run here (and is selected).
fn each_backend(test: &str, f: impl Fn(SocketAddr) -> Result<(), String>) {
    let mut ran = 0;
    for Flavor { name, config: cfg } in flavors() {
        if !common::flavor_selected(test, name, cfg.backend) {
            continue;
        }
        let kmod = cfg.backend == BackendKind::Kmod;
        if kmod && !Path::new(DEVICE_PATH).exists() {
            println!(
                "SKIP {test} [{name}]: {DEVICE_PATH} not present (the module runs in the VM: \
                 make vm-test)"
            );
            continue;
        }
        match Proactor::new(&cfg) {
            Ok(_) => {}
            // The device is there, so the module is meant to be tested: fail loudly.
            Err(e) if kmod => panic!("{test} [{name}]: {DEVICE_PATH} exists but: {e}"),
            Err(e) => {
                println!("SKIP {test} [{name}]: backend cannot run here: {e}");
                continue;
            }
        }
        for (mode, serve) in MODES {
            let server = Server::start(cfg.clone(), serve);
            let t0 = Instant::now();
            if let Err(e) = f(server.addr) {
                panic!("{test} [{name}, {mode}]: {e}");
            }
            let stats = server.stop();
            assert!(
                stats.accepted > 0,
                "{test} [{name}, {mode}]: nothing accepted"
            );
            println!(
                "{test} [{name}, {mode}]: ok in {:.2?} ({} connections, {} bytes echoed)",
                t0.elapsed(),
                stats.accepted,
                stats.bytes
            );
        }
        ran += 1;
    }
    // Nothing ran only because of the filter: that is the filter's intent, not a failure.
    assert!(
        ran > 0 || std::env::var_os("FASTIO_TEST_BACKENDS").is_some(),
        "{test}: no backend could run"
    );
}

const PAYLOADS: [usize; 4] = [1, 512, 64 * 1024, 1024 * 1024];

#[test]
fn one_connection_all_payloads() {
    each_backend("one_connection", |addr| {
        for len in PAYLOADS {
            check::echo_roundtrip(addr, 1, len, 3, Duration::from_secs(60))
                .map_err(|e| format!("payload {len}: {e}"))?;
        }
        Ok(())
    });
}

#[test]
fn two_hundred_connections_all_payloads() {
    each_backend("200_connections", |addr| {
        for len in PAYLOADS {
            let rounds = if len >= 64 * 1024 { 1 } else { 4 };
            check::echo_roundtrip(addr, 200, len, rounds, Duration::from_secs(120))
                .map_err(|e| format!("payload {len}: {e}"))?;
        }
        Ok(())
    });
}

#[test]
fn clients_that_disconnect_mid_stream() {
    each_backend("disconnect_mid_stream", |addr| {
        check::disconnect_mid_stream(addr, Duration::from_secs(60))
    });
}

#[test]
fn client_that_never_reads_does_not_stall_others() {
    each_backend("never_reader", |addr| {
        let hog = check::never_reader(addr, Duration::from_secs(30))?;
        check::echo_roundtrip(addr, 20, 64 * 1024, 2, Duration::from_secs(60))
            .map_err(|e| format!("while a client never reads: {e}"))?;
        drop(hog);
        check::echo_roundtrip(addr, 1, 512, 1, Duration::from_secs(30))
    });
}

#[test]
fn thousand_concurrent_connections() {
    // Client and (on the threads backend) server descriptors share this process.
    if let Err(e) = check::raise_fd_limit(4200) {
        println!("SKIP thousand_concurrent_connections: {e}");
        return;
    }
    each_backend("1000_connections", |addr| {
        check::hold_idle(
            addr,
            1000,
            Duration::from_millis(500),
            Duration::from_secs(120),
        )
    });
}
