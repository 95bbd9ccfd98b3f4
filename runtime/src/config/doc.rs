//! Walking the parsed TOML: the document with its name, one `key = value` with its
//! spans, and the typo suggestion for unknown keys.

use std::ops::Range;

use toml::de::DeValue;
use toml::Spanned;

use super::error::ErrorKind;
use super::*;

/// The text being parsed and its name.
pub(super) struct Doc<'a> {
    pub(super) text: &'a str,
    pub(super) origin: &'a str,
}

impl Doc<'_> {
    /// `offset` moved into the text and back onto a character boundary.
    pub(super) fn clamp(&self, offset: usize) -> usize {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        offset
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = self.clamp(offset);
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        (line, before[line_start..].chars().count() + 1)
    }

    /// The whole source line that holds byte `offset`, without its line break.
    pub(super) fn line_text(&self, offset: usize) -> &str {
        let offset = self.clamp(offset);
        let start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        self.text[start..end].trim_end_matches('\r')
    }

    pub(super) fn error(
        &self,
        span: Option<Range<usize>>,
        key: Option<&str>,
        kind: ErrorKind,
        message: String,
    ) -> ConfigError {
        let (line, column) = match span {
            Some(s) => {
                let (l, c) = self.position(s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ConfigError {
            origin: Some(self.origin.to_owned()),
            line,
            column,
            key: key.map(str::to_owned),
            message,
            kind,
        }
    }

    pub(super) fn syntax_error(&self, err: &toml::de::Error) -> ConfigError {
        let span = err.span();
        let mut key = None;
        let mut message = err.message().to_owned();
        if let Some(s) = span.clone() {
            // toml points a duplicate key's span at the key itself: name it.
            if message == "duplicate key" {
                if let Some(k) = self
                    .text
                    .get(s.clone())
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                {
                    message = format!("duplicate key `{k}`");
                    key = Some(k.trim_matches(|c| c == '"' || c == '\''));
                }
            }
            let line = self.line_text(s.start).trim();
            if !line.is_empty() {
                message = format!("{message}, in `{line}`");
            }
        }
        self.error(
            span,
            key,
            ErrorKind::Syntax,
            format!("TOML syntax error: {message}"),
        )
    }
}

/// One `key = value` of the document.
pub(super) struct Entry<'a> {
    pub(super) doc: &'a Doc<'a>,
    pub(super) name: &'a str,
    pub(super) key_span: Range<usize>,
    pub(super) value: &'a Spanned<DeValue<'a>>,
}

impl Entry<'_> {
    /// The value as written in the file.
    pub(super) fn raw(&self) -> &str {
        self.doc.text.get(self.value.span()).map_or("?", str::trim)
    }

    /// An error on this key's line; the column is the value's.
    pub(super) fn at_value(&self, message: String) -> ConfigError {
        let mut err = self.doc.error(
            Some(self.key_span.clone()),
            Some(self.name),
            ErrorKind::Invalid,
            message,
        );
        err.column = Some(self.doc.position(self.value.span().start).1);
        err
    }

    /// `key = value: msg`.
    pub(super) fn invalid(&self, msg: String) -> ConfigError {
        self.at_value(format!("{} = {}: {msg}", self.name, self.raw()))
    }

    /// `key: expected X, found Y`.
    pub(super) fn wrong_type(&self, expected: &str) -> ConfigError {
        let found = match self.value.get_ref() {
            DeValue::String(_) => "a string",
            DeValue::Integer(_) => "an integer",
            DeValue::Float(_) => "a float",
            DeValue::Boolean(_) => "a boolean",
            DeValue::Datetime(_) => "a date-time",
            DeValue::Array(_) => "an array",
            DeValue::Table(_) => "a table",
        };
        self.at_value(format!("{}: expected {expected}, found {found}", self.name))
    }

    pub(super) fn unknown_key(&self) -> ConfigError {
        let mut message = format!("unknown key `{}`", self.name);
        match suggest(self.name) {
            Some(known) => message.push_str(&format!(" (did you mean `{known}`?)")),
            None if matches!(self.value.get_ref(), DeValue::Table(_)) => message.push_str(
                " (fastio.conf has no tables or sections: write every key at the top level)",
            ),
            None => message.push_str(&format!(" (known keys: {})", KEYS.join(", "))),
        }
        self.doc.error(
            Some(self.key_span.clone()),
            Some(self.name),
            ErrorKind::Invalid,
            message,
        )
    }

    /// The value as a `u32`: `Ok(None)` for an integer outside `u32` (negative, or beyond
    /// it: such numbers are range errors, never wrapped); an error if not an integer.
    pub(super) fn uint(&self) -> Result<Option<u32>, ConfigError> {
        let DeValue::Integer(i) = self.value.get_ref() else {
            return Err(self.wrong_type("an integer"));
        };
        Ok(i128::from_str_radix(i.as_str(), i.radix())
            .ok()
            .and_then(|n| u32::try_from(n).ok()))
    }

    /// An integer within `bounds`.
    pub(super) fn int(&self, bounds: Bounds) -> Result<u32, ConfigError> {
        self.uint()?
            .filter(|&n| within(n, bounds))
            .ok_or_else(|| self.invalid(range_msg(bounds)))
    }

    /// A ring size: a power of two in `1..=MAX_ENTRIES`.
    pub(super) fn ring_size(&self) -> Result<u32, ConfigError> {
        self.uint()?
            .filter(|&n| fastio_uapi::valid_entries(n))
            .ok_or_else(|| self.invalid(ring_msg()))
    }

    /// A boolean, also written `0` or `1` (FastIO's style).
    pub(super) fn flag(&self) -> Result<bool, ConfigError> {
        const EXPECTED: &str = "0, 1, true or false";
        match self.value.get_ref() {
            DeValue::Boolean(b) => Ok(*b),
            DeValue::Integer(_) => match self.uint()? {
                Some(0) => Ok(false),
                Some(1) => Ok(true),
                _ => Err(self.invalid(format!("must be {EXPECTED}"))),
            },
            _ => Err(self.wrong_type(EXPECTED)),
        }
    }

    pub(super) fn inline_mode(&self) -> Result<InlineMode, ConfigError> {
        const EXPECTED: &str = "\"auto\", \"always\" or \"never\"";
        let DeValue::String(s) = self.value.get_ref() else {
            return Err(self.wrong_type(&format!("a string ({EXPECTED})")));
        };
        InlineMode::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| self.invalid(format!("must be {EXPECTED}")))
    }

    pub(super) fn backend(&self) -> Result<BackendKind, ConfigError> {
        let DeValue::String(s) = self.value.get_ref() else {
            return Err(self.wrong_type("a string (\"auto\", \"kmod\", \"uring\" or \"threads\")"));
        };
        s.parse().map_err(|_| {
            self.invalid("must be one of \"auto\", \"kmod\", \"uring\", \"threads\"".to_owned())
        })
    }
}

/// The known key closest to `name` by edit distance, if it is close enough to be a typo.
pub(super) fn suggest(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    KEYS.iter()
        .map(|&k| (edit_distance(&name, k), k))
        .filter(|&(d, k)| d <= 2.max(k.len() / 3))
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// Levenshtein distance in characters.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
