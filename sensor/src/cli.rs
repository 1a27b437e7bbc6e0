//! The command line: every subcommand and flag of `sensor`.
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use sensor::daemon::Output;
use sensor::documents::Vars;

#[derive(Parser)]
#[command(
    name = "sensor",
    version,
    about = "A network immune system for Kubernetes nodes"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the sensor on this node.
    Run(Box<RunArgs>),
    /// Work with reflex policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Quarantine a pod, or lift its quarantine, through its label.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// Print what this kernel offers and which path each policy hook takes.
    Probe {
        /// Also load and attach every program chosen, then remove them.
        #[arg(long)]
        load: bool,
    },
    /// Remove the pinned kernel side (uninstall): programs detach and
    /// quarantines lift. Stop the daemon first, or it keeps its own links.
    Unload(BpfDir),
    /// Show the pinned sets: their programs and how many links each has.
    Status(BpfDir),
    /// Stream the running daemon's events (its gRPC GetEvents).
    Getevents(GeteventsArgs),
    /// Print JSON lines (a file, or stdin) as compact lines.
    Compact {
        /// File of JSON lines; stdin when absent or "-".
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum QuarantineCommand {
    /// Label NAMESPACE/NAME quarantine=true: every node isolates it.
    Apply(PodArg),
    /// Remove the label: every node gives the pod its network back.
    Release(PodArg),
}

#[derive(clap::Args)]
pub struct PodArg {
    /// The pod, as NAMESPACE/NAME.
    pub pod: String,
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files without loading anything.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        vars: PolicyVars,
    },
    /// Add a policy to the running daemon (or replace one added before).
    Add {
        file: PathBuf,
        #[command(flatten)]
        server: Server,
    },
    /// Delete a policy added through the API.
    Delete {
        name: String,
        #[command(flatten)]
        server: Server,
    },
    /// List the running daemon's policies.
    List {
        /// Print the API's answer as JSON.
        #[arg(short, long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Enforce a loaded policy again.
    Enable {
        name: String,
        #[command(flatten)]
        server: Server,
    },
    /// Keep a policy loaded but stop enforcing it.
    Disable {
        name: String,
        #[command(flatten)]
        server: Server,
    },
    /// Switch a policy between enforcing and monitoring (its Sigkill,
    /// Signal and Override are reported but not carried out).
    Mode {
        name: String,
        #[arg(value_enum)]
        mode: ModeArg,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Enforce,
    Monitor,
}

/// Where the daemon's API is.
#[derive(clap::Args)]
pub struct Server {
    /// The daemon's gRPC socket (Tetragon's flag).
    #[arg(long, default_value = DEFAULT_SERVER)]
    pub server_address: String,
}

const DEFAULT_SERVER: &str = "unix:///var/run/sensor/sensor.sock";

#[derive(clap::Args)]
pub struct GeteventsArgs {
    #[arg(short, long, value_enum, default_value = "json")]
    pub output: EventsOutput,
    /// Only events of pods in these namespaces.
    #[arg(long)]
    pub namespace: Vec<String>,
    /// Only events of pods whose name matches (regex).
    #[arg(long)]
    pub pod: Vec<String>,
    /// Only events of binaries that match (regex).
    #[arg(long)]
    pub binary: Vec<String>,
    /// Only events of these policies.
    #[arg(long)]
    pub policy_names: Vec<String>,
    /// Only these event types (PROCESS_EXEC, PROCESS_KPROBE, ...).
    #[arg(long)]
    pub event_types: Vec<String>,
    #[command(flatten)]
    pub server: Server,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventsOutput {
    Json,
    Compact,
}

/// Values for `${NAME}` placeholders in policies, as Tetragon's quickstart
/// fills them with envsubst.
#[derive(clap::Args)]
pub struct PolicyVars {
    /// The cluster's pod CIDR (`${PODCIDR}` in policies).
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// The cluster's service CIDR (`${SERVICECIDR}` in policies).
    #[arg(long)]
    pub service_cidr: Option<String>,
}

impl PolicyVars {
    pub fn vars(&self) -> Vars {
        let mut v = Vars::new();
        for (name, value) in [
            ("PODCIDR", &self.pod_cidr),
            ("SERVICECIDR", &self.service_cidr),
        ] {
            // Empty is unset: a DaemonSet passes `--pod-cidr=$(POD_CIDR)`
            // whether or not its ConfigMap has a value.
            if let Some(value) = value.as_ref().filter(|v| !v.is_empty()) {
                v.insert(name.to_string(), value.clone());
            }
        }
        v
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// A TracingPolicy file (repeatable).
    #[arg(long = "policy")]
    pub policies: Vec<PathBuf>,
    /// A directory of policies; `policies` when no --policy is given.
    #[arg(long)]
    pub policy_dir: Option<PathBuf>,
    #[command(flatten)]
    pub vars: PolicyVars,
    /// What goes to stdout.
    #[arg(long, value_enum, default_value = "json")]
    pub output: Output,
    /// Also write JSON lines to this file, rotated by size.
    #[arg(long)]
    pub export_file: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    pub export_file_max_size_mb: u64,
    #[arg(long, default_value_t = 5)]
    pub export_file_max_backups: u32,
    /// Also rotate the export file this often (Go-style duration: 30m,
    /// 1h, 1h30m; 0 turns it off), as Tetragon's flag does.
    #[arg(long, default_value = "0", value_parser = sensor::duration::parse)]
    pub export_file_rotation_interval: std::time::Duration,
    /// Only events that match one of these filters go to the JSON outputs
    /// (Tetragon's JSON filter objects, separated by newlines).
    #[arg(long, default_value = "")]
    pub export_allowlist: String,
    /// No event that matches one of these filters goes to the JSON outputs.
    #[arg(long, default_value = "")]
    pub export_denylist: String,
    /// At most this many events a minute to the JSON outputs; what is
    /// dropped is reported in a rate_limit_info event. -1: no limit.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub export_rate_limit: i64,
    /// Fields to keep or drop per event type (Tetragon's field filter
    /// objects: event_set, fields, action INCLUDE or EXCLUDE).
    #[arg(long, default_value = "")]
    pub field_filters: String,
    /// Event types whose events carry `ancestors`, the lineage beyond the
    /// parent, comma-separated (Tetragon's flag): base (exec and exit),
    /// kprobe, tracepoint, lsm; uprobe, usdt and loader are accepted. None
    /// without base.
    #[arg(long, default_value = "")]
    pub enable_ancestors: sensor::export::ancestors::AncestorKinds,
    /// Events carry each process's `process_credentials` (Tetragon's
    /// flag): ids, securebits and capability sets.
    #[arg(long)]
    pub enable_process_cred: bool,
    /// Events carry each process's namespaces, `ns` (Tetragon's flag):
    /// inode numbers, and whether each is the host's.
    #[arg(long)]
    pub enable_process_ns: bool,
    /// Limit policy enforcement to these cgroup v2 subtrees (repeatable);
    /// relative paths are under the cgroup2 mount.
    #[arg(long = "enforce-cgroup")]
    pub enforce_cgroups: Vec<PathBuf>,
    /// Node name in exec_ids and events; NODE_NAME or the hostname otherwise.
    #[arg(long)]
    pub node_name: Option<String>,
    /// Ring buffer size in bytes: a power of two, at least one page.
    #[arg(long, default_value_t = 8 * 1024 * 1024, value_parser = ring_size)]
    pub ring_buffer_size: u32,
    /// Processes the kernel keeps a policy state for at once (those a
    /// matchBinaries selector admitted, and their followed children). A
    /// live process's state is never evicted; one more is refused and
    /// reported (`sensor_alert` process-state-full). About 100 bytes each.
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..))]
    pub process_states: u32,
    /// Processes kept in the cache: exited ones are evicted first, then
    /// live ones, least recently used first.
    #[arg(long, default_value_t = 65536)]
    pub process_cache_size: usize,
    /// Count each kernel program's runs and run time; logged at stop.
    #[arg(long)]
    pub program_stats: bool,
    /// Kubeconfig for pod context; otherwise KUBECONFIG, ~/.kube/config or
    /// the in-cluster service account, and standalone without any.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Where decisions wait until their quarantine label lands.
    #[arg(long, default_value = "/var/lib/sensor")]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub bpf: BpfDir,
    /// On SIGTERM, leave the programs, policies and quarantines pinned and
    /// enforcing for the next daemon to adopt (the DaemonSet sets this).
    /// Without it, stopping removes everything.
    #[arg(long)]
    pub keep_on_exit: bool,
    /// The gRPC API's unix socket (Tetragon's flag); empty turns it off.
    #[arg(long, default_value = DEFAULT_SERVER)]
    pub server_address: String,
    /// Serve Prometheus metrics at ADDR/metrics (Tetragon's flag, e.g.
    /// `:2112` or `0.0.0.0:2112`; `:PORT` is localhost); empty turns it off.
    #[arg(long, default_value = "")]
    pub metrics_server: String,
    /// The pod and binary labels event metrics carry (Tetragon's flag):
    /// a comma-separated subset of namespace,workload,pod,binary.
    #[arg(long, default_value = "namespace,workload,pod,binary")]
    pub metrics_label_filter: sensor::metrics::labels::LabelFilter,
    /// Serve /healthz and /readyz here (Tetragon's flag; `:PORT` is
    /// localhost); empty turns it off.
    #[arg(long, default_value = ":6789")]
    pub health_server_address: String,
}

#[derive(clap::Args)]
pub struct BpfDir {
    /// The bpffs directory where links and maps are pinned.
    #[arg(long, default_value = "/sys/fs/bpf/sensor")]
    pub bpf_dir: PathBuf,
}

pub fn ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n.is_power_of_two() && n >= 4096 {
        Ok(n)
    } else {
        Err(format!("{n} is not a power of two of at least 4096"))
    }
}
