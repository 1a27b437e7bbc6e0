//! The metrics' view of the export stage: every event the pipeline emits
//! is counted here by type, pod and binary (and policy events by policy and
//! hook), before any export filter drops it, as Tetragon counts them.
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use prometheus_client::metrics::counter::Counter;

use super::labels::LabelFilter;
use super::registry::{EventLabels, PolicyEventLabels, QuarantineLabels, RuleName, Telemetry};
use crate::export::event::{Event, Process};
use crate::export::{Envelope, Sink};

pub struct MetricsSink {
    t: Telemetry,
    events: Counters<5>,
    policy_events: Counters<6>,
}

impl MetricsSink {
    pub fn new(t: Telemetry) -> MetricsSink {
        MetricsSink {
            t,
            events: Counters::default(),
            policy_events: Counters::default(),
        }
    }
}

/// The counters of a family by their label values, found without building
/// an owned label set: an event costs a hash of its labels and an atomic
/// add, not five string copies and the family's lock.
struct Counters<const N: usize> {
    by_hash: HashMap<u64, Vec<([String; N], Counter)>>,
}

impl<const N: usize> Default for Counters<N> {
    fn default() -> Self {
        Counters {
            by_hash: HashMap::new(),
        }
    }
}

impl<const N: usize> Counters<N> {
    fn inc(&mut self, values: [&str; N], make: impl FnOnce([String; N]) -> Counter) {
        let mut h = std::hash::DefaultHasher::new();
        values.hash(&mut h);
        let bucket = self.by_hash.entry(h.finish()).or_default();
        if let Some((_, c)) = bucket
            .iter()
            .find(|(k, _)| k.iter().zip(values.iter()).all(|(a, b)| a == b))
        {
            c.inc();
            return;
        }
        let owned = values.map(str::to_string);
        let c = make(owned.clone());
        c.inc();
        bucket.push((owned, c));
    }
}

/// Tetragon's `EventType` name of an event, as its `type` label shows it.
pub fn type_label(e: &Event) -> &'static str {
    match e {
        Event::ProcessExec(_) => "PROCESS_EXEC",
        Event::ProcessExit(_) => "PROCESS_EXIT",
        Event::ProcessKprobe(_) => "PROCESS_KPROBE",
        Event::ProcessLsm(_) => "PROCESS_LSM",
        Event::ProcessTracepoint(_) => "PROCESS_TRACEPOINT",
        Event::SensorQuarantine(_) => "SENSOR_QUARANTINE",
        Event::SensorAlert(_) => "SENSOR_ALERT",
    }
}

/// The process an event is about, if it has one.
pub fn process_of(e: &Event) -> Option<&Process> {
    match e {
        Event::ProcessExec(x) => Some(&x.process),
        Event::ProcessExit(x) => Some(&x.process),
        Event::ProcessKprobe(x) => Some(&x.process),
        Event::ProcessLsm(x) => Some(&x.process),
        Event::ProcessTracepoint(x) => Some(&x.process),
        Event::SensorAlert(x) => Some(&x.process),
        Event::SensorQuarantine(_) => None,
    }
}

/// The policy and hook of a policy event.
fn policy_of(e: &Event) -> Option<(&str, Cow<'_, str>)> {
    match e {
        Event::ProcessKprobe(x) => Some((&x.policy_name, Cow::Borrowed(&x.function_name))),
        Event::ProcessLsm(x) => Some((&x.policy_name, Cow::Borrowed(&x.function_name))),
        Event::ProcessTracepoint(x) => Some((
            &x.policy_name,
            Cow::Owned(format!("{}/{}", x.subsys, x.event)),
        )),
        _ => None,
    }
}

struct Who<'a> {
    namespace: &'a str,
    workload: &'a str,
    pod: &'a str,
    binary: &'a str,
}

fn who<'a>(f: &LabelFilter, e: &'a Event) -> Who<'a> {
    let p = process_of(e);
    let pod = p.and_then(|p| p.pod.as_ref());
    let (ns, workload, name) = match (pod, e) {
        (Some(pod), _) => (
            pod.namespace.as_str(),
            pod.workload.as_str(),
            pod.name.as_str(),
        ),
        (None, Event::SensorQuarantine(q)) => (q.namespace.as_str(), "", q.pod.as_str()),
        (None, _) => ("", "", ""),
    };
    let keep = |on: bool, v: &'a str| if on { v } else { "" };
    Who {
        namespace: keep(f.namespace, ns),
        workload: keep(f.workload, workload),
        pod: keep(f.pod, name),
        binary: keep(f.binary, p.map(|p| &*p.binary).unwrap_or("")),
    }
}

impl Sink for MetricsSink {
    fn write(&mut self, env: &Envelope) -> std::io::Result<()> {
        let t = &self.t;
        let e = &env.event;
        let w = who(&t.labels, e);
        if let Some((policy, hook)) = policy_of(e) {
            let values = [policy, &hook, w.namespace, w.workload, w.pod, w.binary];
            self.policy_events
                .inc(values, |[policy, hook, namespace, workload, pod, binary]| {
                    t.policy_events.get_or_create_owned(&PolicyEventLabels {
                        policy,
                        hook,
                        namespace,
                        workload,
                        pod,
                        binary,
                    })
                });
        }
        match e {
            Event::SensorAlert(a) => {
                t.alerts
                    .get_or_create(&RuleName {
                        rule: a.rule.clone(),
                    })
                    .inc();
            }
            Event::SensorQuarantine(q) => {
                t.quarantines
                    .get_or_create(&QuarantineLabels {
                        rule: q.rule.clone(),
                        stage: q.stage.clone(),
                        outcome: q.outcome.clone(),
                    })
                    .inc();
            }
            _ => {}
        }
        let values = [type_label(e), w.namespace, w.workload, w.pod, w.binary];
        self.events
            .inc(values, |[r#type, namespace, workload, pod, binary]| {
                t.events.get_or_create_owned(&EventLabels {
                    r#type,
                    namespace,
                    workload,
                    pod,
                    binary,
                })
            });
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
