//! The antibodies: a quarantined pod is cut off the network on this node at
//! once (its cgroup goes into the kernel's quarantine map) and labelled
//! `quarantine=true` through the Kubernetes API (`label`), so that a Cilium
//! policy isolates it in every cluster. The label is the source of truth
//! afterwards: any local pod that carries it is isolated here, and removing
//! it lifts the isolation.
pub mod label;
mod packet;
pub mod procs;
pub mod state;
mod teardown;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::enrich::cgroup::SharedPaths;
use crate::enrich::pods::PodStore;
use crate::export::event::{Event, QuarantineEvent};
use crate::load::Kernel;
use state::Loaded;

/// The label Cilium's quarantine policy selects.
pub const LABEL: &str = "quarantine";
/// The annotation that says who decided, when and why.
pub const ANNOTATION: &str = "sensor.io/quarantine";

/// How long a landed label may take to show in the watch before the pod is
/// treated as unlabelled.
const AWAIT_WATCH_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// A decision to quarantine one pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub rule: String,
    pub exec_ids: Vec<String>,
    pub time: String,
}

impl Decision {
    fn event(&self, stage: &str, outcome: &str, error: Option<String>) -> Event {
        Event::SensorQuarantine(QuarantineEvent {
            namespace: self.namespace.clone(),
            pod: self.name.clone(),
            pod_uid: self.uid.clone(),
            rule: self.rule.clone(),
            exec_ids: self.exec_ids.clone(),
            stage: stage.into(),
            outcome: outcome.into(),
            error,
        })
    }
}

#[cfg(test)]
impl Decision {
    /// A decision about pod `shop/web` with uid `uid`, for unit tests.
    pub(crate) fn for_test(uid: &str) -> Self {
        Decision {
            namespace: "shop".into(),
            name: "web".into(),
            uid: uid.into(),
            rule: "r".into(),
            exec_ids: vec!["e".into()],
            time: "t".into(),
        }
    }
}

/// What the label task reports back.
#[derive(Debug)]
pub struct LabelOutcome {
    pub decision: Decision,
    /// `None` when the label landed.
    pub error: Option<String>,
    /// Whether it will be tried again.
    pub retrying: bool,
}

/// A pod isolated on this node: its cgroup, and its name for the events
/// (the release of a deleted pod still says which pod it was).
struct Isolated {
    cgroup: u64,
    namespace: String,
    name: String,
}

pub struct Antibodies {
    paths: SharedPaths,
    pods: Option<Arc<RwLock<PodStore>>>,
    /// Pod uid → what is isolated in the kernel for it.
    isolated: HashMap<String, Isolated>,
    /// Pods decided here whose label has not landed yet.
    pending: HashSet<String>,
    /// Pods whose label landed but that the watcher has not shown labelled
    /// yet: still isolated, or the gap would release them for a moment.
    awaiting_watch: HashMap<String, std::time::Instant>,
    /// Decisions about pods the watcher did not know (by uid): isolated
    /// already, their label waits for the pod's name.
    unnamed: HashMap<String, Decision>,
    labeler: Option<UnboundedSender<Decision>>,
    /// The sensor's own pod: never quarantined, whatever decides it or
    /// labels it (a sensor cut off its network cannot report or reconcile).
    own_uid: Option<String>,
    /// Whether the label on the sensor's own pod was reported once.
    own_label_reported: bool,
}

impl Antibodies {
    pub fn new(
        paths: SharedPaths,
        pods: Option<Arc<RwLock<PodStore>>>,
        labeler: Option<UnboundedSender<Decision>>,
    ) -> Self {
        Antibodies {
            paths,
            pods,
            isolated: HashMap::new(),
            pending: HashSet::new(),
            awaiting_watch: HashMap::new(),
            unnamed: HashMap::new(),
            labeler,
            own_uid: crate::enrich::cgroup::own_pod(),
            own_label_reported: false,
        }
    }

    /// Whether `uid` is the sensor's own pod.
    fn is_own(&self, uid: &str) -> bool {
        self.own_uid.as_deref() == Some(uid)
    }

    fn refuse_own(d: &Decision) -> Event {
        tracing::warn!(pod = %d.name, rule = %d.rule, "not quarantining the sensor's own pod");
        d.event(
            "node",
            "refused",
            Some("the sensor's own pod is never quarantined".into()),
        )
    }

    fn isolate(&mut self, kernel: &mut Kernel, d: &Decision) -> Result<(), String> {
        if let Some(i) = self.isolated.get_mut(&d.uid) {
            if i.name.is_empty() {
                (i.namespace, i.name) = (d.namespace.clone(), d.name.clone());
            }
            return Ok(());
        }
        let id = self
            .paths
            .borrow_mut()
            .pod_cgroup(&d.uid)
            .ok_or_else(|| format!("no cgroup for pod {} on this node", d.uid))?;
        kernel.quarantine(id).map_err(|e| e.to_string())?;
        if let Some(dir) = self.paths.borrow_mut().dir(id) {
            let killed = packet::cut(&dir);
            if !killed.is_empty() {
                tracing::warn!(pod = %d.name, uid = %d.uid, pids = ?killed, "killed the quarantined pod's holders of packet sockets");
            }
            let t = teardown::cut(&dir);
            if t.destroyed > 0 {
                tracing::info!(pod = %d.name, uid = %d.uid, sockets = t.destroyed, "tore down the quarantined pod's connections");
            }
            for e in t.errors {
                tracing::warn!(pod = %d.name, uid = %d.uid, error = %e, "some connections of the quarantined pod stay open (their packets are dropped)");
            }
        }
        self.isolated.insert(
            d.uid.clone(),
            Isolated {
                cgroup: id,
                namespace: d.namespace.clone(),
                name: d.name.clone(),
            },
        );
        Ok(())
    }

    /// The pod's namespace and name, from the watcher when it knows it.
    fn name_of(&self, uid: &str) -> Option<(String, String)> {
        let store = self.pods.as_ref()?;
        let store = store.read().unwrap_or_else(|e| e.into_inner());
        store
            .get(uid)
            .map(|p| (p.namespace.clone(), p.name.clone()))
    }

    /// Takes over the quarantines of the daemon before this one: decisions
    /// whose label had not landed (`pending`, from the state file; the
    /// label thread retries them) are isolated again, and cgroups the kernel
    /// still isolates (an adopted or carried-over set) are tracked, held
    /// until the watcher has had time to show their label, as after a label
    /// lands. Cgroups that are gone are released.
    pub fn restore(&mut self, kernel: &mut Kernel, state: Loaded) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some(c) = state.corrupt {
            tracing::error!(error = %c, "pending quarantines unreadable; starting without them");
            events.push(Event::SensorQuarantine(QuarantineEvent {
                namespace: String::new(),
                pod: String::new(),
                pod_uid: String::new(),
                rule: String::new(),
                exec_ids: Vec::new(),
                stage: "state".into(),
                outcome: "corrupt".into(),
                error: Some(c.to_string()),
            }));
        }
        for d in state.decisions {
            if self.is_own(&d.uid) {
                events.push(Self::refuse_own(&d));
                continue;
            }
            match self.isolate(kernel, &d) {
                Ok(()) => events.push(d.event("node", "isolated", None)),
                Err(e) => events.push(d.event("node", "failed", Some(e))),
            }
            if self.labeler.is_some() {
                self.pending.insert(d.uid.clone());
            }
        }
        let ids = match kernel.quarantined() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "reading the kernel's quarantines");
                return events;
            }
        };
        for id in ids {
            if self.isolated.values().any(|v| v.cgroup == id) {
                continue;
            }
            let uid = self
                .paths
                .borrow_mut()
                .path(id)
                .and_then(crate::enrich::cgroup::pod_of);
            match uid {
                Some(uid) => {
                    self.awaiting_watch
                        .insert(uid.clone(), std::time::Instant::now());
                    let (namespace, name) = self.name_of(&uid).unwrap_or_default();
                    self.isolated.insert(
                        uid,
                        Isolated {
                            cgroup: id,
                            namespace,
                            name,
                        },
                    );
                }
                None => {
                    if let Err(e) = kernel.release(id) {
                        tracing::error!(cgroup = id, error = %e, "releasing the quarantine of a cgroup that is gone");
                    }
                }
            }
        }
        events
    }

    /// Quarantines a pod: the kernel first, then the label (queued).
    pub fn decide(&mut self, kernel: &mut Kernel, d: Decision) -> Vec<Event> {
        if self.is_own(&d.uid) {
            return vec![Self::refuse_own(&d)];
        }
        let mut events = Vec::new();
        let node = self.isolate(kernel, &d);
        events.push(match node {
            Ok(()) => d.event("node", "isolated", None),
            Err(e) => d.event("node", "failed", Some(e)),
        });
        let Some(tx) = &self.labeler else {
            events.push(d.event(
                "label",
                "skipped",
                Some("no Kubernetes API (standalone)".into()),
            ));
            return events;
        };
        self.pending.insert(d.uid.clone());
        if d.name.is_empty() {
            // Labels go by name: this one waits for the watcher to know the
            // pod. The node's isolation above did not wait.
            events.push(d.event(
                "label",
                "waiting",
                Some("the pod is not known to the watcher yet".into()),
            ));
            self.unnamed.insert(d.uid.clone(), d);
        } else if tx.send(d.clone()).is_err() {
            events.push(d.event("label", "failed", Some("label task stopped".into())));
        }
        events
    }

    /// Sends the decisions that waited for their pod's name to the labeler,
    /// once the watcher knows the pod.
    fn name_waiting(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let uids: Vec<String> = self.unnamed.keys().cloned().collect();
        for uid in uids {
            let Some((namespace, name)) = self.name_of(&uid) else {
                if self.pod_gone(&uid) {
                    // Deleted before the watcher ever showed it: there is
                    // nothing to label, and the isolation goes with the pod
                    // (the reconcile below releases its cgroup).
                    self.pending.remove(&uid);
                    if let Some(d) = self.unnamed.remove(&uid) {
                        events.push(d.event(
                            "label",
                            "failed",
                            Some("the pod was deleted before the watcher showed it".into()),
                        ));
                    }
                }
                continue;
            };
            let Some(mut d) = self.unnamed.remove(&uid) else {
                continue;
            };
            (d.namespace, d.name) = (namespace, name);
            if let Some(i) = self.isolated.get_mut(&uid) {
                (i.namespace, i.name) = (d.namespace.clone(), d.name.clone());
            }
            if let Some(tx) = &self.labeler {
                if tx.send(d.clone()).is_err() {
                    events.push(d.event("label", "failed", Some("label task stopped".into())));
                }
            }
        }
        events
    }

    /// Whether pod `uid`'s cgroup is gone from this node (cgroup ids are
    /// never reused, so a cached path that no longer exists is final).
    fn pod_gone(&self, uid: &str) -> bool {
        let mut paths = self.paths.borrow_mut();
        match self.isolated.get(uid) {
            Some(i) => !paths.dir(i.cgroup).is_some_and(|d| d.exists()),
            None => paths.pod_cgroup(uid).is_none(),
        }
    }

    /// Labels decided here that have not landed, and cgroups isolated.
    pub fn counts(&self) -> (usize, usize) {
        (self.pending.len(), self.isolated.len())
    }

    /// Records a label outcome; the pod stays isolated either way.
    pub fn labelled(&mut self, o: LabelOutcome) -> Event {
        if !o.retrying {
            self.pending.remove(&o.decision.uid);
        }
        if o.error.is_none() {
            self.awaiting_watch
                .insert(o.decision.uid.clone(), std::time::Instant::now());
        }
        let outcome = match (&o.error, o.retrying) {
            (None, _) => "labelled",
            (Some(_), true) => "retrying",
            (Some(_), false) => "failed",
        };
        o.decision.event("label", outcome, o.error)
    }

    /// Makes the kernel's quarantine set match the labels of this node's pods
    /// (plus decisions whose label is on its way). Returns release events.
    pub fn reconcile(&mut self, kernel: &mut Kernel) -> Vec<Event> {
        let mut events = self.name_waiting();
        let Some(store) = &self.pods else {
            return events;
        };
        let labelled: Vec<(String, String, String)> = {
            let store = store.read().unwrap_or_else(|e| e.into_inner());
            store
                .all()
                .filter(|p| p.labels.get(LABEL).map(String::as_str) == Some("true"))
                .map(|p| (p.uid.clone(), p.namespace.clone(), p.name.clone()))
                .collect()
        };
        for (uid, ns, name) in &labelled {
            let d = || Decision {
                namespace: ns.clone(),
                name: name.clone(),
                uid: uid.clone(),
                rule: "label".into(),
                exec_ids: Vec::new(),
                time: String::new(),
            };
            if self.is_own(uid) {
                if !self.own_label_reported {
                    self.own_label_reported = true;
                    events.push(Self::refuse_own(&d()));
                }
                continue;
            }
            if !self.isolated.contains_key(uid) {
                let d = d();
                if let Err(e) = self.isolate(kernel, &d) {
                    tracing::warn!(pod = %name, error = %e, "labelled quarantine=true but not isolated");
                } else {
                    events.push(d.event("node", "isolated", None));
                }
            }
        }
        // The watcher shows the label (or never will): stop holding on.
        self.awaiting_watch.retain(|uid, since| {
            !labelled.iter().any(|(u, _, _)| u == uid) && since.elapsed() < AWAIT_WATCH_FOR
        });
        let keep: HashSet<&str> = labelled
            .iter()
            .map(|(u, _, _)| u.as_str())
            .chain(self.pending.iter().map(String::as_str))
            .chain(self.awaiting_watch.keys().map(String::as_str))
            .collect();
        let lift: Vec<(String, u64)> = self
            .isolated
            .iter()
            .filter(|(u, _)| !keep.contains(u.as_str()))
            .map(|(u, i)| (u.clone(), i.cgroup))
            .collect();
        for (uid, id) in lift {
            let why = if self.pod_gone(&uid) {
                "pod deleted"
            } else {
                "label removed"
            };
            match kernel.release(id) {
                Ok(()) => {
                    let Some(i) = self.isolated.remove(&uid) else {
                        continue;
                    };
                    let d = Decision {
                        namespace: i.namespace,
                        name: i.name,
                        uid,
                        rule: why.into(),
                        exec_ids: Vec::new(),
                        time: String::new(),
                    };
                    events.push(d.event("node", "released", None));
                }
                Err(e) => tracing::error!(error = %e, "releasing a quarantine"),
            }
        }
        events
    }
}
