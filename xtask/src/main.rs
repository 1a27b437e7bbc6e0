//! `cargo xtask`: the project's build and test entry points.
//!
//! - `build-ebpf`: build the kernel programs (installing the toolchain first)
//! - `run`: build everything and run the sensor with the shipped policies
//! - `test`: lint, build and run every test
//! - `bench exec|connect`: fork+exec and connect cost with and without the sensor
//! - `vmtest`: the kernel matrix (Debian's 5.10 to 6.18 under qemu, and the host)
//! - `bench quarantine`: time from an offending exec to kernel isolation and label
//! - `bench reload`: time for a policy change to be in force, and the upgrade gap
//! - `image`: the daemon's OCI image archive under `target/`, checked
mod bench;
mod bench_memory;
mod bench_quarantine;
mod bench_reload;
mod ebpf;
mod fuzz;
mod image;
mod vmtest;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// Runs a command, failing with its command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Installs Debian packages that are missing (as root), or says which are.
pub fn ensure_packages(pkgs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .filter(|(_, probe)| !std::path::Path::new(probe).exists())
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing packages; install them with:\n  sudo apt-get update && sudo apt-get install -y {}", missing.join(" "));
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    // `cargo run` gave xtask its package's variables; a build script that
    // watches them (ring's does) would otherwise rebuild at every switch
    // between xtask's builds and the shell's.
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("CARGO_PKG_")
            || n.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&&*n)
        {
            c.env_remove(&name);
        }
    }
    c
}

fn build_sensor() -> Result<PathBuf> {
    ebpf::build()?;
    run(cargo().args(["build", "--release", "-p", "sensor"]))?;
    Ok(root().join("target/release/sensor"))
}

fn sensor_run() -> Result<()> {
    let sensor = build_sensor()?;
    let dir = root().join("target/sensor-events");
    std::fs::create_dir_all(&dir)?;
    let events = dir.join("events.json");
    eprintln!("xtask: JSON events go to {}", events.display());
    let mut cmd = Command::new(sensor);
    cmd.current_dir(root())
        .args(["run", "--output", "compact", "--export-file"])
        .arg(&events)
        .args(std::env::args().skip(2));
    // Replace this process so that Ctrl-C and SIGTERM reach the sensor.
    let err = std::os::unix::process::CommandExt::exec(&mut cmd);
    Err(err).context("starting the sensor")
}

fn test() -> Result<()> {
    ensure_packages(&[
        ("curl", "/usr/bin/curl"),
        ("util-linux", "/usr/bin/setpriv"),
        // The gRPC test's client, generated from the protos in Python.
        ("protobuf-compiler", "/usr/bin/protoc"),
        ("protobuf-compiler-grpc", "/usr/bin/grpc_python_plugin"),
        ("python3-grpcio", "/usr/lib/python3/dist-packages/grpc"),
        (
            "python3-protobuf",
            "/usr/lib/python3/dist-packages/google/protobuf",
        ),
    ])?;
    ebpf::build()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    if !is_root() {
        eprintln!("xtask: not root: tests that load eBPF programs will report SKIP");
    }
    let mut counts = cargo_test()?;
    // The parsers of what comes from outside, fuzzed for a bounded time.
    counts.add(fuzz::fuzz(fuzz::TEST_SECONDS)?);
    // The image: built, unpacked as a runtime would, run chrooted.
    if is_root() {
        match build_sensor()
            .and_then(|s| image::build(&s))
            .and_then(|a| image::check(&a))
        {
            Ok(()) => counts.passed += 1,
            Err(e) => {
                eprintln!("xtask: FAIL image: {e:#}");
                counts.failed += 1;
            }
        }
    } else {
        eprintln!("SKIP image: chroot and unshare need root");
        counts.skipped += 1;
    }
    // The kernel matrix runs the end-to-end checks on every kernel users
    // have; its cells count in the closing line like tests.
    let matrix = if is_root() {
        vmtest::run(&[])
    } else {
        eprintln!("xtask: not root: the kernel matrix (cargo xtask vmtest) needs root");
        Ok(vmtest::Counts::default())
    };
    let matrix_error = match matrix {
        Ok(m) => {
            counts.add(m);
            None
        }
        Err(e) => Some(e),
    };
    println!(
        "{} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.skipped
    );
    if let Some(e) = matrix_error {
        return Err(e);
    }
    if counts.failed > 0 {
        bail!("{} tests failed", counts.failed);
    }
    if is_root() && counts.env_skips > 0 {
        bail!(
            "{} end-to-end tests skipped as root on a supported kernel (see SKIP lines): a skip here hides a broken test setup",
            counts.env_skips
        );
    }
    Ok(())
}

/// Runs `cargo test`, passing its output through, and counts over every
/// test binary (cargo's own last line is that of the last binary). A test
/// that returns early because it cannot run says `SKIP <test>: <why>` on
/// stderr; it counts as skipped, not passed. `why` starting with "kernel
/// lacks" is this kernel's limit (the matrix runs that test where the
/// feature exists); any other reason is the environment's.
fn cargo_test() -> Result<vmtest::Counts> {
    use std::io::{BufRead, BufReader};
    let mut child = cargo()
        .args(["test", "--no-fail-fast"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let err = child.stderr.take().context("cargo test stderr")?;
    let skips = std::thread::spawn(move || {
        let (mut env, mut kernel) = (0u64, 0u64);
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if let Some((_, rest)) = line.split_once("SKIP ") {
                let why = rest.split_once(": ").map_or(rest, |(_, w)| w);
                if why.starts_with("kernel lacks") {
                    kernel += 1;
                } else {
                    env += 1;
                }
            }
        }
        (env, kernel)
    });
    let mut c = vmtest::Counts::default();
    let out = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(out).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |what: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(what)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            c.passed += count("passed");
            c.failed += count("failed");
            c.skipped += count("ignored");
        }
    }
    let status = child.wait()?;
    let (env, kernel) = skips.join().unwrap_or((0, 0));
    c.passed = c.passed.saturating_sub(env + kernel);
    c.skipped += env + kernel;
    c.env_skips = env;
    if !status.success() && c.failed == 0 {
        c.failed += 1;
        eprintln!("xtask: cargo test failed without a failing test: {status}");
    }
    Ok(c)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build-ebpf") => ebpf::build(),
        Some("run") => sensor_run(),
        Some("test") => test(),
        Some("bench") if args.get(1).map(String::as_str) == Some("reload") => {
            let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
            build_sensor().and_then(|s| bench_reload::run(&s, n))
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("quarantine") => {
            let n = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(200);
            build_sensor().and_then(|s| bench_quarantine::run(&s, n, false))
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("flood") => {
            let n = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(50);
            build_sensor().and_then(|s| bench_quarantine::run(&s, n, true))
        }
        Some("bench-flood") => bench_quarantine::flood(),
        Some("bench") if args.get(1).map(String::as_str) == Some("memory") => {
            let n = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(50_000);
            build_sensor().and_then(|s| bench_memory::run(&s, n))
        }
        Some("bench") => build_sensor().and_then(|s| bench::main(&s, &args[1..])),
        Some("vmtest") => vmtest::main(&args[1..]),
        Some("fuzz") => fuzz::main(&args[1..]),
        Some("image") => image::main(),
        Some("bench-probe") => {
            bench_quarantine::probe(args.get(1).map(String::as_str).unwrap_or("0"))
        }
        _ => {
            eprintln!("usage: cargo xtask build-ebpf | run [SENSOR RUN ARGS] | test | bench exec|connect [--pairs N] [--ops N] | bench quarantine [N] | bench reload [N] | bench memory [N] | bench flood [N] | fuzz [SECONDS] | vmtest [--kernel 5.10|6.1|6.12|6.18]... [--check TEXT]... [--no-host]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
