//! The shim preloaded into a program that is not Redis: the workspace's
//! `epoll_echo_server` (non-blocking sockets, level-triggered epoll, `send` of what it
//! read), on every backend available here. Every echo is compared byte for byte and the
//! shim's counters show the echoes went through the rings.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use support::{build_dir, flavors, pattern, ShimStats, TempDir};

/// The echo server built with the workspace (its package's tests build it too).
fn echo_server() -> Option<PathBuf> {
    let p = build_dir().join("epoll_echo_server");
    if p.is_file() {
        return Some(p);
    }
    // `cargo test -p fastio-redis-shim` alone does not build other packages' binaries.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(cargo)
        .args(["build", "-p", "fastio-echo", "--bin", "epoll_echo_server"])
        .status()
        .is_ok_and(|s| s.success());
    (ok && p.is_file()).then_some(p)
}

#[test]
fn epoll_echo_server_works_unchanged_with_the_shim() {
    let test = "epoll_echo_server_works_unchanged_with_the_shim";
    let Some(server) = echo_server() else {
        println!("SKIP {test}: epoll_echo_server is not built and cannot be built here");
        return;
    };
    for f in flavors(test) {
        let dir = TempDir::new("echo");
        let conf = dir.path().join("fastio.conf");
        std::fs::write(&conf, f.conf_text()).unwrap();
        let stats = dir.path().join("stats");
        let mut child = Command::new(&server)
            .arg("0")
            .env("LD_PRELOAD", support::shim_path())
            .env("FASTIO_CONF", &conf)
            .env("FASTIO_SHIM_STATS", &stats)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let port: u16 = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("[{}] no port in {line:?}", f.name));
        let clients: Vec<_> = (0..4u64)
            .map(|i| {
                thread::spawn(move || {
                    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let mut r = s.try_clone().unwrap();
                    for (round, len) in [1usize, 512, 64 << 10, 1 << 20, 4 << 20]
                        .into_iter()
                        .enumerate()
                    {
                        let data = pattern(len, i * 10 + round as u64);
                        let w = {
                            let mut s = s.try_clone().unwrap();
                            let d = data.clone();
                            thread::spawn(move || s.write_all(&d))
                        };
                        let mut got = vec![0; len];
                        r.read_exact(&mut got).unwrap();
                        w.join().unwrap().unwrap();
                        assert!(got == data, "client {i}: echo of {len} bytes differs");
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().expect("client");
        }
        // SAFETY: signalling the child we spawned.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let mut stderr = child.stderr.take().unwrap();
        let status = support::wait_child(child, Duration::from_secs(10), "epoll_echo_server");
        let mut err = String::new();
        stderr.read_to_string(&mut err).unwrap();
        assert!(status.success(), "[{}] exit {status}: {err}", f.name);
        assert!(
            err.contains("fastio: backend"),
            "[{}] no backend line: {err}",
            f.name
        );
        let st = ShimStats::read(&stats);
        let total: u64 = 4 * (1 + 512 + (64 << 10) + (1 << 20) + (4 << 20));
        st.assert_carried(f.name, total);
        assert_eq!(st.get("bytes_sent"), total, "[{}] {st:?}", f.name);
        assert_eq!(st.get("open_slots"), 0, "[{}] {st:?}", f.name);
    }
}
