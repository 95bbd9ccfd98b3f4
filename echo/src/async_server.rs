//! The FastIO echo server on the async runtime (`fastio::rt`): the default of
//! `proactor_echo_server` (`--raw` selects the hand-written completion loop of
//! [`crate::proactor_server`] for comparison).
//!
//! `max_usr_worker` serving threads each run a [`Runtime`] over the same listening
//! socket, with `accept_depth` accepting tasks and one task per connection ([`echo`]).
//! Busy refusals, user_data tokens and retries are the runtime's business. With
//! [`EchoOptions::provided`] (`--provided`), connections receive into one group of
//! provided buffers per thread ([`echo_provided`]): an idle connection holds no buffer.

use std::cell::RefCell;
use std::io;
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fastio::rt::{self, Runtime, TcpListener, TcpStream};
use fastio::{BufGroup, Config};

use crate::proactor_server::{serve_threads, EchoOptions, ServeStats};

/// Serves `listener` with `config.max_usr_worker` threads, one runtime each, until
/// `shutdown` is set (checked every 100 ms). Returns the summed statistics.
pub fn serve(
    listener: &StdListener,
    config: &Config,
    opts: &EchoOptions,
    shutdown: &AtomicBool,
) -> io::Result<ServeStats> {
    serve_threads(config, shutdown, || {
        serve_one(listener, config, opts, shutdown)
    })
}

type Stats = Rc<RefCell<ServeStats>>;

fn serve_one(
    listener: &StdListener,
    config: &Config,
    opts: &EchoOptions,
    shutdown: &AtomicBool,
) -> io::Result<ServeStats> {
    let rt = Runtime::new(config)?;
    let stats = Stats::default();
    let fatal = rt.block_on(async {
        let listener = Rc::new(TcpListener::from_std(listener)?);
        let fatal_tx: Rc<RefCell<Option<io::Error>>> = Rc::default();
        let recv = match opts.provided {
            Some((count, size)) => Recv::Group(rt::register_buffers(count, size)?),
            None => Recv::Own(opts.buf_size),
        };
        for _ in 0..opts.accept_depth.max(1) {
            let (l, stats, fatal) = (
                Rc::clone(&listener),
                Rc::clone(&stats),
                Rc::clone(&fatal_tx),
            );
            rt::spawn(async move {
                if let Err(e) = accept_loop(&l, &stats, recv).await {
                    fatal.borrow_mut().get_or_insert(e);
                }
            });
        }
        let mut tick = rt::interval(Duration::from_millis(100));
        while !shutdown.load(Ordering::Relaxed) && fatal_tx.borrow().is_none() {
            tick.tick().await;
        }
        let e = fatal_tx.borrow_mut().take();
        Ok::<_, io::Error>(e)
    })?;
    // Connections still open are dropped (closed) with the runtime.
    let live = rt.tasks().saturating_sub(opts.accept_depth.max(1)) as u64;
    drop(rt);
    let mut st = stats.take();
    st.closed += live;
    match fatal {
        Some(e) => Err(e),
        None => Ok(st),
    }
}

/// Where a connection receives.
#[derive(Clone, Copy)]
enum Recv {
    /// Into a buffer of its own, of this many bytes.
    Own(usize),
    /// Into a buffer of the thread's provided-buffer group.
    Group(BufGroup),
}

/// Accepts and spawns a connection task, until the listener itself fails.
async fn accept_loop(l: &TcpListener, stats: &Stats, recv: Recv) -> io::Result<()> {
    loop {
        match l.accept().await {
            Ok(conn) => {
                stats.borrow_mut().accepted += 1;
                let stats = Rc::clone(stats);
                rt::spawn(async move {
                    let bytes = match recv {
                        Recv::Own(size) => echo(&conn, size).await,
                        Recv::Group(group) => echo_provided(&conn, group).await,
                    };
                    let mut st = stats.borrow_mut();
                    st.bytes += bytes;
                    st.closed += 1;
                });
            }
            Err(e) => {
                stats.borrow_mut().accept_errors += 1;
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EINVAL | libc::EBADF | libc::ENOTSOCK)
                ) {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("accept on the listening socket failed: {e}"),
                    ));
                }
                eprintln!("proactor_echo_server: accept failed: {e}");
                // Out of descriptors or the like: back off briefly, keep serving.
                rt::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The connection handler: echoes until end of stream or an error; returns the bytes
/// echoed. The stream is closed when the caller drops it.
pub async fn echo(conn: &TcpStream, buf_size: usize) -> u64 {
    let mut buf = Vec::with_capacity(buf_size);
    let mut echoed = 0;
    loop {
        buf.clear();
        let (r, b) = conn.read(buf).await;
        let n = match r {
            Ok(n) if n > 0 => n,
            _ => return echoed,
        };
        let (r, b) = conn.write_all(b).await;
        if r.is_err() {
            return echoed;
        }
        echoed += n as u64;
        buf = b;
    }
}

/// How long a connection waits before it receives again when every buffer of the
/// group is held by connections whose echoes are being sent.
const NO_BUFFER_BACKOFF: Duration = Duration::from_millis(1);

/// The connection handler on a provided-buffer group: each buffer received is sent
/// back as it is (no copy) and returns to the group once sent. Echoes until end of
/// stream or an error; returns the bytes echoed.
pub async fn echo_provided(conn: &TcpStream, group: BufGroup) -> u64 {
    let mut echoed = 0;
    loop {
        let buf = match conn.recv_provided(group).await {
            Ok(Some(b)) => b,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // Nothing was received: the bytes wait in the socket.
                rt::sleep(NO_BUFFER_BACKOFF).await;
                continue;
            }
            _ => return echoed,
        };
        let n = buf.len() as u64;
        let (r, buf) = conn.write_all(buf).await;
        drop(buf);
        if r.is_err() {
            return echoed;
        }
        echoed += n;
    }
}
