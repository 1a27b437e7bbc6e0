//! The node-local antibody: cgroups in `QUARANTINE` (a pod's cgroup, which
//! covers all its containers) lose the network. Packets of their sockets are
//! dropped in and out by `cgroup_skb` programs at the root of the cgroup v2
//! tree, connections opened before the decision included, and the connect
//! hooks deny new connects and sends outright. Packet sockets (`AF_PACKET`,
//! and the legacy `SOCK_PACKET`) send and receive below the IP stack, where
//! no `cgroup_skb` program runs: a quarantined task that asks for one is
//! killed on the `socket()` syscall's tracepoint (raw IP sockets need no
//! such guard, their packets pass the `cgroup_skb` filters). One packet
//! leaves: the reset of a connection the daemon tears down.
use aya_ebpf::{
    helpers::{
        bpf_send_signal,
        generated::{bpf_sk_fullsock, bpf_skb_ancestor_cgroup_id},
    },
    macros::{cgroup_skb, raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, SkBuffContext, TracePointContext},
};
use sensor_common::MAX_CGROUP_LEVEL;

use crate::maps::{QUARANTINE, QUARANTINE_DROPS};

/// Whether cgroup `id` is quarantined.
#[inline(always)]
fn quarantined(id: u64) -> bool {
    // SAFETY: presence test on a u8 value.
    id != 0 && unsafe { QUARANTINE.get(&id) }.is_some()
}

/// Whether any cgroup is quarantined: one array lookup, so that the
/// per-packet and per-connect walks cost nothing while none is.
#[inline(always)]
fn active() -> bool {
    crate::maps::config().is_some_and(|c| c.quarantine_active != 0)
}

/// Whether the current task is under a quarantined cgroup.
#[inline(always)]
pub fn current_quarantined<const MODERN: bool>() -> bool {
    active() && crate::cgroups::any::<MODERN>(quarantined)
}

fn skb_quarantined(ctx: &SkBuffContext) -> bool {
    if !active() {
        return false;
    }
    for level in 0..MAX_CGROUP_LEVEL {
        // SAFETY: the skb of this program's context.
        let id = unsafe { bpf_skb_ancestor_cgroup_id(ctx.skb.skb.cast(), level) };
        if id == 0 {
            return false;
        }
        if quarantined(id) {
            return true;
        }
    }
    false
}

/// Counts one refusal at `QUARANTINE_DROPS` index `kind` (the daemon's
/// `sensor_quarantine_refusals_total`).
#[inline(always)]
fn count(kind: u32) {
    if let Some(n) = QUARANTINE_DROPS.get_ptr_mut(kind) {
        // SAFETY: per-CPU counter.
        unsafe { *n += 1 };
    }
}

/// 1 passes the packet, 0 drops it.
fn filter(ctx: &SkBuffContext, direction: u32) -> i32 {
    if !skb_quarantined(ctx) || (direction == EGRESS && bare_reset(ctx)) {
        return 1;
    }
    count(direction);
    0
}

const EGRESS: u32 = 0;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const SOCK_STREAM: u32 = 1;
const TCP_RST: u8 = 0x04;

/// Whether the packet is a reset without payload from a kernel TCP socket:
/// what a connection the daemon tears down at isolation sends its peer
/// (`antibody/teardown.rs`), so that the peer stops waiting. A raw socket
/// cannot pass for one (its type is not `SOCK_STREAM`), and a reset carries
/// nothing the pod chooses but the connection it ends.
fn bare_reset(ctx: &SkBuffContext) -> bool {
    // SAFETY: the context's socket field, which the verifier types as a
    // nullable socket pointer.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a socket pointer from the context, checked above.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return false;
    }
    // SAFETY: fields of a full socket, read as the u32s the verifier allows.
    let (ty, proto) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*full).type_)),
            core::ptr::read_volatile(core::ptr::addr_of!((*full).protocol)),
        )
    };
    if ty != SOCK_STREAM || proto != u32::from(IPPROTO_TCP) {
        return false;
    }
    // The IP header, then where TCP starts and how long the segment is.
    let (tcp, segment) = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => {
            let (Ok(vihl), Ok(p), Ok(total)) =
                (ctx.load::<u8>(0), ctx.load::<u8>(9), ctx.load::<u16>(2))
            else {
                return false;
            };
            let ihl = usize::from(vihl & 0xf) * 4;
            if p != IPPROTO_TCP {
                return false;
            }
            (ihl, usize::from(u16::from_be(total)).saturating_sub(ihl))
        }
        ETH_P_IPV6 => {
            let (Ok(next), Ok(plen)) = (ctx.load::<u8>(6), ctx.load::<u16>(4)) else {
                return false;
            };
            if next != IPPROTO_TCP {
                return false;
            }
            (40, usize::from(u16::from_be(plen)))
        }
        _ => return false,
    };
    let (Ok(doff), Ok(flags)) = (ctx.load::<u8>(tcp + 12), ctx.load::<u8>(tcp + 13)) else {
        return false;
    };
    flags & TCP_RST != 0 && segment == usize::from(doff >> 4) * 4
}

const AF_INET: u64 = 2;
const AF_PACKET: u64 = 17;
/// `socket(AF_INET, SOCK_PACKET, ...)`, which the kernel turns into a packet
/// socket.
const SOCK_PACKET: u64 = 10;
/// `type` carries SOCK_NONBLOCK and SOCK_CLOEXEC above these bits.
const SOCK_TYPE_MASK: u64 = 0xf;
/// Offsets in `syscalls:sys_enter_socket`'s record: after the common header
/// and `__syscall_nr`, the arguments as longs.
const ARG_FAMILY: usize = 16;
const ARG_TYPE: usize = 24;
/// x86_64's `socket` syscall number, and where `pt_regs` holds its first
/// two arguments (`di`, `si`).
const NR_SOCKET: u64 = 41;
const REG_DI: u32 = 14 * 8;
const REG_SI: u32 = 13 * 8;
/// `QUARANTINE_DROPS` index of the packet sockets refused.
const PACKET_SOCKETS: u32 = 2;
/// `QUARANTINE_DROPS` index of the connects and sends denied.
const CONNECTS_DENIED: u32 = 3;

/// Counts a quarantined task's denied connect or send, which makes no
/// record: a quarantined pod that keeps trying must not flood the ring.
#[inline(always)]
pub fn count_denied() {
    count(CONNECTS_DENIED);
}

/// `syscalls:sys_enter_socket`: a quarantined task asking for a packet
/// socket is killed before it can use it (the signal lands as the syscall
/// returns, and the socket dies with the task). From Linux 5.15, where the
/// perf event attaches as a bpf link and is pinned with the set.
#[tracepoint(category = "syscalls", name = "sys_enter_socket")]
pub fn snsr_q_socket(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0;
    }
    // SAFETY: offsets inside the tracepoint's record.
    let (family, ty) = unsafe {
        (
            ctx.read_at::<u64>(ARG_FAMILY).unwrap_or(0),
            ctx.read_at::<u64>(ARG_TYPE).unwrap_or(0),
        )
    };
    guard(family, ty);
    0
}

/// The same guard before Linux 5.15, on the raw `sys_enter` tracepoint: a
/// bpf link, pinned with the set like the other programs, so it holds while
/// no daemon runs (a perf event cannot be pinned on these kernels). It runs
/// for every syscall and returns at once for all but `socket`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn snsr_q_socket_raw(ctx: RawTracePointContext) -> i32 {
    let nr: u64 = ctx.arg(1);
    if nr != NR_SOCKET || !active() {
        return 0;
    }
    let regs: *const u8 = ctx.arg(0);
    let family = crate::kernel::read::<u64>(regs, REG_DI).unwrap_or(0);
    let ty = crate::kernel::read::<u64>(regs, REG_SI).unwrap_or(0);
    guard(family, ty);
    0
}

/// Kills the current task if it asks for a packet socket from a
/// quarantined cgroup.
#[inline(always)]
fn guard(family: u64, ty: u64) {
    let packet = family == AF_PACKET || (family == AF_INET && ty & SOCK_TYPE_MASK == SOCK_PACKET);
    // The walk, not the ancestor helper: tracing programs lack it on 5.10.
    if !packet || !crate::cgroups::any::<false>(quarantined) {
        return;
    }
    // SAFETY: signals the current task.
    unsafe { bpf_send_signal(9) };
    count(PACKET_SOCKETS);
}

#[cgroup_skb(egress)]
pub fn snsr_q_egress(ctx: SkBuffContext) -> i32 {
    filter(&ctx, EGRESS)
}

#[cgroup_skb(ingress)]
pub fn snsr_q_ingress(ctx: SkBuffContext) -> i32 {
    filter(&ctx, 1)
}
