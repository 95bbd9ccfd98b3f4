//! SENDFILE through the proactor, on every backend this machine can run (io_uring with
//! and without SQPOLL, threads with one and two lanes, the kernel module where
//! `/dev/fastio` exists: in the VM, where the files live on the scratch ext4 disk
//! `FASTIO_SCRATCH` and are read uncached after `drop_caches`).
//!
//! Every byte that arrives at the peer is compared with the file's.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use common::Flavor;
use fastio::{Completion, Proactor, Slot};

fn each_backend(test: &str, f: impl Fn(&Flavor, &mut Proactor)) {
    common::each_proactor(test, f);
}

/// Waits for the completion of `user_data` (the tests have one request in flight, or
/// take the others with their own call).
fn wait_for(p: &mut Proactor, user_data: u64, stash: &mut Vec<Completion>) -> Completion {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        p.submit().expect("submit");
        stash.extend(p.completions());
        if let Some(i) = stash.iter().position(|c| c.user_data == user_data) {
            return stash.remove(i);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no completion for {user_data} within 60 s"
        );
        p.wait(1, Some(Duration::from_secs(1))).expect("wait");
    }
}

/// The scratch disk in the VM (`FASTIO_SCRATCH`), else the temp dir.
fn in_vm() -> Option<PathBuf> {
    std::env::var("FASTIO_SCRATCH").ok().map(PathBuf::from)
}

/// A file of `len` pseudo-random bytes; returns it (open for reading) and its bytes.
fn data_file(test: &str, fl: &Flavor, len: usize) -> (std::fs::File, Vec<u8>) {
    let root = in_vm().unwrap_or_else(std::env::temp_dir);
    let name: String = fl
        .name
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '_' })
        .collect();
    let path = root.join(format!("fastio-{test}-{name}-{}", std::process::id()));
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ len as u64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&path, &data).unwrap();
    if in_vm().is_some() {
        // Uncached: the module's helpers read it from the disk.
        common::drop_caches();
    }
    let f = std::fs::File::open(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    (f, data)
}

/// A connected pair: the server end registered in `p`, the client end.
fn socket_pair(p: &mut Proactor) -> (Slot, TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    let slot = p.register(&server).unwrap();
    (slot, server, client)
}

/// Reads `n` bytes from `c` on a thread.
fn reader(mut c: TcpStream, n: usize) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut got = vec![0u8; n];
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        c.read_exact(&mut got).unwrap();
        got
    })
}

/// Sends `len` bytes from `off` (`None`: the file position) with as many SENDFILEs as
/// it takes; returns the total (less at end of file).
fn send_all(p: &mut Proactor, dst: Slot, src: Slot, off: Option<u64>, len: u64) -> u64 {
    let mut done = 0u64;
    let mut stash = vec![];
    while done < len {
        let chunk = (len - done).min(u32::MAX as u64) as u32;
        let at = off.map(|o| o + done);
        p.sendfile(dst, src, at, chunk, 7)
            .map_err(|r| r.error)
            .unwrap();
        let c = wait_for(p, 7, &mut stash);
        assert!(c.result >= 0, "sendfile: {}", c.result);
        if c.result == 0 {
            break;
        }
        assert!(c.result as u64 <= chunk as u64);
        done += c.result as u64;
    }
    done
}

/// A file of several MiB whole, then a range in the middle, then a range with the file
/// position (OFF_CURRENT), which advances by what was sent; end of file gives a short
/// count, then 0.
#[test]
fn sendfile_whole_middle_current_and_eof() {
    each_backend("sendfile_transfers", |fl, p| {
        let size = if in_vm().is_some() { 3 << 20 } else { 8 << 20 };
        let (mut file, data) = data_file("sendfile", fl, size);
        let src = p.register(&file).unwrap();
        let (dst, _server, client) = socket_pair(p);
        let n = size;
        let rd = reader(client.try_clone().unwrap(), n);
        assert_eq!(send_all(p, dst, src, Some(0), n as u64), n as u64);
        assert!(
            rd.join().unwrap() == data,
            "[{}] whole file differs",
            fl.name
        );

        let (off, len) = (12_345usize, 1_000_003usize);
        let rd = reader(client.try_clone().unwrap(), len);
        assert_eq!(
            send_all(p, dst, src, Some(off as u64), len as u64),
            len as u64
        );
        assert!(
            rd.join().unwrap() == data[off..off + len],
            "[{}] middle range differs",
            fl.name
        );

        // The file position: from 100, 70_000 bytes, then it stands at 70_100.
        file.seek(SeekFrom::Start(100)).unwrap();
        let rd = reader(client.try_clone().unwrap(), 70_000);
        assert_eq!(send_all(p, dst, src, None, 70_000), 70_000);
        assert!(rd.join().unwrap() == data[100..70_100], "[{}]", fl.name);
        assert_eq!(file.stream_position().unwrap(), 70_100, "[{}]", fl.name);

        // End of file: 10 bytes of 100 asked for, then 0.
        let mut stash = vec![];
        let rd = reader(client.try_clone().unwrap(), 10);
        p.sendfile(dst, src, Some(size as u64 - 10), 100, 1)
            .map_err(|r| r.error)
            .unwrap();
        assert_eq!(wait_for(p, 1, &mut stash).result, 10, "[{}]", fl.name);
        assert!(rd.join().unwrap() == data[size - 10..]);
        p.sendfile(dst, src, Some(size as u64), 100, 2)
            .map_err(|r| r.error)
            .unwrap();
        assert_eq!(wait_for(p, 2, &mut stash).result, 0, "[{}]", fl.name);
        p.sendfile(dst, src, Some(size as u64 + 4096), 100, 3)
            .map_err(|r| r.error)
            .unwrap();
        assert_eq!(wait_for(p, 3, &mut stash).result, 0, "[{}]", fl.name);
        // Length 0 never reaches a backend.
        assert!(p.sendfile(dst, src, Some(0), 0, 4).is_err());
    });
}

/// A peer that is gone: SENDFILE fails with EPIPE or ECONNRESET (after what fitted in
/// the buffers), it does not hang.
#[test]
fn sendfile_to_a_closed_peer_fails() {
    each_backend("sendfile_closed_peer", |fl, p| {
        let (file, _) = data_file("sendfile-closed", fl, 1 << 20);
        let src = p.register(&file).unwrap();
        let (dst, _server, client) = socket_pair(p);
        // Unread data at close makes the peer answer with a reset.
        (&client).write_all(b"x").unwrap();
        drop(client);
        let mut stash = vec![];
        let mut last = 0;
        for i in 0..64 {
            p.sendfile(dst, src, Some(0), 1 << 20, 10 + i)
                .map_err(|r| r.error)
                .unwrap();
            last = wait_for(p, 10 + i, &mut stash).result;
            if last < 0 {
                break;
            }
        }
        assert!(
            last == -libc::EPIPE || last == -libc::ECONNRESET,
            "[{}] sendfile to a closed peer: {last}",
            fl.name
        );
    });
}

/// Makes the socket `s` full: its peer never reads, so a SENDFILE to it must wait.
fn fill(s: &TcpStream) {
    // SAFETY: fcntl on a descriptor `s` holds.
    let flags = unsafe { libc::fcntl(s.as_raw_fd(), libc::F_GETFL) };
    s.set_nonblocking(true).unwrap();
    let chunk = [0u8; 65536];
    let mut w = s;
    loop {
        match w.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("fill: {e}"),
        }
    }
    // Back to the mode the backend gave it (the threads backend's is non-blocking).
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::fcntl(s.as_raw_fd(), libc::F_SETFL, flags) },
        0
    );
}

/// A SENDFILE that waits for a full socket is cancelled by ASYNC_CANCEL and by a CLOSE
/// of its destination slot: it completes with -ECANCELED (or, if the socket took some
/// bytes first, with their count), never hangs.
#[test]
fn sendfile_waiting_on_a_full_socket_is_cancellable() {
    each_backend("sendfile_cancel", |fl, p| {
        let (file, _) = data_file("sendfile-cancel", fl, 4 << 20);
        let src = p.register(&file).unwrap();
        let mut stash = vec![];
        for how in ["cancel", "close"] {
            let (dst, server, _client) = socket_pair(p);
            fill(&server);
            p.sendfile(dst, src, Some(0), 4 << 20, 1)
                .map_err(|r| r.error)
                .unwrap();
            p.submit().unwrap();
            let r = if how == "cancel" {
                p.cancel(1, 2).map_err(|r| r.error).unwrap();
                let c = wait_for(p, 2, &mut stash).result;
                assert!(c == 0 || c == -libc::ENOENT, "[{}] cancel: {c}", fl.name);
                let r = wait_for(p, 1, &mut stash).result;
                if c == -libc::ENOENT {
                    assert!(r > 0, "[{}] not found, yet {r}", fl.name);
                }
                p.close(dst, 3).map_err(|r| r.error).unwrap();
                assert_eq!(wait_for(p, 3, &mut stash).result, 0);
                r
            } else {
                p.close(dst, 3).map_err(|r| r.error).unwrap();
                let r = wait_for(p, 1, &mut stash).result;
                assert_eq!(wait_for(p, 3, &mut stash).result, 0, "[{}]", fl.name);
                r
            };
            assert!(
                r == -libc::ECANCELED || r > 0,
                "[{}] {how} of a waiting sendfile: {r}",
                fl.name
            );
            drop(server);
        }
    });
}
