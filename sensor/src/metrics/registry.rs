//! The Prometheus registry: Tetragon's metric names and labels where Tetragon
//! has the metric (so its Grafana dashboards work unchanged), and this
//! sensor's own under `sensor_`. Every family is behind atomics, so the
//! stages update it where things happen and the scrape server reads it from
//! another task without asking the loop.
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::labels::LabelFilter;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub r#type: String,
    pub namespace: String,
    pub workload: String,
    pub pod: String,
    pub binary: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyEventLabels {
    pub policy: String,
    pub hook: String,
    pub namespace: String,
    pub workload: String,
    pub pod: String,
    pub binary: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MsgOp {
    pub msg_op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MsgOpError {
    pub msg_op: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct State {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refusal {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapName {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabels {
    pub policy: String,
    pub policy_namespace: String,
    pub sensor: String,
    pub attach: String,
    pub section: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Operation {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub commit: String,
    pub go_version: String,
    pub modified: String,
    pub time: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleName {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuarantineLabels {
    pub rule: String,
    pub stage: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub result: String,
}

/// Every family the sensor exports. Cloning shares it.
#[derive(Clone)]
pub struct Telemetry(Arc<Families>);

pub struct Families {
    pub labels: LabelFilter,
    pub events: Family<EventLabels, Counter>,
    pub policy_events: Family<PolicyEventLabels, Counter>,
    pub missed: Family<MsgOp, Counter>,
    pub bpf_missed: Family<MsgOpError, Counter>,
    pub ringbuf_lost: Counter,
    /// Routine records not sent because their cgroup was over budget.
    pub records_suppressed: Counter,
    pub ringbuf_received: Counter,
    pub cache_size: Gauge,
    pub cache_capacity: Gauge,
    pub cache_evictions: Counter,
    pub cache_misses: Family<Operation, Counter>,
    pub policies_loaded: Family<State, Gauge>,
    pub map_entries: Family<MapName, Gauge>,
    pub map_capacity: Family<MapName, Gauge>,
    pub program_runs: Family<ProgramLabels, Counter>,
    pub program_seconds: Family<ProgramLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub errors: Family<Kind, Counter>,
    pub export_dropped: Counter,
    pub exported: Counter,
    pub build_info: Family<BuildLabels, Gauge>,
    pub rule_matches: Family<RuleName, Counter>,
    pub alerts: Family<RuleName, Counter>,
    pub quarantines: Family<QuarantineLabels, Counter>,
    pub label_patches: Family<Outcome, Counter>,
    pub pending_labels: Gauge,
    pub quarantined_cgroups: Gauge,
    pub quarantine_refusals: Family<Refusal, Counter>,
    pub decision_seconds: Histogram,
    registry: Registry,
}

impl Default for Telemetry {
    /// A registry nobody scrapes: stages count into it all the same.
    fn default() -> Self {
        Telemetry::new(LabelFilter::default())
    }
}

impl std::ops::Deref for Telemetry {
    type Target = Families;
    fn deref(&self) -> &Families {
        &self.0
    }
}

impl Telemetry {
    pub fn new(labels: LabelFilter) -> Telemetry {
        let mut f = Families {
            labels,
            events: Family::default(),
            policy_events: Family::default(),
            missed: Family::default(),
            bpf_missed: Family::default(),
            ringbuf_lost: Counter::default(),
            records_suppressed: Counter::default(),
            ringbuf_received: Counter::default(),
            cache_size: Gauge::default(),
            cache_capacity: Gauge::default(),
            cache_evictions: Counter::default(),
            cache_misses: Family::default(),
            policies_loaded: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            program_runs: Family::default(),
            program_seconds: Family::default(),
            errors: Family::default(),
            export_dropped: Counter::default(),
            exported: Counter::default(),
            build_info: Family::default(),
            rule_matches: Family::default(),
            alerts: Family::default(),
            quarantines: Family::default(),
            label_patches: Family::default(),
            pending_labels: Gauge::default(),
            quarantined_cgroups: Gauge::default(),
            quarantine_refusals: Family::default(),
            // 1 µs to about 4 s: a map write is microseconds, a stalled
            // one is what this is for.
            decision_seconds: Histogram::new(exponential_buckets(1e-6, 4.0, 12)),
            registry: Registry::default(),
        };
        f.build_info
            .get_or_create(&BuildLabels {
                commit: option_env!("SENSOR_GIT_COMMIT").unwrap_or("").to_string(),
                // Tetragon's label, kept for its dashboards: the Rust
                // compiler this was built with.
                go_version: option_env!("SENSOR_RUSTC").unwrap_or("").to_string(),
                // Not tracked: the build would rerun at every change of
                // the index.
                modified: String::new(),
                time: String::new(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        let r = &mut f.registry;
        // Counters are registered without `_total`: the encoder adds it.
        r.register(
            "tetragon_events",
            "The total number of Tetragon events",
            f.events.clone(),
        );
        r.register(
            "tetragon_policy_events",
            "Policy events calls observed",
            f.policy_events.clone(),
        );
        r.register("tetragon_missed_events", "The total number of Tetragon events per type that are failed to sent from the kernel (records lost to a full ring buffer)", f.missed.clone());
        r.register(
            "tetragon_bpf_missed_events",
            "Number of Tetragon perf events that are failed to be sent from the kernel",
            f.bpf_missed.clone(),
        );
        r.register(
            "tetragon_observer_ringbuf_events_lost",
            "Number of perf events Tetragon ring buffer lost",
            f.ringbuf_lost.clone(),
        );
        r.register(
            "sensor_records_suppressed",
            "Routine records (connects and sends that hit no policy) not sent because their pod was over its record budget; each pod's count is a sensor_alert",
            f.records_suppressed.clone(),
        );
        r.register(
            "tetragon_observer_ringbuf_events_received",
            "Number of perf events Tetragon ring buffer received",
            f.ringbuf_received.clone(),
        );
        r.register(
            "tetragon_process_cache_size",
            "The size of the process cache",
            f.cache_size.clone(),
        );
        r.register(
            "tetragon_process_cache_capacity",
            "The capacity of the process cache. Expected to be constant",
            f.cache_capacity.clone(),
        );
        r.register(
            "tetragon_process_cache_evictions",
            "Number of process cache LRU evictions",
            f.cache_evictions.clone(),
        );
        r.register(
            "tetragon_process_cache_misses",
            "Number of process cache misses",
            f.cache_misses.clone(),
        );
        r.register(
            "tetragon_tracingpolicy_loaded",
            "The number of loaded tracing policy by state",
            f.policies_loaded.clone(),
        );
        r.register(
            "tetragon_map_entries",
            "The total number of in-use entries per map",
            f.map_entries.clone(),
        );
        r.register(
            "tetragon_map_capacity",
            "Capacity of a BPF map. Expected to be constant",
            f.map_capacity.clone(),
        );
        r.register("tetragon_overhead_program_runs", "The total number of times BPF program was executed (while kernel.bpf_stats_enabled or --program-stats)", f.program_runs.clone());
        r.register("tetragon_overhead_program_seconds", "The total time of BPF program running (while kernel.bpf_stats_enabled or --program-stats)", f.program_seconds.clone());
        r.register(
            "tetragon_errors",
            "The total number of Tetragon errors",
            f.errors.clone(),
        );
        r.register(
            "tetragon_export_ratelimit_events_dropped",
            "Number of events dropped on export due to rate limiting",
            f.export_dropped.clone(),
        );
        r.register(
            "tetragon_events_exported",
            "Total number of events exported",
            f.exported.clone(),
        );
        r.register(
            "tetragon_build_info",
            "Build information about the sensor",
            f.build_info.clone(),
        );
        r.register(
            "sensor_brain_rule_matches",
            "Brain rule matches (before count windows)",
            f.rule_matches.clone(),
        );
        r.register(
            "sensor_brain_alerts",
            "Brain alerts, by rule",
            f.alerts.clone(),
        );
        r.register(
            "sensor_quarantines",
            "Quarantine steps (node isolation, label), by rule, stage and outcome",
            f.quarantines.clone(),
        );
        r.register(
            "sensor_label_patches",
            "Quarantine label patches by result",
            f.label_patches.clone(),
        );
        r.register(
            "sensor_pending_labels",
            "Quarantine labels decided on this node that have not landed",
            f.pending_labels.clone(),
        );
        r.register(
            "sensor_quarantined_cgroups",
            "Pod cgroups isolated in the kernel on this node",
            f.quarantined_cgroups.clone(),
        );
        r.register(
            "sensor_quarantine_refusals",
            "What the kernel refused quarantined pods, by kind: packets dropped (egress, ingress), packet sockets, connects and sends",
            f.quarantine_refusals.clone(),
        );
        r.register(
            "sensor_decision_to_kernel_seconds",
            "From a brain decision to the cgroup isolated in the kernel",
            f.decision_seconds.clone(),
        );
        Telemetry(Arc::new(f))
    }

    /// The exposition, in the OpenMetrics text format Prometheus scrapes.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.0.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }

    /// Counts one error of `kind` (Tetragon's `tetragon_errors_total`).
    pub fn error(&self, kind: &str) {
        self.errors_by(kind, 1);
    }

    /// Counts `n` errors of `kind` at once.
    pub fn errors_by(&self, kind: &str, n: u64) {
        self.errors
            .get_or_create(&Kind {
                r#type: kind.to_string(),
            })
            .inc_by(n);
    }
}

/// Tetragon's message opcodes, which its missed-event metrics are labelled
/// by, for this sensor's record kinds.
pub fn msg_op(kind: &str) -> &'static str {
    match kind {
        "exec" => "5",
        "exit" => "7",
        // Connect and syscall hooks are Tetragon's generic kprobes.
        "connect" | "syscall" => "13",
        "fork" => "23",
        _ => "0",
    }
}
