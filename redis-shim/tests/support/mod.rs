//! Helpers of the shim's end-to-end tests: a redis-server (or any program) started with
//! the shim preloaded on a chosen backend, a small RESP client, bounded child processes.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fastio::{BackendKind, Config};

#[path = "../../../runtime/tests/common/mod.rs"]
pub mod common;
pub mod probe;
mod resp;

pub use resp::{Client, Reply};

/// Bound of one redis-cli or client call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The directory of the test binaries' build (`target/<profile>`).
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary inside target/<profile>/deps")
        .to_path_buf()
}

/// The shim built alongside the tests: `cargo test` builds the cdylib with the crate
/// into `target/<profile>/deps` (only `cargo build` copies it one level up).
pub fn shim_path() -> PathBuf {
    let p = build_dir().join("deps").join("libfastio_redis_shim.so");
    assert!(p.is_file(), "{} not built", p.display());
    p
}

/// Whether the Redis binaries are installed (`make redis-deps` installs them); prints a
/// SKIP line when not.
pub fn have_redis(test: &str) -> bool {
    let missing: Vec<&str> = ["redis-server", "redis-cli", "redis-benchmark"]
        .into_iter()
        .filter(|b| {
            !std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(b).is_file()))
        })
        .collect();
    if !missing.is_empty() {
        println!(
            "SKIP {test}: {} not installed (make redis-deps)",
            missing.join(", ")
        );
    }
    missing.is_empty()
}

/// A backend flavor to run under the shim.
pub struct Flavor {
    /// Its name in messages.
    pub name: &'static str,
    /// Its configuration.
    pub config: Config,
}

impl Flavor {
    /// The `fastio.conf` text selecting this flavor.
    pub fn conf_text(&self) -> String {
        format!(
            "backend = \"{}\"\nsqpoll = {}\nmax_ker_worker = {}\n",
            self.config.backend.as_str(),
            self.config.sqpoll,
            self.config.max_ker_worker
        )
    }
}

/// The flavors `test` runs on here: the shared list (io_uring with and without SQPOLL,
/// threads with one and two lanes, kmod) filtered by `FASTIO_TEST_BACKENDS`, and kmod
/// only where `/dev/fastio` exists. Prints a SKIP line for each left out.
pub fn flavors(test: &str) -> Vec<Flavor> {
    common::flavors(Config::default())
        .into_iter()
        .filter(|f| common::flavor_selected(test, f.name, f.config.backend))
        .filter(|f| {
            let ok = f.config.backend != BackendKind::Kmod
                || Path::new(fastio::backend::DEVICE_PATH).exists();
            if !ok {
                println!(
                    "SKIP {test} [{}]: {} not present (the module runs in the VM: make vm-test)",
                    f.name,
                    fastio::backend::DEVICE_PATH
                );
            }
            ok
        })
        .map(|f| Flavor {
            name: f.name,
            config: f.config,
        })
        .collect()
}

/// A scratch directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system's temporary directory.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "fastio-shim-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free TCP port on 127.0.0.1 (free when this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The shim's counters, as written at exit (`FASTIO_SHIM_STATS`).
#[derive(Debug, Default)]
pub struct ShimStats(pub HashMap<String, String>);

impl ShimStats {
    /// Reads the file.
    pub fn read(path: &Path) -> ShimStats {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("shim stats {}: {e}", path.display()));
        ShimStats(
            text.lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// A counter.
    pub fn get(&self, key: &str) -> u64 {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in the shim stats {:?}", self.0))
            .parse()
            .expect("a number")
    }

    /// The backend line.
    pub fn backend(&self) -> &str {
        self.0.get("backend").map_or("", String::as_str)
    }

    /// Asserts that the shim carried the writes: sockets registered, writes queued and
    /// sent through the rings (at least `min_bytes`), nothing left queued, the slot of
    /// every closed socket released.
    pub fn assert_carried(&self, what: &str, min_bytes: u64) {
        assert!(
            self.get("registered") > 0,
            "{what}: no socket registered: {self:?}"
        );
        assert!(self.get("writes") > 0, "{what}: no write queued: {self:?}");
        assert!(
            self.get("requests") > 0,
            "{what}: no request issued: {self:?}"
        );
        assert!(
            self.get("bytes_sent") >= min_bytes,
            "{what}: {} bytes went through the rings, expected at least {min_bytes}",
            self.get("bytes_sent")
        );
        assert_eq!(
            self.get("queued_now"),
            0,
            "{what}: bytes left queued at exit"
        );
        // The connection that sent SHUTDOWN is still open when the server exits.
        assert!(
            self.get("open_slots") <= 1,
            "{what}: slots left registered at exit: {self:?}"
        );
        assert_eq!(
            self.get("closed") + self.get("open_slots"),
            self.get("registered"),
            "{what}: every closed socket's slot must be released"
        );
    }
}

/// A redis-server with the shim preloaded.
pub struct Redis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its working directory (dump files, log, config, stats).
    pub dir: PathBuf,
    child: Option<Child>,
    stats: PathBuf,
    log: PathBuf,
}

impl Redis {
    /// Starts redis-server on `flavor` in `dir` with persistence off, plus `args`, and
    /// `env` for the shim; waits until it answers PING.
    pub fn start(flavor: &Flavor, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Redis {
        let mut all = vec!["--save", "", "--appendonly", "no"];
        all.extend_from_slice(args);
        Redis::start_raw(Some(flavor), dir, &all, env)
    }

    /// Starts redis-server (with the shim when `flavor` is given) with exactly `args`.
    pub fn start_raw(
        flavor: Option<&Flavor>,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Redis {
        Redis::start_conf(flavor, dir, args, env, "")
    }

    /// [`Redis::start_raw`] with `conf_extra` appended to the flavor's `fastio.conf`.
    pub fn start_conf(
        flavor: Option<&Flavor>,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        conf_extra: &str,
    ) -> Redis {
        for attempt in 0..3 {
            let port = free_port();
            let conf = dir.join("fastio.conf");
            let stats = dir.join(format!("shim-stats-{port}"));
            let log = dir.join(format!("redis-{port}.log"));
            let _ = std::fs::remove_file(&stats);
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--daemonize", "no", "--dir"])
                .arg(dir)
                .args(args)
                .env_remove("LD_PRELOAD")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).expect("log file"))
                .stderr(
                    std::fs::File::create(dir.join(format!("stderr-{port}"))).expect("stderr file"),
                );
            if let Some(f) = flavor {
                std::fs::write(&conf, f.conf_text() + conf_extra).expect("write fastio.conf");
                cmd.env("LD_PRELOAD", shim_path())
                    .env("FASTIO_CONF", &conf)
                    .env("FASTIO_SHIM_STATS", &stats);
            }
            for (k, v) in env {
                cmd.env(k, v);
            }
            let child = cmd.spawn().expect("spawn redis-server");
            let mut r = Redis {
                port,
                dir: dir.to_path_buf(),
                child: Some(child),
                stats,
                log,
            };
            if r.wait_ready(Duration::from_secs(20)) {
                if let Some(f) = flavor {
                    r.check_backend(f);
                }
                return r;
            }
            let log = std::fs::read_to_string(&r.log).unwrap_or_default();
            r.kill();
            assert!(
                attempt < 2 && log.contains("Address already in use"),
                "redis-server did not start:\n{log}\n{}",
                r.stderr()
            );
        }
        unreachable!()
    }

    fn wait_ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            if let Ok(mut c) = Client::connect(self.port) {
                if c.cmd(&["PING"]).ok() == Some(Reply::Status("PONG".into())) {
                    return true;
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The server's stderr so far (the shim's and the runtime's messages).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("stderr-{}", self.port))).unwrap_or_default()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The shim must have started on the flavor's backend and said so.
    fn check_backend(&self, f: &Flavor) {
        let err = self.stderr();
        let want = match (f.config.backend, f.config.sqpoll) {
            (BackendKind::Uring, true) => "fastio: backend uring (SQPOLL)".to_string(),
            // The shim's `auto` is io_uring without SQPOLL (see redis_cli's auto test).
            (BackendKind::Auto, _) => "fastio: backend uring: ".to_string(),
            (k, _) => format!("fastio: backend {}", k.as_str()),
        };
        assert!(
            err.contains(&want),
            "[{}] expected '{want}' on stderr:\n{err}",
            f.name
        );
        assert!(
            !err.contains("not active"),
            "[{}] shim not active:\n{err}",
            f.name
        );
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A new client connection.
    pub fn client(&self) -> Client {
        Client::connect(self.port).expect("connect to redis-server")
    }

    /// Runs redis-cli against this server.
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let port = self.port.to_string();
        let mut all = vec!["-h", "127.0.0.1", "-p", &port];
        all.extend_from_slice(args);
        run("redis-cli", &all, stdin, CALL_TIMEOUT)
    }

    /// Stops the server with SHUTDOWN NOSAVE and returns the shim's counters (when the
    /// shim was loaded).
    pub fn stop(mut self) -> Option<ShimStats> {
        let _ = self.client().send_cmd(&["SHUTDOWN", "NOSAVE"]);
        let status = self.wait_exit(Duration::from_secs(30));
        assert!(
            status.success(),
            "redis-server exit status {status}:\n{}",
            self.log()
        );
        self.stats.exists().then(|| ShimStats::read(&self.stats))
    }

    /// Waits for the server to exit (killing it after `limit`).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        wait_child(self.child.take().expect("running"), limit, "redis-server")
    }

    /// Starts redis-benchmark against this server with `args` (output discarded), as
    /// background load; kill it when done.
    pub fn background_load(&self, args: &[&str]) -> Child {
        Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .env_remove("LD_PRELOAD")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-benchmark")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a finished child process printed.
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: String,
}

impl Output {
    /// Standard output as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `prog args` (without the shim) with `stdin`, killing it after `limit`; panics
/// on timeout.
pub fn run(prog: &str, args: &[&str], stdin: Option<&[u8]>, limit: Duration) -> Output {
    let mut cmd = Command::new(prog);
    cmd.args(args).env_remove("LD_PRELOAD");
    run_with_input(cmd, stdin, limit)
}

/// Runs `cmd`, killing it after `limit`; panics on timeout.
pub fn run_command(cmd: Command, limit: Duration) -> Output {
    run_with_input(cmd, None, limit)
}

fn run_with_input(mut cmd: Command, stdin: Option<&[u8]>, limit: Duration) -> Output {
    let prog = format!("{:?}", cmd.get_program());
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {prog}: {e}"));
    let input = stdin.map(<[u8]>::to_vec);
    let mut sin = child.stdin.take();
    let feeder = thread::spawn(move || {
        if let (Some(s), Some(data)) = (sin.as_mut(), input) {
            let _ = s.write_all(&data);
        }
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let ereader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{prog} {args:?} did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let _ = feeder.join();
    Output {
        status,
        stdout: reader.join().unwrap_or_default(),
        stderr: ereader.join().unwrap_or_default(),
    }
}

/// Deterministic pseudo-random bytes (xorshift), every byte value included.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Resident set size of `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// Waits for `child` to exit; kills it and panics after `limit`.
pub fn wait_child(mut child: Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Closes `s` with a reset (SO_LINGER 0), as a killed client's kernel does when unread
/// data is left.
pub fn reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: SO_LINGER takes a `struct linger` of the size passed.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}
