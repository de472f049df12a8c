//! `[limits] max_connections`: a number, or `"auto"` (the default), which sizes it from the
//! descriptor limit the cells inherit.
use serde::{Deserialize, Serialize};

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
}
