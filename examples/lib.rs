//! Examples of the fastio async runtime (`fastio::rt`); see the `[[example]]`s:
//!
//! - `echo ADDR [WORKERS]`: an echo server on a pool of workers sharing one listener;
//! - `http ADDR [WORKERS]`: a small HTTP/1.1 responder (keep-alive, fixed body);
//! - `copy SRC DST`: a file copy with several reads and writes in flight;
//! - `fileserver --root DIR ...`: a static file server (SENDFILE or READ + SEND, or the
//!   epoll + `sendfile(2)` baseline): [`fileserver`].
//!
//! The HTTP responder's connection handler is [`http::serve`], here so that the tests
//! can drive it.
//!
//! Each reads `fastio.conf` the way the servers do (`$FASTIO_CONF`, the path `make
//! config` recorded, else built-in defaults with backend `auto`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use fastio::rt::{self, Pool, PoolOptions, TcpListener, TcpStream};

/// The config the examples run with, printed once.
pub fn config() -> io::Result<fastio::Config> {
    let (config, source) = fastio::Config::resolve(None).map_err(io::Error::other)?;
    eprintln!("config from {source}: {}", config.describe());
    Ok(config)
}

/// The servers' `main`: `ADDR [WORKERS]` from the command line (defaults
/// `default_addr`, 2), a [`Pool`] of that many workers, each with its own listening
/// socket on the address (`SO_REUSEPORT`: the kernel spreads the connections) and a
/// task per connection running `handler`.
pub fn serve_pool<H, F>(name: &str, default_addr: &str, handler: H) -> io::Result<()>
where
    H: Fn(TcpStream) -> F + Copy + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| default_addr.into());
    let workers = args
        .next()
        .map_or(Ok(2), |w| w.parse())
        .map_err(io::Error::other)?;
    let config = config()?;
    let addr: SocketAddr = addr.parse().map_err(io::Error::other)?;
    eprintln!("{name}: listening on {addr} with {workers} worker(s), SO_REUSEPORT");
    let pool = Pool::new(&config, PoolOptions { workers, pin: None })?;
    let servers: Vec<_> = (0..workers)
        .map(|w| {
            pool.spawn_with_on(w, move || async move {
                let l = TcpListener::bind_reuseport(addr)?;
                loop {
                    let conn = l.accept().await?;
                    rt::spawn(handler(conn));
                }
            })
        })
        .collect();
    for s in servers {
        let r: io::Result<()> = s.join().map_err(io::Error::other)?;
        r?;
    }
    Ok(())
}

#[path = "fileserver_lib.rs"]
pub mod fileserver;

/// The HTTP/1.1 responder of the `http` example.
pub mod http {
    use fastio::rt::TcpStream;

    /// The fixed body every request gets.
    pub const BODY: &[u8] = b"Hello from fastio\n";
    /// Largest request head accepted; longer ones get 431 and the connection is closed.
    const MAX_HEAD: usize = 16 * 1024;

    /// Whether the connection stays open after answering this request head.
    pub fn keep_alive(head: &[u8]) -> bool {
        let text = String::from_utf8_lossy(head).to_ascii_lowercase();
        let mut lines = text.split("\r\n");
        let http10 = lines.next().is_some_and(|l| l.ends_with("http/1.0"));
        let conn = lines
            .filter_map(|l| l.strip_prefix("connection:"))
            .map(str::trim)
            .last();
        match conn {
            Some(v) if v.contains("close") => false,
            Some(v) if v.contains("keep-alive") => true,
            _ => !http10,
        }
    }

    /// The answer to one request.
    pub fn response(keep: bool) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
            BODY.len(),
            if keep { "" } else { "Connection: close\r\n" }
        )
        .into_bytes();
        r.extend_from_slice(BODY);
        r
    }

    /// Answers the requests of one connection, in order, until it is to be closed.
    pub async fn serve(conn: TcpStream) -> std::io::Result<()> {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = Vec::with_capacity(4096);
        loop {
            // Answer every complete request head already received (pipelining).
            while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let keep = keep_alive(&pending[..end]);
                pending.drain(..end + 4);
                let (r, _) = conn.write_all(response(keep)).await;
                r?;
                if !keep {
                    return Ok(());
                }
            }
            if pending.len() > MAX_HEAD {
                let msg = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
                let (r, _) = conn.write_all(msg.to_vec()).await;
                return r;
            }
            if !read_more(&conn, &mut buf, &mut pending).await? {
                return Ok(());
            }
        }
    }

    /// Reads what `conn` has into `buf` and appends it to `pending`; false at the end
    /// of the stream.
    pub async fn read_more(
        conn: &TcpStream,
        buf: &mut Vec<u8>,
        pending: &mut Vec<u8>,
    ) -> std::io::Result<bool> {
        let mut b = std::mem::take(buf);
        b.clear();
        let (r, b) = conn.read(b).await;
        *buf = b;
        if r? == 0 {
            return Ok(false);
        }
        pending.extend_from_slice(buf);
        Ok(true)
    }
}
