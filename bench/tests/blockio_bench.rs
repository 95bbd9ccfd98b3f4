//! `blockio_bench` run briefly on every backend this machine has (io_uring with and
//! without SQPOLL, threads, and the kernel module where `/dev/fastio` exists) against a
//! small file on a file system with O_DIRECT (`FASTIO_SCRATCH` in the VM, else the temp
//! dir; SKIP with the reason when it has none): it must report IOPS > 0, the blocks its
//! random writes left must read back byte-exact through the file system, its verifying
//! reads must check every block they read, and a block corrupted behind its back must
//! make a verifying read fail.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fastio_bench::blockio::{check_block, BLOCK};

const BIN: &str = env!("CARGO_BIN_EXE_blockio_bench");
/// Blocks of the test file (1 MiB).
const BLOCKS: u64 = 256;

fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run blockio_bench");
    eprintln!(
        "$ blockio_bench {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A timed run (at most 20 s, bounded by `max_ops`, no warm-up) of `rw` at `depth` on
/// `file` with the backend options `opts` and `extra` ones.
fn transfer(
    opts: &[&str],
    file: &str,
    rw: &str,
    depth: &str,
    max_ops: &str,
    extra: &[&str],
) -> Output {
    let mut a = opts.to_vec();
    a.extend([
        "-f", file, "--rw", rw, "-d", depth, "-t", "20", "--warmup", "0",
    ]);
    a.extend(["--max-ops", max_ops, "--verify"]);
    a.extend(extra);
    run(&a)
}

/// The number `key` of the RESULT line of a successful run.
fn result(out: &Output, key: &str) -> f64 {
    assert!(
        out.status.success(),
        "blockio_bench failed: {:?}",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT {"))
        .expect("a RESULT line");
    let field = line
        .split(", ")
        .find_map(|f| f.strip_prefix(&format!("\"{key}\": ")))
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    field.trim_end_matches('}').parse().expect("a number")
}

/// The backends to run: (name, blockio_bench options).
fn backends() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut v = vec![
        ("uring", vec!["--backend", "uring", "--sqpoll", "false"]),
        (
            "uring+sqpoll",
            vec!["--backend", "uring", "--sqpoll", "true"],
        ),
        ("threads", vec!["--backend", "threads"]),
    ];
    if Path::new("/dev/fastio").exists() {
        v.push(("kmod", vec!["--backend", "kmod"]));
    } else {
        println!("SKIP blockio_bench [kmod]: no /dev/fastio here (the module runs in the VM)");
    }
    v
}

/// A directory whose file system takes O_DIRECT, or None (SKIP printed).
fn direct_dir(test: &str) -> Option<PathBuf> {
    let root = std::env::var("FASTIO_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = root.join(format!("fastio-blockio-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let probe = dir.join("probe");
    let r = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    match r {
        Ok(_) => Some(dir),
        Err(e) => {
            println!(
                "SKIP blockio_bench: the file system of {} takes no O_DIRECT ({e}); set \
                 FASTIO_SCRATCH to a directory on ext4/xfs",
                root.display()
            );
            let _ = std::fs::remove_dir_all(&dir);
            None
        }
    }
}

/// Checks every block of `path` through the file system; returns how many carry `tag`.
fn blocks_with_tag(path: &Path, tag: u64) -> u64 {
    let f = File::open(path).unwrap();
    assert_eq!(f.metadata().unwrap().len(), BLOCKS * BLOCK as u64);
    let mut buf = vec![0u8; BLOCK];
    let mut n = 0;
    for i in 0..BLOCKS {
        f.read_exact_at(&mut buf, i * BLOCK as u64).unwrap();
        let t = check_block(&buf, i).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(t == 0 || t == tag, "block {i} has tag {t}, not 0 or {tag}");
        n += u64::from(t == tag);
    }
    n
}

#[test]
fn random_direct_io_reads_back_what_it_wrote() {
    let Some(dir) = direct_dir("rw") else { return };
    for (tag, (name, opts)) in (7u64..).zip(backends()) {
        let file = dir.join(format!("{}.dat", name.replace('+', "_")));
        let f = file.to_str().unwrap();
        let out = run(&["--rw", "layout", "-f", f, "--size-mib", "1"]);
        assert!(out.status.success(), "[{name}] layout");
        assert_eq!(blocks_with_tag(&file, tag), 0, "[{name}] fresh layout");

        // Random writes at depth 8, bounded in count (and time).
        let tag_s = tag.to_string();
        let out = transfer(&opts, f, "randwrite", "8", "200", &["--tag", &tag_s]);
        let ops = result(&out, "ops");
        assert_eq!(ops, 200.0, "[{name}] --max-ops bounds the writes");
        assert!(result(&out, "iops") > 0.0, "[{name}] write IOPS");
        let written = blocks_with_tag(&file, tag);
        // 200 uniform writes over 256 blocks hit ~140 distinct ones.
        assert!(
            (50..=200).contains(&written),
            "[{name}] {written} blocks written"
        );

        // Verifying random reads at depth 1 and 4: every block read is checked.
        for depth in ["1", "4"] {
            let out = transfer(&opts, f, "randread", depth, "300", &["--seed", "3"]);
            let ops = result(&out, "ops");
            assert_eq!(ops, 300.0, "[{name}] depth {depth}: --max-ops");
            assert_eq!(result(&out, "verified"), ops, "[{name}] every read checked");
            assert!(result(&out, "iops") > 0.0 && result(&out, "p99_us") > 0.0);
            let cpu = result(&out, "cpu_s");
            let threads = result(&out, "lanes_cpu_s") + result(&out, "helpers_cpu_s");
            assert!(
                cpu > 0.0 && threads <= cpu + 0.05,
                "[{name}] CPU {cpu} s, threads {threads} s"
            );
        }

        // A corrupted block fails a verifying read (2,000 reads miss one of 256 blocks
        // with probability e^-7.8; the seed makes it the same every run).
        let victim = 17u64;
        let g = OpenOptions::new().write(true).open(&file).unwrap();
        g.write_all_at(&[0xFF; 8], victim * BLOCK as u64 + 1000)
            .unwrap();
        g.sync_all().unwrap();
        drop(g);
        let out = transfer(&opts, f, "randread", "4", "2000", &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "[{name}] corrupted block not detected"
        );
        assert!(err.contains(&format!("block {victim}")), "[{name}] {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refuses_a_file_without_whole_blocks() {
    let Some(dir) = direct_dir("short") else {
        return;
    };
    let file = dir.join("short.dat");
    std::fs::write(&file, [1u8; 100]).unwrap();
    let out = run(&[
        "--backend",
        "threads",
        "-f",
        file.to_str().unwrap(),
        "--rw",
        "randread",
        "-t",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no whole 4 KiB block"));
    let _ = std::fs::remove_dir_all(&dir);
}
