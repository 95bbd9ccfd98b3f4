//! The parameters of an `echo_bench` run ([`BenchConfig`]) and why a run could not take
//! place ([`BenchError`]).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Parameters of one benchmark run.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchConfig {
    /// Server address, `host:port` (resolved when the run starts).
    pub address: String,
    /// Concurrent connections (`-c/--number`).
    pub connections: usize,
    /// Length of the measurement (`-t/--duration`).
    pub duration: Duration,
    /// Bytes per message (`-l/--length`).
    pub length: usize,
    /// Messages in flight per connection (`-d/--depth`); 1 = strict request/response.
    pub depth: usize,
    /// A connection with outstanding messages that moves no byte for this long is
    /// reported as stalled (`--stall-timeout`); also bounds the connect phase.
    pub stall_timeout: Duration,
    /// Print a progress line on stderr every second (runs longer than 3 s only).
    pub progress: bool,
    /// Worker threads; `None` = `min(connections, 2 × cores)`.
    pub threads: Option<usize>,
}

impl Default for BenchConfig {
    /// `rust_echo_bench`'s defaults: 127.0.0.1:12345, 50 connections, 60 s, 512 bytes;
    /// depth 1, stall timeout 5 s, progress on.
    fn default() -> Self {
        Self {
            address: "127.0.0.1:12345".to_string(),
            connections: 50,
            duration: Duration::from_secs(60),
            length: 512,
            depth: 1,
            stall_timeout: Duration::from_secs(5),
            progress: true,
            threads: None,
        }
    }
}

impl BenchConfig {
    /// `rust_echo_bench`'s header: `Benchmarking: ADDR` and `C clients, running L bytes,
    /// T sec.`, followed by an empty line.
    pub fn header(&self) -> String {
        let mut s = format!(
            "Benchmarking: {}\n{} clients, running {} bytes, {} sec.\n",
            self.address,
            self.connections,
            self.length,
            self.duration.as_secs_f64()
        );
        if self.depth > 1 {
            s.push_str(&format!("Pipelining depth: {}\n", self.depth));
        }
        s
    }

    pub(super) fn validate(&self) -> Result<(), BenchError> {
        let bad = |what: &str| Err(BenchError::Config(what.to_string()));
        if self.connections == 0 {
            return bad("the number of connections must be at least 1");
        }
        if self.length == 0 {
            return bad("the message length must be at least 1 byte");
        }
        if self.depth == 0 {
            return bad("the pipelining depth must be at least 1");
        }
        if self.duration.is_zero() {
            return bad("the duration must be positive");
        }
        if self.stall_timeout.is_zero() {
            return bad("the stall timeout must be positive");
        }
        if self.threads == Some(0) {
            return bad("the number of threads must be at least 1");
        }
        Ok(())
    }
}

/// Why a run could not take place at all. Problems during the run (mismatches, failed
/// or stalled connections) are in the [`Report`](super::Report) instead.
#[derive(Debug)]
pub enum BenchError {
    /// A parameter is out of range.
    Config(String),
    /// The address could not be resolved.
    Resolve {
        /// The address as given.
        address: String,
        /// Why (`None`: it resolved to nothing).
        source: Option<io::Error>,
    },
    /// A connection could not be established.
    Connect {
        /// The server address.
        addr: SocketAddr,
        /// Which connection (1-based).
        index: usize,
        /// Connections asked for.
        total: usize,
        /// Why.
        source: io::Error,
    },
    /// The connect phase took longer than its bound.
    ConnectTimeout {
        /// The server address.
        addr: SocketAddr,
        /// Connections established in time.
        established: usize,
        /// Connections asked for.
        total: usize,
        /// The bound.
        timeout: Duration,
    },
    /// A worker thread could not be started or panicked.
    Thread(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(what) => write!(f, "invalid configuration: {what}"),
            Self::Resolve {
                address,
                source: Some(e),
            } => write!(f, "cannot resolve address {address}: {e}"),
            Self::Resolve {
                address,
                source: None,
            } => write!(f, "address {address} resolves to nothing"),
            Self::Connect {
                addr,
                index,
                total,
                source,
            } => write!(
                f,
                "cannot connect to {addr} (connection {index} of {total}): {source}"
            ),
            Self::ConnectTimeout {
                addr,
                established,
                total,
                timeout,
            } => write!(
                f,
                "connecting to {addr} timed out after {:.1} s ({established} of {total} \
                 connections established)",
                timeout.as_secs_f64()
            ),
            Self::Thread(what) => write!(f, "worker thread: {what}"),
        }
    }
}

impl std::error::Error for BenchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Resolve {
                source: Some(e), ..
            }
            | Self::Connect { source: e, .. } => Some(e),
            _ => None,
        }
    }
}
