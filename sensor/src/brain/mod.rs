//! The brain: rules over the process tree and the pod (`rule`), evaluated in
//! userspace on every exec, connect and reflex hit. `sleep` under kubelet is
//! harmless; `sleep` that connects, or `curl` reached through a `sleep` under
//! a shell in a pod, is not. A rule alerts, quarantines the pod, or both.
pub mod effective;
pub mod rule;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::antibody::Decision;
use crate::export::event::{AlertEvent, Event, Pod, Process};
pub use rule::{On, Rule};

/// Splits Tetragon's joined `arguments` back into words (double quotes group).
pub fn split_args(joined: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut escaped) = (Vec::new(), String::new(), false, false);
    for c in joined.chars() {
        match c {
            _ if escaped => {
                cur.push(c);
                escaped = false;
            }
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One thing the brain is shown.
pub struct Observation<'a> {
    pub on: On,
    pub process: &'a Process,
    pub pod: Option<&'a Pod>,
    /// The process's ancestors, parent first.
    pub ancestors: &'a [Process],
    /// For `on: policy`: the action string and the policy name; for
    /// `on: exit`: the signal name and "".
    pub policy: Option<(&'a str, &'a str)>,
}

/// What a rule decided.
pub struct Verdict {
    /// The rule that fired.
    pub rule: String,
    pub alert: Option<Event>,
    pub decision: Option<Decision>,
    /// The process to kill with its descendants (action `kill`).
    pub kill: Option<Process>,
}

/// A pod decided for quarantine is not decided again for this long.
const DECIDE_AGAIN_AFTER: Duration = Duration::from_secs(60);

pub struct Brain {
    rules: Vec<Rule>,
    windows: HashMap<(usize, String), VecDeque<Instant>>,
    decided: HashMap<String, Instant>,
}

/// Whether `m` matches the process: its binary and arguments, or, when the
/// binary is a dynamic loader, the program the loader runs and its
/// arguments (`effective`).
fn proc_matches(m: &rule::ProcMatch, p: &Process) -> bool {
    let words = split_args(&p.arguments);
    if view_matches(m, &p.binary, &words) {
        return true;
    }
    effective::is_loader(&p.binary)
        && effective::loaded_program(&words).is_some_and(|(bin, args)| view_matches(m, bin, args))
}

fn view_matches(m: &rule::ProcMatch, binary: &str, args: &[String]) -> bool {
    let bin = m
        .binary
        .as_ref()
        .is_none_or(|b| b.contains(binary) != b.op.filter().negate.eq(&1));
    bin && m.arguments.as_ref().is_none_or(|a| a.matches(args))
}

impl Brain {
    pub fn new(rules: Vec<Rule>) -> Self {
        Brain {
            rules,
            windows: HashMap::new(),
            decided: HashMap::new(),
        }
    }

    /// Whether any rule reads events of this kind (the others cost nothing).
    pub fn wants(&self, on: On) -> bool {
        self.rules.iter().any(|r| r.on == on)
    }

    /// Whether every rule for this kind needs a pod: then events outside
    /// pods (most of a node's) are dropped before the ancestry is built.
    pub fn pods_only(&self, on: On) -> bool {
        self.rules.iter().filter(|r| r.on == on).all(|r| r.in_pod)
    }

    fn matches(r: &Rule, o: &Observation) -> bool {
        if r.on != o.on || (r.in_pod && o.pod.is_none()) || !proc_matches(&r.process, o.process) {
            return false;
        }
        if let Some(pm) = &r.parent {
            if !o.ancestors.first().is_some_and(|p| proc_matches(pm, p)) {
                return false;
            }
        }
        let within = &o.ancestors[..o.ancestors.len().min(r.within)];
        if r.ancestors_any
            .as_ref()
            .is_some_and(|m| !within.iter().any(|p| proc_matches(m, p)))
        {
            return false;
        }
        if r.ancestors_none
            .as_ref()
            .is_some_and(|m| within.iter().any(|p| proc_matches(m, p)))
        {
            return false;
        }
        // A pod the watcher does not know yet has no namespace or labels to
        // match: rules scoped by them wait for it, unscoped rules do not.
        if !r.namespaces.is_empty() && !o.pod.is_some_and(|p| r.namespaces.contains(&p.namespace)) {
            return false;
        }
        if !r.labels.is_empty()
            && !o
                .pod
                .is_some_and(|p| r.labels.iter().all(|(k, v)| p.pod_labels.get(k) == Some(v)))
        {
            return false;
        }
        if o.on == On::Exit {
            let Some((signal, _)) = o.policy else {
                return false;
            };
            if !r.signals.is_empty() && !r.signals.iter().any(|s| s == signal) {
                return false;
            }
        }
        if o.on == On::Policy {
            let Some((action, name)) = o.policy else {
                return false;
            };
            if !r.policy_actions.is_empty() && !r.policy_actions.iter().any(|a| a == action) {
                return false;
            }
            if !r.policy_names.is_empty() && !r.policy_names.iter().any(|n| n == name) {
                return false;
            }
        }
        true
    }

    /// Every rule that fires on `o`.
    pub fn observe(&mut self, o: &Observation, time: &str) -> Vec<Verdict> {
        let mut out = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            if !Self::matches(r, o) {
                continue;
            }
            let pod_uid = o.pod.map(|p| p.uid.clone()).unwrap_or_default();
            if let Some((at_least, within)) = r.count {
                let w = self.windows.entry((i, pod_uid.clone())).or_default();
                let now = Instant::now();
                w.push_back(now);
                while w.front().is_some_and(|t| now.duration_since(*t) > within) {
                    w.pop_front();
                }
                if w.len() < at_least {
                    continue;
                }
                w.clear();
            }
            let mut exec_ids = vec![o.process.exec_id.to_string()];
            exec_ids.extend(o.ancestors.first().map(|p| p.exec_id.to_string()));
            let alert = r.alert.then(|| {
                Event::SensorAlert(AlertEvent {
                    rule: r.name.clone(),
                    description: r.description.clone(),
                    process: o.process.clone(),
                    parent: o.ancestors.first().cloned(),
                    exec_ids: exec_ids.clone(),
                    killed: Vec::new(),
                    count: 0,
                })
            });
            let decision = match (r.quarantine, o.pod) {
                (true, Some(pod)) => {
                    let recent = self
                        .decided
                        .get(&pod.uid)
                        .is_some_and(|t| t.elapsed() < DECIDE_AGAIN_AFTER);
                    (!recent).then(|| {
                        self.decided.insert(pod.uid.clone(), Instant::now());
                        Decision {
                            namespace: pod.namespace.clone(),
                            name: pod.name.clone(),
                            uid: pod.uid.clone(),
                            rule: r.name.clone(),
                            exec_ids,
                            time: time.to_string(),
                        }
                    })
                }
                _ => None,
            };
            out.push(Verdict {
                rule: r.name.clone(),
                alert,
                decision,
                kill: r.kill.then(|| o.process.clone()),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> Rule {
        rule::parse(serde_yaml::from_str(yaml).unwrap()).unwrap()
    }

    #[test]
    fn exit_by_signal_in_a_pod_counts_per_pod() {
        let mut brain = Brain::new(vec![rule(
            "apiVersion: sensor.io/v1alpha1\nkind: BrainRule\nmetadata: {name: crashes}\nspec:\n  on: exit\n  signals: [SIGSEGV]\n  count: {atLeast: 2, within: 60s}\n  actions: [alert, quarantine]\n",
        )]);
        let p = Process {
            binary: "/app".into(),
            exec_id: "e1".into(),
            ..Default::default()
        };
        let pod = Pod {
            namespace: "ns".into(),
            name: "web".into(),
            uid: "u1".into(),
            ..Default::default()
        };
        let obs = |signal: &'static str, pod: Option<&'static Pod>| Observation {
            on: On::Exit,
            process: Box::leak(Box::new(p.clone())),
            pod,
            ancestors: &[],
            policy: Some((signal, "")),
        };
        let pod: &'static Pod = Box::leak(Box::new(pod));
        assert!(
            brain.observe(&obs("SIGSEGV", Some(pod)), "t").is_empty(),
            "one is not enough"
        );
        assert!(
            brain.observe(&obs("SIGTERM", Some(pod)), "t").is_empty(),
            "another signal"
        );
        assert!(
            brain.observe(&obs("SIGSEGV", None), "t").is_empty(),
            "not in a pod"
        );
        let v = brain.observe(&obs("SIGSEGV", Some(pod)), "t");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].decision.as_ref().unwrap().name, "web");
        assert!(matches!(v[0].alert, Some(Event::SensorAlert(_))));
    }

    #[test]
    fn arguments_split_back() {
        assert_eq!(
            split_args("-d @/etc/hostname \"a b\" x"),
            vec!["-d", "@/etc/hostname", "a b", "x"]
        );
        assert_eq!(split_args(""), Vec::<String>::new());
    }
}
