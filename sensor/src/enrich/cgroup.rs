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

/// A pod uid as kubelet writes it: 32 hex digits with or without dashes.
fn valid_uid(uid: &str) -> bool {
    uid.len() >= 32 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Where the pod's own cgroup is among `parts` (a path's components), by
/// kubelet's layouts only: under the kubepods root (`kubepods`, or a systemd
/// slice ending in `kubepods.slice`), directly or under a QoS class, a
/// directory named `pod<uid>` (cgroupfs) or `<parent>-pod<uid_>.slice`
/// (systemd, where every slice's name spells its ancestry). The first
/// kubepods root counts: a container that makes cgroups of its own (with a
/// cgroup namespace, or delegation) cannot plant a `pod<uid>` decoy that
/// the index would take for a real pod, however it names it.
fn pod_at(parts: &[&str]) -> Option<(usize, String)> {
    let root = kubepods_at(parts)?;
    let systemd = parts[root].ends_with(".slice");
    let stem = |p: &str| p.strip_suffix(".slice").unwrap_or(p).to_string();
    let mut at = root + 1;
    let mut parent = stem(parts[root]);
    let qos = |c: &str| {
        ["burstable", "besteffort"].iter().any(|q| {
            if systemd {
                c == format!("{}-{q}.slice", stem(parts[root]))
            } else {
                c == *q
            }
        })
    };
    if parts.get(at).is_some_and(|c| qos(c)) {
        parent = stem(parts[at]);
        at += 1;
    }
    let c = parts.get(at)?;
    let uid = if systemd {
        c.strip_prefix(&format!("{parent}-pod"))?
            .strip_suffix(".slice")?
            .replace('_', "-")
    } else {
        c.strip_prefix("pod")?.to_string()
    };
    valid_uid(&uid).then_some((at, uid))
}

/// Where the first kubepods root is among `parts`.
fn kubepods_at(parts: &[&str]) -> Option<usize> {
    parts
        .iter()
        .position(|p| *p == "kubepods" || p.ends_with("kubepods.slice"))
}

fn components(path: &str) -> Vec<&str> {
    path.split('/').filter(|p| !p.is_empty()).collect()
}

/// The uid of the pod whose cgroup (or a cgroup inside it) `path` is.
pub fn pod_of(path: &str) -> Option<String> {
    pod_at(&components(path)).map(|(_, uid)| uid)
}

/// The uid of the pod this process runs in (the sensor's own, as a
/// DaemonSet), from `/proc/self/cgroup`; `None` outside a pod.
pub fn own_pod() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    pod_of(path)
}

/// Parses a cgroup path under `kubepods`: the pod uid and the container id.
/// A cgroup that a container made inside its own belongs to that container.
pub fn parse(path: &str) -> Option<ContainerRef> {
    let parts = components(path);
    let (pod_at, pod_uid) = pod_at(&parts)?;
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

/// The pod's own cgroup directory when `path` is in one, relative to the
/// cgroup root.
fn pod_dir(path: &str) -> Option<(String, String)> {
    let parts = components(path);
    let (at, uid) = pod_at(&parts)?;
    Some((parts[..=at].join("/"), uid))
}

/// Cgroup id → path. A cgroup id is also a file handle on the cgroup v2
/// mount, so one id resolves with `open_by_handle_at` and a readlink, without
/// walking the tree: the first event of a new container must not wait for a
/// walk of every cgroup on the node. Where handles are refused (no
/// CAP_DAC_READ_SEARCH), walks do: cgroup ids only grow, so a miss on an id
/// above the largest one seen means a new cgroup and rescans; a miss below it
/// is a cgroup already gone.
pub struct CgroupPaths {
    root: PathBuf,
    /// The mount, for `open_by_handle_at`; `None` once handles failed.
    mount: Option<std::fs::File>,
    paths: HashMap<u64, String>,
    /// Pod uid → the pod's own cgroup.
    pods: HashMap<String, u64>,
    /// The kubepods roots found by the last walk: every pod is under one.
    roots: Vec<u64>,
    max_id: u64,
    scanned: Option<Instant>,
}

/// One index for the stages that ask (pod context, pod scopes, antibodies),
/// all on the daemon's thread: a pod met in one is known to the others.
pub type SharedPaths = std::rc::Rc<std::cell::RefCell<CgroupPaths>>;

const RESCAN_EVERY: Duration = Duration::from_millis(200);
const MAX_DEPTH: usize = 10;
/// The kernfs file handle type: the handle is the 64-bit cgroup id.
const FILEID_KERNFS: i32 = 0xfe;
/// Paths kept at most; past this the index starts again.
const MAX_PATHS: usize = 100_000;

#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}

impl CgroupPaths {
    /// Walks the tree once, so that the cgroups present at start cost
    /// nothing later.
    pub fn new(root: PathBuf) -> Self {
        let mount = std::fs::File::open(&root).ok();
        let mut p = CgroupPaths {
            root,
            mount,
            paths: HashMap::new(),
            pods: HashMap::new(),
            roots: Vec::new(),
            max_id: 0,
            scanned: None,
        };
        p.rescan();
        p
    }

    pub fn shared(root: PathBuf) -> SharedPaths {
        std::rc::Rc::new(std::cell::RefCell::new(Self::new(root)))
    }

    /// The cgroup's directory on the cgroup v2 mount.
    pub fn dir(&mut self, id: u64) -> Option<PathBuf> {
        let root = self.root.clone();
        let rel = self.path(id)?;
        Some(root.join(rel.trim_start_matches('/')))
    }

    pub fn path(&mut self, id: u64) -> Option<&str> {
        if !self.paths.contains_key(&id) {
            match self.by_handle(id) {
                Some(Ok(Some(path))) => self.insert(id, path),
                Some(Ok(None)) => return None,
                Some(Err(e)) => {
                    tracing::info!(error = %e, "cgroup ids do not open as file handles; walking the cgroup tree instead");
                    self.mount = None;
                }
                None => {}
            }
        }
        if !self.paths.contains_key(&id) && (id > self.max_id || self.scanned.is_none()) {
            self.rescan();
        }
        self.paths.get(&id).map(String::as_str)
    }

    /// The path of cgroup `id` from its file handle: `None` when handles are
    /// not available, `Ok(None)` when the cgroup is gone.
    fn by_handle(&self, id: u64) -> Option<std::io::Result<Option<String>>> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let mount = self.mount.as_ref()?;
        let mut h = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            id,
        };
        // SAFETY: a file handle header followed by its 8 bytes, as the
        // kernel reads it; the returned fd is owned below.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                (&raw mut h).cast(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Some(match e.raw_os_error() {
                Some(libc::ESTALE | libc::ENOENT) => Ok(None),
                _ => Err(e),
            });
        }
        // SAFETY: a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let full = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        Some(full.map(|full| {
            full.strip_prefix(&self.root)
                .ok()
                .map(|rel| format!("/{}", rel.display()))
        }))
    }

    /// Remembers a path, and the pod cgroup above it when it is a container's.
    fn insert(&mut self, id: u64, path: String) {
        if self.paths.len() >= MAX_PATHS {
            self.paths.clear();
        }
        if let Some((dir, uid)) = pod_dir(&path) {
            if !self.pods.contains_key(&uid) {
                if let Ok(meta) = std::fs::metadata(self.root.join(dir)) {
                    self.pods.insert(uid, meta.ino());
                }
            }
        }
        self.max_id = self.max_id.max(id);
        self.paths.insert(id, path);
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

    /// The cgroups of kubelet's kubepods roots: every pod on the node,
    /// known to the watcher or not, is under one of them.
    pub fn kubepods_roots(&self) -> &[u64] {
        &self.roots
    }

    fn rescan(&mut self) {
        self.paths.clear();
        self.pods.clear();
        self.roots.clear();
        let mut stack = vec![(self.root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            if let Ok(meta) = std::fs::metadata(&dir) {
                let rel = dir.strip_prefix(&self.root).unwrap_or(Path::new(""));
                let rel = format!("/{}", rel.display());
                let parts = components(&rel);
                if let Some((at, uid)) = pod_at(&parts) {
                    if at + 1 == parts.len() {
                        self.pods.insert(uid, meta.ino());
                    }
                } else if kubepods_at(&parts).is_some_and(|at| at + 1 == parts.len()) {
                    self.roots.push(meta.ino());
                }
                self.paths.insert(meta.ino(), rel);
                self.max_id = self.max_id.max(meta.ino());
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
        let pod = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        );
        assert_eq!(pod_of(&pod).as_deref(), Some(uid));
        assert_eq!(pod_of(&systemd).as_deref(), Some(uid));
        assert_eq!(
            pod_of("/user.slice/pod0b5d3b5c8a4e4f3a9d2e1c2b3a4d5e6f"),
            None
        );
    }

    #[test]
    fn only_kubelets_layout_names_a_pod() {
        let a = "0b5d3b5c-8a4e-4f3a-9d2e-1c2b3a4d5e6f";
        let b = "11111111-2222-4333-8444-555566667777";
        let (ua, ub) = (a.replace('-', "_"), b.replace('-', "_"));
        // Cgroups a container made inside its own are that container's.
        let nested = format!("/kubepods/besteffort/pod{a}/{ID}/pod{b}");
        assert_eq!(pod_of(&nested).as_deref(), Some(a));
        assert_eq!(parse(&nested).map(|c| c.pod_uid).as_deref(), Some(a));
        let namespaced =
            format!("/kubepods/besteffort/pod{a}/{ID}/kubepods/besteffort/pod{b}/{ID}");
        assert_eq!(parse(&namespaced).map(|c| c.pod_uid).as_deref(), Some(a));
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{ua}.slice/cri-containerd-{ID}.scope/kubepods-burstable-pod{ub}.slice"
        );
        assert_eq!(pod_of(&systemd).as_deref(), Some(a));
        // A slice whose name does not spell its parent is not kubelet's.
        assert_eq!(
            pod_of(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod{ua}.slice"
            )),
            None
        );
        assert_eq!(pod_of(&format!("/kubepods/other/pod{a}")), None);
        assert_eq!(pod_of(&format!("/system.slice/x/pod{a}")), None);
        // kind's nodes: kubelet's cgroup root under its own slice.
        let kind = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{ua}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(parse(&kind).map(|c| c.pod_uid).as_deref(), Some(a));
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
        let root = crate::daemon::cgroup2_root().unwrap_or_else(|| "/sys/fs/cgroup".into());
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
        // Decoys a container planted in its own cgroup: one named after its
        // own pod, one after another pod.
        let other = "11111111-2222-4333-8444-555566667777";
        let container = pod.join("cri-containerd-abcdefabcdef0123.scope");
        std::fs::create_dir_all(container.join(format!("pod{uid}"))).unwrap();
        std::fs::create_dir_all(container.join(format!(
            "kubepods-besteffort-pod{}.slice",
            other.replace('-', "_")
        )))
        .unwrap();
        let mut p = CgroupPaths::new(root.clone());
        let want = std::fs::metadata(&pod).unwrap().ino();
        assert_eq!(p.pod_cgroup(uid), Some(want));
        assert_eq!(p.pod_cgroup(other), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}

#[cfg(test)]
mod handle_tests {
    use super::*;

    /// A container cgroup made after the first walk resolves by its handle
    /// alone, and tells where its pod's cgroup is.
    #[test]
    fn new_cgroups_resolve_without_a_walk() {
        let Some(root) = crate::daemon::cgroup2_root() else {
            eprintln!("SKIP: no cgroup v2 mount");
            return;
        };
        let uid = format!("{:08x}-1111-4222-8333-444455556666", std::process::id());
        let pod = root.join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        ));
        let container = pod.join("cri-containerd-0123456789abcdef.scope");
        let mut paths = CgroupPaths::new(root.clone());
        if let Err(e) = std::fs::create_dir_all(&container) {
            eprintln!("SKIP: cannot make a cgroup under {} ({e})", root.display());
            return;
        }
        let id = std::fs::metadata(&container).map(|m| m.ino());
        let walked = paths.scanned;
        let got = id
            .as_ref()
            .ok()
            .and_then(|id| paths.path(*id))
            .map(String::from);
        let pod_id = paths.pod_cgroup(&uid);
        let want_pod = std::fs::metadata(&pod).map(|m| m.ino()).ok();
        let _ = std::fs::remove_dir(&container);
        let _ = std::fs::remove_dir(&pod);
        assert!(paths.mount.is_some(), "handles refused");
        assert_eq!(
            got.as_deref(),
            Some(&*format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-0123456789abcdef.scope",
                uid.replace('-', "_")
            ))
        );
        assert_eq!(pod_id, want_pod);
        assert_eq!(paths.scanned, walked, "resolved by walking the tree");
    }
}
