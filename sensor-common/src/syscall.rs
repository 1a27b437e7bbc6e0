//! The syscall family's half of the contract: the selector table the
//! `sys_enter` program reads, what it copies from user memory for each
//! syscall number, and the record it posts.
use crate::{StrFilter, MAX_ARG_FILTERS};

/// Syscall numbers the syscall selector table covers (x86_64's are below
/// 512; the ia32 compat table is not matched).
pub const SYSCALL_NRS: usize = 512;
/// Slot of the string keys that hold a syscall selector's `matchBinaries`
/// values (the selector byte is the syscall selector's index).
pub const SLOT_SYS_BINARIES: u8 = 16;
/// Values one integer filter holds (pairs for the range operators).
pub const INT_VALUES: usize = 4;
/// Arguments of a syscall (x86_64: di, si, dx, r10, r8, r9).
pub const SYSCALL_ARGS: usize = 6;
/// Bytes copied from user memory for one string or buffer argument (a
/// string's count includes its NUL); longer ones are cut and flagged.
pub const SYS_BLOB_MAX: usize = 1024;
/// Bytes of user memory one syscall record carries after its header.
pub const SYS_DATA_CAP: usize = 8192;
/// `matchPIDs` entries per syscall selector, and values per entry.
pub const MAX_PID_FILTERS: usize = 2;
pub const PID_VALUES: usize = 4;
/// `matchNamespaces` entries per syscall selector, and values per entry.
pub const MAX_NS_FILTERS: usize = 4;
pub const NS_VALUES: usize = 4;
/// Processes a `followForks` PID filter looks at: the caller and its
/// ancestors.
pub const LINEAGE_DEPTH: usize = 16;

/// Operators of an integer filter.
pub mod int_op {
    /// Any of the values.
    pub const EQUAL: u8 = 1;
    /// None of the values.
    pub const NOT_EQUAL: u8 = 2;
    pub const GT: u8 = 3;
    pub const LT: u8 = 4;
    /// Any bit of any value set.
    pub const MASK: u8 = 5;
    /// In one of the `[lo, hi]` pairs.
    pub const IN_RANGE: u8 = 6;
    pub const NOT_IN_RANGE: u8 = 7;
}

/// One `matchArgs` entry on an integer argument of a syscall.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntFilter {
    /// Which syscall argument (0 to 5).
    pub arg: u8,
    pub op: u8,
    /// Values used (pairs count two).
    pub n: u8,
    /// Non-zero: the argument is 32 bits wide (`int`, `uint32`); only its
    /// low half counts.
    pub width32: u8,
    /// Non-zero: compared as signed (`int`, `long`).
    pub signed: u8,
    pub _pad: [u8; 3],
    pub values: [u64; INT_VALUES],
}

/// How the `sys_enter` program copies an argument from user memory.
pub mod arg_read {
    pub const NONE: u8 = 0;
    /// A NUL-terminated string (`string`).
    pub const STRING: u8 = 1;
    /// A file descriptor, resolved to its file's path (`fd`); a syscall
    /// has at most one.
    pub const FD: u8 = 2;
    /// A buffer (`char_buf`) whose size is argument `code - BUFFER`.
    pub const BUFFER: u8 = 0x10;
}

/// What the `sys_enter` program does for one syscall number (`SYS_NRS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysNr {
    /// The selectors that apply (bit i = syscall selector i).
    pub selectors: u64,
    /// How each argument is copied from user memory ([`arg_read`]).
    pub reads: [u8; SYSCALL_ARGS],
    /// Bit i: argument i is a string some selector filters on, so its
    /// lookup keys are built.
    pub matched: u8,
    /// What the selectors need read of the caller ([`sys_needs`]).
    pub needs: u8,
}

/// Bits of [`SysNr::needs`].
pub mod sys_needs {
    /// Some selector filters on PIDs: the caller's lineage is read.
    pub const LINEAGE: u8 = 1;
    /// Some selector filters on namespaces: the caller's are read.
    pub const NAMESPACES: u8 = 2;
}

/// One `matchNamespaces` entry: fires when the caller's namespace of
/// `kind` ([`crate::ns_kind`]) is (not) one of the values, inode numbers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NsFilter {
    pub kind: u8,
    pub negate: u8,
    pub n: u8,
    pub _pad: u8,
    pub values: [u32; NS_VALUES],
}

/// Bits of [`PidFilter::flags`].
pub mod pid_flags {
    /// `isNamespacePID`: the values are PIDs in the caller's namespace.
    pub const NAMESPACE: u8 = 1;
    /// `followForks`: the caller's ancestors count too (in its namespace,
    /// with `NAMESPACE`).
    pub const FOLLOW: u8 = 2;
}

/// One `matchPIDs` entry: fires when the PID is (not) one of the values.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PidFilter {
    pub negate: u8,
    pub flags: u8,
    pub n: u8,
    pub _pad: u8,
    pub values: [u32; PID_VALUES],
}

/// A `matchArgs` entry on a string argument. The value sets live in the
/// `SYS_STR_*` maps, keyed by (bank, argument, string), whose values are
/// masks of the selectors holding the string.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArgStrFilter {
    pub arg: u8,
    pub _pad: u8,
    pub filter: StrFilter,
}

/// A compiled syscall selector. Which syscalls it applies to is in the
/// `SYS_NRS` table (bit i of a number's entry = selector i), so a filter
/// on the syscall number costs nothing here.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysSelector {
    pub hook: u32,
    /// Signal to send on match (Sigkill = 9, Signal, NotifyEnforcer).
    pub signal: u32,
    pub binaries: StrFilter,
    pub follow: u8,
    pub n_filters: u8,
    /// As [`crate::ExecSelector::scope`].
    pub scope: u8,
    pub n_strs: u8,
    pub n_pids: u8,
    /// Non-zero: its hook has `return: true`; the event waits for the
    /// return, which `ret` (if its op is not 0) must pass.
    pub returns: u8,
    pub filters: [IntFilter; MAX_ARG_FILTERS],
    pub strs: [ArgStrFilter; MAX_ARG_FILTERS],
    pub pids: [PidFilter; MAX_PID_FILTERS],
    pub n_ns: u8,
    pub _pad2: [u8; 3],
    pub ns: [NsFilter; MAX_NS_FILTERS],
    /// `matchReturnArgs` on the return value (as argument 0).
    pub ret: IntFilter,
}

/// A syscall that a syscall selector matched, from the raw `sys_enter`
/// tracepoint: its number and raw arguments; the daemon reads them as the
/// policy's `args` types say.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallEvent {
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub ktime: u64,
    pub cgroup_id: u64,
    /// Syscall selectors that matched (first match per hook).
    pub hits: u64,
    pub nr: u32,
    /// Signal sent to the process (0 = none).
    pub signal: u32,
    pub args: [u64; SYSCALL_ARGS],
    /// Bytes copied from user memory for each argument; the copies follow
    /// the header in argument order.
    pub lens: [u16; SYSCALL_ARGS],
    /// Bit i: argument i was copied.
    pub read: u8,
    /// Bit i: argument i was longer than [`SYS_BLOB_MAX`] and is cut.
    pub truncated: u8,
    pub _pad: u16,
    /// The hits whose hooks wait for the return: the daemon holds the
    /// record until a [`SyscallReturn`] of the same thread says which of
    /// them passed their `matchReturnArgs`.
    pub returning: u64,
}

/// A syscall's return, for the selectors that waited for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallReturn {
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub nr: u32,
    pub ktime: u64,
    /// The return value (negative: an errno).
    pub ret: u64,
    /// The waiting selectors whose `matchReturnArgs` passed.
    pub hits: u64,
}

/// What `sys_enter` leaves for `sys_exit`, per thread (`SYS_RETURNING`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysReturning {
    /// The waiting selectors that matched at entry.
    pub mask: u64,
    /// The bank they are in.
    pub bank: u32,
    pub nr: u32,
}

// The kernel and the daemon read these byte for byte: no implicit padding.
const _: () = assert!(core::mem::size_of::<IntFilter>() == 8 + 8 * INT_VALUES);
const _: () = assert!(core::mem::size_of::<SysNr>() == 16);
const _: () = assert!(core::mem::size_of::<PidFilter>() == 4 + 4 * PID_VALUES);
const _: () = assert!(core::mem::size_of::<NsFilter>() == 4 + 4 * NS_VALUES);
const _: () = assert!(
    core::mem::size_of::<SysSelector>()
        == 16 + 44 * MAX_ARG_FILTERS + 20 * MAX_PID_FILTERS + 4 + 20 * MAX_NS_FILTERS + 40
);
const _: () = assert!(core::mem::size_of::<SyscallEvent>() == 72 + 8 * SYSCALL_ARGS);
const _: () = assert!(core::mem::size_of::<SyscallReturn>() == 40);
const _: () = assert!(core::mem::size_of::<SysReturning>() == 16);
