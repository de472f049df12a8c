//! Loader for the `steering` sk_reuseport program: one instance per TCP listen address (a
//! REUSEPORT_SOCKARRAY only holds one reuseport group, index = cell); the other maps are pinned
//! and shared by every instance. The master keeps the maps in step with the cells.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::maps::{Array, Map, MapData, MapError, PerCpuArray, ReusePortSockArray};
use aya::programs::SkReuseport;
use aya::{Ebpf, EbpfLoader};
use lb_common::{CpuCell, MAX_CELLS, MAX_CPUS, names, steering};

use crate::ebpf::loader::{
    EbpfError, PinDir, STEERING_OBJ, load_program, map_err, map_mut, map_ref,
};
use crate::metrics::SteeringSnapshot;

/// Attached steering, kept in step with the cells by the master.
pub struct Steering {
    /// One loaded object per TCP listen address; the shared maps live in the first.
    groups: Vec<Ebpf>,
    /// Cells whose listeners are in the maps.
    live: Vec<bool>,
    /// CPUs written into CPU_CELLS, to clear when cells go away.
    cpus_set: Vec<u32>,
}

impl Steering {
    /// Loads and attaches `policy` for every group; `groups[g][cell]` is cell `cell`'s listener
    /// for TCP address `g`, `cpus[cell]` its CPU. Every entry starts empty: the master fills a
    /// cell's entry when that cell reports ready.
    pub fn attach(
        groups: &[Vec<BorrowedFd<'_>>],
        cpus: &[usize],
        policy: u32,
        pins: &PinDir,
    ) -> Result<Self, EbpfError> {
        let mut loaded = Vec::with_capacity(groups.len());
        for (g, listeners) in groups.iter().enumerate() {
            let mut loader = EbpfLoader::new();
            loader.override_global(names::STEERING_POLICY, &policy, true);
            for name in [
                names::CPU_CELLS,
                names::LIVE_CELLS,
                names::CELL_LOAD,
                names::STEERING_COUNTERS,
            ] {
                loader.map_pin_path(name, pins.pin(name));
            }
            let mut bpf = loader.load(STEERING_OBJ)?;
            map_ref(&bpf, names::CELL_SOCKETS)?
                .pin(pins.pin(&format!("{}_{g}", names::CELL_SOCKETS)))
                .map_err(|e| EbpfError::Bpffs(format!("pinning CELL_SOCKETS: {e}")))?;
            let prog: &mut SkReuseport =
                load_program(&mut bpf, names::STEERING_PROGRAM, SkReuseport::load)?;
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
        let mut s = Steering {
            groups: loaded,
            live: vec![false; cpus.len()],
            cpus_set: Vec::new(),
        };
        s.set_cpus(cpus)?;
        s.publish_live()?;
        Ok(s)
    }

    /// Rewrites the CPU -> cell table for `cpus[cell]` (the first cell on a CPU wins).
    pub fn set_cpus(&mut self, cpus: &[usize]) -> Result<(), EbpfError> {
        let bpf = self
            .groups
            .first_mut()
            .ok_or(EbpfError::MissingMap("groups"))?;
        let mut table: Array<&mut MapData, CpuCell> = map_mut(bpf, names::CPU_CELLS)?
            .try_into()
            .map_err(map_err("open CPU_CELLS"))?;
        for &cpu in &self.cpus_set {
            table
                .set(cpu, CpuCell::default(), 0)
                .map_err(map_err("clear CPU_CELLS"))?;
        }
        self.cpus_set.clear();
        for (cell, &cpu) in cpus.iter().enumerate() {
            let cpu = cpu as u32;
            if cpu < MAX_CPUS && !self.cpus_set.contains(&cpu) {
                table
                    .set(
                        cpu,
                        CpuCell {
                            cell: cell as u32,
                            valid: 1,
                        },
                        0,
                    )
                    .map_err(map_err("fill CPU_CELLS"))?;
                self.cpus_set.push(cpu);
            }
        }
        self.live.resize(cpus.len(), false);
        Ok(())
    }

    /// Puts `cell`'s listeners (one per group) in the maps: it takes new connections again.
    pub fn fill(&mut self, cell: usize, listeners: &[BorrowedFd<'_>]) -> Result<(), EbpfError> {
        for (bpf, fd) in self.groups.iter_mut().zip(listeners) {
            let mut socks: ReusePortSockArray<&mut MapData> = map_mut(bpf, names::CELL_SOCKETS)?
                .try_into()
                .map_err(map_err("open CELL_SOCKETS"))?;
            socks
                .set(cell as u32, &fd.as_raw_fd(), 0)
                .map_err(map_err("insert a listener into CELL_SOCKETS"))?;
        }
        if cell >= self.live.len() {
            self.live.resize(cell + 1, false);
        }
        self.live[cell] = true;
        self.publish_live()
    }

    /// Takes `cell` out of the maps at once: no new connection is queued on a cell that cannot
    /// take it (its listener stays open in the master, so nothing already queued is lost).
    pub fn empty(&mut self, cell: usize) -> Result<(), EbpfError> {
        if let Some(l) = self.live.get_mut(cell) {
            *l = false;
        }
        self.publish_live()?;
        for bpf in &mut self.groups {
            let mut socks: ReusePortSockArray<&mut MapData> = map_mut(bpf, names::CELL_SOCKETS)?
                .try_into()
                .map_err(map_err("open CELL_SOCKETS"))?;
            match socks.clear_index(&(cell as u32)) {
                Ok(()) => {}
                Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(map_err("clear a CELL_SOCKETS entry")(e)),
            }
        }
        Ok(())
    }

    /// Forgets cells at and above `cells` (workers reduced on reload).
    pub fn truncate(&mut self, cells: usize) -> Result<(), EbpfError> {
        for cell in cells..self.live.len() {
            self.empty(cell)?;
        }
        self.live.truncate(cells);
        Ok(())
    }

    /// LIVE_CELLS: the list first, then its length, so the program never reads past what is
    /// written (a stale entry only costs it a fallback).
    fn publish_live(&mut self) -> Result<(), EbpfError> {
        let bpf = self
            .groups
            .first_mut()
            .ok_or(EbpfError::MissingMap("groups"))?;
        let mut list: Array<&mut MapData, u32> = map_mut(bpf, names::LIVE_CELLS)?
            .try_into()
            .map_err(map_err("open LIVE_CELLS"))?;
        let live: Vec<u32> = self
            .live
            .iter()
            .enumerate()
            .filter(|(_, l)| **l)
            .map(|(i, _)| i as u32)
            .take(MAX_CELLS as usize)
            .collect();
        let old = list.get(&0, 0).unwrap_or(0);
        if (live.len() as u32) < old {
            list.set(0, live.len() as u32, 0)
                .map_err(map_err("write LIVE_CELLS"))?;
        }
        for (i, c) in live.iter().enumerate() {
            list.set(i as u32 + 1, *c, 0)
                .map_err(map_err("write LIVE_CELLS"))?;
        }
        list.set(0, live.len() as u32, 0)
            .map_err(map_err("write LIVE_CELLS"))?;
        Ok(())
    }

    /// The CELL_LOAD map, which the cells map and write their load into.
    pub fn load_map(&self) -> Option<BorrowedFd<'_>> {
        let m = self.groups.first()?.map(names::CELL_LOAD)?;
        match m {
            Map::Array(d) => Some(d.fd().as_fd()),
            _ => None,
        }
    }

    /// Sums the per-CPU decision counters.
    pub fn snapshot(&self, cells: usize) -> SteeringSnapshot {
        let mut snap = SteeringSnapshot {
            enabled: true,
            per_cell: vec![[0; steering::RESULTS as usize]; cells],
            no_live_cell: 0,
        };
        let Some(Ok(counters)) = self
            .groups
            .first()
            .and_then(|b| b.map(names::STEERING_COUNTERS))
            .map(PerCpuArray::<_, u64>::try_from)
        else {
            return snap;
        };
        for (cell, results) in snap.per_cell.iter_mut().enumerate() {
            for (r, v) in results.iter_mut().enumerate() {
                if let Ok(vals) = counters.get(&steering::index(cell as u32, r as u32), 0) {
                    *v = vals.iter().sum();
                }
            }
        }
        if let Ok(vals) = counters.get(&steering::NO_LIVE_CELL, 0) {
            snap.no_live_cell = vals.iter().sum();
        }
        snap
    }

    /// Entries in the maps whose size changes at run time.
    pub fn map_entries(&self) -> Vec<(&'static str, u64)> {
        let live = self.live.iter().filter(|l| **l).count() as u64;
        vec![
            (names::CELL_SOCKETS, live * self.groups.len() as u64),
            (names::LIVE_CELLS, live),
            (names::CPU_CELLS, self.cpus_set.len() as u64),
        ]
    }
}
