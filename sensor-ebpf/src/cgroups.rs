//! A cgroup and its ancestors, each tested against a map: the current
//! task's, or (for packets, which arrive in any task's context) the
//! cgroup of the socket a packet belongs to (`OfSkb`).
//! Modern kernels give the ids by level through
//! `bpf_get_current_ancestor_cgroup_id`; where a program type lacks that
//! helper (tracing programs on 5.10 in the kernel matrix), the same ids
//! come from walking task->cgroups->dfl_cgrp up through cgroup->self.parent
//! at offsets from BTF. Only the set of ids matters to the callers, not
//! their order.
use aya_ebpf::bindings::__sk_buff;
use aya_ebpf::helpers::generated::bpf_skb_ancestor_cgroup_id;
use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_task};
use sensor_common::MAX_CGROUP_LEVEL;

use crate::kernel::{off, read, read_ptr};

/// Whose cgroups a test walks.
pub trait Cgroups {
    /// Calls `f` with each id, the cgroup's own first, until `f` returns
    /// true; returns whether one did.
    fn any(&self, f: impl FnMut(u64) -> bool) -> bool;
}

/// The current task's, with the helper or by walking (see [`any`]).
pub struct Current<const HELPER: bool>;

impl<const HELPER: bool> Cgroups for Current<HELPER> {
    #[inline(always)]
    fn any(&self, f: impl FnMut(u64) -> bool) -> bool {
        any::<HELPER>(f)
    }
}

/// Those of the socket a packet (`__sk_buff`) belongs to.
pub struct OfSkb(pub *mut __sk_buff);

impl Cgroups for OfSkb {
    #[inline(always)]
    fn any(&self, mut f: impl FnMut(u64) -> bool) -> bool {
        // Ancestor levels count from the root; the socket's own cgroup is
        // the deepest, so the walk goes from the root down and stops at
        // the first level the socket's cgroup does not have.
        for level in 0..MAX_CGROUP_LEVEL {
            // SAFETY: the skb of the calling program's context.
            let id = unsafe { bpf_skb_ancestor_cgroup_id(self.0.cast(), level as i32) };
            if id == 0 {
                return false;
            }
            if f(id) {
                return true;
            }
        }
        false
    }
}

/// Those of a kernel `struct cgroup` (a socket's, for a TCP state change
/// made in softirq, where the current task is not the socket's owner).
pub struct OfCgroup(pub *const u8);

impl Cgroups for OfCgroup {
    #[inline(always)]
    fn any(&self, f: impl FnMut(u64) -> bool) -> bool {
        !self.0.is_null() && walk_from(self.0, f)
    }
}

/// Calls `f` with the id of the current task's cgroup and of each ancestor
/// until `f` returns true; returns whether one did.
#[inline(always)]
pub fn any<const HELPER: bool>(mut f: impl FnMut(u64) -> bool) -> bool {
    if HELPER {
        for level in 0..MAX_CGROUP_LEVEL {
            // SAFETY: helper without pointer arguments.
            let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
            if id == 0 {
                return false;
            }
            if f(id) {
                return true;
            }
        }
        return false;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let Ok(cgrp) =
        read_ptr(task, off!(task_cgroups)).and_then(|cset| read_ptr(cset, off!(css_set_dfl_cgrp)))
    else {
        return false;
    };
    walk_from(cgrp, f)
}

/// Calls `f` with the id of kernel cgroup `cgrp` and of each ancestor
/// until `f` returns true; returns whether one did.
#[inline(always)]
fn walk_from(mut cgrp: *const u8, mut f: impl FnMut(u64) -> bool) -> bool {
    for _ in 0..MAX_CGROUP_LEVEL {
        let Ok(id) =
            read_ptr(cgrp, off!(cgroup_kn)).and_then(|kn| read::<u64>(kn, off!(kernfs_node_id)))
        else {
            return false;
        };
        if f(id) {
            return true;
        }
        match read_ptr(cgrp, off!(cgroup_self) + off!(css_parent)) {
            Ok(parent) if !parent.is_null() => match read_ptr(parent, off!(css_cgroup)) {
                Ok(p) => cgrp = p,
                Err(_) => return false,
            },
            _ => return false,
        }
    }
    false
}
