//! Building Tetragon's events from what the kernel reported and what the
//! policy says: policy events for selector hits (`process_kprobe`,
//! `process_lsm`, `process_tracepoint`) and their arguments, with Tetragon's
//! names for families, socket types and protocols.
use std::net::{Ipv4Addr, Ipv6Addr};

use base64::Engine;
use sensor_common::{ConnectEvent, PacketEvent};

use super::event::{
    Argument, BinprmArg, Event, FileArg, Process, ProcessKprobe, ProcessLsm, ProcessTracepoint,
    SkbArg, SockArg, SockaddrArg, SyscallIdArg, TruncatedBytesArg,
};
use crate::decode::SyscallRecord;
use crate::policy::{EventArg, HookPoint, IntType, ReturnArg, SelectorMeta, SysArg, UserRead};

fn family_name(f: u16) -> &'static str {
    match f {
        2 => "AF_INET",
        10 => "AF_INET6",
        _ => "AF_UNSPEC",
    }
}

fn sock_type_name(t: u16) -> String {
    match t {
        1 => "SOCK_STREAM".into(),
        2 => "SOCK_DGRAM".into(),
        3 => "SOCK_RAW".into(),
        5 => "SOCK_SEQPACKET".into(),
        n => n.to_string(),
    }
}

fn protocol_name(p: u16) -> String {
    match p {
        6 => "IPPROTO_TCP".into(),
        17 => "IPPROTO_UDP".into(),
        1 => "IPPROTO_ICMP".into(),
        58 => "IPPROTO_ICMPV6".into(),
        132 => "IPPROTO_SCTP".into(),
        n => n.to_string(),
    }
}

fn addr(family: u16, bytes: &[u8; 16]) -> String {
    if family == 10 {
        Ipv6Addr::from(*bytes).to_string()
    } else {
        Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string()
    }
}

/// Tetragon's `sock_arg` for a packet's socket, and its `skb_arg`.
pub fn packet_args(p: &PacketEvent) -> (SockArg, SkbArg) {
    let n = &p.net;
    let sock = sock_arg(&ConnectEvent {
        family: p.sk_family,
        sock_type: p.sk_type,
        protocol: p.sk_protocol,
        saddr: p.sk_saddr,
        daddr: p.sk_daddr,
        sport: p.sk_sport,
        dport: p.sk_dport,
        state: p.sk_state,
        ..*n
    });
    let skb = SkbArg {
        hash: p.hash,
        len: n.size,
        priority: p.priority,
        mark: p.mark,
        saddr: addr(n.family, &n.saddr),
        daddr: addr(n.family, &n.daddr),
        sport: n.sport as u32,
        dport: n.dport as u32,
        proto: n.protocol as u32,
        protocol: protocol_name(n.protocol),
        family: family_name(n.family).into(),
    };
    (sock, skb)
}

/// The arguments of a packet hook: its socket, the packet, and for
/// `__cgroup_bpf_run_filter_skb` the direction (0 in, 1 out).
pub fn packet_arg<'a>(
    sock: &'a SockArg,
    skb: &'a SkbArg,
    direction: u8,
) -> impl Fn(EventArg) -> Option<Argument> + 'a {
    move |arg| match arg {
        EventArg::Sock => Some(Argument::SockArg(sock.clone())),
        EventArg::Skb => Some(Argument::SkbArg(skb.clone())),
        EventArg::PacketDirection => Some(Argument::IntArg(direction as i32)),
        _ => None,
    }
}

/// Tetragon's `sock_arg` for a connect record.
pub fn sock_arg(c: &ConnectEvent) -> SockArg {
    SockArg {
        family: family_name(c.family).into(),
        type_: sock_type_name(c.sock_type),
        protocol: protocol_name(c.protocol),
        saddr: addr(c.family, &c.saddr),
        daddr: addr(c.family, &c.daddr),
        sport: c.sport as u32,
        dport: c.dport as u32,
        state: tcp_state_name(c.state).into(),
    }
}

/// Tetragon's names of the kernel's TCP states; "" for 0 (not read).
fn tcp_state_name(state: u8) -> &'static str {
    let i = (state as usize).wrapping_sub(1);
    crate::policy::TCP_STATES.get(i).copied().unwrap_or("")
}

/// The Tetragon policy event for a selector hit.
pub fn policy_event(
    meta: &SelectorMeta,
    process: &Process,
    parent: Option<Process>,
    args: Vec<Argument>,
) -> Event {
    let action = meta.actions.name().to_string();
    let process = process.clone();
    let policy_name = meta.policy_name.clone();
    let (message, tags) = (meta.message.clone(), meta.tags.clone());
    match &meta.point {
        HookPoint::Kprobe { function } => Event::ProcessKprobe(ProcessKprobe {
            process,
            parent,
            ancestors: Vec::new(),
            function_name: function.clone(),
            args,
            // The hook returned what its Override says, where the kernel
            // carried one out; otherwise it let the call go on.
            return_: (meta.return_arg == ReturnArg::Int).then(|| {
                let errno = match meta.monitor {
                    true => 0,
                    false => meta.actions.errno.unwrap_or(0),
                };
                Argument::IntArg(-(errno as i32))
            }),
            action,
            policy_name,
            message,
            tags,
        }),
        HookPoint::Lsm { hook } => Event::ProcessLsm(ProcessLsm {
            process,
            parent,
            ancestors: Vec::new(),
            function_name: hook.clone(),
            policy_name,
            message,
            args,
            action,
            tags,
            ima_hash: None,
        }),
        HookPoint::Tracepoint { subsystem, event } => Event::ProcessTracepoint(ProcessTracepoint {
            process,
            parent,
            ancestors: Vec::new(),
            subsys: subsystem.clone(),
            event: event.clone(),
            args,
            policy_name,
            message,
            action,
            tags,
        }),
    }
}

/// The arguments of an exec hook: the binary's path, as `linux_binprm_arg`
/// or `string_arg` as the policy declared it.
pub fn binary_arg(path: &str) -> impl Fn(EventArg) -> Option<Argument> + '_ {
    move |arg| match arg {
        EventArg::LinuxBinprm => Some(Argument::LinuxBinprmArg(BinprmArg {
            path: path.to_string(),
        })),
        EventArg::PathString => Some(Argument::StringArg(path.to_string())),
        EventArg::File => Some(Argument::FileArg(FileArg {
            path: path.to_string(),
        })),
        _ => None,
    }
}

/// The arguments of a connect hook: `sock_arg`, or `sockaddr_arg` with the
/// destination, as the policy declared them.
pub fn connect_arg<'a>(
    sock: &'a SockArg,
    c: &'a ConnectEvent,
) -> impl Fn(EventArg) -> Option<Argument> + 'a {
    move |arg| match arg {
        EventArg::SendSize => Some(Argument::IntArg(c.size as i32)),
        EventArg::SockFamily => Some(Argument::IntArg(c.family as i32)),
        EventArg::NewState => Some(Argument::IntArg(c.new_state as i32)),
        // The socket a hook returns: the one created (`sk_alloc`), or the
        // listener's child in the state it is cloned into.
        EventArg::ReturnSock => Some(Argument::SockArg(SockArg {
            state: match c.new_state {
                0 => sock.state.clone(),
                s => tcp_state_name(s).into(),
            },
            ..sock.clone()
        })),
        EventArg::Sock => Some(Argument::SockArg(sock.clone())),
        EventArg::Sockaddr => Some(Argument::SockaddrArg(SockaddrArg {
            family: sock.family.clone(),
            addr: sock.daddr.clone(),
            port: sock.dport,
        })),
        EventArg::AddrLen => Some(Argument::IntArg(if sock.family == "AF_INET6" {
            28
        } else {
            16
        })),
        _ => None,
    }
}

/// The arguments of a syscall hook, read from the raw registers as the
/// policy's types say, and from the copies of user memory.
pub fn syscall_arg(r: &SyscallRecord) -> impl Fn(EventArg) -> Option<Argument> + '_ {
    let s = &r.header;
    move |arg| {
        let (which, ty) = match arg {
            EventArg::Syscall(which, ty) => (which, ty),
            EventArg::SyscallUser { reg, read } => return user_arg(r, reg, read),
            _ => return None,
        };
        let raw = match which {
            SysArg::Number => s.nr as u64,
            SysArg::Reg(r) => *s.args.get(r as usize)?,
        };
        Some(int_argument(raw, ty))
    }
}

/// A raw register (or return value) as its type shows it.
pub fn int_argument(raw: u64, ty: IntType) -> Argument {
    match ty {
        IntType::Int => Argument::IntArg(raw as u32 as i32),
        IntType::Uint32 => Argument::UintArg(raw as u32),
        IntType::Uint64 | IntType::SizeT => Argument::SizeArg(raw.to_string()),
        IntType::Long => Argument::LongArg((raw as i64).to_string()),
        IntType::Syscall64 => Argument::SyscallId(SyscallIdArg {
            id: raw as u32,
            abi: "x64".into(),
        }),
    }
}

/// A string or buffer argument. One that could not be copied (a bad
/// pointer) is an empty string or no bytes, as in Tetragon.
fn user_arg(r: &SyscallRecord, reg: u8, read: UserRead) -> Option<Argument> {
    let bytes = r.user.get(reg as usize)?.as_deref().unwrap_or_default();
    Some(match read {
        UserRead::String => {
            let s = bytes.strip_suffix(&[0]).unwrap_or(bytes);
            Argument::StringArg(String::from_utf8_lossy(s).into_owned())
        }
        UserRead::Fd => {
            let s = bytes.strip_suffix(&[0]).unwrap_or(bytes);
            Argument::FileArg(FileArg {
                path: String::from_utf8_lossy(s).into_owned(),
            })
        }
        UserRead::Buffer { size_reg } => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            let size = r.header.args.get(size_reg as usize).copied().unwrap_or(0);
            if r.header.truncated & (1 << reg) != 0 {
                Argument::TruncatedBytesArg(TruncatedBytesArg {
                    bytes_arg: b64,
                    orig_size: size.to_string(),
                })
            } else {
                Argument::BytesArg(b64)
            }
        }
    })
}
