//! From a cgroup id to the container and pod it belongs to: the id is the
//! inode of the cgroup's directory in the cgroup v2 tree, and kubelet names
//! that directory after the pod uid and the container id, in its systemd or
//! cgroupfs layout, with the runtime's prefix (containerd, CRI-O, Docker).
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A container's place in Kubernetes, as its cgroup path tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    pub pod_uid: String,
    /// Without the runtime prefix.
    pub container_id: String,
}

const RUNTIME_PREFIXES: &[&str] = &["cri-containerd-", "crio-", "docker-", "containerd-"];

fn is_container_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pod uid in a path component: `pod<uid>` (cgroupfs) or
/// `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(component: &str) -> Option<String> {
    let c = component.strip_suffix(".slice").unwrap_or(component);
    let at = c.rfind("pod")?;
    let before = &c[..at];
    if !(before.is_empty() || before.ends_with('-')) {
        return None;
    }
    let uid = c[at + 3..].replace('_', "-");
    (uid.len() >= 32 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

/// Parses a cgroup path under `kubepods`: the pod uid and the container id.
pub fn parse(path: &str) -> Option<ContainerRef> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let kube = parts.iter().position(|p| p.starts_with("kubepods"))?;
    let (pod_at, pod_uid) = parts[kube..]
        .iter()
        .enumerate()
        .find_map(|(i, p)| pod_uid(p).map(|u| (kube + i, u)))?;
    let last = parts.get(pod_at + 1)?;
    let name = last.strip_suffix(".scope").unwrap_or(last);
    let id = RUNTIME_PREFIXES
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    is_container_id(id).then(|| ContainerRef {
        pod_uid,
        container_id: id.to_string(),
    })
}

/// Cgroup id → path, from walks of the cgroup v2 tree. Cgroup ids only grow,
/// so a miss on an id above the largest one seen means a new cgroup and
/// rescans; a miss below it is a cgroup already gone.
pub struct CgroupPaths {
    root: PathBuf,
    paths: HashMap<u64, String>,
    /// Pod uid → the pod's own cgroup.
    pods: HashMap<String, u64>,
    max_id: u64,
    scanned: Option<Instant>,
}

const RESCAN_EVERY: Duration = Duration::from_millis(200);
const MAX_DEPTH: usize = 10;

impl CgroupPaths {
    pub fn new(root: PathBuf) -> Self {
        CgroupPaths {
            root,
            paths: HashMap::new(),
            pods: HashMap::new(),
            max_id: 0,
            scanned: None,
        }
    }

    pub fn path(&mut self, id: u64) -> Option<&str> {
        if !self.paths.contains_key(&id) && (id > self.max_id || self.scanned.is_none()) {
            self.rescan();
        }
        self.paths.get(&id).map(String::as_str)
    }

    /// The cgroup id of pod `uid`'s own cgroup (the parent of its containers').
    pub fn pod_cgroup(&mut self, uid: &str) -> Option<u64> {
        // A pod's cgroup may be newer than the last walk.
        if !self.pods.contains_key(uid) && self.scanned.is_none_or(|t| t.elapsed() >= RESCAN_EVERY)
        {
            self.rescan();
        }
        self.pods.get(uid).copied()
    }

    fn rescan(&mut self) {
        self.paths.clear();
        self.pods.clear();
        let mut stack = vec![(self.root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            if let Ok(meta) = std::fs::metadata(&dir) {
                let rel = dir.strip_prefix(&self.root).unwrap_or(Path::new(""));
                self.paths.insert(meta.ino(), format!("/{}", rel.display()));
                self.max_id = self.max_id.max(meta.ino());
                if let Some(uid) = dir.file_name().and_then(|n| n.to_str()).and_then(pod_uid) {
                    self.pods.insert(uid, meta.ino());
                }
            }
            if depth >= MAX_DEPTH {
                continue;
            }
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
        self.scanned = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4c9a1f6e6a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d";

    #[test]
    fn kubelet_layouts_and_runtimes() {
        let uid = "0b5d3b5c-8a4e-4f3a-9d2e-1c2b3a4d5e6f";
        let systemd = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
            uid.replace('-', "_")
        );
        let want = Some(ContainerRef {
            pod_uid: uid.into(),
            container_id: ID.into(),
        });
        assert_eq!(parse(&systemd), want);
        assert_eq!(parse(&format!("/kubepods/burstable/pod{uid}/{ID}")), want);
        assert_eq!(parse(&format!("/kubepods/pod{uid}/{ID}")), want);
        let crio = format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
            uid.replace('-', "_")
        );
        assert_eq!(parse(&crio), want);
        let docker = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/docker-{ID}.scope", uid.replace('-', "_"));
        assert_eq!(parse(&docker), want);
    }

    #[test]
    fn not_a_container() {
        assert_eq!(parse("/user.slice/user-0.slice/session-1.scope"), None);
        assert_eq!(parse("/kubepods.slice/kubepods-besteffort.slice"), None);
        assert_eq!(
            parse("/kubepods/besteffort/pod0b5d3b5c-8a4e-4f3a-9d2e-1c2b3a4d5e6f"),
            None
        );
        assert_eq!(parse("/"), None);
    }

    #[test]
    fn ids_resolve_to_paths() {
        let root = PathBuf::from("/sys/fs/cgroup/unified");
        let Ok(meta) = std::fs::metadata(&root) else {
            eprintln!("SKIP: no cgroup v2 at {}", root.display());
            return;
        };
        let mut p = CgroupPaths::new(root);
        assert_eq!(p.path(meta.ino()), Some("/"));
    }
}

#[cfg(test)]
mod pod_index_tests {
    use super::*;

    #[test]
    fn pod_cgroups_are_indexed_by_uid() {
        let root = std::env::temp_dir().join(format!("sensor-cg-{}", std::process::id()));
        let uid = "0b5d3b5c-8a4e-4f3a-9d2e-1c2b3a4d5e6f";
        let pod = root.join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        ));
        std::fs::create_dir_all(pod.join("cri-containerd-abcdefabcdef0123.scope")).unwrap();
        let mut p = CgroupPaths::new(root.clone());
        let want = std::fs::metadata(&pod).unwrap().ino();
        assert_eq!(p.pod_cgroup(uid), Some(want));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
