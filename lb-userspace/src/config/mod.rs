//! Configuration: TOML file + command-line overrides, one `validate()` that reports every
//! problem at once (file, key, why) before anything is bound.
//!
//! `units` parses the value syntaxes (durations, sizes, CIDRs, listen addresses), `schema` is
//! the serde shape with its defaults, `load` reads a file keeping every good value, `overrides`
//! applies the command line, and `validate` checks the result.
use std::fmt;

mod load;
mod overrides;
mod schema;
mod units;
mod validate;

pub use overrides::Overrides;
pub use schema::{
    Config, DEFAULT_ADMIN, EbpfMode, LimitsConfig, LogFormat, RouteConfig, StaticConfig,
    SteeringPolicy, WsgiConfig, XdpConfig, XdpMode,
};
pub use units::ListenAddr;

/// Exit code for a configuration that does not validate (sysexits EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where it came from: the file path, or "command line".
    pub source: String,
    /// Dotted key, e.g. `route[1].static.root`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.source, self.key, self.message)
    }
}

/// Every problem found, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem{}):",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}
