//! redis-cli against an unmodified redis-server with the shim preloaded, on every
//! backend available here: values from 1 B to 64 MiB (large replies exercise short
//! sends), MSET/MGET of 10k keys, 100k pipelined commands (`redis-cli --pipe`) and 100k
//! pipelined GETs, every reply checked. The shim's counters prove the replies went
//! through the rings.

mod support;

use fastio::{BackendKind, Config};
use support::{flavors, have_redis, pattern, Client, Flavor, Redis, Reply, TempDir};

/// `backend = "auto"` under the shim is io_uring without SQPOLL, even where the module
/// is loaded (the VM run), and the shim says why at start-up; Redis then works as on
/// any backend and its replies go through the rings.
#[test]
fn auto_backend_is_io_uring_without_sqpoll_for_redis() {
    let test = "auto_backend_is_io_uring_without_sqpoll_for_redis";
    if !have_redis(test) {
        return;
    }
    let f = Flavor {
        name: "auto",
        config: Config {
            backend: BackendKind::Auto,
            sqpoll: true,
            ..Config::default()
        },
    };
    let dir = TempDir::new("auto");
    let redis = Redis::start(&f, dir.path(), &[], &[]);
    let err = redis.stderr();
    assert!(
        err.contains("backend auto: io_uring without SQPOLL"),
        "no note on the choice:\n{err}"
    );
    let mut c = redis.client();
    c.cmd(&["SET", "k", "v"]).unwrap();
    assert_eq!(c.bulk(&["GET", "k"]).as_deref(), Some(&b"v"[..]));
    drop(c);
    let shim = redis.stop().expect("shim stats");
    assert!(
        shim.backend().starts_with("uring: "),
        "backend {:?}",
        shim.backend()
    );
    shim.assert_carried("auto", 3);
}

/// SQPOLL asked for by name is used, and named at start-up when the machine has fewer
/// than 3 CPUs for Redis's thread, the poller and the clients.
#[test]
fn sqpoll_by_name_warns_without_a_cpu_to_spare() {
    let test = "sqpoll_by_name_warns_without_a_cpu_to_spare";
    if !have_redis(test) {
        return;
    }
    let f = Flavor {
        name: "sqpoll",
        config: Config {
            backend: BackendKind::Uring,
            sqpoll: true,
            ..Config::default()
        },
    };
    let dir = TempDir::new("sqpoll-note");
    let redis = Redis::start(&f, dir.path(), &[], &[]);
    let err = redis.stderr();
    let mut c = redis.client();
    c.cmd(&["SET", "k", "v"]).unwrap();
    assert_eq!(c.bulk(&["GET", "k"]).as_deref(), Some(&b"v"[..]));
    drop(c);
    let shim = redis.stop().expect("shim stats");
    if !shim.backend().starts_with("uring (SQPOLL)") {
        eprintln!(
            "{test}: SKIP: SQPOLL not available here ({})",
            shim.backend()
        );
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        err.contains("SQPOLL with"),
        cpus < 3,
        "{cpus} CPUs, start-up output:\n{err}"
    );
}

/// SET with `redis-cli -x` (value on stdin), GET back through redis-cli's raw output.
#[test]
fn values_from_1_byte_to_64_mib_round_trip() {
    let test = "values_from_1_byte_to_64_mib_round_trip";
    if !have_redis(test) {
        return;
    }
    for f in flavors(test) {
        let dir = TempDir::new("values");
        let redis = Redis::start(&f, dir.path(), &[], &[]);
        let sizes = [1usize, 16 << 10, 1 << 20, 64 << 20];
        for (i, &len) in sizes.iter().enumerate() {
            let key = format!("value:{len}");
            let value = pattern(len, i as u64 + 1);
            let set = redis.cli(&["-x", "SET", &key], Some(&value));
            assert!(
                set.status.success(),
                "[{}] SET {len}: {}",
                f.name,
                set.stderr
            );
            assert_eq!(set.text().trim(), "OK", "[{}] SET {len}", f.name);
            let get = redis.cli(&["GET", &key], None);
            assert!(
                get.status.success(),
                "[{}] GET {len}: {}",
                f.name,
                get.stderr
            );
            let mut want = value.clone();
            want.push(b'\n');
            assert!(
                get.stdout == want,
                "[{}] GET of {len} bytes: got {} bytes back, differing",
                f.name,
                get.stdout.len()
            );
            assert_eq!(
                redis.cli(&["STRLEN", &key], None).text().trim(),
                len.to_string(),
                "[{}]",
                f.name
            );
        }
        // The same 64 MiB value twice on one connection, read by a slow reader: the
        // reply is sent in many short sends.
        let mut c = redis.client();
        c.send_cmd(&["GET", "value:67108864"]).unwrap();
        c.send_cmd(&["GET", "value:67108864"]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let want = pattern(64 << 20, 4);
        for _ in 0..2 {
            assert!(
                c.read_reply().unwrap() == Reply::Bulk(Some(want.clone())),
                "[{}] pipelined 64 MiB GET",
                f.name
            );
        }
        let stats = redis.stop().expect("shim stats");
        stats.assert_carried(f.name, 3 * (64 << 20));
        println!("[{}] shim stats: {:?}", f.name, stats.0);
    }
}

/// MSET of 10k keys in one command, MGET of all of them, through redis-cli.
#[test]
fn mset_mget_10k_keys() {
    let test = "mset_mget_10k_keys";
    if !have_redis(test) {
        return;
    }
    for f in flavors(test) {
        let dir = TempDir::new("mset");
        let redis = Redis::start(&f, dir.path(), &[], &[]);
        let keys: Vec<String> = (0..10_000).map(|i| format!("k:{i}")).collect();
        let vals: Vec<String> = (0..10_000).map(|i| format!("v:{i}:{}", i * 7919)).collect();
        let mut args = vec!["MSET"];
        for (k, v) in keys.iter().zip(&vals) {
            args.push(k);
            args.push(v);
        }
        let out = redis.cli(&args, None);
        assert_eq!(out.text().trim(), "OK", "[{}] MSET: {}", f.name, out.stderr);
        let mut args = vec!["MGET"];
        args.extend(keys.iter().map(String::as_str));
        let out = redis.cli(&args, None);
        assert!(out.status.success(), "[{}] MGET: {}", f.name, out.stderr);
        let got: Vec<String> = out.text().lines().map(str::to_string).collect();
        assert_eq!(got, vals, "[{}] MGET of 10k keys", f.name);
        assert_eq!(redis.cli(&["DBSIZE"], None).text().trim(), "10000");
        let stats = redis.stop().expect("shim stats");
        stats.assert_carried(f.name, 10_000 * 8);
    }
}

/// 100k SETs through `redis-cli --pipe` (its summary counts every reply and error),
/// then 100k pipelined GETs on one connection, each reply compared.
#[test]
fn pipe_100k_commands() {
    let test = "pipe_100k_commands";
    if !have_redis(test) {
        return;
    }
    const N: usize = 100_000;
    for f in flavors(test) {
        let dir = TempDir::new("pipe");
        let redis = Redis::start(&f, dir.path(), &[], &[]);
        let mut input = Vec::new();
        for i in 0..N {
            let k = format!("p:{i}");
            let v = format!("val-{i}-{}", i % 97);
            input.extend_from_slice(&Client::encode(&[b"SET", k.as_bytes(), v.as_bytes()]));
        }
        let out = redis.cli(&["--pipe"], Some(&input));
        let text = out.text();
        assert!(
            out.status.success(),
            "[{}] --pipe: {text} {}",
            f.name,
            out.stderr
        );
        assert!(
            text.contains(&format!("errors: 0, replies: {N}")),
            "[{}] --pipe summary: {text}",
            f.name
        );
        let mut c = redis.client();
        let mut batch = Vec::new();
        for i in 0..N {
            batch.extend_from_slice(&Client::encode(&[b"GET", format!("p:{i}").as_bytes()]));
        }
        let writer = {
            let mut w = c.stream().try_clone().unwrap();
            std::thread::spawn(move || std::io::Write::write_all(&mut w, &batch))
        };
        for i in 0..N {
            let want = format!("val-{i}-{}", i % 97).into_bytes();
            let got = c.read_reply().unwrap();
            assert!(
                got == Reply::Bulk(Some(want)),
                "[{}] reply {i} of {N}: {got:?}",
                f.name
            );
        }
        writer.join().unwrap().unwrap();
        assert_eq!(c.int(&["DBSIZE"]), N as i64);
        drop(c);
        let stats = redis.stop().expect("shim stats");
        stats.assert_carried(f.name, (N * 10) as u64);
    }
}
