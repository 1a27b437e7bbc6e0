//! Fork and exit: new processes inherit their parent's policy state (so that
//! `followChildren` and matchBinaries hold for children), and the last thread
//! of a process reports the exit status and the terminating signal.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use sensor_common::{kind, ExitEvent, ForkEvent};

use crate::kernel::{off, read, read_ptr};
use crate::maps::{count_lost, set_proc_state, wakeup_flags, EVENTS, PROCS};

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn snsr_fork(ctx: RawTracePointContext) -> i32 {
    let _ = try_fork(&ctx);
    0
}

fn try_fork(ctx: &RawTracePointContext) -> Result<(), i32> {
    let parent: *const u8 = ctx.arg(0);
    let child: *const u8 = ctx.arg(1);
    let child_pid = read::<u32>(child, off!(task_pid))?;
    let child_tgid = read::<u32>(child, off!(task_tgid))?;
    if child_pid != child_tgid {
        return Ok(()); // a thread, not a process
    }
    let ptgid = read::<u32>(parent, off!(task_tgid))?;
    // SAFETY: ProcState is plain data.
    if let Some(state) = unsafe { PROCS.get(&ptgid) }.copied() {
        set_proc_state(child_tgid, &state);
    }
    match EVENTS.reserve::<ForkEvent>(0) {
        Some(mut e) => {
            e.write(ForkEvent {
                kind: kind::FORK,
                pid: child_tgid,
                ppid: ptgid,
                _pad: 0,
                ktime: unsafe { bpf_ktime_get_ns() },
            });
            e.submit(wakeup_flags(false));
        }
        None => count_lost(kind::FORK),
    }
    Ok(())
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn snsr_exit(_ctx: RawTracePointContext) -> i32 {
    let _ = try_exit();
    0
}

fn try_exit() -> Result<(), i32> {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let signal = read_ptr(task, off!(task_signal))?;
    // signal->live reaches zero when the last thread of the group exits.
    if read::<i32>(signal, off!(signal_live))? != 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let exit_code = read::<u32>(task, off!(task_exit_code)).unwrap_or(0);
    let _ = PROCS.remove(&tgid);
    match EVENTS.reserve::<ExitEvent>(0) {
        Some(mut e) => {
            e.write(ExitEvent {
                kind: kind::EXIT,
                pid: tgid,
                tid: pid_tgid as u32,
                exit_code,
                ktime: unsafe { bpf_ktime_get_ns() },
            });
            e.submit(wakeup_flags(false));
        }
        None => count_lost(kind::EXIT),
    }
    Ok(())
}
