//! Attaching: which programs this kernel's plan takes, and each attached
//! as a bpf link, so that [`Kernel::pin`] can keep it.
use std::path::Path;

use aya::programs::links::FdLink;
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, ProgramError,
    RawTracePoint, TracePoint,
};

use super::{pin, probe, Kernel, LoadError};

impl Kernel {
    /// The programs [`Kernel::attach`] attaches under this plan.
    pub fn expected_programs(&self) -> Vec<&'static str> {
        let modern_exec = self.plan.exec == probe::Form::Modern;
        let mut v = vec![
            "snsr_fork",
            "snsr_exit",
            if modern_exec {
                "snsr_exec"
            } else {
                "snsr_exec_compat"
            },
        ];
        if self.plan.connect != probe::Form::Modern {
            v.push("snsr_signal_on_exit");
        }
        if self.plan.lsm {
            // Before the selector program, so that it runs after it: a
            // trampoline runs its newest program first (see `lsm.rs`).
            if self.plan.ima_missing.is_none() {
                v.push("snsr_lsm_ima");
            }
            v.push(if modern_exec {
                "snsr_lsm_bprm"
            } else {
                "snsr_lsm_bprm_compat"
            });
        }
        let form = match self.plan.connect {
            probe::Form::Modern => 0,
            probe::Form::Deferred => 1,
            probe::Form::Compat => 2,
        };
        v.extend(SOCK_PROGRAMS.iter().map(|forms| forms[form]));
        v.extend(if form == 2 {
            ["snsr_sock_create_compat", "snsr_sock_release_compat"]
        } else {
            ["snsr_sock_create", "snsr_sock_release"]
        });
        v.extend(["snsr_q_egress", "snsr_q_ingress"]);
        v
    }

    /// Attaches fork and exit before exec so that no process the exec
    /// program sees is missing its lineage, then (in the forms the plan
    /// chose) the deferred-signal sender, the BPF-LSM exec hook, and the
    /// socket hooks at the root of the cgroup v2 tree `cgroup_root`, as links
    /// that coexist with other programs there (Cilium's). Every attachment
    /// is a bpf link, so that [`Kernel::pin`] can keep it.
    pub fn attach(&mut self, cgroup_root: &Path) -> Result<(), LoadError> {
        self.cgroup_root = Some(cgroup_root.to_path_buf());
        let root = std::fs::File::open(cgroup_root).map_err(|source| LoadError::Cgroup {
            path: cgroup_root.display().to_string(),
            source,
        })?;
        for name in self.expected_programs() {
            let link = match name {
                "snsr_fork" => self.raw_tracepoint(name, "sched_process_fork")?,
                "snsr_exit" => self.raw_tracepoint(name, "sched_process_exit")?,
                "snsr_exec" | "snsr_exec_compat" => {
                    self.raw_tracepoint(name, "sched_process_exec")?
                }
                "snsr_signal_on_exit" => self.raw_tracepoint(name, "sys_exit")?,
                "snsr_lsm_ima" | "snsr_lsm_bprm" | "snsr_lsm_bprm_compat" => {
                    self.lsm_program(name)?
                }
                "snsr_q_egress" => self.skb(name, &root, CgroupSkbAttachType::Egress)?,
                "snsr_q_ingress" => self.skb(name, &root, CgroupSkbAttachType::Ingress)?,
                "snsr_sock_create"
                | "snsr_sock_create_compat"
                | "snsr_sock_release"
                | "snsr_sock_release_compat" => self.cgroup_sock(name, &root)?,
                _ => self.sock_addr(name, &root)?,
            };
            self.links.push((name.to_string(), link));
        }
        for p in std::mem::take(&mut self.deferred) {
            self.on_demand(p, true)?;
        }
        if let Err(e) = self.socket_guard() {
            tracing::error!(error = %e, "packet-socket guard not attached: a quarantined pod can still open AF_PACKET sockets");
        }
        Ok(())
    }

    /// The quarantine's packet-socket guard. From Linux 5.15 on
    /// `syscalls:sys_enter_socket`, whose perf event attaches as a bpf link;
    /// before, on the raw `sys_enter` tracepoint (see the kernel program
    /// for why). Either link is pinned with the set. It is not one of the
    /// `expected_programs`, which every set must hold, because which of the
    /// two a set holds depends on the kernel.
    fn socket_guard(&mut self) -> Result<(), LoadError> {
        if !perf_links() {
            let link = self.raw_tracepoint(SOCKET_GUARD_RAW, "sys_enter")?;
            self.links.push((SOCKET_GUARD_RAW.to_string(), link));
            return Ok(());
        }
        const NAME: &str = SOCKET_GUARD;
        let err = |source| LoadError::Program { name: NAME, source };
        let p: &mut TracePoint = self.program(NAME)?;
        p.load().map_err(err)?;
        let id = p.attach("syscalls", "sys_enter_socket").map_err(err)?;
        let link = p.take_link(id).map_err(err)?;
        let link =
            FdLink::try_from(link).map_err(|source| LoadError::Link { name: NAME, source })?;
        self.links.push((NAME.to_string(), link));
        Ok(())
    }

    /// Program `p` in this kernel's form.
    fn on_demand_name(&self, p: OnDemand) -> &'static str {
        let (modern, compat) = p.names();
        match self.plan.exec {
            probe::Form::Modern => modern,
            _ => compat,
        }
    }

    /// The syscall policies' program on `sys_enter` (see [`Kernel::on_demand`]).
    pub fn syscall_program(&mut self, on: bool) -> Result<(), LoadError> {
        self.on_demand(OnDemand::SysEnter, on)
    }

    /// Attaches program `p` while the loaded policies need it (`on`), and
    /// detaches it otherwise: attached, the syscall programs cost every
    /// syscall on the node a program run (`cargo xtask bench syscall`),
    /// which no one should pay for policies they do not have. In a pinned
    /// set the link is pinned too, so enforcement outlives the daemon as
    /// for every other program; an adopted set's daemon attaches the
    /// program pinned in `programs/`.
    pub fn on_demand(&mut self, p: OnDemand, on: bool) -> Result<(), LoadError> {
        let name = self.on_demand_name(p);
        let attached = self.links.iter().any(|(n, _)| n == name);
        self.deferred.retain(|d| *d != p);
        if on && !attached && p.skb().is_some() && self.cgroup_root.is_none() {
            // Attached by `attach`, which knows the cgroup root.
            self.deferred.push(p);
            return Ok(());
        }
        let at = self.links.iter().position(|(n, _)| n == name);
        match (on, at) {
            (true, None) => {
                let link = match (p.skb(), self.ebpf.is_some()) {
                    (None, true) => self.raw_tracepoint(name, p.point())?,
                    (None, false) => self.pinned_raw_tracepoint(name, p.point())?,
                    (Some(ty), _) => self.root_skb(name, ty)?,
                };
                let link = match &self.set {
                    Some(set) => {
                        let path = set.links().join(name);
                        let pinned = link.pin(&path).map_err(|e| LoadError::Pinning {
                            what: format!("link {name}"),
                            path: path.display().to_string(),
                            source: e.into(),
                        })?;
                        FdLink::from(pinned)
                    }
                    None => link,
                };
                self.links.push((name.to_string(), link));
                tracing::info!(
                    program = name,
                    point = p.point(),
                    "{}: program attached",
                    p.what()
                );
            }
            (false, Some(i)) => {
                if let Some(set) = &self.set {
                    let path = set.links().join(name);
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(error = %e, path = %path.display(), "unpinning an on-demand link");
                    }
                }
                // Dropping the last reference detaches it.
                self.links.remove(i);
                tracing::info!(
                    program = name,
                    point = p.point(),
                    "no longer {}: program detached",
                    p.what()
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// Pins the programs a set keeps without a link (the on-demand ones,
    /// loaded here if no policy attached them yet), so that an adopting
    /// daemon can attach them.
    pub(super) fn pin_programs(&mut self, set: &pin::SetDir) -> Result<(), LoadError> {
        if self.ebpf.is_none() {
            return Ok(());
        }
        for p in OnDemand::ALL {
            let name = self.on_demand_name(p);
            let dir = set.programs();
            let path = dir.join(name);
            let failed = |e: Box<dyn std::error::Error + Send + Sync>| LoadError::Pinning {
                what: format!("program {name}"),
                path: path.display().to_string(),
                source: e,
            };
            std::fs::create_dir_all(&dir).map_err(|e| failed(e.into()))?;
            let load = |source| LoadError::Program { name, source };
            if p.skb().is_some() {
                let prog: &mut CgroupSkb = self.program(name)?;
                if prog.fd().is_err() {
                    prog.load().map_err(load)?;
                }
                prog.pin(&path).map_err(|e| failed(e.into()))?;
                continue;
            }
            let prog: &mut RawTracePoint = self.program(name)?;
            if prog.fd().is_err() {
                prog.load().map_err(load)?;
            }
            prog.pin(&path).map_err(|e| failed(e.into()))?;
        }
        Ok(())
    }

    /// Attaches program `name`, pinned in the adopted set's `programs/`,
    /// on raw tracepoint `point`.
    fn pinned_raw_tracepoint(
        &mut self,
        name: &'static str,
        point: &str,
    ) -> Result<FdLink, LoadError> {
        let err = |source| LoadError::Program { name, source };
        let set = self.set.as_ref().ok_or(LoadError::Missing(name))?;
        let mut p = RawTracePoint::from_pin(set.programs().join(name)).map_err(err)?;
        let id = p.attach(point).map_err(err)?;
        Ok(p.take_link(id).map_err(err)?.into())
    }

    /// Attaches packet program `name` at the cgroup v2 root the kernel
    /// side was attached under: loaded here, or pinned in an adopted set's
    /// `programs/`.
    fn root_skb(
        &mut self,
        name: &'static str,
        ty: CgroupSkbAttachType,
    ) -> Result<FdLink, LoadError> {
        let err = |source| LoadError::Program { name, source };
        let root_path = self
            .cgroup_root
            .clone()
            .ok_or(LoadError::Missing("the cgroup v2 root (attach first)"))?;
        let root = std::fs::File::open(&root_path).map_err(|source| LoadError::Cgroup {
            path: root_path.display().to_string(),
            source,
        })?;
        let mut pinned;
        let p: &mut CgroupSkb = match self.ebpf.is_some() {
            true => self.program(name)?,
            false => {
                let set = self.set.as_ref().ok_or(LoadError::Missing(name))?;
                pinned = CgroupSkb::from_pin(set.programs().join(name), ty).map_err(err)?;
                &mut pinned
            }
        };
        if p.fd().is_err() {
            p.load().map_err(err)?;
        }
        let id = p.attach(&root, ty, CgroupAttachMode::Single).map_err(err)?;
        let link = p.take_link(id).map_err(err)?;
        FdLink::try_from(link).map_err(|source| LoadError::Link { name, source })
    }

    fn raw_tracepoint(&mut self, name: &'static str, point: &str) -> Result<FdLink, LoadError> {
        let err = |source| LoadError::Program { name, source };
        let p: &mut RawTracePoint = self.program(name)?;
        if p.fd().is_err() {
            p.load().map_err(err)?;
        }
        let id = p.attach(point).map_err(err)?;
        Ok(p.take_link(id).map_err(err)?.into())
    }

    fn sock_addr(&mut self, name: &'static str, root: &std::fs::File) -> Result<FdLink, LoadError> {
        let err = |source| LoadError::Program { name, source };
        let p: &mut CgroupSockAddr = self.program(name)?;
        p.load().map_err(err)?;
        let id = p.attach(root, CgroupAttachMode::Single).map_err(err)?;
        let link = p.take_link(id).map_err(err)?;
        FdLink::try_from(link).map_err(|source| LoadError::Link { name, source })
    }

    /// A cgroup sock program, on the hook its section names.
    fn cgroup_sock(
        &mut self,
        name: &'static str,
        root: &std::fs::File,
    ) -> Result<FdLink, LoadError> {
        let err = |source| LoadError::Program { name, source };
        let p: &mut CgroupSock = self.program(name)?;
        p.load().map_err(err)?;
        let id = p.attach(root, CgroupAttachMode::Single).map_err(err)?;
        let link = p.take_link(id).map_err(err)?;
        FdLink::try_from(link).map_err(|source| LoadError::Link { name, source })
    }

    fn skb(
        &mut self,
        name: &'static str,
        root: &std::fs::File,
        ty: CgroupSkbAttachType,
    ) -> Result<FdLink, LoadError> {
        let err = |source| LoadError::Program { name, source };
        let p: &mut CgroupSkb = self.program(name)?;
        p.load().map_err(err)?;
        let id = p.attach(root, ty, CgroupAttachMode::Single).map_err(err)?;
        let link = p.take_link(id).map_err(err)?;
        FdLink::try_from(link).map_err(|source| LoadError::Link { name, source })
    }

    /// Loads BPF-LSM program `name` on `bprm_check_security` and attaches
    /// it (a sleepable one as such: the object's section says so).
    fn lsm_program(&mut self, name: &'static str) -> Result<FdLink, LoadError> {
        let err = |source| LoadError::Program { name, source };
        let btf = aya::Btf::from_sys_fs().map_err(|e| err(ProgramError::Btf(e)))?;
        let p: &mut aya::programs::Lsm = self.program(name)?;
        p.load("bprm_check_security", &btf).map_err(err)?;
        let id = p.attach().map_err(err)?;
        Ok(p.take_link(id).map_err(err)?.into())
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

/// The quarantine's packet-socket guard (`syscalls:sys_enter_socket`), and
/// its form for kernels before 5.15 (raw `sys_enter`).
/// Programs attached only while the loaded policies need them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDemand {
    /// Syscall policies and `tcp_sendmsg` hooks, on `sys_enter`.
    SysEnter,
    /// Syscall hooks with `return: true`, on `sys_exit`.
    SysExit,
    /// `inet_csk_listen_start`, `tcp_set_state` and
    /// `tcp_create_openreq_child` hooks, on `inet_sock_set_state`.
    SockState,
    /// Packet hooks on packets received, on `cgroup_skb` ingress.
    PacketIn,
    /// Packet hooks on packets sent, on `cgroup_skb` egress.
    PacketOut,
}

impl OnDemand {
    pub const ALL: [OnDemand; 5] = [
        OnDemand::SysEnter,
        OnDemand::SysExit,
        OnDemand::SockState,
        OnDemand::PacketIn,
        OnDemand::PacketOut,
    ];

    /// For the packet programs, the cgroup hook they attach to (at the
    /// cgroup v2 root); the others are raw tracepoints.
    fn skb(self) -> Option<CgroupSkbAttachType> {
        match self {
            OnDemand::PacketIn => Some(CgroupSkbAttachType::Ingress),
            OnDemand::PacketOut => Some(CgroupSkbAttachType::Egress),
            _ => None,
        }
    }

    /// (modern, compat) program names.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            OnDemand::SysEnter => ("snsr_syscall", "snsr_syscall_compat"),
            OnDemand::SysExit => ("snsr_sys_return", "snsr_sys_return_compat"),
            OnDemand::SockState => ("snsr_sock_state", "snsr_sock_state_compat"),
            OnDemand::PacketIn => ("snsr_pkt_in", "snsr_pkt_in_compat"),
            OnDemand::PacketOut => ("snsr_pkt_out", "snsr_pkt_out_compat"),
        }
    }

    fn point(self) -> &'static str {
        match self {
            OnDemand::SysEnter => "sys_enter",
            OnDemand::SysExit => "sys_exit",
            OnDemand::SockState => "inet_sock_set_state",
            OnDemand::PacketIn => "cgroup_skb/ingress",
            OnDemand::PacketOut => "cgroup_skb/egress",
        }
    }

    fn what(self) -> &'static str {
        match self {
            OnDemand::SysEnter => "syscall policies loaded",
            OnDemand::SysExit => "syscall hooks wait for returns",
            OnDemand::SockState => "TCP state hooks loaded",
            OnDemand::PacketIn => "hooks on packets received loaded",
            OnDemand::PacketOut => "hooks on packets sent loaded",
        }
    }
}

const SOCKET_GUARD: &str = "snsr_q_socket";
const SOCKET_GUARD_RAW: &str = "snsr_q_socket_raw";

/// Whether perf events attach as bpf links (Linux 5.15), which can be pinned.
fn perf_links() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (5, 15)
}
