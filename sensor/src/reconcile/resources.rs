//! Policies as Kubernetes resources: Tetragon's `TracingPolicy` (cluster
//! scoped) and `TracingPolicyNamespaced` (`cilium.io/v1alpha1`), watched
//! with kube-rs on the Kubernetes thread and handed to the daemon's loop,
//! which takes or refuses them like files. Each node writes the outcome
//! under its own name in the resource's status (`status.nodes.<node>`), so
//! that nodes never overwrite each other; a refused policy's reason is
//! there and in the log.
use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// Which resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceKey {
    pub namespaced: bool,
    pub namespace: String,
    pub name: String,
}

impl ResourceKey {
    /// `ns/name` for the namespaced kind, `name` for the cluster one.
    pub fn label(&self) -> String {
        if self.namespaced {
            format!("{}/{}", self.namespace, self.name)
        } else {
            self.name.clone()
        }
    }
}

/// A resource created, changed (`Some` document) or deleted (`None`).
pub struct ResourceChange {
    pub key: ResourceKey,
    pub document: Option<String>,
    pub generation: Option<i64>,
}

/// What the watchers tell the daemon.
pub enum ResourceEvent {
    Change(ResourceChange),
    /// One kind's first list is in (or the kind cannot be watched): the
    /// daemon waits for both before it first writes the kernel, so that a
    /// restart never drops the policies that came from resources.
    Synced,
}

/// What the daemon made of a change, for the resource's status.
pub struct ResourceOutcome {
    pub key: ResourceKey,
    pub generation: Option<i64>,
    pub error: Option<String>,
}

fn api_resource(namespaced: bool) -> ApiResource {
    let (kind, plural) = if namespaced {
        ("TracingPolicyNamespaced", "tracingpoliciesnamespaced")
    } else {
        ("TracingPolicy", "tracingpolicies")
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cilium.io", "v1alpha1", kind),
        plural,
    )
}

/// Watches both kinds and writes the outcomes the daemon sends back, until
/// the daemon stops.
pub async fn run(
    client: Client,
    node: String,
    changes: UnboundedSender<ResourceEvent>,
    mut outcomes: UnboundedReceiver<ResourceOutcome>,
) {
    for namespaced in [false, true] {
        tokio::spawn(watch_kind(client.clone(), namespaced, changes.clone()));
    }
    while let Some(o) = outcomes.recv().await {
        write_status(&client, &node, o).await;
    }
}

async fn watch_kind(client: Client, namespaced: bool, tx: UnboundedSender<ResourceEvent>) {
    let ar = api_resource(namespaced);
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    // The document last sent per resource: a status write (ours or another
    // node's) changes nothing the daemon reads, and is not sent again.
    let mut sent: HashMap<ResourceKey, String> = HashMap::new();
    let mut listed: HashSet<ResourceKey> = HashSet::new();
    let mut warned = false;
    let mut synced = false;
    let mut sync = |tx: &UnboundedSender<ResourceEvent>| {
        if !std::mem::replace(&mut synced, true) {
            let _ = tx.send(ResourceEvent::Synced);
        }
    };
    while let Some(event) = events.next().await {
        let obj = match event {
            Ok(watcher::Event::Apply(o)) => o,
            Ok(watcher::Event::InitApply(o)) => {
                listed.insert(key(&o, namespaced));
                o
            }
            Ok(watcher::Event::Delete(o)) => {
                let k = key(&o, namespaced);
                if sent.remove(&k).is_some() {
                    let _ = tx.send(ResourceEvent::Change(ResourceChange {
                        key: k,
                        document: None,
                        generation: None,
                    }));
                }
                continue;
            }
            Ok(watcher::Event::Init) => {
                listed.clear();
                continue;
            }
            // A fresh list: what it no longer holds was deleted meanwhile.
            Ok(watcher::Event::InitDone) => {
                let gone: Vec<ResourceKey> = sent
                    .keys()
                    .filter(|k| !listed.contains(k))
                    .cloned()
                    .collect();
                for k in gone {
                    sent.remove(&k);
                    let _ = tx.send(ResourceEvent::Change(ResourceChange {
                        key: k,
                        document: None,
                        generation: None,
                    }));
                }
                tracing::info!(kind = %ar.kind, "policy resources synced");
                sync(&tx);
                continue;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(kind = %ar.kind, error = %e, "watching policy resources (retrying; is the CRD installed?)");
                    warned = true;
                }
                sync(&tx);
                continue;
            }
        };
        warned = false;
        let k = key(&obj, namespaced);
        let document = json!({
            "apiVersion": "cilium.io/v1alpha1",
            "kind": ar.kind,
            "metadata": {"name": k.name, "namespace": obj.metadata.namespace},
            "spec": obj.data.get("spec").cloned().unwrap_or_default(),
        })
        .to_string();
        if sent.get(&k) == Some(&document) {
            continue;
        }
        sent.insert(k.clone(), document.clone());
        let _ = tx.send(ResourceEvent::Change(ResourceChange {
            key: k,
            document: Some(document),
            generation: obj.metadata.generation,
        }));
    }
}

fn key(o: &DynamicObject, namespaced: bool) -> ResourceKey {
    ResourceKey {
        namespaced,
        namespace: o.metadata.namespace.clone().unwrap_or_default(),
        name: o.metadata.name.clone().unwrap_or_default(),
    }
}

async fn write_status(client: &Client, node: &str, o: ResourceOutcome) {
    let ar = api_resource(o.key.namespaced);
    let api: Api<DynamicObject> = if o.key.namespaced {
        Api::namespaced_with(client.clone(), &o.key.namespace, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let (state, error) = match &o.error {
        None => ("loaded", None),
        Some(e) => ("refused", Some(e.clone())),
    };
    let patch = json!({"status": {"nodes": {node: {
        "state": state,
        "error": error,
        "observedGeneration": o.generation,
    }}}});
    if let Err(e) = api
        .patch_status(&o.key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(policy = %o.key.label(), error = %e, "writing the policy resource's status");
    }
}

/// Takes a resource change into `set`. Returns what is in force afterwards
/// when the set changed, and the outcome for the resource's status (none
/// for a deletion).
pub fn take(
    set: &mut super::PolicySet,
    vars: &crate::documents::Vars,
    change: ResourceChange,
) -> (Option<super::Active>, Option<ResourceOutcome>) {
    let source = super::Source::Resource(change.key.label());
    let Some(document) = change.document else {
        set.forget_refused(|s| *s == source);
        return match set.set(source, None) {
            Ok(a) => {
                tracing::info!(policy = %change.key.label(), "policy resource deleted");
                (Some(a), None)
            }
            Err(e) => {
                tracing::error!(error = %e, "removing a policy resource");
                (None, None)
            }
        };
    };
    let label = std::path::PathBuf::from(change.key.label());
    let mut loaded = crate::documents::Loaded::default();
    let taken = crate::documents::load_text(&label, &document, vars, &mut loaded)
        .and_then(|()| set.set(source.clone(), Some(loaded)));
    let outcome = |error| ResourceOutcome {
        key: change.key.clone(),
        generation: change.generation,
        error,
    };
    match taken {
        Ok(a) => {
            tracing::info!(policy = %change.key.label(), "policy resource taken");
            (Some(a), Some(outcome(None)))
        }
        Err(e) => {
            tracing::error!(error = %e, "policy resource refused; the others stay in force");
            set.refused(source);
            (None, Some(outcome(Some(e.to_string()))))
        }
    }
}
