//! Configuration: TOML file + command-line overrides, one `validate()` that reports every
//! problem at once (file, key, why) before anything is bound (exit status
//! `proto::EXIT_CONFIG`).
//!
//! `units` parses the value syntaxes (durations, sizes, CIDRs, listen addresses), `schema` is
//! the serde shape with its defaults, `load` reads a file keeping every good value, `overrides`
//! applies the command line, and `validate` checks the result; `paste` holds what is
//! specific to PasteDeploy apps, `asgi` the ASGI route table, `privilege` the cells' account and
//! the admin token, `limits` the `[limits]` table (the connection limit, HTTP/2's
//! streams and windows), `tls` the TLS listeners and their certificates.
pub mod asgi;
mod error;
mod limits;
mod load;
mod overrides;
pub mod paste;
mod privilege;
mod proxy;
mod schema;
pub mod tls;
mod units;
mod validate;

pub use asgi::{AsgiConfig, EventLoop, LifespanMode};
pub use error::ConfigErrors;
pub use limits::{LimitsConfig, MaxConnections};
pub use overrides::{Interface, Overrides};
pub use privilege::{Identity, read_admin_token};
pub use proxy::{Balance, HealthCheck, ProxyConfig, Redirect, Relay, UpstreamConfig};
pub use schema::{
    Config, DEFAULT_ADMIN, EbpfMode, LogFormat, Recycling, RouteConfig, StaticConfig,
    SteeringPolicy, WsgiConfig, XdpConfig, XdpMode,
};
pub use tls::{RedirectHttps, TlsConfig, UnknownName};
pub use units::ListenAddr;
