//! Tetragon's event schema (`api/v1/tetragon`): the protojson form of
//! `GetEventsResponse`, so existing pipelines read this sensor's output. Field
//! names, enum strings and omission of empty fields follow protojson.
use serde::{Deserialize, Serialize};
use std::sync::Arc;

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// audit's "no login uid".
pub const AUID_UNSET: u32 = u32::MAX;

fn auid_unset() -> u32 {
    AUID_UNSET
}

/// One JSON line: exactly one event plus `node_name` and `time`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    #[serde(flatten)]
    pub event: Event,
    pub node_name: String,
    pub time: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::enum_variant_names)] // the names are Tetragon's event keys
pub enum Event {
    ProcessExec(ProcessExec),
    ProcessExit(ProcessExit),
    ProcessKprobe(ProcessKprobe),
    ProcessLsm(ProcessLsm),
    ProcessTracepoint(ProcessTracepoint),
    /// This sensor's own: a quarantine step and its outcome.
    SensorQuarantine(QuarantineEvent),
    /// This sensor's own: a brain rule fired.
    SensorAlert(AlertEvent),
}

/// A brain rule that fired, with the process (and parent) that made it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlertEvent {
    pub rule: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub process: Process,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Process>,
    pub exec_ids: Vec<String>,
    /// Action `kill`: the exec ids of the processes killed (the offender
    /// and what it started).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub killed: Vec<String>,
    /// For a loss: how many records were not sent.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub count: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// A step of a quarantine: `stage` "node" (kernel isolation) or "label"
/// (the Kubernetes label), and how it went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuarantineEvent {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    pub pod_uid: String,
    pub rule: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec_ids: Vec<String>,
    pub stage: String,
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Tetragon's `Process` message, with the fields this sensor fills.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Process {
    /// Shared with the process cache's indexes and the children's
    /// `parent_exec_id`: one allocation per process, not four.
    pub exec_id: Arc<str>,
    pub pid: u32,
    pub uid: u32,
    /// The login uid (audit's `auid`); 4294967295 when unset, as Tetragon
    /// reports it.
    #[serde(default = "auid_unset")]
    pub auid: u32,
    // The strings are shared: a fork's with its parent, and the cache
    // interns binaries, directories and flags across processes.
    #[serde(default, skip_serializing_if = "str_is_empty")]
    pub cwd: Arc<str>,
    pub binary: Arc<str>,
    #[serde(default, skip_serializing_if = "str_is_empty")]
    pub arguments: Arc<str>,
    #[serde(default, skip_serializing_if = "str_is_empty")]
    pub flags: Arc<str>,
    pub start_time: String,
    #[serde(default, skip_serializing_if = "str_is_empty")]
    pub parent_exec_id: Arc<str>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tid: u32,
    /// `--enable-process-cred`; boxed, as `pod`, since most runs go without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_credentials: Option<Box<super::creds::ProcessCredentials>>,
    /// Set-ID executions, raised privileges, unnamed binaries; boxed, as
    /// most execs have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_properties: Option<Box<super::binary::BinaryProperties>>,
    /// A container's init or one of its descendants (Tetragon's); `None`
    /// where unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_init_tree: Option<bool>,
    /// `--enable-process-ns`; boxed for the same reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns: Option<Box<super::ns::Namespaces>>,
    /// Boxed: most of a node's processes are outside pods, and a process
    /// cache entry should not carry a pod's worth of empty fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Box<Pod>>,
    /// The container id's first 31 characters, as Tetragon fills it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub docker: String,
    /// The process's cgroup v2 id: how it is tied to a container. Not exported.
    #[serde(skip)]
    pub cgroup_id: u64,
}

/// Tetragon's `Pod`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    #[serde(default, skip_serializing_if = "no_labels")]
    pub pod_labels: Labels,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workload: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workload_kind: String,
}

/// A pod's labels, shared by the pod store and every event and cached
/// process of the pod: a pod with many labels costs one copy, not one per
/// event.
pub type Labels = std::sync::Arc<std::collections::BTreeMap<String, String>>;

fn str_is_empty(s: &Arc<str>) -> bool {
    s.is_empty()
}

fn no_labels(l: &Labels) -> bool {
    l.is_empty()
}

impl Pod {
    /// Whether the Kubernetes watcher knew the pod (its name and namespace
    /// are filled), rather than only its cgroup path telling its uid.
    pub fn is_known(&self) -> bool {
        !self.name.is_empty()
    }
}

/// Tetragon's `Container`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Container {
    /// With the runtime's scheme, as the pod status has it (`containerd://...`).
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub start_time: String,
}

/// Tetragon's `Image`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Image {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessExec {
    pub process: Process,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Process>,
    /// The lineage beyond `parent`, oldest last (Tetragon's
    /// `--enable-ancestors`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<Process>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessExit {
    pub process: Process,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Process>,
    /// The lineage beyond `parent`, oldest last (Tetragon's
    /// `--enable-ancestors`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<Process>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signal: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub status: u32,
    pub time: String,
}

impl Event {
    /// The event's name in the JSON stream and in counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ProcessExec(_) => "process_exec",
            Event::ProcessExit(_) => "process_exit",
            Event::ProcessKprobe(_) => "process_kprobe",
            Event::ProcessLsm(_) => "process_lsm",
            Event::ProcessTracepoint(_) => "process_tracepoint",
            Event::SensorQuarantine(_) => "sensor_quarantine",
            Event::SensorAlert(_) => "sensor_alert",
        }
    }
}

/// `KprobeArgument`: one of its `*_arg` fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::enum_variant_names)] // the names are Tetragon's field names
pub enum Argument {
    StringArg(String),
    LinuxBinprmArg(BinprmArg),
    SockArg(SockArg),
    SkbArg(SkbArg),
    SockaddrArg(SockaddrArg),
    IntArg(i32),
    UintArg(u32),
    /// protojson writes 64-bit integers as strings.
    SizeArg(String),
    LongArg(String),
    SyscallId(SyscallIdArg),
    /// protojson writes bytes as base64.
    BytesArg(String),
    TruncatedBytesArg(TruncatedBytesArg),
    FileArg(FileArg),
}

/// `KprobeFile`: its path (mount, flags and permission are not filled).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileArg {
    pub path: String,
}

/// `KprobeTruncatedBytes`: the bytes kept, and how many there were.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TruncatedBytesArg {
    /// base64.
    pub bytes_arg: String,
    /// protojson writes 64-bit integers as strings.
    pub orig_size: String,
}

/// `SyscallId`: a syscall number and its ABI (`x64`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SyscallIdArg {
    pub id: u32,
    pub abi: String,
}

/// `KprobeSock`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SockArg {
    pub family: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub protocol: String,
    pub saddr: String,
    pub daddr: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sport: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dport: u32,
    /// The TCP state (`TCP_ESTABLISHED`), where the hook reads it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
}

/// `KprobeSkb`: a packet's IP header and ports, and what the kernel
/// keeps with it. `proto` is the protocol's number, `protocol` its name.
/// (`sec_path_len` and `sec_path_olen`, IPsec state, are not read.)
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SkbArg {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hash: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub len: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mark: u32,
    pub saddr: String,
    pub daddr: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sport: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dport: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub proto: u32,
    pub protocol: String,
    pub family: String,
}

/// `KprobeSockaddr`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SockaddrArg {
    pub family: String,
    pub addr: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BinprmArg {
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessKprobe {
    pub process: Process,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Process>,
    /// The lineage beyond `parent`, oldest last (Tetragon's
    /// `--enable-ancestors`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<Process>,
    pub function_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Argument>,
    /// Tetragon's `return`, with the policy's `returnArg`.
    #[serde(default, rename = "return", skip_serializing_if = "Option::is_none")]
    pub return_: Option<Argument>,
    pub action: String,
    pub policy_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessLsm {
    pub process: Process,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Process>,
    /// The lineage beyond `parent`, oldest last (Tetragon's
    /// `--enable-ancestors`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<Process>,
    pub function_name: String,
    pub policy_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Argument>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The binary's IMA hash, `algorithm:hex` (Post's `imaHash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ima_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessTracepoint {
    pub process: Process,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Process>,
    /// The lineage beyond `parent`, oldest last (Tetragon's
    /// `--enable-ancestors`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<Process>,
    pub subsys: String,
    pub event: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Argument>,
    pub policy_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl Event {
    /// Every process the event shows (the process, its parent, its
    /// ancestors), for enrichment.
    pub fn processes_mut(&mut self) -> Vec<&mut Process> {
        let (process, parent, ancestors) = match self {
            Event::ProcessExec(e) => (&mut e.process, e.parent.as_mut(), &mut e.ancestors),
            Event::ProcessExit(e) => (&mut e.process, e.parent.as_mut(), &mut e.ancestors),
            Event::ProcessKprobe(e) => (&mut e.process, e.parent.as_mut(), &mut e.ancestors),
            Event::ProcessLsm(e) => (&mut e.process, e.parent.as_mut(), &mut e.ancestors),
            Event::ProcessTracepoint(e) => (&mut e.process, e.parent.as_mut(), &mut e.ancestors),
            Event::SensorAlert(e) => {
                return std::iter::once(&mut e.process)
                    .chain(e.parent.as_mut())
                    .collect()
            }
            Event::SensorQuarantine(_) => return Vec::new(),
        };
        std::iter::once(process)
            .chain(parent)
            .chain(ancestors.iter_mut())
            .collect()
    }

    /// Where the event's ancestors go, for the kinds that carry them.
    pub fn ancestors_mut(&mut self) -> Option<&mut Vec<Process>> {
        match self {
            Event::ProcessExec(e) => Some(&mut e.ancestors),
            Event::ProcessExit(e) => Some(&mut e.ancestors),
            Event::ProcessKprobe(e) => Some(&mut e.ancestors),
            Event::ProcessLsm(e) => Some(&mut e.ancestors),
            Event::ProcessTracepoint(e) => Some(&mut e.ancestors),
            Event::SensorAlert(_) | Event::SensorQuarantine(_) => None,
        }
    }

    /// The process the event is about, if it is about one.
    pub fn process(&self) -> Option<&Process> {
        Some(match self {
            Event::ProcessExec(e) => &e.process,
            Event::ProcessExit(e) => &e.process,
            Event::ProcessKprobe(e) => &e.process,
            Event::ProcessLsm(e) => &e.process,
            Event::ProcessTracepoint(e) => &e.process,
            Event::SensorAlert(e) => &e.process,
            Event::SensorQuarantine(_) => return None,
        })
    }
}

/// Tetragon's `KprobeAction` enum string for what a selector did, the
/// strongest first.
pub fn action_name(signal: Option<u32>, errno: Option<u32>) -> &'static str {
    match (signal, errno) {
        (Some(9), _) => "KPROBE_ACTION_SIGKILL",
        (_, Some(_)) => "KPROBE_ACTION_OVERRIDE",
        (Some(_), None) => "KPROBE_ACTION_SIGNAL",
        (None, None) => "KPROBE_ACTION_POST",
    }
}

/// The name Tetragon gives a signal in `process_exit.signal`.
pub fn signal_name(sig: u32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match NAMES.get(sig as usize) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("SIG{sig}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_serialises_as_protojson() {
        let e = Envelope {
            event: Event::ProcessExit(ProcessExit {
                process: Process {
                    exec_id: "bm9kZToxOjI=".into(),
                    pid: 2,
                    binary: "/usr/bin/curl".into(),
                    start_time: "2026-01-01T00:00:00Z".into(),
                    ..Default::default()
                },
                parent: None,
                ancestors: Vec::new(),
                signal: signal_name(9),
                status: 0,
                time: "2026-01-01T00:00:01Z".into(),
            }),
            node_name: "node".into(),
            time: "2026-01-01T00:00:01Z".into(),
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["process_exit"]["signal"], "SIGKILL");
        assert!(
            v["process_exit"].get("status").is_none(),
            "zero status is omitted"
        );
        assert_eq!(v["process_exit"]["process"]["binary"], "/usr/bin/curl");
        assert_eq!(v["node_name"], "node");
        let back: Envelope = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn kprobe_args_use_tetragon_field_names() {
        let a = serde_json::to_value(Argument::LinuxBinprmArg(BinprmArg { path: "/x".into() }))
            .unwrap();
        assert_eq!(a, serde_json::json!({"linux_binprm_arg": {"path": "/x"}}));
        assert_eq!(action_name(Some(9), None), "KPROBE_ACTION_SIGKILL");
        assert_eq!(action_name(None, Some(1)), "KPROBE_ACTION_OVERRIDE");
        assert_eq!(signal_name(15), "SIGTERM");
    }
}
