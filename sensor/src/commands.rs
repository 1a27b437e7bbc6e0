//! What each subcommand does; `main` picks one.
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use sensor::daemon::{self, RunOptions};
use sensor::documents::{self, Loaded, Vars};
use sensor::policy::{self, Compiled, PolicyError};
use sensor::{antibody, control, enrich, export, load, reconcile};

use crate::cli::*;

pub fn init_logging(format: LogFormat) {
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

pub fn run(args: RunArgs) -> ExitCode {
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
    let export_flags = match sensor::export::shape::ExportFlags::parse(
        &args.export_allowlist,
        &args.export_denylist,
        &args.field_filters,
        args.export_rate_limit,
        args.enable_ancestors,
    ) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = RunOptions {
        node_name: node_name(args.node_name),
        plan,
        output: args.output,
        export_file: args.export_file,
        export_max_bytes: args.export_file_max_size_mb.max(1) * 1024 * 1024,
        export_backups: args.export_file_max_backups,
        export_rotation: Some(args.export_file_rotation_interval).filter(|d| !d.is_zero()),
        export_flags,
        scope: args.enforce_cgroups,
        sizes: load::Sizes {
            ring_bytes: args.ring_buffer_size,
            process_states: args.process_states,
        },
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
        metrics_server: Some(args.metrics_server).filter(|a| !a.is_empty()),
        metrics_labels: args.metrics_label_filter,
        health_server: Some(args.health_server_address).filter(|a| !a.is_empty()),
        ancestors: args.enable_ancestors,
        process_cred: args.enable_process_cred,
        process_ns: args.enable_process_ns,
    };
    match rt.block_on(daemon::run(opts, policies)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn check(files: &[PathBuf], vars: &Vars) -> ExitCode {
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

pub fn compact(file: Option<PathBuf>) -> ExitCode {
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
pub fn probe(load: bool) -> ExitCode {
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
    let attached = load::Kernel::load(
        load::Sizes {
            ring_bytes: 64 * 1024,
            process_states: 1024,
        },
        &features.plan(),
    )
    .and_then(|mut k| {
        let root = daemon::cgroup2_root().ok_or(load::LoadError::Missing("a cgroup2 mount"))?;
        k.attach(&root)?;
        // Attached on demand in a daemon; verified here with the rest.
        for p in load::OnDemand::ALL {
            k.on_demand(p, true)?;
        }
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

pub fn unload(bpf_dir: &std::path::Path) -> ExitCode {
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

pub fn status(bpf_dir: &std::path::Path) -> ExitCode {
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

pub fn policy_call(command: PolicyCommand) -> ExitCode {
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

pub fn getevents(a: GeteventsArgs) -> ExitCode {
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

pub fn quarantine(arg: &PodArg, apply: bool) -> ExitCode {
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
