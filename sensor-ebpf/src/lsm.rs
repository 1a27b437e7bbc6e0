//! BPF-LSM `bprm_check_security`: the exec selectors decided before the
//! exec. Override refuses it, so the caller survives and its `execve`
//! fails with the policy's errno (Tetragon's semantics for Override on
//! `security_bprm_check` and `bprm_check_security`); Post with `imaHash`
//! waits for the binary's IMA hash. Loaded only where the kernel has
//! BPF-LSM active; elsewhere such policies are refused at load.
//!
//! The hash needs a sleepable program (`bpf_ima_file_hash` reads the
//! file), which cannot read the selectors' LPM tries. So the selector
//! program, on a hit that asks for the hash, leaves its record and verdict
//! in `IMA_PENDING` and allows; the hasher, attached before it on the same
//! hook and so run after it (a trampoline runs its newest program first),
//! adds the digest, sends the record and returns the verdict.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task,
        generated::{bpf_ima_file_hash, bpf_ringbuf_output},
    },
    macros::{lsm, map},
    maps::{HashMap, PerCpuArray},
    programs::LsmContext,
};
use sensor_common::{kind, ExecEvent, ImaDigest, IMA_DIGEST_MAX, PATH_MAX};

use crate::kernel::{off, read_ptr};
use crate::maps::{count_lost, wakeup_flags, EVENTS, PATH_SCRATCH};
use crate::{path, reflex};

const HEADER: usize = core::mem::size_of::<ExecEvent>();
const DIGEST: usize = core::mem::size_of::<ImaDigest>();

/// An exec record decided in the hook, and what the hasher needs to finish
/// it. From `digest` on it is an `EXEC_HASHED` record; from `event` on an
/// `EXEC_DENIED` one.
#[repr(C)]
pub struct BprmRecord {
    /// The `linux_binprm` the selectors saw: the hasher drops an entry
    /// left by another exec.
    bprm: u64,
    errno: u32,
    _pad: u32,
    digest: ImaDigest,
    event: ExecEvent,
    data: [u8; PATH_MAX],
}

/// Where the selector program builds its record.
#[map]
static BPRM_SCRATCH: PerCpuArray<BprmRecord> = PerCpuArray::with_max_entries(1, 0);

/// Records waiting for the hasher, by thread. An entry lives only while one
/// exec passes from one program to the next. The loader sizes it (1 where
/// no hasher runs); when it is full the exec is decided at once, unhashed.
#[map]
static IMA_PENDING: HashMap<u64, BprmRecord> = HashMap::with_max_entries(64, 0);

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

/// The hasher: finishes a record the selector program left for this
/// exec. Sleepable, and so without the selector maps: it uses only
/// `IMA_PENDING`, the ring buffer and the loss counters (a loss counted
/// here can race a preempting program on this CPU and go uncounted).
#[lsm(hook = "bprm_check_security", sleepable)]
pub fn snsr_lsm_ima(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    let errno = if previous != 0 {
        refusal(previous)
    } else {
        hash_pending(&ctx).unwrap_or(0) as i64
    };
    verdict(errno)
}

#[inline(always)]
fn hash_pending(ctx: &LsmContext) -> Option<u32> {
    let key = bpf_get_current_pid_tgid();
    let pending = IMA_PENDING.get_ptr_mut(&key)?;
    // SAFETY: this thread's own entry: no other program writes it.
    let p = unsafe { &mut *pending };
    // A typed load (no probe_read): `bpf_ima_file_hash` takes the file
    // only as the verifier's BTF-typed pointer, walked from the argument.
    let bprm: *const u8 = ctx.arg(0);
    if p.bprm != bprm as u64 {
        let _ = IMA_PENDING.remove(&key);
        return None;
    }
    let at = off!(binprm_file) as usize;
    // SAFETY: `binprm_file` is the offset of `file` in `linux_binprm`.
    let file = unsafe { *(bprm.wrapping_add(at) as *const *mut u8) };
    let errno = p.errno;
    // SAFETY: the digest is IMA_DIGEST_MAX bytes of this entry.
    let algo = unsafe {
        bpf_ima_file_hash(
            file.cast(),
            p.digest.digest.as_mut_ptr().cast(),
            IMA_DIGEST_MAX as u32,
        )
    };
    p.digest.kind = kind::EXEC_HASHED;
    p.digest.algo = algo as i32;
    let plen = p.event.path_len as usize & (PATH_MAX - 1);
    // SAFETY: the digest, header and path lie within the entry.
    let rc = unsafe {
        bpf_ringbuf_output(
            (&raw const EVENTS).cast_mut().cast(),
            (&raw mut p.digest).cast(),
            (DIGEST + HEADER + plen) as u64,
            wakeup_flags(true),
        )
    };
    if rc != 0 {
        count_lost(kind::EXEC);
    }
    let _ = IMA_PENDING.remove(&key);
    Some(errno)
}

/// Another BPF-LSM program's refusal, kept as an errno.
#[inline(always)]
fn refusal(previous: i32) -> i64 {
    let p = -(previous as i64);
    if p > 0 && p <= 4095 {
        p
    } else {
        1
    }
}

/// The hook's return value for `errno`: 0 or a negative errno, which newer
/// verifiers check is in [-4095, 0]. Bounded once more where every path
/// meets (the compiler may carry `errno` in a register the verifier knows
/// nothing about on one path), and negated by a subtraction: 6.12's
/// verifier loses every bound through a negation (`r0 = -r0`).
#[inline(always)]
fn verdict(errno: i64) -> i32 {
    // SAFETY: reads of our own locals.
    let errno = unsafe { core::ptr::read_volatile(&errno) } & 0xfff;
    let zero = unsafe { core::ptr::read_volatile(&0i64) };
    (zero - errno) as i32
}

#[inline(always)]
fn on_bprm<const MODERN: bool>(ctx: &LsmContext) -> i32 {
    // The hook's arguments, as BTF declares them.
    let (bprm, previous): (*const u8, i32) = (ctx.arg(0), ctx.arg(1));
    let errno: i64 = if previous != 0 {
        // Another BPF-LSM program refused already: keep its refusal.
        refusal(previous)
    } else {
        match try_bprm::<MODERN>(bprm) {
            Some(e) => (e as i64) & 0xfff,
            None => 0,
        }
    };
    verdict(errno)
}

/// The selectors' verdict on this exec, and its record: sent at once, or
/// left for the hasher (which then returns the verdict: `None` here).
#[inline(always)]
fn try_bprm<const MODERN: bool>(bprm: *const u8) -> Option<u32> {
    let cfg = crate::maps::config().copied().unwrap_or_default();
    if cfg.n_override == 0 {
        return None;
    }
    let scratch = BPRM_SCRATCH.get_ptr_mut(0)?;
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
    if v.hits == 0 {
        return None;
    }
    // The record: the calling process and the binary it tried.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let plen = r.len() & (PATH_MAX - 1);
    let ev = &mut rec.event;
    crate::exec::fill_header(ev, kind::EXEC_DENIED, task);
    ev.hits = v.hits;
    ev.signal = v.signal;
    ev.path_len = plen as u32;
    // SAFETY: plen < PATH_MAX fits the record's data.
    unsafe { crate::exec::copy_from(rec.data.as_mut_ptr(), 0, &pbuf.buf, r.start, plen) };
    if v.ima != 0 {
        rec.bprm = bprm as u64;
        rec.errno = v.errno;
        if IMA_PENDING
            .insert(&bpf_get_current_pid_tgid(), &*rec, 0)
            .is_ok()
        {
            return None;
        }
    }
    // SAFETY: the header and path lie within the record.
    let rc = unsafe {
        bpf_ringbuf_output(
            (&raw const EVENTS).cast_mut().cast(),
            (&raw mut rec.event).cast(),
            (HEADER + plen) as u64,
            wakeup_flags(true),
        )
    };
    if rc != 0 {
        count_lost(kind::EXEC);
    }
    (v.errno != 0).then_some(v.errno)
}
