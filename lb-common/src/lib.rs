//! Types shared by the eBPF programs (`lb-ebpf`) and the userspace loader (`lb-userspace`).
//!
//! Everything here is `#[repr(C)]` with no implicit padding, so both sides read the same bytes.
#![no_std]
// The only unsafe here is the `aya::Pod` impl behind the `user` feature.
#![cfg_attr(not(feature = "user"), forbid(unsafe_code))]
#![cfg_attr(feature = "user", deny(unsafe_code))]

/// Most cells (and so reuseport slots) one listen address can have.
pub const MAX_CELLS: u32 = 256;
/// Most CPUs the CPU -> cell table covers.
pub const MAX_CPUS: u32 = 1024;

/// Map and program names, written once so loader and program agree.
pub mod names {
    /// REUSEPORT_SOCKARRAY: slot = cell index, value = that cell's listener.
    pub const CELL_SOCKETS: &str = "CELL_SOCKETS";
    /// ARRAY: index = CPU, value = [`super::CpuCell`].
    pub const CPU_CELLS: &str = "CPU_CELLS";
    /// PERCPU_ARRAY of u64 indexed by the `steering` constants.
    pub const STEERING_COUNTERS: &str = "STEERING_COUNTERS";
    /// PERCPU_ARRAY of u64 indexed by cell: connections the program steered to each cell.
    pub const CELL_SELECTED: &str = "CELL_SELECTED";
    /// The sk_reuseport program.
    pub const STEERING_PROGRAM: &str = "steering";
}

/// Indices into the `STEERING_COUNTERS` per-CPU array.
pub mod steering {
    /// The program chose the cell pinned to the CPU that handled the SYN.
    pub const SELECTED: u32 = 0;
    /// No cell is pinned to this CPU: the kernel's hash chose.
    pub const FALLBACK_NO_CELL: u32 = 1;
    /// The CPU's cell has no live listener in the map: the kernel's hash chose.
    pub const FALLBACK_EMPTY_SLOT: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
    /// Label values, in index order, for metrics.
    pub const LABELS: [&str; COUNT as usize] =
        ["selected", "fallback_no_cell", "fallback_empty_slot"];
}

/// Value of the `CPU_CELLS` array: which cell serves connections whose SYN ran on this CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuCell {
    /// Cell index (slot in `CELL_SOCKETS`).
    pub cell: u32,
    /// 1 when the entry is set; 0 means "no cell on this CPU".
    pub valid: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: CpuCell is repr(C), two u32 fields, no padding, every bit pattern valid.
    #[allow(unsafe_code)]
    unsafe impl aya::Pod for super::CpuCell {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_cell_has_no_padding() {
        assert_eq!(core::mem::size_of::<CpuCell>(), 8);
        assert_eq!(core::mem::align_of::<CpuCell>(), 4);
    }

    #[test]
    fn labels_match_count() {
        assert_eq!(steering::LABELS.len(), steering::COUNT as usize);
    }
}
