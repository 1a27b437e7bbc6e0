//! `sensor getevents` and `sensor policy add|delete|list|enable|disable|mode`:
//! clients of the daemon's API, as `tetra` is of Tetragon's. A policy the
//! daemon refuses exits with status 2 and the daemon's reason, as
//! `sensor policy check` would.
use std::io::Write;
use std::process::ExitCode;

use hyper_util::rt::TokioIo;
use sensor_api::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use sensor_api::tetragon::*;
use tonic::transport::{Channel, Endpoint};

use super::server::socket_path;

pub async fn connect(address: &str) -> Result<FineGuidanceSensorsClient<Channel>, String> {
    let path = socket_path(address)?;
    let shown = path.display().to_string();
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://sensor.local")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .map_err(|e| format!("connecting to {shown}: {e}"))?;
    Ok(FineGuidanceSensorsClient::new(channel))
}

/// How a failed call ends the command: a refused policy is bad input (2).
pub fn failure(e: &tonic::Status) -> ExitCode {
    eprintln!("error: {}", e.message());
    match e.code() {
        tonic::Code::InvalidArgument => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// What a policy command asks of the daemon.
pub enum PolicyOp {
    Add(std::path::PathBuf),
    Delete(String),
    List { json: bool },
    Enable(String, bool),
    Mode(String, crate::policy::Mode),
}

pub async fn policy(address: &str, op: PolicyOp) -> ExitCode {
    let mut c = match connect(address).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = match op {
        PolicyOp::Add(file) => {
            let yaml = match std::fs::read_to_string(&file) {
                Ok(y) => y,
                Err(e) => {
                    eprintln!("error: {}: {e}", file.display());
                    return ExitCode::from(2);
                }
            };
            c.add_tracing_policy(AddTracingPolicyRequest { yaml })
                .await
                .map(|_| println!("{}: added", file.display()))
        }
        PolicyOp::Delete(name) => c
            .delete_tracing_policy(DeleteTracingPolicyRequest {
                name: name.clone(),
                namespace: String::new(),
            })
            .await
            .map(|_| println!("{name}: deleted")),
        PolicyOp::Enable(name, on) => c
            .configure_tracing_policy(ConfigureTracingPolicyRequest {
                name: name.clone(),
                enable: Some(on),
                ..Default::default()
            })
            .await
            .map(|_| println!("{name}: {}", if on { "enabled" } else { "disabled" })),
        PolicyOp::Mode(name, mode) => {
            let m = match mode {
                crate::policy::Mode::Enforce => TracingPolicyMode::TpModeEnforce,
                crate::policy::Mode::Monitor => TracingPolicyMode::TpModeMonitor,
            };
            c.configure_tracing_policy(ConfigureTracingPolicyRequest {
                name: name.clone(),
                mode: Some(m as i32),
                ..Default::default()
            })
            .await
            .map(|_| println!("{name}: {}", m.as_str_name()))
        }
        PolicyOp::List { json } => c
            .list_tracing_policies(ListTracingPoliciesRequest {})
            .await
            .map(|r| print_list(&r.into_inner(), json)),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failure(&e),
    }
}

fn print_list(r: &ListTracingPoliciesResponse, json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    let _ = writeln!(
        out,
        "{:<4} {:<28} {:<9} {:<12} {:<8} {:>8} {:>8} {:>8}  SOURCE",
        "ID", "NAME", "STATE", "NAMESPACE", "MODE", "POST", "SIGNAL", "MEMORY"
    );
    for p in &r.policies {
        let state = TracingPolicyState::try_from(p.state)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("TP_STATE_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        let mode = TracingPolicyMode::try_from(p.mode)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("TP_MODE_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        let c = p
            .stats
            .as_ref()
            .and_then(|s| s.action_counters)
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<4} {:<28} {:<9} {:<12} {:<8} {:>8} {:>8} {:>8}  {}",
            p.id,
            p.name,
            state,
            p.namespace,
            mode,
            c.post,
            c.signal + c.monitor_signal,
            p.kernel_memory_bytes,
            p.info
        );
    }
}

/// Which events `sensor getevents` asks for.
#[derive(Default)]
pub struct EventQuery {
    pub compact: bool,
    pub namespace: Vec<String>,
    pub pod: Vec<String>,
    pub binary: Vec<String>,
    pub policy_names: Vec<String>,
    pub event_types: Vec<String>,
}

pub async fn getevents(address: &str, q: EventQuery) -> ExitCode {
    let mut event_set = Vec::new();
    for t in &q.event_types {
        match EventType::from_str_name(&t.to_uppercase()) {
            Some(e) => event_set.push(e as i32),
            None => {
                eprintln!("error: --event-types {t}: not an event type (PROCESS_EXEC, PROCESS_EXIT, PROCESS_KPROBE, PROCESS_TRACEPOINT, PROCESS_LSM)");
                return ExitCode::from(2);
            }
        }
    }
    let filter = Filter {
        namespace: q.namespace,
        pod_regex: q.pod,
        binary_regex: q.binary,
        policy_names: q.policy_names,
        event_set,
        ..Default::default()
    };
    let allow_list = if filter == Filter::default() {
        Vec::new()
    } else {
        vec![filter]
    };
    let mut c = match connect(address).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stream = match c
        .get_events(GetEventsRequest {
            allow_list,
            ..Default::default()
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(e) => return failure(&e),
    };
    let mut out = std::io::stdout().lock();
    loop {
        match stream.message().await {
            Ok(Some(e)) => {
                let json = serde_json::to_string(&e).unwrap_or_default();
                let line = match q.compact {
                    true => serde_json::from_str::<crate::export::Envelope>(&json)
                        .map(|env| crate::export::compact::line(&env))
                        .unwrap_or(json),
                    false => json,
                };
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return ExitCode::SUCCESS;
                }
            }
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => return failure(&e),
        }
    }
}
