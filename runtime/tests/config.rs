//! `fastio.conf` parsing: FastIO's own file, the repository's file, defaults, and one test
//! per class of bad input checking that the message names the key and its line.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use fastio::config::{ENV_VAR, RECORDED_PATH};
use fastio::{BackendKind, Config, ConfigError, ConfigSource, InlineMode};

/// FastIO's original `fastio.conf`, verbatim.
const FASTIO_ORIGINAL: &str = "\
esca_localize = 0
max_table_entry = 64
max_table_len = 10
max_usr_worker = 1
max_ker_worker = 2
default_main_worker_idle_time = 1500
default_wq_worker_idle_time = 1500
affinity_offset = 0
wq_affinity_offset = 10
";

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("fastio-config-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Parses `text` as `fastio.conf`, expecting an error; returns its message.
fn error(text: &str) -> String {
    match Config::parse(text, "fastio.conf") {
        Ok(cfg) => panic!("expected an error for {text:?}, got {cfg:?}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts that the error for `text` is exactly `expected`.
fn assert_error(text: &str, expected: &str) {
    assert_eq!(error(text), expected, "input: {text:?}");
}

#[test]
fn kmod_inline_takes_three_names_and_decides_by_cpus() {
    for (text, mode) in [
        ("auto", InlineMode::Auto),
        ("always", InlineMode::Always),
        ("Never", InlineMode::Never),
    ] {
        let cfg = Config::parse(&format!("kmod_inline = \"{text}\"\n"), "f").unwrap();
        assert_eq!(cfg.kmod_inline, mode);
    }
    assert_error(
        "kmod_inline = \"sometimes\"\n",
        "fastio.conf:1: kmod_inline = \"sometimes\": must be \"auto\", \"always\" or \"never\"",
    );
    assert!(error("kmod_inline = true\n").contains("a string"));
    // auto: inline when a woken lane thread would have no CPU of its own.
    assert!(InlineMode::Auto.inline_for(1, 2));
    assert!(!InlineMode::Auto.inline_for(1, 3));
    assert!(InlineMode::Auto.inline_for(2, 3));
    assert!(!InlineMode::Auto.inline_for(u32::MAX, usize::MAX));
    assert!(InlineMode::Always.inline_for(1, 64));
    assert!(!InlineMode::Never.inline_for(64, 1));
}

#[test]
fn fastio_original_file_parses() {
    let cfg = Config::parse(FASTIO_ORIGINAL, "fastio.conf").unwrap();
    let expected = Config {
        backend: BackendKind::Auto,
        max_ker_worker: 2,
        max_usr_worker: 1,
        sq_entries: 1024, // (64 * 10).next_power_of_two()
        cq_entries: 8192,
        max_files: 4096,
        idle_ms: 1500,
        wq_idle_ms: 1500,
        wq_max_active: 2,
        affinity_offset: Some(0),
        wq_affinity_offset: Some(10),
        kmod_inline: InlineMode::Auto,
        kmod_defer: true,
        sqpoll: true,
        uring_coop_taskrun: true,
        esca_localize: false,
        max_table_entry: 64,
        max_table_len: 10,
    };
    assert_eq!(cfg, expected);
    assert_eq!(cfg.lanes(), 2);
    // FastIO's workqueue idle time is accepted but has no effect with the v2 module
    // (helpers are parked threads): the banner does not show it.
    assert!(!cfg.describe().contains("wq_idle"), "{}", cfg.describe());
    cfg.validate().unwrap();
    assert_eq!(
        cfg.describe(),
        "backend=auto lanes=2 usr_workers=1 sq=1024 cq=8192 files=4096 idle=1500ms \
         helpers=2 affinity=+0 wq_affinity=+10 inline=auto sqpoll=on"
    );
}

#[test]
fn repository_fastio_conf_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fastio.conf");
    let cfg = Config::load(&path).unwrap();
    assert_eq!(cfg.backend, BackendKind::Auto);
    assert_eq!(cfg.lanes(), 1);
    assert_eq!(cfg.max_usr_worker, 1);
    assert_eq!((cfg.sq_entries, cfg.cq_entries), (256, 8192));
    assert_eq!(cfg.max_files, 4096);
    assert_eq!((cfg.idle_ms, cfg.wq_idle_ms), (20, 1000));
    assert_eq!(cfg.wq_max_active, 2);
    assert_eq!((cfg.affinity_offset, cfg.wq_affinity_offset), (None, None));
    assert!(cfg.sqpoll);
    assert!(!cfg.esca_localize);
    cfg.validate().unwrap();
    // The shipped file spells out the defaults.
    assert_eq!(cfg, Config::default());
}

#[test]
fn defaults() {
    let d = Config::default();
    assert_eq!(d.backend, BackendKind::Auto);
    assert_eq!((d.max_ker_worker, d.max_usr_worker), (1, 1));
    assert_eq!((d.sq_entries, d.cq_entries, d.max_files), (256, 8192, 4096));
    assert_eq!((d.idle_ms, d.wq_idle_ms, d.wq_max_active), (20, 1000, 2));
    assert_eq!((d.affinity_offset, d.wq_affinity_offset), (None, None));
    assert!(d.sqpoll && d.uring_coop_taskrun && !d.esca_localize);
    assert_eq!((d.max_table_entry, d.max_table_len), (64, 1));
    d.validate().unwrap();

    assert_eq!(Config::parse("", "empty.conf").unwrap(), d);
    let only_comments = "# nothing here\n\n   # still nothing\n";
    assert_eq!(Config::parse(only_comments, "c.conf").unwrap(), d);
    assert_eq!(
        d.describe(),
        "backend=auto lanes=1 usr_workers=1 sq=256 cq=8192 files=4096 idle=20ms helpers=2 \
         affinity=none inline=auto sqpoll=on"
    );
}

#[test]
fn new_keys_and_derived_sizes() {
    let text = "\
backend = \"uring\"   # comment after a value
sq_entries = 64
sqpoll = false
uring_coop_taskrun = 0
esca_localize = true
max_files = 0x10
affinity_offset = 2
wq_max_active = 1_0
";
    let cfg = Config::parse(text, "x.conf").unwrap();
    assert_eq!(cfg.backend, BackendKind::Uring);
    assert_eq!((cfg.sq_entries, cfg.cq_entries), (64, 8192));
    assert!(!cfg.sqpoll && !cfg.uring_coop_taskrun && cfg.esca_localize);
    assert_eq!((cfg.max_files, cfg.wq_max_active), (16, 10));
    assert_eq!(cfg.affinity_offset, Some(2));
    assert_eq!(
        cfg.describe(),
        "backend=uring lanes=1 usr_workers=1 sq=64 cq=8192 files=16 idle=20ms helpers=10 \
         affinity=+2 inline=auto sqpoll=off"
    );

    // cq defaults to 8192, or sq_entries when that is larger.
    let cfg = Config::parse("sq_entries = 32768", "x.conf").unwrap();
    assert_eq!((cfg.sq_entries, cfg.cq_entries), (32768, 32768));
    // An explicit sq_entries wins over the legacy geometry.
    let cfg = Config::parse("max_table_len = 10\nsq_entries = 128", "x.conf").unwrap();
    assert_eq!(
        (cfg.sq_entries, cfg.cq_entries, cfg.max_table_len),
        (128, 8192, 10)
    );
    // One legacy key is enough; the other takes its default (64 * 3 = 192 -> 256).
    let cfg = Config::parse("max_table_len = 3", "x.conf").unwrap();
    assert_eq!(cfg.sq_entries, 256);
    let cfg = Config::parse("max_table_entry = 32768", "x.conf").unwrap();
    assert_eq!((cfg.sq_entries, cfg.cq_entries), (32768, 32768));
    // Equal rings are fine.
    let cfg = Config::parse("sq_entries = 8\ncq_entries = 8", "x.conf").unwrap();
    assert_eq!((cfg.sq_entries, cfg.cq_entries), (8, 8));
}

#[test]
fn backend_names() {
    for b in BackendKind::ALL {
        assert_eq!(b.to_string().parse::<BackendKind>(), Ok(b));
        let cfg = Config::parse(&format!("backend = '{b}'"), "x.conf").unwrap();
        assert_eq!(cfg.backend, b);
    }
    assert_eq!("Kmod".parse::<BackendKind>(), Ok(BackendKind::Kmod));
    let err = "fast".parse::<BackendKind>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown backend \"fast\": expected one of auto, kmod, uring, threads"
    );
    assert_error(
        "\nbackend = \"fast\"",
        "fastio.conf:2: backend = \"fast\": must be one of \"auto\", \"kmod\", \"uring\", \"threads\"",
    );
    assert_error(
        "backend = 1",
        "fastio.conf:1: backend: expected a string (\"auto\", \"kmod\", \"uring\" or \"threads\"), \
         found an integer",
    );
}

#[test]
fn unknown_key() {
    let text = "max_ker_worker = 1\n\n# typo below\n\n\n\nmax_kerworker = 2\n";
    assert_error(
        text,
        "fastio.conf:7: unknown key `max_kerworker` (did you mean `max_ker_worker`?)",
    );
    let msg = error("a = 1\nfrobnicate = 1");
    assert!(
        msg.starts_with("fastio.conf:1: unknown key `a` (known keys: backend, "),
        "{msg}"
    );
    assert_error(
        "max_ker_worker = 1\n[fastio]\nmax_usr_worker = 1",
        "fastio.conf:2: unknown key `fastio` (fastio.conf has no tables or sections: write every \
         key at the top level)",
    );
    // The first bad key in file order is reported, whatever the alphabetical order.
    assert!(error("zzz = 1\naaa = 1").starts_with("fastio.conf:1: unknown key `zzz`"));

    let err = Config::parse("x = 1\nsq_entrys = 4", "f.conf").unwrap_err();
    assert_eq!(
        (err.line(), err.column(), err.key()),
        (Some(1), Some(1), Some("x"))
    );
    assert_eq!(err.origin(), Some("f.conf"));
}

#[test]
fn wrong_types() {
    assert_error(
        "sqpoll = true\nmax_ker_worker = \"2\"",
        "fastio.conf:2: max_ker_worker: expected an integer, found a string",
    );
    assert_error(
        "default_main_worker_idle_time = 1.5",
        "fastio.conf:1: default_main_worker_idle_time: expected an integer, found a float",
    );
    assert_error(
        "\n\nsq_entries = [256]",
        "fastio.conf:3: sq_entries: expected an integer, found an array",
    );
    assert_error(
        "max_files = { n = 1 }",
        "fastio.conf:1: max_files: expected an integer, found a table",
    );
    assert_error(
        "cq_entries = true",
        "fastio.conf:1: cq_entries: expected an integer, found a boolean",
    );
    assert_error(
        "# x\nesca_localize = \"yes\"",
        "fastio.conf:2: esca_localize: expected 0, 1, true or false, found a string",
    );
    assert_error(
        "sqpoll = 2",
        "fastio.conf:1: sqpoll = 2: must be 0, 1, true or false",
    );
    // A dotted key turns the value into a table.
    assert_error(
        "max_ker_worker.x = 1",
        "fastio.conf:1: max_ker_worker: expected an integer, found a table",
    );
    let err = Config::parse("max_usr_worker = 'x'", "f.conf").unwrap_err();
    assert_eq!(
        (err.line(), err.column(), err.key()),
        (Some(1), Some(18), Some("max_usr_worker"))
    );
}

#[test]
fn out_of_range_values() {
    assert_error(
        "esca_localize = 0\nmax_table_entry = 64\nmax_ker_worker = 0",
        "fastio.conf:3: max_ker_worker = 0: must be between 1 and 64",
    );
    assert_error(
        "max_ker_worker = 65",
        "fastio.conf:1: max_ker_worker = 65: must be between 1 and 64",
    );
    assert_error(
        "max_usr_worker = -1",
        "fastio.conf:1: max_usr_worker = -1: must be between 1 and 64",
    );
    // Negative where 0 is allowed.
    assert_error(
        "affinity_offset = -1",
        "fastio.conf:1: affinity_offset = -1: must be between 0 and 1023",
    );
    // Absurd: beyond u32 (it would wrap to 1), beyond i64, beyond everything.
    assert_error(
        "\nmax_ker_worker = 4294967297",
        "fastio.conf:2: max_ker_worker = 4294967297: must be between 1 and 64",
    );
    assert_error(
        "default_wq_worker_idle_time = 99999999999999999999999999999999999999999999",
        "fastio.conf:1: default_wq_worker_idle_time = 99999999999999999999999999999999999999999999: \
         must be between 1 and 600000",
    );
    assert_error(
        "default_main_worker_idle_time = 600001",
        "fastio.conf:1: default_main_worker_idle_time = 600001: must be between 1 and 600000",
    );
    assert_error(
        "max_files = 0",
        "fastio.conf:1: max_files = 0: must be between 1 and 1048576",
    );
    assert_error(
        "wq_max_active = 65",
        "fastio.conf:1: wq_max_active = 65: must be between 1 and 64",
    );
    assert_error(
        "wq_max_active = 0",
        "fastio.conf:1: wq_max_active = 0: must be between 1 and 64",
    );
    assert_error(
        "wq_affinity_offset = 1024",
        "fastio.conf:1: wq_affinity_offset = 1024: must be between 0 and 1023",
    );
    assert_error(
        "max_table_len = 1025",
        "fastio.conf:1: max_table_len = 1025: must be between 1 and 1024",
    );
    assert_error(
        "max_table_len = 1024\nmax_table_entry = 64",
        "fastio.conf:2: max_table_entry = 64: max_table_entry * max_table_len = 64 * 1024 = 65536 \
         exceeds 32768",
    );
    let err = Config::parse("\nmax_ker_worker = 0", "f.conf").unwrap_err();
    assert_eq!(
        (err.line(), err.column(), err.key()),
        (Some(2), Some(18), Some("max_ker_worker"))
    );
}

#[test]
fn ring_sizes() {
    assert_error(
        "max_ker_worker = 1\nsq_entries = 1000",
        "fastio.conf:2: sq_entries = 1000: must be a power of two between 1 and 32768",
    );
    assert_error(
        "cq_entries = 3000",
        "fastio.conf:1: cq_entries = 3000: must be a power of two between 1 and 32768",
    );
    assert_error(
        "sq_entries = 0",
        "fastio.conf:1: sq_entries = 0: must be a power of two between 1 and 32768",
    );
    assert_error(
        "sq_entries = 65536",
        "fastio.conf:1: sq_entries = 65536: must be a power of two between 1 and 32768",
    );
    assert_error(
        "sq_entries = -256",
        "fastio.conf:1: sq_entries = -256: must be a power of two between 1 and 32768",
    );
    assert_error(
        "cq_entries = 128\nsq_entries = 256",
        "fastio.conf:1: cq_entries = 128: must be at least sq_entries (256)",
    );
    assert_error(
        "max_table_entry = 64\nmax_table_len = 10\ncq_entries = 512",
        "fastio.conf:3: cq_entries = 512: must be at least sq_entries (1024, from max_table_entry \
         * max_table_len)",
    );
}

#[test]
fn syntax_errors() {
    assert_error(
        "max_ker_worker = 1\nsq_entries = \n",
        "fastio.conf:2:14: TOML syntax error: string values must be quoted, expected literal \
         string, in `sq_entries =`",
    );
    assert_error(
        "max_ker_worker = 1\nmax_usr_worker = 1 sqpoll = true\n",
        "fastio.conf:2:27: TOML syntax error: unexpected key or value, expected newline, `#`, in \
         `max_usr_worker = 1 sqpoll = true`",
    );
    let err = Config::parse("x = 1\n\"unterminated = 2\n", "f.conf").unwrap_err();
    assert_eq!(err.line(), Some(2), "{err}");
    assert!(err.to_string().starts_with("f.conf:2:"), "{err}");
}

#[test]
fn duplicate_key() {
    let text = "max_ker_worker = 1\nsqpoll = true\nmax_ker_worker = 2\n";
    assert_error(
        text,
        "fastio.conf:3:1: TOML syntax error: duplicate key `max_ker_worker`, in `max_ker_worker = 2`",
    );
    let err = Config::parse(text, "fastio.conf").unwrap_err();
    assert_eq!((err.line(), err.key()), (Some(3), Some("max_ker_worker")));
}

#[test]
fn missing_file_names_the_path() {
    let dir = TempDir::new();
    let missing = dir.0.join("fastio.conf");
    let err = Config::load(&missing).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot read {}: No such file or directory",
            missing.display()
        )
    );
    assert!(err.is_not_found());
    assert!(std::error::Error::source(&err).is_some());

    let err = Config::resolve(Some(&missing)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot read {}: No such file or directory",
            missing.display()
        )
    );

    // A directory is not a file.
    let err = Config::load(&dir.0).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot read {}: ", dir.0.display())),
        "{err}"
    );
    assert!(!err.is_not_found());
}

#[test]
fn load_reports_the_path_in_errors() {
    let dir = TempDir::new();
    let path = dir.file("bad.conf", "# FastIO\nmax_ker_worker = 0\n");
    let err: ConfigError = Config::load(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}:2: max_ker_worker = 0: must be between 1 and 64",
            path.display()
        )
    );
    assert_eq!(err.origin(), Some(path.display().to_string().as_str()));
}

#[test]
fn validate_checks_overrides() {
    let error = |cfg: Config| cfg.validate().unwrap_err();
    let d = Config::default;
    let err = error(Config {
        max_ker_worker: 100,
        ..d()
    });
    assert_eq!(
        err.to_string(),
        "max_ker_worker = 100: must be between 1 and 64"
    );
    assert_eq!(
        (err.key(), err.line(), err.origin()),
        (Some("max_ker_worker"), None, None)
    );
    let err = error(Config {
        sq_entries: 1000,
        ..d()
    });
    assert_eq!(
        err.to_string(),
        "sq_entries = 1000: must be a power of two between 1 and 32768"
    );
    let err = error(Config {
        sq_entries: 1024,
        cq_entries: 512,
        ..d()
    });
    assert_eq!(
        err.to_string(),
        "cq_entries = 512: must be at least sq_entries (1024)"
    );
    let err = error(Config {
        wq_max_active: 65,
        ..d()
    });
    assert_eq!(
        err.to_string(),
        "wq_max_active = 65: must be between 1 and 64"
    );
    let err = error(Config {
        wq_affinity_offset: Some(5000),
        ..d()
    });
    assert_eq!(
        err.to_string(),
        "wq_affinity_offset = 5000: must be between 0 and 1023"
    );
    let err = error(Config {
        max_table_entry: 64,
        max_table_len: 1024,
        ..d()
    });
    assert_eq!(
        err.to_string(),
        "max_table_len = 1024: max_table_entry * max_table_len exceeds 32768"
    );
}

/// Everything that reads the process environment lives in this one test, so that no
/// other test thread observes `FASTIO_CONF` half-set.
#[test]
fn resolve_sources_and_environment() {
    let dir = TempDir::new();
    let explicit = dir.file("explicit.conf", "max_ker_worker = 3\n");
    let from_env = dir.file("env.conf", "max_ker_worker = 4\nbackend = \"threads\"\n");

    std::env::remove_var(ENV_VAR);
    // No --config, no FASTIO_CONF: the recorded path if `make config` recorded one.
    match (Config::resolve(None), RECORDED_PATH) {
        (Ok((cfg, src)), None) => {
            assert_eq!(cfg, Config::default());
            assert_eq!(src, ConfigSource::Defaults);
            assert_eq!(
                src.to_string(),
                "built-in defaults (no --config, no FASTIO_CONF, no `make config` path recorded)"
            );
        }
        (Ok((_, src)), Some(recorded)) => {
            assert_eq!(src, ConfigSource::Recorded(PathBuf::from(recorded)));
        }
        (Err(e), Some(recorded)) => {
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("cannot read {recorded}")), "{msg}");
            assert!(msg.contains("rerun `make config`"), "{msg}");
        }
        (Err(e), None) => panic!("defaults cannot fail: {e}"),
    }

    std::env::set_var(ENV_VAR, &from_env);
    let (cfg, src) = Config::resolve(None).unwrap();
    assert_eq!((cfg.lanes(), cfg.backend), (4, BackendKind::Threads));
    assert_eq!(src, ConfigSource::Env(from_env.clone()));
    assert_eq!(
        src.to_string(),
        format!("{} (from FASTIO_CONF)", from_env.display())
    );
    assert_eq!(src.path(), Some(from_env.as_path()));

    // --config wins over FASTIO_CONF.
    let (cfg, src) = Config::resolve(Some(&explicit)).unwrap();
    assert_eq!(cfg.lanes(), 3);
    assert_eq!(src, ConfigSource::File(explicit.clone()));
    assert_eq!(
        src.to_string(),
        format!("{} (--config)", explicit.display())
    );

    // FASTIO_CONF naming a missing file is an error, not a fall-through.
    let missing = dir.0.join("missing.conf");
    std::env::set_var(ENV_VAR, &missing);
    let err = Config::resolve(None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot read {} (named by FASTIO_CONF): No such file or directory",
            missing.display()
        )
    );

    // An invalid file named by FASTIO_CONF reports its own path and line.
    let bad = dir.file("bad.conf", "\n\nsq_entries = 100\n");
    std::env::set_var(ENV_VAR, &bad);
    let err = Config::resolve(None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}:3: sq_entries = 100: must be a power of two between 1 and 32768",
            bad.display()
        )
    );

    // Empty means unset.
    std::env::set_var(ENV_VAR, "");
    let (_, src) = Config::resolve(None).unwrap_or_else(|e| {
        assert!(RECORDED_PATH.is_some(), "{e}");
        (Config::default(), ConfigSource::Defaults)
    });
    assert!(!matches!(src, ConfigSource::Env(_)));
    std::env::remove_var(ENV_VAR);
}
