//! The node-local antibody: cgroups in `QUARANTINE` (a pod's cgroup, which
//! covers all its containers) lose the network. Packets of their sockets are
//! dropped in and out by `cgroup_skb` programs at the root of the cgroup v2
//! tree, connections opened before the decision included, and the connect
//! hooks deny new connects and sends outright.
use aya_ebpf::{
    helpers::generated::bpf_skb_ancestor_cgroup_id, macros::cgroup_skb, programs::SkBuffContext,
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

/// 1 passes the packet, 0 drops it.
fn filter(ctx: &SkBuffContext, direction: u32) -> i32 {
    if !skb_quarantined(ctx) {
        return 1;
    }
    if let Some(n) = QUARANTINE_DROPS.get_ptr_mut(direction) {
        // SAFETY: per-CPU counter.
        unsafe { *n += 1 };
    }
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
