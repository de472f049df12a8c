//! `tunnel_relay`: the sk_skb stream-verdict program of `relay = "sockmap"` tunnels. Each skb
//! a tunnel socket receives goes straight to its peer's send queue (bpf_sk_redirect_hash),
//! so the bytes never wake the cell; a socket without a peer entry keeps its bytes (SK_PASS).
#![no_std]
#![no_main]
// The BPF target has no CAS, so no `AtomicU64::fetch_add`: the intrinsic lowers to BPF_ATOMIC add.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core_intrinsics is the only atomic add the BPF target has"
)]

use aya_ebpf::{
    bindings::sk_action::SK_PASS,
    helpers::bpf_get_socket_cookie,
    macros::{map, stream_verdict},
    maps::{HashMap, PerCpuArray, SockHash},
    programs::SkBuffContext,
};
use lb_common::{TunnelPeer, tunnel};

#[map(name = "TUNNEL_SOCKS")]
static TUNNEL_SOCKS: SockHash<u64> = SockHash::with_max_entries(tunnel::MAX_SOCKETS, 0);

#[map(name = "TUNNEL_PEERS")]
static TUNNEL_PEERS: HashMap<u64, TunnelPeer> = HashMap::with_max_entries(tunnel::MAX_SOCKETS, 0);

#[map(name = "TUNNEL_STATS")]
static TUNNEL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(tunnel::COUNTERS, 0);

/// Attached to TUNNEL_SOCKS as its stream verdict; SK_PASS (the bytes stay with the socket,
/// for the cell to read) is the safe answer to every failure.
#[stream_verdict]
pub fn tunnel_relay(ctx: SkBuffContext) -> u32 {
    try_tunnel_relay(&ctx).unwrap_or(SK_PASS)
}

#[inline(always)]
fn try_tunnel_relay(ctx: &SkBuffContext) -> Result<u32, ()> {
    if ctx.len() == 0 {
        // The end of stream (a FIN without data): the cell passes it on itself, once the
        // bytes before it are out; redirected, it would reach a socket already shut down.
        return Ok(SK_PASS);
    }
    // SAFETY: the helper only reads the socket the skb belongs to.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let Some(entry) = TUNNEL_PEERS.get_ptr_mut(&cookie) else {
        count(tunnel::NO_PEER);
        return Ok(SK_PASS);
    };
    // SAFETY: a live map value; the add is atomic (the peer's direction runs on other CPUs
    // and the cell reads it), its result unused.
    let mut peer = unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            &raw mut (*entry).bytes,
            u64::from(ctx.len()),
        );
        (*entry).peer
    };
    let verdict = TUNNEL_SOCKS.redirect_skb(ctx, &mut peer, 0);
    count(if verdict == i64::from(SK_PASS) {
        tunnel::REDIRECTED
    } else {
        tunnel::DROPPED
    });
    Ok(verdict as u32)
}

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = TUNNEL_STATS.get_ptr_mut(index) {
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
