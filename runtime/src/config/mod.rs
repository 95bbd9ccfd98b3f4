//! `fastio.conf`: the runtime configuration.
//!
//! The file is [TOML](https://toml.io): one `key = value` per line, `#` starts a comment,
//! no sections. FastIO's original `fastio.conf` (`max_ker_worker = 2` and friends) parses
//! verbatim; the keys that fastio-rs added have defaults, so an empty file is a valid
//! configuration and means "all defaults". Booleans may also be written `0`/`1` the way
//! FastIO's file does.
//!
//! # Keys
//!
//! | key | unit | default | valid values | meaning |
//! |-----|------|---------|--------------|---------|
//! | `backend` | — | `"auto"` | `"auto"`, `"kmod"`, `"uring"`, `"threads"` | Which backend executes requests. `auto` takes `kmod` if `/dev/fastio` exists, else `uring`, else `threads`. |
//! | `max_ker_worker` | workers | `1` | `1..=64` | Lanes, one polling worker each: lane threads `fastio-lane-N` that poll inside the kernel (`kmod`), SQPOLL rings (`uring`) or threads (`threads`). |
//! | `max_usr_worker` | threads | `1` | `1..=64` | Serving threads of `proactor_echo_server`. |
//! | `sq_entries` | entries per lane | `256`, see below | power of two in `1..=32768` | Submission ring size. |
//! | `cq_entries` | entries per lane | `8192` (or `sq_entries` if larger) | power of two in `sq_entries..=32768` | Completion ring size; bounds the requests in flight on a lane. A server keeps one RECV pending per idle connection, so this is also its connection limit per lane. |
//! | `max_files` | file slots | `4096` | `1..=1048576` | Registered file slots of a context (connections plus listeners). |
//! | `default_main_worker_idle_time` | milliseconds | `20` | `1..=600000` | How long a polling worker spins on an empty ring before it sleeps and needs a wakeup (a `kmod` lane thread whose process runs its work inline, `kmod_inline`, does not spin). `kmod` refuses values above the module parameter `max_idle_ms` (default 1000). |
//! | `default_wq_worker_idle_time` | milliseconds | `1000` | `1..=600000` | FastIO's idle time of its workqueue workers. Accepted so that FastIO's files parse; **no effect** with the v2 module: helpers are parked threads that cost nothing while idle, and it is not sent to the kernel. |
//! | `wq_max_active` | threads | `2` | `1..=64` | Helper threads per context (`kmod`: `fastio-help-N`) that do the blocking I/O (uncached file reads, FIFOs, ttys); blocking work progresses only through them. |
//! | `affinity_offset` | CPU number | unset: not pinned | `0..=1023` | Pin polling worker `i` to CPU `(affinity_offset + i) % n` of the `n` CPUs the process may run on (its cpuset and affinity: entry, not number). |
//! | `wq_affinity_offset` | CPU number | unset: not pinned | `0..=1023` | Pin helper thread `j` (`kmod`) to CPU `(wq_affinity_offset + j) % n` of the `n` CPUs the process may run on. |
//! | `kmod_inline` | — | `"auto"` | `"auto"`, `"always"`, `"never"` | `kmod` backend: a serving thread that must wake a sleeping lane thread or wait for completions does the lane's work itself (`ENTER_INLINE`, as io_uring without SQPOLL does) instead of waking it; awake lane threads poll while it is busy and hand over once it waits. `auto`: when the process may run on fewer CPUs than lanes + 2 (a lane thread woken there would take a CPU from the serving thread or its peers). |
//! | `kmod_defer` | flag | `true` | `true`/`false` (or `1`/`0`) | `kmod` backend, with inline callers (`kmod_inline`): a request that becomes ready while the serving thread is in user space waits for its next `ENTER` instead of waking a sleeping lane thread (`ENTER_DEFER`, io_uring's `DEFER_TASKRUN`). `false` for a program that sleeps outside the proactor while its requests should progress (the Redis shim turns it off). |
//! | `sqpoll` | flag | `true` | `true`/`false` (or `1`/`0`) | `uring` backend: use a kernel SQ polling thread (`IORING_SETUP_SQPOLL`). |
//! | `uring_coop_taskrun` | flag | `true` | `true`/`false` (or `1`/`0`) | `uring` backend: `IORING_SETUP_COOP_TASKRUN` with `TASKRUN_FLAG`. Without it the kernel interrupts a thread running in user space (an IPI, then the signal path and its lock) to finish each request that became ready; with it the thread finishes them at its next kernel entry (a sleeping thread is still woken), and the proactor enters when the ring says work waits. Measured +13% req/s at 25 echo connections on the host (BENCHMARKS.md). `false` restores the interrupt, for a program that computes in user space for long stretches without the proactor while its requests should progress. Kernels before 5.19 refuse it; the runtime then runs without. |
//! | `esca_localize` | flag | `false` | `true`/`false` (or `1`/`0`) | FastIO/ESCA compatibility only: lanes are always per-worker memory in fastio-rs, so it has no further effect. |
//! | `max_table_entry` | entries | `64` | `1..=32768` | FastIO's table geometry, see below. |
//! | `max_table_len` | tables | `1` | `1..=1024` | FastIO's table geometry, see below; `max_table_entry * max_table_len` must not exceed `32768`. |
//!
//! FastIO sized its rings as `max_table_len` tables of `max_table_entry` entries. When
//! `sq_entries` is absent and either legacy key is present, `sq_entries` becomes
//! `(max_table_entry * max_table_len).next_power_of_two()` (FastIO's `64 * 10` gives
//! `1024`); an explicit `sq_entries` wins over the legacy keys.
//!
//! Keys that start with `shim_` ([`ADAPTOR_KEY_PREFIX`]) belong to the Redis adaptor
//! (`redis-shim/src/settings.rs` documents and checks them); the runtime skips them.
//!
//! # Which file is read
//!
//! [`Config::resolve`], used by the binaries, takes the first of: the `--config PATH`
//! argument; the `FASTIO_CONF` environment variable; the path that `make config` recorded
//! at build time (the `FASTIO_CONF_PATH` variable seen by `runtime/build.rs`); the built-in
//! defaults. A file named by any of the first three must exist.
//!
//! # Errors
//!
//! Every error names the file and the 1-based line of the offending key, e.g.
//! `fastio.conf:3: max_ker_worker = 0: must be between 1 and 64`; TOML syntax errors
//! also carry the column (`fastio.conf:4:17: TOML syntax error: ...`).

use std::error::Error as StdError;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use fastio_uapi::{MAX_ENTRIES, MAX_FILES, MAX_HELPERS, MAX_WORKERS};
use toml::de::DeTable;

mod doc;
mod error;

#[cfg(test)]
use doc::{edit_distance, suggest};
use doc::{Doc, Entry};
pub use error::ConfigError;
use error::{range_msg, ring_msg, within};

/// Environment variable that names the configuration file (second in
/// [`Config::resolve`]'s order, after `--config`).
pub const ENV_VAR: &str = "FASTIO_CONF";

/// The path recorded by `make config` when this crate was built (`None`: nothing recorded).
pub const RECORDED_PATH: Option<&str> = option_env!("FASTIO_RECORDED_CONF");

/// Default `cq_entries`: room for thousands of idle connections, each with a RECV in
/// flight, on one lane (16 bytes per entry: 128 KiB).
pub const DEFAULT_CQ_ENTRIES: u32 = 8192;

/// Valid values of an integer key, as `(min, max)`, inclusive.
type Bounds = (u32, u32);
/// `max_ker_worker`, `max_usr_worker`.
const WORKERS: Bounds = (1, MAX_WORKERS);
/// `max_files`.
const FILES: Bounds = (1, MAX_FILES);
/// Both idle times, in milliseconds (up to ten minutes).
const IDLE_MS: Bounds = (1, 600_000);
/// `wq_max_active` (helper threads).
const HELPERS: Bounds = (1, MAX_HELPERS);
/// Both affinity offsets (CPU numbers).
const CPU: Bounds = (0, 1023);
/// `max_table_entry`.
const TABLE_ENTRY: Bounds = (1, MAX_ENTRIES);
/// `max_table_len`.
const TABLE_LEN: Bounds = (1, 1024);

/// Keys with this prefix are the Redis adaptor's (`libfastio_redis_shim.so` reads and
/// checks them); [`Config::parse`] skips them.
pub const ADAPTOR_KEY_PREFIX: &str = "shim_";

/// Every key `fastio.conf` accepts, in the order of the module documentation.
pub const KEYS: [&str; 18] = [
    "backend",
    "max_ker_worker",
    "max_usr_worker",
    "sq_entries",
    "cq_entries",
    "max_files",
    "default_main_worker_idle_time",
    "default_wq_worker_idle_time",
    "wq_max_active",
    "affinity_offset",
    "wq_affinity_offset",
    "kmod_inline",
    "kmod_defer",
    "sqpoll",
    "uring_coop_taskrun",
    "esca_localize",
    "max_table_entry",
    "max_table_len",
];

/// Which backend executes requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// `kmod` if `/dev/fastio` exists, else `uring`, else `threads`.
    #[default]
    Auto,
    /// The kernel module behind `/dev/fastio`.
    Kmod,
    /// io_uring (with or without SQPOLL, see [`Config::sqpoll`]).
    Uring,
    /// Polling threads inside the process that execute requests with ordinary syscalls.
    Threads,
}

impl BackendKind {
    /// Every backend, in the order of their names in messages.
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Auto,
        BackendKind::Kmod,
        BackendKind::Uring,
        BackendKind::Threads,
    ];

    /// The name used in `fastio.conf` and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            BackendKind::Auto => "auto",
            BackendKind::Kmod => "kmod",
            BackendKind::Uring => "uring",
            BackendKind::Threads => "threads",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = ParseBackendKindError;

    /// Parses `auto`, `kmod`, `uring` or `threads` (ASCII case is ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackendKind::ALL
            .into_iter()
            .find(|b| b.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseBackendKindError(s.to_owned()))
    }
}

/// Key `kmod_inline`: when the `kmod` backend's callers run the lanes' work themselves
/// (`ENTER_INLINE`) instead of waking the lane threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum InlineMode {
    /// When the process may run on fewer CPUs than lanes + 2.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never: sleeping lane threads are woken (FastIO's behaviour).
    Never,
}

impl InlineMode {
    /// Every mode, in the order of their names in messages.
    pub const ALL: [InlineMode; 3] = [InlineMode::Auto, InlineMode::Always, InlineMode::Never];

    /// The name used in `fastio.conf`.
    pub const fn as_str(self) -> &'static str {
        match self {
            InlineMode::Auto => "auto",
            InlineMode::Always => "always",
            InlineMode::Never => "never",
        }
    }

    /// Whether callers run inline with `lanes` lanes on `cpus` usable CPUs.
    pub fn inline_for(self, lanes: u32, cpus: usize) -> bool {
        match self {
            InlineMode::Always => true,
            InlineMode::Never => false,
            InlineMode::Auto => (cpus as u64) < u64::from(lanes) + 2,
        }
    }
}

/// The error of [`BackendKind::from_str`]: the name is none of the backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseBackendKindError(String);

impl fmt::Display for ParseBackendKindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown backend {:?}: expected one of auto, kmod, uring, threads",
            self.0
        )
    }
}

impl StdError for ParseBackendKindError {}

/// The runtime configuration; see the [module documentation](self) for every key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Key `backend`: which backend executes requests.
    pub backend: BackendKind,
    /// Key `max_ker_worker`: lanes, one polling worker each (for `kmod` a lane thread
    /// of this process that polls inside the kernel, for `threads` a thread that polls
    /// in user space); `1..=64`.
    pub max_ker_worker: u32,
    /// Key `max_usr_worker`: serving threads of `proactor_echo_server`; `1..=64`.
    pub max_usr_worker: u32,
    /// Key `sq_entries`: submission ring entries per lane; a power of two in `1..=32768`.
    pub sq_entries: u32,
    /// Key `cq_entries`: completion ring entries per lane; a power of two in
    /// `sq_entries..=32768`.
    pub cq_entries: u32,
    /// Key `max_files`: registered file slots; `1..=1048576`.
    pub max_files: u32,
    /// Key `default_main_worker_idle_time`: milliseconds a polling worker spins on an empty
    /// ring before it sleeps; `1..=600000`.
    pub idle_ms: u32,
    /// Key `default_wq_worker_idle_time`: FastIO's idle time of its workqueue workers, in
    /// milliseconds; `1..=600000`. Accepted and validated so that FastIO's files parse,
    /// but it has no effect with the v2 module (helpers are parked threads that cost
    /// nothing while idle) and is not sent to the kernel.
    pub wq_idle_ms: u32,
    /// Key `wq_max_active`: helper threads per context that do the blocking I/O
    /// (`kmod`: `fastio-help-N`, the module's `SetupParams::helpers`); `1..=64`.
    pub wq_max_active: u32,
    /// Key `affinity_offset`: pin polling worker `i` to entry `(offset + i) % n` of the
    /// `n` CPUs the process may run on (CPU `offset + i` modulo the CPU count when it may
    /// run on all); `None` = not pinned; `0..=1023`.
    pub affinity_offset: Option<u32>,
    /// Key `wq_affinity_offset`: pin helper thread `j` (`kmod`) like `affinity_offset`
    /// pins polling workers; `None` = not pinned; `0..=1023`.
    pub wq_affinity_offset: Option<u32>,
    /// Key `kmod_inline`: see [`InlineMode`].
    pub kmod_inline: InlineMode,
    /// Key `kmod_defer`: inline callers pass `ENTER_DEFER`: requests that become ready
    /// while the serving thread is in user space wait for its next `ENTER` rather than
    /// waking a lane thread (leave it off when the program sleeps outside the proactor).
    pub kmod_defer: bool,
    /// Key `sqpoll`: the `uring` backend uses `IORING_SETUP_SQPOLL`.
    pub sqpoll: bool,
    /// Key `uring_coop_taskrun`: the `uring` backend sets up its ring with
    /// `IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG` (see the module's table:
    /// leave it off when the program sleeps outside the proactor).
    pub uring_coop_taskrun: bool,
    /// Key `esca_localize`: accepted for compatibility with FastIO/ESCA files. Lanes are
    /// always per-worker memory in fastio-rs, so it has no further effect.
    pub esca_localize: bool,
    /// Key `max_table_entry`: FastIO's entries per table, as given; `1..=32768`.
    pub max_table_entry: u32,
    /// Key `max_table_len`: FastIO's number of tables, as given; `1..=1024`.
    pub max_table_len: u32,
}

impl Default for Config {
    /// The documented defaults: backend `auto`, one lane of 256/8192 entries, 4096 file
    /// slots, 20 ms idle time, 2 helper threads, no pinning, SQPOLL on.
    fn default() -> Self {
        Config {
            backend: BackendKind::Auto,
            max_ker_worker: 1,
            max_usr_worker: 1,
            sq_entries: 256,
            cq_entries: DEFAULT_CQ_ENTRIES,
            max_files: 4096,
            idle_ms: 20,
            wq_idle_ms: 1000,
            wq_max_active: 2,
            affinity_offset: None,
            wq_affinity_offset: None,
            kmod_inline: InlineMode::Auto,
            kmod_defer: true,
            sqpoll: true,
            uring_coop_taskrun: true,
            esca_localize: false,
            max_table_entry: 64,
            max_table_len: 1,
        }
    }
}

impl Config {
    /// Parses the text of a `fastio.conf`; `origin` (normally the file name) prefixes every
    /// error message.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let doc = Doc { text, origin };
        let table = DeTable::parse(text).map_err(|e| doc.syntax_error(&e))?;
        // Report the first problem in file order, not in the table's key order.
        let mut entries: Vec<Entry<'_>> = table
            .get_ref()
            .iter()
            .map(|(key, value)| Entry {
                doc: &doc,
                name: key.get_ref(),
                key_span: key.span(),
                value,
            })
            .collect();
        entries.sort_by_key(|e| e.key_span.start);

        let mut cfg = Config::default();
        let mut sq_entry = None;
        let mut cq_entry = None;
        let mut legacy: Vec<&Entry<'_>> = Vec::new();
        for e in &entries {
            match e.name {
                "backend" => cfg.backend = e.backend()?,
                "max_ker_worker" => cfg.max_ker_worker = e.int(WORKERS)?,
                "max_usr_worker" => cfg.max_usr_worker = e.int(WORKERS)?,
                "sq_entries" => {
                    cfg.sq_entries = e.ring_size()?;
                    sq_entry = Some(e);
                }
                "cq_entries" => {
                    cfg.cq_entries = e.ring_size()?;
                    cq_entry = Some(e);
                }
                "max_files" => cfg.max_files = e.int(FILES)?,
                "default_main_worker_idle_time" => cfg.idle_ms = e.int(IDLE_MS)?,
                "default_wq_worker_idle_time" => cfg.wq_idle_ms = e.int(IDLE_MS)?,
                "wq_max_active" => cfg.wq_max_active = e.int(HELPERS)?,
                "affinity_offset" => cfg.affinity_offset = Some(e.int(CPU)?),
                "wq_affinity_offset" => cfg.wq_affinity_offset = Some(e.int(CPU)?),
                "kmod_inline" => cfg.kmod_inline = e.inline_mode()?,
                "kmod_defer" => cfg.kmod_defer = e.flag()?,
                "sqpoll" => cfg.sqpoll = e.flag()?,
                "uring_coop_taskrun" => cfg.uring_coop_taskrun = e.flag()?,
                "esca_localize" => cfg.esca_localize = e.flag()?,
                "max_table_entry" => {
                    cfg.max_table_entry = e.int(TABLE_ENTRY)?;
                    legacy.push(e);
                }
                "max_table_len" => {
                    cfg.max_table_len = e.int(TABLE_LEN)?;
                    legacy.push(e);
                }
                name if name.starts_with(ADAPTOR_KEY_PREFIX) => {}
                _ => return Err(e.unknown_key()),
            }
        }

        // `legacy` is in file order, so the last entry is the line that broke the limit.
        let table_size = cfg.max_table_entry * cfg.max_table_len;
        if let Some(last) = legacy.last() {
            if table_size > MAX_ENTRIES {
                return Err(last.invalid(format!(
                    "max_table_entry * max_table_len = {} * {} = {table_size} exceeds {MAX_ENTRIES}",
                    cfg.max_table_entry, cfg.max_table_len
                )));
            }
        }
        let sq_from_legacy = sq_entry.is_none() && !legacy.is_empty();
        if sq_from_legacy {
            cfg.sq_entries = table_size.next_power_of_two();
        }
        match cq_entry {
            Some(e) if cfg.cq_entries < cfg.sq_entries => {
                let why = if sq_from_legacy {
                    ", from max_table_entry * max_table_len"
                } else {
                    ""
                };
                return Err(e.invalid(format!(
                    "must be at least sq_entries ({}{why})",
                    cfg.sq_entries
                )));
            }
            Some(_) => {}
            None => cfg.cq_entries = DEFAULT_CQ_ENTRIES.max(cfg.sq_entries),
        }
        debug_assert!(cfg.validate().is_ok(), "parse let through {cfg:?}");
        Ok(cfg)
    }

    /// Reads and parses the file at `path`. A missing or unreadable file is an error that
    /// names the path.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|e| ConfigError::read(path, "", e))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Finds and loads the configuration the way the binaries do, and says where it came
    /// from. The first that applies wins:
    ///
    /// 1. `explicit` (the `--config` argument), if `Some`;
    /// 2. the file named by the environment variable `FASTIO_CONF`, if set and not empty;
    /// 3. the path recorded at build time by `make config` ([`RECORDED_PATH`]);
    /// 4. the built-in defaults ([`Config::default`]).
    ///
    /// A file named by 1–3 that does not exist is an error (it is never skipped in favour
    /// of the next source); for a recorded path the message says to rerun `make config`.
    pub fn resolve(explicit: Option<&Path>) -> Result<(Config, ConfigSource), ConfigError> {
        let env = std::env::var_os(ENV_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        resolve_from(explicit, env, RECORDED_PATH.map(PathBuf::from))
    }

    /// Checks every value the way [`Config::parse`] does; for a `Config` that was built or
    /// changed in code (command-line overrides). The error names the key but no file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ranges = [
            ("max_ker_worker", self.max_ker_worker, WORKERS),
            ("max_usr_worker", self.max_usr_worker, WORKERS),
            ("max_files", self.max_files, FILES),
            ("default_main_worker_idle_time", self.idle_ms, IDLE_MS),
            ("default_wq_worker_idle_time", self.wq_idle_ms, IDLE_MS),
            ("wq_max_active", self.wq_max_active, HELPERS),
            ("max_table_entry", self.max_table_entry, TABLE_ENTRY),
            ("max_table_len", self.max_table_len, TABLE_LEN),
        ];
        let offsets = [
            ("affinity_offset", self.affinity_offset),
            ("wq_affinity_offset", self.wq_affinity_offset),
        ];
        let offsets = offsets
            .into_iter()
            .filter_map(|(key, v)| v.map(|v| (key, v, CPU)));
        for (key, value, bounds) in ranges.into_iter().chain(offsets) {
            if !within(value, bounds) {
                return Err(ConfigError::detached(key, value, range_msg(bounds)));
            }
        }
        for (key, value) in [
            ("sq_entries", self.sq_entries),
            ("cq_entries", self.cq_entries),
        ] {
            if !fastio_uapi::valid_entries(value) {
                return Err(ConfigError::detached(key, value, ring_msg()));
            }
        }
        if self.cq_entries < self.sq_entries {
            let msg = format!("must be at least sq_entries ({})", self.sq_entries);
            return Err(ConfigError::detached("cq_entries", self.cq_entries, msg));
        }
        if u64::from(self.max_table_entry) * u64::from(self.max_table_len) > u64::from(MAX_ENTRIES)
        {
            let msg = format!("max_table_entry * max_table_len exceeds {MAX_ENTRIES}");
            return Err(ConfigError::detached(
                "max_table_len",
                self.max_table_len,
                msg,
            ));
        }
        Ok(())
    }

    /// Number of lanes (= polling workers): `max_ker_worker`.
    pub fn lanes(&self) -> u32 {
        self.max_ker_worker
    }

    /// One-line summary for a startup banner, e.g.
    /// `backend=auto lanes=1 usr_workers=1 sq=256 cq=8192 files=4096 idle=20ms helpers=2 affinity=none inline=auto sqpoll=on`
    /// (`affinity=+2` means worker `i` runs on the `(2 + i) % n`-th of the `n` allowed CPUs; a
    /// `wq_affinity=+N` field appears when `wq_affinity_offset` is set).
    /// `default_wq_worker_idle_time` is not shown: it has no effect.
    pub fn describe(&self) -> String {
        let affinity = self
            .affinity_offset
            .map_or_else(|| "none".to_owned(), |o| format!("+{o}"));
        let wq_affinity = self
            .wq_affinity_offset
            .map_or_else(String::new, |o| format!(" wq_affinity=+{o}"));
        format!(
            "backend={} lanes={} usr_workers={} sq={} cq={} files={} idle={}ms helpers={} \
             affinity={affinity}{wq_affinity} inline={} sqpoll={}",
            self.backend,
            self.lanes(),
            self.max_usr_worker,
            self.sq_entries,
            self.cq_entries,
            self.max_files,
            self.idle_ms,
            self.wq_max_active,
            self.kmod_inline.as_str(),
            if self.sqpoll { "on" } else { "off" },
        )
    }
}

/// [`Config::resolve`] with its inputs spelled out (so that tests need not touch the
/// process environment or the build).
fn resolve_from(
    explicit: Option<&Path>,
    env: Option<PathBuf>,
    recorded: Option<PathBuf>,
) -> Result<(Config, ConfigSource), ConfigError> {
    let (path, source) = if let Some(p) = explicit {
        (p.to_path_buf(), ConfigSource::File(p.to_path_buf()))
    } else if let Some(p) = env {
        (p.clone(), ConfigSource::Env(p))
    } else if let Some(p) = recorded {
        (p.clone(), ConfigSource::Recorded(p))
    } else {
        return Ok((Config::default(), ConfigSource::Defaults));
    };
    let text = fs::read_to_string(&path).map_err(|e| {
        let note = match &source {
            ConfigSource::Env(_) => " (named by FASTIO_CONF)",
            ConfigSource::Recorded(_) if e.kind() == io::ErrorKind::NotFound => {
                " (recorded by `make config`; rerun `make config` or pass --config)"
            }
            ConfigSource::Recorded(_) => " (recorded by `make config`)",
            _ => "",
        };
        ConfigError::read(&path, note, e)
    })?;
    let cfg = Config::parse(&text, &path.display().to_string())?;
    Ok((cfg, source))
}

/// Where [`Config::resolve`] found the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// The file given explicitly (`--config`).
    File(PathBuf),
    /// The file named by the `FASTIO_CONF` environment variable.
    Env(PathBuf),
    /// The file recorded at build time by `make config`.
    Recorded(PathBuf),
    /// No file: the built-in defaults.
    Defaults,
}

impl ConfigSource {
    /// The file that was read, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::File(p) | ConfigSource::Env(p) | ConfigSource::Recorded(p) => Some(p),
            ConfigSource::Defaults => None,
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{} (--config)", p.display()),
            ConfigSource::Env(p) => write!(f, "{} (from FASTIO_CONF)", p.display()),
            ConfigSource::Recorded(p) => write!(f, "{} (recorded by make config)", p.display()),
            ConfigSource::Defaults => f.write_str(
                "built-in defaults (no --config, no FASTIO_CONF, no `make config` path recorded)",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("max_kerworker", "max_ker_worker"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(suggest("MAX_KER_WORKERS"), Some("max_ker_worker"));
        assert_eq!(suggest("sq_entry"), Some("sq_entries"));
        assert_eq!(suggest("frobnicate"), None);
    }

    #[test]
    fn position_counts_lines_and_chars() {
        let doc = Doc {
            text: "a = 1\n# é\nb = 2",
            origin: "x",
        };
        assert_eq!(doc.position(0), (1, 1));
        assert_eq!(doc.position(6), (2, 1));
        assert_eq!(doc.position(10), (2, 4)); // after "# é" (é is 2 bytes)
        assert_eq!(doc.position(11), (3, 1));
        assert_eq!(doc.position(1000), (3, 6));
        assert_eq!(doc.line_text(12), "b = 2");
    }

    #[test]
    fn recorded_path_missing_says_rerun_make_config() {
        let missing = std::env::temp_dir().join("fastio-no-such-recorded.conf");
        let err = resolve_from(None, None, Some(missing.clone())).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("cannot read {}", missing.display())),
            "{msg}"
        );
        assert!(msg.contains("rerun `make config`"), "{msg}");
        assert!(msg.ends_with(": No such file or directory"), "{msg}");
        assert!(err.is_not_found());
    }

    #[test]
    fn resolve_order() {
        let dir = std::env::temp_dir().join(format!("fastio-config-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.conf");
        let b = dir.join("b.conf");
        fs::write(&a, "max_ker_worker = 3\n").unwrap();
        fs::write(&b, "max_ker_worker = 4\n").unwrap();

        let (cfg, src) = resolve_from(Some(&a), Some(b.clone()), Some(b.clone())).unwrap();
        assert_eq!((cfg.lanes(), src), (3, ConfigSource::File(a.clone())));
        let (cfg, src) = resolve_from(None, Some(b.clone()), Some(a.clone())).unwrap();
        assert_eq!((cfg.lanes(), src), (4, ConfigSource::Env(b.clone())));
        let (cfg, src) = resolve_from(None, None, Some(a.clone())).unwrap();
        assert_eq!(
            (cfg.lanes(), src.clone()),
            (3, ConfigSource::Recorded(a.clone()))
        );
        assert_eq!(
            src.to_string(),
            format!("{} (recorded by make config)", a.display())
        );
        let (cfg, src) = resolve_from(None, None, None).unwrap();
        assert_eq!((cfg, src), (Config::default(), ConfigSource::Defaults));

        // A named file that is missing is an error, not a fall-through to defaults.
        let err = resolve_from(None, Some(dir.join("nope.conf")), None).unwrap_err();
        assert!(err.to_string().contains("(named by FASTIO_CONF)"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
