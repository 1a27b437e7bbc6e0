//! `cargo xtask bench reload [N]`: how fast a policy change is in force, and
//! whether an upgrade leaves a gap, over N runs (100 by default).
//!
//! - add: `sensor policy add` of a Sigkill policy, then the policy's binary
//!   is exec'd at once, in the bench's cgroup. Reported: the command's
//!   round trip, and the time from its return to the first exec that dies
//!   (the first exec after the return must die, or the run counts as a miss).
//!   The policy is deleted between runs.
//! - upgrade: a prober execs the blocked binary in a tight loop while
//!   daemons of two alternating build ids replace each other's pinned set
//!   N times (each stopped with --keep-on-exit, as a rolling update does).
//!   Reported: the execs that survived (must be 0) out of all the prober
//!   made, and each swap's time from start to ready.
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const BPF_DIR: &str = "/sys/fs/bpf/sensor-bench-reload";

/// A cgroup of the bench's own; every policy is scoped to it.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new() -> Result<Cgroup> {
        let root = sensor::daemon::cgroup2_root().context("no cgroup2 mount")?;
        let p = root.join(format!("sensor-bench-reload-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(Cgroup(p))
    }

    /// `program` started inside the cgroup.
    fn command(&self, program: &str) -> Command {
        let procs = std::ffi::CString::new(
            self.0
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("no NUL in a cgroup path");
        let mut c = Command::new(program);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        c
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

struct Daemon(Child);

impl Daemon {
    fn start(sensor: &Path, args: &[&str], build_id: &str) -> Result<(Daemon, Duration)> {
        let started = Instant::now();
        let mut child = Command::new(sensor)
            .args(["run", "--output", "none", "--bpf-dir", BPF_DIR])
            // Two daemons overlap during an upgrade: no fixed port.
            .args(["--health-server-address", ""])
            .args(args)
            .env("SENSOR_BUILD_ID", build_id)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let err = child.stderr.take().context("stderr")?;
        let mut lines = BufReader::new(err).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("sensor ready") => break,
                Some(Ok(_)) => {}
                _ => bail!("the sensor stopped before it was ready: {:?}", child.wait()),
            }
        }
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok((Daemon(child), started.elapsed()))
    }

    fn stop(mut self) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        self.0.wait()?;
        Ok(())
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn show(name: &str, v: &mut [Duration]) {
    println!(
        "{name}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(v, 0.5).as_secs_f64() * 1e3,
        percentile(v, 0.99).as_secs_f64() * 1e3,
        percentile(v, 1.0).as_secs_f64() * 1e3,
    );
}

fn exit_code(cg: &Cgroup, bin: &str) -> Result<i32> {
    let st = cg.command(bin).status()?;
    Ok(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)))
}

pub fn run(sensor: &Path, n: usize) -> Result<()> {
    if !crate::is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    let _ = Command::new(sensor)
        .args(["unload", "--bpf-dir", BPF_DIR])
        .output();
    let dir = std::env::temp_dir().join(format!("sensor-bench-reload-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("policies"))?;
    let result = bench(sensor, n, &dir);
    let _ = Command::new(sensor)
        .args(["unload", "--bpf-dir", BPF_DIR])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(sensor: &Path, n: usize, dir: &Path) -> Result<()> {
    let cg = Cgroup::new()?;
    let scope = cg.0.to_string_lossy().into_owned();
    let bin = dir.join("blocked");
    std::fs::copy("/bin/true", &bin)?;
    let bin = bin.to_string_lossy().into_owned();
    let policy = dir.join("kill.yaml");
    std::fs::write(
        &policy,
        format!("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {{name: bench-reload}}\nspec:\n  tracepoints:\n  - subsystem: sched\n    event: sched_process_exec\n    selectors:\n    - matchBinaries: [{{operator: In, values: [\"{bin}\"]}}]\n      matchActions: [{{action: Sigkill}}]\n"),
    )?;
    let socket = format!("unix://{}", dir.join("api.sock").display());
    let policies = dir.join("policies").to_string_lossy().into_owned();

    // Policy add, N times.
    let (daemon, _) = Daemon::start(
        sensor,
        &[
            "--policy-dir",
            &policies,
            "--enforce-cgroup",
            &scope,
            "--server-address",
            &socket,
        ],
        "bench-a",
    )?;
    let (mut calls, mut to_kill, mut misses) = (Vec::new(), Vec::new(), 0);
    for _ in 0..n {
        let t0 = Instant::now();
        let out = Command::new(sensor)
            .args(["policy", "add"])
            .arg(&policy)
            .args(["--server-address", &socket])
            .output()?;
        let t1 = Instant::now();
        if !out.status.success() {
            bail!("policy add: {}", String::from_utf8_lossy(&out.stderr));
        }
        calls.push(t1 - t0);
        let mut first = true;
        loop {
            if exit_code(&cg, &bin)? == 137 {
                to_kill.push(t1.elapsed());
                break;
            }
            if first {
                misses += 1;
                first = false;
            }
            if t1.elapsed() > Duration::from_secs(5) {
                bail!("the added policy did not kill within 5 s");
            }
        }
        let out = Command::new(sensor)
            .args([
                "policy",
                "delete",
                "bench-reload",
                "--server-address",
                &socket,
            ])
            .output()?;
        if !out.status.success() || exit_code(&cg, &bin)? != 0 {
            bail!("policy delete did not take effect");
        }
    }
    daemon.stop()?;
    let _ = Command::new(sensor)
        .args(["unload", "--bpf-dir", BPF_DIR])
        .output();
    println!("policy add, {n} runs:");
    show("  `sensor policy add` round trip", &mut calls);
    show("  add returned -> first exec killed", &mut to_kill);
    println!("  first exec after the return not killed: {misses} of {n}");

    // Upgrades, N times, under a prober.
    let keep = [
        "--policy",
        policy.to_str().context("utf-8 path")?,
        "--enforce-cgroup",
        &scope,
        "--server-address",
        "",
        "--keep-on-exit",
    ];
    let (first, _) = Daemon::start(sensor, &keep, "bench-a")?;
    first.stop()?;
    let codes = dir.join("codes");
    let stop = dir.join("stop");
    let mut prober = cg
        .command("/bin/sh")
        .args([
            "-c",
            &format!(
                "while [ ! -e '{}' ]; do '{bin}'; echo $?; done > '{}' 2>/dev/null",
                stop.display(),
                codes.display()
            ),
        ])
        .spawn()?;
    let mut swaps = Vec::new();
    for i in 0..n {
        let id = if i % 2 == 0 { "bench-b" } else { "bench-a" };
        let (d, took) = Daemon::start(sensor, &keep, id)?;
        swaps.push(took);
        d.stop()?;
    }
    std::fs::write(&stop, "")?;
    prober.wait()?;
    let text = std::fs::read_to_string(&codes)?;
    let killed = text.lines().filter(|l| *l == "137").count();
    let survived = text.lines().filter(|l| *l != "137").count();
    println!("upgrade swaps, {n} runs:");
    show(
        "  start to ready (load, write, attach, pin, unpin the old set)",
        &mut swaps,
    );
    println!("  prober execs during the swaps: {killed} killed, {survived} survived");
    if survived > 0 {
        bail!("{survived} execs of the blocked binary survived a swap");
    }
    Ok(())
}
