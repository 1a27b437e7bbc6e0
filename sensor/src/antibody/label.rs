//! The cluster-wide half of a quarantine: the `quarantine=true` label (and an
//! annotation saying why) patched onto the pod with kube-rs. Decisions wait
//! in the state file (`state`) until their label lands, so that a restart
//! does not forget them. Each pod has its own place in the queue and its own
//! backoff: an error for one pod (a permanent 403, a hanging request) never
//! holds back another's label. Outcomes are decided on the API's typed
//! status, never on the error's text.
use std::collections::VecDeque;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use super::state::StateFile;
use super::{Decision, LabelOutcome, ANNOTATION, LABEL};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Server errors and lost connections clear up by themselves: retry often.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A refusal (403 from RBAC or an admission policy, 422) needs an operator:
/// keep trying, but do not hammer the API server meanwhile.
const MAX_REFUSED_BACKOFF: Duration = Duration::from_secs(60);
/// Longest one patch may take; a server that never answers is a failure
/// like any other, retried later.
const PATCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Patches in flight at once.
const CONCURRENCY: usize = 16;

/// What one patch attempt means for its decision.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Labelled,
    /// Never to be retried: the pod is gone, or the name now belongs to a
    /// different pod (the uid precondition failed).
    Gone(String),
    /// Tried again after at most this backoff.
    Retry(String, Duration),
}

/// Classifies a patch's result by the API's status code.
pub fn verdict(r: Result<(), kube::Error>) -> Verdict {
    let e = match r {
        Ok(()) => return Verdict::Labelled,
        Err(e) => e,
    };
    let text = e.to_string();
    match &e {
        kube::Error::Api(s) if s.is_not_found() => Verdict::Gone(format!("pod gone: {text}")),
        // A merge patch without a resourceVersion conflicts only on its uid
        // precondition: the pod was deleted and one of the same name made.
        kube::Error::Api(s) if s.is_conflict() => {
            Verdict::Gone(format!("a different pod has that name now: {text}"))
        }
        kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 429 => {
            Verdict::Retry(text, MAX_REFUSED_BACKOFF)
        }
        _ => Verdict::Retry(text, MAX_BACKOFF),
    }
}

/// The merge patch that labels and annotates a quarantined pod. It carries
/// the pod's uid, which the API server treats as a precondition: a pod
/// recreated under the same name is a different pod and is not labelled.
pub fn patch_for(d: &Decision) -> serde_json::Value {
    let why = json!({"rule": d.rule, "time": d.time, "exec_ids": d.exec_ids}).to_string();
    let mut p = json!({"metadata": {"labels": {LABEL: "true"}, "annotations": {ANNOTATION: why}}});
    if !d.uid.is_empty() {
        p["metadata"]["uid"] = json!(d.uid);
    }
    p
}

async fn apply(client: &Client, d: &Decision) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &d.namespace);
    let patch = Patch::Merge(patch_for(d));
    match tokio::time::timeout(
        PATCH_TIMEOUT,
        pods.patch(&d.name, &PatchParams::default(), &patch),
    )
    .await
    {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(kube::Error::Service(
            format!("no answer in {} s", PATCH_TIMEOUT.as_secs()).into(),
        )),
    }
}

/// One pod's place in the queue.
struct Entry {
    decision: Decision,
    backoff: Duration,
    due: Instant,
}

impl Entry {
    fn new(decision: Decision) -> Self {
        Entry {
            decision,
            backoff: FIRST_BACKOFF,
            due: Instant::now(),
        }
    }
}

/// The queue: one entry per pod, in decision order.
#[derive(Default)]
struct Queue {
    entries: VecDeque<Entry>,
    /// Whether the entries changed since they were last written.
    dirty: bool,
}

impl Queue {
    /// A second decision about a pod already waiting adds nothing: the
    /// first one's label says the same.
    fn push(&mut self, d: Decision) {
        let same = |e: &Entry| {
            e.decision.uid == d.uid
                && e.decision.namespace == d.namespace
                && e.decision.name == d.name
        };
        if !self.entries.iter().any(same) {
            self.entries.push_back(Entry::new(d));
            self.dirty = true;
        }
    }

    fn decisions(&self) -> Vec<Decision> {
        self.entries.iter().map(|e| e.decision.clone()).collect()
    }

    /// Indices of the entries due now, oldest first, at most `CONCURRENCY`.
    fn due(&self, now: Instant) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|&i| self.entries[i].due <= now)
            .take(CONCURRENCY)
            .collect()
    }

    fn next_due(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.due).min()
    }
}

async fn save(state: &StateFile, list: Vec<Decision>) {
    let s = state.clone();
    let r = tokio::task::spawn_blocking(move || s.save(&list))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
    if let Err(e) = r {
        tracing::error!(path = %state.path().display(), error = %e, "saving pending quarantines");
    }
}

/// Labels decided pods until `decisions` closes. `pending` are the
/// decisions the state file held at start; the file is rewritten on every
/// change.
pub async fn run(
    client: Client,
    state: StateFile,
    pending: Vec<Decision>,
    mut decisions: UnboundedReceiver<Decision>,
    outcomes: UnboundedSender<LabelOutcome>,
) {
    let mut queue = Queue::default();
    for d in pending {
        queue.push(d);
    }
    queue.dirty = false;
    if !queue.entries.is_empty() {
        tracing::info!(
            count = queue.entries.len(),
            "labelling quarantines decided before the restart"
        );
    }
    loop {
        while let Ok(d) = decisions.try_recv() {
            queue.push(d);
        }
        let due = queue.due(Instant::now());
        if due.is_empty() {
            if queue.dirty {
                queue.dirty = false;
                save(&state, queue.decisions()).await;
            }
            let wake = queue.next_due();
            tokio::select! {
                d = decisions.recv() => match d {
                    Some(d) => queue.push(d),
                    None => return,
                },
                _ = sleep_until(wake) => {}
            }
            continue;
        }
        // The list is written while the patches are in flight rather than
        // before them: a crash before the write ends loses a new decision
        // in either order, and one after it finds it pending or labelled.
        let written = queue.dirty.then(|| queue.decisions());
        queue.dirty = false;
        let attempts = join_all(
            due.iter()
                .map(|&i| apply(&client, &queue.entries[i].decision)),
        );
        let (_, results) = tokio::join!(
            async {
                if let Some(list) = written {
                    save(&state, list).await;
                }
            },
            attempts
        );
        let now = Instant::now();
        let mut done = Vec::new();
        for (&i, r) in due.iter().zip(results) {
            let entry = &mut queue.entries[i];
            let (error, retrying) = match verdict(r) {
                Verdict::Labelled => {
                    done.push(i);
                    (None, false)
                }
                Verdict::Gone(e) => {
                    done.push(i);
                    (Some(e), false)
                }
                Verdict::Retry(e, cap) => {
                    entry.due = now + entry.backoff;
                    entry.backoff = (entry.backoff * 2).min(cap);
                    (Some(e), true)
                }
            };
            let _ = outcomes.send(LabelOutcome {
                decision: entry.decision.clone(),
                error,
                retrying,
            });
        }
        for i in done.into_iter().rev() {
            queue.entries.remove(i);
            queue.dirty = true;
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The merge patch that lifts a quarantine (label and annotation removed).
pub fn release_patch() -> serde_json::Value {
    json!({"metadata": {"labels": {LABEL: null}, "annotations": {ANNOTATION: null}}})
}

/// `sensor quarantine apply|release NAMESPACE/NAME`: an operator's hand on
/// the label; every node's sensor isolates or releases the pod to match.
pub async fn by_hand(
    client: Client,
    namespace: &str,
    name: &str,
    apply: bool,
) -> Result<(), String> {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let patch = if apply {
        let d = Decision {
            namespace: namespace.into(),
            name: name.into(),
            uid: String::new(),
            rule: "operator".into(),
            exec_ids: Vec::new(),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        patch_for(&d)
    } else {
        release_patch()
    };
    pods.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16, reason: &str, message: &str) -> Result<(), kube::Error> {
        Err(kube::Error::Api(
            Status::failure(message, reason).with_code(code).boxed(),
        ))
    }

    #[test]
    fn verdicts_follow_the_status_code_not_the_text() {
        assert_eq!(verdict(Ok(())), Verdict::Labelled);
        assert!(matches!(
            verdict(api(404, "NotFound", "pods \"web\" not found")),
            Verdict::Gone(_)
        ));
        assert!(matches!(
            verdict(api(
                409,
                "Conflict",
                "Precondition failed: UID in precondition"
            )),
            Verdict::Gone(_)
        ));
        // A pod named after a status code is not gone for it.
        assert!(matches!(
            verdict(api(
                500,
                "InternalError",
                "pods \"x-404\": NotFound in etcd? no: timeout"
            )),
            Verdict::Retry(_, MAX_BACKOFF)
        ));
        assert!(matches!(
            verdict(api(403, "Forbidden", "denied by sensor-label-power")),
            Verdict::Retry(_, MAX_REFUSED_BACKOFF)
        ));
        assert!(matches!(
            verdict(api(429, "TooManyRequests", "slow down")),
            Verdict::Retry(_, MAX_BACKOFF)
        ));
    }

    #[test]
    fn the_patch_carries_the_uid_as_a_precondition() {
        let mut d = Decision::for_test("u-1");
        assert_eq!(patch_for(&d)["metadata"]["uid"], "u-1");
        assert_eq!(patch_for(&d)["metadata"]["labels"][LABEL], "true");
        d.uid.clear();
        assert!(patch_for(&d)["metadata"].get("uid").is_none());
    }

    #[test]
    fn one_entry_per_pod() {
        let d = Decision::for_test("u-1");
        let mut q = Queue::default();
        q.push(d.clone());
        q.push(Decision {
            rule: "other".into(),
            ..d.clone()
        });
        assert_eq!(q.entries.len(), 1);
        q.push(Decision {
            uid: "u-2".into(),
            ..d
        });
        assert_eq!(q.entries.len(), 2);
    }
}
