//! Maps and globals shared with the daemon. Names are part of the contract with
//! `sensor::load`.
use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use sensor_common::{
    Config, ExecEvent, ExecSelector, KernelOffsets, NetSelector, NetValueKey, ProcState, SysNr,
    SysReturning, SysSelector, BANKS, MAX_SELECTORS, NET_ADDR_KEY_LEN, PATH_MAX, STR_KEY_LEN,
    SYSCALL_NRS,
};

/// Set by the loader from the running kernel's BTF.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_real_parent: 0,
    task_mm: 0,
    task_fs: 0,
    task_signal: 0,
    task_exit_code: 0,
    mm_exe_file: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    file_f_path: 0,
    path_dentry: 0,
    path_mnt: 0,
    fs_pwd: 0,
    dentry_d_parent: 0,
    dentry_d_name: 0,
    qstr_len: 0,
    qstr_name: 0,
    mount_mnt: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    vfsmount_mnt_root: 0,
    signal_live: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    cgroup_self: 0,
    css_parent: 0,
    css_cgroup: 0,
    binprm_file: 0,
    task_loginuid: 0,
    task_cred: 0,
    cred_uid: 0,
    cred_securebits: 0,
    cred_cap_inheritable: 0,
    cred_cap_permitted: 0,
    cred_cap_effective: 0,
    task_group_leader: 0,
    task_thread_pid: 0,
    pid_level: 0,
    pid_numbers: 0,
    upid_ns: 0,
    upid_size: 0,
    task_nsproxy: 0,
    nsproxy_ns: [0; 8],
    ns_common_at: [0; 8],
    ns_inum: 0,
    cred_user_ns: 0,
    user_ns_common: 0,
    file_f_inode: 0,
    inode_i_mode: 0,
    inode_i_uid: 0,
    inode_i_gid: 0,
    inode_i_nlink: 0,
    inode_i_ino: 0,
    cred_cap_ambient: 0,
    binprm_per_clear: 0,
    user_ns_level: 0,
    user_ns_owner: 0,
    user_ns_group: 0,
    sk_family: 0,
    sk_state: 0,
    sk_num: 0,
    sk_dport: 0,
    sk_rcv_saddr: 0,
    sk_daddr: 0,
    sk_v6_rcv_saddr: 0,
    sk_v6_daddr: 0,
    sk_protocol: 0,
    sk_type: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_private_data: 0,
    socket_sk: 0,
    sk_packed: 0,
    sk_net: 0,
    sk_cgrp_data: 0,
};

/// Every record to userspace. Resized by the loader.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Records that did not fit in `EVENTS`, indexed by record kind.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(8, 0);

/// One entry per bank (see `sensor_common::BANKS`).
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(BANKS as u32, 0);

/// The bank in use: the daemon flips it once the other bank is written.
#[map]
pub static BANK: Array<u32> = Array::with_max_entries(1, 0);

/// The configuration of the bank in use.
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    let bank = BANK.get(0).copied().unwrap_or(0) & 1;
    CONFIG.get(bank)
}

#[map]
pub static EXEC_SELECTORS: Array<ExecSelector> =
    Array::with_max_entries((BANKS * MAX_SELECTORS) as u32, 0);

/// Exact string values: key = selector, slot, string (zero padded).
#[map]
pub static STR_EQUAL: HashMap<[u8; STR_KEY_LEN], u8> = HashMap::with_max_entries(8192, 0);

/// Prefix values, longest-prefix matched.
#[map]
pub static STR_PREFIX: LpmTrie<[u8; STR_KEY_LEN], u8> = LpmTrie::with_max_entries(8192, 0);

/// Postfix values, reversed, longest-prefix matched against the reversed string.
#[map]
pub static STR_POSTFIX: LpmTrie<[u8; STR_KEY_LEN], u8> = LpmTrie::with_max_entries(8192, 0);

/// Policy state of the processes that have one, by tgid. A plain hash, so
/// a live process's state is never evicted (an LRU drops live entries under
/// churn, and then `followChildren` fails open): entries go when their
/// process exits (`lifecycle`), and a write refused because the map is full
/// is counted (`LOST[LOST_PROC_STATE]`). Preallocated: a run-time allocated
/// hash in a tracing program is a kernel warning (a panic under
/// `panic_on_warn`) before Linux 6.1.
#[map]
pub static PROCS: HashMap<u32, ProcState> = HashMap::with_max_entries(65536, 0);

/// Cgroup ids under which policies act when `Config::scoped` is set.
#[map]
pub static SCOPE_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

/// Room to build a path backwards: components are prepended from `PATH_MAX`
/// down, and the slack lets a masked offset plus a bounded length stay inside.
#[repr(C)]
pub struct PathScratch {
    pub buf: [u8; PATH_MAX + 256],
}

#[map]
pub static PATH_SCRATCH: PerCpuArray<PathScratch> = PerCpuArray::with_max_entries(1, 0);

/// Bytes of variable data an exec record can hold, plus masking slack.
pub const EXEC_DATA_CAP: usize = 16384;

/// An exec record being assembled: header, then path, arguments and cwd.
#[repr(C)]
pub struct ExecScratch {
    pub event: ExecEvent,
    pub data: [u8; EXEC_DATA_CAP],
}

#[map]
pub static EXEC_SCRATCH: PerCpuArray<ExecScratch> = PerCpuArray::with_max_entries(1, 0);

/// String lookup keys: forward and reversed binary path. Slack after each key
/// lets bounded copies land without exact-size proofs.
#[repr(C)]
pub struct KeyScratch {
    pub forward: Key<[u8; STR_KEY_LEN]>,
    pub _slack1: [u8; 256],
    pub reversed: Key<[u8; STR_KEY_LEN]>,
    pub _slack2: [u8; 256],
}

#[map]
pub static KEY_SCRATCH: PerCpuArray<KeyScratch> = PerCpuArray::with_max_entries(1, 0);

/// Above this much unread data a record wakes the reader at once.
const WAKEUP_BYTES: u64 = 256 * 1024;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Submit flags for a record. Waking the reader for every record costs more
/// than the whole kernel side (two context switches per exec on a busy
/// node), so routine records are left for the reader's periodic drain;
/// urgent ones (a policy hit) and a filling buffer wake it at once.
#[inline(always)]
pub fn wakeup_flags(urgent: bool) -> u64 {
    if urgent || EVENTS.query(BPF_RB_AVAIL_DATA) > WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Writes a process's policy state, counting a write the full map refuses.
#[inline(always)]
pub fn set_proc_state(tgid: u32, state: &ProcState) {
    if PROCS.insert(&tgid, state, 0).is_err() {
        count_lost(sensor_common::LOST_PROC_STATE);
    }
}

/// Counts a record that the ring buffer had no room for.
#[inline(always)]
pub fn count_lost(kind: u32) {
    if let Some(p) = LOST.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// State of the path walk loop (see `path::Walk`).
#[map]
pub static WALK: PerCpuArray<crate::path::Walk> = PerCpuArray::with_max_entries(1, 0);

/// State of the selector loop (see `reflex::Eval`).
#[map]
pub static EVAL: PerCpuArray<crate::reflex::Eval> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static NET_SELECTORS: Array<NetSelector> =
    Array::with_max_entries((BANKS * MAX_SELECTORS) as u32, 0);

/// Address sets (CIDRs): key = selector, slot, family, 0, address.
#[map]
pub static NET_ADDR: LpmTrie<[u8; NET_ADDR_KEY_LEN], u8> = LpmTrie::with_max_entries(16384, 0);

/// Port, protocol and family sets.
#[map]
pub static NET_VALUE: HashMap<NetValueKey, u8> = HashMap::with_max_entries(16384, 0);

/// A packet record being built (see `packet`): too large for the stack
/// beside the selector loop's state.
#[map]
pub static PACKET: PerCpuArray<sensor_common::PacketEvent> = PerCpuArray::with_max_entries(1, 0);

/// State of the network selector loop (see `netsel::NetEval`).
#[map]
pub static NET_EVAL: PerCpuArray<crate::netsel::NetEval> = PerCpuArray::with_max_entries(1, 0);

/// The creator (tgid) of each socket made while packet hooks are loaded,
/// by socket cookie: who a packet is attributed to (`packet`). Written on
/// socket creation, removed on release (see `sock::track_owner`); LRU, so
/// that sockets the release hook never saw age out.
#[map]
pub static SOCK_OWNERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

/// The task (tgid) that owns a TCP socket, for the state changes the kernel
/// makes in softirq, in whichever task a packet interrupted: by socket, for
/// a socket that connected, and by network namespace and port for a
/// listener, whose accepted children share its port. Kept by
/// `sock::on_state` while `tcp_set_state`, `tcp_create_openreq_child` or
/// packet hooks are loaded (`packet` names a listener's accepted children
/// by it); LRU, so that sockets it never saw close age out.
#[map]
pub static TCP_OWNERS: LruHashMap<sensor_common::OwnerKey, u32> =
    LruHashMap::with_max_entries(16384, 0);

/// Signals the compat connect programs decided, by pid_tgid of the thread
/// in the syscall; `signals` sends them as the syscall returns.
#[map]
pub static PENDING_SIGNALS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

/// Quarantined cgroups (a pod's cgroup covers its containers).
#[map]
pub static QUARANTINE: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

/// Quarantine's refusals: packets dropped (index 0 egress, 1 ingress),
/// packet sockets refused (2), connects and sends denied (3).
#[map]
pub static QUARANTINE_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

/// Pod cgroups → the pod-scoped policies (bit i = scope i+1) that apply to
/// tasks under them.
#[map]
pub static POD_SCOPES: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

#[map]
pub static SYS_SELECTORS: Array<SysSelector> =
    Array::with_max_entries((BANKS * MAX_SELECTORS) as u32, 0);

/// Per bank and syscall number (`bank * SYSCALL_NRS + nr`): the syscall
/// selectors that apply to it and what to copy from user memory.
#[map]
pub static SYS_NRS: Array<SysNr> = Array::with_max_entries((BANKS * SYSCALL_NRS) as u32, 0);

/// String arguments' value sets: key (bank, argument, string) as in the
/// `STR_*` maps, value the mask of syscall selectors holding the string.
/// A prefix's or postfix's mask also holds the selectors of its own
/// shorter prefixes, since the trie answers with the longest match only.
#[map]
pub static SYS_STR_EQUAL: HashMap<[u8; STR_KEY_LEN], u64> = HashMap::with_max_entries(1024, 0);
#[map]
pub static SYS_STR_PREFIX: LpmTrie<[u8; STR_KEY_LEN], u64> = LpmTrie::with_max_entries(1024, 0);
#[map]
pub static SYS_STR_POSTFIX: LpmTrie<[u8; STR_KEY_LEN], u64> = LpmTrie::with_max_entries(1024, 0);

/// Per thread (`pid_tgid`), the selectors that wait for its syscall's
/// return. LRU: a thread that never returns (exit) is forgotten.
#[map]
pub static SYS_RETURNING: LruHashMap<u64, SysReturning> = LruHashMap::with_max_entries(8192, 0);

/// State of the return loop (see `syscall::ret`).
#[map]
pub static SYS_RET: PerCpuArray<crate::syscall::ret::RetEval> = PerCpuArray::with_max_entries(1, 0);

/// State of the syscall selector loop (see `syscall::SysEval`).
#[map]
pub static SYS_EVAL: PerCpuArray<crate::syscall::SysEval> = PerCpuArray::with_max_entries(1, 0);
