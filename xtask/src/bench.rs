//! `cargo xtask bench exec|connect`: the cost of the sensor, measured as the
//! ratio of a workload's time with the running daemon (JSON export to a file,
//! policies loaded) to its time without, in alternating pairs within one
//! invocation.
//!
//! - exec: fork+exec of /bin/true, with the shipped reflex policy
//! - connect: TCP connects to a loopback listener, with every shipped policy
//!   loaded (brain rules included; test CIDRs for the egress policy, which
//!   lets loopback through) and connect policies that match none of them;
//!   the connects need no record, and the connect program's nanoseconds per
//!   run are what such a connect costs
//! - syscall: `getppid()` in a tight loop, with the shipped policies and a
//!   syscall policy on another syscall (`setuid`), so that the `sys_enter`
//!   program runs for every call and finds nothing to do: what every
//!   syscall on the node pays once a syscall policy is loaded
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::root;

struct Options {
    pairs: usize,
    /// Program statistics on (the default); `--no-stats` measures without
    /// their cost, and cannot count program runs.
    stats: bool,
    /// Operations per run; the workload's default when absent.
    ops: Option<usize>,
}

fn options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        pairs: 5,
        ops: None,
        stats: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = || -> Result<usize> {
            it.next()
                .context("missing value")?
                .parse()
                .context("not a number")
        };
        match a.as_str() {
            "--pairs" => o.pairs = num()?,
            "--ops" => o.ops = Some(num()?),
            "--no-stats" => o.stats = false,
            other => bail!("unknown bench option {other}"),
        }
    }
    Ok(o)
}

/// fork+exec of /bin/true, `n` times, one after another.
fn workload(n: usize) -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..n {
        let s = Command::new("/bin/true").status()?;
        if !s.success() {
            bail!("/bin/true failed: {s}");
        }
    }
    Ok(start.elapsed())
}

pub struct Daemon {
    child: Child,
    log: std::sync::mpsc::Receiver<String>,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// TCP connects to a loopback listener, `n` times; the server closes first so
/// that TIME_WAIT stays on its side and client ports do not run out.
fn connects(n: usize) -> Result<Duration> {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || {
        for _ in 0..n {
            if listener.accept().is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut buf = [0u8; 1];
    for _ in 0..n {
        let mut s = std::net::TcpStream::connect(addr)?;
        let _ = s.read(&mut buf);
    }
    let elapsed = start.elapsed();
    server
        .join()
        .map_err(|_| anyhow::anyhow!("listener thread panicked"))?;
    Ok(elapsed)
}

/// `getppid()` `n` times: the cheapest syscall there is, so the share of
/// the `sys_enter` program shows.
fn syscalls(n: usize) -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: getppid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    Ok(start.elapsed())
}

/// 64-byte `write()`s on a connected loopback TCP socket, `n` times, a
/// reader draining the other end: every one is a send a `tcp_sendmsg`
/// hook resolves.
fn sends(n: usize) -> Result<Duration> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || {
        if let Ok((mut c, _)) = listener.accept() {
            let mut buf = [0u8; 65536];
            while matches!(c.read(&mut buf), Ok(k) if k > 0) {}
        }
    });
    let mut s = std::net::TcpStream::connect(addr)?;
    let msg = [0u8; 64];
    let start = Instant::now();
    for _ in 0..n {
        s.write_all(&msg)?;
    }
    let elapsed = start.elapsed();
    drop(s);
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
    Ok(elapsed)
}

/// `n` 64-byte datagrams on a connected loopback UDP socket, each read
/// by a receiver thread (so each is one packet out and one in).
fn datagrams(n: usize) -> Result<Duration> {
    let rx = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let addr = rx.local_addr()?;
    rx.set_read_timeout(Some(Duration::from_secs(2)))?;
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while rx.recv(&mut buf).is_ok() {}
    });
    let tx = std::net::UdpSocket::bind("127.0.0.1:0")?;
    tx.connect(addr)?;
    let msg = [0u8; 64];
    let start = Instant::now();
    for _ in 0..n {
        // A full receive queue drops datagrams; the send still ran both
        // programs' hooks on the way out, and the receiver keeps up.
        tx.send(&msg)?;
    }
    let elapsed = start.elapsed();
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
    Ok(elapsed)
}

/// A packet policy on both directions that matches nothing the benchmark
/// sends (port 1), so that every packet is evaluated and none posts.
const PACKET_POLICY: &str = "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: bench-packet}
spec:
  kprobes:
  - call: __cgroup_bpf_run_filter_skb
    syscall: false
    args: [{index: 0, type: sock}, {index: 1, type: skb}, {index: 2, type: int}]
    selectors:
    - matchArgs: [{index: 1, operator: DPort, values: [\"1\"]}]
";

/// A `tcp_sendmsg` policy that matches nothing the benchmark sends (port
/// 1), so that every send is resolved and evaluated and none posts.
const SEND_POLICY: &str = "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: bench-send}
spec:
  kprobes:
  - call: tcp_sendmsg
    syscall: false
    args: [{index: 0, type: sock}, {index: 2, type: int}]
    selectors:
    - matchArgs: [{index: 0, operator: DPort, values: [\"1\"]}]
";

/// A syscall policy on a syscall the benchmark never makes.
const SYSCALL_POLICY: &str = "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: bench-syscall}
spec:
  kprobes:
  - call: sys_setuid
    syscall: true
    args: [{index: 0, type: int}]
";

/// Connect policies that match nothing the benchmark does (TEST-NET-1 and
/// port 1), so that every connect is evaluated and none is acted on.
const CONNECT_POLICY: &str = "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: bench-connect}
spec:
  kprobes:
  - call: tcp_connect
    syscall: false
    args: [{index: 0, type: sock}]
    selectors:
    - matchArgs: [{index: 0, operator: DAddr, values: [192.0.2.0/24]}]
      matchActions: [{action: Sigkill}]
    - matchArgs: [{index: 0, operator: DPort, values: [\"1\"]}]
      matchActions: [{action: Override, argError: -1}]
";

pub fn start(sensor: &Path, policies: &[String], events: &Path) -> Result<Daemon> {
    start_with(sensor, policies, events, true)
}

/// `stats`: the kernel times each program run (`--program-stats`), which
/// costs two clock reads a run.
fn start_with(sensor: &Path, policies: &[String], events: &Path, stats: bool) -> Result<Daemon> {
    let _ = std::fs::remove_file(events);
    let mut child = Command::new(sensor)
        .current_dir(root())
        .args(["run", "--output", "none", "--health-server-address", ""])
        .args(stats.then_some("--program-stats"))
        .args(policies)
        // Pins of the bench's own, removed when it stops (no --keep-on-exit).
        .args([
            "--bpf-dir",
            "/sys/fs/bpf/sensor-bench",
            "--server-address",
            "",
        ])
        .arg("--export-file")
        .arg(events)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let err = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .context("sensor did not start")?;
        if line.contains("sensor ready") {
            return Ok(Daemon { child, log: rx });
        }
    }
}

/// Stops the daemon; returns its `stats=` summary (`records=.. lost=..`) and
/// its per-program lines (`program=.. runs=.. ns_per_run=..`).
pub fn stop(mut d: Daemon) -> Result<(String, Vec<String>)> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    d.child.wait()?;
    let lines: Vec<String> = d.log.try_iter().collect();
    let programs = lines
        .iter()
        .filter(|l| l.contains("program stats"))
        .cloned()
        .collect();
    let stop = lines
        .into_iter()
        .find(|l| l.contains("sensor stopped"))
        .context("no stop line")?;
    Ok((stop, programs))
}

/// The number after `key=` in a log line (0 when absent).
fn field(line: &str, key: &str) -> u64 {
    let pat = format!("{key}=");
    line.match_indices(&pat)
        .find(|(i, _)| {
            *i == 0
                || !line.as_bytes()[i - 1].is_ascii_alphanumeric() && line.as_bytes()[i - 1] != b'_'
        })
        .and_then(|(i, _)| {
            let digits: String = line[i + pat.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .unwrap_or(0)
}

/// Runs of the kernel programs whose names start with `prefix` (each
/// form of it), from the daemon's program lines.
fn runs_of(programs: &[String], prefix: &str) -> u64 {
    programs
        .iter()
        .filter(|p| {
            p.contains(&format!("program={prefix}")) || p.contains(&format!("program=\"{prefix}"))
        })
        .map(|p| field(p, "runs"))
        .sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn main(sensor: &Path, args: &[String]) -> Result<()> {
    let o = options(args.get(1..).unwrap_or_default())?;
    if !crate::is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    match args.first().map(String::as_str) {
        Some("exec") => compare(
            sensor,
            &[
                "--policy".into(),
                root().join("policies/reflex.yaml").display().to_string(),
            ],
            &o,
            &Workload {
                name: "fork+exec of /bin/true",
                ops: o.ops.unwrap_or(2000),
                run: workload,
                seen: ("process_exec", |stats, _| field(stats, "process_exec")),
            },
        ),
        Some("connect") => {
            let policy = root().join("target/bench-connect-policy.yaml");
            std::fs::write(&policy, CONNECT_POLICY)?;
            let policies = [
                "--policy".to_string(),
                policy.display().to_string(),
                "--policy-dir".into(),
                root().join("policies").display().to_string(),
                "--pod-cidr".into(),
                "10.244.0.0/16".into(),
                "--service-cidr".into(),
                "10.96.0.0/12".into(),
            ];
            compare(
                sensor,
                &policies,
                &o,
                &Workload {
                    name: "TCP connects to a loopback listener",
                    ops: o.ops.unwrap_or(20_000),
                    run: connects,
                    seen: ("connect program runs", |_, programs| {
                        runs_of(programs, "snsr_connect4")
                    }),
                },
            )
        }
        Some("syscall") => {
            let policy = root().join("target/bench-syscall-policy.yaml");
            std::fs::write(&policy, SYSCALL_POLICY)?;
            let policies = [
                "--policy".to_string(),
                policy.display().to_string(),
                "--policy".into(),
                root().join("policies/reflex.yaml").display().to_string(),
            ];
            compare(
                sensor,
                &policies,
                &o,
                &Workload {
                    name: "getppid() syscalls",
                    ops: o.ops.unwrap_or(2_000_000),
                    run: syscalls,
                    seen: ("syscall program runs", |_, programs| {
                        runs_of(programs, "snsr_syscall")
                    }),
                },
            )
        }
        Some("send") => {
            let policy = root().join("target/bench-send-policy.yaml");
            std::fs::write(&policy, SEND_POLICY)?;
            let policies = ["--policy".to_string(), policy.display().to_string()];
            compare(
                sensor,
                &policies,
                &o,
                &Workload {
                    name: "64-byte writes on a loopback TCP socket",
                    ops: o.ops.unwrap_or(500_000),
                    run: sends,
                    seen: ("syscall program runs", |_, programs| {
                        runs_of(programs, "snsr_syscall")
                    }),
                },
            )
        }
        Some("packet") => {
            let policy = root().join("target/bench-packet-policy.yaml");
            std::fs::write(&policy, PACKET_POLICY)?;
            let policies = ["--policy".to_string(), policy.display().to_string()];
            compare(
                sensor,
                &policies,
                &o,
                &Workload {
                    name: "64-byte datagrams on a loopback UDP socket",
                    ops: o.ops.unwrap_or(500_000),
                    run: datagrams,
                    seen: ("packet-out program runs", |_, programs| {
                        runs_of(programs, "snsr_pkt_out")
                    }),
                },
            )
        }
        _ => bail!(
            "usage: cargo xtask bench exec|connect|syscall|send|packet [--pairs N] [--ops N] [--no-stats]"
        ),
    }
}

struct Workload {
    name: &'static str,
    ops: usize,
    run: fn(usize) -> Result<Duration>,
    /// What must reach `ops` (every op seen), read from the stop line and
    /// the program lines.
    seen: (&'static str, Seen),
}

/// Reads a count from the daemon's stop line and its program lines.
type Seen = fn(&str, &[String]) -> u64;

fn compare(sensor: &Path, policies: &[String], o: &Options, w: &Workload) -> Result<()> {
    let events = root().join("target/bench-events.json");
    let (mut ratios, mut rates) = (Vec::new(), Vec::new());
    let mut lost_total = 0;
    (w.run)(w.ops / 10)?; // warm caches
    for pair in 0..o.pairs {
        let mut with = Duration::ZERO;
        let mut without = Duration::ZERO;
        let mut stats = String::new();
        let mut programs = Vec::new();
        // Alternate which run goes first so that drift does not favour one.
        for with_sensor in [pair % 2 == 0, pair % 2 == 1] {
            if with_sensor {
                let d = start_with(sensor, policies, &events, o.stats)?;
                with = (w.run)(w.ops)?;
                (stats, programs) = stop(d)?;
            } else {
                without = (w.run)(w.ops)?;
            }
        }
        let (seen, lost) = ((w.seen.1)(&stats, &programs), field(&stats, "lost"));
        lost_total += lost;
        let ratio = with.as_secs_f64() / without.as_secs_f64();
        let rate = seen as f64 / with.as_secs_f64();
        println!(
            "pair {}: without {:.3}s  with {:.3}s  ratio {ratio:.3}  {} {seen}  records {}  lost {lost}",
            pair + 1,
            without.as_secs_f64(),
            with.as_secs_f64(),
            w.seen.0,
            field(&stats, "records")
        );
        for p in programs.iter().filter(|p| field(p, "runs") > 0) {
            let name = p
                .split("program=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("?")
                .trim_matches('"');
            println!(
                "    kernel {name}: {} runs, {} ns per run",
                field(p, "runs"),
                field(p, "ns_per_run")
            );
        }
        if seen < w.ops as u64 && (o.stats || seen != 0) {
            bail!("the sensor saw {seen} {} of {} operations", w.seen.0, w.ops);
        }
        ratios.push(ratio);
        rates.push(rate);
    }
    println!(
        "bench: {} {} x {} pairs: median ratio {:.3}, {:.0} {}/s, lost events {lost_total}",
        w.ops,
        w.name,
        o.pairs,
        median(ratios),
        median(rates),
        w.seen.0
    );
    Ok(())
}
