//! Echo servers and the echo_bench load client, as a library so that the binaries and
//! the tests share one implementation.
//!
//! - [`async_server`]: the FastIO echo server on the async runtime (`fastio::rt`), the
//!   default of `proactor_echo_server`.
//! - [`proactor_server`]: the same server as a hand-written completion loop on the
//!   proactor (`proactor_echo_server --raw`).
//! - [`multishot_server`]: the completion loop on multishot ACCEPT and RECV with a
//!   provided-buffer group (`proactor_echo_server --multishot`).
//! - [`epoll_server`]: the classic epoll baseline.
//! - [`mod@bench`]: the load client behind `echo_bench`.
//! - [`latency`]: latency percentiles (HdrHistogram) for echo_bench and the probes.
//! - [`check`]: end-to-end checks (byte-verified echo, misbehaving clients) used by the
//!   tests against every server.

pub mod async_server;
pub mod bench;
pub mod check;
pub mod epoll_server;
pub mod latency;
pub mod multishot_server;
pub mod net;
pub mod proactor_server;
pub mod signals;
