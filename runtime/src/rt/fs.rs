//! Files: opened, read, written, synced and allocated through the rings.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use fastio_uapi::{OP_READ, OP_WRITE};

use super::driver::Req;
use super::net::OwnedSlot;
use super::op::Op;
use super::{current, IoBuf, IoBufMut};

/// A file in a slot. Reads and writes name their offset (`read_at`, `write_at`), so
/// several may be in flight at once.
///
/// ```
/// # use fastio::{rt::{self, File}, BackendKind, Config};
/// # let rt = rt::Runtime::new(&Config { backend: BackendKind::Threads, ..Config::default() }).unwrap();
/// # let dir = std::env::temp_dir().join(format!("fastio-doc-{}", std::process::id()));
/// rt.block_on(async {
///     let f = File::create(&dir).await?;
///     let (r, _) = f.write_all_at(b"hello".to_vec(), 0).await;
///     r?;
///     let (n, buf) = f.read_at(Vec::with_capacity(16), 1).await;
///     assert_eq!(&buf[..n?], b"ello");
///     f.sync_all().await?;
///     # std::fs::remove_file(&dir)?;
///     Ok::<_, std::io::Error>(())
/// }).unwrap();
/// ```
pub struct File {
    io: OwnedSlot,
}

impl File {
    /// The file's slot (for requests on another object, such as SENDFILE).
    pub(crate) fn slot(&self) -> crate::proactor::Slot {
        self.io.slot
    }

    /// Opens `path` read-only (OPENAT into a slot; the module runs it on a helper
    /// thread, never on a polling lane).
    pub async fn open(path: impl AsRef<Path>) -> io::Result<File> {
        Self::open_with(path, libc::O_RDONLY, 0).await
    }

    /// Creates (or truncates) `path` for reading and writing (mode 0o666 before the
    /// umask).
    pub async fn create(path: impl AsRef<Path>) -> io::Result<File> {
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC;
        Self::open_with(path, flags, 0o666).await
    }

    /// Opens `path` with `open(2)` `flags` (`O_PATH` is refused) and `mode`, relative to
    /// the current directory.
    pub async fn open_with(path: impl AsRef<Path>, flags: i32, mode: u32) -> io::Result<File> {
        let path = CString::new(path.as_ref().as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let rt = current();
        let req = Req::OpenAt {
            dir: None,
            path: path.as_ptr() as u64,
            flags,
            mode,
        };
        let (r, _path) = Op::new(&rt, req, path).await;
        r.io()?;
        let slot = r
            .accepted
            .ok_or_else(|| io::Error::other("OPENAT without a slot"))?;
        Ok(File {
            io: OwnedSlot::adopt(rt, slot),
        })
    }

    /// Registers an open file (the slot keeps its own reference).
    pub fn from_std(f: std::fs::File) -> io::Result<File> {
        Ok(File {
            io: OwnedSlot::register(&f)?,
        })
    }

    /// Reads into `buf` from its start (up to [`IoBuf::bytes_total`]) at `pos`.
    pub async fn read_at<B: IoBufMut>(&self, buf: B, pos: u64) -> (io::Result<usize>, B) {
        self.io.fill(OP_READ, buf, Some(pos)).await
    }

    /// Writes `buf`'s initialised bytes at `pos`; may be short.
    pub async fn write_at<B: IoBuf>(&self, buf: B, pos: u64) -> (io::Result<usize>, B) {
        self.io.transfer(OP_WRITE, buf, 0, Some(pos)).await
    }

    /// Writes all of `buf`'s initialised bytes at `pos`.
    pub async fn write_all_at<B: IoBuf>(&self, mut buf: B, pos: u64) -> (io::Result<()>, B) {
        let total = buf.bytes_init();
        let mut done = 0;
        while done < total {
            let (r, b) = self
                .io
                .transfer(OP_WRITE, buf, done, Some(pos + done as u64))
                .await;
            buf = b;
            match r {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Flushes data and metadata to the device (FSYNC).
    pub async fn sync_all(&self) -> io::Result<()> {
        self.simple(Req::Fsync {
            slot: self.io.slot,
            datasync: false,
        })
        .await
    }

    /// Flushes the data, and the metadata needed to read it back (FSYNC with
    /// `FSYNC_DATASYNC`: `fdatasync`).
    pub async fn sync_data(&self) -> io::Result<()> {
        self.simple(Req::Fsync {
            slot: self.io.slot,
            datasync: true,
        })
        .await
    }

    /// Allocates `len` bytes at `offset` (FALLOCATE, mode 0): the file grows to at
    /// least `offset + len` bytes, backed by storage.
    pub async fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(0, offset, len).await
    }

    /// Deallocates `len` bytes at `offset`, keeping the size (FALLOCATE with
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`: a trim); the range reads as zeros.
    pub async fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
        self.fallocate(mode, offset, len).await
    }

    /// FALLOCATE with `FALLOC_FL_*` `mode`.
    pub async fn fallocate(&self, mode: u32, offset: u64, len: u64) -> io::Result<()> {
        self.simple(Req::Fallocate {
            slot: self.io.slot,
            mode,
            offset,
            len,
        })
        .await
    }

    async fn simple(&self, req: Req) -> io::Result<()> {
        let (r, ()) = Op::new(&self.io.rt, req, ()).await;
        r.io().map(drop)
    }

    /// The file's metadata (`fstat` of a descriptor of the slot).
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        std::fs::File::from(self.io.install_fd()?).metadata()
    }

    /// Closes the slot and waits for it.
    pub async fn close(self) -> io::Result<()> {
        self.io.close().await
    }
}
