//! Files: positional reads and writes through the rings.

use std::io;
use std::path::Path;
use std::sync::Arc;

use fastio_uapi::{OP_READ, OP_WRITE};

use super::net::OwnedSlot;
use super::pool::unblock;
use super::{IoBuf, IoBufMut};

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
    /// The file as opened, for `sync_all` (no FSYNC in the ABI yet).
    std: Arc<std::fs::File>,
}

impl File {
    /// Opens `path` read-only (`open(2)` on a helper thread: the ABI has no OPENAT yet).
    pub async fn open(path: impl AsRef<Path>) -> io::Result<File> {
        let path = path.as_ref().to_owned();
        Self::from_std(unblock(move || std::fs::File::open(path)).await?)
    }

    /// Creates (or truncates) `path` for reading and writing.
    pub async fn create(path: impl AsRef<Path>) -> io::Result<File> {
        let path = path.as_ref().to_owned();
        let f = unblock(move || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
        })
        .await?;
        Self::from_std(f)
    }

    /// Registers an open file.
    pub fn from_std(f: std::fs::File) -> io::Result<File> {
        Ok(File {
            io: OwnedSlot::register(&f)?,
            std: Arc::new(f),
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

    /// Flushes data and metadata to the device (`fsync(2)` on a helper thread).
    pub async fn sync_all(&self) -> io::Result<()> {
        let f = Arc::clone(&self.std);
        unblock(move || f.sync_all()).await
    }

    /// The file's metadata.
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        self.std.metadata()
    }

    /// Closes the slot and waits for it.
    pub async fn close(self) -> io::Result<()> {
        self.io.close().await
    }
}
