//! `cargo run --release -p fastio-examples --example http -- 127.0.0.1:8080 [WORKERS]`
//!
//! A small HTTP/1.1 responder: every request gets `200 OK` with a fixed body. Connections
//! are kept alive (HTTP/1.1's default) until the client sends `Connection: close`, speaks
//! HTTP/1.0 without `Connection: keep-alive`, or goes away; pipelined requests are
//! answered in order. Try it with `curl -v http://127.0.0.1:8080/ http://127.0.0.1:8080/`
//! (one connection, two requests).

use fastio::rt::TcpStream;
use fastio_examples::http::serve;

async fn connection(conn: TcpStream) {
    if let Err(e) = serve(conn).await {
        eprintln!("http: connection ended: {e}");
    }
}

fn main() -> std::io::Result<()> {
    fastio_examples::serve_pool("http", "127.0.0.1:8080", connection)
}
