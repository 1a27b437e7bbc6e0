//! Network selectors, shared by every program that raises a network
//! record (`connect` for connects and unconnected sends, `sock` for
//! listens, sends and closes): the record's header, the selector loop
//! over the address, port, protocol and family sets, and the record's
//! output. A selector acts only on the records of its hook's class
//! (`NetSelector::ops`).
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
};
use sensor_common::{
    kind, net_kind, net_ops, net_selector, Config, ConnectEvent, NetFilter, NetValueKey, ProcState,
    MAX_ARG_FILTERS, MAX_SELECTORS, NET_ADDR_KEY_LEN,
};

use crate::maps::{
    count_lost, wakeup_flags, EVENTS, NET_ADDR, NET_EVAL, NET_SELECTORS, NET_VALUE, PROCS,
};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// The selector loop's state, in a map for the same reason as `reflex::Eval`.
#[repr(C)]
pub struct NetEval {
    pub event: ConnectEvent,
    pub n: u64,
    pub scoped_in: u64,
    pub state: ProcState,
    pub hooks_done: u64,
    pub scopes: u64,
    /// The bank whose tables are read (see `sensor_common::BANKS`).
    pub bank: u64,
    /// A kernel pointer stored and read back as a number: see
    /// `sock::snsr_sock_release`.
    pub sk: u64,
}

/// Starts a record of socket operation `op` by the current task in the
/// per-CPU scratch, of `op`'s class (a caller may widen `classes`); addresses and ports are left for the caller to fill,
/// and the uid, time and cgroup for `stamp`, when the record is sent.
#[inline(always)]
pub fn start(op: u8, cfg: &Config) -> Option<&'static mut NetEval> {
    start_as(op, cfg, bpf_get_current_pid_tgid())
}

/// As [`start`], for the thread `pid_tgid` (a packet's, by its socket).
#[inline(always)]
pub fn start_as(op: u8, cfg: &Config, pid_tgid: u64) -> Option<&'static mut NetEval> {
    let ep = NET_EVAL.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch owned by this program run.
    let ev = unsafe { &mut *ep };
    ev.event = ConnectEvent {
        kind: kind::CONNECT,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: 0,
        ktime: 0,
        cgroup_id: 0,
        hits: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        family: 0,
        sport: 0,
        dport: 0,
        sock_type: 0,
        protocol: 0,
        op,
        mapped: 0,
        quarantined: 0,
        signal: 0,
        errno: 0,
        state: 0,
        new_state: 0,
        _pad: 0,
        classes: net_ops::of(op),
        _pad2: 0,
        size: 0,
    };
    ev.n = cfg.n_net_selectors as u64;
    ev.bank = cfg.bank as u64 & 1;
    ev.hooks_done = 0;
    Some(ev)
}

/// The uid, time and cgroup of a record that is (or may be) sent.
#[inline(always)]
pub fn stamp(e: &mut ConnectEvent) {
    e.uid = bpf_get_current_uid_gid() as u32;
    // SAFETY: helpers without arguments.
    e.ktime = unsafe { bpf_ktime_get_ns() };
    e.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
}

/// Reads what the selectors test about the task: its scope, its pod
/// scopes and its process state.
#[inline(always)]
pub fn subject<const MODERN: bool>(ev: &mut NetEval, cfg: &Config) {
    subject_of(ev, cfg, &crate::cgroups::Current::<MODERN>)
}

/// As [`subject`], with the scopes of the cgroups `of` walks and the
/// process state of the record's pid.
#[inline(always)]
pub fn subject_of(ev: &mut NetEval, cfg: &Config, of: &impl crate::cgroups::Cgroups) {
    ev.scoped_in = crate::reflex::in_scope_of(cfg, of) as u64;
    ev.scopes = if cfg.n_scopes != 0 {
        crate::reflex::scopes_of(of)
    } else {
        0
    };
    // SAFETY: ProcState is plain data.
    ev.state = unsafe { PROCS.get(&ev.event.pid) }
        .copied()
        .unwrap_or_default();
}

/// Runs the selectors of the record's class; hits, signal and errno land
/// in the record.
#[inline(always)]
pub fn evaluate<const MODERN: bool>(ev: &NetEval) {
    if ev.n > 0 && ev.scoped_in != 0 {
        crate::looping::repeat::<MODERN>(
            MAX_SELECTORS as u32,
            eval_callback,
            snsr_loop_connect_selector,
        );
    }
}

/// Sends the record to the daemon; `urgent` wakes the reader at once.
#[inline(always)]
pub fn output(e: &ConnectEvent, urgent: bool) {
    if EVENTS
        .output::<ConnectEvent>(e, wakeup_flags(urgent))
        .is_err()
    {
        count_lost(kind::CONNECT);
    }
}

/// Whether the address (dest or source) is in the selector's set for `slot`.
fn addr_in(e: &ConnectEvent, sel: u8, slot: u8, dest: bool) -> bool {
    let mut data = [0u8; NET_ADDR_KEY_LEN];
    data[0] = sel;
    data[1] = slot;
    let addr = if dest { &e.daddr } else { &e.saddr };
    let bits = if e.family == AF_INET6 {
        data[2] = 6;
        data[4..20].copy_from_slice(addr);
        128
    } else {
        data[2] = 4;
        data[4..8].copy_from_slice(&addr[..4]);
        32
    };
    let key = aya_ebpf::maps::lpm_trie::Key::new(32 + bits, data);
    NET_ADDR.get(&key).is_some()
}

fn value_in(sel: u8, slot: u8, value: u32) -> bool {
    let key = NetValueKey {
        selector: sel,
        slot,
        _pad: 0,
        value,
    };
    // SAFETY: presence test on a u8 value.
    unsafe { NET_VALUE.get(&key) }.is_some()
}

fn filter_matches(f: NetFilter, e: &ConnectEvent, sel: u8, slot: u8) -> bool {
    let hit = match f.kind {
        net_kind::DADDR => addr_in(e, sel, slot, true),
        net_kind::SADDR => addr_in(e, sel, slot, false),
        net_kind::DPORT => value_in(sel, slot, e.dport as u32),
        net_kind::SPORT => value_in(sel, slot, e.sport as u32),
        net_kind::DPORT_PRIV => e.dport < 1024,
        net_kind::SPORT_PRIV => e.sport < 1024,
        net_kind::PROTOCOL => value_in(sel, slot, e.protocol as u32),
        net_kind::FAMILY => value_in(sel, slot, e.family as u32),
        net_kind::STATE => value_in(sel, slot, e.state as u32),
        net_kind::NEW_STATE => value_in(sel, slot, e.new_state as u32),
        _ => false,
    };
    hit != (f.negate != 0)
}

crate::looping::forms!(eval_selector, eval_callback, snsr_loop_connect_selector);

/// One network selector; returns 1 to stop the loop.
#[inline(always)]
fn eval_selector(index: u64) -> i64 {
    let Some(ep) = NET_EVAL.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch owned by this program run.
    let ev = unsafe { &mut *ep };
    if index >= ev.n {
        return 1;
    }
    let s = index as u32 & (MAX_SELECTORS as u32 - 1);
    let bank = ev.bank as u32 & 1;
    let Some(sel) = NET_SELECTORS.get(bank * MAX_SELECTORS as u32 + s) else {
        return 1;
    };
    let bit = 1u64 << s;
    let key_sel = net_selector(s as u8, bank);
    let hook_bit = 1u64 << (sel.hook & 63);
    if sel.ops & ev.event.classes == 0
        || ev.hooks_done & hook_bit != 0
        || !crate::reflex::scope_applies(sel.scope, ev.scopes)
    {
        return 0;
    }
    let follow = if sel.follow != 0 {
        ev.state.net_follow
    } else {
        0
    };
    if !crate::reflex::binaries_admit(sel.binaries, ev.state.net_bin_in | follow, bit) {
        return 0;
    }
    for a in 0..MAX_ARG_FILTERS {
        if a >= sel.n_filters as usize {
            break;
        }
        if !filter_matches(sel.filters[a], &ev.event, key_sel, (a + 1) as u8) {
            return 0;
        }
    }
    ev.hooks_done |= hook_bit;
    ev.event.hits |= bit;
    if sel.signal != 0 && ev.event.signal != 9 {
        ev.event.signal = sel.signal;
    }
    if sel.errno != 0 && ev.event.errno == 0 {
        ev.event.errno = sel.errno;
    }
    0
}
