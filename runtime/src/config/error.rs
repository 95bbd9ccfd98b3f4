//! The error of reading or parsing a configuration, and the wording of its messages.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::Path;

use fastio_uapi::MAX_ENTRIES;

use super::Bounds;

/// A configuration that cannot be read or is invalid.
///
/// The message names the file, the 1-based line and the key, e.g.
/// `fastio.conf:3: max_ker_worker = 0: must be between 1 and 64`; syntax errors add the
/// column (`fastio.conf:2:1: TOML syntax error: ...`); a file that cannot be read gives
/// `cannot read /x/fastio.conf: No such file or directory`.
#[derive(Debug)]
pub struct ConfigError {
    pub(super) origin: Option<String>,
    pub(super) line: Option<usize>,
    pub(super) column: Option<usize>,
    pub(super) key: Option<String>,
    pub(super) message: String,
    pub(super) kind: ErrorKind,
}

#[derive(Debug)]
pub(super) enum ErrorKind {
    /// The file could not be read; the message is complete without origin and line.
    Read(io::Error),
    /// Not TOML; Display shows line and column.
    Syntax,
    /// A key or its value is wrong; Display shows the line.
    Invalid,
}

impl ConfigError {
    /// The file (the `origin` given to [`Config::parse`](super::Config::parse)) the error is in, if any.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// The 1-based line of the error, if it is about a place in a file.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The 1-based column (in characters) of the error: of the syntax error, the bad value
    /// or the unknown key.
    pub fn column(&self) -> Option<usize> {
        self.column
    }

    /// The key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Whether the error is that the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(&self.kind, ErrorKind::Read(e) if e.kind() == io::ErrorKind::NotFound)
    }

    pub(super) fn read(path: &Path, note: &str, err: io::Error) -> Self {
        ConfigError {
            origin: Some(path.display().to_string()),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read {}{note}: {}", path.display(), io_msg(&err)),
            kind: ErrorKind::Read(err),
        }
    }

    /// An error about a value that did not come from a file ([`Config::validate`](super::Config::validate)).
    pub(super) fn detached(key: &str, value: u32, msg: String) -> Self {
        ConfigError {
            origin: None,
            line: None,
            column: None,
            key: Some(key.to_owned()),
            message: format!("{key} = {value}: {msg}"),
            kind: ErrorKind::Invalid,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.origin, self.line) {
            (ErrorKind::Read(_), _, _) | (_, None, _) => {}
            (ErrorKind::Syntax, Some(origin), Some(line)) => match self.column {
                Some(col) => write!(f, "{origin}:{line}:{col}: ")?,
                None => write!(f, "{origin}:{line}: ")?,
            },
            (_, Some(origin), Some(line)) => write!(f, "{origin}:{line}: ")?,
            (_, Some(origin), None) => write!(f, "{origin}: ")?,
        }
        f.write_str(&self.message)
    }
}

impl StdError for ConfigError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            ErrorKind::Read(e) => Some(e),
            ErrorKind::Syntax | ErrorKind::Invalid => None,
        }
    }
}

/// An I/O error's text without std's ` (os error N)` suffix.
pub(super) fn io_msg(err: &io::Error) -> String {
    let text = err.to_string();
    match err.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .map_or_else(|| text.clone(), str::to_owned),
        None => text,
    }
}

pub(super) fn within(value: u32, (lo, hi): Bounds) -> bool {
    (lo..=hi).contains(&value)
}

pub(super) fn range_msg((lo, hi): Bounds) -> String {
    format!("must be between {lo} and {hi}")
}

pub(super) fn ring_msg() -> String {
    format!("must be a power of two between 1 and {MAX_ENTRIES}")
}
