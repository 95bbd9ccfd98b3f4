//! `libfastio_redis_shim.so`: an `LD_PRELOAD` library that runs an unmodified
//! `redis-server` (or any epoll server that writes to non-blocking sockets) with its
//! socket writes on the fastio rings.
//!
//! ```sh
//! LD_PRELOAD=target/release/libfastio_redis_shim.so redis-server --port 6379
//! ```
//!
//! - `write`, `writev`, `send`, `sendto` and `sendmsg` on a non-blocking stream socket
//!   copy the bytes into the shim's queue for that socket and return at once (see
//!   [`queue`]); the socket is registered into a proactor slot on its first write. Files,
//!   pipes, datagram and blocking sockets go to the C library (one `fstat` per
//!   descriptor number, cached in [`fdtable`]). A socket is classified at its first
//!   write only: one made non-blocking after it stays with the C library, one made
//!   blocking after it stays queued (its writes then never block).
//! - Backpressure stays the program's: the shim holds at most a small allowance per
//!   socket (`shim_socket_allowance` in `fastio.conf`, [`settings`]); a write takes what
//!   is left of it (a short write), and fails with `EAGAIN` when nothing is, without
//!   waiting, so the rest stays in the program's output buffer, where Redis's
//!   `client-output-buffer-limit`, `CLIENT LIST` and `INFO` see it.
//! - `epoll_wait`, `epoll_pwait`, `epoll_pwait2` and `poll` on the event-loop thread
//!   submit the queued requests (the proactor wakes a worker only when it sleeps), reap
//!   completions and finish short sends, then sleep on the program's events only (in
//!   short slices while a completion that something waits behind is due), so a client
//!   whose peer never reads costs the others nothing.
//! - `close` (and `close_range`, `closefrom`, `fclose`, `dup2`/`dup3` over the number,
//!   `syscall(SYS_close, ...)`) keeps the socket in its slot until the queued bytes are
//!   sent, then releases the slot; `accept` forgets what a reused number was. Each
//!   write checks that the number still names its socket (its cookie), so a number
//!   closed where the shim could not see it never sends to the old socket. A closed
//!   socket whose bytes make no progress for the linger time (a peer that does not
//!   read) is aborted: the rest is dropped and the slot released. Since the slot holds
//!   its own reference to the socket, `close` does not remove the socket from the
//!   program's epoll sets until then: the program must `EPOLL_CTL_DEL` it before
//!   closing (Redis does), or it may get events for a number it closed.
//! - `shutdown` of the writing side comes after the queued bytes. `exec` and `exit` send
//!   what is queued first (bounded; not from a signal handler, which never waits).
//! - A copy of a queued socket's descriptor (`dup`, `F_DUPFD`) gets a queue of its own:
//!   bytes written through the two descriptors are in no set order.
//! - A failed queued write (EPIPE, ECONNRESET...) is reported by the next `write`-family
//!   or `read`/`recv` call on the descriptor, with the same errno (and SIGPIPE for EPIPE
//!   unless `MSG_NOSIGNAL`, as the kernel would).
//! - A signal handler that writes to a queued socket while its thread is inside the shim
//!   neither waits for the shim's lock nor overtakes the queued bytes ([`signals`]).
//! - A `fork` child never touches the parent's rings.
//!
//! The backend comes from `fastio.conf` ([`fastio::Config::resolve`]: `$FASTIO_CONF`,
//! else the path recorded by `make config`, else the defaults); the runtime prints the
//! backend it picked when the shim starts (the event loop's first wait).

#![deny(missing_docs)]

pub mod epreg;
pub mod fdtable;
#[cfg(not(test))]
pub mod interpose;
pub mod queue;
#[cfg(not(test))]
mod real;
pub mod settings;
pub mod shim;
pub mod signals;
pub mod stats;
pub mod sys;
