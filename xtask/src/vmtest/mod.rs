//! `cargo xtask vmtest`: the kernel matrix. Each of Debian's cloud kernels
//! (5.10, 6.1, 6.12, 6.18) boots under qemu (TCG; nested KVM hangs here)
//! with BPF-LSM on, from an initramfs that holds the host's own test
//! binaries, sensor and tools at their own paths, and runs the checks of
//! `checks::CHECKS`; the host's kernel is the last column. One table comes
//! out, kernel by check, and any failure fails the command.
mod checks;
mod initramfs;
mod kernels;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use checks::{Outcome, CHECKS};
use initramfs::Cpio;

use crate::{cargo, ensure_packages, is_root, root};

/// Programs the checks start, added to the guest with their libraries.
const GUEST_PROGRAMS: &[&str] = &[
    "/bin/sh",
    "/bin/echo",
    "/bin/sleep",
    "/bin/true",
    "/usr/bin/env",
    "/usr/bin/touch",
    "/usr/bin/setpriv",
    "/usr/bin/curl",
    "/usr/bin/python3",
    "/usr/sbin/ip",
];

/// Kernel modules the checks need (the test pods' veth pairs).
const GUEST_MODULES: &[&str] = &["veth"];

/// The command line the guests boot with: BPF-LSM on, quiet console.
const APPEND: &str = "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=3 \
                      lsm=lockdown,capability,landlock,yama,bpf";

/// Longest a guest may run before it counts as hung.
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// What the host built for the checks.
struct Artifacts {
    sensor: PathBuf,
    release_sensor: PathBuf,
    tests: BTreeMap<String, PathBuf>,
}

impl Artifacts {
    fn argv(&self, c: &checks::Check) -> Vec<String> {
        c.argv(&self.sensor, |t| {
            self.tests.get(t).map(|p| p.display().to_string())
        })
    }
}

/// Cells of the table, for the test command's closing line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Skips for a reason other than a kernel feature.
    pub env_skips: u64,
}

impl Counts {
    pub fn add(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.skipped += o.skipped;
        self.env_skips += o.env_skips;
    }
}

/// `cargo xtask vmtest`: fails when any check failed.
pub fn main(args: &[String]) -> Result<()> {
    let counts = run(args)?;
    if counts.failed > 0 {
        bail!("{} checks failed in the kernel matrix", counts.failed);
    }
    Ok(())
}

/// Runs the matrix and prints its table; an error only when the matrix
/// itself could not run.
pub fn run(args: &[String]) -> Result<Counts> {
    let only: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--kernel")
        .map(|w| w[1].as_str())
        .collect();
    let host = !args.iter().any(|a| a == "--no-host");
    if !is_root() {
        bail!("vmtest needs root (qemu's guests load eBPF as root, and so does the host column)");
    }
    ensure_packages(&[
        ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
        ("busybox-static", "/bin/busybox"),
        ("python3", "/usr/bin/python3"),
        ("curl", "/usr/bin/curl"),
        ("iproute2", "/usr/sbin/ip"),
        ("util-linux", "/usr/bin/setpriv"),
        ("xz-utils", "/usr/bin/xz"),
    ])?;
    crate::ebpf::build()?;
    let artifacts = build_tests()?;
    let started = Instant::now();
    let dir = root().join("target/vmtest");
    std::fs::create_dir_all(dir.join("logs"))?;
    let userland = dir.join("userland.cpio");
    write_userland(&userland, &artifacts)?;

    let mut columns: Vec<(String, Vec<Outcome>)> = Vec::new();
    for spec in kernels::MATRIX
        .iter()
        .filter(|k| only.is_empty() || only.contains(&k.label))
    {
        let t = Instant::now();
        let outcomes = match kernels::fetch(spec) {
            Ok(kernel) => {
                eprintln!("vmtest: booting {}", kernel.release);
                // Emulation is not flawless: a guest that died before /init
                // gets one more boot, and the log says so.
                boot(&kernel, &userland, &artifacts)
                    .or_else(|e| {
                        eprintln!("vmtest: {}: {e:#}; booting once more", spec.label);
                        boot(&kernel, &userland, &artifacts)
                    })
                    .unwrap_or_else(|e| all(Outcome::Fail(format!("{e:#}"))))
            }
            Err(e) => all(Outcome::Fail(format!("fetching the kernel: {e:#}"))),
        };
        eprintln!(
            "vmtest: {} done in {:.0} s",
            spec.label,
            t.elapsed().as_secs_f64()
        );
        columns.push((spec.label.to_string(), outcomes));
    }
    if host {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let label = format!("host {}", release.trim().split('-').next().unwrap_or("?"));
        columns.push((label, run_on_host(&artifacts)?));
    }
    let counts = print_table(&columns);
    println!(
        "vmtest: {} kernels in {:.0} s; guest logs in {}",
        columns.len(),
        started.elapsed().as_secs_f64(),
        dir.join("logs").display()
    );
    Ok(counts)
}

fn all(o: Outcome) -> Vec<Outcome> {
    CHECKS.iter().map(|_| o.clone()).collect()
}

/// Builds the test binaries; returns them by target name.
fn build_tests() -> Result<Artifacts> {
    crate::run(cargo().args(["build", "-p", "sensor"]))?;
    crate::run(cargo().args(["build", "--release", "-p", "sensor"]))?;
    let out = cargo()
        .args(["test", "--no-run", "-p", "sensor", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests failed");
    }
    let mut tests = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["target"]["kind"][0] != "test" {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            tests.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    Ok(Artifacts {
        sensor: root().join("target/debug/sensor"),
        release_sensor: root().join("target/release/sensor"),
        tests,
    })
}

/// The part of the initramfs every kernel shares.
fn write_userland(path: &Path, a: &Artifacts) -> Result<()> {
    let file = std::fs::File::create(path)?;
    let mut c = Cpio::new(std::io::BufWriter::new(file));
    for d in [
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/run",
        "/root",
        "/vmtest/bin",
    ] {
        c.dir(d)?;
    }
    c.symlink("/var/run", "/run")?;
    c.add_program(Path::new("/bin/busybox"))?;
    for applet in [
        "sh", "mount", "mkdir", "chmod", "insmod", "hostname", "poweroff", "timeout", "cat", "echo",
    ] {
        c.symlink(&format!("/vmtest/bin/{applet}"), "/bin/busybox")?;
    }
    for p in GUEST_PROGRAMS {
        c.add_program(Path::new(p))?;
    }
    // python3's standard library, for the tests' HTTP servers and clients.
    let python = std::fs::canonicalize("/usr/bin/python3")?;
    let version = python
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    c.add_host(&Path::new("/usr/lib").join(&version))?;
    // The guests run the release sensor (what users run, and ten times
    // faster under emulation than a debug build) at the path the tests were
    // built with.
    c.add_program(&a.release_sensor)?;
    c.file_from(&a.sensor, &a.release_sensor)?;
    // CA certificates: the Kubernetes client loads them at start.
    c.add_host(Path::new("/etc/ssl"))?;
    for t in a.tests.values() {
        c.add_program(t)?;
    }
    // Tests name shipped policies as `<crate>/../policies/...`.
    c.add_host(&root().join("policies"))?;
    c.dir(&root().join("sensor").display().to_string())?;
    c.finish()?.flush()?;
    Ok(())
}

/// The guest's /init: mounts, modules, then every check between markers.
/// The root is already in memory and writable: no tmpfs goes over /tmp or
/// /run, which would hide a checkout that lives there.
fn init_script(modules: &[String], a: &Artifacts) -> String {
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
    s.push_str("echo \"@@vmtest ready $(cat /proc/sys/kernel/osrelease) lsm=$(cat /sys/kernel/security/lsm)\"\n");
    for (i, c) in CHECKS.iter().enumerate() {
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
fn write_kernel_part(out: &mut Vec<u8>, k: &kernels::Kernel, a: &Artifacts) -> Result<()> {
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
    c.file("/init", 0o755, init_script(&loaded, a).as_bytes())?;
    c.finish()?;
    Ok(())
}

/// Boots `k` and returns each check's outcome.
fn boot(k: &kernels::Kernel, userland: &Path, a: &Artifacts) -> Result<Vec<Outcome>> {
    let dir = root().join("target/vmtest");
    let initrd = dir.join(format!("initrd-{}.cpio", k.label));
    let mut bytes = std::fs::read(userland)?;
    write_kernel_part(&mut bytes, k, a)?;
    std::fs::write(&initrd, bytes)?;
    let log_path = dir.join("logs").join(format!("{}.log", k.label));
    let mut log = std::fs::File::create(&log_path)?;
    let mut child = Command::new("qemu-system-x86_64")
        // 5-level paging (la57, which `max` offers) made a 6.12 guest
        // fault in its timer code once under TCG.
        .args([
            "-accel",
            "tcg",
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
    let mut last = String::new();
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
            last = line;
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
    if !booted {
        bail!("the kernel did not reach /init: {} {}", last, err.trim());
    }
    let missing = if hung {
        format!("guest hung ({} s)", GUEST_TIMEOUT.as_secs())
    } else {
        format!("the guest stopped before this check: {last}")
    };
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Fail(missing.clone())))
        .collect())
}

/// The same checks on the host's own kernel.
fn run_on_host(a: &Artifacts) -> Result<Vec<Outcome>> {
    let mut v = Vec::new();
    for c in CHECKS {
        let argv = a.argv(c);
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(root())
            .output()
            .with_context(|| format!("running {}", argv[0]))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let o = Outcome::judge(out.status.success(), &text);
        if let Outcome::Fail(_) = o {
            let log = root().join("target/vmtest/logs/host.log");
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .and_then(|mut f| writeln!(f, "== {}\n{text}", c.name));
        }
        eprintln!("vmtest: host {}: {}", c.name, o.cell());
        v.push(o);
    }
    Ok(v)
}

/// Prints the table and the reasons under it; returns the cells' counts.
fn print_table(columns: &[(String, Vec<Outcome>)]) -> Counts {
    let w = CHECKS.iter().map(|c| c.name.len()).max().unwrap_or(10);
    let cw = columns
        .iter()
        .map(|(l, _)| l.len())
        .max()
        .unwrap_or(4)
        .max(6);
    let mut head = format!("| {:w$} |", "check");
    let mut rule = format!("|{}|", "-".repeat(w + 2));
    for (label, _) in columns {
        head.push_str(&format!(" {label:^cw$} |"));
        rule.push_str(&format!("{}|", "-".repeat(cw + 2)));
    }
    println!("{head}\n{rule}");
    let mut notes = Vec::new();
    let mut counts = Counts::default();
    for (i, c) in CHECKS.iter().enumerate() {
        let mut row = format!("| {:w$} |", c.name);
        for (label, outcomes) in columns {
            let o = &outcomes[i];
            row.push_str(&format!(" {:^cw$} |", o.cell()));
            match o {
                Outcome::Fail(why) => {
                    counts.failed += 1;
                    notes.push(format!("FAIL {label} / {}: {why}", c.name));
                }
                Outcome::Skip(why) => {
                    counts.skipped += 1;
                    notes.push(format!("skip {label} / {}: {why}", c.name));
                }
                Outcome::Pass => counts.passed += 1,
            }
        }
        println!("{row}");
    }
    for n in notes {
        println!("{n}");
    }
    counts
}
