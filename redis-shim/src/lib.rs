//! `libfastio_redis_shim.so`: an `LD_PRELOAD` library that runs an unmodified
//! `redis-server` (or any epoll server that writes to non-blocking sockets) with its
//! socket writes on the fastio rings.
//!
//! ```sh
//! LD_PRELOAD=target/release/libfastio_redis_shim.so redis-server --port 6379
//! ```
//!
//! - `write`, `writev`, `send`, `sendto` and `sendmsg` on a non-blocking stream socket
//!   copy the bytes into the shim's queue for that socket and return the full length at
//!   once (see [`queue`]); the socket is registered into a proactor slot on its first
//!   write. Files, pipes, datagram and blocking sockets go to the C library (one
//!   `fstat` per descriptor number, cached in [`fdtable`]). A socket is classified at
//!   its first write only: one made non-blocking after it stays with the C library, one
//!   made blocking after it stays queued (its writes then never block).
//! - `epoll_wait`, `epoll_pwait` and `poll` on the event-loop thread submit the queued
//!   requests (the proactor wakes a worker only when it sleeps), reap completions, finish
//!   short sends, and while requests are in flight wait for completions and events both.
//! - `close` keeps the socket in its slot until the queued bytes are sent, then releases
//!   the slot; `dup2`/`dup3`/`accept` forget what a reused number was. A closed socket
//!   whose bytes make no progress for `FASTIO_SHIM_CLOSE_LINGER_MS` (a peer that does
//!   not read) is aborted: the rest is dropped and the slot released. Since the slot
//!   holds its own reference to the socket, `close` does not remove the socket from the
//!   program's epoll sets until then: the program must `EPOLL_CTL_DEL` it before closing
//!   (Redis does), or it may get events for a number it closed.
//! - A copy of a queued socket's descriptor (`dup`, `F_DUPFD`) gets a queue of its own:
//!   bytes written through the two descriptors are in no set order.
//! - A failed queued write (EPIPE, ECONNRESET...) is reported by the next `write`-family
//!   or `read`/`recv` call on the descriptor, with the same errno (and SIGPIPE for EPIPE
//!   unless `MSG_NOSIGNAL`, as the kernel would).
//! - Queued bytes are capped ([`settings`]); beyond the cap a write waits while its
//!   socket makes progress, and after 10 ms without fails with `EAGAIN` like a full
//!   socket. The bytes of closed sockets have a bound of their own.
//! - A `fork` child never touches the parent's rings.
//!
//! The backend comes from `fastio.conf` ([`fastio::Config::resolve`]: `$FASTIO_CONF`,
//! else the path recorded by `make config`, else the defaults); the runtime prints the
//! backend it picked when the shim starts (the event loop's first wait).

#![deny(missing_docs)]

pub mod fdtable;
#[cfg(not(test))]
pub mod interpose;
pub mod queue;
#[cfg(not(test))]
mod real;
pub mod settings;
pub mod shim;
pub mod stats;
