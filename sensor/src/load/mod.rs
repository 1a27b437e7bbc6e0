//! Loading the kernel side: pre-flight checks, struct offsets from BTF, the
//! embedded eBPF object, attaching the programs, and writing compiled policy
//! into the kernel's maps. Dropping [`Kernel`] detaches and frees everything.
//! `probe` finds what the running kernel offers, and so which form of each
//! program is attached.
pub mod btf;
mod mounts;
pub mod probe;

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError, RawTracePoint,
    TracePoint,
};
use aya::{Ebpf, EbpfError, EbpfLoader};
use sensor_common::{
    Config, ExecSelector, NetSelector, NetValueKey, ProcState, NET_ADDR_KEY_LEN, STR_KEY_LEN,
};

use crate::policy::Compiled;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at build time
/// (empty when it was not built).
/// `BPF_NOEXIST`: insert only when the key is absent.
const BPF_NOEXIST: u64 = 1;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("sensor must run as root: it loads eBPF programs")]
    NotRoot,
    #[error("the kernel has no BTF (/sys/kernel/btf/vmlinux is missing); a kernel with CONFIG_DEBUG_INFO_BTF=y is needed")]
    NoBtf,
    #[error(
        "this binary was built without the eBPF object; run `cargo xtask build-ebpf` and rebuild"
    )]
    NoObject,
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error("loading the eBPF object: {0}")]
    Object(#[from] EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("enabling program statistics: {0}")]
    Stats(String),
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: String,
        source: std::io::Error,
    },
    #[error("eBPF object lacks {0}")]
    Missing(&'static str),
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> LoadError {
    move |source| LoadError::Map { name, source }
}

/// The loaded, attached kernel side.
pub struct Kernel {
    ebpf: Ebpf,
    plan: probe::Plan,
}

/// Record kinds the `LOST` counters are indexed by, with their names.
pub const LOST_KINDS: [(u32, &str); 4] = [
    (sensor_common::kind::EXEC, "exec"),
    (sensor_common::kind::FORK, "fork"),
    (sensor_common::kind::EXIT, "exit"),
    (sensor_common::kind::CONNECT, "connect"),
];

impl Kernel {
    /// Checks the environment, loads the object with this kernel's offsets
    /// and a ring buffer of `ring_bytes`. Nothing is attached yet; `plan`
    /// says which form of each program [`Kernel::attach`] takes.
    pub fn load(ring_bytes: u32, plan: &probe::Plan) -> Result<Kernel, LoadError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LoadError::NotRoot);
        }
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err(LoadError::NoBtf);
        }
        if OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        mounts::ensure()?;
        let offsets = btf::Btf::from_sys_fs()?.kernel_offsets()?;
        let ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .map_max_entries("EVENTS", ring_bytes)
            .load(OBJECT)?;
        Ok(Kernel {
            ebpf,
            plan: plan.clone(),
        })
    }

    /// Attaches fork and exit before exec so that no process the exec
    /// program sees is missing its lineage, then (in the forms the plan
    /// chose) the deferred-signal sender, the BPF-LSM exec hook, and the
    /// socket hooks at the root of the cgroup v2 tree `cgroup_root`, as links
    /// that coexist with other programs there (Cilium's).
    pub fn attach(&mut self, cgroup_root: &std::path::Path) -> Result<(), LoadError> {
        let p: &mut RawTracePoint = self.program("snsr_fork")?;
        p.load().map_err(|source| LoadError::Program {
            name: "snsr_fork",
            source,
        })?;
        p.attach("sched_process_fork")
            .map_err(|source| LoadError::Program {
                name: "snsr_fork",
                source,
            })?;
        let modern_exec = self.plan.exec == probe::Form::Modern;
        let exec = if modern_exec {
            "snsr_exec"
        } else {
            "snsr_exec_compat"
        };
        self.tracepoint("snsr_exit", &[("sched", "sched_process_exit")])?;
        self.tracepoint(exec, &[("sched", "sched_process_exec")])?;
        if self.plan.connect != probe::Form::Modern {
            // Connect programs that cannot signal leave it to this one.
            self.tracepoint(
                "snsr_signal_on_exit",
                &[
                    ("syscalls", "sys_exit_connect"),
                    ("syscalls", "sys_exit_sendto"),
                    ("syscalls", "sys_exit_sendmsg"),
                    ("syscalls", "sys_exit_sendmmsg"),
                ],
            )?;
        }
        let root = std::fs::File::open(cgroup_root).map_err(|source| LoadError::Cgroup {
            path: cgroup_root.display().to_string(),
            source,
        })?;
        if self.plan.lsm {
            self.lsm_program(if modern_exec {
                "snsr_lsm_bprm"
            } else {
                "snsr_lsm_bprm_compat"
            })?;
        }
        let form = match self.plan.connect {
            probe::Form::Modern => 0,
            probe::Form::Deferred => 1,
            probe::Form::Compat => 2,
        };
        for forms in SOCK_PROGRAMS {
            let name = forms[form];
            let p: &mut CgroupSockAddr = self.program(name)?;
            p.load()
                .map_err(|source| LoadError::Program { name, source })?;
            p.attach(&root, CgroupAttachMode::Single)
                .map_err(|source| LoadError::Program { name, source })?;
        }
        for (name, ty) in [
            ("snsr_q_egress", CgroupSkbAttachType::Egress),
            ("snsr_q_ingress", CgroupSkbAttachType::Ingress),
        ] {
            let p: &mut CgroupSkb = self.program(name)?;
            p.load()
                .map_err(|source| LoadError::Program { name, source })?;
            p.attach(&root, ty, CgroupAttachMode::Single)
                .map_err(|source| LoadError::Program { name, source })?;
        }
        Ok(())
    }

    /// Loads tracepoint program `name` and attaches it to each of `points`.
    fn tracepoint(&mut self, name: &'static str, points: &[(&str, &str)]) -> Result<(), LoadError> {
        let p: &mut TracePoint = self.program(name)?;
        p.load()
            .map_err(|source| LoadError::Program { name, source })?;
        for (category, event) in points {
            p.attach(category, event)
                .map_err(|source| LoadError::Program { name, source })?;
        }
        Ok(())
    }

    /// Loads BPF-LSM program `name` on `bprm_check_security` and attaches it.
    fn lsm_program(&mut self, name: &'static str) -> Result<(), LoadError> {
        let btf = aya::Btf::from_sys_fs().map_err(|e| LoadError::Program {
            name,
            source: ProgramError::Btf(e),
        })?;
        let p: &mut aya::programs::Lsm = self.program(name)?;
        p.load("bprm_check_security", &btf)
            .map_err(|source| LoadError::Program { name, source })?;
        p.attach()
            .map_err(|source| LoadError::Program { name, source })?;
        Ok(())
    }

    /// Names of the programs loaded into the kernel.
    pub fn loaded_programs(&self) -> Vec<String> {
        self.ebpf
            .programs()
            .filter(|(_, p)| p.info().is_ok())
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Cuts cgroup `id` (and everything under it) off the network.
    pub fn quarantine(&mut self, id: u64) -> Result<(), LoadError> {
        let mut q: HashMap<_, u64, u8> =
            HashMap::try_from(self.map_mut("QUARANTINE")?).map_err(map_err("QUARANTINE"))?;
        q.insert(id, 1, 0).map_err(map_err("QUARANTINE"))?;
        self.set_quarantine_active(true)
    }

    /// Turns the programs' quarantine lookups on or off.
    fn set_quarantine_active(&mut self, on: bool) -> Result<(), LoadError> {
        self.update_config(|c| c.quarantine_active = on as u32)
    }

    /// Tells the programs that `POD_SCOPES` is in use.
    pub fn enable_pod_scopes(&mut self) -> Result<(), LoadError> {
        self.update_config(|c| c.n_scopes = c.n_scopes.max(1))
    }

    /// Which records from pods wake the reader at once
    /// (`sensor_common::pod_wakeups` bits).
    pub fn set_pod_wakeups(&mut self, bits: u32) -> Result<(), LoadError> {
        self.update_config(|c| c.pod_wakeups = bits)
    }

    /// Changes the programs' runtime switches, writing only on a change.
    fn update_config(&mut self, f: impl FnOnce(&mut Config)) -> Result<(), LoadError> {
        let mut cfg: Array<_, Config> =
            Array::try_from(self.map_mut("CONFIG")?).map_err(map_err("CONFIG"))?;
        let before = cfg.get(&0, 0).map_err(map_err("CONFIG"))?;
        let mut c = before;
        f(&mut c);
        if c == before {
            return Ok(());
        }
        cfg.set(0, c, 0).map_err(map_err("CONFIG"))
    }

    /// Sets the pod-scoped policies (bit i = scope i+1) for tasks under
    /// cgroup `id`; 0 removes the entry.
    pub fn set_pod_scopes(&mut self, id: u64, bits: u64) -> Result<(), LoadError> {
        let mut m: HashMap<_, u64, u64> =
            HashMap::try_from(self.map_mut("POD_SCOPES")?).map_err(map_err("POD_SCOPES"))?;
        if bits != 0 {
            return m.insert(id, bits, 0).map_err(map_err("POD_SCOPES"));
        }
        match m.remove(&id) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err("POD_SCOPES")(e)),
        }
    }

    /// Gives cgroup `id` its network back.
    pub fn release(&mut self, id: u64) -> Result<(), LoadError> {
        let mut q: HashMap<_, u64, u8> =
            HashMap::try_from(self.map_mut("QUARANTINE")?).map_err(map_err("QUARANTINE"))?;
        match q.remove(&id) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err("QUARANTINE")(e)),
        }
        let empty = q.keys().next().is_none();
        if empty {
            self.set_quarantine_active(false)?;
        }
        Ok(())
    }

    fn program<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, LoadError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        let p = self
            .ebpf
            .program_mut(name)
            .ok_or(LoadError::Missing(name))?;
        p.try_into()
            .map_err(|source| LoadError::Program { name, source })
    }

    /// Per program: name, runs and total run time, as the kernel counts them
    /// while run-time statistics are enabled (see [`enable_stats`]).
    pub fn program_stats(&self) -> Vec<(String, u64, std::time::Duration)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                p.info()
                    .ok()
                    .map(|i| (name.to_string(), i.run_count(), i.run_time()))
            })
            .collect()
    }

    /// Kernel ids of the loaded programs.
    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok().map(|i| i.id()))
            .collect()
    }

    /// The ring buffer, taken out once for the reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let m = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(LoadError::Missing("EVENTS"))?;
        RingBuf::try_from(m).map_err(map_err("EVENTS"))
    }

    /// Writes compiled policy and the enforcement scope. Tables are written
    /// before the selector count, so the programs never see a partial set.
    pub fn apply(&mut self, c: &Compiled, scope: &[u64]) -> Result<(), LoadError> {
        let mut equal: HashMap<_, [u8; STR_KEY_LEN], u8> =
            HashMap::try_from(self.map_mut("STR_EQUAL")?).map_err(map_err("STR_EQUAL"))?;
        for k in &c.equal {
            equal.insert(k, 1, 0).map_err(map_err("STR_EQUAL"))?;
        }
        for (name, entries) in [("STR_PREFIX", &c.prefix), ("STR_POSTFIX", &c.postfix)] {
            let mut trie: LpmTrie<_, [u8; STR_KEY_LEN], u8> =
                LpmTrie::try_from(self.map_mut(name)?).map_err(map_err(name))?;
            for (bits, k) in entries {
                trie.insert(&Key::new(*bits, *k), 1, 0)
                    .map_err(map_err(name))?;
            }
        }
        let mut sels: Array<_, ExecSelector> =
            Array::try_from(self.map_mut("EXEC_SELECTORS")?).map_err(map_err("EXEC_SELECTORS"))?;
        for (i, s) in c.selectors.iter().enumerate() {
            sels.set(i as u32, s, 0)
                .map_err(map_err("EXEC_SELECTORS"))?;
        }
        let mut nsels: Array<_, NetSelector> =
            Array::try_from(self.map_mut("NET_SELECTORS")?).map_err(map_err("NET_SELECTORS"))?;
        for (i, s) in c.net_selectors.iter().enumerate() {
            nsels
                .set(i as u32, s, 0)
                .map_err(map_err("NET_SELECTORS"))?;
        }
        let mut addrs: LpmTrie<_, [u8; NET_ADDR_KEY_LEN], u8> =
            LpmTrie::try_from(self.map_mut("NET_ADDR")?).map_err(map_err("NET_ADDR"))?;
        for (bits, k) in &c.net_addrs {
            addrs
                .insert(&Key::new(*bits, *k), 1, 0)
                .map_err(map_err("NET_ADDR"))?;
        }
        let mut values: HashMap<_, NetValueKey, u8> =
            HashMap::try_from(self.map_mut("NET_VALUE")?).map_err(map_err("NET_VALUE"))?;
        for k in &c.net_values {
            values.insert(k, 1, 0).map_err(map_err("NET_VALUE"))?;
        }
        let mut cg: HashMap<_, u64, u8> =
            HashMap::try_from(self.map_mut("SCOPE_CGROUPS")?).map_err(map_err("SCOPE_CGROUPS"))?;
        for id in scope {
            cg.insert(id, 1, 0).map_err(map_err("SCOPE_CGROUPS"))?;
        }
        let config = Config {
            scoped: !scope.is_empty() as u32,
            ..c.config
        };
        let mut cfg: Array<_, Config> =
            Array::try_from(self.map_mut("CONFIG")?).map_err(map_err("CONFIG"))?;
        cfg.set(0, config, 0).map_err(map_err("CONFIG"))
    }

    /// Seeds the policy state of processes found in /proc. A state the exec
    /// program already wrote is newer and is kept.
    pub fn seed_states(&mut self, states: &[(u32, ProcState)]) -> Result<(), LoadError> {
        let mut procs: HashMap<_, u32, ProcState> =
            HashMap::try_from(self.map_mut("PROCS")?).map_err(map_err("PROCS"))?;
        for (pid, st) in states {
            match procs.insert(pid, st, BPF_NOEXIST) {
                Ok(()) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(map_err("PROCS")(e)),
            }
        }
        Ok(())
    }

    /// Records lost to a full ring buffer so far, per kind.
    pub fn lost(&self) -> Result<Vec<(&'static str, u64)>, LoadError> {
        let m = self.ebpf.map("LOST").ok_or(LoadError::Missing("LOST"))?;
        let lost: PerCpuArray<_, u64> = PerCpuArray::try_from(m).map_err(map_err("LOST"))?;
        LOST_KINDS
            .iter()
            .map(|&(k, name)| {
                let v = lost.get(&k, 0).map_err(map_err("LOST"))?;
                Ok((name, v.iter().sum()))
            })
            .collect()
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, LoadError> {
        self.ebpf.map_mut(name).ok_or(LoadError::Missing(name))
    }
}

/// The socket-address programs of `sensor-ebpf/src/connect.rs`, by hook,
/// in their modern, deferred and compat forms.
const SOCK_PROGRAMS: [[&str; 3]; 4] = [
    [
        "snsr_connect4",
        "snsr_connect4_deferred",
        "snsr_connect4_compat",
    ],
    [
        "snsr_connect6",
        "snsr_connect6_deferred",
        "snsr_connect6_compat",
    ],
    [
        "snsr_sendmsg4",
        "snsr_sendmsg4_deferred",
        "snsr_sendmsg4_compat",
    ],
    [
        "snsr_sendmsg6",
        "snsr_sendmsg6_deferred",
        "snsr_sendmsg6_compat",
    ],
];

/// Turns on the kernel's per-program run-time statistics for as long as the
/// returned fd lives (they cost a little on every program run).
pub fn enable_stats() -> Result<std::os::fd::OwnedFd, LoadError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| LoadError::Stats(e.to_string()))
}
