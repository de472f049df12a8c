//! `[limits]`: what a client may send and hold (sizes, timeouts, connections, HTTP/2 streams and
//! windows). `max_connections` is a number, or `"auto"` (the default), which sizes it from the
//! descriptor limit the cells inherit.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{Dur, Size};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest request target; longer gets 414.
    pub max_uri_length: Size,
    /// Request line + headers; larger gets 431.
    pub max_header_size: Size,
    /// Most header fields; more gets 431.
    pub max_headers: i64,
    /// Largest request body; larger gets 413.
    pub max_body_size: Size,
    /// Time to receive a complete request head; then 408 and close.
    pub header_timeout: Dur,
    /// Idle time allowed between requests on a keep-alive connection.
    pub keepalive_timeout: Dur,
    /// Open connections per cell; at the limit the cell stops accepting until one closes.
    pub max_connections: MaxConnections,
    /// Longest wait for a client to take more of a response (nginx's send_timeout); then close.
    pub send_timeout: Dur,
    /// HTTP/2: streams a client may have open at once (nginx's http2_max_concurrent_streams);
    /// more are refused with RST_STREAM(REFUSED_STREAM).
    pub http2_max_concurrent_streams: i64,
    /// HTTP/2: streams the client reset before the cell took them (rapid reset,
    /// CVE-2023-44487); past it the connection gets GOAWAY(ENHANCE_YOUR_CALM).
    pub http2_max_pending_accept_reset_streams: i64,
    /// HTTP/2: streams the cell itself had to reset for protocol errors, per connection; past
    /// it the connection gets GOAWAY(ENHANCE_YOUR_CALM).
    pub http2_max_local_error_reset_streams: i64,
    /// HTTP/2: request body bytes a client may send ahead of the app, per stream and per
    /// connection (the initial flow-control windows).
    pub http2_window_size: Size,
    /// HTTP/2: response bytes queued per stream before its body is asked for more.
    pub http2_max_send_buffer_size: Size,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_uri_length: Size(8192),
            max_header_size: Size(32 * 1024),
            max_headers: 100,
            max_body_size: Size(10 << 20),
            header_timeout: Dur(Duration::from_secs(30)),
            keepalive_timeout: Dur(Duration::from_secs(75)),
            max_connections: MaxConnections::Auto,
            send_timeout: Dur(Duration::from_secs(60)),
            http2_max_concurrent_streams: 128,
            http2_max_pending_accept_reset_streams: 20,
            http2_max_local_error_reset_streams: 1024,
            http2_window_size: Size(1 << 20),
            http2_max_send_buffer_size: Size(256 << 10),
        }
    }
}

impl LimitsConfig {
    /// SETTINGS_MAX_HEADER_LIST_SIZE: the request line's and the headers' limits together, so
    /// that the head checks answer 414 / 431 first; h2 refuses a larger list with 431 and
    /// closes a connection whose header block grows past four times it (CONTINUATION floods).
    pub fn http2_max_header_list_size(&self) -> u32 {
        (self.max_uri_length.0 + self.max_header_size.0).min(u64::from(u32::MAX)) as u32
    }

    /// The `http2_*` keys' ranges; `bad(key, why)` collects each problem.
    pub fn validate_http2(&self, bad: &mut impl FnMut(String, String)) {
        let counts = [
            (
                "http2_max_concurrent_streams",
                self.http2_max_concurrent_streams,
                1..=10_000,
            ),
            (
                "http2_max_pending_accept_reset_streams",
                self.http2_max_pending_accept_reset_streams,
                1..=100_000,
            ),
            (
                "http2_max_local_error_reset_streams",
                self.http2_max_local_error_reset_streams,
                1..=100_000,
            ),
        ];
        for (key, n, range) in counts {
            if !range.contains(&n) {
                let why = format!("{n} is out of range ({}..={})", range.start(), range.end());
                bad(format!("limits.{key}"), why);
            }
        }
        // RFC 9113 section 6.9.2: a window is at least the default 65535, below 2^31.
        if !(65_535..=(1 << 31) - 1).contains(&self.http2_window_size.0) {
            let why = "must be between 64k - 1 and 2G - 1".to_string();
            bad("limits.http2_window_size".into(), why);
        }
        if !(16 << 10..=64 << 20).contains(&self.http2_max_send_buffer_size.0) {
            let why = "must be between 16k and 64M".to_string();
            bad("limits.http2_max_send_buffer_size".into(), why);
        }
    }
}

/// Open connections per cell before it stops accepting (nginx's `worker_connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(untagged)]
pub enum MaxConnections {
    /// Half of RLIMIT_NOFILE: each connection may also hold an upstream socket or a file.
    #[default]
    #[serde(with = "auto_str")]
    Auto,
    Count(i64),
}

/// Descriptors a cell keeps for itself under `auto` (listeners, maps, logs, Python).
const AUTO_RESERVE: u64 = 64;

impl MaxConnections {
    /// The limit for a cell whose RLIMIT_NOFILE soft limit is `nofile` (validate() has
    /// checked a count).
    pub fn resolve(self, nofile: u64) -> usize {
        match self {
            MaxConnections::Auto => (nofile.saturating_sub(AUTO_RESERVE) / 2).max(1) as usize,
            MaxConnections::Count(n) => n.max(1) as usize,
        }
    }

    /// The largest count accepted (a cell's descriptors could not hold more anyway).
    pub const MAX: i64 = 1 << 24;
}

mod auto_str {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("auto")
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        let s = String::deserialize(d)?;
        if s == "auto" {
            Ok(())
        } else {
            Err(serde::de::Error::custom(format!(
                "expected \"auto\" or a number, got {s:?}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_half_the_descriptors_left() {
        assert_eq!(MaxConnections::Auto.resolve(1024), 480);
        assert_eq!(MaxConnections::Auto.resolve(10), 1);
        assert_eq!(MaxConnections::Count(3).resolve(1024), 3);
        #[derive(Deserialize)]
        struct T {
            m: MaxConnections,
        }
        let t: T = toml::from_str("m = \"auto\"").unwrap();
        assert_eq!(t.m, MaxConnections::Auto);
        let t: T = toml::from_str("m = 100").unwrap();
        assert_eq!(t.m, MaxConnections::Count(100));
        assert!(toml::from_str::<T>("m = \"lots\"").is_err());
    }

    #[test]
    fn http2_limits_have_ranges() {
        let mut problems = Vec::new();
        LimitsConfig::default().validate_http2(&mut |k, _| problems.push(k));
        assert!(problems.is_empty(), "{problems:?}");
        let l = LimitsConfig {
            http2_max_concurrent_streams: 0,
            http2_max_pending_accept_reset_streams: -1,
            http2_max_local_error_reset_streams: 0,
            http2_window_size: Size(1000),
            http2_max_send_buffer_size: Size(1 << 30),
            ..LimitsConfig::default()
        };
        l.validate_http2(&mut |k, _| problems.push(k));
        assert_eq!(
            problems,
            [
                "limits.http2_max_concurrent_streams",
                "limits.http2_max_pending_accept_reset_streams",
                "limits.http2_max_local_error_reset_streams",
                "limits.http2_window_size",
                "limits.http2_max_send_buffer_size",
            ]
        );
        assert_eq!(
            LimitsConfig::default().http2_max_header_list_size(),
            40 << 10
        );
    }
}
