//! Counters of what went through the pipeline, and of what did not: records
//! lost to a full ring buffer, records that failed to decode, events whose
//! process or parent was unknown. `Metrics` is the loop's own tally (the
//! stop line, the gRPC action counters); `registry` is what Prometheus
//! scrapes, fed by `sink` (every emitted event) and the stages.
pub mod labels;
pub mod registry;
pub mod sink;

pub use registry::Telemetry;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Default)]
pub struct Metrics {
    pub records: u64,
    pub decode_errors: u64,
    pub events: BTreeMap<&'static str, u64>,
    /// Last value read from the kernel's `LOST` counters, per record kind.
    pub lost: BTreeMap<&'static str, u64>,
    /// Per policy: what its selectors did (Tetragon's action counters).
    pub policies: BTreeMap<String, ActionCounters>,
    /// Last value read from the kernel's `BUDGETS`, per cgroup.
    pub suppressed: std::collections::HashMap<u64, u64>,
}

/// Tetragon's `TracingPolicyActionCounters`, for the actions this sensor
/// has: events posted, signals sent, Overrides, and those monitor mode held
/// back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ActionCounters {
    pub post: u64,
    pub signal: u64,
    pub monitor_signal: u64,
    pub overrides: u64,
    pub monitor_override: u64,
}

impl Metrics {
    pub fn event(&mut self, kind: &'static str) {
        *self.events.entry(kind).or_default() += 1;
    }

    /// Counts one selector hit of `policy`.
    pub fn policy_hit(
        &mut self,
        policy: &str,
        posted: bool,
        signal: bool,
        over: bool,
        monitor: bool,
    ) {
        let c = self.policies.entry(policy.to_string()).or_default();
        c.post += posted as u64;
        match (signal, over, monitor) {
            (true, _, false) => c.signal += 1,
            (true, _, true) => c.monitor_signal += 1,
            _ => {}
        }
        match (over, monitor) {
            (true, false) => c.overrides += 1,
            (true, true) => c.monitor_override += 1,
            _ => {}
        }
    }

    pub fn lost_total(&self) -> u64 {
        self.lost.values().sum()
    }
}

impl fmt::Display for Metrics {
    /// `records=N lost=N decode_errors=N process_exec=N ...`, one line for logs
    /// and for `cargo xtask bench` to read.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "records={} lost={} decode_errors={}",
            self.records,
            self.lost_total(),
            self.decode_errors
        )?;
        for (k, v) in &self.events {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}
