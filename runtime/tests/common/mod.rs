//! Helpers shared by the runtime's integration tests (and, by `#[path]`, the echo crate's).

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use fastio::{BackendKind, Config};

/// Whether tests should exercise `kind`: all backends unless `FASTIO_TEST_BACKENDS`
/// (a comma-separated list such as `kmod` — set by `make vm-test` inside the VM, where the
/// host run already covered the others) says otherwise. Prints a SKIP line when not.
pub fn backend_selected(test: &str, kind: BackendKind) -> bool {
    flavor_selected(test, kind.as_str(), kind)
}

/// Like [`backend_selected`], for a named flavor of a backend (e.g. `threads x2`).
pub fn flavor_selected(test: &str, flavor: &str, kind: BackendKind) -> bool {
    let Ok(list) = std::env::var("FASTIO_TEST_BACKENDS") else {
        return true;
    };
    let chosen = list.split(',').any(|b| b.trim() == kind.as_str());
    if !chosen {
        println!("SKIP {test} [{flavor}]: not in FASTIO_TEST_BACKENDS={list}");
    }
    chosen
}

/// Names of the lane workers of process `pid`: its threads named `fastio-lane-<lane>`
/// (ABI 2: the runtime's threads that serve the lanes inside the kernel) and, on the old
/// module (ABI 1), the kernel threads named `fastio-<pid>-<lane>`.
pub fn workers_of(pid: u32) -> Vec<String> {
    let mut out = threads_of(pid, "fastio-lane-");
    let v1 = format!("fastio-{pid}-");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.starts_with(&v1) {
            out.push(comm.trim().to_string());
        }
    }
    out.sort();
    out
}

/// Names of the helper threads (`fastio-help-<i>`, ABI 2) of process `pid`.
pub fn helpers_of(pid: u32) -> Vec<String> {
    threads_of(pid, "fastio-help-")
}

/// Names of the threads of process `pid` that start with `prefix`, sorted.
pub fn threads_of(pid: u32, prefix: &str) -> Vec<String> {
    let mut out = vec![];
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in tasks.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.starts_with(prefix) {
            out.push(comm.trim().to_string());
        }
    }
    out.sort();
    out
}

/// A named backend configuration.
pub struct Flavor {
    pub name: &'static str,
    pub config: Config,
}

/// The backend flavors every suite runs: io_uring with and without SQPOLL, threads with
/// one and two lanes, the kernel module with two lanes; each is `base` with the backend
/// keys changed.
pub fn flavors(base: Config) -> Vec<Flavor> {
    vec![
        Flavor {
            name: "uring+sqpoll",
            config: Config {
                backend: BackendKind::Uring,
                sqpoll: true,
                ..base.clone()
            },
        },
        Flavor {
            name: "uring",
            config: Config {
                backend: BackendKind::Uring,
                sqpoll: false,
                ..base.clone()
            },
        },
        Flavor {
            name: "threads x1",
            config: Config {
                backend: BackendKind::Threads,
                ..base.clone()
            },
        },
        Flavor {
            name: "threads x2",
            config: Config {
                backend: BackendKind::Threads,
                max_ker_worker: 2,
                ..base.clone()
            },
        },
        Flavor {
            name: "kmod",
            config: Config {
                backend: BackendKind::Kmod,
                max_ker_worker: 2,
                ..base
            },
        },
    ]
}

/// Runs `f` once per flavor in `flavors` that can run here, on what `open` makes of its
/// config; prints a SKIP line for the others (not selected, module not loaded, backend
/// unavailable, SQPOLL refused: `sqpoll` says whether the opened value got it). A kmod
/// flavor whose device exists but fails to open is a failure, not a skip.
pub fn each_flavor<T>(
    test: &str,
    flavors: Vec<Flavor>,
    open: impl Fn(&Config) -> std::io::Result<T>,
    sqpoll: impl Fn(&T) -> bool,
    f: impl Fn(&Flavor, &mut T),
) {
    let dev = fastio::backend::DEVICE_PATH;
    let mut ran = 0;
    for fl in flavors {
        if !backend_selected(test, fl.config.backend) {
            continue;
        }
        let kmod = fl.config.backend == BackendKind::Kmod;
        if kmod && !std::path::Path::new(dev).exists() {
            println!(
                "SKIP {test} [{}]: {dev} not present (the module runs in the VM: make vm-test)",
                fl.name
            );
            continue;
        }
        match open(&fl.config) {
            Ok(mut v) => {
                if fl.config.backend == BackendKind::Uring && fl.config.sqpoll != sqpoll(&v) {
                    println!("SKIP {test} [{}]: SQPOLL refused here", fl.name);
                    continue;
                }
                f(&fl, &mut v);
                ran += 1;
            }
            // The device is there, so the module is meant to be tested: fail loudly.
            Err(e) if kmod => panic!("{test} [{}]: {dev} exists but: {e}", fl.name),
            Err(e) => println!("SKIP {test} [{}]: backend cannot run here: {e}", fl.name),
        }
    }
    assert!(
        ran > 0 || std::env::var_os("FASTIO_TEST_BACKENDS").is_some(),
        "{test}: no backend could run"
    );
}

/// Runs `f` on a proactor of every flavor that can run here (small rings, 64 slots).
pub fn each_proactor(test: &str, f: impl Fn(&Flavor, &mut fastio::Proactor)) {
    let base = Config {
        sq_entries: 64,
        cq_entries: 128,
        max_files: 64,
        idle_ms: 5,
        ..Config::default()
    };
    each_flavor(
        test,
        flavors(base),
        fastio::Proactor::new,
        |p| p.backend().sqpoll,
        f,
    );
}

/// Whether a kernel-module test runs here: `FASTIO_TEST_BACKENDS` (when set) names kmod
/// and `/dev/fastio` exists. Prints the SKIP line (with the reason) when not.
pub fn have_module(test: &str) -> bool {
    if let Ok(list) = std::env::var("FASTIO_TEST_BACKENDS") {
        if !list.split(',').any(|b| b.trim() == "kmod") {
            println!("SKIP {test} [kmod]: not in FASTIO_TEST_BACKENDS={list}");
            return false;
        }
    }
    let dev = fastio::backend::DEVICE_PATH;
    let ok = std::path::Path::new(dev).exists();
    if !ok {
        println!("SKIP {test} [kmod]: {dev} not present (the module runs in the VM: make vm-test)");
    }
    ok
}

/// Whether this process runs as root (some kernel tests drop privileges or write
/// /proc/sys); prints the SKIP line when not.
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let ok = unsafe { libc::geteuid() } == 0;
    if !ok {
        println!("SKIP {test}: needs root (it runs as root inside the VM: make vm-test)");
    }
    ok
}

/// A field of /proc/meminfo, in KiB.
pub fn meminfo_kib(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("/proc/meminfo has no {key}"))
}

/// Writes dirty data back and drops the page cache, dentries and inodes (root only).
pub fn drop_caches() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .unwrap_or_else(|e| panic!("echo 3 > /proc/sys/vm/drop_caches: {e}"));
}

/// This test binary again, running only the test `name` (a helper that acts on
/// `var=value` and returns at once when `var` is unset).
pub fn rerun(name: &str, var: &str, value: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(var, value);
    cmd
}

/// Percentile `q` (0..=1) of sorted `v` (zero when empty).
pub fn percentile(v: &[std::time::Duration], q: f64) -> std::time::Duration {
    if v.is_empty() {
        return std::time::Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Waits until `cond` holds, at most `limit` (else fails naming `what`); returns how long
/// it took.
pub fn wait_until(
    what: &str,
    limit: std::time::Duration,
    mut cond: impl FnMut() -> bool,
) -> std::time::Duration {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    t0.elapsed()
}

/// Waits (at most `limit`) until process `pid` has no lane worker left.
pub fn wait_workers_gone(pid: u32, limit: std::time::Duration) {
    wait_until(&format!("the workers of {pid} gone"), limit, || {
        workers_of(pid).is_empty()
    });
}

/// Creates (or truncates) `path` for reading and writing.
pub fn rw_file(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}
