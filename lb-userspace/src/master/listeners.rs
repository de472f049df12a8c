//! The listening sockets, which the master owns so that no queued connection is lost when a
//! cell dies or is replaced: one SO_REUSEPORT socket per cell for each TCP address, one socket
//! shared by every cell for each Unix address.
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Config, ListenAddr};
use crate::master::state::MasterState;

/// Listening sockets for one listen address.
#[derive(Debug)]
pub enum ListenerSet {
    /// One SO_REUSEPORT socket per cell.
    Tcp {
        addr: SocketAddr,
        per_cell: Vec<OwnedFd>,
    },
    /// One socket shared by every cell.
    Unix { path: PathBuf, fd: OwnedFd },
}

/// A new listener for `cell` on `addr`, joining that address's reuseport group (and its
/// steering program); its duplicate replaces the cell's old one in the accept-queue readings.
pub fn cell_listener(
    state: &MasterState,
    addr: SocketAddr,
    cell: usize,
    opts: ListenOpts,
) -> std::io::Result<OwnedFd> {
    let fd = OwnedFd::from(tcp_listener(addr, opts)?);
    let name = addr.to_string();
    let mut dups = state.listeners.borrow_mut();
    dups.retain(|(a, c, _)| !(*c == cell && *a == name));
    dups.push((name, cell, fd.try_clone()?));
    Ok(fd)
}

pub fn listener_dups(listeners: &[ListenerSet]) -> Vec<(String, usize, OwnedFd)> {
    let mut out = Vec::new();
    for l in listeners {
        if let ListenerSet::Tcp { addr, per_cell } = l {
            for (cell, fd) in per_cell.iter().enumerate() {
                if let Ok(dup) = fd.try_clone() {
                    out.push((addr.to_string(), cell, dup));
                }
            }
        }
    }
    out
}

pub fn bind_all(cfg: &Config, cells: usize) -> anyhow::Result<Vec<ListenerSet>> {
    let opts = ListenOpts::of(cfg);
    let backlog = opts.backlog;
    let mut out = Vec::new();
    for addr in &cfg.server.listen {
        match addr {
            ListenAddr::Tcp(a) => {
                // Refuse a port someone else holds, even one who also set SO_REUSEPORT.
                if a.port() != 0 {
                    std::net::TcpListener::bind(a).with_context(|| format!("bind {a}"))?;
                }
                let mut per_cell = Vec::with_capacity(cells);
                let mut bound = *a;
                for _ in 0..cells {
                    let s = tcp_listener(bound, opts).with_context(|| format!("bind {bound}"))?;
                    if bound.port() == 0 {
                        bound = s.local_addr()?.as_socket().context("local address")?;
                    }
                    per_cell.push(OwnedFd::from(s));
                }
                out.push(ListenerSet::Tcp {
                    addr: bound,
                    per_cell,
                });
            }
            ListenAddr::Unix(path) => {
                if path.exists() {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        bail!(
                            "bind unix:{}: another server is listening there",
                            path.display()
                        );
                    }
                    std::fs::remove_file(path)
                        .with_context(|| format!("removing stale socket {}", path.display()))?;
                }
                let s = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
                s.bind(&socket2::SockAddr::unix(path)?)
                    .with_context(|| format!("bind unix:{}", path.display()))?;
                s.listen(backlog)?;
                out.push(ListenerSet::Unix {
                    path: path.clone(),
                    fd: OwnedFd::from(s),
                });
            }
        }
    }
    Ok(out)
}

/// How each TCP listener is set up (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct ListenOpts {
    pub backlog: i32,
    pub defer_accept: bool,
}

impl ListenOpts {
    pub fn of(cfg: &Config) -> Self {
        ListenOpts {
            backlog: i32::try_from(cfg.server.backlog).unwrap_or(i32::MAX),
            defer_accept: cfg.server.defer_accept,
        }
    }
}

/// How long a connection that sends nothing waits before it is accepted anyway (the kernel
/// rounds it to its SYN-ACK retransmissions, so about 1 to 3 s).
const DEFER_ACCEPT_SECS: u32 = 1;

fn tcp_listener(addr: SocketAddr, opts: ListenOpts) -> std::io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener: no setsockopt per connection.
    s.set_tcp_nodelay(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    if opts.defer_accept {
        use std::os::fd::AsFd as _;
        crate::sys::set_defer_accept(s.as_fd(), DEFER_ACCEPT_SECS)?;
    }
    s.listen(opts.backlog)?;
    Ok(s)
}

/// One line per listener once every cell serves: its scheme and bound address (port 0
/// resolved), and whether it redirects to https.
pub fn log_listening(cfg: &Config, listeners: &[ListenerSet], cells: usize) {
    for (configured, l) in cfg.server.listen.iter().zip(listeners) {
        match l {
            ListenerSet::Tcp { addr, .. } => {
                let tls = cfg.tls.iter().any(|t| &t.listen == configured);
                let redirect = cfg
                    .server
                    .redirect_https
                    .as_ref()
                    .is_some_and(|r| &r.listen == configured);
                let (scheme, note) = match (tls, redirect) {
                    (true, _) => ("https", ""),
                    (false, true) => ("http", ", redirecting to https"),
                    (false, false) => ("http", ""),
                };
                tracing::info!("listening on {scheme}://{addr} ({cells} cells{note})");
            }
            ListenerSet::Unix { path, .. } => {
                tracing::info!("listening on unix:{} ({cells} cells)", path.display());
            }
        }
    }
}
