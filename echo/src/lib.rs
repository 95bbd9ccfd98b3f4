//! Echo servers and the echo_bench load client, as a library so that the binaries and
//! the tests share one implementation.
//!
//! - [`proactor_server`]: the FastIO echo server rebuilt on the fastio proactor.
//! - [`epoll_server`]: the classic epoll baseline.
//! - [`mod@bench`]: the load client behind `echo_bench`.
//! - [`check`]: end-to-end checks (byte-verified echo, misbehaving clients) used by the
//!   tests against every server.

pub mod bench;
pub mod check;
pub mod epoll_server;
pub mod net;
pub mod proactor_server;
pub mod signals;
