//! `cargo xtask bench memory [N]`: the daemon's memory with N live
//! processes (50,000 by default): its resident set before and after they
//! start, per process, and the kernel maps' memory beside it (what the
//! kernel charges the daemon's map fds, `memlock` in their fdinfo).
//! `kernel.pid_max` is raised for the run and restored after.
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::bench;
use crate::root;

/// Where the issue puts the ceiling for 50,000 live processes.
const TARGET_MIB: f64 = 64.0;

pub fn run(sensor: &Path, n: usize) -> Result<()> {
    let _pid_max = PidMax::raise(n as u64 * 2 + 65_536)?;
    let events = root().join("target/bench-memory-events.json");
    let policies = [
        "--policy-dir".to_string(),
        root().join("policies").display().to_string(),
        "--pod-cidr".into(),
        "10.244.0.0/16".into(),
        "--service-cidr".into(),
        "10.96.0.0/12".into(),
    ];
    let d = bench::start(sensor, &policies, &events)?;
    let pid = d.pid();
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kib(pid)?;
    let maps = map_memlock(pid);
    let started = Instant::now();
    let mut sleepers = Sleepers(Vec::with_capacity(n));
    for i in 0..n {
        let c = Command::new("/bin/busybox")
            .args(["sleep", "3600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting sleeper {i}"))?;
        sleepers.0.push(c);
    }
    println!(
        "bench memory: {n} processes started in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The daemon has taken them in once its RSS stops growing.
    let mut last = rss_kib(pid)?;
    for _ in 0..60 {
        std::thread::sleep(Duration::from_secs(2));
        let now = rss_kib(pid)?;
        if now <= last + last / 200 {
            last = now;
            break;
        }
        last = now;
    }
    let with = last;
    let mapped = mapped_maps_kib(pid);
    let maps_with = map_memlock(pid);
    drop(sleepers);
    let (stats, _) = bench::stop(d)?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let own = with.saturating_sub(mapped);
    let verdict = |mib: f64| if mib <= TARGET_MIB { "met" } else { "NOT met" };
    println!(
        "bench memory: daemon RSS {:.1} MiB before, {:.1} MiB with {n} live processes ({:.2} KB a process); the target of at most {TARGET_MIB} MiB: {}",
        mib(before),
        mib(with),
        (with.saturating_sub(before)) as f64 * 1.024 / n as f64,
        verdict(mib(with)),
    );
    println!(
        "bench memory: of which {:.1} MiB are bpf maps mapped in (the ring buffer, counted with the maps below); the rest, the daemon's own, {:.1} MiB",
        mib(mapped),
        mib(own),
    );
    println!(
        "bench memory: kernel maps {:.1} MiB before, {:.1} MiB after (memlock of the daemon's map fds)",
        mib(maps / 1024),
        mib(maps_with / 1024)
    );
    println!("bench memory: {stats}");
    Ok(())
}

/// The sleepers, killed and reaped however the bench ends.
struct Sleepers(Vec<Child>);

impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// `kernel.pid_max` raised to at least a value, restored on drop.
struct PidMax(Option<String>);

const PID_MAX: &str = "/proc/sys/kernel/pid_max";

impl PidMax {
    fn raise(at_least: u64) -> Result<PidMax> {
        let was = std::fs::read_to_string(PID_MAX).context(PID_MAX)?;
        let now: u64 = was.trim().parse().context("pid_max")?;
        if now >= at_least {
            return Ok(PidMax(None));
        }
        std::fs::write(PID_MAX, at_least.to_string()).context("raising pid_max")?;
        Ok(PidMax(Some(was)))
    }
}

impl Drop for PidMax {
    fn drop(&mut self) {
        if let Some(was) = &self.0 {
            if let Err(e) = std::fs::write(PID_MAX, was.trim()) {
                eprintln!("bench memory: restoring pid_max to {}: {e}", was.trim());
            }
        }
    }
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// KiB of `pid`'s resident set that are bpf maps mapped into it (the ring
/// buffer): kernel memory, already in the maps' memlock.
fn mapped_maps_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut in_map = false;
    let mut total = 0;
    for l in smaps.lines() {
        if l.split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            in_map = l.ends_with("anon_inode:bpf-map");
        } else if let Some(v) = l.strip_prefix("Rss:").filter(|_| in_map) {
            total += v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    total
}

/// Bytes the kernel charges for the bpf maps `pid` holds (each map once).
fn map_memlock(pid: u32) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let value = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(bytes)) = (value("map_id:"), value("memlock:")) {
            if seen.insert(id) {
                total += bytes;
            }
        }
    }
    total
}
