//! The Kubernetes side of pod context: a kube-rs watcher of the pods on this
//! node (`spec.nodeName`), feeding the pod store. In-cluster configuration in
//! a pod, a kubeconfig otherwise; without either the sensor runs standalone.
use std::path::Path;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Config};

use super::pods::{PodInfo, PodStore};

/// A client from `kubeconfig`, or from the environment (KUBECONFIG,
/// ~/.kube/config, in-cluster service account). `None`: standalone.
pub async fn client(kubeconfig: Option<&Path>) -> Option<Client> {
    let config = config(kubeconfig).await?;
    connect(config)
}

/// The configuration a client is made from; `None` (said once): standalone.
pub async fn config(kubeconfig: Option<&Path>) -> Option<Config> {
    let config: Result<Config, String> = match kubeconfig {
        Some(path) => match kube::config::Kubeconfig::read_from(path) {
            Ok(kc) => Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        },
        None => Config::infer().await.map_err(|e| e.to_string()),
    };
    config
        .inspect_err(|e| {
            tracing::warn!(reason = %e, "no Kubernetes configuration: running standalone, events carry no pod");
        })
        .ok()
}

/// A client on the calling thread's runtime.
pub fn connect(config: Config) -> Option<Client> {
    Client::try_from(config)
        .inspect_err(|e| {
            tracing::warn!(reason = %e, "no Kubernetes client: running standalone, events carry no pod");
        })
        .ok()
}

/// Watches the pods of `node` into `store` until the task is dropped;
/// `synced` fires once the initial list is in.
pub async fn watch(
    client: Client,
    node: String,
    store: Arc<RwLock<PodStore>>,
    synced: tokio::sync::oneshot::Sender<()>,
) {
    let mut synced = Some(synced);
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                if let Some(info) = PodInfo::from_kube(&p) {
                    store
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .upsert(info);
                }
            }
            Ok(watcher::Event::Delete(p)) => {
                if let Some(uid) = p.metadata.uid {
                    store
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&uid);
                }
            }
            Ok(watcher::Event::Init) => {}
            Ok(watcher::Event::InitDone) => {
                tracing::info!(node = %node, "pod watcher synced");
                if let Some(s) = synced.take() {
                    let _ = s.send(());
                }
            }
            Err(e) => tracing::warn!(error = %e, "pod watcher (retrying)"),
        }
    }
}
