//! The shim's own settings, from the environment (the backend comes from `fastio.conf`).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `FASTIO_SHIM_MAX_QUEUED` | `64M` | Bytes the shim may hold for queued writes, all sockets together (suffixes `K`, `M`, `G`; at least 64K). One socket may hold a quarter of it. Beyond that a write waits for queued writes to finish; if its socket makes no progress for 10 ms it fails with `EAGAIN`, as a full socket would. |
//! | `FASTIO_SHIM_STATS` | unset | A file the shim writes its counters to when the process exits. |
//! | `FASTIO_SHIM_DISABLE` | unset | `1`: load, but pass every call to the C library. |

use std::fmt;
use std::path::PathBuf;

/// Environment variable: the cap on queued bytes.
pub const MAX_QUEUED_VAR: &str = "FASTIO_SHIM_MAX_QUEUED";
/// Environment variable: where to write the counters at exit.
pub const STATS_VAR: &str = "FASTIO_SHIM_STATS";
/// Environment variable: `1` turns the shim off.
pub const DISABLE_VAR: &str = "FASTIO_SHIM_DISABLE";

/// Default cap on queued bytes (64 MiB).
pub const DEFAULT_MAX_QUEUED: usize = 64 << 20;
/// Smallest accepted cap.
const MIN_MAX_QUEUED: usize = 64 << 10;

/// The shim's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Cap on the bytes held for queued writes, all sockets together.
    pub max_queued: usize,
    /// Cap for one socket (a quarter of `max_queued`).
    pub max_queued_per_socket: usize,
    /// Where to write the counters at exit.
    pub stats_path: Option<PathBuf>,
}

impl Settings {
    /// Settings with the cap `max_queued`.
    pub fn with_cap(max_queued: usize) -> Settings {
        Settings {
            max_queued,
            max_queued_per_socket: (max_queued / 4).max(MIN_MAX_QUEUED / 4),
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
            "queued writes capped at {} bytes ({} per socket)",
            self.max_queued, self.max_queued_per_socket
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
