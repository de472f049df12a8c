//! Loader for the `steering` sk_reuseport program: one instance per TCP listen address (a
//! REUSEPORT_SOCKARRAY only holds sockets of one reuseport group), slot = cell.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::maps::{Array, MapData, PerCpuArray, ReusePortSockArray};
use aya::programs::SkReuseport;
use aya::{Ebpf, EbpfLoader};
use lb_common::{CpuCell, names, steering};

use crate::metrics::SteeringSnapshot;

/// The compiled program object, built by build.rs from `lb-ebpf`.
static STEERING_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steering"));

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program `{0}` missing from the object")]
    MissingProgram(&'static str),
    #[error("map `{0}` missing from the object")]
    MissingMap(&'static str),
    #[error("program {op}: {source}{log}")]
    Program {
        op: &'static str,
        #[source]
        source: aya::programs::ProgramError,
        log: String,
    },
    #[error("map {op}: {source}")]
    Map {
        op: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Attached steering, kept alive for the master's lifetime.
pub struct Steering {
    groups: Vec<Ebpf>,
    cells: usize,
}

impl Steering {
    /// `groups[g][cell]` is cell `cell`'s listener for TCP address `g`; `cpus[cell]` its CPU.
    pub fn attach(groups: &[Vec<BorrowedFd<'_>>], cpus: &[usize]) -> Result<Self, EbpfError> {
        let mut loaded = Vec::with_capacity(groups.len());
        for listeners in groups {
            let mut bpf = EbpfLoader::new().load(STEERING_OBJ)?;
            {
                let mut socks: ReusePortSockArray<&mut MapData> = bpf
                    .map_mut(names::CELL_SOCKETS)
                    .ok_or(EbpfError::MissingMap(names::CELL_SOCKETS))?
                    .try_into()
                    .map_err(|source| EbpfError::Map {
                        op: "open CELL_SOCKETS",
                        source,
                    })?;
                for (cell, fd) in listeners.iter().enumerate() {
                    socks
                        .set(cell as u32, &fd.as_raw_fd(), 0)
                        .map_err(|source| EbpfError::Map {
                            op: "insert listener into CELL_SOCKETS",
                            source,
                        })?;
                }
            }
            {
                let mut cpu_cells: Array<&mut MapData, CpuCell> = bpf
                    .map_mut(names::CPU_CELLS)
                    .ok_or(EbpfError::MissingMap(names::CPU_CELLS))?
                    .try_into()
                    .map_err(|source| EbpfError::Map {
                        op: "open CPU_CELLS",
                        source,
                    })?;
                for (cell, &cpu) in cpus.iter().enumerate() {
                    if (cpu as u32) < lb_common::MAX_CPUS {
                        cpu_cells
                            .set(
                                cpu as u32,
                                CpuCell {
                                    cell: cell as u32,
                                    valid: 1,
                                },
                                0,
                            )
                            .map_err(|source| EbpfError::Map {
                                op: "fill CPU_CELLS",
                                source,
                            })?;
                    }
                }
            }
            let prog: &mut SkReuseport = bpf
                .program_mut(names::STEERING_PROGRAM)
                .ok_or(EbpfError::MissingProgram(names::STEERING_PROGRAM))?
                .try_into()
                .map_err(|source| EbpfError::Program {
                    op: "type check",
                    source,
                    log: String::new(),
                })?;
            prog.load().map_err(|source| {
                let log = verifier_tail(&source);
                EbpfError::Program {
                    op: "load (verifier)",
                    source,
                    log,
                }
            })?;
            let first = listeners
                .first()
                .copied()
                .ok_or(EbpfError::MissingMap("listeners"))?;
            prog.attach(first.as_fd())
                .map_err(|source| EbpfError::Program {
                    op: "attach (SO_ATTACH_REUSEPORT_EBPF)",
                    source,
                    log: String::new(),
                })?;
            loaded.push(bpf);
        }
        Ok(Steering {
            groups: loaded,
            cells: cpus.len(),
        })
    }

    /// Sums the per-CPU counters of every group.
    pub fn snapshot(&self) -> SteeringSnapshot {
        let mut snap = SteeringSnapshot {
            enabled: true,
            per_cell: vec![0; self.cells],
            ..Default::default()
        };
        for bpf in &self.groups {
            if let Some(Ok(counters)) = bpf
                .map(names::STEERING_COUNTERS)
                .map(PerCpuArray::<_, u64>::try_from)
            {
                for i in 0..steering::COUNT {
                    if let Ok(v) = counters.get(&i, 0) {
                        snap.results[i as usize] += v.iter().sum::<u64>();
                    }
                }
            }
            if let Some(Ok(per_cell)) = bpf
                .map(names::CELL_SELECTED)
                .map(PerCpuArray::<_, u64>::try_from)
            {
                for (cell, slot) in snap.per_cell.iter_mut().enumerate() {
                    if let Ok(v) = per_cell.get(&(cell as u32), 0) {
                        *slot += v.iter().sum::<u64>();
                    }
                }
            }
        }
        snap
    }
}

/// The last lines of the verifier log, when the kernel rejected the program.
fn verifier_tail(e: &aya::programs::ProgramError) -> String {
    if let aya::programs::ProgramError::LoadError { verifier_log, .. } = e {
        let text = verifier_log.to_string();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(8)..];
        if !tail.is_empty() {
            return format!("\nverifier log (last lines):\n  {}", tail.join("\n  "));
        }
    }
    String::new()
}
