//! The daemon's side of the Kubernetes thread (`crate::cluster`): starting
//! it, and waiting for its first lists (pods, policy resources) before the
//! daemon depends on them.
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::{Policies, RunOptions};
use crate::enrich::pods::PodStore;
use crate::reconcile::resources::{ResourceEvent, ResourceOutcome};

type Labeler = UnboundedSender<crate::antibody::Decision>;

/// The daemon's side of the Kubernetes thread.
#[derive(Default)]
pub struct ClusterLink {
    pub pods: Option<Arc<RwLock<PodStore>>>,
    pub labeler: Option<Labeler>,
    pub resources: Option<UnboundedReceiver<ResourceEvent>>,
    pub resource_outcomes: Option<UnboundedSender<ResourceOutcome>>,
}

/// Starts the Kubernetes thread when there is an API, and waits (up to
/// 10 s) for its first list of pods: rules about pods need the pods.
pub async fn start(
    opts: &RunOptions,
    state: crate::antibody::state::StateFile,
    pending: Vec<crate::antibody::Decision>,
    outcome_tx: UnboundedSender<crate::antibody::LabelOutcome>,
    health: &crate::health::Health,
) -> anyhow::Result<ClusterLink> {
    use crate::health::Watcher;
    let Some(config) = crate::enrich::kube::config(opts.kubeconfig.as_deref()).await else {
        return Ok(ClusterLink::default());
    };
    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("state directory {}", opts.state_dir.display()))?;
    let store = Arc::new(RwLock::new(PodStore::default()));
    let (synced_tx, mut synced) = tokio::sync::oneshot::channel();
    health.set_watcher(Watcher::Syncing);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (res_tx, res_rx) = tokio::sync::mpsc::unbounded_channel();
    let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
    crate::cluster::spawn(crate::cluster::Cluster {
        config,
        node: opts.node_name.clone(),
        store: store.clone(),
        synced: synced_tx,
        state,
        pending,
        decisions: rx,
        outcomes: outcome_tx,
        resources: res_tx,
        resource_outcomes: out_rx,
    })
    .context("starting the Kubernetes thread")?;
    let linked = ClusterLink {
        pods: Some(store),
        labeler: Some(tx),
        resources: Some(res_rx),
        resource_outcomes: Some(out_tx),
    };
    Ok(
        match tokio::time::timeout(Duration::from_secs(10), &mut synced).await {
            Ok(Ok(())) => {
                health.set_watcher(Watcher::Synced);
                linked
            }
            // The thread could not make a client, and said why: the
            // sensor runs standalone.
            Ok(Err(_)) => {
                health.set_watcher(Watcher::None);
                ClusterLink::default()
            }
            Err(_) => {
                tracing::warn!("pod watcher not synced after 10 s; starting without it");
                // Not ready until it is.
                let health = health.clone();
                tokio::spawn(async move {
                    if synced.await.is_ok() {
                        health.set_watcher(Watcher::Synced);
                    }
                });
                linked
            }
        },
    )
}

/// Takes the policy resources of the first lists (both kinds, up to 10 s)
/// into the set, so that the first write of the kernel already has them.
pub async fn first_resources(cluster: &mut ClusterLink, policies: &mut Policies) {
    let Some(rx) = cluster.resources.as_mut() else {
        return;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut synced = 0;
    while synced < 2 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ResourceEvent::Synced)) => synced += 1,
            Ok(Some(ResourceEvent::Change(c))) => {
                let (_, outcome) =
                    crate::reconcile::resources::take(&mut policies.set, &policies.vars, c);
                if let (Some(o), Some(tx)) = (outcome, &cluster.resource_outcomes) {
                    let _ = tx.send(o);
                }
            }
            Ok(None) => return,
            Err(_) => {
                tracing::warn!("policy resources not listed after 10 s; starting without them");
                return;
            }
        }
    }
}
