//! `steering`: the sk_reuseport program that picks the cell for each new connection (policy
//! `cpu`, `hash` or `least-loaded`) among the cells whose listener is in the map, passing over
//! cells at `max_connections` while another has room, and moves the queued connections of a
//! closed listener to a live cell.
#![no_std]
#![no_main]
// The BPF target has no CAS, so no `AtomicU64::fetch_add`: the intrinsic lowers to BPF_ATOMIC add.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core_intrinsics is the only atomic add the BPF target has"
)]

use aya_ebpf::{
    Global,
    bindings::{BPF_F_MMAPABLE, sk_action::SK_PASS},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{map, sk_reuseport},
    maps::{Array, PerCpuArray, ReusePortSockArray},
    programs::SkReuseportContext,
};
use lb_common::{CellLoad, CpuCell, MAX_CELLS, MAX_CPUS, steering};

#[map(name = "CELL_SOCKETS")]
static CELL_SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(MAX_CELLS, 0);

#[map(name = "CPU_CELLS")]
static CPU_CELLS: Array<CpuCell> = Array::with_max_entries(MAX_CPUS, 0);

#[map(name = "LIVE_CELLS")]
static LIVE_CELLS: Array<u32> = Array::with_max_entries(MAX_CELLS + 1, 0);

#[map(name = "CELL_LOAD")]
static CELL_LOAD: Array<CellLoad> = Array::with_max_entries(MAX_CELLS, BPF_F_MMAPABLE);

#[map(name = "STEERING_COUNTERS")]
static STEERING_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(steering::COUNTERS, 0);

#[unsafe(no_mangle)]
static STEERING_POLICY: Global<u32> = Global::new(steering::POLICY_CPU);

/// Attached with BPF_SK_REUSEPORT_SELECT_OR_MIGRATE; SK_PASS without a selection lets the
/// kernel's own hash choose, which is the safe fallback for every failure.
#[sk_reuseport(migrate)]
pub fn steering(ctx: SkReuseportContext) -> u32 {
    try_steering(&ctx).unwrap_or(SK_PASS)
}

/// "No cell" in the u32 the helpers below pass around.
const NONE: u32 = u32::MAX;

#[inline(always)]
fn try_steering(ctx: &SkReuseportContext) -> Result<u32, ()> {
    let hash = ctx.hash();
    let live = match LIVE_CELLS.get(0) {
        Some(n) if *n <= MAX_CELLS => *n,
        _ => 0,
    };
    let migrating = ctx.migrating_sk().is_some();
    let (choice, won) = if migrating {
        // The closed listener's slot is already gone: any live cell will do.
        (hashed(hash, live, 0), steering::MIGRATED)
    } else {
        let policy = STEERING_POLICY.load();
        let cell = if policy == steering::POLICY_HASH {
            hashed(hash, live, 0)
        } else if policy == steering::POLICY_LEAST_LOADED {
            // Two distinct candidates: the local cell and a hashed other one.
            let local = local_cell();
            let first = hashed(hash, live, 0);
            let other = if first == local {
                hashed(hash, live, 1)
            } else {
                first
            };
            if local == NONE || other == NONE {
                if local == NONE { other } else { local }
            } else {
                let now = unsafe { bpf_ktime_get_ns() };
                let (a, b) = (load(local, now), load(other, now));
                if a == b {
                    // A burst of SYNs arrives before any cell has accepted, with every load
                    // still equal: the plain hash (which may be the local cell) spreads it.
                    first
                } else if b < a {
                    other
                } else {
                    local
                }
            }
        } else {
            local_cell()
        };
        (cell, steering::SELECTED)
    };
    if choice != NONE && has_room(choice) && CELL_SOCKETS.select_reuseport(ctx, choice).is_ok() {
        took(choice, won);
        return Ok(SK_PASS);
    }
    // The choice's slot is empty (its cell died or is being replaced) or its cell is at
    // max_connections: the next live cells with room.
    let result = if migrating {
        steering::MIGRATED
    } else {
        steering::FALLBACK
    };
    let second = hashed(hash, live, 1);
    if second != NONE
        && second != choice
        && has_room(second)
        && CELL_SOCKETS.select_reuseport(ctx, second).is_ok()
    {
        took(second, result);
        return Ok(SK_PASS);
    }
    let third = hashed(hash, live, 2);
    if third != NONE
        && third != choice
        && third != second
        && has_room(third)
        && CELL_SOCKETS.select_reuseport(ctx, third).is_ok()
    {
        took(third, result);
        return Ok(SK_PASS);
    }
    // Every candidate is full: queue on the first choice, which accepts again as soon as one
    // of its connections closes.
    if choice != NONE && CELL_SOCKETS.select_reuseport(ctx, choice).is_ok() {
        took(choice, won);
        return Ok(SK_PASS);
    }
    count(steering::NO_LIVE_CELL);
    Ok(SK_PASS)
}

/// Whether the cell will accept one more: its pending connections have not filled the room
/// left under its `max_connections`.
#[inline(always)]
fn has_room(cell: u32) -> bool {
    CELL_LOAD
        .get(cell)
        .is_none_or(|l| (l.pending as i64) < l.room as i64)
}

/// The cell pinned to the CPU running this (the one that processed the SYN), or NONE.
#[inline(always)]
fn local_cell() -> u32 {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    match CPU_CELLS.get(cpu) {
        Some(entry) if entry.valid != 0 => entry.cell,
        _ => NONE,
    }
}

/// The live cell at position `hash + offset` of the live list, or NONE.
#[inline(always)]
fn hashed(hash: u32, live: u32, offset: u32) -> u32 {
    if live == 0 {
        return NONE;
    }
    let pos = (hash % live + offset) % live;
    match LIVE_CELLS.get(pos + 1) {
        Some(c) => *c,
        None => NONE,
    }
}

/// What `least-loaded` compares: open connections and Python requests, connections queued
/// and not yet accepted, and how long the oldest Python request has been running (a cell
/// stuck in its app holds few connections but must not get more).
#[inline(always)]
fn load(cell: u32, now: u64) -> u64 {
    let Some(l) = CELL_LOAD.get(cell) else {
        return u64::MAX;
    };
    // Plain racy reads: the cells change these words atomically, any value read is usable.
    let pending = l.pending as i64;
    let pending = if pending > 0 { pending as u64 } else { 0 };
    let oldest = l.oldest_ns;
    let age = if oldest != 0 && now > oldest {
        (now - oldest) >> steering::AGE_SHIFT
    } else {
        0
    };
    l.open.saturating_add(pending).saturating_add(age)
}

/// Counts the decision and adds the connection to the cell's pending load until it accepts.
#[inline(always)]
fn took(cell: u32, result: u32) {
    count(steering::index(cell, result));
    if let Some(l) = CELL_LOAD.get_ptr_mut(cell) {
        // Shared with every CPU and the cell itself: an atomic add (BPF_ATOMIC), result unused.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                &raw mut (*l).pending,
                1,
            )
        };
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = STEERING_COUNTERS.get_ptr_mut(index) {
        // Per-CPU counter: no other writer on this CPU while the program runs.
        unsafe { *counter += 1 };
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
