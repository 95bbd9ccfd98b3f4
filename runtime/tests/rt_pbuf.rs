//! Provided-buffer receive in the async runtime (`rt::register_buffers`,
//! `TcpStream::recv_provided`) on every backend this machine runs (the kernel module
//! inside the VM): a connection takes a buffer of the group only when bytes come, every
//! byte arrives once and in order, a group whose buffers are all held answers `ENOBUFS`
//! without losing data, a buffer dropped goes back to the group, end of stream is
//! `None`. Every wait is bounded; loopback only.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream as StdStream;
use std::time::Duration;

use fastio::rt::{self, Runtime, TcpListener};
use fastio::{Config, ProvidedBuf};

/// Buffers in the group, and bytes per buffer.
const BUFS: u32 = 4;
const SIZE: u32 = 256;
/// Bytes sent before the server holds every buffer, and after.
const FIRST: usize = (BUFS * SIZE) as usize;
const SECOND: usize = 700;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn recv_provided_shares_the_group_and_loses_nothing() {
    let base = Config {
        idle_ms: 5,
        ..Config::default()
    };
    common::each_flavor(
        "rt_pbuf",
        common::flavors(base),
        Runtime::new,
        |rt| rt.backend().sqpoll,
        |fl, rt| {
            rt.block_on(async {
                let group = match rt::register_buffers(BUFS, SIZE) {
                    Ok(g) => g,
                    Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                        println!("SKIP rt_pbuf [{}]: {e}", fl.name);
                        return;
                    }
                    Err(e) => panic!("[{}] register_buffers: {e}", fl.name),
                };
                let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
                let addr = l.local_addr().unwrap();
                let want = pattern(FIRST + SECOND);
                let sent = want.clone();
                // The peer sends FIRST bytes, waits for one byte, sends the rest, closes.
                let peer = std::thread::spawn(move || {
                    let mut s = StdStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    s.write_all(&sent[..FIRST]).unwrap();
                    let mut go = [0u8; 1];
                    s.read_exact(&mut go).unwrap();
                    s.write_all(&sent[FIRST..]).unwrap();
                });
                let c = rt::timeout(Duration::from_secs(30), l.accept())
                    .await
                    .expect("accept in time")
                    .unwrap();
                let recv = || async {
                    rt::timeout(Duration::from_secs(30), c.recv_provided(group))
                        .await
                        .expect("a reception within 30 s")
                };
                let mut got = Vec::new();
                // Hold every buffer the receptions hand out.
                let mut held: Vec<ProvidedBuf> = Vec::new();
                while held.len() < BUFS as usize && got.len() < FIRST {
                    let b = recv().await.unwrap().expect("no end of stream yet");
                    assert!(!b.is_empty() && b.len() <= SIZE as usize, "{b:?}");
                    got.extend_from_slice(&b);
                    held.push(b);
                }
                // FIRST bytes fill every buffer at least once: all four are held now,
                // and the group answers ENOBUFS, nothing received.
                assert_eq!(held.len(), BUFS as usize, "[{}]", fl.name);
                let e = recv().await.expect_err("every buffer is held");
                assert_eq!(e.raw_os_error(), Some(libc::ENOBUFS), "[{}] {e}", fl.name);
                // Dropped buffers go back to the group.
                held.clear();
                while got.len() < FIRST {
                    let b = recv().await.unwrap().expect("the first part");
                    got.extend_from_slice(&b);
                }
                let (r, _) = c.write_all(vec![1u8]).await;
                r.unwrap();
                while let Some(b) = recv().await.unwrap() {
                    got.extend_from_slice(&b);
                }
                assert_eq!(got.len(), want.len(), "[{}] bytes", fl.name);
                assert!(got == want, "[{}] bytes differ", fl.name);
                peer.join().unwrap();
                drop(c);
                rt::unregister_buffers(group).unwrap();
                println!("rt_pbuf [{}] ok", fl.name);
            });
        },
    );
}
