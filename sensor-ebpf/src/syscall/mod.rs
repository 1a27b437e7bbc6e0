//! The syscall family: Tetragon's kprobes with `syscall: true` on `sys_*`
//! calls and its `raw_syscalls/sys_enter` tracepoints, all run here on the
//! raw `sys_enter` tracepoint, which every kernel from 5.10 has and which
//! attaches as a pinnable bpf link (kprobes are missing on some kernels,
//! this one included). One array lookup by syscall number says which
//! selectors apply; a syscall no policy names costs that lookup alone.
//! A matching selector posts a record with the raw arguments, and the
//! strings and buffers the policy reads from user memory (`user`), and
//! sends its signal, which lands before the syscall returns to user space.
//! The send syscalls also feed `tcp_sendmsg` hooks (`sock::on_send`).
mod lineage;
pub mod ret;
mod user;

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_send_signal, generated::bpf_ringbuf_output,
    },
    macros::raw_tracepoint,
    maps::lpm_trie::Key,
    programs::RawTracePointContext,
};
use sensor_common::{
    arg_read, int_op, kind, match_kind, sys_needs, ArgStrFilter, IntFilter, NsFilter, ProcState,
    SysNr, SysReturning, SyscallEvent, INT_VALUES, MAX_ARG_FILTERS, MAX_NS_FILTERS,
    MAX_PID_FILTERS, MAX_SELECTORS, NS_KINDS, NS_VALUES, STR_KEY_LEN, SYSCALL_ARGS, SYSCALL_NRS,
    SYS_BLOB_MAX, SYS_DATA_CAP,
};

use crate::kernel::read;
use crate::maps::{
    count_lost, wakeup_flags, EVENTS, PROCS, SYS_EVAL, SYS_NRS, SYS_RETURNING, SYS_SELECTORS,
};

const HEADER: usize = core::mem::size_of::<SyscallEvent>();

/// Indexes of [`SysEval::str_hits`].
const STR_EQUAL_HITS: usize = 0;
const STR_PREFIX_HITS: usize = 1;
const STR_POSTFIX_HITS: usize = 2;

/// Where x86_64's `pt_regs` holds the six syscall arguments: di, si, dx,
/// r10, r8, r9.
pub(crate) const ARG_REGS: [u32; SYSCALL_ARGS] = [14 * 8, 13 * 8, 12 * 8, 7 * 8, 9 * 8, 8 * 8];

/// `sys_enter(struct pt_regs *regs, long id)`; modern form (`bpf_loop`).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn snsr_syscall(ctx: RawTracePointContext) -> i32 {
    let _ = on_enter::<true>(&ctx);
    0
}

/// The same before Linux 5.17 (see `looping`).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn snsr_syscall_compat(ctx: RawTracePointContext) -> i32 {
    let _ = on_enter::<false>(&ctx);
    0
}

/// The selector loop's state, in a map for the same reason as `reflex::Eval`.
#[repr(C)]
pub struct SysEval {
    event: SyscallEvent,
    /// The copies of user memory, right after the header so that one
    /// output sends both; slack past the cap lets a bounded copy land
    /// without an exact-size proof.
    data: [u8; SYS_DATA_CAP + 2 * SYS_BLOB_MAX],
    /// Bytes of `data` in use.
    used: u64,
    /// Where in `data` the `fd` argument's path is.
    fd_off: u64,
    /// What this syscall number reads and which selectors apply.
    nr: SysNr,
    mask: u64,
    state: ProcState,
    hooks_done: u64,
    scopes: u64,
    bank: u64,
    /// Per string argument: the selectors whose Equal, Prefix and Postfix
    /// sets hold it.
    str_hits: [[u64; 3]; SYSCALL_ARGS],
    forward: Key<[u8; STR_KEY_LEN]>,
    _slack1: [u8; 256],
    reversed: Key<[u8; STR_KEY_LEN]>,
    _slack2: [u8; 256],
    lineage: lineage::Lineage,
    /// The caller's namespaces, where a selector filters on them.
    ns: [u32; NS_KINDS],
}

#[inline(always)]
fn on_enter<const MODERN: bool>(ctx: &RawTracePointContext) -> Option<()> {
    let nr: u64 = ctx.arg(1);
    if nr >= SYSCALL_NRS as u64 {
        return None;
    }
    let cfg = crate::maps::config()?;
    if crate::sock::is_send(nr) {
        // `tcp_sendmsg` hooks ride on this program (see `sock`).
        let _ = crate::sock::on_send::<MODERN>(nr, ctx.arg(0), cfg);
    }
    if cfg.n_sys_selectors == 0 {
        return None;
    }
    let bank = cfg.bank & 1;
    let info = *SYS_NRS.get(bank * SYSCALL_NRS as u32 + nr as u32)?;
    if info.selectors == 0 || !crate::reflex::in_scope::<MODERN>(cfg) {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == cfg.sensor_tgid {
        return None;
    }
    let regs: *const u8 = ctx.arg(0);
    let ep = SYS_EVAL.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch owned by this program run.
    let ev = unsafe { &mut *ep };
    ev.event = SyscallEvent {
        kind: kind::SYSCALL,
        pid: tgid,
        tid: pid_tgid as u32,
        uid: bpf_get_current_uid_gid() as u32,
        ktime: unsafe { bpf_ktime_get_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        hits: 0,
        nr: nr as u32,
        signal: 0,
        args: [0; SYSCALL_ARGS],
        lens: [0; SYSCALL_ARGS],
        read: 0,
        truncated: 0,
        _pad: 0,
        returning: 0,
    };
    for (i, off) in ARG_REGS.iter().enumerate() {
        ev.event.args[i] = read::<u64>(regs, *off).unwrap_or(0);
    }
    ev.nr = info;
    ev.used = 0;
    ev.mask = info.selectors;
    ev.bank = bank as u64;
    ev.hooks_done = 0;
    ev.scopes = if cfg.n_scopes != 0 {
        crate::reflex::task_scopes::<MODERN>()
    } else {
        0
    };
    // SAFETY: ProcState is plain data.
    ev.state = unsafe { PROCS.get(&tgid) }.copied().unwrap_or_default();
    if info.reads != [0; SYSCALL_ARGS] {
        if let Some(i) = info.reads.iter().position(|r| *r == arg_read::FD) {
            let _ = user::copy_fd::<MODERN>(ev, i);
        }
        user::copy_all::<MODERN>();
    }
    if info.needs & sys_needs::NAMESPACES != 0 {
        // SAFETY: helper without arguments.
        let task = unsafe { bpf_get_current_task() } as *const u8;
        ev.ns = crate::exec::read_ns(task);
    }
    if info.needs & sys_needs::LINEAGE != 0 {
        lineage::read_lineage::<MODERN>(&mut ev.lineage);
    }
    crate::looping::repeat::<MODERN>(MAX_SELECTORS as u32, eval_callback, snsr_loop_sys_selector);
    if ev.event.hits == 0 {
        return None;
    }
    if ev.event.returning != 0 {
        let waiting = SysReturning {
            mask: ev.event.returning,
            bank,
            nr: nr as u32,
        };
        if SYS_RETURNING.insert(&pid_tgid, &waiting, 0).is_err() {
            count_lost(kind::SYSCALL);
        }
    }
    let signal = ev.event.signal;
    let used = if ev.used > SYS_DATA_CAP as u64 {
        SYS_DATA_CAP
    } else {
        ev.used as usize
    };
    // SAFETY: HEADER + used <= the scratch record's size.
    let r = unsafe {
        bpf_ringbuf_output(
            (&raw const EVENTS).cast_mut().cast(),
            (ev as *mut SysEval).cast(),
            (HEADER + used) as u64,
            wakeup_flags(true),
        )
    };
    if r != 0 {
        count_lost(kind::SYSCALL);
    }
    if signal != 0 {
        // SAFETY: signals the current task, the one in the syscall.
        unsafe { bpf_send_signal(signal) };
    }
    Some(())
}

/// The argument as the filter reads it: a 32-bit argument's low half,
/// sign-extended when signed, so that 64-bit comparisons hold.
#[inline(always)]
fn normalized(f: &IntFilter, v: u64) -> u64 {
    match (f.width32 != 0, f.signed != 0) {
        (true, true) => v as u32 as i32 as i64 as u64,
        (true, false) => v as u32 as u64,
        _ => v,
    }
}

#[inline(always)]
fn less(f: &IntFilter, a: u64, b: u64) -> bool {
    if f.signed != 0 {
        (a as i64) < (b as i64)
    } else {
        a < b
    }
}

#[inline(always)]
pub(crate) fn int_matches(f: &IntFilter, args: &[u64; SYSCALL_ARGS]) -> bool {
    let Some(raw) = args.get(f.arg as usize) else {
        return false;
    };
    let v = normalized(f, *raw);
    let n = f.n as usize;
    let mut any = false;
    match f.op {
        int_op::EQUAL | int_op::NOT_EQUAL => {
            for i in 0..INT_VALUES {
                any |= i < n && v == f.values[i];
            }
            any == (f.op == int_op::EQUAL)
        }
        int_op::GT => less(f, f.values[0], v),
        int_op::LT => less(f, v, f.values[0]),
        int_op::MASK => {
            for i in 0..INT_VALUES {
                any |= i < n && v & f.values[i] != 0;
            }
            any
        }
        int_op::IN_RANGE | int_op::NOT_IN_RANGE => {
            for p in 0..INT_VALUES / 2 {
                let (lo, hi) = (f.values[2 * p], f.values[2 * p + 1]);
                any |= 2 * p < n && !less(f, v, lo) && !less(f, hi, v);
            }
            any == (f.op == int_op::IN_RANGE)
        }
        _ => false,
    }
}

/// Whether string filter `f` passes for the selector at `bit`. An argument
/// that could not be read holds no value; one cut short has an unknown
/// end, so a Postfix test fails closed, as for truncated paths.
#[inline(always)]
fn str_matches(ev: &SysEval, f: &ArgStrFilter, bit: u64) -> bool {
    let arg = f.arg as usize;
    if arg >= SYSCALL_ARGS {
        return false;
    }
    let read = ev.event.read & (1 << arg) != 0;
    let cut = ev.event.truncated & (1 << arg) != 0;
    let hits = match f.filter.kind {
        match_kind::EQUAL => ev.str_hits[arg][STR_EQUAL_HITS],
        match_kind::PREFIX => ev.str_hits[arg][STR_PREFIX_HITS],
        match_kind::POSTFIX => {
            if read && cut {
                return true;
            }
            ev.str_hits[arg][STR_POSTFIX_HITS]
        }
        _ => return false,
    };
    (read && hits & bit != 0) != (f.filter.negate != 0)
}

/// Whether the caller's namespace of the filter's kind is (not) one of
/// its values.
#[inline(always)]
fn ns_matches(f: &NsFilter, ns: &[u32; NS_KINDS]) -> bool {
    let Some(&have) = ns.get(f.kind as usize) else {
        return false;
    };
    let mut found = false;
    for i in 0..NS_VALUES {
        if i < f.n as usize && f.values[i] == have {
            found = true;
        }
    }
    found != (f.negate != 0)
}

crate::looping::forms!(eval_selector, eval_callback, snsr_loop_sys_selector);

/// One syscall selector; returns 1 to stop the loop.
#[inline(always)]
fn eval_selector(index: u64) -> i64 {
    let Some(ep) = SYS_EVAL.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch owned by this program run.
    let ev = unsafe { &mut *ep };
    let s = index as u32 & (MAX_SELECTORS as u32 - 1);
    let bit = 1u64 << s;
    if ev.mask & !(bit - 1) == 0 {
        return 1; // no selector at or above this one applies
    }
    if ev.mask & bit == 0 {
        return 0;
    }
    let bank = ev.bank as u32 & 1;
    let Some(sel) = SYS_SELECTORS.get(bank * MAX_SELECTORS as u32 + s) else {
        return 1;
    };
    let hook_bit = 1u64 << (sel.hook & 63);
    if ev.hooks_done & hook_bit != 0 || !crate::reflex::scope_applies(sel.scope, ev.scopes) {
        return 0;
    }
    let follow = if sel.follow != 0 {
        ev.state.sys_follow
    } else {
        0
    };
    if !crate::reflex::binaries_admit(sel.binaries, ev.state.sys_bin_in | follow, bit) {
        return 0;
    }
    for a in 0..MAX_ARG_FILTERS {
        if a >= sel.n_filters as usize {
            break;
        }
        if !int_matches(&sel.filters[a], &ev.event.args) {
            return 0;
        }
    }
    for a in 0..MAX_ARG_FILTERS {
        if a >= sel.n_strs as usize {
            break;
        }
        if !str_matches(ev, &sel.strs[a], bit) {
            return 0;
        }
    }
    for p in 0..MAX_PID_FILTERS {
        if p >= sel.n_pids as usize {
            break;
        }
        if !lineage::pid_matches(&sel.pids[p], &ev.lineage) {
            return 0;
        }
    }
    for n in 0..MAX_NS_FILTERS {
        if n >= sel.n_ns as usize {
            break;
        }
        if !ns_matches(&sel.ns[n], &ev.ns) {
            return 0;
        }
    }
    ev.hooks_done |= hook_bit;
    ev.event.hits |= bit;
    if sel.returns != 0 {
        ev.event.returning |= bit;
    }
    if sel.signal != 0 && ev.event.signal != 9 {
        ev.event.signal = sel.signal;
    }
    0
}
