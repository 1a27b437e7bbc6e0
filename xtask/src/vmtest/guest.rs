//! One guest: its part of the initramfs (the kernel's modules and an /init
//! that runs every check between markers on the serial console), the qemu
//! run, and the outcomes read back from the console.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::checks::{Outcome, CHECKS};
use super::initramfs::Cpio;
use super::{kernels, Artifacts};
use crate::root;

/// Longest a guest may run before it counts as hung.
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// The command line the guests boot with: BPF-LSM on beside the LSMs a
/// Debian node runs by default (`integrity` among them, which IMA uses
/// before 6.9), a quiet console that still prints warnings (a soft
/// lockup's stack is printed at that level).
const APPEND: &str = "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=5 \
                      lsm=lockdown,capability,landlock,yama,integrity,bpf";

/// Kernel modules the checks need: the test pods' veth pairs, and the
/// socket diagnostics that tear down a quarantined pod's connections (a
/// node loads them on demand; the guest has no modprobe).
const GUEST_MODULES: &[&str] = &["veth", "inet_diag", "tcp_diag", "udp_diag"];

/// The guest's /init: mounts, modules, then every check between markers.
/// The root is already in memory and writable: no tmpfs goes over /tmp or
/// /run, which would hide a checkout that lives there.
fn init_script(modules: &[String], a: &Artifacts, which: &[usize]) -> String {
    let mut s = String::from(
        "#!/vmtest/bin/sh\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/vmtest/bin\n\
         export HOME=/root RUST_BACKTRACE=1 NO_COLOR=1\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mkdir -p /dev/pts /dev/shm\n\
         mount -t devpts devpts /dev/pts\n\
         mount -t tmpfs tmpfs /dev/shm\n\
         chmod 1777 /tmp\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         mount -t securityfs securityfs /sys/kernel/security\n\
         hostname vmtest\n\
         ip link set lo up\n",
    );
    for m in modules {
        s.push_str(&format!("insmod {m}\n"));
    }
    s.push_str("echo \"@@vmtest ready $(cat /proc/sys/kernel/osrelease) lsm=$(cat /sys/kernel/security/lsm) $(grep MemAvailable /proc/meminfo)\"\n");
    for (i, c) in CHECKS.iter().enumerate().filter(|(i, _)| which.contains(i)) {
        let argv: Vec<String> = a.argv(c).iter().map(|w| format!("'{w}'")).collect();
        s.push_str(&format!(
            "echo \"@@vmtest begin {i} $(cat /proc/uptime)\"\ntimeout 300 {} 2>&1\necho \"@@vmtest end {i} $? $(cat /proc/uptime)\"\n",
            argv.join(" ")
        ));
    }
    s.push_str("echo '@@vmtest done'\npoweroff -f\n");
    s
}

/// Module files of a kernel by module name (`veth` → `.../veth.ko.xz`).
fn module_files(dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            module_files(&p, out);
        } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
            if let Some(m) = name
                .strip_suffix(".ko")
                .or_else(|| name.strip_suffix(".ko.xz"))
            {
                out.insert(m.replace('-', "_"), p.clone());
            }
        }
    }
}

/// A module file's contents, decompressed.
fn module_bytes(src: &Path) -> Result<Vec<u8>> {
    if src.extension().is_some_and(|e| e == "xz") {
        let o = Command::new("xz").arg("-dc").arg(src).output()?;
        if !o.status.success() {
            bail!("xz -dc {} failed", src.display());
        }
        return Ok(o.stdout);
    }
    std::fs::read(src).with_context(|| src.display().to_string())
}

/// `module` and what it depends on, dependencies first.
fn with_dependencies(
    module: &str,
    files: &BTreeMap<String, PathBuf>,
    order: &mut Vec<PathBuf>,
) -> Result<()> {
    let file = files
        .get(&module.replace('-', "_"))
        .with_context(|| format!("no module {module}"))?;
    if order.contains(file) {
        return Ok(());
    }
    // .modinfo holds NUL-separated `key=value` strings, `depends=a,b` among them.
    let data = module_bytes(file)?;
    let depends = data
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"depends="))
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .unwrap_or_default();
    for dep in depends.split(',') {
        if !dep.is_empty() {
            with_dependencies(dep, files, order)?;
        }
    }
    order.push(file.clone());
    Ok(())
}

/// The kernel's part of the initramfs: its modules and the init script.
fn write_kernel_part(
    out: &mut Vec<u8>,
    k: &kernels::Kernel,
    a: &Artifacts,
    which: &[usize],
) -> Result<()> {
    let mut files = BTreeMap::new();
    module_files(&k.modules, &mut files);
    let mut order = Vec::new();
    for m in GUEST_MODULES {
        with_dependencies(m, &files, &mut order).with_context(|| k.release.clone())?;
    }
    let mut c = Cpio::new(out);
    let mut loaded = Vec::new();
    for src in order {
        let data = module_bytes(&src)?;
        let name = src
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".xz").to_string())
            .unwrap_or_default();
        let at = format!("/vmtest/modules/{name}");
        c.file(&at, 0o644, &data)?;
        loaded.push(at);
    }
    c.file("/init", 0o755, init_script(&loaded, a, which).as_bytes())?;
    c.finish()?;
    Ok(())
}

/// Boots `k` and returns each check's outcome. A guest that crashes (a
/// kernel panic mid-run, which emulation has caused once in a while with
/// no check at fault) is booted once more for the checks it did not reach;
/// the crash is printed either way, and a second one fails those checks.
pub(crate) fn boot(
    k: &kernels::Kernel,
    userland: &Path,
    a: &Artifacts,
    which: &[usize],
) -> Result<Vec<Outcome>> {
    let (mut outcomes, stopped) = boot_once(k, userland, a, which, false)?;
    for (i, o) in outcomes.iter_mut().enumerate() {
        if !which.contains(&i) {
            *o = Some(Outcome::Skip(super::NOT_SELECTED.into()));
        }
    }
    let missing: Vec<usize> = which
        .iter()
        .copied()
        .filter(|&i| outcomes[i].is_none())
        .collect();
    let mut why = stopped;
    if !missing.is_empty() && !why.hung {
        eprintln!(
            "vmtest: {}: the guest crashed ({}); booting once more for the {} checks it did not reach",
            k.label,
            why.reason,
            missing.len()
        );
        let (again, stopped) = boot_once(k, userland, a, &missing, true)?;
        for i in missing {
            outcomes[i] = again[i].clone();
        }
        why = stopped;
    }
    let missing = if why.hung {
        format!("guest hung ({} s)", GUEST_TIMEOUT.as_secs())
    } else {
        format!("the guest stopped before this check: {}", why.reason)
    };
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Fail(missing.clone())))
        .collect())
}

/// Why a guest stopped before its last check.
struct Stopped {
    hung: bool,
    reason: String,
}

/// One boot running the checks `which`; `None` for a check it did not reach.
fn boot_once(
    k: &kernels::Kernel,
    userland: &Path,
    a: &Artifacts,
    which: &[usize],
    second: bool,
) -> Result<(Vec<Option<Outcome>>, Stopped)> {
    let dir = root().join("target/vmtest");
    let initrd = dir.join(format!("initrd-{}.cpio", k.label));
    let mut bytes = std::fs::read(userland)?;
    write_kernel_part(&mut bytes, k, a, which)?;
    std::fs::write(&initrd, bytes)?;
    // A second boot keeps the first one's log, which holds the crash.
    let rerun = if second { "-rerun" } else { "" };
    let log_path = dir.join("logs").join(format!("{}{rerun}.log", k.label));
    let mut log = std::fs::File::create(&log_path)?;
    let mut child = Command::new("qemu-system-x86_64")
        // 5-level paging (la57, which `max` offers) made a 6.12 guest
        // fault in its timer code once under TCG.
        // One host thread runs both vCPUs: with a thread per vCPU, a vCPU
        // kept running stale code after the kernel patched a static key
        // on the syscall path (a tracepoint's first attach or last
        // detach), and stuck there for good (soft lockups on 5.10 and 6.1
        // within seconds of the `attach` test; none in a minute this way).
        .args([
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max,la57=off",
            "-m",
            "2048",
            "-smp",
            "2",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", APPEND])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let pid = child.id() as i32;
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + GUEST_TIMEOUT;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            // SAFETY: probing our own child with signal 0.
            if unsafe { libc::kill(pid, 0) } != 0 {
                return false;
            }
        }
        // SAFETY: killing our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        true
    });
    let out = child.stdout.take().context("qemu stdout")?;
    let mut outcomes: Vec<Option<Outcome>> = vec![None; CHECKS.len()];
    let mut current: Option<(usize, String)> = None;
    let mut booted = false;
    let mut began = 0.0;
    // The console's last lines: when the guest stops early, the panic (and
    // what led to it) is in them, and CI shows only what is printed here.
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for line in BufReader::new(out).lines() {
        let line = line.unwrap_or_default();
        let line = line.trim_end_matches('\r').to_string();
        let _ = writeln!(log, "{line}");
        if let Some(rest) = line.strip_prefix("@@vmtest ready ") {
            booted = true;
            eprintln!("vmtest: {} booted: {rest}", k.label);
        } else if let Some(rest) = line.strip_prefix("@@vmtest begin ") {
            let mut it = rest.split_whitespace();
            current = it
                .next()
                .and_then(|i| i.parse().ok())
                .map(|i| (i, String::new()));
            began = it.next().and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("@@vmtest end ") {
            let mut it = rest.split_whitespace();
            let (i, rc) = (it.next(), it.next());
            let ended = it.next().and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0);
            if let (Some((ci, output)), Some(rc)) = (current.take(), rc) {
                if i.and_then(|i| i.parse::<usize>().ok()) == Some(ci) && ci < outcomes.len() {
                    let o = Outcome::judge(rc == "0", &output);
                    eprintln!(
                        "vmtest: {} {}: {} ({:.0} s)",
                        k.label,
                        CHECKS[ci].name,
                        o.cell(),
                        ended - began
                    );
                    outcomes[ci] = Some(o);
                }
            }
        } else if let Some((_, output)) = current.as_mut() {
            output.push_str(&line);
            output.push('\n');
        }
        if !line.trim().is_empty() {
            if tail.len() == 80 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let _ = child.wait();
    // Each initrd is the whole userland again: keep only the shared one.
    let _ = std::fs::remove_file(&initrd);
    let hung = watchdog.join().unwrap_or(false);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let last = crash_line(&tail);
    if !booted {
        bail!("the kernel did not reach /init: {} {}", last, err.trim());
    }
    let reached = which.iter().all(|&i| outcomes[i].is_some());
    if hung || !reached {
        eprintln!("vmtest: {}: the guest's last console lines:", k.label);
        for l in &tail {
            eprintln!("vmtest: {} | {l}", k.label);
        }
    }
    Ok((outcomes, Stopped { hung, reason: last }))
}

/// The line that says why a guest stopped: a panic, an oops, the OOM
/// killer, or else the last line it printed.
fn crash_line(tail: &std::collections::VecDeque<String>) -> String {
    const SIGNS: &[&str] = &[
        "Kernel panic",
        "Out of memory",
        "BUG:",
        "Oops",
        "general protection fault",
    ];
    tail.iter()
        .find(|l| SIGNS.iter().any(|s| l.contains(s)))
        .or(tail.back())
        .cloned()
        .unwrap_or_default()
}
