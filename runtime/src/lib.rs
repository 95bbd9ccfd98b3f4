//! fastio: the userspace runtime of fastio-rs.
//!
//! - [`config`]: `fastio.conf` (FastIO's keys and the new ones), with errors that name
//!   the key and the line.
//! - [`ring`]: ring memory in the exact `fastio_uapi` layout, and its four ends.
//! - [`backend`]: `kmod`, `uring`, `threads` and the `auto` choice between them.
//! - [`proactor`]: the completion-based API every backend offers.
//! - [`rt`]: the async/await runtime over the proactor (executor, thread-per-core pool,
//!   owned-buffer TCP and file I/O, timers, cancel on drop).
#![deny(missing_docs)]

pub mod backend;
pub mod config;
pub mod proactor;
pub mod ring;
pub mod rt;

pub use backend::Choice;
pub use config::{BackendKind, Config, ConfigError, ConfigSource, InlineMode};
pub use fastio_uapi as uapi;
pub use proactor::{BufGroup, Completion, Proactor, ProvidedBuf, RejectReason, Rejected, Slot};
