//! The current task's cgroup and its ancestors, each tested against a map.
//! Modern kernels give the ids by level through
//! `bpf_get_current_ancestor_cgroup_id`; where a program type lacks that
//! helper (tracing programs on 5.10 in the kernel matrix), the same ids
//! come from walking task->cgroups->dfl_cgrp up through cgroup->self.parent
//! at offsets from BTF. Only the set of ids matters to the callers, not
//! their order.
use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_task};
use sensor_common::MAX_CGROUP_LEVEL;

use crate::kernel::{off, read, read_ptr};

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
    let Ok(mut cgrp) =
        read_ptr(task, off!(task_cgroups)).and_then(|cset| read_ptr(cset, off!(css_set_dfl_cgrp)))
    else {
        return false;
    };
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
