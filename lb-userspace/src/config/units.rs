//! The value syntaxes of the configuration: durations, sizes, CIDR blocks and listen addresses.
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A listen address: TCP `host:port` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("{s:?} is not host:port (IP literal, e.g. 127.0.0.1:8080 or [::1]:8080) or unix:/path"))
    }
}

impl TryFrom<String> for ListenAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ListenAddr> for String {
    fn from(a: ListenAddr) -> String {
        a.to_string()
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The longest duration accepted: deadlines are `Instant::now() + d`, which panics on overflow,
/// so anything beyond any sensible timeout is refused here rather than at the first request.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86400);

/// A duration written as seconds (`30`, `0.5`) or with a unit (`500ms`, `30s`, `5m`, `2h`, `30d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DurationRepr", into = "DurationRepr")]
pub struct Dur(pub Duration);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum DurationRepr {
    Int(i64),
    Float(f64),
    Str(String),
}

impl TryFrom<DurationRepr> for Dur {
    type Error = String;
    fn try_from(r: DurationRepr) -> Result<Self, String> {
        match r {
            DurationRepr::Int(n) => match u64::try_from(n) {
                Ok(n) => within_max(Duration::from_secs(n), &n.to_string()).map(Dur),
                Err(_) => Err("a duration cannot be negative".into()),
            },
            DurationRepr::Float(f) => seconds(f, &format!("{f:?}")).map(Dur),
            DurationRepr::Str(s) => parse_duration(&s).map(Dur),
        }
    }
}

impl From<Dur> for DurationRepr {
    /// Whole milliseconds as `500ms`; anything finer as exact decimal seconds, so the cells
    /// (which get the configuration as JSON) see the very value the master validated.
    fn from(d: Dur) -> Self {
        let d = d.0;
        if d.subsec_nanos().is_multiple_of(1_000_000) {
            DurationRepr::Str(format!("{}ms", d.as_millis()))
        } else {
            DurationRepr::Str(format!("{}.{:09}s", d.as_secs(), d.subsec_nanos()))
        }
    }
}

/// A number of seconds as a duration: an error, not a panic, for negative, NaN, infinite or
/// absurdly large values. `what` is the value as the user wrote it.
fn seconds(f: f64, what: &str) -> Result<Duration, String> {
    if f.is_nan() {
        return Err(format!("{what} is not a number of seconds"));
    }
    if f == f64::INFINITY {
        return Err(format!("{what} is not a finite number of seconds"));
    }
    if f < 0.0 {
        return Err("a duration cannot be negative".into());
    }
    match Duration::try_from_secs_f64(f) {
        Ok(d) => within_max(d, what),
        Err(_) => Err(too_long(what)),
    }
}

fn within_max(d: Duration, what: &str) -> Result<Duration, String> {
    if d <= MAX_DURATION {
        Ok(d)
    } else {
        Err(too_long(what))
    }
}

fn too_long(what: &str) -> String {
    format!("{what} is too long (at most 100 years)")
}

/// Units a duration may use: kept to the documented ones (`M` would be months to humantime,
/// an easy slip for minutes or megabytes).
const DURATION_UNITS: [&str; 5] = ["ms", "s", "m", "h", "d"];

/// Parses `500ms`, `30s`, `5m`, `2h`, `30d` (also `1.5s`, `1h 30m`) or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let n: f64 = t
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 500ms, 5m, 2h, 30d)"))?;
        return seconds(n, &format!("{s:?}"));
    }
    if let Some(unit) = t
        .split(|c: char| !c.is_alphabetic())
        .find(|u| !u.is_empty() && !DURATION_UNITS.contains(u))
    {
        return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)"));
    }
    match humantime::parse_duration(t) {
        Ok(d) => within_max(d, &format!("{s:?}")),
        Err(humantime::DurationError::NumberOverflow) => Err(too_long(&format!("{s:?}"))),
        Err(_) => Err(format!(
            "{s:?} is not a duration (e.g. 30s, 500ms, 5m, 2h, 30d)"
        )),
    }
}

/// A size written as bytes (`1048576`) or with a unit (`64k`, `10M`, `1GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "SizeRepr")]
pub struct Size(pub u64);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Int(i64),
    Str(String),
}

impl TryFrom<SizeRepr> for Size {
    type Error = String;
    fn try_from(r: SizeRepr) -> Result<Self, String> {
        match r {
            SizeRepr::Int(n) if n >= 0 => Ok(Size(n as u64)),
            SizeRepr::Int(_) => Err("a size cannot be negative".into()),
            SizeRepr::Str(s) => parse_size(&s).map(Size),
        }
    }
}

impl From<Size> for SizeRepr {
    fn from(s: Size) -> Self {
        SizeRepr::Int(s.0 as i64)
    }
}

/// Parses `1024`, `64k`, `10M`, `1G` (also `KiB`, `MB`...: all binary multiples, as nginx).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 10M, 64k, 1048576)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (k, M, G)")),
    };
    // At most i64::MAX: TOML integers (and the JSON a cell reads) are signed.
    n.checked_mul(mult)
        .filter(|v| i64::try_from(*v).is_ok())
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses an address block (`10.0.0.0/8`, `fd00::/8`) or one address (`::1`, a full-length
/// block). The address goes through std's parser, as `wsgi_worker::Cidr` (what the cells and the
/// XDP guard build from the same strings) does, so whatever passes here also parses there.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
    let Some(len) = len else {
        return Ok(IpNet::from(addr));
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    len.parse::<u8>()
        .ok()
        .filter(|_| len.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|l| IpNet::new(addr, l).ok())
        .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3w").is_err());
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999G").is_err());
        // Fits u64 but not i64: a cell could not read it back (found by fuzzing config_load).
        assert!(parse_size("9999999999999912k").is_err());
        assert_eq!(parse_size(&i64::MAX.to_string()).unwrap(), i64::MAX as u64);
    }

    #[test]
    fn durations_accept_what_they_always_did() {
        for (text, want) in [
            ("30", Duration::from_secs(30)),
            ("0.5", Duration::from_millis(500)),
            (".5", Duration::from_millis(500)),
            ("5.", Duration::from_secs(5)),
            ("0", Duration::ZERO),
            ("500ms", Duration::from_millis(500)),
            ("1.5ms", Duration::from_micros(1500)),
            ("30s", Duration::from_secs(30)),
            (" 30 s ", Duration::from_secs(30)),
            ("0.5m", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("2h", Duration::from_secs(7200)),
            ("30d", Duration::from_secs(30 * 86400)),
            ("1h 30m", Duration::from_secs(5400)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
        for bad in [
            "",
            "s",
            "-5",
            "-5s",
            "1e3",
            "5M",
            "10 parsecs",
            "1.2.3",
            "30S",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Defect 2: these used to panic in `Duration::from_secs_f64`.
    #[test]
    fn huge_or_non_finite_durations_are_errors() {
        for bad in [
            "1e30s",
            "100000000000000000000000000000000",
            "100000000000000000000000000000000s",
            "99999999999999999999d",
            "36600000d",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad:?}");
        }
        assert!(
            parse_duration("36500d").is_ok(),
            "100 years is still allowed"
        );
        let de = |v: toml::Value| Dur::deserialize(v).map_err(|e| e.message().to_string());
        for (v, why) in [
            (toml::Value::Float(1e30), "too long"),
            (toml::Value::Float(f64::INFINITY), "finite"),
            (toml::Value::Float(f64::NEG_INFINITY), "negative"),
            (toml::Value::Float(f64::NAN), "not a number"),
            (toml::Value::Float(-0.5), "negative"),
            (toml::Value::Integer(-1), "negative"),
            (toml::Value::Integer(i64::MAX), "too long"),
            (toml::Value::String("1e30s".into()), "unit"),
            (
                toml::Value::String("9999999999999999999999s".into()),
                "too long",
            ),
        ] {
            let e = de(v.clone()).unwrap_err();
            assert!(e.contains(why), "{v:?}: {e}");
        }
        assert_eq!(
            de(toml::Value::Float(0.25)),
            Ok(Dur(Duration::from_millis(250)))
        );
    }

    #[test]
    fn durations_round_trip_exactly_through_json() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(1500),
            Duration::from_secs(30 * 86400),
            Duration::from_micros(1500),
            Duration::from_nanos(1),
            MAX_DURATION,
        ] {
            let json = serde_json::to_string(&Dur(d)).unwrap();
            let back: Dur = serde_json::from_str(&json).unwrap();
            assert_eq!(back.0, d, "{json}");
        }
        assert_eq!(
            serde_json::to_string(&Dur(Duration::from_secs(60))).unwrap(),
            "\"60000ms\""
        );
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.0.0.0/8").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert_eq!(parse_cidr("::1").unwrap().prefix_len(), 128);
        assert_eq!(parse_cidr("127.0.0.1").unwrap().prefix_len(), 32);
        assert_eq!(parse_cidr("fd00::/8").unwrap().prefix_len(), 8);
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().prefix_len(), 0);
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "010.0.0.0/8",
            "not an address",
            "",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad:?} accepted");
        }
        // Whatever passes here must also parse where the value is used.
        for ok in ["10.0.0.0/8", "::1", "127.0.0.1", "fd00::/8", "10.1.2.3/16"] {
            assert!(ok.parse::<wsgi_worker::Cidr>().is_ok(), "{ok}");
        }
        assert!(parse_cidr("10.0.0.0/33").unwrap_err().contains("0..=32"));
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "unix:/tmp/p.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix("/tmp/p.sock".into()))
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("localhost:80".parse::<ListenAddr>().is_err());
        let a: ListenAddr = "[::1]:8080".parse().unwrap();
        assert_eq!(a.to_string(), "[::1]:8080");
    }
}
