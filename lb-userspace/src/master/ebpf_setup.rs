//! Loading the eBPF programs at startup, or falling back to plain SO_REUSEPORT with one
//! warning when privileges or the kernel do not allow them.
use std::os::fd::{AsFd as _, BorrowedFd};

use anyhow::bail;

use crate::config::{Config, EbpfMode, Relay};
use crate::ebpf::{EbpfError, PinDir, Steering, TunnelRelay, XdpGuard};
use crate::master::listeners::ListenerSet;

/// Loads steering (unless the policy is `kernel`) and the XDP guard (when configured). A
/// missing privilege or kernel feature falls back to plain SO_REUSEPORT with one warning
/// (an error with `mode = "on"`); another tool's XDP program on the interface is always an error.
pub fn setup_ebpf(
    cfg: &Config,
    listeners: &[ListenerSet],
    cpus: &[usize],
) -> anyhow::Result<(Option<Steering>, Option<XdpGuard>, Option<PinDir>)> {
    if cfg.ebpf.mode == EbpfMode::Off {
        tracing::info!("eBPF off ([ebpf] mode = \"off\"): plain SO_REUSEPORT");
        return Ok((None, None, None));
    }
    let policy = cfg.ebpf.steering.program_value();
    if policy.is_none() && cfg.ebpf.xdp.is_none() {
        tracing::info!("steering = \"kernel\": plain SO_REUSEPORT, no eBPF program");
        return Ok((None, None, None));
    }
    let groups: Vec<Vec<BorrowedFd<'_>>> = listeners
        .iter()
        .filter_map(|l| match l {
            ListenerSet::Tcp { per_cell, .. } => Some(per_cell.iter().map(|f| f.as_fd()).collect()),
            ListenerSet::Unix { .. } => None,
        })
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .filter_map(|l| match l {
            ListenerSet::Tcp { addr, .. } => Some(addr.port()),
            ListenerSet::Unix { .. } => None,
        })
        .collect();
    let instance = cfg
        .ebpf
        .instance
        .clone()
        .unwrap_or_else(|| match ports.first() {
            Some(p) => p.to_string(),
            None => format!("pid{}", std::process::id()),
        });
    let attempt = || -> Result<(Option<Steering>, Option<XdpGuard>, PinDir), EbpfError> {
        let pins = PinDir::create(&instance)?;
        let steering = match policy {
            Some(p) if !groups.is_empty() => Some(Steering::attach(&groups, cpus, p, &pins)?),
            _ => None,
        };
        let xdp = match &cfg.ebpf.xdp {
            Some(x) => {
                let mut g = XdpGuard::load(x, &ports, cpus, Some(&pins))?;
                g.attach(x)?;
                Some(g)
            }
            None => None,
        };
        Ok((steering, xdp, pins))
    };
    match attempt() {
        Ok((steering, xdp, pins)) => {
            if steering.is_some() {
                tracing::info!(
                    "eBPF steering attached (policy {}), maps pinned in {}",
                    cfg.ebpf.steering.label(),
                    pins.path().display()
                );
            }
            if let Some(x) = &xdp {
                tracing::info!(
                    "XDP guard attached to {} ({} mode)",
                    x.interface(),
                    x.mode()
                );
            }
            Ok((steering, xdp, Some(pins)))
        }
        Err(e) if e.is_conflict() => bail!("{e}"),
        Err(e) if cfg.ebpf.mode == EbpfMode::On => {
            bail!("eBPF required by [ebpf] mode = \"on\" but unavailable: {e}")
        }
        Err(e) => {
            let also = if cfg.ebpf.xdp.is_some() {
                " and no XDP guard"
            } else {
                ""
            };
            tracing::warn!("eBPF unavailable, serving with plain SO_REUSEPORT{also}: {e}");
            Ok((None, None, None))
        }
    }
}

/// Loads the sockmap relay when a route has `relay = "sockmap"`. Without privileges or kernel
/// support (or with `[ebpf] mode = "off"`), one warning: those tunnels are copied, and
/// `portico_tunnel_sockmap_available` says 0.
pub fn setup_tunnel_relay(cfg: &Config) -> Option<TunnelRelay> {
    let wanted = cfg
        .routes
        .iter()
        .filter_map(|r| r.proxy.as_ref())
        .any(|p| p.websocket && p.relay == Relay::Sockmap);
    if !wanted {
        return None;
    }
    if cfg.ebpf.mode == EbpfMode::Off {
        tracing::warn!(
            "relay = \"sockmap\" needs eBPF and [ebpf] mode = \"off\": those tunnels are copied"
        );
        return None;
    }
    match TunnelRelay::load() {
        Ok(t) => {
            tracing::info!("sockmap tunnel relay loaded (tunnel_relay sk_skb program)");
            Some(t)
        }
        Err(e) => {
            tracing::warn!("sockmap tunnel relay unavailable, those tunnels are copied: {e}");
            None
        }
    }
}
