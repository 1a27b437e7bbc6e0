//! `cargo xtask bench quarantine`: how fast an antibody acts. For each of N
//! pods (cgroups named as kubelet names them, known to a fake API server on
//! loopback), an offending exec (`curl -d`, which the shipped
//! `policies/brain.yaml` quarantines) is timed to (a) the kernel denying the
//! pod's next connect, seen by a prober in the pod that connects every 100 µs
//! from just before the exec, and (b) the label stored on the API server.
//!
//! `cargo xtask bench flood`: the same decisions while another pod sends UDP
//! datagrams as fast as one process can (each one a send the connect hooks
//! see), with the flooder's rate, the records its budget let through and
//! held back, and what the ring buffer lost.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use apiserver_double::{pod, FakeApi};

use crate::root;

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock and a timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `xtask bench-probe PORT`, run inside a pod: connects once (UDP, so that
/// no TIME_WAIT piles up) and says `ready`; after `go` on standard input,
/// connects every 100 µs until a connect is refused with EPERM (the
/// quarantine), then prints when that happened. Idle until `go`, so that the
/// daemon is not handling a stream of connects the rest of the time.
pub fn probe(port: &str) -> Result<()> {
    // The same short slice as the daemon: what is timed is when the kernel
    // starts denying, not how long the prober then waits for a CPU.
    // The daemon's own scheduler request, so that the prober's wait for a
    // CPU is not counted as the sensor's.
    sensor::sched::request(sensor::sched::SLICE).context("prober slice")?;
    // And sleeps of 100 µs, not 100 µs plus the default 50 µs of slack.
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64) };
    let addr = format!("127.0.0.1:{port}");
    let connect = || std::net::UdpSocket::bind("127.0.0.1:0")?.connect(&addr);
    connect().context("probe connect before the offence")?;
    println!("ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match connect() {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                println!("{}", mono_ns());
                return Ok(());
            }
            Err(e) => bail!("probe connect: {e}"),
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    bail!("never denied")
}

/// `xtask bench-flood`, run inside a pod: sends UDP datagrams to the
/// discard port as fast as it can until its standard input closes, then
/// prints how many it sent and in how many seconds.
pub fn flood() -> Result<()> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let start = Instant::now();
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for _ in 0..256 {
            let _ = s.send_to(b"x", "127.0.0.1:9");
        }
        n += 256;
    }
    println!("{n} {:.3}", start.elapsed().as_secs_f64());
    Ok(())
}

struct Pod {
    name: String,
    dirs: Vec<PathBuf>,
    procs: std::ffi::CString,
}

impl Pod {
    fn command(&self, program: &str) -> Command {
        let procs = self.procs.clone();
        let mut c = Command::new(program);
        // SAFETY: only open, write and close between fork and exec.
        unsafe {
            c.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                let ok = fd >= 0 && libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                if fd >= 0 {
                    libc::close(fd);
                }
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

impl Drop for Pod {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn make_pod(api: &FakeApi, node: &str, i: usize) -> Result<Pod> {
    let pid = std::process::id();
    let uid = format!("{pid:08x}-0000-4000-9000-{i:012x}");
    let cid = format!("{pid:016x}{i:016x}{:032x}", 0xbe7c4);
    let name = format!("bench-{i}");
    api.add_pod(pod(
        "bench",
        &name,
        &uid,
        node,
        &cid,
        serde_json::json!({"app": "bench"}),
    ));
    let rel = format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{cid}.scope",
        uid.replace('-', "_")
    );
    let mut path = PathBuf::from("/sys/fs/cgroup/unified");
    let mut dirs = Vec::new();
    for part in rel.split('/') {
        path.push(part);
        match std::fs::create_dir(&path) {
            Ok(()) => dirs.push(path.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => bail!("cgroup {}: {e}", path.display()),
        }
    }
    let procs = std::ffi::CString::new(
        path.join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )?;
    Ok(Pod { name, dirs, procs })
}

/// The kernel time (CLOCK_MONOTONIC ns) of the offending exec in pod `name`:
/// the `start_ktime` inside its exec_id.
fn exec_ktime(events: &Path, name: &str) -> Option<u64> {
    use base64::Engine;
    let text = std::fs::read_to_string(events).ok()?;
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let p = &v["process_exec"]["process"];
        if p["pod"]["name"] != name || !p["binary"].as_str()?.ends_with("/curl") {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(p["exec_id"].as_str()?)
            .ok()?;
        let raw = String::from_utf8(raw).ok()?;
        raw.rsplit(':').nth(1)?.parse().ok()
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn run(sensor: &Path, decisions: usize, flood: bool) -> Result<()> {
    let api = FakeApi::start();
    let node = format!("bench-node-{}", std::process::id());
    let dir = root().join("target/bench-quarantine");
    std::fs::create_dir_all(&dir)?;
    // The shipped rules, connect rules included: a pod's connects then wake
    // the daemon at once, as they do in production.
    let rules = root().join("policies/brain.yaml");
    let kubeconfig = api.kubeconfig(&dir);
    let pods: Vec<Pod> = (0..decisions)
        .map(|i| make_pod(&api, &node, i))
        .collect::<Result<_>>()?;
    let flooder_pod = if flood {
        Some(make_pod(&api, &node, decisions)?)
    } else {
        None
    };

    let port = "9999".to_string();

    let _ = std::fs::remove_dir_all(dir.join("state"));
    let events = dir.join("events.json");
    let _ = std::fs::remove_file(&events);
    let mut daemon = Command::new(sensor)
        .args([
            "run",
            "--output",
            "none",
            "--health-server-address",
            "",
            "--policy",
        ])
        .arg(&rules)
        .args([
            "--bpf-dir",
            "/sys/fs/bpf/sensor-bench",
            "--server-address",
            "",
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--node-name", &node, "--state-dir"])
        .arg(dir.join("state"))
        .arg("--export-file")
        .arg(dir.join("events.json"))
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let err = daemon.stderr.take().context("stderr")?;
    let mut log = BufReader::new(err).lines();
    loop {
        let line = log.next().context("sensor exited before ready")??;
        if line.contains("sensor ready") {
            break;
        }
    }
    // The daemon's warnings (lost records, failed labels) belong with the
    // figures, and its closing line carries the counts.
    let (stopped_tx, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in log.map_while(Result::ok) {
            if l.contains("sensor stopped") {
                let _ = stopped_tx.send(l);
            } else if l.contains(" WARN ") || l.contains(" ERROR ") {
                eprintln!("sensor: {l}");
            }
        }
    });
    let flooder = match &flooder_pod {
        Some(p) => Some(
            p.command(std::env::current_exe()?.to_str().context("exe path")?)
                .arg("bench-flood")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?,
        ),
        None => None,
    };
    // The flood runs for a while before the decisions (its budget spent,
    // the ring as full as it gets) and for at least FLOOD_FOR in all.
    let flood_started = Instant::now();
    if flooder.is_some() {
        std::thread::sleep(Duration::from_secs(3));
    }
    let result = measure(&api, &pods, &port, &events);
    if flooder.is_some() {
        std::thread::sleep(FLOOD_FOR.saturating_sub(flood_started.elapsed()));
    }
    let sent = flooder.map(|mut f| -> Result<String> {
        drop(f.stdin.take());
        let mut line = String::new();
        BufReader::new(f.stdout.take().context("flooder stdout")?).read_line(&mut line)?;
        f.wait()?;
        Ok(line)
    });
    // SAFETY: signalling our own child, on success and on failure alike.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    daemon.wait()?;
    // The first pod created the shared parent cgroups: remove it last.
    drop(flooder_pod);
    pods.into_iter().rev().for_each(drop);
    if let Some(sent) = sent {
        let sent = sent?;
        let mut it = sent.split_whitespace();
        let n: f64 = it
            .next()
            .and_then(|v| v.parse().ok())
            .context("flooder count")?;
        let secs: f64 = it
            .next()
            .and_then(|v| v.parse().ok())
            .context("flooder time")?;
        let stop = stopped
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
        let held_back = held_back(&events);
        println!(
            "bench flood: one pod sent {:.0} datagrams a second for {secs:.1} s ({n:.0} sends, each one a record candidate); {held_back} records held back by its budget; the daemon's counts: {}",
            n / secs,
            stop.split("stats=").nth(1).unwrap_or("?")
        );
    }
    let (mut kernel, mut label) = result?;
    kernel.sort_by(f64::total_cmp);
    label.sort_by(f64::total_cmp);
    println!(
        "bench {}: {decisions} decisions:",
        if flood { "flood" } else { "quarantine" }
    );
    println!(
        "  (a) kernel denies the next connect p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms; (b) label stored p50 {:.2} ms, p99 {:.2} ms",
        percentile(&kernel, 0.5),
        percentile(&kernel, 0.9),
        percentile(&kernel, 0.99),
        percentile(&label, 0.5),
        percentile(&label, 0.99)
    );
    Ok(())
}

/// How long the flood lasts at least.
const FLOOD_FOR: Duration = Duration::from_secs(10);

/// Records the kernel held back for pods over their budget: the counts of
/// the daemon's `record-budget` alerts.
fn held_back(events: &Path) -> u64 {
    std::fs::read_to_string(events)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["sensor_alert"]["rule"] == "record-budget")
        .filter_map(|v| v["sensor_alert"]["count"].as_u64())
        .sum()
}

/// One decision per pod: milliseconds from each offending exec to the
/// denied connect and to the stored label.
fn measure(api: &FakeApi, pods: &[Pod], port: &str, events: &Path) -> Result<(Vec<f64>, Vec<f64>)> {
    let me = std::env::current_exe()?;
    let (mut kernel, mut label) = (Vec::new(), Vec::new());
    for p in pods {
        let mut prober = p
            .command(me.to_str().context("exe path")?)
            .args(["bench-probe", port])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut out = BufReader::new(prober.stdout.take().context("prober stdout")?).lines();
        if out.next().transpose()?.as_deref() != Some("ready") {
            bail!("prober in {} did not connect", p.name);
        }
        prober
            .stdin
            .take()
            .context("prober stdin")?
            .write_all(b"go\n")?;
        let mut curl = p
            .command("/usr/bin/curl")
            .args(["-s", "-o", "/dev/null", "-d", "x", "http://127.0.0.1:9/"])
            .spawn()?;
        let denied: u64 = out
            .next()
            .context("prober ended")??
            .trim()
            .parse()
            .context("prober output")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let labelled_at = loop {
            let labelled = api
                .pod("bench", &p.name)
                .is_some_and(|v| v["metadata"]["labels"]["quarantine"] == "true");
            if labelled {
                break mono_ns();
            }
            if Instant::now() > deadline {
                bail!("{}: no label within 10 s", p.name);
            }
            // Coarse enough not to compete with the daemon for the CPUs.
            std::thread::sleep(Duration::from_micros(500));
        };
        let t0 = loop {
            if let Some(t) = exec_ktime(events, &p.name) {
                break t;
            }
            if Instant::now() > deadline {
                bail!("{}: no exec event", p.name);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        kernel.push(denied.saturating_sub(t0) as f64 / 1e6);
        label.push(labelled_at.saturating_sub(t0) as f64 / 1e6);
        let _ = curl.wait();
        let _ = prober.wait();
    }
    Ok((kernel, label))
}
