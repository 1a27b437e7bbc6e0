//! The pods on this node, as the Kubernetes API describes them, indexed by
//! pod uid, and turned into Tetragon's `pod` object for one container.
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod as KubePod;

use crate::export::event::{Container, Image, Labels, Pod};

/// What events need of one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Every label, for policy scopes and brain rules.
    pub labels: Labels,
    /// The labels events carry: at most `EVENT_LABELS` of them and
    /// `EVENT_LABEL_BYTES` in all, so that a pod with huge labels cannot
    /// bloat every event of its processes.
    pub event_labels: Labels,
    pub workload: String,
    pub workload_kind: String,
    /// By container id without the runtime scheme.
    pub containers: HashMap<String, Container>,
}

impl PodInfo {
    /// The pod as events show it, for the container `container_id`.
    pub fn event_pod(&self, container_id: &str) -> Pod {
        Pod {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            container: self.containers.get(container_id).cloned(),
            pod_labels: self.event_labels.clone(),
            workload: self.workload.clone(),
            workload_kind: self.workload_kind.clone(),
        }
    }
}

/// A ReplicaSet `web-7d9c8b6f5` belongs to Deployment `web`: Tetragon reports
/// the Deployment as the workload.
fn workload(pod: &KubePod, name: &str) -> (String, String) {
    let owner = pod
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.iter().find(|r| r.controller == Some(true)));
    match owner {
        Some(o) if o.kind == "ReplicaSet" => match o.name.rsplit_once('-') {
            Some((deployment, _)) => (deployment.to_string(), "Deployment".into()),
            None => (o.name.clone(), o.kind.clone()),
        },
        Some(o) => (o.name.clone(), o.kind.clone()),
        None => (name.to_string(), "Pod".into()),
    }
}

impl PodInfo {
    /// `None` for a pod without namespace, name or uid.
    pub fn from_kube(pod: &KubePod) -> Option<PodInfo> {
        let m = &pod.metadata;
        let (namespace, name, uid) = (m.namespace.clone()?, m.name.clone()?, m.uid.clone()?);
        let mut containers = HashMap::new();
        let status = pod.status.as_ref();
        let statuses = status.into_iter().flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
                .chain(s.ephemeral_container_statuses.iter().flatten())
        });
        for cs in statuses {
            let Some(full_id) = cs.container_id.clone() else {
                continue;
            };
            let bare = full_id
                .split_once("://")
                .map(|(_, id)| id.to_string())
                .unwrap_or_else(|| full_id.clone());
            let start_time = cs
                .state
                .as_ref()
                .and_then(|s| s.running.as_ref())
                .and_then(|r| r.started_at.as_ref())
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            containers.insert(
                bare,
                Container {
                    id: full_id,
                    name: cs.name.clone(),
                    image: Some(Image {
                        id: cs.image_id.clone(),
                        name: cs.image.clone(),
                    }),
                    start_time,
                },
            );
        }
        let (workload, workload_kind) = workload(pod, &name);
        let labels = m.labels.clone().unwrap_or_default();
        Some(PodInfo {
            namespace,
            name,
            uid,
            event_labels: bounded(&labels).into(),
            labels: labels.into(),
            workload,
            workload_kind,
            containers,
        })
    }
}

/// Labels events carry at most, by count and by bytes (keys and values).
const EVENT_LABELS: usize = 64;
const EVENT_LABEL_BYTES: usize = 4096;

/// The first labels, in key order, that fit both bounds.
fn bounded(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut bytes = 0;
    labels
        .iter()
        .take(EVENT_LABELS)
        .take_while(|(k, v)| {
            bytes += k.len() + v.len();
            bytes <= EVENT_LABEL_BYTES
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The pods on this node, by uid.
#[derive(Debug, Default)]
pub struct PodStore {
    by_uid: HashMap<String, PodInfo>,
    /// Bumped on every change, so that waiting events know to look again.
    pub generation: u64,
}

impl PodStore {
    pub fn upsert(&mut self, pod: PodInfo) {
        self.by_uid.insert(pod.uid.clone(), pod);
        self.generation += 1;
    }

    pub fn remove(&mut self, uid: &str) {
        self.by_uid.remove(uid);
        self.generation += 1;
    }

    pub fn get(&self, uid: &str) -> Option<&PodInfo> {
        self.by_uid.get(uid)
    }

    pub fn all(&self) -> impl Iterator<Item = &PodInfo> {
        self.by_uid.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_from_the_api() {
        let pod: KubePod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-7d9c8b6f5-x2x9z", "namespace": "shop", "uid": "u-1",
                "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9c8b6f5", "uid": "r", "controller": true}]
            },
            "status": {"containerStatuses": [{
                "name": "nginx", "image": "nginx:1.27", "imageID": "docker.io/library/nginx@sha256:ab",
                "containerID": "containerd://abc123abc123", "ready": true, "restartCount": 0,
                "state": {"running": {"startedAt": "2026-11-25T10:00:00Z"}}
            }]}
        }))
        .unwrap();
        let info = PodInfo::from_kube(&pod).unwrap();
        assert_eq!(
            (info.workload.as_str(), info.workload_kind.as_str()),
            ("web", "Deployment")
        );
        let p = info.event_pod("abc123abc123");
        let c = p.container.unwrap();
        assert_eq!(c.id, "containerd://abc123abc123");
        assert_eq!(c.name, "nginx");
        assert_eq!(c.image.unwrap().name, "nginx:1.27");
        assert_eq!(p.pod_labels["app"], "web");
        assert!(info.event_pod("other").container.is_none());
    }

    #[test]
    fn events_carry_bounded_labels_and_scopes_see_them_all() {
        let many: BTreeMap<String, String> = (0..200)
            .map(|i| (format!("k{i:03}"), "v".repeat(40)))
            .collect();
        let b = bounded(&many);
        assert!(b.len() <= EVENT_LABELS);
        assert!(b.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() <= EVENT_LABEL_BYTES);
        assert_eq!(b.keys().next().map(String::as_str), Some("k000"));
        let huge: BTreeMap<String, String> = [("a".to_string(), "x".repeat(5000))].into();
        assert!(
            bounded(&huge).is_empty(),
            "one label past the bound is left out"
        );
        let few: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        assert_eq!(bounded(&few), few);
    }
}
