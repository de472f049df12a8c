//! Least privilege for the processes that run the app: a cell (and the master's app import
//! check) switches to `[server] user` / `group`, gives up every capability and sets
//! no_new_privs before Python is imported. The master keeps its own (eBPF, binding, admin).
use rustix::thread::{CapabilitySet, CapabilitySets};

use crate::config::{Config, Identity};
use crate::sys::SysError;

/// What the process runs as after the drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub uid: u32,
    pub gid: u32,
    /// Capabilities left in the bounding set because dropping them needs CAP_SETPCAP (an
    /// unprivileged start with ambient capabilities): harmless under no_new_privs.
    pub bounding_kept: u32,
}

fn sys_err(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> SysError {
    move |e| SysError {
        op,
        source: e.into(),
    }
}

fn nix_err(op: &'static str) -> impl FnOnce(nix::errno::Errno) -> SysError {
    move |e| SysError {
        op,
        source: std::io::Error::from_raw_os_error(e as i32),
    }
}

/// The account of `[server] user`, looked up again (the master checked it exists).
pub fn identity(cfg: &Config) -> Result<Option<Identity>, SysError> {
    cfg.server.identity().map_err(|e| SysError {
        op: "getpwnam/getgrnam([server] user, group)",
        source: std::io::Error::new(std::io::ErrorKind::NotFound, e.message),
    })
}

/// Switches to `identity` (when given), then empties every capability set (bounding where
/// CAP_SETPCAP allows it, ambient, inheritable, permitted, effective) and sets
/// PR_SET_NO_NEW_PRIVS. Credentials and capabilities are per thread in the kernel, so the
/// process must still be single-threaded; that is checked.
pub fn drop_privileges(identity: Option<&Identity>) -> Result<Dropped, SysError> {
    single_threaded()?;
    let caps = rustix::thread::capabilities(None).map_err(sys_err("capget"))?;
    let bounding_kept = clear_bounding_set(caps.effective.contains(CapabilitySet::SETPCAP))?;
    if let Some(id) = identity {
        switch_user(id, caps.effective.contains(CapabilitySet::SETGID))?;
    }
    rustix::thread::clear_ambient_capability_set()
        .map_err(sys_err("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"))?;
    let none = CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    )
    .map_err(sys_err("capset(all empty)"))?;
    rustix::thread::set_no_new_privs(true).map_err(sys_err("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    let left = rustix::thread::capabilities(None).map_err(sys_err("capget"))?;
    if !(left.effective | left.permitted | left.inheritable).is_empty() {
        return Err(SysError {
            op: "capset(all empty)",
            source: std::io::Error::other(format!("capabilities left: {left:?}")),
        });
    }
    Ok(Dropped {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        bounding_kept,
    })
}

/// setgroups([gid]) (when allowed: an unprivileged start already runs as the user),
/// setresgid and setresuid to the account, and a check that no saved id stayed behind.
fn switch_user(id: &Identity, may_setgroups: bool) -> Result<(), SysError> {
    use nix::unistd::{Gid, Uid};
    let (uid, gid) = (Uid::from_raw(id.uid), Gid::from_raw(id.gid));
    if may_setgroups {
        nix::unistd::setgroups(&[gid]).map_err(nix_err("setgroups"))?;
    }
    let g = nix::unistd::getresgid().map_err(nix_err("getresgid"))?;
    if (g.real, g.effective, g.saved) != (gid, gid, gid) {
        nix::unistd::setresgid(gid, gid, gid).map_err(nix_err("setresgid"))?;
    }
    let u = nix::unistd::getresuid().map_err(nix_err("getresuid"))?;
    if (u.real, u.effective, u.saved) != (uid, uid, uid) {
        nix::unistd::setresuid(uid, uid, uid).map_err(nix_err("setresuid"))?;
    }
    let (u, g) = (
        nix::unistd::getresuid().map_err(nix_err("getresuid"))?,
        nix::unistd::getresgid().map_err(nix_err("getresgid"))?,
    );
    if (u.real, u.effective, u.saved, g.real, g.effective, g.saved)
        != (uid, uid, uid, gid, gid, gid)
    {
        return Err(SysError {
            op: "setresuid/setresgid",
            source: std::io::Error::other(format!("still {u:?} {g:?} after switching to {id}")),
        });
    }
    Ok(())
}

/// Drops every capability of the bounding set when `allowed` (CAP_SETPCAP); returns how
/// many stay in it.
fn clear_bounding_set(allowed: bool) -> Result<u32, SysError> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
        .min(63);
    let mut kept = 0;
    for bit in 0..=last {
        let cap = CapabilitySet::from_bits_retain(1u64 << bit);
        if !rustix::thread::capability_is_in_bounding_set(cap).unwrap_or(false) {
            continue;
        }
        if allowed {
            rustix::thread::remove_capability_from_bounding_set(cap)
                .map_err(sys_err("prctl(PR_CAPBSET_DROP)"))?;
        } else {
            kept += 1;
        }
    }
    Ok(kept)
}

/// The drop only covers the calling thread: refuse when another one exists.
fn single_threaded() -> Result<(), SysError> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(|source| SysError {
            op: "listing /proc/self/task",
            source,
        })?
        .count();
    if threads == 1 {
        Ok(())
    } else {
        Err(SysError {
            op: "dropping privileges",
            source: std::io::Error::other(format!(
                "{threads} threads; credentials change per thread, so it must run first"
            )),
        })
    }
}

/// Whether this process can make a cell `id`: it is `id` already, or it holds CAP_SETUID and
/// CAP_SETGID (root, or the unit file's ambient capabilities). The master checks it at start.
pub fn can_become(id: &Identity) -> bool {
    let same =
        nix::unistd::geteuid().as_raw() == id.uid && nix::unistd::getegid().as_raw() == id.gid;
    same || rustix::thread::capabilities(None).is_ok_and(|c| {
        c.effective
            .contains(CapabilitySet::SETUID | CapabilitySet::SETGID)
    })
}

/// Whether the process runs as root (uid 0): without `user`, the app would too.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The master's word before serving: the configuration's warnings, one warning when the
/// cells would run as root, and an error when `user` names an account the cells cannot
/// become from here.
pub fn before_serving(cfg: &Config) -> anyhow::Result<()> {
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    match identity(cfg)? {
        Some(id) if !can_become(&id) => anyhow::bail!(
            "[server] user: the cells cannot switch to {id}: this process (uid {}) has no \
             CAP_SETUID and CAP_SETGID; start it as root or give it those capabilities",
            nix::unistd::geteuid()
        ),
        Some(id) => tracing::info!("cells run as {id}, without capabilities"),
        None if is_root() => tracing::warn!(
            "running as root without [server] user: the cells and the application run as root \
             (without capabilities); set user = \"www-data\" (or another account) in [server]"
        ),
        None => {}
    }
    Ok(())
}
