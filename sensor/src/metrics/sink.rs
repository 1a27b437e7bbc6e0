//! The metrics' view of the export stage: every event the pipeline emits
//! is counted here by type, pod and binary (and policy events by policy and
//! hook), before any export filter drops it, as Tetragon counts them.
use super::labels::LabelFilter;
use super::registry::{EventLabels, PolicyEventLabels, QuarantineLabels, RuleName, Telemetry};
use crate::export::event::{Event, Process};
use crate::export::{Envelope, Sink};

pub struct MetricsSink(pub Telemetry);

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
fn policy_of(e: &Event) -> Option<(&str, String)> {
    match e {
        Event::ProcessKprobe(x) => Some((&x.policy_name, x.function_name.clone())),
        Event::ProcessLsm(x) => Some((&x.policy_name, x.function_name.clone())),
        Event::ProcessTracepoint(x) => Some((&x.policy_name, format!("{}/{}", x.subsys, x.event))),
        _ => None,
    }
}

struct Who {
    namespace: String,
    workload: String,
    pod: String,
    binary: String,
}

fn who(f: &LabelFilter, e: &Event) -> Who {
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
    Who {
        namespace: LabelFilter::keep(f.namespace, ns),
        workload: LabelFilter::keep(f.workload, workload),
        pod: LabelFilter::keep(f.pod, name),
        binary: LabelFilter::keep(f.binary, p.map(|p| p.binary.as_str()).unwrap_or("")),
    }
}

impl Sink for MetricsSink {
    fn write(&mut self, env: &Envelope) -> std::io::Result<()> {
        let t = &self.0;
        let e = &env.event;
        let w = who(&t.labels, e);
        if let Some((policy, hook)) = policy_of(e) {
            t.policy_events
                .get_or_create(&PolicyEventLabels {
                    policy: policy.to_string(),
                    hook,
                    namespace: w.namespace.clone(),
                    workload: w.workload.clone(),
                    pod: w.pod.clone(),
                    binary: w.binary.clone(),
                })
                .inc();
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
        t.events
            .get_or_create(&EventLabels {
                r#type: type_label(e).to_string(),
                namespace: w.namespace,
                workload: w.workload,
                pod: w.pod,
                binary: w.binary,
            })
            .inc();
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
