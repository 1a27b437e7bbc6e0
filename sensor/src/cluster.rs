//! The daemon's second thread: everything that talks to the Kubernetes API
//! (the watcher of this node's pods, and the labeler of quarantined pods),
//! on a runtime and client of its own. Its network and disk completions wake
//! this thread, never the daemon's, which stays free for the ring buffer and
//! the kernel half of quarantines; the two share the pod store and talk
//! through channels. It also watches TracingPolicy resources for the
//! reconciler.
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use crate::antibody::state::StateFile;
use crate::antibody::{Decision, LabelOutcome};
use crate::enrich::pods::PodStore;
use crate::reconcile::resources::{ResourceEvent, ResourceOutcome};

/// What the Kubernetes thread needs.
pub struct Cluster {
    pub config: kube::Config,
    pub node: String,
    pub store: Arc<RwLock<PodStore>>,
    /// Fires once the first list of pods is in; dropped if there is no client.
    pub synced: oneshot::Sender<()>,
    /// Where pending quarantine labels are kept across restarts, and what
    /// it held at start.
    pub state: StateFile,
    pub pending: Vec<Decision>,
    pub decisions: UnboundedReceiver<Decision>,
    pub outcomes: UnboundedSender<LabelOutcome>,
    /// TracingPolicy resources, to the daemon; their outcomes, back.
    pub resources: UnboundedSender<ResourceEvent>,
    pub resource_outcomes: UnboundedReceiver<ResourceOutcome>,
}

/// Starts the thread; it ends when the daemon drops its decision sender.
pub fn spawn(c: Cluster) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kubernetes".into())
        .spawn(move || {
            // The daemon's short slice is for the kernel half; this thread
            // has tens of milliseconds and must not preempt it.
            if let Err(e) = crate::sched::request(std::time::Duration::ZERO) {
                tracing::debug!(error = %e, "Kubernetes thread keeps the short slice");
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "Kubernetes thread runtime: no pod context, quarantines stay node-local");
                    return;
                }
            };
            rt.block_on(async move {
                let Some(client) = crate::enrich::kube::connect(c.config) else {
                    return;
                };
                tokio::spawn(crate::enrich::kube::watch(
                    client.clone(),
                    c.node.clone(),
                    c.store,
                    c.synced,
                ));
                tokio::spawn(crate::reconcile::resources::run(
                    client.clone(),
                    c.node,
                    c.resources,
                    c.resource_outcomes,
                ));
                crate::antibody::label::run(client, c.state, c.pending, c.decisions, c.outcomes)
                    .await;
            });
        })
}
