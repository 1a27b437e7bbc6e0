//! The hooks this sensor implements, by the names Tetragon policies use:
//! which reflex each maps onto and which arguments it exposes.
use sensor_common::net_ops;

use super::{EventArg, HookFamily};

/// One argument a hook exposes: its index in the policy's `args` and the
/// `type` names that fit it.
pub struct ArgDef {
    pub index: u32,
    pub types: &'static [&'static str],
    pub arg: EventArg,
}

pub struct HookDef {
    pub family: HookFamily,
    /// The name events carry (`function_name`).
    pub function: &'static str,
    pub args: &'static [ArgDef],
    pub binaries_of_new_image: bool,
    /// Whether Override can be enforced here: the connect hooks (the cgroup
    /// hook denies the connect), and the exec hooks that run before the
    /// exec happens (BPF-LSM `bprm_check_security`); not hooks that act
    /// once the new image is in place.
    pub overrides: bool,
    /// For a network hook, the records its selectors are evaluated on
    /// (a `net_ops` bit); 0 for the others.
    pub net_op: u16,
    /// Whether Sigkill and Signal are carried out on this hook: sent from
    /// the kernel program it runs on, or, for an outgoing packet, the
    /// packet dropped there and its sender signalled by the daemon.
    pub signals: bool,
    /// Whether the hook returns a socket (`return: true` with a `sock`
    /// `returnArg`): `sk_alloc` and `tcp_create_openreq_child`.
    pub returns_sock: bool,
    /// For a packet hook, the packets its function sees of all those the
    /// packet programs see.
    pub packets: Packets,
}

/// Which packets a packet hook sees, as filters its selectors get on top
/// of their own: the packet programs see every packet a socket sends or
/// receives, and `ip_output` only the IPv4 ones sent to a unicast address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packets {
    /// Not a packet hook, or one that sees them all.
    None,
    /// IPv4 to a unicast address (`ip_output`).
    Ip4Unicast,
    /// IPv4 to a multicast or the broadcast address (`ip_mc_output`).
    Ip4Multicast,
    /// IPv6 (`ip6_output`).
    Ip6,
}

/// The destinations `ip_mc_output` sends to instead of `ip_output` (a
/// subnet's directed broadcast is routed as broadcast too, and is not
/// told apart here).
pub const MULTICAST4: [&str; 2] = ["224.0.0.0/4", "255.255.255.255/32"];

const BINPRM: ArgDef = ArgDef {
    index: 0,
    types: &["linux_binprm"],
    arg: EventArg::LinuxBinprm,
};
const SOCK: ArgDef = ArgDef {
    index: 0,
    types: &["sock", "socket"],
    arg: EventArg::Sock,
};
const SOCKADDR1: ArgDef = ArgDef {
    index: 1,
    types: &["sockaddr"],
    arg: EventArg::Sockaddr,
};

/// `security_bprm_creds_from_file(bprm, file)`: the bprm is not
/// reported (`nop`), the file is the binary that will run.
const NOP0: ArgDef = ArgDef {
    index: 0,
    types: &["nop"],
    arg: EventArg::Nop,
};
const FILE1: ArgDef = ArgDef {
    index: 1,
    types: &["file"],
    arg: EventArg::File,
};

const ADDRLEN2: ArgDef = ArgDef {
    index: 2,
    types: &["int"],
    arg: EventArg::AddrLen,
};

/// `tcp_sendmsg(sk, msg, size)`: the size the caller asked to send.
const SIZE2: ArgDef = ArgDef {
    index: 2,
    types: &["int"],
    arg: EventArg::SendSize,
};

/// `sk_alloc(net, family, priority, prot, kern)`: the family asked for.
const FAMILY1: ArgDef = ArgDef {
    index: 1,
    types: &["int"],
    arg: EventArg::SockFamily,
};

/// `tcp_set_state(sk, state)`: the state the socket enters.
const NEW_STATE1: ArgDef = ArgDef {
    index: 1,
    types: &["int"],
    arg: EventArg::NewState,
};

/// A packet hook's socket and packet: `(sk, skb, ...)` or, for the
/// output functions, `(net, sk, skb)`.
const SOCK1: ArgDef = ArgDef {
    index: 1,
    types: &["sock", "socket"],
    arg: EventArg::Sock,
};
const SKB1: ArgDef = ArgDef {
    index: 1,
    types: &["skb"],
    arg: EventArg::Skb,
};
const SKB2: ArgDef = ArgDef {
    index: 2,
    types: &["skb"],
    arg: EventArg::Skb,
};
/// `__cgroup_bpf_run_filter_skb`'s attach type: 0 in, 1 out.
const DIRECTION2: ArgDef = ArgDef {
    index: 2,
    types: &["int"],
    arg: EventArg::PacketDirection,
};

/// A network hook that reports and never acts: its kernel program cannot
/// signal (a cgroup program) or runs where the current task is not the
/// acting one (softirq); `parse` refuses such actions with the reason.
const fn reports(
    function: &'static str,
    args: &'static [ArgDef],
    net_op: u16,
    packets: Packets,
) -> HookDef {
    HookDef {
        family: HookFamily::Connect,
        function,
        args,
        binaries_of_new_image: false,
        overrides: false,
        net_op,
        signals: net_op == net_ops::PACKET_OUT,
        returns_sock: net_op == net_ops::ALLOC || net_op == net_ops::OPENREQ,
        packets,
    }
}

pub const KPROBES: &[(&str, HookDef)] = &[
    (
        "__cgroup_bpf_run_filter_skb",
        reports(
            "__cgroup_bpf_run_filter_skb",
            &[SOCK, SKB1, DIRECTION2],
            net_ops::PACKET_IN | net_ops::PACKET_OUT,
            Packets::None,
        ),
    ),
    (
        "sk_filter_trim_cap",
        reports(
            "sk_filter_trim_cap",
            &[SOCK, SKB1],
            net_ops::PACKET_IN,
            Packets::None,
        ),
    ),
    (
        "ip_output",
        reports(
            "ip_output",
            &[SOCK1, SKB2],
            net_ops::PACKET_OUT,
            Packets::Ip4Unicast,
        ),
    ),
    (
        "ip_mc_output",
        reports(
            "ip_mc_output",
            &[SOCK1, SKB2],
            net_ops::PACKET_OUT,
            Packets::Ip4Multicast,
        ),
    ),
    (
        "ip6_output",
        reports(
            "ip6_output",
            &[SOCK1, SKB2],
            net_ops::PACKET_OUT,
            Packets::Ip6,
        ),
    ),
    (
        "security_bprm_check",
        HookDef {
            family: HookFamily::Exec,
            function: "security_bprm_check",
            args: &[BINPRM],
            binaries_of_new_image: false,
            overrides: true,
            net_op: 0,
            signals: true,
            returns_sock: false,
            packets: Packets::None,
        },
    ),
    (
        "security_bprm_creds_from_file",
        HookDef {
            family: HookFamily::Exec,
            function: "security_bprm_creds_from_file",
            args: &[NOP0, FILE1],
            binaries_of_new_image: false,
            overrides: false,
            net_op: 0,
            signals: true,
            returns_sock: false,
            packets: Packets::None,
        },
    ),
    (
        "sys_execve",
        HookDef {
            family: HookFamily::Exec,
            function: "__x64_sys_execve",
            args: &[ArgDef {
                index: 0,
                types: &["string", "filename"],
                arg: EventArg::PathString,
            }],
            binaries_of_new_image: false,
            overrides: false,
            net_op: 0,
            signals: true,
            returns_sock: false,
            packets: Packets::None,
        },
    ),
    (
        "sys_execveat",
        HookDef {
            family: HookFamily::Exec,
            function: "__x64_sys_execveat",
            args: &[ArgDef {
                index: 1,
                types: &["string", "filename"],
                arg: EventArg::PathString,
            }],
            binaries_of_new_image: false,
            overrides: false,
            net_op: 0,
            signals: true,
            returns_sock: false,
            packets: Packets::None,
        },
    ),
    (
        "tcp_connect",
        HookDef {
            family: HookFamily::Connect,
            function: "tcp_connect",
            args: &[SOCK],
            binaries_of_new_image: false,
            overrides: true,
            net_op: net_ops::CONNECT,
            signals: true,
            returns_sock: false,
            packets: Packets::None,
        },
    ),
    (
        "tcp_close",
        reports("tcp_close", &[SOCK], net_ops::CLOSE, Packets::None),
    ),
    (
        "sk_alloc",
        reports("sk_alloc", &[FAMILY1], net_ops::ALLOC, Packets::None),
    ),
    (
        "__sk_free",
        reports("__sk_free", &[SOCK], net_ops::FREE, Packets::None),
    ),
    (
        "tcp_set_state",
        reports(
            "tcp_set_state",
            &[SOCK, NEW_STATE1],
            net_ops::STATE,
            Packets::None,
        ),
    ),
    (
        "tcp_create_openreq_child",
        reports(
            "tcp_create_openreq_child",
            &[SOCK],
            net_ops::OPENREQ,
            Packets::None,
        ),
    ),
    (
        "tcp_sendmsg",
        HookDef {
            family: HookFamily::Connect,
            function: "tcp_sendmsg",
            args: &[SOCK, SIZE2],
            binaries_of_new_image: false,
            overrides: false,
            net_op: net_ops::SEND,
            signals: true,
            returns_sock: false,
            packets: Packets::None,
        },
    ),
    (
        "inet_csk_listen_start",
        HookDef {
            family: HookFamily::Connect,
            function: "inet_csk_listen_start",
            args: &[SOCK],
            binaries_of_new_image: false,
            overrides: false,
            net_op: net_ops::LISTEN,
            signals: true,
            returns_sock: false,
            packets: Packets::None,
        },
    ),
    (
        "security_socket_connect",
        HookDef {
            family: HookFamily::Connect,
            function: "security_socket_connect",
            args: &[SOCK, SOCKADDR1, ADDRLEN2],
            binaries_of_new_image: false,
            overrides: true,
            net_op: net_ops::CONNECT,
            signals: true,
            returns_sock: false,
            packets: Packets::None,
        },
    ),
    (
        "sys_connect",
        HookDef {
            family: HookFamily::Connect,
            function: "__x64_sys_connect",
            args: &[SOCKADDR1],
            binaries_of_new_image: false,
            overrides: true,
            net_op: net_ops::CONNECT,
            signals: true,
            returns_sock: false,
            packets: Packets::None,
        },
    ),
];

/// The hook whose Post may carry the binary's IMA hash (`imaHash`): it
/// runs before the exec, where a sleepable program can hash the file.
pub const IMA_HOOK: &str = "bprm_check_security";

pub const LSM_HOOKS: &[(&str, HookDef)] = &[
    (
        "bprm_check_security",
        HookDef {
            family: HookFamily::Exec,
            function: "bprm_check_security",
            args: &[BINPRM],
            binaries_of_new_image: false,
            overrides: true,
            net_op: 0,
            signals: true,
            returns_sock: false,
            packets: Packets::None,
        },
    ),
    (
        "socket_connect",
        HookDef {
            family: HookFamily::Connect,
            function: "socket_connect",
            args: &[SOCK, SOCKADDR1],
            binaries_of_new_image: false,
            overrides: true,
            net_op: net_ops::CONNECT,
            signals: true,
            returns_sock: false,
            packets: Packets::None,
        },
    ),
];

/// `sched/sched_process_exec`; tracepoint indexes count the format's common
/// fields, so `filename` is index 4.
pub const EXEC_TRACEPOINT: HookDef = HookDef {
    family: HookFamily::Exec,
    function: "sched_process_exec",
    args: &[ArgDef {
        index: 4,
        types: &["string", "data_loc", "auto"],
        arg: EventArg::PathString,
    }],
    binaries_of_new_image: true,
    overrides: false,
    net_op: 0,
    signals: true,
    returns_sock: false,
    packets: Packets::None,
};

pub fn names(table: &[(&str, HookDef)]) -> String {
    table.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// A kprobe by its call name, with or without the syscall prefix.
pub fn kprobe(call: &str) -> Option<&'static HookDef> {
    let base = call
        .strip_prefix("__x64_")
        .or_else(|| call.strip_prefix("__arm64_"))
        .unwrap_or(call);
    KPROBES.iter().find(|(n, _)| *n == base).map(|(_, d)| d)
}

pub fn lsm(hook: &str) -> Option<&'static HookDef> {
    LSM_HOOKS.iter().find(|(n, _)| *n == hook).map(|(_, d)| d)
}
