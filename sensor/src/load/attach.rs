//! Attaching: which programs this kernel's plan takes, and each attached
//! as a bpf link, so that [`Kernel::pin`] can keep it.
use std::path::Path;

use aya::programs::links::FdLink;
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError, RawTracePoint,
    TracePoint,
};

use super::{probe, Kernel, LoadError};

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
        v.push(if modern_exec {
            "snsr_syscall"
        } else {
            "snsr_syscall_compat"
        });
        if self.plan.lsm {
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
        v.extend(["snsr_q_egress", "snsr_q_ingress"]);
        v
    }

    /// Attaches fork and exit before exec so that no process the exec
    /// program sees is missing its lineage, then (in the forms the plan
    /// chose) the deferred-signal sender, the syscall policies' program,
    /// the BPF-LSM exec hook, and the
    /// socket hooks at the root of the cgroup v2 tree `cgroup_root`, as links
    /// that coexist with other programs there (Cilium's). Every attachment
    /// is a bpf link, so that [`Kernel::pin`] can keep it.
    pub fn attach(&mut self, cgroup_root: &Path) -> Result<(), LoadError> {
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
                "snsr_syscall" | "snsr_syscall_compat" => self.raw_tracepoint(name, "sys_enter")?,
                "snsr_lsm_bprm" | "snsr_lsm_bprm_compat" => self.lsm_program(name)?,
                "snsr_q_egress" => self.skb(name, &root, CgroupSkbAttachType::Egress)?,
                "snsr_q_ingress" => self.skb(name, &root, CgroupSkbAttachType::Ingress)?,
                _ => self.sock_addr(name, &root)?,
            };
            self.links.push((name.to_string(), link));
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

    fn raw_tracepoint(&mut self, name: &'static str, point: &str) -> Result<FdLink, LoadError> {
        let err = |source| LoadError::Program { name, source };
        let p: &mut RawTracePoint = self.program(name)?;
        p.load().map_err(err)?;
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

    /// Loads BPF-LSM program `name` on `bprm_check_security` and attaches it.
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
