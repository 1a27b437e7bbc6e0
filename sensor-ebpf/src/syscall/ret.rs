//! The exit side of the syscall family (`return: true`): on the raw
//! `sys_exit` tracepoint, attached only while such a hook is loaded, the
//! selectors that matched at entry and wait for the return are checked
//! against it (`matchReturnArgs`), and one record says which passed. The
//! entry's record, held by the daemon, becomes their events.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use sensor_common::{kind, SyscallReturn, MAX_SELECTORS, SYSCALL_ARGS};

use crate::maps::{count_lost, wakeup_flags, EVENTS, SYS_RET, SYS_RETURNING, SYS_SELECTORS};

/// `sys_exit(struct pt_regs *regs, long ret)`; modern form (`bpf_loop`).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn snsr_sys_return(ctx: RawTracePointContext) -> i32 {
    let _ = on_exit::<true>(&ctx);
    0
}

/// The same before Linux 5.17 (see `looping`).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn snsr_sys_return_compat(ctx: RawTracePointContext) -> i32 {
    let _ = on_exit::<false>(&ctx);
    0
}

/// The return loop's state.
#[repr(C)]
pub struct RetEval {
    record: SyscallReturn,
    mask: u64,
    bank: u64,
}

#[inline(always)]
fn on_exit<const MODERN: bool>(ctx: &RawTracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: plain data.
    let waiting = *unsafe { SYS_RETURNING.get(&pid_tgid) }?;
    let _ = SYS_RETURNING.remove(&pid_tgid);
    let ep = SYS_RET.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch owned by this program run.
    let e = unsafe { &mut *ep };
    let ret: i64 = ctx.arg(1);
    e.record = SyscallReturn {
        kind: kind::SYSCALL_RETURN,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        nr: waiting.nr,
        ktime: unsafe { bpf_ktime_get_ns() },
        ret: ret as u64,
        hits: 0,
    };
    e.mask = waiting.mask;
    e.bank = waiting.bank as u64;
    crate::looping::repeat::<MODERN>(MAX_SELECTORS as u32, ret_callback, snsr_loop_sys_return);
    // Sent even when none passed: the daemon then drops what it held.
    if EVENTS
        .output::<SyscallReturn>(&e.record, wakeup_flags(true))
        .is_err()
    {
        count_lost(kind::SYSCALL);
    }
    Some(())
}

crate::looping::forms!(check_return, ret_callback, snsr_loop_sys_return);

/// Whether waiting selector `index` passes its `matchReturnArgs`.
#[inline(always)]
fn check_return(index: u64) -> i64 {
    let Some(ep) = SYS_RET.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch owned by this program run.
    let e = unsafe { &mut *ep };
    let s = index as u32 & (MAX_SELECTORS as u32 - 1);
    let bit = 1u64 << s;
    if e.mask & !(bit - 1) == 0 {
        return 1;
    }
    if e.mask & bit == 0 {
        return 0;
    }
    let bank = e.bank as u32 & 1;
    let Some(sel) = SYS_SELECTORS.get(bank * MAX_SELECTORS as u32 + s) else {
        return 1;
    };
    let mut args = [0u64; SYSCALL_ARGS];
    args[0] = e.record.ret;
    if sel.ret.op == 0 || super::int_matches(&sel.ret, &args) {
        e.record.hits |= bit;
    }
    0
}
