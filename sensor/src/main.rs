//! `sensor`: the daemon and its CLI. The command line lives here; each stage
//! of the pipeline has its own module: `load` (kernel side), `decode`,
//! `process` (cache and /proc scan), `enrich` (pod context), `policy`,
//! `brain`, `antibody` (quarantine), `pipeline`, `export`, `metrics`, and
//! `daemon`, which runs them (with `cluster`, its Kubernetes thread, and
//! `sched`, its place in the CPU scheduler).
mod antibody;
mod brain;
mod cluster;
mod control;
mod daemon;
mod decode;
mod documents;
mod enrich;
mod export;
mod load;
mod metrics;
mod pipeline;
mod policy;
mod process;
mod reconcile;
mod sched;
mod scopes;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use daemon::{Output, RunOptions};
use documents::{Loaded, Vars};
use policy::{Compiled, PolicyError};

#[derive(Parser)]
#[command(
    name = "sensor",
    version,
    about = "A network immune system for Kubernetes nodes"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sensor on this node.
    Run(RunArgs),
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
enum QuarantineCommand {
    /// Label NAMESPACE/NAME quarantine=true: every node isolates it.
    Apply(PodArg),
    /// Remove the label: every node gives the pod its network back.
    Release(PodArg),
}

#[derive(clap::Args)]
struct PodArg {
    /// The pod, as NAMESPACE/NAME.
    pod: String,
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Subcommand)]
enum PolicyCommand {
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
enum ModeArg {
    Enforce,
    Monitor,
}

/// Where the daemon's API is.
#[derive(clap::Args)]
struct Server {
    /// The daemon's gRPC socket (Tetragon's flag).
    #[arg(long, default_value = DEFAULT_SERVER)]
    server_address: String,
}

const DEFAULT_SERVER: &str = "unix:///var/run/sensor/sensor.sock";

#[derive(clap::Args)]
struct GeteventsArgs {
    #[arg(short, long, value_enum, default_value = "json")]
    output: EventsOutput,
    /// Only events of pods in these namespaces.
    #[arg(long)]
    namespace: Vec<String>,
    /// Only events of pods whose name matches (regex).
    #[arg(long)]
    pod: Vec<String>,
    /// Only events of binaries that match (regex).
    #[arg(long)]
    binary: Vec<String>,
    /// Only events of these policies.
    #[arg(long)]
    policy_names: Vec<String>,
    /// Only these event types (PROCESS_EXEC, PROCESS_KPROBE, ...).
    #[arg(long)]
    event_types: Vec<String>,
    #[command(flatten)]
    server: Server,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EventsOutput {
    Json,
    Compact,
}

/// Values for `${NAME}` placeholders in policies, as Tetragon's quickstart
/// fills them with envsubst.
#[derive(clap::Args)]
struct PolicyVars {
    /// The cluster's pod CIDR (`${PODCIDR}` in policies).
    #[arg(long)]
    pod_cidr: Option<String>,
    /// The cluster's service CIDR (`${SERVICECIDR}` in policies).
    #[arg(long)]
    service_cidr: Option<String>,
}

impl PolicyVars {
    fn vars(&self) -> Vars {
        let mut v = Vars::new();
        for (name, value) in [
            ("PODCIDR", &self.pod_cidr),
            ("SERVICECIDR", &self.service_cidr),
        ] {
            if let Some(value) = value {
                v.insert(name.to_string(), value.clone());
            }
        }
        v
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// A TracingPolicy file (repeatable).
    #[arg(long = "policy")]
    policies: Vec<PathBuf>,
    /// A directory of policies; `policies` when no --policy is given.
    #[arg(long)]
    policy_dir: Option<PathBuf>,
    #[command(flatten)]
    vars: PolicyVars,
    /// What goes to stdout.
    #[arg(long, value_enum, default_value = "json")]
    output: Output,
    /// Also write JSON lines to this file, rotated by size.
    #[arg(long)]
    export_file: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    export_file_max_size_mb: u64,
    #[arg(long, default_value_t = 5)]
    export_file_max_backups: u32,
    /// Limit policy enforcement to these cgroup v2 subtrees (repeatable);
    /// relative paths are under the cgroup2 mount.
    #[arg(long = "enforce-cgroup")]
    enforce_cgroups: Vec<PathBuf>,
    /// Node name in exec_ids and events; NODE_NAME or the hostname otherwise.
    #[arg(long)]
    node_name: Option<String>,
    /// Ring buffer size in bytes: a power of two, at least one page.
    #[arg(long, default_value_t = 8 * 1024 * 1024, value_parser = ring_size)]
    ring_buffer_size: u32,
    /// Processes kept in the cache, exited ones evicted first.
    #[arg(long, default_value_t = 65536)]
    process_cache_size: usize,
    /// Count each kernel program's runs and run time; logged at stop.
    #[arg(long)]
    program_stats: bool,
    /// Kubeconfig for pod context; otherwise KUBECONFIG, ~/.kube/config or
    /// the in-cluster service account, and standalone without any.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where decisions wait until their quarantine label lands.
    #[arg(long, default_value = "/var/lib/sensor")]
    state_dir: PathBuf,
    #[command(flatten)]
    bpf: BpfDir,
    /// On SIGTERM, leave the programs, policies and quarantines pinned and
    /// enforcing for the next daemon to adopt (the DaemonSet sets this).
    /// Without it, stopping removes everything.
    #[arg(long)]
    keep_on_exit: bool,
    /// The gRPC API's unix socket (Tetragon's flag); empty turns it off.
    #[arg(long, default_value = DEFAULT_SERVER)]
    server_address: String,
}

#[derive(clap::Args)]
struct BpfDir {
    /// The bpffs directory where links and maps are pinned.
    #[arg(long, default_value = "/sys/fs/bpf/sensor")]
    bpf_dir: PathBuf,
}

fn ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n.is_power_of_two() && n >= 4096 {
        Ok(n)
    } else {
        Err(format!("{n} is not a power of two of at least 4096"))
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn node_name(arg: Option<String>) -> String {
    arg.or_else(|| std::env::var("NODE_NAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "localhost".into())
}

/// The policies a run starts with: `--policy` files, which must all load
/// (exit 2 otherwise), and the policy directory, whose files are taken or
/// refused one by one and then watched.
fn load_policies(
    args: &RunArgs,
    plan: &load::probe::Plan,
) -> Result<daemon::Policies, PolicyError> {
    let vars = args.vars.vars();
    let mut set = reconcile::PolicySet::new(plan.clone());
    for f in &args.policies {
        let mut l = Loaded::default();
        documents::load_file(f, &vars, &mut l)?;
        for (file, why) in &l.skipped {
            tracing::warn!(file = %file.display(), why, "document not loaded");
        }
        set.set(reconcile::Source::Flag(f.clone()), Some(l))?;
    }
    let dir = match (&args.policy_dir, args.policies.is_empty()) {
        (Some(dir), _) => Some(dir.clone()),
        (None, true) if std::path::Path::new("policies").is_dir() => {
            Some(PathBuf::from("policies"))
        }
        (None, true) => {
            tracing::warn!("no --policy given and no ./policies directory: no reflexes loaded");
            None
        }
        (None, false) => None,
    };
    let dir = match dir {
        Some(d) => {
            let mut w = reconcile::dir::DirWatch::new(&d).map_err(|e| PolicyError {
                file: d.clone(),
                field: "(directory)".into(),
                reason: e.to_string(),
            })?;
            w.sync(&mut set, &vars);
            Some(w)
        }
        None => None,
    };
    for (source, p) in set.policies() {
        tracing::info!(%source, policy = %p.name, hooks = p.hooks.len(), "policy loaded");
    }
    Ok(daemon::Policies { set, dir, vars })
}

fn policy_failure(e: &PolicyError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

fn run(args: RunArgs) -> ExitCode {
    let features = load::probe::Features::probe();
    if let Some(why) = features.unsupported() {
        eprintln!("error: {why}");
        return ExitCode::FAILURE;
    }
    let plan = features.plan();
    tracing::info!(
        kernel = %features.release,
        exec = ?plan.exec,
        connect = ?plan.connect,
        lsm = plan.lsm,
        "kernel probed: program forms chosen"
    );
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    // The policy directory's watch registers with the runtime.
    let _in_runtime = rt.enter();
    let policies = match load_policies(&args, &plan) {
        Ok(p) => p,
        Err(e) => return policy_failure(&e),
    };
    let opts = RunOptions {
        node_name: node_name(args.node_name),
        plan,
        output: args.output,
        export_file: args.export_file,
        export_max_bytes: args.export_file_max_size_mb.max(1) * 1024 * 1024,
        export_backups: args.export_file_max_backups,
        scope: args.enforce_cgroups,
        ring_bytes: args.ring_buffer_size,
        cache_size: args.process_cache_size,
        program_stats: args.program_stats,
        kubeconfig: args.kubeconfig,
        state_dir: args.state_dir,
        bpf_dir: Some(args.bpf.bpf_dir),
        keep_on_exit: args.keep_on_exit,
        server: match args.server_address.as_str() {
            "" => None,
            a => match control::server::socket_path(a) {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("error: --server-address {e}");
                    return ExitCode::from(2);
                }
            },
        },
    };
    match rt.block_on(daemon::run(opts, policies)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(files: &[PathBuf], vars: &Vars) -> ExitCode {
    let mut loaded = Loaded::default();
    for f in files {
        if let Err(e) = documents::load_file(f, vars, &mut loaded) {
            return policy_failure(&e);
        }
    }
    if let Err(e) = Compiled::new(&loaded.policies) {
        return policy_failure(&e);
    }
    for (file, p) in &loaded.policies {
        let selectors: usize = p.hooks.iter().map(|h| h.selectors.len()).sum();
        println!(
            "ok: {}: {} ({} hooks, {selectors} selectors)",
            file.display(),
            p.name,
            p.hooks.len()
        );
    }
    for (file, r) in &loaded.rules {
        println!("ok: {}: brain rule {}", file.display(), r.name);
    }
    for (file, why) in &loaded.skipped {
        println!("skipped: {}: {why}", file.display());
    }
    ExitCode::SUCCESS
}

fn compact(file: Option<PathBuf>) -> ExitCode {
    let input: Box<dyn BufRead> = match file.filter(|f| f.as_os_str() != "-") {
        Some(f) => match std::fs::File::open(&f) {
            Ok(h) => Box::new(std::io::BufReader::new(h)),
            Err(e) => {
                eprintln!("error: {}: {e}", f.display());
                return ExitCode::FAILURE;
            }
        },
        None => Box::new(std::io::stdin().lock()),
    };
    let mut out = std::io::stdout().lock();
    let mut bad = 0usize;
    for (n, line) in input.lines().enumerate() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<export::Envelope>(&line) {
            Ok(e) => {
                if writeln!(out, "{}", export::compact::line(&e)).is_err() {
                    break;
                }
            }
            Err(e) => {
                bad += 1;
                eprintln!("line {}: not an event: {e}", n + 1);
            }
        }
    }
    if bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `sensor probe`: the kernel's features, the forms chosen, and with
/// `--load` whether every chosen program passes this kernel's verifier.
fn probe(load: bool) -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("error: sensor probe must run as root: it loads test programs");
        return ExitCode::FAILURE;
    }
    let features = load::probe::Features::probe();
    print!("{features}");
    if !load {
        return ExitCode::SUCCESS;
    }
    let attached = load::Kernel::load(64 * 1024, &features.plan()).and_then(|mut k| {
        let root = daemon::cgroup2_root().ok_or(load::LoadError::Missing("a cgroup2 mount"))?;
        k.attach(&root)?;
        Ok(k.loaded_programs())
    });
    match attached {
        Ok(names) => {
            println!("programs verified and attached: {}", names.join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn unload(bpf_dir: &std::path::Path) -> ExitCode {
    match daemon::adopt::unload(bpf_dir) {
        Ok(sets) if sets.is_empty() => {
            println!("nothing pinned under {}", bpf_dir.display());
            ExitCode::SUCCESS
        }
        Ok(sets) => {
            for s in sets {
                println!("removed {}", s.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn status(bpf_dir: &std::path::Path) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let sets = load::pin::sets(bpf_dir);
    if sets.is_empty() {
        let _ = writeln!(out, "nothing pinned under {}", bpf_dir.display());
    }
    for set in sets {
        let state = if set.is_complete() {
            "complete"
        } else {
            "incomplete"
        };
        let _ = writeln!(out, "set {} ({state})", set.path.display());
        match load::pinned_programs(&set) {
            Ok(programs) => {
                for p in programs {
                    let _ = writeln!(
                        out,
                        "  {} program={} links={}",
                        p.name, p.program_id, p.links_in_kernel
                    );
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn policy_call(command: PolicyCommand) -> ExitCode {
    use control::client::PolicyOp;
    let (server, op) = match command {
        PolicyCommand::Check { .. } => unreachable!("checked offline"),
        PolicyCommand::Add { file, server } => (server, PolicyOp::Add(file)),
        PolicyCommand::Delete { name, server } => (server, PolicyOp::Delete(name)),
        PolicyCommand::List { json, server } => (server, PolicyOp::List { json }),
        PolicyCommand::Enable { name, server } => (server, PolicyOp::Enable(name, true)),
        PolicyCommand::Disable { name, server } => (server, PolicyOp::Enable(name, false)),
        PolicyCommand::Mode { name, mode, server } => (
            server,
            PolicyOp::Mode(
                name,
                match mode {
                    ModeArg::Enforce => policy::Mode::Enforce,
                    ModeArg::Monitor => policy::Mode::Monitor,
                },
            ),
        ),
    };
    match runtime() {
        Ok(rt) => rt.block_on(control::client::policy(&server.server_address, op)),
        Err(code) => code,
    }
}

fn getevents(a: GeteventsArgs) -> ExitCode {
    let q = control::client::EventQuery {
        compact: a.output == EventsOutput::Compact,
        namespace: a.namespace,
        pod: a.pod,
        binary: a.binary,
        policy_names: a.policy_names,
        event_types: a.event_types,
    };
    match runtime() {
        Ok(rt) => rt.block_on(control::client::getevents(&a.server.server_address, q)),
        Err(code) => code,
    }
}

/// The single-threaded runtime the daemon and the API commands run on.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: starting the runtime: {e}");
            ExitCode::FAILURE
        })
}

fn quarantine(arg: &PodArg, apply: bool) -> ExitCode {
    let Some((ns, name)) = arg.pod.split_once('/') else {
        eprintln!("error: {}: give the pod as NAMESPACE/NAME", arg.pod);
        return ExitCode::from(2);
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        let client = enrich::kube::client(arg.kubeconfig.as_deref())
            .await
            .ok_or_else(|| "no Kubernetes configuration".to_string())?;
        antibody::label::by_hand(client, ns, name, apply).await
    });
    match result {
        Ok(()) => {
            println!(
                "{}: {}",
                arg.pod,
                if apply {
                    "quarantine=true"
                } else {
                    "quarantine label removed"
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", arg.pod);
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run(args) => run(args),
        Command::Policy {
            command: PolicyCommand::Check { files, vars },
        } => check(&files, &vars.vars()),
        Command::Policy { command } => policy_call(command),
        Command::Getevents(a) => getevents(a),
        Command::Compact { file } => compact(file),
        Command::Unload(d) => unload(&d.bpf_dir),
        Command::Status(d) => status(&d.bpf_dir),
        Command::Probe { load } => probe(load),
        Command::Quarantine {
            command: QuarantineCommand::Apply(p),
        } => quarantine(&p, true),
        Command::Quarantine {
            command: QuarantineCommand::Release(p),
        } => quarantine(&p, false),
    }
}
