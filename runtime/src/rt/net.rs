//! TCP over the rings: a listener that accepts into slots, and streams whose reads and
//! writes take owned buffers.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;

use fastio_uapi::{OP_RECV, OP_SEND};

use super::driver::Req;
use super::op::Op;
use super::{current, File, Inner, IoBuf, IoBufMut};
use crate::proactor::{BufGroup, ProvidedBuf, Slot};

/// A registered file slot owned by an I/O object: closed (CLOSE through the rings, which
/// cancels what still waits on it) when the object is dropped.
pub(crate) struct OwnedSlot {
    pub(crate) rt: Rc<Inner>,
    pub(crate) slot: Slot,
    closed: bool,
}

impl OwnedSlot {
    pub(crate) fn register(fd: &impl AsFd) -> io::Result<OwnedSlot> {
        let rt = current();
        let slot = rt.driver.borrow_mut().proactor_mut().register(fd)?;
        Ok(OwnedSlot::adopt(rt, slot))
    }

    pub(crate) fn adopt(rt: Rc<Inner>, slot: Slot) -> OwnedSlot {
        OwnedSlot {
            rt,
            slot,
            closed: false,
        }
    }

    /// CLOSE, awaited: completes after every other request on the slot.
    pub(crate) async fn close(mut self) -> io::Result<()> {
        self.closed = true;
        let (r, ()) = Op::new(&self.rt, Req::Close { slot: self.slot }, ()).await;
        r.io().map(drop)
    }

    /// A new descriptor of the slot's file.
    pub(crate) fn install_fd(&self) -> io::Result<OwnedFd> {
        self.rt
            .driver
            .borrow_mut()
            .proactor_mut()
            .install_fd(self.slot)
    }

    pub(crate) async fn transfer<B: IoBuf>(
        &self,
        opcode: u8,
        buf: B,
        from: usize,
        offset: Option<u64>,
    ) -> (io::Result<usize>, B) {
        let addr = buf.stable_ptr() as u64 + from as u64;
        let len = buf.bytes_init().saturating_sub(from);
        let req = Req::Io {
            opcode,
            slot: self.slot,
            addr,
            len: u32::try_from(len).unwrap_or(u32::MAX),
            offset,
        };
        let (r, buf) = Op::new(&self.rt, req, buf).await;
        (r.io(), buf)
    }

    pub(crate) async fn fill<B: IoBufMut>(
        &self,
        opcode: u8,
        mut buf: B,
        offset: Option<u64>,
    ) -> (io::Result<usize>, B) {
        let req = Req::Io {
            opcode,
            slot: self.slot,
            addr: buf.stable_mut_ptr() as u64,
            len: u32::try_from(buf.bytes_total()).unwrap_or(u32::MAX),
            offset,
        };
        let (r, mut buf) = Op::new(&self.rt, req, buf).await;
        if r.res > 0 {
            // SAFETY: the executor wrote `res` bytes from the start of the buffer.
            unsafe { buf.set_init(r.res as usize) };
        }
        (r.io(), buf)
    }
}

impl Drop for OwnedSlot {
    fn drop(&mut self) {
        if !self.closed {
            self.rt.driver.borrow_mut().close_detached(self.slot);
        }
    }
}

/// A listening socket in a slot. Every worker of a [`super::Pool`] may register the same
/// socket ([`TcpListener::from_std`]) and accept on it.
pub struct TcpListener {
    io: OwnedSlot,
    addr: SocketAddr,
}

impl TcpListener {
    /// Binds `addr` and listens (backlog 1024), in the current runtime.
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        let l = std::net::TcpListener::bind(addr)?;
        // SAFETY: listen(2) on a socket we own; on a listening socket only the backlog
        // changes.
        if unsafe { libc::listen(l.as_raw_fd(), 1024) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Self::from_std(&l)
    }

    /// Binds `addr` with `SO_REUSEPORT` and listens: every worker of a [`super::Pool`]
    /// binding the same address gets its own socket, and the kernel spreads incoming
    /// connections over them by hash. A listener shared by all workers
    /// ([`TcpListener::from_std`]) instead hands each connection to whichever ACCEPT
    /// waits first, which on io_uring is often the same worker every time.
    pub fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
        Self::from_std(&reuseport_listener(addr)?)
    }

    /// Registers a listening socket (the slot keeps its own reference: `l` may be
    /// dropped, or registered in other runtimes too).
    pub fn from_std(l: &std::net::TcpListener) -> io::Result<TcpListener> {
        Ok(TcpListener {
            addr: l.local_addr()?,
            io: OwnedSlot::register(l)?,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    /// Accepts a connection (ACCEPT into a new slot).
    pub async fn accept(&self) -> io::Result<TcpStream> {
        let (r, ()) = Op::new(
            &self.io.rt,
            Req::Accept {
                listener: self.io.slot,
            },
            (),
        )
        .await;
        r.io()?;
        let slot = r
            .accepted
            .ok_or_else(|| io::Error::other("ACCEPT without a slot"))?;
        Ok(TcpStream::adopt(OwnedSlot::adopt(
            Rc::clone(&self.io.rt),
            slot,
        )))
    }
}

/// A TCP connection in a slot.
pub struct TcpStream {
    io: OwnedSlot,
}

impl TcpStream {
    fn adopt(io: OwnedSlot) -> TcpStream {
        TcpStream { io }
    }

    /// Connects to `addr`: a new socket in a slot, then CONNECT (waits while the
    /// connection is in progress; cancelled if the future is dropped).
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let sock = stream_socket(addr)?;
        let io = OwnedSlot::register(&sock)?;
        drop(sock);
        let req = Req::Connect {
            slot: io.slot,
            addr,
        };
        let (r, ()) = Op::new(&io.rt, req, ()).await;
        r.io()?;
        Ok(Self::adopt(io))
    }

    /// Registers a connected socket (the slot keeps its own reference).
    pub fn from_std(s: std::net::TcpStream) -> io::Result<TcpStream> {
        Ok(Self::adopt(OwnedSlot::register(&s)?))
    }

    /// Receives into `buf` from its start, up to [`IoBuf::bytes_total`] bytes (a
    /// `Vec`'s capacity; its length then covers what was read). `Ok(0)`: end of stream
    /// (or an empty buffer).
    pub async fn read<B: IoBufMut>(&self, buf: B) -> (io::Result<usize>, B) {
        self.io.fill(OP_RECV, buf, None).await
    }

    /// Receives into a buffer of `group` (registered on this runtime with
    /// [`super::register_buffers`]): the connection holds no buffer while it waits, so
    /// many idle connections share a few buffers. `Ok(Some(buf))`: the bytes received
    /// (drop the buffer to give it back to the group); `Ok(None)`: end of stream; an
    /// error with raw OS error `ENOBUFS`: every buffer of the group is held (nothing was
    /// received; drop some and call again).
    pub async fn recv_provided(&self, group: BufGroup) -> io::Result<Option<ProvidedBuf>> {
        let req = Req::RecvProvided {
            slot: self.io.slot,
            group,
        };
        let (r, ()) = Op::new(&self.io.rt, req, ()).await;
        match r.io()? {
            0 => Ok(None),
            n => r.provided.map(Some).ok_or_else(|| {
                io::Error::other(format!(
                    "a RECV of {n} bytes into a group came without its buffer"
                ))
            }),
        }
    }

    /// Sends the initialised bytes of `buf` ([`IoBuf::bytes_init`]); may be short.
    pub async fn write<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
        self.io.transfer(OP_SEND, buf, 0, None).await
    }

    /// Sends all of `buf`'s initialised bytes (several SENDs if they come back short).
    pub async fn write_all<B: IoBuf>(&self, mut buf: B) -> (io::Result<()>, B) {
        let total = buf.bytes_init();
        let mut done = 0;
        while done < total {
            let (r, b) = self.io.transfer(OP_SEND, buf, done, None).await;
            buf = b;
            match r {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Sends up to `len` bytes of `file` from `offset` (`None`: its file position, which
    /// advances) without copying them through user space (SENDFILE). May be short, like
    /// `sendfile(2)`; `Ok(0)`: end of file. `len` 0 is refused (`InvalidInput`).
    pub async fn sendfile(&self, file: &File, offset: Option<u64>, len: u32) -> io::Result<usize> {
        if len == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let req = Req::Sendfile {
            slot: self.io.slot,
            src: file.slot(),
            offset,
            len,
        };
        let (r, ()) = Op::new(&self.io.rt, req, ()).await;
        r.io()
    }

    /// Sends `len` bytes of `file` from `offset` with as many SENDFILEs as it takes;
    /// returns how many were sent (fewer only when the file ends first).
    pub async fn sendfile_all(&self, file: &File, offset: u64, len: u64) -> io::Result<u64> {
        let mut done = 0u64;
        while done < len {
            let chunk = (len - done).min(fastio_uapi::MAX_RW_LEN as u64) as u32;
            match self.sendfile(file, Some(offset + done), chunk).await {
                Ok(0) => break,
                Ok(n) => done += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Shuts down the read, write or both halves (SHUTDOWN).
    pub async fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let req = Req::Shutdown {
            slot: self.io.slot,
            how,
        };
        let (r, ()) = Op::new(&self.io.rt, req, ()).await;
        r.io().map(drop)
    }

    /// Closes the connection and waits for it: requests still waiting on it complete
    /// with `-ECANCELED` first. Dropping the stream closes it too, without waiting.
    pub async fn close(self) -> io::Result<()> {
        self.io.close().await
    }
}

/// A listening socket on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT` (backlog 1024).
/// A new TCP socket (close-on-exec) of `addr`'s family.
fn stream_socket(addr: SocketAddr) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscall; the result is checked and then owned.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let sock = stream_socket(addr)?;
    let one: libc::c_int = 1;
    for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        // SAFETY: setsockopt with a valid int option on our socket.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: sockaddr_storage is plain data; the address written into it matches the
    // family and the length passed to bind.
    let r = unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin =
                    &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 =
                    &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_scope_id = a.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        libc::bind(
            sock.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on our bound socket.
    if unsafe { libc::listen(sock.as_raw_fd(), 1024) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::net::TcpListener::from(sock))
}
