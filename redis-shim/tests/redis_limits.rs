//! Redis's own backpressure with the shim preloaded, on every backend available here,
//! against plain redis-server in the same run: with `client-output-buffer-limit pubsub
//! 1mb 1mb 0` a subscriber that never reads, and with `normal 1mb 1mb 0` a client that
//! sends GETs of a 64 KiB value and never reads, one reply at a time, are disconnected by
//! Redis no later than without the shim plus the shim's per-socket allowance (256 KiB: 4
//! steps; and 128 KiB set in `fastio.conf`: 2 steps); on the way, `CLIENT LIST` shows the
//! client's output buffer (omem) growing no later than that, Redis disconnects it when
//! that reaches the limit, and `INFO memory` (mem_clients_normal) counts it. (Earlier
//! happens: when a lane worker lags, Redis holds the bytes the kernel would have taken.)

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use support::probe::connect_small;
use support::{flavors, have_redis, Client, Flavor, Redis, Reply, TempDir};

/// Size of each message / value.
const VALUE: usize = 64 << 10;
/// Most steps tried (the limit is reached after about 80).
const MAX_STEPS: usize = 400;

/// What happened to the stuck client.
#[derive(Debug)]
struct Trace {
    /// The step (1-based) after which Redis had disconnected it.
    disconnected_at: usize,
    /// Its omem (CLIENT LIST) after each step before that.
    omem: Vec<u64>,
    /// mem_clients_normal (INFO memory) once omem passed 512 KiB, when it counted
    /// omem (0: never).
    mem_clients: u64,
}

/// The stuck client's fields in CLIENT LIST, if it is connected.
fn stuck_entry(c: &mut Client) -> Option<String> {
    let list = c.bulk(&["CLIENT", "LIST"]).expect("CLIENT LIST");
    String::from_utf8_lossy(&list)
        .lines()
        .find(|l| l.contains(" name=stuck "))
        .map(str::to_string)
}

fn field(entry: &str, name: &str) -> u64 {
    entry
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {entry}"))
}

/// `calls` of GET in INFO commandstats.
fn get_calls(c: &mut Client) -> u64 {
    let text = c.bulk(&["INFO", "commandstats"]).expect("INFO");
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
        .and_then(|r| r.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Runs redis-server (with the shim on `flavor`, plain without) with `class 1mb 1mb 0`,
/// and a client of that class that never reads (its receive buffer small and fixed),
/// one 64 KiB reply at a time until Redis disconnects it.
fn trace(flavor: Option<&Flavor>, class: &str, conf_extra: &str) -> Trace {
    let dir = TempDir::new("limits");
    let limit = format!("{class} 1mb 1mb 0");
    let args = [
        "--save",
        "",
        "--appendonly",
        "no",
        "--client-output-buffer-limit",
        &limit,
    ];
    let redis = Redis::start_conf(flavor, dir.path(), &args, &[], conf_extra);
    let mut ctl = redis.client();
    let value = vec![b'v'; VALUE];
    assert_eq!(
        ctl.cmd_bin(&[b"SET", b"v", &value]).unwrap(),
        Reply::Status("OK".into())
    );
    let mut stuck: TcpStream = connect_small(format!("127.0.0.1:{}", redis.port).parse().unwrap());
    let mut hello = Client::encode(&[b"CLIENT", b"SETNAME", b"stuck"]);
    if class == "pubsub" {
        hello.extend_from_slice(&Client::encode(&[b"SUBSCRIBE", b"ch"]));
    }
    stuck.write_all(&hello).unwrap();
    wait_for("the stuck client in CLIENT LIST", || {
        stuck_entry(&mut ctl).is_some_and(|e| class != "pubsub" || field(&e, "sub") == 1)
    });
    let mut omem = Vec::new();
    let mut mem_clients = 0;
    for step in 1..=MAX_STEPS {
        if class == "pubsub" {
            match ctl.cmd_bin(&[b"PUBLISH", b"ch", &value]).unwrap() {
                Reply::Int(1) => {}
                Reply::Int(0) => {
                    return Trace {
                        disconnected_at: step,
                        omem,
                        mem_clients,
                    }
                }
                other => panic!("PUBLISH: {other:?}"),
            }
        } else {
            stuck.write_all(&Client::encode(&[b"GET", b"v"])).unwrap();
            // Processed, or the client is gone.
            wait_for("the GET processed", || {
                get_calls(&mut ctl) >= step as u64 || stuck_entry(&mut ctl).is_none()
            });
        }
        let Some(e) = stuck_entry(&mut ctl) else {
            return Trace {
                disconnected_at: step,
                omem,
                mem_clients,
            };
        };
        let o = field(&e, "omem");
        omem.push(o);
        if o > 512 << 10 && mem_clients == 0 {
            // INFO memory is updated by the server's cron (10 times a second): wait until
            // it counts the output buffer as CLIENT LIST shows it then (which may shrink
            // meanwhile, if the kernel takes more; if it empties, a later step checks).
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let mem: u64 = ctl.info("mem_clients_normal").parse().unwrap();
                let now = stuck_entry(&mut ctl).map_or(0, |e| field(&e, "omem"));
                if now == 0 {
                    break;
                }
                if mem >= now {
                    mem_clients = mem;
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "INFO memory: mem_clients_normal {mem}, omem {now}"
                );
                thread::sleep(Duration::from_millis(2));
            }
        }
    }
    panic!("not disconnected after {MAX_STEPS} steps of {VALUE} bytes: omem {omem:?}");
}

/// First step whose omem is not zero (Redis holds bytes it could not write).
fn first_held(t: &Trace) -> usize {
    t.omem
        .iter()
        .position(|&o| o > 0)
        .map_or(usize::MAX, |i| i + 1)
}

fn check_class(test: &str, class: &str) {
    if !have_redis(test) {
        return;
    }
    let plain = trace(None, class, "");
    println!(
        "plain: disconnected at step {}, omem first at step {}",
        plain.disconnected_at,
        first_held(&plain)
    );
    assert!(first_held(&plain) < plain.disconnected_at, "{plain:?}");
    for f in flavors(test) {
        for (extra, allowance) in [
            ("", 256usize << 10),
            ("shim_socket_allowance = \"128K\"\n", 128 << 10),
        ] {
            let t = trace(Some(&f), class, extra);
            let steps = allowance / VALUE;
            println!(
                "[{}] allowance {allowance}: disconnected at step {} (plain {}), omem first \
                 at step {} (plain {}), last omem {:?}, mem_clients_normal {}",
                f.name,
                t.disconnected_at,
                plain.disconnected_at,
                first_held(&t),
                first_held(&plain),
                t.omem.last(),
                t.mem_clients
            );
            // Disconnected no later than plain Redis disconnects it plus the steps the
            // shim's allowance holds (and one for rounding): the shim hides no more than
            // its allowance from Redis. Earlier happens: when a lane worker lags (threads
            // with two lanes on two busy cores), Redis holds what the kernel would have
            // taken, and the kernel's send buffer autotunes to less.
            let later = t.disconnected_at as isize - plain.disconnected_at as isize;
            assert!(
                later <= steps as isize + 1,
                "[{}] {class}, allowance {allowance}: disconnected at step {}, plain at {}",
                f.name,
                t.disconnected_at,
                plain.disconnected_at
            );
            // Redis's accounting saw the bytes the kernel and the shim could not take no
            // later than the allowance allows (earlier when a lane worker lagged).
            let held = first_held(&t) as isize - first_held(&plain) as isize;
            assert!(
                held <= steps as isize + 1,
                "[{}] {class}: omem first at step {}, plain at {}",
                f.name,
                first_held(&t),
                first_held(&plain)
            );
            // Redis disconnected it on its own count, which INFO memory shows.
            let last = *t.omem.last().unwrap();
            assert!(
                last > (1 << 20) - 2 * VALUE as u64 && t.mem_clients > 0,
                "[{}] {class}: last omem {last}, mem_clients_normal {}; omem {:?}",
                f.name,
                t.mem_clients,
                t.omem
            );
        }
    }
}

#[test]
fn a_subscriber_that_never_reads_is_disconnected_by_the_pubsub_limit() {
    check_class(
        "a_subscriber_that_never_reads_is_disconnected_by_the_pubsub_limit",
        "pubsub",
    );
}

#[test]
fn a_client_that_never_reads_is_disconnected_by_the_normal_limit() {
    check_class(
        "a_client_that_never_reads_is_disconnected_by_the_normal_limit",
        "normal",
    );
}
