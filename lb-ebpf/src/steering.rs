//! `steering`: the sk_reuseport program that hands each new connection to the cell pinned to
//! the CPU that processed its SYN, so NIC queue, socket, cell and app stay on one core.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::sk_action::SK_PASS,
    helpers::bpf_get_smp_processor_id,
    macros::{map, sk_reuseport},
    maps::{Array, PerCpuArray, ReusePortSockArray},
    programs::SkReuseportContext,
};
use lb_common::{CpuCell, MAX_CELLS, MAX_CPUS, steering};

#[map(name = "CELL_SOCKETS")]
static CELL_SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(MAX_CELLS, 0);

#[map(name = "CPU_CELLS")]
static CPU_CELLS: Array<CpuCell> = Array::with_max_entries(MAX_CPUS, 0);

#[map(name = "STEERING_COUNTERS")]
static STEERING_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(steering::COUNT, 0);

#[map(name = "CELL_SELECTED")]
static CELL_SELECTED: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_CELLS, 0);

/// Attached with BPF_SK_REUSEPORT_SELECT_OR_MIGRATE; SK_PASS without a selection lets the
/// kernel's own hash choose, which is the safe fallback for every failure.
#[sk_reuseport(migrate)]
pub fn steering(ctx: SkReuseportContext) -> u32 {
    try_steering(&ctx).unwrap_or(SK_PASS)
}

#[inline(always)]
fn try_steering(ctx: &SkReuseportContext) -> Result<u32, ()> {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let cell = match CPU_CELLS.get(cpu) {
        Some(entry) if entry.valid != 0 => entry.cell,
        _ => {
            count(&STEERING_COUNTERS, steering::FALLBACK_NO_CELL);
            return Ok(SK_PASS);
        }
    };
    if CELL_SOCKETS.select_reuseport(ctx, cell).is_err() {
        count(&STEERING_COUNTERS, steering::FALLBACK_EMPTY_SLOT);
        return Ok(SK_PASS);
    }
    count(&STEERING_COUNTERS, steering::SELECTED);
    count(&CELL_SELECTED, cell);
    Ok(SK_PASS)
}

#[inline(always)]
fn count(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // Per-CPU slot: no other writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
