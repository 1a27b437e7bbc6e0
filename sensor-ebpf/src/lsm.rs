//! BPF-LSM `bprm_check_security`: Override on exec. The exec is refused
//! before it happens, so the caller survives and its `execve` fails with
//! the policy's errno (Tetragon's semantics for Override on
//! `security_bprm_check` and `bprm_check_security`). Loaded only where the
//! kernel has BPF-LSM active; elsewhere such policies are refused at load.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, generated::bpf_ringbuf_output},
    macros::lsm,
    programs::LsmContext,
};
use sensor_common::{kind, ExecEvent, PATH_MAX};

use crate::kernel::{off, read_ptr};
use crate::maps::{count_lost, wakeup_flags, EVENTS, EXEC_DATA_CAP, EXEC_SCRATCH, PATH_SCRATCH};
use crate::{path, reflex};

const HEADER: usize = core::mem::size_of::<ExecEvent>();

/// `int bprm_check_security(struct linux_binprm *bprm)`, with the previous
/// LSM's verdict as the last argument.
#[lsm(hook = "bprm_check_security")]
pub fn snsr_lsm_bprm(ctx: LsmContext) -> i32 {
    on_bprm::<true>(&ctx)
}

/// The same program for kernels without `bpf_loop` (see `looping`).
#[lsm(hook = "bprm_check_security")]
pub fn snsr_lsm_bprm_compat(ctx: LsmContext) -> i32 {
    on_bprm::<false>(&ctx)
}

/// The verdict: 0 or a negative errno, which newer verifiers check is in
/// [-4095, 0] (so it is computed in 64 bits from a bounded errno).
#[inline(always)]
fn on_bprm<const MODERN: bool>(ctx: &LsmContext) -> i32 {
    // The hook's arguments, as BTF declares them.
    let (bprm, previous): (*const u8, i32) = (ctx.arg(0), ctx.arg(1));
    let errno: i64 = if previous != 0 {
        // Another BPF-LSM program refused already: keep its refusal.
        let p = -(previous as i64);
        if p > 0 && p <= 4095 {
            p
        } else {
            1
        }
    } else {
        match try_bprm::<MODERN>(bprm) {
            Some(e) => (e as i64) & 0xfff,
            None => 0,
        }
    };
    // Bounded once more where every path meets (the compiler may carry
    // `errno` in a register the verifier knows nothing about on one path),
    // and negated by a subtraction: 6.12's verifier loses every bound
    // through a negation (`r0 = -r0`).
    // SAFETY: reads of our own locals.
    let errno = unsafe { core::ptr::read_volatile(&errno) } & 0xfff;
    let zero = unsafe { core::ptr::read_volatile(&0i64) };
    (zero - errno) as i32
}

#[inline(always)]
fn try_bprm<const MODERN: bool>(bprm: *const u8) -> Option<u32> {
    let cfg = crate::maps::config().copied().unwrap_or_default();
    if cfg.n_override == 0 {
        return None;
    }
    let scratch = EXEC_SCRATCH.get_ptr_mut(0)?;
    let pscratch = PATH_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch owned by this program run.
    let (rec, pbuf) = unsafe { (&mut *scratch, &mut *pscratch) };
    let file = read_ptr(bprm, off!(binprm_file)).ok()?;
    let r = path::resolve::<MODERN>(file.wrapping_add(off!(file_f_path) as usize), pbuf).ok()?;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let scopes = if cfg.n_scopes != 0 {
        reflex::task_scopes::<MODERN>()
    } else {
        0
    };
    let v = reflex::on_bprm_check::<MODERN>(&cfg, tgid, pbuf, r.start, r.truncated, scopes);
    if v.errno == 0 {
        return None;
    }
    // The record: the calling process and the binary it was refused.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let plen = r.len() & (PATH_MAX - 1);
    let ev = &mut rec.event;
    crate::exec::fill_header(ev, kind::EXEC_DENIED, task);
    ev.hits = v.hits;
    ev.path_len = plen as u32;
    // SAFETY: plen < PATH_MAX fits the record's data.
    unsafe { crate::exec::copy_from(rec.data.as_mut_ptr(), 0, &pbuf.buf, r.start, plen) };
    let size = (HEADER + plen) & (EXEC_DATA_CAP - 1);
    // SAFETY: size < the scratch record's size.
    let rc = unsafe {
        bpf_ringbuf_output(
            (&raw const EVENTS).cast_mut().cast(),
            scratch.cast(),
            size as u64,
            wakeup_flags(true),
        )
    };
    if rc != 0 {
        count_lost(kind::EXEC);
    }
    Some(v.errno)
}
