//! Outbound connects and unconnected sends, from cgroup socket-address hooks
//! at the root of the cgroup v2 tree (links, so they coexist with Cilium's):
//! the record with the kernel's copy of the address, and the connect reflex,
//! which denies the connect (Sigkill also signals, Override sets the errno)
//! before any packet leaves.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_send_signal, generated::bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use sensor_common::{connect_records, pod_wakeups, sock_op, ConnectEvent, POD_BIT};

use crate::maps::PENDING_SIGNALS;
use crate::netsel::{AF_INET, AF_INET6};
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
    let cfg = crate::maps::config().copied().unwrap_or_default();
    let ev = crate::netsel::start(op, &cfg)?;
    // A routine connect may be sent too (its budget reads time and cgroup).
    crate::netsel::stamp(&mut ev.event);
    ev.event.sock_type = sa.type_ as u16;
    ev.event.protocol = sa.protocol as u16;
    read_addresses(sa, op, &mut ev.event);
    crate::netsel::subject::<MODERN>(ev, &cfg);
    if crate::quarantine::current_quarantined::<MODERN>() {
        // A quarantined pod connects nowhere; the record says so.
        ev.event.quarantined = 1;
        ev.event.errno = EPERM;
    } else {
        crate::netsel::evaluate::<MODERN>(ev);
    }
    let pid_tgid = (ev.event.pid as u64) << 32 | ev.event.tid as u64;
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
    if send {
        crate::netsel::output(e, urgent);
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
