//! The async runtime (`fastio::rt`) on every backend this machine runs (io_uring with
//! and without SQPOLL, threads with one and two lanes, the kernel module inside the VM):
//! I/O with owned buffers, Busy refusals queued inside, cancel on drop under load with
//! poisoned buffers, timeouts, 10 000 tasks, panics, the pool and the Send + Sync handle.
//! Every wait is bounded; loopback only.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Flavor;
use fastio::backend::DEVICE_PATH;
use fastio::rt::{self, IoBuf, IoBufMut, Pool, PoolOptions, Runtime, TcpListener, TcpStream};
use fastio::{BackendKind, Config};

fn flavors() -> Vec<Flavor> {
    // Small rings, so that the tests also run into the in-flight limit (Busy).
    let base = Config {
        sq_entries: 64,
        cq_entries: 128,
        max_files: 512,
        idle_ms: 5,
        ..Config::default()
    };
    common::flavors(base)
}

/// Runs `f` with a runtime on each flavor that can open here; SKIP lines for the others.
fn each_runtime(test: &str, f: impl Fn(&Flavor, &Runtime)) {
    common::each_flavor(
        test,
        flavors(),
        Runtime::new,
        |rt| rt.backend().sqpoll,
        |fl, rt| {
            let t0 = Instant::now();
            f(fl, rt);
            println!("{test} [{}]: {:?}", fl.name, t0.elapsed());
        },
    );
}

/// Fails the test if `fut` takes longer than `limit` (so a hang is a failure, not a
/// stuck test run).
async fn bounded<F: std::future::Future>(what: &str, limit: Duration, fut: F) -> F::Output {
    match rt::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

const LIMIT: Duration = Duration::from_secs(30);

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[test]
fn tcp_echo_and_close_on_drop() {
    each_runtime("rt_tcp_echo", |fl, rt| {
        rt.block_on(bounded("echo", LIMIT, async {
            let l = TcpListener::bind(localhost()).unwrap();
            let addr = l.local_addr().unwrap();
            let server = rt::spawn(async move {
                let c = l.accept().await.unwrap();
                let mut total = 0;
                let mut buf = Vec::with_capacity(4096);
                loop {
                    buf.clear();
                    let (r, b) = c.read(buf).await;
                    let n = r.unwrap();
                    if n == 0 {
                        break total;
                    }
                    total += n;
                    let (r, b) = c.write_all(b).await;
                    r.unwrap();
                    buf = b;
                }
            });
            let c = TcpStream::connect(addr).await.unwrap();
            let msg: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            let (r, msg) = c.write_all(msg).await;
            r.unwrap();
            c.shutdown(Shutdown::Write).await.unwrap();
            let mut got = Vec::new();
            loop {
                // A slice of a boxed buffer: reads land after the first 8 bytes.
                let buf = vec![0u8; 8 + 3000].into_boxed_slice().slice(8..);
                let (r, buf) = c.read(buf).await;
                let n = r.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf.into_inner()[8..8 + n]);
            }
            assert_eq!(got, msg, "[{}] echo mismatch", fl.name);
            assert_eq!(server.await.unwrap(), msg.len());
            // The server's stream was dropped at the end of its task: its slot is closed,
            // so a fresh connection gets a slot and the client sees end of stream.
            c.close().await.unwrap();
        }));
    });
}

#[test]
fn file_read_write_sync() {
    each_runtime("rt_file", |fl, rt| {
        let dir = std::env::temp_dir().join(format!(
            "fastio-rt-file-{}-{}",
            std::process::id(),
            fl.name.replace(['+', ' '], "_")
        ));
        rt.block_on(bounded("file", LIMIT, async {
            let f = rt::File::create(&dir).await.unwrap();
            // Several writes in flight at once, each at its own offset.
            let writes: Vec<_> = (0..8u64)
                .map(|i| {
                    let f = &f;
                    async move {
                        let (r, _) = f.write_all_at(vec![i as u8; 4096], i * 4096).await;
                        r.unwrap()
                    }
                })
                .collect();
            for w in writes {
                w.await;
            }
            f.sync_all().await.unwrap();
            assert_eq!(f.metadata().unwrap().len(), 8 * 4096);
            let (r, buf) = f.read_at(Vec::with_capacity(4096), 3 * 4096).await;
            assert_eq!(r.unwrap(), 4096);
            assert!(buf.iter().all(|&b| b == 3), "[{}]", fl.name);
            let (r, _) = f.read_at(vec![0u8; 16], 8 * 4096).await;
            assert_eq!(r.unwrap(), 0, "EOF");
            f.close().await.unwrap();
        }));
        std::fs::remove_file(&dir).unwrap();
    });
}

/// A buffer whose memory is never freed: when the runtime or the test drops it, it is
/// filled with POISON and remembered, and the test checks at the end that nobody wrote
/// into it afterwards (an executor writing late into a cancelled read's buffer).
struct Poisoned {
    ptr: *mut u8,
    len: usize,
}

const POISON: u8 = 0xA5;
static GRAVEYARD: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

impl Poisoned {
    fn new(len: usize) -> Poisoned {
        let mem = Box::leak(vec![0u8; len].into_boxed_slice());
        Poisoned {
            ptr: mem.as_mut_ptr(),
            len,
        }
    }
}

impl Drop for Poisoned {
    fn drop(&mut self) {
        // SAFETY: the leaked block of `len` bytes, which nothing else uses any more (the
        // runtime hands a buffer back or drops it only after its request completed).
        unsafe { std::ptr::write_bytes(self.ptr, POISON, self.len) };
        GRAVEYARD
            .lock()
            .unwrap()
            .push((self.ptr as usize, self.len));
    }
}

// SAFETY: a leaked heap block: stable, `len` bytes, never freed.
unsafe impl IoBuf for Poisoned {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
    fn bytes_total(&self) -> usize {
        self.len
    }
}

// SAFETY: as above.
unsafe impl IoBufMut for Poisoned {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
    unsafe fn set_init(&mut self, _pos: usize) {}
}

/// Cancel on drop under load: 16 connections, half of them streaming data, half idle;
/// reads race against random timeouts of 0-300 µs, so many are cancelled while data
/// arrives. Every buffer is poisoned once the runtime gives it up; afterwards (and after
/// more data was pushed at the connections), every poisoned buffer must be intact.
#[test]
fn cancel_on_drop_under_load_never_writes_late() {
    each_runtime("rt_cancel_load", |fl, rt| {
        let stop = Arc::new(AtomicBool::new(false));
        let l = StdListener::bind(localhost()).unwrap();
        let addr = l.local_addr().unwrap();
        let conns = 16;
        let feeders: Vec<_> = (0..conns)
            .map(|i| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut s = StdStream::connect(addr).unwrap();
                    s.set_write_timeout(Some(Duration::from_millis(50)))
                        .unwrap();
                    let chunk = vec![i as u8; 1500];
                    while !stop.load(Ordering::Relaxed) {
                        if i % 2 == 0 {
                            // A full buffer times out: fine, the loop checks `stop`.
                            let _ = s.write(&chunk);
                        } else {
                            std::thread::park_timeout(Duration::from_millis(5));
                        }
                    }
                })
            })
            .collect();
        let (cancelled, completed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        rt.block_on(bounded("cancel load", LIMIT, async {
            let listener = TcpListener::from_std(&l).unwrap();
            let mut tasks = Vec::new();
            for i in 0..conns {
                let c = listener.accept().await.unwrap();
                let (cancelled, completed) = (Arc::clone(&cancelled), Arc::clone(&completed));
                tasks.push(rt::spawn(async move {
                    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ i as u64;
                    for _ in 0..300 {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let t = Duration::from_micros(seed % 300);
                        match rt::timeout(t, c.read(Poisoned::new(2048))).await {
                            Ok((r, buf)) => {
                                r.unwrap();
                                completed.fetch_add(1, Ordering::Relaxed);
                                drop(buf);
                            }
                            Err(_) => {
                                cancelled.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }));
        // The streams are dropped (slots closed); keep the feeders writing a little while
        // more requests of this runtime complete, then stop them.
        rt.block_on(async {
            for _ in 0..20 {
                rt::nop().await.unwrap();
            }
        });
        stop.store(true, Ordering::Relaxed);
        for f in feeders {
            f.join().unwrap();
        }
        let (c, d) = (
            cancelled.load(Ordering::Relaxed),
            completed.load(Ordering::Relaxed),
        );
        println!("[{}] {c} reads cancelled, {d} completed", fl.name);
        assert!(c > 0, "[{}] no read was ever cancelled", fl.name);
        assert!(d > 0, "[{}] no read ever completed", fl.name);
        let graves = GRAVEYARD.lock().unwrap();
        for &(ptr, len) in graves.iter() {
            // SAFETY: leaked blocks, never freed.
            let mem = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
            assert!(
                mem.iter().all(|&b| b == POISON),
                "[{}] a buffer was written after the runtime gave it up",
                fl.name
            );
        }
    });
}

/// A timeout fires near its deadline and cancels the read: with no data ever sent, the
/// read's request still completes (the runtime's in-flight count drops back), which only
/// a cancel can make happen, and the stream then delivers all later data to the next
/// read. Sleeps wake in deadline order; an interval ticks.
#[test]
fn timeouts_fire_and_cancel() {
    each_runtime("rt_timeouts", |fl, rt| {
        rt.block_on(bounded("timeouts", LIMIT, async {
            let l = TcpListener::bind(localhost()).unwrap();
            let mut peer = StdStream::connect(l.local_addr().unwrap()).unwrap();
            let c = l.accept().await.unwrap();
            let idle = rt::in_flight();
            let t0 = Instant::now();
            let r = rt::timeout(Duration::from_millis(50), c.read(vec![0u8; 16])).await;
            let took = t0.elapsed();
            assert!(r.is_err(), "[{}] read with no data completed", fl.name);
            assert!(
                took >= Duration::from_millis(50) && took < Duration::from_secs(5),
                "[{}] {took:?}",
                fl.name
            );
            // The cancelled read completes (-ECANCELED) although no data came.
            while rt::in_flight() > idle {
                rt::nop().await.unwrap();
            }
            peer.write_all(b"after").unwrap();
            let (r, buf) = c.read(vec![0u8; 16]).await;
            assert_eq!(&buf[..r.unwrap()], b"after", "[{}] data lost", fl.name);
            // A future that finishes in time is not cut.
            let v = rt::timeout(Duration::from_secs(5), async { 7 }).await;
            assert_eq!(v, Ok(7));
            // Sleeps wake in deadline order.
            let order = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
            let hs: Vec<_> = [30u64, 10, 20]
                .into_iter()
                .map(|ms| {
                    let order = order.clone();
                    rt::spawn(async move {
                        rt::sleep(Duration::from_millis(ms)).await;
                        order.borrow_mut().push(ms);
                    })
                })
                .collect();
            for h in hs {
                h.await.unwrap();
            }
            assert_eq!(*order.borrow(), vec![10, 20, 30]);
            let mut iv = rt::interval(Duration::from_millis(10));
            let t0 = Instant::now();
            for _ in 0..4 {
                iv.tick().await;
            }
            assert!(t0.elapsed() >= Duration::from_millis(30));
        }));
    });
}

/// 10 000 tasks at once, each with a request in flight: far more than the lanes take
/// (128 CQ entries each), so most wait inside the runtime as Busy and go out as room
/// frees; every task finishes with its own answer.
#[test]
fn ten_thousand_tasks() {
    each_runtime("rt_10k", |fl, rt| {
        rt.block_on(bounded("10k tasks", LIMIT, async {
            let hs: Vec<_> = (0..10_000u64)
                .map(|i| {
                    rt::spawn(async move {
                        if i % 3 == 0 {
                            rt::sleep(Duration::from_millis(i % 7)).await;
                        }
                        rt::nop().await.unwrap();
                        rt::nop().await.unwrap();
                        i
                    })
                })
                .collect();
            for (i, h) in hs.into_iter().enumerate() {
                assert_eq!(h.await.unwrap(), i as u64, "[{}]", fl.name);
            }
        }));
        assert_eq!(rt.tasks(), 0);
    });
}

/// Requests refused as Busy wait inside the runtime and keep their order: 2000 tasks,
/// spawned in order, each send one numbered record on the same connection, far more
/// than a lane takes at once; the peer reads them in order.
#[test]
fn busy_refusals_keep_submission_order() {
    each_runtime("rt_busy_order", |fl, rt| {
        let n = 2000u32;
        let l = StdListener::bind(localhost()).unwrap();
        let mut peer = StdStream::connect(l.local_addr().unwrap()).unwrap();
        peer.set_read_timeout(Some(LIMIT)).unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = vec![0u8; n as usize * 4];
            peer.read_exact(&mut all).unwrap();
            all.chunks(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<u32>>()
        });
        rt.block_on(bounded("busy order", LIMIT, async {
            let listener = TcpListener::from_std(&l).unwrap();
            let conn = std::rc::Rc::new(listener.accept().await.unwrap());
            let hs: Vec<_> = (0..n)
                .map(|i| {
                    let conn = conn.clone();
                    rt::spawn(async move {
                        let (r, _) = conn.write_all(i.to_le_bytes().to_vec()).await;
                        r.unwrap();
                    })
                })
                .collect();
            for h in hs {
                h.await.unwrap();
            }
        }));
        let got = reader.join().unwrap();
        assert!(
            got.iter().copied().eq(0..n),
            "[{}] records out of order",
            fl.name
        );
    });
}

/// A task that panics is reported through its handle; the runtime keeps serving a
/// connection, and new tasks run.
#[test]
fn a_task_panic_leaves_the_runtime_serving() {
    each_runtime("rt_panic", |fl, rt| {
        rt.block_on(bounded("panic", LIMIT, async {
            let l = TcpListener::bind(localhost()).unwrap();
            let mut peer = StdStream::connect(l.local_addr().unwrap()).unwrap();
            let c = l.accept().await.unwrap();
            let server = rt::spawn(async move {
                for _ in 0..2 {
                    let (r, buf) = c.read(Vec::with_capacity(64)).await;
                    r.unwrap();
                    let (r, _) = c.write_all(buf).await;
                    r.unwrap();
                }
            });
            let bad = rt::spawn(async {
                rt::nop().await.unwrap();
                panic!("deliberate");
            });
            let e = bad.await.unwrap_err();
            assert_eq!(e.message(), "deliberate");
            for msg in [b"one!!", b"two!!"] {
                peer.write_all(msg).unwrap();
                // Read the echo on a helper thread: the runtime must keep serving.
                let mut p = peer.try_clone().unwrap();
                let got = rt::unblock(move || {
                    let mut b = [0u8; 5];
                    p.read_exact(&mut b).unwrap();
                    b
                })
                .await;
                assert_eq!(&got, msg, "[{}]", fl.name);
            }
            server.await.unwrap();
            assert_eq!(rt::spawn(async { 5 }).await.unwrap(), 5);
        }));
    });
}

fn pool_config() -> Vec<(String, Config)> {
    flavors()
        .into_iter()
        .filter(|fl| fl.name != "threads x2")
        .filter(|fl| common::backend_selected("rt_pool", fl.config.backend))
        .filter(|fl| {
            fl.config.backend != BackendKind::Kmod || std::path::Path::new(DEVICE_PATH).exists()
        })
        .map(|fl| (fl.name.to_string(), fl.config))
        .collect()
}

/// A pool of `workers` on `config` (pinned from CPU 0 when `pin`), or None (SKIP line)
/// where the backend cannot run.
fn open_pool(test: &str, name: &str, config: &Config, workers: usize, pin: bool) -> Option<Pool> {
    let opts = PoolOptions {
        workers,
        pin: pin.then_some(0),
    };
    match Pool::new(config, opts) {
        Ok(p) => Some(p),
        Err(e) if config.backend != BackendKind::Kmod => {
            println!("SKIP {test} [{name}]: {e}");
            None
        }
        Err(e) => panic!("{test} [{name}]: {e}"),
    }
}

/// Tasks spawned on each of three workers run there; one task visits every worker with
/// switch_to and does I/O on each; every worker accepts on one shared listener.
#[test]
fn pool_spawn_on_and_switch() {
    for (name, config) in pool_config() {
        let Some(pool) = open_pool("rt_pool", &name, &config, 3, false) else {
            continue;
        };
        let hs: Vec<_> = (0..30)
            .map(|i| {
                let w = i % 3;
                (w, pool.spawn_on(w, async { rt::current_worker() }))
            })
            .collect();
        for (w, h) in hs {
            assert_eq!(h.join().unwrap(), Some(w), "[{name}]");
        }
        let tour = pool.spawn_on(0, async {
            let mut path = vec![rt::current_worker()];
            for w in [1, 2, 0, 2] {
                rt::switch_to(w).await.unwrap();
                rt::nop().await.unwrap();
                rt::sleep(Duration::from_millis(1)).await;
                path.push(rt::current_worker());
            }
            let bad = rt::switch_to(9).await.unwrap_err();
            (path, bad.kind())
        });
        let (path, bad) = tour.join().unwrap();
        assert_eq!(
            path,
            vec![Some(0), Some(1), Some(2), Some(0), Some(2)],
            "[{name}]"
        );
        assert_eq!(bad, std::io::ErrorKind::InvalidInput);
        // One listener, accepting on every worker.
        let l = Arc::new(StdListener::bind(localhost()).unwrap());
        let addr = l.local_addr().unwrap();
        let served: Vec<_> = (0..3)
            .map(|w| {
                let l = Arc::clone(&l);
                pool.spawn_with_on(w, move || async move {
                    let listener = TcpListener::from_std(&l).unwrap();
                    let mut n = 0;
                    // Serve until a client says "stop".
                    loop {
                        let c = listener.accept().await.unwrap();
                        let (r, buf) = c.read(Vec::with_capacity(16)).await;
                        let len = r.unwrap();
                        if &buf[..len] == b"stop" {
                            return n;
                        }
                        let (r, _) = c.write_all(buf).await;
                        r.unwrap();
                        n += 1;
                    }
                })
            })
            .collect();
        for i in 0..30u32 {
            let mut s = StdStream::connect(addr).unwrap();
            s.set_read_timeout(Some(LIMIT)).unwrap();
            s.write_all(&i.to_le_bytes()).unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).unwrap();
            assert_eq!(u32::from_le_bytes(b), i, "[{name}]");
        }
        let mut per_worker = Vec::new();
        for h in served {
            let mut s = StdStream::connect(addr).unwrap();
            s.write_all(b"stop").unwrap();
            // Each "stop" ends one worker's loop; whichever it was, wait for one result
            // per stop by joining in turn below.
            drop(s);
            per_worker.push(h);
        }
        let counts: Vec<u32> = per_worker.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(counts.iter().sum::<u32>(), 30, "[{name}]");
        println!("rt_pool [{name}]: shared listener, connections per worker {counts:?}");
        // SO_REUSEPORT: one listening socket per worker on the same port; the kernel
        // spreads connections by hash.
        let port = StdListener::bind(localhost())
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let ready = Arc::new(std::sync::Barrier::new(4));
        let served: Vec<_> = (0..3)
            .map(|w| {
                let ready = Arc::clone(&ready);
                pool.spawn_with_on(w, move || async move {
                    let listener = TcpListener::bind_reuseport(addr).unwrap();
                    rt::unblock(move || ready.wait()).await;
                    let mut n = 0u32;
                    loop {
                        let c = listener.accept().await.unwrap();
                        let (r, buf) = c.read(Vec::with_capacity(16)).await;
                        if &buf[..r.unwrap()] == b"stop" {
                            return n;
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        ready.wait();
        let conns: Vec<_> = (0..60).map(|_| StdStream::connect(addr).unwrap()).collect();
        drop(conns);
        // Stop each worker through its own socket: connect until every one has returned.
        let deadline = Instant::now() + LIMIT;
        while served.iter().any(|h| !h.is_finished()) {
            assert!(
                Instant::now() < deadline,
                "[{name}] reuseport workers never stopped"
            );
            // A socket of a worker that stopped may still take (and reset) a connection.
            if let Ok(mut s) = StdStream::connect(addr) {
                let _ = s.write_all(b"stop");
            }
        }
        let counts: Vec<u32> = served.into_iter().map(|h| h.join().unwrap()).collect();
        println!("rt_pool [{name}]: SO_REUSEPORT, connections per worker {counts:?}");
        // The 60 were queued before any "stop", and each socket accepts in order.
        assert_eq!(counts.iter().sum::<u32>(), 60, "[{name}]");
    }
}

/// The Send + Sync handle from 8 threads: 8 x 500 requests, each answered with its own
/// (thread, sequence) pair.
#[test]
fn handle_from_eight_threads() {
    for (name, config) in pool_config() {
        let Some(pool) = open_pool("rt_handle", &name, &config, 1, true) else {
            continue;
        };
        let h = pool.handle(0);
        // The worker is pinned: one CPU in its affinity mask.
        let width = h
            .spawn(async { std::thread::available_parallelism().unwrap().get() })
            .join()
            .unwrap();
        assert_eq!(width, 1, "[{name}] pinned worker");
        let t0 = Instant::now();
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    let pending: Vec<_> = (0..500u64)
                        .map(|i| {
                            (
                                i,
                                h.spawn(async move {
                                    rt::nop().await.unwrap();
                                    (t, i)
                                }),
                            )
                        })
                        .collect();
                    for (i, p) in pending {
                        assert_eq!(p.join().unwrap(), (t, i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(t0.elapsed() < LIMIT);
        let b = h.batch_stats();
        println!(
            "rt_handle [{name}]: 4000 requests in {:?}, taken in {} batches",
            t0.elapsed(),
            b.batches
        );
        // 4001 with the affinity probe; what arrived together was taken together.
        assert_eq!(b.jobs, 4001, "[{name}]");
        assert!(b.batches < b.jobs, "[{name}] no batching: {b:?}");
    }
}
