//! A minimal RESP client for the tests.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use super::CALL_TIMEOUT;

/// A RESP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+...`
    Status(String),
    /// `-...`
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n ...` (None: `$-1`)
    Bulk(Option<Vec<u8>>),
    /// `*n ...` (None: `*-1`)
    Array(Option<Vec<Reply>>),
}

/// A minimal RESP client with read and write timeouts.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects to 127.0.0.1:`port`.
    pub fn connect(port: u16) -> io::Result<Client> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(CALL_TIMEOUT))?;
        s.set_write_timeout(Some(CALL_TIMEOUT))?;
        s.set_nodelay(true)?;
        Ok(Client {
            reader: BufReader::with_capacity(1 << 16, s.try_clone()?),
            writer: s,
        })
    }

    /// The socket.
    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    /// Encodes a command.
    pub fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut v = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            v.extend_from_slice(a);
            v.extend_from_slice(b"\r\n");
        }
        v
    }

    /// Sends a command without reading the reply.
    pub fn send_cmd(&mut self, args: &[&str]) -> io::Result<()> {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        self.writer.write_all(&Client::encode(&a))
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, data: &[u8]) -> io::Result<()> {
        self.writer.write_all(data)
    }

    /// One command, one reply.
    pub fn cmd(&mut self, args: &[&str]) -> io::Result<Reply> {
        self.send_cmd(args)?;
        self.read_reply()
    }

    /// One binary-safe command, one reply.
    pub fn cmd_bin(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.writer.write_all(&Client::encode(args))?;
        self.read_reply()
    }

    /// Reads one reply.
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if line.len() < 3 || !line.ends_with(b"\r\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short reply line",
            ));
        }
        let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        let num = || {
            body.parse::<i64>().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad number {body:?}"))
            })
        };
        Ok(match line[0] {
            b'+' => Reply::Status(body.clone()),
            b'-' => Reply::Error(body.clone()),
            b':' => Reply::Int(num()?),
            b'$' => {
                let n = num()?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut v = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut v)?;
                    v.truncate(n as usize);
                    Reply::Bulk(Some(v))
                }
            }
            b'*' => {
                let n = num()?;
                if n < 0 {
                    Reply::Array(None)
                } else {
                    let mut items = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        items.push(self.read_reply()?);
                    }
                    Reply::Array(Some(items))
                }
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad reply type {:?}", other as char),
                ))
            }
        })
    }

    /// An integer reply of `args`.
    pub fn int(&mut self, args: &[&str]) -> i64 {
        match self.cmd(args).expect("command") {
            Reply::Int(n) => n,
            other => panic!("{args:?}: expected an integer, got {other:?}"),
        }
    }

    /// A bulk reply of `args` (None: nil).
    pub fn bulk(&mut self, args: &[&str]) -> Option<Vec<u8>> {
        match self.cmd(args).expect("command") {
            Reply::Bulk(v) => v,
            other => panic!("{args:?}: expected a bulk string, got {other:?}"),
        }
    }

    /// A field of INFO.
    pub fn info(&mut self, field: &str) -> String {
        let text = self.bulk(&["INFO"]).expect("INFO text");
        let text = String::from_utf8_lossy(&text).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("INFO has no {field}"))
            .trim()
            .to_string()
    }
}
