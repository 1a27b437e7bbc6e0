//! The caller's PID lineage for `matchPIDs`: its PID and its ancestors',
//! as the host numbers them and as the caller's PID namespace does (there
//! the walk stops at the first ancestor outside the namespace: a
//! `kubectl exec`'s shell has none inside, a container init's children
//! have PID 1).
use aya_ebpf::helpers::bpf_get_current_task;
use sensor_common::{pid_flags, PidFilter, LINEAGE_DEPTH, PID_VALUES};

use crate::kernel::{off, read, read_ptr};
use crate::maps::SYS_EVAL;

#[repr(C)]
pub struct Lineage {
    host: [u32; LINEAGE_DEPTH],
    ns: [u32; LINEAGE_DEPTH],
    n_host: u64,
    n_ns: u64,
    /// The caller's PID namespace (`struct pid_namespace *`).
    ns_ptr: u64,
    /// The next task to read (a thread group leader), 0 when done.
    cursor: u64,
}

crate::looping::forms!(step, step_callback, snsr_loop_sys_lineage);

/// Reads the lineage of the current task.
#[inline(always)]
pub fn read_lineage<const MODERN: bool>(l: &mut Lineage) {
    l.n_host = 0;
    l.n_ns = 0;
    l.ns_ptr = 0;
    // SAFETY: the helper returns the current task.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    l.cursor = read_ptr(task, off!(task_group_leader)).unwrap_or(core::ptr::null()) as u64;
    crate::looping::repeat::<MODERN>(LINEAGE_DEPTH as u32, step_callback, snsr_loop_sys_lineage);
}

/// One process of the lineage; returns 1 at its end.
#[inline(always)]
fn step(index: u64) -> i64 {
    let Some(ep) = SYS_EVAL.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch owned by this program run.
    let l = unsafe { &mut (*ep).lineage };
    let t = l.cursor as *const u8;
    if t.is_null() {
        return 1;
    }
    let i = index as usize & (LINEAGE_DEPTH - 1);
    let Ok(tgid) = read::<u32>(t, off!(task_tgid)) else {
        return 1;
    };
    if tgid == 0 {
        return 1; // the idle task: above PID 1
    }
    l.host[i] = tgid;
    l.n_host = i as u64 + 1;
    if l.n_ns == i as u64 {
        if let Some((nr, ns)) = ns_pid(t) {
            if i == 0 {
                l.ns_ptr = ns;
            }
            if ns == l.ns_ptr {
                l.ns[i] = nr;
                l.n_ns = i as u64 + 1;
            }
        }
    }
    let parent = read_ptr(t, off!(task_real_parent)).unwrap_or(core::ptr::null());
    l.cursor = read_ptr(parent, off!(task_group_leader)).unwrap_or(core::ptr::null()) as u64;
    0
}

/// A task's PID in its own namespace, and that namespace.
#[inline(always)]
fn ns_pid(t: *const u8) -> Option<(u32, u64)> {
    let pid = read_ptr(t, off!(task_thread_pid)).ok()?;
    let level = read::<u32>(pid, off!(pid_level)).ok()? & 63;
    let upid = off!(pid_numbers) + level * off!(upid_size);
    let nr = read::<u32>(pid, upid).ok()?;
    let ns = read::<u64>(pid, upid + off!(upid_ns)).ok()?;
    Some((nr, ns))
}

/// Whether `matchPIDs` entry `f` passes for this lineage.
#[inline(always)]
pub fn pid_matches(f: &PidFilter, l: &Lineage) -> bool {
    let (pids, n) = if f.flags & pid_flags::NAMESPACE != 0 {
        (&l.ns, l.n_ns as usize)
    } else {
        (&l.host, l.n_host as usize)
    };
    let depth = if f.flags & pid_flags::FOLLOW != 0 {
        n
    } else if n > 0 {
        1
    } else {
        0
    };
    let mut found = false;
    for (i, pid) in pids.iter().enumerate() {
        for v in 0..PID_VALUES {
            found |= i < depth && v < f.n as usize && *pid == f.values[v];
        }
    }
    found != (f.negate != 0)
}
