//! Starting processes: a cell with the descriptors and environment of `proto`, and the
//! throw-away `portico app-check` that imports the WSGI apps before anything is bound.
use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::Context as _;
use command_fds::{CommandFdExt, FdMapping};

use crate::config::Config;
use crate::proto::{FdLayout, env};

/// Imports the WSGI apps once in a throw-away child (`portico app-check`), its stderr (the
/// traceback) passed through. Ok(false): the import failed.
pub fn check_apps(cfg: &Config) -> anyhow::Result<bool> {
    let exe = std::env::current_exe().context("locating the portico executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("app-check")
        .env(env::CONFIG, serde_json::to_string(cfg)?)
        .stdin(std::process::Stdio::null());
    python_env(&mut cmd, cfg);
    let status = cmd.status().context("running the app import check")?;
    Ok(status.success())
}

/// Imports the command line's APP in a throw-away child (`portico app-check --detect`) and
/// tells whether it is ASGI; None: the import failed (the traceback passed through).
pub fn detect_interface(cfg: &Config) -> anyhow::Result<Option<bool>> {
    let exe = std::env::current_exe().context("locating the portico executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["app-check", "--detect"])
        .env(env::CONFIG, serde_json::to_string(cfg)?)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    python_env(&mut cmd, cfg);
    let out = cmd.output().context("running the app interface check")?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).trim() == "asgi"))
}

/// Interpreter settings that must be in the environment before Python starts.
fn python_env(cmd: &mut std::process::Command, cfg: &Config) {
    let o = cfg.python_optimize();
    if o > 0 {
        cmd.env("PYTHONOPTIMIZE", o.to_string());
    }
}

/// What one cell is started with.
#[derive(Debug)]
pub struct CellSpec<'a> {
    pub exe: &'a Path,
    pub cfg: &'a Config,
    pub cfg_json: &'a str,
    pub index: usize,
    pub cpu: usize,
    pub cells: usize,
    /// One listener per listen address, in configuration order (duplicates: the child's copies).
    pub listeners: Vec<OwnedFd>,
    pub metrics: OwnedFd,
    /// The write end of the control pipe.
    pub control: OwnedFd,
    pub load_map: Option<OwnedFd>,
    /// TUNNEL_SOCKS and TUNNEL_PEERS, when the master loaded the sockmap relay.
    pub tunnel_maps: Option<(OwnedFd, OwnedFd)>,
    /// The shared TLS session ticket keys, when a listener speaks TLS.
    pub tickets: Option<OwnedFd>,
}

/// Starts a cell process; the descriptors are placed where `proto::FdLayout` says.
pub fn cell(spec: CellSpec<'_>) -> anyhow::Result<tokio::process::Child> {
    let layout = FdLayout {
        listeners: spec.listeners.len(),
    };
    let mut mappings = Vec::with_capacity(layout.listeners + 3);
    for (i, fd) in spec.listeners.into_iter().enumerate() {
        mappings.push(FdMapping {
            parent_fd: fd,
            child_fd: layout.listener(i),
        });
    }
    mappings.push(FdMapping {
        parent_fd: spec.metrics,
        child_fd: layout.metrics(),
    });
    mappings.push(FdMapping {
        parent_fd: spec.control,
        child_fd: layout.control(),
    });
    let has_load = spec.load_map.is_some();
    if let Some(fd) = spec.load_map {
        mappings.push(FdMapping {
            parent_fd: fd,
            child_fd: layout.load_map(),
        });
    }
    let has_tunnel = spec.tunnel_maps.is_some();
    if let Some((socks, peers)) = spec.tunnel_maps {
        mappings.push(FdMapping {
            parent_fd: socks,
            child_fd: layout.tunnel_socks(),
        });
        mappings.push(FdMapping {
            parent_fd: peers,
            child_fd: layout.tunnel_peers(),
        });
    }
    let has_tickets = spec.tickets.is_some();
    if let Some(fd) = spec.tickets {
        mappings.push(FdMapping {
            parent_fd: fd,
            child_fd: layout.tickets(),
        });
    }
    let mut cmd = std::process::Command::new(spec.exe);
    cmd.arg("cell")
        .env(env::INDEX, spec.index.to_string())
        .env(env::CPU, spec.cpu.to_string())
        .env(env::CELLS, spec.cells.to_string())
        .env(env::CONFIG, spec.cfg_json)
        .stdin(std::process::Stdio::null());
    if has_load {
        cmd.env(env::LOAD_MAP, "1");
    }
    if has_tunnel {
        cmd.env(env::TUNNEL_MAPS, "1");
    }
    if has_tickets {
        cmd.env(env::TICKETS, "1");
    }
    python_env(&mut cmd, spec.cfg);
    cmd.fd_mappings(mappings)
        .map_err(|e| anyhow::anyhow!("fd mapping: {e}"))?;
    tokio::process::Command::from(cmd)
        .spawn()
        .context("spawning a cell")
}
