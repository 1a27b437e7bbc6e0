//! The `run` command, in three steps: setup (the kernel side, adopted or
//! loaded by `adopt`; the Kubernetes thread; the process cache seeded from
//! /proc), the loop (`serve`), and the way out: with `--keep-on-exit`
//! everything stays pinned and enforcing, otherwise it is removed.
pub mod adopt;
mod cluster;
mod enforce;
mod observe;
mod serve;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::io::unix::AsyncFd;

use crate::antibody::Antibodies;
use crate::enrich::Enricher;
use crate::export::json::{JsonSink, Lines, RotatingFile};
use crate::export::shape::Shaped;
use crate::export::stream::Events;
use crate::export::{CompactSink, Exporter};
use crate::health::Health;
use crate::metrics::Telemetry;
use crate::pipeline::Pipeline;
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
    /// Also rotate the export file this often.
    pub export_rotation: Option<std::time::Duration>,
    /// Which events and fields the JSON outputs carry, and how many.
    pub export_flags: crate::export::shape::ExportFlags,
    pub scope: Vec<PathBuf>,
    pub sizes: crate::load::Sizes,
    pub cache_size: usize,
    /// Count each program's runs and run time, and log them at stop.
    pub program_stats: bool,
    /// A kubeconfig; the environment's (or in-cluster) configuration otherwise.
    pub kubeconfig: Option<PathBuf>,
    /// Where pending quarantine labels are kept across restarts.
    pub state_dir: PathBuf,
    /// The bpffs directory the kernel side is pinned under; `None` keeps
    /// nothing pinned.
    pub bpf_dir: Option<PathBuf>,
    /// Leave the pinned set enforcing when the daemon stops.
    pub keep_on_exit: bool,
    /// The control API's unix socket; `None` serves no API.
    pub server: Option<PathBuf>,
    /// Where Prometheus scrapes `/metrics`; `None` serves none.
    pub metrics_server: Option<String>,
    pub metrics_labels: crate::metrics::labels::LabelFilter,
    /// Where the kubelet asks `/healthz` and `/readyz`; `None` serves none.
    pub health_server: Option<String>,
    /// Which event kinds carry `ancestors`.
    pub ancestors: crate::export::ancestors::AncestorKinds,
    /// Processes carry `process_credentials` (`--enable-process-cred`).
    pub process_cred: bool,
    /// Processes carry `ns` (`--enable-process-ns`).
    pub process_ns: bool,
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

fn exporter(opts: &RunOptions, stream: &Events, t: &Telemetry) -> anyhow::Result<Exporter> {
    let mut ex = Exporter::default();
    ex.add(Box::new(crate::metrics::sink::MetricsSink::new(t.clone())));
    ex.add(Box::new(crate::export::stream::StreamSink(stream.clone())));
    let shaped = |out| {
        Shaped::new(&opts.export_flags, opts.node_name.clone(), out, t.clone())
            .map_err(anyhow::Error::msg)
    };
    match opts.output {
        Output::Json => ex.add(Box::new(shaped(LineOut::Stdout(JsonSink(
            std::io::stdout(),
        )))?)),
        Output::Compact => ex.add(Box::new(CompactSink(std::io::stdout()))),
        Output::None => {}
    }
    if let Some(path) = &opts.export_file {
        let f = RotatingFile::with_interval(
            path.clone(),
            opts.export_max_bytes,
            opts.export_backups,
            opts.export_rotation,
        )
        .with_context(|| format!("export file {}", path.display()))?;
        ex.add(Box::new(shaped(LineOut::File(f))?));
        tracing::info!(path = %path.display(), "exporting JSON lines");
    }
    Ok(ex)
}

/// The JSON outputs, one type for the shaped sink.
enum LineOut {
    Stdout(JsonSink<std::io::Stdout>),
    File(RotatingFile),
}

impl Lines for LineOut {
    fn line(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            LineOut::Stdout(s) => s.line(bytes),
            LineOut::File(f) => f.line(bytes),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            LineOut::Stdout(s) => Lines::flush(s),
            LineOut::File(f) => Lines::flush(f),
        }
    }
}

/// The policies the daemon starts with and where changes come from.
pub struct Policies {
    pub set: crate::reconcile::PolicySet,
    /// The watched `--policy-dir`, already read once.
    pub dir: Option<crate::reconcile::dir::DirWatch>,
    pub vars: crate::documents::Vars,
}

/// Starts the health and metrics servers, before anything else, so that
/// the probes see the sensor come up.
async fn serve_telemetry(opts: &RunOptions, health: &Health, t: &Telemetry) -> anyhow::Result<()> {
    if let Some(addr) = &opts.health_server {
        let bound = crate::http::spawn(addr, health.route())
            .await
            .with_context(|| format!("--health-server-address {addr}"))?;
        tracing::info!(address = %bound, "health server listening");
    }
    if let Some(addr) = &opts.metrics_server {
        let t = t.clone();
        let route: crate::http::Route = std::sync::Arc::new(move |path| match path {
            "/metrics" => (
                hyper::StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                t.encode(),
            ),
            _ => (
                hyper::StatusCode::NOT_FOUND,
                crate::http::TEXT,
                "try /metrics\n".into(),
            ),
        });
        let bound = crate::http::spawn(addr, route)
            .await
            .with_context(|| format!("--metrics-server {addr}"))?;
        tracing::info!(address = %bound, "metrics server listening");
    }
    Ok(())
}

pub async fn run(opts: RunOptions, mut policies: Policies) -> anyhow::Result<()> {
    let health = Health::default();
    health.beat();
    let telemetry = Telemetry::new(opts.metrics_labels);
    serve_telemetry(&opts, &health, &telemetry).await?;
    let scope: Vec<u64> = opts
        .scope
        .iter()
        .map(|p| cgroup_id(p))
        .collect::<Result<_, _>>()?;
    ask_for_short_slice();
    let _stats = opts
        .program_stats
        .then(crate::load::enable_stats)
        .transpose()?;
    let root = cgroup2_root().context("no cgroup2 mount: connect hooks attach to its root")?;
    // Pod context, quarantine labels and policy resources, when there is a
    // Kubernetes API; its policies are in the set before the kernel is
    // first written.
    let (outcome_tx, outcomes) = tokio::sync::mpsc::unbounded_channel();
    // Read once, before the Kubernetes thread starts: it labels these and
    // then rewrites the file.
    let state = crate::antibody::state::StateFile::new(pending_file(&opts));
    let loaded = state.load();
    let mut cluster =
        cluster::start(&opts, state, loaded.decisions.clone(), outcome_tx, &health).await?;
    health.beat();
    cluster::first_resources(&mut cluster, &mut policies).await;
    health.beat();
    let active = policies.set.compile()?;
    let started = adopt::start(
        &adopt::KernelOptions {
            bpf_dir: opts.bpf_dir.as_deref(),
            plan: &opts.plan,
            sizes: opts.sizes,
            cgroup_root: &root,
        },
        &active.compiled,
        &scope,
    )?;
    let (mut kernel, set, origin) = (started.kernel, started.set, started.origin);
    kernel.set_process_cred(opts.process_cred)?;
    kernel.set_process_ns(opts.process_ns)?;

    let (pods, labeler) = (cluster.pods.take(), cluster.labeler.take());
    let paths = crate::enrich::cgroup::CgroupPaths::shared(root.clone());
    let mut antibodies = Antibodies::new(paths.clone(), pods.clone(), labeler);
    let restored = antibodies.restore(&mut kernel, loaded);

    // Processes older than the daemon.
    let mut cache = ProcessCache::new(opts.node_name.clone(), Clock::new(), opts.cache_size);
    let scanned = procfs::scan(Path::new("/proc"), &root);
    let optional = procfs::Optional {
        creds: opts.process_cred,
        ns: opts.process_ns,
    };
    for p in procfs::processes(&scanned, &mut cache, optional) {
        cache.insert(p);
    }
    let (stream, _) = tokio::sync::broadcast::channel(crate::export::stream::BACKLOG);
    let mut pipeline = Pipeline::new(
        cache,
        opts.node_name.clone(),
        Enricher::new(paths.clone(), pods.clone()).with_unknown_scope(
            opts.scope
                .iter()
                .map(|p| {
                    let rel = p.strip_prefix(&root).unwrap_or(p);
                    format!("/{}", rel.display().to_string().trim_matches('/'))
                })
                .collect(),
        ),
        exporter(&opts, &stream, &telemetry)?,
    );
    pipeline.set_telemetry(telemetry.clone());
    pipeline.set_ancestors(opts.ancestors);
    for e in restored {
        pipeline.announce(e);
    }
    let enforcer = enforce::Enforcer {
        scope,
        cgroup_root: root,
        pods,
        paths,
    };
    let mut scopes = None;
    // An adopted set's tables and process states were written under the
    // policies it had.
    let tables = match origin {
        adopt::Origin::Adopted => enforce::Tables::Stale,
        _ => enforce::Tables::Fresh,
    };
    health.set_attached(kernel.link_count() > 0);
    enforcer.enforce(&mut kernel, &mut pipeline, &mut scopes, &active, tables)?;
    health.set_policies(true);
    health.beat();

    let events = kernel.take_events()?;
    // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open for as
    // long as it is registered.
    let mut fd = unsafe { AsyncFd::register(events) }.context("polling the ring buffer")?;
    let mut stop = serve::Stop::catch()?;
    let (calls_tx, calls) = tokio::sync::mpsc::channel(64);
    if let Some(path) = &opts.server {
        let listener = crate::control::server::listen(path)
            .with_context(|| format!("control API socket {}", path.display()))?;
        let api = crate::control::server::Api {
            calls: calls_tx,
            events: stream,
            node_name: opts.node_name.clone(),
            ancestors: opts.ancestors,
        };
        tokio::spawn(async move {
            if let Err(e) = crate::control::server::serve(listener, api).await {
                tracing::error!(error = %e, "control API stopped");
            }
        });
        tracing::info!(socket = %path.display(), "control API listening");
    }
    // Loading parsed the kernel's BTF (megabytes, freed by now); hand the
    // freed heap back rather than carry it as resident memory for good.
    // SAFETY: malloc_trim only releases free memory of glibc's arenas.
    unsafe { libc::malloc_trim(0) };
    tracing::info!(
        node = %opts.node_name,
        exec_selectors = active.compiled.selectors.len(),
        connect_selectors = active.compiled.net_selectors.len(),
        procfs = scanned.len(),
        programs = ?kernel.program_ids(),
        links = ?kernel.link_ids(),
        origin = ?origin,
        "sensor ready"
    );

    let mut stages = serve::Stages {
        pipeline,
        antibodies,
        scopes,
        outcomes,
        policies,
        enforcer,
        calls,
        resources: cluster.resources,
        resource_outcomes: cluster.resource_outcomes,
        telemetry,
        health,
    };
    serve::run(&mut kernel, &mut fd, &mut stages, &mut stop).await?;

    if opts.program_stats {
        for (program, runs, time) in kernel.program_stats() {
            let ns_per_run = time.as_nanos() as u64 / runs.max(1);
            tracing::info!(program, runs, ns_per_run, "program stats");
        }
    }
    let kept = match (&set, opts.keep_on_exit) {
        (Some(set), false) => {
            if let Err(e) = set.remove() {
                tracing::error!(error = %e, "removing the pinned set");
            }
            // Left in place when someone else's sets are in it.
            if let Some(dir) = set.path.parent() {
                let _ = std::fs::remove_dir(dir);
            }
            false
        }
        (Some(_), true) => true,
        (None, _) => false,
    };
    if let Some(path) = &opts.server {
        crate::control::server::remove_socket(path);
    }
    drop(fd);
    drop(kernel);
    let _ = std::io::stdout().flush();
    let summary = stages.pipeline.summary();
    if kept {
        tracing::info!(stats = %summary, set = ?set.map(|s| s.path), "sensor stopped; the pinned set keeps enforcing");
    } else {
        tracing::info!(stats = %summary, "sensor stopped, programs detached");
    }
    Ok(())
}

pub(crate) fn pending_file(opts: &RunOptions) -> PathBuf {
    opts.state_dir.join("pending-quarantines.json")
}

/// Before anything else runs on this thread.
fn ask_for_short_slice() {
    match crate::sched::request(crate::sched::SLICE) {
        Ok(crate::sched::Slice::Granted(slice)) => {
            tracing::debug!(?slice, "short scheduler slice granted")
        }
        Ok(crate::sched::Slice::Unsupported) => tracing::info!(
            "this kernel has no custom scheduler slices (Linux 6.12): a busy CPU can delay quarantines"
        ),
        Err(e) => tracing::warn!(error = %e, "asking for a short scheduler slice"),
    }
}
