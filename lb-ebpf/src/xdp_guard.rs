//! `xdp_guard`: runs at the NIC before the stack. Drops packets from blocklisted sources,
//! drops SYNs to the listen ports over each source's token bucket, and (with `cpu_redirect`)
//! spreads the listen ports' flows over the cells' CPUs through a CPUMAP.
#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    bindings::{BPF_F_NO_PREALLOC, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, CpuMap, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use lb_common::{MAX_CPUS, SynBucket, V4Addr, V6Addr, XdpCount, xdp as act};

#[map(name = "XDP_COUNTERS")]
static XDP_COUNTERS: PerCpuArray<XdpCount> = PerCpuArray::with_max_entries(act::ACTIONS, 0);

#[map(name = "BLOCK_V4")]
static BLOCK_V4: LpmTrie<V4Addr, u32> =
    LpmTrie::with_max_entries(act::BLOCK_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "BLOCK_V6")]
static BLOCK_V6: LpmTrie<V6Addr, u32> =
    LpmTrie::with_max_entries(act::BLOCK_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "SYN_BUCKETS")]
static SYN_BUCKETS: LruHashMap<V6Addr, SynBucket> =
    LruHashMap::with_max_entries(act::SYN_SOURCES, 0);

#[map(name = "XDP_PORTS")]
static XDP_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(act::MAX_PORTS, 0);

#[map(name = "CPU_REDIRECT")]
static CPU_REDIRECT: CpuMap = CpuMap::with_max_entries(MAX_CPUS, 0);

#[map(name = "REDIRECT_CPUS")]
static REDIRECT_CPUS: Array<u32> = Array::with_max_entries(MAX_CPUS + 1, 0);

/// SYNs per second each source may send to the listen ports (0: no SYN guard).
#[unsafe(no_mangle)]
static SYN_RATE: Global<u32> = Global::new(0);
/// Bucket size: SYNs a source may send at once.
#[unsafe(no_mangle)]
static SYN_BURST: Global<u32> = Global::new(0);
/// 1: spread the listen ports' flows over `REDIRECT_CPUS`.
#[unsafe(no_mangle)]
static CPU_REDIRECT_ON: Global<u32> = Global::new(0);

const ETH_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// Longest gap a bucket refills for (keeps `elapsed * rate` far from overflow).
const MAX_REFILL_NS: u64 = 10_000_000_000;

#[xdp]
pub fn xdp_guard(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (action, counter) = try_guard(&ctx).unwrap_or((xdp_action::XDP_PASS, act::PASS));
    if let Some(c) = XDP_COUNTERS.get_ptr_mut(counter) {
        // Per-CPU counter: no other writer on this CPU while the program runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
    action
}

/// What the packet's headers say about it.
struct Flow {
    src: V6Addr,
    tcp: Option<Tcp>,
}

struct Tcp {
    sport: u16,
    dport: u16,
    flags: u8,
}

#[inline(always)]
fn try_guard(ctx: &XdpContext) -> Result<(u32, u32), ()> {
    let mut proto = u16::from_be(read::<u16>(ctx, 12)?);
    let mut off = ETH_LEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = u16::from_be(read::<u16>(ctx, 16)?);
        off += 4;
    }
    let flow = match proto {
        ETH_P_IP => {
            let src: V4Addr = read(ctx, off + 12)?;
            if BLOCK_V4.get(Key::new(32, src)).is_some() {
                return Ok((xdp_action::XDP_DROP, act::DROP_BLOCKLIST));
            }
            let vhl: u8 = read(ctx, off)?;
            let ihl = ((vhl & 0x0f) as usize) * 4;
            let frag = u16::from_be(read::<u16>(ctx, off + 6)?) & 0x1fff;
            let l4: u8 = read(ctx, off + 9)?;
            let mut mapped = [0u8; 16];
            mapped[10] = 0xff;
            mapped[11] = 0xff;
            mapped[12..16].copy_from_slice(&src);
            Flow {
                src: mapped,
                tcp: if l4 == IPPROTO_TCP && frag == 0 && ihl >= 20 {
                    Some(tcp(ctx, off + ihl)?)
                } else {
                    None
                },
            }
        }
        ETH_P_IPV6 => {
            let src: V6Addr = read(ctx, off + 8)?;
            if BLOCK_V6.get(Key::new(128, src)).is_some() {
                return Ok((xdp_action::XDP_DROP, act::DROP_BLOCKLIST));
            }
            let next: u8 = read(ctx, off + 6)?;
            Flow {
                src,
                tcp: if next == IPPROTO_TCP {
                    Some(tcp(ctx, off + 40)?)
                } else {
                    None
                },
            }
        }
        _ => return Ok((xdp_action::XDP_PASS, act::PASS)),
    };
    let Some(t) = flow.tcp else {
        return Ok((xdp_action::XDP_PASS, act::PASS));
    };
    if XDP_PORTS.get_ptr(t.dport).is_none() {
        return Ok((xdp_action::XDP_PASS, act::PASS));
    }
    if t.flags & (TCP_SYN | TCP_ACK) == TCP_SYN && !syn_allowed(&flow.src) {
        return Ok((xdp_action::XDP_DROP, act::DROP_SYNFLOOD));
    }
    if CPU_REDIRECT_ON.load() != 0
        && let Some(action) = spread(&flow.src, &t)
    {
        return Ok((action, act::REDIRECT));
    }
    Ok((xdp_action::XDP_PASS, act::PASS))
}

#[inline(always)]
fn tcp(ctx: &XdpContext, off: usize) -> Result<Tcp, ()> {
    Ok(Tcp {
        sport: u16::from_be(read::<u16>(ctx, off)?),
        dport: u16::from_be(read::<u16>(ctx, off + 2)?),
        flags: read(ctx, off + 13)?,
    })
}

/// Takes one token from the source's bucket; a new source starts with a full bucket.
#[inline(always)]
fn syn_allowed(src: &V6Addr) -> bool {
    let rate = SYN_RATE.load() as u64;
    if rate == 0 {
        return true;
    }
    let full = SYN_BURST.load() as u64 * act::NS_PER_TOKEN;
    let now = unsafe { bpf_ktime_get_ns() };
    match SYN_BUCKETS.get_ptr_mut(src) {
        Some(b) => {
            // Racing CPUs may both refill from the same `last_ns`; the bucket stays approximate
            // by at most a token per CPU, which a flood guard can afford.
            let b = unsafe { &mut *b };
            let elapsed = now.saturating_sub(b.last_ns).min(MAX_REFILL_NS);
            let tokens = (b.tokens + elapsed * rate).min(full);
            b.last_ns = now;
            if tokens >= act::NS_PER_TOKEN {
                b.tokens = tokens - act::NS_PER_TOKEN;
                true
            } else {
                b.tokens = tokens;
                false
            }
        }
        None => {
            let fresh = SynBucket {
                tokens: full.saturating_sub(act::NS_PER_TOKEN),
                last_ns: now,
            };
            let _ = SYN_BUCKETS.insert(src, &fresh, 0);
            full >= act::NS_PER_TOKEN
        }
    }
}

/// Redirects the flow to one of the cells' CPUs, chosen by a hash of its addresses and ports
/// so every packet of a connection is processed on the same CPU.
#[inline(always)]
fn spread(src: &V6Addr, t: &Tcp) -> Option<u32> {
    let n = REDIRECT_CPUS.get(0).copied().unwrap_or(0);
    if n == 0 {
        return None;
    }
    let word = u32::from_ne_bytes([src[12], src[13], src[14], src[15]])
        ^ u32::from_ne_bytes([src[8], src[9], src[10], src[11]]);
    // murmur3's finaliser: every input bit reaches the low bits `% n` keeps (a plain
    // multiply left them to the ports' parity, and Linux hands out even ephemeral ports).
    let mut h = word ^ ((t.sport as u32) << 16 | t.dport as u32);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    let cpu = REDIRECT_CPUS.get(h % n + 1).copied()?;
    CPU_REDIRECT.redirect(cpu, 0).ok()
}

/// Reads a `T` at `off` bytes into the packet, bounds-checked for the verifier.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Result<T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return Err(());
    }
    Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
