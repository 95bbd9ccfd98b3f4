//! The static file server of `examples/fileserver.rs` on every backend that runs here,
//! in both modes (SENDFILE, READ + SEND), and the epoll + sendfile(2) baseline: pipelined
//! keep-alive requests for a small and a 3 MiB file, HEAD, 404 (missing file, directory),
//! 400 (`..`, not starting with `/`), 405 (POST), then `Connection: close`; every
//! status, length and body byte checked.

#[path = "../../runtime/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream as StdStream;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fastio::rt::{self, Runtime, TcpListener};
use fastio::Config;
use fastio_examples::fileserver::{self, route, Mode, Route};

/// A fresh root with the test files: one per call, since the tests run in parallel in
/// one process (a shared root was rewritten under a running server).
fn root() -> (PathBuf, Vec<u8>, Vec<u8>) {
    static N: AtomicU32 = AtomicU32::new(0);
    let base = std::env::var("FASTIO_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let n = N.fetch_add(1, Ordering::Relaxed);
    let root = base.join(format!("fastio-fileserver-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("dir")).unwrap();
    let small = b"small file\n".to_vec();
    let big: Vec<u8> = (0..3u64 << 20).map(|i| (i * 31 + i / 4096) as u8).collect();
    std::fs::write(root.join("a.txt"), &small).unwrap();
    std::fs::write(root.join("dir/big.bin"), &big).unwrap();
    (root, small, big)
}

#[test]
fn routes() {
    let r = Path::new("/srv");
    let file = |p: &str| Route::File {
        path: PathBuf::from(p),
        head: false,
    };
    assert_eq!(route(b"GET /a/b HTTP/1.1", r), (file("/srv/a/b"), true));
    assert_eq!(route(b"GET /a?x=1 HTTP/1.0", r), (file("/srv/a"), false));
    for bad in [
        &b"GET /../etc/passwd HTTP/1.1"[..],
        b"GET /a/../../x HTTP/1.1",
        b"GET //etc/passwd HTTP/1.1",
        b"GET etc HTTP/1.1",
        b"GET /a\\..\\b HTTP/1.1",
        b"GET / HTTP/1.1 extra",
        b"GET",
    ] {
        assert!(
            matches!(route(bad, r).0, Route::Status(400, _)),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(matches!(
        route(b"POST /a HTTP/1.1", r).0,
        Route::Status(405, _)
    ));
}

/// One response: status, headers (lowercase names), body (none for HEAD).
fn response(r: &mut BufReader<StdStream>, head: bool) -> (u16, String, Vec<u8>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = String::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        headers.push_str(&lower);
    }
    let mut body = vec![0u8; if head { 0 } else { len }];
    r.read_exact(&mut body).unwrap();
    (status, headers, body)
}

/// The client: every request pipelined in one write, then each answer checked.
fn client(addr: std::net::SocketAddr, small: Vec<u8>, big: Vec<u8>, name: String) {
    let mut s = StdStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /dir/big.bin HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /dir/big.bin HTTP/1.1\r\n\r\n\
          GET /missing HTTP/1.1\r\n\r\n\
          GET /dir HTTP/1.1\r\n\r\n\
          GET /../a.txt HTTP/1.1\r\n\r\n\
          POST /a.txt HTTP/1.1\r\n\r\n\
          GET /a.txt HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let (st, _, body) = response(&mut r, false);
    assert_eq!((st, body), (200, small.clone()), "[{name}] a.txt");
    let (st, h, body) = response(&mut r, false);
    assert_eq!(st, 200, "[{name}]");
    assert!(
        h.contains(&format!("content-length: {}", big.len())),
        "[{name}] {h}"
    );
    assert!(body == big, "[{name}] big.bin differs");
    let (st, h, _) = response(&mut r, true);
    assert_eq!(st, 200);
    assert!(
        h.contains(&format!("content-length: {}", big.len())),
        "[{name}] {h}"
    );
    assert_eq!(response(&mut r, false).0, 404, "[{name}] missing");
    assert_eq!(response(&mut r, false).0, 404, "[{name}] directory");
    assert_eq!(response(&mut r, false).0, 400, "[{name}] ..");
    let (st, h, _) = response(&mut r, false);
    assert_eq!(st, 405, "[{name}] POST");
    assert!(h.contains("allow: get, head"));
    let (st, h, body) = response(&mut r, false);
    assert_eq!((st, body), (200, small), "[{name}] last");
    assert!(h.contains("connection: close"));
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "[{name}] the server closes after Connection: close"
    );
}

#[test]
fn sendfile_and_read_modes_on_every_backend() {
    let (root, small, big) = root();
    let base = Config {
        idle_ms: 5,
        ..Config::default()
    };
    common::each_flavor(
        "fileserver",
        common::flavors(base),
        Runtime::new,
        |rt| rt.backend().sqpoll,
        |fl, rt| {
            if std::env::var("FASTIO_SCRATCH").is_ok() {
                common::drop_caches();
            }
            for mode in [Mode::Sendfile, Mode::Read] {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap();
                let name = format!("{} {mode:?}", fl.name);
                let (s, b) = (small.clone(), big.clone());
                let c = std::thread::spawn(move || client(addr, s, b, name));
                let root = Rc::new(root.clone());
                rt.block_on(async {
                    let listener = TcpListener::from_std(&l).unwrap();
                    let conn = listener.accept().await.unwrap();
                    rt::timeout(Duration::from_secs(60), fileserver::serve(conn, root, mode))
                        .await
                        .expect("connection not done in time")
                        .unwrap();
                    rt::unblock(move || c.join().unwrap()).await
                });
            }
        },
    );
}

#[test]
fn epoll_baseline() {
    let (root, small, big) = root();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Serves until the test process ends.
    std::thread::spawn(move || fileserver::epoll::serve(addr, root, 1));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while StdStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "epoll server not up");
        std::thread::yield_now();
    }
    client(addr, small, big, "epoll".into());
}
