//! Reflex policies in Tetragon's `TracingPolicy` format: turning a
//! document (routed here by `documents`) and its YAML schema (`raw`) into a [`Policy`] whose invalid
//! states cannot be built (`parse` for hooks, `hooks` for the hooks this
//! sensor implements, `selector` and `net` for selectors), and compiling
//! loaded policies into the kernel's selector tables (`compile`), after
//! `kernel` has checked them against what the running kernel can enforce.
//! The syscall family has its own rooms: `syscall_hooks` and
//! `syscall_filters` parse it, `syscalls` names x86_64's syscalls, and
//! `compile_sys` builds its tables.
mod compile;
mod compile_sys;
mod hooks;
mod kernel;
mod net;
mod parse;
pub mod protect;
mod raw;
mod returns;
mod selector;
mod selector_labels;
mod syscall_filters;
mod syscall_hooks;
pub mod syscalls;

pub use selector_labels::LabelSelector;

pub use net::{NetMatch, TCP_STATES};

pub use compile::{Compiled, Scope, SelectorMeta};
pub use compile_sys::SysStrings;
pub use kernel::fits_kernel;

use std::path::PathBuf;

use sensor_common::{match_kind, StrFilter, MAX_VALUE_LEN};

/// Limits a policy must respect; the README lists them.
pub mod limits {
    /// Tetragon's limit of selectors per hook.
    pub const SELECTORS_PER_HOOK: usize = 5;
    /// Values in one matchBinaries or matchArgs entry.
    pub const VALUES_PER_FILTER: usize = 256;
    pub use sensor_common::{MAX_ARG_FILTERS, MAX_VALUE_LEN};
}

/// A policy file that cannot be loaded: the file, the field path in it and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct PolicyError {
    pub file: PathBuf,
    pub field: String,
    pub reason: String,
}

/// Parses one `TracingPolicy` / `TracingPolicyNamespaced` document; an
/// error is (field path, reason).
pub fn from_document(value: serde_yaml::Value) -> Result<Policy, (String, String)> {
    let raw: raw::RawPolicy = serde_path_to_error::deserialize(value)
        .map_err(|e| (e.path().to_string(), e.into_inner().to_string()))?;
    parse::policy(raw).map_err(|e| (e.field, e.reason))
}

/// A parsed reflex policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// `Some` for `TracingPolicyNamespaced`: it acts only on that namespace's pods.
    pub namespace: Option<String>,
    /// `spec.podSelector`: it acts only on the pods selected.
    pub pod_selector: Option<LabelSelector>,
    pub hooks: Vec<Hook>,
    /// `policy-mode` of `spec.options`, or as the control API set it.
    pub mode: Mode,
}

/// Tetragon's policy modes. In monitor mode Sigkill, Signal and Override
/// are not carried out: the event is posted with the action they would
/// have taken. Switching is a write of the selector tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

/// Where a hook attaches, as the policy named it; it decides the event type
/// (`process_kprobe`, `process_lsm`, `process_tracepoint`) and `function_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookPoint {
    Kprobe { function: String },
    Lsm { hook: String },
    Tracepoint { subsystem: String, event: String },
}

/// Which reflex a hook maps onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookFamily {
    Exec,
    Connect,
    /// Syscalls, on the raw `sys_enter` tracepoint.
    Syscall,
}

/// How an integer syscall argument is read and shown, by its Tetragon
/// `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntType {
    /// `int` (`int32`, `sint32`): 32 bits, signed; `int_arg`.
    Int,
    /// `uint32`: `uint_arg`.
    Uint32,
    /// `uint64` (`ulong`, `unsigned long`): `size_arg`, as Tetragon
    /// shows it.
    Uint64,
    /// `size_t`: `size_arg`.
    SizeT,
    /// `long` (`int64`, `sint64`): `long_arg`.
    Long,
    /// `syscall64`: the syscall number, `syscall_id` with its ABI.
    Syscall64,
}

impl IntType {
    pub fn parse(name: &str) -> Option<IntType> {
        Some(match name {
            "int" | "int32" | "sint32" => IntType::Int,
            "uint32" => IntType::Uint32,
            "uint64" | "ulong" | "unsigned long" => IntType::Uint64,
            "size_t" => IntType::SizeT,
            "long" | "int64" | "sint64" => IntType::Long,
            "syscall64" => IntType::Syscall64,
            _ => return None,
        })
    }

    /// (32 bits wide, signed), as the kernel compares the argument.
    pub fn shape(self) -> (bool, bool) {
        match self {
            IntType::Int => (true, true),
            IntType::Uint32 => (true, false),
            IntType::Long => (false, true),
            IntType::Uint64 | IntType::SizeT | IntType::Syscall64 => (false, false),
        }
    }
}

/// What a syscall hook's argument is: one of the six registers, or (on
/// `raw_syscalls/sys_enter`) the syscall number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysArg {
    Reg(u8),
    Number,
}

/// An argument a policy declared, as the event shows it (`args[]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventArg {
    /// `linux_binprm_arg {path}`: the binary being executed.
    LinuxBinprm,
    /// `string_arg`: the binary being executed.
    PathString,
    /// `file_arg {path}`: the binary being executed.
    File,
    /// Declared and not reported (Tetragon's `nop`).
    Nop,
    /// `sock_arg`: the connecting socket.
    Sock,
    /// `sockaddr_arg`: the destination address.
    Sockaddr,
    /// `int_arg`: the length of the destination address (that of a
    /// `sockaddr_in` or `sockaddr_in6`: the cgroup hook sees the address,
    /// not the length the caller passed).
    AddrLen,
    /// `int_arg`: the size a `tcp_sendmsg` caller asked to send.
    SendSize,
    /// `int_arg`: the family `sk_alloc` was asked for.
    SockFamily,
    /// `int_arg`: the state `tcp_set_state` moves the socket to.
    NewState,
    /// `skb_arg`: a packet (the packet hooks).
    Skb,
    /// `int_arg`: a packet's direction, 0 in and 1 out
    /// (`__cgroup_bpf_run_filter_skb`'s argument 2).
    PacketDirection,
    /// `sock_arg` in `return`: the socket a hook returns (not declared in
    /// `args`; asked for by [`ReturnArg::Sock`]).
    ReturnSock,
    /// An integer argument of a syscall.
    Syscall(SysArg, IntType),
    /// A syscall argument copied from the caller's memory (register `reg`).
    SyscallUser { reg: u8, read: UserRead },
}

/// How a syscall argument is copied from user memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserRead {
    /// `string`: NUL-terminated; `string_arg`.
    String,
    /// `char_buf`: as many bytes as register `size_reg` says; `bytes_arg`,
    /// or `truncated_bytes_arg` when cut.
    Buffer { size_reg: u8 },
    /// `fd`: a descriptor of the caller, resolved in the kernel to its
    /// file's path; `file_arg {path}`.
    Fd,
}

/// One hook of a policy, mapped onto the exec or the connect reflex.
#[derive(Debug, Clone)]
pub struct Hook {
    /// Where the hook is in its file (`spec.kprobes[0]`), for errors found
    /// after parsing.
    pub field: String,
    pub point: HookPoint,
    pub family: HookFamily,
    /// Whether matchBinaries tests the image after exec (a tracepoint there).
    pub binaries_of_new_image: bool,
    /// For a network hook, the records its selectors act on (a
    /// `sensor_common::net_ops` bit).
    pub net_ops: u16,
    /// Declared arguments, in declaration order.
    pub args: Vec<EventArg>,
    /// The syscall numbers a syscall hook is on (one for a `sys_*` kprobe,
    /// all for `raw_syscalls/sys_enter`); empty for the other families.
    pub syscalls: Vec<u32>,
    /// `returnArg`: what events carry in `return`.
    pub return_arg: ReturnArg,
    /// A syscall hook with `return: true`: its events wait for the
    /// syscall's return, shown in `return` as this type.
    pub return_type: Option<IntType>,
    pub selectors: Vec<Selector>,
    pub message: Option<String>,
    pub tags: Vec<String>,
}

/// A hook's `returnArg`, as events show it in `return`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReturnArg {
    #[default]
    None,
    /// `int_arg`: zero, or the errno of an Override the kernel carried out.
    Int,
    /// `sock_arg`: the socket the hook returns (`sk_alloc`,
    /// `tcp_create_openreq_child`).
    Sock,
}

/// A string operator with its value set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrOp {
    Equal,
    NotEqual,
    Prefix,
    NotPrefix,
    Postfix,
    NotPostfix,
}

impl StrOp {
    pub fn filter(self) -> StrFilter {
        let (kind, negate) = match self {
            StrOp::Equal => (match_kind::EQUAL, 0),
            StrOp::NotEqual => (match_kind::EQUAL, 1),
            StrOp::Prefix => (match_kind::PREFIX, 0),
            StrOp::NotPrefix => (match_kind::PREFIX, 1),
            StrOp::Postfix => (match_kind::POSTFIX, 0),
            StrOp::NotPostfix => (match_kind::POSTFIX, 1),
        };
        StrFilter { kind, negate }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrMatch {
    pub op: StrOp,
    pub values: Vec<String>,
}

impl StrMatch {
    /// Whether the value set contains `path` under this operator, ignoring
    /// negation: the same test the kernel makes, including its view of at most
    /// the first (Prefix) or last (Postfix) `MAX_VALUE_LEN` bytes.
    pub fn contains(&self, path: &str) -> bool {
        let p = path.as_bytes();
        let n = p.len().min(MAX_VALUE_LEN);
        self.values.iter().any(|v| {
            let v = v.as_bytes();
            match self.op {
                StrOp::Equal | StrOp::NotEqual => p.len() <= MAX_VALUE_LEN && p == v,
                StrOp::Prefix | StrOp::NotPrefix => p[..n].starts_with(v),
                StrOp::Postfix | StrOp::NotPostfix => p[p.len() - n..].ends_with(v),
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryMatch {
    pub set: StrMatch,
    pub follow_children: bool,
}

/// What a matching selector does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    /// Emit a policy event (false only for NoPost).
    pub post: bool,
    /// Signal sent in the kernel, if any (Sigkill = 9).
    pub signal: Option<u32>,
    /// Errno a denied connect returns (Override; connect hooks only).
    pub errno: Option<u32>,
    /// NotifyEnforcer (syscall hooks): `signal` is its argSig.
    pub notify: bool,
    /// Post's `rateLimit`: repeats within the window are not posted.
    pub rate_limit: Option<RateLimit>,
    /// Post's `imaHash`: the event carries the binary's IMA hash
    /// (lsmhook `bprm_check_security` only).
    pub ima_hash: bool,
}

/// Post's `rateLimit` and `rateLimitScope`: an event is not posted again
/// within `window` for the same selector, the same arguments and the
/// same scope (Tetragon's semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub window: std::time::Duration,
    pub scope: RateScope,
}

/// Whose repeats a rate limit counts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    /// Tetragon's default, per thread. Records here name processes, so a
    /// thread's repeats are counted with its process's.
    Thread,
    Process,
    Global,
}

impl Actions {
    pub const POST: Actions = Actions {
        post: true,
        signal: None,
        errno: None,
        notify: false,
        rate_limit: None,
        ima_hash: false,
    };

    /// Tetragon's `KprobeAction` name for the event's `action`.
    pub fn name(&self) -> &'static str {
        if self.notify {
            "KPROBE_ACTION_NOTIFYENFORCER"
        } else {
            crate::export::event::action_name(self.signal, self.errno)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub binaries: Option<BinaryMatch>,
    /// Filters on the binary path (exec hooks), ANDed.
    pub path: Vec<StrMatch>,
    /// Filters on the connection (connect hooks), ANDed.
    pub net: Vec<NetMatch>,
    /// Filters on integer syscall arguments (syscall hooks), ANDed.
    pub ints: Vec<IntMatch>,
    /// Filters on string syscall arguments (syscall hooks), ANDed.
    pub strs: Vec<ArgStrMatch>,
    /// `matchPIDs` (syscall hooks), ANDed.
    pub pids: Vec<PidMatch>,
    /// `matchNamespaces` (syscall hooks), ANDed.
    pub namespaces: Vec<NsMatch>,
    /// `matchReturnArgs` on a syscall's return value (as register 0).
    pub ret: Option<IntMatch>,
    /// The syscall numbers the selector's filters on the number admit
    /// (syscall hooks; `None`: every number of its hook).
    pub numbers: Option<std::collections::BTreeSet<u32>>,
    pub actions: Actions,
}

impl Selector {
    /// The selector of a hook that has none: every call posts, as in
    /// Tetragon.
    pub fn post_all() -> Selector {
        Selector {
            binaries: None,
            path: Vec::new(),
            net: Vec::new(),
            ints: Vec::new(),
            strs: Vec::new(),
            pids: Vec::new(),
            namespaces: Vec::new(),
            ret: None,
            numbers: None,
            actions: Actions::POST,
        }
    }
}

/// A `matchArgs` entry on an integer syscall argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntMatch {
    pub reg: u8,
    pub ty: IntType,
    pub op: u8,
    /// Values as the kernel compares them (pairs for ranges).
    pub values: Vec<u64>,
}

/// A `matchArgs` entry on a string syscall argument (register `reg`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgStrMatch {
    pub reg: u8,
    pub set: StrMatch,
}

/// A `matchNamespaces` entry: the caller's namespace of `kind` (a
/// [`sensor_common::ns_kind`] slot) is (not) one of `values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsMatch {
    pub kind: usize,
    /// `NotIn`.
    pub negate: bool,
    pub values: Vec<NsValue>,
}

/// A namespace a `matchNamespaces` entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsValue {
    /// By its inode number.
    Inode(u32),
    /// `host_ns`: the host's, the one of the node's PID 1, read when the
    /// policy is compiled.
    Host,
}

/// A `matchPIDs` entry: the caller's PID is (not) one of `values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidMatch {
    /// `NotIn`.
    pub negate: bool,
    /// `followForks`: an ancestor's PID counts too.
    pub follow_forks: bool,
    /// `isNamespacePID`: PIDs as the caller's PID namespace numbers them.
    pub namespace: bool,
    pub values: Vec<u32>,
}
