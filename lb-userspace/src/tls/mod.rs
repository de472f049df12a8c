//! TLS pieces both process roles use: the session ticket keys the master generates, rotates
//! and shares with every cell (`tickets`), and the rustls server configuration a cell builds for
//! each `[[tls]]` listener (`server_config`: certificates by SNI name, versions, ALPN).
pub mod server_config;
pub mod tickets;

pub use server_config::{ServerConfigs, server_config};
pub use tickets::{SharedTicketer, TicketKeys};
