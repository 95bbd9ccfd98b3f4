//! `proactor_echo_server PORT [--config PATH] [--backend KIND] [--raw | --multishot |
//! --provided]`: the FastIO echo server on the fastio async runtime (`--raw`: the
//! hand-written completion loop on the proactor, for comparison; `--multishot`: a
//! completion loop on multishot ACCEPT and RECV with a provided-buffer group, whose idle
//! connections hold no buffer; `--provided`: the async server receiving into a
//! provided-buffer group, idem). Stops cleanly on SIGINT/SIGTERM.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fastio::{BackendKind, Config};
use fastio_echo::proactor_server::EchoOptions;

/// Echo server on the fastio proactor (kmod, io_uring or threads backend).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TCP port to listen on (all IPv4 addresses).
    port: u16,
    /// Configuration file (default: $FASTIO_CONF, else the path `make config` recorded,
    /// else built-in defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override the config's backend: auto, kmod, uring or threads.
    #[arg(long)]
    backend: Option<BackendKind>,
    /// Override max_ker_worker (lanes / polling workers).
    #[arg(long)]
    workers: Option<u32>,
    /// Receive buffer per connection, in bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    buf_size: usize,
    /// Serve with the hand-written completion loop on the proactor instead of the async
    /// runtime.
    #[arg(long, conflicts_with = "multishot")]
    raw: bool,
    /// Serve with multishot ACCEPT and RECV into a provided-buffer group shared by every
    /// connection (buffers recycled once their bytes are sent back).
    #[arg(long)]
    multishot: bool,
    /// Serve on the async runtime with receptions into a provided-buffer group per
    /// serving thread (`recv_provided`): idle connections hold no buffer.
    #[arg(long, conflicts_with_all = ["raw", "multishot"])]
    provided: bool,
    /// --multishot, --provided: buffers in the group (per serving thread).
    #[arg(long, default_value_t = 1024)]
    pbufs: u32,
    /// --multishot, --provided: bytes per buffer of the group.
    #[arg(long, default_value_t = 4096)]
    pbuf_size: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proactor_echo_server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (mut config, source) = Config::resolve(args.config.as_deref())?;
    if let Some(b) = args.backend {
        config.backend = b;
    }
    if let Some(w) = args.workers {
        config.max_ker_worker = w;
    }
    config.validate()?;
    if args.buf_size == 0 || args.buf_size > 64 << 20 {
        return Err("--buf-size must be between 1 and 64 MiB".into());
    }
    eprintln!("proactor_echo_server: config from {source}");
    eprintln!("proactor_echo_server: {}", config.describe());
    let shutdown = fastio_echo::signals::shutdown_flag()?;
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.port));
    let listener = fastio_echo::net::listen(addr)
        .map_err(|e| format!("cannot listen on port {}: {e}", args.port))?;
    eprintln!(
        "proactor_echo_server: listening on {}",
        listener.local_addr()?
    );
    let opts = EchoOptions {
        buf_size: args.buf_size,
        provided: args.provided.then_some((args.pbufs, args.pbuf_size)),
        ..EchoOptions::default()
    };
    if args.multishot {
        eprintln!(
            "proactor_echo_server: multishot accept + recv, {} provided buffers of {} bytes \
             (--multishot)",
            args.pbufs, args.pbuf_size
        );
        let opts = fastio_echo::multishot_server::MultishotOptions {
            buffers: args.pbufs,
            buf_size: args.pbuf_size,
            accept_range: 0,
        };
        let stats = fastio_echo::multishot_server::serve(&listener, &config, &opts, shutdown)?;
        return report(&stats);
    }
    let serve = if args.raw {
        fastio_echo::proactor_server::serve
    } else {
        fastio_echo::async_server::serve
    };
    eprintln!(
        "proactor_echo_server: {}",
        if args.raw {
            "raw completion loop (--raw)".to_string()
        } else if args.provided {
            format!(
                "async runtime (fastio::rt), receiving into {} provided buffers of {} bytes \
                 per thread (--provided)",
                args.pbufs, args.pbuf_size
            )
        } else {
            "async runtime (fastio::rt)".to_string()
        }
    );
    let stats = serve(&listener, &config, &opts, shutdown)?;
    report(&stats)
}

fn report(
    stats: &fastio_echo::proactor_server::ServeStats,
) -> Result<(), Box<dyn std::error::Error>> {
    eprintln!(
        "proactor_echo_server: shut down: {} connection(s) accepted, {} closed, {} byte(s) echoed, {} accept error(s)",
        stats.accepted, stats.closed, stats.bytes, stats.accept_errors
    );
    Ok(())
}
