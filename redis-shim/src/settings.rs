//! The shim's own settings, from the environment (the backend comes from `fastio.conf`).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `FASTIO_SHIM_MAX_QUEUED` | `64M` | Bytes the shim may hold for queued writes, all open sockets together (suffixes `K`, `M`, `G`; at least 64K). One socket may hold a quarter of it. Beyond that a write waits for queued writes to finish; if its socket makes no progress for 10 ms it fails with `EAGAIN`, as a full socket would. The bytes still queued for sockets the program has closed are not counted against it; they have a bound of their own, the same size (a socket closed beyond it is aborted at once). |
//! | `FASTIO_SHIM_CLOSE_LINGER_MS` | `10000` | How long a socket the program has closed may go without sending any of its queued bytes (a peer that does not read) before the shim aborts it: the rest is dropped and the slot released, as the kernel eventually aborts an orphaned socket. |
//! | `FASTIO_SHIM_STATS` | unset | A file the shim writes its counters to when the process exits. |
//! | `FASTIO_SHIM_DISABLE` | unset | `1`: load, but pass every call to the C library. |

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Environment variable: the cap on queued bytes.
pub const MAX_QUEUED_VAR: &str = "FASTIO_SHIM_MAX_QUEUED";
/// Environment variable: how long a closed socket may make no progress, in milliseconds.
pub const CLOSE_LINGER_VAR: &str = "FASTIO_SHIM_CLOSE_LINGER_MS";
/// Environment variable: where to write the counters at exit.
pub const STATS_VAR: &str = "FASTIO_SHIM_STATS";
/// Environment variable: `1` turns the shim off.
pub const DISABLE_VAR: &str = "FASTIO_SHIM_DISABLE";

/// Default cap on queued bytes (64 MiB).
pub const DEFAULT_MAX_QUEUED: usize = 64 << 20;
/// Default linger of a closed socket that makes no progress.
pub const DEFAULT_CLOSE_LINGER: Duration = Duration::from_secs(10);
/// Smallest accepted cap.
const MIN_MAX_QUEUED: usize = 64 << 10;

/// The shim's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Cap on the bytes held for queued writes, all sockets together.
    pub max_queued: usize,
    /// Cap for one socket (a quarter of `max_queued`).
    pub max_queued_per_socket: usize,
    /// How long a socket the program has closed may send nothing before it is aborted.
    pub close_linger: Duration,
    /// Where to write the counters at exit.
    pub stats_path: Option<PathBuf>,
}

impl Settings {
    /// Settings with the cap `max_queued`.
    pub fn with_cap(max_queued: usize) -> Settings {
        Settings {
            max_queued,
            max_queued_per_socket: (max_queued / 4).max(MIN_MAX_QUEUED / 4),
            close_linger: DEFAULT_CLOSE_LINGER,
            stats_path: None,
        }
    }

    /// Reads the environment.
    pub fn from_env() -> Result<Settings, String> {
        let cap = match std::env::var(MAX_QUEUED_VAR) {
            Ok(v) if !v.trim().is_empty() => {
                parse_size(&v).map_err(|e| format!("{MAX_QUEUED_VAR}={v:?}: {e}"))?
            }
            _ => DEFAULT_MAX_QUEUED,
        };
        let mut s = Settings::with_cap(cap);
        if let Ok(v) = std::env::var(CLOSE_LINGER_VAR) {
            if !v.trim().is_empty() {
                let ms: u64 = v.trim().parse().map_err(|_| {
                    format!("{CLOSE_LINGER_VAR}={v:?}: expected milliseconds, such as 10000")
                })?;
                s.close_linger = Duration::from_millis(ms);
            }
        }
        s.stats_path = std::env::var_os(STATS_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        Ok(s)
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "queued writes capped at {} bytes ({} per socket); closed sockets linger {} ms",
            self.max_queued,
            self.max_queued_per_socket,
            self.close_linger.as_millis()
        )
    }
}

/// Whether `FASTIO_SHIM_DISABLE` asks for no interposition.
pub fn disabled_by_env() -> bool {
    std::env::var(DISABLE_VAR).is_ok_and(|v| v.trim() == "1")
}

/// Parses `65536`, `512K`, `64M`, `1G` (binary units, case-insensitive, optional `B`/`iB`).
pub fn parse_size(text: &str) -> Result<usize, String> {
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
        .map_err(|_| "expected a byte count such as 67108864, 512K, 64M or 1G".to_string())?;
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| "too large".to_string())?;
    if bytes < MIN_MAX_QUEUED {
        return Err(format!("must be at least {MIN_MAX_QUEUED} bytes (64K)"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_bounds() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size(" 64M "), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2MB"), Ok(2 << 20));
        assert!(parse_size("1K").unwrap_err().contains("at least"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn a_socket_gets_a_quarter_of_the_cap() {
        let s = Settings::with_cap(8 << 20);
        assert_eq!(s.max_queued_per_socket, 2 << 20);
    }
}
