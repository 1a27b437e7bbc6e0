//! The node-local antibody: cgroups in `QUARANTINE` (a pod's cgroup, which
//! covers all its containers) lose the network. Packets of their sockets are
//! dropped in and out by `cgroup_skb` programs at the root of the cgroup v2
//! tree, connections opened before the decision included, and the connect
//! hooks deny new connects and sends outright. Packet sockets (`AF_PACKET`,
//! and the legacy `SOCK_PACKET`) send and receive below the IP stack, where
//! no `cgroup_skb` program runs: a quarantined task that asks for one is
//! killed on the `socket()` syscall's tracepoint (raw IP sockets need no
//! such guard, their packets pass the `cgroup_skb` filters).
use aya_ebpf::{
    helpers::{bpf_send_signal, generated::bpf_skb_ancestor_cgroup_id},
    macros::{cgroup_skb, tracepoint},
    programs::{SkBuffContext, TracePointContext},
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
    if !skb_quarantined(ctx) {
        return 1;
    }
    count(direction);
    0
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
/// returns, and the socket dies with the task).
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
    let packet = family == AF_PACKET || (family == AF_INET && ty & SOCK_TYPE_MASK == SOCK_PACKET);
    // The walk, not the ancestor helper: tracing programs lack it on 5.10.
    if !packet || !crate::cgroups::any::<false>(quarantined) {
        return 0;
    }
    // SAFETY: signals the current task.
    unsafe { bpf_send_signal(9) };
    count(PACKET_SOCKETS);
    0
}

#[cgroup_skb(egress)]
pub fn snsr_q_egress(ctx: SkBuffContext) -> i32 {
    filter(&ctx, 0)
}

#[cgroup_skb(ingress)]
pub fn snsr_q_ingress(ctx: SkBuffContext) -> i32 {
    filter(&ctx, 1)
}
