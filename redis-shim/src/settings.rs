//! The shim's own settings: `shim_*` keys of `fastio.conf` (the same file that picks the
//! backend), each overridable by an environment variable.
//!
//! | `fastio.conf` key | environment variable | default | meaning |
//! |---|---|---|---|
//! | `shim_socket_allowance` | `FASTIO_SHIM_SOCKET_ALLOWANCE` | `256K` | Bytes the shim may hold for one socket: written by the program, not yet taken by the kernel. A write takes at most what is left of it (a short write) and fails with `EAGAIN` when nothing is left, so the rest stays in the program's own output buffer, where its policies (Redis's `client-output-buffer-limit`) and its accounting (`CLIENT LIST` omem, `INFO` memory) see it. At least `4K`. |
//! | `shim_max_queued` | `FASTIO_SHIM_MAX_QUEUED` | `64M` | Bytes the shim may hold for all open sockets together. Beyond it, a write on a socket with nothing queued goes to the kernel directly (in order, since nothing of that socket waits), and one on a socket with bytes queued fails with `EAGAIN`. The bytes still queued for sockets the program has closed are not counted; they have a bound of their own, the same size (a socket closed beyond it is aborted at once). At least `64K`. |
//! | `shim_close_linger_ms` | `FASTIO_SHIM_CLOSE_LINGER_MS` | `10000` | How long a socket the program has closed may go without sending any of its queued bytes (a peer that does not read) before the shim aborts it: the rest is dropped and the slot released, as the kernel eventually aborts an orphaned socket. |
//! | | `FASTIO_SHIM_STATS` | unset | A file the shim writes its counters to when the process exits. |
//! | | `FASTIO_SHIM_DISABLE` | unset | `1`: load, but pass every call to the C library. |
//!
//! Sizes are byte counts, as integers (`262144`) or strings with a binary unit
//! (`"256K"`, `"64M"`, `"1G"`; case-insensitive, optional `B`/`iB`). The runtime skips
//! the `shim_*` keys ([`fastio::config::ADAPTOR_KEY_PREFIX`]); an unknown `shim_*` key or
//! a bad value stops the shim with a message naming the file and line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};

/// Environment variable: the per-socket allowance.
pub const SOCKET_ALLOWANCE_VAR: &str = "FASTIO_SHIM_SOCKET_ALLOWANCE";
/// Environment variable: the cap on queued bytes of all open sockets.
pub const MAX_QUEUED_VAR: &str = "FASTIO_SHIM_MAX_QUEUED";
/// Environment variable: how long a closed socket may make no progress, in milliseconds.
pub const CLOSE_LINGER_VAR: &str = "FASTIO_SHIM_CLOSE_LINGER_MS";
/// Environment variable: where to write the counters at exit.
pub const STATS_VAR: &str = "FASTIO_SHIM_STATS";
/// Environment variable: `1` turns the shim off.
pub const DISABLE_VAR: &str = "FASTIO_SHIM_DISABLE";

/// Key: the per-socket allowance.
pub const SOCKET_ALLOWANCE_KEY: &str = "shim_socket_allowance";
/// Key: the cap on queued bytes of all open sockets.
pub const MAX_QUEUED_KEY: &str = "shim_max_queued";
/// Key: the linger of a closed socket that makes no progress, in milliseconds.
pub const CLOSE_LINGER_KEY: &str = "shim_close_linger_ms";

/// Default per-socket allowance (256 KiB).
pub const DEFAULT_SOCKET_ALLOWANCE: usize = 256 << 10;
/// Default cap on queued bytes (64 MiB).
pub const DEFAULT_MAX_QUEUED: usize = 64 << 20;
/// Default linger of a closed socket that makes no progress.
pub const DEFAULT_CLOSE_LINGER: Duration = Duration::from_secs(10);
/// Smallest accepted allowance.
const MIN_SOCKET_ALLOWANCE: usize = 4 << 10;
/// Smallest accepted cap.
const MIN_MAX_QUEUED: usize = 64 << 10;

/// The shim's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Bytes the shim may hold for one socket.
    pub socket_allowance: usize,
    /// Bytes the shim may hold for all open sockets together.
    pub max_queued: usize,
    /// How long a socket the program has closed may send nothing before it is aborted.
    pub close_linger: Duration,
    /// Where to write the counters at exit.
    pub stats_path: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            socket_allowance: DEFAULT_SOCKET_ALLOWANCE,
            max_queued: DEFAULT_MAX_QUEUED,
            close_linger: DEFAULT_CLOSE_LINGER,
            stats_path: None,
        }
    }
}

impl Settings {
    /// The defaults, then the `shim_*` keys of the configuration file `conf` (if any),
    /// then the environment.
    pub fn resolve(conf: Option<&Path>) -> Result<Settings, String> {
        let mut s = Settings::default();
        if let Some(path) = conf {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            s.apply_conf(&text, &path.display().to_string())?;
        }
        s.apply_env(|k| std::env::var(k).ok())?;
        Ok(s)
    }

    /// Applies the `shim_*` keys of a `fastio.conf` text (`origin` names it in errors).
    pub fn apply_conf(&mut self, text: &str, origin: &str) -> Result<(), String> {
        let table = DeTable::parse(text).map_err(|e| format!("{origin}: {}", e.message()))?;
        for (key, value) in table.get_ref() {
            let name: &str = key.get_ref();
            if !name.starts_with(fastio::config::ADAPTOR_KEY_PREFIX) {
                continue;
            }
            let line = text[..key.span().start.min(text.len())]
                .matches('\n')
                .count()
                + 1;
            let raw = text.get(value.span()).map_or("?", str::trim);
            let at = |msg: String| format!("{origin}:{line}: {name} = {raw}: {msg}");
            let num = match value.get_ref() {
                DeValue::Integer(i) if i.radix() == 10 => i.as_str().replace('_', ""),
                DeValue::String(s) => s.to_string(),
                _ => return Err(at("expected an integer or a string".into())),
            };
            match name {
                SOCKET_ALLOWANCE_KEY => self.socket_allowance = allowance(&num).map_err(at)?,
                MAX_QUEUED_KEY => self.max_queued = max_queued(&num).map_err(at)?,
                CLOSE_LINGER_KEY => self.close_linger = millis(&num).map_err(at)?,
                _ => {
                    return Err(format!(
                        "{origin}:{line}: unknown key `{name}` (the Redis adaptor's keys: \
                         {SOCKET_ALLOWANCE_KEY}, {MAX_QUEUED_KEY}, {CLOSE_LINGER_KEY})"
                    ))
                }
            }
        }
        Ok(())
    }

    /// Applies the environment variables, read through `var`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let at = |k: &str, v: &str, e: String| format!("{k}={v:?}: {e}");
        if let Some(v) = set(SOCKET_ALLOWANCE_VAR) {
            self.socket_allowance = allowance(&v).map_err(|e| at(SOCKET_ALLOWANCE_VAR, &v, e))?;
        }
        if let Some(v) = set(MAX_QUEUED_VAR) {
            self.max_queued = max_queued(&v).map_err(|e| at(MAX_QUEUED_VAR, &v, e))?;
        }
        if let Some(v) = set(CLOSE_LINGER_VAR) {
            self.close_linger = millis(&v).map_err(|e| at(CLOSE_LINGER_VAR, &v, e))?;
        }
        self.stats_path = var(STATS_VAR).filter(|v| !v.is_empty()).map(PathBuf::from);
        Ok(())
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes per socket, {} for all open sockets; closed sockets linger {} ms",
            self.socket_allowance,
            self.max_queued,
            self.close_linger.as_millis()
        )
    }
}

/// Whether `FASTIO_SHIM_DISABLE` asks for no interposition.
pub fn disabled_by_env() -> bool {
    std::env::var(DISABLE_VAR).is_ok_and(|v| v.trim() == "1")
}

fn allowance(text: &str) -> Result<usize, String> {
    parse_size(text, MIN_SOCKET_ALLOWANCE, "4K")
}

fn max_queued(text: &str) -> Result<usize, String> {
    parse_size(text, MIN_MAX_QUEUED, "64K")
}

fn millis(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| "expected milliseconds, such as 10000".to_string())
}

/// Parses `65536`, `512K`, `64M`, `1G` (binary units, case-insensitive, optional
/// `B`/`iB`): at least `min` bytes (`min_text` in the message).
pub fn parse_size(text: &str, min: usize, min_text: &str) -> Result<usize, String> {
    let t = text.trim().to_ascii_uppercase();
    let t = t
        .strip_suffix("IB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(&t);
    let (digits, shift) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: usize = digits
        .trim()
        .parse()
        .map_err(|_| "expected a byte count such as 262144, 256K, 64M or 1G".to_string())?;
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| "too large".to_string())?;
    if bytes < min {
        return Err(format!("must be at least {min} bytes ({min_text})"));
    }
    Ok(bytes)
}

/// What the shim says when io_uring's SQ poller must share too few CPUs with Redis's
/// thread and its clients: the poller then waits for a CPU like any task, and a reply
/// queued behind it waits up to a scheduler slice. Measured on 2 CPUs
/// (scripts/redis/latency.py): redis-benchmark -c 50 -P 1 GET p50 unchanged, p99 3.7x
/// with one client that never reads (the shim on io_uring without SQPOLL: 0.92x).
pub fn sqpoll_note(sqpoll: bool, cpus: usize) -> Option<String> {
    (sqpoll && cpus < 3).then(|| {
        format!(
            "fastio-redis-shim: SQPOLL with {cpus} CPU(s): the SQ poller needs a CPU of its \
             own, and here it competes with Redis's thread and the clients (replies wait for \
             it: p99 latency several times higher under load); backend = \"auto\" or \
             sqpoll = false in fastio.conf avoids it"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_bounds() {
        let p = |t| parse_size(t, MIN_MAX_QUEUED, "64K");
        assert_eq!(p("65536"), Ok(65536));
        assert_eq!(p("512k"), Ok(512 << 10));
        assert_eq!(p(" 64M "), Ok(64 << 20));
        assert_eq!(p("1GiB"), Ok(1 << 30));
        assert_eq!(p("2MB"), Ok(2 << 20));
        assert!(p("1K").unwrap_err().contains("at least"));
        assert!(p("lots").is_err());
        assert!(p("99999999999999999999G").is_err());
    }

    #[test]
    fn conf_keys_apply_and_the_runtime_skips_them() {
        let text = "backend = \"uring\"\nshim_socket_allowance = \"64K\"\n\
                    shim_max_queued = 8_388_608\nshim_close_linger_ms = 300\n";
        // The runtime's parser accepts the file.
        fastio::Config::parse(text, "fastio.conf").unwrap();
        let mut s = Settings::default();
        s.apply_conf(text, "fastio.conf").unwrap();
        assert_eq!(s.socket_allowance, 64 << 10);
        assert_eq!(s.max_queued, 8 << 20);
        assert_eq!(s.close_linger, Duration::from_millis(300));
    }

    #[test]
    fn conf_errors_name_the_file_and_line() {
        let mut s = Settings::default();
        let e = s
            .apply_conf("sqpoll = true\nshim_socket_allowance = \"1K\"\n", "f.conf")
            .unwrap_err();
        assert_eq!(
            e,
            "f.conf:2: shim_socket_allowance = \"1K\": must be at least 4096 bytes (4K)"
        );
        let e = s.apply_conf("shim_allowance = 1\n", "f.conf").unwrap_err();
        assert!(
            e.starts_with("f.conf:1: unknown key `shim_allowance`"),
            "{e}"
        );
        let e = s
            .apply_conf("shim_max_queued = true\n", "f.conf")
            .unwrap_err();
        assert!(e.contains("expected an integer or a string"), "{e}");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let mut s = Settings::default();
        s.apply_conf("shim_socket_allowance = 65536\n", "f")
            .unwrap();
        s.apply_env(|k| (k == SOCKET_ALLOWANCE_VAR).then(|| "8K".to_string()))
            .unwrap();
        assert_eq!(s.socket_allowance, 8 << 10);
        let e = s
            .apply_env(|k| (k == CLOSE_LINGER_VAR).then(|| "soon".to_string()))
            .unwrap_err();
        assert!(e.starts_with("FASTIO_SHIM_CLOSE_LINGER_MS=\"soon\""), "{e}");
    }

    #[test]
    fn sqpoll_is_questioned_only_without_a_cpu_to_spare() {
        assert!(sqpoll_note(true, 1).is_some());
        let note = sqpoll_note(true, 2).unwrap();
        assert!(
            note.contains("2 CPU(s)") && note.contains("sqpoll = false"),
            "{note}"
        );
        assert_eq!(sqpoll_note(true, 3), None);
        assert_eq!(sqpoll_note(false, 1), None);
    }
}
