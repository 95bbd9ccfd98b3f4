//! The static file server of the `fileserver` example: HTTP/1.1 GET (and HEAD) of the
//! files under a root directory, keep-alive and pipelining, `Content-Length`.
//!
//! Two ways to send a file's bytes, chosen per server ([`Mode`]):
//! - [`Mode::Sendfile`]: SENDFILE requests (`TcpStream::sendfile_all`): the bytes never
//!   enter user space;
//! - [`Mode::Read`]: READ into a 256 KiB buffer, then SEND it, in turn.
//!
//! Paths: the request target's path (a query is ignored) must start with `/`; a `..` or
//! `.` segment, a backslash or a NUL byte gets 400, a missing file or a directory 404, a
//! method other than GET and HEAD 405 (with `Allow`). The file is opened by joining the
//! path to the root (`..` never gets through; a symlink inside the root is followed).

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use fastio::rt::{File, TcpStream};

#[path = "fileserver_epoll.rs"]
pub mod epoll;

/// How file bytes reach the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// SENDFILE (no copy through user space).
    Sendfile,
    /// READ into a buffer, then SEND.
    Read,
}

/// Largest request head accepted; longer ones get 431 and the connection is closed.
pub const MAX_HEAD: usize = 16 * 1024;
/// The READ buffer of [`Mode::Read`].
const READ_BUF: usize = 256 * 1024;

/// What to answer to one request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Serve the file at this path (below the root); `head`: headers only.
    File { path: PathBuf, head: bool },
    /// An error status with its reason.
    Status(u16, &'static str),
}

/// The answer to the request head `head` (without its final CRLF CRLF) for files under
/// `root`, and whether the connection stays open afterwards.
pub fn route(head: &[u8], root: &Path) -> (Route, bool) {
    let keep = keep_alive(head);
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (Route::Status(400, "Bad Request"), false);
    };
    if !version.starts_with(b"HTTP/1.") {
        return (Route::Status(400, "Bad Request"), false);
    }
    let head_only = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => return (Route::Status(405, "Method Not Allowed"), keep),
    };
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let Ok(path) = std::str::from_utf8(path) else {
        return (Route::Status(400, "Bad Request"), keep);
    };
    let Some(rel) = path.strip_prefix('/') else {
        return (Route::Status(400, "Bad Request"), keep);
    };
    let bad = rel.contains(['\\', '\0'])
        || rel.split('/').any(|s| s == ".." || s == ".")
        || rel.starts_with('/');
    if bad {
        return (Route::Status(400, "Bad Request"), keep);
    }
    (
        Route::File {
            path: root.join(rel),
            head: head_only,
        },
        keep,
    )
}

/// Whether the connection stays open after answering this request head.
pub fn keep_alive(head: &[u8]) -> bool {
    crate::http::keep_alive(head)
}

/// The head of a response with `status` and a body of `len` bytes.
pub fn response_head(status: u16, reason: &str, len: u64, keep: bool) -> Vec<u8> {
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {len}\r\n\
         Content-Type: application/octet-stream\r\n{allow}{}\r\n",
        if keep { "" } else { "Connection: close\r\n" }
    )
    .into_bytes()
}

/// The complete request heads at the start of `pending` (each without its CRLF CRLF),
/// removed from it; `None` when what is left is an over-long head.
pub fn take_heads(pending: &mut Vec<u8>) -> Option<Vec<Vec<u8>>> {
    let mut heads = Vec::new();
    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
        heads.push(pending[..end].to_vec());
        pending.drain(..end + 4);
    }
    if pending.len() > MAX_HEAD {
        return None;
    }
    Some(heads)
}

/// Answers the requests of one connection, in order, until it is to be closed.
pub async fn serve(conn: TcpStream, root: Rc<PathBuf>, mode: Mode) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = Vec::with_capacity(4096);
    let mut body = if mode == Mode::Read {
        Vec::with_capacity(READ_BUF)
    } else {
        Vec::new()
    };
    loop {
        let Some(heads) = take_heads(&mut pending) else {
            let msg = response_head(431, "Request Header Fields Too Large", 0, false);
            let (r, _) = conn.write_all(msg).await;
            return r;
        };
        for head in heads {
            let (route, keep) = route(&head, &root);
            body = answer(&conn, route, keep, mode, body).await?;
            if !keep {
                return Ok(());
            }
        }
        if !crate::http::read_more(&conn, &mut buf, &mut pending).await? {
            return Ok(());
        }
    }
}

/// Sends the answer of one request; gives the READ buffer back.
async fn answer(
    conn: &TcpStream,
    route: Route,
    keep: bool,
    mode: Mode,
    body: Vec<u8>,
) -> io::Result<Vec<u8>> {
    let (path, head_only) = match route {
        Route::File { path, head } => (path, head),
        Route::Status(code, reason) => {
            let (r, _) = conn.write_all(response_head(code, reason, 0, keep)).await;
            r?;
            return Ok(body);
        }
    };
    let file = match File::open(&path).await {
        Ok(f) => f,
        Err(_) => {
            let (r, _) = conn
                .write_all(response_head(404, "Not Found", 0, keep))
                .await;
            r?;
            return Ok(body);
        }
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        let (r, _) = conn
            .write_all(response_head(404, "Not Found", 0, keep))
            .await;
        r?;
        return Ok(body);
    }
    let len = meta.len();
    let (r, _) = conn.write_all(response_head(200, "OK", len, keep)).await;
    r?;
    if head_only {
        return Ok(body);
    }
    let sent_all = |n: u64| {
        if n == len {
            Ok(())
        } else {
            // The file shrank under us: the promised length cannot be kept.
            Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank"))
        }
    };
    match mode {
        Mode::Sendfile => {
            sent_all(conn.sendfile_all(&file, 0, len).await?)?;
            Ok(body)
        }
        Mode::Read => {
            let mut body = body;
            let mut off = 0u64;
            while off < len {
                body.clear();
                let (r, b) = file.read_at(body, off).await;
                body = b;
                let n = r?;
                if n == 0 {
                    break;
                }
                off += n as u64;
                let (r, b) = conn.write_all(body).await;
                body = b;
                r?;
            }
            sent_all(off)?;
            Ok(body)
        }
    }
}
