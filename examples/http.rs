//! `cargo run --release -p fastio-examples --example http -- 127.0.0.1:8080 [WORKERS]`
//!
//! A small HTTP/1.1 responder: every request gets `200 OK` with a fixed body. Connections
//! are kept alive (HTTP/1.1's default) until the client sends `Connection: close`, speaks
//! HTTP/1.0 without `Connection: keep-alive`, or goes away; pipelined requests are
//! answered in order. Try it with `curl -v http://127.0.0.1:8080/ http://127.0.0.1:8080/`
//! (one connection, two requests).

use fastio::rt::TcpStream;

const BODY: &[u8] = b"Hello from fastio\n";
/// Largest request head accepted; longer ones get 431 and the connection is closed.
const MAX_HEAD: usize = 16 * 1024;

/// What one request head asks for: whether the connection stays open after the answer.
fn keep_alive(head: &[u8]) -> bool {
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

fn response(keep: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
        BODY.len(),
        if keep { "" } else { "Connection: close\r\n" }
    )
    .into_bytes();
    r.extend_from_slice(BODY);
    r
}

async fn serve(conn: TcpStream) -> std::io::Result<()> {
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
        buf.clear();
        let (r, b) = conn.read(buf).await;
        buf = b;
        if r? == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf);
    }
}

async fn connection(conn: TcpStream) {
    if let Err(e) = serve(conn).await {
        eprintln!("http: connection ended: {e}");
    }
}

fn main() -> std::io::Result<()> {
    fastio_examples::serve_pool("http", "127.0.0.1:8080", connection)
}
