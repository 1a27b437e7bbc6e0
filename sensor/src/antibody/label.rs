//! The cluster-wide half of a quarantine: the `quarantine=true` label (and an
//! annotation saying why) patched onto the pod with kube-rs. Decisions wait
//! in a file until their label lands, so that a restart does not forget them;
//! failures are retried with backoff.
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::{Decision, LabelOutcome, ANNOTATION, LABEL};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Decisions not labelled yet, as kept on disk.
pub fn pending(path: &Path) -> Vec<Decision> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::error!(path = %path.display(), error = %e, "unreadable pending quarantines; starting empty");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

/// Writes atomically (temp file, then rename), so a crash leaves the old or
/// the new list, never half of one. On the blocking pool, so that the patch
/// goes out while the list is written (a rename over a file on ext4 can wait
/// for writeback).
async fn save(path: &Path, pending: &VecDeque<Decision>) {
    let bytes = serde_json::to_vec(&pending.iter().collect::<Vec<_>>()).unwrap_or_default();
    let (path, tmp) = (path.to_path_buf(), path.with_extension("tmp"));
    let shown = path.display().to_string();
    let r = tokio::task::spawn_blocking(move || {
        std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path))
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    if let Err(e) = r {
        tracing::error!(path = shown, error = %e, "saving pending quarantines");
    }
}

/// The merge patch that labels and annotates a quarantined pod.
pub fn patch_for(d: &Decision) -> serde_json::Value {
    let why = json!({"rule": d.rule, "time": d.time, "exec_ids": d.exec_ids}).to_string();
    json!({"metadata": {"labels": {LABEL: "true"}, "annotations": {ANNOTATION: why}}})
}

async fn apply(api: &Api<Pod>, d: &Decision) -> Result<(), String> {
    let pods: Api<Pod> = Api::namespaced(api.clone().into_client(), &d.namespace);
    pods.patch(
        &d.name,
        &PatchParams::default(),
        &Patch::Merge(patch_for(d)),
    )
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Labels decided pods until `decisions` closes. Pending decisions live in
/// `state`: loaded at start, saved on every change.
pub async fn run(
    client: Client,
    state: PathBuf,
    mut decisions: UnboundedReceiver<Decision>,
    outcomes: UnboundedSender<LabelOutcome>,
) {
    let api: Api<Pod> = Api::all(client);
    let mut pending: VecDeque<Decision> = pending(&state).into();
    if !pending.is_empty() {
        tracing::info!(
            count = pending.len(),
            "labelling quarantines decided before the restart"
        );
    }
    let mut backoff = FIRST_BACKOFF;
    // Whether `pending` changed since it was last written.
    let mut dirty = false;
    loop {
        // Take every new decision without waiting; wait only when idle.
        while let Ok(d) = decisions.try_recv() {
            pending.push_back(d);
            dirty = true;
        }
        let Some(d) = pending.front().cloned() else {
            if dirty {
                save(&state, &pending).await;
            }
            match decisions.recv().await {
                Some(d) => {
                    pending.push_back(d);
                    dirty = true;
                    continue;
                }
                None => return,
            }
        };
        // The list is written while the patch is in flight rather than
        // before it: a crash before the write ends loses the decision in
        // either order, and one after it finds it pending or labelled.
        let written = dirty.then(|| pending.clone());
        let (_, result) = tokio::join!(
            async {
                if let Some(list) = &written {
                    save(&state, list).await;
                }
            },
            apply(&api, &d)
        );
        dirty = false;
        match result {
            Ok(()) => {
                pending.pop_front();
                dirty = true;
                backoff = FIRST_BACKOFF;
                let _ = outcomes.send(LabelOutcome {
                    decision: d,
                    error: None,
                    retrying: false,
                });
            }
            Err(e) => {
                let gone = e.contains("NotFound") || e.contains("404");
                if gone {
                    pending.pop_front();
                    dirty = true;
                }
                let _ = outcomes.send(LabelOutcome {
                    decision: d,
                    error: Some(e),
                    retrying: !gone,
                });
                if !gone {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
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
