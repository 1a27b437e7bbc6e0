//! `cargo xtask bench exec`: the cost of the sensor on fork+exec, measured
//! as the ratio of a workload's time with the running daemon (JSON export to
//! a file, the shipped reflex policy loaded) to its time without, in
//! alternating pairs within one invocation.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::root;

struct Options {
    pairs: usize,
    execs: usize,
}

fn options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        pairs: 5,
        execs: 2000,
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
            "--execs" => o.execs = num()?,
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

struct Daemon {
    child: Child,
    log: std::sync::mpsc::Receiver<String>,
}

fn start(sensor: &Path, events: &Path) -> Result<Daemon> {
    let _ = std::fs::remove_file(events);
    let mut child = Command::new(sensor)
        .current_dir(root())
        .args([
            "run",
            "--output",
            "none",
            "--policy",
            "policies/reflex.yaml",
            "--export-file",
        ])
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

/// Stops the daemon and returns its `stats=` summary (`records=.. lost=..`).
fn stop(mut d: Daemon) -> Result<String> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    d.child.wait()?;
    let line = d
        .log
        .try_iter()
        .find(|l| l.contains("sensor stopped"))
        .context("no stop line")?;
    Ok(line)
}

fn field(line: &str, key: &str) -> u64 {
    line.split(|c: char| c.is_whitespace() || c == '"')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn main(sensor: &Path, args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("exec") => exec(sensor, &options(&args[1..])?),
        _ => bail!("usage: cargo xtask bench exec [--pairs N] [--execs N]"),
    }
}

fn exec(sensor: &Path, o: &Options) -> Result<()> {
    if !crate::is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    let events = root().join("target/bench-events.json");
    let (mut ratios, mut rates) = (Vec::new(), Vec::new());
    let mut lost_total = 0;
    workload(200)?; // warm the page cache
    for pair in 0..o.pairs {
        let mut with = Duration::ZERO;
        let mut without = Duration::ZERO;
        let mut stats = String::new();
        // Alternate which run goes first so that drift does not favour one.
        for with_sensor in [pair % 2 == 0, pair % 2 == 1] {
            if with_sensor {
                let d = start(sensor, &events)?;
                with = workload(o.execs)?;
                stats = stop(d)?;
            } else {
                without = workload(o.execs)?;
            }
        }
        let (exec_events, lost) = (field(&stats, "process_exec"), field(&stats, "lost"));
        lost_total += lost;
        let ratio = with.as_secs_f64() / without.as_secs_f64();
        let rate = exec_events as f64 / with.as_secs_f64();
        println!(
            "pair {}: without {:.3}s  with {:.3}s  ratio {ratio:.3}  exec events {exec_events}  lost {lost}",
            pair + 1,
            without.as_secs_f64(),
            with.as_secs_f64()
        );
        if exec_events < o.execs as u64 {
            bail!("the sensor saw {exec_events} execs of {}", o.execs);
        }
        ratios.push(ratio);
        rates.push(rate);
    }
    println!(
        "bench exec: {} fork+exec of /bin/true x {} pairs: median ratio {:.3}, {:.0} exec events/s, lost events {lost_total}",
        o.execs,
        o.pairs,
        median(ratios),
        median(rates)
    );
    Ok(())
}
