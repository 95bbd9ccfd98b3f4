//! Records the configuration file chosen by `make config`.
//!
//! `make config` builds with `FASTIO_CONF_PATH=/abs/path/fastio.conf`; this script hands the
//! path to the crate as the compile-time variable `FASTIO_RECORDED_CONF`, which
//! `fastio::config::RECORDED_PATH` reads and `Config::resolve` falls back to when neither
//! `--config` nor `FASTIO_CONF` names a file. Without `FASTIO_CONF_PATH` (or with it empty)
//! nothing is recorded. A relative path is taken relative to the workspace root (where
//! `make` runs), so the recorded path is always absolute. Only the path is recorded: the
//! file is read at run time, so editing it needs no rebuild.

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FASTIO_CONF_PATH");

    let Some(raw) = env::var_os("FASTIO_CONF_PATH").filter(|v| !v.is_empty()) else {
        return;
    };
    let path = PathBuf::from(&raw);
    let path = if path.is_absolute() {
        path
    } else {
        let manifest = env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        let root = Path::new(&manifest)
            .parent()
            .expect("the runtime crate lives inside the workspace");
        root.join(path)
    };
    let Some(text) = path.to_str().filter(|t| !t.contains(['\n', '\r'])) else {
        panic!("FASTIO_CONF_PATH={raw:?}: the path must be valid UTF-8 on one line");
    };
    println!("cargo:rustc-env=FASTIO_RECORDED_CONF={text}");
}
