//! What this kernel offers the sensor, found by asking it (as `bpftool
//! feature probe` does: a program that calls a helper is refused with
//! "unknown func" when the kernel lacks it), and the form of each kernel
//! program that the loader takes from it. The decision is a pure function
//! of [`Features`], so it is tested without a kernel.
use std::os::fd::{FromRawFd, OwnedFd};

/// Facts about the running kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub release: String,
    pub btf: bool,
    pub ring_buffer: bool,
    /// `bpf_loop` (5.17).
    pub bpf_loop: bool,
    /// `bpf_set_retval` in cgroup programs (5.18).
    pub set_retval: bool,
    /// `bpf_send_signal` in cgroup socket-address programs.
    pub cgroup_send_signal: bool,
    /// `bpf_get_current_ancestor_cgroup_id` in tracing programs; without
    /// it the exec program walks the cgroup tree itself.
    pub ancestor_cgroup: bool,
    /// The kernel is built with BPF-LSM (`CONFIG_BPF_LSM`).
    pub lsm_built: bool,
    /// `bpf` is in the active LSM list (`lsm=...,bpf` at boot).
    pub lsm_active: bool,
    /// An LSM program on `bprm_check_security` passes the verifier (some
    /// kernels refuse every trampoline program, LSM included).
    pub lsm_loads: bool,
    /// kprobes can be attached (the kprobe PMU exists).
    pub kprobes: bool,
    /// `bpf_ima_file_hash` in sleepable LSM programs (5.18).
    pub ima_helper: bool,
    /// The kernel is built with IMA (`CONFIG_IMA`), which that helper asks.
    pub ima_built: bool,
}

/// The form of a program family the loader takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `bpf_loop` and ancestor cgroup ids from a helper (and, for connect,
    /// `bpf_set_retval` and a signal from the hook itself).
    Modern,
    /// Connect only: as modern, but the hook cannot send a signal, so a
    /// Sigkill is sent as the syscall returns.
    Deferred,
    /// Bounded loops and a cgroup walk; connect denies with EPERM only and
    /// signals as the syscall returns.
    Compat,
}

/// What the loader does on this kernel, per hook family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub exec: Form,
    pub connect: Form,
    /// Override on exec and connect hooks through BPF-LSM.
    pub lsm: bool,
    /// Why a feature is off, for refusals and the probe table.
    pub connect_errno_missing: Option<&'static str>,
    pub lsm_missing: Option<&'static str>,
    /// Why Post's `imaHash` cannot be computed here (the hasher program is
    /// attached only where it can).
    pub ima_missing: Option<&'static str>,
}

impl Features {
    /// Why the sensor cannot run on this kernel at all, if it cannot (a
    /// kernel without BTF is refused by the loader). As root only: without
    /// privilege every probe fails.
    pub fn unsupported(&self) -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        if !self.ring_buffer {
            return Some(format!(
                "kernel {}: no BPF ring buffer (Linux 5.8); the sensor needs Linux 5.10 or later",
                self.release
            ));
        }
        None
    }

    /// The loader's choices for these features.
    pub fn plan(&self) -> Plan {
        let connect = match (self.bpf_loop && self.set_retval, self.cgroup_send_signal) {
            (true, true) => Form::Modern,
            (true, false) => Form::Deferred,
            (false, _) => Form::Compat,
        };
        let connect_errno_missing = if !self.set_retval {
            Some("this kernel has no bpf_set_retval in cgroup programs (Linux 5.18)")
        } else if connect == Form::Compat {
            Some("this kernel has no bpf_loop (Linux 5.17), and the connect programs without it cannot set an errno")
        } else {
            None
        };
        let lsm_missing = if !self.lsm_built {
            Some("this kernel is built without BPF-LSM (CONFIG_BPF_LSM)")
        } else if !self.lsm_active {
            Some("BPF-LSM is not active on this kernel (boot with lsm=...,bpf)")
        } else if !self.lsm_loads {
            Some("this kernel refuses LSM programs (no BPF trampolines)")
        } else {
            None
        };
        let ima_missing = if lsm_missing.is_some() {
            lsm_missing
        } else if !self.ima_helper {
            Some("this kernel has no bpf_ima_file_hash (Linux 5.18)")
        } else if !self.ima_built {
            Some("this kernel is built without IMA (CONFIG_IMA)")
        } else {
            None
        };
        Plan {
            exec: if self.bpf_loop && self.ancestor_cgroup {
                Form::Modern
            } else {
                Form::Compat
            },
            connect,
            lsm: lsm_missing.is_none(),
            connect_errno_missing,
            lsm_missing,
            ima_missing,
        }
    }

    /// Asks the running kernel. To exercise the older forms where they are
    /// not needed, `SENSOR_PROGRAM_FORM` in the environment makes a new
    /// kernel look older to the plan: `compat` like 5.10 (no `bpf_loop`,
    /// `bpf_set_retval`, signals from cgroup programs or ancestor ids in
    /// tracing programs), `deferred` like 6.12 (no signals from cgroup
    /// programs).
    pub fn probe() -> Features {
        raise_memlock();
        let mut f = Self::probe_kernel();
        match std::env::var("SENSOR_PROGRAM_FORM").as_deref() {
            Ok("compat") => {
                f.bpf_loop = false;
                f.set_retval = false;
                f.cgroup_send_signal = false;
                f.ancestor_cgroup = false;
            }
            Ok("deferred") => f.cgroup_send_signal = false,
            _ => {}
        }
        f
    }

    fn probe_kernel() -> Features {
        // BPF-LSM's activity is read from securityfs.
        if let Err(e) = super::mounts::ensure() {
            tracing::warn!(error = %e, "mounting the kernel's file systems for the probe");
        }
        let lsm_list = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
        let btf = super::btf::Btf::from_sys_fs().ok();
        let lsm_hook = btf
            .as_ref()
            .and_then(|b| b.function_id("bpf_lsm_bprm_check_security"));
        Features {
            release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            btf: btf.is_some(),
            ring_buffer: helper(PROG_TRACEPOINT, 0, HELPER_RINGBUF_OUTPUT),
            bpf_loop: helper(PROG_TRACEPOINT, 0, HELPER_LOOP),
            set_retval: helper(
                PROG_CGROUP_SOCK_ADDR,
                ATTACH_INET4_CONNECT,
                HELPER_SET_RETVAL,
            ),
            cgroup_send_signal: helper(
                PROG_CGROUP_SOCK_ADDR,
                ATTACH_INET4_CONNECT,
                HELPER_SEND_SIGNAL,
            ),
            ancestor_cgroup: helper(PROG_TRACEPOINT, 0, HELPER_ANCESTOR_CGROUP_ID),
            lsm_built: lsm_hook.is_some(),
            lsm_loads: lsm_hook.is_some_and(lsm_program_loads),
            lsm_active: lsm_list.trim().split(',').any(|l| l == "bpf"),
            kprobes: std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists(),
            ima_helper: lsm_hook.is_some_and(|h| sleepable_lsm_helper(h, HELPER_IMA_FILE_HASH)),
            ima_built: btf
                .as_ref()
                .is_some_and(|b| b.function_id("ima_file_hash").is_some()),
        }
    }
}

/// Before 5.11 the kernel charges BPF memory to RLIMIT_MEMLOCK: with a
/// pinned set already charged (a daemon that crashed, or is being
/// upgraded), the probe's own test programs would be refused with EPERM and
/// read as missing features. Root lifts the limit, as every BPF agent does.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "raising RLIMIT_MEMLOCK");
    }
}

const PROG_TRACEPOINT: u32 = 5;
const PROG_CGROUP_SOCK_ADDR: u32 = 18;
const PROG_LSM: u32 = 29;
const ATTACH_INET4_CONNECT: u32 = 10;
const ATTACH_LSM_MAC: u32 = 27;
const HELPER_SEND_SIGNAL: i32 = 109;
const HELPER_ANCESTOR_CGROUP_ID: i32 = 123;
const HELPER_RINGBUF_OUTPUT: i32 = 130;
const HELPER_LOOP: i32 = 181;
const HELPER_SET_RETVAL: i32 = 187;
const HELPER_IMA_FILE_HASH: i32 = 193;
const BPF_F_SLEEPABLE: u32 = 1 << 4;

/// The head of `union bpf_attr` for `BPF_PROG_LOAD`, up to the fields used.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_prog_fd: u32,
    /// Explicit, so that it is zero: a kernel whose last field is
    /// `attach_prog_fd` (5.10) refuses the load with EINVAL when the bytes
    /// after it are not, and implicit padding is whatever was on the stack.
    _pad: u32,
}

/// Loads `insns` as a program; returns whether it loaded and the verifier log.
fn load(mut attr: ProgLoadAttr, insns: &[u64]) -> (bool, String) {
    let license = b"GPL\0";
    let mut log = vec![0u8; 4096];
    attr.insn_cnt = insns.len() as u32;
    attr.insns = insns.as_ptr() as u64;
    attr.license = license.as_ptr() as u64;
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    // SAFETY: BPF_PROG_LOAD (5) reads `attr` and the buffers it points to,
    // which outlive the call; it writes at most log_size bytes of log.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd >= 0 {
        // SAFETY: a new descriptor that nothing else owns.
        drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    let text = String::from_utf8_lossy(&log);
    (fd >= 0, text.trim_end_matches('\0').trim().to_string())
}

/// Whether a BPF-LSM program (`r0 = 0; exit`) on the hook with BTF id
/// `hook` loads.
fn lsm_program_loads(hook: u32) -> bool {
    let attr = ProgLoadAttr {
        prog_type: PROG_LSM,
        expected_attach_type: ATTACH_LSM_MAC,
        attach_btf_id: hook,
        ..Default::default()
    };
    load(attr, &[0xb7, 0x95]).0
}

/// Whether a sleepable BPF-LSM program on the hook with BTF id `hook` may
/// call helper `id` (the IMA helpers exist only there), read as
/// [`helper`] reads its load.
fn sleepable_lsm_helper(hook: u32, id: i32) -> bool {
    let attr = ProgLoadAttr {
        prog_type: PROG_LSM,
        expected_attach_type: ATTACH_LSM_MAC,
        attach_btf_id: hook,
        prog_flags: BPF_F_SLEEPABLE,
        ..Default::default()
    };
    helper_call(attr, id)
}

/// Whether programs of `prog_type` may call helper `id`: a program that
/// calls it with zeroed arguments is loaded, and only the verifier's
/// "unknown func" / "invalid func" (the helper does not exist) or "cannot
/// use helper" (6.12: not for this program type) says it is missing; any
/// other refusal is about the arguments, so the helper is there.
fn helper(prog_type: u32, attach: u32, id: i32) -> bool {
    let attr = ProgLoadAttr {
        prog_type,
        expected_attach_type: attach,
        ..Default::default()
    };
    helper_call(attr, id)
}

/// [`helper`] for a program described by `attr`.
fn helper_call(attr: ProgLoadAttr, id: i32) -> bool {
    // r1..r5 = 0; call id; r0 = 0; exit (0: an LSM program's verdict
    // must be one)
    let mut insns: Vec<u64> = (1..=5u64).map(|r| 0xb7 | (r << 8)).collect();
    insns.push(0x85 | ((id as u32 as u64) << 32));
    insns.push(0xb7);
    insns.push(0x95);
    let (loaded, log) = load(attr, &insns);
    // No log at all: the load was refused before the verifier ran (no
    // privilege, or the program type is unknown), so nothing is known.
    loaded || (!log.is_empty() && !helper_missing(&log))
}

fn helper_missing(log: &str) -> bool {
    ["unknown func", "invalid func", "cannot use helper"]
        .iter()
        .any(|m| log.contains(m))
}

impl std::fmt::Display for Features {
    /// The `sensor probe` table.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "kernel {}", self.release)?;
        for (what, have) in [
            ("BTF (/sys/kernel/btf/vmlinux)", self.btf),
            ("ring buffer (5.8)", self.ring_buffer),
            (
                "ancestor cgroup ids in tracing programs",
                self.ancestor_cgroup,
            ),
            ("bpf_loop (5.17)", self.bpf_loop),
            ("bpf_set_retval in cgroup programs (5.18)", self.set_retval),
            (
                "bpf_send_signal in cgroup programs",
                self.cgroup_send_signal,
            ),
            ("BPF-LSM built in (CONFIG_BPF_LSM)", self.lsm_built),
            ("BPF-LSM active (lsm=...,bpf)", self.lsm_active),
            ("BPF-LSM programs load", self.lsm_loads),
            ("kprobes", self.kprobes),
            ("bpf_ima_file_hash (5.18)", self.ima_helper),
            ("IMA built in (CONFIG_IMA)", self.ima_built),
        ] {
            writeln!(f, "  {what:<44} {}", yes(have))?;
        }
        let plan = self.plan();
        let form = |x: Form| match x {
            Form::Modern | Form::Deferred => "bpf_loop",
            Form::Compat => "bounded loops (compat)",
        };
        writeln!(f, "policy hooks and the path each takes")?;
        writeln!(
            f,
            "  {:<44} sched/sched_process_exec, {}",
            "exec (security_bprm_check, sys_execve[at],",
            form(plan.exec)
        )?;
        writeln!(f, "   bprm_check_security, sched_process_exec)")?;
        let kill = if plan.connect == Form::Modern {
            "signal from the hook"
        } else {
            "signal as the syscall returns"
        };
        writeln!(
            f,
            "  {:<44} cgroup connect4/6 and sendmsg4/6, {}, {kill}",
            "connect (tcp_connect, sys_connect,",
            form(plan.connect)
        )?;
        writeln!(f, "   security_socket_connect, socket_connect)")?;
        writeln!(
            f,
            "  {:<44} cgroup sock_create and sock_release, {}",
            "sockets (sk_alloc, __sk_free, tcp_close)",
            form(plan.connect)
        )?;
        writeln!(
            f,
            "  {:<44} raw sock/inet_sock_set_state, {}, on demand",
            "TCP states (inet_csk_listen_start,",
            form(plan.exec)
        )?;
        writeln!(f, "   tcp_set_state, tcp_create_openreq_child)")?;
        writeln!(
            f,
            "  {:<44} raw sys_enter and sys_exit, {}, on demand",
            "syscalls (sys_*, tcp_sendmsg)",
            form(plan.exec)
        )?;
        writeln!(
            f,
            "  {:<44} cgroup_skb ingress and egress, {}, on demand",
            "packets (__cgroup_bpf_run_filter_skb,",
            form(plan.exec)
        )?;
        writeln!(
            f,
            "   sk_filter_trim_cap, ip_output, ip_mc_output, ip6_output)"
        )?;
        match plan.connect_errno_missing {
            None => writeln!(f, "  {:<44} any errno", "connect Override")?,
            Some(why) => writeln!(f, "  {:<44} EPERM only: {why}", "connect Override")?,
        }
        match plan.lsm_missing {
            None => writeln!(f, "  {:<44} BPF-LSM", "exec Override (bprm_check_security)")?,
            Some(why) => writeln!(
                f,
                "  {:<44} refused: {why}",
                "exec Override (bprm_check_security)"
            )?,
        }
        match plan.ima_missing {
            None => writeln!(
                f,
                "  {:<44} sleepable BPF-LSM",
                "exec imaHash (bprm_check_security)"
            )?,
            Some(why) => writeln!(
                f,
                "  {:<44} refused: {why}",
                "exec imaHash (bprm_check_security)"
            )?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newest() -> Features {
        Features {
            release: "6.18".into(),
            btf: true,
            ring_buffer: true,
            bpf_loop: true,
            set_retval: true,
            cgroup_send_signal: true,
            ancestor_cgroup: true,
            lsm_built: true,
            lsm_active: true,
            lsm_loads: true,
            kprobes: true,
            ima_helper: true,
            ima_built: true,
        }
    }

    #[test]
    fn verifier_messages_that_mean_no_such_helper() {
        assert!(helper_missing(
            "5: (85) call bpf_send_signal#109\nunknown func bpf_send_signal#109"
        ));
        assert!(helper_missing(
            "program of this type cannot use helper bpf_send_signal#109"
        ));
        assert!(!helper_missing("R1 type=scalar expected=fp"));
    }

    #[test]
    fn the_newest_kernel_takes_every_modern_path() {
        let p = newest().plan();
        assert_eq!(
            (p.exec, p.connect, p.lsm),
            (Form::Modern, Form::Modern, true)
        );
        assert_eq!(p.connect_errno_missing, None);
    }

    #[test]
    fn without_bpf_loop_both_families_use_bounded_loops() {
        let f = Features {
            bpf_loop: false,
            set_retval: false,
            cgroup_send_signal: false,
            ..newest()
        };
        let p = f.plan();
        assert_eq!((p.exec, p.connect), (Form::Compat, Form::Compat));
        assert!(p.connect_errno_missing.unwrap().contains("bpf_set_retval"));
    }

    #[test]
    fn no_signal_from_cgroup_programs_defers_the_signal_and_keeps_errnos() {
        let f = Features {
            cgroup_send_signal: false,
            ..newest()
        };
        let p = f.plan();
        assert_eq!((p.exec, p.connect), (Form::Modern, Form::Deferred));
        assert_eq!(p.connect_errno_missing, None);
    }

    #[test]
    fn bpf_set_retval_without_bpf_loop_still_limits_errnos() {
        let f = Features {
            bpf_loop: false,
            ..newest()
        };
        let p = f.plan();
        assert_eq!(p.connect, Form::Compat);
        assert!(p.connect_errno_missing.unwrap().contains("bpf_loop"));
    }

    #[test]
    fn lsm_needs_to_be_built_and_active() {
        let inactive = Features {
            lsm_active: false,
            ..newest()
        }
        .plan();
        assert!(!inactive.lsm);
        assert!(inactive.lsm_missing.unwrap().contains("lsm=...,bpf"));
        let absent = Features {
            lsm_built: false,
            ..newest()
        }
        .plan();
        assert!(absent.lsm_missing.unwrap().contains("CONFIG_BPF_LSM"));
        assert!(absent.ima_missing.unwrap().contains("CONFIG_BPF_LSM"));
    }

    #[test]
    fn ima_hash_needs_lsm_the_helper_and_ima() {
        assert_eq!(newest().plan().ima_missing, None);
        let old = Features {
            ima_helper: false,
            ..newest()
        };
        assert!(old.plan().lsm);
        assert!(old.plan().ima_missing.unwrap().contains("5.18"));
        let without = Features {
            ima_built: false,
            ..newest()
        };
        assert!(without.plan().ima_missing.unwrap().contains("CONFIG_IMA"));
    }
}
