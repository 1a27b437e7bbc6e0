//! The TracingPolicy YAML schema as Tetragon documents it, deserialised as-is.
//! Unknown fields are refused here; fields Tetragon knows but this sensor does
//! not implement are kept as raw values so that `parse` can name them with the
//! reason instead of ignoring them.
use serde::Deserialize;
use serde_yaml::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: RawMetadata,
    pub spec: RawSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
// Some fields are accepted for compatibility and not acted on (metadata,
// `syscall`, `label`) or kept only so that `parse` refuses them by name.
#[allow(dead_code)]
pub struct RawMetadata {
    pub name: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: Option<Value>,
    #[serde(default)]
    pub annotations: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSpec {
    #[serde(default)]
    pub kprobes: Vec<RawKprobe>,
    #[serde(default)]
    pub tracepoints: Vec<RawTracepoint>,
    #[serde(default)]
    pub lsmhooks: Vec<RawLsmHook>,
    // Known to Tetragon, refused by `parse` with a reason.
    pub uprobes: Option<Value>,
    pub usdts: Option<Value>,
    pub fentries: Option<Value>,
    pub enforcers: Option<Value>,
    pub lists: Option<Value>,
    pub options: Option<Value>,
    pub pod_selector: Option<super::selector_labels::RawLabelSelector>,
    pub container_selector: Option<Value>,
    pub host_selector: Option<Value>,
    pub node_selector: Option<Value>,
    pub selectors_macros: Option<Value>,
    pub loader: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
// Some fields are accepted for compatibility and not acted on (metadata,
// `syscall`, `label`) or kept only so that `parse` refuses them by name.
#[allow(dead_code)]
pub struct RawKprobe {
    pub call: String,
    pub syscall: Option<bool>,
    #[serde(rename = "return")]
    pub return_: Option<bool>,
    #[serde(default)]
    pub args: Vec<RawArg>,
    #[serde(default)]
    pub selectors: Vec<RawSelector>,
    pub message: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub return_arg: Option<Value>,
    pub return_arg_action: Option<Value>,
    pub data: Option<Value>,
    pub ignore: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTracepoint {
    pub subsystem: String,
    pub event: String,
    pub raw: Option<bool>,
    #[serde(default)]
    pub args: Vec<RawArg>,
    #[serde(default)]
    pub selectors: Vec<RawSelector>,
    pub message: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawLsmHook {
    pub hook: String,
    #[serde(default)]
    pub args: Vec<RawArg>,
    #[serde(default)]
    pub selectors: Vec<RawSelector>,
    pub message: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
// Some fields are accepted for compatibility and not acted on (metadata,
// `syscall`, `label`) or kept only so that `parse` refuses them by name.
#[allow(dead_code)]
pub struct RawArg {
    pub index: u32,
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub label: Option<String>,
    pub resolve: Option<Value>,
    pub btf_type: Option<Value>,
    pub size_arg_index: Option<Value>,
    pub return_copy: Option<Value>,
    pub max_data: Option<Value>,
    pub source: Option<Value>,
}

/// A `matchPIDs` entry; values are numbers or numeric strings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMatchPid {
    pub operator: String,
    #[serde(default)]
    pub follow_forks: bool,
    #[serde(rename = "isNamespacePID", default)]
    pub is_namespace_pid: bool,
    #[serde(default)]
    pub values: Vec<Value>,
}

/// A `matchNamespaces` entry; values are inode numbers (numbers or
/// numeric strings) or `host_ns`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMatchNamespace {
    pub namespace: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSelector {
    #[serde(default)]
    pub match_binaries: Vec<RawMatchBinaries>,
    #[serde(default)]
    pub match_args: Vec<RawMatchArg>,
    #[serde(default)]
    pub match_actions: Vec<RawAction>,
    #[serde(rename = "matchPIDs", default)]
    pub match_pids: Vec<RawMatchPid>,
    pub match_data: Option<Value>,
    #[serde(default)]
    pub match_return_args: Vec<RawMatchArg>,
    pub match_parent_binaries: Option<Value>,
    #[serde(default)]
    pub match_namespaces: Vec<RawMatchNamespace>,
    pub match_capabilities: Option<Value>,
    pub match_namespace_changes: Option<Value>,
    pub match_capability_changes: Option<Value>,
    pub match_workloads: Option<Value>,
    pub match_return_actions: Option<Value>,
    pub macros: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMatchBinaries {
    pub operator: String,
    pub values: Vec<String>,
    pub follow_children: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMatchArg {
    pub index: Option<u32>,
    pub args: Option<Vec<u32>>,
    pub operator: String,
    pub values: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
// Some fields are accepted for compatibility and not acted on (metadata,
// `syscall`, `label`) or kept only so that `parse` refuses them by name.
#[allow(dead_code)]
pub struct RawAction {
    pub action: String,
    pub arg_sig: Option<u32>,
    pub arg_error: Option<i32>,
    pub rate_limit: Option<Value>,
    pub rate_limit_scope: Option<Value>,
    pub kernel_stack_trace: Option<Value>,
    pub user_stack_trace: Option<Value>,
    pub ima_hash: Option<Value>,
    pub arg_url: Option<Value>,
    pub arg_fqdn: Option<Value>,
    pub arg_sock: Option<Value>,
    pub arg_fd: Option<Value>,
    pub arg_name: Option<Value>,
    pub arg_index: Option<Value>,
    pub arg_value: Option<Value>,
}
