//! `cargo run --release -p fastio-examples --example fileserver -- --root DIR
//!  [--addr 127.0.0.1:8080] [--mode sendfile|read|epoll] [--workers N] [--backend B]`
//!
//! A static file server: HTTP/1.1 GET and HEAD of the files under DIR, keep-alive and
//! pipelining, `Content-Length` ([`fastio_examples::fileserver`]). `--mode sendfile`
//! (the default) sends file bytes with SENDFILE (they never enter user space), `--mode
//! read` with READ into a buffer + SEND, both on the fastio async runtime with the
//! backend of `fastio.conf` or `--backend`; `--mode epoll` is the baseline: plain epoll
//! and `sendfile(2)`. Prints `listening on ADDR` once it accepts connections.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;

use fastio::rt::{self, Pool, PoolOptions, TcpListener};
use fastio::BackendKind;
use fastio_examples::fileserver::{self, Mode};

struct Args {
    root: PathBuf,
    addr: SocketAddr,
    mode: String,
    workers: usize,
    backend: Option<BackendKind>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        root: PathBuf::new(),
        addr: "127.0.0.1:8080".parse().unwrap(),
        mode: "sendfile".into(),
        workers: 1,
        backend: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        match k.as_str() {
            "--root" => a.root = v.into(),
            "--addr" => a.addr = v.parse().map_err(|e| format!("--addr {v}: {e}"))?,
            "--mode" => a.mode = v,
            "--workers" => a.workers = v.parse().map_err(|e| format!("--workers {v}: {e}"))?,
            "--backend" => a.backend = Some(v.parse().map_err(|e| format!("--backend {v}: {e}"))?),
            _ => return Err(format!("unknown option {k}")),
        }
    }
    if a.root.as_os_str().is_empty() {
        return Err("--root DIR is required".into());
    }
    a.root = a.root.canonicalize().map_err(|e| format!("--root: {e}"))?;
    Ok(a)
}

fn main() -> io::Result<()> {
    let a = args().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "fileserver: {e}\nusage: fileserver --root DIR [--addr A] \
                 [--mode sendfile|read|epoll] [--workers N] [--backend B]"
            ),
        )
    })?;
    let mode = match a.mode.as_str() {
        "sendfile" => Mode::Sendfile,
        "read" => Mode::Read,
        "epoll" => {
            eprintln!("fileserver: epoll + sendfile(2), {} worker(s)", a.workers);
            return fileserver::epoll::serve(a.addr, a.root, a.workers);
        }
        m => return Err(io::Error::other(format!("unknown --mode {m}"))),
    };
    let mut config = fastio_examples::config()?;
    if let Some(b) = a.backend {
        config.backend = b;
    }
    eprintln!("fileserver: {mode:?}, {} worker(s)", a.workers);
    let pool = Pool::new(
        &config,
        PoolOptions {
            workers: a.workers,
            pin: None,
        },
    )?;
    let (addr, root) = (a.addr, a.root);
    let servers: Vec<_> = (0..a.workers)
        .map(|w| {
            let root = root.clone();
            pool.spawn_with_on(w, move || async move {
                let l = TcpListener::bind_reuseport(addr)?;
                if w == 0 {
                    println!("listening on {addr}");
                }
                let root = Rc::new(root);
                loop {
                    let conn = l.accept().await?;
                    let root = Rc::clone(&root);
                    rt::spawn(async move {
                        if let Err(e) = fileserver::serve(conn, root, mode).await {
                            if e.kind() != io::ErrorKind::BrokenPipe
                                && e.kind() != io::ErrorKind::ConnectionReset
                            {
                                eprintln!("fileserver: connection ended: {e}");
                            }
                        }
                    });
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
