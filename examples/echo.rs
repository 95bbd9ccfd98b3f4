//! `cargo run --release -p fastio-examples --example echo -- 127.0.0.1:7000 [WORKERS]`
//!
//! An echo server on a pool of runtimes (one per worker thread), every worker accepting
//! on the same listening socket. Try it with `nc 127.0.0.1 7000`.

use fastio::rt::TcpStream;

async fn echo(conn: TcpStream) {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        let (r, b) = conn.read(buf).await;
        if !matches!(r, Ok(n) if n > 0) {
            return;
        }
        let (r, b) = conn.write_all(b).await;
        if r.is_err() {
            return;
        }
        buf = b;
    }
}

fn main() -> std::io::Result<()> {
    fastio_examples::serve_pool("echo", "127.0.0.1:7000", echo)
}
