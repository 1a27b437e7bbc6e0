//! `cargo xtask vmtest`: the kernel matrix. Each of Debian's cloud kernels
//! (5.10, 6.1, 6.12, 6.18) boots under qemu (TCG; nested KVM hangs here)
//! with BPF-LSM on, from an initramfs that holds the host's own test
//! binaries, sensor and tools at their own paths, and runs the checks of
//! `checks::CHECKS`; the host's kernel is the last column. One table comes
//! out, kernel by check, and any failure fails the command. `kernels`
//! fetches the kernels, `initramfs` writes the guests' file system,
//! `guest` boots one and reads its checks back, `checks` says what is
//! checked and how an outcome is judged.
mod checks;
mod guest;
mod initramfs;
mod kernels;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

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
    "/usr/bin/printf",
    "/usr/bin/touch",
    "/usr/bin/setpriv",
    "/usr/bin/curl",
    "/usr/bin/python3",
    "/usr/bin/bash",
    "/usr/sbin/ip",
];

/// What the host built for the checks.
pub(crate) struct Artifacts {
    sensor: PathBuf,
    release_sensor: PathBuf,
    tests: BTreeMap<String, PathBuf>,
}

impl Artifacts {
    pub(crate) fn argv(&self, c: &checks::Check) -> Vec<String> {
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
    // `--check TEXT` (repeatable) runs only the checks whose names hold it.
    let wanted: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--check")
        .map(|w| w[1].as_str())
        .collect();
    let which: Vec<usize> = (0..CHECKS.len())
        .filter(|&i| wanted.is_empty() || wanted.iter().any(|w| CHECKS[i].name.contains(w)))
        .collect();
    if which.is_empty() {
        bail!("no check's name holds {wanted:?}");
    }
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
        ("binutils", "/usr/bin/objcopy"),
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
                guest::boot(&kernel, &userland, &artifacts, &which)
                    .or_else(|e| {
                        eprintln!("vmtest: {}: {e:#}; booting once more", spec.label);
                        guest::boot(&kernel, &userland, &artifacts, &which)
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
        columns.push((label, run_on_host(&artifacts, &which)?));
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

/// The cell of a check that `--check` left out.
pub(crate) const NOT_SELECTED: &str = "not selected (--check)";

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
        "sh", "mount", "mkdir", "chmod", "insmod", "hostname", "poweroff", "timeout", "cat",
        "echo", "grep",
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
    let stdlib = Path::new("/usr/lib").join(&version);
    c.add_host(&stdlib)?;
    // ctypes, for the syscall tests' calls through libc: its libffi.
    for e in std::fs::read_dir(stdlib.join("lib-dynload"))?.flatten() {
        if e.file_name().to_string_lossy().starts_with("_ctypes.") {
            c.add_libraries(&e.path())?;
        }
    }
    // The guests run the release sensor (what users run, and ten times
    // faster under emulation than a debug build) at the path the tests were
    // built with.
    c.add_program(&a.release_sensor)?;
    c.file_from(&a.sensor, &a.release_sensor)?;
    // CA certificates: the Kubernetes client loads them at start.
    c.add_host(Path::new("/etc/ssl"))?;
    // Only the test binaries a check runs, without their debug info: the
    // initramfs is unpacked into the guest's memory, and the whole debug
    // build of every target (680 MB) left a 2 GiB guest so little that a
    // 6.12 guest ran out of memory with nothing left to kill, and panicked.
    let stripped = path.with_extension("strip");
    for (name, t) in &a.tests {
        if !CHECKS
            .iter()
            .any(|c| matches!(c.run, checks::Run::Tests { target, .. } if target == name))
        {
            continue;
        }
        crate::run(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(t)
                .arg(&stripped),
        )?;
        c.file_from(t, &stripped)?;
        c.add_libraries(t)?;
    }
    let _ = std::fs::remove_file(&stripped);
    // Tests name shipped policies as `<crate>/../policies/...`.
    c.add_host(&root().join("policies"))?;
    c.dir(&root().join("sensor").display().to_string())?;
    c.finish()?.flush()?;
    Ok(())
}

/// The same checks on the host's own kernel.
fn run_on_host(a: &Artifacts, which: &[usize]) -> Result<Vec<Outcome>> {
    let mut v = Vec::new();
    for (i, c) in CHECKS.iter().enumerate() {
        if !which.contains(&i) {
            v.push(Outcome::Skip(NOT_SELECTED.into()));
            continue;
        }
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
