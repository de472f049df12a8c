//! What the loaders share: the compiled objects, the error type, program and map lookups, the
//! pin directory and the verifier-log helpers.
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::{Map, MapError};
use aya::programs::ProgramError;

/// The compiled programs, built by build.rs from `lb-ebpf`.
pub(crate) static STEERING_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steering"));
pub(crate) static XDP_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_guard"));
pub(crate) static TUNNEL_RELAY_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tunnel_relay"));

/// Where bpffs is mounted.
const BPFFS: &str = "/sys/fs/bpf";
/// statfs(2) magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program `{0}` missing from the object")]
    MissingProgram(&'static str),
    #[error("map `{0}` missing from the object")]
    MissingMap(&'static str),
    #[error("program {op}: {}{log}", short(source))]
    Program {
        op: &'static str,
        #[source]
        source: ProgramError,
        log: String,
    },
    #[error("map {op}: {source}")]
    Map {
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{0}")]
    Setup(String),
    #[error("bpffs at {BPFFS}: {0}")]
    Bpffs(String),
    #[error(
        "an XDP program someone else attached is already on {0}; detach it, or set [ebpf.xdp] replace = true to take its place"
    )]
    XdpBusy(String),
    #[error("XDP on {iface} ({mode} mode): {source}")]
    XdpAttach {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
}

impl EbpfError {
    /// True when the failure is a conflict with another tool's program (it must stop
    /// startup); false when it is about privileges or kernel support (the fallback applies).
    pub fn is_conflict(&self) -> bool {
        matches!(self, EbpfError::XdpBusy(_))
    }
}

pub(crate) fn map_err(op: &'static str) -> impl FnOnce(MapError) -> EbpfError {
    move |source| EbpfError::Map { op, source }
}

pub(crate) fn map_mut<'a>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map, EbpfError> {
    bpf.map_mut(name).ok_or(EbpfError::MissingMap(name))
}

pub(crate) fn map_ref<'a>(bpf: &'a Ebpf, name: &'static str) -> Result<&'a Map, EbpfError> {
    bpf.map(name).ok_or(EbpfError::MissingMap(name))
}

/// The program `name` of `bpf` as its type `P`.
pub(crate) fn program_mut<'a, P>(
    bpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut P, EbpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    bpf.program_mut(name)
        .ok_or(EbpfError::MissingProgram(name))?
        .try_into()
        .map_err(|source| EbpfError::Program {
            op: "type check",
            source,
            log: String::new(),
        })
}

/// Loads program `name` into the kernel; a verifier rejection carries the log's last lines.
pub(crate) fn load_program<'a, P>(
    bpf: &'a mut Ebpf,
    name: &'static str,
    load: impl FnOnce(&mut P) -> Result<(), ProgramError>,
) -> Result<&'a mut P, EbpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog: &mut P = program_mut(bpf, name)?;
    load(prog).map_err(|source| {
        let log = verifier_tail(&source);
        EbpfError::Program {
            op: "load (verifier)",
            source,
            log,
        }
    })?;
    Ok(prog)
}

/// The pin directory of one Portico instance; removed (with every pin in it) on drop.
#[derive(Debug)]
pub struct PinDir(PathBuf);

impl PinDir {
    /// Mounts bpffs if nothing is there (a fresh mount namespace, as under `ip netns exec`) and
    /// creates `/sys/fs/bpf/portico/<instance>`, clearing pins a crashed run left behind.
    pub fn create(instance: &str) -> Result<Self, EbpfError> {
        let root = Path::new(BPFFS);
        let is_bpffs = |p: &Path| rustix::fs::statfs(p).is_ok_and(|s| s.f_type == BPF_FS_MAGIC);
        if !is_bpffs(root) {
            rustix::mount::mount("bpf", root, "bpf", rustix::mount::MountFlags::empty(), None)
                .map_err(|e| {
                    EbpfError::Bpffs(format!("not mounted, and mounting it failed: {e}"))
                })?;
        }
        let dir = root.join("portico").join(instance);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| EbpfError::Bpffs(format!("clearing {}: {e}", dir.display())))?;
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| EbpfError::Bpffs(format!("creating {}: {e}", dir.display())))?;
        Ok(PinDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn pin(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        if let Some(parent) = self.0.parent() {
            // Only succeeds when no other instance has pins there.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// A program error in one line: the syscall's error, without aya's full verifier dump (the
/// caller appends the log's last lines).
pub(crate) fn short(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError { io_error, .. } => {
            format!("the kernel refused the program: {io_error}")
        }
        other => other.to_string(),
    }
}

/// The last lines of the verifier log, when the kernel rejected the program.
pub(crate) fn verifier_tail(e: &ProgramError) -> String {
    if let ProgramError::LoadError { verifier_log, .. } = e {
        let text = verifier_log.to_string();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(8)..];
        if !tail.is_empty() {
            return format!("\nverifier log (last lines):\n  {}", tail.join("\n  "));
        }
    }
    String::new()
}
