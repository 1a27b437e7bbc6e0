//! The `#[repr(C)]` contract between the kernel programs (`sensor-ebpf`) and the
//! daemon (`sensor`): ring buffer records, map keys and values, and the struct
//! offsets the loader reads from the running kernel's BTF.
//!
//! Everything here is plain data with a fixed layout; both sides compile the same
//! definitions, so a change here is a change of the wire format.
#![no_std]

mod syscall;
pub use syscall::*;

/// Selectors across all exec hooks of all loaded policies. One bit each in
/// [`ProcState`] and [`ExecEvent::hits`].
pub const MAX_SELECTORS: usize = 64;
/// `matchArgs` entries per selector (Tetragon's limit).
pub const MAX_ARG_FILTERS: usize = 5;
/// Bytes of a string map key: selector index, slot, then the string, zero padded.
pub const STR_KEY_LEN: usize = 256;
/// Header bytes of a string map key (selector index, slot).
pub const STR_KEY_HEADER: usize = 2;
/// Longest string value a selector can hold (paths for In, Prefix, Postfix).
pub const MAX_VALUE_LEN: usize = STR_KEY_LEN - STR_KEY_HEADER;
/// Longest binary path or cwd an event carries; longer ones are cut and flagged.
pub const PATH_MAX: usize = 4096;
/// Bytes of the argument block (NUL separated) an exec event carries.
pub const ARGS_MAX: usize = 4096;
/// Deepest cgroup level the scope check walks.
pub const MAX_CGROUP_LEVEL: i32 = 16;

/// Slot of a string key that holds `matchBinaries` values; `matchArgs` entry `i`
/// uses slot `i + 1`.
pub const SLOT_BINARIES: u8 = 0;

/// Pod-scoped policies at most (one bit each in `POD_SCOPES` values).
pub const MAX_SCOPES: usize = 62;
/// The `POD_SCOPES` bit every known pod's cgroup carries: records of tasks
/// in pods wake the reader at once, since the brain acts on them.
pub const POD_BIT: u64 = 1 << 63;
/// The `POD_SCOPES` bit of a kubepods root's entry: its bits hold for a
/// task under it only when the task's pod has no entry of its own (a pod
/// the watcher does not know yet). That entry holds every scope, so that a
/// pod-scoped policy fails closed for pods that cannot be placed yet.
pub const POD_UNKNOWN: u64 = 1 << 62;

/// First field of every ring buffer record.
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const FORK: u32 = 2;
    pub const EXIT: u32 = 3;
    pub const CONNECT: u32 = 4;
    /// An exec hit decided in the BPF-LSM hook, before the exec (an
    /// Override selector refused it, or a selector asked for the binary's
    /// hash): an [`ExecEvent`] of the calling process, followed by the
    /// path of the binary it tried.
    pub const EXEC_DENIED: u32 = 5;
    /// A syscall a syscall selector matched: a [`SyscallEvent`].
    pub const SYSCALL: u32 = 6;
    /// The return of a syscall whose selectors wait for it
    /// (`return: true`): a [`SyscallReturn`]. Its losses count as
    /// `SYSCALL`'s.
    pub const SYSCALL_RETURN: u32 = 8;
    /// A packet a packet hook's selectors matched: a [`PacketEvent`]. Its
    /// losses count as `CONNECT`'s.
    pub const PACKET: u32 = 9;
    /// An `EXEC_DENIED` record whose hit asked for the binary's IMA hash
    /// (`imaHash`): an [`ImaDigest`], then the `EXEC_DENIED` record. Its
    /// losses count as `EXEC`'s.
    pub const EXEC_HASHED: u32 = 10;
}

/// Bytes of the largest digest IMA computes (SHA-512).
pub const IMA_DIGEST_MAX: usize = 64;

/// The binary's hash as `bpf_ima_file_hash` gave it: `algo` is the
/// kernel's `enum hash_algo` (4 = SHA-256), or a negative errno when IMA
/// could not hash the file; the digest's length follows from the algo.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImaDigest {
    pub kind: u32,
    pub algo: i32,
    pub digest: [u8; IMA_DIGEST_MAX],
}

/// Slot of the kernel's `LOST` counters (beside the record kinds) that
/// counts process states the full `PROCS` map refused.
pub const LOST_PROC_STATE: u32 = 7;

/// Bits of [`ExecEvent::flags`].
pub mod exec_flags {
    pub const PATH_TRUNCATED: u32 = 1 << 0;
    pub const ARGS_TRUNCATED: u32 = 1 << 1;
    pub const CWD_TRUNCATED: u32 = 1 << 2;
    pub const ARGS_ERROR: u32 = 1 << 3;
    pub const CWD_ERROR: u32 = 1 << 4;
    pub const PATH_ERROR: u32 = 1 << 5;
}

/// An exec, written by `sched/sched_process_exec`. Followed in the record by
/// `path_len` bytes of binary path, `args_len` bytes of NUL-separated arguments
/// (argv\[0\] included) and `cwd_len` bytes of working directory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// `bpf_ktime_get_ns()` at exec: the `start_ktime` of the exec_id.
    pub ktime: u64,
    pub cgroup_id: u64,
    /// Selectors that matched (first match per hook); bit i = selector i.
    pub hits: u64,
    /// Signal the kernel sent to the process at exec (0 = none).
    pub signal: u32,
    pub flags: u32,
    pub path_len: u32,
    pub args_len: u32,
    pub cwd_len: u32,
    pub comm: [u8; 16],
    /// The task's login uid (`loginuid`, audit's `auid`): 4294967295 when
    /// unset, or when the kernel has no audit syscall support.
    pub auid: u32,
    /// The new image's credentials; zero unless `Config::process_cred`.
    pub creds: Creds,
    /// The task's namespaces' inode numbers, in [`ns_kind`] order; zero
    /// unless `Config::process_ns`.
    pub ns: [u32; NS_KINDS],
    /// Its PID in its own PID namespace (1: a container's init), for
    /// `in_init_tree`; 0 when unknown.
    pub nspid: u32,
    pub _pad: u32,
    /// What `binary_properties` is made of.
    pub binary: BinaryInfo,
}

/// The executed file's inode and the credentials the exec gave: the
/// daemon tells a set-user-ID or set-group-ID execution, capabilities
/// from the file, and a binary that has no name on any file system
/// (memfd, deleted) from them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BinaryInfo {
    pub ino: u64,
    pub nlink: u32,
    /// `i_mode`: the set-ID bits.
    pub mode: u32,
    pub file_uid: u32,
    pub file_gid: u32,
    pub euid: u32,
    pub egid: u32,
    pub cap_permitted: u64,
    pub cap_ambient: u64,
    /// Non-zero when the fields were read.
    pub valid: u32,
    /// `bprm->per_clear`: the personality flags the kernel clears for a
    /// privileged exec (set-ID, or capabilities gained); 0 for any other.
    pub per_clear: u32,
}

/// Namespaces an exec record carries, by index in [`ExecEvent::ns`], in
/// the order of Tetragon's `Namespaces`.
pub mod ns_kind {
    pub const UTS: usize = 0;
    pub const IPC: usize = 1;
    pub const MNT: usize = 2;
    pub const PID: usize = 3;
    pub const PID_FOR_CHILDREN: usize = 4;
    pub const NET: usize = 5;
    pub const TIME: usize = 6;
    pub const TIME_FOR_CHILDREN: usize = 7;
    pub const CGROUP: usize = 8;
    pub const USER: usize = 9;
    /// The slots read from `struct nsproxy`, in the order of
    /// [`crate::KernelOffsets::nsproxy_ns`].
    pub const FROM_NSPROXY: [usize; 8] = [
        UTS,
        IPC,
        MNT,
        PID_FOR_CHILDREN,
        NET,
        TIME,
        TIME_FOR_CHILDREN,
        CGROUP,
    ];
}
pub const NS_KINDS: usize = 10;

/// A task's credentials (`struct cred`), as Tetragon's
/// `process_credentials` shows them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Creds {
    /// uid, gid, suid, sgid, euid, egid, fsuid, fsgid: the order of
    /// `struct cred`.
    pub ids: [u32; 8],
    pub securebits: u32,
    /// Non-zero when the fields were read.
    pub valid: u32,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_inheritable: u64,
    /// The credentials' user namespace.
    pub user_ns: UserNs,
}

/// A user namespace (`struct user_namespace`): its nesting level (0: the
/// host's), its owner and group, and its inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserNs {
    pub level: u32,
    pub owner: u32,
    pub group: u32,
    pub inum: u32,
}

/// A new process (not a thread), from `sched_process_fork`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkEvent {
    pub kind: u32,
    pub pid: u32,
    pub ppid: u32,
    pub _pad: u32,
    pub ktime: u64,
}

/// The last thread of a process exits, from `sched/sched_process_exit`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitEvent {
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    /// The kernel's `exit_code`: status in bits 8..16, signal in bits 0..7.
    pub exit_code: u32,
    pub ktime: u64,
}

/// Per-process policy state, keyed by tgid: which selectors' binary sets this
/// process's image belongs to, and which it inherits through `followChildren`,
/// for exec selectors and for connect selectors.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcState {
    pub bin_in: u64,
    pub follow: u64,
    pub net_bin_in: u64,
    pub net_follow: u64,
    pub sys_bin_in: u64,
    pub sys_follow: u64,
}

/// A cgroup's budget of routine records (connects and sends that hit no
/// policy), as a generic cell rate: `tat` is the theoretical arrival time
/// of its next record, in ktime nanoseconds; `suppressed` counts records
/// not sent because the cgroup was over its budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub tat: u64,
    pub suppressed: u64,
}

/// Routine records a cgroup may send per second, on average.
pub const BUDGET_RATE: u64 = 2_000;
/// Records a cgroup may send in a burst above that rate.
pub const BUDGET_BURST: u64 = 1_000;

/// Connect selectors' binary values live in the string maps under selector
/// index `NET_SELECTOR_BASE + i`, apart from exec selectors.
pub const NET_SELECTOR_BASE: u8 = 64;

/// Which socket hook saw a network record.
pub mod sock_op {
    pub const CONNECT4: u8 = 1;
    pub const CONNECT6: u8 = 2;
    pub const SENDMSG4: u8 = 3;
    pub const SENDMSG6: u8 = 4;
    /// A TCP socket released by its last close (`tcp_close`).
    pub const CLOSE: u8 = 5;
    /// A TCP socket starting to listen (`inet_csk_listen_start`).
    pub const LISTEN: u8 = 6;
    /// A send on a TCP socket (`tcp_sendmsg`).
    pub const SEND: u8 = 7;
    /// An IP socket created by `socket()` (`sk_alloc`).
    pub const ALLOC: u8 = 8;
    /// A packet, in or out: a [`PacketEvent`](super::PacketEvent).
    pub const PACKET: u8 = 10;
    /// A TCP socket changing state (`tcp_set_state`, and on the same
    /// tracepoint `tcp_create_openreq_child` and `inet_csk_listen_start`).
    pub const STATE: u8 = 9;
}

/// Which records a network selector is evaluated on: one bit per hook
/// class, so that a `tcp_close` selector never acts on a connect.
pub mod net_ops {
    /// Connects and unconnected sends (the cgroup socket-address hooks).
    pub const CONNECT: u16 = 1 << 0;
    pub const CLOSE: u16 = 1 << 1;
    pub const LISTEN: u16 = 1 << 2;
    pub const SEND: u16 = 1 << 3;
    /// `sk_alloc`: a socket created.
    pub const ALLOC: u16 = 1 << 4;
    /// `__sk_free`: a socket released by its last close, any protocol.
    pub const FREE: u16 = 1 << 5;
    /// `tcp_set_state`: a TCP state change made by `tcp_set_state`.
    pub const STATE: u16 = 1 << 6;
    /// `tcp_create_openreq_child`: a listener's child created (LISTEN to
    /// SYN_RECV).
    pub const OPENREQ: u16 = 1 << 7;
    /// A packet received by a socket (the cgroup ingress hook, in
    /// `sk_filter_trim_cap`).
    pub const PACKET_IN: u16 = 1 << 8;
    /// A packet a socket sends (the cgroup egress hook, in `ip_output`,
    /// `ip_mc_output` and `ip6_output`).
    pub const PACKET_OUT: u16 = 1 << 9;

    /// The class of a record of socket operation `op` (a `sock_op`); a
    /// record can be of more classes than its op's (a release is both a
    /// `tcp_close` and a `__sk_free`): see `ConnectEvent::classes`.
    #[inline(always)]
    pub const fn of(op: u8) -> u16 {
        match op {
            super::sock_op::CLOSE => CLOSE,
            super::sock_op::LISTEN => LISTEN,
            super::sock_op::SEND => SEND,
            super::sock_op::ALLOC => ALLOC,
            super::sock_op::STATE => STATE,
            _ => CONNECT,
        }
    }
}

/// An outbound connect or unconnected send, from the cgroup socket hooks,
/// with the kernel's copy of the address. Addresses are in network order;
/// IPv4 uses the first 4 bytes. An IPv4-mapped IPv6 destination is reported
/// (and matched) as IPv4 with `mapped` set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectEvent {
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub ktime: u64,
    pub cgroup_id: u64,
    /// Connect selectors that matched (first match per hook).
    pub hits: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// AF_INET or AF_INET6, after unmapping.
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    /// SOCK_STREAM, SOCK_DGRAM, ...
    pub sock_type: u16,
    pub protocol: u16,
    pub op: u8,
    pub mapped: u8,
    /// Signal sent to the process (0 = none).
    pub signal: u32,
    /// Errno the connect failed with (0 = allowed).
    pub errno: u32,
    /// Non-zero: denied because the process's pod is quarantined.
    pub quarantined: u8,
    /// The TCP state (`TCP_ESTABLISHED` is 1) where the record was read
    /// from `struct sock`; 0 for the connect hooks, which do not see it.
    pub state: u8,
    /// The state a TCP socket enters (`tcp_set_state`'s argument 1).
    pub new_state: u8,
    pub _pad: u8,
    /// The size a send asked for (`tcp_sendmsg`'s argument 2); a packet's
    /// length.
    pub size: u32,
    /// The hook classes the selectors were evaluated for ([`net_ops`]).
    pub classes: u16,
    pub _pad2: u16,
}

/// A packet a packet hook's selectors matched (`kind::PACKET`). `net`
/// is the packet as a network record: its addresses, ports and protocol
/// (what the `skb` operators test) and in `size` its length; the owner is
/// the socket's creator. The socket the packet belongs to follows, as
/// `bpf_sock` shows it (addresses in network order, ports in host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketEvent {
    pub net: ConnectEvent,
    pub sk_saddr: [u8; 16],
    pub sk_daddr: [u8; 16],
    pub sk_sport: u16,
    pub sk_dport: u16,
    pub sk_family: u16,
    pub sk_type: u16,
    pub sk_protocol: u16,
    pub sk_state: u8,
    /// 0 in, 1 out (`BPF_CGROUP_INET_INGRESS`, `_EGRESS`).
    pub direction: u8,
    pub mark: u32,
    pub priority: u32,
    pub hash: u32,
}

/// What a network filter tests.
pub mod net_kind {
    pub const DADDR: u8 = 1;
    pub const SADDR: u8 = 2;
    pub const DPORT: u8 = 3;
    pub const SPORT: u8 = 4;
    pub const DPORT_PRIV: u8 = 5;
    pub const SPORT_PRIV: u8 = 6;
    pub const PROTOCOL: u8 = 7;
    pub const FAMILY: u8 = 8;
    /// The socket's TCP state (Tetragon's `State` operator).
    pub const STATE: u8 = 9;
    /// The state a TCP socket enters (`tcp_set_state`'s argument 1).
    pub const NEW_STATE: u8 = 10;
}

/// One network filter of a connect selector.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetFilter {
    pub kind: u8,
    pub negate: u8,
}

/// A compiled connect selector, evaluated like [`ExecSelector`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetSelector {
    pub hook: u32,
    /// Signal to send on match (Sigkill = 9); the connect is also denied.
    pub signal: u32,
    /// Errno the connect fails with on match (Override), 0 for none.
    pub errno: u32,
    pub binaries: StrFilter,
    pub follow: u8,
    pub n_filters: u8,
    pub filters: [NetFilter; MAX_ARG_FILTERS],
    /// As [`ExecSelector::scope`].
    pub scope: u8,
    /// The records it is evaluated on ([`net_ops`]).
    pub ops: u16,
}

/// Address set key: selector, slot, family (4 or 6), then the address.
/// Prefix lengths count the 4 header bytes.
pub const NET_ADDR_KEY_LEN: usize = 20;

/// Value set key for ports, protocols and families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetValueKey {
    pub selector: u8,
    pub slot: u8,
    pub _pad: u16,
    pub value: u32,
}

// The kernel and the daemon read these byte for byte: no implicit padding.
const _: () = assert!(core::mem::size_of::<Creds>() == 80);
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 88 + 80 + 4 * NS_KINDS + 8 + 56);
const _: () = assert!(core::mem::size_of::<Config>() == 88);
const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 104);
const _: () = assert!(core::mem::size_of::<PacketEvent>() == 160);
const _: () = assert!(core::mem::size_of::<ImaDigest>() == 72);
const _: () = assert!(core::mem::size_of::<ExecSelector>() == 32);

/// How a string filter is looked up.
pub mod match_kind {
    pub const NONE: u8 = 0;
    /// Exact value: hash map.
    pub const EQUAL: u8 = 1;
    /// Value is a prefix: LPM trie on the string.
    pub const PREFIX: u8 = 2;
    /// Value is a suffix: LPM trie on the reversed string.
    pub const POSTFIX: u8 = 3;
}

/// One string filter of a selector: a lookup kind and whether to negate it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StrFilter {
    pub kind: u8,
    pub negate: u8,
}

/// A compiled exec selector. Selectors are evaluated in index order; within one
/// hook only the first match acts (Tetragon's semantics).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecSelector {
    /// Index of the hook this selector belongs to (< 64), for first-match.
    pub hook: u32,
    /// Signal to send on match, 0 for none (Sigkill = 9).
    pub signal: u32,
    pub binaries: StrFilter,
    /// Set when `matchBinaries` has `followChildren: true`.
    pub follow: u8,
    pub n_args: u8,
    pub args: [StrFilter; MAX_ARG_FILTERS],
    /// Non-zero: `matchBinaries` tests the image being executed (a tracepoint
    /// after exec) rather than the image that called exec (kprobes, LSM).
    pub binaries_of_new_image: u8,
    /// 0: every task; i: only tasks under a cgroup whose `POD_SCOPES` bit
    /// i-1 is set (TracingPolicyNamespaced, podSelector).
    pub scope: u8,
    /// Non-zero: Override with this errno, decided in the BPF-LSM
    /// `bprm_check_security` program before the exec happens; the exec
    /// tracepoint skips such selectors.
    pub errno: u32,
    /// Non-zero: Post with `imaHash`; decided in the BPF-LSM program too,
    /// whose record waits for the binary's hash.
    pub ima_hash: u8,
    pub _pad: [u8; 3],
}

/// Policy tables come in two banks: the daemon writes the bank not in use,
/// then flips `BANK` (one u32 store), so a program sees the old policy set
/// or the new one whole, never a mix. Bank b's exec and connect selectors
/// sit at `b * MAX_SELECTORS + i` in their arrays; its string keys have bit 7
/// of the selector byte set to b, and its address and value keys carry
/// `b * MAX_SELECTORS + i` as the selector.
pub const BANKS: usize = 2;

/// The string-key selector byte of selector byte `sel` in `bank`.
#[inline(always)]
pub const fn str_selector(sel: u8, bank: u32) -> u8 {
    sel | ((bank as u8 & 1) << 7)
}

/// The address/value-key selector of connect selector `i` in `bank`.
#[inline(always)]
pub const fn net_selector(i: u8, bank: u32) -> u8 {
    i + (bank as u8 & 1) * MAX_SELECTORS as u8
}

/// Runtime switches and the counts of one bank's tables, in a two-entry
/// array map (one per bank) so that policies can be swapped without
/// reloading programs. The switches (quarantine, pod scopes, wakeups) are
/// kept the same in both entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub n_selectors: u32,
    /// Non-zero: policies act only on tasks under a cgroup in `SCOPE_CGROUPS`.
    pub scoped: u32,
    /// Non-zero when some selector uses Postfix (the reversed key is built only then).
    pub need_reversed: u32,
    /// Exec selectors decided in the BPF-LSM hook (Override, `imaHash`):
    /// without any, the LSM program returns at once.
    pub n_override: u32,
    /// Selectors whose `matchBinaries` has `followChildren`: bit i = selector i.
    pub follow_mask: u64,
    pub n_net_selectors: u32,
    /// Non-zero when `POD_SCOPES` holds anything (else the lookups are skipped).
    pub n_scopes: u32,
    pub net_follow_mask: u64,
    /// Non-zero when `QUARANTINE` holds anything (else the lookups are skipped).
    pub quarantine_active: u32,
    /// Which records from pods wake the reader at once ([`pod_wakeups`]): only
    /// those the brain acts on, so that a pod's routine traffic does not keep
    /// the reader busy when its next exec needs it.
    pub pod_wakeups: u32,
    /// The bank this entry describes (its own index).
    pub bank: u32,
    /// Which connects and sends that hit no policy become records
    /// ([`connect_records`]): only those a brain rule reads.
    pub connect_records: u32,
    /// Syscall selectors in this bank: without any, the `sys_enter`
    /// program returns at once.
    pub n_sys_selectors: u32,
    /// The daemon's own process: its syscalls are never matched, so that
    /// a policy on every syscall cannot feed on the records it makes.
    pub sensor_tgid: u32,
    pub sys_follow_mask: u64,
    /// Non-zero: exec records carry the credentials
    /// (`--enable-process-cred`).
    pub process_cred: u32,
    /// Non-zero: exec records carry the namespaces
    /// (`--enable-process-ns`).
    pub process_ns: u32,
    /// The classes of network hooks ([`net_ops`]) this bank's selectors
    /// are on: the close, listen and send programs return at once
    /// without theirs.
    pub net_ops: u32,
    pub _pad_cfg: u32,
}

/// Values of [`Config::connect_records`].
pub mod connect_records {
    pub const NONE: u32 = 0;
    pub const ALL: u32 = 1;
    /// Only from tasks in known pods (`POD_BIT`): every connect rule is
    /// `inPod`.
    pub const PODS: u32 = 2;
}

/// Bits of [`Config::pod_wakeups`].
pub mod pod_wakeups {
    pub const EXEC: u32 = 1 << 0;
    pub const CONNECT: u32 = 1 << 1;
}

/// Offsets (bytes) of kernel struct fields, read from BTF by the loader and set
/// as a global before load, since Rust eBPF has no CO-RE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_mm: u32,
    pub task_fs: u32,
    pub task_signal: u32,
    pub task_exit_code: u32,
    pub mm_exe_file: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub file_f_path: u32,
    pub path_dentry: u32,
    pub path_mnt: u32,
    pub fs_pwd: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub vfsmount_mnt_root: u32,
    pub signal_live: u32,
    /// The cgroup walk of kernels whose tracing programs lack
    /// `bpf_get_current_ancestor_cgroup_id`: task->cgroups->dfl_cgrp, then
    /// cgroup->kn->id and cgroup->self.parent->cgroup up to the root.
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    pub cgroup_self: u32,
    pub css_parent: u32,
    pub css_cgroup: u32,
    /// linux_binprm->file, for the BPF-LSM exec hook.
    pub binprm_file: u32,
    /// task_struct->loginuid; 0 where the kernel has none (no
    /// CONFIG_AUDITSYSCALL).
    pub task_loginuid: u32,
    /// task_struct->cred, and in `struct cred`: uid (the first of the
    /// eight ids), securebits and the capability sets; `cred_uid` is 0
    /// where the ids are not laid out as [`Creds::ids`] expects.
    pub task_cred: u32,
    pub cred_uid: u32,
    pub cred_securebits: u32,
    pub cred_cap_inheritable: u32,
    pub cred_cap_permitted: u32,
    pub cred_cap_effective: u32,
    /// The PID lineage of `matchPIDs`: task_struct->group_leader and
    /// ->thread_pid; in `struct pid`, level and numbers (an array of
    /// `struct upid {nr, ns}`, `upid_size` bytes each).
    pub task_group_leader: u32,
    pub task_thread_pid: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_ns: u32,
    pub upid_size: u32,
    /// Namespaces: task_struct->nsproxy; in `struct nsproxy`, the
    /// pointers to uts, ipc, mnt, pid_for_children, net, time,
    /// time_for_children and cgroup namespaces (0: not in this kernel);
    /// in each such struct, its `ns_common` (`ns_common_at`, same order);
    /// `ns_common.inum`; cred->user_ns and user_namespace's `ns_common`.
    pub task_nsproxy: u32,
    pub nsproxy_ns: [u32; 8],
    pub ns_common_at: [u32; 8],
    pub ns_inum: u32,
    pub cred_user_ns: u32,
    pub user_ns_common: u32,
    /// `binary_properties`: file->f_inode; in `struct inode`, i_mode,
    /// i_uid, i_gid, i_nlink and i_ino; cred->cap_ambient.
    pub file_f_inode: u32,
    pub inode_i_mode: u32,
    pub inode_i_uid: u32,
    pub inode_i_gid: u32,
    pub inode_i_nlink: u32,
    pub inode_i_ino: u32,
    pub cred_cap_ambient: u32,
    pub binprm_per_clear: u32,
    /// `struct user_namespace`'s level, owner and group.
    pub user_ns_level: u32,
    pub user_ns_owner: u32,
    pub user_ns_group: u32,
    /// `struct sock` (its `sock_common` first): family, state, local port
    /// (host order), remote port (network order), IPv4 and IPv6 local and
    /// remote addresses (the IPv6 ones 0 in a kernel without IPv6),
    /// protocol and type.
    pub sk_family: u32,
    pub sk_state: u32,
    pub sk_num: u32,
    pub sk_dport: u32,
    pub sk_rcv_saddr: u32,
    pub sk_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_v6_daddr: u32,
    pub sk_protocol: u32,
    pub sk_type: u32,
    /// From a file descriptor to its socket: task->files->fdt, the
    /// table's size and array, file->private_data (a socket file's
    /// `struct socket`) and socket->sk.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// Non-zero when `sock_common` starts as every kernel from 5.10 lays
    /// it out (remote and local IPv4 address, hash, remote and local
    /// port, family, state) and `sk_type` and `sk_protocol` are side by
    /// side (in either order): the socket is then read in two copies
    /// instead of eight.
    pub sk_packed: u32,
    /// `sock_common`'s network namespace (`skc_net`, a `possible_net_t`
    /// whose one member is the pointer), and `sock`'s cgroup data, whose
    /// first 8 bytes are the socket's cgroup v2 (a pointer, or on 5.10 a
    /// pointer when its low two bits are clear); 0 where the kernel lacks
    /// it.
    pub sk_net: u32,
    pub sk_cgrp_data: u32,
}

/// `TCP_OWNERS` key: a socket (`sk`, `port` 0) or a listening port
/// (`net`'s pointer, the port with `LISTENER_PORT` set).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OwnerKey {
    pub at: u64,
    pub port: u64,
}

/// Marks an [`OwnerKey`] of a listening port.
pub const LISTENER_PORT: u64 = 1 << 32;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)] plain data with explicit padding.
    unsafe impl aya::Pod for ProcState {}
    unsafe impl aya::Pod for Budget {}
    unsafe impl aya::Pod for ExecSelector {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for NetSelector {}
    unsafe impl aya::Pod for NetValueKey {}
    unsafe impl aya::Pod for SysSelector {}
    unsafe impl aya::Pod for SysNr {}
    unsafe impl aya::Pod for SysReturning {}
}
