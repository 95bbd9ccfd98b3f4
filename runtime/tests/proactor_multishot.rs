//! Provided-buffer groups, multishot RECV and multishot ACCEPT through the proactor, on
//! every backend this machine can run (io_uring with and without SQPOLL, threads with
//! one and two lanes, the kernel module in the VM). A backend without provided buffers
//! (`register_buffers` says `Unsupported`) prints a SKIP line with that reason, except
//! the kernel module, which must have them.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::Flavor;
use fastio::{BufGroup, Config, Proactor, RejectReason, Slot};

fn flavors(cq_entries: u32) -> Vec<Flavor> {
    common::flavors(Config {
        // io_uring wants at least as many CQ entries as SQ entries.
        sq_entries: cq_entries.min(64),
        cq_entries,
        max_files: 256,
        idle_ms: 5,
        ..Config::default()
    })
}

/// Runs `f` per flavor with a registered group of `count` buffers of `size` bytes.
fn each_backend(
    test: &str,
    cq: u32,
    count: u32,
    size: u32,
    f: impl Fn(&Flavor, &mut Proactor, BufGroup),
) {
    common::each_flavor(
        test,
        flavors(cq),
        Proactor::new,
        |p| p.backend().sqpoll,
        |fl, p| match p.register_buffers(count, size) {
            Ok(g) => f(fl, p, g),
            // Every backend of this crate has provided buffers now (the kernel module
            // since ABI 3's multishot work): Unsupported is a failure, not a SKIP.
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported && fl.name != "kmod" => {
                println!("SKIP {test} [{}]: {e}", fl.name)
            }
            Err(e) => panic!("{test} [{}]: register_buffers: {e}", fl.name),
        },
    );
}

const T: Option<Duration> = Some(Duration::from_secs(10));

/// The byte at `i` of connection `c`'s stream.
fn pattern(c: usize, i: usize) -> u8 {
    ((i as u64)
        .wrapping_mul(2_654_435_761)
        .wrapping_add(c as u64 * 97)
        >> 11) as u8
}

/// `n` connections: (client, server slot registered in `p`).
fn connections(p: &mut Proactor, n: usize) -> (TcpListener, Vec<TcpStream>, Vec<Slot>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut clients = Vec::new();
    let mut slots = Vec::new();
    for _ in 0..n {
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        slots.push(p.register(&s).unwrap());
        clients.push(c);
    }
    (l, clients, slots)
}

/// Arms a multishot RECV, submitting and reaping while the lane is busy.
fn arm(p: &mut Proactor, slot: Slot, g: BufGroup, ud: u64, parked: &mut Vec<fastio::Completion>) {
    loop {
        match p.recv_multishot(slot, g, ud) {
            Ok(()) => return,
            Err(r) if r.reason == RejectReason::Busy => {
                p.submit().unwrap();
                p.reap();
                parked.extend(p.completions());
            }
            Err(r) => panic!("recv_multishot: {r}"),
        }
    }
}

/// Receives on every slot with multishot RECVs until each stream ends (result 0),
/// re-arming after an end with data (CQ full) or `-ENOBUFS`; returns the bytes per
/// connection and how many times a request was re-armed.
fn receive_all(p: &mut Proactor, g: BufGroup, slots: &[Slot], name: &str) -> (Vec<Vec<u8>>, u32) {
    let mut backlog = Vec::new();
    for (i, &s) in slots.iter().enumerate() {
        arm(p, s, g, i as u64, &mut backlog);
    }
    receive(p, g, slots, name, backlog)
}

/// [`receive_all`] for requests armed already (user_data = index).
fn receive_armed(p: &mut Proactor, g: BufGroup, slots: &[Slot], name: &str) -> (Vec<Vec<u8>>, u32) {
    receive(p, g, slots, name, Vec::new())
}

fn receive(
    p: &mut Proactor,
    g: BufGroup,
    slots: &[Slot],
    name: &str,
    mut backlog: Vec<fastio::Completion>,
) -> (Vec<Vec<u8>>, u32) {
    let mut got = vec![Vec::new(); slots.len()];
    let mut done = vec![false; slots.len()];
    let mut rearms = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.iter().any(|d| !d) {
        assert!(Instant::now() < deadline, "[{name}] streams did not end");
        p.wait(1, T).unwrap();
        let mut batch: Vec<_> = std::mem::take(&mut backlog);
        batch.extend(p.completions());
        for c in batch {
            let i = c.user_data as usize;
            assert!(!done[i], "[{name}] completion after the end of stream {i}");
            if let Some(b) = &c.provided {
                assert!(
                    c.result > 0 && b.len() == c.result as usize,
                    "[{name}] {c:?}"
                );
                got[i].extend_from_slice(b);
            } else {
                assert!(c.result <= 0, "[{name}] data without a buffer: {c:?}");
            }
            if c.more {
                continue;
            }
            match c.result {
                0 => done[i] = true,
                r if r > 0 || r == -libc::ENOBUFS => {
                    // Ended with data (CQ full) or out of buffers: go on after recycling
                    // (this completion's buffer is dropped before the re-arm submits).
                    drop(c);
                    rearms += 1;
                    arm(p, slots[i], g, i as u64, &mut backlog);
                }
                r => panic!("[{name}] stream {i} ended with {r}"),
            }
        }
    }
    (got, rearms)
}

fn check(got: &[Vec<u8>], want: usize, name: &str) {
    for (c, bytes) in got.iter().enumerate() {
        assert_eq!(bytes.len(), want, "[{name}] connection {c}: byte count");
        if let Some(i) = (0..want).find(|&i| bytes[i] != pattern(c, i)) {
            panic!("[{name}] connection {c}: byte {i} differs (out of order or corrupt)");
        }
    }
}

/// Writes each connection's stream in messages of 1..=700 bytes, then closes it.
fn send_streams(clients: Vec<TcpStream>, total: usize) -> Vec<std::thread::JoinHandle<()>> {
    clients
        .into_iter()
        .enumerate()
        .map(|(c, mut s)| {
            std::thread::spawn(move || {
                let data: Vec<u8> = (0..total).map(|i| pattern(c, i)).collect();
                let mut off = 0;
                let mut k = c;
                while off < total {
                    k = k.wrapping_mul(31).wrapping_add(7);
                    let n = (1 + k % 700).min(total - off);
                    s.write_all(&data[off..off + n]).unwrap();
                    off += n;
                }
                s.shutdown(Shutdown::Write).unwrap();
            })
        })
        .collect()
}

#[test]
fn many_messages_over_many_connections_arrive_in_order() {
    each_backend("multishot_many", 128, 64, 512, |fl, p, g| {
        let (_l, clients, slots) = connections(p, 16);
        let total = 64 * 1024;
        let writers = send_streams(clients, total);
        let (got, rearms) = receive_all(p, g, &slots, fl.name);
        for w in writers {
            w.join().unwrap();
        }
        check(&got, total, fl.name);
        println!(
            "[{}] 16 x {total} bytes verified, {rearms} re-arms",
            fl.name
        );
        // Every request has ended: the group can go.
        p.unregister_buffers(g).unwrap();
    });
}

#[test]
fn a_small_cq_under_pressure_loses_nothing() {
    // 8 CQ entries for 8 streams, and nobody reaps until every byte has been written.
    each_backend("multishot_cq_pressure", 8, 1024, 64, |fl, p, g| {
        let (_l, clients, slots) = connections(p, 8);
        let total = 16 * 1024;
        let mut backlog = Vec::new();
        for (i, &s) in slots.iter().enumerate() {
            arm(p, s, g, i as u64, &mut backlog);
        }
        assert!(backlog.is_empty());
        p.submit().unwrap();
        for w in send_streams(clients, total) {
            w.join().unwrap();
        }
        let (got, rearms) = receive_armed(p, g, &slots, fl.name);
        check(&got, total, fl.name);
        println!(
            "[{}] 8 x {total} bytes through an 8-entry CQ, {rearms} re-arms",
            fl.name
        );
    });
}

#[test]
fn out_of_buffers_ends_with_enobufs_and_rearm_loses_nothing() {
    each_backend("multishot_enobufs", 64, 4, 64, |fl, p, g| {
        let (_l, mut clients, slots) = connections(p, 1);
        let data: Vec<u8> = (0..1000).map(|i| pattern(0, i)).collect();
        clients[0].write_all(&data).unwrap();
        let mut held = Vec::new();
        let mut got = Vec::new();
        p.recv_multishot(slots[0], g, 1).unwrap();
        let last = loop {
            let n = p.wait(1, T).unwrap();
            assert!(n > 0, "[{}] no completion", fl.name);
            let c = p.next_completion().unwrap();
            if let Some(b) = c.provided {
                got.extend_from_slice(&b);
                held.push(b); // not recycled: the group runs dry
            }
            if !c.more {
                break c.result;
            }
        };
        assert_eq!(last, -libc::ENOBUFS, "[{}] end of a dry group", fl.name);
        assert_eq!(
            held.len(),
            4,
            "[{}] every buffer used once before -ENOBUFS",
            fl.name
        );
        // Recycle, re-arm: the rest of the bytes waited in the socket.
        held.clear();
        clients[0].shutdown(Shutdown::Write).unwrap();
        let (rest, _) = receive_all(p, g, &slots, fl.name);
        got.extend_from_slice(&rest[0]);
        check(&[got], 1000, fl.name);
    });
}

#[test]
fn multishot_accept_installs_each_connection_into_the_range() {
    each_backend("multishot_accept", 64, 8, 64, |fl, p, _g| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ls = p.register(&l).unwrap();
        p.accept_multishot(ls, 4, 7).unwrap();
        p.submit().unwrap();
        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        for k in 0..4u8 {
            let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            c.write_all(&[k]).unwrap();
            clients.push(c);
            let n = p.wait(1, T).unwrap();
            assert!(n > 0, "[{}] accept {k} did not complete", fl.name);
            let c = p.next_completion().unwrap();
            assert!(c.more, "[{}] accept {k} ended the request: {c:?}", fl.name);
            let s = c.accepted.expect("slot");
            assert_eq!(c.result, s.index() as i32);
            assert!(!accepted.contains(&s), "[{}] slot used twice", fl.name);
            accepted.push(s);
        }
        // Each accepted slot is the connection it says: the byte its client sent.
        for (k, &s) in accepted.iter().enumerate() {
            p.recv(s, vec![0; 4], 0..4, 100 + k as u64).unwrap();
        }
        let mut seen = 0;
        while seen < 4 {
            p.wait(1, T).unwrap();
            for c in p.completions() {
                assert_eq!(c.result, 1, "[{}] {c:?}", fl.name);
                // Clients connected in order, but which slot each got is the
                // executor's choice: the byte names the client.
                let k = c.buf.unwrap()[0] as usize;
                assert!(k < 4);
                seen += 1;
            }
        }
        // The range is full: one more connection ends the request with -ENFILE.
        let _extra = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let c = loop {
            p.wait(1, T).unwrap();
            let c = p.next_completion().unwrap();
            if c.user_data == 7 {
                break c;
            }
        };
        assert!(!c.more);
        assert_eq!(c.result, -libc::ENFILE, "[{}] full range", fl.name);
        // The accepted connections stay open after the request ended.
        for s in accepted {
            p.close(s, 0).unwrap();
        }
        p.wait(4, T).unwrap();
        for c in p.completions() {
            assert_eq!(c.result, 0, "[{}] close {c:?}", fl.name);
        }
        drop(clients);
    });
}

#[test]
fn cancel_close_and_unregister_while_armed() {
    each_backend("multishot_cancel", 64, 8, 64, |fl, p, g| {
        let (_l, mut clients, slots) = connections(p, 2);
        p.recv_multishot(slots[0], g, 1).unwrap();
        p.recv_multishot(slots[1], g, 2).unwrap();
        p.submit().unwrap();
        // A group in use cannot go.
        let e = p.unregister_buffers(g).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ResourceBusy);
        // Data first: the request stays armed after it.
        clients[0].write_all(b"hello").unwrap();
        let c = loop {
            p.wait(1, T).unwrap();
            let c = p.next_completion().unwrap();
            if c.user_data == 1 {
                break c;
            }
        };
        assert!(c.more, "[{}] {c:?}", fl.name);
        assert_eq!(c.provided.as_deref().unwrap(), b"hello");
        drop(c);
        // ASYNC_CANCEL ends it.
        p.cancel(1, 10).unwrap();
        let mut results = HashMap::new();
        while results.len() < 2 {
            p.wait(1, T).unwrap();
            for c in p.completions() {
                assert!(!c.more, "[{}] {c:?}", fl.name);
                results.insert(c.user_data, c.result);
            }
        }
        assert_eq!(results[&10], 0, "[{}] cancel found its target", fl.name);
        assert_eq!(results[&1], -libc::ECANCELED);
        // CLOSE of the slot ends the other, before the CLOSE's own completion.
        p.close(slots[1], 20).unwrap();
        let mut order = Vec::new();
        while order.len() < 2 {
            p.wait(1, T).unwrap();
            for c in p.completions() {
                order.push((c.user_data, c.result, c.more));
            }
        }
        assert_eq!(
            order,
            vec![(2, -libc::ECANCELED, false), (20, 0, false)],
            "[{}]",
            fl.name
        );
        p.unregister_buffers(g).unwrap();
        // A peer that closed gives 0 once the request ends there (read the closed
        // stream with a fresh group).
        let g2 = p.register_buffers(2, 16).unwrap();
        clients[0].shutdown(Shutdown::Write).unwrap();
        p.recv_multishot(slots[0], g2, 3).unwrap();
        let c = loop {
            p.wait(1, T).unwrap();
            let c = p.next_completion().unwrap();
            if !c.more {
                break c;
            }
        };
        assert_eq!(c.result, 0, "[{}] peer close", fl.name);
        let mut buf = [0u8; 1];
        clients[1]
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            clients[1].read(&mut buf).unwrap(),
            0,
            "[{}] slot closed",
            fl.name
        );
    });
}

#[test]
fn armed_multishots_do_not_count_against_the_cq() {
    // 3 * cq_entries armed connections on an 8-entry CQ; then one byte each arrives.
    each_backend("multishot_beyond_cq", 8, 64, 16, |fl, p, g| {
        let n = 24;
        let (_l, mut clients, slots) = connections(p, n);
        let mut backlog = Vec::new();
        for (i, &s) in slots.iter().enumerate() {
            arm(p, s, g, i as u64, &mut backlog);
        }
        assert!(backlog.is_empty());
        p.submit().unwrap();
        assert!(p.in_flight() >= n, "[{}] all armed", fl.name);
        let mut got = vec![0u32; n];
        for c in clients.iter_mut() {
            c.write_all(b"x").unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.iter().sum::<u32>() < n as u32 {
            assert!(
                Instant::now() < deadline,
                "[{}] bytes missing: {got:?}",
                fl.name
            );
            p.wait(1, T).unwrap();
            let cs: Vec<_> = p.completions().collect();
            for c in cs {
                let i = c.user_data as usize;
                if c.result > 0 {
                    got[i] += c.result as u32;
                }
                if !c.more {
                    assert!(c.result > 0, "[{}] {c:?}", fl.name);
                    drop(c);
                    arm(p, slots[i], g, i as u64, &mut backlog);
                }
            }
        }
        assert!(got.iter().all(|&b| b == 1), "[{}] {got:?}", fl.name);
    });
}

/// A ping-pong over one multishot RECV: each message is sent only after the previous one
/// was received, so the request waits for readiness before every reception. Every byte
/// arrives in order, and on the kernel module the request is polled onto the socket's
/// wait queue once, not once per message: its wait entries stay on the queue from one
/// reception to the next (`Stats::polls`; before that, each reception detached and
/// polled again).
#[test]
fn a_ping_pong_over_one_multishot_recv_polls_once() {
    const MESSAGES: usize = 200;
    each_backend("ping_pong_multishot", 256, 16, 512, |fl, p, g| {
        let (_l, mut clients, slots) = connections(p, 1);
        let client = &mut clients[0];
        let before = p.kernel_stats().map(|s| s.expect("GET_STATS"));
        let mut backlog = Vec::new();
        arm(p, slots[0], g, 0, &mut backlog);
        p.submit().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        for m in 0..MESSAGES {
            let msg: Vec<u8> = (0..64).map(|i| pattern(m, i)).collect();
            client.write_all(&msg).unwrap();
            let want = (m + 1) * msg.len();
            while got.len() < want {
                assert!(
                    Instant::now() < deadline,
                    "[{}] message {m} did not arrive",
                    fl.name
                );
                p.wait(1, T).unwrap();
                backlog.extend(p.completions());
                for c in backlog.drain(..) {
                    let b = c.provided.as_ref().unwrap_or_else(|| {
                        panic!(
                            "[{}] message {m}: a completion without data: {c:?}",
                            fl.name
                        )
                    });
                    assert!(c.more, "[{}] message {m}: the RECV ended: {c:?}", fl.name);
                    got.extend_from_slice(b);
                }
            }
            assert_eq!(
                got.len(),
                want,
                "[{}] message {m}: more than was sent",
                fl.name
            );
            assert_eq!(
                &got[want - msg.len()..],
                &msg[..],
                "[{}] message {m}",
                fl.name
            );
        }
        if let (Some(before), Some(after)) = (before, p.kernel_stats()) {
            let after = after.expect("GET_STATS");
            let polls = after.polls - before.polls;
            println!(
                "ping_pong_multishot [{}]: {MESSAGES} receptions, {polls} poll(s)",
                fl.name
            );
            assert!(
                (1..=3).contains(&polls),
                "[{}] {MESSAGES} receptions took {polls} polls (want the first wait's only)",
                fl.name
            );
        }
        // The stream's end ends the request.
        client.shutdown(Shutdown::Write).unwrap();
        let (rest, _) = receive_armed(p, g, &slots, fl.name);
        assert!(
            rest[0].is_empty(),
            "[{}] bytes after the last message",
            fl.name
        );
    });
}
