//! Packets, for Tetragon's packet hooks: `__cgroup_bpf_run_filter_skb`
//! (both ways), `sk_filter_trim_cap` (in), `ip_output`, `ip_mc_output` and
//! `ip6_output` (out). Each runs in the kernel's `cgroup_skb` hooks, which
//! those functions call, on programs at the cgroup v2 root attached only
//! while such a hook is loaded. A packet arrives in whichever task's
//! context the kernel handles it (softirq for most received ones), so it
//! is attributed by its socket: the socket's cgroup decides the scopes,
//! and its creator (`SOCK_OWNERS`, kept by `sock`) is the process, or for
//! a TCP socket `socket()` did not make (an accepted child) the task that
//! listened on its port (`TCP_OWNERS`). The
//! network selectors (`netsel`) test the packet's own addresses, ports and
//! protocol; only a hit is sent, with the socket as well. A cgroup_skb
//! program cannot signal, so a Sigkill or Signal on an outgoing packet is
//! carried out in two steps: the packet is dropped here, before it leaves,
//! and the daemon signals the socket's owner when it reads the record.
use aya_ebpf::{
    bindings::bpf_sock,
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_socket_cookie, bpf_sk_fullsock, bpf_skb_cgroup_id},
    },
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use sensor_common::{kind, net_ops, sock_op, Config, ConnectEvent, PacketEvent};

use crate::maps::{count_lost, wakeup_flags, EVENTS, PACKET, SOCK_OWNERS};
use crate::netsel::{AF_INET, AF_INET6};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
const IN: u8 = 0;
const OUT: u8 = 1;

/// IPv6 extension headers (RFC 8200's next-header values).
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// How many IPv6 extension headers are walked to the transport header:
/// more than any chain the kernel builds for a socket (hop-by-hop,
/// destination options, routing, destination options again), bounded for
/// the verifier.
const MAX_EXT_HEADERS: usize = 8;

/// The programs return 1 (pass) for every packet but an outgoing one that
/// a signalling selector matched, which they drop (0).
#[cgroup_skb(ingress)]
pub fn snsr_pkt_in(ctx: SkBuffContext) -> i32 {
    let _ = on_packet::<true>(&ctx, IN);
    1
}

#[cgroup_skb(ingress)]
pub fn snsr_pkt_in_compat(ctx: SkBuffContext) -> i32 {
    let _ = on_packet::<false>(&ctx, IN);
    1
}

#[cgroup_skb(egress)]
pub fn snsr_pkt_out(ctx: SkBuffContext) -> i32 {
    pass(on_packet::<true>(&ctx, OUT))
}

#[cgroup_skb(egress)]
pub fn snsr_pkt_out_compat(ctx: SkBuffContext) -> i32 {
    pass(on_packet::<false>(&ctx, OUT))
}

/// The verdict on an outgoing packet: dropped when its hit signals.
#[inline(always)]
fn pass(signal: Option<u32>) -> i32 {
    match signal {
        Some(s) if s != 0 => 0,
        _ => 1,
    }
}

/// Reports a packet its selectors matched; the signal they asked for.
#[inline(always)]
fn on_packet<const MODERN: bool>(ctx: &SkBuffContext, direction: u8) -> Option<u32> {
    let cfg: Config = *crate::maps::config()?;
    let class = if direction == IN {
        net_ops::PACKET_IN
    } else {
        net_ops::PACKET_OUT
    };
    if cfg.net_ops & class as u32 == 0 {
        return None;
    }
    let skb = ctx.skb.skb;
    // SAFETY: the context's socket field, typed by the verifier as a
    // nullable socket pointer; a packet without a full socket (forwarded,
    // or a kernel reply for a request or time-wait socket) has no owner.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a socket pointer from the context, checked above.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return None;
    }
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };
    let rec = PACKET.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch owned by this program run.
    let rec = unsafe { &mut *rec };
    let ev = crate::netsel::start_as(sock_op::PACKET, &cfg, 0)?;
    let owner = owner_of_packet(ev, full, cookie);
    if owner != 0 && owner == cfg.sensor_tgid {
        // The daemon's own packets (events it exports) never feed on
        // themselves.
        return None;
    }
    let e = &mut ev.event;
    e.pid = owner;
    e.tid = owner;
    e.classes = class;
    e.size = ctx.skb.len();
    read_packet(ctx, e)?;
    crate::netsel::subject_of(ev, &cfg, &crate::cgroups::OfSkb(skb));
    crate::netsel::evaluate::<MODERN>(ev);
    if ev.event.hits == 0 {
        return None;
    }
    // The packet is dropped whether or not its record can be made.
    let signal = ev.event.signal;
    let _ = report(ctx, ev, full as u64, rec, direction);
    Some(signal)
}

/// The process a packet is attributed to: its socket's creator; for a
/// TCP socket made without `socket()` (a listener's accepted child) or
/// before the hooks loaded, the task `sock` saw connect it or listen on
/// its port; 0 when none is known.
#[inline(always)]
fn owner_of_packet(ev: &mut crate::netsel::NetEval, full: *mut bpf_sock, cookie: u64) -> u32 {
    // SAFETY: plain u32 value.
    if let Some(tgid) = unsafe { SOCK_OWNERS.get(&cookie) } {
        return *tgid;
    }
    // SAFETY: a full socket from `bpf_sk_fullsock`.
    if unsafe { (*full).protocol } != u32::from(IPPROTO_TCP) {
        return 0;
    }
    // The socket's address as a number, for reads of the kernel's socket
    // (as `report` takes it).
    // SAFETY: per-CPU scratch owned by this program run.
    unsafe { core::ptr::write_volatile(&mut ev.sk, full as u64) };
    let sk = unsafe { core::ptr::read_volatile(&ev.sk) } as *const u8;
    crate::sock::owner_of(sk)
}

/// Sends the record of a packet the selectors matched, with its socket.
#[inline(always)]
fn report(
    ctx: &SkBuffContext,
    ev: &mut crate::netsel::NetEval,
    full: u64,
    rec: &mut PacketEvent,
    direction: u8,
) -> Option<()> {
    let skb = ctx.skb.skb;
    // The socket, read only for a hit, as the other hooks read it
    // (through a pointer stored in the scratch map and read back as a
    // number, as `sock::on_sock` does for the same reason), into the
    // record's network part, which the packet's then overwrites.
    // SAFETY: per-CPU scratch owned by this program run.
    unsafe { core::ptr::write_volatile(&mut ev.sk, full) };
    let skp = unsafe { core::ptr::read_volatile(&ev.sk) } as *const u8;
    crate::sock::read_sock(skp, &mut rec.net)?;
    keep_socket(rec);
    rec.direction = direction;
    // SAFETY: fields of the program's own context.
    unsafe {
        rec.mark = (*skb).mark;
        rec.priority = (*skb).priority;
        rec.hash = (*skb).hash;
    }
    let e = &mut ev.event;
    e.sock_type = rec.sk_type;
    e.uid = ctx.skb.get_socket_uid();
    // SAFETY: helpers on the program's own context.
    e.ktime = unsafe { bpf_ktime_get_ns() };
    e.cgroup_id = unsafe { bpf_skb_cgroup_id(skb.cast()) };
    e.kind = kind::PACKET;
    rec.net = *e;
    if EVENTS
        .output::<PacketEvent>(rec, wakeup_flags(e.signal != 0))
        .is_err()
    {
        count_lost(kind::CONNECT);
    }
    Some(())
}

/// Copies the socket's view (read into the record's network part) into
/// the record's socket.
#[inline(always)]
fn keep_socket(rec: &mut PacketEvent) {
    let e = rec.net;
    rec.sk_saddr = e.saddr;
    rec.sk_daddr = e.daddr;
    rec.sk_sport = e.sport;
    rec.sk_dport = e.dport;
    rec.sk_family = e.family;
    rec.sk_type = e.sock_type;
    rec.sk_protocol = e.protocol;
    rec.sk_state = e.state;
}

/// Replaces the record's addresses, ports, family and protocol with the
/// packet's (its IP header, and for TCP and UDP the ports after it). IPv6
/// extension headers are walked to the transport header, so that a header
/// an unprivileged sender can add (a routing header) does not hide the
/// ports from a selector; a longer chain than `MAX_EXT_HEADERS`, or a
/// fragment after the first, shows the last next-header value and no
/// ports.
#[inline(always)]
fn read_packet(ctx: &SkBuffContext, e: &mut ConnectEvent) -> Option<()> {
    e.saddr = [0; 16];
    e.daddr = [0; 16];
    e.sport = 0;
    e.dport = 0;
    e.mapped = 0;
    let l4 = match u16::from_be(ctx.skb.protocol() as u16) {
        // Each header in one copy: a helper call costs more than the bytes.
        ETH_P_IP => {
            let h = ctx.load::<[u8; 20]>(0).ok()?;
            e.protocol = h[9] as u16;
            e.saddr[..4].copy_from_slice(&h[12..16]);
            e.daddr[..4].copy_from_slice(&h[16..20]);
            e.family = AF_INET;
            usize::from(h[0] & 0xf) * 4
        }
        ETH_P_IPV6 => {
            let h = ctx.load::<[u8; 40]>(0).ok()?;
            e.saddr.copy_from_slice(&h[8..24]);
            e.daddr.copy_from_slice(&h[24..40]);
            e.family = AF_INET6;
            let (next, l4) = transport_v6(ctx, h[6]);
            e.protocol = next as u16;
            match l4 {
                Some(l4) => l4,
                None => return Some(()),
            }
        }
        _ => return None,
    };
    if e.protocol == IPPROTO_TCP || e.protocol == IPPROTO_UDP {
        if let Ok(ports) = ctx.load::<[u8; 4]>(l4) {
            e.sport = u16::from_be_bytes([ports[0], ports[1]]);
            e.dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
    }
    Some(())
}

/// The transport protocol of an IPv6 packet whose fixed header names
/// `next`, and the offset of its header; no offset when the chain is
/// longer than `MAX_EXT_HEADERS`, cut short, or a fragment after the first.
#[inline(always)]
fn transport_v6(ctx: &SkBuffContext, mut next: u8) -> (u8, Option<usize>) {
    let mut off = 40usize;
    for _ in 0..MAX_EXT_HEADERS {
        if !is_extension(next) {
            return (next, Some(off));
        }
        let Ok(h) = ctx.load::<[u8; 4]>(off) else {
            return (next, None);
        };
        let len = match next {
            NEXTHDR_AUTH => (usize::from(h[1]) + 2) * 4,
            NEXTHDR_FRAGMENT => {
                // The offset in 8-byte units, above the three flag bits:
                // only the first fragment holds the transport header.
                if u16::from_be_bytes([h[2], h[3]]) & !7 != 0 {
                    return (h[0], None);
                }
                8
            }
            _ => (usize::from(h[1]) + 1) * 8,
        };
        next = h[0];
        off += len;
    }
    if is_extension(next) {
        (next, None)
    } else {
        (next, Some(off))
    }
}

#[inline(always)]
fn is_extension(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_AUTH | NEXTHDR_DEST
    )
}
