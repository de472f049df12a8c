//! Access log: one line per request, nginx `combined` or JSON, buffered per cell and flushed
//! every second (and at exit), like nginx's `access_log ... buffer=64k flush=1s`.
use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::Write;
use std::time::SystemTime;

use crate::config::LogFormat;

const FLUSH_AT: usize = 64 * 1024;

/// What one line says.
pub struct Entry<'a> {
    pub remote: &'a str,
    pub method: &'a str,
    pub target: &'a str,
    pub version: &'a str,
    pub status: u16,
    pub body_bytes: u64,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub duration_s: f64,
}

pub struct AccessLog {
    format: LogFormat,
    inner: Option<RefCell<Sink>>,
}

struct Sink {
    buf: Vec<u8>,
    out: Box<dyn Write>,
    /// (unix second, formatted time) so the clock is formatted once a second.
    clock: (u64, String, String),
}

impl AccessLog {
    /// `"-"` = stdout, `"off"` = nothing, else a file opened for append.
    pub fn open(target: &str, format: LogFormat) -> std::io::Result<Self> {
        let out: Box<dyn Write> = match target {
            "off" => {
                return Ok(Self {
                    format,
                    inner: None,
                });
            }
            "-" => Box::new(std::io::stdout()),
            path => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        Ok(Self {
            format,
            inner: Some(RefCell::new(Sink {
                buf: Vec::with_capacity(FLUSH_AT),
                out,
                clock: (0, String::new(), String::new()),
            })),
        })
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub fn log(&self, e: &Entry<'_>) {
        let Some(sink) = &self.inner else { return };
        let mut s = sink.borrow_mut();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if s.clock.0 != now {
            s.clock = (now, combined_time(now), iso_time(now));
        }
        let Sink { buf, clock, .. } = &mut *s;
        match self.format {
            LogFormat::Combined => {
                let _ = writeln!(
                    buf,
                    "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\"",
                    e.remote,
                    clock.1,
                    e.method,
                    escape(e.target),
                    e.version,
                    e.status,
                    e.body_bytes,
                    escape(e.referer.unwrap_or("-")),
                    escape(e.user_agent.unwrap_or("-")),
                );
            }
            LogFormat::Json => {
                let line = serde_json::json!({
                    "time": clock.2,
                    "remote_addr": e.remote,
                    "method": e.method,
                    "uri": e.target,
                    "protocol": e.version,
                    "status": e.status,
                    "body_bytes_sent": e.body_bytes,
                    "referer": e.referer,
                    "user_agent": e.user_agent,
                    "request_time": (e.duration_s * 1e6).round() / 1e6,
                });
                let _ = serde_json::to_writer(&mut *buf, &line);
                buf.push(b'\n');
            }
        }
        if s.buf.len() >= FLUSH_AT {
            s.flush();
        }
    }

    pub fn flush(&self) {
        if let Some(sink) = &self.inner {
            sink.borrow_mut().flush();
        }
    }
}

impl Sink {
    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Err(e) = self.out.write_all(&self.buf).and_then(|_| self.out.flush()) {
            tracing::warn!("access log write failed: {e}");
        }
        self.buf.clear();
    }
}

/// Escapes quotes, backslashes and control bytes the way nginx does (`\xHH`).
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f)
    {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn combined_time(secs: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
    );
    t.format(&fmt).unwrap_or_default()
}

fn iso_time(secs: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_line_matches_nginx_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let log = AccessLog::open(path.to_str().unwrap(), LogFormat::Combined).unwrap();
        log.log(&Entry {
            remote: "127.0.0.1",
            method: "GET",
            target: "/a\"b",
            version: "HTTP/1.1",
            status: 200,
            body_bytes: 12,
            referer: None,
            user_agent: Some("curl/8"),
            duration_s: 0.001,
        });
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("127.0.0.1 - - ["), "{text}");
        assert!(
            text.contains(" +0000] \"GET /a\\x22b HTTP/1.1\" 200 12 \"-\" \"curl/8\"\n"),
            "{text}"
        );
        assert_eq!(combined_time(0), "01/Jan/1970:00:00:00 +0000");
    }

    #[test]
    fn json_line_is_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let log = AccessLog::open(path.to_str().unwrap(), LogFormat::Json).unwrap();
        log.log(&Entry {
            remote: "::1",
            method: "HEAD",
            target: "/",
            version: "HTTP/1.0",
            status: 304,
            body_bytes: 0,
            referer: Some("http://x/"),
            user_agent: None,
            duration_s: 0.5,
        });
        log.flush();
        let v: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(v["status"], 304);
        assert_eq!(v["method"], "HEAD");
        assert_eq!(v["referer"], "http://x/");
        assert!(v["user_agent"].is_null());
    }
}
