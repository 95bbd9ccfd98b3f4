//! Helpers shared by the runtime's integration tests (and, by `#[path]`, the echo crate's).

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use fastio::{BackendKind, Config};

/// Whether tests should exercise `kind`: all backends unless `FASTIO_TEST_BACKENDS`
/// (a comma-separated list such as `kmod` — set by `make vm-test` inside the VM, where the
/// host run already covered the others) says otherwise. Prints a SKIP line when not.
pub fn backend_selected(test: &str, kind: BackendKind) -> bool {
    flavor_selected(test, kind.as_str(), kind)
}

/// Like [`backend_selected`], for a named flavor of a backend (e.g. `threads x2`).
pub fn flavor_selected(test: &str, flavor: &str, kind: BackendKind) -> bool {
    let Ok(list) = std::env::var("FASTIO_TEST_BACKENDS") else {
        return true;
    };
    let chosen = list.split(',').any(|b| b.trim() == kind.as_str());
    if !chosen {
        println!("SKIP {test} [{flavor}]: not in FASTIO_TEST_BACKENDS={list}");
    }
    chosen
}

/// Names of the kernel worker threads (`fastio-<pid>-<lane>`) of process `pid`.
pub fn workers_of(pid: u32) -> Vec<String> {
    let prefix = format!("fastio-{pid}-");
    let mut out = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.starts_with(&prefix) {
            out.push(comm.trim().to_string());
        }
    }
    out.sort();
    out
}

/// A named backend configuration.
pub struct Flavor {
    pub name: &'static str,
    pub config: Config,
}

/// The backend flavors every suite runs: io_uring with and without SQPOLL, threads with
/// one and two lanes, the kernel module with two lanes; each is `base` with the backend
/// keys changed.
pub fn flavors(base: Config) -> Vec<Flavor> {
    vec![
        Flavor {
            name: "uring+sqpoll",
            config: Config {
                backend: BackendKind::Uring,
                sqpoll: true,
                ..base.clone()
            },
        },
        Flavor {
            name: "uring",
            config: Config {
                backend: BackendKind::Uring,
                sqpoll: false,
                ..base.clone()
            },
        },
        Flavor {
            name: "threads x1",
            config: Config {
                backend: BackendKind::Threads,
                ..base.clone()
            },
        },
        Flavor {
            name: "threads x2",
            config: Config {
                backend: BackendKind::Threads,
                max_ker_worker: 2,
                ..base.clone()
            },
        },
        Flavor {
            name: "kmod",
            config: Config {
                backend: BackendKind::Kmod,
                max_ker_worker: 2,
                ..base
            },
        },
    ]
}
