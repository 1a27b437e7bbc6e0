//! A socket's life past its connect, for Tetragon's `sk_alloc`,
//! `tcp_close`, `__sk_free`, `inet_csk_listen_start`, `tcp_set_state`,
//! `tcp_create_openreq_child` and `tcp_sendmsg` hooks, each on a hook
//! every kernel from 5.10 has (kprobes are missing on some kernels, this
//! one included):
//! - creation, on the cgroup `sock_create` hook (`inet_create`, after
//!   `sk_alloc`), in the creating task's context;
//! - the last close, on the cgroup `sock_release` hook (`inet_release`,
//!   which calls `tcp_close`), in the closing task's context;
//! - TCP state changes, on the `inet_sock_set_state` tracepoint: LISTEN
//!   (`inet_csk_listen_start` does that first), a listener's child being
//!   cloned (LISTEN to SYN_RECV, in `tcp_create_openreq_child`), and the
//!   others (`tcp_set_state`). Many run in softirq, in whichever task the
//!   packet interrupted: a record names the socket's owner where it is
//!   known (`TCP_OWNERS`: who listened on its port, or connected it), and
//!   these records never signal;
//! - sends, from `sys_enter` on the send syscalls, with the descriptor
//!   resolved to its socket (`tcp_sendmsg` runs inside them).
//! The socket is read from the kernel's `struct sock` at offsets from
//! BTF; the network selectors (`netsel`) decide, and only a hit is sent.
use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_send_signal, generated::bpf_get_socket_cookie},
    macros::{cgroup_sock, raw_tracepoint},
    programs::{RawTracePointContext, SockContext},
};
use sensor_common::{net_ops, sock_op, Config, ConnectEvent, OwnerKey, LISTENER_PORT};

use crate::kernel::{off, read, read_ptr};
use crate::maps::{SOCK_OWNERS, TCP_OWNERS};
use crate::netsel::{AF_INET, AF_INET6};

const IPPROTO_TCP: u16 = 6;
const TCP_SYN_SENT: u64 = 2;
const TCP_SYN_RECV: u64 = 3;
const TCP_CLOSE: u64 = 7;
const TCP_LISTEN: u64 = 10;
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

/// x86_64 syscall numbers of the calls that reach `tcp_sendmsg`.
const NR_WRITE: u64 = 1;
const NR_WRITEV: u64 = 20;
const NR_SENDTO: u64 = 44;
const NR_SENDMSG: u64 = 46;
const NR_SENDMMSG: u64 = 307;
/// iovecs summed for a send's size.
const MAX_IOVECS: usize = 8;

/// Returns 1: creation is reported, never refused.
#[cgroup_sock(sock_create)]
pub fn snsr_sock_create(ctx: SockContext) -> i32 {
    let _ = on_sock::<true>(&ctx, sock_op::ALLOC);
    1
}

#[cgroup_sock(sock_create)]
pub fn snsr_sock_create_compat(ctx: SockContext) -> i32 {
    let _ = on_sock::<false>(&ctx, sock_op::ALLOC);
    1
}

#[cgroup_sock(sock_release)]
pub fn snsr_sock_release(ctx: SockContext) -> i32 {
    let _ = on_sock::<true>(&ctx, sock_op::CLOSE);
    1
}

#[cgroup_sock(sock_release)]
pub fn snsr_sock_release_compat(ctx: SockContext) -> i32 {
    let _ = on_sock::<false>(&ctx, sock_op::CLOSE);
    1
}

/// `inet_sock_set_state(sk, oldstate, newstate)`.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn snsr_sock_state(ctx: RawTracePointContext) -> i32 {
    let _ = on_state::<true>(&ctx);
    0
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn snsr_sock_state_compat(ctx: RawTracePointContext) -> i32 {
    let _ = on_state::<false>(&ctx);
    0
}

fn wants(cfg: &Config, class: u16) -> bool {
    cfg.net_ops & class as u32 != 0
}

/// A socket created (`op` ALLOC: `sk_alloc`) or released by its last
/// close (CLOSE: `__sk_free` for any protocol, and `tcp_close` for TCP),
/// on a cgroup sock hook, in the acting task's context.
#[inline(always)]
fn on_sock<const MODERN: bool>(ctx: &SockContext, op: u8) -> Option<()> {
    let cfg = *crate::maps::config()?;
    track_owner(ctx, op, &cfg);
    // SAFETY: the context the kernel handed us.
    let tcp = unsafe { (*ctx.sock).protocol } == IPPROTO_TCP as u32;
    let classes = match op {
        sock_op::ALLOC => net_ops::ALLOC,
        _ if tcp => net_ops::CLOSE | net_ops::FREE,
        _ => net_ops::FREE,
    } & cfg.net_ops as u16;
    if classes == 0 {
        return None;
    }
    let ev = crate::netsel::start(op, &cfg)?;
    ev.event.classes = classes;
    // The context is the kernel's `struct sock`, but these hooks may not
    // read its addresses and ports through it. Stored in a map and read
    // back, the pointer is a plain number, read like any other kernel
    // pointer (this needs CAP_PERFMON, which the daemon has).
    // SAFETY: per-CPU scratch owned by this program run.
    unsafe { core::ptr::write_volatile(&mut ev.sk, ctx.sock as u64) };
    let sk = unsafe { core::ptr::read_volatile(&ev.sk) } as *const u8;
    read_sock(sk, &mut ev.event)?;
    crate::netsel::subject::<MODERN>(ev, &cfg);
    crate::netsel::evaluate::<MODERN>(ev);
    // Signals are refused on these hooks when the policy loads.
    if ev.event.hits != 0 {
        crate::netsel::stamp(&mut ev.event);
        crate::netsel::output(&ev.event, true);
    }
    Some(())
}

/// Keeps `SOCK_OWNERS`: the creator of each socket, by socket cookie, for
/// the packet hooks (a packet arrives in any task's context, and
/// `cgroup_skb` programs cannot ask for the current task on every kernel).
/// Only while packet hooks are loaded: it costs a map update per socket
/// created and per socket released, which no one else should pay. A
/// cookie is never reused, so entries left from an earlier load name no
/// other socket, and age out of the LRU map.
#[inline(always)]
fn track_owner(ctx: &SockContext, op: u8, cfg: &Config) {
    if cfg.net_ops & (net_ops::PACKET_IN | net_ops::PACKET_OUT) as u32 == 0 {
        return;
    }
    // SAFETY: the context's socket, as the helper takes it.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    if op == sock_op::ALLOC {
        let _ = SOCK_OWNERS.insert(&cookie, &(bpf_tgid() as u32), 0);
    } else {
        let _ = SOCK_OWNERS.remove(&cookie);
    }
}

/// `inet_sock_set_state(sk, oldstate, newstate)`: each change is of the
/// classes whose hook makes it, and `sk` still holds the old state.
#[inline(always)]
fn on_state<const MODERN: bool>(ctx: &RawTracePointContext) -> Option<()> {
    let cfg = *crate::maps::config()?;
    let sk: *const u8 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) as u32 as u64;
    let new = ctx.arg::<u64>(2) as u32 as u64;
    // Owners are kept for the hooks on changes made in softirq, and for
    // packets of sockets not made by `socket()` (a listener's children).
    let tracking = cfg.net_ops
        & (net_ops::STATE | net_ops::OPENREQ | net_ops::PACKET_IN | net_ops::PACKET_OUT) as u32
        != 0;
    if tracking {
        remember_owner(sk, old, new);
    }
    let classes = if new == TCP_LISTEN {
        net_ops::LISTEN
    } else if old == TCP_LISTEN && new == TCP_SYN_RECV {
        net_ops::OPENREQ
    } else {
        net_ops::STATE
    } & cfg.net_ops as u16;
    if classes == 0 {
        return None;
    }
    let op = if classes == net_ops::LISTEN {
        sock_op::LISTEN
    } else {
        sock_op::STATE
    };
    let owner = if tracking && classes & (net_ops::STATE | net_ops::OPENREQ) != 0 {
        owner_of(sk)
    } else {
        0
    };
    judge::<MODERN>(op, classes, sk, new as u32, &cfg, owner)
}

/// `TCP_OWNERS`' keys for socket `sk`: its own, and its listening port's.
#[inline(always)]
fn owner_keys(sk: *const u8) -> (OwnerKey, OwnerKey) {
    let net = read::<u64>(sk, off!(sk_net)).unwrap_or(0);
    let port = read::<u16>(sk, off!(sk_num)).unwrap_or(0) as u64;
    (
        OwnerKey {
            at: sk as u64,
            port: 0,
        },
        OwnerKey {
            at: net,
            port: port | LISTENER_PORT,
        },
    )
}

/// Keeps `TCP_OWNERS` at the changes a task makes in its own context:
/// `listen()` (LISTEN) and `connect()` (SYN_SENT) record it; the last
/// change (CLOSE) forgets the socket and, for a listener, its port.
#[inline(always)]
fn remember_owner(sk: *const u8, old: u64, new: u64) {
    let (own, listening) = owner_keys(sk);
    let tgid = bpf_tgid() as u32;
    match new {
        TCP_LISTEN => {
            let _ = TCP_OWNERS.insert(&listening, &tgid, 0);
        }
        TCP_SYN_SENT => {
            let _ = TCP_OWNERS.insert(&own, &tgid, 0);
        }
        TCP_CLOSE => {
            let _ = TCP_OWNERS.remove(&own);
            if old == TCP_LISTEN {
                let _ = TCP_OWNERS.remove(&listening);
            }
        }
        _ => {}
    }
}

/// The task that owns `sk`: the one that connected it, or for a listener's
/// child the one listening on its port; 0 if neither is known (a socket
/// older than the hooks), and the current task then stands in.
#[inline(always)]
pub fn owner_of(sk: *const u8) -> u32 {
    let (own, listening) = owner_keys(sk);
    // SAFETY: plain u32 values.
    unsafe { TCP_OWNERS.get(&own).or_else(|| TCP_OWNERS.get(&listening)) }
        .copied()
        .unwrap_or(0)
}

/// The cgroup v2 a socket was made in (null where the kernel does not
/// say): its `sk_cgrp_data` starts with the pointer, which 5.10 tags in
/// its low two bits when it holds other data instead.
#[inline(always)]
fn socket_cgroup(sk: *const u8) -> *const u8 {
    if off!(sk_cgrp_data) == 0 {
        return core::ptr::null();
    }
    match read::<u64>(sk, off!(sk_cgrp_data)) {
        Ok(v) if v & 3 == 0 => v as *const u8,
        _ => core::ptr::null(),
    }
}

/// Whether syscall `nr` can reach `tcp_sendmsg`.
#[inline(always)]
pub fn is_send(nr: u64) -> bool {
    matches!(
        nr,
        NR_WRITE | NR_WRITEV | NR_SENDTO | NR_SENDMSG | NR_SENDMMSG
    )
}

/// A send syscall (`is_send`) by the current task, from `sys_enter`
/// while a `tcp_sendmsg` hook is loaded; `regs` holds its arguments.
#[inline(always)]
pub fn on_send<const MODERN: bool>(nr: u64, regs: *const u8, cfg: &Config) -> Option<()> {
    // The daemon's own sends are never matched: one that carries events
    // (a gRPC client over TCP) would otherwise feed on itself.
    if !wants(cfg, net_ops::SEND) || bpf_tgid() as u32 == cfg.sensor_tgid {
        return None;
    }
    let arg = |i: usize| read::<u64>(regs, crate::syscall::ARG_REGS[i]).unwrap_or(0);
    let sk = socket_of(arg(0))?;
    let size = match nr {
        NR_WRITE | NR_SENDTO => arg(2),
        NR_WRITEV => iov_size(arg(1), arg(2)),
        // A `user_msghdr` has its iovec array 16 bytes in and the count
        // after it; `sendmmsg` is reported with its first message's size.
        _ => {
            let msg = arg(1);
            let iov = user::<u64>(msg + 16).unwrap_or(0);
            let n = user::<u64>(msg + 24).unwrap_or(0);
            iov_size(iov, n)
        }
    };
    let size = size.min(u32::MAX as u64) as u32;
    judge::<MODERN>(sock_op::SEND, net_ops::SEND, sk, size, cfg, 0)
}

/// Evaluates a record of `op` (of `classes`) on TCP socket `sk`; `value`
/// is a send's size or a state change's new state. A hit is sent, and its
/// signal too (these hooks are tracing programs, which can send one). A
/// record of a socket's `owner` (non-zero) names it, and its scopes are
/// the socket's cgroup's; otherwise the current task acts.
#[inline(always)]
fn judge<const MODERN: bool>(
    op: u8,
    classes: u16,
    sk: *const u8,
    value: u32,
    cfg: &Config,
    owner: u32,
) -> Option<()> {
    let ev = if owner != 0 {
        crate::netsel::start_as(op, cfg, (owner as u64) << 32 | owner as u64)?
    } else {
        crate::netsel::start(op, cfg)?
    };
    ev.event.classes = classes;
    read_sock(sk, &mut ev.event)?;
    if ev.event.protocol != IPPROTO_TCP {
        return None;
    }
    if op == sock_op::SEND {
        ev.event.size = value;
    } else {
        ev.event.new_state = value as u8;
    }
    if owner != 0 {
        let of = crate::cgroups::OfCgroup(socket_cgroup(sk));
        crate::netsel::subject_of(ev, cfg, &of);
    } else {
        crate::netsel::subject::<MODERN>(ev, cfg);
    }
    crate::netsel::evaluate::<MODERN>(ev);
    let e = &mut ev.event;
    if e.hits != 0 {
        crate::netsel::stamp(e);
        crate::netsel::output(e, true);
    }
    if e.signal != 0 {
        // SAFETY: signals the current task, the one acting on the socket.
        unsafe { bpf_send_signal(e.signal) };
    }
    Some(())
}

fn bpf_tgid() -> u64 {
    aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32
}

fn user<T>(addr: u64) -> Option<T> {
    // SAFETY: probe_read_user checks the address; a bad one is an error.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// The bytes of the first `MAX_IOVECS` of `n` iovecs at `iov`.
#[inline(always)]
fn iov_size(iov: u64, n: u64) -> u64 {
    let mut total = 0u64;
    for i in 0..MAX_IOVECS {
        if i as u64 >= n {
            break;
        }
        // An iovec is {base, len}, 16 bytes.
        total += user::<u64>(iov + i as u64 * 16 + 8).unwrap_or(0);
    }
    total
}

/// The `struct sock` of the current task's descriptor `fd`, if it is a
/// socket: a file whose inode is a socket, whose `struct socket`
/// (private_data) holds the sock.
#[inline(always)]
fn socket_of(fd: u64) -> Option<*const u8> {
    let file = crate::kernel::file_of_fd(fd)?;
    let inode = read_ptr(file, off!(file_f_inode)).ok()?;
    let mode = read::<u16>(inode, off!(inode_i_mode)).ok()?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket = read_ptr(file, off!(file_private_data)).ok()?;
    let sk = read_ptr(socket, off!(socket_sk)).ok()?;
    (!sk.is_null()).then_some(sk)
}

/// `sock_common`'s head where `KernelOffsets::sk_packed` says so.
#[repr(C)]
#[derive(Clone, Copy)]
struct Head {
    daddr: [u8; 4],
    saddr: [u8; 4],
    _hash: u32,
    dport: u16,
    num: u16,
    family: u16,
    state: u8,
    _reuse: u8,
}

/// Fills the record's family, addresses, ports, state, type and protocol
/// from `struct sock`. An IPv6 socket talking to an IPv4-mapped address is
/// reported (and matched) as IPv4, as the connect hooks do; its IPv4
/// addresses are the ones the kernel keeps for it.
#[inline(always)]
pub fn read_sock(sk: *const u8, e: &mut ConnectEvent) -> Option<()> {
    let h = if off!(sk_packed) != 0 {
        let (t, p) = (off!(sk_type), off!(sk_protocol));
        let pair = read::<[u16; 2]>(sk, if t < p { t } else { p }).ok()?;
        (e.sock_type, e.protocol) = if t < p {
            (pair[0], pair[1])
        } else {
            (pair[1], pair[0])
        };
        read::<Head>(sk, off!(sk_daddr)).ok()?
    } else {
        e.sock_type = read::<u16>(sk, off!(sk_type)).ok()?;
        e.protocol = read::<u16>(sk, off!(sk_protocol)).ok()?;
        Head {
            daddr: read(sk, off!(sk_daddr)).ok()?,
            saddr: read(sk, off!(sk_rcv_saddr)).ok()?,
            _hash: 0,
            dport: read(sk, off!(sk_dport)).ok()?,
            num: read(sk, off!(sk_num)).ok()?,
            family: read(sk, off!(sk_family)).ok()?,
            state: read(sk, off!(sk_state)).ok()?,
            _reuse: 0,
        }
    };
    e.sport = h.num;
    e.state = h.state;
    e.dport = u16::from_be(h.dport);
    let v4 = |e: &mut ConnectEvent| {
        e.family = AF_INET;
        e.saddr[..4].copy_from_slice(&h.saddr);
        e.daddr[..4].copy_from_slice(&h.daddr);
        Some(())
    };
    match h.family {
        AF_INET => v4(e),
        AF_INET6 if off!(sk_v6_daddr) != 0 => {
            let d = read::<[u8; 16]>(sk, off!(sk_v6_daddr)).ok()?;
            if d[..10] == [0; 10] && d[10] == 0xff && d[11] == 0xff {
                e.mapped = 1;
                return v4(e);
            }
            e.family = AF_INET6;
            e.daddr = d;
            e.saddr = read::<[u8; 16]>(sk, off!(sk_v6_rcv_saddr)).ok()?;
            Some(())
        }
        _ => None,
    }
}
