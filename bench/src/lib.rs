//! Small helpers shared by the benchmark probes of `scripts/bench` (`nop_bench`,
//! `wake_probe`, `blockio_bench`).
//!
//! Every probe prints human-readable lines, then one machine-readable line
//! `RESULT {json}` (see [`ResultLine`]) that the harness parses.

pub mod blockio;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use fastio_echo::latency::LatencyHistogram;

/// Builds the `RESULT {...}` line: a flat JSON object of numbers and strings.
#[derive(Default, Debug, Clone)]
pub struct ResultLine {
    fields: Vec<(String, String)>,
}

impl ResultLine {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a number (non-finite values become `null`).
    pub fn num(mut self, key: &str, value: f64) -> Self {
        let v = if value.is_finite() {
            format!("{value}")
        } else {
            "null".to_owned()
        };
        self.fields.push((key.to_owned(), v));
        self
    }

    /// Adds a string (quotes, backslashes and control characters escaped).
    pub fn text(mut self, key: &str, value: &str) -> Self {
        let mut v = String::from("\"");
        for c in value.chars() {
            match c {
                '"' => v.push_str("\\\""),
                '\\' => v.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(v, "\\u{:04x}", c as u32);
                }
                c => v.push(c),
            }
        }
        v.push('"');
        self.fields.push((key.to_owned(), v));
        self
    }

    /// Adds the p50/p99/p99.9/mean of `hist` in microseconds, under `prefix_p50_us`...
    pub fn latency(self, prefix: &str, hist: &LatencyHistogram) -> Self {
        let us = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
        self.num(&format!("{prefix}p50_us"), us(hist.percentile(0.5)))
            .num(&format!("{prefix}p99_us"), us(hist.percentile(0.99)))
            .num(&format!("{prefix}p999_us"), us(hist.percentile(0.999)))
            .num(&format!("{prefix}mean_us"), us(hist.mean()))
    }
}

impl std::fmt::Display for ResultLine {
    /// `RESULT {"key": value, ...}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RESULT {")?;
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "\"{k}\": {v}")?;
        }
        f.write_str("}")
    }
}

/// The exit status of a probe: success, or the error printed as `name: error` and 1.
pub fn exit_status<E: std::fmt::Display>(name: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `secs` as a [`Duration`], if it is a positive, finite number of seconds.
pub fn duration(secs: f64, what: &str) -> Result<Duration, String> {
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "{what}: a positive number of seconds is needed, not {secs}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_is_json() {
        let mut h = LatencyHistogram::new();
        h.record(Duration::from_micros(10));
        let line = ResultLine::new()
            .text("backend", "a\"b")
            .num("ops", 2.5)
            .num("bad", f64::NAN)
            .latency("", &h)
            .to_string();
        assert!(line.starts_with(
            "RESULT {\"backend\": \"a\\\"b\", \"ops\": 2.5, \"bad\": null, \"p50_us\": "
        ));
        assert!(line.ends_with('}'));
    }

    #[test]
    fn secs() {
        assert_eq!(duration(0.5, "-t"), Ok(Duration::from_millis(500)));
        assert!(duration(0.0, "-t").is_err());
        assert!(duration(f64::NAN, "-t").is_err());
    }
}
