//! `cargo run --release -p fastio-examples --example copy -- SRC DST`
//!
//! Copies a file through the rings: the file is cut into 256 KiB chunks, and up to 8
//! chunks are in flight at once, each a task that reads its chunk (`read_at`) and writes
//! it at the same offset (`write_all_at`). DST is created or truncated and synced at the
//! end.

use std::rc::Rc;
use std::time::Instant;

use fastio::rt::{self, File, IoBuf, Runtime};

const CHUNK: u64 = 256 * 1024;
const IN_FLIGHT: usize = 8;

async fn copy_chunk(src: Rc<File>, dst: Rc<File>, pos: u64, len: u64) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(len as usize);
    let mut done = 0;
    // A read may come back short (it is a regular file, but be exact anyway).
    while done < len {
        buf.clear();
        let (r, b) = src
            .read_at(buf.slice(..(len - done) as usize), pos + done)
            .await;
        buf = b.into_inner();
        let n = r?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let (r, b) = dst.write_all_at(buf, pos + done).await;
        r?;
        buf = b;
        done += n as u64;
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(from), Some(to)) = (args.next(), args.next()) else {
        eprintln!("usage: copy SRC DST");
        std::process::exit(2);
    };
    let config = fastio_examples::config()?;
    let rt = Runtime::new(&config)?;
    let t0 = Instant::now();
    let size = rt.block_on(async {
        let src = Rc::new(File::open(&from).await?);
        let dst = Rc::new(File::create(&to).await?);
        let size = src.metadata()?.len();
        let mut chunks =
            (0..size.div_ceil(CHUNK)).map(|i| (i * CHUNK, CHUNK.min(size - i * CHUNK)));
        let mut running = std::collections::VecDeque::new();
        loop {
            while running.len() < IN_FLIGHT {
                let Some((pos, len)) = chunks.next() else {
                    break;
                };
                running.push_back(rt::spawn(copy_chunk(src.clone(), dst.clone(), pos, len)));
            }
            let Some(next) = running.pop_front() else {
                break;
            };
            next.await.map_err(std::io::Error::other)??;
        }
        dst.sync_all().await?;
        Ok::<_, std::io::Error>(size)
    })?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "copy: {size} bytes from {from} to {to} in {secs:.3} s ({:.1} MiB/s)",
        size as f64 / secs.max(1e-9) / (1 << 20) as f64
    );
    Ok(())
}
