//! The exec reflex: evaluates compiled selectors against the binary being
//! executed and the image that executed it, in the kernel, so that a Sigkill is
//! sent before the new image runs one instruction.
use aya_ebpf::helpers::{bpf_send_signal, generated::bpf_probe_read_kernel};
use sensor_common::{
    match_kind, str_selector, Config, ProcState, StrFilter, MAX_ARG_FILTERS, MAX_SELECTORS,
    MAX_VALUE_LEN, NET_SELECTOR_BASE, PATH_MAX, POD_BIT, POD_UNKNOWN, SLOT_BINARIES,
    SLOT_SYS_BINARIES, STR_KEY_HEADER,
};

use crate::maps::{
    PathScratch, EVAL, EXEC_SELECTORS, KEY_SCRATCH, NET_SELECTORS, POD_SCOPES, PROCS,
    SCOPE_CGROUPS, STR_EQUAL, STR_POSTFIX, STR_PREFIX, SYS_SELECTORS,
};

/// What the reflex decided for one exec.
pub struct Verdict {
    pub hits: u64,
    pub signal: u32,
    /// Override: the errno the exec fails with (BPF-LSM only).
    pub errno: u32,
    /// The hits that asked for the binary's IMA hash (BPF-LSM only).
    pub ima: u64,
}

/// Lookup keys for one path: forward and reversed (in `KEY_SCRATCH`), and
/// the path's length.
#[repr(C)]
pub struct Keys {
    len: u64,
    /// Non-zero when the walk gave up before the root: the path's head is
    /// unknown, so a prefix test cannot say no (see `prefix_unknown`).
    truncated: u64,
}

impl Keys {
    /// Builds the keys from the path in `buf[start..PATH_MAX]`.
    fn build(
        path: &PathScratch,
        start: usize,
        need_reversed: bool,
        truncated: bool,
    ) -> Option<Keys> {
        let scratch = KEY_SCRATCH.get_ptr_mut(0)?;
        let len = PATH_MAX - start;
        // SAFETY: per-CPU scratch owned by this program run.
        let k = unsafe { &mut *scratch };
        zero(&mut k.forward.data);
        let n = if len > MAX_VALUE_LEN {
            MAX_VALUE_LEN
        } else {
            len
        };
        // SAFETY: n <= 254 fits data[2..]; the source is our path buffer.
        unsafe {
            bpf_probe_read_kernel(
                k.forward.data.as_mut_ptr().add(STR_KEY_HEADER).cast(),
                (n & 0xff) as u32,
                path.buf.as_ptr().add(start & (PATH_MAX - 1)).cast(),
            );
        }
        if need_reversed {
            // Unconditional: bytes past the path are ignored by the LPM
            // lookup (its prefix length stops at the path's end), and a
            // branch-free copy is cheap for the verifier.
            for i in 0..MAX_VALUE_LEN {
                k.reversed.data[STR_KEY_HEADER + i] = path.buf[PATH_MAX - 1 - i];
            }
        }
        Some(Keys {
            len: len as u64,
            truncated: truncated as u64,
        })
    }

    /// Whether the path is in the value set of (selector, slot) under `kind`.
    fn contains(&self, kind: u8, selector: u8, slot: u8) -> bool {
        let Some(k) = KEY_SCRATCH.get_ptr_mut(0) else {
            return false;
        };
        // SAFETY: per-CPU scratch owned by this program run.
        let k = unsafe { &mut *k };
        let len = self.len as usize;
        let n = if len > MAX_VALUE_LEN {
            MAX_VALUE_LEN
        } else {
            len
        };
        let bits = ((STR_KEY_HEADER + n) * 8) as u32;
        match kind {
            match_kind::EQUAL => {
                if len > MAX_VALUE_LEN {
                    return false;
                }
                k.forward.data[0] = selector;
                k.forward.data[1] = slot;
                // SAFETY: the value is a plain u8 we only test for presence.
                unsafe { STR_EQUAL.get(&k.forward.data).is_some() }
            }
            match_kind::PREFIX => {
                k.forward.data[0] = selector;
                k.forward.data[1] = slot;
                k.forward.prefix_len = bits;
                STR_PREFIX.get(&k.forward).is_some()
            }
            match_kind::POSTFIX => {
                k.reversed.data[0] = selector;
                k.reversed.data[1] = slot;
                k.reversed.prefix_len = bits;
                STR_POSTFIX.get(&k.reversed).is_some()
            }
            _ => false,
        }
    }

    /// Whether a prefix test of a truncated path: it fails closed. An
    /// exec 130 directories deep under `/tmp` must not slip past a
    /// `Prefix /tmp` kill, nor past a `NotPrefix /usr` one; the selector
    /// fires either way and the event says `truncFilename`.
    fn prefix_unknown(&self, kind: u8) -> bool {
        self.truncated != 0 && kind == match_kind::PREFIX
    }

    fn matches(&self, f: StrFilter, selector: u8, slot: u8) -> bool {
        self.prefix_unknown(f.kind) || self.contains(f.kind, selector, slot) != (f.negate != 0)
    }

    /// Membership of the path in a binaries set, as the selector will read
    /// it (`member != negate` fires): for a truncated path under a prefix
    /// test, whatever makes the selector fire.
    fn in_binaries(&self, f: StrFilter, selector: u8) -> bool {
        self.in_binaries_at(f, selector, SLOT_BINARIES)
    }

    /// As `in_binaries`, for a set kept at `slot`.
    fn in_binaries_at(&self, f: StrFilter, selector: u8, slot: u8) -> bool {
        if self.prefix_unknown(f.kind) {
            return f.negate == 0;
        }
        self.contains(f.kind, selector, slot)
    }
}

fn zero(data: &mut [u8; 256]) {
    let p = data.as_mut_ptr() as *mut u32;
    for i in 0..64 {
        // SAFETY: 64 u32 words cover the 256-byte array, which sits at a
        // 4-byte aligned offset of the key.
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
    }
}

/// The pod-scoped policies that apply to the current task: the union of the
/// `POD_SCOPES` entries of its cgroup and their ancestors, where a kubepods
/// root's entry (`POD_UNKNOWN`) counts only if no pod's entry was met.
#[inline(always)]
pub fn task_scopes<const MODERN: bool>() -> u64 {
    scopes_of(&crate::cgroups::Current::<MODERN>)
}

/// As [`task_scopes`], for the cgroups `of` walks.
#[inline(always)]
pub fn scopes_of(of: &impl crate::cgroups::Cgroups) -> u64 {
    let mut own = 0u64;
    let mut unknown = 0u64;
    of.any(|id| {
        // SAFETY: plain u64 value.
        if let Some(b) = unsafe { POD_SCOPES.get(&id) } {
            if *b & POD_UNKNOWN != 0 {
                unknown |= *b;
            } else {
                own |= *b;
            }
        }
        false
    });
    if own & POD_BIT != 0 {
        own
    } else {
        own | (unknown & !POD_UNKNOWN)
    }
}

/// Whether a selector's `matchBinaries` (`f`) admits a process whose
/// binary-set membership bits are `member` (the selector's is `bit`):
/// no filter admits all, In needs the bit, NotIn its absence.
#[inline(always)]
pub fn binaries_admit(f: StrFilter, member: u64, bit: u64) -> bool {
    f.kind == match_kind::NONE || (member & bit != 0) != (f.negate != 0)
}

/// Whether a selector with `scope` applies to a task in `scopes`.
#[inline(always)]
pub fn scope_applies(scope: u8, scopes: u64) -> bool {
    scope == 0 || scopes & (1u64 << ((scope as u64 - 1) & 63)) != 0
}

/// Whether the current task is under one of the scope cgroups.
#[inline(always)]
pub fn in_scope<const MODERN: bool>(cfg: &Config) -> bool {
    in_scope_of(cfg, &crate::cgroups::Current::<MODERN>)
}

/// As [`in_scope`], for the cgroups `of` walks.
#[inline(always)]
pub fn in_scope_of(cfg: &Config, of: &impl crate::cgroups::Cgroups) -> bool {
    if cfg.scoped == 0 {
        return true;
    }
    // SAFETY: presence test on a u8 value.
    of.any(|id| unsafe { SCOPE_CGROUPS.get(&id) }.is_some())
}

/// State carried through the selector loop. It lives in a map so that the
/// verifier checks the loop body once (map values are unknown to it), and
/// its work does not grow with the number of selectors.
#[repr(C)]
pub struct Eval {
    keys: Keys,
    n: u64,
    scoped_in: u64,
    caller: ProcState,
    state: ProcState,
    hooks_done: u64,
    hits: u64,
    scopes: u64,
    /// Non-zero in the BPF-LSM hook, before the exec: only the selectors
    /// decided there (Override, `imaHash`) act, and only those that test
    /// the caller.
    lsm: u64,
    /// Hits whose selector asked for the binary's IMA hash.
    ima: u64,
    /// The bank whose tables are read (see `sensor_common::BANKS`).
    bank: u64,
    signal: u32,
    errno: u32,
}

crate::looping::forms!(eval_selector, eval_callback, snsr_loop_exec_selector);

/// One selector; returns 1 to stop the loop.
#[inline(always)]
fn eval_selector(index: u64) -> i64 {
    let Some(e) = EVAL.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch owned by this program run.
    let e = unsafe { &mut *e };
    let s = index as u32 & (MAX_SELECTORS as u32 - 1);
    if index >= e.n {
        return 1;
    }
    let bank = e.bank as u32 & 1;
    let Some(sel) = EXEC_SELECTORS.get(bank * MAX_SELECTORS as u32 + s) else {
        return 1;
    };
    let sel_id = str_selector(s as u8, bank);
    let bit = 1u64 << s;
    if sel.binaries.kind != match_kind::NONE && e.keys.in_binaries(sel.binaries, sel_id) {
        e.state.bin_in |= bit;
    }
    let hook_bit = 1u64 << (sel.hook & 63);
    if e.scoped_in == 0 || e.hooks_done & hook_bit != 0 || !scope_applies(sel.scope, e.scopes) {
        return 0;
    }
    // Override and imaHash selectors were decided in the LSM hook; a
    // selector about the new image cannot be decided before it exists.
    let at_bprm = sel.errno != 0 || sel.ima_hash != 0;
    if (e.lsm == 0 && at_bprm) || (e.lsm != 0 && sel.binaries_of_new_image != 0) {
        return 0;
    }
    let member = if sel.binaries_of_new_image != 0 {
        e.state.bin_in | e.state.follow
    } else {
        e.caller.bin_in | if sel.follow != 0 { e.caller.follow } else { 0 }
    };
    if !binaries_admit(sel.binaries, member, bit) {
        return 0;
    }
    for a in 0..MAX_ARG_FILTERS {
        if a >= sel.n_args as usize {
            break;
        }
        if !e.keys.matches(sel.args[a], sel_id, (a + 1) as u8) {
            return 0;
        }
    }
    e.hooks_done |= hook_bit;
    if e.lsm != 0 {
        // The hook's first match is another action: the exec tracepoint
        // reports it once the exec happened.
        if at_bprm {
            e.hits |= bit;
            if e.errno == 0 {
                e.errno = sel.errno;
            }
            if sel.ima_hash != 0 {
                e.ima |= bit;
            }
            if sel.signal != 0 && e.signal != 9 {
                e.signal = sel.signal;
            }
        }
        return 0;
    }
    e.hits |= bit;
    if sel.signal != 0 && e.signal != 9 {
        e.signal = sel.signal;
    }
    0
}

crate::looping::forms!(net_binaries, net_binaries_callback, snsr_loop_net_binaries);

/// Whether the new image is in connect selector `index`'s binary set: the
/// connect programs test this bit when the process connects.
#[inline(always)]
fn net_binaries(index: u64) -> i64 {
    let Some(e) = EVAL.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch owned by this program run.
    let e = unsafe { &mut *e };
    if index >= e.n {
        return 1;
    }
    let s = index as u32 & (MAX_SELECTORS as u32 - 1);
    let bank = e.bank as u32 & 1;
    let Some(sel) = NET_SELECTORS.get(bank * MAX_SELECTORS as u32 + s) else {
        return 1;
    };
    if sel.binaries.kind != match_kind::NONE
        && e.keys.in_binaries(
            sel.binaries,
            str_selector(NET_SELECTOR_BASE + s as u8, bank),
        )
    {
        e.state.net_bin_in |= 1u64 << s;
    }
    0
}

crate::looping::forms!(sys_binaries, sys_binaries_callback, snsr_loop_sys_binaries);

/// Whether the new image is in syscall selector `index`'s binary set: the
/// `sys_enter` program tests this bit at each syscall.
#[inline(always)]
fn sys_binaries(index: u64) -> i64 {
    let Some(e) = EVAL.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch owned by this program run.
    let e = unsafe { &mut *e };
    if index >= e.n {
        return 1;
    }
    let s = index as u32 & (MAX_SELECTORS as u32 - 1);
    let bank = e.bank as u32 & 1;
    let Some(sel) = SYS_SELECTORS.get(bank * MAX_SELECTORS as u32 + s) else {
        return 1;
    };
    if sel.binaries.kind != match_kind::NONE
        && e.keys
            .in_binaries_at(sel.binaries, str_selector(s as u8, bank), SLOT_SYS_BINARIES)
    {
        e.state.sys_bin_in |= 1u64 << s;
    }
    0
}

/// Sets up the selector loop's state for `tgid` executing the path in
/// `path.buf[start..]` and runs the exec selectors; `None` when there is
/// nothing to evaluate.
#[inline(always)]
fn evaluate<const MODERN: bool>(
    cfg: &Config,
    tgid: u32,
    path: &PathScratch,
    start: usize,
    scopes: u64,
    lsm: bool,
    truncated: bool,
) -> Option<&'static mut Eval> {
    let n = cfg.n_selectors as u64;
    // SAFETY: ProcState is plain data.
    let caller: ProcState = unsafe { PROCS.get(&tgid) }.copied().unwrap_or_default();
    let keys = Keys::build(path, start, cfg.need_reversed != 0, truncated)?;
    let ep = EVAL.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch owned by this program run.
    let e = unsafe { &mut *ep };
    *e = Eval {
        keys,
        n,
        scoped_in: in_scope::<MODERN>(cfg) as u64,
        caller,
        state: ProcState {
            follow: caller.follow | (caller.bin_in & cfg.follow_mask),
            ..ProcState::default()
        },
        hooks_done: 0,
        hits: 0,
        scopes,
        lsm: lsm as u64,
        ima: 0,
        bank: cfg.bank as u64 & 1,
        signal: 0,
        errno: 0,
    };
    crate::looping::repeat::<MODERN>(MAX_SELECTORS as u32, eval_callback, snsr_loop_exec_selector);
    Some(e)
}

const NONE: Verdict = Verdict {
    hits: 0,
    signal: 0,
    errno: 0,
    ima: 0,
};

/// Evaluates the selectors decided before the exec (Override, `imaHash`)
/// for `tgid` about to execute the path in `path.buf[start..]` (BPF-LSM
/// `bprm_check_security`): the errno the exec fails with, if one matches,
/// and the signal, sent here to the caller.
#[inline(always)]
pub fn on_bprm_check<const MODERN: bool>(
    cfg: &Config,
    tgid: u32,
    path: &PathScratch,
    start: usize,
    truncated: bool,
    scopes: u64,
) -> Verdict {
    if cfg.n_override == 0 {
        return NONE;
    }
    let Some(e) = evaluate::<MODERN>(cfg, tgid, path, start, scopes, true, truncated) else {
        return NONE;
    };
    if e.signal != 0 {
        // SAFETY: signals the current task, the caller of the exec.
        unsafe { bpf_send_signal(e.signal) };
    }
    Verdict {
        hits: e.hits,
        signal: e.signal,
        errno: e.errno,
        ima: e.ima,
    }
}

/// Evaluates every exec selector for `tgid` executing the path in
/// `path.buf[start..]`, updates the process's policy state, and signals the
/// current task when a matching selector says so.
#[inline(always)]
pub fn on_exec<const MODERN: bool>(
    cfg: &Config,
    tgid: u32,
    path: &PathScratch,
    start: usize,
    truncated: bool,
    scopes: u64,
) -> Verdict {
    if cfg.n_selectors == 0 && cfg.n_net_selectors == 0 && cfg.n_sys_selectors == 0 {
        return NONE;
    }
    let Some(e) = evaluate::<MODERN>(cfg, tgid, path, start, scopes, false, truncated) else {
        return NONE;
    };
    let caller = e.caller;
    if cfg.n_net_selectors != 0 {
        e.state.net_follow = caller.net_follow | (caller.net_bin_in & cfg.net_follow_mask);
        e.n = cfg.n_net_selectors as u64;
        crate::looping::repeat::<MODERN>(
            MAX_SELECTORS as u32,
            net_binaries_callback,
            snsr_loop_net_binaries,
        );
    }
    if cfg.n_sys_selectors != 0 {
        e.state.sys_follow = caller.sys_follow | (caller.sys_bin_in & cfg.sys_follow_mask);
        e.n = cfg.n_sys_selectors as u64;
        crate::looping::repeat::<MODERN>(
            MAX_SELECTORS as u32,
            sys_binaries_callback,
            snsr_loop_sys_binaries,
        );
    }
    let state = e.state;
    if state != ProcState::default() {
        crate::maps::set_proc_state(tgid, &state);
    } else if caller != ProcState::default() {
        let _ = PROCS.remove(&tgid);
    }
    if e.signal != 0 {
        // SAFETY: signals the current task, which is the one executing.
        unsafe { bpf_send_signal(e.signal) };
    }
    Verdict {
        hits: e.hits,
        signal: e.signal,
        errno: 0,
        ima: 0,
    }
}
