//! Portico's code as a library: `main.rs` (the `portico` command line) calls the entry points
//! re-exported here, and `fuzz/` reaches the parsers through `fuzzing`.
#![deny(unsafe_code)]

mod block_client;
mod cell;
mod config;
mod ebpf;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod master;
mod metrics;
mod privilege;
mod proto;
#[expect(unsafe_code, reason = "the one module that wraps syscalls")]
mod sys;
mod tls;

pub use block_client::{BlockOp, Target as BlockTarget, run as block};
pub use cell::{app_check, run as run_cell};
pub use config::{Config, ConfigErrors, Interface, Overrides, SteeringPolicy};
pub use ebpf::xdp_guard::fixtures as xdp_fixtures;
pub use master::{check_apps, run as serve};
pub use proto::{EXIT_APP, EXIT_CONFIG};

/// Error log through `tracing`, to stderr; `RUST_LOG` wins over the configured level.
pub fn init_logging(level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .unwrap_or_else(|| level.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
