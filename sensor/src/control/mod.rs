//! The control API: Tetragon's `FineGuidanceSensors` gRPC service on a unix
//! socket (`server`), its event filters (`filter`), and the `sensor`
//! commands that are its clients (`client`). A call that changes policies
//! is carried out by the daemon's loop (it owns the policy set and the
//! kernel), through [`Request`]s; it is in the kernel when the reply comes.
pub mod client;
pub mod server;

use std::path::PathBuf;

use sensor_api::tetragon::{
    TracingPolicyActionCounters, TracingPolicyMode, TracingPolicyState, TracingPolicyStats,
    TracingPolicyStatus,
};
use tokio::sync::oneshot;
use tonic::Status;

use crate::documents::{self, Loaded, Vars};
use crate::metrics::ActionCounters;
use crate::policy::{Compiled, Mode, Policy};
use crate::reconcile::{Active, PolicySet, Source};

/// A policy call, for the daemon's loop.
pub enum Call {
    /// Add (or replace, when the API added it before) the policies of a
    /// YAML document set.
    Add {
        yaml: String,
    },
    Delete {
        name: String,
    },
    List,
    Configure {
        name: String,
        enable: Option<bool>,
        mode: Option<Mode>,
    },
}

pub enum Reply {
    Done,
    Policies(Vec<TracingPolicyStatus>),
}

pub struct Request {
    pub call: Call,
    pub reply: oneshot::Sender<Result<Reply, Status>>,
}

/// Carries out `call` on the policy set. Returns the reply and, when the
/// set changed, what must be put in force.
pub fn handle(
    set: &mut PolicySet,
    vars: &Vars,
    call: Call,
    counters: &dyn Fn(&str) -> ActionCounters,
) -> (Result<Reply, Status>, Option<Active>) {
    let refused = |e: crate::policy::PolicyError| Status::invalid_argument(e.to_string());
    match call {
        Call::Add { yaml } => {
            let name = document_name(&yaml);
            let mut l = Loaded::default();
            let label = PathBuf::from(if name.is_empty() { "(api)" } else { &name });
            if let Err(e) = documents::load_text(&label, &yaml, vars, &mut l) {
                return (Err(refused(e)), None);
            }
            if l.policies.is_empty() && l.rules.is_empty() {
                return (
                    Err(Status::invalid_argument(
                        "the YAML holds no TracingPolicy and no BrainRule",
                    )),
                    None,
                );
            }
            match set.set(Source::Api(name), Some(l)) {
                Ok(a) => (Ok(Reply::Done), Some(a)),
                Err(e) => (Err(refused(e)), None),
            }
        }
        Call::Delete { name } => match set.source_of(&name).cloned() {
            Some(source @ Source::Api(_)) => match set.set(source, None) {
                Ok(a) => (Ok(Reply::Done), Some(a)),
                Err(e) => (Err(refused(e)), None),
            },
            Some(other) => (
                Err(Status::failed_precondition(format!(
                    "policy {name} comes from {other}; remove it there"
                ))),
                None,
            ),
            None => (Err(not_found(&name)), None),
        },
        Call::List => (Ok(Reply::Policies(list(set, counters))), None),
        Call::Configure { name, enable, mode } => {
            if set.source_of(&name).is_none() {
                return (Err(not_found(&name)), None);
            }
            let mut active = None;
            if let Some(on) = enable {
                match set.enable(&name, on) {
                    Ok(a) => active = Some(a),
                    Err(e) => return (Err(refused(e)), None),
                }
            }
            if let Some(m) = mode {
                match set.set_mode(&name, m) {
                    Ok(a) => active = Some(a),
                    Err(e) => return (Err(refused(e)), active),
                }
            }
            (Ok(Reply::Done), active)
        }
    }
}

fn not_found(name: &str) -> Status {
    Status::not_found(format!("no policy named {name}"))
}

/// `metadata.name` of the first document, for error messages and as the
/// key of what the API added.
fn document_name(yaml: &str) -> String {
    serde_yaml::from_str::<serde_yaml::Value>(yaml)
        .ok()
        .and_then(|v| v.get("metadata")?.get("name")?.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn list(set: &PolicySet, counters: &dyn Fn(&str) -> ActionCounters) -> Vec<TracingPolicyStatus> {
    set.policies()
        .enumerate()
        .map(|(i, (source, p))| {
            let enabled = set.is_enabled(&p.name);
            let c = counters(&p.name);
            TracingPolicyStatus {
                id: i as u64 + 1,
                name: p.name.clone(),
                namespace: p.namespace.clone().unwrap_or_default(),
                info: source.to_string(),
                sensors: sensors(p),
                enabled,
                filter_id: 0,
                error: String::new(),
                state: if enabled {
                    TracingPolicyState::TpStateEnabled
                } else {
                    TracingPolicyState::TpStateDisabled
                } as i32,
                kernel_memory_bytes: kernel_bytes(p),
                mode: match set.mode_of(p) {
                    Mode::Enforce => TracingPolicyMode::TpModeEnforce,
                    Mode::Monitor => TracingPolicyMode::TpModeMonitor,
                } as i32,
                stats: Some(TracingPolicyStats {
                    action_counters: Some(TracingPolicyActionCounters {
                        post: c.post,
                        signal: c.signal,
                        monitor_signal: c.monitor_signal,
                        r#override: c.overrides,
                        monitor_override: c.monitor_override,
                        ..Default::default()
                    }),
                }),
            }
        })
        .collect()
}

/// Tetragon's sensor names for the hooks a policy uses.
fn sensors(p: &Policy) -> Vec<String> {
    let mut v: Vec<String> = p
        .hooks
        .iter()
        .map(|h| match h.point {
            crate::policy::HookPoint::Kprobe { .. } => "generic_kprobe",
            crate::policy::HookPoint::Lsm { .. } => "generic_lsm",
            crate::policy::HookPoint::Tracepoint { .. } => "generic_tracepoint",
        })
        .map(String::from)
        .collect();
    v.dedup();
    v
}

/// The policy's share of the kernel's maps: its selectors and the keys of
/// its values. The maps themselves are shared by all policies.
fn kernel_bytes(p: &Policy) -> u64 {
    use sensor_common::{ExecSelector, NetSelector, NetValueKey, NET_ADDR_KEY_LEN, STR_KEY_LEN};
    let Ok(c) = Compiled::new(&[(PathBuf::new(), p.clone())]) else {
        return 0;
    };
    let size = std::mem::size_of::<ExecSelector>() * c.selectors.len()
        + std::mem::size_of::<NetSelector>() * c.net_selectors.len()
        + (STR_KEY_LEN + 1) * (c.equal.len() + c.prefix.len() + c.postfix.len())
        + (NET_ADDR_KEY_LEN + 5) * c.net_addrs.len()
        + (std::mem::size_of::<NetValueKey>() + 1) * c.net_values.len();
    size as u64
}
