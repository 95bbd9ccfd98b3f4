//! Examples of the fastio async runtime (`fastio::rt`); see the `[[example]]`s:
//!
//! - `echo ADDR [WORKERS]`: an echo server on a pool of workers sharing one listener;
//! - `http ADDR [WORKERS]`: a small HTTP/1.1 responder (keep-alive, fixed body);
//! - `copy SRC DST`: a file copy with several reads and writes in flight.
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
