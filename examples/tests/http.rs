//! The HTTP/1.1 responder of `examples/http.rs` on every backend that runs here:
//! keep-alive, pipelined requests answered in order, `Connection: close` and HTTP/1.0.

#[path = "../../runtime/tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream as StdStream;
use std::time::Duration;

use fastio::rt::{self, Runtime, TcpListener};
use fastio::Config;
use fastio_examples::http::{keep_alive, response, serve};

#[test]
fn keep_alive_rules() {
    assert!(keep_alive(b"GET / HTTP/1.1\r\nHost: x"));
    assert!(!keep_alive(b"GET / HTTP/1.1\r\nConnection: close"));
    assert!(!keep_alive(b"GET / HTTP/1.0\r\nHost: x"));
    assert!(keep_alive(b"GET / HTTP/1.0\r\nConnection: Keep-Alive"));
}

/// Reads until the peer closes (bounded by the socket's read timeout).
fn read_to_close(s: &mut StdStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn pipelined_keep_alive_then_close() {
    let base = Config {
        idle_ms: 5,
        ..Config::default()
    };
    common::each_flavor(
        "http",
        common::flavors(base),
        Runtime::new,
        |rt| rt.backend().sqpoll,
        |fl, rt| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let client = std::thread::spawn(move || {
                let mut s = StdStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                // Two pipelined requests, then one asking to close, in three writes.
                s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n")
                    .unwrap();
                s.write_all(b"Host: x\r\n\r\n").unwrap();
                s.write_all(b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n")
                    .unwrap();
                read_to_close(&mut s)
            });
            let got = rt.block_on(async {
                let listener = TcpListener::from_std(&l).unwrap();
                let conn = listener.accept().await.unwrap();
                rt::timeout(Duration::from_secs(20), serve(conn))
                    .await
                    .expect("connection not done in time")
                    .unwrap();
                // The stream is dropped (closed) by now; the runtime must keep turning
                // to send the CLOSE while the client reads to the end.
                rt::unblock(move || client.join().unwrap()).await
            });
            let mut want = response(true);
            want.extend(response(true));
            want.extend(response(false));
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "[{}]",
                fl.name
            );
        },
    );
}
