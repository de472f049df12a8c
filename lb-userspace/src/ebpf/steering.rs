//! Loader for the `steering` sk_reuseport program: one instance per TCP listen address (a
//! REUSEPORT_SOCKARRAY only holds one reuseport group; slot = cell); the other maps are pinned
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

/// The writes the master makes to the steering maps: the kernel's maps, or a fake in tests, so
/// the bookkeeping (which cells are live, which CPUs are mapped, in which order) is testable.
pub trait SteeringMaps {
    /// Reuseport groups (one per TCP listen address).
    fn groups(&self) -> usize;
    /// Group `group`'s CELL_SOCKETS slot `cell` = the listener `fd`.
    fn set_socket(&mut self, group: usize, cell: u32, fd: BorrowedFd<'_>) -> Result<(), EbpfError>;
    /// Empties group `group`'s CELL_SOCKETS slot `cell` (an empty one is fine).
    fn clear_socket(&mut self, group: usize, cell: u32) -> Result<(), EbpfError>;
    fn set_cpu_cell(&mut self, cpu: u32, entry: CpuCell) -> Result<(), EbpfError>;
    /// LIVE_CELLS word `index` (0: the count; then the live cells).
    fn live_word(&self, index: u32) -> u32;
    fn set_live_word(&mut self, index: u32, value: u32) -> Result<(), EbpfError>;
}

/// The loaded programs' maps in the kernel.
pub struct KernelMaps {
    /// One loaded object per TCP listen address; the shared maps live in the first.
    groups: Vec<Ebpf>,
}

impl SteeringMaps for KernelMaps {
    fn groups(&self) -> usize {
        self.groups.len()
    }

    fn set_socket(&mut self, group: usize, cell: u32, fd: BorrowedFd<'_>) -> Result<(), EbpfError> {
        let bpf = &mut self.groups[group];
        let mut socks: ReusePortSockArray<&mut MapData> = map_mut(bpf, names::CELL_SOCKETS)?
            .try_into()
            .map_err(map_err("open CELL_SOCKETS"))?;
        socks
            .set(cell, &fd.as_raw_fd(), 0)
            .map_err(map_err("insert a listener into CELL_SOCKETS"))
    }

    fn clear_socket(&mut self, group: usize, cell: u32) -> Result<(), EbpfError> {
        let bpf = &mut self.groups[group];
        let mut socks: ReusePortSockArray<&mut MapData> = map_mut(bpf, names::CELL_SOCKETS)?
            .try_into()
            .map_err(map_err("open CELL_SOCKETS"))?;
        match socks.clear_index(&cell) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(map_err("clear a CELL_SOCKETS slot")(e)),
        }
    }

    fn set_cpu_cell(&mut self, cpu: u32, entry: CpuCell) -> Result<(), EbpfError> {
        let bpf = self
            .groups
            .first_mut()
            .ok_or(EbpfError::MissingMap("groups"))?;
        let mut table: Array<&mut MapData, CpuCell> = map_mut(bpf, names::CPU_CELLS)?
            .try_into()
            .map_err(map_err("open CPU_CELLS"))?;
        table.set(cpu, entry, 0).map_err(map_err("write CPU_CELLS"))
    }

    fn live_word(&self, index: u32) -> u32 {
        let Some(bpf) = self.groups.first() else {
            return 0;
        };
        map_ref(bpf, names::LIVE_CELLS)
            .ok()
            .and_then(|m| Array::<&MapData, u32>::try_from(m).ok())
            .and_then(|a| a.get(&index, 0).ok())
            .unwrap_or(0)
    }

    fn set_live_word(&mut self, index: u32, value: u32) -> Result<(), EbpfError> {
        let bpf = self
            .groups
            .first_mut()
            .ok_or(EbpfError::MissingMap("groups"))?;
        let mut list: Array<&mut MapData, u32> = map_mut(bpf, names::LIVE_CELLS)?
            .try_into()
            .map_err(map_err("open LIVE_CELLS"))?;
        list.set(index, value, 0)
            .map_err(map_err("write LIVE_CELLS"))
    }
}

/// Attached steering, kept in step with the cells by the master.
pub struct Steering<M: SteeringMaps = KernelMaps> {
    maps: M,
    /// Cells whose listeners are in the maps.
    live: Vec<bool>,
    /// CPUs written into CPU_CELLS, to clear when cells go away.
    cpus_set: Vec<u32>,
}

impl Steering<KernelMaps> {
    /// Loads and attaches `policy` for every group; `groups[g][cell]` is cell `cell`'s listener
    /// for TCP address `g`, `cpus[cell]` its CPU. Every slot starts empty: the master fills a
    /// cell's slot when that cell reports ready.
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
        Steering::over(KernelMaps { groups: loaded }, cpus)
    }
}

impl<M: SteeringMaps> Steering<M> {
    /// Bookkeeping over `maps`: no cell live, `cpus[cell]` mapped to each cell.
    pub fn over(maps: M, cpus: &[usize]) -> Result<Self, EbpfError> {
        let mut s = Steering {
            maps,
            live: vec![false; cpus.len()],
            cpus_set: Vec::new(),
        };
        s.set_cpus(cpus)?;
        s.publish_live()?;
        Ok(s)
    }

    /// Rewrites the CPU -> cell table for `cpus[cell]` (the first cell on a CPU wins).
    pub fn set_cpus(&mut self, cpus: &[usize]) -> Result<(), EbpfError> {
        for cpu in std::mem::take(&mut self.cpus_set) {
            self.maps.set_cpu_cell(cpu, CpuCell::default())?;
        }
        for (cell, &cpu) in cpus.iter().enumerate() {
            let Ok(cpu) = u32::try_from(cpu) else {
                continue;
            };
            if cpu < MAX_CPUS && !self.cpus_set.contains(&cpu) {
                self.maps.set_cpu_cell(
                    cpu,
                    CpuCell {
                        cell: u32::try_from(cell).expect("cells fit in u32"),
                        valid: 1,
                    },
                )?;
                self.cpus_set.push(cpu);
            }
        }
        self.live.resize(cpus.len(), false);
        Ok(())
    }

    /// Puts `cell`'s listeners (one per group) in the maps: it takes new connections again.
    pub fn fill(&mut self, cell: usize, listeners: &[BorrowedFd<'_>]) -> Result<(), EbpfError> {
        let index = u32::try_from(cell).expect("cells fit in u32");
        for (group, fd) in listeners.iter().enumerate().take(self.maps.groups()) {
            self.maps.set_socket(group, index, *fd)?;
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
        let index = u32::try_from(cell).expect("cells fit in u32");
        for group in 0..self.maps.groups() {
            self.maps.clear_socket(group, index)?;
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

    /// LIVE_CELLS: when it shrinks, the count first; then the list; then the count, so the
    /// program never reads past what is written (a stale entry only costs it a fallback).
    fn publish_live(&mut self) -> Result<(), EbpfError> {
        let live: Vec<u32> = self
            .live
            .iter()
            .enumerate()
            .filter(|(_, l)| **l)
            .map(|(i, _)| u32::try_from(i).expect("cells fit in u32"))
            .take(MAX_CELLS as usize)
            .collect();
        let count = u32::try_from(live.len()).expect("at most MAX_CELLS");
        if count < self.maps.live_word(0) {
            self.maps.set_live_word(0, count)?;
        }
        for (i, c) in (1..).zip(&live) {
            self.maps.set_live_word(i, *c)?;
        }
        self.maps.set_live_word(0, count)
    }
}

impl Steering<KernelMaps> {
    /// The CELL_LOAD map, which the cells map and write their load into.
    pub fn load_map(&self) -> Option<BorrowedFd<'_>> {
        let m = self.maps.groups.first()?.map(names::CELL_LOAD)?;
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
            .maps
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
            (names::CELL_SOCKETS, live * self.maps.groups.len() as u64),
            (names::LIVE_CELLS, live),
            (names::CPU_CELLS, self.cpus_set.len() as u64),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use super::*;

    /// The maps as plain data, with every write logged in order.
    #[derive(Debug, Default)]
    struct FakeMaps {
        groups: usize,
        sockets: std::collections::BTreeMap<(usize, u32), i32>,
        cpu_cells: std::collections::BTreeMap<u32, CpuCell>,
        live: Vec<u32>,
        writes: Vec<String>,
    }

    impl SteeringMaps for FakeMaps {
        fn groups(&self) -> usize {
            self.groups
        }
        fn set_socket(
            &mut self,
            group: usize,
            cell: u32,
            fd: BorrowedFd<'_>,
        ) -> Result<(), EbpfError> {
            self.sockets.insert((group, cell), fd.as_raw_fd());
            Ok(())
        }
        fn clear_socket(&mut self, group: usize, cell: u32) -> Result<(), EbpfError> {
            self.sockets.remove(&(group, cell));
            Ok(())
        }
        fn set_cpu_cell(&mut self, cpu: u32, entry: CpuCell) -> Result<(), EbpfError> {
            self.cpu_cells.insert(cpu, entry);
            Ok(())
        }
        fn live_word(&self, index: u32) -> u32 {
            self.live.get(index as usize).copied().unwrap_or(0)
        }
        fn set_live_word(&mut self, index: u32, value: u32) -> Result<(), EbpfError> {
            let i = index as usize;
            if self.live.len() <= i {
                self.live.resize(i + 1, 0);
            }
            self.live[i] = value;
            self.writes.push(format!("live[{index}]={value}"));
            Ok(())
        }
    }

    impl FakeMaps {
        /// The live list as the program reads it: the count, then that many cells.
        fn live_list(&self) -> Vec<u32> {
            let n = self.live_word(0) as usize;
            self.live.iter().skip(1).take(n).copied().collect()
        }
        fn cpu(&self, cpu: u32) -> Option<u32> {
            self.cpu_cells
                .get(&cpu)
                .filter(|c| c.valid != 0)
                .map(|c| c.cell)
        }
    }

    fn steering(groups: usize, cpus: &[usize]) -> Steering<FakeMaps> {
        Steering::over(
            FakeMaps {
                groups,
                ..FakeMaps::default()
            },
            cpus,
        )
        .expect("fake maps never fail")
    }

    #[test]
    fn cells_start_empty_and_are_filled_when_ready() {
        let mut s = steering(2, &[0, 1]);
        assert!(s.maps.live_list().is_empty());
        let (a, b) = (std::io::stdin(), std::io::stderr());
        s.fill(1, &[a.as_fd(), b.as_fd()]).unwrap();
        assert_eq!(s.maps.live_list(), vec![1]);
        assert_eq!(s.maps.sockets.len(), 2, "one listener per group");
        s.fill(0, &[a.as_fd(), b.as_fd()]).unwrap();
        assert_eq!(s.maps.live_list(), vec![0, 1]);
        assert_eq!(s.map_entries_live(), 2);
    }

    #[test]
    fn emptying_shrinks_the_count_before_rewriting_the_list() {
        let mut s = steering(1, &[0, 1, 2]);
        let fd = std::io::stdin();
        for cell in 0..3 {
            s.fill(cell, &[fd.as_fd()]).unwrap();
        }
        s.maps.writes.clear();
        s.empty(0).unwrap();
        assert_eq!(s.maps.live_list(), vec![1, 2]);
        // Count first (so the program never reads a stale third entry), then list, then count.
        assert_eq!(
            s.maps.writes,
            vec!["live[0]=2", "live[1]=1", "live[2]=2", "live[0]=2"]
        );
        assert!(!s.maps.sockets.contains_key(&(0, 0)));
        // Emptying twice is fine (a dead cell's replacement may empty it again).
        s.empty(0).unwrap();
    }

    #[test]
    fn the_first_cell_on_a_cpu_wins_and_old_cpus_are_cleared() {
        let mut s = steering(1, &[3, 5, 3]);
        assert_eq!((s.maps.cpu(3), s.maps.cpu(5)), (Some(0), Some(1)));
        s.set_cpus(&[4]).unwrap();
        assert_eq!(
            (s.maps.cpu(3), s.maps.cpu(5), s.maps.cpu(4)),
            (None, None, Some(0))
        );
        // CPUs past the map are skipped, not an error.
        s.set_cpus(&[MAX_CPUS as usize + 1, 1]).unwrap();
        assert_eq!(s.maps.cpu(1), Some(1));
    }

    #[test]
    fn truncating_forgets_the_cells_above() {
        let mut s = steering(1, &[0, 1, 2]);
        let fd = std::io::stdin();
        for cell in 0..3 {
            s.fill(cell, &[fd.as_fd()]).unwrap();
        }
        s.truncate(1).unwrap();
        assert_eq!(s.maps.live_list(), vec![0]);
        assert_eq!(s.maps.sockets.keys().collect::<Vec<_>>(), vec![&(0, 0)]);
    }

    impl Steering<FakeMaps> {
        fn map_entries_live(&self) -> usize {
            self.live.iter().filter(|l| **l).count()
        }
    }
}
