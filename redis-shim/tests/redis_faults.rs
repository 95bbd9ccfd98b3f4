//! Faults with the shim preloaded into redis-server, on every backend available here:
//! clients killed mid-pipeline, a client that pipelines and never reads (the shim holds
//! its allowance for it, no more; other clients still served), BGSAVE and BGREWRITEAOF during load
//! (the fork children write the files; a restarted server loads them).

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use support::{flavors, have_redis, pattern, reset, rss_bytes, Client, Redis, Reply, TempDir};

/// Waits until `INFO connected_clients` is `want` (the asking client included).
fn wait_clients(c: &mut Client, want: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = c.info("connected_clients");
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {now} clients connected, expected {want}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn clients_killed_mid_pipeline() {
    let test = "clients_killed_mid_pipeline";
    if !have_redis(test) {
        return;
    }
    for f in flavors(test) {
        let dir = TempDir::new("killed");
        let redis = Redis::start(&f, dir.path(), &["--loglevel", "verbose"], &[]);
        let value = pattern(1 << 20, 9);
        let mut c = redis.client();
        assert_eq!(
            c.cmd_bin(&[b"SET", b"big", &value]).unwrap(),
            Reply::Status("OK".into())
        );
        // Ten clients ask for 200 MiB each, read a little, and vanish.
        for i in 0..10 {
            let mut s = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
            let mut batch = Vec::new();
            for _ in 0..200 {
                batch.extend_from_slice(&Client::encode(&[b"GET", b"big"]));
            }
            s.write_all(&batch).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = vec![0; 64 << 10];
            let mut read = 0;
            while read < (i + 1) * 100_000 {
                match std::io::Read::read(&mut s, &mut got) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
            }
            reset(s);
        }
        // A redis-benchmark killed mid-run.
        let mut bench = redis.background_load(&[
            "-t",
            "get",
            "-c",
            "20",
            "-n",
            "100000000",
            "-P",
            "32",
            "-d",
            "4096",
            "-q",
        ]);
        thread::sleep(Duration::from_millis(500));
        bench.kill().unwrap();
        bench.wait().unwrap();
        // The server serves, its data is intact, the dead clients are gone.
        wait_clients(&mut c, "1", f.name);
        assert_eq!(c.cmd(&["PING"]).unwrap(), Reply::Status("PONG".into()));
        assert!(
            c.bulk(&["GET", "big"]) == Some(value.clone()),
            "[{}] value",
            f.name
        );
        drop(c);
        let log = redis.log();
        let stats = redis.stop().expect("shim stats");
        println!("[{}] {:?}", f.name, stats.0);
        stats.assert_carried(f.name, 10 * 100_000);
        // Redis saw the clients go: the socket's EOF, or the reset (reported by the shim
        // or the kernel) as ECONNRESET or EPIPE, and no other error.
        let mut saw = log.contains("Client closed connection");
        for line in log.lines().filter(|l| {
            l.contains("Error writing to client: ") || l.contains("Reading from client: ")
        }) {
            assert!(
                line.ends_with("Connection reset by peer") || line.ends_with("Broken pipe"),
                "[{}] unexpected client error: {line}",
                f.name
            );
            saw = true;
        }
        assert!(saw, "[{}] no client went away:\n{log}", f.name);
    }
}

#[test]
fn a_client_that_never_reads_is_held_to_its_allowance() {
    let test = "a_client_that_never_reads_is_held_to_its_allowance";
    if !have_redis(test) {
        return;
    }
    const CAP: u64 = 4 << 20;
    const ALLOWANCE: u64 = 1 << 20;
    for f in flavors(test) {
        let dir = TempDir::new("noread");
        let env = [
            ("FASTIO_SHIM_MAX_QUEUED", "4M"),
            ("FASTIO_SHIM_SOCKET_ALLOWANCE", "1M"),
        ];
        let redis = Redis::start(&f, dir.path(), &[], &env);
        // Replies larger than the socket's allowance, so the shim's queue for the stuck
        // socket fills up (a short write) before the kernel's buffers do.
        let value = pattern(2 << 20, 3);
        let mut c = redis.client();
        c.cmd_bin(&[b"SET", b"v", &value]).unwrap();
        // 128 MiB of replies that are never read.
        let mut stuck = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
        let mut batch = Vec::new();
        for _ in 0..64 {
            batch.extend_from_slice(&Client::encode(&[b"GET", b"v"]));
        }
        stuck.write_all(&batch).unwrap();
        // Other clients keep being served promptly while it sits there.
        let mut worst = Duration::ZERO;
        for i in 0..300 {
            let t = Instant::now();
            let k = format!("other:{i}");
            assert_eq!(
                c.cmd(&["SET", &k, "x"]).unwrap(),
                Reply::Status("OK".into())
            );
            assert_eq!(c.bulk(&["GET", &k]), Some(b"x".to_vec()));
            worst = worst.max(t.elapsed());
            thread::sleep(Duration::from_millis(5));
        }
        // Inside the VM (QEMU TCG, a lockdep kernel: `make vm-test` sets
        // FASTIO_TEST_BACKENDS) Redis itself needs far longer to build 128 MiB of
        // replies in one event-loop turn; a stall of the shim is still seconds more.
        let limit = if std::env::var_os("FASTIO_TEST_BACKENDS").is_some() {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(1)
        };
        assert!(
            worst < limit,
            "[{}] a command took {worst:?} (limit {limit:?})",
            f.name
        );
        // The server holds the replies it could not send in its own output buffer
        // (counted in used_memory); what the shim holds beyond that is bounded.
        let used: u64 = c.info("used_memory").parse().unwrap();
        let rss = rss_bytes(redis.pid());
        println!(
            "[{}] worst {worst:?}, rss {rss}, used_memory {used}",
            f.name
        );
        assert!(
            rss < used + CAP + (96 << 20),
            "[{}] rss {rss} beyond used_memory {used} + cap + slack",
            f.name
        );
        reset(stuck);
        wait_clients(&mut c, "1", f.name);
        drop(c);
        let stats = redis.stop().expect("shim stats");
        println!("[{}] {:?}", f.name, stats.0);
        // The stuck socket held its allowance, no more (the other client's replies
        // are small): the rest stayed in Redis's output buffer.
        assert!(
            (ALLOWANCE..ALLOWANCE + (64 << 10)).contains(&stats.get("peak_queued"))
                && stats.get("partial_writes") > 0,
            "[{}] the stuck socket did not hold exactly its allowance: {stats:?}",
            f.name
        );
        stats.assert_carried(f.name, 300 * 2 * 5);
    }
}

#[test]
fn bgsave_and_bgrewriteaof_during_load() {
    let test = "bgsave_and_bgrewriteaof_during_load";
    if !have_redis(test) {
        return;
    }
    const KEYS: usize = 50_000;
    for f in flavors(test) {
        let dir = TempDir::new("bgsave");
        let persist = [
            "--appendonly",
            "yes",
            "--appendfsync",
            "no",
            "--dbfilename",
            "dump.rdb",
        ];
        let redis = Redis::start_raw(Some(&f), dir.path(), &persist, &[]);
        let mut input = Vec::new();
        for i in 0..KEYS {
            let (k, v) = (format!("d:{i}"), format!("{}", i * 31));
            input.extend_from_slice(&Client::encode(&[b"SET", k.as_bytes(), v.as_bytes()]));
        }
        let out = redis.cli(&["--pipe"], Some(&input));
        assert!(
            out.text().contains(&format!("errors: 0, replies: {KEYS}")),
            "{}",
            out.text()
        );
        let mut load = redis.background_load(&[
            "-t",
            "set",
            "-c",
            "20",
            "-n",
            "100000000",
            "-r",
            "100000",
            "-q",
        ]);
        thread::sleep(Duration::from_millis(300));
        let mut c = redis.client();
        for (cmd, flag, status) in [
            ("BGSAVE", "rdb_bgsave_in_progress", "rdb_last_bgsave_status"),
            (
                "BGREWRITEAOF",
                "aof_rewrite_in_progress",
                "aof_last_bgrewrite_status",
            ),
        ] {
            let r = c.cmd(&[cmd]).unwrap();
            assert!(matches!(r, Reply::Status(_)), "[{}] {cmd}: {r:?}", f.name);
            let deadline = Instant::now() + Duration::from_secs(60);
            while c.info(flag) != "0" {
                assert!(
                    Instant::now() < deadline,
                    "[{}] {cmd} did not finish",
                    f.name
                );
                thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(c.info(status), "ok", "[{}] {cmd}", f.name);
        }
        load.kill().unwrap();
        load.wait().unwrap();
        wait_clients(&mut c, "1", f.name);
        drop(c);
        let stats = redis.stop().expect("shim stats");
        stats.assert_carried(f.name, KEYS as u64 * 5);
        // Restart on the RDB dump, then on the AOF: both hold every key.
        for (aof, what) in [("no", "RDB"), ("yes", "AOF")] {
            let args = [
                "--appendonly",
                aof,
                "--dbfilename",
                "dump.rdb",
                "--save",
                "",
            ];
            let redis = Redis::start_raw(Some(&f), dir.path(), &args, &[]);
            let mut c = redis.client();
            assert!(c.int(&["DBSIZE"]) >= KEYS as i64, "[{}] {what}", f.name);
            let mut batch = Vec::new();
            for i in 0..KEYS {
                batch.extend_from_slice(&Client::encode(&[b"GET", format!("d:{i}").as_bytes()]));
            }
            c.send_raw(&batch).unwrap();
            for i in 0..KEYS {
                let want = Reply::Bulk(Some(format!("{}", i * 31).into_bytes()));
                assert_eq!(c.read_reply().unwrap(), want, "[{}] {what} d:{i}", f.name);
            }
            drop(c);
            redis.stop().expect("shim stats");
        }
    }
}
