//! redis-benchmark against redis-server with the shim preloaded, on every backend
//! available here: `-t set,get,lpush,lpop -c 50 -n 200000`, without and with `-P 16`.
//! Zero errors, every request counted by the server (INFO commandstats), and the data
//! set checked after each run (DBSIZE, LLEN, sample values). Each run starts from an
//! empty database with reset statistics: redis-benchmark seeds its key generator with
//! `time ^ pid`, so two runs a second apart can draw the same keys, and a check across
//! runs would measure that, not the server.
//!
//! `FASTIO_REDIS_BENCH_N` overrides `-n` (the VM run uses a smaller count: TCG is about
//! ten times slower).

mod support;

use std::time::Duration;

use support::{flavors, have_redis, run, Redis, TempDir};

/// Range of the random keys (`-r`).
const KEYSPACE: u64 = 100_000;

fn requests() -> u64 {
    std::env::var("FASTIO_REDIS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

/// `calls=N` of a command in INFO commandstats.
fn calls(stats: &str, cmd: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn benchmark_set_get_lpush_lpop_with_and_without_pipelining() {
    let test = "benchmark_set_get_lpush_lpop_with_and_without_pipelining";
    if !have_redis(test) {
        return;
    }
    let n = requests();
    for f in flavors(test) {
        let dir = TempDir::new("bench");
        let redis = Redis::start(&f, dir.path(), &[], &[]);
        let port = redis.port.to_string();
        let ns = n.to_string();
        for pipeline in ["1", "16"] {
            let mut c = redis.client();
            c.cmd(&["FLUSHALL"]).expect("FLUSHALL");
            c.cmd(&["CONFIG", "RESETSTAT"]).expect("CONFIG RESETSTAT");
            drop(c);
            let out = run(
                "redis-benchmark",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-t",
                    "set,get,lpush,lpop",
                    "-c",
                    "50",
                    "-n",
                    &ns,
                    "-P",
                    pipeline,
                    "-r",
                    "100000",
                    "-q",
                ],
                None,
                Duration::from_secs(300),
            );
            let text = out.text().replace('\r', "\n");
            assert!(
                out.status.success(),
                "[{}] -P {pipeline}: {text}\n{}",
                f.name,
                out.stderr
            );
            let all = format!("{text}\n{}", out.stderr).to_lowercase();
            assert!(!all.contains("error"), "[{}] -P {pipeline}: {all}", f.name);
            for t in ["SET", "GET", "LPUSH", "LPOP"] {
                let line = text
                    .lines()
                    .find(|l| l.starts_with(&format!("{t}: ")) && l.contains("requests per second"))
                    .unwrap_or_else(|| {
                        panic!("[{}] -P {pipeline}: no {t} result in {text}", f.name)
                    });
                println!("[{}] -P {pipeline} {line}", f.name);
            }
            let mut c = redis.client();
            let stats = String::from_utf8(c.bulk(&["INFO", "commandstats"]).unwrap()).unwrap();
            for cmd in ["set", "get", "lpush", "lpop"] {
                assert_eq!(
                    calls(&stats, cmd),
                    n,
                    "[{}] -P {pipeline}: {cmd} calls:\n{stats}",
                    f.name
                );
            }
            assert_eq!(c.info("total_error_replies"), "0", "[{}]", f.name);
            assert_eq!(
                c.int(&["LLEN", "mylist"]),
                0,
                "[{}] as many LPOPs as LPUSHes",
                f.name
            );
            // n SETs of keys drawn from KEYSPACE: the expected number of distinct keys.
            let sets = n as f64;
            let expect = KEYSPACE as f64 * (1.0 - (-sets / KEYSPACE as f64).exp());
            let dbsize = c.int(&["DBSIZE"]) as f64;
            assert!(
                (dbsize - expect).abs() < expect * 0.05,
                "[{}] -P {pipeline}: DBSIZE {dbsize}, expected about {expect:.0}",
                f.name
            );
            for _ in 0..200 {
                let key = String::from_utf8(c.bulk(&["RANDOMKEY"]).unwrap()).unwrap();
                let num = key
                    .strip_prefix("key:")
                    .unwrap_or_else(|| panic!("key {key:?}"));
                assert!(
                    num.len() == 12 && num.parse::<u64>().unwrap() < KEYSPACE,
                    "{key}"
                );
                let v = c.bulk(&["GET", &key]).unwrap();
                assert_eq!(v.len(), 3, "[{}] value of {key}: {v:?}", f.name);
            }
            drop(c);
        }
        let shim = redis.stop().expect("shim stats");
        // Every reply went through the rings: at least 5 bytes (+OK\r\n) per request.
        shim.assert_carried(f.name, 2 * 4 * n * 4);
        println!(
            "[{}] {} writes, {} requests, {} flushes",
            f.name,
            shim.get("writes"),
            shim.get("requests"),
            shim.get("flushes")
        );
    }
}
