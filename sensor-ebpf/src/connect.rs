//! Outbound connects and unconnected sends, from cgroup socket-address hooks
//! at the root of the cgroup v2 tree (links, so they coexist with Cilium's):
//! the record with the kernel's copy of the address, and the connect reflex,
//! which denies the connect (Sigkill also signals, Override sets the errno)
//! before any packet leaves.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_ns, bpf_send_signal, generated::bpf_set_retval,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use sensor_common::{
    connect_records, kind, net_kind, net_selector, pod_wakeups, sock_op, ConnectEvent, NetFilter,
    NetValueKey, ProcState, MAX_ARG_FILTERS, MAX_SELECTORS, NET_ADDR_KEY_LEN, POD_BIT,
};

use crate::maps::{
    count_lost, wakeup_flags, EVENTS, NET_ADDR, NET_EVAL, NET_SELECTORS, NET_VALUE,
    PENDING_SIGNALS, PROCS,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EPERM: u32 = 1;

// Each hook in three forms (see `looping`): modern; deferred (5.18 to 6.12,
// whose cgroup programs cannot send a signal: `signals` sends it as the
// syscall returns); compat (before 5.18: also no `bpf_set_retval`, so a
// denial fails with EPERM only).
#[cgroup_sock_addr(connect4)]
pub fn snsr_connect4(ctx: SockAddrContext) -> i32 {
    on_sock::<true, true>(&ctx, sock_op::CONNECT4)
}

#[cgroup_sock_addr(connect4)]
pub fn snsr_connect4_deferred(ctx: SockAddrContext) -> i32 {
    on_sock::<true, false>(&ctx, sock_op::CONNECT4)
}

#[cgroup_sock_addr(connect4)]
pub fn snsr_connect4_compat(ctx: SockAddrContext) -> i32 {
    on_sock::<false, false>(&ctx, sock_op::CONNECT4)
}

#[cgroup_sock_addr(connect6)]
pub fn snsr_connect6(ctx: SockAddrContext) -> i32 {
    on_sock::<true, true>(&ctx, sock_op::CONNECT6)
}

#[cgroup_sock_addr(connect6)]
pub fn snsr_connect6_deferred(ctx: SockAddrContext) -> i32 {
    on_sock::<true, false>(&ctx, sock_op::CONNECT6)
}

#[cgroup_sock_addr(connect6)]
pub fn snsr_connect6_compat(ctx: SockAddrContext) -> i32 {
    on_sock::<false, false>(&ctx, sock_op::CONNECT6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn snsr_sendmsg4(ctx: SockAddrContext) -> i32 {
    on_sock::<true, true>(&ctx, sock_op::SENDMSG4)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn snsr_sendmsg4_deferred(ctx: SockAddrContext) -> i32 {
    on_sock::<true, false>(&ctx, sock_op::SENDMSG4)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn snsr_sendmsg4_compat(ctx: SockAddrContext) -> i32 {
    on_sock::<false, false>(&ctx, sock_op::SENDMSG4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn snsr_sendmsg6(ctx: SockAddrContext) -> i32 {
    on_sock::<true, true>(&ctx, sock_op::SENDMSG6)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn snsr_sendmsg6_deferred(ctx: SockAddrContext) -> i32 {
    on_sock::<true, false>(&ctx, sock_op::SENDMSG6)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn snsr_sendmsg6_compat(ctx: SockAddrContext) -> i32 {
    on_sock::<false, false>(&ctx, sock_op::SENDMSG6)
}

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
}

fn v4(word: u32) -> [u8; 4] {
    word.to_ne_bytes()
}

/// Fills the event's addresses and ports from the context.
fn read_addresses(sa: &bpf_sock_addr, op: u8, e: &mut ConnectEvent) {
    e.dport = u16::from_be(sa.user_port as u16);
    if op == sock_op::CONNECT4 || op == sock_op::SENDMSG4 {
        e.family = AF_INET;
        e.daddr[..4].copy_from_slice(&v4(sa.user_ip4));
        if op == sock_op::SENDMSG4 {
            e.saddr[..4].copy_from_slice(&v4(sa.msg_src_ip4));
        }
        return;
    }
    let d = sa.user_ip6;
    // ::ffff:a.b.c.d reaches IPv4 through an IPv6 socket: match it as IPv4.
    if d[0] == 0 && d[1] == 0 && u32::from_be(d[2]) == 0x0000_ffff {
        e.family = AF_INET;
        e.mapped = 1;
        e.daddr[..4].copy_from_slice(&v4(d[3]));
        return;
    }
    e.family = AF_INET6;
    for i in 0..4 {
        e.daddr[i * 4..i * 4 + 4].copy_from_slice(&v4(d[i]));
    }
    if op == sock_op::SENDMSG6 {
        let s = sa.msg_src_ip6;
        for i in 0..4 {
            e.saddr[i * 4..i * 4 + 4].copy_from_slice(&v4(s[i]));
        }
    }
}

#[inline(always)]
fn on_sock<const MODERN: bool, const SIGNAL: bool>(ctx: &SockAddrContext, op: u8) -> i32 {
    match try_sock::<MODERN, SIGNAL>(ctx, op) {
        Some(false) => 0,
        _ => 1,
    }
}

/// Returns whether the connect may proceed.
/// `MODERN`: `bpf_loop`, ancestor cgroup ids and `bpf_set_retval`;
/// `SIGNAL`: `bpf_send_signal` from this hook.
#[inline(always)]
fn try_sock<const MODERN: bool, const SIGNAL: bool>(ctx: &SockAddrContext, op: u8) -> Option<bool> {
    // SAFETY: the context the kernel handed us.
    let sa = unsafe { &*ctx.sock_addr };
    let ep = NET_EVAL.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch owned by this program run.
    let ev = unsafe { &mut *ep };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let cfg = crate::maps::config().copied().unwrap_or_default();
    ev.event = ConnectEvent {
        kind: kind::CONNECT,
        pid: tgid,
        tid: pid_tgid as u32,
        uid: bpf_get_current_uid_gid() as u32,
        ktime: unsafe { bpf_ktime_get_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        hits: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        family: 0,
        sport: 0,
        dport: 0,
        sock_type: sa.type_ as u16,
        protocol: sa.protocol as u16,
        op,
        mapped: 0,
        quarantined: 0,
        signal: 0,
        errno: 0,
        _pad: [0; 3],
    };
    read_addresses(sa, op, &mut ev.event);
    ev.n = cfg.n_net_selectors as u64;
    ev.bank = cfg.bank as u64 & 1;
    ev.scoped_in = crate::reflex::in_scope::<MODERN>(&cfg) as u64;
    ev.hooks_done = 0;
    ev.scopes = if cfg.n_scopes != 0 {
        crate::reflex::task_scopes::<MODERN>()
    } else {
        0
    };
    // SAFETY: ProcState is plain data.
    ev.state = unsafe { PROCS.get(&tgid) }.copied().unwrap_or_default();
    if crate::quarantine::current_quarantined::<MODERN>() {
        // A quarantined pod connects nowhere; the record says so.
        ev.event.quarantined = 1;
        ev.event.errno = EPERM;
    } else if ev.n > 0 && ev.scoped_in != 0 {
        crate::looping::repeat::<MODERN>(
            MAX_SELECTORS as u32,
            eval_callback,
            snsr_loop_connect_selector,
        );
    }
    let e = &ev.event;
    // A record only when someone needs it: a policy hit always; a routine
    // connect only when a brain rule reads connects, and within its
    // cgroup's budget; a quarantined pod's denied connects are counted.
    let send = if e.hits != 0 {
        true
    } else if e.quarantined != 0 {
        crate::quarantine::count_denied();
        false
    } else {
        let wanted = match cfg.connect_records {
            connect_records::NONE => false,
            connect_records::PODS => ev.scopes & POD_BIT != 0,
            _ => true,
        };
        wanted && crate::budget::allow(e.cgroup_id, e.ktime)
    };
    let urgent =
        e.hits != 0 || (ev.scopes & POD_BIT != 0 && cfg.pod_wakeups & pod_wakeups::CONNECT != 0);
    if send
        && EVENTS
            .output::<ConnectEvent>(e, wakeup_flags(urgent))
            .is_err()
    {
        count_lost(kind::CONNECT);
    }
    if e.signal != 0 {
        if SIGNAL {
            // SAFETY: signals the current task, the one connecting.
            unsafe { bpf_send_signal(e.signal) };
        } else {
            // Older kernels have no bpf_send_signal in cgroup programs: the
            // connect is denied here and `signals` delivers the signal as
            // the syscall returns, before the task runs again.
            let _ = PENDING_SIGNALS.insert(&pid_tgid, &e.signal, 0);
        }
    }
    if MODERN && e.errno != 0 && e.errno != EPERM {
        // SAFETY: sets the error the denied connect returns (EPERM is what
        // a denial returns anyway).
        unsafe { bpf_set_retval(-(e.errno as i32)) };
    }
    Some(e.signal == 0 && e.errno == 0)
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
        _ => false,
    };
    hit != (f.negate != 0)
}

crate::looping::forms!(eval_selector, eval_callback, snsr_loop_connect_selector);

/// One connect selector; returns 1 to stop the loop.
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
    if ev.hooks_done & hook_bit != 0 || !crate::reflex::scope_applies(sel.scope, ev.scopes) {
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
