//! The `run` command: load the kernel side, seed it from /proc, then move
//! records from the ring buffer through the pipeline until SIGTERM or Ctrl-C,
//! and detach everything on the way out.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};

use std::sync::{Arc, RwLock};

use crate::antibody::Antibodies;
use crate::brain::On;
use crate::enrich::pods::PodStore;
use crate::enrich::Enricher;
use crate::export::json::{JsonSink, RotatingFile};
use crate::export::{CompactSink, Exporter};
use crate::load::Kernel;
use crate::pipeline::Pipeline;
use crate::policy::Compiled;
use crate::process::{procfs, Clock, ProcessCache};

/// What goes to standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Json,
    Compact,
    None,
}

pub struct RunOptions {
    pub node_name: String,
    /// Which form of each kernel program this kernel takes.
    pub plan: crate::load::probe::Plan,
    pub output: Output,
    pub export_file: Option<PathBuf>,
    pub export_max_bytes: u64,
    pub export_backups: u32,
    pub scope: Vec<PathBuf>,
    pub ring_bytes: u32,
    pub cache_size: usize,
    /// Count each program's runs and run time, and log them at stop.
    pub program_stats: bool,
    /// A kubeconfig; the environment's (or in-cluster) configuration otherwise.
    pub kubeconfig: Option<PathBuf>,
    /// Where pending quarantine labels are kept across restarts.
    pub state_dir: PathBuf,
}

/// The cgroup v2 mount point (hybrid hosts mount it at .../unified).
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        (f.get(sep + 1) == Some(&"cgroup2")).then(|| PathBuf::from(f[4]))
    })
}

/// The cgroup id of a cgroup v2 directory: its inode number.
pub fn cgroup_id(path: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cgroup2_root().context("no cgroup2 mount")?.join(path)
    };
    Ok(std::fs::metadata(&full)
        .with_context(|| format!("cgroup {}", full.display()))?
        .ino())
}

fn exporter(opts: &RunOptions) -> anyhow::Result<Exporter> {
    let mut ex = Exporter::default();
    match opts.output {
        Output::Json => ex.add(Box::new(JsonSink(std::io::stdout()))),
        Output::Compact => ex.add(Box::new(CompactSink(std::io::stdout()))),
        Output::None => {}
    }
    if let Some(path) = &opts.export_file {
        let f = RotatingFile::new(path.clone(), opts.export_max_bytes, opts.export_backups)
            .with_context(|| format!("export file {}", path.display()))?;
        ex.add(Box::new(f));
        tracing::info!(path = %path.display(), "exporting JSON lines");
    }
    Ok(ex)
}

pub async fn run(
    opts: RunOptions,
    compiled: Compiled,
    rules: Vec<crate::brain::Rule>,
) -> anyhow::Result<()> {
    let scope: Vec<u64> = opts
        .scope
        .iter()
        .map(|p| cgroup_id(p))
        .collect::<Result<_, _>>()?;
    // Before anything else runs on this thread.
    match crate::sched::request(crate::sched::SLICE) {
        Ok(crate::sched::Slice::Granted(slice)) => {
            tracing::debug!(?slice, "short scheduler slice granted")
        }
        Ok(crate::sched::Slice::Unsupported) => tracing::info!(
            "this kernel has no custom scheduler slices (Linux 6.12): a busy CPU can delay quarantines"
        ),
        Err(e) => tracing::warn!(error = %e, "asking for a short scheduler slice"),
    }
    let _stats = opts
        .program_stats
        .then(crate::load::enable_stats)
        .transpose()?;
    let mut kernel = Kernel::load(opts.ring_bytes, &opts.plan)?;
    kernel.apply(&compiled, &scope)?;
    let root = cgroup2_root().context("no cgroup2 mount: connect hooks attach to its root")?;
    kernel.attach(&root)?;

    // Pod context and quarantine labels, when there is a Kubernetes API.
    let (outcome_tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    let (pods, labeler) = match crate::enrich::kube::config(opts.kubeconfig.as_deref()).await {
        Some(config) => {
            std::fs::create_dir_all(&opts.state_dir)
                .with_context(|| format!("state directory {}", opts.state_dir.display()))?;
            let store = Arc::new(RwLock::new(PodStore::default()));
            let (synced_tx, synced) = tokio::sync::oneshot::channel();
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            crate::cluster::spawn(crate::cluster::Cluster {
                config,
                node: opts.node_name.clone(),
                store: store.clone(),
                synced: synced_tx,
                state: opts.state_dir.join("pending-quarantines.json"),
                decisions: rx,
                outcomes: outcome_tx,
            })
            .context("starting the Kubernetes thread")?;
            // Rules about pods need the pods: wait for the first list.
            match tokio::time::timeout(Duration::from_secs(10), synced).await {
                Ok(Ok(())) => (Some(store), Some(tx)),
                // The thread could not make a client, and said why.
                Ok(Err(_)) => (None, None),
                Err(_) => {
                    tracing::warn!("pod watcher not synced after 10 s; starting without it");
                    (Some(store), Some(tx))
                }
            }
        }
        None => (None, None),
    };
    let paths = crate::enrich::cgroup::CgroupPaths::shared(root.clone());
    let mut antibodies = Antibodies::new(paths.clone(), pods.clone(), labeler);
    let mut scopes =
        crate::scopes::PodScopes::new(compiled.scopes.clone(), pods.clone(), paths.clone());
    if let Some(s) = scopes.as_mut() {
        s.reconcile(&mut kernel)?;
        kernel.enable_pod_scopes()?;
    }

    // Processes older than the daemon: cache entries and kernel policy state.
    let mut cache = ProcessCache::new(opts.node_name.clone(), Clock::new(), opts.cache_size);
    let scanned = procfs::scan(Path::new("/proc"), &root);
    let mut states = std::collections::HashMap::new();
    for e in &scanned {
        let parent = states.get(&e.ppid).copied().unwrap_or_default();
        states.insert(e.pid, compiled.state_for(&e.binary, parent));
    }
    for p in procfs::processes(&scanned, &cache) {
        cache.insert(p);
    }
    let seeds: Vec<_> = states
        .into_iter()
        .filter(|(_, s)| *s != Default::default())
        .collect();
    kernel.seed_states(&seeds)?;

    let events = kernel.take_events()?;
    // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open for as
    // long as it is registered.
    let mut fd = unsafe { AsyncFd::register(events) }.context("polling the ring buffer")?;
    let mut pipeline = Pipeline::new(
        cache,
        compiled.meta.clone(),
        compiled.net_meta.clone(),
        opts.node_name.clone(),
        Enricher::new(paths, pods),
        crate::brain::Brain::new(rules),
        exporter(&opts)?,
    );
    // Records from pods wake the reader at once only when the brain acts on
    // them; the rest wait for the drain tick like every routine record.
    let wakeups = [
        (On::Exec, sensor_common::pod_wakeups::EXEC),
        (On::Connect, sensor_common::pod_wakeups::CONNECT),
    ]
    .into_iter()
    .filter(|(on, _)| pipeline.brain.wants(*on))
    .fold(0, |bits, (_, bit)| bits | bit);
    kernel.set_pod_wakeups(wakeups)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut lost_tick = tokio::time::interval(Duration::from_secs(2));
    // The kernel wakes us only for policy hits and a filling buffer; routine
    // records are drained on this tick.
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    tracing::info!(
        node = %opts.node_name,
        exec_selectors = compiled.selectors.len(),
        connect_selectors = compiled.net_selectors.len(),
        procfs = scanned.len(),
        programs = ?kernel.program_ids(),
        "sensor ready"
    );

    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut pipeline, &mut antibodies, &mut kernel);
                guard.clear_ready();
            }
            _ = drain_tick.tick() => {
                drain(fd.get_mut(), &mut pipeline, &mut antibodies, &mut kernel);
                pipeline.tick();
                if let Some(s) = scopes.as_mut() {
                    if let Err(e) = s.reconcile(&mut kernel) {
                        tracing::error!(error = %e, "updating pod scopes");
                    }
                }
                for e in antibodies.reconcile(&mut kernel) {
                    pipeline.emit(e, now());
                    pipeline.exporter.flush();
                }
            }
            Some(o) = outcomes.recv() => {
                let e = antibodies.labelled(o);
                pipeline.emit(e, now());
                pipeline.exporter.flush();
            }
            _ = lost_tick.tick() => report_lost(&kernel, &mut pipeline),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Drain what the kernel wrote before the signal, and what waits for pods.
    drain(fd.get_mut(), &mut pipeline, &mut antibodies, &mut kernel);
    pipeline.tick();
    pipeline.exporter.flush();
    report_lost(&kernel, &mut pipeline);
    if opts.program_stats {
        for (program, runs, time) in kernel.program_stats() {
            let ns_per_run = time.as_nanos() as u64 / runs.max(1);
            tracing::info!(program, runs, ns_per_run, "program stats");
        }
    }
    drop(fd);
    drop(kernel);
    let _ = std::io::stdout().flush();
    tracing::info!(stats = %pipeline.metrics, cache_misses = pipeline.cache.misses,
        without_pod = pipeline.enricher.unresolved, "sensor stopped, programs detached");
    Ok(())
}

/// Carries out the brain's quarantine decisions: the kernel at once, the
/// label queued.
fn act(pipeline: &mut Pipeline, antibodies: &mut Antibodies, kernel: &mut Kernel) {
    let decisions = std::mem::take(&mut pipeline.decisions);
    for d in decisions {
        for e in antibodies.decide(kernel, d) {
            pipeline.emit(e, now());
        }
        pipeline.exporter.flush();
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Longest a routine record waits in the ring buffer.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// Moves every record the ring buffer holds through the pipeline. A
/// quarantine is carried out as soon as its record is read, before the rest
/// of the batch and before anything is written out.
fn drain(
    rb: &mut RingBuf<MapData>,
    pipeline: &mut Pipeline,
    antibodies: &mut Antibodies,
    kernel: &mut Kernel,
) {
    let mut n = 0;
    while let Some(item) = rb.next() {
        pipeline.handle(&item);
        drop(item);
        if !pipeline.decisions.is_empty() {
            act(pipeline, antibodies, kernel);
        }
        n += 1;
    }
    if n > 0 {
        pipeline.exporter.flush();
    }
}

/// Reads the kernel's lost-record counters and warns when they grew.
fn report_lost(kernel: &Kernel, pipeline: &mut Pipeline) {
    match kernel.lost() {
        Ok(counts) => {
            for (kind, n) in counts {
                let before = pipeline.metrics.lost.insert(kind, n).unwrap_or(0);
                if n > before {
                    tracing::warn!(
                        kind,
                        lost = n - before,
                        total = n,
                        "ring buffer full: records lost"
                    );
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "reading lost counters"),
    }
}
