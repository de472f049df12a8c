//! Userspace of the eBPF programs built from `lb-ebpf`: the `steering` and `xdp_guard` loaders
//! (the master's), `cell_load` (the cells' side of the steering program's CELL_LOAD map),
//! `tunnel_relay` (the sockmap relay: the master's loader and the cells' map handles), and
//! what the loaders share in `loader` (objects, errors, the pin directory
//! `/sys/fs/bpf/portico/<instance>` where operators read the maps with bpftool).
pub mod cell_load;
mod loader;
pub mod steering;
pub mod tunnel_relay;
pub mod xdp_guard;

pub use loader::{EbpfError, PinDir};
pub use steering::Steering;
pub use tunnel_relay::{TunnelMaps, TunnelRelay};
pub use xdp_guard::XdpGuard;
